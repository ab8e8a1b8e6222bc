//! `sovctl`: the command-line client of a sov scheduler cluster.
//!
//! This file owns the command tree (what users type and the `--help` they read) and the dispatch
//! to the command modules; it also decides exit codes: 0 on success, 1 when the cluster refused
//! or could not be reached (or a watch timed out), 2 for bad input (flags, endpoints, spec
//! files), 130 when the user stops a watch with Ctrl-C, except for the three commands whose exit
//! code answers a question (`ExitCodes`). It also decides which role each command needs a
//! certificate for (`need`). The work lives in `cluster`, `deploy`, `node`, `policy`, `history`,
//! `audit` and `ca` (one function per command), `client` (where calls go, retries, TLS),
//! `credentials` (which client certificate a command presents), `handshake` (why a scheduler
//! refused our certificate), `output` (tables and JSON),
//! `watch` (`--watch` and `--wait`), `bundle` (policy bundle files), `timestamp` (instants in
//! history flags), `diff` (comparing policy versions) and `atomic_file` (files written whole or
//! not at all). The parsers of what users write, `spec` (deployment spec files) and `duration`
//! (durations in flags and specs), live in the library target (`lib.rs`), where the fuzz
//! targets reach them.

mod atomic_file;
mod audit;
mod bundle;
mod ca;
mod client;
mod cluster;
mod credentials;
mod deploy;
mod diff;
mod handshake;
mod history;
mod node;
mod output;
mod policy;
mod timestamp;
mod watch;

pub use sovctl::{UsageError, duration, spec};

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use sov_proto::identity::Role;
use sov_proto::v1::{ExportRequest, HistoryQuery, JoinRequest};

use crate::client::{Client, Transport};
use crate::credentials::Need;
use crate::node::DrainReplicas;
use crate::output::Format;
use crate::policy::{ApplyOpts, Check, InvalidBundle};

/// sovctl: manage a sov inference cluster.
///
/// sovctl talks to any scheduler of the cluster over gRPC (port 7400), with mutual TLS: it
/// presents a client certificate from the cluster's CA, whose role (operator, deployer or
/// auditor) decides what it may do. Certificates live in a TLS directory (--tls-dir, SOV_TLS_DIR,
/// or ~/.config/sov/tls when it exists): ca.crt plus NAME.crt and NAME.key per identity, as
/// `sovctl ca issue --out DIR` writes them. With several identities there, sovctl picks the one
/// whose role the command needs (--as NAME picks one yourself). `sovctl ca` makes the CA and the
/// certificates; see docs/security.md.
///
/// Writes reaching a follower are passed on to the leader; if that fails, sovctl retries at the
/// leader or at the next endpoint you listed (at most 5 attempts). Output is a table, or one
/// JSON document with `-o json`. Failures print one line, `error: ...` (a refused policy bundle adds one line per
/// problem), and exit with 1 (the cluster said no or could not be reached, or a watch timed out)
/// or 2 (bad input); a watch stopped with Ctrl-C exits with 130. Three commands answer a
/// question with their exit code and so use other codes for failures: `deploy plan`, `policy
/// plan` and `policy diff` (see their --help).
///
/// Example: sovctl --endpoint 10.0.0.1:7400,10.0.0.2:7400 deploy list
///
/// Example: sovctl --tls-dir ~/sov-creds --as alice node drain gpu-fr-1
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
    /// Schedulers to call, comma-separated, tried in order: host:port, http://host:port or
    /// https://host:port (all the same: the connection is mutual TLS whenever a client
    /// certificate is configured).
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

    /// Directory of client credentials: ca.crt, and NAME.crt with NAME.key per identity
    /// (`sovctl ca issue --out DIR`) [default: $XDG_CONFIG_HOME/sov/tls or ~/.config/sov/tls,
    /// when it exists; without any, sovctl connects in plaintext, which no real scheduler
    /// accepts].
    #[arg(long, env = "SOV_TLS_DIR", value_name = "DIR", global = true)]
    tls_dir: Option<PathBuf>,

    /// Call as identity NAME (NAME.crt in the TLS directory) [default: the only one there, or
    /// the one whose role the command needs].
    #[arg(long = "as", env = "SOV_AS", value_name = "NAME", global = true)]
    as_name: Option<String>,

    /// Call with the bearer token in FILE (`sovctl ca token --out FILE`) instead of a client
    /// certificate; the token may also come in SOV_TOKEN. Needs the cluster's ca.crt in the TLS
    /// directory, and a cluster that accepts tokens (bearer_tokens = true).
    #[arg(long, env = "SOV_TOKEN_FILE", value_name = "FILE", global = true)]
    token_file: Option<PathBuf>,
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

    /// Say why a deployment's replicas are, or are not, placed.
    ///
    /// Prints the replicas running out of those wanted, a one-line summary of the nodes (how many
    /// are eligible and, grouped by first reason, why the others are not), then every excluded
    /// node with all its reasons. With --node, only that node's reasons, one per line.
    ///
    /// Example: sovctl explain mistral-7b --node gpu-us-1
    Explain(ExplainArgs),

    /// Inspect the GPU machines agents registered, and drain them for maintenance.
    ///
    /// A node's facts (country, site, operator, certifications, location trust) decide where
    /// policy lets a deployment run; its inventory decides what fits. GPUs declared in a
    /// dev/test config instead of found through NVML are marked "(simulated)".
    ///
    /// Example: sovctl node list
    #[command(subcommand)]
    Node(NodeCommand),

    /// Apply, inspect and compare placement policy versions (Cedar bundles).
    ///
    /// A bundle is Cedar policies, their schema and entity data (jurisdiction groups). Every
    /// accepted bundle becomes a new, numbered, immutable version and the version in force.
    ///
    /// Example: sovctl policy list
    #[command(subcommand)]
    Policy(PolicyCommand),

    /// Query the placement history, and export it as evidence that verifies offline.
    ///
    /// Every decision the cluster takes (placements, stops, moves, policy versions, violations,
    /// node changes) is an event in an append-only Merkle tree, stamped with the leader's time
    /// and the policy version in force. `query` answers questions about it; `export` writes
    /// the events with proofs and a signed seal, which `sovctl audit verify` checks offline.
    ///
    /// Example: sovctl history query --deployment open-eu --as-of 2026-06-12T18:00:00Z
    #[command(subcommand)]
    History(HistoryCommand),

    /// Verify exported evidence offline, and get signed checkpoints of the history.
    ///
    /// The cluster signs its history with an Ed25519 key (`sov-scheduler keygen` makes it);
    /// reviewers hold the public half, cluster.pub, and need nothing else to check an export.
    ///
    /// Example: sovctl audit verify june.jsonl --key cluster.pub
    #[command(subcommand)]
    Audit(AuditCommand),

    /// Run the cluster's certificate authority: make it, issue certificates, read them. Offline.
    ///
    /// Every scheduler, agent and person holds a certificate from the cluster's CA; its role
    /// (operator, deployer, auditor, agent, scheduler) decides what the holder may do. These
    /// commands need no cluster and no endpoint: run them where the CA key is kept, offline
    /// ideally. See docs/security.md.
    ///
    /// Example: sovctl ca init && sovctl ca issue --role operator --name alice --out ~/.config/sov/tls
    #[command(subcommand)]
    Ca(CaCommand),
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Make a new CA: DIR/ca.crt (public) and DIR/ca.key (private, mode 0600).
    ///
    /// Refuses if DIR already holds a CA: sov never overwrites keys. Keep ca.key offline and
    /// private: whoever holds it can join the cluster under any identity. The CA is valid for
    /// ten years.
    ///
    /// Example: sovctl ca init --dir /secure/sov-ca --name "acme sov CA"
    Init(CaInitArgs),

    /// Issue a certificate: OUT/NAME.crt, OUT/NAME.key (mode 0600) and a copy of OUT/ca.crt.
    ///
    /// The certificate names one identity, spiffe://sov/ROLE/NAME. Agents may carry location
    /// claims the CA vouches for (--country, --subdivision, --site, --operator, --operator-hq,
    /// --ultimate-parent-hq): the scheduler takes them over what the agent reports. Deployers
    /// may be limited to deployments whose name starts with --namespace. Schedulers may add
    /// --dns names (clients check only that the name sov-scheduler is there). An agent named
    /// PREFIX* speaks for every node named PREFIX... (the fleet simulator; files PREFIXall.*):
    /// it may claim no location, so its nodes stay self-reported.
    ///
    /// Prints the files written, the identity, the expiry and the opaque id (ROLE:FINGERPRINT)
    /// the cluster's history records instead of the name: keep the mapping from id to person
    /// outside the cluster. Existing files are never overwritten; bad input writes nothing.
    ///
    /// Example: sovctl ca issue --role deployer --name team-a --namespace team-a- --out ./team-a
    ///
    /// Example: sovctl ca issue --role agent --name gpu-fr-1 --country FR --operator ovh --out ./gpu-fr-1
    ///
    /// Example: sovctl ca issue --role scheduler --name sched-1 --dns sched-1.internal --out ./sched-1
    Issue(Box<CaIssueArgs>),

    /// Show what a certificate says: identity, location claims, fingerprint, expiry.
    ///
    /// Reads a PEM certificate (NAME.crt, or ca.crt) offline. Prints role, name, the identity
    /// URIs, location claims (agents), namespace (deployers), DNS names (schedulers), issuer,
    /// fingerprint and opaque id, validity, and whether it has expired.
    ///
    /// Example: sovctl ca show ~/.config/sov/tls/alice.crt
    Show(CaShowArgs),

    /// Issue a bearer token for a person: an alternative to a client certificate.
    ///
    /// Signed by the CA's key and checked by schedulers with the CA certificate they trust, on
    /// the API port, where the cluster enables tokens (bearer_tokens = true, --bearer-tokens).
    /// For people only (operator, deployer, auditor; deployers may get --namespace). A token
    /// lives --ttl (default 12h, at most 7d) and cannot be revoked before: keep it short.
    /// Without --out the token alone goes to standard output and what it is to standard error.
    /// The holder calls with SOV_TOKEN=TOKEN (or --token-file FILE) and the cluster's ca.crt in
    /// their --tls-dir. History records calls made with it as ROLE:FINGERPRINT.
    ///
    /// Example: export SOV_TOKEN=$(sovctl ca token --role auditor --name reviewer-1 --ttl 8h)
    ///
    /// Example: sovctl ca token --role deployer --name ci --namespace team-a- --out ci.token
    Token(CaTokenArgs),
}

