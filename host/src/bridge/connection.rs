//! One WebSocket connection: its reader (frames in, one at a time, answered
//! in order), its writer (answers, pushed notification arrays and pings out)
//! and at most one subscription.
//!
//! The reader waits for the writer when the client does not read its
//! answers (a bounded queue), so a client that floods requests without
//! reading is slowed by its own socket, not buffered. A connection from
//! which nothing arrives (frames, pongs) for the idle timeout is closed;
//! the writer pings at the ping interval so a live client always has
//! something to answer. Closing the connection stops its subscription,
//! which leaves the group.
//!
//! It answers every request, but a produced message's success only when
//! asked (`"receipt": true`; the seed answers nothing); failures always.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::buffer::Outbox;
use super::consumer::{Subscription, Wanted};
use super::error::BridgeError;
use super::frame::{self, Command, Outgoing, Position, Reply, Request};
use super::{Bridge, ConnectionState, View};
use crate::api::auth::Principal;
use crate::domain::TopicName;
use crate::kafka::TopicLayout;

/// Answers waiting for the writer before the reader waits too.
const REPLY_QUEUE: usize = 64;

/// Serves one upgraded connection until either side closes it.
pub(super) async fn serve(bridge: Arc<Bridge>, principal: Principal, socket: WebSocket) {
    let Some(state) = bridge.open(principal.tenant_id()) else {
        return;
    };
    let id = state.id;
    tracing::info!(connection = id, "Bridge connection opened.");
    let stop = bridge.stop.child_token();
    let (sink, stream) = socket.split();
    let (replies, outgoing) = mpsc::channel(REPLY_QUEUE);
    let writer = tokio::spawn(write(
        sink,
        outgoing,
        state.outbox.clone(),
        bridge.settings.push_interval,
        bridge.settings.ping_interval,
        stop.clone(),
    ));
    let mut session = Session {
        bridge: bridge.clone(),
        principal,
        state,
        replies,
        subscription: None,
        known_topics: HashSet::new(),
        stop: stop.clone(),
    };
    session.read(stream).await;
    session.unsubscribe().await;
    stop.cancel();
    drop(session);
    if writer.await.is_err() {
        tracing::error!(connection = id, "Bridge writer panicked.");
    }
    bridge.close(id);
    tracing::info!(connection = id, "Bridge connection closed.");
}

struct Session {
    bridge: Arc<Bridge>,
    principal: Principal,
    state: Arc<ConnectionState>,
    replies: mpsc::Sender<Reply>,
    subscription: Option<Subscription>,
    /// Topics seen to exist, so producing does not ask the brokers each time.
    known_topics: HashSet<TopicName>,
    stop: CancellationToken,
}

impl Session {
    async fn read(&mut self, mut stream: SplitStream<WebSocket>) {
        let idle = self.bridge.settings.idle_timeout;
        let id = self.state.id;
        loop {
            let next = tokio::select! {
                () = self.stop.cancelled() => return,
                next = tokio::time::timeout(idle, stream.next()) => next,
            };
            let message = match next {
                Err(_) => {
                    tracing::info!(connection = id, idle = ?idle, "Bridge connection idle; closing it.");
                    return;
                }
                Ok(None) => return,
                Ok(Some(Err(error))) => {
                    tracing::debug!(connection = id, error = %error, "Bridge connection failed.");
                    return;
                }
                Ok(Some(Ok(message))) => message,
            };
            let reply = match message {
                Message::Text(text) => self.handle(text.as_str()).await,
                Message::Binary(bytes) => match std::str::from_utf8(&bytes) {
                    Ok(text) => self.handle(text).await,
                    Err(_) => Some(
                        frame::FrameError {
                            id: None,
                            t: None,
                            a: None,
                            reason: "a binary frame must hold UTF-8 JSON".into(),
                        }
                        .reply(),
                    ),
                },
                Message::Ping(_) | Message::Pong(_) => None,
                Message::Close(_) => return,
            };
            if let Some(reply) = reply
                && self.replies.send(reply).await.is_err()
            {
                return;
            }
        }
    }

