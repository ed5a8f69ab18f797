//! The sections that shape the running gateway rather than one request's policy: `[dynamic]`
//! (per-client limits, phase 4), `[logon]` (brute-force regulation), `[state]` (where counters,
//! bans and sessions live) and `[admin]` (the operator's listener).
//!
//! A limiter's values are checked even while it is disabled, so switching it on later cannot
//! reveal an old mistake. Every bound says the range it allows, and a Redis URL's password is
//! never repeated in a message.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use policy::DenyAction;
use toml::de::{DeTable, DeValue};

use super::values::{DAY, Within};
use super::{Checker, Section, Value, parse_listen, type_name};
use crate::diagnostics::suggest;
use crate::model::{Admin, Dynamic, FailMode, Logon, State, StateBackend, mask_password};

/// Keys of `[dynamic]`.
pub(super) const DYNAMIC_KEYS: &[&str] = &[
    "deny_by_concurrent",
    "deny_by_rate",
    "deny_action",
    "logging_only",
    "ipv6_prefix",
];
/// Keys of `dynamic.deny_by_concurrent`.
const CONCURRENT_KEYS: &[&str] = &["enabled", "max_concurrent"];
/// Keys of `dynamic.deny_by_rate`.
const RATE_KEYS: &[&str] = &["enabled", "max_requests", "interval"];
/// Keys of `[logon]`.
pub(super) const LOGON_KEYS: &[&str] = &["enabled", "max_failures", "find_time", "ban_time"];
/// Keys of `[state]`.
pub(super) const STATE_KEYS: &[&str] = &[
    "backend",
    "on_backend_error",
    "timeout",
    "key_prefix",
    "ca",
    "cert",
    "key",
    "password_file",
];
/// Keys of `[admin]`.
pub(super) const ADMIN_KEYS: &[&str] = &["listen"];
/// Values of `state.on_backend_error`.
const ON_BACKEND_ERROR: &[&str] = &["closed", "open"];
/// The URL schemes `state.backend` accepts (longest first, for prefix matching).
const REDIS_SCHEMES: &[&str] = &[
    "rediss+cluster",
    "redis+cluster",
    "rediss+sentinel",
    "redis+sentinel",
    "redis+unix",
    "rediss",
    "redis",
];
/// How a valid `state.backend` looks, for messages.
const BACKEND_EXAMPLE: &str = "\"memory\", \"redis://127.0.0.1:6379/0\", \
     \"rediss://:PASSWORD@redis.internal:6380\", \"redis+unix:///run/redis/redis.sock\" or \"redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/mymaster/0\"";

/// Default `dynamic.deny_by_concurrent.max_concurrent` (IIS).
pub const DEFAULT_MAX_CONCURRENT: u32 = 5;
/// Default `dynamic.deny_by_rate.max_requests` (IIS).
pub const DEFAULT_MAX_REQUESTS: u32 = 20;
/// Default `dynamic.deny_by_rate.interval` (IIS).
pub const DEFAULT_RATE_INTERVAL: Duration = Duration::from_millis(200);

