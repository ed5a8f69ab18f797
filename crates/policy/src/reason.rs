//! Why a request was refused, and what status that becomes.
//!
//! As in IIS, the *reason* fixes the sub-status and the *action* (`deny_action`) chooses the
//! status; reasons without a configurable action have a fixed status. This module is the single
//! table that maps them, so nothing else in the code base decides a status.

use std::fmt;
use std::time::Duration;

/// The pipeline phases, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    /// Reading the request: framing, header size and time.
    Accept,
    /// Determining the client address.
    Client,
    /// Static IP and host-name restrictions.
    Ip,
    /// Dynamic limits: concurrency and rate.
    Dynamic,
    /// Authentication.
    Authenticate,
    /// URL authorization rules.
    Authorize,
    /// External authorization filter.
    Filter,
    /// Forwarding to the upstream.
    Proxy,
}

impl Phase {
    /// Lower-case name used in traces and logs.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Accept => "accept",
            Phase::Client => "client",
            Phase::Ip => "ip",
            Phase::Dynamic => "dynamic",
            Phase::Authenticate => "authenticate",
            Phase::Authorize => "authorize",
            Phase::Filter => "filter",
            Phase::Proxy => "proxy",
        }
    }
}

/// What a deny list does with a refused request (`deny_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DenyAction {
    /// 401 with a challenge.
    Unauthorized,
    /// 403, the IIS default.
    #[default]
    Forbidden,
    /// 404, to hide that anything is there.
    NotFound,
    /// Close the connection without a response.
    Abort,
    /// 429 with `Retry-After`.
    TooManyRequests,
}

impl DenyAction {
    /// Parses a config value.
    pub fn parse(s: &str) -> Option<DenyAction> {
        Some(match s {
            "unauthorized" => DenyAction::Unauthorized,
            "forbidden" => DenyAction::Forbidden,
            "not_found" => DenyAction::NotFound,
            "abort" => DenyAction::Abort,
            "too_many_requests" => DenyAction::TooManyRequests,
            _ => return None,
        })
    }

    /// The accepted config values.
    pub const NAMES: &'static [&'static str] = &[
        "unauthorized",
        "forbidden",
        "not_found",
        "abort",
        "too_many_requests",
    ];

    fn status(self) -> u16 {
        match self {
            DenyAction::Unauthorized => 401,
            DenyAction::Forbidden => 403,
            DenyAction::NotFound => 404,
            DenyAction::Abort => 0,
            DenyAction::TooManyRequests => 429,
        }
    }
}

