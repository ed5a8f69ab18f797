//! The access policy of Portcullis, as plain data and pure functions.
//!
//! Request facts go in, a [`Decision`] comes out: allow (with the identity to hand to the
//! upstream) or a [`Refusal`] that names its [`Reason`] and the phase that refused. Nothing here
//! does IO, spawns tasks or reads a clock; the gateway drives the phases in the order of the
//! pipeline and performs the effects (verifying a password hash, proxying) between them. Keeping
//! the policy pure is what lets `explain` print a trace and lets tests run without sockets.
#![forbid(unsafe_code)]

mod client;
mod credentials;
mod decision;
mod digest;
mod explain;
mod ip;
mod ipset;
mod path;
mod reason;
mod rules;

pub use client::{ClientAddr, ClientSource, client_addr};
pub use credentials::{
    Credentials, MAX_TOKEN_LEN, MAX_USER_LEN, MalformedAuthorization, check_user_name,
    parse_authorization,
};
pub use decision::{Decision, Identity, Trace, TraceEntry};
pub use digest::{DigestAlgorithm, DigestResponse, parse_digest};
pub use explain::{Facts, explain};
pub use ip::{AddressVerdict, HostPattern, IpPolicy};
pub use ipset::{IpEntry, IpSet, Origin, canonical};
pub use path::{
    NormalizedPath, PathPattern, PatternError, check_raw_path, forward_path, has_dot_segment,
    normalize_path, normalize_path_lowercase, percent_decode,
};
pub use reason::{DenyAction, Phase, Reason, Refusal};
pub use rules::{AuthzVerdict, Principal, Rule, RuleSet};

/// The whole policy: every phase's configuration, compiled.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Phase 2: proxies whose forwarding headers are believed.
    pub trusted_proxies: IpSet,
    /// Phase 3.
    pub ip: IpPolicy,
    /// Phase 5.
    pub auth: AuthPolicy,
    /// Phase 6.
    pub rules: RuleSet,
    /// Match paths case-insensitively (`auth.path_case = "insensitive"`, as IIS does).
    pub case_insensitive_paths: bool,
}

impl Policy {
    /// Normalises a request path the way this policy's patterns expect.
    pub fn normalize(&self, raw: &str) -> NormalizedPath {
        if self.case_insensitive_paths {
            normalize_path_lowercase(raw)
        } else {
            normalize_path(raw)
        }
    }
}

/// Authentication schemes a site may enable (`auth.schemes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// RFC 7617 Basic against the user store.
    Basic,
    /// A sign-in form with a server-side session (the gateway's portal; its challenge names the
    /// form, so the gateway writes it).
    Form,
    /// RFC 6750 Bearer: API tokens from the user database.
    Bearer,
    /// RFC 7616 Digest against an htdigest file (its challenges carry a fresh nonce each, so
    /// the gateway writes them).
    Digest,
    /// OpenID Connect: "sign in with" an identity provider, ending in the same session as the
    /// form (its challenge is the form's `Cookie` one, sent once).
    Oidc,
}

impl Scheme {
    /// The name used in the config file.
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Basic => "basic",
            Scheme::Form => "form",
            Scheme::Bearer => "bearer",
            Scheme::Digest => "digest",
            Scheme::Oidc => "oidc",
        }
    }
}

/// The authentication part of the policy (phase 5).
#[derive(Debug, Clone)]
pub struct AuthPolicy {
    /// Realm named in challenges.
    pub realm: String,
    /// Enabled schemes, in the order their challenges are sent.
    pub schemes: Vec<Scheme>,
    /// Paths that pass without credentials.
    pub public: Vec<PathPattern>,
}

/// What phase 5 needs the gateway to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthStep {
    /// The path is public: pass anonymously; the pattern that matched is given for the trace.
    Public(String),
    /// Verify these Basic credentials against the user store, then call
    /// [`AuthPolicy::after_verification`].
    VerifyBasic {
        /// The user name.
        user: String,
        /// The password (handed to the store, never kept).
        password: String,
    },
    /// Check this Digest response, then pass as its user.
    VerifyDigest(Box<DigestResponse>),
    /// Check this bearer token (API token), then pass as its user.
    VerifyToken {
        /// The token (handed to the store, never kept or logged).
        token: String,
    },
    /// Refused without looking at any store.
    Refuse(Refusal),
}

impl AuthPolicy {
    /// Decides what authenticating this request takes, from its normalised path and its
    /// `Authorization` header (raw bytes, if any).
    pub fn authenticate(&self, path: &NormalizedPath, authorization: Option<&[u8]>) -> AuthStep {
        if let Some(p) = self.public.iter().find(|p| p.matches(path)) {
            return AuthStep::Public(p.as_str().to_owned());
        }
        match authorization {
            None => AuthStep::Refuse(
                Refusal::new(Reason::NoCredentials).with_detail("no Authorization header was sent"),
            ),
            Some(raw) => match parse_authorization(raw) {
                Ok(Credentials::Basic { user, password })
                    if self.schemes.contains(&Scheme::Basic) =>
                {
                    AuthStep::VerifyBasic { user, password }
                }
                Ok(Credentials::Basic { .. }) => AuthStep::Refuse(
                    Refusal::new(Reason::NoCredentials)
                        .with_detail("the Basic scheme is not enabled for this site"),
                ),
                Ok(Credentials::Bearer { token }) if self.schemes.contains(&Scheme::Bearer) => {
                    AuthStep::VerifyToken { token }
                }
                Ok(Credentials::Bearer { .. }) => AuthStep::Refuse(
                    Refusal::new(Reason::NoCredentials)
                        .with_detail("the Bearer scheme is not enabled for this site"),
                ),
                Ok(Credentials::Digest(d)) if self.schemes.contains(&Scheme::Digest) => {
                    AuthStep::VerifyDigest(d)
                }
                Ok(Credentials::Digest(_)) => AuthStep::Refuse(
                    Refusal::new(Reason::NoCredentials)
                        .with_detail("the Digest scheme is not enabled for this site"),
                ),
                Ok(Credentials::Other { scheme }) => {
                    AuthStep::Refuse(Refusal::new(Reason::NoCredentials).with_detail(format!(
                        "the {scheme} authentication scheme is not enabled for this site"
                    )))
                }
                Err(e) => {
                    AuthStep::Refuse(Refusal::new(Reason::BadRequest).with_detail(e.to_string()))
                }
            },
        }
    }

