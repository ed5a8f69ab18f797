//! Running it for months: live reload (SIGHUP and file change) without dropping requests, invalid
//! reloads refused, listener changes, bans surviving reloads, SIGTERM draining, SIGUSR1 reopening
//! the access log.

mod util;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use util::*;

const PW: &str = "ops-pw";

fn config(public: &str, extra: &str) -> String {
    SiteConfig::new()
        .auth(&format!("public = [{public}]"))
        .raw(extra)
        .build()
}

fn start(config: &str) -> (TestUpstream, Gateway) {
    start_with_user(config, "alice", PW)
}

/// Rewrites the config file of a running gateway (same placeholders as at start).
fn rewrite(gw: &Gateway, upstream: &TestUpstream, config: &str) {
    let text = config
        .replace("@LISTEN@", &gw.addr.to_string())
        .replace("@UPSTREAM@", &upstream.addr.to_string());
    std::fs::write(gw.path("portcullis.toml"), text).unwrap();
}

fn status(rt: &tokio::runtime::Runtime, url: &str) -> u16 {
    rt.block_on(async {
        client()
            .get(url)
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    })
}

#[test]
fn sighup_applies_a_valid_config_and_refuses_an_invalid_one() {
    let (up, gw) = start(&config("\"/public/**\"", ""));
    let rt = runtime();
    assert_eq!(status(&rt, &gw.url("/open/x")), 401);
    rewrite(&gw, &up, &config("\"/public/**\", \"/open/**\"", ""));
    gw.signal("HUP");
    eventually(Duration::from_secs(10), "the new public path", || {
        (status(&rt, &gw.url("/open/x")) == 200).then_some(())
    });

    std::fs::write(
        gw.path("portcullis.toml"),
        "[server]\nlisten = [\"nonsense\"]\n[auth]\nusers = \"missing\"\n",
    )
    .unwrap();
    gw.signal("HUP");
    let err = eventually(Duration::from_secs(10), "the refusal in the log", || {
        let e = gw.stderr();
        e.contains("NOT reloaded").then_some(e)
    });
    assert!(
        err.contains("server.listen") && err.contains("auth.users"),
        "every problem is logged: {err}"
    );
    assert_eq!(
        status(&rt, &gw.url("/open/x")),
        200,
        "the old configuration keeps serving"
    );
}

#[test]
fn a_changed_config_file_is_reloaded_without_a_signal() {
    let (up, gw) = start(&config("\"/public/**\"", ""));
    let rt = runtime();
    assert_eq!(status(&rt, &gw.url("/open/x")), 401);
    rewrite(&gw, &up, &config("\"/**\"", ""));
    eventually(
        Duration::from_secs(15),
        "the reload after the file change",
        || (status(&rt, &gw.url("/open/x")) == 200).then_some(()),
    );
}

