//! HTTP endpoints on port 7402 for operators and their monitoring: `/healthz` (the process is up
//! and its Raft core runs), `/readyz` (it can serve linearizable requests: a leader is known and
//! this replica has applied what was committed), and Prometheus `/metrics`; and the reviewer
//! pages (issue #6): `/` (deployments and their compliance), `/deployments/{name}` (placement
//! timeline), `/violations`, `/policies`, `/policies/{v}` (rules and diff), `/checkpoint`.
//! Any other path answers a 404 page.
//!
//! Owns: rendering; it reads Raft metrics, the state and the history store and never writes.
//! The reviewer pages show this scheduler's applied state (no read barrier: a reviewer can
//! read a follower while the cluster has no leader), and say which index that is.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::leader::liveness::LivenessConfig;
use crate::raft::Replica;
use crate::state::{AllocStatus, Desired, Standing};

mod diff;
mod pages;
mod policies;
mod timeline;

/// How old the deployments' compliance counts in `/metrics` may be. Counting them plans the
/// whole fleet (hundreds of milliseconds at 100,000 allocations), too much for every scrape of
/// a busy exporter; every other gauge is read fresh.
const COMPLIANCE_SAMPLE_MAX_AGE: Duration = Duration::from_secs(10);

/// Deployments per compliance state, and when they were counted.
type ComplianceSample = (Instant, BTreeMap<&'static str, u64>);

/// What the HTTP handlers share: the replica, and the last compliance sample.
#[derive(Clone)]
pub struct Web {
    replica: Arc<Replica>,
    /// The id of the key this scheduler signs history checkpoints with, if it has one.
    key_id: Option<String>,
    /// For the heartbeat pace the leader asks of a fleet of the current size.
    liveness: LivenessConfig,
    compliance: Arc<Mutex<Option<ComplianceSample>>>,
}

impl Web {
    pub fn new(replica: Arc<Replica>, key_id: Option<String>, liveness: LivenessConfig) -> Self {
        Web {
            replica,
            key_id,
            liveness,
            compliance: Arc::default(),
        }
    }

    /// Deployments per compliance state, at most [`COMPLIANCE_SAMPLE_MAX_AGE`] old: computed
    /// under the read lock, like `api::deployments::with_statuses` (no copy of the state).
    fn compliance_counts(&self) -> BTreeMap<&'static str, u64> {
        let mut sample = self.compliance.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, counts)) = sample.as_ref()
            && at.elapsed() < COMPLIANCE_SAMPLE_MAX_AGE
        {
            return counts.clone();
        }
        let applied = self.replica.sm.read();
        let mut counts = BTreeMap::new();
        for status in crate::api::deployments::statuses(&applied.state, None).values() {
            *counts.entry(status.compliance().as_str()).or_insert(0u64) += 1;
        }
        *sample = Some((Instant::now(), counts.clone()));
        counts
    }
}

/// The HTTP routes; `key_id` is the signing key's id (`None` without a key), for the
/// checkpoint page; `liveness` for the heartbeat pace in `/metrics`.
pub fn router(replica: Arc<Replica>, key_id: Option<String>, liveness: LivenessConfig) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/", get(pages::index))
        .route("/deployments", get(pages::index))
        .route("/deployments/{name}", get(pages::deployment))
        .route("/violations", get(pages::violations))
        .route("/policies", get(policies::list))
        .route("/policies/{version}", get(policies::version))
        .route("/checkpoint", get(pages::checkpoint))
        .fallback(pages::fallback)
        .with_state(Web::new(replica, key_id, liveness))
}

async fn healthz(State(web): State<Web>) -> impl IntoResponse {
    match &web.replica.metrics().running_state {
        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
        Err(fatal) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("raft core stopped: {fatal}\n"),
        ),
    }
}

