//! Applying a placement plan: every placement is re-checked against the state and the policy in
//! force at *this* index (Nomad's plan-applier idea), so a plan computed from an older snapshot
//! can never land a replica where the policy now forbids it (invariant I1) or over-commit a node
//! (invariant I6). Stale parts are rejected; the leader re-plans them.

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use serde::{Deserialize, Serialize};

use super::compliance::{self, NodesUp, PlannedStop, Tally};
use super::{Allocation, Desired, Outcome, Standing, State};
use crate::placement::feasibility::{Reason, check};
use crate::placement::fit::{Free, verify};
use crate::placement::{Forbid, Placement, PolicyOracle};
use crate::policy::{CompiledPolicy, Evaluator};

/// Most placements one plan may carry: bounds one Raft entry (141 bytes of JSON per placement
/// in the benchmark fleet, a few hundred with 8 GPU ids, so at most about 8 MiB) and one
/// apply (about 5 ms per thousand with a warm evaluator).
/// Large enough that the fixed cost of a round (a copy of the state, the fleet view, one
/// commit: half a second in a busy 100,000-allocation cluster) is shared by many placements,
/// so a rule change that moves 20,000 replicas places their replacements in one round
/// (docs/benchmarks.md, Placement and Rule changes).
pub const PLAN_PLACEMENTS_MAX: usize = 20_000;

/// A placement the apply refused, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedPlacement {
    pub deployment: String,
    pub node: String,
    pub reason: String,
}

/// The policy as placement sees it: the [`Evaluator`] of the version in force for one day,
/// with the forbidding rules of each distinct decision mapped once to placement's [`Forbid`];
/// no version in force forbids everything.
///
/// [`PolicyGate::for_state`] borrows the evaluator kept beside the state (`PolicyCache`) and
/// gives it back when dropped, so decisions survive from one planning round and one apply to
/// the next while the version and the day stay the same. Two gates at once (the leader's
/// planner and an apply) simply do not share: the second starts a fresh evaluator.
pub struct PolicyGate {
    memo: Option<GateMemo>,
    /// Where `memo` goes back to when the gate is dropped.
    home: Option<super::policies::PolicyCache>,
    no_policy: [Forbid; 1],
}

/// An evaluator and the [`Forbid`] lists of its decisions (`forbids[decision id]`).
pub(super) struct GateMemo {
    pub version: u64,
    pub evaluator: Evaluator,
    forbids: Vec<Vec<Forbid>>,
}

impl PolicyGate {
    /// A gate for `state`'s policy in force on `today`, reusing the evaluator its cache holds
    /// when that was made for the same version and day.
    pub fn for_state(state: &State, today: &str) -> Self {
        let Some((version, compiled)) = state.active_policy() else {
            return Self::with_policy(None, today);
        };
        let memo = state
            .policy_cache
            .take_gate()
            .filter(|m| {
                m.version == version
                    && m.evaluator.is_for(&compiled, today)
                    && !m.evaluator.oversized()
            })
            .unwrap_or_else(|| GateMemo::new(version, &compiled, today));
        PolicyGate {
            memo: Some(memo),
            home: Some(state.policy_cache.clone()),
            no_policy: Self::no_policy(),
        }
    }

    /// A gate for `policy` (version and compiled bundle) on `today` that shares nothing.
    pub fn with_policy(policy: Option<(u64, &CompiledPolicy)>, today: &str) -> Self {
        PolicyGate {
            memo: policy.map(|(version, compiled)| GateMemo::new(version, compiled, today)),
            home: None,
            no_policy: Self::no_policy(),
        }
    }

    fn no_policy() -> [Forbid; 1] {
        [Forbid {
            id: "no-policy".into(),
            reason:
                "no policy bundle is in force; apply one with `sovctl policy apply deploy/policies`"
                    .into(),
            on_change: crate::policy::OnChange::Migrate,
        }]
    }

    /// Gives the evaluator to `cache` when the gate is dropped (see [`Self::for_state`]), for a
    /// gate made with [`Self::with_policy`] for the version about to be in force.
    pub fn keep_in(&mut self, cache: &super::policies::PolicyCache) {
        self.home = Some(cache.clone());
    }

