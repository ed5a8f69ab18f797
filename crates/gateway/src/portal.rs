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
use http::header::{CACHE_CONTROL, CONTENT_TYPE, COOKIE, HOST, LOCATION, ORIGIN, SET_COOKIE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use policy::{Identity, Reason, Refusal};
use sha2::Sha256;
use store::state::session::{self, Session};

use crate::body::{self, Body};
use crate::pages::PortalContext;
use crate::{Abort, ConnInfo, Gateway, RequestView, Seen, request_id};

/// Largest form body accepted (a sign-in form is a few hundred bytes).
pub const MAX_FORM_BYTES: usize = 16 * 1024;

/// Cookie names: `__Host-` names over HTTPS (bound to this host, Secure, Path=/), plain names
/// over HTTP, where browsers refuse `__Host-` cookies.
const SESSION_SECURE: &str = "__Host-portcullis";
const SESSION_PLAIN: &str = "portcullis_session";
const CSRF_SECURE: &str = "__Host-portcullis-csrf";
const CSRF_PLAIN: &str = "portcullis_csrf";

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

/// The value of cookie `name` in the request (the first one, if repeated).
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// Removes Portcullis's session and CSRF cookies from the request's `Cookie` headers, keeping
/// the application's.
pub fn strip_own_cookies(headers: &mut HeaderMap) {
    let ours = |pair: &str| {
        let name = pair.split_once('=').map_or(pair, |(n, _)| n).trim();
        [SESSION_SECURE, SESSION_PLAIN, CSRF_SECURE, CSRF_PLAIN].contains(&name)
    };
    // Cheap pre-check: most requests carry none of ours.
    if !headers
        .get_all(COOKIE)
        .iter()
        .any(|v| v.as_bytes().windows(10).any(|w| w == b"portcullis"))
    {
        return;
    }
    let kept: Vec<String> = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty() && !ours(pair))
        .map(str::to_owned)
        .collect();
    headers.remove(COOKIE);
    if !kept.is_empty()
        && let Ok(v) = HeaderValue::from_str(&kept.join("; "))
    {
        headers.insert(COOKIE, v);
    }
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Lax, Path=/, Secure over HTTPS.
fn set_cookie(name: &str, value: &str, secure: bool, max_age: Option<u64>) -> HeaderValue {
    let mut c = format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax");
    if secure {
        c.push_str("; Secure");
    }
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static("x=; Max-Age=0"))
}

/// What a request carries and needs, cookie-wise.
pub struct Cookies {
    /// Whether the site is reached over HTTPS (directly, or as a trusted proxy says).
    pub secure: bool,
}

impl Cookies {
    fn session_name(&self) -> &'static str {
        if self.secure {
            SESSION_SECURE
        } else {
            SESSION_PLAIN
        }
    }

    fn csrf_name(&self) -> &'static str {
        if self.secure { CSRF_SECURE } else { CSRF_PLAIN }
    }

    /// The session id the request carries. Over HTTPS only the `__Host-` cookie counts: a
    /// plain-named one can be planted by a sibling subdomain (`Domain=`) or over plain HTTP.
    pub fn session_id<'h>(&self, headers: &'h HeaderMap) -> Option<&'h str> {
        cookie(headers, self.session_name())
    }

    /// Sets the session cookie.
    pub fn set_session(&self, id: &str, max_age: u64) -> HeaderValue {
        set_cookie(self.session_name(), id, self.secure, Some(max_age))
    }

    /// Clears the session cookie(s) the request carries.
    pub fn clear_session(&self, headers: &HeaderMap) -> Vec<HeaderValue> {
        let mut out = vec![set_cookie(self.session_name(), "", self.secure, Some(0))];
        for name in [SESSION_SECURE, SESSION_PLAIN] {
            if name != self.session_name() && cookie(headers, name).is_some() {
                out.push(set_cookie(name, "", name == SESSION_SECURE, Some(0)));
            }
        }
        out
    }

    /// The pre-session id the request carries, if well-formed.
    fn pre_session<'h>(&self, headers: &'h HeaderMap) -> Option<&'h str> {
        cookie(headers, self.csrf_name()).filter(|id| session::well_formed(id))
    }
}

/// Signed double-submit CSRF tokens.
pub struct Csrf {
    secret: [u8; 32],
}

impl Csrf {
    /// Tokens keyed by `secret` (the state store's).
    pub fn new(secret: [u8; 32]) -> Csrf {
        Csrf { secret }
    }

