//! Listeners and connections: plain TCP or TLS (rustls, ALPN h2 + http/1.1), HTTP/1.1 and
//! HTTP/2 (including h2c with prior knowledge) on the same port, graceful shutdown.
//!
//! Binding is a separate step from serving so that a port in use or an unreadable certificate is
//! reported before anything starts: Portcullis never half-starts.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
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

use crate::connection::{ConnActivity, WatchedIo, serve_h1_parked, watch_connection};
pub use crate::connection::{HeadScanner, ManualUpgrade, UpgradedStream};
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
/// The TLS acceptor of `tls`, and with a `client_ca` the verifier that judges client
/// certificates after the handshake.
pub fn load_tls(
    tls: &config::Tls,
) -> Result<
    (
        TlsAcceptor,
        Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    ),
    ServeError,
> {
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
    let judge = match &tls.client_ca {
        Some(ca) if tls.client_auth != config::ClientAuth::Off => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| ServeError::Tls(format!("{}: {e}", ca.display())))?
            {
                roots
                    .add(cert)
                    .map_err(|e| ServeError::Tls(format!("{}: {e}", ca.display())))?;
            }
            let mut builder = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                .allow_unauthenticated();
            if let Some(crl) = &tls.crl {
                let crls = rustls::pki_types::CertificateRevocationListDer::pem_file_iter(crl)
                    .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| ServeError::Tls(format!("{}: {e}", crl.display())))?;
                builder = builder.with_crls(crls);
            }
            Some(
                builder
                    .build()
                    .map_err(|e| ServeError::Tls(format!("{}: {e}", ca.display())))?,
            )
        }
        _ => None,
    };
    let builder = rustls::ServerConfig::builder();
    let builder = match &judge {
        Some(v) => builder
            .with_client_cert_verifier(Arc::new(crate::client_cert::AnyClientCert::new(v.clone()))),
        None => builder.with_no_client_auth(),
    };
    let mut server = builder.with_single_cert(certs, key).map_err(|e| {
        ServeError::Tls(format!(
            "{} and {}: {e}",
            tls.cert.display(),
            tls.key.display()
        ))
    })?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((TlsAcceptor::from(Arc::new(server)), judge))
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
        // The verdict on the client certificate, judged once the TLS handshake is done.
        let client_cert: Arc<std::sync::OnceLock<crate::client_cert::ClientCert>> =
            Arc::new(std::sync::OnceLock::new());
        // Plain HTTP/1 connections are served by `serve_h1_parked`, which upgrades by hand
        // (`ConnActivity::manual_upgrades`); TLS and HTTP/2 ones by hyper.
        let service = {
            let activity = activity.clone();
            let client_cert = client_cert.clone();
            service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                let gateway = current.load_full();
                if let Some(verdict) = client_cert.get() {
                    req.extensions_mut().insert(verdict.clone());
                }
                if activity.take_ambiguous() {
                    req.extensions_mut().insert(crate::AmbiguousFraming);
                }
                if activity.manual_upgrades()
                    && req.version() == http::Version::HTTP_11
                    && crate::proxy::upgrade_protocol(req.headers()).is_some()
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
                    if let Some(verdict) =
                        gateway.judge_client_cert(tls.get_ref().1.peer_certificates())
                    {
                        let _ = client_cert.set(verdict);
                    }
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
