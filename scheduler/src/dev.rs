//! `sov-scheduler dev`: a working local cluster in one command.
//!
//! Starts N real `sov-scheduler run` processes (this same binary) on loopback, bootstraps the
//! first, joins the others, waits until all are voters, prints what runs where and how to talk
//! to it, and stops everything cleanly on Ctrl-C. Data lives under `--dir` and survives a
//! restart of the same command (the bootstrap and joins are then no-ops).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use sov_proto::v1::ClusterStatusRequest;
use sov_proto::v1::cluster_service_client::ClusterServiceClient;
use tokio::process::{Child, Command};

const NODES_MAX: u16 = 7;
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Args)]
pub struct DevArgs {
    /// Number of schedulers (1 to 7; 3 tolerates the loss of one).
    #[arg(long, default_value_t = 3)]
    pub nodes: u16,
    /// Where each scheduler keeps its data dir and log file.
    #[arg(long, default_value = ".sov-dev", env = "SOV_DEV_DIR")]
    pub dir: PathBuf,
    /// Scheduler i listens on BASE+10*(i-1) (API), +1 (Raft), +2 (HTTP).
    #[arg(long, default_value_t = 7400)]
    pub base_port: u16,
    /// Delete the data of a previous run first.
    #[arg(long)]
    pub fresh: bool,
    /// Policy bundle applied when the cluster has none yet.
    #[arg(long, default_value = "deploy/policies")]
    pub policies: PathBuf,
    /// Demo fleet: one real `sov-agent` per node of this file, with SIMULATED GPUs.
    #[arg(long, default_value = "deploy/dev/nodes.toml")]
    pub fleet: PathBuf,
    /// Start the schedulers only: no default policy, no agents.
    #[arg(long)]
    pub bare: bool,
}

/// One node of the demo fleet file; `sov-scheduler dev` runs a real agent for it.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FleetNode {
    name: String,
    country: String,
    #[serde(default)]
    subdivision: String,
    #[serde(default)]
    site: String,
    #[serde(default)]
    operator: String,
    #[serde(default)]
    operator_hq: String,
    #[serde(default)]
    ultimate_parent_hq: String,
    #[serde(default)]
    certifications: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    gpus: u32,
    #[serde(default)]
    gpu_model: String,
    #[serde(default)]
    gpu_memory_mib: u64,
    /// CPU and memory the agent offers instead of measuring this machine (a laptop would
    /// otherwise look like five small nodes).
    #[serde(default = "dev_cpu_millis")]
    cpu_millis: u32,
    #[serde(default = "dev_memory_mib")]
    memory_mib: u64,
}

fn dev_cpu_millis() -> u32 {
    64_000
}

fn dev_memory_mib() -> u64 {
    512 * 1024
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FleetFile {
    node: Vec<FleetNode>,
}

/// Applies the default policy bundle if none is in force; returns what it did, for the summary.
/// A missing bundle (the launcher runs outside the repo) is skipped with a note rather than
/// failing the cluster.
async fn seed(tls: &DevTls, args: &DevArgs, endpoint: &str) -> anyhow::Result<Vec<String>> {
    use sov_proto::v1 as pb;
    let mut done = Vec::new();
    let channel = tls.channel(endpoint).await?;
    let mut policies = pb::policy_service_client::PolicyServiceClient::new(channel);
    let active = policies
        .get(pb::GetPolicyRequest {
            version: 0,
            consistency: 0,
        })
        .await;
    match active {
        Ok(v) => done.push(format!(
            "policy version {} is in force",
            v.into_inner().version
        )),
        Err(status) if status.code() == tonic::Code::NotFound => {
            let files = read_bundle(&args.policies)?;
            if files.is_empty() {
                done.push(format!(
                    "no policy applied: {} not found (nothing can be placed until one is)",
                    args.policies.display()
                ));
            } else {
                let bundle = pb::PolicyBundle {
                    files: files.into_iter().collect(),
                    comment: "default bundle applied by sov-scheduler dev".into(),
                    author: "sov-dev".into(),
                };
                let v = policies
                    .apply(pb::ApplyPolicyRequest {
                        bundle: Some(bundle),
                        plan_hash: String::new(),
                    })
                    .await?;
                done.push(format!(
                    "applied policy version {} from {}",
                    v.into_inner().version,
                    args.policies.display()
                ));
            }
        }
        Err(status) => return Err(status.into()),
    }
    Ok(done)
}

/// The policy files of a bundle directory (`*.cedar`, `*.cedarschema`, `*.json`), by name.
fn read_bundle(dir: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        if path.is_file()
            && (name.ends_with(".cedar")
                || name.ends_with(".cedarschema")
                || name.ends_with(".json"))
        {
            files.push((name, std::fs::read_to_string(&path)?));
        }
    }
    files.sort();
    Ok(files)
}

