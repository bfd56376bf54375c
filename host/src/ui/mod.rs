//! The status page at `/ui`: subscriptions with their health, counts, lag,
//! recent activity, dead letters and plots of the last 15 minutes; plugins;
//! the admin switch.
//!
//! Three files compiled into the binary (`index.html`, `app.js`,
//! `style.css`): plain JavaScript, no framework, no build step and nothing
//! fetched from elsewhere, so the page works offline and with the binary
//! alone. The files are public ([`is_page`]: they hold no data); the page
//! reads everything from the REST API with the token the user types in, sent
//! as `Authorization: Bearer`, so it shows exactly what that token may see.
//! A strict Content-Security-Policy (this origin only, no inline script or
//! style, no framing) keeps injected markup from running or leaking the token.

use axum::extract::Path;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
    X_FRAME_OPTIONS,
};
use axum::response::{IntoResponse, Response};

use crate::api::ApiError;

const INDEX: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("style.css");

/// This origin only; no inline script or style (the page has none), no
/// plugins, no framing, no form posted anywhere (the forms are handled by the
/// script).
const POLICY: &str = "default-src 'self'; object-src 'none'; base-uri 'none'; \
                      form-action 'none'; frame-ancestors 'none'";

/// Paths the page is served at, which need no token.
pub fn is_page(path: &str) -> bool {
    path == "/ui" || path.starts_with("/ui/")
}

/// `GET /ui`: the page.
#[utoipa::path(
    get,
    path = "/ui",
    tag = "operations",
    responses((status = 200, description = "The status page (it asks for a token)", body = String, content_type = "text/html; charset=utf-8"))
)]
pub async fn page() -> Response {
    serve("text/html; charset=utf-8", INDEX)
}

/// `GET /ui/{asset}`: its script and style sheet.
#[utoipa::path(
    get,
    path = "/ui/{asset}",
    tag = "operations",
    params(("asset" = String, Path, description = "`app.js` or `style.css`")),
    responses(
        (status = 200, description = "The file", body = String),
        (status = 404, description = "The page has no such file", body = crate::api::openapi::ErrorAnswer),
    )
)]
pub async fn asset(Path(name): Path<String>) -> Response {
    match name.as_str() {
        "app.js" => serve("text/javascript; charset=utf-8", SCRIPT),
        "style.css" => serve("text/css; charset=utf-8", STYLE),
        _ => ApiError::NotFound(format!("the status page has no {name:?}")).into_response(),
    }
}

fn serve(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, content_type),
            (CONTENT_SECURITY_POLICY, POLICY),
            (X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (X_FRAME_OPTIONS, "DENY"),
            (REFERRER_POLICY, "no-referrer"),
            // Revalidated each time: a new binary's page replaces the old one at once.
            (CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_page_and_its_assets_are_public() {
        assert!(is_page("/ui"));
        assert!(is_page("/ui/app.js"));
        assert!(!is_page("/uid"));
        assert!(!is_page("/1/ui"));
    }

    #[test]
    fn the_page_loads_only_its_own_files() {
        // No inline script or style for the policy to refuse, and nothing
        // from another origin.
        for file in [INDEX, SCRIPT, STYLE] {
            assert!(!file.contains("http://") && !file.contains("https://"));
        }
        assert!(!INDEX.contains("<script>") && !INDEX.contains("style="));
        assert!(INDEX.contains(r#"<script src="/ui/app.js" defer></script>"#));
        assert!(INDEX.contains(r#"<link rel="stylesheet" href="/ui/style.css">"#));
    }
}
