//! Whole-file tests: valid configs become the expected values, bad ones report every problem
//! at its line.

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use policy::{DenyAction, Identity, Principal, Scheme, normalize_path};

use super::*;

const CERT_PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBAA==\n-----END CERTIFICATE-----\n";
const KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----\nMIIBAA==\n-----END PRIVATE KEY-----\n";

/// A folder with the files a full config refers to.
fn site() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("users.htpasswd"), "alice:$2y$05$abc\n").unwrap();
    fs::create_dir(dir.path().join("tls")).unwrap();
    fs::write(dir.path().join("tls/cert.pem"), CERT_PEM).unwrap();
    fs::write(dir.path().join("tls/key.pem"), KEY_PEM).unwrap();
    fs::create_dir(dir.path().join("pages")).unwrap();
    fs::create_dir(dir.path().join("logs")).unwrap();
    dir
}

fn minimal(dir: &Path) -> String {
    fs::write(dir.join("users.htpasswd"), "").unwrap();
    "[server]\nupstream = \"http://127.0.0.1:3000\"\n[auth]\nusers = \"users.htpasswd\"\n"
        .to_owned()
}

fn errors_of(text: &str, dir: &Path) -> Diagnostics {
    parse(text, dir, "portcullis.toml").expect_err("config should be refused")
}

/// (key, line, suggestion) of every diagnostic, for compact assertions.
fn summary(d: &Diagnostics) -> Vec<(&str, Option<usize>, Option<&str>)> {
    d.items
        .iter()
        .map(|i| (i.key.as_str(), i.line, i.suggestion.as_deref()))
        .collect()
}

#[test]
fn full_config_round_trips_with_paths_resolved_against_the_file() {
    let dir = site();
    let text = r#"
[server]
listen = ["127.0.0.1:9000", "[::1]:9001", "localhost:9002"]
upstream = "http://app.internal:3000/base/"
tls = { cert = "tls/cert.pem", key = "tls/key.pem" }
trusted_proxies = []
header_timeout = "3s"
upstream_timeout = "2m"
connect_timeout = "1500ms"
workers = 4

[auth]
realm = "Staff only"
schemes = ["basic"]
users = "users.htpasswd"
public = ["/health", "/static/**"]
acl_status = 403
cache_ttl = "0s"
forward_authorization = true

[errors]
mode = "custom"
pages = "pages"
upstream_401 = "replace"

[log]
access = "logs/access.log"
format = "json"
"#;
    let path = dir.path().join("portcullis.toml");
    fs::write(&path, text).unwrap();
    let c = load(&path).unwrap_or_else(|d| panic!("{d}"));
    let base = dir.path();

    assert_eq!(c.source.as_deref(), Some(path.as_path()));
    let listen: Vec<SocketAddr> = ["127.0.0.1:9000", "[::1]:9001", "127.0.0.1:9002"]
        .map(|a| a.parse().unwrap())
        .into();
    assert_eq!(c.server.listen, listen);
    assert_eq!(
        c.server.upstream.as_ref().unwrap().authority.as_str(),
        "app.internal:3000"
    );
    assert_eq!(c.server.upstream.as_ref().unwrap().base_path, "/base");
    assert_eq!(
        c.server.tls,
        Some(Tls {
            cert: base.join("tls/cert.pem"),
            key: base.join("tls/key.pem"),
            client_ca: None,
            client_auth: crate::model::ClientAuth::Off,
            crl: None,
        })
    );
    assert_eq!(c.server.header_timeout, Duration::from_secs(3));
    assert_eq!(c.server.upstream_timeout, Duration::from_secs(120));
    assert_eq!(c.server.connect_timeout, Duration::from_millis(1500));
    assert_eq!(c.server.workers, Some(4));

    assert_eq!(c.auth.realm, "Staff only");
    assert_eq!(c.auth.schemes, vec![Scheme::Basic]);
    assert_eq!(
        c.auth.users,
        UserSource::Htpasswd(base.join("users.htpasswd"))
    );
    let public: Vec<&str> = c.auth.public.iter().map(|p| p.as_str()).collect();
    assert_eq!(public, ["/health", "/static/**"]);
    assert!(c.auth.public[1].matches(&normalize_path("/static/app.css")));
    assert_eq!(c.auth.acl_status, 403);
    assert_eq!(c.auth.cache_ttl, Duration::ZERO);
    assert!(c.auth.forward_authorization);

    assert_eq!(c.errors.mode, ErrorMode::Custom);
    assert_eq!(c.errors.pages, Some(base.join("pages")));
    assert_eq!(c.errors.upstream_401, Upstream401::Replace);
    assert_eq!(
        c.log.access,
        AccessLogTarget::File(base.join("logs/access.log"))
    );
    assert_eq!(c.log.format, LogFormat::Json);
}

#[test]
fn defaults_fill_everything_optional() {
    let dir = tempfile::tempdir().unwrap();
    let c = parse(&minimal(dir.path()), dir.path(), "portcullis.toml")
        .unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(c.source, None);
    assert_eq!(
        c.server.listen,
        vec!["127.0.0.1:8080".parse::<SocketAddr>().unwrap()]
    );
    assert_eq!(
        c.server.upstream.as_ref().unwrap().authority.as_str(),
        "127.0.0.1:3000"
    );
    assert_eq!(c.server.upstream.as_ref().unwrap().base_path, "");
    assert_eq!(c.server.tls, None);
    assert_eq!(c.server.header_timeout, Duration::from_secs(10));
    assert_eq!(c.server.upstream_timeout, Duration::from_secs(60));
    assert_eq!(c.server.connect_timeout, Duration::from_secs(5));
    assert_eq!(c.server.workers, None);
    assert_eq!(c.auth.realm, "Restricted area");
    assert_eq!(c.auth.schemes, vec![Scheme::Basic]);
    assert!(c.auth.public.is_empty());
    assert_eq!(c.auth.acl_status, 401);
    assert_eq!(c.auth.cache_ttl, Duration::from_secs(300));
    assert!(!c.auth.forward_authorization);
    assert_eq!(c.errors.mode, ErrorMode::DetailedLocalOnly);
    assert_eq!(c.errors.pages, None);
    assert_eq!(c.errors.upstream_401, Upstream401::PassThrough);
    assert_eq!(c.log.access, AccessLogTarget::Stdout);
    assert_eq!(c.log.format, LogFormat::W3c);
    assert!(c.server.trusted_proxies.is_empty());
    assert_eq!(c.auth.groups, None);
    assert!(!c.auth.case_insensitive_paths);
    assert!(c.ip.allow_unlisted);
    assert!(c.ip.allow.is_empty() && c.ip.deny.is_empty() && c.ip.deny_hosts.is_empty());
    assert_eq!(c.ip.action, DenyAction::Forbidden);
    assert!(c.rules.is_empty());
    assert!(c.filter.is_none());
    assert_runtime_defaults(&c);
    assert!(c.warnings.is_empty());
}

