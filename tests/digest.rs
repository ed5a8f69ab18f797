//! Digest (RFC 7616) end to end: users from Apache's real `htdigest` and from `portcullis hash
//! --digest`, signed in by curl (SHA-256 and MD5), and a Python client that does what curl
//! will not: replay a request, answer an expired nonce, forge one, sign another uri.

mod util;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use util::*;

const REALM: &str = "Cameras";

/// A directory with `users.htdigest`: `cam` (MD5 only, written by Apache's htdigest) and `sha`
/// (MD5 and SHA-256 lines from `portcullis hash --digest`), and an empty htpasswd file.
fn users_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.htdigest");
    let mut htdigest = Command::new("htdigest")
        .arg("-c")
        .arg(&file)
        .args([REALM, "cam"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("Apache's htdigest (apache2-utils)");
    htdigest
        .stdin
        .take()
        .unwrap()
        .write_all(b"cam-pw\ncam-pw\n")
        .unwrap();
    assert!(htdigest.wait().unwrap().success());
    let lines = portcullis_hash("sha-pw", &["--digest", "--realm", REALM, "--user", "sha"]);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap();
    f.write_all(format!("{lines}\n").as_bytes()).unwrap();
    std::fs::write(dir.path().join("users.htpasswd"), "").unwrap();
    dir
}

fn site(digest_extra: &str) -> (TestUpstream, Gateway) {
    let upstream = TestUpstream::start();
    let config = SiteConfig::new()
        .auth(&format!(
            "realm = \"{REALM}\"\nschemes = [\"digest\"]\npublic = [\"/public/**\"]"
        ))
        .section(
            "auth.digest",
            &format!("users = \"users.htdigest\"\n{digest_extra}"),
        )
        .section("logon", "max_failures = 4")
        .raw("[[rule]]\npath = \"/admin/**\"\nallow = [\"user:sha\"]\n")
        .build();
    let gw = Gateway::start_in(users_dir(), &config, upstream.addr);
    (upstream, gw)
}

/// curl --digest: the status and the body.
fn curl(url: &str, user: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "--digest", "-u", user, "-w", "\n%{http_code}"])
        .arg(url)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (status.trim().parse().unwrap(), body.to_owned())
}

/// The Python client: runs `scenario` against `base` and prints one JSON object.
const CLIENT: &str = r#"
import hashlib, json, re, sys, time, urllib.request, urllib.error
base, user, pw, realm, alg, scenario = sys.argv[1:7]
H = lambda s: (hashlib.sha256 if alg == "SHA-256" else hashlib.md5)(s.encode()).hexdigest()
def get(path, auth=None):
    req = urllib.request.Request(base + path, headers={"Accept": "application/problem+json"})
    if auth: req.add_header("Authorization", auth)
    try:
        r = urllib.request.urlopen(req); return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()
def challenge(headers):
    for c in headers.get_all("WWW-Authenticate") or []:
        if "algorithm=" + alg in c:
            return c
def signed(nonce, nc, uri, username=None, userhash=False, password=pw):
    ha1 = H(f"{user}:{realm}:{password}")
    resp = H(f"{ha1}:{nonce}:{nc}:c0ffee:auth:" + H(f"GET:{uri}"))
    name = username or user
    return (f'Digest username="{name}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
            f'response="{resp}", qop=auth, nc={nc}, cnonce="c0ffee", algorithm={alg}'
            + (", userhash=true" if userhash else ""))
def reason(body):
    try: return json.loads(body).get("reason")
    except Exception: return None
out = {}
_, h, _ = get("/x")
c = challenge(h)
nonce = re.search(r'nonce="([^"]+)"', c).group(1)
if scenario == "replay":
    s1, _, _ = get("/x", signed(nonce, "00000001", "/x"))
    s2, _, b2 = get("/x", signed(nonce, "00000001", "/x"))
    s3, _, _ = get("/x", signed(nonce, "00000002", "/x"))
    s4, _, b4 = get("/x", signed(nonce, "00000002", "/x"))
    out = {"first": s1, "replayed": [s2, reason(b2)], "next": s3, "replayed_next": [s4, reason(b4)]}
elif scenario == "late_replay":
    s1, _, _ = get("/x", signed(nonce, "00000001", "/x"))
    issued = int.from_bytes(__import__("base64").urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))[:8], "big")
    time.sleep(max(0, issued + 2 + 0.8 - time.time()))
    s2, _, b2 = get("/x", signed(nonce, "00000001", "/x"))
    out = {"first": s1, "late_replay": [s2, reason(b2)]}
