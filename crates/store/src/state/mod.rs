//! Shared request state: per-client limits (phase 4), failed-logon counting and bans (phase 5).
//!
//! [`StateStore`] is the one entry point the gateway uses. It dispatches to the in-process
//! [`memory`] backend (the embedded default) or the [`redis`] backend (several instances share
//! one limit). Both give the same answers for the same sequence of events; the Redis backend adds
//! a short timeout, a circuit breaker and `on_backend_error` for when Redis is unreachable.
//!
//! Time comes through a [`Clock`], so limiter tests advance a fake clock instead of sleeping.

pub mod access;
pub mod cluster;
pub mod memory;
pub mod redis;
pub mod sentinel;
pub mod session;

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// Monotonic time for limiters.
pub trait Clock: Send + Sync + 'static {
    /// Time elapsed since an arbitrary fixed origin.
    fn now(&self) -> Duration;
}

/// The real clock.
#[derive(Debug)]
pub struct SystemClock(Instant);

impl SystemClock {
    /// A clock whose origin is now.
    pub fn new() -> SystemClock {
        SystemClock(Instant::now())
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

/// A clock tests move by hand.
#[derive(Debug, Default)]
pub struct FakeClock(AtomicU64);

impl FakeClock {
    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(
            u64::try_from(by.as_nanos()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::SeqCst))
    }
}

/// `[dynamic]` limits, per client address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// `deny_by_concurrent.max_concurrent` when enabled.
    pub max_concurrent: Option<u32>,
    /// `deny_by_rate` when enabled.
    pub rate: Option<Rate>,
}

/// At most `max_requests` per `interval` (GCRA: a burst of `max_requests`, then one request per
/// `interval / max_requests`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests allowed per interval (≥ 1).
    pub max_requests: u32,
    /// The interval (> 0).
    pub interval: Duration,
}

/// How many sessions one user may hold (`portal.max_sessions_per_user`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionCap {
    /// Sessions per user; a new one beyond it ends the oldest.
    pub max_per_user: u32,
    /// How long a session may last at all (`portal.max_age`): the index of a user's sessions
    /// lives no longer.
    pub max_age: Duration,
}

/// `[logon]` regulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Regulation {
    /// Failures that trigger a ban.
    pub max_failures: u32,
    /// Window in which they are counted.
    pub find_time: Duration,
    /// How long a ban lasts.
    pub ban_time: Duration,
}

/// Why phase 4 refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitRefusal {
    /// Too many requests in flight from this client.
    Concurrent {
        /// The limit.
        max: u32,
    },
    /// Too many requests per interval.
    Rate {
        /// When a request would be admitted again.
        retry_after: Duration,
    },
}

/// The outcome of [`StateStore::admit`].
pub enum Admission {
    /// Go on; keep the guard until the response is over (it releases the in-flight slot).
    Admitted(InFlightGuard),
    /// Refused by a limit (nothing was counted).
    Refused(LimitRefusal),
    /// The backend cannot answer and `on_backend_error = "closed"`.
    Unavailable,
}

/// Releases an in-flight slot when dropped: at the end of the response body, on client
/// disconnect, on upstream failure or on cancellation alike.
pub struct InFlightGuard(Option<Box<dyn FnOnce() + Send + Sync>>);

impl InFlightGuard {
    /// A guard that releases nothing (no concurrency limit).
    pub fn none() -> InFlightGuard {
        InFlightGuard(None)
    }

    /// A guard that runs `release` once when dropped.
    pub fn new(release: impl FnOnce() + Send + Sync + 'static) -> InFlightGuard {
        InFlightGuard(Some(Box::new(release)))
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if let Some(release) = self.0.take() {
            release();
        }
    }
}

/// "5 failed logons within 2m".
pub(crate) fn ban_reason(reg: &Regulation) -> String {
    let plural = if reg.max_failures == 1 { "" } else { "s" };
    format!(
        "{} failed logon{plural} within {}",
        reg.max_failures,
        human(reg.find_time)
    )
}

/// `2m`, `1m30s`, `200ms`: the way the configuration writes durations.
pub(crate) fn human(d: Duration) -> String {
    let secs = d.as_secs();
    let sub = u64::from(d.subsec_nanos());
    let parts = [
        (secs / 3600, "h"),
        (secs / 60 % 60, "m"),
        (secs % 60, "s"),
        (sub / 1_000_000, "ms"),
        (sub / 1000 % 1000, "us"),
        (sub % 1000, "ns"),
    ];
    let mut out = String::new();
    for (value, unit) in parts {
        if value > 0 {
            let _ = write!(out, "{value}{unit}");
        }
    }
    if out.is_empty() {
        out.push_str("0s");
    }
    out
}

/// Who a ban is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BanSubject {
    /// A client address.
    Address(IpAddr),
    /// A user name as typed.
    User(String),
}

impl std::fmt::Display for BanSubject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BanSubject::Address(ip) => write!(f, "address {ip}"),
            BanSubject::User(u) => write!(f, "user {u}"),
        }
    }
}

/// An active ban.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    /// Who.
    pub subject: BanSubject,
    /// Why, in words ("5 failed logons within 2m").
    pub reason: String,
    /// When it ends (wall clock, for people).
    pub until: SystemTime,
    /// Time left (from the limiter clock).
    pub remaining: Duration,
}

/// The backend could not answer (timeout, connection refused, circuit open).
#[derive(Debug, Clone, thiserror::Error)]
#[error("state backend unavailable: {0}")]
pub struct Unavailable(pub String);

