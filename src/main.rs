//! `sluice`: change-data-capture from PostgreSQL through Kafka into sink databases.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice::commands::{self, Components};
use sluice::config::Config;
use sluice::telemetry;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Change-data-capture through Kafka, exactly once in effect"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Capture and route in one process.
    Run(ConfigArg),
    /// Capture every configured source into Kafka.
    Capture(ConfigArg),
    /// Route Kafka topics into the configured sink.
    Route(ConfigArg),
    /// Parse and validate a config file, then exit.
    CheckConfig(ConfigArg),
}

#[derive(clap::Args)]
struct ConfigArg {
    /// The TOML config file.
    #[arg(long, short, env = "SLUICE_CONFIG")]
    config: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (arg, components) = match &cli.command {
        Command::Run(a) => (
            a,
            Components {
                capture: true,
                router: true,
            },
        ),
        Command::Capture(a) => (
            a,
            Components {
                capture: true,
                router: false,
            },
        ),
        Command::Route(a) => (
            a,
            Components {
                capture: false,
                router: true,
            },
        ),
        Command::CheckConfig(a) => {
            return match Config::load(&a.config) {
                Ok(_) => {
                    println!("{}: ok", a.config.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            };
        }
    };
    let config = match Config::load(&arg.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init_logging(&config.observability);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(config, components)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
