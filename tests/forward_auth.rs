//! Forward-auth behind a real nginx (`auth_request`) and a real Caddy (`forward_auth`), with the
//! recipes of docs/recipes/ (the files are read from there, so the docs are what is tested).

mod util;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use util::*;

const PW: &str = "fa-pw";

/// Portcullis as a forward-auth server: nginx/Caddy on loopback are its trusted proxies.
fn portcullis(upstream: SocketAddr, extra: &str) -> Gateway {
    portcullis_with(upstream, r#"["basic"]"#, extra)
}

/// `[forward_auth] headers` for Caddy and Traefik (the header set they overwrite).
const FORWARDED: &str = "[forward_auth]\nheaders = \"forwarded\"\n";

fn portcullis_with(upstream: SocketAddr, schemes: &str, extra: &str) -> Gateway {
    let dir = dir_with_user("alice", PW);
    std::fs::write(dir.path().join("groups.txt"), "admins: alice\n").unwrap();
    let config = SiteConfig::new()
        .without("server", "upstream")
        .server("trusted_proxies = [\"127.0.0.1\"]")
        .auth("realm = \"Forward realm\"")
        .auth(&format!("schemes = {schemes}"))
        .auth("groups = \"groups.txt\"")
        .auth("public = [\"/public/**\"]")
        .raw(extra)
        .build();
    Gateway::start_in(dir, &config, upstream)
}

/// A server process stopped by PID on drop (its temp dir lives as long as it does).
struct Server(Child, #[allow(dead_code)] tempfile::TempDir);

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: nginx's master must stop its workers (a killed master orphans them).
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn render(recipe: &str, vars: &[(&str, String)]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs/recipes")
        .join(recipe);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    vars.iter().fold(text, |t, (k, v)| t.replace(k, v))
}

fn start_nginx(listen: SocketAddr, portcullis: SocketAddr, app: SocketAddr) -> Server {
    let nginx = which("nginx")
        .or_else(|| Some("/usr/sbin/nginx".into()))
        .filter(|p| p.exists())
        .expect("the tests need nginx (Debian package nginx): run scripts/test");
    let dir = tempfile::tempdir().unwrap();
    let site = render(
        "nginx.conf",
        &[
            ("127.0.0.1:8080", listen.to_string()),
            ("127.0.0.1:9091", portcullis.to_string()),
            ("127.0.0.1:3000", app.to_string()),
        ],
    );
    let conf = format!(
        "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{ worker_connections 256; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n{site}\n}}\n",
        d = dir.path().display()
    );
    std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
    let child = Command::new(nginx)
        .args(["-p"])
        .arg(dir.path())
        .args(["-e"])
        .arg(dir.path().join("error.log"))
        .args(["-c"])
        .arg(dir.path().join("nginx.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(listen, Duration::from_secs(10));
    Server(child, dir)
}

fn start_caddy(listen: SocketAddr, portcullis: SocketAddr, app: SocketAddr) -> Server {
    let caddy =
        which("caddy").expect("the tests need caddy (Debian package caddy): run scripts/test");
    let dir = tempfile::tempdir().unwrap();
    let site = render(
        "Caddyfile",
        &[
            ("127.0.0.1:8080", listen.to_string()),
            ("127.0.0.1:9091", portcullis.to_string()),
            ("127.0.0.1:3000", app.to_string()),
        ],
    );
    let conf = format!("{{\n  admin off\n  auto_https off\n}}\n{site}");
    std::fs::write(dir.path().join("Caddyfile"), conf).unwrap();
    let child = Command::new(caddy)
        .args(["run", "--adapter", "caddyfile", "--config"])
        .arg(dir.path().join("Caddyfile"))
        .env("HOME", dir.path())
        .env("XDG_CONFIG_HOME", dir.path())
        .env("XDG_DATA_HOME", dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(listen, Duration::from_secs(15));
    Server(child, dir)
}

fn addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

/// The behaviour both front proxies must show.
fn check_front(front: SocketAddr, gw: &Gateway) {
    runtime().block_on(async {
        let c = client();
        let url = |p: &str| format!("http://{front}{p}");
        let r = c.get(url("/app")).send().await.unwrap();
        assert_eq!(r.status(), 401);
        assert_eq!(
            r.headers()["www-authenticate"],
            r#"Basic realm="Forward realm", charset="UTF-8""#,
            "the challenge reaches the client"
        );
        let r = c
            .get(url("/app?x=1"))
            .basic_auth("alice", Some(PW))
            .header("remote-user", "mallory")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let seen: serde_json::Value = r.json().await.unwrap();
        assert_eq!(seen["headers"]["remote-user"], "alice", "{seen}");
        assert_eq!(seen["headers"]["remote-groups"], "admins");
        let r = c
            .get(url("/app"))
            .basic_auth("alice", Some("wrong"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        assert_eq!(c.get(url("/public/x")).send().await.unwrap().status(), 200);
    });
    // The access log names the original request, not the auth sub-request.
    let log = eventually(
        Duration::from_secs(5),
        "the original URI in the log",
        || {
            let log = std::fs::read_to_string(gw.path("access.log")).ok()?;
            log.contains(" GET /app x=1 ").then_some(log)
        },
    );
    assert!(log.contains(" alice 127.0.0.1 "), "{log}");
    assert!(
        log.lines()
            .any(|l| l.contains(" GET /app - ") && l.contains(" 401 2 0 ")),
        "{log}"
    );
    assert!(!log.contains("/.portcullis/auth"), "{log}");
}

/// Form sign-in through the front proxy: the browser is sent to the portal (served through the
/// same proxy), signs in, reaches the application, and a stale cookie costs one redirect.
fn check_form_front(front: SocketAddr) {
    runtime().block_on(async {
        let mut b = util::browser::Browser::new(&format!("http://{front}"));
        // nginx makes the Location absolute; either form names the same page.
        let relative = |hops: Vec<String>| -> Vec<String> {
            hops.into_iter()
                .map(|h| h.trim_start_matches(&format!("http://{front}")).to_owned())
                .collect()
        };
        let (page, hops) = b.follow("/app/page?x=1").await;
        assert_eq!(
            relative(hops),
            vec!["/.portcullis/login?rd=%2Fapp%2Fpage%3Fx%3D1"]
        );
        assert_eq!(page.status, 200);
        let csrf = page.field("csrf").unwrap();
        let rd = page.field("rd").unwrap();
        let r = b
            .post(
                "/.portcullis/login",
                &[
                    ("csrf", &csrf),
                    ("rd", &rd),
                    ("username", "alice"),
                    ("password", PW),
                ],
            )
            .await;
        assert_eq!(r.status, 303, "{}", r.body);
        assert_eq!(r.header("location"), Some("/app/page?x=1"));
        let app = b.get("/app/page?x=1").await;
        assert_eq!(app.status, 200, "{}", app.body);
        let seen: serde_json::Value = serde_json::from_str(&app.body).unwrap();
        assert_eq!(seen["headers"]["remote-user"], "alice");
        // API clients still get 401 with the challenges.
        let r = client()
            .get(format!("http://{front}/app"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        // Issue 21.2: curl --anyauth signs in with the challenge it is given (nginx's
        // auth_request passes only the first one: it must be Basic, not the form's Cookie).
        let out = std::process::Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--anyauth",
                "-u",
            ])
            .arg(format!("alice:{PW}"))
            .arg(format!("http://{front}/app"))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "200",
            "{front}: curl --anyauth"
        );
        assert!(
            r.headers().contains_key("www-authenticate"),
            "{:?}",
            r.headers()
        );
        // A stale cookie: one redirect, with "session ended", and the cookie is cleared.
        let mut stale = util::browser::Browser::new(&format!("http://{front}"));
        stale
            .jar
            .insert("portcullis_session".into(), "A".repeat(43));
        let (page, hops) = stale.follow("/app").await;
        assert_eq!(relative(hops), vec!["/.portcullis/login?rd=%2Fapp&ended=1"]);
        assert!(page.body.contains("Your session ended"));
        assert!(
            !stale.jar.contains_key("portcullis_session"),
            "{:?}",
            stale.jar
        );
        // Sign out through the proxy.
        let page = b.get("/.portcullis/logout").await;
        let token = page.field("csrf").unwrap();
        let r = b.post("/.portcullis/logout", &[("csrf", &token)]).await;
        assert_eq!(r.status, 303);
        assert_eq!(b.get("/app").await.status, 302);
    });
}

#[test]
fn form_sign_in_behind_nginx_and_caddy() {
    let app = TestUpstream::start();
    let gw = portcullis_with(app.addr, r#"["form", "basic"]"#, "");
    let front = addr();
    let nginx = start_nginx(front, gw.addr, app.addr);
    check_form_front(front);
    drop(nginx);
    let gw = portcullis_with(app.addr, r#"["form", "basic"]"#, FORWARDED);
    let front = addr();
    let _caddy = start_caddy(front, gw.addr, app.addr);
    check_form_front(front);
}

#[test]
fn nginx_auth_request_recipe() {
    let app = TestUpstream::start();
    let gw = portcullis(app.addr, "");
    // Forward-auth only (no server.upstream): anything but /.portcullis/* is not ours to answer.
    runtime().block_on(async {
        assert_eq!(
            client().get(gw.url("/app")).send().await.unwrap().status(),
            404
        );
    });
    let front = addr();
    let _nginx = start_nginx(front, gw.addr, app.addr);
    check_front(front, &gw);
}

#[test]
fn caddy_forward_auth_recipe() {
    let app = TestUpstream::start();
    let gw = portcullis(app.addr, FORWARDED);
    let front = addr();
    let _caddy = start_caddy(front, gw.addr, app.addr);
    check_front(front, &gw);
    // Caddy passes Portcullis's own refusal through: the page and its problem+json body.
    runtime().block_on(async {
        let r = client()
            .get(format!("http://{front}/app"))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap();
        let p: serde_json::Value = r.json().await.unwrap();
        assert_eq!(p["substatus"], 2);
    });
}

#[test]
fn ip_rules_see_the_original_client_behind_both_proxies() {
    let app = TestUpstream::start();
    let gw = portcullis(app.addr, "[ip]\ndeny = [\"127.0.0.1\"]");
    let gw_caddy = portcullis(
        app.addr,
        &format!("{FORWARDED}[ip]\ndeny = [\"127.0.0.1\"]"),
    );
    let (n, c) = (addr(), addr());
    let _nginx = start_nginx(n, gw.addr, app.addr);
    let _caddy = start_caddy(c, gw_caddy.addr, app.addr);
    runtime().block_on(async {
        // A client's own Forwarded header (passed through by both proxies) does not change its
        // address: the proxies maintain X-Forwarded-For, the header Portcullis reads.
        for front in [n, c] {
            let r = client()
                .get(format!("http://{front}/app"))
                .basic_auth("alice", Some(PW))
                .header("forwarded", "for=10.9.9.9")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 403, "{front}: spoofed Forwarded");
        }
        for front in [n, c] {
            let r = client()
                .get(format!("http://{front}/app"))
                .basic_auth("alice", Some(PW))
                .header("accept", "text/html")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 403, "{front}");
            // Portcullis's page for the reason, behind nginx too (its recipe's error_page), with
            // the request id to quote, and not cacheable.
            assert_eq!(r.headers()["cache-control"], "no-store", "{front}");
            let id = r
                .headers()
                .get("x-request-id")
                .map(|v| v.to_str().unwrap().to_owned());
            let body = util::browser::unescape(&r.text().await.unwrap());
            assert!(
                body.contains("Your network address is blocked"),
                "{front}: {body}"
            );
            if let Some(id) = id {
                assert!(body.contains(&id), "{front}: the request id is on the page");
            }
        }
    });
    // nginx passes no header of the auth answer on: the page gets Portcullis's request id
    // through the recipe's `?request_id=`.
    let page = runtime().block_on(async {
        client()
            .get(format!("http://{n}/app"))
            .header("accept", "text/html")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    let marker = "quote this request id: <span class=\"rid\">";
    let start = page.find(marker).expect("the request id line") + marker.len();
    let id = &page[start..start + page[start..].find('<').unwrap()];
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id:?}"
    );
}

#[test]
fn traefik_header_contract_and_untrusted_peers() {
    // Traefik's ForwardAuth sends X-Forwarded-Method/-Proto/-Host/-Uri/-For (no Debian package:
    // this pins the documented header contract).
    let app = TestUpstream::start();
    let gw = portcullis(
        app.addr,
        &format!("{FORWARDED}[[rule]]\npath = \"/admin/**\"\nallow = [\"group:admins\"]"),
    );
    runtime().block_on(async {
        let c = client();
        let ask = |uri: &'static str, method: &'static str, user: Option<&'static str>| {
            let mut rb = c
                .get(gw.url("/.portcullis/auth"))
                .header("x-forwarded-method", method)
                .header("x-forwarded-proto", "https")
                .header("x-forwarded-host", "app.example")
                .header("x-forwarded-uri", uri)
                .header("x-forwarded-for", "198.51.100.4");
            if let Some(u) = user {
                rb = rb.basic_auth(u, Some(PW));
            }
            rb.send()
        };
        let r = ask("/admin/panel", "POST", Some("alice")).await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["remote-user"], "alice");
        assert_eq!(r.headers()["remote-groups"], "admins");
        assert_eq!(r.headers()["remote-name"], "alice");
        let r = ask("/public/logo.png", "GET", None).await.unwrap();
        assert_eq!(r.status(), 200, "public original URI");
        let r = ask("/admin/panel", "GET", None).await.unwrap();
        assert_eq!(r.status(), 401);
        assert!(r.headers().contains_key("www-authenticate"));
    });
    // From a peer that is not a trusted proxy, the headers are ignored: a spoofed public URI
    // does not open anything.
    let gw2 = {
        let dir = dir_with_user("alice", PW);
        Gateway::start_in(
            dir,
            &SiteConfig::new()
                .auth("public = [\"/public/**\"]")
                .without("log", "access")
                .build(),
            app.addr,
        )
    };
    runtime().block_on(async {
        let r = client()
            .get(gw2.url("/.portcullis/auth"))
            .header("x-forwarded-uri", "/public/x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    });
}

#[test]
fn traefik_gets_an_absolute_sign_in_redirect_for_browsers() {
    // Traefik resolves a relative Location against the forward-auth address: the redirect must
    // name the site as the browser reached it (X-Forwarded-Proto/-Host of the trusted proxy).
    let app = TestUpstream::start();
    let gw = portcullis_with(app.addr, r#"["form", "basic"]"#, FORWARDED);
    runtime().block_on(async {
        let ask = |accept: &'static str, cookie: Option<&'static str>| {
            let mut rb = client()
                .get(gw.url("/.portcullis/auth"))
                .header("accept", accept)
                .header("x-forwarded-method", "GET")
                .header("x-forwarded-proto", "https")
                .header("x-forwarded-host", "app.example:8443")
                .header("x-forwarded-uri", "/reports?q=1")
                .header("x-forwarded-for", "198.51.100.4");
            if let Some(c) = cookie {
                rb = rb.header("cookie", c);
            }
            rb.send()
        };
        let r = ask("text/html,*/*;q=0.8", None).await.unwrap();
        assert_eq!(r.status(), 302);
        assert_eq!(
            r.headers()["location"],
            "https://app.example:8443/.portcullis/login?rd=%2Freports%3Fq%3D1"
        );
        // A stale cookie: the same redirect with ended=1, and the __Host- cookie cleared.
        let stale = format!("__Host-portcullis={}", "A".repeat(43));
        let stale: &'static str = Box::leak(stale.into_boxed_str());
        let r = ask("text/html", Some(stale)).await.unwrap();
        assert_eq!(r.status(), 302);
        assert!(
            r.headers()["location"]
                .to_str()
                .unwrap()
                .ends_with("&ended=1")
        );
        let cleared = r.headers()["set-cookie"].to_str().unwrap();
        assert!(
            cleared.starts_with("__Host-portcullis=;") && cleared.contains("Secure"),
            "{cleared}"
        );
        // API clients: 401 with every challenge.
        let r = ask("application/json", None).await.unwrap();
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers().get_all("www-authenticate").iter().count(), 2);
    });
}

/// What the application received through the front proxy (the test upstream's echo).
async fn seen_by_app(
    front: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, serde_json::Value) {
    let mut rb = client().get(format!("http://{front}{path}"));
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

/// Issue 11, item 1: a client's own X-Original-* / X-Forwarded-* headers, copied into the auth
/// request by the proxy, must not describe the request that is judged.
fn check_client_cannot_name_the_judged_request(front: SocketAddr) {
    runtime().block_on(async {
        for (name, value) in [
            ("x-original-uri", "/public/x"),
            ("x-forwarded-uri", "/public/x"),
        ] {
            let (status, _) = seen_by_app(front, "/admin/secret", &[(name, value)]).await;
            assert_eq!(status, 401, "{front}: {name}: {value} opened /admin/secret");
        }
        // A method rule cannot be dodged by naming another method.
        for name in ["x-original-method", "x-forwarded-method"] {
            let r = client()
                .delete(format!("http://{front}/admin/secret"))
                .basic_auth("alice", Some(PW))
                .header(name, "GET")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 401, "{front}: {name}: GET passed a DELETE rule");
        }
        // An anonymous request on a public path: the identity headers reach the application
        // empty (or not at all), never the client's copy or a proxy placeholder.
        let (status, seen) = seen_by_app(
            front,
            "/public/x",
            &[("remote-user", "admin"), ("remote_groups", "admins")],
        )
        .await;
        assert_eq!(status, 200);
        for h in [
            "remote-user",
            "remote-groups",
            "remote-name",
            "remote-email",
            "remote_groups",
        ] {
            let v = seen["headers"]
                .get(h)
                .and_then(|v| v.as_str())
                .unwrap_or("");
            assert!(
                v.is_empty(),
                "{front}: {h}: {v:?} reached the application: {seen}"
            );
        }
        // Issue 21, item 1: neither the password nor Portcullis's cookies reach the application;
        // the application's own cookies do.
        let r = client()
            .get(format!("http://{front}/app"))
            .basic_auth("alice", Some(PW))
            .header(
                "cookie",
                "theme=dark; portcullis_csrf=abc; portcullis_session=xyz; lang=en",
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let seen: serde_json::Value = r.json().await.unwrap();
        assert!(
            seen["headers"].get("authorization").is_none_or(|v| v == ""),
            "{front}: {seen}"
        );
        assert_eq!(
            seen["headers"]["cookie"], "theme=dark; lang=en",
            "{front}: {seen}"
        );
        assert_eq!(seen["headers"]["remote-user"], "alice");
    });
}

#[test]
fn clients_cannot_name_the_judged_request_behind_nginx_and_caddy() {
    let app = TestUpstream::start();
    let rules = "[[rule]]\npath = \"/admin/**\"\nmethods = [\"DELETE\"]\ndeny = [\"*\"]\n[[rule]]\npath = \"/admin/**\"\nallow = [\"*\"]\n";
    let gw = portcullis(app.addr, rules);
    let front = addr();
    let _nginx = start_nginx(front, gw.addr, app.addr);
    check_client_cannot_name_the_judged_request(front);
    let gw = portcullis(app.addr, &format!("{FORWARDED}{rules}"));
    let front = addr();
    let _caddy = start_caddy(front, gw.addr, app.addr);
    check_client_cannot_name_the_judged_request(front);
}

#[test]
fn a_trusted_question_without_a_usable_original_request_is_400() {
    let app = TestUpstream::start();
    let gw = portcullis(app.addr, "");
    runtime().block_on(async {
        let ask = |headers: &'static [(&'static str, &'static str)]| {
            let mut rb = client().get(gw.url("/.portcullis/auth"));
            for (k, v) in headers {
                rb = rb.header(*k, *v);
            }
            rb.header("accept", "application/json").send()
        };
        // nginx mode reads only X-Original-*: Caddy's set is not enough.
        for headers in [
            &[][..],
            &[("x-forwarded-uri", "/public/x")][..],
            &[("x-original-uri", "relative")][..],
            &[("x-original-uri", "/public/../admin")][..],
            &[("x-original-uri", "/x"), ("x-original-method", "G E T")][..],
        ] {
            let r = ask(headers).await.unwrap();
            assert_eq!(r.status(), 400, "{headers:?}");
            let p: serde_json::Value = r.json().await.unwrap();
            assert!(
                p["type"]
                    .as_str()
                    .unwrap()
                    .ends_with("bad_forwarded_header")
                    || p["type"].as_str().unwrap().ends_with("bad_request"),
                "{headers:?}: {p}"
            );
        }
        let r = ask(&[("x-original-uri", "/public/x")]).await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["remote-user"], "");
    });
    let log = eventually(Duration::from_secs(5), "the 400s in the log", || {
        std::fs::read_to_string(gw.path("access.log"))
            .ok()
            .filter(|l| l.matches(" 400 10 ").count() >= 3)
    });
    assert!(log.contains(" 400 0 "), "{log}");
}

/// Portcullis answering Digest only, for users made by `portcullis hash --digest`.
fn portcullis_digest(upstream: SocketAddr, extra: &str) -> Gateway {
    let dir = dir_with_user("alice", PW);
    let lines = portcullis_hash(
        PW,
        &["--digest", "--realm", "Forward realm", "--user", "alice"],
    );
    std::fs::write(dir.path().join("users.htdigest"), format!("{lines}\n")).unwrap();
    let config = SiteConfig::new()
        .without("server", "upstream")
        .server("trusted_proxies = [\"127.0.0.1\"]")
        .auth("realm = \"Forward realm\"\nschemes = [\"digest\"]")
        .section("auth.digest", "users = \"users.htdigest\"")
        .raw(extra)
        .build();
    Gateway::start_in(dir, &config, upstream)
}

/// curl --digest through the front proxy: status and body.
fn curl_digest(url: &str, user: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "--digest", "-u", user, "-w", "\n%{http_code}", url])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (status.trim().parse().unwrap(), body.to_owned())
}

#[test]
fn digest_signs_in_through_nginx_and_caddy_with_the_uri_the_client_signed() {
    let app = TestUpstream::start();
    for (extra, caddy) in [("", false), (FORWARDED, true)] {
        let gw = portcullis_digest(app.addr, extra);
        let front = addr();
        let _proxy = if caddy {
            start_caddy(front, gw.addr, app.addr)
        } else {
            start_nginx(front, gw.addr, app.addr)
        };
        let url = format!("http://{front}/reports/q?year=2026");
        let (status, body) = curl_digest(&url, &format!("alice:{PW}"));
        assert_eq!(status, 200, "caddy={caddy}: {body}");
        let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            seen["headers"]["remote-user"], "alice",
            "caddy={caddy}: {seen}"
        );
        assert_eq!(
            seen["path"], "/reports/q?year=2026",
            "caddy={caddy}: {seen}"
        );
        assert_eq!(curl_digest(&url, "alice:wrong").0, 401, "caddy={caddy}");
    }
}
