//! Phase 2: who the client is.
//!
//! The socket peer, unless the peer is a trusted proxy; then the right-most address in
//! `Forwarded` (RFC 7239) or, without it, `X-Forwarded-For` that is not itself a trusted proxy.
//! Headers from untrusted peers are never read, so a client cannot choose its own address. When
//! a trusted proxy reports `unknown` or an obfuscated identifier, the client cannot be named and
//! the proxy's address stands for it (so limits apply per proxy, not to nobody).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::ipset::{IpSet, canonical};
use crate::{Reason, Refusal};

/// Where the client address came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientSource {
    /// The TCP peer.
    Peer,
    /// A `Forwarded` header from a trusted proxy.
    Forwarded,
    /// An `X-Forwarded-For` header from a trusted proxy.
    XForwardedFor,
}

/// The client address as the policy uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr {
    /// The address (IPv4-mapped IPv6 already folded to IPv4).
    pub ip: IpAddr,
    /// How it was determined.
    pub source: ClientSource,
}

/// One hop named in a forwarding header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hop {
    Ip(IpAddr),
    /// `unknown`, an obfuscated identifier, or an element without `for`.
    Unnamed,
}

/// Determines the client address from the peer and, for trusted peers, the forwarding headers
/// (each slice holds the raw values of every header line of that name, in order).
pub fn client_addr(
    peer: IpAddr,
    trusted: &IpSet,
    forwarded: &[&[u8]],
    x_forwarded_for: &[&[u8]],
) -> Result<ClientAddr, Refusal> {
    let peer = canonical(peer);
    if trusted.is_empty() || !trusted.contains(peer) {
        return Ok(ClientAddr {
            ip: peer,
            source: ClientSource::Peer,
        });
    }
    let (hops, source) = if !forwarded.is_empty() {
        (parse_forwarded(forwarded)?, ClientSource::Forwarded)
    } else if !x_forwarded_for.is_empty() {
        (
            parse_x_forwarded_for(x_forwarded_for)?,
            ClientSource::XForwardedFor,
        )
    } else {
        return Ok(ClientAddr {
            ip: peer,
            source: ClientSource::Peer,
        });
    };
    let mut nearest = peer;
    for hop in hops.iter().rev() {
        match *hop {
            Hop::Ip(ip) if trusted.contains(ip) => nearest = ip,
            Hop::Ip(ip) => return Ok(ClientAddr { ip, source }),
            Hop::Unnamed => {
                return Ok(ClientAddr {
                    ip: nearest,
                    source,
                });
            }
        }
    }
    // Every hop is a trusted proxy: the left-most one is as far as we can see.
    Ok(ClientAddr {
        ip: nearest,
        source,
    })
}

fn bad(what: impl Into<String>) -> Refusal {
    Refusal::new(Reason::BadForwardedHeader).with_detail(what)
}

fn parse_x_forwarded_for(values: &[&[u8]]) -> Result<Vec<Hop>, Refusal> {
    let mut hops = Vec::new();
    for raw in values {
        let text =
            std::str::from_utf8(raw).map_err(|_| bad("X-Forwarded-For is not valid UTF-8"))?;
        for item in text.split(',') {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            if item.eq_ignore_ascii_case("unknown") {
                hops.push(Hop::Unnamed);
                continue;
            }
            let ip = parse_node_ip(item).ok_or_else(|| {
                bad(format!(
                    "X-Forwarded-For entry {item:?} is not an IP address"
                ))
            })?;
            hops.push(Hop::Ip(canonical(ip)));
        }
    }
    if hops.is_empty() {
        return Err(bad("X-Forwarded-For is empty"));
    }
    Ok(hops)
}

