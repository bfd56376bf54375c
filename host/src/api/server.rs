//! The REST API's HTTP/1.1 server: accepts connections and serves the router on
//! each, guarding itself against clients that are slow or too many.
//!
//! `axum::serve` has no timeouts and no limits, so this small loop stands in
//! for it. Each connection is watched by its own deadline: a request's head
//! must arrive within `header_read_timeout` of its first byte, and a connection
//! that neither carries a request nor moves a byte for `idle_timeout` is
//! closed. (hyper's own `header_read_timeout` starts when it begins waiting for
//! a head, so on a kept-alive connection it would also be the idle timeout; it
//! is set to both together, as a backstop.) Bodies are bounded by
//! `body_read_timeout` where handlers read them ([`super::json::read_body`]).
//! Beyond `max_connections` a new connection is answered 503 and closed;
//! beyond `max_concurrent_requests` a request is answered 503.
//!
//! It does not route or handle requests: that is the router's business.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header::RETRY_AFTER};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::json::BodyTimeout;
use crate::config::ServerSettings;

/// Serves `router` on `listener` until `shutdown` completes; then stops
/// accepting and waits for the requests in flight to finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerSettings,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let router = guarded(router, limits);
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    // Connections finish their requests, then close, once this is cancelled;
    // each holds a clone of `open` until it has, so the loop below knows
    // when all have. (hyper-util's GracefulShutdown cannot watch a
    // connection that may be upgraded to a WebSocket.)
    let closing = CancellationToken::new();
    let (open, mut all_closed) = tokio::sync::mpsc::channel::<()>(1);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout + limits.idle_timeout);
    tokio::pin!(shutdown);

    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) if is_connection_error(&error) => continue,
                Err(error) => {
                    // Most likely out of file descriptors: give connections time to close.
                    tracing::error!(%error, "Accepting a connection failed.");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        () = &mut shutdown => break,
                    }
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tokio::spawn(refuse(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new(limits));
        let service = {
            let activity = activity.clone();
            let router = router.clone();
            hyper::service::service_fn(move |request: Request<Incoming>| {
                let in_flight = activity.request_started();
                let router = router.clone();
                async move {
                    let response = router.oneshot(request).await;
                    drop(in_flight);
                    response
                }
            })
        };
        let io = TokioIo::new(Watched {
            stream,
            activity: activity.clone(),
        });
        // With upgrades: `GET /1/ws` hands the connection to the WebSocket
        // bridge, which then keeps it alive and times it out itself.
        let connection = http.serve_connection(io, service).with_upgrades();
        let closing = closing.clone();
        let open = open.clone();
        tokio::spawn(async move {
            tokio::pin!(connection);
            let served = tokio::select! {
                served = connection.as_mut() => Some(served),
                () = activity.expired() => None,
                () = closing.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    tokio::select! {
                        served = connection.as_mut() => Some(served),
                        () = activity.expired() => None,
                    }
                }
            };
            match served {
                Some(Err(error)) => tracing::debug!(%error, "Connection ended with an error."),
                Some(Ok(())) => {}
                None => tracing::debug!("Connection timed out; closed."),
            }
            drop(permit);
            drop(open);
        });
    }
    drop(listener);
    closing.cancel();
    drop(open);
    let _ = all_closed.recv().await;
    Ok(())
}

/// The router with the request-level guards: the body timeout its handlers
/// read, and the cap on requests in flight.
fn guarded(router: Router, limits: ServerSettings) -> Router {
    let requests = Arc::new(Semaphore::new(limits.max_concurrent_requests));
    router
        .layer(axum::middleware::from_fn(
            move |request: Request, next: Next| {
                let requests = requests.clone();
                async move {
                    match requests.try_acquire_owned() {
                        Ok(permit) => {
                            let response = next.run(request).await;
                            drop(permit);
                            response
                        }
                        Err(_) => overloaded("too many requests in flight"),
                    }
                }
            },
        ))
        .layer(axum::Extension(BodyTimeout(limits.body_read_timeout)))
}

/// The 503 of a request or connection over its limit. Not logged one by one:
/// under a flood that would be a second flood.
fn overloaded(what: &str) -> Response {
    let body = json!({
        "code": "unavailable",
        "message": format!("the server is busy ({what}); try again shortly"),
    });
    let mut response = (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// Answers a connection beyond `max_connections` with a 503 and closes it.
async fn refuse(mut stream: TcpStream) {
    let body = json!({
        "code": "unavailable",
        "message": "the server is busy (too many connections); try again shortly",
    })
    .to_string();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n",
        body.len()
    );
    // Wait (briefly) for the request's head first: a response that arrives
    // before the client has written its request is, to an HTTP client, an
    // unexpected message rather than an answer.
    let head_read = async {
        let mut seen = Vec::new();
        let mut chunk = [0u8; 4096];
        while seen.len() < 16 * 1024 && !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&chunk[..n]);
        }
        io::Result::Ok(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), head_read).await;
    let answer = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.shutdown().await?;
        // Read what the client sent before closing: closing with unread
        // bytes resets the connection, and the answer may be lost with it.
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        io::Result::Ok(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), answer).await;
}

fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Where a connection is between and within requests, which decides its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No request: waiting for one since the last byte moved.
    Idle { since: Instant },
    /// The first bytes of a request have come; its head must follow.
    Head { since: Instant },
    /// Requests in the handlers: their own limits apply, not the connection's.
    Busy { requests: usize },
}

