//! The sign-in portal in a real browser: headless Chromium driven over WebDriver (chromedriver,
//! through fantoccini) against the real binary and a real upstream. The same scenarios as
//! `tests/portal.rs` and `tests/accounts.rs`, but cookies, redirects, forms and the pages are
//! handled by Chromium itself. Every page visited is saved as a PNG under `target/screenshots/`.

mod util;

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::cookies::Cookie;
use fantoccini::wd::Capabilities;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use util::*;

/// How long any one step may take (a page to load, an element to appear).
const STEP: Duration = Duration::from_secs(30);

// === impl ChromeDriver ===

/// A `chromedriver` on a free loopback port, in its own process group so that the Chromium it
/// starts is stopped with it (by the group's id) on drop, even when a test fails half-way.
struct ChromeDriver {
    port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl ChromeDriver {
    fn start() -> ChromeDriver {
        let tool = which("chromedriver").expect(
            "the browser tests need chromedriver and Chromium (Debian packages chromium-driver \
             and chromium), which are not on PATH: run scripts/test, which installs them",
        );
        assert!(
            which("chromium").is_some(),
            "the browser tests need Chromium (Debian package chromium), which is not on PATH: \
             run scripts/test, which installs it"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new(tool)
            .arg(format!("--port={port}"))
            .arg(format!(
                "--log-path={}",
                dir.path().join("chromedriver.log").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("chromedriver could not be started");
        wait_for_port(
            format!("127.0.0.1:{port}").parse().unwrap(),
            Duration::from_secs(20),
        );
        ChromeDriver { port, child, dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("chromedriver.log")).unwrap_or_default()
    }

    /// A new headless Chromium session with a fresh profile.
    async fn browser(&self) -> Client {
        let mut options = json!({
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--window-size=1280,900",
                "--no-first-run",
                "--password-store=basic",
                format!("--user-data-dir={}", self.dir.path().join("profile").display()),
            ],
            // No "save password?" bubble or breach check in the screenshots.
            "prefs": {
                "credentials_enable_service": false,
                "profile.password_manager_enabled": false,
                "profile.password_manager_leak_detection": false,
            },
        });
        if let Some(binary) = which("chromium") {
            options["binary"] = Value::from(binary.display().to_string());
        }
        let mut caps = Capabilities::new();
        caps.insert("goog:chromeOptions".into(), options);
        ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "Chromium did not start through chromedriver: {e}\nchromedriver log:\n{}",
                    self.log()
                )
            })
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        // The group chromedriver leads (its id is the group's id): chromedriver and Chromium.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// === what the browser shows ===

/// Where the browser is, and what its page says.
#[derive(Clone)]
struct Seen {
    /// The URL WebDriver reports (the one navigated to).
    url: String,
    /// The document's own `location.href` (differs on Chromium's error pages).
    location: String,
    path: String,
    query: Vec<(String, String)>,
    text: String,
}

impl Seen {
    fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

async fn seen(c: &Client) -> Option<Seen> {
    let url = c.current_url().await.ok()?;
    let page = c
        .execute(
            "return [location.href, document.body ? document.body.innerText : ''];",
            vec![],
        )
        .await
        .ok()?;
    Some(Seen {
        url: url.to_string(),
        location: page[0].as_str().unwrap_or_default().to_owned(),
        path: url.path().to_owned(),
        query: url
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect(),
        text: page[1].as_str().unwrap_or_default().to_owned(),
    })
}

/// Waits until the browser is at `path` with a page for which `ready` holds (polling the live
/// browser, no fixed sleeps); panics with the URL and the page's text after `STEP`.
async fn wait_at(c: &Client, path: &str, what: &str, ready: impl Fn(&Seen) -> bool) -> Seen {
    let deadline = Instant::now() + STEP;
    loop {
        let now = seen(c).await;
        if let Some(s) = now.as_ref().filter(|s| s.path == path && ready(s)) {
            return s.clone();
        }
        if Instant::now() > deadline {
            // What the browser showed, for the failure report (best effort).
            if let Ok(png) = c.screenshot().await {
                let _ = std::fs::write(
                    screenshot_path(&format!("failed-{}", what.replace(' ', "-"))),
                    png,
                );
            }
            match now {
                Some(s) if s.location.starts_with("chrome-error:") => panic!(
                    "timed out waiting for {what} at {path}: for {} Chromium shows its own error \
                     page ({}) instead of the gateway's, as it does for a 401 answer with a \
                     `WWW-Authenticate: Basic` challenge (a browser asks for Basic credentials \
                     rather than showing the page)",
                    s.url, s.location
                ),
                Some(s) => panic!(
                    "timed out waiting for {what} at {path}: the browser is at {}\n{}",
                    s.url, s.text
                ),
                None => panic!("timed out waiting for {what} at {path}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The status of the current page's response and how many redirects led to it (the browser's
/// own Navigation Timing record).
async fn navigation(c: &Client) -> (u64, u64) {
    let v = c
        .execute(
            "const n = performance.getEntriesByType('navigation')[0];\
             return [n.responseStatus, n.redirectCount];",
            vec![],
        )
        .await
        .unwrap();
    (v[0].as_u64().unwrap(), v[1].as_u64().unwrap())
}

/// The upstream's JSON echo, as the browser shows it.
async fn echo(c: &Client) -> Value {
    let pre = c
        .wait()
        .at_most(STEP)
        .for_element(Locator::Css("pre"))
        .await
        .unwrap();
    let text = pre.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not the upstream's JSON ({e}): {text}"))
}

/// `target/screenshots/NAME.png` (the directory created).
fn screenshot_path(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("{name}.png"))
}

/// Saves what Chromium shows as `target/screenshots/NAME.png`.
async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG screenshot");
    std::fs::write(screenshot_path(name), png).unwrap();
}

/// Types `value` into the input with id `id`, replacing what it held.
async fn fill(c: &Client, id: &str, value: &str) {
    let input = c
        .wait()
        .at_most(STEP)
        .for_element(Locator::Id(id))
        .await
        .unwrap_or_else(|e| panic!("no #{id} on the page: {e}"));
    input.clear().await.unwrap();
    input.send_keys(value).await.unwrap();
}

/// Clicks the button labelled `label`.
async fn click(c: &Client, label: &str) {
    let xpath = format!("//button[normalize-space()='{label}']");
    c.wait()
        .at_most(STEP)
        .for_element(Locator::XPath(&xpath))
        .await
        .unwrap_or_else(|e| panic!("no button \"{label}\" on the page: {e}"))
        .click()
        .await
        .unwrap();
}

/// Fills in the sign-in form and submits it.
async fn sign_in(c: &Client, user: &str, password: &str) {
    fill(c, "username", user).await;
    fill(c, "password", password).await;
    click(c, "Sign in").await;
}

async fn session_cookies(c: &Client) -> Vec<String> {
    c.get_all_cookies()
        .await
        .unwrap()
        .into_iter()
        .filter(|k| k.name() == "portcullis_session")
        .map(|k| k.value().to_owned())
        .collect()
}

// === the portal ===

#[test]
fn sign_in_wrong_password_denied_page_sign_out_and_stale_cookie_in_chromium() {
    let (_up, gw) = util::portal::start_portal(&util::portal::portal_config().build());
    let driver = ChromeDriver::start();
    let base = format!("http://{}", gw.addr);
    runtime().block_on(async {
        let c = driver.browser().await;

        // No session: Chromium is sent to the sign-in page, with where it was going.
        c.goto(&format!("{base}/app/page")).await.unwrap();
        let login = wait_at(&c, "/.portcullis/login", "the sign-in page", |s| {
            s.text.contains("Sign in")
        })
        .await;
        assert_eq!(login.param("rd"), Some("/app/page"), "{}", login.url);
        assert_eq!(navigation(&c).await, (200, 1));
        c.wait()
            .at_most(STEP)
            .for_element(Locator::Css("input#username[autocomplete=username]"))
            .await
            .unwrap();
        screenshot(&c, "signin").await;
        // On a phone-sized screen the form fits the width: no horizontal scrolling.
        c.set_window_size(390, 844).await.unwrap();
        let overflow = c
            .execute(
                "return document.documentElement.scrollWidth - window.innerWidth;",
                vec![],
            )
            .await
            .unwrap();
        assert!(
            overflow.as_i64().unwrap() <= 0,
            "scrolls sideways on a phone: {overflow}"
        );
        screenshot(&c, "signin-phone").await;
        c.set_window_size(1280, 900).await.unwrap();

        // A wrong password: the form again with the reason, the user name kept.
        sign_in(&c, "bob", "not-it").await;
        let wrong = wait_at(&c, "/.portcullis/login", "the wrong-password page", |s| {
            s.text.contains("was not accepted")
        })
        .await;
        assert!(wrong.text.contains("Sign in"), "{}", wrong.text);
        assert_eq!(navigation(&c).await.0, 401);
        let kept = c.find(Locator::Id("username")).await.unwrap();
        assert_eq!(kept.prop("value").await.unwrap().as_deref(), Some("bob"));
        assert!(session_cookies(&c).await.is_empty());
        screenshot(&c, "signin-wrong-password").await;

        // The right one, by keyboard only: the page put the cursor in the password field (the
        // user name is kept) and Enter submits. Back to where Chromium was going.
        let focused = c.active_element().await.unwrap();
        assert_eq!(
            focused.attr("id").await.unwrap().as_deref(),
            Some("password")
        );
        focused
            .send_keys("builder-of-things\u{E007}")
            .await
            .unwrap();
        wait_at(&c, "/app/page", "the app after signing in", |_| true).await;
        assert_eq!(echo(&c).await["headers"]["remote-user"], "bob");
        assert_eq!(navigation(&c).await, (200, 1), "POST, 303, then the page");
        let cookie = c.get_named_cookie("portcullis_session").await.unwrap();
        assert_eq!(cookie.value().len(), 43);
        assert_eq!(cookie.http_only(), Some(true));
        screenshot(&c, "signed-in-app").await;

        // A page bob may not open: 403, who is signed in, and a way to switch.
        c.goto(&format!("{base}/admin/x")).await.unwrap();
        let denied = wait_at(&c, "/admin/x", "the 403 page", |s| {
            s.text.contains("Sign in as someone else")
        })
        .await;
        assert_eq!(navigation(&c).await, (403, 0));
        assert!(
            denied
                .text
                .contains("signed in as bob, who may not open this page"),
            "{}",
            denied.text
        );
        screenshot(&c, "denied-403").await;

        // Switching: signed out, on the sign-in page that leads back to the denied page.
        click(&c, "Sign in as someone else").await;
        let out = wait_at(&c, "/.portcullis/login", "the signed-out page", |s| {
            s.text.contains("You are signed out")
        })
        .await;
        assert_eq!(out.param("rd"), Some("/admin/x"), "{}", out.url);
        assert_eq!(navigation(&c).await, (200, 1));
        assert!(
            session_cookies(&c).await.is_empty(),
            "the session cookie is gone"
        );
        screenshot(&c, "signed-out").await;

        sign_in(&c, "alice", "wonderland-42").await;
        wait_at(&c, "/admin/x", "the admin page as alice", |_| true).await;
        assert_eq!(navigation(&c).await, (200, 1));
        assert_eq!(echo(&c).await["headers"]["remote-user"], "alice");

        // A stale cookie (a session the gateway does not know): one redirect to the sign-in page,
        // which says so, and the cookie is cleared.
        let bogus = "A".repeat(43);
        c.delete_cookie("portcullis_session").await.unwrap();
        // As the gateway sets it (unset, fantoccini would send no domain and SameSite=None).
        let stale = Cookie::parse(format!(
            "portcullis_session={bogus}; Domain=127.0.0.1; Path=/; HttpOnly; SameSite=Lax"
        ))
        .unwrap();
        c.add_cookie(stale).await.unwrap();
        assert_eq!(session_cookies(&c).await, vec![bogus.clone()]);
        c.goto(&format!("{base}/app")).await.unwrap();
        let ended = wait_at(&c, "/.portcullis/login", "the session-ended page", |s| {
            s.text.contains("Your session ended")
        })
        .await;
        assert_eq!(ended.param("ended"), Some("1"), "{}", ended.url);
        assert_eq!(ended.param("rd"), Some("/app"), "{}", ended.url);
        assert_eq!(
            navigation(&c).await,
            (200, 1),
            "exactly one redirect, no loop"
        );
        c.find(Locator::Id("username")).await.unwrap();
        c.find(Locator::Id("password")).await.unwrap();
        let left = session_cookies(&c).await;
        assert!(
            !left.contains(&bogus),
            "the bogus cookie is still in the browser: {left:?}"
        );
        screenshot(&c, "session-ended").await;

        // Signing in from there goes back to /app.
        sign_in(&c, "alice", "wonderland-42").await;
        wait_at(&c, "/app", "the app after signing in again", |_| true).await;
        assert_eq!(echo(&c).await["headers"]["remote-user"], "alice");

        // Sign out through GET /.portcullis/logout: a page with a button; after it, the cookie is
        // gone and the next page asks to sign in (not "session ended": the browser holds none).
        c.goto(&format!("{base}/.portcullis/logout")).await.unwrap();
        wait_at(&c, "/.portcullis/logout", "the sign-out page", |s| {
            s.text.contains("signed in as alice")
        })
        .await;
        screenshot(&c, "sign-out").await;
        click(&c, "Sign out").await;
        wait_at(&c, "/.portcullis/login", "the signed-out page", |s| {
            s.text.contains("You are signed out")
        })
        .await;
        assert!(session_cookies(&c).await.is_empty());
        c.goto(&format!("{base}/app")).await.unwrap();
        let again = wait_at(&c, "/.portcullis/login", "the sign-in page", |s| {
            s.text.contains("Sign in")
        })
        .await;
        assert_eq!(again.param("ended"), None, "{}", again.url);
        assert_eq!(navigation(&c).await, (200, 1));

        c.close().await.unwrap();
    });
    let audit = std::fs::read_to_string(gw.path("audit.log")).unwrap();
    assert!(audit.contains(r#""event":"sign_out""#), "{audit}");
}

#[test]
fn repeated_wrong_passwords_lock_out_in_chromium() {
    let (_up, gw) = util::portal::start_portal(&util::portal::portal_config().build());
    let driver = ChromeDriver::start();
    let base = format!("http://{}", gw.addr);
    runtime().block_on(async {
        // Three wrong passwords for bob from this address (logon.max_failures = 3), sent by the
        // scripted client of tests/portal.rs.
        let mut script = util::browser::Browser::new(&base);
        for _ in 0..3 {
            assert_eq!(script.sign_in("bob", "wrong", "/").await.status, 401);
        }

        // Then Chromium, with the right password: refused with a wait, the form kept.
        let c = driver.browser().await;
        c.goto(&format!("{base}/app")).await.unwrap();
        wait_at(&c, "/.portcullis/login", "the sign-in page", |s| {
            s.text.contains("Sign in")
        })
        .await;
        sign_in(&c, "bob", "builder-of-things").await;
        let locked = wait_at(&c, "/.portcullis/login", "the locked-out page", |s| {
            s.text.contains("blocked for a while")
        })
        .await;
        assert!(
            locked.text.contains("You can try again in"),
            "{}",
            locked.text
        );
        assert_eq!(navigation(&c).await.0, 403);
        c.find(Locator::Id("password")).await.unwrap();
        assert!(session_cookies(&c).await.is_empty());
        screenshot(&c, "locked-out").await;

        c.close().await.unwrap();
    });
}

// === accounts ===

#[test]
fn invited_user_sets_password_in_chromium() {
    let smtp = SmtpSink::start();
    let (_upstream, gw) = util::portal::start_accounts(&smtp);
    let (link, _) =
        util::portal::users_cli(&gw, &["invite", "carol", "--email", "carol@example.com"]);
    assert!(
        link.starts_with(&format!("http://{}/.portcullis/password?token=", gw.addr)),
        "{link}"
    );
    let driver = ChromeDriver::start();
    runtime().block_on(async {
        let c = driver.browser().await;

        c.goto(&link).await.unwrap();
        let page = wait_at(&c, "/.portcullis/password", "the password page", |s| {
            s.text.contains("Choose a password for carol")
        })
        .await;
        assert_eq!(navigation(&c).await, (200, 0));
        assert!(page.text.contains("Common passwords are refused"));
        c.wait()
            .at_most(STEP)
            .for_element(Locator::Css("input#confirm[autocomplete=new-password]"))
            .await
            .unwrap();
        screenshot(&c, "password-set").await;

        // A common password: the form again with the reason.
        fill(&c, "password", "password123").await;
        fill(&c, "confirm", "password123").await;
        click(&c, "Set password").await;
        let weak = wait_at(
            &c,
            "/.portcullis/password",
            "the refused-password page",
            |s| s.text.contains("common") || s.text.contains("another site"),
        )
        .await;
        assert!(
            !weak.text.contains("another site"),
            "the password form was refused as a forgery: the page is served with \
             `Referrer-Policy: no-referrer`, so Chromium posts it with `Origin: null`\n{}",
            weak.text
        );
        assert!(weak.text.contains("10,000 most common"), "{}", weak.text);
        assert_eq!(navigation(&c).await.0, 400);
        screenshot(&c, "password-weak").await;

        // A strong one: on to the sign-in page, which says so.
        fill(&c, "password", "plum tractor velvet 1987").await;
        fill(&c, "confirm", "plum tractor velvet 1987").await;
        click(&c, "Set password").await;
        let set = wait_at(&c, "/.portcullis/login", "the password-set page", |s| {
            s.text.contains("Your password is set")
        })
        .await;
        assert_eq!(set.param("rd"), Some("/"), "{}", set.url);
        assert_eq!(navigation(&c).await, (200, 1));
        screenshot(&c, "password-done").await;

        // Signing in with it leads to "/" and the upstream.
        sign_in(&c, "carol", "plum tractor velvet 1987").await;
        wait_at(&c, "/", "the app as carol", |_| true).await;
        assert_eq!(echo(&c).await["headers"]["remote-user"], "carol");
        screenshot(&c, "carol-signed-in").await;

        // The link is spent.
        c.goto(&link).await.unwrap();
        wait_at(&c, "/.portcullis/password", "the spent-link page", |s| {
            s.text.contains("expired or was already used")
        })
        .await;
        assert_eq!(navigation(&c).await.0, 410);

        c.close().await.unwrap();
    });
}

#[test]
fn forgotten_password_reset_by_mail_then_totp_in_chromium() {
    let smtp = SmtpSink::start();
    let (_upstream, gw) = util::portal::start_accounts(&smtp);
    let cli = |args: &[&str]| util::portal::users_cli(&gw, args).0;
    let invite = cli(&["invite", "dave", "--email", "dave@example.com"]);
    smtp.wait_for(1);
    let driver = ChromeDriver::start();
    runtime().block_on(async {
        let c = driver.browser().await;
        // Dave accepted his invitation once...
        c.goto(&invite).await.unwrap();
        wait_at(&c, "/.portcullis/password", "the password page", |_| true).await;
        fill(&c, "password", "orange kayak mountain").await;
        fill(&c, "confirm", "orange kayak mountain").await;
        click(&c, "Set password").await;
        wait_at(&c, "/.portcullis/login", "the sign-in page", |s| {
            s.text.contains("Your password is set")
        })
        .await;

        // ...and forgot it: "Forgot your password?" on the sign-in page.
        c.goto(&format!("http://{}/private/report", gw.addr))
            .await
            .unwrap();
        wait_at(&c, "/.portcullis/login", "the sign-in page", |_| true).await;
        c.wait()
            .at_most(STEP)
            .for_element(Locator::LinkText("Forgot your password?"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        wait_at(&c, "/.portcullis/forgot", "the forgot-password page", |s| {
            s.text.contains("Enter the email address of your account")
        })
        .await;
        c.wait()
            .at_most(STEP)
            .for_element(Locator::Css("input#email[autocomplete=email]"))
            .await
            .unwrap();
        screenshot(&c, "forgot").await;
        fill(&c, "email", "dave@example.com").await;
        click(&c, "Send the link").await;
        wait_at(
            &c,
            "/.portcullis/forgot",
            "the check-your-email page",
            |s| {
                s.text
                    .contains("a link to choose a new password is on its way")
            },
        )
        .await;
        screenshot(&c, "forgot-sent").await;

        // The mail arrives at the real SMTP server; its link sets a new password.
        let mail = smtp.wait_for(2);
        assert!(mail.contains("To: dave@example.com"), "{mail}");
        let link = password_link(&mail);
        c.goto(&link).await.unwrap();
        wait_at(&c, "/.portcullis/password", "the reset page", |s| {
            s.text.contains("Choose a password for dave")
        })
        .await;
        fill(&c, "password", "violet harbor engine 77").await;
        fill(&c, "confirm", "violet harbor engine 77").await;
        click(&c, "Set password").await;
        wait_at(&c, "/.portcullis/login", "the sign-in page", |s| {
            s.text.contains("Your password is set")
        })
        .await;

        // The old password is refused, the new one works, with a second factor now.
        sign_in(&c, "dave", "orange kayak mountain").await;
        wait_at(&c, "/.portcullis/login", "the refusal", |s| {
            s.text.contains("was not accepted")
        })
        .await;
        let uri = cli(&["totp", "enable", "dave"]);
        let secret = uri
            .split("secret=")
            .nth(1)
            .unwrap()
            .split('&')
            .next()
            .unwrap();
        let raw = store::totp::unbase32(secret).unwrap();
        // The server notices the database change within a second.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        sign_in(&c, "dave", "violet harbor engine 77").await;
        wait_at(&c, "/.portcullis/login", "the code step", |s| {
            s.text.contains("Enter the 6-digit code")
        })
        .await;
        c.wait()
            .at_most(STEP)
            .for_element(Locator::Css("input#code[autocomplete=one-time-code]"))
            .await
            .unwrap();
        screenshot(&c, "totp-code").await;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let code = format!(
            "{:06}",
            store::totp::code_at(&raw, store::totp::step_of(now))
        );
        fill(&c, "code", &code).await;
        click(&c, "Verify").await;
        // (The reset link came by mail: the sign-in after it returns to "/".)
        wait_at(&c, "/", "the application as dave", |_| true).await;
        assert_eq!(echo(&c).await["headers"]["remote-user"], "dave");
        c.close().await.unwrap();
    });
}

// === sign in with an OpenID Connect provider ===

use util::oidc_provider::oidc_site;

/// At the provider's consent page: as `sub`, or deny.
async fn at_provider(c: &Client, sub: Option<&str>) {
    wait_at(c, "/oauth2/authorize", "the provider's consent page", |s| {
        s.text.contains("Authorize Client")
    })
    .await;
    match sub {
        Some(sub) => {
            let input = c
                .wait()
                .at_most(STEP)
                .for_element(Locator::Css("input[name=sub]"))
                .await
                .unwrap();
            input.send_keys(sub).await.unwrap();
            click(c, "Authorize").await;
        }
        None => click(c, "Deny").await,
    }
}

#[test]
fn sign_in_with_an_openid_connect_provider_in_chromium() {
    let provider = util::oidc_provider::start_provider();
    let issuer = format!("http://127.0.0.1:{}", provider.port);
    let (_up, gw) = oidc_site(&issuer, "");
    let (_up2, picky) = oidc_site(&issuer, "allowed_groups = [\"auditors\"]");
    let driver = ChromeDriver::start();
    let base = format!("http://{}", gw.addr);
    runtime().block_on(async {
        let c = driver.browser().await;

        // A page behind the gateway: Chromium goes through the sign-in page straight to the
        // provider, and comes back signed in, to the page it asked for.
        c.goto(&format!("{base}/admin/report")).await.unwrap();
        wait_at(&c, "/oauth2/authorize", "the provider", |s| {
            s.text.contains("Authorize Client")
        })
        .await;
        screenshot(&c, "oidc-1-provider-consent").await;
        at_provider(&c, Some("0f3c-alice")).await;
        wait_at(&c, "/admin/report", "the page, signed in", |s| {
            s.text.contains("remote-user")
        })
        .await;
        screenshot(&c, "oidc-2-signed-in").await;
        let seen = echo(&c).await;
        assert_eq!(seen["headers"]["remote-user"], "alice");
        assert_eq!(seen["headers"]["remote-groups"], "admins,staff");
        assert_eq!(session_cookies(&c).await.len(), 1);

        // Denied at the provider: the provider's words, no session, no loop.
        c.delete_all_cookies().await.unwrap();
        c.goto(&format!("{base}/x")).await.unwrap();
        at_provider(&c, None).await;
        let denied = wait_at(&c, "/.portcullis/oidc/callback", "the refusal page", |s| {
            s.text.contains("Example ID said")
        })
        .await;
        assert!(denied.text.contains("access_denied"), "{}", denied.text);
        screenshot(&c, "oidc-3-denied-at-provider").await;
        assert!(session_cookies(&c).await.is_empty());

        // Signed in at the provider, but not in a group this site admits: 403, saying so.
        c.delete_all_cookies().await.unwrap();
        c.goto(&format!("http://{}/x", picky.addr)).await.unwrap();
        at_provider(&c, Some("0f3c-alice")).await;
        let refused = wait_at(&c, "/.portcullis/oidc/callback", "the 403 page", |s| {
            s.text.contains("admits only members of")
        })
        .await;
        assert!(refused.text.contains("auditors"), "{}", refused.text);
        screenshot(&c, "oidc-4-not-in-allowed-groups").await;
        c.close().await.unwrap();
    });
}
