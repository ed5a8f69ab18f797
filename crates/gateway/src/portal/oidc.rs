//! The portal's side of OpenID Connect sign-in (`crate::oidc` does the protocol): the redirect to
//! the provider, and the callback that ends in a session or in a page that says what happened.

use super::*;
use crate::metrics::AuthOutcome;
use crate::oidc::{COOKIE, OidcFailure};

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
        match site.start(&rd).await {
            Ok((url, flow)) => {
                let mut r = see_other(&url);
                r.headers_mut().append(
                    SET_COOKIE,
                    set_cookie(COOKIE, &flow, visit.cookies.secure, Some(600)),
                );
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
        let flow = cookie(visit.headers, COOKIE);
        let finished = site.finish(visit.query.unwrap_or(""), flow).await;
        let mut outcome = match finished {
            Ok((user, groups, rd)) => {
                self.metrics.auth("oidc", AuthOutcome::Accepted);
                self.audit
                    .sign_in(true, &user, visit.client_ip, "oidc", None);
                let rd = safe_return(&rd, self.paths);
                self.start_session_as(visit, Session::external(&user, groups), &rd)
                    .await
            }
            Err(f) => self.oidc_failed(visit, f),
        };
        outcome.response.headers_mut().append(
            SET_COOKIE,
            set_cookie(COOKIE, "", visit.cookies.secure, Some(0)),
        );
        outcome
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
        self.metrics.auth("oidc", AuthOutcome::Refused);
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