    /// HMAC-SHA256 under the shared key of `parts`, each ended by a NUL, after a `purpose`
    /// label (so a CSRF token can never pass as a second-factor token, or the reverse).
    fn mac(&self, purpose: &[u8], parts: &[&[u8]]) -> [u8; 32] {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC accepts keys of any length");
        mac.update(purpose);
        for part in parts {
            mac.update(part);
            mac.update(b"\0");
        }
        mac.finalize().into_bytes().into()
    }

    /// Whether `sig` (base64url) is `expected` (constant time).
    fn matches(expected: &[u8; 32], sig: &str) -> bool {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(sig)
            .is_ok_and(|raw| subtle::ConstantTimeEq::ct_eq(&expected[..], &raw[..]).into())
    }

    /// The token for pre-session `id`.
    pub fn token(&self, id: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(self.mac(b"portcullis-csrf\0", &[id.as_bytes()]))
    }

    /// Whether `token` belongs to pre-session `id` (constant time).
    pub fn verify(&self, id: &str, token: &str) -> bool {
        Self::matches(&self.mac(b"portcullis-csrf\0", &[id.as_bytes()]), token)
    }

    /// A token saying "`user` gave the right password, the second factor is pending", valid
    /// until `expires` (Unix seconds) for the pre-session `pre` and while the user's password
    /// is the one whose stamp is `stamp` (the stamp is in the MAC, not in the token: a copy of
    /// the shared key alone cannot mint one): `user.expires.mac`.
    pub fn pending(&self, user: &str, stamp: u64, expires: u64, pre: &str) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{expires}.{}",
            b64.encode(user),
            b64.encode(self.pending_mac(user, stamp, expires, pre))
        )
    }

    fn pending_mac(&self, user: &str, stamp: u64, expires: u64, pre: &str) -> [u8; 32] {
        self.mac(
            b"portcullis-2fa\0",
            &[
                user.as_bytes(),
                &stamp.to_be_bytes(),
                &expires.to_be_bytes(),
                pre.as_bytes(),
            ],
        )
    }

    /// The user a pending token names (not yet checked: see [`Csrf::check_pending`]).
    pub fn pending_user(token: &str) -> Option<String> {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        String::from_utf8(b64.decode(token.split('.').next()?).ok()?).ok()
    }

    /// Whether a pending token for `user` is genuine, unexpired, for pre-session `pre` and for
    /// the password whose stamp is `stamp`.
    pub fn check_pending(&self, token: &str, user: &str, stamp: u64, pre: &str, now: u64) -> bool {
        let mut parts = token.split('.').skip(1);
        let (Some(expires), Some(sig)) = (
            parts.next().and_then(|e| e.parse::<u64>().ok()),
            parts.next(),
        ) else {
            return false;
        };
        now <= expires && Self::matches(&self.pending_mac(user, stamp, expires, pre), sig)
    }

    /// The request's pre-session and its token, or a new pre-session (and the cookie to set).
    pub fn for_request(
        &self,
        cookies: &Cookies,
        headers: &HeaderMap,
    ) -> (String, Option<HeaderValue>) {
        match cookies.pre_session(headers) {
            Some(id) => (self.token(id), None),
            None => {
                let id = session::new_id();
                let cookie = set_cookie(cookies.csrf_name(), &id, cookies.secure, None);
                (self.token(&id), Some(cookie))
            }
        }
    }

    /// Whether a POST's token matches the pre-session cookie it came with.
    pub fn check(&self, cookies: &Cookies, headers: &HeaderMap, token: Option<&str>) -> bool {
        match (cookies.pre_session(headers), token) {
            (Some(id), Some(token)) => self.verify(id, token),
            _ => false,
        }
    }
}