/// Absent `[dynamic]`, `[logon]`, `[state]` and `[admin]`: no limits, the IIS-like logon
/// regulation, in-process state, no admin listener.
fn assert_runtime_defaults(c: &Config) {
    assert_eq!(c.dynamic.max_concurrent, None);
    assert_eq!(c.dynamic.rate, None);
    assert_eq!(c.dynamic.deny_action, DenyAction::Forbidden);
    assert!(!c.dynamic.logging_only);
    assert_eq!(c.logon.max_failures, 5);
    assert_eq!(c.logon.find_time, Duration::from_secs(120));
    assert_eq!(c.logon.ban_time, Duration::from_secs(300));
    assert_eq!(c.state.backend, StateBackend::Memory);
    assert_eq!(c.state.on_backend_error, FailMode::Closed);
    assert_eq!(c.state.timeout, Duration::from_millis(100));
    assert_eq!(c.state.key_prefix, "portcullis:");
    assert_eq!(c.admin.listen, None);
}

#[test]
fn every_mistake_is_reported_at_once_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"[server]
listn = "127.0.0.1:8080"
upstream = "http://127.0.0.1:3000"
header_timeout = "10 parsecs"

[auth]
users = "missing.htpasswd"
public = ["/ok", "static/**"]

[errors]
mode = "detailled"

[mail]
from = "portcullis@example.com"
"#;
    let d = errors_of(text, dir.path());
    assert_eq!(
        summary(&d),
        vec![
            ("server.listn", Some(2), Some("listen")),
            ("server.header_timeout", Some(4), None),
            ("auth.users", Some(7), None),
            ("auth.public[1]", Some(8), None),
            ("errors.mode", Some(11), Some("detailed")),
            ("mail.host", Some(13), None),
        ],
        "{d}"
    );
    let shown = d.to_string();
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), 6);
    assert_eq!(
        lines[0],
        "portcullis.toml:2: server.listn: unknown key (did you mean \"listen\"?)"
    );
    assert!(
        lines[1].contains("\"10 parsecs\" is not a duration") && lines[1].contains("\"10s\""),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].contains(&dir.path().join("missing.htpasswd").display().to_string()),
        "{}",
        lines[2]
    );
    assert!(lines[3].contains("must start with '/'"), "{}", lines[3]);
    assert!(
        lines[4].contains("\"custom\", \"detailed\", \"detailed_local_only\""),
        "{}",
        lines[4]
    );
    assert_eq!(
        lines[5],
        "portcullis.toml:13: mail.host: is required in [mail] (for example host = \"smtp.example.com\")"
    );
}

#[test]
fn toml_syntax_error_gives_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = errors_of(
        "[server]\nlisten = [\"127.0.0.1:8080\"]\nupstream = \"http://a\n[auth]\n",
        dir.path(),
    );
    assert_eq!(d.items.len(), 1, "{d}");
    assert_eq!(d.items[0].line, Some(3), "{d}");
    assert!(d.items[0].message.starts_with("invalid TOML"), "{d}");
    assert!(
        d.to_string().starts_with("portcullis.toml:3: invalid TOML"),
        "{d}"
    );

    let d = errors_of(
        "[server]\nupstream = \"http://a\"\nupstream = \"http://b\"\n",
        dir.path(),
    );
    assert_eq!(d.items.len(), 1, "{d}");
    assert_eq!(d.items[0].line, Some(3), "{d}");
}

#[test]
fn missing_tls_files_are_named() {
    let dir = site();
    let text = minimal(dir.path()).replace(
        "[auth]",
        "tls = { cert = \"nope/cert.pem\", key = \"tls/key.pem\" }\n[auth]",
    );
    let d = errors_of(&text, dir.path());
    assert_eq!(summary(&d), vec![("server.tls.cert", Some(3), None)], "{d}");
    let cert = dir.path().join("nope/cert.pem");
    assert!(
        d.items[0].message.contains(&cert.display().to_string()),
        "{d}"
    );
    assert!(d.items[0].message.contains("not found"), "{d}");
}

#[test]
fn tls_needs_both_files_and_real_pem() {
    let dir = site();
    fs::write(dir.path().join("junk.pem"), "this is not pem\n").unwrap();
    let text =
        minimal(dir.path()).replace("[auth]", "tls = { cert = \"junk.pem\", crt = 1 }\n[auth]");
    let d = errors_of(&text, dir.path());
    let keys: Vec<&str> = d.items.iter().map(|i| i.key.as_str()).collect();
    assert!(keys.contains(&"server.tls.crt"), "{d}");
    assert!(keys.contains(&"server.tls.key"), "{d}");
    let cert = d.find("server.tls.cert").unwrap_or_else(|| panic!("{d}"));
    assert!(cert.message.contains("junk.pem"), "{d}");
}

#[test]
fn unimplemented_parts_of_the_contract_are_refused_not_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"[server]
upstream = "https://app.example"
trusted_proxies = ["10.0.0.0/8", "not-an-ip"]

[auth]
users = "users.htpasswd"
schemes = ["basic", "digest", "kerberos"]

[filter]
url = "https://authz.internal/check"

[mail]
from = "portcullis@example.com"
"#;
    let d = errors_of(text, dir.path());
    assert_eq!(
        summary(&d),
        vec![
            ("server.upstream", Some(2), None),
            ("server.trusted_proxies[1]", Some(3), None),
            ("auth.users", Some(6), None),
            ("auth.schemes", Some(7), None),
            ("auth.schemes[2]", Some(7), None),
            ("filter.url", Some(10), None),
            ("mail.host", Some(12), None),
        ],
        "{d}"
    );
    for key in ["server.upstream", "filter.url"] {
        assert!(
            d.find(key).unwrap().message.contains("not supported"),
            "{key}: {d}"
        );
    }
    assert!(
        d.find("auth.schemes")
            .unwrap()
            .message
            .contains("[auth.digest]"),
        "digest needs its users: {d}"
    );
    assert!(
        d.find("server.trusted_proxies[1]")
            .unwrap()
            .message
            .contains("\"not-an-ip\" is not an IP address"),
        "{d}"
    );
    assert!(
        d.find("auth.schemes[2]")
            .unwrap()
            .message
            .contains("\"basic\", \"digest\""),
        "{d}"
    );
}

