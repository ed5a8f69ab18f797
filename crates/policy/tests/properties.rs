//! Property tests of the parsers a client controls (the same properties as the fuzz targets in
//! fuzz/, run on stable by scripts/test).

use portcullis_policy as policy;
use proptest::prelude::*;

/// Paths made of the pieces that servers read differently.
fn tricky_path() -> impl Strategy<Value = String> {
    let piece = prop::sample::select(vec![
        "a",
        "admin",
        "public",
        "..",
        ".",
        "",
        "%2e",
        "%2E%2e",
        "..;",
        ";x=1",
        "%3B",
        "\\",
        "%5C",
        "%2F",
        "%25",
        "%41",
        "%e9",
        "%E2%9C%93",
        "a b",
        "~",
        "@",
        ":",
        "?",
        "#",
    ]);
    prop::collection::vec((piece, prop::bool::ANY), 0..10).prop_map(|parts| {
        let mut s = String::from("/");
        for (p, slash) in parts {
            s.push_str(p);
            if slash {
                s.push('/');
            }
        }
        s
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn the_forwarded_path_is_judged_like_the_received_one(raw in tricky_path()) {
        let forwarded = policy::forward_path(&raw);
        prop_assert!(forwarded.starts_with('/'));
        prop_assert_eq!(policy::normalize_path(&raw), policy::normalize_path(&forwarded));
        prop_assert_eq!(policy::forward_path(&forwarded), forwarded.clone());
        prop_assert!(!policy::has_dot_segment(&forwarded));
        // What is forwarded is a valid request target: visible ASCII, no '?' or '#'.
        prop_assert!(
            forwarded.bytes().all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#'),
            "{}", forwarded
        );
    }

    #[test]
    fn any_path_string_is_handled(raw in "\\PC*") {
        let forwarded = policy::forward_path(&raw);
        prop_assert_eq!(policy::normalize_path(&raw), policy::normalize_path(&forwarded));
        let _ = policy::check_raw_path(&raw);
    }

    #[test]
    fn authorization_values_never_panic(value in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = policy::parse_authorization(&value);
    }

    #[test]
    fn basic_credentials_round_trip(user in "[^:\\p{Cc}]{1,40}", password in "\\PC{0,60}") {
        use base64::Engine as _;
        let value = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        match policy::parse_authorization(value.as_bytes()) {
            Ok(policy::Credentials::Basic { user: u, password: p }) => {
                prop_assert_eq!(u, user);
                prop_assert_eq!(p, password);
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }

    #[test]
    fn forwarding_headers_never_name_a_trusted_proxy_from_outside(
        xff in prop::collection::vec(
            prop_oneof![
                Just("10.0.0.1".to_owned()),
                Just("203.0.113.9".to_owned()),
                Just("2001:db8::1".to_owned()),
                Just("unknown".to_owned()),
                Just("[::1]:80".to_owned()),
                "\\PC{0,20}",
            ],
            0..6,
        )
    ) {
        let trusted = policy::IpSet::new(vec![policy::IpEntry {
            net: "10.0.0.0/8".parse().unwrap(),
            origin: policy::Origin::new("server.trusted_proxies", None),
        }]);
        let joined = xff.join(", ");
        let peer: std::net::IpAddr = [10, 0, 0, 7].into();
        if let Ok(found) = policy::client_addr(peer, &trusted, &[], &[joined.as_bytes()]) {
            let parse = |e: &str| -> Option<std::net::IpAddr> {
                let e = e.trim();
                e.parse()
                    .ok()
                    .or_else(|| e.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
                    .map(policy::canonical)
            };
            let parsed: Vec<Option<std::net::IpAddr>> = joined.split(',').map(parse).collect();
            // Never an address the header does not name.
            prop_assert!(
                found.ip == peer || parsed.contains(&Some(found.ip)),
                "{} -> {}", joined, found.ip
            );
            // The hop the trusted proxy appended, when it is an untrusted address, is the client.
            if let Some(Some(last)) = parsed.last()
                && !trusted.contains(*last)
            {
                prop_assert_eq!(found.ip, *last);
            }
        }
    }
}
