//! The HTTP side of Portcullis: listeners, the request pipeline, the reverse proxy, refusal
//! responses and the access log.
//!
//! [`Gateway::handle`] runs the phases of the pipeline in order for one request. Each phase
//! either lets the request continue or produces a [`policy::Refusal`]; every refusal goes through
//! [`respond::refusal_response`], the single place where a refusal becomes a response.
#![forbid(unsafe_code)]

pub mod access_log;
mod account;
pub mod admin;
pub mod audit;
pub mod base_path;
pub mod body;
pub mod dns;
pub mod filter;
pub mod line_log;
pub mod mail;
pub mod metrics;
pub mod pages;
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
use hyper::body::Incoming;
use policy::{AuthStep, Facts, Identity, Policy, Reason, Refusal, TraceEntry, client_addr};
use store::Groups;
use store::state::memory::MemoryState;
use store::state::redis::{RedisOptions, RedisState};
use store::state::{
    Admission, InFlightGuard, LimitRefusal, Limits, Rate, Regulation, StateStore, SystemClock,
};
use store::verifier::{Verification, Verifier};

use crate::access_log::{AccessLog, LogRecord};
use crate::audit::AuditLog;
use crate::body::{Body, LoggedBody, PendingLog};
use crate::dns::{HostName, HostResolver};
use crate::filter::{FilterClient, FilterRequest};
use crate::metrics::{AuthOutcome, Metrics};
use crate::pages::Pages;
use crate::proxy::{ForwardContext, Upstream, X_FORWARDED_FOR};
use crate::respond::RefusalContext;

pub use server::{Bound, ServeError, Server, bind, bind_addrs, serve};

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
    pages: Pages,
    log: Arc<AccessLog>,
    state: StateStore,
    /// Shared by every gateway of the process (created once, kept across reloads).
    metrics: Arc<Metrics>,
    limits: Limits,
    regulation: Regulation,
    tls: Option<tokio_rustls::TlsAcceptor>,
    audit: Arc<AuditLog>,
    connection_builder: hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    /// The portal's URLs under `portal.prefix`.
    paths: portal::Paths,
    /// `[mail]`, for "forgot password" links.
    mailer: Option<Arc<mail::Mailer>>,
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
            let options = RedisOptions {
                url: url.clone(),
                timeout: config.state.timeout,
                fail_open: config.state.on_backend_error == FailMode::Open,
                key_prefix: config.state.key_prefix.clone(),
                lease: Duration::from_secs(30),
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

/// What is known about the request when it is refused, for the response and its trace.
struct Seen {
    peer: IpAddr,
    client_ip: IpAddr,
    identity: Option<Identity>,
    host_name: Option<Arc<str>>,
    /// The browser reached the site over HTTPS (for cookie attributes).
    secure: bool,
    /// The identity came from a sign-in session (form), not from `Authorization`.
    session_user: bool,
    /// The request's session cookie names no live session: the response clears it.
    clear_session: bool,
}

impl Seen {
    fn new(peer: IpAddr) -> Seen {
        Seen {
            peer,
            client_ip: peer,
            identity: None,
            host_name: None,
            secure: false,
            session_user: false,
            clear_session: false,
        }
    }
}

const X_ORIGINAL_URI: http::HeaderName = http::HeaderName::from_static("x-original-uri");
const X_ORIGINAL_METHOD: http::HeaderName = http::HeaderName::from_static("x-original-method");
const X_FORWARDED_URI: http::HeaderName = http::HeaderName::from_static("x-forwarded-uri");
const X_FORWARDED_METHOD: http::HeaderName = http::HeaderName::from_static("x-forwarded-method");
const REMOTE_NAME: http::HeaderName = http::HeaderName::from_static("remote-name");
const X_PORTCULLIS_COOKIE: http::HeaderName = http::HeaderName::from_static("x-portcullis-cookie");
const X_PORTCULLIS_AUTHORIZATION: http::HeaderName =
    http::HeaderName::from_static("x-portcullis-authorization");
const X_PORTCULLIS_PROBLEM: http::HeaderName =
    http::HeaderName::from_static("x-portcullis-problem");

/// The request a forward-auth question is about, from the trusted proxy's headers: exactly one
/// set, the one `forward_auth.headers` names — `X-Original-Method` / `X-Original-URI` (nginx) or
/// `X-Forwarded-Method` / `X-Forwarded-Uri` (Caddy, Traefik). Caddy and Traefik copy every
/// client header into the auth request and overwrite only their own set, so reading the other
/// set too would let a client describe the request it wants judged.
struct OriginalRequest {
    method: String,
    uri: String,
}

impl OriginalRequest {
    fn from_headers(
        h: &http::HeaderMap,
        set: config::ForwardAuthHeaders,
    ) -> Result<OriginalRequest, Refusal> {
        let (uri_name, method_name) = match set {
            config::ForwardAuthHeaders::Nginx => (X_ORIGINAL_URI, X_ORIGINAL_METHOD),
            config::ForwardAuthHeaders::Forwarded => (X_FORWARDED_URI, X_FORWARDED_METHOD),
        };
        let bad = |detail: String| Refusal::new(Reason::BadForwardedHeader).with_detail(detail);
        let single = |name: &http::HeaderName| -> Result<Option<String>, Refusal> {
            let mut values = h.get_all(name).iter();
            match (values.next(), values.next()) {
                (None, _) => Ok(None),
                (Some(v), None) => v
                    .to_str()
                    .map(|v| Some(v.trim().to_owned()))
                    .map_err(|_| bad(format!("{name} is not visible ASCII"))),
                (Some(_), Some(_)) => Err(bad(format!("{name} is sent more than once"))),
            }
        };
        let Some(uri) = single(&uri_name)? else {
            return Err(bad(format!(
                "the trusted proxy sent no {uri_name} (forward_auth.headers = \"{}\"): the original request is unknown",
                match set {
                    config::ForwardAuthHeaders::Nginx => "nginx",
                    config::ForwardAuthHeaders::Forwarded => "forwarded",
                }
            )));
        };
        // An absolute URI (some proxies send one) is reduced to its path and query.
        let uri = match uri.parse::<http::Uri>() {
            Ok(u) if u.scheme().is_some() => u
                .path_and_query()
                .map_or("/".to_owned(), |p| p.as_str().to_owned()),
            Ok(_) if uri.starts_with('/') && !uri.starts_with("//") => uri,
            _ => return Err(bad(format!("{uri_name} is not a request target: {uri:?}"))),
        };
        let method = match single(&method_name)? {
            None => "GET".to_owned(),
            Some(m) if http::Method::from_bytes(m.as_bytes()).is_ok() && !m.is_empty() => {
                m.to_ascii_uppercase()
            }
            Some(m) => return Err(bad(format!("{method_name} is not a method: {m:?}"))),
        };
        let original = OriginalRequest { method, uri };
        // The proxy forwards the path as the client sent it, and Portcullis cannot rewrite it:
        // a dot segment would be judged as one path and served as another.
        if policy::has_dot_segment(original.path()) {
            return Err(Refusal::new(Reason::BadRequest).with_detail(format!(
                "the original path {} has a '.' or '..' segment, which the application may read differently; it is refused",
                original.path()
            )));
        }
        Ok(original)
    }

    fn path(&self) -> &str {
        self.uri.split_once('?').map_or(&self.uri, |(p, _)| p)
    }
}

/// The request as the policy judges it: the real one in proxy mode, the original one in
/// forward-auth mode.
struct RequestView<'a> {
    /// The connection is TLS.
    tls: bool,
    method: &'a str,
    path: &'a str,
    path_and_query: &'a str,
    headers: &'a http::HeaderMap,
}