/// Whether a POST's `Origin` (when sent) is this site: `scheme://host[:port]` as the request
/// reached it. Browsers send `Origin` on every cross-site POST, so a mismatch is a forgery; its
/// absence (old clients) leaves the decision to the CSRF token, and so does `Origin: null`,
/// which browsers send for a same-site form on a page with `Referrer-Policy: no-referrer` (the
/// password page, so its link's token never leaves in a Referer).
pub fn same_origin(headers: &HeaderMap, host: Option<&str>, secure: bool) -> bool {
    let Some(origin) = headers.get(ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if origin == "null" {
        return true;
    }
    let Some(host) = host else { return false };
    let scheme = if secure { "https" } else { "http" };
    let strip = |h: &str| -> String {
        let h = h.to_ascii_lowercase();
        let default = if secure { ":443" } else { ":80" };
        h.strip_suffix(default).map_or(h.clone(), str::to_owned)
    };
    match origin.split_once("://") {
        Some((s, h)) => s.eq_ignore_ascii_case(scheme) && strip(h) == strip(host),
        None => false,
    }
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
pub async fn read_form(body: Incoming, timeout: std::time::Duration) -> Result<Form, FormError> {
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

/// A 303 to `location`.
pub fn see_other(location: &str) -> Response<Body> {
    let mut r = Response::new(body::full(Bytes::new()));
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(LOCATION, v);
    }
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// An HTML response.
pub(crate) fn html(status: StatusCode, page: String) -> Response<Body> {
    let mut r = Response::new(body::full(page));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r.headers_mut().insert(
        http::header::HeaderName::from_static("x-frame-options"),
        HeaderValue::from_static("DENY"),
    );
    r.headers_mut().insert(
        http::header::HeaderName::from_static("referrer-policy"),
        HeaderValue::from_static("same-origin"),
    );
    r
}

/// The request's host as the browser addressed it (`X-Forwarded-Host` from a trusted proxy).
pub fn request_host(headers: &HeaderMap, uri: &http::Uri, trusted: bool) -> Option<String> {
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
        .or_else(|| uri.authority().map(|a| a.as_str().to_owned()))
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
        req: Request<Incoming>,
        conn: ConnInfo,
        page: Page,
    ) -> Result<Response<Body>, Abort> {
        let started = Instant::now();
        let request_id = request_id::for_request(req.headers());
        let (parts, body) = req.into_parts();
        let view = RequestView {
            tls: conn.tls,
            method: parts.method.as_str(),
            path: parts.uri.path(),
            // A password link's token must not reach the access log.
            path_and_query: if page == Page::Password {
                parts.uri.path()
            } else {
                parts.uri.path_and_query().map_or("/", |p| p.as_str())
            },
            headers: &parts.headers,
        };
        let mut record = self.new_record(&view, &conn, &request_id, started);
        let mut seen = Seen::new(policy::canonical(conn.peer.ip()));
        let admitted = match self.admit(&view, &mut seen, &request_id, &mut record).await {
            Ok(a) => a,
            Err(refusal) => return self.refuse(&refusal, &view, &seen, &request_id, record, &[]),
        };
        let visit = Visit {
            headers: &parts.headers,
            cookies: Cookies {
                secure: seen.secure,
            },
            host: request_host(&parts.headers, &parts.uri, admitted.forwarded_by_proxy),
            client_ip: seen.client_ip,
            request_id: &request_id,
            query: parts.uri.query(),
        };
        let outcome = match (page, &parts.method) {
            (Page::Login, &Method::GET | &Method::HEAD) => self.login_page(&visit).await,
            (Page::Login, &Method::POST) => self.login_post(&visit, body).await,
            (Page::Logout, &Method::GET | &Method::HEAD) => self.logout_page(&visit, None).await,
            (Page::Logout, &Method::POST) => self.logout_post(&visit, body).await,
            (Page::Password, &Method::GET | &Method::HEAD) => self.password_page(&visit).await,
            (Page::Password, &Method::POST) => self.password_post(&visit, body).await,
            (Page::Forgot, &Method::GET | &Method::HEAD) => self.forgot_page(&visit, None),
            (Page::Forgot, &Method::POST) => self.forgot_post(&visit, body).await,
            _ => {
                let mut r = Response::new(body::full("405 Method Not Allowed\n"));
                *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
                r.headers_mut().insert(
                    http::header::ALLOW,
                    HeaderValue::from_static("GET, HEAD, POST"),
                );
                Outcome::plain(r)
            }
        };
        let Outcome {
            mut response,
            reason,
            user,
        } = outcome;
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert(request_id::X_REQUEST_ID, v);
        }
        // Every answer at a password link (form, error, expired): its token must not leave in a
        // Referer.
        if page == Page::Password {
            response.headers_mut().insert(
                http::header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            );
        }
        if let Some(r) = record.as_mut() {
            r.username = user.or(r.username.take());
            if let Some(reason) = reason {
                r.substatus = reason.substatus();
                r.reason = Some(reason);
            }
        }
        self.metrics.request(response.status().as_u16(), reason);
        // The in-flight slot is held, and the line logged, until the body has gone.
        Ok(self.logged_holding(response, record, admitted.guard))
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

    /// `GET {prefix}/login`: the form; "signed in as X" when the session is live; a stale
    /// session cookie is cleared here too.
    async fn login_page(&self, visit: &Visit<'_>) -> Outcome {
        let rd = safe_return(
            &query_param(visit.query, "rd").unwrap_or_else(|| "/".to_owned()),
            &self.paths,
        );
        let mut clear = Vec::new();
        let mut notice = match () {
            () if query_param(visit.query, "password_set").is_some() => {
                Some("Your password is set. Sign in with it now.")
            }
            () if query_param(visit.query, "ended").is_some() => Some(
                "Your session ended, so please sign in again. (The old session cookie has been removed.)",
            ),
            () if query_param(visit.query, "signed_out").is_some() => Some("You are signed out."),
            () => None,
        };
        match self
            .check_session(visit.headers, visit.cookies.secure)
            .await
        {
            SessionCheck::Valid(identity) => {
                let user = identity.user.unwrap_or_default();
                let mut ctx = self.portal_context(visit, "signed_in", "You are signed in");
                ctx.user = &user;
                ctx.rd = &rd;
                return Outcome {
                    response: self.form_response(visit, ctx),
                    reason: None,
                    user: Some(user.clone()),
                };
            }
            SessionCheck::Ended(_) => {
                clear = visit.cookies.clear_session(visit.headers);
                notice = notice.or(Some(
                    "Your session ended, so please sign in again. (The old session cookie has been removed.)",
                ));
            }
            SessionCheck::Absent | SessionCheck::Unavailable(_) => {}
        }
        let mut ctx = self.portal_context(visit, "login", "Sign in");
        ctx.notice = notice;
        ctx.rd = &rd;
        let mut r = self.form_response(visit, ctx);
        for c in clear {
            r.headers_mut().append(SET_COOKIE, c);
        }
        Outcome::plain(r)
    }

    /// Re-renders the sign-in form with an error (and a fresh CSRF token if needed).
    #[allow(clippy::too_many_arguments)]
    fn login_again(
        &self,
        visit: &Visit<'_>,
        status: StatusCode,
        error: &str,
        username: &str,
        rd: &str,
        refusal: Option<&Refusal>,
        fresh_csrf: bool,
    ) -> Outcome {
        let (csrf, set_csrf) = if fresh_csrf {
            let id = session::new_id();
            (
                self.csrf().token(&id),
                Some(set_cookie(
                    visit.cookies.csrf_name(),
                    &id,
                    visit.cookies.secure,
                    None,
                )),
            )
        } else {
            self.csrf().for_request(&visit.cookies, visit.headers)
        };
        let mut ctx = self.portal_context(visit, "login", "Sign in");
        ctx.error = Some(error);
        ctx.username = username;
        ctx.rd = rd;
        ctx.csrf = &csrf;
        let retry_after = refusal
            .and_then(|r| r.retry_after)
            .map(crate::respond::retry_after_secs);
        ctx.retry_after = retry_after;
        let mut r = html(status, self.pages.render_portal(&ctx));
        if let Some(c) = set_csrf {
            r.headers_mut().append(SET_COOKIE, c);
        }
        if status == StatusCode::UNAUTHORIZED {
            for c in self.page_challenges() {
                r.headers_mut()
                    .append(http::header::WWW_AUTHENTICATE, c.clone());
            }
        }
        if let Some(secs) = retry_after {
            r.headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        Outcome {
            response: r,
            reason: refusal.map(|r| r.reason),
            user: (!username.is_empty()).then(|| username.to_owned()),
        }
    }

    /// `POST {prefix}/login`: checks origin, CSRF token and password (with the same lockout as
    /// Basic), then starts a new session and sends the browser back to `rd`.
    async fn login_post(&self, visit: &Visit<'_>, body: Incoming) -> Outcome {
        let form = match read_form(body, self.config.server.header_timeout).await {
            Ok(f) => f,
            Err(e) => return self.form_problem(visit, e),
        };
        let rd = safe_return(form.get("rd").unwrap_or("/"), &self.paths);
        let username = form.get("username").unwrap_or("").trim().to_owned();
        if !same_origin(visit.headers, visit.host.as_deref(), visit.cookies.secure) {
            return self.login_again(
                visit,
                StatusCode::FORBIDDEN,
                "This sign-in form was sent from another site, so it was ignored. Sign in here instead.",
                &username,
                &rd,
                None,
                true,
            );
        }
        if !self
            .csrf()
            .check(&visit.cookies, visit.headers, form.get("csrf"))
        {
            return self.login_again(
                visit,
                StatusCode::BAD_REQUEST,
                "The sign-in form had expired (or your browser did not send its cookie back). Please sign in again; if this repeats, allow cookies for this site.",
                &username,
                &rd,
                Some(&Refusal::new(Reason::BadRequest)),
                true,
            );
        }
        if let Some(pending) = form.get("pending") {
            return self
                .second_factor(visit, pending, form.get("code").unwrap_or(""), &rd)
                .await;
        }
        let password = form.get("password").unwrap_or("").to_owned();
        if let Err(bad) = policy::check_user_name(&username) {
            tracing::info!(client = %visit.client_ip, problem = %bad, "sign-in form refused: unusable user name");
            return self.login_again(
                visit,
                StatusCode::BAD_REQUEST,
                "That user name cannot be right: it is too long or holds invisible control characters. Type it again.",
                "",
                &rd,
                Some(&Refusal::new(Reason::BadRequest)),
                false,
            );
        }
        if username.is_empty() || password.is_empty() {
            return self.login_again(
                visit,
                StatusCode::BAD_REQUEST,
                "Enter both your user name and your password.",
                &username,
                &rd,
                Some(&Refusal::new(Reason::BadRequest)),
                false,
            );
        }
        let identity = match self
            .authenticate_password(visit.client_ip, &username, password, "form")
            .await
        {
            Ok(identity) => identity,
            Err(refusal) => {
                let message = match refusal.reason {
                    Reason::LogonFailed => {
                        "The user name or password was not accepted. Check them (and Caps Lock) and try again."
                    }
                    Reason::LockedOut => {
                        "Too many sign-in attempts failed, so signing in is blocked for a while, even with the right password."
                    }
                    _ => "Signing in is not possible right now. Please try again in a minute.",
                };
                let status = StatusCode::from_u16(refusal.status())
                    .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                return self.login_again(
                    visit,
                    status,
                    message,
                    &username,
                    &rd,
                    Some(&refusal),
                    false,
                );
            }
        };
        let user = identity.user.clone().unwrap_or_default();
        if self.verifier.has_second_factor(&user).await {
            return self.code_step(visit, &user, &rd, None).await;
        }
        self.start_session(visit, user, &rd).await
    }

    /// The second step of a sign-in with TOTP: a form for the code, bound to this pre-session
    /// and valid for five minutes.
    async fn code_step(
        &self,
        visit: &Visit<'_>,
        user: &str,
        rd: &str,
        error: Option<&str>,
    ) -> Outcome {
        let (pre, set_pre) = match visit.cookies.pre_session(visit.headers) {
            Some(id) => (id.to_owned(), None),
            None => {
                let id = session::new_id();
                let c = set_cookie(visit.cookies.csrf_name(), &id, visit.cookies.secure, None);
                (id, Some(c))
            }
        };
        let csrf = self.csrf();
        let stamp = self.verifier.credential_stamp(user).await.unwrap_or(0);
        let pending = csrf.pending(user, stamp, session::unix_now() + 300, &pre);
        let token = csrf.token(&pre);
        let mut ctx = self.portal_context(visit, "code", "Enter your code");
        ctx.csrf = &token;
        ctx.rd = rd;
        ctx.token = &pending;
        ctx.user = user;
        ctx.error = error;
        let status = if error.is_some() {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::OK
        };
        let mut r = html(status, self.pages.render_portal(&ctx));
        if status == StatusCode::UNAUTHORIZED {
            for c in self.page_challenges() {
                r.headers_mut()
                    .append(http::header::WWW_AUTHENTICATE, c.clone());
            }
        }
        if let Some(c) = set_pre {
            r.headers_mut().append(SET_COOKIE, c);
        }
        Outcome {
            response: r,
            reason: error.map(|_| Reason::LogonFailed),
            user: Some(user.to_owned()),
        }
    }

    /// `POST {prefix}/login` with a pending token: checks the TOTP code (lockout applies).
    async fn second_factor(
        &self,
        visit: &Visit<'_>,
        pending: &str,
        code: &str,
        rd: &str,
    ) -> Outcome {
        let pre = visit.cookies.pre_session(visit.headers).unwrap_or("");
        let user = Csrf::pending_user(pending).unwrap_or_default();
        let stamp = self.verifier.credential_stamp(&user).await;
        let genuine = stamp.is_some_and(|stamp| {
            self.csrf()
                .check_pending(pending, &user, stamp, pre, session::unix_now())
        });
        if !genuine {
            return self.login_again(
                visit,
                StatusCode::BAD_REQUEST,
                "The code step took too long. Please sign in again.",
                "",
                rd,
                Some(&Refusal::new(Reason::BadRequest)),
                false,
            );
        };
        // The same lockout check as the password step (on_backend_error honoured, counted and
        // audited): a code is a guess like a password.
        if self.config.logon.enabled
            && let Err(refusal) = self
                .check_not_locked_out(visit.client_ip, &user, "form")
                .await
        {
            let (status, message) = if refusal.reason == Reason::LockedOut {
                (
                    StatusCode::FORBIDDEN,
                    "Too many sign-in attempts failed, so signing in is blocked for a while, even with the right password.",
                )
            } else {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Signing in is not possible right now: a service it needs is unavailable. Try again in a minute.",
                )
            };
            return self.login_again(visit, status, message, &user, rd, Some(&refusal), false);
        }
        if self.verifier.check_second_factor(&user, code).await {
            self.audit
                .record("second_factor", serde_json::json!({"user": user, "client": visit.client_ip.to_string(), "accepted": true}));
            // Only now is the sign-in complete: counted, audited, the failure count reset.
            if self.config.logon.enabled {
                let recorded = self
                    .state
                    .record_success(self.client_key(visit.client_ip), &user)
                    .await;
                self.metrics.state_call(&self.state, recorded.is_ok());
                if let Err(e) = recorded {
                    tracing::error!(error = %e, "could not record the logon outcome");
                }
            }
            self.signed_in(&user, visit.client_ip, true, "form");
            return self.start_session(visit, user, rd).await;
        }
        self.audit
            .record("second_factor", serde_json::json!({"user": user, "client": visit.client_ip.to_string(), "accepted": false}));
        if self.config.logon.enabled {
            let recorded = self
                .state
                .record_failure(self.client_key(visit.client_ip), &user, &self.regulation)
                .await;
            self.note_bans(recorded);
        }
        self.code_step(
            visit,
            &user,
            rd,
            Some("That code was not accepted. Enter the current code from your authenticator app (each code works once)."),
        )
        .await
    }

    /// Starts a session for `user` and sends the browser to `rd`.
    async fn start_session(&self, visit: &Visit<'_>, user: String, rd: &str) -> Outcome {
        let username = user.clone();
        let rd = rd.to_owned();
        // A new id at every sign-in: a session id planted before cannot be promoted.
        let id = session::new_id();
        let key = session::key_of(&id);
        let stamp = self.verifier.credential_stamp(&user).await.unwrap_or(0);
        let stored = self
            .state
            .session_create(
                &key,
                &Session::new(&user, stamp),
                self.config.portal.idle_timeout,
                &store::state::SessionCap {
                    max_per_user: self.config.portal.max_sessions_per_user,
                    max_age: self.config.portal.max_age,
                },
            )
            .await;
        self.metrics.state_call(&self.state, stored.is_ok());
        if let Err(e) = stored {
            tracing::error!(error = %e, "cannot store a new session");
            return self.login_again(
                visit,
                StatusCode::SERVICE_UNAVAILABLE,
                "Signing in is not possible right now (the session store is unavailable). Please try again in a minute.",
                &username,
                &rd,
                Some(&Refusal::new(Reason::StateUnavailable)),
                false,
            );
        }
        let mut r = see_other(&rd);
        let headers = r.headers_mut();
        headers.append(
            SET_COOKIE,
            visit
                .cookies
                .set_session(&id, self.config.portal.max_age.as_secs()),
        );
        // The pre-session is renewed as well: a token seen before sign-in is worth nothing after.
        let pre = session::new_id();
        headers.append(
            SET_COOKIE,
            set_cookie(visit.cookies.csrf_name(), &pre, visit.cookies.secure, None),
        );
        Outcome {
            response: r,
            reason: None,
            user: Some(user),
        }
    }

    /// `GET {prefix}/logout` (or a POST whose token failed): a page with a sign-out button.
    async fn logout_page(&self, visit: &Visit<'_>, error: Option<&str>) -> Outcome {
        let rd = safe_return(
            &query_param(visit.query, "rd").unwrap_or_else(|| "/".to_owned()),
            &self.paths,
        );
        let user = match self
            .check_session(visit.headers, visit.cookies.secure)
            .await
        {
            SessionCheck::Valid(identity) => identity.user.unwrap_or_default(),
            _ => String::new(),
        };
        let mut ctx = self.portal_context(visit, "logout", "Sign out");
        ctx.user = &user;
        ctx.rd = &rd;
        ctx.error = error;
        Outcome {
            response: self.form_response(visit, ctx),
            reason: error.map(|_| Reason::BadRequest),
            user: (!user.is_empty()).then_some(user),
        }
    }

    /// `POST {prefix}/logout`: ends the session server-side, clears the cookies and the cache
    /// (`Clear-Site-Data`), and shows the sign-in page (returning to `rd`).
    async fn logout_post(&self, visit: &Visit<'_>, body: Incoming) -> Outcome {
        let form = match read_form(body, self.config.server.header_timeout).await {
            Ok(f) => f,
            Err(e) => return self.form_problem(visit, e),
        };
        if !same_origin(visit.headers, visit.host.as_deref(), visit.cookies.secure)
            || !self
                .csrf()
                .check(&visit.cookies, visit.headers, form.get("csrf"))
        {
            return self
                .logout_page(
                    visit,
                    Some("That sign-out request could not be verified (it may have come from another site, or the page was old). Use the button below to sign out."),
                )
                .await;
        }
        let rd = safe_return(form.get("rd").unwrap_or("/"), &self.paths);
        let mut user = None;
        if let Some(id) = visit.cookies.session_id(visit.headers)
            && session::well_formed(id)
        {
            let key = session::key_of(id);
            if let Ok(Some(s)) = self
                .state
                .session_touch(&key, self.config.portal.idle_timeout)
                .await
            {
                user = Some(s.user);
            }
            if let Err(e) = self.state.session_delete(&key).await {
                tracing::error!(error = %e, "cannot end a session in the state store; its cookie is cleared anyway");
            }
        }
        if let Some(u) = &user {
            self.audit.record(
                "sign_out",
                serde_json::json!({"user": u, "client": visit.client_ip.to_string()}),
            );
        }
        let mut r = see_other(&self.paths.login_url(&rd, Some("signed_out=1")));
        let headers = r.headers_mut();
        for c in visit.cookies.clear_session(visit.headers) {
            headers.append(SET_COOKIE, c);
        }
        headers.insert(
            http::header::HeaderName::from_static("clear-site-data"),
            HeaderValue::from_static("\"cache\", \"cookies\""),
        );
        Outcome {
            response: r,
            reason: None,
            user,
        }
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
        view: &RequestView<'_>,
        seen: &Seen,
        set_cookies: &mut Vec<HeaderValue>,
    ) -> Option<crate::respond::Account> {
        if !self.form_enabled() {
            return None;
        }
        let rd = safe_return(view.path_and_query, &self.paths);
        let mut account = crate::respond::Account {
            rd: rd.clone(),
            ..Default::default()
        };
        match refusal.reason {
            Reason::NoCredentials | Reason::SessionExpired | Reason::LogonFailed => {
                account.sign_in_url = Some(self.paths.login_url(&rd, None));
                account.forgot_url = self.can_reset().then(|| self.paths.forgot.clone());
            }
            Reason::AclDenied if seen.session_user => {
                let cookies = Cookies {
                    secure: seen.secure,
                };
                let (csrf, set) = self.csrf().for_request(&cookies, view.headers);
                set_cookies.extend(set);
                account.switch = Some((self.paths.logout.clone(), csrf));
            }
            _ => {}
        }
        if seen.session_user {
            account.user = seen.identity.as_ref().and_then(|i| i.user.clone());
        }
        Some(account)
    }

    /// Where a browser refused for lack of a (live) session is sent: the sign-in page, back to
    /// this request afterwards. `None` when a redirect is not the answer (API clients, other
    /// methods, sites without form sign-in).
    pub(crate) fn login_redirect(
        &self,
        refusal: &Refusal,
        view: &RequestView<'_>,
    ) -> Option<String> {
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
