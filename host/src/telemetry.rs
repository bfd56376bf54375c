//! Prometheus metrics: the process's one recorder, every metric's name, unit
//! and help, the few functions the engine calls to report, and the text
//! `GET /metrics` serves (admin token required, like the rest of the API).
//!
//! Names follow Prometheus conventions (`wasmhook_…_total` for counters,
//! `_seconds` for durations). Label values are bounded: subscription ids,
//! topics that exist, partitions, plugin names and versions, outcomes and
//! status classes — never a key, a URL or a message.
//!
//! The recorder is global (the `metrics` facade has one per process). A
//! process that runs several applications — the tests do — shares it; the
//! labels keep their subscriptions apart.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;
use uuid::Uuid;

use crate::registry::Counts;

pub const MESSAGES: &str = "wasmhook_messages_total";
pub const ATTEMPTS: &str = "wasmhook_delivery_attempts_total";
pub const REQUEST_DURATION: &str = "wasmhook_delivery_request_duration_seconds";
pub const LATENCY: &str = "wasmhook_delivery_latency_seconds";
pub const LAG: &str = "wasmhook_consumer_lag_messages";
pub const IN_FLIGHT: &str = "wasmhook_batches_in_flight";
pub const PLUGIN_DURATION: &str = "wasmhook_plugin_call_duration_seconds";
pub const PLUGIN_FAILURES: &str = "wasmhook_plugin_failures_total";
pub const INGEST_RECORDS: &str = "wasmhook_ingest_records_total";
pub const WS_OPENED: &str = "wasmhook_ws_connections_opened_total";
pub const WS_CLOSED: &str = "wasmhook_ws_connections_closed_total";

/// Gauges are set at least every lag interval or commit check; one not set
/// for this long describes something gone.
const GAUGE_IDLE: Duration = Duration::from_secs(120);

/// Histogram buckets for durations: 1 ms to 2 minutes.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

struct Installed {
    handle: PrometheusHandle,
    process: metrics_process::Collector,
}

static INSTALLED: OnceLock<Option<Installed>> = OnceLock::new();

/// Installs the recorder once per process (later calls are no-ops). `false`
/// when another recorder was installed first: metrics then go there, and
/// `/metrics` says it has none.
pub fn install() -> bool {
    INSTALLED
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .expect("the buckets are not empty")
                // A gauge not set for this long is dropped: the lag of a
                // partition that moved to another host, the in-flight
                // figure of a deleted subscription.
                .idle_timeout(MetricKindMask::GAUGE, Some(GAUGE_IDLE))
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            let process = metrics_process::Collector::default();
            process.describe();
            Some(Installed { handle, process })
        })
        .is_some()
}

/// The exposition text: the process figures are read now, then everything
/// is rendered. `None` when this process's recorder is not ours.
pub fn render() -> Option<String> {
    let installed = INSTALLED.get()?.as_ref()?;
    installed.process.collect();
    installed.handle.run_upkeep();
    Some(installed.handle.render())
}

fn describe() {
    describe_counter!(
        MESSAGES,
        Unit::Count,
        "Messages that reached a final outcome, per subscription and outcome \
         (delivered, filtered, denied, dead_lettered)."
    );
    describe_counter!(
        ATTEMPTS,
        Unit::Count,
        "Webhook requests, per subscription, outcome (success, failure) and \
         status class (2xx, 3xx, 4xx, 5xx, none when nothing answered)."
    );
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "Duration of each webhook request, per subscription."
    );
    describe_histogram!(
        LATENCY,
        Unit::Seconds,
        "From a message's Kafka timestamp to its successful delivery, per subscription."
    );
    describe_gauge!(
        LAG,
        Unit::Count,
        "Messages behind the end of each partition this host consumes, per \
         subscription, topic and partition (librdkafka's statistics)."
    );
    describe_gauge!(
        IN_FLIGHT,
        Unit::Count,
        "Batches being delivered (with their retries) per subscription."
    );
    describe_histogram!(
        PLUGIN_DURATION,
        Unit::Seconds,
        "Duration of each plugin call on a batch, per plugin (name@version) and kind."
    );
    describe_counter!(
        PLUGIN_FAILURES,
        Unit::Count,
        "Plugin calls that failed (trap, deadline, bad answer), per plugin and kind."
    );
    describe_counter!(
        WS_OPENED,
        Unit::Count,
        "WebSocket bridge connections opened (open now: opened - closed)."
    );
    describe_counter!(
        WS_CLOSED,
        Unit::Count,
        "WebSocket bridge connections closed."
    );
    describe_counter!(
        INGEST_RECORDS,
        Unit::Count,
        "Records produced over HTTP, per topic and outcome (written, failed)."
    );
}

