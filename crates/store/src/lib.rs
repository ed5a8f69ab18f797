//! User stores and credential verification for Portcullis.
//!
//! Portcullis authenticates HTTP Basic credentials against users kept in an
//! Apache `htpasswd` file (or given inline in the configuration). Operators
//! already have tooling and habits around `htpasswd`, so instead of inventing a
//! new user database we read exactly the formats Debian's `htpasswd`
//! (apache2-utils) writes, plus argon2id for hashes made by `portcullis hash`.
//!
//! The crate is split in two layers:
//!
//! * [`htpasswd`] parses files into a [`UserFile`] and checks one password
//!   synchronously. It is pure and slow on purpose (password hashes are meant
//!   to be expensive) and never logs.
//! * [`verifier`] wraps a [`UserFile`] into a [`Verifier`] that is safe to call
//!   from every request: it caches outcomes under a keyed MAC (never the
//!   plaintext), runs hash checks on the blocking pool behind a semaphore so a
//!   password-guessing flood queues instead of starving the proxy, and picks up
//!   edits to the file without a restart.

#![forbid(unsafe_code)]

pub mod groups;
pub mod hash_queue;
pub mod htdigest;
pub mod htpasswd;
pub mod ldap;
mod md5crypt;
pub mod passwords;
pub mod sqlite;
pub mod state;
pub mod throttle;
pub mod totp;
pub mod verifier;

pub use groups::{GroupFile, Groups};
pub use htpasswd::{
    HashAlgorithm, HashError, HashFormatError, InlineUserError, LineProblem, StoredHash, UserFile,
    hash_argon2id, hash_bcrypt,
};
pub use throttle::Throttle;
pub use verifier::{
    Answer, FileStamp, LoadError, MAX_PASSWORD_BYTES, UserSource, Verification, Verifier,
};

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// Hex SHA-256 of `bytes`: how secrets handed to browsers (session ids, link tokens) are
/// stored, and how files are fingerprinted for the audit log.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex(&Sha256::digest(bytes))
}