/// The directory holding `sov-agent` and `sov-model-server` (next to this binary). Under
/// `cargo run` they are built first, so the one README command is enough; elsewhere their
/// absence is an error that says how to build them.
fn agent_binaries(exe: &Path) -> anyhow::Result<PathBuf> {
    let dir = exe
        .parent()
        .context("cannot tell where sov-scheduler lives")?
        .to_path_buf();
    if let Some(cargo) = std::env::var_os("CARGO") {
        eprintln!("building sov-agent and sov-model-server (cargo build)…");
        let profile = if dir.ends_with("release") {
            vec!["--release"]
        } else {
            vec![]
        };
        let mut build = std::process::Command::new(cargo);
        build
            .args(["build", "-q", "-p", "sov-agent", "--bins"])
            .args(profile);
        // Wherever the command was typed, build in this workspace.
        if let Some(dir) = std::env::var_os("CARGO_MANIFEST_DIR") {
            build
                .arg("--manifest-path")
                .arg(Path::new(&dir).join("Cargo.toml"));
        }
        let status = build
            .status()
            .context("cannot run cargo to build sov-agent")?;
        if !status.success() {
            bail!("building sov-agent and sov-model-server failed ({status})");
        }
    }
    for bin in ["sov-agent", "sov-model-server"] {
        if !dir.join(bin).exists() {
            bail!(
                "{bin} not found next to {}; build every binary first: cargo build --bins (or pass --bare to run schedulers only)",
                exe.display()
            );
        }
    }
    Ok(dir)
}

/// A real agent of the demo fleet.
struct DevAgent {
    name: String,
    country: String,
    log: PathBuf,
    child: Child,
}

/// The agent config for one demo node: its facts from the fleet file, SIMULATED GPUs, CPU and
/// memory as declared, and every scheduler endpoint.
/// Ports each dev agent offers its model servers: all agents share this host, so each gets its
/// own block of 100 (agent i: 20000 + 100 i ...).
const DEV_PORTS_PER_AGENT: u16 = 100;

fn agent_config(
    n: &FleetNode,
    index: u16,
    endpoints: &[String],
    data_dir: &Path,
    tls: &sov_proto::tls::TlsFiles,
) -> anyhow::Result<String> {
    use toml::{Table, Value};
    let mut location = Table::new();
    for (key, value) in [
        ("country", &n.country),
        ("subdivision", &n.subdivision),
        ("site", &n.site),
        ("operator", &n.operator),
        ("operator_hq", &n.operator_hq),
        ("ultimate_parent_hq", &n.ultimate_parent_hq),
    ] {
        if !value.is_empty() {
            location.insert(key.into(), Value::String(value.clone()));
        }
    }
    let certs: Table = n
        .certifications
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    location.insert("certifications".into(), Value::Table(certs));
    let mut config = Table::new();
    config.insert("name".into(), Value::String(n.name.clone()));
    config.insert(
        "schedulers".into(),
        Value::Array(endpoints.iter().cloned().map(Value::String).collect()),
    );
    config.insert(
        "data_dir".into(),
        Value::String(data_dir.to_string_lossy().into_owned()),
    );
    config.insert("stop_grace".into(), Value::String("5s".into()));
    config.insert("location".into(), Value::Table(location));
    let mut resources = Table::new();
    resources.insert("cpu_millis".into(), Value::Integer(i64::from(n.cpu_millis)));
    resources.insert(
        "memory_mib".into(),
        Value::Integer(i64::try_from(n.memory_mib).unwrap_or(i64::MAX)),
    );
    let first = crate::placement::fit::PORT_FIRST + index * DEV_PORTS_PER_AGENT;
    resources.insert("port_first".into(), Value::Integer(i64::from(first)));
    resources.insert(
        "port_last".into(),
        Value::Integer(i64::from(first + DEV_PORTS_PER_AGENT - 1)),
    );
    config.insert("resources".into(), Value::Table(resources));
    let mut tls_table = Table::new();
    for (key, path) in [("ca", &tls.ca), ("cert", &tls.cert), ("key", &tls.key)] {
        tls_table.insert(
            key.into(),
            Value::String(path.to_string_lossy().into_owned()),
        );
    }
    config.insert("tls".into(), Value::Table(tls_table));
    if n.gpus > 0 {
        let mut gpus = Table::new();
        gpus.insert("model".into(), Value::String(n.gpu_model.clone()));
        gpus.insert(
            "memory_mib".into(),
            Value::Integer(i64::try_from(n.gpu_memory_mib).unwrap_or(i64::MAX)),
        );
        gpus.insert("count".into(), Value::Integer(i64::from(n.gpus)));
        config.insert(
            "simulated_gpus".into(),
            Value::Array(vec![Value::Table(gpus)]),
        );
    }
    Ok(format!(
        "# Written by `sov-scheduler dev` from the demo fleet file; rewritten at every start.\n\
         # The GPUs below are SIMULATED: they exist only on paper.\n{}",
        toml::to_string(&config)?
    ))
}

