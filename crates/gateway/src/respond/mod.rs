//! Phase 9: every answer the gateway gives leaves through [`Gateway::respond`] — the only
//! place that sets the status, the challenges, `Retry-After`, the security headers,
//! `X-Request-Id`, the log record's status and sub-status, and the metrics, and that sends the
//! response holding what the request held (its in-flight slot). `render.rs` draws a refusal
//! in the format `Accept` asks for; `problems.rs` serves the explanation pages.

use super::*;

mod problems;
mod render;

pub use render::{
    Account, Format, RefusalContext, negotiate, refusal_response, retry_after_secs,
    secure_own_response,
};
pub(crate) use render::{html, see_other, text};

use crate::pipeline::Exchange;

const X_PORTCULLIS_COOKIE: http::HeaderName = http::HeaderName::from_static("x-portcullis-cookie");
const X_PORTCULLIS_AUTHORIZATION: http::HeaderName =
    http::HeaderName::from_static("x-portcullis-authorization");
const X_PORTCULLIS_PROBLEM: http::HeaderName =
    http::HeaderName::from_static("x-portcullis-problem");

/// What the phases decided to answer.
pub(crate) enum Answer {
    /// Phases 1–7 refused the request.
    Refuse(Refusal),
    /// Phase 1 refused the request's framing: the connection is closed after the answer.
    RefuseAndClose(Refusal),
    /// `deny_action = "abort"`: no response, the connection is closed.
    Abort(Reason),
    /// Forward-auth: the request may pass as the exchange's identity.
    Allow,
    /// The upstream's response.
    Upstream(Response<proxy::UpstreamBody>),
    /// The upstream failed (502, 504) or the client's body did (400).
    UpstreamFailed(Refusal),
    /// A portal page.
    Page(portal::Outcome),
}

/// Who the answer goes to: a client, or a front proxy's forward-auth question.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Front {
    /// A client (proxy mode, the portal), or an untrusted peer at the forward-auth address.
    #[default]
    Client,
    /// A trusted proxy asking about a request (`forward_auth.headers`).
    Proxy(config::ForwardAuthHeaders),
}

/// `Location` made absolute for the site as the browser reached it: `secure` (TLS, or the trusted
/// proxy's `X-Forwarded-Proto`, as phase 2 found) and the trusted proxy's `X-Forwarded-Host`
/// (or `Host`).
fn absolute_location(
    response: &Response<Body>,
    headers: &http::HeaderMap,
    authority: Option<&str>,
    secure: bool,
) -> Option<HeaderValue> {
    let location = response
        .headers()
        .get(http::header::LOCATION)?
        .to_str()
        .ok()?;
    if !location.starts_with('/') {
        return None;
    }
    let host = portal::request_host(headers, authority, true)?;
    host.parse::<http::uri::Authority>().ok()?;
    let scheme = if secure { "https" } else { "http" };
    HeaderValue::from_str(&format!("{scheme}://{host}{location}")).ok()
}

