//! Rendering of answers: aligned tables and key/value blocks for people, JSON for scripts.
//!
//! Owns every byte sovctl writes to stdout. The `*View` structs are the JSON shapes: they mirror
//! the sov.v1 messages field for field, in snake_case, so the proto file documents them (prost
//! types do not derive `Serialize`, hence the copies). Maps become sorted objects so that output is
//! stable between runs. Everything here is pure except `emit`, which writes.
//!
//! This file holds the shared pieces (tables, key/value blocks, times) and the cluster and
//! deployment shapes; `node`, `policy`, `plan` (deploy plan and explain) and `history` (history
//! and audit) hold theirs, and `watch` the live views of `--watch` and `--wait`. Renderers that
//! show a time relative to now take `now_ms` as an argument, so they stay pure.

pub mod history;
pub mod node;
pub mod plan;
pub mod policy;
pub mod watch;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;

use serde::Serialize;
use sov_proto::v1 as pb;

/// How answers are printed (`-o`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns and key/value blocks, for people.
    Table,
    /// One JSON document on stdout, for scripts.
    Json,
}

/// Prints `view` as one JSON document, or as the text `render` makes of it.
pub fn emit<T: Serialize>(
    format: Format,
    view: &T,
    render: impl FnOnce(&T) -> String,
) -> anyhow::Result<()> {
    write_stdout(&render_as(format, view, render)).map(|_| ())
}

/// Like `emit`, but JSON on one line: the first document of the JSON lines a watch goes on with.
pub fn emit_line<T: Serialize>(
    format: Format,
    view: &T,
    render: impl FnOnce(&T) -> String,
) -> anyhow::Result<()> {
    let text = match format {
        Format::Json => serde_json::to_string(view).expect("views serialize") + "\n",
        Format::Table => render(view),
    };
    write_stdout(&text).map(|_| ())
}

/// `view` as one JSON document, or as the text `render` makes of it: what `emit` prints.
pub fn render_as<T: Serialize>(
    format: Format,
    view: &T,
    render: impl FnOnce(&T) -> String,
) -> String {
    match format {
        // The views are plain structs and string-keyed maps, which always serialize.
        Format::Json => serde_json::to_string_pretty(view).expect("views serialize") + "\n",
        Format::Table => render(view),
    }
}

/// Writes `text` to stdout at once; false when the reader went away (`sovctl deploy list |
/// head`): what it wanted, it got, so that is no error.
pub fn write_stdout(text: &str) -> anyhow::Result<bool> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        other => other.map(|()| true).map_err(anyhow::Error::from),
    }
}

// ------------------------------------------------------------------------------------------------
// JSON shapes (mirrors of sov.v1 messages)
// ------------------------------------------------------------------------------------------------

/// `sov.v1.Member`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemberView {
    pub id: u64,
    pub raft_addr: String,
    pub api_addr: String,
    pub voter: bool,
    /// `null` unless the answering node is the leader.
    pub matched_index: Option<u64>,
}

impl From<pb::Member> for MemberView {
    fn from(m: pb::Member) -> Self {
        MemberView {
            id: m.id,
            raft_addr: m.raft_addr,
            api_addr: m.api_addr,
            voter: m.voter,
            matched_index: m.matched_index,
        }
    }
}

/// `sov.v1.ClusterStatus`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterStatusView {
    pub cluster_id: String,
    pub node_id: u64,
    pub role: String,
    pub term: u64,
    pub leader_id: u64,
    pub leader_api_addr: String,
    pub last_log_index: u64,
    pub committed_index: u64,
    pub applied_index: u64,
    pub snapshot_index: u64,
    pub purged_index: u64,
    pub members: Vec<MemberView>,
    /// SHA-256 of the replicated state on the answering node, and that state's revision.
    pub state_sha256: String,
    pub state_revision: u64,
    /// Events in the placement history at that revision, and their Merkle root (hex).
    pub history_size: u64,
    pub history_root: String,
}

impl From<pb::ClusterStatus> for ClusterStatusView {
    fn from(s: pb::ClusterStatus) -> Self {
        ClusterStatusView {
            cluster_id: s.cluster_id,
            node_id: s.node_id,
            role: s.role,
            term: s.term,
            leader_id: s.leader_id,
            leader_api_addr: s.leader_api_addr,
            last_log_index: s.last_log_index,
            committed_index: s.committed_index,
            applied_index: s.applied_index,
            snapshot_index: s.snapshot_index,
            purged_index: s.purged_index,
            members: s.members.into_iter().map(MemberView::from).collect(),
            state_sha256: s.state_sha256,
            state_revision: s.state_revision,
            history_size: s.history_size,
            history_root: s.history_root,
        }
    }
}

/// `sov.v1.MembersResponse` (answer of `members`, `join` and `remove`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MembersView {
    pub members: Vec<MemberView>,
    pub leader_id: u64,
}

impl From<pb::MembersResponse> for MembersView {
    fn from(r: pb::MembersResponse) -> Self {
        MembersView {
            members: r.members.into_iter().map(MemberView::from).collect(),
            leader_id: r.leader_id,
        }
    }
}

/// `sov.v1.Resources`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ResourcesView {
    pub gpu_count: u32,
    pub gpu_model: String,
    pub gpu_memory_mib: u64,
    pub cpu_millis: u32,
    pub memory_mib: u64,
}

/// `sov.v1.ExportAttributes`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ExportView {
    pub eccn: String,
    pub weights_published: bool,
    pub training_compute_log10: u32,
    pub lineage: Vec<String>,
}

/// `sov.v1.Residency`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ResidencyView {
    pub allowed: Vec<String>,
    pub min_location_trust: u32,
    pub required_certifications: Vec<String>,
}

/// `sov.v1.HealthCheck`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HealthView {
    pub http_path: String,
    pub tcp: bool,
    pub interval_ms: u32,
    pub timeout_ms: u32,
}

/// `sov.v1.DeploymentSpec`. Absent `resources`, `export` and `residency` messages are shown as
/// all zeros and empty lists, which is what the scheduler reads them as.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpecView {
    pub name: String,
    pub model: String,
    pub replicas: u32,
    pub resources: ResourcesView,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub export: ExportView,
    pub residency: ResidencyView,
    pub health: HealthView,
    pub stop_after_disconnect_ms: u64,
    pub placement: PlacementView,
    /// Empty: the allocation's own directory on the node.
    pub working_dir: String,
    pub migration: MigrationView,
}

/// `sov.v1.Migration`. An absent message is shown as `max_parallel` 0 and `deadline_ms` null,
/// which is what the scheduler reads it as: the defaults (1 at a time, 10 minutes).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MigrationView {
    pub max_parallel: u32,
    pub deadline_ms: Option<u64>,
}

/// What the scheduler uses when `Migration.max_parallel` is 0 or `deadline_ms` is absent.
const MIGRATION_MAX_PARALLEL_DEFAULT: u32 = 1;
const MIGRATION_DEADLINE_MS_DEFAULT: u64 = 600_000;

/// `sov.v1.PlacementPreferences`; an empty `spread` is the default, "node".
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PlacementView {
    pub spread: String,
    pub prefer_countries: Vec<String>,
    pub prefer_sites: Vec<String>,
}

