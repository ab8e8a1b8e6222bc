//! Select: place every missing replica on the best-scoring feasible node, charging capacity as
//! it goes so the plan never over-commits a node. Ties are broken by node name (nodes are
//! visited in name order and only a strictly better score replaces the current choice), so every
//! replica computes the same plan.
//!
//! One scan of the fleet per deployment finds its candidates (feasible nodes); each replica
//! then picks the best candidate, and only the node just charged is checked again, since a
//! placement changes nothing else a candidate depends on. Explanations (every reason of every
//! node) are built only when asked for, by [`plan_spec`] and [`eligibility`].

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use super::explain::Explanation;
use super::feasibility::check;
use super::fit::{Free, fit};
use super::fleet::Fleet;
use super::score::{SAME_DEPLOYMENT_PENALTY, score};
use super::{Placement, Plan, PolicyOracle};
use crate::state::{DeploymentSpec, Resources, Spread, State};

/// What one deployment should get in a round: `count` new replicas, of which the first
/// `replaces.len()` take over from these migrating allocations (make-before-break).
#[derive(Debug, Clone)]
pub struct Want<'s> {
    pub spec: &'s DeploymentSpec,
    pub count: u32,
    pub replaces: Vec<String>,
}

/// Plans every deployment of `state` that is missing replicas, at most `placements_max`
/// placements in one plan (a bound on the size of one Raft entry and one apply).
pub fn plan(state: &State, policy: &mut impl PolicyOracle, placements_max: usize) -> Plan {
    let fleet = Fleet::new(state, policy);
    let wants: Vec<Want> = state
        .deployments
        .values()
        .map(|d| Want {
            spec: &d.spec,
            count: d.spec.replicas.saturating_sub(fleet.running(&d.spec.name)),
            replaces: Vec::new(),
        })
        .filter(|w| w.count > 0)
        .collect();
    plan_on(fleet, &wants, policy, placements_max)
}

/// Plans exactly `wants` (the reconciler's choice of what each deployment gets this round).
/// Wanting nothing costs nothing: the fleet view (a pass over every node and allocation) is
/// built only when something is to be placed, so the leader's quiet rounds stay cheap.
pub fn plan_wants(
    state: &State,
    wants: &[Want],
    policy: &mut impl PolicyOracle,
    placements_max: usize,
) -> Plan {
    if wants.iter().all(|w| w.count == 0) {
        return Plan::default();
    }
    plan_on(Fleet::new(state, policy), wants, policy, placements_max)
}

