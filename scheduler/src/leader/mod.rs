//! Loops that run only on the leader: they read the applied state and propose commands.
//!
//! Owns: giving a new cluster its id, the reconcile loop (a round of `crate::reconcile`:
//! stops, replacements and missing replicas, proposed as one
//! `ApplyPlan`, repeated while the state changes or a move deadline passes; and the day
//! re-check), and node liveness from heartbeats ([`liveness`]). Followers run
//! the same tasks but they do nothing until their replica becomes leader. Must not touch: the
//! meaning of commands (`state`), placement decisions (`placement`).
//!
//! Every round is bounded: at most `PLAN_PLACEMENTS_MAX` placements and `PLAN_STOPS_MAX` stops
//! per proposal, one proposal in flight, and a round that found nothing to do is not retried
//! until the state moves on or a move deadline passes, nor sooner than `QUIET_PAUSE` unless
//! a policy, deployment, drain or node liveness change is applied meanwhile. Each round first
//! asks the applied state, in a blocking task and under the read lock, whether there is
//! anything to do (`reconcile::idle`); only then it copies the state (cheap: the maps
//! are copy-on-write, `state::Shared`) and plans on the copy, on a thread of its own
//! (`plan_yielding`, at a lower CPU priority while stops await their agents' confirmation),
//! with the policy evaluator kept beside the state (`state::plan::PolicyGate`), so a steady
//! cluster asks Cedar nothing new.

pub mod liveness;

use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use tokio::sync::watch;

use crate::raft::{Replica, now_ms};
use crate::reconcile::{self, Limits};
use crate::state::compliance::{self, DAY_MS};
use crate::state::plan::PolicyGate;
use crate::state::{Outcome, Proposal};

/// Re-plan at least this often even without state changes (certifications expire by day).
const REPLAN_INTERVAL: Duration = Duration::from_secs(10);

/// After a plan that placed nothing, wait this long before planning again, however many
/// agents' reports and registrations arrive meanwhile: with replicas that fit nowhere, every
/// agent status report would otherwise start a new full plan (tens of milliseconds at 10,000
/// nodes). A policy, a deployment, a drain or nodes going down or up cut it short
/// (`Proposal::wakes_planner`): a rule change's migrations and a new deployment's first
/// replicas are planned as soon as they are applied.
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
    wake_at_ms: Option<i64>,
) -> bool {
    if *shutdown.borrow() {
        return false;
    }
    // A move deadline is a change nobody commits: wake for it (a little after, so the round
    // that runs then sees it passed).
    let until_deadline = wake_at_ms.map_or(REPLAN_INTERVAL, |at| {
        Duration::from_millis(
            (at - now_ms()).clamp(0, REPLAN_INTERVAL.as_millis() as i64) as u64 + 1,
        )
    });
    tokio::select! {
        changed = metrics.changed() => changed.is_ok(),
        _ = tick.tick() => replica.metrics().running_state.is_ok(),
        _ = tokio::time::sleep(until_deadline) => replica.metrics().running_state.is_ok(),
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
        if !next_round(&replica, &mut metrics, &mut tick, &shutdown, None).await {
            return;
        }
    }
}

/// What a round found to do, and what it cost.
struct Planned {
    revision: u64,
    round: reconcile::Round,
    cedar_requests: usize,
    /// How long the copy of the state took (zero for a round that found nothing to do).
    copied: Duration,
}

/// Nice value of the thread that plans a round while stops await their agents' confirmation
/// (Linux; 0 is the process's own).
const PLAN_NICE: i32 = 10;

/// Whether some replica told to stop, on a node that is up, has not been confirmed stopped
/// by its agent yet.
fn stops_pending(state: &crate::state::State) -> bool {
    state.allocations.values().any(|a| {
        a.desired == crate::state::Desired::Stop
            && state
                .nodes
                .get(&a.node)
                .is_some_and(|n| n.status == crate::state::node::NodeStatus::Ready)
    })
}