/// The roles `ca token --role` takes: people's.
const TOKEN_ROLE_NAMES: [&str; 3] = ["operator", "deployer", "auditor"];

#[derive(Debug, Args)]
struct CaTokenArgs {
    /// What the holder may do: operator, deployer or auditor.
    #[arg(long, value_name = "ROLE", value_parser = clap::builder::PossibleValuesParser::new(TOKEN_ROLE_NAMES))]
    role: String,
    /// The holder's name: letters, digits, '-', '_', '.'. In the token, not in the history.
    #[arg(long, value_name = "NAME")]
    name: String,
    /// Deployers: only deployments whose name starts with PREFIX.
    #[arg(long, value_name = "PREFIX")]
    namespace: Option<String>,
    /// How long the token works, e.g. 8h, 30m, 2d (at most 7d).
    #[arg(long, value_name = "DURATION", default_value = "12h", value_parser = duration::parse)]
    ttl: Duration,
    /// The CA's directory (ca.crt and ca.key, from `sovctl ca init`).
    #[arg(long = "ca", value_name = "DIR", default_value = ca::DIR_DEFAULT)]
    ca_dir: PathBuf,
    /// Write the token to FILE (new, mode 0600) instead of standard output.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct CaInitArgs {
    /// Directory to make the CA in (created if missing).
    #[arg(long, value_name = "DIR", default_value = ca::DIR_DEFAULT)]
    dir: PathBuf,
    /// The CA's name (its certificate's common name).
    #[arg(long, value_name = "NAME", default_value = ca::NAME_DEFAULT)]
    name: String,
}

/// The roles `ca issue --role` takes.
const ROLE_NAMES: [&str; 5] = ["operator", "deployer", "auditor", "agent", "scheduler"];

#[derive(Debug, Args)]
struct CaIssueArgs {
    /// What the holder may do: operator (runs the cluster), deployer (submits deployments),
    /// auditor (reads policy and history), agent (a node), scheduler.
    #[arg(long, value_name = "ROLE", value_parser = clap::builder::PossibleValuesParser::new(ROLE_NAMES))]
    role: String,
    /// The holder's name: letters, digits, '-', '_', '.'; an agent's is its node's name (PREFIX*
    /// for a fleet). Names the files, and appears in the certificate, not in the history.
    #[arg(long, value_name = "NAME")]
    name: String,
    /// The CA's directory (ca.crt and ca.key, from `sovctl ca init`).
    #[arg(long = "ca", value_name = "DIR", default_value = ca::DIR_DEFAULT)]
    ca_dir: PathBuf,
    /// Directory to write NAME.crt, NAME.key and ca.crt into (created if missing).
    #[arg(long, value_name = "DIR", default_value = ".")]
    out: PathBuf,
    /// Agents: the node's country (ISO 3166-1 alpha-2), vouched for by the CA.
    #[arg(long, value_name = "CC")]
    country: Option<String>,
    /// Agents: the node's subdivision (ISO 3166-2, e.g. DE-BY).
    #[arg(long, value_name = "CODE")]
    subdivision: Option<String>,
    /// Agents: the node's site (data centre).
    #[arg(long, value_name = "SITE")]
    site: Option<String>,
    /// Agents: the company operating the node.
    #[arg(long, value_name = "NAME")]
    operator: Option<String>,
    /// Agents: the country of the operator's headquarters.
    #[arg(long, value_name = "CC")]
    operator_hq: Option<String>,
    /// Agents: the country of the operator's ultimate parent's headquarters.
    #[arg(long, value_name = "CC")]
    ultimate_parent_hq: Option<String>,
    /// Deployers: only deployments whose name starts with PREFIX.
    #[arg(long, value_name = "PREFIX")]
    namespace: Option<String>,
    /// Schedulers: an extra DNS name for the certificate (repeatable).
    #[arg(long, value_name = "NAME")]
    dns: Vec<String>,
    /// Valid for N days from now (at most 3650).
    #[arg(
        long,
        value_name = "N",
        default_value_t = sov_proto::tls::CERT_VALIDITY_DAYS_DEFAULT,
        value_parser = clap::value_parser!(u64).range(1..=ca::DAYS_MAX),
        conflicts_with = "not_after"
    )]
    days: u64,
    /// Valid until TIME instead (RFC 3339, e.g. 2027-06-30T00:00:00Z); a past TIME makes an
    /// already expired certificate, for tests.
    #[arg(long, value_name = TIME_VALUE_NAME, value_parser = timestamp::parse, allow_hyphen_values = true)]
    not_after: Option<i64>,
}

#[derive(Debug, Args)]
struct CaShowArgs {
    /// A PEM certificate file.
    #[arg(value_name = "FILE")]
    file: PathBuf,
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

    /// Back up the cluster's state to a file (restore it with `sov-scheduler restore`).
    ///
    /// Example: sovctl cluster snapshot save /var/backups/sov/sov-2026-06-30.snap
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
}

#[derive(Debug, Subcommand)]
enum SnapshotCommand {
    /// Save a snapshot of the replicated state to FILE, atomically.
    ///
    /// The scheduler that answers builds a Raft snapshot holding every write acknowledged
    /// before the call (with --stale: whatever it has applied, which works on a cluster that
    /// lost its quorum) and streams it. sovctl checks its length and SHA-256, writes FILE.partial
    /// next to FILE, syncs it to disk and renames it to FILE, so FILE is always either the old
    /// file or a complete new one. Progress is shown on a terminal. Prints the log index and
    /// the checksums; `sov-scheduler restore --snapshot FILE` seeds a new cluster from it.
    ///
    /// Example: sovctl cluster snapshot save sov.snap --endpoint 10.0.0.2:7400
    Save(SnapshotSaveArgs),
}

#[derive(Debug, Args)]
struct SnapshotSaveArgs {
    /// Where to write the snapshot (replaced atomically if it exists).
    #[arg(value_name = "FILE")]
    file: PathBuf,
    #[command(flatten)]
    read: ReadArgs,
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

    /// Dry-run a spec: where its replicas would go now, and why other nodes are excluded.
    ///
    /// Nothing is written. Replicas of the deployment already running stay; the others are
    /// placed on nodes that fit and that policy allows, as `deploy apply` would place them now.
    /// When some fit nowhere, the summary and every excluded node's reasons follow.
    ///
    /// Exit codes, for CI (unlike other commands, 1 is not a failure here): 0 = applying the
    /// spec now would place nothing (all replicas already run, or the missing ones fit nowhere:
    /// read the output); 1 = replicas would be placed; 2 = bad input (flags, spec file); 3 = the
    /// cluster refused or could not be reached.
    ///
    /// Example: sovctl deploy plan -f deploy/examples/mistral-7b.toml
    Plan(PlanArgs),

    /// List deployments, all of them unless --limit is given.
    ///
    /// Shows name, model, replica count, RUNNING (replicas their agents report running / replicas
    /// wanted), COMPLIANCE (how the deployment stands with the rules in force: compliant,
    /// "migrating (1/3)" with moves finished of started, "violating (audit: RULE)", unplaceable
    /// or "degraded (1/2 running)"), GPUs per replica, generation and last update time (UTC).
    ///
    /// Example: sovctl deploy list -o json
    List(ListArgs),