/// The state store in use.
#[derive(Clone)]
pub enum StateStore {
    /// In-process.
    Memory(Arc<memory::MemoryState>),
    /// Shared through Redis.
    Redis(Arc<redis::RedisState>),
}

/// How far below the highest nonce count seen a count may still arrive (once).
pub const NONCE_WINDOW: u64 = 128;

impl StateStore {
    /// `"memory"` or `"redis"`: for metrics and messages.
    pub fn backend(&self) -> &'static str {
        match self {
            StateStore::Memory(_) => "memory",
            StateStore::Redis(_) => "redis",
        }
    }

    /// Bans that ran out since the last call (memory backend; Redis lets them expire silently).
    pub fn take_ended_bans(&self) -> Vec<BanSubject> {
        match self {
            StateStore::Memory(m) => m.take_ended_bans(),
            StateStore::Redis(_) => Vec::new(),
        }
    }

    /// Clients in the in-process limiter table (with Redis: its local fallback table).
    pub fn tracked_clients(&self) -> usize {
        match self {
            StateStore::Memory(m) => m.tracked_clients(),
            StateStore::Redis(r) => r.fallback().tracked_clients(),
        }
    }

    /// Phase 4: checks and counts one request from `ip` against `limits`.
    pub async fn admit(&self, ip: IpAddr, limits: &Limits) -> Admission {
        match self {
            StateStore::Memory(m) => m.admit(ip, limits),
            StateStore::Redis(r) => r.admit(ip, limits).await,
        }
    }

    /// Phase 5, before checking a password: an active ban on the address or the user name.
    pub async fn ban_for(
        &self,
        ip: IpAddr,
        user: Option<&str>,
    ) -> Result<Option<Ban>, Unavailable> {
        match self {
            StateStore::Memory(m) => Ok(m.ban_for(ip, user)),
            StateStore::Redis(r) => r.ban_for(ip, user).await,
        }
    }

    /// Records a failed logon; returns the bans it started (address and/or user).
    pub async fn record_failure(
        &self,
        ip: IpAddr,
        user: &str,
        regulation: &Regulation,
    ) -> Result<Vec<Ban>, Unavailable> {
        match self {
            StateStore::Memory(m) => Ok(m.record_failure(ip, user, regulation)),
            StateStore::Redis(r) => r.record_failure(ip, user, regulation).await,
        }
    }

    /// Records a successful logon: the client's failure count starts again.
    pub async fn record_success(&self, ip: IpAddr, user: &str) -> Result<(), Unavailable> {
        match self {
            StateStore::Memory(m) => {
                m.record_success(ip, user);
                Ok(())
            }
            StateStore::Redis(r) => r.record_success(ip, user).await,
        }
    }

    /// Every active ban.
    pub async fn list_bans(&self) -> Result<Vec<Ban>, Unavailable> {
        match self {
            StateStore::Memory(m) => Ok(m.list_bans()),
            StateStore::Redis(r) => r.list_bans().await,
        }
    }

    /// Lifts the bans of `who` (an address or a user name), or all bans; returns how many.
    pub async fn clear_bans(&self, who: Option<&str>) -> Result<usize, Unavailable> {
        match self {
            StateStore::Memory(m) => Ok(m.clear_bans(who)),
            StateStore::Redis(r) => r.clear_bans(who).await,
        }
    }

    /// The key that signs CSRF tokens: per process in memory, shared through Redis.
    pub fn secret(&self) -> [u8; 32] {
        match self {
            StateStore::Memory(m) => m.secret(),
            StateStore::Redis(r) => r.secret(),
        }
    }

    /// Stores a new sign-in session under `key` ([`session::key_of`] of its id).
    ///
    /// The user keeps at most `cap.max_per_user` sessions: the oldest beyond it end.
    pub async fn session_create(
        &self,
        key: &str,
        session: &session::Session,
        idle: Duration,
        cap: &SessionCap,
    ) -> Result<(), Unavailable> {
        match self {
            StateStore::Memory(m) => {
                m.session_create(key, session, idle, cap);
                Ok(())
            }
            StateStore::Redis(r) => r.session_create(key, session, idle, cap).await,
        }
    }

    /// The live session under `key`, its idle deadline renewed.
    pub async fn session_touch(
        &self,
        key: &str,
        idle: Duration,
    ) -> Result<Option<session::Session>, Unavailable> {
        match self {
            StateStore::Memory(m) => Ok(m.session_touch(key, idle)),
            StateStore::Redis(r) => r.session_touch(key, idle).await,
        }
    }

    /// Digest (RFC 7616): records nonce count `nc` for the nonce `key`, kept `ttl` (the nonce's
    /// lifetime); `Ok(false)` when it was used before with that nonce, or is more than
    /// [`NONCE_WINDOW`] below the highest one seen — a replay. Counts may arrive out of order
    /// (a browser's parallel connections share a nonce).
    pub async fn nonce_count(
        &self,
        key: &str,
        nc: u64,
        ttl: Duration,
    ) -> Result<bool, Unavailable> {
        match self {
            StateStore::Memory(m) => Ok(m.nonce_count(key, nc, ttl)),
            StateStore::Redis(r) => r.nonce_count(key, nc, ttl).await,
        }
    }

    /// Ends the session under `key`.
    pub async fn session_delete(&self, key: &str) -> Result<(), Unavailable> {
        match self {
            StateStore::Memory(m) => {
                m.session_delete(key);
                Ok(())
            }
            StateStore::Redis(r) => r.session_delete(key).await,
        }
    }
}
