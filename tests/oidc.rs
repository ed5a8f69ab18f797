//! "Sign in with" a real OpenID Connect provider (PyPI `oidc-provider-mock`, started by the test
//! on a free port): the redirect, the provider's consent form, the callback, the session with
//! the ID token's groups; and every way it must not work (denied at the provider, a tampered
//! state, no flow cookie, a replayed callback, a group not allowed, the provider down).

mod util;

use std::collections::BTreeMap;

use util::oidc_provider::{oidc_config, oidc_site as gateway, start_provider};
use util::*;

/// A browser: a cookie jar per host, no redirects followed.
#[derive(Default)]
struct Jar(BTreeMap<String, String>);

impl Jar {
    fn take(&mut self, r: &reqwest::Response) {
        for v in r.headers().get_all("set-cookie") {
            let text = v.to_str().unwrap();
            let pair = text.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            if text.contains("Max-Age=0") {
                self.0.remove(name);
            } else {
                self.0.insert(name.to_owned(), value.to_owned());
            }
        }
    }

    fn header(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn get(&mut self, url: &str) -> reqwest::Response {
        let mut rb = client().get(url).header("accept", "text/html");
        if !self.0.is_empty() {
            rb = rb.header("cookie", self.header());
        }
        let r = rb.send().await.unwrap();
        self.take(&r);
        r
    }
}

fn location(r: &reqwest::Response) -> String {
    r.headers()
        .get("location")
        .unwrap_or_else(|| panic!("no Location in a {}", r.status()))
        .to_str()
        .unwrap()
        .to_owned()
}

/// At the provider: the consent form answered (`allow` as sub, or `deny`); the callback URL.
async fn at_provider(authorize: &str, sub: Option<&str>) -> String {
    let page = client().get(authorize).send().await.unwrap();
    assert_eq!(page.status(), 200, "the provider's form");
    let form = match sub {
        Some(sub) => format!("sub={}", encode(sub)),
        None => "action=deny".to_owned(),
    };
    let r = client()
        .post(authorize)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_redirection(), "{}", r.status());
    location(&r)
}

/// A whole sign-in from `gw`'s start page: at the provider as `sub` (or denying), then the
/// gateway's answer at its callback.
async fn through_provider(b: &mut Jar, gw: &Gateway, sub: Option<&str>) -> reqwest::Response {
    let r = b.get(&gw.url("/.portcullis/oidc/login?rd=/x")).await;
    let callback = at_provider(&location(&r), sub).await;
    b.get(&gw.url(path_of(&callback))).await
}

/// The path and query of `url` (the callback is the gateway's).
fn path_of(url: &str) -> &str {
    let after = url.split_once("://").map_or(url, |(_, r)| r);
    &after[after.find('/').unwrap()..]
}

