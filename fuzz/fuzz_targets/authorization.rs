//! `Authorization` values: never a panic; what parses keeps the invariants the gateway relies
//! on — a Basic user name that passes is a usable one, a Bearer token is in the b64token syntax
//! and bounded, a Digest response has its required parameters in their syntax.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match policy::parse_authorization(data) {
        Ok(policy::Credentials::Basic { user, password }) => {
            assert!(policy::check_user_name(&user).is_ok());
            assert!(!user.contains(':'));
            let _ = password;
        }
        Ok(policy::Credentials::Bearer { token }) => {
            assert!(!token.is_empty() && token.len() <= policy::MAX_TOKEN_LEN);
            let body = token.trim_end_matches('=');
            assert!(!body.is_empty());
            assert!(body
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b)));
        }
        Ok(policy::Credentials::Digest(d)) => {
            assert_eq!(d.nc_text.len(), 8);
            assert_eq!(u64::from_str_radix(&d.nc_text, 16).ok(), Some(d.nc));
            assert!(!d.response.is_empty());
            assert!(d.response.bytes().all(|b| b.is_ascii_hexdigit()));
            for v in [&d.username, &d.realm, &d.nonce, &d.uri, &d.cnonce, &d.qop] {
                assert!(v.len() <= 1024);
            }
        }
        Ok(policy::Credentials::Other { .. }) | Err(_) => {}
    }
});
