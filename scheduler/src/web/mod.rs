//! HTTP endpoints on port 7402 for operators and their monitoring: `/healthz` (the process is up
//! and its Raft core runs), `/readyz` (it can serve linearizable requests: a leader is known and
//! this replica has applied what was committed), and Prometheus `/metrics`.
//!
//! Owns: rendering; it reads Raft metrics and state and never writes. Reviewer pages
//! (issue #6) will live here too.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::raft::Replica;

pub fn router(replica: Arc<Replica>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(replica)
}

async fn healthz(State(replica): State<Arc<Replica>>) -> impl IntoResponse {
    match &replica.metrics().running_state {
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

async fn readyz(State(replica): State<Arc<Replica>>) -> impl IntoResponse {
    match not_ready_reason(&replica) {
        None => (StatusCode::OK, "ready\n".to_string()),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}

/// Prometheus text exposition format, version 0.0.4.
pub fn render_metrics(replica: &Replica) -> String {
    let m = replica.metrics();
    let index = |l: &Option<crate::raft::LogId>| l.as_ref().map_or(0, |l| l.index);
    let committed = index(&m.local_committed);
    let applied = index(&m.last_applied);
    let membership = m.membership_config.membership();
    let voters = membership.voter_ids().count();
    let learners = membership.learner_ids().count();
    let (deployments, nodes_ready, nodes_down, by_status, placed) = {
        let applied = replica.sm.read();
        let s = &applied.state;
        let down = s
            .nodes
            .values()
            .filter(|n| n.status == crate::state::node::NodeStatus::Down)
            .count();
        let mut by_status = std::collections::BTreeMap::new();
        for a in s.allocations.values() {
            *by_status.entry(a.status.as_str()).or_insert(0u64) += 1;
        }
        let placed = s
            .allocations
            .values()
            .filter(|a| a.desired == crate::state::Desired::Run)
            .count();
        (
            s.deployments.len(),
            s.nodes.len() - down,
            down,
            by_status,
            placed,
        )
    };
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    };
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
        placed as u64,
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
    gauge(
        "sov_ready",
        "1 if /readyz would answer 200.",
        u64::from(not_ready_reason(replica).is_none()),
    );
    let _ = writeln!(
        out,
        "# HELP sov_allocations Allocations by the status their agent last reported.\n# TYPE sov_allocations gauge"
    );
    for status in ["pending", "starting", "running", "failed", "stopped"] {
        let count = by_status.get(status).copied().unwrap_or(0);
        let _ = writeln!(out, "sov_allocations{{status=\"{status}\"}} {count}");
    }
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
    out
}

async fn metrics(State(replica): State<Arc<Replica>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        render_metrics(&replica),
    )
}