#[test]
fn sign_in_with_an_openid_connect_provider() {
    let provider = start_provider();
    let issuer = format!("http://127.0.0.1:{}", provider.port);
    let (_up, gw) = gateway(&issuer, "");
    runtime().block_on(async {
        // An API client is not sent anywhere: 401 with the challenge.
        let r = client()
            .get(gw.url("/admin/x"))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        assert!(
            r.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Cookie")
        );

        // A browser: to the sign-in page, which goes straight to the provider.
        let mut b = Jar::default();
        let r = b.get(&gw.url("/admin/x")).await;
        assert_eq!(r.status(), 302);
        let login = location(&r);
        let r = b.get(&gw.url(&login)).await;
        assert_eq!(r.status(), 303, "{login}");
        let start = location(&r);
        assert!(start.contains("/oidc/login?rd=%2Fadmin%2Fx"), "{start}");
        let r = b.get(&gw.url(&start)).await;
        assert_eq!(r.status(), 303);
        let authorize = location(&r);
        assert!(
            authorize.starts_with(&format!("{issuer}/oauth2/authorize?")),
            "{authorize}"
        );
        for part in [
            "code_challenge_method=S256",
            "code_challenge=",
            "nonce=",
            "state=",
            "scope=openid",
        ] {
            assert!(authorize.contains(part), "{part}: {authorize}");
        }
        assert!(b.0.contains_key("portcullis_oidc"), "the flow cookie");

        // At the provider, as alice; back at the callback: a session, then the page.
        let callback = at_provider(&authorize, Some("0f3c-alice")).await;
        let flow_cookie = b.0["portcullis_oidc"].clone();
        let r = b.get(&gw.url(path_of(&callback))).await;
        assert_eq!(r.status(), 303, "{}", r.text().await.unwrap());
        assert_eq!(location(&r), "/admin/x");
        assert!(
            !b.0.contains_key("portcullis_oidc"),
            "the flow cookie is cleared"
        );
        let r = b.get(&gw.url("/admin/x")).await;
        assert_eq!(r.status(), 200);
        let echo: serde_json::Value = r.json().await.unwrap();
        assert_eq!(echo["headers"]["remote-user"], "alice");
        assert_eq!(echo["headers"]["remote-groups"], "admins,staff");
        assert!(
            echo["headers"]
                .get("cookie")
                .is_none_or(|c| !c.as_str().unwrap().contains("portcullis"))
        );

        // The same callback again, with the very flow cookie it came with (a replay): the
        // provider takes a code once, so no second session.
        let mut replay = Jar::default();
        replay
            .0
            .insert("portcullis_oidc".into(), flow_cookie.clone());
        let r = replay.get(&gw.url(path_of(&callback))).await;
        assert_eq!(r.status(), 401);
        assert!(!replay.0.keys().any(|k| k.contains("session")));
        // A flow cookie with its MAC broken: refused.
        let mut forged = Jar::default();
        forged
            .0
            .insert("portcullis_oidc".into(), format!("{flow_cookie}x"));
        assert_eq!(forged.get(&gw.url(path_of(&callback))).await.status(), 401);

        // A state that is not this browser's: refused, with the challenge.
        let mut c = Jar::default();
        let r = c.get(&gw.url("/.portcullis/oidc/login?rd=/x")).await;
        let authorize = location(&r);
        let callback = at_provider(&authorize, Some("0f3c-alice")).await;
        let tampered = path_of(&callback).replace("state=", "state=x");
        let r = c.get(&gw.url(&tampered)).await;
        assert_eq!(r.status(), 401);
        assert!(r.headers().contains_key("www-authenticate"));
        // Without the flow cookie (another browser): refused.
        let r = Jar::default().get(&gw.url(path_of(&callback))).await;
        assert_eq!(r.status(), 401);

        // Denied at the provider: its words on the page, 401, nobody signed in.
        let mut d = Jar::default();
        let r = d.get(&gw.url("/.portcullis/oidc/login?rd=/x")).await;
        let callback = at_provider(&location(&r), None).await;
        assert!(callback.contains("error=access_denied"), "{callback}");
        let r = d.get(&gw.url(path_of(&callback))).await;
        assert_eq!(r.status(), 401);
        let page = r.text().await.unwrap();
        assert!(
            page.contains("access_denied"),
            "{callback}\n{page}\n{}",
            gw.stderr()
        );
        assert!(page.contains("Example ID said"), "{page}");
    });
    let log = std::fs::read_to_string(gw.path("access.log")).unwrap();
    assert!(
        !log.contains("code="),
        "the provider's code never reaches the access log"
    );
    assert!(log.contains(" 401 1 "), "{log}");
}

#[test]
fn allowed_groups_and_an_unreachable_provider() {
    let provider = start_provider();
    let issuer = format!("http://127.0.0.1:{}", provider.port);
    let (_up, gw) = gateway(&issuer, "allowed_groups = [\"auditors\"]");
    let dead = free_port();
    let (_up2, down) = gateway(&format!("http://127.0.0.1:{dead}"), "");
    runtime().block_on(async {
        // Signed in at the provider, but not in an allowed group: 403, saying so.
        let mut b = Jar::default();
        let r = through_provider(&mut b, &gw, Some("0f3c-alice")).await;
        assert_eq!(r.status(), 403);
        let page = r.text().await.unwrap();
        assert!(
            page.contains("auditors") && page.contains("alice"),
            "{page}"
        );
        assert_eq!(b.get(&gw.url("/x")).await.status(), 302, "no session");

        // The provider does not answer: 503 with Retry-After, not a redirect loop.
        let r = Jar::default()
            .get(&down.url("/.portcullis/oidc/login?rd=/x"))
            .await;
        assert_eq!(r.status(), 503);
        assert!(r.headers().contains_key("retry-after"));
        assert!(r.text().await.unwrap().contains("could not be reached"));
    });
}

#[test]
fn check_config_wants_the_oidc_section_and_a_public_url() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("users.htpasswd"), "").unwrap();
    let (code, out) = check_config(
        dir.path(),
        "[server]\nupstream = \"http://127.0.0.1:9\"\n[auth]\nusers = \"users.htpasswd\"\nschemes = [\"oidc\"]\n[oidc]\nissuer = \"http://id.example.com\"\nclient_id = \"x\"\nclient_secret_file = \"missing\"\n",
    );
    assert_eq!(code, Some(64), "{out}");
    for needle in [
        "oidc.issuer",
        "oidc.client_secret_file",
        "portal.public_url",
    ] {
        assert!(out.contains(needle), "{needle}: {out}");
    }
}

