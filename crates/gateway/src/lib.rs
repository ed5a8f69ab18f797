//! The HTTP side of Portcullis: listeners, the request pipeline, the reverse proxy, refusal
//! responses and the access log.
//!
//! [`Gateway::handle`] runs the phases of the pipeline (`pipeline/`, one file per phase) in
//! order for one request. Each phase either lets the request continue or produces a
//! [`policy::Refusal`]; every answer leaves through phase 9 (`respond/`), the single place where
//! a response is finished.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod audit;
pub mod base_path;
pub mod body;
mod build;
pub mod client_cert;
mod connection;
pub mod dns;
pub mod filter;
pub mod line_log;
pub mod mail;
pub mod metrics;
pub(crate) mod oidc;
pub mod pages;
mod pipeline;
pub mod portal;
pub mod proxy;
pub mod reload;
pub mod request_id;
pub mod respond;
pub mod server;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use config::{Config, ErrorMode, FailMode, ForwardedHeader, StateBackend, Upstream401};
use http::header::{ACCEPT, AUTHORIZATION, FORWARDED, REFERER, USER_AGENT, WWW_AUTHENTICATE};
use http::{HeaderValue, Request, Response};
use http_body_util::BodyExt;
use policy::{AuthStep, Facts, Identity, Policy, Reason, Refusal, TraceEntry, client_addr};
use store::Groups;
use store::state::memory::MemoryState;
use store::state::redis::{RedisOptions, RedisState};
use store::state::{
    Admission, InFlightGuard, LimitRefusal, Limits, Rate, Regulation, StateStore, SystemClock,
};
use store::verifier::{TokenCheck, Verification, Verifier};

use crate::access_log::{AccessLog, LogRecord};
use crate::audit::AuditLog;
use crate::body::{Body, LoggedBody, PendingLog};
use crate::dns::{HostName, HostResolver};
use crate::filter::{FilterClient, FilterRequest};
use crate::metrics::{AuthOutcome, Metrics};
use crate::pages::Pages;
use crate::proxy::{ForwardContext, Upstream, X_FORWARDED_FOR};

pub use build::{directory, second_factors, user_database};
pub use server::{Bound, ServeError, Server, bind, bind_addrs, serve};

use body::RequestBody;

/// What the handler knows about the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The socket peer.
    pub peer: SocketAddr,
    /// The local address.
    pub local: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
}

/// Marks a request whose head carried both `Content-Length` and `Transfer-Encoding` (seen on
/// the connection's bytes: hyper drops `Content-Length` before the handler sees the request).
#[derive(Debug, Clone, Copy)]
pub struct AmbiguousFraming;

/// The request must be answered by closing the connection (`deny_action = "abort"`).
#[derive(Debug, thiserror::Error)]
#[error("connection aborted by policy ({0})")]
pub struct Abort(pub Reason);

/// Everything needed to answer requests under one configuration.
pub struct Gateway {
    config: Config,
    policy: Policy,
    challenges: Vec<HeaderValue>,
    verifier: Arc<Verifier>,
    groups: Groups,
    hosts: Option<HostResolver>,
    filter: Option<FilterClient>,
    /// `None`: forward-auth only.
    upstream: Option<Upstream>,
    pages: Arc<Pages>,
    log: Arc<AccessLog>,
    state: StateStore,
    /// Shared by every gateway of the process (created once, kept across reloads).
    metrics: Arc<Metrics>,
    limits: Limits,
    regulation: Regulation,
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// Judges client certificates after the handshake (`server.tls.client_ca`).
    client_verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    audit: Arc<AuditLog>,
    connection_builder: hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    /// The portal's URLs under `portal.prefix`.
    paths: portal::Paths,
    /// Bearer JWTs (`[auth.jwt]`), when configured with the bearer scheme.
    jwt: Option<pipeline::authenticate::JwtSite>,
    /// Digest (`[auth.digest]`), when the scheme is on.
    digest: Option<pipeline::authenticate::DigestSite>,
    /// `[mail]`, for "forgot password" links.
    mailer: Option<Arc<mail::Mailer>>,
    /// `[oidc]`, when the `oidc` scheme is on.
    oidc: Option<Arc<oidc::OidcSite>>,
    /// Clients (by [`Gateway::client_key`]) with a failed sign-in within `logon.find_time`: their
    /// password checks wait behind everyone else's.
    suspects: moka::sync::Cache<IpAddr, ()>,
    /// (client key, user) pairs that signed in within the last day, and when: their password
    /// checks go first, and within `logon.ban_time` they are exempt from that user name's
    /// lockout.
    known_users: moka::sync::Cache<(IpAddr, String), Instant>,
}

/// Why a gateway could not be built from a valid config (files that vanished, etc.).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The user store could not be loaded.
    #[error("user store: {0}")]
    Users(String),
    /// The group file could not be loaded.
    #[error("group file: {0}")]
    Groups(String),
    /// The error page templates could not be loaded.
    #[error("error pages: {0}")]
    Pages(String),
    /// The access log could not be opened.
    #[error("{0}")]
    AccessLog(std::io::Error),
    /// The state backend could not be reached.
    #[error("state backend: {0}")]
    State(String),
    /// The TLS certificate or key could not be used.
    #[error("{0}")]
    Tls(ServeError),
    /// `[mail]` could not be used.
    #[error("mail: {0}")]
    Mail(String),
}

