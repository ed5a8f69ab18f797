//! The pure per-request policy work on a large policy: 10,000 deny CIDRs and 500 URL rules.
//!
//! `cargo bench -p portcullis-policy --bench decision -- --warm-up-time 1 --measurement-time 3`
//!
//! Groups:
//! - `allow_decision`: phases 3, 5 (parsing only) and 6 for an allowed request, as the gateway
//!   runs them (`full`), and each step on its own (`step/…`). Password verification, the group
//!   lookup and the state store are not part of the policy crate and are left out: the identity
//!   is built once, as the gateway would after a successful verification.
//! - `ip_lookup_10k`: `IpSet::lookup` on the 10,000-entry deny set, hit and miss.
//! - `rules_500`: `RuleSet::authorize` on the 500 rules.
//! - `normalize_path`: a typical path and one with percent-encoding and dot segments.
//!
//! The policy is generated deterministically, so runs are comparable.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use base64::Engine;
use criterion::{Criterion, criterion_group, criterion_main};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use portcullis_policy::{
    AuthPolicy, AuthStep, AuthzVerdict, DenyAction, Identity, IpEntry, IpPolicy, IpSet, Origin,
    PathPattern, Policy, Principal, Refusal, Rule, RuleSet, Scheme, normalize_path,
};

const DENY_V4: usize = 9_000;
const DENY_V6: usize = 1_000;
const RULES: usize = 500;
const GROUPS: usize = 20;

/// The allowed client: on no list, so `allow_unlisted` admits it.
const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 23);
const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1);

/// The app rule the benchmarked request hits: late in the list, so the allow scan walks almost
/// every rule, and it has a `methods` list.
const TARGET_RULE: usize = 489;
const TYPICAL_PATH: &str = "/app489/reports/2024/q3.pdf";
/// Normalises to `TYPICAL_PATH`.
const TRICKY_PATH: &str = "/app489/./reports/%2e%2e/reports//2024/%71%33.pdf";

/// SplitMix64: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// 9,000 IPv4 networks (/16 to /32) and 1,000 IPv6 networks (/32 to /128 in 2000::/3), none of
/// which contains the client.
fn deny_entries() -> Vec<IpEntry> {
    let mut rng = Rng(0x5eed_c0ff_ee00_0001);
    let mut nets: Vec<IpNet> = Vec::with_capacity(DENY_V4 + DENY_V6);
    while nets.len() < DENY_V4 {
        let addr = Ipv4Addr::from(rng.next() as u32);
        let prefix = 16 + rng.below(17) as u8;
        let net = IpNet::V4(Ipv4Net::new(addr, prefix).unwrap().trunc());
        if !net.contains(&IpAddr::V4(CLIENT_V4)) {
            nets.push(net);
        }
    }
    while nets.len() < DENY_V4 + DENY_V6 {
        let bits = (u128::from(rng.next()) << 64 | u128::from(rng.next())) >> 3 | 1 << 125;
        let prefix = 32 + rng.below(97) as u8;
        let net = IpNet::V6(Ipv6Net::new(Ipv6Addr::from(bits), prefix).unwrap().trunc());
        if !net.contains(&IpAddr::V6(CLIENT_V6)) {
            nets.push(net);
        }
    }
    nets.into_iter()
        .enumerate()
        .map(|(i, net)| IpEntry {
            net,
            origin: Origin::new(format!("ip.deny[{i}]"), Some(40 + i)),
        })
        .collect()
}

