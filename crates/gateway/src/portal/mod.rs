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
use crate::pipeline::authenticate::Logon;
use crate::pipeline::{Exchange, Received};
use crate::respond::{Answer, html, see_other};
use crate::{Abort, ConnInfo, Gateway};

pub(crate) mod account;
mod cookies;
mod csrf;
mod form;
mod oidc;
mod return_to;
mod sign_in;
mod sign_out;

use cookies::*;
pub use cookies::{Cookies, cookie, same_origin, strip_own_cookies};
pub use csrf::Csrf;
pub use form::{Form, FormError, MAX_FORM_BYTES, query_param, read_form};
pub use return_to::{Paths, encode, safe_return};

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
    /// `GET {prefix}/oidc/login?rd=…`: off to the identity provider.
    OidcLogin,
    /// `GET {prefix}/oidc/callback?code&state`: back from it.
    OidcCallback,
}

impl Page {
    /// The page for a path below the prefix.
    pub fn from_rest(rest: &str) -> Option<Page> {
        Some(match rest {
            "/login" => Page::Login,
            "/logout" => Page::Logout,
            "/password" => Page::Password,
            "/forgot" => Page::Forgot,
            "/oidc/login" => Page::OidcLogin,
            "/oidc/callback" => Page::OidcCallback,
            _ => return None,
        })
    }
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
    /// The directory that holds the users did not answer.
    Directory(store::ldap::DirectoryError),
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

/// The portal: what its pages use of the gateway, and nothing else (no upstream, no filter, no
/// rules): the state store (sessions, CSRF secret), the user store, the pages, its paths, the
/// mailer, the logon service.
pub(crate) struct Portal<'g> {
    pub(crate) config: &'g config::Config,
    pub(crate) auth: &'g policy::AuthPolicy,
    pub(crate) challenges: &'g [HeaderValue],
    pub(crate) state: &'g store::state::StateStore,
    pub(crate) verifier: &'g store::verifier::Verifier,
    pub(crate) pages: &'g std::sync::Arc<crate::pages::Pages>,
    pub(crate) paths: &'g Paths,
    pub(crate) mailer: &'g Option<std::sync::Arc<crate::mail::Mailer>>,
    pub(crate) metrics: &'g std::sync::Arc<crate::metrics::Metrics>,
    pub(crate) audit: &'g std::sync::Arc<crate::audit::AuditLog>,
    pub(crate) logon: Logon<'g>,
    pub(crate) oidc: Option<&'g std::sync::Arc<crate::oidc::OidcSite>>,
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
        if matches!(page, Page::Password | Page::OidcCallback) {
            // A password link's token, or the provider's code, must not reach the access log.
            received.path_and_query = parts.uri.path();
        }
        let mut ex = self.exchange(received, &conn, started);
        if let Err(refusal) = self.admit(&mut ex).await {
            return self.respond(ex, Answer::Refuse(refusal));
        }
        let portal = self.portal_view();
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
            (Page::Login, &Method::GET | &Method::HEAD) => portal.login_page(&visit).await,
            (Page::Login, &Method::POST) if portal.password_sign_in() => {
                portal.login_post(&visit, body).await
            }
            (Page::Logout, &Method::GET | &Method::HEAD) => portal.logout_page(&visit, None).await,
            (Page::Logout, &Method::POST) => portal.logout_post(&visit, body).await,
            (Page::Password, &Method::GET | &Method::HEAD) => portal.password_page(&visit).await,
            (Page::Password, &Method::POST) => portal.password_post(&visit, body).await,
            (Page::Forgot, &Method::GET | &Method::HEAD) => portal.forgot_page(&visit, None),
            (Page::Forgot, &Method::POST) => portal.forgot_post(&visit, body).await,
            (Page::OidcLogin, &Method::GET | &Method::HEAD) => portal.oidc_login(&visit).await,
            (Page::OidcCallback, &Method::GET) => portal.oidc_callback(&visit).await,
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

    /// The portal over this gateway's stores.
    pub(crate) fn portal_view(&self) -> Portal<'_> {
        Portal {
            config: &self.config,
            auth: &self.policy.auth,
            challenges: &self.challenges,
            state: &self.state,
            verifier: &self.verifier,
            pages: &self.pages,
            paths: &self.paths,
            mailer: &self.mailer,
            metrics: &self.metrics,
            audit: &self.audit,
            logon: self.logon(),
            oidc: self.oidc.as_ref(),
        }
    }
}