    /// Show one deployment: its full spec, compliance, export attributes, residency
    /// requirement and placed replicas; with --watch, follow it until it converged.
    ///
    /// Compliance is how the deployment stands with the rules in force: compliant, migrating
    /// (replicas moving off nodes the rules no longer allow, "(1/3)" moved so far), violating
    /// (replicas on nodes an `audit` rule forbids: recorded, still running), unplaceable or
    /// degraded (fewer replicas running than wanted, with why), and the next move deadline.
    /// Migration is how its replicas move: replacements at a time, and how long an old replica
    /// may run once it must move (the spec's [migration] table).
    ///
    /// Each replica shows its node, GPUs, port, desired state (run or stop), the status its
    /// agent reports (pending, starting, running, failed or stopped, with the exit code), its
    /// restarts, the policy version its placement was checked against, and its STANDING:
    /// compliant, "violating: RULE", "migrating → REPLACEMENT (or placing), by DEADLINE", or
    /// "replaces ID" for a replacement. Below, the reason of each failed or stopped replica and
    /// why each replica told to stop was stopped. `sovctl explain` says why replicas are missing.
    ///
    /// --watch polls twice a second until the compliance report says the deployment converged
    /// (nothing left to stop, move or place, and every wanted replica runs), then exits 0. On a
    /// terminal it redraws a compact view in place; otherwise it prints a line with a UTC
    /// timestamp whenever the summary or the replicas change, and with -o json one JSON document
    /// per line per change. It exits 1 when --watch-timeout passes first, saying what is left,
    /// and 130 on Ctrl-C. A leader change does not end it: it is noted once on stderr.
    ///
    /// Example: sovctl deploy show mistral-7b
    ///
    /// Example: sovctl deploy show open-eu --watch --watch-timeout 30m
    ///
    /// Example: sovctl deploy show open-eu --watch -o json | jq -c .compliance
    Show(ShowArgs),

    /// Delete a deployment; its replicas are stopped.
    ///
    /// Example: sovctl deploy delete mistral-7b
    Delete(DeleteArgs),
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// List the registered nodes: status, location, operator, trust and resources.
    ///
    /// STATUS is ready or down, with ",draining" and the drain's deadline for drained nodes:
    /// "ready,draining (until 12:00:00Z)". PARENT HQ is the country of
    /// the operator's ultimate parent company. GPUS counts GPUs per model; "(simulated)" marks
    /// nodes with GPUs that are not real hardware. ALLOCS counts the replicas placed to run there.
    ///
    /// Example: sovctl node list --stale
    List(ReadArgs),

    /// Show every fact and every GPU of one node.
    ///
    /// Lists location facts (with subdivision and each certification's last valid day), the
    /// drain deadline of a draining node, location trust, CPU, memory and the port range for
    /// model servers, then each GPU: index, UUID, model ("(simulated)" when it is not real
    /// hardware), memory, MIG mode and driver; then the replicas placed on the node with the
    /// status their agent reports, why any is failed or stopped, and why any was told to stop.
    ///
    /// Example: sovctl node show gpu-fr-1
    Show(NodeShowArgs),

    /// Move the replicas off a node and place nothing new on it, for maintenance or
    /// decommissioning.
    ///
    /// The node stays registered. Its replicas move make-before-break: a replacement is placed
    /// on a node the rules allow, and the old replica is stopped once the replacement reports
    /// running, each deployment moving at most its `[migration] max_parallel` replicas at a time.
    /// Every replica still on the node when --deadline passes (default: the scheduler's, 1 hour)
    /// is stopped whatever happens. --force stops them all at once instead (break-before-make:
    /// their deployments run short until the replacements start). Draining a node that is
    /// already draining never pushes its deadline back. `node undrain` reverses a drain; replicas
    /// already moved stay where they went.
    ///
    /// --wait then watches the cluster until nothing is left to stop, move or place (across the
    /// cluster, as `policy apply --wait` does), exiting 1 when --wait-timeout passes first.
    ///
    /// Example: sovctl node drain gpu-fr-1 --deadline 30m --wait
    ///
    /// Example: sovctl node drain gpu-fr-1 --force
    Drain(DrainArgs),

    /// Let the scheduler place replicas on a drained node again.
    ///
    /// Example: sovctl node undrain gpu-fr-1
    Undrain(NodeNameArgs),
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Dry-run a policy bundle: which running replicas it would stop, move or flag.
    ///
    /// Reads the bundle as `policy apply` does and writes nothing. Prints the version the bundle
    /// would become, its rules, then every running replica whose standing it changes, strictest
    /// first: stop-now (stopped in the same committed entry that activates the version),
    /// migrate (moved make-before-break, stopped by its deadline), audit (recorded as a
    /// violation, keeps running) and cleared (a violation or move lifted). Then the deployments
    /// it would leave unplaceable or degraded, and why; a summary line; the plan hash; and the
    /// command that applies exactly this plan: with --plan-hash, `policy apply` refuses the
    /// bundle if, by the time it is applied, it would stop, move or flag anything else.
    ///
    /// Exit codes, for CI (unlike other commands, 1 is not a failure here): 0 = applying it
    /// would stop, move or flag no running replica (lifting a violation or a move does not
    /// count); 1 = it would; 2 = bad input (a path that
    /// is no bundle, or a bundle the scheduler refuses: every problem is printed); 3 = the
    /// cluster refused or could not be reached.
    ///
    /// Example: sovctl policy plan deploy/policies
    ///
    /// Example: sovctl policy plan deploy/policies -o json | jq '.allocations | length'
    Plan(PolicyPlanArgs),

    /// Validate a policy bundle and make it the version in force, after checking what it does
    /// to running replicas.
    ///
    /// DIR is a directory whose .cedar, .cedarschema and .json files (directly inside it) form
    /// the bundle; anything else there, such as README.md, is left out, and sovctl says on
    /// stderr which files it sends. A single .cedar FILE is sent alone. The scheduler checks the
    /// bundle against its schema; if it refuses it, every problem is printed, one per line
    /// (file:line:column: message), and nothing changes. A bundle identical to the version in
    /// force changes nothing either.
    ///
    /// Without --plan-hash or --yes, sovctl first plans the bundle (see `policy plan`): if it
    /// would stop, move or flag running replicas, it prints the plan on stderr and refuses,
    /// naming the command to apply exactly that plan; otherwise it applies it with the plan's
    /// hash, so that nothing running is touched if the cluster changed in between. With
    /// --plan-hash, it applies only if the impact is still exactly the one planned. --yes
    /// applies whatever the impact. The answer counts what the version did in the entry that
    /// activated it: replicas stopped, migrating, violations recorded.
    ///
    /// --wait then watches the cluster carry the version out (moves, stops, replacements)
    /// until nothing is left to stop, move or place, exiting 1 when --wait-timeout passes
    /// first.
    ///
    /// Example: sovctl policy apply deploy/policies --comment "allow Swiss sites"
    ///
    /// Example: sovctl policy apply deploy/policies --plan-hash HASH --wait (HASH: from `policy plan`)
    ///
    /// Example: sovctl policy apply deploy/policies --yes
    Apply(PolicyApplyArgs),

    /// List every policy version, oldest first; '*' marks the version in force.
    ///
    /// Example: sovctl policy list
    List(ReadArgs),

    /// Show a policy version (the one in force unless --version is given) and its rules.
    ///
    /// Prints hash, activation time, author and comment, then each rule: its id, effect, what
    /// happens to running replicas when it starts to forbid them (ON CHANGE), its reason and its
    /// file. --files adds every file in full. With -o json the files are always included.
    ///
    /// Example: sovctl policy show --version 3 --files
    Show(PolicyShowArgs),

    /// Compare two policy versions file by file, as a unified diff.
    ///
    /// Each differing file is introduced by a `# NAME: ...` line, then its diff from vA/NAME
    /// to vB/NAME; a file only in one version is compared with /dev/null. `patch -p1` and
    /// `git apply` accept the output, applied inside a copy of version A's files.
    ///
    /// Exit codes, like diff(1): 0 = the versions have the same files, 1 = they differ,
    /// 2 = trouble (bad input, or the cluster refused or could not be reached).
    ///
    /// Example: sovctl policy diff 3 4
    Diff(PolicyDiffArgs),
}

