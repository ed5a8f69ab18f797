//! The Redis state backend against a real `redis-server`: two `RedisState` values are two
//! gateway instances sharing one Redis.
//!
//! Timing assertions bound stalls (a call while Redis is down must not hang), they are not
//! performance measurements; the bounds are loose for a busy 2-core machine.

use std::net::{IpAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_store::state::memory::MemoryState;
use portcullis_store::state::redis::{RedisOptions, RedisState};
use portcullis_store::state::{
    Admission, BanSubject, InFlightGuard, LimitRefusal, Limits, Rate, Regulation, SystemClock,
};

// === harness ===

/// A `redis-server` child process on a free loopback port, killed by PID on drop.
struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

fn redis_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("REDIS_SERVER") {
        return PathBuf::from(path);
    }
    let default = PathBuf::from("/usr/bin/redis-server");
    if default.exists() {
        return default;
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("redis-server"))
        .find(|p| p.exists());
    on_path.unwrap_or_else(|| {
        panic!(
            "redis-server is not installed (looked for /usr/bin/redis-server and on PATH): these tests need \
             a real Redis; install it with `apt-get install redis-server` (or set REDIS_SERVER=/path/to/redis-server)"
        )
    })
}

impl RedisServer {
    fn start() -> RedisServer {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let mut server = RedisServer {
            child: None,
            port,
            dir,
        };
        server.restart();
        server
    }