elif scenario == "stale":
    time.sleep(2.2)
    s, h2, b = get("/x", signed(nonce, "00000001", "/x"))
    stale = [c for c in h2.get_all("WWW-Authenticate") or [] if "stale=true" in c]
    w, _, bw = get("/x", signed(nonce, "00000001", "/x", password="wrong"))
    out = {"right": [s, reason(b)], "stale_challenges": len(stale), "wrong": [w, reason(bw)]}
elif scenario == "forged":
    forged = nonce[:-4] + ("AAAA" if not nonce.endswith("AAAA") else "BBBB")
    s, _, b = get("/x", signed(forged, "00000001", "/x"))
    u, _, bu = get("/x", signed(nonce, "00000001", "/elsewhere"))
    d, _, bd = get("/x", signed(nonce, "00000002", "/x") + ', nc=00000003')
    hashed = H(f"{user}:{realm}")
    uh, _, _ = get("/x", signed(nonce, "00000004", "/x", username=hashed, userhash=True))
    out = {"forged": [s, reason(b)], "other_uri": [u, reason(bu)], "duplicate": [d, reason(bd)], "userhash": uh}
print(json.dumps(out))
"#;

fn python(gw: &Gateway, user: &str, pw: &str, alg: &str, scenario: &str) -> serde_json::Value {
    let out = Command::new("python3")
        .arg("-c")
        .arg(CLIENT)
        .args([&gw.url(""), user, pw, REALM, alg, scenario])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn curl_signs_in_with_sha_256_and_md5_and_the_log_names_the_user() {
    let (_upstream, gw) = site("");
    // curl answers the first challenge, SHA-256.
    let (status, body) = curl(&gw.url("/x"), "sha:sha-pw");
    assert_eq!(status, 200, "{body}");
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["headers"]["remote-user"], "sha");
    assert!(
        seen["headers"].get("authorization").is_none(),
        "the Digest response does not reach the application"
    );
    assert_eq!(curl(&gw.url("/admin/x"), "sha:sha-pw").0, 200);
    assert_eq!(curl(&gw.url("/x"), "sha:wrong").0, 401);
    // Apache's htdigest writes MD5 only: with SHA-256 first, curl cannot sign cam in.
    assert_eq!(curl(&gw.url("/x"), "cam:cam-pw").0, 401);
    let log = eventually(Duration::from_secs(5), "the log lines", || {
        std::fs::read_to_string(gw.path("access.log"))
            .ok()
            .filter(|l| l.contains(" sha ") && l.contains(" 401 1 "))
    });
    assert!(log.contains(" 200 0 "), "{log}");

    // Only MD5 offered: Apache's user signs in with curl, and a rule refuses it.
    let (_upstream, md5) = site("algorithms = [\"MD5\"]");
    let (status, body) = curl(&md5.url("/x"), "cam:cam-pw");
    assert_eq!(status, 200, "{body}");
    assert_eq!(curl(&md5.url("/admin/x"), "cam:cam-pw").0, 401);
    assert_eq!(curl(&md5.url("/x"), "cam:wrong").0, 401);
}

#[test]
fn a_realm_with_quotes_is_escaped_in_the_challenge_and_still_signs_in() {
    let upstream = TestUpstream::start();
    let dir = tempfile::tempdir().unwrap();
    let realm = "Staff \"only\"";
    let lines = portcullis_hash("q-pw", &["--digest", "--realm", realm, "--user", "q"]);
    std::fs::write(dir.path().join("users.htdigest"), format!("{lines}\n")).unwrap();
    std::fs::write(dir.path().join("users.htpasswd"), "").unwrap();
    let config = SiteConfig::new()
        .auth("realm = 'Staff \"only\"'\nschemes = [\"digest\"]")
        .section("auth.digest", "users = \"users.htdigest\"")
        .build();
    let gw = Gateway::start_in(dir, &config, upstream.addr);
    assert_eq!(curl(&gw.url("/x"), "q:q-pw").0, 200);
}

