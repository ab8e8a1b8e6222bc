//! Applying node commands: registration (an agent's report of facts and inventory), drain,
//! liveness transitions decided by the leader, and the agents' allocation status reports.

use super::compliance::{self, PlannedStop, Scope, StopWhy};
use super::node::{Node, NodeStatus};
use super::validate::{MAX_NODES, validate_node};
use super::{AllocReport, AllocStatus, Desired, NodeRegistration, Outcome, Rejection, State};
use crate::history;

pub(super) fn register(
    state: &mut State,
    index: u64,
    at_ms: i64,
    reg: &NodeRegistration,
) -> Outcome {
    if let Err(e) = validate_node(&reg.name, &reg.facts, &reg.inventory) {
        return Outcome::Rejected(Rejection::Invalid(e));
    }
    let existing = state.nodes.get(&reg.name);
    if existing.is_none() && state.nodes.len() >= MAX_NODES {
        return Outcome::Rejected(Rejection::TooManyNodes { max: MAX_NODES });
    }
    let created = existing.is_none();
    // New facts or inventory (a relabel, an expired certification, an acquisition by a
    // non-EU parent, other GPUs) can change what policy allows on this node.
    let facts_changed =
        existing.is_some_and(|n| n.facts != reg.facts || n.inventory != reg.inventory);
    let unchanged = existing.is_some_and(|n| {
        n.facts == reg.facts && n.inventory == reg.inventory && n.status == NodeStatus::Ready
    });
    if unchanged {
        let node = existing.cloned().unwrap_or_default();
        return Outcome::NodeRegistered {
            node: Box::new(node),
            created: false,
            changed: false,
        };
    }
    let node = Node {
        name: reg.name.clone(),
        facts: reg.facts.clone(),
        inventory: reg.inventory.clone(),
        status: NodeStatus::Ready,
        draining: existing.is_some_and(|n| n.draining),
        drain_deadline_ms: existing.map_or(0, |n| n.drain_deadline_ms),
        registered_at_ms: existing.map_or(at_ms, |n| n.registered_at_ms),
        updated_at_ms: at_ms,
        revision: index,
        assignments_revision: existing.map_or(0, |n| n.assignments_revision),
    };
    let was_down = existing.is_some_and(|n| n.status == NodeStatus::Down);
    let today = compliance::today(state);
    let facts = history::Facts::of(&reg.facts, &today);
    state.nodes.insert(node.name.clone(), node.clone());
    if was_down {
        state.nodes_down -= 1;
        history::record(
            state,
            history::What::NodeReady {
                node: reg.name.clone(),
            },
        );
    }
    if created {
        history::record(
            state,
            history::What::NodeRegistered {
                node: reg.name.clone(),
                facts,
            },
        );
    } else if facts_changed {
        history::record(
            state,
            history::What::NodeFactsChanged {
                node: reg.name.clone(),
                facts,
            },
        );
    }
    if facts_changed {
        compliance::recheck(state, index, at_ms, Scope::Node(&reg.name));
    }
    let node = state.nodes.get(&reg.name).cloned().unwrap_or(node);
    Outcome::NodeRegistered {
        node: Box::new(node),
        created,
        changed: true,
    }
}

/// Drains a node (no new work; its replicas move elsewhere, make-before-break, and stop by
/// `at_ms + deadline_ms` at the latest) or lifts the drain. Draining again never extends the
/// deadline of a drain already running.
pub(super) fn set_draining(
    state: &mut State,
    index: u64,
    at_ms: i64,
    name: &str,
    draining: bool,
    deadline_ms: u64,
) -> Outcome {
    let Some(node) = state.nodes.get_mut(name) else {
        return Outcome::Rejected(Rejection::NodeNotFound(name.to_string()));
    };
    let deadline = at_ms.saturating_add(deadline_ms as i64);
    let new_deadline = match (node.draining, draining) {
        (false, true) => deadline,
        (true, true) => node.drain_deadline_ms.min(deadline),
        (_, false) => 0,
    };
    if node.draining != draining || node.drain_deadline_ms != new_deadline {
        node.draining = draining;
        node.drain_deadline_ms = new_deadline;
        node.updated_at_ms = at_ms;
        node.revision = index;
        let node = name.to_string();
        history::record(
            state,
            if draining {
                history::What::NodeDrained {
                    node,
                    deadline_ms: new_deadline,
                }
            } else {
                history::What::NodeUndrained { node }
            },
        );
        compliance::recheck(state, index, at_ms, Scope::Node(name));
    }
    Outcome::NodeUpdated {
        node: Box::new(state.nodes[name].clone()),
    }
}

/// Marks that the assignments of `node` changed at `index`.
pub(super) fn touch_assignments(state: &mut State, node: &str, index: u64) {
    if let Some(n) = state.nodes.get_mut(node) {
        n.assignments_revision = index;
    }
}

