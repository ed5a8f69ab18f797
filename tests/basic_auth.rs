//! Basic authentication end to end: the real binary, a real upstream, htpasswd files written by
//! Apache's own `htpasswd`, and reqwest and curl as clients.

mod util;

use std::process::Command;
use std::time::Duration;

use util::*;

const PASSWORD: &str = "correct horse battery";

fn gateway_with_alice(config: &str) -> (TestUpstream, Gateway) {
    let upstream = TestUpstream::start();
    let dir = tempfile::tempdir().unwrap();
    htpasswd(
        &dir.path().join("users.htpasswd"),
        &["-B", "-C", "5"],
        "alice",
        PASSWORD,
    );
    let gw = Gateway::start_in(dir, config, upstream.addr);
    (upstream, gw)
}

#[test]
fn no_credentials_gets_401_2_with_challenge_no_store_and_request_id() {
    let (_up, gw) = gateway_with_alice(&basic_config().build());
    runtime().block_on(async {
        let r = client()
            .get(gw.url("/app"))
            .header("accept", "application/problem+json")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        assert_eq!(
            r.headers()["www-authenticate"],
            r#"Basic realm="Test realm", charset="UTF-8""#
        );
        assert_eq!(r.headers()["cache-control"], "no-store");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
        let p: serde_json::Value = r.json().await.unwrap();
        assert_eq!(p["type"], "/.portcullis/problems/no_credentials");
        assert_eq!(p["status"], 401);
        assert_eq!(p["substatus"], 2);
        assert_eq!(p["request_id"], id.as_str());
        assert!(p["title"].is_string() && p["detail"].is_string());
    });
}

#[test]
fn wrong_password_and_unknown_user_get_the_same_401_1() {
    let (_up, gw) = gateway_with_alice(&basic_config().build());
    runtime().block_on(async {
        let c = client();
        let wrong = c
            .get(gw.url("/app"))
            .basic_auth("alice", Some("nope"))
            .header("x-request-id", "same")
            .send()
            .await
            .unwrap();
        let unknown = c
            .get(gw.url("/app"))
            .basic_auth("mallory", Some("nope"))
            .header("x-request-id", "same")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401);
        assert_eq!(unknown.status(), 401);
        let strip = |h: &reqwest::header::HeaderMap| {
            let mut h = h.clone();
            h.remove("date");
            h
        };
        assert_eq!(strip(wrong.headers()), strip(unknown.headers()));
        assert_eq!(wrong.text().await.unwrap(), unknown.text().await.unwrap());
    });
    let log = eventually(Duration::from_secs(5), "two 401.1 lines", || {
        let log = std::fs::read_to_string(gw.path("access.log")).ok()?;
        (log.matches(" 401 1 0 ").count() == 2).then_some(log)
    });
    assert!(
        log.contains(" alice 127.0.0.1 ") && log.contains(" mallory 127.0.0.1 "),
        "{log}"
    );
}

#[test]
fn valid_credentials_reach_the_upstream_as_remote_user_without_authorization() {
    let (_up, gw) = gateway_with_alice(&basic_config().build());
    runtime().block_on(async {
        let r = client()
            .get(gw.url("/app?x=1"))
            .basic_auth("alice", Some(PASSWORD))
            .header("remote-user", "admin")
            .header("remote-groups", "admins")
            .header("remote-email", "x@y")
            .header("x-forwarded-for", "6.6.6.6")
            .header("x-request-id", "client-id-1")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            r.headers().get("x-hop").is_none(),
            "hop-by-hop header named in Connection leaked"
        );
        assert!(r.headers().get("keep-alive").is_none());
        assert_eq!(r.headers()["x-request-id"], "client-id-1");
        let seen: serde_json::Value = r.json().await.unwrap();
        let h = &seen["headers"];
        assert_eq!(seen["path"], "/app?x=1");
        assert_eq!(h["remote-user"], "alice");
        assert!(h.get("remote-groups").is_none() && h.get("remote-email").is_none());
        assert!(
            h.get("authorization").is_none(),
            "Authorization must not be forwarded by default"
        );
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], gw.addr.to_string());
        assert_eq!(h["host"], gw.addr.to_string());
        assert_eq!(h["x-request-id"], "client-id-1");
    });
}

#[test]
fn forward_authorization_passes_the_header_on_when_enabled() {
    let config = basic_config().auth("forward_authorization = true").build();
    let (_up, gw) = gateway_with_alice(&config);
    runtime().block_on(async {
        let seen: serde_json::Value = client()
            .get(gw.url("/"))
            .basic_auth("alice", Some(PASSWORD))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(
            seen["headers"]["authorization"]
                .as_str()
                .unwrap()
                .starts_with("Basic ")
        );
    });
}

