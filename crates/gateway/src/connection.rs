//! One client connection: what its watchdog knows (`ConnActivity`), its byte stream
//! (`WatchedIo`: reads watched, ambiguous framing seen), the watchdog (`watch_connection`), and
//! plain HTTP/1 connections served in sessions that park when idle (`serve_h1_parked`), with
//! WebSocket upgrades handed over by hand (`ManualUpgrade`).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;

use crate::Gateway;

/// A client connection's byte stream after an upgrade (a WebSocket), whatever is underneath.
pub trait UpgradedStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> UpgradedStream for T {}

/// The connection of an upgrade request on a plain HTTP/1 connection (served by
/// [`serve_h1_parked`], which hyper cannot upgrade itself): sent once the `101` is written.
/// A request extension.
#[derive(Clone)]
pub struct ManualUpgrade(Arc<std::sync::Mutex<Option<UpgradeReceiver>>>);

type UpgradeReceiver = tokio::sync::oneshot::Receiver<Box<dyn UpgradedStream>>;

impl ManualUpgrade {
    /// The connection once upgraded (once only).
    pub fn take(&self) -> Option<UpgradeReceiver> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}

/// What the watchdog of one connection knows: when it was accepted, how many requests it has
/// in flight (their responses included, until the last byte), and when the last one ended.
pub(crate) struct ConnActivity {
    accepted: tokio::time::Instant,
    in_flight: AtomicUsize,
    /// Requests that have started on this connection.
    started: AtomicUsize,
    /// When the last request ended, in milliseconds after `accepted`.
    last_end_ms: AtomicU64,
    /// When the bytes of a request head began to arrive on an idle connection, in milliseconds
    /// after `accepted` plus one (0: none arriving).
    head_started_ms: AtomicU64,
    /// The client speaks HTTP/2 (its frames, pings included, are not request heads).
    h2: AtomicBool,
    /// The head just read carried both `Content-Length` and `Transfer-Encoding` (hyper reads
    /// such a request as chunked and drops `Content-Length`, so the handler cannot see it).
    ambiguous: AtomicBool,
    /// Where the connection goes when an upgrade request on a parked-capable connection is
    /// answered `101`.
    upgrade: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<Box<dyn UpgradedStream>>>>,
    /// Told when a request ends (the session loop then plans its parking).
    ended: tokio::sync::Notify,
    /// Served by `serve_h1_parked`'s sessions: upgrades are handed over by hand.
    manual_upgrades: AtomicBool,
}

impl ConnActivity {
    pub(crate) fn new() -> ConnActivity {
        ConnActivity {
            accepted: tokio::time::Instant::now(),
            in_flight: AtomicUsize::new(0),
            started: AtomicUsize::new(0),
            last_end_ms: AtomicU64::new(0),
            head_started_ms: AtomicU64::new(0),
            h2: AtomicBool::new(false),
            ambiguous: AtomicBool::new(false),
            upgrade: std::sync::Mutex::new(None),
            ended: tokio::sync::Notify::new(),
            manual_upgrades: AtomicBool::new(false),
        }
    }

    /// A request on this connection asks to upgrade: the receiving end of its connection.
    pub(crate) fn expect_upgrade(&self) -> ManualUpgrade {
        let (tx, rx) = tokio::sync::oneshot::channel();
        *self
            .upgrade
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(tx);
        ManualUpgrade(Arc::new(std::sync::Mutex::new(Some(rx))))
    }

    pub(crate) fn take_upgrade(
        &self,
    ) -> Option<tokio::sync::oneshot::Sender<Box<dyn UpgradedStream>>> {
        self.upgrade
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    fn upgrade_pending(&self) -> bool {
        self.upgrade
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some()
    }

    /// The bytes of a request head are arriving (since `since_ms` after the accept, or now):
    /// header_timeout runs from then, and the connection is not parked before the head is read.
    fn head_arriving(&self, since_ms: Option<u64>) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && self.head_started_ms.load(Ordering::Relaxed) == 0
        {
            let at = since_ms.unwrap_or_else(|| self.now_ms());
            self.head_started_ms.store(at + 1, Ordering::Relaxed);
        }
    }

    /// Whether this connection's upgrades are handed over by hand (served by
    /// [`serve_h1_parked`]'s sessions, not hyper's upgradeable connection).
    pub(crate) fn manual_upgrades(&self) -> bool {
        self.manual_upgrades.load(Ordering::Relaxed)
    }