impl Checker<'_> {
    /// `[dynamic]`: per-client concurrency and rate limits (both off when absent).
    pub(super) fn dynamic(&mut self, s: &Section<'_, '_>) -> Dynamic {
        let mut out = Dynamic::default();
        if let Some((path, t, enabled)) = self.limiter(
            s,
            "deny_by_concurrent",
            CONCURRENT_KEYS,
            "{ enabled = true, max_concurrent = 5 }",
        ) {
            let max = self.bounded_int(
                &format!("{path}.max_concurrent"),
                t.get("max_concurrent"),
                DEFAULT_MAX_CONCURRENT,
                1..=100_000,
                "requests in flight per client",
            );
            out.max_concurrent = enabled.then_some(max);
        }
        if let Some((path, t, enabled)) = self.limiter(
            s,
            "deny_by_rate",
            RATE_KEYS,
            "{ enabled = true, max_requests = 20, interval = \"200ms\" }",
        ) {
            let max = self.bounded_int(
                &format!("{path}.max_requests"),
                t.get("max_requests"),
                DEFAULT_MAX_REQUESTS,
                1..=1_000_000,
                "requests per client and interval",
            );
            let interval = self.bounded_duration(
                &format!("{path}.interval"),
                t.get("interval"),
                DEFAULT_RATE_INTERVAL,
                &Within {
                    max: DAY,
                    max_text: "24h",
                    example: "200ms",
                    zero: "an interval of 0 counts no requests",
                },
            );
            out.rate = enabled.then_some((max, interval));
        }
        out.deny_action = self
            .choice(s, "deny_action", DenyAction::NAMES)
            .and_then(DenyAction::parse)
            .unwrap_or_default();
        if let Some(v) = s.get("logging_only") {
            out.logging_only = self.boolean(&s.path("logging_only"), v).unwrap_or(false);
        }
        out.ipv6_prefix = self.bounded_int(
            &s.path("ipv6_prefix"),
            s.get("ipv6_prefix"),
            64,
            32..=128,
            "bits of an IPv6 address that name one client",
        ) as u8;
        out
    }

    /// One limiter of `[dynamic]`, an inline table or a `[dynamic.NAME]` sub-table: its key
    /// path, its table (unknown keys already reported) and whether it is enabled.
    fn limiter<'a, 'i>(
        &mut self,
        s: &Section<'a, 'i>,
        name: &str,
        keys: &[&str],
        example: &str,
    ) -> Option<(String, &'a DeTable<'i>, bool)> {
        let v = s.get(name)?;
        let path = s.path(name);
        let DeValue::Table(t) = v.get_ref() else {
            self.report(
                &path,
                Some(v.span()),
                format!(
                    "expected a table like {example}, found {}",
                    type_name(v.get_ref())
                ),
            );
            return None;
        };
        self.unknown_in(t, &format!("{path}."), keys);
        let enabled = match t.get("enabled") {
            Some(e) => self.boolean(&format!("{path}.enabled"), e).unwrap_or(false),
            None => {
                // The IIS default is off: values without `enabled` are a limit that never applies.
                let set: Vec<&str> = t
                    .iter()
                    .map(|(k, _)| k.get_ref().as_ref())
                    .filter(|k| keys.contains(k))
                    .collect();
                if !set.is_empty() {
                    self.warn(
                        &path,
                        Some(v.span()),
                        format!(
                            "sets {} but not `enabled`, which defaults to false, so this limit \
                             is off; add enabled = true to apply it",
                            set.join(" and ")
                        ),
                    );
                }
                false
            }
        };
        Some((path, t, enabled))
    }

    /// `[logon]`: failures allowed within `find_time` before a ban of `ban_time`.
    pub(super) fn logon(&mut self, s: &Section<'_, '_>) -> Logon {
        let d = Logon::default();
        let enabled = match s.get("enabled") {
            Some(v) => self.boolean(&s.path("enabled"), v).unwrap_or(true),
            None => true,
        };
        Logon {
            enabled,
            max_failures: self.bounded_int(
                &s.path("max_failures"),
                s.get("max_failures"),
                d.max_failures,
                1..=1000,
                "failed logons before a ban",
            ),
            find_time: self.bounded_duration(
                &s.path("find_time"),
                s.get("find_time"),
                d.find_time,
                &Within {
                    max: DAY,
                    max_text: "24h",
                    example: "2m",
                    zero: "a find_time of 0 counts no failures",
                },
            ),
            ban_time: self.bounded_duration(
                &s.path("ban_time"),
                s.get("ban_time"),
                d.ban_time,
                &Within {
                    max: 30 * DAY,
                    max_text: "30d",
                    example: "5m",
                    zero: "a ban_time of 0 bans no one",
                },
            ),
        }
    }

    /// `[state]`: the memory backend, or a Redis server shared by several instances.
    pub(super) fn state(&mut self, s: &Section<'_, '_>) -> State {
        let d = State::default();
        // `None`: the backend was written wrongly (already reported).
        let backend = match s.get("backend") {
            None => Some(StateBackend::Memory),
            Some(v) => self.backend(&s.path("backend"), v),
        };
        let on_backend_error = match self.choice(s, "on_backend_error", ON_BACKEND_ERROR) {
            Some("open") => FailMode::Open,
            _ => FailMode::Closed,
        };
        let timeout = self.bounded_duration(
            &s.path("timeout"),
            s.get("timeout"),
            d.timeout,
            &Within {
                max: Duration::from_secs(10),
                max_text: "10s",
                example: "100ms",
                zero: "a timeout of 0 fails every call to the state store",
            },
        );
        let key_prefix = match s.get("key_prefix") {
            None => d.key_prefix,
            Some(v) => match self.string(&s.path("key_prefix"), v) {
                Some("") => {
                    self.report(
                        s.path("key_prefix"),
                        Some(v.span()),
                        "must not be empty; it keeps Portcullis's keys apart from other data in \
                         the same Redis database, like \"portcullis:\"",
                    );
                    d.key_prefix
                }
                Some(p) if p.chars().any(|c| c.is_whitespace() || c.is_control()) => {
                    self.report(
                        s.path("key_prefix"),
                        Some(v.span()),
                        "must not contain spaces or control characters, like \"portcullis:\"",
                    );
                    d.key_prefix
                }
                Some(p) => p.to_owned(),
                None => d.key_prefix,
            },
        };
        let file = |this: &mut Self, name: &str| -> Option<(PathBuf, std::ops::Range<usize>)> {
            let v = s.get(name)?;
            let text = this.string(&s.path(name), v)?;
            Some((this.resolve(text), v.span()))
        };
        let ca = file(self, "ca").filter(|(p, span)| self.check_cert(&s.path("ca"), p, span));
        let cert = file(self, "cert").filter(|(p, span)| self.check_cert(&s.path("cert"), p, span));
        let key = file(self, "key").filter(|(p, span)| self.check_key(&s.path("key"), p, span));
        let client_cert = match (cert, key) {
            (Some((c, _)), Some((k, _))) => Some((c, k)),
            (Some(_), None) if s.get("key").is_none() => {
                self.missing(
                    s,
                    "key",
                    "\"redis-client.key\" (the private key of state.cert)",
                );
                None
            }
            (None, Some(_)) if s.get("cert").is_none() => {
                self.missing(
                    s,
                    "cert",
                    "\"redis-client.pem\" (the certificate of state.key)",
                );
                None
            }
            _ => None,
        };
        let password_file = file(self, "password_file").filter(|(path, span)| {
            match std::fs::read_to_string(path) {
                Ok(text) if text.lines().next().is_some_and(|l| !l.trim().is_empty()) => true,
                Ok(_) => {
                    self.report(
                        s.path("password_file"),
                        Some(span.clone()),
                        format!(
                            "{}: the first line is empty (write PASSWORD or USER:PASSWORD)",
                            path.display()
                        ),
                    );
                    false
                }
                Err(e) => {
                    self.report(
                        s.path("password_file"),
                        Some(span.clone()),
                        format!("cannot read {}: {e}", path.display()),
                    );
                    false
                }
            }
        });
        if let (Some(_), Some(StateBackend::Redis(url))) = (&password_file, &backend)
            && url_has_password(url.as_str())
        {
            self.report(
                s.path("password_file"),
                s.get("password_file").map(|v| v.span()),
                "state.backend has a password too: keep it in one place (remove it from the URL)",
            );
        }
        let tls = matches!(&backend, Some(StateBackend::Redis(u)) if u.starts_with("rediss"));
        if let Some(StateBackend::Redis(url)) = &backend
            && url.contains("+cluster://")
            && key_prefix.contains(['{', '}'])
        {
            self.report(
                s.path("key_prefix"),
                s.get("key_prefix").map(|v| v.span()),
                "must not contain '{' or '}' with Redis Cluster: they would replace the hash tags \
                 that keep each script's keys in one slot",
            );
        }
        for name in ["ca", "cert", "key"] {
            if let Some(v) = s.get(name)
                && !tls
                && matches!(backend, Some(StateBackend::Redis(_)))
            {
                self.warn(
                    s.path(name),
                    Some(v.span()),
                    "is used only with TLS: a rediss:// or rediss+sentinel:// backend",
                );
            }
        }
        if backend == Some(StateBackend::Memory) {
            for key in [
                "on_backend_error",
                "timeout",
                "key_prefix",
                "ca",
                "cert",
                "key",
                "password_file",
            ] {
                if let Some(v) = s.get(key) {
                    self.warn(
                        s.path(key),
                        Some(v.span()),
                        "applies only to a Redis backend; with the memory backend it has no effect",
                    );
                }
            }
        }
        State {
            backend: backend.unwrap_or_default(),
            on_backend_error,
            timeout,
            key_prefix,
            ca: ca.map(|(p, _)| p),
            client_cert,
            password_file: password_file.map(|(p, _)| p),
        }
    }

    /// `state.backend`: `"memory"` or a Redis URL (`None` when invalid, already reported).
    fn backend(&mut self, key: &str, v: &Value<'_>) -> Option<StateBackend> {
        let text = self.string(key, v)?;
        if text == "memory" {
            return Some(StateBackend::Memory);
        }
        match check_redis_url(text) {
            Ok(()) => Some(StateBackend::Redis(text.to_owned())),
            Err((message, suggestion)) => {
                self.report_suggest(key, Some(v.span()), message, suggestion.as_deref());
                None
            }
        }
    }

    /// `[admin]`: the operator's listener, never one of `server.listen` (none when absent).
    pub(super) fn admin(&mut self, s: &Section<'_, '_>) -> Admin {
        if s.table.is_none() {
            return Admin::default();
        }
        let Some(v) = s.get("listen") else {
            self.missing(s, "listen", "\"127.0.0.1:9464\"");
            return Admin::default();
        };
        let key = s.path("listen");
        let Some(text) = self.string(&key, v) else {
            return Admin::default();
        };
        let addr = match parse_listen(text) {
            Ok(addr) => addr,
            Err(e) => {
                self.report(key, Some(v.span()), e);
                return Admin::default();
            }
        };
        let clash = self
            .public_listen
            .iter()
            .find(|(_, public)| same_socket(addr, *public))
            .map(|(path, public)| (path.clone(), *public));
        if let Some((path, public)) = clash {
            let how = if public == addr {
                format!("{addr} is also {path}")
            } else {
                format!("{path} ({public}) already takes port {}", addr.port())
            };
            self.report(
                &key,
                Some(v.span()),
                format!(
                    "the admin listener must not be a public listener: {how}; give [admin] its \
                     own port, like \"127.0.0.1:9464\""
                ),
            );
        }
        let ip = addr.ip().to_canonical();
        if ip.is_unspecified() {
            self.warn(
                &key,
                Some(v.span()),
                format!(
                    "{addr} listens on every address, public ones included; admin endpoints \
                     have no authentication; keep them on loopback or a private network"
                ),
            );
        } else if !ip.is_loopback() && !is_private(ip) {
            self.warn(
                &key,
                Some(v.span()),
                format!(
                    "{} is not a loopback address; admin endpoints have no authentication; \
                     keep them on loopback or a private network",
                    addr.ip()
                ),
            );
        }
        Admin { listen: Some(addr) }
    }
}

