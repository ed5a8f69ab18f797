//! Users in an LDAP directory (OpenLDAP, Active Directory, FreeIPA): `auth.users = "ldap://…"`.
//!
//! A password is checked the way every directory-backed web server does it (Apache's
//! mod_authnz_ldap, Authelia): the service account searches for the user's entry with
//! `user_filter`, then the entry's DN is bound with the password. Groups come from the entry's
//! `memberOf` values or from a group search, e-mail and display name from attributes.
//!
//! What a client sends is hostile here too:
//!
//! * the user name goes into the filter escaped per RFC 4515 (`*`, `(`, `)`, `\`, NUL), so
//!   `*` or `alice)(uid=*` can never match another entry, and it must equal, byte for byte,
//!   a value of an attribute the filter matched it against (`uid` in `(uid={user})`): LDAP
//!   matching ignores case, and `ALICE` would otherwise sign in as alice under another name,
//!   past per-user rules and lockouts;
//! * an empty password is refused without asking: a simple bind with a DN and no password is an
//!   *unauthenticated* bind (RFC 4513 §5.1.2), which many directories answer with success;
//! * an unknown user costs the same round trips as a wrong password (a bind of a DN that does
//!   not exist), so the time taken does not tell which names exist.
//!
//! Every operation runs under `timeout`, and a whole check (waiting for a pooled connection
//! included) too: a directory that hangs costs each request at most `timeout`, and a directory
//! that does not answer is [`DirectoryError::Unavailable`] (503 `directory_unavailable`), never
//! a refused password. Connections are pooled (at most `pool`), bound as the service account;
//! one that failed is dropped and the next check opens a new one, so a directory that comes
//! back is used again without a restart.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, LdapError, Scope, SearchEntry, SearchOptions};
use tokio::sync::Semaphore;

/// The longest user name sent to the directory.
pub const MAX_USER_BYTES: usize = 256;

/// LDAP result codes that mean "these credentials are not good" (RFC 4511 appendix A).
const INVALID_CREDENTIALS: u32 = 49;
const INAPPROPRIATE_AUTHENTICATION: u32 = 48;
const UNWILLING_TO_PERFORM: u32 = 53;
const INSUFFICIENT_ACCESS: u32 = 50;
const SIZE_LIMIT_EXCEEDED: u32 = 4;
const NO_SUCH_OBJECT: u32 = 32;
const REFERRAL: u32 = 10;

/// Where a user's groups come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupLookup {
    /// The user entry's `memberOf` values (OpenLDAP's memberof overlay, Active Directory,
    /// FreeIPA): the group name is the `group_name_attribute` of each DN's first RDN.
    MemberOf,
    /// A search under `base_dn` with this filter (`{dn}`: the user's DN, `{user}`: the user
    /// name, both escaped); the name is each group's `group_name_attribute`.
    Search(String),
}

/// What the gateway needs to know to talk to a directory (`auth.users` and `[ldap]`).
#[derive(Clone, PartialEq, Eq)]
pub struct DirectoryConfig {
    /// `ldap://host[:port]` or `ldaps://host[:port]`.
    pub url: String,
    /// The service account's DN.
    pub bind_dn: String,
    /// The service account's password (read from `bind_password_file`).
    pub bind_password: String,
    /// Where users (and groups) are searched.
    pub base_dn: String,
    /// The user search filter, with `{user}` where the (escaped) name goes.
    pub user_filter: String,
    /// Where groups come from.
    pub groups: GroupLookup,
    /// The attribute that names a group (`cn`).
    pub group_name_attribute: String,
    /// The e-mail attribute (`mail`).
    pub email_attribute: String,
    /// The display-name attribute (`displayName`).
    pub name_attribute: String,
    /// StartTLS on an `ldap://` connection.
    pub starttls: bool,
    /// A private CA (PEM) the directory's certificate must chain to; `None`: the system's roots.
    pub ca: Option<PathBuf>,
    /// Every operation's limit, and a whole check's.
    pub timeout: Duration,
    /// Most connections open at once.
    pub pool: usize,
}

impl std::fmt::Debug for DirectoryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectoryConfig")
            .field("url", &self.url)
            .field("bind_dn", &self.bind_dn)
            .field("bind_password", &"***")
            .field("base_dn", &self.base_dn)
            .field("user_filter", &self.user_filter)
            .field("groups", &self.groups)
            .finish_non_exhaustive()
    }
}

impl DirectoryConfig {
    /// The attributes the user filter compares `{user}` with (`uid` in `(uid={user})`,
    /// `sAMAccountName` and `userPrincipalName` in an Active Directory filter): a found entry
    /// must have one of them equal to the name as typed.
    #[must_use]
    pub fn user_attributes(&self) -> Vec<String> {
        user_attributes(&self.user_filter)
    }

