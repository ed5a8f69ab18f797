//! `[portal]` (the sign-in pages and sessions of the `form` scheme, account links) and `[mail]`
//! (the SMTP server that sends those links).

use std::time::Duration;

use super::values::{DAY, Within};
use super::{Checker, Section};
use crate::model::{Mail, Portal};

/// Keys of `[portal]`.
pub(super) const PORTAL_KEYS: &[&str] = &[
    "prefix",
    "idle_timeout",
    "max_age",
    "public_url",
    "invite_ttl",
    "reset_ttl",
    "max_sessions_per_user",
];
/// Keys of `[mail]`.
pub(super) const MAIL_KEYS: &[&str] = &[
    "host", "port", "from", "starttls", "username", "password", "ca",
];

impl Checker<'_> {
    /// `[portal]`.
    pub(super) fn portal(&mut self, s: &Section<'_, '_>) -> Portal {
        let d = Portal::default();
        let prefix = match s.get("prefix") {
            None => d.prefix.clone(),
            Some(v) => match self.string(&s.path("prefix"), v) {
                Some(p)
                    if p.starts_with('/')
                        && p.len() > 1
                        && !p.ends_with('/')
                        && p.bytes().all(|b| {
                            b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'-' | b'_')
                        })
                        && !p.contains("//")
                        && !p.split('/').any(|seg| seg == "." || seg == "..") =>
                {
                    p.to_owned()
                }
                Some(_) => {
                    self.report(
                        s.path("prefix"),
                        Some(v.span()),
                        "must be a path such as \"/.portcullis\" or \"/auth\": a leading '/', no trailing '/', letters, digits, '.', '-', '_' only",
                    );
                    d.prefix.clone()
                }
                None => d.prefix.clone(),
            },
        };
        let idle_timeout = self.bounded_duration(
            &s.path("idle_timeout"),
            s.get("idle_timeout"),
            d.idle_timeout,
            &Within {
                max: 30 * DAY,
                max_text: "30d",
                example: "30m",
                zero: "an idle_timeout of 0 ends every session at once",
            },
        );
        let max_age = self.bounded_duration(
            &s.path("max_age"),
            s.get("max_age"),
            d.max_age,
            &Within {
                max: 365 * DAY,
                max_text: "365d",
                example: "12h",
                zero: "a max_age of 0 ends every session at once",
            },
        );
        if max_age < idle_timeout && s.get("max_age").is_some() {
            self.report(
                s.path("max_age"),
                s.get("max_age").map(|v| v.span()),
                "is shorter than idle_timeout, so idle_timeout never applies; make max_age the longer one",
            );
        }
        let public_url = match s.get("public_url") {
            None => None,
            Some(v) => match self.string(&s.path("public_url"), v) {
                Some(u) => match u.parse::<http::Uri>() {
                    Ok(uri)
                        if matches!(uri.scheme_str(), Some("http" | "https"))
                            && uri.authority().is_some()
                            && uri.query().is_none() =>
                    {
                        Some(u.trim_end_matches('/').to_owned())
                    }
                    _ => {
                        self.report(
                            s.path("public_url"),
                            Some(v.span()),
                            "must be the site's address as people reach it, e.g. \"https://app.example.com\"",
                        );
                        None
                    }
                },
                None => None,
            },
        };
        let link_ttl = |c: &mut Self, key: &str, default: Duration, example: &'static str| {
            c.bounded_duration(
                &s.path(key),
                s.get(key),
                default,
                &Within {
                    max: 30 * DAY,
                    max_text: "30d",
                    example,
                    zero: "a link that expires at once cannot be used",
                },
            )
        };
        let invite_ttl = link_ttl(self, "invite_ttl", d.invite_ttl, "24h");
        let reset_ttl = link_ttl(self, "reset_ttl", d.reset_ttl, "1h");
        let max_sessions_per_user = self.bounded_int(
            &s.path("max_sessions_per_user"),
            s.get("max_sessions_per_user"),
            d.max_sessions_per_user,
            1..=1000,
            "sessions per user",
        );
        Portal {
            prefix,
            idle_timeout,
            max_age,
            public_url,
            invite_ttl,
            reset_ttl,
            max_sessions_per_user,
        }
    }

    /// `[mail]` (absent: links are only printed).
    pub(super) fn mail(&mut self, s: &Section<'_, '_>) -> Option<Mail> {
        s.table?;
        let text = |c: &mut Self, key: &str| -> Option<String> {
            let v = s.get(key)?;
            c.string(&s.path(key), v).map(str::to_owned)
        };
        let host = text(self, "host");
        match &host {
            None if s.get("host").is_none() => self.missing(s, "host", "\"smtp.example.com\""),
            Some(h) if h.is_empty() || h.contains(['/', ' ', ':']) => self.report(
                s.path("host"),
                s.get("host").map(|v| v.span()),
                "must be a host name or address, without scheme or port (the port is `port`)",
            ),
            _ => {}
        }
        let starttls = match s.get("starttls") {
            None => true,
            Some(v) => self.boolean(&s.path("starttls"), v).unwrap_or(true),
        };
        let port = match s.get("port") {
            None => Some(if starttls { 587 } else { 25 }),
            Some(v) => match self.integer(&s.path("port"), v) {
                Some(n) if (1..=65535).contains(&n) => u16::try_from(n).ok(),
                Some(n) => {
                    self.report(
                        s.path("port"),
                        Some(v.span()),
                        format!("must be from 1 to 65535, not {n}"),
                    );
                    None
                }
                None => None,
            },
        };
        let from = text(self, "from");
        match &from {
            None if s.get("from").is_none() => {
                self.missing(s, "from", "\"Portcullis <noreply@example.com>\"")
            }
            Some(f) if !f.contains('@') => self.report(
                s.path("from"),
                s.get("from").map(|v| v.span()),
                "must be an address such as \"noreply@example.com\" or \"Portcullis <noreply@example.com>\"",
            ),
            _ => {}
        }
        let username = text(self, "username");
        let password = text(self, "password");
        let credentials = match (username, password) {
            (Some(u), Some(p)) => Some((u, p)),
            (None, None) => None,
            (Some(_), None) => {
                self.missing(s, "password", "\"…\" (username is set)");
                None
            }
            (None, Some(_)) => {
                self.missing(s, "username", "\"…\" (password is set)");
                None
            }
        };
        let ca = self.cert_file(s, "ca");
        if ca.is_some() && !starttls {
            self.warn(
                s.path("ca"),
                s.get("ca").map(|v| v.span()),
                "is only used with starttls = true",
            );
        }
        Some(Mail {
            ca,
            host: host?,
            port: port?,
            from: from?,
            starttls,
            credentials,
        })
    }
}
