//! `[server]`: the listeners, the upstream URL, TLS, timeouts and connection limits.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use toml::de::DeValue;

use super::{Checker, Section, UrlWording, Value, parse_http_url, parse_listen, type_name};
use crate::model::{ClientAuth, ForwardedHeader, Server, Tls, Upstream};

/// Keys of `[server]`.
pub(super) const SERVER_KEYS: &[&str] = &[
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
/// Keys of `server.tls`.
const TLS_KEYS: &[&str] = &["cert", "key", "client_ca", "client_auth", "crl"];
/// How messages name `server.upstream`.
const UPSTREAM_URL: UrlWording = UrlWording {
    name: "upstream",
    https: "https upstreams",
    example: "http://127.0.0.1:3000",
};

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
/// Default `server.drain_timeout`.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `server.connect_timeout`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl Checker<'_> {
    /// `[server]`.
    pub(super) fn server(&mut self, s: &Section<'_, '_>) -> Option<Server> {
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
        let backlog = self
            .optional_count(
                s,
                "backlog",
                1..=1_000_000,
                "connections waiting to be accepted",
            )
            .and_then(|n| u32::try_from(n).ok());
        let max_connections = self
            .optional_count(
                s,
                "max_connections",
                1..=10_000_000,
                "open client connections",
            )
            .and_then(|n| usize::try_from(n).ok());
        let upstream_max_connections = self
            .optional_count(
                s,
                "upstream_max_connections",
                1..=10_000_000,
                "requests in flight to the upstream",
            )
            .and_then(|n| usize::try_from(n).ok());
        let workers = self
            .optional_count(s, "workers", 1..=1024, "runtime worker threads")
            .and_then(|n| usize::try_from(n).ok());
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
        let file_opt = |this: &mut Self, name: &str| -> Option<(PathBuf, Range<usize>)> {
            let path = format!("{key}.{name}");
            let fv = t.get(name)?;
            let text = this.string(&path, fv)?;
            let resolved = this.resolve(text);
            if !resolved.is_file() {
                this.report(
                    path,
                    Some(fv.span()),
                    format!("file not found: {}", resolved.display()),
                );
                return None;
            }
            Some((resolved, fv.span()))
        };
        let cert = file(self, "cert");
        let private = file(self, "key");
        let cert_ok = cert
            .as_ref()
            .is_some_and(|(p, span)| self.check_cert(&format!("{key}.cert"), p, span));
        let key_ok = private
            .as_ref()
            .is_some_and(|(p, span)| self.check_key(&format!("{key}.key"), p, span));
        // Client certificates: the CA they must chain to, whether they are required, the CA's CRLs.
        let client_ca = file_opt(self, "client_ca")
            .filter(|(p, span)| self.check_cert(&format!("{key}.client_ca"), p, span));
        let client_auth = match t.get("client_auth") {
            None if client_ca.is_some() => ClientAuth::Optional,
            None => ClientAuth::Off,
            Some(cv) => match self.string(&format!("{key}.client_auth"), cv) {
                Some("optional") => ClientAuth::Optional,
                Some("required") => ClientAuth::Required,
                Some(other) => {
                    self.bad_enum(
                        format!("{key}.client_auth"),
                        cv.span(),
                        other,
                        &["optional", "required"],
                    );
                    ClientAuth::Off
                }
                None => ClientAuth::Off,
            },
        };
        if client_auth != ClientAuth::Off && client_ca.is_none() && t.get("client_ca").is_none() {
            self.report(
                format!("{key}.client_auth"),
                t.get("client_auth").map(|v| v.span()),
                "needs client_ca: the CA certificate(s) client certificates must chain to",
            );
        }
        let crl = file_opt(self, "crl");
        if crl.is_some() && t.get("client_ca").is_none() {
            self.report(
                format!("{key}.crl"),
                t.get("crl").map(|v| v.span()),
                "a CRL without client_ca has nothing to apply to: set client_ca too",
            );
        }
        if let Some((path, span)) = &crl
            && let Err(e) = CertificateRevocationListDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        {
            self.report(
                format!("{key}.crl"),
                Some(span.clone()),
                pem_problem("certificate revocation list", path, &e),
            );
        }
        match (cert, private) {
            (Some((cert, _)), Some((key, _))) if cert_ok && key_ok => Some(Tls {
                cert,
                key,
                client_ca: client_ca.map(|(p, _)| p),
                client_auth,
                crl: crl.map(|(p, _)| p),
            }),
            _ => None,
        }
    }

    /// The certificate file holds at least one PEM certificate.
    pub(super) fn check_cert(&mut self, key: &str, path: &Path, span: &Range<usize>) -> bool {
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
    pub(super) fn check_key(&mut self, key: &str, path: &Path, span: &Range<usize>) -> bool {
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
        let (uri, authority) = parse_http_url(text, &UPSTREAM_URL)?;
        if uri.query().is_some() {
            return Err("the upstream URL must not have a query string".into());
        }
        let host = authority.host();
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