#[test]
fn wrong_types_and_ranges_are_located() {
    let dir = tempfile::tempdir().unwrap();
    let text = minimal(dir.path()).replace("[auth]", "workers = 0\nconnect_timeout = 5\n[auth]")
        + "acl_status = 402\nforward_authorization = \"yes\"\nrealm = \"a\\nb\"\ncache_ttl = \"5 minutes\"\n";
    let d = errors_of(&text, dir.path());
    assert_eq!(
        summary(&d),
        vec![
            ("server.workers", Some(3), None),
            ("server.connect_timeout", Some(4), None),
            ("auth.acl_status", Some(7), None),
            ("auth.forward_authorization", Some(8), None),
            ("auth.realm", Some(9), None),
        ],
        "{d}"
    );
    assert!(
        d.find("server.connect_timeout")
            .unwrap()
            .message
            .contains("found an integer"),
        "{d}"
    );
    assert!(
        d.find("auth.forward_authorization")
            .unwrap()
            .message
            .contains("true or false"),
        "{d}"
    );
}

#[test]
fn zero_timeouts_are_refused_but_zero_cache_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let text = minimal(dir.path()).replace("[auth]", "header_timeout = \"0s\"\n[auth]")
        + "cache_ttl = \"0s\"\n";
    let d = errors_of(&text, dir.path());
    assert_eq!(
        summary(&d),
        vec![("server.header_timeout", Some(3), None)],
        "{d}"
    );
}

#[test]
fn listen_accepts_one_or_many_and_names_the_bad_entry() {
    let dir = tempfile::tempdir().unwrap();
    let one = minimal(dir.path()).replace("[auth]", "listen = \"0.0.0.0:80\"\n[auth]");
    let c = parse(&one, dir.path(), "p.toml").unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(
        c.server.listen,
        vec!["0.0.0.0:80".parse::<SocketAddr>().unwrap()]
    );

    let bad = minimal(dir.path()).replace(
        "[auth]",
        "listen = [\"127.0.0.1:1\", \"example:80\", 7]\n[auth]",
    );
    let d = errors_of(&bad, dir.path());
    assert_eq!(
        summary(&d),
        vec![
            ("server.listen[1]", Some(3), None),
            ("server.listen[2]", Some(3), None)
        ],
        "{d}"
    );

    let empty = minimal(dir.path()).replace("[auth]", "listen = []\n[auth]");
    assert_eq!(
        summary(&errors_of(&empty, dir.path())),
        vec![("server.listen", Some(3), None)]
    );
}

#[test]
fn missing_required_keys_point_at_their_section() {
    let dir = tempfile::tempdir().unwrap();
    let d = errors_of("# nothing here\n\n[auth]\nrealm = \"x\"\n", dir.path());
    assert_eq!(
        summary(&d),
        vec![("auth.users", Some(3), None)],
        "a missing upstream is a forward-auth-only deployment, not an error: {d}"
    );
}

#[test]
fn unknown_sections_and_misplaced_keys_get_help() {
    let dir = tempfile::tempdir().unwrap();
    let text = minimal(dir.path()).replace("[auth]", "realm = \"x\"\n[auth]")
        + "[sever]\nx = 1\n[loggin]\n";
    let d = errors_of(&format!("upstream = \"http://x\"\n{text}"), dir.path());
    assert_eq!(
        summary(&d),
        vec![
            ("upstream", Some(1), None),
            ("server.realm", Some(4), None),
            ("sever", Some(7), Some("server")),
            ("loggin", Some(9), None),
        ],
        "{d}"
    );
    assert!(
        d.find("upstream").unwrap().message.contains("[server]"),
        "{d}"
    );
    assert!(
        d.find("server.realm").unwrap().message.contains("[auth]"),
        "{d}"
    );
    assert_eq!(d.find("loggin").unwrap().message, "unknown section", "{d}");
}

#[test]
fn empty_unknown_section_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let text = minimal(dir.path()) + "[erors]\n";
    let d = errors_of(&text, dir.path());
    assert_eq!(summary(&d), vec![("erors", Some(5), Some("errors"))], "{d}");
}

#[test]
fn log_and_pages_folders_must_exist() {
    let dir = tempfile::tempdir().unwrap();
    let text = minimal(dir.path())
        + "[errors]\npages = \"no-such-pages\"\nupstream_401 = \"pass-through\"\n[log]\naccess = \"nowhere/access.log\"\nformat = \"jsn\"\n";
    let d = errors_of(&text, dir.path());
    assert_eq!(
        summary(&d),
        vec![
            ("errors.pages", Some(6), None),
            ("errors.upstream_401", Some(7), Some("pass_through")),
            ("log.access", Some(9), None),
            ("log.format", Some(10), Some("json")),
        ],
        "{d}"
    );
    assert!(
        d.find("log.access").unwrap().message.contains("nowhere"),
        "{d}"
    );

    let off = minimal(dir.path()) + "[log]\naccess = \"off\"\n";
    assert_eq!(
        parse(&off, dir.path(), "p").unwrap().log.access,
        AccessLogTarget::Off
    );
}

#[test]
fn upstream_urls() {
    let u = Upstream::parse("http://127.0.0.1").unwrap();
    assert_eq!(
        (u.authority.as_str(), u.base_path.as_str()),
        ("127.0.0.1:80", "")
    );
    let u = Upstream::parse("http://[::1]:3000/app").unwrap();
    assert_eq!(
        (u.authority.as_str(), u.base_path.as_str()),
        ("[::1]:3000", "/app")
    );
    assert!(
        Upstream::parse("https://x")
            .unwrap_err()
            .contains("not supported")
    );
    assert!(
        Upstream::parse("127.0.0.1:3000")
            .unwrap_err()
            .contains("no scheme")
    );
    assert!(Upstream::parse("ftp://x").is_err());
    assert!(Upstream::parse("http://u:p@x").is_err());
    assert!(Upstream::parse("http://x/?a=1").is_err());
    assert!(Upstream::parse("http:///path").is_err());
}

#[test]
fn unreadable_file_is_one_diagnostic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.toml");
    let d = load(&path).unwrap_err();
    assert_eq!(d.items.len(), 1);
    assert_eq!(d.file, path.display().to_string());
    assert!(d.items[0].message.contains("cannot read"), "{d}");
}

