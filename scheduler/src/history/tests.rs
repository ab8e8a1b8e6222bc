//! Tests of the history in the pure core: what each command records, in which order, with which
//! stamps; the tree head grows with every event and matches a tree built from the events alone;
//! replicas applying the same commands hold the same root.

use std::collections::BTreeMap;

use proptest::prelude::*;
use sov_proto::merkle;

use super::*;
use crate::state::node::{Gpu, Inventory, NodeFacts, NodeStatus};
use crate::state::policies::PolicyBundle;
use crate::state::{
    AllocReport, AllocStatus, Command, Desired, NodeRegistration, Outcome, Proposal, Resources,
    State, apply,
};

/// 2026-12-01T00:00:00Z.
const T0: i64 = 1_796_083_200_000;

fn run(state: &mut State, at_ms: i64, proposal: Proposal) -> (Outcome, Vec<Event>) {
    let index = state.revision + 1;
    let out = apply(state, index, &Command { at_ms, proposal });
    let events = state
        .journal
        .sealed
        .iter()
        .map(|r| r.event.clone())
        .collect();
    (out, events)
}

fn kinds(events: &[Event]) -> Vec<&'static str> {
    events.iter().map(|e| e.what.kind()).collect()
}

fn register(name: &str, country: &str, parent: &str) -> Proposal {
    let mut certifications = BTreeMap::new();
    certifications.insert("secnumcloud".to_string(), "2026-12-01".to_string());
    Proposal::RegisterNode {
        node: Box::new(NodeRegistration {
            name: name.into(),
            facts: NodeFacts {
                country: country.into(),
                site: "s".into(),
                operator: "op".into(),
                operator_hq: parent.into(),
                ultimate_parent_hq: parent.into(),
                certifications,
                ..Default::default()
            },
            inventory: Inventory {
                cpu_millis: 8_000,
                memory_mib: 16_384,
                gpus: vec![Gpu {
                    uuid: format!("{name}-g0"),
                    model: "NVIDIA H100 80GB HBM3".into(),
                    memory_mib: 81_559,
                    simulated: true,
                    ..Default::default()
                }],
                ..Default::default()
            },
        }),
    }
}

fn policy(extra: &str) -> Proposal {
    let mut files = crate::policy::tests::shipped_files();
    files.retain(|name, _| {
        ["schema.cedarschema", "entities.json", "base.cedar"].contains(&name.as_str())
    });
    if !extra.is_empty() {
        files.insert("extra.cedar".into(), extra.into());
    }
    Proposal::ApplyPolicy {
        bundle: Box::new(PolicyBundle {
            files,
            author: "reviewer-7".into(),
            comment: "test".into(),
        }),
        expected_plan_hash: None,
    }
}

const NO_IE: &str = r#"@id("no-ie")
@reason("not in Ireland")
@on_change("stop-now")
forbid (principal, action == Action::"Place", resource) when { resource.country == Country::"IE" };"#;

/// A tree built from the stored events alone, as an auditor would.
fn root_of(events: &[String]) -> merkle::Hash {
    let mut f = merkle::Frontier::default();
    for e in events {
        f.push(merkle::leaf_hash(e.as_bytes()));
    }
    f.root()
}

