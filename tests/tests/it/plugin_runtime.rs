//! The plugin runtime (`wasmhook::plugin`) on its own, against the
//! first-party plugins and the hostile guests of `plugins/test-guests/`:
//! every misbehaviour ends in a defined `PluginError`, the host thread
//! carries on, and the next call gets a rebuilt instance.

use std::time::{Duration, Instant};

use wasmhook::plugin::{
    Decision, EPOCH_TICK, Message, PluginEngine, PluginError, PluginInstance, PluginRole,
    RuntimeLimits, SubscriberContext, sha256_hex,
};

use crate::helpers::plugin_wasm;

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

fn engine() -> PluginEngine {
    PluginEngine::new(RuntimeLimits::default()).unwrap()
}

fn instance(engine: &PluginEngine, role: PluginRole, guest: &str) -> PluginInstance {
    let compiled = engine.compile(role, &plugin_wasm(guest)).unwrap();
    PluginInstance::new(engine, &compiled, vec![]).unwrap()
}
#[test]
fn field_match_returns_one_flag_per_message_in_order() {
    let engine = engine();
    let compiled = engine
        .compile(PluginRole::Filter, &plugin_wasm("field_match"))
        .unwrap();
    assert_eq!(compiled.role(), PluginRole::Filter);
    let mut filter = PluginInstance::new(
        &engine,
        &compiled,
        config(&[("field", "/country"), ("in", "FR,BE")]),
    )
    .unwrap();
    let batch = [
        message(0, r#"{"country":"FR"}"#),
        message(1, r#"{"country":"DE"}"#),
        message(2, "not json"),
        message(3, r#"{"country":"BE"}"#),
    ];
    assert_eq!(filter.filter(&batch).unwrap(), [true, false, false, true]);
    assert_eq!(filter.filter(&[]).unwrap(), Vec::<bool>::new());
}

#[test]
fn bad_plugin_configuration_is_reported_at_instantiation() {
    let engine = engine();
    let compiled = engine
        .compile(PluginRole::Filter, &plugin_wasm("field_match"))
        .unwrap();
    let err = PluginInstance::new(&engine, &compiled, config(&[("field", "/x")]))
        .err()
        .unwrap();
    assert!(
        matches!(&err, PluginError::Config(m) if m.contains("equals")),
        "{err}"
    );
}

#[test]
fn compiled_components_are_cached_by_sha256() {
    let engine = engine();
    let wasm = plugin_wasm("field_match");
    let first = engine.compile(PluginRole::Filter, &wasm).unwrap();
    let second = engine.compile(PluginRole::Filter, &wasm).unwrap();
    assert_eq!(first.sha256(), second.sha256());
    assert_eq!(first.sha256(), sha256_hex(&wasm));
    assert_eq!(engine.cached(), 1);
    // The role check is not cached: the same bytes as another role fail.
    assert!(matches!(
        engine.compile(PluginRole::Policy, &wasm),
        Err(PluginError::WrongWorld(_))
    ));
    engine.forget(first.sha256());
    assert_eq!(engine.cached(), 0);
    // Instances made before `forget` keep working.
    let mut filter =
        PluginInstance::new(&engine, &first, config(&[("field", "k"), ("equals", "1")])).unwrap();
    assert_eq!(filter.filter(&[message(0, r#"{"k":1}"#)]).unwrap(), [true]);
}

#[tokio::test]
async fn compile_async_runs_on_the_blocking_pool() {
    let engine = engine();
    let compiled = engine
        .compile_async(PluginRole::Serialiser, plugin_wasm("cloudevents"))
        .await
        .unwrap();
    assert_eq!(compiled.role(), PluginRole::Serialiser);
}

#[test]
fn cloudevents_serialises_the_whole_batch_into_one_body() {
    let engine = engine();
    let compiled = engine
        .compile(PluginRole::Serialiser, &plugin_wasm("cloudevents"))
        .unwrap();
    let mut ser = PluginInstance::new(
        &engine,
        &compiled,
        config(&[("source", "urn:test"), ("type", "order.created")]),
    )
    .unwrap();
    let out = ser
        .serialise(&[message(7, r#"{"a":1}"#), message(8, "raw")])
        .unwrap();
    assert_eq!(out.content_type, "application/cloudevents-batch+json");
    let events: serde_json::Value = serde_json::from_slice(&out.body).unwrap();
    assert_eq!(events[0]["id"], "orders/2/7");
    assert_eq!(events[0]["data"], serde_json::json!({"a": 1}));
    assert_eq!(events[0]["time"], "2023-11-14T22:13:20.000Z");
    assert_eq!(events[1]["data_base64"], "cmF3");
    assert_eq!(events.as_array().unwrap().len(), 2);
}

#[test]
fn tenant_policy_denies_other_tenants_and_redacts_fields() {
    let engine = engine();
    let compiled = engine
        .compile(PluginRole::Policy, &plugin_wasm("tenant_policy"))
        .unwrap();
    let mut policy = PluginInstance::new(
        &engine,
        &compiled,
        config(&[("tenant", "acme"), ("redact", "card")]),
    )
    .unwrap();
    let ctx = SubscriberContext {
        subscription_id: "s1".into(),
        subscription_name: "acme".into(),
        topic: "orders".into(),
    };
    let decisions = policy
        .authorise(
            &ctx,
            &[
                message(0, r#"{"tenant":"acme","card":"4111","n":1}"#),
                message(1, r#"{"tenant":"globex"}"#),
                message(2, r#"{"tenant":"acme"}"#),
            ],
        )
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

#[test]
fn calling_a_plugin_as_another_role_is_an_error_not_a_panic() {
    let engine = engine();
    let compiled = engine
        .compile(PluginRole::Filter, &plugin_wasm("field_match"))
        .unwrap();
    let mut filter = PluginInstance::new(
        &engine,
        &compiled,
        config(&[("field", "k"), ("equals", "1")]),
    )
    .unwrap();
    assert!(matches!(
        filter.serialise(&[]),
        Err(PluginError::Runtime(_))
    ));
}

#[test]
fn infinite_loop_is_interrupted_at_the_deadline_every_time() {
    let limits = RuntimeLimits {
        cpu_deadline: Duration::from_millis(50),
        ..RuntimeLimits::default()
    };
    let engine = PluginEngine::new(limits).unwrap();
    let mut looping = instance(&engine, PluginRole::Filter, "guest_loop");
    for attempt in 1..=2 {
        let started = Instant::now();
        let err = looping.filter(&[message(0, "{}")]).unwrap_err();
        let took = started.elapsed();
        assert!(
            matches!(err, PluginError::Deadline(d) if d == limits.cpu_deadline),
            "{err}"
        );
        assert!(
            took >= limits.cpu_deadline - EPOCH_TICK,
            "attempt {attempt}: cut early after {took:?}"
        );
        // Deadline plus two ticks of granularity, plus slack for a loaded 2-core CI machine.
        assert!(
            took < limits.cpu_deadline + 2 * EPOCH_TICK + Duration::from_millis(200),
            "attempt {attempt}: took {took:?}"
        );
    }
    // Created once, rebuilt before the second call after the first deadline.
    assert_eq!(looping.instantiations(), 2);
}

#[test]
fn a_looping_plugin_does_not_hold_up_other_instances() {
    let engine = engine();
    let mut looping = instance(&engine, PluginRole::Filter, "guest_loop");
    let stuck = std::thread::spawn(move || looping.filter(&[message(0, "{}")]));
    let compiled = engine
        .compile(PluginRole::Filter, &plugin_wasm("field_match"))
        .unwrap();
    let mut healthy = PluginInstance::new(
        &engine,
        &compiled,
        config(&[("field", "k"), ("equals", "1")]),
    )
    .unwrap();
    for offset in 0..20 {
        assert_eq!(
            healthy.filter(&[message(offset, r#"{"k":1}"#)]).unwrap(),
            [true]
        );
    }
    assert!(matches!(
        stuck.join().unwrap(),
        Err(PluginError::Deadline(_))
    ));
}

#[test]
fn panic_is_a_trap_with_the_panic_message_and_the_next_call_gets_a_fresh_instance() {
    let engine = engine();
    let mut panicky = instance(&engine, PluginRole::Filter, "guest_panic");
    assert_eq!(panicky.filter(&[message(0, "ok")]).unwrap(), [true]);

    let err = panicky
        .filter(&[message(1, "ok"), message(2, "panic")])
        .unwrap_err();
    let PluginError::Trap(reason) = &err else {
        panic!("expected a trap, got {err:?}");
    };
    assert!(
        reason.contains("guest-panic was asked to panic"),
        "{reason}"
    );

    // The guest counts its calls: a fresh instance (init again) says 1.
    let err = panicky.filter(&[message(3, "calls")]).unwrap_err();
    assert!(
        matches!(&err, PluginError::Guest(r) if r == "calls=1"),
        "{err:?}"
    );
    assert_eq!(panicky.filter(&[message(4, "ok")]).unwrap(), [true]);
    assert_eq!(panicky.instantiations(), 2);
}

#[test]
fn memory_hog_gets_a_memory_limit_error_and_the_host_survives() {
    let limits = RuntimeLimits {
        memory_bytes: 16 << 20,
        ..RuntimeLimits::default()
    };
    let engine = PluginEngine::new(limits).unwrap();
    let mut hog = instance(&engine, PluginRole::Filter, "guest_memory_hog");
    for _ in 0..2 {
        let err = hog.filter(&[message(0, "{}")]).unwrap_err();
        assert!(
            matches!(err, PluginError::MemoryLimit(16_777_216)),
            "{err:?}"
        );
    }
}

#[test]
fn sandbox_probe_sees_no_files_env_args_or_network() {
    // The test process has an environment (cargo sets CARGO_* vars), so an
    // empty one in the guest means nothing was inherited. (Not planting a
    // variable: set_var races with other test threads reading the env.)
    assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
    let engine = engine();
    let mut probe = instance(&engine, PluginRole::Serialiser, "guest_sandbox_probe");
    let out = probe.serialise(&[]).unwrap();
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

#[test]
fn core_module_and_garbage_are_not_components() {
    let engine = engine();
    let core_module = b"\0asm\x01\0\0\0";
    let err = engine.compile(PluginRole::Filter, core_module).unwrap_err();
    assert!(
        matches!(&err, PluginError::InvalidComponent(m) if m.contains("core WebAssembly module")),
        "{err}"
    );

    let err = engine
        .compile(PluginRole::Filter, b"#!/bin/sh\nrm -rf /")
        .unwrap_err();
    assert!(
        matches!(&err, PluginError::InvalidComponent(m) if m.contains("not WebAssembly")),
        "{err}"
    );

    // Right header, broken body: wasmtime's parser reports it.
    let mut truncated = plugin_wasm("field_match");
    truncated.truncate(truncated.len() / 2);
    let err = engine.compile(PluginRole::Filter, &truncated).unwrap_err();
    assert!(matches!(err, PluginError::InvalidComponent(_)), "{err}");
}

#[test]
fn component_of_another_role_is_the_wrong_world_and_names_the_missing_export() {
    let engine = engine();
    let err = engine
        .compile(PluginRole::Filter, &plugin_wasm("cloudevents"))
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
        .compile(PluginRole::Policy, &plugin_wasm("field_match"))
        .unwrap_err();
    assert!(
        matches!(&err, PluginError::WrongWorld(m) if m.contains("authorise")),
        "{err}"
    );
}

#[test]
fn exports_with_the_right_names_but_wrong_types_are_the_wrong_world() {
    let engine = engine();
    let err = engine
        .compile(PluginRole::Filter, &plugin_wasm("guest_wrong_signature"))
        .unwrap_err();
    assert!(
        matches!(&err, PluginError::WrongWorld(m) if m.contains("init") || m.contains("filter")),
        "{err}"
    );
}

#[test]
fn forbidden_import_is_rejected_by_name() {
    let engine = engine();
    let err = engine
        .compile(PluginRole::Filter, &plugin_wasm("guest_forbidden_import"))
        .unwrap_err();
    assert!(
        matches!(&err, PluginError::ForbiddenImport(m) if m.contains("evil:exfil/network")),
        "{err}"
    );
}

#[test]
fn a_cached_component_is_found_by_sha256_and_checked_against_the_role_again() {
    let engine = engine();
    let wasm = plugin_wasm("field_match");
    let sha256 = sha256_hex(&wasm);
    assert!(engine.compiled(PluginRole::Filter, &sha256).is_none());
    engine.compile(PluginRole::Filter, &wasm).unwrap();
    let cached = engine
        .compiled(PluginRole::Filter, &sha256)
        .unwrap()
        .unwrap();
    assert_eq!(cached.sha256(), sha256);
    assert!(matches!(
        engine.compiled(PluginRole::Policy, &sha256),
        Some(Err(PluginError::WrongWorld(_)))
    ));
}

#[test]
fn trapping_policy_and_failing_serialiser_guests_fail_as_documented() {
    let engine = engine();
    let mut policy = instance(&engine, PluginRole::Policy, "guest_trap_policy");
    let ctx = SubscriberContext {
        subscription_id: "s".into(),
        subscription_name: "n".into(),
        topic: "orders".into(),
    };
    let err = policy.authorise(&ctx, &[message(0, "{}")]).unwrap_err();
    assert!(
        matches!(&err, PluginError::Trap(m) if m.contains("always traps")),
        "{err}"
    );

    let mut failing = instance(&engine, PluginRole::Serialiser, "guest_failing_serialiser");
    let err = failing.serialise(&[message(0, "{}")]).unwrap_err();
    assert!(
        matches!(&err, PluginError::Guest(m) if m.contains("refuses 1")),
        "{err}"
    );
}