#[test]
fn demo_config_has_defaults_and_inline_users() {
    let upstream = Upstream::parse("http://127.0.0.1:3000").unwrap();
    let listen: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    let c = Config::builder_for_demo(
        listen,
        upstream.clone(),
        vec![("demo".into(), "hash".into())],
    );
    assert_eq!(c.server.listen, vec![listen]);
    assert_eq!(c.server.upstream, Some(upstream));
    assert_eq!(
        c.auth.users,
        UserSource::Inline(vec![("demo".into(), "hash".into())])
    );
    assert!(c.auth.public[0].matches(&normalize_path("/public/logo.png")));
    assert_eq!(c.log.access, AccessLogTarget::Stdout);
    assert_eq!(c.auth.policy().schemes, vec![Scheme::Form, Scheme::Basic]);
    assert!(c.ip.allow_unlisted && c.ip.allow.is_empty() && c.ip.deny.is_empty());
    assert!(c.rules.is_empty() && c.filter.is_none() && c.warnings.is_empty());
    assert!(c.server.trusted_proxies.is_empty());
    assert_runtime_defaults(&c);
    let p = c.policy();
    assert!(p.ip.check_address("203.0.113.9".parse().unwrap()).is_ok());
}

/// (key, line) of every entry of an address list, for compact assertions.
fn origins(set: &policy::IpSet) -> Vec<(String, String, Option<usize>)> {
    set.entries()
        .iter()
        .map(|e| (e.net.to_string(), e.origin.key.clone(), e.origin.line))
        .collect()
}

fn owned(v: &[(&str, &str, usize)]) -> Vec<(String, String, Option<usize>)> {
    v.iter()
        .map(|(n, k, l)| (n.to_string(), k.to_string(), Some(*l)))
        .collect()
}

/// A site with users alice and bob, and groups admins (alice) and ops (bob).
fn site_with_groups() -> tempfile::TempDir {
    let dir = site();
    fs::write(
        dir.path().join("users.htpasswd"),
        "# staff\nalice:$2y$05$abc\nbob:$2y$05$def\n",
    )
    .unwrap();
    fs::write(
        dir.path().join("groups.txt"),
        "# groups\nadmins: alice\nops: bob alice\n",
    )
    .unwrap();
    dir
}

#[test]
fn access_control_keys_compile_into_the_policy_with_their_origins() {
    let dir = site_with_groups();
    let text = r#"[server]
upstream = "http://127.0.0.1:3000"
trusted_proxies = ["10.0.0.0/8", "2001:db8:1::/48",
                   "192.0.2.1", "::1"]

[auth]
users = "users.htpasswd"
groups = "groups.txt"
path_case = "insensitive"

[ip]
allow_unlisted = false
allow = ["198.51.100.0/24", "2001:db8:2::/48"]
deny = ["198.51.100.66",
        "2001:db8:2:bad::/64"]
deny_hosts = ["scanner.example", "Crawler.Example."]
deny_action = "not_found"

[[rule]]
path = "/admin/**"
methods = ["get", "POST"]
allow = ["group:admins", "user:bob"]
deny = ["anonymous"]

[[rule]]
path = "/Reports/*"
allow = ["*"]

[filter]
url = "http://127.0.0.1:9000/check"
timeout = "500ms"
on_error = "open"
"#;
    let c = parse(text, dir.path(), "p.toml").unwrap_or_else(|d| panic!("{d}"));
    // The only warning: rule[0] decides GET and POST, and nothing decides other methods.
    let warned: Vec<&str> = c.warnings.iter().map(|w| w.key.as_str()).collect();
    assert_eq!(warned, ["rule[0]"], "{:?}", c.warnings);
    assert!(c.warnings[0].message.contains("applies only to GET, POST"));

    assert_eq!(
        origins(&c.server.trusted_proxies),
        owned(&[
            ("10.0.0.0/8", "server.trusted_proxies[0]", 3),
            ("2001:db8:1::/48", "server.trusted_proxies[1]", 3),
            ("192.0.2.1/32", "server.trusted_proxies[2]", 4),
            ("::1/128", "server.trusted_proxies[3]", 4),
        ])
    );
    assert!(
        c.server
            .trusted_proxies
            .contains("10.9.8.7".parse().unwrap())
    );
    assert!(c.server.trusted_proxies.contains("::1".parse().unwrap()));
    assert!(
        !c.server
            .trusted_proxies
            .contains("192.0.2.2".parse().unwrap())
    );

    assert_eq!(c.auth.groups, Some(dir.path().join("groups.txt")));
    assert!(c.auth.case_insensitive_paths);

    assert!(!c.ip.allow_unlisted);
    assert_eq!(
        origins(&c.ip.allow),
        owned(&[
            ("198.51.100.0/24", "ip.allow[0]", 13),
            ("2001:db8:2::/48", "ip.allow[1]", 13),
        ])
    );
    assert_eq!(
        origins(&c.ip.deny),
        owned(&[
            ("198.51.100.66/32", "ip.deny[0]", 14),
            ("2001:db8:2:bad::/64", "ip.deny[1]", 15),
        ])
    );
    let hosts: Vec<(&str, &str, Option<usize>)> =
        c.ip.deny_hosts
            .iter()
            .map(|h| (h.suffix.as_str(), h.origin.key.as_str(), h.origin.line))
            .collect();
    assert_eq!(
        hosts,
        [
            ("scanner.example", "ip.deny_hosts[0]", Some(16)),
            ("crawler.example", "ip.deny_hosts[1]", Some(16)),
        ]
    );
    assert_eq!(c.ip.action, DenyAction::NotFound);

    assert_eq!(c.rules.len(), 2);
    let r = &c.rules[0];
    assert_eq!(r.path.as_str(), "/admin/**");
    assert_eq!(r.methods, Some(vec!["GET".to_owned(), "POST".to_owned()]));
    assert_eq!(
        r.allow,
        [
            Principal::Group("admins".into()),
            Principal::User("bob".into())
        ]
    );
    assert_eq!(r.deny, [Principal::Anonymous]);
    assert_eq!(
        (r.origin.key.as_str(), r.origin.line),
        ("rule[0]", Some(19))
    );
    let r = &c.rules[1];
    assert_eq!((r.path.as_str(), r.methods.as_ref()), ("/Reports/*", None));
    assert_eq!(r.allow, [Principal::AnyUser]);
    assert!(r.deny.is_empty());
    assert_eq!(
        (r.origin.key.as_str(), r.origin.line),
        ("rule[1]", Some(25))
    );

    let f = c.filter.as_ref().expect("filter");
    assert_eq!(f.url.to_string(), "http://127.0.0.1:9000/check");
    assert_eq!(f.timeout, Duration::from_millis(500));
    assert_eq!(f.on_error, FailMode::Open);

    // The compiled policy decides as configured.
    let p = c.policy();
    let ip = |a: &str| a.parse().unwrap();
    assert!(p.ip.check_address(ip("198.51.100.1")).is_ok());
    let refusal = p.ip.check_address(ip("198.51.100.66")).unwrap_err();
    assert_eq!(refusal.status(), 404);
    assert!(
        refusal.detail.contains("ip.deny[0] (line 14)"),
        "{}",
        refusal.detail
    );
    assert!(p.ip.check_address(ip("2001:db8:2::1")).is_ok());
    assert!(p.ip.check_address(ip("2001:db8:2:bad::1")).is_err());
    assert!(p.ip.check_address(ip("203.0.113.1")).is_err()); // unlisted
    assert!(
        p.ip.check_host(ip("192.0.2.9"), Some("x.crawler.example"))
            .is_err()
    );
    let alice = Identity {
        user: Some("alice".into()),
        groups: vec!["admins".into()],
        ..Identity::default()
    };
    let carol = Identity {
        user: Some("carol".into()),
        groups: vec![],
        ..Identity::default()
    };
    // path_case = "insensitive": /ADMIN is /admin.
    assert!(
        p.rules
            .authorize(&p.normalize("/ADMIN/x"), "GET", &alice)
            .is_ok()
    );
    let denied = p
        .rules
        .authorize(&p.normalize("/ADMIN/x"), "GET", &carol)
        .unwrap_err();
    assert!(
        denied.detail.contains("rule[0] (line 19)"),
        "{}",
        denied.detail
    );
    assert!(
        p.rules
            .authorize(&p.normalize("/reports/q1"), "GET", &carol)
            .is_ok()
    );
}