/// Applies an agent's status reports. Reports about allocations that are not (or no longer) on
/// this node are ignored, not rejected: an agent may report on a process it stopped after the
/// scheduler already forgot it, and one stale report must not drop the others.
///
/// A replacement reported `running` ends its move in the same entry: its stop is added to
/// `moved`, for [`report_entry`] to make once the entry's reports are all applied.
fn report_allocations(
    state: &mut State,
    at_ms: i64,
    node: &str,
    reports: &[AllocReport],
    moved: &mut Vec<PlannedStop>,
) -> Outcome {
    if !state.nodes.contains_key(node) {
        return Outcome::Rejected(Rejection::NodeNotFound(node.to_string()));
    }
    let mut updated = 0;
    let mut removed = 0;
    let mut ignored = Vec::new();
    for r in reports {
        let Some(alloc) = state.allocations.get_mut(&r.id).filter(|a| a.node == node) else {
            ignored.push(r.id.clone());
            continue;
        };
        // A new status is a fact for the history; restarts and reasons alone are not.
        let transition = (alloc.status != r.status).then(|| {
            let allocation = history::alloc_ref(alloc);
            match r.status {
                AllocStatus::Starting => history::What::AllocationStarted(allocation),
                AllocStatus::Running => history::What::AllocationHealthy(allocation),
                AllocStatus::Failed => history::What::AllocationFailed {
                    allocation,
                    reason: r.reason.clone(),
                    exit_code: r.exit_code,
                },
                AllocStatus::Stopped | AllocStatus::Pending => {
                    history::What::AllocationStopped(allocation)
                }
            }
        });
        // Stopped on purpose and confirmed: nothing runs any more, so the record can go.
        if alloc.desired == Desired::Stop && r.status == AllocStatus::Stopped {
            state.allocations.remove(&r.id);
            removed += 1;
            if let Some(event) = transition {
                history::record(state, event);
            }
            continue;
        }
        let unchanged = alloc.status == r.status
            && alloc.exit_code == r.exit_code
            && alloc.status_reason == r.reason
            && alloc.restarts == r.restarts;
        if unchanged {
            continue;
        }
        if r.status == AllocStatus::Running
            && transition.is_some()
            && alloc.desired == Desired::Run
            && !alloc.replaces.is_empty()
        {
            moved.push(PlannedStop {
                allocation: alloc.replaces.clone(),
                why: StopWhy::Replaced {
                    by: alloc.id.clone(),
                },
            });
        }
        alloc.status = r.status;
        alloc.exit_code = r.exit_code;
        alloc.status_reason = r.reason.clone();
        alloc.restarts = r.restarts;
        alloc.status_at_ms = at_ms;
        updated += 1;
        if let Some(event) = transition {
            history::record(state, event);
        }
    }
    Outcome::AllocationsReported {
        updated,
        removed,
        ignored,
    }
}

/// Applies the agents' reports of one entry (one node's for `ReportAllocations`, many for
/// `ReportMany`), each node's on its own ([`report_allocations`]): one outcome per node, in
/// order.
///
/// Then ends the moves whose replacements those reports turned `running`: the allocation each
/// one takes over from is told to stop (`StopWhy::Replaced`, through the reconcile round's own
/// [`compliance::apply_stops`], so with the same checks and history event), in this entry
/// instead of the leader's next round. That round, a copy of the state, a plan and one more
/// entry through Raft, cost a migration of 20,000 replicas most of a second before the old
/// replicas' agents were even told (docs/benchmarks.md, Rule changes). The round still stops
/// any this misses (a replacement that was running before it was linked).
///
/// The moves end once per entry, after every report in it: the history shows the replacements
/// healthy, then the moves, and the per-stop bookkeeping (`settle_moves`) runs once, not once
/// per node (when it passed over every allocation, 1,000 nodes in one `ReportMany` took
/// seconds). A stop whose reason no longer holds is simply not made.
pub(super) fn report_entry<'r>(
    state: &mut State,
    index: u64,
    at_ms: i64,
    nodes: impl IntoIterator<Item = (&'r str, &'r [AllocReport])>,
) -> Vec<Outcome> {
    let mut moved = Vec::new();
    let outcomes = nodes
        .into_iter()
        .map(|(node, reports)| report_allocations(state, at_ms, node, reports, &mut moved))
        .collect();
    compliance::apply_stops(state, index, at_ms, &moved);
    outcomes
}

/// Applies the leader's liveness decision to a batch of nodes. Unknown names are skipped: the
/// leader decided from a state that may have moved on, and the rest of the batch still holds.
pub(super) fn set_status(
    state: &mut State,
    index: u64,
    at_ms: i64,
    names: &[String],
    status: NodeStatus,
) -> Outcome {
    let mut changed = Vec::new();
    for name in names {
        if let Some(node) = state.nodes.get_mut(name)
            && node.status != status
        {
            node.status = status;
            node.updated_at_ms = at_ms;
            node.revision = index;
            changed.push(name.clone());
            let node = name.clone();
            let event = match status {
                NodeStatus::Down => {
                    state.nodes_down += 1;
                    history::What::NodeDown { node }
                }
                NodeStatus::Ready => {
                    state.nodes_down -= 1;
                    history::What::NodeReady { node }
                }
            };
            history::record(state, event);
        }
    }
    Outcome::NodeStatusSet { changed }
}