#[derive(Debug, Subcommand)]
enum HistoryCommand {
    /// List history events, oldest first; or, with --as-of, where a deployment ran at an instant.
    ///
    /// Filters combine (all must match): --deployment, --node, --country (of the node, as
    /// recorded with the event), --policy-version (in force when the event was recorded),
    /// --rule (named by a violation, stop or move), --kind, and a time range: --since
    /// (inclusive) and --until (exclusive), leader time. TIME is RFC 3339 with a time zone
    /// (2026-06-12T18:00:00Z, 2026-06-12T20:00:00.250+02:00) or `now`; relative times such as
    /// -1h are refused, so a query quoted in a report means the same thing when run again.
    ///
    /// Prints SEQ (the event's leaf in the Merkle tree, what `audit verify` names), TIME (UTC),
    /// KIND, DEPLOYMENT, NODE, POLICY (version in force) and a one-line DETAIL. Pages are
    /// followed up to --limit events; stderr says when more follow. With -o json: the events as
    /// recorded (the JSON each Merkle leaf hashes), with the tree size and root they belong to.
    ///
    /// With --as-of TIME (and --deployment): the policy version and bundle hash in force at
    /// that instant, and every replica placed and not yet confirmed stopped by then: its node,
    /// the node's facts as they were evaluated when it was placed (country, operator, ultimate
    /// parent's HQ, location trust, certifications), the policy version it was placed under,
    /// its status (pending, starting, running, failed, or stopping: ordered to stop, not yet
    /// confirmed by its agent) and standing, and why the node was eligible. A deployment that
    /// did not exist then is said so (exit 0).
    ///
    /// Example: sovctl history query --deployment open-eu --as-of 2026-06-12T18:00:00Z
    ///
    /// Example: sovctl history query --kind allocation.stop-ordered --since 2026-06-12T00:00:00Z
    ///
    /// Example: sovctl history query --rule eu-sovereign-operator --policy-version 3 -o json
    Query(HistoryQueryArgs),

    /// Write evidence of the history that anyone can verify offline: JSON lines.
    ///
    /// The file holds a header, each event selected (all of them unless filtered) with its
    /// inclusion proof, and a seal: a checkpoint of the whole history (tree size, root, time)
    /// signed with the cluster key, with the list of leaves exported. Removing, reordering,
    /// altering or adding a line breaks a proof or the seal, and `sovctl audit verify` names
    /// the first such line.
    ///
    /// --previous OLD.jsonl adds a proof that this history extends the one OLD was sealed
    /// with, so a series of exports (one a month, say) verifies as one append-only history.
    ///
    /// Writes to stdout, or with -f to FILE: first FILE.partial, renamed to FILE once the seal
    /// arrived, so FILE is never a partial export; an existing FILE is kept unless --force.
    /// Progress is shown on a terminal; the last stderr line says what was written: events,
    /// leaves, tree size and root. With -o json and -f, that is also printed on stdout as JSON.
    ///
    /// Example: sovctl history export --since 2026-06-01T00:00:00Z --until 2026-07-01T00:00:00Z -f june.jsonl
    ///
    /// Example: sovctl history export --previous may.jsonl -f june.jsonl (then: sovctl audit verify june.jsonl --key cluster.pub --previous may.jsonl)
    Export(HistoryExportArgs),
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check an export offline: every event's proof, the signed seal, and (with --previous)
    /// that it extends an earlier export. Never connects to the cluster.
    ///
    /// Prints `OK: ...`: how many events, which leaves, which cluster and key, and the tree
    /// size, root and time of the signed checkpoint. When anything was altered, removed,
    /// reordered, inserted or cut off, prints `error: FAILED: ...` naming the first line or
    /// leaf that does not verify. -o json prints {"verified": true|false, ...} either way.
    ///
    /// Exit codes: 0 = verified; 1 = it does not verify; 2 = the files cannot be used (missing,
    /// unreadable, not a public key file).
    ///
    /// Example: sovctl audit verify june.jsonl --key cluster.pub
    ///
    /// Example: sovctl audit verify june.jsonl --key cluster.pub --previous may.jsonl
    Verify(AuditVerifyArgs),

    /// Ask the cluster for a signed checkpoint of its history now: tree size, root, time.
    ///
    /// A kept or published checkpoint pins the past down: the history is append-only, so every
    /// later history of the cluster must extend one of that size with that root. With --key,
    /// the signature is checked here too (exit 1 when it does not hold). --out writes the
    /// checkpoint as JSON (an existing file is kept unless --force). A scheduler without a
    /// signing key refuses (failed precondition).
    ///
    /// Example: sovctl audit checkpoint --key cluster.pub --out checkpoint-2026-06-30.json
    Checkpoint(AuditCheckpointArgs),
}

/// The value name of `--since`, `--until` and `--as-of`: RFC 3339 or `now` (`timestamp`). Those
/// flags allow hyphen values so that `--since -1h` gets the parser's explanation of what a TIME
/// is, not clap's "unexpected argument".
const TIME_VALUE_NAME: &str = "TIME";

#[derive(Debug, Args)]
struct HistoryQueryArgs {
    /// Only events about this deployment.
    #[arg(long, value_name = "NAME")]
    deployment: Option<String>,
    /// Only events about this node.
    #[arg(long, value_name = "NAME")]
    node: Option<String>,
    /// Only events about nodes in this country (ISO 3166-1 alpha-2, e.g. IE).
    #[arg(long, value_name = "CC")]
    country: Option<String>,
    /// Only events recorded while this policy version was in force.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    policy_version: Option<u64>,
    /// Only events naming this policy rule (violations, stops, moves).
    #[arg(long, value_name = "RULE")]
    rule: Option<String>,
    /// Only events of this kind.
    #[arg(long, value_name = "KIND", value_parser = clap::builder::PossibleValuesParser::new(history::KINDS))]
    kind: Option<String>,
    /// Only events at or after TIME (RFC 3339, e.g. 2026-06-12T18:00:00Z, or now).
    #[arg(long, value_name = TIME_VALUE_NAME, value_parser = timestamp::parse, allow_hyphen_values = true)]
    since: Option<i64>,
    /// Only events before TIME (RFC 3339, e.g. 2026-06-13T00:00:00Z, or now).
    #[arg(long, value_name = TIME_VALUE_NAME, value_parser = timestamp::parse, allow_hyphen_values = true)]
    until: Option<i64>,
    /// List at most N events.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 100,
        value_parser = clap::value_parser!(u32).range(1..=i64::from(history::QUERY_LIMIT_MAX))
    )]
    limit: u32,
    /// Instead of events: where every replica of --deployment ran at TIME, under which policy.
    #[arg(
        long,
        value_name = TIME_VALUE_NAME,
        value_parser = timestamp::parse,
        allow_hyphen_values = true,
        requires = "deployment",
        conflicts_with_all = ["node", "country", "policy_version", "rule", "kind", "since", "until", "limit"]
    )]
    as_of: Option<i64>,
    #[command(flatten)]
    read: ReadArgs,
}

#[derive(Debug, Args)]
struct HistoryExportArgs {
    /// Only events at or after TIME (RFC 3339, e.g. 2026-06-01T00:00:00Z, or now).
    #[arg(long, value_name = TIME_VALUE_NAME, value_parser = timestamp::parse, allow_hyphen_values = true)]
    since: Option<i64>,
    /// Only events before TIME (RFC 3339, e.g. 2026-07-01T00:00:00Z, or now).
    #[arg(long, value_name = TIME_VALUE_NAME, value_parser = timestamp::parse, allow_hyphen_values = true)]
    until: Option<i64>,
    /// Only events about this deployment.
    #[arg(long, value_name = "NAME")]
    deployment: Option<String>,
    /// Only events about this node.
    #[arg(long, value_name = "NAME")]
    node: Option<String>,
    /// An earlier export of this cluster: add a proof that this history extends the one it
    /// was sealed with (its last line's tree size).
    #[arg(long, value_name = "OLD.jsonl")]
    previous: Option<PathBuf>,
    /// Write to FILE (atomically) instead of stdout.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Option<PathBuf>,
    /// Replace FILE if it exists.
    #[arg(long, requires = "file")]
    force: bool,
}

#[derive(Debug, Args)]
struct AuditVerifyArgs {
    /// The export to verify (from `sovctl history export`).
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// The cluster's public key file (cluster.pub, from `sov-scheduler keygen`).
    #[arg(long, value_name = "cluster.pub")]
    key: PathBuf,
    /// An earlier export of the same cluster that FILE must extend (verified first).
    #[arg(long, value_name = "OLD.jsonl")]
    previous: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct AuditCheckpointArgs {
    /// Check the signature with this public key file (cluster.pub).
    #[arg(long, value_name = "cluster.pub")]
    key: Option<PathBuf>,
    /// Also write the checkpoint to FILE as JSON (atomically).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Replace FILE if it exists.
    #[arg(long, requires = "out")]
    force: bool,
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
    /// Keep showing the deployment until it converged: nothing left to stop, move or place,
    /// every wanted replica running.
    #[arg(long)]
    watch: bool,
    /// Give up watching after this long, with exit code 1: e.g. 90s, 30m, 2h (at most 24h).
    #[arg(
        long,
        value_name = "DURATION",
        default_value = WATCH_TIMEOUT_DEFAULT,
        value_parser = duration::parse_watch_timeout,
        requires = "watch"
    )]
    watch_timeout: Duration,
}

