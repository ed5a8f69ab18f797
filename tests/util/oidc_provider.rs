//! A real OpenID Connect provider for the tests: PyPI `oidc-provider-mock` on a free loopback
//! port (from the virtual environment scripts/test makes, made here if missing), with alice
//! (`sub` 0f3c-alice, groups admins and staff) predefined; stopped on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{Gateway, SiteConfig, TestUpstream, free_port, wait_for_port};

/// The provider, stopped on drop.
pub struct Provider {
    pub port: u16,
    child: Child,
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `oidc-provider-mock` from the virtual environment scripts/test makes (made here if missing).
pub fn mock_binary() -> PathBuf {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-venv");
    let bin = venv.join("bin/oidc-provider-mock");
    if !bin.exists() {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success())
            && Command::new(venv.join("bin/pip"))
                .args(["install", "-q", "oidc-provider-mock==0.3.4"])
                .status()
                .is_ok_and(|s| s.success());
        assert!(
            ok,
            "the tests need oidc-provider-mock (PyPI): run scripts/test"
        );
    }
    bin
}

pub fn start_provider() -> Provider {
    let port = free_port();
    let child = Command::new(mock_binary())
        .args(["-p", &port.to_string(), "--user-claims"])
        .arg(r#"{"sub": "0f3c-alice", "preferred_username": "alice", "groups": ["admins", "staff"], "email": "alice@example.org"}"#)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(
        format!("127.0.0.1:{port}").parse().unwrap(),
        Duration::from_secs(20),
    );
    Provider { port, child }
}

/// A site that signs in only through the provider at `issuer` ("Example ID", client secret in
/// `oidc-secret`), `/admin/**` for the admins group; `extra` lines go in `[oidc]`.
pub fn oidc_config(issuer: &str, extra: &str) -> SiteConfig {
    SiteConfig::new()
        .auth("schemes = [\"oidc\"]")
        .section("portal", "public_url = \"http://@LISTEN@\"")
        .section(
            "oidc",
            &format!(
                "name = \"Example ID\"\nissuer = \"{issuer}\"\nclient_id = \"portcullis\"\nclient_secret_file = \"oidc-secret\"\n{extra}"
            ),
        )
        .raw("[[rule]]\npath = \"/admin/**\"\nallow = [\"group:admins\"]\n")
}

/// [`oidc_config`] started, with an empty `users.htpasswd`.
pub fn oidc_site(issuer: &str, extra: &str) -> (TestUpstream, Gateway) {
    let upstream = TestUpstream::start();
    let gw = Gateway::start(
        &oidc_config(issuer, extra).build(),
        upstream.addr,
        &[("users.htpasswd", ""), ("oidc-secret", "s3cret\n")],
    );
    (upstream, gw)
}
