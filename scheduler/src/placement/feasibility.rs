//! Feasibility: can this node host one more replica of this deployment, and if not, every
//! reason why. Order of the checks only matters for the one-line summary (the first reason of a
//! node is the one counted there); all reasons are kept for `sovctl explain --node`.
//!
//! Two forms with one meaning: [`feasible`] is a yes or no with nothing allocated, the policy
//! first since it rules out most pairs (the planner's scan decides the same, reading status
//! once per round through `Fleet::usable` and the policy once per node class); [`check`] builds
//! the reservation or every reason, for explanations and for re-checking a plan at apply time.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::Forbid;
use super::fit::{Free, Reservation, Shortfall, fit};
use crate::state::DeploymentSpec;
use crate::state::node::{Node, NodeStatus};

/// One reason a node cannot take a replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reason {
    Down,
    Draining,
    Forbidden(Forbid),
    Short(Shortfall),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Down => write!(f, "down"),
            Reason::Draining => write!(f, "draining"),
            Reason::Forbidden(rule) => {
                write!(f, "forbidden by policy {} ({:?})", rule.id, rule.reason)
            }
            Reason::Short(s) => write!(f, "{s}"),
        }
    }
}

/// Whether `node` can take one more replica of `deployment`: exactly when [`check`] succeeds.
/// `forbidding` is what the policy oracle says about the pair.
pub fn feasible(
    deployment: &DeploymentSpec,
    node: &Node,
    free: &Free,
    forbidding: &[Forbid],
) -> bool {
    forbidding.is_empty() && takes_new_work(node) && free.fits(&deployment.resources)
}

/// Whether a node takes new replicas at all: not down, not draining (what [`check`] reports as
/// `Down` and `Draining`).
pub fn takes_new_work(node: &Node) -> bool {
    node.status != NodeStatus::Down && !node.draining
}

/// Checks every condition and returns the reservation, or every reason it fails.
/// `forbidding` is what the policy oracle says about the pair.
pub fn check(
    deployment: &DeploymentSpec,
    node: &Node,
    free: &Free,
    forbidding: &[Forbid],
) -> Result<Reservation, Vec<Reason>> {
    let mut reasons = Vec::new();
    if node.status == NodeStatus::Down {
        reasons.push(Reason::Down);
    }
    if node.draining {
        reasons.push(Reason::Draining);
    }
    reasons.extend(forbidding.iter().cloned().map(Reason::Forbidden));
    match fit(free, &deployment.resources) {
        Ok(reservation) if reasons.is_empty() => Ok(reservation),
        Ok(_) => Err(reasons),
        Err(shortfalls) => {
            reasons.extend(shortfalls.into_iter().map(Reason::Short));
            Err(reasons)
        }
    }
}
