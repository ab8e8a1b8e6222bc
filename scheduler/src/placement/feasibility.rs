//! Feasibility: can this node host one more replica of this deployment, and if not, every
//! reason why. Order of the checks only matters for the one-line summary (the first reason of a
//! node is the one counted there); all reasons are kept for `sovctl explain --node`.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::fit::{Free, Reservation, Shortfall, fit};
use super::{Forbid, PolicyOracle};
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

/// Checks every condition and returns the reservation, or every reason it fails.
pub fn check(
    deployment: &DeploymentSpec,
    node: &Node,
    free: &Free,
    policy: &mut impl PolicyOracle,
) -> Result<Reservation, Vec<Reason>> {
    let mut reasons = Vec::new();
    if node.status == NodeStatus::Down {
        reasons.push(Reason::Down);
    }
    if node.draining {
        reasons.push(Reason::Draining);
    }
    reasons.extend(
        policy
            .forbidding(deployment, node)
            .into_iter()
            .map(Reason::Forbidden),
    );
    match fit(free, &deployment.resources) {
        Ok(reservation) if reasons.is_empty() => Ok(reservation),
        Ok(_) => Err(reasons),
        Err(shortfalls) => {
            reasons.extend(shortfalls.into_iter().map(Reason::Short));
            Err(reasons)
        }
    }
}