impl From<pb::DeploymentSpec> for SpecView {
    fn from(s: pb::DeploymentSpec) -> Self {
        let r = s.resources.unwrap_or_default();
        let x = s.export.unwrap_or_default();
        let res = s.residency.unwrap_or_default();
        let h = s.health.unwrap_or_default();
        let p = s.placement.unwrap_or_default();
        let m = s.migration.unwrap_or_default();
        SpecView {
            name: s.name,
            model: s.model,
            replicas: s.replicas,
            resources: ResourcesView {
                gpu_count: r.gpu_count,
                gpu_model: r.gpu_model,
                gpu_memory_mib: r.gpu_memory_mib,
                cpu_millis: r.cpu_millis,
                memory_mib: r.memory_mib,
            },
            command: s.command,
            env: sorted(s.env),
            labels: sorted(s.labels),
            export: ExportView {
                eccn: x.eccn,
                weights_published: x.weights_published,
                training_compute_log10: x.training_compute_log10,
                lineage: x.lineage,
            },
            residency: ResidencyView {
                allowed: res.allowed,
                min_location_trust: res.min_location_trust,
                required_certifications: res.required_certifications,
            },
            health: HealthView {
                http_path: h.http_path,
                tcp: h.tcp,
                interval_ms: h.interval_ms,
                timeout_ms: h.timeout_ms,
            },
            stop_after_disconnect_ms: s.stop_after_disconnect_ms,
            placement: PlacementView {
                spread: if p.spread.is_empty() {
                    "node".into()
                } else {
                    p.spread
                },
                prefer_countries: p.prefer_countries,
                prefer_sites: p.prefer_sites,
            },
            working_dir: s.working_dir,
            migration: MigrationView {
                max_parallel: m.max_parallel,
                deadline_ms: m.deadline_ms,
            },
        }
    }
}

/// `5s`, `1m30s`, `250ms`: how durations are written in specs.
pub fn duration_text(ms: u64) -> String {
    if !ms.is_multiple_of(1_000) {
        return format!("{ms}ms");
    }
    let (h, m, s) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1_000 % 60);
    let mut out = String::new();
    for (value, unit) in [(h, "h"), (m, "m"), (s, "s")] {
        if value > 0 {
            out.push_str(&format!("{value}{unit}"));
        }
    }
    if out.is_empty() { "0s".into() } else { out }
}

/// The health check and disconnect rule, as `deploy show` lists them.
fn liveness_fields(s: &SpecView) -> Vec<(&'static str, String)> {
    let h = &s.health;
    let every = format!(
        "every {} (timeout {})",
        duration_text(u64::from(h.interval_ms)),
        duration_text(u64::from(h.timeout_ms))
    );
    let health = if !h.http_path.is_empty() {
        format!("HTTP GET {} {every}", h.http_path)
    } else if h.tcp {
        format!("TCP connect {every}")
    } else {
        "none (running counts as healthy)".into()
    };
    let disconnect = match s.stop_after_disconnect_ms {
        0 => "never (replicas keep running while cut off from the schedulers)".into(),
        ms => format!(
            "stop replicas after {} cut off from every scheduler",
            duration_text(ms)
        ),
    };
    let p = &s.placement;
    let mut prefer: Vec<String> = p.prefer_countries.clone();
    prefer.extend(p.prefer_sites.iter().map(|site| format!("site {site}")));
    let placement = match prefer.is_empty() {
        true => format!("spread over {}s", p.spread),
        false => format!("spread over {}s, prefer {}", p.spread, prefer.join(", ")),
    };
    let placement = if p.spread == "none" {
        placement.replace("spread over nones", "packed")
    } else {
        placement
    };
    vec![
        ("Health check", health),
        ("Disconnected", disconnect),
        ("Placement", placement),
        ("Migration", migration_text(&s.migration)),
    ]
}

/// `at most 1 replacement at a time, old replica stopped 10m after it must move`, with the
/// scheduler's defaults filled in.
fn migration_text(m: &MigrationView) -> String {
    let parallel = match m.max_parallel {
        0 => MIGRATION_MAX_PARALLEL_DEFAULT,
        n => n,
    };
    let replacements = if parallel == 1 {
        "replacement"
    } else {
        "replacements"
    };
    let stopped = match m.deadline_ms.unwrap_or(MIGRATION_DEADLINE_MS_DEFAULT) {
        0 => "old replica stopped at once when it must move, then replaced".to_owned(),
        ms => format!(
            "old replica stopped {} after it must move",
            duration_text(ms)
        ),
    };
    format!("at most {parallel} {replacements} at a time, {stopped}")
}

fn sorted(map: HashMap<String, String>) -> BTreeMap<String, String> {
    map.into_iter().collect()
}

/// `sov.v1.Replica`: where the scheduler placed it and what its node's agent last reported.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplicaView {
    pub id: String,
    pub node: String,
    pub gpu_uuids: Vec<String>,
    pub port: u32,
    pub desired: String,
    pub policy_version: u64,
    pub created_at_ms: i64,
    pub status: String,
    /// `null` while the process never exited.
    pub exit_code: Option<i32>,
    pub status_reason: String,
    pub restarts: u32,
    pub status_at_ms: i64,
    /// "compliant", "violating" or "migrating"; empty from a scheduler that predates them.
    pub standing: String,
    pub rules: Vec<String>,
    pub drain: bool,
    pub deadline_ms: i64,
    pub replacement: String,
    pub replaces: String,
    pub standing_since_ms: i64,
    pub stop_reason: String,
    pub standing_policy_version: u64,
}

/// `Replica.desired` of a replica the scheduler wants running.
const DESIRED_RUN: &str = "run";
/// `Replica.standing` values that get more than their name in a table.
const STANDING_COMPLIANT: &str = "compliant";
const STANDING_VIOLATING: &str = "violating";
const STANDING_MIGRATING: &str = "migrating";
/// `Replica.status` values sovctl treats specially; the others are shown as they come.
const STATUS_RUNNING: &str = "running";
const STATUS_FAILED: &str = "failed";
const STATUS_STOPPED: &str = "stopped";

impl ReplicaView {
    /// The scheduler wants it running (placed, not being stopped).
    pub fn wants_run(&self) -> bool {
        self.desired == DESIRED_RUN
    }

    /// Wanted and reported running by its agent, which has health-checked it.
    pub fn is_running(&self) -> bool {
        self.wants_run() && self.status == STATUS_RUNNING
    }

    /// The process is down (restarting with backoff, or stopped): its exit code and reason say
    /// why, and are only shown then, as they describe the last exit.
    fn is_down(&self) -> bool {
        self.status == STATUS_FAILED || self.status == STATUS_STOPPED
    }

    /// Marked migrating: it must leave its node by `deadline_ms`.
    pub fn is_migrating(&self) -> bool {
        self.standing == STANDING_MIGRATING
    }
}

