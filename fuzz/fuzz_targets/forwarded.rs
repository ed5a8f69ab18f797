//! `Forwarded` / `X-Forwarded-For` from a trusted proxy: never a panic, and the client found is
//! the peer or an address the headers name (never one of the trusted proxies unless all are).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let (forwarded, xff) = (&data[..split], data.get(split + 1..).unwrap_or(&[]));
    let peer: std::net::IpAddr = [127, 0, 0, 1].into();
    let trusted = policy::IpSet::new(
        ["127.0.0.0/8", "10.0.0.0/8", "2001:db8::/32"]
            .iter()
            .map(|n| policy::IpEntry {
                net: n.parse().unwrap(),
                origin: policy::Origin::new("server.trusted_proxies", None),
            })
            .collect(),
    );
    for (f, x) in [(vec![forwarded], vec![]), (vec![], vec![xff]), (vec![forwarded], vec![xff])] {
        let _ = policy::client_addr(peer, &trusted, &f, &x);
    }
});
