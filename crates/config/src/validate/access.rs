//! Address lists (`server.trusted_proxies`, `[ip]`) and the external filter (`[filter]`).
//!
//! Lists keep, for every entry, the key and line it was written at: a refusal names the entry
//! that matched, and `explain` can point at the config line. Entries that can never matter
//! (nested in another entry of the same list, or an allowed network already denied) are
//! warned about rather than refused: the config means what it says, it is only untidy.

use std::net::IpAddr;
use std::ops::Range;
use std::time::Duration;

use ipnet::IpNet;
use policy::{DenyAction, HostPattern, IpEntry, IpPolicy, IpSet, Origin};
use toml::de::DeValue;

use super::{Checker, Section, UrlWording, Value, parse_http_url};
use crate::model::{FailMode, Filter};

/// Keys of `[ip]`.
pub(super) const IP_KEYS: &[&str] = &[
    "allow_unlisted",
    "allow",
    "deny",
    "deny_hosts",
    "deny_action",
];
/// Keys of `[filter]`.
pub(super) const FILTER_KEYS: &[&str] = &["url", "timeout", "on_error"];
/// Values of `filter.on_error`.
const ON_ERROR: &[&str] = &["closed", "open"];
/// How messages name `filter.url`.
const FILTER_URL: UrlWording = UrlWording {
    name: "filter",
    https: "https filter URLs",
    example: "http://127.0.0.1:9000/check",
};
/// Default `filter.timeout`.
pub const DEFAULT_FILTER_TIMEOUT: Duration = Duration::from_secs(2);

