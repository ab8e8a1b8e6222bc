//! A real `sov-agent` process for end-to-end tests, and what a test needs to look at the model
//! servers it runs (found through `/proc`, by the environment the agent gives them).
//!
//! Every agent runs with `--stop-on-exit`, and dropping an [`Agent`] stops it with SIGTERM and
//! then kills whatever model server still carries its node name, so no test leaves processes
//! behind even when it fails halfway.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{bin, die_with_parent, file_tail, free_port_range, wait_until};

/// Lines of the agent log printed when a test fails.
const LOG_TAIL_LINES: usize = 40;

/// Location facts of a test node.
#[derive(Debug, Clone)]
pub struct Facts {
    pub country: &'static str,
    pub operator: &'static str,
    pub operator_hq: &'static str,
    pub ultimate_parent_hq: &'static str,
}

/// An EU-operated node in France: every shipped example policy allows EAR99 models there.
pub const FR: Facts = Facts {
    country: "FR",
    operator: "Exemple Cloud SAS",
    operator_hq: "FR",
    ultimate_parent_hq: "FR",
};

pub struct Agent {
    pub name: String,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    /// The first port this node offers model servers (ports are never shared between tests, so
    /// parallel tests never collide); with one port, the only one.
    pub port: u16,
    /// The last port of the node's range.
    pub port_last: u16,
    child: Option<Child>,
}

impl Agent {
    /// Writes a config for node `name` under `root/agent-<name>/` and starts the agent against
    /// `endpoints` (comma-separated), offering one port to model servers. `extra` is appended
    /// to the config verbatim.
    pub fn start(root: &Path, name: &str, endpoints: &str, facts: &Facts, extra: &str) -> Agent {
        Agent::start_with_ports(root, name, endpoints, facts, extra, 1)
    }

