//! `wasmhook-loadtest`: see `wasmhook_tests::loadtest`. Prints a report, and the
//! same as one JSON line last; exits 1, saying why, when any message is
//! missing, any row was refused by the broker, or nothing was published or delivered.

use clap::Parser;
use wasmhook_tests::loadtest::{self, Options};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    wasmhook_tests::child::init_logging();
    let mut args = std::env::args().skip(1);
    // The child-process mode the load test uses to run (and SIGKILL) wasmhook,
    // and the black-box tests its client commands, dispatched as the
    // wasmhook binary dispatches them.
    if args.next().as_deref() == Some("wasmhook") {
        let argv: Vec<std::ffi::OsString> = std::iter::once("wasmhook".into())
            .chain(std::env::args_os().skip(2))
            .collect();
        if wasmhook::client::is_command(&argv) {
            std::process::exit(i32::from(wasmhook::client::run_command(argv).await));
        }
        return wasmhook_tests::child::run_wasmhook(args.collect()).await;
    }
    let options = Options::parse();
    let report = loadtest::run(options.clone()).await?;
    print!("{}", loadtest::describe(&options, &report));
    let mut line = serde_json::to_value(&report)?;
    line["fault"] = serde_json::json!(format!("{:?}", options.fault));
    line["rows"] = serde_json::json!(options.rows);
    line["topics"] = serde_json::json!(options.topics);
    line["batch_size"] = serde_json::json!(options.batch_size);
    let failures = report.failures();
    line["failures"] = serde_json::json!(failures);
    println!("{line}");
    if !failures.is_empty() {
        for failure in &failures {
            eprintln!("FAILED: {failure}");
        }
        std::process::exit(1);
    }
    Ok(())
}
