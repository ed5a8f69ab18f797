//! Listeners and connections: plain TCP or TLS (rustls, ALPN h2 + http/1.1), HTTP/1.1 and
//! HTTP/2 (including h2c with prior knowledge) on the same port, graceful shutdown.
//!
//! Binding is a separate step from serving so that a port in use or an unreadable certificate is
//! reported before anything starts: Portcullis never half-starts.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::{ConnInfo, Gateway};

/// Why serving could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The TLS certificate or key could not be used.
    #[error("TLS: {0}")]
    Tls(String),
}

/// Listeners bound, ready to serve.
pub struct Bound {
    listeners: Vec<(SocketAddr, std::net::TcpListener)>,
}

impl Bound {
    /// The addresses actually bound (useful with port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|(_, l)| l.local_addr().ok())
            .collect()
    }
}

/// Binds every listen address of `config`; fails without side effects on any problem.
pub fn bind(config: &config::Config) -> Result<Bound, ServeError> {
    bind_addrs(&config.server.listen, config.server.backlog)
}

/// Binds `addrs` (all or nothing) with a listen queue of `backlog` connections, so that a burst
/// of connects is not dropped (the kernel caps it at `net.core.somaxconn`, said at start).
pub fn bind_addrs(addrs: &[SocketAddr], backlog: u32) -> Result<Bound, ServeError> {
    let somaxconn = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    if let Some(max) = somaxconn.filter(|&m| m < backlog) {
        tracing::info!(
            backlog,
            somaxconn = max,
            "server.backlog is capped by the kernel at net.core.somaxconn; raise it with sysctl for larger bursts"
        );
    }
    let mut listeners = Vec::new();
    for &addr in addrs {
        let err = |source| ServeError::Bind { addr, source };
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .map_err(err)?;
        socket.set_reuse_address(true).map_err(err)?;
        if addr.is_ipv6() {
            socket.set_only_v6(true).map_err(err)?;
        }
        socket.bind(&addr.into()).map_err(err)?;
        socket
            .listen(i32::try_from(backlog).unwrap_or(i32::MAX))
            .map_err(err)?;
        socket.set_nonblocking(true).map_err(err)?;
        listeners.push((addr, std::net::TcpListener::from(socket)));
    }
    Ok(Bound { listeners })
}

/// Raises the open-file limit to its hard limit (each connection is a file descriptor) and
/// returns it; `None` when it cannot be read.
pub fn raise_open_file_limit() -> Option<u64> {
    let (soft, hard) = rlimit::Resource::NOFILE.get().ok()?;
    if soft < hard {
        match rlimit::Resource::NOFILE.set(hard, hard) {
            Ok(()) => {
                tracing::debug!(from = soft, to = hard, "raised the open-file limit");
                return Some(hard);
            }
            Err(e) => tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit"),
        }
    }
    Some(soft)
}

/// `server.max_connections` when the config leaves it out: half the open-file limit (a proxied
/// request also holds an upstream connection) after a reserve for logs, files and the admin
/// listener.
pub fn default_max_connections() -> usize {
    let limit = rlimit::Resource::NOFILE
        .get()
        .map_or(1024, |(soft, _)| soft);
    let usable = limit.saturating_sub(256) / 2;
    usize::try_from(usable.max(64)).unwrap_or(usize::MAX)
}

/// `server.upstream_max_connections` when the config leaves it out: half the open-file limit
/// left after `max_connections` client connections and the same reserve (each slot may also
/// keep one idle pooled connection), so that clients and upstream connections together never
/// run out of file descriptors.
pub fn default_upstream_max_connections(max_connections: usize) -> usize {
    let limit = rlimit::Resource::NOFILE
        .get()
        .map_or(1024, |(soft, _)| soft);
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    (limit.saturating_sub(256).saturating_sub(max_connections) / 2).max(64)
}

/// Loads the certificate chain and key of `server.tls`, offering h2 and http/1.1 by ALPN.
pub fn load_tls(tls: &config::Tls) -> Result<TlsAcceptor, ServeError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| ServeError::Tls(format!("{}: {e}", tls.cert.display())))?;
    if certs.is_empty() {
        return Err(ServeError::Tls(format!(
            "{}: no certificate found",
            tls.cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .map_err(|e| ServeError::Tls(format!("{}: {e}", tls.key.display())))?;
    let mut server = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            ServeError::Tls(format!(
                "{} and {}: {e}",
                tls.cert.display(),
                tls.key.display()
            ))
        })?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server)))
}

