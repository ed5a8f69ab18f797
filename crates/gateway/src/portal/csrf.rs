//! CSRF tokens (signed double submit, keyed by the secret every instance shares through the state
//! store) and the second-factor step's signed token.

use super::*;

/// Signed double-submit CSRF tokens.
pub struct Csrf {
    secret: [u8; 32],
}

impl Csrf {
    /// Tokens keyed by `secret` (the state store's).
    pub fn new(secret: [u8; 32]) -> Csrf {
        Csrf { secret }
    }

    /// HMAC-SHA256 under the shared key of `parts`, each ended by a NUL, after a `purpose`
    /// label (so a CSRF token can never pass as a second-factor token, or the reverse).
    pub(crate) fn mac(&self, purpose: &[u8], parts: &[&[u8]]) -> [u8; 32] {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC accepts keys of any length");
        mac.update(purpose);
        for part in parts {
            mac.update(part);
            mac.update(b"\0");
        }
        mac.finalize().into_bytes().into()
    }

    /// Whether `sig` (base64url) is `expected` (constant time).
    pub(crate) fn matches(expected: &[u8; 32], sig: &str) -> bool {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(sig)
            .is_ok_and(|raw| subtle::ConstantTimeEq::ct_eq(&expected[..], &raw[..]).into())
    }

    /// The token for pre-session `id`.
    pub fn token(&self, id: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(self.mac(b"portcullis-csrf\0", &[id.as_bytes()]))
    }

    /// Whether `token` belongs to pre-session `id` (constant time).
    pub fn verify(&self, id: &str, token: &str) -> bool {
        Self::matches(&self.mac(b"portcullis-csrf\0", &[id.as_bytes()]), token)
    }

    /// A token saying "`user` gave the right password, the second factor is pending", valid
    /// until `expires` (Unix seconds) for the pre-session `pre` and while the user's password
    /// is the one whose stamp is `stamp` (the stamp is in the MAC, not in the token: a copy of
    /// the shared key alone cannot mint one): `user.expires.mac`.
    pub fn pending(&self, user: &str, stamp: u64, expires: u64, pre: &str) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{expires}.{}",
            b64.encode(user),
            b64.encode(self.pending_mac(user, stamp, expires, pre))
        )
    }

    pub(crate) fn pending_mac(&self, user: &str, stamp: u64, expires: u64, pre: &str) -> [u8; 32] {
        self.mac(
            b"portcullis-2fa\0",
            &[
                user.as_bytes(),
                &stamp.to_be_bytes(),
                &expires.to_be_bytes(),
                pre.as_bytes(),
            ],
        )
    }

    /// The user a pending token names (not yet checked: see [`Csrf::check_pending`]).
    pub fn pending_user(token: &str) -> Option<String> {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        String::from_utf8(b64.decode(token.split('.').next()?).ok()?).ok()
    }

    /// Whether a pending token for `user` is genuine, unexpired, for pre-session `pre` and for
    /// the password whose stamp is `stamp`.
    pub fn check_pending(&self, token: &str, user: &str, stamp: u64, pre: &str, now: u64) -> bool {
        let mut parts = token.split('.').skip(1);
        let (Some(expires), Some(sig)) = (
            parts.next().and_then(|e| e.parse::<u64>().ok()),
            parts.next(),
        ) else {
            return false;
        };
        now <= expires && Self::matches(&self.pending_mac(user, stamp, expires, pre), sig)
    }

    /// The request's pre-session and its token, or a new pre-session (and the cookie to set).
    pub fn for_request(
        &self,
        cookies: &Cookies,
        headers: &HeaderMap,
    ) -> (String, Option<HeaderValue>) {
        match cookies.pre_session(headers) {
            Some(id) => (self.token(id), None),
            None => {
                let id = session::new_id();
                let cookie = set_cookie(cookies.csrf_name(), &id, cookies.secure, None);
                (self.token(&id), Some(cookie))
            }
        }
    }

    /// Whether a POST's token matches the pre-session cookie it came with.
    pub fn check(&self, cookies: &Cookies, headers: &HeaderMap, token: Option<&str>) -> bool {
        match (cookies.pre_session(headers), token) {
            (Some(id), Some(token)) => self.verify(id, token),
            _ => false,
        }
    }
}
