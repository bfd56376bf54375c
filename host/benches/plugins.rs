//! Per-message cost of filtering and serialising, native and in WebAssembly:
//!
//! - `jmes`: the native JMESPath filter (`domain::JmesFilter`), on a parsed
//!   `JmesDocument` (`match`), from the raw JSON bytes parsed whole
//!   (`parse+match`) and parsed only where the expression reads, as the
//!   pipeline does it (`read+match`);
//! - `wasm-filter`: the `field-match` Rust plugin at batches of 1, 100, 1000;
//! - `wasm-serialiser`: the `cloudevents` Rust plugin at the same sizes.
//!
//! Criterion reports time per batch and, through `Throughput::Elements`,
//! messages per second; per-message cost = time / batch size.
//!
//! Needs the plugins built (`plugins/build.sh`, or any `cargo test
//! --workspace`, whose tests/build.rs builds them). Run:
//! `cargo bench -p wasmhook --bench plugins`.

use std::path::Path;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use wasmhook::domain::{JmesDocument, JmesFilter, PluginRole};
use wasmhook::plugin::{Message, PluginEngine, PluginInstance, RuntimeSettings};

fn wasm(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/target/wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run plugins/build.sh first", path.display()))
}

/// A realistic small event (~110 bytes of JSON); every third one is from FR.
fn value(i: usize) -> String {
    format!(
        r#"{{"id":{i},"customer":{{"id":"c{i}","country":"{}"}},"total":{}.5,"items":[1,2,3]}}"#,
        ["FR", "DE", "BE"][i % 3],
        i * 7
    )
}

fn batch(n: usize) -> Vec<Message> {
    (0..n)
        .map(|i| Message {
            topic: "orders".into(),
            partition: 0,
            offset: i as i64,
            timestamp: Some(1_700_000_000_000 + i as i64),
            key: Some(format!("customer-{i}").into_bytes()),
            value: value(i).into_bytes(),
            headers: vec![(
                "trace-id".into(),
                b"0af7651916cd43dd8448eb211c80319c".to_vec(),
            )],
        })
        .collect()
}

fn config(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

const SIZES: [usize; 3] = [1, 100, 1000];

fn native_jmes(c: &mut Criterion) {
    let filter = JmesFilter::parse("customer.country == 'FR'".into()).expect("a valid expression");
    let raw: Vec<String> = (0..1000).map(value).collect();
    let parsed: Vec<JmesDocument> = raw
        .iter()
        .map(|v| JmesDocument::from_json(v).expect("JSON"))
        .collect();
    let mut group = c.benchmark_group("jmes");
    group.throughput(Throughput::Elements(1000));
    group.bench_function("match/1000", |b| {
        b.iter(|| parsed.iter().filter(|v| filter.matches(v)).count())
    });
    // Parsing the whole document, and (as the pipeline does) only the
    // fields the expression reads.
    group.bench_function("parse+match/1000", |b| {
        b.iter(|| {
            raw.iter()
                .filter(|v| {
                    JmesDocument::from_json(v)
                        .map(|v| filter.matches(&v))
                        .unwrap_or(false)
                })
                .count()
        })
    });
    group.bench_function("read+match/1000", |b| {
        b.iter(|| {
            raw.iter()
                .filter(|v| {
                    JmesDocument::read(v, filter.reads())
                        .map(|v| filter.matches(&v))
                        .unwrap_or(false)
                })
                .count()
        })
    });
    group.finish();
}

fn wasm_plugins(c: &mut Criterion) {
    // Calls are async and run on the engine's plugin threads; the benchmark
    // drives them from a runtime of its own, as the pipelines do.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let engine = PluginEngine::new(RuntimeSettings::default()).expect("engine");
    let limits = engine.limits().defaults;

    let compiled = runtime
        .block_on(engine.compile(PluginRole::Filter, wasm("field_match")))
        .expect("field_match compiles");
    let mut filter = runtime
        .block_on(PluginInstance::new(
            &engine,
            &compiled,
            config(&[("field", "/customer/country"), ("equals", "FR")]),
            limits,
        ))
        .expect("field_match init");
    let mut group = c.benchmark_group("wasm-filter");
    for n in SIZES {
        let messages = batch(n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &messages, |b, m| {
            b.iter_batched(
                || m.clone(),
                |m| runtime.block_on(filter.filter(m)).expect("filter"),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();

    let compiled = runtime
        .block_on(engine.compile(PluginRole::Serialiser, wasm("cloudevents")))
        .expect("cloudevents compiles");
    let mut serialiser = runtime
        .block_on(PluginInstance::new(
            &engine,
            &compiled,
            config(&[("source", "urn:wasmhook:bench"), ("type", "order.created")]),
            limits,
        ))
        .expect("cloudevents init");
    let mut group = c.benchmark_group("wasm-serialiser");
    for n in SIZES {
        let messages = batch(n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &messages, |b, m| {
            b.iter_batched(
                || m.clone(),
                |m| {
                    runtime
                        .block_on(serialiser.serialise(m))
                        .expect("serialise")
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    // Short runs: a 2-core machine shared with builds; enough for stable medians.
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = native_jmes, wasm_plugins
}
criterion_main!(benches);