/// The connection settings of one configuration (header timeout and friends).
pub fn connection_builder(config: &config::Config) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // The connection watchdog (`watch_connection`) times heads from their first byte and
        // idle connections by server.idle_timeout; hyper's own timer, which also runs while a
        // keep-alive connection waits for its next request, is only the backstop.
        .header_read_timeout(
            config.server.header_timeout.max(config.server.idle_timeout)
                + config.server.header_timeout,
        )
        .keep_alive(true);
    // HTTP/2 has no header timeout: ping idle connections and drop the ones that stop answering,
    // and bound the streams one client may open at once.
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(config.server.header_timeout)
        .max_concurrent_streams(256);
    builder
}

/// The running server: the gateway in force (swapped atomically on reload) and one accept loop
/// per listener. Each request runs under the gateway that was current when it arrived, so a
/// reload never changes the rules under a request in flight.
pub struct Server {
    current: Arc<ArcSwap<Gateway>>,
    graceful: Arc<GracefulShutdown>,
    /// Set when the process drains (parked connections close, sessions end after their
    /// request).
    drain: tokio::sync::watch::Sender<bool>,
    /// Client connections open now (all listeners; `server.max_connections`).
    open: Arc<AtomicUsize>,
    loops: HashMap<
        SocketAddr,
        (
            tokio::sync::watch::Sender<bool>,
            tokio::task::JoinHandle<()>,
        ),
    >,
}

impl Server {
    /// Starts serving `gateway` on the `bound` listeners.
    pub fn start(gateway: Arc<Gateway>, bound: Bound) -> Server {
        let mut server = Server {
            current: Arc::new(ArcSwap::new(gateway)),
            graceful: Arc::new(GracefulShutdown::new()),
            drain: tokio::sync::watch::channel(false).0,
            open: Arc::new(AtomicUsize::new(0)),
            loops: HashMap::new(),
        };
        server.add_listeners(bound);
        server
    }

    /// A handle that always reads the gateway in force (for the admin listener).
    pub fn handle(&self) -> Arc<ArcSwap<Gateway>> {
        self.current.clone()
    }

    /// The gateway in force.
    pub fn current(&self) -> Arc<Gateway> {
        self.current.load_full()
    }

    /// The addresses being served, as configured.
    pub fn listening(&self) -> Vec<SocketAddr> {
        self.loops.keys().copied().collect()
    }

    /// Makes `gateway` the one new requests get; starts `newly_bound` listeners and stops the
    /// ones its config no longer lists (their connections finish what they are doing).
    pub fn swap(&mut self, gateway: Arc<Gateway>, newly_bound: Bound) {
        let wanted: Vec<SocketAddr> = gateway.config().server.listen.clone();
        self.current.store(gateway);
        self.add_listeners(newly_bound);
        let gone: Vec<SocketAddr> = self
            .loops
            .keys()
            .filter(|a| !wanted.contains(a))
            .copied()
            .collect();
        for addr in gone {
            if let Some((stop, _)) = self.loops.remove(&addr) {
                let _ = stop.send(true);
                tracing::info!(%addr, "listener closed (no longer in server.listen)");
            }
        }
    }