    /// How long the connection has had no request in flight (`None`: one is in flight, or
    /// none has ended yet, or a head is arriving).
    fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Acquire) > 0
            || self.started.load(Ordering::Relaxed) == 0
            || self.head_started_ms.load(Ordering::Relaxed) != 0
        {
            return None;
        }
        let last = self.last_end_ms.load(Ordering::Relaxed);
        Some(Duration::from_millis(self.now_ms().saturating_sub(last)))
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.accepted.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Bytes arrived (`first`: the first ones of the connection).
    fn on_read(&self, first: &[u8], is_first: bool) {
        if is_first && first.starts_with(b"PRI ") {
            self.h2.store(true, Ordering::Relaxed);
        }
        if self.in_flight.load(Ordering::Acquire) == 0
            && !self.h2.load(Ordering::Relaxed)
            && self.head_started_ms.load(Ordering::Relaxed) == 0
        {
            self.head_started_ms
                .store(self.now_ms() + 1, Ordering::Relaxed);
        }
    }

    /// Whether the head of the request starting now had ambiguous framing.
    pub(crate) fn take_ambiguous(&self) -> bool {
        self.ambiguous.swap(false, Ordering::Relaxed)
    }

    pub(crate) fn begin(self: &Arc<Self>) -> ActiveRequest {
        self.head_started_ms.store(0, Ordering::Relaxed);
        self.started.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        ActiveRequest(self.clone())
    }

    /// When the connection is to be closed for silence, and why; `None` while a request is in
    /// flight.
    fn deadline(
        &self,
        header_timeout: Duration,
        idle_timeout: Duration,
    ) -> Option<(tokio::time::Instant, &'static str)> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        if self.started.load(Ordering::Relaxed) == 0 {
            return Some((self.accepted + header_timeout, "header"));
        }
        // A head began to arrive: it has header_timeout from its first byte.
        let head = self.head_started_ms.load(Ordering::Relaxed);
        if head > 0 {
            let at = self.accepted + Duration::from_millis(head - 1) + header_timeout;
            return Some((at, "header"));
        }
        let last = Duration::from_millis(self.last_end_ms.load(Ordering::Relaxed));
        Some((self.accepted + last + idle_timeout, "idle"))
    }
}

pin_project_lite::pin_project! {
    /// A client connection's byte stream, telling its [`ConnActivity`] when bytes arrive.
    pub(crate) struct WatchedIo<T> {
        #[pin]
        inner: T,
        activity: Arc<ConnActivity>,
        first: bool,
        heads: HeadScanner,
        // Bytes read (and watched) already, handed back by hyper when the connection was parked
        // or upgraded: read again before the socket.
        pending: bytes::Bytes,
    }
}

impl<T> WatchedIo<T> {
    pub(crate) fn new(inner: T, activity: Arc<ConnActivity>) -> WatchedIo<T> {
        WatchedIo {
            inner,
            activity,
            first: true,
            heads: HeadScanner::default(),
            pending: bytes::Bytes::new(),
        }
    }
}

/// Looks at the header names of each HTTP/1 request head as its bytes arrive on an idle
/// connection (no copy, no allocation: the first 18 bytes of each line), for the one thing
/// hyper hides from the handler: a head with both `Content-Length` and `Transfer-Encoding`.
/// Heads that arrive while a request is in flight (pipelining) are not looked at; hyper still
/// reads those as chunked and closes the connection after them.
#[derive(Default)]
pub struct HeadScanner {
    active: bool,
    seen_line: bool,
    prefix: [u8; 18],
    prefix_len: usize,
    content_length: bool,
    transfer_encoding: bool,
}

impl HeadScanner {
    /// Whether a head is being read (its end not seen yet).
    pub fn in_head(&self) -> bool {
        self.active
    }

    /// Feeds bytes read; `idle`: no request is in flight (so these bytes start a head).
    /// Returns whether a head ended with both framing headers.
    pub fn feed(&mut self, bytes: &[u8], idle: bool) -> bool {
        if !self.active {
            if !idle {
                return false;
            }
            *self = HeadScanner {
                active: true,
                ..HeadScanner::default()
            };
        }
        for &b in bytes {
            match b {
                b'\n' => {
                    if self.prefix_len == 0 {
                        // An empty line ends the head (empty lines before the request line
                        // are allowed and skipped).
                        if self.seen_line {
                            self.active = false;
                            return self.content_length && self.transfer_encoding;
                        }
                    } else {
                        self.seen_line = true;
                        let line = &self.prefix[..self.prefix_len];
                        self.content_length |= line.starts_with(b"content-length:");
                        self.transfer_encoding |= line.starts_with(b"transfer-encoding:");
                    }
                    self.prefix_len = 0;
                }
                b'\r' => {}
                _ if self.prefix_len < self.prefix.len() => {
                    self.prefix[self.prefix_len] = b.to_ascii_lowercase();
                    self.prefix_len += 1;
                }
                _ => {}
            }
        }
        false
    }
}

