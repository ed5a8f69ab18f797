//! `auth.users = "ldap://…"` and `[ldap]`: users in a directory.

use std::time::Duration;

use super::values::Within;
use super::{Checker, Section, Value};
use crate::model::{Ldap, LdapPreset};

/// Keys of `[ldap]`.
pub(super) const LDAP_KEYS: &[&str] = &[
    "preset",
    "bind_dn",
    "bind_password_file",
    "base_dn",
    "user_filter",
    "group_filter",
    "group_name_attribute",
    "email_attribute",
    "name_attribute",
    "starttls",
    "ca",
    "timeout",
    "pool",
    "second_factors",
];

/// Default `ldap.timeout`.
pub const DEFAULT_LDAP_TIMEOUT: Duration = Duration::from_secs(5);
/// Default `ldap.pool`.
pub const DEFAULT_LDAP_POOL: u32 = 10;

/// What a preset sets: user filter, group filter (`None`: memberOf), display-name attribute.
struct PresetDefaults {
    user_filter: &'static str,
    group_filter: Option<&'static str>,
    name_attribute: &'static str,
}

impl LdapPreset {
    fn defaults(self) -> PresetDefaults {
        match self {
            LdapPreset::OpenLdap => PresetDefaults {
                user_filter: "(uid={user})",
                group_filter: None,
                name_attribute: "displayName",
            },
            // Enabled people by account name or UPN (alice or alice@corp.example); groups by
            // the transitive-membership matching rule, so nested groups count.
            LdapPreset::ActiveDirectory => PresetDefaults {
                user_filter: "(&(objectCategory=person)(objectClass=user)(|(sAMAccountName={user})(userPrincipalName={user}))(!(userAccountControl:1.2.840.113556.1.4.803:=2)))",
                group_filter: Some("(&(objectClass=group)(member:1.2.840.113556.1.4.1941:={dn}))"),
                name_attribute: "displayName",
            },
            // Unlocked people; FreeIPA keeps memberOf (nested groups included) on each entry.
            LdapPreset::FreeIpa => PresetDefaults {
                user_filter: "(&(objectClass=person)(uid={user})(!(nsAccountLock=TRUE)))",
                group_filter: None,
                name_attribute: "displayName",
            },
        }
    }
}

/// Whether the parentheses of a filter balance and it is one parenthesised filter.
fn balanced_filter(filter: &str) -> bool {
    if !filter.starts_with('(') || !filter.ends_with(')') {
        return false;
    }
    let mut depth = 0i32;
    let mut bytes = filter.bytes();
    let mut closed_at_top = 0;
    while let Some(b) = bytes.next() {
        match b {
            b'\\' => {
                bytes.next();
            }
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
                if depth == 0 {
                    closed_at_top += 1;
                }
            }
            _ => {}
        }
    }
    depth == 0 && closed_at_top == 1
}

/// Whether `filter` has an `(ATTR={user})` equality match (what the gateway compares the name
/// signed in with against).
fn has_plain_user_attribute(filter: &str) -> bool {
    filter.match_indices("={user})").any(|(at, _)| {
        let before = &filter[..at];
        let attr = &before[before.rfind('(').map_or(0, |i| i + 1)..];
        !attr.is_empty()
            && attr
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b';')
    })
}

/// Splits `ldap://host[:port]` / `ldaps://…`: `Err` says what is wrong.
pub fn parse_ldap_url(text: &str) -> Result<(bool, String, u16), String> {
    let (tls, rest) = if let Some(r) = text.strip_prefix("ldaps://") {
        (true, r)
    } else if let Some(r) = text.strip_prefix("ldap://") {
        (false, r)
    } else {
        return Err("write \"ldap://HOST[:PORT]\" or \"ldaps://HOST[:PORT]\"".into());
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('@') {
        return Err(
            "has credentials in it: the service account goes in ldap.bind_dn and ldap.bind_password_file".into(),
        );
    }
    if rest.contains(['/', '?', ' ']) {
        return Err(
            "must be only ldap[s]://HOST[:PORT]: the base DN goes in ldap.base_dn, the filter in ldap.user_filter".into(),
        );
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or("has an unclosed [ in the host")?;
        (h.to_owned(), after.strip_prefix(':'))
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (rest.to_owned(), None),
        }
    };
    if host.is_empty() {
        return Err("names no host".into());
    }
    let port = match port {
        None => {
            if tls {
                636
            } else {
                389
            }
        }
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err(format!("has a bad port {p:?} (1 to 65535)")),
        },
    };
    Ok((tls, host, port))
}

