//! Seed 004's frames: what a client sends, parsed into a [`Command`], and
//! what the server answers ([`Reply`]) and pushes ([`Notification`]).
//!
//! Every frame is a JSON object `{id, refid, t, a, s, p}`: `t` the type,
//! `a` the action, `p` the payload; answers carry `refid` (the request's
//! `id`) and `s` (0 success, 1 failure, with the reason as `p`). Parsing is
//! pure and never fails the connection: a frame that says nothing sensible
//! becomes a [`FrameError`] that still knows the request's `id`, `t` and `a`
//! where it could read them, so the client can match the failure.
//!
//! It does no I/O and knows nothing of Kafka clients.

use serde_json::{Map, Value, json};

use crate::domain::TopicName;

/// Most topics one frame may name (create, subscribe).
pub const MAX_TOPICS_PER_FRAME: usize = 1000;

/// A consumer group id: 1 to 255 printable characters, no control characters,
/// and not one of the delivery engine's (`webhooks-…`): a WebSocket member
/// of a subscription's group would take its partitions and commit past what
/// its webhook received.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConsumerGroup(String);

/// The delivery engine's groups are `webhooks-{subscription id}`.
const RESERVED_GROUP_PREFIX: &str = "webhooks-";

impl ConsumerGroup {
    pub fn parse(value: String) -> Result<Self, String> {
        if value.is_empty() {
            return Err("must not be empty".into());
        }
        if value.chars().count() > 255 {
            return Err("must be at most 255 characters".into());
        }
        if value.chars().any(char::is_control) {
            return Err("must not contain control characters".into());
        }
        if value.starts_with(RESERVED_GROUP_PREFIX) {
            return Err(format!(
                "must not start with {RESERVED_GROUP_PREFIX} (the webhook subscriptions' groups)"
            ));
        }
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Seed 004's `mq_limit`: how many messages a buffer holds, 1 to 1 000 000.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MqLimit(usize);

impl MqLimit {
    pub const MAX: usize = 1_000_000;

    pub fn parse(value: usize) -> Result<Self, String> {
        if (1..=Self::MAX).contains(&value) {
            Ok(Self(value))
        } else {
            Err(format!("must be between 1 and {}, got {value}", Self::MAX))
        }
    }

    pub fn get(self) -> usize {
        self.0
    }
}

/// What a client asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// `t:"topic", a:"create"`: make sure these topics exist.
    CreateTopics {
        topics: Vec<TopicName>,
        /// Beyond the seed: the partition count of the topics created now.
        partitions: Option<i32>,
    },
    /// `t:"topic", a:"list"`: every topic-partition.
    ListTopics,
    /// `t:"topic", a:"subscribe"`: join a group, have its messages pushed.
    Subscribe(Subscription),
    /// `t:"topic", a:"unsubscribe"`: leave the group.
    Unsubscribe,
    /// `t:"notif", a:"create"`: produce `p.m` to topic `p.t`.
    Produce(Outgoing),
    /// `t:"notif", a:"ack"`: pushed messages the client is done with.
    Ack(Vec<Position>),
    /// `t:"health"`: the consumers and their topics.
    Health,
}

/// A subscribe frame's payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    pub topics: Vec<TopicName>,
    /// `None`: the configured default group.
    pub group: Option<ConsumerGroup>,
    /// Beyond the seed: offsets are committed only as the client acknowledges.
    pub ack: bool,
}

/// A message to produce.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub topic: TopicName,
    pub value: Vec<u8>,
    pub key: Option<Vec<u8>>,
    /// Beyond the seed (its TODO): answer once the brokers stored it.
    pub receipt: bool,
}

/// One pushed message, named by where it is in Kafka.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Position {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// A request: its `id` (any JSON value; echoed as `refid`) and what it asks.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: Option<Value>,
    pub command: Command,
}

impl Request {
    /// The `t` and `a` an answer to this request carries.
    pub fn kind(&self) -> (&'static str, Option<&'static str>) {
        match self.command {
            Command::CreateTopics { .. } => ("topic", Some("create")),
            Command::ListTopics => ("topic", Some("list")),
            Command::Subscribe(_) => ("topic", Some("subscribe")),
            Command::Unsubscribe => ("topic", Some("unsubscribe")),
            Command::Produce(_) => ("notif", Some("create")),
            Command::Ack(_) => ("notif", Some("ack")),
            Command::Health => ("health", None),
        }
    }
}

