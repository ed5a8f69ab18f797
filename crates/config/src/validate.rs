//! The schema walk: the span-preserving TOML tree in, a validated [`Config`] or every problem out.
//!
//! serde's derive stops at the first error and loses the line of anything it rejects, so the
//! tree is walked by hand against the known keys of each section. Each check reports into one
//! list (with the key path and the line computed from the value's byte span) and carries on
//! with a default, so a single run names every mistake in the file.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};

use policy::Scheme;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::diagnostics::{Diagnostic, Diagnostics, suggest};
use crate::model::*;

mod access;
mod auth;
mod ldap;
mod oidc;
mod output;
mod portal;
mod rules;
mod runtime;
mod server;
mod values;

pub use access::DEFAULT_FILTER_TIMEOUT;
use access::{FILTER_KEYS, IP_KEYS};
use auth::AUTH_KEYS;
pub use auth::{DEFAULT_CACHE_TTL, DEFAULT_REALM, DEFAULT_VERIFY_QUEUE_TIMEOUT};
use ldap::LDAP_KEYS;
pub use ldap::{DEFAULT_LDAP_POOL, DEFAULT_LDAP_TIMEOUT, parse_ldap_url};
use oidc::OIDC_KEYS;
use output::{ERRORS_KEYS, LOG_KEYS};
use portal::{MAIL_KEYS, PORTAL_KEYS};
use rules::{GroupNames, UserNames};
use runtime::{ADMIN_KEYS, DYNAMIC_KEYS, LOGON_KEYS, STATE_KEYS};
pub use runtime::{DEFAULT_MAX_CONCURRENT, DEFAULT_MAX_REQUESTS, DEFAULT_RATE_INTERVAL};
use server::SERVER_KEYS;
pub use server::{
    DEFAULT_BACKLOG, DEFAULT_CONNECT_TIMEOUT, DEFAULT_DRAIN_TIMEOUT, DEFAULT_HEADER_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT, DEFAULT_LISTEN, DEFAULT_UPSTREAM_TIMEOUT,
};

type Value<'i> = Spanned<DeValue<'i>>;

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
    ("ldap", LDAP_KEYS),
    ("oidc", OIDC_KEYS),
    ("forward_auth", FORWARD_AUTH_KEYS),
];
/// Keys of `[forward_auth]`.
const FORWARD_AUTH_KEYS: &[&str] = &["headers"];
/// The name of the URL-rule array of tables.
const RULE: &str = "rule";
/// Sections of the contract that this build does not implement yet: refused, never ignored.
const UNSUPPORTED_SECTIONS: &[&str] = &[];

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
            ldap,
            oidc,
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
            && !a.schemes.contains(&Scheme::Oidc)
            && !a.users.is_database()
        {
            self.warn(
                "portal",
                portal.span.clone(),
                "has no effect: it configures form sign-in (auth.schemes with \"form\") and account links (users in SQLite), and neither is enabled",
            );
        }
        // Links need somewhere to live and an address to point at.
        if mail.table.is_some() {
            if !auth.as_ref().is_some_and(|a| a.users.is_database()) {
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
        let oidc_config = if auth
            .as_ref()
            .is_some_and(|a| a.schemes.contains(&Scheme::Oidc))
        {
            self.oidc(oidc, portal.public_url.as_deref(), &portal.prefix)
        } else {
            if oidc.table.is_some() {
                self.warn(
                    "oidc",
                    oidc.span.clone(),
                    "has no effect: auth.schemes does not list \"oidc\"",
                );
            }
            None
        };
        let ldap_config = match auth.as_ref().map(|a| &a.users) {
            Some(UserSource::Ldap(url)) => {
                let url = url.clone();
                // A problem is reported: the config is refused with it.
                self.ldap(ldap, &url)
            }
            _ => {
                if ldap.table.is_some() {
                    self.warn(
                        "ldap",
                        ldap.span.clone(),
                        "has no effect: auth.users is not an ldap:// or ldaps:// directory",
                    );
                }
                None
            }
        };
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
            ldap: ldap_config,
            oidc: oidc_config,
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

/// How [`parse_http_url`] names a URL in its messages.
struct UrlWording {
    /// What the URL points at: "the {name} must be an http:// URL", "the {name} URL must not …".
    name: &'static str,
    /// What https URLs of its kind are called ("https upstreams").
    https: &'static str,
    /// A valid URL, for "write it like …".
    example: &'static str,
}

/// Reads an `http://host[:port][/path]` URL (`server.upstream`, `filter.url`): an http scheme,
/// a host, no user name or password. Returns the URL and its authority.
fn parse_http_url(
    text: &str,
    wording: &UrlWording,
) -> Result<(http::Uri, http::uri::Authority), String> {
    let uri: http::Uri = text.parse().map_err(|e| {
        format!(
            "\"{text}\" is not a URL ({e}); write it like \"{}\"",
            wording.example
        )
    })?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "{} are not supported by this version of Portcullis yet; use http://",
                wording.https
            ));
        }
        Some(other) => {
            return Err(format!(
                "the {} must be an http:// URL, not {other}://",
                wording.name
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
        .cloned()
        .ok_or_else(|| format!("\"{text}\" has no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!(
            "the {} URL must not contain a user name or password",
            wording.name
        ));
    }
    if authority.host().is_empty() {
        return Err(format!("\"{text}\" has no host"));
    }
    Ok((uri, authority))
}
