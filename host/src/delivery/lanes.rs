//! Lanes: how one pipeline delivers several batches at once and still keeps
//! every partition in order.
//!
//! A subscription's `configuration.batching.max_in_flight_batches` (N) gives
//! its pipeline N lanes. Each lane has its own batcher, its own queue of full
//! batches and at most one batch in flight, delivered by its own
//! [`Deliverer`] (its own plugin instances; the rate limiter, the retry
//! schedule, the target and the health are the subscription's). A partition
//! belongs to one lane at a time ([`LaneMap`]): its messages go into that
//! lane's batches only, so it is never in two batches in flight, and its
//! batches are delivered and committed one after the other, in order.
//! Different lanes deliver at the same time; nothing orders them.
//!
//! A partition is bound to a lane when one of its messages arrives and no
//! lane holds any of it: to the lane holding the fewest partitions. It is
//! released once its lane holds nothing of it any more (not in the batch
//! being filled, nor waiting, nor in flight), so it can only change lanes
//! between two of its batches. Binding by load rather than by a hash of the
//! partition keeps the lanes busy whichever partitions the group gives this
//! host: a hash modulo N puts two partitions into one lane of two half the
//! time, and a host holding every other partition ({0, 2, 4}: what the
//! cooperative-sticky assignor hands two members of a group) would deliver
//! them all in one lane of two.
//!
//! With N = 1 there is one lane: one batch in flight per subscription, in
//! order across the subscription, exactly as before lanes.
//!
//! The full batches waiting are counted across the lanes: the buffer's marks
//! pause and resume the whole consumer, so memory stays bounded whatever N.
//! Rebalances, abandoning a batch in flight whose partitions were all revoked,
//! and stopping apply to each lane as they did to the one batch in flight.

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::pin::Pin;
use std::task::Poll;

use tokio::task::{JoinError, JoinHandle};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::batcher::{Batcher, Flush, PartitionKey, Positions};
use super::consumer::PipelineContext;
use super::pipeline::Deliverer;
use super::record::Record;
use crate::domain::Batching;

/// Which lane holds each partition; pure.
#[derive(Debug)]
pub struct LaneMap {
    bound: HashMap<PartitionKey, usize>,
    /// How many partitions are bound to each lane.
    load: Vec<usize>,
}

impl LaneMap {
    pub fn new(lanes: usize) -> Self {
        Self {
            bound: HashMap::new(),
            load: vec![0; lanes.max(1)],
        }
    }

    /// The lane of `key`: the one it is bound to, else the lane holding the
    /// fewest partitions (the first of those), which it is bound to from now on.
    pub fn lane_for(&mut self, key: &PartitionKey) -> usize {
        if let Some(&lane) = self.bound.get(key) {
            return lane;
        }
        let lane = (0..self.load.len())
            .min_by_key(|&lane| self.load[lane])
            .expect("at least one lane");
        self.load[lane] += 1;
        self.bound.insert(key.clone(), lane);
        lane
    }

    /// Unbinds the partitions of `lane` that `holds` says it no longer holds.
    pub fn release(&mut self, lane: usize, holds: impl Fn(&PartitionKey) -> bool) {
        let load = &mut self.load[lane];
        self.bound.retain(|key, bound| {
            let keep = *bound != lane || holds(key);
            if !keep {
                *load -= 1;
            }
            keep
        });
    }

    /// The lane `key` is bound to, if any.
    pub fn lane_of(&self, key: &PartitionKey) -> Option<usize> {
        self.bound.get(key).copied()
    }
}

/// A batch being delivered by a task of its own.
pub(super) struct InFlight {
    pub(super) positions: Positions,
    /// Cancelled when every partition of the batch was revoked (or on stop).
    pub(super) cancel: CancellationToken,
    pub(super) task: JoinHandle<(Deliverer, Option<Positions>)>,
}