/// Two listen addresses that cannot both be bound: equal, or the same port where one of them
/// is a wildcard covering the other (`[::]` covers IPv4 too). Port 0 asks for a fresh port and
/// never clashes.
fn same_socket(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() || a.port() == 0 {
        return false;
    }
    let covers = |wild: IpAddr, other: IpAddr| {
        wild.is_unspecified() && (wild.is_ipv6() || wild.is_ipv4() == other.is_ipv4())
    };
    a.ip() == b.ip() || covers(a.ip(), b.ip()) || covers(b.ip(), a.ip())
}

/// Private (RFC 1918, unique local fc00::/7) and link-local addresses.
fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_private() || v4.is_link_local(),
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            first & 0xfe00 == 0xfc00 || first & 0xffc0 == 0xfe80
        }
    }
}

/// Checks `redis://[user:pass@]host[:port][/db]`, `rediss://…` and `redis+unix:///path`.
/// The error has the message and a "did you mean"; neither repeats a password of `text`.
fn check_redis_url(text: &str) -> Result<(), (String, Option<String>)> {
    let fail = |message: String| Err((message, None));
    let Some((scheme, rest)) = text.split_once("://") else {
        let suggestion = match suggest(text, &["memory"]) {
            Some(m) => Some(m.to_owned()),
            None => repaired_scheme(text).map(|u| mask_password(&u).into_owned()),
        };
        return Err((
            format!(
                "\"{}\" is not a Redis URL; write {BACKEND_EXAMPLE}",
                mask_password(text)
            ),
            suggestion,
        ));
    };
    if !REDIS_SCHEMES.contains(&scheme) {
        let shown = if scheme.contains(['@', ':', '/']) {
            // Not a scheme at all: maybe a password; show nothing of it.
            String::new()
        } else {
            format!(", not {scheme}://")
        };
        return Err((
            format!(
                "the state backend must be \"memory\" or a redis://, rediss://, \
                 redis+unix:// or redis+sentinel:// URL{shown}"
            ),
            suggest(scheme, REDIS_SCHEMES).map(|s| format!("{s}://")),
        ));
    }
    if rest.contains(['?', '#']) {
        return fail(
            "query parameters and fragments are not supported in state.backend; put the \
             database number in the path, like \"redis://127.0.0.1:6379/2\""
                .into(),
        );
    }
    if scheme == "redis+sentinel" || scheme == "rediss+sentinel" {
        return check_sentinel_url(rest);
    }
    if scheme == "redis+cluster" || scheme == "rediss+cluster" {
        return check_cluster_url(rest);
    }
    if scheme == "redis+unix" {
        return match rest.strip_prefix('/') {
            None => fail(
                "a redis+unix URL names a socket file after three slashes, like \
                 \"redis+unix:///run/redis/redis.sock\""
                    .into(),
            ),
            Some(path) if path.is_empty() || path.ends_with('/') => fail(
                "the redis+unix URL names no socket file; write it like \
                 \"redis+unix:///run/redis/redis.sock\""
                    .into(),
            ),
            Some(_) => Ok(()),
        };
    }
    // The user information ends at the last '@' (an '@' in the password is read as the Redis
    // client reads it); a '/' in it would end the host part for the Redis client, which reads
    // URLs as WHATWG does, so it must be percent-encoded.
    if let Some(at) = rest.rfind('@')
        && rest[..at].contains('/')
    {
        return fail(
            "the password in state.backend contains '/', which ends the host part of a URL; \
             percent-encode it as %2F (and '%' as %25)"
                .into(),
        );
    }
    let after_user = rest.rfind('@').map_or(rest, |at| &rest[at + 1..]);
    let (host_port, db) = after_user.split_once('/').unwrap_or((after_user, ""));
    let example = format!("\"{scheme}://127.0.0.1:6379/0\"");
    let (host, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
        let Some((host, after)) = bracketed.split_once(']') else {
            return fail(format!(
                "the IPv6 address \"[{bracketed}\" has no closing ']'; write it like \
                 \"{scheme}://[::1]:6379\""
            ));
        };
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return fail(format!("\"[{host}]\" is not an IPv6 address"));
        }
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => {
                    return fail(format!(
                        "unexpected \"{after}\" after \"[{host}]\"; write it like \
                         \"{scheme}://[::1]:6379\""
                    ));
                }
            },
        }
    } else {
        match host_port.split_once(':') {
            Some((_, port)) if port.contains(':') => {
                return fail(format!(
                    "an IPv6 address must be in brackets, like \"{scheme}://[::1]:6379\""
                ));
            }
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        }
    };
    if host.is_empty() {
        return fail(format!(
            "the Redis URL has no host; write it like {example}"
        ));
    }
    if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':'))
    {
        return fail(format!(
            "\"{host}\" is not a host name or IP address; write it like {example}"
        ));
    }
    if let Some(port) = port {
        let valid = !port.is_empty()
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u16>().is_ok_and(|p| p != 0);
        if !valid {
            return fail(format!(
                "the port must be a number from 1 to 65535, not \"{port}\"; write it like \
                 {example}"
            ));
        }
    }
    let valid_db = db.bytes().all(|b| b.is_ascii_digit()) && db.parse::<u32>().is_ok();
    if !db.is_empty() && !valid_db {
        return fail(format!(
            "the database must be a non-negative number, like /0, not \"/{db}\"; write it like \
             {example}"
        ));
    }
    Ok(())
}