/// `--wait` and `--wait-timeout` of the commands whose effect takes a while to carry out.
#[derive(Debug, Args)]
struct WaitArgs {
    /// Then watch the cluster until nothing is left to stop, move or place (moves finished,
    /// stops confirmed by the agents, replacements placed).
    #[arg(long)]
    wait: bool,
    /// Give up waiting after this long, with exit code 1: e.g. 90s, 30m, 2h (at most 24h).
    #[arg(
        long,
        value_name = "DURATION",
        default_value = WATCH_TIMEOUT_DEFAULT,
        value_parser = duration::parse_watch_timeout,
        requires = "wait"
    )]
    wait_timeout: Duration,
}

impl WaitArgs {
    /// How long to wait, if at all.
    fn timeout(&self) -> Option<Duration> {
        self.wait.then_some(self.wait_timeout)
    }
}

/// `--watch-timeout` and `--wait-timeout` when not given: `watch::TIMEOUT_DEFAULT`.
const WATCH_TIMEOUT_DEFAULT: &str = "15m";

#[derive(Debug, Args)]
struct DeleteArgs {
    /// Deployment name.
    name: String,
}

#[derive(Debug, Args)]
struct PlanArgs {
    /// Spec file (TOML); `-` reads standard input.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: String,
}

#[derive(Debug, Args)]
struct ExplainArgs {
    /// Deployment name.
    deployment: String,
    /// Only this node's reasons, all of them.
    #[arg(long, value_name = "NODE")]
    node: Option<String>,
    #[command(flatten)]
    read: ReadArgs,
}

#[derive(Debug, Args)]
struct NodeShowArgs {
    /// Node name.
    name: String,
    #[command(flatten)]
    read: ReadArgs,
}

#[derive(Debug, Args)]
struct NodeNameArgs {
    /// Node name.
    name: String,
}

#[derive(Debug, Args)]
struct DrainArgs {
    /// Node name.
    name: String,
    /// Stop every replica still on the node this long from now, moved or not: e.g. 90s, 10m or
    /// 1h30m (at most 7d) [default: the scheduler's, 1h].
    #[arg(long, value_name = "DURATION", value_parser = duration::parse_deadline)]
    deadline: Option<Duration>,
    /// Stop the node's replicas at once instead of moving them first.
    #[arg(long, conflicts_with = "deadline")]
    force: bool,
    #[command(flatten)]
    wait: WaitArgs,
}

#[derive(Debug, Args)]
struct PolicyPlanArgs {
    /// The bundle: a directory of .cedar, .cedarschema and .json files, or one .cedar file.
    #[arg(value_name = "DIR|FILE")]
    path: PathBuf,
}

#[derive(Debug, Args)]
struct PolicyApplyArgs {
    /// The bundle: a directory of .cedar, .cedarschema and .json files, or one .cedar file.
    #[arg(value_name = "DIR|FILE")]
    path: PathBuf,
    /// Apply only if the bundle stops, moves and flags exactly the replicas `policy plan`
    /// showed with this hash; refused, and nothing changes, if the cluster moved on since.
    #[arg(
        long,
        value_name = "HASH",
        value_parser = policy::parse_plan_hash,
        conflicts_with = "yes"
    )]
    plan_hash: Option<String>,
    /// Apply without checking what the bundle does to running replicas.
    #[arg(long)]
    yes: bool,
    /// Why this version exists, recorded with it (shown by `policy list` and `policy show`).
    #[arg(long, default_value = "", value_name = "TEXT")]
    comment: String,
    /// Who applies it, recorded with it: an opaque id, not a person's name [default: $USER, or
    /// "unknown"].
    #[arg(long, value_name = "ID")]
    author: Option<String>,
    #[command(flatten)]
    wait: WaitArgs,
}

#[derive(Debug, Args)]
struct PolicyShowArgs {
    /// Version to show; without it, the version in force.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    version: Option<u64>,
    /// Also print every file of the bundle in full.
    #[arg(long)]
    files: bool,
    #[command(flatten)]
    read: ReadArgs,
}

#[derive(Debug, Args)]
struct PolicyDiffArgs {
    /// The older version (the `-` side).
    #[arg(value_name = "A", value_parser = clap::value_parser!(u64).range(1..))]
    a: u64,
    /// The newer version (the `+` side).
    #[arg(value_name = "B", value_parser = clap::value_parser!(u64).range(1..))]
    b: u64,
    #[command(flatten)]
    read: ReadArgs,
}

/// Exit codes of one command when it fails. Most commands exit with 1 when the cluster refused
/// or could not be reached and 2 for bad input. `deploy plan`, `policy plan` and `policy diff`
/// answer a question with 0 or 1, so their failures must use other codes, or a script would
/// read a failure as an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ExitCodes {
    /// The cluster refused or could not be reached.
    failure: u8,
    /// Bad input (`UsageError`).
    usage: u8,
    /// The scheduler refused a policy bundle (`InvalidBundle`): a refusal where the bundle is
    /// applied, bad input where it is only checked (`policy plan`, which CI runs on every
    /// change to a bundle and which must tell a broken bundle from a broken cluster).
    invalid_bundle: u8,
}

impl ExitCodes {
    fn of(command: &Command) -> Self {
        match command {
            Command::Deploy(DeployCommand::Plan(_)) => ExitCodes {
                failure: 3,
                usage: 2,
                invalid_bundle: 3,
            },
            Command::Policy(PolicyCommand::Plan(_)) => ExitCodes {
                failure: 3,
                usage: 2,
                invalid_bundle: 2,
            },
            // Like diff(1): 2 for any trouble.
            Command::Policy(PolicyCommand::Diff(_)) => ExitCodes {
                failure: 2,
                usage: 2,
                invalid_bundle: 2,
            },
            _ => ExitCodes {
                failure: 1,
                usage: 2,
                invalid_bundle: 1,
            },
        }
    }

    fn for_error(self, err: &anyhow::Error) -> u8 {
        if err.is::<UsageError>() {
            self.usage
        } else if err.is::<InvalidBundle>() {
            self.invalid_bundle
        } else {
            self.failure
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let codes = ExitCodes::of(&cli.command);
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(run(cli)));
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprint!("{}", error_report(&err));
            ExitCode::from(codes.for_error(&err))
        }
    }
}

/// What a failure prints on stderr: one line whatever the cause (server messages may span
/// lines, and scripts grep), except a refused policy bundle, whose problems get a line each.
fn error_report(err: &anyhow::Error) -> String {
    if let Some(refused) = err.downcast_ref::<InvalidBundle>() {
        return refused.report();
    }
    let text = format!("{err:#}");
    format!(
        "error: {}\n",
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    )
}

