//! `portcullis explain`: what the policy would decide for a request, phase by phase, with the
//! rule or list entry that decided and its line in the config. Exit 0 allowed, 1 refused.

use std::net::IpAddr;
use std::process::ExitCode;

use policy::{Decision, Facts, Identity};

/// Arguments of `explain`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: super::ConfigFile,
    /// Client address (as the socket peer).
    #[arg(long, default_value = "127.0.0.1")]
    ip: IpAddr,
    /// Assume this user signed in successfully (groups come from `auth.groups`).
    #[arg(long)]
    user: Option<String>,
    /// Request method.
    #[arg(long, default_value = "GET")]
    method: String,
    /// Request path, e.g. /admin/reports
    path: String,
}

/// Runs `explain`.
pub fn run(args: Args) -> ExitCode {
    let config = match args.config.load() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let policy = config.policy();
    let method = args.method.to_ascii_uppercase();
    let identity = args.user.as_deref().map(|user| {
        let from_db = match &config.auth.users {
            config::UserSource::Sqlite(_) | config::UserSource::Postgres(_) => {
                gateway::user_database(&config)
                    .and_then(|l| l.open().and_then(|d| d.groups_of(user)).ok())
            }
            config::UserSource::Ldap(url) => Some(directory_groups(url, &config, user)),
            _ => None,
        };
        let groups = match &config.auth.groups {
            _ if from_db.is_some() => from_db.unwrap_or_default(),
            Some(path) => match store::GroupFile::load(path) {
                Ok((file, _)) => file.groups_of(user).to_vec(),
                Err(e) => {
                    eprintln!("warning: cannot read {}: {e}", path.display());
                    Vec::new()
                }
            },
            None => Vec::new(),
        };
        let mut identity = Identity::user(user);
        identity.groups = groups;
        identity
    });
    if let (Some(user), config::UserSource::Htpasswd(path)) = (&args.user, &config.auth.users)
        && let Ok((users, _)) = store::UserFile::load(path)
        && !users.contains(user)
    {
        println!(
            "note: {user} is not in {}; a real sign-in would fail with 401.1",
            path.display()
        );
    }
    let host_name = if policy.ip.needs_host_name() {
        match gateway::dns::double_reverse(args.ip) {
            gateway::dns::HostName::Verified(name) => Some(name.to_string()),
            _ => None,
        }
    } else {
        None
    };
    let facts = Facts {
        peer: args.ip,
        forwarded: Vec::new(),
        x_forwarded_for: Vec::new(),
        host_name,
        method: &method,
        path: &args.path,
        identity,
        live: false,
    };
    let (trace, decision) = policy::explain(&policy, &facts);
    println!(
        "{method} {} from {}{}",
        args.path,
        args.ip,
        args.user
            .as_deref()
            .map(|u| format!(" as {u}"))
            .unwrap_or_default()
    );
    for entry in &trace.0 {
        println!("  {:<13} {}", entry.phase.name(), entry.verdict);
    }
    match decision {
        Decision::Allow(_) => {
            match &config.server.upstream {
                Some(u) => println!("result: allowed (forwarded to {})", u.authority),
                None => println!("result: allowed (forward-auth answers 200)"),
            }
            ExitCode::SUCCESS
        }
        Decision::Refuse(r) if r.status() == 0 => {
            println!(
                "result: connection closed without a response (deny_action = \"abort\"), reason {}.{}",
                r.reason.slug(),
                r.reason.substatus()
            );
            ExitCode::FAILURE
        }
        Decision::Refuse(r) => {
            println!(
                "result: {}.{} {}",
                r.status(),
                r.reason.substatus(),
                r.reason.slug()
            );
            ExitCode::FAILURE
        }
    }
}

/// `user`'s groups from the directory (none, with a warning, when it cannot be asked or the
/// user is not in it).
fn directory_groups(url: &str, config: &config::Config, user: &str) -> Vec<String> {
    let directory = match gateway::directory(url, config) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("warning: {e}");
            return Vec::new();
        }
    };
    let found = match super::runtime(Some(1)) {
        Ok(rt) => rt.block_on(directory.lookup(user)),
        Err(e) => {
            eprintln!("warning: {e}");
            return Vec::new();
        }
    };
    match found {
        Ok(Some(entry)) => entry.groups.clone(),
        Ok(None) => {
            eprintln!("warning: {user} is not in the directory {url}");
            Vec::new()
        }
        Err(e) => {
            eprintln!("warning: {e}; assuming no groups");
            Vec::new()
        }
    }
}
