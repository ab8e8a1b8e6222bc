//! `sov-agent`: the node agent, and a fleet simulator for tests and benchmarks.
//!
//! `sov-agent run --config agent.toml` runs the real agent (see [`sov_agent::agent`]);
//! `sov-agent check --config agent.toml` validates the config and prints the inventory it would
//! report; `sov-agent fleet --nodes N --spec fleet.toml` runs N virtual nodes in one process.
//!
//! `run` and `fleet` need a certificate from the cluster's CA (`[tls]` in the config, or
//! `--tls-ca`/`--tls-cert`/`--tls-key`) and refuse to start without one, or with one that does
//! not fit; `check` checks it too.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sov_agent::config::AgentConfig;
use sov_agent::credentials::{Credentials, TlsFlags, utc_date};
use tokio::sync::watch;

/// mimalloc instead of glibc's malloc: under the rule-change benchmark's load, glibc's malloc and
/// free were a quarter of the leader's and the fleet's CPU, mimalloc's an eighth (perf profiles in
/// docs/benchmarks.md, "Rule changes").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "sov-agent",
    version,
    about = "sov node agent: reports this node's location facts and GPU inventory to the schedulers, \
             heartbeats, and runs the model servers they assign",
    after_help = "Examples:\n  \
        sov-agent run --config /etc/sov/agent.toml\n  \
        sov-agent check --config deploy/dev/agents/fr-par-1.toml\n  \
        sov-agent fleet --nodes 1000 --spec deploy/dev/fleet.toml --scheduler 127.0.0.1:7400 \\\n      \
        --tls-ca tls/ca.crt --tls-cert tls/sim-all.crt --tls-key tls/sim-all.key\n\n\
        Every connection to a scheduler is mutual TLS: an agent needs a certificate issued for its \
        node (sovctl ca issue --role agent --name NODE --country CC ...), the fleet one for \
        'sim-*' (docs/security.md).\n\
        A commented example config: deploy/agent.example.toml"
)]
struct Cli {
    /// Log format
    #[arg(
        long,
        env = "SOV_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: register, heartbeat, run assigned model servers until SIGTERM/Ctrl-C.
    /// Model servers keep running when the agent stops and are re-adopted when it starts again.
    Run {
        /// Agent config (TOML): name, scheduler endpoints, location facts, [tls] files
        #[arg(long, short, env = "SOV_AGENT_CONFIG")]
        config: PathBuf,
        /// Stop every model server when the agent stops (default: leave them running, to be
        /// re-adopted by the next agent start). For dev clusters and tests.
        #[arg(long)]
        stop_on_exit: bool,
        #[command(flatten)]
        tls: TlsFlags,
    },
    /// Validate a config and its certificate, and print the registration it would send (facts
    /// and inventory) and who the certificate says the agent is.
    Check {
        #[arg(long, short, env = "SOV_AGENT_CONFIG")]
        config: PathBuf,
        #[command(flatten)]
        tls: TlsFlags,
    },
    /// Simulate N virtual nodes in one process (register, heartbeat, acknowledge assignments;
    /// no processes run). Every virtual GPU is reported simulated. One agent certificate speaks
    /// for all of them: issued for '<name_prefix>-*' of the spec ('sim-*' by default), without
    /// location claims.
    Fleet(sov_agent::fleet::FleetArgs),
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SOV_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never in log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// A watch that turns true on SIGTERM or Ctrl-C.
fn shutdown_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down");
        let _ = tx.send(true);
    });
    rx
}

fn main() {
    // The workloads it starts inherit the flag: they get the host's setting, whoever started
    // the agent (`sov-scheduler dev` turned huge pages off for itself).
    sov_scheduler::transparent_huge_pages(true);
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .and_then(|rt| rt.block_on(run(cli.command)));
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run {
            config,
            stop_on_exit,
            tls,
        } => {
            let (cfg, credentials) = load(&config, &tls)?;
            sov_agent::agent::run(cfg, credentials, stop_on_exit, shutdown_signal()).await
        }
        Command::Check { config, tls } => {
            let (cfg, credentials) = load(&config, &tls)?;
            let mut fp = sov_agent::inventory::Fingerprinter::new(&cfg);
            let inventory = fp.fingerprint();
            let identity = credentials.identity();
            let report = serde_json::json!({
                "name": cfg.name,
                "schedulers": cfg.schedulers,
                "facts": cfg.facts(),
                "inventory": inventory,
                "certificate": {
                    "path": credentials.cert_path(),
                    "identity": identity.uris()[0],
                    "location_claims": identity.location,
                    "not_after": utc_date(credentials.not_after()),
                    "expiry_warning": credentials.expiry_warning(std::time::SystemTime::now()),
                },
            });
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Command::Fleet(args) => sov_agent::fleet::run(args, shutdown_signal()).await,
    }
}

/// The config at `path` with the TLS flags applied, and its checked certificate: the agent does
/// not start without one that fits.
fn load(path: &std::path::Path, tls: &TlsFlags) -> anyhow::Result<(AgentConfig, Credentials)> {
    let mut cfg = AgentConfig::load(path)?;
    cfg.tls = tls.over(&cfg.tls);
    let credentials = Credentials::for_node(
        &cfg.tls,
        &cfg.name,
        &cfg.location,
        &path.display().to_string(),
    )?;
    Ok((cfg, credentials))
}
