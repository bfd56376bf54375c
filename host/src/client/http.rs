//! The client's HTTP side: one call per API route, the bearer token on each,
//! list pages followed to the end, and every failure turned into a
//! [`ClientError`] that says whose it is (the API's, the network's, or the
//! command line's) and so which exit code it gives.

use std::error::Error as _;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, LINK};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::{EXIT_API, EXIT_UNREACHABLE, EXIT_USAGE};

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The API answered with an error: its own message, and the status.
    #[error("{message} (HTTP {status})")]
    Api { status: u16, message: String },
    /// Nothing answered at that address (refused, timed out, DNS, TLS).
    #[error("cannot reach the server at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// The server answered success with something the client cannot read.
    #[error("unexpected answer from {url}: {reason}")]
    BadAnswer { url: String, reason: String },
    /// What the command line names cannot be used (a file missing or not JSON).
    #[error("{0}")]
    Input(String),
}

impl ClientError {
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Api { .. } | ClientError::BadAnswer { .. } => EXIT_API,
            ClientError::Unreachable { .. } => EXIT_UNREACHABLE,
            ClientError::Input(_) => EXIT_USAGE,
        }
    }
}

/// The API's message from an error answer's body (`{"code", "message", …}`);
/// a body that is not the API's (a proxy's page) is shown shortened, and an
/// empty one by the status's reason.
pub fn api_error(status: StatusCode, body: &str) -> ClientError {
    let from_json = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("message")?.as_str().map(String::from));
    let message = from_json.unwrap_or_else(|| {
        let text = body.trim();
        if text.is_empty() {
            status
                .canonical_reason()
                .unwrap_or("no message")
                .to_string()
        } else {
            text.chars().take(300).collect()
        }
    });
    ClientError::Api {
        status: status.as_u16(),
        message,
    }
}

/// The next page's URL from a `link` header (`<…>; rel="next"`).
pub fn next_link(header: &str) -> Option<&str> {
    header.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        params
            .split(';')
            .any(|p| p.trim() == "rel=\"next\"")
            .then(|| target.trim().strip_prefix('<')?.strip_suffix('>'))
            .flatten()
    })
}

/// The API at one base URL, called with one token.
pub struct Api {
    base: url::Url,
    http: reqwest::Client,
    token: Option<HeaderValue>,
}

