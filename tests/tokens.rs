//! Bearer API tokens end to end: `portcullis tokens create|list|revoke` against the SQLite user
//! database while the server runs, requests made with curl and with an HTTP client, the RFC 6750
//! answers, the W3C log, the audit log and the metrics.

mod util;

use std::process::Command;
use std::time::Duration;

use util::*;

/// Bearer and Basic over a user database, a rule for `/admin/**`, the audit log, an admin
/// listener at `admin`.
fn site_config(admin: &str) -> String {
    SiteConfig::new()
        .auth("schemes = [\"bearer\", \"basic\"]\nusers = \"sqlite:users.db\"")
        .log("audit = \"audit.log\"")
        .section("admin", &format!("listen = \"{admin}\""))
        .raw("[[rule]]\npath = \"/admin/**\"\nallow = [\"group:admins\"]\n")
        .build()
}

/// Runs `portcullis VERB ARGS -c portcullis.toml` in `dir` with `stdin`; returns stdout, or
/// panics with stderr.
fn run(dir: &std::path::Path, verb: &str, args: &[&str], stdin: Option<&str>) -> String {
    let (ok, out, err) = try_run(dir, verb, args, stdin);
    assert!(ok, "{verb} {args:?}: {err}");
    out
}

fn try_run(
    dir: &std::path::Path,
    verb: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> (bool, String, String) {
    let (ok, out, err) = cli_in(&dir.join("portcullis.toml"), verb, args, stdin);
    (ok, out.trim().to_owned(), err)
}

/// A gateway whose user database has `alice` (group admins) and `bob`.
fn start() -> (TestUpstream, Gateway, std::path::PathBuf, String) {
    let upstream = TestUpstream::start();
    let dir = tempfile::tempdir().unwrap();
    let admin = format!("127.0.0.1:{}", free_port());
    let config = site_config(&admin);
    std::fs::write(
        dir.path().join("portcullis.toml"),
        config
            .replace("@UPSTREAM@", &upstream.addr.to_string())
            .replace("@LISTEN@", "127.0.0.1:1"),
    )
    .unwrap();
    run(
        dir.path(),
        "users",
        &["add", "alice", "--group", "admins", "--bcrypt"],
        Some("alice-pw"),
    );
    run(
        dir.path(),
        "users",
        &["add", "bob", "--bcrypt"],
        Some("bob-pw"),
    );
    let d = dir.path().to_path_buf();
    let gw = Gateway::start_in(dir, &config, upstream.addr);
    wait_for_port(admin.parse().unwrap(), Duration::from_secs(10));
    (upstream, gw, d, admin)
}

/// curl with `Authorization: Bearer TOKEN`: status and response headers (lower-cased names).
fn curl(url: &str, token: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-D", "-", "-o", "/dev/null", "-H"])
        .arg(format!("Authorization: Bearer {token}"))
        .arg(url)
        .output()
        .expect("curl");
    let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head)
}

