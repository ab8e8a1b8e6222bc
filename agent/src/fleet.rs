//! Fleet simulation: N virtual nodes in one process, for tests and benchmarks.
//!
//! Each virtual node does what a real agent does on the wire: registers (facts from its group in
//! the spec file, GPUs flagged `simulated`), heartbeats at the interval the scheduler asks for,
//! watches its assignments on a resumable stream and acknowledges them (reports `running` for
//! what should run and `stopped` for what should stop). It runs no processes.
//!
//! Why shared connections: 5,000 nodes with one TCP connection each would measure the kernel,
//! not the scheduler. Nodes share `--nodes-per-connection` HTTP/2 connections to the leader
//! (each node holds one long stream, and servers cap concurrent streams per connection at a
//! few hundred, so keep it at or below 100).
//!
//! Why one wildcard certificate: the fleet speaks for many nodes over shared connections, so it
//! presents one agent certificate whose name covers them all. Virtual nodes are named
//! `<name_prefix>-<country>-<n>` (`sim-fr-0`, `sim-de-1`, ... with the default prefix `sim`),
//! and the certificate is issued for `<name_prefix>-*` (`sovctl ca issue --role agent --name
//! 'sim-*'`), without location claims: virtual nodes' facts are made up, and stay
//! `self-reported`. [`Credentials::for_fleet`] checks it covers every node before any connects.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Deserialize;
use sov_proto::v1 as pb;
use sov_proto::v1::agent_service_client::AgentServiceClient;
use tokio::sync::{Semaphore, watch};
use tonic::transport::{Channel, ClientTlsConfig};
use tonic::{Code, Status};

use crate::client::{Backoff, bounded, leader_hint, tls_endpoint, with_timeout};
use crate::config::{TlsPaths, scheduler_address};
use crate::credentials::{Credentials, TlsFlags, error_chain, tls_hint};

/// Most virtual nodes one process simulates.
pub const FLEET_NODES_MAX: usize = 20_000;

#[derive(Debug, Clone, clap::Args)]
pub struct FleetArgs {
    /// How many virtual nodes to run
    #[arg(long)]
    pub nodes: usize,
    /// Fleet spec (TOML): location groups with weights and inventory; see deploy/dev/fleet.toml
    #[arg(long)]
    pub spec: PathBuf,
    /// Scheduler API endpoint, HOST:PORT (http:// or https:// in front mean the same: every
    /// connection is mutual TLS); repeat or comma-separate for several
    #[arg(
        long = "scheduler",
        env = "SOV_ENDPOINT",
        value_delimiter = ',',
        required = true
    )]
    pub schedulers: Vec<String>,
    /// Heartbeat interval in ms; default: what the scheduler asks for at registration
    #[arg(long)]
    pub heartbeat_interval_ms: Option<u64>,
    /// Virtual nodes sharing one HTTP/2 connection
    #[arg(long, default_value_t = 100)]
    pub nodes_per_connection: usize,
    /// Registrations in flight at once (each is a Raft command)
    #[arg(long, default_value_t = 64)]
    pub register_concurrency: usize,
    /// Print a progress line this often (seconds)
    #[arg(long, default_value_t = 5)]
    pub status_every_s: u64,
    /// Stop after this many seconds (default: run until SIGTERM/Ctrl-C)
    #[arg(long)]
    pub duration_s: Option<u64>,
    /// One agent certificate for every virtual node: its name must be the wildcard
    /// `<name_prefix>-*` of the spec (e.g. `sim-*`), with no location claims.
    #[command(flatten)]
    pub tls: TlsFlags,
}

/// The fleet spec file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetSpec {
    /// Virtual node names are `<name_prefix>-<group country lower-case>-<n>`, so the fleet's
    /// certificate is issued for `<name_prefix>-*`; pick a prefix no real node's name starts
    /// with, since that certificate may speak for any node so named. Default `sim`.
    #[serde(default = "default_prefix")]
    pub name_prefix: String,
    #[serde(rename = "group")]
    pub groups: Vec<Group>,
}

