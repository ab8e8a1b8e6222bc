//! Tests of continuous compliance in the pure core: the per-rule actions inside `apply`
//! (`state::compliance`) and the reconcile rounds that finish what they start, driven by a small
//! simulator (a leader that runs rounds, agents that report), with invariants I1 and I6 checked
//! after every command. The property test runs random sequences of rule, fact, drain, liveness
//! and deployment changes.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::{Limits, round};
use crate::placement::fit::Free;
use crate::policy::{self, OnChange};
use crate::state::NodeReports;
use crate::state::compliance::{Action, DAY_MS, StopWhy, today};
use crate::state::node::{Gpu, Inventory, NodeFacts, NodeStatus};
use crate::state::plan::PolicyGate;
use crate::state::policies::PolicyBundle;
use crate::state::{
    AllocReport, AllocStatus, Command, DeploymentSpec, Desired, ExportAttrs, Migration,
    NodeRegistration, Outcome, Proposal, Rejection, Residency, Resources, Standing, State, apply,
};

/// 2026-12-01T00:00:00Z: a day inside every certification of the tests unless they say so.
const T0: i64 = 1_796_083_200_000;

/// The example rules of deploy/examples/rules: the June 2026 directive (stop-now) and EU
/// sovereign operators (migrate).
const DIRECTIVE: &str =
    include_str!("../../../deploy/examples/rules/directive-4e091-us-only.cedar");

/// The EU-sovereign-operator example rule with `action` as its `@on_change`.
fn sovereign(action: &str) -> String {
    include_str!("../../../deploy/examples/rules/eu-sovereign-operator.cedar").replace(
        r#"@on_change("migrate")"#,
        &format!("@on_change({action:?})"),
    )
}

/// Schema, entity data, the base permit and the shipped residency and certification rules,
/// plus `rules`.
fn bundle(rules: &[&str]) -> BTreeMap<String, String> {
    let shipped = policy::tests::shipped_files();
    let mut files: BTreeMap<String, String> = [
        "schema.cedarschema",
        "entities.json",
        "base.cedar",
        "residency.cedar",
        "required-certifications.cedar",
    ]
    .iter()
    .map(|f| (f.to_string(), shipped[*f].clone()))
    .collect();
    files.insert("rules.cedar".into(), rules.concat());
    files
}