/// Why this replica cannot serve yet, or `None` when it can.
pub fn not_ready_reason(replica: &Replica) -> Option<String> {
    let m = replica.metrics();
    if let Err(fatal) = &m.running_state {
        return Some(format!("raft core stopped: {fatal}"));
    }
    if m.current_leader.is_none() {
        return Some(
            "no leader known (not yet part of a cluster, or an election is in progress)".into(),
        );
    }
    let committed = m.local_committed.as_ref().map_or(0, |l| l.index);
    let applied = m.last_applied.as_ref().map_or(0, |l| l.index);
    if applied < committed {
        return Some(format!(
            "catching up: applied {applied} of {committed} committed entries"
        ));
    }
    None
}

async fn readyz(State(web): State<Web>) -> impl IntoResponse {
    let replica = web.replica;
    match not_ready_reason(&replica) {
        None => (StatusCode::OK, "ready\n".to_string()),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}

fn gauge_line(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
    );
}

/// The allocation gauges of `/metrics`, from one pass over the allocations under the read lock.
/// Counted into arrays indexed by enum, not maps keyed by name: a scrape holds the lock for
/// the pass, and the applies that wait for it are what everyone waits for (100,000 allocations:
/// see `cargo bench -p sov-scheduler --bench compliance`).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AllocationCounts {
    /// By the status their agent last reported, in [`AllocStatus::ALL`] order.
    pub by_status: [u64; AllocStatus::ALL.len()],
    /// Allocations that should run.
    pub placed: u64,
    /// Of those, by standing, in [`Standing::NAMES`] order.
    pub by_standing: [u64; Standing::NAMES.len()],
    /// Told to stop, not yet confirmed.
    pub stopping: u64,
    /// Migrating without a live replacement.
    pub unreplaced: u64,
}

impl AllocationCounts {
    pub fn of(s: &crate::state::State) -> Self {
        let mut c = AllocationCounts::default();
        for a in s.allocations.values() {
            c.by_status[a.status as usize] += 1;
            match a.desired {
                Desired::Run => {
                    c.placed += 1;
                    c.by_standing[a.standing.index()] += 1;
                    if a.standing.is_migrating()
                        && crate::state::compliance::live_replacement(s, a).is_none()
                    {
                        c.unreplaced += 1;
                    }
                }
                Desired::Stop => c.stopping += 1,
            }
        }
        c
    }
}