/// Runs the command; the `Ok` value is the exit code, 0 unless the command answers a question
/// with it (`ExitCodes`).
async fn run(cli: Cli) -> anyhow::Result<u8> {
    // Offline: no endpoint is parsed, no credentials read, no connection made, whatever
    // --endpoint and --tls-dir say.
    match &cli.command {
        Command::Audit(AuditCommand::Verify(a)) => {
            audit::verify(cli.global.output, &a.file, &a.key, a.previous.as_deref())?;
            return Ok(0);
        }
        Command::Ca(cmd) => {
            run_ca(cli.global.output, cmd)?;
            return Ok(0);
        }
        _ => {}
    }
    let endpoints = client::parse_endpoints(&cli.global.endpoint)?;
    let token = credentials::token(cli.global.token_file.as_deref())?;
    let transport = match token {
        Some(token) => {
            if cli.global.as_name.is_some() {
                return Err(UsageError(
                    "--as picks a certificate, but a bearer token is configured (SOV_TOKEN or \
                     --token-file); use one or the other"
                        .into(),
                )
                .into());
            }
            credentials::token_transport(cli.global.tls_dir.as_deref(), token)?
        }
        None => match credentials::load(
            cli.global.tls_dir.as_deref(),
            cli.global.as_name.as_deref(),
            need(&cli.command),
        )? {
            Some(c) => Transport::Tls {
                advice: c.handshake_advice(),
                material: c.material,
            },
            None => Transport::Plain,
        },
    };
    let mut client = Client::with_transport(
        endpoints,
        Duration::from_secs(cli.global.timeout),
        transport,
    );
    let format = cli.global.output;
    let done = |()| 0;
    match cli.command {
        Command::Cluster(cmd) => match cmd {
            ClusterCommand::Status => cluster::status(&mut client, format).await.map(done),
            ClusterCommand::Members(a) => cluster::members(&mut client, format, a.stale)
                .await
                .map(done),
            ClusterCommand::Join(a) => {
                let req = JoinRequest {
                    id: a.id,
                    raft_addr: a.raft_addr,
                    api_addr: a.api_addr,
                    learner_only: a.learner_only,
                };
                cluster::join(&mut client, format, req).await.map(done)
            }
            ClusterCommand::Remove(a) => {
                let id = a.id.or(a.id_flag).expect("clap requires ID or --id");
                cluster::remove(&mut client, format, id).await.map(done)
            }
            ClusterCommand::Snapshot(SnapshotCommand::Save(a)) => {
                cluster::snapshot_save(&mut client, format, &a.file, a.read.stale)
                    .await
                    .map(done)
            }
        },
        Command::Deploy(cmd) => match cmd {
            DeployCommand::Apply(a) => {
                // Read the spec before any network call, so bad input fails fast and offline.
                let spec = spec::read(&a.file)?;
                deploy::apply(&mut client, format, spec, a.expected_generation)
                    .await
                    .map(done)
            }
            DeployCommand::Plan(a) => {
                let spec = spec::read(&a.file)?;
                let changes = deploy::plan(&mut client, format, spec).await?;
                Ok(u8::from(changes))
            }
            DeployCommand::List(a) => deploy::list(&mut client, format, a.read.stale, a.limit)
                .await
                .map(done),
            DeployCommand::Show(a) => {
                let watch = a.watch.then_some(a.watch_timeout);
                deploy::show(&mut client, format, a.name, a.read.stale, watch).await
            }
            DeployCommand::Delete(a) => deploy::delete(&mut client, format, a.name).await.map(done),
        },
        Command::Explain(a) => {
            deploy::explain(&mut client, format, a.deployment, a.node, a.read.stale)
                .await
                .map(done)
        }
        Command::Node(cmd) => match cmd {
            NodeCommand::List(a) => node::list(&mut client, format, a.stale).await.map(done),
            NodeCommand::Show(a) => node::show(&mut client, format, a.name, a.read.stale)
                .await
                .map(done),
            NodeCommand::Drain(a) => {
                let replicas = if a.force {
                    DrainReplicas::StopNow
                } else {
                    DrainReplicas::Move {
                        deadline: a.deadline,
                    }
                };
                node::drain(&mut client, format, a.name, replicas, a.wait.timeout()).await
            }
            NodeCommand::Undrain(a) => node::undrain(&mut client, format, a.name).await.map(done),
        },
        Command::Policy(cmd) => match cmd {
            PolicyCommand::Plan(a) => {
                let changes = policy::plan(&mut client, format, &a.path).await?;
                Ok(u8::from(changes))
            }
            PolicyCommand::Apply(a) => {
                let check = match (a.plan_hash, a.yes) {
                    (Some(hash), _) => Check::PlanHash(hash),
                    (None, true) => Check::Skip,
                    (None, false) => Check::Plan,
                };
                let opts = ApplyOpts {
                    comment: a.comment,
                    author: a.author,
                    check,
                    wait: a.wait.timeout(),
                };
                policy::apply(&mut client, format, &a.path, opts).await
            }
            PolicyCommand::List(a) => policy::list(&mut client, format, a.stale).await.map(done),
            PolicyCommand::Show(a) => {
                policy::show(&mut client, format, a.version, a.read.stale, a.files)
                    .await
                    .map(done)
            }
            PolicyCommand::Diff(a) => {
                let differ = policy::diff(&mut client, format, a.a, a.b, a.read.stale).await?;
                Ok(u8::from(differ))
            }
        },
        Command::History(HistoryCommand::Query(a)) => match a.as_of {
            Some(at_ms) => {
                let deployment = a
                    .deployment
                    .expect("clap requires --deployment with --as-of");
                history::as_of(&mut client, format, deployment, at_ms, a.read.stale)
                    .await
                    .map(done)
            }
            None => {
                check_time_range(a.since, a.until)?;
                let filter = HistoryQuery {
                    deployment: a.deployment.unwrap_or_default(),
                    node: a.node.unwrap_or_default(),
                    country: a.country.unwrap_or_default(),
                    policy_version: a.policy_version.unwrap_or(0),
                    rule: a.rule.unwrap_or_default(),
                    kind: a.kind.unwrap_or_default(),
                    since_ms: a.since.unwrap_or(0),
                    until_ms: a.until.unwrap_or(0),
                    consistency: client::read_consistency(a.read.stale),
                    ..Default::default()
                };
                history::query(&mut client, format, filter, a.limit)
                    .await
                    .map(done)
            }
        },
        Command::History(HistoryCommand::Export(a)) => {
            check_time_range(a.since, a.until)?;
            let req = ExportRequest {
                since_ms: a.since.unwrap_or(0),
                until_ms: a.until.unwrap_or(0),
                deployment: a.deployment.unwrap_or_default(),
                node: a.node.unwrap_or_default(),
                previous_size: 0,
            };
            let req =
                history::prepare_export(req, a.previous.as_deref(), a.file.as_deref(), a.force)?;
            history::export(&mut client, format, req, a.file)
                .await
                .map(done)
        }
        Command::Audit(AuditCommand::Verify(_)) | Command::Ca(_) => {
            unreachable!("run offline above")
        }
        Command::Audit(AuditCommand::Checkpoint(a)) => audit::checkpoint(
            &mut client,
            format,
            a.key.as_deref(),
            a.out.as_deref(),
            a.force,
        )
        .await
        .map(done),
    }
}

/// What `command` needs a client certificate for, to pick one from the TLS directory. Mirrors
/// the scheduler's permissions (its `api::auth`), which have the last word.
fn need(command: &Command) -> Need {
    match command {
        Command::Deploy(
            DeployCommand::Apply(_) | DeployCommand::Plan(_) | DeployCommand::Delete(_),
        ) => Need::Role(Role::Deployer),
        Command::Cluster(
            ClusterCommand::Join(_) | ClusterCommand::Remove(_) | ClusterCommand::Snapshot(_),
        )
        | Command::Node(NodeCommand::Drain(_) | NodeCommand::Undrain(_))
        | Command::Policy(PolicyCommand::Apply(_)) => Need::Role(Role::Operator),
        Command::History(_) | Command::Audit(_) => Need::Role(Role::Auditor),
        Command::Cluster(ClusterCommand::Status | ClusterCommand::Members(_))
        | Command::Deploy(DeployCommand::List(_) | DeployCommand::Show(_))
        | Command::Explain(_)
        | Command::Node(NodeCommand::List(_) | NodeCommand::Show(_))
        | Command::Policy(
            PolicyCommand::Plan(_)
            | PolicyCommand::List(_)
            | PolicyCommand::Show(_)
            | PolicyCommand::Diff(_),
        )
        | Command::Ca(_) => Need::Read,
    }
}

/// `sovctl ca ...`, offline.
fn run_ca(format: Format, command: &CaCommand) -> anyhow::Result<()> {
    match command {
        CaCommand::Init(a) => ca::init(format, &a.dir, &a.name),
        CaCommand::Show(a) => ca::show(format, &a.file),
        CaCommand::Token(a) => ca::token(
            format,
            &ca::TokenSpec {
                role: Role::parse(&a.role).expect("clap checks the role"),
                name: a.name.clone(),
                namespace: a.namespace.clone(),
                ca: a.ca_dir.clone(),
                ttl: a.ttl,
                out: a.out.clone(),
            },
        ),
        CaCommand::Issue(a) => {
            let role = Role::parse(&a.role).expect("clap checks the role");
            let location = [
                ("country", &a.country),
                ("subdivision", &a.subdivision),
                ("site", &a.site),
                ("operator", &a.operator),
                ("operator_hq", &a.operator_hq),
                ("ultimate_parent_hq", &a.ultimate_parent_hq),
            ]
            .into_iter()
            .filter_map(|(fact, value)| value.clone().map(|v| (fact, v)))
            .collect();
            let validity = match a.not_after {
                Some(ms) => ca::Validity::Until(
                    std::time::UNIX_EPOCH
                        + Duration::from_millis(u64::try_from(ms).expect("after 1970")),
                ),
                None => ca::Validity::Days(a.days),
            };
            let spec = ca::IssueSpec {
                role,
                name: a.name.clone(),
                ca: a.ca_dir.clone(),
                out: a.out.clone(),
                location,
                namespace: a.namespace.clone(),
                dns: a.dns.clone(),
                validity,
            };
            ca::issue(format, &spec)
        }
    }
}