/// Plans a round on `state` (a copy) on a thread of its own. While stops await their agents'
/// confirmation (`stops_pending`, computed from `state` by the caller), that thread yields the
/// CPU to the rest of the scheduler: on a busy leader, serving the agents (the confirmations,
/// heartbeats, assignment streams) and committing comes before placing replacements, so a
/// replica a rule forbids is known to be stopped sooner.
/// After a stop-now rule change that stops 20,000 replicas, the plan of their replacements (a
/// second of CPU on a loaded two-vCPU leader) otherwise delayed the confirmations, which then
/// also queued behind its entry in the log (docs/benchmarks.md, Rule changes). Otherwise, and on
/// an idle core, it plans at the process's priority. The lock is not held meanwhile, so the
/// lower priority delays no apply.
async fn plan_yielding(
    state: crate::state::State,
    stops_pending: bool,
    copied: Duration,
    now: i64,
) -> Option<Planned> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("sov-plan".into())
        .spawn(move || {
            #[cfg(target_os = "linux")]
            if stops_pending {
                // SAFETY: setpriority only reads its arguments; the id is this thread's own.
                unsafe {
                    libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, PLAN_NICE);
                }
            }
            let mut gate = PolicyGate::for_state(&state, &compliance::today(&state));
            let asked = |g: &PolicyGate| g.evaluator().map_or(0, |e| e.cedar_requests());
            let before = asked(&gate);
            let round = reconcile::round(&state, &mut gate, now, Limits::default());
            let planned = Planned {
                revision: state.revision,
                round,
                cedar_requests: asked(&gate) - before,
                copied,
            };
            drop(gate);
            if stops_pending {
                // A copy of its own (detached): freed off the async workers, after the
                // round is on its way.
                let _ = tx.send(planned);
                drop(state);
            } else {
                // Shared with the applied state: let go of it before the round is proposed,
                // or the apply of its entry would copy every map it changes.
                drop(state);
                let _ = tx.send(planned);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the planning thread; will retry");
        return None;
    }
    rx.await.ok()
}

