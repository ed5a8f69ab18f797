//! Fixtures of the portal tests (tests/portal.rs, tests/accounts.rs, tests/browser.rs): a
//! form-login site with two htpasswd users, a site whose users live in SQLite with mail to a
//! real SMTP server, and `portcullis users …` against a running gateway.

use super::{Gateway, SiteConfig, SmtpSink, TestUpstream, dir_with_user, htpasswd};

/// Form and Basic sign-in; alice may open /admin/**, every signed-in user the rest.
pub fn portal_config() -> SiteConfig {
    SiteConfig::new()
        .server("trusted_proxies = [\"10.9.9.9/32\"]")
        .auth("schemes = [\"form\", \"basic\"]")
        .log("audit = \"audit.log\"")
        .section("logon", "max_failures = 3")
        .raw(
            r#"[[rule]]
path = "/admin/**"
allow = ["user:alice"]

[[rule]]
path = "/**"
allow = ["*"]
"#,
        )
}

/// Users in SQLite, form sign-in, links mailed to the SMTP server on `smtp_port`.
pub fn accounts_config(smtp_port: u16) -> SiteConfig {
    SiteConfig::new()
        .auth("schemes = [\"form\"]")
        .auth("users = \"sqlite:users.db\"")
        .log("audit = \"audit.log\"")
        .section("portal", "public_url = \"http://@LISTEN@\"")
        .section("mail", "host = \"127.0.0.1\"")
        .section("mail", &format!("port = {smtp_port}"))
        .section("mail", "starttls = false")
        .section("mail", "from = \"Portcullis <noreply@example.com>\"")
}

/// A gateway with `config` (usually [`portal_config`]) and the users alice
/// (`wonderland-42`) and bob (`builder-of-things`).
pub fn start_portal(config: &str) -> (TestUpstream, Gateway) {
    let upstream = TestUpstream::start();
    let dir = dir_with_user("alice", "wonderland-42");
    htpasswd(
        &dir.path().join("users.htpasswd"),
        &["-B", "-C", "4"],
        "bob",
        "builder-of-things",
    );
    let gw = Gateway::start_in(dir, config, upstream.addr);
    (upstream, gw)
}

/// A gateway with [`accounts_config`] mailing through `smtp`.
pub fn start_accounts(smtp: &SmtpSink) -> (TestUpstream, Gateway) {
    let upstream = TestUpstream::start();
    let config = accounts_config(smtp.port).build();
    let gw = Gateway::start(&config, upstream.addr, &[]);
    (upstream, gw)
}

/// Runs `portcullis users ARGS -c <the gateway's config>`; returns stdout and stderr (trimmed).
pub fn users_cli(gw: &Gateway, args: &[&str]) -> (String, String) {
    super::cli(gw, "users", args)
}
