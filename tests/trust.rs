//! Issue 11, "what is decided is what is forwarded": each test is a bypass or gap found by an
//! attacker's review, replayed with raw sockets or real clients against the real binary.

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use util::*;

const PW: &str = "trust-pw";

fn gateway(extra: &str) -> (TestUpstream, Gateway) {
    let config = SiteConfig::new()
        .server("upstream = \"http://@UPSTREAM@/app\"")
        .auth("public = [\"/public/**\", \"/static/**\"]")
        .raw(extra)
        .build();
    start_with_user(&config, "alice", PW)
}

/// Sends `request` as raw bytes; returns the whole answer (until the server closes, or what
/// arrived within 3 s) and whether the server closed the connection.
fn raw(addr: SocketAddr, request: &[u8]) -> (String, bool) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    let closed = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

fn status_line(answer: &str) -> &str {
    answer.lines().next().unwrap_or("")
}

/// The upstream's echo of a request sent with a raw target (`--path-as-is`).
fn echo(addr: SocketAddr, target: &str, extra_headers: &str) -> serde_json::Value {
    let (answer, _) = raw(
        addr,
        format!(
            "GET {target} HTTP/1.1\r\nHost: app.example\r\n{extra_headers}Connection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    assert!(status_line(&answer).contains(" 200 "), "{target}: {answer}");
    let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{target}: {e}: {body}"))
}

#[test]
fn the_upstream_receives_the_path_that_was_judged() {
    let (_up, gw) = gateway("");
    // Each of these was judged public (/public/…, /static/…) and reached the upstream still
    // under /admin/ or above the base path.
    for (target, forwarded) in [
        ("/admin/..;/public/x", "/app/public/x"),
        ("/admin/x\\..\\..\\public/y", "/app/public/y"),
        ("/admin/%2e%2e/public/x", "/app/public/x"),
        ("/../static/x", "/app/static/x"),
        ("/public/./a//b?q=1", "/app/public/a/b?q=1"),
        ("/public/dir/", "/app/public/dir/"),
        ("/public/%E2%9C%93%20x", "/app/public/%E2%9C%93%20x"),
    ] {
        let seen = echo(gw.addr, target, "");
        assert_eq!(seen["path"], forwarded, "{target}");
    }
    // A protected path written the same ways is still protected.
    let (answer, _) = raw(
        gw.addr,
        b"GET /public/..;/admin/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert!(status_line(&answer).contains(" 401 "), "{answer}");
}

#[test]
fn identity_headers_are_stripped_by_normalised_name() {
    let (_up, gw) = gateway("");
    let seen = echo(
        gw.addr,
        "/public/x",
        "Remote_User: admin\r\nRemote_Groups: admins\r\nRemote-Name: admin\r\nremote_email: a@b\r\nX-Forwarded_For: 10.0.0.1\r\nX_Forwarded_Host: evil\r\nX-Forwarded-Uri: /admin\r\n",
    );
    let headers = seen["headers"].as_object().unwrap();
    let leaked: Vec<&String> = headers
        .keys()
        .filter(|k| {
            let n = k.replace('_', "-");
            n.starts_with("remote-")
                || (n.starts_with("x-forwarded-")
                    && !["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"]
                        .contains(&k.as_str()))
        })
        .collect();
    assert!(leaked.is_empty(), "{leaked:?} reached the upstream: {seen}");
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(headers["x-forwarded-host"], "app.example");
}

#[test]
fn a_trusted_proxy_passes_on_only_the_forwarding_headers_portcullis_maintains() {
    // nginx in front passes on what its client wrote: X-Forwarded-User and friends too.
    let config = SiteConfig::new()
        .server("upstream = \"http://@UPSTREAM@/app\"")
        .server("trusted_proxies = [\"127.0.0.1\"]")
        .auth("public = [\"/public/**\"]")
        .without("log", "access")
        .build();
    let (_up, gw) = start_with_user(&config, "alice", PW);
    let seen = echo(
        gw.addr,
        "/public/x",
        "X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https\r\nX-Forwarded-User: admin\r\nX-Forwarded-Email: admin@example.com\r\nX-Forwarded-Groups: admins\r\nX-Forwarded-Prefix: /evil\r\n",
    );
    let headers = seen["headers"].as_object().unwrap();
    for leaked in [
        "x-forwarded-user",
        "x-forwarded-email",
        "x-forwarded-groups",
        "x-forwarded-prefix",
    ] {
        assert!(
            headers.get(leaked).is_none(),
            "{leaked} reached the upstream: {seen}"
        );
    }
    assert_eq!(headers["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "https");
}

#[test]
fn connection_tokens_never_remove_host() {
    let (_up, gw) = gateway("");
    let seen = echo(
        gw.addr,
        "/public/x",
        "X-Hop: 1\r\nConnection: Host, Content-Length, X-Hop\r\n",
    );
    assert_eq!(seen["headers"]["host"], "app.example", "{seen}");
    assert!(seen["headers"].get("x-hop").is_none(), "{seen}");
}

#[test]
fn methods_match_rules_whatever_their_case() {
    let (_up, gw) = gateway(
        "[[rule]]\npath = \"/admin/**\"\nmethods = [\"DELETE\"]\ndeny = [\"*\"]\n\n[[rule]]\npath = \"/admin/**\"\nallow = [\"*\"]\n",
    );
    let auth = "Authorization: Basic YWxpY2U6dHJ1c3QtcHc=\r\n"; // alice:trust-pw
    for method in ["DELETE", "delete", "Delete"] {
        let (answer, _) = raw(
            gw.addr,
            format!("{method} /admin/x HTTP/1.1\r\nHost: a\r\n{auth}Connection: close\r\n\r\n")
                .as_bytes(),
        );
        assert!(status_line(&answer).contains(" 401 "), "{method}: {answer}");
    }
    let (answer, _) = raw(
        gw.addr,
        format!("GET /admin/x HTTP/1.1\r\nHost: a\r\n{auth}Connection: close\r\n\r\n").as_bytes(),
    );
    assert!(status_line(&answer).contains(" 200 "), "{answer}");
}

#[test]
fn check_config_warns_about_a_rule_limited_to_some_methods() {
    let dir = dir_with_user("alice", PW);
    std::fs::write(
        dir.path().join("p.toml"),
        "[server]\nupstream = \"http://127.0.0.1:1\"\n[auth]\nusers = \"users.htpasswd\"\n[[rule]]\npath = \"/admin/**\"\nmethods = [\"DELETE\"]\ndeny = [\"*\"]\n",
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["check-config", "-c"])
        .arg(dir.path().join("p.toml"))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("rule[0]") && text.contains("applies only to DELETE"),
        "{text}"
    );
}

#[test]
fn ambiguous_framing_is_refused_and_the_connection_closed() {
    let (up, gw) = gateway("");
    let before = up.stats.requests.load(std::sync::atomic::Ordering::Relaxed);
    for (what, request, status) in [
        (
            "Content-Length then Transfer-Encoding",
            &b"POST /public/x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
            " 400 ",
        ),
        (
            "Transfer-Encoding then Content-Length",
            &b"POST /public/x HTTP/1.1\r\nHost: a\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n0\r\n\r\n"[..],
            " 400 ",
        ),
        (
            "gzip before chunked",
            &b"POST /public/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"[..],
            " 501 ",
        ),
        (
            "Transfer-Encoding twice",
            &b"POST /public/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
            " 400 ",
        ),
        (
            "an invalid chunk size",
            &b"POST /public/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"[..],
            " 400 ",
        ),
    ] {
        let (answer, closed) = raw(gw.addr, request);
        assert!(status_line(&answer).contains(status), "{what}: {answer}");
        assert!(closed, "{what}: the connection stays open");
    }
    // The same on a keep-alive connection, after a first request.
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(b"GET /.portcullis/problems/bad_request HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 65536];
    let n = s.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    std::thread::sleep(Duration::from_millis(200));
    s.write_all(b"POST /public/x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        .unwrap();
    let n = s.read(&mut buf).unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(status_line(&answer).contains(" 400 "), "{answer}");
    // Only the invalid chunk got as far as the upstream (its head was fine).
    let after = up.stats.requests.load(std::sync::atomic::Ordering::Relaxed);
    assert!(after - before <= 1, "{}", after - before);
    let log = eventually(Duration::from_secs(5), "the access log", || {
        std::fs::read_to_string(gw.path("access.log"))
            .ok()
            .filter(|l| l.lines().filter(|l| l.contains(" POST /public/x ")).count() >= 6)
    });
    assert!(log.contains(" 501 0 "), "{log}");
}

#[test]
fn pages_portcullis_writes_cannot_be_framed_or_sniffed() {
    let (_up, gw) = gateway("");
    runtime().block_on(async {
        for accept in ["text/html", "application/json", "*/*"] {
            let r = client()
                .get(gw.url("/private"))
                .header("accept", accept)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 401);
            let h = r.headers();
            assert_eq!(h["x-content-type-options"], "nosniff", "{accept}");
            assert_eq!(h["x-frame-options"], "DENY", "{accept}");
            let csp = h["content-security-policy"].to_str().unwrap();
            assert!(csp.contains("frame-ancestors 'none'"), "{accept}: {csp}");
            if accept == "text/html" {
                assert!(csp.contains("default-src 'self'"), "{csp}");
            }
        }
        // The explanation pages too; the application's own answers are left as they are.
        let r = client()
            .get(gw.url("/.portcullis/problems/logon_failed"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["x-frame-options"], "DENY");
        let r = client().get(gw.url("/public/x")).send().await.unwrap();
        assert!(!r.headers().contains_key("x-frame-options"));
    });
}

#[test]
fn the_admin_listener_answers_only_its_own_names() {
    let port = free_port();
    let (_up, gw) = gateway(&format!("[admin]\nlisten = \"127.0.0.1:{port}\"\n"));
    let admin: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_for_port(admin, Duration::from_secs(10));
    for (host, ok) in [
        ("127.0.0.1", true),
        ("localhost:9464", true),
        ("[::1]", true),
        (&*format!("127.0.0.1:{port}"), true),
        ("attacker.example", false),
        ("attacker.example:9464", false),
        ("", false),
    ] {
        let (answer, _) = raw(
            admin,
            format!("DELETE /bans HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        );
        let status = status_line(&answer);
        assert_eq!(status.contains(" 421 "), !ok, "Host: {host}: {status}");
    }
    drop(gw);
}

/// Issue 21.8: the trace on the detailed page of a live refusal speaks of what happened, not of
/// what `explain` assumes.
#[test]
fn a_live_refusal_trace_says_what_happened() {
    let (_up, gw) = gateway("[[rule]]\npath = \"/admin/**\"\ndeny = [\"user:alice\"]\n");
    let body = runtime().block_on(async {
        client()
            .get(gw.url("/admin/x"))
            .basic_auth("alice", Some(PW))
            .header("accept", "text/html")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    let body = util::browser::unescape(&body);
    assert!(body.contains("signed in as alice"), "{body}");
    for wording in ["assumed", "not called by explain", "not evaluated here"] {
        assert!(!body.contains(wording), "{wording}: {body}");
    }
}
