//! The status page at `/ui`, in a real browser: Debian's headless Chromium
//! driven over WebDriver by its chromedriver (`apt-get install -y chromium
//! chromium-driver`; the test fails without them, it does not skip). It
//! types tokens in as a person would, waits on the DOM for what deliveries
//! should show, flips the admin switch through the page and keeps a
//! screenshot in `$CARGO_TARGET_TMPDIR/ui/status.png`. Also, without a
//! browser, `GET /1/Subscription/{id}/Series` that the plots read.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep};

use crate::delivery::{WAIT, values};
use crate::helpers::{ADMIN_TOKEN, Caller, Db, System, produce, subscription};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// A well-formed token that no one was given.
const UNKNOWN_TOKEN: &str = "whk_testadmin0000_0123456789abcdefghijklmnoX";
const POLL: Duration = Duration::from_millis(100);

/// Chromium under chromedriver, on a free loopback port; both end with it.
struct Browser {
    client: Client,
    driver: Child,
}

impl Browser {
    async fn start() -> Self {
        for program in [CHROMEDRIVER, CHROMIUM] {
            assert!(
                Path::new(program).exists(),
                "{program} is missing: the status page is tested in headless Chromium; \
                 install it with `apt-get install -y chromium chromium-driver`"
            );
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--window-size=1280,1500",
                ],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let deadline = Instant::now() + WAIT;
        // chromedriver listens a moment after it starts.
        let client = loop {
            match ClientBuilder::new(connector.clone())
                .capabilities(capabilities.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(client) => break client,
                Err(error) => {
                    assert!(
                        Instant::now() < deadline,
                        "no browser session from chromedriver on port {port}: {error}"
                    );
                    sleep(POLL).await;
                }
            }
        };
        Self { client, driver }
    }

    async fn close(mut self) {
        self.client.close().await.expect("the browser closes");
        let _ = self.driver.kill().await;
    }

    /// Runs `script` (a function body) until `ready` holds for what it
    /// returns, or fails with what the page shows.
    async fn wait_until(&self, what: &str, script: &str, ready: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let value = self
                .client
                .execute(script, vec![])
                .await
                .expect("the script runs");
            if ready(&value) {
                return value;
            }
            if Instant::now() >= deadline {
                let text = self
                    .client
                    .execute("return document.body.innerText", vec![])
                    .await
                    .unwrap_or_default();
                panic!("{what} never showed: last {value}; the page reads:\n{text}");
            }
            sleep(POLL).await;
        }
    }

    async fn type_into(&self, selector: &str, text: &str) {
        let field = self.client.find(Locator::Css(selector)).await.unwrap();
        field.clear().await.unwrap();
        field.send_keys(text).await.unwrap();
    }

    async fn click(&self, selector: &str) {
        self.client
            .find(Locator::Css(selector))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
    }

    async fn displayed(&self, selector: &str) -> bool {
        self.client
            .find(Locator::Css(selector))
            .await
            .unwrap()
            .is_displayed()
            .await
            .unwrap()
    }

    async fn open_with_token(&self, token: &str) {
        self.wait_until(
            "the token form",
            "return !!document.querySelector('#login:not([hidden]) #token')",
            |v| v == true,
        )
        .await;
        self.type_into("#token", token).await;
        self.click("#login button").await;
    }
}

/// What the page shows of each subscription, by id.
const CARDS: &str = r#"
    return [...document.querySelectorAll('article.subscription')].map((card) => {
      const figure = (name) => card.querySelector('.' + name).textContent;
      const canvas = card.querySelector('.rate-chart');
      // Pixels in the delivered line's colour: the plot is drawn, with data.
      const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
      let green = 0;
      for (let i = 0; i < data.length; i += 4) {
        if (Math.abs(data[i] - 47) < 12 && Math.abs(data[i + 1] - 158) < 12 && Math.abs(data[i + 2] - 94) < 12 && data[i + 3] > 200) green += 1;
      }
      return {
        id: card.dataset.id,
        name: figure('name'),
        status: figure('status'),
        delivered: figure('delivered'),
        lag: figure('lag'),
        consumer: figure('consumer'),
        activity: card.querySelectorAll('.activity td.ok').length,
        rate_points: Number(canvas.dataset.points || 0),
        latency_points: Number(card.querySelector('.latency-chart').dataset.points || 0),
        green,
      };
    });"#;

fn card<'a>(cards: &'a Value, id: &str) -> Option<&'a Value> {
    cards.as_array()?.iter().find(|card| card["id"] == id)
}

const PLATFORM: &str = "return {status: document.querySelector('#platform-status').textContent, \
     message: document.querySelector('#platform-message').textContent, \
     result: document.querySelector('#switch-result').textContent, \
     button: document.querySelector('#switch-button').textContent}";