/// Whether a Redis URL carries a password in its user information.
fn url_has_password(url: &str) -> bool {
    let rest = url.split_once("://").map_or("", |(_, r)| r);
    rest.rfind('@').is_some_and(|at| {
        rest[..at]
            .split_once(':')
            .is_some_and(|(_, p)| !p.is_empty())
    })
}

/// Checks what follows `redis+cluster://`: `[user:password@]h1[:port],h2[:port][/]`.
fn check_cluster_url(rest: &str) -> Result<(), (String, Option<String>)> {
    let example = "\"redis+cluster://10.0.0.1:7000,10.0.0.2:7000,10.0.0.3:7000\"";
    let after_user = match rest.rfind('@') {
        Some(at) if rest[..at].contains('/') => {
            return Err((
                "the password in state.backend contains '/', which ends the host part of a URL; \
                 percent-encode it as %2F (and '%' as %25)"
                    .into(),
                None,
            ));
        }
        Some(at) => &rest[at + 1..],
        None => rest,
    };
    let hosts = match after_user.split_once('/') {
        None => after_user,
        Some((hosts, "")) => hosts,
        Some(_) => {
            return Err((
                format!(
                    "a Redis Cluster has only database 0: nothing may follow the nodes; write it like {example}"
                ),
                None,
            ));
        }
    };
    for host in hosts.split(',') {
        check_redis_url(&format!("redis://{}", host.trim())).map_err(|(m, _)| {
            (
                format!("Cluster node \"{}\": {m}", host.trim())
                    .replace("redis://", "redis+cluster://"),
                None,
            )
        })?;
    }
    Ok(())
}