#[test]
fn a_401_has_one_challenge_per_algorithm_sha_256_first_with_fresh_nonces() {
    let (_upstream, gw) = site("");
    let rt = runtime();
    let r = rt.block_on(async { client().get(gw.url("/x")).send().await.unwrap() });
    assert_eq!(r.status(), 401);
    let challenges: Vec<String> = r
        .headers()
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(challenges.len(), 2, "{challenges:?}");
    assert!(
        challenges[0].contains("algorithm=SHA-256"),
        "{challenges:?}"
    );
    assert!(challenges[1].contains("algorithm=MD5"), "{challenges:?}");
    for c in &challenges {
        for part in [
            "Digest realm=\"Cameras\"",
            "qop=\"auth\"",
            "charset=UTF-8",
            "userhash=true",
            "opaque=",
        ] {
            assert!(c.contains(part), "{part} in {c}");
        }
    }
    let nonce = |c: &str| {
        c.split("nonce=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .to_owned()
    };
    assert_ne!(nonce(&challenges[0]), nonce(&challenges[1]));
}

#[test]
fn a_replayed_request_is_refused_and_counts_must_rise() {
    let (_upstream, gw) = site("");
    let out = python(&gw, "sha", "sha-pw", "SHA-256", "replay");
    assert_eq!(out["first"], 200, "{out}");
    assert_eq!(out["replayed"][0], 401, "{out}");
    assert_eq!(out["replayed"][1], "logon_failed", "{out}");
    assert_eq!(out["next"], 200, "{out}");
    assert_eq!(out["replayed_next"][0], 401, "{out}");
}

#[test]
fn an_expired_nonce_with_a_right_response_is_stale_and_a_wrong_one_is_refused() {
    let (_upstream, gw) = site("nonce_ttl = \"1s\"");
    let out = python(&gw, "cam", "cam-pw", "MD5", "stale");
    assert_eq!(out["right"][0], 401, "{out}");
    assert_eq!(out["right"][1], "stale_nonce", "{out}");
    assert_eq!(
        out["stale_challenges"], 2,
        "every Digest challenge says stale=true: {out}"
    );
    assert_eq!(out["wrong"][1], "logon_failed", "{out}");
    let log = eventually(Duration::from_secs(5), "the stale line", || {
        std::fs::read_to_string(gw.path("access.log"))
            .ok()
            .filter(|l| l.contains(" 401 2 "))
    });
    assert!(log.contains(" cam "), "{log}");
}

#[test]
fn a_replay_at_the_end_of_its_nonces_life_is_still_refused() {
    let (_upstream, gw) = site("nonce_ttl = \"2s\"");
    let out = python(&gw, "sha", "sha-pw", "SHA-256", "late_replay");
    assert_eq!(out["first"], 200, "{out}");
    assert_eq!(out["late_replay"][0], 401, "{out}");
}

#[test]
fn a_forged_nonce_another_uri_and_a_duplicate_parameter_are_refused_userhash_works() {
    let (_upstream, gw) = site("");
    let out = python(&gw, "sha", "sha-pw", "SHA-256", "forged");
    assert_eq!(out["forged"][0], 401, "{out}");
    assert_eq!(out["forged"][1], "logon_failed", "{out}");
    assert_eq!(
        out["other_uri"][0], 400,
        "the signed uri must be the request's: {out}"
    );
    assert_eq!(out["duplicate"][0], 400, "{out}");
    assert_eq!(out["userhash"], 200, "{out}");
}

#[test]
fn digest_failures_lock_out_like_passwords() {
    let (_upstream, gw) = site("");
    for _ in 0..4 {
        assert_eq!(curl(&gw.url("/x"), "sha:wrong").0, 401);
    }
    let rt = runtime();
    // The right password, now refused without being looked at.
    let (status, _) = curl(&gw.url("/x"), "sha:sha-pw");
    assert_eq!(status, 403);
    let r = rt.block_on(async {
        client()
            .get(gw.url("/public/ok"))
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(r, 200, "public paths stay open");
}

#[test]
fn check_config_says_digest_needs_its_users_and_warns_about_md5_only_users() {
    let dir = users_dir();
    let write = |text: &str| check_config(dir.path(), text);
    let (code, text) = write(
        "[server]\nupstream = \"http://127.0.0.1:9\"\n[auth]\nschemes = [\"digest\"]\nusers = \"users.htpasswd\"\n",
    );
    assert_eq!(code, Some(64), "{text}");
    assert!(text.contains("[auth.digest]"), "{text}");
    let (code, text) = write(&format!(
        "[server]\nupstream = \"http://127.0.0.1:9\"\n[auth]\nrealm = \"{REALM}\"\nschemes = [\"digest\"]\nusers = \"users.htpasswd\"\n[auth.digest]\nusers = \"users.htdigest\"\n"
    ));
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("only an MD5 line") && text.contains("cam"),
        "{text}"
    );
}

fn doctor(url: &str, user: &str) -> (Option<i32>, serde_json::Value) {
    let out = Command::new(BIN)
        .args(["doctor", "--json", "-u", user, url])
        .output()
        .unwrap();
    (
        out.status.code(),
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stdout))),
    )
}

