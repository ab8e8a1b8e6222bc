//! `sov-scheduler`: run one scheduler (`run`), or a whole local cluster for development (`dev`).

use clap::{Parser, Subcommand};
use sov_scheduler::config::{LogFormat, RunArgs};
use sov_scheduler::{dev, keygen, restore, server};
use tracing_subscriber::EnvFilter;

/// mimalloc instead of glibc's malloc: under the rule-change benchmark's load, glibc's malloc and
/// free were a quarter of the leader's and the fleet's CPU, mimalloc's an eighth (perf profiles in
/// docs/benchmarks.md, "Rule changes").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "sov-scheduler",
    version,
    about = "sov scheduler: places model-serving workloads only where residency and export policy allow",
    long_about = "sov scheduler: places model-serving workloads only where residency and export policy allow.\n\n\
        Start a local three-scheduler cluster for development:\n    sov-scheduler dev\n\n\
        Run one scheduler of a real cluster (first one bootstraps, the others join):\n    \
        sov-scheduler run --node-id 1 --data-dir /var/lib/sov --bootstrap\n    \
        sov-scheduler run --node-id 2 --data-dir /var/lib/sov --join 10.0.0.1:7400\n\n\
        Restore a cluster from a backup (`sovctl cluster snapshot save FILE`) into an empty data dir,\n\
        with the settings (id, data dir, advertised addresses) the scheduler will run with:\n    \
        sov-scheduler restore --snapshot FILE --config /etc/sov/scheduler.toml\n\n\
        Make the cluster's signing key (history checkpoints and exports), once, for every scheduler:\n    \
        sov-scheduler keygen --out /etc/sov\n\n\
        Settings come from flags, then SOV_* environment variables, then a TOML file (--config).\n\
        Logs: human-readable by default, JSON with --log-format json; filter with SOV_LOG (e.g. SOV_LOG=debug)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one scheduler until SIGINT/SIGTERM.
    Run(Box<RunArgs>),
    /// Start a local cluster: N scheduler processes on loopback; data is kept between runs.
    Dev(dev::DevArgs),
    /// Seed an empty data dir from a snapshot file; a scheduler run on it leads a new cluster
    /// with the saved state. Takes the same settings as `run` (--bootstrap and --join aside).
    Restore(Box<restore::RestoreArgs>),
    /// Make the cluster's Ed25519 signing key (history checkpoints and exports) and its public
    /// half for reviewers. Example: sov-scheduler keygen --out /etc/sov
    Keygen(keygen::KeygenArgs),
}

fn init_logging(format: LogFormat) {
    let filter =
        EnvFilter::try_from_env("SOV_LOG").unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

#[tokio::main]
async fn main() {
    sov_scheduler::transparent_huge_pages(false);
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => match args.resolve_to_serve() {
            Ok(config) => {
                init_logging(config.log_format);
                server::run(config).await
            }
            Err(e) => Err(e),
        },
        Command::Dev(args) => dev::run(args).await,
        Command::Restore(args) => {
            init_logging(LogFormat::Text);
            restore::run(*args).await
        }
        Command::Keygen(args) => keygen::run(&args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
