//! A subscription's health as one pipeline keeps it: transitions are recorded
//! once across hosts (the registry decides who records a change) and alerted
//! on; a new reason for being unhealthy is recorded without a new alert.
//!
//! A pipeline delivering in several lanes ([`super::lanes`]) has one health
//! for them all, decided by a [`Board`] of what each lane last reported, so
//! that lanes succeeding beside a failing one do not flap it (nor its alerts):
//! a lane failing its batch (retrying it, a plugin suspended, a dead letter
//! that cannot be written) keeps the subscription unhealthy until that lane
//! delivers again. Once a failing lane's batch reached a final outcome (it
//! was dead-lettered), any lane's next delivery recovers the subscription, as
//! the next delivery does with one lane; so does it for trouble of the
//! pipeline as a whole (its consumer, plugins that could not start).

use std::sync::{Arc, Mutex};

use uuid::Uuid;

use super::alert::Transition;
use super::pipeline::Shared;
use crate::domain::SubscriptionSpec;
use crate::registry::{Health, StoredSubscription};
use crate::signing::{PreviousSecret, SigningSecret};

pub struct HealthKeeper {
    id: Uuid,
    spec: SubscriptionSpec,
    shared: Arc<Shared>,
    health: Health,
    /// Why it is unhealthy, as last recorded by this pipeline.
    reason: Option<String>,
    secret: SigningSecret,
    previous_secret: Option<PreviousSecret>,
}

impl HealthKeeper {
    pub fn new(stored: &StoredSubscription, shared: Arc<Shared>) -> Self {
        Self {
            id: stored.id,
            spec: stored.spec.clone(),
            shared,
            health: stored.health,
            reason: stored.status_reason.clone(),
            secret: stored.signing_secret.clone(),
            previous_secret: stored.previous_secret.clone(),
        }
    }

    pub async fn set(&mut self, health: Health, transition: Transition) {
        let reason = match &transition {
            Transition::Unhealthy { reason } => Some(reason.as_str()),
            Transition::Recovered => None,
        };
        if self.health == health && self.reason.as_deref() == reason {
            return;
        }
        self.health = health;
        self.reason = reason.map(str::to_string);
        match self
            .shared
            .registry
            .set_health(self.id, health, reason)
            .await
        {
            Ok(true) => {
                // Queued, never waited on: webhook alerts are signed as
                // deliveries are, with the subscription's secrets.
                self.shared.alerter.notify(
                    self.id,
                    self.spec.name.as_str(),
                    self.spec.configuration.alerting.as_ref(),
                    &transition,
                    &self.secret,
                    self.previous_secret.as_ref(),
                );
            }
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(subscription = %self.id, error = %error, "Could not record the health change.")
            }
        }
    }
}

/// Who tells the board: one lane of the pipeline, or the pipeline as a whole
/// (its consumer, its plugins at start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reporter {
    Lane(usize),
    Pipeline,
}

/// What a pipeline's lanes last reported, and so the subscription's health
/// (pure: recording it is the [`HealthKeeper`]'s business).
#[derive(Debug)]
pub struct Board {
    /// Per lane: why it failed, until it delivers again.
    failing: Vec<Option<String>>,
    /// Per lane: a batch in flight (a failing lane still busy is still failing).
    busy: Vec<bool>,
    /// Why the pipeline as a whole is unhealthy, until any lane delivers.
    pipeline: Option<String>,
}

impl Board {
    pub fn new(lanes: usize) -> Self {
        Self {
            failing: vec![None; lanes],
            busy: vec![false; lanes],
            pipeline: None,
        }
    }

    /// Whether `lane` has a batch in flight.
    pub fn busy(&mut self, lane: usize, busy: bool) {
        self.busy[lane] = busy;
    }

    /// Takes a report; returns the subscription's transition to record.
    pub fn report(&mut self, from: Reporter, transition: Transition) -> Transition {
        match (from, transition) {
            (Reporter::Lane(lane), Transition::Unhealthy { reason }) => {
                self.failing[lane] = Some(reason.clone());
                Transition::Unhealthy { reason }
            }
            (Reporter::Pipeline, Transition::Unhealthy { reason }) => {
                self.pipeline = Some(reason.clone());
                Transition::Unhealthy { reason }
            }
            (from, Transition::Recovered) => {
                self.pipeline = None;
                for (lane, failing) in self.failing.iter_mut().enumerate() {
                    // A lane whose failing batch is over (final, or it went
                    // idle) no longer holds the subscription back.
                    if from == Reporter::Lane(lane) || !self.busy[lane] {
                        *failing = None;
                    }
                }
                match self.failing.iter().flatten().next() {
                    Some(reason) => Transition::Unhealthy {
                        reason: reason.clone(),
                    },
                    None => Transition::Recovered,
                }
            }
        }
    }
}

