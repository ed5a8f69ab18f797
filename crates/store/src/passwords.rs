//! What a new password must be: long enough, not one of the 10,000 most common passwords, not
//! built from the user name, and judged strong by zxcvbn (Dropbox's estimator, score 3 of 4:
//! "safely unguessable" against online and throttled offline attacks).
//!
//! The common-password list is the head of the frequency list zxcvbn ships (MIT licence), taken
//! from leaked-password corpora, as NIST SP 800-63B §5.1.1.2 asks of a "blocklist".

use std::collections::HashSet;
use std::sync::OnceLock;

/// Shortest password accepted.
pub const MIN_LENGTH: usize = 10;
/// Longest password accepted (argon2 has no limit; this bounds the work per request).
pub const MAX_LENGTH: usize = 1024;

static COMMON: &str = include_str!("../data/common-passwords.txt");

fn common() -> &'static HashSet<&'static str> {
    static SET: OnceLock<HashSet<&'static str>> = OnceLock::new();
    SET.get_or_init(|| COMMON.lines().filter(|l| !l.is_empty()).collect())
}

/// Whether `password` (case-insensitively) is among the 10,000 most common passwords.
pub fn is_common(password: &str) -> bool {
    common().contains(password.to_lowercase().as_str())
}

/// Why a new password is refused, in words for the person choosing it; `None` when it is fine.
pub fn weakness(password: &str, user: &str) -> Option<String> {
    let chars = password.chars().count();
    if chars < MIN_LENGTH {
        return Some(format!(
            "Use at least {MIN_LENGTH} characters (this one has {chars})."
        ));
    }
    if password.len() > MAX_LENGTH {
        return Some(format!("Use at most {MAX_LENGTH} characters."));
    }
    if is_common(password) {
        return Some(
            "This password is one of the 10,000 most common ones, which attackers try first. Choose another."
                .into(),
        );
    }
    let lower = password.to_lowercase();
    if user.chars().count() >= 3 && lower.contains(&user.to_lowercase()) {
        return Some("Do not use your user name in your password.".into());
    }
    let estimate = zxcvbn::zxcvbn(password, &[user]);
    if u8::from(estimate.score()) < 3 {
        let mut why = String::from("This password would be easy to guess.");
        if let Some(feedback) = estimate.feedback() {
            if let Some(w) = feedback.warning() {
                why.push(' ');
                why.push_str(&w.to_string());
            }
            for s in feedback.suggestions() {
                why.push(' ');
                why.push_str(&s.to_string());
            }
        }
        return Some(why);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_holds_ten_thousand_common_passwords() {
        assert_eq!(common().len(), 10_000);
        assert!(is_common("password") && is_common("Dragon") && is_common("qwertyuiop"));
        assert!(!is_common("correct horse battery staple"));
    }

    #[test]
    fn weak_passwords_are_refused_with_a_reason() {
        assert!(weakness("short", "alice").unwrap().contains("at least 10"));
        assert!(
            weakness("1234567890", "alice")
                .unwrap()
                .contains("most common")
        );
        assert!(
            weakness("alice-2026!!", "alice")
                .unwrap()
                .contains("user name")
        );
        assert!(weakness("aaaaaaaaaaaa", "alice").is_some());
        assert!(weakness("abcdefghijklm", "alice").is_some());
        assert_eq!(weakness("plum tractor velvet 1987", "alice"), None);
        assert_eq!(weakness("Tr4nsit-Orbit-Cello", "alice"), None);
    }
}
