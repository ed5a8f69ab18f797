//! The schema walk: the span-preserving TOML tree in, a validated [`Config`] or every problem out.
//!
//! serde's derive stops at the first error and loses the line of anything it rejects, so the
//! tree is walked by hand against the known keys of each section. Each check reports into one
//! list (with the key path and the line computed from the value's byte span) and carries on
//! with a default, so a single run names every mistake in the file.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use policy::{PathPattern, Scheme};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::diagnostics::{Diagnostic, Diagnostics, suggest};
use crate::model::*;

mod access;
mod portal;
mod rules;
mod runtime;

pub use access::DEFAULT_FILTER_TIMEOUT;
use access::{FILTER_KEYS, IP_KEYS};
use portal::{MAIL_KEYS, PORTAL_KEYS};
use rules::{GroupNames, UserNames};
use runtime::{ADMIN_KEYS, DYNAMIC_KEYS, LOGON_KEYS, STATE_KEYS};
pub use runtime::{DEFAULT_MAX_CONCURRENT, DEFAULT_MAX_REQUESTS, DEFAULT_RATE_INTERVAL};

type Value<'i> = Spanned<DeValue<'i>>;

/// Keys of `[server]`.
const SERVER_KEYS: &[&str] = &[
    "listen",
    "upstream",
    "tls",
    "trusted_proxies",
    "header_timeout",
    "upstream_timeout",
    "connect_timeout",
    "workers",
    "drain_timeout",
    "forwarded_header",
    "backlog",
    "idle_timeout",
    "max_connections",
    "upstream_max_connections",
];
/// Keys of `[auth]`.
const AUTH_KEYS: &[&str] = &[
    "realm",
    "schemes",
    "users",
    "groups",
    "public",
    "acl_status",
    "cache_ttl",
    "forward_authorization",
    "path_case",
    "verify_queue_timeout",
];
/// Keys of `[errors]`.
const ERRORS_KEYS: &[&str] = &["mode", "pages", "upstream_401"];
/// Keys of `[log]`.
const LOG_KEYS: &[&str] = &["access", "format", "audit"];
/// Keys of `server.tls`.
const TLS_KEYS: &[&str] = &["cert", "key"];
/// The sections this build understands, with their keys.
/// (`[[rule]]`, an array of tables, is walked separately.)
const SECTIONS: &[(&str, &[&str])] = &[
    ("server", SERVER_KEYS),
    ("auth", AUTH_KEYS),
    ("errors", ERRORS_KEYS),
    ("log", LOG_KEYS),
    ("ip", IP_KEYS),
    ("filter", FILTER_KEYS),
    ("dynamic", DYNAMIC_KEYS),
    ("logon", LOGON_KEYS),
    ("state", STATE_KEYS),
    ("admin", ADMIN_KEYS),
    ("portal", PORTAL_KEYS),
    ("mail", MAIL_KEYS),
    ("forward_auth", FORWARD_AUTH_KEYS),
];
/// Keys of `[forward_auth]`.
const FORWARD_AUTH_KEYS: &[&str] = &["headers"];
/// The name of the URL-rule array of tables.
const RULE: &str = "rule";
/// Sections of the contract that this build does not implement yet: refused, never ignored.
const UNSUPPORTED_SECTIONS: &[&str] = &[];

/// Names accepted in `auth.schemes`.
const SCHEME_NAMES: &[&str] = &["basic", "digest", "bearer", "form"];
/// Values of `errors.mode`.
const ERROR_MODES: &[&str] = &["custom", "detailed", "detailed_local_only"];
/// Values of `errors.upstream_401`.
const UPSTREAM_401: &[&str] = &["pass_through", "replace"];
/// Values of `log.format`.
const LOG_FORMATS: &[&str] = &["w3c", "json"];
/// Values of `auth.path_case`.
const PATH_CASES: &[&str] = &["sensitive", "insensitive"];

/// Default `server.listen`.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080);
/// Default `server.header_timeout`.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `server.upstream_timeout`.
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `server.idle_timeout`: a keep-alive connection idle this long is closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `server.backlog` (the kernel caps it at `net.core.somaxconn`).
pub const DEFAULT_BACKLOG: u32 = 4096;
/// Default `auth.verify_queue_timeout`.
pub const DEFAULT_VERIFY_QUEUE_TIMEOUT: Duration = Duration::from_secs(2);
/// Default `server.drain_timeout`.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `server.connect_timeout`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default `auth.realm`.
pub const DEFAULT_REALM: &str = "Restricted area";
/// Default `auth.cache_ttl`.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(300);

