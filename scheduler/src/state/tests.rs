//! Unit and property tests of the pure core: apply is deterministic and total.

use proptest::prelude::*;

use super::node::NodeStatus;
use super::validate::{NAME_LEN_MAX, REPLICAS_MAX};
use super::*;

fn spec(name: &str) -> DeploymentSpec {
    DeploymentSpec {
        name: name.into(),
        model: "tiny".into(),
        replicas: 1,
        ..Default::default()
    }
}

fn cmd(at_ms: i64, proposal: Proposal) -> Command {
    Command { at_ms, proposal }
}

fn apply_spec(
    state: &mut State,
    index: u64,
    s: DeploymentSpec,
    expected_generation: Option<u64>,
) -> Outcome {
    apply(
        state,
        index,
        &cmd(
            index as i64 * 10,
            Proposal::ApplyDeployment {
                spec: Box::new(s),
                expected_generation,
            },
        ),
    )
}

#[test]
fn create_update_unchanged_delete() {
    let mut state = State::default();
    let Outcome::DeploymentApplied {
        deployment,
        created,
        changed,
    } = apply_spec(&mut state, 1, spec("a"), None)
    else {
        panic!("expected applied")
    };
    assert!(created && changed);
    assert_eq!(
        (
            deployment.generation,
            deployment.revision,
            deployment.created_at_ms
        ),
        (1, 1, 10)
    );

    let mut changed_spec = spec("a");
    changed_spec.replicas = 3;
    let Outcome::DeploymentApplied {
        deployment,
        created,
        changed,
    } = apply_spec(&mut state, 2, changed_spec.clone(), Some(1))
    else {
        panic!("expected applied")
    };
    assert!(!created && changed);
    assert_eq!(
        (
            deployment.generation,
            deployment.created_at_ms,
            deployment.updated_at_ms
        ),
        (2, 10, 20)
    );

    let Outcome::DeploymentApplied {
        changed,
        deployment,
        ..
    } = apply_spec(&mut state, 3, changed_spec, None)
    else {
        panic!("expected applied")
    };
    assert!(!changed, "same spec must not bump the generation");
    assert_eq!(deployment.generation, 2);

    assert_eq!(
        apply(
            &mut state,
            4,
            &cmd(40, Proposal::DeleteDeployment { name: "a".into() })
        ),
        Outcome::DeploymentDeleted { name: "a".into() }
    );
    assert!(state.deployments.is_empty());
    assert_eq!(state.revision, 4);
}

#[test]
fn rejections_change_nothing_but_the_revision() {
    let mut state = State::default();
    apply_spec(&mut state, 1, spec("a"), None);
    let before = state.clone();

    let stale = apply_spec(&mut state, 2, spec("a"), Some(7));
    assert_eq!(
        stale,
        Outcome::Rejected(Rejection::GenerationMismatch {
            name: "a".into(),
            expected: 7,
            actual: 1
        })
    );
    let missing = apply(
        &mut state,
        3,
        &cmd(
            30,
            Proposal::DeleteDeployment {
                name: "nope".into(),
            },
        ),
    );
    assert_eq!(
        missing,
        Outcome::Rejected(Rejection::NotFound("nope".into()))
    );
    let invalid = apply_spec(&mut state, 4, spec("Bad_Name"), None);
    assert!(
        matches!(invalid, Outcome::Rejected(Rejection::Invalid(ref e)) if e.field == "spec.name")
    );

    assert_eq!(state.deployments, before.deployments);
    assert_eq!(state.revision, 4);
}

#[test]
fn create_only_when_expected_generation_is_zero() {
    let mut state = State::default();
    assert!(matches!(
        apply_spec(&mut state, 1, spec("a"), Some(0)),
        Outcome::DeploymentApplied { created: true, .. }
    ));
    assert!(matches!(
        apply_spec(&mut state, 2, spec("a"), Some(0)),
        Outcome::Rejected(Rejection::GenerationMismatch { .. })
    ));
}

