//! Portcullis's cookies (the session and the pre-session CSRF cookie, `__Host-` over HTTPS)
//! and the same-origin check.

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

/// Removes Portcullis's session, CSRF and sign-in-in-progress cookies from the request's
/// `Cookie` headers, keeping the application's.
pub fn strip_own_cookies(headers: &mut HeaderMap) {
    let ours = |pair: &str| {
        let name = pair.split_once('=').map_or(pair, |(n, _)| n).trim();
        [
            SESSION_SECURE,
            SESSION_PLAIN,
            CSRF_SECURE,
            CSRF_PLAIN,
            crate::oidc::COOKIE,
            crate::oidc::COOKIE_SECURE,
        ]
        .contains(&name)
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
