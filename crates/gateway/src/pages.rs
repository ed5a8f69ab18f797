//! What each refusal tells the person who receives it: an HTML page, RFC 9457 problem+json or
//! plain text, in plain words, with what to do next.
//!
//! The wording lives in one table ([`advice`]) so that the three renderings never disagree. HTML
//! goes through minijinja so operators can replace any page with their own template
//! (`errors.pages`: `401.html`, `401.1.html`, …, most specific first).

use std::path::Path;

use minijinja::Environment;
use policy::{Reason, Refusal};
use serde::Serialize;

const BUILTIN_PAGE: &str = include_str!("../templates/page.html");

/// The inline scripts of the built-in templates (their hashes go in the pages' CSP).
pub(crate) fn inline_scripts() -> impl Iterator<Item = &'static str> {
    [BUILTIN_PAGE, BASE, PORTAL].into_iter().flat_map(|t| {
        t.split("<script>")
            .skip(1)
            .filter_map(|rest| rest.split_once("</script>").map(|(s, _)| s))
    })
}
const BASE: &str = include_str!("../templates/base.html");
const PORTAL: &str = include_str!("../templates/portal.html");
const MAIL_TEXT: &str = include_str!("../templates/mail.txt");
const MAIL_HTML: &str = include_str!("../templates/mail.html");

/// The plain-words explanation of a reason: what happened and what to do.
pub struct Advice {
    /// What happened.
    pub what: &'static str,
    /// What the person can do now, in order.
    pub todo: &'static [&'static str],
}

/// What the site offers someone refused: the advice must name only ways in that exist.
#[derive(Debug, Clone, Copy, Default)]
pub struct Offer {
    /// HTTP Basic is enabled (programs can send a user name and password).
    pub basic: bool,
    /// The site signs people in with its sign-in page (a browser's page carries the link).
    pub form: bool,
    /// The sign-in page has "Forgot your password?" (a user database with mail).
    pub reset: bool,
}

/// Who reads the refusal: a person in a browser (an HTML page, with links and buttons) or a
/// program (curl, rclone, a script: plain text or problem+json, no links to click, no page to
/// reload, no browser to close).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reader {
    /// A browser, which was sent the HTML page.
    Browser,
    /// Anything that was sent text or JSON.
    Program,
}

