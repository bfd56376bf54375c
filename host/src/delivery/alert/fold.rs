//! The alert rate limit, as a pure decision over time: which health changes
//! are told now, which are folded, and when a folded one falls due.
//!
//! - An "unhealthy" alert is told unless another one about the subscription
//!   was told within the interval; then it is folded, and the latest folded
//!   one is told when the interval ends (if nothing told since made it moot).
//! - A recovery is told whenever operators were last told "unhealthy" (or
//!   nothing, e.g. after a restart), whatever the interval: they must never be
//!   left believing a subscription is down that delivers again. A recovery
//!   after a folded "unhealthy" is folded too: operators already believe it healthy.
//! - Each told alert carries the number of changes folded since the last one.
//!
//! It keeps no clock and sends nothing: the alert worker gives it `now` and
//! sends what it answers.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

use super::{Alert, Transition};

/// An alert to tell now, with the changes folded into it.
#[derive(Debug)]
pub struct Told {
    pub alert: Alert,
    /// Health changes since the previous alert that were not told on their own.
    pub folded: u32,
}

/// What operators were last told about a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Last {
    Unhealthy,
    Recovered,
}

#[derive(Debug)]
struct State {
    last: Option<Last>,
    /// When the last "unhealthy" alert was told.
    unhealthy_told_at: Option<Instant>,
    /// The latest folded "unhealthy" alert, to tell when the interval ends.
    pending: Option<Alert>,
    folded: u32,
}

impl State {
    fn new() -> Self {
        Self {
            last: None,
            unhealthy_told_at: None,
            pending: None,
            folded: 0,
        }
    }

    fn tell(&mut self, alert: Alert, now: Instant) -> Told {
        self.last = Some(match alert.transition {
            Transition::Unhealthy { .. } => {
                self.unhealthy_told_at = Some(now);
                Last::Unhealthy
            }
            Transition::Recovered => Last::Recovered,
        });
        self.pending = None;
        Told {
            alert,
            folded: std::mem::take(&mut self.folded),
        }
    }

    /// When the pending alert, if any, may be told.
    fn due_at(&self, interval: Duration) -> Option<Instant> {
        self.pending.as_ref()?;
        Some(self.unhealthy_told_at? + interval)
    }
}

/// The rate limit's memory: one small state per subscription alerted about.
#[derive(Debug)]
pub struct Folder {
    interval: Duration,
    subscriptions: HashMap<Uuid, State>,
}

