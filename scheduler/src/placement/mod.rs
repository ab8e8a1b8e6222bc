//! Placement: where the replicas of a deployment go. Pure and deterministic: the same state and
//! policy give the same plan on every replica (invariant I3), so the leader's plan can be
//! re-checked entry by entry when it is applied (`state::apply`, `ApplyPlan`).
//!
//! The pipeline, one file per stage, as in Nomad's scheduler:
//!
//! ```text
//!  state
//!        │
//!        ▼
//!  fleet.rs         once per round: nodes in name order, free capacity (inventory minus the
//!        │          allocations that should run), policy class, spread domains
//!        ▼
//!  deployment with missing replicas
//!        │
//!        ▼
//!  feasibility.rs   for every node: ready? not draining? policy permits? resources fit?
//!        │          (every failing reason is kept, for `sovctl explain`)
//!        ▼
//!  fit.rs           pick GPUs (model, memory per GPU), CPU, memory and a free port
//!        ▼
//!  score.rs         GPU bin-packing: prefer the node left fullest; spread replicas of the same
//!        │          deployment over nodes (soft anti-affinity)
//!        ▼
//!  select.rs        highest score, ties broken by node name; capacity is charged as replicas
//!        │          are chosen, so one plan never over-commits a node (invariant I6)
//!        ▼
//!  Plan             placements + the deployments with replicas that fit nowhere (explained
//!                   on demand: `plan_spec`, `eligibility`)
//! ```
//!
//! Policy comes in through [`PolicyOracle`] so this module stays free of Cedar and I/O. The
//! oracle sorts nodes and deployments into classes that always get the same answer, so a
//! round classifies each node once and the inner loop asks about two small integers (an array
//! lookup in the real oracle, `state::plan::PolicyGate`). The figures are in
//! docs/benchmarks.md (Placement).
//! Must not touch: Raft, the network, clocks. Time-dependent facts (certifications in force)
//! are decided by the oracle for the day it was built for.

pub mod explain;
pub mod feasibility;
pub mod fit;
pub mod fleet;
pub mod score;
pub mod select;

use serde::{Deserialize, Serialize};

use crate::state::node::Node;
use crate::state::{DeploymentSpec, State};
pub use explain::Explanation;
pub use fleet::Fleet;
pub use select::{Want, eligibility, plan, plan_spec, plan_wants};

/// A policy rule that forbids a placement, as shown to users.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forbid {
    pub id: String,
    pub reason: String,
    /// What happens to running replicas the rule starts to forbid (`state::compliance`).
    pub on_change: crate::policy::OnChange,
}

/// Answers "which rules forbid placing this deployment on this node?" (empty = permitted),
/// by class: deployments of one class and nodes of one class always get the same answer.
pub trait PolicyOracle {
    /// The class of a node; asked once per node per planning round, so it must be fast for a
    /// node like one seen before.
    fn node_class(&mut self, node: &Node) -> u32;
    /// The class of a deployment; asked once per deployment planned.
    fn deployment_class(&mut self, deployment: &DeploymentSpec) -> u32;
    /// Every rule forbidding a deployment of class `deployment` on a node of class `node`
    /// (classes from this oracle); empty = permitted. Asked for every pair a round considers,
    /// so it must be fast.
    fn forbidding(&mut self, deployment: u32, node: u32) -> &[Forbid];
}

/// One replica to place: the node and the resources reserved for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub deployment: String,
    pub node: String,
    pub gpu_uuids: Vec<String>,
    pub cpu_millis: u32,
    pub memory_mib: u64,
    pub port: u16,
    /// The migrating allocation this replica takes over from (make-before-break); empty for a
    /// replica that is simply missing.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub replaces: String,
}

/// What the planner decided for a state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub placements: Vec<Placement>,
    /// Deployments with replicas that fit nowhere (`plan_spec` or `eligibility` say why).
    pub unplaced: Vec<String>,
}

/// Replicas of `deployment` that should run and are not yet allocated (allocations that count,
/// `state::compliance::counted`: not on a down node, not a migrating one already replaced).
pub fn missing_replicas(state: &State, deployment: &DeploymentSpec) -> u32 {
    let counted = state
        .allocations
        .values()
        .filter(|a| a.deployment == deployment.name && crate::state::compliance::counted(state, a))
        .count() as u32;
    deployment.replicas.saturating_sub(counted)
}

#[cfg(test)]
mod tests;
