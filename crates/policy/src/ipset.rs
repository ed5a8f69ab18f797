//! Sets of IP networks with O(log n) lookup, for allow/deny lists and trusted proxies.
//!
//! CIDR blocks either nest or are disjoint, so after dropping blocks nested in a larger one the
//! remaining ranges are disjoint and sorted: a binary search finds the one that may contain an
//! address. Thousands of entries cost microseconds to build and nanoseconds to query, unlike a
//! linear scan. Each range remembers the entry it came from, so a decision can name it.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

/// Where something came from in the configuration, for `explain` and detailed pages.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Origin {
    /// Dotted key path, e.g. `ip.deny[3]` or `rule[2]`.
    pub key: String,
    /// 1-based line in the config file, when known.
    pub line: Option<usize>,
}

impl Origin {
    /// An origin at `key`, `line`.
    pub fn new(key: impl Into<String>, line: Option<usize>) -> Origin {
        Origin {
            key: key.into(),
            line,
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{} (line {line})", self.key),
            None => f.write_str(&self.key),
        }
    }
}

/// One configured network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpEntry {
    /// The network (a single address is a /32 or /128).
    pub net: IpNet,
    /// Where it was configured.
    pub origin: Origin,
}

/// A set of networks.
#[derive(Debug, Clone, Default)]
pub struct IpSet {
    entries: Vec<IpEntry>,
    v4: Vec<(u32, u32, usize)>,
    v6: Vec<(u128, u128, usize)>,
}

impl IpSet {
    /// Builds the lookup structure. IPv4-mapped IPv6 networks are stored as IPv4.
    pub fn new(entries: Vec<IpEntry>) -> IpSet {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            match e.net {
                IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()), i)),
                IpNet::V6(n) => match (n.network().to_ipv4_mapped(), n.prefix_len()) {
                    (Some(v4net), p) if p >= 96 => {
                        let len = u32::from(p - 96);
                        let start = u32::from(v4net) & mask32(len);
                        v4.push((start, start | !mask32(len), i));
                    }
                    _ => v6.push((u128::from(n.network()), u128::from(n.broadcast()), i)),
                },
            }
        }
        IpSet {
            entries,
            v4: disjoint(v4),
            v6: disjoint(v6),
        }
    }

    /// The entry containing `ip`, if any.
    pub fn lookup(&self, ip: IpAddr) -> Option<&IpEntry> {
        let i = match canonical(ip) {
            IpAddr::V4(a) => find(&self.v4, u32::from(a)),
            IpAddr::V6(a) => find(&self.v6, u128::from(a)),
        }?;
        self.entries.get(i)
    }

    /// Whether `ip` is in the set.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.lookup(ip).is_some()
    }

    /// Whether the set has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of configured entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The configured entries, in config order.
    pub fn entries(&self) -> &[IpEntry] {
        &self.entries
    }
}

fn mask32(len: u32) -> u32 {
    if len == 0 { 0 } else { u32::MAX << (32 - len) }
}

/// IPv4-mapped IPv6 addresses are IPv4 addresses.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn disjoint<T: Ord + Copy>(mut ranges: Vec<(T, T, usize)>) -> Vec<(T, T, usize)> {
    // Sort by start, larger blocks (later end) first, then config order; drop nested blocks.
    ranges.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
    let mut out: Vec<(T, T, usize)> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last() {
            Some(last) if r.1 <= last.1 => {} // nested in (or equal to) the previous block
            _ => out.push(r),
        }
    }
    out
}

fn find<T: Ord + Copy>(ranges: &[(T, T, usize)], ip: T) -> Option<usize> {
    let idx = ranges.partition_point(|r| r.0 <= ip);
    let r = ranges.get(idx.checked_sub(1)?)?;
    (ip <= r.1).then_some(r.2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(nets: &[&str]) -> IpSet {
        IpSet::new(
            nets.iter()
                .enumerate()
                .map(|(i, n)| IpEntry {
                    net: parse(n),
                    origin: Origin::new(format!("deny[{i}]"), Some(i + 1)),
                })
                .collect(),
        )
    }

    fn parse(n: &str) -> IpNet {
        n.parse()
            .or_else(|_| n.parse::<IpAddr>().map(IpNet::from))
            .unwrap()
    }

    #[test]
    fn table_of_lookups() {
        let s = set(&[
            "203.0.113.0/24",
            "198.51.100.7",
            "2001:db8::/32",
            "10.0.0.0/8",
            "10.1.0.0/16",
            "::ffff:192.0.2.0/120",
        ]);
        let cases: &[(&str, Option<&str>)] = &[
            ("203.0.113.0", Some("deny[0]")),
            ("203.0.113.255", Some("deny[0]")),
            ("203.0.114.0", None),
            ("198.51.100.7", Some("deny[1]")),
            ("198.51.100.8", None),
            ("2001:db8::1", Some("deny[2]")),
            ("2001:db9::1", None),
            ("10.1.2.3", Some("deny[3]")), // nested block: the outer entry answers
            ("::ffff:203.0.113.9", Some("deny[0]")), // mapped address is IPv4
            ("192.0.2.44", Some("deny[5]")), // mapped network is IPv4
            ("0.0.0.0", None),
            ("255.255.255.255", None),
        ];
        for (ip, want) in cases {
            let got = s.lookup(ip.parse().unwrap()).map(|e| e.origin.key.as_str());
            assert_eq!(got, *want, "{ip}");
        }
    }

    #[test]
    fn catch_all_and_empty() {
        assert!(set(&["0.0.0.0/0"]).contains("1.2.3.4".parse().unwrap()));
        assert!(set(&["::/0"]).contains("2001::1".parse().unwrap()));
        assert!(!set(&[]).contains("1.2.3.4".parse().unwrap()));
    }

    #[test]
    fn many_entries_agree_with_a_linear_scan() {
        let nets: Vec<String> = (0..2000u32)
            .map(|i| {
                format!(
                    "{}.{}.{}.0/{}",
                    1 + i % 200,
                    (i * 7) % 256,
                    (i * 13) % 256,
                    16 + i % 9
                )
            })
            .collect();
        let refs: Vec<&str> = nets.iter().map(String::as_str).collect();
        let s = set(&refs);
        let parsed: Vec<IpNet> = refs.iter().map(|n| parse(n)).collect();
        for i in 0..5000u32 {
            let ip: IpAddr = std::net::Ipv4Addr::from(i.wrapping_mul(2_654_435_761)).into();
            assert_eq!(
                s.contains(ip),
                parsed.iter().any(|n| n.contains(&ip)),
                "{ip}"
            );
        }
    }
}