fn node(name: &str, country: &str, parent: &str, gpus: usize) -> NodeRegistration {
    NodeRegistration {
        name: name.into(),
        facts: NodeFacts {
            country: country.into(),
            site: format!("{name}-site"),
            operator: format!("{name} operator"),
            operator_hq: parent.into(),
            ultimate_parent_hq: parent.into(),
            ..Default::default()
        },
        inventory: Inventory {
            cpu_millis: 64_000,
            memory_mib: 512 * 1024,
            gpus: (0..gpus)
                .map(|g| Gpu {
                    index: g as u32,
                    uuid: format!("{name}-gpu{g}"),
                    model: "NVIDIA H100 80GB HBM3".into(),
                    memory_mib: 81_559,
                    simulated: true,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        },
    }
}

fn deployment(name: &str, replicas: u32, eccn: &str, residency: &[&str]) -> DeploymentSpec {
    DeploymentSpec {
        name: name.into(),
        model: format!("{name}-model"),
        replicas,
        resources: Resources {
            gpu_count: 1,
            cpu_millis: 1_000,
            memory_mib: 1_024,
            ..Default::default()
        },
        export: ExportAttrs {
            eccn: eccn.into(),
            ..Default::default()
        },
        residency: Residency {
            allowed: residency.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        },
        migration: Migration {
            max_parallel: 1,
            deadline_ms: 60_000,
        },
        ..Default::default()
    }
}

/// A leader, its agents and a clock around the pure core. Every command goes through
/// [`Sim::exec`], which checks I1 and I6 after it.
struct Sim {
    state: State,
    now: i64,
}

impl Sim {
    fn new() -> Self {
        Sim {
            state: State::default(),
            now: T0,
        }
    }

    fn exec(&mut self, proposal: Proposal) -> Outcome {
        let index = self.state.revision + 1;
        let outcome = apply(
            &mut self.state,
            index,
            &Command {
                at_ms: self.now,
                proposal,
            },
        );
        check_invariants(&self.state);
        outcome
    }

    fn register(&mut self, reg: NodeRegistration) {
        let out = self.exec(Proposal::RegisterNode {
            node: Box::new(reg),
        });
        assert!(matches!(out, Outcome::NodeRegistered { .. }), "{out:?}");
    }

    fn policy(&mut self, rules: &[&str]) -> Outcome {
        self.exec(Proposal::ApplyPolicy {
            bundle: Box::new(PolicyBundle {
                files: bundle(rules),
                ..Default::default()
            }),
            expected_plan_hash: None,
        })
    }

    fn deploy(&mut self, spec: DeploymentSpec) {
        let out = self.exec(Proposal::ApplyDeployment {
            spec: Box::new(spec),
            expected_generation: None,
        });
        assert!(matches!(out, Outcome::DeploymentApplied { .. }), "{out:?}");
    }

    /// One leader round; whether it proposed anything. Checks on the way that the leader's
    /// shortcut, [`super::idle`], answers exactly the round whenever it answers.
    fn round(&mut self) -> Option<Outcome> {
        let mut gate = PolicyGate::for_state(&self.state, &today(&self.state));
        let r = round(&self.state, &mut gate, self.now, Limits::default());
        drop(gate);
        if let Some(idle) = super::idle(&self.state, self.now) {
            assert_eq!(idle, r, "idle must be the round itself");
        } else {
            assert!(
                !r.is_empty() || !r.unplaced.is_empty(),
                "not idle, yet the round has nothing to do and nothing unplaced: {r:?}"
            );
        }
        (!r.is_empty()).then(|| {
            self.exec(Proposal::ApplyPlan {
                placements: r.placements,
                stops: r.stops,
            })
        })
    }

    /// The agents of the nodes that are up (and pass `filter`) report: what should run is
    /// running, what should stop has stopped. Whether anyone reported anything.
    fn agents(&mut self, filter: impl Fn(&str) -> bool) -> bool {
        let mut by_node: BTreeMap<String, Vec<AllocReport>> = BTreeMap::new();
        for a in self.state.allocations.values() {
            let up = self.state.nodes[&a.node].status == NodeStatus::Ready;
            if !up || !filter(&a.node) {
                continue;
            }
            let status = match a.desired {
                Desired::Run if a.status != AllocStatus::Running => AllocStatus::Running,
                Desired::Stop => AllocStatus::Stopped,
                Desired::Run => continue,
            };
            by_node
                .entry(a.node.clone())
                .or_default()
                .push(AllocReport {
                    id: a.id.clone(),
                    status,
                    ..Default::default()
                });
        }
        let reported = !by_node.is_empty();
        for (node, reports) in by_node {
            self.exec(Proposal::ReportAllocations { node, reports });
        }
        reported
    }

    /// Rounds and agent reports until nothing moves (bounded).
    fn converge(&mut self) {
        for _ in 0..100 {
            let planned = self.round().is_some();
            let reported = self.agents(|_| true);
            if !planned && !reported {
                return;
            }
        }
        panic!(
            "no convergence in 100 rounds: {:#?}",
            self.state.allocations
        );
    }

    fn running(&self, deployment: &str) -> Vec<(String, String)> {
        self.state
            .allocations
            .values()
            .filter(|a| {
                a.deployment == deployment
                    && a.desired == Desired::Run
                    && a.status == AllocStatus::Running
            })
            .map(|a| (a.id.clone(), a.node.clone()))
            .collect()
    }

    fn nodes_of(&self, deployment: &str) -> BTreeSet<String> {
        self.state
            .allocations
            .values()
            .filter(|a| a.deployment == deployment && a.desired == Desired::Run)
            .map(|a| a.node.clone())
            .collect()
    }

    fn alloc_on(&self, deployment: &str, node: &str) -> crate::state::Allocation {
        self.state
            .allocations
            .values()
            .find(|a| a.deployment == deployment && a.node == node)
            .cloned()
            .unwrap_or_else(|| panic!("no allocation of {deployment} on {node}"))
    }
}

/// I1: every allocation that should run on a node the policy in force forbids for it is marked:
/// violating when only `audit` rules forbid it, migrating with a deadline otherwise, and never
/// forbidden by a `stop-now` rule. Judged afresh with the whole-bundle reference evaluation.
/// I6: no node holds more GPUs, CPU, memory or ports than it has.
fn check_invariants(state: &State) {
    thread_local! {
        static COMPILED: std::cell::RefCell<Option<(String, policy::CompiledPolicy)>> =
            const { std::cell::RefCell::new(None) };
    }
    if let Some(active) = state.policies.last() {
        let compiled = COMPILED.with_borrow_mut(|c| match c {
            Some((hash, compiled)) if *hash == active.hash => compiled.clone(),
            _ => {
                let compiled = policy::compile(&active.files).expect("stored versions compile");
                *c = Some((active.hash.clone(), compiled.clone()));
                compiled
            }
        });
        let day = today(state);
        for a in state.allocations.values() {
            if a.desired != Desired::Run {
                continue;
            }
            let decision = compiled.evaluate(
                &state.deployments[&a.deployment].spec,
                &state.nodes[&a.node],
                &day,
            );
            let Some(strictest) = decision.forbidding.iter().map(|r| r.on_change).max() else {
                continue;
            };
            match (strictest, &a.standing) {
                (OnChange::StopNow, _) => {
                    panic!("I1: {} runs on {} against a stop-now rule", a.id, a.node)
                }
                (OnChange::Migrate, Standing::Migrating { deadline_ms, .. }) => {
                    assert!(*deadline_ms > 0)
                }
                (OnChange::Audit, Standing::Violating { .. } | Standing::Migrating { .. }) => {}
                (_, standing) => panic!(
                    "I1: {} on {} is forbidden by {:?} but stands {standing:?}",
                    a.id, a.node, decision.forbidding
                ),
            }
        }
    }
    for node in state.nodes.values() {
        let mut free = Free::of(node, std::iter::empty());
        let mut ports = BTreeSet::new();
        let mut gpus = BTreeSet::new();
        for a in state.allocations.values() {
            if a.node != node.name || a.desired != Desired::Run {
                continue;
            }
            assert!(
                ports.insert(a.port),
                "I6: port {} twice on {}",
                a.port,
                node.name
            );
            for g in &a.gpu_uuids {
                assert!(gpus.insert(g.clone()), "I6: GPU {g} twice on {}", node.name);
                assert!(
                    node.inventory.gpus.iter().any(|x| x.uuid == *g),
                    "I6: GPU {g} not on {}",
                    node.name
                );
            }
            free.charge(&a.gpu_uuids, a.cpu_millis, a.memory_mib, a.port);
        }
        let used_cpu: u64 = state
            .allocations
            .values()
            .filter(|a| a.node == node.name && a.desired == Desired::Run)
            .map(|a| u64::from(a.cpu_millis))
            .sum();
        let used_mem: u64 = state
            .allocations
            .values()
            .filter(|a| a.node == node.name && a.desired == Desired::Run)
            .map(|a| a.memory_mib)
            .sum();
        assert!(
            used_cpu <= u64::from(node.inventory.cpu_millis),
            "I6: CPU of {}",
            node.name
        );
        assert!(
            used_mem <= node.inventory.memory_mib,
            "I6: memory of {}",
            node.name
        );
    }
}

/// The directive's fleet: FR, DE, PL (EU operators), IE (US parent), US.
fn directive_fleet(sim: &mut Sim) {
    sim.register(node("fr", "FR", "FR", 2));
    sim.register(node("de", "DE", "DE", 2));
    sim.register(node("pl", "PL", "PL", 2));
    sim.register(node("ie", "IE", "US", 2));
    sim.register(node("us", "US", "US", 4));
}

#[test]
fn a_stop_now_rule_stops_forbidden_replicas_in_the_entry_that_activates_it() {
    let mut sim = Sim::new();
    directive_fleet(&mut sim);
    sim.policy(&[]);
    sim.deploy(deployment("frontier", 5, "4E091", &[]));
    sim.converge();
    assert_eq!(sim.nodes_of("frontier").len(), 5, "one replica per node");
    let before = sim.state.clone();
    let us_alloc = sim.alloc_on("frontier", "us");

    let index = sim.state.revision + 1;
    let Outcome::PolicyApplied {
        version: 2, impact, ..
    } = sim.policy(&[DIRECTIVE])
    else {
        panic!()
    };
    // In this one entry: four replicas told to stop, with the rule and version as the reason,
    // and their agents' streams woken; the US one untouched.
    let stopped: Vec<&str> = impact
        .changes
        .iter()
        .filter(|c| c.action == Action::StopNow)
        .map(|c| c.node.as_str())
        .collect();
    assert_eq!(stopped, ["de", "fr", "ie", "pl"]);
    for n in ["de", "fr", "ie", "pl"] {
        let a = sim.alloc_on("frontier", n);
        assert_eq!(a.desired, Desired::Stop);
        assert_eq!(a.revision, index);
        assert_eq!(
            a.stop_reason,
            "policy v2: directive-4e091-us-only (stop-now)"
        );
        assert_eq!(sim.state.nodes[n].assignments_revision, index);
    }
    assert_eq!(sim.alloc_on("frontier", "us"), us_alloc);
    assert_eq!(
        sim.state.nodes["us"].assignments_revision,
        before.nodes["us"].assignments_revision
    );

    // Replacements go only where the rule permits: the US node takes what fits.
    sim.converge();
    assert_eq!(sim.nodes_of("frontier"), BTreeSet::from(["us".to_string()]));
    assert_eq!(sim.running("frontier").len(), 4, "the US node has 4 GPUs");
    assert!(
        sim.running("frontier")
            .contains(&(us_alloc.id.clone(), "us".into()))
    );
}

#[test]
fn a_migrate_rule_moves_replicas_make_before_break() {
    let mut sim = Sim::new();
    sim.register(node("ie", "IE", "US", 2));
    sim.policy(&[]);
    sim.deploy(deployment("open-eu", 1, "EAR99", &["EU27"]));
    sim.converge();
    sim.register(node("fr", "FR", "FR", 2));
    let old = sim.alloc_on("open-eu", "ie");
    assert_eq!(old.status, AllocStatus::Running);

    let rule = sovereign("migrate");
    let Outcome::PolicyApplied { impact, .. } = sim.policy(&[&rule]) else {
        panic!()
    };
    assert_eq!(impact.changes.len(), 1);
    assert_eq!(impact.changes[0].action, Action::Migrate);
    let Standing::Migrating {
        rules,
        deadline_ms,
        policy_version,
        ..
    } = &sim.alloc_on("open-eu", "ie").standing
    else {
        panic!("marked migrating in the same entry")
    };
    assert_eq!(rules, &["eu-sovereign-operator"]);
    assert_eq!((*deadline_ms, *policy_version), (T0 + 60_000, 2));
    assert_eq!(sim.state.deployments["open-eu"].moves.started, 1);

    // Round 1: a replacement on FR, linked to the old one; the old one keeps serving.
    sim.round().expect("a replacement is placed");
    let new = sim.alloc_on("open-eu", "fr");
    assert_eq!(new.replaces, old.id);
    assert!(matches!(&sim.alloc_on("open-eu", "ie").standing,
        Standing::Migrating { replacement, .. } if *replacement == new.id));
    assert_eq!(sim.running("open-eu").len(), 1);
    // While the replacement starts, nothing else happens.
    assert!(sim.round().is_none());
    assert_eq!(sim.alloc_on("open-eu", "ie").desired, Desired::Run);
    // The replacement runs: the old one is stopped, never before, and in the same entry as
    // the report that says so (no round in between).
    let ie_revision = sim.state.nodes["ie"].assignments_revision;
    sim.agents(|n| n == "fr");
    assert_eq!(sim.running("open-eu"), [(new.id.clone(), "fr".to_string())]);
    let old_now = sim.alloc_on("open-eu", "ie");
    assert_eq!(old_now.desired, Desired::Stop);
    assert_eq!(
        old_now.stop_reason,
        format!("moved: replaced by {} on fr", new.id)
    );
    assert_eq!(old_now.revision, sim.state.revision);
    assert!(
        sim.state.nodes["ie"].assignments_revision > ie_revision,
        "the old node's agent is told"
    );
    let last: Vec<(&str, u64)> = sim.state.journal.sealed[sim.state.journal.sealed.len() - 2..]
        .iter()
        .map(|r| (r.event.what.kind(), r.event.raft_index))
        .collect();
    assert_eq!(
        last,
        [
            ("allocation.healthy", sim.state.revision),
            ("allocation.migrated", sim.state.revision)
        ]
    );
    assert!(sim.round().is_none(), "the round has nothing left to stop");
    // Nothing moves any more: the counters start again from 0/0.
    assert_eq!(sim.state.deployments["open-eu"].moves, Default::default());
    sim.converge();
    assert_eq!(sim.running("open-eu"), [(new.id, "fr".to_string())]);
    assert_eq!(sim.state.deployments["open-eu"].moves, Default::default());
}

/// The round still ends a move whose replacement runs without the report having done it (a
/// state written before reports ended moves, or a replacement already running when it was
/// linked).
#[test]
fn the_round_stops_an_old_replica_whose_running_replacement_did_not_stop_it() {
    let mut sim = moving_off_ie(1, 1);
    let old = sim.alloc_on("open-eu", "ie");
    sim.round().expect("a replacement is placed");
    let new = sim.alloc_on("open-eu", "fr");
    sim.state.allocations.get_mut(&new.id).unwrap().status = AllocStatus::Running;
    let Some(Outcome::PlanApplied { stopped, .. }) = sim.round() else {
        panic!("the round stops the old one")
    };
    assert_eq!(stopped, std::slice::from_ref(&old.id));
    assert_eq!(
        sim.alloc_on("open-eu", "ie").stop_reason,
        format!("moved: replaced by {} on fr", new.id)
    );
}

/// In a `ReportMany` (the agents' reports of many nodes in one entry) every replacement
/// reported running ends its move, whichever node's reports name it; reports of the old
/// node in the same entry do not undo it.
#[test]
fn one_entry_of_many_nodes_reports_ends_every_move_it_completes() {
    let mut sim = moving_off_ie(3, 3);
    sim.round().expect("replacements are placed");
    let replacements: Vec<crate::state::Allocation> = sim
        .state
        .allocations
        .values()
        .filter(|a| !a.replaces.is_empty())
        .cloned()
        .collect();
    assert_eq!(replacements.len(), 3);
    let report = |id: &str| AllocReport {
        id: id.into(),
        status: AllocStatus::Running,
        ..Default::default()
    };
    let nodes = vec![
        NodeReports {
            node: "fr".into(),
            reports: replacements.iter().map(|r| report(&r.id)).collect(),
        },
        NodeReports {
            node: "ie".into(),
            reports: replacements.iter().map(|r| report(&r.replaces)).collect(),
        },
    ];
    let Outcome::ReportsApplied { per_node } = sim.exec(Proposal::ReportMany { nodes }) else {
        panic!()
    };
    assert_eq!(per_node.len(), 2);
    for r in &replacements {
        let old = &sim.state.allocations[&r.replaces];
        assert_eq!(old.desired, Desired::Stop, "{} still runs", old.id);
        assert_eq!(
            old.stop_reason,
            format!("moved: replaced by {} on fr", r.id)
        );
    }
    assert_eq!(sim.state.deployments["open-eu"].moves, Default::default());
}

#[test]
fn a_plan_gives_a_migrating_replica_one_replacement_only() {
    let mut sim = moving_off_ie(1, 1);
    let old = sim.alloc_on("open-eu", "ie");

    // A plan naming the same old replica twice (as a buggy or replayed plan could): apply
    // takes the first replacement and refuses the second.
    let mut gate = PolicyGate::for_state(&sim.state, &today(&sim.state));
    let r = round(&sim.state, &mut gate, sim.now, Limits::default());
    drop(gate);
    assert_eq!(r.placements.len(), 1);
    assert_eq!(r.placements[0].replaces, old.id);
    let twice = vec![r.placements[0].clone(), r.placements[0].clone()];
    let Outcome::PlanApplied {
        placed, rejected, ..
    } = sim.exec(Proposal::ApplyPlan {
        placements: twice,
        stops: vec![],
    })
    else {
        panic!()
    };
    assert_eq!(placed.len(), 1);
    assert_eq!(rejected.len(), 1);
    assert_eq!(
        rejected[0].reason,
        format!(
            "the allocation it replaces ({}) already has a replacement",
            old.id
        )
    );
    assert!(matches!(&sim.alloc_on("open-eu", "ie").standing,
        Standing::Migrating { replacement, .. } if *replacement == placed[0]));
}

#[test]
fn the_deadline_stops_an_old_replica_whose_replacement_never_runs() {
    let mut sim = Sim::new();
    sim.register(node("ie", "IE", "US", 2));
    sim.policy(&[]);
    sim.deploy(deployment("open-eu", 1, "EAR99", &["EU27"]));
    sim.converge();
    let rule = sovereign("migrate");
    sim.policy(&[&rule]);
    let old = sim.alloc_on("open-eu", "ie");
    // No compliant node: nothing to do until the deadline, which the round reports.
    let mut gate = PolicyGate::for_state(&sim.state, &today(&sim.state));
    let r = round(&sim.state, &mut gate, sim.now, Limits::default());
    drop(gate);
    assert!(r.is_empty());
    assert_eq!(r.next_deadline_ms, Some(T0 + 60_000));
    assert_eq!(r.unplaced, ["open-eu"]);

    // A stop planned for the deadline but applied before it is refused.
    let early = sim.exec(Proposal::ApplyPlan {
        placements: vec![],
        stops: vec![crate::state::compliance::PlannedStop {
            allocation: old.id.clone(),
            why: StopWhy::DeadlinePassed,
        }],
    });
    let Outcome::PlanApplied { rejected_stops, .. } = early else {
        panic!()
    };
    assert_eq!(rejected_stops[0].reason, "its deadline has not passed");

    sim.now = T0 + 60_000;
    let Some(Outcome::PlanApplied { stopped, .. }) = sim.round() else {
        panic!()
    };
    assert_eq!(stopped, std::slice::from_ref(&old.id));
    assert!(
        sim.alloc_on("open-eu", "ie")
            .stop_reason
            .contains("deadline passed")
    );
}

#[test]
fn an_audit_rule_records_a_violation_and_a_revert_clears_it() {
    let mut sim = Sim::new();
    sim.register(node("ie", "IE", "US", 2));
    sim.policy(&[]);
    sim.deploy(deployment("open-eu", 1, "EAR99", &["EU27"]));
    sim.converge();
    let rule = sovereign("audit");
    let Outcome::PolicyApplied { impact, .. } = sim.policy(&[&rule]) else {
        panic!()
    };
    assert_eq!(impact.changes[0].action, Action::Audit);
    let a = sim.alloc_on("open-eu", "ie");
    assert_eq!(a.desired, Desired::Run);
    assert!(
        matches!(&a.standing, Standing::Violating { rules, since_ms, policy_version: 2 }
        if rules == &["eu-sovereign-operator"] && *since_ms == T0)
    );
    sim.converge();
    assert_eq!(
        sim.running("open-eu").len(),
        1,
        "audit never moves anything"
    );

    let Outcome::PolicyApplied { impact, .. } = sim.policy(&[]) else {
        panic!()
    };
    assert_eq!(impact.changes[0].action, Action::Cleared);
    assert_eq!(sim.alloc_on("open-eu", "ie").standing, Standing::Compliant);
}

#[test]
fn the_strictest_forbidding_rule_wins() {
    let mut sim = Sim::new();
    sim.register(node("ie", "IE", "US", 2));
    sim.policy(&[]);
    let mut spec = deployment("open-eu", 1, "4E091", &["EU27"]);
    spec.export.eccn = "4E091".into();
    sim.deploy(spec);
    sim.converge();
    let audit = sovereign("audit");
    let Outcome::PolicyApplied { impact, .. } = sim.policy(&[&audit, DIRECTIVE]) else {
        panic!()
    };
    assert_eq!(impact.changes[0].action, Action::StopNow);
    // Every forbidding rule, in bundle order.
    assert_eq!(
        impact.changes[0].rules,
        ["eu-sovereign-operator", "directive-4e091-us-only"]
    );
    assert_eq!(sim.alloc_on("open-eu", "ie").desired, Desired::Stop);
}

#[test]
fn a_plan_hash_pins_the_impact_and_a_mismatch_changes_nothing() {
    let mut sim = Sim::new();
    directive_fleet(&mut sim);
    sim.policy(&[]);
    sim.deploy(deployment("frontier", 2, "4E091", &[]));
    sim.converge();
    let directive = PolicyBundle {
        files: bundle(&[DIRECTIVE]),
        ..Default::default()
    };
    // What `sovctl policy plan` does: apply to a copy.
    let plan_hash = |state: &State| {
        let mut copy = state.clone();
        copy.policy_cache = Default::default();
        let Outcome::PolicyApplied { impact, .. } = apply(
            &mut copy,
            state.revision + 1,
            &Command {
                at_ms: T0,
                proposal: Proposal::ApplyPolicy {
                    bundle: Box::new(directive.clone()),
                    expected_plan_hash: None,
                },
            },
        ) else {
            panic!()
        };
        impact.plan_hash
    };
    let planned = plan_hash(&sim.state);
    // The cluster moves on: one more replica, which the directive would also stop.
    let mut more = deployment("frontier", 3, "4E091", &[]);
    more.migration = Migration::default();
    sim.deploy(more);
    sim.converge();
    let before = sim.state.clone();
    let out = sim.exec(Proposal::ApplyPolicy {
        bundle: Box::new(directive.clone()),
        expected_plan_hash: Some(planned.clone()),
    });
    let Outcome::Rejected(Rejection::PlanHashMismatch { expected, actual }) = out else {
        panic!("{out:?}")
    };
    assert_eq!(expected, planned);
    assert_eq!(actual, plan_hash(&before));
    let mut after = sim.state.clone();
    after.revision = before.revision;
    assert_eq!(
        after, before,
        "a refused apply changes nothing but the revision"
    );
    // The fresh plan's hash is accepted.
    let fresh = plan_hash(&sim.state);
    let out = sim.exec(Proposal::ApplyPolicy {
        bundle: Box::new(directive),
        expected_plan_hash: Some(fresh),
    });
    assert!(
        matches!(out, Outcome::PolicyApplied { changed: true, .. }),
        "{out:?}"
    );
}

#[test]
fn a_drain_moves_replicas_off_by_its_deadline_and_an_undrain_lifts_it() {
    let mut sim = Sim::new();
    sim.register(node("fr", "FR", "FR", 1));
    sim.policy(&[]);
    sim.deploy(deployment("svc", 1, "EAR99", &[]));
    sim.converge();
    sim.register(node("de", "DE", "DE", 1));
    let old = sim.alloc_on("svc", "fr");
    sim.exec(Proposal::SetDraining {
        name: "fr".into(),
        draining: true,
        deadline_ms: 3_600_000,
    });
    let Standing::Migrating {
        drain: true,
        deadline_ms,
        ref rules,
        ..
    } = sim.alloc_on("svc", "fr").standing
    else {
        panic!()
    };
    assert!(rules.is_empty());
    // A drain's own deadline, not the deployment's (that one is for rule changes).
    assert_eq!(deadline_ms, T0 + 3_600_000);
    // Undrained before anything moved: the mark is lifted.
    sim.exec(Proposal::SetDraining {
        name: "fr".into(),
        draining: false,
        deadline_ms: 0,
    });
    assert_eq!(sim.alloc_on("svc", "fr").standing, Standing::Compliant);
    assert_eq!(sim.state.deployments["svc"].moves, Default::default());
    // Drained again: it moves to DE, make-before-break.
    sim.exec(Proposal::SetDraining {
        name: "fr".into(),
        draining: true,
        deadline_ms: 3_600_000,
    });
    sim.converge();
    assert_eq!(sim.nodes_of("svc"), BTreeSet::from(["de".to_string()]));
    assert!(
        !sim.state.allocations.contains_key(&old.id),
        "stopped and confirmed"
    );
}

#[test]
fn changed_node_facts_and_an_expired_certification_are_checked_at_once() {
    let mut sim = Sim::new();
    let mut fr = node("fr", "FR", "FR", 1);
    fr.facts
        .certifications
        .insert("secnumcloud".into(), "2026-12-01".into());
    sim.register(fr.clone());
    sim.register(node("de", "DE", "DE", 1));
    let rule = sovereign("migrate");
    sim.policy(&[&rule]);
    let mut certified = deployment("certified", 1, "EAR99", &[]);
    certified.residency.required_certifications = vec!["secnumcloud".into()];
    sim.deploy(certified);
    sim.deploy(deployment("open-eu", 1, "EAR99", &["EU27"]));
    sim.converge();
    assert_eq!(
        sim.nodes_of("certified"),
        BTreeSet::from(["fr".to_string()])
    );

    // The DE operator is bought by a US company: its agent re-registers, and the same entry
    // marks what the sovereignty rule now forbids there.
    let open_eu_node = sim.nodes_of("open-eu").into_iter().next().unwrap();
    let mut acquired = node(
        &open_eu_node,
        if open_eu_node == "fr" { "FR" } else { "DE" },
        "US",
        1,
    );
    if open_eu_node == "fr" {
        acquired.facts.certifications = fr.facts.certifications.clone();
    }
    sim.register(acquired);
    assert!(
        sim.alloc_on("open-eu", &open_eu_node)
            .standing
            .is_migrating()
    );

    // Midnight: the certification (valid through 2026-12-01) lapses; the first command of the
    // new day re-checks everything before it does anything else.
    sim.now = T0 + DAY_MS + 5;
    sim.exec(Proposal::CheckCompliance {});
    assert_eq!(sim.state.day, (T0 + DAY_MS) / DAY_MS);
    let Standing::Migrating { rules, .. } = &sim.alloc_on("certified", "fr").standing else {
        panic!("expired certification: migrating")
    };
    assert_eq!(rules, &["required-certifications"]);
}

#[test]
fn replicas_on_a_down_node_are_replaced_where_policy_permits() {
    let mut sim = Sim::new();
    directive_fleet(&mut sim);
    sim.policy(&[DIRECTIVE]);
    sim.deploy(deployment("open-eu", 2, "EAR99", &["EU27"]));
    sim.converge();
    let first = sim.nodes_of("open-eu");
    let lost = first.iter().next().unwrap().clone();
    sim.exec(Proposal::SetNodeStatus {
        names: vec![lost.clone()],
        status: NodeStatus::Down,
    });
    sim.converge();
    let now = sim.nodes_of("open-eu");
    assert_eq!(now.len(), 2);
    assert!(!now.contains(&lost));
    assert!(
        now.iter()
            .all(|n| ["fr", "de", "pl", "ie"].contains(&n.as_str()))
    );
    // The replica on the down node is told to stop, and stays on record until its agent is back.
    let gone = sim.alloc_on("open-eu", &lost);
    assert_eq!(gone.desired, Desired::Stop);
    assert!(gone.stop_reason.contains("is down"));
    sim.exec(Proposal::SetNodeStatus {
        names: vec![lost.clone()],
        status: NodeStatus::Ready,
    });
    sim.converge();
    assert!(!sim.state.allocations.values().any(|a| a.node == lost));
}

#[test]
fn a_disruption_of_most_nodes_moves_nothing() {
    let mut sim = Sim::new();
    sim.register(node("fr", "FR", "FR", 2));
    sim.register(node("de", "DE", "DE", 2));
    sim.register(node("pl", "PL", "PL", 2));
    sim.policy(&[]);
    let mut spec = deployment("svc", 2, "EAR99", &[]);
    spec.placement.prefer_countries = vec!["FR".into(), "DE".into()];
    sim.deploy(spec);
    sim.converge();
    let before = sim.state.allocations.clone();
    assert_eq!(
        sim.nodes_of("svc"),
        BTreeSet::from(["de".into(), "fr".into()])
    );
    // Two of three nodes silent at once: more likely a partition than two machines failing.
    sim.exec(Proposal::SetNodeStatus {
        names: vec!["fr".into(), "de".into()],
        status: NodeStatus::Down,
    });
    assert!(sim.state.disrupted());
    assert!(sim.round().is_none(), "nothing stopped, nothing replaced");
    assert_eq!(sim.state.allocations, before);
    // One comes back: one of three down is an ordinary failure, its replica moves.
    sim.exec(Proposal::SetNodeStatus {
        names: vec!["fr".into()],
        status: NodeStatus::Ready,
    });
    assert!(!sim.state.disrupted());
    sim.converge();
    assert_eq!(
        sim.nodes_of("svc"),
        BTreeSet::from(["fr".into(), "pl".into()])
    );
    assert_eq!(sim.state.nodes_down, 1);
}

/// `open-eu` with `replicas` on the Irish node of a US-parented operator, then a French node
/// and the migrate rule that moves them there, `max_parallel` at a time.
fn moving_off_ie(replicas: u32, max_parallel: u32) -> Sim {
    let mut sim = Sim::new();
    sim.register(node("ie", "IE", "US", 4));
    sim.policy(&[]);
    let mut spec = deployment("open-eu", replicas, "EAR99", &["EU27"]);
    spec.placement.spread = crate::state::Spread::None;
    spec.migration.max_parallel = max_parallel;
    sim.deploy(spec);
    sim.converge();
    sim.register(node("fr", "FR", "FR", 4));
    let rule = sovereign("migrate");
    sim.policy(&[&rule]);
    sim
}

#[test]
fn max_parallel_bounds_the_replacements_in_flight() {
    let mut sim = moving_off_ie(4, 2);
    let mut most_in_flight = 0;
    for _ in 0..20 {
        sim.round();
        let in_flight = sim
            .state
            .allocations
            .values()
            .filter(|a| {
                !a.replaces.is_empty()
                    && a.status != AllocStatus::Running
                    && a.desired == Desired::Run
            })
            .count();
        most_in_flight = most_in_flight.max(in_flight);
        assert!(in_flight <= 2, "{in_flight} replacements starting at once");
        assert!(
            sim.running("open-eu").len() >= 4,
            "never below the healthy count"
        );
        if !sim.agents(|_| true) && sim.round().is_none() {
            break;
        }
    }
    assert_eq!(most_in_flight, 2);
    assert_eq!(sim.nodes_of("open-eu"), BTreeSet::from(["fr".to_string()]));
}

/// A move ends when the old process is gone, not when its stop is ordered: while the old
/// node's agent has not confirmed, the next replacement waits, so no more than replicas +
/// max_parallel processes ever exist, however late that agent reports.
#[test]
fn the_next_move_waits_until_the_old_replica_is_confirmed_stopped() {
    let mut sim = moving_off_ie(2, 1);
    // Processes that may exist: what should run, and what was told to stop but not confirmed.
    let processes = |sim: &Sim| {
        sim.state
            .allocations
            .values()
            .filter(|a| a.desired == Desired::Run || a.status != AllocStatus::Stopped)
            .count()
    };
    for _ in 0..30 {
        sim.round();
        assert!(processes(&sim) <= 3, "{:#?}", sim.state.allocations);
        // The French agent reports at once; the Irish one, holding the old replicas, later.
        sim.agents(|n| n == "fr");
        sim.round();
        assert!(processes(&sim) <= 3, "{:#?}", sim.state.allocations);
        if !sim.agents(|_| true) && sim.round().is_none() {
            break;
        }
    }
    assert_eq!(sim.nodes_of("open-eu"), BTreeSet::from(["fr".to_string()]));
}

#[test]
fn surplus_replicas_are_stopped_those_not_serving_first() {
    let mut sim = Sim::new();
    sim.register(node("fr", "FR", "FR", 4));
    sim.register(node("de", "DE", "DE", 4));
    sim.policy(&[]);
    sim.deploy(deployment("svc", 3, "EAR99", &[]));
    sim.converge();
    // One replica fails; then the engineer scales down to 2.
    let failing = sim.state.allocations.values().next().unwrap().clone();
    sim.exec(Proposal::ReportAllocations {
        node: failing.node.clone(),
        reports: vec![AllocReport {
            id: failing.id.clone(),
            status: AllocStatus::Failed,
            ..Default::default()
        }],
    });
    let mut two = deployment("svc", 2, "EAR99", &[]);
    two.migration = Migration {
        max_parallel: 1,
        deadline_ms: 60_000,
    };
    sim.deploy(two);
    let Some(Outcome::PlanApplied { stopped, .. }) = sim.round() else {
        panic!()
    };
    assert_eq!(stopped, [failing.id]);
}

/// One step of a random history.
#[derive(Debug, Clone)]
enum Step {
    /// A policy version: which of the three test rules are in, and the sovereignty rule's action.
    Policy {
        directive: bool,
        sovereign: Option<&'static str>,
    },
    /// A node's operator gets a new ultimate parent.
    Parent {
        node: usize,
        parent: &'static str,
    },
    Drain {
        node: usize,
        on: bool,
    },
    Liveness {
        node: usize,
        up: bool,
    },
    Replicas {
        deployment: usize,
        replicas: u32,
    },
    /// Agents of nodes with these bits report; then a leader round.
    Work {
        agents: u8,
    },
    /// Time passes (move deadlines).
    Wait {
        ms: i64,
    },
}

const COUNTRIES: [(&str, &str); 6] = [
    ("FR", "FR"),
    ("DE", "DE"),
    ("PL", "PL"),
    ("IE", "US"),
    ("US", "US"),
    ("NL", "NL"),
];

fn arb_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => (any::<bool>(), prop::sample::select(vec![None, Some("audit"), Some("migrate"), Some("stop-now")]))
            .prop_map(|(directive, sovereign)| Step::Policy { directive, sovereign }),
        1 => (0usize..6, prop::sample::select(vec!["FR", "US", "DE", "CN"]))
            .prop_map(|(node, parent)| Step::Parent { node, parent }),
        1 => (0usize..6, any::<bool>()).prop_map(|(node, on)| Step::Drain { node, on }),
        1 => (0usize..6, any::<bool>()).prop_map(|(node, up)| Step::Liveness { node, up }),
        1 => (0usize..3, 0u32..5).prop_map(|(deployment, replicas)| Step::Replicas { deployment, replicas }),
        6 => any::<u8>().prop_map(|agents| Step::Work { agents }),
        1 => prop::sample::select(vec![1_000i64, 30_000, 61_000]).prop_map(|ms| Step::Wait { ms }),
    ]
}