    /// Carries out one frame; the answer, if it has one now.
    async fn handle(&mut self, text: &str) -> Option<Reply> {
        let request = match frame::parse(text) {
            Ok(request) => request,
            Err(error) => {
                tracing::debug!(connection = self.state.id, error = %error, "Malformed bridge frame.");
                return Some(error.reply());
            }
        };
        let outcome = match &request.command {
            Command::CreateTopics { topics, partitions } => {
                self.create_topics(topics, *partitions).await
            }
            Command::ListTopics => self.list_topics().await,
            Command::Subscribe(wanted) => self.subscribe(wanted).await,
            Command::Unsubscribe => {
                self.unsubscribe().await;
                Ok(Value::Null)
            }
            Command::Produce(message) => return self.produce(&request, message).await,
            Command::Ack(positions) => self.ack(positions.clone()).await,
            Command::Health => Ok(self.bridge.health(&self.principal)),
        };
        Some(Reply::to(&request, outcome.map_err(|e| e.to_string())))
    }

    async fn create_topics(
        &mut self,
        topics: &[TopicName],
        partitions: Option<i32>,
    ) -> Result<Value, BridgeError> {
        for topic in topics {
            self.principal.may_write(topic.as_str())?;
        }
        let default = self.bridge.layout;
        let layout = TopicLayout::new(
            partitions.unwrap_or(default.partitions()),
            default.replication(),
        )
        .unwrap_or(default);
        for topic in topics {
            self.bridge.topics.ensure(topic.as_str(), layout).await?;
            self.known_topics.insert(topic.clone());
        }
        Ok(json!(
            topics.iter().map(TopicName::as_str).collect::<Vec<_>>()
        ))
    }

    async fn list_topics(&self) -> Result<Value, BridgeError> {
        let topics = self.bridge.topics.list().await?;
        let partitions: Vec<Value> = topics
            .iter()
            .filter(|(topic, _)| self.principal.may_read([topic.as_str()]).is_ok())
            .flat_map(|(topic, count)| {
                (0..*count).map(move |p| json!({"topic": topic, "partition": p}))
            })
            .collect();
        Ok(Value::Array(partitions))
    }

    /// Errs unless `topic` exists (asked once per connection).
    async fn check_exists(&mut self, topic: &TopicName) -> Result<(), BridgeError> {
        if self.known_topics.contains(topic) {
            return Ok(());
        }
        match self.bridge.topics.partitions(topic.as_str()).await? {
            Some(_) => {
                self.known_topics.insert(topic.clone());
                Ok(())
            }
            None => Err(BridgeError::UnknownTopic(topic.as_str().to_string())),
        }
    }

    async fn subscribe(&mut self, wanted: &frame::Subscription) -> Result<Value, BridgeError> {
        if let Some(current) = &self.subscription {
            return Err(BridgeError::AlreadySubscribed(current.topics.clone()));
        }
        let topics: Vec<String> = wanted
            .topics
            .iter()
            .map(|t| t.as_str().to_string())
            .collect();
        self.principal.may_read(topics.iter().map(String::as_str))?;
        for topic in &wanted.topics {
            self.check_exists(topic).await?;
        }
        let group = wanted
            .group
            .clone()
            .unwrap_or_else(|| self.bridge.settings.default_group.clone());
        let subscription = Subscription::start(
            self.state.id,
            &self.bridge.kafka,
            &self.bridge.settings,
            Wanted {
                topics: topics.clone(),
                group: group.clone(),
                ack: wanted.ack,
                tenant: self.state.tenant,
            },
            self.state.outbox.clone(),
            self.stop.child_token(),
        )
        .map_err(BridgeError::Consumer)?;
        self.state.show(Some(View {
            topics: topics.clone(),
            group: group.as_str().to_string(),
            ack: wanted.ack,
            gauges: subscription.gauges.clone(),
        }));
        self.subscription = Some(subscription);
        Ok(json!(topics))
    }

    async fn unsubscribe(&mut self) {
        if let Some(subscription) = self.subscription.take() {
            self.state.show(None);
            subscription.stop().await;
        }
    }