/// The table of explanations, one per reason, worded for what the site offers and for who
/// reads it.
pub fn advice(reason: Reason, offer: Offer, reader: Reader) -> Advice {
    use Reason::*;
    let browser = reader == Reader::Browser;
    let (what, todo): (&str, &[&str]) = match reason {
        NoCredentials if browser && offer.form => (
            "This page is protected and you are not signed in.",
            &["Sign in with the link below; you come back to this page afterwards."],
        ),
        NoCredentials if browser => (
            "This page is protected and your request did not include a user name and password.",
            &[
                "Sign in: reload the page and enter your user name and password when your browser asks.",
                "If no sign-in box appears, your browser may have been told to stop asking; close the tab and open the address again.",
            ],
        ),
        NoCredentials if offer.basic => (
            "This address needs a user name and password, and the request carried none.",
            &[
                "Send them with HTTP Basic authentication: for example curl -u NAME, or the user and password settings of your program.",
            ],
        ),
        NoCredentials => (
            "This address needs a signed-in session, and the request carried none.",
            &[
                "This site signs people in with a web page only: open the address in a browser.",
                "A program cannot sign in here by itself; ask the administrator for another way in.",
            ],
        ),
        LogonFailed if browser && offer.form && offer.reset => (
            "A user name and password were sent, but they were not accepted.",
            &[
                "Check the user name and password (and Caps Lock), then sign in again with the link below.",
                "If you forgot your password, use \"Forgot your password?\" on the sign-in page.",
            ],
        ),
        LogonFailed if browser && offer.form => (
            "A user name and password were sent, but they were not accepted.",
            &[
                "Check the user name and password (and Caps Lock), then sign in again with the link below.",
                "If you forgot your password, ask the administrator to reset it.",
            ],
        ),
        LogonFailed if browser => (
            "A user name and password were sent, but they were not accepted.",
            &[
                "Check the user name and password (and Caps Lock), then reload the page to try again.",
                "If you forgot your password, ask the administrator to reset it.",
                "Browsers remember a refused password until they are closed: close all windows of the browser, or use a private window.",
            ],
        ),
        LogonFailed if offer.reset => (
            "A user name and password were sent, but they were not accepted.",
            &[
                "Check the user name and password your program sends (a saved password may be out of date).",
                "If you forgot the password, reset it with \"Forgot your password?\" on the sign-in page, in a browser.",
            ],
        ),
        LogonFailed => (
            "A user name and password were sent, but they were not accepted.",
            &[
                "Check the user name and password your program sends (a saved password may be out of date).",
                "If you forgot the password, ask the administrator to reset it.",
            ],
        ),
        CertificateRequired => (
            "This site accepts only clients that present a certificate, and the connection carried none.",
            &[
                "Install the client certificate the administrator gave you (in the browser, or curl --cert), then try again.",
            ],
        ),
        CertificateRevoked => (
            "The client certificate presented has been revoked by the certificate authority.",
            &["Ask the administrator for a new certificate."],
        ),
        CertificateUntrusted => (
            "The client certificate presented was not issued by an authority this site trusts, or cannot be used to sign in.",
            &["Use the certificate issued for this site; ask the administrator which one."],
        ),
        CertificateExpired => (
            "The client certificate presented has expired (or is not valid yet).",
            &[
                "Ask the administrator for a new certificate; check the device's clock if the certificate should still be valid.",
            ],
        ),
        SecondFactorRequired if browser => (
            "The password is right, but this account also has a second factor (a code from an authenticator app), and the browser's sign-in box can carry only a user name and password.",
            &[
                "Sign in with the site's sign-in page: it asks for the code after the password.",
                "Close the browser's sign-in box (Cancel) if it appears again.",
            ],
        ),
        SecondFactorRequired => (
            "The password is right, but this account also has a second factor (a code from an authenticator app), which a user name and password sent by a program cannot carry.",
            &[
                "People: sign in with the site's sign-in page in a browser; it asks for the code after the password.",
                "Programs: use an API token instead of the password (ask the administrator: portcullis tokens create).",
            ],
        ),
        StaleNonce => (
            "The request was signed for a sign-in challenge that has expired.",
            &[
                "Send the request again: a Digest client signs it again with the new challenge by itself (it is marked stale=true).",
            ],
        ),
        TokenInvalid => (
            "The request carried an API token (Authorization: Bearer), but it is not a valid token of this site: it may have been revoked, mistyped, or its user disabled.",
            &[
                "Check the token your program sends: it starts with pcl_ and is shown only once, when it is made.",
                "Ask the administrator for a new token (portcullis tokens create).",
            ],
        ),
        TokenExpired => (
            "The request carried an API token (Authorization: Bearer) that has expired.",
            &[
                "Ask the administrator for a new token (portcullis tokens create), and replace the old one where your program keeps it.",
            ],
        ),
        SessionExpired if browser => (
            "Your sign-in session ended, because it was idle too long or reached its maximum age.",
            &["Sign in again; the old session cookie has already been removed."],
        ),
        SessionExpired if offer.basic => (
            "The session cookie sent has ended: it was idle too long or reached its maximum age.",
            &["Send the user name and password with HTTP Basic instead of a session cookie."],
        ),
        SessionExpired => (
            "The session cookie sent has ended: it was idle too long or reached its maximum age.",
            &["Sign in again in a browser to get a new session."],
        ),
        LockedOut => (
            "Too many sign-in attempts failed, so sign-in is blocked for a while, even with the right password.",
            &[
                "Wait until the block ends, then sign in with the right password.",
                "If you did not make these attempts, tell the administrator.",
            ],
        ),
        AclDenied if browser => (
            "You are signed in, but your account is not allowed to open this page.",
            &[
                "If you should have access, ask the administrator to grant it, quoting the request id below.",
                "If you have another account with access, sign in with that one instead.",
            ],
        ),
        AclDenied => (
            "The account the request was sent with is not allowed to use this address (or this method on it).",
            &[
                "If it should have access, ask the administrator to grant it, quoting the request id below.",
                "Or send the credentials of an account that has access.",
            ],
        ),
        FilterDenied => (
            "An access check run by this site refused the request.",
            &["Ask the administrator, quoting the request id below."],
        ),
        AppDenied => (
            "The application behind this gateway refused the request.",
            &["Sign in to the application, or ask its administrator for access."],
        ),
        ConcurrentLimit if !browser => (
            "Too many requests from your network address were in progress at the same time.",
            &["Send fewer requests at once (lower your program's parallel transfers), then retry."],
        ),
        RateLimit if !browser => (
            "Too many requests came from your network address in a short time.",
            &["Slow down, and retry after the delay the Retry-After header gives."],
        ),
        HeadersTooLarge if !browser => (
            "The request carried too much header data.",
            &["Send fewer or smaller headers (cookies, tokens), then try again."],
        ),
        ConcurrentLimit => (
            "Too many requests from your network address were in progress at the same time.",
            &["Wait for your other downloads or tabs to finish, then reload."],
        ),
        RateLimit => (
            "Too many requests came from your network address in a short time.",
            &[
                "Wait a moment, then reload the page.",
                "Automated tools should slow down and honour the Retry-After header.",
            ],
        ),
        IpDenied => (
            "Requests from your network address are blocked by this site.",
            &[
                "If you think this is a mistake, send the administrator the request id below.",
                "A different network (for example mobile data instead of office Wi-Fi) may not be blocked.",
            ],
        ),
        HostDenied => (
            "Requests from your network's host name are blocked by this site.",
            &["If you think this is a mistake, send the administrator the request id below."],
        ),
        BadForwardedHeader => (
            "A proxy between you and this site sent forwarding information that could not be read.",
            &[
                "This is a configuration problem of the proxy; tell its administrator, quoting the request id below.",
            ],
        ),
        BadRequest => (
            "The request could not be understood; it may have been damaged or built by a faulty program.",
            &[
                "Check the address for typing mistakes and try again.",
                "If you sent credentials by hand, check that they are encoded as RFC 7617 describes.",
            ],
        ),
        HeaderTimeout => (
            "The request took too long to arrive.",
            &["Check your connection and try again."],
        ),
        HeadersTooLarge => (
            "The request carried too much header data, often because of too many or too large cookies.",
            &["Delete this site's cookies in your browser, then try again."],
        ),
        UpstreamUnavailable => (
            "The application behind this gateway could not be reached.",
            &[
                "Try again in a few minutes.",
                "If it persists, tell the administrator, quoting the request id below.",
            ],
        ),
        UpstreamTimeout => (
            "The application behind this gateway did not answer in time.",
            &[
                "Try again in a few minutes.",
                "If it persists, tell the administrator, quoting the request id below.",
            ],
        ),
        StateUnavailable | FilterUnavailable => (
            "A service this gateway needs to check your request is unavailable right now.",
            &["Try again in a minute."],
        ),
        OidcFailed => (
            "Signing in through the identity provider did not succeed, so you are not signed in here.",
            &[
                "Start again from the sign-in page.",
                "If the provider refused you, its words are below; ask its administrator.",
            ],
        ),
        DirectoryUnavailable => (
            "The directory that holds the accounts did not answer, so your sign-in could not be checked. Your password was not refused.",
            &[
                "Try again in a minute.",
                "If it persists, tell the administrator, quoting the request id below.",
            ],
        ),
        VerifierBusy => (
            "Too many sign-ins are being checked right now, so yours could not be checked in time.",
            &["Wait a few seconds, then try again."],
        ),
        NotImplemented => (
            "The request body was sent with a transfer encoding this site does not accept.",
            &["Send the body with Content-Length or plain chunked encoding."],
        ),
        InternalError => (
            "Something went wrong inside the gateway.",
            &["Try again; if it persists, tell the administrator, quoting the request id below."],
        ),
    };
    Advice { what, todo }
}