impl<T: tokio::io::AsyncRead> tokio::io::AsyncRead for WatchedIo<T> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.project();
        if !this.pending.is_empty() {
            let n = this.pending.len().min(buf.remaining());
            buf.put_slice(&this.pending.split_to(n));
            return std::task::Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = this.inner.poll_read(cx, buf);
        if buf.filled().len() > before {
            let new = &buf.filled()[before..];
            this.activity.on_read(new, *this.first);
            *this.first = false;
            let idle = this.activity.in_flight.load(Ordering::Acquire) == 0;
            if !this.activity.h2.load(Ordering::Relaxed) && this.heads.feed(new, idle) {
                this.activity.ambiguous.store(true, Ordering::Relaxed);
            }
        }
        polled
    }
}

impl<T: tokio::io::AsyncWrite> tokio::io::AsyncWrite for WatchedIo<T> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A request in flight on its connection: dropped with the response body (or the request, when
/// it ends without one).
pub(crate) struct ActiveRequest(Arc<ConnActivity>);

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        let now = self.0.accepted.elapsed().as_millis();
        self.0
            .last_end_ms
            .store(u64::try_from(now).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.ended.notify_one();
    }
}

/// Serves `conn` until it ends, closing it when it stays silent: no request within
/// `server.header_timeout` of the accept (TLS handshake and first byte included: hyper's own
/// header timer only starts with the first byte), or none within `server.idle_timeout` of the
/// last answer. Requests in flight are never cut.
pub(crate) async fn watch_connection<F>(
    conn: F,
    activity: Arc<ConnActivity>,
    gateway: &Gateway,
    peer: SocketAddr,
) where
    F: Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>>,
{
    let server = &gateway.config().server;
    let (header_timeout, idle_timeout) = (server.header_timeout, server.idle_timeout);
    tokio::pin!(conn);
    loop {
        let wake = match activity.deadline(header_timeout, idle_timeout) {
            Some((at, _)) => at,
            // Busy: look again later (a request ending moves the deadline).
            None => tokio::time::Instant::now() + header_timeout.min(idle_timeout),
        };
        tokio::select! {
            ended = &mut conn => {
                if let Err(e) = ended {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            () = tokio::time::sleep_until(wake) => {
                if let Some((at, phase)) = activity.deadline(header_timeout, idle_timeout)
                    && at <= tokio::time::Instant::now()
                {
                    tracing::debug!(%peer, phase, "closing a silent connection");
                    gateway.metrics().connection_timed_out(phase);
                    return;
                }
            }
        }
    }
}

/// An idle HTTP/1 connection is handed back by hyper after this long without a request, and
/// waits for the next one holding no buffers (hyper keeps 16 KiB per connection while it serves
/// it). Clients that send again sooner keep their hyper connection.
const PARK_AFTER: Duration = Duration::from_secs(2);

/// Serves a plain connection: HTTP/2 with prior knowledge through hyper-util's auto builder as
/// before, HTTP/1 in sessions. A session is one hyper connection; when it has been idle for
/// [`PARK_AFTER`] it is shut down gracefully *without* closing the socket, hyper gives the socket
/// and any bytes it had read back, and the connection is "parked": a wait for readability with
/// no buffer, then a new session. The watchdog rules of [`watch_connection`] hold throughout
/// (header_timeout from the accept and from a head's first byte, idle_timeout between
/// requests). Upgrades (WebSocket) are done by hand, since a connection that can be taken back
/// cannot be upgraded by hyper: the socket goes to the request's [`ManualUpgrade`].
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve_h1_parked<S, B>(
    stream: tokio::net::TcpStream,
    auto_builder: auto::Builder<TokioExecutor>,
    service: S,
    activity: Arc<ConnActivity>,
    gateway: &Gateway,
    peer: SocketAddr,
    mut drain: tokio::sync::watch::Receiver<bool>,
    watcher: hyper_util::server::graceful::Watcher,
) where
    S: hyper::service::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>>
        + Clone
        + Unpin
        + Send
        + 'static,
    S::Future: Unpin + Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let server = &gateway.config().server;
    let (header_timeout, idle_timeout) = (server.header_timeout, server.idle_timeout);
    let mut io = WatchedIo::new(stream, activity.clone());
    // The first bytes, within header_timeout of the accept.
    if !park(&io, &activity, &mut drain, gateway, peer).await {
        return;
    }
    // HTTP/2 with prior knowledge (its preface begins "PRI "), or bytes too few to tell: the
    // auto builder, which tells them apart, serves the connection as before (unparked). Boxed,
    // as each session is: a parked connection's task holds only what parking needs.
    let mut first = [0u8; 4];
    let n = io.inner.peek(&mut first).await.unwrap_or(0);
    if n == 0 || b"PRI "[..n.min(4)] == first[..n.min(4)] {
        let conn = auto_builder
            .serve_connection_with_upgrades(TokioIo::new(io), service)
            .into_owned();
        Box::pin(watch_connection(
            Box::pin(watcher.watch(conn)),
            activity,
            gateway,
            peer,
        ))
        .await;
        return;
    }
    activity.manual_upgrades.store(true, Ordering::Relaxed);
    let mut h1 = hyper::server::conn::http1::Builder::new();
    h1.timer(TokioTimer::new())
        .header_read_timeout(header_timeout.max(idle_timeout) + header_timeout)
        .keep_alive(true);
    let mut service = service;
    loop {
        let session = Box::pin(h1_session(
            &h1, io, service, &activity, gateway, peer, &mut drain,
        ));
        match session.await {
            Session::Closed => return,
            Session::Upgraded(rest, upgrade) => {
                // The 101 is written: the socket is the upgraded stream's now.
                let _ = upgrade.send(Box::new(rest));
                return;
            }
            Session::Parked(rest, s) => {
                tracing::trace!(%peer, "connection parked");
                io = rest;
                service = s;
            }
        }
        gateway.metrics().connection_parked(1);
        let woke = park(&io, &activity, &mut drain, gateway, peer).await;
        gateway.metrics().connection_parked(-1);
        if !woke {
            return;
        }
    }
}

/// How one HTTP/1 session of [`serve_h1_parked`] ended.
enum Session<S> {
    /// The connection is to be closed (the client closed or asked to, an error, a timeout, the
    /// process draining).
    Closed,
    /// Idle: the socket (with the bytes hyper had read) and the service, to park.
    Parked(WatchedIo<tokio::net::TcpStream>, S),
    /// A request was answered `101`: the socket goes to its upgrade.
    Upgraded(
        WatchedIo<tokio::net::TcpStream>,
        tokio::sync::oneshot::Sender<Box<dyn UpgradedStream>>,
    ),
}

/// One hyper HTTP/1 connection over `io`, until it ends or has been idle for [`PARK_AFTER`].
async fn h1_session<S, B>(
    h1: &hyper::server::conn::http1::Builder,
    io: WatchedIo<tokio::net::TcpStream>,
    service: S,
    activity: &ConnActivity,
    gateway: &Gateway,
    peer: SocketAddr,
    drain: &mut tokio::sync::watch::Receiver<bool>,
) -> Session<S>
where
    S: hyper::service::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>>
        + Unpin,
    S::Future: Unpin,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let server = &gateway.config().server;
    let (header_timeout, idle_timeout) = (server.header_timeout, server.idle_timeout);
    let mut conn = h1.serve_connection(TokioIo::new(io), service);
    let mut parking = false;
    // Requests started when parking was asked for: one more means hyper was reading a request
    // then, and its decision (keep-alive off, e.g. after a refused framing) stands.
    let mut started_at_park = 0;
    let mut draining = *drain.borrow();
    if draining {
        std::pin::Pin::new(&mut conn).graceful_shutdown();
    }
    let ended = loop {
        let timeout = activity.deadline(header_timeout, idle_timeout);
        let park_at = match activity.idle_for() {
            Some(idle) if !parking && !draining && !activity.upgrade_pending() => {
                Some(tokio::time::Instant::now() + PARK_AFTER.saturating_sub(idle))
            }
            _ => None,
        };
        let wake = [timeout.map(|(at, _)| at), park_at]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or_else(|| tokio::time::Instant::now() + PARK_AFTER);
        tokio::select! {
            ended = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => break ended,
            () = tokio::time::sleep_until(wake) => {
                let now = tokio::time::Instant::now();
                if let Some((at, phase)) = activity.deadline(header_timeout, idle_timeout)
                    && at <= now
                {
                    tracing::debug!(%peer, phase, "closing a silent connection");
                    gateway.metrics().connection_timed_out(phase);
                    return Session::Closed;
                }
                if !parking
                    && !draining
                    && !activity.upgrade_pending()
                    && activity.idle_for().is_some_and(|idle| idle >= PARK_AFTER)
                {
                    parking = true;
                    started_at_park = activity.started.load(Ordering::Relaxed);
                    std::pin::Pin::new(&mut conn).graceful_shutdown();
                }
            }
            () = activity.ended.notified() => {}
            changed = drain.changed(), if !draining => {
                draining = true;
                if changed.is_ok() {
                    std::pin::Pin::new(&mut conn).graceful_shutdown();
                }
            }
        }
    };
    if let Err(e) = ended {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
        return Session::Closed;
    }
    let parts = conn.into_parts();
    let mut rest = parts.io.into_inner();
    // What hyper read and did not parse, then what it had not read yet of what we handed it:
    // copied out, so hyper's read buffer (8 KiB, however little is left in it) is freed.
    rest.pending = match (parts.read_buf.is_empty(), rest.pending.is_empty()) {
        (true, true) => bytes::Bytes::new(),
        (false, true) => bytes::Bytes::copy_from_slice(&parts.read_buf),
        (true, false) => bytes::Bytes::copy_from_slice(&rest.pending),
        (false, false) => [&parts.read_buf[..], &rest.pending[..]].concat().into(),
    };
    if let Some(upgrade) = activity.take_upgrade() {
        return Session::Upgraded(rest, upgrade);
    }
    if !parking || draining || activity.started.load(Ordering::Relaxed) != started_at_park {
        // The client closed, or asked to (Connection: close), or the process drains, or a
        // request was read while the park was asked for (hyper ended the connection after it).
        return Session::Closed;
    }
    Session::Parked(rest, parts.service)
}

