//! Tests of the policy module (pure core only): table tests of every shipped rule, precise
//! problems for invalid bundles, memoization, fail-closed cases and determinism. The shipped
//! bundle is read from deploy/policies; reading files is for the tests, never the module.

use std::collections::BTreeMap;

use super::*;
use crate::state::node::{Gpu, Inventory, LocationTrust, Node, NodeFacts};
use crate::state::{DeploymentSpec, ExportAttrs, Residency};

const TODAY: &str = "2026-11-22";
const SHIPPED_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/policies");

/// The shipped bundle as a loader would pass it: policy, schema and entity files only.
pub(crate) fn shipped_files() -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(SHIPPED_DIR).expect("deploy/policies exists") {
        let path = entry.expect("directory entry").path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if [".cedar", ".cedarschema", ".json"]
            .iter()
            .any(|ext| name.ends_with(ext))
        {
            files.insert(name, std::fs::read_to_string(&path).expect("readable"));
        }
    }
    files
}

fn shipped() -> CompiledPolicy {
    compile(&shipped_files()).unwrap_or_else(|e| panic!("shipped bundle compiles:\n{e}"))
}

fn with_file(name: &str, text: &str) -> BTreeMap<String, String> {
    let mut files = shipped_files();
    files.insert(name.to_owned(), text.to_owned());
    files
}

fn problems(files: &BTreeMap<String, String>) -> Vec<Problem> {
    match compile(files) {
        Ok(_) => panic!("bundle should be rejected"),
        Err(e) => e.problems,
    }
}

/// The single problem a bundle has.
fn problem(files: &BTreeMap<String, String>) -> Problem {
    let mut all = problems(files);
    assert_eq!(all.len(), 1, "exactly one problem: {all:#?}");
    all.remove(0)
}

fn node(
    name: &str,
    country: &str,
    operator_hq: &str,
    ultimate_parent_hq: &str,
    certifications: &[(&str, &str)],
    trust: LocationTrust,
) -> Node {
    Node {
        name: name.into(),
        facts: NodeFacts {
            country: country.into(),
            subdivision: String::new(),
            site: format!("{name}-site"),
            operator: format!("{operator_hq} Cloud"),
            operator_hq: operator_hq.into(),
            ultimate_parent_hq: ultimate_parent_hq.into(),
            certifications: certifications
                .iter()
                .map(|(c, until)| ((*c).into(), (*until).into()))
                .collect(),
            location_trust: trust,
            fact_trust: BTreeMap::new(),
        },
        inventory: Inventory {
            cpu_millis: 64_000,
            memory_mib: 512 * 1024,
            gpus: vec![gpu(name, 0, "NVIDIA H100 80GB HBM3")],
            ..Default::default()
        },
        ..Default::default()
    }
}

fn gpu(node: &str, index: u32, model: &str) -> Gpu {
    Gpu {
        index,
        uuid: format!("GPU-{node}-{index}"),
        model: model.into(),
        memory_mib: 81_559,
        ..Default::default()
    }
}

/// The eight nodes of the issue: FR, DE, PL, an Irish node of a US-parented company, US, CH,
/// GB and CN.
fn fleet() -> Vec<Node> {
    use LocationTrust::*;
    vec![
        node(
            "fr",
            "FR",
            "FR",
            "FR",
            &[("secnumcloud", "2027-06-30")],
            OperatorCertificate,
        ),
        node(
            "de",
            "DE",
            "DE",
            "DE",
            &[("c5-type2", "2027-01-31")],
            HardwareAttested,
        ),
        node("pl", "PL", "PL", "PL", &[], SelfReported),
        node("ie-us-parent", "IE", "IE", "US", &[], OperatorCertificate),
        node("us", "US", "US", "US", &[], OperatorCertificate),
        node("ch", "CH", "CH", "CH", &[], OperatorCertificate),
        node("gb", "GB", "GB", "GB", &[], OperatorCertificate),
        node("cn", "CN", "CN", "CN", &[], OperatorCertificate),
    ]
}

fn deployment(name: &str) -> DeploymentSpec {
    DeploymentSpec {
        name: name.into(),
        model: "mistralai/Mistral-7B-Instruct-v0.3".into(),
        replicas: 1,
        ..Default::default()
    }
}

fn with_residency(name: &str, allowed: &[&str]) -> DeploymentSpec {
    DeploymentSpec {
        residency: Residency {
            allowed: allowed.iter().map(|a| (*a).into()).collect(),
            ..Default::default()
        },
        ..deployment(name)
    }
}

fn with_eccn(name: &str, eccn: &str) -> DeploymentSpec {
    DeploymentSpec {
        export: ExportAttrs {
            eccn: eccn.into(),
            ..Default::default()
        },
        ..deployment(name)
    }
}

fn ids(decision: &Decision) -> Vec<&str> {
    decision.forbidding.iter().map(|r| r.id.as_str()).collect()
}

const EMBARGO: &str = "embargo-d5";
const EU_HQ: &str = "eu-headquartered-operator";
const EXPORT: &str = "export-4e091-tier1";
const TRUST: &str = "location-trust";
const CERTS: &str = "required-certifications";
const RESIDENCY: &str = "residency";

