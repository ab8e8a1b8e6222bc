//! Rule-change reaction in the pure core (issue #5): what each step costs one replica (or the
//! leader) when a policy change forbids 20 % of 100,000 running allocations, without Raft, the
//! network or agents. The end-to-end figures through a real cluster and 10,000 virtual agents
//! are `cargo bench -p sov-e2e --bench compliance`; this one says where their time goes.
//!
//! The fleet is the end-to-end bench's: 10,000 nodes of 64 cores in ten sites (`site-0` to
//! `site-9`), 1,000 deployments of 100 replicas of 4 cores, placed by reconcile rounds and
//! reported running. Then, for a `stop-now` and a `migrate` rule forbidding sites 8 and 9:
//! - apply of the `ApplyPolicy` entry (every allocation judged; the stops or marks made);
//! - the leader's next rounds (a copy of the state, `reconcile::round`) and the apply of each
//!   round's `ApplyPlan`, until nothing is left to do (agents' reports simulated in between);
//! - a copy of the state, the leader's check that a round has nothing to do (which spares it
//!   the copy), the derived statuses the API and metrics compute, and the pass over the
//!   allocations each `/metrics` scrape makes under the read lock.
//!
//! Run: `cargo bench -p sov-scheduler --bench compliance` (`-- --nodes N --replicas R` for
//! other sizes). Without `--bench` it runs a small fleet once as a smoke pass. Figures go to
//! docs/benchmarks.md by hand.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sov_scheduler::reconcile::{self, Limits};
use sov_scheduler::state::compliance::today;
use sov_scheduler::state::node::{Inventory, NodeFacts};
use sov_scheduler::state::plan::PolicyGate;
use sov_scheduler::state::policies::PolicyBundle;
use sov_scheduler::state::{
    AllocReport, AllocStatus, Command, DeploymentSpec, Desired, Migration, NodeRegistration,
    Outcome, Proposal, Resources, State, apply,
};

/// 2026-12-01T00:00:00Z.
const AT_MS: i64 = 1_796_083_200_000;
const SITES: usize = 10;

fn exec(state: &mut State, proposal: Proposal) -> (Outcome, Duration) {
    let index = state.revision + 1;
    let t = Instant::now();
    let out = apply(
        state,
        index,
        &Command {
            at_ms: AT_MS,
            proposal,
        },
    );
    (out, t.elapsed())
}

fn bundle(rule: Option<&str>) -> BTreeMap<String, String> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/policies");
    let mut files: BTreeMap<String, String> = std::fs::read_dir(dir)
        .expect("deploy/policies")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.extension()
                .is_some_and(|x| x == "cedar" || x == "cedarschema" || x == "json")
        })
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).expect("bundle file"),
            )
        })
        .collect();
    if let Some(action) = rule {
        files.insert(
            "zz-sites.cedar".into(),
            format!(
                "@id(\"bench-sites\")\n@reason(\"sites 8 and 9 may no longer serve\")\n\
                 @on_change({action:?})\n\
                 forbid (principal, action == Action::\"Place\", resource)\n\
                 when {{ resource.site == \"site-8\" || resource.site == \"site-9\" }};\n"
            ),
        );
    }
    files
}

fn policy(rule: Option<&str>) -> Proposal {
    Proposal::ApplyPolicy {
        bundle: Box::new(PolicyBundle {
            files: bundle(rule),
            ..Default::default()
        }),
        expected_plan_hash: None,
    }
}

