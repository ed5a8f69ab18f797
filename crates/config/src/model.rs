//! The validated configuration: what the rest of Portcullis runs on.
//!
//! Everything here has been checked and resolved (relative paths joined to the config file's
//! folder, durations parsed, patterns compiled); code that receives a [`Config`] never has to
//! validate again.

use std::borrow::Cow;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use policy::{AuthPolicy, PathPattern, Scheme};

/// A complete, valid configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from (`None` for built-in configs such as the demo's).
    pub source: Option<PathBuf>,
    /// `[server]`.
    pub server: Server,
    /// `[auth]`.
    pub auth: Auth,
    /// `[errors]`.
    pub errors: Errors,
    /// `[log]`.
    pub log: Log,
    /// `[ip]` (open when absent).
    pub ip: policy::IpPolicy,
    /// `[[rule]]` entries, in file order.
    pub rules: Vec<policy::Rule>,
    /// `[filter]`.
    pub filter: Option<Filter>,
    /// `[dynamic]`.
    pub dynamic: Dynamic,
    /// `[logon]`.
    pub logon: Logon,
    /// `[state]`.
    pub state: State,
    /// `[admin]`.
    pub admin: Admin,
    /// `[portal]`.
    pub portal: Portal,
    /// `[mail]`.
    pub mail: Option<Mail>,
    /// `[ldap]`, when `auth.users` is a directory.
    pub ldap: Option<Ldap>,
    /// `[oidc]`, when the `oidc` scheme is on.
    pub oidc: Option<Oidc>,
    /// `[forward_auth]`.
    pub forward_auth: ForwardAuth,
    /// Problems that do not stop the gateway (e.g. a rule shadowed by another), with lines.
    pub warnings: Vec<crate::Diagnostic>,
}

impl Config {
    /// The pure policy of this configuration.
    pub fn policy(&self) -> policy::Policy {
        policy::Policy {
            trusted_proxies: self.server.trusted_proxies.clone(),
            ip: self.ip.clone(),
            auth: self.auth.policy(),
            rules: policy::RuleSet::new(
                self.rules
                    .iter()
                    .map(|r| policy::Rule {
                        path: if self.auth.case_insensitive_paths {
                            r.path.to_lowercase()
                        } else {
                            r.path.clone()
                        },
                        ..r.clone()
                    })
                    .collect(),
                self.auth.acl_status,
            ),
            case_insensitive_paths: self.auth.case_insensitive_paths,
        }
    }
}

/// `[filter]`: an external authorization service (phase 7).
#[derive(Debug, Clone)]
pub struct Filter {
    /// `url`: `http://host:port/path`, called for every request that reaches phase 7.
    pub url: http::Uri,
    /// `timeout` (default 2 s).
    pub timeout: Duration,
    /// `on_error`: what a timeout or failure means (default closed: 503 `filter_unavailable`).
    pub on_error: FailMode,
}

/// What to do when a dependency fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailMode {
    /// Refuse (503).
    #[default]
    Closed,
    /// Let the request through and log loudly.
    Open,
}