#[test]
fn init_cluster_sets_the_id_once() {
    let mut state = State::default();
    apply(
        &mut state,
        1,
        &cmd(
            5,
            Proposal::InitCluster {
                cluster_id: "first".into(),
            },
        ),
    );
    apply(
        &mut state,
        2,
        &cmd(
            6,
            Proposal::InitCluster {
                cluster_id: "second".into(),
            },
        ),
    );
    assert_eq!(
        state.cluster,
        ClusterMeta {
            cluster_id: "first".into(),
            created_at_ms: 5
        }
    );
}

#[test]
fn validation_messages_name_the_field_and_the_fix() {
    let e = validate_spec(&spec("Foo")).unwrap_err();
    assert_eq!(e.field, "spec.name");
    assert!(e.message.contains("DNS label"), "{e}");

    let mut s = spec("a");
    s.replicas = REPLICAS_MAX + 1;
    assert_eq!(
        validate_spec(&s).unwrap_err().to_string(),
        "spec.replicas: is 1001; the limit is 1000"
    );

    let mut s = spec("a");
    s.env.insert("PORT".into(), "1".into());
    assert!(
        validate_spec(&s)
            .unwrap_err()
            .message
            .contains("set by the agent")
    );

    let mut s = spec("a");
    s.resources.gpu_memory_mib = 1000;
    assert_eq!(
        validate_spec(&s).unwrap_err().field,
        "spec.resources.gpu_count"
    );

    let mut s = spec("a");
    s.model = " ".into();
    assert_eq!(validate_spec(&s).unwrap_err().field, "spec.model");

    assert!(validate_deployment_name(&"a".repeat(NAME_LEN_MAX)).is_ok());
    assert!(validate_deployment_name(&"a".repeat(NAME_LEN_MAX + 1)).is_err());
    assert!(validate_deployment_name("a-").is_err());
    assert!(validate_deployment_name("9a").is_err());
    assert!(
        validate_proposal(&Proposal::InitCluster {
            cluster_id: String::new()
        })
        .is_err()
    );
}

fn arb_name() -> impl Strategy<Value = String> {
    // A small name space makes updates, deletes and conflicts frequent; a few invalid names
    // exercise the rejection path.
    prop_oneof![8 => "[a-d]", 1 => "[A-Z_]{1,3}"]
}

fn arb_proposal() -> impl Strategy<Value = Proposal> {
    prop_oneof![
        1 => "[a-z]{1,8}".prop_map(|cluster_id| Proposal::InitCluster { cluster_id }),
        6 => (arb_name(), 0u32..5, 0u32..3, proptest::option::of(0u64..4)).prop_map(|(name, replicas, gpus, expected_generation)| {
            let mut s = DeploymentSpec { name, model: "m".into(), replicas, ..Default::default() };
            s.resources.gpu_count = gpus;
            Proposal::ApplyDeployment { spec: Box::new(s), expected_generation }
        }),
        2 => arb_name().prop_map(|name| Proposal::DeleteDeployment { name }),
        1 => (proptest::collection::vec(arb_name(), 0..4), any::<bool>()).prop_map(|(names, down)| {
            let status = if down { NodeStatus::Down } else { NodeStatus::Ready };
            Proposal::SetNodeStatus { names, status }
        }),
        1 => (arb_name(), "[a-d]-[0-9]-0", 0u8..5).prop_map(|(node, id, s)| Proposal::ReportAllocations {
            node,
            reports: vec![AllocReport {
                id,
                status: [AllocStatus::Starting, AllocStatus::Running, AllocStatus::Failed, AllocStatus::Stopped, AllocStatus::Running][s as usize],
                exit_code: (s == 2).then_some(1),
                reason: String::new(),
                restarts: u32::from(s),
            }],
        }),
    ]
}

fn arb_commands() -> impl Strategy<Value = Vec<Command>> {
    proptest::collection::vec(
        (0i64..1_000_000, arb_proposal()).prop_map(|(at_ms, proposal)| Command { at_ms, proposal }),
        0..64,
    )
}

fn run(commands: &[Command]) -> (Vec<u8>, Vec<Outcome>) {
    let mut state = State::default();
    let outcomes = commands
        .iter()
        .enumerate()
        .map(|(i, c)| apply(&mut state, i as u64 + 1, c))
        .collect();
    (encode(&state), outcomes)
}

