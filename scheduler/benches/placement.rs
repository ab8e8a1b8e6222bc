//! Placement throughput and policy cost on a simulated fleet: 10,000 nodes x 1,000 deployments
//! under the shipped policy bundle (`deploy/policies`).
//!
//! What it measures, all in this process on the pure core (no Raft, no network, no disk):
//!
//! 1. **Feasibility matrix**: for every (deployment, node) pair, `placement::feasibility::check`
//!    (ready, not draining, policy, resources through `fit`) against one `free_map` of the
//!    fleet: the stage the planner runs on every node for every replica. One full pass, cold:
//!    a new `Evaluator` (every plan and every apply start with a new `PolicyGate`), so Cedar
//!    runs once per distinct (deployment signature, node signature); it is driven through the
//!    same mapping as `PolicyGate` so the bench can read how often Cedar ran. The pass is timed
//!    in ten slices of deployments. Then, on the first slice, the real `PolicyGate` warm (every
//!    decision memoized), repeated; and, on a fifth of that slice, its parts: the policy
//!    lookups alone, `Evaluator::decide` alone, and `fit` alone. Cedar's own cost is timed with
//!    uncached `CompiledPolicy::evaluate` calls. `eligibility` (what `sovctl explain` calls) is
//!    timed per deployment: it builds its own `free_map` on every call.
//! 2. **Single-deployment placement**: `plan_spec` for a new 4-replica deployment in the full
//!    fleet, with a new gate (its signature is new, so its Cedar decisions are cold) and warm.
//! 3. **Whole plan**: `plan(state, gate, PLAN_PLACEMENTS_MAX)` with every deployment missing
//!    all its replicas, as one round of the leader's placement loop (a new gate per round).
//! 4. **Apply side**: `state::apply` of the `ApplyPlan` command carrying that plan (every
//!    placement re-checked against state and policy at the command's index), on copies of the
//!    state, as every replica does once the command is committed; and what a copy of the state
//!    costs. Then the leader's loop without Raft: round 1 is that plan, applied; `--rounds N`
//!    adds up to N rounds of plan-then-apply, stopping after a plan that places nothing.
//!
//! The fleet is deterministic (a fixed-seed generator): nodes at 33 sites in 13 countries (EU
//! members, Irish and Dutch entities with a US parent, US, GB, CH, JP, AU, and China, which the
//! shipped embargo rule refuses), 16 operators, 8 hardware profiles, certifications (one of
//! them expired) and three location-trust levels, a few hundred distinct node profiles in all;
//! deployments of 50 models (some 4E091), each offered in 4 residency/trust/certification
//! variants, with varied GPU, CPU and memory needs and 2 to 6 replicas.
//!
//! Run: `cargo bench -p sov-scheduler --bench placement` (defaults: `-- --runs 3 --rounds 0`;
//! `--runs N` repeats each repeated figure N times, `--rounds N` simulates more of the leader's
//! loop, about a minute per round at full size). Without `--bench`, which `cargo bench` passes
//! and `cargo test --benches` does not, it runs a small fleet once as a smoke pass. Figures and
//! their analysis live in docs/benchmarks.md.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use sov_scheduler::placement::{self, Fleet, PolicyOracle};
use sov_scheduler::state::node::{Gpu, Inventory, LocationTrust, Node, NodeFacts};
use sov_scheduler::state::plan::{PLAN_PLACEMENTS_MAX, PolicyGate, day_of};
use sov_scheduler::state::policies::PolicyBundle;
use sov_scheduler::state::{
    Command, DeploymentSpec, ExportAttrs, NodeRegistration, Outcome, PlacementPrefs, Proposal,
    Residency, Resources, Spread, State, apply,
};

/// 2026-11-22T00:00:00Z: the leader's stamp on every command, so certifications are judged on
/// that day (one in the fleet expired on 2026-10-31).
const AT_MS: i64 = 1_795_305_600_000;
const NODES: usize = 10_000;
const DEPLOYMENTS: usize = 1_000;
const SMOKE_NODES: usize = 300;
const SMOKE_DEPLOYMENTS: usize = 40;
const RUNS_MAX: usize = 50;
/// The leader loop simulation stops after this many rounds even if replicas are still missing.
const ROUNDS_MAX: usize = 20;
/// Replicas of the deployment `plan_spec` places.
const NEW_REPLICAS: u32 = 4;
/// The uncached Cedar timing evaluates this many deployments on this many nodes.
const CEDAR_DEPLOYMENTS: usize = 10;
const CEDAR_NODES: usize = 100;

