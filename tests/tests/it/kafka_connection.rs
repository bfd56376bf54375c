//! Kafka connectivity and readiness: every client over TLS (a CA file, a
//! client certificate, hostname verification) and SASL (PLAIN, SCRAM-SHA-256,
//! SCRAM-SHA-512), against tansu behind a front ([`BrokerFront`]) that it
//! advertises, so that clients come back through the front after bootstrap
//! too; the binary reading those settings from its flags and the password
//! from its environment; `/readyz` with the broker down and back.
//!
//! Why a front: neither broker here speaks TLS or SASL as librdkafka needs.
//! The mock cluster has neither; tansu 0.6 builds a TLS acceptor it never
//! uses, offers no PLAIN, and its in-memory storage keeps no SCRAM
//! credentials. So the front is the TLS listener (rustls) and the SASL
//! server (PLAIN and SCRAM per RFC 5802, written for the tests) a managed
//! cluster would be, and tansu is the broker behind it.
//!
//! [`BrokerFront`]: crate::helpers::BrokerFront

use std::time::Duration;

use rdkafka::producer::FutureProducer;
use reqwest::StatusCode;
use serde_json::{Value, json};
use wasmhook::kafka::{
    BrokerHealth, ClientIdentity, Ensured, KafkaConnection, PemFile, PemKind, SaslMechanism,
    SaslSettings, SecurityProtocol, TlsSettings, TopicLayout, Topics,
};

use crate::helpers::{
    ADMIN_TOKEN, BinaryApp, Db, Front, FrontedTansu, Receiver, SaslAccounts, System, TestApp,
    TestCa, TestDb, produce, subscription, test_settings,
};

const WAIT: Duration = Duration::from_secs(60);

/// Creates `topic` through `connection`: the admin client goes over it too.
async fn create_topic(connection: &KafkaConnection, topic: &str) {
    let created = Topics::new(connection, Duration::from_secs(10))
        .unwrap()
        .ensure(topic, TopicLayout::new(1, 1).unwrap())
        .await
        .expect("the topic is created over this connection");
    assert_eq!(created, Ensured::Created);
}

fn producer_over(connection: &KafkaConnection) -> FutureProducer {
    connection
        .client_config("test-producer")
        .set("acks", "all")
        .create()
        .expect("a producer")
}

async fn app_over(db: &TestDb, connection: &KafkaConnection) -> TestApp {
    let mut settings = test_settings(&db.url, connection.brokers());
    settings.kafka = connection.clone();
    TestApp::spawn(settings).await
}

/// Delivers three messages of a fresh topic through `connection`, end to end.
async fn delivers_end_to_end(app: &TestApp, connection: &KafkaConnection, receiver: &Receiver) {
    create_topic(connection, "payments").await;
    app.subscribe(&subscription("payments", &receiver.url, &["payments"]))
        .await;
    let values: Vec<_> = (0..3).map(|n| json!({"n": n})).collect();
    produce(&producer_over(connection), "payments", 0, &values).await;
    let delivered = receiver.wait_for_delivered(3, WAIT).await;
    let numbers: Vec<i64> = delivered
        .iter()
        .map(|m| m["value"]["n"].as_i64().unwrap())
        .collect();
    assert_eq!(numbers, vec![0, 1, 2]);
}