proptest! {
    /// I3: the same commands give byte-identical state and identical outcomes, and a state that
    /// went through its own encoding (as in a snapshot) continues identically.
    #[test]
    fn apply_is_deterministic(commands in arb_commands(), split in 0usize..64) {
        let (bytes_a, outcomes_a) = run(&commands);
        let (bytes_b, outcomes_b) = run(&commands);
        prop_assert_eq!(&bytes_a, &bytes_b);
        prop_assert_eq!(outcomes_a, outcomes_b);

        let split = split.min(commands.len());
        let mut state = State::default();
        for (i, c) in commands[..split].iter().enumerate() {
            apply(&mut state, i as u64 + 1, c);
        }
        let mut restored: State = serde_json::from_slice(&encode(&state)).unwrap();
        for (i, c) in commands[split..].iter().enumerate() {
            apply(&mut restored, (split + i) as u64 + 1, c);
        }
        prop_assert_eq!(encode(&restored), bytes_a);
    }

    /// Every stored deployment is valid and generations only grow.
    #[test]
    fn stored_deployments_stay_valid(commands in arb_commands()) {
        let mut state = State::default();
        for (i, c) in commands.iter().enumerate() {
            let before = state.deployments.clone();
            let outcome = apply(&mut state, i as u64 + 1, c);
            if let Outcome::Rejected(_) = outcome {
                prop_assert_eq!(&before, &state.deployments);
            }
            for (name, d) in &state.deployments {
                prop_assert!(validate_spec(&d.spec).is_ok());
                prop_assert_eq!(name, &d.spec.name);
                if let Some(old) = before.get(name) {
                    prop_assert!(d.generation >= old.generation);
                }
            }
        }
    }
}

#[test]
fn export_and_residency_are_validated() {
    let mut s = spec("a");
    s.export.eccn = "4e091".into();
    assert_eq!(validate_spec(&s).unwrap_err().field, "spec.export.eccn");

    let mut s = spec("a");
    s.residency.allowed = vec!["FR".into(), "EU27".into(), "GDPR-adequate".into()];
    s.residency.required_certifications = vec!["secnumcloud".into()];
    s.residency.min_location_trust = 2;
    validate_spec(&s).unwrap();

    s.residency.allowed = vec!["UK".into()];
    let e = validate_spec(&s).unwrap_err();
    assert_eq!(e.field, "spec.residency.allowed[0]");
    assert!(e.message.contains("\"GB\""), "{e}");

    s.residency.allowed = vec!["EU 27".into()];
    assert_eq!(
        validate_spec(&s).unwrap_err().field,
        "spec.residency.allowed[0]"
    );
    s.residency.allowed.clear();
    s.residency.min_location_trust = 4;
    assert_eq!(
        validate_spec(&s).unwrap_err().field,
        "spec.residency.min_location_trust"
    );
}

#[test]
fn nodes_are_validated_with_the_field_named() {
    use super::node::{Gpu, Inventory, NodeFacts};
    let facts = NodeFacts {
        country: "FR".into(),
        subdivision: "FR-IDF".into(),
        operator: "Exemple SAS".into(),
        operator_hq: "FR".into(),
        ultimate_parent_hq: "FR".into(),
        certifications: [("secnumcloud".to_string(), "2027-06-30".to_string())].into(),
        ..Default::default()
    };
    let gpu = |uuid: &str| Gpu {
        uuid: uuid.into(),
        model: "NVIDIA H100".into(),
        memory_mib: 81_559,
        ..Default::default()
    };
    let inventory = Inventory {
        cpu_millis: 64_000,
        memory_mib: 512_000,
        gpus: vec![gpu("GPU-1"), gpu("GPU-2")],
        ..Default::default()
    };
    validate_node("gpu-fr-1", &facts, &inventory).unwrap();

    let field = |facts: &NodeFacts, inventory: &Inventory| {
        validate_node("gpu-fr-1", facts, inventory)
            .unwrap_err()
            .field
    };
    assert_eq!(
        field(
            &NodeFacts {
                country: "FRA".into(),
                ..facts.clone()
            },
            &inventory
        ),
        "facts.country"
    );
    assert_eq!(
        field(
            &NodeFacts {
                subdivision: "DE-BY".into(),
                ..facts.clone()
            },
            &inventory
        ),
        "facts.subdivision"
    );
    assert_eq!(
        field(
            &NodeFacts {
                ultimate_parent_hq: "USA".into(),
                ..facts.clone()
            },
            &inventory
        ),
        "facts.ultimate_parent_hq"
    );
    let bad_date = NodeFacts {
        certifications: [("c5-type2".to_string(), "2027-02-30".to_string())].into(),
        ..facts.clone()
    };
    assert_eq!(
        field(&bad_date, &inventory),
        "facts.certifications.c5-type2"
    );
    let dup = Inventory {
        gpus: vec![gpu("GPU-1"), gpu("GPU-1")],
        ..inventory.clone()
    };
    assert_eq!(field(&facts, &dup), "inventory.gpus[1].uuid");
    assert!(
        is_date("2028-02-29")
            && !is_date("2027-02-29")
            && !is_date("2027-13-01")
            && !is_date("27-01-01")
    );
}

