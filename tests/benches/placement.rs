//! End-to-end placement throughput: committed replica placements per second through a real
//! three-scheduler cluster (issue #4's target: at least 10,000 per second).
//!
//! Set-up, all real processes on this machine: three `sov-scheduler run` (release when run
//! through `cargo bench`), `sov-agent fleet` with `SOV_BENCH_NODES` virtual nodes (default
//! 10,000; 13 countries, 13 operators, 4 hardware profiles, 52 kinds of node in all) that
//! register, heartbeat at the pace the leader asks (every 10 s for 10,000 nodes, by its default
//! `max_heartbeats_per_s`; figures in docs/benchmarks.md before 2026-12-07 were taken at 1 s)
//! and acknowledge and report their assignments like real agents. Then:
//! 1. a *hold* bundle is applied: the shipped bundle plus one rule that forbids everything, so
//!    nothing can be placed yet;
//! 2. `SOV_BENCH_DEPLOYMENTS` deployments (default 1,000; EU27/EEA/country residency, some
//!    4E091, 0 to 8 GPUs, 2 to 6 replicas) are applied through the gRPC API, 16 at a time;
//! 3. the shipped bundle is applied (`sovctl policy apply deploy/policies`), and from its
//!    acknowledgement the leader's `sov_replicas_placed` gauge is read every 50 ms until it
//!    stays unchanged for 5 s.
//!
//! Figures: replicas placed, time from the policy's acknowledgement to the first and to the
//! last placement, placements per second over that span, the time to 50 % and 90 %, and the
//! leader's CPU over it. Everything placed was committed by the Raft majority and applied
//! (re-checked) by the leader before the gauge shows it.
//!
//! With `SOV_BENCH_AGENTS=none` the nodes are registered through the API instead and nothing
//! heartbeats (the schedulers run with a TTL of an hour): the same placements without the
//! fleet simulator and its heartbeats sharing the machine's cores.
//!
//! Run: `cargo build --release --bins && cargo bench -p sov-e2e --bench placement`
//! (`SOV_BENCH_RUNS` repeats the whole measurement on fresh clusters, default 3). Results go
//! to docs/benchmarks.md by hand. Without `--bench` (`cargo test --benches`) it does nothing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sov_e2e::agent::{start_fleet_spec, wait_ready};
use sov_e2e::{Cluster, Timeline, cluster_status, cpu_seconds, http_get, sovctl, u64_field};
use sov_proto::v1 as pb;
use sov_proto::v1::agent_service_client::AgentServiceClient;
use sov_proto::v1::deployment_service_client::DeploymentServiceClient;