    /// [`Agent::start`] for a node that offers `ports` model-server ports (one model server
    /// each).
    pub fn start_with_ports(
        root: &Path,
        name: &str,
        endpoints: &str,
        facts: &Facts,
        extra: &str,
        ports: u16,
    ) -> Agent {
        let dir = root.join(format!("agent-{name}"));
        std::fs::create_dir_all(&dir).expect("cannot create agent dir");
        let port = free_port_range(ports);
        let port_last = port + ports - 1;
        let schedulers: Vec<String> = endpoints.split(',').map(|e| format!("{e:?}")).collect();
        let config = format!(
            "name = {name:?}\n\
             schedulers = [{}]\n\
             data_dir = {:?}\n\
             stop_grace = \"2s\"\n\
             {extra}\n\
             [location]\n\
             country = {:?}\n\
             site = \"test-site\"\n\
             operator = {:?}\n\
             operator_hq = {:?}\n\
             ultimate_parent_hq = {:?}\n\
             [resources]\n\
             cpu_millis = 8000\n\
             memory_mib = 16384\n\
             port_first = {port}\n\
             port_last = {port_last}\n",
            schedulers.join(", "),
            dir.join("data"),
            facts.country,
            facts.operator,
            facts.operator_hq,
            facts.ultimate_parent_hq,
        );
        // Its certificate vouches for the facts it reports (operator-certificate trust).
        let tls = crate::pki::pki().agent(
            name,
            &[
                ("country", facts.country),
                ("site", "test-site"),
                ("operator", facts.operator),
                ("operator_hq", facts.operator_hq),
                ("ultimate_parent_hq", facts.ultimate_parent_hq),
            ],
        );
        let config = format!("{config}{}", crate::pki::Pki::agent_toml(&tls));
        let config_path = dir.join("agent.toml");
        std::fs::write(&config_path, config).expect("cannot write agent config");
        let mut agent = Agent {
            name: name.to_string(),
            log_path: dir.join("agent.log"),
            dir,
            config_path,
            port,
            port_last,
            child: None,
        };
        agent.spawn();
        agent
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("cannot open agent log");
        let mut cmd = Command::new(bin("sov-agent"));
        cmd.args(["run", "--stop-on-exit", "--config"])
            .arg(&self.config_path)
            .env("SOV_LOG", "info,sov_agent=debug")
            .env_remove("SOV_AGENT_CONFIG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        die_with_parent(&mut cmd);
        self.child = Some(cmd.spawn().expect("cannot start sov-agent"));
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL the agent alone: its model servers keep running, as after a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the agent again with the same config and data dir.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// SIGTERM and wait (the agent stops its model servers: `--stop-on-exit`).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            wait_until(
                "the agent to exit",
                Duration::from_secs(20),
                || match child.try_wait() {
                    Ok(Some(_)) => Ok(()),
                    _ => Err("still running".to_string()),
                },
            );
        }
    }

    /// Model-server processes this node runs for `allocation` (any, when empty).
    pub fn processes(&self, allocation: &str) -> Vec<u32> {
        model_servers(&self.name, allocation)
    }

    pub fn log_tail(&self) -> String {
        file_tail(&self.log_path, LOG_TAIL_LINES)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "\n===== agent {} log ({}), last lines =====\n{}",
                self.name,
                self.log_path.display(),
                self.log_tail()
            );
        }
        if self.child.is_some() {
            self.stop();
        }
        for pid in model_servers(&self.name, "") {
            // SAFETY: kill(2) of a model server of this test's node, found by its environment.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

/// Pids of processes whose environment says they are a model server of `node` (and of
/// `allocation`, when not empty), as the agent sets `SOV_NODE` and `SOV_ALLOCATION`.
pub fn model_servers(node: &str, allocation: &str) -> Vec<u32> {
    let want_node = format!("SOV_NODE={node}");
    let want_alloc = format!("SOV_ALLOCATION={allocation}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        // Zombies keep their environ readable as empty; a dead process does not count.
        if is_zombie(pid) {
            continue;
        }
        let vars: Vec<&[u8]> = environ.split(|&b| b == 0).collect();
        let has = |want: &str| vars.contains(&want.as_bytes());
        if has(&want_node) && (allocation.is_empty() || has(&want_alloc)) {
            pids.push(pid);
        }
    }
    pids.sort();
    pids
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// Whether process `pid` exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid)
}

/// The names of the fleet simulator's nodes start with this (its wildcard certificate covers
/// them).
pub const FLEET_PREFIX: &str = "sim-";

/// Starts `sov-agent fleet` with `nodes` virtual nodes (deploy/dev/fleet.toml) against
/// `endpoints`, its progress lines in `log_path`.
pub fn start_fleet(nodes: usize, endpoints: &str, log_path: &Path) -> Child {
    let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/dev/fleet.toml");
    start_fleet_spec(nodes, &spec, endpoints, log_path)
}

/// [`start_fleet`] with another fleet spec file.
pub fn start_fleet_spec(nodes: usize, spec: &Path, endpoints: &str, log_path: &Path) -> Child {
    let log = std::fs::File::create(log_path).expect("cannot create the fleet log");
    let mut cmd = Command::new(bin("sov-agent"));
    // The fleet's wildcard certificate covers `<name_prefix>-*` of its spec (default `sim`).
    let text = std::fs::read_to_string(spec).expect("cannot read the fleet spec");
    let prefix = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("name_prefix"))
        .and_then(|rest| rest.split('"').nth(1))
        .map_or(FLEET_PREFIX.to_string(), |p| format!("{p}-"));
    let tls = crate::pki::pki().fleet(&prefix);
    cmd.args(["fleet", "--nodes", &nodes.to_string(), "--spec"])
        .arg(spec)
        .args(["--scheduler", endpoints, "--status-every-s", "5"])
        .args(crate::pki::Pki::flags(&tls))
        .env("SOV_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup fleet log"))
        .stderr(log);
    die_with_parent(&mut cmd);
    cmd.spawn().expect("cannot start sov-agent fleet")
}

/// (ready, down) among the nodes `sovctl node list` shows (`--stale` reads the answering
/// scheduler's state without a read barrier: cheaper while measuring).
/// Waits until at least `nodes` nodes are `ready` (asked once a second, of any scheduler:
/// listing 10,000 nodes is not free); panics after `timeout` with the last counts. Returns how
/// long it took.
pub fn wait_ready(endpoints: &str, nodes: usize, timeout: Duration) -> Duration {
    let start = std::time::Instant::now();
    loop {
        let last = match node_counts(endpoints, true) {
            Ok((ready, _)) if ready >= nodes => return start.elapsed(),
            Ok((ready, down)) => format!("{ready} ready, {down} down"),
            Err(e) => e,
        };
        assert!(
            start.elapsed() < timeout,
            "{nodes} nodes did not all become ready within {timeout:?}; last: {last}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

pub fn node_counts(endpoints: &str, stale: bool) -> Result<(usize, usize), String> {
    let mut args = vec!["node", "list", "-o", "json"];
    if stale {
        args.push("--stale");
    }
    let out = crate::sovctl(endpoints, &args);
    if !out.success() {
        return Err(out.stderr.clone());
    }
    let nodes = out.json()["nodes"].as_array().cloned().unwrap_or_default();
    let ready = nodes.iter().filter(|n| n["status"] == "ready").count();
    let down = nodes.iter().filter(|n| n["status"] == "down").count();
    Ok((ready, down))
}