fn default_prefix() -> String {
    "sim".into()
}

/// One kind of node: where it is, who runs it, what it has, and its share of the fleet.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    pub country: String,
    #[serde(default)]
    pub subdivision: String,
    #[serde(default)]
    pub site: String,
    #[serde(default)]
    pub operator: String,
    #[serde(default)]
    pub operator_hq: String,
    #[serde(default)]
    pub ultimate_parent_hq: String,
    #[serde(default)]
    pub certifications: BTreeMap<String, String>,
    /// Relative share of the fleet (default 1).
    #[serde(default = "one")]
    pub weight: u32,
    pub cpu_millis: u32,
    pub memory_mib: u64,
    #[serde(default)]
    pub gpus: u32,
    #[serde(default)]
    pub gpu_model: String,
    #[serde(default)]
    pub gpu_memory_mib: u64,
}

fn one() -> u32 {
    1
}

impl FleetSpec {
    pub fn load(path: &std::path::Path) -> anyhow::Result<FleetSpec> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read fleet spec {}", path.display()))?;
        let spec: FleetSpec =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        anyhow::ensure!(
            !spec.groups.is_empty(),
            "{}: at least one [[group]] is required",
            path.display()
        );
        for (i, g) in spec.groups.iter().enumerate() {
            anyhow::ensure!(
                g.weight > 0,
                "{}: group[{i}].weight must be at least 1",
                path.display()
            );
            let probe = registration(&spec.name_prefix, g, 0);
            let facts = probe.facts.clone().unwrap_or_default();
            let node_facts = sov_scheduler::state::node::NodeFacts {
                country: facts.country,
                subdivision: facts.subdivision,
                site: facts.site,
                operator: facts.operator,
                operator_hq: facts.operator_hq,
                ultimate_parent_hq: facts.ultimate_parent_hq,
                certifications: facts.certifications.into_iter().collect(),
                ..Default::default()
            };
            sov_scheduler::state::validate_node(
                &probe.name,
                &node_facts,
                &sov_scheduler::state::node::Inventory::default(),
            )
            .map_err(|e| anyhow::anyhow!("{}: group[{i}]: {e}", path.display()))?;
        }
        Ok(spec)
    }

    /// The group of virtual node `i`, spreading groups by weight deterministically.
    fn group_of(&self, i: usize) -> &Group {
        let total: u64 = self.groups.iter().map(|g| u64::from(g.weight)).sum();
        let mut slot = (i as u64) % total;
        for g in &self.groups {
            if slot < u64::from(g.weight) {
                return g;
            }
            slot -= u64::from(g.weight);
        }
        &self.groups[0]
    }
}

/// The name of virtual node `i`, of group `g`.
fn node_name(prefix: &str, g: &Group, i: usize) -> String {
    format!("{prefix}-{}-{i}", g.country.to_ascii_lowercase())
}

fn registration(prefix: &str, g: &Group, i: usize) -> pb::RegisterNodeRequest {
    let name = node_name(prefix, g, i);
    let gpus = (0..g.gpus)
        .map(|k| pb::GpuDevice {
            index: k,
            uuid: format!("GPU-sim-{name}-{k}"),
            model: g.gpu_model.clone(),
            memory_mib: g.gpu_memory_mib,
            mig_enabled: false,
            driver_version: "simulated".into(),
            simulated: true,
        })
        .collect();
    pb::RegisterNodeRequest {
        name,
        facts: Some(pb::LocationFacts {
            country: g.country.clone(),
            subdivision: g.subdivision.clone(),
            site: g.site.clone(),
            operator: g.operator.clone(),
            operator_hq: g.operator_hq.clone(),
            ultimate_parent_hq: g.ultimate_parent_hq.clone(),
            certifications: g.certifications.clone().into_iter().collect(),
            location_trust: "self-reported".into(),
            fact_trust: Default::default(),
        }),
        inventory: Some(pb::Inventory {
            cpu_millis: g.cpu_millis,
            memory_mib: g.memory_mib,
            gpus,
            ..Default::default()
        }),
    }
}

