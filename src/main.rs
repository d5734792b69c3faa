//! `sluice`: change-data-capture from PostgreSQL through Kafka into sink databases.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice::commands::{self, Components};
use sluice::config::Config;
use sluice::telemetry;

/// Decoding and batching allocate many small, short-lived values; mimalloc serves them with a
/// fraction of glibc malloc's cost (a third of the router's CPU went to malloc and free).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Mapping schemes: generate identity schemes from the live sources, or check schemes.
    #[command(subcommand)]
    Schemes(SchemesCommand),
    /// Show pipelines, tables, positions and lag of running Sluice processes.
    ///
    /// Reads each process's /readyz and /metrics. Exits 0 when every process answered and is
    /// ready, 1 otherwise.
    Status(StatusArgs),
    /// Compare each sink table with its source table, row by row, and report every difference.
    ///
    /// Exits 0 only when every table compared equal.
    Verify(VerifyArgs),
    /// Delete a source's capture state (snapshot progress and binlog position) from the state
    /// topic, so that its next start reads every table anew in a new source epoch (after a
    /// binlog purged or reset, a source rebuilt). Stop that source's capture first.
    ResetState(ResetStateArgs),
    /// Move a stopped deployment between Kafka mode and local mode (no broker) without a
    /// re-snapshot: capture state, schemas and each sink's applied positions are carried
    /// over. From Kafka mode, every change in Kafka must be applied first (the switch checks).
    Switch(SwitchArgs),
}

#[derive(clap::Args)]
struct SwitchArgs {
    /// The config the deployment ran with.
    #[arg(long)]
    from: PathBuf,
    /// The config it will run with (the same sources, sinks and group, in the other mode).
    #[arg(long)]
    to: PathBuf,
}

#[derive(clap::Args)]
struct VerifyArgs {
    /// The TOML config file (sources, the router's sink).
    #[arg(long, short, env = "SLUICE_CONFIG")]
    config: PathBuf,
    /// Only this source table (`schema.table`); repeat it for more. Default: every table.
    #[arg(long = "table")]
    tables: Vec<String>,
    /// Write every difference as a JSON line to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// About how many rows a compared bucket holds (only differing buckets are read row by
    /// row).
    #[arg(long, default_value_t = 1000)]
    bucket_rows: u64,
    /// How long verify may wait, in milliseconds, for the pipeline to apply what a differing
    /// row was read at (PostgreSQL sources: by position; MySQL/MariaDB ones: until equal).
    /// What the pipeline has not applied by then is reported in flight, exit code 3.
    #[arg(long, default_value_t = 10_000)]
    settle_ms: u64,
    /// Tables compared at once.
    #[arg(long, default_value_t = 1)]
    parallel: usize,
    /// Make the sink equal: the rows that differ are sent through the pipeline again (capture
    /// of their source must be running), then checked until equal.
    #[arg(long)]
    repair: bool,
    /// With --repair: say what would be sent, and send nothing.
    #[arg(long, requires = "repair")]
    dry_run: bool,
    /// How long repaired rows may take to arrive, in milliseconds.
    #[arg(long, default_value_t = 120_000)]
    repair_wait_ms: u64,
    /// At most this many rows a second read from each database per table compared (for busy
    /// production databases): PostgreSQL tables are read in block ranges within one snapshot,
    /// paced; rows read into Sluice (through schemes, across engines) are read at that pace.
    #[arg(long)]
    max_rows_per_second: Option<u64>,
}

#[derive(clap::Args)]
struct ResetStateArgs {
    /// The TOML config file.
    #[arg(long, short, env = "SLUICE_CONFIG")]
    config: PathBuf,
    /// The source, as named in [sources.<name>].
    #[arg(long)]
    source: String,
}

#[derive(Subcommand)]
enum SchemesCommand {
    /// Write the identity scheme of every captured table (from the live sources' catalogs)
    /// into the scheme directory, ready to edit. Existing files are kept.
    Generate(SchemesArgs),
    /// Check every scheme: on its own, against its source table as it is now, and against the
    /// sink table it writes. Exits 1 when any scheme has an error.
    Check(SchemesArgs),
}

#[derive(clap::Args)]
struct SchemesArgs {
    /// The TOML config file (sources, sinks, router.schemes).
    #[arg(long, short, env = "SLUICE_CONFIG")]
    config: PathBuf,
    /// The scheme directory; default: router.schemes.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// generate: overwrite schemes that exist.
    #[arg(long)]
    force: bool,
}