    /// The user filter for `user` (escaped).
    #[must_use]
    pub fn user_filter_for(&self, user: &str) -> String {
        fill(&self.user_filter, &[("{user}", &ldap3::ldap_escape(user))])
    }
}

/// `template` with each placeholder replaced by its value, in one pass: a value that contains
/// a placeholder (a DN with `{user}` in it) is not filled in again.
#[must_use]
pub fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    'scan: while !rest.is_empty() {
        for (name, value) in values {
            if let Some(after) = rest.strip_prefix(name) {
                out.push_str(value);
                rest = after;
                continue 'scan;
            }
        }
        let mut chars = rest.chars();
        if let Some(c) = chars.next() {
            out.push(c);
        }
        rest = chars.as_str();
    }
    out
}

/// The attribute names `ATTR` of each `(ATTR={user})` in `filter`.
#[must_use]
pub fn user_attributes(filter: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (at, _) in filter.match_indices("={user})") {
        let before = &filter[..at];
        let start = before.rfind('(').map_or(0, |i| i + 1);
        let attr = before[start..].trim();
        // `(member:1.2.840.113556.1.4.1941:={user})`: an extensible match names no plain
        // attribute to compare with.
        if !attr.is_empty()
            && attr
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b';')
            && !out.iter().any(|a| a.eq_ignore_ascii_case(attr))
        {
            out.push(attr.to_owned());
        }
    }
    out
}

/// A user as the directory describes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryEntry {
    /// The entry's DN.
    pub dn: String,
    /// The group names.
    pub groups: Vec<String>,
    /// The first e-mail address.
    pub email: Option<String>,
    /// The display name.
    pub name: Option<String>,
}

/// Why the directory gave no answer.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DirectoryError {
    /// Unreachable, too slow, or it answered with an error that is not about the user.
    #[error("the directory {url} did not answer: {why}")]
    Unavailable {
        /// The directory.
        url: String,
        /// What happened.
        why: String,
    },
}

/// What a password check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectoryCheck {
    /// The user exists and the bind with the password succeeded.
    Accepted(DirectoryEntry),
    /// Unknown user, ambiguous name, or wrong password (deliberately alike).
    Refused,
}

/// What [`Directory::probe`] found, for the start-up log and `doctor`-style diagnostics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// How long connecting and binding as the service account took.
    pub bind_time: Duration,
    /// Groups visible under `base_dn` (at most [`PROBE_GROUP_LIMIT`] counted).
    pub groups: usize,
    /// Users the user filter matches (at most [`PROBE_GROUP_LIMIT`] counted).
    pub users: usize,
}

/// How long `users list` may take in all (each page still within `ldap.timeout`).
const LIST_DEADLINE: Duration = Duration::from_secs(300);
/// Entries per page when listing (RFC 2696 simple paged results; Active Directory's
/// MaxPageSize is 1,000).
const LIST_PAGE: i32 = 500;

/// Most entries [`Directory::probe`] counts.
pub const PROBE_GROUP_LIMIT: i32 = 1000;

/// Counters for the metrics endpoint.
#[derive(Debug, Default)]
pub struct DirectoryStats {
    /// Operations (search, bind) that got an answer.
    pub ok: AtomicU64,
    /// Operations that failed (timeout, connection error, unexpected result).
    pub errors: AtomicU64,
    /// Total microseconds operations took (answered or not).
    pub micros: AtomicU64,
    /// Connections opened.
    pub connects: AtomicU64,
    /// Connections checked out right now.
    pub in_use: AtomicUsize,
}

/// A connection bound as the service account.
struct Conn {
    ldap: Ldap,
    /// When it last did something: one idle for longer than [`MAX_IDLE`] is closed rather than
    /// reused (a firewall may have dropped it without a word, and a check on it would wait the
    /// whole timeout).
    used: Instant,
}

/// How long a pooled connection may stay idle and still be used.
const MAX_IDLE: Duration = Duration::from_secs(60);

/// An LDAP directory of users; share it in an `Arc`.
pub struct Directory {
    config: DirectoryConfig,
    user_attributes: Vec<String>,
    tls: Option<Arc<rustls::ClientConfig>>,
    idle: Mutex<Vec<Conn>>,
    permits: Semaphore,
    stats: DirectoryStats,
    /// Groups by user, from the last check or lookup (refreshed after `cache_ttl`).
    entries: moka::sync::Cache<String, Arc<DirectoryEntry>>,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory")
            .field("url", &self.config.url)
            .field("base_dn", &self.config.base_dn)
            .finish_non_exhaustive()
    }
}