/// Everything a page template may use (documented in docs/configuration.md).
#[derive(Debug, Serialize)]
pub struct PageContext<'a> {
    /// HTTP status.
    pub status: u16,
    /// Reason phrase of the status.
    pub status_text: &'a str,
    /// IIS sub-status.
    pub substatus: u16,
    /// Reason slug.
    pub reason: &'a str,
    /// Short title.
    pub title: &'a str,
    /// What happened.
    pub what: &'a str,
    /// What to do.
    pub todo: &'a [&'a str],
    /// The request id to quote.
    pub request_id: &'a str,
    /// Seconds until a retry makes sense.
    pub retry_after: Option<u64>,
    /// Whether the administrator details are shown.
    pub detailed: bool,
    /// The `errors.mode` value in force.
    pub mode: &'a str,
    /// What decided the refusal (detailed only).
    pub detail: &'a str,
    /// The pipeline phase.
    pub phase: &'a str,
    /// The client address as the gateway saw it (detailed only).
    pub client_ip: String,
    /// The request path.
    pub path: &'a str,
    /// `/.portcullis/problems/<slug>`.
    pub problem_type: &'a str,
    /// The realm.
    pub realm: &'a str,
    /// `(phase, verdict)` for each phase up to the refusal (detailed only).
    pub trace: Vec<(&'a str, &'a str)>,
    /// The signed-in user (form sign-in), when there is one.
    pub user: Option<&'a str>,
    /// The sign-in page, on a site with form sign-in, for refusals that signing in can fix.
    pub sign_in_url: Option<&'a str>,
    /// The "forgot password" page, when the site can send reset links.
    pub forgot_url: Option<&'a str>,
    /// The "sign in as someone else" button of a signed-in user denied by a rule.
    pub switch: Option<SwitchForm<'a>>,
}