#[test]
fn beside_the_form_the_sign_in_page_offers_the_provider() {
    let provider = start_provider();
    let issuer = format!("http://127.0.0.1:{}", provider.port);
    let (_up, both) = {
        let upstream = TestUpstream::start();
        let dir = dir_with_user("carol", "carol-pw");
        std::fs::write(dir.path().join("oidc-secret"), "s3cret\n").unwrap();
        let config = SiteConfig::new()
            .auth("schemes = [\"form\", \"oidc\"]")
            .section("portal", "public_url = \"http://@LISTEN@\"")
            .section(
                "oidc",
                &format!("name = \"Example ID\"\nissuer = \"{issuer}\"\nclient_id = \"portcullis\"\nclient_secret_file = \"oidc-secret\""),
            );
        let gw = Gateway::start_in(dir, &config.build(), upstream.addr);
        (upstream, gw)
    };
    let (_up2, only) = gateway(&issuer, "");
    runtime().block_on(async {
        let mut b = util::browser::Browser::new(&both.url(""));
        let page = b.get("/.portcullis/login?rd=%2Fapp").await;
        assert_eq!(page.status, 200);
        assert!(
            page.body.contains("Sign in with Example ID"),
            "{}",
            page.body
        );
        assert!(
            util::browser::unescape(&page.body).contains("/.portcullis/oidc/login?rd=%2Fapp"),
            "{}",
            page.body
        );
        // The password still works there.
        let signed = b.sign_in("carol", "carol-pw", "/app").await;
        assert_eq!(signed.status, 303, "{}", signed.body);
        // One challenge for both ways in: the form's.
        let r = client().get(both.url("/x")).send().await.unwrap();
        assert_eq!(r.headers().get_all("www-authenticate").iter().count(), 1);

        // With only the provider, a password posted to the sign-in page is not taken.
        let r = client()
            .post(only.url("/.portcullis/login"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("username=alice&password=x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405);
    });
}

#[test]
fn a_local_name_is_not_taken_over_and_signing_out_does_not_sign_back_in() {
    let provider = start_provider();
    let issuer = format!("http://127.0.0.1:{}", provider.port);
    // auth.users has an "alice" of its own.
    let upstream = TestUpstream::start();
    let dir = dir_with_user("alice", "local-pw");
    std::fs::write(dir.path().join("oidc-secret"), "s3cret\n").unwrap();
    let local = Gateway::start_in(dir, &oidc_config(&issuer, "").build(), upstream.addr);
    let (_up, gw) = gateway(&issuer, "");
    runtime().block_on(async {
        let mut b = Jar::default();
        let r = through_provider(&mut b, &local, Some("0f3c-alice")).await;
        assert_eq!(r.status(), 403);
        assert!(
            r.text()
                .await
                .unwrap()
                .contains("belongs to an account of this site")
        );
        assert!(!b.0.keys().any(|k| k.contains("session")));

        // Signed out on an oidc-only site: the sign-in page offers the provider, it does not
        // send the browser back there (the provider would sign it straight back in).
        let r = Jar::default()
            .get(&gw.url("/.portcullis/login?rd=%2F&signed_out=1"))
            .await;
        assert_eq!(r.status(), 200);
        let page = r.text().await.unwrap();
        assert!(page.contains("Sign in with Example ID"), "{page}");
        assert!(
            !page.contains("name=\"password\""),
            "no password form: {page}"
        );
    });
}

#[test]
fn a_disabled_local_user_s_name_is_not_taken_over_either() {
    let provider = start_provider();
    let issuer = format!("http://127.0.0.1:{}", provider.port);
    let upstream = TestUpstream::start();
    let config = oidc_config(&issuer, "").auth("users = \"sqlite:users.db\"");
    let gw = Gateway::start(
        &config.build(),
        upstream.addr,
        &[("oidc-secret", "s3cret\n")],
    );
    let file = gw.path("import.htpasswd");
    htpasswd(&file, &["-B", "-C", "4"], "alice", "local-pw");
    cli(&gw, "users", &["import", file.to_str().unwrap()]);
    cli(&gw, "users", &["disable", "alice"]);
    runtime().block_on(async {
        let mut b = Jar::default();
        let r = through_provider(&mut b, &gw, Some("0f3c-alice")).await;
        assert_eq!(r.status(), 403);
        assert!(
            r.text()
                .await
                .unwrap()
                .contains("belongs to an account of this site")
        );
    });
}
