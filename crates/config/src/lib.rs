//! Portcullis configuration: the TOML file in, a validated [`Config`] (or every problem) out.
//!
//! A bad config must never half-start, and an operator should be able to fix it in one pass:
//! [`load`] and [`parse`] check the whole file against the schema of the contract and return
//! either a [`Config`] that the rest of Portcullis can use without further checks, or
//! [`Diagnostics`] naming every problem with its key path, file line and a "did you mean" for
//! misspelt names. Sections of the contract this build does not implement yet are refused, not
//! ignored, so nobody believes a rule is active when it is not.
#![forbid(unsafe_code)]

mod diagnostics;
pub mod model;
mod validate;

use std::net::SocketAddr;
use std::path::Path;

use policy::{PathPattern, Scheme};

pub use diagnostics::{Diagnostic, Diagnostics, format_warnings};
pub use model::*;
pub use validate::{
    DEFAULT_BACKLOG, DEFAULT_CACHE_TTL, DEFAULT_CONNECT_TIMEOUT, DEFAULT_FILTER_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_LDAP_POOL, DEFAULT_LDAP_TIMEOUT,
    DEFAULT_LISTEN, DEFAULT_MAX_CONCURRENT, DEFAULT_MAX_REQUESTS, DEFAULT_RATE_INTERVAL,
    DEFAULT_REALM, DEFAULT_UPSTREAM_TIMEOUT, DEFAULT_VERIFY_QUEUE_TIMEOUT, parse_ldap_url,
};

/// Reads, parses and validates the config file at `path`; relative paths in it are resolved
/// against the file's folder. Problems that do not stop the gateway are in
/// [`Config::warnings`] (print them with [`format_warnings`]).
pub fn load(path: &Path) -> Result<Config, Diagnostics> {
    let file_name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        Diagnostics::single(
            &file_name,
            None,
            format!("cannot read the configuration file: {e}"),
        )
    })?;
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let base_dir = absolute.parent().unwrap_or(Path::new("."));
    validate::check(&text, base_dir, &file_name, Some(absolute.clone()))
}

/// Parses and validates config `text`; relative paths are resolved against `base_dir`, and
/// `file_name` is only used in diagnostics (the result's `source` is `None`).
pub fn parse(text: &str, base_dir: &Path, file_name: &str) -> Result<Config, Diagnostics> {
    validate::check(text, base_dir, file_name, None)
}

impl Config {
    /// The built-in config of `portcullis demo`: form and Basic sign-in, inline users,
    /// `/public/**` public,
    /// access log on stdout, no IP restrictions, no URL rules, no filter, no dynamic limits,
    /// the default logon regulation, the memory state backend, no admin listener.
    pub fn builder_for_demo(
        listen: SocketAddr,
        upstream: Upstream,
        users: Vec<(String, String)>,
    ) -> Config {
        let public = PathPattern::parse("/public/**")
            .map(|p| vec![p])
            .unwrap_or_default();
        Config {
            source: None,
            server: Server {
                listen: vec![listen],
                upstream: Some(upstream),
                tls: None,
                header_timeout: DEFAULT_HEADER_TIMEOUT,
                upstream_timeout: DEFAULT_UPSTREAM_TIMEOUT,
                connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                drain_timeout: validate::DEFAULT_DRAIN_TIMEOUT,
                forwarded_header: ForwardedHeader::XForwardedFor,
                workers: None,
                trusted_proxies: policy::IpSet::default(),
                idle_timeout: validate::DEFAULT_IDLE_TIMEOUT,
                backlog: validate::DEFAULT_BACKLOG,
                max_connections: None,
                upstream_max_connections: None,
            },
            auth: Auth {
                realm: DEFAULT_REALM.to_owned(),
                // Browsers get the sign-in page, curl and scripts Basic.
                schemes: vec![Scheme::Form, Scheme::Basic],
                users: UserSource::Inline(users),
                public,
                acl_status: 401,
                cache_ttl: DEFAULT_CACHE_TTL,
                forward_authorization: false,
                groups: None,
                case_insensitive_paths: false,
                verify_queue_timeout: validate::DEFAULT_VERIFY_QUEUE_TIMEOUT,
                digest: None,
                jwt: None,
                certificate_user: CertificateUser::Cn,
            },
            errors: Errors::default(),
            log: Log {
                access: AccessLogTarget::Stdout,
                format: LogFormat::W3c,
                audit: None,
            },
            ip: policy::IpPolicy::open(),
            rules: Vec::new(),
            filter: None,
            dynamic: Dynamic::default(),
            logon: Logon::default(),
            state: State::default(),
            admin: Admin::default(),
            portal: Portal::default(),
            mail: None,
            ldap: None,
            oidc: None,
            forward_auth: ForwardAuth::default(),
            warnings: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests;