/// 499 rules `/app{i}/**` allowing `group:g{i % 20}` (a quarter limited to GET/HEAD, a quarter to
/// POST/PUT/DELETE, every tenth denying `user:mallory`), then a `/**` catch-all allowing `*`.
fn rules() -> RuleSet {
    let methods = |m: &[&str]| Some(m.iter().map(|s| s.to_string()).collect());
    let mut rules: Vec<Rule> = (0..RULES - 1)
        .map(|i| Rule {
            path: PathPattern::parse(&format!("/app{i}/**")).unwrap(),
            methods: match i % 4 {
                1 => methods(&["GET", "HEAD"]),
                3 => methods(&["POST", "PUT", "DELETE"]),
                _ => None,
            },
            allow: vec![Principal::Group(format!("g{}", i % GROUPS))],
            deny: if i % 10 == 0 {
                vec![Principal::User("mallory".into())]
            } else {
                vec![]
            },
            origin: Origin::new(format!("rule[{i}]"), Some(20_000 + 6 * i)),
        })
        .collect();
    rules.push(Rule {
        path: PathPattern::parse("/**").unwrap(),
        methods: None,
        allow: vec![Principal::AnyUser],
        deny: vec![],
        origin: Origin::new(format!("rule[{}]", RULES - 1), Some(20_000 + 6 * RULES)),
    });
    RuleSet::new(rules, 401)
}

fn policy() -> Policy {
    Policy {
        trusted_proxies: IpSet::default(),
        ip: IpPolicy {
            allow_unlisted: true,
            allow: IpSet::default(),
            deny: IpSet::new(deny_entries()),
            deny_hosts: vec![],
            action: DenyAction::Forbidden,
        },
        auth: AuthPolicy {
            realm: "Portcullis".into(),
            schemes: vec![Scheme::Basic],
            public: ["/static/**", "/health", "/favicon.ico", "/.well-known/**"]
                .into_iter()
                .map(|p| PathPattern::parse(p).unwrap())
                .collect(),
        },
        rules: rules(),
        case_insensitive_paths: false,
    }
}

/// Phases 3, 5 and 6 for one request, short-circuiting on a refusal as the gateway does. Every
/// intermediate value is built and dropped, as in the gateway.
fn decide<'p>(
    policy: &'p Policy,
    ip: IpAddr,
    raw_path: &str,
    authorization: &[u8],
    method: &str,
    identity: &Identity,
) -> Result<AuthzVerdict<'p>, Refusal> {
    let why = policy.ip.check_address(ip)?;
    black_box(&why);
    let path = policy.normalize(raw_path);
    match policy.auth.authenticate(&path, Some(authorization)) {
        AuthStep::Refuse(r) => return Err(r),
        step => {
            black_box(&step);
        }
    }
    policy.rules.authorize(&path, method, identity)
}

fn allowed_by(verdict: &Result<AuthzVerdict<'_>, Refusal>) -> String {
    match verdict {
        Ok(AuthzVerdict::Allowed(rule, principal)) => format!("{} {principal}", rule.origin.key),
        other => panic!("expected an allow by a rule, got {other:?}"),
    }
}

