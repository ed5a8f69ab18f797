//! MD5-crypt: glibc's `$1$` and Apache's `$apr1$` (the default of `htpasswd -m`).
//!
//! Both are Poul-Henning Kamp's FreeBSD MD5 crypt; Apache only changed the magic
//! string. No maintained RustCrypto crate implements it, and it is short, so it
//! lives here on top of `md-5`. It is a weak scheme (1000 MD5 rounds) that we
//! verify only because it is still what `htpasswd` writes by default.

use md5::{Digest, Md5};

/// The alphabet of crypt's base-64 encoding (shared with SHA-crypt and DES).
pub(crate) const ITOA64: &[u8; 64] =
    b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Length of the encoded digest that follows the salt.
pub(crate) const ENCODED_LEN: usize = 22;

/// Longest salt the algorithm uses; longer salts are truncated.
pub(crate) const MAX_SALT_LEN: usize = 8;

/// Computes the encoded MD5-crypt digest of `password` for `salt` and `magic`
/// (`b"$1$"` or `b"$apr1$"`).
pub(crate) fn md5_crypt(password: &[u8], salt: &[u8], magic: &[u8]) -> [u8; ENCODED_LEN] {
    let salt = &salt[..salt.len().min(MAX_SALT_LEN)];

    let mut alternate = Md5::new();
    alternate.update(password);
    alternate.update(salt);
    alternate.update(password);
    let alternate: [u8; 16] = alternate.finalize().into();

    let mut ctx = Md5::new();
    ctx.update(password);
    ctx.update(magic);
    ctx.update(salt);
    for chunk in password.chunks(16) {
        ctx.update(&alternate[..chunk.len()]);
    }
    // The original's "clean up" quirk: one byte per bit of the length, either
    // a NUL or the first password byte.
    let mut bits = password.len();
    while bits > 0 {
        if bits & 1 == 1 {
            ctx.update([0u8]);
        } else {
            ctx.update(&password[..1]);
        }
        bits >>= 1;
    }
    let mut digest: [u8; 16] = ctx.finalize().into();

    for round in 0..1000 {
        let mut ctx = Md5::new();
        if round & 1 == 1 {
            ctx.update(password);
        } else {
            ctx.update(digest);
        }
        if round % 3 != 0 {
            ctx.update(salt);
        }
        if round % 7 != 0 {
            ctx.update(password);
        }
        if round & 1 == 1 {
            ctx.update(digest);
        } else {
            ctx.update(password);
        }
        digest = ctx.finalize().into();
    }

    encode(&digest)
}

/// Encodes the final digest with crypt's byte shuffle and base-64 alphabet.
fn encode(digest: &[u8; 16]) -> [u8; ENCODED_LEN] {
    let mut out = [0u8; ENCODED_LEN];
    let mut pos = 0;
    let mut put = |mut value: u32, chars: usize| {
        for _ in 0..chars {
            out[pos] = ITOA64[(value & 0x3f) as usize];
            value >>= 6;
            pos += 1;
        }
    };
    for (a, b, c) in [(0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)] {
        put(
            u32::from(digest[a]) << 16 | u32::from(digest[b]) << 8 | u32::from(digest[c]),
            4,
        );
    }
    put(u32::from(digest[11]), 2);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crypt(password: &str, salt: &str, magic: &str) -> String {
        String::from_utf8(md5_crypt(password.as_bytes(), salt.as_bytes(), magic.as_bytes()).into())
            .expect("crypt alphabet is ASCII")
    }

    #[test]
    fn apr1_matches_openssl_and_htpasswd() {
        // `openssl passwd -apr1 -salt abcdefgh 'p@ss wörd'` (OpenSSL 3.0.19).
        assert_eq!(
            crypt("p@ss wörd", "abcdefgh", "$apr1$"),
            "kOJTMCvat3K9n.uiGZK.J1"
        );
        // `htpasswd -nbm alice 'p@ss wörd'` (Debian apache2-utils).
        assert_eq!(
            crypt("p@ss wörd", "8cPR5iaN", "$apr1$"),
            "pidAYKXfVO47xd2xjPaVt/"
        );
        // `openssl passwd -apr1 -salt x ''`: empty password, short salt.
        assert_eq!(crypt("", "x", "$apr1$"), "tMwYqBfQwi3FYAr0aJc8M/");
    }

    #[test]
    fn md5_crypt_matches_glibc() {
        // `openssl passwd -1 -salt saltsalt password`, identical to glibc crypt(3).
        assert_eq!(
            crypt("password", "saltsalt", "$1$"),
            "qjXMvbEw8oaL.CzflDtaK/"
        );
        // glibc crypt(3) via Python `crypt.crypt('a' * 40, '$1$abc')`: a password
        // longer than two MD5 outputs.
        assert_eq!(
            crypt(&"a".repeat(40), "abc", "$1$"),
            "8W1b30UMNkic5GQYIcPeI0"
        );
        // `openssl passwd -apr1 -salt 'Zx9./ab' aaaa...` (40 times 'a').
        assert_eq!(
            crypt(&"a".repeat(40), "Zx9./ab", "$apr1$"),
            "FUf07ZdPELeFiFEvrHhL7/"
        );
    }

    #[test]
    fn long_salt_is_truncated_to_eight() {
        assert_eq!(
            crypt("secret", "abcdefghijk", "$apr1$"),
            crypt("secret", "abcdefgh", "$apr1$")
        );
    }
}