/// Every shipped rule against every node of the fleet: the exact forbidding rules, in bundle
/// order, per pair. Columns: FR, DE, PL, IE (US parent), US, CH, GB, CN.
#[test]
fn shipped_rules_on_the_fleet() {
    let policy = shipped();
    let nodes = fleet();
    let secnumcloud = DeploymentSpec {
        residency: Residency {
            required_certifications: vec!["secnumcloud".into()],
            ..Default::default()
        },
        ..deployment("secnumcloud")
    };
    let trust_2 = DeploymentSpec {
        residency: Residency {
            min_location_trust: 2,
            ..Default::default()
        },
        ..deployment("trust-2")
    };
    let none: &[&str] = &[];
    let table: Vec<(DeploymentSpec, [&[&str]; 8])> = vec![
        (
            deployment("no-requirements"),
            [none, none, none, none, none, none, none, &[EMBARGO]],
        ),
        (
            with_residency("eu27", &["EU27"]),
            [
                none,
                none,
                none,
                &[EU_HQ],
                &[EU_HQ, RESIDENCY],
                &[EU_HQ, RESIDENCY],
                &[EU_HQ, RESIDENCY],
                &[EMBARGO, EU_HQ, RESIDENCY],
            ],
        ),
        (
            with_eccn("frontier", "4E091"),
            [
                none,
                none,
                &[EXPORT],
                none,
                none,
                &[EXPORT],
                none,
                &[EMBARGO, EXPORT],
            ],
        ),
        (
            secnumcloud,
            [
                none,
                &[CERTS],
                &[CERTS],
                &[CERTS],
                &[CERTS],
                &[CERTS],
                &[CERTS],
                &[EMBARGO, CERTS],
            ],
        ),
        (
            trust_2,
            [none, none, &[TRUST], none, none, none, none, &[EMBARGO]],
        ),
    ];
    for (spec, expected) in &table {
        for (node, expected) in nodes.iter().zip(expected) {
            let decision = policy.evaluate(spec, node, TODAY);
            assert_eq!(
                ids(&decision),
                *expected,
                "{} on {}: {decision:?}",
                spec.name,
                node.name
            );
            assert_eq!(decision.allowed, expected.is_empty());
            assert!(decision.errors.is_empty(), "{:?}", decision.errors);
        }
    }
}

/// A rule can require a level of one fact (`resource.fact_trust.<fact>`) where the node's
/// `location_trust` (the least of its facts) would refuse too much.
#[test]
fn a_rule_can_require_the_trust_of_one_fact() {
    let files = with_file(
        "country-vouched.cedar",
        "@id(\"country-vouched\")\n@reason(\"4E091 models run where the operator vouches for the country\")\n\
         @on_change(\"stop-now\")\n\
         forbid(principal, action, resource)\n\
         when { principal.eccn == \"4E091\" && resource.fact_trust.country < 2 };\n",
    );
    let policy = compile(&files).unwrap_or_else(|e| panic!("bundle compiles:\n{e}"));
    let frontier = with_eccn("frontier", "4E091");
    let mut us = fleet()[4].clone();
    // The certificate vouches for the country only: the node is self-reported as a whole, its
    // country is not.
    us.facts.set_trust(|fact| fact == "country");
    assert_eq!(us.facts.location_trust, LocationTrust::SelfReported);
    let decision = policy.evaluate(&frontier, &us, TODAY);
    assert!(decision.allowed, "{decision:?}");
    // Nothing vouched: the country rule forbids.
    us.facts.set_trust(|_| false);
    let decision = policy.evaluate(&frontier, &us, TODAY);
    assert_eq!(ids(&decision), ["country-vouched"]);
    // Every fact vouched.
    us.facts.set_trust(|_| true);
    assert!(policy.evaluate(&frontier, &us, TODAY).allowed);
}

/// A bundle written before `fact_trust` existed (active in a cluster being upgraded) still
/// compiles and decides as before; only a rule on `fact_trust` needs the new schema.
#[test]
fn a_schema_from_before_fact_trust_still_compiles() {
    let mut files = shipped_files();
    let schema = files.get_mut("schema.cedarschema").unwrap();
    let start = schema.find("  // How each location fact is known").unwrap();
    let end = start + schema[start..].find("  },\n").unwrap() + "  },\n".len();
    schema.replace_range(start..end, "");
    assert!(!schema.contains("fact_trust"));
    let old = compile(&files).unwrap_or_else(|e| panic!("old bundle compiles:\n{e}"));
    let nodes = fleet();
    let eu = with_residency("eu27", &["EU27"]);
    assert_eq!(
        ids(&old.evaluate(&eu, &nodes[3], TODAY)),
        ids(&shipped().evaluate(&eu, &nodes[3], TODAY))
    );
    assert!(old.evaluate(&eu, &nodes[0], TODAY).allowed);
    files.insert(
        "country-vouched.cedar".into(),
        "@id(\"country-vouched\")\n@reason(\"the country is vouched for\")\n\
         forbid(principal, action, resource)\n\
         when { resource.fact_trust.country < 2 };\n"
            .into(),
    );
    let problems = problems(&files);
    assert!(
        problems
            .iter()
            .any(|p| p.to_string().contains("fact_trust")),
        "{problems:#?}"
    );
}

#[test]
fn forbidding_rules_carry_their_reason_and_on_change() {
    let policy = shipped();
    let cn = &fleet()[7];
    let decision = policy.evaluate(&with_eccn("frontier", "4E091"), cn, TODAY);
    assert_eq!(
        decision.forbidding,
        vec![
            RuleRef {
                id: EMBARGO.into(),
                reason: "nothing is placed in US arms-embargoed destinations (Country Group \
                         D:5) or Macau"
                    .into(),
                on_change: OnChange::StopNow,
            },
            RuleRef {
                id: EXPORT.into(),
                reason: "models classified 4E091 run only in US export Tier 1 countries, on \
                         operators headquartered with their ultimate parent in Tier 1"
                    .into(),
                on_change: OnChange::StopNow,
            },
        ]
    );
}

