//! Signing out: the page (a confirmation when asked without a valid CSRF token) and the POST
//! that ends the session and clears its cookie.

use super::*;

impl Portal<'_> {
    /// `GET {prefix}/logout` (or a POST whose token failed): a page with a sign-out button.
    pub(crate) async fn logout_page(&self, visit: &Visit<'_>, error: Option<&str>) -> Outcome {
        let rd = safe_return(
            &query_param(visit.query, "rd").unwrap_or_else(|| "/".to_owned()),
            self.paths,
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
    pub(crate) async fn logout_post(&self, visit: &Visit<'_>, body: RequestBody) -> Outcome {
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
        let rd = safe_return(form.get("rd").unwrap_or("/"), self.paths);
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
}
