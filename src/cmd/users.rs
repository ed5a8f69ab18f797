//! `portcullis users …`: manage the SQLite user database named by `auth.users = "sqlite:PATH"`.
//! Safe while the server runs: the database is in WAL mode and the server reloads the users
//! when it changes.

use std::path::PathBuf;
use std::process::ExitCode;

use store::sqlite::{DbError, TokenKind, UserDb};

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
    /// Invite a new user: creates the account and prints a single-use link (valid for
    /// portal.invite_ttl) where the person chooses a password; mails it with [mail] and --email.
    Invite {
        /// User name.
        user: String,
        /// Email address (kept, for reset links).
        #[arg(long)]
        email: Option<String>,
        /// Groups (repeat, or comma-separated).
        #[arg(long = "group", value_delimiter = ',')]
        groups: Vec<String>,
    },
    /// Print a single-use password-reset link (valid for portal.reset_ttl); mails it to the
    /// user's address with [mail].
    Reset {
        /// User name.
        user: String,
    },
    /// Turn a TOTP second factor on (prints the otpauth:// URI for an authenticator app) or off.
    /// Users with one sign in with the form (Basic cannot carry the code).
    Totp {
        /// enable or disable.
        #[arg(value_parser = ["enable", "disable"])]
        action: String,
        /// User name.
        user: String,
    },
    /// Create the user database's tables, or bring them up to this version's schema (every start
    /// does it too); prints the schema version.
    Migrate,
    /// Set (or with no address, remove) a user's email address.
    Email {
        /// User name.
        user: String,
        /// Email address.
        address: Option<String>,
    },
}

/// Runs `users`.
pub fn run(args: Args) -> ExitCode {
    let config = match args.config.load() {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let config::UserSource::Ldap(url) = &config.auth.users {
        return directory_users(url, &config, args.action);
    }
    let Some(location) = gateway::user_database(&config) else {
        eprintln!(
            "portcullis users: auth.users is not a user database; write auth.users = \"sqlite:portcullis.db\" or \"postgres://…\" (an htpasswd file is managed with Apache's htpasswd)"
        );
        return ExitCode::from(super::EXIT_CONFIG);
    };
    match act(&location, args.action, &config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis users: {e}");
            ExitCode::FAILURE
        }
    }
}