/// `[server]`: listeners and the upstream.
#[derive(Debug, Clone)]
pub struct Server {
    /// `listen`: addresses to accept on (at least one).
    pub listen: Vec<SocketAddr>,
    /// `upstream`: where allowed requests go; `None` for a forward-auth-only deployment.
    pub upstream: Option<Upstream>,
    /// `tls`: serve HTTPS (h2 and http/1.1 by ALPN) with these PEM files.
    pub tls: Option<Tls>,
    /// `header_timeout` (default 10 s): time allowed to send the request head.
    pub header_timeout: Duration,
    /// `upstream_timeout` (default 60 s): time the upstream has to start its response → 504.
    pub upstream_timeout: Duration,
    /// `connect_timeout` (default 5 s): time to open an upstream connection → 502.
    pub connect_timeout: Duration,
    /// `drain_timeout` (default 30 s): how long requests in flight may finish after SIGTERM.
    pub drain_timeout: Duration,
    /// `forwarded_header`: which header of a trusted proxy names the client.
    pub forwarded_header: ForwardedHeader,
    /// `workers` (default: the CPUs this process may run on): async worker threads.
    pub workers: Option<usize>,
    /// `trusted_proxies`: peers whose `Forwarded` / `X-Forwarded-For` is believed.
    pub trusted_proxies: policy::IpSet,
    /// `idle_timeout` (default 60 s): a keep-alive connection idle this long between requests
    /// is closed.
    pub idle_timeout: Duration,
    /// `backlog` (default 4096, capped by the kernel's `somaxconn`): connections waiting to be
    /// accepted.
    pub backlog: u32,
    /// `max_connections` (default: sized from the open-file limit at start): open client
    /// connections; beyond it new connections are closed at once.
    pub max_connections: Option<usize>,
    /// `upstream_max_connections` (default: the open-file limit left after `max_connections`
    /// and a reserve): requests in flight to the upstream, each holding one connection; more
    /// wait for a free one within `upstream_timeout`.
    pub upstream_max_connections: Option<usize>,
}

/// `[forward_auth]`: how the trusted proxy describes the request it asks about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ForwardAuth {
    /// `headers`: the one header set that is read.
    pub headers: ForwardAuthHeaders,
}

/// `forward_auth.headers`: only this set is read, so a client cannot slip a header of the other
/// set past a proxy that copies client headers into the auth request (Caddy, Traefik).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardAuthHeaders {
    /// `"nginx"` (default): `X-Original-URI`, `X-Original-Method` (nginx's `auth_request` recipe).
    #[default]
    Nginx,
    /// `"forwarded"`: `X-Forwarded-Uri`, `X-Forwarded-Method` (Caddy's `forward_auth`, Traefik's
    /// `ForwardAuth`).
    Forwarded,
}

/// `server.forwarded_header`: the one header a trusted proxy maintains. Only that one is read:
/// most proxies append to `X-Forwarded-For` and pass a client's own `Forwarded` through untouched,
/// so reading both would let a client choose its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardedHeader {
    /// `"x-forwarded-for"` (default): nginx, HAProxy, Caddy, Traefik, cloud load balancers.
    #[default]
    XForwardedFor,
    /// `"forwarded"` (RFC 7239), for proxies configured to maintain it.
    Forwarded,
}

/// An `http://host:port[/base]` upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// `host:port` (port defaulted to 80).
    pub authority: http::uri::Authority,
    /// Path prefix prepended to forwarded paths ("" when none).
    pub base_path: String,
}

/// `tls = { cert = "…", key = "…" }`; both files were found readable and parsed as PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// `client_ca`: the CA certificates client certificates must chain to (PEM).
    pub client_ca: Option<PathBuf>,
    /// `client_auth` (default "optional" with a `client_ca`).
    pub client_auth: ClientAuth,
    /// `crl`: certificate revocation lists of the client CA (PEM).
    pub crl: Option<PathBuf>,
}

/// `server.tls.client_auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// No client certificates asked for.
    #[default]
    Off,
    /// Asked for: a valid one signs the user in, none lets the other schemes decide, an invalid
    /// one is refused (403.13/.16/.17).
    Optional,
    /// Every request needs a valid one (403.7 without).
    Required,
}

/// `auth.certificate_user`: what names the user of a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CertificateUser {
    /// The subject's common name.
    #[default]
    Cn,
    /// The e-mail address (subjectAltName rfc822Name, or the subject's emailAddress).
    Email,
}

/// Where users come from (`auth.users`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserSource {
    /// An Apache htpasswd file.
    Htpasswd(PathBuf),
    /// Users defined in code (the demo): user name and hash string.
    Inline(Vec<(String, String)>),
    /// A SQLite user database (`sqlite:PATH`), managed with `portcullis users`.
    Sqlite(PathBuf),
    /// An LDAP directory (`ldap://host[:port]` or `ldaps://…`), with `[ldap]`.
    Ldap(String),
    /// A PostgreSQL user database (`postgres://…`): the SQLite store's schema and features,
    /// shared by several instances.
    Postgres(String),
}