/// Parses and validates `text`; relative paths are joined to `base_dir`.
pub(crate) fn check(
    text: &str,
    base_dir: &Path,
    file_name: &str,
    source: Option<PathBuf>,
) -> Result<Config, Diagnostics> {
    let root = match DeTable::parse(text) {
        Ok(root) => root,
        Err(e) => {
            let line = e.span().map(|s| line_of(text, s.start));
            return Err(Diagnostics::single(
                file_name,
                line,
                format!("invalid TOML: {}", e.message()),
            ));
        }
    };
    let mut c = Checker {
        text,
        base_dir,
        items: Vec::new(),
        warnings: Vec::new(),
        groups: GroupNames::default(),
        users: None,
        case_insensitive_paths: false,
        public_listen: Vec::new(),
    };
    let config = c.root(root.get_ref(), source);
    // File order: by byte offset, problems without a place last.
    c.items.sort_by_key(|(offset, _)| *offset);
    c.warnings.sort_by_key(|(offset, _)| *offset);
    let mut items: Vec<Diagnostic> = c.items.into_iter().map(|(_, d)| d).collect();
    match config {
        Some(mut config) if items.is_empty() => {
            config.warnings = c.warnings.into_iter().map(|(_, d)| d).collect();
            Ok(config)
        }
        _ => {
            if items.is_empty() {
                items.push(Diagnostic {
                    key: String::new(),
                    line: None,
                    message: "the configuration is incomplete".into(),
                    suggestion: None,
                });
            }
            Err(Diagnostics {
                file: file_name.to_owned(),
                items,
            })
        }
    }
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// "a string", "an integer", … for type errors.
fn type_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// A table (`[x]`) or a non-empty array of tables (`[[x]]`).
fn looks_like_section(v: &DeValue<'_>) -> bool {
    match v {
        DeValue::Table(_) => true,
        DeValue::Array(a) => {
            !a.is_empty() && a.iter().all(|e| matches!(e.get_ref(), DeValue::Table(_)))
        }
        _ => false,
    }
}

/// The section a key belongs to, for keys written in the wrong section.
fn home_of(key: &str) -> Option<&'static str> {
    SECTIONS
        .iter()
        .find(|(_, keys)| keys.contains(&key))
        .map(|(name, _)| *name)
}

/// A section as found in the file (absent sections behave as empty ones).
struct Section<'a, 'i> {
    /// Section name (`server`).
    name: &'static str,
    /// Its entries.
    table: Option<&'a DeTable<'i>>,
    /// Span of its header, for "is required" problems.
    span: Option<Range<usize>>,
}

impl<'a, 'i> Section<'a, 'i> {
    /// The value of `key`, if written.
    fn get(&self, key: &str) -> Option<&'a Value<'i>> {
        self.table.and_then(|t| t.get(key))
    }

    /// Dotted path of `key` in this section.
    fn path(&self, key: &str) -> String {
        format!("{}.{key}", self.name)
    }
}

/// The collected problems and what the checks need.
struct Checker<'t> {
    /// The file text, for line numbers.
    text: &'t str,
    /// Folder relative paths are resolved against.
    base_dir: &'t Path,
    /// Problems so far, with the byte offset they sort by.
    items: Vec<(usize, Diagnostic)>,
    /// Warnings so far (they do not stop the config), with the byte offset they sort by.
    warnings: Vec<(usize, Diagnostic)>,
    /// The groups `auth.groups` defines, for checking `group:` principals.
    groups: GroupNames,
    /// The users of the htpasswd file, for checking `user:` principals.
    users: Option<UserNames>,
    /// `auth.path_case = "insensitive"`.
    case_insensitive_paths: bool,
    /// The public listeners (`server.listen`) with their key paths, for checking `[admin]`.
    public_listen: Vec<(String, SocketAddr)>,
}

