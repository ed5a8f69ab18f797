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