impl UserSource {
    /// Whether users live in a user database Portcullis manages (SQLite or PostgreSQL): groups,
    /// e-mail, TOTP, links and API tokens are kept there.
    #[must_use]
    pub fn is_database(&self) -> bool {
        matches!(self, UserSource::Sqlite(_) | UserSource::Postgres(_))
    }
}

/// `[ldap]`: how to search and bind in the directory `auth.users` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ldap {
    /// `preset`: "openldap" (default), "active_directory" or "freeipa" (defaults of the keys below).
    pub preset: LdapPreset,
    /// `bind_dn`: the service account (`None`: an anonymous search).
    pub bind_dn: Option<String>,
    /// `bind_password_file`: its password (first line).
    pub bind_password_file: Option<PathBuf>,
    /// `base_dn`: where users and groups are searched (required).
    pub base_dn: String,
    /// `user_filter` (with `{user}`).
    pub user_filter: String,
    /// `group_filter` (with `{dn}` or `{user}`); `None`: the entry's `memberOf`.
    pub group_filter: Option<String>,
    /// `group_name_attribute` (default "cn").
    pub group_name_attribute: String,
    /// `email_attribute` (default "mail").
    pub email_attribute: String,
    /// `name_attribute` (default "displayName").
    pub name_attribute: String,
    /// `starttls` (default false; refused with `ldaps://`).
    pub starttls: bool,
    /// `ca`: a private CA (PEM) for `ldaps://` or StartTLS.
    pub ca: Option<PathBuf>,
    /// `timeout` (default 5 s): every operation's limit, and a whole check's.
    pub timeout: Duration,
    /// `pool` (default 10): most connections open at once.
    pub pool: u32,
    /// `second_factors`: a user database (`sqlite:PATH` or `postgres://…`) that keeps the
    /// directory users' TOTP second factors (`portcullis users totp enable USER`).
    pub second_factors: Option<UserSource>,
}

/// `[oidc]`: "sign in with" an OpenID Connect provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Oidc {
    /// `name`: what the button says ("Sign in with NAME"); default "the identity provider".
    pub name: String,
    /// `issuer`: the provider's issuer URL (discovery at `/.well-known/openid-configuration`).
    pub issuer: String,
    /// `client_id`.
    pub client_id: String,
    /// `client_secret_file`: the client secret (first line).
    pub client_secret_file: PathBuf,
    /// `scopes` (default `["openid", "profile", "email"]`; `openid` always).
    pub scopes: Vec<String>,
    /// `user_claim` (default `"preferred_username"`).
    pub user_claim: String,
    /// `groups_claim` (default `"groups"`).
    pub groups_claim: String,
    /// `allowed_groups`: when set, only members of one of them may sign in.
    pub allowed_groups: Vec<String>,
}

/// `ldap.preset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LdapPreset {
    /// OpenLDAP with the memberof overlay.
    #[default]
    OpenLdap,
    /// Microsoft Active Directory.
    ActiveDirectory,
    /// FreeIPA (389 Directory Server).
    FreeIpa,
}

