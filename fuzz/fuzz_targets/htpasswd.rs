//! htpasswd files: every line is parsed or reported, never a panic. (Hashes are not verified
//! here: a `$2y$31$` line costs 2^31 rounds by design, and the file is the operator's.)
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (users, problems) = store::htpasswd::UserFile::parse(text);
    assert!(users.len() + problems.len() <= text.lines().count() + 1);
    for line in text.lines() {
        if let Some((_, hash)) = line.split_once(':') {
            let _ = store::htpasswd::StoredHash::parse(hash);
        }
    }
});
