//! The delivery engine: one pipeline per active subscription, under a supervisor.
//!
//! ```text
//! consumer (group webhooks-{id}[.r{n}]) ─► JMES filters ─► batcher ─► attempt:
//!   [filter / policy plugins ─► serialiser (JSON or plugin)] ─► sender ─► commit
//!        any failure (plugin or request) ─► retry schedule ─► dead letter
//! ```
//!
//! - [`supervisor`]: reconciles running pipelines with the registry and the admin switch.
//! - [`pipeline`]: the per-subscription loop; it keeps polling while a batch
//!   is delivered by a task of its own.
//! - [`lanes`]: a pipeline's lanes, each with one batch in flight; a
//!   partition is in one lane at a time, so its order holds while lanes
//!   deliver at once (`max_in_flight_batches`, one lane by default).
//! - [`consumer`]: the consumer's configuration, partition ownership by epoch,
//!   and the only place offsets are stored and committed.
//! - [`record`], [`filter`], [`batcher`], [`retry`]: small pure stages, tested alone.
//! - [`failure`]: why an attempt failed, typed until it becomes text.
//! - [`state`]: each pipeline's consumer state and lag on this host (status).
//! - [`hibernation`]: a subscription with nothing to deliver anywhere closes
//!   its consumer until a host-wide watcher sees a message arrive for it.
//! - [`plugins`]: the pipeline's plugin instances, and what their answers
//!   mean for each message; a plugin failure fails the attempt.
//! - [`sender`]: one webhook request, signed, with its activity record.
//! - [`dead_letter`]: exhausted batches to a Kafka topic per subscription.
//! - [`health`]: health transitions, recorded once across hosts, alerted on.
//! - [`ledger`]: outcome counters and delivery attempts, kept in memory and
//!   written to the registry once a second (not per batch).
//! - [`series`]: the last minutes of outcomes and latency per subscription on
//!   this host, in 10-second buckets (the status page's plots).
//! - [`replay`]: delivering again from a time or offsets, by moving to the
//!   subscription's next consumer group.
//! - [`redrive`]: delivering again what the dead-letter topic holds.
//! - [`alert`]: email or signed webhook on health transitions, rate limited, off the delivery path.
//!
//! Semantics (docs/ARCHITECTURE.md): at-least-once; an offset is committed
//! only after its batch reached a final outcome (delivered, filtered out,
//! denied by a policy, or dead-lettered), and only for partitions still owned
//! in the epoch they were fetched in; one batch in flight per lane, and a
//! partition in one lane at a time, so order holds per partition (and across
//! the subscription with one lane, the default).

pub mod alert;
pub mod batcher;
pub mod consumer;
pub mod dead_letter;
pub mod failure;
pub mod filter;
pub mod health;
pub mod hibernation;
pub mod lanes;
pub mod ledger;
pub mod pipeline;
pub mod plugins;
pub mod record;
pub mod redrive;
pub mod replay;
pub mod retry;
pub mod sender;
pub mod series;
pub mod state;
pub mod supervisor;

pub use supervisor::Supervisor;