/// A frame that asks nothing the server understands; what could be read of
/// it is kept for the answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{reason}")]
pub struct FrameError {
    pub id: Option<Value>,
    pub t: Option<String>,
    pub a: Option<String>,
    pub reason: String,
}

impl FrameError {
    /// The failure answer to this frame.
    pub fn reply(&self) -> Reply {
        Reply {
            refid: self.id.clone(),
            t: self.t.clone().unwrap_or_else(|| "error".into()),
            a: self.a.clone(),
            outcome: Err(self.reason.clone()),
        }
    }
}

/// Parses one text frame (the error boxed: it is the rarer, larger case).
pub fn parse(text: &str) -> Result<Request, Box<FrameError>> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        Box::new(FrameError {
            id: None,
            t: None,
            a: None,
            reason: format!("the frame is not JSON: {e}"),
        })
    })?;
    let Value::Object(mut frame) = value else {
        return Err(Box::new(FrameError {
            id: None,
            t: None,
            a: None,
            reason: "the frame must be a JSON object {id, t, a, p}".into(),
        }));
    };
    let id = frame.remove("id").filter(|v| !v.is_null());
    let t = frame.get("t").and_then(Value::as_str).map(str::to_string);
    let a = frame.get("a").and_then(Value::as_str).map(str::to_string);
    let fail = |reason: String| {
        Box::new(FrameError {
            id: id.clone(),
            t: t.clone(),
            a: a.clone(),
            reason,
        })
    };
    let payload = frame.remove("p").unwrap_or(Value::Null);
    let command = match (t.as_deref(), a.as_deref()) {
        (None, _) => return Err(fail("the frame has no type: \"t\" must be a string".into())),
        (Some("topic"), Some("create")) => create_topics(payload).map_err(fail)?,
        (Some("topic"), Some("list")) => Command::ListTopics,
        (Some("topic"), Some("subscribe")) => subscribe(payload).map_err(fail)?,
        (Some("topic"), Some("unsubscribe")) => Command::Unsubscribe,
        (Some("notif"), Some("create")) => produce(payload).map_err(fail)?,
        (Some("notif"), Some("ack")) => acks(payload).map_err(fail)?,
        (Some("health"), _) => Command::Health,
        (Some(t @ ("topic" | "notif")), a) => {
            let known = if t == "topic" {
                "create, list, subscribe, unsubscribe"
            } else {
                "create, ack"
            };
            return Err(fail(match a {
                Some(a) => format!("unknown action {a:?} for type {t:?}: one of {known}"),
                None => format!("type {t:?} needs an action \"a\": one of {known}"),
            }));
        }
        (Some(t), _) => {
            return Err(fail(format!(
                "unknown type {t:?}: one of \"topic\", \"notif\", \"health\""
            )));
        }
    };
    Ok(Request { id, command })
}

fn topic_names(value: Value, field: &str) -> Result<Vec<TopicName>, String> {
    let Value::Array(items) = value else {
        return Err(format!("{field} must be an array of topic names"));
    };
    if items.is_empty() {
        return Err(format!("{field} must name at least one topic"));
    }
    if items.len() > MAX_TOPICS_PER_FRAME {
        return Err(format!(
            "{field} names {} topics; at most {MAX_TOPICS_PER_FRAME}",
            items.len()
        ));
    }
    let mut topics: Vec<TopicName> = Vec::with_capacity(items.len());
    for item in items {
        let Value::String(name) = item else {
            return Err(format!("{field} must be an array of topic names (strings)"));
        };
        let topic = TopicName::parse(name.clone())
            .map_err(|reason| format!("topic name {name:?} {reason}"))?;
        if !topics.contains(&topic) {
            topics.push(topic);
        }
    }
    Ok(topics)
}

/// `p`: the seed's array of names, or `{"t": [names], "partitions": n}`.
fn create_topics(payload: Value) -> Result<Command, String> {
    match payload {
        Value::Array(_) => Ok(Command::CreateTopics {
            topics: topic_names(payload, "p")?,
            partitions: None,
        }),
        Value::Object(mut p) => {
            let topics = topic_names(p.remove("t").unwrap_or(Value::Null), "p.t")?;
            let partitions = match p.remove("partitions") {
                None | Some(Value::Null) => None,
                Some(n) => Some(
                    n.as_i64()
                        .filter(|n| (1..=100_000).contains(n))
                        .ok_or("p.partitions must be a whole number from 1 to 100000")?
                        as i32,
                ),
            };
            Ok(Command::CreateTopics { topics, partitions })
        }
        _ => Err(
            "p must be an array of topic names, or {\"t\": [topic names], \"partitions\": n}"
                .into(),
        ),
    }
}

