//! Portcullis's cookies (the session and the pre-session CSRF cookie, `__Host-` over HTTPS),
//! CSRF tokens and the second-factor step's signed token, and the same-origin check.

use super::*;

/// Cookie names: `__Host-` names over HTTPS (bound to this host, Secure, Path=/), plain names
/// over HTTP, where browsers refuse `__Host-` cookies.
pub(crate) const SESSION_SECURE: &str = "__Host-portcullis";
pub(crate) const SESSION_PLAIN: &str = "portcullis_session";
pub(crate) const CSRF_SECURE: &str = "__Host-portcullis-csrf";
pub(crate) const CSRF_PLAIN: &str = "portcullis_csrf";

/// The value of cookie `name` in the request (the first one, if repeated).
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// Removes Portcullis's session and CSRF cookies from the request's `Cookie` headers, keeping
/// the application's.
pub fn strip_own_cookies(headers: &mut HeaderMap) {
    let ours = |pair: &str| {
        let name = pair.split_once('=').map_or(pair, |(n, _)| n).trim();
        [SESSION_SECURE, SESSION_PLAIN, CSRF_SECURE, CSRF_PLAIN].contains(&name)
    };
    // Cheap pre-check: most requests carry none of ours.
    if !headers
        .get_all(COOKIE)
        .iter()
        .any(|v| v.as_bytes().windows(10).any(|w| w == b"portcullis"))
    {
        return;
    }
    let kept: Vec<String> = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty() && !ours(pair))
        .map(str::to_owned)
        .collect();
    headers.remove(COOKIE);
    if !kept.is_empty()
        && let Ok(v) = HeaderValue::from_str(&kept.join("; "))
    {
        headers.insert(COOKIE, v);
    }
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Lax, Path=/, Secure over HTTPS.
pub(crate) fn set_cookie(
    name: &str,
    value: &str,
    secure: bool,
    max_age: Option<u64>,
) -> HeaderValue {
    let mut c = format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax");
    if secure {
        c.push_str("; Secure");
    }
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static("x=; Max-Age=0"))
}

/// What a request carries and needs, cookie-wise.
pub struct Cookies {
    /// Whether the site is reached over HTTPS (directly, or as a trusted proxy says).
    pub secure: bool,
}

impl Cookies {
    pub(crate) fn session_name(&self) -> &'static str {
        if self.secure {
            SESSION_SECURE
        } else {
            SESSION_PLAIN
        }
    }

    pub(crate) fn csrf_name(&self) -> &'static str {
        if self.secure { CSRF_SECURE } else { CSRF_PLAIN }
    }

    /// The session id the request carries. Over HTTPS only the `__Host-` cookie counts: a
    /// plain-named one can be planted by a sibling subdomain (`Domain=`) or over plain HTTP.
    pub fn session_id<'h>(&self, headers: &'h HeaderMap) -> Option<&'h str> {
        cookie(headers, self.session_name())
    }

    /// Sets the session cookie.
    pub fn set_session(&self, id: &str, max_age: u64) -> HeaderValue {
        set_cookie(self.session_name(), id, self.secure, Some(max_age))
    }

    /// Clears the session cookie(s) the request carries.
    pub fn clear_session(&self, headers: &HeaderMap) -> Vec<HeaderValue> {
        let mut out = vec![set_cookie(self.session_name(), "", self.secure, Some(0))];
        for name in [SESSION_SECURE, SESSION_PLAIN] {
            if name != self.session_name() && cookie(headers, name).is_some() {
                out.push(set_cookie(name, "", name == SESSION_SECURE, Some(0)));
            }
        }
        out
    }

    /// The pre-session id the request carries, if well-formed.
    pub(crate) fn pre_session<'h>(&self, headers: &'h HeaderMap) -> Option<&'h str> {
        cookie(headers, self.csrf_name()).filter(|id| session::well_formed(id))
    }
}

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

/// Whether a POST's `Origin` (when sent) is this site: `scheme://host[:port]` as the request
/// reached it. Browsers send `Origin` on every cross-site POST, so a mismatch is a forgery; its
/// absence (old clients) leaves the decision to the CSRF token, and so does `Origin: null`,
/// which browsers send for a same-site form on a page with `Referrer-Policy: no-referrer` (the
/// password page, so its link's token never leaves in a Referer).
pub fn same_origin(headers: &HeaderMap, host: Option<&str>, secure: bool) -> bool {
    let Some(origin) = headers.get(ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if origin == "null" {
        return true;
    }
    let Some(host) = host else { return false };
    let scheme = if secure { "https" } else { "http" };
    let strip = |h: &str| -> String {
        let h = h.to_ascii_lowercase();
        let default = if secure { ":443" } else { ":80" };
        h.strip_suffix(default).map_or(h.clone(), str::to_owned)
    };
    match origin.split_once("://") {
        Some((s, h)) => s.eq_ignore_ascii_case(scheme) && strip(h) == strip(host),
        None => false,
    }
}
