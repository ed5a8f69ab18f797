//! The Redis state backend: per-client limits, failed-logon counting and bans shared by every
//! instance that points at one Redis database, with the semantics of the [`memory`] backend.
//!
//! # Keys
//!
//! Every key starts with [`RedisOptions::key_prefix`] (`portcullis:` by default); addresses are
//! written in canonical form (`::ffff:192.0.2.1` is `192.0.2.1`), user names as typed.
//!
//! | key | type | content | expiry |
//! |---|---|---|---|
//! | `rate:<addr>` | string | GCRA theoretical arrival time, server µs | when fully recovered |
//! | `inflight:<addr>` | zset | leases `<instance>:<seq>`, scored by lease end (server ms) | longest lease |
//! | `fail:addr:<addr>`, `fail:user:<name>` | zset | failure times (server ms) | `find_time` |
//! | `ban:addr:<addr>`, `ban:user:<name>` | hash | `reason`, `until_ms` (server ms) | `ban_time` |
//!
//! # Round trips
//!
//! Admission is one Lua script (`lua/admit.lua`): it drops expired leases, checks the
//! concurrency limit, then the GCRA, and only when both pass counts the request and takes a
//! lease. Time is Redis's (`TIME`), so instances with skewed clocks still agree. A failed logon is
//! one script too (`lua/failure.lua`), and so is reading bans (`lua/read_bans.lua`).
//!
//! # Leases
//!
//! An in-flight request holds a lease that ends after [`RedisOptions::lease`]; a background
//! task renews this instance's live leases every third of that, in one script call per batch.
//! Dropping the guard removes the lease from a spawned task and never waits for Redis; a
//! release that fails is retried by the renewal task until the lease would have ended anyway.
//! So an instance that crashes holds its slots for at most one lease.
//!
//! # When Redis is unreachable
//!
//! Every call waits at most [`RedisOptions::timeout`]. After [`BREAKER_THRESHOLD`] consecutive
//! failures the circuit opens: calls fail at once, without touching the network, while a
//! background probe opens a fresh connection and sends `PING` every [`BREAKER_OPEN_FOR`]. The
//! first answer closes the circuit again. A fresh connection (rather than the old one) gets past
//! a TCP connection that died silently.
//!
//! While Redis cannot answer, `on_backend_error = "closed"` makes requests
//! [`Admission::Unavailable`] and logon checks `Err(Unavailable)`; `"open"` lets them through
//! under the *local* limits of the fallback [`MemoryState`], logging an error at most every
//! [`OUTAGE_LOG_EVERY`]. Listing and clearing bans are operator actions: they report
//! `Err(Unavailable)` in both modes rather than answer from one instance's local view.
//!
//! [`memory`]: super::memory

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use redis::RedisFuture;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Client, ErrorKind, RedisError, RedisResult, Script, ServerErrorKind};
use tokio::runtime::Handle;
use tokio::task::AbortHandle;

use super::access::RedisAccess;
use super::cluster::ClusterUrl;
use super::memory::MemoryState;
use super::sentinel::SentinelUrl;
use super::session::Session;
use super::{
    Admission, Ban, BanSubject, InFlightGuard, LimitRefusal, Limits, Regulation, Unavailable,
};

/// Longest wait for the connection at start-up and for each recovery probe.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Consecutive failures that open the circuit.
pub const BREAKER_THRESHOLD: u32 = 3;
/// Pause between recovery probes while the circuit is open.
pub const BREAKER_OPEN_FOR: Duration = Duration::from_secs(2);
/// With Sentinel: pause between questions for the master while the circuit is open (a failover
/// takes the Sentinels' `down-after-milliseconds` plus an election, so asking often is cheap).
pub const SENTINEL_PROBE_EVERY: Duration = Duration::from_millis(500);
/// At most one "Redis unavailable" log line per this period (with the count in between).
pub const OUTAGE_LOG_EVERY: Duration = Duration::from_secs(10);

/// Leases renewed per script call.
const RENEW_BATCH: usize = 256;
/// Keys asked per `SCAN` step and read or deleted per call.
const SCAN_BATCH: usize = 500;

/// How to reach Redis and what to do when it cannot answer.
#[derive(Clone)]
pub struct RedisOptions {
    /// `redis://[user:password@]host[:port][/db]`, `rediss://…` or `redis+unix:///path`.
    pub url: String,
    /// Longest wait for one round trip (default 100 ms).
    pub timeout: Duration,
    /// `on_backend_error = "open"`: let requests through under local limits when Redis is down.
    pub fail_open: bool,
    /// Prefix of every key (default `portcullis:`).
    pub key_prefix: String,
    /// How long an in-flight slot outlives its last renewal (default 30 s, renewed every third).
    pub lease: Duration,
    /// TLS material and credentials beyond the URL (`state.ca`, `cert`, `key`, `password_file`).
    pub access: RedisAccess,
}

impl RedisOptions {
    /// Defaults for `url`: 100 ms timeout, fail closed, prefix `portcullis:`, 30 s leases.
    pub fn new(url: impl Into<String>) -> RedisOptions {
        RedisOptions {
            url: url.into(),
            timeout: Duration::from_millis(100),
            fail_open: false,
            key_prefix: "portcullis:".to_owned(),
            lease: Duration::from_secs(30),
            access: RedisAccess::default(),
        }
    }
}

impl fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisOptions")
            .field("url", &redact(&self.url))
            .field("timeout", &self.timeout)
            .field("fail_open", &self.fail_open)
            .field("key_prefix", &self.key_prefix)
            .field("lease", &self.lease)
            .field("access", &self.access)
            .finish()
    }
}

/// The state store shared through Redis. Dropping it stops its lease renewal.
pub struct RedisState {
    inner: Arc<Inner>,
    renewal: AbortHandle,
    /// With Sentinel: the task listening for `+switch-master`.
    following: Option<AbortHandle>,
}

struct Inner {
    /// The connection in use; replaced by a fresh one when the circuit closes after an outage
    /// or when a Sentinel names another master.
    conn: RwLock<Conn>,
    /// Where fresh connections come from, and the node in use as `host:port` (or the socket
    /// path; for a Cluster, its starting nodes): for messages, never the URL (it may hold a
    /// password).
    node: RwLock<(Target, String)>,
    /// `redis+sentinel://`: where to ask for the master.
    sentinel: Option<SentinelUrl>,
    /// TLS material and credentials for every connection.
    access: RedisAccess,
    /// Failovers followed (a Sentinel named a new master and it answered).
    failovers: AtomicU64,
    timeout: Duration,
    fail_open: bool,
    lease: Duration,
    keys: Keys,
    breaker: Mutex<Breaker>,
    fallback: Arc<MemoryState>,
    runtime: Handle,
    /// Names this instance's leases: random per process start.
    instance: String,
    seq: AtomicU64,
    /// Leases of this instance's requests in flight, renewed in the background.
    leases: Mutex<HashMap<u64, Lease>>,
    /// Leases whose release failed (Redis down): retried until they would have ended anyway.
    orphans: Mutex<Vec<Orphan>>,
    outage_log: Mutex<OutageLog>,
    scripts: Scripts,
    /// Round trips sent to Redis, and those that got no answer (timeout, connection, error).
    round_trips: AtomicU64,
    errors: AtomicU64,
    /// The CSRF signing key every instance shares (kept in Redis, created by the first).
    secret: [u8; 32],
}