impl Api {
    pub fn new(base: url::Url, token: Option<&str>) -> Result<Self, ClientError> {
        let token = token
            .map(|t| {
                let mut value = HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| {
                    ClientError::Input("WASMHOOK_TOKEN holds characters a header cannot".into())
                })?;
                // Kept out of reqwest's debug output.
                value.set_sensitive(true);
                Ok(value)
            })
            .transpose()?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // Uploads are compiled before the server answers.
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| ClientError::Input(format!("cannot make an HTTP client: {e}")))?;
        Ok(Self { base, http, token })
    }

    /// `segments` appended to the base URL, each percent-encoded: an id or a
    /// plugin name can never reach another route.
    pub fn url(&self, segments: &[&str]) -> url::Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// Sends the request; the answer's body when it is a success, else the
    /// API's error.
    async fn send(
        &self,
        method: Method,
        url: url::Url,
        body: Option<(&'static str, Vec<u8>)>,
    ) -> Result<(reqwest::header::HeaderMap, String), ClientError> {
        let mut request = self.http.request(method, url.clone());
        if let Some(token) = &self.token {
            request = request.header(AUTHORIZATION, token.clone());
        }
        if let Some((content_type, bytes)) = body {
            request = request.header(CONTENT_TYPE, content_type).body(bytes);
        }
        let response = request.send().await.map_err(|e| unreachable_at(&url, &e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.map_err(|e| ClientError::BadAnswer {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        if status.is_success() {
            Ok((headers, text))
        } else {
            Err(api_error(status, &text))
        }
    }

    async fn json(
        &self,
        method: Method,
        url: url::Url,
        body: Option<(&'static str, Vec<u8>)>,
    ) -> Result<Value, ClientError> {
        let (_, text) = self.send(method, url.clone(), body).await?;
        parse_answer(&url, &text)
    }

    pub async fn get(&self, segments: &[&str]) -> Result<Value, ClientError> {
        self.json(Method::GET, self.url(segments), None).await
    }

    /// A list route, every page: the items of all pages in one array.
    pub async fn get_all(&self, segments: &[&str]) -> Result<Value, ClientError> {
        let mut url = self.url(segments);
        let mut items = Vec::new();
        loop {
            let (headers, text) = self.send(Method::GET, url.clone(), None).await?;
            match parse_answer(&url, &text)? {
                Value::Array(page) => items.extend(page),
                other => {
                    return Err(ClientError::BadAnswer {
                        url: url.to_string(),
                        reason: format!("expected a JSON array, got {other}"),
                    });
                }
            }
            let next = headers
                .get(LINK)
                .and_then(|h| h.to_str().ok())
                .and_then(next_link)
                // Only the query is taken: the server's path does not know
                // a prefix a proxy in front of it adds.
                .and_then(|link| self.base.join(link).ok())
                .and_then(|next| next.query().map(String::from));
            match next {
                Some(query) => url.set_query(Some(&query)),
                None => return Ok(Value::Array(items)),
            }
        }
    }

    /// A JSON body to a route that answers JSON.
    pub async fn send_json(
        &self,
        method: Method,
        segments: &[&str],
        body: &Value,
    ) -> Result<Value, ClientError> {
        let bytes = serde_json::to_vec(body).expect("a Value serialises");
        self.json(
            method,
            self.url(segments),
            Some(("application/json", bytes)),
        )
        .await
    }

    /// A route that answers 204.
    pub async fn delete(&self, segments: &[&str]) -> Result<(), ClientError> {
        self.send(Method::DELETE, self.url(segments), None).await?;
        Ok(())
    }

    /// `POST /1/Plugin` with the component as the body and the fields in the query.
    pub async fn upload(
        &self,
        query: &[(&str, String)],
        wasm: Vec<u8>,
    ) -> Result<Value, ClientError> {
        let mut url = self.url(&["1", "Plugin"]);
        url.query_pairs_mut().extend_pairs(query);
        self.json(Method::POST, url, Some(("application/wasm", wasm)))
            .await
    }
}

fn parse_answer(url: &url::Url, text: &str) -> Result<Value, ClientError> {
    serde_json::from_str(text).map_err(|e| ClientError::BadAnswer {
        url: url.to_string(),
        reason: format!("not JSON ({e})"),
    })
}

/// The server's base address (not the route) and the innermost reason:
/// reqwest's own message is only "error sending request".
fn unreachable_at(url: &url::Url, error: &reqwest::Error) -> ClientError {
    let mut reason = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        reason = inner.to_string();
        source = inner.source();
    }
    if error.is_timeout() {
        reason = format!("no answer in time ({reason})");
    }
    ClientError::Unreachable {
        url: url.origin().ascii_serialization(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_api_error_shows_the_apis_message_and_status() {
        let error = api_error(
            StatusCode::NOT_FOUND,
            r#"{"code":"not_found","message":"no subscription with id 5eed"}"#,
        );
        assert_eq!(error.to_string(), "no subscription with id 5eed (HTTP 404)");
        assert_eq!(error.exit_code(), 1);
        let error = api_error(
            StatusCode::BAD_REQUEST,
            r#"{"code":"validation_failed","message":"1 invalid field: name: is required","errors":[{"field":"name","message":"is required"}]}"#,
        );
        assert_eq!(
            error.to_string(),
            "1 invalid field: name: is required (HTTP 400)"
        );
    }

    #[test]
    fn an_error_body_that_is_not_the_apis_is_shown_short_or_by_its_reason() {
        let error = api_error(StatusCode::BAD_GATEWAY, "<html>bad gateway</html>\n");
        assert_eq!(error.to_string(), "<html>bad gateway</html> (HTTP 502)");
        let error = api_error(StatusCode::SERVICE_UNAVAILABLE, "");
        assert_eq!(error.to_string(), "Service Unavailable (HTTP 503)");
        let long = "x".repeat(1000);
        let ClientError::Api { message, .. } = api_error(StatusCode::BAD_GATEWAY, &long) else {
            panic!("an API error");
        };
        assert_eq!(message.len(), 300);
    }

    #[test]
    fn exit_codes_say_whose_the_failure_is() {
        let unreachable = ClientError::Unreachable {
            url: "http://127.0.0.1:1".into(),
            reason: "Connection refused".into(),
        };
        assert_eq!(unreachable.exit_code(), 3);
        assert_eq!(
            unreachable.to_string(),
            "cannot reach the server at http://127.0.0.1:1: Connection refused"
        );
        assert_eq!(ClientError::Input("x".into()).exit_code(), 2);
    }

    #[test]
    fn the_next_page_comes_from_the_link_header() {
        assert_eq!(
            next_link(r#"</1/Subscription?limit=100&cursor=abc>; rel="next""#),
            Some("/1/Subscription?limit=100&cursor=abc")
        );
        assert_eq!(
            next_link(r#"</a>; rel="prev", </b>; rel="next""#),
            Some("/b")
        );
        assert_eq!(next_link(r#"</a>; rel="prev""#), None);
    }

    #[test]
    fn path_segments_are_encoded_under_the_base_path() {
        let api = Api::new("https://hooks.example/api/".parse().unwrap(), None).unwrap();
        assert_eq!(
            api.url(&["1", "Plugin", "a/b", "1.0 beta"]).as_str(),
            "https://hooks.example/api/1/Plugin/a%2Fb/1.0%20beta"
        );
        let api = Api::new("http://127.0.0.1:8080".parse().unwrap(), None).unwrap();
        assert_eq!(
            api.url(&["1", "Subscription"]).as_str(),
            "http://127.0.0.1:8080/1/Subscription"
        );
    }

    #[tokio::test]
    async fn a_server_that_is_not_there_is_unreachable_naming_its_address() {
        // A port just released is free: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let api = Api::new(format!("http://127.0.0.1:{port}").parse().unwrap(), None).unwrap();
        let error = api.get(&["1", "Subscription"]).await.unwrap_err();
        assert_eq!(error.exit_code(), 3, "{error}");
        assert!(
            error.to_string().starts_with(&format!(
                "cannot reach the server at http://127.0.0.1:{port}: "
            )),
            "{error}"
        );
    }
}
