//! Placement: where the replicas of a deployment go. Pure and deterministic: the same state and
//! policy give the same plan on every replica (invariant I3), so the leader's plan can be
//! re-checked entry by entry when it is applied (`state::apply`, `ApplyPlan`).
//!
//! The pipeline, one file per stage, as in Nomad's scheduler:
//!
//! ```text
//!  deployment with missing replicas
//!        │
//!        ▼
//!  feasibility.rs   for every node: ready? not draining? policy permits? resources fit?
//!        │          (every failing reason is kept, for `sovctl explain`)
//!        ▼
//!  fit.rs           free capacity per node (inventory minus running allocations);
//!        │          pick GPUs (model, memory per GPU), CPU, memory and a free port
//!        ▼
//!  score.rs         GPU bin-packing: prefer the node left fullest; spread replicas of the same
//!        │          deployment over nodes (soft anti-affinity)
//!        ▼
//!  select.rs        highest score, ties broken by node name; capacity is charged as replicas
//!        │          are chosen, so one plan never over-commits a node (invariant I6)
//!        ▼
//!  Plan             placements + an explanation for each replica that could not be placed
//! ```
//!
//! Policy comes in through [`PolicyOracle`] so this module stays free of Cedar and I/O; the
//! oracle memoizes per (deployment signature, node signature).
//! Must not touch: Raft, the network, clocks. Time-dependent facts (certifications in force)
//! are decided by the oracle for the day it was built for.

pub mod explain;
pub mod feasibility;
pub mod fit;
pub mod score;
pub mod select;

use serde::{Deserialize, Serialize};

use crate::state::node::Node;
use crate::state::{DeploymentSpec, State};
pub use explain::Explanation;
pub use select::{eligibility, free_map, plan, plan_spec};

/// A policy rule that forbids a placement, as shown to users.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forbid {
    pub id: String,
    pub reason: String,
}

/// Answers "which rules forbid placing this deployment on this node?" (empty = permitted).
pub trait PolicyOracle {
    fn forbidding(&mut self, deployment: &DeploymentSpec, node: &Node) -> Vec<Forbid>;
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
}

/// What the planner decided for a state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub placements: Vec<Placement>,
    /// Deployments with replicas that fit nowhere, and why.
    pub unplaced: Vec<(String, Explanation)>,
}

/// Replicas of `deployment` that should run and are not yet allocated.
pub fn missing_replicas(state: &State, deployment: &DeploymentSpec) -> u32 {
    let running = state
        .allocations
        .values()
        .filter(|a| a.deployment == deployment.name && a.desired == crate::state::Desired::Run)
        .count() as u32;
    deployment.replicas.saturating_sub(running)
}

#[cfg(test)]
mod tests;
