//! `portcullis serve`: run the gateway from a configuration file.

use std::process::ExitCode;

/// Arguments of `serve`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: super::ConfigFile,
}

/// Runs `serve`.
pub fn run(args: Args) -> ExitCode {
    let config = match config::load(&args.config.file) {
        Ok(c) => c,
        Err(diagnostics) => {
            eprintln!("{diagnostics}");
            eprintln!(
                "portcullis: {} problem(s) in {}; nothing was started",
                diagnostics.items.len(),
                args.config.file.display()
            );
            return ExitCode::from(super::EXIT_CONFIG);
        }
    };
    for line in
        config::format_warnings(&args.config.file.display().to_string(), &config.warnings).lines()
    {
        tracing::warn!("{line}");
    }
    super::run_gateway(config, |addrs| {
        for a in addrs {
            tracing::info!(address = %a, "serving");
        }
    })
}
