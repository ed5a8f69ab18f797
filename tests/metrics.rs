//! `GET /metrics` on the admin listener end to end: the real binary answers real requests, the
//! scrape shows them with the contract's words as labels, and Prometheus's own `promtool`
//! accepts the exposition.

mod util;

use std::io::Write;
use std::process::{Command, Stdio};

use util::*;

const PW: &str = "right-pw";

fn start(extra: &str) -> (TestUpstream, Gateway, u16) {
    let upstream = TestUpstream::start();
    let dir = dir_with_user("alice", PW);
    let admin = free_port();
    let config = SiteConfig::new()
        .without("log", "access")
        .section("admin", &format!("listen = \"127.0.0.1:{admin}\""))
        .raw(extra)
        .build();
    let gw = Gateway::start_in(dir, &config, upstream.addr);
    wait_for_port(
        format!("127.0.0.1:{admin}").parse().unwrap(),
        std::time::Duration::from_secs(10),
    );
    (upstream, gw, admin)
}

async fn status(c: &reqwest::Client, url: &str, creds: Option<(&str, &str)>) -> u16 {
    let mut req = c.get(url);
    if let Some((user, pw)) = creds {
        req = req.basic_auth(user, Some(pw));
    }
    req.send().await.unwrap().status().as_u16()
}

async fn scrape(admin: u16, accept: Option<&str>) -> (String, String) {
    let mut req = client().get(format!("http://127.0.0.1:{admin}/metrics"));
    if let Some(accept) = accept {
        req = req.header("accept", accept);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200);
    let content_type = r.headers()["content-type"].to_str().unwrap().to_owned();
    (content_type, r.text().await.unwrap())
}

/// The value of the sample written exactly as `series` (name and labels), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.split(' ').next().unwrap().parse().unwrap())
}

#[track_caller]
fn assert_sample(text: &str, series: &str, expected: f64) {
    assert_eq!(
        sample(text, series),
        Some(expected),
        "{series} in the scrape:\n{text}"
    );
}