struct Scripts {
    admit: Script,
    renew: Script,
    failure: Script,
    read_bans: Script,
    session_create: Script,
    nonce_count: Script,
}

struct Lease {
    key: String,
    member: String,
}

struct Orphan {
    lease: Lease,
    /// When the lease ends by itself at the latest.
    ends: Instant,
}

/// Closed (counting consecutive failures) or open (calls fail at once; a probe is running).
enum Breaker {
    Closed { failures: u32 },
    Open { since: Instant },
}

#[derive(Default)]
struct OutageLog {
    last: Option<Instant>,
    suppressed: u64,
}

/// Why a call gave no answer.
struct CallError {
    message: String,
    /// Whether anything was sent (false when the circuit was open).
    attempted: bool,
}

impl From<CallError> for Unavailable {
    fn from(e: CallError) -> Unavailable {
        Unavailable(e.message)
    }
}

// === impl RedisState ===

impl RedisState {
    /// Connects to Redis and checks it answers `PING` within [`CONNECT_TIMEOUT`]; the error
    /// names `host:port`, never the password. `fallback` holds the local limits used while
    /// Redis is down with `fail_open`.
    pub async fn connect(
        options: RedisOptions,
        fallback: Arc<MemoryState>,
    ) -> Result<RedisState, String> {
        let cluster = if options.url.contains("+cluster://") {
            Some(
                ClusterUrl::parse(&options.url)
                    .map_err(|e| format!("invalid Redis URL \"{}\": {e}", redact(&options.url)))?,
            )
        } else {
            None
        };
        let (sentinel, url) = if cluster.is_some() {
            (None, String::new())
        } else if options.url.contains("+sentinel://") {
            let sentinel = SentinelUrl::parse(&options.url)
                .map_err(|e| format!("invalid Redis URL \"{}\": {e}", redact(&options.url)))?;
            let master = sentinel
                .find_master(&options.access, CONNECT_TIMEOUT)
                .await?;
            let url = sentinel.node_url(&master);
            (Some(sentinel), url)
        } else {
            (None, options.url.clone())
        };
        let (target, endpoint) =
            match &cluster {
                Some(c) => (
                    Target::Cluster(c.client(&options.access).map_err(|e| {
                        format!("invalid Redis URL \"{}\": {e}", redact(&options.url))
                    })?),
                    format!("cluster {}", c.nodes.join(",")),
                ),
                None => {
                    let client = options.access.client(&url, true).map_err(|e| {
                        format!("invalid Redis URL \"{}\": {e}", redact(&options.url))
                    })?;
                    let endpoint = client.get_connection_info().addr().to_string();
                    (Target::Node(client), endpoint)
                }
            };
        let mut conn = open_connection(&target, &endpoint).await?;
        let secret = shared_secret(&mut conn, &options.key_prefix, &endpoint).await?;
        let timeout = options.timeout.max(Duration::from_millis(1));
        let lease = options.lease.max(Duration::from_millis(30));
        let inner = Arc::new(Inner {
            conn: RwLock::new(conn),
            node: RwLock::new((target, endpoint)),
            sentinel,
            access: options.access,
            failovers: AtomicU64::new(0),
            timeout,
            fail_open: options.fail_open,
            lease,
            keys: Keys {
                prefix: options.key_prefix,
                cluster: cluster.is_some(),
            },
            breaker: Mutex::new(Breaker::Closed { failures: 0 }),
            fallback,
            runtime: Handle::current(),
            instance: format!("{:016x}", rand::random::<u64>()),
            seq: AtomicU64::new(0),
            leases: Mutex::new(HashMap::new()),
            orphans: Mutex::new(Vec::new()),
            outage_log: Mutex::new(OutageLog::default()),
            scripts: Scripts {
                admit: Script::new(include_str!("lua/admit.lua")),
                renew: Script::new(include_str!("lua/renew.lua")),
                failure: Script::new(include_str!("lua/failure.lua")),
                read_bans: Script::new(include_str!("lua/read_bans.lua")),
                session_create: Script::new(include_str!("lua/session_create.lua")),
                nonce_count: Script::new(include_str!("lua/nonce_count.lua")),
            },
            round_trips: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            secret,
        });
        let renewal = tokio::spawn(renew_leases(Arc::downgrade(&inner), lease / 3)).abort_handle();
        let following = if inner.keys.cluster {
            Some(tokio::spawn(watch_cluster(Arc::downgrade(&inner))).abort_handle())
        } else {
            None
        };
        let following = following.or_else(|| {
            inner.sentinel.as_ref().map(|s| {
                tracing::info!(
                    master = %inner.endpoint(),
                    name = %s.master,
                    sentinels = %s.sentinels.join(","),
                    "state shared through Redis: the master named by Sentinel"
                );
                tokio::spawn(follow_sentinels(Arc::downgrade(&inner))).abort_handle()
            })
        });
        if following.is_none() {
            tracing::info!(endpoint = %inner.endpoint(), "state shared through Redis");
        }
        Ok(RedisState {
            inner,
            renewal,
            following,
        })
    }

    /// The node in use (`host:port`): with Sentinel, the master it named last.
    pub fn node(&self) -> String {
        self.inner.endpoint()
    }

    /// With Sentinel: the master's name; `None` for a single Redis.
    pub fn sentinel_master(&self) -> Option<&str> {
        self.inner.sentinel.as_ref().map(|s| s.master.as_str())
    }

    /// Failovers followed since start (Sentinel named a new master and it answered; in a
    /// Cluster, a node became a master).
    pub fn failovers(&self) -> u64 {
        self.inner.failovers.load(Ordering::Relaxed)
    }

    /// Whether Redis is answering (the circuit is closed): for health checks.
    pub fn is_available(&self) -> bool {
        matches!(*lock(&self.inner.breaker), Breaker::Closed { .. })
    }

    /// Round trips sent to Redis so far (not counting calls refused by an open circuit).
    pub fn round_trips(&self) -> u64 {
        self.inner.round_trips.load(Ordering::Relaxed)
    }