impl Checker<'_> {
    /// An array of addresses and CIDR ranges (a bare address is a /32 or /128), each entry
    /// remembering its key path (`KEY[i]`) and line.
    pub(super) fn ip_list(&mut self, key: &str, v: &Value<'_>) -> IpSet {
        if !self.expect_array(key, v, "an array of addresses or CIDR ranges such as [\"203.0.113.0/24\", \"2001:db8::/32\", \"198.51.100.7\"]") {
            return IpSet::default();
        }
        let mut entries = Vec::new();
        let mut spans = Vec::new();
        for (path, text, span) in self.strings(key, v) {
            match parse_net(text) {
                Ok(net) => {
                    if net.trunc() != net {
                        self.warn(
                            &path,
                            Some(span.clone()),
                            format!(
                                "\"{text}\" has host bits set; it is read as \"{}\"",
                                net.trunc()
                            ),
                        );
                    }
                    let origin = Origin::new(path, Some(self.line(span.start)));
                    entries.push(IpEntry {
                        net: net.trunc(),
                        origin,
                    });
                    spans.push(span);
                }
                Err(e) => self.report(path, Some(span), e),
            }
        }
        let set = IpSet::new(entries);
        // CIDR blocks nest or are disjoint: the outermost block holding an entry's first
        // address holds the whole entry, and the set answers with it (config order for ties).
        for (e, span) in set.entries().iter().zip(spans) {
            let Some(outer) = set.lookup(e.net.network()) else {
                continue;
            };
            if std::ptr::eq(outer, e) || !outer.net.contains(&e.net) {
                continue;
            }
            let message = if outer.net == e.net {
                format!(
                    "\"{}\" is listed twice (also {}); remove one",
                    e.net, outer.origin.key
                )
            } else {
                format!(
                    "\"{}\" is inside {} (\"{}\"), so it changes nothing; remove it",
                    e.net, outer.origin.key, outer.net
                )
            };
            self.warn(e.origin.key.clone(), Some(span), message);
        }
        set
    }

    /// `[ip]`: static allow/deny lists and host-name suffixes (open when absent).
    pub(super) fn ip(&mut self, s: &Section<'_, '_>) -> IpPolicy {
        if s.table.is_none() {
            return IpPolicy::open();
        }
        let allow_unlisted = match s.get("allow_unlisted") {
            None => true,
            Some(v) => self.boolean(&s.path("allow_unlisted"), v).unwrap_or(true),
        };
        let allow = match s.get("allow") {
            None => IpSet::default(),
            Some(v) => self.ip_list(&s.path("allow"), v),
        };
        let deny = match s.get("deny") {
            None => IpSet::default(),
            Some(v) => self.ip_list(&s.path("deny"), v),
        };
        let deny_hosts = match s.get("deny_hosts") {
            None => Vec::new(),
            Some(v) => self.deny_hosts(&s.path("deny_hosts"), v),
        };
        let action = self
            .choice(s, "deny_action", DenyAction::NAMES)
            .and_then(DenyAction::parse)
            .unwrap_or_default();

        // Entries written but invalid are already reported; only a list left empty is this.
        let allow_written = s
            .get("allow")
            .is_some_and(|v| !matches!(v.get_ref(), DeValue::Array(a) if a.is_empty()));
        if let (false, false, Some(v)) = (allow_unlisted, allow_written, s.get("allow_unlisted")) {
            self.report(
                s.path("allow_unlisted"),
                Some(v.span()),
                "is false but ip.allow lists no address, so every client would be refused; \
                 list the networks to admit in ip.allow, or set allow_unlisted = true",
            );
        }
        for e in allow.entries() {
            let Some(d) = deny.lookup(e.net.network()) else {
                continue;
            };
            if d.net.contains(&e.net) {
                let span = s.get("allow").and_then(|v| entry_span(v, &e.origin.key));
                self.warn(
                    e.origin.key.clone(),
                    span,
                    format!(
                        "\"{}\" is also covered by {} (\"{}\"); deny is checked first and wins, \
                         so this entry admits no one",
                        e.net, d.origin.key, d.net
                    ),
                );
            }
        }
        IpPolicy {
            allow_unlisted,
            allow,
            deny,
            deny_hosts,
            action,
        }
    }

    /// `ip.deny_hosts`: DNS name suffixes, matched on whole labels.
    fn deny_hosts(&mut self, key: &str, v: &Value<'_>) -> Vec<HostPattern> {
        if !self.expect_array(
            key,
            v,
            "an array of host names such as [\"scanner.example\"]",
        ) {
            return Vec::new();
        }
        let mut out: Vec<(HostPattern, Range<usize>)> = Vec::new();
        for (path, text, span) in self.strings(key, v) {
            match check_host_suffix(text) {
                Ok(()) => {
                    let origin = Origin::new(path, Some(self.line(span.start)));
                    out.push((HostPattern::new(text, origin), span));
                }
                Err(e) => self.report(path, Some(span), e),
            }
        }
        for (i, (h, span)) in out.iter().enumerate() {
            // A broader suffix anywhere, or the same one earlier, makes this entry redundant.
            let covering = out.iter().enumerate().find(|(k, (o, _))| {
                *k != i && o.matches(&h.suffix) && (o.suffix != h.suffix || *k < i)
            });
            if let Some((_, (o, _))) = covering {
                let message = if o.suffix == h.suffix {
                    format!(
                        "\"{}\" is listed twice (also {}); remove one",
                        h.suffix, o.origin.key
                    )
                } else {
                    format!(
                        "\"{}\" is already matched by {} (\"{}\"), which covers every name \
                         below it; remove it",
                        h.suffix, o.origin.key, o.suffix
                    )
                };
                self.warn(h.origin.key.clone(), Some(span.clone()), message);
            }
        }
        out.into_iter().map(|(h, _)| h).collect()
    }

    /// `[filter]`: the external authorization service (none when the section is absent).
    pub(super) fn filter(&mut self, s: &Section<'_, '_>) -> Option<Filter> {
        s.table?;
        let url = match s.get("url") {
            None => {
                self.missing(s, "url", "\"http://127.0.0.1:9000/check\"");
                None
            }
            Some(v) => {
                self.string(&s.path("url"), v)
                    .and_then(|text| match parse_filter_url(text) {
                        Ok(u) => Some(u),
                        Err(e) => {
                            self.report(s.path("url"), Some(v.span()), e);
                            None
                        }
                    })
            }
        };
        let timeout = self.duration(s, "timeout", DEFAULT_FILTER_TIMEOUT, false);
        let on_error = match self.choice(s, "on_error", ON_ERROR) {
            Some("open") => FailMode::Open,
            _ => FailMode::Closed,
        };
        Some(Filter {
            url: url?,
            timeout,
            on_error,
        })
    }
}

/// The span of the array entry whose key path is `path` (`KEY[i]`).
fn entry_span(v: &Value<'_>, path: &str) -> Option<Range<usize>> {
    let index: usize = path.rsplit_once('[')?.1.strip_suffix(']')?.parse().ok()?;
    match v.get_ref() {
        DeValue::Array(a) => a.get(index).map(|e| e.span()),
        _ => None,
    }
}