    /// The policy version decisions are made under; 0 when none is in force.
    pub fn version(&self) -> u64 {
        self.memo.as_ref().map_or(0, |m| m.version)
    }

    /// The evaluator, when a policy is in force (for counting Cedar evaluations).
    pub fn evaluator(&self) -> Option<&Evaluator> {
        self.memo.as_ref().map(|m| &m.evaluator)
    }
}

impl GateMemo {
    fn new(version: u64, compiled: &CompiledPolicy, today: &str) -> Self {
        GateMemo {
            version,
            evaluator: Evaluator::new(compiled, today),
            forbids: Vec::new(),
        }
    }
}

impl Drop for PolicyGate {
    fn drop(&mut self) {
        if let (Some(home), Some(memo)) = (&self.home, self.memo.take()) {
            home.put_gate(memo);
        }
    }
}

impl PolicyOracle for PolicyGate {
    fn node_class(&mut self, node: &super::node::Node) -> u32 {
        self.memo
            .as_mut()
            .map_or(0, |m| m.evaluator.node_class(node))
    }

    fn deployment_class(&mut self, deployment: &super::DeploymentSpec) -> u32 {
        self.memo
            .as_mut()
            .map_or(0, |m| m.evaluator.deployment_class(deployment))
    }

    fn forbidding(&mut self, deployment: u32, node: u32) -> &[Forbid] {
        let Some(memo) = self.memo.as_mut() else {
            return &self.no_policy;
        };
        let id = memo.evaluator.decision_id(deployment, node) as usize;
        while memo.forbids.len() <= id {
            let decision = memo.evaluator.decision(memo.forbids.len() as u32);
            memo.forbids.push(
                decision
                    .forbidding
                    .iter()
                    .map(|r| Forbid {
                        id: r.id.clone(),
                        reason: r.reason.clone(),
                        on_change: r.on_change,
                    })
                    .collect(),
            );
        }
        &memo.forbids[id]
    }
}