/// What phases 2–7 hand to phase 8 (or to the forward-auth answer).
struct Decided {
    identity: Identity,
    forwarded_by_proxy: bool,
    guard: Option<InFlightGuard>,
}

/// What phases 2–4 hand to phase 5 (or to a portal page).
struct Admitted {
    forwarded_by_proxy: bool,
    guard: Option<InFlightGuard>,
}

impl Gateway {
    /// Builds the gateway: loads users, groups and pages, opens the access log. `metrics` is
    /// the process's (created once, so that counters survive reloads).
    pub fn new(
        config: Config,
        state: StateStore,
        metrics: Arc<Metrics>,
    ) -> Result<Gateway, BuildError> {
        Gateway::build(config, state, None, metrics)
    }

    /// Builds the gateway for a reloaded `config`, keeping what must survive a reload: the state
    /// store (limiter counters, bans), the access log when its target is unchanged, and the
    /// user store with its verification cache when `auth.users` and `auth.cache_ttl` are.
    pub fn rebuild(&self, config: Config, state: StateStore) -> Result<Gateway, BuildError> {
        Gateway::build(config, state, Some(self), self.metrics.clone())
    }

    fn build(
        config: Config,
        state: StateStore,
        previous: Option<&Gateway>,
        metrics: Arc<Metrics>,
    ) -> Result<Gateway, BuildError> {
        let tls = config
            .server
            .tls
            .as_ref()
            .map(server::load_tls)
            .transpose()
            .map_err(BuildError::Tls)?;
        let connection_builder = server::connection_builder(&config);
        let source = match &config.auth.users {
            config::UserSource::Htpasswd(p) => store::verifier::UserSource::File(p.clone()),
            config::UserSource::Inline(users) => store::verifier::UserSource::Inline(users.clone()),
            config::UserSource::Sqlite(p) => store::verifier::UserSource::Sqlite(p.clone()),
        };
        let parallel = std::thread::available_parallelism().map_or(2, |n| n.get());
        let same_users = |p: &Gateway| {
            p.config.auth.users == config.auth.users
                && p.config.auth.cache_ttl == config.auth.cache_ttl
        };
        let verifier = match previous.filter(|p| same_users(p)) {
            Some(p) => p.verifier.clone(),
            None => Arc::new(
                Verifier::new(source, config.auth.cache_ttl, parallel)
                    .map_err(|e| BuildError::Users(e.to_string()))?,
            ),
        };
        let groups = match &config.auth.groups {
            Some(path) => Groups::load(path.clone())
                .map_err(|e| BuildError::Groups(format!("{}: {e}", path.display())))?,
            None => Groups::none(),
        };
        let pages = Pages::load(config.errors.pages.as_deref()).map_err(BuildError::Pages)?;
        let log = match previous.filter(|p| {
            p.config.log.access == config.log.access && p.config.log.format == config.log.format
        }) {
            Some(p) => p.log.clone(),
            None => Arc::new(
                AccessLog::open(&config.log.access, config.log.format)
                    .map_err(BuildError::AccessLog)?,
            ),
        };
        let audit = match (
            previous.filter(|p| p.config.log.audit == config.log.audit),
            &config.log.audit,
        ) {
            (Some(p), _) => p.audit.clone(),
            (None, Some(path)) => Arc::new(AuditLog::open(path).map_err(BuildError::AccessLog)?),
            (None, None) => Arc::new(AuditLog::off()),
        };
        let policy = config.policy();
        let paths = portal::Paths::new(&config.portal.prefix);
        let mailer = account::mailer_for(&config).map_err(BuildError::Mail)?;
        let challenges = policy
            .auth
            .challenges(&paths.login)
            .iter()
            .filter_map(|c| HeaderValue::from_str(c).ok())
            .collect();
        let hosts = policy
            .ip
            .needs_host_name()
            .then(|| HostResolver::new(DNS_TIMEOUT));
        let filter = config.filter.clone().map(FilterClient::new);
        let upstream = config.server.upstream.as_ref().map(|u| {
            let max = config.server.upstream_max_connections.unwrap_or_else(|| {
                server::default_upstream_max_connections(
                    config
                        .server
                        .max_connections
                        .unwrap_or_else(server::default_max_connections),
                )
            });
            Upstream::new(
                u,
                config.server.connect_timeout,
                config.server.upstream_timeout,
                max,
            )
        });
        let limits = Limits {
            max_concurrent: config.dynamic.max_concurrent,
            rate: config.dynamic.rate.map(|(max_requests, interval)| Rate {
                max_requests,
                interval,
            }),
        };
        let regulation = Regulation {
            max_failures: config.logon.max_failures,
            find_time: config.logon.find_time,
            ban_time: config.logon.ban_time,
        };
        metrics.attach_access_log(&log);
        metrics.attach_audit_log(&audit);
        let suspects = match previous {
            Some(p) => p.suspects.clone(),
            None => moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(config.logon.find_time.max(Duration::from_secs(60)))
                .build(),
        };
        let known_users = match previous {
            Some(p) => p.known_users.clone(),
            None => moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(KNOWN_CLIENT_MEMORY.max(config.logon.ban_time))
                .build(),
        };
        Ok(Gateway {
            suspects,
            known_users,
            metrics,
            config,
            policy,
            challenges,
            verifier,
            groups,
            hosts,
            filter,
            upstream,
            pages,
            log,
            limits,
            regulation,
            state,
            tls,
            audit,
            connection_builder,
            paths,
            mailer,
        })
    }

    /// The key a client is counted under: its address, or for IPv6 its network of
    /// `dynamic.ipv6_prefix` bits (one /64 is one client: it holds 2^64 addresses).
    pub(crate) fn client_key(&self, ip: IpAddr) -> IpAddr {
        client_key(ip, self.config.dynamic.ipv6_prefix)
    }

    /// Whether the `form` scheme (the sign-in portal) is enabled.
    pub(crate) fn form_enabled(&self) -> bool {
        self.policy.auth.schemes.contains(&policy::Scheme::Form)
    }

