//! Authentication and the caller's identity.
//!
//! [`authenticate`] is a middleware on every route but `/healthz`,
//! `/readyz`, `/openapi.json`, `/docs` and the status page's files (whose
//! data calls send a token): it reads `Authorization: Bearer whk_…`, finds the token by its
//! public prefix, compares hashes in constant time and checks expiry and
//! revocation. A missing or invalid token is a 401; the handlers then see a
//! [`Principal`] (the admin, or a tenant with its topic ACL) and answer 403
//! for what it may not do, 404 for what is not its own. The ACL says which
//! topics a tenant may subscribe to and produce to alike.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use uuid::Uuid;

use super::{ApiError, AppState};
use crate::domain::AccessToken;
use crate::registry::StoredTenant;

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Principal {
    /// Sees and may change everything.
    Admin,
    /// Sees and changes only its own subscriptions and plugins, reads only
    /// the topics its ACL allows.
    Tenant(Arc<StoredTenant>),
}

impl Principal {
    /// The tenant whose view this is (`None`: the admin's, which is everything).
    pub fn tenant_id(&self) -> Option<Uuid> {
        match self {
            Principal::Admin => None,
            Principal::Tenant(t) => Some(t.id),
        }
    }

    /// 403 unless the admin is calling; `what` names the forbidden action.
    pub fn require_admin(&self, what: &str) -> Result<(), ApiError> {
        match self {
            Principal::Admin => Ok(()),
            Principal::Tenant(t) => Err(ApiError::Forbidden(format!(
                "{what} is for the admin; tenant {} may not",
                t.spec.name.as_str()
            ))),
        }
    }

    /// True when this caller may see a thing owned by `owner` (`None`: the admin's).
    pub fn sees(&self, owner: Option<Uuid>) -> bool {
        match self {
            Principal::Admin => true,
            Principal::Tenant(t) => owner == Some(t.id),
        }
    }

    /// 403 naming the first topic a tenant's ACL does not allow.
    pub fn may_read<'a>(&self, topics: impl IntoIterator<Item = &'a str>) -> Result<(), ApiError> {
        let Principal::Tenant(tenant) = self else {
            return Ok(());
        };
        for topic in topics {
            if !tenant.spec.topics.allows(topic) {
                return Err(ApiError::Forbidden(format!(
                    "tenant {} may not read topic {topic}: its topics are [{}]",
                    tenant.spec.name.as_str(),
                    tenant.spec.topics
                )));
            }
        }
        Ok(())
    }
}

impl Principal {
    /// 403 unless this caller may produce to `topic`: a tenant's ACL governs
    /// writing as it governs reading (one list of topics per tenant).
    pub fn may_write(&self, topic: &str) -> Result<(), ApiError> {
        let Principal::Tenant(tenant) = self else {
            return Ok(());
        };
        if tenant.spec.topics.allows(topic) {
            return Ok(());
        }
        Err(ApiError::Forbidden(format!(
            "tenant {} may not produce to topic {topic}: its topics are [{}]",
            tenant.spec.name.as_str(),
            tenant.spec.topics
        )))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| ApiError::Unauthorized("this route needs a bearer token".into()))
    }
}

/// Routes anyone may call: probes of load balancers and orchestrators, and
/// the API's document and its Swagger UI (they hold no data), and the status
/// page's static files (it sends a token for every data call).
fn is_public(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/openapi.json" | "/docs")
        || path.starts_with("/docs/")
        || crate::ui::is_page(path)
}

/// Routes that also take the token as a `token` query parameter: browsers
/// cannot set headers on a WebSocket. (Query strings end up in logs and
/// histories more easily than headers, so nowhere else.)
fn takes_query_token(path: &str) -> bool {
    path == "/1/ws"
}

pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if is_public(path) {
        return next.run(request).await;
    }
    let header = request.headers().get(AUTHORIZATION);
    let identified = match (header, takes_query_token(path)) {
        (None, true) => match query_token(request.uri().query()) {
            Some(token) => identify_token(&state, &token, "the token query parameter").await,
            None => identify(&state, None).await,
        },
        (header, _) => identify(&state, header).await,
    };
    match identified {
        Ok(principal) => {
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Err(error) => error.into_response(),
    }
}

/// The `token` query parameter, if any.
fn query_token(query: Option<&str>) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(name, _)| name == "token")
        .map(|(_, value)| value.into_owned())
}

async fn identify(
    state: &AppState,
    header: Option<&axum::http::HeaderValue>,
) -> Result<Principal, ApiError> {
    let unauthorized = |m: &str| ApiError::Unauthorized(m.to_string());
    let header = header.ok_or_else(|| {
        unauthorized("missing Authorization header: send Authorization: Bearer <token>")
    })?;
    let value = header
        .to_str()
        .map_err(|_| unauthorized("the Authorization header is not text"))?;
    let presented = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(|| unauthorized("the Authorization header must be Bearer <token>"))?;
    identify_token(state, presented.trim(), "the bearer token").await
}

/// Who `presented` belongs to; `what` names where it came from in errors.
async fn identify_token(
    state: &AppState,
    presented: &str,
    what: &str,
) -> Result<Principal, ApiError> {
    let unauthorized = ApiError::Unauthorized;
    let token = AccessToken::parse(presented)
        .map_err(|e| ApiError::Unauthorized(format!("{what} is invalid: {e}")))?;
    let stored = state.registry.find_token(token.prefix()).await?;
    let Some(stored) = stored.filter(|s| crate::domain::hash_matches(&token, s.hash())) else {
        return Err(unauthorized(format!("{what} is not known")));
    };
    let now = chrono::Utc::now();
    if stored.revoked_at.is_some() {
        return Err(unauthorized(format!("{what} has been revoked")));
    }
    if stored.expires_at.is_some_and(|at| at <= now) {
        return Err(unauthorized(format!("{what} has expired")));
    }
    match stored.tenant_id {
        None => Ok(Principal::Admin),
        Some(tenant) => match state.registry.get_tenant(tenant).await? {
            Some(tenant) => Ok(Principal::Tenant(Arc::new(tenant))),
            None => Err(unauthorized(format!("{what}'s tenant no longer exists"))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_token_is_read_only_from_its_parameter() {
        assert_eq!(
            query_token(Some("token=whk_abc&x=1")).as_deref(),
            Some("whk_abc")
        );
        assert_eq!(query_token(Some("x=1&token=a%2Bb")).as_deref(), Some("a+b"));
        assert_eq!(query_token(Some("tokens=1")), None);
        assert_eq!(query_token(None), None);
        assert!(takes_query_token("/1/ws"));
        assert!(!takes_query_token("/1/Subscription"));
    }
}
