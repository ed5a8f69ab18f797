//! `Authorization` values: never a panic; a Basic user name that passes is a usable one.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(policy::Credentials::Basic { user, password }) = policy::parse_authorization(data) {
        assert!(policy::check_user_name(&user).is_ok());
        assert!(!user.contains(':'));
        let _ = password;
    }
});
