//! Live reload: SIGHUP, or a change of the config file or the error-page folder, loads and
//! validates the configuration completely, then swaps it in for new requests. Requests in flight
//! finish under the gateway they started with. An invalid configuration is refused with its
//! diagnostics in the log, and the old one keeps serving.
//!
//! What survives a reload: limiter counters, in-flight counts and bans (the state store is kept
//! unless `[state]` itself changed), the access log (kept unless `[log]` changed), the user store
//! and its verification cache (kept unless `auth.users` / `auth.cache_ttl` changed). Listener
//! changes are applied: new addresses are bound first (a reload that cannot bind is refused),
//! removed ones stop accepting while their connections finish.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use store::FileStamp;

use crate::server::{Server, bind_addrs};

/// Why a reload was refused.
#[derive(Debug)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Loads `path` and, if valid, makes it the configuration in force.
pub async fn reload(server: &mut Server, path: &Path) -> Result<(), Refused> {
    let current = server.current();
    let config = config::load(path).map_err(|d| Refused(d.to_string()))?;
    for line in config::format_warnings(&path.display().to_string(), &config.warnings).lines() {
        tracing::warn!("{line}");
    }
    // Only a different backend needs a new store; anything else keeps counters and bans.
    let state = if config.state.backend == current.config().state.backend {
        if config.state != current.config().state {
            tracing::warn!(
                "[state] timeout, on_backend_error, key_prefix, ca, cert, key and password_file changes take effect at the next restart (or with a new backend)"
            );
        }
        current.state().clone()
    } else {
        crate::connect_state(&config)
            .await
            .map_err(|e| Refused(e.to_string()))?
    };
    let have = server.listening();
    let new_addrs: Vec<_> = config
        .server
        .listen
        .iter()
        .filter(|a| !have.contains(a))
        .copied()
        .collect();
    let bound =
        bind_addrs(&new_addrs, config.server.backlog).map_err(|e| Refused(e.to_string()))?;
    let gateway = current
        .rebuild(config, state)
        .map_err(|e| Refused(e.to_string()))?;
    server.swap(Arc::new(gateway), bound);
    Ok(())
}

fn stamp(path: &Path) -> Option<FileStamp> {
    FileStamp::of(path).ok()
}

/// Notices changes of the config file and of the files it names that only a reload picks up
/// (the error-page folder and its templates). Users and groups files reload by themselves.
pub struct ConfigWatch {
    files: Vec<(PathBuf, Option<FileStamp>)>,
}

impl ConfigWatch {
    /// Watches `config_path` and what `config` names.
    pub fn new(config_path: &Path, config: &config::Config) -> ConfigWatch {
        let mut paths = vec![config_path.to_path_buf()];
        if let Some(pages) = &config.errors.pages {
            paths.push(pages.clone());
            if let Ok(entries) = std::fs::read_dir(pages) {
                paths.extend(entries.flatten().map(|e| e.path()));
            }
        }
        ConfigWatch {
            files: paths
                .into_iter()
                .map(|p| {
                    let s = stamp(&p);
                    (p, s)
                })
                .collect(),
        }
    }

    /// Whether anything changed since the last call (or since `new`).
    pub fn changed(&mut self) -> bool {
        let mut changed = false;
        for (path, old) in &mut self.files {
            let now = stamp(path);
            if now != *old {
                *old = now;
                changed = true;
            }
        }
        changed
    }
}