#[test]
fn health_checks_and_disconnect_rules_are_bounded() {
    let mut s = spec("a");
    s.health = HealthCheck {
        probe: HealthProbe::Http("/health".into()),
        interval_ms: 5_000,
        timeout_ms: 1_000,
    };
    s.stop_after_disconnect_ms = 30_000;
    validate_spec(&s).unwrap();

    let mut bad = s.clone();
    bad.health.probe = HealthProbe::Http("health".into());
    assert_eq!(validate_spec(&bad).unwrap_err().field, "spec.health.http");
    let mut bad = s.clone();
    bad.health.timeout_ms = 6_000;
    assert_eq!(
        validate_spec(&bad).unwrap_err().field,
        "spec.health.timeout"
    );
    let mut bad = s.clone();
    bad.health.interval_ms = 10;
    assert_eq!(
        validate_spec(&bad).unwrap_err().field,
        "spec.health.interval"
    );
    let mut bad = s.clone();
    bad.stop_after_disconnect_ms = 500;
    assert_eq!(
        validate_spec(&bad).unwrap_err().field,
        "spec.stop_after_disconnect"
    );
    let mut off = spec("a");
    off.health.interval_ms = 0;
    validate_spec(&off).expect("no probe needs no timing");
}

/// A state with one registered node "n" and one allocation "d-1-0" of deployment "d" on it.
fn state_with_allocation() -> State {
    let mut state = State::default();
    apply_spec(&mut state, 1, spec("d"), None);
    state.nodes.insert(
        "n".into(),
        node::Node {
            name: "n".into(),
            ..Default::default()
        },
    );
    state.allocations.insert(
        "d-1-0".into(),
        Allocation {
            id: "d-1-0".into(),
            deployment: "d".into(),
            node: "n".into(),
            revision: 1,
            ..Default::default()
        },
    );
    state.revision = 1;
    state
}

#[test]
fn status_reports_update_the_allocation_and_ignore_strangers() {
    let mut state = state_with_allocation();
    let report = |id: &str, status| AllocReport {
        id: id.into(),
        status,
        exit_code: Some(137),
        reason: "killed by signal 9".into(),
        restarts: 1,
    };
    let out = apply(
        &mut state,
        2,
        &cmd(
            500,
            Proposal::ReportAllocations {
                node: "n".into(),
                reports: vec![
                    report("d-1-0", AllocStatus::Failed),
                    report("zz-1-0", AllocStatus::Running),
                ],
            },
        ),
    );
    assert_eq!(
        out,
        Outcome::AllocationsReported {
            updated: 1,
            removed: 0,
            ignored: vec!["zz-1-0".into()]
        }
    );
    let a = &state.allocations["d-1-0"];
    assert_eq!(
        (a.status, a.exit_code, a.restarts, a.status_at_ms),
        (AllocStatus::Failed, Some(137), 1, 500)
    );
    assert_eq!(a.revision, 1, "a report is not news for the agent's stream");

    // A report from another node about this allocation is ignored; an unknown node is refused.
    let other = apply(
        &mut state,
        3,
        &cmd(
            600,
            Proposal::ReportAllocations {
                node: "m".into(),
                reports: vec![report("d-1-0", AllocStatus::Running)],
            },
        ),
    );
    assert_eq!(
        other,
        Outcome::Rejected(Rejection::NodeNotFound("m".into()))
    );
    assert_eq!(state.allocations["d-1-0"].status, AllocStatus::Failed);
}