    fn add_listeners(&mut self, bound: Bound) {
        for (addr, std_listener) in bound.listeners {
            let listener = match TcpListener::from_std(std_listener) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(%addr, error = %e, "cannot register listener");
                    continue;
                }
            };
            if let Ok(local) = listener.local_addr() {
                tracing::info!(addr = %local, "listening");
            }
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            let ctx = AcceptContext {
                current: self.current.clone(),
                graceful: self.graceful.clone(),
                drain: self.drain.subscribe(),
                open: self.open.clone(),
            };
            let task = tokio::spawn(accept_loop(listener, ctx, stop_rx));
            self.loops.insert(addr, (stop_tx, task));
        }
    }

    /// Stops accepting, then lets requests in flight finish for up to `drain`.
    pub async fn shutdown(self, drain: Duration) {
        tracing::info!("shutting down: no new connections; finishing requests in flight");
        DRAINING.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.drain.send(true);
        for (_, (stop, task)) in self.loops {
            let _ = stop.send(true);
            let _ = task.await;
        }
        // Every accept loop has ended, so this is the last reference.
        let graceful = Arc::try_unwrap(self.graceful).unwrap_or_else(|_| GracefulShutdown::new());
        if tokio::time::timeout(drain, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                ?drain,
                "drain timeout reached; closing remaining connections"
            );
        }
        let gateway = self.current.load();
        gateway.access_log().flush(Duration::from_secs(5));
        gateway.audit().flush();
    }
}

static DRAINING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the process is shutting down (`/healthz` then answers 503 so load balancers move on).
pub fn draining() -> bool {
    DRAINING.load(std::sync::atomic::Ordering::Relaxed)
}

/// Serves until `shutdown` resolves, then drains for up to `drain` (no reloads: tests, demo).
pub async fn serve(
    gateway: Arc<Gateway>,
    bound: Bound,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let server = Server::start(gateway, bound);
    shutdown.await;
    server.shutdown(drain).await;
}

struct AcceptContext {
    current: Arc<ArcSwap<Gateway>>,
    graceful: Arc<GracefulShutdown>,
    drain: tokio::sync::watch::Receiver<bool>,
    /// Client connections open on every listener of the process.
    open: Arc<AtomicUsize>,
}

/// One open connection in the count of [`AcceptContext::open`] (and the metric).
struct OpenConnection {
    open: Arc<AtomicUsize>,
    gateway: Arc<Gateway>,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.gateway.metrics().connection(-1);
    }
}

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

/// Whether a request asks to upgrade its connection (`Connection: upgrade`).
fn wants_upgrade(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
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
}