/// Prometheus text exposition format, version 0.0.4.
pub fn render_metrics(web: &Web) -> String {
    let replica = &web.replica;
    let by_compliance = web.compliance_counts();
    let m = replica.metrics();
    let index = |l: &Option<crate::raft::LogId>| l.as_ref().map_or(0, |l| l.index);
    let committed = index(&m.local_committed);
    let applied = index(&m.last_applied);
    let membership = m.membership_config.membership();
    let voters = membership.voter_ids().count();
    let learners = membership.learner_ids().count();
    let (deployments, nodes_ready, nodes_down, disrupted, counts) = {
        let applied = replica.sm.read();
        let s = &applied.state;
        let down = s
            .nodes
            .values()
            .filter(|n| n.status == crate::state::node::NodeStatus::Down)
            .count();
        (
            s.deployments.len(),
            s.nodes.len() - down,
            down,
            s.disrupted(),
            AllocationCounts::of(s),
        )
    };
    let AllocationCounts {
        by_status,
        placed,
        by_standing,
        stopping,
        unreplaced,
    } = counts;
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: u64| gauge_line(&mut out, name, help, value);
    gauge("sov_raft_term", "Current Raft term.", m.current_term);
    gauge(
        "sov_raft_leader_id",
        "Id of the scheduler this node believes is leader (0 = none).",
        m.current_leader.unwrap_or(0),
    );
    gauge(
        "sov_raft_is_leader",
        "1 if this scheduler is the leader.",
        u64::from(m.current_leader == Some(replica.id)),
    );
    gauge(
        "sov_raft_last_log_index",
        "Index of the last entry in the local log.",
        m.last_log_index.unwrap_or(0),
    );
    gauge(
        "sov_raft_commit_index",
        "Highest log index known to be committed.",
        committed,
    );
    gauge(
        "sov_raft_applied_index",
        "Highest log index applied to the state machine.",
        applied,
    );
    gauge(
        "sov_raft_apply_lag",
        "Committed entries not yet applied here.",
        committed.saturating_sub(applied),
    );
    gauge(
        "sov_raft_snapshot_index",
        "Last log index covered by the current snapshot.",
        index(&m.snapshot),
    );
    gauge(
        "sov_raft_purged_index",
        "Last log index purged from the log.",
        index(&m.purged),
    );
    gauge(
        "sov_raft_voters",
        "Voting members in the current membership.",
        voters as u64,
    );
    gauge(
        "sov_raft_learners",
        "Non-voting members in the current membership.",
        learners as u64,
    );
    gauge(
        "sov_raft_peer_channels",
        "Cached gRPC channels to peers (one per peer).",
        replica.peers.len() as u64,
    );
    gauge(
        "sov_deployments",
        "Deployments in the replicated state.",
        deployments as u64,
    );
    gauge(
        "sov_replicas_placed",
        "Allocations that should run (placed replicas, whatever their agents report).",
        placed,
    );
    gauge(
        "sov_nodes_ready",
        "Registered nodes whose heartbeats arrive within the TTL.",
        nodes_ready as u64,
    );
    gauge(
        "sov_nodes_down",
        "Registered nodes marked down (no heartbeat within the TTL).",
        nodes_down as u64,
    );
    let pace = web.liveness.pace(nodes_ready + nodes_down);
    gauge(
        "sov_heartbeat_interval_ms",
        "How often the leader asks agents to heartbeat, for the fleet's size (liveness.max_heartbeats_per_s).",
        pace.interval_ms,
    );
    gauge(
        "sov_heartbeat_ttl_ms",
        "How long a silent node stays ready, for the fleet's size.",
        pace.ttl_ms,
    );
    gauge(
        "sov_disrupted",
        "1 while more than half of the nodes are down: their replicas are neither stopped nor replaced.",
        u64::from(disrupted),
    );
    gauge(
        "sov_ready",
        "1 if /readyz would answer 200.",
        u64::from(not_ready_reason(replica).is_none()),
    );
    let _ = writeln!(
        out,
        "# HELP sov_allocations Allocations by the status their agent last reported.\n# TYPE sov_allocations gauge"
    );
    for (status, count) in AllocStatus::ALL.iter().zip(by_status) {
        let _ = writeln!(
            out,
            "sov_allocations{{status=\"{}\"}} {count}",
            status.as_str()
        );
    }
    let _ = writeln!(
        out,
        "# HELP sov_deployments_by_compliance Deployments by compliance state (sovctl deploy list).\n# TYPE sov_deployments_by_compliance gauge"
    );
    for c in crate::reconcile::status::Compliance::ALL {
        let count = by_compliance.get(c.as_str()).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "sov_deployments_by_compliance{{state=\"{}\"}} {count}",
            c.as_str()
        );
    }
    let _ = writeln!(
        out,
        "# HELP sov_allocations_by_standing Allocations that should run, by how they stand with the rules in force.\n# TYPE sov_allocations_by_standing gauge"
    );
    for (standing, count) in Standing::NAMES.iter().zip(by_standing) {
        let _ = writeln!(
            out,
            "sov_allocations_by_standing{{standing=\"{standing}\"}} {count}"
        );
    }
    gauge_line(
        &mut out,
        "sov_allocations_stopping",
        "Allocations told to stop whose agent has not confirmed it yet.",
        stopping,
    );
    gauge_line(
        &mut out,
        "sov_allocations_moving_unreplaced",
        "Migrating allocations with no replacement placed yet (no node can take one, or max_parallel is reached).",
        unreplaced,
    );
    gauge_line(
        &mut out,
        "sov_history_store_lag_events",
        "Placement history events applied but not yet written to the history store (its writer thread's queue).",
        replica.sm.history().lag(),
    );
    let flushes = replica
        .log_flushes
        .flushes
        .load(std::sync::atomic::Ordering::Relaxed);
    let entries = replica
        .log_flushes
        .entries
        .load(std::sync::atomic::Ordering::Relaxed);
    let mut counter = |name: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    };
    counter(
        "sov_raft_log_flushes_total",
        "Durable (fsynced) log append transactions.",
        flushes,
    );
    counter(
        "sov_raft_log_flushed_entries_total",
        "Log entries made durable; divided by flushes: entries per fsync.",
        entries,
    );
    let _ = writeln!(
        out,
        "# HELP sov_denied_calls_total gRPC calls refused with PERMISSION_DENIED since start, by the permission they lacked (\"unknown\": no sov method).\n# TYPE sov_denied_calls_total counter"
    );
    for (permission, denied) in crate::api::auth::denied_counts() {
        let _ = writeln!(
            out,
            "sov_denied_calls_total{{permission=\"{permission}\"}} {denied}"
        );
    }
    out
}