#[test]
fn shipped_rules_and_groups_are_listed_in_bundle_order() {
    let policy = shipped();
    let rules: Vec<(&str, Effect, OnChange, &str)> = policy
        .rules()
        .iter()
        .map(|r| (r.id.as_str(), r.effect, r.on_change, r.file.as_str()))
        .collect();
    assert_eq!(
        rules,
        vec![
            (
                "base-permit",
                Effect::Permit,
                OnChange::Migrate,
                "base.cedar"
            ),
            (
                EMBARGO,
                Effect::Forbid,
                OnChange::StopNow,
                "embargo-d5.cedar"
            ),
            (
                EU_HQ,
                Effect::Forbid,
                OnChange::Migrate,
                "eu-headquartered-operator.cedar"
            ),
            (
                EXPORT,
                Effect::Forbid,
                OnChange::StopNow,
                "export-4e091-tier1.cedar"
            ),
            (
                TRUST,
                Effect::Forbid,
                OnChange::Migrate,
                "location-trust.cedar"
            ),
            (
                CERTS,
                Effect::Forbid,
                OnChange::Migrate,
                "required-certifications.cedar"
            ),
            (
                RESIDENCY,
                Effect::Forbid,
                OnChange::Migrate,
                "residency.cedar"
            ),
        ]
    );
    assert!(policy.rules().iter().all(|r| !r.reason.is_empty()));
    assert_eq!(
        policy.groups(),
        [
            "EEA",
            "EU27",
            "GDPR-adequate",
            "US-D5",
            "US-Embargo",
            "US-Tier1"
        ]
    );
}

/// Groups nest: EU27 is in the EEA, the EEA in GDPR-adequate, D:5 in the embargo tier.
#[test]
fn jurisdiction_groups_nest() {
    let policy = shipped();
    let place = |allowed: &[&str], country: &str| {
        let n = node(
            "n",
            country,
            country,
            country,
            &[],
            LocationTrust::SelfReported,
        );
        policy
            .evaluate(&with_residency("d", allowed), &n, TODAY)
            .allowed
    };
    for (country, eea, adequate) in [
        ("FR", true, true),
        ("NO", true, true),
        ("IS", true, true),
        ("CH", false, true),
        ("GB", false, true),
        ("JP", false, true),
        ("US", false, true),
        ("AU", false, false),
        ("BR", false, false),
    ] {
        assert_eq!(place(&["EEA"], country), eea, "EEA {country}");
        assert_eq!(
            place(&["GDPR-adequate"], country),
            adequate,
            "adequate {country}"
        );
    }
    // Countries and groups mix: PL or anywhere in the EEA outside the EU.
    assert!(place(&["PL", "US-Tier1"], "PL"));
    assert!(place(&["PL", "US-Tier1"], "JP"));
    assert!(!place(&["PL", "US-Tier1"], "CH"));
    // Macau is in the embargo tier without being in D:5; Cyprus is in both EU27 and D:5.
    assert!(!place(&[], "MO"));
    assert!(!place(&["EU27"], "CY"));
}

#[test]
fn an_empty_headquarters_fails_every_rule_about_headquarters() {
    let policy = shipped();
    for (operator_hq, parent) in [("", "FR"), ("FR", ""), ("", "")] {
        let n = node(
            "fr",
            "FR",
            operator_hq,
            parent,
            &[],
            LocationTrust::HardwareAttested,
        );
        let eu = policy.evaluate(&with_residency("eu", &["EU27"]), &n, TODAY);
        assert_eq!(ids(&eu), [EU_HQ], "{operator_hq:?}/{parent:?}");
        let frontier = policy.evaluate(&with_eccn("frontier", "4E091"), &n, TODAY);
        assert_eq!(ids(&frontier), [EXPORT]);
        // Rules that do not read headquarters are unaffected.
        assert!(policy.evaluate(&deployment("plain"), &n, TODAY).allowed);
    }
}

#[test]
fn a_certification_is_in_force_through_its_last_day_only() {
    let policy = shipped();
    let secnumcloud = DeploymentSpec {
        residency: Residency {
            required_certifications: vec!["secnumcloud".into()],
            ..Default::default()
        },
        ..deployment("secnumcloud")
    };
    let trust = LocationTrust::OperatorCertificate;
    let until = |day: &str| node("fr", "FR", "FR", "FR", &[("secnumcloud", day)], trust);
    assert_eq!(
        ids(&policy.evaluate(&secnumcloud, &until("2026-11-21"), TODAY)),
        [CERTS]
    );
    assert!(policy.evaluate(&secnumcloud, &until(TODAY), TODAY).allowed);
    // A valid-until that is not a date cannot be judged, so it is not in force.
    assert_eq!(
        ids(&policy.evaluate(&secnumcloud, &until("forever"), TODAY)),
        [CERTS]
    );
}

#[test]
fn an_unknown_residency_group_denies_everywhere() {
    let policy = shipped();
    let fr = &fleet()[0];
    let expected = RuleRef {
        id: UNKNOWN_JURISDICTION_RULE_ID.into(),
        reason: "residency names group \"EU28\" which the policy bundle does not define".into(),
        on_change: OnChange::Migrate,
    };
    let alone = policy.evaluate(&with_residency("d", &["EU28"]), fr, TODAY);
    assert!(!alone.allowed);
    assert_eq!(alone.forbidding[0], expected);
    // Next to a valid entry it still denies: a typo must not quietly narrow residency.
    let mixed = policy.evaluate(&with_residency("d", &["EU28", "FR"]), fr, TODAY);
    assert_eq!(mixed.forbidding, vec![expected]);
    assert!(!policy.groups().contains(&"EU28".to_owned()));
}

#[test]
fn unresolvable_node_facts_and_bad_days_deny_with_an_error() {
    let policy = shipped();
    let plain = deployment("plain");
    for country in ["", "XX", "fr"] {
        let n = node(
            "n",
            country,
            "FR",
            "FR",
            &[],
            LocationTrust::HardwareAttested,
        );
        let decision = policy.evaluate(&plain, &n, TODAY);
        assert!(!decision.allowed);
        assert_eq!(ids(&decision), [EVALUATION_ERROR_RULE_ID]);
        assert!(
            decision.errors[0].contains("is not an ISO 3166-1"),
            "{decision:?}"
        );
    }
    let fr = &fleet()[0];
    let bad_hq = node("n", "FR", "UK", "FR", &[], LocationTrust::HardwareAttested);
    assert_eq!(
        ids(&policy.evaluate(&plain, &bad_hq, TODAY)),
        [EVALUATION_ERROR_RULE_ID]
    );
    for day in ["", "2026-13-01", "22/11/2026"] {
        let decision = policy.evaluate(&plain, fr, day);
        assert_eq!(ids(&decision), [EVALUATION_ERROR_RULE_ID], "{day:?}");
        let mut evaluator = Evaluator::new(&policy, day);
        assert_eq!(evaluator.decide(&plain, fr), &decision);
        assert_eq!(evaluator.evaluations(), 0);
    }
}

