//! Several instances sharing limits and bans through a real Redis, and what happens when Redis
//! goes away and comes back.

mod util;

use std::process::Command;
use std::time::Duration;

use util::*;

/// `extra` may begin with keys of `[state]` (the last table before it).
fn gateway(redis: &RedisServer, upstream: &TestUpstream, extra: &str) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    htpasswd(
        &dir.path().join("users.htpasswd"),
        &["-B", "-C", "4"],
        "alice",
        "pw",
    );
    let config = SiteConfig::new()
        .auth("public = [\"/public/**\"]")
        .without("log", "access")
        .section("state", &format!("backend = \"{}\"", redis.url()))
        .section("state", "timeout = \"2s\"")
        .raw(extra)
        .build();
    Gateway::start_in(dir, &config, upstream.addr)
}

async fn status(c: &reqwest::Client, url: &str) -> u16 {
    c.get(url)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[test]
fn two_instances_enforce_one_rate_limit_and_share_bans() {
    let redis = RedisServer::start();
    let up = TestUpstream::start();
    let extra = "\n[dynamic]\ndeny_by_rate = { enabled = true, max_requests = 4, interval = \"1h\" }\n\n[logon]\nmax_failures = 2\nban_time = \"1h\"";
    let (a, b) = (gateway(&redis, &up, extra), gateway(&redis, &up, extra));
    runtime().block_on(async {
        let c = client();
        let mut ok = 0;
        for i in 0..8 {
            let gw = if i % 2 == 0 { &a } else { &b };
            if status(&c, &gw.url("/public/x")).await == 200 {
                ok += 1;
            }
        }
        assert_eq!(ok, 4, "one limit for both instances");
    });
    // Failed logons on A ban the user on B too (rate-limited requests don't get that far, so use a
    // fresh limit-free pair).
    let (a, b) = (
        gateway(
            &redis,
            &up,
            "\n[logon]\nmax_failures = 2\nban_time = \"1h\"",
        ),
        gateway(
            &redis,
            &up,
            "\n[logon]\nmax_failures = 2\nban_time = \"1h\"",
        ),
    );
    runtime().block_on(async {
        let c = client();
        for _ in 0..2 {
            let r = c
                .get(a.url("/p"))
                .basic_auth("alice", Some("bad"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 401);
        }
        let r = c
            .get(b.url("/p"))
            .basic_auth("alice", Some("pw"))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        let p: serde_json::Value = r.json().await.unwrap();
        assert_eq!(p["substatus"], 505);
    });
    let out = Command::new(BIN)
        .args(["bans", "list", "-c"])
        .arg(b.path("portcullis.toml"))
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && listed.contains("alice"),
        "{listed} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(BIN)
        .args(["bans", "clear", "-c"])
        .arg(a.path("portcullis.toml"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("ban(s) lifted"));
    runtime().block_on(async {
        let r = client()
            .get(b.url("/p"))
            .basic_auth("alice", Some("pw"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    });
}

#[test]
fn redis_outage_follows_on_backend_error_and_recovers() {
    let mut redis = RedisServer::start();
    let up = TestUpstream::start();
    let limits =
        "\n[dynamic]\ndeny_by_rate = { enabled = true, max_requests = 1000, interval = \"1s\" }";
    let closed = gateway(
        &redis,
        &up,
        &format!("on_backend_error = \"closed\"\n{limits}"),
    );
    let open = gateway(
        &redis,
        &up,
        &format!("on_backend_error = \"open\"\n{limits}"),
    );
    let rt = runtime();
    rt.block_on(async {
        let c = client();
        assert_eq!(status(&c, &closed.url("/public/x")).await, 200);
        assert_eq!(status(&c, &open.url("/public/x")).await, 200);
    });
    redis.stop();
    rt.block_on(async {
        let c = client();
        let r = c
            .get(closed.url("/public/x"))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503);
        let p: serde_json::Value = r.json().await.unwrap();
        assert_eq!(p["reason"], "state_unavailable");
        assert_eq!(
            status(&c, &open.url("/public/x")).await,
            200,
            "fail open: let through under local limits"
        );
    });
    redis.restart();
    rt.block_on(async {
        let c = client();
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while status(&c, &closed.url("/public/x")).await != 200 {
            assert!(
                std::time::Instant::now() < deadline,
                "no recovery after Redis came back"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

#[test]
fn unreachable_redis_at_startup_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("users.htpasswd"), "").unwrap();
    let port = free_port();
    std::fs::write(
        dir.path().join("portcullis.toml"),
        format!("[server]\nlisten = \"127.0.0.1:{}\"\nupstream = \"http://127.0.0.1:9\"\n[auth]\nusers = \"users.htpasswd\"\n[state]\nbackend = \"redis://127.0.0.1:{port}\"\n", free_port()),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["serve", "-c"])
        .arg(dir.path().join("portcullis.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
}
