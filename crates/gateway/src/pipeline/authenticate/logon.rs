//! Sign-in by password (Basic, the form) and its guards: the lockout check (honouring
//! `state.on_backend_error`), the hash queue, failure counting, metrics and the audit log. The
//! second-factor step (portal.rs) uses the same checks.

use super::*;

/// The logon service: what checking a password needs, and nothing else. Basic, the sign-in
/// form and the second-factor step all go through it, so the lockout check (honouring
/// `state.on_backend_error`), metrics, audit and failure counting cannot drift apart.
pub(crate) struct Logon<'g> {
    config: &'g Config,
    auth: &'g policy::AuthPolicy,
    verifier: &'g Verifier,
    groups: &'g Groups,
    state: &'g StateStore,
    regulation: &'g Regulation,
    metrics: &'g Metrics,
    audit: &'g AuditLog,
    suspects: &'g moka::sync::Cache<IpAddr, ()>,
    known_users: &'g moka::sync::Cache<(IpAddr, String), Instant>,
}

impl Gateway {
    /// The logon service over this gateway's stores.
    pub(crate) fn logon(&self) -> Logon<'_> {
        Logon {
            config: &self.config,
            auth: &self.policy.auth,
            verifier: &self.verifier,
            groups: &self.groups,
            state: &self.state,
            regulation: &self.regulation,
            metrics: &self.metrics,
            audit: &self.audit,
            suspects: &self.suspects,
            known_users: &self.known_users,
        }
    }
}

