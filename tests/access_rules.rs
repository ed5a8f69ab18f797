//! Access rules end to end: client address behind trusted proxies, IP and host-name lists, every
//! deny_action, URL authorization with groups, the external filter, and `explain`.

mod util;

use std::process::Command;

use util::*;

const PW: &str = "pw-1";

fn users_and_groups(dir: &std::path::Path) {
    htpasswd(&dir.join("users.htpasswd"), &["-B", "-C", "4"], "alice", PW);
    htpasswd(&dir.join("users.htpasswd"), &["-B", "-C", "4"], "bob", PW);
    htpasswd(
        &dir.join("users.htpasswd"),
        &["-B", "-C", "4"],
        "mallory",
        PW,
    );
    std::fs::write(
        dir.join("groups.txt"),
        "admins: alice mallory\nstaff: alice bob\n",
    )
    .unwrap();
}

fn start(config: &str) -> (TestUpstream, Gateway) {
    let upstream = TestUpstream::start();
    let dir = tempfile::tempdir().unwrap();
    users_and_groups(dir.path());
    let gw = Gateway::start_in(dir, config, upstream.addr);
    (upstream, gw)
}

fn config(extra: &str) -> String {
    SiteConfig::new()
        .auth("groups = \"groups.txt\"")
        .auth("public = [\"/public/**\"]")
        .raw(extra)
        .build()
}

async fn problem(
    c: &reqwest::Client,
    url: &str,
    user: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, serde_json::Value, reqwest::header::HeaderMap) {
    let mut rb = c.get(url).header("accept", "application/problem+json");
    if let Some(u) = user {
        rb = rb.basic_auth(u, Some(PW));
    }
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
        headers,
    )
}

#[test]
fn listed_ip_gets_403_503_with_a_page_and_a_log_line() {
    let (_up, gw) = start(&config("[ip]\ndeny = [\"192.0.2.0/24\", \"127.0.0.1\"]"));
    runtime().block_on(async {
        let (status, p, h) = problem(&client(), &gw.url("/public/x"), None, &[]).await;
        assert_eq!(status, 403);
        assert_eq!(p["substatus"], 503);
        assert_eq!(p["type"], "/.portcullis/problems/ip_denied");
        assert!(
            p["decided_by"].as_str().unwrap().contains("ip.deny[1]"),
            "{p}"
        );
        assert_eq!(h["cache-control"], "no-store");
        assert!(h.get("www-authenticate").is_none());
    });
    eventually(
        std::time::Duration::from_secs(5),
        "a 403.503 log line",
        || {
            std::fs::read_to_string(gw.path("access.log"))
                .ok()?
                .contains(" 403 503 0 ")
                .then_some(())
        },
    );
}

#[test]
fn ipv6_and_ipv4_listeners_are_judged_by_their_own_family() {
    let cfg = config("[ip]\ndeny = [\"::1/128\"]").replace(
        "listen = [\"@LISTEN@\"]",
        "listen = [\"@LISTEN@\", \"@LISTEN6@\"]",
    );
    let (_up, gw) = start(&cfg);
    let v6 = format!("http://[::1]:{}/public/x", gw.addr.port());
    runtime().block_on(async {
        let c = client();
        assert_eq!(c.get(&v6).send().await.unwrap().status(), 403);
        assert_eq!(
            c.get(gw.url("/public/x")).send().await.unwrap().status(),
            200
        );
    });
}

#[test]
fn every_deny_action_keeps_the_substatus() {
    for (action, status) in [
        ("unauthorized", 401),
        ("forbidden", 403),
        ("not_found", 404),
        ("too_many_requests", 429),
    ] {
        let (_up, gw) = start(&config(&format!(
            "[ip]\ndeny = [\"127.0.0.0/8\"]\ndeny_action = \"{action}\""
        )));
        runtime().block_on(async {
            let (got, p, h) = problem(&client(), &gw.url("/public/x"), None, &[]).await;
            assert_eq!(got, status, "{action}");
            assert_eq!(p["substatus"], 503, "{action}");
            assert_eq!(
                h.contains_key("www-authenticate"),
                status == 401,
                "{action}: every 401 has a challenge, others none"
            );
        });
    }
    let (_up, gw) = start(&config(
        "[ip]\ndeny = [\"127.0.0.1\"]\ndeny_action = \"abort\"",
    ));
    runtime().block_on(async {
        let err = client()
            .get(gw.url("/public/x"))
            .send()
            .await
            .expect_err("abort closes the connection without a response");
        assert!(
            err.is_request() || err.is_connect() || err.to_string().contains("closed"),
            "{err}"
        );
    });
}

