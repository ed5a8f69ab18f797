//! `[auth]`: the realm, sign-in schemes, users (htpasswd or SQLite), public paths and ACL status.

use std::path::Path;
use std::time::Duration;

use policy::{PathPattern, Scheme};
use toml::de::DeValue;

use super::rules::{self, UserNames};
use super::{Checker, Section, Value};
use crate::model::{Auth, UserSource};

/// Keys of `[auth]`.
pub(super) const AUTH_KEYS: &[&str] = &[
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
    "digest",
    "jwt",
    "certificate_user",
];
/// Keys of `[auth.jwt]`.
const JWT_KEYS: &[&str] = &[
    "issuer",
    "audience",
    "jwks",
    "algorithms",
    "leeway",
    "user_claim",
    "groups_claim",
];
/// Algorithms `auth.jwt.algorithms` accepts: asymmetric signatures only (an HMAC key would be a
/// secret shared with the issuer, and `none` no signature at all).
const JWT_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];
/// Keys of `[auth.digest]`.
const DIGEST_KEYS: &[&str] = &["users", "algorithms", "nonce_ttl"];
/// Default `auth.digest.nonce_ttl`.
pub const DEFAULT_NONCE_TTL: Duration = Duration::from_secs(300);
/// Names accepted in `auth.schemes`.
const SCHEME_NAMES: &[&str] = &["basic", "digest", "bearer", "form", "oidc"];
/// Values of `auth.path_case`.
const PATH_CASES: &[&str] = &["sensitive", "insensitive"];

/// Default `auth.verify_queue_timeout`.
pub const DEFAULT_VERIFY_QUEUE_TIMEOUT: Duration = Duration::from_secs(2);
/// Default `auth.realm`.
pub const DEFAULT_REALM: &str = "Restricted area";
/// Default `auth.cache_ttl`.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(300);