/// An error while evaluating a policy denies, even when the failing policy is a forbid that
/// Cedar itself would skip.
#[test]
fn evaluation_errors_fail_closed() {
    let files = with_file(
        "zz-overflow.cedar",
        "@id(\"big-models\")\n@reason(\"overflows for large models\")\n\
         forbid (principal, action == Action::\"Place\", resource)\n\
         when { principal.training_compute_log10 * 4611686018427387904 < 0 };\n",
    );
    let policy = compile(&files).unwrap();
    let fr = &fleet()[0];
    assert!(policy.evaluate(&deployment("small"), fr, TODAY).allowed);
    let big = DeploymentSpec {
        export: ExportAttrs {
            training_compute_log10: 26,
            ..Default::default()
        },
        ..deployment("big")
    };
    let decision = policy.evaluate(&big, fr, TODAY);
    assert!(!decision.allowed);
    assert_eq!(ids(&decision), [EVALUATION_ERROR_RULE_ID]);
    assert_eq!(decision.errors.len(), 1);
    assert!(
        decision.errors[0].contains("big-models"),
        "{:?}",
        decision.errors
    );
    assert!(
        decision.errors[0].contains("overflow"),
        "{:?}",
        decision.errors
    );
}

#[test]
fn no_matching_permit_denies_with_the_no_permit_rule() {
    let mut files = shipped_files();
    files.insert(
        "base.cedar".into(),
        "@id(\"eu-only\")\n@reason(\"only EU nodes\")\n\
         permit (principal, action == Action::\"Place\", resource)\n\
         when { resource.country in Group::\"EU27\" };\n"
            .into(),
    );
    let policy = compile(&files).unwrap();
    let fleet = fleet();
    assert!(policy.evaluate(&deployment("d"), &fleet[0], TODAY).allowed);
    let us = policy.evaluate(&deployment("d"), &fleet[4], TODAY);
    assert_eq!(
        us.forbidding,
        vec![RuleRef {
            id: NO_PERMIT_RULE_ID.into(),
            reason: "no policy permits placing this deployment on this node".into(),
            on_change: OnChange::Migrate,
        }]
    );
    // Forbids that match are listed too, before the missing permit.
    let cn = policy.evaluate(&deployment("d"), &fleet[7], TODAY);
    assert_eq!(ids(&cn), [EMBARGO, NO_PERMIT_RULE_ID]);
}

/// Accelerators resolve to their export class; models the data does not list are
/// "unclassified", so a policy can refuse them.
#[test]
fn accelerators_carry_their_export_class() {
    let files = with_file(
        "zz-accelerators.cedar",
        "@id(\"no-3a090-outside-tier1\")\n@reason(\"3A090 hardware stays in Tier 1\")\n\
         forbid (principal, action == Action::\"Place\", resource)\n\
         when { resource.accelerator_eccns.contains(\"3A090\") }\n\
         unless { resource.country in Group::\"US-Tier1\" };\n\
         @id(\"no-unclassified-gpus\")\n@reason(\"unclassified GPU models are not used\")\n\
         forbid (principal, action == Action::\"Place\", resource)\n\
         when { resource.accelerator_eccns.contains(\"unclassified\") };\n\
         @id(\"no-h200\")\n@reason(\"no H200\")\n\
         forbid (principal, action == Action::\"Place\", resource)\n\
         when { resource.accelerators.contains(Accelerator::\"NVIDIA H200\") };\n",
    );
    let policy = compile(&files).unwrap();
    let d = deployment("d");
    let mut ch = node("ch", "CH", "CH", "CH", &[], LocationTrust::SelfReported);
    assert_eq!(
        ids(&policy.evaluate(&d, &ch, TODAY)),
        ["no-3a090-outside-tier1"]
    );
    ch.inventory.gpus = vec![gpu("ch", 0, "Mystery Accelerator 9000")];
    assert_eq!(
        ids(&policy.evaluate(&d, &ch, TODAY)),
        ["no-unclassified-gpus"]
    );
    let mut fr = node("fr", "FR", "FR", "FR", &[], LocationTrust::SelfReported);
    assert!(policy.evaluate(&d, &fr, TODAY).allowed);
    fr.inventory.gpus.push(gpu("fr", 1, "NVIDIA H200"));
    assert_eq!(ids(&policy.evaluate(&d, &fr, TODAY)), ["no-h200"]);
}

/// 100 nodes with 3 fact profiles: Cedar runs 3 times per deployment signature, however many
/// deployments share that signature, and the memoized decisions equal the direct ones.
#[test]
fn the_evaluator_asks_cedar_once_per_signature_pair() {
    let policy = shipped();
    let profiles = [
        ("FR", "FR", LocationTrust::OperatorCertificate),
        ("IE", "US", LocationTrust::OperatorCertificate),
        ("US", "US", LocationTrust::HardwareAttested),
    ];
    let nodes: Vec<Node> = (0..100)
        .map(|i| {
            let (country, parent, trust) = profiles[i % 3];
            let mut n = node("n", country, country, parent, &[], trust);
            // Names and GPU serials differ; they are not facts Cedar sees.
            n.name = format!("node-{i}");
            n.inventory.gpus = vec![gpu(&n.name, 0, "NVIDIA H100 80GB HBM3")];
            n.facts.site = format!("{country}-site");
            n
        })
        .collect();
    let deployments = [
        with_residency("eu-a", &["EU27"]),
        with_residency("eu-b", &["EU27"]),
        with_eccn("frontier", "4E091"),
    ];
    let mut evaluator = Evaluator::new(&policy, TODAY);
    for d in &deployments {
        for n in &nodes {
            let decision = evaluator.decide(d, n).clone();
            assert_eq!(decision, policy.evaluate(d, n, TODAY));
        }
    }
    // Two deployment signatures (eu-a and eu-b share one) times three node profiles.
    assert_eq!(evaluator.evaluations(), 2 * 3);

    // A changed fact is a new signature: one more evaluation, and a different answer.
    let mut moved = nodes[0].clone();
    moved.facts.ultimate_parent_hq = "US".into();
    assert!(evaluator.decide(&deployments[0], &nodes[0]).allowed);
    assert!(!evaluator.decide(&deployments[0], &moved).allowed);
    assert_eq!(evaluator.evaluations(), 2 * 3 + 1);
}

