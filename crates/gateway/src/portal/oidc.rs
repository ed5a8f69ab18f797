//! The portal's side of OpenID Connect sign-in (`crate::oidc` does the protocol): the redirect to
//! the provider, and the callback that ends in a session or in a page that says what happened.

use super::*;
use crate::metrics::AuthOutcome;
use crate::oidc::{OidcFailure, cookie_name};

impl Portal<'_> {
    /// `GET {prefix}/oidc/login?rd=…`: to the provider, remembering this sign-in in a cookie.
    pub(crate) async fn oidc_login(&self, visit: &Visit<'_>) -> Outcome {
        let Some(site) = self.oidc else {
            return self.oidc_failed(visit, OidcFailure::Unreachable("oidc is off".into()));
        };
        let rd = safe_return(
            &query_param(visit.query, "rd").unwrap_or_else(|| "/".to_owned()),
            self.paths,
        );
        // The flow is bound to this browser's pre-session (made now if it has none).
        let (pre, new_pre) = match visit.cookies.pre_session(visit.headers) {
            Some(id) => (id.to_owned(), None),
            None => {
                let id = session::new_id();
                let c = set_cookie(visit.cookies.csrf_name(), &id, visit.cookies.secure, None);
                (id, Some(c))
            }
        };
        match site.start(&rd, &pre).await {
            Ok((url, flow)) => {
                let mut r = see_other(&url);
                let secure = visit.cookies.secure;
                r.headers_mut().append(
                    SET_COOKIE,
                    set_cookie(cookie_name(secure), &flow, secure, Some(600)),
                );
                if let Some(c) = new_pre {
                    r.headers_mut().append(SET_COOKIE, c);
                }
                Outcome {
                    response: r,
                    reason: None,
                    user: None,
                }
            }
            Err(f) => self.oidc_failed(visit, f),
        }
    }

    /// `GET {prefix}/oidc/callback?code&state` (or `?error&error_description`): the session, or
    /// a page that says why not. The flow cookie is cleared either way.
    pub(crate) async fn oidc_callback(&self, visit: &Visit<'_>) -> Outcome {
        let Some(site) = self.oidc else {
            return self.oidc_failed(visit, OidcFailure::Unreachable("oidc is off".into()));
        };
        let secure = visit.cookies.secure;
        let flow = cookie(visit.headers, cookie_name(secure));
        let pre = visit.cookies.pre_session(visit.headers);
        let finished = site.finish(visit.query.unwrap_or(""), flow, pre).await;
        let finished = match finished {
            // A name the local user store has is that user's: an identity provider's account
            // that calls itself so is not let in as them.
            Ok((user, _, _)) if self.local_user_exists(&user).await => Err(OidcFailure::Refused {
                detail: format!(
                    "the identity provider's {} for this account is {user}, the name of a local user of auth.users: refused",
                    site.user_claim()
                ),
                // (The refusal itself says the name is taken, to whoever can choose their name
                // at the provider; the page adds nothing to that.)
                note: Some(format!(
                    "The name {user} belongs to an account of this site; it cannot be taken over through {}.",
                    site.name()
                )),
                forbidden: true,
                user: Some(user),
            }),
            other => other,
        };
        let mut outcome = match finished {
            Ok((user, groups, rd)) => {
                let rd = safe_return(&rd, self.paths);
                let outcome = self
                    .start_session_as(visit, Session::external(&user, groups), &rd)
                    .await;
                // Counted and audited as a sign-in only once the session is stored.
                if outcome.reason.is_none() {
                    self.metrics.auth("oidc", AuthOutcome::Accepted);
                    self.audit
                        .sign_in(true, &user, visit.client_ip, "oidc", None);
                }
                outcome
            }
            Err(f) => self.oidc_failed(visit, f),
        };
        let headers = outcome.response.headers_mut();
        headers.append(
            SET_COOKIE,
            set_cookie(cookie_name(secure), "", secure, Some(0)),
        );
        // The callback's URL holds the code: not in a Referer.
        headers.insert(
            http::header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        outcome
    }

    /// Whether `user` is a user of the local user store (a directory that cannot be asked counts
    /// as yes: refused rather than risk a takeover).
    async fn local_user_exists(&self, user: &str) -> bool {
        if let Some(directory) = self.verifier.directory() {
            return !matches!(directory.lookup(user).await, Ok(None));
        }
        // A user database knows its disabled users too: their names are theirs as well.
        if let Some(location) = self.user_db() {
            let name = user.to_owned();
            return tokio::task::spawn_blocking(move || {
                location.open().and_then(|db| db.has_user(&name))
            })
            .await
            .map_or(true, |found| found.unwrap_or(true));
        }
        self.verifier.credential_stamp(user).await.is_some()
    }

    /// The page for a sign-in that did not end in a session: 503 when the provider could not be
    /// asked, 403 when it vouched for someone `allowed_groups` does not admit, else 401.1 (with
    /// the challenge every 401 carries). Never a redirect: no loop through the provider.
    fn oidc_failed(&self, visit: &Visit<'_>, failure: OidcFailure) -> Outcome {
        let (status, reason, detail, note, user) = match failure {
            OidcFailure::Unreachable(detail) => (
                StatusCode::SERVICE_UNAVAILABLE,
                Reason::DirectoryUnavailable,
                detail,
                Some(
                    "The identity provider could not be reached. Try again in a minute.".to_owned(),
                ),
                None,
            ),
            OidcFailure::Refused {
                detail,
                note,
                forbidden,
                user,
            } => (
                if forbidden {
                    StatusCode::FORBIDDEN
                } else {
                    StatusCode::UNAUTHORIZED
                },
                Reason::OidcFailed,
                detail,
                note,
                user,
            ),
        };
        self.metrics.auth(
            "oidc",
            if reason == Reason::OidcFailed {
                AuthOutcome::Refused
            } else {
                AuthOutcome::DirectoryUnavailable
            },
        );
        tracing::warn!(
            request_id = visit.request_id,
            client = %visit.client_ip,
            user = user.as_deref().unwrap_or("-"),
            "OpenID Connect sign-in refused: {detail}"
        );
        if reason == Reason::OidcFailed {
            self.audit.sign_in(
                false,
                user.as_deref().unwrap_or("-"),
                visit.client_ip,
                "oidc",
                Some("oidc_failed"),
            );
        }
        let generic = if reason == Reason::OidcFailed {
            "Signing in through the identity provider did not succeed, so you are not signed in here."
        } else {
            "Signing in is not possible right now."
        };
        let mut ctx = self.portal_context(visit, "message", "Sign-in did not succeed");
        let error = note.unwrap_or_else(|| generic.to_owned());
        ctx.error = Some(&error);
        let mut response = html(status, self.pages.render_portal(&ctx));
        if status == StatusCode::UNAUTHORIZED {
            for c in self.page_challenges() {
                response
                    .headers_mut()
                    .append(http::header::WWW_AUTHENTICATE, c.clone());
            }
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from_static("30"));
        }
        Outcome {
            response,
            reason: Some(reason),
            user,
        }
    }
}
