//! Apache `htpasswd` files: parsing, password hashes, and password checks.
//!
//! We accept every format Debian's `htpasswd` (apache2-utils) writes except the
//! two that cannot be made safe: DES crypt (`-d`, truncates passwords to eight
//! characters) and plaintext (`-p`). Those lines, and anything else we do not
//! recognise, are reported as [`LineProblem`]s and skipped so that one bad line
//! does not lock every other user out. Problems never quote the hash or
//! password, because these messages end up in logs.
//!
//! Parsing follows Apache's `mod_authn_file`: surrounding whitespace is trimmed,
//! blank lines and `#` comments are ignored, the user name runs up to the first
//! `:`, the hash up to the next one, and the first line for a user name wins.
//!
//! Checking an unknown user must take as long as checking a known one, or
//! response times reveal which user names exist. [`UserFile`] therefore keeps a
//! dummy hash built with the algorithm and cost of the costliest hash in the
//! file and verifies unknown users against it.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::path::Path;

use argon2::Argon2;
use argon2::password_hash::PasswordHasher;
use argon2::password_hash::phc::PasswordHash as PhcHash;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha_crypt::{PasswordVerifier as _, ShaCrypt};
use sha1::{Digest as _, Sha1};
use subtle::ConstantTimeEq;

use crate::md5crypt::{self, ITOA64};

/// One line of a user file that was skipped, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineProblem {
    /// 1-based line number in the file.
    pub line: usize,
    /// Why the line was skipped; never contains a hash or password.
    pub message: String,
}

impl fmt::Display for LineProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// A string that is not a supported password hash; the reason never quotes it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct HashFormatError {
    reason: String,
}

impl HashFormatError {
    fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }
}

/// An inline (configuration-provided) user that could not be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("user {user:?}: {reason}")]
pub struct InlineUserError {
    /// The offending user name.
    pub user: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Failure to produce a new password hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    /// The bcrypt cost is outside what bcrypt allows.
    #[error("bcrypt cost {0} is outside the allowed range 4 to 31")]
    BcryptCost(u32),
    /// bcrypt would silently ignore part of this password.
    #[error("bcrypt only uses the first 71 bytes of a password; use argon2id for longer ones")]
    PasswordTooLong,
}

/// The password hashing scheme of a [`StoredHash`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashAlgorithm {
    /// bcrypt `$2y$`, `$2a$`, `$2b$` (`htpasswd -B`).
    Bcrypt,
    /// Apache MD5-crypt `$apr1$` (`htpasswd -m`, the default).
    Apr1,
    /// glibc MD5-crypt `$1$`.
    Md5Crypt,
    /// Unsalted SHA-1 `{SHA}` (`htpasswd -s`).
    Sha1,
    /// SHA-256-crypt `$5$` (`htpasswd -2`).
    Sha256Crypt,
    /// SHA-512-crypt `$6$` (`htpasswd -5`).
    Sha512Crypt,
    /// Argon2 `$argon2id$` (also `$argon2i$`, `$argon2d$`), from `portcullis hash`.
    Argon2,
}

/// A parsed password hash from a user file, able to check passwords.
#[derive(Clone)]
pub struct StoredHash {
    kind: Kind,
    /// 64 bits of the SHA-256 of the hash as written: changes whenever the password does
    /// (sessions remember it, so a new password ends the sessions started with the old one).
    stamp: u64,
}

#[derive(Clone)]
enum Kind {
    Bcrypt {
        encoded: String,
        cost: u32,
    },
    Md5Crypt {
        apr1: bool,
        salt: String,
        encoded: [u8; md5crypt::ENCODED_LEN],
    },
    Sha1 {
        digest: [u8; 20],
    },
    ShaCrypt {
        algorithm: sha_crypt::Algorithm,
        rounds: u32,
        encoded: String,
    },
    Argon2 {
        algorithm: argon2::Algorithm,
        version: argon2::Version,
        params: argon2::Params,
        salt: Vec<u8>,
        expected: Vec<u8>,
    },
}

impl StoredHash {
    /// A rough estimate of the work one check costs (microseconds on a 2020s core), only for
    /// comparing hashes of different algorithms.
    fn work_estimate(&self) -> f64 {
        match &self.kind {
            // bcrypt cost 10 ≈ 50 ms, doubling per step.
            Kind::Bcrypt { cost, .. } => {
                50_000.0 * 2f64.powi(i32::try_from(*cost).unwrap_or(31) - 10)
            }
            // 1000 MD5 rounds.
            Kind::Md5Crypt { .. } => 300.0,
            Kind::Sha1 { .. } => 1.0,
            Kind::ShaCrypt { rounds, .. } => f64::from(*rounds) * 0.7,
            // Memory-hard: time grows with memory × passes.
            Kind::Argon2 { params, .. } => {
                f64::from(params.m_cost()) * f64::from(params.t_cost()) * 0.75
            }
        }
    }

