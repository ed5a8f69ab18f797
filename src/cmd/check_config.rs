//! `portcullis check-config`: validate a configuration without serving (like `nginx -t`).

use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `check-config`.
#[derive(clap::Args)]
pub struct Args {
    /// Configuration file (TOML).
    #[arg(
        short,
        long,
        default_value = "portcullis.toml",
        env = "PORTCULLIS_CONFIG"
    )]
    config: PathBuf,
}

/// Runs `check-config`: prints every problem with its line and exits 64, or says it is valid.
pub fn run(args: Args) -> ExitCode {
    match config::load(&args.config) {
        Ok(config) => {
            let file = args.config.display().to_string();
            eprint!("{}", config::format_warnings(&file, &config.warnings));
            println!(
                "{file}: configuration is valid ({} warning(s))",
                config.warnings.len()
            );
            ExitCode::SUCCESS
        }
        Err(diagnostics) => {
            eprint!("{diagnostics}");
            eprintln!(
                "{}: {} problem(s)",
                args.config.display(),
                diagnostics.items.len()
            );
            ExitCode::from(super::EXIT_CONFIG)
        }
    }
}