#[test]
fn reloads_under_continuous_load_lose_no_request() {
    let (up, gw) = start(&config("\"/**\"", ""));
    let rt = runtime();
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let url = gw.url("/load");
    let load = {
        let (ok, failed) = (ok.clone(), failed.clone());
        rt.spawn(async move {
            let c = client();
            let tasks: Vec<_> = (0..8)
                .map(|_| {
                    let (c, url, ok, failed) = (c.clone(), url.clone(), ok.clone(), failed.clone());
                    tokio::spawn(async move {
                        for _ in 0..150 {
                            match c.get(&url).send().await {
                                Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                                _ => failed.fetch_add(1, Ordering::Relaxed),
                            };
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
        })
    };
    for i in 0..4 {
        eventually(Duration::from_secs(10), "load in progress", || {
            (ok.load(Ordering::Relaxed) >= 150 * (i + 1) || load.is_finished()).then_some(())
        });
        rewrite(&gw, &up, &config("\"/**\"", &format!("# reload {i}\n")));
        gw.signal("HUP");
    }
    rt.block_on(load).unwrap();
    assert_eq!(
        (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed)),
        (1200, 0)
    );
    assert!(
        gw.stderr().matches("configuration reloaded").count() >= 2,
        "{}",
        gw.stderr()
    );
}

#[test]
fn listener_changes_and_bans_survive_a_reload() {
    let extra = "\n[logon]\nmax_failures = 2\nban_time = \"1h\"\n";
    let (up, gw) = start(&config("\"/public/**\"", extra));
    let rt = runtime();
    rt.block_on(async {
        let c = client();
        for _ in 0..2 {
            c.get(gw.url("/p"))
                .basic_auth("alice", Some("bad"))
                .send()
                .await
                .unwrap();
        }
    });
    let locked = |url: String| {
        rt.block_on(async {
            client()
                .get(url)
                .basic_auth("alice", Some(PW))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    assert_eq!(locked(gw.url("/p")), 403);
    let second = format!("127.0.0.1:{}", free_port());
    let cfg = config("\"/public/**\"", extra).replace(
        "listen = [\"@LISTEN@\"]",
        &format!("listen = [\"@LISTEN@\", \"{second}\"]"),
    );
    rewrite(&gw, &up, &cfg);
    gw.signal("HUP");
    eventually(Duration::from_secs(10), "the new listener", || {
        std::net::TcpStream::connect(&second).ok()
    });
    assert_eq!(
        locked(format!("http://{second}/p")),
        403,
        "the ban survived the reload"
    );
}

#[test]
fn a_reload_moves_the_admin_listener() {
    let (first, second) = (free_port(), free_port());
    let admin = |port: u16| format!("\n[admin]\nlisten = \"127.0.0.1:{port}\"\n");
    let (up, gw) = start(&config("\"/**\"", &admin(first)));
    let rt = runtime();
    let health = |port: u16| status(&rt, &format!("http://127.0.0.1:{port}/healthz"));
    assert_eq!(health(first), 200);
    rewrite(&gw, &up, &config("\"/**\"", &admin(second)));
    gw.signal("HUP");
    eventually(
        Duration::from_secs(10),
        "the admin listener on its new port",
        || (health(second) == 200).then_some(()),
    );
    eventually(Duration::from_secs(5), "the old admin port closed", || {
        (health(first) == 0).then_some(())
    });
    // [admin] removed: the listener closes.
    rewrite(&gw, &up, &config("\"/**\"", ""));
    gw.signal("HUP");
    eventually(
        Duration::from_secs(10),
        "the admin listener closed with [admin] removed",
        || (health(second) == 0).then_some(()),
    );
    assert_eq!(status(&rt, &gw.url("/x")), 200, "the gateway kept serving");
}

#[test]
fn sigterm_lets_a_slow_request_finish_then_exits_0() {
    let admin = free_port();
    let (up, mut gw) = start(&config(
        "\"/**\"",
        &format!("\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n"),
    ));
    let rt = runtime();
    let health = |rt: &tokio::runtime::Runtime| {
        rt.block_on(async {
            client()
                .get(format!("http://127.0.0.1:{admin}/healthz"))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        })
    };
    assert_eq!(health(&rt), 200);
    // Long enough that the drain is still on when /healthz is asked, on a slow machine too.
    let url = gw.url("/sleep?ms=6000");
    let slow = rt.spawn(async move { client().get(url).send().await.map(|r| r.status().as_u16()) });
    eventually(
        Duration::from_secs(5),
        "the slow request at the upstream",
        || (up.stats.requests.load(Ordering::Relaxed) >= 1).then_some(()),
    );
    gw.signal("TERM");
    // While draining, /healthz tells load balancers to move on.
    eventually(Duration::from_secs(5), "healthz 503 while draining", || {
        (health(&rt) == 503).then_some(())
    });
    let code = gw.terminate();
    assert!(code.success(), "exit status {code}");
    assert_eq!(
        rt.block_on(slow).unwrap().unwrap(),
        200,
        "the request in flight was completed"
    );
    let log = std::fs::read_to_string(gw.path("access.log")).unwrap();
    assert!(
        log.contains("/sleep ms=6000"),
        "the access log was flushed: {log}"
    );
}

#[test]
fn sigusr1_reopens_the_access_log_after_rotation() {
    let (_up, gw) = start(&config("\"/**\"", ""));
    let rt = runtime();
    assert_eq!(status(&rt, &gw.url("/before")), 200);
    eventually(Duration::from_secs(5), "the first line", || {
        std::fs::read_to_string(gw.path("access.log"))
            .ok()?
            .contains("/before")
            .then_some(())
    });
    std::fs::rename(gw.path("access.log"), gw.path("access.log.1")).unwrap();
    gw.signal("USR1");
    eventually(Duration::from_secs(5), "a new access.log", || {
        let _ = status(&rt, &gw.url("/after"));
        std::fs::read_to_string(gw.path("access.log"))
            .ok()?
            .contains("/after")
            .then_some(())
    });
    assert!(
        !std::fs::read_to_string(gw.path("access.log.1"))
            .unwrap()
            .contains("/after")
    );
}

#[test]
fn audit_log_records_sign_ins_lockouts_and_reloads_but_no_secret() {
    let extra = "audit = \"audit.log\"\n\n[logon]\nmax_failures = 2\nban_time = \"1s\"\n";
    let cfg = config("\"/public/**\"", "").replace(
        "access = \"access.log\"",
        &format!("access = \"access.log\"\n{extra}"),
    );
    let (up, gw) = start(&cfg);
    let rt = runtime();
    rt.block_on(async {
        let c = client();
        assert_eq!(
            c.get(gw.url("/p"))
                .basic_auth("alice", Some(PW))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        for _ in 0..2 {
            c.get(gw.url("/p"))
                .basic_auth("alice", Some("s3cr3t-wrong-guess"))
                .send()
                .await
                .unwrap();
        }
    });
    rewrite(&gw, &up, &cfg.replace("/public/**", "/open/**"));
    gw.signal("HUP");
    let audit = eventually(
        Duration::from_secs(20),
        "the reload and the end of the lockout in the audit log",
        || {
            let a = std::fs::read_to_string(gw.path("audit.log")).ok()?;
            (a.contains("config_reload") && a.contains("lockout_ended")).then_some(a)
        },
    );
    let events: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"lockout_ended")
            && kinds.contains(&"sign_in")
            && kinds.contains(&"sign_in_failed")
            && kinds.contains(&"locked_out"),
        "{kinds:?}"
    );
    let failed = events
        .iter()
        .find(|e| e["event"] == "sign_in_failed")
        .unwrap();
    assert_eq!(
        (
            failed["user"].as_str(),
            failed["client"].as_str(),
            failed["scheme"].as_str()
        ),
        (Some("alice"), Some("127.0.0.1"), Some("basic"))
    );
    let reload = events
        .iter()
        .find(|e| e["event"] == "config_reload")
        .unwrap();
    assert_eq!(reload["result"], "accepted");
    assert_eq!(reload["sha256"].as_str().unwrap().len(), 64);
    for secret in [PW, "s3cr3t-wrong-guess", "$2y$", "YWxpY2U6"] {
        assert!(
            !audit.contains(secret),
            "the audit log contains a secret ({secret}): {audit}"
        );
    }
}

#[test]
fn every_reason_has_an_explanation_page() {
    let (_up, gw) = start(&config("\"/public/**\"", ""));
    let rt = runtime();
    rt.block_on(async {
        let c = client();
        let r = c
            .get(gw.url("/.portcullis/problems/rate_limit"))
            .header("accept", "text/html")
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            200,
            "the explanation of a refusal is not itself refused"
        );
        let html = r.text().await.unwrap();
        assert!(
            html.contains("Too many requests") && html.contains("What you can do"),
            "{html}"
        );
        let r = c
            .get(gw.url("/.portcullis/problems/no_such_reason"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        assert!(
            r.text().await.unwrap().contains("logon_failed"),
            "the 404 lists the known reasons"
        );
    });
}

#[test]
fn operational_log_is_json_with_log_format_json_and_filtered_by_rust_log() {
    let dir = dir_with_user("alice", PW);
    let port = free_port();
    std::fs::write(
        dir.path().join("portcullis.toml"),
        format!("[server]\nlisten = \"127.0.0.1:{port}\"\nupstream = \"http://127.0.0.1:9\"\n[auth]\nusers = \"users.htpasswd\"\n[log]\naccess = \"off\"\n"),
    )
    .unwrap();
    let run = |filter: &str| {
        let log = dir.path().join(format!("stderr-{filter}.log"));
        let mut child = std::process::Command::new(BIN)
            .args(["serve", "--log-format", "json", "-c"])
            .arg(dir.path().join("portcullis.toml"))
            .env("RUST_LOG", filter)
            .stderr(std::fs::File::create(&log).unwrap())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // The port is bound before the server is fully up: an answered request proves it is
        // (and that the start-up lines, if any, were written).
        wait_for_port(
            format!("127.0.0.1:{port}").parse().unwrap(),
            Duration::from_secs(10),
        );
        eventually(Duration::from_secs(10), "an answer", || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
            s.write_all(b"GET /x HTTP/1.0\r\n\r\n").ok()?;
            let mut buf = [0u8; 12];
            s.read_exact(&mut buf).ok()?;
            buf.starts_with(b"HTTP/1.0 401").then_some(())
        });
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let _ = child.wait();
        std::fs::read_to_string(&log).unwrap()
    };
    let info = run("info");
    let lines: Vec<serde_json::Value> = info
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines.iter().any(|l| l["fields"]["message"] == "listening"),
        "{info}"
    );
    assert!(
        lines
            .iter()
            .all(|l| l["level"].is_string() && l["timestamp"].is_string())
    );
    assert!(
        run("warn").lines().all(|l| !l.contains("\"INFO\"")),
        "RUST_LOG=warn filters info lines out"
    );
}
