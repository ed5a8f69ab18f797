//! `portcullis check-config`: validate a configuration without serving (like `nginx -t`).

use std::process::ExitCode;

/// Arguments of `check-config`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: super::ConfigFile,
}

/// Runs `check-config`: prints every problem with its line and exits 64, or says it is valid.
pub fn run(args: Args) -> ExitCode {
    match config::load(&args.config.file) {
        Ok(config) => {
            let file = args.config.file.display().to_string();
            if !config.warnings.is_empty() {
                eprintln!("{}", config::format_warnings(&file, &config.warnings));
            }
            println!(
                "{file}: configuration is valid ({} warning(s))",
                config.warnings.len()
            );
            println!("state: {}", state_target(&config.state.backend));
            if let (config::UserSource::Ldap(url), Some(ldap)) = (&config.auth.users, &config.ldap)
            {
                println!(
                    "users: the directory {url} ({}), under {}, filter {}, groups from {}",
                    match ldap.preset {
                        config::LdapPreset::OpenLdap => "OpenLDAP",
                        config::LdapPreset::ActiveDirectory => "Active Directory",
                        config::LdapPreset::FreeIpa => "FreeIPA",
                    },
                    ldap.base_dn,
                    ldap.user_filter,
                    ldap.group_filter.as_deref().unwrap_or("memberOf")
                );
            }
            ExitCode::SUCCESS
        }
        Err(diagnostics) => {
            eprintln!("{diagnostics}");
            eprintln!(
                "{}: {} problem(s)",
                args.config.file.display(),
                diagnostics.items.len()
            );
            ExitCode::from(super::EXIT_CONFIG)
        }
    }
}

/// What the state store will connect to, in words (never a password).
fn state_target(backend: &config::StateBackend) -> String {
    let url = match backend {
        config::StateBackend::Memory => {
            return "in this process's memory (counters, bans and sessions are not shared)"
                .to_owned();
        }
        config::StateBackend::Redis(url) => url.as_str(),
    };
    let tls = if url.starts_with("rediss") {
        " over TLS"
    } else {
        ""
    };
    if let Ok(c) = store::state::cluster::ClusterUrl::parse(url) {
        return format!(
            "Redis Cluster{tls} starting from {}; slots, redirections and failovers are followed",
            c.nodes.join(", ")
        );
    }
    if let Ok(s) = store::state::sentinel::SentinelUrl::parse(url) {
        return format!(
            "Redis{tls}: the master \"{}\" (database {}) as named by the Sentinels at {}; failovers are followed",
            s.master,
            s.db,
            s.sentinels.join(", ")
        );
    }
    let after = url.split_once("://").map_or(url, |(_, r)| r);
    let after = after.rsplit_once('@').map_or(after, |(_, r)| r);
    format!("Redis at {after}{tls}")
}