fn act(
    location: &store::sqlite::Location,
    action: Action,
    config: &config::Config,
) -> Result<(), String> {
    let mut db = location.open().map_err(|e| e.to_string())?;
    if let Action::Migrate = action {
        match db.schema_version().map_err(|e| e.to_string())? {
            Some(v) => println!("{}: schema version {v}", location.display()),
            None => println!("{}: schema up to date", location.display()),
        }
        return Ok(());
    }
    // While Digest is on with this database, a password also gets its HA1 values for the realm.
    let digest_realm = config.auth.digest_realm_in_database();
    let password = |user: &str, bcrypt: bool| -> Result<(String, Option<[String; 2]>), String> {
        let password = super::hash::read_password()?;
        let hash = if bcrypt {
            store::hash_bcrypt(password.as_bytes(), 10).map_err(|e| e.to_string())?
        } else {
            store::hash_argon2id(password.as_bytes())
        };
        let ha1 = digest_realm.map(|realm| {
            [
                policy::DigestAlgorithm::Md5,
                policy::DigestAlgorithm::Sha256,
            ]
            .map(|a| store::htdigest::ha1(a, user, realm, &password))
        });
        Ok((hash, ha1))
    };
    let set_digest = |db: &UserDb, user: &str, ha1: Option<[String; 2]>| -> Result<(), String> {
        match (ha1, digest_realm) {
            (Some([md5, sha256]), Some(realm)) => db
                .set_digest(user, Some((realm, &md5, &sha256)))
                .map_err(|e| e.to_string()),
            _ => Ok(()),
        }
    };
    let e = |e: DbError| e.to_string();
    match action {
        Action::Migrate => {}
        Action::Add {
            user,
            groups,
            bcrypt,
        } => {
            let (hash, ha1) = password(&user, bcrypt)?;
            db.add(&user, &hash).map_err(e)?;
            set_digest(&db, &user, ha1)?;
            let groups: Vec<String> = groups.into_iter().filter(|g| !g.is_empty()).collect();
            if !groups.is_empty() {
                db.set_groups(&user, &groups).map_err(e)?;
            }
            println!("added {user}");
        }
        Action::Passwd { user, bcrypt } => {
            let (hash, ha1) = password(&user, bcrypt)?;
            db.set_hash(&user, &hash).map_err(e)?;
            set_digest(&db, &user, ha1)?;
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
        Action::Invite {
            user,
            email,
            groups,
        } => {
            // Checked first: a refused address must not leave a half-made account behind.
            if let Some(address) = &email {
                store::sqlite::check_email(address).map_err(e)?;
            }
            // Nobody knows this password: the account opens only through the link.
            let unknown: [u8; 32] = rand::random();
            db.add(&user, &store::hash_argon2id(&unknown)).map_err(e)?;
            if email.is_some() {
                db.set_email(&user, email.as_deref()).map_err(e)?;
            }
            let groups: Vec<String> = groups.into_iter().filter(|g| !g.is_empty()).collect();
            if !groups.is_empty() {
                db.set_groups(&user, &groups).map_err(e)?;
            }
            let token = db
                .issue_token(&user, TokenKind::Invite, config.portal.invite_ttl, None)
                .map_err(e)?
                .unwrap_or_default();
            deliver(config, &user, email.as_deref(), &token, true)?;
        }
        Action::Reset { user } => {
            let token = db
                .issue_token(&user, TokenKind::Reset, config.portal.reset_ttl, None)
                .map_err(e)?
                .unwrap_or_default();
            let email = db.email_of(&user).map_err(e)?;
            deliver(config, &user, email.as_deref(), &token, false)?;
        }
        Action::Totp { action, user } => {
            if action == "enable" {
                let secret = store::totp::new_secret();
                db.set_totp(&user, Some(&secret)).map_err(e)?;
                println!(
                    "{}",
                    store::totp::otpauth_uri(&config.auth.realm, &user, &secret)
                );
                eprintln!(
                    "TOTP enabled for {user}: add the URI above to an authenticator app (most turn it into a QR code); the secret is {secret}"
                );
            } else {
                db.set_totp(&user, None).map_err(e)?;
                println!("TOTP disabled for {user}");
            }
        }
        Action::Email { user, address } => {
            db.set_email(&user, address.as_deref()).map_err(e)?;
            match address {
                Some(a) => println!("{user}: email {a}"),
                None => println!("{user}: no email"),
            }
        }
        Action::List { json } => {
            let users = db.list().map_err(e)?;
            if json {
                let list: Vec<_> = users
                    .iter()
                    .map(|u| serde_json::json!({"name": u.name, "disabled": u.disabled, "groups": u.groups, "last_sign_in": u.last_sign_in, "email": u.email, "totp": u.totp}))
                    .collect();
                println!("{}", serde_json::Value::from(list));
            } else if users.is_empty() {
                println!("no users");
            } else {
                println!(
                    "{:<24} {:<9} {:<5} {:<28} GROUPS",
                    "USER", "STATE", "TOTP", "EMAIL"
                );
                for u in users {
                    println!(
                        "{:<24} {:<9} {:<5} {:<28} {}",
                        u.name,
                        if u.disabled { "disabled" } else { "enabled" },
                        if u.totp { "yes" } else { "no" },
                        u.email.as_deref().unwrap_or("-"),
                        u.groups.join(",")
                    );
                }
            }
        }
    }
    Ok(())
}

/// Prints the link, and mails it when `[mail]` is set and the user has an address.
fn deliver(
    config: &config::Config,
    user: &str,
    email: Option<&str>,
    token: &str,
    invite: bool,
) -> Result<(), String> {
    let base = match &config.portal.public_url {
        Some(u) => u.clone(),
        None => {
            let listen = config.server.listen.first().map_or_else(
                || "127.0.0.1:8080".to_owned(),
                std::string::ToString::to_string,
            );
            let scheme = if config.server.tls.is_some() {
                "https"
            } else {
                "http"
            };
            eprintln!(
                "note: portal.public_url is not set; the link uses the listen address. Set it to the address people use."
            );
            format!("{scheme}://{listen}")
        }
    };
    let link = format!("{base}{}/password?token={token}", config.portal.prefix);
    let ttl = if invite {
        config.portal.invite_ttl
    } else {
        config.portal.reset_ttl
    };
    println!("{link}");
    eprintln!(
        "{} link for {user}; it works once, for {}.",
        if invite {
            "invitation"
        } else {
            "password-reset"
        },
        gateway::pages::plain_duration(ttl)
    );
    if let (Some(mail), Some(to)) = (&config.mail, email) {
        let mailer = gateway::mail::Mailer::new(mail)?;
        let pages = gateway::pages::Pages::load(config.errors.pages.as_deref())?;
        let letter =
            gateway::mail::link_letter(&pages, to, user, &config.auth.realm, &link, invite, ttl)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(mailer.send(letter))?;
        eprintln!("mailed to {to}");
    } else if config.mail.is_some() {
        eprintln!(
            "not mailed: {user} has no email address (portcullis users email {user} ADDRESS)"
        );
    }
    Ok(())
}

/// `users` with `auth.users = "ldap://…"`: `list` reads the directory; every write is refused
/// (the directory is managed with its own tools).
fn directory_users(url: &str, config: &config::Config, action: Action) -> ExitCode {
    if let Action::Totp { action, user } = &action {
        return match directory_totp(url, config, action == "enable", user) {
            Ok(()) => ExitCode::SUCCESS,
            Err((code, e)) => {
                eprintln!("portcullis users: {e}");
                code
            }
        };
    }
    let Action::List { json } = action else {
        eprintln!(
            "portcullis users: the users are in the directory {url}, which Portcullis only reads: add, change and remove them with the directory's own tools (ldapadd, ldapmodify, Active Directory Users and Computers, ipa user-add)"
        );
        return ExitCode::from(super::EXIT_CONFIG);
    };
    let directory = match gateway::directory(url, config) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("portcullis users: {e}");
            return ExitCode::from(super::EXIT_CONFIG);
        }
    };
    let listed = match super::runtime(Some(1)) {
        Ok(rt) => rt.block_on(directory.list()),
        Err(e) => {
            eprintln!("portcullis users: {e}");
            return ExitCode::FAILURE;
        }
    };
    let users = match listed {
        Ok((users, truncated)) => {
            if truncated {
                eprintln!(
                    "portcullis users: the directory's size limit stopped the list at {} users (OpenLDAP: raise size.prtotal in a limits directive for the service account)",
                    users.len()
                );
            }
            users
        }
        Err(e) => {
            eprintln!("portcullis users: {e}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        let list: Vec<serde_json::Value> = users
            .iter()
            .map(|(name, e)| {
                serde_json::json!({"name": name, "dn": e.dn, "groups": e.groups, "email": e.email, "display_name": e.name})
            })
            .collect();
        println!("{}", serde_json::Value::Array(list));
    } else {
        for (name, e) in &users {
            let groups = if e.groups.is_empty() {
                "-".to_owned()
            } else {
                e.groups.join(",")
            };
            println!(
                "{name}\t{groups}\t{}\t{}",
                e.email.as_deref().unwrap_or("-"),
                e.dn
            );
        }
    }
    ExitCode::SUCCESS
}

/// `users totp enable|disable USER` for a directory user: the second factor is kept in
/// `ldap.second_factors` (the directory itself is only read).
fn directory_totp(
    url: &str,
    config: &config::Config,
    enable: bool,
    user: &str,
) -> Result<(), (ExitCode, String)> {
    let Some(location) = gateway::second_factors(config) else {
        return Err((
            ExitCode::from(super::EXIT_CONFIG),
            format!(
                "the users are in the directory {url}, which Portcullis only reads; to give them a TOTP second factor, set ldap.second_factors = \"sqlite:PATH\" (or \"postgres://…\"): the factors are kept there"
            ),
        ));
    };
    let failed = |e: String| (ExitCode::FAILURE, e);
    if enable {
        // Only someone the directory knows by this exact name.
        let directory = gateway::directory(url, config).map_err(failed)?;
        let rt = super::runtime(Some(1)).map_err(|e| failed(e.to_string()))?;
        match rt.block_on(directory.lookup(user)) {
            Ok(Some(_)) => {}
            Ok(None) => return Err(failed(format!("{user} is not in the directory {url}"))),
            Err(e) => return Err(failed(e.to_string())),
        }
    }
    let db = location.open().map_err(|e| failed(e.to_string()))?;
    if enable {
        db.ensure_factor_user(user)
            .map_err(|e| failed(e.to_string()))?;
        let secret = store::totp::new_secret();
        db.set_totp(user, Some(&secret))
            .map_err(|e| failed(e.to_string()))?;
        println!(
            "{}",
            store::totp::otpauth_uri(&config.auth.realm, user, &secret)
        );
        eprintln!(
            "TOTP enabled for {user} (kept in {}): add the URI above to an authenticator app; the secret is {secret}",
            location.display()
        );
    } else {
        db.set_totp(user, None).map_err(|e| failed(e.to_string()))?;
        println!("TOTP disabled for {user}");
    }
    Ok(())
}