#[test]
fn each_command_records_what_it_did_stamped_and_numbered() {
    let mut s = State::default();
    let mut stored: Vec<String> = Vec::new();
    let mut keep = |s: &State| {
        stored.extend(s.journal.sealed.iter().map(|r| r.json.clone()));
    };
    let (_, e) = run(
        &mut s,
        T0,
        Proposal::InitCluster {
            cluster_id: "c1".into(),
        },
    );
    keep(&s);
    assert_eq!(kinds(&e), ["cluster.initialized"]);
    run(&mut s, T0, register("ie-1", "IE", "US"));
    keep(&s);
    let (_, e) = run(&mut s, T0 + 1, policy(""));
    keep(&s);
    assert_eq!(kinds(&e), ["policy.activated"]);
    assert_eq!(e[0].policy_version, 1);
    let spec = crate::state::DeploymentSpec {
        name: "svc".into(),
        model: "m".into(),
        replicas: 1,
        resources: Resources {
            gpu_count: 1,
            cpu_millis: 100,
            memory_mib: 64,
            ..Default::default()
        },
        ..Default::default()
    };
    let (_, e) = run(
        &mut s,
        T0 + 2,
        Proposal::ApplyDeployment {
            spec: Box::new(spec),
            expected_generation: None,
        },
    );
    keep(&s);
    assert_eq!(kinds(&e), ["deployment.created"]);
    let mut gate = crate::state::plan::PolicyGate::for_state(&s, "2026-12-01");
    let plan = crate::placement::plan(&s, &mut gate, 10);
    drop(gate);
    let (_, e) = run(
        &mut s,
        T0 + 3,
        Proposal::ApplyPlan {
            placements: plan.placements,
            stops: vec![],
        },
    );
    keep(&s);
    assert_eq!(kinds(&e), ["allocation.placed"]);
    let What::AllocationPlaced {
        facts, allocation, ..
    } = &e[0].what
    else {
        panic!()
    };
    assert_eq!(
        (facts.country.as_str(), facts.ultimate_parent_hq.as_str()),
        ("IE", "US")
    );
    assert_eq!(facts.certifications, ["secnumcloud"]);
    assert_eq!((e[0].raft_index, e[0].at_ms), (5, T0 + 3));
    let id = allocation.clone();
    let (_, e) = run(
        &mut s,
        T0 + 4,
        Proposal::ReportAllocations {
            node: "ie-1".into(),
            reports: vec![AllocReport {
                id: id.clone(),
                status: AllocStatus::Running,
                ..Default::default()
            }],
        },
    );
    keep(&s);
    assert_eq!(kinds(&e), ["allocation.healthy"]);
    // A stop-now rule: activation, then the stop, which names the rule (one event: a replica
    // stopped at once has no separate violation).
    let (_, e) = run(&mut s, T0 + 5, policy(NO_IE));
    keep(&s);
    assert_eq!(kinds(&e), ["policy.activated", "allocation.stop-ordered"]);
    assert!(e.iter().all(|e| e.policy_version == 2));
    let What::StopOrdered { rules, reason, .. } = &e[1].what else {
        panic!()
    };
    assert_eq!(rules, &["no-ie"]);
    assert!(reason.contains("policy v2"), "{reason}");
    let (_, e) = run(
        &mut s,
        T0 + 6,
        Proposal::ReportAllocations {
            node: "ie-1".into(),
            reports: vec![AllocReport {
                id,
                status: AllocStatus::Stopped,
                ..Default::default()
            }],
        },
    );
    keep(&s);
    assert_eq!(kinds(&e), ["allocation.stopped"]);
    // Liveness and drains; a certification expiring at midnight is on record first.
    let (_, e) = run(
        &mut s,
        T0 + 86_400_000,
        Proposal::SetNodeStatus {
            names: vec!["ie-1".into()],
            status: NodeStatus::Down,
        },
    );
    keep(&s);
    assert_eq!(kinds(&e), ["certification.expired", "node.down"]);
    let (_, e) = run(
        &mut s,
        T0 + 86_400_001,
        Proposal::SetDraining {
            name: "ie-1".into(),
            draining: true,
            deadline_ms: 60_000,
        },
    );
    keep(&s);
    assert_eq!(kinds(&e), ["node.drained"]);

    // Numbered 0.. in order; the head is the tree of exactly these bytes.
    let seqs: Vec<u64> = stored
        .iter()
        .map(|j| serde_json::from_str::<Event>(j).unwrap().seq)
        .collect();
    assert_eq!(seqs, (0..stored.len() as u64).collect::<Vec<_>>());
    assert_eq!(s.history.size, stored.len() as u64);
    assert_eq!(s.history.root(), root_of(&stored));
    // The bytes are the canonical JSON of the event: decoding and encoding again gives them.
    for j in &stored {
        let e: Event = serde_json::from_str(j).unwrap();
        assert_eq!(&serde_json::to_string(&e).unwrap(), j);
    }
    // No personal data: the author is the opaque id submitted.
    assert!(
        stored
            .iter()
            .any(|j| j.contains("\"author\":\"reviewer-7\""))
    );
    let _ = Desired::Run;
}

#[test]
fn a_command_that_changes_nothing_records_nothing() {
    let mut s = State::default();
    run(&mut s, T0, register("fr-1", "FR", "FR"));
    let size = s.history.size;
    let (_, e) = run(&mut s, T0, register("fr-1", "FR", "FR"));
    assert!(e.is_empty());
    assert_eq!(s.history.size, size);
    let (_, e) = run(&mut s, T0, Proposal::CheckCompliance {});
    assert!(e.is_empty());
}