/// `[auth]`.
#[derive(Debug, Clone)]
pub struct Auth {
    /// `realm` (default "Restricted area").
    pub realm: String,
    /// `schemes` (default ["basic"]).
    pub schemes: Vec<Scheme>,
    /// `users`: required.
    pub users: UserSource,
    /// `public`: paths that need no credentials.
    pub public: Vec<PathPattern>,
    /// `acl_status`: 401 (default) or 403.
    pub acl_status: u16,
    /// `cache_ttl` (default 5 min; "0s" disables the verification cache).
    pub cache_ttl: Duration,
    /// `forward_authorization` (default false): pass the client's `Authorization` upstream.
    pub forward_authorization: bool,
    /// `groups`: an Apache AuthGroupFile (`group: alice bob`).
    pub groups: Option<PathBuf>,
    /// `path_case = "insensitive"` (default "sensitive"): match rules and public paths ignoring case.
    pub case_insensitive_paths: bool,
    /// `verify_queue_timeout` (default 2 s): a password check that would wait longer than this
    /// for the hashing workers is answered `503 verifier_busy`.
    pub verify_queue_timeout: Duration,
    /// `[auth.digest]`, when the `digest` scheme is on.
    pub digest: Option<Digest>,
    /// `[auth.jwt]`: bearer JWTs from an identity provider.
    pub jwt: Option<Jwt>,
    /// `certificate_user` (default "cn").
    pub certificate_user: CertificateUser,
}

/// `[auth.jwt]`: JWTs from an external issuer, checked with its published keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jwt {
    /// `issuer`: the `iss` every token must carry.
    pub issuer: String,
    /// `audience`: the `aud` values accepted (a token must name one).
    pub audience: Vec<String>,
    /// `jwks`: where the signing keys are.
    pub jwks: JwksSource,
    /// `algorithms` (default `["RS256", "ES256", "EdDSA"]`; never `none` or HMAC).
    pub algorithms: Vec<String>,
    /// `leeway` (default 60 s) for `exp` and `nbf`.
    pub leeway: Duration,
    /// `user_claim` (default `"sub"`).
    pub user_claim: String,
    /// `groups_claim` (default `"groups"`).
    pub groups_claim: String,
}

/// `auth.jwt.jwks`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// `https://…` (or `http://` on a loopback address): fetched, and again for an unknown `kid`.
    Url(String),
    /// A JWKS file (read at start and at each reload).
    File(PathBuf),
}

/// `[auth.digest]`: RFC 7616 Digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    /// `users`: an Apache htdigest file (`user:realm:HA1`, MD5 or 64-hex SHA-256 HA1); `None`:
    /// the SQLite user database (`auth.users = "sqlite:…"`), where `users passwd` stores them.
    pub users: Option<PathBuf>,
    /// `algorithms` (default `["SHA-256", "MD5"]`), challenged in this order.
    pub algorithms: Vec<policy::DigestAlgorithm>,
    /// `nonce_ttl` (default 5 min): how long a nonce is accepted.
    pub nonce_ttl: Duration,
}

impl Auth {
    /// The realm whose Digest HA1 values the SQLite user database keeps (set with each
    /// password): `Some` while `digest` is on without an htdigest file.
    pub fn digest_realm_in_database(&self) -> Option<&str> {
        let on = self.schemes.contains(&Scheme::Digest)
            && self.users.is_database()
            && self.digest.as_ref().is_some_and(|d| d.users.is_none());
        on.then_some(self.realm.as_str())
    }

    /// The pure policy for phase 5.
    pub fn policy(&self) -> AuthPolicy {
        let lower = |p: &PathPattern| {
            if self.case_insensitive_paths {
                p.to_lowercase()
            } else {
                p.clone()
            }
        };
        AuthPolicy {
            realm: self.realm.clone(),
            schemes: self.schemes.clone(),
            public: self.public.iter().map(lower).collect(),
        }
    }
}

/// `errors.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ErrorMode {
    /// Everyone gets the friendly page.
    Custom,
    /// Everyone gets the detailed page (sub-status, rule, address as seen).
    Detailed,
    /// Loopback clients get the detailed page, others the friendly one (IIS default).
    #[default]
    DetailedLocalOnly,
}

/// `errors.upstream_401`: what to do with the application's own 401 (IIS `existingResponse`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Upstream401 {
    /// Send the application's response unchanged.
    #[default]
    PassThrough,
    /// Send our page, keeping the application's `WWW-Authenticate`.
    Replace,
}