/// Checks what follows `redis+sentinel://`: `[user:password@]h1[:port],h2[:port]/MASTER[/DB]`.
fn check_sentinel_url(rest: &str) -> Result<(), (String, Option<String>)> {
    let example = "\"redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/mymaster/0\"";
    let fail = |message: String| Err((message, None));
    let after_user = match rest.rfind('@') {
        Some(at) if rest[..at].contains('/') => {
            return fail(
                "the password in state.backend contains '/', which ends the host part of a URL; \
                 percent-encode it as %2F (and '%' as %25)"
                    .into(),
            );
        }
        Some(at) => &rest[at + 1..],
        None => rest,
    };
    let Some((hosts, path)) = after_user.split_once('/') else {
        return fail(format!(
            "a redis+sentinel URL names the Sentinels, then the master's name; write it like {example}"
        ));
    };
    for host in hosts.split(',') {
        // Each Sentinel is checked as the host part of a redis:// URL would be.
        check_redis_url(&format!("redis://{}", host.trim())).map_err(|(m, _)| {
            (
                format!("Sentinel \"{}\": {m}", host.trim())
                    .replace("redis://", "redis+sentinel://"),
                None,
            )
        })?;
    }
    let (master, db) = path.split_once('/').unwrap_or((path, ""));
    if master.is_empty()
        || !master
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return fail(format!(
            "\"{master}\" is not a master name (letters, digits, '-', '_', '.' as in the Sentinels' \
             `sentinel monitor NAME …`); write it like {example}"
        ));
    }
    if !db.is_empty() && db.parse::<u32>().is_err() {
        return fail(format!(
            "the database must be a non-negative number, like /0, not \"/{db}\"; write it like {example}"
        ));
    }
    Ok(())
}