impl From<pb::Replica> for ReplicaView {
    fn from(r: pb::Replica) -> Self {
        ReplicaView {
            id: r.id,
            node: r.node,
            gpu_uuids: r.gpu_uuids,
            port: r.port,
            desired: r.desired,
            policy_version: r.policy_version,
            created_at_ms: r.created_at_ms,
            status: r.status,
            exit_code: r.exit_code,
            status_reason: r.status_reason,
            restarts: r.restarts,
            status_at_ms: r.status_at_ms,
            standing: r.standing,
            rules: r.rules,
            drain: r.drain,
            deadline_ms: r.deadline_ms,
            replacement: r.replacement,
            replaces: r.replaces,
            standing_since_ms: r.standing_since_ms,
            stop_reason: r.stop_reason,
            standing_policy_version: r.standing_policy_version,
        }
    }
}

/// `sov.v1.DeploymentCompliance`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ComplianceView {
    pub state: String,
    pub summary: String,
    pub replicas_wanted: u32,
    pub replicas_running: u32,
    pub moves_started: u32,
    pub moves_finished: u32,
    pub violated_rules: Vec<String>,
    pub explanation: String,
    pub converged: bool,
    pub next_deadline_ms: i64,
}

impl From<pb::DeploymentCompliance> for ComplianceView {
    fn from(c: pb::DeploymentCompliance) -> Self {
        ComplianceView {
            state: c.state,
            summary: c.summary,
            replicas_wanted: c.replicas_wanted,
            replicas_running: c.replicas_running,
            moves_started: c.moves_started,
            moves_finished: c.moves_finished,
            violated_rules: c.violated_rules,
            explanation: c.explanation,
            converged: c.converged,
            next_deadline_ms: c.next_deadline_ms,
        }
    }
}

impl ComplianceView {
    /// The summary, or the state when a scheduler sent none.
    pub fn summary_text(&self) -> String {
        if self.summary.is_empty() {
            dash_if_empty(&self.state)
        } else {
            self.summary.clone()
        }
    }
}

/// `sov.v1.Deployment`. `spec` is `null` only if a server sends a deployment without one;
/// `compliance` when it predates compliance reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeploymentView {
    pub spec: Option<SpecView>,
    pub generation: u64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub revision: u64,
    pub replicas: Vec<ReplicaView>,
    pub compliance: Option<ComplianceView>,
}

impl DeploymentView {
    /// The deployment's name, or `-` when the spec is missing.
    pub fn name(&self) -> &str {
        self.spec.as_ref().map_or("-", |s| s.name.as_str())
    }

    /// Replicas the scheduler wants running and their agents report running (healthy).
    pub fn running(&self) -> usize {
        self.replicas.iter().filter(|r| r.is_running()).count()
    }

    /// Replicas placed to run, whatever their agents report: more than `running` while
    /// servers start, fail or have not been reported yet.
    pub fn placed(&self) -> usize {
        self.replicas.iter().filter(|r| r.wants_run()).count()
    }

    /// `running/wanted`, and how many are placed when that differs, so that a replica placed
    /// but not (yet) healthy is not mistaken for a missing one.
    fn running_text(&self, wanted: u32) -> String {
        let (running, placed) = (self.running(), self.placed());
        if placed == running {
            format!("{running}/{wanted}")
        } else {
            format!("{running}/{wanted} ({placed} placed)")
        }
    }
}

impl From<pb::Deployment> for DeploymentView {
    fn from(d: pb::Deployment) -> Self {
        DeploymentView {
            spec: d.spec.map(SpecView::from),
            generation: d.generation,
            created_at_ms: d.created_at_ms,
            updated_at_ms: d.updated_at_ms,
            revision: d.revision,
            replicas: d.replicas.into_iter().map(ReplicaView::from).collect(),
            compliance: d.compliance.map(ComplianceView::from),
        }
    }
}

/// `sov.v1.ApplyDeploymentResponse`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApplyView {
    pub deployment: Option<DeploymentView>,
    pub created: bool,
    pub changed: bool,
}

impl From<pb::ApplyDeploymentResponse> for ApplyView {
    fn from(r: pb::ApplyDeploymentResponse) -> Self {
        ApplyView {
            deployment: r.deployment.map(DeploymentView::from),
            created: r.created,
            changed: r.changed,
        }
    }
}

/// `sov.v1.ListDeploymentsResponse`, with every page sovctl fetched merged into one:
/// `next_after` is empty unless `--limit` cut the listing short, and `revision` is the one of
/// the last page.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ListView {
    pub deployments: Vec<DeploymentView>,
    pub next_after: String,
    pub revision: u64,
}

/// `sov.v1.DeleteDeploymentResponse`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeleteView {
    pub revision: u64,
}

// ------------------------------------------------------------------------------------------------
// Text renderers
// ------------------------------------------------------------------------------------------------

/// A table whose columns are as wide as their widest cell, separated by three spaces.
#[derive(Debug)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        Table {
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        assert_eq!(
            cells.len(),
            self.headers.len(),
            "row width must match the headers"
        );
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for line in std::iter::once(&self.headers).chain(&self.rows) {
            let mut text = String::new();
            for (i, (cell, width)) in line.iter().zip(&widths).enumerate() {
                if i > 0 {
                    text.push_str("   ");
                }
                text.push_str(cell);
                let pad = width - cell.chars().count();
                text.extend(std::iter::repeat_n(' ', pad));
            }
            // Padding after the last column is invisible and breaks `grep 'x$'`.
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `Key:   value` lines with the values aligned; a multi-line value continues under itself.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0)
        + 1;
    let mut out = String::new();
    for (key, value) in pairs {
        let mut lines = value.lines();
        let first = lines.next().unwrap_or("");
        out.push_str(format!("{:<width$}  {first}", format!("{key}:")).trim_end());
        out.push('\n');
        for line in lines {
            out.push_str(&format!("{:width$}  {line}\n", ""));
        }
    }
    out
}

/// `cluster status`: the answering node's view, then the member table.
pub fn status_text(s: &ClusterStatusView) -> String {
    let leader = if s.leader_id == 0 {
        "none known".to_owned()
    } else {
        format!("{} at {}", s.leader_id, dash_if_empty(&s.leader_api_addr))
    };
    let block = fields(&[
        ("Cluster ID", dash_if_empty(&s.cluster_id)),
        (
            "Node",
            format!("{} ({})", s.node_id, dash_if_empty(&s.role)),
        ),
        ("Term", s.term.to_string()),
        ("Leader", leader),
        ("Last log index", s.last_log_index.to_string()),
        ("Committed index", s.committed_index.to_string()),
        ("Applied index", s.applied_index.to_string()),
        ("Snapshot index", s.snapshot_index.to_string()),
        ("Purged index", s.purged_index.to_string()),
        (
            "State",
            format!(
                "revision {}, sha256 {}",
                s.state_revision,
                dash_if_empty(&s.state_sha256)
            ),
        ),
        (
            "History",
            format!(
                "{} events, root {}",
                s.history_size,
                dash_if_empty(&s.history_root)
            ),
        ),
    ]);
    format!("{block}\n{}", members_table(&s.members, s.leader_id))
}

