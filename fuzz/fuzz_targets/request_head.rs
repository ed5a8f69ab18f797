//! The connection's request-head scanner (Content-Length beside Transfer-Encoding): never a
//! panic, and the answer does not depend on how the bytes were split into reads.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let split = usize::from(data[0]) % data.len();
    let bytes = &data[1..];
    let split = split.min(bytes.len());
    let mut whole = gateway::server::HeadScanner::default();
    let a = whole.feed(bytes, true);
    let mut parts = gateway::server::HeadScanner::default();
    // Once a head has ended, hyper starts its request before reading more: the bytes after it
    // arrive while a request is in flight (not idle), as in the server.
    let first = parts.feed(&bytes[..split], true);
    let idle = split == 0 || parts.in_head();
    let b = first || parts.feed(&bytes[split..], idle);
    assert_eq!(a, b);
});
