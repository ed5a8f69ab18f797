//! Bearer (RFC 6750): an API token made by `portcullis tokens create`, looked up by its SHA-256
//! in the user database (in memory, reloaded when the database changes). A token never goes
//! through the password hash queue and is not counted toward the lockout: it is 256 random
//! bits, so guessing is not a threat a counter could help with.

use super::*;

impl Gateway {
    pub(super) async fn bearer(
        &self,
        ex: &mut Exchange<'_>,
        token: &str,
    ) -> Result<Identity, Refusal> {
        // A JWT never starts with pcl_ (its header is base64url JSON: "eyJ…").
        if let Some(site) = &self.jwt
            && !token.starts_with(store::sqlite::API_TOKEN_PREFIX)
        {
            return self.jwt(site, ex, token).await;
        }
        let now = i64::try_from(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        )
        .unwrap_or(i64::MAX);
        let refused = |reason: Reason, detail: String| {
            self.metrics.auth("bearer", AuthOutcome::Refused);
            Err(Refusal::new(reason).with_detail(detail))
        };
        match self.verifier.check_api_token(token, now).await {
            TokenCheck::Valid { user, first_use } => {
                self.metrics.auth("bearer", AuthOutcome::Accepted);
                if let Some(id) = first_use {
                    self.audit.record(
                        "token_first_used",
                        serde_json::json!({"id": id, "user": user, "client": ex.client.ip.to_string()}),
                    );
                }
                if let Some(r) = ex.record.as_mut() {
                    r.username = Some(user.clone());
                }
                ex.user.from_token = true;
                let mut identity = Identity::user(&user);
                self.logon().describe(&mut identity, &user).await?;
                Ok(identity)
            }
            TokenCheck::Expired { id, at } => {
                let when = humantime::format_rfc3339_seconds(
                    SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(at).unwrap_or(0)),
                );
                self.metrics.auth("bearer", AuthOutcome::Refused);
                Err(Refusal::new(Reason::TokenExpired)
                    .with_detail(format!("the API token {id} expired at {when}"))
                    .with_note(format!("It expired at {when}.")))
            }
            TokenCheck::Unknown if !token.starts_with(store::sqlite::API_TOKEN_PREFIX) => refused(
                Reason::TokenInvalid,
                "the bearer token is not an API token of this site (they start with pcl_)".into(),
            ),
            TokenCheck::Unknown => refused(
                Reason::TokenInvalid,
                "no live API token matches (never made, revoked, or its user disabled or deleted)"
                    .into(),
            ),
        }
    }
}