impl Checker<'_> {
    /// `[ldap]` for a directory at `url` (`auth.users`); `None` with problems reported.
    pub(super) fn ldap(&mut self, s: &Section<'_, '_>, url: &str) -> Option<Ldap> {
        if s.table.is_none() {
            self.report(
                "ldap",
                None,
                format!(
                    "auth.users = \"{url}\" needs an [ldap] section: at least base_dn (where users are searched), and bind_dn with bind_password_file for the service account that searches"
                ),
            );
            return None;
        }
        let text = |c: &mut Self, key: &str| -> Option<(String, std::ops::Range<usize>)> {
            let v: &Value<'_> = s.get(key)?;
            c.string(&s.path(key), v).map(|t| (t.to_owned(), v.span()))
        };
        let preset = match self.choice(s, "preset", &["openldap", "active_directory", "freeipa"]) {
            Some("active_directory") => LdapPreset::ActiveDirectory,
            Some("freeipa") => LdapPreset::FreeIpa,
            _ => LdapPreset::OpenLdap,
        };
        let defaults = preset.defaults();
        let tls_url = url.starts_with("ldaps://");
        let loopback = parse_ldap_url(url).is_ok_and(|(_, host, _)| {
            host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        });

        let base_dn = text(self, "base_dn").map(|(t, span)| {
            if !t.contains('=') {
                self.report(
                    s.path("base_dn"),
                    Some(span),
                    "must be a DN such as \"dc=example,dc=org\"",
                );
            }
            t
        });
        if s.get("base_dn").is_none() {
            self.missing(s, "base_dn", "\"dc=example,dc=org\"");
        }
        let bind_dn = text(self, "bind_dn").map(|(t, _)| t);
        let bind_password_file = match s.get("bind_password_file") {
            None => {
                if bind_dn.is_some() {
                    self.missing(
                        s,
                        "bind_password_file",
                        "\"/etc/portcullis/ldap-password\" (bind_dn is set: its password, first line)",
                    );
                }
                None
            }
            Some(v) => match self.string(&s.path("bind_password_file"), v) {
                None => None,
                Some(p) => {
                    let path = self.resolve(p);
                    match std::fs::read_to_string(&path) {
                        Ok(t) if t.lines().next().is_some_and(|l| !l.is_empty()) => Some(path),
                        Ok(_) => {
                            self.report(
                                s.path("bind_password_file"),
                                Some(v.span()),
                                format!(
                                    "{}: the first line (the password) is empty",
                                    path.display()
                                ),
                            );
                            None
                        }
                        Err(e) => {
                            self.report(
                                s.path("bind_password_file"),
                                Some(v.span()),
                                format!("cannot read {}: {e}", path.display()),
                            );
                            None
                        }
                    }
                }
            },
        };
        if bind_dn.is_none() && s.get("bind_password_file").is_some() {
            self.missing(
                s,
                "bind_dn",
                "\"cn=portcullis,ou=services,dc=example,dc=org\"",
            );
        }

        let user_filter = match text(self, "user_filter") {
            None => defaults.user_filter.to_owned(),
            Some((f, span)) => {
                if !f.contains("{user}") {
                    self.report(
                        s.path("user_filter"),
                        Some(span),
                        "has no {user}: write where the user name goes, e.g. \"(uid={user})\" (every user would match the same entry)",
                    );
                } else if !balanced_filter(&f) {
                    self.report(
                        s.path("user_filter"),
                        Some(span),
                        "is not one parenthesised LDAP filter (RFC 4515), e.g. \"(&(objectClass=person)(uid={user}))\"",
                    );
                } else if !has_plain_user_attribute(&f) {
                    self.report(
                        s.path("user_filter"),
                        Some(span),
                        "must compare {user} with an attribute by equality, as in (uid={user}) or (|(sAMAccountName={user})(userPrincipalName={user})): the name signed in with must be an attribute's value, or ALICE and alice would be two names for one person",
                    );
                }
                f
            }
        };
        let group_filter = match text(self, "group_filter") {
            None => defaults.group_filter.map(str::to_owned),
            Some((f, span)) => {
                if !f.contains("{dn}") && !f.contains("{user}") {
                    self.report(
                        s.path("group_filter"),
                        Some(span),
                        "has neither {dn} nor {user}: e.g. \"(&(objectClass=groupOfNames)(member={dn}))\" (every user would get the same groups)",
                    );
                } else if !balanced_filter(&f) {
                    self.report(
                        s.path("group_filter"),
                        Some(span),
                        "is not one parenthesised LDAP filter (RFC 4515)",
                    );
                }
                Some(f)
            }
        };
        let attribute = |c: &mut Self, key: &str, default: &str| -> String {
            match text(c, key) {
                None => default.to_owned(),
                Some((a, span)) => {
                    if a.is_empty()
                        || !a
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b';')
                    {
                        c.report(
                            s.path(key),
                            Some(span),
                            "must be an attribute name such as \"cn\" or \"mail\"",
                        );
                    }
                    a
                }
            }
        };
        let group_name_attribute = attribute(self, "group_name_attribute", "cn");
        let email_attribute = attribute(self, "email_attribute", "mail");
        let name_attribute = attribute(self, "name_attribute", defaults.name_attribute);
        let starttls = match s.get("starttls") {
            None => false,
            Some(v) => self.boolean(&s.path("starttls"), v).unwrap_or(false),
        };
        if starttls && tls_url {
            self.report(
                s.path("starttls"),
                s.get("starttls").map(|v| v.span()),
                "is for ldap:// URLs; an ldaps:// connection is TLS from the start",
            );
        }
        if !tls_url && !starttls && !loopback {
            self.warn(
                "auth.users",
                None,
                format!(
                    "{url} without ldap.starttls = true sends every password to the directory in clear; use ldaps:// or starttls = true"
                ),
            );
        }
        let ca = self.cert_file(s, "ca");
        if ca.is_some() && !tls_url && !starttls {
            self.warn(
                s.path("ca"),
                s.get("ca").map(|v| v.span()),
                "is only used with ldaps:// or starttls = true",
            );
        }
        let timeout = self.bounded_duration(
            &s.path("timeout"),
            s.get("timeout"),
            DEFAULT_LDAP_TIMEOUT,
            &Within {
                max: Duration::from_secs(60),
                max_text: "60s",
                example: "5s",
                zero: "a timeout of 0 would give up on every call",
            },
        );
        let pool = self.bounded_int(
            &s.path("pool"),
            s.get("pool"),
            DEFAULT_LDAP_POOL,
            1..=1000,
            "connections",
        );
        let second_factors = match s.get("second_factors") {
            None => None,
            Some(v) => match self.string(&s.path("second_factors"), v) {
                Some(t) if t.starts_with("sqlite:") || t.starts_with("postgres") => {
                    let key = s.path("second_factors");
                    // The same forms as auth.users, checked the same way (without touching the
                    // htpasswd user names the rules are checked against).
                    let names = std::mem::take(&mut self.users);
                    let parsed = self.users(&key, v);
                    self.users = names;
                    parsed
                }
                Some(_) => {
                    self.report(
                        s.path("second_factors"),
                        Some(v.span()),
                        "must be a user database: \"sqlite:PATH\" or \"postgres://…\"",
                    );
                    None
                }
                None => None,
            },
        };
        Some(Ldap {
            second_factors,
            preset,
            bind_dn,
            bind_password_file,
            base_dn: base_dn?,
            user_filter,
            group_filter,
            group_name_attribute,
            email_attribute,
            name_attribute,
            starttls,
            ca,
            timeout,
            pool,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_ldap_url("ldap://127.0.0.1:3890").unwrap(),
            (false, "127.0.0.1".into(), 3890)
        );
        assert_eq!(
            parse_ldap_url("ldaps://dc1.corp.example").unwrap(),
            (true, "dc1.corp.example".into(), 636)
        );
        assert_eq!(
            parse_ldap_url("ldap://[::1]:389/").unwrap(),
            (false, "::1".into(), 389)
        );
        assert!(parse_ldap_url("ldap://u:p@host").is_err());
        assert!(parse_ldap_url("ldap://host/dc=x?uid").is_err());
        assert!(parse_ldap_url("ldap://host:0").is_err());
        assert!(parse_ldap_url("ldap://").is_err());
        assert!(parse_ldap_url("http://host").is_err());
    }

    #[test]
    fn user_attribute_required() {
        assert!(has_plain_user_attribute("(uid={user})"));
        assert!(has_plain_user_attribute(
            "(&(objectClass=user)(|(sAMAccountName={user})(userPrincipalName={user})))"
        ));
        assert!(!has_plain_user_attribute("(uid~={user})"));
        assert!(!has_plain_user_attribute("(uid=u-{user})"));
        assert!(!has_plain_user_attribute(
            "(userPrincipalName={user}@corp.example)"
        ));
        assert!(!has_plain_user_attribute("(cn:dn:={user})"));
    }

    #[test]
    fn filters() {
        assert!(balanced_filter("(uid={user})"));
        assert!(balanced_filter("(&(a=b)(|(c={user})(d=\\29)))"));
        assert!(!balanced_filter("uid={user}"));
        assert!(!balanced_filter("(uid={user})(x=y)"));
        assert!(!balanced_filter("(&(uid={user})"));
    }
}