/// A form that signs out and returns to the sign-in page with `rd`.
#[derive(Debug, Serialize)]
pub struct SwitchForm<'a> {
    /// The sign-out URL.
    pub action: &'a str,
    /// The CSRF token.
    pub csrf: &'a str,
    /// Where to go after signing in again.
    pub rd: &'a str,
}

/// Everything the portal template (`portal.html`) may use.
#[derive(Debug, Serialize, Default)]
pub struct PortalContext<'a> {
    /// Which form: `login`, `signed_in`, `logout`, `password`, `forgot` or `message`.
    pub view: &'a str,
    /// Heading.
    pub title: &'a str,
    /// The realm (site name).
    pub realm: &'a str,
    /// A neutral message ("your session ended").
    pub notice: Option<&'a str>,
    /// What went wrong with the last submission.
    pub error: Option<&'a str>,
    /// Where the form posts.
    pub action: &'a str,
    /// The sign-out URL.
    pub logout_action: &'a str,
    /// The CSRF token of the form.
    pub csrf: &'a str,
    /// The same-origin return target.
    pub rd: &'a str,
    /// The user name to prefill (sign-in) or the account (password, signed in).
    pub username: &'a str,
    /// The signed-in user.
    pub user: &'a str,
    /// The sign-in page.
    pub login_url: &'a str,
    /// The "forgot password" page, if the site offers it.
    pub forgot_url: Option<&'a str>,
    /// The single-use token of a password link.
    pub token: &'a str,
    /// Minimum password length.
    pub min_length: usize,
    /// Seconds until a retry makes sense.
    pub retry_after: Option<u64>,
    /// The request id to quote.
    pub request_id: &'a str,
    /// "Sign in with NAME" (`[oidc] name`), when the identity provider is offered beside the form.
    pub oidc_name: Option<&'a str>,
    /// Where that button goes (`{prefix}/oidc/login?rd=…`).
    pub oidc_url: &'a str,
    /// The sign-in page has no password form (only the identity provider).
    pub oidc_only: bool,
}

/// The HTML templates in force: the built-in page plus any operator overrides.
pub struct Pages {
    env: Environment<'static>,
}

