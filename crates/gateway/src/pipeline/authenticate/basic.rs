//! Basic (RFC 7617): a user name and password in `Authorization`, checked by the logon service.

use super::*;

impl Gateway {
    pub(super) async fn basic(
        &self,
        ex: &mut Exchange<'_>,
        user: String,
        password: String,
    ) -> Result<Identity, Refusal> {
        if let Some(r) = ex.record.as_mut() {
            r.username = Some(user.clone());
        }
        let client_ip = ex.client.ip;
        // Basic cannot carry a second factor: such users sign in with the form (refused before
        // the password is looked at, so nothing is counted as a sign-in).
        let logon = self.logon();
        if self.verifier.has_second_factor(&user).await {
            return Err(logon
                .refuse_second_factor_basic(client_ip, &user, password)
                .await);
        }
        logon
            .authenticate_password(client_ip, &user, password, "basic")
            .await
    }
}
