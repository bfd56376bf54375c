//! The wasmhook test crate: black-box tests live in `tests/it/`; this library
//! holds the load test behind the `wasmhook-loadtest` binary.
//!
//! # Layout
//!
//! - [`loadtest`]: the load-test harness — generate rows spread
//!   over a duration across topics, publish them on schedule, run (or target) a
//!   wasmhook with one subscription per topic, receive into SQLite, inject faults
//!   on schedule, and report loss, duplicates, latency and throughput.

pub mod loadtest;