impl Folder {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            subscriptions: HashMap::new(),
        }
    }

    /// A health change: `Some` when it is to be told now, `None` when folded.
    pub fn change(&mut self, alert: Alert, now: Instant) -> Option<Told> {
        let interval = self.interval;
        let state = self
            .subscriptions
            .entry(alert.subscription)
            .or_insert_with(State::new);
        match alert.transition {
            Transition::Unhealthy { .. } => {
                let recent = state
                    .unhealthy_told_at
                    .is_some_and(|at| now.duration_since(at) < interval);
                if !recent {
                    return Some(state.tell(alert, now));
                }
                // A newer unhealthy alert supersedes the pending one.
                if state.pending.replace(alert).is_some() {
                    state.folded += 1;
                }
                None
            }
            Transition::Recovered => {
                if state.last != Some(Last::Recovered) {
                    return Some(state.tell(alert, now));
                }
                if state.pending.take().is_some() {
                    state.folded += 1;
                }
                state.folded += 1;
                None
            }
        }
    }

    /// The pending alerts whose interval has ended, to tell now; forgets the
    /// subscriptions it has nothing left to remember about.
    pub fn due(&mut self, now: Instant) -> Vec<Told> {
        let interval = self.interval;
        let mut told = Vec::new();
        for state in self.subscriptions.values_mut() {
            if state.due_at(interval).is_some_and(|at| at <= now)
                && let Some(alert) = state.pending.take()
            {
                told.push(state.tell(alert, now));
            }
        }
        self.subscriptions.retain(|_, state| {
            state.pending.is_some()
                || state.folded > 0
                || state
                    .unhealthy_told_at
                    .is_some_and(|at| now.duration_since(at) < interval)
                // Operators believe it unhealthy: its recovery must still be told.
                || state.last == Some(Last::Unhealthy)
        });
        told
    }

    /// When [`Folder::due`] next has something to tell.
    pub fn next_due(&self) -> Option<Instant> {
        self.subscriptions
            .values()
            .filter_map(|state| state.due_at(self.interval))
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Alerting;
    use crate::signing::SigningSecret;

    const INTERVAL: Duration = Duration::from_secs(60);

    fn alert(id: Uuid, transition: Transition) -> Alert {
        Alert {
            subscription: id,
            name: "orders".into(),
            alerting: Alerting::Email {
                alert_emails: vec![],
            },
            transition,
            secret: SigningSecret::generate(),
            previous_secret: None,
        }
    }

    fn down(id: Uuid, reason: &str) -> Alert {
        alert(
            id,
            Transition::Unhealthy {
                reason: reason.into(),
            },
        )
    }

    fn up(id: Uuid) -> Alert {
        alert(id, Transition::Recovered)
    }

    fn reason(told: &Told) -> Option<&str> {
        match &told.alert.transition {
            Transition::Unhealthy { reason } => Some(reason),
            Transition::Recovered => None,
        }
    }

    #[test]
    fn a_recovery_within_the_interval_is_told() {
        let mut folder = Folder::new(INTERVAL);
        let (id, t0) = (Uuid::new_v4(), Instant::now());
        assert!(folder.change(down(id, "500"), t0).is_some());
        let told = folder.change(up(id), t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(told.alert.transition, Transition::Recovered);
        assert_eq!(told.folded, 0);
        assert_eq!(folder.next_due(), None, "nothing left to tell");
    }

    #[test]
    fn flapping_within_the_interval_is_folded_and_the_last_state_told_when_it_ends() {
        let mut folder = Folder::new(INTERVAL);
        let (id, t0) = (Uuid::new_v4(), Instant::now());
        let s = Duration::from_secs;
        assert!(folder.change(down(id, "first"), t0).is_some());
        assert!(folder.change(up(id), t0 + s(1)).is_some());
        assert!(folder.change(down(id, "second"), t0 + s(2)).is_none());
        assert!(folder.change(up(id), t0 + s(3)).is_none());
        assert!(folder.change(down(id, "third"), t0 + s(4)).is_none());
        assert_eq!(folder.next_due(), Some(t0 + INTERVAL));
        assert!(folder.due(t0 + s(59)).is_empty());
        let told = folder.due(t0 + INTERVAL);
        assert_eq!(told.len(), 1);
        assert_eq!(reason(&told[0]), Some("third"));
        assert_eq!(told[0].folded, 2, "\"second\" and its recovery");
        // Told "unhealthy" again: its recovery is told at once.
        let told = folder.change(up(id), t0 + s(61)).unwrap();
        assert_eq!(told.folded, 0);
    }

    #[test]
    fn a_fold_that_ends_healthy_is_counted_in_the_next_alert() {
        let mut folder = Folder::new(INTERVAL);
        let (id, t0) = (Uuid::new_v4(), Instant::now());
        let s = Duration::from_secs;
        folder.change(down(id, "a"), t0).unwrap();
        folder.change(up(id), t0 + s(1)).unwrap();
        assert!(folder.change(down(id, "b"), t0 + s(2)).is_none());
        assert!(folder.change(up(id), t0 + s(3)).is_none());
        assert_eq!(
            folder.next_due(),
            None,
            "operators already believe it healthy"
        );
        assert!(folder.due(t0 + s(3600)).is_empty());
        let told = folder.change(down(id, "c"), t0 + s(3600)).unwrap();
        assert_eq!((reason(&told), told.folded), (Some("c"), 2));
    }

    #[test]
    fn subscriptions_are_limited_apart_and_a_zero_interval_folds_nothing() {
        let mut folder = Folder::new(INTERVAL);
        let t0 = Instant::now();
        assert!(folder.change(down(Uuid::new_v4(), "a"), t0).is_some());
        assert!(folder.change(down(Uuid::new_v4(), "b"), t0).is_some());
        let mut folder = Folder::new(Duration::ZERO);
        let id = Uuid::new_v4();
        for _ in 0..3 {
            assert!(folder.change(down(id, "a"), t0).is_some());
            assert!(folder.change(up(id), t0).is_some());
        }
    }

    #[test]
    fn a_recovery_with_nothing_told_before_is_told() {
        // E.g. after a restart: the alert went out from the previous process.
        let mut folder = Folder::new(INTERVAL);
        assert!(folder.change(up(Uuid::new_v4()), Instant::now()).is_some());
    }

    #[test]
    fn forgotten_subscriptions_leave_no_state_but_an_unhealthy_one_is_kept() {
        let mut folder = Folder::new(INTERVAL);
        let t0 = Instant::now();
        let (healthy, unhealthy) = (Uuid::new_v4(), Uuid::new_v4());
        folder.change(down(healthy, "a"), t0).unwrap();
        folder.change(up(healthy), t0).unwrap();
        folder.change(down(unhealthy, "a"), t0).unwrap();
        folder.due(t0 + INTERVAL * 2);
        assert_eq!(folder.subscriptions.len(), 1);
        assert!(folder.subscriptions.contains_key(&unhealthy));
    }
}
