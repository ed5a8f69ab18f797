//! Redis Sentinel: `redis+sentinel://[user:password@]h1:26379,h2:26379/MASTER[/DB]`. The master
//! named `MASTER` is asked of the Sentinels in turn (`SENTINEL get-master-addr-by-name`), and the
//! node they name is used only once it says it is a master (`ROLE`): a Sentinel that has not yet
//! seen a failover can name a node that is a replica now, and a replica is never written to.
//! The user information is the data nodes' (the Sentinels are asked without it).

use std::fmt;
use std::time::Duration;

use redis::{Client, Value};

use super::access::RedisAccess;

/// A parsed `redis+sentinel://` URL.
#[derive(Clone, PartialEq, Eq)]
pub struct SentinelUrl {
    /// The Sentinels, `host:port` (IPv6 in brackets), in the order written.
    pub sentinels: Vec<String>,
    /// The master's name in the Sentinels' configuration (`sentinel monitor NAME …`).
    pub master: String,
    /// The database number on the master.
    pub db: u32,
    /// `user:password` or `:password` for the data nodes, as written (percent-encoded).
    userinfo: Option<String>,
    /// `rediss+sentinel://`: TLS to the Sentinels and the data nodes.
    pub tls: bool,
}

impl fmt::Debug for SentinelUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SentinelUrl")
            .field("sentinels", &self.sentinels)
            .field("master", &self.master)
            .field("db", &self.db)
            .field("password", &self.userinfo.as_ref().map(|_| "****"))
            .finish()
    }
}

/// The default Sentinel port.
const SENTINEL_PORT: u16 = 26379;

impl SentinelUrl {
    /// Reads `redis+sentinel://…`; the error never repeats a password.
    pub fn parse(url: &str) -> Result<SentinelUrl, String> {
        let example = "\"redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/mymaster/0\"";
        let (tls, rest) = match (
            url.strip_prefix("redis+sentinel://"),
            url.strip_prefix("rediss+sentinel://"),
        ) {
            (Some(rest), _) => (false, rest),
            (_, Some(rest)) => (true, rest),
            _ => {
                return Err(format!(
                    "not a redis+sentinel:// URL; write it like {example}"
                ));
            }
        };
        if rest.contains(['?', '#']) {
            return Err(format!(
                "query parameters and fragments are not supported; write it like {example}"
            ));
        }
        let (userinfo, rest) = split_userinfo(rest)?;
        let (hosts, path) = rest.split_once('/').ok_or_else(|| {
            format!("the URL names no master after the Sentinels; write it like {example}")
        })?;
        let mut sentinels = Vec::new();
        for host in hosts.split(',') {
            sentinels.push(
                host_port(host.trim(), SENTINEL_PORT)
                    .map_err(|e| format!("{e}; write it like {example}"))?,
            );
        }
        let (master, db) = path.split_once('/').unwrap_or((path, ""));
        if master.is_empty()
            || !master
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(format!(
                "\"{master}\" is not a master name (letters, digits, '-', '_', '.'); write it like {example}"
            ));
        }
        let db = match db {
            "" => 0,
            d => d.parse::<u32>().map_err(|_| {
                format!("the database must be a non-negative number, not \"/{d}\"; write it like {example}")
            })?,
        };
        Ok(SentinelUrl {
            sentinels,
            master: master.to_owned(),
            db,
            userinfo,
            tls,
        })
    }

    /// The URL of the data node at `addr` (`host:port`), with this URL's user information and
    /// database.
    pub fn node_url(&self, addr: &str) -> String {
        let scheme = self.scheme();
        match &self.userinfo {
            Some(u) => format!("{scheme}://{u}@{addr}/{}", self.db),
            None => format!("{scheme}://{addr}/{}", self.db),
        }
    }

    fn scheme(&self) -> &'static str {
        if self.tls { "rediss" } else { "redis" }
    }

    /// Asks the Sentinels, in turn, where the master is, and returns the first answer whose node
    /// says it is a master (`host:port`). Each question and check waits at most `timeout`.
    pub async fn find_master(
        &self,
        access: &RedisAccess,
        timeout: Duration,
    ) -> Result<String, String> {
        let mut why = Vec::new();
        for sentinel in &self.sentinels {
            match self.ask(access, sentinel, timeout).await {
                Ok(addr) => match is_master(access, &self.node_url(&addr), timeout).await {
                    Ok(true) => return Ok(addr),
                    Ok(false) => why.push(format!(
                        "Sentinel {sentinel} names {addr}, which is not a master (yet)"
                    )),
                    Err(e) => why.push(format!("Sentinel {sentinel} names {addr}: {e}")),
                },
                Err(e) => why.push(format!("Sentinel {sentinel}: {e}")),
            }
        }
        Err(format!(
            "no Sentinel named a reachable master \"{}\" ({})",
            self.master,
            why.join("; ")
        ))
    }

    /// `SENTINEL get-master-addr-by-name` of one Sentinel.
    async fn ask(
        &self,
        access: &RedisAccess,
        sentinel: &str,
        timeout: Duration,
    ) -> Result<String, String> {
        let client = access
            .client(&format!("{}://{sentinel}", self.scheme()), false)
            .map_err(|e| e.to_string())?;
        let asking = async {
            let mut conn = client.get_multiplexed_async_connection().await?;
            redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(&self.master)
                .query_async::<Option<(String, u16)>>(&mut conn)
                .await
        };
        match tokio::time::timeout(timeout, asking).await {
            Ok(Ok(Some((host, port)))) if host.contains(':') => Ok(format!("[{host}]:{port}")),
            Ok(Ok(Some((host, port)))) => Ok(format!("{host}:{port}")),
            Ok(Ok(None)) => Err(format!("knows no master named \"{}\"", self.master)),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
    }

    /// The Sentinels' clients (for `+switch-master`).
    pub(crate) fn sentinel_clients(&self, access: &RedisAccess) -> Vec<(String, Client)> {
        self.sentinels
            .iter()
            .filter_map(|s| {
                access
                    .client(&format!("{}://{s}", self.scheme()), false)
                    .ok()
                    .map(|c| (s.clone(), c))
            })
            .collect()
    }

    /// The new master's `host:port` in a `+switch-master` message about this URL's master
    /// (`NAME OLD-IP OLD-PORT NEW-IP NEW-PORT`); `None` for another master or another shape.
    pub fn switched_to(&self, message: &str) -> Option<String> {
        let words: Vec<&str> = message.split_whitespace().collect();
        match words.as_slice() {
            [name, _, _, host, port] if *name == self.master && port.parse::<u16>().is_ok() => {
                Some(if host.contains(':') {
                    format!("[{host}]:{port}")
                } else {
                    format!("{host}:{port}")
                })
            }
            _ => None,
        }
    }
}