async fn metrics(State(web): State<Web>) -> impl IntoResponse {
    // Off the async workers: the compliance sample may take a while to compute.
    let body = tokio::task::spawn_blocking(move || render_metrics(&web))
        .await
        .unwrap_or_else(|e| format!("# metrics failed: {e}\n"));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::node::{Node, NodeStatus};
    use crate::state::{Allocation, State};

    fn alloc(id: &str, node: &str, status: AllocStatus, desired: Desired) -> Allocation {
        Allocation {
            id: id.into(),
            deployment: "d".into(),
            node: node.into(),
            status,
            desired,
            ..Allocation::default()
        }
    }

    fn migrating(replacement: &str) -> Standing {
        Standing::Migrating {
            rules: vec!["r".into()],
            drain: false,
            since_ms: 0,
            deadline_ms: 0,
            policy_version: 1,
            replacement: replacement.into(),
        }
    }

    #[test]
    fn allocation_counts_by_status_standing_and_what_awaits() {
        let mut s = State::default();
        for (name, status) in [("up", NodeStatus::Ready), ("gone", NodeStatus::Down)] {
            s.nodes.insert(
                name.into(),
                Node {
                    name: name.into(),
                    status,
                    ..Node::default()
                },
            );
        }
        let mut list = vec![
            alloc("a", "up", AllocStatus::Running, Desired::Run),
            alloc("b", "up", AllocStatus::Pending, Desired::Run),
            alloc("c", "up", AllocStatus::Running, Desired::Stop),
            alloc("d", "up", AllocStatus::Failed, Desired::Run),
        ];
        list[3].standing = Standing::Violating {
            rules: vec!["audit".into()],
            since_ms: 0,
            policy_version: 1,
        };
        // Migrating: one replaced by "b" (live), one by an allocation on a down node, one
        // not replaced yet.
        let mut m = alloc("m1", "up", AllocStatus::Running, Desired::Run);
        m.standing = migrating("b");
        list.push(m);
        list.push(alloc("r2", "gone", AllocStatus::Starting, Desired::Run));
        let mut m = alloc("m2", "up", AllocStatus::Running, Desired::Run);
        m.standing = migrating("r2");
        list.push(m);
        let mut m = alloc("m3", "up", AllocStatus::Stopped, Desired::Run);
        m.standing = migrating("");
        list.push(m);
        for a in list {
            s.allocations.insert(a.id.clone(), a);
        }
        assert_eq!(
            AllocationCounts::of(&s),
            AllocationCounts {
                // pending, starting, running, failed, stopped
                by_status: [1, 1, 4, 1, 1],
                placed: 7,
                // compliant, violating, migrating
                by_standing: [3, 1, 3],
                stopping: 1,
                unreplaced: 2,
            }
        );
    }
}
