//! Select: place every missing replica on the best-scoring feasible node, charging capacity as
//! it goes so the plan never over-commits a node. Ties are broken by node name (nodes are
//! visited in name order and only a strictly better score replaces the current choice), so every
//! replica computes the same plan.

use std::collections::BTreeMap;

use super::explain::Explanation;
use super::feasibility::{Reason, check};
use super::fit::Free;
use super::score::score;
use super::{Placement, Plan, PolicyOracle, missing_replicas};
use crate::state::node::Node;
use crate::state::{DeploymentSpec, Spread, State};

/// Plans every deployment of `state` that is missing replicas, at most `placements_max`
/// placements in one plan (a bound on the size of one Raft entry and one apply).
pub fn plan(state: &State, policy: &mut impl PolicyOracle, placements_max: usize) -> Plan {
    let mut free = free_map(state);
    let mut plan = Plan::default();
    for deployment in state.deployments.values() {
        let budget = placements_max.saturating_sub(plan.placements.len());
        if budget == 0 {
            break;
        }
        let missing = missing_replicas(state, &deployment.spec).min(budget as u32);
        if missing == 0 {
            continue;
        }
        let (placements, unplaced) = place(state, &deployment.spec, missing, &mut free, policy);
        plan.placements.extend(placements);
        if let Some(explanation) = unplaced {
            plan.unplaced
                .push((deployment.spec.name.clone(), explanation));
        }
    }
    plan
}

/// Plans a spec that may not be stored yet (`sovctl deploy plan`): where all its missing
/// replicas would go in the current state, and why the rest cannot go anywhere.
pub fn plan_spec(
    state: &State,
    spec: &DeploymentSpec,
    policy: &mut impl PolicyOracle,
) -> (Vec<Placement>, Option<Explanation>) {
    let mut free = free_map(state);
    let missing = missing_replicas(state, spec);
    place(state, spec, missing, &mut free, policy)
}

/// Free capacity of every node: one pass over the nodes, one over the allocations.
pub fn free_map(state: &State) -> BTreeMap<&str, Free> {
    let mut free: BTreeMap<&str, Free> = state
        .nodes
        .values()
        .map(|n| (n.name.as_str(), Free::of(n, std::iter::empty())))
        .collect();
    for a in state.allocations.values() {
        if let Some(f) = free.get_mut(a.node.as_str())
            && a.desired == crate::state::Desired::Run
        {
            f.charge(&a.gpu_uuids, a.cpu_millis, a.memory_mib, a.port);
        }
    }
    free
}

/// Which nodes could take one more replica of `spec` now, and every reason the others cannot.
pub fn eligibility(
    state: &State,
    spec: &DeploymentSpec,
    policy: &mut impl PolicyOracle,
) -> Explanation {
    let free = free_map(state);
    let mut reasons = BTreeMap::new();
    for node in state.nodes.values() {
        if let Err(r) = check(spec, node, &free[node.name.as_str()], policy) {
            reasons.insert(node.name.clone(), r);
        }
    }
    Explanation::new(state.nodes.len(), reasons)
}

/// The domain replicas of `spec` are spread over; with `Spread::None` all nodes share the empty
/// domain, so counting replicas there favours no node.
fn spread_domain(spec: &DeploymentSpec, node: &Node) -> String {
    match spec.placement.spread {
        Spread::None => String::new(),
        Spread::Node => node.name.clone(),
        Spread::Site => format!("{}/{}", node.facts.country, node.facts.site),
        Spread::Country => node.facts.country.clone(),
    }
}

fn preferred(spec: &DeploymentSpec, node: &Node) -> bool {
    let p = &spec.placement;
    p.prefer_countries.contains(&node.facts.country) || p.prefer_sites.contains(&node.facts.site)
}

fn place<'s>(
    state: &'s State,
    spec: &DeploymentSpec,
    missing: u32,
    free: &mut BTreeMap<&'s str, Free>,
    policy: &mut impl PolicyOracle,
) -> (Vec<Placement>, Option<Explanation>) {
    // Replicas of this deployment per spread domain (node, site or country).
    let mut per_domain: BTreeMap<String, u32> = BTreeMap::new();
    for a in state.allocations.values() {
        if a.deployment == spec.name
            && a.desired == crate::state::Desired::Run
            && let Some(node) = state.nodes.get(&a.node)
        {
            *per_domain.entry(spread_domain(spec, node)).or_default() += 1;
        }
    }
    let mut placements = Vec::new();
    for _ in 0..missing {
        let mut best: Option<(i64, &str, super::fit::Reservation)> = None;
        let mut reasons: BTreeMap<String, Vec<Reason>> = BTreeMap::new();
        for node in state.nodes.values() {
            let node_free = &free[node.name.as_str()];
            match check(spec, node, node_free, policy) {
                Ok(reservation) => {
                    let s = score(
                        node_free,
                        &spec.resources,
                        per_domain
                            .get(&spread_domain(spec, node))
                            .copied()
                            .unwrap_or(0),
                        preferred(spec, node),
                    );
                    if best.as_ref().is_none_or(|(b, _, _)| s > *b) {
                        best = Some((s, node.name.as_str(), reservation));
                    }
                }
                Err(r) => {
                    reasons.insert(node.name.clone(), r);
                }
            }
        }
        let Some((_, node, reservation)) = best else {
            let explanation = Explanation::new(state.nodes.len(), reasons);
            return (placements, Some(explanation));
        };
        let r = &spec.resources;
        if let Some(f) = free.get_mut(node) {
            f.charge(
                &reservation.gpu_uuids,
                r.cpu_millis,
                r.memory_mib,
                reservation.port,
            );
        }
        if let Some(chosen) = state.nodes.get(node) {
            *per_domain.entry(spread_domain(spec, chosen)).or_default() += 1;
        }
        placements.push(Placement {
            deployment: spec.name.clone(),
            node: node.to_string(),
            gpu_uuids: reservation.gpu_uuids,
            cpu_millis: r.cpu_millis,
            memory_mib: r.memory_mib,
            port: reservation.port,
        });
    }
    (placements, None)
}
