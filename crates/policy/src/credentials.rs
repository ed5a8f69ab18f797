//! Reading the `Authorization` header (RFC 9110 §11.6.2, RFC 7617 for Basic).

use base64::Engine;
use std::fmt;

/// Credentials offered by the client.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// Basic: user name and password, both valid UTF-8.
    Basic {
        /// The user name (never contains ':').
        user: String,
        /// The password.
        password: String,
    },
    /// Bearer (RFC 6750): a token in the `b64token` syntax.
    Bearer {
        /// The token.
        token: String,
    },
    /// Digest (RFC 7616): the response's parameters.
    Digest(Box<crate::digest::DigestResponse>),
    /// A well-formed header for a scheme this build does not verify.
    Other {
        /// The scheme token, lower-cased.
        scheme: String,
    },
}

// Never print a password, not even in a debug log.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Basic { user, .. } => f
                .debug_struct("Basic")
                .field("user", user)
                .finish_non_exhaustive(),
            Credentials::Bearer { .. } => f.debug_struct("Bearer").finish_non_exhaustive(),
            Credentials::Digest(d) => d.fmt(f),
            Credentials::Other { scheme } => {
                f.debug_struct("Other").field("scheme", scheme).finish()
            }
        }
    }
}

/// Why an `Authorization` header could not be read; becomes a 400.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MalformedAuthorization(pub(crate) &'static str);

impl fmt::Display for MalformedAuthorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed Authorization header: {}", self.0)
    }
}

impl std::error::Error for MalformedAuthorization {}

/// Longest user name accepted: names become keys of lockout counters and log fields.
pub const MAX_USER_LEN: usize = 256;

/// Parses an `Authorization` header value.
pub fn parse_authorization(raw: &[u8]) -> Result<Credentials, MalformedAuthorization> {
    let raw = trim(raw);
    let (scheme, rest) = match raw.iter().position(|&b| b == b' ') {
        Some(i) => (&raw[..i], trim(&raw[i + 1..])),
        None => (raw, &raw[raw.len()..]),
    };
    if scheme.is_empty() || !scheme.iter().all(|&b| is_tchar(b)) {
        return Err(MalformedAuthorization("the scheme is not a token"));
    }
    let scheme = String::from_utf8_lossy(scheme).to_ascii_lowercase();
    if scheme == "bearer" {
        return bearer(rest);
    }
    if scheme == "digest" {
        return crate::digest::parse_digest(rest).map(|d| Credentials::Digest(Box::new(d)));
    }
    if scheme != "basic" {
        return Ok(Credentials::Other { scheme });
    }
    if rest.is_empty() {
        return Err(MalformedAuthorization("Basic without credentials"));
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(rest))
        .map_err(|_| MalformedAuthorization("Basic credentials are not valid base64"))?;
    let text = String::from_utf8(decoded)
        .map_err(|_| MalformedAuthorization("Basic credentials are not valid UTF-8"))?;
    let (user, password) = text.split_once(':').ok_or(MalformedAuthorization(
        "Basic credentials have no ':' between user and password",
    ))?;
    check_user_name(user)?;
    Ok(Credentials::Basic {
        user: user.to_owned(),
        password: password.to_owned(),
    })
}

/// Longest bearer token accepted (an API token is 47 bytes; a JWT with many claims a few KiB).
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// RFC 6750 §2.1: `b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn bearer(rest: &[u8]) -> Result<Credentials, MalformedAuthorization> {
    if rest.is_empty() {
        return Err(MalformedAuthorization("Bearer without a token"));
    }
    if rest.len() > MAX_TOKEN_LEN {
        return Err(MalformedAuthorization(
            "the bearer token is longer than 8 KiB",
        ));
    }
    let body_end = rest.iter().position(|&b| b == b'=').unwrap_or(rest.len());
    let body_ok = body_end > 0
        && rest[..body_end]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b));
    if !body_ok || !rest[body_end..].iter().all(|&b| b == b'=') {
        return Err(MalformedAuthorization(
            "the bearer token is not in the b64token syntax of RFC 6750",
        ));
    }
    Ok(Credentials::Bearer {
        token: String::from_utf8_lossy(rest).into_owned(),
    })
}

