//! `sovctl`: the command-line client of a sov scheduler cluster.
//!
//! This file owns the command tree (what users type and the `--help` they read) and the dispatch
//! to the command modules; it also decides exit codes: 0 on success, 1 when the cluster refused
//! or could not be reached, 2 for bad input (flags, endpoints, spec files). The work lives in
//! `cluster` and `deploy` (one function per command), `client` (where calls go, retries),
//! `output` (tables and JSON) and `spec` (deployment spec files).

mod client;
mod cluster;
mod deploy;
mod output;
mod spec;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use sov_proto::v1::JoinRequest;

use crate::client::Client;
use crate::output::Format;

/// sovctl: manage a sov inference cluster.
///
/// sovctl talks to any scheduler of the cluster over gRPC (port 7400). Writes reaching a follower
/// are passed on to the leader; if that fails, sovctl retries at the leader or at the next
/// endpoint you listed (at most 5 attempts). Output is a table, or one JSON document with
/// `-o json`. Failures print one line, `error: ...`, and exit with 1 (the cluster said no or could
/// not be reached) or 2 (bad input).
///
/// Example: sovctl --endpoint 10.0.0.1:7400,10.0.0.2:7400 deploy list
#[derive(Debug, Parser)]
#[command(name = "sovctl", version)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct GlobalArgs {
    /// Schedulers to call, comma-separated, tried in order: host:port or http://host:port.
    #[arg(
        long,
        env = "SOV_ENDPOINT",
        default_value = client::DEFAULT_ENDPOINT,
        value_name = "ENDPOINTS",
        global = true
    )]
    endpoint: String,

    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table, global = true)]
    output: Format,

    /// Seconds to wait for each answer (`cluster join` waits at least 120).
    #[arg(
        long,
        default_value_t = 10,
        value_name = "SECONDS",
        value_parser = clap::value_parser!(u64).range(1..=3600),
        global = true
    )]
    timeout: u64,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Inspect and change the scheduler group (Raft membership).
    ///
    /// The schedulers form one Raft group: one leader, voting followers and non-voting
    /// learners. These commands show its health and add or remove schedulers.
    ///
    /// Example: sovctl cluster status
    #[command(subcommand)]
    Cluster(ClusterCommand),

    /// Submit, inspect and delete deployments (models to serve).
    ///
    /// A deployment names a model, a serving command, a replica count and the resources each
    /// replica needs; the scheduler places the replicas on nodes that fit and that policy allows.
    ///
    /// Example: sovctl deploy apply -f deploy/examples/tiny-echo.toml
    #[command(subcommand)]
    Deploy(DeployCommand),
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Show Raft term, leader and log progress as seen by the node that answers.
    ///
    /// Prints the answering node's id and role, the term, the leader it knows of, its last log,
    /// committed, applied, snapshot and purged indexes, and the member list. Point --endpoint at
    /// each scheduler in turn to compare their views.
    ///
    /// Example: sovctl cluster status --endpoint 10.0.0.2:7400
    Status,

    /// List the schedulers in the group, marking the leader with '*'.
    ///
    /// MATCHED is the log index a member has replicated up to; only the leader knows it, so it
    /// shows '-' when a follower answers (as it may with --stale).
    ///
    /// Example: sovctl cluster members --stale
    Members(ReadArgs),

    /// Add a scheduler to the group: first as a learner, then (unless --learner-only) as a voter.
    ///
    /// Start the new scheduler first, then run this against the existing cluster. The call
    /// returns once the new scheduler has caught up with the log, which can take a while on a
    /// large cluster, so it waits at least 120 seconds.
    ///
    /// Example: sovctl cluster join --id 4 --raft-addr 10.0.0.4:7401 --api-addr 10.0.0.4:7400
    Join(JoinArgs),

    /// Remove a scheduler (voter or learner) from the group.
    ///
    /// Removing voters shrinks the quorum; remove one at a time and check `cluster status` in
    /// between. The removed scheduler stops taking part and can be shut down.
    ///
    /// Example: sovctl cluster remove 4
    Remove(RemoveArgs),
}

#[derive(Debug, Subcommand)]
enum DeployCommand {
    /// Create or update a deployment from a TOML spec file.
    ///
    /// The deployment is identified by the spec's `name`: applying the same file twice leaves it
    /// unchanged, applying an edited file updates it and bumps its generation. See
    /// deploy/examples/ for commented specs.
    ///
    /// Example: sovctl deploy apply -f deploy/examples/mistral-7b.toml --expected-generation 3
    Apply(ApplyArgs),

    /// List deployments, all of them unless --limit is given.
    ///
    /// Shows name, model, replica count, GPUs per replica, generation and last update time (UTC).
    ///
    /// Example: sovctl deploy list -o json
    List(ListArgs),

    /// Show one deployment with its full spec.
    ///
    /// Example: sovctl deploy show mistral-7b
    Show(ShowArgs),

    /// Delete a deployment; its replicas are stopped.
    ///
    /// Example: sovctl deploy delete mistral-7b
    Delete(DeleteArgs),
}

#[derive(Debug, Args)]
struct ReadArgs {
    /// Answer from the node's own copy without checking with the leader: faster, works without
    /// a quorum, but may lag behind recent writes.
    #[arg(long)]
    stale: bool,
}