impl Gateway {
    /// Turns `answer` into the response for `ex`, finishing its log record and metrics.
    pub(crate) fn respond(
        &self,
        mut ex: Exchange<'_>,
        answer: Answer,
    ) -> Result<Response<Body>, Abort> {
        let answer = match answer {
            Answer::Refuse(r) | Answer::RefuseAndClose(r) if r.aborts() => Answer::Abort(r.reason),
            other => other,
        };
        let (response, reason) = match answer {
            Answer::Abort(reason) => {
                self.metrics.request(0, Some(reason));
                if let Some(mut r) = ex.record.take() {
                    r.status = 0;
                    r.substatus = reason.substatus();
                    r.reason = Some(reason);
                    self.log.write(r);
                }
                return Err(Abort(reason));
            }
            Answer::Refuse(refusal) => {
                let response = self.refusal(&ex, &refusal);
                (response, Some(refusal.reason))
            }
            Answer::RefuseAndClose(refusal) => {
                let mut response = self.refusal(&ex, &refusal);
                response
                    .headers_mut()
                    .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
                (response, Some(refusal.reason))
            }
            Answer::Allow => (self.allowed(&ex), None),
            Answer::Upstream(response) => return Ok(self.upstream_response(ex, response)),
            Answer::UpstreamFailed(refusal) => {
                let mut response = self.refusal_page(&ex, &refusal, &[], None);
                if refusal.reason == Reason::BadRequest {
                    // The client's body was malformed: nothing after it on this connection can
                    // be read reliably.
                    response
                        .headers_mut()
                        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
                }
                (response, Some(refusal.reason))
            }
            Answer::Page(portal::Outcome {
                response,
                reason,
                user,
            }) => {
                if let Some(r) = ex.record.as_mut() {
                    r.username = user.or(r.username.take());
                }
                (response, reason)
            }
        };
        let mut response = response;
        if let Ok(v) = HeaderValue::from_str(&ex.request_id) {
            response.headers_mut().insert(request_id::X_REQUEST_ID, v);
        }
        secure_own_response(response.headers_mut());
        self.metrics.request(response.status().as_u16(), reason);
        if let (Some(r), Some(reason)) = (ex.record.as_mut(), reason) {
            r.substatus = reason.substatus();
            r.reason = Some(reason);
        }
        Ok(self.logged_holding(response, ex.record.take(), ex.guard.take()))
    }

    /// An answer made without a request record (the explanation pages, the 404 of a gateway
    /// without upstream): only the security headers.
    pub(crate) fn respond_plain(
        &self,
        mut response: Response<Body>,
    ) -> Result<Response<Body>, Abort> {
        secure_own_response(response.headers_mut());
        Ok(response)
    }

    /// A refusal of phases 1–7: the sign-in redirect for a browser on a form-login site, else
    /// the refusal page with the account part; for a front proxy, rendered the way it passes
    /// answers on.
    fn refusal(&self, ex: &Exchange<'_>, refusal: &Refusal) -> Response<Body> {
        let mut set_cookies = Vec::new();
        if ex.user.clear_session {
            let cookies = portal::Cookies {
                secure: ex.client.secure,
            };
            set_cookies.extend(cookies.clear_session(ex.request.headers));
        }
        let mut response = match self.portal_view().login_redirect(refusal, &ex.request) {
            // A browser on a form-login site goes to the sign-in page (and back afterwards).
            Some(location) => {
                let mut r = see_other(&location);
                *r.status_mut() = http::StatusCode::FOUND;
                r
            }
            None => {
                let account = self
                    .portal_view()
                    .account_for(refusal, ex, &mut set_cookies);
                self.refusal_page(ex, refusal, &[], account.as_ref())
            }
        };
        for c in set_cookies {
            response.headers_mut().append(http::header::SET_COOKIE, c);
        }
        match ex.front {
            Front::Client => response,
            Front::Proxy(headers) => self.for_front_proxy(ex, refusal, response, headers),
        }
    }