/// `--since` must come before `--until`: the range is since (inclusive) to until (exclusive).
fn check_time_range(since: Option<i64>, until: Option<i64>) -> Result<(), UsageError> {
    match (since, until) {
        (Some(s), Some(u)) if u <= s => Err(UsageError(format!(
            "--until {} is not after --since {}; the range is since (inclusive) to until \
             (exclusive)",
            output::rfc3339_utc(u),
            output::rfc3339_utc(s)
        ))),
        _ => Ok(()),
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
    fn credentials_flags_are_global() {
        let cli = Cli::try_parse_from([
            "sovctl",
            "node",
            "list",
            "--tls-dir",
            "/creds",
            "--as",
            "alice",
        ])
        .unwrap();
        assert_eq!(
            (cli.global.tls_dir, cli.global.as_name.as_deref()),
            (Some(PathBuf::from("/creds")), Some("alice"))
        );
        // `--as` is not `--as-of`.
        let cli = Cli::try_parse_from([
            "sovctl",
            "history",
            "query",
            "--deployment",
            "d",
            "--as-of",
            "now",
            "--as",
            "rev",
        ])
        .unwrap();
        assert_eq!(cli.global.as_name.as_deref(), Some("rev"));
    }

    #[test]
    fn each_command_uses_the_identity_its_role_allows() {
        use credentials::{Choice, choose};
        let held: Vec<(String, Role)> = [
            ("ana", Role::Deployer),
            ("bo", Role::Auditor),
            ("cy", Role::Operator),
            ("n1", Role::Agent),
        ]
        .into_iter()
        .map(|(n, r)| (n.to_owned(), r))
        .collect();
        let pick = |args: &[&str]| {
            let cli = Cli::try_parse_from(args).unwrap();
            choose(&held, need(&cli.command)).map(Choice::name)
        };
        for (args, name) in [
            (&["sovctl", "deploy", "apply", "-f", "x.toml"][..], "ana"),
            (&["sovctl", "deploy", "plan", "-f", "x.toml"], "ana"),
            (&["sovctl", "deploy", "delete", "x"], "ana"),
            (&["sovctl", "node", "drain", "n"], "cy"),
            (&["sovctl", "node", "undrain", "n"], "cy"),
            (
                &[
                    "sovctl",
                    "cluster",
                    "join",
                    "--id",
                    "4",
                    "--raft-addr",
                    "a:1",
                    "--api-addr",
                    "a:2",
                ],
                "cy",
            ),
            (&["sovctl", "cluster", "remove", "4"], "cy"),
            (&["sovctl", "cluster", "snapshot", "save", "f"], "cy"),
            (&["sovctl", "policy", "apply", "d"], "cy"),
            (&["sovctl", "history", "query"], "bo"),
            (&["sovctl", "history", "export"], "bo"),
            (&["sovctl", "audit", "checkpoint"], "bo"),
            (&["sovctl", "cluster", "status"], "cy"),
            (&["sovctl", "deploy", "list"], "cy"),
            (&["sovctl", "explain", "x"], "cy"),
            (&["sovctl", "policy", "plan", "d"], "cy"),
            (&["sovctl", "policy", "diff", "1", "2"], "cy"),
        ] {
            assert_eq!(pick(args), Some(name), "{args:?}");
        }
        // Without an operator, reads go to the auditor, then the deployer.
        let reviewer_and_dev = &held[..2];
        let cli = Cli::try_parse_from(["sovctl", "node", "list"]).unwrap();
        assert_eq!(
            choose(reviewer_and_dev, need(&cli.command)),
            Some(Choice::Fits("bo"))
        );
        let cli = Cli::try_parse_from(["sovctl", "node", "drain", "n"]).unwrap();
        assert_eq!(
            choose(reviewer_and_dev, need(&cli.command)),
            Some(Choice::Fallback("ana"))
        );
    }

    #[test]
    fn ca_issue_parses_its_flags() {
        let cli = Cli::try_parse_from([
            "sovctl",
            "ca",
            "issue",
            "--role",
            "agent",
            "--name",
            "gpu-fr-1",
            "--country",
            "FR",
            "--operator-hq",
            "FR",
            "--days",
            "30",
        ])
        .unwrap();
        let Command::Ca(CaCommand::Issue(a)) = cli.command else {
            panic!("parsed as {:?}", cli.command)
        };
        assert_eq!(
            (a.role.as_str(), a.name.as_str(), a.days, a.ca_dir, a.out),
            (
                "agent",
                "gpu-fr-1",
                30,
                PathBuf::from("./sov-ca"),
                PathBuf::from(".")
            )
        );
        let kind = |args: &[&str]| Cli::try_parse_from(args).unwrap_err().kind();
        use clap::error::ErrorKind;
        assert_eq!(
            kind(&["sovctl", "ca", "issue", "--role", "root", "--name", "x"]),
            ErrorKind::InvalidValue
        );
        assert_eq!(
            kind(&[
                "sovctl",
                "ca",
                "issue",
                "--role",
                "operator",
                "--name",
                "x",
                "--days",
                "1",
                "--not-after",
                "now"
            ]),
            ErrorKind::ArgumentConflict
        );
        assert_eq!(
            kind(&[
                "sovctl", "ca", "issue", "--role", "operator", "--name", "x", "--days", "0"
            ]),
            ErrorKind::ValueValidation
        );
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
    fn commands_answering_a_question_move_failures_off_0_and_1() {
        let codes = |args: &[&str]| ExitCodes::of(&Cli::try_parse_from(args).unwrap().command);
        let usage = anyhow::Error::from(UsageError("bad".into()));
        let refused = anyhow::anyhow!("not found: deployment \"x\" does not exist");

        let invalid = anyhow::Error::from(InvalidBundle {
            problems: vec!["a.cedar:1:1: x".into()],
        });

        let plan = codes(&["sovctl", "deploy", "plan", "-f", "x.toml"]);
        assert_eq!((plan.for_error(&usage), plan.for_error(&refused)), (2, 3));
        // CI tells a broken bundle (2) from a broken cluster (3).
        let policy_plan = codes(&["sovctl", "policy", "plan", "dir"]);
        assert_eq!(
            (
                policy_plan.for_error(&usage),
                policy_plan.for_error(&invalid),
                policy_plan.for_error(&refused)
            ),
            (2, 2, 3)
        );
        let diff = codes(&["sovctl", "policy", "diff", "1", "2"]);
        assert_eq!((diff.for_error(&usage), diff.for_error(&refused)), (2, 2));
        // Where a bundle is applied, its refusal is the cluster saying no, as it always was.
        let apply = codes(&["sovctl", "policy", "apply", "dir"]);
        assert_eq!(apply.for_error(&invalid), 1);
        for ordinary in [
            &["sovctl", "deploy", "list"][..],
            &["sovctl", "policy", "apply", "dir"],
            &["sovctl", "explain", "x"],
            &["sovctl", "node", "drain", "n"],
            // Evidence that does not verify is a failure (1); files it cannot read, bad input.
            &["sovctl", "audit", "verify", "e.jsonl", "--key", "k.pub"],
            &["sovctl", "history", "export", "-f", "e.jsonl"],
        ] {
            let c = codes(ordinary);
            assert_eq!(
                (c.for_error(&usage), c.for_error(&refused)),
                (2, 1),
                "{ordinary:?}"
            );
        }
    }

    #[test]
    fn errors_print_one_line_except_a_refused_bundle() {
        let err = anyhow::anyhow!("invalid argument: spec.name\n  must be a DNS label");
        assert_eq!(
            error_report(&err),
            "error: invalid argument: spec.name must be a DNS label\n"
        );
        let refused = anyhow::Error::from(InvalidBundle {
            problems: vec!["a.cedar:1:1: x".into(), "b.json:2:3: y".into()],
        });
        assert_eq!(
            error_report(&refused),
            "error: invalid policy bundle:\n  a.cedar:1:1: x\n  b.json:2:3: y\n"
        );
    }

    #[test]
    fn new_commands_parse_their_flags() {
        let cli = Cli::try_parse_from(["sovctl", "node", "drain", "gpu-fr-1", "--deadline", "10m"])
            .unwrap();
        let Command::Node(NodeCommand::Drain(a)) = cli.command else {
            panic!("parsed as {:?}", cli.command)
        };
        assert_eq!(a.deadline, Some(Duration::from_secs(600)));
        assert!(Cli::try_parse_from(["sovctl", "node", "drain", "n", "--deadline", "10"]).is_err());

        let cli =
            Cli::try_parse_from(["sovctl", "explain", "mistral-7b", "--node", "gpu-us-1"]).unwrap();
        let Command::Explain(a) = cli.command else {
            panic!("parsed as {:?}", cli.command)
        };
        assert_eq!(
            (a.deployment.as_str(), a.node.as_deref()),
            ("mistral-7b", Some("gpu-us-1"))
        );

        let cli = Cli::try_parse_from([
            "sovctl",
            "policy",
            "apply",
            "pol/",
            "--comment",
            "why",
            "--author",
            "ops-7",
        ])
        .unwrap();
        let Command::Policy(PolicyCommand::Apply(a)) = cli.command else {
            panic!("parsed as {:?}", cli.command)
        };
        assert_eq!(
            (a.path, a.comment.as_str(), a.author.as_deref()),
            (PathBuf::from("pol/"), "why", Some("ops-7"))
        );

        let cli =
            Cli::try_parse_from(["sovctl", "policy", "show", "--version", "3", "--files"]).unwrap();
        let Command::Policy(PolicyCommand::Show(a)) = cli.command else {
            panic!("parsed as {:?}", cli.command)
        };
        assert_eq!((a.version, a.files), (Some(3), true));
        assert!(Cli::try_parse_from(["sovctl", "policy", "diff", "0", "1"]).is_err());
    }

    #[test]
    fn watch_and_wait_flags_parse_with_their_defaults() {
        let show = |args: &[&str]| match Cli::try_parse_from(args).map(|c| c.command) {
            Ok(Command::Deploy(DeployCommand::Show(a))) => Ok((a.watch, a.watch_timeout)),
            other => Err(format!("{other:?}")),
        };
        assert_eq!(
            show(&["sovctl", "deploy", "show", "x"]),
            Ok((false, watch::TIMEOUT_DEFAULT))
        );
        assert_eq!(
            show(&["sovctl", "deploy", "show", "x", "--watch"]),
            Ok((true, watch::TIMEOUT_DEFAULT))
        );
        assert_eq!(
            show(&[
                "sovctl",
                "deploy",
                "show",
                "x",
                "--watch",
                "--watch-timeout",
                "2m"
            ]),
            Ok((true, Duration::from_secs(120)))
        );
        // A timeout without --watch is a mistake worth saying, and so are bad durations.
        for bad in [
            &["sovctl", "deploy", "show", "x", "--watch-timeout", "2m"][..],
            &[
                "sovctl",
                "deploy",
                "show",
                "x",
                "--watch",
                "--watch-timeout",
                "2",
            ],
            &[
                "sovctl",
                "deploy",
                "show",
                "x",
                "--watch",
                "--watch-timeout",
                "2d",
            ],
        ] {
            assert!(show(bad).is_err(), "{bad:?}");
        }

        let cli = Cli::try_parse_from(["sovctl", "node", "drain", "n", "--wait"]).unwrap();
        let Command::Node(NodeCommand::Drain(a)) = cli.command else {
            panic!("parsed as {:?}", cli.command)
        };
        assert_eq!(a.wait.timeout(), Some(watch::TIMEOUT_DEFAULT));
        let cli = Cli::try_parse_from([
            "sovctl",
            "policy",
            "apply",
            "d",
            "--wait",
            "--wait-timeout",
            "1h",
        ])
        .unwrap();
        let Command::Policy(PolicyCommand::Apply(a)) = cli.command else {
            panic!("parsed as {:?}", cli.command)
        };
        assert_eq!(a.wait.timeout(), Some(Duration::from_secs(3600)));
        assert!(
            Cli::try_parse_from(["sovctl", "node", "drain", "n", "--wait-timeout", "1h"]).is_err()
        );
    }

    #[test]
    fn drain_takes_a_deadline_or_force_but_not_both() {
        let cli = Cli::try_parse_from(["sovctl", "node", "drain", "n", "--force"]).unwrap();
        let Command::Node(NodeCommand::Drain(a)) = cli.command else {
            panic!("parsed as {:?}", cli.command)
        };
        assert_eq!((a.force, a.deadline, a.wait.timeout()), (true, None, None));
        let err = Cli::try_parse_from([
            "sovctl",
            "node",
            "drain",
            "n",
            "--force",
            "--deadline",
            "1h",
        ])
        .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn policy_apply_takes_a_plan_hash_or_yes_but_not_both() {
        let hash = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
        let apply = |args: &[&str]| match Cli::try_parse_from(args).map(|c| c.command) {
            Ok(Command::Policy(PolicyCommand::Apply(a))) => Ok((a.plan_hash, a.yes)),
            Ok(other) => panic!("parsed as {other:?}"),
            Err(e) => Err(e.kind()),
        };
        assert_eq!(
            apply(&["sovctl", "policy", "apply", "d"]),
            Ok((None, false))
        );
        assert_eq!(
            apply(&["sovctl", "policy", "apply", "d", "--plan-hash", hash]),
            Ok((Some(hash.to_owned()), false))
        );
        assert_eq!(
            apply(&["sovctl", "policy", "apply", "d", "--yes"]),
            Ok((None, true))
        );
        assert_eq!(
            apply(&[
                "sovctl",
                "policy",
                "apply",
                "d",
                "--yes",
                "--plan-hash",
                hash
            ]),
            Err(clap::error::ErrorKind::ArgumentConflict)
        );
        assert_eq!(
            apply(&[
                "sovctl",
                "policy",
                "apply",
                "d",
                "--plan-hash",
                "3f9a1c0b7d2e"
            ]),
            Err(clap::error::ErrorKind::ValueValidation)
        );
        let cli = Cli::try_parse_from(["sovctl", "policy", "plan", "deploy/policies"]).unwrap();
        let Command::Policy(PolicyCommand::Plan(a)) = cli.command else {
            panic!("parsed as {:?}", cli.command)
        };
        assert_eq!(a.path, PathBuf::from("deploy/policies"));
    }

    #[test]
    fn history_and_audit_commands_parse_their_flags() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).map(|c| c.command);
        let Ok(Command::History(HistoryCommand::Query(q))) = parse(&[
            "sovctl",
            "history",
            "query",
            "--deployment",
            "open-eu",
            "--as-of",
            "2026-06-12T18:00:00Z",
        ]) else {
            panic!("as-of did not parse")
        };
        assert_eq!(
            (q.deployment.as_deref(), q.as_of, q.limit),
            (Some("open-eu"), Some(1_781_287_200_000), 100)
        );
        let Ok(Command::History(HistoryCommand::Export(e))) = parse(&[
            "sovctl",
            "history",
            "export",
            "--previous",
            "may.jsonl",
            "-f",
            "june.jsonl",
            "--force",
        ]) else {
            panic!("export did not parse")
        };
        assert_eq!(
            (e.previous, e.file, e.force),
            (
                Some(PathBuf::from("may.jsonl")),
                Some(PathBuf::from("june.jsonl")),
                true
            )
        );
        let Ok(Command::Audit(AuditCommand::Verify(v))) = parse(&[
            "sovctl",
            "audit",
            "verify",
            "june.jsonl",
            "--key",
            "cluster.pub",
        ]) else {
            panic!("verify did not parse")
        };
        assert_eq!(
            (v.file, v.key, v.previous),
            (
                PathBuf::from("june.jsonl"),
                PathBuf::from("cluster.pub"),
                None
            )
        );

        let kind = |args: &[&str]| parse(args).map(|_| ()).unwrap_err().kind();
        use clap::error::ErrorKind;
        // A relative time reaches the time parser, which says how to write one.
        assert_eq!(
            kind(&["sovctl", "history", "query", "--since", "-1h"]),
            ErrorKind::ValueValidation
        );
        for limit in ["0", "100001"] {
            assert_eq!(
                kind(&["sovctl", "history", "query", "--limit", limit]),
                ErrorKind::ValueValidation
            );
        }
        assert_eq!(
            kind(&[
                "sovctl",
                "history",
                "query",
                "--kind",
                "allocation.teleported"
            ]),
            ErrorKind::InvalidValue
        );
        assert_eq!(
            kind(&["sovctl", "history", "query", "--as-of", "now"]),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            kind(&[
                "sovctl",
                "history",
                "query",
                "--deployment",
                "d",
                "--as-of",
                "now",
                "--limit",
                "5"
            ]),
            ErrorKind::ArgumentConflict
        );
        // --force says which file may be replaced, so it needs one.
        assert_eq!(
            kind(&["sovctl", "history", "export", "--force"]),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            kind(&["sovctl", "audit", "checkpoint", "--force"]),
            ErrorKind::MissingRequiredArgument
        );
    }

    #[test]
    fn a_time_range_must_run_forwards() {
        assert!(check_time_range(Some(1000), Some(2000)).is_ok());
        assert!(check_time_range(None, Some(2000)).is_ok());
        assert!(check_time_range(Some(2000), None).is_ok());
        assert!(check_time_range(Some(2000), Some(2000)).is_err());
        assert!(check_time_range(Some(2000), Some(1000)).is_err());
    }

    #[test]
    fn usage_errors_are_recognised_for_exit_code_2() {
        let err = anyhow::Error::from(UsageError("bad".into()));
        assert!(err.is::<UsageError>());
        assert!(!anyhow::anyhow!("server said no").is::<UsageError>());
    }
}