    /// Parses a hash string as found after the `:` of an htpasswd line.
    ///
    /// # Errors
    /// Returns [`HashFormatError`] for unsupported (DES crypt, plaintext,
    /// yescrypt, ...) or malformed hashes.
    pub fn parse(hash: &str) -> Result<Self, HashFormatError> {
        let kind = if hash.starts_with("$2y$")
            || hash.starts_with("$2a$")
            || hash.starts_with("$2b$")
        {
            parse_bcrypt(hash)?
        } else if hash.starts_with("$2x$") {
            return Err(HashFormatError::new(
                "bcrypt $2x$ hashes (from a buggy implementation) are not supported; re-create it with htpasswd -B",
            ));
        } else if let Some(rest) = hash.strip_prefix("$apr1$") {
            parse_md5crypt(rest, true)?
        } else if let Some(rest) = hash.strip_prefix("$1$") {
            parse_md5crypt(rest, false)?
        } else if let Some(rest) = hash.strip_prefix("{SHA}") {
            parse_sha1(rest)?
        } else if let Some(rest) = hash.strip_prefix("$5$") {
            parse_sha_crypt(hash, rest, sha_crypt::Algorithm::Sha256Crypt)?
        } else if let Some(rest) = hash.strip_prefix("$6$") {
            parse_sha_crypt(hash, rest, sha_crypt::Algorithm::Sha512Crypt)?
        } else if hash.starts_with("$argon2") {
            parse_argon2(hash)?
        } else if hash.starts_with("$y$") || hash.starts_with("$gy$") {
            return Err(HashFormatError::new(
                "yescrypt hashes are not supported; re-create it with htpasswd -B",
            ));
        } else if hash.starts_with('$') {
            return Err(HashFormatError::new(
                "unsupported password hash scheme; re-create it with htpasswd -B",
            ));
        } else if hash.len() == 13 && hash.bytes().all(|b| ITOA64.contains(&b)) {
            return Err(HashFormatError::new(
                "DES crypt hashes (htpasswd -d) are not supported: they ignore all but 8 characters; re-create it with htpasswd -B",
            ));
        } else {
            return Err(HashFormatError::new(
                "unrecognised password hash (plaintext passwords are not supported); re-create it with htpasswd -B",
            ));
        };
        Ok(Self {
            kind,
            stamp: stamp_of(hash),
        })
    }

    /// Identifies this password (not the password itself): see [`StoredHash`].
    #[must_use]
    pub fn stamp(&self) -> u64 {
        self.stamp
    }

    /// Returns whether `password` matches this hash (constant-time comparison).
    #[must_use]
    pub fn verify(&self, password: &[u8]) -> bool {
        match &self.kind {
            // bcrypt compares with `subtle` internally; like Apache it uses only
            // the first 72 bytes of the password.
            Kind::Bcrypt { encoded, .. } => bcrypt::verify(password, encoded).unwrap_or(false),
            Kind::Md5Crypt {
                apr1,
                salt,
                encoded,
            } => {
                let magic: &[u8] = if *apr1 { b"$apr1$" } else { b"$1$" };
                let computed = md5crypt::md5_crypt(password, salt.as_bytes(), magic);
                computed.ct_eq(encoded).into()
            }
            Kind::Sha1 { digest } => {
                let computed: [u8; 20] = Sha1::digest(password).into();
                computed.ct_eq(digest).into()
            }
            // sha-crypt compares in constant time (`ctutils`).
            Kind::ShaCrypt { encoded, .. } => ShaCrypt::default()
                .verify_password(password, encoded.as_str())
                .is_ok(),
            Kind::Argon2 {
                algorithm,
                version,
                params,
                salt,
                expected,
            } => {
                let mut computed = vec![0u8; expected.len()];
                Argon2::new(*algorithm, *version, params.clone())
                    .hash_password_into(password, salt, &mut computed)
                    .is_ok()
                    && bool::from(computed.ct_eq(expected))
            }
        }
    }

    /// The hashing scheme of this hash.
    #[must_use]
    pub fn algorithm(&self) -> HashAlgorithm {
        match &self.kind {
            Kind::Bcrypt { .. } => HashAlgorithm::Bcrypt,
            Kind::Md5Crypt { apr1: true, .. } => HashAlgorithm::Apr1,
            Kind::Md5Crypt { apr1: false, .. } => HashAlgorithm::Md5Crypt,
            Kind::Sha1 { .. } => HashAlgorithm::Sha1,
            Kind::ShaCrypt {
                algorithm: sha_crypt::Algorithm::Sha256Crypt,
                ..
            } => HashAlgorithm::Sha256Crypt,
            Kind::ShaCrypt { .. } => HashAlgorithm::Sha512Crypt,
            Kind::Argon2 { .. } => HashAlgorithm::Argon2,
        }
    }

