//! Where a browser goes back to after signing in (`?rd=`): a path on this site only; and the
//! portal's own URLs under `portal.prefix`.

/// The portal's URLs under the configured prefix.
#[derive(Debug, Clone)]
pub struct Paths {
    /// `{prefix}` itself.
    pub prefix: String,
    /// `{prefix}/login`.
    pub login: String,
    /// `{prefix}/logout`.
    pub logout: String,
    /// `{prefix}/password`.
    pub password: String,
    /// `{prefix}/forgot`.
    pub forgot: String,
    /// `{prefix}/auth`.
    pub auth: String,
    /// `{prefix}/problems/`.
    pub problems: String,
}

impl Paths {
    /// The URLs under `prefix` (`/.portcullis`).
    pub fn new(prefix: &str) -> Paths {
        Paths {
            prefix: prefix.to_owned(),
            login: format!("{prefix}/login"),
            logout: format!("{prefix}/logout"),
            password: format!("{prefix}/password"),
            forgot: format!("{prefix}/forgot"),
            auth: format!("{prefix}/auth"),
            problems: format!("{prefix}/problems/"),
        }
    }

    /// The sign-in page returning to `rd`, optionally saying why the person is there.
    pub fn login_url(&self, rd: &str, note: Option<&str>) -> String {
        let mut url = format!("{}?rd={}", self.login, encode(rd));
        if let Some(note) = note {
            url.push('&');
            url.push_str(note);
        }
        url
    }
}

/// Percent-encodes a query value.
pub fn encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// The return target to use for `rd`: a path on this site, or `/`.
///
/// Refused (→ `/`): absolute and scheme-relative URLs, backslashes (browsers read `/\evil` as
/// `//evil`), any of those hidden behind percent-encoding, control characters, and the portal's
/// own pages (returning to the sign-in page after signing in would be a loop).
pub fn safe_return(rd: &str, paths: &Paths) -> String {
    let fallback = || "/".to_owned();
    if !rd.starts_with('/') || rd.len() > 2048 {
        return fallback();
    }
    // Decode repeatedly: "%252F" becomes "%2F" becomes "/" in some chain of proxies.
    let mut decoded = rd.to_owned();
    for _ in 0..3 {
        let next = policy::percent_decode(&decoded).into_owned();
        if next == decoded {
            break;
        }
        decoded = next;
    }
    let bad = |s: &str| {
        s.starts_with("//")
            || s.contains('\\')
            || s.chars().any(|c| c.is_control())
            || !s.starts_with('/')
    };
    if bad(rd) || bad(&decoded) {
        return fallback();
    }
    let path = decoded.split(['?', '#']).next().unwrap_or("/");
    let normalized = format!("/{}", policy::normalize_path(path).segments().join("/"));
    if normalized == paths.prefix || normalized.starts_with(&format!("{}/", paths.prefix)) {
        return fallback();
    }
    rd.to_owned()
}
