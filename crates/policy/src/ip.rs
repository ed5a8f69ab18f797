//! Phase 3: static IP and host-name restrictions (IIS "IP Address and Domain Restrictions",
//! Apache `Require ip` / `Require host`, nginx `allow`/`deny`).
//!
//! Deny is evaluated first; then allow; then `allow_unlisted`. Host names are matched on whole
//! labels: `scanner.example` matches `scanner.example` and `a.scanner.example`, never
//! `badscanner.example`. The name itself comes from a double-reverse lookup done by the gateway.

use std::net::IpAddr;

use crate::ipset::{IpEntry, IpSet, Origin};
use crate::{DenyAction, Reason, Refusal};

/// Why phase 3 admitted an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressVerdict<'a> {
    /// On the allow list.
    Listed(IpAddr, &'a IpEntry),
    /// On no list, and `allow_unlisted = true`.
    Unlisted(IpAddr),
}

impl std::fmt::Display for AddressVerdict<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AddressVerdict::Listed(ip, e) => {
                write!(f, "allowed: {ip} is in {} = \"{}\"", e.origin, e.net)
            }
            AddressVerdict::Unlisted(ip) => write!(
                f,
                "allowed: {ip} is on no list and ip.allow_unlisted = true"
            ),
        }
    }
}

/// A host-name suffix from `ip.deny_hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    /// Lower-case, without a trailing dot.
    pub suffix: String,
    /// Where it was configured.
    pub origin: Origin,
}

impl HostPattern {
    /// A pattern for `suffix` (case and a trailing dot are ignored).
    pub fn new(suffix: &str, origin: Origin) -> HostPattern {
        HostPattern {
            suffix: suffix.trim_end_matches('.').to_ascii_lowercase(),
            origin,
        }
    }

    /// Whether `name` is the suffix or ends with `.suffix`.
    pub fn matches(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.');
        if name.len() < self.suffix.len() {
            return false;
        }
        // Bytes, not chars: a non-ASCII PTR name must not make us split inside a character.
        let (head, tail) = name.as_bytes().split_at(name.len() - self.suffix.len());
        tail.eq_ignore_ascii_case(self.suffix.as_bytes())
            && (head.is_empty() || head.ends_with(b"."))
    }
}

/// The `[ip]` section, compiled.
#[derive(Debug, Clone, Default)]
pub struct IpPolicy {
    /// Admit addresses on neither list.
    pub allow_unlisted: bool,
    /// `allow`.
    pub allow: IpSet,
    /// `deny`.
    pub deny: IpSet,
    /// `deny_hosts`.
    pub deny_hosts: Vec<HostPattern>,
    /// `deny_action`.
    pub action: DenyAction,
}

impl IpPolicy {
    /// A policy that admits everyone.
    pub fn open() -> IpPolicy {
        IpPolicy {
            allow_unlisted: true,
            ..IpPolicy::default()
        }
    }

    /// Checks the address lists; the `Ok` verdict says why it passed (formatted only when shown).
    pub fn check_address(&self, ip: IpAddr) -> Result<AddressVerdict<'_>, Refusal> {
        if let Some(e) = self.deny.lookup(ip) {
            return Err(self.refuse(
                Reason::IpDenied,
                format!("{ip} is in {} = \"{}\"", e.origin, e.net),
            ));
        }
        if let Some(e) = self.allow.lookup(ip) {
            return Ok(AddressVerdict::Listed(ip, e));
        }
        if self.allow_unlisted {
            Ok(AddressVerdict::Unlisted(ip))
        } else {
            Err(self.refuse(
                Reason::IpDenied,
                format!("{ip} is not on ip.allow and ip.allow_unlisted = false"),
            ))
        }
    }

    /// Whether phase 3 needs the client's host name.
    pub fn needs_host_name(&self) -> bool {
        !self.deny_hosts.is_empty()
    }

    /// Checks the verified host name (`None` when there is none or the lookup failed).
    pub fn check_host(&self, ip: IpAddr, name: Option<&str>) -> Result<String, Refusal> {
        let Some(name) = name else {
            return Ok(format!("allowed: {ip} has no verified host name"));
        };
        match self.deny_hosts.iter().find(|h| h.matches(name)) {
            Some(h) => Err(self.refuse(
                Reason::HostDenied,
                format!(
                    "{ip} is {name}, which matches {} = \"{}\"",
                    h.origin, h.suffix
                ),
            )),
            None => Ok(format!("allowed: {ip} is {name}, on no host list")),
        }
    }

    fn refuse(&self, reason: Reason, detail: String) -> Refusal {
        Refusal::new(reason)
            .with_action(self.action)
            .with_detail(detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(nets: &[&str]) -> IpSet {
        IpSet::new(
            nets.iter()
                .enumerate()
                .map(|(i, n)| IpEntry {
                    net: n.parse().unwrap(),
                    origin: Origin::new(format!("ip.x[{i}]"), None),
                })
                .collect(),
        )
    }

    #[test]
    fn host_patterns_match_whole_labels() {
        let h = HostPattern::new("Scanner.Example.", Origin::default());
        for (name, want) in [
            ("scanner.example", true),
            ("a.scanner.example", true),
            ("A.SCANNER.EXAMPLE.", true),
            ("badscanner.example", false),
            ("scanner.example.com", false),
            ("example", false),
            ("é.scanner.example", true),
            ("xé", false),
        ] {
            assert_eq!(h.matches(name), want, "{name}");
        }
    }

    #[test]
    fn deny_first_then_allow_then_unlisted() {
        let p = IpPolicy {
            allow_unlisted: false,
            allow: set(&["10.0.0.0/8"]),
            deny: set(&["10.6.6.0/24"]),
            deny_hosts: vec![],
            action: DenyAction::Forbidden,
        };
        assert!(p.check_address("10.1.1.1".parse().unwrap()).is_ok());
        let r = p.check_address("10.6.6.6".parse().unwrap()).unwrap_err();
        assert_eq!((r.status(), r.reason.substatus()), (403, 503));
        assert!(p.check_address("8.8.8.8".parse().unwrap()).is_err());
        let open = IpPolicy {
            allow_unlisted: true,
            ..p.clone()
        };
        assert!(open.check_address("8.8.8.8".parse().unwrap()).is_ok());
    }

    #[test]
    fn every_action_keeps_the_substatus() {
        for (action, status) in [
            (DenyAction::Unauthorized, 401),
            (DenyAction::Forbidden, 403),
            (DenyAction::NotFound, 404),
            (DenyAction::Abort, 0),
            (DenyAction::TooManyRequests, 429),
        ] {
            let p = IpPolicy {
                deny_hosts: vec![HostPattern::new("bad.example", Origin::default())],
                action,
                ..IpPolicy::open()
            };
            let r = p
                .check_host("192.0.2.1".parse().unwrap(), Some("x.bad.example"))
                .unwrap_err();
            assert_eq!((r.status(), r.reason.substatus()), (status, 504));
        }
    }
}