/// `[errors]`.
#[derive(Debug, Clone, Default)]
pub struct Errors {
    /// `mode`.
    pub mode: ErrorMode,
    /// `pages`: folder with override templates (`401.html`, `401.1.html`, …).
    pub pages: Option<PathBuf>,
    /// `upstream_401`.
    pub upstream_401: Upstream401,
}

/// Where the access log goes (`log.access`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    /// `"off"`: no access log.
    Off,
    /// `"-"`: standard output (the default).
    Stdout,
    /// A file, appended to.
    File(PathBuf),
}

/// `log.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// W3C extended log format with IIS field names (default).
    #[default]
    W3c,
    /// One JSON object per line.
    Json,
}

/// `[log]`.
#[derive(Debug, Clone)]
pub struct Log {
    /// `access`.
    pub access: AccessLogTarget,
    /// `format`.
    pub format: LogFormat,
    /// `audit`: JSON-lines audit trail of sign-ins, lockouts and reloads (none when absent).
    pub audit: Option<PathBuf>,
}

/// `[dynamic]`: IIS Dynamic IP Restrictions (phase 4), per client address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dynamic {
    /// `deny_by_concurrent = { enabled, max_concurrent }`: `Some(max)` when enabled (IIS default 5).
    pub max_concurrent: Option<u32>,
    /// `deny_by_rate = { enabled, max_requests, interval }`: `Some` when enabled (IIS default 20 per 200ms).
    pub rate: Option<(u32, Duration)>,
    /// `deny_action` (default forbidden).
    pub deny_action: policy::DenyAction,
    /// `logging_only`: log would-be refusals, refuse nothing.
    pub logging_only: bool,
    /// `ipv6_prefix` (default 64): IPv6 clients are counted per network of this length (limits
    /// and lockout), so one /64 is one client.
    pub ipv6_prefix: u8,
}

impl Default for Dynamic {
    fn default() -> Self {
        Dynamic {
            max_concurrent: None,
            rate: None,
            deny_action: policy::DenyAction::Forbidden,
            logging_only: false,
            ipv6_prefix: 64,
        }
    }
}

/// `[logon]`: brute-force regulation (per client address and per user name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Logon {
    /// `enabled` (default true): count failed logons and ban.
    pub enabled: bool,
    /// `max_failures` (default 5).
    pub max_failures: u32,
    /// `find_time` (default 2m).
    pub find_time: Duration,
    /// `ban_time` (default 5m).
    pub ban_time: Duration,
}

impl Default for Logon {
    fn default() -> Self {
        Logon {
            enabled: true,
            max_failures: 5,
            find_time: Duration::from_secs(120),
            ban_time: Duration::from_secs(300),
        }
    }
}

/// `[state]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// `backend`.
    pub backend: StateBackend,
    /// `on_backend_error` (default closed).
    pub on_backend_error: FailMode,
    /// `timeout` (default 100ms): longest wait for one Redis round trip.
    pub timeout: Duration,
    /// `key_prefix` (default "portcullis:"): namespace of every Redis key.
    pub key_prefix: String,
    /// `ca`: CA certificate(s) (PEM) trusted for TLS to Redis instead of the system's.
    pub ca: Option<PathBuf>,
    /// `cert` and `key`: a client certificate and its key (PEM) for TLS to Redis.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// `password_file`: the Redis password (or `USER:PASSWORD`) on its first line.
    pub password_file: Option<PathBuf>,
}

impl Default for State {
    fn default() -> Self {
        State {
            backend: StateBackend::Memory,
            on_backend_error: FailMode::Closed,
            timeout: Duration::from_millis(100),
            key_prefix: "portcullis:".to_owned(),
            ca: None,
            client_cert: None,
            password_file: None,
        }
    }
}

/// `state.backend`.
///
/// `Debug` and `Display` mask the password of a Redis URL, so the value can be logged.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum StateBackend {
    /// `"memory"` (default).
    #[default]
    Memory,
    /// `"redis://…"`, `"rediss://…"` or `"redis+unix:///…"`, as written (password included:
    /// show it with `Display`, which masks the password).
    Redis(String),
}

