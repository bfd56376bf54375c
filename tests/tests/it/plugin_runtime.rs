//! The plugin runtime (`wasmhook::plugin`) on its own, against the
//! first-party plugins and the hostile guests of `plugins/test-guests/`:
//! every misbehaviour ends in a defined `PluginError` within the plugin's
//! limits, the host carries on, a store that may be poisoned is rebuilt, and
//! a plugin that keeps failing is suspended.

use std::time::{Duration, Instant};

use wasmhook::domain::PluginRole;
use wasmhook::plugin::guest_text::MAX_GUEST_TEXT;
use wasmhook::plugin::{
    Decision, EPOCH_TICK, Message, PluginEngine, PluginError, PluginInstance, PluginLimits,
    RuntimeSettings, SubscriberContext, sha256_hex,
};

use crate::helpers::{plugin_wasm, wat_component};

fn config(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn message(offset: i64, value: &str) -> Message {
    Message {
        topic: "orders".into(),
        partition: 2,
        offset,
        timestamp: Some(1_700_000_000_000),
        key: Some(b"k".to_vec()),
        value: value.as_bytes().to_vec(),
        headers: vec![("trace".into(), b"abc".to_vec())],
    }
}

fn ctx() -> SubscriberContext {
    SubscriberContext {
        subscription_id: "s1".into(),
        subscription_name: "acme".into(),
        topic: "orders".into(),
    }
}

fn engine() -> PluginEngine {
    PluginEngine::new(RuntimeSettings::default()).unwrap()
}

fn engine_with(adjust: impl FnOnce(&mut RuntimeSettings)) -> PluginEngine {
    let mut settings = RuntimeSettings::default();
    adjust(&mut settings);
    PluginEngine::new(settings).unwrap()
}

fn defaults(engine: &PluginEngine) -> PluginLimits {
    engine.limits().defaults
}

/// Limits generous enough that a busy 2-core machine never trips them, with
/// the one under test set by the caller.
fn roomy() -> PluginLimits {
    PluginLimits {
        memory_bytes: 64 << 20,
        cpu_deadline: Duration::from_secs(5),
        wall_deadline: Duration::from_secs(30),
    }
}

async fn instance(
    engine: &PluginEngine,
    role: PluginRole,
    wasm: Vec<u8>,
    config: Vec<(String, String)>,
    limits: PluginLimits,
) -> Result<PluginInstance, PluginError> {
    let compiled = engine.compile(role, wasm).await?;
    PluginInstance::new(engine, &compiled, config, limits).await
}

async fn guest(engine: &PluginEngine, role: PluginRole, name: &str) -> PluginInstance {
    instance(engine, role, plugin_wasm(name), vec![], defaults(engine))
        .await
        .unwrap()
}

async fn hostile(engine: &PluginEngine, mode: &str, limits: PluginLimits) -> PluginInstance {
    instance(
        engine,
        PluginRole::Filter,
        plugin_wasm("guest_hostile"),
        config(&[("mode", mode)]),
        limits,
    )
    .await
    .unwrap()
}

async fn field_match(engine: &PluginEngine) -> PluginInstance {
    instance(
        engine,
        PluginRole::Filter,
        plugin_wasm("field_match"),
        config(&[("field", "k"), ("equals", "1")]),
        defaults(engine),
    )
    .await
    .unwrap()
}

/// Twenty calls of a well-behaved filter, each checked.
async fn twenty_healthy_calls(engine: &PluginEngine) {
    let mut healthy = field_match(engine).await;
    for offset in 0..20 {
        assert_eq!(
            healthy
                .filter(vec![message(offset, r#"{"k":1}"#)])
                .await
                .unwrap(),
            [true]
        );
    }
}

// ---- What plugins answer ----

#[tokio::test]
async fn field_match_returns_one_flag_per_message_in_order() {
    let engine = engine();
    let mut filter = instance(
        &engine,
        PluginRole::Filter,
        plugin_wasm("field_match"),
        config(&[("field", "/country"), ("in", "FR,BE")]),
        defaults(&engine),
    )
    .await
    .unwrap();
    let batch = vec![
        message(0, r#"{"country":"FR"}"#),
        message(1, r#"{"country":"DE"}"#),
        message(2, "not json"),
        message(3, r#"{"country":"BE"}"#),
    ];
    assert_eq!(
        filter.filter(batch).await.unwrap(),
        [true, false, false, true]
    );
    assert_eq!(filter.filter(vec![]).await.unwrap(), Vec::<bool>::new());
}

#[tokio::test]
async fn bad_plugin_configuration_is_reported_at_instantiation() {
    let engine = engine();
    let err = instance(
        &engine,
        PluginRole::Filter,
        plugin_wasm("field_match"),
        config(&[("field", "/x")]),
        defaults(&engine),
    )
    .await
    .err()
    .unwrap();
    assert!(
        matches!(&err, PluginError::Config(m) if m.contains("equals")),
        "{err}"
    );
}

#[tokio::test]
async fn cloudevents_serialises_the_whole_batch_into_one_body() {
    let engine = engine();
    let mut ser = instance(
        &engine,
        PluginRole::Serialiser,
        plugin_wasm("cloudevents"),
        config(&[("source", "urn:test"), ("type", "order.created")]),
        defaults(&engine),
    )
    .await
    .unwrap();
    let out = ser
        .serialise(vec![message(7, r#"{"a":1}"#), message(8, "raw")])
        .await
        .unwrap();
    assert_eq!(out.content_type, "application/cloudevents-batch+json");
    let events: serde_json::Value = serde_json::from_slice(&out.body).unwrap();
    assert_eq!(events[0]["id"], "orders/2/7");
    assert_eq!(events[0]["data"], serde_json::json!({"a": 1}));
    assert_eq!(events[0]["time"], "2023-11-14T22:13:20.000Z");
    assert_eq!(events[1]["data_base64"], "cmF3");
    assert_eq!(events.as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn tenant_policy_denies_other_tenants_and_redacts_fields() {
    let engine = engine();
    let mut policy = instance(
        &engine,
        PluginRole::Policy,
        plugin_wasm("tenant_policy"),
        config(&[("tenant", "acme"), ("redact", "card")]),
        defaults(&engine),
    )
    .await
    .unwrap();
    let decisions = policy
        .authorise(
            ctx(),
            vec![
                message(0, r#"{"tenant":"acme","card":"4111","n":1}"#),
                message(1, r#"{"tenant":"globex"}"#),
                message(2, r#"{"tenant":"acme"}"#),
            ],
        )
        .await
        .unwrap();
    let Decision::Redact(value) = &decisions[0] else {
        panic!("expected redact: {decisions:?}");
    };
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(value).unwrap(),
        serde_json::json!({"tenant": "acme", "n": 1})
    );
    assert!(matches!(&decisions[1], Decision::Deny(r) if r.contains("another tenant")));
    assert_eq!(decisions[2], Decision::Allow);
}

#[tokio::test]
async fn calling_a_plugin_as_another_role_is_an_error_not_a_panic() {
    let engine = engine();
    let mut filter = field_match(&engine).await;
    assert!(matches!(
        filter.serialise(vec![]).await,
        Err(PluginError::Runtime(_))
    ));
}

// ---- Compiling and the cache ----

#[tokio::test]
async fn only_remembered_components_are_cached_and_the_role_is_checked_again() {
    let engine = engine();
    let wasm = plugin_wasm("field_match");
    let sha256 = sha256_hex(&wasm);
    let compiled = engine
        .compile(PluginRole::Filter, wasm.clone())
        .await
        .unwrap();
    assert_eq!(compiled.sha256(), sha256);
    assert_eq!(compiled.role(), PluginRole::Filter);
    // Validated, but not stored anywhere yet: not cached.
    assert_eq!(engine.cached(), 0);
    assert!(engine.compiled(PluginRole::Filter, &sha256).is_none());

    engine.remember(&compiled);
    assert_eq!(engine.cached(), 1);
    assert!(engine.cached_bytes() > 0);
    let cached = engine
        .compiled(PluginRole::Filter, &sha256)
        .unwrap()
        .unwrap();
    assert_eq!(cached.sha256(), sha256);
    // The role check is not cached: the same bytes as another role fail.
    assert!(matches!(
        engine.compiled(PluginRole::Policy, &sha256),
        Some(Err(PluginError::WrongWorld(_)))
    ));
    assert!(matches!(
        engine.compile(PluginRole::Policy, wasm).await,
        Err(PluginError::WrongWorld(_))
    ));

    engine.forget(&sha256);
    assert_eq!(engine.cached(), 0);
    // Instances made before `forget` keep working.
    let mut filter = PluginInstance::new(
        &engine,
        &compiled,
        config(&[("field", "k"), ("equals", "1")]),
        defaults(&engine),
    )
    .await
    .unwrap();
    assert_eq!(
        filter.filter(vec![message(0, r#"{"k":1}"#)]).await.unwrap(),
        [true]
    );
}

#[tokio::test]
async fn the_cache_keeps_at_most_its_size_in_machine_code() {
    let probe = engine();
    let one = probe
        .compile(PluginRole::Filter, plugin_wasm("field_match"))
        .await
        .unwrap();
    probe.remember(&one);
    let size = probe.cached_bytes();

    // Room for one of them: remembering a second evicts the first.
    let engine = engine_with(|s| s.cache_bytes = size + size / 2);
    let first = engine
        .compile(PluginRole::Filter, plugin_wasm("field_match"))
        .await
        .unwrap();
    engine.remember(&first);
    let second = engine
        .compile(PluginRole::Serialiser, plugin_wasm("cloudevents"))
        .await
        .unwrap();
    engine.remember(&second);
    assert_eq!(engine.cached(), 1);
    assert!(engine.cached_bytes() <= size + size / 2);
    assert!(
        engine
            .compiled(PluginRole::Filter, first.sha256())
            .is_none()
    );
    assert!(
        engine
            .compiled(PluginRole::Serialiser, second.sha256())
            .is_some()
    );
}

#[tokio::test]
async fn compiles_are_limited_in_input_size_and_time() {
    let engine = engine_with(|s| s.max_component_bytes = 1024);
    let err = engine
        .compile(PluginRole::Filter, plugin_wasm("field_match"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PluginError::InvalidComponent(m) if m.contains("largest component")),
        "{err}"
    );

    // No compilation of a real component finishes within a microsecond.
    let engine = engine_with(|s| s.compile_timeout = Duration::from_micros(1));
    let err = engine
        .compile(PluginRole::Filter, plugin_wasm("cloudevents"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            PluginError::CompileTimeout(_) | PluginError::CompilerBusy(_)
        ),
        "{err}"
    );
    assert!(err.rejects_upload() || matches!(err, PluginError::CompilerBusy(_)));
}

#[tokio::test]
async fn core_module_and_garbage_are_not_components() {
    let engine = engine();
    let err = engine
        .compile(PluginRole::Filter, b"\0asm\x01\0\0\0".to_vec())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PluginError::InvalidComponent(m) if m.contains("core WebAssembly module")),
        "{err}"
    );
    let err = engine
        .compile(PluginRole::Filter, b"#!/bin/sh\nrm -rf /".to_vec())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PluginError::InvalidComponent(m) if m.contains("not WebAssembly")),
        "{err}"
    );
    // Right header, broken body: wasmtime's parser reports it.
    let mut truncated = plugin_wasm("field_match");
    truncated.truncate(truncated.len() / 2);
    let err = engine
        .compile(PluginRole::Filter, truncated)
        .await
        .unwrap_err();
    assert!(matches!(err, PluginError::InvalidComponent(_)), "{err}");
}

#[tokio::test]
async fn component_of_another_role_is_the_wrong_world_and_names_the_missing_export() {
    let engine = engine();
    let err = engine
        .compile(PluginRole::Filter, plugin_wasm("cloudevents"))
        .await
        .unwrap_err();
    let PluginError::WrongWorld(msg) = &err else {
        panic!("expected WrongWorld, got {err:?}");
    };
    assert!(msg.contains("`filter`"), "{msg}");
    assert!(
        msg.contains("`serialise`"),
        "should list what it does export: {msg}"
    );
    let err = engine
        .compile(PluginRole::Policy, plugin_wasm("field_match"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PluginError::WrongWorld(m) if m.contains("authorise")),
        "{err}"
    );
    let err = engine
        .compile(PluginRole::Filter, plugin_wasm("guest_wrong_signature"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PluginError::WrongWorld(m) if m.contains("init") || m.contains("filter")),
        "{err}"
    );
}

#[tokio::test]
async fn forbidden_import_is_rejected_by_name() {
    let engine = engine();
    let err = engine
        .compile(PluginRole::Filter, plugin_wasm("guest_forbidden_import"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PluginError::ForbiddenImport(m) if m.contains("evil:exfil/network")),
        "{err}"
    );
}

// ---- Deadlines ----

#[tokio::test]
async fn an_infinite_loop_is_stopped_at_its_cpu_deadline_every_time() {
    let engine = engine();
    let limits = PluginLimits {
        cpu_deadline: Duration::from_millis(50),
        ..roomy()
    };
    let mut looping = instance(
        &engine,
        PluginRole::Filter,
        plugin_wasm("guest_loop"),
        vec![],
        limits,
    )
    .await
    .unwrap();
    for attempt in 1..=2 {
        let started = Instant::now();
        let err = looping.filter(vec![message(0, "{}")]).await.unwrap_err();
        let took = started.elapsed();
        assert!(
            matches!(err, PluginError::CpuDeadline(d) if d == limits.cpu_deadline),
            "attempt {attempt}: {err}"
        );
        // CPU time never runs ahead of the clock: it cannot stop early.
        assert!(
            took >= limits.cpu_deadline - EPOCH_TICK,
            "attempt {attempt}: cut early after {took:?}"
        );
    }
    // Created once, rebuilt after the first overrun.
    assert_eq!(looping.instantiations(), 2);
}

#[tokio::test]
async fn init_that_loops_or_sleeps_ends_at_its_deadline() {
    let engine = engine();
    // A wall-clock deadline far past the CPU one: on a busy machine the loop
    // still reaches its CPU deadline first.
    let looping = PluginLimits {
        cpu_deadline: Duration::from_millis(100),
        ..roomy()
    };
    let sleeping = PluginLimits {
        cpu_deadline: Duration::from_millis(100),
        wall_deadline: Duration::from_millis(500),
        ..roomy()
    };
    for (mode, limits) in [("loop-init", looping), ("sleep-init", sleeping)] {
        let started = Instant::now();
        let err = instance(
            &engine,
            PluginRole::Filter,
            plugin_wasm("guest_hostile"),
            config(&[("mode", mode)]),
            limits,
        )
        .await
        .err()
        .unwrap();
        let took = started.elapsed();
        match mode {
            "loop-init" => assert!(matches!(err, PluginError::CpuDeadline(_)), "{mode}: {err}"),
            _ => assert!(matches!(err, PluginError::WallDeadline(_)), "{mode}: {err}"),
        }
        assert!(
            took < limits.wall_deadline + Duration::from_secs(1),
            "{mode}: took {took:?}"
        );
    }
}

#[tokio::test]
async fn a_sleeping_call_ends_at_its_wall_deadline_and_frees_its_thread() {
    // One plugin thread: if the sleeper held it, nothing else could run.
    let engine = engine_with(|s| s.threads = 1);
    let limits = PluginLimits {
        wall_deadline: Duration::from_secs(3),
        ..roomy()
    };
    let mut sleeper = hostile(&engine, "sleep", limits).await;
    let started = Instant::now();
    let sleeping = tokio::spawn(async move { sleeper.filter(vec![message(0, "{}")]).await });

    twenty_healthy_calls(&engine).await;
    assert!(
        !sleeping.is_finished(),
        "the healthy calls ran while the sleeper slept"
    );
    let err = sleeping.await.unwrap().unwrap_err();
    assert!(matches!(err, PluginError::WallDeadline(_)), "{err}");
    let took = started.elapsed();
    assert!(took >= limits.wall_deadline - EPOCH_TICK, "{took:?}");
    assert!(
        took < limits.wall_deadline + Duration::from_secs(2),
        "{took:?}"
    );
}

#[tokio::test]
async fn a_looping_plugin_shares_its_thread_with_the_others() {
    let engine = engine_with(|s| s.threads = 1);
    let limits = PluginLimits {
        cpu_deadline: Duration::from_secs(3),
        ..roomy()
    };
    let mut looping = instance(
        &engine,
        PluginRole::Filter,
        plugin_wasm("guest_loop"),
        vec![],
        limits,
    )
    .await
    .unwrap();
    let stuck = tokio::spawn(async move { looping.filter(vec![message(0, "{}")]).await });
    twenty_healthy_calls(&engine).await;
    assert!(
        !stuck.is_finished(),
        "the healthy calls took turns with the loop on the one thread"
    );
    assert!(matches!(
        stuck.await.unwrap(),
        Err(PluginError::CpuDeadline(_))
    ));
}

// ---- Traps and bad results ----

#[tokio::test]
async fn panic_is_a_trap_with_the_panic_message_and_the_next_call_gets_a_fresh_instance() {
    let engine = engine();
    let mut panicky = guest(&engine, PluginRole::Filter, "guest_panic").await;
    assert_eq!(
        panicky.filter(vec![message(0, "ok")]).await.unwrap(),
        [true]
    );

    let err = panicky
        .filter(vec![message(1, "ok"), message(2, "panic")])
        .await
        .unwrap_err();
    let PluginError::Trap(reason) = &err else {
        panic!("expected a trap, got {err:?}");
    };
    assert!(
        reason.contains("guest-panic was asked to panic"),
        "{reason}"
    );

    // The guest counts its calls: a fresh instance (init again) says 1.
    let err = panicky.filter(vec![message(3, "calls")]).await.unwrap_err();
    assert!(
        matches!(&err, PluginError::Guest(r) if r == "calls=1"),
        "{err:?}"
    );
    assert_eq!(
        panicky.filter(vec![message(4, "ok")]).await.unwrap(),
        [true]
    );
    assert_eq!(panicky.instantiations(), 2);
}

#[tokio::test]
async fn a_stack_overflow_is_a_trap() {
    let engine = engine();
    let mut deep = hostile(&engine, "stack-overflow", roomy()).await;
    let err = deep.filter(vec![message(0, "{}")]).await.unwrap_err();
    assert!(
        matches!(&err, PluginError::Trap(m) if m.contains("call stack exhausted")),
        "{err}"
    );
    // The store was rebuilt, and works.
    let err = deep.filter(vec![message(1, "{}")]).await.unwrap_err();
    assert!(matches!(&err, PluginError::Trap(_)), "{err}");
    assert_eq!(deep.instantiations(), 2);
}

#[tokio::test]
async fn a_huge_error_is_cut_to_a_kilobyte_without_control_characters() {
    let engine = engine();
    let mut loud = hostile(&engine, "huge-error", roomy()).await;
    let err = loud.filter(vec![message(0, "{}")]).await.unwrap_err();
    let PluginError::Guest(reason) = &err else {
        panic!("expected the guest's error, got {err:?}");
    };
    assert!(reason.len() < MAX_GUEST_TEXT + 64, "{} bytes", reason.len());
    assert!(reason.contains("more bytes cut"), "{reason}");
    assert!(!reason.chars().any(char::is_control), "{reason:?}");
    assert!(reason.contains("evil"), "{reason}");

    // 24 MiB is more than a batch may return at all: refused before copying.
    let mut louder = hostile(&engine, "enormous-error", roomy()).await;
    let err = louder.filter(vec![message(0, "{}")]).await.unwrap_err();
    assert!(
        matches!(&err, PluginError::Trap(m) if m.contains("too much data")),
        "{err}"
    );
}

#[tokio::test]
async fn a_wrong_number_of_flags_is_a_bad_result() {
    let engine = engine();
    let mut short = hostile(&engine, "wrong-length", roomy()).await;
    let err = short
        .filter(vec![message(0, "{}"), message(1, "{}"), message(2, "{}")])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PluginError::BadResult(m) if m.contains("2 flags for a batch of 3")),
        "{err}"
    );
}

#[tokio::test]
async fn flooding_stdout_and_stderr_costs_the_guest_time_not_the_host_memory() {
    let engine = engine();
    let mut flood = hostile(&engine, "flood", roomy()).await;
    assert_eq!(
        flood.filter(vec![message(0, "{}")]).await.unwrap(),
        [true],
        "writing 1 MiB to each stream neither fails nor traps"
    );
}

#[tokio::test]
async fn leaking_wasi_resources_hits_the_resource_cap_not_the_host() {
    let engine = engine();
    let mut leaky = hostile(&engine, "resources", roomy()).await;
    let err = leaky.filter(vec![message(0, "{}")]).await.unwrap_err();
    assert!(matches!(err, PluginError::Trap(_)), "{err}");
}

#[tokio::test]
async fn a_policy_cannot_make_the_host_copy_more_than_the_result_budget() {
    let engine = engine();
    let mut amplifier = instance(
        &engine,
        PluginRole::Policy,
        wat_component("amplifying-policy", "policy"),
        vec![],
        roomy(),
    )
    .await
    .unwrap();
    // 2 × 48 MiB, both pointing at one buffer: past the budget of this
    // batch (16 MiB and twice its size), refused before anything is copied.
    let batch: Vec<Message> = (0..2).map(|i| message(i, "{}")).collect();
    let err = amplifier.authorise(ctx(), batch).await.unwrap_err();
    assert!(
        matches!(&err, PluginError::Trap(m) if m.contains("too much data")),
        "{err}"
    );
    assert!(err.poisons_instance(), "the call never finished: rebuild");
}

// ---- Memory and tables ----

#[tokio::test]
async fn memory_hog_gets_a_memory_limit_error_and_the_host_survives() {
    let engine = engine();
    let limits = PluginLimits {
        memory_bytes: 16 << 20,
        ..roomy()
    };
    let mut hog = instance(
        &engine,
        PluginRole::Filter,
        plugin_wasm("guest_memory_hog"),
        vec![],
        limits,
    )
    .await
    .unwrap();
    for _ in 0..2 {
        let err = hog.filter(vec![message(0, "{}")]).await.unwrap_err();
        assert!(
            matches!(err, PluginError::MemoryLimit(16_777_216)),
            "{err:?}"
        );
    }
}

#[tokio::test]
async fn the_memory_cap_holds_for_all_memories_of_an_instance_together() {
    let engine = engine();
    let wasm = wat_component("memories", "filter");
    let err = instance(&engine, PluginRole::Filter, wasm, vec![], roomy())
        .await
        .err()
        .unwrap();
    assert!(matches!(err, PluginError::MemoryLimit(_)), "{err}");

    let wasm = wat_component("many-memories", "filter");
    let err = instance(&engine, PluginRole::Filter, wasm, vec![], roomy())
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("memor"), "{err}");
}

#[tokio::test]
async fn table_growth_is_capped() {
    let engine = engine();
    let wasm = wat_component("table-growth", "filter");
    let err = instance(&engine, PluginRole::Filter, wasm, vec![], roomy())
        .await
        .err()
        .unwrap();
    assert!(matches!(err, PluginError::TableLimit), "{err}");
}

// ---- The sandbox ----

#[tokio::test]
async fn sandbox_probe_sees_no_files_env_args_or_network() {
    // The test process has an environment (cargo sets CARGO_* vars), so an
    // empty one in the guest means nothing was inherited. (Not planting a
    // variable: set_var races with other test threads reading the env.)
    assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
    let engine = engine();
    let mut probe = guest(&engine, PluginRole::Serialiser, "guest_sandbox_probe").await;
    let out = probe.serialise(vec![]).await.unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.body).unwrap();
    assert_eq!(report["env"], serde_json::json!([]), "{report}");
    assert_eq!(report["args"], serde_json::json!([]), "{report}");
    for probe in [
        "read_etc_passwd",
        "read_relative",
        "list_root",
        "list_cwd",
        "create_file",
        "tcp_connect",
    ] {
        let outcome = report[probe].as_str().unwrap_or_default();
        assert!(
            outcome.starts_with("err"),
            "{probe} should fail in the sandbox: {report}"
        );
    }
    assert!(!std::path::Path::new("/tmp/wasmhook-escape").exists());
}

#[tokio::test]
async fn trapping_policy_and_failing_serialiser_guests_fail_as_documented() {
    let engine = engine();
    let mut policy = guest(&engine, PluginRole::Policy, "guest_trap_policy").await;
    let err = policy
        .authorise(ctx(), vec![message(0, "{}")])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PluginError::Trap(m) if m.contains("always traps")),
        "{err}"
    );

    let mut failing = guest(&engine, PluginRole::Serialiser, "guest_failing_serialiser").await;
    let err = failing.serialise(vec![message(0, "{}")]).await.unwrap_err();
    assert!(
        matches!(&err, PluginError::Guest(m) if m.contains("refuses 1")),
        "{err}"
    );
}

// ---- The circuit breaker ----

#[tokio::test]
async fn a_plugin_that_keeps_failing_is_suspended_then_tried_again() {
    let engine = engine();
    let limits = PluginLimits {
        cpu_deadline: Duration::from_millis(50),
        ..roomy()
    };
    let mut looping = instance(
        &engine,
        PluginRole::Filter,
        plugin_wasm("guest_loop"),
        vec![],
        limits,
    )
    .await
    .unwrap();
    for _ in 0..3 {
        let err = looping.filter(vec![message(0, "{}")]).await.unwrap_err();
        assert!(matches!(err, PluginError::CpuDeadline(_)), "{err}");
    }
    assert!(looping.suspension().is_some());
    let built = looping.instantiations();

    // Suspended: the next calls fail at once, nothing is rebuilt or run.
    let started = Instant::now();
    for _ in 0..5 {
        let err = looping.filter(vec![message(0, "{}")]).await.unwrap_err();
        let PluginError::Suspended { failures, last, .. } = &err else {
            panic!("expected a suspension, got {err:?}");
        };
        assert_eq!(*failures, 3);
        assert!(last.contains("CPU deadline"), "{last}");
    }
    assert!(started.elapsed() < limits.cpu_deadline, "no guest code ran");
    assert_eq!(looping.instantiations(), built);

    // After the back-off, one try goes through (and fails again here).
    tokio::time::sleep(wasmhook::plugin::breaker::FIRST_BACK_OFF).await;
    let err = looping.filter(vec![message(0, "{}")]).await.unwrap_err();
    assert!(matches!(err, PluginError::CpuDeadline(_)), "{err}");
    assert_eq!(looping.instantiations(), built + 1);
}

#[tokio::test]
async fn a_success_after_failures_closes_the_breaker() {
    let engine = engine();
    let mut flaky = hostile(&engine, "fail-until", roomy()).await;
    for _ in 0..3 {
        let err = flaky.filter(vec![message(0, "{}")]).await.unwrap_err();
        assert!(matches!(err, PluginError::Guest(_)), "{err}");
    }
    assert!(flaky.suspension().is_some());
    tokio::time::sleep(wasmhook::plugin::breaker::FIRST_BACK_OFF).await;
    assert_eq!(flaky.filter(vec![message(0, "ok")]).await.unwrap(), [true]);
    assert!(flaky.suspension().is_none());
    // An error value does not poison the store: it was never rebuilt.
    assert_eq!(flaky.instantiations(), 1);
}
