//! TOTP second factor (RFC 6238 over RFC 4226 HOTP): HMAC-SHA1, 30-second steps, six digits —
//! what every authenticator app reads from an `otpauth://` URI. One step of clock skew either
//! way is accepted; a used step cannot be used again (the user database remembers the last).

use hmac::{Hmac, KeyInit as _, Mac as _};
use sha1::Sha1;

/// Seconds per step.
pub const STEP: u64 = 30;
const DIGITS: u32 = 6;
const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// A new random 160-bit secret, base32 (as stored and as shown to the user).
pub fn new_secret() -> String {
    base32(&rand::random::<[u8; 20]>())
}

/// RFC 4648 base32 without padding.
pub fn base32(bytes: &[u8]) -> String {
    let mut out = String::new();
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            out.push(ALPHABET[((buffer >> (bits - 5)) & 31) as usize] as char);
            bits -= 5;
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// Decodes base32 (case-insensitive, padding and spaces ignored).
pub fn unbase32(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut buffer, mut bits) = (0u32, 0u32);
    for c in text.bytes().filter(|c| !matches!(c, b'=' | b' ')) {
        let v = ALPHABET.iter().position(|&a| a == c.to_ascii_uppercase())? as u32;
        buffer = (buffer << 5) | v;
        bits += 5;
        if bits >= 8 {
            out.push((buffer >> (bits - 8)) as u8);
            bits -= 8;
        }
        buffer &= (1 << bits) - 1;
    }
    Some(out)
}

/// The code of `step` (RFC 4226 dynamic truncation).
pub fn code_at(secret: &[u8], step: u64) -> u32 {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(&step.to_be_bytes());
    let h = mac.finalize().into_bytes();
    let offset = (h[h.len() - 1] & 0x0f) as usize;
    let value = u32::from_be_bytes([
        h[offset] & 0x7f,
        h[offset + 1],
        h[offset + 2],
        h[offset + 3],
    ]);
    value % 10u32.pow(DIGITS)
}

/// The step of the Unix time `unix`.
pub fn step_of(unix: u64) -> u64 {
    unix / STEP
}

/// The step (within one of `now`'s) whose code `code` is, if any.
pub fn matching_step(secret: &[u8], code: &str, unix_now: u64) -> Option<u64> {
    let code = code.trim().replace(' ', "");
    if code.len() != DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let wanted: u32 = code.parse().ok()?;
    let now = step_of(unix_now);
    [now, now.saturating_sub(1), now + 1]
        .into_iter()
        .find(|&s| {
            // Constant time per candidate: compare all digits.
            subtle::ConstantTimeEq::ct_eq(
                &code_at(secret, s).to_be_bytes()[..],
                &wanted.to_be_bytes()[..],
            )
            .into()
        })
}

/// The `otpauth://` URI an authenticator app imports (usually as a QR code).
pub fn otpauth_uri(issuer: &str, user: &str, secret: &str) -> String {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    };
    format!(
        "otpauth://totp/{}:{}?secret={secret}&issuer={}&algorithm=SHA1&digits=6&period=30",
        enc(issuer),
        enc(user),
        enc(issuer)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_6238_test_vectors() {
        // Appendix B, SHA-1, secret "12345678901234567890", 8 digits there; the last 6 here.
        let secret = b"12345678901234567890";
        for (t, code8) in [
            (59u64, 94287082u32),
            (1111111109, 7081804),
            (1111111111, 14050471),
            (1234567890, 89005924),
            (2000000000, 69279037),
        ] {
            assert_eq!(code_at(secret, step_of(t)), code8 % 1_000_000, "t={t}");
        }
    }

    #[test]
    fn base32_round_trips_and_codes_match_nearby_steps() {
        let s = new_secret();
        assert_eq!(s.len(), 32);
        let raw = unbase32(&s).unwrap();
        assert_eq!(base32(&raw), s);
        assert_eq!(unbase32("GEZDGNBVGY3TQOJQ").unwrap(), b"1234567890");
        let now = 1_800_000_000;
        let code = format!("{:06}", code_at(&raw, step_of(now) - 1));
        assert_eq!(matching_step(&raw, &code, now), Some(step_of(now) - 1));
        assert_eq!(matching_step(&raw, &code, now + 90), None);
        assert_eq!(matching_step(&raw, "12345", now), None);
        assert!(
            otpauth_uri("My Site", "alice", &s)
                .starts_with("otpauth://totp/My%20Site:alice?secret=")
        );
    }
}
