//! Account pages of the portal for sites whose users live in SQLite: choosing a password from
//! an invitation or reset link (`{prefix}/password?token=…`) and asking for a reset link by
//! email (`{prefix}/forgot`).
//!
//! A link works once: spending the token and storing the new hash is one SQLite transaction,
//! so two tabs submitting the same link cannot both succeed and a full disk changes nothing.
//! "Forgot password" answers the same words whether or not an account has the address, and
//! sends the mail in the background so the answer takes the same time either way. Links are
//! built from `portal.public_url`, never from the request's `Host` (which a client chooses).

use std::sync::Arc;

use crate::body::RequestBody;
use http::StatusCode;
use policy::Reason;
use store::sqlite::{TokenKind, UserDb};

use crate::portal::Portal;
use crate::portal::{Outcome, Visit, query_param, read_form, same_origin};
use crate::respond::{html, see_other};

/// Shortest time between two reset mails for one account.
const RESET_MAIL_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// A password form to show again, with what went wrong.
struct PasswordForm<'a> {
    token: &'a str,
    user: &'a str,
    error: Option<&'a str>,
}

/// Runs a user-database operation on the blocking pool.
/// At most this many account-page operations talk to the user database at once: a database that
/// hangs holds that many blocking threads, not one per request.
const DB_OPERATIONS: usize = 8;

async fn with_db<T: Send + 'static>(
    location: store::sqlite::Location,
    f: impl FnOnce(&mut UserDb) -> Result<T, store::sqlite::DbError> + Send + 'static,
) -> Result<T, String> {
    static SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(DB_OPERATIONS);
    let limit = store::sqlite::PG_TIMEOUT;
    let permit = tokio::time::timeout(limit, SLOTS.acquire())
        .await
        .map_err(|_| "the user database is busy (every connection waits for it)".to_owned())?
        .map_err(|e| e.to_string())?;
    let task = tokio::task::spawn_blocking(move || {
        // Held while the operation runs, even past the caller's deadline.
        let _permit = permit;
        let mut db = location.open_migrated().map_err(|e| e.to_string())?;
        f(&mut db).map_err(|e| e.to_string())
    });
    match tokio::time::timeout(limit * 2, task).await {
        Ok(done) => done.map_err(|e| e.to_string())?,
        Err(_) => Err(format!(
            "the user database did not answer within {:?}",
            limit * 2
        )),
    }
}