#[test]
fn event_times_never_go_back_when_a_new_leaders_clock_is_behind() {
    let mut s = State::default();
    let (_, first) = run(&mut s, T0 + 5_000, register("fr-1", "FR", "FR"));
    // The next leader's clock is 5 s behind: its events keep the last event's time.
    let (_, behind) = run(&mut s, T0, register("de-1", "DE", "DE"));
    assert_eq!(first[0].at_ms, T0 + 5_000);
    assert_eq!(behind[0].at_ms, T0 + 5_000);
    assert_eq!(s.history.last_at_ms, T0 + 5_000);
    let (_, later) = run(&mut s, T0 + 9_000, register("pl-1", "PL", "PL"));
    assert_eq!(later[0].at_ms, T0 + 9_000);
}

fn arb_proposal() -> impl Strategy<Value = Proposal> {
    prop_oneof![
        (0usize..3, prop::sample::select(vec!["FR", "IE", "US"])).prop_map(|(i, c)| register(
            &format!("n{i}"),
            c,
            c
        )),
        any::<bool>().prop_map(|ie| policy(if ie { NO_IE } else { "" })),
        (0usize..3, any::<bool>()).prop_map(|(i, down)| Proposal::SetNodeStatus {
            names: vec![format!("n{i}")],
            status: if down {
                NodeStatus::Down
            } else {
                NodeStatus::Ready
            },
        }),
        (0usize..3, any::<bool>()).prop_map(|(i, on)| Proposal::SetDraining {
            name: format!("n{i}"),
            draining: on,
            deadline_ms: 1_000,
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Two replicas applying the same commands, one of them restarted from an encoded copy
    /// halfway (as from a snapshot), record byte-identical events and hold the same root,
    /// which is the root of those events (invariants I3 and I4).
    #[test]
    fn replicas_record_the_same_history(proposals in prop::collection::vec(arb_proposal(), 1..24), split in 0usize..24) {
        let mut a = State::default();
        let mut b = State::default();
        let (mut from_a, mut from_b) = (Vec::new(), Vec::new());
        for (i, p) in proposals.iter().enumerate() {
            if i == split {
                b = serde_json::from_slice(&crate::state::encode(&b)).unwrap();
            }
            let at = T0 + i as i64 * 3_600_000;
            run(&mut a, at, p.clone());
            from_a.extend(a.journal.sealed.iter().map(|r| r.json.clone()));
            run(&mut b, at, p.clone());
            from_b.extend(b.journal.sealed.iter().map(|r| r.json.clone()));
            prop_assert_eq!(a.history.root(), b.history.root());
        }
        prop_assert_eq!(&from_a, &from_b);
        prop_assert_eq!(a.history.root(), root_of(&from_a));
        prop_assert_eq!(crate::state::encode(&a), crate::state::encode(&b));
    }
}

#[test]
fn shared_facts_encode_to_the_bytes_of_the_facts_in_events_too() {
    let facts = Facts {
        country: "FR".into(),
        site: "par-1".into(),
        operator: "Ovh \"Cloud\"".into(),
        location_trust: "attested".into(),
        fact_trust: [("country".to_string(), "attested".to_string())].into(),
        certifications: vec!["secnumcloud".into()],
        ..Facts::default()
    };
    let plain = serde_json::to_string(&facts).unwrap();
    let shared = SharedFacts::new(facts.clone());
    assert_eq!(serde_json::to_string(&shared).unwrap(), plain);
    // Twice (the second from the cached encoding), and inside an event: flattened, tagged.
    assert_eq!(serde_json::to_string(&shared).unwrap(), plain);
    let event = Event {
        seq: 1,
        raft_index: 2,
        at_ms: 3,
        policy_version: 4,
        what: What::AllocationPlaced {
            allocation: "a".into(),
            deployment: "d".into(),
            node: "n".into(),
            facts: shared.clone(),
            eligible: "e".into(),
            replaces: String::new(),
        },
    };
    let json = serde_json::to_string(&event).unwrap();
    assert_eq!(
        json,
        format!(
            r#"{{"seq":1,"raft_index":2,"at_ms":3,"policy_version":4,"kind":"allocation.placed","allocation":"a","deployment":"d","node":"n","facts":{plain},"eligible":"e"}}"#
        )
    );
    let read: Event = serde_json::from_str(&json).unwrap();
    assert_eq!(read, event);
    let What::AllocationPlaced { facts: back, .. } = &read.what else {
        panic!("{read:?}")
    };
    assert_eq!(**back, facts);
}
