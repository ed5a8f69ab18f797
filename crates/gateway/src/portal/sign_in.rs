//! Signing in with the form: the sign-in page, the password step (through the same logon path
//! as Basic), the second-factor step and the new session.

use super::*;

impl Portal<'_> {
    /// `GET {prefix}/login`: the form; "signed in as X" when the session is live; a stale
    /// session cookie is cleared here too.
    pub(crate) async fn login_page(&self, visit: &Visit<'_>) -> Outcome {
        let rd = safe_return(
            &query_param(visit.query, "rd").unwrap_or_else(|| "/".to_owned()),
            self.paths,
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
            SessionCheck::Absent | SessionCheck::Unavailable(_) | SessionCheck::Directory(_) => {}
        }
        // Only the identity provider: straight there (back to rd afterwards).
        let oidc_url = format!("{}/oidc/login?rd={}", self.paths.prefix, super::encode(&rd));
        // …unless the person just signed out (or asked to switch account): the provider would
        // sign them straight back in. They get the page with the button.
        let chose = query_param(visit.query, "signed_out").is_some()
            || query_param(visit.query, "switch").is_some();
        if self.oidc.is_some() && !self.password_sign_in() && !chose {
            let mut r = see_other(&oidc_url);
            for c in clear {
                r.headers_mut().append(SET_COOKIE, c);
            }
            return Outcome {
                response: r,
                reason: None,
                user: None,
            };
        }
        let mut ctx = self.portal_context(visit, "login", "Sign in");
        ctx.notice = notice;
        ctx.rd = &rd;
        ctx.oidc_name = self.oidc.map(|o| o.name());
        ctx.oidc_url = &oidc_url;
        ctx.oidc_only = !self.password_sign_in();
        let mut r = self.form_response(visit, ctx);
        for c in clear {
            r.headers_mut().append(SET_COOKIE, c);
        }
        Outcome::plain(r)
    }

    /// Re-renders the sign-in form with an error (and a fresh CSRF token if needed).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn login_again(
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
    pub(crate) async fn login_post(&self, visit: &Visit<'_>, body: RequestBody) -> Outcome {
        let form = match read_form(body, self.config.server.header_timeout).await {
            Ok(f) => f,
            Err(e) => return self.form_problem(visit, e),
        };
        let rd = safe_return(form.get("rd").unwrap_or("/"), self.paths);
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
            .logon
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
    pub(crate) async fn code_step(
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
    pub(crate) async fn second_factor(
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
        // audited): a code is a guess like a password. Codes are checked and counted whatever
        // `[logon] enabled` says (a six-digit code must not be open to unlimited guessing).
        if let Err(refusal) = self
            .logon
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
        let checked = match self.verifier.check_second_factor(&user, code).await {
            Ok(right) => right,
            // Neither right nor wrong: nothing is counted, the code step is shown again.
            Err(e) => {
                let refusal = policy::Refusal::new(Reason::DirectoryUnavailable)
                    .with_retry_after(std::time::Duration::from_secs(5))
                    .with_detail(format!("the user database could not check the code: {e}"));
                return self.login_again(
                    visit,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Your code could not be checked: the account database is unavailable right now. Try again in a minute.",
                    &user,
                    rd,
                    Some(&refusal),
                    false,
                );
            }
        };
        if checked {
            if let Err(refusal) = self
                .logon
                .check_still_not_locked_out(visit.client_ip, &user, "form")
                .await
            {
                return self.login_again(
                    visit,
                    StatusCode::FORBIDDEN,
                    "Too many sign-in attempts failed, so signing in is blocked for a while, even with the right password.",
                    &user,
                    rd,
                    Some(&refusal),
                    false,
                );
            }
            self.logon
                .second_factor_accepted(visit.client_ip, &user)
                .await;
            return self.start_session(visit, user, rd).await;
        }
        self.logon
            .second_factor_refused(visit.client_ip, &user)
            .await;
        self.code_step(
            visit,
            &user,
            rd,
            Some("That code was not accepted. Enter the current code from your authenticator app (each code works once)."),
        )
        .await
    }

    /// Starts a session for `user` and sends the browser to `rd`.
    pub(crate) async fn start_session(&self, visit: &Visit<'_>, user: String, rd: &str) -> Outcome {
        let stamp = self.verifier.credential_stamp(&user).await.unwrap_or(0);
        self.start_session_as(visit, Session::new(&user, stamp), rd)
            .await
    }

    /// Starts `session` (a local user's, or an identity provider's user's) and sends the
    /// browser to `rd`.
    pub(crate) async fn start_session_as(
        &self,
        visit: &Visit<'_>,
        session: Session,
        rd: &str,
    ) -> Outcome {
        let user = session.user.clone();
        let username = user.clone();
        let rd = rd.to_owned();
        // A new id at every sign-in: a session id planted before cannot be promoted.
        let id = session::new_id();
        let key = session::key_of(&id);
        let stored = self
            .state
            .session_create(
                &key,
                &session,
                self.config.portal.idle_timeout,
                &store::state::SessionCap {
                    max_per_user: self.config.portal.max_sessions_per_user,
                    max_age: self.config.portal.max_age,
                },
            )
            .await;
        self.metrics.state_call(self.state, stored.is_ok());
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
}