/// Members sorted by id; the leader's id carries a `*`.
pub fn members_table(members: &[MemberView], leader_id: u64) -> String {
    let mut sorted: Vec<&MemberView> = members.iter().collect();
    sorted.sort_by_key(|m| m.id);
    let mut table = Table::new(&["ID", "RAFT ADDR", "API ADDR", "MEMBERSHIP", "MATCHED"]);
    for m in sorted {
        let id = if m.id == leader_id {
            format!("{} *", m.id)
        } else {
            m.id.to_string()
        };
        table.row(vec![
            id,
            dash_if_empty(&m.raft_addr),
            dash_if_empty(&m.api_addr),
            if m.voter { "voter" } else { "learner" }.to_owned(),
            m.matched_index
                .map_or_else(|| "-".to_owned(), |i| i.to_string()),
        ]);
    }
    table.render()
}

/// `deploy list`. RUNNING is replicas reported running / replicas wanted; `deploy show` also
/// says how many are placed. COMPLIANCE is the scheduler's summary, e.g. `migrating (1/3)`.
pub fn deployments_table(deployments: &[DeploymentView]) -> String {
    let mut table = Table::new(&[
        "NAME",
        "MODEL",
        "REPLICAS",
        "RUNNING",
        "COMPLIANCE",
        "GPUS/REPLICA",
        "GENERATION",
        "UPDATED",
    ]);
    for d in deployments {
        let (model, replicas, running, gpus) = match &d.spec {
            Some(s) => (
                s.model.clone(),
                s.replicas.to_string(),
                format!("{}/{}", d.running(), s.replicas),
                s.resources.gpu_count.to_string(),
            ),
            None => (
                "-".to_owned(),
                "-".to_owned(),
                format!("{}/-", d.running()),
                "-".to_owned(),
            ),
        };
        table.row(vec![
            d.name().to_owned(),
            model,
            replicas,
            running,
            d.compliance
                .as_ref()
                .map_or_else(|| "-".to_owned(), ComplianceView::summary_text),
            gpus,
            d.generation.to_string(),
            time_cell(d.updated_at_ms),
        ]);
    }
    table.render()
}

/// `deploy show`; `now_ms` dates the deadlines ("in 4m12s").
pub fn deployment_text(d: &DeploymentView, now_ms: i64) -> String {
    let mut pairs = vec![("Name", d.name().to_owned())];
    if let Some(s) = &d.spec {
        let r = &s.resources;
        pairs.extend([
            ("Model", dash_if_empty(&s.model)),
            ("Replicas", s.replicas.to_string()),
            ("Running", d.running_text(s.replicas)),
        ]);
        if let Some(c) = &d.compliance {
            pairs.push(("Compliance", compliance_text(c, now_ms)));
        }
        pairs.extend([
            ("GPUs/replica", r.gpu_count.to_string()),
            (
                "GPU model",
                if_set(!r.gpu_model.is_empty(), &r.gpu_model, "any"),
            ),
            (
                "GPU memory",
                if_set(
                    r.gpu_memory_mib > 0,
                    &format!("{} MiB minimum per GPU", r.gpu_memory_mib),
                    "any",
                ),
            ),
            (
                "CPU",
                if_set(r.cpu_millis > 0, &format!("{}m", r.cpu_millis), "-"),
            ),
            (
                "Memory",
                if_set(r.memory_mib > 0, &format!("{} MiB", r.memory_mib), "-"),
            ),
            (
                "Command",
                if_set(!s.command.is_empty(), &shell_join(&s.command), "-"),
            ),
        ]);
        // Most specs run in the allocation's own directory; only a chosen one is worth a line.
        if !s.working_dir.is_empty() {
            pairs.push(("Working dir", s.working_dir.clone()));
        }
        pairs.extend([
            ("Env", key_values(&s.env)),
            ("Labels", key_values(&s.labels)),
        ]);
        pairs.extend(export_fields(&s.export));
        pairs.extend(residency_fields(&s.residency));
        pairs.extend(liveness_fields(s));
    }
    pairs.extend([
        ("Generation", d.generation.to_string()),
        ("Revision", d.revision.to_string()),
        ("Created", time_cell(d.created_at_ms)),
        ("Updated", time_cell(d.updated_at_ms)),
    ]);
    let mut out = fields(&pairs);
    if d.replicas.is_empty() {
        out.push_str("\nNo replicas placed.\n");
    } else {
        out.push('\n');
        out.push_str(&replicas_table(&d.replicas, now_ms));
        out.push_str(&replica_notes(&d.replicas));
    }
    out
}

/// The `Compliance` field of `deploy show`: the summary, then why replicas are missing (when
/// that is the trouble), audit rules violated and the next deadline, a line each.
pub fn compliance_text(c: &ComplianceView, now_ms: i64) -> String {
    let mut lines = vec![c.summary_text()];
    if matches!(c.state.as_str(), "unplaceable" | "degraded") && !c.explanation.is_empty() {
        lines.push(format!("why: {}", c.explanation));
    }
    // A violating summary names its rules already.
    if c.state != "violating" && !c.violated_rules.is_empty() {
        lines.push(format!(
            "audit rules violated: {}",
            c.violated_rules.join(", ")
        ));
    }
    if c.next_deadline_ms > 0 {
        lines.push(format!(
            "next deadline {}",
            deadline_text(c.next_deadline_ms, now_ms)
        ));
    }
    lines.join("\n")
}

/// The export attributes, as `deploy show` lists them.
fn export_fields(x: &ExportView) -> Vec<(&'static str, String)> {
    vec![
        (
            "ECCN",
            // The proto's "empty means EAR99"; a scheduler may also store it spelt out.
            if_set(
                !x.eccn.is_empty() && !x.eccn.eq_ignore_ascii_case("EAR99"),
                &x.eccn,
                "EAR99 (not controlled)",
            ),
        ),
        (
            "Weights published",
            if_set(x.weights_published, "yes", "no"),
        ),
        (
            "Training compute",
            if_set(
                x.training_compute_log10 > 0,
                &format!("1e{} FLOP", x.training_compute_log10),
                "unknown",
            ),
        ),
        (
            "Lineage",
            if_set(!x.lineage.is_empty(), &x.lineage.join(", "), "-"),
        ),
    ]
}

/// The deployment's own residency requirement, as `deploy show` lists it.
fn residency_fields(r: &ResidencyView) -> Vec<(&'static str, String)> {
    vec![
        (
            "Residency",
            if_set(
                !r.allowed.is_empty(),
                &r.allowed.join(", "),
                "anywhere the policy allows",
            ),
        ),
        ("Min location trust", trust_level(r.min_location_trust)),
        (
            "Certifications",
            if_set(
                !r.required_certifications.is_empty(),
                &r.required_certifications.join(", "),
                "-",
            ),
        ),
    ]
}

/// `Residency.min_location_trust` in words.
fn trust_level(level: u32) -> String {
    match level {
        0 => "any".to_owned(),
        1 => "1 (self-reported)".to_owned(),
        2 => "2 (operator-certificate)".to_owned(),
        3 => "3 (hardware-attested)".to_owned(),
        other => format!("{other} (unknown level)"),
    }
}

