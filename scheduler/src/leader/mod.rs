//! Loops that run only on the leader: they read the applied state and propose commands.
//!
//! Owns: giving a new cluster its id, the placement loop (plan missing replicas from a
//! snapshot of the state, propose `ApplyPlan`, repeat while the state changes), and node
//! liveness from heartbeats ([`liveness`]). Followers run
//! the same tasks but they do nothing until their replica becomes leader. Must not touch: the
//! meaning of commands (`state`), placement decisions (`placement`).
//!
//! Every round is bounded: at most `PLAN_PLACEMENTS_MAX` placements per proposal, one proposal
//! in flight, and a plan that placed nothing is not retried until the state moves on, nor
//! sooner than `QUIET_PAUSE`. Plans are made on a copy of the state, in a blocking task, with
//! the policy evaluator kept beside the state (`state::plan::PolicyGate`), so a steady cluster
//! asks Cedar nothing new.

pub mod liveness;

use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use tokio::sync::watch;

use crate::placement;
use crate::raft::{Replica, now_ms};
use crate::state::Proposal;
use crate::state::plan::{PLAN_PLACEMENTS_MAX, PolicyGate, day_of};

/// Re-plan at least this often even without state changes (certifications expire by day).
const REPLAN_INTERVAL: Duration = Duration::from_secs(10);

/// After a plan that placed nothing, wait this long before planning again, however many
/// commits arrive meanwhile: with replicas that fit nowhere, every agent status report would
/// otherwise start a new full plan (tens of milliseconds at 10,000 nodes). It is also the
/// longest a new deployment waits for its first plan while the loop is quiet.
const QUIET_PAUSE: Duration = Duration::from_millis(250);

/// Waits for the next change of Raft metrics (a commit, an election), a tick, or shutdown.
/// Returns false when the loop should end.
async fn next_round(
    replica: &Replica,
    metrics: &mut openraft::alias::WatchReceiverOf<
        crate::raft::TypeConfig,
        crate::raft::RaftMetrics,
    >,
    tick: &mut tokio::time::Interval,
    shutdown: &watch::Receiver<bool>,
) -> bool {
    if *shutdown.borrow() {
        return false;
    }
    tokio::select! {
        changed = metrics.changed() => changed.is_ok(),
        _ = tick.tick() => replica.metrics().running_state.is_ok(),
    }
}

/// Proposes a random cluster id once, when this node first leads a cluster that has none.
pub async fn cluster_id_duty(replica: Arc<Replica>, shutdown: watch::Receiver<bool>) {
    let mut metrics = replica.raft.metrics();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        if replica.is_leader()
            && let Err(e) = replica.ensure_cluster_id().await
        {
            tracing::debug!(error = %e, "cluster id not proposed yet");
        }
        if !next_round(&replica, &mut metrics, &mut tick, &shutdown).await {
            return;
        }
    }
}

/// Places missing replicas: plan from the applied state, propose, repeat.
pub async fn placement_loop(replica: Arc<Replica>, shutdown: watch::Receiver<bool>) {
    let mut metrics = replica.raft.metrics();
    let mut tick = tokio::time::interval(REPLAN_INTERVAL);
    // Revision at which a plan placed nothing; no new plan until the state moves past it.
    let mut quiet_at: Option<u64> = None;
    loop {
        if replica.is_leader() {
            let started = std::time::Instant::now();
            let snapshot = {
                let applied = replica.sm.read();
                (quiet_at != Some(applied.state.revision)).then(|| applied.state.clone())
            };
            let copied = started.elapsed();
            // Plan on a copy and off the async workers: a cold plan of a large fleet takes
            // hundreds of milliseconds (docs/benchmarks.md, Placement), and holding the state
            // machine's lock that long would stall every commit and every read.
            let planned = match snapshot {
                None => None,
                Some(state) => {
                    let today = day_of(now_ms());
                    tokio::task::spawn_blocking(move || {
                        let mut gate = PolicyGate::for_state(&state, &today);
                        let asked =
                            |g: &PolicyGate| g.evaluator().map_or(0, |e| e.cedar_requests());
                        let before = asked(&gate);
                        let plan = placement::plan(&state, &mut gate, PLAN_PLACEMENTS_MAX);
                        (state.revision, plan, asked(&gate) - before)
                    })
                    .await
                    .ok()
                }
            };
            match planned {
                Some((revision, plan, _)) if plan.placements.is_empty() => {
                    quiet_at = Some(revision);
                    for deployment in &plan.unplaced {
                        tracing::debug!(
                            deployment,
                            "replicas cannot be placed (`sovctl explain` says why)"
                        );
                    }
                    tokio::time::sleep(QUIET_PAUSE).await;
                }
                Some((_, plan, cedar_requests)) => {
                    let count = plan.placements.len();
                    let planned_at = started.elapsed();
                    match replica
                        .propose(Proposal::ApplyPlan {
                            placements: plan.placements,
                        })
                        .await
                    {
                        Ok(resp) => {
                            if let crate::state::Outcome::PlanApplied { placed, rejected } =
                                &resp.outcome
                            {
                                tracing::info!(
                                    proposed = count,
                                    placed = placed.len(),
                                    rejected = rejected.len(),
                                    copy_ms = copied.as_millis() as u64,
                                    plan_ms = (planned_at - copied).as_millis() as u64,
                                    commit_ms = (started.elapsed() - planned_at).as_millis() as u64,
                                    cedar_requests,
                                    "placement plan applied"
                                );
                                for r in rejected {
                                    tracing::info!(
                                        deployment = r.deployment,
                                        node = r.node,
                                        reason = r.reason,
                                        "stale placement rejected; re-planning"
                                    );
                                }
                                if placed.is_empty() {
                                    quiet_at = Some(resp.index);
                                }
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "placement plan not committed; will re-plan")
                        }
                    }
                    // Re-plan at once: more may be missing, and the state just changed.
                    continue;
                }
                None => {}
            }
        }
        if !next_round(&replica, &mut metrics, &mut tick, &shutdown).await {
            return;
        }
    }
}
