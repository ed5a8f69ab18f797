//! Issue 11, items 2, 6, 8, 9, 12: what a password guesser can do to everyone else — unbounded
//! hashing, a queue that makes valid users wait, IPv6 address hopping, locking the real user
//! out, forging log lines through the form, telling second-factor users apart by time, and
//! piling up sessions. Real binary, real clients (several loopback source addresses).

mod util;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use util::browser::Browser;
use util::portal::{portal_config, start_portal};
use util::*;

/// A client whose connections come from `source` (any 127.0.0.0/8 address is ours).
fn client_from(source: IpAddr) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .local_address(source)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn metric(admin: SocketAddr, name: &str) -> f64 {
    let text = runtime().block_on(async {
        client()
            .get(format!("http://{admin}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A Basic site with `alice` (bcrypt cost 8: each check costs real time) and an admin
/// listener.
fn basic_site(auth_extra: &str, extra: &str) -> (TestUpstream, Gateway, SocketAddr) {
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    htpasswd(
        &dir.path().join("users.htpasswd"),
        &["-B", "-C", "8"],
        "alice",
        "right-pw",
    );
    let upstream = TestUpstream::start();
    let config = SiteConfig::new()
        .auth("cache_ttl = \"0s\"")
        .auth(auth_extra)
        .section("admin", &format!("listen = \"{admin}\""))
        .raw(extra)
        .build();
    let gw = Gateway::start_in(dir, &config, upstream.addr);
    wait_for_port(admin, Duration::from_secs(10));
    (upstream, gw, admin)
}

/// Form and Basic sign-in over `sqlite:users.db`, an admin listener on `admin`, no access log.
fn sqlite_site(admin: SocketAddr) -> SiteConfig {
    SiteConfig::new()
        .auth("schemes = [\"form\", \"basic\"]")
        .auth("users = \"sqlite:users.db\"")
        .without("log", "access")
        .section("admin", &format!("listen = \"{admin}\""))
}

#[test]
fn a_huge_password_is_refused_without_hashing() {
    let (_up, gw, admin) = basic_site("", "");
    let before = metric(admin, "portcullis_password_hash_checks_total");
    let huge = "x".repeat(60_000);
    runtime().block_on(async {
        let r = client()
            .get(gw.url("/"))
            .basic_auth("alice", Some(&huge))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    });
    assert_eq!(
        metric(admin, "portcullis_password_hash_checks_total"),
        before
    );
    let log = eventually(Duration::from_secs(5), "the refusal in the log", || {
        std::fs::read_to_string(gw.path("access.log"))
            .ok()
            .filter(|l| l.contains(" 401 1 "))
    });
    assert!(log.contains(" alice "), "{log}");
}

#[test]
fn a_valid_user_gets_in_during_a_flood_of_wrong_passwords() {
    // One hashing worker's worth of queue at most: anything that would wait longer than the
    // timeout is refused at once with 503 verifier_busy.
    let (_up, gw, admin) = basic_site(
        "verify_queue_timeout = \"1s\"",
        "[logon]\nenabled = false\n",
    );
    let url = gw.url("/");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rt = runtime();
    // One sign-in on a quiet gateway: what a password check costs on this machine (a debug
    // build on a busy CI machine is slow), the yardstick for the sign-in during the flood.
    let solo = rt.block_on(async {
        let started = Instant::now();
        let r = client_from(IpAddr::from([127, 0, 2, 2]))
            .get(&url)
            .basic_auth("alice", Some("right-pw"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        started.elapsed()
    });
    let busy = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    // 48 guessers on 48 addresses, each sending distinct wrong passwords back to back.
    let guessers: Vec<_> = (0..48u8)
        .map(|i| {
            let (url, stop, busy) = (url.clone(), stop.clone(), busy.clone());
            rt.spawn(async move {
                let c = client_from(IpAddr::from([127, 0, 1, 10 + i]));
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    let r = c
                        .get(&url)
                        .basic_auth(format!("user{i}"), Some(format!("guess-{n}")))
                        .send()
                        .await;
                    if let Ok(r) = r
                        && r.status() == 503
                    {
                        assert!(r.headers().contains_key("retry-after"));
                        busy.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    // The flood is on: checks are queued and some are already refused as busy.
    eventually(
        Duration::from_secs(20),
        "the flood to fill the queue",
        || (metric(admin, "portcullis_password_hash_checks_total") > 48.0).then_some(()),
    );
    let took = rt.block_on(async {
        let c = client_from(IpAddr::from([127, 0, 2, 1]));
        let started = Instant::now();
        let r = c
            .get(&url)
            .basic_auth("alice", Some("right-pw"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            200,
            "the valid user was refused during the flood"
        );
        started.elapsed()
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for g in guessers {
        let _ = rt.block_on(g);
    }
    assert!(
        busy.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "the flood never overflowed the queue"
    );
    eprintln!("the valid user signed in during the flood in {took:?} (alone: {solo:?})");
    // At most the checks already running ahead of her and her own: never the guessers' queue.
    assert!(
        took < Duration::from_secs(1).max(solo * 4),
        "the valid user waited {took:?} (a check alone takes {solo:?})"
    );
    let log = std::fs::read_to_string(gw.path("access.log")).unwrap();
    assert!(log.contains(" 503 0 "), "verifier_busy is logged");
}

#[test]
fn ipv6_clients_are_counted_per_64_and_the_real_user_is_not_locked_out() {
    let upstream = TestUpstream::start();
    let dir = dir_with_user("alice", "right-pw");
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    // A trusted proxy on 127.0.0.1 names the clients (X-Forwarded-For), so one test can speak
    // from many IPv6 addresses.
    let gw = Gateway::start_in(
        dir,
        &SiteConfig::new()
            .server("trusted_proxies = [\"127.0.0.1\"]")
            .without("log", "access")
            .section("logon", "max_failures = 3")
            .section("admin", &format!("listen = \"{admin}\""))
            .build(),
        upstream.addr,
    );
    let ask = |from: &str, user: &str, pw: &str| {
        runtime().block_on(async {
            client()
                .get(gw.url("/"))
                .header("x-forwarded-for", from)
                .basic_auth(user, Some(pw))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    // alice signs in from her own address first.
    assert_eq!(ask("2001:db8:a::1", "alice", "right-pw"), 200);
    // A guesser hops through one /64: three failures from three addresses ban the /64.
    for i in 1..=3 {
        assert_eq!(ask(&format!("2001:db8:bad:1::{i}"), "mallory", "x"), 401);
    }
    assert_eq!(
        ask("2001:db8:bad:1::99", "mallory", "x"),
        403,
        "a new address in the banned /64"
    );
    // Guesses at alice's name from many networks lock the name…
    for i in 1..=3 {
        assert_eq!(ask(&format!("2001:db8:{i}::1"), "alice", "wrong"), 401);
    }
    assert_eq!(
        ask("2001:db8:99::1", "alice", "right-pw"),
        403,
        "the name is locked"
    );
    // …but not for the address alice signed in from.
    assert_eq!(ask("2001:db8:a::1", "alice", "right-pw"), 200);
}

#[test]
fn the_form_refuses_a_user_name_with_control_characters() {
    let (_up, gw) = start_portal(&portal_config().build());
    runtime().block_on(async {
        let mut b = Browser::new(&gw.url(""));
        let r = b
            .sign_in("alice\nFORGED 200 admin", "wonderland-42", "/")
            .await;
        assert_eq!(r.status, 400, "{}", r.body);
    });
    std::thread::sleep(Duration::from_millis(300));
    let log = std::fs::read_to_string(gw.path("access.log")).unwrap_or_default()
        + &std::fs::read_to_string(gw.path("audit.log")).unwrap_or_default()
        + &gw.stderr();
    assert!(!log.lines().any(|l| l.starts_with("FORGED")), "{log}");
}

#[test]
fn a_second_factor_user_refused_basic_costs_a_password_check_like_anyone() {
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = sqlite_site(admin).build();
    let upstream = TestUpstream::start();
    let gw = Gateway::start(&config, upstream.addr, &[]);
    wait_for_port(admin, Duration::from_secs(10));
    let users = |args: &[&str]| {
        let mut child = std::process::Command::new(BIN)
            .arg("users")
            .args(args)
            .arg("-c")
            .arg(gw.path("portcullis.toml"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"secret-pw\nsecret-pw\n")
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    users(&["add", "carol"]);
    users(&["totp", "enable", "carol"]);
    let basic = |password: &str| {
        runtime().block_on(async {
            client()
                .get(gw.url("/"))
                .basic_auth("carol", Some(password))
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    let hashes = || metric(admin, "portcullis_password_hash_checks_total");
    // The right password and four wrong ones (five: the lockout's default max_failures): each
    // is refused, and each new one is checked by a hash (padded to the timing floor), the right
    // one too — it is never answered from the verification cache (on here), which would answer
    // it at once after carol's own sign-in and so tell a guesser that it is right.
    for (n, password) in ["secret-pw", "guess-1", "guess-2", "guess-3", "guess-4"]
        .into_iter()
        .enumerate()
    {
        let before = hashes();
        assert_eq!(basic(password), 401, "attempt {n}");
        assert_eq!(hashes(), before + 1.0, "attempt {n}");
    }
    // They counted as failures: locked out now, like any guesser, before any hash.
    let before = hashes();
    assert_eq!(basic("secret-pw"), 403);
    assert_eq!(hashes(), before);
}

/// A repeated guess costs a second-factor user what it costs anyone: answered without a new
/// hash (as the verification cache answers a plain user's repeated wrong password), whether it
/// is right or wrong — a repeat answered slowly only for second-factor users would tell them
/// apart.
#[test]
fn a_repeated_guess_at_a_second_factor_user_is_answered_like_anyones() {
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = sqlite_site(admin)
        .section("logon", "enabled = false")
        .build();
    let upstream = TestUpstream::start();
    let gw = Gateway::start(&config, upstream.addr, &[]);
    wait_for_port(admin, Duration::from_secs(10));
    for (args, input) in [
        (&["add", "carol"][..], &b"secret-pw\nsecret-pw\n"[..]),
        (&["add", "dan"][..], &b"other-pw-1\nother-pw-1\n"[..]),
        (&["totp", "enable", "carol"][..], &b""[..]),
    ] {
        let mut child = std::process::Command::new(BIN)
            .arg("users")
            .args(args)
            .arg("-c")
            .arg(gw.path("portcullis.toml"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(input).unwrap();
        assert!(child.wait().unwrap().success(), "users {args:?}");
    }
    let hashes = || metric(admin, "portcullis_password_hash_checks_total");
    let basic = |user: &str, password: &str| {
        runtime().block_on(async {
            client()
                .get(gw.url("/"))
                .basic_auth(user, Some(password))
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    for (user, password) in [
        ("dan", "wrong-1"),
        ("carol", "wrong-1"),
        ("carol", "secret-pw"),
    ] {
        assert_eq!(basic(user, password), 401);
        let before = hashes();
        assert_eq!(basic(user, password), 401, "{user} again");
        assert_eq!(hashes(), before, "{user}: a repeat was hashed again");
    }
}

#[test]
fn a_user_keeps_at_most_max_sessions_per_user() {
    let config = portal_config()
        .section("portal", "max_sessions_per_user = 2")
        .build();
    let (_up, gw) = start_portal(&config);
    runtime().block_on(async {
        let mut browsers = Vec::new();
        for _ in 0..3 {
            let mut b = Browser::new(&gw.url(""));
            let r = b.sign_in("bob", "builder-of-things", "/").await;
            assert_eq!(r.status, 303, "{}", r.body);
            browsers.push(b);
        }
        // The first (oldest) session ended; the two newest go on.
        assert_eq!(browsers[0].get("/x").await.status, 302);
        assert_eq!(browsers[1].get("/x").await.status, 200);
        assert_eq!(browsers[2].get("/x").await.status, 200);
    });
}