fn benches(c: &mut Criterion) {
    let policy = policy();
    assert_eq!(policy.ip.deny.len(), DENY_V4 + DENY_V6);
    assert_eq!(policy.rules.rules().len(), RULES);
    let client = IpAddr::V4(CLIENT_V4);
    let authorization = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("alice:correct horse battery staple")
    )
    .into_bytes();
    let alice = Identity {
        user: Some("alice".into()),
        groups: vec![
            "staff".into(),
            format!("g{}", TARGET_RULE % GROUPS),
            "vpn".into(),
        ],
        ..Identity::default()
    };
    let typical = normalize_path(TYPICAL_PATH);

    // Check that each benchmark measures the outcome it claims to.
    assert!(policy.ip.check_address(client).is_ok());
    assert!(policy.ip.check_address(IpAddr::V6(CLIENT_V6)).is_ok());
    assert_eq!(normalize_path(TRICKY_PATH), typical);
    assert_eq!(
        policy.auth.authenticate(&typical, Some(&authorization)),
        AuthStep::VerifyBasic {
            user: "alice".into(),
            password: "correct horse battery staple".into()
        }
    );
    let want = format!("rule[{TARGET_RULE}] group:g{}", TARGET_RULE % GROUPS);
    assert_eq!(
        allowed_by(&decide(
            &policy,
            client,
            TYPICAL_PATH,
            &authorization,
            "GET",
            &alice
        )),
        want
    );

    let mut group = c.benchmark_group("allow_decision");
    group.bench_function("full", |b| {
        b.iter(|| {
            decide(
                black_box(&policy),
                black_box(client),
                black_box(TYPICAL_PATH),
                black_box(&authorization),
                black_box("GET"),
                black_box(&alice),
            )
        })
    });
    group.bench_function("step/check_address", |b| {
        b.iter(|| policy.ip.check_address(black_box(client)))
    });
    group.bench_function("step/normalize", |b| {
        b.iter(|| policy.normalize(black_box(TYPICAL_PATH)))
    });
    group.bench_function("step/authenticate", |b| {
        b.iter(|| {
            policy
                .auth
                .authenticate(black_box(&typical), Some(black_box(&authorization)))
        })
    });
    group.bench_function("step/authorize", |b| {
        b.iter(|| {
            policy
                .rules
                .authorize(black_box(&typical), black_box("GET"), black_box(&alice))
        })
    });
    group.finish();

    // Hits: the network address of an entry (the set answers with it or an enclosing block).
    let deny = &policy.ip.deny;
    let v4_hit = deny.entries()[DENY_V4 / 2].net.network();
    let v6_hit = deny.entries()[DENY_V4 + DENY_V6 / 2].net.network();
    assert!(deny.lookup(v4_hit).is_some() && deny.lookup(v6_hit).is_some());
    assert!(deny.lookup(client).is_none() && deny.lookup(IpAddr::V6(CLIENT_V6)).is_none());
    let mut group = c.benchmark_group("ip_lookup_10k");
    for (name, ip) in [
        ("v4 hit", v4_hit),
        ("v4 miss", client),
        ("v6 hit", v6_hit),
        ("v6 miss", IpAddr::V6(CLIENT_V6)),
    ] {
        group.bench_function(name, |b| b.iter(|| deny.lookup(black_box(ip))));
    }
    group.finish();

    let other = normalize_path("/other/page");
    let bob = Identity {
        user: Some("bob".into()),
        groups: vec!["staff".into()],
        ..Identity::default()
    };
    assert_eq!(
        allowed_by(&policy.rules.authorize(&other, "GET", &bob)),
        format!("rule[{}] *", RULES - 1)
    );
    assert!(policy.rules.authorize(&typical, "GET", &bob).is_err());
    let mut group = c.benchmark_group("rules_500");
    for (name, path, who) in [
        ("allow by rule[489]", &typical, &alice),
        ("allow by catch-all", &other, &bob),
        ("implicit deny (formats)", &typical, &bob),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                policy
                    .rules
                    .authorize(black_box(path), black_box("GET"), black_box(who))
            })
        });
    }
    // What one pass over the rules costs, to read the numbers above: `authorize` makes up to
    // three passes, and the later two call `specificity()` on every rule before matching it.
    let all = policy.rules.rules();
    group.bench_function("diag: one pass of path.matches()", |b| {
        b.iter(|| {
            all.iter()
                .filter(|r| r.path.matches(black_box(&typical)))
                .count()
        })
    });
    group.bench_function("diag: one pass of path.specificity()", |b| {
        b.iter(|| {
            all.iter()
                .filter(|r| black_box(&r.path).specificity() == (1, 1, false))
                .count()
        })
    });
    group.finish();

    let mut group = c.benchmark_group("normalize_path");
    for (name, raw) in [
        ("typical", TYPICAL_PATH),
        ("percent-encoded + dot segments", TRICKY_PATH),
    ] {
        group.bench_function(name, |b| b.iter(|| policy.normalize(black_box(raw))));
    }
    group.finish();
}

criterion_group!(decision, benches);
criterion_main!(decision);