macro_rules! reasons {
    ($( $(#[$doc:meta])* $variant:ident => $slug:literal, $status:literal, $sub:literal, $phase:ident, $title:literal; )*) => {
        /// The stable, machine-readable reason for a refusal.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Reason { $( $(#[$doc])* $variant, )* }

        impl Reason {
            /// Every reason, in table order.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant),*];

            /// The slug: metrics label and the last segment of the problem `type`.
            pub fn slug(self) -> &'static str { match self { $(Reason::$variant => $slug,)* } }

            /// The status when no `deny_action` applies.
            pub fn default_status(self) -> u16 { match self { $(Reason::$variant => $status,)* } }

            /// The IIS-style sub-status (0 when the reason has none).
            pub fn substatus(self) -> u16 { match self { $(Reason::$variant => $sub,)* } }

            /// The phase that produces this reason.
            pub fn phase(self) -> Phase { match self { $(Reason::$variant => Phase::$phase,)* } }

            /// A short human title.
            pub fn title(self) -> &'static str { match self { $(Reason::$variant => $title,)* } }

            /// Looks a reason up by slug.
            pub fn from_slug(slug: &str) -> Option<Reason> {
                match slug { $($slug => Some(Reason::$variant),)* _ => None }
            }
        }
    };
}

reasons! {
    /// No credentials were offered.
    NoCredentials => "no_credentials", 401, 2, Authenticate, "Sign-in required";
    /// Credentials were offered and refused.
    LogonFailed => "logon_failed", 401, 1, Authenticate, "Sign-in failed";
    /// The right password of a user with a second factor, sent with Basic (which cannot carry
    /// the code): the user signs in with the sign-in page.
    SecondFactorRequired => "second_factor_required", 401, 1, Authenticate, "This account needs its second factor";
    /// A bearer token was offered and is not a live token (unknown, revoked, its user disabled).
    TokenInvalid => "token_invalid", 401, 1, Authenticate, "The token was not accepted";
    /// A bearer token was offered past its expiry.
    TokenExpired => "token_expired", 401, 1, Authenticate, "The token has expired";
    /// A Digest response that is right but answers a nonce that has expired: the client
    /// signs again with the new nonce of the challenge (`stale=true`).
    StaleNonce => "stale_nonce", 401, 2, Authenticate, "The sign-in must be repeated";
    /// A client certificate is required (`server.tls.client_auth = "required"`) and none was sent.
    CertificateRequired => "certificate_required", 403, 7, Authenticate, "A client certificate is required";
    /// The client certificate is revoked (listed in `server.tls.crl`).
    CertificateRevoked => "certificate_revoked", 403, 13, Authenticate, "The client certificate is revoked";
    /// The client certificate does not chain to `server.tls.client_ca`, or is unusable.
    CertificateUntrusted => "certificate_untrusted", 403, 16, Authenticate, "The client certificate is not trusted";
    /// The client certificate has expired (or is not valid yet).
    CertificateExpired => "certificate_expired", 403, 17, Authenticate, "The client certificate has expired";
    /// The session ended (expired or unknown cookie).
    SessionExpired => "session_expired", 401, 2, Authenticate, "Your session ended";
    /// Too many failed sign-ins.
    LockedOut => "locked_out", 403, 505, Authenticate, "Temporarily locked out";
    /// A URL authorization rule denied the user.
    AclDenied => "acl_denied", 401, 3, Authorize, "Access denied by a rule";
    /// The external filter refused.
    FilterDenied => "filter_denied", 401, 4, Filter, "Access denied by a filter";
    /// The application itself answered 401.
    AppDenied => "app_denied", 401, 5, Proxy, "The application refused access";
    /// Too many requests in flight from this client.
    ConcurrentLimit => "concurrent_limit", 403, 501, Dynamic, "Too many simultaneous requests";
    /// Too many requests per interval from this client.
    RateLimit => "rate_limit", 403, 502, Dynamic, "Too many requests";
    /// The client address is on a deny list.
    IpDenied => "ip_denied", 403, 503, Ip, "Your network address is blocked";
    /// The client's host name is on a deny list.
    HostDenied => "host_denied", 403, 504, Ip, "Your host name is blocked";
    /// A trusted proxy sent an unreadable forwarding header.
    BadForwardedHeader => "bad_forwarded_header", 400, 10, Client, "Bad forwarding header";
    /// The request is malformed.
    BadRequest => "bad_request", 400, 0, Accept, "Bad request";
    /// The request headers did not arrive in time.
    HeaderTimeout => "header_timeout", 408, 0, Accept, "Request timed out";
    /// The request headers are too large.
    HeadersTooLarge => "headers_too_large", 431, 0, Accept, "Request headers too large";
    /// The upstream could not be reached.
    UpstreamUnavailable => "upstream_unavailable", 502, 0, Proxy, "The application is unavailable";
    /// The upstream did not answer in time.
    UpstreamTimeout => "upstream_timeout", 504, 0, Proxy, "The application did not answer in time";
    /// The shared state store is down and the policy is to fail closed.
    StateUnavailable => "state_unavailable", 503, 0, Dynamic, "Temporarily unavailable";
    /// The external filter could not be asked and the policy is to fail closed.
    FilterUnavailable => "filter_unavailable", 503, 0, Filter, "Temporarily unavailable";
    /// Every password-checking worker is busy for longer than `auth.verify_queue_timeout`.
    VerifierBusy => "verifier_busy", 503, 0, Authenticate, "Sign-in is busy";
    /// Sign-in with the identity provider (OpenID Connect) did not succeed: refused by the
    /// provider or by `oidc.allowed_groups`, or a callback that is not this browser's.
    OidcFailed => "oidc_failed", 401, 1, Authenticate, "Sign-in with the identity provider failed";
    /// The directory or database that holds the users did not answer.
    DirectoryUnavailable => "directory_unavailable", 503, 0, Authenticate, "Sign-in is unavailable";
    /// The request uses a framing the gateway does not implement (`Transfer-Encoding: gzip`).
    NotImplemented => "not_implemented", 501, 0, Accept, "Not implemented";
    /// A bug or an unexpected failure inside the gateway.
    InternalError => "internal_error", 500, 0, Proxy, "Internal error";
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.slug())
    }
}