struct Operator {
    name: &'static str,
    hq: &'static str,
    parent: &'static str,
}

const OPERATORS: [Operator; 16] = [
    op("ovhcloud", "FR", "FR"),
    op("scaleway", "FR", "FR"),
    op("hetzner", "DE", "DE"),
    op("ionos", "DE", "DE"),
    op("beyond", "PL", "PL"),
    // Irish and Dutch entities of US companies: EU-located, not EU-headquartered parents.
    op("aws-emea", "IE", "US"),
    op("azure-emea", "NL", "US"),
    op("nebius", "NL", "NL"),
    op("ecodc", "SE", "SE"),
    op("nscale", "GB", "GB"),
    op("infomaniak", "CH", "CH"),
    op("aws-us", "US", "US"),
    op("coreweave", "US", "US"),
    op("lambda", "US", "US"),
    op("sakura", "JP", "JP"),
    op("alibaba", "CN", "CN"),
];

const fn op(name: &'static str, hq: &'static str, parent: &'static str) -> Operator {
    Operator { name, hq, parent }
}

struct Site {
    country: &'static str,
    subdivision: &'static str,
    name: &'static str,
    operator: &'static str,
    trust: LocationTrust,
    /// Certification name and last valid day.
    certifications: &'static [(&'static str, &'static str)],
    /// Relative share of the fleet's nodes.
    weight: u32,
}

const SELF: LocationTrust = LocationTrust::SelfReported;
const CERT: LocationTrust = LocationTrust::OperatorCertificate;
const HW: LocationTrust = LocationTrust::HardwareAttested;
const ISO: (&str, &str) = ("iso27001", "2027-09-30");
const SNC: (&str, &str) = ("secnumcloud", "2027-06-30");
const SNC_EXPIRED: (&str, &str) = ("secnumcloud", "2026-10-31");
const C5: (&str, &str) = ("c5", "2027-12-31");
const FEDRAMP: (&str, &str) = ("fedramp", "2028-01-31");

#[rustfmt::skip]
const SITES: [Site; 33] = [
    site("FR", "FR-IDF", "par1", "ovhcloud", HW, &[SNC, ISO], 4),
    site("FR", "FR-HDF", "rbx1", "ovhcloud", CERT, &[ISO], 5),
    site("FR", "FR-IDF", "par2", "scaleway", CERT, &[SNC_EXPIRED, ISO], 3),
    site("FR", "FR-ARA", "lyo1", "scaleway", SELF, &[], 2),
    site("FR", "FR-IDF", "par3", "aws-emea", CERT, &[ISO], 3),
    site("DE", "DE-BY", "nbg1", "hetzner", CERT, &[ISO], 4),
    site("DE", "DE-SN", "fsn1", "hetzner", SELF, &[], 4),
    site("DE", "DE-HE", "fra1", "ionos", HW, &[C5, ISO], 3),
    site("DE", "DE-BE", "ber1", "ionos", CERT, &[C5], 2),
    site("DE", "DE-HE", "fra2", "azure-emea", CERT, &[C5, ISO], 4),
    site("PL", "PL-MZ", "waw1", "beyond", SELF, &[ISO], 2),
    site("PL", "PL-MZ", "waw2", "aws-emea", CERT, &[ISO], 2),
    site("IE", "IE-D", "dub1", "aws-emea", CERT, &[ISO], 6),
    site("IE", "IE-D", "dub2", "azure-emea", CERT, &[ISO], 5),
    site("NL", "NL-NH", "ams1", "azure-emea", CERT, &[ISO], 4),
    site("NL", "NL-NH", "ams2", "nebius", CERT, &[ISO], 3),
    site("SE", "SE-AB", "sto1", "ecodc", CERT, &[ISO], 2),
    site("FI", "FI-18", "hel1", "nebius", CERT, &[ISO], 3),
    site("GB", "GB-LND", "lon1", "nscale", CERT, &[ISO], 3),
    site("GB", "GB-LND", "lon2", "aws-emea", CERT, &[ISO], 3),
    site("CH", "CH-ZH", "zrh1", "infomaniak", HW, &[ISO], 2),
    site("US", "US-VA", "iad1", "aws-us", CERT, &[FEDRAMP, ISO], 10),
    site("US", "US-OR", "pdx1", "aws-us", CERT, &[FEDRAMP, ISO], 6),
    site("US", "US-TX", "dfw1", "coreweave", SELF, &[], 6),
    site("US", "US-NJ", "ewr1", "coreweave", CERT, &[ISO], 5),
    site("US", "US-CA", "sjc1", "lambda", SELF, &[], 4),
    site("US", "US-IA", "dsm1", "azure-emea", CERT, &[FEDRAMP, ISO], 4),
    site("US", "US-TX", "aus1", "lambda", SELF, &[], 3),
    site("JP", "JP-13", "tyo1", "sakura", CERT, &[ISO], 3),
    site("JP", "JP-27", "osa1", "sakura", SELF, &[], 2),
    site("AU", "AU-NSW", "syd1", "aws-us", CERT, &[ISO], 2),
    site("CN", "CN-BJ", "pek1", "alibaba", CERT, &[], 2),
    site("CN", "CN-SH", "sha1", "alibaba", SELF, &[], 1),
];