/// Runs `promtool check metrics` on `text` (stdin); returns its exit status and output.
fn promtool_check(text: &str) -> (bool, String) {
    let tool = which("promtool").expect(
        "the metrics test needs Prometheus's promtool (Debian package prometheus): run scripts/test",
    );
    let mut child = Command::new(tool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

#[test]
fn requests_refusals_and_sign_ins_are_counted_with_the_contract_labels_and_promtool_accepts_them() {
    let (_up, gw, admin) = start("");
    runtime().block_on(async {
        let c = client();
        let url = gw.url("/app");
        assert_eq!(status(&c, &url, Some(("alice", PW))).await, 200);
        assert_eq!(status(&c, &url, None).await, 401);
        assert_eq!(status(&c, &url, Some(("alice", "wrong"))).await, 401);

        let (content_type, text) = scrape(admin, None).await;
        assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
        for (series, value) in [
            (
                r#"portcullis_requests_total{status="200",substatus="0",reason="none"}"#,
                1.0,
            ),
            (
                r#"portcullis_requests_total{status="401",substatus="2",reason="no_credentials"}"#,
                1.0,
            ),
            (
                r#"portcullis_requests_total{status="401",substatus="1",reason="logon_failed"}"#,
                1.0,
            ),
            (
                r#"portcullis_refusals_total{phase="authenticate",reason="no_credentials"}"#,
                1.0,
            ),
            (
                r#"portcullis_refusals_total{phase="authenticate",reason="logon_failed"}"#,
                1.0,
            ),
            (
                r#"portcullis_auth_total{scheme="basic",outcome="accepted"}"#,
                1.0,
            ),
            (
                r#"portcullis_auth_total{scheme="basic",outcome="refused"}"#,
                1.0,
            ),
            (
                r#"portcullis_auth_total{scheme="basic",outcome="locked_out"}"#,
                0.0,
            ),
            ("portcullis_password_hash_checks_total", 2.0),
            ("portcullis_auth_cache_hits_total", 0.0),
            ("portcullis_upstream_duration_seconds_count", 1.0),
            (
                r#"portcullis_upstream_duration_seconds_bucket{le="+Inf"}"#,
                1.0,
            ),
            ("portcullis_gateway_overhead_seconds_count", 1.0),
            // Logon lockout is on by default: a ban check and an outcome per sign-in.
            (
                r#"portcullis_state_backend_calls_total{backend="memory",result="ok"}"#,
                4.0,
            ),
            (
                r#"portcullis_state_backend_available{backend="memory"}"#,
                1.0,
            ),
            ("portcullis_bans_active", 0.0),
            ("portcullis_limiter_clients", 0.0),
            (r#"portcullis_config_reloads_total{result="accepted"}"#, 0.0),
            (r#"portcullis_config_reloads_total{result="refused"}"#, 0.0),
            ("portcullis_config_last_reload_success", 1.0),
            ("portcullis_access_log_dropped_total", 0.0),
            ("portcullis_redis_round_trips_total", 0.0),
        ] {
            assert_sample(&text, series, value);
        }
        assert!(
            text.contains(&format!(
                "portcullis_build_info{{version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            )),
            "{text}"
        );
        let reloaded = sample(&text, "portcullis_config_last_reload_timestamp_seconds").unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            (now - 120.0..=now + 1.0).contains(&reloaded),
            "{reloaded} vs {now}"
        );
        let (ok, said) = promtool_check(&text);
        assert!(
            ok,
            "promtool check metrics refused the scrape: {said}\n{text}"
        );

        // The same credentials again come from the cache.
        assert_eq!(status(&c, &url, Some(("alice", PW))).await, 200);
        let (_, text) = scrape(admin, None).await;
        assert_sample(&text, "portcullis_auth_cache_hits_total", 1.0);
        assert_sample(&text, "portcullis_password_hash_checks_total", 2.0);
        assert_sample(
            &text,
            r#"portcullis_requests_total{status="200",substatus="0",reason="none"}"#,
            2.0,
        );
        assert_sample(&text, "portcullis_upstream_duration_seconds_count", 2.0);
    });
}

#[test]
fn openmetrics_is_served_when_asked_for() {
    let (_up, gw, admin) = start("");
    runtime().block_on(async {
        assert_eq!(status(&client(), &gw.url("/app"), None).await, 401);
        let (content_type, text) = scrape(
            admin,
            Some("application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.1"),
        )
        .await;
        assert_eq!(
            content_type,
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_sample(
            &text,
            r#"portcullis_requests_total{status="401",substatus="2",reason="no_credentials"}"#,
            1.0,
        );
        assert!(
            text.contains("# UNIT portcullis_upstream_duration_seconds seconds"),
            "{text}"
        );
    });
}

#[test]
fn lockouts_bans_limits_and_ip_refusals_show_up() {
    let (_up, gw, admin) = start(
        r#"
[logon]
max_failures = 2
find_time = "10m"
ban_time = "1h"

[dynamic]
deny_by_rate = { enabled = true, max_requests = 100, interval = "1m" }
"#,
    );
    runtime().block_on(async {
        let c = client();
        let url = gw.url("/app");
        for _ in 0..2 {
            assert_eq!(status(&c, &url, Some(("alice", "guess"))).await, 401);
        }
        assert_eq!(status(&c, &url, Some(("alice", PW))).await, 403);
        let (_, text) = scrape(admin, None).await;
        for (series, value) in [
            (
                r#"portcullis_auth_total{scheme="basic",outcome="refused"}"#,
                2.0,
            ),
            (
                r#"portcullis_auth_total{scheme="basic",outcome="locked_out"}"#,
                1.0,
            ),
            (
                r#"portcullis_requests_total{status="403",substatus="505",reason="locked_out"}"#,
                1.0,
            ),
            (
                r#"portcullis_refusals_total{phase="authenticate",reason="locked_out"}"#,
                1.0,
            ),
            // The address and the user name.
            ("portcullis_bans_active", 2.0),
            ("portcullis_limiter_clients", 1.0),
            // 3 admissions, 3 ban checks, 2 failures recorded.
            (
                r#"portcullis_state_backend_calls_total{backend="memory",result="ok"}"#,
                8.0,
            ),
            ("portcullis_upstream_duration_seconds_count", 0.0),
        ] {
            assert_sample(&text, series, value);
        }
        let (ok, said) = promtool_check(&text);
        assert!(
            ok,
            "promtool check metrics refused the scrape: {said}\n{text}"
        );
    });
}
