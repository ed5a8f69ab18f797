//! `portcullis serve`: run the gateway from a configuration file.

use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `serve`.
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

/// Runs `serve`.
pub fn run(args: Args) -> ExitCode {
    let config = match config::load(&args.config) {
        Ok(c) => c,
        Err(diagnostics) => {
            eprint!("{diagnostics}");
            eprintln!(
                "portcullis: {} problem(s) in {}; nothing was started",
                diagnostics.items.len(),
                args.config.display()
            );
            return ExitCode::from(super::EXIT_CONFIG);
        }
    };
    for line in
        config::format_warnings(&args.config.display().to_string(), &config.warnings).lines()
    {
        tracing::warn!("{line}");
    }
    super::run_gateway(config, |addrs| {
        for a in addrs {
            tracing::info!(address = %a, "serving");
        }
    })
}