    /// Round trips that got no usable answer: timeout, connection failure or a Redis error.
    pub fn errors(&self) -> u64 {
        self.inner.errors.load(Ordering::Relaxed)
    }

    /// The in-process table used while Redis is down with `on_backend_error = "open"`.
    pub fn fallback(&self) -> &MemoryState {
        &self.inner.fallback
    }

    /// Phase 4: checks one request from `ip` against `limits` and, when admitted, counts it.
    pub async fn admit(&self, ip: IpAddr, limits: &Limits) -> Admission {
        if limits.max_concurrent.is_none() && limits.rate.is_none() {
            return Admission::Admitted(InFlightGuard::none());
        }
        let inner = &self.inner;
        let ip = ip.to_canonical();
        let max_concurrent = limits.max_concurrent.unwrap_or(0);
        // Taken before the call: if this future is dropped mid-call, the script may still have
        // run, so the lease is released like any other.
        let lease = limits.max_concurrent.map(|_| inner.take_lease(ip));
        let (max_requests, interval_us) = match limits.rate {
            Some(rate) => (rate.max_requests.max(1), micros(rate.interval).max(1)),
            None => (0, 0),
        };
        let mut call = inner.scripts.admit.prepare_invoke();
        call.key(inner.keys.in_flight(ip))
            .key(inner.keys.rate(ip))
            .arg(max_concurrent)
            .arg(max_requests)
            .arg(interval_us)
            .arg(millis(inner.lease))
            .arg(lease.as_ref().map_or("", |l| l.member.as_str()));
        let mut conn = inner.connection();
        let answer: Result<(i64, i64), CallError> = inner.call(call.invoke_async(&mut conn)).await;
        match answer {
            Ok((0, _)) => match lease {
                Some(lease) => Admission::Admitted(InFlightGuard::new(move || drop(lease))),
                None => Admission::Admitted(InFlightGuard::none()),
            },
            Ok((code, retry_us)) => {
                if let Some(lease) = lease {
                    lease.forget();
                }
                match code {
                    1 => Admission::Refused(LimitRefusal::Concurrent {
                        max: max_concurrent,
                    }),
                    _ => Admission::Refused(LimitRefusal::Rate {
                        retry_after: Duration::from_micros(u64::try_from(retry_us).unwrap_or(0)),
                    }),
                }
            }
            Err(e) => {
                if let Some(lease) = lease
                    && !e.attempted
                {
                    lease.forget();
                }
                if inner.degraded(&e.message) {
                    inner.fallback.admit(ip, limits)
                } else {
                    Admission::Unavailable
                }
            }
        }
    }

    /// Phase 5: the active ban of the address, else of the user name.
    pub async fn ban_for(
        &self,
        ip: IpAddr,
        user: Option<&str>,
    ) -> Result<Option<Ban>, Unavailable> {
        let inner = &self.inner;
        let ip = ip.to_canonical();
        let mut subjects = vec![BanSubject::Address(ip)];
        subjects.extend(user.map(|u| BanSubject::User(u.to_owned())));
        match inner.read_bans(subjects).await {
            Ok(bans) => Ok(bans.into_iter().next()),
            Err(e) if inner.degraded(&e.message) => Ok(inner.fallback.ban_for(ip, user)),
            Err(e) => Err(e.into()),
        }
    }

