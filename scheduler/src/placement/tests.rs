//! Placement tests with a fake policy oracle (pure core only): examples for every stage, and
//! property tests over random fleets, specs and rules: no placement on a forbidden node, no
//! over-committed node, same input => same plan.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::fit::{Free, Shortfall};
use super::*;
use crate::state::node::{Gpu, Inventory, NodeFacts, NodeStatus};
use crate::state::{Allocation, Deployment, Desired, Resources};

/// Forbids every node whose country is in `forbidden_countries`, under one rule id. A node's
/// class is its country; all deployments share one class.
struct CountryRule {
    forbidden_countries: Vec<String>,
    /// Country of each node class.
    classes: Vec<String>,
    rule: [Forbid; 1],
}

impl CountryRule {
    fn new(forbidden_countries: Vec<String>) -> Self {
        CountryRule {
            forbidden_countries,
            classes: Vec::new(),
            rule: [Forbid {
                id: "eu-residency".into(),
                reason: "Data must stay in the EU".into(),
                on_change: crate::policy::OnChange::Migrate,
            }],
        }
    }

    fn forbids(&self, node: &Node) -> bool {
        self.forbidden_countries.contains(&node.facts.country)
    }
}

impl PolicyOracle for CountryRule {
    fn node_class(&mut self, node: &Node) -> u32 {
        let country = &node.facts.country;
        match self.classes.iter().position(|c| c == country) {
            Some(i) => i as u32,
            None => {
                self.classes.push(country.clone());
                self.classes.len() as u32 - 1
            }
        }
    }

    fn deployment_class(&mut self, _: &DeploymentSpec) -> u32 {
        0
    }

    fn forbidding(&mut self, _: u32, node: u32) -> &[Forbid] {
        if self
            .forbidden_countries
            .contains(&self.classes[node as usize])
        {
            &self.rule
        } else {
            &[]
        }
    }
}

fn allow_all() -> CountryRule {
    CountryRule::new(Vec::new())
}

/// The planner as first written, one full scan of the nodes per replica with every reason
/// built: the fast planner must produce exactly its plan.
fn reference_plan(s: &State, rule: &CountryRule, placements_max: usize) -> Plan {
    use super::feasibility::check;
    use super::fit::Free;
    let domain = |spec: &DeploymentSpec, n: &Node| match spec.placement.spread {
        crate::state::Spread::None => String::new(),
        crate::state::Spread::Node => n.name.clone(),
        crate::state::Spread::Site => format!("{}/{}", n.facts.country, n.facts.site),
        crate::state::Spread::Country => n.facts.country.clone(),
    };
    let mut free: BTreeMap<&str, Free> = s
        .nodes
        .values()
        .map(|n| (n.name.as_str(), Free::of(n, s.allocations.values())))
        .collect();
    let mut plan = Plan::default();
    for d in s.deployments.values() {
        let spec = &d.spec;
        let budget = placements_max - plan.placements.len();
        if budget == 0 {
            break;
        }
        let missing = missing_replicas(s, spec).min(budget as u32);
        let mut per_domain: BTreeMap<String, u32> = BTreeMap::new();
        for a in s.allocations.values() {
            if a.deployment == spec.name
                && a.desired == Desired::Run
                && let Some(n) = s.nodes.get(&a.node)
            {
                *per_domain.entry(domain(spec, n)).or_default() += 1;
            }
        }
        for _ in 0..missing {
            let mut best: Option<(i64, &Node, fit::Reservation)> = None;
            for n in s.nodes.values() {
                let forbidding: &[Forbid] = if rule.forbids(n) { &rule.rule } else { &[] };
                if let Ok(reservation) = check(spec, n, &free[n.name.as_str()], forbidding) {
                    let p = &spec.placement;
                    let sc = score::score(
                        &free[n.name.as_str()],
                        &spec.resources,
                        per_domain.get(&domain(spec, n)).copied().unwrap_or(0),
                        p.prefer_countries.contains(&n.facts.country)
                            || p.prefer_sites.contains(&n.facts.site),
                    );
                    if best.as_ref().is_none_or(|(b, _, _)| sc > *b) {
                        best = Some((sc, n, reservation));
                    }
                }
            }
            let Some((_, n, reservation)) = best else {
                plan.unplaced.push(spec.name.clone());
                break;
            };
            let r = &spec.resources;
            free.get_mut(n.name.as_str()).unwrap().charge(
                &reservation.gpu_uuids,
                r.cpu_millis,
                r.memory_mib,
                reservation.port,
            );
            *per_domain.entry(domain(spec, n)).or_default() += 1;
            plan.placements.push(Placement {
                deployment: spec.name.clone(),
                node: n.name.clone(),
                gpu_uuids: reservation.gpu_uuids,
                cpu_millis: r.cpu_millis,
                memory_mib: r.memory_mib,
                port: reservation.port,
                replaces: String::new(),
            });
        }
    }
    plan
}