    /// A refusal as a front proxy passes it on.
    fn for_front_proxy(
        &self,
        ex: &Exchange<'_>,
        refusal: &Refusal,
        mut response: Response<Body>,
        headers: config::ForwardAuthHeaders,
    ) -> Response<Body> {
        // The sign-in redirect names the site as the browser reached it: Traefik resolves a
        // relative Location against the forward-auth address, not the site's.
        if response.status() == http::StatusCode::FOUND
            && let Some(absolute) = absolute_location(
                &response,
                ex.request.headers,
                ex.request.authority,
                ex.client.secure,
            )
        {
            response
                .headers_mut()
                .insert(http::header::LOCATION, absolute);
        }
        if headers != config::ForwardAuthHeaders::Nginx {
            return response;
        }
        // nginx's auth_request discards the body of the answer and, with a body to skip,
        // closes the connection to us: answer it with headers only.
        let (mut parts, body) = response.into_parts();
        parts.headers.remove(http::header::CONTENT_TYPE);
        drop(body);
        // The reason, for the recipe's error page (`/.portcullis/problems/<slug>`).
        parts.headers.insert(
            X_PORTCULLIS_PROBLEM,
            HeaderValue::from_static(refusal.reason.slug()),
        );
        // auth_request passes on only 401 and 403: the sign-in redirect becomes a 401 whose
        // Location the recipe's `error_page 401` turns into the redirect.
        if parts.status == http::StatusCode::FOUND {
            parts.status = http::StatusCode::UNAUTHORIZED;
            for c in self.challenges_now(false).iter() {
                parts.headers.append(WWW_AUTHENTICATE, c.clone());
            }
        } else if parts.status == http::StatusCode::UNAUTHORIZED {
            // auth_request passes on only the first WWW-Authenticate: a client that is not sent
            // to the sign-in page needs a challenge it can answer (Basic) first, not the form's
            // `Cookie` one (cadaver, curl --anyauth).
            let mut challenges: Vec<HeaderValue> = parts
                .headers
                .get_all(WWW_AUTHENTICATE)
                .iter()
                .cloned()
                .collect();
            challenges.sort_by_key(|c| c.as_bytes().starts_with(b"Cookie"));
            parts.headers.remove(WWW_AUTHENTICATE);
            for c in challenges {
                parts.headers.append(WWW_AUTHENTICATE, c);
            }
        }
        Response::from_parts(parts, body::full(bytes::Bytes::new()))
    }