    /// A hash of a random password with the same algorithm and cost parameters.
    ///
    /// Used to make checks for unknown users cost as much as for known ones.
    fn dummy_like(&self) -> Self {
        let password: [u8; 24] = rand::random();
        let kind = match &self.kind {
            Kind::Bcrypt { cost, .. } => {
                let encoded = bcrypt::hash_with_salt(password, *cost, rand::random())
                    .map(|parts| parts.format_for_version(bcrypt::Version::TwoY))
                    .unwrap_or_default();
                Kind::Bcrypt {
                    encoded,
                    cost: *cost,
                }
            }
            Kind::Md5Crypt { apr1, .. } => {
                let salt: String = (0..md5crypt::MAX_SALT_LEN)
                    .map(|_| char::from(ITOA64[usize::from(rand::random::<u8>() & 0x3f)]))
                    .collect();
                let magic: &[u8] = if *apr1 { b"$apr1$" } else { b"$1$" };
                let encoded = md5crypt::md5_crypt(&password, salt.as_bytes(), magic);
                Kind::Md5Crypt {
                    apr1: *apr1,
                    salt,
                    encoded,
                }
            }
            Kind::Sha1 { .. } => Kind::Sha1 {
                digest: rand::random(),
            },
            Kind::ShaCrypt {
                algorithm, rounds, ..
            } => {
                let salt: [u8; 12] = rand::random();
                let encoded = sha_crypt::Params::new(*rounds)
                    .ok()
                    .and_then(|params| {
                        ShaCrypt::new(*algorithm, params)
                            .hash_password_with_salt(&password, &salt)
                            .ok()
                    })
                    .map(|hash| hash.as_password_hash_ref().as_str().to_owned())
                    .unwrap_or_default();
                Kind::ShaCrypt {
                    algorithm: *algorithm,
                    rounds: *rounds,
                    encoded,
                }
            }
            Kind::Argon2 {
                algorithm,
                version,
                params,
                salt,
                expected,
            } => {
                let salt: Vec<u8> = (0..salt.len()).map(|_| rand::random()).collect();
                let mut output = vec![0u8; expected.len()];
                // Parameters were validated when parsing, so this cannot fail.
                let _ = Argon2::new(*algorithm, *version, params.clone()).hash_password_into(
                    &password,
                    &salt,
                    &mut output,
                );
                Kind::Argon2 {
                    algorithm: *algorithm,
                    version: *version,
                    params: params.clone(),
                    salt,
                    expected: output,
                }
            }
        };
        Self { kind, stamp: 0 }
    }
}

fn stamp_of(hash: &str) -> u64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(hash.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

impl fmt::Display for StoredHash {
    /// Algorithm and cost parameters, never the hash itself.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Bcrypt { cost, .. } => write!(f, "bcrypt (cost {cost})"),
            Kind::Md5Crypt { apr1: true, .. } => f.write_str("apr1-md5"),
            Kind::Md5Crypt { apr1: false, .. } => f.write_str("md5-crypt"),
            Kind::Sha1 { .. } => f.write_str("sha1"),
            Kind::ShaCrypt {
                algorithm, rounds, ..
            } => write!(f, "{} (rounds {rounds})", sha_crypt_name(*algorithm)),
            Kind::Argon2 {
                algorithm,
                version,
                params,
                salt,
                expected,
            } => write!(
                f,
                "{algorithm} (v={}, m={}, t={}, p={}, salt {} bytes, output {} bytes)",
                u32::from(*version),
                params.m_cost(),
                params.t_cost(),
                params.p_cost(),
                salt.len(),
                expected.len()
            ),
        }
    }
}

impl fmt::Debug for StoredHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoredHash({self})")
    }
}

fn sha_crypt_name(algorithm: sha_crypt::Algorithm) -> &'static str {
    if algorithm == sha_crypt::Algorithm::Sha256Crypt {
        "sha256-crypt"
    } else {
        "sha512-crypt"
    }
}

fn parse_bcrypt(hash: &str) -> Result<Kind, HashFormatError> {
    let parts: bcrypt::HashParts = hash
        .parse()
        .map_err(|e| HashFormatError::new(format!("malformed bcrypt hash: {e}")))?;
    let cost = parts.get_cost();
    if !(4..=31).contains(&cost) {
        return Err(HashFormatError::new(format!(
            "bcrypt cost {cost} is outside the allowed range 4 to 31"
        )));
    }
    Ok(Kind::Bcrypt {
        encoded: hash.to_owned(),
        cost,
    })
}

fn parse_md5crypt(rest: &str, apr1: bool) -> Result<Kind, HashFormatError> {
    let malformed = || HashFormatError::new("malformed MD5-crypt hash");
    let (salt, encoded) = rest.split_once('$').ok_or_else(malformed)?;
    if salt.len() > md5crypt::MAX_SALT_LEN {
        return Err(malformed());
    }
    let encoded: [u8; md5crypt::ENCODED_LEN] =
        encoded.as_bytes().try_into().map_err(|_| malformed())?;
    if !encoded.iter().all(|b| ITOA64.contains(b)) {
        return Err(malformed());
    }
    Ok(Kind::Md5Crypt {
        apr1,
        salt: salt.to_owned(),
        encoded,
    })
}

fn parse_sha1(rest: &str) -> Result<Kind, HashFormatError> {
    let digest = BASE64
        .decode(rest)
        .ok()
        .and_then(|bytes| <[u8; 20]>::try_from(bytes).ok())
        .ok_or_else(|| HashFormatError::new("malformed {SHA} hash"))?;
    Ok(Kind::Sha1 { digest })
}

