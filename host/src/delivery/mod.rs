//! The delivery engine: one pipeline per active subscription, under a supervisor.
//!
//! ```text
//! consumer (group webhooks-{id}) ─► JMES filters ─► batcher ─► attempt:
//!   [filter / policy plugins ─► serialiser (JSON or plugin)] ─► sender ─► commit
//!        any failure (plugin or request) ─► retry schedule ─► dead letter
//! ```
//!
//! - [`supervisor`]: reconciles running pipelines with the registry and the admin switch.
//! - [`pipeline`]: the per-subscription loop; the only place offsets are committed.
//! - [`record`], [`filter`], [`batcher`], [`retry`]: small pure stages, tested alone.
//! - [`plugins`]: the pipeline's plugin instances, and what their answers
//!   mean for each message; a plugin failure fails the attempt.
//! - [`sender`]: one webhook request, signed, with its activity record.
//! - [`dead_letter`]: exhausted batches to a Kafka topic per subscription.
//! - [`alert`]: email or signed webhook on health transitions, rate limited, off the delivery path.
//!
//! Semantics (docs/ARCHITECTURE.md): at-least-once; an offset is committed
//! only after its batch reached a final outcome (delivered, filtered out,
//! denied by a policy, or dead-lettered); one batch in flight per
//! subscription, so order holds per partition.

pub mod alert;
pub mod batcher;
pub mod dead_letter;
pub mod filter;
pub mod pipeline;
pub mod plugins;
pub mod record;
pub mod retry;
pub mod sender;
pub mod supervisor;

pub use supervisor::Supervisor;
