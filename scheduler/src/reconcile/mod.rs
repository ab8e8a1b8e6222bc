//! Reconcile: from the replicated state, the next round of work that brings every deployment to
//! what it wants under the rules in force. Pure and deterministic; the leader runs it on a copy
//! of the state and proposes the result as one `ApplyPlan`, whose apply re-checks every part at
//! its own index (`state::compliance::apply_stops`, `state::plan`).
//!
//! Owns: classifying each allocation that should run, and choosing what to stop and what to
//! place this round. Must not touch: the judgement of rules (done by `apply` when rules or facts
//! change: `state::compliance`), where a replica goes (`placement`), clocks (the caller passes
//! the leader's `now_ms`), I/O.
//!
//! ```text
//!  every allocation that should run
//!        │
//!        ├─ on a down node ─────────────────────────────▶ stop (node-down); placed elsewhere
//!        ├─ migrating, its replacement reports running ─▶ stop (replaced)      make-before-break
//!        │    (normally already done by the apply of that report: `state::nodes`)
//!        ├─ migrating, deadline passed ─────────────────▶ stop (deadline-passed)
//!        ├─ migrating, replacement starting ────────────▶ wait (in flight, ≤ max_parallel)
//!        ├─ a replacement whose old one is still stopping ▶ in flight until its agent confirms
//!        ├─ migrating, no replacement ──────────────────▶ counts; wants a replacement
//!        └─ compliant or violating (audit) ─────────────▶ counts
//!  per deployment:  counted > replicas  ─▶ stop the surplus (not running first, then moving,
//!                                          then newest)
//!                   counted < replicas  ─▶ place the missing ones
//!                   replacements        ─▶ place up to max_parallel − in flight
//!        │
//!        ▼
//!  placement::plan_wants ─▶ Round { placements, stops, unplaced }
//! ```
//!
//! Every round is bounded (`Limits`): at most so many placements and stops in one entry; the
//! rest waits for the next round, which starts as soon as this one commits.

use std::collections::BTreeMap;

use foldhash::{HashMap, HashMapExt};

use crate::placement::{self, Placement, PolicyOracle, Want};
use crate::state::compliance::{NodesUp, PlannedStop, StopWhy, live_replacement};
use crate::state::node::NodeStatus;
use crate::state::{AllocStatus, Allocation, Desired, Standing, State};

/// Bounds of one round: the size of one Raft entry and one apply.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub placements_max: usize,
    pub stops_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            placements_max: crate::state::plan::PLAN_PLACEMENTS_MAX,
            stops_max: crate::state::PLAN_STOPS_MAX,
        }
    }
}

/// What the leader should propose next.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Round {
    pub placements: Vec<Placement>,
    pub stops: Vec<PlannedStop>,
    /// Deployments with replicas (or replacements) that fit nowhere this round.
    pub unplaced: Vec<String>,
    /// The earliest deadline of a move not yet due: nothing else may change, yet the leader
    /// must run a round then.
    pub next_deadline_ms: Option<i64>,
}

impl Round {
    pub fn is_empty(&self) -> bool {
        self.placements.is_empty() && self.stops.is_empty()
    }
}

/// Computes the next round for `state` at leader time `now_ms`.
pub fn round(state: &State, policy: &mut impl PolicyOracle, now_ms: i64, limits: Limits) -> Round {
    let (wants, mut out) = decide(state, now_ms, None);
    out.stops.truncate(limits.stops_max);
    // Replacements first within a deployment (`Want`), and deployments in name order.
    let plan = placement::plan_wants(state, &wants, policy, limits.placements_max);
    out.placements = plan.placements;
    out.unplaced = plan.unplaced;
    out
}

/// The round for `state` when it has nothing to do: no stops and no replica wanted anywhere
/// (then [`round`] returns exactly this: no placements, and the next move deadline). Found with
/// one pass over the allocations and no fleet view, so the leader can ask it of the applied
/// state under its lock, and copy the state only for a round with work. `None` when there is
/// work, or replicas that want a node (whether one can take them is [`round`]'s question).
pub fn idle(state: &State, now_ms: i64) -> Option<Round> {
    let (wants, out) = decide(state, now_ms, None);
    (wants.is_empty() && out.stops.is_empty()).then_some(out)
}

/// What each deployment would get from the next round, unbounded: how many new replicas it
/// wants (missing ones and replacements) and how many of them some node could take now.
/// `only` restricts it to one deployment (then others' wants do not compete for capacity).
pub fn outlook(
    state: &State,
    policy: &mut impl PolicyOracle,
    now_ms: i64,
    only: Option<&str>,
) -> BTreeMap<String, Outlook> {
    let (wants, _) = decide(state, now_ms, only);
    let plan = placement::plan_wants(state, &wants, policy, usize::MAX);
    let mut out: BTreeMap<String, Outlook> = wants
        .iter()
        .map(|w| {
            (
                w.spec.name.clone(),
                Outlook {
                    wanted: w.count,
                    placeable: 0,
                },
            )
        })
        .collect();
    for p in &plan.placements {
        if let Some(o) = out.get_mut(&p.deployment) {
            o.placeable += 1;
        }
    }
    out
}

