//! Prometheus metrics, served by `GET /metrics` on the admin listener ([`crate::admin`]).
//!
//! One [`Metrics`] lives for the whole process and is shared by every [`Gateway`](crate::Gateway)
//! built from a configuration, so counters survive reloads. Labels carry the contract's words:
//! `portcullis_requests_total{status="401",substatus="2",reason="no_credentials"}`.
//!
//! The request path only touches atomics, two histogram locks and, for the labelled counters,
//! one hash lookup of a key made of integers and `&'static str`: nothing is allocated per
//! request. What describes state (limiter table, bans, backend health) or is counted elsewhere
//! (Redis round trips, dropped access-log records) is read when scraped.
//!
//! Every metric and label is listed in `docs/metrics.md`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use policy::Reason;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use store::state::StateStore;
use store::verifier::Answer;

use crate::access_log::AccessLog;

/// `Content-Type` of the OpenMetrics text format (sent when the scraper asks for it).
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `Content-Type` of the classic Prometheus text format (version 0.0.4), the default.
pub const TEXT_CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The `reason` label of requests that were not refused.
pub const NO_REASON: &str = "none";

/// Longest wait for the ban list at scrape time (Redis); the previous value is kept after it.
const BAN_LIST_TIMEOUT: Duration = Duration::from_secs(2);