    /// Turns the store's answer for `user` into the phase's outcome.
    pub fn after_verification(&self, user: &str, accepted: bool) -> Result<Identity, Refusal> {
        if accepted {
            Ok(Identity::user(user))
        } else {
            // Same refusal for an unknown user and a wrong password: never leak which.
            Err(Refusal::new(Reason::LogonFailed)
                .with_detail("the user name or password was not accepted"))
        }
    }

    /// The `WWW-Authenticate` challenges to send with a 401, one per enabled scheme;
    /// `form_action` is where the sign-in form posts (for the `form` scheme's challenge).
    pub fn challenges(&self, form_action: &str) -> Vec<String> {
        let form = self.schemes.contains(&Scheme::Form);
        self.schemes
            .iter()
            .filter(|s| !(**s == Scheme::Oidc && form))
            .map(|s| match s {
                Scheme::Basic => format!(
                    "Basic realm=\"{}\", charset=\"UTF-8\"",
                    quote_escape(&self.realm)
                ),
                // The "Cookie" scheme of draft-broyer-http-cookie-auth: sign in with the form (or
                // through the sign-in page to the identity provider).
                Scheme::Form | Scheme::Oidc => format!(
                    "Cookie realm=\"{}\", form-action=\"{}\"",
                    quote_escape(&self.realm),
                    quote_escape(form_action)
                ),
                Scheme::Bearer => format!("Bearer realm=\"{}\"", quote_escape(&self.realm)),
                // A stand-in: each 401 gets its own, with a fresh nonce per algorithm.
                Scheme::Digest => format!("Digest realm=\"{}\"", quote_escape(&self.realm)),
            })
            .collect()
    }
}

/// Escapes a value for use inside an HTTP quoted-string.
fn quote_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        if !c.is_control() {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn policy() -> AuthPolicy {
        AuthPolicy {
            realm: "Staff \"only\"".into(),
            schemes: vec![Scheme::Basic],
            public: vec![
                PathPattern::parse("/static/**").unwrap(),
                PathPattern::parse("/health").unwrap(),
            ],
        }
    }

    fn basic(s: &str) -> Vec<u8> {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(s)
        )
        .into_bytes()
    }

    #[test]
    fn public_paths_pass_without_credentials() {
        let p = policy();
        assert_eq!(
            p.authenticate(&normalize_path("/static/app.css"), None),
            AuthStep::Public("/static/**".into())
        );
        assert_eq!(
            p.authenticate(&normalize_path("/health"), None),
            AuthStep::Public("/health".into())
        );
    }

    #[test]
    fn dot_segments_cannot_escape_a_public_path() {
        let step = policy().authenticate(&normalize_path("/static/../admin"), None);
        assert!(matches!(step, AuthStep::Refuse(r) if r.reason == Reason::NoCredentials));
    }

    #[test]
    fn missing_credentials_are_401_2() {
        let AuthStep::Refuse(r) = policy().authenticate(&normalize_path("/app"), None) else {
            panic!()
        };
        assert_eq!((r.status(), r.reason.substatus()), (401, 2));
    }

    #[test]
    fn malformed_authorization_is_400() {
        let AuthStep::Refuse(r) =
            policy().authenticate(&normalize_path("/app"), Some(b"Basic !!!"))
        else {
            panic!()
        };
        assert_eq!(r.status(), 400);
        assert_eq!(r.reason, Reason::BadRequest);
    }

    #[test]
    fn basic_credentials_are_handed_to_the_store() {
        let step = policy().authenticate(&normalize_path("/app"), Some(&basic("alice:pa:ss")));
        assert_eq!(
            step,
            AuthStep::VerifyBasic {
                user: "alice".into(),
                password: "pa:ss".into()
            }
        );
    }

    #[test]
    fn refused_verification_is_401_1_for_everyone() {
        let r = policy().after_verification("nobody", false).unwrap_err();
        assert_eq!(
            (r.status(), r.reason.substatus(), r.reason.slug()),
            (401, 1, "logon_failed")
        );
    }

    #[test]
    fn challenge_quotes_the_realm() {
        assert_eq!(
            policy().challenges("/.portcullis/login"),
            vec![r#"Basic realm="Staff \"only\"", charset="UTF-8""#.to_string()]
        );
        let mut form = policy();
        form.schemes.push(Scheme::Form);
        assert_eq!(
            form.challenges("/.portcullis/login")[1],
            r#"Cookie realm="Staff \"only\"", form-action="/.portcullis/login""#
        );
    }
}