/// For every deployment: the replicas that stay where they are (they count and are not moving)
/// and how many of the others (missing, moving, stopped) some node could take now, ignoring
/// `max_parallel`. What `sovctl policy plan` reports as "would become unplaceable or degraded".
pub fn shortfall(state: &State, policy: &mut impl PolicyOracle) -> BTreeMap<String, Shortfall> {
    let mut kept: HashMap<&str, u32> = HashMap::new();
    let up = NodesUp::of(state);
    for a in state.allocations.values() {
        if !a.standing.is_migrating() && up.live(a) {
            *kept.entry(a.deployment.as_str()).or_default() += 1;
        }
    }
    let wants: Vec<Want> = state
        .deployments
        .values()
        .map(|d| Want {
            spec: &d.spec,
            count: d
                .spec
                .replicas
                .saturating_sub(kept.get(d.spec.name.as_str()).copied().unwrap_or(0)),
            replaces: Vec::new(),
        })
        .collect();
    let plan = placement::plan_wants(state, &wants, policy, usize::MAX);
    let mut out: BTreeMap<String, Shortfall> = state
        .deployments
        .values()
        .map(|d| {
            (
                d.spec.name.clone(),
                Shortfall {
                    wanted: d.spec.replicas,
                    kept: kept.get(d.spec.name.as_str()).copied().unwrap_or(0),
                    placeable: 0,
                },
            )
        })
        .collect();
    for p in &plan.placements {
        if let Some(s) = out.get_mut(&p.deployment) {
            s.placeable += 1;
        }
    }
    out
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shortfall {
    pub wanted: u32,
    pub kept: u32,
    pub placeable: u32,
}

impl Shortfall {
    /// Replicas that can have a home: kept, or placeable now.
    pub fn served(&self) -> u32 {
        (self.kept + self.placeable).min(self.wanted)
    }
}

/// New replicas one deployment wants and how many could be placed now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outlook {
    pub wanted: u32,
    pub placeable: u32,
}

/// The stops of a round and what each deployment wants placed (unbounded); `only` restricts
/// both to one deployment.
fn decide<'s>(state: &'s State, now_ms: i64, only: Option<&str>) -> (Vec<Want<'s>>, Round) {
    let mut out = Round::default();
    let up = NodesUp::of(state);
    let mut by_deployment: HashMap<&str, Vec<&Allocation>> = HashMap::new();
    for a in state.allocations.values() {
        if a.desired != Desired::Run || only.is_some_and(|d| d != a.deployment) {
            continue;
        }
        if !up.live(a) {
            if state
                .nodes
                .get(&a.node)
                .is_some_and(|n| n.status == NodeStatus::Down)
            {
                out.stops.push(PlannedStop {
                    allocation: a.id.clone(),
                    why: StopWhy::NodeDown,
                });
            }
            continue;
        }
        by_deployment
            .entry(a.deployment.as_str())
            .or_default()
            .push(a);
    }
    let mut wants: Vec<Want> = Vec::new();
    for deployment in state.deployments.values() {
        let spec = &deployment.spec;
        if only.is_some_and(|d| d != spec.name) {
            continue;
        }
        let allocations = by_deployment
            .get(spec.name.as_str())
            .map_or(&[][..], Vec::as_slice);
        let mut counted: Vec<&Allocation> = Vec::new();
        let mut unreplaced: Vec<&str> = Vec::new();
        // Moves whose old allocation was told to stop in an earlier round and is not gone yet.
        let mut inflight = allocations
            .iter()
            .filter(|r| up.replaced_still_stopping(state, r))
            .count() as u32;
        for a in allocations {
            let Standing::Migrating { deadline_ms, .. } = &a.standing else {
                counted.push(a);
                continue;
            };
            let replacement = live_replacement(state, a);
            if let Some(r) = replacement
                && r.status == AllocStatus::Running
            {
                out.stops.push(PlannedStop {
                    allocation: a.id.clone(),
                    why: StopWhy::Replaced { by: r.id.clone() },
                });
                // The move ends when the old process is gone, not when its stop is ordered:
                // until its agent confirms, it still takes one of the `max_parallel` slots
                // (see `replaced_still_stopping` below), or replicas + max_parallel + 1
                // processes could run at once.
                inflight += 1;
                continue;
            }
            if now_ms >= *deadline_ms {
                out.stops.push(PlannedStop {
                    allocation: a.id.clone(),
                    why: StopWhy::DeadlinePassed,
                });
                continue;
            }
            out.next_deadline_ms = Some(
                out.next_deadline_ms
                    .map_or(*deadline_ms, |d| d.min(*deadline_ms)),
            );
            if replacement.is_some() {
                inflight += 1;
            } else {
                counted.push(a);
                unreplaced.push(a.id.as_str());
            }
        }
        let replicas = spec.replicas as usize;
        if counted.len() > replicas {
            // Stop first what serves nobody yet, then what is leaving anyway, then the newest.
            counted.sort_by_key(|a| {
                (
                    a.status == AllocStatus::Running,
                    !a.standing.is_migrating(),
                    std::cmp::Reverse((a.created_at_ms, a.id.as_str())),
                )
            });
            let surplus = counted.len() - replicas;
            for a in counted.drain(..surplus) {
                unreplaced.retain(|id| *id != a.id);
                out.stops.push(PlannedStop {
                    allocation: a.id.clone(),
                    why: StopWhy::Surplus,
                });
            }
        }
        let missing = replicas.saturating_sub(counted.len()) as u32;
        let slots = spec.migration.max_parallel.saturating_sub(inflight) as usize;
        unreplaced.truncate(slots);
        let count = missing + unreplaced.len() as u32;
        if count > 0 {
            wants.push(Want {
                spec,
                count,
                replaces: unreplaced.into_iter().map(str::to_string).collect(),
            });
        }
    }
    (wants, out)
}

pub mod status;

#[cfg(test)]
mod tests;
