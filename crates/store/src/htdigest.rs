//! Digest users (RFC 7616) from an Apache htdigest file: `user:realm:HA1` lines, where a
//! 32-hex HA1 is MD5 (what Apache's `htdigest` writes) and a 64-hex HA1 is SHA-256 (a Portcullis
//! extension: `portcullis hash --digest`). Only lines of the configured realm are used. The file
//! is looked at again at most once a second and reloaded when it changed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use policy::DigestAlgorithm;

use crate::htpasswd::LineProblem;
use crate::verifier::FileStamp;

/// `H(data)` of `algorithm`, as lower-case hex.
pub fn digest_hex(algorithm: DigestAlgorithm, data: &[u8]) -> String {
    digest_parts_hex(algorithm, &[data])
}

/// `H(part₀ ‖ part₁ ‖ …)` of `algorithm`, as lower-case hex (no joined copy of the parts).
fn digest_parts_hex(algorithm: DigestAlgorithm, parts: &[&[u8]]) -> String {
    match algorithm {
        DigestAlgorithm::Md5 => {
            use md5::Digest as _;
            let mut h = md5::Md5::new();
            for p in parts {
                h.update(p);
            }
            crate::hex(&h.finalize())
        }
        DigestAlgorithm::Sha256 => {
            use sha2::Digest as _;
            let mut h = sha2::Sha256::new();
            for p in parts {
                h.update(p);
            }
            crate::hex(&h.finalize())
        }
    }
}

/// The HA1 of `user` in `realm` for `algorithm`: `H(user:realm:password)`, hex.
pub fn ha1(algorithm: DigestAlgorithm, user: &str, realm: &str, password: &str) -> String {
    digest_hex(algorithm, format!("{user}:{realm}:{password}").as_bytes())
}

/// The HA1 line of `user` in `realm` for `algorithm` (`htdigest` format).
pub fn ha1_line(algorithm: DigestAlgorithm, user: &str, realm: &str, password: &str) -> String {
    format!("{user}:{realm}:{}", ha1(algorithm, user, realm, password))
}

/// The `response` a client must send (RFC 7616 §3.4.1, `qop=auth`): `KD(HA1, nonce:nc:cnonce:
/// qop:H(method:uri))`.
#[allow(clippy::too_many_arguments)]
pub fn expected_response(
    algorithm: DigestAlgorithm,
    ha1: &str,
    method: &str,
    uri: &str,
    nonce: &str,
    nc: &str,
    cnonce: &str,
    qop: &str,
) -> String {
    let ha2 = digest_parts_hex(algorithm, &[method.as_bytes(), b":", uri.as_bytes()]);
    digest_parts_hex(
        algorithm,
        &[
            ha1.as_bytes(),
            b":",
            nonce.as_bytes(),
            b":",
            nc.as_bytes(),
            b":",
            cnonce.as_bytes(),
            b":",
            qop.as_bytes(),
            b":",
            ha2.as_bytes(),
        ],
    )
}