#[test]
fn allow_list_with_allow_unlisted_false() {
    let (_up, gw) = start(&config(
        "[ip]\nallow_unlisted = false\nallow = [\"10.0.0.0/8\"]",
    ));
    runtime().block_on(async {
        let (status, p, _) = problem(&client(), &gw.url("/public/x"), None, &[]).await;
        assert_eq!((status, p["substatus"].as_u64()), (403, Some(503)));
    });
    let (_up, gw) = start(&config(
        "[ip]\nallow_unlisted = false\nallow = [\"127.0.0.0/8\"]",
    ));
    runtime().block_on(async {
        assert_eq!(
            client()
                .get(gw.url("/public/x"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    });
}

#[test]
fn forwarded_addresses_are_believed_only_from_trusted_proxies() {
    let cfg = config("[ip]\ndeny = [\"203.0.113.0/24\", \"2001:db8::/32\"]")
        .replace("[auth]", "trusted_proxies = [\"127.0.0.1\"]\n\n[auth]");
    let (_up, gw) = start(&cfg);
    runtime().block_on(async {
        let c = client();
        let url = gw.url("/public/x");
        let (s, p, _) = problem(&c, &url, None, &[("x-forwarded-for", "203.0.113.9")]).await;
        assert_eq!((s, p["substatus"].as_u64()), (403, Some(503)));
        // The right-most untrusted entry counts: a spoofed left entry changes nothing.
        let (s, _, _) = problem(
            &c,
            &url,
            None,
            &[("x-forwarded-for", "203.0.113.9, 198.51.100.1")],
        )
        .await;
        assert_eq!(s, 200);
        // The proxy maintains X-Forwarded-For (the default): a client's own Forwarded header,
        // which proxies pass through untouched, is not believed and not forwarded.
        let r = c
            .get(&url)
            .header("forwarded", "for=\"[2001:db8::1]\"")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let seen: serde_json::Value = r.json().await.unwrap();
        assert!(seen["headers"].get("forwarded").is_none(), "{seen}");
        // The upstream sees the chain extended with the proxy.
        let r = c
            .get(&url)
            .header("x-forwarded-for", "198.51.100.1")
            .send()
            .await
            .unwrap();
        let seen: serde_json::Value = r.json().await.unwrap();
        assert_eq!(
            seen["headers"]["x-forwarded-for"],
            "198.51.100.1, 127.0.0.1"
        );
    });
    // With forwarded_header = "forwarded", RFC 7239 is read instead (and X-Forwarded-For is not).
    let cfg = config("[ip]\ndeny = [\"203.0.113.0/24\", \"2001:db8::/32\"]").replace(
        "[auth]",
        "trusted_proxies = [\"127.0.0.1\"]\nforwarded_header = \"forwarded\"\n\n[auth]",
    );
    let (_up, gw) = start(&cfg);
    runtime().block_on(async {
        let c = client();
        let url = gw.url("/public/x");
        let (s, _, _) = problem(
            &c,
            &url,
            None,
            &[("forwarded", "for=\"[2001:db8::1]:4711\";proto=https")],
        )
        .await;
        assert_eq!(s, 403);
        let (s, p, _) = problem(&c, &url, None, &[("forwarded", "for=\"unterminated")]).await;
        assert_eq!(
            (s, p["substatus"].as_u64(), p["reason"].as_str()),
            (400, Some(10), Some("bad_forwarded_header"))
        );
        let (s, _, _) = problem(&c, &url, None, &[("x-forwarded-for", "203.0.113.9")]).await;
        assert_eq!(s, 200, "X-Forwarded-For is not read in forwarded mode");
    });
    // From an untrusted peer the same headers are ignored, even malformed ones.
    let cfg = config("[ip]\ndeny = [\"203.0.113.0/24\"]")
        .replace("[auth]", "trusted_proxies = [\"10.0.0.0/8\"]\n\n[auth]");
    let (_up, gw) = start(&cfg);
    runtime().block_on(async {
        let c = client();
        for (h, v) in [
            ("x-forwarded-for", "203.0.113.9"),
            ("forwarded", "for=203.0.113.9"),
            ("forwarded", "for=\"broken"),
        ] {
            let r = c
                .get(gw.url("/public/x"))
                .header(h, v)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{h}: {v}");
            let seen: serde_json::Value = r.json().await.unwrap();
            assert_eq!(seen["headers"]["x-forwarded-for"], "127.0.0.1");
        }
    });
}

#[test]
fn host_names_are_matched_by_double_reverse_dns() {
    let (_up, gw) = start(&config("[ip]\ndeny_hosts = [\"localhost\"]"));
    runtime().block_on(async {
        let (s, p, _) = problem(&client(), &gw.url("/public/x"), None, &[]).await;
        assert_eq!(
            (s, p["substatus"].as_u64(), p["reason"].as_str()),
            (403, Some(504), Some("host_denied"))
        );
    });
    let (_up, gw) = start(&config(
        "[ip]\ndeny_hosts = [\"calhost\", \"scanner.example\"]",
    ));
    runtime().block_on(async {
        assert_eq!(
            client()
                .get(gw.url("/public/x"))
                .send()
                .await
                .unwrap()
                .status(),
            200,
            "whole labels only"
        );
    });
}

const RULES: &str = r#"
[[rule]]
path = "/admin/**"
allow = ["group:admins"]

[[rule]]
path = "/admin/reports/**"
allow = ["group:staff"]
deny = ["user:mallory"]
"#;

#[test]
fn url_rules_with_groups_and_bypass_attempts() {
    let (_up, gw) = start(&config(RULES));
    runtime().block_on(async {
        let c = client();
        let (s, _, _) = problem(&c, &gw.url("/admin/x"), Some("alice"), &[]).await;
        assert_eq!(s, 200);
        let (s, p, h) = problem(&c, &gw.url("/admin/x"), Some("bob"), &[]).await;
        assert_eq!(
            (s, p["substatus"].as_u64(), p["reason"].as_str()),
            (401, Some(3), Some("acl_denied"))
        );
        assert!(
            h["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Basic ")
        );
        assert_eq!(
            problem(&c, &gw.url("/admin/reports/q1"), Some("bob"), &[])
                .await
                .0,
            200,
            "the more specific rule decides"
        );
        assert_eq!(
            problem(&c, &gw.url("/admin/reports/q1"), Some("mallory"), &[])
                .await
                .0,
            401,
            "deny wins"
        );
        for sneaky in [
            "/admin/../admin/x",
            "/%61dmin/x",
            "//admin//x",
            "/public/../admin/x",
            "/admin/./x",
            "/public/..;/admin/x",
            "/admin;jsessionid=1/x",
        ] {
            let r = c
                .get(format!("http://{}{sneaky}", gw.addr))
                .basic_auth("bob", Some(PW))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 401, "{sneaky} must not slip past the rule");
        }
        // Encoded separators are read differently by different applications: refused outright.
        for ambiguous in [
            "/admin%2Fx",
            "/public%2F..%2Fadmin/x",
            "/admin%5cx",
            "/a%00b",
        ] {
            let r = c
                .get(format!("http://{}{ambiguous}", gw.addr))
                .basic_auth("bob", Some(PW))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 400, "{ambiguous}");
        }
        // The upstream learns the groups.
        let seen: serde_json::Value = c
            .get(gw.url("/admin/x"))
            .basic_auth("alice", Some(PW))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(seen["headers"]["remote-groups"], "admins,staff");
    });
    let cfg = config(RULES).replace(
        "groups = \"groups.txt\"",
        "groups = \"groups.txt\"\nacl_status = 403\npath_case = \"insensitive\"",
    );
    let (_up, gw) = start(&cfg);
    runtime().block_on(async {
        let (s, p, h) = problem(&client(), &gw.url("/ADMIN/x"), Some("bob"), &[]).await;
        assert_eq!((s, p["substatus"].as_u64()), (403, Some(3)));
        assert!(h.get("www-authenticate").is_none());
    });
}

#[test]
fn the_filter_decides_after_the_rules() {
    let cfg = config("[filter]\nurl = \"http://@UPSTREAM@/filter\"\ntimeout = \"5s\"");
    let (_up, gw) = start(&cfg);
    runtime().block_on(async {
        let c = client();
        assert_eq!(problem(&c, &gw.url("/x"), Some("alice"), &[]).await.0, 200);
        let (s, p, h) = problem(&c, &gw.url("/x"), Some("bob"), &[]).await;
        assert_eq!(
            (s, p["substatus"].as_u64(), p["reason"].as_str()),
            (401, Some(4), Some("filter_denied"))
        );
        assert!(h.contains_key("www-authenticate"));
    });
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    for (mode, want) in [("closed", 503), ("open", 200)] {
        let cfg = config(&format!(
            "[filter]\nurl = \"http://{dead}/filter\"\ntimeout = \"500ms\"\non_error = \"{mode}\""
        ));
        let (_up, gw) = start(&cfg);
        runtime().block_on(async {
            let (s, p, _) = problem(&client(), &gw.url("/x"), Some("alice"), &[]).await;
            assert_eq!(s, want, "on_error = {mode}: {p}");
            if want == 503 {
                assert_eq!(p["reason"], "filter_unavailable");
            }
        });
    }
}

#[test]
fn detailed_page_shows_the_trace_of_phases() {
    let (_up, gw) = start(&config(RULES));
    runtime().block_on(async {
        let r = client()
            .get(gw.url("/admin/x"))
            .basic_auth("bob", Some(PW))
            .header("accept", "text/html")
            .send()
            .await
            .unwrap();
        let html = r.text().await.unwrap();
        assert!(html.contains("Pipeline trace"), "{html}");
        assert!(
            html.contains("not in the allow list of rule[0] (line"),
            "{html}"
        );
    });
}

#[test]
fn explain_prints_each_phase_and_exits_by_verdict() {
    let dir = tempfile::tempdir().unwrap();
    users_and_groups(dir.path());
    let cfg = config(&format!("[ip]\ndeny = [\"203.0.113.0/24\"]\n{RULES}"))
        .replace("@LISTEN@", "127.0.0.1:1")
        .replace("@UPSTREAM@", "127.0.0.1:2");
    std::fs::write(dir.path().join("portcullis.toml"), cfg).unwrap();
    let explain = |args: &[&str]| {
        let out = Command::new(BIN)
            .arg("explain")
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8(out.stdout).unwrap())
    };
    let (code, out) = explain(&["--user", "alice", "/admin/x"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("authorize") && out.contains("allowed by rule[0] (line"),
        "{out}"
    );
    assert!(out.contains("groups: admins, staff"), "{out}");
    let (code, out) = explain(&["--user", "bob", "--method", "post", "/admin/x"]);
    assert_eq!(code, Some(1));
    assert!(out.contains("result: 401.3 acl_denied"), "{out}");
    let (code, out) = explain(&["--ip", "203.0.113.7", "/public/x"]);
    assert_eq!(code, Some(1));
    assert!(
        out.contains("ip.deny[0] (line") && out.contains("result: 403.503 ip_denied"),
        "{out}"
    );
    let (code, out) = explain(&["/admin/x"]);
    assert_eq!(code, Some(1));
    assert!(out.contains("result: 401.2 no_credentials"), "{out}");
}
