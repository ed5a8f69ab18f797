//! A real OpenID Connect provider for the tests: PyPI `oidc-provider-mock` on a free loopback
//! port (from the virtual environment scripts/test makes, made here if missing), with alice
//! (`sub` 0f3c-alice, groups admins and staff) predefined; stopped on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{Gateway, SiteConfig, TestUpstream, free_port};

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
    // The port is ours only once the provider answers on it with its own issuer (another test's
    // server may have taken a port free_port() gave out): otherwise another one is tried.
    for _ in 0..4 {
        let port = free_port();
        let mut child = Command::new(mock_binary())
            .args(["-p", &port.to_string(), "--user-claims"])
            .arg(r#"{"sub": "0f3c-alice", "preferred_username": "alice", "groups": ["admins", "staff"], "email": "alice@example.org"}"#)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let issuer = format!("http://127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            let answered = Command::new("curl")
                .args(["-s", "--max-time", "2"])
                .arg(format!("{issuer}/.well-known/openid-configuration"))
                .output()
                .is_ok_and(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .contains(&format!("\"issuer\": \"{issuer}\""))
                        || String::from_utf8_lossy(&o.stdout)
                            .contains(&format!("\"issuer\":\"{issuer}\""))
                });
            if answered {
                return Provider { port, child };
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("oidc-provider-mock did not start")
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