/// Whether two responses (lower-case hex) are equal, in time that does not depend on where they
/// differ.
pub fn responses_match(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// One user's HA1 values (lower-case hex).
#[derive(Debug, Clone, Default)]
struct Ha1 {
    md5: Option<String>,
    sha256: Option<String>,
}

/// The users of one realm.
#[derive(Debug, Default)]
pub struct DigestUsers {
    by_name: HashMap<String, Ha1>,
    /// `H(user:realm)` per algorithm → user (for `userhash=true`).
    by_hash: HashMap<(DigestAlgorithm, String), String>,
}

impl DigestUsers {
    /// Reads htdigest `text`, keeping the lines of `realm`.
    pub fn parse(text: &str, realm: &str) -> (DigestUsers, Vec<LineProblem>) {
        let mut users = DigestUsers::default();
        let mut problems = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let problem = |message: &str| LineProblem {
                line: n + 1,
                message: message.to_owned(),
            };
            let mut fields = line.splitn(3, ':');
            let (Some(user), Some(line_realm), Some(ha1)) =
                (fields.next(), fields.next(), fields.next())
            else {
                problems.push(problem("not a user:realm:HA1 line"));
                continue;
            };
            if line_realm != realm {
                continue;
            }
            if user.is_empty() || user.chars().any(char::is_control) {
                problems.push(problem("the user name is empty or has control characters"));
                continue;
            }
            let ha1 = ha1.trim().to_ascii_lowercase();
            if !ha1.bytes().all(|b| b.is_ascii_hexdigit()) {
                problems.push(problem("the HA1 is not hex"));
                continue;
            }
            let entry = users.by_name.entry(user.to_owned()).or_default();
            match ha1.len() {
                32 => entry.md5 = Some(ha1),
                64 => entry.sha256 = Some(ha1),
                _ => {
                    problems.push(problem(
                        "the HA1 is neither 32 hex digits (MD5) nor 64 (SHA-256)",
                    ));
                    continue;
                }
            }
        }
        users.index(realm);
        (users, problems)
    }

    /// The users of the user database's Digest rows (already of `realm`).
    pub fn from_rows(rows: Vec<crate::sqlite::DigestRow>, realm: &str) -> Self {
        let mut users = DigestUsers::default();
        for (name, md5, sha256) in rows {
            let ok = |h: Option<String>, len: usize| {
                h.map(|h| h.to_ascii_lowercase())
                    .filter(|h| h.len() == len && h.bytes().all(|b| b.is_ascii_hexdigit()))
            };
            users.by_name.insert(
                name,
                Ha1 {
                    md5: ok(md5, 32),
                    sha256: ok(sha256, 64),
                },
            );
        }
        users.index(realm);
        users
    }

    fn index(&mut self, realm: &str) {
        for user in self.by_name.keys() {
            for algorithm in [DigestAlgorithm::Md5, DigestAlgorithm::Sha256] {
                let hash = digest_hex(algorithm, format!("{user}:{realm}").as_bytes());
                self.by_hash.insert((algorithm, hash), user.clone());
            }
        }
    }

    /// The HA1 of `user` for `algorithm`, if the file has one.
    pub fn ha1(&self, user: &str, algorithm: DigestAlgorithm) -> Option<&str> {
        let h = self.by_name.get(user)?;
        match algorithm {
            DigestAlgorithm::Md5 => h.md5.as_deref(),
            DigestAlgorithm::Sha256 => h.sha256.as_deref(),
        }
    }

    /// The user whose `H(user:realm)` is `hash` (lower-case hex).
    pub fn by_userhash(&self, algorithm: DigestAlgorithm, hash: &str) -> Option<&str> {
        self.by_hash
            .get(&(algorithm, hash.to_ascii_lowercase()))
            .map(String::as_str)
    }

    /// How many users the realm has.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether the realm has no users.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// Where the Digest users are.
enum Source {
    /// An htdigest file, and the version loaded.
    File(PathBuf, Mutex<Option<FileStamp>>),
    /// The SQLite user database (`users passwd` writes the HA1 values while `digest` is on), and
    /// the `data_version` loaded.
    Db(Mutex<crate::sqlite::UserDb>, std::sync::atomic::AtomicI64),
}

/// The Digest users (`[auth.digest] users`, or the user database), reloaded when they change.
pub struct DigestStore {
    source: Source,
    realm: String,
    users: ArcSwap<DigestUsers>,
    poll: crate::Throttle,
}

impl DigestStore {
    /// Loads `path` for `realm`.
    pub fn open(path: &Path, realm: &str) -> std::io::Result<DigestStore> {
        let stamp = FileStamp::of(path)?;
        let text = std::fs::read_to_string(path)?;
        let (users, problems) = DigestUsers::parse(&text, realm);
        log(path, realm, &users, &problems);
        Ok(DigestStore {
            source: Source::File(path.to_owned(), Mutex::new(Some(stamp))),
            realm: realm.to_owned(),
            users: ArcSwap::from_pointee(users),
            poll: crate::Throttle::new(Duration::from_secs(1)),
        })
    }

    /// Reads the HA1 values of `realm` from the user database at `path`.
    pub fn open_db(path: &Path, realm: &str) -> Result<DigestStore, crate::sqlite::DbError> {
        let db = crate::sqlite::UserDb::open(path)?;
        let version = db.data_version()?;
        let users = DigestUsers::from_rows(db.digest_rows(realm)?, realm);
        if users.is_empty() {
            tracing::warn!(
                "{}: no user has Digest values for the realm \"{realm}\" yet: set passwords again with portcullis users passwd (they are stored while digest is on)",
                path.display()
            );
        }
        Ok(DigestStore {
            source: Source::Db(Mutex::new(db), std::sync::atomic::AtomicI64::new(version)),
            realm: realm.to_owned(),
            users: ArcSwap::from_pointee(users),
            poll: crate::Throttle::new(Duration::from_secs(1)),
        })
    }

    /// The users now (the file is looked at again at most once a second: a `stat`).
    pub fn users(&self) -> Arc<DigestUsers> {
        if self.poll.due() {
            self.reload_if_changed();
        }
        self.users.load_full()
    }

    fn reload_if_changed(&self) {
        match &self.source {
            Source::File(path, stamp) => {
                let mut stamp = stamp.lock().unwrap_or_else(PoisonError::into_inner);
                let Ok(now) = FileStamp::of(path) else {
                    return;
                };
                if *stamp == Some(now) {
                    return;
                }
                match std::fs::read_to_string(path) {
                    Ok(text) => {
                        let (users, problems) = DigestUsers::parse(&text, &self.realm);
                        log(path, &self.realm, &users, &problems);
                        self.users.store(Arc::new(users));
                        *stamp = Some(now);
                    }
                    Err(e) => tracing::error!(
                        "cannot read the htdigest file {}: {e}; keeping the previous users",
                        path.display()
                    ),
                }
            }
            Source::Db(db, version) => {
                use std::sync::atomic::Ordering;
                let db = db.lock().unwrap_or_else(PoisonError::into_inner);
                let loaded = db.data_version().and_then(|v| {
                    if v == version.load(Ordering::Relaxed) {
                        return Ok(None);
                    }
                    Ok(Some((v, db.digest_rows(&self.realm)?)))
                });
                match loaded {
                    Ok(None) => {}
                    Ok(Some((v, rows))) => {
                        version.store(v, Ordering::Relaxed);
                        self.users
                            .store(Arc::new(DigestUsers::from_rows(rows, &self.realm)));
                    }
                    Err(e) => tracing::error!(
                        "cannot read the Digest users of the user database: {e}; keeping the previous ones"
                    ),
                }
            }
        }
    }
}

fn log(path: &Path, realm: &str, users: &DigestUsers, problems: &[LineProblem]) {
    for p in problems {
        tracing::warn!("{}:{}: {}", path.display(), p.line, p.message);
    }
    if users.is_empty() {
        tracing::warn!(
            "{}: no users in realm \"{realm}\"; every Digest sign-in will be refused",
            path.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_of_the_realm_are_read_md5_and_sha256() {
        let md5 = ha1_line(DigestAlgorithm::Md5, "alice", "R", "pw");
        let sha = ha1_line(DigestAlgorithm::Sha256, "alice", "R", "pw");
        let other = ha1_line(DigestAlgorithm::Md5, "bob", "Other", "pw");
        let text = format!("{md5}\n{sha}\n{other}\nbroken\ncarol:R:xyz\n");
        let (users, problems) = DigestUsers::parse(&text, "R");
        assert_eq!(users.len(), 1);
        assert_eq!(
            users.ha1("alice", DigestAlgorithm::Md5),
            md5.rsplit(':').next()
        );
        assert_eq!(
            users.ha1("alice", DigestAlgorithm::Sha256),
            sha.rsplit(':').next()
        );
        assert!(users.ha1("bob", DigestAlgorithm::Md5).is_none());
        assert_eq!(problems.len(), 2, "{problems:?}");
        let hash = digest_hex(DigestAlgorithm::Sha256, b"alice:R");
        assert_eq!(
            users.by_userhash(DigestAlgorithm::Sha256, &hash),
            Some("alice")
        );
    }

    #[test]
    fn the_rfc_7616_examples_give_their_responses() {
        // RFC 7616 §3.9.1: Mufasa / http-auth@example.org / Circle of Life, MD5 and SHA-256.
        let nonce = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v";
        let cnonce = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";
        for (algorithm, response) in [
            (DigestAlgorithm::Md5, "8ca523f5e9506fed4657c9700eebdbec"),
            (
                DigestAlgorithm::Sha256,
                "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
            ),
        ] {
            let line = ha1_line(
                algorithm,
                "Mufasa",
                "http-auth@example.org",
                "Circle of Life",
            );
            let ha1 = line.rsplit(':').next().unwrap();
            assert_eq!(
                expected_response(
                    algorithm,
                    ha1,
                    "GET",
                    "/dir/index.html",
                    nonce,
                    "00000001",
                    cnonce,
                    "auth"
                ),
                response,
                "{algorithm:?}"
            );
        }
        assert!(responses_match("ab", "ab") && !responses_match("ab", "ac"));
        assert!(!responses_match("ab", "abc"));
    }

    #[test]
    fn apache_htdigest_md5_is_the_rfc_2617_ha1() {
        // RFC 2617 §3.5: Mufasa / testrealm@host.com / Circle Of Life.
        assert_eq!(
            ha1_line(
                DigestAlgorithm::Md5,
                "Mufasa",
                "testrealm@host.com",
                "Circle Of Life"
            ),
            "Mufasa:testrealm@host.com:939e7578ed9e3c518a452acee763bce9"
        );
    }
}
