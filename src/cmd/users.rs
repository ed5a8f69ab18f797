//! `portcullis users …`: manage the SQLite user database named by `auth.users = "sqlite:PATH"`.
//! Safe while the server runs: the database is in WAL mode and the server reloads the users
//! when it changes.

use std::path::PathBuf;
use std::process::ExitCode;

use store::sqlite::{DbError, UserDb};

/// Arguments of `users`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: super::ConfigFile,
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Add a user; the password is read from standard input, or prompted for twice.
    Add {
        /// User name.
        user: String,
        /// Groups (repeat, or comma-separated).
        #[arg(long = "group", value_delimiter = ',')]
        groups: Vec<String>,
        /// Store bcrypt instead of argon2id.
        #[arg(long)]
        bcrypt: bool,
    },
    /// Set a new password (standard input or prompt).
    Passwd {
        /// User name.
        user: String,
        /// Store bcrypt instead of argon2id.
        #[arg(long)]
        bcrypt: bool,
    },
    /// Delete a user.
    Del {
        /// User name.
        user: String,
    },
    /// List the users (never their hashes).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Refuse sign-in for a user without deleting it.
    Disable {
        /// User name.
        user: String,
    },
    /// Allow sign-in again.
    Enable {
        /// User name.
        user: String,
    },
    /// Set a user's groups (replacing the previous ones).
    Groups {
        /// User name.
        user: String,
        /// Groups, comma-separated (empty for none).
        #[arg(value_delimiter = ',')]
        groups: Vec<String>,
    },
    /// Import an htpasswd file, keeping its hashes (existing users get the file's hash).
    Import {
        /// The htpasswd file.
        file: PathBuf,
    },
}

/// Runs `users`.
pub fn run(args: Args) -> ExitCode {
    let config = match config::load(&args.config.file) {
        Ok(c) => c,
        Err(diagnostics) => {
            eprint!("{diagnostics}");
            return ExitCode::from(super::EXIT_CONFIG);
        }
    };
    let config::UserSource::Sqlite(path) = &config.auth.users else {
        eprintln!(
            "portcullis users: auth.users is not a user database; write auth.users = \"sqlite:portcullis.db\" (an htpasswd file is managed with Apache's htpasswd)"
        );
        return ExitCode::from(super::EXIT_CONFIG);
    };
    match act(path, args.action) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis users: {e}");
            ExitCode::FAILURE
        }
    }
}

fn act(path: &std::path::Path, action: Action) -> Result<(), String> {
    let mut db = UserDb::open(path).map_err(|e| e.to_string())?;
    let hash = |bcrypt: bool| -> Result<String, String> {
        let password = super::hash::read_password()?;
        if bcrypt {
            store::hash_bcrypt(password.as_bytes(), 10).map_err(|e| e.to_string())
        } else {
            Ok(store::hash_argon2id(password.as_bytes()))
        }
    };
    let e = |e: DbError| e.to_string();
    match action {
        Action::Add {
            user,
            groups,
            bcrypt,
        } => {
            db.add(&user, &hash(bcrypt)?).map_err(e)?;
            let groups: Vec<String> = groups.into_iter().filter(|g| !g.is_empty()).collect();
            if !groups.is_empty() {
                db.set_groups(&user, &groups).map_err(e)?;
            }
            println!("added {user}");
        }
        Action::Passwd { user, bcrypt } => {
            db.set_hash(&user, &hash(bcrypt)?).map_err(e)?;
            println!("password of {user} changed");
        }
        Action::Del { user } => {
            db.delete(&user).map_err(e)?;
            println!("deleted {user}");
        }
        Action::Disable { user } => {
            db.set_disabled(&user, true).map_err(e)?;
            println!("{user} can no longer sign in");
        }
        Action::Enable { user } => {
            db.set_disabled(&user, false).map_err(e)?;
            println!("{user} can sign in again");
        }
        Action::Groups { user, groups } => {
            let groups: Vec<String> = groups.into_iter().filter(|g| !g.is_empty()).collect();
            db.set_groups(&user, &groups).map_err(e)?;
            println!(
                "{user}: groups {}",
                if groups.is_empty() {
                    "none".into()
                } else {
                    groups.join(", ")
                }
            );
        }
        Action::Import { file } => {
            let (n, problems) = db.import_htpasswd(&file).map_err(e)?;
            for p in &problems {
                eprintln!("{}:{}: {}; line skipped", file.display(), p.line, p.message);
            }
            println!("imported {n} user(s) from {}", file.display());
        }
        Action::List { json } => {
            let users = db.list().map_err(e)?;
            if json {
                let list: Vec<_> = users
                    .iter()
                    .map(|u| serde_json::json!({"name": u.name, "disabled": u.disabled, "groups": u.groups, "last_sign_in": u.last_sign_in}))
                    .collect();
                println!("{}", serde_json::Value::from(list));
            } else if users.is_empty() {
                println!("no users");
            } else {
                println!("{:<24} {:<9} GROUPS", "USER", "STATE");
                for u in users {
                    println!(
                        "{:<24} {:<9} {}",
                        u.name,
                        if u.disabled { "disabled" } else { "enabled" },
                        u.groups.join(",")
                    );
                }
            }
        }
    }
    Ok(())
}
