//! `[oidc]`: "sign in with" an OpenID Connect provider (the `oidc` scheme).

use super::{Checker, Section};
use crate::model::Oidc;

/// Keys of `[oidc]`.
pub(super) const OIDC_KEYS: &[&str] = &[
    "name",
    "issuer",
    "client_id",
    "client_secret_file",
    "scopes",
    "user_claim",
    "groups_claim",
    "allowed_groups",
];

impl Checker<'_> {
    /// `[oidc]` for the `oidc` scheme; `None` with problems reported.
    pub(super) fn oidc(
        &mut self,
        s: &Section<'_, '_>,
        public_url: Option<&str>,
        prefix: &str,
    ) -> Option<Oidc> {
        if s.table.is_none() {
            self.report(
                "oidc",
                None,
                "the \"oidc\" scheme needs an [oidc] section: issuer, client_id and client_secret_file",
            );
            return None;
        }
        let text = |c: &mut Self, key: &str| -> Option<(String, std::ops::Range<usize>)> {
            let v = s.get(key)?;
            c.string(&s.path(key), v).map(|t| (t.to_owned(), v.span()))
        };
        let issuer = match text(self, "issuer") {
            None => {
                if s.get("issuer").is_none() {
                    self.missing(s, "issuer", "\"https://id.example.com/realms/main\"");
                }
                None
            }
            Some((t, span)) => {
                let loopback = t
                    .strip_prefix("http://")
                    .and_then(|r| r.split(['/', ':']).next())
                    .is_some_and(|h| h == "localhost" || h == "127.0.0.1" || h == "[::1]");
                if t.starts_with("https://") || loopback {
                    Some(t.trim_end_matches('/').to_owned())
                } else {
                    self.report(
                        s.path("issuer"),
                        Some(span),
                        "must be an https:// URL (http:// only on a loopback address, for tests): the provider's keys and tokens must not cross a network in clear",
                    );
                    None
                }
            }
        };
        let client_id = text(self, "client_id").map(|(t, _)| t);
        if s.get("client_id").is_none() {
            self.missing(s, "client_id", "\"portcullis\"");
        }
        let client_secret_file = match s.get("client_secret_file") {
            None => {
                self.missing(s, "client_secret_file", "\"/etc/portcullis/oidc-secret\"");
                None
            }
            Some(v) => self.string(&s.path("client_secret_file"), v).and_then(|p| {
                let path = self.resolve(p);
                match std::fs::read_to_string(&path) {
                    Ok(t) if t.lines().next().is_some_and(|l| !l.is_empty()) => Some(path),
                    Ok(_) => {
                        self.report(
                            s.path("client_secret_file"),
                            Some(v.span()),
                            format!("{}: the first line (the secret) is empty", path.display()),
                        );
                        None
                    }
                    Err(e) => {
                        self.report(
                            s.path("client_secret_file"),
                            Some(v.span()),
                            format!("cannot read {}: {e}", path.display()),
                        );
                        None
                    }
                }
            }),
        };
        let mut scopes: Vec<String> = match s.get("scopes") {
            None => vec!["openid".into(), "profile".into(), "email".into()],
            Some(v) => self
                .strings(&s.path("scopes"), v)
                .into_iter()
                .map(|(_, t, _)| t.to_owned())
                .collect(),
        };
        if !scopes.iter().any(|x| x == "openid") {
            scopes.insert(0, "openid".into());
        }
        let allowed_groups = match s.get("allowed_groups") {
            None => Vec::new(),
            Some(v) => self
                .strings(&s.path("allowed_groups"), v)
                .into_iter()
                .map(|(_, t, _)| t.to_owned())
                .collect(),
        };
        let claim = |c: &mut Self, key: &str, default: &str| -> String {
            text(c, key).map_or_else(|| default.to_owned(), |(t, _)| t)
        };
        let user_claim = claim(self, "user_claim", "preferred_username");
        let groups_claim = claim(self, "groups_claim", "groups");
        let name = claim(self, "name", "the identity provider");
        if public_url.is_none() {
            self.report(
                "portal.public_url",
                None,
                format!(
                    "is required with the \"oidc\" scheme: the provider sends browsers back to PUBLIC_URL{prefix}/oidc/callback (register that address with it)"
                ),
            );
            return None;
        }
        Some(Oidc {
            name,
            issuer: issuer?,
            client_id: client_id?,
            client_secret_file: client_secret_file?,
            scopes,
            user_claim,
            groups_claim,
            allowed_groups,
        })
    }
}