fn parse_sha_crypt(
    hash: &str,
    rest: &str,
    algorithm: sha_crypt::Algorithm,
) -> Result<Kind, HashFormatError> {
    let name = sha_crypt_name(algorithm);
    let malformed = || HashFormatError::new(format!("malformed {name} hash"));
    let mut fields = rest.split('$');
    let mut salt = fields.next().ok_or_else(malformed)?;
    let mut rounds = sha_crypt::Params::RECOMMENDED_ROUNDS;
    if let Some(value) = salt.strip_prefix("rounds=") {
        rounds = value.parse().map_err(|_| malformed())?;
        if !(sha_crypt::Params::ROUNDS_MIN..=sha_crypt::Params::ROUNDS_MAX).contains(&rounds) {
            return Err(HashFormatError::new(format!(
                "{name} rounds {rounds} outside the allowed range"
            )));
        }
        salt = fields.next().ok_or_else(malformed)?;
    }
    let encoded = fields.next().ok_or_else(malformed)?;
    let expected_len = if algorithm == sha_crypt::Algorithm::Sha256Crypt {
        43
    } else {
        86
    };
    let salt_ok = (1..=16).contains(&salt.len())
        && salt
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"./+=,-".contains(&b));
    if fields.next().is_some()
        || !salt_ok
        || encoded.len() != expected_len
        || !encoded.bytes().all(|b| ITOA64.contains(&b))
        || sha_crypt::PasswordHashRef::new(hash).is_err()
    {
        return Err(malformed());
    }
    Ok(Kind::ShaCrypt {
        algorithm,
        rounds,
        encoded: hash.to_owned(),
    })
}

fn parse_argon2(hash: &str) -> Result<Kind, HashFormatError> {
    let malformed = |what: &str| HashFormatError::new(format!("malformed argon2 hash: {what}"));
    let phc = PhcHash::new(hash).map_err(|_| malformed("not a PHC string"))?;
    let algorithm = argon2::Algorithm::try_from(phc.algorithm.as_str())
        .map_err(|_| malformed("unknown variant"))?;
    // The reference implementation treats a missing `v=` as version 1.0.
    let version = argon2::Version::try_from(phc.version.unwrap_or(0x10))
        .map_err(|_| malformed("unknown version"))?;
    let params = argon2::Params::try_from(&phc).map_err(|_| malformed("invalid parameters"))?;
    let salt = phc.salt.as_ref().ok_or_else(|| malformed("missing salt"))?;
    let expected = phc.hash.as_ref().ok_or_else(|| malformed("missing hash"))?;
    if salt.len() < argon2::MIN_SALT_LEN {
        return Err(malformed("salt too short"));
    }
    Ok(Kind::Argon2 {
        algorithm,
        version,
        params,
        salt: salt.to_vec(),
        expected: expected.as_bytes().to_vec(),
    })
}

/// Users of an htpasswd file (or inline configuration): name to [`StoredHash`].
#[derive(Clone, Default)]
pub struct UserFile {
    users: HashMap<String, StoredHash>,
    /// Same algorithm and cost as the costliest entry; checked for unknown users.
    dummy: Option<StoredHash>,
}

impl fmt::Debug for UserFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserFile")
            .field("users", &self.users.len())
            .field("dummy", &self.dummy)
            .finish()
    }
}

impl UserFile {
    /// Parses htpasswd text; unusable lines are skipped and reported.
    #[must_use]
    pub fn parse(text: &str) -> (Self, Vec<LineProblem>) {
        Self::parse_bytes(text.as_bytes())
    }

    /// Reads and parses an htpasswd file; unusable lines are skipped and reported.
    ///
    /// # Errors
    /// Returns the I/O error if the file cannot be read.
    pub fn load(path: &Path) -> std::io::Result<(Self, Vec<LineProblem>)> {
        let bytes = std::fs::read(path)?;
        Ok(Self::parse_bytes(&bytes))
    }

    /// Builds a user set from `(user, hash string)` pairs, e.g. from configuration.
    ///
    /// # Errors
    /// Returns [`InlineUserError`] naming the first user with an empty or
    /// duplicate name or an unsupported hash.
    pub fn from_entries(entries: Vec<(String, String)>) -> Result<Self, InlineUserError> {
        let mut file = Self::default();
        let mut first: Option<StoredHash> = None;
        for (user, hash) in entries {
            let error = |reason: String| InlineUserError {
                user: user.clone(),
                reason,
            };
            if user.is_empty() {
                return Err(error("empty user name".into()));
            }
            if user.contains(':') {
                return Err(error("user name contains ':'".into()));
            }
            let stored = StoredHash::parse(hash.trim()).map_err(|e| error(e.to_string()))?;
            match file.users.entry(user.clone()) {
                Entry::Occupied(_) => return Err(error("duplicate user".into())),
                Entry::Vacant(slot) => {
                    if first.is_none() {
                        first = Some(stored.clone());
                    }
                    slot.insert(stored);
                }
            }
        }
        file.build_dummy_from(first);
        Ok(file)
    }