/// `redis//host`, `redis:/host`, `redis:host` … repaired to `redis://host` (for a suggestion).
fn repaired_scheme(text: &str) -> Option<String> {
    let scheme = REDIS_SCHEMES.iter().find(|s| text.starts_with(**s))?;
    let rest = &text[scheme.len()..];
    // Only the scheme's ':' and the slashes: a ':' after them starts the user information.
    let body = rest
        .strip_prefix(':')
        .unwrap_or(rest)
        .trim_start_matches('/');
    if body.is_empty() || body.len() == rest.len() {
        return None;
    }
    let slashes = if *scheme == "redis+unix" {
        ":///"
    } else {
        "://"
    };
    Some(format!("{scheme}{slashes}{body}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_urls() {
        for ok in [
            "redis://127.0.0.1:6379/0",
            "redis://localhost",
            "redis://cache.internal:6380",
            "redis://:secret@cache.internal:6379/15",
            "redis://user:p@ss%2Fw0rd@cache/2",
            "rediss://redis.example:6380/",
            "redis://[::1]:6379/1",
            "redis://[2001:db8::1]",
            "redis+unix:///run/redis/redis.sock",
            "redis+sentinel://10.0.0.1:26379,10.0.0.2/mymaster/2",
            "redis+sentinel://:pw@sentinel.internal/mymaster",
            "redis+cluster://10.0.0.1:7000,10.0.0.2:7000/",
            "rediss+cluster://:pw@node-a:7000",
        ] {
            assert_eq!(check_redis_url(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("redis//localhost", "not a Redis URL"),
            ("localhost:6379", "not a Redis URL"),
            ("http://localhost", "not http://"),
            ("redis://", "no host"),
            ("redis://:pw@/0", "no host"),
            ("redis://host:0", "from 1 to 65535"),
            ("redis://host:70000", "from 1 to 65535"),
            ("redis://host:", "from 1 to 65535"),
            ("redis://host:x1", "from 1 to 65535"),
            ("redis://host/-1", "non-negative"),
            ("redis://host/db0", "non-negative"),
            ("redis://host/0/1", "non-negative"),
            ("redis://::1:6379", "brackets"),
            ("redis://[::1:6379", "closing"),
            ("redis://[zz]:6379", "not an IPv6"),
            ("redis://host/0?db=1", "query"),
            ("redis://ho st", "not a host name"),
            ("redis+unix://run/redis.sock", "three slashes"),
            ("redis+unix:///", "no socket file"),
            (
                "redis+sentinel://h1:26379",
                "names the Sentinels, then the master",
            ),
            ("redis+sentinel://h1:26379/", "not a master name"),
            ("redis+sentinel://h1:0/m", "from 1 to 65535"),
            ("redis+sentinel://h1,/m", "no host"),
            ("redis+sentinel://h1/m/x", "non-negative"),
            ("rediss+sentinel://h1/m?x", "query"),
            ("redis+cluster://h1:7000/0", "only database 0"),
            ("redis+cluster://h1:7000,:7001", "no host"),
        ] {
            let (e, _) = check_redis_url(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn suggestions_for_near_backends() {
        let suggestion = |t: &str| check_redis_url(t).unwrap_err().1;
        assert_eq!(suggestion("memroy").as_deref(), Some("memory"));
        assert_eq!(
            suggestion("redis//localhost").as_deref(),
            Some("redis://localhost")
        );
        assert_eq!(
            suggestion("redis:/:hunter2@cache:6379").as_deref(),
            Some("redis://:****@cache:6379")
        );
        assert_eq!(
            suggestion("redis+unix:/run/r.sock").as_deref(),
            Some("redis+unix:///run/r.sock")
        );
        assert_eq!(suggestion("reddis://x").as_deref(), Some("redis://"));
        assert_eq!(suggestion("somewhere"), None);
    }

    #[test]
    fn passwords_never_reach_a_message() {
        for bad in [
            "redis://:hunter2@cache:99999/0",
            "redis://admin:hunter2@cache/zero",
            "redis://hunter2@:6379",
            "redis//:hunter2@cache",
            "hunter2@cache",
            "http://u:hunter2@cache",
            "redis://u:hun/ter2@[::1",
            "redis://:hunter2@cache/0?x=1",
        ] {
            let (message, suggestion) = check_redis_url(bad).unwrap_err();
            assert!(!message.contains("hunter2"), "{bad}: {message}");
            assert!(
                !suggestion.as_deref().unwrap_or("").contains("hunter2"),
                "{bad}: {suggestion:?}"
            );
        }
        assert_eq!(
            mask_password("redis://admin:hunter2@cache:6379/0"),
            "redis://admin:****@cache:6379/0"
        );
        assert_eq!(mask_password("redis://hunter2@cache"), "redis://****@cache");
        assert_eq!(mask_password("redis://cache:6379"), "redis://cache:6379");
        let backend = StateBackend::Redis("rediss://:hunter2@cache:6380".into());
        assert_eq!(backend.to_string(), "rediss://:****@cache:6380");
        assert!(!format!("{backend:?}").contains("hunter2"));
    }

    #[test]
    fn admin_and_public_sockets() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(same_socket(a("127.0.0.1:8080"), a("127.0.0.1:8080")));
        assert!(same_socket(a("0.0.0.0:8080"), a("127.0.0.1:8080")));
        assert!(same_socket(a("127.0.0.1:8080"), a("[::]:8080")));
        assert!(!same_socket(a("0.0.0.0:8080"), a("[::1]:8080")));
        assert!(!same_socket(a("127.0.0.1:8080"), a("127.0.0.2:8080")));
        assert!(!same_socket(a("127.0.0.1:8080"), a("127.0.0.1:9464")));
        assert!(!same_socket(a("127.0.0.1:0"), a("127.0.0.1:0")));
        assert!(is_private("10.1.2.3".parse().unwrap()));
        assert!(is_private("fd00::1".parse().unwrap()));
        assert!(!is_private("203.0.113.1".parse().unwrap()));
        assert!(!is_private("2001:db8::1".parse().unwrap()));
    }
}