    /// The user database, when users live in SQLite.
    pub(crate) fn user_db(&self) -> Option<&std::path::Path> {
        match &self.config.auth.users {
            config::UserSource::Sqlite(p) => Some(p),
            _ => None,
        }
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

    /// `GET /.portcullis/problems/<slug>`: what the reason means and what to do, as a page (or
    /// problem+json / text by `Accept`), with status 200: it documents a refusal, it is not one.
    /// `?request_id=` names the refused request (a front proxy that shows this page for a
    /// refusal passes it on); only a well-formed request id is shown.
    fn problem_page(
        &self,
        slug: &str,
        accept: Option<&HeaderValue>,
        query: Option<&str>,
    ) -> Response<Body> {
        let Some(reason) = Reason::from_slug(slug) else {
            let mut r = Response::new(body::full(format!(
                "404 Not Found: \"{slug}\" is not a Portcullis reason. Known reasons: {}\n",
                Reason::ALL
                    .iter()
                    .map(|r| r.slug())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
            *r.status_mut() = http::StatusCode::NOT_FOUND;
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            return r;
        };
        let refusal = Refusal::new(reason).with_detail("explanation page");
        let quoted = portal::query_param(query, "request_id")
            .filter(|id| request_id::well_formed(id.as_bytes()));
        let ctx = RefusalContext {
            request_id: quoted.as_deref().unwrap_or("-"),
            accept,
            challenges: &[],
            extra_challenges: &[],
            detailed: false,
            mode: "custom",
            client_ip: IpAddr::from([0, 0, 0, 0]),
            path: "",
            realm: &self.policy.auth.realm,
            trace: &[],
            account: None,
            basic: self.policy.auth.schemes.contains(&policy::Scheme::Basic),
            problems: &self.paths.problems,
        };
        let mut response = respond::refusal_response(&refusal, &ctx, &self.pages);
        *response.status_mut() = http::StatusCode::OK;
        response.headers_mut().remove(http::header::RETRY_AFTER);
        response.headers_mut().insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=3600"),
        );
        response
    }

    /// The user's groups: from the user database with `sqlite:` users, else from `auth.groups`.
    fn groups_of(&self, user: &str) -> Vec<String> {
        self.verifier
            .groups_of(user)
            .unwrap_or_else(|| self.groups.groups_of(user))
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
    /// [`respond::secure_own_response`].
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        conn: ConnInfo,
    ) -> Result<Response<Body>, Abort> {
        let mut from_upstream = false;
        let mut response = self.route(req, conn, &mut from_upstream).await?;
        if !from_upstream {
            respond::secure_own_response(response.headers_mut());
        }
        Ok(response)
    }

    async fn route(
        &self,
        req: Request<Incoming>,
        conn: ConnInfo,
        from_upstream: &mut bool,
    ) -> Result<Response<Body>, Abort> {
        if let Err(refusal) = check_framing(&req) {
            return self.refuse_framing(&refusal, &req, conn);
        }
        if let Some(rest) = req.uri().path().strip_prefix(self.paths.prefix.as_str())
            && rest.starts_with('/')
        {
            if rest == "/auth" {
                return self.forward_auth(req, conn).await;
            }
            if let Some(slug) = rest.strip_prefix("/problems/") {
                return Ok(self.problem_page(slug, req.headers().get(ACCEPT), req.uri().query()));
            }
            match portal::Page::from_rest(rest) {
                Some(page @ (portal::Page::Login | portal::Page::Logout))
                    if self.form_enabled() =>
                {
                    return self.portal(req, conn, page).await;
                }
                Some(page @ (portal::Page::Password | portal::Page::Forgot))
                    if self.user_db().is_some() =>
                {
                    return self.portal(req, conn, page).await;
                }
                _ => {}
            }
        }
        let Some(upstream) = &self.upstream else {
            let mut r = Response::new(body::full(format!(
                "404 Not Found: this Portcullis has no upstream (server.upstream); it only answers forward-auth questions at {}\n",
                self.paths.auth
            )));
            *r.status_mut() = http::StatusCode::NOT_FOUND;
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            return Ok(r);
        };
        let started = Instant::now();
        let request_id = request_id::for_request(req.headers());
        let view = RequestView {
            tls: conn.tls,
            method: req.method().as_str(),
            path: req.uri().path(),
            path_and_query: req.uri().path_and_query().map_or("/", |p| p.as_str()),
            headers: req.headers(),
        };
        let mut record = self.new_record(&view, &conn, &request_id, started);
        let mut seen = Seen::new(policy::canonical(conn.peer.ip()));
        let decided = match self
            .decide(&view, &mut seen, &request_id, &mut record)
            .await
        {
            Ok(d) => d,
            Err(refusal) => return self.refuse(&refusal, &view, &seen, &request_id, record, &[]),
        };
        let Decided {
            identity,
            forwarded_by_proxy,
            guard,
        } = decided;

        // Phase 8: proxy.
        let ctx = ForwardContext {
            client_ip: seen.client_ip,
            peer: seen.peer,
            from_trusted_proxy: forwarded_by_proxy,
            keep_forwarded: forwarded_by_proxy
                && self.config.server.forwarded_header == ForwardedHeader::Forwarded,
            tls: conn.tls,
            identity: &identity,
            forward_authorization: self.config.auth.forward_authorization,
            request_id: &request_id,
            strip_own_cookies: self.form_enabled(),
        };
        let accept = req.headers().get(ACCEPT).cloned();
        // Kept for a refusal after forwarding (cheap: reference-counted, no copy of the path).
        let (method, uri) = (req.method().clone(), req.uri().clone());
        let facts = RequestFacts {
            method: method.as_str(),
            path: uri.path(),
            accept: accept.as_ref(),
        };
        let forwarded = self.metrics.forwarding(started);
        match upstream.forward(req, &ctx).await {
            Ok(response) => {
                self.metrics.upstream_answered(forwarded);
                let (mut parts, body) = response.into_parts();
                if let Some(r) = record.as_mut() {
                    r.status = parts.status.as_u16();
                }
                if parts.status == http::StatusCode::UNAUTHORIZED {
                    if let Some(r) = record.as_mut() {
                        r.substatus = Reason::AppDenied.substatus();
                        r.reason = Some(Reason::AppDenied);
                    }
                    if self.config.errors.upstream_401 == Upstream401::Replace {
                        let theirs: Vec<HeaderValue> = parts
                            .headers
                            .get_all(WWW_AUTHENTICATE)
                            .iter()
                            .cloned()
                            .collect();
                        let refusal = Refusal::new(Reason::AppDenied)
                            .with_detail("the application answered 401");
                        seen.identity = Some(identity.clone());
                        let response = self.refusal_response(
                            &refusal,
                            &facts,
                            &seen,
                            &request_id,
                            &theirs,
                            None,
                        );
                        self.metrics
                            .request(response.status().as_u16(), Some(Reason::AppDenied));
                        return Ok(self.logged(response, record));
                    }
                    // Every 401 carries a challenge (RFC 9110 §15.5.2): when the application sent
                    // none, ours is added.
                    if !parts.headers.contains_key(WWW_AUTHENTICATE) {
                        for c in &self.challenges {
                            parts.headers.append(WWW_AUTHENTICATE, c.clone());
                        }
                    }
                }
                if let Ok(v) = HeaderValue::from_str(&request_id) {
                    parts.headers.entry(request_id::X_REQUEST_ID).or_insert(v);
                }
                self.metrics.request(
                    parts.status.as_u16(),
                    (parts.status == http::StatusCode::UNAUTHORIZED).then_some(Reason::AppDenied),
                );
                let pending = record.map(|r| PendingLog::new(self.log.clone(), r));
                *from_upstream = true;
                Ok(Response::from_parts(
                    parts,
                    LoggedBody::new(body, pending).holding(guard).boxed(),
                ))
            }
            Err(refusal) => {
                tracing::warn!(reason = refusal.reason.slug(), detail = %refusal.detail, request_id, "upstream failed");
                seen.identity = Some(identity.clone());
                let mut response =
                    self.refusal_response(&refusal, &facts, &seen, &request_id, &[], None);
                if refusal.reason == Reason::BadRequest {
                    // The client's body was malformed: nothing after it on this connection can be
                    // read reliably.
                    response
                        .headers_mut()
                        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
                }
                self.metrics
                    .request(response.status().as_u16(), Some(refusal.reason));
                if let Some(r) = record.as_mut() {
                    r.substatus = refusal.reason.substatus();
                    r.reason = Some(refusal.reason);
                }
                Ok(self.logged(response, record))
            }
        }
    }

    /// Forward-auth (nginx `auth_request`, Caddy `forward_auth`, Traefik `ForwardAuth`): the
    /// original request is described by headers that only a trusted proxy may set; the answer is
    /// 200 with the identity headers, or the refusal exactly as proxy mode would send it.
    async fn forward_auth(
        &self,
        req: Request<Incoming>,
        conn: ConnInfo,
    ) -> Result<Response<Body>, Abort> {
        let started = Instant::now();
        let request_id = request_id::for_request(req.headers());
        let peer = policy::canonical(conn.peer.ip());
        let trusted = self.policy.trusted_proxies.contains(peer);
        let original = trusted.then(|| {
            OriginalRequest::from_headers(req.headers(), self.config.forward_auth.headers)
        });
        if !trusted
            && (req.headers().contains_key(X_ORIGINAL_URI)
                || req.headers().contains_key(X_FORWARDED_URI))
        {
            // Once a minute at most: a client could otherwise fill the log.
            static WARNED: std::sync::LazyLock<store::Throttle> =
                std::sync::LazyLock::new(|| store::Throttle::new(Duration::from_secs(60)));
            if WARNED.due() {
                tracing::warn!(%peer, "forward-auth request from a peer not in server.trusted_proxies: its X-Original-*/X-Forwarded-* headers are ignored (said once a minute)");
            }
        }
        let view = match &original {
            Some(Ok(o)) => RequestView {
                tls: conn.tls,
                method: &o.method,
                path: o.path(),
                path_and_query: &o.uri,
                headers: req.headers(),
            },
            _ => RequestView {
                tls: conn.tls,
                method: req.method().as_str(),
                path: req.uri().path(),
                path_and_query: req.uri().path_and_query().map_or("/", |p| p.as_str()),
                headers: req.headers(),
            },
        };
        // A trusted proxy's question without a usable original request is answered 400, never
        // decided on `/.portcullis/auth` itself.
        if let Some(Err(refusal)) = &original {
            let record = self.new_record(&view, &conn, &request_id, started);
            let seen = Seen::new(peer);
            tracing::warn!(%peer, detail = %refusal.detail, request_id, "forward-auth question refused");
            return self.refuse(refusal, &view, &seen, &request_id, record, &[]);
        }
        let mut record = self.new_record(&view, &conn, &request_id, started);
        let mut seen = Seen::new(peer);
        match self
            .decide(&view, &mut seen, &request_id, &mut record)
            .await
        {
            Ok(Decided { identity, .. }) => {
                let mut response = Response::new(body::full(bytes::Bytes::new()));
                let headers = response.headers_mut();
                // Always all four, empty for an anonymous answer on a public path: a proxy that
                // copies them (Caddy's copy_headers) then sets them empty instead of passing the
                // client's own, or its placeholder text.
                let empty = HeaderValue::from_static("");
                let user = identity
                    .user
                    .as_deref()
                    .and_then(|u| HeaderValue::from_str(u).ok())
                    .unwrap_or_else(|| empty.clone());
                let groups = (identity.user.is_some() && !identity.groups.is_empty())
                    .then(|| HeaderValue::from_str(&identity.groups.join(",")).ok())
                    .flatten()
                    .unwrap_or_else(|| empty.clone());
                headers.insert(proxy::REMOTE_USER, user.clone());
                headers.insert(REMOTE_NAME, user);
                headers.insert(proxy::REMOTE_GROUPS, groups);
                headers.insert(proxy::REMOTE_EMAIL, empty.clone());
                // What the proxy should pass on to the application instead of the client's own
                // `Cookie` and `Authorization` (the recipes set them from these): the cookies
                // without Portcullis's session and CSRF cookies, and the credentials only with
                // auth.forward_authorization. Always sent, empty when there is nothing.
                let mut cookies = http::HeaderMap::new();
                for v in req.headers().get_all(http::header::COOKIE) {
                    cookies.append(http::header::COOKIE, v.clone());
                }
                portal::strip_own_cookies(&mut cookies);
                let cookie = match cookies.get_all(http::header::COOKIE).iter().count() {
                    0 => empty.clone(),
                    1 => cookies[http::header::COOKIE].clone(),
                    _ => HeaderValue::from_str(
                        &cookies
                            .get_all(http::header::COOKIE)
                            .iter()
                            .filter_map(|v| v.to_str().ok())
                            .collect::<Vec<_>>()
                            .join("; "),
                    )
                    .unwrap_or_else(|_| empty.clone()),
                };
                headers.insert(X_PORTCULLIS_COOKIE, cookie);
                let authorization = req
                    .headers()
                    .get(AUTHORIZATION)
                    .filter(|_| self.config.auth.forward_authorization)
                    .cloned()
                    .unwrap_or(empty);
                headers.insert(X_PORTCULLIS_AUTHORIZATION, authorization);
                headers.insert(
                    http::header::CACHE_CONTROL,
                    HeaderValue::from_static("no-store"),
                );
                if let Ok(v) = HeaderValue::from_str(&request_id) {
                    headers.insert(request_id::X_REQUEST_ID, v);
                }
                self.metrics.request(response.status().as_u16(), None);
                Ok(self.logged(response, record))
            }
            Err(refusal) => {
                let mut response = self.refuse(&refusal, &view, &seen, &request_id, record, &[])?;
                // The sign-in redirect names the site as the browser reached it: Traefik resolves
                // a relative Location against the forward-auth address, not the site's.
                if response.status() == http::StatusCode::FOUND
                    && trusted
                    && let Some(absolute) =
                        absolute_location(&response, req.headers(), req.uri(), seen.secure)
                {
                    response
                        .headers_mut()
                        .insert(http::header::LOCATION, absolute);
                }
                // nginx's auth_request discards the body of the answer and, with a body to
                // skip, closes the connection to us: answer it with headers only.
                if trusted && self.config.forward_auth.headers == config::ForwardAuthHeaders::Nginx
                {
                    let (mut parts, body) = response.into_parts();
                    parts.headers.remove(http::header::CONTENT_TYPE);
                    drop(body);
                    // The reason, for the recipe's error page (`/.portcullis/problems/<slug>`).
                    parts.headers.insert(
                        X_PORTCULLIS_PROBLEM,
                        HeaderValue::from_static(refusal.reason.slug()),
                    );
                    // auth_request passes on only 401 and 403: the sign-in redirect becomes a
                    // 401 whose Location the recipe's `error_page 401` turns into the redirect.
                    if parts.status == http::StatusCode::FOUND {
                        parts.status = http::StatusCode::UNAUTHORIZED;
                        for c in &self.challenges {
                            parts.headers.append(WWW_AUTHENTICATE, c.clone());
                        }
                    } else if parts.status == http::StatusCode::UNAUTHORIZED {
                        // auth_request passes on only the first WWW-Authenticate: a client
                        // that is not sent to the sign-in page needs a challenge it can answer
                        // (Basic) first, not the form's `Cookie` one (cadaver, curl --anyauth).
                        let mut challenges: Vec<HeaderValue> = parts
                            .headers
                            .get_all(WWW_AUTHENTICATE)
                            .iter()
                            .cloned()
                            .collect();
                        challenges.sort_by_key(|c| c.as_bytes().starts_with(b"Cookie"));
                        parts.headers.remove(WWW_AUTHENTICATE);
                        for c in challenges {
                            parts.headers.append(WWW_AUTHENTICATE, c);
                        }
                    }
                    return Ok(Response::from_parts(parts, body::full(bytes::Bytes::new())));
                }
                Ok(response)
            }
        }
    }

    /// Phase 1's answer to a request whose framing is refused: logged like any refusal, and the
    /// connection is closed after it (what follows on it cannot be trusted to start a request).
    fn refuse_framing(
        &self,
        refusal: &Refusal,
        req: &Request<Incoming>,
        conn: ConnInfo,
    ) -> Result<Response<Body>, Abort> {
        let request_id = request_id::for_request(req.headers());
        let view = RequestView {
            tls: conn.tls,
            method: req.method().as_str(),
            path: req.uri().path(),
            path_and_query: req.uri().path_and_query().map_or("/", |p| p.as_str()),
            headers: req.headers(),
        };
        let record = self.new_record(&view, &conn, &request_id, Instant::now());
        let seen = Seen::new(policy::canonical(conn.peer.ip()));
        tracing::info!(peer = %conn.peer, detail = %refusal.detail, request_id, "request framing refused");
        let mut response = self.refuse(refusal, &view, &seen, &request_id, record, &[])?;
        response
            .headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        Ok(response)
    }

    fn new_record(
        &self,
        view: &RequestView<'_>,
        conn: &ConnInfo,
        request_id: &str,
        started: Instant,
    ) -> Option<LogRecord> {
        self.log.enabled().then(|| {
            let (stem, query) = view
                .path_and_query
                .split_once('?')
                .map_or((view.path_and_query, None), |(s, q)| (s, Some(q)));
            LogRecord {
                time: SystemTime::now(),
                s_ip: policy::canonical(conn.local.ip()),
                s_port: conn.local.port(),
                method: http::Method::from_bytes(view.method.as_bytes())
                    .unwrap_or(http::Method::GET),
                uri_stem: stem.to_owned(),
                uri_query: query.map(str::to_owned),
                c_ip: policy::canonical(conn.peer.ip()),
                user_agent: view.headers.get(USER_AGENT).cloned(),
                referer: view.headers.get(REFERER).cloned(),
                request_id: request_id.to_owned(),
                started: Some(started),
                ..LogRecord::default()
            }
        })
    }

    /// Phases 2–7 for the request described by `view`.
    async fn decide(
        &self,
        view: &RequestView<'_>,
        seen: &mut Seen,
        request_id: &str,
        record: &mut Option<LogRecord>,
    ) -> Result<Decided, Refusal> {
        let Admitted {
            forwarded_by_proxy,
            guard,
        } = self.admit(view, seen, request_id, record).await?;
        let identity = self.identify(view, seen, request_id, record).await?;
        Ok(Decided {
            identity,
            forwarded_by_proxy,
            guard,
        })
    }

    /// Phases 2–4: who the client is, whether its address may come in, and its limits.
    async fn admit(
        &self,
        view: &RequestView<'_>,
        seen: &mut Seen,
        request_id: &str,
        record: &mut Option<LogRecord>,
    ) -> Result<Admitted, Refusal> {
        let peer = seen.peer;
        // Phase 2: the client address.
        let forwarded_by_proxy =
            !self.policy.trusted_proxies.is_empty() && self.policy.trusted_proxies.contains(peer);
        if forwarded_by_proxy {
            // Only the header the trusted proxy maintains is read (server.forwarded_header).
            let read = |name: http::HeaderName| -> Vec<&[u8]> {
                view.headers
                    .get_all(name)
                    .iter()
                    .map(HeaderValue::as_bytes)
                    .collect()
            };
            let (forwarded, xff) = match self.config.server.forwarded_header {
                ForwardedHeader::XForwardedFor => (Vec::new(), read(X_FORWARDED_FOR)),
                ForwardedHeader::Forwarded => (read(FORWARDED), Vec::new()),
            };
            seen.client_ip = client_addr(peer, &self.policy.trusted_proxies, &forwarded, &xff)?.ip;
        }
        let client_ip = seen.client_ip;
        if let Some(r) = record.as_mut() {
            r.c_ip = client_ip;
        }
        seen.secure = view.tls
            || (forwarded_by_proxy
                && view
                    .headers
                    .get("x-forwarded-proto")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|p| p.trim().eq_ignore_ascii_case("https")));

        // Phase 3: static IP and host-name restrictions.
        self.policy.ip.check_address(client_ip)?;
        if let Some(resolver) = &self.hosts {
            seen.host_name = match resolver.lookup(client_ip).await {
                HostName::Verified(name) => Some(name),
                HostName::Unverified | HostName::Failed => None,
            };
            self.policy
                .ip
                .check_host(client_ip, seen.host_name.as_deref())?;
        }

        // Phase 4: dynamic limits. The guard holds the in-flight slot until the response ends.
        let mut guard = None;
        if self.limits.max_concurrent.is_some() || self.limits.rate.is_some() {
            let admission = self
                .state
                .admit(self.client_key(client_ip), &self.limits)
                .await;
            let answered = !matches!(admission, Admission::Unavailable);
            self.metrics.state_call(&self.state, answered);
            let refusal = match admission {
                Admission::Admitted(g) => {
                    guard = Some(g);
                    None
                }
                Admission::Refused(LimitRefusal::Concurrent { max }) => Some(
                    Refusal::new(Reason::ConcurrentLimit).with_detail(format!(
                        "{max} requests from {client_ip} already in flight (dynamic.deny_by_concurrent)"
                    )),
                ),
                Admission::Refused(LimitRefusal::Rate { retry_after }) => Some(
                    Refusal::new(Reason::RateLimit)
                        .with_retry_after(retry_after)
                        .with_detail(format!("{client_ip} exceeded dynamic.deny_by_rate")),
                ),
                Admission::Unavailable => {
                    return Err(Refusal::new(Reason::StateUnavailable).with_detail(
                        "the state backend is unreachable and on_backend_error = \"closed\"",
                    ));
                }
            };
            if let Some(refusal) = refusal.map(|r| r.with_action(self.config.dynamic.deny_action)) {
                if !self.config.dynamic.logging_only {
                    return Err(refusal);
                }
                // logging_only: serve it, but log what would have happened.
                tracing::info!(client = %client_ip, reason = refusal.reason.slug(), status = refusal.status(), substatus = refusal.reason.substatus(), request_id, "would refuse (dynamic.logging_only)");
                if let Some(r) = record.as_mut() {
                    r.would_refuse = Some(refusal.reason);
                }
            }
        }

        Ok(Admitted {
            forwarded_by_proxy,
            guard,
        })
    }

    /// Phases 5–7: who the user is, whether the rules let them in, and the external filter.
    async fn identify(
        &self,
        view: &RequestView<'_>,
        seen: &mut Seen,
        request_id: &str,
        record: &mut Option<LogRecord>,
    ) -> Result<Identity, Refusal> {
        let client_ip = seen.client_ip;
        // Phase 5: authenticate (on a path every server reads the same way).
        policy::check_raw_path(view.path)?;
        let path = self.policy.normalize(view.path);
        let authorization = view.headers.get(AUTHORIZATION);
        let step = self
            .policy
            .auth
            .authenticate(&path, authorization.map(HeaderValue::as_bytes));
        let identity = match step {
            AuthStep::Public(_) => Identity::anonymous(),
            AuthStep::VerifyBasic { user, password } => {
                if let Some(r) = record.as_mut() {
                    r.username = Some(user.clone());
                }
                // Basic cannot carry a second factor: such users sign in with the form (refused
                // before the password is looked at, so nothing is counted as a sign-in).
                if self.verifier.has_second_factor(&user).await {
                    return Err(self
                        .refuse_second_factor_basic(client_ip, &user, password)
                        .await);
                }
                self.authenticate_password(client_ip, &user, password, "basic")
                    .await?
            }
            // Without an Authorization header, a form-login site looks for its session cookie.
            AuthStep::Refuse(refusal)
                if refusal.reason == Reason::NoCredentials
                    && authorization.is_none()
                    && self.form_enabled() =>
            {
                match self.check_session(view.headers, seen.secure).await {
                    portal::SessionCheck::Valid(identity) => {
                        seen.session_user = true;
                        if let Some(r) = record.as_mut() {
                            r.username = identity.user.clone();
                        }
                        identity
                    }
                    portal::SessionCheck::Absent => {
                        return Err(refusal.with_detail(
                            "no Authorization header and no session cookie were sent",
                        ));
                    }
                    portal::SessionCheck::Ended(why) => {
                        seen.clear_session = true;
                        return Err(Refusal::new(Reason::SessionExpired).with_detail(why));
                    }
                    portal::SessionCheck::Unavailable(e) => {
                        return Err(Refusal::new(Reason::StateUnavailable)
                            .with_detail(format!("the session could not be read: {e}")));
                    }
                }
            }
            AuthStep::Refuse(refusal) => return Err(refusal),
        };
        // The identity goes into `seen` (for the trace of a detailed page) only on a refusal:
        // allowed requests do not pay for a copy.
        // Phase 6: URL authorization.
        if let Err(mut refusal) = self.policy.rules.authorize(&path, view.method, &identity) {
            // A browser signed in by form and refused by a rule gets 403 and a "sign in as
            // someone else" page: a 401 would send it back to the sign-in page, a loop.
            if seen.session_user && refusal.reason == Reason::AclDenied {
                refusal = refusal.with_action(policy::DenyAction::Forbidden);
            }
            seen.identity = Some(identity);
            return Err(refusal);
        }
        // A WebDAV MOVE or COPY writes to a second path, its Destination: the same rules judge
        // it (as Apache's mod_dav does), or a user could move a file into a place they may not
        // write.
        if let Err(refusal) = self.check_destination(view, &identity) {
            seen.identity = Some(identity);
            return Err(refusal);
        }

        // Phase 7: the external filter.
        if let Some(filter) = &self.filter {
            let ask = FilterRequest {
                method: view.method,
                uri: view.path_and_query,
                client_ip,
                identity: &identity,
                request_id,
            };
            let checked = filter.check(&ask).await;
            if let Err(refusal) = checked {
                seen.identity = Some(identity);
                return Err(refusal);
            }
        }
        Ok(identity)
    }

    /// Phase 6 for the `Destination` of a WebDAV `MOVE`/`COPY`: a path every server reads the
    /// same way (no encoded separator, no dot segment), public if the request is anonymous, and
    /// allowed by the rules for this method and identity.
    fn check_destination(
        &self,
        view: &RequestView<'_>,
        identity: &Identity,
    ) -> Result<(), Refusal> {
        if !(view.method.eq_ignore_ascii_case("MOVE") || view.method.eq_ignore_ascii_case("COPY")) {
            return Ok(());
        }
        let Some(destination) = base_path::destination(view.headers)? else {
            return Ok(());
        };
        let path = destination.path;
        policy::check_raw_path(path)?;
        if policy::has_dot_segment(path) {
            return Err(Refusal::new(Reason::BadRequest)
                .with_detail("the Destination has a . or .. segment; it is refused"));
        }
        let normalized = self.policy.normalize(path);
        if identity.user.is_none()
            && !self
                .policy
                .auth
                .public
                .iter()
                .any(|p| p.matches(&normalized))
        {
            return Err(self.policy.rules.denial(format!(
                "anonymous may not {} to {path}, which is not public",
                view.method
            )));
        }
        self.policy
            .rules
            .authorize(&normalized, view.method, identity)
            .map(|_| ())
            .map_err(|mut r| {
                r.detail = format!("the Destination {path}: {}", r.detail);
                r
            })
    }

    /// Phase 5 for a user name and password (Basic, or the sign-in form: `method`): lockout,
    /// password check, failure counting.
    async fn authenticate_password(
        &self,
        client_ip: IpAddr,
        user: &str,
        password: String,
        method: &'static str,
    ) -> Result<Identity, Refusal> {
        // A form sign-in is always a fresh check: it starts a session, so it is audited.
        let always_fresh = method == "form";
        if !self.config.logon.enabled {
            let (accepted, fresh) = self.verify(user, &password, client_ip, method).await?;
            drop(password);
            let mut identity = self.policy.auth.after_verification(user, accepted)?;
            if !(method == "form" && self.verifier.has_second_factor(user).await) {
                self.signed_in(user, client_ip, fresh || always_fresh, method);
            }
            identity.groups = self.groups_of(user);
            return Ok(identity);
        }
        // Locked out: refused before the password is even looked at.
        self.check_not_locked_out(client_ip, user, method).await?;
        let (accepted, fresh) = self.verify(user, &password, client_ip, method).await?;
        let fresh = fresh || always_fresh;
        drop(password);
        // Guesses sent in parallel all pass the ban check above before any of them fails; if
        // they started a ban while this password was being checked, a right guess among them
        // must not get in.
        if accepted
            && fresh
            && let Ok(Some(ban)) = self.ban_for(client_ip, user).await
        {
            self.metrics.auth(method, AuthOutcome::LockedOut);
            self.audit
                .sign_in(false, user, client_ip, method, Some("locked_out"));
            return Err(Refusal::new(Reason::LockedOut)
                .with_retry_after(ban.remaining)
                .with_detail(format!("{} is locked out: {}", ban.subject, ban.reason)));
        }
        // A right password of a user with a second factor is not a sign-in yet: it is counted
        // and audited when the code is (portal::second_factor).
        let factor_pending =
            accepted && method == "form" && self.verifier.has_second_factor(user).await;
        // A cached acceptance repeats one already recorded: no state round trip for it.
        let recorded = if (accepted && !fresh) || factor_pending {
            Ok(Vec::new())
        } else if accepted {
            self.state
                .record_success(self.client_key(client_ip), user)
                .await
                .map(|()| Vec::new())
        } else {
            self.state
                .record_failure(self.client_key(client_ip), user, &self.regulation)
                .await
        };
        self.note_bans(recorded);
        let mut identity = self.policy.auth.after_verification(user, accepted)?;
        if !factor_pending {
            self.signed_in(user, client_ip, fresh, method);
        }
        identity.groups = self.groups_of(user);
        Ok(identity)
    }

    /// Refuses a sign-in to a locked-out address or user (or when the ban check cannot be made
    /// and `state.on_backend_error = "closed"`), counting and auditing it.
    async fn check_not_locked_out(
        &self,
        client_ip: IpAddr,
        user: &str,
        method: &'static str,
    ) -> Result<(), Refusal> {
        let ban = self.ban_for(client_ip, user).await;
        self.metrics.state_call(&self.state, ban.is_ok());
        match ban {
            Ok(None) => Ok(()),
            Ok(Some(ban)) => {
                self.metrics.auth(method, AuthOutcome::LockedOut);
                self.audit
                    .sign_in(false, user, client_ip, method, Some("locked_out"));
                Err(Refusal::new(Reason::LockedOut)
                    .with_retry_after(ban.remaining)
                    .with_detail(format!("{} is locked out: {}", ban.subject, ban.reason)))
            }
            Err(e) if self.config.state.on_backend_error == FailMode::Closed => {
                self.metrics.auth(method, AuthOutcome::StateUnavailable);
                Err(Refusal::new(Reason::StateUnavailable).with_detail(e.to_string()))
            }
            Err(e) => {
                tracing::error!(error = %e, "ban check skipped (on_backend_error = \"open\")");
                Ok(())
            }
        }
    }

    /// Logs and audits the bans a recorded failure started (or the failure to record it).
    fn note_bans(&self, recorded: Result<Vec<store::state::Ban>, store::state::Unavailable>) {
        self.metrics.state_call(&self.state, recorded.is_ok());
        match recorded {
            Ok(bans) => {
                for ban in bans {
                    let until = humantime::format_rfc3339_seconds(ban.until).to_string();
                    tracing::warn!(subject = %ban.subject, reason = ban.reason, until, "locked out");
                    self.audit.record(
                        "locked_out",
                        serde_json::json!({"subject": ban.subject.to_string(), "reason": ban.reason, "until": until}),
                    );
                }
            }
            Err(e) => tracing::error!(error = %e, "could not record the logon outcome"),
        }
    }

    /// Basic for a user with a second factor: Basic cannot carry the code, so it is refused
    /// (401.1) — as any wrong password is, so that neither the answer nor its timing tells a
    /// guesser which users have a second factor: the lockout is checked first, the password is
    /// hashed (never answered from the cache, whose speed would mark the right password) and
    /// the attempt counts as a failure.
    async fn refuse_second_factor_basic(
        &self,
        client_ip: IpAddr,
        user: &str,
        password: String,
    ) -> Refusal {
        let logon = self.config.logon.enabled;
        if logon && let Err(refusal) = self.check_not_locked_out(client_ip, user, "basic").await {
            return refusal;
        }
        let verification = self
            .verifier
            .verify_uncached(
                user,
                &password,
                store::hash_queue::Lane::Suspect,
                self.config.auth.verify_queue_timeout,
            )
            .await;
        drop(password);
        self.metrics.verification(store::Answer::Hashed);
        if let Verification::Busy(busy) = verification {
            self.metrics.auth("basic", AuthOutcome::Busy);
            return Refusal::new(Reason::VerifierBusy)
                .with_retry_after(busy.retry_after.max(Duration::from_secs(1)))
                .with_detail(format!(
                    "every password-checking worker stayed busy for longer than auth.verify_queue_timeout ({:?})",
                    self.config.auth.verify_queue_timeout
                ));
        }
        self.suspects.insert(self.client_key(client_ip), ());
        self.metrics.auth("basic", AuthOutcome::Refused);
        self.audit.sign_in(
            false,
            user,
            client_ip,
            "basic",
            Some("second_factor_required"),
        );
        if logon {
            let recorded = self
                .state
                .record_failure(self.client_key(client_ip), user, &self.regulation)
                .await;
            self.note_bans(recorded);
        }
        Refusal::new(Reason::LogonFailed).with_detail(format!(
            "{user} has a second factor (TOTP) and must sign in with the sign-in form"
        ))
    }

    /// Checks a password, counting the sign-in outcome and how the answer was found.
    /// Returns whether the password was accepted and whether that took a fresh hash check (a
    /// sign-in, for the audit log) rather than the verification cache.
    ///
    /// Passwords over [`store::MAX_PASSWORD_BYTES`] are refused without a hash check (their cost
    /// grows with their length). A check waits for a hashing worker at most
    /// `auth.verify_queue_timeout`, behind every client without a recent failure when this
    /// one has failed lately; past that it is `503 verifier_busy`.
    async fn verify(
        &self,
        user: &str,
        password: &str,
        client_ip: IpAddr,
        method: &'static str,
    ) -> Result<(bool, bool), Refusal> {
        let client = self.client_key(client_ip);
        let (verification, answer) = if password.len() > store::MAX_PASSWORD_BYTES {
            (Verification::Refused, store::Answer::Cached)
        } else {
            let lane = if self.known_users.contains_key(&(client, user.to_owned())) {
                store::hash_queue::Lane::Known
            } else if self.suspects.contains_key(&client) {
                store::hash_queue::Lane::Suspect
            } else {
                store::hash_queue::Lane::Preferred
            };
            self.verifier
                .verify_queued(user, password, lane, self.config.auth.verify_queue_timeout)
                .await
        };
        let accepted = match verification {
            Verification::Accepted => true,
            Verification::Refused => false,
            Verification::Busy(busy) => {
                self.metrics.auth(method, AuthOutcome::Busy);
                return Err(Refusal::new(Reason::VerifierBusy)
                    .with_retry_after(busy.retry_after.max(Duration::from_secs(1)))
                    .with_detail(format!(
                        "every password-checking worker stayed busy for longer than auth.verify_queue_timeout ({:?})",
                        self.config.auth.verify_queue_timeout
                    )));
            }
        };
        self.metrics.verification(answer);
        let fresh = matches!(answer, store::Answer::Hashed);
        if !accepted {
            self.suspects.insert(client, ());
            self.audit
                .sign_in(false, user, client_ip, method, Some("logon_failed"));
            self.metrics.auth(method, AuthOutcome::Refused);
        }
        Ok((accepted, fresh))
    }

    /// The ban that stops `user` signing in from `client_ip`: on the client (its key), or on the
    /// user name unless this client signed in as that user within `logon.ban_time` — a
    /// guesser elsewhere must not lock the real user out.
    pub(crate) async fn ban_for(
        &self,
        client_ip: IpAddr,
        user: &str,
    ) -> Result<Option<store::state::Ban>, store::state::Unavailable> {
        let client = self.client_key(client_ip);
        let known = self
            .known_users
            .get(&(client, user.to_owned()))
            .is_some_and(|at| at.elapsed() < self.config.logon.ban_time);
        self.state.ban_for(client, (!known).then_some(user)).await
    }

    /// Counts an accepted sign-in, once it is certain (after the lockout re-check); a fresh one
    /// (a real password check, not the cache) is also audited and recorded in the user store.
    pub(crate) fn signed_in(
        &self,
        user: &str,
        client_ip: IpAddr,
        fresh: bool,
        method: &'static str,
    ) {
        self.metrics.auth(method, AuthOutcome::Accepted);
        self.known_users.insert(
            (self.client_key(client_ip), user.to_owned()),
            Instant::now(),
        );
        if fresh {
            self.audit.sign_in(true, user, client_ip, method, None);
            self.verifier.record_sign_in(user);
        }
    }

    fn refuse(
        &self,
        refusal: &Refusal,
        view: &RequestView<'_>,
        seen: &Seen,
        request_id: &str,
        mut record: Option<LogRecord>,
        extra_challenges: &[HeaderValue],
    ) -> Result<Response<Body>, Abort> {
        if let Some(r) = record.as_mut() {
            r.status = refusal.status();
            r.substatus = refusal.reason.substatus();
            r.reason = Some(refusal.reason);
        }
        if refusal.status() == 0 {
            self.metrics.request(0, Some(refusal.reason));
            if let Some(r) = record {
                self.log.write(r);
            }
            return Err(Abort(refusal.reason));
        }
        let mut set_cookies = Vec::new();
        if seen.clear_session {
            let cookies = portal::Cookies {
                secure: seen.secure,
            };
            set_cookies.extend(cookies.clear_session(view.headers));
        }
        let mut response = match self.login_redirect(refusal, view) {
            // A browser on a form-login site goes to the sign-in page (and back afterwards).
            Some(location) => {
                let mut r = portal::see_other(&location);
                *r.status_mut() = http::StatusCode::FOUND;
                if let Ok(v) = HeaderValue::from_str(request_id) {
                    r.headers_mut().insert(request_id::X_REQUEST_ID, v);
                }
                r
            }
            None => {
                let facts = RequestFacts {
                    method: view.method,
                    path: view.path,
                    accept: view.headers.get(ACCEPT),
                };
                let account = self.account_for(refusal, view, seen, &mut set_cookies);
                self.refusal_response(
                    refusal,
                    &facts,
                    seen,
                    request_id,
                    extra_challenges,
                    account.as_ref(),
                )
            }
        };
        for c in set_cookies {
            response.headers_mut().append(http::header::SET_COOKIE, c);
        }
        self.metrics
            .request(response.status().as_u16(), Some(refusal.reason));
        Ok(self.logged(response, record))
    }

    fn refusal_response(
        &self,
        refusal: &Refusal,
        facts: &RequestFacts<'_>,
        seen: &Seen,
        request_id: &str,
        extra_challenges: &[HeaderValue],
        account: Option<&respond::Account>,
    ) -> Response<Body> {
        let mode = self.config.errors.mode;
        let detailed = match mode {
            ErrorMode::Custom => false,
            ErrorMode::Detailed => true,
            ErrorMode::DetailedLocalOnly => seen.client_ip.is_loopback() && seen.peer.is_loopback(),
        };
        let trace = if detailed {
            self.trace(refusal, facts, seen)
        } else {
            Vec::new()
        };
        // A 401 page for a browser on a form-login site carries only the form's challenge: a
        // Basic one would open the browser's password prompt over the page.
        let challenges =
            if account.is_some() && respond::negotiate(facts.accept) == respond::Format::Html {
                self.page_challenges()
            } else {
                &self.challenges
            };
        let ctx = RefusalContext {
            request_id,
            accept: facts.accept,
            challenges,
            extra_challenges,
            detailed,
            mode: match mode {
                ErrorMode::Custom => "custom",
                ErrorMode::Detailed => "detailed",
                ErrorMode::DetailedLocalOnly => "detailed_local_only",
            },
            client_ip: seen.client_ip,
            path: facts.path,
            realm: &self.policy.auth.realm,
            trace: &trace,
            account,
            basic: self.policy.auth.schemes.contains(&policy::Scheme::Basic),
            problems: &self.paths.problems,
        };
        respond::refusal_response(refusal, &ctx, &self.pages)
    }

    /// The phases before the refusing one (they passed: the trace says what happened, not what
    /// `explain` would assume), then the refusal itself.
    fn trace(&self, refusal: &Refusal, facts: &RequestFacts<'_>, seen: &Seen) -> Vec<TraceEntry> {
        let explained = policy::explain(
            &self.policy,
            &Facts {
                peer: seen.client_ip,
                forwarded: Vec::new(),
                x_forwarded_for: Vec::new(),
                host_name: seen.host_name.as_deref().map(str::to_owned),
                method: facts.method,
                path: facts.path,
                identity: seen.identity.clone(),
                live: true,
            },
        );
        let mut entries: Vec<TraceEntry> = explained
            .0
            .0
            .into_iter()
            .filter(|e| e.phase < refusal.reason.phase())
            .collect();
        entries.push(TraceEntry {
            phase: refusal.reason.phase(),
            verdict: format!(
                "REFUSED {}.{} {}: {}",
                refusal.status(),
                refusal.reason.substatus(),
                refusal.reason.slug(),
                refusal.detail
            ),
        });
        entries
    }

    fn logged(&self, response: Response<Body>, record: Option<LogRecord>) -> Response<Body> {
        self.logged_holding(response, record, None)
    }

    /// The response whose body writes the access-log line, and releases the in-flight slot
    /// `guard`, when it has been sent (or dropped).
    fn logged_holding(
        &self,
        response: Response<Body>,
        record: Option<LogRecord>,
        guard: Option<InFlightGuard>,
    ) -> Response<Body> {
        if record.is_none() && guard.is_none() {
            return response;
        }
        let status = response.status().as_u16();
        let pending = record.map(|mut r| {
            r.status = status;
            PendingLog::new(self.log.clone(), r)
        });
        response.map(|b| LoggedBody::new(b, pending).holding(guard).boxed())
    }
}

/// `Location` made absolute for the site as the browser reached it: `secure` (TLS, or the trusted
/// proxy's `X-Forwarded-Proto`, as phase 2 found) and the trusted proxy's `X-Forwarded-Host`
/// (or `Host`).
fn absolute_location(
    response: &Response<Body>,
    headers: &http::HeaderMap,
    uri: &http::Uri,
    secure: bool,
) -> Option<HeaderValue> {
    let location = response
        .headers()
        .get(http::header::LOCATION)?
        .to_str()
        .ok()?;
    if !location.starts_with('/') {
        return None;
    }
    let host = portal::request_host(headers, uri, true)?;
    host.parse::<http::uri::Authority>().ok()?;
    let scheme = if secure { "https" } else { "http" };
    HeaderValue::from_str(&format!("{scheme}://{host}{location}")).ok()
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

/// Phase 1: request framing that HTTP/1.1 allows to be read two ways (RFC 9112 §6.1, §6.3). A
/// front proxy and Portcullis reading the body differently is how requests are smuggled, so
/// anything but one plain `Transfer-Encoding: chunked` or one `Content-Length` is refused:
/// both headers together or `Transfer-Encoding` twice is 400; a coding other than chunked is
/// 501.
fn check_framing<B>(req: &Request<B>) -> Result<(), Refusal> {
    if req.version() >= http::Version::HTTP_2 {
        return Ok(());
    }
    let bad = |detail: &str| Err(Refusal::new(Reason::BadRequest).with_detail(detail.to_owned()));
    if req.extensions().get::<AmbiguousFraming>().is_some() {
        return bad("both Content-Length and Transfer-Encoding are sent (RFC 9112 §6.3)");
    }
    let mut te = req
        .headers()
        .get_all(http::header::TRANSFER_ENCODING)
        .iter();
    let Some(first) = te.next() else {
        return Ok(());
    };
    if te.next().is_some() {
        return bad("Transfer-Encoding is sent more than once");
    }
    if req.headers().contains_key(http::header::CONTENT_LENGTH) {
        return bad("both Content-Length and Transfer-Encoding are sent (RFC 9112 §6.3)");
    }
    let value = first.to_str().unwrap_or("").trim();
    if value.eq_ignore_ascii_case("chunked") {
        return Ok(());
    }
    let last = value.rsplit(',').next().unwrap_or("").trim();
    if last.eq_ignore_ascii_case("chunked") {
        return Err(Refusal::new(Reason::NotImplemented).with_detail(format!(
            "Transfer-Encoding: {value}: only chunked is accepted"
        )));
    }
    bad("Transfer-Encoding does not end with chunked, so the body has no length")
}

/// The parts of the request a refusal response needs.
struct RequestFacts<'a> {
    method: &'a str,
    path: &'a str,
    accept: Option<&'a HeaderValue>,
}