    fn parse_bytes(bytes: &[u8]) -> (Self, Vec<LineProblem>) {
        let mut file = Self::default();
        let mut problems = Vec::new();
        let mut first_line_of: HashMap<String, usize> = HashMap::new();
        let mut first_entry: Option<String> = None;

        for (index, raw) in bytes.split(|&b| b == b'\n').enumerate() {
            let line = index + 1;
            let mut problem = |message: String| problems.push(LineProblem { line, message });
            let Ok(text) = std::str::from_utf8(raw) else {
                problem("line is not valid UTF-8".into());
                continue;
            };
            let text = if line == 1 {
                text.strip_prefix('\u{feff}').unwrap_or(text)
            } else {
                text
            };
            let text = text.trim();
            if text.is_empty() || text.starts_with('#') {
                continue;
            }
            let Some((user, rest)) = text.split_once(':') else {
                problem("missing ':' between user name and password hash".into());
                continue;
            };
            if user.is_empty() {
                problem("empty user name".into());
                continue;
            }
            // Apache's first-match rule: the first line naming a user claims it,
            // even if that line turns out to be unusable (fail closed).
            match first_line_of.entry(user.to_owned()) {
                Entry::Occupied(first) => {
                    problem(format!(
                        "duplicate user {user:?} ignored; line {} defines it first",
                        first.get()
                    ));
                    continue;
                }
                Entry::Vacant(slot) => {
                    slot.insert(line);
                }
            }
            // Like Apache, anything after a second ':' is not part of the hash.
            let hash = rest.split(':').next().unwrap_or_default();
            if hash.is_empty() {
                problem(format!("user {user:?} has an empty password hash"));
                continue;
            }
            match StoredHash::parse(hash) {
                Ok(stored) => {
                    if first_entry.is_none() {
                        first_entry = Some(user.to_owned());
                    }
                    file.users.insert(user.to_owned(), stored);
                }
                Err(e) => problem(format!("user {user:?} skipped: {e}")),
            }
        }

        let first = first_entry.and_then(|user| file.users.get(&user).cloned());
        file.build_dummy_from(first);
        (file, problems)
    }

    /// The dummy copies the most expensive hash in the file (the first entry among equals): in a
    /// file mixing algorithms, an unknown user then costs at least what the strongest-protected
    /// users cost, instead of whatever the first line happens to use.
    fn build_dummy_from(&mut self, first: Option<StoredHash>) {
        let costliest = self
            .users
            .values()
            .max_by(|a, b| a.work_estimate().total_cmp(&b.work_estimate()))
            .cloned();
        let pick = match (first, costliest) {
            (Some(f), Some(c)) if c.work_estimate() > f.work_estimate() => Some(c),
            (f, c) => f.or(c),
        };
        self.dummy = pick.map(|hash| hash.dummy_like());
    }

