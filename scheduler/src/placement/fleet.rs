//! Fleet: one planning round's view of the cluster, built once so the stages after it never
//! search the state again. Nodes in name order (the deterministic tie-break), their free
//! capacity, their policy class, their spread domains as small integers, and, per deployment,
//! the nodes its replicas that should run are on.
//!
//! Building it costs one pass over the nodes and one over the allocations; everything the
//! planner's inner loop reads is then an index into a vector.

use foldhash::{HashMap, HashMapExt};

use super::PolicyOracle;
use super::feasibility::takes_new_work;
use super::fit::Free;
use crate::state::node::{Node, NodeStatus};
use crate::state::{Desired, State, compliance};

pub struct Fleet<'s> {
    /// Every registered node, in name order.
    pub nodes: Vec<&'s Node>,
    /// Free capacity of `nodes[i]`, charged as a plan reserves resources.
    pub free: Vec<Free<'s>>,
    /// Policy class of `nodes[i]` ([`PolicyOracle::node_class`]).
    pub class: Vec<u32>,
    /// One more than the largest class in `class`.
    pub classes: usize,
    /// The nodes of each class, in name order: a deployment's scan visits only the classes
    /// the policy permits it, so the nodes it is forbidden on cost nothing.
    pub by_class: Vec<Vec<usize>>,
    /// `nodes[i]` takes new work: not down, not draining.
    pub usable: Vec<bool>,
    /// `nodes[i]`'s site (country and site) and country as small integers, for spreading.
    pub site: Vec<u32>,
    pub country: Vec<u32>,
    /// How many distinct sites and countries (`site` and `country` are below these).
    pub sites: usize,
    pub countries: usize,
    index: HashMap<&'s str, usize>,
    /// Per deployment: the node index of each of its allocations that count toward its
    /// replicas (`state::compliance::counted`).
    placed: HashMap<&'s str, Vec<usize>>,
    /// Per deployment: its allocations that count toward its replicas.
    running: HashMap<&'s str, u32>,
}

impl<'s> Fleet<'s> {
    pub fn new(state: &'s State, policy: &mut impl PolicyOracle) -> Self {
        let nodes: Vec<&Node> = state.nodes.values().collect();
        let mut free: Vec<Free> = nodes
            .iter()
            .map(|n| Free::of(n, std::iter::empty()))
            .collect();
        let index: HashMap<&str, usize> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.as_str(), i))
            .collect();
        let mut placed: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut running: HashMap<&str, u32> = HashMap::new();
        let disrupted = state.disrupted();
        for a in state.allocations.values() {
            if a.desired != Desired::Run {
                continue;
            }
            // Every allocation that should run holds its resources, also one that is moving
            // away or sits on a down node, until it is told to stop.
            let Some(&i) = index.get(a.node.as_str()) else {
                continue;
            };
            free[i].charge(&a.gpu_uuids, a.cpu_millis, a.memory_mib, a.port);
            // `compliance::counted`, with the node found through the index; only a migrating
            // allocation needs the slower look at its replacement.
            let counts = (nodes[i].status != NodeStatus::Down || disrupted)
                && (!a.standing.is_migrating() || compliance::live_replacement(state, a).is_none());
            if counts {
                *running.entry(a.deployment.as_str()).or_default() += 1;
                placed.entry(a.deployment.as_str()).or_default().push(i);
            }
        }
        let mut sites: HashMap<(&str, &str), u32> = HashMap::new();
        let mut countries: HashMap<&str, u32> = HashMap::new();
        let mut site = Vec::with_capacity(nodes.len());
        let mut country = Vec::with_capacity(nodes.len());
        for n in &nodes {
            let next = sites.len() as u32;
            site.push(
                *sites
                    .entry((n.facts.country.as_str(), n.facts.site.as_str()))
                    .or_insert(next),
            );
            let next = countries.len() as u32;
            country.push(*countries.entry(n.facts.country.as_str()).or_insert(next));
        }
        let (sites, countries) = (sites.len(), countries.len());
        let class: Vec<u32> = nodes.iter().map(|n| policy.node_class(n)).collect();
        let classes = class.iter().max().map_or(0, |&c| c as usize + 1);
        let mut by_class = vec![Vec::new(); classes];
        for (i, &c) in class.iter().enumerate() {
            by_class[c as usize].push(i);
        }
        let usable = nodes.iter().map(|n| takes_new_work(n)).collect();
        Fleet {
            nodes,
            free,
            class,
            classes,
            by_class,
            usable,
            site,
            country,
            sites,
            countries,
            index,
            placed,
            running,
        }
    }

    /// The index of a registered node.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// Whether the policy permits deployment class `deployment` on each node class of this
    /// fleet, asked once per node class: the planner's inner loop then indexes a vector.
    pub fn permitted(&self, deployment: u32, policy: &mut impl PolicyOracle) -> Vec<bool> {
        (0..self.classes)
            .map(|c| {
                !self.by_class[c].is_empty() && policy.forbidding(deployment, c as u32).is_empty()
            })
            .collect()
    }

    /// Node indexes of `deployment`'s replicas that should run on registered nodes.
    pub fn placed(&self, deployment: &str) -> &[usize] {
        self.placed.get(deployment).map_or(&[], Vec::as_slice)
    }

    /// `deployment`'s allocations that count toward its replicas.
    pub fn running(&self, deployment: &str) -> u32 {
        self.running.get(deployment).copied().unwrap_or(0)
    }
}