/// One pipeline's health: its board, and its keeper recording the verdicts.
struct PipelineHealth {
    /// Held while a verdict is reached and recorded, so verdicts are recorded
    /// in the order they were reached.
    keeper: tokio::sync::Mutex<HealthKeeper>,
    board: Mutex<Board>,
}

/// How one lane (or the pipeline itself) reports health. Cheap to clone.
#[derive(Clone)]
pub struct LaneHealth {
    shared: Arc<PipelineHealth>,
    from: Reporter,
}

impl LaneHealth {
    /// The reporters of one pipeline: one per lane, then the pipeline's own.
    pub fn lanes(keeper: HealthKeeper, lanes: usize) -> (Vec<LaneHealth>, LaneHealth) {
        let shared = Arc::new(PipelineHealth {
            keeper: tokio::sync::Mutex::new(keeper),
            board: Mutex::new(Board::new(lanes)),
        });
        let reporter = |from| LaneHealth {
            shared: shared.clone(),
            from,
        };
        let lanes = (0..lanes)
            .map(|lane| reporter(Reporter::Lane(lane)))
            .collect();
        (lanes, reporter(Reporter::Pipeline))
    }

    /// Whether this lane has a batch in flight.
    pub fn busy(&self, busy: bool) {
        if let Reporter::Lane(lane) = self.from {
            self.shared
                .board
                .lock()
                .expect("health board lock")
                .busy(lane, busy);
        }
    }

    /// Reports a transition of this lane; the subscription's follows the board.
    pub async fn set(&self, _health: Health, transition: Transition) {
        let mut keeper = self.shared.keeper.lock().await;
        let verdict = self
            .shared
            .board
            .lock()
            .expect("health board lock")
            .report(self.from, transition);
        let health = match verdict {
            Transition::Unhealthy { .. } => Health::Unhealthy,
            Transition::Recovered => Health::Healthy,
        };
        keeper.set(health, verdict).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhealthy(reason: &str) -> Transition {
        Transition::Unhealthy {
            reason: reason.into(),
        }
    }

    #[test]
    fn with_one_lane_the_last_outcome_decides() {
        let mut board = Board::new(1);
        board.busy(0, true);
        assert_eq!(
            board.report(Reporter::Lane(0), unhealthy("dead-lettered")),
            unhealthy("dead-lettered")
        );
        assert_eq!(
            board.report(Reporter::Lane(0), Transition::Recovered),
            Transition::Recovered
        );
        assert_eq!(
            board.report(Reporter::Pipeline, unhealthy("consumer")),
            unhealthy("consumer")
        );
        assert_eq!(
            board.report(Reporter::Lane(0), Transition::Recovered),
            Transition::Recovered
        );
    }

    #[test]
    fn a_lane_still_failing_its_batch_keeps_the_subscription_unhealthy_whatever_the_others_deliver()
    {
        let mut board = Board::new(2);
        board.busy(0, true);
        board.busy(1, true);
        board.report(Reporter::Lane(0), unhealthy("plugin suspended"));
        assert_eq!(
            board.report(Reporter::Lane(1), Transition::Recovered),
            unhealthy("plugin suspended"),
            "lane 1 delivering does not flap it"
        );
        assert_eq!(
            board.report(Reporter::Lane(0), Transition::Recovered),
            Transition::Recovered
        );
    }

    #[test]
    fn a_lane_whose_failed_batch_is_over_is_recovered_by_any_delivery() {
        let mut board = Board::new(2);
        board.busy(0, true);
        board.report(Reporter::Lane(0), unhealthy("dead-lettered"));
        board.busy(0, false);
        assert_eq!(
            board.report(Reporter::Lane(1), Transition::Recovered),
            Transition::Recovered
        );
    }

    #[test]
    fn a_lane_recovering_leaves_the_reason_of_another_still_failing() {
        let mut board = Board::new(3);
        (0..3).for_each(|lane| board.busy(lane, true));
        board.report(Reporter::Lane(0), unhealthy("a"));
        board.report(Reporter::Lane(2), unhealthy("c"));
        assert_eq!(
            board.report(Reporter::Lane(0), Transition::Recovered),
            unhealthy("c")
        );
    }

    #[test]
    fn trouble_of_the_whole_pipeline_is_recovered_by_any_lane() {
        let mut board = Board::new(2);
        board.report(Reporter::Pipeline, unhealthy("brokers unreachable"));
        assert_eq!(
            board.report(Reporter::Lane(1), Transition::Recovered),
            Transition::Recovered
        );
    }
}
