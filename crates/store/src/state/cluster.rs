//! Redis Cluster: `redis+cluster://[user:password@]h1:7000,h2:7001/` (or `rediss+cluster://` for
//! TLS). The nodes written are where the client starts; it learns the rest of the cluster (slots,
//! masters, replicas) from them and follows MOVED/ASK redirections and failovers by itself.
//!
//! Keys carry hash tags so that every atomic script touches one slot: per client address
//! (`rate:{192.0.2.1}`, `inflight:{…}`, `fail:addr:{…}`, `ban:addr:{…}`), per user name
//! (`fail:user:{alice}`, `ban:user:{alice}`), and one tag for the sessions (`{sessions}`), whose
//! per-user cap is one script over the user's index and the sessions it names.

use std::fmt;

use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::{IntoConnectionInfo, TlsMode};

use super::access::RedisAccess;
use super::sentinel::{host_port, split_userinfo};

/// A parsed `redis+cluster://` URL.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterUrl {
    /// The starting nodes, `host:port`.
    pub nodes: Vec<String>,
    /// `user:password` or `:password`, as written (percent-encoded).
    userinfo: Option<String>,
    /// `rediss+cluster://`.
    pub tls: bool,
}

impl fmt::Debug for ClusterUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterUrl")
            .field("nodes", &self.nodes)
            .field("password", &self.userinfo.as_ref().map(|_| "****"))
            .field("tls", &self.tls)
            .finish()
    }
}

impl ClusterUrl {
    /// Reads `redis+cluster://…`; the error never repeats a password.
    pub fn parse(url: &str) -> Result<ClusterUrl, String> {
        let example = "\"redis+cluster://10.0.0.1:7000,10.0.0.2:7000,10.0.0.3:7000\"";
        let (tls, rest) = match (
            url.strip_prefix("redis+cluster://"),
            url.strip_prefix("rediss+cluster://"),
        ) {
            (Some(rest), _) => (false, rest),
            (_, Some(rest)) => (true, rest),
            _ => {
                return Err(format!(
                    "not a redis+cluster:// URL; write it like {example}"
                ));
            }
        };
        if rest.contains(['?', '#']) {
            return Err(format!(
                "query parameters and fragments are not supported; write it like {example}"
            ));
        }
        let (userinfo, rest) = split_userinfo(rest)?;
        let hosts = match rest.split_once('/') {
            None | Some((_, "")) => rest.trim_end_matches('/'),
            Some(_) => {
                return Err(format!(
                    "a Redis Cluster has only database 0: nothing may follow the nodes; write it like {example}"
                ));
            }
        };
        let mut nodes = Vec::new();
        for host in hosts.split(',') {
            nodes.push(
                host_port(host.trim(), 6379)
                    .map_err(|e| format!("{e}; write it like {example}"))?,
            );
        }
        Ok(ClusterUrl {
            nodes,
            userinfo,
            tls,
        })
    }

    /// A client for the cluster: the starting nodes, this URL's user information or the password
    /// file's credentials, TLS with `access`'s CA and client certificate.
    pub fn client(&self, access: &RedisAccess) -> redis::RedisResult<ClusterClient> {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let mut infos = Vec::new();
        for node in &self.nodes {
            let url = match &self.userinfo {
                Some(u) => format!("{scheme}://{u}@{node}"),
                None => format!("{scheme}://{node}"),
            };
            infos.push(url.into_connection_info()?);
        }
        let first = infos[0].redis_settings().clone();
        let mut builder = ClusterClientBuilder::new(infos)
            .retries(2)
            .connection_timeout(super::redis::CONNECT_TIMEOUT);
        if let Some(password) = first.password() {
            builder = builder.password(password);
        }
        if let Some(user) = first.username() {
            builder = builder.username(user);
        }
        if let Some((user, password)) = &access.credentials {
            builder = builder.password(password);
            if let Some(user) = user {
                builder = builder.username(user);
            }
        }
        if self.tls {
            builder = builder.tls(TlsMode::Secure);
            if access.ca.is_some() || access.client_cert.is_some() {
                builder = builder.certs(redis::TlsCertificates {
                    client_tls: access.client_cert.clone().map(|(client_cert, client_key)| {
                        redis::ClientTlsConfig {
                            client_cert,
                            client_key,
                        }
                    }),
                    root_cert: access.ca.clone(),
                });
            }
        }
        builder.build()
    }
}

/// The masters in a `CLUSTER NODES` answer (`host`, `port`), failed ones left out.
pub fn masters(cluster_nodes: &str) -> Vec<(String, u16)> {
    cluster_nodes
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (addr, flags) = (fields.get(1)?, fields.get(2)?);
            let flags: Vec<&str> = flags.split(',').collect();
            if !flags.contains(&"master") || flags.iter().any(|f| f.starts_with("fail")) {
                return None;
            }
            // ip:port@cport[,hostname]
            let host_port = addr.split('@').next()?;
            let (host, port) = host_port.rsplit_once(':')?;
            Some((host.to_owned(), port.parse().ok()?))
        })
        .collect()
}

/// The hash tag of `text`: the text itself, with `{`, `}` and `%` percent-encoded so that a user
/// name holding braces can never move the tag (and so split a script's keys over two slots).
pub fn tag(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('{');
    for c in text.chars() {
        match c {
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            '%' => out.push_str("%25"),
            c => out.push(c),
        }
    }
    out.push('}');
    out
}

/// The text of a hash tag made by [`tag`].
pub fn untag(tagged: &str) -> Option<String> {
    let inner = tagged.strip_prefix('{')?.strip_suffix('}')?;
    let mut out = String::with_capacity(inner.len());
    let mut rest = inner;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let code = rest.get(at + 1..at + 3)?;
        out.push(match code {
            "7B" => '{',
            "7D" => '}',
            "25" => '%',
            _ => return None,
        });
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_are_read() {
        let u = ClusterUrl::parse("redis+cluster://:pw@10.0.0.1:7000,node-b,[::1]:7002").unwrap();
        assert_eq!(u.nodes, ["10.0.0.1:7000", "node-b:6379", "[::1]:7002"]);
        assert!(!u.tls);
        assert!(!format!("{u:?}").contains("pw"));
        assert!(ClusterUrl::parse("rediss+cluster://h1:7000/").unwrap().tls);
        for bad in [
            "redis+cluster://",
            "redis+cluster://h1:7000/0",
            "redis+cluster://h1:0",
            "redis+cluster://h1,,h2",
            "redis+cluster://h1?x",
            "redis://h1",
        ] {
            assert!(ClusterUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tags_keep_braces_out_and_come_back() {
        for text in ["alice", "a}b", "{x}", "50%", "192.0.2.1", "%7B"] {
            let t = tag(text);
            assert_eq!(t.matches('{').count(), 1, "{t}");
            assert_eq!(t.matches('}').count(), 1, "{t}");
            assert_eq!(untag(&t).as_deref(), Some(text));
        }
    }

    #[test]
    fn masters_are_read_from_cluster_nodes() {
        let nodes = "\
a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:7001@17001 master - 0 0 2 connected 5461-10922
c3 127.0.0.1:7002@17002 master,fail - 0 0 3 connected
d4 127.0.0.1:7003@17003 slave a1 0 0 1 connected
e5 127.0.0.1:7004@17004,host-e master - 0 0 5 connected 10923-16383
";
        assert_eq!(
            masters(nodes),
            [
                ("127.0.0.1".to_owned(), 7000),
                ("127.0.0.1".to_owned(), 7001),
                ("127.0.0.1".to_owned(), 7004)
            ]
        );
    }
}