#[derive(Debug, Args)]
struct JoinArgs {
    /// Node id of the new scheduler (unique in the group, not 0).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    id: u64,
    /// host:port of the new scheduler's Raft peer service (usually port 7401).
    #[arg(long, value_name = "HOST:PORT")]
    raft_addr: String,
    /// host:port of the new scheduler's API (usually port 7400).
    #[arg(long, value_name = "HOST:PORT")]
    api_addr: String,
    /// Keep it a non-voting learner: it receives the log but does not count for the quorum.
    #[arg(long)]
    learner_only: bool,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("which").required(true).args(["id", "id_flag"]))]
struct RemoveArgs {
    /// Node id of the scheduler to remove.
    #[arg(value_name = "ID")]
    id: Option<u64>,
    /// The same, as a flag.
    #[arg(long = "id", value_name = "ID")]
    id_flag: Option<u64>,
}

#[derive(Debug, Args)]
struct ApplyArgs {
    /// Spec file (TOML); `-` reads standard input.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: String,
    /// Apply only if the deployment is still at this generation (see `deploy show`), so a
    /// concurrent change is not overwritten; 0 applies unconditionally.
    #[arg(long, default_value_t = 0, value_name = "G")]
    expected_generation: u64,
}

#[derive(Debug, Args)]
struct ListArgs {
    #[command(flatten)]
    read: ReadArgs,
    /// List at most N deployments (in name order).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    limit: Option<u64>,
}

#[derive(Debug, Args)]
struct ShowArgs {
    /// Deployment name.
    name: String,
    #[command(flatten)]
    read: ReadArgs,
}

#[derive(Debug, Args)]
struct DeleteArgs {
    /// Deployment name.
    name: String,
}

/// Bad input from the user: flags, endpoints, spec files. Exits with 2, like clap's own usage
/// errors, so scripts can tell "you asked wrongly" from "the cluster said no".
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(run(cli)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line whatever the cause: server messages may span lines, and scripts grep.
            let text = format!("{err:#}");
            eprintln!(
                "error: {}",
                text.split_whitespace().collect::<Vec<_>>().join(" ")
            );
            if err.is::<UsageError>() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let endpoints = client::parse_endpoints(&cli.global.endpoint)?;
    let mut client = Client::new(endpoints, Duration::from_secs(cli.global.timeout));
    let format = cli.global.output;
    match cli.command {
        Command::Cluster(cmd) => match cmd {
            ClusterCommand::Status => cluster::status(&mut client, format).await,
            ClusterCommand::Members(a) => cluster::members(&mut client, format, a.stale).await,
            ClusterCommand::Join(a) => {
                let req = JoinRequest {
                    id: a.id,
                    raft_addr: a.raft_addr,
                    api_addr: a.api_addr,
                    learner_only: a.learner_only,
                };
                cluster::join(&mut client, format, req).await
            }
            ClusterCommand::Remove(a) => {
                let id = a.id.or(a.id_flag).expect("clap requires ID or --id");
                cluster::remove(&mut client, format, id).await
            }
        },
        Command::Deploy(cmd) => match cmd {
            DeployCommand::Apply(a) => {
                // Read the spec before any network call, so bad input fails fast and offline.
                let spec = spec::read(&a.file)?;
                deploy::apply(&mut client, format, spec, a.expected_generation).await
            }
            DeployCommand::List(a) => {
                deploy::list(&mut client, format, a.read.stale, a.limit).await
            }
            DeployCommand::Show(a) => deploy::show(&mut client, format, a.name, a.read.stale).await,
            DeployCommand::Delete(a) => deploy::delete(&mut client, format, a.name).await,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_work_after_the_subcommand() {
        let cli = Cli::try_parse_from([
            "sovctl",
            "deploy",
            "list",
            "--stale",
            "-o",
            "json",
            "--endpoint",
            "a:1,b:2",
            "--timeout",
            "3",
        ])
        .unwrap();
        assert_eq!(cli.global.output, Format::Json);
        assert_eq!(cli.global.endpoint, "a:1,b:2");
        assert_eq!(cli.global.timeout, 3);
        assert!(matches!(
            cli.command,
            Command::Deploy(DeployCommand::List(ListArgs {
                read: ReadArgs { stale: true },
                limit: None
            }))
        ));
    }

    #[test]
    fn remove_takes_a_positional_id_or_flag_but_not_both() {
        for args in [
            &["sovctl", "cluster", "remove", "4"][..],
            &["sovctl", "cluster", "remove", "--id", "4"],
        ] {
            let cli = Cli::try_parse_from(args).unwrap();
            let Command::Cluster(ClusterCommand::Remove(a)) = cli.command else {
                panic!("parsed as {:?}", cli.command)
            };
            assert_eq!(a.id.or(a.id_flag), Some(4));
        }
        assert!(Cli::try_parse_from(["sovctl", "cluster", "remove"]).is_err());
        assert!(Cli::try_parse_from(["sovctl", "cluster", "remove", "4", "--id", "5"]).is_err());
    }

    #[test]
    fn usage_errors_are_recognised_for_exit_code_2() {
        let err = anyhow::Error::from(UsageError("bad".into()));
        assert!(err.is::<UsageError>());
        assert!(!anyhow::anyhow!("server said no").is::<UsageError>());
    }
}