/// Connections to the leader, shared by the virtual nodes. Endpoints are `HOST:PORT`.
struct Pool {
    endpoints: Vec<String>,
    tls: ClientTlsConfig,
    leader: RwLock<String>,
    next: Mutex<usize>,
    channels: Mutex<HashMap<(String, usize), Channel>>,
    per_connection: usize,
    /// TLS hints already logged: thousands of nodes failing the same handshake say it once.
    hinted: Mutex<BTreeSet<&'static str>>,
}

impl Pool {
    fn client(&self, node: usize) -> anyhow::Result<(String, AgentServiceClient<Channel>)> {
        let leader = self
            .leader
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let key = (leader.clone(), node / self.per_connection.max(1));
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if !channels.contains_key(&key) {
            let channel = tls_endpoint(&leader, &self.tls)?
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(10))
                .connect_lazy();
            channels.insert(key.clone(), channel);
        }
        Ok((leader, AgentServiceClient::new(channels[&key].clone())))
    }

    fn failed(&self, endpoint: &str, status: &Status) {
        let error = error_chain(status);
        if let Some(hint) = tls_hint(&error)
            && self
                .hinted
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(hint)
        {
            tracing::error!(
                scheduler = endpoint,
                error,
                hint,
                "TLS handshake with the scheduler failed"
            );
        }
        let hint = leader_hint(status);
        let mut leader = self.leader.write().unwrap_or_else(|p| p.into_inner());
        if *leader != endpoint {
            return;
        }
        *leader = match hint {
            Some(h) if h != endpoint => h,
            _ => {
                let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
                *next = (*next + 1) % self.endpoints.len();
                self.endpoints[*next].clone()
            }
        };
    }
}

#[derive(Default)]
struct Counters {
    registered: AtomicU64,
    heartbeats_ok: AtomicU64,
    heartbeat_errors: AtomicU64,
    acks: AtomicU64,
    sessions_lost: AtomicU64,
    /// Nodes whose last heartbeat succeeded.
    healthy: AtomicU64,
}

/// Runs the fleet until `shutdown` (or `--duration-s`).
pub async fn run(args: FleetArgs, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=FLEET_NODES_MAX).contains(&args.nodes),
        "--nodes must be between 1 and {FLEET_NODES_MAX}"
    );
    anyhow::ensure!(
        (1..=500).contains(&args.nodes_per_connection),
        "--nodes-per-connection must be between 1 and 500"
    );
    let spec = Arc::new(FleetSpec::load(&args.spec)?);
    let endpoints = args
        .schedulers
        .iter()
        .map(|e| scheduler_address(e).map_err(|m| anyhow::anyhow!("--scheduler: {m}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(
        !endpoints.is_empty(),
        "--scheduler: at least one endpoint is required"
    );
    let names: Vec<String> = (0..args.nodes)
        .map(|i| node_name(&spec.name_prefix, spec.group_of(i), i))
        .collect();
    let credentials = Credentials::for_fleet(
        &args.tls.over(&TlsPaths::default()),
        &spec.name_prefix,
        names.iter().map(String::as_str),
    )?;
    credentials.log();
    let pool = Arc::new(Pool {
        leader: RwLock::new(endpoints[0].clone()),
        endpoints,
        tls: credentials.client_tls(),
        next: Mutex::new(0),
        channels: Mutex::new(HashMap::new()),
        per_connection: args.nodes_per_connection,
        hinted: Mutex::new(BTreeSet::new()),
    });
    let counters = Arc::new(Counters::default());
    let registering = Arc::new(Semaphore::new(args.register_concurrency.max(1)));
    eprintln!(
        "fleet: starting {} virtual nodes (SIMULATED GPUs, no processes) against {}",
        args.nodes,
        pool.endpoints.join(",")
    );
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.nodes);
    for i in 0..args.nodes {
        let request = registration(&spec.name_prefix, spec.group_of(i), i);
        tasks.push(tokio::spawn(virtual_node(
            i,
            request,
            pool.clone(),
            counters.clone(),
            registering.clone(),
            args.heartbeat_interval_ms.map(Duration::from_millis),
            shutdown.clone(),
        )));
    }
    let deadline = args
        .duration_s
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let mut status = tokio::time::interval(Duration::from_secs(args.status_every_s.max(1)));
    status.tick().await;
    let mut last_hb = 0;
    let mut last_at = Instant::now();
    loop {
        tokio::select! {
            _ = status.tick() => {}
            _ = shutdown.changed() => break,
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => break,
        }
        let hb = counters.heartbeats_ok.load(Ordering::Relaxed);
        let rate = (hb - last_hb) as f64 / last_at.elapsed().as_secs_f64();
        last_hb = hb;
        last_at = Instant::now();
        eprintln!(
            "fleet: t={:>4}s registered {}/{} healthy {} heartbeats/s {:.0} heartbeat errors {} acks {} sessions lost {} leader {}",
            started.elapsed().as_secs(),
            counters.registered.load(Ordering::Relaxed),
            args.nodes,
            counters.healthy.load(Ordering::Relaxed),
            rate,
            counters.heartbeat_errors.load(Ordering::Relaxed),
            counters.acks.load(Ordering::Relaxed),
            counters.sessions_lost.load(Ordering::Relaxed),
            pool.leader.read().unwrap_or_else(|p| p.into_inner()),
        );
    }
    for t in tasks {
        t.abort();
    }
    eprintln!("fleet: stopped after {} s", started.elapsed().as_secs());
    Ok(())
}

