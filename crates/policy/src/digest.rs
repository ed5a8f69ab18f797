//! Reading an `Authorization: Digest …` header (RFC 7616 §3.4): its auth-params, strictly. A
//! parameter sent twice, a required one missing, a value too long or not closed, and anything
//! the syntax does not allow is malformed (400): never a guess at what the client meant.

use std::fmt;

use crate::credentials::MalformedAuthorization;

/// The hash functions Digest can use (RFC 7616 §3.5; the `-sess` variants are not offered).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DigestAlgorithm {
    /// `SHA-256`.
    Sha256,
    /// `MD5` (the only one older clients know).
    Md5,
}

impl DigestAlgorithm {
    /// The name in challenges and responses.
    pub fn name(self) -> &'static str {
        match self {
            DigestAlgorithm::Sha256 => "SHA-256",
            DigestAlgorithm::Md5 => "MD5",
        }
    }

    /// The algorithm named `name` (case-insensitive, as clients vary).
    pub fn parse(name: &str) -> Option<DigestAlgorithm> {
        if name.eq_ignore_ascii_case("SHA-256") {
            Some(DigestAlgorithm::Sha256)
        } else if name.eq_ignore_ascii_case("MD5") {
            Some(DigestAlgorithm::Md5)
        } else {
            None
        }
    }
}

/// The parameters of a Digest response (the `Authorization` header).
#[derive(Clone, PartialEq, Eq)]
pub struct DigestResponse {
    /// `username` (or, with `userhash=true`, the hash of `user:realm`).
    pub username: String,
    /// `userhash=true`: `username` is hashed.
    pub userhash: bool,
    /// `realm`.
    pub realm: String,
    /// `nonce`, as the server sent it.
    pub nonce: String,
    /// `uri`: the request-target the client signed.
    pub uri: String,
    /// `response`: lower-case hex.
    pub response: String,
    /// `algorithm` (MD5 when absent, RFC 7616 §3.4).
    pub algorithm: DigestAlgorithm,
    /// `cnonce`.
    pub cnonce: String,
    /// `nc`: eight hex digits.
    pub nc: u64,
    /// The `nc` parameter as sent (the response covers its text).
    pub nc_text: String,
    /// `qop` (only `auth` is offered).
    pub qop: String,
    /// `opaque`, if sent.
    pub opaque: Option<String>,
}

impl fmt::Debug for DigestResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DigestResponse")
            .field("username", &self.username)
            .field("realm", &self.realm)
            .field("uri", &self.uri)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// Longest value of one parameter.
const MAX_VALUE: usize = 1024;
/// Most parameters in one header.
const MAX_PARAMS: usize = 16;