/// The admin listener's metrics text.
fn metrics_of(admin: &str) -> String {
    runtime().block_on(async {
        client()
            .get(format!("http://{admin}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    })
}

/// Waits until the server knows a token just made (it reloads the database within a second).
fn known(gw: &Gateway, token: &str) {
    eventually(Duration::from_secs(10), "the new token known", || {
        (curl(&gw.url("/x"), token).0 == 200).then_some(())
    });
}

fn challenge(head: &str) -> Vec<&str> {
    head.lines()
        .filter_map(|l| l.strip_prefix("www-authenticate: "))
        .map(str::trim)
        .collect()
}

#[test]
fn an_api_token_acts_as_its_user_with_its_groups_until_revoked() {
    let (_upstream, gw, dir, admin) = start();
    let token = run(
        &dir,
        "tokens",
        &["create", "alice", "--name", "ci job"],
        None,
    );
    assert!(token.starts_with("pcl_") && token.len() == 47, "{token}");
    known(&gw, &token);

    // curl with the token passes as alice, with her groups, to a path her group may open.
    let (status, _) = curl(&gw.url("/admin/report"), &token);
    assert_eq!(status, 200);
    let rt = runtime();
    let seen: serde_json::Value = rt.block_on(async {
        client()
            .get(gw.url("/x"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    assert_eq!(seen["headers"]["remote-user"], "alice");
    assert_eq!(seen["headers"]["remote-groups"], "admins");
    assert!(
        seen["headers"].get("authorization").is_none(),
        "the token does not reach the application: {seen}"
    );

    // The list shows it (never the token), with its name and its use.
    let list: serde_json::Value =
        serde_json::from_str(&run(&dir, "tokens", &["list", "alice", "--json"], None)).unwrap();
    let row = &list[0];
    assert_eq!(row["user"], "alice");
    assert_eq!(row["name"], "ci job");
    assert!(!list.to_string().contains(&token));
    let id = row["id"].as_str().unwrap().to_owned();
    eventually(Duration::from_secs(10), "last_used recorded", || {
        let list: serde_json::Value =
            serde_json::from_str(&run(&dir, "tokens", &["list", "--json"], None)).unwrap();
        list[0]["last_used"].is_string().then_some(())
    });

    // Revoked: refused within a poll interval, as an invalid token.
    run(&dir, "tokens", &["revoke", &id], None);
    let head = eventually(Duration::from_secs(10), "the revoked token refused", || {
        let (status, head) = curl(&gw.url("/x"), &token);
        (status == 401).then_some(head)
    });
    assert!(
        challenge(&head)
            .iter()
            .any(|c| c.starts_with("bearer realm=") && c.contains("error=\"invalid_token\"")),
        "{head}"
    );
    let (ok, _, err) = try_run(&dir, "tokens", &["revoke", &id], None);
    assert!(!ok && err.contains(&id), "{err}");

    // The log names the user and the sub-status; the audit log has the token's life.
    let log = std::fs::read_to_string(gw.path("access.log")).unwrap();
    assert!(log.contains(" alice ") && log.contains(" 401 1 "), "{log}");
    assert!(!log.contains(&token), "the token never reaches the log");
    let audit = eventually(Duration::from_secs(5), "the audit lines", || {
        std::fs::read_to_string(dir.join("audit.log"))
            .ok()
            .filter(|a| a.contains("token_revoked"))
    });
    for event in ["token_created", "token_first_used", "token_revoked"] {
        assert!(audit.contains(event), "{event}: {audit}");
    }
    assert!(!audit.contains(&token));

    // Metrics count bearer sign-ins by outcome.
    let metrics = metrics_of(&admin);
    let line = metrics
        .lines()
        .find(|l| l.starts_with("portcullis_auth_total{scheme=\"bearer\",outcome=\"accepted\"}"))
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(!line.ends_with(" 0"), "{line}");
}

#[test]
fn rfc_6750_answers_no_token_a_wrong_token_an_expired_token_and_a_refused_one() {
    let (_upstream, gw, dir, _admin) = start();
    let rt = runtime();
    // No credentials: 401.2 with the Bearer challenge (and Basic, also enabled).
    let r = rt.block_on(async { client().get(gw.url("/x")).send().await.unwrap() });
    assert_eq!(r.status(), 401);
    let challenges: Vec<_> = r
        .headers()
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(challenges[0], "Bearer realm=\"Restricted area\"");
    assert!(challenges[1].starts_with("Basic "), "{challenges:?}");

    // A token of the right shape that no one made: 401.1 token_invalid.
    let (status, head) = curl(&gw.url("/x"), &format!("pcl_{}", "A".repeat(43)));
    assert_eq!(status, 401);
    assert!(head.contains("error=\"invalid_token\""), "{head}");

    // A malformed Authorization: Bearer value is a bad request, not a server error.
    let r = rt.block_on(async {
        client()
            .get(gw.url("/x"))
            .header("authorization", "Bearer a,b")
            .send()
            .await
            .unwrap()
    });
    assert_eq!(r.status(), 400);

    // Expired: 401.1 token_expired, and the page says when.
    let short = run(&dir, "tokens", &["create", "bob", "--expires", "1s"], None);
    std::thread::sleep(Duration::from_millis(2100));
    let r = rt.block_on(async {
        client()
            .get(gw.url("/x"))
            .bearer_auth(&short)
            .header("accept", "application/problem+json")
            .send()
            .await
            .unwrap()
    });
    assert_eq!(r.status(), 401);
    let problem: serde_json::Value = rt.block_on(r.json()).unwrap();
    assert_eq!(problem["reason"], "token_expired");
    assert_eq!(problem["substatus"], 1);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("It expired at 20"),
        "{problem}"
    );

    // Refused by a rule: 403.3 with error="insufficient_scope".
    let bobs = run(&dir, "tokens", &["create", "bob"], None);
    // A new token works once the server has noticed the database changed (within a second).
    let (status, head) = eventually(Duration::from_secs(10), "bob's new token known", || {
        Some(curl(&gw.url("/admin/x"), &bobs)).filter(|(s, _)| *s != 401)
    });
    assert_eq!(status, 403);
    assert!(head.contains("error=\"insufficient_scope\""), "{head}");
    let log = eventually(Duration::from_secs(5), "the 403.3", || {
        std::fs::read_to_string(gw.path("access.log"))
            .ok()
            .filter(|l| l.contains(" bob ") && l.contains(" 403 3 "))
    });
    assert!(log.contains(" 401 1 "), "{log}");
}

#[test]
fn a_token_dies_with_its_user_and_never_touches_the_password_queue() {
    let (_upstream, gw, dir, admin) = start();
    let token = run(&dir, "tokens", &["create", "bob"], None);
    known(&gw, &token);
    let hash_checks = || {
        let metrics = metrics_of(&admin);
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("portcullis_password_hash_checks_total")
                    || l.starts_with("portcullis_auth_cache_hits_total")
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .collect::<Vec<_>>()
    };
    let before = hash_checks();
    for _ in 0..20 {
        assert_eq!(curl(&gw.url("/x"), &token).0, 200);
    }
    assert_eq!(before.len(), 2, "both series are exported");
    assert_eq!(
        hash_checks(),
        before,
        "no password check, not even a cached one"
    );

    run(&dir, "users", &["disable", "bob"], None);
    eventually(Duration::from_secs(10), "bob's token refused", || {
        (curl(&gw.url("/x"), &token).0 == 401).then_some(())
    });
    run(&dir, "users", &["enable", "bob"], None);
    eventually(Duration::from_secs(10), "bob's token back", || {
        (curl(&gw.url("/x"), &token).0 == 200).then_some(())
    });
    run(&dir, "users", &["del", "bob"], None);
    eventually(Duration::from_secs(10), "bob's token gone", || {
        (curl(&gw.url("/x"), &token).0 == 401).then_some(())
    });
    let list = run(&dir, "tokens", &["list", "--json"], None);
    assert_eq!(list, "[]", "deleting the user deleted the token");
}

#[test]
fn check_config_refuses_bearer_without_a_user_database() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("users.htpasswd"), "").unwrap();
    let (code, err) = check_config(
        dir.path(),
        "[server]\nupstream = \"http://127.0.0.1:9\"\n[auth]\nschemes = [\"bearer\"]\nusers = \"users.htpasswd\"\n",
    );
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("auth.schemes") && err.contains("sqlite:"),
        "{err}"
    );
}

#[test]
fn doctor_checks_a_token() {
    let (_upstream, gw, dir, _admin) = start();
    let token = run(&dir, "tokens", &["create", "alice"], None);
    known(&gw, &token);
    let doctor = |args: &[&str]| -> (Option<i32>, serde_json::Value) {
        let out = Command::new(BIN)
            .arg("doctor")
            .args(args)
            .arg("--json")
            .arg(gw.url("/x"))
            .output()
            .unwrap();
        (
            out.status.code(),
            serde_json::from_slice(&out.stdout).unwrap(),
        )
    };
    let (code, report) = doctor(&["--token", &token]);
    assert_eq!(
        (code, report["verdict"].as_str()),
        (Some(0), Some("ok")),
        "{report}"
    );
    assert!(
        !report.to_string().contains(&token),
        "the token is not printed: {report}"
    );
    let (code, report) = doctor(&["--token", "pcl_not-a-token-of-this-site"]);
    assert_eq!(code, Some(1));
    assert_eq!(report["verdict"], "credentials_refused", "{report}");
    // Without a token, doctor says to send one.
    let (_, report) = doctor(&[]);
    assert_eq!(report["verdict"], "login_required");
}