/// The UTC calendar day (YYYY-MM-DD) of a leader timestamp: certifications are in force by day.
pub fn day_of(at_ms: i64) -> String {
    // Days since 1970-01-01 to civil date (Howard Hinnant's algorithm), so apply needs no clock
    // or time-zone database.
    let days = at_ms.div_euclid(86_400_000);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

pub(super) fn apply_plan(
    state: &mut State,
    index: u64,
    at_ms: i64,
    placements: &[Placement],
    stops: &[PlannedStop],
) -> Outcome {
    let mut gate = PolicyGate::for_state(state, &compliance::today(state));
    let policy_version = gate.version();

    // Free capacity of the nodes this plan touches and the tallies of the deployments it
    // places, computed in one pass over allocations; then charged as placements are accepted.
    // Hash maps: one lookup per allocation of the state, and plans touch thousands of nodes.
    // Beside them, the policy class of each such node and deployment, asked once: classifying
    // hashes the node's facts or builds the deployment's signature, and a plan of 20,000
    // placements names each deployment a hundred times.
    let mut free: HashMap<&str, (Free<'_>, u32)> = HashMap::new();
    let mut tallies: HashMap<&str, (Tally, u32)> = HashMap::new();
    let up = NodesUp::of(state);
    for p in placements {
        if let Some(node) = state.nodes.get(&p.node) {
            free.entry(node.name.as_str())
                .or_insert_with(|| (Free::of(node, std::iter::empty()), gate.node_class(node)));
        }
        if let Some(d) = state.deployments.get(&p.deployment) {
            tallies
                .entry(d.spec.name.as_str())
                .or_insert_with(|| (Tally::default(), gate.deployment_class(&d.spec)));
        }
    }
    for a in state.allocations.values() {
        if a.desired != Desired::Run {
            continue;
        }
        if let Some((f, _)) = free.get_mut(a.node.as_str()) {
            f.charge(&a.gpu_uuids, a.cpu_millis, a.memory_mib, a.port);
        }
        if let Some((t, _)) = tallies.get_mut(a.deployment.as_str()) {
            t.add(state, &up, a);
        }
    }
    // Decided against the state as of this index, then stored once every placement is judged
    // (`free` borrows the nodes).
    let mut accepted: Vec<Allocation> = Vec::new();
    let mut rejected = Vec::new();
    // Migrating allocations given a replacement by this plan, and the replacement's id; the
    // set answers "already replaced by this plan?" without a scan (20,000 moves in one plan).
    let mut replaced: Vec<(String, String)> = Vec::new();
    let mut replacing: HashSet<&str> = HashSet::new();
    for (i, p) in placements.iter().enumerate() {
        let reject = |reason: String| RejectedPlacement {
            deployment: p.deployment.clone(),
            node: p.node.clone(),
            reason,
        };
        let (Some(deployment), Some((tally, deployment_class))) = (
            state.deployments.get(&p.deployment),
            tallies.get_mut(p.deployment.as_str()),
        ) else {
            rejected.push(reject("the deployment no longer exists".into()));
            continue;
        };
        if p.replaces.is_empty() {
            if tally.counted >= deployment.spec.replicas {
                rejected.push(reject("the deployment has all its replicas".into()));
                continue;
            }
        } else if let Err(reason) = replaceable(state, &p.replaces, &p.deployment, &replacing) {
            rejected.push(reject(reason));
            continue;
        } else if tally.inflight >= deployment.spec.migration.max_parallel {
            rejected.push(reject(format!(
                "the deployment already has {} replacements starting (max_parallel)",
                tally.inflight
            )));
            continue;
        }
        let (Some(node), Some((node_free, node_class))) =
            (state.nodes.get(&p.node), free.get_mut(p.node.as_str()))
        else {
            rejected.push(reject("the node is not registered".into()));
            continue;
        };
        // Status and policy as of this index; the reservation the planner chose, exactly.
        let policy_and_status: Vec<Reason> = match check(
            &deployment.spec,
            node,
            node_free,
            gate.forbidding(*deployment_class, *node_class),
        ) {
            Ok(_) => Vec::new(),
            Err(reasons) => reasons
                .into_iter()
                .filter(|r| !matches!(r, Reason::Short(_)))
                .collect(),
        };
        if let Some(first) = policy_and_status.first() {
            rejected.push(reject(first.to_string()));
            continue;
        }
        let r = &deployment.spec.resources;
        if let Err(short) = verify(node_free, r, &p.gpu_uuids, p.port) {
            rejected.push(reject(
                short.first().map(|s| s.to_string()).unwrap_or_default(),
            ));
            continue;
        }
        node_free.charge(&p.gpu_uuids, r.cpu_millis, r.memory_mib, p.port);
        let id = format!("{}-{index}-{i}", p.deployment);
        if p.replaces.is_empty() {
            tally.counted += 1;
        } else {
            // The old one stops counting and the new one counts: the total stays.
            tally.inflight += 1;
            replacing.insert(p.replaces.as_str());
            replaced.push((p.replaces.clone(), id.clone()));
        }
        accepted.push(Allocation {
            id,
            deployment: p.deployment.clone(),
            node: p.node.clone(),
            gpu_uuids: p.gpu_uuids.clone(),
            cpu_millis: r.cpu_millis,
            memory_mib: r.memory_mib,
            port: p.port,
            desired: Desired::Run,
            generation: deployment.generation,
            policy_version,
            created_at_ms: at_ms,
            revision: index,
            replaces: p.replaces.clone(),
            ..Allocation::default()
        });
    }
    drop(free);
    drop(up);
    drop(gate);
    let today = compliance::today(state);
    let eligible = crate::history::eligibility(policy_version);
    // Each node's facts, made and encoded once however many replicas this plan puts there.
    let mut facts: HashMap<String, crate::history::SharedFacts> = HashMap::new();
    let mut placed = Vec::with_capacity(accepted.len());
    for allocation in accepted {
        if let Some(node) = state.nodes.get(&allocation.node) {
            let node_facts = match facts.get(allocation.node.as_str()) {
                Some(known) => known.clone(),
                None => {
                    let made = crate::history::SharedFacts::new(crate::history::Facts::of(
                        &node.facts,
                        &today,
                    ));
                    facts.insert(allocation.node.clone(), made.clone());
                    made
                }
            };
            let event = crate::history::placed(&allocation, node_facts, eligible.clone());
            crate::history::record(state, event);
        }
        super::nodes::touch_assignments(state, &allocation.node, index);
        placed.push(allocation.id.clone());
        state.allocations.insert(allocation.id.clone(), allocation);
    }
    for (old, new) in replaced {
        if let Some(Standing::Migrating { replacement, .. }) =
            state.allocations.get_mut(&old).map(|a| &mut a.standing)
        {
            *replacement = new;
        }
    }
    let (stopped, rejected_stops) = compliance::apply_stops(state, index, at_ms, stops);
    Outcome::PlanApplied {
        placed,
        rejected,
        stopped,
        rejected_stops,
    }
}

/// Whether allocation `old` of `deployment` may get a replacement now: it should run, it is
/// migrating, it has no live replacement, and this plan gives it no other.
fn replaceable(
    state: &State,
    old: &str,
    deployment: &str,
    replacing: &HashSet<&str>,
) -> Result<(), String> {
    let Some(a) = state
        .allocations
        .get(old)
        .filter(|a| a.deployment == deployment)
    else {
        return Err(format!(
            "the allocation it replaces ({old}) no longer exists"
        ));
    };
    if !compliance::live(state, a) || !a.standing.is_migrating() {
        return Err(format!(
            "the allocation it replaces ({old}) is not migrating any more"
        ));
    }
    if compliance::live_replacement(state, a).is_some() || replacing.contains(old) {
        return Err(format!(
            "the allocation it replaces ({old}) already has a replacement"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::day_of;
    use crate::placement::Placement;
    use crate::state::node::{Gpu, Inventory, NodeFacts};
    use crate::state::policies::PolicyBundle;
    use crate::state::{
        Command, DeploymentSpec, NodeRegistration, Outcome, Proposal, Residency, Resources, State,
        apply,
    };

    fn shipped_bundle() -> BTreeMap<String, String> {
        crate::policy::tests::shipped_files()
    }

    /// Applies `proposals` in order at indexes 1.., returning the last outcome.
    fn run(state: &mut State, proposals: Vec<Proposal>) -> Outcome {
        let mut last = Outcome::Noop;
        for proposal in proposals {
            let index = state.revision + 1;
            last = apply(
                state,
                index,
                &Command {
                    at_ms: 1_795_305_600_000,
                    proposal,
                },
            );
        }
        last
    }

    fn register(name: &str, country: &str) -> Proposal {
        let gpu = Gpu {
            uuid: format!("{name}-g0"),
            model: "NVIDIA H100 80GB HBM3".into(),
            memory_mib: 81_559,
            simulated: true,
            ..Default::default()
        };
        Proposal::RegisterNode {
            node: Box::new(NodeRegistration {
                name: name.into(),
                facts: NodeFacts {
                    country: country.into(),
                    operator_hq: country.into(),
                    ultimate_parent_hq: country.into(),
                    ..Default::default()
                },
                inventory: Inventory {
                    cpu_millis: 8_000,
                    memory_mib: 65_536,
                    gpus: vec![gpu],
                    ..Default::default()
                },
            }),
        }
    }

    fn placement(node: &str) -> Placement {
        Placement {
            deployment: "eu".into(),
            node: node.into(),
            gpu_uuids: vec![format!("{node}-g0")],
            cpu_millis: 0,
            memory_mib: 0,
            port: 20_000,
            replaces: String::new(),
        }
    }

    #[test]
    fn apply_rechecks_every_placement_against_state_and_policy() {
        let mut state = State::default();
        let spec = DeploymentSpec {
            name: "eu".into(),
            model: "m".into(),
            replicas: 1,
            resources: Resources {
                gpu_count: 1,
                ..Default::default()
            },
            residency: Residency {
                allowed: vec!["EU27".into()],
                ..Default::default()
            },
            ..Default::default()
        };
        run(
            &mut state,
            vec![
                register("fr", "FR"),
                register("us", "US"),
                Proposal::ApplyDeployment {
                    spec: Box::new(spec),
                    expected_generation: None,
                },
            ],
        );

        // No policy in force: nothing may be placed (fail closed).
        let Outcome::PlanApplied {
            placed, rejected, ..
        } = run(
            &mut state,
            vec![Proposal::ApplyPlan {
                placements: vec![placement("fr")],
                stops: vec![],
            }],
        )
        else {
            panic!()
        };
        assert!(placed.is_empty());
        assert!(rejected[0].reason.contains("no-policy"), "{rejected:?}");

        let bundle = PolicyBundle {
            files: shipped_bundle(),
            author: "reviewer-1".into(),
            comment: "default".into(),
        };
        let Outcome::PolicyApplied {
            version: 1,
            changed: true,
            ..
        } = run(
            &mut state,
            vec![Proposal::ApplyPolicy {
                bundle: Box::new(bundle.clone()),
                expected_plan_hash: None,
            }],
        )
        else {
            panic!()
        };
        let Outcome::PolicyApplied {
            version: 1,
            changed: false,
            ..
        } = run(
            &mut state,
            vec![Proposal::ApplyPolicy {
                bundle: Box::new(bundle),
                expected_plan_hash: None,
            }],
        )
        else {
            panic!("same files, same version")
        };

        // A plan computed without the policy in mind: the US placement is refused at apply.
        let Outcome::PlanApplied {
            placed, rejected, ..
        } = run(
            &mut state,
            vec![Proposal::ApplyPlan {
                placements: vec![placement("us"), placement("fr")],
                stops: vec![],
            }],
        )
        else {
            panic!()
        };
        assert_eq!(placed.len(), 1);
        assert!(rejected[0].reason.contains("residency"), "{rejected:?}");
        let allocation = &state.allocations[&placed[0]];
        assert_eq!(
            (
                allocation.node.as_str(),
                allocation.policy_version,
                allocation.generation
            ),
            ("fr", 1, 1)
        );

        // Stale: the deployment already has its replica, and the GPU is taken.
        let Outcome::PlanApplied {
            placed, rejected, ..
        } = run(
            &mut state,
            vec![Proposal::ApplyPlan {
                placements: vec![placement("fr")],
                stops: vec![],
            }],
        )
        else {
            panic!()
        };
        assert!(placed.is_empty());
        assert_eq!(rejected[0].reason, "the deployment has all its replicas");

        // An invalid bundle is refused whole and changes nothing.
        let mut broken = shipped_bundle();
        broken.insert(
            "residency.cedar".into(),
            "forbid (principal, action, resource".into(),
        );
        let Outcome::Rejected(crate::state::Rejection::InvalidPolicy(problems)) = run(
            &mut state,
            vec![Proposal::ApplyPolicy {
                bundle: Box::new(PolicyBundle {
                    files: broken,
                    ..Default::default()
                }),
                expected_plan_hash: None,
            }],
        ) else {
            panic!()
        };
        assert!(problems.contains("residency.cedar:1:"), "{problems}");
        assert_eq!(state.policies.len(), 1);
    }

    #[test]
    fn days_are_civil_utc_dates() {
        assert_eq!(day_of(0), "1970-01-01");
        assert_eq!(day_of(951_782_400_000), "2000-02-29");
        assert_eq!(day_of(1_795_305_600_000 - 1), "2026-11-21");
        assert_eq!(day_of(1_795_305_600_000), "2026-11-22");
        assert_eq!(day_of(-1), "1969-12-31");
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;
        use crate::placement;
        use crate::policy;
        use crate::state::plan::PolicyGate;
        use crate::state::{Deployment, ExportAttrs};

        const COUNTRIES: [&str; 8] = ["FR", "DE", "PL", "IE", "US", "CN", "CH", "GB"];

        fn arb_node(i: usize) -> impl Strategy<Value = crate::state::node::Node> {
            (
                prop::sample::select(&COUNTRIES[..]),
                prop::sample::select(&COUNTRIES[..]),
                0usize..5,
            )
                .prop_map(move |(country, parent, gpus)| {
                    let name = format!("n{i:02}");
                    crate::state::node::Node {
                        facts: NodeFacts {
                            country: country.into(),
                            operator_hq: country.into(),
                            ultimate_parent_hq: parent.into(),
                            ..Default::default()
                        },
                        inventory: Inventory {
                            cpu_millis: 16_000,
                            memory_mib: 65_536,
                            gpus: (0..gpus)
                                .map(|g| Gpu {
                                    uuid: format!("{name}-g{g}"),
                                    model: "NVIDIA H100 80GB HBM3".into(),
                                    memory_mib: 81_559,
                                    simulated: true,
                                    ..Default::default()
                                })
                                .collect(),
                            ..Default::default()
                        },
                        name,
                        ..Default::default()
                    }
                })
        }

        fn arb_deployment(i: usize) -> impl Strategy<Value = Deployment> {
            (
                prop::sample::select(vec![
                    vec![],
                    vec!["EU27".to_string()],
                    vec!["EEA".to_string()],
                    vec!["US-Tier1".to_string(), "CH".to_string()],
                ]),
                any::<bool>(),
                1u32..4,
                0u32..3,
            )
                .prop_map(move |(allowed, controlled, replicas, gpus)| Deployment {
                    spec: DeploymentSpec {
                        name: format!("d{i}"),
                        model: "m".into(),
                        replicas,
                        resources: Resources {
                            gpu_count: gpus,
                            cpu_millis: 1_000,
                            memory_mib: 1_024,
                            ..Default::default()
                        },
                        export: ExportAttrs {
                            eccn: if controlled {
                                "4E091".into()
                            } else {
                                "EAR99".into()
                            },
                            ..Default::default()
                        },
                        residency: Residency {
                            allowed,
                            ..Default::default()
                        },
                        ..Default::default()
                    },
                    generation: 1,
                    created_at_ms: 0,
                    updated_at_ms: 0,
                    revision: 1,
                    moves: Default::default(),
                })
        }

        fn arb_state() -> impl Strategy<Value = State> {
            let nodes = (1usize..10).prop_flat_map(|n| (0..n).map(arb_node).collect::<Vec<_>>());
            let deployments =
                (1usize..5).prop_flat_map(|n| (0..n).map(arb_deployment).collect::<Vec<_>>());
            (nodes, deployments).prop_map(|(nodes, deployments)| State {
                nodes: nodes.into_iter().map(|n| (n.name.clone(), n)).collect(),
                deployments: deployments
                    .into_iter()
                    .map(|d| (d.spec.name.clone(), d))
                    .collect(),
                ..Default::default()
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

            /// With the shipped Cedar bundle: every planned placement is one the policy permits
            /// (asked again, without the memo), and applying the plan to the state it was made
            /// from accepts all of it.
            #[test]
            fn plans_under_the_shipped_policy_obey_it(mut s in arb_state()) {
                let compiled = policy::compile(&shipped_bundle()).unwrap();
                let today = day_of(1_795_305_600_000);
                let plan = placement::plan(&s, &mut PolicyGate::with_policy(Some((1, &compiled)), &today), 1_000);
                for p in &plan.placements {
                    let decision = compiled.evaluate(&s.deployments[&p.deployment].spec, &s.nodes[&p.node], &today);
                    prop_assert!(decision.allowed, "{} placed on {} against {:?}", p.deployment, p.node, decision.forbidding);
                }
                run(&mut s, vec![Proposal::ApplyPolicy { bundle: Box::new(PolicyBundle { files: shipped_bundle(), ..Default::default() }), expected_plan_hash: None }]);
                let count = plan.placements.len();
                let Outcome::PlanApplied { placed, rejected, .. } = run(&mut s, vec![Proposal::ApplyPlan { placements: plan.placements, stops: vec![] }]) else { panic!() };
                prop_assert!(rejected.is_empty(), "{:?}", rejected);
                prop_assert_eq!(placed.len(), count);
            }
        }
    }
}