/// A refusal: the reason, the action that shapes the response, and what the operator needs to
/// know about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Why.
    pub reason: Reason,
    /// The configured action, for reasons that have one.
    pub action: Option<DenyAction>,
    /// How long the client should wait before retrying.
    pub retry_after: Option<Duration>,
    /// What decided it, for the detailed page, `explain` and the operator's log (never secrets).
    pub detail: String,
    /// What the client is told beyond the reason's own explanation, on every page (e.g. when an
    /// expired token expired); never a secret, never what would tell a guesser anything.
    pub note: Option<String>,
}

impl Refusal {
    /// A refusal with the reason's default status.
    pub fn new(reason: Reason) -> Refusal {
        Refusal {
            reason,
            action: None,
            retry_after: None,
            detail: String::new(),
            note: None,
        }
    }

    /// Sets the operator-facing detail.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Refusal {
        self.detail = detail.into();
        self
    }

    /// Sets the note every page shows.
    pub fn with_note(mut self, note: impl Into<String>) -> Refusal {
        self.note = Some(note.into());
        self
    }

    /// Applies a configured `deny_action`.
    pub fn with_action(mut self, action: DenyAction) -> Refusal {
        self.action = Some(action);
        self
    }

    /// Sets `Retry-After`.
    pub fn with_retry_after(mut self, after: Duration) -> Refusal {
        self.retry_after = Some(after);
        self
    }

    /// The HTTP status; 0 means "abort the connection without a response".
    pub fn status(&self) -> u16 {
        match self.action {
            Some(a) => a.status(),
            None => self.reason.default_status(),
        }
    }

    /// Whether the answer is to close the connection without a response
    /// (`deny_action = "abort"`).
    pub fn aborts(&self) -> bool {
        self.action == Some(DenyAction::Abort)
    }

    /// Whether the response must carry a `WWW-Authenticate` challenge (every 401 does).
    pub fn needs_challenge(&self) -> bool {
        self.status() == 401
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_round_trip_and_are_unique() {
        for r in Reason::ALL {
            assert_eq!(Reason::from_slug(r.slug()), Some(*r));
        }
        let mut slugs: Vec<_> = Reason::ALL.iter().map(|r| r.slug()).collect();
        slugs.sort();
        slugs.dedup();
        assert_eq!(slugs.len(), Reason::ALL.len());
    }

    #[test]
    fn action_chooses_status_reason_keeps_substatus() {
        let r = Refusal::new(Reason::IpDenied);
        assert_eq!((r.status(), r.reason.substatus()), (403, 503));
        let r = r.with_action(DenyAction::Unauthorized);
        assert_eq!((r.status(), r.reason.substatus()), (401, 503));
        assert!(r.needs_challenge());
        assert_eq!(
            Refusal::new(Reason::RateLimit)
                .with_action(DenyAction::Abort)
                .status(),
            0
        );
    }

    #[test]
    fn every_action_parses() {
        for n in DenyAction::NAMES {
            assert!(DenyAction::parse(n).is_some(), "{n}");
        }
    }
}
