//! The sign-in portal of the `form` scheme: sign-in and sign-out pages, sessions in the state
//! backend, CSRF protection, and the redirects that bring a browser to the sign-in page and back.
//!
//! Loops are impossible by construction: the sign-in page never redirects (a signed-in visitor
//! sees "signed in as X" with a link onward), a stale session cookie is cleared by the very
//! response that reports it, and a signed-in user refused by a rule gets a 403 page with a
//! "sign in as someone else" button instead of a trip back to the sign-in page.
//!
//! CSRF: every form carries a token that is an HMAC of a random *pre-session* id kept in its own
//! cookie (signed double submit, keyed by a secret every instance shares through the state
//! backend), and a POST whose `Origin` names another site is refused. A token that does not
//! match re-renders the form with a fresh one and a message; it never traps the person.

use std::net::IpAddr;
use std::time::Instant;

use base64::Engine as _;
use bytes::Bytes;
use hmac::{Hmac, KeyInit as _, Mac as _};
use http::header::{COOKIE, HOST, ORIGIN, SET_COOKIE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Limited};
use policy::{Identity, Reason, Refusal};
use sha2::Sha256;
use store::state::session::{self, Session};

use crate::body::Body;
use crate::body::RequestBody;
use crate::pages::PortalContext;
use crate::pipeline::{Exchange, Received};
use crate::respond::{Answer, html, see_other};
use crate::{Abort, ConnInfo, Gateway};

pub(crate) mod account;
mod cookies;
mod sign_in;
mod sign_out;

use cookies::*;
pub use cookies::{Cookies, Csrf, cookie, same_origin, strip_own_cookies};

/// Largest form body accepted (a sign-in form is a few hundred bytes).
pub const MAX_FORM_BYTES: usize = 16 * 1024;

/// The portal's pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// `GET|POST {prefix}/login`.
    Login,
    /// `GET|POST {prefix}/logout`.
    Logout,
    /// `GET|POST {prefix}/password?token=…`.
    Password,
    /// `GET|POST {prefix}/forgot`.
    Forgot,
}

impl Page {
    /// The page for a path below the prefix.
    pub fn from_rest(rest: &str) -> Option<Page> {
        Some(match rest {
            "/login" => Page::Login,
            "/logout" => Page::Logout,
            "/password" => Page::Password,
            "/forgot" => Page::Forgot,
            _ => return None,
        })
    }
}

/// The portal's URLs under the configured prefix.
#[derive(Debug, Clone)]
pub struct Paths {
    /// `{prefix}` itself.
    pub prefix: String,
    /// `{prefix}/login`.
    pub login: String,
    /// `{prefix}/logout`.
    pub logout: String,
    /// `{prefix}/password`.
    pub password: String,
    /// `{prefix}/forgot`.
    pub forgot: String,
    /// `{prefix}/auth`.
    pub auth: String,
    /// `{prefix}/problems/`.
    pub problems: String,
}

impl Paths {
    /// The URLs under `prefix` (`/.portcullis`).
    pub fn new(prefix: &str) -> Paths {
        Paths {
            prefix: prefix.to_owned(),
            login: format!("{prefix}/login"),
            logout: format!("{prefix}/logout"),
            password: format!("{prefix}/password"),
            forgot: format!("{prefix}/forgot"),
            auth: format!("{prefix}/auth"),
            problems: format!("{prefix}/problems/"),
        }
    }

    /// The sign-in page returning to `rd`, optionally saying why the person is there.
    pub fn login_url(&self, rd: &str, note: Option<&str>) -> String {
        let mut url = format!("{}?rd={}", self.login, encode(rd));
        if let Some(note) = note {
            url.push('&');
            url.push_str(note);
        }
        url
    }
}