    /// The challenges of a 401, one per scheme; Digest's are made now, one per algorithm with a
    /// fresh nonce each (`stale=true` after a right response to an expired nonce).
    pub(crate) fn challenges_now(&self, stale: bool) -> std::borrow::Cow<'_, [HeaderValue]> {
        let Some(site) = &self.digest else {
            return std::borrow::Cow::Borrowed(&self.challenges);
        };
        let mut out = Vec::with_capacity(self.challenges.len() + 1);
        for c in &self.challenges {
            if c.as_bytes().starts_with(b"Digest ") {
                out.extend(site.challenges(&self.policy.auth.realm, stale));
            } else {
                out.push(c.clone());
            }
        }
        std::borrow::Cow::Owned(out)
    }

    /// The refusal page (status, challenges, body by `Accept`, the detailed trace).
    fn refusal_page(
        &self,
        ex: &Exchange<'_>,
        refusal: &Refusal,
        extra_challenges: &[HeaderValue],
        account: Option<&Account>,
    ) -> Response<Body> {
        let mode = self.config.errors.mode;
        let detailed = match mode {
            ErrorMode::Custom => false,
            ErrorMode::Detailed => true,
            ErrorMode::DetailedLocalOnly => {
                ex.client.ip.is_loopback() && ex.client.peer.is_loopback()
            }
        };
        let trace = if detailed {
            self.trace(refusal, ex)
        } else {
            Vec::new()
        };
        let accept = ex.request.headers.get(ACCEPT);
        // A 401 page for a browser on a form-login site carries only the form's challenge: a
        // Basic one would open the browser's password prompt over the page.
        let all = self.challenges_now(refusal.reason == Reason::StaleNonce);
        let challenges = if account.is_some() && negotiate(accept) == Format::Html {
            self.portal_view().page_challenges()
        } else {
            &all
        };
        let ctx = RefusalContext {
            request_id: &ex.request_id,
            accept,
            challenges,
            extra_challenges,
            detailed,
            mode: match mode {
                ErrorMode::Custom => "custom",
                ErrorMode::Detailed => "detailed",
                ErrorMode::DetailedLocalOnly => "detailed_local_only",
            },
            client_ip: ex.client.ip,
            path: ex.request.path,
            realm: &self.policy.auth.realm,
            trace: &trace,
            account,
            basic: self.policy.auth.schemes.contains(&policy::Scheme::Basic),
            problems: &self.paths.problems,
        };
        let mut response = refusal_response(refusal, &ctx, &self.pages);
        self.bearer_error(ex, refusal, &mut response);
        response
    }

    /// RFC 6750 §3: a refused bearer token's challenge says why — `invalid_token` for an
    /// unknown, revoked or expired token (401), `insufficient_scope` for a token whose user a
    /// rule refuses (403, which then carries the challenge too).
    fn bearer_error(&self, ex: &Exchange<'_>, refusal: &Refusal, response: &mut Response<Body>) {
        let error = match refusal.reason {
            Reason::TokenInvalid | Reason::TokenExpired => "invalid_token",
            Reason::AclDenied if ex.user.from_token => "insufficient_scope",
            _ => return,
        };
        let description = match refusal.reason {
            Reason::TokenExpired => "The token has expired",
            Reason::TokenInvalid => "The token is not valid",
            _ => "The token's user may not open this address",
        };
        let Ok(value) = HeaderValue::from_str(&format!(
            "Bearer realm=\"{}\", error=\"{error}\", error_description=\"{description}\"",
            self.policy.auth.realm.replace(['"', '\\'], "")
        )) else {
            return;
        };
        let headers = response.headers_mut();
        let others: Vec<HeaderValue> = headers
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter(|c| !c.as_bytes().starts_with(b"Bearer"))
            .cloned()
            .collect();
        headers.remove(WWW_AUTHENTICATE);
        headers.append(WWW_AUTHENTICATE, value);
        if response.status() == http::StatusCode::UNAUTHORIZED {
            for c in others {
                response.headers_mut().append(WWW_AUTHENTICATE, c);
            }
        }
    }

    /// The phases before the refusing one (they passed: the trace says what happened, not what
    /// `explain` would assume), then the refusal itself.
    fn trace(&self, refusal: &Refusal, ex: &Exchange<'_>) -> Vec<TraceEntry> {
        let explained = policy::explain(
            &self.policy,
            &Facts {
                peer: ex.client.ip,
                forwarded: Vec::new(),
                x_forwarded_for: Vec::new(),
                host_name: ex.client.host_name.as_deref().map(str::to_owned),
                method: ex.request.method,
                path: ex.request.path,
                identity: ex.user.identity.clone(),
                live: true,
            },
        );
        let mut entries: Vec<TraceEntry> = explained
            .0
            .0
            .into_iter()
            .filter(|e| e.phase < refusal.reason.phase())
            .collect();
        entries.push(TraceEntry {
            phase: refusal.reason.phase(),
            verdict: format!(
                "REFUSED {}.{} {}: {}",
                refusal.status(),
                refusal.reason.substatus(),
                refusal.reason.slug(),
                refusal.detail
            ),
        });
        entries
    }

    /// Forward-auth's 200: the identity headers, always all four (empty for an anonymous answer
    /// on a public path: a proxy that copies them, Caddy's `copy_headers`, then sets them empty
    /// instead of passing the client's own), and what the proxy should pass on to the
    /// application instead of the client's own `Cookie` and `Authorization` (the recipes set
    /// them from these): the cookies without Portcullis's session and CSRF cookies, and the
    /// credentials only with `auth.forward_authorization`.
    fn allowed(&self, ex: &Exchange<'_>) -> Response<Body> {
        let identity = ex.identity();
        let request = ex.request.headers;
        let mut response = Response::new(body::full(bytes::Bytes::new()));
        let headers = response.headers_mut();
        let empty = HeaderValue::from_static("");
        let user = identity
            .user
            .as_deref()
            .and_then(|u| HeaderValue::from_str(u).ok())
            .unwrap_or_else(|| empty.clone());
        let groups = (identity.user.is_some() && !identity.groups.is_empty())
            .then(|| proxy::identity_value(&identity.groups.join(",")))
            .flatten()
            .unwrap_or_else(|| empty.clone());
        let signed_in = identity.user.is_some();
        let name = identity
            .name
            .as_deref()
            .filter(|_| signed_in)
            .and_then(proxy::identity_value)
            .unwrap_or_else(|| user.clone());
        let email = identity
            .email
            .as_deref()
            .filter(|_| signed_in)
            .and_then(proxy::identity_value)
            .unwrap_or_else(|| empty.clone());
        headers.insert(proxy::REMOTE_USER, user);
        headers.insert(proxy::REMOTE_NAME, name);
        headers.insert(proxy::REMOTE_GROUPS, groups);
        headers.insert(proxy::REMOTE_EMAIL, email);
        let mut cookies = http::HeaderMap::new();
        for v in request.get_all(http::header::COOKIE) {
            cookies.append(http::header::COOKIE, v.clone());
        }
        portal::strip_own_cookies(&mut cookies);
        let cookie = match cookies.get_all(http::header::COOKIE).iter().count() {
            0 => empty.clone(),
            1 => cookies[http::header::COOKIE].clone(),
            _ => HeaderValue::from_str(
                &cookies
                    .get_all(http::header::COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect::<Vec<_>>()
                    .join("; "),
            )
            .unwrap_or_else(|_| empty.clone()),
        };
        headers.insert(X_PORTCULLIS_COOKIE, cookie);
        let authorization = request
            .get(AUTHORIZATION)
            .filter(|_| self.config.auth.forward_authorization)
            .cloned()
            .unwrap_or(empty);
        headers.insert(X_PORTCULLIS_AUTHORIZATION, authorization);
        headers.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        );
        response
    }

    /// The upstream's response, passed on as it is, except: its 401 is logged as 401.5, and
    /// carries our challenge when it has none (every 401 has one, RFC 9110 §15.5.2), or is
    /// replaced by our page with `errors.upstream_401 = "replace"`.
    fn upstream_response(
        &self,
        mut ex: Exchange<'_>,
        response: Response<proxy::UpstreamBody>,
    ) -> Response<Body> {
        let (mut parts, body) = response.into_parts();
        let refused = parts.status == http::StatusCode::UNAUTHORIZED;
        if let Some(r) = ex.record.as_mut() {
            r.status = parts.status.as_u16();
            if refused {
                r.substatus = Reason::AppDenied.substatus();
                r.reason = Some(Reason::AppDenied);
            }
        }
        if refused {
            if self.config.errors.upstream_401 == Upstream401::Replace {
                let theirs: Vec<HeaderValue> = parts
                    .headers
                    .get_all(WWW_AUTHENTICATE)
                    .iter()
                    .cloned()
                    .collect();
                drop(body);
                let refusal =
                    Refusal::new(Reason::AppDenied).with_detail("the application answered 401");
                let mut response = self.refusal_page(&ex, &refusal, &theirs, None);
                secure_own_response(response.headers_mut());
                self.metrics
                    .request(response.status().as_u16(), Some(Reason::AppDenied));
                return self.logged_holding(response, ex.record.take(), ex.guard.take());
            }
            if !parts.headers.contains_key(WWW_AUTHENTICATE) {
                for c in self.challenges_now(false).iter() {
                    parts.headers.append(WWW_AUTHENTICATE, c.clone());
                }
            }
        }
        if let Ok(v) = HeaderValue::from_str(&ex.request_id) {
            parts.headers.entry(request_id::X_REQUEST_ID).or_insert(v);
        }
        self.metrics
            .request(parts.status.as_u16(), refused.then_some(Reason::AppDenied));
        let pending = ex
            .record
            .take()
            .map(|r| PendingLog::new(self.log.clone(), r));
        Response::from_parts(
            parts,
            LoggedBody::new(body, pending)
                .holding(ex.guard.take())
                .boxed(),
        )
    }

    /// The response whose body writes the access-log line, and releases the in-flight slot
    /// `guard`, when it has been sent (or dropped).
    fn logged_holding(
        &self,
        response: Response<Body>,
        record: Option<LogRecord>,
        guard: Option<InFlightGuard>,
    ) -> Response<Body> {
        if record.is_none() && guard.is_none() {
            return response;
        }
        let status = response.status().as_u16();
        let pending = record.map(|mut r| {
            r.status = status;
            PendingLog::new(self.log.clone(), r)
        });
        response.map(|b| LoggedBody::new(b, pending).holding(guard).boxed())
    }
}
