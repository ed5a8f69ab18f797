//! The command line: help, check-config diagnostics and exit codes, hash, demo, start-up
//! failures that must not half-start.

mod util;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use util::*;

fn run(args: &[&str], dir: &std::path::Path) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

#[test]
fn every_subcommand_has_help() {
    let dir = tempfile::tempdir().unwrap();
    let top = String::from_utf8(run(&["--help"], dir.path()).stdout).unwrap();
    for sub in ["serve", "demo", "check-config", "hash"] {
        assert!(top.contains(sub), "{top}");
        let out = run(&[sub, "--help"], dir.path());
        assert!(out.status.success(), "{sub} --help");
        assert!(
            String::from_utf8(out.stdout).unwrap().len() > 100,
            "{sub} --help says too little"
        );
    }
}

#[test]
fn check_config_lists_every_problem_with_line_and_suggestion_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("portcullis.toml"),
        "[server]\nlisten = [\"127.0.0.1:8080\"]\nupstrem = \"http://127.0.0.1:3000\"\nheader_timeout = \"ten seconds\"\n\n[auth]\nusers = \"missing.htpasswd\"\nacl_status = 402\n\n[errors]\nmode = \"detailed-local\"\n",
    )
    .unwrap();
    for cmd in [&["check-config"][..], &["serve"][..]] {
        let out = run(cmd, dir.path());
        assert_eq!(out.status.code(), Some(64), "{cmd:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(
            err.contains("portcullis.toml:3: server.upstrem")
                && err.contains("did you mean \"upstream\""),
            "{err}"
        );
        assert!(err.contains(":4: server.header_timeout"), "{err}");
        assert!(
            err.contains(":7: auth.users") && err.contains("missing.htpasswd"),
            "{err}"
        );
        assert!(err.contains(":8: auth.acl_status"), "{err}");
        assert!(err.contains(":11: errors.mode"), "{err}");
        // Issue 21.6: the summary is a line of its own, after the last problem's line.
        let last = err.lines().last().unwrap();
        assert!(
            last.contains("problem(s)") && !last.contains("errors.mode"),
            "{err}"
        );
        // Issue 21.9: no terminal, no colour codes.
        assert!(!err.contains('\u{1b}'), "{err}");
    }
}

#[test]
fn check_config_accepts_a_valid_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("users.htpasswd"), "").unwrap();
    std::fs::write(
        dir.path().join("portcullis.toml"),
        "[server]\nupstream = \"http://127.0.0.1:3000\"\n[auth]\nusers = \"users.htpasswd\"\n",
    )
    .unwrap();
    let out = run(&["check-config", "-c", "portcullis.toml"], dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_port_in_use_is_a_clear_error_and_nothing_starts() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("users.htpasswd"), "").unwrap();
    std::fs::write(
        dir.path().join("portcullis.toml"),
        format!("[server]\nlisten = \"{}\"\nupstream = \"http://127.0.0.1:3000\"\n[auth]\nusers = \"users.htpasswd\"\n", busy.local_addr().unwrap()),
    )
    .unwrap();
    let out = run(&["serve"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("cannot listen on") && err.to_lowercase().contains("in use"),
        "{err}"
    );
}

#[test]
fn a_missing_certificate_is_reported_by_name() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("users.htpasswd"), "").unwrap();
    std::fs::write(
        dir.path().join("portcullis.toml"),
        "[server]\nupstream = \"http://127.0.0.1:3000\"\ntls = { cert = \"nope.pem\", key = \"nokey.pem\" }\n[auth]\nusers = \"users.htpasswd\"\n",
    )
    .unwrap();
    let out = run(&["serve"], dir.path());
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("nope.pem"), "{err}");
}

#[test]
fn hash_writes_argon2id_by_default_and_bcrypt_on_request() {
    assert!(portcullis_hash("s3cret", &[]).starts_with("$argon2id$"));
    let b = portcullis_hash("s3cret", &["--bcrypt", "--cost", "5"]);
    assert!(b.starts_with("$2y$05$"), "{b}");
    let line = portcullis_hash("s3cret", &["--user", "bob"]);
    assert!(line.starts_with("bob:$argon2id$"));
}

#[test]
fn demo_runs_with_no_files_and_prints_what_to_do() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["demo", "--listen", &format!("127.0.0.1:{port}")])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut password = None;
    let mut url = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(p) = line.trim().strip_prefix("Password") {
            password = Some(p.trim().to_owned());
        }
        if let Some(u) = line.trim().strip_prefix("Open") {
            url = u.split_whitespace().next().map(str::to_owned);
        }
        if password.is_some() && url.is_some() {
            break;
        }
    }
    let (password, url) = (
        password.expect("a password is printed"),
        url.expect("a URL is printed"),
    );
    assert_eq!(url, format!("http://127.0.0.1:{port}/"));
    std::thread::spawn(move || for _ in lines {}); // keep draining the access log
    let rt = runtime();
    let (denied, page) = rt.block_on(async {
        let c = client();
        let denied = c.get(&url).send().await.unwrap().status();
        // A browser is sent to the sign-in page.
        let browser = c
            .get(&url)
            .header("accept", "text/html")
            .send()
            .await
            .unwrap();
        assert_eq!(browser.status(), 302);
        assert_eq!(browser.headers()["location"], "/.portcullis/login?rd=%2F");
        let page = c
            .get(&url)
            .basic_auth("demo", Some(&password))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        (denied, page)
    });
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(denied, 401);
    assert!(
        page.contains("signed in as <strong>demo</strong>"),
        "{page}"
    );
    let _ = Duration::ZERO;
}