const fn site(
    country: &'static str,
    subdivision: &'static str,
    name: &'static str,
    operator: &'static str,
    trust: LocationTrust,
    certifications: &'static [(&'static str, &'static str)],
    weight: u32,
) -> Site {
    Site {
        country,
        subdivision,
        name,
        operator,
        trust,
        certifications,
        weight,
    }
}

struct Hardware {
    gpu_model: &'static str,
    gpus: u32,
    gpu_memory_mib: u64,
    cpu_millis: u32,
    memory_mib: u64,
}

const GIB: u64 = 1024;

#[rustfmt::skip]
const HARDWARE: [Hardware; 8] = [
    hw("NVIDIA H100 80GB HBM3", 8, 81_559, 192_000, 2_048 * GIB),
    hw("NVIDIA H200", 8, 143_771, 192_000, 2_048 * GIB),
    hw("NVIDIA B200", 8, 183_359, 224_000, 2_048 * GIB),
    hw("NVIDIA A100-SXM4-40GB", 4, 40_960, 64_000, 512 * GIB),
    hw("NVIDIA A100 80GB PCIe", 4, 81_920, 64_000, 512 * GIB),
    hw("NVIDIA H100 PCIe", 2, 81_559, 32_000, 256 * GIB),
    // Not classified by the shipped entity data: its export class is "unclassified".
    hw("NVIDIA L40S", 4, 46_068, 64_000, 512 * GIB),
    hw("", 0, 0, 64_000, 256 * GIB),
];

const fn hw(
    gpu_model: &'static str,
    gpus: u32,
    gpu_memory_mib: u64,
    cpu_millis: u32,
    memory_mib: u64,
) -> Hardware {
    Hardware {
        gpu_model,
        gpus,
        gpu_memory_mib,
        cpu_millis,
        memory_mib,
    }
}

/// Residency requirements the deployments choose from; empty = none of their own.
const RESIDENCY: [&[&str]; 12] = [
    &[],
    &[],
    &["EU27"],
    &["EU27"],
    &["EEA"],
    &["FR"],
    &["DE"],
    &["US"],
    &["GDPR-adequate"],
    &["JP"],
    &["US-Tier1"],
    &["FR", "DE"],
];
const MIN_TRUST: [u8; 4] = [0, 0, 2, 3];
const REQUIRED_CERTIFICATIONS: [&[&str]; 7] = [
    &[],
    &[],
    &[],
    &["iso27001"],
    &["secnumcloud"],
    &["c5"],
    &["fedramp"],
];
const MODELS: usize = 50;
/// Deployments of one model differ in residency, trust and certifications in this many ways.
const VARIANTS: usize = 4;

/// GPU needs per replica: count, model ("" = any), minimum memory per GPU.
const GPU_NEEDS: [(u32, &str, u64); 9] = [
    (1, "", 40_960),
    (1, "", 81_920),
    (2, "", 81_920),
    (4, "", 40_960),
    (8, "NVIDIA H100 80GB HBM3", 0),
    (1, "NVIDIA H200", 0),
    (2, "", 0),
    (4, "NVIDIA B200", 0),
    (0, "", 0),
];

