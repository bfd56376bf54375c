//! The WebSocket bridge (seed 004), end to end: a real WebSocket client
//! (tokio-tungstenite) against the real application and the embedded
//! broker — every action of the seed's protocol, malformed frames, two
//! clients splitting a group's partitions, acknowledged mode redelivering
//! what was not acknowledged after a disconnect, a client that never reads
//! (its partitions pause, the server's buffer stays bounded, nothing is
//! lost), and authentication by header or `?token=` with a tenant's ACL.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use wasmhook::config::StartFrom;

use crate::helpers::{ADMIN_TOKEN, Db, System, TestApp, produce};

/// Group joins take about 3 s on the mock cluster; a busy machine needs more.
const WAIT: Duration = Duration::from_secs(60);

/// A bridge client that sorts what arrives: answers (objects) and pushed
/// notifications (arrays).
struct Client {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    replies: VecDeque<Value>,
    pushed: VecDeque<Value>,
    next_id: u64,
}

fn ws_url(app: &TestApp, query: &str) -> String {
    format!(
        "{}/1/ws{query}",
        app.address.replacen("http://", "ws://", 1)
    )
}

impl Client {
    /// Connects with `Authorization: Bearer <token>`.
    async fn connect(app: &TestApp, token: &str) -> Self {
        let mut request = ws_url(app, "").into_client_request().unwrap();
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let (socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("the WebSocket upgrade succeeds");
        Self::over(socket)
    }

    /// Connects as the admin with a receive buffer of a few KiB, so that a
    /// client that stops reading stops the server's writes soon.
    async fn connect_with_small_buffer(app: &TestApp) -> Self {
        let address = app.address.trim_start_matches("http://").parse().unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(address).await.unwrap();
        let mut request = ws_url(app, "").into_client_request().unwrap();
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {ADMIN_TOKEN}").parse().unwrap(),
        );
        let (socket, _) = tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream))
            .await
            .expect("the WebSocket upgrade succeeds");
        Self::over(socket)
    }

    fn over(socket: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Self {
        Self {
            socket,
            replies: VecDeque::new(),
            pushed: VecDeque::new(),
            next_id: 100,
        }
    }

    async fn send_text(&mut self, text: String) {
        self.socket.send(Message::Text(text.into())).await.unwrap();
    }

    /// Reads one frame into the queues; false when the deadline passed first.
    async fn read_one(&mut self, deadline: tokio::time::Instant) -> bool {
        let next = tokio::time::timeout_at(deadline, self.socket.next()).await;
        let Ok(Some(message)) = next else {
            return false;
        };
        let text = match message.expect("the connection stays open") {
            Message::Text(text) => text.to_string(),
            Message::Ping(_) | Message::Pong(_) => return true,
            other => panic!("an unexpected frame: {other:?}"),
        };
        match serde_json::from_str::<Value>(&text).expect("JSON frames") {
            Value::Array(elements) => self.pushed.extend(elements),
            reply => self.replies.push_back(reply),
        }
        true
    }

    /// The next answer, whatever it answers.
    async fn next_reply(&mut self) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(reply) = self.replies.pop_front() {
                return reply;
            }
            assert!(self.read_one(deadline).await, "no answer within {WAIT:?}");
        }
    }

    /// Sends `frame` with a fresh `id` and returns the answer whose `refid` is it.
    async fn request(&mut self, mut frame: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        frame["id"] = json!(id);
        self.send_text(frame.to_string()).await;
        self.reply_to(id).await
    }

    async fn reply_to(&mut self, id: u64) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(at) = self.replies.iter().position(|r| r["refid"] == json!(id)) {
                return self.replies.remove(at).unwrap();
            }
            assert!(
                self.read_one(deadline).await,
                "no answer to {id} within {WAIT:?}; got {:?}",
                self.replies
            );
        }
    }

    /// Waits for `n` pushed notifications in all (those already read count).
    async fn notifications(&mut self, n: usize) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.pushed.len() < n {
            assert!(
                self.read_one(deadline).await,
                "{} of {n} notifications within {WAIT:?}",
                self.pushed.len()
            );
        }
        self.pushed.drain(..n).collect()
    }

    async fn health(&mut self) -> Vec<Value> {
        let reply = self.request(json!({"t": "health"})).await;
        assert_eq!(reply["s"], 0, "{reply}");
        reply["p"]["consumers"].as_array().unwrap().clone()
    }

    /// Waits until `health` satisfies `done`, and returns what it said then.
    async fn health_until(&mut self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let consumers = self.health().await;
            if done(&consumers) {
                return consumers;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what} within {WAIT:?}; health says {consumers:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn subscribe(&mut self, topics: &[&str], group: &str, ack: bool) {
        let reply = self
            .request(json!({
                "t": "topic", "a": "subscribe",
                "p": {"t": topics, "consumer_group": group, "ack": ack}
            }))
            .await;
        assert_eq!(reply["s"], 0, "{reply}");
        assert_eq!(reply["p"], json!(topics));
    }

    async fn close(mut self) {
        self.socket.close(None).await.unwrap();
        // Read until the server's close arrives.
        let deadline = tokio::time::Instant::now() + WAIT;
        while let Ok(Some(Ok(_))) = tokio::time::timeout_at(deadline, self.socket.next()).await {}
    }
}

/// Asserts that `reply` is a failure (`s` 1) whose message says `words`.
fn assert_refused(reply: &Value, words: &str) {
    assert_eq!(reply["s"], 1, "{reply}");
    assert!(
        reply["p"].as_str().is_some_and(|p| p.contains(words)),
        "expected a failure saying {words:?}: {reply}"
    );
}

/// The partitions a consumer of `health` owns.
fn partitions(consumer: &Value) -> BTreeSet<(String, i64)> {
    consumer["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["topic"].as_str().unwrap().to_string(),
                p["partition"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn offsets(notifications: &[Value]) -> Vec<i64> {
    notifications
        .iter()
        .map(|n| n["offset"].as_i64().unwrap())
        .collect()
}

async fn start() -> System {
    System::start_with(Db::Sqlite, |settings| {
        settings.bridge.start_from = StartFrom::Earliest;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_action_of_the_seed_answers_with_its_refid() {
    let sys = start().await;
    let mut client = Client::connect(&sys.app, ADMIN_TOKEN).await;

    // create: p the names; the answer repeats them.
    let created = client
        .request(json!({"t": "topic", "a": "create", "p": ["ws-one", "ws-two"]}))
        .await;
    assert_eq!(created["s"], 0, "{created}");
    assert_eq!(created["t"], "topic");
    assert_eq!(created["a"], "create");
    assert_eq!(created["p"], json!(["ws-one", "ws-two"]));
    assert!(created["id"].is_u64(), "{created}");
    let with_count = client
        .request(json!({"t": "topic", "a": "create", "p": {"t": ["ws-three"], "partitions": 2}}))
        .await;
    assert_eq!(with_count["s"], 0, "{with_count}");

    // list: every topic-partition.
    let listed = client.request(json!({"t": "topic", "a": "list"})).await;
    assert_eq!(listed["s"], 0, "{listed}");
    let listed = listed["p"].as_array().unwrap().clone();
    for topic in ["ws-one", "ws-two", "ws-three"] {
        assert!(
            listed.contains(&json!({"topic": topic, "partition": 0})),
            "{topic} in {listed:?}"
        );
    }

    // subscribe, and the consumer shows in health with its topics.
    client.subscribe(&["ws-one"], "actions", false).await;
    let consumers = client
        .health_until("the subscription's partitions assigned", |c| {
            c.len() == 1 && !partitions(&c[0]).is_empty()
        })
        .await;
    assert_eq!(consumers[0]["topics"], json!(["ws-one"]));
    assert_eq!(consumers[0]["consumer_group"], "actions");
    assert!(consumers[0]["ws"].is_u64());

    // notif create: no answer (the seed's), unless a receipt is asked for.
    client
        .send_text(
            json!({"id": 1, "t": "notif", "a": "create", "p": {"t": "ws-one", "m": "hello"}})
                .to_string(),
        )
        .await;
    let receipt = client
        .request(json!({
            "t": "notif", "a": "create",
            "p": {"t": "ws-one", "m": {"n": 2}, "key": "k2", "receipt": true}
        }))
        .await;
    assert_eq!(receipt["s"], 0, "{receipt}");
    assert_eq!(receipt["p"]["topic"], "ws-one");
    assert!(receipt["p"]["offset"].is_i64(), "{receipt}");

    // Pushed: arrays of {id, t: "notif", p} with where each came from.
    let mut pushed = client.notifications(2).await;
    pushed.sort_by_key(|n| n["p"].as_str().map(str::to_string));
    assert_eq!(pushed[0]["t"], "notif");
    assert_eq!(pushed[0]["p"], "hello");
    assert_eq!(pushed[0]["topic"], "ws-one");
    assert!(pushed[0]["id"].is_u64());
    assert!(pushed[0]["partition"].is_i64());
    assert_eq!(pushed[1]["p"], r#"{"n":2}"#);
    assert_eq!(pushed[1]["key"], "k2");
    assert_eq!(
        (pushed[1]["partition"].clone(), pushed[1]["offset"].clone()),
        (
            receipt["p"]["partition"].clone(),
            receipt["p"]["offset"].clone()
        )
    );
    // No answer was sent for the first produce.
    assert!(
        client.replies.iter().all(|r| r["refid"] != json!(1)),
        "{:?}",
        client.replies
    );

    // A second subscription is refused while the first runs.
    let again = client
        .request(json!({"t": "topic", "a": "subscribe", "p": {"t": ["ws-two"]}}))
        .await;
    assert_refused(&again, "already subscribed");

    // Acknowledging is for acknowledged subscriptions.
    let ack = client
        .request(json!({"t": "notif", "a": "ack", "p": [{"topic": "ws-one", "partition": 0, "offset": 0}]}))
        .await;
    assert_eq!(ack["s"], 1, "{ack}");

    // unsubscribe: s 0, and health has no consumer left.
    let unsubscribed = client
        .request(json!({"t": "topic", "a": "unsubscribe"}))
        .await;
    assert_eq!(unsubscribed["s"], 0, "{unsubscribed}");
    assert_eq!(unsubscribed["a"], "unsubscribe");
    assert_eq!(client.health().await, Vec::<Value>::new());

    // Producing to, or subscribing to, a topic that does not exist fails.
    let missing = client
        .request(json!({"t": "notif", "a": "create", "p": {"t": "ws-nowhere", "m": "x"}}))
        .await;
    assert_refused(&missing, "no topic ws-nowhere");
    let missing = client
        .request(json!({"t": "topic", "a": "subscribe", "p": {"t": ["ws-nowhere"]}}))
        .await;
    assert_eq!(missing["s"], 1, "{missing}");

    client.close().await;
    sys.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_malformed_frame_gets_an_error_and_the_connection_stays_open() {
    let sys = start().await;
    let mut client = Client::connect(&sys.app, ADMIN_TOKEN).await;

    client.send_text("this is not JSON".into()).await;
    let reply = client.next_reply().await;
    assert_refused(&reply, "not JSON");

    client.send_text("[1, 2]".into()).await;
    assert_eq!(client.next_reply().await["s"], 1);

    for (frame, words) in [
        (json!({"t": "bogus"}), "unknown type"),
        (json!({"t": "topic", "a": "explode"}), "unknown action"),
        (
            json!({"t": "topic", "a": "create", "p": ["no spaces allowed"]}),
            "topic name",
        ),
        (
            json!({"t": "topic", "a": "subscribe", "p": {"t": []}}),
            "at least one",
        ),
        (json!({"t": "notif", "a": "create", "p": {"t": "x"}}), "p.m"),
        (
            json!({"t": "notif", "a": "ack", "p": {"topic": "x"}}),
            "array",
        ),
    ] {
        let reply = client.request(frame.clone()).await;
        assert_eq!(reply["s"], 1, "{frame} → {reply}");
        assert!(
            reply["p"].as_str().unwrap().contains(words),
            "{frame} → {reply}"
        );
    }

    // Still open, still answering.
    assert_eq!(client.health().await, Vec::<Value>::new());
    client.close().await;
    sys.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_clients_in_one_group_split_the_partitions() {
    let sys = start().await;
    sys.topic("ws-split", 4);
    let mut first = Client::connect(&sys.app, ADMIN_TOKEN).await;
    let mut second = Client::connect(&sys.app, ADMIN_TOKEN).await;
    first.subscribe(&["ws-split"], "pair", false).await;
    second.subscribe(&["ws-split"], "pair", false).await;

    let consumers = first
        .health_until("both members with two partitions each", |c| {
            c.len() == 2 && c.iter().all(|c| partitions(c).len() == 2)
        })
        .await;
    let mut owned: BTreeMap<u64, BTreeSet<(String, i64)>> = BTreeMap::new();
    for consumer in &consumers {
        owned.insert(consumer["ws"].as_u64().unwrap(), partitions(consumer));
    }
    let all: BTreeSet<_> = owned.values().flatten().cloned().collect();
    assert_eq!(all.len(), 4, "the members' partitions overlap: {owned:?}");
    let owned: BTreeSet<BTreeSet<(String, i64)>> = owned.into_values().collect();
    for partition in 0..4 {
        produce(
            &sys.producer,
            "ws-split",
            partition,
            &[json!({"partition": partition})],
        )
        .await;
    }
    let received = |notes: &[Value]| -> BTreeSet<(String, i64)> {
        notes
            .iter()
            .map(|n| {
                (
                    n["topic"].as_str().unwrap().to_string(),
                    n["partition"].as_i64().unwrap(),
                )
            })
            .collect()
    };
    let to_first = first.notifications(2).await;
    let to_second = second.notifications(2).await;
    // Each got the messages of the partitions one member owns, and they
    // are not the same member's.
    assert!(
        owned.contains(&received(&to_first)),
        "{to_first:?} {owned:?}"
    );
    assert!(
        owned.contains(&received(&to_second)),
        "{to_second:?} {owned:?}"
    );
    assert_ne!(received(&to_first), received(&to_second));

    first.close().await;
    second.close().await;
    sys.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_mode_redelivers_what_was_not_acknowledged_after_a_disconnect() {
    let sys = start().await;
    sys.topic("ws-acked", 1);
    let values: Vec<Value> = (0..10).map(|n| json!({"n": n})).collect();
    produce(&sys.producer, "ws-acked", 0, &values).await;

    let mut first = Client::connect(&sys.app, ADMIN_TOKEN).await;
    first.subscribe(&["ws-acked"], "acking", true).await;
    let pushed = first.notifications(10).await;
    assert_eq!(offsets(&pushed), (0..10).collect::<Vec<_>>());

    // 0..=3 and 6: only the prefix 0..=3 may be committed.
    let acks: Vec<Value> = [0, 1, 2, 3, 6]
        .iter()
        .map(|offset| json!({"topic": "ws-acked", "partition": 0, "offset": offset}))
        .collect();
    let acked = first
        .request(json!({"t": "notif", "a": "ack", "p": acks}))
        .await;
    assert_eq!(acked["s"], 0, "{acked}");
    assert_eq!(
        acked["p"]["committed"],
        json!([{"topic": "ws-acked", "partition": 0, "offset": 4}])
    );
    assert_eq!(acked["p"]["unknown"], json!([]));
    let consumers = first.health().await;
    assert_eq!(consumers[0]["ack"], true);
    assert_eq!(consumers[0]["unacked"], 6, "{consumers:?}");
    first.close().await;

    // The next member of the group gets everything from 4 on, 6 included.
    let mut second = Client::connect(&sys.app, ADMIN_TOKEN).await;
    second
        .health_until("the first connection gone", |c| c.is_empty())
        .await;
    second.subscribe(&["ws-acked"], "acking", true).await;
    let redelivered = second.notifications(6).await;
    assert_eq!(offsets(&redelivered), (4..10).collect::<Vec<_>>());

    second.close().await;
    sys.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_never_reads_pauses_its_partitions_and_loses_nothing() {
    // Each resume costs librdkafka about a second before it fetches again
    // (the broker thread is not woken): a limit of 100 lets the client catch
    // up in seconds once it reads.
    const LIMIT: usize = 100;
    const PER_PARTITION: usize = 250;
    let sys = System::start_with(Db::Sqlite, |settings| {
        settings.bridge.start_from = StartFrom::Earliest;
        settings.bridge.push_limit = wasmhook::bridge::MqLimit::parse(LIMIT).unwrap();
        settings.bridge.push_interval = Duration::from_millis(10);
        // The client is silent while it does not read: no idle close meanwhile.
        settings.bridge.idle_timeout = Duration::from_secs(600);
    })
    .await;
    sys.topic("ws-flood", 4);
    // 10 MB in all (2.5 MB a partition: the mock keeps 5): far more than the
    // sockets between server and client hold.
    let filler = "x".repeat(10_000);
    for partition in 0..4 {
        let values: Vec<Value> = (0..PER_PARTITION)
            .map(|n| json!({"n": n, "filler": filler}))
            .collect();
        produce(&sys.producer, "ws-flood", partition, &values).await;
    }
    let total = 4 * PER_PARTITION;

    let mut sleeper = Client::connect_with_small_buffer(&sys.app).await;
    sleeper.subscribe(&["ws-flood"], "flood", false).await;
    // The sleeper reads nothing from here on; another client watches.
    let mut watcher = Client::connect(&sys.app, ADMIN_TOKEN).await;
    let consumers = watcher
        .health_until("the sleeper's partitions paused", |c| {
            c.len() == 1 && c[0]["paused"] == true
        })
        .await;
    let sleeping = &consumers[0];
    assert_eq!(sleeping["limit"], LIMIT);
    assert!(
        sleeping["buffered"].as_u64().unwrap() <= LIMIT as u64,
        "{sleeping}"
    );
    assert!(
        sleeping["sending"].as_u64().unwrap() <= LIMIT as u64,
        "{sleeping}"
    );
    // The server stopped taking messages from Kafka long before the end.
    let consumed = sleeping["consumed"].as_u64().unwrap();
    assert!(consumed < total as u64, "{sleeping}");

    // Once it reads, everything arrives, in order per partition, once.
    let pushed = sleeper.notifications(total).await;
    let mut per_partition: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for notification in &pushed {
        per_partition
            .entry(notification["partition"].as_i64().unwrap())
            .or_default()
            .push(notification["offset"].as_i64().unwrap());
    }
    for partition in 0..4 {
        assert_eq!(
            per_partition.get(&partition).cloned().unwrap_or_default(),
            (0..PER_PARTITION as i64).collect::<Vec<_>>(),
            "partition {partition}"
        );
    }
    watcher
        .health_until("the sleeper's partitions resumed", |c| {
            c.len() == 1 && c[0]["paused"] == false
        })
        .await;

    sleeper.close().await;
    watcher.close().await;
    sys.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_needs_a_token_in_the_header_or_the_query_and_a_tenant_keeps_to_its_topics() {
    let sys = start().await;
    sys.topic("ws-mine", 1);
    sys.topic("ws-theirs", 1);

    // No token: 401 before any upgrade; a wrong one too.
    for url in [
        ws_url(&sys.app, ""),
        ws_url(&sys.app, "?token=whk_nottherightone"),
    ] {
        match tokio_tungstenite::connect_async(url.as_str()).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{url}")
            }
            Err(other) => panic!("{url}: expected a 401, got {other}"),
            Ok(_) => panic!("{url}: upgraded without a valid token"),
        }
    }
    // A plain GET without the upgrade is a 400 in the API's JSON.
    let plain = sys.app.http.get(sys.app.url("/1/ws")).send().await.unwrap();
    assert_eq!(plain.status(), StatusCode::BAD_REQUEST);

    // ?token= works, for browsers.
    let (socket, _) =
        tokio_tungstenite::connect_async(ws_url(&sys.app, &format!("?token={ADMIN_TOKEN}")))
            .await
            .expect("the query token is accepted");
    let mut admin = Client::over(socket);
    admin.subscribe(&["ws-theirs"], "admins", false).await;

    // A tenant allowed ws-mine only.
    let caller = sys.app.caller(Some(ADMIN_TOKEN));
    let tenant = caller.tenant("acme", &["ws-mine"]).await;
    let mut acme = Client::connect(&sys.app, &tenant.token).await;

    let refused = acme
        .request(json!({"t": "topic", "a": "subscribe", "p": {"t": ["ws-theirs"]}}))
        .await;
    assert_refused(&refused, "may not read topic ws-theirs");
    let refused = acme
        .request(json!({"t": "notif", "a": "create", "p": {"t": "ws-theirs", "m": "x"}}))
        .await;
    assert_refused(&refused, "may not produce to topic ws-theirs");
    let refused = acme
        .request(json!({"t": "topic", "a": "create", "p": ["ws-elsewhere"]}))
        .await;
    assert_eq!(refused["s"], 1, "{refused}");

    let listed = acme.request(json!({"t": "topic", "a": "list"})).await;
    assert_eq!(listed["p"], json!([{"topic": "ws-mine", "partition": 0}]));
    // The admin's subscription is not the tenant's to see.
    assert_eq!(acme.health().await, Vec::<Value>::new());
    acme.subscribe(&["ws-mine"], "acme", false).await;
    let allowed = acme
        .request(json!({"t": "notif", "a": "create", "p": {"t": "ws-mine", "m": "ours", "receipt": true}}))
        .await;
    assert_eq!(allowed["s"], 0, "{allowed}");
    assert_eq!(acme.notifications(1).await[0]["p"], "ours");
    // The admin sees both connections' consumers.
    admin.health_until("both consumers", |c| c.len() == 2).await;

    acme.close().await;
    admin.close().await;
    sys.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_connection_is_closed_and_one_that_answers_pings_stays_open() {
    let sys = System::start_with(Db::Sqlite, |settings| {
        settings.bridge.ping_interval = Duration::from_millis(200);
        settings.bridge.idle_timeout = Duration::from_secs(2);
    })
    .await;

    // This client reads (so tungstenite answers the server's pings) for
    // three idle timeouts, and is still served.
    let mut lively = Client::connect(&sys.app, ADMIN_TOKEN).await;
    let mut pings = 0;
    let until = tokio::time::Instant::now() + Duration::from_secs(6);
    while let Ok(Some(message)) = tokio::time::timeout_at(until, lively.socket.next()).await {
        if let Message::Ping(_) = message.expect("the connection stays open") {
            pings += 1;
        }
    }
    assert!(pings > 0, "the server never pinged");
    assert_eq!(lively.health().await, Vec::<Value>::new());

    // This one subscribes, then never reads again, so it never answers a
    // ping: it is closed, and its consumer with it.
    sys.topic("ws-quiet", 1);
    let mut silent = Client::connect(&sys.app, ADMIN_TOKEN).await;
    silent.subscribe(&["ws-quiet"], "quiet", false).await;
    lively
        .health_until("the silent connection's consumer", |c| c.len() == 1)
        .await;
    lively
        .health_until("the silent connection closed", |c| c.is_empty())
        .await;
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match silent.socket.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the silent connection is still open");

    lively.close().await;
    sys.app.stop().await;
}
