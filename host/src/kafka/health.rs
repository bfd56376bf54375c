//! Broker health, for readiness: can this host reach the Kafka cluster, with
//! the connection settings every client uses, right now?
//!
//! [`BrokerHealth`] keeps one metadata client for the life of the process
//! (so a check reuses its connection: TLS and SASL handshakes are paid once)
//! and asks for the metadata of one topic that need not exist, which costs
//! the broker little even on a large cluster and never creates anything.
//! librdkafka's metadata call blocks, so it runs on the blocking pool.
//!
//! A metadata timeout alone says little ("timed out"); the reason a
//! connection failed (TLS handshake, SASL authentication, DNS, refused) comes
//! through the client's error callback, so the context keeps the latest one
//! and a failed check names it.
//!
//! It does not decide what "ready" means for the application: the API does.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseProducer, Producer, ProducerContext};

use super::KafkaConnection;

/// A topic asked about only to have the broker answer; its absence is fine.
const PROBE_TOPIC: &str = "wasmhook-readiness-probe";

/// How long a failed check waits for librdkafka to say why.
const ERROR_WAIT: Duration = Duration::from_millis(100);

/// Why the brokers did not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BrokerDown(String);

impl BrokerDown {
    pub fn reason(&self) -> &str {
        &self.0
    }
}

/// Checks that the brokers answer; cheap to clone (one client behind it).
#[derive(Clone)]
pub struct BrokerHealth {
    client: Arc<BaseProducer<HealthContext>>,
}

impl BrokerHealth {
    /// A client for `kafka`. Nothing connects until the first check.
    pub fn new(kafka: &KafkaConnection) -> Result<Self, KafkaError> {
        let client = kafka
            .client_config("wasmhook-health")
            .set("allow.auto.create.topics", "false")
            // Notice a broker that came back within a second, not librdkafka's
            // default of up to 10 s between reconnection attempts.
            .set("reconnect.backoff.max.ms", "1000")
            .create_with_context(HealthContext::default())?;
        Ok(Self {
            client: Arc::new(client),
        })
    }

    /// Asks the brokers for metadata, waiting at most `timeout`.
    pub async fn check(&self, timeout: Duration) -> Result<(), BrokerDown> {
        let client = self.client.clone();
        let asked = tokio::task::spawn_blocking(move || {
            let answer = client.client().fetch_metadata(Some(PROBE_TOPIC), timeout);
            // Error callbacks run when the client is polled: here, so that the
            // reason of a failure is known before it is told. A failure may be
            // reported a moment after the request gave up: wait that moment.
            let context = client.context();
            match answer {
                Ok(_) => {
                    client.poll(Duration::ZERO);
                    context.forget();
                    Ok(())
                }
                Err(error) => {
                    client.poll(ERROR_WAIT);
                    Err(context.explain(&error))
                }
            }
        });
        // The blocking pool may be busy: the caller's bound holds regardless.
        match tokio::time::timeout(timeout + ERROR_WAIT + Duration::from_millis(500), asked).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(BrokerDown("the metadata request panicked".into())),
            Err(_) => Err(BrokerDown(format!(
                "no answer to a metadata request within {timeout:?}"
            ))),
        }
    }
}

/// Remembers the latest connection error librdkafka reported.
#[derive(Default)]
pub struct HealthContext {
    last_error: Mutex<Option<String>>,
}

impl HealthContext {
    fn forget(&self) {
        *self.last_error.lock().expect("health error lock") = None;
    }

    /// The failed request, with why connections failed when that is known.
    fn explain(&self, error: &KafkaError) -> BrokerDown {
        let request = error
            .rdkafka_error_code()
            .map(|code| code.to_string())
            .unwrap_or_else(|| error.to_string());
        match self.last_error.lock().expect("health error lock").as_ref() {
            Some(reason) => BrokerDown(format!("{request}; last connection error: {reason}")),
            None => BrokerDown(request),
        }
    }
}

impl ClientContext for HealthContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(error = %error, reason, "Kafka health client error.");
        let mut last = self.last_error.lock().expect("health error lock");
        // "All brokers are down" follows the failure that says why: keep that.
        if last.is_none() || error.rdkafka_error_code() != Some(RDKafkaErrorCode::AllBrokersDown) {
            *last = Some(reason.to_string());
        }
    }
}

impl ProducerContext for HealthContext {
    type DeliveryOpaque = ();

    /// It never produces.
    fn delivery(&self, _: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
}
