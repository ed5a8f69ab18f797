//! Listeners and connections: plain TCP or TLS (rustls, ALPN h2 + http/1.1), HTTP/1.1 and
//! HTTP/2 (including h2c with prior knowledge) on the same port, graceful shutdown.
//!
//! Binding is a separate step from serving so that a port in use or an unreadable certificate is
//! reported before anything starts: Portcullis never half-starts.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
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
    bind_addrs(&config.server.listen)
}

/// Binds `addrs` (all or nothing).
pub fn bind_addrs(addrs: &[SocketAddr]) -> Result<Bound, ServeError> {
    let mut listeners = Vec::new();
    for &addr in addrs {
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|source| ServeError::Bind { addr, source })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| ServeError::Bind { addr, source })?;
        listeners.push((addr, listener));
    }
    Ok(Bound { listeners })
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
        .header_read_timeout(config.server.header_timeout)
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
            };
            let task = tokio::spawn(accept_loop(listener, ctx, stop_rx));
            self.loops.insert(addr, (stop_tx, task));
        }
    }

    /// Stops accepting, then lets requests in flight finish for up to `drain`.
    pub async fn shutdown(self, drain: Duration) {
        tracing::info!("shutting down: no new connections; finishing requests in flight");
        DRAINING.store(true, std::sync::atomic::Ordering::Relaxed);
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
}

async fn accept_loop(
    listener: TcpListener,
    ctx: AcceptContext,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let local = listener.local_addr().ok();
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
        let _ = stream.set_nodelay(true);
        // Connection settings and TLS come from the configuration in force when it arrives.
        let gateway = ctx.current.load_full();
        let tls = gateway.tls().cloned();
        let builder = gateway.connection_builder().clone();
        let info = ConnInfo {
            peer,
            local: local.unwrap_or(peer),
            tls: tls.is_some(),
        };
        let current = ctx.current.clone();
        let service = service_fn(move |req| {
            let gateway = current.load_full();
            async move { gateway.handle(req, info).await }
        });
        match tls {
            None => {
                let conn = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .into_owned();
                let conn = ctx.graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
            Some(acceptor) => {
                let watcher = ctx.graceful.watcher();
                let handshake_timeout = gateway.config().server.header_timeout;
                tokio::spawn(async move {
                    let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            return tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        }
                        Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
                    };
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(tls), service)
                        .into_owned();
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
        }
    }
}
