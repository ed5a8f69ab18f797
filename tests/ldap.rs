//! Users in a real OpenLDAP `slapd` (`auth.users = "ldap://…"`): search then bind, groups from
//! the memberof overlay, e-mail and display name passed on, injection and case tricks refused,
//! the directory asked once per user per cache time, and its outages answered 503
//! `directory_unavailable` (never 401.1) with recovery without a restart.

mod util;

use std::time::{Duration, Instant};

use util::slapd::{BOB_NAME, BOB_PW, Slapd};
use util::*;

/// A gateway on `slapd` with Basic and form sign-in, an admin listener, `/admin/**` for the
/// admins group.
fn gateway(slapd: &Slapd, extra_ldap: &str, extra_auth: &str) -> (TestUpstream, Gateway, u16) {
    let upstream = TestUpstream::start();
    let dir = tempfile::tempdir().unwrap();
    let admin = free_port();
    let config = basic_config()
        .auth(&format!("users = \"{}\"", slapd.url()))
        .auth("schemes = [\"basic\", \"form\"]")
        .auth(extra_auth)
        .section("admin", &format!("listen = \"127.0.0.1:{admin}\""))
        // Many wrong guesses from one address below: no lockout in the way.
        .section("logon", "max_failures = 1000")
        .section("ldap", &slapd.section(&dir.path().join("ldap-password")))
        .section("ldap", extra_ldap)
        .raw("[[rule]]\npath = \"/admin/**\"\nallow = [\"group:admins\"]\n");
    let gw = Gateway::start_in(dir, &config.build(), upstream.addr);
    wait_for_port(
        format!("127.0.0.1:{admin}").parse().unwrap(),
        Duration::from_secs(10),
    );
    (upstream, gw, admin)
}

async fn get(gw: &Gateway, path: &str, user: &str, pw: &str) -> reqwest::Response {
    client()
        .get(gw.url(path))
        .basic_auth(user, Some(pw))
        .send()
        .await
        .unwrap()
}

