//! The reverse proxy end to end: protocols (HTTP/1.1, h2 over TLS by ALPN, h2c), streaming,
//! upgrades, upstream failures, and the access log read by GoAccess.

mod util;

use std::process::Command;
use std::time::Duration;

use util::*;

/// Everything public, one listen address (a string, not a list), 10 s upstream timeouts.
fn public_config() -> SiteConfig {
    SiteConfig::new()
        .server("listen = \"@LISTEN@\"")
        .server("upstream_timeout = \"10s\"")
        .server("connect_timeout = \"10s\"")
        .auth("public = [\"/**\"]")
}

/// [`public_config`] with both upstream timeouts set to `timeout`.
fn with_timeouts(timeout: &str) -> String {
    public_config()
        .server(&format!("upstream_timeout = \"{timeout}\""))
        .server(&format!("connect_timeout = \"{timeout}\""))
        .build()
}

fn users() -> (&'static str, String) {
    (
        "users.htpasswd",
        format!("alice:{}\n", portcullis_hash("pw", &[])),
    )
}

fn public_gateway(config: &str) -> (TestUpstream, Gateway) {
    let upstream = TestUpstream::start();
    let (name, content) = users();
    let gw = Gateway::start(config, upstream.addr, &[(name, &content)]);
    (upstream, gw)
}

#[test]
fn unreachable_upstream_is_502_and_a_slow_one_is_504() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap(); // released: nothing listens
    let (name, content) = users();
    // Short timeouts here only: elsewhere a slow machine must not turn answers into 504s.
    let short = with_timeouts("1s");
    let gw = Gateway::start(&short, dead, &[(name, &content)]);
    let (_up, slow) = public_gateway(&short);
    runtime().block_on(async {
        let r = client()
            .get(gw.url("/x"))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 502);
        let p: serde_json::Value = r.json().await.unwrap();
        assert_eq!(p["type"], "/.portcullis/problems/upstream_unavailable");
        let r = client()
            .get(slow.url("/slow"))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 504);
        let p: serde_json::Value = r.json().await.unwrap();
        assert_eq!(p["type"], "/.portcullis/problems/upstream_timeout");
    });
}

#[test]
fn http2_over_tls_by_alpn_and_http1_over_tls() {
    let upstream = TestUpstream::start();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (name, content) = users();
    let config = public_config()
        .server("tls = { cert = \"cert.pem\", key = \"key.pem\" }")
        .build();
    let gw = Gateway::start(
        &config,
        upstream.addr,
        &[
            (name, &content),
            ("cert.pem", &cert.cert.pem()),
            ("key.pem", &cert.signing_key.serialize_pem()),
        ],
    );
    let url = format!("https://localhost:{}/tls", gw.addr.port());
    runtime().block_on(async {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap();
        let h2 = reqwest::Client::builder()
            .tls_certs_only([ca.clone()])
            .resolve("localhost", gw.addr)
            .build()
            .unwrap();
        let r = h2.get(&url).send().await.unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        let seen: serde_json::Value = r.json().await.unwrap();
        assert_eq!(seen["headers"]["x-forwarded-proto"], "https");
        assert_eq!(
            seen["headers"]["host"],
            format!("localhost:{}", gw.addr.port())
        );
        let h1 = reqwest::Client::builder()
            .tls_certs_only([ca])
            .http1_only()
            .resolve("localhost", gw.addr)
            .build()
            .unwrap();
        let r = h1.get(&url).send().await.unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_11);
        assert_eq!(r.status(), 200);
    });
}

#[test]
fn h2c_with_prior_knowledge() {
    let (_up, gw) = public_gateway(&public_config().build());
    runtime().block_on(async {
        let c = reqwest::Client::builder()
            .http2_prior_knowledge()
            .build()
            .unwrap();
        let r = c.get(gw.url("/h2c")).send().await.unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        let seen: serde_json::Value = r.json().await.unwrap();
        assert_eq!(
            seen["version"], "HTTP/1.1",
            "the upstream is spoken to in HTTP/1.1"
        );
        assert_eq!(seen["headers"]["host"], gw.addr.to_string());
    });
}

#[test]
fn websocket_upgrade_passes_through() {
    use futures_util::{SinkExt, StreamExt};
    let (_up, gw) = public_gateway(&public_config().build());
    runtime().block_on(async {
        let (mut ws, response) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.addr))
            .await
            .unwrap();
        assert_eq!(response.status(), 101);
        ws.send(tokio_tungstenite::tungstenite::Message::text(
            "hello through the gate",
        ))
        .await
        .unwrap();
        let echoed = ws.next().await.unwrap().unwrap();
        assert_eq!(
            echoed.into_text().unwrap().as_str(),
            "hello through the gate"
        );
    });
}

