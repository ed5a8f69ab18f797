//! Phase 5: who the user is. The policy reads the request's credentials ([`AuthStep`]: a
//! public path, a Basic user and password, or a refusal); each way of signing in is one file
//! here, and every password goes through the one [`logon`] service (lockout, hash queue,
//! counting, metrics, audit) whichever scheme carried it.

use super::*;

mod basic;
mod bearer;
mod certificate;
mod digest;
pub(crate) mod jwt;
pub(crate) mod logon;

pub(crate) use digest::DigestSite;
pub(crate) use jwt::JwtSite;
pub(crate) use logon::Logon;
mod session;

impl Gateway {
    /// Sets `ex.user` (and the log record's user name), or refuses.
    pub(crate) async fn authenticate(
        &self,
        ex: &mut Exchange<'_>,
        path: &policy::NormalizedPath,
    ) -> Result<(), Refusal> {
        // A client certificate decides first: a valid one signs its user in, an invalid one (or
        // none, where one is required) is refused, on every path.
        if let Some(mut identity) = self.certificate(ex)? {
            // From a directory, the user's groups, e-mail and name (asked when not cached).
            if self.verifier.directory().is_some()
                && let Some(user) = identity.user.clone()
            {
                self.logon().describe(&mut identity, &user).await?;
            }
            ex.user.identity = Some(identity);
            return Ok(());
        }
        // Two Authorization headers: the one judged might not be the one the application reads.
        if ex
            .request
            .headers
            .get_all(AUTHORIZATION)
            .iter()
            .nth(1)
            .is_some()
        {
            return Err(Refusal::new(Reason::BadRequest)
                .with_detail("the request has more than one Authorization header"));
        }
        let authorization = ex.request.headers.get(AUTHORIZATION);
        let identity = match self
            .policy
            .auth
            .authenticate(path, authorization.map(HeaderValue::as_bytes))
        {
            AuthStep::Public(_) => Identity::anonymous(),
            AuthStep::VerifyBasic { user, password } => self.basic(ex, user, password).await?,
            AuthStep::VerifyToken { token } => self.bearer(ex, &token).await?,
            AuthStep::VerifyDigest(response) => self.digest(ex, &response).await?,
            // Without an Authorization header, a form-login site looks for its session cookie.
            AuthStep::Refuse(refusal)
                if refusal.reason == Reason::NoCredentials
                    && authorization.is_none()
                    && self.form_enabled() =>
            {
                self.session(ex, refusal).await?
            }
            AuthStep::Refuse(refusal) => return Err(refusal),
        };
        ex.user.identity = Some(identity);
        Ok(())
    }
}