    async fn ack(&mut self, positions: Vec<Position>) -> Result<Value, BridgeError> {
        let subscription = self
            .subscription
            .as_ref()
            .ok_or(BridgeError::NotSubscribed)?;
        if !subscription.ack {
            return Err(BridgeError::NotAcknowledged);
        }
        let acked = subscription
            .acknowledge(positions)
            .await
            .ok_or(BridgeError::ShuttingDown)?;
        let list = |positions: &[Position]| -> Vec<Value> {
            positions
                .iter()
                .map(|p| json!({"topic": p.topic, "partition": p.partition, "offset": p.offset}))
                .collect()
        };
        Ok(json!({"committed": list(&acked.commit), "unknown": list(&acked.unknown)}))
    }

    async fn queue(&mut self, message: &Outgoing) -> Result<crate::kafka::Acked, BridgeError> {
        self.principal.may_write(message.topic.as_str())?;
        self.check_exists(&message.topic).await?;
        self.bridge.producer.send(message).await
    }

    /// Queues the message; its answer comes later (a failure, or the
    /// receipt when asked), from the brokers' acknowledgement.
    async fn produce(&mut self, request: &Request, message: &Outgoing) -> Option<Reply> {
        let delivery = match self.queue(message).await {
            Ok(delivery) => delivery,
            Err(error) => return Some(Reply::to(request, Err(error.to_string()))),
        };
        let answer = Reply::to(request, Ok(Value::Null));
        let replies = self.replies.clone();
        let producer = self.bridge.producer.clone();
        let topic = message.topic.as_str().to_string();
        let receipt = message.receipt;
        tokio::spawn(async move {
            let outcome = match producer.written(&topic, delivery).await {
                Ok(written) if receipt => Ok(json!({
                    "topic": topic,
                    "partition": written.partition,
                    "offset": written.offset,
                })),
                Ok(_) => return,
                Err(error) => Err(error.to_string()),
            };
            let _ = replies.send(Reply { outcome, ..answer }).await;
        });
        None
    }
}

/// The writer: answers as they come, notifications as one array every push
/// interval (at once when the buffer is full), pings at the ping interval.
async fn write(
    mut sink: SplitSink<WebSocket, Message>,
    mut replies: mpsc::Receiver<Reply>,
    outbox: Arc<Outbox>,
    push_interval: Duration,
    ping_interval: Duration,
    stop: CancellationToken,
) {
    // Frames are numbered per connection, answers and notifications alike.
    let mut next_id: u64 = 0;
    let immediate = push_interval.is_zero();
    let mut push = tokio::time::interval(push_interval.max(Duration::from_millis(1)));
    push.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut ping = tokio::time::interval_at(Instant::now() + ping_interval, ping_interval);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let message = tokio::select! {
            () = stop.cancelled() => break,
            reply = replies.recv() => match reply {
                Some(reply) => {
                    next_id += 1;
                    Message::Text(reply.frame(next_id).to_string().into())
                }
                None => break,
            },
            _ = push.tick(), if !immediate => match notifications(&outbox, &mut next_id) {
                Some(message) => message,
                None => continue,
            },
            () = outbox.filled.notified() => {
                if !(immediate || outbox.is_full()) {
                    continue;
                }
                match notifications(&outbox, &mut next_id) {
                    Some(message) => message,
                    None => continue,
                }
            }
            _ = ping.tick() => Message::Ping(Default::default()),
        };
        let sent = tokio::select! {
            () = stop.cancelled() => break,
            sent = sink.send(message) => sent,
        };
        outbox.sent();
        if let Err(error) = sent {
            tracing::debug!(error = %error, "Bridge connection could not be written.");
            break;
        }
    }
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
}

/// The waiting notifications as one array frame, if any wait.
fn notifications(outbox: &Outbox, next_id: &mut u64) -> Option<Message> {
    let taken = outbox.take();
    if taken.is_empty() {
        return None;
    }
    let elements: Vec<Value> = taken
        .iter()
        .map(|notification| {
            *next_id += 1;
            notification.element(*next_id)
        })
        .collect();
    Some(Message::Text(Value::Array(elements).to_string().into()))
}