impl Phase {
    fn deadline(self, limits: &ServerSettings) -> Option<Instant> {
        match self {
            Phase::Idle { since } => Some(since + limits.idle_timeout),
            Phase::Head { since } => Some(since + limits.header_read_timeout),
            Phase::Busy { .. } => None,
        }
    }

    fn read(self, now: Instant) -> Self {
        match self {
            Phase::Idle { .. } => Phase::Head { since: now },
            other => other,
        }
    }

    fn wrote(self, now: Instant) -> Self {
        match self {
            // A response still going out keeps the connection from idling.
            Phase::Idle { .. } => Phase::Idle { since: now },
            other => other,
        }
    }

    fn request_started(self) -> Self {
        match self {
            Phase::Busy { requests } => Phase::Busy {
                requests: requests + 1,
            },
            _ => Phase::Busy { requests: 1 },
        }
    }

    fn request_ended(self, now: Instant) -> Self {
        match self {
            Phase::Busy { requests } if requests > 1 => Phase::Busy {
                requests: requests - 1,
            },
            _ => Phase::Idle { since: now },
        }
    }
}

/// One connection's phase, shared by its socket, its requests and its watchdog.
struct Activity {
    phase: Mutex<Phase>,
    /// Woken when the phase changes kind; a later `since` needs no wake-up,
    /// the watchdog finds it when its sleep ends.
    changed: Notify,
    limits: ServerSettings,
}

impl Activity {
    fn new(limits: ServerSettings) -> Self {
        Self {
            phase: Mutex::new(Phase::Idle {
                since: Instant::now(),
            }),
            changed: Notify::new(),
            limits,
        }
    }

    fn update(&self, change: impl FnOnce(Phase) -> Phase) {
        let mut phase = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        let before = *phase;
        *phase = change(before);
        if std::mem::discriminant(&before) != std::mem::discriminant(&*phase) {
            self.changed.notify_waiters();
        }
    }

    fn deadline(&self) -> Option<Instant> {
        let phase = *self.phase.lock().unwrap_or_else(|e| e.into_inner());
        phase.deadline(&self.limits)
    }

    fn request_started(self: &Arc<Self>) -> InFlight {
        self.update(Phase::request_started);
        InFlight(self.clone())
    }

    /// Completes when the connection has been past its deadline.
    async fn expired(&self) {
        loop {
            // Registered before the phase is read, so no change is missed.
            let changed = self.changed.notified();
            match self.deadline() {
                None => changed.await,
                Some(deadline) if deadline <= Instant::now() => return,
                Some(deadline) => tokio::select! {
                    () = tokio::time::sleep_until(deadline) => {}
                    () = changed => {}
                },
            }
        }
    }
}

/// A request in the handlers; its drop (the response is ready) ends it.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.update(|phase| phase.request_ended(Instant::now()));
    }
}

/// The socket, reporting the bytes it moves to the connection's [`Activity`].
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.update(|phase| phase.read(Instant::now()));
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.update(|phase| phase.wrote(Instant::now()));
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.update(|phase| phase.wrote(Instant::now()));
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ServerSettings {
        ServerSettings {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            ..ServerSettings::default()
        }
    }

    #[test]
    fn a_silent_connection_has_the_idle_deadline_and_a_started_head_the_header_deadline() {
        let t0 = Instant::now();
        let idle = Phase::Idle { since: t0 };
        assert_eq!(idle.deadline(&limits()), Some(t0 + Duration::from_secs(60)));
        let t1 = t0 + Duration::from_secs(5);
        let head = idle.read(t1);
        assert_eq!(head.deadline(&limits()), Some(t1 + Duration::from_secs(10)));
        // More bytes of the same head do not extend it.
        assert_eq!(head.read(t1 + Duration::from_secs(9)), head);
    }

    #[test]
    fn requests_in_the_handlers_have_no_connection_deadline_until_the_last_ends() {
        let t0 = Instant::now();
        let busy = Phase::Head { since: t0 }.request_started();
        assert_eq!(busy.deadline(&limits()), None);
        let two = busy.request_started();
        let t1 = t0 + Duration::from_secs(100);
        assert_eq!(two.request_ended(t1), busy);
        assert_eq!(busy.read(t1), busy, "body bytes belong to the request");
        let idle = busy.request_ended(t1);
        assert_eq!(idle, Phase::Idle { since: t1 });
        let t2 = t1 + Duration::from_secs(30);
        assert_eq!(idle.wrote(t2), Phase::Idle { since: t2 });
    }

    #[tokio::test(start_paused = true)]
    async fn the_watchdog_fires_at_the_deadline_and_not_while_a_request_runs() {
        let activity = Arc::new(Activity::new(limits()));
        let in_flight = activity.request_started();
        let watchdog = tokio::spawn({
            let activity = activity.clone();
            async move { activity.expired().await }
        });
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert!(!watchdog.is_finished(), "a running request is not idle");
        drop(in_flight);
        tokio::time::sleep(Duration::from_secs(59)).await;
        assert!(!watchdog.is_finished(), "idle for less than 60 s");
        tokio::time::sleep(Duration::from_secs(2)).await;
        watchdog.await.unwrap();
    }
}