/// The value of the metric line starting with `prefix` (0 when absent).
async fn metric(admin: u16, prefix: &str) -> f64 {
    let text = client()
        .get(format!("http://127.0.0.1:{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The `sc-status sc-substatus` of the access log's last line for `path`.
fn logged_status(gw: &Gateway, path: &str) -> String {
    eventually(Duration::from_secs(5), "the access log line", || {
        let log = std::fs::read_to_string(gw.path("access.log")).ok()?;
        let line = log.lines().rev().find(|l| l.contains(path))?;
        let fields: Vec<&str> = line.split(' ').collect();
        // date time s-ip cs-method cs-uri-stem cs-uri-query s-port cs-username c-ip
        // cs(User-Agent) cs(Referer) sc-status sc-substatus …
        Some(format!("{}.{}", fields[11], fields[12]))
    })
}

#[test]
fn users_groups_and_attributes_come_from_the_directory() {
    let slapd = Slapd::start();
    let (_up, gw, admin) = gateway(&slapd, "", "");
    runtime().block_on(async {
        // The start-up diagnostics say the directory answered, with what it holds.
        let said = eventually(Duration::from_secs(10), "the directory probe", || {
            let log = gw.stderr();
            log.contains("the directory answered").then_some(log)
        });
        assert!(said.contains("4 users and 2 groups seen"), "{said}");

        // Search, then bind as the entry: the identity reaches the application.
        let r = get(&gw, "/echo/a", "alice", "alice-pw").await;
        assert_eq!(r.status(), 200);
        let echo: serde_json::Value = r.json().await.unwrap();
        let h = &echo["headers"];
        assert_eq!(h["remote-user"], "alice");
        assert_eq!(h["remote-groups"], "admins,staff");
        assert_eq!(h["remote-email"], "alice@example.org");
        assert_eq!(h["remote-name"], "Alice Liddell");
        assert_eq!(
            get(&gw, "/admin/x", "alice", "alice-pw").await.status(),
            200
        );

        // A non-ASCII password goes to the directory as UTF-8; a non-ASCII name comes back.
        let r = get(&gw, "/echo/b", "bob", BOB_PW).await;
        assert_eq!(r.status(), 200);
        let echo: serde_json::Value = r.json().await.unwrap();
        assert_eq!(echo["headers"]["remote-name"], BOB_NAME);
        assert_eq!(echo["headers"]["remote-groups"], "staff");
        // Not an admin: the rule refuses (401.3).
        assert_eq!(get(&gw, "/admin/y", "bob", BOB_PW).await.status(), 401);
        assert_eq!(logged_status(&gw, "/admin/y"), "401.3");

        // An entry without mail, display name or groups: no such headers, no error.
        // …even when the client sends its own (any spelling): the application never sees them.
        let r = client()
            .get(gw.url("/echo/c"))
            .basic_auth("carol", Some("carol-pw"))
            .header("Remote-Email", "ceo@example.org")
            .header("remote_name", "The CEO")
            .header("Remote-Groups", "admins")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let echo: serde_json::Value = r.json().await.unwrap();
        assert_eq!(echo["headers"]["remote-user"], "carol");
        assert!(echo["headers"].get("remote-email").is_none(), "{echo}");
        assert!(echo["headers"].get("remote-groups").is_none(), "{echo}");
        assert!(echo["headers"].get("remote_name").is_none(), "{echo}");
        assert!(echo["headers"].get("remote-name").is_none(), "{echo}");

        // Wrong password, unknown user: 401.1 with the challenge.
        for (i, (user, pw)) in [("alice", "wrong"), ("nobody", "alice-pw")]
            .iter()
            .enumerate()
        {
            let path = format!("/echo/refused{i}");
            let r = get(&gw, &path, user, pw).await;
            assert_eq!(r.status(), 401, "{user}");
            assert!(r.headers().contains_key("www-authenticate"));
            assert_eq!(logged_status(&gw, &path), "401.1");
        }

        // Injection: the name is one escaped value, so these match no entry (without escaping
        // `*` would be alice or mallory, whose password is tried).
        for (i, user) in [
            "*",
            "al*",
            "*ice",
            "alice)(uid=*",
            "*)(|(uid=*",
            "mallory)(|(uid=alice",
        ]
        .iter()
        .enumerate()
        {
            for pw in ["alice-pw", "mallory-pw"] {
                let path = format!("/echo/inject{i}");
                assert_eq!(get(&gw, &path, user, pw).await.status(), 401, "{user}");
            }
        }
        // LDAP matches uid ignoring case; a second name for alice would slip past per-user
        // rules and lockouts, so only her own name signs her in.
        assert_eq!(
            get(&gw, "/echo/case", "ALICE", "alice-pw").await.status(),
            401
        );
        assert_eq!(
            get(&gw, "/echo/space", "alice ", "alice-pw").await.status(),
            401
        );
        // An empty password would be an unauthenticated bind, which this slapd allows.
        assert_eq!(get(&gw, "/echo/empty", "alice", "").await.status(), 401);

        // Cached like an htpasswd check: the directory is asked once per user per cache time.
        let before = metric(admin, "portcullis_directory_calls_total{result=\"ok\"}").await;
        assert!(before > 0.0);
        for _ in 0..20 {
            assert_eq!(
                get(&gw, "/echo/again", "alice", "alice-pw").await.status(),
                200
            );
        }
        let after = metric(admin, "portcullis_directory_calls_total{result=\"ok\"}").await;
        assert_eq!(before, after, "cached checks asked the directory");
        assert!(metric(admin, "portcullis_directory_connections_opened_total").await >= 1.0);

        // Forward-auth answers with the same identity headers.
        let r = get(&gw, "/.portcullis/auth", "alice", "alice-pw").await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["remote-email"], "alice@example.org");
        assert_eq!(r.headers()["remote-name"], "Alice Liddell");
        assert_eq!(r.headers()["remote-groups"], "admins,staff");

        // Form sign-in: a session whose requests carry the directory's groups.
        let mut b = util::browser::Browser::new(&gw.url(""));
        let page = b.sign_in("alice", "alice-pw", "/admin/panel").await;
        assert!(page.status < 400, "{} {}", page.status, page.body);
        let page = b.get("/echo/session").await;
        let echo: serde_json::Value = serde_json::from_str(&page.body).unwrap();
        assert_eq!(echo["headers"]["remote-groups"], "admins,staff");
    });

    // The CLI reads the directory and refuses to write to it.
    let (list, _) = cli(&gw, "users", &["list"]);
    let names: Vec<&str> = list
        .lines()
        .map(|l| l.split('\t').next().unwrap())
        .collect();
    assert_eq!(names, ["alice", "bob", "carol", "mallory"], "{list}");
    assert!(
        list.contains("alice\tadmins,staff\talice@example.org"),
        "{list}"
    );
    let (ok, _, err) = cli_in(
        &gw.path("portcullis.toml"),
        "users",
        &["add", "dave"],
        Some("pw"),
    );
    assert!(!ok);
    assert!(
        err.contains(&slapd.url()) && err.contains("only reads"),
        "{err}"
    );
    // explain takes the user's groups from the directory.
    let (out, _) = cli(&gw, "explain", &["--user", "alice", "/admin/x"]);
    assert!(out.contains("ALLOWED") || out.contains("allowed"), "{out}");

    // Groups from a group search instead of memberOf.
    let (_up2, gw2, _) = gateway(
        &slapd,
        "group_filter = \"(&(objectClass=groupOfNames)(member={dn}))\"",
        "",
    );
    runtime().block_on(async {
        let r = get(&gw2, "/echo/g", "bob", BOB_PW).await;
        let echo: serde_json::Value = r.json().await.unwrap();
        assert_eq!(echo["headers"]["remote-groups"], "staff");
        assert_eq!(
            get(&gw2, "/admin/g", "alice", "alice-pw").await.status(),
            200
        );
    });

    // A search the directory refers elsewhere (not followed): the user may be there, so it is
    // 503, not "unknown user".
    let (_up3, gw3, _) = gateway(&slapd, "base_dn = \"ou=elsewhere,dc=example,dc=org\"", "");
    runtime().block_on(async {
        assert_eq!(
            get(&gw3, "/echo/r", "alice", "alice-pw").await.status(),
            503
        );
    });
    assert!(
        gw3.stderr().contains("does not follow referrals"),
        "{}",
        gw3.stderr()
    );

    // A base DN the directory does not have (a typo, a replica still syncing): every user
    // would be "unknown" and locked out; it is 503, and the log names ldap.base_dn.
    let (_up4, gw4, _) = gateway(&slapd, "base_dn = \"ou=nowhere,dc=example,dc=org\"", "");
    runtime().block_on(async {
        assert_eq!(
            get(&gw4, "/echo/n", "alice", "alice-pw").await.status(),
            503
        );
    });
    assert!(gw4.stderr().contains("ldap.base_dn"), "{}", gw4.stderr());
}

#[test]
fn an_outage_is_503_never_401_and_recovers() {
    let mut slapd = Slapd::start();
    let (_up, gw, admin) = gateway(&slapd, "timeout = \"1s\"\npool = 4", "");
    runtime().block_on(async {
        assert_eq!(get(&gw, "/echo/1", "alice", "alice-pw").await.status(), 200);

        // Down: a sign-in that needs the directory is 503 with Retry-After, not a refusal.
        slapd.stop();
        let r = get(&gw, "/echo/down", "bob", BOB_PW).await;
        assert_eq!(r.status(), 503);
        assert!(r.headers().contains_key("retry-after"));
        assert!(r.text().await.unwrap().contains("did not answer"));
        assert_eq!(logged_status(&gw, "/echo/down"), "503.0");
        // A wrong password is not called wrong either: nobody can tell while it is down.
        assert_eq!(get(&gw, "/echo/down2", "bob", "wrong").await.status(), 503);
        // A check made before the outage is still cached.
        assert_eq!(
            get(&gw, "/echo/cached", "alice", "alice-pw").await.status(),
            200
        );
        assert!(
            metric(
                admin,
                "portcullis_auth_total{scheme=\"basic\",outcome=\"directory_unavailable\"}"
            )
            .await
                >= 2.0
        );

        // Back: the pool reconnects, without a restart.
        slapd.restart();
        let back = Instant::now();
        loop {
            let s = get(&gw, "/echo/back", "bob", BOB_PW).await.status();
            if s == 200 {
                break;
            }
            assert_eq!(s, 503);
            assert!(back.elapsed() < Duration::from_secs(10), "no recovery");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The failed attempts were not counted as wrong passwords: bob is not locked out.
        assert_eq!(get(&gw, "/echo/bob", "bob", BOB_PW).await.status(), 200);

        // Hanging (accepts, never answers): 1,000 sign-ins needing it are all answered 503
        // within timeout + 1 s, not piled up behind the pool.
        slapd.hang();
        let started = Instant::now();
        let c = client();
        let tasks: Vec<_> = (0..1000)
            .map(|i| {
                let c = c.clone();
                let url = gw.url(&format!("/echo/hang{i}"));
                tokio::spawn(async move {
                    let r = c
                        .get(url)
                        .basic_auth(format!("user{i}"), Some("pw"))
                        .send()
                        .await
                        .unwrap();
                    (r.status().as_u16(), Instant::now())
                })
            })
            .collect();
        let mut statuses = std::collections::BTreeMap::new();
        let mut last = started;
        for t in tasks {
            let (status, at) = t.await.unwrap();
            *statuses.entry(status).or_insert(0) += 1;
            last = last.max(at);
        }
        let took = last - started;
        assert_eq!(statuses.get(&503), Some(&1000), "{statuses:?}");
        assert!(
            took < Duration::from_secs(2),
            "the last answer came after {took:?}"
        );
        slapd.resume();
        let back = Instant::now();
        while get(&gw, "/echo/thawed", "carol", "carol-pw").await.status() != 200 {
            assert!(
                back.elapsed() < Duration::from_secs(10),
                "no recovery after the hang"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let log = gw.stderr();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn check_config_names_each_directory_mistake() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[server]\nlisten = [\"127.0.0.1:1\"]\nupstream = \"http://127.0.0.1:2\"\n\
                [auth]\nusers = \"ldap://127.0.0.1:389\"\n\
                [ldap]\nbase_dn = \"dc=example,dc=org\"\nbind_dn = \"cn=svc,dc=example,dc=org\"\n\
                bind_password_file = \"missing-password\"\nuser_filter = \"(uid=alice)\"\n\
                group_filter = \"(member=x)\"\nca = \"missing-ca.pem\"\nstarttls = true\n";
    let (code, out) = check_config(dir.path(), text);
    assert_eq!(code, Some(64), "{out}");
    for (key, line) in [
        ("ldap.bind_password_file", 9),
        ("ldap.user_filter", 10),
        ("ldap.group_filter", 11),
        ("ldap.ca", 12),
    ] {
        assert!(
            out.lines().any(|l| l.contains(&format!(":{line}: {key}:"))),
            "{key} at line {line}: {out}"
        );
    }
    // The URL itself, and a directory without its section.
    let (code, out) = check_config(
        dir.path(),
        "[server]\nlisten = [\"127.0.0.1:1\"]\nupstream = \"http://127.0.0.1:2\"\n[auth]\nusers = \"ldap://user:pw@dc1/dc=x\"\n",
    );
    assert_eq!(code, Some(64), "{out}");
    assert!(
        out.contains("auth.users") && out.contains("credentials"),
        "{out}"
    );
    let (code, out) = check_config(
        dir.path(),
        "[server]\nlisten = [\"127.0.0.1:1\"]\nupstream = \"http://127.0.0.1:2\"\n[auth]\nusers = \"ldaps://dc1.corp.example\"\n",
    );
    assert_eq!(code, Some(64), "{out}");
    assert!(out.contains("[ldap]") && out.contains("base_dn"), "{out}");
}

#[test]
fn ldaps_and_starttls_with_a_private_ca() {
    let slapd = Slapd::start_tls();
    let ca = slapd.dir.path().join("ca.pem");
    let ldaps = format!("ldaps://127.0.0.1:{}", slapd.tls_port.unwrap());
    let cases = [
        (ldaps.clone(), format!("ca = \"{}\"", ca.display()), 200),
        (
            slapd.url(),
            format!("starttls = true\nca = \"{}\"", ca.display()),
            200,
        ),
        // Without the private CA the directory's certificate is not trusted: 503, not 401.
        (ldaps.clone(), String::new(), 503),
        (slapd.url(), "starttls = true".to_owned(), 503),
    ];
    for (users, ldap, status) in cases {
        let upstream = TestUpstream::start();
        let dir = tempfile::tempdir().unwrap();
        let config = basic_config()
            .auth(&format!("users = \"{users}\""))
            .auth("cache_ttl = \"0s\"")
            .section("ldap", &slapd.section(&dir.path().join("ldap-password")))
            .section("ldap", &ldap)
            .section("ldap", "timeout = \"2s\"");
        let gw = Gateway::start_in(dir, &config.build(), upstream.addr);
        let got =
            runtime().block_on(async { get(&gw, "/echo/tls", "alice", "alice-pw").await.status() });
        assert_eq!(got, status, "{users} {ldap}: {}", gw.stderr());
        if status == 503 {
            assert!(
                gw.stderr().to_lowercase().contains("certificate"),
                "{}",
                gw.stderr()
            );
        }
    }
}

#[test]
fn sessions_follow_the_directory() {
    let slapd = Slapd::start();
    let (_up, gw, _admin) = gateway(&slapd, "", "cache_ttl = \"1s\"");
    runtime().block_on(async {
        let mut alice = util::browser::Browser::new(&gw.url(""));
        alice.sign_in("alice", "alice-pw", "/admin/x").await;
        assert_eq!(alice.get("/admin/x").await.status, 200);
        let mut carol = util::browser::Browser::new(&gw.url(""));
        carol.sign_in("carol", "carol-pw", "/echo/c").await;
        assert_eq!(carol.get("/echo/c").await.status, 200);

        // Alice leaves the admins group, carol leaves the directory.
        slapd.modify(
            "ldapmodify",
            "dn: cn=admins,ou=groups,dc=example,dc=org\nchangetype: modify\nreplace: member\nmember: uid=mallory,ou=people,dc=example,dc=org\n\n\
             dn: uid=carol,ou=people,dc=example,dc=org\nchangetype: delete\n\n",
        );
        // Within the cache time (1 s) the sessions see it.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let page = alice.get("/echo/after").await;
        let echo: serde_json::Value = serde_json::from_str(&page.body).unwrap();
        assert_eq!(echo["headers"]["remote-groups"], "staff");
        assert_ne!(alice.get("/admin/x").await.status, 200);
        let page = carol.get("/echo/gone").await;
        assert_ne!(page.status, 200, "{}", page.body);
    });
    // The access log is written after the answer: waited for, not read at once.
    let gone = eventually(Duration::from_secs(5), "the /echo/gone log line", || {
        std::fs::read_to_string(gw.path("access.log"))
            .ok()?
            .lines()
            .find(|l| l.contains("/echo/gone"))
            .map(str::to_owned)
    });
    assert!(
        gone.contains(" 401 2 ") || gone.contains(" 302 2 "),
        "the ended session is x.2 (session_expired; a browser is sent to sign in): {gone}"
    );
    // More users than slapd's size limit (500): users list pages through them all.
    let mut many = String::new();
    for i in 0..600 {
        many.push_str(&format!(
            "dn: uid=u{i:03},ou=people,dc=example,dc=org\nobjectClass: inetOrgPerson\nuid: u{i:03}\ncn: u{i:03}\nsn: U\n\n"
        ));
    }
    slapd.modify("ldapadd", &many);
    let (list, _) = cli(&gw, "users", &["list"]);
    assert_eq!(
        list.lines().count(),
        603,
        "alice, bob, mallory and 600 more"
    );
}

#[test]
fn a_directory_user_can_have_a_totp_second_factor() {
    let slapd = Slapd::start();
    let (_up, gw, _admin) = gateway(&slapd, "second_factors = \"sqlite:factors.db\"", "");
    // Only a name the directory has.
    let (ok, _, err) = cli_in(
        &gw.path("portcullis.toml"),
        "users",
        &["totp", "enable", "nobody"],
        None,
    );
    assert!(!ok && err.contains("not in the directory"), "{err}");
    let (uri, _) = cli(&gw, "users", &["totp", "enable", "alice"]);
    let secret = uri
        .split("secret=")
        .nth(1)
        .and_then(|s| s.split('&').next())
        .unwrap_or_else(|| panic!("{uri}"))
        .to_owned();
    let raw = store::totp::unbase32(&secret).unwrap();
    let code_now = || {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        format!(
            "{:06}",
            store::totp::code_at(&raw, store::totp::step_of(now))
        )
    };
    runtime().block_on(async {
        // Basic cannot carry the code: the right password is refused, and says why (once the
        // gateway has seen the new factor: it looks at the database once a second).
        let started = Instant::now();
        loop {
            let r = client()
                .get(gw.url("/echo/basic"))
                .basic_auth("alice", Some("alice-pw"))
                .header("accept", "text/html")
                .send()
                .await
                .unwrap();
            if r.status() == 401 {
                assert!(r.text().await.unwrap().contains("second factor"));
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "factor not seen"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The form: the password (checked by the directory), then the code.
        let mut b = util::browser::Browser::new(&gw.url(""));
        let step = b.sign_in("alice", "alice-pw", "/admin/x").await;
        let (pending, csrf) = (
            step.field("pending")
                .unwrap_or_else(|| panic!("{}", step.body)),
            step.field("csrf").unwrap(),
        );
        let ok = b
            .post(
                "/.portcullis/login",
                &[
                    ("csrf", &csrf),
                    ("rd", "/admin/x"),
                    ("pending", &pending),
                    ("code", &code_now()),
                ],
            )
            .await;
        assert_eq!(ok.status, 303, "{}", ok.body);
        let page = b.get("/admin/x").await;
        assert_eq!(page.status, 200, "the session has the directory's groups");
        // A wrong password never reaches the code step.
        let mut c = util::browser::Browser::new(&gw.url(""));
        let step = c.sign_in("alice", "wrong", "/").await;
        assert!(step.field("pending").is_none());
        // Bob has no factor: the password alone signs him in, with Basic too.
        assert_eq!(get(&gw, "/echo/bob", "bob", BOB_PW).await.status(), 200);
    });
    let (out, _) = cli(&gw, "users", &["totp", "disable", "alice"]);
    assert!(out.contains("disabled"), "{out}");
}