#[test]
fn public_paths_pass_anonymously_and_identity_headers_are_still_stripped() {
    let (_up, gw) = gateway_with_alice(&basic_config().build());
    runtime().block_on(async {
        let r = client()
            .get(gw.url("/public/a.css"))
            .header("remote-user", "admin")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let seen: serde_json::Value = r.json().await.unwrap();
        assert!(seen["headers"].get("remote-user").is_none());
        // A dot-segment cannot turn a protected path into a public one.
        let r = client()
            .get(gw.url("/public/%2e%2e/app"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    });
}

#[test]
fn malformed_authorization_is_400_never_a_crash() {
    let (_up, gw) = gateway_with_alice(&basic_config().build());
    runtime().block_on(async {
        let c = client();
        for bad in [
            "Basic !!!",
            "Basic",
            "Basic bm9jb2xvbg==", /* "nocolon" */
            "Basic /zph",
            /* 0xff ":a": invalid UTF-8 */ "(x) y",
        ] {
            let r = c
                .get(gw.url("/app"))
                .header("authorization", bad)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 400, "{bad}");
            assert_eq!(r.headers()["cache-control"], "no-store");
        }
        // The gateway is still serving.
        let r = c
            .get(gw.url("/app"))
            .basic_auth("alice", Some(PASSWORD))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    });
}

#[test]
fn every_htpasswd_format_from_the_real_tool_is_accepted() {
    let upstream = TestUpstream::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.htpasswd");
    let mut users = vec![
        ("bcrypt", vec!["-B", "-C", "5"]),
        ("apr1", vec!["-m"]),
        ("sha1", vec!["-s"]),
    ];
    let help = Command::new("htpasswd")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
        .unwrap_or_default();
    if help.contains(" -2 ") {
        users.push(("sha256", vec!["-2"]));
    }
    if help.contains(" -5 ") {
        users.push(("sha512", vec!["-5"]));
    }
    for (user, flags) in &users {
        htpasswd(&file, flags, user, &format!("pw-{user}"));
    }
    let mut content = std::fs::read_to_string(&file).unwrap();
    content.push_str(&format!(
        "argon\n{}\n",
        "this line is not in any known format"
    ));
    content = content.replace(
        "argon\n",
        &format!("argon:{}\n", portcullis_hash("pw-argon", &[])),
    );
    std::fs::write(&file, content).unwrap();
    users.push(("argon", vec![]));
    let gw = Gateway::start_in(dir, &basic_config().build(), upstream.addr);
    runtime().block_on(async {
        let c = client();
        for (user, _) in &users {
            let ok = c
                .get(gw.url("/"))
                .basic_auth(user, Some(format!("pw-{user}")))
                .send()
                .await
                .unwrap();
            assert_eq!(ok.status(), 200, "{user} with the right password");
            let bad = c
                .get(gw.url("/"))
                .basic_auth(user, Some("wrong"))
                .send()
                .await
                .unwrap();
            assert_eq!(bad.status(), 401, "{user} with a wrong password");
        }
    });
    assert!(
        gw.stderr().contains("users.htpasswd:"),
        "the bad line is reported with its place: {}",
        gw.stderr()
    );
}

#[test]
fn a_changed_user_file_is_picked_up_without_restart() {
    // The poll below sends the new password until it works: keep the lockout out of the way.
    let config = basic_config()
        .section("logon", "max_failures = 1000")
        .build();
    let (_up, gw) = gateway_with_alice(&config);
    let rt = runtime();
    let status = |pw: &'static str| {
        rt.block_on(async {
            client()
                .get(gw.url("/"))
                .basic_auth("alice", Some(pw))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    assert_eq!(status(PASSWORD), 200);
    assert_eq!(status("new-password"), 401);
    // Rewrite the file the way an operator would: with the real tool.
    htpasswd(
        &gw.path("users.htpasswd"),
        &["-B", "-C", "5"],
        "alice",
        "new-password",
    );
    eventually(Duration::from_secs(10), "the new password to work", || {
        (status("new-password") == 200).then_some(())
    });
    assert_eq!(
        status(PASSWORD),
        401,
        "the cached acceptance of the old password must be dropped"
    );
}

#[test]
fn curl_sees_the_challenge_and_gets_through_with_credentials() {
    let Some(curl) = which("curl") else {
        panic!("the tests need curl")
    };
    let (_up, gw) = gateway_with_alice(&basic_config().build());
    let out = Command::new(&curl)
        .args(["-s", "-i", &gw.url("/app")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("www-authenticate: basic realm=\"test realm\""),
        "{text}"
    );
    assert!(
        text.contains("Sign-in required"),
        "plain text for curl: {text}"
    );
    let out = Command::new(&curl)
        .args([
            "-s",
            "-f",
            "-u",
            &format!("alice:{PASSWORD}"),
            &gw.url("/app"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"remote-user\":\"alice\""));
}

#[test]
fn browsers_get_a_page_that_explains_and_detailed_only_locally() {
    let (_up, gw) = gateway_with_alice(&basic_config().build());
    let accept = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
    runtime().block_on(async {
        let r = client()
            .get(gw.url("/app"))
            .header("accept", accept)
            .basic_auth("alice", Some("bad"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
        let html = r.text().await.unwrap();
        assert!(
            html.contains("Sign-in failed") && html.contains("were not accepted"),
            "{html}"
        );
        // Loopback client under the default detailed_local_only: administrator details shown.
        assert!(html.contains("logon_failed") && html.contains("Details for the administrator"));
    });
    let config = basic_config()
        .section("errors", "mode = \"custom\"")
        .build();
    let (_up2, gw2) = gateway_with_alice(&config);
    runtime().block_on(async {
        let html = client()
            .get(gw2.url("/app"))
            .header("accept", accept)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(html.contains("Sign-in required"));
        assert!(
            !html.contains("Details for the administrator") && !html.contains("no_credentials")
        );
    });
}
