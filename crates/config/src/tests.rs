//! Whole-file tests: valid configs become the expected values, bad ones report every problem
//! at its line.

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use policy::{Scheme, normalize_path};

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
    assert_eq!(c.server.upstream.authority.as_str(), "app.internal:3000");
    assert_eq!(c.server.upstream.base_path, "/base");
    assert_eq!(
        c.server.tls,
        Some(Tls {
            cert: base.join("tls/cert.pem"),
            key: base.join("tls/key.pem")
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
    assert_eq!(c.server.upstream.authority.as_str(), "127.0.0.1:3000");
    assert_eq!(c.server.upstream.base_path, "");
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

[ip]
deny = ["203.0.113.0/24"]
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
            ("ip", Some(13), None),
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
        "portcullis.toml:13: ip: the [ip] section is not supported by this version of Portcullis yet"
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
users = "sqlite:portcullis.db"
groups = "groups.txt"
schemes = ["basic", "digest", "kerberos"]

[[rule]]
path = "/admin/**"

[dynamic]
logging_only = true
"#;
    let d = errors_of(text, dir.path());
    assert_eq!(
        summary(&d),
        vec![
            ("server.upstream", Some(2), None),
            ("server.trusted_proxies", Some(3), None),
            ("server.trusted_proxies[1]", Some(3), None),
            ("auth.users", Some(6), None),
            ("auth.groups", Some(7), None),
            ("auth.schemes[1]", Some(8), None),
            ("auth.schemes[2]", Some(8), None),
            ("rule", Some(10), None),
            ("dynamic", Some(13), None),
        ],
        "{d}"
    );
    for key in [
        "server.upstream",
        "server.trusted_proxies",
        "auth.users",
        "auth.groups",
        "auth.schemes[1]",
        "rule",
    ] {
        assert!(
            d.find(key).unwrap().message.contains("not supported"),
            "{key}: {d}"
        );
    }
    assert!(d.find("rule").unwrap().message.contains("[[rule]]"), "{d}");
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
        vec![
            ("auth.users", Some(3), None),
            ("server.upstream", None, None)
        ],
        "{d}"
    );
    assert!(
        d.to_string()
            .contains("portcullis.toml: server.upstream: is required"),
        "{d}"
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
    assert_eq!(c.server.upstream, upstream);
    assert_eq!(
        c.auth.users,
        UserSource::Inline(vec![("demo".into(), "hash".into())])
    );
    assert!(c.auth.public[0].matches(&normalize_path("/public/logo.png")));
    assert_eq!(c.log.access, AccessLogTarget::Stdout);
    assert_eq!(c.auth.policy().schemes, vec![Scheme::Basic]);
}