/// A batch's final outcomes.
pub fn messages(subscription: Uuid, counts: &Counts) {
    let id = subscription.to_string();
    for (outcome, n) in [
        ("delivered", counts.delivered),
        ("filtered", counts.filtered),
        ("denied", counts.denied),
        ("dead_lettered", counts.dead_lettered),
    ] {
        if n > 0 {
            counter!(MESSAGES, "subscription" => id.clone(), "outcome" => outcome)
                .increment(n as u64);
        }
    }
}

/// The class of an HTTP status, `none` when nothing answered (status 0).
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "none",
    }
}

/// One webhook request and how long it took.
pub fn attempt(subscription: Uuid, status: u16, delivered: bool, took: Duration) {
    let id = subscription.to_string();
    let outcome = if delivered { "success" } else { "failure" };
    counter!(
        ATTEMPTS,
        "subscription" => id.clone(),
        "outcome" => outcome,
        "status_class" => status_class(status)
    )
    .increment(1);
    histogram!(REQUEST_DURATION, "subscription" => id).record(took.as_secs_f64());
}

/// Publish → delivery for each message of a delivered batch, in
/// milliseconds (from its Kafka timestamp to the moment of delivery).
pub fn latency(subscription: Uuid, latencies_ms: &[i64]) {
    let latency = histogram!(LATENCY, "subscription" => subscription.to_string());
    for &ms in latencies_ms {
        latency.record(ms as f64 / 1000.0);
    }
}

/// A subscription's lag on one partition.
pub fn lag(subscription: Uuid, topic: &str, partition: i32, lag: i64) {
    gauge!(
        LAG,
        "subscription" => subscription.to_string(),
        "topic" => topic.to_string(),
        "partition" => partition.to_string()
    )
    .set(lag as f64);
}

/// How many batches of a subscription are in flight on this host now.
pub fn in_flight(subscription: Uuid, batches: usize) {
    gauge!(IN_FLIGHT, "subscription" => subscription.to_string()).set(batches as f64);
}

/// One plugin call on a batch.
pub fn plugin_call(plugin: &str, kind: &'static str, took: Duration, failed: bool) {
    histogram!(PLUGIN_DURATION, "plugin" => plugin.to_string(), "kind" => kind)
        .record(took.as_secs_f64());
    if failed {
        counter!(PLUGIN_FAILURES, "plugin" => plugin.to_string(), "kind" => kind).increment(1);
    }
}

/// Records produced over HTTP to a topic that exists.
pub fn ingested(topic: &str, written: bool) {
    let outcome = if written { "written" } else { "failed" };
    counter!(INGEST_RECORDS, "topic" => topic.to_string(), "outcome" => outcome).increment(1);
}

/// A WebSocket bridge connection opened (`true`) or closed. Counters, not a
/// gauge: a count of open connections that does not change would be dropped
/// as idle.
pub fn ws_connection(opened: bool) {
    counter!(if opened { WS_OPENED } else { WS_CLOSED }).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes_cover_every_answer_and_none() {
        assert_eq!(status_class(200), "2xx");
        assert_eq!(status_class(204), "2xx");
        assert_eq!(status_class(302), "3xx");
        assert_eq!(status_class(429), "4xx");
        assert_eq!(status_class(503), "5xx");
        assert_eq!(status_class(0), "none");
    }

    #[test]
    fn every_name_follows_the_prometheus_conventions() {
        for name in [
            MESSAGES,
            ATTEMPTS,
            PLUGIN_FAILURES,
            INGEST_RECORDS,
            WS_OPENED,
            WS_CLOSED,
        ] {
            assert!(
                name.starts_with("wasmhook_") && name.ends_with("_total"),
                "{name}"
            );
        }
        for name in [REQUEST_DURATION, LATENCY, PLUGIN_DURATION] {
            assert!(
                name.starts_with("wasmhook_") && name.ends_with("_seconds"),
                "{name}"
            );
        }
    }
}