impl Portal<'_> {
    /// A message page (expired link, store failure…).
    fn account_message(
        &self,
        visit: &Visit<'_>,
        status: StatusCode,
        title: &str,
        error: Option<&str>,
        notice: Option<&str>,
    ) -> Outcome {
        let mut ctx = self.portal_context(visit, "message", title);
        ctx.error = error;
        ctx.notice = notice;
        Outcome {
            response: html(status, self.pages.render_portal(&ctx)),
            // What the log and the metrics call it: a user database that cannot be read or
            // written is 503 state_unavailable; a spent link (410) or a page this site does not
            // offer (404) is an answer, not a refusal; anything else sent wrong is bad_request.
            reason: match status.as_u16() {
                503 => Some(Reason::StateUnavailable),
                404 | 410 | 200..=399 => None,
                _ => Some(Reason::BadRequest),
            },
            user: None,
        }
    }

    fn dead_link(&self, visit: &Visit<'_>) -> Outcome {
        let error = if self.can_reset() {
            "This link has expired or was already used. Links work once, for a limited time. Ask for a new one with \"Forgot your password?\" on the sign-in page, or ask the administrator."
        } else {
            "This link has expired or was already used. Links work once, for a limited time. Ask the administrator for a new one."
        };
        self.account_message(
            visit,
            StatusCode::GONE,
            "This link no longer works",
            Some(error),
            None,
        )
    }

    fn password_form(&self, visit: &Visit<'_>, form: PasswordForm<'_>) -> Outcome {
        let mut ctx = self.portal_context(visit, "password", "Choose your password");
        ctx.action = &self.paths.password;
        ctx.token = form.token;
        ctx.user = form.user;
        ctx.error = form.error;
        Outcome {
            // (`portal()` adds `Referrer-Policy: no-referrer` to every answer at a link.)
            response: self.form_response(visit, ctx),
            reason: form.error.map(|_| Reason::BadRequest),
            user: Some(form.user.to_owned()),
        }
    }

    /// `GET {prefix}/password?token=…`.
    pub(crate) async fn password_page(&self, visit: &Visit<'_>) -> Outcome {
        let Some(db) = self.user_db() else {
            return self.dead_link(visit);
        };
        let token = query_param(visit.query, "token").unwrap_or_default();
        let lookup = token.clone();
        match with_db(db, move |db| db.token_user(&lookup)).await {
            Ok(Some((user, _))) => self.password_form(
                visit,
                PasswordForm {
                    token: &token,
                    user: &user,
                    error: None,
                },
            ),
            Ok(None) => self.dead_link(visit),
            Err(e) => {
                tracing::error!(error = %e, "user database unavailable");
                self.account_message(
                    visit,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Please try again later",
                    Some("The user database cannot be read right now. Your link still works; try again in a few minutes."),
                    None,
                )
            }
        }
    }

    /// `POST {prefix}/password`: checks the form, the link and the password, then stores it.
    pub(crate) async fn password_post(&self, visit: &Visit<'_>, body: RequestBody) -> Outcome {
        let form = match read_form(body, self.config.server.header_timeout).await {
            Ok(f) => f,
            Err(e) => return self.form_problem(visit, e),
        };
        let Some(db) = self.user_db() else {
            return self.dead_link(visit);
        };
        let token = form.get("token").unwrap_or("").to_owned();
        let lookup = token.clone();
        let user = match with_db(db.clone(), move |db| db.token_user(&lookup)).await {
            Ok(Some((user, _))) => user,
            Ok(None) => return self.dead_link(visit),
            Err(e) => {
                tracing::error!(error = %e, "user database unavailable");
                return self.account_message(
                    visit,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Please try again later",
                    Some("The user database cannot be read right now. Nothing was changed, and your link still works."),
                    None,
                );
            }
        };
        let again = |error: &str| {
            self.password_form(
                visit,
                PasswordForm {
                    token: &token,
                    user: &user,
                    error: Some(error),
                },
            )
        };
        if !same_origin(visit.headers, visit.host.as_deref(), visit.cookies.secure)
            || !self
                .csrf()
                .check(&visit.cookies, visit.headers, form.get("csrf"))
        {
            return again(
                "The form had expired or came from another site, so nothing was changed. Enter the password again.",
            );
        }
        let password = form.get("password").unwrap_or("");
        if password != form.get("confirm").unwrap_or("") {
            return again("The two passwords are not the same. Enter them again.");
        }
        if let Some(why) = store::passwords::weakness(password, &user) {
            return again(&why);
        }
        let password = password.to_owned();
        // While Digest is on with this database, the password's HA1 values are stored too.
        let digest_realm = self
            .config
            .auth
            .digest_realm_in_database()
            .map(str::to_owned);
        let redeemed = with_db(db, move |db| {
            let hash = store::hash_argon2id(password.as_bytes());
            let user = db.redeem_token(&token, &hash)?;
            if let (Some(user), Some(realm)) = (&user, &digest_realm) {
                let [md5, sha256] = [
                    policy::DigestAlgorithm::Md5,
                    policy::DigestAlgorithm::Sha256,
                ]
                .map(|a| {
                    let line = store::htdigest::ha1_line(a, user, realm, &password);
                    line.rsplit(':').next().unwrap_or_default().to_owned()
                });
                db.set_digest(user, Some((realm, &md5, &sha256)))?;
            }
            Ok(user)
        })
        .await;
        match redeemed {
            Ok(Some(user)) => {
                // The verifier would notice within a second; the person may be faster.
                let verifier = self.verifier.clone();
                let _ = tokio::task::spawn_blocking(move || verifier.reload_now()).await;
                self.audit.record(
                    "password_set",
                    serde_json::json!({"user": user, "client": visit.client_ip.to_string()}),
                );
                if !self.form_enabled() {
                    // No sign-in page on a Basic-only site: say so here.
                    let mut done = self.account_message(
                        visit,
                        StatusCode::OK,
                        "Your password is set",
                        None,
                        Some("Sign in with it now: open the site and enter your user name and the new password when your browser asks."),
                    );
                    done.user = Some(user);
                    return done;
                }
                Outcome {
                    response: see_other(&self.paths.login_url("/", Some("password_set=1"))),
                    reason: None,
                    user: Some(user),
                }
            }
            Ok(None) => self.dead_link(visit),
            Err(e) => {
                tracing::error!(error = %e, "could not store a new password");
                self.account_message(
                    visit,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The password could not be saved",
                    Some("The user database could not save it (the disk may be full). Nothing was changed, and your link still works: try again later."),
                    None,
                )
            }
        }
    }

    /// `GET {prefix}/forgot`.
    pub(crate) fn forgot_page(&self, visit: &Visit<'_>, error: Option<&str>) -> Outcome {
        if !self.can_reset() {
            return self.account_message(
                visit,
                StatusCode::NOT_FOUND,
                "Password reset by email is not available",
                Some("This site cannot send reset links by email. Ask the administrator to reset your password."),
                None,
            );
        }
        let mut ctx = self.portal_context(visit, "forgot", "Forgot your password?");
        ctx.action = &self.paths.forgot;
        ctx.error = error;
        Outcome {
            response: self.form_response(visit, ctx),
            reason: error.map(|_| Reason::BadRequest),
            user: None,
        }
    }

    /// `POST {prefix}/forgot`: the same answer for every address; a link is mailed when the
    /// address belongs to an enabled account.
    pub(crate) async fn forgot_post(&self, visit: &Visit<'_>, body: RequestBody) -> Outcome {
        let form = match read_form(body, self.config.server.header_timeout).await {
            Ok(f) => f,
            Err(e) => return self.form_problem(visit, e),
        };
        if !self.can_reset() {
            return self.forgot_page(visit, None);
        }
        if !same_origin(visit.headers, visit.host.as_deref(), visit.cookies.secure)
            || !self
                .csrf()
                .check(&visit.cookies, visit.headers, form.get("csrf"))
        {
            return self.forgot_page(
                visit,
                Some("The form had expired or came from another site. Enter your address again."),
            );
        }
        let email = form.get("email").unwrap_or("").trim().to_owned();
        if email.is_empty() || email.len() > 254 || !email.contains('@') {
            return self.forgot_page(visit, Some("Enter the email address of your account."));
        }
        if let (Some(db), Some(mailer), Some(base)) = (
            self.user_db(),
            self.mailer.clone(),
            self.config.portal.public_url.clone(),
        ) {
            let ttl = self.config.portal.reset_ttl;
            let realm = self.auth.realm.clone();
            let password_path = self.paths.password.clone();
            let audit = self.audit.clone();
            let pages = self.pages.clone();
            let metrics = self.metrics.clone();
            let client = visit.client_ip.to_string();
            // In the background: the answer must not take longer when the account exists.
            tokio::spawn(async move {
                let address = email.clone();
                let issued = with_db(db, move |db| {
                    let Some(user) = db.user_by_email(&address)? else {
                        return Ok(None);
                    };
                    // One mail a minute per account at most: the form cannot flood a mailbox.
                    let Some(token) =
                        db.issue_token(&user, TokenKind::Reset, ttl, Some(RESET_MAIL_INTERVAL))?
                    else {
                        return Ok(Some((user, None, address)));
                    };
                    // To the address on record, not as typed.
                    let to = db.email_of(&user)?.unwrap_or(address);
                    Ok(Some((user, Some(token), to)))
                })
                .await;
                match issued {
                    Ok(Some((user, None, _))) => audit.record(
                        "reset_requested",
                        serde_json::json!({"user": user, "client": client, "mailed": false, "why": "a link was mailed less than a minute ago"}),
                    ),
                    Ok(Some((user, Some(token), to))) => {
                        let link = format!("{base}{password_path}?token={token}");
                        let sent = match crate::mail::link_letter(
                            &pages, &to, &user, &realm, &link, false, ttl,
                        ) {
                            Ok(letter) => mailer.send(letter).await,
                            Err(e) => Err(format!("mail template: {e}")),
                        };
                        metrics.mail(sent.is_ok());
                        match sent {
                            Ok(()) => audit.record(
                                "reset_requested",
                                serde_json::json!({"user": user, "client": client, "mailed": true}),
                            ),
                            Err(e) => {
                                tracing::error!(error = %e, user, "could not mail a reset link");
                                audit.record(
                                    "reset_requested",
                                    serde_json::json!({"user": user, "client": client, "mailed": false, "why": e}),
                                );
                            }
                        }
                    }
                    Ok(None) => audit.record(
                        "reset_requested",
                        serde_json::json!({"user": null, "client": client, "mailed": false}),
                    ),
                    Err(e) => tracing::error!(error = %e, "reset link not issued"),
                }
            });
        }
        let valid = crate::pages::plain_duration(self.config.portal.reset_ttl);
        let notice = format!(
            "If an account has that address, a link to choose a new password is on its way. It works once, for {valid}. Check your spam folder if it does not arrive within a few minutes."
        );
        self.account_message(
            visit,
            StatusCode::OK,
            "Check your email",
            None,
            Some(&notice),
        )
    }
}

/// Builds the mailer for `[mail]`, if configured.
pub fn mailer_for(config: &config::Config) -> Result<Option<Arc<crate::mail::Mailer>>, String> {
    config
        .mail
        .as_ref()
        .map(|m| crate::mail::Mailer::new(m).map(Arc::new))
        .transpose()
}