impl Checker<'_> {
    /// Records a problem at `span`.
    fn report(
        &mut self,
        key: impl Into<String>,
        span: Option<Range<usize>>,
        message: impl Into<String>,
    ) {
        self.report_suggest(key, span, message, None);
    }

    /// Records a problem at `span` with a "did you mean".
    fn report_suggest(
        &mut self,
        key: impl Into<String>,
        span: Option<Range<usize>>,
        message: impl Into<String>,
        suggestion: Option<&str>,
    ) {
        let d = self.located(key, span, message, suggestion);
        self.items.push(d);
    }

    /// Records a warning at `span`: reported, but the config is still used.
    fn warn(
        &mut self,
        key: impl Into<String>,
        span: Option<Range<usize>>,
        message: impl Into<String>,
    ) {
        self.warn_suggest(key, span, message, None);
    }

    /// Records a warning at `span` with a "did you mean".
    fn warn_suggest(
        &mut self,
        key: impl Into<String>,
        span: Option<Range<usize>>,
        message: impl Into<String>,
        suggestion: Option<&str>,
    ) {
        let d = self.located(key, span, message, suggestion);
        self.warnings.push(d);
    }

    /// A diagnostic with its line, and the byte offset it sorts by.
    fn located(
        &self,
        key: impl Into<String>,
        span: Option<Range<usize>>,
        message: impl Into<String>,
        suggestion: Option<&str>,
    ) -> (usize, Diagnostic) {
        let offset = span.as_ref().map_or(usize::MAX, |s| s.start);
        (
            offset,
            Diagnostic {
                key: key.into(),
                line: span.map(|s| line_of(self.text, s.start)),
                message: message.into(),
                suggestion: suggestion.map(str::to_owned),
            },
        )
    }

    /// The 1-based line of a byte offset in this file.
    fn line(&self, offset: usize) -> usize {
        line_of(self.text, offset)
    }

    /// Records a "not supported yet" problem.
    fn unsupported(&mut self, key: impl Into<String>, span: Option<Range<usize>>, what: &str) {
        self.report(
            key,
            span,
            format!("{what} is not supported by this version of Portcullis yet"),
        );
    }

    /// Records a "required key is missing" problem at the section header (if any).
    fn missing(&mut self, section: &Section<'_, '_>, key: &str, example: &str) {
        self.report(
            section.path(key),
            section.span.clone(),
            format!(
                "is required in [{}] (for example {key} = {example})",
                section.name
            ),
        );
    }

    /// Resolves a configured path against the config file's folder.
    fn resolve(&self, p: &str) -> PathBuf {
        self.base_dir.join(p)
    }

    // ---------------------------------------------------------------- the tree

    /// Walks the top level: known sections, unsupported sections, unknown names.
    fn root(&mut self, root: &DeTable<'_>, source: Option<PathBuf>) -> Option<Config> {
        let mut sections: Vec<Section<'_, '_>> = SECTIONS
            .iter()
            .map(|(name, _)| Section {
                name,
                table: None,
                span: None,
            })
            .collect();
        let mut rules = None;
        for (key, value) in root.iter() {
            let name: &str = key.get_ref();
            let span = Some(key.span());
            if name == RULE {
                rules = Some((key.span(), value));
            } else if let Some(section) = sections.iter_mut().find(|s| s.name == name) {
                match value.get_ref() {
                    DeValue::Table(t) => {
                        section.table = Some(t);
                        section.span = span;
                    }
                    other => self.report(
                        name,
                        span,
                        format!(
                            "expected a table (a [{name}] section), found {}",
                            type_name(other)
                        ),
                    ),
                }
            } else if UNSUPPORTED_SECTIONS.contains(&name) {
                self.unsupported(name, span, &format!("the [{name}] section"));
            } else if looks_like_section(value.get_ref()) {
                let known: Vec<&str> = SECTIONS
                    .iter()
                    .map(|(n, _)| *n)
                    .chain([RULE])
                    .chain(UNSUPPORTED_SECTIONS.iter().copied())
                    .collect();
                self.report_suggest(name, span, "unknown section", suggest(name, &known));
            } else if let Some(home) = home_of(name) {
                self.report(
                    name,
                    span,
                    format!("unknown top-level key; `{name}` belongs in the [{home}] section"),
                );
            } else {
                self.report(
                    name,
                    span,
                    "unknown top-level key; settings go in sections such as [server] and [auth]",
                );
            }
        }
        for section in &sections {
            self.unknown_keys(section);
        }
        let [
            server,
            auth,
            errors,
            log,
            ip,
            filter,
            dynamic,
            logon,
            state,
            admin,
            portal,
            mail,
            forward_auth,
        ] = &sections[..]
        else {
            return None;
        };
        let server = self.server(server);
        // Before the rules: they are checked against the user and group files.
        let auth = self.auth(auth);
        let errors = self.errors(errors);
        let log = self.log(log);
        let ip = self.ip(ip);
        let rules = match rules {
            Some((span, value)) => self.rules(span, value),
            None => Vec::new(),
        };
        let filter = self.filter(filter);
        let dynamic = self.dynamic(dynamic);
        let logon = self.logon(logon);
        let state = self.state(state);
        // After [server]: the admin listener must not be one of its listeners.
        let admin = self.admin(admin);
        let portal_config = self.portal(portal);
        let mail_config = self.mail(mail);
        // [portal] serves form sign-in and account links: say so when neither is on.
        if portal.table.is_some()
            && let Some(a) = auth.as_ref()
            && !a.schemes.contains(&Scheme::Form)
            && !matches!(a.users, UserSource::Sqlite(_))
        {
            self.warn(
                "portal",
                portal.span.clone(),
                "has no effect: it configures form sign-in (auth.schemes with \"form\") and account links (users in SQLite), and neither is enabled",
            );
        }
        // Links need somewhere to live and an address to point at.
        if mail.table.is_some() {
            if !matches!(auth.as_ref().map(|a| &a.users), Some(UserSource::Sqlite(_))) {
                self.warn(
                    "mail",
                    mail.span.clone(),
                    "[mail] only sends invitation and reset links, which need users in SQLite (auth.users = \"sqlite:PATH\"); with these users it sends nothing",
                );
            } else if portal_config.public_url.is_none() {
                self.warn(
                    "mail",
                    mail.span.clone(),
                    "without portal.public_url the sign-in page offers no \"Forgot your password?\" (links are built from it, never from a request's Host header)",
                );
            }
        }
        let portal = portal_config;
        let mail = mail_config;
        let forward_auth = ForwardAuth {
            headers: match self.choice(forward_auth, "headers", &["nginx", "forwarded"]) {
                Some("forwarded") => ForwardAuthHeaders::Forwarded,
                _ => ForwardAuthHeaders::Nginx,
            },
        };
        Some(Config {
            source,
            server: server?,
            auth: auth?,
            errors,
            log,
            ip,
            rules,
            filter,
            dynamic,
            logon,
            state,
            admin,
            portal,
            mail,
            forward_auth,
            warnings: Vec::new(),
        })
    }

    /// Reports keys a section does not know, with a "did you mean".
    fn unknown_keys(&mut self, section: &Section<'_, '_>) {
        let Some(table) = section.table else { return };
        let known = SECTIONS
            .iter()
            .find(|(n, _)| *n == section.name)
            .map_or(&[][..], |(_, k)| k);
        self.unknown_in(table, &section.path(""), known);
    }

    /// Reports keys of `table` (whose path prefix is `prefix`, ending in '.') not in `known`.
    fn unknown_in(&mut self, table: &DeTable<'_>, prefix: &str, known: &[&str]) {
        for (key, _) in table.iter() {
            let name: &str = key.get_ref();
            if known.contains(&name) {
                continue;
            }
            let path = format!("{prefix}{name}");
            match suggest(name, known) {
                Some(s) => self.report_suggest(path, Some(key.span()), "unknown key", Some(s)),
                None => match home_of(name) {
                    Some(home) if prefix.matches('.').count() == 1 => self.report(
                        path,
                        Some(key.span()),
                        format!("unknown key here; `{name}` belongs in the [{home}] section"),
                    ),
                    _ => self.report(path, Some(key.span()), "unknown key"),
                },
            }
        }
    }

    // ---------------------------------------------------------------- sections

    /// `[server]`.
    fn server(&mut self, s: &Section<'_, '_>) -> Option<Server> {
        let listen = match s.get("listen") {
            None => {
                let default = "server.listen (the default)".to_owned();
                self.public_listen.push((default, DEFAULT_LISTEN));
                vec![DEFAULT_LISTEN]
            }
            Some(v) => self.listen(&s.path("listen"), v),
        };
        // No upstream: a forward-auth-only deployment (only /.portcullis/* is answered).
        let mut upstream_valid = true;
        let upstream = match s.get("upstream") {
            None => {
                self.warn(
                    s.path("upstream"),
                    s.span.clone(),
                    "no upstream: Portcullis will only answer forward-auth questions at /.portcullis/auth \
                     (every other path gets 404); set upstream = \"http://127.0.0.1:3000\" to proxy an application",
                );
                None
            }
            Some(v) => {
                self.string(&s.path("upstream"), v)
                    .and_then(|text| match Upstream::parse(text) {
                        Ok(u) => Some(u),
                        Err(e) => {
                            self.report(s.path("upstream"), Some(v.span()), e);
                            upstream_valid = false;
                            None
                        }
                    })
            }
        };
        let tls = s.get("tls").and_then(|v| self.tls(&s.path("tls"), v));
        let trusted_proxies = match s.get("trusted_proxies") {
            None => policy::IpSet::default(),
            Some(v) => self.ip_list(&s.path("trusted_proxies"), v),
        };
        let header_timeout = self.duration(s, "header_timeout", DEFAULT_HEADER_TIMEOUT, false);
        let upstream_timeout =
            self.duration(s, "upstream_timeout", DEFAULT_UPSTREAM_TIMEOUT, false);
        let connect_timeout = self.duration(s, "connect_timeout", DEFAULT_CONNECT_TIMEOUT, false);
        let drain_timeout = self.duration(s, "drain_timeout", DEFAULT_DRAIN_TIMEOUT, true);
        let forwarded_header =
            match self.choice(s, "forwarded_header", &["x-forwarded-for", "forwarded"]) {
                Some("forwarded") => ForwardedHeader::Forwarded,
                _ => ForwardedHeader::XForwardedFor,
            };
        let idle_timeout = self.duration(s, "idle_timeout", DEFAULT_IDLE_TIMEOUT, false);
        let backlog = s.get("backlog").and_then(|v| {
            let n = self.integer(&s.path("backlog"), v)?;
            match u32::try_from(n) {
                Ok(n @ 1..=1_000_000) => Some(n),
                _ => {
                    self.report(
                        s.path("backlog"),
                        Some(v.span()),
                        format!("must be from 1 to 1000000 (connections waiting to be accepted), not {n}"),
                    );
                    None
                }
            }
        });
        let max_connections = s.get("max_connections").and_then(|v| {
            let n = self.integer(&s.path("max_connections"), v)?;
            match usize::try_from(n) {
                Ok(n @ 1..=10_000_000) => Some(n),
                _ => {
                    self.report(
                        s.path("max_connections"),
                        Some(v.span()),
                        format!("must be from 1 to 10000000 (open client connections), not {n}"),
                    );
                    None
                }
            }
        });
        let upstream_max_connections = s.get("upstream_max_connections").and_then(|v| {
            let n = self.integer(&s.path("upstream_max_connections"), v)?;
            match usize::try_from(n) {
                Ok(n @ 1..=10_000_000) => Some(n),
                _ => {
                    self.report(
                        s.path("upstream_max_connections"),
                        Some(v.span()),
                        format!("must be from 1 to 10000000 (requests in flight to the upstream), not {n}"),
                    );
                    None
                }
            }
        });
        let workers = s.get("workers").and_then(|v| {
            let n = self.integer(&s.path("workers"), v)?;
            match usize::try_from(n) {
                Ok(n @ 1..=1024) => Some(n),
                _ => {
                    self.report(
                        s.path("workers"),
                        Some(v.span()),
                        format!("must be between 1 and 1024, not {n}"),
                    );
                    None
                }
            }
        });
        if !upstream_valid {
            return None;
        }
        Some(Server {
            listen,
            upstream,
            tls,
            header_timeout,
            upstream_timeout,
            connect_timeout,
            drain_timeout,
            forwarded_header,
            workers,
            trusted_proxies,
            idle_timeout,
            backlog: backlog.unwrap_or(DEFAULT_BACKLOG),
            max_connections,
            upstream_max_connections,
        })
    }

    /// `server.listen`: one address or an array of them.
    fn listen(&mut self, key: &str, v: &Value<'_>) -> Vec<SocketAddr> {
        let entries: Vec<(String, &str, Range<usize>)> = match v.get_ref() {
            DeValue::String(s) => vec![(key.to_owned(), s.as_ref(), v.span())],
            DeValue::Array(_) => self.strings(key, v),
            other => {
                self.report(
                    key,
                    Some(v.span()),
                    format!(
                        "expected an address or an array of addresses, found {}",
                        type_name(other)
                    ),
                );
                return Vec::new();
            }
        };
        if entries.is_empty() && matches!(v.get_ref(), DeValue::Array(a) if a.is_empty()) {
            self.report(
                key,
                Some(v.span()),
                "must list at least one address, e.g. [\"127.0.0.1:8080\"]",
            );
        }
        let mut out = Vec::new();
        for (path, text, span) in entries {
            match parse_listen(text) {
                Ok(addr) if out.contains(&addr) => {
                    self.report(path, Some(span), format!("{addr} is listed twice"))
                }
                Ok(addr) => {
                    self.public_listen.push((path, addr));
                    out.push(addr);
                }
                Err(e) => self.report(path, Some(span), e),
            }
        }
        out
    }

    /// `server.tls = { cert, key }`: both PEM files must exist and parse.
    fn tls(&mut self, key: &str, v: &Value<'_>) -> Option<Tls> {
        let DeValue::Table(t) = v.get_ref() else {
            self.report(
                key,
                Some(v.span()),
                format!(
                    "expected a table like {{ cert = \"cert.pem\", key = \"key.pem\" }}, found {}",
                    type_name(v.get_ref())
                ),
            );
            return None;
        };
        self.unknown_in(t, &format!("{key}."), TLS_KEYS);
        let file = |this: &mut Self, name: &str| -> Option<(PathBuf, Range<usize>)> {
            let path = format!("{key}.{name}");
            match t.get(name) {
                None => {
                    this.report(
                        path,
                        Some(v.span()),
                        format!("is required (the {name} PEM file)"),
                    );
                    None
                }
                Some(fv) => this.string(&path, fv).map(|s| (this.resolve(s), fv.span())),
            }
        };
        let cert = file(self, "cert");
        let private = file(self, "key");
        let cert_ok = cert
            .as_ref()
            .is_some_and(|(p, span)| self.check_cert(&format!("{key}.cert"), p, span));
        let key_ok = private
            .as_ref()
            .is_some_and(|(p, span)| self.check_key(&format!("{key}.key"), p, span));
        match (cert, private) {
            (Some((cert, _)), Some((key, _))) if cert_ok && key_ok => Some(Tls { cert, key }),
            _ => None,
        }
    }

    /// The certificate file holds at least one PEM certificate.
    fn check_cert(&mut self, key: &str, path: &Path, span: &Range<usize>) -> bool {
        let shown = path.display();
        let iter = match CertificateDer::pem_file_iter(path) {
            Ok(iter) => iter,
            Err(e) => {
                self.report(
                    key,
                    Some(span.clone()),
                    pem_problem("certificate", path, &e),
                );
                return false;
            }
        };
        let mut found = 0usize;
        for item in iter {
            match item {
                Ok(_) => found += 1,
                Err(e) => {
                    self.report(
                        key,
                        Some(span.clone()),
                        pem_problem("certificate", path, &e),
                    );
                    return false;
                }
            }
        }
        if found == 0 {
            self.report(
                key,
                Some(span.clone()),
                format!("no certificate (-----BEGIN CERTIFICATE-----) found in {shown}"),
            );
        }
        found > 0
    }

    /// The key file holds a PEM private key.
    fn check_key(&mut self, key: &str, path: &Path, span: &Range<usize>) -> bool {
        match PrivateKeyDer::from_pem_file(path) {
            Ok(_) => true,
            Err(e) => {
                self.report(
                    key,
                    Some(span.clone()),
                    pem_problem("private key", path, &e),
                );
                false
            }
        }
    }

    /// `[auth]`.
    fn auth(&mut self, s: &Section<'_, '_>) -> Option<Auth> {
        let realm = match s.get("realm") {
            None => DEFAULT_REALM.to_owned(),
            Some(v) => match self.string(&s.path("realm"), v) {
                Some(r) if r.chars().any(char::is_control) => {
                    self.report(
                        s.path("realm"),
                        Some(v.span()),
                        "must not contain control characters",
                    );
                    String::new()
                }
                Some(r) => r.to_owned(),
                None => String::new(),
            },
        };
        let schemes = match s.get("schemes") {
            None => vec![Scheme::Basic],
            Some(v) => self.schemes(&s.path("schemes"), v),
        };
        let users = match s.get("users") {
            None => {
                self.missing(s, "users", "\"users.htpasswd\"");
                None
            }
            Some(v) => self.users(&s.path("users"), v),
        };
        let groups = s
            .get("groups")
            .and_then(|v| self.groups_file(&s.path("groups"), v));
        // With a user database, groups live in it (`portcullis users groups`): rules may name
        // any group.
        if matches!(users, Some(UserSource::Sqlite(_)))
            && matches!(self.groups, rules::GroupNames::NotConfigured)
        {
            self.groups = rules::GroupNames::Unusable;
        }
        self.case_insensitive_paths =
            self.choice(s, "path_case", PATH_CASES) == Some("insensitive");
        let public = match s.get("public") {
            None => Vec::new(),
            Some(v) => self.public(&s.path("public"), v),
        };
        let acl_status = match s.get("acl_status") {
            None => 401,
            Some(v) => match self.integer(&s.path("acl_status"), v) {
                Some(n @ (401 | 403)) => n as u16,
                Some(n) => {
                    self.report(
                        s.path("acl_status"),
                        Some(v.span()),
                        format!("must be 401 or 403, not {n}"),
                    );
                    401
                }
                None => 401,
            },
        };
        let cache_ttl = self.duration(s, "cache_ttl", DEFAULT_CACHE_TTL, true);
        let verify_queue_timeout = self.duration(
            s,
            "verify_queue_timeout",
            DEFAULT_VERIFY_QUEUE_TIMEOUT,
            false,
        );
        let forward_authorization = match s.get("forward_authorization") {
            None => false,
            Some(v) => self
                .boolean(&s.path("forward_authorization"), v)
                .unwrap_or(false),
        };
        Some(Auth {
            realm,
            schemes,
            users: users?,
            public,
            acl_status,
            cache_ttl,
            forward_authorization,
            groups,
            case_insensitive_paths: self.case_insensitive_paths,
            verify_queue_timeout,
        })
    }

    /// `auth.schemes`: non-empty; `basic` and `form` are implemented.
    fn schemes(&mut self, key: &str, v: &Value<'_>) -> Vec<Scheme> {
        if !self.expect_array(key, v, "an array such as [\"basic\"]") {
            return Vec::new();
        }
        if matches!(v.get_ref(), DeValue::Array(a) if a.is_empty()) {
            self.report(
                key,
                Some(v.span()),
                "must list at least one scheme, e.g. [\"basic\"]",
            );
        }
        let mut out = Vec::new();
        for (path, text, span) in self.strings(key, v) {
            match text {
                "basic" if out.contains(&Scheme::Basic) => {
                    self.report(path, Some(span), "\"basic\" is listed twice");
                }
                "basic" => out.push(Scheme::Basic),
                "form" if out.contains(&Scheme::Form) => {
                    self.report(path, Some(span), "\"form\" is listed twice");
                }
                "form" => out.push(Scheme::Form),
                "digest" | "bearer" => {
                    self.unsupported(path, Some(span), &format!("the \"{text}\" scheme"));
                }
                other => self.bad_enum(path, span, other, SCHEME_NAMES),
            }
        }
        out
    }

    /// `auth.users`: an htpasswd file that exists, or `sqlite:PATH` (a user database whose
    /// folder exists; `portcullis users add` creates the file).
    fn users(&mut self, key: &str, v: &Value<'_>) -> Option<UserSource> {
        let text = self.string(key, v)?;
        if let Some(db) = text.strip_prefix("sqlite:") {
            let path = self.resolve(db);
            let parent = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            if db.is_empty() || path.is_dir() {
                self.report(
                    key,
                    Some(v.span()),
                    "write \"sqlite:PATH\", e.g. \"sqlite:portcullis.db\"",
                );
                return None;
            }
            if !parent.is_dir() {
                self.report(
                    key,
                    Some(v.span()),
                    format!(
                        "the folder of the user database does not exist: {}",
                        parent.display()
                    ),
                );
                return None;
            }
            return Some(UserSource::Sqlite(path));
        }
        if text.is_empty() {
            self.report(
                key,
                Some(v.span()),
                "must name an htpasswd file, e.g. \"users.htpasswd\"",
            );
            return None;
        }
        let path = self.resolve(text);
        if path.is_file() {
            self.users = UserNames::read(&path);
            Some(UserSource::Htpasswd(path))
        } else if path.exists() {
            self.report(
                key,
                Some(v.span()),
                format!("{} is not a file", path.display()),
            );
            None
        } else {
            self.report(
                key,
                Some(v.span()),
                format!(
                    "users file not found: {} (create it with `htpasswd -c -B FILE USER`)",
                    path.display()
                ),
            );
            None
        }
    }

    /// `auth.public`: each entry compiled as a path pattern.
    fn public(&mut self, key: &str, v: &Value<'_>) -> Vec<PathPattern> {
        if !self.expect_array(key, v, "an array of path patterns") {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (path, text, span) in self.strings(key, v) {
            match PathPattern::parse(text) {
                Ok(p) => out.push(p),
                Err(e) => self.report(path, Some(span), e.to_string()),
            }
        }
        out
    }

    /// `[errors]`.
    fn errors(&mut self, s: &Section<'_, '_>) -> Errors {
        let mode = match self.choice(s, "mode", ERROR_MODES) {
            Some("custom") => ErrorMode::Custom,
            Some("detailed") => ErrorMode::Detailed,
            _ => ErrorMode::DetailedLocalOnly,
        };
        let pages = s.get("pages").and_then(|v| {
            let text = self.string(&s.path("pages"), v)?;
            let path = self.resolve(text);
            if path.is_dir() {
                Some(path)
            } else if path.exists() {
                self.report(
                    s.path("pages"),
                    Some(v.span()),
                    format!("{} is not a folder", path.display()),
                );
                None
            } else {
                self.report(
                    s.path("pages"),
                    Some(v.span()),
                    format!("folder not found: {}", path.display()),
                );
                None
            }
        });
        let upstream_401 = match self.choice(s, "upstream_401", UPSTREAM_401) {
            Some("replace") => Upstream401::Replace,
            _ => Upstream401::PassThrough,
        };
        Errors {
            mode,
            pages,
            upstream_401,
        }
    }

    /// `[log]`.
    fn log(&mut self, s: &Section<'_, '_>) -> Log {
        let access = match s.get("access") {
            None => AccessLogTarget::Stdout,
            Some(v) => match self.string(&s.path("access"), v) {
                Some("-") | None => AccessLogTarget::Stdout,
                Some("off") => AccessLogTarget::Off,
                Some("") => {
                    self.report(
                        s.path("access"),
                        Some(v.span()),
                        "must be \"-\" (stdout), \"off\" or a file path",
                    );
                    AccessLogTarget::Stdout
                }
                Some(text) => {
                    let path = self.resolve(text);
                    let parent = path
                        .parent()
                        .filter(|p| !p.as_os_str().is_empty())
                        .unwrap_or(Path::new("."));
                    if path.is_dir() {
                        self.report(
                            s.path("access"),
                            Some(v.span()),
                            format!("{} is a folder, not a file", path.display()),
                        );
                    } else if !parent.is_dir() {
                        self.report(
                            s.path("access"),
                            Some(v.span()),
                            format!(
                                "the folder of the access log does not exist: {}",
                                parent.display()
                            ),
                        );
                    }
                    AccessLogTarget::File(path)
                }
            },
        };
        let format = match self.choice(s, "format", LOG_FORMATS) {
            Some("json") => LogFormat::Json,
            _ => LogFormat::W3c,
        };
        let audit = s.get("audit").and_then(|v| {
            let text = self.string(&s.path("audit"), v)?;
            let path = self.resolve(text);
            let parent = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            if text.is_empty() || path.is_dir() {
                self.report(
                    s.path("audit"),
                    Some(v.span()),
                    "must be the path of a file (JSON lines)",
                );
                None
            } else if !parent.is_dir() {
                self.report(
                    s.path("audit"),
                    Some(v.span()),
                    format!(
                        "the folder of the audit log does not exist: {}",
                        parent.display()
                    ),
                );
                None
            } else {
                Some(path)
            }
        });
        Log {
            access,
            format,
            audit,
        }
    }

    // ---------------------------------------------------------------- values

    /// Reports "expected WHAT, found TYPE" unless `v` is an array; returns whether it is.
    fn expect_array(&mut self, key: &str, v: &Value<'_>, what: &str) -> bool {
        if matches!(v.get_ref(), DeValue::Array(_)) {
            return true;
        }
        self.report(
            key,
            Some(v.span()),
            format!("expected {what}, found {}", type_name(v.get_ref())),
        );
        false
    }

    /// A string value, or a type error.
    fn string<'v>(&mut self, key: &str, v: &'v Value<'_>) -> Option<&'v str> {
        match v.get_ref() {
            DeValue::String(s) => Some(s.as_ref()),
            other => {
                self.report(
                    key,
                    Some(v.span()),
                    format!("expected a string, found {}", type_name(other)),
                );
                None
            }
        }
    }

    /// An integer value, or a type error.
    fn integer(&mut self, key: &str, v: &Value<'_>) -> Option<i64> {
        match v.get_ref() {
            DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) => Some(n),
                Err(_) => {
                    self.report(key, Some(v.span()), "integer is out of range");
                    None
                }
            },
            other => {
                self.report(
                    key,
                    Some(v.span()),
                    format!("expected an integer, found {}", type_name(other)),
                );
                None
            }
        }
    }

    /// A boolean value, or a type error.
    fn boolean(&mut self, key: &str, v: &Value<'_>) -> Option<bool> {
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            other => {
                self.report(
                    key,
                    Some(v.span()),
                    format!("expected true or false, found {}", type_name(other)),
                );
                None
            }
        }
    }

    /// An array of strings: each entry with its indexed key path and span; non-strings reported.
    fn strings<'v>(&mut self, key: &str, v: &'v Value<'_>) -> Vec<(String, &'v str, Range<usize>)> {
        let DeValue::Array(items) = v.get_ref() else {
            self.report(
                key,
                Some(v.span()),
                format!("expected an array, found {}", type_name(v.get_ref())),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let path = format!("{key}[{i}]");
            if let Some(s) = self.string(&path, item) {
                out.push((path, s, item.span()));
            }
        }
        out
    }

    /// A duration in humantime form (`"10s"`, `"5m"`), defaulted when absent.
    fn duration(
        &mut self,
        s: &Section<'_, '_>,
        key: &str,
        default: Duration,
        zero_ok: bool,
    ) -> Duration {
        let Some(v) = s.get(key) else { return default };
        let path = s.path(key);
        let Some(text) = (match v.get_ref() {
            DeValue::String(t) => Some(t.as_ref()),
            other => {
                self.report(
                    &path,
                    Some(v.span()),
                    format!(
                        "expected a duration string such as \"10s\" or \"5m\", found {}",
                        type_name(other)
                    ),
                );
                None
            }
        }) else {
            return default;
        };
        match humantime::parse_duration(text) {
            Ok(d) if d.is_zero() && !zero_ok => {
                self.report(path, Some(v.span()), "must be longer than zero");
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.report(
                    path,
                    Some(v.span()),
                    format!("\"{text}\" is not a duration ({e}); write it like \"10s\", \"5m\" or \"1h 30m\""),
                );
                default
            }
        }
    }

    /// One of `accepted`, defaulted (to `None`) when absent.
    fn choice(
        &mut self,
        s: &Section<'_, '_>,
        key: &str,
        accepted: &[&'static str],
    ) -> Option<&'static str> {
        let v = s.get(key)?;
        let text = self.string(&s.path(key), v)?;
        match accepted.iter().find(|a| **a == text) {
            Some(a) => Some(*a),
            None => {
                self.bad_enum(s.path(key), v.span(), text, accepted);
                None
            }
        }
    }

    /// Reports a value outside an enumeration, listing what is accepted.
    fn bad_enum(&mut self, key: String, span: Range<usize>, text: &str, accepted: &[&str]) {
        let list = accepted
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ");
        self.report_suggest(
            key,
            Some(span),
            format!("unknown value \"{text}\"; accepted values: {list}"),
            suggest(text, accepted),
        );
    }
}