/// SplitMix64: a fixed seed gives the same fleet on every run and every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn node_registration(i: usize, rng: &mut Rng) -> NodeRegistration {
    let weights: u32 = SITES.iter().map(|s| s.weight).sum();
    let mut pick = rng.below(weights as usize) as u32;
    let site_index = SITES
        .iter()
        .position(|s| {
            if pick < s.weight {
                return true;
            }
            pick -= s.weight;
            false
        })
        .unwrap_or(0);
    let site = &SITES[site_index];
    let operator = OPERATORS
        .iter()
        .find(|o| o.name == site.operator)
        .expect("every site names a listed operator");
    // Each site runs three of the hardware profiles.
    let hardware = &HARDWARE[(site_index * 3 + rng.below(3)) % HARDWARE.len()];
    let name = format!("n{i:05}");
    let mut certifications: BTreeMap<String, String> = site
        .certifications
        .iter()
        .map(|(c, until)| (c.to_string(), until.to_string()))
        .collect();
    // A quarter of the nodes are also certified for privacy management; a fifth are attested
    // by hardware whatever their site's usual level: more distinct node profiles, as in a fleet
    // bought over years.
    if rng.below(4) == 0 {
        certifications.insert("iso27701".into(), "2027-05-31".into());
    }
    let location_trust = if rng.below(5) == 0 { HW } else { site.trust };
    NodeRegistration {
        name: name.clone(),
        facts: NodeFacts {
            country: site.country.into(),
            subdivision: site.subdivision.into(),
            site: site.name.into(),
            operator: operator.name.into(),
            operator_hq: operator.hq.into(),
            ultimate_parent_hq: operator.parent.into(),
            certifications,
            location_trust,
            fact_trust: Default::default(),
        },
        inventory: Inventory {
            cpu_millis: hardware.cpu_millis,
            memory_mib: hardware.memory_mib,
            gpus: (0..hardware.gpus)
                .map(|g| Gpu {
                    index: g,
                    uuid: format!("GPU-{name}-{g}"),
                    model: hardware.gpu_model.into(),
                    memory_mib: hardware.gpu_memory_mib,
                    driver_version: "570.124.06".into(),
                    ..Gpu::default()
                })
                .collect(),
            ..Inventory::default()
        },
    }
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn deployment_spec(i: usize, rng: &mut Rng) -> DeploymentSpec {
    let model = i % MODELS;
    let variant = (i / MODELS) % VARIANTS;
    let (gpu_count, gpu_model, gpu_memory_mib) = GPU_NEEDS[rng.below(GPU_NEEDS.len())];
    let spread = match rng.below(10) {
        0 => Spread::Site,
        1 => Spread::Country,
        _ => Spread::Node,
    };
    DeploymentSpec {
        name: format!("d{i:04}"),
        model: format!("lab-{}/model-{model:02}", model % 7),
        replicas: 2 + rng.below(5) as u32,
        resources: Resources {
            gpu_count,
            gpu_model: gpu_model.into(),
            gpu_memory_mib,
            cpu_millis: 4_000 * (1 + rng.below(8) as u32),
            memory_mib: 16 * GIB * (1 + rng.below(16) as u64),
        },
        command: strings(&["vllm", "serve", "--port", "$PORT"]),
        export: ExportAttrs {
            eccn: if model.is_multiple_of(10) {
                "4E091"
            } else {
                "EAR99"
            }
            .into(),
            weights_published: !model.is_multiple_of(3),
            training_compute_log10: 23 + (model % 4) as u32,
            lineage: vec![format!("base-{}", model % 5)],
        },
        residency: Residency {
            allowed: strings(RESIDENCY[(model * 5 + variant * 7) % RESIDENCY.len()]),
            min_location_trust: MIN_TRUST[(model + variant) % MIN_TRUST.len()],
            required_certifications: strings(
                REQUIRED_CERTIFICATIONS[(model * 3 + variant * 5) % REQUIRED_CERTIFICATIONS.len()],
            ),
        },
        placement: PlacementPrefs {
            spread,
            ..PlacementPrefs::default()
        },
        ..DeploymentSpec::default()
    }
}

fn shipped_bundle() -> anyhow::Result<BTreeMap<String, String>> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/policies");
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {dir}"))? {
        let path = entry?.path();
        if path
            .extension()
            .is_some_and(|x| x == "cedar" || x == "cedarschema" || x == "json")
        {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            files.insert(name.into_owned(), std::fs::read_to_string(&path)?);
        }
    }
    Ok(files)
}

/// Applies one proposal at the next index, as a replica applies a committed command.
fn propose(state: &mut State, proposal: Proposal) -> Outcome {
    let index = state.revision + 1;
    apply(
        state,
        index,
        &Command {
            at_ms: AT_MS,
            proposal,
        },
    )
}