#[test]
fn many_nodes_reports_in_one_entry_apply_node_by_node() {
    let mut state = state_with_allocation();
    let reports = |node: &str, status| NodeReports {
        node: node.into(),
        reports: vec![AllocReport {
            id: "d-1-0".into(),
            status,
            ..Default::default()
        }],
    };
    let out = apply(
        &mut state,
        2,
        &cmd(
            700,
            Proposal::ReportMany {
                nodes: vec![
                    reports("gone", AllocStatus::Running),
                    reports("n", AllocStatus::Running),
                ],
            },
        ),
    );
    // The unknown node is refused on its own; the other node's report is applied.
    assert_eq!(
        out,
        Outcome::ReportsApplied {
            per_node: vec![
                Outcome::Rejected(Rejection::NodeNotFound("gone".into())),
                Outcome::AllocationsReported {
                    updated: 1,
                    removed: 0,
                    ignored: vec![]
                },
            ]
        }
    );
    assert_eq!(state.allocations["d-1-0"].status, AllocStatus::Running);
    // Bounded and validated like single-node reports.
    let too_many = Proposal::ReportMany {
        nodes: vec![reports("n", AllocStatus::Running); REPORT_NODES_MAX + 1],
    };
    assert_eq!(validate_proposal(&too_many).unwrap_err().field, "nodes");
    let bad = Proposal::ReportMany {
        nodes: vec![reports("Not_A_Name", AllocStatus::Running)],
    };
    assert_eq!(validate_proposal(&bad).unwrap_err().field, "node");
}

#[test]
fn deleting_a_deployment_stops_its_allocations_until_the_agent_confirms() {
    let mut state = state_with_allocation();
    apply(
        &mut state,
        2,
        &cmd(10, Proposal::DeleteDeployment { name: "d".into() }),
    );
    let a = &state.allocations["d-1-0"];
    assert_eq!(a.desired, Desired::Stop);
    assert_eq!(a.revision, 2);
    assert_eq!(
        state.nodes["n"].assignments_revision, 2,
        "the node's stream must wake"
    );

    // "running" while stopping keeps the record; "stopped" removes it.
    let report = |status| Proposal::ReportAllocations {
        node: "n".into(),
        reports: vec![AllocReport {
            id: "d-1-0".into(),
            status,
            ..Default::default()
        }],
    };
    apply(&mut state, 3, &cmd(20, report(AllocStatus::Running)));
    assert!(state.allocations.contains_key("d-1-0"));
    let out = apply(&mut state, 4, &cmd(30, report(AllocStatus::Stopped)));
    assert_eq!(
        out,
        Outcome::AllocationsReported {
            updated: 0,
            removed: 1,
            ignored: vec![]
        }
    );
    assert!(state.allocations.is_empty());
}

#[test]
fn liveness_batches_change_only_what_differs() {
    let mut state = state_with_allocation();
    let set = |names: &[&str], status| Proposal::SetNodeStatus {
        names: names.iter().map(|n| n.to_string()).collect(),
        status,
    };
    let out = apply(
        &mut state,
        2,
        &cmd(10, set(&["n", "ghost"], NodeStatus::Down)),
    );
    assert_eq!(
        out,
        Outcome::NodeStatusSet {
            changed: vec!["n".into()]
        }
    );
    assert_eq!(state.nodes["n"].status, NodeStatus::Down);
    assert_eq!(state.nodes["n"].revision, 2);
    let again = apply(&mut state, 3, &cmd(20, set(&["n"], NodeStatus::Down)));
    assert_eq!(again, Outcome::NodeStatusSet { changed: vec![] });
    assert_eq!(state.nodes["n"].revision, 2, "no change, no new revision");
    apply(&mut state, 4, &cmd(30, set(&["n"], NodeStatus::Ready)));
    assert_eq!(state.nodes["n"].status, NodeStatus::Ready);
}