fn specs() -> [DeploymentSpec; 3] {
    [
        deployment("frontier", 2, "4E091", &[]),
        deployment("open-eu", 2, "EAR99", &["EU27"]),
        deployment("open-any", 3, "EAR99", &[]),
    ]
}

fn sim_step(sim: &mut Sim, step: &Step) {
    let name = |i: usize| format!("n{i}");
    match step {
        Step::Policy {
            directive,
            sovereign: s,
        } => {
            let rule = s.map(sovereign).unwrap_or_default();
            let rules: Vec<&str> = [directive.then_some(DIRECTIVE), s.map(|_| rule.as_str())]
                .into_iter()
                .flatten()
                .collect();
            sim.policy(&rules);
        }
        Step::Parent { node: i, parent } => {
            let (country, _) = COUNTRIES[*i];
            sim.register(node(&name(*i), country, parent, 2));
        }
        Step::Drain { node, on } => {
            sim.exec(Proposal::SetDraining {
                name: name(*node),
                draining: *on,
                deadline_ms: 45_000,
            });
        }
        Step::Liveness { node, up } => {
            sim.exec(Proposal::SetNodeStatus {
                names: vec![name(*node)],
                status: if *up {
                    NodeStatus::Ready
                } else {
                    NodeStatus::Down
                },
            });
        }
        Step::Replicas {
            deployment,
            replicas,
        } => {
            let mut spec = specs()[*deployment].clone();
            spec.replicas = *replicas;
            sim.deploy(spec);
        }
        Step::Work { agents } => {
            let agents = *agents;
            sim.agents(|n| {
                let i: usize = n[1..].parse().unwrap();
                agents & (1 << i) != 0
            });
            sim.round();
        }
        Step::Wait { ms } => sim.now += ms,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Random changes of rules, facts, drains, liveness and replica counts, interleaved with
    /// partial agent reports and leader rounds: I1 and I6 hold after every command (`Sim::exec`);
    /// once the changes stop and the reconciler converges, no replica runs where a rule forbids
    /// it except as an audited violation, nothing is left migrating unless no node could take
    /// its replacement, and every deployment runs as many replicas as the eligible capacity
    /// allows.
    #[test]
    fn the_reconciler_converges_to_compliance(steps in prop::collection::vec(arb_step(), 1..40)) {
        let mut sim = Sim::new();
        for (i, (country, parent)) in COUNTRIES.iter().enumerate() {
            sim.register(node(&format!("n{i}"), country, parent, 2));
        }
        sim.policy(&[]);
        for spec in specs() {
            sim.deploy(spec);
        }
        sim.converge();
        for step in &steps {
            sim_step(&mut sim, step);
        }
        // Everything comes back and the clock moves past every deadline: full convergence.
        let names: Vec<String> = (0..COUNTRIES.len()).map(|i| format!("n{i}")).collect();
        sim.exec(Proposal::SetNodeStatus { names, status: NodeStatus::Ready });
        sim.now += 3_600_000;
        sim.converge();
        let compiled = policy::compile(&sim.state.policies.last().unwrap().files).unwrap();
        let day = today(&sim.state);
        for a in sim.state.allocations.values() {
            prop_assert_eq!(a.desired, Desired::Run, "stops are confirmed and removed");
            prop_assert!(!a.standing.is_migrating(), "a move past its deadline is finished: {:?}", a);
            let decision = compiled.evaluate(&sim.state.deployments[&a.deployment].spec, &sim.state.nodes[&a.node], &day);
            let audited = decision.forbidding.iter().all(|r| r.on_change == OnChange::Audit);
            prop_assert!(decision.allowed || audited, "{} on {}: {:?}", a.id, a.node, decision.forbidding);
            prop_assert_eq!(a.status, AllocStatus::Running);
        }
        for d in sim.state.deployments.values() {
            let count = sim.running(&d.spec.name).len() as u32;
            prop_assert!(count <= d.spec.replicas);
            if count < d.spec.replicas {
                // Short only when no node the policy allows has room for one more.
                let mut gate = PolicyGate::for_state(&sim.state, &day);
                let (more, _) = crate::placement::plan_spec(&sim.state, &DeploymentSpec { replicas: count + 1, ..d.spec.clone() }, &mut gate);
                prop_assert!(more.is_empty(), "{} has {count}/{} but {:?} fits", d.spec.name, d.spec.replicas, more);
            }
        }
    }

    /// While only a migrate rule changes and a compliant target exists, a deployment never runs
    /// fewer healthy replicas than before, however the agents' reports are delayed.
    #[test]
    fn a_migration_never_drops_below_the_healthy_count(agents in prop::collection::vec(any::<u8>(), 1..30)) {
        let mut sim = Sim::new();
        for (i, (country, parent)) in COUNTRIES.iter().enumerate() {
            sim.register(node(&format!("n{i}"), country, parent, 2));
        }
        sim.policy(&[]);
        let mut spec = deployment("open-eu", 3, "EAR99", &["EU27"]);
        spec.placement.prefer_countries = vec!["IE".into()];
        spec.placement.spread = crate::state::Spread::None;
        spec.migration.max_parallel = 2;
        sim.deploy(spec);
        sim.converge();
        let healthy = sim.running("open-eu").len();
        prop_assert_eq!(healthy, 3);
        let rule = sovereign("migrate");
        sim.policy(&[&rule]);
        for mask in agents {
            sim.agents(|n| {
                let i: usize = n[1..].parse().unwrap();
                mask & (1 << i) != 0
            });
            prop_assert!(sim.running("open-eu").len() >= healthy);
            sim.round();
            prop_assert!(sim.running("open-eu").len() >= healthy);
        }
        sim.converge();
        prop_assert_eq!(sim.running("open-eu").len(), healthy);
        prop_assert!(!sim.nodes_of("open-eu").contains("n3"), "off the US-owned Irish node");
    }
}
