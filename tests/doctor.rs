//! `portcullis doctor URL`: every verdict of the contract, each from a real server answering as
//! the situation it names (Portcullis in its configurations, Python's http.server, a closed port,
//! a self-signed certificate, a redirect loop).

mod util;

use std::process::{Child, Command, Stdio};

use serde_json::Value;
use util::*;

/// Runs doctor with `args`; returns the JSON report and the exit code.
fn doctor(args: &[&str]) -> (Value, i32) {
    let out = Command::new(BIN)
        .arg("doctor")
        .arg("--json")
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {text} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (report, out.status.code().unwrap())
}

fn verdict(args: &[&str]) -> (String, Value) {
    let (r, code) = doctor(args);
    let v = r["verdict"].as_str().unwrap().to_owned();
    assert_eq!(code, i32::from(v != "ok"), "{r}");
    assert!(!r["advice"].as_array().unwrap().is_empty(), "{r}");
    (v, r)
}

/// Basic sign-in, a few public paths, locked after two failures.
fn config() -> SiteConfig {
    SiteConfig::new()
        .auth("realm = \"Doctor's office\"")
        .auth("public = [\"/public/**\", \"/loop\", \"/loop2\"]")
        .log("access = \"off\"")
        .section("logon", "max_failures = 2")
}

#[test]
fn sign_in_verdicts_against_a_basic_site() {
    let (_up, gw) = start_with_user(&config().build(), "alice", "apple-pie-42");
    let url = gw.url("/reports");
    let (v, r) = verdict(&[&url]);
    assert_eq!(v, "login_required");
    assert_eq!(r["status"], 401);
    assert!(r["findings"].to_string().contains("Doctor's office"), "{r}");
    assert_eq!(verdict(&[&url, "-u", "alice:apple-pie-42"]).0, "ok");
    let (v, r) = verdict(&[&url, "-u", "alice:wrong"]);
    assert_eq!(v, "credentials_refused", "{r}");
    // Another failure locks the account (max_failures = 2): blocked, with the wait.
    verdict(&[&url, "-u", "alice:wrong-again"]);
    let (v, r) = verdict(&[&url, "-u", "alice:apple-pie-42"]);
    assert_eq!(v, "blocked", "{r}");
    assert!(
        r["advice"].to_string().contains("Too many failed sign-ins"),
        "{r}"
    );
    assert_eq!(verdict(&[&gw.url("/public/x")]).0, "ok");
    let (v, r) = verdict(&[&gw.url("/loop")]);
    assert_eq!(v, "redirect_loop", "{r}");
}

#[test]
fn form_sites_stale_cookies_and_refusals() {
    let form = config().auth("schemes = [\"form\"]").build();
    let (_up, gw) = start_with_user(&form, "alice", "apple-pie-42");
    let url = gw.url("/reports");
    let (v, r) = verdict(&[&url]);
    assert_eq!(v, "login_required");
    assert!(
        r["advice"].to_string().contains("/.portcullis/login"),
        "{r}"
    );
    let (v, _) = verdict(&[&url, "-u", "alice:apple-pie-42"]);
    assert_eq!(v, "scheme_unsupported");
    let stale = format!("portcullis_session={}", "A".repeat(43));
    let (v, r) = verdict(&[&url, "--cookie", &stale]);
    assert_eq!(v, "stale_cookie", "{r}");

    // Blocked by an IP rule, and rate-limited.
    let blocked = config().section("ip", "deny = [\"127.0.0.1\"]").build();
    let (_up2, gw2) = start_with_user(&blocked, "alice", "apple-pie-42");
    let (v, r) = verdict(&[&gw2.url("/x")]);
    assert_eq!(v, "blocked", "{r}");
    assert_eq!(r["status"], 403);
    let limited = config()
        .section(
            "dynamic",
            "deny_by_rate = { enabled = true, max_requests = 1, interval = \"1m\" }",
        )
        .build();
    let (_up3, gw3) = start_with_user(&limited, "alice", "apple-pie-42");
    let _ = verdict(&[&gw3.url("/public/x")]);
    let (v, r) = verdict(&[&gw3.url("/public/x")]);
    assert_eq!(v, "rate_limited", "{r}");
}

struct Python(Child);

impl Drop for Python {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn network_tls_missing_pages_and_failing_servers() {
    // A page that does not exist, with a near variant that does (Python's http.server).
    let site = tempfile::tempdir().unwrap();
    std::fs::create_dir(site.path().join("reports")).unwrap();
    std::fs::write(site.path().join("reports/index.html"), "<p>reports</p>").unwrap();
    std::fs::create_dir(site.path().join("private")).unwrap();
    std::fs::write(site.path().join("private/index.html"), "<p>private</p>").unwrap();
    // A sign-in page: /login redirects to /login/ (http.server adds the slash), a form.
    std::fs::create_dir(site.path().join("login")).unwrap();
    std::fs::write(
        site.path().join("login/index.html"),
        "<form method=post><input name=user><input type=\"password\" name=pw></form>",
    )
    .unwrap();
    let port = free_port();
    let _py = Python(
        Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .current_dir(site.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_port(
        format!("127.0.0.1:{port}").parse().unwrap(),
        std::time::Duration::from_secs(10),
    );
    let (v, r) = verdict(&[&format!("http://127.0.0.1:{port}/Reports/")]);
    assert_eq!(v, "not_found");
    assert!(
        r["advice"][0]
            .as_str()
            .unwrap()
            .contains("/reports/ answers 200"),
        "{r}"
    );
    // A typo: the parent's links give the near path that exists; the parent itself is not
    // suggested.
    let (v, r) = verdict(&[&format!("http://127.0.0.1:{port}/privte")]);
    assert_eq!(v, "not_found");
    let advice = r["advice"][0].as_str().unwrap();
    assert!(advice.contains("/private/ answers 200"), "{r}");
    assert!(!advice.contains(" / answers"), "{r}");
    // Sent on to a page with a password field: a sign-in is required, not "ok".
    let (v, r) = verdict(&[&format!("http://127.0.0.1:{port}/login")]);
    assert_eq!(v, "login_required", "{r}");
    assert!(r["advice"][0].as_str().unwrap().contains("/login/"), "{r}");

    // Nothing listening; a name that does not resolve.
    let closed = free_port();
    assert_eq!(
        verdict(&[&format!("http://127.0.0.1:{closed}/")]).0,
        "unreachable"
    );
    assert_eq!(verdict(&["http://no-such-host.invalid/"]).0, "unreachable");

    // A self-signed certificate.
    let upstream = TestUpstream::start();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (name, content) = ("users.htpasswd", String::new());
    let tls = config()
        .server("tls = { cert = \"cert.pem\", key = \"key.pem\" }")
        .build();
    let gw = Gateway::start(
        &tls,
        upstream.addr,
        &[
            (name, &content),
            ("cert.pem", &cert.cert.pem()),
            ("key.pem", &cert.signing_key.serialize_pem()),
        ],
    );
    let (v, r) = verdict(&[&format!("https://localhost:{}/", gw.addr.port())]);
    assert_eq!(v, "tls_error", "{r}");

    // The application behind the gateway is down: 502.
    let down = config()
        .server(&format!("upstream = \"http://127.0.0.1:{closed}\""))
        .build();
    let gw = Gateway::start(&down, upstream.addr, &[(name, &content)]);
    let (v, r) = verdict(&[&gw.url("/public/x")]);
    assert_eq!(v, "server_error", "{r}");
    assert_eq!(r["status"], 502);

    // Usage mistakes are exit 64.
    let out = Command::new(BIN)
        .args(["doctor", "ftp://x/"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}