/// Reads `A.B.C.D/N`, `X::/N`, or a single address (a /32 or /128).
fn parse_net(text: &str) -> Result<IpNet, String> {
    let example = "write it like \"203.0.113.0/24\", \"2001:db8::/32\" or \"198.51.100.7\"";
    if let Some((addr, prefix)) = text.split_once('/') {
        if let Ok(net) = text.parse::<IpNet>() {
            return Ok(net);
        }
        return Err(match (addr.parse::<IpAddr>(), prefix.parse::<u8>()) {
            (Ok(a), Ok(p)) => {
                let max = if a.is_ipv4() { 32 } else { 128 };
                format!(
                    "\"{text}\": the prefix length /{p} is longer than an {} address ({max} bits)",
                    if a.is_ipv4() { "IPv4" } else { "IPv6" }
                )
            }
            (Ok(_), Err(_)) => {
                format!("\"{text}\": \"{prefix}\" is not a prefix length; {example}")
            }
            (Err(_), _) => format!("\"{text}\" is not a CIDR range; {example}"),
        });
    }
    if let Ok(addr) = text.parse::<IpAddr>() {
        return Ok(IpNet::from(addr));
    }
    Err(format!(
        "\"{text}\" is not an IP address or CIDR range; {example}"
    ))
}

/// A host-name suffix for `ip.deny_hosts`: a DNS name, not an address, no wildcard.
fn check_host_suffix(text: &str) -> Result<(), String> {
    if text.parse::<IpAddr>().is_ok() || text.parse::<IpNet>().is_ok() {
        return Err(format!(
            "\"{text}\" is an address, not a host name; addresses go in ip.deny"
        ));
    }
    if let Some(rest) = text.strip_prefix("*.") {
        return Err(format!(
            "write \"{rest}\" without \"*.\": a suffix already matches every name below it"
        ));
    }
    let name = text.strip_suffix('.').unwrap_or(text);
    if name.is_empty() {
        return Err("must be a host name such as \"scanner.example\"".into());
    }
    if name.len() > 253 {
        return Err(format!(
            "\"{text}\" is longer than the 253 characters a host name may have"
        ));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(format!(
                "\"{text}\" has an empty label (\"..\" or a leading dot)"
            ));
        }
        if label.len() > 63 {
            return Err(format!(
                "\"{text}\": the label \"{label}\" is longer than 63 characters"
            ));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(format!(
                "\"{text}\" is not a host name: the label \"{label}\" may only contain letters, \
                 digits and '-'"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "\"{text}\" is not a host name: the label \"{label}\" starts or ends with '-'"
            ));
        }
    }
    Ok(())
}

/// Reads the `http://host[:port][/path]` URL of the filter service.
fn parse_filter_url(text: &str) -> Result<http::Uri, String> {
    parse_http_url(text, &FILTER_URL).map(|(uri, _)| uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_and_single_addresses() {
        assert_eq!(parse_net("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(
            parse_net("198.51.100.7").unwrap().to_string(),
            "198.51.100.7/32"
        );
        assert_eq!(
            parse_net("2001:db8::1").unwrap().to_string(),
            "2001:db8::1/128"
        );
        assert!(
            parse_net("10.0.0.0/33")
                .unwrap_err()
                .contains("longer than an IPv4")
        );
        assert!(parse_net("::/129").unwrap_err().contains("128 bits"));
        assert!(
            parse_net("10.0.0.0/x")
                .unwrap_err()
                .contains("not a prefix length")
        );
        assert!(
            parse_net("10.0.0/8")
                .unwrap_err()
                .contains("not a CIDR range")
        );
        assert!(
            parse_net("host.example")
                .unwrap_err()
                .contains("not an IP address")
        );
    }

    #[test]
    fn host_suffixes() {
        for ok in ["scanner.example", "Scanner.Example.", "a-b.c1", "localhost"] {
            assert_eq!(check_host_suffix(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("", "must be a host name"),
            (".", "must be a host name"),
            ("a..b", "empty label"),
            (".a", "empty label"),
            ("a_b.example", "letters"),
            ("-a.example", "'-'"),
            ("*.scanner.example", "without \"*.\""),
            ("192.0.2.1", "is an address"),
            ("2001:db8::1", "is an address"),
            ("10.0.0.0/8", "is an address"),
        ] {
            let e = check_host_suffix(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn filter_urls() {
        assert!(parse_filter_url("http://127.0.0.1:9000/check").is_ok());
        assert!(
            parse_filter_url("https://x")
                .unwrap_err()
                .contains("not supported")
        );
        assert!(parse_filter_url("ftp://x").is_err());
        assert!(parse_filter_url("x:9000").is_err());
        assert!(parse_filter_url("http://u:p@x/").is_err());
    }
}
