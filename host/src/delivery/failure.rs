//! Why a delivery attempt failed: typed from where it happens (the sender, a
//! plugin) until the last moment it becomes text (an activity entry, the
//! health reason, a dead-letter header).

use std::time::Duration;

use reqwest::StatusCode;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryFailure {
    /// The SSRF guard refused the destination; its own words say how to allow it.
    #[error("{0}")]
    Refused(String),
    #[error("the webhook did not answer in time: {0}")]
    Timeout(String),
    #[error("could not connect to the webhook: {0}")]
    Connect(String),
    #[error("the request to the webhook failed: {0}")]
    Request(String),
    /// The webhook answered, but not with a success.
    #[error("the webhook answered {status}")]
    Status {
        status: StatusCode,
        retry_after: Option<Duration>,
    },
    /// A plugin failed to prepare the attempt (the reason names it and the
    /// field attaching it).
    #[error("{reason}")]
    Plugin {
        reason: String,
        /// Set when its circuit breaker suspended it: it keeps failing.
        suspended: Option<String>,
    },
}

impl DeliveryFailure {
    /// How long the webhook asked us to wait (`Retry-After`), if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// A short name of the kind, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Refused(_) => "refused",
            Self::Timeout(_) => "timeout",
            Self::Connect(_) => "connect",
            Self::Request(_) => "request",
            Self::Status { .. } => "status",
            Self::Plugin { .. } => "plugin",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_failure_reads_as_the_answer_and_keeps_its_retry_after() {
        let failure = DeliveryFailure::Status {
            status: StatusCode::SERVICE_UNAVAILABLE,
            retry_after: Some(Duration::from_secs(3)),
        };
        assert_eq!(
            failure.to_string(),
            "the webhook answered 503 Service Unavailable"
        );
        assert_eq!(failure.retry_after(), Some(Duration::from_secs(3)));
        assert_eq!(DeliveryFailure::Timeout("x".into()).retry_after(), None);
    }
}