/// The replicas of `deploy show`, sorted by id. STANDING comes last: a migrating replica's
/// cell is the longest, and the columns people scan first stay put.
pub fn replicas_table(replicas: &[ReplicaView], now_ms: i64) -> String {
    let mut table = Table::new(&[
        "ID",
        "NODE",
        "GPUS",
        "PORT",
        "DESIRED",
        "STATUS",
        "RESTARTS",
        "POLICY VERSION",
        "STANDING",
    ]);
    for r in by_id(replicas) {
        table.row(vec![
            dash_if_empty(&r.id),
            dash_if_empty(&r.node),
            gpus_cell(&r.gpu_uuids),
            port_cell(r.port),
            dash_if_empty(&r.desired),
            replica_status_cell(r),
            r.restarts.to_string(),
            r.policy_version.to_string(),
            standing_cell(r, now_ms),
        ]);
    }
    table.render()
}

/// How a replica stands with the rules: `compliant`, `violating: rule-a`, `migrating →
/// open-eu-7 (or placing), by 12:34:56Z`, and `replaces open-eu-2` for a replacement.
pub fn standing_cell(r: &ReplicaView, now_ms: i64) -> String {
    let mut parts = Vec::new();
    match r.standing.as_str() {
        STANDING_VIOLATING if !r.rules.is_empty() => {
            parts.push(format!("{STANDING_VIOLATING}: {}", r.rules.join(", ")));
        }
        STANDING_MIGRATING => {
            let to = if r.replacement.is_empty() {
                "placing"
            } else {
                r.replacement.as_str()
            };
            parts.push(format!(
                "{STANDING_MIGRATING} → {to}, by {}",
                clock_cell(r.deadline_ms, now_ms)
            ));
        }
        // A replacement is compliant by construction; what it replaces says more.
        STANDING_COMPLIANT if !r.replaces.is_empty() => {}
        other => parts.push(dash_if_empty(other)),
    }
    if !r.replaces.is_empty() {
        parts.push(format!("replaces {}", r.replaces));
    }
    parts.join("; ")
}

/// Replicas sorted by id, the order every replica table uses.
fn by_id<'a>(replicas: impl IntoIterator<Item = &'a ReplicaView>) -> Vec<&'a ReplicaView> {
    let mut sorted: Vec<&ReplicaView> = replicas.into_iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    sorted
}

/// The agent's last report: `running`, or `failed (exit 137)` when a down process has an exit
/// code. An empty status (a scheduler older than status reports) is `-`.
pub(crate) fn replica_status_cell(r: &ReplicaView) -> String {
    match r.exit_code {
        Some(code) if r.is_down() => format!("{} (exit {code})", dash_if_empty(&r.status)),
        _ => dash_if_empty(&r.status),
    }
}

/// Why replicas are down, one `  ID: reason` line each in id order, then why replicas were
/// told to stop, `  ID: told to stop: reason`; after a blank line, or empty when there is
/// nothing to say. A table cell would be too narrow for these reasons, and they are what people
/// need to fix a failing server or to see which rule stopped a replica.
pub(crate) fn replica_notes<'a>(replicas: impl IntoIterator<Item = &'a ReplicaView>) -> String {
    let sorted = by_id(replicas);
    let down = sorted
        .iter()
        .filter(|r| r.is_down() && !r.status_reason.is_empty())
        .map(|r| format!("  {}: {}\n", dash_if_empty(&r.id), r.status_reason));
    let stopped = sorted
        .iter()
        .filter(|r| !r.wants_run() && !r.stop_reason.is_empty())
        .map(|r| {
            format!(
                "  {}: told to stop: {}\n",
                dash_if_empty(&r.id),
                r.stop_reason
            )
        });
    let lines: String = down.chain(stopped).collect();
    if lines.is_empty() {
        lines
    } else {
        format!("\n{lines}")
    }
}

/// GPUs assigned to a replica: their count, then their UUIDs, NVML ones cut to the first group
/// (`GPU-8f2c1e0a…`), which is unique in practice and keeps the table readable; JSON has them in
/// full, `node show` too.
pub fn gpus_cell(uuids: &[String]) -> String {
    if uuids.is_empty() {
        return "-".to_owned();
    }
    let short: Vec<String> = uuids.iter().map(|u| short_gpu_uuid(u)).collect();
    format!("{} ({})", uuids.len(), short.join(", "))
}

fn short_gpu_uuid(uuid: &str) -> String {
    // NVML: `GPU-` and a UUID, 8-4-4-4-12 hex digits.
    match uuid.strip_prefix("GPU-") {
        Some(rest)
            if rest.len() == 36 && rest.chars().all(|c| c.is_ascii_hexdigit() || c == '-') =>
        {
            format!("GPU-{}…", &rest[..8])
        }
        _ => uuid.to_owned(),
    }
}

/// A replica's port; 0 is proto3's "not set".
pub fn port_cell(port: u32) -> String {
    if port == 0 {
        "-".to_owned()
    } else {
        port.to_string()
    }
}

/// `deploy apply`: `deployment NAME created|updated|unchanged (generation G, revision R)`.
pub fn apply_line(a: &ApplyView) -> String {
    let outcome = match (a.created, a.changed) {
        (true, _) => "created",
        (false, true) => "updated",
        (false, false) => "unchanged",
    };
    match &a.deployment {
        Some(d) => format!(
            "deployment {} {outcome} (generation {}, revision {})\n",
            d.name(),
            d.generation,
            d.revision
        ),
        None => format!("deployment {outcome}\n"),
    }
}

fn if_set(set: bool, value: &str, otherwise: &str) -> String {
    if set { value } else { otherwise }.to_owned()
}

fn dash_if_empty(s: &str) -> String {
    if_set(!s.is_empty(), s, "-")
}