async fn readyz(app: &TestApp) -> (StatusCode, Value) {
    let response = reqwest::get(app.url("/readyz")).await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

/// Polls `/readyz` until `check` holds, for at most 30 s.
async fn wait_for_readyz(app: &TestApp, check: impl Fn(StatusCode, &Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = readyz(app).await;
        if check(status, &body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz never got there within 30 s; last: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn ca_of(ca: &TestCa) -> Option<PemFile> {
    Some(PemFile::read(&ca.cert_path, PemKind::Certificates).unwrap())
}

fn sasl(mechanism: SaslMechanism, user: &str, password: &str) -> Option<SaslSettings> {
    Some(SaslSettings {
        mechanism,
        username: user.into(),
        password: wasmhook::secrets::HiddenText(password.into()),
    })
}

// ---- TLS ----

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_tls_with_a_ca_file_a_subscription_delivers_end_to_end() {
    let broker = FrontedTansu::start(Front::tls()).await;
    let connection =
        KafkaConnection::secured(&broker.front.address, None, broker.tls(), None).unwrap();
    assert_eq!(connection.protocol(), SecurityProtocol::Ssl);
    let db = TestDb::create(Db::Sqlite).await;
    let receiver = Receiver::start().await;
    let app = app_over(&db, &connection).await;
    let before = broker.front.handshakes();

    delivers_end_to_end(&app, &connection, &receiver).await;

    assert_eq!(
        readyz(&app).await,
        (StatusCode::OK, json!({"registry": "ok", "broker": "ok"}))
    );
    // The admin, the producer, the consumer and the health client each shook hands.
    let handshakes = broker.front.handshakes() - before;
    assert!(handshakes >= 4, "{handshakes} TLS handshakes");
    // And the listener speaks nothing but TLS.
    let plaintext = BrokerHealth::new(&KafkaConnection::new(&broker.front.address)).unwrap();
    assert!(plaintext.check(Duration::from_secs(2)).await.is_err());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_certificate_from_another_ca_is_refused_and_readyz_says_why() {
    let broker = FrontedTansu::start(Front::tls()).await;
    let stranger = TestCa::generate("stranger");
    let tls = TlsSettings {
        ca: ca_of(&stranger),
        ..TlsSettings::default()
    };
    let connection = KafkaConnection::secured(&broker.front.address, None, tls, None).unwrap();
    let db = TestDb::create(Db::Sqlite).await;
    let app = app_over(&db, &connection).await;
    let before = broker.front.handshakes();

    let body = wait_for_readyz(&app, |status, body| {
        status == StatusCode::SERVICE_UNAVAILABLE
            && body["broker"]
                .as_str()
                .is_some_and(|b| b.contains("certificate verify failed"))
    })
    .await;
    assert_eq!(body["registry"], "ok");
    assert!(
        body["broker"]
            .as_str()
            .unwrap()
            .starts_with("unreachable: "),
        "{body}"
    );
    // A subscription needs its dead-letter topic: the brokers cannot be reached.
    let (status, body) = app
        .post(
            "/1/Subscription",
            &subscription("orders", "http://example.com/hook", &["orders"]),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(broker.front.handshakes(), before);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_certificate_for_another_host_name_is_refused_unless_hostname_verification_is_off() {
    let broker = FrontedTansu::start(Front {
        tls_names: Some(vec!["broker.example"]),
        ..Front::tls()
    })
    .await;
    let verified =
        KafkaConnection::secured(&broker.front.address, None, broker.tls(), None).unwrap();
    let down = BrokerHealth::new(&verified)
        .unwrap()
        .check(Duration::from_secs(3))
        .await
        .unwrap_err();
    assert!(down.reason().contains("certificate"), "{down}");

    let unverified = TlsSettings {
        verify_hostname: false,
        ..broker.tls()
    };
    let connection =
        KafkaConnection::secured(&broker.front.address, None, unverified, None).unwrap();
    BrokerHealth::new(&connection)
        .unwrap()
        .check(Duration::from_secs(10))
        .await
        .expect("the chain is still trusted; only the name is not checked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_mutual_tls_only_a_client_with_a_certificate_from_the_ca_gets_in() {
    let broker = FrontedTansu::start(Front {
        client_auth: true,
        ..Front::tls()
    })
    .await;
    let before = broker.front.handshakes();
    let anonymous =
        KafkaConnection::secured(&broker.front.address, None, broker.tls(), None).unwrap();
    assert!(
        BrokerHealth::new(&anonymous)
            .unwrap()
            .check(Duration::from_secs(3))
            .await
            .is_err()
    );
    assert_eq!(broker.front.handshakes(), before);

    let client = broker.ca.issue("wasmhook", &["wasmhook"]);
    let tls = TlsSettings {
        identity: Some(ClientIdentity {
            certificate: PemFile::read(&client.cert_path, PemKind::Certificates).unwrap(),
            key: PemFile::read(&client.key_path, PemKind::PrivateKey).unwrap(),
            key_password: None,
        }),
        ..broker.tls()
    };
    let connection = KafkaConnection::secured(&broker.front.address, None, tls, None).unwrap();
    let db = TestDb::create(Db::Sqlite).await;
    let receiver = Receiver::start().await;
    let app = app_over(&db, &connection).await;
    delivers_end_to_end(&app, &connection, &receiver).await;
    app.stop().await;
}

// ---- SASL ----

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_sasl_ssl_with_plain_a_subscription_delivers_end_to_end() {
    let broker = FrontedTansu::start(Front {
        sasl: Some(SaslAccounts::new(
            &[SaslMechanism::Plain],
            &[("wasmhook", "s3cret")],
        )),
        ..Front::tls()
    })
    .await;
    // Without credentials the front answers nothing but the handshake.
    let tls_only =
        KafkaConnection::secured(&broker.front.address, None, broker.tls(), None).unwrap();
    assert!(
        BrokerHealth::new(&tls_only)
            .unwrap()
            .check(Duration::from_secs(2))
            .await
            .is_err(),
        "SASL is required here"
    );

    let connection = KafkaConnection::secured(
        &broker.front.address,
        None,
        broker.tls(),
        sasl(SaslMechanism::Plain, "wasmhook", "s3cret"),
    )
    .unwrap();
    assert_eq!(connection.protocol(), SecurityProtocol::SaslSsl);
    let db = TestDb::create(Db::Sqlite).await;
    let receiver = Receiver::start().await;
    let app = app_over(&db, &connection).await;
    let before = broker.front.logins();
    delivers_end_to_end(&app, &connection, &receiver).await;
    assert_eq!(
        readyz(&app).await,
        (StatusCode::OK, json!({"registry": "ok", "broker": "ok"}))
    );
    let logins = broker.front.logins() - before;
    assert!(logins >= 4, "{logins} SASL logins");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_sasl_ssl_with_scram_sha_512_a_subscription_delivers_end_to_end() {
    let broker = FrontedTansu::start(Front {
        sasl: Some(SaslAccounts::new(
            &[SaslMechanism::ScramSha512],
            &[("wasmhook", "s3cret")],
        )),
        ..Front::tls()
    })
    .await;
    let connection = KafkaConnection::secured(
        &broker.front.address,
        None,
        broker.tls(),
        sasl(SaslMechanism::ScramSha512, "wasmhook", "s3cret"),
    )
    .unwrap();
    let db = TestDb::create(Db::Sqlite).await;
    let receiver = Receiver::start().await;
    let app = app_over(&db, &connection).await;
    let before = broker.front.logins();
    delivers_end_to_end(&app, &connection, &receiver).await;
    assert!(broker.front.logins() - before >= 4);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_sasl_plaintext_scram_sha_256_logs_in_and_a_wrong_password_is_refused() {
    let broker = FrontedTansu::start(Front {
        tls_names: None,
        client_auth: false,
        sasl: Some(SaslAccounts::new(
            &[SaslMechanism::ScramSha256],
            &[("wasmhook", "s3cret")],
        )),
    })
    .await;
    let right = KafkaConnection::secured(
        &broker.front.address,
        Some(SecurityProtocol::SaslPlaintext),
        TlsSettings::default(),
        sasl(SaslMechanism::ScramSha256, "wasmhook", "s3cret"),
    )
    .unwrap();
    let before = broker.front.logins();
    BrokerHealth::new(&right)
        .unwrap()
        .check(Duration::from_secs(10))
        .await
        .expect("the right password logs in");
    assert!(broker.front.logins() > before);

    let wrong = KafkaConnection::secured(
        &broker.front.address,
        Some(SecurityProtocol::SaslPlaintext),
        TlsSettings::default(),
        sasl(SaslMechanism::ScramSha256, "wasmhook", "guess"),
    )
    .unwrap();
    let db = TestDb::create(Db::Sqlite).await;
    let app = app_over(&db, &wrong).await;
    let body = wait_for_readyz(&app, |status, body| {
        status == StatusCode::SERVICE_UNAVAILABLE
            && body["broker"]
                .as_str()
                .is_some_and(|b| b.contains("Authentication failed"))
    })
    .await;
    assert_eq!(body["registry"], "ok");
    let broker_state = body["broker"].as_str().unwrap();
    assert!(broker_state.starts_with("unreachable: "), "{body}");
    assert!(!broker_state.contains("guess"), "{body}");
    app.stop().await;
}

// ---- The binary: flags and environment ----

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_binary_takes_tls_and_sasl_from_its_flags_and_the_password_from_its_environment() {
    let broker = FrontedTansu::start(Front {
        sasl: Some(SaslAccounts::new(
            &[SaslMechanism::ScramSha512],
            &[("wasmhook", "s3cret"), ("test", "test")],
        )),
        ..Front::tls()
    })
    .await;
    let db = TestDb::create(Db::Sqlite).await;
    let receiver = Receiver::start().await;
    let ca = broker.ca.cert_path.to_string_lossy().into_owned();
    let app = BinaryApp::spawn_with_env(
        &db.url,
        &broker.front.address,
        &[
            "--kafka-ca-file",
            &ca,
            "--kafka-sasl-mechanism",
            "SCRAM-SHA-512",
            "--kafka-sasl-username",
            "wasmhook",
            "--kafka-option",
            "socket.keepalive.enable=true",
        ],
        &[("WASMHOOK_KAFKA_PASSWORD", "s3cret")],
    )
    .await;
    let caller = app.caller();
    let (status, body) = caller.get("/readyz").await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"registry": "ok", "broker": "ok"}))
    );

    // The binary's own clients (admin, consumer) deliver over SASL_SSL.
    let connection = KafkaConnection::secured(
        &broker.front.address,
        None,
        broker.tls(),
        sasl(SaslMechanism::ScramSha512, "test", "test"),
    )
    .unwrap();
    create_topic(&connection, "orders").await;
    let (status, body) = caller
        .post(
            "/1/Subscription",
            &subscription("orders", &receiver.url, &["orders"]),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    produce(&producer_over(&connection), "orders", 0, &[json!({"n": 1})]).await;
    let delivered = receiver.wait_for_delivered(1, WAIT).await;
    assert_eq!(delivered[0]["value"], json!({"n": 1}));
    app.terminate().await;
}

/// Runs the binary's serving mode to its exit; its stderr.
async fn failed_start(env: &[(&str, &str)], extra: &[&str]) -> String {
    let db = tempfile::tempdir().unwrap();
    let database_url = format!("sqlite://{}", db.path().join("w.db").display());
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(crate::helpers::binary_path())
            .arg("wasmhook")
            .args(["--listen", "127.0.0.1:0", "--database-url", &database_url])
            .args([
                "--kafka-brokers",
                "127.0.0.1:1",
                "--admin-token",
                ADMIN_TOKEN,
            ])
            .args(extra)
            .envs(env.iter().copied())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("wasmhook stops within 30 s")
    .unwrap();
    assert!(!output.status.success(), "it must refuse to start");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_binary_refuses_to_start_naming_the_flag_and_the_path_of_a_missing_file() {
    let stderr = failed_start(&[], &["--kafka-ca-file", "/nonexistent/ca.pem"]).await;
    assert!(stderr.contains("--kafka-ca-file"), "{stderr}");
    assert!(stderr.contains("/nonexistent/ca.pem"), "{stderr}");

    let stderr = failed_start(
        &[("WASMHOOK_KAFKA_PASSWORD", "hunter2")],
        &["--kafka-sasl-mechanism", "SCRAM-SHA-256"],
    )
    .await;
    // clap: the mechanism needs a user. The password is never echoed.
    assert!(stderr.contains("--kafka-sasl-username"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");

    let stderr = failed_start(&[], &["--kafka-option", "no.such.property=1"]).await;
    assert!(stderr.contains("no.such.property"), "{stderr}");
}

// ---- Readiness ----

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readyz_names_the_broker_while_it_is_down_and_is_ok_once_it_is_back() {
    let sys = System::start(Db::Sqlite).await;
    assert_eq!(
        readyz(&sys.app).await,
        (StatusCode::OK, json!({"registry": "ok", "broker": "ok"}))
    );

    sys.broker.broker_down(1).unwrap();
    let body = wait_for_readyz(&sys.app, |status, _| {
        status == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    assert_eq!(body["registry"], "ok", "{body}");
    let broker = body["broker"].as_str().unwrap();
    assert!(broker.starts_with("unreachable: "), "{body}");

    sys.broker.broker_up(1).unwrap();
    let body = wait_for_readyz(&sys.app, |status, _| status == StatusCode::OK).await;
    assert_eq!(body, json!({"registry": "ok", "broker": "ok"}));
    sys.app.stop().await;
}