#[test]
fn reports_and_liveness_batches_are_bounded_and_validated() {
    let too_many = Proposal::ReportAllocations {
        node: "n".into(),
        reports: vec![
            AllocReport {
                id: "x".into(),
                ..Default::default()
            };
            REPORTS_MAX + 1
        ],
    };
    assert!(validate_proposal(&too_many).is_err());
    let control = Proposal::ReportAllocations {
        node: "n".into(),
        reports: vec![AllocReport {
            id: "x".into(),
            reason: "a\nb".into(),
            ..Default::default()
        }],
    };
    assert_eq!(validate_proposal(&control).unwrap_err().field, "reason");
    let bad_name = Proposal::SetNodeStatus {
        names: vec!["Bad Name".into()],
        status: NodeStatus::Down,
    };
    assert_eq!(validate_proposal(&bad_name).unwrap_err().field, "node.name");
}

#[test]
fn location_facts_are_named_as_certificates_name_them_and_trusted_one_by_one() {
    use super::node::{LocationTrust, NodeFacts};
    let mut facts = NodeFacts {
        country: "FR".into(),
        site: "par-1".into(),
        ..Default::default()
    };
    let names: Vec<&str> = facts.location().iter().map(|(name, _)| *name).collect();
    assert_eq!(names, sov_proto::identity::LOCATION_FACTS);
    // Before trust was kept per fact, every fact had the node's level.
    facts.location_trust = LocationTrust::OperatorCertificate;
    assert_eq!(
        facts.trust_of("site"),
        Some(LocationTrust::OperatorCertificate)
    );
    facts.set_trust(|name| name == "country");
    assert_eq!(
        facts.trust_of("country"),
        Some(LocationTrust::OperatorCertificate)
    );
    assert_eq!(facts.trust_of("site"), Some(LocationTrust::SelfReported));
    assert_eq!(facts.trust_of("operator"), None);
    assert_eq!(facts.location_trust, LocationTrust::SelfReported);
    facts.set_trust(|_| true);
    assert_eq!(facts.location_trust, LocationTrust::OperatorCertificate);
}

/// Move counters are reset only for deployments with nothing moving any more, judged from
/// their own allocations alone, including when another deployment's name extends theirs (its
/// allocations lie among theirs in the map).
#[test]
fn settled_moves_are_judged_by_each_deployments_own_allocations() {
    let mut state = State::default();
    for name in ["web", "web-2", "webx"] {
        let deployment = Deployment {
            spec: spec(name),
            generation: 1,
            created_at_ms: 0,
            updated_at_ms: 0,
            revision: 1,
            moves: Moves {
                started: 1,
                finished: 0,
            },
        };
        state.deployments.insert(name.into(), deployment);
    }
    let migrating = Standing::Migrating {
        rules: vec!["r".into()],
        drain: false,
        since_ms: 0,
        deadline_ms: 1,
        policy_version: 1,
        replacement: String::new(),
    };
    let mut allocation = |deployment: &str, id: &str, standing: Standing| {
        let a = Allocation {
            id: id.into(),
            deployment: deployment.into(),
            standing,
            ..Default::default()
        };
        state.allocations.insert(id.into(), a);
    };
    // "web-2-7-0" sorts between web's allocations; "webx" is outside web's range.
    allocation("web", "web-1-0", Standing::Compliant);
    allocation("web-2", "web-2-7-0", migrating.clone());
    allocation("web", "web-9-0", Standing::Compliant);
    allocation("webx", "webx-3-0", migrating);
    compliance::settle_moves(
        &mut state,
        vec!["web".into(), "web-2".into(), "webx".into(), "gone".into()],
    );
    assert_eq!(state.deployments["web"].moves, Moves::default());
    assert_eq!(state.deployments["web-2"].moves.started, 1);
    assert_eq!(state.deployments["webx"].moves.started, 1);
}