#[test]
fn filter_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let text = minimal(dir.path()) + "[filter]\nurl = \"http://authz:8181\"\n";
    let c = parse(&text, dir.path(), "p.toml").unwrap_or_else(|d| panic!("{d}"));
    let f = c.filter.expect("filter");
    assert_eq!(f.timeout, DEFAULT_FILTER_TIMEOUT);
    assert_eq!(f.timeout, Duration::from_secs(2));
    assert_eq!(f.on_error, FailMode::Closed);
    assert_eq!(f.url.authority().map(|a| a.as_str()), Some("authz:8181"));
}

#[test]
fn access_control_mistakes_are_all_reported_with_their_lines() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("users.htpasswd"), "alice:x\n").unwrap();
    let text = r#"[server]
upstream = "http://127.0.0.1:3000"

[auth]
users = "users.htpasswd"

[ip]
deny = ["203.0.113.0/24",
        "203.0.113.300/24"]
deny_action = "forbiden"

[[rule]]
allow = ["*"]

[[rule]]
path = "/admin/**"
allow = ["admins", "group:ops"]
methds = ["GET"]

[filter]
url = "https://authz.internal/check"
"#;
    let d = errors_of(text, dir.path());
    assert_eq!(
        summary(&d),
        vec![
            ("ip.deny[1]", Some(9), None),
            ("ip.deny_action", Some(10), Some("forbidden")),
            ("rule[0].path", Some(12), None),
            ("rule[1].allow[0]", Some(17), Some("user:admins")),
            ("rule[1].allow[1]", Some(17), None),
            ("rule[1].methds", Some(18), Some("methods")),
            ("filter.url", Some(21), None),
        ],
        "{d}"
    );
    let message = |k: &str| d.find(k).unwrap().message.clone();
    assert!(message("ip.deny[1]").contains("203.0.113.300/24"), "{d}");
    assert!(message("ip.deny_action").contains("\"not_found\""), "{d}");
    assert!(message("rule[0].path").contains("is required"), "{d}");
    assert!(
        message("rule[1].allow[0]").contains("is not a principal"),
        "{d}"
    );
    assert!(
        message("rule[1].allow[1]").contains("group:ops needs auth.groups"),
        "{d}"
    );
    assert!(message("filter.url").contains("https"), "{d}");
    assert!(
        d.to_string().lines().nth(2)
            == Some(
                "portcullis.toml:12: rule[0].path: is required in each [[rule]] (for example path = \"/admin/**\")"
            ),
        "{d}"
    );
}

#[test]
fn more_access_control_mistakes() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("users.htpasswd"), "alice:x\n").unwrap();
    fs::write(
        dir.path().join("groups.txt"),
        "admins: alice\nnobody here\n: bob\n",
    )
    .unwrap();
    let text = r#"[server]
upstream = "http://127.0.0.1:3000"
trusted_proxies = "10.0.0.0/8"

[auth]
users = "users.htpasswd"
groups = "groups.txt"
path_case = "insenstive"

[ip]
allow_unlisted = false
deny_hosts = ["*.scanner.example", "192.0.2.1", "bad_name.example"]

[[rule]]
path = "admin"
methods = ["GET", "GE T"]
allow = []

[filter]
timeout = "0s"
on_error = "opne"
"#;
    let d = errors_of(text, dir.path());
    let groups = dir.path().join("groups.txt").display().to_string();
    assert_eq!(
        summary(&d),
        vec![
            ("server.trusted_proxies", Some(3), None),
            ("auth.groups", Some(7), None),
            ("auth.groups", Some(7), None),
            ("auth.path_case", Some(8), Some("insensitive")),
            ("ip.allow_unlisted", Some(11), None),
            ("ip.deny_hosts[0]", Some(12), None),
            ("ip.deny_hosts[1]", Some(12), None),
            ("ip.deny_hosts[2]", Some(12), None),
            ("rule[0]", Some(14), None),
            ("rule[0].path", Some(15), None),
            ("rule[0].methods[1]", Some(16), None),
            ("filter.url", Some(19), None),
            ("filter.timeout", Some(20), None),
            ("filter.on_error", Some(21), Some("open")),
        ],
        "{d}"
    );
    let shown = d.to_string();
    assert!(
        shown.contains(&format!("auth.groups: {groups}:2: expected")),
        "{d}"
    );
    assert!(
        shown.contains(&format!("auth.groups: {groups}:3: the group name")),
        "{d}"
    );
    assert!(shown.contains("every client would be refused"), "{d}");
    assert!(shown.contains("neither allow nor deny"), "{d}");
    assert!(shown.contains("filter.url: is required"), "{d}");

    // `[rule]` instead of `[[rule]]`, a missing group file.
    let text = minimal(dir.path()).replace("[auth]\n", "[auth]\ngroups = \"nope.txt\"\n")
        + "[rule]\npath = \"/x\"\nallow = [\"*\"]\n";
    let d = errors_of(&text, dir.path());
    assert_eq!(
        summary(&d),
        vec![("auth.groups", Some(4), None), ("rule", Some(6), None)],
        "{d}"
    );
    assert!(d.items[0].message.contains("group file not found"), "{d}");
    assert!(d.items[1].message.contains("[[rule]]"), "{d}");
}