impl Drop for InFlight {
    /// A pipeline aborted after its grace period must not leave its delivery
    /// running behind it.
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl InFlight {
    fn start(deliverer: Deliverer, flush: Flush, cancel: CancellationToken) -> Self {
        let positions = flush.positions.clone();
        let token = cancel.clone();
        deliverer.busy(true);
        let task = tokio::spawn(async move {
            let mut deliverer = deliverer;
            let positions = deliverer.finish(flush, &token).await;
            (deliverer, positions)
        });
        Self {
            positions,
            cancel,
            task,
        }
    }
}

/// What a lane's batch in flight ended with: its deliverer, and the positions
/// to commit (`None`: stopped or abandoned first).
pub(super) type Done = Result<(Deliverer, Option<Positions>), JoinError>;

/// One lane: its batch being filled, and its batch in flight.
struct Lane {
    batcher: Batcher,
    in_flight: Option<InFlight>,
    /// Here while idle, in the task while a batch is in flight.
    idle: Option<Deliverer>,
}

/// A pipeline's lanes, with the full batches waiting in each.
pub(super) struct Lanes {
    lanes: Vec<Lane>,
    map: LaneMap,
    ready: Ready,
}

impl Lanes {
    /// One lane per deliverer, batching as `batching` says.
    pub(super) fn new(batching: &Batching, deliverers: Vec<Deliverer>) -> Self {
        let lanes: Vec<Lane> = deliverers
            .into_iter()
            .map(|deliverer| Lane {
                batcher: Batcher::new(
                    batching.max_batch_size.get(),
                    batching.max_batch_interval_seconds.duration(),
                )
                .with_max_bytes(batching.max_batch_bytes.map(|b| b.get())),
                in_flight: None,
                idle: Some(deliverer),
            })
            .collect();
        assert!(!lanes.is_empty(), "a pipeline has at least one lane");
        Self {
            map: LaneMap::new(lanes.len()),
            ready: Ready::new(lanes.len()),
            lanes,
        }
    }

    /// Hands each idle lane its oldest waiting batch, or its open batch once
    /// due (only what is still owned in its epoch goes). Returns whether any
    /// lane took one.
    pub(super) fn hand_off(&mut self, context: &PipelineContext, stop: &CancellationToken) -> bool {
        let mut started = false;
        let now = Instant::now();
        for index in 0..self.lanes.len() {
            if !self.can_start(index, now) {
                continue;
            }
            let lane = &mut self.lanes[index];
            let next = match self.ready.pop(index) {
                Some(flush) => flush,
                None => lane.batcher.take(),
            };
            let flush = keep_owned(next, context);
            let deliverer = lane
                .idle
                .take()
                .expect("the deliverer is idle without a batch");
            lane.in_flight = Some(InFlight::start(deliverer, flush, stop.child_token()));
            started = true;
        }
        started
    }

    /// Whether some idle lane has a batch it could hand off now: a full or
    /// due open batch, or one waiting (the loop's next turn starts it).
    pub(super) fn wants_hand_off(&self, now: Instant) -> bool {
        (0..self.lanes.len()).any(|index| self.can_start(index, now))
    }

    /// Whether lane `index` is idle and has a batch waiting, or an open one
    /// that is due at `now`.
    fn can_start(&self, index: usize, now: Instant) -> bool {
        let lane = &self.lanes[index];
        lane.in_flight.is_none() && (!self.ready.is_empty(index) || due(&lane.batcher, now))
    }

    /// True when nothing is in hand: no batch in flight, waiting or being
    /// filled (not even positions of filtered messages) in any lane.
    pub(super) fn is_idle(&self) -> bool {
        self.lanes.iter().enumerate().all(|(index, lane)| {
            lane.in_flight.is_none() && lane.batcher.is_empty() && self.ready.is_empty(index)
        })
    }

    /// How many lanes have a batch in flight.
    pub(super) fn in_flight(&self) -> usize {
        self.lanes.iter().filter(|l| l.in_flight.is_some()).count()
    }

    /// Takes a consumed message of partition `key`, fetched in ownership
    /// `epoch`, into its lane's open batch (`passes`: the filters kept it;
    /// else it only moves the position). A full batch that cannot go now (its
    /// lane is busy, or `held`: hand-offs are held) waits its turn. `now`
    /// opens a batch's interval (one clock reading serves a loop turn).
    pub(super) fn take(
        &mut self,
        key: &PartitionKey,
        message: Record,
        (epoch, now): (u64, Instant),
        passes: bool,
        held: bool,
    ) {
        let index = self.map.lane_for(key);
        let lane = &mut self.lanes[index];
        if passes {
            if let Some(closed) = lane.batcher.push(message, epoch, now) {
                // Closed by its byte cap: it goes before the open one.
                self.ready.push(index, closed);
            }
        } else {
            lane.batcher.skip(&message, epoch, now);
        }
        if lane.batcher.is_full() && (lane.in_flight.is_some() || held) {
            self.ready.push(index, lane.batcher.take());
        }
    }

    /// When the first open batch that could go (its lane idle, nothing
    /// waiting in it) is due.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.lanes
            .iter()
            .enumerate()
            .filter(|(index, lane)| lane.in_flight.is_none() && self.ready.is_empty(*index))
            .filter_map(|(_, lane)| lane.batcher.deadline())
            .min()
    }