#[derive(clap::Args)]
struct StatusArgs {
    /// A config file; its observability.listen is the endpoint when none is given.
    #[arg(long, short, env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
    /// A process's observability address (host:port or http://host:port). Repeat it for a
    /// deployment that runs capture and router apart.
    #[arg(long = "endpoint", short = 'e')]
    endpoints: Vec<String>,
    /// Keep reporting: redrawn with progress bars on a terminal, as log lines otherwise.
    #[arg(long)]
    watch: bool,
    /// Seconds between reports with --watch.
    #[arg(long, default_value_t = 2.0)]
    interval: f64,
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
        Command::Status(a) => return status(a),
        Command::ResetState(a) => return reset_state(a),
        Command::Switch(a) => return switch(a),
        Command::Verify(a) => return verify(a),
        Command::Schemes(c) => return schemes(c),
        Command::CheckConfig(a) => {
            return match load(&a.config) {
                Ok(_) => {
                    println!("{}: ok", a.config.display());
                    ExitCode::SUCCESS
                }
                Err(code) => code,
            };
        }
    };
    let config = match load(&arg.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    telemetry::init_logging(&config.observability);
    let runtime = match runtime(true) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let result = runtime.block_on(commands::run(config, components));
    // A component given up on may still be inside a blocking call (a librdkafka close): the
    // exit does not wait for it past a moment.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The config at `path`; a config that does not load is said on stderr, exit code 2.
fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

/// The async runtime: multi-threaded for the pipeline, one thread for short commands.
fn runtime(multi_thread: bool) -> Result<tokio::runtime::Runtime, ExitCode> {
    let mut builder = if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    builder.enable_all().build().map_err(|e| {
        eprintln!("error: cannot start the async runtime: {e}");
        ExitCode::FAILURE
    })
}

fn schemes(command: &SchemesCommand) -> ExitCode {
    let (SchemesCommand::Generate(args) | SchemesCommand::Check(args)) = command;
    let config = match load(&args.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let runtime = match runtime(false) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let result = runtime.block_on(async {
        match command {
            SchemesCommand::Generate(_) => {
                sluice::schemes::generate(&config, args.dir.as_deref(), args.force)
                    .await
                    .map(|lines| (lines, true))
            }
            SchemesCommand::Check(_) => sluice::schemes::check(&config, args.dir.as_deref())
                .await
                .map(|r| (r.lines, r.ok)),
        }
    });
    match result {
        Ok((lines, ok)) => {
            for line in lines {
                println!("{line}");
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn verify(args: &VerifyArgs) -> ExitCode {
    let config = match load(&args.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // Warnings on stderr (why rows are still in flight, what a repair cannot do); `RUST_LOG`
    // for more.
    let mut observability = config.observability.clone();
    observability.log_level = "warn".into();
    telemetry::init_logging(&observability);
    let runtime = match runtime(true) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let options = sluice::verify::Options {
        tables: args.tables.clone(),
        bucket_rows: args.bucket_rows,
        settle: std::time::Duration::from_millis(args.settle_ms),
        parallel: args.parallel,
        repair: match (args.repair, args.dry_run) {
            (false, _) => sluice::verify::Repair::No,
            (true, true) => sluice::verify::Repair::DryRun,
            (true, false) => sluice::verify::Repair::Yes,
        },
        repair_wait: std::time::Duration::from_millis(args.repair_wait_ms),
        max_rows_per_second: args.max_rows_per_second,
        progress: sluice::verify::Progress::on_terminal(),
    };
    match runtime.block_on(sluice::verify::verify(&config, &options)) {
        Ok(reports) => {
            for report in &reports {
                println!("{}", report.line());
            }
            if let Some(out) = &args.out {
                if let Err(e) = sluice::verify::write_out(out, &reports) {
                    eprintln!("error: {e:#}");
                    return ExitCode::FAILURE;
                }
            }
            println!();
            print!("{}", sluice::verify::summary(&reports));
            let equal = reports.iter().filter(|r| r.equal()).count();
            println!("{equal} of {} tables equal", reports.len());
            match sluice::verify::outcome(&reports) {
                "equal" => ExitCode::SUCCESS,
                // Nothing differs, but the pipeline had not applied some rows yet: run again.
                "in_flight" => {
                    println!("rows still in flight: no difference found, but the pipeline had not applied them within --settle-ms");
                    ExitCode::from(3)
                }
                _ => ExitCode::FAILURE,
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn switch(args: &SwitchArgs) -> ExitCode {
    let (from, to) = match (load(&args.from), load(&args.to)) {
        (Ok(from), Ok(to)) => (from, to),
        (Err(code), _) | (_, Err(code)) => return code,
    };
    let runtime = match runtime(true) {
        Ok(r) => r,
        Err(code) => return code,
    };
    match runtime.block_on(sluice::switch::switch(&from, &to)) {
        Ok(done) => {
            println!("{done}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn reset_state(args: &ResetStateArgs) -> ExitCode {
    let config = match load(&args.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match commands::reset_state(&config, &args.source) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn status(args: &StatusArgs) -> ExitCode {
    use sluice::status;
    use std::io::IsTerminal;
    let mut endpoints = args.endpoints.clone();
    if endpoints.is_empty() {
        let Some(path) = &args.config else {
            eprintln!("error: give --endpoint HOST:PORT (repeatable) or --config FILE");
            return ExitCode::from(2);
        };
        match Config::load(path) {
            // A wildcard listen address is reached on loopback.
            Ok(c) => endpoints.push(
                c.observability
                    .listen
                    .replace("0.0.0.0:", "127.0.0.1:")
                    .replace("[::]:", "[::1]:"),
            ),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let tty = std::io::stdout().is_terminal();
    if !args.watch {
        let report = status::collect(&endpoints);
        print!("{}", status::render(&report, tty));
        return if report.all_ready() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    let interval = std::time::Duration::from_secs_f64(args.interval.max(0.2));
    loop {
        let report = status::collect(&endpoints);
        let at = status::rfc3339(status::now_secs());
        if tty {
            // Home the cursor and clear the screen, then redraw.
            print!("\x1b[H\x1b[2J{at}\n\n{}", status::render(&report, true));
        } else {
            for line in status::render_log_lines(&report).lines() {
                println!("{at} {line}");
            }
        }
        std::thread::sleep(interval);
    }
}