/// The checks every user name a client sends must pass, whatever carries it (Basic, the
/// sign-in form): at most [`MAX_USER_LEN`] bytes and no control characters (a newline would
/// forge a line in the logs).
pub fn check_user_name(user: &str) -> Result<(), MalformedAuthorization> {
    if user.len() > MAX_USER_LEN {
        return Err(MalformedAuthorization(
            "the user name is longer than 256 bytes",
        ));
    }
    if user.chars().any(char::is_control) {
        return Err(MalformedAuthorization(
            "the user name contains control characters",
        ));
    }
    Ok(())
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end]
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn basic_is_case_insensitive_and_splits_at_first_colon() {
        let h = format!("bAsIc {}", b64(b"alice:se:cret"));
        assert_eq!(
            parse_authorization(h.as_bytes()).unwrap(),
            Credentials::Basic {
                user: "alice".into(),
                password: "se:cret".into()
            }
        );
    }

    #[test]
    fn utf8_credentials_are_accepted() {
        let h = format!("Basic {}", b64("jürgen:pässwörd".as_bytes()));
        assert!(
            matches!(parse_authorization(h.as_bytes()), Ok(Credentials::Basic { user, .. }) if user == "jürgen")
        );
    }

    #[test]
    fn malformed_values_are_errors() {
        assert!(parse_authorization(b"Basic").is_err());
        assert!(parse_authorization(b"Basic ***").is_err());
        assert!(parse_authorization(format!("Basic {}", b64(b"nocolon")).as_bytes()).is_err());
        assert!(parse_authorization(format!("Basic {}", b64(b"\xff\xfe:pw")).as_bytes()).is_err());
        assert!(parse_authorization(format!("Basic {}", b64(b"a\x07b:pw")).as_bytes()).is_err());
        assert!(parse_authorization(b"(bad) x").is_err());
        assert!(
            parse_authorization(
                format!(
                    "Basic {}",
                    b64(format!("{}:pw", "u".repeat(257)).as_bytes())
                )
                .as_bytes()
            )
            .is_err()
        );
        assert!(parse_authorization(b"").is_err());
    }

    #[test]
    fn bearer_tokens_follow_the_b64token_syntax() {
        for ok in ["pcl_abc-DEF_123", "eyJ.a-b.c_d", "abc+/=", "a==", "x~y"] {
            assert_eq!(
                parse_authorization(format!("Bearer {ok}").as_bytes()),
                Ok(Credentials::Bearer { token: ok.into() }),
                "{ok}"
            );
        }
        assert!(matches!(
            parse_authorization(b"bearer abc"),
            Ok(Credentials::Bearer { .. })
        ));
        let long = format!("Bearer {}", "a".repeat(MAX_TOKEN_LEN + 1));
        for bad in [
            "Bearer",
            "Bearer ",
            "Bearer a b",
            "Bearer a,b",
            "Bearer =abc",
            "Bearer ab=c",
            "Bearer \"abc\"",
            "Bearer ab\u{e9}",
            long.as_str(),
        ] {
            assert!(parse_authorization(bad.as_bytes()).is_err(), "{bad}");
        }
        let debug = format!("{:?}", parse_authorization(b"Bearer pcl_secret").unwrap());
        assert!(!debug.contains("secret"), "{debug}");
    }

    #[test]
    fn other_schemes_are_recognised() {
        assert_eq!(
            parse_authorization(b"Negotiate YIIabc==").unwrap(),
            Credentials::Other {
                scheme: "negotiate".into()
            }
        );
    }

    #[test]
    fn debug_never_shows_the_password() {
        let c = Credentials::Basic {
            user: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
