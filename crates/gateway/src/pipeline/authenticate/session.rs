//! The sign-in session of the form (`schemes` has `form`): the session cookie names a live
//! session in the state store (memory or Redis).

use super::*;

impl Gateway {
    /// `absent` is the refusal for a request with neither credentials nor a cookie.
    pub(super) async fn session(
        &self,
        ex: &mut Exchange<'_>,
        absent: Refusal,
    ) -> Result<Identity, Refusal> {
        match self
            .portal_view()
            .check_session(ex.request.headers, ex.client.secure)
            .await
        {
            portal::SessionCheck::Valid(identity) => {
                ex.user.from_session = true;
                if let Some(r) = ex.record.as_mut() {
                    r.username = identity.user.clone();
                }
                Ok(identity)
            }
            portal::SessionCheck::Absent => {
                Err(absent.with_detail("no Authorization header and no session cookie were sent"))
            }
            portal::SessionCheck::Ended(why) => {
                ex.user.clear_session = true;
                Err(Refusal::new(Reason::SessionExpired).with_detail(why))
            }
            portal::SessionCheck::Directory(e) => Err(super::logon::directory_refusal(&e)),
            portal::SessionCheck::Unavailable(e) => Err(Refusal::new(Reason::StateUnavailable)
                .with_detail(format!("the session could not be read: {e}"))),
        }
    }
}
