//! The load test, short: a few thousand rows over a few seconds with one fault
//! each, and nothing may go missing. The long runs are documented commands
//! (README, "Load test"), not part of the suite.

use std::process::Command;

/// Runs `wasmhook-loadtest` with `args` and returns its final JSON line.
fn load_test(args: &[&str]) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_wasmhook-loadtest"))
        .args(args)
        .output()
        .expect("wasmhook-loadtest runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stdout.lines().last().unwrap_or_default();
    let report: serde_json::Value = serde_json::from_str(last)
        .unwrap_or_else(|_| panic!("a JSON report last; stdout:\n{stdout}\nstderr:\n{stderr}"));
    assert!(
        output.status.success(),
        "exit {:?}\n{stdout}\n{stderr}",
        output.status
    );
    report
}

/// 3 000 rows over 4 s across 2 topics, with `fault` from 1 s for `fault_for`;
/// every acknowledged row must arrive.
fn short_run_with(fault: &str, fault_for: &str) -> serde_json::Value {
    let report = load_test(&[
        "--rows",
        "3000",
        "--duration",
        "4s",
        "--topics",
        "2",
        "--batch-size",
        "50",
        "--fault",
        fault,
        "--fault-at",
        "1s",
        "--fault-for",
        fault_for,
        "--drain-timeout",
        "90s",
    ]);
    assert_eq!(report["expected"], 3000, "{report}");
    assert_eq!(report["missing"], 0, "{report}");
    report
}

#[test]
fn a_receiver_outage_loses_nothing() {
    let report = short_run_with("receiver-down", "2s");
    assert!(report["latency_ms"]["max"].as_f64().unwrap() > 0.0);
}

#[test]
fn a_sigkilled_wasmhook_loses_nothing() {
    short_run_with("kill-wasmhook", "1s");
}