/// Percent-encodes a query value.
pub fn encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// The return target to use for `rd`: a path on this site, or `/`.
///
/// Refused (→ `/`): absolute and scheme-relative URLs, backslashes (browsers read `/\evil` as
/// `//evil`), any of those hidden behind percent-encoding, control characters, and the portal's
/// own pages (returning to the sign-in page after signing in would be a loop).
pub fn safe_return(rd: &str, paths: &Paths) -> String {
    let fallback = || "/".to_owned();
    if !rd.starts_with('/') || rd.len() > 2048 {
        return fallback();
    }
    // Decode repeatedly: "%252F" becomes "%2F" becomes "/" in some chain of proxies.
    let mut decoded = rd.to_owned();
    for _ in 0..3 {
        let next = policy::percent_decode(&decoded).into_owned();
        if next == decoded {
            break;
        }
        decoded = next;
    }
    let bad = |s: &str| {
        s.starts_with("//")
            || s.contains('\\')
            || s.chars().any(|c| c.is_control())
            || !s.starts_with('/')
    };
    if bad(rd) || bad(&decoded) {
        return fallback();
    }
    let path = decoded.split(['?', '#']).next().unwrap_or("/");
    let normalized = format!("/{}", policy::normalize_path(path).segments().join("/"));
    if normalized == paths.prefix || normalized.starts_with(&format!("{}/", paths.prefix)) {
        return fallback();
    }
    rd.to_owned()
}

/// The fields of an `application/x-www-form-urlencoded` body.
pub struct Form(Vec<(String, String)>);

impl Form {
    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why a form body could not be read.
pub enum FormError {
    /// Larger than [`MAX_FORM_BYTES`].
    TooLarge,
    /// The connection failed mid-body.
    Broken,
    /// The body did not arrive within `server.header_timeout`.
    TimedOut,
}

/// Reads a form body of at most [`MAX_FORM_BYTES`], which must arrive within `timeout` (a body
/// that declares 100 bytes and sends 4 does not hold the connection).
pub async fn read_form(body: RequestBody, timeout: std::time::Duration) -> Result<Form, FormError> {
    let collected =
        match tokio::time::timeout(timeout, Limited::new(body, MAX_FORM_BYTES).collect()).await {
            Ok(c) => c,
            Err(_) => return Err(FormError::TimedOut),
        };
    match collected {
        Ok(collected) => {
            let bytes: Bytes = collected.to_bytes();
            Ok(Form(
                form_urlencoded::parse(&bytes)
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect(),
            ))
        }
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(FormError::TooLarge)
        }
        Err(_) => Err(FormError::Broken),
    }
}

/// The query parameter `name` of `query`.
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// What checking the session cookie of a request found.
pub enum SessionCheck {
    /// No session cookie.
    Absent,
    /// A live session of a current user.
    Valid(Identity),
    /// A cookie that names no live session (expired, signed out, tampered, user removed).
    Ended(&'static str),
    /// The state backend did not answer.
    Unavailable(String),
}

/// A portal response with what the access log and metrics need.
pub struct Outcome {
    /// The response.
    pub response: Response<Body>,
    /// The reason of a refusal it carries (a failed sign-in is 401.1).
    pub reason: Option<Reason>,
    /// The user name the request was about.
    pub user: Option<String>,
}

impl Outcome {
    fn plain(response: Response<Body>) -> Outcome {
        Outcome {
            response,
            reason: None,
            user: None,
        }
    }
}

/// The request's host as the browser addressed it (`X-Forwarded-Host` from a trusted proxy).
pub fn request_host(headers: &HeaderMap, authority: Option<&str>, trusted: bool) -> Option<String> {
    if trusted
        && let Some(h) = headers
            .get("x-forwarded-host")
            .and_then(|v| v.to_str().ok())
    {
        return Some(h.split(',').next().unwrap_or(h).trim().to_owned());
    }
    headers
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| authority.map(str::to_owned))
}

/// Facts about one portal request.
pub(crate) struct Visit<'a> {
    pub(crate) headers: &'a HeaderMap,
    pub(crate) cookies: Cookies,
    pub(crate) host: Option<String>,
    pub(crate) client_ip: IpAddr,
    pub(crate) request_id: &'a str,
    pub(crate) query: Option<&'a str>,
}

