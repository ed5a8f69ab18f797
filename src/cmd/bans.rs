//! `portcullis bans list|clear [WHO]`: the active logon bans of a running Portcullis.
//!
//! With the memory backend the state lives inside the running process, so the command asks it
//! through `[admin] listen`; with Redis it reads and changes the shared state directly.

use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Arguments of `bans`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: super::ConfigFile,
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Show active bans: who, why, until when.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Lift the bans of an address or a user name, or every ban when none is given.
    Clear {
        /// A client address (e.g. 203.0.113.7) or a user name.
        who: Option<String>,
    },
}

/// Runs `bans`.
pub fn run(args: Args) -> ExitCode {
    let config = match args.config.load() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let runtime = match super::runtime(Some(1)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("portcullis bans: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match &config.state.backend {
            config::StateBackend::Redis(_) => direct(&config, &args.action).await,
            config::StateBackend::Memory => through_admin(&config, &args.action).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis bans: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn direct(config: &config::Config, action: &Action) -> Result<(), String> {
    let state = gateway::connect_state(config)
        .await
        .map_err(|e| e.to_string())?;
    match action {
        Action::List { json } => {
            let bans = state.list_bans().await.map_err(|e| e.to_string())?;
            let value = serde_json::json!({"bans": bans.iter().map(gateway::admin::ban_json).collect::<Vec<_>>()});
            print_bans(&value, *json);
        }
        Action::Clear { who } => {
            let n = state
                .clear_bans(who.as_deref())
                .await
                .map_err(|e| e.to_string())?;
            println!("{n} ban(s) lifted");
        }
    }
    Ok(())
}

async fn through_admin(config: &config::Config, action: &Action) -> Result<(), String> {
    let addr = config.admin.listen.ok_or(
        "bans live in the running process (state.backend = \"memory\"): add [admin] listen = \"127.0.0.1:9464\" to the config so this command can reach it",
    )?;
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let (method, path) = match action {
        Action::List { .. } => (http::Method::GET, "/bans".to_owned()),
        Action::Clear { who: Some(w) } => (http::Method::DELETE, format!("/bans/{}", encode(w))),
        Action::Clear { who: None } => (http::Method::DELETE, "/bans".to_owned()),
    };
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .map_err(|_| format!("no answer from the admin listener {addr} within 5 s"))?
        .map_err(|e| {
            format!("cannot reach the admin listener {addr} (is Portcullis running?): {e}")
        })?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let value: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| format!("unexpected answer from {addr}: {e}"))?;
    if !status.is_success() {
        return Err(format!("{addr} answered {status}: {value}"));
    }
    match action {
        Action::List { json } => print_bans(&value, *json),
        Action::Clear { .. } => println!("{} ban(s) lifted", value["cleared"]),
    }
    Ok(())
}

fn print_bans(value: &serde_json::Value, json: bool) {
    if json {
        println!("{value}");
        return;
    }
    let bans = value["bans"].as_array().cloned().unwrap_or_default();
    if bans.is_empty() {
        println!("no active bans");
        return;
    }
    println!("{:<8} {:<40} {:<22} REASON", "KIND", "WHO", "UNTIL (UTC)");
    for b in bans {
        println!(
            "{:<8} {:<40} {:<22} {}",
            b["kind"].as_str().unwrap_or(""),
            b["who"].as_str().unwrap_or(""),
            b["until"].as_str().unwrap_or(""),
            b["reason"].as_str().unwrap_or("")
        );
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b".-_:".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