/// Brings every deployment to what it wants: runs a reconcile round on a copy of the applied
/// state (stops, replacements, missing replicas), proposes it as one `ApplyPlan`, repeats while
/// the state changes. Also proposes `CheckCompliance` when the leader's clock enters a new UTC
/// day with nothing else applied (certifications expire by day).
pub async fn reconcile_loop(replica: Arc<Replica>, shutdown: watch::Receiver<bool>) {
    let mut metrics = replica.raft.metrics();
    let mut tick = tokio::time::interval(REPLAN_INTERVAL);
    // Revision at which a round found nothing to do, and the earliest move deadline it saw: no
    // new round until the state moves past it or that deadline passes.
    let mut quiet: Option<(u64, Option<i64>)> = None;
    let mut disrupted = false;
    let mut wakes = replica.sm.watch_planner_wakes();
    loop {
        if replica.is_leader() {
            // What is applied from here on is seen by this round or wakes the next one.
            wakes.mark_unchanged();
            let started = std::time::Instant::now();
            let now = now_ms();
            let (plan, new_day) = {
                let applied = replica.sm.read();
                let state = &applied.state;
                if state.disrupted() != disrupted {
                    disrupted = state.disrupted();
                    if disrupted {
                        tracing::warn!(
                            down = state.nodes_down,
                            nodes = state.nodes.len(),
                            "disruption: more than half of the nodes are down; their replicas are neither stopped nor replaced until fewer are (check the network and the schedulers first)"
                        );
                    } else {
                        tracing::info!(
                            down = state.nodes_down,
                            "disruption over: replicas of down nodes are replaced again"
                        );
                    }
                }
                let new_day = now.div_euclid(DAY_MS) > state.day && !state.policies.is_empty();
                let still_quiet = quiet.is_some_and(|(revision, deadline)| {
                    revision == state.revision && deadline.is_none_or(|d| now < d)
                });
                (!still_quiet, new_day)
            };
            if new_day {
                match replica.propose(Proposal::CheckCompliance {}).await {
                    Ok(resp) => tracing::info!(
                        index = resp.index,
                        "new UTC day: every allocation re-checked against the policy in force"
                    ),
                    Err(e) => tracing::warn!(error = %e, "day re-check not committed; will retry"),
                }
                continue;
            }
            // Off the async workers, which the state machine's lock would otherwise block.
            // Whether there is anything to do is asked of the applied state itself, under the
            // read lock (one pass over the allocations, no fleet view: about 25 ms at 100,000
            // allocations); only a round with work plans, and on a copy: a plan that places
            // thousands of replicas takes a hundred milliseconds or more, and holding the lock
            // that long would stall every commit, and every read queued behind a commit
            // (heartbeats, assignment streams). The copy shares the state's maps
            // (`state::Shared`): it takes references, and an apply that changes a map while
            // the plan still holds the copy copies that map then, once. Only while stops
            // await confirmation, when such applies are sure to come, is the copy made at once.
            let planned = if plan {
                let sm = replica.sm.clone();
                let copy = tokio::task::spawn_blocking(move || {
                    let applied = sm.read();
                    if let Some(round) = reconcile::idle(&applied.state, now) {
                        return Err(Planned {
                            revision: applied.state.revision,
                            round,
                            cedar_requests: 0,
                            copied: Duration::ZERO,
                        });
                    }
                    let t = std::time::Instant::now();
                    let mut state = applied.state.clone();
                    let stopping = stops_pending(&state);
                    if stopping {
                        // Agents' confirmations are about to be applied while this round
                        // plans: copy the maps now, before they arrive, rather than in the
                        // apply of the first one (which would then wait for the copy).
                        state.detach();
                    }
                    Ok((state, stopping, t.elapsed()))
                })
                .await;
                match copy {
                    Ok(Err(idle)) => Some(idle),
                    Ok(Ok((state, stopping, copied))) => {
                        plan_yielding(state, stopping, copied, now).await
                    }
                    Err(_) => None,
                }
            } else {
                None
            };
            match planned {
                Some(p) if p.round.is_empty() => {
                    quiet = Some((p.revision, p.round.next_deadline_ms));
                    for deployment in &p.round.unplaced {
                        tracing::debug!(
                            deployment,
                            "replicas cannot be placed (`sovctl explain` says why)"
                        );
                    }
                    // Cut short by a change planned for at once (`Proposal::wakes_planner`):
                    // a rule change applied just after this round read the state would
                    // otherwise wait out the pause before its migrations are planned.
                    tokio::select! {
                        _ = tokio::time::sleep(QUIET_PAUSE) => {}
                        _ = wakes.changed() => {}
                    }
                }
                Some(p) => {
                    let (proposed, stops) = (p.round.placements.len(), p.round.stops.len());
                    let planned_at = started.elapsed();
                    let next_deadline = p.round.next_deadline_ms;
                    let proposal = Proposal::ApplyPlan {
                        placements: p.round.placements,
                        stops: p.round.stops,
                    };
                    match replica.propose(proposal).await {
                        Ok(resp) => {
                            if let Outcome::PlanApplied {
                                placed,
                                rejected,
                                stopped,
                                rejected_stops,
                            } = &resp.outcome
                            {
                                tracing::info!(
                                    proposed,
                                    placed = placed.len(),
                                    rejected = rejected.len(),
                                    stops,
                                    stopped = stopped.len(),
                                    rejected_stops = rejected_stops.len(),
                                    copy_ms = p.copied.as_millis() as u64,
                                    plan_ms =
                                        planned_at.saturating_sub(p.copied).as_millis() as u64,
                                    commit_ms = (started.elapsed() - planned_at).as_millis() as u64,
                                    cedar_requests = p.cedar_requests,
                                    "reconcile round applied"
                                );
                                for r in rejected {
                                    tracing::info!(
                                        deployment = r.deployment,
                                        node = r.node,
                                        reason = r.reason,
                                        "stale placement rejected; re-planning"
                                    );
                                }
                                for r in rejected_stops {
                                    tracing::info!(
                                        allocation = r.allocation,
                                        reason = r.reason,
                                        "stale stop rejected; re-planning"
                                    );
                                }
                                if placed.is_empty() && stopped.is_empty() {
                                    quiet = Some((resp.index, next_deadline));
                                }
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "reconcile round not committed; will re-plan")
                        }
                    }
                    // Re-plan at once: more may be to do, and the state just changed.
                    continue;
                }
                None => {}
            }
        }
        let wake = quiet.and_then(|(_, deadline)| deadline);
        if !next_round(&replica, &mut metrics, &mut tick, &shutdown, wake).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::stops_pending;
    use crate::state::node::{Node, NodeStatus};
    use crate::state::{Allocation, Desired, State};

    #[test]
    fn stops_are_pending_only_on_nodes_that_are_up() {
        let mut state = State::default();
        for (name, status) in [("up", NodeStatus::Ready), ("down", NodeStatus::Down)] {
            let node = Node {
                name: name.into(),
                status,
                ..Default::default()
            };
            state.nodes.insert(name.into(), node);
        }
        let mut allocation = |id: &str, node: &str, desired| {
            let a = Allocation {
                id: id.into(),
                node: node.into(),
                desired,
                ..Default::default()
            };
            state.allocations.insert(id.into(), a);
        };
        allocation("a", "up", Desired::Run);
        allocation("b", "down", Desired::Stop);
        allocation("c", "gone", Desired::Stop);
        assert!(
            !stops_pending(&state),
            "running, on a down node, on no node"
        );
        state.allocations.get_mut("a").unwrap().desired = Desired::Stop;
        assert!(stops_pending(&state));
    }
}