#[test]
fn a_1_gib_upload_and_download_stream_in_bounded_memory() {
    let (up, gw) = public_gateway(&with_timeouts("600s"));
    const MIB: u64 = 1 << 20;
    runtime().block_on(async {
        let chunk = bytes::Bytes::from(vec![b'u'; MIB as usize]);
        let stream = futures_util::stream::iter(
            (0..1024).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
        );
        let r = client()
            .post(gw.url("/upload"))
            .body(reqwest::Body::wrap_stream(stream))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), (1024 * MIB).to_string());
        let mut r = client()
            .get(gw.url("/download?mb=1024"))
            .send()
            .await
            .unwrap();
        let mut n = 0u64;
        while let Some(c) = r.chunk().await.unwrap() {
            n += c.len() as u64;
        }
        assert_eq!(n, 1024 * MIB);
    });
    assert_eq!(
        up.stats
            .upload_bytes
            .load(std::sync::atomic::Ordering::Relaxed),
        1024 * MIB
    );
    // 1 GiB went through each way; a proxy that buffered a body would peak above 1 GiB. What
    // remains is the runtime, buffers in flight and the allocator's caches (40–70 MiB here).
    let peak = gw.peak_rss_kib();
    eprintln!("gateway peak RSS {peak} KiB");
    assert!(
        peak < 160 * 1024,
        "gateway peak RSS {peak} KiB: bodies must stream, not buffer"
    );
}

#[test]
fn application_401_is_logged_as_401_5_and_passed_through() {
    let (_up, gw) = public_gateway(&public_config().build());
    runtime().block_on(async {
        let r = client().get(gw.url("/app401")).send().await.unwrap();
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"app\"");
        assert_eq!(r.text().await.unwrap(), "app says no");
    });
    eventually(Duration::from_secs(5), "a 401.5 log line", || {
        std::fs::read_to_string(gw.path("access.log"))
            .ok()?
            .contains("GET /app401 - ")
            .then_some(())
    });
    let log = std::fs::read_to_string(gw.path("access.log")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("/app401") && l.contains(" 401 5 0 ")),
        "{log}"
    );
}

#[test]
fn application_401_replaced_by_our_page_keeps_its_challenge() {
    let config = public_config()
        .section("errors", "upstream_401 = \"replace\"")
        .build();
    let (_up, gw) = public_gateway(&config);
    runtime().block_on(async {
        let r = client()
            .get(gw.url("/app401"))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let challenges: Vec<_> = r
            .headers()
            .get_all("www-authenticate")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        assert!(
            challenges.contains(&"Bearer realm=\"app\"".to_owned()),
            "{challenges:?}"
        );
        let p: serde_json::Value = r.json().await.unwrap();
        assert_eq!(p["substatus"], 5);
        assert_eq!(p["type"], "/.portcullis/problems/app_denied");
    });
}

#[test]
fn w3c_access_log_is_read_by_goaccess() {
    let (_up, gw) = public_gateway(&public_config().build());
    runtime().block_on(async {
        let c = client();
        for i in 0..5 {
            c.get(gw.url(&format!("/page/{i}?q=a b")))
                .header("user-agent", "test agent/1.0")
                .send()
                .await
                .unwrap();
        }
    });
    let log = eventually(Duration::from_secs(5), "five log lines", || {
        let log = std::fs::read_to_string(gw.path("access.log")).ok()?;
        (log.lines().filter(|l| !l.starts_with('#')).count() == 5).then_some(log)
    });
    assert!(log.starts_with("#Software: Portcullis "), "{log}");
    assert!(log.contains("#Fields: date time s-ip cs-method cs-uri-stem cs-uri-query s-port cs-username c-ip cs(User-Agent) cs(Referer) sc-status sc-substatus sc-win32-status time-taken\n"));
    let line = log.lines().find(|l| l.contains("/page/0")).unwrap();
    let fields: Vec<&str> = line.split(' ').collect();
    assert_eq!(fields.len(), 15, "{line}");
    assert_eq!(&fields[3..6], ["GET", "/page/0", "q=a%20b"]);
    assert_eq!(fields[6], gw.addr.port().to_string());
    assert_eq!(
        (fields[7], fields[8], fields[9]),
        ("-", "127.0.0.1", "test+agent/1.0")
    );
    assert_eq!(&fields[11..14], ["200", "0", "0"]);

    let goaccess = which("goaccess")
        .expect("the tests need goaccess (Debian package goaccess): run scripts/test");
    let report = gw.path("report.json");
    let out = Command::new(goaccess)
        .arg(gw.path("access.log"))
        .args(["--log-format=W3C", "--no-global-config", "-o"])
        .arg(&report)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "goaccess failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report).unwrap()).unwrap();
    assert_eq!(
        report["general"]["valid_requests"], 5,
        "{}",
        report["general"]
    );
    assert_eq!(report["general"]["failed_requests"], 0);
}

#[test]
fn json_access_log_lines() {
    let config = public_config()
        .log("access = \"access.json\"")
        .log("format = \"json\"")
        .build();
    let (_up, gw) = public_gateway(&config);
    runtime().block_on(async {
        client()
            .get(gw.url("/j"))
            .header("x-request-id", "json-1")
            .send()
            .await
            .unwrap();
    });
    let line = eventually(Duration::from_secs(5), "a JSON log line", || {
        std::fs::read_to_string(gw.path("access.json"))
            .ok()
            .filter(|s| !s.is_empty())
    });
    let v: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    assert_eq!(v["cs_uri_stem"], "/j");
    assert_eq!(v["sc_status"], 200);
    assert_eq!(v["request_id"], "json-1");
}