impl Gateway {
    /// Serves a portal page: phases 2–4 (client address, IP rules, limits) first, as for any
    /// request, then the page.
    pub(crate) async fn portal(
        &self,
        req: Request<RequestBody>,
        conn: ConnInfo,
        page: Page,
        started: Instant,
    ) -> Result<Response<Body>, Abort> {
        let (parts, body) = req.into_parts();
        let mut received = Received::of(&parts, conn.tls);
        if page == Page::Password {
            // A password link's token must not reach the access log.
            received.path_and_query = parts.uri.path();
        }
        let mut ex = self.exchange(received, &conn, started);
        if let Err(refusal) = self.admit(&mut ex).await {
            return self.respond(ex, Answer::Refuse(refusal));
        }
        let visit = Visit {
            headers: &parts.headers,
            cookies: Cookies {
                secure: ex.client.secure,
            },
            host: request_host(
                &parts.headers,
                parts.uri.authority().map(http::uri::Authority::as_str),
                ex.client.forwarded_by_proxy,
            ),
            client_ip: ex.client.ip,
            request_id: &ex.request_id,
            query: parts.uri.query(),
        };
        let mut outcome = match (page, &parts.method) {
            (Page::Login, &Method::GET | &Method::HEAD) => self.login_page(&visit).await,
            (Page::Login, &Method::POST) => self.login_post(&visit, body).await,
            (Page::Logout, &Method::GET | &Method::HEAD) => self.logout_page(&visit, None).await,
            (Page::Logout, &Method::POST) => self.logout_post(&visit, body).await,
            (Page::Password, &Method::GET | &Method::HEAD) => self.password_page(&visit).await,
            (Page::Password, &Method::POST) => self.password_post(&visit, body).await,
            (Page::Forgot, &Method::GET | &Method::HEAD) => self.forgot_page(&visit, None),
            (Page::Forgot, &Method::POST) => self.forgot_post(&visit, body).await,
            _ => {
                let mut r = crate::respond::text(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "405 Method Not Allowed\n".to_owned(),
                );
                r.headers_mut().insert(
                    http::header::ALLOW,
                    HeaderValue::from_static("GET, HEAD, POST"),
                );
                Outcome::plain(r)
            }
        };
        // Every answer at a password link (form, error, expired): its token must not leave in a
        // Referer.
        if page == Page::Password {
            outcome.response.headers_mut().insert(
                http::header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            );
        }
        // The in-flight slot is held, and the line logged, until the body has gone.
        self.respond(ex, Answer::Page(outcome))
    }

    /// The session the request's cookie names, if it is live and its user still exists.
    pub(crate) async fn check_session(&self, headers: &HeaderMap, secure: bool) -> SessionCheck {
        let cookies = Cookies { secure };
        let Some(id) = cookies.session_id(headers) else {
            return SessionCheck::Absent;
        };
        if !session::well_formed(id) {
            return SessionCheck::Ended("the session cookie is not one Portcullis issued");
        }
        let key = session::key_of(id);
        let found = self
            .state
            .session_touch(&key, self.config.portal.idle_timeout)
            .await;
        self.metrics.state_call(&self.state, found.is_ok());
        let session = match found {
            Ok(Some(s)) => s,
            Ok(None) => {
                return SessionCheck::Ended(
                    "the session cookie names no live session (idle too long, signed out, or unknown)",
                );
            }
            Err(e) => return SessionCheck::Unavailable(e.to_string()),
        };
        // `created` is whole seconds (the sign-in's second, rounded down), so "more than
        // max_age whole seconds since" is never before max_age and at most a second after.
        let ended = if session::unix_now().saturating_sub(session.created)
            > self.config.portal.max_age.as_secs()
        {
            Some("the session reached portal.max_age")
        } else {
            match self.verifier.credential_stamp(&session.user).await {
                Some(stamp) if stamp == session.stamp => None,
                Some(_) => Some("the password changed since this session began"),
                None => Some("the session's user was removed or disabled"),
            }
        };
        if let Some(why) = ended {
            let _ = self.state.session_delete(&key).await;
            return SessionCheck::Ended(why);
        }
        let mut identity = Identity::user(&session.user);
        identity.groups = self.groups_of(&session.user);
        SessionCheck::Valid(identity)
    }