impl fmt::Display for StateBackend {
    /// `memory`, or the URL with its password replaced by `****`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateBackend::Memory => f.write_str("memory"),
            StateBackend::Redis(url) => f.write_str(&mask_password(url)),
        }
    }
}

impl fmt::Debug for StateBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateBackend::Memory => f.write_str("Memory"),
            StateBackend::Redis(url) => f.debug_tuple("Redis").field(&mask_password(url)).finish(),
        }
    }
}

/// `url` with the password of its user information (`user:PASSWORD@`) replaced by `****`;
/// user information without a `:` is masked whole (it may be a bare password). Works on text
/// that is not a valid URL too, so messages about a bad URL never show its password.
pub(crate) fn mask_password(url: &str) -> Cow<'_, str> {
    let start = url.find("//").map_or(0, |i| i + 2);
    let rest = &url[start..];
    // The last '@': a password may hold '/', '?' or an unencoded '@'.
    let Some(at) = rest.rfind('@') else {
        return Cow::Borrowed(url);
    };
    let masked = match rest[..at].split_once(':') {
        Some((user, _)) => format!("{user}:****"),
        None if at == 0 => String::new(),
        None => "****".to_owned(),
    };
    Cow::Owned(format!("{}{masked}{}", &url[..start], &rest[at..]))
}

/// `[admin]`: the operator's listener (never the public one).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Admin {
    /// `listen` (no admin listener when absent).
    pub listen: Option<SocketAddr>,
}

/// `[portal]`: the sign-in pages and sessions of the `form` scheme, and account links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Portal {
    /// `prefix` (default `/.portcullis`): where the portal's pages live, on every host.
    pub prefix: String,
    /// `idle_timeout` (default 30m): a session unused this long ends.
    pub idle_timeout: Duration,
    /// `max_age` (default 12h): a session ends this long after sign-in, used or not.
    pub max_age: Duration,
    /// `public_url`: the site's address as people reach it (`https://example.com`), for the
    /// links `users invite` and `users reset` print and mail.
    pub public_url: Option<String>,
    /// `invite_ttl` (default 24h): how long an invitation link works.
    pub invite_ttl: Duration,
    /// `reset_ttl` (default 1h): how long a password-reset link works.
    pub reset_ttl: Duration,
    /// `max_sessions_per_user` (default 10): a new sign-in beyond it ends the user's oldest
    /// session.
    pub max_sessions_per_user: u32,
}

impl Default for Portal {
    fn default() -> Self {
        Portal {
            prefix: "/.portcullis".to_owned(),
            idle_timeout: Duration::from_secs(30 * 60),
            max_age: Duration::from_secs(12 * 60 * 60),
            public_url: None,
            invite_ttl: Duration::from_secs(24 * 60 * 60),
            reset_ttl: Duration::from_secs(60 * 60),
            max_sessions_per_user: 10,
        }
    }
}

/// `[mail]`: the SMTP server that sends invitation and reset links.
#[derive(Clone, PartialEq, Eq)]
pub struct Mail {
    /// `host`.
    pub host: String,
    /// `port` (default 587 with STARTTLS, 25 without).
    pub port: u16,
    /// `from`: the sender address (`Portcullis <noreply@example.com>`).
    pub from: String,
    /// `starttls` (default true): upgrade the connection before sending anything.
    pub starttls: bool,
    /// `username` and `password`: SMTP AUTH, when both are set.
    pub credentials: Option<(String, String)>,
    /// `ca`: a PEM file of CA certificates to trust for the SMTP server's certificate (a
    /// private CA), besides the public web roots.
    pub ca: Option<std::path::PathBuf>,
}

impl fmt::Debug for Mail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mail")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("from", &self.from)
            .field("starttls", &self.starttls)
            .field("credentials", &self.credentials.as_ref().map(|(u, _)| u))
            .field("ca", &self.ca)
            .finish()
    }
}