/// Connects the configured state backend (`[state]`); an unreachable Redis is an error here,
/// at start-up, not a surprise on the first request.
pub async fn connect_state(config: &Config) -> Result<StateStore, BuildError> {
    let memory = Arc::new(MemoryState::new(Arc::new(SystemClock::new())));
    let store = match &config.state.backend {
        StateBackend::Memory => StateStore::Memory(memory.clone()),
        StateBackend::Redis(url) => {
            let read = |path: &std::path::Path, what: &str| {
                std::fs::read(path)
                    .map_err(|e| BuildError::State(format!("state.{what} {}: {e}", path.display())))
            };
            let mut access = store::state::access::RedisAccess {
                ca: config
                    .state
                    .ca
                    .as_deref()
                    .map(|p| read(p, "ca"))
                    .transpose()?,
                ..Default::default()
            };
            if let Some((cert, key)) = &config.state.client_cert {
                access.client_cert = Some((read(cert, "cert")?, read(key, "key")?));
            }
            if let Some(path) = &config.state.password_file {
                let text = String::from_utf8(read(path, "password_file")?).map_err(|_| {
                    BuildError::State(format!("state.password_file {}: not UTF-8", path.display()))
                })?;
                access.credentials = Some(
                    store::state::access::RedisAccess::credentials_from(&text).map_err(|e| {
                        BuildError::State(format!("state.password_file {}: {e}", path.display()))
                    })?,
                );
            }
            let options = RedisOptions {
                url: url.clone(),
                timeout: config.state.timeout,
                fail_open: config.state.on_backend_error == FailMode::Open,
                key_prefix: config.state.key_prefix.clone(),
                lease: Duration::from_secs(30),
                access,
            };
            StateStore::Redis(Arc::new(
                RedisState::connect(options, memory.clone())
                    .await
                    .map_err(BuildError::State)?,
            ))
        }
    };
    // Idle clients and expired bans leave the in-process table (the Redis fallback's too).
    // The task holds a weak reference: it ends when the store is dropped (a reload that changed
    // the backend), instead of keeping the old table alive forever.
    let weak = Arc::downgrade(&memory);
    drop(memory);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            let Some(memory) = weak.upgrade() else { return };
            memory.sweep();
        }
    });
    Ok(store)
}

/// How long a user's sign-in from a client is remembered (for the hash queue's first lane).
const KNOWN_CLIENT_MEMORY: Duration = Duration::from_secs(24 * 60 * 60);

/// Time allowed for one double-reverse DNS lookup.
const DNS_TIMEOUT: Duration = Duration::from_secs(2);

impl Gateway {
    /// The key a client is counted under: its address, or for IPv6 its network of
    /// `dynamic.ipv6_prefix` bits (one /64 is one client: it holds 2^64 addresses).
    pub(crate) fn client_key(&self, ip: IpAddr) -> IpAddr {
        client_key(ip, self.config.dynamic.ipv6_prefix)
    }

    /// Whether the sign-in portal and its sessions are on: the `form` scheme, or `oidc` (whose
    /// sign-in ends in the same session).
    pub(crate) fn form_enabled(&self) -> bool {
        self.policy.auth.schemes.contains(&policy::Scheme::Form) || self.oidc.is_some()
    }

    /// The directory, when users live in LDAP.
    #[must_use]
    pub fn user_directory(&self) -> Option<Arc<store::ldap::Directory>> {
        self.verifier.directory().cloned()
    }

    /// The user database, when users live in SQLite or PostgreSQL.
    pub(crate) fn user_db(&self) -> Option<store::sqlite::Location> {
        user_database(&self.config)
    }

    /// The verdict on a connection's client certificate (`None` without `server.tls.client_ca`).
    pub fn judge_client_cert(
        &self,
        presented: Option<&[rustls::pki_types::CertificateDer<'_>]>,
    ) -> Option<client_cert::ClientCert> {
        self.client_verifier
            .as_deref()
            .map(|v| client_cert::judge(v, presented))
    }

    /// The TLS acceptor, when `server.tls` is set.
    pub fn tls(&self) -> Option<&tokio_rustls::TlsAcceptor> {
        self.tls.as_ref()
    }

    /// Connection settings (header timeout, protocols).
    pub fn connection_builder(
        &self,
    ) -> &hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor> {
        &self.connection_builder
    }

    /// Reopens the log files (SIGUSR1).
    pub fn reopen_logs(&self) {
        self.log.reopen();
        self.audit.reopen();
    }

    /// The audit log.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// The state store (shared across reloads).
    pub fn state(&self) -> &StateStore {
        &self.state
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The access log (for flushing at shutdown).
    pub fn access_log(&self) -> &AccessLog {
        &self.log
    }

    /// The process's metrics (e.g. to record a reload).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Runs the pipeline for one request: forward-auth questions at `/.portcullis/auth`,
    /// everything else through phases 2–8 to the upstream. Every response Portcullis writes
    /// itself (not the application's) leaves with the security headers of
    /// [`respond::secure_own_response`]. The body is the connection's (`Incoming`) or, for a
    /// request made in process, bytes.
    pub async fn handle<B: Into<RequestBody>>(
        &self,
        req: Request<B>,
        conn: ConnInfo,
    ) -> Result<Response<Body>, Abort> {
        self.route(req.map(Into::into), conn).await
    }
}

/// `ip`, or for IPv6 its network of `prefix` bits.
pub fn client_key(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let mask = if prefix >= 128 {
                u128::MAX
            } else {
                !(u128::MAX >> prefix)
            };
            IpAddr::V6((bits & mask).into())
        }
    }
}
