//! A Kafka producer whose acknowledgements are futures ([`AckingProducer`]),
//! served by a thread of its own that waits in librdkafka between events.
//!
//! It stands in for rdkafka's `FutureProducer`, whose thread polls in 100 ms
//! windows and ends each one polling librdkafka with a zero timeout in a
//! loop, for the part of a millisecond that librdkafka's whole-millisecond
//! waits cannot cover. Idle, that spin was most of a host's CPU (a `perf`
//! profile of 1 000 hibernating subscriptions: 63 %, three producers). Here a
//! window lasts [`POLL_WINDOW`], so the spin comes twenty times less often;
//! an acknowledgement ends a wait at once, so none is later for it.
//!
//! The same futures as `FutureProducer`'s: each resolves to an
//! [`OwnedDeliveryResult`], or to `Canceled` if the producer went away first.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Message, ToBytes};
use rdkafka::producer::future_producer::{Delivery, OwnedDeliveryResult};
use rdkafka::producer::{
    BaseProducer, BaseRecord, DeliveryResult, FutureRecord, Producer, ProducerContext,
};

/// How long the polling thread waits in one call to librdkafka (events end
/// it early); also how long the thread outlives its producer at most.
pub const POLL_WINDOW: Duration = Duration::from_secs(2);

/// How long a message waits between tries while librdkafka's queue is full.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(50);

/// The acknowledgement of one message: `Ok` with where it was written, or the
/// error and the message back; `Err(Canceled)` if the producer went away.
pub type Acked = oneshot::Receiver<OwnedDeliveryResult>;

/// Hands each acknowledgement to the future waiting for it.
pub struct Acks;

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = Box<oneshot::Sender<OwnedDeliveryResult>>;

    fn delivery(&self, result: &DeliveryResult<'_>, waiting: Self::DeliveryOpaque) {
        let owned = match result {
            Ok(message) => Ok(Delivery {
                partition: message.partition(),
                offset: message.offset(),
                timestamp: message.timestamp(),
            }),
            Err((error, message)) => Err((error.clone(), message.detach())),
        };
        // Nobody waiting any more is no error: the sender gave up on it.
        let _ = waiting.send(owned);
    }
}

/// A producer shared by clones; its thread ends within [`POLL_WINDOW`] of
/// the last clone's drop, and the producer with it (purging what is left,
/// whose futures then resolve with the purge's error).
#[derive(Clone)]
pub struct AckingProducer {
    inner: Arc<Inner>,
}

struct Inner {
    producer: Arc<BaseProducer<Acks>>,
    /// Held only here: the polling thread stops once it is gone, i.e. once
    /// the last clone is dropped.
    _owned: Arc<()>,
    /// Alive while the polling thread runs (it holds the only strong count).
    #[cfg_attr(not(test), allow(dead_code))] // what the tests watch
    running: Weak<()>,
}

impl AckingProducer {
    /// Creates the producer from `config` and starts its thread.
    pub fn new(config: &ClientConfig) -> KafkaResult<Self> {
        let producer: Arc<BaseProducer<Acks>> = Arc::new(config.create_with_context(Acks)?);
        let polled = producer.clone();
        let (owned, alive) = (Arc::new(()), Arc::new(()));
        let (owner, running) = (Arc::downgrade(&owned), Arc::downgrade(&alive));
        std::thread::Builder::new()
            .name("kafka-acks".into())
            .spawn(move || {
                let _alive = alive;
                while owner.strong_count() > 0 {
                    polled.poll(POLL_WINDOW);
                }
            })
            .map_err(|error| {
                KafkaError::ClientCreation(format!("cannot start a producer thread: {error}"))
            })?;
        Ok(Self {
            inner: Arc::new(Inner {
                producer,
                _owned: owned,
                running,
            }),
        })
    }

    /// Queues `record`; fails at once when librdkafka refuses it (its queue
    /// is full, the partition does not exist, the message is too large),
    /// handing the record back.
    #[allow(clippy::result_large_err)] // the record handed back, as rdkafka does
    pub fn send_result<'a, K, P>(
        &self,
        record: FutureRecord<'a, K, P>,
    ) -> Result<Acked, (KafkaError, FutureRecord<'a, K, P>)>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        let (waiting, acked) = oneshot::channel();
        let base = BaseRecord {
            topic: record.topic,
            partition: record.partition,
            payload: record.payload,
            key: record.key,
            timestamp: record.timestamp,
            headers: record.headers,
            delivery_opaque: Box::new(waiting),
        };
        match self.inner.producer.send(base) {
            Ok(()) => Ok(acked),
            Err((error, base)) => Err((
                error,
                FutureRecord {
                    topic: base.topic,
                    partition: base.partition,
                    payload: base.payload,
                    key: base.key,
                    timestamp: base.timestamp,
                    headers: base.headers,
                },
            )),
        }
    }

    /// Queues `record`, trying again while librdkafka's queue is full for
    /// up to `queue_timeout`; the acknowledgement is left to the caller.
    pub async fn queue<K, P>(
        &self,
        mut record: FutureRecord<'_, K, P>,
        queue_timeout: Duration,
    ) -> Result<Acked, KafkaError>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        let started = Instant::now();
        loop {
            match self.send_result(record) {
                Ok(acked) => return Ok(acked),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if started.elapsed() < queue_timeout =>
                {
                    record = back;
                    tokio::time::sleep(QUEUE_FULL_PAUSE).await;
                }
                Err((error, _)) => return Err(error),
            }
        }
    }

    /// Queues `record` as [`Self::queue`] does and waits for its
    /// acknowledgement.
    pub async fn send<K, P>(
        &self,
        record: FutureRecord<'_, K, P>,
        queue_timeout: Duration,
    ) -> Result<Delivery, KafkaError>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        match self.queue(record, queue_timeout).await?.await {
            Ok(result) => result.map_err(|(error, _)| error),
            Err(_) => Err(KafkaError::Canceled),
        }
    }

    /// Waits up to `within` until every queued message is acknowledged.
    pub fn flush(&self, within: Duration) -> KafkaResult<()> {
        self.inner.producer.flush(within)
    }

    /// How many messages are queued or in flight.
    pub fn in_flight_count(&self) -> i32 {
        self.inner.producer.in_flight_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_polling_thread_ends_once_the_last_clone_is_dropped() {
        // No broker is needed to create a producer; nothing is sent.
        let producer = AckingProducer::new(
            ClientConfig::new()
                .set("bootstrap.servers", "127.0.0.1:1")
                .set("log_level", "0"),
        )
        .expect("a producer");
        let running = producer.inner.running.clone();
        let clone = producer.clone();
        drop(producer);
        assert!(running.upgrade().is_some(), "a clone still holds it");
        drop(clone);
        // The thread notices within one poll window.
        let deadline = Instant::now() + POLL_WINDOW * 5;
        while running.upgrade().is_some() {
            assert!(
                Instant::now() < deadline,
                "the polling thread still runs {:?} after the last clone was dropped",
                POLL_WINDOW * 5
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