#[test]
fn redundant_entries_duplicate_rules_and_unknown_names_are_warnings() {
    let dir = site_with_groups();
    let text = r#"[server]
upstream = "http://127.0.0.1:3000"
trusted_proxies = ["10.0.0.0/8", "10.1.0.0/16"]
[auth]
users = "users.htpasswd"
groups = "groups.txt"
[ip]
allow = ["192.0.2.0/25"]
deny = ["192.0.2.0/24", "192.0.2.0/24"]
deny_hosts = ["example.net", "a.example.net"]
[[rule]]
path = "/admin/**"
methods = ["GET", "POST"]
allow = ["group:admins", "user:carol"]
[[rule]]
path = "/admin/**"
methods = ["post", "get"]
allow = ["group:admin", "user:alice"]
deny = ["user:alice"]
[[rule]]
path = "/admin/**"
allow = ["*"]
"#;
    let c = parse(text, dir.path(), "p.toml").unwrap_or_else(|d| panic!("{d}"));
    let w: Vec<(&str, Option<usize>, Option<&str>)> = c
        .warnings
        .iter()
        .map(|w| (w.key.as_str(), w.line, w.suggestion.as_deref()))
        .collect();
    assert_eq!(
        w,
        vec![
            ("server.trusted_proxies[1]", Some(3), None),
            ("ip.allow[0]", Some(8), None),
            ("ip.deny[1]", Some(9), None),
            ("ip.deny_hosts[1]", Some(10), None),
            ("rule[0].allow[1]", Some(14), None),
            ("rule[1]", Some(15), None),
            ("rule[1].allow[0]", Some(18), Some("group:admins")),
            ("rule[1].allow[1]", Some(18), None),
        ],
        "{:#?}",
        c.warnings
    );
    let shown = format_warnings("p.toml", &c.warnings);
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), 8, "{shown}");
    assert_eq!(
        lines[0],
        "p.toml:3: warning: server.trusted_proxies[1]: \"10.1.0.0/16\" is inside \
         server.trusted_proxies[0] (\"10.0.0.0/8\"), so it changes nothing; remove it"
    );
    assert!(lines[1].contains("deny is checked first"), "{shown}");
    assert!(lines[2].contains("listed twice"), "{shown}");
    assert!(lines[4].contains("unknown user \"carol\""), "{shown}");
    assert!(
        lines[5].starts_with("p.toml:15: warning: rule[1]: duplicate of rule[0] (line 11)"),
        "{shown}"
    );
    assert!(lines[6].contains("unknown group \"admin\""), "{shown}");
    assert!(lines[7].contains("deny wins"), "{shown}");
    // Warnings change nothing: every entry is still in force.
    assert_eq!(c.server.trusted_proxies.len(), 2);
    assert_eq!(c.rules.len(), 3);
}

#[test]
fn methods_are_upper_cased_and_near_misses_warned() {
    let dir = tempfile::tempdir().unwrap();
    let text = minimal(dir.path())
        + "[[rule]]\npath = \"/api/**\"\nmethods = [\"get\", \"GTE\", \"PROPFIND\", \"GET\"]\nallow = [\"*\"]\n";
    let c = parse(&text, dir.path(), "p.toml").unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(
        c.rules[0].methods,
        Some(vec!["GET".into(), "GTE".into(), "PROPFIND".into()])
    );
    let w: Vec<(&str, Option<&str>)> = c
        .warnings
        .iter()
        .map(|w| (w.key.as_str(), w.suggestion.as_deref()))
        .collect();
    assert_eq!(
        w,
        [
            ("rule[0]", None),
            ("rule[0].methods[1]", Some("GET")),
            ("rule[0].methods[3]", None)
        ],
        "{:?}",
        c.warnings
    );
}

#[test]
fn runtime_sections_parse_to_expected_values() {
    let dir = tempfile::tempdir().unwrap();
    let text = minimal(dir.path()).replace(
        "[auth]",
        "listen = [\"0.0.0.0:8080\", \"[::1]:8443\"]\n[auth]",
    ) + r#"
[dynamic]
deny_by_concurrent = { enabled = true, max_concurrent = 12 }
deny_action = "too_many_requests"
logging_only = true

[dynamic.deny_by_rate]
enabled = true
max_requests = 100
interval = "1s 500ms"

[logon]
max_failures = 3
find_time = "10m"
ban_time = "1h"

[state]
backend = "rediss://portcullis:s3cret@redis.internal:6380/2"
on_backend_error = "open"
timeout = "250ms"
key_prefix = "gw1:"

[admin]
listen = "127.0.0.1:9464"
"#;
    let c = parse(&text, dir.path(), "p.toml").unwrap_or_else(|d| panic!("{d}"));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    assert_eq!(
        c.dynamic,
        Dynamic {
            max_concurrent: Some(12),
            rate: Some((100, Duration::from_millis(1500))),
            deny_action: DenyAction::TooManyRequests,
            logging_only: true,
            ipv6_prefix: 64,
        }
    );
    assert_eq!(
        c.logon,
        Logon {
            enabled: true,
            max_failures: 3,
            find_time: Duration::from_secs(600),
            ban_time: Duration::from_secs(3600),
        }
    );
    assert_eq!(
        c.state,
        State {
            backend: StateBackend::Redis("rediss://portcullis:s3cret@redis.internal:6380/2".into()),
            on_backend_error: FailMode::Open,
            timeout: Duration::from_millis(250),
            key_prefix: "gw1:".into(),
            ca: None,
            client_cert: None,
            password_file: None,
        }
    );
    // The URL is kept as written for the store, but never shown with its password.
    assert_eq!(
        c.state.backend.to_string(),
        "rediss://portcullis:****@redis.internal:6380/2"
    );
    assert!(!format!("{c:?}").contains("s3cret"));
    assert_eq!(c.admin.listen, Some("127.0.0.1:9464".parse().unwrap()));

    // The other way round: rate inline, concurrency as a sub-table, both switched off (the
    // values are still checked but no limit applies); a Unix socket; explicit defaults.
    let text = minimal(dir.path())
        + r#"[dynamic]
deny_by_rate = { enabled = false, max_requests = 5, interval = "1m" }
[dynamic.deny_by_concurrent]
enabled = false
max_concurrent = 2
[logon]
[state]
backend = "redis+unix:///run/redis/redis.sock"
"#;
    let c = parse(&text, dir.path(), "p.toml").unwrap_or_else(|d| panic!("{d}"));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    assert_eq!(c.dynamic, Dynamic::default());
    assert_eq!(c.logon, Logon::default());
    assert_eq!(
        c.state.backend,
        StateBackend::Redis("redis+unix:///run/redis/redis.sock".into())
    );
    assert_eq!(c.state.timeout, Duration::from_millis(100));
    assert_eq!(c.admin.listen, None);
}