/// Reads an `ip:port` listen address (`localhost:PORT` meaning 127.0.0.1).
fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Some(port) = text
        .strip_prefix("localhost:")
        .and_then(|p| p.parse::<u16>().ok())
    {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    Err(format!(
        "\"{text}\" is not an ip:port address; write it like \"127.0.0.1:8080\" or \"[::1]:8080\""
    ))
}

/// Explains why a PEM file could not be used, naming the file.
fn pem_problem(what: &str, path: &Path, e: &pem::Error) -> String {
    let shown = path.display();
    match e {
        pem::Error::Io(io) if io.kind() == std::io::ErrorKind::NotFound => {
            format!("{what} file not found: {shown}")
        }
        pem::Error::Io(io) => format!("cannot read {what} file {shown}: {io}"),
        pem::Error::NoItemsFound => format!("no PEM {what} found in {shown}"),
        other => format!("{what} file {shown} is not valid PEM: {other}"),
    }
}

impl Upstream {
    /// Reads an `http://host[:port][/base]` upstream URL (port 80 when absent).
    pub fn parse(text: &str) -> Result<Upstream, String> {
        let uri: http::Uri = text.parse().map_err(|e| {
            format!("\"{text}\" is not a URL ({e}); write it like \"http://127.0.0.1:3000\"")
        })?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err("https upstreams are not supported by this version of Portcullis yet; use http://".into());
            }
            Some(other) => {
                return Err(format!(
                    "the upstream must be an http:// URL, not {other}://"
                ));
            }
            None => {
                return Err(format!(
                    "\"{text}\" has no scheme; write it like \"http://{text}\""
                ));
            }
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("\"{text}\" has no host"))?;
        if authority.as_str().contains('@') {
            return Err("the upstream URL must not contain a user name or password".into());
        }
        let host = authority.host();
        if host.is_empty() {
            return Err(format!("\"{text}\" has no host"));
        }
        if uri.query().is_some() {
            return Err("the upstream URL must not have a query string".into());
        }
        let port = authority.port_u16().unwrap_or(80);
        let host: Cow<'_, str> = match host.parse::<std::net::Ipv6Addr>() {
            Ok(_) => format!("[{host}]").into(),
            Err(_) => host.into(),
        };
        let authority = format!("{host}:{port}")
            .parse()
            .map_err(|e| format!("\"{text}\" has an invalid host or port ({e})"))?;
        let base_path = uri.path().trim_end_matches('/').to_owned();
        Ok(Upstream {
            authority,
            base_path,
        })
    }
}