fn key_values(map: &BTreeMap<String, String>) -> String {
    if map.is_empty() {
        return "-".to_owned();
    }
    map.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Joins a command line for display, quoting the arguments a shell would split or expand, so
/// what is shown can be pasted into a shell and mean the same command.
pub fn shell_join(args: &[String]) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    args.iter()
        .map(|a| {
            if !a.is_empty() && a.chars().all(plain) {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A deadline or other time near `now_ms`: `12:34:56Z` within a day of now, where the date
/// goes without saying, else in full; `-` for 0 (not set).
pub fn clock_cell(ms: i64, now_ms: i64) -> String {
    const DAY_MS: i64 = 86_400_000;
    if ms == 0 {
        "-".to_owned()
    } else if (ms - now_ms).abs() < DAY_MS {
        rfc3339_utc(ms)[11..].to_owned()
    } else {
        rfc3339_utc(ms)
    }
}

/// `in 4m12s`, `3s ago` or `now`, to the second.
pub fn relative_text(ms: i64, now_ms: i64) -> String {
    let secs = (ms - now_ms) as f64 / 1000.0;
    let whole = secs.abs().round() as u64;
    match whole {
        0 => "now".to_owned(),
        _ if secs > 0.0 => format!("in {}", duration_text(whole * 1000)),
        _ => format!("{} ago", duration_text(whole * 1000)),
    }
}

/// `2026-12-01T10:10:00Z (in 4m12s)`.
pub fn deadline_text(ms: i64, now_ms: i64) -> String {
    format!("{} ({})", rfc3339_utc(ms), relative_text(ms, now_ms))
}

/// Milliseconds since the Unix epoch on this machine's clock, for the renderers' `now_ms`.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A leader-stamped time for a table cell; 0 is proto3's "not set".
pub fn time_cell(ms: i64) -> String {
    if ms == 0 {
        "-".to_owned()
    } else {
        rfc3339_utc(ms)
    }
}

/// RFC 3339 UTC with second precision, e.g. `2023-11-14T22:13:20Z`.
pub fn rfc3339_utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm), so
/// that printing a date does not need a calendar crate.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The renderers' "now": 2023-11-14T22:15:00Z, a little after the fixtures' times.
    const NOW: i64 = 1_700_000_100_000;

    fn member(id: u64, voter: bool, matched: Option<u64>) -> MemberView {
        MemberView {
            id,
            raft_addr: format!("10.0.0.{id}:7401"),
            api_addr: format!("10.0.0.{id}:7400"),
            voter,
            matched_index: matched,
        }
    }

    fn deployment() -> DeploymentView {
        DeploymentView::from(pb::Deployment {
            spec: Some(pb::DeploymentSpec {
                name: "mistral-7b".into(),
                model: "mistralai/Mistral-7B-Instruct-v0.3".into(),
                replicas: 2,
                resources: Some(pb::Resources {
                    gpu_count: 1,
                    gpu_memory_mib: 40000,
                    ..Default::default()
                }),
                command: vec!["python3".into(), "-m".into(), "http.server".into()],
                env: HashMap::from([("B".into(), "2".into()), ("A".into(), "1".into())]),
                labels: HashMap::new(),
                export: Some(pb::ExportAttributes {
                    eccn: String::new(),
                    weights_published: true,
                    training_compute_log10: 0,
                    lineage: vec![],
                }),
                residency: Some(pb::Residency {
                    allowed: vec!["EU27".into(), "CH".into()],
                    min_location_trust: 2,
                    required_certifications: vec![],
                }),
                health: Some(pb::HealthCheck {
                    http_path: "/health".into(),
                    tcp: false,
                    interval_ms: 10_000,
                    timeout_ms: 2_000,
                }),
                stop_after_disconnect_ms: 90_000,
                placement: None,
                working_dir: String::new(),
                migration: None,
            }),
            generation: 3,
            created_at_ms: 1_700_000_000_000,
            updated_at_ms: 1_700_000_060_500,
            revision: 42,
            replicas: vec![
                replica("mistral-7b-2", "gpu-fr-2", "stop", "stopped"),
                replica("mistral-7b-1", "gpu-fr-1", "run", "running"),
            ],
            compliance: Some(pb::DeploymentCompliance {
                state: "degraded".into(),
                summary: "degraded (1/2 running)".into(),
                replicas_wanted: 2,
                replicas_running: 1,
                explanation: "0/3 nodes eligible: 3 forbidden by policy eu-only".into(),
                ..Default::default()
            }),
        })
    }

    fn replica(id: &str, node: &str, desired: &str, status: &str) -> pb::Replica {
        pb::Replica {
            id: id.into(),
            node: node.into(),
            gpu_uuids: vec!["GPU-8f2c1e0a-1b2c-3d4e-5f60-718293a4b5c6".into()],
            port: 7501,
            desired: desired.into(),
            policy_version: 3,
            created_at_ms: 1_700_000_000_000,
            status: status.into(),
            status_at_ms: 1_700_000_030_000,
            standing: "compliant".into(),
            ..Default::default()
        }
    }

    /// A replica the agent restarts with backoff: exited 137, three restarts so far.
    fn failed_replica(id: &str) -> ReplicaView {
        ReplicaView::from(pb::Replica {
            exit_code: Some(137),
            status_reason: "killed by SIGKILL (out of memory?)".into(),
            restarts: 3,
            ..replica(id, "gpu-fr-3", "run", "failed")
        })
    }

    #[test]
    fn table_aligns_columns_without_trailing_spaces() {
        let mut t = Table::new(&["NAME", "X"]);
        t.row(vec!["a".into(), "1".into()]);
        t.row(vec!["longer-name".into(), "".into()]);
        t.row(vec!["é".into(), "22".into()]);
        assert_eq!(
            t.render(),
            "NAME          X\n\
             a             1\n\
             longer-name\n\
             é             22\n"
        );
    }

    #[test]
    #[should_panic(expected = "row width")]
    fn table_rejects_ragged_rows() {
        Table::new(&["A", "B"]).row(vec!["1".into()]);
    }

    #[test]
    fn fields_align_and_continue_multi_line_values() {
        let text = fields(&[("Env", "A=1\nB=2".into()), ("Generation", "3".into())]);
        assert_eq!(text, "Env:         A=1\n             B=2\nGeneration:  3\n");
    }

    #[test]
    fn members_table_sorts_and_marks_leader() {
        let text = members_table(&[member(2, false, None), member(1, true, Some(17))], 1);
        assert_eq!(
            text,
            concat!(
                "ID    RAFT ADDR       API ADDR        MEMBERSHIP   MATCHED\n",
                "1 *   10.0.0.1:7401   10.0.0.1:7400   voter        17\n",
                "2     10.0.0.2:7401   10.0.0.2:7400   learner      -\n",
            )
        );
    }

    #[test]
    fn status_text_shows_view_then_members() {
        let s = ClusterStatusView {
            cluster_id: "c1".into(),
            node_id: 2,
            role: "follower".into(),
            term: 5,
            leader_id: 1,
            leader_api_addr: "10.0.0.1:7400".into(),
            last_log_index: 10,
            committed_index: 9,
            applied_index: 8,
            snapshot_index: 4,
            purged_index: 3,
            members: vec![member(1, true, None)],
            state_sha256: "ab12".into(),
            state_revision: 8,
            history_size: 42,
            history_root: "cd34".into(),
        };
        let text = status_text(&s);
        assert!(
            text.starts_with("Cluster ID:       c1\nNode:             2 (follower)\n"),
            "{text}"
        );
        assert!(
            text.contains("Leader:           1 at 10.0.0.1:7400\n"),
            "{text}"
        );
        assert!(text.contains("Purged index:     3\n"), "{text}");
        assert!(
            text.contains("State:            revision 8, sha256 ab12\n"),
            "{text}"
        );
        assert!(
            text.contains("History:          42 events, root cd34\n\nID "),
            "{text}"
        );
        assert!(text.contains("\n1 *"), "{text}");
    }

    #[test]
    fn status_text_says_when_no_leader_is_known() {
        let s = ClusterStatusView {
            cluster_id: String::new(),
            node_id: 1,
            role: "candidate".into(),
            term: 7,
            leader_id: 0,
            leader_api_addr: String::new(),
            last_log_index: 0,
            committed_index: 0,
            applied_index: 0,
            snapshot_index: 0,
            purged_index: 0,
            members: vec![],
            state_sha256: String::new(),
            state_revision: 0,
            history_size: 0,
            history_root: String::new(),
        };
        let text = status_text(&s);
        assert!(text.contains("Cluster ID:       -\n"), "{text}");
        assert!(text.contains("Leader:           none known\n"), "{text}");
    }

    #[test]
    fn deployments_table_has_one_row_per_deployment() {
        let text = deployments_table(&[deployment()]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let cells: Vec<&str> = lines[1]
            .split("   ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        assert_eq!(
            cells,
            [
                "mistral-7b",
                "mistralai/Mistral-7B-Instruct-v0.3",
                "2",
                "1/2",
                "degraded (1/2 running)",
                "1",
                "3",
                "2023-11-14T22:14:20Z"
            ]
        );
        assert!(lines[0].contains("   RUNNING   COMPLIANCE   "), "{text}");
        // A scheduler that sends no compliance report leaves the column blank, not wrong.
        let mut old = deployment();
        old.compliance = None;
        let text = deployments_table(&[old]);
        let cells: Vec<&str> = text.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(cells[3..6], ["1/2", "-", "1"], "{text}");
    }

    #[test]
    fn deployment_text_lists_spec_details() {
        let text = deployment_text(&deployment(), NOW);
        for expected in [
            "Name:                mistral-7b\n",
            "GPU model:           any\n",
            "GPU memory:          40000 MiB minimum per GPU\n",
            "CPU:                 -\n",
            "Command:             python3 -m http.server\n",
            "Env:                 A=1\n                     B=2\n",
            "Labels:              -\n",
            "Created:             2023-11-14T22:13:20Z\n",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
    }

    #[test]
    fn deployment_text_shows_export_residency_and_replicas() {
        let text = deployment_text(&deployment(), NOW);
        for expected in [
            "Running:             1/2\n",
            "ECCN:                EAR99 (not controlled)\n",
            "Weights published:   yes\n",
            "Training compute:    unknown\n",
            "Lineage:             -\n",
            "Residency:           EU27, CH\n",
            "Min location trust:  2 (operator-certificate)\n",
            "Certifications:      -\n",
            "\nID             NODE       GPUS                PORT   DESIRED   STATUS    RESTARTS   POLICY VERSION   STANDING\n\
             mistral-7b-1   gpu-fr-1   1 (GPU-8f2c1e0a…)   7501   run       running   0          3                compliant\n\
             mistral-7b-2   gpu-fr-2   1 (GPU-8f2c1e0a…)   7501   stop      stopped   0          3                compliant\n",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
        let mut frontier = deployment();
        let spec = frontier.spec.as_mut().unwrap();
        spec.export = ExportView {
            eccn: "4E091".into(),
            weights_published: false,
            training_compute_log10: 26,
            lineage: vec!["base-a".into(), "base-b".into()],
        };
        spec.residency = ResidencyView::default();
        frontier.replicas.clear();
        let text = deployment_text(&frontier, NOW);
        for expected in [
            "ECCN:                4E091\n",
            "Training compute:    1e26 FLOP\n",
            "Lineage:             base-a, base-b\n",
            "Residency:           anywhere the policy allows\n",
            "Min location trust:  any\n",
            "Running:             0/2\n",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
        assert!(text.ends_with("\nNo replicas placed.\n"), "{text}");
    }

    #[test]
    fn deployment_text_says_why_a_replica_is_down() {
        let mut d = deployment();
        d.replicas.push(failed_replica("mistral-7b-3"));
        // Placed but not reported yet: counts as placed, not as running.
        d.replicas
            .push(replica("mistral-7b-4", "gpu-fr-4", "run", "pending").into());
        let text = deployment_text(&d, NOW);
        assert!(
            text.contains("Running:             1/2 (3 placed)\n"),
            "{text}"
        );
        assert!(
            text.ends_with(
                "mistral-7b-3   gpu-fr-3   1 (GPU-8f2c1e0a…)   7501   run       failed (exit 137)   3          3                compliant\n\
                 mistral-7b-4   gpu-fr-4   1 (GPU-8f2c1e0a…)   7501   run       pending             0          3                compliant\n\
                 \n  mistral-7b-3: killed by SIGKILL (out of memory?)\n"
            ),
            "{text}"
        );
        assert_eq!((d.running(), d.placed()), (1, 3));
    }

    #[test]
    fn exit_codes_and_reasons_show_only_for_down_replicas() {
        // A running replica's exit code and reason describe an earlier exit, now recovered.
        let mut r = failed_replica("a");
        r.status = "running".into();
        assert_eq!(replica_status_cell(&r), "running");
        assert_eq!(replica_notes([&r]), "");
        r.status = "stopped".into();
        assert_eq!(replica_status_cell(&r), "stopped (exit 137)");
        r.exit_code = None;
        r.status_reason.clear();
        assert_eq!(replica_status_cell(&r), "stopped");
        assert_eq!(replica_notes([&r]), "");
        r.status.clear();
        assert_eq!(replica_status_cell(&r), "-");
    }

    #[test]
    fn deployment_text_shows_compliance_and_migration() {
        let text = deployment_text(&deployment(), NOW);
        for expected in [
            "Running:             1/2\n\
             Compliance:          degraded (1/2 running)\n\
             \x20                    why: 0/3 nodes eligible: 3 forbidden by policy eu-only\n\
             GPUs/replica:",
            "Migration:           at most 1 replacement at a time, old replica stopped 10m after \
             it must move\n",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
        let mut d = deployment();
        let c = d.compliance.as_mut().unwrap();
        (c.state, c.summary) = ("migrating".into(), "migrating (1/3)".into());
        c.violated_rules = vec!["gdpr-audit".into()];
        c.next_deadline_ms = NOW + 252_000;
        d.spec.as_mut().unwrap().migration = MigrationView {
            max_parallel: 2,
            deadline_ms: Some(0),
        };
        let text = deployment_text(&d, NOW);
        for expected in [
            "Compliance:          migrating (1/3)\n\
             \x20                    audit rules violated: gdpr-audit\n\
             \x20                    next deadline 2023-11-14T22:19:12Z (in 4m12s)\n",
            "Migration:           at most 2 replacements at a time, old replica stopped at once \
             when it must move, then replaced\n",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
        // A violating summary names its rules; they are not repeated.
        let c = d.compliance.as_mut().unwrap();
        (c.state, c.summary) = ("violating".into(), "violating (audit: gdpr-audit)".into());
        c.next_deadline_ms = 0;
        assert!(
            deployment_text(&d, NOW)
                .contains("Compliance:          violating (audit: gdpr-audit)\nGPUs"),
            "{}",
            deployment_text(&d, NOW)
        );
        d.compliance = None;
        assert!(!deployment_text(&d, NOW).contains("Compliance:"));
    }

    #[test]
    fn standing_cells_say_where_a_replica_stands_with_the_rules() {
        let mut r = ReplicaView::from(replica("open-eu-1", "sim-de-1", "run", "running"));
        assert_eq!(standing_cell(&r, NOW), "compliant");
        (r.standing, r.rules) = ("violating".into(), vec!["a".into(), "b".into()]);
        assert_eq!(standing_cell(&r, NOW), "violating: a, b");
        r.standing = "migrating".into();
        r.deadline_ms = NOW + 600_000;
        assert_eq!(standing_cell(&r, NOW), "migrating → placing, by 22:25:00Z");
        r.replacement = "open-eu-9".into();
        assert_eq!(
            standing_cell(&r, NOW),
            "migrating → open-eu-9, by 22:25:00Z"
        );
        // A deadline days away carries its date.
        r.deadline_ms = NOW + 3 * 86_400_000;
        assert_eq!(
            standing_cell(&r, NOW),
            "migrating → open-eu-9, by 2023-11-17T22:15:00Z"
        );
        let mut replacement =
            ReplicaView::from(replica("open-eu-9", "sim-fr-1", "run", "starting"));
        replacement.replaces = "open-eu-1".into();
        assert_eq!(standing_cell(&replacement, NOW), "replaces open-eu-1");
        replacement.standing.clear();
        assert_eq!(standing_cell(&replacement, NOW), "-; replaces open-eu-1");
        replacement.replaces.clear();
        assert_eq!(standing_cell(&replacement, NOW), "-");
    }

    #[test]
    fn replicas_told_to_stop_say_why_after_the_down_ones() {
        let mut d = deployment();
        d.replicas.push(failed_replica("mistral-7b-3"));
        let stopped = d
            .replicas
            .iter_mut()
            .find(|r| r.id == "mistral-7b-2")
            .unwrap();
        stopped.stop_reason = "policy v3: export-4e091-tier1 (stop-now)".into();
        let text = deployment_text(&d, NOW);
        assert!(
            text.ends_with(
                "\n  mistral-7b-3: killed by SIGKILL (out of memory?)\n  \
                 mistral-7b-2: told to stop: policy v3: export-4e091-tier1 (stop-now)\n"
            ),
            "{text}"
        );
        // A replica the scheduler wants running has no stop reason worth showing.
        let mut running = ReplicaView::from(replica("x", "n", "run", "running"));
        running.stop_reason = "left over".into();
        assert_eq!(replica_notes([&running]), "");
    }

    #[test]
    fn times_near_now_read_as_clock_times_and_countdowns() {
        assert_eq!(clock_cell(0, NOW), "-");
        assert_eq!(clock_cell(NOW + 3_600_000, NOW), "23:15:00Z");
        assert_eq!(clock_cell(NOW - 86_400_000, NOW), "2023-11-13T22:15:00Z");
        assert_eq!(relative_text(NOW + 252_400, NOW), "in 4m12s");
        assert_eq!(relative_text(NOW - 3_000, NOW), "3s ago");
        assert_eq!(relative_text(NOW + 400, NOW), "now");
        assert_eq!(
            deadline_text(NOW + 7_200_000, NOW),
            "2023-11-15T00:15:00Z (in 2h)"
        );
    }

    #[test]
    fn deployment_text_shows_a_chosen_working_dir_only() {
        assert!(!deployment_text(&deployment(), NOW).contains("Working dir"));
        let mut d = deployment();
        d.spec.as_mut().unwrap().working_dir = "/srv/models/mistral".into();
        let text = deployment_text(&d, NOW);
        assert!(
            text.contains(
                "Command:             python3 -m http.server\n\
                 Working dir:         /srv/models/mistral\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn gpu_cells_shorten_only_nvml_uuids() {
        assert_eq!(gpus_cell(&[]), "-");
        assert_eq!(
            gpus_cell(&[
                "GPU-8f2c1e0a-1b2c-3d4e-5f60-718293a4b5c6".into(),
                "sim-node1-gpu1".into()
            ]),
            "2 (GPU-8f2c1e0a…, sim-node1-gpu1)"
        );
    }

    #[test]
    fn apply_line_names_the_outcome() {
        let mut a = ApplyView {
            deployment: Some(deployment()),
            created: true,
            changed: true,
        };
        assert_eq!(
            apply_line(&a),
            "deployment mistral-7b created (generation 3, revision 42)\n"
        );
        a.created = false;
        assert!(apply_line(&a).contains(" updated "));
        a.changed = false;
        assert!(apply_line(&a).contains(" unchanged "));
    }

    #[test]
    fn json_mirrors_proto_field_names() {
        let json = serde_json::to_value(deployment()).unwrap();
        assert_eq!(json["spec"]["resources"]["gpu_memory_mib"], 40000);
        assert_eq!(json["spec"]["env"], serde_json::json!({"A": "1", "B": "2"}));
        assert_eq!(json["updated_at_ms"], 1_700_000_060_500_i64);
        assert_eq!(json["spec"]["export"]["weights_published"], true);
        assert_eq!(json["spec"]["residency"]["allowed"][1], "CH");
        assert_eq!(json["spec"]["residency"]["min_location_trust"], 2);
        assert_eq!(
            json["replicas"][0]["gpu_uuids"][0],
            "GPU-8f2c1e0a-1b2c-3d4e-5f60-718293a4b5c6"
        );
        assert_eq!(json["replicas"][1]["desired"], "run");
        assert_eq!(json["replicas"][1]["status"], "running");
        assert_eq!(json["replicas"][1]["exit_code"], serde_json::Value::Null);
        assert_eq!(json["spec"]["working_dir"], "");
        assert_eq!(
            json["spec"]["migration"],
            serde_json::json!({"max_parallel": 0, "deadline_ms": null})
        );
        assert_eq!(json["compliance"]["summary"], "degraded (1/2 running)");
        assert_eq!(json["compliance"]["converged"], false);
        assert_eq!(json["replicas"][0]["standing"], "compliant");
        let failed = serde_json::to_value(failed_replica("x")).unwrap();
        assert_eq!(
            failed,
            serde_json::json!({
                "id": "x", "node": "gpu-fr-3",
                "gpu_uuids": ["GPU-8f2c1e0a-1b2c-3d4e-5f60-718293a4b5c6"], "port": 7501,
                "desired": "run", "policy_version": 3, "created_at_ms": 1_700_000_000_000_i64,
                "status": "failed", "exit_code": 137,
                "status_reason": "killed by SIGKILL (out of memory?)", "restarts": 3,
                "status_at_ms": 1_700_000_030_000_i64, "standing": "compliant", "rules": [],
                "drain": false, "deadline_ms": 0, "replacement": "", "replaces": "",
                "standing_since_ms": 0, "stop_reason": "", "standing_policy_version": 0
            })
        );
        let m = serde_json::to_value(member(1, true, None)).unwrap();
        assert_eq!(
            m,
            serde_json::json!({
                "id": 1, "raft_addr": "10.0.0.1:7401", "api_addr": "10.0.0.1:7400",
                "voter": true, "matched_index": null
            })
        );
    }

    #[test]
    fn shell_join_quotes_only_what_needs_it() {
        let args: Vec<String> = ["sh", "-c", "exec x \"$PORT\"", "", "it's"]
            .map(String::from)
            .to_vec();
        assert_eq!(shell_join(&args), r#"sh -c 'exec x "$PORT"' '' 'it'\''s'"#);
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(1_700_000_000_999), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339_utc(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(4_107_542_400_000), "2100-03-01T00:00:00Z");
        assert_eq!(rfc3339_utc(-1), "1969-12-31T23:59:59Z");
        assert_eq!(time_cell(0), "-");
    }
}