    /// Whether the batches waiting reached the buffer's high-water mark.
    pub(super) fn is_high(&self) -> bool {
        self.ready.is_high()
    }

    /// Whether they are down to its low-water mark.
    pub(super) fn is_low(&self) -> bool {
        self.ready.is_low()
    }

    /// Waits until some lane's batch in flight ends; returns the lane. Pending
    /// for ever while none is in flight.
    pub(super) async fn next_done(&mut self) -> (usize, Done) {
        poll_fn(|cx| {
            for (index, lane) in self.lanes.iter_mut().enumerate() {
                if let Some(flight) = lane.in_flight.as_mut()
                    && let Poll::Ready(done) = Pin::new(&mut flight.task).poll(cx)
                {
                    return Poll::Ready((index, done));
                }
            }
            Poll::Pending
        })
        .await
    }

    /// `lane`'s batch in flight ended: it is idle again with its deliverer,
    /// and the partitions it no longer holds are free to go to any lane.
    pub(super) fn done(&mut self, index: usize, deliverer: Deliverer) {
        deliverer.busy(false);
        let lane = &mut self.lanes[index];
        lane.in_flight = None;
        lane.idle = Some(deliverer);
        self.release(index);
    }

    /// After a rebalance: what is held of partitions no longer owned in
    /// their epoch is dropped from the open and waiting batches, and a batch
    /// in flight whose partitions were all revoked is abandoned (cancelled:
    /// their new owner delivers them). Returns the messages dropped and the
    /// batches abandoned.
    pub(super) fn retain_owned(&mut self, context: &PipelineContext) -> (usize, usize) {
        self.ready.retain_owned(context);
        let ownership = context.ownership();
        let (mut dropped, mut abandoned) = (0, 0);
        for lane in &mut self.lanes {
            dropped += lane
                .batcher
                .retain_owned(|key, epoch| ownership.holds(key, epoch));
            if let Some(flight) = &lane.in_flight
                && !flight.positions.is_empty()
                && !flight.cancel.is_cancelled()
                && flight
                    .positions
                    .iter()
                    .all(|(key, p)| !ownership.holds(key, p.epoch))
            {
                flight.cancel.cancel();
                abandoned += 1;
            }
        }
        drop(ownership);
        for index in 0..self.lanes.len() {
            self.release(index);
        }
        (dropped, abandoned)
    }

    /// Stopping: cancels every batch in flight and hands them over, to be
    /// waited for (each may still reach a final outcome).
    pub(super) fn stop(&mut self) -> Vec<InFlight> {
        let flights: Vec<InFlight> = self
            .lanes
            .iter_mut()
            .filter_map(|lane| lane.in_flight.take())
            .collect();
        for flight in &flights {
            flight.cancel.cancel();
        }
        flights
    }

    /// Frees the partitions bound to `lane` that it no longer holds.
    fn release(&mut self, index: usize) {
        let lane = &self.lanes[index];
        let ready = &self.ready;
        self.map.release(index, |key| {
            lane.batcher.holds(key)
                || lane
                    .in_flight
                    .as_ref()
                    .is_some_and(|f| f.positions.contains_key(key))
                || ready.holds(index, key)
        });
    }
}

/// Full batches waiting behind the one in flight of their lane, oldest first,
/// with their size: the pipeline's own buffer, bounded across its lanes by
/// the marks below.
struct Ready {
    /// Per lane, each batch with its size in messages and bytes, counted once.
    flushes: Vec<VecDeque<(Flush, usize, usize)>>,
    messages: usize,
    bytes: usize,
}

/// Fetching pauses when this many messages or bytes wait (about what
/// librdkafka itself would buffer for a consumer), and resumes at half.
const READY_HIGH_MESSAGES: usize = 50_000;
const READY_HIGH_BYTES: usize = 16 << 20;

impl Ready {
    fn new(lanes: usize) -> Self {
        Self {
            flushes: (0..lanes).map(|_| VecDeque::new()).collect(),
            messages: 0,
            bytes: 0,
        }
    }

    fn push(&mut self, lane: usize, flush: Flush) {
        let messages = flush.records.len();
        let bytes = flush.records.iter().map(|r| r.content_bytes() + 64).sum();
        self.messages += messages;
        self.bytes += bytes;
        self.flushes[lane].push_back((flush, messages, bytes));
    }

    fn pop(&mut self, lane: usize) -> Option<Flush> {
        let (flush, messages, bytes) = self.flushes[lane].pop_front()?;
        self.messages -= messages;
        self.bytes -= bytes;
        Some(flush)
    }

