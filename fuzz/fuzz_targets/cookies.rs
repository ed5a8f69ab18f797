//! `Cookie` headers: never a panic, and after stripping Portcullis's own cookies none of them
//! is left for the application.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = http::HeaderValue::from_bytes(data) else { return };
    let mut headers = http::HeaderMap::new();
    headers.append(http::header::COOKIE, value);
    for name in ["portcullis_session", "__Host-portcullis", "portcullis_csrf", "__Host-portcullis-csrf"] {
        let _ = gateway::portal::cookie(&headers, name);
    }
    gateway::portal::strip_own_cookies(&mut headers);
    for name in ["portcullis_session", "__Host-portcullis", "portcullis_csrf", "__Host-portcullis-csrf"] {
        assert!(gateway::portal::cookie(&headers, name).is_none(), "{name} survived");
    }
});