/// Upper bounds of the upstream latency buckets, seconds.
const UPSTREAM_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Upper bounds of the gateway overhead buckets, seconds: microseconds when the credentials are
/// cached, a hash check (tens of milliseconds) when not.
const OVERHEAD_BUCKETS: [f64; 15] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    status: u16,
    substatus: u16,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    phase: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthLabels {
    scheme: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendCallLabels {
    backend: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RedisNodeLabels {
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    backend: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// How a sign-in attempt ended, for `portcullis_auth_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthOutcome {
    /// The password matched.
    Accepted,
    /// Wrong password or unknown user.
    Refused,
    /// Refused before the password was looked at: the address or the user is banned.
    LockedOut,
    /// The ban check could not be made and `on_backend_error = "closed"`.
    StateUnavailable,
    /// Not checked: every hashing worker stayed busy past `auth.verify_queue_timeout`.
    Busy,
    /// Not checked: the directory that holds the users did not answer.
    DirectoryUnavailable,
}

impl AuthOutcome {
    const ALL: [AuthOutcome; 6] = [
        AuthOutcome::Accepted,
        AuthOutcome::Refused,
        AuthOutcome::LockedOut,
        AuthOutcome::StateUnavailable,
        AuthOutcome::Busy,
        AuthOutcome::DirectoryUnavailable,
    ];

    fn label(self) -> &'static str {
        match self {
            AuthOutcome::Accepted => "accepted",
            AuthOutcome::Refused => "refused",
            AuthOutcome::LockedOut => "locked_out",
            AuthOutcome::StateUnavailable => "state_unavailable",
            AuthOutcome::Busy => "busy",
            AuthOutcome::DirectoryUnavailable => "directory_unavailable",
        }
    }
}

/// The process's metrics; share it in an `Arc`.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    refusals: Family<RefusalLabels, Counter>,
    /// `portcullis_auth_total{scheme}`: `[basic, form]`, each indexed like [`AuthOutcome::ALL`].
    auth_by_scheme: [[Counter; 6]; 6],
    cache_hits: Counter,
    hash_checks: Counter,
    upstream: Histogram,
    overhead: Histogram,
    backend_calls: Family<BackendCallLabels, Counter>,
    reloads_accepted: Counter,
    reloads_refused: Counter,
    /// `portcullis_mails_total{result}`: sent, failed.
    mails_sent: Counter,
    mails_failed: Counter,
    last_reload_success: Gauge,
    last_reload_time: Gauge<f64, AtomicU64>,
    // Read at scrape time.
    limiter_clients: Gauge,
    bans_active: Gauge,
    backend_available: Family<BackendLabels, Gauge>,
    redis_round_trips: Counter,
    redis_errors: Counter,
    /// `portcullis_redis_failovers_total`: failovers followed (Sentinel).
    redis_failovers: Counter,
    /// `portcullis_redis_node{node}`: the node in use (1), the ones used before (0).
    redis_node: Family<RedisNodeLabels, Gauge>,
    redis_nodes_seen: Mutex<Vec<String>>,
    log_dropped: Counter,
    logs: Mutex<LogTally>,
    audit_dropped: Counter,
    audit: Mutex<Weak<crate::audit::AuditLog>>,
    /// `portcullis_directory_calls_total{result}`: directory operations, ok or error.
    directory_calls: Family<ResultLabels, Counter>,
    /// `portcullis_directory_call_seconds_total`: time directory operations took.
    directory_seconds: Counter<f64, AtomicU64>,
    /// `portcullis_directory_connections_opened_total`.
    directory_connects: Counter,
    /// `portcullis_directory_connections_in_use`: pooled connections checked out now.
    directory_in_use: Gauge,
    /// The directory in force (LDAP users), read at scrape time.
    directory: Mutex<Weak<store::ldap::Directory>>,
    connections_open: Gauge,
    connections_parked: Gauge,
    connections_refused: Counter,
    connections_timed_out: Family<TimeoutLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TimeoutLabels {
    phase: &'static str,
}

/// The access log in use and what the ones it replaced (reloads) dropped.
#[derive(Default)]
struct LogTally {
    current: Weak<AccessLog>,
    dropped_before: u64,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The schemes `portcullis_auth_total` counts by.
pub const AUTH_SCHEMES: [&str; 6] = ["basic", "form", "bearer", "digest", "certificate", "oidc"];

impl Metrics {
    /// Registers every metric, at zero. The start-up configuration counts as the last
    /// successful load (`portcullis_config_last_reload_success` 1, timestamp now).
    pub fn new() -> Metrics {
        let auth: Family<AuthLabels, Counter> = Family::default();
        let auth_by_scheme = AUTH_SCHEMES.map(|scheme| {
            AuthOutcome::ALL.map(|outcome| {
                // `Counter` clones share one value: this is the family's member itself.
                auth.get_or_create_owned(&AuthLabels {
                    scheme,
                    outcome: outcome.label(),
                })
            })
        });
        let reloads: Family<ResultLabels, Counter> = Family::default();
        let reload = |result| reloads.get_or_create_owned(&ResultLabels { result });
        let mails: Family<ResultLabels, Counter> = Family::default();
        let mail = |result| mails.get_or_create_owned(&ResultLabels { result });
        let m = Metrics {
            registry: Registry::default(),
            requests: Family::default(),
            refusals: Family::default(),
            auth_by_scheme,
            cache_hits: Counter::default(),
            hash_checks: Counter::default(),
            upstream: Histogram::new(UPSTREAM_BUCKETS),
            overhead: Histogram::new(OVERHEAD_BUCKETS),
            backend_calls: Family::default(),
            reloads_accepted: reload("accepted"),
            reloads_refused: reload("refused"),
            mails_sent: mail("sent"),
            mails_failed: mail("failed"),
            last_reload_success: Gauge::default(),
            last_reload_time: Gauge::default(),
            limiter_clients: Gauge::default(),
            bans_active: Gauge::default(),
            backend_available: Family::default(),
            redis_round_trips: Counter::default(),
            redis_errors: Counter::default(),
            redis_failovers: Counter::default(),
            redis_node: Family::default(),
            redis_nodes_seen: Mutex::new(Vec::new()),
            log_dropped: Counter::default(),
            audit_dropped: Counter::default(),
            audit: Mutex::new(Weak::new()),
            directory_calls: Family::default(),
            directory_seconds: Counter::default(),
            directory_connects: Counter::default(),
            directory_in_use: Gauge::default(),
            directory: Mutex::new(Weak::new()),
            logs: Mutex::new(LogTally::default()),
            connections_open: Gauge::default(),
            connections_parked: Gauge::default(),
            connections_refused: Counter::default(),
            connections_timed_out: Family::default(),
        };
        let mut registry = Registry::with_prefix("portcullis");
        registry.register(
            "build",
            "Portcullis version (always 1)",
            Info::new([("version", env!("CARGO_PKG_VERSION"))]),
        );
        registry.register(
            "connections_open",
            "Client connections open now (server.max_connections caps them)",
            m.connections_open.clone(),
        );
        registry.register(
            "connections_parked",
            "Idle HTTP/1 client connections parked now: handed back by hyper after 2 s without a request, waiting for the next one with no buffer held",
            m.connections_parked.clone(),
        );
        registry.register(
            "connections_refused",
            "Client connections closed at once because server.max_connections were open",
            m.connections_refused.clone(),
        );
        registry.register(
            "connections_timed_out",
            "Client connections closed by Portcullis for silence: phase \"header\" (no request within server.header_timeout of the accept) or \"idle\" (none within server.idle_timeout of the last answer)",
            m.connections_timed_out.clone(),
        );
        registry.register(
            "requests",
            "Requests answered, by status, sub-status and reason slug (reason \"none\" when not refused); status 0 is a connection closed by deny_action = \"abort\"",
            m.requests.clone(),
        );
        registry.register(
            "refusals",
            "Refused requests, by the pipeline phase that refused and the reason slug",
            m.refusals.clone(),
        );
        registry.register(
            "auth",
            "Sign-in attempts with credentials, by scheme and outcome (accepted, refused, locked_out, state_unavailable)",
            auth,
        );
        registry.register(
            "auth_cache_hits",
            "Credential checks answered without a password hash check of their own (outcome cache, or a concurrent check of the same credentials)",
            m.cache_hits.clone(),
        );
        registry.register(
            "password_hash_checks",
            "Password hash checks run (credential cache misses)",
            m.hash_checks.clone(),
        );
        registry.register_with_unit(
            "upstream_duration",
            "Time from forwarding a request to the upstream until its response head arrived",
            Unit::Seconds,
            m.upstream.clone(),
        );
        registry.register_with_unit(
            "gateway_overhead",
            "Time spent in the gateway before forwarding a request (phases 2-7: client address, IP rules, limits, authentication, rules, filter)",
            Unit::Seconds,
            m.overhead.clone(),
        );
        registry.register(
            "state_backend_calls",
            "Calls to the state store made by the pipeline (limits, bans, logon outcomes), by backend and result; error means no answer and on_backend_error = \"closed\"",
            m.backend_calls.clone(),
        );
        registry.register(
            "state_backend_available",
            "Whether the state backend answers (Redis: the circuit breaker is closed); 1 or 0",
            m.backend_available.clone(),
        );
        registry.register(
            "redis_round_trips",
            "Round trips sent to Redis (0 with the memory backend)",
            m.redis_round_trips.clone(),
        );
        registry.register(
            "redis_errors",
            "Redis round trips that got no usable answer: timeout, connection failure or a Redis error",
            m.redis_errors.clone(),
        );
        registry.register(
            "redis_failovers",
            "Redis failovers followed: a Sentinel named a new master and it answered (0 without Sentinel)",
            m.redis_failovers.clone(),
        );
        registry.register(
            "redis_node",
            "The Redis node in use (1; with Sentinel, the master it named last) and those used before (0)",
            m.redis_node.clone(),
        );
        registry.register(
            "directory_calls",
            "LDAP directory operations (searches, binds), by result: ok (answered) or error (timeout, connection failure, unexpected result)",
            m.directory_calls.clone(),
        );
        registry.register(
            "directory_call_seconds",
            "Time LDAP directory operations took, in all (divide by portcullis_directory_calls_total for the mean)",
            m.directory_seconds.clone(),
        );
        registry.register(
            "directory_connections_opened",
            "Connections opened to the LDAP directory (a failed one is replaced)",
            m.directory_connects.clone(),
        );
        registry.register(
            "directory_connections_in_use",
            "LDAP connections checked out of the pool right now (at most ldap.pool)",
            m.directory_in_use.clone(),
        );
        registry.register(
            "limiter_clients",
            "Clients tracked in the in-process limiter table (with Redis: its local fallback table)",
            m.limiter_clients.clone(),
        );
        registry.register(
            "bans_active",
            "Active logon bans (addresses and user names)",
            m.bans_active.clone(),
        );
        registry.register(
            "mails",
            "Invitation and reset mails the gateway sent (the forgot-password page), by result: sent, or failed after its retries",
            mails,
        );
        registry.register(
            "config_reloads",
            "Configuration reloads (SIGHUP or a change of the file), by result: accepted, or refused as invalid",
            reloads,
        );
        registry.register(
            "config_last_reload_success",
            "Whether the last configuration load succeeded (1) or was refused (0)",
            m.last_reload_success.clone(),
        );
        registry.register_with_unit(
            "config_last_reload_timestamp",
            "Unix time of the last configuration load attempt (start-up or reload)",
            Unit::Seconds,
            m.last_reload_time.clone(),
        );
        registry.register(
            "access_log_dropped",
            "Access-log records dropped because the writer could not keep up",
            m.log_dropped.clone(),
        );
        registry.register(
            "audit_log_dropped",
            "Audit-log lines lost because the disk could not keep up",
            m.audit_dropped.clone(),
        );
        m.last_reload_success.set(1);
        m.last_reload_time.set(unix_now());
        Metrics { registry, ..m }
    }

    /// A client connection was opened (`+1`) or closed (`-1`).
    pub fn connection(&self, delta: i64) {
        self.connections_open.inc_by(delta);
    }

    /// An idle connection was parked (`+1`) or woke up or closed (`-1`).
    pub fn connection_parked(&self, delta: i64) {
        self.connections_parked.inc_by(delta);
    }

    /// A connection was closed at once: `server.max_connections` were open.
    pub fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    /// A connection was closed for silence (`"header"` or `"idle"`).
    pub fn connection_timed_out(&self, phase: &'static str) {
        self.connections_timed_out
            .get_or_create(&TimeoutLabels { phase })
            .inc();
    }

    /// Counts one answered request (`status` 0: connection closed by policy). Call it once per
    /// request, where the access-log record gets its status.
    pub fn request(&self, status: u16, reason: Option<Reason>) {
        let labels = RequestLabels {
            status,
            substatus: reason.map_or(0, Reason::substatus),
            reason: reason.map_or(NO_REASON, Reason::slug),
        };
        self.requests.get_or_create(&labels).inc();
        if let Some(reason) = reason {
            let labels = RefusalLabels {
                phase: reason.phase().name(),
                reason: reason.slug(),
            };
            self.refusals.get_or_create(&labels).inc();
        }
    }

    /// Counts one sign-in attempt by `scheme` (one of [`AUTH_SCHEMES`]).
    pub fn auth(&self, scheme: &str, outcome: AuthOutcome) {
        let i = AuthOutcome::ALL
            .iter()
            .position(|&o| o == outcome)
            .unwrap_or(0);
        let by = AUTH_SCHEMES.iter().position(|&s| s == scheme).unwrap_or(0);
        self.auth_by_scheme[by][i].inc();
    }

    /// Counts one mail by whether the SMTP server took it.
    pub fn mail(&self, sent: bool) {
        if sent {
            self.mails_sent.inc();
        } else {
            self.mails_failed.inc();
        }
    }

    /// Counts one credential check by how it was answered.
    pub fn verification(&self, answer: Answer) {
        match answer {
            Answer::Cached => self.cache_hits.inc(),
            Answer::Hashed => self.hash_checks.inc(),
        };
    }

    /// Records the gateway overhead of a request that started at `started` and is being
    /// forwarded now; returns now, to pass to [`Metrics::upstream_answered`].
    pub fn forwarding(&self, started: Instant) -> Instant {
        let now = Instant::now();
        self.overhead
            .observe(now.saturating_duration_since(started).as_secs_f64());
        now
    }

    /// Records the upstream latency of a request forwarded at `forwarded` whose response head
    /// just arrived.
    pub fn upstream_answered(&self, forwarded: Instant) {
        self.upstream.observe(forwarded.elapsed().as_secs_f64());
    }

    /// Counts one call to the state store; `ok` is false when it answered `Unavailable`.
    pub fn state_call(&self, state: &StateStore, ok: bool) {
        let labels = BackendCallLabels {
            backend: state.backend(),
            result: if ok { "ok" } else { "error" },
        };
        self.backend_calls.get_or_create(&labels).inc();
    }

    /// Records a configuration reload: `ok` when the new configuration took effect, false when
    /// it was refused and the previous one kept serving.
    pub fn record_reload(&self, ok: bool) {
        if ok {
            self.reloads_accepted.inc();
        } else {
            self.reloads_refused.inc();
        }
        self.last_reload_success.set(i64::from(ok));
        self.last_reload_time.set(unix_now());
    }

    /// Makes `log` the access log whose dropped records are reported (a reloaded gateway opens
    /// a new one; what the previous one dropped stays counted).
    pub fn attach_access_log(&self, log: &Arc<AccessLog>) {
        let mut tally = self.logs.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = tally.current.upgrade()
            && !Arc::ptr_eq(&old, log)
        {
            tally.dropped_before += old.dropped();
        }
        tally.current = Arc::downgrade(log);
    }

    /// Makes `audit` the audit log whose lost lines are reported.
    pub fn attach_directory(&self, directory: Option<&Arc<store::ldap::Directory>>) {
        *self
            .directory
            .lock()
            .unwrap_or_else(PoisonError::into_inner) =
            directory.map_or_else(Weak::new, Arc::downgrade);
    }

    /// The audit log whose dropped lines are reported.
    pub fn attach_audit_log(&self, audit: &Arc<crate::audit::AuditLog>) {
        *self.audit.lock().unwrap_or_else(PoisonError::into_inner) = Arc::downgrade(audit);
    }

    /// Reads the scrape-time values from `state` and encodes everything: OpenMetrics text when
    /// `openmetrics`, else the classic Prometheus text format.
    pub async fn render(&self, state: &StateStore, openmetrics: bool) -> String {
        self.refresh(state).await;
        let mut out = String::with_capacity(8 * 1024);
        let encoded = if openmetrics {
            prometheus_client::encoding::text::encode(&mut out, &self.registry)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        };
        if let Err(e) = encoded {
            tracing::error!(error = %e, "cannot encode the metrics");
        }
        out
    }

    async fn refresh(&self, state: &StateStore) {
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.limiter_clients.set(gauge(state.tracked_clients()));
        let available = match state {
            StateStore::Memory(_) => true,
            StateStore::Redis(r) => {
                self.redis_round_trips
                    .inner()
                    .store(r.round_trips(), Ordering::Relaxed);
                self.redis_errors
                    .inner()
                    .store(r.errors(), Ordering::Relaxed);
                self.redis_failovers
                    .inner()
                    .store(r.failovers(), Ordering::Relaxed);
                let node = r.node();
                let mut seen = self
                    .redis_nodes_seen
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if !seen.contains(&node) {
                    seen.push(node.clone());
                }
                for n in seen.iter() {
                    self.redis_node
                        .get_or_create(&RedisNodeLabels { node: n.clone() })
                        .set(i64::from(*n == node));
                }
                r.is_available()
            }
        };
        self.backend_available
            .get_or_create(&BackendLabels {
                backend: state.backend(),
            })
            .set(i64::from(available));
        match tokio::time::timeout(BAN_LIST_TIMEOUT, state.list_bans()).await {
            Ok(Ok(bans)) => {
                self.bans_active.set(gauge(bans.len()));
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "metrics: bans not listed"),
            Err(_) => tracing::debug!("metrics: listing the bans timed out"),
        }
        let directory = self
            .directory
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .upgrade();
        if let Some(d) = directory {
            let stats = d.stats();
            for (result, n) in [
                ("ok", stats.ok.load(Ordering::Relaxed)),
                ("error", stats.errors.load(Ordering::Relaxed)),
            ] {
                self.directory_calls
                    .get_or_create(&ResultLabels { result })
                    .inner()
                    .store(n, Ordering::Relaxed);
            }
            #[allow(clippy::cast_precision_loss)]
            let seconds = stats.micros.load(Ordering::Relaxed) as f64 / 1e6;
            self.directory_seconds
                .inner()
                .store(seconds.to_bits(), Ordering::Relaxed);
            self.directory_connects
                .inner()
                .store(stats.connects.load(Ordering::Relaxed), Ordering::Relaxed);
            self.directory_in_use
                .set(gauge(stats.in_use.load(Ordering::Relaxed)));
        }
        let dropped = {
            let tally = self.logs.lock().unwrap_or_else(PoisonError::into_inner);
            tally.dropped_before + tally.current.upgrade().map_or(0, |l| l.dropped())
        };
        // Monotonic even if a replaced log's count was read late.
        self.log_dropped
            .inner()
            .fetch_max(dropped, Ordering::Relaxed);
        let audit_dropped = self
            .audit
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .upgrade()
            .map_or(0, |a| a.dropped());
        self.audit_dropped
            .inner()
            .fetch_max(audit_dropped, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use store::state::SystemClock;
    use store::state::memory::MemoryState;

    fn memory() -> StateStore {
        StateStore::Memory(Arc::new(MemoryState::new(Arc::new(SystemClock::new()))))
    }

    fn line<'a>(text: &'a str, series: &str) -> Option<&'a str> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
    }

    #[tokio::test]
    async fn requests_carry_status_substatus_and_reason() {
        let m = Metrics::new();
        m.request(200, None);
        m.request(401, Some(Reason::NoCredentials));
        m.request(401, Some(Reason::NoCredentials));
        m.request(0, Some(Reason::IpDenied));
        let text = m.render(&memory(), false).await;
        for (series, value) in [
            (
                r#"portcullis_requests_total{status="200",substatus="0",reason="none"}"#,
                "1",
            ),
            (
                r#"portcullis_requests_total{status="401",substatus="2",reason="no_credentials"}"#,
                "2",
            ),
            (
                r#"portcullis_requests_total{status="0",substatus="503",reason="ip_denied"}"#,
                "1",
            ),
            (
                r#"portcullis_refusals_total{phase="authenticate",reason="no_credentials"}"#,
                "2",
            ),
            (
                r#"portcullis_refusals_total{phase="ip",reason="ip_denied"}"#,
                "1",
            ),
        ] {
            assert_eq!(line(&text, series), Some(value), "{series}:\n{text}");
        }
    }

    #[tokio::test]
    async fn reloads_set_the_result_gauges() {
        let m = Metrics::new();
        m.record_reload(true);
        m.record_reload(false);
        let text = m.render(&memory(), false).await;
        assert_eq!(
            line(
                &text,
                r#"portcullis_config_reloads_total{result="accepted"}"#
            ),
            Some("1")
        );
        assert_eq!(
            line(
                &text,
                r#"portcullis_config_reloads_total{result="refused"}"#
            ),
            Some("1")
        );
        assert_eq!(
            line(&text, "portcullis_config_last_reload_success"),
            Some("0")
        );
        m.record_reload(true);
        let text = m.render(&memory(), true).await;
        assert_eq!(
            line(&text, "portcullis_config_last_reload_success"),
            Some("1")
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