    /// Records a failed logon of `user` from `ip`; returns the bans it started (address and/or
    /// user name).
    pub async fn record_failure(
        &self,
        ip: IpAddr,
        user: &str,
        reg: &Regulation,
    ) -> Result<Vec<Ban>, Unavailable> {
        let inner = &self.inner;
        let ip = ip.to_canonical();
        let reason = super::ban_reason(reg);
        let subjects = [BanSubject::Address(ip), BanSubject::User(user.to_owned())];
        let member = format!(
            "{}:{}",
            inner.instance,
            inner.seq.fetch_add(1, Ordering::Relaxed)
        );
        // One script over both subjects; in Cluster mode one per subject (their keys live in
        // different slots), sent together.
        let groups: Vec<&[BanSubject]> = if inner.keys.cluster {
            subjects.chunks(1).collect()
        } else {
            vec![&subjects[..]]
        };
        let calls = groups.iter().map(|group| {
            let mut call = inner.scripts.failure.prepare_invoke();
            for subject in *group {
                call.key(inner.keys.failures(subject));
            }
            for subject in *group {
                call.key(inner.keys.ban(subject));
            }
            call.arg(reg.max_failures.max(1))
                .arg(millis(reg.find_time).max(1))
                .arg(millis(reg.ban_time).max(1))
                .arg(&reason)
                .arg(&member);
            let mut conn = inner.connection();
            async move { inner.call(call.invoke_async::<Vec<i64>>(&mut conn)).await }
        });
        let answers = futures_util::future::join_all(calls).await;
        let answer: Result<Vec<i64>, CallError> =
            answers
                .into_iter()
                .enumerate()
                .try_fold(Vec::new(), |mut started, (g, answer)| {
                    // Indexes within a group, made indexes into `subjects` (1 address, 2 user).
                    started.extend(
                        answer?
                            .into_iter()
                            .map(|i| i + i64::try_from(g).unwrap_or(0)),
                    );
                    Ok(started)
                });
        match answer {
            Ok(started) => {
                let remaining = Duration::from_millis(millis(reg.ban_time).max(1));
                let until = SystemTime::now()
                    .checked_add(remaining)
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                let subject = |i: i64| match i {
                    1 => BanSubject::Address(ip),
                    _ => BanSubject::User(user.to_owned()),
                };
                Ok(started
                    .into_iter()
                    .map(|i| Ban {
                        subject: subject(i),
                        reason: reason.clone(),
                        until,
                        remaining,
                    })
                    .collect())
            }
            Err(e) if inner.degraded(&e.message) => {
                Ok(inner.fallback.record_failure(ip, user, reg))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Records a successful logon: the failure count of the client address starts again (the
    /// user name's count and any ban stay).
    pub async fn record_success(&self, ip: IpAddr, user: &str) -> Result<(), Unavailable> {
        let inner = &self.inner;
        let ip = ip.to_canonical();
        let cmd = {
            let mut c = redis::cmd("DEL");
            c.arg(inner.keys.failures(&BanSubject::Address(ip)));
            c
        };
        let mut conn = inner.connection();
        match inner.call(cmd.query_async::<i64>(&mut conn)).await {
            Ok(_) => Ok(()),
            Err(e) if inner.degraded(&e.message) => {
                inner.fallback.record_success(ip, user);
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Every active ban: addresses first, then user names, each in order.
    ///
    /// `Err` when Redis cannot answer, whatever `on_backend_error` says.
    pub async fn list_bans(&self) -> Result<Vec<Ban>, Unavailable> {
        let inner = &self.inner;
        let keys = inner.scan_bans().await?;
        let subjects: Vec<BanSubject> = keys
            .iter()
            .filter_map(|k| inner.keys.ban_subject(k))
            .collect();
        let mut bans = Vec::with_capacity(subjects.len());
        for chunk in subjects.chunks(SCAN_BATCH) {
            bans.extend(inner.read_bans(chunk.to_vec()).await?);
        }
        bans.sort_by(|a, b| match (&a.subject, &b.subject) {
            (BanSubject::Address(x), BanSubject::Address(y)) => client_key(*x).cmp(&client_key(*y)),
            (BanSubject::Address(_), BanSubject::User(_)) => std::cmp::Ordering::Less,
            (BanSubject::User(_), BanSubject::Address(_)) => std::cmp::Ordering::Greater,
            (BanSubject::User(x), BanSubject::User(y)) => x.cmp(y),
        });
        Ok(bans)
    }

    /// Lifts the bans of `who` (parsed as an address if it is one, else a user name), or every
    /// ban when `None`; returns how many active bans were lifted. The local fallback's bans
    /// (from an outage with `fail_open`) are lifted too, so they cannot return with the next one.
    ///
    /// `Err` when Redis cannot answer, whatever `on_backend_error` says.
    pub async fn clear_bans(&self, who: Option<&str>) -> Result<usize, Unavailable> {
        let inner = &self.inner;
        let keys = match who {
            Some(who) => {
                let subject = match who.parse::<IpAddr>() {
                    Ok(ip) => BanSubject::Address(ip.to_canonical()),
                    Err(_) => BanSubject::User(who.to_owned()),
                };
                vec![inner.keys.ban(&subject)]
            }
            None => inner.scan_bans().await?,
        };
        let mut lifted = 0;
        // In Cluster mode each ban key has its own slot: one DEL per key.
        let batch = if inner.keys.cluster { 1 } else { SCAN_BATCH };
        for chunk in keys.chunks(batch) {
            let mut cmd = redis::cmd("DEL");
            cmd.arg(chunk);
            let mut conn = inner.connection();
            let n: u64 = inner.call(cmd.query_async(&mut conn)).await?;
            lifted += usize::try_from(n).unwrap_or(usize::MAX);
        }
        inner.fallback.clear_bans(who);
        Ok(lifted)
    }
}

impl RedisState {
    /// The CSRF signing key shared by every instance on this Redis.
    pub fn secret(&self) -> [u8; 32] {
        self.inner.secret
    }

    /// Stores a new session under `key`, idle for at most `idle`. While Redis is down with
    /// `fail_open`, the session lives in this instance only.
    ///
    /// The user keeps at most `cap.max_per_user` sessions: the oldest beyond it end (one
    /// round trip, an atomic script over the user's index of sessions).
    pub async fn session_create(
        &self,
        key: &str,
        session: &Session,
        idle: Duration,
        cap: &super::SessionCap,
    ) -> Result<(), Unavailable> {
        let inner = &self.inner;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let mut call = inner.scripts.session_create.prepare_invoke();
        call.key(inner.keys.session(key))
            .key(inner.keys.sessions_of(&session.user))
            .arg(session.encode())
            .arg(millis(idle).max(1))
            .arg(u64::try_from(now_ms).unwrap_or(0))
            .arg(cap.max_per_user.max(1))
            .arg(inner.keys.session(""))
            .arg(millis(cap.max_age).max(1));
        let mut conn = inner.connection();
        match inner.call(call.invoke_async::<i64>(&mut conn)).await {
            Ok(_) => Ok(()),
            Err(e) if inner.degraded(&e.message) => {
                inner.fallback.session_create(key, session, idle, cap);
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The session under `key`, its idle deadline pushed to `idle` from now: one round trip
    /// (`GETEX`).
    pub async fn session_touch(
        &self,
        key: &str,
        idle: Duration,
    ) -> Result<Option<Session>, Unavailable> {
        let inner = &self.inner;
        let mut cmd = redis::cmd("GETEX");
        cmd.arg(inner.keys.session(key))
            .arg("PX")
            .arg(millis(idle).max(1));
        let mut conn = inner.connection();
        match inner
            .call(cmd.query_async::<Option<String>>(&mut conn))
            .await
        {
            Ok(found) => Ok(found.as_deref().and_then(Session::decode)),
            // Fail open: a session started during the outage lives here; one that lives in
            // Redis cannot be read, which is not the same as ended (no one is signed out).
            Err(e) if inner.degraded(&e.message) => match inner.fallback.session_touch(key, idle) {
                Some(session) => Ok(Some(session)),
                None => Err(e.into()),
            },
            Err(e) => Err(e.into()),
        }
    }

    /// Ends the session under `key` (here and in the local fallback).
    /// Records Digest nonce count `nc` for the nonce `key`; `false` for a replay.
    pub async fn nonce_count(
        &self,
        key: &str,
        nc: u64,
        ttl: Duration,
    ) -> Result<bool, Unavailable> {
        let inner = &self.inner;
        let mut call = inner.scripts.nonce_count.prepare_invoke();
        call.key(inner.keys.nonce(key))
            .arg(nc)
            .arg(millis(ttl).max(1))
            .arg(super::NONCE_WINDOW);
        let mut conn = inner.connection();
        match inner.call(call.invoke_async::<i64>(&mut conn)).await {
            Ok(fresh) => Ok(fresh == 1),
            Err(e) if inner.degraded(&e.message) => Ok(inner.fallback.nonce_count(key, nc, ttl)),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn session_delete(&self, key: &str) -> Result<(), Unavailable> {
        let inner = &self.inner;
        inner.fallback.session_delete(key);
        let mut cmd = redis::cmd("DEL");
        cmd.arg(inner.keys.session(key));
        let mut conn = inner.connection();
        inner.call(cmd.query_async::<i64>(&mut conn)).await?;
        Ok(())
    }
}

/// The CSRF signing key stored in Redis: the first instance creates it (`SET NX`), every
/// instance reads the same one, so a form served by one instance is accepted by another.
async fn shared_secret(conn: &mut Conn, prefix: &str, endpoint: &str) -> Result<[u8; 32], String> {
    let key = format!("{prefix}csrf-secret");
    let fresh: [u8; 32] = rand::random();
    let fresh_hex = crate::hex(&fresh);
    let reading = async {
        redis::cmd("SET")
            .arg(&key)
            .arg(&fresh_hex)
            .arg("NX")
            .query_async::<Option<String>>(conn)
            .await?;
        redis::cmd("GET")
            .arg(&key)
            .query_async::<String>(conn)
            .await
    };
    let stored = tokio::time::timeout(CONNECT_TIMEOUT, reading)
        .await
        .map_err(|_| {
            format!(
                "Redis at {endpoint} did not answer within {}s",
                CONNECT_TIMEOUT.as_secs()
            )
        })?
        .map_err(|e| format!("Redis at {endpoint}: reading the shared CSRF key: {e}"))?;
    let mut secret = [0u8; 32];
    if stored.len() != 64 || !stored.is_ascii() {
        return Err(format!(
            "Redis at {endpoint}: {key} is not a 64-digit hex key; delete it and restart"
        ));
    }
    for (i, byte) in secret.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&stored[2 * i..2 * i + 2], 16).map_err(|_| {
            format!("Redis at {endpoint}: {key} is not a 64-digit hex key; delete it and restart")
        })?;
    }
    Ok(secret)
}

impl Drop for RedisState {
    fn drop(&mut self) {
        self.renewal.abort();
        if let Some(f) = &self.following {
            f.abort();
        }
    }
}

impl fmt::Debug for RedisState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisState")
            .field("endpoint", &self.inner.endpoint())
            .field("key_prefix", &self.inner.keys.prefix)
            .field("available", &self.is_available())
            .field("in_flight", &lock(&self.inner.leases).len())
            .finish_non_exhaustive()
    }
}

// === impl Inner ===

impl Inner {
    /// The node in use, `host:port`.
    fn endpoint(&self) -> String {
        self.node
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .1
            .clone()
    }

    /// Puts `conn` to `client` at `endpoint` in use and closes the circuit; returns how long the
    /// circuit had been open (how long requests waited for an answer, or got the fallback).
    fn switch(&self, target: Target, endpoint: String, conn: Conn) -> Duration {
        *self.conn.write().unwrap_or_else(PoisonError::into_inner) = conn;
        *self.node.write().unwrap_or_else(PoisonError::into_inner) = (target, endpoint);
        match std::mem::replace(&mut *lock(&self.breaker), Breaker::Closed { failures: 0 }) {
            Breaker::Open { since } => since.elapsed(),
            Breaker::Closed { .. } => Duration::ZERO,
        }
    }

    /// With Sentinel: asks for the master and, when it is another node than the one in use,
    /// connects to it and puts it in use. `Ok(true)` when it switched.
    async fn follow_master(&self, why: &str) -> Result<bool, String> {
        let Some(sentinel) = &self.sentinel else {
            return Ok(false);
        };
        let master = sentinel.find_master(&self.access, CONNECT_TIMEOUT).await?;
        let current = self.endpoint();
        if master == current {
            return Ok(false);
        }
        let client = self
            .access
            .client(&sentinel.node_url(&master), true)
            .map_err(|e| e.to_string())?;
        let target = Target::Node(client);
        let conn = open_connection(&target, &master).await?;
        // Another task may have switched meanwhile: only the first one counts.
        if self.endpoint() != current {
            return Ok(false);
        }
        let waited = self.switch(target, master.clone(), conn);
        self.failovers.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            name = %sentinel.master,
            from = %current,
            to = %master,
            waited_ms = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
            "followed a Redis failover ({why}): the master is now {master}, was {current}; requests waited {:.1}s",
            waited.as_secs_f64(),
        );
        Ok(true)
    }

    fn connection(&self) -> Conn {
        self.conn
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Runs one round trip under the timeout and the circuit breaker.
    async fn call<T>(
        self: &Arc<Self>,
        op: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, CallError> {
        if !matches!(*lock(&self.breaker), Breaker::Closed { .. }) {
            return Err(CallError {
                message: format!("Redis at {} is unreachable (circuit open)", self.endpoint()),
                attempted: false,
            });
        }
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let message = match tokio::time::timeout(self.timeout, op).await {
            Ok(Ok(value)) => {
                self.succeeded();
                return Ok(value);
            }
            Ok(Err(e)) if !is_outage(&e) => {
                // Redis answered, with an error: not an outage, but no answer either.
                self.succeeded();
                tracing::error!(endpoint = %self.endpoint(), error = %e, "Redis refused a state operation");
                format!("Redis at {}: {e}", self.endpoint())
            }
            Ok(Err(e)) => format!("Redis at {}: {e}", self.endpoint()),
            Err(_) => format!(
                "Redis at {} did not answer within {:?}",
                self.endpoint(),
                self.timeout
            ),
        };
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.failed(&message);
        Err(CallError {
            message,
            attempted: true,
        })
    }

    fn succeeded(&self) {
        let mut breaker = lock(&self.breaker);
        if let Breaker::Closed { failures } = &mut *breaker {
            *failures = 0;
        }
    }

    fn failed(self: &Arc<Self>, message: &str) {
        let mut breaker = lock(&self.breaker);
        let Breaker::Closed { failures } = &mut *breaker else {
            return;
        };
        *failures += 1;
        if *failures < BREAKER_THRESHOLD {
            return;
        }
        *breaker = Breaker::Open {
            since: Instant::now(),
        };
        drop(breaker);
        let consequence = if self.fail_open {
            "letting requests through under local limits only (on_backend_error = \"open\")"
        } else {
            "refusing requests with 503 (on_backend_error = \"closed\")"
        };
        tracing::error!(
            endpoint = %self.endpoint(),
            "state backend unreachable: {message}; {consequence} until Redis answers again (probing every {:?})",
            BREAKER_OPEN_FOR,
        );
        self.runtime
            .spawn(probe_until_reachable(Arc::downgrade(self)));
    }

    /// Counts one operation that got no answer; true when it should go on locally (fail open).
    fn degraded(&self, message: &str) -> bool {
        let mut log = lock(&self.outage_log);
        log.suppressed += 1;
        let due = log
            .last
            .is_none_or(|last| last.elapsed() >= OUTAGE_LOG_EVERY);
        if due {
            let count = std::mem::take(&mut log.suppressed);
            log.last = Some(Instant::now());
            drop(log);
            if self.fail_open {
                tracing::error!(
                    endpoint = %self.endpoint(),
                    count,
                    "state backend unavailable ({message}): {count} operation(s) let through under LOCAL limits only \
                     (on_backend_error = \"open\"); limits are not shared until Redis answers",
                );
            } else {
                tracing::error!(
                    endpoint = %self.endpoint(),
                    count,
                    "state backend unavailable ({message}): {count} operation(s) refused (on_backend_error = \"closed\")",
                );
            }
        }
        self.fail_open
    }

    /// A lease for one request; released (in the background) when the returned value is dropped.
    fn take_lease(self: &Arc<Self>, ip: IpAddr) -> LeaseHold {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let member = format!("{}:{seq}", self.instance);
        let key = self.keys.in_flight(ip);
        lock(&self.leases).insert(
            seq,
            Lease {
                key,
                member: member.clone(),
            },
        );
        LeaseHold {
            inner: Arc::clone(self),
            seq,
            member,
            armed: true,
        }
    }

    /// Ends a lease: `ZREM` from a spawned task, so dropping a guard never waits for Redis.
    fn release(self: &Arc<Self>, seq: u64) {
        let Some(lease) = lock(&self.leases).remove(&seq) else {
            return;
        };
        let inner = Arc::clone(self);
        self.runtime.spawn(async move {
            let mut cmd = redis::cmd("ZREM");
            cmd.arg(&lease.key).arg(&lease.member);
            let mut conn = inner.connection();
            if inner.call(cmd.query_async::<i64>(&mut conn)).await.is_err() {
                let ends = Instant::now() + inner.lease;
                lock(&inner.orphans).push(Orphan { lease, ends });
            }
        });
    }

    /// Extends this instance's live leases and retries failed releases.
    async fn renew(self: &Arc<Self>) {
        let live: Vec<(String, String)> = lock(&self.leases)
            .values()
            .map(|l| (l.key.clone(), l.member.clone()))
            .collect();
        // In Cluster mode each lease's key has its own slot: one call per lease.
        let batch = if self.keys.cluster { 1 } else { RENEW_BATCH };
        for chunk in live.chunks(batch) {
            let mut call = self.scripts.renew.prepare_invoke();
            call.arg(millis(self.lease));
            for (key, member) in chunk {
                call.key(key).arg(member);
            }
            let mut conn = self.connection();
            if self
                .call(call.invoke_async::<i64>(&mut conn))
                .await
                .is_err()
            {
                break;
            }
        }

        let now = Instant::now();
        let orphans: Vec<Orphan> = std::mem::take(&mut *lock(&self.orphans));
        let orphans: Vec<Orphan> = orphans.into_iter().filter(|o| o.ends > now).collect();
        if orphans.is_empty() {
            return;
        }
        if self.keys.cluster {
            let mut failed = Vec::new();
            for o in orphans {
                let mut cmd = redis::cmd("ZREM");
                cmd.arg(&o.lease.key).arg(&o.lease.member);
                let mut conn = self.connection();
                if self.call(cmd.query_async::<i64>(&mut conn)).await.is_err() {
                    failed.push(o);
                }
            }
            lock(&self.orphans).extend(failed);
            return;
        }
        let mut pipe = redis::pipe();
        for o in &orphans {
            pipe.cmd("ZREM")
                .arg(&o.lease.key)
                .arg(&o.lease.member)
                .ignore();
        }
        let mut conn = self.connection();
        if self.call(pipe.query_async::<()>(&mut conn)).await.is_err() {
            lock(&self.orphans).extend(orphans);
        }
    }

    /// Reads the bans of `subjects`, keeping only active ones, in the order given.
    async fn read_bans(self: &Arc<Self>, subjects: Vec<BanSubject>) -> Result<Vec<Ban>, CallError> {
        // One script; in Cluster mode one per subject (each ban key has its own slot), together.
        let groups: Vec<&[BanSubject]> = if self.keys.cluster {
            subjects.chunks(1).collect()
        } else {
            vec![&subjects[..]]
        };
        let calls = groups.iter().map(|group| {
            let mut call = self.scripts.read_bans.prepare_invoke();
            for subject in *group {
                call.key(self.keys.ban(subject));
            }
            let mut conn = self.connection();
            async move {
                self.call(call.invoke_async::<Vec<(Option<String>, i64)>>(&mut conn))
                    .await
            }
        });
        let mut answer = Vec::with_capacity(subjects.len());
        for part in futures_util::future::join_all(calls).await {
            answer.extend(part?);
        }
        let now = SystemTime::now();
        Ok(subjects
            .into_iter()
            .zip(answer)
            .filter_map(|(subject, (reason, ms_left))| {
                let reason = reason?;
                let remaining =
                    Duration::from_millis(u64::try_from(ms_left).ok().filter(|&ms| ms > 0)?);
                let until = now.checked_add(remaining).unwrap_or(SystemTime::UNIX_EPOCH);
                Some(Ban {
                    subject,
                    reason,
                    until,
                    remaining,
                })
            })
            .collect())
    }

    /// Every ban key (`SCAN`, so Redis is never blocked for long; in Cluster mode on every
    /// master, asked of the cluster with `CLUSTER NODES`).
    async fn scan_bans(self: &Arc<Self>) -> Result<Vec<String>, Unavailable> {
        let pattern = self.keys.ban_pattern();
        let masters = if self.keys.cluster {
            let mut conn = self.connection();
            let nodes: String = self
                .call(redis::cmd("CLUSTER").arg("NODES").query_async(&mut conn))
                .await?;
            super::cluster::masters(&nodes)
                .into_iter()
                .map(Some)
                .collect()
        } else {
            vec![None]
        };
        let mut keys = Vec::new();
        for master in masters {
            let mut cursor: u64 = 0;
            loop {
                let mut cmd = redis::cmd("SCAN");
                cmd.arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(SCAN_BATCH);
                let mut conn = self.connection();
                let (next, batch): (u64, Vec<String>) = match (&master, &mut conn) {
                    (Some((host, port)), Conn::Cluster(c)) => {
                        let routed = c.route_command(
                            cmd,
                            RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                                host: host.clone(),
                                port: *port,
                            }),
                        );
                        let value = self.call(routed).await?;
                        redis::from_redis_value(value)
                            .map_err(|e| Unavailable(format!("Redis answered SCAN with {e}")))?
                    }
                    _ => self.call(cmd.query_async(&mut conn)).await?,
                };
                keys.extend(batch);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        // SCAN may return a key twice.
        keys.sort_unstable();
        keys.dedup();
        Ok(keys)
    }
}

/// One request's lease until its guard is dropped.
struct LeaseHold {
    inner: Arc<Inner>,
    seq: u64,
    member: String,
    armed: bool,
}

impl LeaseHold {
    /// The lease was never taken in Redis: nothing to release.
    fn forget(mut self) {
        self.armed = false;
        lock(&self.inner.leases).remove(&self.seq);
    }
}

impl Drop for LeaseHold {
    fn drop(&mut self) {
        if self.armed {
            self.inner.release(self.seq);
        }
    }
}

/// Renews leases every `every` for as long as the store exists.
async fn renew_leases(inner: Weak<Inner>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        inner.renew().await;
    }
}

/// While the circuit is open: every [`BREAKER_OPEN_FOR`] (with Sentinel, every
/// [`SENTINEL_PROBE_EVERY`], first asking where the master is now), a fresh connection and a
/// `PING`; the first answer puts that connection in use and closes the circuit.
async fn probe_until_reachable(inner: Weak<Inner>) {
    loop {
        let every = match inner.upgrade() {
            Some(i) if i.sentinel.is_some() || i.keys.cluster => SENTINEL_PROBE_EVERY,
            Some(_) => BREAKER_OPEN_FOR,
            None => return,
        };
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else { return };
        if !matches!(*lock(&inner.breaker), Breaker::Open { .. }) {
            return; // a +switch-master closed it meanwhile
        }
        if inner.sentinel.is_some() {
            match inner.follow_master("the master stopped answering").await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => {
                    tracing::debug!("Redis master not found yet: {e}");
                    continue;
                }
            }
        }
        let (target, endpoint) = inner
            .node
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        match open_connection(&target, &endpoint).await {
            Ok(conn) => {
                let since = inner.switch(target, endpoint.clone(), conn);
                tracing::warn!(
                    endpoint = %endpoint,
                    "state backend reachable again after {:.1}s; limits and bans are shared again",
                    since.as_secs_f64(),
                );
                return;
            }
            Err(e) => tracing::debug!(endpoint = %endpoint, "Redis still unreachable: {e}"),
        }
    }
}

/// With Sentinel: listens for `+switch-master` on the Sentinels (the first that answers; the
/// next one when its connection drops) and follows the failover it announces at once, before
/// any request has to fail.
async fn follow_sentinels(inner: Weak<Inner>) {
    use futures_util::StreamExt as _;
    let Some(clients) = inner
        .upgrade()
        .and_then(|i| i.sentinel.as_ref().map(|s| s.sentinel_clients(&i.access)))
    else {
        return;
    };
    for (name, client) in clients.iter().cycle() {
        let subscribed = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe("+switch-master").await?;
            Ok::<_, RedisError>(pubsub)
        };
        let mut pubsub = match tokio::time::timeout(CONNECT_TIMEOUT, subscribed).await {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                tracing::debug!(sentinel = %name, "cannot subscribe to +switch-master: {e}");
                tokio::time::sleep(SENTINEL_PROBE_EVERY).await;
                continue;
            }
            Err(_) => continue,
        };
        let mut messages = pubsub.on_message();
        while let Some(message) = messages.next().await {
            let Some(inner) = inner.upgrade() else { return };
            let text: String = message.get_payload().unwrap_or_default();
            if inner
                .sentinel
                .as_ref()
                .and_then(|s| s.switched_to(&text))
                .is_some()
                && let Err(e) = inner
                    .follow_master("Sentinel announced +switch-master")
                    .await
            {
                tracing::warn!(
                    "a failover was announced but the new master is not usable yet: {e}"
                );
            }
        }
        if inner.upgrade().is_none() {
            return;
        }
        tokio::time::sleep(SENTINEL_PROBE_EVERY).await;
    }
}

/// How often a Cluster's masters are looked at (for `/healthz`, the metrics and the log: the
/// cluster client follows the slots by itself).
const CLUSTER_WATCH: Duration = Duration::from_secs(1);

/// Watches a Cluster's masters (`CLUSTER NODES`, once a second): the node shown becomes the list
/// of masters, and a node that becomes a master (a replica promoted by a failover) is counted
/// and logged. A master that fails is not counted by itself: its replica's promotion is.
async fn watch_cluster(inner: Weak<Inner>) {
    let mut known: Option<Vec<String>> = None;
    loop {
        tokio::time::sleep(CLUSTER_WATCH).await;
        let Some(inner) = inner.upgrade() else { return };
        let mut conn = inner.connection();
        let asked = tokio::time::timeout(
            CONNECT_TIMEOUT,
            redis::cmd("CLUSTER")
                .arg("NODES")
                .query_async::<String>(&mut conn),
        )
        .await;
        let Ok(Ok(nodes)) = asked else { continue };
        let mut masters: Vec<String> = super::cluster::masters(&nodes)
            .into_iter()
            .map(|(host, port)| format!("{host}:{port}"))
            .collect();
        if masters.is_empty() {
            continue;
        }
        masters.sort();
        if let Some(old) = &known
            && masters.iter().any(|m| !old.contains(m))
        {
            inner.failovers.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                "followed a Redis Cluster failover: the masters are now {}, were {}",
                masters.join(","),
                old.join(",")
            );
        }
        inner.node.write().unwrap_or_else(PoisonError::into_inner).1 = masters.join(",");
        known = Some(masters);
    }
}

/// A connection that answered `PING` within [`CONNECT_TIMEOUT`]: a connection manager to one
/// node, or a Cluster connection (which follows the cluster's slots and failovers by itself).
async fn open_connection(target: &Target, endpoint: &str) -> Result<Conn, String> {
    let connecting = async {
        let mut conn = match target {
            Target::Node(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    // Each call has its own timeout; the manager reconnects by itself after a drop.
                    .set_response_timeout(None)
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(50))
                    .set_max_delay(Duration::from_millis(500));
                Conn::Node(ConnectionManager::new_with_config(client.clone(), config).await?)
            }
            Target::Cluster(client) => Conn::Cluster(client.get_async_connection().await?),
        };
        redis::cmd("PING").query_async::<String>(&mut conn).await?;
        Ok::<_, RedisError>(conn)
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(format!("cannot reach Redis at {endpoint}: {e}")),
        Err(_) => Err(format!(
            "Redis at {endpoint} did not answer within {}s",
            CONNECT_TIMEOUT.as_secs()
        )),
    }
}

/// Where fresh connections come from (one per store: its size does not matter).
#[derive(Clone)]
#[allow(clippy::large_enum_variant)]
enum Target {
    /// One node (or the master a Sentinel named).
    Node(Client),
    /// A Redis Cluster.
    Cluster(ClusterClient),
}

/// The connection in use.
#[derive(Clone)]
enum Conn {
    Node(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> RedisFuture<'a, redis::Value> {
        match self {
            Conn::Node(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Node(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Node(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Whether an error means Redis is unreachable (as opposed to answering with an error).
fn is_outage(e: &RedisError) -> bool {
    !matches!(
        e.kind(),
        ErrorKind::Server(
            ServerErrorKind::ResponseError | ServerErrorKind::ExecAbort | ServerErrorKind::NoScript
        ) | ErrorKind::UnexpectedReturnType
            | ErrorKind::Extension
    )
}

// === impl Keys ===

struct Keys {
    prefix: String,
    /// Redis Cluster: keys carry hash tags so that each script's keys share one slot.
    cluster: bool,
}

impl Keys {
    /// `text` as a hash tag in Cluster mode, as itself otherwise (the keys of a single Redis keep
    /// their names from before Cluster support: an upgrade loses nothing).
    fn part(&self, text: &str) -> String {
        if self.cluster {
            super::cluster::tag(text)
        } else {
            text.to_owned()
        }
    }

    fn nonce(&self, key: &str) -> String {
        format!("{}nonce:{key}", self.prefix)
    }

    /// Sessions and the per-user indexes share one slot (`{sessions}`) in Cluster mode: the cap
    /// per user is one script over the index and the sessions it names.
    fn session(&self, key: &str) -> String {
        if self.cluster {
            format!("{}{{sessions}}session:{key}", self.prefix)
        } else {
            format!("{}session:{key}", self.prefix)
        }
    }

    /// The index of a user's sessions (for `portal.max_sessions_per_user`).
    fn sessions_of(&self, user: &str) -> String {
        if self.cluster {
            format!("{}{{sessions}}sessions-of:{user}", self.prefix)
        } else {
            format!("{}sessions-of:{user}", self.prefix)
        }
    }

    fn rate(&self, ip: IpAddr) -> String {
        format!("{}rate:{}", self.prefix, self.part(&ip.to_string()))
    }

    fn in_flight(&self, ip: IpAddr) -> String {
        format!("{}inflight:{}", self.prefix, self.part(&ip.to_string()))
    }

    fn failures(&self, subject: &BanSubject) -> String {
        match subject {
            BanSubject::Address(ip) => {
                format!("{}fail:addr:{}", self.prefix, self.part(&ip.to_string()))
            }
            BanSubject::User(user) => format!("{}fail:user:{}", self.prefix, self.part(user)),
        }
    }

    fn ban(&self, subject: &BanSubject) -> String {
        match subject {
            BanSubject::Address(ip) => {
                format!("{}ban:addr:{}", self.prefix, self.part(&ip.to_string()))
            }
            BanSubject::User(user) => format!("{}ban:user:{}", self.prefix, self.part(user)),
        }
    }

    /// `SCAN MATCH` pattern of every ban key (the prefix's glob characters escaped).
    fn ban_pattern(&self) -> String {
        let mut pattern = String::with_capacity(self.prefix.len() + 5);
        for c in self.prefix.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push_str("ban:*");
        pattern
    }

    fn ban_subject(&self, key: &str) -> Option<BanSubject> {
        let rest = key
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix("ban:")?;
        let text = |part: &str| {
            if self.cluster {
                super::cluster::untag(part)
            } else {
                Some(part.to_owned())
            }
        };
        if let Some(addr) = rest.strip_prefix("addr:") {
            return text(addr)?
                .parse::<IpAddr>()
                .ok()
                .map(|ip| BanSubject::Address(ip.to_canonical()));
        }
        rest.strip_prefix("user:")
            .and_then(text)
            .map(BanSubject::User)
    }
}

// === helpers ===

/// The memory backend's address order: IPv6, IPv4 in its IPv4-mapped form.
fn client_key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// `url` with the password of its user information replaced by `****`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let masked = match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:****"),
                None => "****".to_owned(),
            };
            format!("{scheme}://{masked}{}", &rest[at..])
        }
        None => url.to_owned(),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_prefixed_and_canonical() {
        let keys = Keys {
            prefix: "pc:".to_owned(),
            cluster: false,
        };
        let ip: IpAddr = "::ffff:192.0.2.1".parse::<IpAddr>().unwrap().to_canonical();
        assert_eq!(keys.rate(ip), "pc:rate:192.0.2.1");
        assert_eq!(keys.in_flight(ip), "pc:inflight:192.0.2.1");
        assert_eq!(keys.ban(&BanSubject::Address(ip)), "pc:ban:addr:192.0.2.1");
        assert_eq!(
            keys.failures(&BanSubject::User("alice".into())),
            "pc:fail:user:alice"
        );
        assert_eq!(
            keys.ban_subject("pc:ban:addr:2001:db8::1"),
            Some(BanSubject::Address("2001:db8::1".parse().unwrap()))
        );
        assert_eq!(
            keys.ban_subject("pc:ban:user:a:b"),
            Some(BanSubject::User("a:b".into()))
        );
        assert_eq!(keys.ban_subject("pc:fail:user:a"), None);
        assert_eq!(keys.ban_subject("other:ban:user:a"), None);
        assert_eq!(
            Keys {
                prefix: "a*[x]:".to_owned(),
                cluster: false,
            }
            .ban_pattern(),
            "a\\*\\[x\\]:ban:*"
        );
    }

    /// In Cluster mode each script's keys share a hash tag, whatever a user name holds.
    #[test]
    fn cluster_keys_share_a_tag_per_script() {
        let keys = Keys {
            prefix: "pc:".to_owned(),
            cluster: true,
        };
        let tag_of = |key: &str| {
            let open = key.find('{').unwrap();
            let close = open + key[open..].find('}').unwrap();
            key[open..=close].to_owned()
        };
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(keys.rate(ip), "pc:rate:{192.0.2.1}");
        assert_eq!(tag_of(&keys.rate(ip)), tag_of(&keys.in_flight(ip)));
        for user in ["alice", "a}b", "{x", "}{", "50%"] {
            let subject = BanSubject::User(user.into());
            assert_eq!(
                tag_of(&keys.failures(&subject)),
                tag_of(&keys.ban(&subject)),
                "{user}"
            );
            assert_eq!(keys.ban_subject(&keys.ban(&subject)), Some(subject));
            assert_eq!(tag_of(&keys.sessions_of(user)), "{sessions}");
        }
        assert_eq!(tag_of(&keys.session("abc")), "{sessions}");
        let addr = BanSubject::Address(ip);
        assert_eq!(keys.ban_subject(&keys.ban(&addr)), Some(addr));
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact("redis://:s3cret@host:6379/0"),
            "redis://:****@host:6379/0"
        );
        assert_eq!(
            redact("rediss://user:s3cret@host"),
            "rediss://user:****@host"
        );
        assert_eq!(redact("redis://s3cret@host"), "redis://****@host");
        assert_eq!(redact("redis://host:6379"), "redis://host:6379");
        assert_eq!(
            redact("redis+unix:///run/redis.sock"),
            "redis+unix:///run/redis.sock"
        );
    }

    #[test]
    fn reasons_match_the_memory_backend() {
        let reg = Regulation {
            max_failures: 5,
            find_time: Duration::from_secs(120),
            ban_time: Duration::from_secs(300),
        };
        assert_eq!(crate::state::ban_reason(&reg), "5 failed logons within 2m");
        assert_eq!(
            crate::state::ban_reason(&Regulation {
                max_failures: 1,
                find_time: Duration::from_millis(1500),
                ..reg
            }),
            "1 failed logon within 1s500ms"
        );
    }
}