/// Whether the node at `url` answers `ROLE` with `master`.
async fn is_master(access: &RedisAccess, url: &str, timeout: Duration) -> Result<bool, String> {
    let client = access.client(url, true).map_err(|e| e.to_string())?;
    let asking = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("ROLE").query_async::<Value>(&mut conn).await
    };
    match tokio::time::timeout(timeout, asking).await {
        Ok(Ok(Value::Array(items))) => Ok(matches!(
            items.first(),
            Some(Value::BulkString(b)) if b == b"master"
        ) || matches!(items.first(), Some(Value::SimpleString(s)) if s == "master")),
        Ok(Ok(_)) => Ok(false),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

/// The user information of what follows `scheme://` (up to its last `@`), and the rest; an error
/// (which never repeats the password) when it holds a `/`, which would end the host part.
pub(crate) fn split_userinfo(rest: &str) -> Result<(Option<String>, &str), String> {
    match rest.rfind('@') {
        Some(at) if !rest[..at].contains('/') => Ok((Some(rest[..at].to_owned()), &rest[at + 1..])),
        Some(_) => Err(
            "the password contains '/', which ends the host part of a URL; \
                        percent-encode it as %2F (and '%' as %25)"
                .into(),
        ),
        None => Ok((None, rest)),
    }
}

/// `host[:port]` (IPv6 in brackets) with `default` as the port when none is written.
pub(crate) fn host_port(text: &str, default: u16) -> Result<String, String> {
    let (host, port) = if let Some(b) = text.strip_prefix('[') {
        let (host, after) = b
            .split_once(']')
            .ok_or_else(|| format!("the IPv6 address \"[{b}\" has no closing ']'"))?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("\"[{host}]\" is not an IPv6 address"));
        }
        match after {
            "" => (format!("[{host}]"), None),
            a => match a.strip_prefix(':') {
                Some(p) => (format!("[{host}]"), Some(p)),
                None => return Err(format!("unexpected \"{a}\" after \"[{host}]\"")),
            },
        }
    } else {
        match text.split_once(':') {
            Some((_, p)) if p.contains(':') => {
                return Err("an IPv6 address must be in brackets, like [::1]:26379".into());
            }
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (text.to_owned(), None),
        }
    };
    if host.is_empty()
        || !host.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':' | b'[' | b']')
        })
    {
        return Err(format!("\"{host}\" is not a host name or IP address"));
    }
    let port = match port {
        None => default,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("the port must be a number from 1 to 65535, not \"{p}\""))?,
    };
    Ok(format!("{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls_are_read() {
        let u = SentinelUrl::parse(
            "redis+sentinel://:s3cret@10.0.0.1:26380,sentinel-b,[::1]/mymaster/2",
        )
        .unwrap();
        assert_eq!(
            u.sentinels,
            ["10.0.0.1:26380", "sentinel-b:26379", "[::1]:26379"]
        );
        assert_eq!(u.master, "mymaster");
        assert_eq!(u.db, 2);
        assert_eq!(
            u.node_url("10.0.0.9:6379"),
            "redis://:s3cret@10.0.0.9:6379/2"
        );
        assert!(!format!("{u:?}").contains("s3cret"));
        let u = SentinelUrl::parse("redis+sentinel://h1:26379/m").unwrap();
        assert_eq!((u.db, u.node_url("h:1").as_str()), (0, "redis://h:1/0"));
        for bad in [
            "redis+sentinel://h1:26379",
            "redis+sentinel://h1:26379/",
            "redis+sentinel://h1:99999/m",
            "redis+sentinel://h1:26379,/m",
            "redis+sentinel://h1/m/x",
            "redis+sentinel://h1/m?db=1",
            "redis+sentinel://:pa/ss@h1/m",
            "redis://h1/m",
        ] {
            let e = SentinelUrl::parse(bad).unwrap_err();
            assert!(!e.contains("pa/ss"), "{e}");
        }
    }

    #[test]
    fn switch_master_messages_name_the_new_master() {
        let u = SentinelUrl::parse("redis+sentinel://h1/mymaster").unwrap();
        assert_eq!(
            u.switched_to("mymaster 127.0.0.1 6379 127.0.0.1 6380")
                .as_deref(),
            Some("127.0.0.1:6380")
        );
        assert_eq!(u.switched_to("other 127.0.0.1 6379 127.0.0.1 6380"), None);
        assert_eq!(u.switched_to("mymaster 127.0.0.1 6379"), None);
    }
}