/// Starts one `sov-agent run` per node of the fleet file (none if the file is missing).
fn spawn_agents(
    tls: &DevTls,
    bin_dir: &Path,
    args: &DevArgs,
    endpoints: &[String],
) -> anyhow::Result<(Vec<DevAgent>, Option<String>)> {
    let Ok(text) = std::fs::read_to_string(&args.fleet) else {
        return Ok((
            Vec::new(),
            Some(format!("no agents: {} not found", args.fleet.display())),
        ));
    };
    let fleet: FleetFile =
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", args.fleet.display()))?;
    let root = std::path::absolute(args.dir.join("agents"))?;
    // Model servers find `sov-model-server` (and the examples' other programs) on PATH.
    let path = match std::env::var_os("PATH") {
        Some(p) => {
            let mut dirs = vec![bin_dir.to_path_buf()];
            dirs.extend(std::env::split_paths(&p));
            std::env::join_paths(dirs)?
        }
        None => bin_dir.as_os_str().to_owned(),
    };
    let mut agents = Vec::new();
    if fleet.node.len() > 10 {
        bail!(
            "{}: at most 10 dev agents (each gets 100 ports from 20000)",
            args.fleet.display()
        );
    }
    for (index, n) in (0u16..).zip(&fleet.node) {
        let dir = root.join(&n.name);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let config_path = dir.join("agent.toml");
        std::fs::write(
            &config_path,
            agent_config(n, index, endpoints, &dir.join("data"), &tls.agent(n)?)?,
        )?;
        let log = dir.join("agent.log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let mut cmd = Command::new(bin_dir.join("sov-agent"));
        cmd.arg("run")
            .arg("--config")
            .arg(&config_path)
            // Ctrl-C on the dev cluster stops its model servers too.
            .arg("--stop-on-exit")
            .env("PATH", &path)
            .env_remove("SOV_AGENT_CONFIG")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .process_group(0)
            .kill_on_drop(true);
        // SAFETY: as for the schedulers: the agent stops if the launcher dies.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd.spawn().context("cannot start sov-agent")?;
        agents.push(DevAgent {
            name: n.name.clone(),
            country: n.country.clone(),
            log,
            child,
        });
    }
    Ok((agents, None))
}

/// SIGTERM to every agent (they stop their model servers), then waits.
async fn stop_agents(agents: &mut [DevAgent]) {
    for a in agents.iter() {
        if let Some(pid) = a.child.id() {
            // SAFETY: plain kill(2) on a child we spawned and have not reaped.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
    }
    for a in agents.iter_mut() {
        match tokio::time::timeout(STOP_TIMEOUT, a.child.wait()).await {
            Ok(_) => eprintln!("  stopped agent {}", a.name),
            Err(_) => {
                eprintln!(
                    "  agent {} did not stop within {STOP_TIMEOUT:?}; killing it",
                    a.name
                );
                let _ = a.child.kill().await;
            }
        }
    }
}

/// Waits until every agent's node is registered and ready, printing progress.
async fn wait_for_agents(
    tls: &DevTls,
    endpoint: &str,
    agents: &mut [DevAgent],
) -> anyhow::Result<()> {
    use sov_proto::v1 as pb;
    let deadline = Instant::now() + START_TIMEOUT;
    let mut last = String::new();
    loop {
        for a in agents.iter_mut() {
            if let Some(status) = a.child.try_wait()? {
                bail!(
                    "agent {} exited ({status}) during start-up; last lines of {}:\n{}",
                    a.name,
                    a.log.display(),
                    log_tail(&a.log)
                );
            }
        }
        let ready = async {
            let mut client =
                pb::node_service_client::NodeServiceClient::new(tls.channel(endpoint).await.ok()?);
            let nodes = client
                .list(pb::ListNodesRequest { consistency: 0 })
                .await
                .ok()?
                .into_inner()
                .nodes;
            Some(
                agents
                    .iter()
                    .filter(|a| {
                        nodes
                            .iter()
                            .any(|n| n.name == a.name && n.status == "ready")
                    })
                    .count(),
            )
        }
        .await
        .unwrap_or(0);
        if ready == agents.len() {
            return Ok(());
        }
        let report = format!("agents ready: {ready}/{}", agents.len());
        if report != last {
            eprintln!("  … {report}");
            last = report;
        }
        if Instant::now() > deadline {
            bail!(
                "the agents did not register within {START_TIMEOUT:?} ({last}); see their logs under the dev dir"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// How long the dev CA's certificates last; a dev cluster started again after that reissues
/// them.
const DEV_CERT_DAYS: u64 = 30;

/// The dev cluster's **throwaway** certificate authority and what it issued, under
/// `<dir>/tls`: one certificate per scheduler, one per demo agent (with its node's location
/// claims, so the demo nodes are `operator-certificate` trusted), and three client identities
/// (operator, deployer, auditor) for sovctl in `<dir>/tls/client`.
struct DevTls {
    ca: sov_proto::tls::Ca,
    root: PathBuf,
    /// sovctl's directory: `ca.crt` plus the three client identities.
    client_dir: PathBuf,
    /// The operator identity, which this launcher uses itself (policy, status).
    operator: sov_proto::tls::TlsMaterial,
}

impl DevTls {
    fn open(dir: &Path) -> anyhow::Result<DevTls> {
        use sov_proto::identity::{Identity, Role};
        let root = std::path::absolute(dir.join("tls"))?;
        let ca_dir = root.join("ca");
        let ca = if ca_dir.join(sov_proto::tls::CA_CERT_FILE).exists() {
            sov_proto::tls::Ca::load(&ca_dir)?
        } else {
            sov_proto::tls::Ca::init(&ca_dir, "sov dev cluster CA (throwaway)")?
        };
        let client_dir = root.join("client");
        let mut tls = DevTls {
            ca,
            root,
            operator: sov_proto::tls::TlsMaterial {
                ca_pem: String::new(),
                cert_pem: String::new(),
                key_pem: String::new(),
                files: sov_proto::tls::TlsFiles::in_dir(&client_dir, "operator"),
            },
            client_dir: client_dir.clone(),
        };
        for role in [Role::Operator, Role::Deployer, Role::Auditor] {
            tls.ensure(&Identity::new(role, role.as_str())?, &client_dir)?;
        }
        tls.operator = sov_proto::tls::TlsFiles::in_dir(&client_dir, "operator").load()?;
        Ok(tls)
    }

    /// The files of `identity` in `out`, issued now unless a valid certificate for exactly that
    /// identity is there already.
    fn ensure(
        &self,
        identity: &sov_proto::identity::Identity,
        out: &Path,
    ) -> anyhow::Result<sov_proto::tls::TlsFiles> {
        let name = identity.name.as_str();
        let files = sov_proto::tls::TlsFiles::in_dir(out, name);
        let current = files.load().ok().and_then(|m| {
            let (id, not_after) = m.own_identity().ok()?;
            let fresh = not_after
                .duration_since(std::time::SystemTime::now())
                .is_ok_and(|left| left > Duration::from_secs(86_400));
            (fresh && id == *identity && m.ca_pem == self.ca.cert_pem()).then_some(())
        });
        if current.is_none() {
            for stale in [&files.cert, &files.key] {
                let _ = std::fs::remove_file(stale);
            }
            self.ca.issue(
                identity,
                sov_proto::tls::valid_for_days(DEV_CERT_DAYS),
                &[],
                out,
            )?;
        }
        Ok(files)
    }

    fn scheduler(&self, id: u16) -> anyhow::Result<sov_proto::tls::TlsFiles> {
        use sov_proto::identity::{Identity, Role};
        let name = format!("scheduler-{id}");
        self.ensure(
            &Identity::new(Role::Scheduler, &name)?,
            &self.root.join(&name),
        )
    }

    fn agent(&self, n: &FleetNode) -> anyhow::Result<sov_proto::tls::TlsFiles> {
        use sov_proto::identity::{Identity, Role};
        let mut identity = Identity::new(Role::Agent, &n.name)?;
        for (fact, value) in [
            ("country", &n.country),
            ("subdivision", &n.subdivision),
            ("site", &n.site),
            ("operator", &n.operator),
            ("operator_hq", &n.operator_hq),
            ("ultimate_parent_hq", &n.ultimate_parent_hq),
        ] {
            if !value.is_empty() {
                identity = identity.with_location(fact, value)?;
            }
        }
        self.ensure(&identity, &self.root.join("agents"))
    }

    /// A channel to `endpoint` as the dev operator.
    async fn channel(&self, endpoint: &str) -> anyhow::Result<tonic::transport::Channel> {
        Ok(
            sov_proto::tls::scheduler_endpoint(endpoint, Some(&self.operator.client()))?
                .connect_timeout(Duration::from_secs(2))
                .connect()
                .await?,
        )
    }

    /// Points sovctl's default credentials (`~/.config/sov/tls`) at the dev client identities
    /// when nothing else is there, so `sovctl` works with no flags; returns what to tell the
    /// user.
    fn link_default(&self) -> String {
        let export = format!("export SOV_TLS_DIR={}", self.client_dir.display());
        let Some(config) = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        else {
            return export;
        };
        let default = config.join("sov").join("tls");
        let ours =
            std::fs::read_link(&default).is_ok_and(|t| t.starts_with(&self.root) || !t.exists());
        if std::fs::symlink_metadata(&default).is_ok() && !ours {
            return format!(
                "{export}    # {} holds other credentials; left alone",
                default.display()
            );
        }
        let _ = std::fs::remove_file(&default);
        let linked = std::fs::create_dir_all(config.join("sov"))
            .and_then(|()| std::os::unix::fs::symlink(&self.client_dir, &default));
        match linked {
            Ok(()) => format!(
                "sovctl uses {} (a link to the dev identities; or {export})",
                default.display()
            ),
            Err(_) => export,
        }
    }
}

struct DevNode {
    id: u16,
    api: String,
    raft: String,
    http: String,
    dir: PathBuf,
    log: PathBuf,
    child: Child,
}

impl DevArgs {
    fn port(&self, id: u16, offset: u16) -> anyhow::Result<u16> {
        self.base_port
            .checked_add(10 * (id - 1) + offset)
            .context("--base-port is too high for this many nodes")
    }
}

/// The dev cluster's signing key (`<dir>/keys/cluster.key`), made on the first run and kept
/// with the data: checkpoints and exports of one dev cluster verify with one public key.
fn signing_key(dir: &Path) -> anyhow::Result<PathBuf> {
    let keys = dir.join("keys");
    let secret = keys.join("cluster.key");
    if !secret.exists() {
        crate::keygen::generate(&keys)?;
    }
    Ok(std::path::absolute(secret)?)
}

fn spawn(
    exe: &Path,
    args: &DevArgs,
    id: u16,
    key: &Path,
    tls: &sov_proto::tls::TlsFiles,
) -> anyhow::Result<DevNode> {
    let api = format!("127.0.0.1:{}", args.port(id, 0)?);
    let raft = format!("127.0.0.1:{}", args.port(id, 1)?);
    let http = format!("127.0.0.1:{}", args.port(id, 2)?);
    let dir = args.dir.join(format!("node-{id}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let log = dir.join("scheduler.log");
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)?;
    let mut cmd = Command::new(exe);
    cmd.arg("run")
        .args(["--node-id", &id.to_string()])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args([
            "--api-listen",
            &api,
            "--raft-listen",
            &raft,
            "--http-listen",
            &http,
        ])
        .arg("--signing-key")
        .arg(key)
        .arg("--tls-ca")
        .arg(&tls.ca)
        .arg("--tls-cert")
        .arg(&tls.cert)
        .arg("--tls-key")
        .arg(&tls.key)
        .env_remove("SOV_CONFIG")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        // Own process group: Ctrl-C reaches only this launcher, which then stops the
        // schedulers in order instead of all of them racing.
        .process_group(0)
        .kill_on_drop(true);
    if id == 1 {
        cmd.arg("--bootstrap");
    } else {
        cmd.args(["--join", &format!("127.0.0.1:{}", args.port(1, 0)?)]);
    }
    // SAFETY: prctl is async-signal-safe; it makes the child stop if the launcher dies (even by
    // SIGKILL), so a crashed launcher leaves no orphan schedulers behind.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))?;
    Ok(DevNode {
        id,
        api,
        raft,
        http,
        dir,
        log,
        child,
    })
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Polls the first scheduler until it reports `voters` voters and a leader, or fails with the
/// reason (including a crashed child's log).
async fn wait_for_cluster(
    tls: &DevTls,
    nodes: &mut [DevNode],
    voters: usize,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    let endpoint = format!("http://{}", nodes[0].api);
    let mut last_report = String::new();
    loop {
        for node in nodes.iter_mut() {
            if let Some(status) = node.child.try_wait()? {
                bail!(
                    "scheduler {} exited ({status}) during start-up; last lines of {}:\n{}",
                    node.id,
                    node.log.display(),
                    log_tail(&node.log)
                );
            }
        }
        let status = async {
            let mut client = ClusterServiceClient::new(tls.channel(&endpoint).await.ok()?);
            client
                .status(ClusterStatusRequest {})
                .await
                .ok()
                .map(|r| r.into_inner())
        }
        .await;
        let report = match &status {
            None => "waiting for scheduler 1 to answer".to_string(),
            Some(s) => {
                let have = s.members.iter().filter(|m| m.voter).count();
                if s.leader_id != 0 && have >= voters && !s.cluster_id.is_empty() {
                    return Ok(());
                }
                format!(
                    "leader: {}, voters: {have}/{voters}",
                    if s.leader_id == 0 {
                        "electing".into()
                    } else {
                        s.leader_id.to_string()
                    }
                )
            }
        };
        if report != last_report {
            eprintln!("  … {report}");
            last_report = report;
        }
        if Instant::now() > deadline {
            bail!(
                "the cluster did not form within {START_TIMEOUT:?} ({last_report}); see the logs under the dev dir"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn stop_all(nodes: &mut [DevNode]) {
    for node in nodes.iter().rev() {
        if let Some(pid) = node.child.id() {
            // SAFETY: plain kill(2) on a child we spawned and have not reaped.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
    }
    for node in nodes.iter_mut() {
        match tokio::time::timeout(STOP_TIMEOUT, node.child.wait()).await {
            Ok(_) => eprintln!("  stopped scheduler {}", node.id),
            Err(_) => {
                eprintln!(
                    "  scheduler {} did not stop within {STOP_TIMEOUT:?}; killing it",
                    node.id
                );
                let _ = node.child.kill().await;
            }
        }
    }
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    if args.nodes == 0 || args.nodes > NODES_MAX {
        bail!("--nodes must be between 1 and {NODES_MAX}");
    }
    if args.fresh && args.dir.exists() {
        std::fs::remove_dir_all(&args.dir)
            .with_context(|| format!("cannot delete {}", args.dir.display()))?;
    }
    let reused = args.dir.join("node-1").join("data").exists();
    let exe = std::env::current_exe().context("cannot find the sov-scheduler binary")?;
    eprintln!(
        "starting {} schedulers under {}{}",
        args.nodes,
        args.dir.display(),
        if reused {
            " (reusing the data of the previous run; --fresh starts over)"
        } else {
            ""
        }
    );
    let key = signing_key(&args.dir)?;
    let tls = DevTls::open(&args.dir)?;
    eprintln!(
        "DEV MODE: a throwaway local certificate authority in {} issued every certificate of this cluster. It is for this machine only: never use it, or anything it signed, in production (docs/security.md)",
        tls.root.join("ca").display()
    );
    let mut nodes = Vec::new();
    let mut result = Ok(());
    for id in 1..=args.nodes {
        match tls
            .scheduler(id)
            .and_then(|files| spawn(&exe, &args, id, &key, &files))
        {
            Ok(node) => nodes.push(node),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    if result.is_ok() {
        result = wait_for_cluster(&tls, &mut nodes, args.nodes as usize).await;
    }
    if let Err(e) = result {
        stop_all(&mut nodes).await;
        return Err(e);
    }

    let endpoints: Vec<String> = nodes.iter().map(|n| format!("http://{}", n.api)).collect();
    let mut agents = Vec::new();
    let seeded = if args.bare {
        Vec::new()
    } else {
        let started = async {
            let mut done = seed(&tls, &args, &endpoints[0]).await?;
            let bin_dir = agent_binaries(&exe)?;
            let (spawned, note) = spawn_agents(&tls, &bin_dir, &args, &endpoints)?;
            agents = spawned;
            done.extend(note);
            if !agents.is_empty() {
                eprintln!(
                    "  started {} agents; waiting for them to register",
                    agents.len()
                );
                wait_for_agents(&tls, &endpoints[0], &mut agents).await?;
                done.push(format!(
                    "{} agents running (SIMULATED GPUs, real model-server processes), from {}",
                    agents.len(),
                    args.fleet.display()
                ));
            }
            anyhow::Ok(done)
        };
        match started.await {
            Ok(done) => done,
            Err(e) => {
                stop_agents(&mut agents).await;
                stop_all(&mut nodes).await;
                return Err(e.context("seeding the dev cluster (use --bare to skip)"));
            }
        }
    };
    println!(
        "\nsov dev cluster is up: {} schedulers on loopback\n",
        nodes.len()
    );
    println!(
        "  {:<3} {:<17} {:<17} {:<17} LOG",
        "ID", "API (gRPC)", "RAFT", "HTTP"
    );
    for n in &nodes {
        println!(
            "  {:<3} {:<17} {:<17} {:<17} {}",
            n.id,
            n.api,
            n.raft,
            n.http,
            n.log.display()
        );
    }
    for line in &seeded {
        println!("  {line}");
    }
    if !agents.is_empty() {
        println!("\n  {:<22} {:<8} LOG", "AGENT (node)", "COUNTRY");
        for a in &agents {
            println!("  {:<22} {:<8} {}", a.name, a.country, a.log.display());
        }
    }
    println!(
        "\n  DEV MODE: throwaway CA {}; client identities (operator, deployer, auditor) in {}",
        tls.root.join("ca").display(),
        tls.client_dir.display()
    );
    println!("  {}", tls.link_default());
    println!("\nTalk to it (in another terminal):");
    println!("  export SOV_ENDPOINT={}", endpoints.join(","));
    println!("  cargo run -q --bin sovctl -- cluster status");
    println!("  cargo run -q --bin sovctl -- deploy apply -f deploy/examples/tiny-echo.toml");
    println!("  cargo run -q --bin sovctl -- deploy show tiny-echo      # nodes and ports");
    println!("  curl -s localhost:PORT/v1/completions -d '{{\"prompt\":\"hello sov\"}}'");
    println!("  cargo run -q --bin sovctl -- node list");
    println!("  cargo run -q --bin sovctl -- deploy apply -f deploy/examples/mistral-7b.toml");
    println!("  cargo run -q --bin sovctl -- explain mistral-7b");
    println!("  cargo run -q --bin sovctl -- history query --deployment tiny-echo");
    println!(
        "  cargo run -q --bin sovctl -- history export -f evidence.jsonl && cargo run -q --bin sovctl -- audit verify evidence.jsonl --key {}",
        key.with_extension("pub").display()
    );
    println!("  curl -s http://{}/metrics | grep sov_raft", nodes[0].http);
    println!(
        "  grpcurl -cacert {c}/ca.crt -cert {c}/operator.crt -key {c}/operator.key -authority sov-scheduler {} list",
        nodes[0].api,
        c = tls.client_dir.display()
    );
    println!(
        "\nData: {} (kept across restarts). Press Ctrl-C to stop.",
        nodes[0].dir.parent().unwrap_or(&args.dir).display()
    );

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let exited = async {
        loop {
            for node in nodes.iter_mut() {
                if let Ok(Some(status)) = node.child.try_wait() {
                    return (node.id, status, node.log.clone());
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => eprintln!("\nstopping the dev cluster…"),
        _ = sigterm.recv() => eprintln!("\nstopping the dev cluster…"),
        (id, status, log) = exited => {
            eprintln!("\nscheduler {id} exited unexpectedly ({status}); last lines of {}:\n{}\nstopping the others…", log.display(), log_tail(&log));
        }
    }
    stop_agents(&mut agents).await;
    stop_all(&mut nodes).await;
    eprintln!(
        "dev cluster stopped; start it again with the same command to continue where you left off"
    );
    Ok(())
}
