//! Double-reverse DNS for `ip.deny_hosts`, as Apache's `Require host` does it: PTR lookup, then
//! a forward lookup of that name must return the same address, otherwise the name is not
//! believed (anyone can publish any PTR record for their own addresses).
//!
//! Lookups use the system resolver (`getnameinfo` / `getaddrinfo`), so `/etc/hosts` counts, on the
//! blocking pool behind a semaphore, with a timeout: a slow DNS server delays only the requests
//! that need the answer, never the async workers. Answers, positive and negative, are cached.

use std::net::{IpAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use moka::sync::Cache;
use tokio::sync::Semaphore;

/// How long an answer (a verified name, or a confirmed absence of one) is remembered.
const POSITIVE_TTL: Duration = Duration::from_secs(300);
/// How long a failed lookup (timeout, resolver error) is remembered before it is retried.
const NEGATIVE_TTL: Duration = Duration::from_secs(60);

/// The outcome of a double-reverse lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostName {
    /// PTR and forward lookups agree on this name.
    Verified(Arc<str>),
    /// No PTR record, or the forward lookup does not confirm it.
    Unverified,
    /// The lookup failed or timed out (logged; never matches a rule).
    Failed,
}

/// A caching double-reverse resolver.
pub struct HostResolver {
    positive: Cache<IpAddr, HostName>,
    negative: Cache<IpAddr, HostName>,
    permits: Arc<Semaphore>,
    timeout: Duration,
}

impl HostResolver {
    /// A resolver whose lookups give up after `timeout`.
    pub fn new(timeout: Duration) -> HostResolver {
        HostResolver {
            positive: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(POSITIVE_TTL)
                .build(),
            negative: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(NEGATIVE_TTL)
                .build(),
            permits: Arc::new(Semaphore::new(32)),
            timeout,
        }
    }

    /// The verified host name of `ip`.
    pub async fn lookup(&self, ip: IpAddr) -> HostName {
        if let Some(hit) = self.positive.get(&ip).or_else(|| self.negative.get(&ip)) {
            return hit;
        }
        let result = match tokio::time::timeout(self.timeout, self.resolve(ip)).await {
            Ok(r) => r,
            Err(_) => {
                tracing::warn!(%ip, timeout = ?self.timeout, "reverse DNS lookup timed out; host rules do not match");
                HostName::Failed
            }
        };
        match &result {
            HostName::Verified(_) | HostName::Unverified => {
                self.positive.insert(ip, result.clone())
            }
            HostName::Failed => self.negative.insert(ip, result.clone()),
        }
        result
    }

    async fn resolve(&self, ip: IpAddr) -> HostName {
        let Ok(permit) = self.permits.clone().acquire_owned().await else {
            return HostName::Failed;
        };
        // The permit moves into the thread: a lookup abandoned by our timeout still counts
        // against the limit until the resolver returns, so slow DNS cannot pile up threads.
        match tokio::task::spawn_blocking(move || {
            let _permit = permit;
            double_reverse(ip)
        })
        .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(%ip, error = %e, "reverse DNS task failed");
                HostName::Failed
            }
        }
    }
}

/// PTR, then forward confirmation, with the system resolver (blocking).
pub fn double_reverse(ip: IpAddr) -> HostName {
    let name = match dns_lookup::lookup_addr(&ip) {
        Ok(name) => name,
        Err(e) => {
            tracing::debug!(%ip, error = %e, "no PTR name");
            return HostName::Unverified;
        }
    };
    // getnameinfo returns the numeric form when there is no name.
    if name.parse::<IpAddr>().is_ok() {
        return HostName::Unverified;
    }
    match (name.as_str(), 0u16).to_socket_addrs() {
        Ok(addrs) => {
            let confirmed = addrs
                .map(|a| policy::canonical(a.ip()))
                .any(|a| a == policy::canonical(ip));
            if confirmed {
                HostName::Verified(Arc::from(name.as_str()))
            } else {
                tracing::debug!(%ip, %name, "forward lookup does not confirm the PTR name");
                HostName::Unverified
            }
        }
        Err(e) => {
            tracing::warn!(%ip, %name, error = %e, "forward DNS lookup failed; host rules do not match");
            HostName::Failed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn localhost_is_verified_through_etc_hosts() {
        match double_reverse("127.0.0.1".parse().unwrap()) {
            HostName::Verified(name) => assert!(name.starts_with("localhost"), "{name}"),
            other => panic!("127.0.0.1 should resolve to localhost via /etc/hosts: {other:?}"),
        }
    }
}