async fn virtual_node(
    i: usize,
    request: pb::RegisterNodeRequest,
    pool: Arc<Pool>,
    counters: Arc<Counters>,
    registering: Arc<Semaphore>,
    heartbeat_override: Option<Duration>,
    mut shutdown: watch::Receiver<bool>,
) {
    let name = request.name.clone();
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut interval = heartbeat_override.unwrap_or(Duration::from_secs(1));
    let mut registered = false;
    let mut revision = 0;
    let mut assigned: BTreeMap<String, String> = BTreeMap::new();
    let mut acked: BTreeSet<(String, String)> = BTreeSet::new();
    let mut healthy = false;
    let set_healthy = |now: bool, healthy: &mut bool| {
        if now != *healthy {
            if now {
                counters.healthy.fetch_add(1, Ordering::Relaxed);
            } else {
                counters.healthy.fetch_sub(1, Ordering::Relaxed);
            }
            *healthy = now;
        }
    };
    loop {
        let Ok((endpoint, mut client)) = pool.client(i) else {
            return;
        };
        let outcome: Result<(), Status> = async {
            if !registered {
                let _permit = registering.acquire().await.map_err(|_| Status::cancelled("closing"))?;
                let resp = client.register(with_timeout(request.clone())).await?.into_inner();
                if heartbeat_override.is_none() && resp.heartbeat_interval_ms > 0 {
                    interval = Duration::from_millis(resp.heartbeat_interval_ms);
                }
                registered = true;
                counters.registered.fetch_add(1, Ordering::Relaxed);
            }
            let mut stream = bounded(client.watch_assignments(pb::WatchAssignmentsRequest {
                node: name.clone(),
                from_revision: revision,
                known: assigned.keys().cloned().collect(),
            }))
            .await?
            .into_inner();
            backoff.reset();
            // Spread the fleet's heartbeats over the interval instead of all at once.
            let phase = interval.mul_f64(rand::random_range(0.0..1.0));
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + phase, interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let hb = pb::HeartbeatRequest { name: name.clone(), last_seen_revision: revision };
                        match client.heartbeat(with_timeout(hb)).await {
                            Ok(resp) => {
                                counters.heartbeats_ok.fetch_add(1, Ordering::Relaxed);
                                set_healthy(true, &mut healthy);
                                // The leader stretches the pace as the fleet grows: keep to
                                // what it asks now (the next beat one new interval from now).
                                let asked = Duration::from_millis(resp.into_inner().heartbeat_interval_ms);
                                if heartbeat_override.is_none() && !asked.is_zero() && asked != interval {
                                    interval = asked;
                                    tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
                                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                                }
                            }
                            Err(status) => {
                                counters.heartbeat_errors.fetch_add(1, Ordering::Relaxed);
                                set_healthy(false, &mut healthy);
                                return Err(status);
                            }
                        }
                    }
                    message = stream.message() => {
                        let Some(event) = message? else {
                            return Err(Status::unavailable("stream closed"));
                        };
                        if event.full {
                            assigned.clear();
                        }
                        for a in &event.assignments {
                            assigned.insert(a.allocation_id.clone(), a.desired.clone());
                        }
                        for id in &event.removed {
                            assigned.remove(id);
                        }
                        if event.revision > 0 {
                            revision = event.revision;
                        }
                        acked.retain(|(id, _)| assigned.contains_key(id));
                        let todo: Vec<(String, String)> = assigned
                            .iter()
                            .map(|(id, d)| (id.clone(), d.clone()))
                            .filter(|k| !acked.contains(k))
                            .collect();
                        // One call (one Raft command) per batch, as a real agent reports.
                        for chunk in todo.chunks(sov_scheduler::state::REPORTS_MAX) {
                            let reports = chunk
                                .iter()
                                .map(|(id, desired)| pb::AllocationStatusReport {
                                    node: name.clone(),
                                    allocation_id: id.clone(),
                                    status: if desired == "run" { "running" } else { "stopped" }.into(),
                                    exit_code: None,
                                    reason: "simulated node: acknowledged, no process runs".into(),
                                    restarts: 0,
                                })
                                .collect();
                            let batch = pb::AllocationStatusBatch { node: name.clone(), reports };
                            client.report_statuses(with_timeout(batch)).await?;
                            counters.acks.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                            acked.extend(chunk.iter().cloned());
                        }
                    }
                    _ = shutdown.changed() => return Ok(()),
                }
            }
        }
        .await;
        match outcome {
            Ok(()) => {
                set_healthy(false, &mut healthy);
                return;
            }
            Err(status) => {
                set_healthy(false, &mut healthy);
                counters.sessions_lost.fetch_add(1, Ordering::Relaxed);
                if status.code() == Code::NotFound {
                    registered = false;
                }
                pool.failed(&endpoint, &status);
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"
name_prefix = "t"
[[group]]
country = "FR"
operator = "Example SAS"
operator_hq = "FR"
ultimate_parent_hq = "FR"
weight = 3
cpu_millis = 64000
memory_mib = 262144
gpus = 2
gpu_model = "NVIDIA H100 80GB HBM3"
gpu_memory_mib = 81920
[[group]]
country = "US"
cpu_millis = 32000
memory_mib = 131072
"#;

    #[test]
    fn groups_are_spread_by_weight_and_gpus_are_simulated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet.toml");
        std::fs::write(&path, SPEC).unwrap();
        let spec = FleetSpec::load(&path).unwrap();
        let countries: Vec<&str> = (0..8).map(|i| spec.group_of(i).country.as_str()).collect();
        assert_eq!(countries, ["FR", "FR", "FR", "US", "FR", "FR", "FR", "US"]);
        let r = registration(&spec.name_prefix, spec.group_of(0), 0);
        assert_eq!(r.name, "t-fr-0");
        let gpus = &r.inventory.unwrap().gpus;
        assert_eq!(gpus.len(), 2);
        assert!(gpus.iter().all(|g| g.simulated));
    }

    #[test]
    fn bad_location_in_a_group_is_refused_with_the_group_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet.toml");
        std::fs::write(&path, SPEC.replace("country = \"US\"", "country = \"USA\"")).unwrap();
        let err = FleetSpec::load(&path).unwrap_err().to_string();
        assert!(err.contains("group[1]") && err.contains("country"), "{err}");
    }
}