    fn is_empty(&self, lane: usize) -> bool {
        self.flushes[lane].is_empty()
    }

    fn holds(&self, lane: usize, key: &PartitionKey) -> bool {
        self.flushes[lane]
            .iter()
            .any(|(flush, _, _)| flush.positions.contains_key(key))
    }

    fn is_high(&self) -> bool {
        self.messages >= READY_HIGH_MESSAGES || self.bytes >= READY_HIGH_BYTES
    }

    fn is_low(&self) -> bool {
        self.messages <= READY_HIGH_MESSAGES / 2 && self.bytes <= READY_HIGH_BYTES / 2
    }

    /// Drops what is held of partitions no longer owned in their epoch.
    fn retain_owned(&mut self, context: &PipelineContext) {
        self.messages = 0;
        self.bytes = 0;
        for lane in 0..self.flushes.len() {
            let flushes = std::mem::take(&mut self.flushes[lane]);
            for (flush, _, _) in flushes {
                let flush = keep_owned(flush, context);
                if !flush.positions.is_empty() {
                    self.push(lane, flush);
                }
            }
        }
    }
}

/// A batch is due when full, or when its interval has passed.
fn due(batcher: &Batcher, now: Instant) -> bool {
    batcher.is_full() || batcher.deadline().is_some_and(|at| at <= now)
}

/// The flush without the partitions no longer owned in the epoch they were
/// fetched in (checked at every flush).
fn keep_owned(mut flush: Flush, context: &PipelineContext) -> Flush {
    let ownership = context.ownership();
    let current = ownership.current(&flush.positions);
    if current.len() != flush.positions.len() {
        flush
            .records
            .retain(|r| current.contains_key(&(r.topic.clone(), r.partition)));
        flush.positions = current;
    }
    flush
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(topic: &str, partition: i32) -> PartitionKey {
        (topic.into(), partition)
    }

    #[test]
    fn one_lane_takes_every_partition() {
        let mut map = LaneMap::new(1);
        assert_eq!(map.lane_for(&key("t", 0)), 0);
        assert_eq!(map.lane_for(&key("t", 7)), 0);
        assert_eq!(map.lane_for(&key("u", 0)), 0);
    }

    #[test]
    fn partitions_spread_over_the_lanes_whichever_they_are() {
        let mut map = LaneMap::new(2);
        // Every other partition, as a group of two members assigns them.
        let lanes: Vec<usize> = [0, 2, 4, 6]
            .iter()
            .map(|&p| map.lane_for(&key("t", p)))
            .collect();
        assert_eq!(lanes, [0, 1, 0, 1]);
    }

    #[test]
    fn a_partition_stays_in_its_lane_while_the_lane_holds_some_of_it() {
        let mut map = LaneMap::new(2);
        assert_eq!(map.lane_for(&key("t", 0)), 0);
        assert_eq!(map.lane_for(&key("t", 1)), 1);
        map.release(0, |_| true);
        assert_eq!(map.lane_for(&key("t", 0)), 0, "still held: not moved");
        assert_eq!(map.lane_for(&key("t", 2)), 0, "ties go to the first lane");
        assert_eq!(map.lane_of(&key("t", 2)), Some(0));
    }

    #[test]
    fn a_released_partition_goes_to_the_least_loaded_lane_next_time() {
        let mut map = LaneMap::new(2);
        for p in 0..4 {
            map.lane_for(&key("t", p));
        }
        // Lane 0 holds 0 and 2, lane 1 holds 1 and 3; 1 and 3 are done.
        map.release(1, |_| false);
        assert_eq!(map.lane_of(&key("t", 1)), None);
        assert_eq!(map.lane_for(&key("t", 3)), 1);
        assert_eq!(map.lane_for(&key("t", 1)), 1, "1 holds one, 0 holds two");
        map.release(0, |k| k.1 != 2);
        assert_eq!(
            map.lane_for(&key("t", 2)),
            0,
            "lane 0 is down to one partition: the first of the least loaded"
        );
    }

    #[test]
    fn releasing_one_lane_leaves_the_others_bound() {
        let mut map = LaneMap::new(3);
        for p in 0..3 {
            map.lane_for(&key("t", p));
        }
        map.release(1, |_| false);
        assert_eq!(map.lane_of(&key("t", 0)), Some(0));
        assert_eq!(map.lane_of(&key("t", 1)), None);
        assert_eq!(map.lane_of(&key("t", 2)), Some(2));
    }
}