fn subscribe(payload: Value) -> Result<Command, String> {
    let Value::Object(mut p) = payload else {
        return Err("p must be an object {\"t\": [topic names], \"consumer_group\": name}".into());
    };
    let topics = topic_names(p.remove("t").unwrap_or(Value::Null), "p.t")?;
    let group = match p.remove("consumer_group") {
        None | Some(Value::Null) => None,
        Some(Value::String(group)) => Some(
            ConsumerGroup::parse(group).map_err(|reason| format!("p.consumer_group {reason}"))?,
        ),
        Some(_) => return Err("p.consumer_group must be a string".into()),
    };
    let ack = match p.remove("ack") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(ack)) => ack,
        Some(_) => return Err("p.ack must be true or false".into()),
    };
    Ok(Command::Subscribe(Subscription { topics, group, ack }))
}

/// Text is produced as its bytes; any other JSON value as its JSON text.
fn bytes_of(value: Value) -> Vec<u8> {
    match value {
        Value::String(text) => text.into_bytes(),
        other => other.to_string().into_bytes(),
    }
}

fn produce(payload: Value) -> Result<Command, String> {
    let Value::Object(mut p) = payload else {
        return Err("p must be an object {\"t\": topic, \"m\": message}".into());
    };
    let topic = match p.remove("t") {
        Some(Value::String(name)) => {
            TopicName::parse(name.clone()).map_err(|reason| format!("p.t {name:?} {reason}"))?
        }
        _ => return Err("p.t must be the topic's name".into()),
    };
    let value = match p.remove("m") {
        None => return Err("p.m, the message, is missing".into()),
        Some(m) => bytes_of(m),
    };
    let key = match p.remove("key") {
        None | Some(Value::Null) => None,
        Some(key) => Some(bytes_of(key)),
    };
    let receipt = matches!(p.remove("receipt"), Some(Value::Bool(true)));
    Ok(Command::Produce(Outgoing {
        topic,
        value,
        key,
        receipt,
    }))
}

fn acks(payload: Value) -> Result<Command, String> {
    const SHAPE: &str = "p must be an array of {\"topic\", \"partition\", \"offset\"}";
    let Value::Array(items) = payload else {
        return Err(SHAPE.into());
    };
    let mut positions = Vec::with_capacity(items.len());
    for item in items {
        let position = (|| {
            let topic = item.get("topic")?.as_str()?.to_string();
            let partition = i32::try_from(item.get("partition")?.as_i64()?).ok()?;
            let offset = item.get("offset")?.as_i64()?;
            (partition >= 0 && offset >= 0).then_some(Position {
                topic,
                partition,
                offset,
            })
        })()
        .ok_or_else(|| format!("{SHAPE}; got {item}"))?;
        positions.push(position);
    }
    Ok(Command::Ack(positions))
}

/// An answer to a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub refid: Option<Value>,
    pub t: String,
    pub a: Option<String>,
    /// `Ok(p)`: `s` 0 with `p` (none when `Null`); `Err(m)`: `s` 1, `p` the message.
    pub outcome: Result<Value, String>,
}

impl Reply {
    pub fn to(request: &Request, outcome: Result<Value, String>) -> Self {
        let (t, a) = request.kind();
        Self {
            refid: request.id.clone(),
            t: t.into(),
            a: a.map(Into::into),
            outcome,
        }
    }

    /// The frame, numbered `id` (the connection's own count).
    pub fn frame(&self, id: u64) -> Value {
        let mut frame = Map::new();
        frame.insert("id".into(), json!(id));
        if let Some(refid) = &self.refid {
            frame.insert("refid".into(), refid.clone());
        }
        frame.insert("t".into(), json!(self.t));
        if let Some(a) = &self.a {
            frame.insert("a".into(), json!(a));
        }
        match &self.outcome {
            Ok(p) => {
                frame.insert("s".into(), json!(0));
                if !p.is_null() {
                    frame.insert("p".into(), p.clone());
                }
            }
            Err(message) => {
                frame.insert("s".into(), json!(1));
                frame.insert("p".into(), json!(message));
            }
        }
        Value::Object(frame)
    }
}

