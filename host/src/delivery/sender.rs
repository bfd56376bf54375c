//! One webhook request: POST the batch, signed, and describe what happened.
//!
//! The sender classifies the answer (2xx delivered; anything else, a timeout or
//! a connection error failed, with the receiver's Retry-After) and builds the
//! `api_call` activity entry with secrets masked. Retrying is not its business.
//! Destinations the [`DestinationPolicy`] refuses fail the attempt without a
//! request: IP literals here, names in the client's resolver.

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER, USER_AGENT};
use tokio::sync::Semaphore;

use crate::domain::HeaderLine;
use crate::egress::{DestinationPolicy, GuardedResolver, RefusedResolution};
use crate::registry::ApiCall;
use crate::signing::{PreviousSecret, SigningSecret, signature_header};

use super::failure::DeliveryFailure;
use super::retry::parse_retry_after;

/// How much of a response body the activity log keeps.
const RESPONSE_BODY_KEPT: usize = 1024;

/// Where and how a subscription's batches are sent.
#[derive(Clone)]
pub struct Target {
    pub url: reqwest::Url,
    pub headers: Vec<HeaderLine>,
    pub secret: SigningSecret,
    /// The secret a rotation replaced, signing too during its overlap window.
    pub previous_secret: Option<PreviousSecret>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Delivered,
    Failed(DeliveryFailure),
}

#[derive(Debug)]
pub struct Attempt {
    pub outcome: Outcome,
    pub call: ApiCall,
}

/// Shared by every pipeline: one HTTP client (one connection pool) and the
/// global cap on requests in flight.
#[derive(Clone)]
pub struct Sender {
    client: reqwest::Client,
    permits: Arc<Semaphore>,
    destinations: DestinationPolicy,
}

impl Sender {
    pub fn new(
        timeout: Duration,
        max_concurrent: usize,
        destinations: DestinationPolicy,
    ) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            // A redirect could lead anywhere; the guard checks only where we connect.
            .redirect(reqwest::redirect::Policy::none())
            // Through a proxy the guard would judge the proxy, not the webhook.
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver::new(destinations.clone())))
            .build()?;
        Ok(Self {
            client,
            permits: Arc::new(Semaphore::new(max_concurrent.max(1))),
            destinations,
        })
    }

    /// Sends one request. `content_type` is the built-in JSON one or a
    /// serialiser plugin's (checked to be a printable header value).
    pub async fn send(
        &self,
        target: &Target,
        delivery_id: &str,
        content_type: &str,
        body: bytes::Bytes,
    ) -> Attempt {
        let now = chrono::Utc::now();
        let timestamp = now.timestamp();
        let signature = signature_header(
            &target.secret,
            target.previous_secret.as_ref(),
            delivery_id,
            timestamp,
            &body,
            now,
        );
        let mut headers = HeaderMap::new();
        for line in &target.headers {
            headers.append(line.name().clone(), line.value().clone());
        }
        let content_type = HeaderValue::from_str(content_type)
            .unwrap_or(HeaderValue::from_static("application/octet-stream"));
        headers.insert(CONTENT_TYPE, content_type.clone());
        headers.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("wasmhook/", env!("CARGO_PKG_VERSION"))),
        );
        let id_value =
            HeaderValue::from_str(delivery_id).unwrap_or(HeaderValue::from_static("invalid"));
        headers.insert("webhook-id", id_value);
        headers.insert("webhook-timestamp", HeaderValue::from(timestamp));
        headers.insert(
            "webhook-signature",
            HeaderValue::from_str(&signature).expect("base64 is a valid header value"),
        );

        let mut request_headers: Vec<String> =
            target.headers.iter().map(HeaderLine::masked).collect();
        request_headers.extend([
            format!(
                "content-type: {}",
                String::from_utf8_lossy(content_type.as_bytes())
            ),
            format!("webhook-id: {delivery_id}"),
            format!("webhook-timestamp: {timestamp}"),
            format!("webhook-signature: {signature}"),
        ]);
        let request_line = format!("POST {}", target.url);

        // The client never resolves an IP literal, so its resolver cannot judge it.
        if let Err(refused) = self.destinations.check_url(&target.url) {
            return failed(
                DeliveryFailure::Refused(refused.to_string()),
                request_line,
                request_headers,
            );
        }

        let _permit = self
            .permits
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let result = self
            .client
            .post(target.url.clone())
            .headers(headers)
            .body(body)
            .send()
            .await;
        match result {
            Err(error) => failed(describe(&error), request_line, request_headers),
            Ok(mut response) => {
                let status = response.status();
                let response_headers = response
                    .headers()
                    .iter()
                    .map(|(k, v)| format!("{k}: {}", String::from_utf8_lossy(v.as_bytes())))
                    .collect();
                let retry_after = response
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, chrono::Utc::now()));
                let mut kept = Vec::new();
                // Read only what is kept: a receiver may answer with a huge body.
                while kept.len() < RESPONSE_BODY_KEPT {
                    match response.chunk().await {
                        Ok(Some(chunk)) => kept.extend_from_slice(&chunk),
                        _ => break,
                    }
                }
                kept.truncate(RESPONSE_BODY_KEPT);
                let response_body = String::from_utf8_lossy(&kept).into_owned();
                let outcome = if status.is_success() {
                    Outcome::Delivered
                } else {
                    Outcome::Failed(DeliveryFailure::Status {
                        status,
                        retry_after,
                    })
                };
                Attempt {
                    outcome,
                    call: ApiCall {
                        request: request_line,
                        request_headers,
                        response_code: status.as_u16(),
                        response_body,
                        response_headers,
                    },
                }
            }
        }
    }
}

/// An attempt that got no answer: `reason` is also the entry's response body.
fn failed(failure: DeliveryFailure, request: String, request_headers: Vec<String>) -> Attempt {
    let text = failure.to_string();
    Attempt {
        outcome: Outcome::Failed(failure),
        call: ApiCall {
            request,
            request_headers,
            response_code: 0,
            response_body: text,
            response_headers: vec![],
        },
    }
}

fn describe(error: &reqwest::Error) -> DeliveryFailure {
    // A refused destination is the guard's decision, not a network failure:
    // its own words say what was refused and how to allow it.
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(refused) = cause.downcast_ref::<RefusedResolution>() {
            return DeliveryFailure::Refused(refused.to_string());
        }
        source = cause.source();
    }
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    if error.is_timeout() {
        DeliveryFailure::Timeout(text)
    } else if error.is_connect() {
        DeliveryFailure::Connect(text)
    } else {
        DeliveryFailure::Request(text)
    }
}