/// The fleet through the real commands (validation included): policy, nodes, deployments.
fn build_state(nodes: usize, deployments: usize) -> anyhow::Result<State> {
    let mut state = State::default();
    let bundle = PolicyBundle {
        files: shipped_bundle()?,
        author: "bench".into(),
        comment: "shipped default bundle".into(),
    };
    match propose(
        &mut state,
        Proposal::ApplyPolicy {
            bundle: Box::new(bundle),
            expected_plan_hash: None,
        },
    ) {
        Outcome::PolicyApplied { .. } => {}
        other => bail!("the shipped policy bundle was not accepted: {other:?}"),
    }
    let mut rng = Rng(0x005e_ed0f_5017);
    for i in 0..nodes {
        let node = Box::new(node_registration(i, &mut rng));
        if let Outcome::Rejected(why) = propose(&mut state, Proposal::RegisterNode { node }) {
            bail!("node {i} was rejected: {why}");
        }
    }
    for i in 0..deployments {
        let spec = Box::new(deployment_spec(i, &mut rng));
        let proposal = Proposal::ApplyDeployment {
            spec,
            expected_generation: None,
        };
        if let Outcome::Rejected(why) = propose(&mut state, proposal) {
            bail!("deployment {i} was rejected: {why}");
        }
    }
    Ok(state)
}

/// What one pass over (deployment, node) pairs found.
#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
struct Matrix {
    pairs: usize,
    eligible: usize,
    forbidden: usize,
    /// Permitted by policy, but down, draining or short of resources.
    other: usize,
}

/// The feasibility stage for every deployment on every node of `fleet`, as the planner's scan
/// runs it (`select.rs`): the deployment's class and its policy answer per node class once;
/// the nodes of a forbidden class are counted, not visited; the others are checked for status
/// and resources.
fn matrix(fleet: &Fleet, deployments: &[&DeploymentSpec], gate: &mut PolicyGate) -> Matrix {
    let mut m = Matrix::default();
    for spec in deployments {
        let class = gate.deployment_class(spec);
        let permitted = fleet.permitted(class, gate);
        m.pairs += fleet.nodes.len();
        for (c, nodes) in fleet.by_class.iter().enumerate() {
            if !permitted[c] {
                m.forbidden += nodes.len();
                continue;
            }
            for &i in nodes {
                if fleet.usable[i] && fleet.free[i].fits(&spec.resources) {
                    m.eligible += 1;
                } else {
                    m.other += 1;
                }
            }
        }
    }
    m
}

/// The leader's loop without Raft: plan with the state's kept gate, apply, until a plan places
/// nothing or `rounds_max` rounds ran. Each round pays what the leader pays: a copy of the
/// state to plan from, the plan, the apply.
struct Round {
    placed: usize,
    unplaceable: usize,
    clone: Duration,
    plan: Duration,
    apply: Duration,
}

fn leader_loop(state: &mut State, today: &str, rounds_max: usize) -> anyhow::Result<Vec<Round>> {
    let mut rounds = Vec::new();
    for _ in 0..rounds_max {
        let t0 = Instant::now();
        let copy = state.clone();
        let t1 = Instant::now();
        let plan = {
            let mut gate = PolicyGate::for_state(&copy, today);
            placement::plan(&copy, &mut gate, PLAN_PLACEMENTS_MAX)
        };
        let t2 = Instant::now();
        if plan.placements.is_empty() {
            rounds.push(Round {
                placed: 0,
                unplaceable: plan.unplaced.len(),
                clone: t1 - t0,
                plan: t2 - t1,
                apply: Duration::ZERO,
            });
            break;
        }
        let outcome = propose(
            state,
            Proposal::ApplyPlan {
                placements: plan.placements,
                stops: vec![],
            },
        );
        let Outcome::PlanApplied { placed, .. } = outcome else {
            bail!("a round's plan was not applied: {outcome:?}");
        };
        rounds.push(Round {
            placed: placed.len(),
            unplaceable: plan.unplaced.len(),
            clone: t1 - t0,
            plan: t2 - t1,
            apply: t2.elapsed(),
        });
    }
    Ok(rounds)
}

struct Args {
    runs: usize,
    /// Leader-loop rounds (plan, then apply) after the first plan; each is a full plan.
    rounds: usize,
    smoke: bool,
}