/// Every agent reports: what should run is running, what should stop has stopped.
fn agents_report(state: &mut State) -> usize {
    let mut by_node: BTreeMap<String, Vec<AllocReport>> = BTreeMap::new();
    for a in state.allocations.values() {
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
    let mut reports = 0;
    for (node, all) in by_node {
        for chunk in all.chunks(256) {
            reports += chunk.len();
            exec(
                state,
                Proposal::ReportAllocations {
                    node: node.clone(),
                    reports: chunk.to_vec(),
                },
            );
        }
    }
    reports
}

struct Round {
    copy: Duration,
    plan: Duration,
    apply: Duration,
    placements: usize,
    stops: usize,
}

/// One leader round on a copy of the state and its apply; `None` when there is nothing to do.
fn round(state: &mut State) -> Option<Round> {
    let t = Instant::now();
    let copy = state.clone();
    let copy_took = t.elapsed();
    let t = Instant::now();
    let mut gate = PolicyGate::for_state(&copy, &today(&copy));
    let r = reconcile::round(&copy, &mut gate, AT_MS, Limits::default());
    drop(gate);
    let plan_took = t.elapsed();
    // As on the leader, the copy is gone before the round's entry is applied (the state's maps
    // are copy-on-write: applying while it lived would copy them).
    drop(copy);
    if r.is_empty() {
        return None;
    }
    let (placements, stops) = (r.placements.len(), r.stops.len());
    let (_, apply_took) = exec(
        state,
        Proposal::ApplyPlan {
            placements: r.placements,
            stops: r.stops,
        },
    );
    Some(Round {
        copy: copy_took,
        plan: plan_took,
        apply: apply_took,
        placements,
        stops,
    })
}

fn build(nodes: usize, deployments: usize, replicas: u32) -> State {
    let mut state = State::default();
    exec(&mut state, policy(None));
    for i in 0..nodes {
        let site = i % SITES;
        exec(
            &mut state,
            Proposal::RegisterNode {
                node: Box::new(NodeRegistration {
                    name: format!("bench-fr-{i}"),
                    facts: NodeFacts {
                        country: "FR".into(),
                        site: format!("site-{site}"),
                        operator: format!("operator-{site}"),
                        operator_hq: "FR".into(),
                        ultimate_parent_hq: "FR".into(),
                        ..Default::default()
                    },
                    inventory: Inventory {
                        cpu_millis: 64_000,
                        memory_mib: 512 * 1024,
                        ..Default::default()
                    },
                }),
            },
        );
    }
    for i in 0..deployments {
        exec(
            &mut state,
            Proposal::ApplyDeployment {
                spec: Box::new(DeploymentSpec {
                    name: format!("bench-{i:04}"),
                    model: format!("lab/model-{}", i % 50),
                    replicas,
                    resources: Resources {
                        cpu_millis: 4_000,
                        memory_mib: 8_192,
                        ..Default::default()
                    },
                    command: vec!["sov-model-server".into()],
                    migration: Migration {
                        max_parallel: replicas,
                        deadline_ms: 600_000,
                    },
                    ..Default::default()
                }),
                expected_generation: None,
            },
        );
    }
    while round(&mut state).is_some() {}
    agents_report(&mut state);
    state
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn react(base: &State, action: &str) {
    // A state of its own, as a scheduler's is: sharing its maps with `base` would make the
    // first apply copy them (copy-on-write), which no scheduler pays.
    let mut state = base.clone();
    state.detach();
    let (out, took) = exec(&mut state, policy(Some(action)));
    let Outcome::PolicyApplied { impact, .. } = out else {
        panic!("{out:?}")
    };
    println!(
        "{action}: ApplyPolicy apply {} ({} allocations affected, every allocation judged)",
        ms(took),
        impact.changes.len()
    );
    let mut n = 0;
    loop {
        let Some(r) = round(&mut state) else {
            let reports = agents_report(&mut state);
            if reports == 0 {
                break;
            }
            println!("  agents report: {reports} transitions");
            continue;
        };
        n += 1;
        println!(
            "  round {n}: copy {}, reconcile {}, apply {} ({} placements, {} stops)",
            ms(r.copy),
            ms(r.plan),
            ms(r.apply),
            r.placements,
            r.stops
        );
        if r.stops > 0 || r.placements > 0 {
            let reports = agents_report(&mut state);
            if reports > 0 {
                println!("  agents report: {reports} transitions");
            }
        }
    }
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| v.parse().expect("a number"))
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (nodes, replicas) = if full {
        (arg("--nodes", 10_000), arg("--replicas", 100) as u32)
    } else {
        (200, 10)
    };
    let deployments = nodes / 10;
    let t = Instant::now();
    let state = build(nodes, deployments, replicas);
    println!(
        "{nodes} nodes, {deployments} deployments x {replicas} replicas: {} allocations running (built in {:.1} s)",
        state.allocations.len(),
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let copy = state.clone();
    println!("copy of the state: {}", ms(t.elapsed()));
    let t = Instant::now();
    let mut gate = PolicyGate::for_state(&copy, &today(&copy));
    let quiet = reconcile::round(&copy, &mut gate, AT_MS, Limits::default());
    drop(gate);
    assert!(quiet.is_empty());
    println!("a round with nothing to do: {}", ms(t.elapsed()));
    let t = Instant::now();
    assert!(reconcile::idle(&state, AT_MS).is_some());
    println!(
        "the leader's check that there is nothing to do (reconcile::idle, no copy): {}",
        ms(t.elapsed())
    );
    let t = Instant::now();
    let statuses = reconcile::status::deployments(
        &copy,
        &{
            let mut gate = PolicyGate::for_state(&copy, &today(&copy));
            reconcile::outlook(&copy, &mut gate, AT_MS, None)
        },
        None,
    );
    println!(
        "statuses of {} deployments (outlook included): {}",
        statuses.len(),
        ms(t.elapsed())
    );
    let t = Instant::now();
    let counts = sov_scheduler::web::AllocationCounts::of(&state);
    assert_eq!(counts.placed, state.allocations.len() as u64);
    println!(
        "the /metrics pass over the allocations (web::AllocationCounts): {}",
        ms(t.elapsed())
    );
    for action in ["stop-now", "migrate"] {
        react(&state, action);
    }
}
