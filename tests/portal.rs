//! The sign-in portal (`auth.schemes` with `form`) end to end: the real binary, a real upstream,
//! a cookie-keeping client that behaves like a browser, and the access and audit logs.

mod util;

use std::time::Duration;

use util::browser::Browser;
use util::*;

use util::portal::portal_config;

fn start(config: &str) -> (TestUpstream, Gateway) {
    util::portal::start_portal(config)
}

fn base(gw: &Gateway) -> String {
    format!("http://{}", gw.addr)
}

#[test]
fn a_browser_signs_in_through_the_form_and_out_again() {
    let (_up, gw) = start(&portal_config().build());
    runtime().block_on(async {
        let mut b = Browser::new(&base(&gw));
        // No session: the browser is sent to the sign-in page, with where it was going.
        let first = b.get("/app/page?x=1&y=2").await;
        assert_eq!(first.status, 302);
        assert_eq!(
            first.header("location"),
            Some("/.portcullis/login?rd=%2Fapp%2Fpage%3Fx%3D1%26y%3D2")
        );
        let form = b.get(first.header("location").unwrap()).await;
        assert_eq!(form.status, 200);
        assert_eq!(form.header("cache-control"), Some("no-store"));
        assert!(form.body.contains(r#"autocomplete="username""#));
        assert!(form.body.contains(r#"autocomplete="current-password""#));
        assert!(form.body.contains(r#"<label for="password">"#));
        assert_eq!(form.field("rd").as_deref(), Some("/app/page?x=1&y=2"));
        let csrf = form.field("csrf").unwrap();

        // A wrong password: the form again, 401 with the challenges, the user name kept.
        let wrong = b
            .post(
                "/.portcullis/login",
                &[
                    ("csrf", &csrf),
                    ("rd", "/app/page?x=1&y=2"),
                    ("username", "alice"),
                    ("password", "not-it"),
                ],
            )
            .await;
        assert_eq!(wrong.status, 401);
        // Only the form's challenge on a page: a Basic one would make the browser open its own
        // password prompt instead of showing the page (API clients get both, below).
        assert_eq!(
            wrong.all("www-authenticate"),
            vec![r#"Cookie realm="Restricted area", form-action="/.portcullis/login""#.to_owned()]
        );
        assert!(wrong.body.contains("was not accepted"), "{}", wrong.body);
        assert!(wrong.body.contains(r#"value="alice""#));
        assert!(!b.jar.keys().any(|k| k.contains("session")));

        // The right one: a session cookie and back to where the browser was going.
        let ok = b
            .post(
                "/.portcullis/login",
                &[
                    ("csrf", &csrf),
                    ("rd", "/app/page?x=1&y=2"),
                    ("username", "alice"),
                    ("password", "wonderland-42"),
                ],
            )
            .await;
        assert_eq!(ok.status, 303, "{}", ok.body);
        assert_eq!(ok.header("location"), Some("/app/page?x=1&y=2"));
        let session_cookie = b
            .last_set_cookies
            .iter()
            .find(|c| c.starts_with("portcullis_session="))
            .expect("a session cookie")
            .clone();
        assert!(session_cookie.contains("HttpOnly"), "{session_cookie}");
        assert!(session_cookie.contains("SameSite=Lax"));
        assert!(session_cookie.contains("Path=/"));
        assert!(
            !session_cookie.contains("Secure"),
            "plain HTTP: {session_cookie}"
        );
        let id = b.jar["portcullis_session"].clone();
        assert_eq!(id.len(), 43);

        let app = b.get("/app/page?x=1&y=2").await;
        assert_eq!(app.status, 200, "{}", app.body);
        let echo: serde_json::Value = serde_json::from_str(&app.body).unwrap();
        assert_eq!(echo["headers"]["remote-user"], "alice");
        // Portcullis's cookies are its own: the application never sees them, others pass.
        assert!(echo["headers"].get("cookie").is_none(), "{echo}");
        b.jar.insert("app_pref".into(), "dark".into());
        let app = b.get("/app/page?x=1&y=2").await;
        let echo: serde_json::Value = serde_json::from_str(&app.body).unwrap();
        assert_eq!(echo["headers"]["cookie"], "app_pref=dark", "{echo}");
        b.jar.remove("app_pref");

        // The sign-in page, signed in: no redirect (no loop), "signed in as" and a way out.
        let again = b.get("/.portcullis/login?rd=/app").await;
        assert_eq!(again.status, 200);
        assert!(again.body.contains("signed in as <strong>alice</strong>"));

        // Sign out: the session ends on the server, cookies and cache are cleared.
        let token = again.field("csrf").unwrap();
        let out = b
            .post("/.portcullis/logout", &[("csrf", &token), ("rd", "/app")])
            .await;
        assert_eq!(out.status, 303);
        assert_eq!(
            out.header("location"),
            Some("/.portcullis/login?rd=%2Fapp&signed_out=1")
        );
        assert_eq!(out.header("clear-site-data"), Some(r#""cache", "cookies""#));
        assert!(b.jar.is_empty());
        let bye = b.get(out.header("location").unwrap()).await;
        assert!(bye.body.contains("You are signed out."));

        // The old id, replayed, is worth nothing: the session was ended server-side.
        let mut thief = Browser::new(&base(&gw));
        thief.jar.insert("portcullis_session".into(), id);
        let replay = thief.get("/app").await;
        assert_eq!(replay.status, 302);
        assert_eq!(
            replay.header("location"),
            Some("/.portcullis/login?rd=%2Fapp&ended=1")
        );
    });
    let log = std::fs::read_to_string(gw.path("access.log")).unwrap();
    assert!(
        log.lines().any(|l| l.contains("POST /.portcullis/login - ")
            && l.contains(" alice ")
            && l.contains(" 401 1 ")),
        "{log}"
    );
    assert!(
        log.lines().any(|l| l.contains("GET /app/page x=1&y=2 ")
            && l.contains(" alice ")
            && l.contains(" 200 0 ")),
        "{log}"
    );
    let audit = std::fs::read_to_string(gw.path("audit.log")).unwrap();
    assert!(
        audit.contains(r#""event":"sign_in""#) && audit.contains(r#""scheme":"form""#),
        "{audit}"
    );
    assert!(audit.contains(r#""event":"sign_out""#), "{audit}");
    assert!(!audit.contains("wonderland-42"));
}

#[test]
fn api_clients_get_401_with_every_challenge_and_basic_still_works() {
    let (_up, gw) = start(&portal_config().build());
    runtime().block_on(async {
        let c = client();
        // A favicon fetched with a browser's image Accept is not sent to the sign-in page.
        let r = c
            .get(gw.url("/favicon.ico"))
            .header(
                "accept",
                "image/avif,image/webp,image/apng,image/*,*/*;q=0.8",
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        for accept in [None, Some("application/json"), Some("*/*")] {
            let mut req = c.get(gw.url("/app"));
            if let Some(a) = accept {
                req = req.header("accept", a);
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 401, "{accept:?}");
            assert_eq!(r.headers().get_all("www-authenticate").iter().count(), 2);
        }
        // A browser POST (a form submitted after the session ended) is not redirected: its body
        // would be lost. It gets the 401 page with a sign-in link.
        let r = c
            .post(gw.url("/app/save"))
            .header("accept", "text/html")
            .body("x=1")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers().get_all("www-authenticate").iter().count(), 1);
        let body = util::browser::unescape(&r.text().await.unwrap());
        assert!(
            body.contains(r#"href="/.portcullis/login?rd=%2Fapp%2Fsave""#),
            "{body}"
        );
        let r = c
            .get(gw.url("/app"))
            .basic_auth("alice", Some("wonderland-42"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    });
}

#[test]
fn return_targets_never_leave_the_site() {
    let (_up, gw) = start(&portal_config().build());
    runtime().block_on(async {
        for rd in [
            "https://evil.example/",
            "//evil.example/",
            "/\\evil.example",
            "/%2F%2Fevil.example",
            "/%5Cevil.example",
            "%2F%2Fevil.example",
            "http:evil.example",
            "/.portcullis/login",
        ] {
            let mut b = Browser::new(&base(&gw));
            let r = b.sign_in("alice", "wonderland-42", rd).await;
            assert_eq!(r.status, 303, "{rd}");
            assert_eq!(r.header("location"), Some("/"), "{rd}");
        }
    });
}

#[test]
fn csrf_and_origin_checks_refuse_forgeries_without_trapping_anyone() {
    let (_up, gw) = start(&portal_config().build());
    runtime().block_on(async {
        // No pre-session cookie (a forged cross-site form): refused, the form comes back with a
        // fresh token and a message, and that form works.
        let mut b = Browser::new(&base(&gw));
        let forged = b
            .post(
                "/.portcullis/login",
                &[
                    ("csrf", "x"),
                    ("username", "alice"),
                    ("password", "wonderland-42"),
                ],
            )
            .await;
        assert_eq!(forged.status, 400);
        assert!(forged.body.contains("had expired"), "{}", forged.body);
        assert!(!b.jar.contains_key("portcullis_session"));
        let csrf = forged.field("csrf").unwrap();
        let retry = b
            .post(
                "/.portcullis/login",
                &[
                    ("csrf", &csrf),
                    ("username", "alice"),
                    ("password", "wonderland-42"),
                ],
            )
            .await;
        assert_eq!(retry.status, 303, "{}", retry.body);

        // A valid token but posted from another site's page.
        let mut b = Browser::new(&base(&gw));
        let form = b.get("/.portcullis/login").await;
        let csrf = form.field("csrf").unwrap();
        let cross = b
            .post_from(
                "/.portcullis/login",
                &[
                    ("csrf", &csrf),
                    ("username", "alice"),
                    ("password", "wonderland-42"),
                ],
                Some("https://evil.example"),
            )
            .await;
        assert_eq!(cross.status, 403);
        assert!(cross.body.contains("another site"));
        assert!(!b.jar.contains_key("portcullis_session"));

        // Sign-out needs the token too; without it, a page with a working button.
        let mut b = Browser::new(&base(&gw));
        assert_eq!(b.sign_in("alice", "wonderland-42", "/").await.status, 303);
        let forged = b.post("/.portcullis/logout", &[("csrf", "nope")]).await;
        assert_eq!(forged.status, 400);
        assert_eq!(b.get("/app").await.status, 200, "still signed in");
        let token = forged.field("csrf").unwrap();
        let out = b.post("/.portcullis/logout", &[("csrf", &token)]).await;
        assert_eq!(out.status, 303);

        // An oversized form: 413 and a page, nothing else happens.
        let big = "x".repeat(64 * 1024);
        let r = b
            .post(
                "/.portcullis/login",
                &[("csrf", &big), ("username", "alice")],
            )
            .await;
        assert_eq!(r.status, 413);
        assert!(r.body.contains("nothing was saved"));
    });
}

#[test]
fn a_stale_or_tampered_cookie_lands_on_the_sign_in_page_once_and_is_cleared() {
    let (_up, gw) = start(&portal_config().build());
    runtime().block_on(async {
        for stale in [
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", // well-formed, unknown
            "tampered!",                                   // not ours at all
        ] {
            let mut b = Browser::new(&base(&gw));
            b.jar.insert("portcullis_session".into(), stale.into());
            let (page, hops) = b.follow("/app/report").await;
            assert_eq!(
                hops,
                vec!["/.portcullis/login?rd=%2Fapp%2Freport&ended=1"],
                "{stale}"
            );
            assert_eq!(page.status, 200);
            assert!(page.body.contains("Your session ended"), "{}", page.body);
            assert!(
                !b.jar.contains_key("portcullis_session"),
                "cleared: {:?}",
                b.jar
            );
            // Signing in from there goes back to the page, and it opens.
            let csrf = page.field("csrf").unwrap();
            let rd = page.field("rd").unwrap();
            let r = b
                .post(
                    "/.portcullis/login",
                    &[
                        ("csrf", &csrf),
                        ("rd", &rd),
                        ("username", "alice"),
                        ("password", "wonderland-42"),
                    ],
                )
                .await;
            assert_eq!(r.header("location"), Some("/app/report"));
            let (page, hops) = b.follow("/app/report").await;
            assert!(hops.is_empty());
            assert_eq!(page.status, 200);
        }
    });
}

#[test]
fn a_signed_in_user_denied_by_a_rule_gets_403_and_can_switch_account() {
    let (_up, gw) = start(&portal_config().build());
    runtime().block_on(async {
        let mut b = Browser::new(&base(&gw));
        assert_eq!(
            b.sign_in("bob", "builder-of-things", "/admin/panel")
                .await
                .status,
            303
        );
        let (denied, hops) = b.follow("/admin/panel").await;
        assert!(
            hops.is_empty(),
            "no trip back to the sign-in page: {hops:?}"
        );
        assert_eq!(denied.status, 403);
        assert!(
            denied
                .body
                .contains("signed in as <strong>bob</strong>, who may not open this page"),
            "{}",
            denied.body
        );
        assert!(denied.body.contains("Sign in as someone else"));
        assert!(denied.header("www-authenticate").is_none());
        // The switch button: sign out, then the sign-in page returns to the denied page.
        let token = denied.field("csrf").unwrap();
        let rd = denied.field("rd").unwrap();
        assert_eq!(rd, "/admin/panel");
        let out = b
            .post("/.portcullis/logout", &[("csrf", &token), ("rd", &rd)])
            .await;
        assert_eq!(
            out.header("location"),
            Some("/.portcullis/login?rd=%2Fadmin%2Fpanel&signed_out=1")
        );
        let r = b.sign_in("alice", "wonderland-42", "/admin/panel").await;
        assert_eq!(r.header("location"), Some("/admin/panel"));
        assert_eq!(b.get("/admin/panel").await.status, 200);
    });
    let log = std::fs::read_to_string(gw.path("access.log")).unwrap();
    assert!(
        log.lines().any(|l| l.contains("GET /admin/panel - ")
            && l.contains(" bob ")
            && l.contains(" 403 3 ")),
        "{log}"
    );
}

#[test]
fn sessions_end_when_idle_and_failed_sign_ins_lock_out() {
    let config = portal_config()
        .section("portal", "idle_timeout = \"1s\"")
        .section("portal", "max_age = \"1h\"")
        .build();
    let (_up, gw) = start(&config);
    runtime().block_on(async {
        let mut b = Browser::new(&base(&gw));
        assert_eq!(b.sign_in("alice", "wonderland-42", "/").await.status, 303);
        assert_eq!(b.get("/app").await.status, 200);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let r = b.get("/app").await;
        assert_eq!(r.status, 302);
        assert_eq!(
            r.header("location"),
            Some("/.portcullis/login?rd=%2Fapp&ended=1")
        );

        // Three wrong passwords (logon.max_failures = 3): the fourth try, even right, is refused
        // with a wait.
        let mut b = Browser::new(&base(&gw));
        for _ in 0..3 {
            assert_eq!(b.sign_in("bob", "wrong", "/").await.status, 401);
        }
        let locked = b.sign_in("bob", "builder-of-things", "/").await;
        assert_eq!(locked.status, 403, "{}", locked.body);
        assert!(locked.header("retry-after").is_some());
        assert!(locked.body.contains("blocked for a while"));
    });
}

#[test]
fn behind_an_https_proxy_the_cookies_are_host_only_and_secure() {
    let config = portal_config()
        .server("trusted_proxies = [\"127.0.0.1/32\"]")
        .build();
    let (_up, gw) = start(&config);
    runtime().block_on(async {
        let c = client();
        let login = c
            .get(gw.url("/.portcullis/login"))
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-for", "203.0.113.5")
            .send()
            .await
            .unwrap();
        let set = login.headers()["set-cookie"].to_str().unwrap().to_owned();
        assert!(set.starts_with("__Host-portcullis-csrf="), "{set}");
        assert!(set.contains("; Secure") && set.contains("Path=/"), "{set}");
        let pre = set.split(';').next().unwrap().to_owned();
        let body = login.text().await.unwrap();
        let marker = r#"name="csrf" value=""#;
        let start = body.find(marker).unwrap() + marker.len();
        let csrf = &body[start..start + body[start..].find('"').unwrap()];
        let r = c
            .post(gw.url("/.portcullis/login"))
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-for", "203.0.113.5")
            .header("origin", format!("https://{}", gw.addr))
            .header("cookie", pre)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("csrf={csrf}&username=alice&password=wonderland-42"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303);
        let session = r
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .find(|c| c.starts_with("__Host-portcullis="))
            .expect("a __Host- session cookie");
        assert!(session.contains("; Secure"), "{session}");
        // Over HTTPS only the __Host- cookie counts: a plain-named one (which a sibling
        // subdomain could plant with Domain=) neither replaces it nor ends it.
        let id = session.split(';').next().unwrap().to_owned();
        let r = c
            .get(gw.url("/app"))
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-for", "203.0.113.5")
            .header("accept", "text/html")
            .header(
                "cookie",
                format!("portcullis_session={}; {id}", "A".repeat(43)),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let echo: serde_json::Value = r.json().await.unwrap();
        assert_eq!(echo["headers"]["remote-user"], "alice");
    });
}

#[test]
fn sessions_are_shared_by_instances_on_one_redis() {
    let redis = RedisServer::start();
    let config = portal_config()
        .section("state", &format!("backend = \"{}\"", redis.url()))
        .build();
    let (_up, a) = start(&config);
    // The same user file on both instances, as a deployment has (a session also checks that
    // the password hash it began with is still the user's).
    let b_dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        a.path("users.htpasswd"),
        b_dir.path().join("users.htpasswd"),
    )
    .unwrap();
    let b_gw = Gateway::start_in(b_dir, &config, _up.addr);
    runtime().block_on(async {
        let mut on_a = Browser::new(&base(&a));
        assert_eq!(
            on_a.sign_in("alice", "wonderland-42", "/").await.status,
            303
        );
        // The same browser (same cookies) reaching the other instance.
        let mut on_b = Browser::new(&base(&b_gw));
        on_b.jar = on_a.jar.clone();
        assert_eq!(on_b.get("/app").await.status, 200);
        // A form served by one instance is accepted by the other (shared CSRF key).
        let page = on_b.get("/.portcullis/login").await;
        let token = page.field("csrf").unwrap();
        on_a.jar = on_b.jar.clone();
        let out = on_a.post("/.portcullis/logout", &[("csrf", &token)]).await;
        assert_eq!(out.status, 303);
        // Signed out on A: B refuses the old cookie too.
        let r = on_b.get("/app").await;
        assert_eq!(r.status, 302);
        assert!(r.header("location").unwrap().ends_with("ended=1"));
    });
}

#[test]
fn a_redis_outage_is_a_clear_503_and_signing_in_works_again_after_it() {
    let mut redis = RedisServer::start();
    let config = portal_config()
        .section("state", &format!("backend = \"{}\"", redis.url()))
        .section("state", "on_backend_error = \"closed\"")
        .build();
    let (_up, gw) = start(&config);
    runtime().block_on(async {
        let mut b = Browser::new(&base(&gw));
        assert_eq!(b.sign_in("alice", "wonderland-42", "/").await.status, 303);
        assert_eq!(b.get("/app").await.status, 200);
        redis.stop();
        // The session cannot be read: 503 with the explanation, not a trip to the sign-in page.
        let down = b.get("/app").await;
        assert_eq!(down.status, 503, "{}", down.body);
        assert!(
            down.body.contains("Temporarily unavailable"),
            "{}",
            down.body
        );
        assert!(
            b.jar.contains_key("portcullis_session"),
            "the cookie is kept"
        );
        redis.restart();
        // This Redis kept no data: once it answers, the session has ended (one redirect, the
        // cookie cleared), and signing in works again.
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        let back = loop {
            let r = b.get("/app").await;
            if r.status != 503 {
                break r;
            }
            assert!(std::time::Instant::now() < deadline, "no recovery");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(back.status, 302);
        assert_eq!(
            back.header("location"),
            Some("/.portcullis/login?rd=%2Fapp&ended=1")
        );
        assert!(!b.jar.contains_key("portcullis_session"));
        assert_eq!(b.sign_in("alice", "wonderland-42", "/").await.status, 303);
        assert_eq!(b.get("/app").await.status, 200);
    });
}

#[test]
fn sessions_end_at_max_age_even_when_in_use() {
    let config = portal_config()
        .section("portal", "idle_timeout = \"2s\"")
        .section("portal", "max_age = \"2s\"")
        .build();
    let (_up, gw) = start(&config);
    runtime().block_on(async {
        let mut b = Browser::new(&base(&gw));
        // Timed from before the sign-in: the session cannot be older than this.
        let started = std::time::Instant::now();
        assert_eq!(b.sign_in("alice", "wonderland-42", "/").await.status, 303);
        let signed_in = started.elapsed();
        // Used every 400 ms, so never idle for long: only the absolute age can end it.
        let ended = loop {
            let asked = started.elapsed();
            let r = b.get("/app").await;
            if r.status != 200 {
                break r;
            }
            // Still in: the gateway saw this request less than max_age (2 s) plus a second of
            // rounding after the session began, which was before `signed_in`.
            assert!(
                asked < signed_in + Duration::from_millis(3200),
                "the session outlived max_age"
            );
            tokio::time::sleep(Duration::from_millis(400)).await;
        };
        // Never before max_age: the session began after `started`.
        assert!(started.elapsed() >= Duration::from_secs(2));
        assert_eq!(ended.status, 302);
        assert_eq!(
            ended.header("location"),
            Some("/.portcullis/login?rd=%2Fapp&ended=1")
        );
    });
}

#[test]
fn a_session_id_planted_before_sign_in_is_never_promoted() {
    let (_up, gw) = start(&portal_config().build());
    runtime().block_on(async {
        // Mallory signs in as bob and plants her session id in Alice's browser.
        let mut mallory = Browser::new(&base(&gw));
        assert_eq!(
            mallory
                .sign_in("bob", "builder-of-things", "/")
                .await
                .status,
            303
        );
        let planted = mallory.jar["portcullis_session"].clone();
        let mut alice = Browser::new(&base(&gw));
        alice
            .jar
            .insert("portcullis_session".into(), planted.clone());
        // Alice signs in (from the sign-in page, which shows she is "bob"; she signs in anyway).
        let form = alice.get("/.portcullis/login").await;
        let csrf = form.field("csrf").unwrap();
        let r = alice
            .post(
                "/.portcullis/login",
                &[
                    ("csrf", &csrf),
                    ("username", "alice"),
                    ("password", "wonderland-42"),
                ],
            )
            .await;
        assert_eq!(r.status, 303);
        // A new id for Alice; the planted one still belongs to bob, not to Alice.
        assert_ne!(alice.jar["portcullis_session"], planted);
        let echo: serde_json::Value =
            serde_json::from_str(&mallory.get("/app").await.body).unwrap();
        assert_eq!(echo["headers"]["remote-user"], "bob");
        // A form with a field missing: the form again with a message, nothing else happens.
        let form = alice.get("/.portcullis/login").await;
        let csrf = form.field("csrf").unwrap();
        let r = alice
            .post(
                "/.portcullis/login",
                &[("csrf", &csrf), ("username", "alice")],
            )
            .await;
        assert_eq!(r.status, 400);
        assert!(
            r.body
                .contains("Enter both your user name and your password"),
            "{}",
            r.body
        );
    });
}

/// Issue 21.7: a refusal's advice names only what the site offers (this site: the sign-in page
/// and Basic, users in an htpasswd file, so no password reset) and what the reader can do (a
/// program is never told to reload a page or close its windows).
#[test]
fn refusal_advice_fits_the_site_and_the_client() {
    let (_up, gw) = start(&portal_config().build());
    runtime().block_on(async {
        let c = client();
        let browser_only = ["reload", "close all windows", "close the tab", "link below"];
        // curl: no Accept, wrong password, then none.
        for (auth, want) in [
            (Some(("alice", "wrong")), "your program sends"),
            (None, "HTTP Basic"),
        ] {
            let mut req = c.get(gw.url("/app"));
            if let Some((u, p)) = auth {
                req = req.basic_auth(u, Some(p));
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 401);
            let body = r.text().await.unwrap();
            assert!(body.contains(want), "{body}");
            for w in browser_only.iter().chain(&["Forgot your password"]) {
                assert!(!body.contains(w), "{w:?} told to a program: {body}");
            }
        }
        // A browser refused a password gets the sign-in link, and no "Forgot your password?"
        // the sign-in page does not have.
        let r = c
            .get(gw.url("/app"))
            .header("accept", "text/html")
            .basic_auth("alice", Some("wrong"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let body = util::browser::unescape(&r.text().await.unwrap());
        assert!(body.contains("link below"), "{body}");
        assert!(!body.contains("Forgot your password"), "{body}");
    });
}