impl Args {
    fn parse() -> anyhow::Result<Self> {
        let mut bench = false;
        let mut runs = None;
        let mut rounds = None;
        let mut args = std::env::args().skip(1);
        let number = |flag: &str, args: &mut std::iter::Skip<std::env::Args>| {
            let value = args
                .next()
                .with_context(|| format!("{flag} needs a value, e.g. 3"))?;
            let n: usize = value
                .parse()
                .with_context(|| format!("{flag} {value:?} is not a number"))?;
            ensure!(n <= RUNS_MAX, "{flag} must be at most {RUNS_MAX}");
            anyhow::Ok(n)
        };
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--bench" => bench = true,
                "--runs" => {
                    let n = number("--runs", &mut args)?;
                    ensure!(n >= 1, "--runs must be at least 1");
                    runs = Some(n);
                }
                "--rounds" => rounds = Some(number("--rounds", &mut args)?),
                other => {
                    bail!("unknown argument {other:?}; usage: placement [--runs N] [--rounds N]")
                }
            }
        }
        // A smoke pass keeps `cargo test --benches` quick and runs the leader loop to the end.
        Ok(Self {
            runs: runs.unwrap_or(if bench { 3 } else { 1 }),
            rounds: rounds.unwrap_or(ROUNDS_MAX),
            smoke: !bench,
        })
    }

    /// The command line that reproduces this run.
    fn command(&self) -> String {
        format!(
            "cargo bench -p sov-scheduler --bench placement -- --runs {} --rounds {}",
            self.runs, self.rounds
        )
    }
}

/// Median, minimum and maximum of some runs.
struct Stats {
    median: Duration,
    min: Duration,
    max: Duration,
    runs: usize,
}

impl Stats {
    fn of(mut times: Vec<Duration>) -> Self {
        assert!(!times.is_empty(), "at least one run");
        times.sort();
        Stats {
            median: times[times.len() / 2],
            min: times[0],
            max: times[times.len() - 1],
            runs: times.len(),
        }
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "median {} (min {}, max {}, {} runs)",
            ms(self.median),
            ms(self.min),
            ms(self.max),
            self.runs
        )
    }
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else if ms >= 1.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{:.0} µs", ms * 1e3)
    }
}

fn per_s(count: usize, d: Duration) -> f64 {
    count as f64 / d.as_secs_f64()
}

