//! `portcullis tokens …`: API tokens for `auth.schemes = ["bearer"]`, kept in the SQLite user
//! database named by `auth.users = "sqlite:PATH"`. A token is printed once, when it is made;
//! only its SHA-256 is stored. Safe while the server runs: it notices the change within a
//! second. Creating and revoking are written to the audit log (`log.audit`) when there is one.

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use store::sqlite::{ApiTokenRow, UserDb};

/// Arguments of `tokens`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: super::ConfigFile,
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Make an API token that acts as USER (with USER's groups) and print it, once.
    Create {
        /// The user the token acts as.
        user: String,
        /// What the token is for (shown by `tokens list`).
        #[arg(long)]
        name: Option<String>,
        /// Lifetime (e.g. 90d, 12h); without it the token works until revoked.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires: Option<Duration>,
    },
    /// List the tokens (never the tokens themselves), of USER or of everyone.
    List {
        /// Only this user's tokens.
        user: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by its id (from `tokens list`); it stops working within a second.
    Revoke {
        /// The token's id.
        id: String,
    },
}

/// Runs `tokens`.
pub fn run(args: Args) -> ExitCode {
    let config = match args.config.load() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(location) = gateway::user_database(&config) else {
        eprintln!(
            "portcullis tokens: API tokens live in the user database, and auth.users is not one; write auth.users = \"sqlite:portcullis.db\" (portcullis users import moves an htpasswd file there)"
        );
        return ExitCode::from(super::EXIT_CONFIG);
    };
    let audit = match config
        .log
        .audit
        .as_deref()
        .map(gateway::audit::AuditLog::open)
    {
        None => gateway::audit::AuditLog::off(),
        Some(Ok(a)) => a,
        Some(Err(e)) => {
            eprintln!("portcullis tokens: cannot open the audit log: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = location
        .open()
        .map_err(|e| e.to_string())
        .and_then(|db| act(&db, args.action, &config, &audit));
    audit.flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis tokens: {e}");
            ExitCode::FAILURE
        }
    }
}

fn act(
    db: &UserDb,
    action: Action,
    config: &config::Config,
    audit: &gateway::audit::AuditLog,
) -> Result<(), String> {
    match action {
        Action::Create {
            user,
            name,
            expires,
        } => {
            let label = name.unwrap_or_default();
            if label.chars().any(char::is_control) || label.len() > 200 {
                return Err(
                    "--name must be at most 200 characters, without control characters".into(),
                );
            }
            let (id, token) = db
                .create_api_token(&user, &label, expires)
                .map_err(|e| e.to_string())?;
            audit.record(
                "token_created",
                serde_json::json!({"id": id, "user": user, "name": label, "expires": expires.map(|e| humantime::format_duration(e).to_string())}),
            );
            println!("{token}");
            let until = expires.map_or_else(
                || "until revoked".to_owned(),
                |e| format!("for {}", gateway::pages::plain_duration(e)),
            );
            eprintln!(
                "token {id} for {user} ({until}); it is shown only now. Send it as: Authorization: Bearer {token}"
            );
            if !config.auth.schemes.contains(&policy::Scheme::Bearer) {
                eprintln!(
                    "note: auth.schemes does not list \"bearer\": the site does not accept tokens yet"
                );
            }
            Ok(())
        }
        Action::List { user, json } => {
            let rows = db.api_tokens(user.as_deref()).map_err(|e| e.to_string())?;
            if json {
                let list: Vec<_> = rows.iter().map(row_json).collect();
                println!("{}", serde_json::Value::Array(list));
            } else if rows.is_empty() {
                eprintln!("no tokens");
            } else {
                println!(
                    "{:<12}  {:<16}  {:<20}  {:<20}  {:<20}  {:<20}",
                    "ID", "USER", "NAME", "CREATED", "EXPIRES", "LAST USED"
                );
                for r in &rows {
                    println!(
                        "{:<12}  {:<16}  {:<20}  {:<20}  {:<20}  {:<20}",
                        r.id,
                        r.user,
                        if r.label.is_empty() { "-" } else { &r.label },
                        time(Some(r.created)),
                        r.expires
                            .map_or_else(|| "never".to_owned(), |t| time(Some(t))),
                        time(r.last_used),
                    );
                }
            }
            Ok(())
        }
        Action::Revoke { id } => {
            let user = db.revoke_api_token(&id).map_err(|e| e.to_string())?;
            audit.record("token_revoked", serde_json::json!({"id": id, "user": user}));
            eprintln!("revoked token {id} of {user}");
            Ok(())
        }
    }
}

fn time(t: Option<i64>) -> String {
    t.map_or_else(
        || "-".to_owned(),
        |t| {
            humantime::format_rfc3339_seconds(
                UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0)),
            )
            .to_string()
        },
    )
}

fn row_json(r: &ApiTokenRow) -> serde_json::Value {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    serde_json::json!({
        "id": r.id,
        "user": r.user,
        "name": r.label,
        "created": time(Some(r.created)),
        "expires": r.expires.map(|t| time(Some(t))),
        "expired": r.expires.is_some_and(|t| t <= now),
        "last_used": r.last_used.map(|t| time(Some(t))),
    })
}
