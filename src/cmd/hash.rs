//! `portcullis hash`: print a password hash to paste into an htpasswd file.

use std::io::{IsTerminal, Read};
use std::process::ExitCode;

/// Arguments of `hash`.
#[derive(clap::Args)]
pub struct Args {
    /// Write bcrypt (`$2y$`, what `htpasswd -B` writes) instead of argon2id.
    #[arg(long)]
    bcrypt: bool,
    /// bcrypt cost (4-31).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(4..=31), requires = "bcrypt")]
    cost: u32,
    /// Print `USER:HASH`, a complete htpasswd line.
    #[arg(long, value_name = "USER")]
    user: Option<String>,
    /// Print the two htdigest lines of USER in REALM for `[auth.digest] users`: the MD5 HA1
    /// (what Apache's htdigest writes) and the SHA-256 one (needs --user and --realm).
    #[arg(long, requires_all = ["user", "realm"], conflicts_with = "bcrypt")]
    digest: bool,
    /// The realm of --digest (`auth.realm`).
    #[arg(long, requires = "digest")]
    realm: Option<String>,
}

/// Runs `hash`.
pub fn run(args: Args) -> ExitCode {
    let password = match read_password() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("portcullis hash: {e}");
            return ExitCode::from(super::EXIT_CONFIG);
        }
    };
    if args.digest {
        let (Some(user), Some(realm)) = (args.user.as_deref(), args.realm.as_deref()) else {
            return ExitCode::from(super::EXIT_CONFIG);
        };
        if user.is_empty() || user.contains(':') || realm.contains(':') {
            eprintln!(
                "portcullis hash: a Digest user name must be non-empty, and neither it nor the realm can contain ':'"
            );
            return ExitCode::from(super::EXIT_CONFIG);
        }
        for algorithm in [
            policy::DigestAlgorithm::Md5,
            policy::DigestAlgorithm::Sha256,
        ] {
            println!(
                "{}",
                store::htdigest::ha1_line(algorithm, user, realm, &password)
            );
        }
        return ExitCode::SUCCESS;
    }
    let hash = if args.bcrypt {
        match store::htpasswd::hash_bcrypt(password.as_bytes(), args.cost) {
            Ok(h) => h,
            Err(e) => {
                eprintln!("portcullis hash: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        store::htpasswd::hash_argon2id(password.as_bytes())
    };
    match args.user {
        Some(user) if user.contains(':') || user.is_empty() => {
            eprintln!("portcullis hash: a user name must be non-empty and cannot contain ':'");
            ExitCode::from(super::EXIT_CONFIG)
        }
        Some(user) => {
            println!("{user}:{hash}");
            ExitCode::SUCCESS
        }
        None => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
    }
}

/// Reads a password from standard input (not a terminal) or prompts twice without echo.
pub fn read_password() -> Result<String, String> {
    let stdin = std::io::stdin();
    let password = if stdin.is_terminal() {
        let first = rpassword::prompt_password("Password: ").map_err(|e| e.to_string())?;
        let second = rpassword::prompt_password("Again: ").map_err(|e| e.to_string())?;
        if first != second {
            return Err("the passwords differ".into());
        }
        first
    } else {
        let mut s = String::new();
        stdin
            .lock()
            .read_to_string(&mut s)
            .map_err(|e| format!("cannot read standard input: {e}"))?;
        // One trailing line break is the shell's, not the password's.
        let trimmed = s.strip_suffix('\n').unwrap_or(&s);
        trimmed.strip_suffix('\r').unwrap_or(trimmed).to_owned()
    };
    if password.is_empty() {
        return Err("the password is empty".into());
    }
    Ok(password)
}