impl Logon<'_> {
    /// The key a client is counted under (see [`crate::client_key`]).
    pub(crate) fn client_key(&self, ip: IpAddr) -> IpAddr {
        client_key(ip, self.config.dynamic.ipv6_prefix)
    }

    /// The user's groups: from the user database with `sqlite:` users, else from `auth.groups`.
    pub(crate) fn groups_of(&self, user: &str) -> Vec<String> {
        self.verifier
            .groups_of(user)
            .unwrap_or_else(|| self.groups.groups_of(user))
    }

    /// Fills in what the user store knows of `user`: groups, and from a directory also e-mail
    /// and display name (from the entry the password check just fetched, else asked again).
    /// A directory that does not answer is `503 directory_unavailable`; a user no longer in
    /// it is refused (401.1).
    pub(crate) async fn describe(
        &self,
        identity: &mut Identity,
        user: &str,
    ) -> Result<(), Refusal> {
        let Some(directory) = self.verifier.directory() else {
            identity.groups = self.groups_of(user);
            return Ok(());
        };
        match directory.lookup(user).await {
            Ok(Some(entry)) => {
                take_entry(identity, &entry);
                Ok(())
            }
            // Gone since the password was checked (an accepted check stays cached for
            // cache_ttl; the entry may have been dropped sooner): not signed in.
            Ok(None) => Err(Refusal::new(Reason::LogonFailed)
                .with_detail(format!("{user} is no longer in the directory"))),
            // Counted with the refusals (reason directory_unavailable); the sign-in itself was
            // already counted by its outcome.
            Err(e) => Err(directory_refusal(&e)),
        }
    }

    /// Phase 5 for a user name and password (Basic, or the sign-in form: `method`): lockout,
    /// password check, failure counting.
    pub(crate) async fn authenticate_password(
        &self,
        client_ip: IpAddr,
        user: &str,
        password: String,
        method: &'static str,
    ) -> Result<Identity, Refusal> {
        // A form sign-in is always a fresh check: it starts a session, so it is audited.
        let always_fresh = method == "form";
        if !self.config.logon.enabled {
            let (accepted, fresh) = self.verify(user, &password, client_ip, method).await?;
            drop(password);
            let mut identity = self.auth.after_verification(user, accepted)?;
            if !(method == "form" && self.verifier.has_second_factor(user).await) {
                self.signed_in(user, client_ip, fresh || always_fresh, method);
            }
            self.describe(&mut identity, user).await?;
            return Ok(identity);
        }
        // Locked out: refused before the password is even looked at.
        self.check_not_locked_out(client_ip, user, method).await?;
        let (accepted, fresh) = self.verify(user, &password, client_ip, method).await?;
        let fresh = fresh || always_fresh;
        drop(password);
        // Guesses sent in parallel all pass the ban check above before any of them fails; if
        // they started a ban while this password was being checked, a right guess among them
        // must not get in.
        if accepted && fresh {
            self.check_still_not_locked_out(client_ip, user, method)
                .await?;
        }
        // A right password of a user with a second factor is not a sign-in yet: it is counted
        // and audited when the code is (portal::second_factor).
        let factor_pending =
            accepted && method == "form" && self.verifier.has_second_factor(user).await;
        // A cached acceptance repeats one already recorded: no state round trip for it.
        let recorded = if (accepted && !fresh) || factor_pending {
            Ok(Vec::new())
        } else if accepted {
            self.state
                .record_success(self.client_key(client_ip), user)
                .await
                .map(|()| Vec::new())
        } else {
            self.state
                .record_failure(self.client_key(client_ip), user, self.regulation)
                .await
        };
        self.note_bans(recorded);
        let mut identity = self.auth.after_verification(user, accepted)?;
        if !factor_pending {
            self.signed_in(user, client_ip, fresh, method);
        }
        self.describe(&mut identity, user).await?;
        Ok(identity)
    }

    /// Refuses a sign-in to a locked-out address or user (or when the ban check cannot be made
    /// and `state.on_backend_error = "closed"`), counting and auditing it.
    /// After a right password or code: guesses sent in parallel all pass the first ban check
    /// before any of them fails, so if they started a ban meanwhile a right one among them does
    /// not get in. (A failed lookup lets it in: the first check already applied the fail mode.)
    pub(crate) async fn check_still_not_locked_out(
        &self,
        client_ip: IpAddr,
        user: &str,
        method: &'static str,
    ) -> Result<(), Refusal> {
        match self.ban_for(client_ip, user).await {
            Ok(Some(ban)) => Err(self.locked_out(&ban, user, client_ip, method)),
            _ => Ok(()),
        }
    }

    /// A locked-out sign-in: counted, audited, and its refusal (403.505 with `Retry-After`).
    fn locked_out(
        &self,
        ban: &store::state::Ban,
        user: &str,
        client_ip: IpAddr,
        method: &'static str,
    ) -> Refusal {
        self.metrics.auth(method, AuthOutcome::LockedOut);
        self.audit
            .sign_in(false, user, client_ip, method, Some("locked_out"));
        Refusal::new(Reason::LockedOut)
            .with_retry_after(ban.remaining)
            .with_detail(format!("{} is locked out: {}", ban.subject, ban.reason))
    }

    /// The hash queue's lane for a check by this client: first those who signed in as this user
    /// from here lately, then clients without recent failures, then the rest.
    fn lane_for(&self, client_ip: IpAddr, user: &str) -> store::hash_queue::Lane {
        let client = self.client_key(client_ip);
        if self.known_users.contains_key(&(client, user.to_owned())) {
            store::hash_queue::Lane::Known
        } else if self.suspects.contains_key(&client) {
            store::hash_queue::Lane::Suspect
        } else {
            store::hash_queue::Lane::Preferred
        }
    }

    /// A password check no hashing worker could take in time: counted, 503 with `Retry-After`.
    fn verifier_busy(&self, busy: &store::hash_queue::Busy, method: &'static str) -> Refusal {
        self.metrics.auth(method, AuthOutcome::Busy);
        Refusal::new(Reason::VerifierBusy)
            .with_retry_after(busy.retry_after.max(Duration::from_secs(1)))
            .with_detail(format!(
                "every password-checking worker stayed busy for longer than auth.verify_queue_timeout ({:?})",
                self.config.auth.verify_queue_timeout
            ))
    }

    /// A password check the directory did not answer: counted, 503 with `Retry-After` (never
    /// a 401.1: nobody is told a right password is wrong).
    pub(crate) fn directory_unavailable(
        &self,
        e: &store::ldap::DirectoryError,
        method: &'static str,
    ) -> Refusal {
        self.metrics.auth(method, AuthOutcome::DirectoryUnavailable);
        directory_refusal(e)
    }

    pub(crate) async fn check_not_locked_out(
        &self,
        client_ip: IpAddr,
        user: &str,
        method: &'static str,
    ) -> Result<(), Refusal> {
        let ban = self.ban_for(client_ip, user).await;
        self.metrics.state_call(self.state, ban.is_ok());
        match ban {
            Ok(None) => Ok(()),
            Ok(Some(ban)) => Err(self.locked_out(&ban, user, client_ip, method)),
            Err(e) if self.config.state.on_backend_error == FailMode::Closed => {
                self.metrics.auth(method, AuthOutcome::StateUnavailable);
                Err(Refusal::new(Reason::StateUnavailable).with_detail(e.to_string()))
            }
            Err(e) => {
                tracing::error!(error = %e, "ban check skipped (on_backend_error = \"open\")");
                Ok(())
            }
        }
    }

    /// Logs and audits the bans a recorded failure started (or the failure to record it).
    pub(crate) fn note_bans(
        &self,
        recorded: Result<Vec<store::state::Ban>, store::state::Unavailable>,
    ) {
        self.metrics.state_call(self.state, recorded.is_ok());
        match recorded {
            Ok(bans) => {
                for ban in bans {
                    let until = humantime::format_rfc3339_seconds(ban.until).to_string();
                    tracing::warn!(subject = %ban.subject, reason = ban.reason, until, "locked out");
                    self.audit.record(
                        "locked_out",
                        serde_json::json!({"subject": ban.subject.to_string(), "reason": ban.reason, "until": until}),
                    );
                }
            }
            Err(e) => tracing::error!(error = %e, "could not record the logon outcome"),
        }
    }

    /// Basic for a user with a second factor: Basic cannot carry the code, so it is refused
    /// (401.1) whatever the password, in the time any check takes: the lockout is checked first
    /// and the password hashed (never answered from the outcome cache, whose speed would mark
    /// the right password). A wrong password is refused and counted as any wrong password is; a
    /// right one is told the truth — the account needs its second factor, so sign in with the
    /// sign-in page (`second_factor_required`) — as the sign-in form tells it by asking for the
    /// code. Both are audited as `sign_in_failed`.
    pub(crate) async fn refuse_second_factor_basic(
        &self,
        client_ip: IpAddr,
        user: &str,
        password: String,
    ) -> Refusal {
        let logon = self.config.logon.enabled;
        if logon && let Err(refusal) = self.check_not_locked_out(client_ip, user, "basic").await {
            return refusal;
        }
        let (verification, answer, right) = self
            .verifier
            .check_refused_anyway(
                user,
                &password,
                self.lane_for(client_ip, user),
                self.config.auth.verify_queue_timeout,
            )
            .await;
        drop(password);
        self.metrics.verification(answer);
        match verification {
            Verification::Busy(busy) => return self.verifier_busy(&busy, "basic"),
            Verification::Unavailable(e) => return self.directory_unavailable(&e, "basic"),
            Verification::Accepted | Verification::Refused => {}
        }
        self.metrics.auth("basic", AuthOutcome::Refused);
        if right {
            self.audit.sign_in(
                false,
                user,
                client_ip,
                "basic",
                Some("second_factor_required"),
            );
            return Refusal::new(Reason::SecondFactorRequired).with_detail(format!(
                "the password of {user} is right, but {user} has a second factor (TOTP), which Basic cannot carry: sign in with the sign-in page"
            ));
        }
        self.suspects.insert(self.client_key(client_ip), ());
        self.audit
            .sign_in(false, user, client_ip, "basic", Some("logon_failed"));
        if logon {
            let recorded = self
                .state
                .record_failure(self.client_key(client_ip), user, self.regulation)
                .await;
            self.note_bans(recorded);
        }
        // Worded as every wrong password is: nothing here says the account has a second factor.
        self.auth
            .after_verification(user, false)
            .err()
            .unwrap_or_else(|| {
                Refusal::new(Reason::LogonFailed)
                    .with_detail("the user name or password was not accepted")
            })
    }

    /// Checks a password, counting the sign-in outcome and how the answer was found.
    /// Returns whether the password was accepted and whether that took a fresh hash check (a
    /// sign-in, for the audit log) rather than the verification cache.
    ///
    /// Passwords over [`store::MAX_PASSWORD_BYTES`] are refused without a hash check (their cost
    /// grows with their length). A check waits for a hashing worker at most
    /// `auth.verify_queue_timeout`, behind every client without a recent failure when this
    /// one has failed lately; past that it is `503 verifier_busy`.
    pub(crate) async fn verify(
        &self,
        user: &str,
        password: &str,
        client_ip: IpAddr,
        method: &'static str,
    ) -> Result<(bool, bool), Refusal> {
        let client = self.client_key(client_ip);
        let (verification, answer) = if password.len() > store::MAX_PASSWORD_BYTES {
            (Verification::Refused, store::Answer::Cached)
        } else {
            let lane = self.lane_for(client_ip, user);
            self.verifier
                .verify_queued(user, password, lane, self.config.auth.verify_queue_timeout)
                .await
        };
        let accepted = match verification {
            Verification::Accepted => true,
            Verification::Refused => false,
            Verification::Busy(busy) => return Err(self.verifier_busy(&busy, method)),
            Verification::Unavailable(e) => return Err(self.directory_unavailable(&e, method)),
        };
        self.metrics.verification(answer);
        let fresh = matches!(answer, store::Answer::Hashed);
        if !accepted {
            self.suspects.insert(client, ());
            self.audit
                .sign_in(false, user, client_ip, method, Some("logon_failed"));
            self.metrics.auth(method, AuthOutcome::Refused);
        }
        Ok((accepted, fresh))
    }

    /// The ban that stops `user` signing in from `client_ip`: on the client (its key), or on the
    /// user name unless this client signed in as that user within `logon.ban_time` — a
    /// guesser elsewhere must not lock the real user out.
    pub(crate) async fn ban_for(
        &self,
        client_ip: IpAddr,
        user: &str,
    ) -> Result<Option<store::state::Ban>, store::state::Unavailable> {
        let client = self.client_key(client_ip);
        let known = self
            .known_users
            .get(&(client, user.to_owned()))
            .is_some_and(|at| at.elapsed() < self.config.logon.ban_time);
        self.state.ban_for(client, (!known).then_some(user)).await
    }

    /// Counts an accepted sign-in, once it is certain (after the lockout re-check); a fresh one
    /// (a real password check, not the cache) is also audited and recorded in the user store.
    pub(crate) fn signed_in(
        &self,
        user: &str,
        client_ip: IpAddr,
        fresh: bool,
        method: &'static str,
    ) {
        let key = (self.client_key(client_ip), user.to_owned());
        let last = if fresh {
            None
        } else {
            self.known_users.get(&key)
        };
        self.accepted(client_ip, key, last, fresh, method);
    }

    /// Counts an accepted sign-in from `client_ip` of `key` (client key, user), last remembered
    /// at `last`.
    fn accepted(
        &self,
        client_ip: IpAddr,
        key: (IpAddr, String),
        last: Option<Instant>,
        fresh: bool,
        method: &'static str,
    ) {
        self.metrics.auth(method, AuthOutcome::Accepted);
        if fresh {
            self.audit.sign_in(true, &key.1, client_ip, method, None);
            self.verifier.record_sign_in(&key.1);
        }
        // Refreshed at most once a minute (or half a ban time, which `ban_for` compares the
        // time with): an insert costs a write to the cache's queues, and Basic from the cache
        // and Digest come here on every request.
        let refresh = Duration::from_secs(60).min(self.config.logon.ban_time / 2);
        if last.is_none_or(|at| at.elapsed() >= refresh) {
            self.known_users.insert(key, Instant::now());
        }
    }

    /// A right second-factor code: only now is the sign-in complete — audited, counted, the
    /// failure count reset.
    pub(crate) async fn second_factor_accepted(&self, client_ip: IpAddr, user: &str) {
        self.audit.record(
            "second_factor",
            serde_json::json!({"user": user, "client": client_ip.to_string(), "accepted": true}),
        );
        let recorded = self
            .state
            .record_success(self.client_key(client_ip), user)
            .await;
        self.metrics.state_call(self.state, recorded.is_ok());
        if let Err(e) = recorded {
            tracing::error!(error = %e, "could not record the logon outcome");
        }
        self.signed_in(user, client_ip, true, "form");
    }

    /// A wrong second-factor code: audited and counted toward the lockout, as a wrong password.
    pub(crate) async fn second_factor_refused(&self, client_ip: IpAddr, user: &str) {
        self.audit.record(
            "second_factor",
            serde_json::json!({"user": user, "client": client_ip.to_string(), "accepted": false}),
        );
        let recorded = self
            .state
            .record_failure(self.client_key(client_ip), user, self.regulation)
            .await;
        self.note_bans(recorded);
    }

    /// A refused sign-in whose check was not a password hash (Digest): counted, audited, and
    /// toward the lockout (with `[logon] enabled`), as a wrong password is.
    pub(crate) async fn refused_without_hash(
        &self,
        client_ip: IpAddr,
        user: &str,
        method: &'static str,
    ) {
        self.suspects.insert(self.client_key(client_ip), ());
        self.metrics.auth(method, AuthOutcome::Refused);
        self.audit
            .sign_in(false, user, client_ip, method, Some("logon_failed"));
        if self.config.logon.enabled {
            let recorded = self
                .state
                .record_failure(self.client_key(client_ip), user, self.regulation)
                .await;
            self.note_bans(recorded);
        }
    }

    /// An accepted sign-in whose check was not a password hash (Digest, every request): counted;
    /// audited the first time from this client within a day, not once per request.
    pub(crate) fn accepted_without_hash(
        &self,
        client_ip: IpAddr,
        user: &str,
        method: &'static str,
    ) {
        let key = (self.client_key(client_ip), user.to_owned());
        let last = self.known_users.get(&key);
        self.accepted(client_ip, key, last, last.is_none(), method);
    }

    /// Whether `user` signed in from this client within the last day (to the minute).
    pub(crate) fn is_known(&self, client_ip: IpAddr, user: &str) -> bool {
        self.known_users
            .contains_key(&(self.client_key(client_ip), user.to_owned()))
    }
}

/// `503 directory_unavailable` for a directory that did not answer.
pub(crate) fn directory_refusal(e: &store::ldap::DirectoryError) -> Refusal {
    Refusal::new(Reason::DirectoryUnavailable)
        .with_retry_after(Duration::from_secs(5))
        .with_detail(e.to_string())
}

/// What a directory entry says of its user: groups, e-mail, display name.
pub(crate) fn take_entry(identity: &mut Identity, entry: &store::ldap::DirectoryEntry) {
    identity.groups.clone_from(&entry.groups);
    identity.email.clone_from(&entry.email);
    identity.name.clone_from(&entry.name);
}