/// Why a [`Directory`] could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SetupError(String);

/// A private CA as a rustls client configuration (ring provider).
fn tls_config(ca: Option<&PathBuf>) -> Result<Option<Arc<rustls::ClientConfig>>, SetupError> {
    let Some(path) = ca else { return Ok(None) };
    let pem = std::fs::read(path)
        .map_err(|e| SetupError(format!("cannot read {}: {e}", path.display())))?;
    let mut roots = rustls::RootCertStore::empty();
    let mut reader = std::io::BufReader::new(&pem[..]);
    let mut added = 0;
    for cert in rustls_pemfile_certs(&mut reader) {
        roots
            .add(cert)
            .map_err(|e| SetupError(format!("{}: {e}", path.display())))?;
        added += 1;
    }
    if added == 0 {
        return Err(SetupError(format!(
            "{} holds no PEM certificate",
            path.display()
        )));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SetupError(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Some(Arc::new(config)))
}

/// The certificates of a PEM file.
fn rustls_pemfile_certs(
    reader: &mut dyn std::io::BufRead,
) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject as _;
    let mut text = Vec::new();
    if reader.read_to_end(&mut text).is_err() {
        return Vec::new();
    }
    rustls::pki_types::CertificateDer::pem_slice_iter(&text)
        .filter_map(Result::ok)
        .collect()
}

/// Whether a user name can be sent to the directory at all.
fn plausible_user(user: &str) -> bool {
    !user.is_empty() && user.len() <= MAX_USER_BYTES && !user.chars().any(char::is_control)
}

/// The value of `attr` (case-insensitive name) in `entry`, first one.
fn first_value<'e>(entry: &'e SearchEntry, attr: &str) -> Option<&'e str> {
    entry
        .attrs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(attr))
        .and_then(|(_, v)| v.first())
        .map(String::as_str)
}

/// Every value of `attr` (case-insensitive name) in `entry`.
fn values<'e>(entry: &'e SearchEntry, attr: &str) -> impl Iterator<Item = &'e str> {
    entry
        .attrs
        .iter()
        .filter(move |(k, _)| k.eq_ignore_ascii_case(attr))
        .flat_map(|(_, v)| v.iter().map(String::as_str))
}

