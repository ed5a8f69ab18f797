//! Fixtures of the portal tests (tests/portal.rs, tests/accounts.rs, tests/browser.rs): a
//! form-login site with two htpasswd users, a site whose users live in SQLite with mail to a
//! real SMTP server, and `portcullis users …` against a running gateway.

use super::{Gateway, SmtpSink, TestUpstream, dir_with_user, htpasswd};

/// Form and Basic sign-in; alice may open /admin/**, every signed-in user the rest.
pub const PORTAL_CONFIG: &str = r#"
[server]
listen = ["@LISTEN@"]
upstream = "http://@UPSTREAM@"
trusted_proxies = ["10.9.9.9/32"]

[auth]
schemes = ["form", "basic"]
users = "users.htpasswd"

[[rule]]
path = "/admin/**"
allow = ["user:alice"]

[[rule]]
path = "/**"
allow = ["*"]

[log]
access = "access.log"
audit = "audit.log"

[logon]
max_failures = 3
"#;

/// Users in SQLite, form sign-in, links mailed to the SMTP server on port `@SMTP@`.
pub const ACCOUNTS_CONFIG: &str = r#"
[server]
listen = ["@LISTEN@"]
upstream = "http://@UPSTREAM@"

[auth]
schemes = ["form"]
users = "sqlite:users.db"

[portal]
public_url = "http://@LISTEN@"

[mail]
host = "127.0.0.1"
port = @SMTP@
starttls = false
from = "Portcullis <noreply@example.com>"

[log]
access = "access.log"
audit = "audit.log"
"#;

/// A gateway with `config` (usually [`PORTAL_CONFIG`]) and the users alice
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

/// A gateway with [`ACCOUNTS_CONFIG`] mailing through `smtp`.
pub fn start_accounts(smtp: &SmtpSink) -> (TestUpstream, Gateway) {
    let upstream = TestUpstream::start();
    let config = ACCOUNTS_CONFIG.replace("@SMTP@", &smtp.port.to_string());
    let gw = Gateway::start(&config, upstream.addr, &[]);
    (upstream, gw)
}

/// Runs `portcullis users ARGS -c <the gateway's config>`; returns stdout and stderr (trimmed).
pub fn users_cli(gw: &Gateway, args: &[&str]) -> (String, String) {
    super::cli(gw, "users", args)
}