/// Country, operator, operator HQ, ultimate parent HQ, certification.
type Operator = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
);
/// GPUs, GPU model, memory per GPU (MiB).
type Hardware = (u32, &'static str, u64);

const COUNTRIES: [Operator; 13] = [
    // country, operator, operator HQ, ultimate parent HQ, certification
    ("FR", "ovhcloud", "FR", "FR", "secnumcloud"),
    ("FR", "scaleway", "FR", "FR", "iso27001"),
    ("DE", "hetzner", "DE", "DE", "c5"),
    ("DE", "ionos", "DE", "DE", "c5"),
    ("PL", "oktawave", "PL", "PL", "iso27001"),
    ("IE", "hyperscale-ie", "IE", "US", "iso27001"),
    ("NL", "hyperscale-nl", "NL", "US", "iso27001"),
    ("SE", "nordic-cloud", "SE", "SE", "iso27001"),
    ("FI", "nordic-cloud", "SE", "SE", "iso27001"),
    ("US", "us-cloud", "US", "US", "fedramp"),
    ("GB", "uk-cloud", "GB", "GB", "iso27001"),
    ("CH", "swiss-cloud", "CH", "CH", "iso27001"),
    ("JP", "jp-cloud", "JP", "JP", "iso27001"),
];

const HARDWARE: [Hardware; 4] = [
    (8, "NVIDIA H100 80GB HBM3", 81_559),
    (8, "NVIDIA H200", 143_771),
    (4, "NVIDIA A100-SXM4-40GB", 40_960),
    (0, "", 0),
];

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// A fleet spec with one group per (operator, hardware profile).
fn write_fleet_spec(dir: &Path) -> PathBuf {
    let mut text = String::from("name_prefix = \"bench\"\n");
    for (i, (country, operator, hq, parent, cert)) in COUNTRIES.iter().enumerate() {
        for (gpus, model, memory) in HARDWARE {
            text.push_str(&format!(
                "\n[[group]]\ncountry = {country:?}\nsite = \"{}-{i}\"\noperator = {operator:?}\n\
                 operator_hq = {hq:?}\nultimate_parent_hq = {parent:?}\n\
                 certifications = {{ {cert} = \"2030-12-31\" }}\n\
                 cpu_millis = 64000\nmemory_mib = 524288\ngpus = {gpus}\n",
                country.to_lowercase()
            ));
            if gpus > 0 {
                text.push_str(&format!(
                    "gpu_model = {model:?}\ngpu_memory_mib = {memory}\n"
                ));
            }
        }
    }
    let path = dir.join("bench-fleet.toml");
    std::fs::write(&path, text).expect("cannot write the fleet spec");
    path
}

/// A fixed-seed generator, so every run applies the same deployments.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

fn deployment(i: usize, rng: &mut Rng) -> pb::DeploymentSpec {
    const RESIDENCY: [&[&str]; 8] = [
        &[],
        &["EU27"],
        &["EEA"],
        &["FR"],
        &["DE"],
        &["US"],
        &["EU27"],
        &["FR", "DE"],
    ];
    let residency = RESIDENCY[rng.below(RESIDENCY.len() as u64) as usize];
    let frontier = rng.below(20) == 0;
    let (gpu_count, gpu_memory_mib) = match rng.below(5) {
        0 => (0, 0),
        1 => (1, 40_960),
        2 => (2, 81_920),
        3 => (4, 0),
        _ => (1, 0),
    };
    pb::DeploymentSpec {
        name: format!("bench-{i:04}"),
        model: format!("lab/model-{}", i % 50),
        replicas: 2 + rng.below(5) as u32,
        resources: Some(pb::Resources {
            gpu_count,
            gpu_model: String::new(),
            gpu_memory_mib,
            cpu_millis: 1_000 * (1 + rng.below(8) as u32),
            memory_mib: 4_096 * (1 + rng.below(16)),
        }),
        command: vec!["sov-model-server".into()],
        export: Some(pb::ExportAttributes {
            eccn: if frontier {
                "4E091".into()
            } else {
                String::new()
            },
            training_compute_log10: if frontier { 26 } else { 0 },
            ..Default::default()
        }),
        residency: Some(pb::Residency {
            allowed: residency.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The shipped bundle, plus (with `hold`) a rule that forbids every placement.
fn write_bundle(dir: &Path, hold: bool) -> PathBuf {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/policies");
    let out = dir.join(if hold { "hold-bundle" } else { "bundle" });
    std::fs::create_dir_all(&out).expect("bundle dir");
    for entry in std::fs::read_dir(&shipped).expect("deploy/policies") {
        let entry = entry.expect("dir entry");
        std::fs::copy(entry.path(), out.join(entry.file_name())).expect("copy bundle file");
    }
    if hold {
        std::fs::write(
            out.join("zz-hold.cedar"),
            "@id(\"bench-hold\")\n@reason(\"benchmark: nothing is placed until the real bundle is applied\")\n\
             @on_change(\"audit\")\n\
             forbid (principal, action == Action::\"Place\", resource);\n",
        )
        .expect("hold rule");
    }
    out
}

fn placed(http_port: u16) -> Option<u64> {
    let (_, body) = http_get(http_port, "/metrics").ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix("sov_replicas_placed "))
        .and_then(|v| v.trim().parse().ok())
}

struct Row {
    placed: u64,
    first_s: f64,
    last_s: f64,
    half_s: f64,
    ninety_s: f64,
    leader_cpu: f64,
    apply_deployments_s: f64,
}

/// Registers `nodes` nodes of the same kinds as the fleet spec straight through
/// `AgentService.Register` (no agent behind them: the cluster runs with a TTL of an hour).
async fn register_nodes(endpoint: &str, nodes: usize) {
    // Nodes named bench-*: one wildcard agent certificate speaks for all of them.
    let pki = sov_e2e::pki::pki();
    let client = AgentServiceClient::new(pki.channel_with(endpoint, &pki.fleet("bench-")).await);
    let kinds: Vec<(usize, &Operator, Hardware)> = COUNTRIES
        .iter()
        .enumerate()
        .flat_map(|(i, c)| HARDWARE.iter().map(move |h| (i, c, *h)))
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..16 {
        let mut client = client.clone();
        let kinds = kinds.clone();
        tasks.spawn(async move {
            for n in (worker..nodes).step_by(16) {
                let (i, (country, operator, hq, parent, cert), (gpus, model, memory)) =
                    kinds[n % kinds.len()];
                let name = format!("bench-{}-{n}", country.to_lowercase());
                let request = pb::RegisterNodeRequest {
                    name: name.clone(),
                    facts: Some(pb::LocationFacts {
                        country: country.to_string(),
                        site: format!("{}-{i}", country.to_lowercase()),
                        operator: operator.to_string(),
                        operator_hq: hq.to_string(),
                        ultimate_parent_hq: parent.to_string(),
                        certifications: [(cert.to_string(), "2030-12-31".to_string())].into(),
                        location_trust: "self-reported".into(),
                        ..Default::default()
                    }),
                    inventory: Some(pb::Inventory {
                        cpu_millis: 64_000,
                        memory_mib: 512 * 1024,
                        gpus: (0..gpus)
                            .map(|index| pb::GpuDevice {
                                index,
                                uuid: format!("GPU-SIMULATED-{name}-{index}"),
                                model: model.into(),
                                memory_mib: memory,
                                simulated: true,
                                ..Default::default()
                            })
                            .collect(),
                        ..Default::default()
                    }),
                };
                client
                    .register(request)
                    .await
                    .unwrap_or_else(|s| panic!("register {name}: {}", s.message()));
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("register task");
    }
}

fn run(nodes: usize, deployments: usize, live: bool) -> Row {
    let tl = Timeline::new();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut cluster = if live {
        Cluster::start(3, tl)
    } else {
        Cluster::start_with(3, tl, &["--heartbeat-ttl-ms", "3600000"])
    };
    let endpoints = cluster.endpoints();
    let status = cluster_status(&endpoints).expect("status");
    let leader = u64_field(&status, "leader_id");
    let leader_pid = cluster.node(leader).pid().expect("leader pid");
    let leader_http = cluster.node(leader).http_port;
    let leader_api = cluster.node(leader).endpoint();
    let scratch = cluster.scratch();
    let spec = write_fleet_spec(&scratch);
    let hold = write_bundle(&scratch, true);
    let bundle = write_bundle(&scratch, false);
    sovctl(&endpoints, &["policy", "apply", hold.to_str().unwrap()]).assert_ok();
    let started = Instant::now();
    let _fleet = if live {
        Some(start_fleet_spec(
            nodes,
            &spec,
            &endpoints,
            &scratch.join("fleet.log"),
        ))
    } else {
        runtime.block_on(register_nodes(&leader_api, nodes));
        None
    };
    wait_ready(&endpoints, nodes, Duration::from_secs(300));
    tl.log(format_args!(
        "{nodes} nodes ready after {:.1} s",
        started.elapsed().as_secs_f64()
    ));

    let t = Instant::now();
    runtime.block_on(async {
        let client = DeploymentServiceClient::new(
            sov_e2e::pki::pki()
                .channel(&leader_api, sov_proto::identity::Role::Deployer)
                .await,
        );
        let mut rng = Rng(0x5eed);
        let specs: Vec<pb::DeploymentSpec> =
            (0..deployments).map(|i| deployment(i, &mut rng)).collect();
        let mut tasks = tokio::task::JoinSet::new();
        for chunk in specs.chunks(deployments.div_ceil(16).max(1)) {
            let mut client = client.clone();
            let chunk = chunk.to_vec();
            tasks.spawn(async move {
                for spec in chunk {
                    let name = spec.name.clone();
                    client
                        .apply(pb::ApplyDeploymentRequest {
                            spec: Some(spec),
                            expected_generation: 0,
                        })
                        .await
                        .unwrap_or_else(|s| panic!("apply {name}: {}", s.message()));
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("apply task");
        }
    });
    let apply_deployments_s = t.elapsed().as_secs_f64();
    tl.log(format_args!(
        "{deployments} deployments applied in {apply_deployments_s:.1} s; nothing placed: {:?}",
        placed(leader_http)
    ));
    std::thread::sleep(Duration::from_secs(2));

    let cpu0 = cpu_seconds(leader_pid);
    let t0 = Instant::now();
    sovctl(&endpoints, &["policy", "apply", bundle.to_str().unwrap()]).assert_ok();
    let acked = t0.elapsed();
    let mut samples: Vec<(Duration, u64)> = vec![(acked, placed(leader_http).unwrap_or(0))];
    let mut changed_at = Instant::now();
    let mut cpu_at_last = cpu_seconds(leader_pid);
    while changed_at.elapsed() < Duration::from_secs(5) && t0.elapsed() < Duration::from_secs(300) {
        std::thread::sleep(Duration::from_millis(50));
        let Some(now) = placed(leader_http) else {
            continue;
        };
        if now != samples.last().map_or(0, |s| s.1) {
            samples.push((t0.elapsed(), now));
            changed_at = Instant::now();
            cpu_at_last = cpu_seconds(leader_pid);
        }
    }
    let total = samples.last().map_or(0, |s| s.1);
    let at = |share: f64| {
        samples
            .iter()
            .find(|(_, n)| *n as f64 >= share * total as f64)
            .map_or(0.0, |(t, _)| (t.saturating_sub(acked)).as_secs_f64())
    };
    let first_s = samples
        .iter()
        .find(|(_, n)| *n > 0)
        .map_or(0.0, |(t, _)| t.saturating_sub(acked).as_secs_f64());
    let last_s = samples
        .last()
        .map_or(0.0, |(t, _)| t.saturating_sub(acked).as_secs_f64());
    for (t, n) in &samples {
        tl.log(format_args!(
            "{:7.3} s after the ack: {n} placed",
            t.as_secs_f64()
        ));
    }
    // The leader's own account of each round: copy of the state, plan, commit (Raft and apply).
    let log = std::fs::read_to_string(&cluster.node(leader).log_path).unwrap_or_default();
    for line in log.lines().filter(|l| l.contains("placement plan applied")) {
        let fields: Vec<&str> = line
            .split_whitespace()
            .filter(|w| {
                [
                    "proposed=",
                    "placed=",
                    "copy_ms=",
                    "plan_ms=",
                    "commit_ms=",
                    "cedar_requests=",
                ]
                .iter()
                .any(|k| w.starts_with(k))
            })
            .collect();
        tl.log(format_args!("leader round: {}", fields.join(" ")));
    }
    Row {
        placed: total,
        first_s,
        last_s,
        half_s: at(0.5),
        ninety_s: at(0.9),
        leader_cpu: (cpu_at_last - cpu0) / last_s.max(1e-3),
        apply_deployments_s,
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("placement (e2e): run with `cargo bench -p sov-e2e --bench placement`; skipped");
        return;
    }
    let nodes = env_usize("SOV_BENCH_NODES", 10_000);
    let deployments = env_usize("SOV_BENCH_DEPLOYMENTS", 1_000);
    let runs = env_usize("SOV_BENCH_RUNS", 3);
    let live = match std::env::var("SOV_BENCH_AGENTS").as_deref() {
        Ok("fleet") | Err(_) => true,
        Ok("none") => false,
        Ok(other) => panic!("SOV_BENCH_AGENTS={other:?}: use fleet (default) or none"),
    };
    println!(
        "placement through a 3-scheduler cluster: {nodes} {} nodes, {deployments} deployments, {runs} runs",
        if live {
            "virtual nodes of `sov-agent fleet` (heartbeats, reports)"
        } else {
            "nodes registered through the API, no agents (TTL 1 h)"
        }
    );
    let mut rows = Vec::new();
    for _ in 0..runs {
        let row = run(nodes, deployments, live);
        let rate = row.placed as f64 / row.last_s.max(1e-3);
        println!(
            "run: {} replicas placed; first {:.3} s, 50 % {:.3} s, 90 % {:.3} s, last {:.3} s after the policy ack; {rate:.0} placements/s; leader CPU {:.2} cores; {deployments} deployments applied in {:.1} s",
            row.placed,
            row.first_s,
            row.half_s,
            row.ninety_s,
            row.last_s,
            row.leader_cpu,
            row.apply_deployments_s
        );
        rows.push((rate, row));
    }
    rows.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (rate, median) = &rows[rows.len() / 2];
    println!(
        "median: {rate:.0} committed placements/s ({} replicas in {:.3} s)",
        median.placed, median.last_s
    );
}
