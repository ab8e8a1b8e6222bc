//! Applying node commands: registration (an agent's report of facts and inventory) and drain.

use super::node::{Node, NodeStatus};
use super::validate::{MAX_NODES, validate_node};
use super::{NodeRegistration, Outcome, Rejection, State};

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
        registered_at_ms: existing.map_or(at_ms, |n| n.registered_at_ms),
        updated_at_ms: at_ms,
        revision: index,
    };
    state.nodes.insert(node.name.clone(), node.clone());
    Outcome::NodeRegistered {
        node: Box::new(node),
        created,
        changed: true,
    }
}

pub(super) fn set_draining(
    state: &mut State,
    index: u64,
    at_ms: i64,
    name: &str,
    draining: bool,
) -> Outcome {
    let Some(node) = state.nodes.get_mut(name) else {
        return Outcome::Rejected(Rejection::NodeNotFound(name.to_string()));
    };
    if node.draining != draining {
        node.draining = draining;
        node.updated_at_ms = at_ms;
        node.revision = index;
    }
    Outcome::NodeUpdated {
        node: Box::new(node.clone()),
    }
}
