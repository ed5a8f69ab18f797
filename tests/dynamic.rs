//! Dynamic IP restrictions and logon lockout end to end (memory backend): rate and concurrency
//! limits with every way out of an in-flight slot, logging-only mode, bans and `portcullis bans`.

mod util;

use std::time::Duration;

use util::*;

const PW: &str = "right-pw";

fn start(extra: &str, upstream_timeout: &str) -> (TestUpstream, Gateway) {
    let upstream = TestUpstream::start();
    let dir = dir_with_user("alice", PW);
    let config = SiteConfig::new()
        .server(&format!("upstream_timeout = \"{upstream_timeout}\""))
        .auth("public = [\"/public/**\", \"/slow\", \"/download\", \"/sleep/**\"]")
        .raw(extra)
        .build();
    let gw = Gateway::start_in(dir, &config, upstream.addr);
    (upstream, gw)
}

async fn get(c: &reqwest::Client, url: &str) -> (u16, Option<String>, serde_json::Value) {
    let r = c
        .get(url)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let body: serde_json::Value =
        serde_json::from_str(&r.text().await.unwrap()).unwrap_or_default();
    (status, retry, body)
}

#[test]
fn rate_limit_refuses_with_502_and_retry_after() {
    let (_up, gw) = start(
        "[dynamic]\ndeny_by_rate = { enabled = true, max_requests = 3, interval = \"1h\" }",
        "5s",
    );
    runtime().block_on(async {
        let c = client();
        for _ in 0..3 {
            assert_eq!(get(&c, &gw.url("/public/a")).await.0, 200);
        }
        let (status, retry, p) = get(&c, &gw.url("/public/a")).await;
        assert_eq!(
            (status, p["substatus"].as_u64(), p["reason"].as_str()),
            (403, Some(502), Some("rate_limit"))
        );
        let retry: u64 = retry.expect("Retry-After").parse().unwrap();
        assert!(
            (1..=1200).contains(&retry),
            "one request is regained every 20 minutes: {retry}"
        );
    });
    let (_up, gw) = start(
        "[dynamic]\ndeny_by_rate = { enabled = true, max_requests = 1, interval = \"1h\" }\ndeny_action = \"too_many_requests\"",
        "5s",
    );
    runtime().block_on(async {
        let c = client();
        assert_eq!(get(&c, &gw.url("/public/a")).await.0, 200);
        let (status, retry, p) = get(&c, &gw.url("/public/a")).await;
        assert_eq!((status, p["substatus"].as_u64()), (429, Some(502)));
        assert!(retry.is_some());
    });
}

#[test]
fn logging_only_serves_everything_and_logs_the_would_be_substatus() {
    let (_up, gw) = start(
        "[dynamic]\ndeny_by_rate = { enabled = true, max_requests = 1, interval = \"1h\" }\nlogging_only = true",
        "5s",
    );
    runtime().block_on(async {
        let c = client();
        for _ in 0..3 {
            assert_eq!(get(&c, &gw.url("/public/a")).await.0, 200);
        }
    });
    let log = eventually(Duration::from_secs(5), "two 200.502 lines", || {
        let log = std::fs::read_to_string(gw.path("access.log")).ok()?;
        (log.matches(" 200 502 0 ").count() == 2).then_some(log)
    });
    assert_eq!(log.matches(" 200 0 0 ").count(), 1, "{log}");
}

#[test]
fn concurrency_slots_are_released_on_every_way_out() {
    const LIMIT: &str = "[dynamic]\ndeny_by_concurrent = { enabled = true, max_concurrent = 2 }";
    // Long upstream timeout: the hung requests below must stay in flight until we drop them.
    let (_up, gw) = start(LIMIT, "1h");
    let (_up2, gw_fast) = start(LIMIT, "2s");
    let rt = runtime();
    rt.block_on(async {
        let c = client();
        // Way out 1: the response body ends.
        for _ in 0..5 {
            let r = c.get(gw.url("/download?mb=2")).send().await.unwrap();
            assert_eq!(r.bytes().await.unwrap().len(), 2 << 20);
        }
        // Way out 2: the client disconnects while the upstream is still thinking. Two requests
        // hang on /slow; one answered early was refused while a slot of the previous step was
        // still being released, so it is sent again until both hang.
        let slow = gw.url("/slow");
        let spawn_hung = || {
            let url = slow.clone();
            tokio::spawn(async move { reqwest::Client::new().get(url).send().await })
        };
        let mut hung = vec![spawn_hung(), spawn_hung()];
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            for h in hung.iter_mut() {
                if h.is_finished() {
                    *h = spawn_hung();
                }
            }
            // Both slots taken: a third request is refused.
            if get(&c, &gw.url("/public/x")).await.0 == 403 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the hung requests never held both slots"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let (_, _, p) = get(&c, &gw.url("/public/x")).await;
        assert_eq!(p["substatus"], 501);
        for h in hung {
            h.abort();
        }
        eventually_async(|| async { (get(&c, &gw.url("/public/x")).await.0 == 200).then_some(()) })
            .await;
        // Way out 3: the upstream fails (times out: 504).
        let a = c.get(gw_fast.url("/slow")).send();
        let b = c.get(gw_fast.url("/slow")).send();
        let (a, b) = tokio::join!(a, b);
        assert_eq!(
            (a.unwrap().status().as_u16(), b.unwrap().status().as_u16()),
            (504, 504)
        );
        eventually_async(|| async {
            (get(&c, &gw_fast.url("/public/x")).await.0 == 200).then_some(())
        })
        .await;
    });
}

async fn eventually_async<T, F: std::future::Future<Output = Option<T>>>(
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "condition not reached in 10 s"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[test]
fn repeated_failures_lock_out_address_and_user_and_bans_can_be_cleared() {
    let admin = free_port();
    let (_up, gw) = start(
        &format!(
            "[logon]\nmax_failures = 3\nfind_time = \"10m\"\nban_time = \"1h\"\n\n[admin]\nlisten = \"127.0.0.1:{admin}\""
        ),
        "5s",
    );
    let rt = runtime();
    rt.block_on(async {
        let c = client();
        let login = |pw: &'static str| {
            let c = c.clone();
            let url = gw.url("/private");
            async move {
                let r = c
                    .get(url)
                    .basic_auth("alice", Some(pw))
                    .header("accept", "application/json")
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                let retry = r.headers().contains_key("retry-after");
                let p: serde_json::Value =
                    serde_json::from_str(&r.text().await.unwrap()).unwrap_or_default();
                (status, p["substatus"].as_u64(), retry)
            }
        };
        assert_eq!(login(PW).await.0, 200);
        for _ in 0..3 {
            assert_eq!(login("guess").await.0, 401);
        }
        assert_eq!(
            login(PW).await,
            (403, Some(505), true),
            "locked out even with the right password"
        );
    });
    let bans = |args: &[&str]| cli(&gw, "bans", args).0;
    let listed = bans(&["list"]);
    assert!(
        listed.contains("127.0.0.1") && listed.contains("alice") && listed.contains("3 failed"),
        "{listed}"
    );
    assert!(bans(&["clear", "127.0.0.1"]).contains("1 ban(s) lifted"));
    assert!(bans(&["clear", "alice"]).contains("1 ban(s) lifted"));
    assert!(bans(&["list"]).contains("no active bans"));
    rt.block_on(async {
        let r = client()
            .get(gw.url("/private"))
            .basic_auth("alice", Some(PW))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    });
}