fn plan_on(
    mut fleet: Fleet,
    wants: &[Want],
    policy: &mut impl PolicyOracle,
    placements_max: usize,
) -> Plan {
    let mut plan = Plan::default();
    for want in wants {
        let budget = placements_max.saturating_sub(plan.placements.len());
        if budget == 0 {
            break;
        }
        let count = want.count.min(budget as u32);
        if count == 0 {
            continue;
        }
        let (mut placements, complete) = place(&mut fleet, want.spec, count, policy);
        for (p, old) in placements.iter_mut().zip(&want.replaces) {
            p.replaces = old.clone();
        }
        plan.placements.extend(placements);
        if !complete {
            plan.unplaced.push(want.spec.name.clone());
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
    let mut fleet = Fleet::new(state, policy);
    let missing = spec.replicas.saturating_sub(fleet.running(&spec.name));
    let (placements, complete) = place(&mut fleet, spec, missing, policy);
    let explanation = (!complete).then(|| explain(&fleet, spec, policy));
    (placements, explanation)
}

/// Which nodes could take one more replica of `spec` now, and every reason the others cannot.
pub fn eligibility(
    state: &State,
    spec: &DeploymentSpec,
    policy: &mut impl PolicyOracle,
) -> Explanation {
    let fleet = Fleet::new(state, policy);
    explain(&fleet, spec, policy)
}

/// Every reason of every node that cannot take one more replica of `spec` (the slow path:
/// strings for every reason).
fn explain(fleet: &Fleet, spec: &DeploymentSpec, policy: &mut impl PolicyOracle) -> Explanation {
    let class = policy.deployment_class(spec);
    let mut reasons = BTreeMap::new();
    for (i, node) in fleet.nodes.iter().enumerate() {
        let forbidding = policy.forbidding(class, fleet.class[i]);
        if let Err(r) = check(spec, node, &fleet.free[i], forbidding) {
            reasons.insert(node.name.clone(), r);
        }
    }
    Explanation::new(fleet.nodes.len(), reasons)
}

/// The spread domain of node `i` for `spec`; with `Spread::None` all nodes share one domain,
/// so counting replicas there favours no node.
fn domain(fleet: &Fleet, spec: &DeploymentSpec, i: usize) -> u32 {
    match spec.placement.spread {
        Spread::None => 0,
        Spread::Node => i as u32,
        Spread::Site => fleet.site[i],
        Spread::Country => fleet.country[i],
    }
}

/// Places up to `missing` replicas of `spec`, charging `fleet`; `false` when some found no
/// node.
fn place(
    fleet: &mut Fleet,
    spec: &DeploymentSpec,
    missing: u32,
    policy: &mut impl PolicyOracle,
) -> (Vec<Placement>, bool) {
    if missing == 0 {
        return (Vec::new(), true);
    }
    let r = &spec.resources;
    let class = policy.deployment_class(spec);
    // Replicas of this deployment per spread domain (node, site or country).
    let domains = match spec.placement.spread {
        Spread::None => 1,
        Spread::Node => fleet.nodes.len(),
        Spread::Site => fleet.sites,
        Spread::Country => fleet.countries,
    };
    let mut per_domain = vec![0u32; domains];
    for &i in fleet.placed(&spec.name) {
        per_domain[domain(fleet, spec, i) as usize] += 1;
    }
    // Feasible nodes: only the classes the policy permits are visited; then in name order,
    // with their domain and whether they are preferred.
    let p = &spec.placement;
    let permitted = fleet.permitted(class, policy);
    let mut feasible_nodes: Vec<usize> = Vec::new();
    for (c, nodes) in fleet.by_class.iter().enumerate() {
        if permitted[c] {
            feasible_nodes.extend(
                nodes
                    .iter()
                    .copied()
                    .filter(|&i| fleet.usable[i] && fleet.free[i].fits(r)),
            );
        }
    }
    let mut picker = Picker::new(fleet.nodes.len(), spec.placement.spread, domains);
    for &i in &feasible_nodes {
        let node = fleet.nodes[i];
        let preferred = p.prefer_countries.contains(&node.facts.country)
            || p.prefer_sites.contains(&node.facts.site);
        let dom = domain(fleet, spec, i);
        picker.insert(i, dom, preferred, &fleet.free[i], r, &per_domain);
    }
    let mut placements = Vec::new();
    while placements.len() < missing as usize {
        let Some(i) = picker.best(&per_domain) else {
            return (placements, false);
        };
        let free = &mut fleet.free[i];
        // `feasible` agreed, so this fits; were they ever to disagree, the node is dropped
        // rather than over-committed.
        let Ok(reservation) = fit(free, r) else {
            picker.remove(i);
            continue;
        };
        free.charge(
            &reservation.gpu_uuids,
            r.cpu_millis,
            r.memory_mib,
            reservation.port,
        );
        per_domain[picker.domain[i] as usize] += 1;
        if free.fits(r) {
            picker.rescore(i, free, r, &per_domain);
        } else {
            picker.remove(i);
        }
        placements.push(Placement {
            deployment: spec.name.clone(),
            node: fleet.nodes[i].name.clone(),
            gpu_uuids: reservation.gpu_uuids,
            cpu_millis: r.cpu_millis,
            memory_mib: r.memory_mib,
            port: reservation.port,
            replaces: String::new(),
        });
    }
    (placements, true)
}

/// The candidate nodes of one deployment, ordered so that each replica finds the best-scoring
/// node in O(log n) instead of scoring every candidate again (100,000 replacements over 8,000
/// candidates was 40 million scores a round).
///
/// A node's score is its *base* (packing and preference: its own free capacity) minus the spread
/// penalty of its domain (`score` is linear in `replicas_here`). A placement changes the base of
/// the node charged and the penalty of its domain only. So:
/// - spread over nodes: the domain is the node, one max-heap keyed by the whole score, and only
///   the charged node is pushed again;
/// - no spread: every node shares one domain, the penalty shifts all scores alike and is left
///   out, one heap keyed by the base;
/// - spread over sites or countries: one heap per domain keyed by the base, and the best is the
///   best of the domains' tops with their penalties (there are few domains).
///
/// Ties go to the lowest node index (name order), as in a scan that keeps the first strictly
/// better score. Entries are corrected lazily: a popped entry whose key is not the node's
/// current key, or whose node left, is dropped.
struct Picker {
    spread: Spread,
    /// Per domain (one for `None` and `Node`): (key, lowest index first).
    heaps: Vec<BinaryHeap<(i64, Reverse<usize>)>>,
    /// Per fleet index: the current key of a candidate, `None` once it left (or never was).
    key: Vec<Option<i64>>,
    /// Per fleet index: its spread domain, and whether the spec prefers it.
    domain: Vec<u32>,
    preferred: Vec<bool>,
}

impl Picker {
    fn new(nodes: usize, spread: Spread, domains: usize) -> Self {
        let heaps = match spread {
            Spread::None | Spread::Node => 1,
            Spread::Site | Spread::Country => domains,
        };
        Picker {
            spread,
            heaps: vec![BinaryHeap::new(); heaps],
            key: vec![None; nodes],
            domain: vec![0; nodes],
            preferred: vec![false; nodes],
        }
    }

    fn heap_of(&self, i: usize) -> usize {
        match self.spread {
            Spread::None | Spread::Node => 0,
            Spread::Site | Spread::Country => self.domain[i] as usize,
        }
    }

    /// The key node `i` is ordered by in its heap.
    fn key_of(&self, i: usize, free: &Free, r: &Resources, per_domain: &[u32]) -> i64 {
        let own_domain = match self.spread {
            Spread::Node => per_domain[self.domain[i] as usize],
            Spread::None | Spread::Site | Spread::Country => 0,
        };
        score(free, r, own_domain, self.preferred[i])
    }

    fn insert(
        &mut self,
        i: usize,
        domain: u32,
        preferred: bool,
        free: &Free,
        r: &Resources,
        per_domain: &[u32],
    ) {
        self.domain[i] = domain;
        self.preferred[i] = preferred;
        self.rescore(i, free, r, per_domain);
    }

    /// Node `i` was charged (or is new): order it by its current score.
    fn rescore(&mut self, i: usize, free: &Free, r: &Resources, per_domain: &[u32]) {
        let key = self.key_of(i, free, r, per_domain);
        if self.key[i] != Some(key) {
            self.key[i] = Some(key);
            let h = self.heap_of(i);
            self.heaps[h].push((key, Reverse(i)));
        }
    }

    fn remove(&mut self, i: usize) {
        self.key[i] = None;
    }

    /// The best node of heap `h`, dropping stale entries.
    fn top(&mut self, h: usize) -> Option<(i64, usize)> {
        while let Some(&(key, Reverse(i))) = self.heaps[h].peek() {
            if self.key[i] == Some(key) {
                return Some((key, i));
            }
            self.heaps[h].pop();
        }
        None
    }

    /// The best-scoring candidate, lowest index among equals; `None` when none is left.
    fn best(&mut self, per_domain: &[u32]) -> Option<usize> {
        let mut best: Option<(i64, Reverse<usize>)> = None;
        for h in 0..self.heaps.len() {
            let Some((key, i)) = self.top(h) else {
                continue;
            };
            // With sites or countries, heap `h` holds domain `h`.
            let penalty = match self.spread {
                Spread::Site | Spread::Country => {
                    i64::from(per_domain.get(h).copied().unwrap_or(0)) * SAME_DEPLOYMENT_PENALTY
                }
                Spread::None | Spread::Node => 0,
            };
            let candidate = (key - penalty, Reverse(i));
            if best.is_none_or(|b| candidate > b) {
                best = Some(candidate);
            }
        }
        best.map(|(_, Reverse(i))| i)
    }
}