/// The value of the first RDN of `dn` when its attribute is `attr` (`cn=admins,ou=groups,…`
/// → `admins`), with RFC 4514 escapes undone.
#[must_use]
pub fn first_rdn_value(dn: &str, attr: &str) -> Option<String> {
    let (name, rest) = dn.split_once('=')?;
    if !name.trim().eq_ignore_ascii_case(attr) {
        return None;
    }
    let mut out = Vec::new();
    let mut bytes = rest.bytes().peekable();
    while let Some(b) = bytes.next() {
        match b {
            b',' | b'+' => break,
            b'\\' => {
                let Some(next) = bytes.next() else { break };
                if next.is_ascii_hexdigit()
                    && let Some(&low) = bytes.peek()
                    && low.is_ascii_hexdigit()
                {
                    bytes.next();
                    let hex = [next, low];
                    let text = std::str::from_utf8(&hex).ok()?;
                    out.push(u8::from_str_radix(text, 16).ok()?);
                } else {
                    out.push(next);
                }
            }
            _ => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

/// Whether `dn` is `base` or below it (compared ignoring case and spaces around separators).
#[must_use]
pub fn under(dn: &str, base: &str) -> bool {
    let norm = |s: &str| -> String {
        s.split(',')
            .map(|rdn| {
                rdn.split('=')
                    .map(str::trim)
                    .collect::<Vec<_>>()
                    .join("=")
                    .to_ascii_lowercase()
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    let (dn, base) = (norm(dn), norm(base));
    base.is_empty() || dn == base || dn.ends_with(&format!(",{base}"))
}

/// A group name Portcullis passes on: not empty, no comma, no control characters, no spaces
/// at its ends.
fn usable_group_name(name: &str) -> bool {
    !name.is_empty()
        && !name.contains(',')
        && !name.chars().any(char::is_control)
        && name.trim() == name
}

impl Directory {
    /// A directory client; nothing is sent until the first check (see [`Directory::probe`]).
    ///
    /// # Errors
    /// [`SetupError`] when the CA file cannot be used.
    pub fn new(config: DirectoryConfig, cache_ttl: Duration) -> Result<Self, SetupError> {
        let tls = tls_config(config.ca.as_ref())?;
        let user_attributes = config.user_attributes();
        Ok(Self {
            permits: Semaphore::new(config.pool.max(1)),
            user_attributes,
            tls,
            idle: Mutex::new(Vec::new()),
            stats: DirectoryStats::default(),
            entries: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(cache_ttl.max(Duration::from_secs(1)))
                .build(),
            config,
        })
    }

    /// The configuration in force.
    #[must_use]
    pub fn config(&self) -> &DirectoryConfig {
        &self.config
    }

    /// The counters.
    #[must_use]
    pub fn stats(&self) -> &DirectoryStats {
        &self.stats
    }

    /// The entry of `user` seen by the last check or lookup within the cache time.
    #[must_use]
    pub fn cached_entry(&self, user: &str) -> Option<Arc<DirectoryEntry>> {
        self.entries.get(user)
    }

    /// Forgets every cached entry (on reload).
    pub fn forget_entries(&self) {
        self.entries.invalidate_all();
    }

    fn unavailable(&self, why: impl std::fmt::Display) -> DirectoryError {
        DirectoryError::Unavailable {
            url: self.config.url.clone(),
            why: why.to_string(),
        }
    }

    /// Runs `work` with a pooled connection under the whole-check deadline. A connection that
    /// saw an error is dropped; a check that failed on a reused connection (the directory
    /// restarted and closed it) is tried once more on a new one.
    async fn with_conn(&self, op: Op<'_>) -> Result<Out, DirectoryError> {
        // A listing of every user (the CLI) reads pages, each within ldap.timeout; a check is
        // bounded as a whole.
        let deadline = match op {
            Op::List => LIST_DEADLINE,
            _ => self.config.timeout,
        };
        match tokio::time::timeout(deadline, self.with_conn_inner(op)).await {
            Ok(result) => result,
            Err(_) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                Err(self.unavailable(format!(
                    "no answer within {deadline:?} (ldap.timeout is {:?})",
                    self.config.timeout
                )))
            }
        }
    }

    async fn with_conn_inner(&self, op: Op<'_>) -> Result<Out, DirectoryError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| self.unavailable("the connection pool is closed"))?;
        self.stats.in_use.fetch_add(1, Ordering::Relaxed);
        let _in_use = InUse(&self.stats);
        for attempt in 0..2 {
            let reused = self.take_idle();
            let fresh = reused.is_none();
            let mut conn = match reused {
                Some(c) => c,
                None => self.connect().await?,
            };
            let started = Instant::now();
            let result = self.run(&mut conn.ldap, &op).await;
            self.stats
                .micros
                .fetch_add(elapsed_micros(started), Ordering::Relaxed);
            match result {
                Ok(value) => {
                    self.stats.ok.fetch_add(1, Ordering::Relaxed);
                    self.put_idle(conn);
                    return Ok(value);
                }
                Err(e) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    drop(conn);
                    let retry = attempt == 0 && !fresh && is_connection_error(&e);
                    if !retry {
                        tracing::warn!(url = %self.config.url, error = %e, "directory operation failed");
                        return Err(self.unavailable(e));
                    }
                    tracing::info!(url = %self.config.url, error = %e, "pooled directory connection failed; trying a new one");
                }
            }
        }
        Err(self.unavailable("no connection"))
    }

    fn take_idle(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(mut conn) = idle.pop() {
            if !conn.ldap.is_closed() && conn.used.elapsed() < MAX_IDLE {
                return Some(conn);
            }
        }
        None
    }

    fn put_idle(&self, mut conn: Conn) {
        conn.used = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.config.pool.max(1) {
            idle.push(conn);
        }
    }

    /// Opens a connection and binds it as the service account.
    async fn connect(&self) -> Result<Conn, DirectoryError> {
        let timeout = self.config.timeout;
        let mut settings = LdapConnSettings::new()
            .set_conn_timeout(timeout)
            .set_starttls(self.config.starttls);
        if let Some(tls) = &self.tls {
            settings = settings.set_config(Arc::clone(tls));
        }
        self.stats.connects.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &self.config.url)
            .await
            .map_err(|e| {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(url = %self.config.url, error = %e, "cannot connect to the directory");
                self.unavailable(format!("cannot connect: {e}"))
            })?;
        let url = self.config.url.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.drive().await {
                tracing::debug!(url = %url, error = %e, "directory connection ended");
            }
        });
        let bound = ldap
            .with_timeout(timeout)
            .simple_bind(&self.config.bind_dn, &self.config.bind_password)
            .await;
        self.stats
            .micros
            .fetch_add(elapsed_micros(started), Ordering::Relaxed);
        match bound {
            Ok(r) if r.rc == 0 => {
                self.stats.ok.fetch_add(1, Ordering::Relaxed);
                Ok(Conn {
                    ldap,
                    used: Instant::now(),
                })
            }
            Ok(r) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(url = %self.config.url, bind_dn = %self.config.bind_dn, rc = r.rc, text = %r.text, "the directory refused the service account (ldap.bind_dn, ldap.bind_password_file)");
                Err(self.unavailable(format!(
                    "the service account {} could not bind (result {}: {})",
                    self.config.bind_dn, r.rc, r.text
                )))
            }
            Err(e) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(url = %self.config.url, error = %e, "cannot bind as the service account");
                Err(self.unavailable(format!("cannot bind as the service account: {e}")))
            }
        }
    }

    /// The attributes a user search asks for.
    fn user_search_attributes(&self) -> Vec<String> {
        let mut attrs = self.user_attributes.clone();
        attrs.push(self.config.email_attribute.clone());
        attrs.push(self.config.name_attribute.clone());
        if self.config.groups == GroupLookup::MemberOf {
            attrs.push("memberOf".to_owned());
        }
        attrs
    }

    /// Finds `user`'s entry (`None`: no entry, or more than one).
    async fn find(&self, ldap: &mut Ldap, user: &str) -> Result<Option<SearchEntry>, LdapError> {
        let filter = self.config.user_filter_for(user);
        let attrs = self.user_search_attributes();
        let result = ldap
            .with_timeout(self.config.timeout)
            .with_search_options(SearchOptions::new().sizelimit(2))
            .search(&self.config.base_dn, Scope::Subtree, &filter, attrs)
            .await?;
        let ldap3::SearchResult(found, result) = result;
        // Continuation references (Active Directory's other partitions) are not followed.
        let mut entries: Vec<SearchEntry> = found
            .into_iter()
            .filter(|e| !e.is_ref() && !e.is_intermediate())
            .map(SearchEntry::construct)
            .collect();
        match result.rc {
            0 => {}
            // Only the search base itself can be missing: a wrong ldap.base_dn, a replica still
            // syncing. Not "no such user", which would call every right password wrong.
            NO_SUCH_OBJECT => {
                tracing::error!(base_dn = %self.config.base_dn, "the directory has no entry ldap.base_dn names");
                return Err(LdapError::from(result));
            }
            // The user may be in the server it names: not "no such user", which would call a
            // right password wrong.
            REFERRAL => {
                tracing::warn!(user, refs = ?result.refs, "the directory referred the user search elsewhere; Portcullis does not follow referrals: point auth.users and ldap.base_dn at the server that holds the users");
                return Err(LdapError::from(result));
            }
            SIZE_LIMIT_EXCEEDED => {
                tracing::warn!(
                    user,
                    "ldap.user_filter matches more than one entry for this user name: refused"
                );
                return Ok(None);
            }
            _ => return Err(LdapError::from(result)),
        }
        if entries.len() > 1 {
            tracing::warn!(
                user,
                "ldap.user_filter matches more than one entry for this user name: refused"
            );
            return Ok(None);
        }
        let Some(entry) = entries.pop().filter(|e| !e.dn.is_empty()) else {
            return Ok(None);
        };
        // LDAP compares names ignoring case (and sometimes spaces): the name signed in with
        // must be the entry's own, or `ALICE` would be a second name for alice.
        // A filter that compares {user} with no plain attribute cannot be checked: refused (and
        // check-config says so).
        let exact = self
            .user_attributes
            .iter()
            .any(|a| values(&entry, a).any(|v| v == user));
        if !exact {
            tracing::info!(user, dn = %entry.dn, "the directory entry found names the user differently (case or spacing): refused");
            return Ok(None);
        }
        Ok(Some(entry))
    }

    /// The user's groups and attributes from their entry.
    async fn describe(
        &self,
        ldap: &mut Ldap,
        user: &str,
        entry: SearchEntry,
    ) -> Result<DirectoryEntry, LdapError> {
        let attr = &self.config.group_name_attribute;
        let mut groups: Vec<String> = match &self.config.groups {
            // Only groups under base_dn: a group someone could create elsewhere (a delegated OU
            // of another tree) with a trusted name does not count.
            GroupLookup::MemberOf => values(&entry, "memberOf")
                .filter(|dn| under(dn, &self.config.base_dn))
                .filter_map(|dn| first_rdn_value(dn, attr))
                .collect(),
            GroupLookup::Search(filter) => {
                let filter = fill(
                    filter,
                    &[
                        ("{dn}", &ldap3::ldap_escape(entry.dn.as_str())),
                        ("{user}", &ldap3::ldap_escape(user)),
                    ],
                );
                Self::search_ok(
                    ldap.with_timeout(self.config.timeout)
                        .search(&self.config.base_dn, Scope::Subtree, &filter, vec![attr])
                        .await?,
                )?
                .into_iter()
                .filter_map(|g| first_value(&g, attr).map(str::to_owned))
                .collect()
            }
        };
        // A name with a comma would read as two groups in Remote-Groups; one with spaces at its
        // ends is not the name a rule spells.
        groups.retain(|g| usable_group_name(g));
        groups.sort();
        groups.dedup();
        let email = first_value(&entry, &self.config.email_attribute).map(str::to_owned);
        let name = first_value(&entry, &self.config.name_attribute).map(str::to_owned);
        Ok(DirectoryEntry {
            dn: entry.dn,
            groups,
            email,
            name,
        })
    }

    /// Checks `password` for `user`: search, bind as the entry, rebind as the service account.
    ///
    /// # Errors
    /// [`DirectoryError::Unavailable`] when the directory does not answer in time or fails.
    pub async fn authenticate(
        &self,
        user: &str,
        password: &str,
    ) -> Result<DirectoryCheck, DirectoryError> {
        if !plausible_user(user) || password.is_empty() {
            return Ok(DirectoryCheck::Refused);
        }
        let Out::Check(check) = self.with_conn(Op::Authenticate { user, password }).await? else {
            unreachable!("an authentication answers a check")
        };
        if let DirectoryCheck::Accepted(entry) = &check {
            self.entries
                .insert(user.to_owned(), Arc::new(entry.clone()));
        }
        Ok(check)
    }

    /// The entry of `user` (no password): from the cache, else asked (a signed-in session's
    /// groups, and whether the user still exists).
    ///
    /// # Errors
    /// [`DirectoryError::Unavailable`] when the directory does not answer in time or fails.
    pub async fn lookup(&self, user: &str) -> Result<Option<Arc<DirectoryEntry>>, DirectoryError> {
        if let Some(entry) = self.entries.get(user) {
            return Ok(Some(entry));
        }
        if !plausible_user(user) {
            return Ok(None);
        }
        let Out::Entry(found) = self.with_conn(Op::Lookup { user }).await? else {
            unreachable!("a lookup answers an entry")
        };
        Ok(found.map(|entry| {
            let entry = Arc::new(entry);
            self.entries.insert(user.to_owned(), Arc::clone(&entry));
            entry
        }))
    }

    /// Every user the user filter matches (`{user}` as `*`), with their entries, sorted by name
    /// (`portcullis users list`), read in pages, and whether the directory's size limit cut the
    /// list short. Names are the first user attribute's value (the DN when the
    /// filter names none).
    ///
    /// # Errors
    /// [`DirectoryError::Unavailable`] when the directory does not answer in time or fails.
    pub async fn list(&self) -> Result<(Vec<(String, DirectoryEntry)>, bool), DirectoryError> {
        let Out::List(entries, truncated) = self.with_conn(Op::List).await? else {
            unreachable!("a listing answers a list")
        };
        let mut entries = entries;
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        Ok((entries, truncated))
    }

    /// Binds as the service account and counts the users and groups it can see.
    ///
    /// # Errors
    /// [`DirectoryError::Unavailable`] when the directory does not answer or refuses the account.
    pub async fn probe(&self) -> Result<Probe, DirectoryError> {
        let Out::Probe(probe) = self
            .with_conn(Op::Probe {
                started: Instant::now(),
            })
            .await?
        else {
            unreachable!("a probe answers a probe")
        };
        Ok(probe)
    }

    /// Runs one operation on a connection bound as the service account (and leaves it so).
    async fn run(&self, ldap: &mut Ldap, op: &Op<'_>) -> Result<Out, LdapError> {
        match *op {
            Op::Authenticate { user, password } => {
                let found = self.find(ldap, user).await?;
                let dummy;
                let dn = match &found {
                    Some(e) => e.dn.as_str(),
                    None => {
                        dummy = format!("cn=portcullis-timing-dummy,{}", self.config.base_dn);
                        dummy.as_str()
                    }
                };
                // Bound as the user from here on, whatever the answer: rebind before the
                // connection goes back to the pool.
                let bound = ldap
                    .with_timeout(self.config.timeout)
                    .simple_bind(dn, password)
                    .await?;
                let rebound = ldap
                    .with_timeout(self.config.timeout)
                    .simple_bind(&self.config.bind_dn, &self.config.bind_password)
                    .await?;
                if rebound.rc != 0 {
                    return Err(LdapError::from(rebound));
                }
                let accepted = match bound.rc {
                    0 => true,
                    // 32: a bind DN that does not exist (some servers say so for the dummy DN
                    // of an unknown user): refused like a wrong password, not "unavailable".
                    INVALID_CREDENTIALS
                    | INAPPROPRIATE_AUTHENTICATION
                    | UNWILLING_TO_PERFORM
                    | INSUFFICIENT_ACCESS
                    | NO_SUCH_OBJECT => false,
                    _ => return Err(LdapError::from(bound)),
                };
                Ok(Out::Check(match found {
                    Some(entry) if accepted => {
                        DirectoryCheck::Accepted(self.describe(ldap, user, entry).await?)
                    }
                    _ => DirectoryCheck::Refused,
                }))
            }
            Op::Lookup { user } => Ok(Out::Entry(match self.find(ldap, user).await? {
                Some(entry) => Some(self.describe(ldap, user, entry).await?),
                None => None,
            })),
            Op::List => {
                let filter = self.config.user_filter.replace("{user}", "*");
                let attrs = self.user_search_attributes();
                // Paged: a directory's size limit (Active Directory's 1,000) does not cut the
                // list short.
                let adapters: Vec<Box<dyn ldap3::adapters::Adapter<_, _>>> = vec![
                    Box::new(ldap3::adapters::EntriesOnly::new()),
                    Box::new(ldap3::adapters::PagedResults::new(LIST_PAGE)),
                ];
                let mut stream = ldap
                    .with_timeout(self.config.timeout)
                    .streaming_search_with(
                        adapters,
                        &self.config.base_dn,
                        Scope::Subtree,
                        &filter,
                        attrs,
                    )
                    .await?;
                let mut found = Vec::new();
                while let Some(entry) = stream.next().await? {
                    found.push(SearchEntry::construct(entry));
                }
                let result = stream.finish().await;
                let truncated = result.rc == SIZE_LIMIT_EXCEEDED;
                if !matches!(result.rc, 0 | SIZE_LIMIT_EXCEEDED) {
                    return Err(LdapError::from(result));
                }
                let mut out = Vec::new();
                for entry in found {
                    let name = self
                        .user_attributes
                        .first()
                        .and_then(|a| first_value(&entry, a))
                        .map_or_else(|| entry.dn.clone(), str::to_owned);
                    let described = self.describe(ldap, &name, entry).await?;
                    out.push((name, described));
                }
                Ok(Out::List(out, truncated))
            }
            Op::Probe { started } => {
                let bind_time = started.elapsed();
                let groups = self
                    .count(ldap, "(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames)(objectClass=group)(objectClass=posixGroup))")
                    .await?;
                let users = self
                    .count(ldap, &self.config.user_filter.replace("{user}", "*"))
                    .await?;
                Ok(Out::Probe(Probe {
                    bind_time,
                    groups,
                    users,
                }))
            }
        }
    }

    /// How many entries (at most [`PROBE_GROUP_LIMIT`]) match `filter`.
    async fn count(&self, ldap: &mut Ldap, filter: &str) -> Result<usize, LdapError> {
        let found = Self::search_ok(
            ldap.with_timeout(self.config.timeout)
                .with_search_options(SearchOptions::new().sizelimit(PROBE_GROUP_LIMIT))
                .search(&self.config.base_dn, Scope::Subtree, filter, vec!["1.1"])
                .await?,
        )?;
        Ok(found.len())
    }

    /// The entries of a search that succeeded (or stopped at a size limit, or found no base),
    /// without continuation references.
    fn search_ok(result: ldap3::SearchResult) -> Result<Vec<SearchEntry>, LdapError> {
        let ldap3::SearchResult(found, result) = result;
        if !matches!(result.rc, 0 | REFERRAL | SIZE_LIMIT_EXCEEDED) {
            return Err(LdapError::from(result));
        }
        Ok(found
            .into_iter()
            .filter(|e| !e.is_ref() && !e.is_intermediate())
            .map(SearchEntry::construct)
            .collect())
    }
}

