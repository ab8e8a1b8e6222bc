//! Pieces the end-to-end benchmarks share (`tests/benches/compliance.rs`, `history.rs`): the
//! ten-site virtual fleet, the shipped policy bundle with a benchmark rule added, settings from
//! the environment, and reading one metric.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sov_proto::v1 as pb;
use sov_proto::v1::deployment_service_client::DeploymentServiceClient;
use sov_proto::v1::policy_service_client::PolicyServiceClient;
use tonic::transport::Channel;

use crate::agent::{start_fleet_spec, wait_ready};
use crate::{Cluster, Timeline, cluster_status, http_get, u64_field};

pub const SITES: usize = 10;

pub fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// Ten groups of equal weight, one site each. One country, so node names (`bench-fr-<i>`, node
/// `i` in group `i % 10`) interleave the sites and packing in name order spreads replicas
/// over them evenly.
pub fn write_fleet_spec(dir: &Path) -> PathBuf {
    let mut text = String::from("name_prefix = \"bench\"\n");
    for site in 0..SITES {
        text.push_str(&format!(
            "\n[[group]]\ncountry = \"FR\"\nsite = \"site-{site}\"\noperator = \"operator-{site}\"\n\
             operator_hq = \"FR\"\nultimate_parent_hq = \"FR\"\n\
             cpu_millis = 64000\nmemory_mib = 524288\ngpus = 0\n"
        ));
    }
    let path = dir.join("bench-fleet.toml");
    std::fs::write(&path, text).expect("cannot write the fleet spec");
    path
}

/// What a bundle of the benchmark adds to the shipped one.
#[derive(Clone, Copy)]
pub enum Extra<'a> {
    None,
    /// Forbids every placement, so deployments can be applied first and placed all at once.
    Hold,
    /// The change measured: sites 8 and 9 forbidden, with this `@on_change`.
    Sites(&'a str),
}

/// The shipped bundle's files, plus `extra`.
pub fn bundle(extra: Extra) -> std::collections::HashMap<String, String> {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/policies");
    let mut files = std::collections::HashMap::new();
    for entry in std::fs::read_dir(&shipped).expect("deploy/policies") {
        let path = entry.expect("dir entry").path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".cedar") || name.ends_with(".cedarschema") || name.ends_with(".json") {
            files.insert(name, std::fs::read_to_string(&path).expect("bundle file"));
        }
    }
    let rule = match extra {
        Extra::None => return files,
        Extra::Hold => "@id(\"bench-hold\")\n@reason(\"benchmark: nothing is placed yet\")\n\
             @on_change(\"audit\")\n\
             forbid (principal, action == Action::\"Place\", resource);\n"
            .to_string(),
        Extra::Sites(action) => format!(
            "@id(\"bench-sites\")\n@reason(\"benchmark: sites 8 and 9 may no longer serve\")\n\
             @on_change({action:?})\n\
             forbid (principal, action == Action::\"Place\", resource)\n\
             when {{ resource.site == \"site-8\" || resource.site == \"site-9\" }};\n"
        ),
    };
    files.insert("zz-bench.cedar".into(), rule);
    files
}

pub fn metric(http_port: u16, name: &str) -> Option<u64> {
    metrics(http_port, &[name])[0]
}

/// Several gauges from one scrape (each scrape costs the leader a pass over every allocation).
pub fn metrics(http_port: u16, names: &[&str]) -> Vec<Option<u64>> {
    let body = http_get(http_port, "/metrics").map_or(String::new(), |(_, body)| body);
    names
        .iter()
        .map(|name| {
            body.lines()
                .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
                .and_then(|v| v.trim().parse().ok())
        })
        .collect()
}

/// A three-scheduler cluster with `sov-agent fleet` virtual nodes (the ten-site fleet), loaded
/// with deployments whose replicas all run: the starting point of the rule-change and history
/// benchmarks. Dropping it stops the fleet, then the schedulers.
pub struct Loaded {
    pub runtime: tokio::runtime::Runtime,
    pub endpoints: String,
    /// The leader's API endpoint, HTTP port, process id and log.
    pub api: String,
    pub http: u16,
    pub leader_pid: u32,
    pub leader_log: PathBuf,
    pub deployments: usize,
    pub replicas: u32,
    pub policies: PolicyServiceClient<Channel>,
    pub deploy: DeploymentServiceClient<Channel>,
    fleet: std::process::Child,
    pub cluster: Cluster,
}

impl Drop for Loaded {
    fn drop(&mut self) {
        let _ = self.fleet.kill();
        let _ = self.fleet.wait();
    }
}

/// Deployment applies a benchmark keeps in flight at once.
pub const APPLY_IN_FLIGHT: usize = 16;