impl Pages {
    /// Loads the built-in page and, if given, every `*.html` override in `dir`.
    pub fn load(dir: Option<&Path>) -> Result<Pages, String> {
        let mut env = Environment::new();
        // HTML escaped; the text part of a mail (`mail.txt`) as written.
        env.set_auto_escape_callback(|name| {
            if name.ends_with(".txt") {
                minijinja::AutoEscape::None
            } else {
                minijinja::AutoEscape::Html
            }
        });
        for (name, source) in [
            ("base.html", BASE),
            ("builtin.html", BUILTIN_PAGE),
            ("portal.html", PORTAL),
            ("mail.txt", MAIL_TEXT),
            ("mail.html", MAIL_HTML),
        ] {
            env.add_template(name, source).map_err(|e| e.to_string())?;
        }
        if let Some(dir) = dir {
            let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            for entry in entries.flatten() {
                let path = entry.path();
                let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned)
                else {
                    continue;
                };
                if !(name.ends_with(".html") || name == "mail.txt") {
                    continue;
                }
                let source = std::fs::read_to_string(&path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                env.add_template_owned(name, source)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
        Ok(Pages { env })
    }

    /// Renders the most specific template for the refusal: `401.1.html`, `401.html`, built-in.
    pub fn render(&self, refusal: &Refusal, status: u16, ctx: &PageContext<'_>) -> String {
        let specific = format!("{status}.{}.html", refusal.reason.substatus());
        let general = format!("{status}.html");
        for name in [specific.as_str(), general.as_str(), "builtin.html"] {
            if let Ok(t) = self.env.get_template(name) {
                match t.render(minijinja::value::Serde(ctx)) {
                    Ok(html) => return html,
                    Err(e) => {
                        tracing::error!(template = name, error = %e, "error page template failed; using the next one")
                    }
                }
            }
        }
        format!("{status} {}\n", ctx.title)
    }
}

/// What the mail templates (`mail.txt`, `mail.html`) are given.
#[derive(Debug, Serialize)]
pub struct MailContext<'a> {
    /// An invitation (`true`) or a password reset.
    pub invite: bool,
    /// The user name.
    pub user: &'a str,
    /// `auth.realm`: the site's name.
    pub realm: &'a str,
    /// The single-use link.
    pub link: &'a str,
    /// How long the link works, as people write it ("1 day").
    pub valid_for: String,
    /// The subject line.
    pub subject: &'a str,
}

impl Pages {
    /// Renders the plain-text and HTML parts of an invitation or reset mail (`mail.txt`,
    /// `mail.html`, which operators may override in `errors.pages`).
    pub fn render_mail(&self, ctx: &MailContext<'_>) -> Result<(String, String), String> {
        let render = |name: &str| {
            self.env
                .get_template(name)
                .and_then(|t| t.render(minijinja::value::Serde(ctx)))
                .map_err(|e| format!("{name}: {e}"))
        };
        Ok((render("mail.txt")?, render("mail.html")?))
    }
}

/// A duration as people write it: "1 day", "1 hour and 30 minutes", "45 seconds" (the two
/// largest units; what is below them is dropped).
pub fn plain_duration(d: std::time::Duration) -> String {
    let mut left = d.as_secs();
    let mut parts = Vec::new();
    for (size, unit) in [
        (86_400, "day"),
        (3_600, "hour"),
        (60, "minute"),
        (1, "second"),
    ] {
        let n = left / size;
        left %= size;
        if n > 0 {
            parts.push(format!("{n} {unit}{}", if n == 1 { "" } else { "s" }));
        } else if !parts.is_empty() {
            break;
        }
        if parts.len() == 2 {
            break;
        }
    }
    match parts.len() {
        0 => "less than a second".to_owned(),
        _ => parts.join(" and "),
    }
}

impl Pages {
    /// Renders a portal page (`portal.html`, which operators may override too).
    pub fn render_portal(&self, ctx: &PortalContext<'_>) -> String {
        match self
            .env
            .get_template("portal.html")
            .and_then(|t| t.render(minijinja::value::Serde(ctx)))
        {
            Ok(html) => html,
            Err(e) => {
                tracing::error!(error = %e, "portal template failed");
                format!("{}\n", ctx.title)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        use std::time::Duration;
        for (secs, text) in [
            (86_400, "1 day"),
            (3_600, "1 hour"),
            (2 * 86_400, "2 days"),
            (5_400, "1 hour and 30 minutes"),
            (90_061, "1 day and 1 hour"),
            (86_460, "1 day"),
            (45, "45 seconds"),
            (0, "less than a second"),
        ] {
            assert_eq!(plain_duration(Duration::from_secs(secs)), text, "{secs}");
        }
    }

    #[test]
    fn every_reason_has_advice() {
        for r in Reason::ALL {
            for (basic, form, reset) in [
                (true, false, false),
                (true, true, true),
                (false, true, false),
            ] {
                for reader in [Reader::Browser, Reader::Program] {
                    let a = advice(*r, Offer { basic, form, reset }, reader);
                    assert!(!a.what.is_empty() && !a.todo.is_empty(), "{r}");
                }
            }
        }
    }

    /// Issue 21.7: no advice names a way in the site does not offer, and programs are never
    /// told to use a browser's controls.
    #[test]
    fn advice_names_only_what_the_site_offers_and_the_reader_can_do() {
        let browser_words = [
            "reload",
            "close all windows",
            "close the tab",
            "link below",
            "Caps Lock",
        ];
        for r in Reason::ALL {
            for (basic, form, reset) in [
                (true, false, false),
                (true, true, false),
                (true, true, true),
                (false, true, false),
                (false, true, true),
            ] {
                let offer = Offer { basic, form, reset };
                for reader in [Reader::Browser, Reader::Program] {
                    let a = advice(*r, offer, reader);
                    let text = format!("{} {}", a.what, a.todo.join(" "));
                    if !reset {
                        assert!(
                            !text.contains("Forgot your password"),
                            "{r} {offer:?}: {text}"
                        );
                    }
                    if !(form && reader == Reader::Browser) {
                        assert!(
                            !text.contains("link below"),
                            "{r} {offer:?} {reader:?}: {text}"
                        );
                    }
                    if reader == Reader::Program {
                        for w in browser_words {
                            assert!(!text.contains(w), "{r} {offer:?}: {w:?} in {text}");
                        }
                    }
                    if !basic {
                        assert!(!text.contains("HTTP Basic"), "{r} {offer:?}: {text}");
                    }
                }
            }
        }
    }
}