#[test]
fn decisions_and_hashes_are_deterministic() {
    let first = shipped();
    let second = shipped();
    assert_eq!(first.hash(), second.hash());
    assert_eq!(first.hash().len(), 64);
    assert!(
        first
            .hash()
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    assert_eq!(first.rules(), second.rules());
    let deployments = [
        deployment("a"),
        with_residency("b", &["EU27", "CH"]),
        with_eccn("c", "4E091"),
    ];
    for d in &deployments {
        for n in &fleet() {
            let a = first.evaluate(d, n, TODAY);
            assert_eq!(a, first.evaluate(d, n, TODAY));
            assert_eq!(a, second.evaluate(d, n, TODAY));
        }
    }
    // Any change to any file is a new version.
    let mut files = shipped_files();
    files.get_mut("base.cedar").unwrap().push('\n');
    assert_ne!(compile(&files).unwrap().hash(), first.hash());
}

/// The hash is SHA-256 over (name length, name, contents length, contents) per file, lengths
/// as u64 big-endian: a value anyone can recompute (`sovctl policy show` prints it).
#[test]
fn the_hash_is_sha256_over_length_prefixed_files() {
    let files = BTreeMap::from([("a".to_owned(), "b".to_owned())]);
    // printf '\0\0\0\0\0\0\0\1a\0\0\0\0\0\0\0\1b' | sha256sum
    assert_eq!(
        bundle::hash(&files),
        "3c9d591045bc8876f9d0399bbfb05c6a412096e906f73278f98406cd5dca86df"
    );
}

#[test]
fn compiled_policies_can_be_shared_between_threads() {
    fn shareable<T: Send + Sync + Clone>() {}
    shareable::<CompiledPolicy>();
}

// ---- invalid bundles: each gives one precise problem --------------------------------------

#[test]
fn a_syntax_error_names_file_line_and_column() {
    let p = problem(&with_file(
        "broken.cedar",
        "@id(\"broken\")\n@reason(\"r\")\nforbid (principal, action, resource)\nwhen { resource.country in };\n",
    ));
    assert_eq!((p.file.as_str(), p.line, p.column), ("broken.cedar", 4, 28));
    assert!(p.message.contains("unexpected token `}`"), "{p}");
    assert!(
        p.to_string()
            .starts_with("broken.cedar:4:28: unexpected token"),
        "{p}"
    );
}

#[test]
fn a_schema_violation_points_at_the_expression() {
    let p = problem(&with_file(
        "continent.cedar",
        "@id(\"continent\")\n@reason(\"r\")\nforbid (principal, action == Action::\"Place\", resource)\n  when { resource.continent == \"EU\" };\n",
    ));
    assert_eq!(
        (p.file.as_str(), p.line, p.column),
        ("continent.cedar", 4, 10)
    );
    assert!(
        p.message
            .contains("attribute `continent` on entity type `Node` not found"),
        "{p}"
    );
    // Reading an optional attribute without `has` is refused too (it could fail open).
    let p = problem(&with_file(
        "hq.cedar",
        "@id(\"hq\")\n@reason(\"r\")\nforbid (principal, action == Action::\"Place\", resource)\n  unless { resource.operator_hq in Group::\"EU27\" };\n",
    ));
    assert_eq!((p.line, p.column), (4, 12));
    assert!(
        p.message.contains("optional attribute `operator_hq`"),
        "{p}"
    );
}

#[test]
fn an_unknown_group_in_a_policy_is_refused() {
    let p = problem(&with_file(
        "eu28.cedar",
        "@id(\"eu28\")\n@reason(\"r\")\nforbid (principal, action == Action::\"Place\", resource)\n  unless { resource.country in Group::\"EU28\" };\n",
    ));
    assert_eq!((p.file.as_str(), p.line, p.column), ("eu28.cedar", 4, 39));
    assert!(
        p.message.starts_with("unknown group Group::\"EU28\""),
        "{p}"
    );
    assert!(p.message.contains("EEA, EU27, GDPR-adequate"), "{p}");
    let p = problem(&with_file(
        "uk.cedar",
        "@id(\"uk\")\n@reason(\"r\")\nforbid (principal, action == Action::\"Place\", resource)\n  when { resource.country == Country::\"UK\" };\n",
    ));
    assert!(
        p.message.starts_with("unknown country Country::\"UK\""),
        "{p}"
    );
}

#[test]
fn an_unknown_group_in_the_entity_data_is_refused() {
    let mut files = shipped_files();
    let data = files.get_mut("entities.json").unwrap();
    *data = data.replacen(
        "[\n",
        "[\n  {\"uid\": {\"type\": \"Country\", \"id\": \"VA\"}, \"attrs\": {}, \"parents\": [{\"type\": \"Group\", \"id\": \"EU28\"}]},\n",
        1,
    );
    let p = problem(&files);
    assert_eq!((p.file.as_str(), p.line, p.column), ("entities.json", 2, 3));
    assert!(
        p.message
            .starts_with("unknown group Group::\"EU28\" (a parent of Country::\"VA\")"),
        "{p}"
    );
}

#[test]
fn bad_entity_data_is_refused_precisely() {
    let replace_first = |entity: &str| {
        let mut files = shipped_files();
        let data = files.get_mut("entities.json").unwrap();
        *data = data.replacen("[\n", &format!("[\n  {entity},\n"), 1);
        problem(&files)
    };
    let p =
        replace_first(r#"{"uid": {"type": "Country", "id": "UK"}, "attrs": {}, "parents": []}"#);
    assert_eq!(p.line, 2);
    assert!(
        p.message.contains("Country::\"UK\" is not an ISO 3166-1"),
        "{p}"
    );
    let p = replace_first(
        r#"{"uid": {"type": "Group", "id": "EU"}, "attrs": {"name": "x", "source": "y", "as_of": "z"}, "parents": []}"#,
    );
    assert!(p.message.contains("not two letters long"), "{p}");
    let p = replace_first(
        r#"{"uid": {"type": "Group", "id": "NATO"}, "attrs": {"name": "x"}, "parents": []}"#,
    );
    assert_eq!(p.line, 2);
    assert!(p.message.contains("does not conform to the schema"), "{p}");
    let p = replace_first(r#"{"uid": {"type": "Node", "id": "n1"}, "attrs": {}, "parents": []}"#);
    assert!(
        p.message.contains("entity data") || p.message.contains("Node"),
        "{p}"
    );
    let p = replace_first(
        r#"{"uid": {"type": "Group", "id": "EEA"}, "attrs": {"name": "x", "source": "y", "as_of": "z"}, "parents": []}"#,
    );
    assert!(p.message.contains("defined twice"), "{p}");

    let mut files = shipped_files();
    files.insert("entities.json".into(), "[\n  {\"uid\": \n".into());
    let p = problem(&files);
    assert_eq!((p.file.as_str(), p.line), ("entities.json", 3));
    assert!(p.message.contains("JSON"), "{p}");
}

#[test]
fn a_group_cycle_is_refused() {
    let mut files = shipped_files();
    let data = files.get_mut("entities.json").unwrap();
    // GDPR-adequate is the top of EU27 -> EEA -> GDPR-adequate; make it a member of EU27.
    *data = data.replacen(
        "\"as_of\": \"2026-11-22\"}, \"parents\": []}",
        "\"as_of\": \"2026-11-22\"}, \"parents\": [{\"type\": \"Group\", \"id\": \"EU27\"}]}",
        1,
    );
    let p = problem(&files);
    assert_eq!(p.file, "entities.json");
    assert!(p.message.contains("may not contain itself"), "{p}");
}

#[test]
fn annotations_are_checked() {
    let policy = |annotations: &str, effect: &str| {
        with_file(
            "zz.cedar",
            &format!(
                "// a comment first\n{annotations}\n{effect} (principal, action == Action::\"Place\", resource);\n"
            ),
        )
    };
    let cases = [
        (
            "@id(\"later\")\n@reason(\"r\")\n@on_change(\"later\")",
            "forbid",
            "@on_change(\"later\") must be \"audit\", \"migrate\" or \"stop-now\"",
        ),
        ("@reason(\"r\")", "forbid", "policy has no @id"),
        ("@id(\"no-reason\")", "forbid", "policy has no @reason"),
        (
            "@id(\"Bad Id\")\n@reason(\"r\")",
            "forbid",
            "@id(\"Bad Id\") must be lower-case",
        ),
        (
            "@id(\"no-permit\")\n@reason(\"r\")",
            "forbid",
            "@id(\"no-permit\") is reserved",
        ),
        (
            "@id(\"p\")\n@reason(\"r\")\n@on_change(\"audit\")",
            "permit",
            "@on_change applies to forbid policies only",
        ),
        (
            "@id(\"typo\")\n@reason(\"r\")\n@onchange(\"audit\")",
            "forbid",
            "unknown annotation @onchange",
        ),
    ];
    for (annotations, effect, expected) in cases {
        let p = problem(&policy(annotations, effect));
        assert_eq!(
            (p.file.as_str(), p.line, p.column),
            ("zz.cedar", 2, 1),
            "{p}"
        );
        assert!(p.message.starts_with(expected), "{expected:?}: {p}");
    }
    // Every on_change value parses, and a forbid without one migrates.
    for (annotation, expected) in [
        ("@on_change(\"audit\")", OnChange::Audit),
        ("@on_change(\"migrate\")", OnChange::Migrate),
        ("@on_change(\"stop-now\")", OnChange::StopNow),
        ("", OnChange::Migrate),
    ] {
        let files = policy(
            &format!("@id(\"zz\")\n@reason(\"r\")\n{annotation}"),
            "forbid",
        );
        let compiled = compile(&files).unwrap();
        let rule = compiled.rules().iter().find(|r| r.id == "zz").unwrap();
        assert_eq!(rule.on_change, expected);
    }
}

#[test]
fn a_duplicate_id_points_at_both_policies() {
    let p = problem(&with_file(
        "zz-dup.cedar",
        "\n@id(\"residency\")\n@reason(\"r\")\nforbid (principal, action, resource);\n",
    ));
    assert_eq!((p.file.as_str(), p.line, p.column), ("zz-dup.cedar", 2, 1));
    assert!(
        p.message
            .starts_with("duplicate @id(\"residency\"): also used at residency.cedar:4:1"),
        "{p}"
    );
}

#[test]
fn policies_may_not_name_one_deployment_or_node() {
    let p = problem(&with_file(
        "zz.cedar",
        "@id(\"one-node\")\n@reason(\"r\")\nforbid (principal, action == Action::\"Place\", resource == Node::\"gpu-1\");\n",
    ));
    assert!(
        p.message
            .contains("Node::\"gpu-1\": policies may not name a single"),
        "{p}"
    );
    assert_eq!(p.line, 3);
}

#[test]
fn the_bundle_layout_is_checked() {
    let mut files = shipped_files();
    files.insert("README.md".into(), "# docs".into());
    let p = problem(&files);
    assert_eq!(p.file, "README.md");
    assert!(p.message.contains("is not part of a bundle"), "{p}");

    let mut files = shipped_files();
    files.insert("other.cedarschema".into(), String::new());
    files.remove("entities.json");
    let all = problems(&files);
    assert_eq!(all.len(), 2, "{all:#?}");
    assert!(
        all[0]
            .message
            .starts_with("a bundle has exactly one *.cedarschema")
    );
    assert!(
        all[1]
            .message
            .starts_with("a bundle has exactly one *.json")
    );
    assert_eq!(
        all[0].to_string(),
        all[0].message,
        "bundle problems name no file"
    );

    let mut files = shipped_files();
    files.insert("../escape.cedar".into(), String::new());
    assert!(
        problem(&files)
            .message
            .starts_with("file names are letters")
    );

    let mut files = shipped_files();
    for i in 0..BUNDLE_FILES_MAX {
        files.insert(format!("extra-{i}.cedar"), String::new());
    }
    assert!(problem(&files).message.contains("the limit is 64"));

    let mut files = shipped_files();
    files.insert("huge.cedar".into(), "/".repeat(BUNDLE_BYTES_MAX));
    assert!(
        problem(&files)
            .message
            .contains(&format!("the limit is {BUNDLE_BYTES_MAX}"))
    );

    let mut files = shipped_files();
    files.insert("base.cedar".into(), "// no permit any more\n".into());
    assert!(
        problem(&files)
            .message
            .starts_with("the bundle has no permit policy")
    );
}

#[test]
fn a_schema_must_declare_what_sov_supplies() {
    let mut files = shipped_files();
    let schema = files.get_mut("schema.cedarschema").unwrap();
    *schema = schema.replace("  accelerator_eccns: Set<String>,\n", "");
    let p = problem(&files);
    assert_eq!(p.file, "schema.cedarschema");
    assert!(
        p.message
            .starts_with("the schema must declare the Deployment and Node"),
        "{p}"
    );

    // Making a headquarters required would let an unknown one fail open; refused too.
    let mut files = shipped_files();
    let schema = files.get_mut("schema.cedarschema").unwrap();
    *schema = schema.replace("operator_hq?: Country", "operator_hq: Country");
    assert!(
        problem(&files)
            .message
            .starts_with("the schema must declare")
    );

    let mut files = shipped_files();
    let schema = files.get_mut("schema.cedarschema").unwrap();
    *schema = schema.replace("entity Country in [Group];", "entity Country in [Group]");
    let p = problem(&files);
    assert_eq!(p.file, "schema.cedarschema");
    assert!(p.line > 0 && p.column > 0, "{p}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let mut files = shipped_files();
    files.insert(
        "zz.cedar".into(),
        "@id(\"a\")\n@reason(\"r\")\n@on_change(\"soon\")\nforbid (principal, action, resource);\n\
         @reason(\"r\")\nforbid (principal, action, resource);\n"
            .into(),
    );
    files.insert("zy.cedar".into(), "permit (".into());
    let all = problems(&files);
    let summary: Vec<(&str, u32)> = all.iter().map(|p| (p.file.as_str(), p.line)).collect();
    assert_eq!(
        summary,
        [("zy.cedar", 1), ("zz.cedar", 1), ("zz.cedar", 5)],
        "{all:#?}"
    );
    let error = BundleError { problems: all };
    assert_eq!(error.to_string().lines().count(), 3);
}

/// Rough cost of `compile` and of one Cedar evaluation; run with
/// `cargo test --release -p sov-scheduler --lib policy::tests::timing -- --ignored --nocapture`.
/// Prints only: no test asserts on speed.
#[test]
#[ignore]
fn timing() {
    let files = shipped_files();
    let rounds = 20;
    let started = std::time::Instant::now();
    for _ in 0..rounds {
        compile(&files).unwrap();
    }
    eprintln!("compile: {:?} per bundle", started.elapsed() / rounds);

    let policy = shipped();
    let nodes = fleet();
    let deployments = [
        deployment("a"),
        with_residency("b", &["EU27"]),
        with_eccn("c", "4E091"),
    ];
    let rounds = 200;
    let started = std::time::Instant::now();
    for _ in 0..rounds {
        for d in &deployments {
            for n in &nodes {
                policy.evaluate(d, n, TODAY);
            }
        }
    }
    let evaluations = rounds * (deployments.len() * nodes.len()) as u32;
    eprintln!(
        "evaluate: {:?} per Cedar evaluation",
        started.elapsed() / evaluations
    );

    let mut evaluator = Evaluator::new(&policy, TODAY);
    let started = std::time::Instant::now();
    for _ in 0..rounds {
        for d in &deployments {
            for n in &nodes {
                evaluator.decide(d, n);
            }
        }
    }
    eprintln!(
        "decide (memoized): {:?} per call",
        started.elapsed() / evaluations
    );
}

/// A bundle whose policies read few attributes: nodes that differ only in what no policy
/// mentions (site, operator, subdivision, GPU models) share one class, and so do deployments
/// (model, lineage); the decisions are still the reference's.
#[test]
fn attributes_no_policy_reads_do_not_split_classes() {
    let mut files = shipped_files();
    files.retain(|name, _| !name.ends_with(".cedar"));
    files.insert(
        "only.cedar".into(),
        "@id(\"base-permit\")\n@reason(\"anything else may go anywhere\")\npermit (principal, action == Action::\"Place\", resource);\n\
         @id(\"eu-only\")\n@reason(\"EU27 only\")\nforbid (principal, action == Action::\"Place\", resource)\n\
         unless { resource.country in Group::\"EU27\" };\n"
            .into(),
    );
    let policy = compile(&files).unwrap();
    let mut evaluator = Evaluator::new(&policy, TODAY);
    let mut nodes = Vec::new();
    for (i, country) in ["FR", "FR", "DE", "US", "US"].into_iter().enumerate() {
        let mut n = node(
            &format!("n{i}"),
            country,
            "US",
            "US",
            &[],
            LocationTrust::SelfReported,
        );
        n.facts.operator = format!("operator {i}");
        n.inventory.gpus = vec![gpu(&n.name, 0, if i % 2 == 0 { "A" } else { "B" })];
        nodes.push(n);
    }
    let mut deployments = vec![deployment("a"), deployment("b")];
    deployments[1].model = "another model".into();
    for d in &deployments {
        for n in &nodes {
            assert_eq!(evaluator.decide(d, n), &policy.evaluate(d, n, TODAY));
        }
    }
    // FR, DE and US; one deployment class.
    assert_eq!(evaluator.classes(), (1, 3));
    assert_eq!(evaluator.evaluations(), 3);
}

mod against_the_reference {
    use proptest::prelude::*;

    use super::*;

    const PLACES: [&str; 9] = ["FR", "DE", "IE", "US", "CN", "CH", "GB", "XX", ""];

    fn arb_node() -> impl Strategy<Value = Node> {
        (
            prop::sample::select(&PLACES[..7]),
            prop::sample::select(&PLACES[..]),
            prop::sample::select(&PLACES[..]),
            prop::collection::vec(
                (
                    prop::sample::select(vec!["iso27001", "secnumcloud", "c5"]),
                    prop::sample::select(vec!["2026-11-21", "2026-11-22", "2030-01-01", "never"]),
                ),
                0..3,
            ),
            0u8..3,
            prop::collection::vec(
                prop::sample::select(vec!["NVIDIA H100 80GB HBM3", "NVIDIA L40S", "unknown"]),
                0..3,
            ),
            any::<bool>(),
        )
            .prop_map(|(country, hq, parent, certs, trust, gpus, bad_country)| {
                let trust = [
                    LocationTrust::SelfReported,
                    LocationTrust::OperatorCertificate,
                    LocationTrust::HardwareAttested,
                ][usize::from(trust)];
                let certs: Vec<(&str, &str)> = certs;
                let mut n = node("n", country, hq, parent, &certs, trust);
                if bad_country {
                    n.facts.country = "Atlantis".into();
                }
                n.inventory.gpus = gpus
                    .iter()
                    .enumerate()
                    .map(|(i, m)| gpu("n", i as u32, m))
                    .collect();
                n
            })
    }

    fn arb_deployment() -> impl Strategy<Value = DeploymentSpec> {
        (
            prop::sample::subsequence(vec!["EU27", "EEA", "FR", "US", "EU28", "US-TIER1"], 0..3),
            prop::sample::select(vec!["EAR99", "4E091", ""]),
            0u8..3,
            prop::sample::subsequence(vec!["iso27001", "secnumcloud"], 0..2),
            prop::sample::select(vec!["m1", "m2"]),
            0u32..30,
        )
            .prop_map(
                |(residency, eccn, trust, certs, model, compute)| DeploymentSpec {
                    model: model.into(),
                    export: ExportAttrs {
                        eccn: eccn.into(),
                        training_compute_log10: compute,
                        ..Default::default()
                    },
                    residency: Residency {
                        allowed: residency.into_iter().map(String::from).collect(),
                        min_location_trust: trust,
                        required_certifications: certs.into_iter().map(String::from).collect(),
                    },
                    ..deployment("d")
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// The evaluator (projected classes, one shared entity store, a decision table) decides
        /// every pair exactly as a one-off evaluation with a fresh store does, under the shipped
        /// bundle and under one whose rule can fail to evaluate.
        #[test]
        fn the_evaluator_decides_as_one_off_evaluations(
            nodes in prop::collection::vec(arb_node(), 1..8),
            deployments in prop::collection::vec(arb_deployment(), 1..5),
            overflow in any::<bool>(),
        ) {
            let mut files = shipped_files();
            if overflow {
                files.insert(
                    "zz-overflow.cedar".into(),
                    "@id(\"big-models\")\n@reason(\"overflows for large models\")\n\
                     forbid (principal, action == Action::\"Place\", resource)\n\
                     when { principal.training_compute_log10 * 4611686018427387904 < 0 };\n".into(),
                );
            }
            let policy = compile(&files).unwrap();
            let mut evaluator = Evaluator::new(&policy, TODAY);
            for _round in 0..2 {
                for d in &deployments {
                    for n in &nodes {
                        let reference = policy.evaluate(d, n, TODAY);
                        prop_assert_eq!(evaluator.decide(d, n), &reference);
                    }
                }
            }
        }
    }
}

/// Each rule is asked about its own classes: over a fleet of many node profiles, the shipped
/// rules need far fewer Cedar requests than (deployment class x node class) pairs, and every
/// decision is still the reference's.
#[test]
fn rules_are_asked_about_their_own_classes() {
    let policy = shipped();
    let places = ["FR", "DE", "IE", "US", "CN", "CH", "GB", "PL", "NL", "JP"];
    let mut nodes = Vec::new();
    for (i, country) in places.iter().enumerate() {
        for (j, parent) in places.iter().enumerate() {
            let until = if (i + j) % 2 == 0 {
                "2030-01-01"
            } else {
                "2026-01-01"
            };
            nodes.push(node(
                &format!("n{i}-{j}"),
                country,
                parent,
                parent,
                &[("secnumcloud", until)],
                LocationTrust::OperatorCertificate,
            ));
        }
    }
    let deployments = [
        with_residency("eu", &["EU27"]),
        with_residency("fr", &["FR"]),
        with_eccn("frontier", "4E091"),
        deployment("plain"),
    ];
    let mut evaluator = Evaluator::new(&policy, TODAY);
    for d in &deployments {
        for n in &nodes {
            assert_eq!(evaluator.decide(d, n), &policy.evaluate(d, n, TODAY));
        }
    }
    let (d, n) = evaluator.classes();
    assert_eq!(evaluator.evaluations(), d * n);
    assert!(
        evaluator.cedar_requests() < d * n * policy.rules().len() / 2,
        "{} Cedar requests for {d} x {n} classes and {} rules",
        evaluator.cedar_requests(),
        policy.rules().len()
    );
}