impl Loaded {
    /// Starts everything and places `deployments` × `replicas` (4 cores each): deployments
    /// applied under a bundle that forbids everything, then the shipped bundle, so the replicas
    /// are placed in full reconcile rounds; returns once every replica is acknowledged running.
    pub fn start(tl: Timeline, nodes: usize, deployments: usize, replicas: u32) -> Loaded {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        // `SOV_BENCH_SCHEDULER_ARGS`: extra `sov-scheduler run` flags, split on whitespace (to
        // compare settings, such as the heartbeat pace, without editing the bench).
        let extra = std::env::var("SOV_BENCH_SCHEDULER_ARGS").unwrap_or_default();
        let extra: Vec<&str> = extra.split_whitespace().collect();
        if !extra.is_empty() {
            tl.log(format_args!(
                "scheduler flags from SOV_BENCH_SCHEDULER_ARGS: {extra:?}"
            ));
        }
        let mut cluster = Cluster::start_with(3, tl, &extra);
        let endpoints = cluster.endpoints();
        let leader = u64_field(&cluster_status(&endpoints).expect("status"), "leader_id");
        let node = cluster.node(leader);
        let (leader_pid, http, api, leader_log) = (
            node.pid().expect("leader pid"),
            node.http_port,
            node.endpoint(),
            node.log_path.clone(),
        );
        let scratch = cluster.scratch();
        let spec = write_fleet_spec(&scratch);
        let started = Instant::now();
        let fleet = start_fleet_spec(nodes, &spec, &endpoints, &scratch.join("fleet.log"));
        let (policies, deploy) = runtime.block_on(async {
            (
                PolicyServiceClient::new(
                    crate::pki::pki()
                        .channel(&api, sov_proto::identity::Role::Operator)
                        .await,
                )
                .max_decoding_message_size(256 << 20),
                DeploymentServiceClient::new(
                    crate::pki::pki()
                        .channel(&api, sov_proto::identity::Role::Deployer)
                        .await,
                ),
            )
        });
        let mut loaded = Loaded {
            runtime,
            endpoints,
            api,
            http,
            leader_pid,
            leader_log,
            deployments,
            replicas,
            policies,
            deploy,
            fleet,
            cluster,
        };
        wait_ready(&loaded.endpoints, nodes, Duration::from_secs(300));
        tl.log(format_args!(
            "{nodes} nodes ready after {:.1} s",
            started.elapsed().as_secs_f64()
        ));
        loaded.apply_policy(Extra::Hold);
        let t = Instant::now();
        loaded.apply_deployments(replicas);
        loaded.apply_policy(Extra::None);
        loaded.wait_running(loaded.replicas_total(), Duration::from_secs(900));
        tl.log(format_args!(
            "{} replicas placed and acknowledged running after {:.1} s",
            loaded.replicas_total(),
            t.elapsed().as_secs_f64()
        ));
        loaded
    }

    pub fn replicas_total(&self) -> u64 {
        self.deployments as u64 * u64::from(self.replicas)
    }

    /// Activates the shipped bundle plus `extra`; returns the new version.
    pub fn apply_policy(&mut self, extra: Extra) -> pb::PolicyVersion {
        let policies = &mut self.policies;
        self.runtime
            .block_on(policies.apply(pb::ApplyPolicyRequest {
                bundle: Some(pb::PolicyBundle {
                    files: bundle(extra),
                    comment: "benchmark".into(),
                    author: "bench".into(),
                }),
                plan_hash: String::new(),
            }))
            .unwrap_or_else(|s| panic!("policy apply: {}", s.message()))
            .into_inner()
    }

    /// Applies every deployment (`bench-0000`, ...) with `replicas` replicas, up to
    /// [`APPLY_IN_FLIGHT`] at a time, as many clients would: the leader's reconcile rounds then
    /// see many changed deployments at once rather than one per round.
    pub fn apply_deployments(&mut self, replicas: u32) {
        self.replicas = replicas;
        let (deploy, n) = (&self.deploy, self.deployments);
        self.runtime.block_on(async {
            let specs: Vec<usize> = (0..n).collect();
            for chunk in specs.chunks(APPLY_IN_FLIGHT) {
                let calls = chunk.iter().map(|&i| {
                    let mut deploy = deploy.clone();
                    async move {
                        let request = pb::ApplyDeploymentRequest {
                            spec: Some(pb::DeploymentSpec {
                                name: format!("bench-{i:04}"),
                                model: format!("lab/model-{}", i % 50),
                                replicas,
                                resources: Some(pb::Resources {
                                    cpu_millis: 4_000,
                                    memory_mib: 8_192,
                                    ..Default::default()
                                }),
                                command: vec!["sov-model-server".into()],
                                migration: Some(pb::Migration {
                                    max_parallel: replicas,
                                    deadline_ms: Some(600_000),
                                }),
                                ..Default::default()
                            }),
                            expected_generation: 0,
                        };
                        // As sovctl does: a moment without a leader (a lease lapsed under load)
                        // is waited out, a bounded number of times.
                        for attempt in 1.. {
                            match deploy.apply(request.clone()).await {
                                Ok(_) => break,
                                Err(s) if s.code() == tonic::Code::Unavailable && attempt < 20 => {
                                    tokio::time::sleep(Duration::from_millis(250)).await;
                                }
                                Err(s) => panic!("apply deployment {i}: {}", s.message()),
                            }
                        }
                    }
                });
                futures::future::join_all(calls).await;
            }
        });
    }

    /// Waits until the leader counts exactly `want` replicas running and none stopping.
    pub fn wait_running(&self, want: u64, limit: Duration) {
        let t = Instant::now();
        loop {
            let running = metric(self.http, "sov_allocations{status=\"running\"}").unwrap_or(0);
            let stopping = metric(self.http, "sov_allocations_stopping").unwrap_or(u64::MAX);
            if running == want && stopping == 0 {
                return;
            }
            assert!(
                t.elapsed() < limit,
                "{running} replicas running ({want} wanted), {stopping} stopping"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
