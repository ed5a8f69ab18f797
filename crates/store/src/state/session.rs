//! Server-side sign-in sessions (form login), kept in the state backend.
//!
//! The browser holds only an opaque random id; the store is keyed by the SHA-256 of that id, so
//! a copy of the store (a Redis dump) holds no session a browser could present. (It does hold
//! the shared CSRF key: with it one can make CSRF tokens, which are worthless without the
//! victim's pre-session cookie, and the MAC of a pending second-factor step also covers a stamp
//! of the user's password hash, which is not in Redis.) A session ends when
//! it is idle longer than the idle timeout (each use pushes the deadline), when it is older than
//! its absolute lifetime (checked against the creation time it carries), or at sign-out.

use std::time::{SystemTime, UNIX_EPOCH};

/// One signed-in browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The user name.
    pub user: String,
    /// Unix time (seconds) of the sign-in.
    pub created: u64,
    /// The stamp of the password signed in with (see `StoredHash::stamp`).
    pub stamp: u64,
    /// The groups an identity provider gave the user at sign-in (an OpenID Connect session: the
    /// user is not in the local user store); `None` for a local user.
    pub groups: Option<Vec<String>>,
}

impl Session {
    /// A session for `user`, signed in now with the password whose stamp is `stamp`.
    pub fn new(user: &str, stamp: u64) -> Session {
        Session {
            user: user.to_owned(),
            created: unix_now(),
            stamp,
            groups: None,
        }
    }

    /// A session of a user an identity provider vouched for, with the groups it gave.
    pub fn external(user: &str, groups: Vec<String>) -> Session {
        Session {
            groups: Some(groups),
            ..Session::new(user, 0)
        }
    }

    /// The stored form: `v1 <created> <stamp> <user>` (the user last, so any name round-trips);
    /// `v2 <created> <stamp> <groups> <user>` for an identity provider's user (the groups one per
    /// line, base64url).
    pub fn encode(&self) -> String {
        use base64::Engine;
        match &self.groups {
            None => format!("v1 {} {:016x} {}", self.created, self.stamp, self.user),
            Some(groups) => format!(
                "v2 {} {:016x} {} {}",
                self.created,
                self.stamp,
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(groups.join("\n")),
                self.user
            ),
        }
    }

    /// Reads the stored form; `None` for anything else (an older format, damage).
    pub fn decode(s: &str) -> Option<Session> {
        use base64::Engine;
        let external = match s.split(' ').next()? {
            "v1" => false,
            "v2" => true,
            _ => return None,
        };
        let mut parts = s.splitn(if external { 5 } else { 4 }, ' ');
        parts.next()?;
        let created = parts.next()?.parse().ok()?;
        let stamp = u64::from_str_radix(parts.next()?, 16).ok()?;
        let groups = if external {
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(parts.next()?)
                .ok()?;
            let text = String::from_utf8(raw).ok()?;
            Some(
                text.split('\n')
                    .filter(|g| !g.is_empty())
                    .map(str::to_owned)
                    .collect(),
            )
        } else {
            None
        };
        let user = parts.next()?;
        (!user.is_empty()).then(|| Session {
            user: user.to_owned(),
            created,
            stamp,
            groups,
        })
    }
}

/// A new session id: 32 random bytes, base64url (43 characters).
pub fn new_id() -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The store key of a session id (hex SHA-256): ids never reach the store.
pub fn key_of(id: &str) -> String {
    crate::sha256_hex(id.as_bytes())
}

/// Whether `id` has the shape of an id we issue (43 base64url characters): anything else is
/// refused without a store round trip.
pub fn well_formed(id: &str) -> bool {
    id.len() == 43
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_round_trip_any_user_name() {
        for user in ["alice", "bob smith", "x y z", "é"] {
            let s = Session {
                user: user.into(),
                created: 42,
                stamp: 0xdead_beef,
                groups: None,
            };
            assert_eq!(Session::decode(&s.encode()), Some(s));
            for groups in [vec![], vec!["admins".to_owned(), "Domain Users".to_owned()]] {
                let s = Session::external(user, groups);
                assert_eq!(Session::decode(&s.encode()), Some(s));
            }
        }
        assert_eq!(Session::decode("v2 1 0 alice"), None);
        assert_eq!(Session::decode("v1 x 0 alice"), None);
        assert_eq!(Session::decode("v1 1 zz alice"), None);
        assert_eq!(Session::decode("v1 1 0 "), None);
    }

    #[test]
    fn ids_are_unique_well_formed_and_never_stored() {
        let a = new_id();
        let b = new_id();
        assert_ne!(a, b);
        assert!(well_formed(&a));
        assert!(!well_formed("short"));
        assert!(!well_formed(&format!("{}!", &a[..42])));
        assert_eq!(key_of(&a).len(), 64);
        assert!(!key_of(&a).contains(&a));
    }
}