    /// Starts (again) on the same port.
    fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut child = Command::new(redis_server_binary())
                .args([
                    "--port",
                    &self.port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .arg("--dir")
                .arg(self.dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start redis-server");
            if wait_for_pong(self.port, &mut child) {
                self.child = Some(child);
                return;
            }
            // It exited (port not yet free after a kill?): try again for a while.
            let _ = child.kill();
            let _ = child.wait();
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the server (SIGKILL by PID): an outage without goodbye.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing answers.
    fn freeze(&self) {
        self.signal("-STOP");
    }

    fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let status = Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {sig} {pid}");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// A plain connection for looking at the keys.
    async fn raw(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A frozen server would not die from SIGTERM; SIGKILL works either way.
            let _ = Command::new("kill")
                .args(["-KILL", &child.id().to_string()])
                .status();
        }
        self.kill();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// True once the server answers PING; false if it exited.
fn wait_for_pong(port: u16, child: &mut Child) -> bool {
    use std::io::{Read, Write};
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
            let mut buf = [0u8; 7];
            if s.write_all(b"PING\r\n").is_ok()
                && s.read_exact(&mut buf).is_ok()
                && &buf == b"+PONG\r\n"
            {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn options(server: &RedisServer) -> RedisOptions {
    RedisOptions::new(server.url())
}

fn local() -> Arc<MemoryState> {
    Arc::new(MemoryState::new(Arc::new(SystemClock::new())))
}

async fn gateway(options: RedisOptions) -> RedisState {
    RedisState::connect(options, local())
        .await
        .expect("connect to the test Redis")
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn concurrent(max: u32) -> Limits {
    Limits {
        max_concurrent: Some(max),
        rate: None,
    }
}

fn rate(max_requests: u32, interval: Duration) -> Limits {
    Limits {
        max_concurrent: None,
        rate: Some(Rate {
            max_requests,
            interval,
        }),
    }
}

fn admitted(a: Admission) -> Option<InFlightGuard> {
    match a {
        Admission::Admitted(g) => Some(g),
        _ => None,
    }
}

fn refusal(a: Admission) -> Option<LimitRefusal> {
    match a {
        Admission::Refused(r) => Some(r),
        _ => None,
    }
}

fn kind(a: &Admission) -> &'static str {
    match a {
        Admission::Admitted(_) => "admitted",
        Admission::Refused(LimitRefusal::Concurrent { .. }) => "concurrent",
        Admission::Refused(LimitRefusal::Rate { .. }) => "rate",
        Admission::Unavailable => "unavailable",
    }
}

/// Polls `admit` until it admits, for at most `within`; returns how long it took.
async fn admitted_within(
    g: &RedisState,
    client: IpAddr,
    limits: &Limits,
    within: Duration,
) -> (Duration, InFlightGuard) {
    let start = Instant::now();
    loop {
        if let Some(guard) = admitted(g.admit(client, limits).await) {
            return (start.elapsed(), guard);
        }
        assert!(start.elapsed() < within, "not admitted within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const REG: Regulation = Regulation {
    max_failures: 3,
    find_time: Duration::from_secs(60),
    ban_time: Duration::from_secs(120),
};

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_one_rate_limit() {
    let server = RedisServer::start();
    let (a, b) = (
        gateway(options(&server)).await,
        gateway(options(&server)).await,
    );
    // 10 per 100 s: the burst is 10, then one per 10 s, so nothing refills during the test.
    let limits = rate(10, Duration::from_secs(100));
    let client = ip("198.51.100.7");
    let mut outcomes = Vec::new();
    for i in 0..30 {
        let g = if i % 2 == 0 { &a } else { &b };
        outcomes.push(g.admit(client, &limits).await);
    }
    let kinds: Vec<_> = outcomes.iter().map(kind).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "admitted").count(),
        10,
        "{kinds:?}"
    );
    assert!(
        kinds[..10].iter().all(|k| *k == "admitted") && kinds[10..].iter().all(|k| *k == "rate"),
        "{kinds:?}"
    );
    // Refusals counted nothing: the wait is the same for every refused request.
    for o in outcomes.into_iter().skip(10) {
        let Some(LimitRefusal::Rate { retry_after }) = refusal(o) else {
            unreachable!()
        };
        assert!(
            retry_after > Duration::from_secs(9) && retry_after <= Duration::from_secs(10),
            "{retry_after:?}"
        );
    }
    // Another client and the IPv4-mapped form: one client is one client.
    assert!(admitted(a.admit(ip("198.51.100.8"), &limits).await).is_some());
    assert_eq!(
        kind(&b.admit(ip("::ffff:198.51.100.7"), &limits).await),
        "rate"
    );

    // Concurrent bursts from both instances at once: still exactly the limit.
    let (a, b) = (Arc::new(a), Arc::new(b));
    let client = ip("2001:db8::7");
    let mut tasks = Vec::new();
    for i in 0..40 {
        let g = Arc::clone(if i % 2 == 0 { &a } else { &b });
        tasks.push(tokio::spawn(async move {
            admitted(g.admit(client, &limits).await).is_some()
        }));
    }
    let mut n = 0;
    for t in tasks {
        n += usize::from(t.await.unwrap());
    }
    assert_eq!(n, 10);

    // The key sits under the prefix and expires once the client has recovered.
    let mut raw = server.raw().await;
    let ttl: i64 = redis::cmd("PTTL")
        .arg("portcullis:rate:198.51.100.7")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(ttl > 90_000 && ttl <= 100_000, "{ttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcra_refills_one_request_per_emission_interval() {
    let server = RedisServer::start();
    let (a, b) = (
        gateway(options(&server)).await,
        gateway(options(&server)).await,
    );
    // A burst of 4, then one per 250 ms.
    let limits = rate(4, Duration::from_secs(1));
    let client = ip("203.0.113.50");
    for g in [&a, &b, &a, &b] {
        assert!(admitted(g.admit(client, &limits).await).is_some());
    }
    let Some(LimitRefusal::Rate { retry_after }) = refusal(a.admit(client, &limits).await) else {
        panic!("not refused")
    };
    assert!(
        retry_after > Duration::from_millis(150) && retry_after <= Duration::from_millis(250),
        "{retry_after:?}"
    );
    tokio::time::sleep(retry_after + Duration::from_millis(10)).await;
    assert!(admitted(b.admit(client, &limits).await).is_some());
    assert_eq!(kind(&a.admit(client, &limits).await), "rate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_one_concurrency_limit() {
    let server = RedisServer::start();
    let (a, b) = (
        Arc::new(gateway(options(&server)).await),
        Arc::new(gateway(options(&server)).await),
    );
    let limits = concurrent(3);
    let client = ip("192.0.2.33");

    // 40 requests at once through both instances: exactly 3 in flight.
    let mut tasks = Vec::new();
    for i in 0..40 {
        let g = Arc::clone(if i % 2 == 0 { &a } else { &b });
        tasks.push(tokio::spawn(async move {
            admitted(g.admit(client, &limits).await)
        }));
    }
    let mut guards = Vec::new();
    for t in tasks {
        guards.extend(t.await.unwrap());
    }
    assert_eq!(guards.len(), 3);
    assert_eq!(
        refusal(a.admit(client, &limits).await),
        Some(LimitRefusal::Concurrent { max: 3 })
    );
    assert_eq!(
        refusal(b.admit(client, &limits).await),
        Some(LimitRefusal::Concurrent { max: 3 })
    );

    // Dropping a guard never waits for Redis; the slot comes back to either instance.
    let start = Instant::now();
    drop(guards.pop());
    assert!(start.elapsed() < Duration::from_millis(20));
    let (_, g) = admitted_within(&b, client, &limits, Duration::from_secs(2)).await;
    guards.push(g);
    assert_eq!(kind(&a.admit(client, &limits).await), "concurrent");

    // A concurrency refusal does not use up the rate, and a rate refusal takes no slot.
    let both = Limits {
        max_concurrent: Some(3),
        rate: Some(Rate {
            max_requests: 1,
            interval: Duration::from_secs(60),
        }),
    };
    for _ in 0..5 {
        assert_eq!(kind(&a.admit(client, &both).await), "concurrent");
    }
    drop(guards.pop());
    let (_, g) = admitted_within(&a, client, &both, Duration::from_secs(2)).await;
    drop(g);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(kind(&b.admit(client, &both).await), "rate");
    let mut raw = server.raw().await;
    let n: u64 = redis::cmd("ZCARD")
        .arg("portcullis:inflight:192.0.2.33")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(n, 2, "the two guards still held");
    drop(guards);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let n: u64 = redis::cmd("ZCARD")
        .arg("portcullis:inflight:192.0.2.33")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(n, 0, "all released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_instance_lease_expires() {
    let server = RedisServer::start();
    let lease = Duration::from_millis(300);
    let crashed = gateway(RedisOptions {
        lease,
        ..options(&server)
    })
    .await;
    let survivor = gateway(options(&server)).await;
    let limits = concurrent(1);
    let client = ip("192.0.2.77");

    let taken = Instant::now();
    std::mem::forget(admitted(crashed.admit(client, &limits).await).unwrap());
    // The instance dies: its renewal task stops, its guard is never dropped.
    drop(crashed);
    assert_eq!(kind(&survivor.admit(client, &limits).await), "concurrent");
    admitted_within(&survivor, client, &limits, Duration::from_secs(3)).await;
    let freed = taken.elapsed();
    assert!(
        freed >= Duration::from_millis(250),
        "the lease ended early: {freed:?}"
    );
    assert!(freed < Duration::from_secs(2), "{freed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_request_keeps_its_slot() {
    let server = RedisServer::start();
    let lease = Duration::from_millis(300);
    let a = gateway(RedisOptions {
        lease,
        ..options(&server)
    })
    .await;
    let b = gateway(options(&server)).await;
    let limits = concurrent(1);
    let client = ip("192.0.2.78");

    let guard = admitted(a.admit(client, &limits).await).unwrap();
    // Four leases long: renewals keep it.
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(kind(&b.admit(client, &limits).await), "concurrent");
    }
    drop(guard);
    admitted_within(&b, client, &limits, Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_nonce_counts_are_shared_once_each_in_any_order() {
    let server = RedisServer::start();
    let (a, b) = (
        gateway(options(&server)).await,
        gateway(options(&server)).await,
    );
    let ttl = Duration::from_secs(60);
    assert!(a.nonce_count("n1", 2, ttl).await.unwrap());
    assert!(
        b.nonce_count("n1", 1, ttl).await.unwrap(),
        "out of order, once"
    );
    assert!(
        !a.nonce_count("n1", 1, ttl).await.unwrap(),
        "replayed on the other instance"
    );
    assert!(!b.nonce_count("n1", 2, ttl).await.unwrap());
    assert!(a.nonce_count("n1", 500, ttl).await.unwrap());
    assert!(
        !b.nonce_count("n1", 372, ttl).await.unwrap(),
        "a window below the highest"
    );
    assert!(b.nonce_count("n1", 373, ttl).await.unwrap());
    assert!(
        a.nonce_count("n2", 1, ttl).await.unwrap(),
        "counts are per nonce"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bans_are_shared_listed_and_cleared_across_instances() {
    let server = RedisServer::start();
    let (a, b) = (
        gateway(options(&server)).await,
        gateway(options(&server)).await,
    );
    let mapped = ip("::ffff:198.51.100.4");
    let addr = ip("198.51.100.4");

    assert!(
        a.record_failure(mapped, "alice", &REG)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        b.record_failure(addr, "alice", &REG)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(a.ban_for(addr, Some("alice")).await.unwrap(), None);
    let bans = b.record_failure(addr, "alice", &REG).await.unwrap();
    assert_eq!(bans.len(), 2);
    assert_eq!(bans[0].subject, BanSubject::Address(addr));
    assert_eq!(bans[1].subject, BanSubject::User("alice".into()));
    assert_eq!(bans[0].reason, "3 failed logons within 1m");
    assert_eq!(bans[0].remaining, Duration::from_secs(120));

    // Seen through the other instance: the address whoever it claims to be, the user anywhere.
    let ban = a.ban_for(mapped, Some("bob")).await.unwrap().unwrap();
    assert_eq!(ban.subject, BanSubject::Address(addr));
    assert_eq!(ban.reason, "3 failed logons within 1m");
    assert!(
        ban.remaining > Duration::from_secs(115) && ban.remaining <= Duration::from_secs(120),
        "{:?}",
        ban.remaining
    );
    let ban = a
        .ban_for(ip("2001:db8::9"), Some("alice"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ban.subject, BanSubject::User("alice".into()));
    assert_eq!(
        a.ban_for(ip("2001:db8::9"), Some("Alice")).await.unwrap(),
        None
    );
    assert_eq!(a.ban_for(ip("2001:db8::9"), None).await.unwrap(), None);

    // A success resets the address count only.
    for _ in 0..2 {
        assert!(
            a.record_failure(ip("10.0.0.1"), "carol", &REG)
                .await
                .unwrap()
                .is_empty()
        );
    }
    b.record_success(ip("10.0.0.1"), "carol").await.unwrap();
    let bans = a
        .record_failure(ip("10.0.0.1"), "carol", &REG)
        .await
        .unwrap();
    assert_eq!(
        bans.iter().map(|b| b.subject.clone()).collect::<Vec<_>>(),
        [BanSubject::User("carol".into())]
    );
    // Failures from many addresses against one user name, and one address against many names.
    for (i, user) in ["u1", "u2", "u3"].into_iter().enumerate() {
        let bans = b
            .record_failure(ip("2001:db8::1"), user, &REG)
            .await
            .unwrap();
        assert_eq!(bans.len(), usize::from(i == 2));
    }

    let listed: Vec<String> = b
        .list_bans()
        .await
        .unwrap()
        .iter()
        .map(|b| b.subject.to_string())
        .collect();
    assert_eq!(
        listed,
        [
            "address 198.51.100.4",
            "address 2001:db8::1",
            "user alice",
            "user carol"
        ]
    );

    assert_eq!(b.clear_bans(Some("::ffff:198.51.100.4")).await.unwrap(), 1);
    assert_eq!(a.clear_bans(Some("198.51.100.4")).await.unwrap(), 0);
    assert_eq!(a.ban_for(addr, None).await.unwrap(), None);
    assert_eq!(
        a.ban_for(addr, Some("alice"))
            .await
            .unwrap()
            .unwrap()
            .subject,
        BanSubject::User("alice".into())
    );
    assert_eq!(a.clear_bans(Some("alice")).await.unwrap(), 1);
    assert_eq!(b.ban_for(addr, Some("alice")).await.unwrap(), None);
    assert_eq!(a.clear_bans(Some("nobody")).await.unwrap(), 0);
    assert_eq!(b.clear_bans(None).await.unwrap(), 2);
    assert!(a.list_bans().await.unwrap().is_empty());

    // The hash behind a ban is readable by people, and expires with the ban.
    for _ in 0..3 {
        a.record_failure(ip("192.0.2.200"), "dave", &REG)
            .await
            .unwrap();
    }
    let mut raw = server.raw().await;
    let (reason, until_ms): (String, u64) = redis::cmd("HMGET")
        .arg("portcullis:ban:addr:192.0.2.200")
        .arg("reason")
        .arg("until_ms")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(reason, "3 failed logons within 1m");
    assert!(until_ms > 1_600_000_000_000);
    let ttl: i64 = redis::cmd("PTTL")
        .arg("portcullis:ban:user:dave")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(ttl > 110_000 && ttl <= 120_000, "{ttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bans_expire_and_failures_age_out() {
    let server = RedisServer::start();
    let g = gateway(options(&server)).await;
    let short = Regulation {
        max_failures: 2,
        find_time: Duration::from_millis(300),
        ban_time: Duration::from_millis(400),
    };
    let client = ip("192.0.2.9");
    // Failures further apart than find_time never ban.
    for _ in 0..3 {
        assert!(
            g.record_failure(client, "erin", &short)
                .await
                .unwrap()
                .is_empty()
        );
        tokio::time::sleep(Duration::from_millis(350)).await;
    }
    assert!(g.list_bans().await.unwrap().is_empty());
    assert!(
        g.record_failure(client, "erin", &short)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        g.record_failure(client, "erin", &short)
            .await
            .unwrap()
            .len(),
        2
    );
    assert!(g.ban_for(client, None).await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(g.ban_for(client, Some("erin")).await.unwrap(), None);
    assert!(g.list_bans().await.unwrap().is_empty());
    assert_eq!(
        g.clear_bans(None).await.unwrap(),
        0,
        "expired bans are not lifted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_prefixes_keep_deployments_apart() {
    let server = RedisServer::start();
    let a = gateway(RedisOptions {
        key_prefix: "blue:".into(),
        ..options(&server)
    })
    .await;
    let b = gateway(RedisOptions {
        key_prefix: "green*:".into(),
        ..options(&server)
    })
    .await;
    let limits = rate(1, Duration::from_secs(60));
    let client = ip("192.0.2.10");
    assert!(admitted(a.admit(client, &limits).await).is_some());
    assert!(admitted(b.admit(client, &limits).await).is_some());
    for _ in 0..3 {
        a.record_failure(client, "frank", &REG).await.unwrap();
    }
    assert_eq!(a.list_bans().await.unwrap().len(), 2);
    assert!(b.list_bans().await.unwrap().is_empty());
    assert_eq!(b.clear_bans(None).await.unwrap(), 0);
    assert!(b.ban_for(client, Some("frank")).await.unwrap().is_none());
    assert_eq!(a.clear_bans(None).await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fails_closed_fast_then_recovers() {
    let mut server = RedisServer::start();
    let timeout = Duration::from_millis(100);
    let g = gateway(RedisOptions {
        timeout,
        ..options(&server)
    })
    .await;
    let limits = Limits {
        max_concurrent: Some(5),
        rate: Some(Rate {
            max_requests: 1000,
            interval: Duration::from_secs(1),
        }),
    };
    let client = ip("192.0.2.20");
    let held = admitted(g.admit(client, &limits).await).unwrap();
    assert!(g.is_available());

    server.kill();
    let mut opened_after = None;
    for i in 0..10 {
        let start = Instant::now();
        let outcome = g.admit(client, &limits).await;
        let took = start.elapsed();
        assert_eq!(kind(&outcome), "unavailable", "call {i}");
        assert!(took <= 3 * timeout, "call {i} stalled {took:?}");
        if !g.is_available() && opened_after.is_none() {
            opened_after = Some(i);
        } else if opened_after.is_some() {
            assert!(
                took < Duration::from_millis(50),
                "circuit open, yet call {i} took {took:?}"
            );
        }
    }
    assert!(
        opened_after.is_some_and(|i| i < 5),
        "the circuit never opened: {opened_after:?}"
    );
    let start = Instant::now();
    assert!(g.ban_for(client, Some("x")).await.is_err());
    assert!(g.record_failure(client, "x", &REG).await.is_err());
    assert!(g.record_success(client, "x").await.is_err());
    assert!(g.list_bans().await.is_err());
    assert!(g.clear_bans(None).await.is_err());
    assert!(
        start.elapsed() < Duration::from_millis(100),
        "{:?}",
        start.elapsed()
    );
    // Releasing during the outage never blocks.
    let start = Instant::now();
    drop(held);
    assert!(start.elapsed() < Duration::from_millis(20));

    server.restart();
    let (waited, guard) = admitted_within(&g, client, &limits, Duration::from_secs(10)).await;
    assert!(g.is_available());
    eprintln!("recovered {waited:?} after the restart");
    drop(guard);
    // The scripts were loaded again into the empty server, and bans work too.
    for _ in 0..3 {
        g.record_failure(client, "grace", &REG).await.unwrap();
    }
    assert!(g.ban_for(client, None).await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_costs_one_timeout_per_call_at_most() {
    let server = RedisServer::start();
    let timeout = Duration::from_millis(100);
    let g = gateway(RedisOptions {
        timeout,
        ..options(&server)
    })
    .await;
    let limits = concurrent(5);
    let client = ip("192.0.2.21");
    let held = admitted(g.admit(client, &limits).await).unwrap();

    // Connections stay open, nothing answers: only the timeout helps.
    server.freeze();
    for i in 0..6 {
        let start = Instant::now();
        assert_eq!(kind(&g.admit(client, &limits).await), "unavailable");
        let took = start.elapsed();
        assert!(took <= 3 * timeout, "call {i} stalled {took:?}");
    }
    assert!(!g.is_available());
    let start = Instant::now();
    assert!(g.ban_for(client, None).await.is_err());
    assert!(
        start.elapsed() < Duration::from_millis(50),
        "circuit open: {:?}",
        start.elapsed()
    );
    let start = Instant::now();
    drop(held);
    assert!(start.elapsed() < Duration::from_millis(20));

    server.thaw();
    let (_, guard) = admitted_within(&g, client, &limits, Duration::from_secs(10)).await;
    assert!(g.is_available());
    drop(guard);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fails_open_under_local_limits() {
    let mut server = RedisServer::start();
    let timeout = Duration::from_millis(100);
    let fallback = local();
    let g = RedisState::connect(
        RedisOptions {
            timeout,
            fail_open: true,
            ..options(&server)
        },
        Arc::clone(&fallback),
    )
    .await
    .unwrap();
    server.kill();

    // Local rate limit: exactly 3, whatever the state of the circuit.
    let limits = rate(3, Duration::from_secs(100));
    let client = ip("192.0.2.30");
    let mut kinds = Vec::new();
    for _ in 0..8 {
        let start = Instant::now();
        kinds.push(kind(&g.admit(client, &limits).await));
        assert!(start.elapsed() <= 3 * timeout, "{:?}", start.elapsed());
    }
    assert_eq!(
        kinds,
        [
            "admitted", "admitted", "admitted", "rate", "rate", "rate", "rate", "rate"
        ]
    );
    assert!(!g.is_available());

    // Local concurrency limit.
    let limits = concurrent(2);
    let g1 = admitted(g.admit(client, &limits).await).unwrap();
    let _g2 = admitted(g.admit(client, &limits).await).unwrap();
    assert_eq!(kind(&g.admit(client, &limits).await), "concurrent");
    drop(g1);
    assert_eq!(kind(&g.admit(client, &limits).await), "admitted");

    // Local logon regulation.
    for _ in 0..2 {
        assert!(
            g.record_failure(client, "heidi", &REG)
                .await
                .unwrap()
                .is_empty()
        );
    }
    assert_eq!(
        g.record_failure(client, "heidi", &REG).await.unwrap().len(),
        2
    );
    assert!(g.ban_for(client, None).await.unwrap().is_some());
    assert!(fallback.ban_for(client, None).is_some());
    g.record_success(client, "heidi").await.unwrap();
    // Operator views do not pretend: Redis is down.
    assert!(g.list_bans().await.is_err());

    // Back to shared state once Redis is back (the local ban is not in Redis).
    server.restart();
    let start = Instant::now();
    while !g.is_available() {
        assert!(start.elapsed() < Duration::from_secs(10), "no recovery");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(g.ban_for(client, None).await.unwrap(), None);
    // Clearing bans through Redis also lifts the local ones from the outage.
    assert_eq!(g.clear_bans(None).await.unwrap(), 0);
    assert!(fallback.ban_for(client, None).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_is_a_clear_startup_error() {
    let port = free_port();
    let start = Instant::now();
    let err = RedisState::connect(
        RedisOptions::new(format!("redis://:s3cret@127.0.0.1:{port}/0")),
        local(),
    )
    .await
    .unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(err.contains("Redis"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");

    let err = RedisState::connect(RedisOptions::new("redis://:s3cret@[bad"), local())
        .await
        .unwrap_err();
    assert!(!err.contains("s3cret"), "{err}");
}