/// An address with an optional port: `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]:80`.
fn parse_node_ip(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (inner, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(valid_port)) {
            return None;
        }
        return inner.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    let (host, port) = s.rsplit_once(':')?;
    if !valid_port(port) {
        return None;
    }
    host.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

/// RFC 7239 node ports are digits or an obfuscated `_token`.
fn valid_port(p: &str) -> bool {
    (p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok()) || is_obfuscated(p)
}

fn is_obfuscated(s: &str) -> bool {
    s.len() > 1
        && s.starts_with('_')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

fn parse_forwarded(values: &[&[u8]]) -> Result<Vec<Hop>, Refusal> {
    let mut hops = Vec::new();
    for raw in values {
        let text = std::str::from_utf8(raw).map_err(|_| bad("Forwarded is not valid UTF-8"))?;
        let mut p = Parser {
            s: text.as_bytes(),
            i: 0,
        };
        loop {
            // One element: pairs separated by ';'.
            let mut hop = Hop::Unnamed;
            let mut seen_for = false;
            loop {
                p.skip_ws();
                let name = p.token().ok_or_else(|| {
                    bad(format!(
                        "Forwarded: expected a parameter name at {:?}",
                        p.rest()
                    ))
                })?;
                p.skip_ws();
                if !p.eat(b'=') {
                    return Err(bad(format!("Forwarded: parameter {name:?} has no value")));
                }
                p.skip_ws();
                let value = if p.peek() == Some(b'"') {
                    p.quoted()
                } else {
                    p.token().map(str::to_owned)
                }
                .ok_or_else(|| bad(format!("Forwarded: bad value for {name:?}")))?;
                if name.eq_ignore_ascii_case("for") {
                    if seen_for {
                        return Err(bad("Forwarded: two `for` parameters in one element"));
                    }
                    seen_for = true;
                    hop = parse_forwarded_node(&value)?;
                }
                p.skip_ws();
                if !p.eat(b';') {
                    break;
                }
            }
            hops.push(hop);
            p.skip_ws();
            if p.at_end() {
                break;
            }
            if !p.eat(b',') {
                return Err(bad(format!("Forwarded: unexpected {:?}", p.rest())));
            }
        }
    }
    Ok(hops)
}

fn parse_forwarded_node(value: &str) -> Result<Hop, Refusal> {
    if value.eq_ignore_ascii_case("unknown") || is_obfuscated(value) {
        return Ok(Hop::Unnamed);
    }
    // Unquoted IPv6 is not allowed by RFC 7239, but a bare address is unambiguous: accept it.
    match parse_node_ip(value) {
        Some(ip) => Ok(Hop::Ip(canonical(ip))),
        None if value.starts_with("unknown:") || value.starts_with('_') => Ok(Hop::Unnamed),
        None => Err(bad(format!("Forwarded: for={value:?} is not a node"))),
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn at_end(&self) -> bool {
        self.i >= self.s.len()
    }
    fn rest(&self) -> String {
        String::from_utf8_lossy(&self.s[self.i.min(self.s.len())..]).into_owned()
    }
    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }
    fn token(&mut self) -> Option<&'a str> {
        let start = self.i;
        while self
            .peek()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:[]".contains(&b))
        {
            self.i += 1;
        }
        (self.i > start).then(|| std::str::from_utf8(&self.s[start..self.i]).unwrap_or(""))
    }
    fn quoted(&mut self) -> Option<String> {
        if !self.eat(b'"') {
            return None;
        }
        let mut out = Vec::new();
        loop {
            match self.peek()? {
                b'"' => {
                    self.i += 1;
                    return String::from_utf8(out).ok();
                }
                b'\\' => {
                    self.i += 1;
                    out.push(self.peek()?);
                    self.i += 1;
                }
                c => {
                    out.push(c);
                    self.i += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipset::{IpEntry, Origin};

    fn trusted(nets: &[&str]) -> IpSet {
        IpSet::new(
            nets.iter()
                .map(|n| IpEntry {
                    net: n.parse().unwrap(),
                    origin: Origin::default(),
                })
                .collect(),
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peers_are_never_believed() {
        let t = trusted(&["10.0.0.0/8"]);
        let c = client_addr(ip("198.51.100.1"), &t, &[b"for=1.2.3.4"], &[b"5.6.7.8"]).unwrap();
        assert_eq!(
            c,
            ClientAddr {
                ip: ip("198.51.100.1"),
                source: ClientSource::Peer
            }
        );
        // Even a malformed header from an untrusted peer is ignored, not a 400.
        assert!(client_addr(ip("198.51.100.1"), &t, &[b"for=\"oops"], &[]).is_ok());
    }

    #[test]
    fn right_most_untrusted_entry_wins() {
        let t = trusted(&["10.0.0.0/8", "192.168.0.0/16"]);
        let cases: &[(&[u8], &str)] = &[
            (b"for=1.1.1.1", "1.1.1.1"),
            (b"for=6.6.6.6, for=1.1.1.1", "1.1.1.1"), // the spoofed left entry is ignored
            (b"for=6.6.6.6, for=1.1.1.1, for=10.0.0.9", "1.1.1.1"), // trusted hops are skipped
            (b"for=\"[2001:db8::7]:4711\"", "2001:db8::7"),
            (
                b"For=\"[2001:db8::7]\";proto=https;by=10.0.0.1",
                "2001:db8::7",
            ),
            (b"for=\"1.1.1.1:8080\"", "1.1.1.1"),
            (b"for=\"[::ffff:1.2.3.4]\"", "1.2.3.4"),
            (b"for=unknown", "10.0.0.1"), // the proxy stands in
            (b"for=6.6.6.6, for=_hidden", "10.0.0.1"),
            (b"for=192.168.1.1", "192.168.1.1"), // only trusted hops: left-most
        ];
        for (header, want) in cases {
            let c = client_addr(ip("10.0.0.1"), &t, &[header], &[]).unwrap();
            assert_eq!(c.ip, ip(want), "{}", String::from_utf8_lossy(header));
            assert_eq!(c.source, ClientSource::Forwarded);
        }
    }

    #[test]
    fn x_forwarded_for_is_used_without_forwarded() {
        let t = trusted(&["127.0.0.0/8"]);
        let c = client_addr(
            ip("::ffff:127.0.0.1"),
            &t,
            &[],
            &[b"6.6.6.6, 2.2.2.2", b"127.0.0.5"],
        )
        .unwrap();
        assert_eq!(
            c,
            ClientAddr {
                ip: ip("2.2.2.2"),
                source: ClientSource::XForwardedFor
            }
        );
        let c = client_addr(ip("127.0.0.1"), &t, &[], &[b"[2001:db8::1]:443"]).unwrap();
        assert_eq!(c.ip, ip("2001:db8::1"));
    }

    #[test]
    fn malformed_headers_from_trusted_proxies_are_400_10() {
        let t = trusted(&["127.0.0.0/8"]);
        for bad in [
            &b"for="[..],
            b"for=\"unterminated",
            b"for=not-an-ip",
            b"for=1.1.1.1;for=2.2.2.2",
            b"for=1.1.1.1 junk",
            b"=x",
        ] {
            let r = client_addr(ip("127.0.0.1"), &t, &[bad], &[]).unwrap_err();
            assert_eq!(
                (r.status(), r.reason.substatus()),
                (400, 10),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        for bad in [&b"1.2.3"[..], b"", b"1.1.1.1:99999", b"\xff"] {
            assert!(
                client_addr(ip("127.0.0.1"), &t, &[], &[bad]).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
