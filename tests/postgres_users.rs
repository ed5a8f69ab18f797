//! Users in a real PostgreSQL server (`auth.users = "postgres://…"`), shared by two Portcullis
//! instances: the SQLite store's CLI and features, migrations, a change made through one
//! instance or the CLI seen by every instance within a second (LISTEN/NOTIFY), single-use links
//! that stay single-use across instances, and a database restart.

mod util;

use std::time::{Duration, Instant};

use util::browser::Browser;
use util::postgres::Postgres;
use util::*;

/// A gateway on `pg`: Basic, the form and API tokens, links built from a public URL.
fn instance(pg: &Postgres, upstream: &TestUpstream) -> Gateway {
    let config = basic_config()
        .auth(&format!("users = \"{}\"", pg.url()))
        .auth("schemes = [\"basic\", \"form\", \"bearer\"]")
        .section("logon", "max_failures = 1000")
        .section("portal", "public_url = \"https://sso.example\"")
        .raw("[[rule]]\npath = \"/admin/**\"\nallow = [\"group:admins\"]\n");
    Gateway::start(&config.build(), upstream.addr, &[])
}

fn users(gw: &Gateway, args: &[&str], stdin: Option<&str>) -> String {
    let (ok, out, err) = cli_in(&gw.path("portcullis.toml"), "users", args, stdin);
    assert!(ok, "users {args:?}: {err}");
    out
}