/// A consumed message, as it is pushed.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
}

impl Notification {
    /// Its element of a pushed array: `{id, t:"notif", p}` as the seed has it,
    /// plus where it came from. Text stays text; a value or key that is not
    /// UTF-8 is sent as base64 with `"encoding": "base64"`.
    pub fn element(&self, id: u64) -> Value {
        let texts = (
            self.value.as_deref().map(std::str::from_utf8).transpose(),
            self.key.as_deref().map(std::str::from_utf8).transpose(),
        );
        let mut element = json!({
            "id": id,
            "t": "notif",
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
        });
        let fields = element.as_object_mut().expect("an object");
        match texts {
            (Ok(value), Ok(key)) => {
                fields.insert("p".into(), json!(value));
                fields.insert("key".into(), json!(key));
            }
            _ => {
                use base64::Engine;
                let encode = |b: &Option<Vec<u8>>| {
                    b.as_deref()
                        .map(|b| base64::engine::general_purpose::STANDARD.encode(b))
                };
                fields.insert("p".into(), json!(encode(&self.value)));
                fields.insert("key".into(), json!(encode(&self.key)));
                fields.insert("encoding".into(), json!("base64"));
            }
        }
        element
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics(names: &[&str]) -> Vec<TopicName> {
        names
            .iter()
            .map(|n| TopicName::parse(n.to_string()).unwrap())
            .collect()
    }

    #[test]
    fn the_seeds_frames_parse() {
        let create = parse(r#"{"id":1,"t":"topic","a":"create","p":["topic1","topic2"]}"#).unwrap();
        assert_eq!(create.id, Some(json!(1)));
        assert_eq!(
            create.command,
            Command::CreateTopics {
                topics: topics(&["topic1", "topic2"]),
                partitions: None
            }
        );
        assert_eq!(
            parse(r#"{"id":23,"t":"topic","a":"list"}"#)
                .unwrap()
                .command,
            Command::ListTopics
        );
        let subscribe = parse(
            r#"{"id":1000,"t":"topic","a":"subscribe","p":{"t":["topic1","topic2"],"consumer_group":"ingestion_1"}}"#,
        )
        .unwrap();
        assert_eq!(
            subscribe.command,
            Command::Subscribe(Subscription {
                topics: topics(&["topic1", "topic2"]),
                group: Some(ConsumerGroup::parse("ingestion_1".into()).unwrap()),
                ack: false,
            })
        );
        assert_eq!(
            parse(r#"{"id":1300,"t":"topic","a":"unsubscribe"}"#)
                .unwrap()
                .command,
            Command::Unsubscribe
        );
        let produce = parse(
            r#"{"id":1320,"t":"notif","a":"create","p":{"t":"topic1", "m":"{custom_message:'msg'}"}}"#,
        )
        .unwrap();
        assert_eq!(
            produce.command,
            Command::Produce(Outgoing {
                topic: topics(&["topic1"]).remove(0),
                value: b"{custom_message:'msg'}".to_vec(),
                key: None,
                receipt: false,
            })
        );
        assert_eq!(
            parse(r#"{"id":1500,"t":"health"}"#).unwrap().command,
            Command::Health
        );
    }

    #[test]
    fn the_extensions_parse() {
        let create =
            parse(r#"{"id":"c","t":"topic","a":"create","p":{"t":["a"],"partitions":3}}"#).unwrap();
        assert_eq!(
            create.command,
            Command::CreateTopics {
                topics: topics(&["a"]),
                partitions: Some(3)
            }
        );
        let subscribe =
            parse(r#"{"t":"topic","a":"subscribe","p":{"t":["a","a"],"ack":true}}"#).unwrap();
        assert_eq!(subscribe.id, None);
        assert_eq!(
            subscribe.command,
            Command::Subscribe(Subscription {
                topics: topics(&["a"]),
                group: None,
                ack: true,
            })
        );
        let produce = parse(
            r#"{"id":2,"t":"notif","a":"create","p":{"t":"a","m":{"x":1},"key":"k","receipt":true}}"#,
        )
        .unwrap();
        let Command::Produce(outgoing) = produce.command else {
            panic!("a produce")
        };
        assert_eq!(outgoing.value, br#"{"x":1}"#);
        assert_eq!(outgoing.key.as_deref(), Some(&b"k"[..]));
        assert!(outgoing.receipt);
        let ack =
            parse(r#"{"id":3,"t":"notif","a":"ack","p":[{"topic":"a","partition":1,"offset":7}]}"#)
                .unwrap();
        assert_eq!(
            ack.command,
            Command::Ack(vec![Position {
                topic: "a".into(),
                partition: 1,
                offset: 7
            }])
        );
    }

    #[test]
    fn a_malformed_frame_keeps_what_could_be_read_for_its_answer() {
        let error = parse("not json").unwrap_err();
        assert_eq!(error.id, None);
        assert!(error.reason.contains("not JSON"), "{}", error.reason);
        assert_eq!(error.reply().frame(1)["t"], "error");

        let error = parse(r#"{"id":9,"t":"topic","a":"subscribe","p":{"t":[]}}"#).unwrap_err();
        let frame = error.reply().frame(4);
        assert_eq!(frame["refid"], 9);
        assert_eq!(frame["t"], "topic");
        assert_eq!(frame["a"], "subscribe");
        assert_eq!(frame["s"], 1);
        assert!(frame["p"].as_str().unwrap().contains("at least one"));

        for bad in [
            r#"[1,2]"#,
            r#"{"id":1}"#,
            r#"{"id":1,"t":"bogus"}"#,
            r#"{"id":1,"t":"topic","a":"explode"}"#,
            r#"{"id":1,"t":"topic","a":"create","p":["bad name!"]}"#,
            r#"{"id":1,"t":"topic","a":"create","p":{"t":["a"],"partitions":0}}"#,
            r#"{"id":1,"t":"topic","a":"subscribe","p":{"t":["a"],"consumer_group":""}}"#,
            r#"{"id":1,"t":"notif","a":"create","p":{"t":"a"}}"#,
            r#"{"id":1,"t":"notif","a":"ack","p":[{"topic":"a","partition":-1,"offset":0}]}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn replies_follow_the_seed() {
        let request = parse(r#"{"id":1300,"t":"topic","a":"unsubscribe"}"#).unwrap();
        assert_eq!(
            Reply::to(&request, Ok(Value::Null)).frame(567),
            json!({"id":567,"refid":1300,"t":"topic","a":"unsubscribe","s":0})
        );
        let health = parse(r#"{"id":1500,"t":"health"}"#).unwrap();
        assert_eq!(
            Reply::to(&health, Ok(json!({"consumers": []}))).frame(5),
            json!({"id":5,"refid":1500,"t":"health","s":0,"p":{"consumers":[]}})
        );
        assert_eq!(Reply::to(&health, Err("no".into())).frame(6)["s"], json!(1));
    }

    #[test]
    fn a_notification_is_text_when_it_can_be_and_base64_when_not() {
        let text = Notification {
            topic: "a".into(),
            partition: 2,
            offset: 40,
            key: None,
            value: Some(b"hello".to_vec()),
        };
        assert_eq!(
            text.element(3),
            json!({"id":3,"t":"notif","p":"hello","topic":"a","partition":2,"offset":40,"key":null})
        );
        let binary = Notification {
            value: Some(vec![0xff, 0x00]),
            key: Some(b"k".to_vec()),
            ..text
        };
        let element = binary.element(4);
        assert_eq!(element["p"], "/wA=");
        assert_eq!(element["key"], "aw==");
        assert_eq!(element["encoding"], "base64");
    }

    #[test]
    fn limits_and_groups_parse() {
        assert!(MqLimit::parse(0).is_err());
        assert_eq!(MqLimit::parse(5000).unwrap().get(), 5000);
        assert!(MqLimit::parse(MqLimit::MAX + 1).is_err());
        assert!(ConsumerGroup::parse("".into()).is_err());
        assert!(ConsumerGroup::parse("a\nb".into()).is_err());
        assert!(ConsumerGroup::parse("x".repeat(256)).is_err());
        assert_eq!(ConsumerGroup::parse("g-1".into()).unwrap().as_str(), "g-1");
        let reserved = ConsumerGroup::parse("webhooks-5eed0001-0000-4000-8000-000000000001".into());
        assert!(
            reserved
                .unwrap_err()
                .contains("webhook subscriptions' groups")
        );
    }
}
