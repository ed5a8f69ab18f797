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

/// The fenced blocks of the README's quick start, in order: (language, lines).
fn quick_start_blocks() -> Vec<(String, Vec<String>)> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("## Five-minute quick start")
        .expect("the quick start");
    let section = &readme[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
    let mut blocks = Vec::new();
    let mut current: Option<(String, Vec<String>)> = None;
    for line in section.lines() {
        let t = line.trim_start();
        if let Some(lang) = t.strip_prefix("```") {
            match current.take() {
                Some(b) => blocks.push(b),
                None => current = Some((lang.to_owned(), Vec::new())),
            }
        } else if let Some((_, lines)) = current.as_mut() {
            lines.push(t.to_owned());
        }
    }
    blocks
}

/// Issue 21.5: the quick start, run as written (ports moved to free ones, the password typed
/// where it says RIGHT): its stand-in application answers, its commands work, and the access
/// log it shows is the one they write.
#[test]
fn the_readme_quick_start_works_as_written() {
    let blocks = quick_start_blocks();
    let dir = tempfile::tempdir().unwrap();
    let (gw_port, app_port) = (free_port(), free_port());
    let ports = |s: &str| {
        s.replace("127.0.0.1:8080", &format!("127.0.0.1:{gw_port}"))
            .replace("127.0.0.1:3000", &format!("127.0.0.1:{app_port}"))
            .replace("http.server 3000", &format!("http.server {app_port}"))
    };
    let toml = blocks
        .iter()
        .find(|(l, _)| l == "toml")
        .expect("a toml block");
    std::fs::write(
        dir.path().join("portcullis.toml"),
        ports(&toml.1.join("\n")),
    )
    .unwrap();
    htpasswd(
        &dir.path().join("users.htpasswd"),
        &["-B"],
        "alice",
        "qs-pw-1",
    );
    let commands: Vec<String> = blocks
        .iter()
        .filter(|(l, _)| l == "sh")
        .flat_map(|(_, lines)| lines.iter())
        .map(|l| l.split("  #").next().unwrap().trim().to_owned())
        .collect();
    assert!(
        commands.iter().any(|c| c.starts_with("export PATH=")),
        "the quick start must say how portcullis gets on PATH"
    );
    // A shell in the quick start's folder, with the built binary on PATH (its step 1).
    let shell = |cmd: &str| {
        let mut c = Command::new("sh");
        c.arg("-c").arg(cmd).current_dir(dir.path()).env(
            "PATH",
            format!(
                "{}:{}",
                std::path::Path::new(BIN).parent().unwrap().display(),
                std::env::var("PATH").unwrap()
            ),
        );
        c
    };
    let sh = |cmd: &str| shell(cmd).stdin(Stdio::null()).output().unwrap();
    let check = commands
        .iter()
        .find(|c| c.contains("check-config"))
        .unwrap();
    let out = sh(check);
    assert!(
        out.status.success(),
        "{check}: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The stand-in application and the gateway, each as the README starts them.
    let spawn = |cmd: &str| {
        shell(&format!("exec {cmd}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let app = commands
        .iter()
        .find(|c| c.starts_with("python3 -m http.server"))
        .expect("a stand-in app");
    let _app = Killed(spawn(&ports(app)));
    let serve = commands
        .iter()
        .find(|c| c.contains("portcullis serve"))
        .unwrap();
    let _gw = Killed(spawn(serve));
    wait_for_port(
        format!("127.0.0.1:{app_port}").parse().unwrap(),
        Duration::from_secs(20),
    );
    wait_for_port(
        format!("127.0.0.1:{gw_port}").parse().unwrap(),
        Duration::from_secs(20),
    );

    let curls: Vec<String> = commands
        .iter()
        .filter(|c| c.starts_with("curl "))
        .map(|c| ports(c).replace("alice:RIGHT", "alice:qs-pw-1"))
        .collect();
    assert_eq!(curls.len(), 3);
    let statuses: Vec<String> = curls
        .iter()
        .map(|c| {
            let out = sh(c);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(statuses, ["401", "401", "200"], "{curls:?}");

    // The example log lines: the same fields as the real ones, but for date, time, the user
    // agent's version and time-taken.
    let example = blocks
        .iter()
        .find(|(l, _)| l == "text")
        .expect("the example log");
    let shape = |line: &str| {
        let mut f: Vec<String> = line.split(' ').map(str::to_owned).collect();
        if f.len() == 15 {
            for i in [0, 1, 14] {
                f[i] = "*".into();
            }
            f[6] = "PORT".into();
            f[9] = f[9].split('/').next().unwrap().to_owned();
        }
        f.join(" ")
    };
    let want: Vec<String> = example.1.iter().map(|l| shape(l)).collect();
    let real = eventually(Duration::from_secs(5), "three log lines", || {
        let log = std::fs::read_to_string(dir.path().join("access.log")).ok()?;
        let lines: Vec<String> = log
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(&shape)
            .collect();
        (lines.len() >= 3).then_some(lines)
    });
    assert_eq!(real[real.len() - 3..], want[..]);
}