/// An operation [`Directory::run`] carries out.
enum Op<'a> {
    Authenticate { user: &'a str, password: &'a str },
    Lookup { user: &'a str },
    List,
    Probe { started: Instant },
}

/// What an [`Op`] found.
enum Out {
    Check(DirectoryCheck),
    Entry(Option<DirectoryEntry>),
    /// The users, and whether the directory's size limit cut the list short.
    List(Vec<(String, DirectoryEntry)>, bool),
    Probe(Probe),
}

/// Releases the "in use" count when a check ends, however it ends.
struct InUse<'a>(&'a DirectoryStats);

impl Drop for InUse<'_> {
    fn drop(&mut self) {
        self.0.in_use.fetch_sub(1, Ordering::Relaxed);
    }
}

fn elapsed_micros(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// Whether `e` says the connection itself is gone (worth one retry on a new one).
fn is_connection_error(e: &LdapError) -> bool {
    matches!(
        e,
        LdapError::Io { .. }
            | LdapError::OpSend { .. }
            | LdapError::ResultRecv { .. }
            | LdapError::EndOfStream
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(filter: &str) -> DirectoryConfig {
        DirectoryConfig {
            url: "ldap://127.0.0.1:1".into(),
            bind_dn: "cn=svc,dc=example,dc=org".into(),
            bind_password: "pw".into(),
            base_dn: "dc=example,dc=org".into(),
            user_filter: filter.into(),
            groups: GroupLookup::MemberOf,
            group_name_attribute: "cn".into(),
            email_attribute: "mail".into(),
            name_attribute: "displayName".into(),
            starttls: false,
            ca: None,
            timeout: Duration::from_secs(1),
            pool: 2,
        }
    }

    #[test]
    fn filter_values_are_escaped() {
        let c = config("(&(objectClass=person)(uid={user}))");
        assert_eq!(
            c.user_filter_for("alice"),
            "(&(objectClass=person)(uid=alice))"
        );
        assert_eq!(c.user_filter_for("*"), "(&(objectClass=person)(uid=\\2a))");
        assert_eq!(
            c.user_filter_for("alice)(uid=*"),
            "(&(objectClass=person)(uid=alice\\29\\28uid=\\2a))"
        );
        assert_eq!(
            c.user_filter_for("a\\b\0"),
            "(&(objectClass=person)(uid=a\\5cb\\00))"
        );
        // The escaped filter still parses, as one equality match.
        assert!(ldap3::parse_filter(c.user_filter_for("alice)(|(uid=*")).is_ok());
    }

    #[test]
    fn placeholders_are_filled_once() {
        assert_eq!(
            fill(
                "(&(member={dn})(uid={user}))",
                &[("{dn}", "cn={user}"), ("{user}", "{dn}")]
            ),
            "(&(member=cn={user})(uid={dn}))"
        );
        assert_eq!(fill("(cn=é{user})", &[("{user}", "ü")]), "(cn=éü)");
    }

    #[test]
    fn user_attributes_come_from_the_filter() {
        assert_eq!(user_attributes("(uid={user})"), ["uid"]);
        assert_eq!(
            user_attributes(
                "(&(objectCategory=person)(|(sAMAccountName={user})(userPrincipalName={user})))"
            ),
            ["sAMAccountName", "userPrincipalName"]
        );
        assert!(user_attributes("(member:1.2.840.113556.1.4.1941:={user})").is_empty());
    }

    #[test]
    fn group_names_from_member_of() {
        assert_eq!(
            first_rdn_value("cn=admins,ou=groups,dc=example,dc=org", "cn").as_deref(),
            Some("admins")
        );
        assert_eq!(
            first_rdn_value("CN=Domain Admins,CN=Users,DC=corp,DC=example", "cn").as_deref(),
            Some("Domain Admins")
        );
        assert_eq!(
            first_rdn_value("cn=a\\2cb\\,c,ou=g", "cn").as_deref(),
            Some("a,b,c")
        );
        assert!(!usable_group_name("a,b,c"));
        assert!(!usable_group_name(" admins"));
        assert!(usable_group_name("Domain Admins"));
        assert!(under(
            "cn=admins,ou=groups,dc=example,dc=org",
            "dc=example,dc=org"
        ));
        assert!(under(
            "CN=Admins, OU=Groups, DC=Example,DC=org",
            "dc=example, dc=org"
        ));
        assert!(!under(
            "cn=admins,ou=groups,dc=evil,dc=org",
            "dc=example,dc=org"
        ));
        assert!(!under("cn=x,dc=notexample,dc=org", "dc=example,dc=org"));
        assert_eq!(first_rdn_value("ou=people,dc=x", "cn"), None);
    }

    #[test]
    fn implausible_names_are_not_sent() {
        assert!(plausible_user("alice"));
        assert!(plausible_user("alice@corp.example"));
        assert!(!plausible_user(""));
        assert!(!plausible_user("a\nb"));
        assert!(!plausible_user(&"a".repeat(MAX_USER_BYTES + 1)));
    }

    #[tokio::test]
    async fn an_unreachable_directory_is_unavailable_within_the_timeout() {
        // A port nothing listens on: refused at once.
        let dir = Directory::new(config("(uid={user})"), Duration::from_secs(60)).unwrap();
        let started = Instant::now();
        let e = dir.authenticate("alice", "pw").await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(e.to_string().contains("ldap://127.0.0.1:1"), "{e}");
        // An empty password is refused without asking anyone.
        assert_eq!(
            dir.authenticate("alice", "").await.unwrap(),
            DirectoryCheck::Refused
        );
    }
}