/// Runs `f` `runs` times; every run must give the same answer (the work is deterministic).
fn timed<T: PartialEq + std::fmt::Debug>(runs: usize, mut f: impl FnMut() -> T) -> (T, Stats) {
    let mut times = Vec::with_capacity(runs);
    let mut first = None;
    for _ in 0..runs {
        let start = Instant::now();
        let out = f();
        times.push(start.elapsed());
        match &first {
            None => first = Some(out),
            Some(seen) => assert_eq!(seen, &out, "a deterministic pass gave another answer"),
        }
    }
    (first.expect("at least one run"), Stats::of(times))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse()?;
    let (nodes, deployments) = if args.smoke {
        (SMOKE_NODES, SMOKE_DEPLOYMENTS)
    } else {
        (NODES, DEPLOYMENTS)
    };
    let runs = args.runs;
    let start = Instant::now();
    let mut state = build_state(nodes, deployments)?;
    let build_time = start.elapsed();
    let (version, compiled) = state
        .active_policy()
        .context("the shipped bundle is in force")?;
    let today = day_of(AT_MS);
    let replicas: u32 = state.deployments.values().map(|d| d.spec.replicas).sum();
    println!("command: {}", args.command());
    println!(
        "fleet: {nodes} nodes, {deployments} deployments wanting {replicas} replicas; built through apply in {}",
        ms(build_time)
    );
    println!("policy day {today}; {runs} runs per repeated figure\n");
    let specs: Vec<&DeploymentSpec> = state.deployments.values().map(|d| &d.spec).collect();

    // 1. Feasibility matrix. Cold: a new gate, as after a policy change or on a new day (the
    // fleet view classifies every node, then every pair is looked up, Cedar running once per
    // new pair of classes). Warm: the same gate again, as every later round sees it.
    let cold_start = Instant::now();
    let mut gate = PolicyGate::with_policy(Some((version, &compiled)), &today);
    let fleet = Fleet::new(&state, &mut gate);
    let fleet_time = cold_start.elapsed();
    let cold = matrix(&fleet, &specs, &mut gate);
    let cold_time = cold_start.elapsed();
    let evaluator = gate.evaluator().context("a policy is in force")?;
    let evaluations = evaluator.evaluations();
    let cedar_requests = evaluator.cedar_requests();
    let (deployment_classes, node_classes) = evaluator.classes();
    let (warm, warm_stats) = timed(runs, || matrix(&fleet, &specs, &mut gate));
    ensure!(
        warm == cold,
        "the warm pass disagrees: {warm:?} vs {cold:?}"
    );
    let (_, fleet_stats) = timed(runs, || Fleet::new(&state, &mut gate).nodes.len());
    // Cedar alone, as the reference path runs it (a fresh entity store per request), for
    // deployments of distinct classes against nodes spread over the fleet.
    let step = (state.nodes.len() / CEDAR_NODES).max(1);
    let cedar_pairs: Vec<(&DeploymentSpec, &Node)> = specs[..specs.len().min(CEDAR_DEPLOYMENTS)]
        .iter()
        .flat_map(|spec| {
            state
                .nodes
                .values()
                .step_by(step)
                .take(CEDAR_NODES)
                .map(move |node| (*spec, node))
        })
        .collect();
    let (_, cedar_stats) = timed(runs, || {
        cedar_pairs
            .iter()
            .filter(|(spec, node)| compiled.evaluate(spec, node, &today).allowed)
            .count()
    });
    let cedar_us = cedar_stats.median.as_secs_f64() * 1e6 / cedar_pairs.len().max(1) as f64;
    // The evaluator's cost per decision it had to make: a cold matrix minus a warm one.
    let miss_us = (cold_time.saturating_sub(warm_stats.median + fleet_stats.median)).as_secs_f64()
        * 1e6
        / evaluations.max(1) as f64;
    let ns_per_pair = |d: Duration| d.as_secs_f64() * 1e9 / cold.pairs.max(1) as f64;
    println!(
        "1. feasibility matrix: {} pairs ({} deployments x {} nodes)",
        cold.pairs,
        specs.len(),
        state.nodes.len()
    );
    println!(
        "   {} eligible, {} forbidden by policy, {} permitted but down, draining or short of resources",
        cold.eligible, cold.forbidden, cold.other
    );
    println!(
        "   classes: {deployment_classes} deployment classes x {node_classes} node classes = {evaluations} decisions (1 per {:.0} pairs), from {cedar_requests} single-rule Cedar requests",
        cold.pairs as f64 / evaluations.max(1) as f64
    );
    println!(
        "   cold (new gate; fleet view with node classification {}): {}, 1 run",
        ms(fleet_time),
        ms(cold_time)
    );
    println!(
        "     about {miss_us:.1} µs per decision in the evaluator (cold minus warm); the reference path (whole policy set, fresh store per request) takes {cedar_us:.1} µs ({cedar_stats} for {} pairs)",
        cedar_pairs.len()
    );
    println!(
        "   warm (every decision memoized): {warm_stats}; {:.1} ns per pair",
        ns_per_pair(warm_stats.median)
    );
    println!("   fleet view (Fleet::new, warm gate): {fleet_stats}");
    let sample = &specs[..runs.max(3).min(specs.len())];
    let (_, explain) = timed(1, || {
        for spec in sample {
            placement::eligibility(&state, spec, &mut gate);
        }
    });
    println!(
        "   eligibility() (`sovctl explain`; warm, every reason of every node): {} per deployment, mean of {}\n",
        ms(explain.median / sample.len() as u32),
        sample.len()
    );
    drop(gate);

    // 2. Single-deployment placement: a deployment of a new class, as in `sovctl deploy plan`.
    let mut rng = Rng(0x0e11);
    let mut new_spec = deployment_spec(deployments, &mut rng);
    new_spec.name = "new-deployment".into();
    new_spec.model = "lab-new/model-new".into();
    new_spec.replicas = NEW_REPLICAS;
    new_spec.residency.allowed = strings(&["EU27"]);
    new_spec.residency.required_certifications = Vec::new();
    new_spec.resources = Resources {
        gpu_count: 2,
        gpu_model: String::new(),
        gpu_memory_mib: 81_920,
        cpu_millis: 16_000,
        memory_mib: 128 * GIB,
    };
    let ((placed, _), single_cold) = timed(runs, || {
        let mut gate = PolicyGate::with_policy(Some((version, &compiled)), &today);
        let (placements, unplaced) = placement::plan_spec(&state, &new_spec, &mut gate);
        (placements.len(), unplaced.is_some())
    });
    let mut gate = PolicyGate::with_policy(Some((version, &compiled)), &today);
    placement::plan_spec(&state, &new_spec, &mut gate);
    let (_, single_warm) = timed(runs, || {
        placement::plan_spec(&state, &new_spec, &mut gate).0.len()
    });
    drop(gate);
    println!(
        "2. single deployment (EU27, 2 GPUs of 80 GiB), {NEW_REPLICAS} replicas, into {} nodes: {placed} placed",
        state.nodes.len()
    );
    println!("   new gate (every node classified, Cedar for the new class): {single_cold}");
    println!("   warm gate: {single_warm}\n");

    // 3. Whole plan, as one round of the leader's loop: cold (a new gate) and warm.
    let (plan, plan_cold) = timed(runs, || {
        let mut gate = PolicyGate::with_policy(Some((version, &compiled)), &today);
        placement::plan(&state, &mut gate, PLAN_PLACEMENTS_MAX)
    });
    let mut gate = PolicyGate::with_policy(Some((version, &compiled)), &today);
    placement::plan(&state, &mut gate, PLAN_PLACEMENTS_MAX);
    let (_, plan_warm) = timed(runs, || {
        placement::plan(&state, &mut gate, PLAN_PLACEMENTS_MAX)
            .placements
            .len()
    });
    drop(gate);
    let planned: BTreeSet<&str> = plan
        .placements
        .iter()
        .map(|p| p.deployment.as_str())
        .collect();
    println!(
        "3. whole plan (at most {PLAN_PLACEMENTS_MAX} placements): {} placements for {} deployments; {} deployments with replicas that fit nowhere",
        plan.placements.len(),
        planned.len(),
        plan.unplaced.len()
    );
    println!(
        "   new gate: {plan_cold}; {:.0} placements/s",
        per_s(plan.placements.len(), plan_cold.median)
    );
    println!(
        "   warm gate: {plan_warm}; {:.0} placements/s\n",
        per_s(plan.placements.len(), plan_warm.median)
    );

    // 4. Apply side: the ApplyPlan command on copies of the state, as every replica applies
    // it. Copies share the state's policy cache, so the first apply builds the evaluator and
    // later ones find it (as on a replica, where one apply follows another).
    let command = Command {
        at_ms: AT_MS,
        proposal: Proposal::ApplyPlan {
            placements: plan.placements.clone(),
            stops: vec![],
        },
    };
    let mut apply_times = Vec::new();
    let mut applied = 0;
    for _ in 0..runs + 1 {
        let mut copy = state.clone();
        let index = copy.revision + 1;
        let t = Instant::now();
        let outcome = apply(&mut copy, index, &command);
        apply_times.push(t.elapsed());
        let Outcome::PlanApplied {
            placed, rejected, ..
        } = outcome
        else {
            bail!("the plan was not applied: {outcome:?}");
        };
        ensure!(
            rejected.is_empty(),
            "a fresh plan had rejections: {:?}",
            &rejected[..rejected.len().min(3)]
        );
        applied = placed.len();
    }
    let apply_cold = apply_times.remove(0);
    let apply_stats = Stats::of(apply_times);
    let (_, clone_stats) = timed(runs, || state.clone().revision);
    let entry_bytes = serde_json::to_vec(&command).map_or(0, |v| v.len());
    println!(
        "4. apply of that ApplyPlan ({applied} placements re-checked and stored; {} KiB as JSON, {} bytes per placement):",
        entry_bytes / 1024,
        entry_bytes / applied.max(1)
    );
    println!(
        "   first (evaluator built): {}; then {apply_stats}; {:.0} placements/s per replica",
        ms(apply_cold),
        per_s(applied, apply_stats.median)
    );
    println!("   a copy of the whole state (State::clone): {clone_stats}");

    // 5. The leader's loop without Raft, from every replica missing to nothing left to place.
    let rounds = leader_loop(&mut state, &today, args.rounds)?;
    let total: usize = rounds.iter().map(|r| r.placed).sum();
    let loop_time: Duration = rounds.iter().map(|r| r.clone + r.plan + r.apply).sum();
    println!(
        "5. leader loop without Raft (clone, plan, apply per round): {total} of {replicas} replicas placed in {} rounds, {}; {:.0} placements/s",
        rounds.len(),
        ms(loop_time),
        per_s(total, loop_time)
    );
    for (i, r) in rounds.iter().enumerate() {
        println!(
            "   round {:2}: {:4} placed, {:3} deployments unplaceable, clone {}, plan {}, apply {}",
            i + 1,
            r.placed,
            r.unplaceable,
            ms(r.clone),
            ms(r.plan),
            ms(r.apply),
        );
    }
    println!("\ntotal bench time {}", ms(start.elapsed()));
    Ok(())
}