#[test]
fn runtime_mistakes_are_all_reported_with_their_lines() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("users.htpasswd"), "alice:x\n").unwrap();
    let text = r#"[server]
listen = ["127.0.0.1:8080", "0.0.0.0:8443"]
upstream = "http://127.0.0.1:3000"

[auth]
users = "users.htpasswd"

[dynamic]
deny_by_concurrent = { enabled = true, max_concurrent = 0 }
deny_action = "forbiden"

[dynamic.deny_by_rate]
enabled = true
max_request = 10
interval = "0s"

[logon]
max_failures = 1001
ban_time = "forever"

[state]
backend = "redis//localhost"
timeout = "1m"
key_prefix = "port cullis:"

[admin]
listen = "127.0.0.1:8080"
"#;
    let d = errors_of(text, dir.path());
    assert_eq!(
        summary(&d),
        vec![
            ("dynamic.deny_by_concurrent.max_concurrent", Some(9), None),
            ("dynamic.deny_action", Some(10), Some("forbidden")),
            (
                "dynamic.deny_by_rate.max_request",
                Some(14),
                Some("max_requests")
            ),
            ("dynamic.deny_by_rate.interval", Some(15), None),
            ("logon.max_failures", Some(18), None),
            ("logon.ban_time", Some(19), None),
            ("state.backend", Some(22), Some("redis://localhost")),
            ("state.timeout", Some(23), None),
            ("state.key_prefix", Some(24), None),
            ("admin.listen", Some(27), None),
        ],
        "{d}"
    );
    let message = |k: &str| d.find(k).unwrap().message.clone();
    assert_eq!(
        message("dynamic.deny_by_concurrent.max_concurrent"),
        "must be from 1 to 100000 (requests in flight per client), not 0; \
         to turn the limit off, set enabled = false"
    );
    assert!(
        message("dynamic.deny_action").contains("\"too_many_requests\""),
        "{d}"
    );
    assert!(
        message("dynamic.deny_by_rate.interval")
            .starts_with("an interval of 0 counts no requests; write a duration from 1ms to 24h"),
        "{d}"
    );
    assert!(
        message("logon.max_failures").contains("from 1 to 1000"),
        "{d}"
    );
    assert!(
        message("logon.ban_time").contains("\"forever\" is not a duration")
            && message("logon.ban_time").contains("from 1ms to 30d"),
        "{d}"
    );
    assert!(
        message("state.backend").contains("\"redis//localhost\" is not a Redis URL")
            && message("state.backend").contains("\"redis://127.0.0.1:6379/0\""),
        "{d}"
    );
    assert!(
        message("state.timeout").contains("longer than the 10s allowed"),
        "{d}"
    );
    assert!(message("state.key_prefix").contains("spaces"), "{d}");
    assert_eq!(
        d.to_string().lines().last(),
        Some(
            "portcullis.toml:27: admin.listen: the admin listener must not be a public \
             listener: 127.0.0.1:8080 is also server.listen[0]; give [admin] its own port, \
             like \"127.0.0.1:9464\""
        ),
        "{d}"
    );

    // A wildcard public listener takes the port on every address; the default listener counts.
    let wild = minimal(dir.path()).replace("[auth]", "listen = \"0.0.0.0:8443\"\n[auth]")
        + "[admin]\nlisten = \"127.0.0.1:8443\"\n";
    let d = errors_of(&wild, dir.path());
    assert_eq!(summary(&d), vec![("admin.listen", Some(7), None)], "{d}");
    assert!(
        d.items[0]
            .message
            .contains("server.listen (0.0.0.0:8443) already takes port 8443"),
        "{d}"
    );
    let default = minimal(dir.path()) + "[admin]\nlisten = \"localhost:8080\"\n";
    let d = errors_of(&default, dir.path());
    assert!(
        d.items[0]
            .message
            .contains("is also server.listen (the default)"),
        "{d}"
    );

    // Wrong shapes and types, and an [admin] without its address.
    let shapes = minimal(dir.path())
        + "[dynamic]\ndeny_by_rate = true\ndeny_by_concurrent = { enabled = \"yes\", max_concurrent = \"5\" }\n\
           [logon]\nfind_time = 120\n[admin]\n";
    let d = errors_of(&shapes, dir.path());
    assert_eq!(
        summary(&d),
        vec![
            ("dynamic.deny_by_rate", Some(6), None),
            ("dynamic.deny_by_concurrent.enabled", Some(7), None),
            ("dynamic.deny_by_concurrent.max_concurrent", Some(7), None),
            ("logon.find_time", Some(9), None),
            ("admin.listen", Some(10), None),
        ],
        "{d}"
    );
    assert!(
        d.find("dynamic.deny_by_rate")
            .unwrap()
            .message
            .contains("expected a table like { enabled = true"),
        "{d}"
    );
    assert!(
        d.find("admin.listen")
            .unwrap()
            .message
            .contains("is required in [admin]"),
        "{d}"
    );
}

#[test]
fn redis_passwords_never_appear_in_diagnostics() {
    let dir = tempfile::tempdir().unwrap();
    for (backend, why) in [
        ("redis://:hunter2@cache.internal:99999/0", "from 1 to 65535"),
        ("redis://admin:hunter2@cache.internal/zero", "non-negative"),
        ("redis//:hunter2@cache.internal", "not a Redis URL"),
        ("redis://admin:hunter2@", "no host"),
        (
            "redis://:hun/ter2@cache.internal",
            "percent-encode it as %2F",
        ),
    ] {
        let text = minimal(dir.path()) + &format!("[state]\nbackend = \"{backend}\"\n");
        let d = errors_of(&text, dir.path());
        assert_eq!(summary(&d).len(), 1, "{d}");
        assert_eq!(d.items[0].key, "state.backend", "{d}");
        assert_eq!(d.items[0].line, Some(6), "{d}");
        assert!(d.items[0].message.contains(why), "{d}");
        let shown = d.to_string();
        assert!(!shown.contains("hunter2"), "{backend}: {shown}");
        assert!(!format!("{d:?}").contains("hunter2"), "{backend}: {d:?}");
    }
    let d = errors_of(
        &(minimal(dir.path()) + "[state]\nbackend = \"redis//:hunter2@cache.internal\"\n"),
        dir.path(),
    );
    assert_eq!(
        d.items[0].suggestion.as_deref(),
        Some("redis://:****@cache.internal")
    );
    assert!(
        d.items[0]
            .message
            .contains("\"redis//:****@cache.internal\""),
        "{d}"
    );
}