/// Waits, holding no buffer, until `io` has bytes to read; `false` when the connection is to be
/// closed instead: silent past its deadline, the process draining, or a socket error.
async fn park(
    io: &WatchedIo<tokio::net::TcpStream>,
    activity: &ConnActivity,
    drain: &mut tokio::sync::watch::Receiver<bool>,
    gateway: &Gateway,
    peer: SocketAddr,
) -> bool {
    let server = &gateway.config().server;
    let (header_timeout, idle_timeout) = (server.header_timeout, server.idle_timeout);
    if !io.pending.is_empty() {
        // Part of a head, read before the park: it began arriving by the last answer.
        activity.head_arriving(Some(activity.last_end_ms.load(Ordering::Relaxed)));
        return true;
    }
    if *drain.borrow() {
        return false;
    }
    let (at, phase) = activity
        .deadline(header_timeout, idle_timeout)
        .unwrap_or((tokio::time::Instant::now() + idle_timeout, "idle"));
    // A peek, not `readable()`: readiness can be reported before any byte is there.
    let mut first = [0u8; 1];
    tokio::select! {
        peeked = io.inner.peek(&mut first) => {
            let woke = matches!(peeked, Ok(n) if n > 0);
            if woke {
                // A head is arriving: header_timeout from now, and no park before it is read.
                activity.head_arriving(None);
            }
            woke
        }
        () = tokio::time::sleep_until(at) => {
            tracing::debug!(%peer, phase, "closing a silent connection");
            gateway.metrics().connection_timed_out(phase);
            false
        }
        _ = drain.changed() => false,
    }
}

#[cfg(test)]
mod head_tests {
    use super::HeadScanner;

    #[test]
    fn both_framing_headers_are_seen_however_the_bytes_are_split() {
        let head = b"\r\nPOST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        for split in 1..head.len() {
            let mut s = HeadScanner::default();
            let found = s.feed(&head[..split], true) | s.feed(&head[split..], true);
            assert!(found, "split at {split}");
        }
        let mut s = HeadScanner::default();
        assert!(!s.feed(
            b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nX-Content-Length: 4\r\n\r\n",
            true
        ));
        // Bytes that arrive while a request is in flight start nothing.
        let mut s = HeadScanner::default();
        assert!(!s.feed(
            b"Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            false
        ));
    }
}