impl ConnActivity {
    fn new() -> ConnActivity {
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
        }
    }

    /// A request on this connection asks to upgrade: the receiving end of its connection.
    fn expect_upgrade(&self) -> ManualUpgrade {
        let (tx, rx) = tokio::sync::oneshot::channel();
        *self
            .upgrade
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(tx);
        ManualUpgrade(Arc::new(std::sync::Mutex::new(Some(rx))))
    }

    fn take_upgrade(&self) -> Option<tokio::sync::oneshot::Sender<Box<dyn UpgradedStream>>> {
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
    fn take_ambiguous(&self) -> bool {
        self.ambiguous.swap(false, Ordering::Relaxed)
    }

    fn begin(self: &Arc<Self>) -> ActiveRequest {
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
    fn new(inner: T, activity: Arc<ConnActivity>) -> WatchedIo<T> {
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
async fn watch_connection<F>(
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
async fn serve_h1_parked<S, B>(
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
    if !park(
        &io,
        &activity,
        header_timeout,
        idle_timeout,
        &mut drain,
        gateway,
        peer,
    )
    .await
    {
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
                drop(watcher);
                return;
            }
            Session::Parked(rest, s) => {
                tracing::trace!(%peer, "connection parked");
                io = rest;
                service = s;
            }
        }
        gateway.metrics().connection_parked(1);
        let woke = park(
            &io,
            &activity,
            header_timeout,
            idle_timeout,
            &mut drain,
            gateway,
            peer,
        )
        .await;
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
    // Copied out: hyper's read buffer (8 KiB, however little is left in it) is freed.
    rest.pending = if parts.read_buf.is_empty() {
        bytes::Bytes::new()
    } else {
        bytes::Bytes::copy_from_slice(&parts.read_buf)
    };
    if let Some(upgrade) = activity.take_upgrade() {
        return Session::Upgraded(rest, upgrade);
    }
    if !parking || draining {
        // The client closed, or asked to (Connection: close), or the process drains.
        return Session::Closed;
    }
    Session::Parked(rest, parts.service)
}

/// Waits, holding no buffer, until `io` has bytes to read; `false` when the connection is to be
/// closed instead: silent past its deadline, the process draining, or a socket error.
async fn park(
    io: &WatchedIo<tokio::net::TcpStream>,
    activity: &ConnActivity,
    header_timeout: Duration,
    idle_timeout: Duration,
    drain: &mut tokio::sync::watch::Receiver<bool>,
    gateway: &Gateway,
    peer: SocketAddr,
) -> bool {
    if !io.pending.is_empty() {
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
        peeked = io.inner.peek(&mut first) => matches!(peeked, Ok(n) if n > 0),
        () = tokio::time::sleep_until(at) => {
            tracing::debug!(%peer, phase, "closing a silent connection");
            gateway.metrics().connection_timed_out(phase);
            false
        }
        _ = drain.changed() => false,
    }
}

async fn accept_loop(
    listener: TcpListener,
    ctx: AcceptContext,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let local = listener.local_addr().ok();
    let refused_log = store::Throttle::new(Duration::from_secs(60));
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Connection settings and TLS come from the configuration in force when it arrives.
        let gateway = ctx.current.load_full();
        let max = gateway
            .config()
            .server
            .max_connections
            .unwrap_or_else(default_max_connections);
        if ctx.open.fetch_add(1, Ordering::Relaxed) >= max {
            ctx.open.fetch_sub(1, Ordering::Relaxed);
            gateway.metrics().connection_refused();
            if refused_log.due() {
                tracing::warn!(max_connections = max, %peer, "server.max_connections connections are open: new connections are closed at once (said once a minute)");
            }
            // Closed without reading: nothing was promised to it.
            drop(stream);
            continue;
        }
        gateway.metrics().connection(1);
        let counted = OpenConnection {
            open: ctx.open.clone(),
            gateway: gateway.clone(),
        };
        let _ = stream.set_nodelay(true);
        let tls = gateway.tls().cloned();
        let builder = gateway.connection_builder().clone();
        let info = ConnInfo {
            peer,
            local: local.unwrap_or(peer),
            tls: tls.is_some(),
        };
        let current = ctx.current.clone();
        let activity = Arc::new(ConnActivity::new());
        // Plain connections are served by `serve_h1_parked`, which upgrades by hand.
        let manual_upgrades = tls.is_none();
        let service = {
            let activity = activity.clone();
            service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                let gateway = current.load_full();
                if activity.take_ambiguous() {
                    req.extensions_mut().insert(crate::AmbiguousFraming);
                }
                if manual_upgrades
                    && req.version() == http::Version::HTTP_11
                    && wants_upgrade(req.headers())
                {
                    req.extensions_mut().insert(activity.expect_upgrade());
                }
                let active = activity.begin();
                let activity = activity.clone();
                // Boxed: `serve_h1_parked` needs an `Unpin` future to take the connection back.
                Box::pin(async move {
                    let response = gateway.handle(req, info).await?;
                    if response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
                        // Not upgraded (refused, or the application said no): the connection
                        // stays an HTTP connection.
                        drop(activity.take_upgrade());
                    }
                    Ok::<_, crate::Abort>(response.map(|b| crate::body::holding_active(b, active)))
                })
            })
        };
        let watcher = ctx.graceful.watcher();
        let drain = ctx.drain.clone();
        tokio::spawn(async move {
            let _counted = counted;
            match tls {
                None => {
                    // Boxed: the task then holds a pointer, not room for the larger TLS
                    // connection state in every plain connection (memory per connection).
                    Box::pin(serve_h1_parked(
                        stream, builder, service, activity, &gateway, peer, drain, watcher,
                    ))
                    .await;
                }
                Some(acceptor) => {
                    // The handshake counts against header_timeout, from the accept.
                    let handshake_timeout = gateway.config().server.header_timeout;
                    let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            return tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            gateway.metrics().connection_timed_out("header");
                            return tracing::debug!(%peer, "TLS handshake timed out");
                        }
                    };
                    let conn = builder
                        .serve_connection_with_upgrades(
                            TokioIo::new(WatchedIo::new(tls, activity.clone())),
                            service,
                        )
                        .into_owned();
                    // Boxed: the task then holds a pointer, not room for the larger TLS
                    // connection state in every plain connection (memory per connection).
                    watch_connection(Box::pin(watcher.watch(conn)), activity, &gateway, peer).await;
                }
            }
        });
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