/// Parses the part after `Digest `.
pub fn parse_digest(rest: &[u8]) -> Result<DigestResponse, MalformedAuthorization> {
    let bad = MalformedAuthorization;
    let mut params: Vec<(String, String)> = Vec::new();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < rest.len() && (rest[*i] == b' ' || rest[*i] == b'\t') {
            *i += 1;
        }
    };
    loop {
        skip_ws(&mut i);
        if i >= rest.len() {
            break;
        }
        let start = i;
        while i < rest.len() && is_tchar(rest[i]) {
            i += 1;
        }
        if i == start {
            return Err(bad("a Digest parameter name is not a token"));
        }
        let name = String::from_utf8_lossy(&rest[start..i]).to_ascii_lowercase();
        skip_ws(&mut i);
        if rest.get(i) != Some(&b'=') {
            return Err(bad("a Digest parameter has no value"));
        }
        i += 1;
        skip_ws(&mut i);
        let value = if rest.get(i) == Some(&b'"') {
            i += 1;
            let mut v = Vec::new();
            loop {
                match rest.get(i) {
                    None => return Err(bad("a quoted Digest value is not closed")),
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') => {
                        let Some(&c) = rest.get(i + 1) else {
                            return Err(bad("a quoted Digest value is not closed"));
                        };
                        v.push(c);
                        i += 2;
                    }
                    Some(&c) if c == b'\t' || (0x20..0x7f).contains(&c) || c >= 0x80 => {
                        v.push(c);
                        i += 1;
                    }
                    Some(_) => return Err(bad("a Digest value has a control character")),
                }
                if v.len() > MAX_VALUE {
                    return Err(bad("a Digest value is longer than 1 KiB"));
                }
            }
            String::from_utf8(v).map_err(|_| bad("a Digest value is not UTF-8"))?
        } else {
            let start = i;
            while i < rest.len() && is_tchar(rest[i]) {
                i += 1;
            }
            if i == start {
                return Err(bad("a Digest value is neither a token nor quoted"));
            }
            if i - start > MAX_VALUE {
                return Err(bad("a Digest value is longer than 1 KiB"));
            }
            String::from_utf8_lossy(&rest[start..i]).into_owned()
        };
        if params.iter().any(|(n, _)| *n == name) {
            return Err(bad("a Digest parameter is sent twice"));
        }
        params.push((name, value));
        if params.len() > MAX_PARAMS {
            return Err(bad("too many Digest parameters"));
        }
        skip_ws(&mut i);
        match rest.get(i) {
            None => break,
            Some(b',') => i += 1,
            Some(_) => return Err(bad("Digest parameters are not separated by commas")),
        }
    }
    let mut take = |name: &str| -> Option<String> {
        params
            .iter()
            .position(|(n, _)| n == name)
            .map(|at| params.swap_remove(at).1)
    };
    let required = |v: Option<String>, what: &'static str| v.ok_or(bad(what));
    let username = required(take("username"), "Digest without username")?;
    let realm = required(take("realm"), "Digest without realm")?;
    let nonce = required(take("nonce"), "Digest without nonce")?;
    let uri = required(take("uri"), "Digest without uri")?;
    let response = required(take("response"), "Digest without response")?;
    let qop = required(
        take("qop"),
        "Digest without qop (RFC 2069 responses are not accepted)",
    )?;
    let cnonce = required(take("cnonce"), "Digest without cnonce")?;
    let nc_text = required(take("nc"), "Digest without nc")?;
    if nc_text.len() != 8 || !nc_text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad("the Digest nc is not eight hex digits"));
    }
    let nc = u64::from_str_radix(&nc_text, 16).map_err(|_| bad("the Digest nc is not hex"))?;
    let algorithm = match take("algorithm") {
        None => DigestAlgorithm::Md5,
        Some(a) => DigestAlgorithm::parse(&a).ok_or(bad("the Digest algorithm is not offered"))?,
    };
    let userhash = match take("userhash").as_deref() {
        None => false,
        Some(v) if v.eq_ignore_ascii_case("true") => true,
        Some(v) if v.eq_ignore_ascii_case("false") => false,
        Some(_) => return Err(bad("the Digest userhash is neither true nor false")),
    };
    if response.is_empty() || !response.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad("the Digest response is not hex"));
    }
    Ok(DigestResponse {
        username,
        userhash,
        realm,
        nonce,
        uri,
        response: response.to_ascii_lowercase(),
        algorithm,
        cnonce,
        nc,
        nc_text,
        qop,
        opaque: take("opaque"),
    })
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CURL: &str = r#"username="alice", realm="R", nonce="abc", uri="/x?y=1", cnonce="Yzk", nc=00000001, qop=auth, response="0123abcd", algorithm=SHA-256"#;

    #[test]
    fn a_curl_response_is_read() {
        let d = parse_digest(CURL.as_bytes()).unwrap();
        assert_eq!(d.username, "alice");
        assert_eq!(d.uri, "/x?y=1");
        assert_eq!(d.nc, 1);
        assert_eq!(d.algorithm, DigestAlgorithm::Sha256);
        assert_eq!(d.qop, "auth");
        assert!(!d.userhash);
    }

    #[test]
    fn quoted_values_unescape_and_may_hold_commas() {
        let d = parse_digest(
            br#"username="a\"b,c", realm="R", nonce="n", uri="/", cnonce="c", nc=00000002, qop="auth", response="ff", userhash=true"#,
        )
        .unwrap();
        assert_eq!(d.username, "a\"b,c");
        assert!(d.userhash);
        assert_eq!(d.algorithm, DigestAlgorithm::Md5, "MD5 when absent");
    }

    #[test]
    fn malformed_responses_are_refused() {
        let long = format!("username=\"{}\"", "a".repeat(2000));
        for bad in [
            "",
            "username",
            "username=",
            "username=\"open",
            "username=\"a\", username=\"b\"",
            "username=\"a\" realm=\"R\"",
            &CURL.replace("nc=00000001", "nc=1"),
            &CURL.replace(", cnonce=\"Yzk\"", ""),
            &CURL.replace(", qop=auth", ""),
            &CURL.replace("SHA-256", "SHA-512"),
            &CURL.replace("0123abcd", "xyz"),
            &(CURL.to_owned() + ", userhash=maybe"),
            &long,
            "username=\"a\u{1}b\"",
        ] {
            assert!(parse_digest(bad.as_bytes()).is_err(), "{bad}");
        }
        let many: Vec<String> = (0..20).map(|i| format!("p{i}=x")).collect();
        assert!(parse_digest(many.join(", ").as_bytes()).is_err());
    }
}
