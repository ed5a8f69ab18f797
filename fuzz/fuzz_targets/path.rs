//! Request paths: the path forwarded is judged exactly as the path received, and forwarding is
//! idempotent (what reaches the upstream is already in its final form).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else { return };
    let _ = policy::check_raw_path(raw);
    let _ = policy::has_dot_segment(raw);
    let forwarded = policy::forward_path(raw);
    assert!(forwarded.starts_with('/'));
    assert_eq!(
        policy::normalize_path(raw),
        policy::normalize_path(&forwarded),
        "{raw:?} was judged one way and forwarded as {forwarded:?}"
    );
    assert_eq!(policy::forward_path(&forwarded), forwarded);
    assert!(!policy::has_dot_segment(&forwarded));
    assert_eq!(
        policy::normalize_path_lowercase(raw),
        policy::normalize_path_lowercase(&forwarded)
    );
});