impl<'g> Portal<'g> {
    /// Whether the portal's sessions are on: the `form` scheme, or `oidc`.
    pub(crate) fn form_enabled(&self) -> bool {
        self.password_sign_in() || self.oidc.is_some()
    }

    /// Whether the sign-in page takes a user name and password (the `form` scheme).
    pub(crate) fn password_sign_in(&self) -> bool {
        self.auth.schemes.contains(&policy::Scheme::Form)
    }

    /// The user database, when users live in SQLite or PostgreSQL.
    pub(crate) fn user_db(&self) -> Option<store::sqlite::Location> {
        crate::user_database(self.config)
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
        self.metrics.state_call(self.state, found.is_ok());
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
        let mut identity = Identity::user(&session.user);
        // An identity provider's user: not in the local store; the groups it gave at sign-in.
        if let Some(groups) = &session.groups {
            let ended = if session::unix_now().saturating_sub(session.created)
                > self.config.portal.max_age.as_secs()
            {
                Some("the session reached portal.max_age")
            } else if !self.oidc.is_some_and(|o| o.admits(groups)) {
                Some(
                    "the session is an identity provider's, and oidc is off or its allowed_groups no longer admit the user",
                )
            } else {
                None
            };
            if let Some(why) = ended {
                let _ = self.state.session_delete(&key).await;
                return SessionCheck::Ended(why);
            }
            identity.groups.clone_from(groups);
            return SessionCheck::Valid(identity);
        }
        // From a directory: the user must still be in it (the password lives there, so "the
        // password changed" cannot be seen), with their groups as they are now.
        if let Some(directory) = self.verifier.directory() {
            match directory.lookup(&session.user).await {
                Ok(Some(entry)) => {
                    crate::pipeline::authenticate::logon::take_entry(&mut identity, &entry)
                }
                Ok(None) => {
                    let _ = self.state.session_delete(&key).await;
                    return SessionCheck::Ended("the session's user is no longer in the directory");
                }
                Err(e) => return SessionCheck::Directory(e),
            }
        }
        let ended = if session::unix_now().saturating_sub(session.created)
            > self.config.portal.max_age.as_secs()
        {
            Some("the session reached portal.max_age")
        } else if self.verifier.directory().is_some() {
            // Looked up above; a directory's passwords have no stamp to compare.
            None
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
        if self.verifier.directory().is_none() {
            identity.groups = self.logon.groups_of(&session.user);
        }
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
            realm: &self.auth.realm,
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
            // No password form on a site that signs in only through the identity provider.
            oidc_only: self.oidc.is_some() && !self.password_sign_in(),
            ..PortalContext::default()
        }
    }

    /// The challenges of a 401 *page* on a form-login site: only the form's. A Basic challenge
    /// makes browsers open their own password prompt instead of showing the page.
    pub(crate) fn page_challenges(&self) -> &'g [HeaderValue] {
        let all: &'g [HeaderValue] = self.challenges;
        match self.form_challenge_index() {
            Some(i) => &all[i..=i],
            None => all,
        }
    }

    fn form_challenge_index(&self) -> Option<usize> {
        self.auth
            .schemes
            .iter()
            .position(|s| matches!(s, policy::Scheme::Form | policy::Scheme::Oidc))
    }

    /// Whether the site can mail password-reset links ("forgot password").
    pub(crate) fn can_reset(&self) -> bool {
        self.mailer.is_some() && self.user_db().is_some() && self.config.portal.public_url.is_some()
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
        let rd = safe_return(ex.request.path_and_query, self.paths);
        let mut account = crate::respond::Account {
            rd: rd.clone(),
            ..Default::default()
        };
        match refusal.reason {
            Reason::NoCredentials | Reason::SessionExpired | Reason::LogonFailed => {
                account.sign_in_url = Some(self.paths.login_url(&rd, None));
                account.forgot_url = self.can_reset().then(|| self.paths.forgot.clone());
            }
            Reason::SecondFactorRequired => {
                account.sign_in_url = Some(self.paths.login_url(&rd, None));
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
        let rd = safe_return(view.path_and_query, self.paths);
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