async fn platform(admin: &Caller) -> Value {
    let (status, body) = admin.get("/1/EventNotificationAdmin").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// Saves the PNG and checks it is one, of the window's size, with content.
fn keep_screenshot(png: &[u8]) -> PathBuf {
    let directory = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui");
    std::fs::create_dir_all(&directory).unwrap();
    let path = directory.join("status.png");
    std::fs::write(&path, png).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let dimension = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
    let (width, height) = (dimension(16), dimension(20));
    assert!(
        width >= 1000 && height >= 800,
        "a {width}×{height} screenshot"
    );
    // A blank page compresses to a few kilobytes.
    assert!(png.len() > 30_000, "a {} byte screenshot", png.len());
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_status_page_shows_each_token_its_own_and_switches_the_platform() {
    let sys = System::start(Db::Sqlite).await;
    sys.topic("shop", 1);
    sys.topic("acme.orders", 1);
    let admin = sys.app.caller(Some(ADMIN_TOKEN));
    let acme = admin.tenant("acme", &["acme.*"]).await;
    let url = &sys.receiver.url;
    let shop = sys
        .app
        .subscribe(&subscription("shop", url, &["shop"]))
        .await;
    let (status, created) = sys
        .app
        .caller(Some(&acme.token))
        .post(
            "/1/Subscription",
            &subscription("acme-orders", url, &["acme.orders"]),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let orders = created["id"].as_str().unwrap().to_string();
    produce(&sys.producer, "shop", 0, &values(0..5)).await;
    produce(&sys.producer, "acme.orders", 0, &values(0..3)).await;
    sys.receiver.wait_for_delivered(8, WAIT).await;

    // The page and its files need no token, and load nothing from elsewhere.
    let anonymous = reqwest::Client::new();
    let page = anonymous.get(sys.app.url("/ui")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let policy = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(policy.contains("default-src 'self'"), "{policy}");
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    for (asset, kind) in [("app.js", "text/javascript"), ("style.css", "text/css")] {
        let answer = anonymous
            .get(sys.app.url(&format!("/ui/{asset}")))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::OK, "{asset}");
        assert!(
            answer.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with(kind)
        );
    }
    let missing = anonymous
        .get(sys.app.url("/ui/nothing.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);

    let browser = Browser::start().await;
    browser.client.goto(&sys.app.url("/ui")).await.unwrap();
    browser.open_with_token(ADMIN_TOKEN).await;

    // The admin sees both subscriptions, their counts, consumers and plots.
    let cards = browser
        .wait_until(
            "both subscriptions with their deliveries plotted",
            CARDS,
            |cards| {
                let shown = |id: &str, delivered: &str| {
                    card(cards, id).is_some_and(|c| {
                        c["delivered"] == delivered
                            && c["rate_points"].as_i64() > Some(0)
                            && c["latency_points"].as_i64() > Some(0)
                            && c["green"].as_i64() > Some(0)
                            && c["activity"].as_i64() > Some(0)
                            && c["lag"]
                                .as_str()
                                .is_some_and(|lag| lag.parse::<i64>().is_ok())
                    })
                };
                shown(&shop, "5") && shown(&orders, "3")
            },
        )
        .await;
    let shown = card(&cards, &shop).unwrap();
    assert_eq!(shown["name"], "shop", "{cards}");
    assert_eq!(shown["status"], "healthy", "{cards}");
    assert_eq!(shown["consumer"], "running", "{cards}");
    assert!(
        browser.displayed("#switch").await,
        "the admin has the switch"
    );
    let png = browser.client.screenshot().await.unwrap();
    let kept = keep_screenshot(&png);
    println!("screenshot: {}", kept.display());

    // Offline with a message, through the page; the API agrees.
    let message = "Maintenance until 10:00 UTC";
    browser.type_into("#offline-message", message).await;
    browser.click("#switch-button").await;
    browser
        .wait_until("the platform offline", PLATFORM, |p| {
            p["status"] == "offline" && p["message"] == message && p["button"] == "Bring online"
        })
        .await;
    let answer = platform(&admin).await;
    assert_eq!(answer["status"], "offline", "{answer}");
    assert_eq!(answer["offline_message"], message, "{answer}");
    browser
        .wait_until("the subscriptions inactive", CARDS, |cards| {
            card(cards, &shop).is_some_and(|c| c["status"] == "inactive")
        })
        .await;
    browser.click("#switch-button").await;
    browser
        .wait_until("the platform online", PLATFORM, |p| {
            p["status"] == "online" && p["result"] == "Switched online."
        })
        .await;
    assert_eq!(platform(&admin).await["status"], "online");

    // A tenant's token, given in the fragment: its own subscription only,
    // no switch, and the token gone from the address.
    browser.client.goto("about:blank").await.unwrap();
    let address = sys.app.url(&format!("/ui#token={}", acme.token));
    browser.client.goto(&address).await.unwrap();
    let cards = browser
        .wait_until("the tenant's subscription alone", CARDS, |cards| {
            cards.as_array().is_some_and(|all| all.len() == 1)
                && card(cards, &orders).is_some_and(|c| c["delivered"] == "3")
        })
        .await;
    assert_eq!(card(&cards, &orders).unwrap()["name"], "acme-orders");
    assert!(
        !browser.displayed("#switch").await,
        "a tenant has no switch"
    );
    assert!(browser.displayed("#switch-note").await);
    let now_at = browser.client.current_url().await.unwrap();
    assert_eq!(now_at.fragment(), None, "the token is left in {now_at}");

    // A token no one was given: an error, and no dashboard.
    browser.click("#logout").await;
    browser.open_with_token(UNKNOWN_TOKEN).await;
    let shown = browser
        .wait_until(
            "the refusal",
            "const error = document.querySelector('#error'); \
             return {error: error.hidden ? '' : error.textContent, \
                     dashboard: !document.querySelector('#dashboard').hidden}",
            |v| v["error"].as_str().is_some_and(|e| !e.is_empty()),
        )
        .await;
    assert!(
        shown["error"].as_str().unwrap().contains("refused"),
        "{shown}"
    );
    assert_eq!(shown["dashboard"], false, "{shown}");
    assert!(browser.displayed("#login").await);

    browser.close().await;
    sys.app.stop().await;
}

/// Sums `field` over a series' points.
fn total(series: &Value, field: &str) -> i64 {
    series["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[field].as_i64().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_series_shows_what_this_host_delivered_to_whoever_may_see_the_subscription() {
    let sys = System::start(Db::Sqlite).await;
    sys.topic("acme.orders", 1);
    sys.topic("shop", 1);
    let admin = sys.app.caller(Some(ADMIN_TOKEN));
    let acme = admin.tenant("acme", &["acme.*"]).await;
    let globex = admin.tenant("globex", &["globex.*"]).await;
    let (as_acme, as_globex) = (
        sys.app.caller(Some(&acme.token)),
        sys.app.caller(Some(&globex.token)),
    );
    let mut body = subscription("orders", &sys.receiver.url, &["acme.orders"]);
    body["source"][0]["jmes_filters"] = json!(["n < `3`"]);
    let (status, created) = as_acme.post("/1/Subscription", &body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let orders = created["id"].as_str().unwrap().to_string();
    let shop = sys
        .app
        .subscribe(&subscription("shop", &sys.receiver.url, &["shop"]))
        .await;
    produce(&sys.producer, "acme.orders", 0, &values(0..5)).await;
    sys.receiver.wait_for_delivered(3, WAIT).await;

    let path = format!("/1/Subscription/{orders}/Series");
    let deadline = Instant::now() + WAIT;
    let series = loop {
        let (status, series) = as_acme.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{series}");
        if total(&series, "delivered") == 3 && total(&series, "filtered") == 2 {
            break series;
        }
        assert!(
            Instant::now() < deadline,
            "the series never showed the deliveries: {series}"
        );
        sleep(POLL).await;
    };
    assert_eq!(series["id"], orders.as_str());
    assert_eq!(series["kind"], "WebhookSeries");
    assert_eq!(series["bucket_seconds"], 10);
    assert_eq!(series["window_seconds"], 900);
    let consumer = sys.app.status_of(&orders).await["consumer"].clone();
    assert_eq!(
        series["host"], consumer["host"],
        "the answering host is named"
    );
    assert_eq!(total(&series, "dead_lettered"), 0);
    assert_eq!(total(&series, "latency_samples"), 3, "{series}");
    let points = series["points"].as_array().unwrap();
    assert_eq!(points.len(), 90);
    let starts: Vec<chrono::DateTime<chrono::Utc>> = points
        .iter()
        .map(|p| p["start"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(starts.windows(2).all(|w| (w[1] - w[0]).num_seconds() == 10));
    let newest = chrono::Utc::now() - *starts.last().unwrap();
    assert!(
        (0..=11).contains(&newest.num_seconds()),
        "the last bucket is now's"
    );
    for point in points
        .iter()
        .filter(|p| p["latency_samples"].as_i64() > Some(0))
    {
        let (mean, max) = (
            point["latency_mean_ms"].as_f64().unwrap(),
            point["latency_max_ms"].as_f64().unwrap(),
        );
        assert!(0.0 <= mean && mean <= max && max < 30_000.0, "{point}");
    }

    // Who may see it: as the subscription itself.
    let (status, _) = admin.get(&path).await;
    assert_eq!(status, StatusCode::OK, "the admin sees every tenant's");
    let (status, body) = as_globex.get(&path).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = as_acme.get(&format!("/1/Subscription/{shop}/Series")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = sys.app.caller(None).get(&path).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = admin
        .get(&format!("/1/Subscription/{}/Series", uuid::Uuid::new_v4()))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    // Nothing delivered yet: the whole window, empty.
    let (status, quiet) = admin.get(&format!("/1/Subscription/{shop}/Series")).await;
    assert_eq!(status, StatusCode::OK, "{quiet}");
    assert_eq!(quiet["points"].as_array().unwrap().len(), 90);
    assert_eq!(total(&quiet, "delivered"), 0);
    sys.app.stop().await;
}
