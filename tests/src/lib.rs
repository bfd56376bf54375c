//! The wasmhook test crate: black-box tests live in `tests/it/`; this library
//! holds the load test behind the `wasmhook-loadtest` binary and the
//! benchmark behind `wasmhook-bench`.
//!
//! # Layout
//!
//! - [`loadtest`]: the load-test harness — generate rows spread
//!   over a duration across topics, publish them on schedule, run (or target) a
//!   wasmhook with one subscription per topic, receive into SQLite, inject faults
//!   on schedule, and report loss, duplicates, latency and throughput.
//! - [`bench`]: the benchmark — throughput against bare consumers, CPU per
//!   message, latency at batch size 1, the cost of idle subscriptions.
//! - [`child`]: wasmhook in a child process, as both run it.

pub mod bench;
pub mod child;
pub mod loadtest;
