//! The SQLite user store end to end: `portcullis users …` while the server runs, Basic sign-in
//! against it, groups to the upstream, disable/enable, password change, htpasswd import.

mod util;

use std::process::Command;
use std::time::Duration;

use util::*;

/// Users in SQLite, `/admin/**` for the group admins.
fn site_config() -> String {
    SiteConfig::new()
        .auth("users = \"sqlite:users.db\"")
        .log("access = \"off\"")
        .section("logon", "max_failures = 1000")
        .raw("[[rule]]\npath = \"/admin/**\"\nallow = [\"group:admins\"]\n")
        .build()
}

fn users(dir: &std::path::Path, args: &[&str], password: Option<&str>) -> String {
    let (ok, out, err) = cli_in(&dir.join("portcullis.toml"), "users", args, password);
    assert!(ok, "users {args:?}: {err}");
    out
}

#[test]
fn users_managed_while_the_server_runs() {
    let upstream = TestUpstream::start();
    let dir = tempfile::tempdir().unwrap();
    // The config must exist before `users add` can find the database.
    let config = site_config().replace("@UPSTREAM@", &upstream.addr.to_string());
    std::fs::write(
        dir.path().join("portcullis.toml"),
        config.replace("@LISTEN@", "127.0.0.1:1"),
    )
    .unwrap();
    users(
        dir.path(),
        &["add", "alice", "--group", "admins,staff"],
        Some("alice-pw"),
    );
    let d = dir.path().to_path_buf();
    let gw = Gateway::start_in(dir, &site_config(), upstream.addr);
    let rt = runtime();
    let status = |user: &str, pw: &str, path: &str| {
        rt.block_on(async {
            client()
                .get(gw.url(path))
                .basic_auth(user, Some(pw))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    assert_eq!(status("alice", "alice-pw", "/admin/x"), 200);
    let seen: serde_json::Value = rt.block_on(async {
        client()
            .get(gw.url("/x"))
            .basic_auth("alice", Some("alice-pw"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    assert_eq!(seen["headers"]["remote-groups"], "admins,staff");
    assert_eq!(status("alice", "wrong", "/x"), 401);

    users(&d, &["disable", "alice"], None);
    eventually(Duration::from_secs(10), "alice disabled", || {
        (status("alice", "alice-pw", "/x") == 401).then_some(())
    });
    users(&d, &["enable", "alice"], None);
    eventually(Duration::from_secs(10), "alice enabled", || {
        (status("alice", "alice-pw", "/x") == 200).then_some(())
    });
    users(&d, &["passwd", "alice"], Some("new-pw"));
    eventually(Duration::from_secs(10), "the new password", || {
        (status("alice", "new-pw", "/x") == 200).then_some(())
    });
    assert_eq!(
        status("alice", "alice-pw", "/x"),
        401,
        "the old password no longer works"
    );

    // Import keeps the hashes written by Apache's htpasswd.
    let file = d.join("legacy.htpasswd");
    htpasswd(&file, &["-B", "-C", "4"], "bob", "bob-pw");
    let out = Command::new(BIN)
        .args(["users", "import"])
        .arg(&file)
        .arg("-c")
        .arg(d.join("portcullis.toml"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("imported 1 user(s)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(Duration::from_secs(10), "bob imported", || {
        (status("bob", "bob-pw", "/x") == 200).then_some(())
    });
    assert_eq!(
        status("bob", "bob-pw", "/admin/x"),
        401,
        "bob has no groups"
    );

    let list = users(&d, &["list", "--json"], None);
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    let alice = list
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "alice")
        .unwrap();
    assert!(
        alice["last_sign_in"].as_i64().is_some(),
        "the last sign-in is recorded: {alice}"
    );
    assert!(
        !list.to_string().contains("$2y$") && !list.to_string().contains("argon2"),
        "no hashes listed"
    );
    users(&d, &["del", "bob"], None);
    eventually(Duration::from_secs(10), "bob deleted", || {
        (status("bob", "bob-pw", "/x") == 401).then_some(())
    });
}

#[test]
fn users_needs_a_user_database() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("users.htpasswd"), "").unwrap();
    std::fs::write(
        dir.path().join("portcullis.toml"),
        "[server]\nupstream = \"http://127.0.0.1:9\"\n[auth]\nusers = \"users.htpasswd\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["users", "list", "-c"])
        .arg(dir.path().join("portcullis.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("sqlite:"));
}
