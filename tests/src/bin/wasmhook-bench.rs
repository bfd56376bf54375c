//! `wasmhook-bench`: see `wasmhook_tests::bench`. Prints the figures, then
//! the same as one JSON line; exits 1, saying why, when a scenario measured
//! nothing.

use clap::Parser;
use wasmhook_tests::bench::{self, Options};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    wasmhook_tests::child::init_logging();
    let mut args = std::env::args().skip(1);
    // The child-process mode the benchmark measures wasmhook in.
    if args.next().as_deref() == Some("wasmhook") {
        return wasmhook_tests::child::run_wasmhook(args.collect()).await;
    }
    let options = Options::parse();
    let report = bench::run(options.clone()).await?;
    print!("{}", bench::describe(&options, &report));
    println!("{}", serde_json::to_string(&report)?);
    if !report.failures.is_empty() {
        for failure in &report.failures {
            eprintln!("FAILED: {failure}");
        }
        std::process::exit(1);
    }
    Ok(())
}