impl Checker<'_> {
    /// `[auth]`.
    pub(super) fn auth(&mut self, s: &Section<'_, '_>) -> Option<Auth> {
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
        let jwt = s.get("jwt").and_then(|v| self.jwt(v));
        // API tokens live in the user database (`portcullis tokens create`); JWTs need
        // [auth.jwt].
        if schemes.contains(&Scheme::Bearer)
            && let Some(users) = &users
            && !users.is_database()
            && s.get("jwt").is_none()
        {
            self.report(
                s.path("schemes"),
                s.get("schemes").map(|v| v.span()),
                "\"bearer\" checks API tokens, which live in the user database, or JWTs: set auth.users = \"sqlite:PATH\" (portcullis users import moves an htpasswd file there) and make tokens with portcullis tokens create USER, or add [auth.jwt]",
            );
        }
        if let Some(v) = s.get("jwt")
            && !schemes.contains(&Scheme::Bearer)
        {
            self.warn(
                "auth.jwt",
                Some(v.span()),
                "has no effect: auth.schemes does not list \"bearer\"",
            );
        }
        let sqlite = matches!(users, Some(UserSource::Sqlite(_)));
        let digest = match s.get("digest") {
            // With a user database the HA1 values live in it (`users passwd`).
            None if schemes.contains(&Scheme::Digest) && sqlite => Some(crate::model::Digest {
                users: None,
                algorithms: vec![
                    policy::DigestAlgorithm::Sha256,
                    policy::DigestAlgorithm::Md5,
                ],
                nonce_ttl: DEFAULT_NONCE_TTL,
            }),
            None if schemes.contains(&Scheme::Digest) => {
                self.report(
                    s.path("schemes"),
                    s.get("schemes").map(|v| v.span()),
                    "\"digest\" needs its users: add [auth.digest] users = \"users.htdigest\" (made with Apache's htdigest, or portcullis hash --digest)",
                );
                None
            }
            None => None,
            Some(v) => {
                let d = self.digest(v, &realm, sqlite);
                if !schemes.contains(&Scheme::Digest) {
                    self.warn(
                        "auth.digest",
                        Some(v.span()),
                        "has no effect: auth.schemes does not list \"digest\"",
                    );
                }
                d
            }
        };
        let groups = s
            .get("groups")
            .and_then(|v| self.groups_file(&s.path("groups"), v));
        // With a user database, groups live in it (`portcullis users groups`): rules may name
        // any group.
        // So with JWTs: their groups come from the token's groups claim; and with a directory.
        // And with OpenID Connect: the ID token's groups claim.
        let oidc = matches!(
            s.get("schemes").map(|v| v.get_ref()),
            Some(DeValue::Array(a)) if a.iter().any(|x| matches!(x.get_ref(), DeValue::String(t) if t.as_ref() == "oidc"))
        );
        if (users
            .as_ref()
            .is_some_and(|u| u.is_database() || matches!(u, UserSource::Ldap(_)))
            || jwt.is_some()
            || oidc)
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
        let certificate_user = match self.choice(s, "certificate_user", &["cn", "email"]) {
            Some("email") => crate::model::CertificateUser::Email,
            _ => crate::model::CertificateUser::Cn,
        };
        Some(Auth {
            certificate_user,
            jwt,
            digest,
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
                "bearer" if out.contains(&Scheme::Bearer) => {
                    self.report(path, Some(span), "\"bearer\" is listed twice");
                }
                "bearer" => out.push(Scheme::Bearer),
                "digest" if out.contains(&Scheme::Digest) => {
                    self.report(path, Some(span), "\"digest\" is listed twice");
                }
                "digest" => out.push(Scheme::Digest),
                "oidc" if out.contains(&Scheme::Oidc) => {
                    self.report(path, Some(span), "\"oidc\" is listed twice");
                }
                "oidc" => out.push(Scheme::Oidc),
                other => self.bad_enum(path, span, other, SCHEME_NAMES),
            }
        }
        out
    }

    /// `[auth.jwt]`.
    fn jwt(&mut self, v: &Value<'_>) -> Option<crate::model::Jwt> {
        let DeValue::Table(t) = v.get_ref() else {
            self.report(
                "auth.jwt",
                Some(v.span()),
                "expected a table: [auth.jwt] with issuer, audience and jwks",
            );
            return None;
        };
        self.unknown_in(t, "auth.jwt.", JWT_KEYS);
        let s = Section {
            name: "auth.jwt",
            table: Some(t),
            span: Some(v.span()),
        };
        let required = |this: &mut Self, key: &str, example: &str| -> Option<String> {
            match s.get(key) {
                None => {
                    this.report(
                        s.path(key),
                        Some(v.span()),
                        format!("is required, e.g. {key} = {example}"),
                    );
                    None
                }
                Some(kv) => match this.string(&s.path(key), kv) {
                    Some("") => {
                        this.report(s.path(key), Some(kv.span()), "must not be empty");
                        None
                    }
                    other => other.map(str::to_owned),
                },
            }
        };
        let issuer = required(self, "issuer", "\"https://id.example.com/\"");
        let audience = match s.get("audience") {
            None => {
                self.report(
                    "auth.jwt.audience",
                    Some(v.span()),
                    "is required: the aud a token must name for this site (a token meant for another service must not pass), e.g. audience = \"portcullis\"",
                );
                None
            }
            Some(av) => match av.get_ref() {
                DeValue::String(a) if !a.is_empty() => Some(vec![a.to_string()]),
                _ => {
                    let list: Vec<String> = self
                        .strings("auth.jwt.audience", av)
                        .into_iter()
                        .map(|(_, t, _)| t.to_owned())
                        .collect();
                    if list.is_empty() {
                        self.report(
                            "auth.jwt.audience",
                            Some(av.span()),
                            "must name at least one audience",
                        );
                        None
                    } else {
                        Some(list)
                    }
                }
            },
        };
        let jwks = required(self, "jwks", "\"https://id.example.com/.well-known/jwks.json\"")
            .and_then(|text| {
                let span = s.get("jwks").map(|v| v.span());
                if let Some(rest) = text
                    .strip_prefix("https://")
                    .or_else(|| text.strip_prefix("http://"))
                {
                    let host = rest.split(['/', '?']).next().unwrap_or("");
                    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
                    let host = host.trim_start_matches('[').trim_end_matches(']');
                    let loopback = host == "localhost"
                        || host
                            .parse::<std::net::IpAddr>()
                            .is_ok_and(|ip| ip.is_loopback());
                    if text.starts_with("http://") && !loopback {
                        self.report(
                            "auth.jwt.jwks",
                            span,
                            "must be https:// (keys fetched over plain HTTP could be replaced on the way); http:// is only accepted on a loopback address",
                        );
                        return None;
                    }
                    Some(crate::model::JwksSource::Url(text))
                } else {
                    let path = self.resolve(&text);
                    if !path.is_file() {
                        self.report(
                            "auth.jwt.jwks",
                            span,
                            format!(
                                "JWKS file not found: {} (a URL must start with https://)",
                                path.display()
                            ),
                        );
                        return None;
                    }
                    Some(crate::model::JwksSource::File(path))
                }
            });
        let algorithms = match s.get("algorithms") {
            None => vec!["RS256".into(), "ES256".into(), "EdDSA".into()],
            Some(av) => {
                let mut out: Vec<String> = Vec::new();
                for (path, text, span) in self.strings("auth.jwt.algorithms", av) {
                    if text.starts_with("HS") || text.eq_ignore_ascii_case("none") {
                        self.report(
                            path,
                            Some(span),
                            format!("\"{text}\" is refused: only asymmetric signatures are checked (an HMAC key is a shared secret, \"none\" no signature)"),
                        );
                    } else if JWT_ALGORITHMS.contains(&text) {
                        if !out.iter().any(|a| a == text) {
                            out.push(text.to_owned());
                        }
                    } else {
                        self.bad_enum(path, span, text, JWT_ALGORITHMS);
                    }
                }
                if out.is_empty() {
                    self.report(
                        "auth.jwt.algorithms",
                        Some(av.span()),
                        "must list at least one of RS256, ES256, EdDSA …",
                    );
                }
                out
            }
        };
        let leeway = self.duration(&s, "leeway", Duration::from_secs(60), true);
        let claim = |this: &mut Self, key: &str, default: &str| -> String {
            s.get(key)
                .and_then(|cv| this.string(&s.path(key), cv))
                .filter(|c| !c.is_empty())
                .unwrap_or(default)
                .to_owned()
        };
        let user_claim = claim(self, "user_claim", "sub");
        let groups_claim = claim(self, "groups_claim", "groups");
        Some(crate::model::Jwt {
            issuer: issuer?,
            audience: audience?,
            jwks: jwks?,
            algorithms,
            leeway,
            user_claim,
            groups_claim,
        })
    }

    /// `[auth.digest]`.
    fn digest(&mut self, v: &Value<'_>, realm: &str, sqlite: bool) -> Option<crate::model::Digest> {
        let DeValue::Table(t) = v.get_ref() else {
            self.report(
                "auth.digest",
                Some(v.span()),
                "expected a table: [auth.digest] with users = \"users.htdigest\"",
            );
            return None;
        };
        self.unknown_in(t, "auth.digest.", DIGEST_KEYS);
        let s = Section {
            name: "auth.digest",
            table: Some(t),
            span: Some(v.span()),
        };
        let users = match s.get("users") {
            None if sqlite => Some(None),
            None => {
                self.report(
                    "auth.digest.users",
                    Some(v.span()),
                    "is required: the htdigest file (user:realm:HA1 lines), unless auth.users is a sqlite: user database",
                );
                None
            }
            Some(uv) => {
                let text = self.string("auth.digest.users", uv)?;
                let path = self.resolve(text);
                if !path.is_file() {
                    self.report(
                        "auth.digest.users",
                        Some(uv.span()),
                        format!(
                            "htdigest file not found: {} (make one with: htdigest -c FILE REALM USER)",
                            path.display()
                        ),
                    );
                    None
                } else {
                    Some(Some(path))
                }
            }
        };
        let algorithms = match s.get("algorithms") {
            None => vec![
                policy::DigestAlgorithm::Sha256,
                policy::DigestAlgorithm::Md5,
            ],
            Some(av) => {
                let mut out = Vec::new();
                for (path, text, span) in self.strings("auth.digest.algorithms", av) {
                    match policy::DigestAlgorithm::parse(text) {
                        Some(a) if out.contains(&a) => {
                            self.report(path, Some(span), format!("\"{text}\" is listed twice"));
                        }
                        Some(a) => out.push(a),
                        None => self.bad_enum(path, span, text, &["SHA-256", "MD5"]),
                    }
                }
                if out.is_empty() {
                    self.report(
                        "auth.digest.algorithms",
                        Some(av.span()),
                        "must list at least one of \"SHA-256\", \"MD5\"",
                    );
                }
                // SHA-256 is always challenged first (RFC 7616 §3.7: the preferred first).
                out.sort_by_key(|a| *a != policy::DigestAlgorithm::Sha256);
                out
            }
        };
        let nonce_ttl = self.duration(&s, "nonce_ttl", DEFAULT_NONCE_TTL, false);
        // Clients answer the first challenge they support, and SHA-256 is sent first: a user
        // with only an MD5 line (all Apache's htdigest writes) cannot sign in with them.
        if let Some(Some(path)) = &users
            && algorithms.contains(&policy::DigestAlgorithm::Sha256)
            && let Ok(text) = std::fs::read_to_string(path)
        {
            let (mut md5, mut sha) = (Vec::new(), Vec::new());
            for line in text.lines() {
                let mut f = line.trim_end_matches('\r').splitn(3, ':');
                if let (Some(u), Some(r), Some(h)) = (f.next(), f.next(), f.next())
                    && r == realm
                {
                    match h.trim().len() {
                        32 => md5.push(u.to_owned()),
                        64 => sha.push(u.to_owned()),
                        _ => {}
                    }
                }
            }
            let md5_only: Vec<&String> = md5.iter().filter(|u| !sha.contains(u)).collect();
            if md5_only.is_empty() && md5.is_empty() && sha.is_empty() {
                self.warn(
                    "auth.digest.users",
                    s.get("users").map(|v| v.span()),
                    format!("has no line for the realm \"{realm}\" (auth.realm): every Digest sign-in will be refused"),
                );
            } else if !md5_only.is_empty() {
                let shown: Vec<&str> = md5_only.iter().take(5).map(|u| u.as_str()).collect();
                self.warn(
                    "auth.digest.users",
                    s.get("users").map(|v| v.span()),
                    format!(
                        "{} user(s) ({}{}) have only an MD5 line, but clients answer the first challenge, SHA-256: add their SHA-256 lines (portcullis hash --digest --realm \"{realm}\" --user NAME), or set algorithms = [\"MD5\"]",
                        md5_only.len(),
                        shown.join(", "),
                        if md5_only.len() > 5 { ", …" } else { "" }
                    ),
                );
            }
        }
        Some(crate::model::Digest {
            users: users?,
            algorithms,
            nonce_ttl,
        })
    }

    /// `auth.users`: an htpasswd file that exists, or `sqlite:PATH` (a user database whose
    /// folder exists; `portcullis users add` creates the file).
    pub(super) fn users(&mut self, key: &str, v: &Value<'_>) -> Option<UserSource> {
        let text = self.string(key, v)?;
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            let rest = text.split_once("://").map_or("", |(_, r)| r);
            let authority = rest.split(['/', '?']).next().unwrap_or("");
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            if host.is_empty() && !text.contains("host=") {
                self.report(
                    key,
                    Some(v.span()),
                    "names no server: write \"postgres://USER@HOST[:PORT]/DATABASE\" (the password in the URL: postgres://USER:PASSWORD@HOST/DATABASE)",
                );
                return None;
            }
            return Some(UserSource::Postgres(text.to_owned()));
        }
        if text.starts_with("ldap:") || text.starts_with("ldaps:") {
            return match super::parse_ldap_url(text) {
                Ok(_) => Some(UserSource::Ldap(text.to_owned())),
                Err(why) => {
                    self.report(key, Some(v.span()), why);
                    None
                }
            };
        }
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
}