#[test]
fn doctor_signs_in_with_digest_at_portcullis() {
    let (_upstream, gw) = site("");
    let (code, report) = doctor(&gw.url("/x"), "sha:sha-pw");
    assert_eq!(
        (code, report["verdict"].as_str()),
        (Some(0), Some("ok")),
        "{report}"
    );
    assert!(
        report
            .to_string()
            .contains("answering its SHA-256 challenge"),
        "{report}"
    );
    let (code, report) = doctor(&gw.url("/x"), "sha:wrong");
    assert_eq!(code, Some(1));
    assert_eq!(report["verdict"], "credentials_refused", "{report}");
    // Apache's user has only an MD5 line: doctor finds the right password works with MD5 and
    // says why curl and browsers fail.
    let (_, report) = doctor(&gw.url("/x"), "cam:cam-pw");
    assert_eq!(report["verdict"], "credentials_refused", "{report}");
    let advice = report["advice"].to_string();
    assert!(advice.contains("only for MD5"), "{report}");
    let (_, report) = doctor(&gw.url("/x"), "cam:wrong");
    assert!(
        report["advice"].to_string().contains("not accepted"),
        "{report}"
    );
}

/// Apache httpd with mod_auth_digest over the same kind of htdigest file (MD5).
struct Apache {
    httpd: util::httpd::Httpd,
    _dir: tempfile::TempDir,
}

fn apache_with_digest() -> Apache {
    let dir = users_dir();
    std::fs::create_dir_all(dir.path().join("www/cam")).unwrap();
    std::fs::write(dir.path().join("www/cam/index.html"), "camera\n").unwrap();
    let httpd = util::httpd::Httpd::start(
        dir.path(),
        &[
            "mpm_event",
            "authz_core",
            "authz_user",
            "authn_core",
            "authn_file",
            "auth_digest",
            "dir",
        ],
        &format!(
            r#"
DocumentRoot @DIR@/www
<Directory @DIR@/www/cam>
    AuthType Digest
    AuthName "{REALM}"
    AuthDigestProvider file
    AuthUserFile @DIR@/users.htdigest
    Require valid-user
</Directory>
"#
        ),
    );
    Apache { httpd, _dir: dir }
}

#[test]
fn doctor_signs_in_with_digest_at_apache_mod_auth_digest() {
    let apache = apache_with_digest();
    let url = format!("http://{}/cam/", apache.httpd.addr);
    let (code, report) = doctor(&url, "cam:cam-pw");
    assert_eq!(
        (code, report["verdict"].as_str()),
        (Some(0), Some("ok")),
        "{report}"
    );
    assert!(report.to_string().contains("MD5 challenge"), "{report}");
    let (_, report) = doctor(&url, "cam:wrong");
    assert_eq!(report["verdict"], "credentials_refused", "{report}");
}

#[test]
fn with_a_user_database_users_passwd_stores_the_digest_values() {
    let upstream = TestUpstream::start();
    let dir = tempfile::tempdir().unwrap();
    let config = SiteConfig::new()
        .auth(&format!(
            "realm = \"{REALM}\"\nschemes = [\"digest\"]\nusers = \"sqlite:users.db\""
        ))
        .build();
    let cfg = dir.path().join("portcullis.toml");
    std::fs::write(
        &cfg,
        config
            .replace("@LISTEN@", "127.0.0.1:1")
            .replace("@UPSTREAM@", &upstream.addr.to_string()),
    )
    .unwrap();
    let users = |args: &[&str], pw: Option<&str>| {
        let (ok, _, err) = cli_in(&cfg, "users", args, pw);
        assert!(ok, "users {args:?}: {err}");
    };
    users(&["add", "ann", "--bcrypt"], Some("ann-pw-1"));
    let d = dir.path().to_path_buf();
    let gw = Gateway::start_in(dir, &config, upstream.addr);
    let cfg = d.join("portcullis.toml");
    let users = |args: &[&str], pw: Option<&str>| {
        let (ok, _, err) = cli_in(&cfg, "users", args, pw);
        assert!(ok, "users {args:?}: {err}");
    };
    // curl answers SHA-256: both values are stored.
    assert_eq!(curl(&gw.url("/x"), "ann:ann-pw-1").0, 200);
    users(&["passwd", "ann", "--bcrypt"], Some("ann-pw-2"));
    // The server notices the change within a second; asking sooner with the new password would
    // count as failed sign-ins (and lock the account out after five).
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(curl(&gw.url("/x"), "ann:ann-pw-2").0, 200);
    assert_eq!(curl(&gw.url("/x"), "ann:ann-pw-1").0, 401);
    users(&["disable", "ann"], None);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        curl(&gw.url("/x"), "ann:ann-pw-2").0,
        401,
        "a disabled user"
    );
}