fn node(name: &str, country: &str, gpus: &[u64]) -> Node {
    Node {
        name: name.into(),
        facts: NodeFacts {
            country: country.into(),
            ..Default::default()
        },
        inventory: Inventory {
            cpu_millis: 32_000,
            memory_mib: 256 * 1024,
            gpus: gpus
                .iter()
                .enumerate()
                .map(|(i, mib)| Gpu {
                    index: i as u32,
                    uuid: format!("{name}-gpu{i}"),
                    model: "H100".into(),
                    memory_mib: *mib,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn deployment(name: &str, replicas: u32, gpus: u32, gpu_mib: u64) -> Deployment {
    Deployment {
        spec: DeploymentSpec {
            name: name.into(),
            model: "m".into(),
            replicas,
            resources: Resources {
                gpu_count: gpus,
                gpu_memory_mib: gpu_mib,
                cpu_millis: 1_000,
                memory_mib: 1_024,
                ..Default::default()
            },
            ..Default::default()
        },
        generation: 1,
        created_at_ms: 0,
        updated_at_ms: 0,
        revision: 1,
        moves: Default::default(),
    }
}

fn state(nodes: Vec<Node>, deployments: Vec<Deployment>) -> State {
    State {
        nodes: nodes.into_iter().map(|n| (n.name.clone(), n)).collect(),
        deployments: deployments
            .into_iter()
            .map(|d| (d.spec.name.clone(), d))
            .collect(),
        ..Default::default()
    }
}

#[test]
fn packs_gpus_and_spreads_replicas() {
    let s = state(
        vec![
            node("a", "FR", &[81_920; 4]),
            node("b", "FR", &[81_920; 2]),
            node("c", "DE", &[81_920; 8]),
        ],
        vec![deployment("llm", 2, 1, 40_000)],
    );
    let plan = plan(&s, &mut allow_all(), 100);
    let nodes: Vec<&str> = plan.placements.iter().map(|p| p.node.as_str()).collect();
    // b is the fullest fit for the first replica; the second avoids b (spread), then packs on a.
    assert_eq!(nodes, ["b", "a"]);
    assert_eq!(plan.placements[0].gpu_uuids, ["b-gpu0"]);
    assert_eq!(plan.placements[0].port, fit::PORT_FIRST);
    assert!(plan.unplaced.is_empty());
}

#[test]
fn spreads_over_sites_or_countries_and_honours_preferences() {
    let mut nodes = vec![
        node("de-1", "DE", &[81_920; 8]),
        node("fr-1", "FR", &[81_920; 2]),
        node("fr-2", "FR", &[81_920; 2]),
    ];
    for n in &mut nodes {
        n.facts.site = format!("{}-site", n.facts.country);
    }
    let mut d = deployment("llm", 2, 1, 0);
    d.spec.placement.spread = crate::state::Spread::Country;
    let s = state(nodes.clone(), vec![d.clone()]);
    let placed: Vec<String> = plan(&s, &mut allow_all(), 100)
        .placements
        .into_iter()
        .map(|p| p.node)
        .collect();
    assert_eq!(placed, ["fr-1", "de-1"], "one replica per country");

    d.spec.placement.spread = crate::state::Spread::None;
    let s = state(nodes.clone(), vec![d.clone()]);
    let placed: Vec<String> = plan(&s, &mut allow_all(), 100)
        .placements
        .into_iter()
        .map(|p| p.node)
        .collect();
    assert_eq!(
        placed,
        ["fr-1", "fr-1"],
        "no spreading: pack the fullest node"
    );

    d.spec.placement.spread = crate::state::Spread::Node;
    d.spec.placement.prefer_countries = vec!["DE".into()];
    d.spec.replicas = 1;
    let s = state(nodes, vec![d]);
    assert_eq!(
        plan(&s, &mut allow_all(), 100).placements[0].node,
        "de-1",
        "preference beats packing"
    );
}

#[test]
fn explains_every_node_once_in_the_summary_and_every_reason_per_node() {
    let mut down = node("d-down", "FR", &[81_920]);
    down.status = NodeStatus::Down;
    let s = state(
        vec![
            node("us-1", "US", &[81_920]),
            node("us-2", "US", &[40_960]),
            node("fr-small", "FR", &[40_960, 24_576]),
            down,
        ],
        vec![deployment("big", 1, 1, 81_920)],
    );
    let mut policy = CountryRule::new(vec!["US".into()]);
    let plan = plan(&s, &mut policy, 100);
    assert!(plan.placements.is_empty());
    assert_eq!(plan.unplaced, ["big"]);
    let (placements, why) = plan_spec(&s, &s.deployments["big"].spec, &mut policy);
    assert!(placements.is_empty());
    let why = why.expect("explained");
    assert_eq!(
        why,
        eligibility(&s, &s.deployments["big"].spec, &mut policy)
    );
    assert_eq!(
        why.to_string(),
        "0/4 nodes eligible: 1 down, 1 insufficient GPU memory (need 80 GiB per GPU, largest free 40 GiB), \
         2 forbidden by policy eu-residency (\"Data must stay in the EU\")"
    );
    // us-2 fails twice: policy and GPU memory; both are kept.
    assert_eq!(why.per_node["us-2"].len(), 2);
    assert!(matches!(
        why.per_node["us-2"][1],
        feasibility::Reason::Short(Shortfall::GpuMemory { .. })
    ));
}

#[test]
fn running_allocations_hold_their_resources() {
    let mut s = state(
        vec![node("a", "FR", &[81_920; 2])],
        vec![deployment("x", 3, 1, 0)],
    );
    s.allocations.insert(
        "x-1-0".into(),
        Allocation {
            id: "x-1-0".into(),
            deployment: "x".into(),
            node: "a".into(),
            gpu_uuids: vec!["a-gpu0".into()],
            port: fit::PORT_FIRST,
            cpu_millis: 1_000,
            memory_mib: 1_024,
            ..Default::default()
        },
    );
    let plan = plan(&s, &mut allow_all(), 100);
    assert_eq!(
        plan.placements.len(),
        1,
        "one replica runs, one GPU is left: {plan:?}"
    );
    assert_eq!(plan.placements[0].gpu_uuids, ["a-gpu1"]);
    assert_eq!(plan.placements[0].port, fit::PORT_FIRST + 1);
    assert_eq!(plan.unplaced, ["x"]);
    assert_eq!(
        plan_spec(&s, &s.deployments["x"].spec, &mut allow_all())
            .1
            .unwrap()
            .to_string(),
        "0/1 nodes eligible: 1 insufficient GPUs (need 1, 0 free)"
    );
}

#[test]
fn stopped_allocations_free_their_resources() {
    let mut s = state(
        vec![node("a", "FR", &[81_920])],
        vec![deployment("x", 1, 1, 0)],
    );
    s.allocations.insert(
        "x-1-0".into(),
        Allocation {
            deployment: "x".into(),
            node: "a".into(),
            gpu_uuids: vec!["a-gpu0".into()],
            desired: Desired::Stop,
            ..Default::default()
        },
    );
    assert_eq!(
        Free::of(&s.nodes["a"], s.allocations.values()).gpus.len(),
        1
    );
    assert_eq!(plan(&s, &mut allow_all(), 100).placements.len(), 1);
}

#[test]
fn the_plan_size_is_bounded() {
    let s = state(
        vec![node("a", "FR", &[])],
        vec![deployment("cpu", 50, 0, 0)],
    );
    assert_eq!(plan(&s, &mut allow_all(), 7).placements.len(), 7);
}

fn arb_node(i: usize) -> impl Strategy<Value = Node> {
    (
        prop::sample::select(vec!["FR", "DE", "US", "CN"]),
        prop::collection::vec(prop::sample::select(vec![24_576u64, 40_960, 81_920]), 0..5),
        1u32..16,
        any::<bool>(),
        any::<bool>(),
        (prop::sample::select(vec!["a", "b"]), 0u16..4),
    )
        .prop_map(
            move |(country, gpus, cores, down, draining, (site, ports))| {
                let mut n = node(&format!("n{i:02}"), country, &gpus);
                n.facts.site = site.into();
                // Sometimes a port range of 1 to 3 ports, so ports run out too.
                if ports > 0 {
                    n.inventory.port_first = 30_000;
                    n.inventory.port_last = 30_000 + ports - 1;
                }
                n.inventory.cpu_millis = cores * 1_000;
                n.inventory.memory_mib = u64::from(cores) * 4_096;
                n.status = if down {
                    NodeStatus::Down
                } else {
                    NodeStatus::Ready
                };
                n.draining = draining && !down;
                n
            },
        )
}

fn arb_state() -> impl Strategy<Value = (State, Vec<String>)> {
    let nodes = (1usize..12).prop_flat_map(|n| (0..n).map(arb_node).collect::<Vec<_>>());
    let deployments = prop::collection::vec(
        (
            1u32..5,
            0u32..3,
            prop::sample::select(vec![0u64, 30_000, 70_000]),
            prop::sample::select(vec![
                crate::state::Spread::None,
                crate::state::Spread::Node,
                crate::state::Spread::Site,
                crate::state::Spread::Country,
            ]),
            prop::option::of(prop::sample::select(vec!["FR", "US"])),
        ),
        1..6,
    );
    let forbidden = prop::sample::subsequence(
        vec!["FR".to_string(), "DE".into(), "US".into(), "CN".into()],
        0..3,
    );
    (nodes, deployments, forbidden).prop_map(|(nodes, deps, forbidden)| {
        let deps = deps
            .into_iter()
            .enumerate()
            .map(|(i, (r, g, m, spread, prefer))| {
                let mut d = deployment(&format!("d{i}"), r, g, m);
                d.spec.placement.spread = spread;
                d.spec.placement.prefer_countries = prefer.into_iter().map(String::from).collect();
                d
            })
            .collect();
        (state(nodes, deps), forbidden)
    })
}

proptest! {
    #[test]
    fn plans_obey_policy_capacity_and_are_deterministic((s, forbidden) in arb_state()) {
        let mut policy = CountryRule::new(forbidden.clone());
        let first = plan(&s, &mut policy, 1_000);
        let again = plan(&s, &mut CountryRule::new(forbidden.clone()), 1_000);
        prop_assert_eq!(&first, &again);
        // The quick checks of the planner's scan agree with the full ones.
        for d in s.deployments.values() {
            for n in s.nodes.values() {
                let free = super::fit::Free::of(n, s.allocations.values());
                let forbidding: &[Forbid] = if policy.forbids(n) { &policy.rule } else { &[] };
                prop_assert_eq!(free.fits(&d.spec.resources), fit::fit(&free, &d.spec.resources).is_ok());
                prop_assert_eq!(
                    feasibility::feasible(&d.spec, n, &free, forbidding),
                    feasibility::check(&d.spec, n, &free, forbidding).is_ok()
                );
            }
        }
        // The one-scan planner decides exactly as a full scan per replica would.
        prop_assert_eq!(&first, &reference_plan(&s, &policy, 1_000));
        let bounded = plan(&s, &mut policy, 3);
        prop_assert_eq!(&bounded, &reference_plan(&s, &policy, 3));
        // Again with the first plan running and one more replica wanted everywhere: running
        // replicas hold resources and count for spreading.
        let mut grown = s.clone();
        for (i, p) in first.placements.iter().enumerate() {
            let id = format!("{}-1-{i}", p.deployment);
            grown.allocations.insert(id.clone(), Allocation {
                id,
                deployment: p.deployment.clone(),
                node: p.node.clone(),
                gpu_uuids: p.gpu_uuids.clone(),
                cpu_millis: p.cpu_millis,
                memory_mib: p.memory_mib,
                port: p.port,
                ..Default::default()
            });
        }
        for d in grown.deployments.values_mut() {
            d.spec.replicas += 1;
        }
        prop_assert_eq!(plan(&grown, &mut policy, 1_000), reference_plan(&grown, &policy, 1_000));

        // Per node: CPU, memory, GPU uuids and ports the plan hands out.
        type Used<'a> = (u32, u64, Vec<&'a String>, Vec<u16>);
        let mut used: BTreeMap<&str, Used> = BTreeMap::new();
        for p in &first.placements {
            let n = &s.nodes[&p.node];
            prop_assert!(!forbidden.contains(&n.facts.country), "placed on a forbidden node");
            prop_assert!(n.status == NodeStatus::Ready && !n.draining);
            let u = used.entry(p.node.as_str()).or_default();
            u.0 += p.cpu_millis;
            u.1 += p.memory_mib;
            u.2.extend(p.gpu_uuids.iter());
            u.3.push(p.port);
            let d = &s.deployments[&p.deployment].spec;
            prop_assert_eq!(p.gpu_uuids.len() as u32, d.resources.gpu_count);
            for uuid in &p.gpu_uuids {
                let gpu = n.inventory.gpus.iter().find(|g| &g.uuid == uuid).unwrap();
                prop_assert!(gpu.memory_mib >= d.resources.gpu_memory_mib);
            }
        }
        for (name, (cpu, mem, gpus, ports)) in used {
            let n = &s.nodes[name];
            prop_assert!(cpu <= n.inventory.cpu_millis && mem <= n.inventory.memory_mib, "over-committed {}", name);
            let mut unique = gpus.clone();
            unique.sort();
            unique.dedup();
            prop_assert_eq!(unique.len(), gpus.len(), "a GPU was given twice on {}", name);
            let mut p = ports.clone();
            p.sort();
            p.dedup();
            prop_assert_eq!(p.len(), ports.len());
        }
        for d in s.deployments.values() {
            let placed = first.placements.iter().filter(|p| p.deployment == d.spec.name).count() as u32;
            let unplaced = first.unplaced.contains(&d.spec.name);
            prop_assert!(placed == d.spec.replicas || unplaced, "replicas neither placed nor explained");
        }
    }
}