#[test]
fn runtime_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let text = minimal(dir.path())
        + r#"[dynamic]
deny_by_rate = { max_requests = 5 }
[dynamic.deny_by_concurrent]
max_concurrent = 3
[state]
timeout = "1s"
key_prefix = "x:"
[admin]
listen = "0.0.0.0:9464"
"#;
    let c = parse(&text, dir.path(), "p.toml").unwrap_or_else(|d| panic!("{d}"));
    let w: Vec<(&str, Option<usize>)> = c
        .warnings
        .iter()
        .map(|w| (w.key.as_str(), w.line))
        .collect();
    assert_eq!(
        w,
        [
            ("dynamic.deny_by_rate", Some(6)),
            ("dynamic.deny_by_concurrent", Some(7)),
            ("state.timeout", Some(10)),
            ("state.key_prefix", Some(11)),
            ("admin.listen", Some(13)),
        ],
        "{:#?}",
        c.warnings
    );
    let shown = format_warnings("p.toml", &c.warnings);
    let lines: Vec<&str> = shown.lines().collect();
    assert!(
        lines[0].contains("sets max_requests but not `enabled`") && lines[0].contains("is off"),
        "{shown}"
    );
    assert!(lines[2].contains("only to a Redis backend"), "{shown}");
    assert!(
        lines[4].contains("listens on every address")
            && lines[4].contains("admin endpoints have no authentication"),
        "{shown}"
    );
    // Warnings change nothing: the limits stay off, the admin listener is used.
    assert_eq!(c.dynamic.rate, None);
    assert_eq!(c.dynamic.max_concurrent, None);
    assert_eq!(c.admin.listen, Some("0.0.0.0:9464".parse().unwrap()));

    let admin = |addr: &str| {
        let text = minimal(dir.path()) + &format!("[admin]\nlisten = \"{addr}\"\n");
        parse(&text, dir.path(), "p.toml")
            .unwrap_or_else(|d| panic!("{d}"))
            .warnings
    };
    let public = admin("203.0.113.7:9464");
    assert_eq!(public.len(), 1, "{public:?}");
    assert_eq!(
        public[0].message,
        "203.0.113.7 is not a loopback address; admin endpoints have no authentication; \
         keep them on loopback or a private network"
    );
    for quiet in [
        "127.0.0.1:9464",
        "[::1]:9464",
        "10.0.0.5:9464",
        "[fd00::5]:9464",
    ] {
        assert_eq!(admin(quiet), [], "{quiet}");
    }
}

#[test]
fn portal_and_mail_settings_are_checked_with_their_lines() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("users.htpasswd"), "alice:{SHA}x\n").unwrap();
    let text = r#"[server]
upstream = "http://127.0.0.1:3000"

[auth]
users = "users.htpasswd"
schemes = ["form", "basic", "form"]

[portal]
prefix = "/auth/"
idle_timeout = "2h"
max_age = "1h"
public_url = "app.example.com"
invite_ttl = "0s"

[mail]
host = "smtp.example.com:25"
port = 70000
from = "nobody"
username = "portcullis"
"#;
    let d = errors_of(text, dir.path());
    assert_eq!(
        summary(&d),
        vec![
            ("auth.schemes[2]", Some(6), None),
            ("portal.prefix", Some(9), None),
            ("portal.max_age", Some(11), None),
            ("portal.public_url", Some(12), None),
            ("portal.invite_ttl", Some(13), None),
            ("mail.password", Some(15), None),
            ("mail.host", Some(16), None),
            ("mail.port", Some(17), None),
            ("mail.from", Some(18), None),
        ],
        "{d}"
    );

    let ok = r#"[server]
upstream = "http://127.0.0.1:3000"

[auth]
users = "users.htpasswd"
schemes = ["form"]

[portal]
prefix = "/_auth"
public_url = "https://app.example.com/"

[mail]
host = "smtp.example.com"
from = "Portcullis <noreply@example.com>"
starttls = false
"#;
    let c = crate::parse(ok, dir.path(), "portcullis.toml").unwrap();
    assert_eq!(c.portal.prefix, "/_auth");
    assert_eq!(
        c.portal.public_url.as_deref(),
        Some("https://app.example.com")
    );
    assert_eq!(c.portal.idle_timeout, Duration::from_secs(1800));
    let mail = c.mail.unwrap();
    assert_eq!((mail.port, mail.starttls), (25, false));
    assert_eq!(c.auth.schemes, vec![policy::Scheme::Form]);
    // [mail] with htpasswd users sends nothing: said, not refused.
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert_eq!(c.warnings[0].key, "mail");
    assert_eq!(c.warnings[0].line, Some(12));
    assert!(c.warnings[0].message.contains("SQLite"));
    // With SQLite users but no public_url: no "forgot password", said too.
    let sqlite = ok
        .replace("users = \"users.htpasswd\"", "users = \"sqlite:users.db\"")
        .replace("public_url = \"https://app.example.com/\"\n", "");
    let c = crate::parse(&sqlite, dir.path(), "portcullis.toml").unwrap();
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(c.warnings[0].message.contains("portal.public_url"));
    // [portal] on a Basic-only site with htpasswd users: said to have no effect.
    let basic = ok
        .replace("schemes = [\"form\"]", "schemes = [\"basic\"]")
        .split("[mail]")
        .next()
        .unwrap()
        .to_owned();
    let c = crate::parse(&basic, dir.path(), "portcullis.toml").unwrap();
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert_eq!(c.warnings[0].key, "portal");
    assert!(c.warnings[0].message.contains("has no effect"));
}

#[test]
fn connection_bounds_are_checked_with_their_line() {
    let dir = site();
    let text = "[server]\nupstream = \"http://127.0.0.1:3000\"\nmax_connections = 0\nupstream_max_connections = 0\n[auth]\nusers = \"users.htpasswd\"\n";
    let d = errors_of(text, dir.path());
    let got = summary(&d);
    assert!(
        got.contains(&("server.max_connections", Some(3), None)),
        "{got:?}"
    );
    assert!(
        got.contains(&("server.upstream_max_connections", Some(4), None)),
        "{got:?}"
    );
    let ok = "[server]\nupstream = \"http://127.0.0.1:3000\"\nupstream_max_connections = 512\n[auth]\nusers = \"users.htpasswd\"\n";
    let c = parse(ok, dir.path(), "portcullis.toml").unwrap();
    assert_eq!(c.server.upstream_max_connections, Some(512));
}
