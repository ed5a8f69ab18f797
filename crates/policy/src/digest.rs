//! Reading an `Authorization: Digest …` header (RFC 7616 §3.4): its auth-params, strictly. A
//! parameter sent twice, a required one missing, a value too long or not closed, and anything
//! the syntax does not allow is malformed (400): never a guess at what the client meant.

use std::borrow::Cow;
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

/// The auth-params a response is read from (anything else is allowed once and ignored).
const FIELDS: [&str; 11] = [
    "username",
    "realm",
    "nonce",
    "uri",
    "response",
    "qop",
    "cnonce",
    "nc",
    "algorithm",
    "userhash",
    "opaque",
];

/// Parses the part after `Digest `. One pass over the bytes: names are matched in place,
/// values borrowed unless they hold an escape (this runs on every Digest request).
pub fn parse_digest(rest: &[u8]) -> Result<DigestResponse, MalformedAuthorization> {
    let bad = MalformedAuthorization;
    let mut known: [Option<Cow<'_, str>>; FIELDS.len()] = Default::default();
    let mut others: [&[u8]; MAX_PARAMS] = [&[]; MAX_PARAMS];
    let mut other_count = 0;
    let mut count = 0;
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
        let name = &rest[start..i];
        skip_ws(&mut i);
        if rest.get(i) != Some(&b'=') {
            return Err(bad("a Digest parameter has no value"));
        }
        i += 1;
        skip_ws(&mut i);
        let value: Cow<'_, str> = if rest.get(i) == Some(&b'"') {
            i += 1;
            let start = i;
            let mut escapes = 0;
            // Fast path: up to the first quote or backslash (SIMD search), then one branch-free
            // pass for control characters; the loop below takes it from there.
            let body = &rest[i..];
            let clean = &body[..memchr::memchr2(b'"', b'\\', body)
                .unwrap_or(body.len())
                .min(MAX_VALUE + 1)];
            let control = clean.iter().fold(false, |any, &c| {
                any | ((c < 0x20 && c != b'\t') | (c == 0x7f))
            });
            if !control {
                i += clean.len();
            }
            if i - start > MAX_VALUE {
                return Err(bad("a Digest value is longer than 1 KiB"));
            }
            loop {
                match rest.get(i) {
                    None => return Err(bad("a quoted Digest value is not closed")),
                    Some(b'"') => break,
                    Some(b'\\') => {
                        if i + 1 >= rest.len() {
                            return Err(bad("a quoted Digest value is not closed"));
                        }
                        escapes += 1;
                        i += 2;
                    }
                    Some(&c) if c == b'\t' || (0x20..0x7f).contains(&c) || c >= 0x80 => i += 1,
                    Some(_) => return Err(bad("a Digest value has a control character")),
                }
                if i - start - escapes > MAX_VALUE {
                    return Err(bad("a Digest value is longer than 1 KiB"));
                }
            }
            let raw = &rest[start..i];
            i += 1;
            let text =
                |bytes| String::from_utf8(bytes).map_err(|_| bad("a Digest value is not UTF-8"));
            if escapes == 0 {
                Cow::Borrowed(
                    std::str::from_utf8(raw).map_err(|_| bad("a Digest value is not UTF-8"))?,
                )
            } else {
                let mut v = Vec::with_capacity(raw.len());
                let mut j = 0;
                while j < raw.len() {
                    if raw[j] == b'\\' {
                        j += 1;
                    }
                    v.push(raw[j]);
                    j += 1;
                }
                Cow::Owned(text(v)?)
            }
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
            // Token characters are ASCII.
            Cow::Borrowed(
                std::str::from_utf8(&rest[start..i])
                    .map_err(|_| bad("a Digest value is not UTF-8"))?,
            )
        };
        count += 1;
        let field = FIELDS
            .iter()
            .position(|f| f.as_bytes().eq_ignore_ascii_case(name));
        let twice = match field {
            Some(at) => known[at].is_some(),
            None => others[..other_count]
                .iter()
                .any(|o| o.eq_ignore_ascii_case(name)),
        };
        if twice {
            return Err(bad("a Digest parameter is sent twice"));
        }
        if count > MAX_PARAMS {
            return Err(bad("too many Digest parameters"));
        }
        match field {
            Some(at) => known[at] = Some(value),
            // At most MAX_PARAMS names in all (refused above), so `others` has room.
            None => {
                others[other_count] = name;
                other_count += 1;
            }
        }
        skip_ws(&mut i);
        match rest.get(i) {
            None => break,
            Some(b',') => i += 1,
            Some(_) => return Err(bad("Digest parameters are not separated by commas")),
        }
    }
    let mut take = |name: &str| -> Option<Cow<'_, str>> {
        let at = FIELDS.iter().position(|f| *f == name)?;
        known[at].take()
    };
    let required =
        |v: Option<Cow<'_, str>>, what: &'static str| v.map(Cow::into_owned).ok_or(bad(what));
    let username = required(take("username"), "Digest without username")?;
    let realm = required(take("realm"), "Digest without realm")?;
    let nonce = required(take("nonce"), "Digest without nonce")?;
    let uri = required(take("uri"), "Digest without uri")?;
    let response = take("response").ok_or(bad("Digest without response"))?;
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
        opaque: take("opaque").map(Cow::into_owned),
    })
}

fn is_tchar(b: u8) -> bool {
    TCHAR[usize::from(b)]
}

/// RFC 9110 `tchar`, as a table (looked up for every byte of every name and token).
static TCHAR: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        b += 1;
    }
    table
};

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
        // Exactly 1 KiB passes, one more byte does not (quoted, with and without escapes).
        for (value, ok) in [
            ("a".repeat(1024), true),
            ("a".repeat(1025), false),
            (format!("\\\"{}", "a".repeat(1023)), true),
            (format!("\\\"{}", "a".repeat(1024)), false),
        ] {
            let header = CURL.replace("username=\"alice\"", &format!("username=\"{value}\""));
            assert_eq!(
                parse_digest(header.as_bytes()).is_ok(),
                ok,
                "{}",
                value.len()
            );
        }
        let many: Vec<String> = (0..20).map(|i| format!("p{i}=x")).collect();
        assert!(parse_digest(many.join(", ").as_bytes()).is_err());
    }
}