    pub(crate) fn portal_context<'a>(
        &'a self,
        visit: &'a Visit<'a>,
        view: &'a str,
        title: &'a str,
    ) -> PortalContext<'a> {
        PortalContext {
            view,
            title,
            realm: &self.policy.auth.realm,
            action: &self.paths.login,
            logout_action: &self.paths.logout,
            // No sign-in page on a Basic-only site: pages then offer no link to one.
            login_url: if self.form_enabled() {
                &self.paths.login
            } else {
                ""
            },
            forgot_url: self.can_reset().then_some(self.paths.forgot.as_str()),
            min_length: store::passwords::MIN_LENGTH,
            request_id: visit.request_id,
            ..PortalContext::default()
        }
    }

    /// The challenges of a 401 *page* on a form-login site: only the form's. A Basic challenge
    /// makes browsers open their own password prompt instead of showing the page.
    pub(crate) fn page_challenges(&self) -> &[HeaderValue] {
        match self.form_challenge_index() {
            Some(i) => &self.challenges[i..=i],
            None => &self.challenges,
        }
    }

    fn form_challenge_index(&self) -> Option<usize> {
        self.policy
            .auth
            .schemes
            .iter()
            .position(|s| *s == policy::Scheme::Form)
    }

    /// A portal form page: its CSRF token (and the pre-session cookie when the browser has
    /// none), 400 when it shows an error about the last submission, else 200.
    pub(crate) fn form_response(
        &self,
        visit: &Visit<'_>,
        ctx: PortalContext<'_>,
    ) -> Response<Body> {
        let (csrf, set_csrf) = self.csrf().for_request(&visit.cookies, visit.headers);
        let ctx = PortalContext { csrf: &csrf, ..ctx };
        let status = if ctx.error.is_some() {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::OK
        };
        let mut r = html(status, self.pages.render_portal(&ctx));
        if let Some(c) = set_csrf {
            r.headers_mut().append(SET_COOKIE, c);
        }
        r
    }

    /// Whether the site can mail password-reset links ("forgot password").
    pub(crate) fn can_reset(&self) -> bool {
        self.mailer.is_some() && self.user_db().is_some() && self.config.portal.public_url.is_some()
    }

    /// An unreadable or oversized form: a page saying so (413 or 400).
    pub(crate) fn form_problem(&self, visit: &Visit<'_>, e: FormError) -> Outcome {
        let (status, message) = match e {
            FormError::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "The form sent was far larger than any sign-in form; nothing was saved. Go back and try again.",
            ),
            FormError::TimedOut => (
                StatusCode::REQUEST_TIMEOUT,
                "The form took too long to arrive; nothing was saved. Go back and try again.",
            ),
            FormError::Broken => (
                StatusCode::BAD_REQUEST,
                "The form did not arrive completely; nothing was saved. Go back and try again.",
            ),
        };
        let mut ctx = self.portal_context(visit, "message", "The form could not be read");
        ctx.error = Some(message);
        Outcome {
            response: html(status, self.pages.render_portal(&ctx)),
            reason: Some(Reason::BadRequest),
            user: None,
        }
    }

    /// The CSRF token maker (keyed by the state store's shared secret).
    pub(crate) fn csrf(&self) -> Csrf {
        Csrf::new(self.state.secret())
    }

    /// Fills the account part of a refusal page.
    pub(crate) fn account_for(
        &self,
        refusal: &Refusal,
        ex: &Exchange<'_>,
        set_cookies: &mut Vec<HeaderValue>,
    ) -> Option<crate::respond::Account> {
        if !self.form_enabled() {
            return None;
        }
        let rd = safe_return(ex.request.path_and_query, &self.paths);
        let mut account = crate::respond::Account {
            rd: rd.clone(),
            ..Default::default()
        };
        match refusal.reason {
            Reason::NoCredentials | Reason::SessionExpired | Reason::LogonFailed => {
                account.sign_in_url = Some(self.paths.login_url(&rd, None));
                account.forgot_url = self.can_reset().then(|| self.paths.forgot.clone());
            }
            Reason::AclDenied if ex.user.from_session => {
                let cookies = Cookies {
                    secure: ex.client.secure,
                };
                let (csrf, set) = self.csrf().for_request(&cookies, ex.request.headers);
                set_cookies.extend(set);
                account.switch = Some((self.paths.logout.clone(), csrf));
            }
            _ => {}
        }
        if ex.user.from_session {
            account.user = ex.user.identity.as_ref().and_then(|i| i.user.clone());
        }
        Some(account)
    }

    /// Where a browser refused for lack of a (live) session is sent: the sign-in page, back to
    /// this request afterwards. `None` when a redirect is not the answer (API clients, other
    /// methods, sites without form sign-in).
    pub(crate) fn login_redirect(&self, refusal: &Refusal, view: &Received<'_>) -> Option<String> {
        // Only requests that name text/html: a favicon or an image fetched with `*/*` is not
        // a page to send to the sign-in form.
        let accept = view.headers.get(http::header::ACCEPT);
        if !self.form_enabled()
            || !matches!(
                refusal.reason,
                Reason::NoCredentials | Reason::SessionExpired
            )
            || !matches!(view.method, "GET" | "HEAD")
            || !accept.is_some_and(|a| a.as_bytes().windows(9).any(|w| w == b"text/html"))
            || crate::respond::negotiate(accept) != crate::respond::Format::Html
        {
            return None;
        }
        let rd = safe_return(view.path_and_query, &self.paths);
        let note = (refusal.reason == Reason::SessionExpired).then_some("ended=1");
        Some(self.paths.login_url(&rd, note))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths() -> Paths {
        Paths::new("/.portcullis")
    }

    #[test]
    fn return_targets_stay_on_this_site() {
        let p = paths();
        for good in ["/", "/app", "/app/page?x=1&y=2", "/a%20b", "/docs#top"] {
            assert_eq!(safe_return(good, &p), good, "{good}");
        }
        for bad in [
            "https://evil.example/",
            "//evil.example/",
            "/\\evil.example/",
            "\\\\evil.example",
            "/%2F%2Fevil.example",
            "%2F%2Fevil.example",
            "/%5Cevil.example",
            "/%252F%252Fevil.example",
            "http:/evil.example",
            "javascript:alert(1)",
            "/app\r\nSet-Cookie: x=1",
            "/%0d%0aSet-Cookie:x",
            "",
            "/.portcullis/login?rd=/x",
            "/.portcullis/logout",
            "/a/../.portcullis/login",
        ] {
            assert_eq!(safe_return(bad, &p), "/", "{bad:?}");
        }
    }

    #[test]
    fn csrf_tokens_bind_to_their_pre_session() {
        let c = Csrf::new([7; 32]);
        let t = c.token("abc");
        assert!(c.verify("abc", &t));
        assert!(!c.verify("abd", &t));
        assert!(!c.verify("abc", "garbage!"));
        assert!(!Csrf::new([8; 32]).verify("abc", &t));
    }

    #[test]
    fn origin_must_be_this_site_when_sent() {
        let mut h = HeaderMap::new();
        assert!(same_origin(&h, Some("example.com"), true));
        h.insert(ORIGIN, HeaderValue::from_static("https://example.com"));
        assert!(same_origin(&h, Some("example.com"), true));
        assert!(same_origin(&h, Some("Example.com:443"), true));
        assert!(!same_origin(&h, Some("example.com"), false));
        assert!(!same_origin(&h, Some("example.org"), true));
        h.insert(ORIGIN, HeaderValue::from_static("null"));
        assert!(
            same_origin(&h, Some("example.com"), true),
            "the token decides"
        );
    }

    #[test]
    fn cookies_are_read_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            COOKIE,
            HeaderValue::from_static("a=1; portcullis_session=xyz; b=2"),
        );
        assert_eq!(cookie(&h, "portcullis_session"), Some("xyz"));
        assert_eq!(cookie(&h, "portcullis"), None);
        // Over HTTPS only the __Host- cookie counts (a plain one can be planted from a sibling
        // subdomain); over HTTP the plain one.
        assert_eq!(Cookies { secure: true }.session_id(&h), None);
        assert_eq!(Cookies { secure: false }.session_id(&h), Some("xyz"));
        let c = Cookies { secure: true };
        let set = c.set_session("id", 60);
        assert_eq!(
            set.to_str().unwrap(),
            "__Host-portcullis=id; Path=/; HttpOnly; SameSite=Lax; Secure; Max-Age=60"
        );
    }
}