#[test]
fn oversized_request_heads_get_431_and_the_gateway_keeps_serving() {
    use std::io::{Read, Write};
    let (_up, gw) = public_gateway(&public_config().build());
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let head = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "x".repeat(500_000)
    );
    let _ = s.write_all(head.as_bytes());
    let mut answer = [0u8; 64];
    let n = s.read(&mut answer).unwrap_or(0);
    assert!(
        String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );
    runtime().block_on(async {
        assert_eq!(
            client()
                .get(gw.url("/after"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    });
}

#[test]
fn operators_can_replace_pages_by_status_and_substatus() {
    let upstream = TestUpstream::start();
    let (name, content) = users();
    let config = public_config()
        .auth("public = []")
        .section("errors", "pages = \"pages\"")
        .build();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(name), content).unwrap();
    std::fs::create_dir(dir.path().join("pages")).unwrap();
    std::fs::write(
        dir.path().join("pages/401.2.html"),
        "<p>Please sign in, {{ reason }} {{ request_id }}</p>",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("pages/401.html"),
        "<p>Generic 401 {{ substatus }}</p>",
    )
    .unwrap();
    let gw = Gateway::start_in(dir, &config, upstream.addr);
    runtime().block_on(async {
        let c = client();
        let html = c
            .get(gw.url("/x"))
            .header("accept", "text/html")
            .header("x-request-id", "r-1")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(
            html, "<p>Please sign in, no_credentials r-1</p>",
            "the most specific page wins"
        );
        let r = c
            .get(gw.url("/x"))
            .header("accept", "text/html")
            .basic_auth("alice", Some("wrong"))
            .send()
            .await
            .unwrap();
        assert!(
            r.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Basic"),
            "an override page keeps the challenge"
        );
        assert_eq!(r.text().await.unwrap(), "<p>Generic 401 1</p>");
    });
}

/// Issue 21.4: an upstream that answers HTTP/1.0 (and closes) does not turn an HTTP/1.1
/// client's answer into HTTP/1.0 or close its connection.
#[test]
fn an_http_1_0_upstream_is_answered_in_the_clients_version_and_keeps_alive() {
    use std::io::{BufRead, BufReader, Read, Write};
    let old = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = old.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in old.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let mut s = reader.into_inner();
            let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nfrom 1.0\n");
        }
    });
    let (name, content) = users();
    let gw = Gateway::start(&public_config().build(), addr, &[(name, &content)]);
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    for round in 0..2 {
        s.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        assert!(
            status.starts_with("HTTP/1.1 200"),
            "round {round}: {status}"
        );
        let mut head = Vec::new();
        loop {
            let mut l = String::new();
            reader.read_line(&mut l).unwrap();
            if l == "\r\n" {
                break;
            }
            head.push(l.to_ascii_lowercase());
        }
        assert!(
            !head.iter().any(|h| h.starts_with("connection: close")),
            "{head:?}"
        );
        assert!(
            head.iter()
                .any(|h| h.starts_with("transfer-encoding: chunked")),
            "{head:?}"
        );
        // The chunked body: "9\r\nfrom 1.0\n\r\n0\r\n\r\n".
        let mut body = [0u8; 19];
        reader.read_exact(&mut body).unwrap();
        assert!(String::from_utf8_lossy(&body).contains("from 1.0"));
    }
}

/// Many clients must not run the process out of file descriptors through upstream connections:
/// `server.upstream_max_connections` bounds the requests in flight to the upstream (each holds
/// a pooled connection until its body is done); the others wait, within `upstream_timeout`.
#[test]
fn upstream_connections_are_bounded_and_a_waiting_request_times_out() {
    let config = public_config()
        .server("upstream_timeout = \"1s\"")
        .server("upstream_max_connections = 1")
        .build();
    let (_up, gw) = public_gateway(&config);
    // A download whose client stops reading: its body, and so its upstream slot, stay busy.
    let mut stalled = std::net::TcpStream::connect(gw.addr).unwrap();
    use std::io::{Read, Write};
    stalled
        .write_all(b"GET /download?mb=256 HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let mut head = [0u8; 12];
    stalled.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    runtime().block_on(async {
        let r = client()
            .get(gw.url("/x"))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 504);
        let p: serde_json::Value = r.json().await.unwrap();
        assert_eq!(p["type"], "/.portcullis/problems/upstream_timeout");
    });
    // The stalled client goes: its slot is free again.
    drop(stalled);
    eventually(Duration::from_secs(10), "a free upstream slot", || {
        runtime().block_on(async {
            let r = client().get(gw.url("/x")).send().await.ok()?;
            (r.status() == 200).then_some(())
        })
    });
    let err = gw.stderr();
    assert!(err.contains("server.upstream_max_connections"), "{err}");
}
