//! Account setup and password reset end to end: `portcullis users invite|reset` print and mail
//! single-use links (to a real SMTP server, Python's aiosmtpd), the password page refuses weak
//! and common passwords, links work once, "forgot password" never tells whether an account
//! exists, and the person signs in with the new password.

mod util;

use std::process::Command;

use util::browser::Browser;
use util::portal::{start_accounts as start, users_cli as users};
use util::*;

/// `portcullis users add USER` with the password typed on standard input.
fn add_user(gw: &Gateway, user: &str, password: &str) {
    let mut add = Command::new(BIN)
        .args(["users", "add", user, "-c"])
        .arg(gw.path("portcullis.toml"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        add.stdin
            .take()
            .unwrap()
            .write_all(format!("{password}\n").as_bytes())
            .unwrap();
    }
    assert!(add.wait().unwrap().success());
}

/// Sends a code that is never right ("1234567" has seven digits) from the code step `page`.
async fn wrong_code(b: &mut Browser, page: &util::browser::Page) -> util::browser::Page {
    let (pending, csrf) = (page.field("pending").unwrap(), page.field("csrf").unwrap());
    b.post(
        "/.portcullis/login",
        &[
            ("csrf", &csrf),
            ("rd", "/app"),
            ("pending", &pending),
            ("code", "1234567"),
        ],
    )
    .await
}

/// Sets a password through the link's page; returns the answer to the POST.
async fn choose(b: &mut Browser, link: &str, password: &str, confirm: &str) -> util::browser::Page {
    let page = b.get(link).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let token = page.field("token").unwrap();
    let csrf = page.field("csrf").unwrap();
    b.post(
        "/.portcullis/password",
        &[
            ("csrf", &csrf),
            ("token", &token),
            ("password", password),
            ("confirm", confirm),
        ],
    )
    .await
}

#[test]
fn an_invited_person_chooses_a_password_and_signs_in() {
    let smtp = SmtpSink::start();
    let (_up, gw) = start(&smtp);
    let (stdout, stderr) = users(
        &gw,
        &[
            "invite",
            "carol",
            "--email",
            "carol@example.com",
            "--group",
            "staff",
        ],
    );
    let link = stdout.clone();
    assert!(
        link.starts_with(&format!("http://{}/.portcullis/password?token=", gw.addr)),
        "{link}"
    );
    assert!(stderr.contains("mailed to carol@example.com"), "{stderr}");
    let mail = smtp.wait_for(1);
    assert!(mail.contains("To: carol@example.com"), "{mail}");
    assert_eq!(password_link(&mail), link);

    runtime().block_on(async {
        let mut b = Browser::new(&format!("http://{}", gw.addr));
        let page = b.get(&link).await;
        assert!(page.body.contains(r#"autocomplete="new-password""#));
        assert!(page.body.contains(r#"autocomplete="username""#));
        assert_eq!(page.header("referrer-policy"), Some("no-referrer"));
        // Weak, common, mismatched: the form again with the reason, the link still works.
        let r = choose(&mut b, &link, "short", "short").await;
        assert_eq!(r.status, 400);
        assert!(r.text().contains("at least 10 characters"), "{}", r.body);
        let r = choose(&mut b, &link, "1qaz2wsx3edc", "1qaz2wsx3edc").await;
        assert_eq!(r.status, 400);
        assert!(r.text().contains("10,000 most common"), "{}", r.body);
        let r = choose(
            &mut b,
            &link,
            "plum tractor velvet 1987",
            "plum tractor velvet 1988",
        )
        .await;
        assert!(r.text().contains("not the same"), "{}", r.body);
        // A good one.
        let r = choose(
            &mut b,
            &link,
            "plum tractor velvet 1987",
            "plum tractor velvet 1987",
        )
        .await;
        assert_eq!(r.status, 303, "{}", r.body);
        assert_eq!(
            r.header("location"),
            Some("/.portcullis/login?rd=%2F&password_set=1")
        );
        // The link is spent.
        let again = b.get(&link).await;
        assert_eq!(again.status, 410);
        assert_eq!(again.header("referrer-policy"), Some("no-referrer"));
        assert!(again.text().contains("expired or was already used"));
        // Signing in with the new password works, and the groups reach the upstream.
        let r = b.sign_in("carol", "plum tractor velvet 1987", "/app").await;
        assert_eq!(r.status, 303, "{}", r.body);
        let app = b.get("/app").await;
        let echo: serde_json::Value = serde_json::from_str(&app.body).unwrap();
        assert_eq!(echo["headers"]["remote-user"], "carol");
        assert_eq!(echo["headers"]["remote-groups"], "staff");
    });
    // The token never reaches the access log.
    let log = std::fs::read_to_string(gw.path("access.log")).unwrap();
    let token = link.split("token=").nth(1).unwrap();
    assert!(!log.contains(token), "{log}");
    assert!(log.contains("GET /.portcullis/password - "), "{log}");
    let audit = std::fs::read_to_string(gw.path("audit.log")).unwrap();
    assert!(audit.contains(r#""event":"password_set""#), "{audit}");
}

#[test]
fn forgot_password_mails_a_link_without_telling_who_exists() {
    let smtp = SmtpSink::start();
    let (_up, gw) = start(&smtp);
    let (stdout, _) = users(&gw, &["invite", "dave", "--email", "dave@example.com"]);
    let invite = stdout.clone();
    smtp.wait_for(1);
    runtime().block_on(async {
        let mut b = Browser::new(&format!("http://{}", gw.addr));
        let r = choose(
            &mut b,
            &invite,
            "orange kayak mountain",
            "orange kayak mountain",
        )
        .await;
        assert_eq!(r.status, 303);

        // The sign-in page offers the reset; a refused password's page links to it too.
        let login = b.get("/.portcullis/login").await;
        assert!(login.text().contains(r#"href="/.portcullis/forgot""#));

        let ask = |email: &'static str| {
            let base = format!("http://{}", gw.addr);
            async move {
                let mut b = Browser::new(&base);
                let form = b.get("/.portcullis/forgot").await;
                assert!(form.body.contains(r#"autocomplete="email""#));
                let csrf = form.field("csrf").unwrap();
                let r = b
                    .post("/.portcullis/forgot", &[("csrf", &csrf), ("email", email)])
                    .await;
                (
                    r.status,
                    r.text().split("Request id").next().unwrap().to_owned(),
                )
            }
        };
        let known = ask("DAVE@example.com").await;
        let unknown = ask("nobody@example.com").await;
        assert_eq!(known.0, 200);
        assert_eq!(
            known, unknown,
            "the same answer whether or not the account exists"
        );
        let mail = smtp.wait_for(2);
        assert!(mail.contains("To: dave@example.com"), "{mail}");
        let link = password_link(&mail);
        // Asking again at once: the same answer, but no second mail (one a minute at most).
        assert_eq!(ask("dave@example.com").await, unknown);
        std::thread::sleep(std::time::Duration::from_millis(500));
        assert_eq!(
            smtp.messages().len(),
            2,
            "no mail for an unknown address, nor twice within a minute"
        );

        // Two tabs submit the same link at once: exactly one succeeds.
        let mut one = Browser::new(&format!("http://{}", gw.addr));
        let mut two = Browser::new(&format!("http://{}", gw.addr));
        let p1 = one.get(&link).await;
        let p2 = two.get(&link).await;
        let post = |b: &mut Browser, p: &util::browser::Page, pw: &'static str| {
            let fields = [
                ("csrf".to_owned(), p.field("csrf").unwrap()),
                ("token".to_owned(), p.field("token").unwrap()),
                ("password".to_owned(), pw.to_owned()),
                ("confirm".to_owned(), pw.to_owned()),
            ];
            let mut b2 = Browser::new(&b.base);
            b2.jar = b.jar.clone();
            async move {
                let f: Vec<(&str, &str)> = fields
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                b2.post("/.portcullis/password", &f).await.status
            }
        };
        let (s1, s2) = tokio::join!(
            post(&mut one, &p1, "violet harbor engine 77"),
            post(&mut two, &p2, "granite willow pocket 31")
        );
        let mut statuses = [s1, s2];
        statuses.sort();
        assert_eq!(statuses, [303, 410]);
        // The old password no longer works; exactly one of the new ones does.
        let mut b = Browser::new(&format!("http://{}", gw.addr));
        assert_eq!(
            b.sign_in("dave", "orange kayak mountain", "/").await.status,
            401
        );
        let winner = if s1 == 303 {
            "violet harbor engine 77"
        } else {
            "granite willow pocket 31"
        };
        assert_eq!(b.sign_in("dave", winner, "/").await.status, 303);
    });
    // `users list` shows the address and whether a second factor is set.
    let (list, _) = users(&gw, &["list", "--json"]);
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list[0]["email"], "dave@example.com", "{list}");
    assert_eq!(list[0]["totp"], false);
    // `users reset` prints (and mails) a fresh link too.
    let (stdout, stderr) = users(&gw, &["reset", "dave"]);
    assert!(stdout.contains("/.portcullis/password?token="), "{stdout}");
    assert!(stderr.contains("mailed to dave@example.com"), "{stderr}");
}

#[test]
fn a_totp_second_factor_is_asked_after_the_password() {
    let smtp = SmtpSink::start();
    let (_up, gw) = start(&smtp);
    let config = std::fs::read_to_string(gw.path("portcullis.toml")).unwrap();
    std::fs::write(
        gw.path("portcullis.toml"),
        config.replace(r#"schemes = ["form"]"#, r#"schemes = ["form", "basic"]"#),
    )
    .unwrap();
    add_user(&gw, "erin", "erin-secret-pass");
    let (uri, _) = users(&gw, &["totp", "enable", "erin"]);
    assert!(
        uri.starts_with("otpauth://totp/Restricted%20area:erin?secret="),
        "{uri}"
    );
    let secret = uri
        .split("secret=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap();
    let raw = store::totp::unbase32(secret).unwrap();
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
    // The server reloads its config (schemes): asked at once rather than waiting for the poll.
    gw.signal("HUP");
    eventually(
        std::time::Duration::from_secs(10),
        "the configuration reloaded",
        || gw.stderr().contains("configuration reloaded").then_some(()),
    );
    runtime().block_on(async {
        // Basic cannot carry the code: refused even with the right password.
        let r = client()
            .get(gw.url("/app"))
            .basic_auth("erin", Some("erin-secret-pass"))
            .header("accept", "text/html")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        assert!(r.headers().contains_key("www-authenticate"));
        let page = r.text().await.unwrap();
        // The truth, not "check the password and Caps Lock": the account needs its code, which
        // the sign-in page asks for; the page links to it.
        assert!(page.contains("second factor"), "{page}");
        assert!(page.contains("sign-in page"), "{page}");
        assert!(!page.contains("Caps Lock"), "{page}");
        assert!(
            page.contains("login?rd=%2Fapp"),
            "a link to the sign-in page: {page}"
        );
        // A wrong password of the same user is an ordinary wrong password.
        let wrong = client()
            .get(gw.url("/app"))
            .basic_auth("erin", Some("not-her-password"))
            .header("accept", "text/html")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401);
        assert!(!wrong.text().await.unwrap().contains("second factor"));

        let mut b = Browser::new(&format!("http://{}", gw.addr));
        let step = b.sign_in("erin", "erin-secret-pass", "/app").await;
        assert_eq!(step.status, 200, "{}", step.body);
        assert!(
            step.body.contains(r#"autocomplete="one-time-code""#),
            "{}",
            step.body
        );
        assert!(!b.jar.contains_key("portcullis_session"));
        let pending = step.field("pending").unwrap();
        let csrf = step.field("csrf").unwrap();
        let wrong = b
            .post(
                "/.portcullis/login",
                &[
                    ("csrf", &csrf),
                    ("rd", "/app"),
                    ("pending", &pending),
                    ("code", "000000"),
                ],
            )
            .await;
        // (000000 could be the current code once in a million runs.)
        if code_now() != "000000" {
            assert_eq!(wrong.status, 401, "{}", wrong.body);
            assert!(wrong.text().contains("not accepted"));
        }
        let code = code_now();
        let pending = wrong.field("pending").unwrap_or(pending);
        let csrf = wrong.field("csrf").unwrap_or(csrf);
        let ok = b
            .post(
                "/.portcullis/login",
                &[
                    ("csrf", &csrf),
                    ("rd", "/app"),
                    ("pending", &pending),
                    ("code", &code),
                ],
            )
            .await;
        assert_eq!(ok.status, 303, "{}", ok.body);
        assert_eq!(ok.header("location"), Some("/app"));
        assert_eq!(b.get("/app").await.status, 200);
        // The same code again (another browser, right password): refused, it was spent.
        let mut other = Browser::new(&format!("http://{}", gw.addr));
        let step = other.sign_in("erin", "erin-secret-pass", "/").await;
        let replay = other
            .post(
                "/.portcullis/login",
                &[
                    ("csrf", &step.field("csrf").unwrap()),
                    ("pending", &step.field("pending").unwrap()),
                    ("code", &code),
                ],
            )
            .await;
        assert_eq!(replay.status, 401, "{}", replay.body);
        // A forged pending token (another user's name) is refused.
        let forged = other
            .post(
                "/.portcullis/login",
                &[
                    ("csrf", &step.field("csrf").unwrap()),
                    ("pending", "YWxpY2U.9999999999.AAAA"),
                    ("code", &code_now()),
                ],
            )
            .await;
        assert_eq!(forged.status, 400);
        assert!(!other.jar.contains_key("portcullis_session"));
    });
    // The audit log: no sign-in for the refused Basic request, and the form sign-in recorded
    // once the code was accepted, not after the password alone.
    let audit = std::fs::read_to_string(gw.path("audit.log")).unwrap();
    let erin: Vec<&str> = audit
        .lines()
        .filter(|l| l.contains(r#""user":"erin""#))
        .collect();
    assert!(
        !erin
            .iter()
            .any(|l| l.contains(r#""scheme":"basic""#) && l.contains(r#""event":"sign_in""#)),
        "{audit}"
    );
    assert!(
        erin.iter()
            .any(|l| l.contains(r#""event":"sign_in_failed""#)
                && l.contains(r#""scheme":"basic""#)
                && l.contains(r#""reason":"second_factor_required""#)),
        "the Basic refusal is audited with its reason: {audit}"
    );
    let factor = erin
        .iter()
        .position(|l| l.contains(r#""accepted":true"#))
        .expect("second_factor accepted");
    let signed_in = erin
        .iter()
        .position(|l| l.contains(r#""event":"sign_in""#))
        .expect("sign_in");
    assert!(factor < signed_in, "{audit}");
}

#[test]
fn a_new_password_ends_the_sessions_of_the_old_one() {
    let smtp = SmtpSink::start();
    let (_up, gw) = start(&smtp);
    let (invite, _) = users(&gw, &["invite", "frank"]);
    runtime().block_on(async {
        let base = format!("http://{}", gw.addr);
        let mut laptop = Browser::new(&base);
        let r = choose(
            &mut laptop,
            &invite,
            "first tangerine lantern",
            "first tangerine lantern",
        )
        .await;
        assert_eq!(r.status, 303);
        assert_eq!(
            laptop
                .sign_in("frank", "first tangerine lantern", "/")
                .await
                .status,
            303
        );
        assert_eq!(laptop.get("/app").await.status, 200);
        // The password is reset (say, because the laptop was stolen).
        let (reset, _) = users(&gw, &["reset", "frank"]);
        let mut phone = Browser::new(&base);
        let r = choose(
            &mut phone,
            &reset,
            "second marble compass",
            "second marble compass",
        )
        .await;
        assert_eq!(r.status, 303);
        // The laptop's session, started with the old password, has ended.
        let r = laptop.get("/app").await;
        assert_eq!(r.status, 302, "{}", r.body);
        assert_eq!(
            r.header("location"),
            Some("/.portcullis/login?rd=%2Fapp&ended=1")
        );
        assert_eq!(
            phone
                .sign_in("frank", "second marble compass", "/")
                .await
                .status,
            303
        );
        assert_eq!(phone.get("/app").await.status, 200);
    });
}

#[test]
fn links_are_mailed_over_starttls_to_a_server_with_a_private_ca() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let smtp = SmtpSink::start_tls(&cert.cert.pem(), &cert.signing_key.serialize_pem());
    let upstream = TestUpstream::start();
    let config = util::portal::accounts_config(smtp.port)
        .section("mail", "host = \"localhost\"")
        .section("mail", "starttls = true")
        .section("mail", "ca = \"smtp-ca.pem\"")
        .build();
    let gw = Gateway::start(&config, upstream.addr, &[("smtp-ca.pem", &cert.cert.pem())]);
    let (link, stderr) = users(&gw, &["invite", "gina", "--email", "gina@example.com"]);
    assert!(stderr.contains("mailed to gina@example.com"), "{stderr}");
    let mail = smtp.wait_for(1);
    assert_eq!(password_link(&mail), link);
    // Without the CA, the certificate is refused and nothing is sent (the link is still printed).
    std::fs::write(
        gw.path("portcullis.toml"),
        std::fs::read_to_string(gw.path("portcullis.toml"))
            .unwrap()
            .replace("ca = \"smtp-ca.pem\"\n", ""),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["users", "reset", "gina", "-c"])
        .arg(gw.path("portcullis.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    assert_eq!(smtp.messages().len(), 1);
}

/// Issue 12's drift: wrong second-factor codes count like wrong passwords, and the lockout they
/// start is audited (`locked_out`) as a password lockout is; the next attempt is refused before
/// the code is looked at.
#[test]
fn wrong_codes_lock_out_and_the_lockout_is_audited() {
    let smtp = SmtpSink::start();
    let (_up, gw) = start(&smtp);
    add_user(&gw, "fay", "fay-secret-pass-1");
    users(&gw, &["totp", "enable", "fay"]);
    runtime().block_on(async {
        let mut b = Browser::new(&format!("http://{}", gw.addr));
        let mut page = b.sign_in("fay", "fay-secret-pass-1", "/app").await;
        assert_eq!(page.status, 200, "{}", page.body);
        // Five wrong codes (the lockout's default max_failures); a six-digit code is never
        // "1234567".
        for n in 1..=5 {
            page = wrong_code(&mut b, &page).await;
            assert_eq!(page.status, 401, "code {n}: {}", page.body);
        }
        let locked = wrong_code(&mut b, &page).await;
        assert_eq!(locked.status, 403, "{}", locked.body);
    });
    let audit = eventually(
        std::time::Duration::from_secs(5),
        "the lockout audited",
        || {
            std::fs::read_to_string(gw.path("audit.log"))
                .ok()
                .filter(|a| a.contains(r#""event":"locked_out""#))
        },
    );
    assert!(audit.contains("fay"), "{audit}");
}

/// A spent link is an answer (410), not a refusal: the log names no reason for it (it was
/// logged as `bad_request`); a user database that cannot be read is `state_unavailable`, 503.
#[test]
fn account_pages_log_what_happened() {
    let smtp = SmtpSink::start();
    let upstream = TestUpstream::start();
    let config = util::portal::accounts_config(smtp.port)
        .log("access = \"access.json\"")
        .log("format = \"json\"")
        .build();
    let gw = Gateway::start(&config, upstream.addr, &[]);
    let (link, _) = users(&gw, &["invite", "dora"]);
    let reason_of = |status: u16| {
        eventually(std::time::Duration::from_secs(5), "the log line", || {
            std::fs::read_to_string(gw.path("access.json"))
                .ok()?
                .lines()
                .rev()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| v["sc_status"] == status)
                .map(|v| v["reason"].clone())
        })
    };
    runtime().block_on(async {
        let mut b = Browser::new(&format!("http://{}", gw.addr));
        let r = choose(
            &mut b,
            &link,
            "quiet harbor lantern 55",
            "quiet harbor lantern 55",
        )
        .await;
        assert_eq!(r.status, 303, "{}", r.body);
        assert_eq!(b.get(&link).await.status, 410);
    });
    assert_eq!(reason_of(410), serde_json::Value::Null);
    // The user database unreadable (a directory where the file was): 503 state_unavailable.
    std::fs::remove_file(gw.path("users.db")).unwrap();
    std::fs::create_dir(gw.path("users.db")).unwrap();
    runtime().block_on(async {
        let mut b = Browser::new(&format!("http://{}", gw.addr));
        let r = b.get(&link).await;
        assert_eq!(r.status, 503, "{}", r.body);
    });
    assert_eq!(reason_of(503), "state_unavailable");
}

/// What Python's strict parser (`email.policy.strict`, which raises on any defect) reads in a
/// raw message: every header decoded, and each leaf part's type, charset, transfer encoding and
/// decoded content.
fn parse_strictly(raw: &str) -> serde_json::Value {
    let script = r#"
import email, email.policy, json, sys
msg = email.message_from_bytes(sys.stdin.buffer.read(), policy=email.policy.strict)
parts = []
for part in msg.walk():
    if part.is_multipart():
        continue
    parts.append({"type": part.get_content_type(), "charset": part.get_content_charset(),
                  "cte": part["Content-Transfer-Encoding"], "content": part.get_content()})
print(json.dumps({"headers": {k: str(v) for k, v in msg.items()},
                  "type": msg.get_content_type(), "parts": parts}))
"#;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(raw.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the strict parser refused the message: {}\n{raw}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The rules SpamAssassin (local tests only: `-L`, no network) hits on `raw`.
fn spamassassin_rules(raw: &str) -> Vec<String> {
    let mut child = Command::new("spamassassin")
        .args(["-L", "-t"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spamassassin (Debian: spamassassin)");
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(raw.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // "X-Spam-Status: No, score=… required=… tests=A,B,\n\tC autolearn=…" (folded).
    let status = text
        .split("\nX-Spam-Status:")
        .nth(1)
        .expect("an X-Spam-Status header")
        .split("\nX-")
        .next()
        .unwrap()
        .replace(['\n', '\t'], " ");
    let tests = status
        .split("tests=")
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_owned();
    tests
        .split(',')
        .filter(|t| !t.is_empty() && *t != "none")
        .map(str::to_owned)
        .collect()
}

#[test]
fn mail_is_well_formed_multipart_utf8_and_spamassassin_finds_no_fault_in_it() {
    let smtp = SmtpSink::start();
    let upstream = TestUpstream::start();
    let config = util::portal::accounts_config(smtp.port)
        .auth("realm = \"Équipe Zoë\"")
        .build();
    let gw = Gateway::start(&config, upstream.addr, &[]);
    let (link, stderr) = users(&gw, &["invite", "zoë", "--email", "zoe@example.com"]);
    assert!(stderr.contains("it works once, for 1 day."), "{stderr}");
    let raw = smtp.wait_for(1);
    let mail = parse_strictly(&raw);
    let headers = &mail["headers"];
    assert_eq!(mail["type"], "multipart/alternative", "{raw}");
    assert_eq!(headers["MIME-Version"], "1.0");
    assert_eq!(headers["Auto-Submitted"], "auto-generated");
    assert_eq!(
        headers["Subject"], "Your new account on Équipe Zoë: choose a password",
        "the subject decodes to UTF-8: {raw}"
    );
    assert!(
        raw.contains("=?utf-8?b?"),
        "an encoded word in the subject: {raw}"
    );
    let id = headers["Message-ID"].as_str().unwrap();
    assert!(
        id.starts_with('<') && id.ends_with("@example.com>"),
        "on the sender's domain: {id}"
    );
    assert!(headers["Date"].is_string());
    let parts = mail["parts"].as_array().unwrap();
    assert_eq!(parts.len(), 2, "{raw}");
    let (text, html) = (&parts[0], &parts[1]);
    assert_eq!(text["type"], "text/plain");
    assert_eq!(html["type"], "text/html");
    for part in [text, html] {
        assert_eq!(part["charset"], "utf-8", "{part}");
        assert!(
            matches!(part["cte"].as_str(), Some("7bit" | "base64")),
            "never quoted-printable: {part}"
        );
    }
    let text = text["content"].as_str().unwrap();
    assert!(text.contains("Hello zoë,"), "{text}");
    assert!(text.contains("on Équipe Zoë."), "{text}");
    assert!(text.contains("It works once, for 1 day."), "{text}");
    assert!(
        text.lines().any(|l| l == link),
        "the link on its own line, whole: {text}"
    );
    let html = html["content"].as_str().unwrap();
    // HTML-escaped as every value of a template is ('/' is &#x2f;): the same address.
    assert!(
        html.contains(&format!("href=\"{}\"", link.replace('/', "&#x2f;"))),
        "{html}"
    );
    assert!(html.contains("Équipe Zoë"), "{html}");
    assert!(
        !html.contains("<img") && !html.contains("src="),
        "no remote images"
    );

    // SpamAssassin finds nothing wrong with the headers or the MIME structure.
    let rules = spamassassin_rules(&raw);
    eprintln!("SpamAssassin rules hit: {rules:?}\n{raw}");
    let faults: Vec<&String> = rules
        .iter()
        .filter(|r| {
            [
                "MISSING_",
                "MIME_",
                "INVALID_",
                "HEADER_",
                "BAD_",
                "FROM_",
                "DATE_",
                "MSGID_",
                "HTML_MIME_",
                "TVD_",
                "EMPTY_",
                "SUBJ_",
            ]
            .iter()
            .any(|p| r.starts_with(p))
        })
        .collect();
    assert!(faults.is_empty(), "SpamAssassin: {rules:?}\n{raw}");

    // A reset mail in the same shape, its duration in words.
    let (_, stderr) = users(&gw, &["reset", "zoë"]);
    assert!(stderr.contains("it works once, for 1 hour."), "{stderr}");
    let reset = parse_strictly(&smtp.wait_for(2));
    assert_eq!(
        reset["headers"]["Subject"],
        "Choose a new password for Équipe Zoë"
    );
    assert!(
        reset["parts"][0]["content"]
            .as_str()
            .unwrap()
            .contains("It works once, for 1 hour."),
        "{reset}"
    );
}

#[test]
fn mail_templates_are_overridden_from_the_pages_folder() {
    let smtp = SmtpSink::start();
    let upstream = TestUpstream::start();
    let config = util::portal::accounts_config(smtp.port)
        .section("errors", "pages = \"pages\"")
        .build();
    let gw = Gateway::start(
        &config,
        upstream.addr,
        &[
            (
                "pages/mail.txt",
                "Welcome {{ user }} to {{ realm }}{% if invite %} (invited){% endif %}: {{ link }} ({{ valid_for }})\n",
            ),
            (
                "pages/mail.html",
                "<p>Welcome {{ user }}: <a href=\"{{ link }}\">{{ subject }}</a></p>\n",
            ),
        ],
    );
    let (link, _) = users(&gw, &["invite", "<b>eve", "--email", "eve@example.com"]);
    let mail = parse_strictly(&smtp.wait_for(1));
    let text = mail["parts"][0]["content"].as_str().unwrap();
    assert_eq!(
        text.trim_end(),
        format!("Welcome <b>eve to Restricted area (invited): {link} (1 day)"),
        "the text part as written, not HTML-escaped"
    );
    let html = mail["parts"][1]["content"].as_str().unwrap();
    assert!(
        html.contains("Welcome &lt;b&gt;eve:"),
        "HTML escaped: {html}"
    );
}

#[test]
fn a_refusing_smtp_server_is_retried_then_reported_and_the_link_still_printed() {
    // A temporary refusal (451) is tried again: the mail arrives once.
    let smtp = SmtpSink::start_refusing(1, "451 4.3.0 Greylisted, try again later");
    let (_up, gw) = start(&smtp);
    let (link, stderr) = users(&gw, &["invite", "fay", "--email", "fay@example.com"]);
    assert!(stderr.contains("mailed to fay@example.com"), "{stderr}");
    assert_eq!(password_link(&smtp.wait_for(1)), link);
    assert_eq!(smtp.messages().len(), 1);

    // A permanent refusal (550): non-zero exit, the server's words, the link printed anyway.
    let smtp = SmtpSink::start_refusing(100, "550 5.1.1 No such mailbox here");
    let (_up, gw) = start(&smtp);
    let (ok, stdout, stderr) = cli_in(
        &gw.path("portcullis.toml"),
        "users",
        &["invite", "gus", "--email", "gus@example.com"],
        None,
    );
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains("550") && stderr.contains("No such mailbox here"),
        "{stderr}"
    );
    assert!(stdout.contains("/.portcullis/password?token="), "{stdout}");
    assert!(smtp.messages().is_empty());

    // No SMTP server at all: the same.
    drop(smtp);
    let (ok, stdout, stderr) = cli_in(
        &gw.path("portcullis.toml"),
        "users",
        &["reset", "gus"],
        None,
    );
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("SMTP server 127.0.0.1:"), "{stderr}");
    assert!(stdout.contains("/.portcullis/password?token="), "{stdout}");
}

#[test]
fn a_reset_mail_the_server_refuses_is_logged_and_counted_and_the_page_says_the_same() {
    let smtp = SmtpSink::start_refusing(100, "550 5.7.1 Relaying denied");
    let upstream = TestUpstream::start();
    let admin = format!("127.0.0.1:{}", free_port());
    let config = util::portal::accounts_config(smtp.port)
        .section("admin", &format!("listen = \"{admin}\""))
        .build();
    let gw = Gateway::start(&config, upstream.addr, &[]);
    // The invitation itself cannot be mailed either: the CLI says so, the account exists.
    let (ok, _, stderr) = cli_in(
        &gw.path("portcullis.toml"),
        "users",
        &["invite", "hal", "--email", "hal@example.com"],
        None,
    );
    assert!(!ok && stderr.contains("Relaying denied"), "{stderr}");
    let page = runtime().block_on(async {
        let mut b = Browser::new(&format!("http://{}", gw.addr));
        let form = b.get("/.portcullis/forgot").await;
        let csrf = form.field("csrf").unwrap();
        let r = b
            .post(
                "/.portcullis/forgot",
                &[("csrf", &csrf), ("email", "hal@example.com")],
            )
            .await;
        assert_eq!(r.status, 200);
        r.text()
    });
    assert!(page.contains("It works once, for 1 hour."), "{page}");
    let metrics = || {
        runtime().block_on(async {
            client()
                .get(format!("http://{admin}/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        })
    };
    eventually(
        std::time::Duration::from_secs(10),
        "the failed mail counted",
        || {
            metrics()
                .contains("portcullis_mails_total{result=\"failed\"} 1")
                .then_some(())
        },
    );
    assert!(gw.stderr().contains("could not mail a reset link"));
    let audit = std::fs::read_to_string(gw.path("audit.log")).unwrap();
    assert!(
        audit
            .lines()
            .any(|l| l.contains(r#""event":"reset_requested""#)
                && l.contains(r#""mailed":false"#)
                && l.contains("Relaying denied")),
        "{audit}"
    );
}