async fn status(gw: &Gateway, path: &str, user: &str, pw: &str) -> u16 {
    client()
        .get(gw.url(path))
        .basic_auth(user, Some(pw))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn bearer(gw: &Gateway, token: &str) -> u16 {
    client()
        .get(gw.url("/echo/t"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Waits (at most `limit`) until `f` gives `want` on both instances; returns how long it took.
async fn both(
    a: &Gateway,
    b: &Gateway,
    want: u16,
    limit: Duration,
    f: impl AsyncFn(&Gateway) -> u16,
) -> Duration {
    let started = Instant::now();
    loop {
        let (x, y) = (f(a).await, f(b).await);
        if x == want && y == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "still {x} and {y} (want {want}) after {limit:?}: {}\n{}",
            a.stderr(),
            b.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn two_instances_share_users_through_postgres() {
    let mut pg = Postgres::start();
    let upstream = TestUpstream::start();
    let a = instance(&pg, &upstream);
    let b = instance(&pg, &upstream);
    let out = users(&a, &["migrate"], None);
    assert!(out.contains("schema version 1"), "{out}");
    // Cheap hashes (bcrypt cost 4, imported as an htpasswd file keeps them): the timings below
    // measure how fast a change travels, not a debug build's argon2.
    let import = |pairs: &[(&str, &str)]| {
        let file = a.path("import.htpasswd");
        let _ = std::fs::remove_file(&file);
        for (u, p) in pairs {
            htpasswd(&file, &["-B", "-C", "4"], u, p);
        }
        users(&a, &["import", file.to_str().unwrap()], None);
    };
    import(&[("alice", "alice-pw"), ("bob", "bob-pw")]);
    users(&a, &["groups", "alice", "admins"], None);
    // Adding twice is refused, as with SQLite.
    let (ok, _, err) = cli_in(
        &a.path("portcullis.toml"),
        "users",
        &["add", "bob"],
        Some("x"),
    );
    assert!(!ok && err.contains("already exists"), "{err}");
    let list = users(&b, &["list"], None);
    assert!(list.contains("alice") && list.contains("admins"), "{list}");

    runtime().block_on(async {
        // Added through the CLI: both instances know them within a second.
        let took = both(&a, &b, 200, Duration::from_secs(1), async |g| {
            status(g, "/admin/x", "alice", "alice-pw").await
        })
        .await;
        eprintln!("a new user was seen by both instances after {took:?}");
        assert_eq!(status(&b, "/admin/x", "bob", "bob-pw").await, 401);

        // Disabled through the CLI: refused by both within a second, though both had the
        // password cached.
        users(&a, &["disable", "alice"], None);
        let took = both(&a, &b, 401, Duration::from_secs(1), async |g| {
            status(g, "/echo/d", "alice", "alice-pw").await
        })
        .await;
        eprintln!("disabling was seen by both instances after {took:?}");
        users(&a, &["enable", "alice"], None);
        both(&a, &b, 200, Duration::from_secs(1), async |g| {
            status(g, "/echo/e", "alice", "alice-pw").await
        })
        .await;

        // A group and a password changed: within a second everywhere.
        users(&a, &["groups", "bob", "admins"], None);
        both(&a, &b, 200, Duration::from_secs(1), async |g| {
            status(g, "/admin/y", "bob", "bob-pw").await
        })
        .await;
        import(&[("bob", "bob-new-pw")]);
        both(&a, &b, 401, Duration::from_secs(1), async |g| {
            status(g, "/echo/p", "bob", "bob-pw").await
        })
        .await;
        both(&a, &b, 200, Duration::from_secs(1), async |g| {
            status(g, "/echo/p", "bob", "bob-new-pw").await
        })
        .await;

        // An API token works on both and, revoked, on neither.
        let (ok, out, err) = cli_in(
            &a.path("portcullis.toml"),
            "tokens",
            &["create", "alice", "--name", "ci"],
            None,
        );
        assert!(ok, "{err}");
        let token = out
            .lines()
            .find(|l| l.starts_with("pcl_"))
            .unwrap_or_else(|| panic!("{out}"))
            .trim()
            .to_owned();
        let id = out
            .lines()
            .chain(err.lines())
            .find_map(|l| {
                l.split_whitespace()
                    .find(|w| w.len() == 12 && w.chars().all(|c| c.is_ascii_hexdigit()))
            })
            .unwrap_or_else(|| panic!("no token id in {out} {err}"))
            .to_owned();
        both(&a, &b, 200, Duration::from_secs(1), async |g| {
            bearer(g, &token).await
        })
        .await;
        let (ok, _, err) = cli_in(&a.path("portcullis.toml"), "tokens", &["revoke", &id], None);
        assert!(ok, "{err}");
        both(&a, &b, 401, Duration::from_secs(1), async |g| {
            bearer(g, &token).await
        })
        .await;

        // A reset link is single-use across instances: opened on both, submitted to both at
        // once, exactly one succeeds.
        let out = users(&a, &["reset", "alice"], None);
        let link = out
            .split_whitespace()
            .find(|w| w.contains("/.portcullis/password?token="))
            .unwrap_or_else(|| panic!("{out}"));
        let path = &link[link.find("/.portcullis").unwrap()..];
        let mut one = Browser::new(&a.url(""));
        let mut two = Browser::new(&b.url(""));
        let p1 = one.get(path).await;
        let p2 = two.get(path).await;
        assert_eq!((p1.status, p2.status), (200, 200), "{}", p2.body);
        let fields = |p: &util::browser::Page, pw: &str| {
            vec![
                ("csrf".to_owned(), p.field("csrf").unwrap()),
                ("token".to_owned(), p.field("token").unwrap()),
                ("password".to_owned(), pw.to_owned()),
                ("confirm".to_owned(), pw.to_owned()),
            ]
        };
        let (f1, f2) = (
            fields(&p1, "violet harbor engine 77"),
            fields(&p2, "granite willow pocket 31"),
        );
        let as_ref = |f: &Vec<(String, String)>| -> Vec<(String, String)> { f.clone() };
        let (f1, f2) = (as_ref(&f1), as_ref(&f2));
        let post = |mut br: Browser, f: Vec<(String, String)>| async move {
            let f: Vec<(&str, &str)> = f.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            br.post("/.portcullis/password", &f).await.status
        };
        let (s1, s2) = tokio::join!(post(one, f1), post(two, f2));
        let mut statuses = [s1, s2];
        statuses.sort();
        assert_eq!(
            statuses,
            [303, 410],
            "exactly one of the two uses of the link succeeds"
        );
        // The new password works on both instances, the old one on neither.
        let new = if s1 == 303 {
            "violet harbor engine 77"
        } else {
            "granite willow pocket 31"
        };
        both(&a, &b, 200, Duration::from_secs(1), async |g| {
            status(g, "/echo/n", "alice", new).await
        })
        .await;
        both(&a, &b, 401, Duration::from_secs(1), async |g| {
            status(g, "/echo/o", "alice", "alice-pw").await
        })
        .await;

        // The database restarts under load: the users stay loaded (sign-ins go on from memory:
        // no 500, no wrong 401), and once it is back, changes reach every instance again.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let load: Vec<_> = [a.url("/echo/load"), b.url("/echo/load")]
            .into_iter()
            .flat_map(|url| [url.clone(), url])
            .map(|url| {
                let stop = stop.clone();
                tokio::spawn(async move {
                    let c = client();
                    let mut seen = std::collections::BTreeMap::new();
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let s = c
                            .get(&url)
                            .basic_auth("bob", Some("bob-new-pw"))
                            .send()
                            .await
                            .map_or(0, |r| r.status().as_u16());
                        *seen.entry(s).or_insert(0u32) += 1;
                    }
                    seen
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(200)).await;
        pg.stop();
        assert_eq!(status(&a, "/echo/down", "bob", "bob-new-pw").await, 200);
        let down = b.url("/.portcullis/password?token=whatever");
        let r = client().get(down).send().await.unwrap();
        assert_eq!(r.status(), 503, "a page that needs the database says so");
        pg.restart();
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut statuses = std::collections::BTreeMap::new();
        for task in load {
            for (s, n) in task.await.unwrap() {
                *statuses.entry(s).or_insert(0) += n;
            }
        }
        assert_eq!(statuses.keys().collect::<Vec<_>>(), [&200], "{statuses:?}");
        eprintln!("requests while the database restarted: {statuses:?}");
        users(&a, &["disable", "bob"], None);
        let took = both(&a, &b, 401, Duration::from_secs(5), async |g| {
            status(g, "/echo/r", "bob", "bob-new-pw").await
        })
        .await;
        eprintln!("after the restart, a change was seen by both instances after {took:?}");
    });
    // A reload that makes a new user store (cache_ttl changed) drops the old one, with its
    // database connections, from async code; then SIGTERM drops everything: no panic, exit 0.
    let mut a = a;
    let config = std::fs::read_to_string(a.path("portcullis.toml")).unwrap();
    std::fs::write(
        a.path("portcullis.toml"),
        config.replace("[auth]\n", "[auth]\ncache_ttl = \"1m\"\n"),
    )
    .unwrap();
    a.signal("HUP");
    eventually(Duration::from_secs(10), "the reload", || {
        a.stderr().contains("configuration reloaded").then_some(())
    });
    runtime().block_on(async {
        let (x, _) = (
            status(&a, "/echo/reloaded", "alice", "violet harbor engine 77").await,
            (),
        );
        let y = status(&a, "/echo/reloaded", "alice", "granite willow pocket 31").await;
        assert!(
            x == 200 || y == 200,
            "still serving after the reload: {}",
            a.stderr()
        );
    });
    let exit = a.terminate();
    assert!(exit.success(), "{exit}: {}", a.stderr());
    for g in [&a, &b] {
        let log = g.stderr();
        assert!(!log.contains("panicked"), "{log}");
    }
}

#[test]
fn check_config_reads_postgres_urls() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out) = check_config(
        dir.path(),
        "[server]\nlisten = [\"127.0.0.1:1\"]\nupstream = \"http://127.0.0.1:2\"\n[auth]\nusers = \"postgres:///users\"\n",
    );
    assert_eq!(code, Some(64), "{out}");
    assert!(out.contains(":5: auth.users: names no server"), "{out}");
    let (code, out) = check_config(
        dir.path(),
        "[server]\nlisten = [\"127.0.0.1:1\"]\nupstream = \"http://127.0.0.1:2\"\n[auth]\nusers = \"postgres://portcullis@db.internal/users\"\nschemes = [\"basic\", \"bearer\"]\n",
    );
    assert_eq!(code, Some(0), "{out}");
}

#[test]
fn tls_to_postgres_with_a_private_ca() {
    // A server that refuses connections without TLS.
    let pg = Postgres::start_tls();
    let upstream = TestUpstream::start();
    let ca = pg.dir.path().join("ca.pem");
    let url = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        pg.url(),
        ca.display()
    );
    let config = basic_config().auth(&format!("users = \"{url}\""));
    let gw = Gateway::start(&config.build(), upstream.addr, &[]);
    let file = gw.path("import.htpasswd");
    htpasswd(&file, &["-B", "-C", "4"], "alice", "alice-pw");
    users(&gw, &["import", file.to_str().unwrap()], None);
    runtime().block_on(async {
        let started = Instant::now();
        while status(&gw, "/echo/tls", "alice", "alice-pw").await != 200 {
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{}",
                gw.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    // Without the CA, the server's certificate is not trusted: a clear error, no plaintext.
    let (ok, _, err) = cli_in(
        &{
            let p = gw.path("no-ca.toml");
            std::fs::write(
                &p,
                basic_config()
                    .auth(&format!("users = \"{}?sslmode=require\"", pg.url()))
                    .build()
                    .replace("@LISTEN@", "127.0.0.1:1")
                    .replace("@UPSTREAM@", "127.0.0.1:2"),
            )
            .unwrap();
            p
        },
        "users",
        &["list"],
        None,
    );
    assert!(!ok);
    assert!(err.to_lowercase().contains("certificate"), "{err}");
}
