//! Phase 9 for the gateway: a refusal becomes its response (status, challenges, body by `Accept`,
//! the detailed trace), the log record and the metrics are finished, and the response is sent
//! holding what the request held (its in-flight slot).

use super::*;

/// `Location` made absolute for the site as the browser reached it: `secure` (TLS, or the trusted
/// proxy's `X-Forwarded-Proto`, as phase 2 found) and the trusted proxy's `X-Forwarded-Host`
/// (or `Host`).
pub(crate) fn absolute_location(
    response: &Response<Body>,
    headers: &http::HeaderMap,
    uri: &http::Uri,
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
    let host = portal::request_host(headers, uri, true)?;
    host.parse::<http::uri::Authority>().ok()?;
    let scheme = if secure { "https" } else { "http" };
    HeaderValue::from_str(&format!("{scheme}://{host}{location}")).ok()
}

/// The parts of the request a refusal response needs.
pub(crate) struct RequestFacts<'a> {
    pub(crate) method: &'a str,
    pub(crate) path: &'a str,
    pub(crate) accept: Option<&'a HeaderValue>,
}

impl Gateway {
    pub(crate) fn refuse(
        &self,
        refusal: &Refusal,
        view: &RequestView<'_>,
        seen: &Seen,
        request_id: &str,
        mut record: Option<LogRecord>,
        extra_challenges: &[HeaderValue],
    ) -> Result<Response<Body>, Abort> {
        if let Some(r) = record.as_mut() {
            r.status = refusal.status();
            r.substatus = refusal.reason.substatus();
            r.reason = Some(refusal.reason);
        }
        if refusal.status() == 0 {
            self.metrics.request(0, Some(refusal.reason));
            if let Some(r) = record {
                self.log.write(r);
            }
            return Err(Abort(refusal.reason));
        }
        let mut set_cookies = Vec::new();
        if seen.clear_session {
            let cookies = portal::Cookies {
                secure: seen.secure,
            };
            set_cookies.extend(cookies.clear_session(view.headers));
        }
        let mut response = match self.login_redirect(refusal, view) {
            // A browser on a form-login site goes to the sign-in page (and back afterwards).
            Some(location) => {
                let mut r = portal::see_other(&location);
                *r.status_mut() = http::StatusCode::FOUND;
                if let Ok(v) = HeaderValue::from_str(request_id) {
                    r.headers_mut().insert(request_id::X_REQUEST_ID, v);
                }
                r
            }
            None => {
                let facts = RequestFacts {
                    method: view.method,
                    path: view.path,
                    accept: view.headers.get(ACCEPT),
                };
                let account = self.account_for(refusal, view, seen, &mut set_cookies);
                self.refusal_response(
                    refusal,
                    &facts,
                    seen,
                    request_id,
                    extra_challenges,
                    account.as_ref(),
                )
            }
        };
        for c in set_cookies {
            response.headers_mut().append(http::header::SET_COOKIE, c);
        }
        self.metrics
            .request(response.status().as_u16(), Some(refusal.reason));
        Ok(self.logged(response, record))
    }

    pub(crate) fn refusal_response(
        &self,
        refusal: &Refusal,
        facts: &RequestFacts<'_>,
        seen: &Seen,
        request_id: &str,
        extra_challenges: &[HeaderValue],
        account: Option<&respond::Account>,
    ) -> Response<Body> {
        let mode = self.config.errors.mode;
        let detailed = match mode {
            ErrorMode::Custom => false,
            ErrorMode::Detailed => true,
            ErrorMode::DetailedLocalOnly => seen.client_ip.is_loopback() && seen.peer.is_loopback(),
        };
        let trace = if detailed {
            self.trace(refusal, facts, seen)
        } else {
            Vec::new()
        };
        // A 401 page for a browser on a form-login site carries only the form's challenge: a
        // Basic one would open the browser's password prompt over the page.
        let challenges =
            if account.is_some() && respond::negotiate(facts.accept) == respond::Format::Html {
                self.page_challenges()
            } else {
                &self.challenges
            };
        let ctx = RefusalContext {
            request_id,
            accept: facts.accept,
            challenges,
            extra_challenges,
            detailed,
            mode: match mode {
                ErrorMode::Custom => "custom",
                ErrorMode::Detailed => "detailed",
                ErrorMode::DetailedLocalOnly => "detailed_local_only",
            },
            client_ip: seen.client_ip,
            path: facts.path,
            realm: &self.policy.auth.realm,
            trace: &trace,
            account,
            basic: self.policy.auth.schemes.contains(&policy::Scheme::Basic),
            problems: &self.paths.problems,
        };
        respond::refusal_response(refusal, &ctx, &self.pages)
    }

    /// The phases before the refusing one (they passed: the trace says what happened, not what
    /// `explain` would assume), then the refusal itself.
    pub(crate) fn trace(
        &self,
        refusal: &Refusal,
        facts: &RequestFacts<'_>,
        seen: &Seen,
    ) -> Vec<TraceEntry> {
        let explained = policy::explain(
            &self.policy,
            &Facts {
                peer: seen.client_ip,
                forwarded: Vec::new(),
                x_forwarded_for: Vec::new(),
                host_name: seen.host_name.as_deref().map(str::to_owned),
                method: facts.method,
                path: facts.path,
                identity: seen.identity.clone(),
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

    pub(crate) fn logged(
        &self,
        response: Response<Body>,
        record: Option<LogRecord>,
    ) -> Response<Body> {
        self.logged_holding(response, record, None)
    }

    /// The response whose body writes the access-log line, and releases the in-flight slot
    /// `guard`, when it has been sent (or dropped).
    pub(crate) fn logged_holding(
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