    /// Checks a password; unknown users cost a dummy hash check and return `false`.
    #[must_use]
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        match self.users.get(user) {
            Some(hash) => hash.verify(password),
            None => {
                if let Some(dummy) = &self.dummy {
                    std::hint::black_box(dummy.verify(password));
                }
                false
            }
        }
    }

    /// Whether `user` exists.
    #[must_use]
    pub fn contains(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// The stored hash of `user`, if any.
    #[must_use]
    pub fn get(&self, user: &str) -> Option<&StoredHash> {
        self.users.get(user)
    }

    /// The dummy hash checked for unknown users (algorithm and cost of the costliest entry).
    #[must_use]
    pub fn timing_dummy(&self) -> Option<&StoredHash> {
        self.dummy.as_ref()
    }

    /// Number of users.
    #[must_use]
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether there are no users.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// Hashes a password with argon2id and default parameters (`portcullis hash`).
///
/// # Panics
/// Never in practice: default parameters and a 16-byte salt are always valid.
#[must_use]
pub fn hash_argon2id(password: &[u8]) -> String {
    let salt: [u8; 16] = rand::random();
    Argon2::default()
        .hash_password_with_salt(password, &salt)
        .map(|hash| hash.to_string())
        .expect("argon2id with default parameters and a 16-byte salt cannot fail")
}

/// Hashes a password with bcrypt as `$2y$` (like `htpasswd -B -C cost`).
///
/// # Errors
/// [`HashError::BcryptCost`] for a cost outside 4..=31, and
/// [`HashError::PasswordTooLong`] for passwords of 72 bytes or more, which
/// bcrypt would silently truncate.
pub fn hash_bcrypt(password: &[u8], cost: u32) -> Result<String, HashError> {
    if !(4..=31).contains(&cost) {
        return Err(HashError::BcryptCost(cost));
    }
    bcrypt::non_truncating_hash_with_salt(password, cost, rand::random())
        .map(|parts| parts.format_for_version(bcrypt::Version::TwoY))
        .map_err(|e| match e {
            bcrypt::BcryptError::CostNotAllowed(cost) => HashError::BcryptCost(cost),
            _ => HashError::PasswordTooLong,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `htpasswd -nbB -C 4 alice 'p@ss wörd'` (Debian apache2-utils).
    const BCRYPT: &str = "$2y$04$ANG5860cD6f1mcBA6Xz4yu3i3Dt3uEHpxmP2VK..hAiQSjOqd08mG";
    /// `openssl passwd -apr1 -salt abcdefgh 'p@ss wörd'`.
    const APR1: &str = "$apr1$abcdefgh$kOJTMCvat3K9n.uiGZK.J1";
    /// `openssl passwd -1 -salt saltsalt password`.
    const MD5_CRYPT: &str = "$1$saltsalt$qjXMvbEw8oaL.CzflDtaK/";
    /// `htpasswd -nbs alice 'p@ss wörd'`.
    const SHA1: &str = "{SHA}iFXrzdzW6SkQ4l5UHiG/hH6VbME=";
    /// `openssl passwd -5 -salt saltsalt 'p@ss wörd'`.
    const SHA256: &str = "$5$saltsalt$r9UqAdmng8m1HYhHhcrllKcKfe1GfAfkWztzPO0JS/8";
    /// `openssl passwd -6 -salt saltsalt 'p@ss wörd'`.
    const SHA512: &str = "$6$saltsalt$SFRaKnCT4od8vzOox5akmgot.pwmob2w0tVGdN06gV5VZs/v69UzCXuaGilC7TepAl6hl8Otr0oB1QIuAhgAu/";
    /// `htpasswd -nb -2 -r 12000 alice 'p@ss wörd'`.
    const SHA256_ROUNDS: &str =
        "$5$rounds=12000$gubMv8nxS55BnB./$8Jubcs1yUWP0DOQhf.5yeEj4DWeoQJLIsBR1JUYLixD";
    /// `htpasswd -nb -5 -r 1000 alice 'p@ss wörd'`.
    const SHA512_ROUNDS: &str = "$6$rounds=1000$ZC0Hgh1mX0pOZDkv$3WUgiqQV0BeUurf/6K/vOg3C5j0DOzYVEa63XyujQ.Qq/xkj3gybIhI94rmhJCaAvmEKpfBgvHau.Ppf6tuwC/";
    /// The reference implementation (Debian package `argon2`):
    /// `echo -n 'correct horse' | argon2 saltsalt1234 -id -t 2 -m 12 -p 1 -e`.
    const ARGON2ID: &str = "$argon2id$v=19$m=4096,t=2,p=1$c2FsdHNhbHQxMjM0$O8fg9N6D6UzLGHD4yGKanb5kg2xZEd428SxnRB2VDUs";
    /// `... | argon2 saltsalt1234 -id -t 1 -m 10 -p 2 -e`.
    const ARGON2ID_P2: &str = "$argon2id$v=19$m=1024,t=1,p=2$c2FsdHNhbHQxMjM0$pX+IPf87N/hxoDoauo5e4dQ5TXfhhtP85EvMrkRUtZY";
    /// `... | argon2 saltsalt1234 -id -t 1 -m 10 -p 1 -l 16 -e` (short output).
    const ARGON2ID_SHORT: &str =
        "$argon2id$v=19$m=1024,t=1,p=1$c2FsdHNhbHQxMjM0$uyae8SOxwWUQrn7lcifl2g";
    /// `... | argon2 saltsalt1234 -i -t 3 -m 10 -p 1 -e`.
    const ARGON2I: &str =
        "$argon2i$v=19$m=1024,t=3,p=1$c2FsdHNhbHQxMjM0$o3kvhwsKV2geGYOBCXEQxGJONEGBVZ//McjZd2DVTjc";
    /// `... | argon2 saltsalt1234 -id -v 10 -t 1 -m 10 -p 1 -e` (Argon2 1.0).
    const ARGON2ID_V10: &str = "$argon2id$v=16$m=1024,t=1,p=1$c2FsdHNhbHQxMjM0$N5q/TJNF0KEJtli4kQH/epxlndyT1+R8AN3y4QCvdGY";

    fn check(hash: &str, password: &str, algorithm: HashAlgorithm) {
        let stored = StoredHash::parse(hash).unwrap_or_else(|e| panic!("{hash}: {e}"));
        assert_eq!(stored.algorithm(), algorithm, "{hash}");
        assert!(stored.verify(password.as_bytes()), "{hash} refused");
        assert!(!stored.verify(b"wrong"), "{hash} accepted a wrong password");
        assert!(!stored.verify(b""), "{hash} accepted an empty password");
        let mut almost = password.as_bytes().to_vec();
        almost.pop();
        assert!(!stored.verify(&almost), "{hash} accepted a prefix");
    }

    #[test]
    fn fixed_vectors_verify() {
        let pw = "p@ss wörd";
        check(BCRYPT, pw, HashAlgorithm::Bcrypt);
        check(APR1, pw, HashAlgorithm::Apr1);
        check(MD5_CRYPT, "password", HashAlgorithm::Md5Crypt);
        check(SHA1, pw, HashAlgorithm::Sha1);
        check(SHA256, pw, HashAlgorithm::Sha256Crypt);
        check(SHA512, pw, HashAlgorithm::Sha512Crypt);
        check(SHA256_ROUNDS, pw, HashAlgorithm::Sha256Crypt);
        check(SHA512_ROUNDS, pw, HashAlgorithm::Sha512Crypt);
        let horse = "correct horse";
        check(ARGON2ID, horse, HashAlgorithm::Argon2);
        check(ARGON2ID_P2, horse, HashAlgorithm::Argon2);
        check(ARGON2ID_SHORT, horse, HashAlgorithm::Argon2);
        check(ARGON2I, horse, HashAlgorithm::Argon2);
        check(ARGON2ID_V10, horse, HashAlgorithm::Argon2);
        // Without `v=` the reference implementation means version 1.0.
        check(
            &ARGON2ID_V10.replace("v=16$", ""),
            horse,
            HashAlgorithm::Argon2,
        );
    }

    #[test]
    fn bcrypt_variants_are_accepted() {
        for prefix in ["$2a$", "$2b$"] {
            let hash = BCRYPT.replacen("$2y$", prefix, 1);
            check(&hash, "p@ss wörd", HashAlgorithm::Bcrypt);
        }
    }

    #[test]
    fn unsupported_and_malformed_hashes_are_rejected_without_quoting_them() {
        let cases = [
            ("kUQaVj7W5399s", "DES crypt"),
            ("plain", "plaintext"),
            ("$y$j9T$abc$def", "yescrypt"),
            (
                "$2x$04$ANG5860cD6f1mcBA6Xz4yu3i3Dt3uEHpxmP2VK..hAiQSjOqd08mG",
                "$2x$",
            ),
            ("$2y$04$ANG5860cD6f1mcBA6Xz4yu", "malformed bcrypt"),
            (
                "$2y$99$ANG5860cD6f1mcBA6Xz4yu3i3Dt3uEHpxmP2VK..hAiQSjOqd08mG",
                "cost",
            ),
            ("$apr1$abcdefgh$kOJTMCvat3K9n", "malformed MD5"),
            ("$apr1$abcdefghij$kOJTMCvat3K9n.uiGZK.J1", "malformed MD5"),
            ("{SHA}iFXrzdzW6SkQ4l5UHiG", "malformed {SHA}"),
            (
                "$5$rounds=10$saltsalt$r9UqAdmng8m1HYhHhcrllKcKfe1GfAfkWztzPO0JS/8",
                "rounds",
            ),
            ("$6$saltsalt$SFRaKnCT4od8", "malformed sha512-crypt"),
            (
                "$argon2id$v=19$m=4096,t=2,p=1$c2FsdA$O8fg9N6D6UzLGHD4yGKanb5kg2xZEd428SxnRB2VDUs",
                "malformed argon2",
            ),
            (
                "$argon2id$v=19$m=4096,t=2,p=1$c2FsdHNhbHQxMjM0",
                "missing hash",
            ),
            (
                "$argon2id$v=19$x=1$c2FsdHNhbHQxMjM0$O8fg9N6D6UzLGHD4yGKanb5kg2xZEd428SxnRB2VDUs",
                "parameters",
            ),
            ("$md5$whatever", "unsupported"),
        ];
        for (hash, expected) in cases {
            let error = StoredHash::parse(hash).expect_err(hash).to_string();
            assert!(error.contains(expected), "{hash}: {error}");
            for secret_part in hash.split('$').filter(|part| part.len() >= 6) {
                assert!(!error.contains(secret_part), "{error} quotes {secret_part}");
            }
        }
    }

    #[test]
    fn parse_reports_problems_with_line_numbers_and_keeps_the_rest() {
        let text = format!(
            "# comment\n\
             alice:{APR1}\n\
             \n\
             des:kUQaVj7W5399s\r\n\
             plain:hunter2\n\
             nocolon\n\
             :{SHA1}\n\
             \t bob:{SHA256} \r\n\
             alice:{SHA1}\n\
             empty:\n\
             carol:{SHA512}:extra:fields\n"
        );
        let (file, problems) = UserFile::parse(&text);
        let lines: Vec<usize> = problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, [4, 5, 6, 7, 9, 10], "{problems:?}");
        assert!(problems[0].message.contains("DES"));
        assert!(problems[0].message.contains("\"des\""));
        assert!(problems[2].message.contains("missing ':'"));
        assert!(problems[3].message.contains("empty user name"));
        assert!(problems[4].message.contains("line 2 defines it first"));
        assert!(problems[5].message.contains("empty password hash"));
        for problem in &problems {
            assert!(!problem.message.contains("hunter2"));
            assert!(!problem.message.contains("kUQaVj7W5399s"));
        }

        assert_eq!(file.len(), 3);
        assert!(file.contains("alice") && file.contains("bob") && file.contains("carol"));
        assert!(!file.contains("des") && !file.contains("plain"));
        // First definition wins: alice keeps the apr1 hash.
        assert_eq!(
            file.get("alice").map(StoredHash::algorithm),
            Some(HashAlgorithm::Apr1)
        );
        assert!(file.verify("alice", "p@ss wörd".as_bytes()));
        assert!(file.verify("bob", "p@ss wörd".as_bytes()));
        assert!(file.verify("carol", "p@ss wörd".as_bytes()));
        assert!(!file.verify("plain", b"hunter2"));
    }

    #[test]
    fn first_line_claims_the_user_even_when_unusable() {
        let (file, problems) = UserFile::parse(&format!("alice:plaintext\nalice:{SHA1}\n"));
        assert_eq!(problems.len(), 2);
        assert!(!file.contains("alice"));
    }

    #[test]
    fn invalid_utf8_line_is_reported_and_skipped() {
        let mut bytes = format!("alice:{SHA1}\n").into_bytes();
        bytes.extend_from_slice(b"b\xffb:x\n");
        bytes.extend_from_slice(format!("\u{feff}bob:{SHA1}\n").as_bytes());
        let (file, problems) = UserFile::parse_bytes(&bytes);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].line, 2);
        assert!(file.contains("alice"));
        // A byte-order mark is only stripped on line 1.
        assert!(!file.contains("bob"));
        let (file, problems) = UserFile::parse(&format!("\u{feff}bob:{SHA1}\n"));
        assert!(problems.is_empty() && file.contains("bob"));
    }

    #[test]
    fn dummy_copies_algorithm_and_cost_of_a_single_entry() {
        for first in [
            BCRYPT,
            APR1,
            MD5_CRYPT,
            SHA1,
            SHA256,
            SHA512_ROUNDS,
            SHA256_ROUNDS,
            ARGON2ID_P2,
            ARGON2ID_SHORT,
            ARGON2I,
            ARGON2ID_V10,
        ] {
            let text = format!("# users\nbad:plain\nfirst:{first}\n");
            let (file, _) = UserFile::parse(&text);
            let entry = file.get("first").expect("first entry");
            let dummy = file.timing_dummy().expect("dummy");
            assert_eq!(dummy.algorithm(), entry.algorithm(), "{first}");
            assert_eq!(dummy.to_string(), entry.to_string(), "{first}");
            // The dummy is a real, verifiable hash of some random password.
            let reparsed = match &dummy.kind {
                Kind::Bcrypt { encoded, .. } | Kind::ShaCrypt { encoded, .. } => {
                    Some(StoredHash::parse(encoded).expect("dummy parses"))
                }
                _ => None,
            };
            if let Some(reparsed) = reparsed {
                assert_eq!(reparsed.to_string(), entry.to_string());
            }
            assert!(!dummy.verify("p@ss wörd".as_bytes()));
            assert!(!file.verify("nobody", "p@ss wörd".as_bytes()));
        }
    }

    #[test]
    fn in_a_mixed_file_the_dummy_copies_the_costliest_hash() {
        let text = format!("cheap:{APR1}\nsha:{SHA1}\nstrong:{BCRYPT}\n");
        let (file, _) = UserFile::parse(&text);
        assert_eq!(
            file.timing_dummy().expect("dummy").algorithm(),
            HashAlgorithm::Bcrypt
        );
        let text = format!("strong:{BCRYPT}\ncheap:{APR1}\n");
        let (file, _) = UserFile::parse(&text);
        assert_eq!(
            file.timing_dummy().expect("dummy").to_string(),
            file.get("strong").unwrap().to_string()
        );
    }

    #[test]
    fn sha_crypt_dummy_keeps_explicit_rounds() {
        let dummy = StoredHash::parse(SHA512_ROUNDS)
            .expect("parse")
            .dummy_like();
        let Kind::ShaCrypt {
            encoded, rounds, ..
        } = &dummy.kind
        else {
            panic!("wrong dummy kind");
        };
        assert_eq!(*rounds, 1000);
        assert!(encoded.starts_with("$6$rounds=1000$"), "{encoded}");
    }

    #[test]
    fn empty_file_has_no_dummy_and_refuses() {
        let (file, problems) = UserFile::parse("\n# nothing\n");
        assert!(problems.is_empty());
        assert!(file.is_empty());
        assert!(file.timing_dummy().is_none());
        assert!(!file.verify("anyone", b""));
    }

    #[test]
    fn from_entries_names_the_bad_user() {
        let ok = UserFile::from_entries(vec![
            ("alice".into(), APR1.into()),
            ("bob".into(), SHA1.into()),
        ])
        .expect("valid");
        assert_eq!(ok.len(), 2);
        assert_eq!(
            ok.timing_dummy().map(StoredHash::algorithm),
            Some(HashAlgorithm::Apr1)
        );
        assert!(ok.verify("bob", "p@ss wörd".as_bytes()));

        let error = UserFile::from_entries(vec![
            ("alice".into(), APR1.into()),
            ("mallory".into(), "letmein".into()),
        ])
        .expect_err("plaintext");
        assert_eq!(error.user, "mallory");
        assert!(error.to_string().contains("mallory"));
        assert!(!error.to_string().contains("letmein"));

        let error = UserFile::from_entries(vec![
            ("alice".into(), APR1.into()),
            ("alice".into(), SHA1.into()),
        ])
        .expect_err("duplicate");
        assert!(error.reason.contains("duplicate"));
        assert!(UserFile::from_entries(vec![(String::new(), SHA1.into())]).is_err());
    }

    #[test]
    fn generated_hashes_verify() {
        let argon = hash_argon2id(b"s3cret");
        assert!(
            argon.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{argon}"
        );
        assert_ne!(argon, hash_argon2id(b"s3cret"), "salt must be random");
        let stored = StoredHash::parse(&argon).expect("parse");
        assert!(stored.verify(b"s3cret") && !stored.verify(b"s3cret!"));

        let bcrypt = hash_bcrypt(b"s3cret", 4).expect("bcrypt");
        assert!(bcrypt.starts_with("$2y$04$"), "{bcrypt}");
        let stored = StoredHash::parse(&bcrypt).expect("parse");
        assert!(stored.verify(b"s3cret") && !stored.verify(b"s3cret!"));

        assert_eq!(hash_bcrypt(b"x", 3), Err(HashError::BcryptCost(3)));
        assert_eq!(hash_bcrypt(b"x", 32), Err(HashError::BcryptCost(32)));
        assert_eq!(hash_bcrypt(&[b'a'; 72], 4), Err(HashError::PasswordTooLong));
        assert!(hash_bcrypt(&[b'a'; 71], 4).is_ok());
    }

    #[test]
    fn debug_and_display_do_not_leak_hashes() {
        let (file, _) = UserFile::parse(&format!("alice:{SHA512}\n"));
        let shown = format!("{file:?} {:?}", file.get("alice"));
        assert!(
            !shown.contains("saltsalt") && !shown.contains("SFRaKnCT"),
            "{shown}"
        );
    }
}
