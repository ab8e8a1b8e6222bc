//! The process driver: runs the model servers the scheduler placed on this node as plain Linux
//! processes, and keeps the set that runs equal to the set the agent asks for.
//!
//! The agent owns *what* should run (it calls [`Driver::converge`] with the desired set); the
//! driver owns *how*: environment, GPU visibility, ports, logs, health checks, restarts with
//! backoff, SIGTERM-then-SIGKILL stops of whole process groups, and re-adoption of servers that
//! kept running while the agent itself restarted. Loading a large model takes minutes, so an
//! agent upgrade or crash must not restart the servers: processes survive the agent
//! (`kill_on_drop(false)`, own process group) and a state file per allocation lets the next
//! agent run find them again.
//!
//! Layout on disk, under the agent's data dir:
//!
//! ```text
//! allocs/<id>/state.json    pid, start time, spec, restarts (present while a process may run)
//! allocs/<id>/stdout.log    appended across restarts, rotated to .1 above 64 MiB
//! allocs/<id>/stderr.log
//! ```
//!
//! One supervisor task per allocation ([`supervisor`]) owns that allocation's whole lifecycle,
//! so its status changes are reported in order and exactly once each; the [`Driver`] only
//! starts supervisors and asks them to stop.
//!
//! Status changes go to a bounded channel and a supervisor waits when it is full, so the
//! receiver must be drained by a task that does not itself wait on [`Driver::stop`],
//! [`Driver::stop_all`] or [`Driver::adopt`].

mod backoff;
mod health;
mod logs;
mod process;
mod state;
mod supervisor;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use self::process::Proc;
use self::supervisor::Start;

/// Allocation ids name directories, so they are short and made of path-safe characters.
pub const ID_LEN_MAX: usize = 128;

/// Longest HTTP health path accepted; health paths are short routes like `/health`.
const HEALTH_PATH_LEN_MAX: usize = 1024;

/// The floor on the restart backoff whatever the config says, so a server that cannot even
/// be spawned never turns its supervisor into a busy loop.
const BACKOFF_FLOOR: Duration = Duration::from_millis(10);

/// How the driver decides that a model server is ready and still healthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HealthProbe {
    /// Running as soon as it has stayed up briefly after spawning.
    Off,
    /// `GET http://127.0.0.1:<port><path>` answers 2xx.
    Http(String),
    /// A TCP connection to `127.0.0.1:<port>` succeeds.
    Tcp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    pub probe: HealthProbe,
    pub interval_ms: u32,
    pub timeout_ms: u32,
}

/// What one allocation must run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocSpec {
    /// Allocation id, e.g. `tiny-echo-42-0`; `[a-z0-9-]`, at most [`ID_LEN_MAX`] bytes. It is the
    /// allocation's identity: a spec that changes under the same id is not applied to a running
    /// process (a new spec comes with a new allocation id).
    pub id: String,
    pub deployment: String,
    /// argv; `command[0]` is looked up in `PATH` unless it contains a `/`.
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// `None` runs the process in its allocation directory.
    pub working_dir: Option<PathBuf>,
    pub gpu_uuids: Vec<String>,
    pub port: u16,
    pub health: HealthCheck,
    /// Stored for the agent, which decides what to do when it loses its scheduler; the driver
    /// itself never acts on it.
    pub stop_after_disconnect_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Phase {
    Starting,
    Running,
    Failed,
    Stopped,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Failed => "failed",
            Phase::Stopped => "stopped",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One transition of one allocation. Each is reported exactly once, in order per allocation:
/// `Starting` (after each spawn or adoption), `Running` (first healthy probe), `Failed` (exit,
/// failed health, or a spawn that failed; a restart follows), `Stopped` (final).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusChange {
    pub id: String,
    pub phase: Phase,
    pub exit_code: Option<i32>,
    pub reason: String,
    /// Restarts of this allocation on this node so far (survives re-adoption).
    pub restarts: u32,
    pub pid: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverConfig {
    /// Between SIGTERM and SIGKILL.
    pub stop_grace: Duration,
    pub restart_backoff_min: Duration,
    pub restart_backoff_max: Duration,
    /// The backoff starts again from its floor after the process ran healthy this long.
    pub healthy_reset_after: Duration,
    /// Set for every process (e.g. `SOV_NODE`, `SOV_COUNTRY`); the spec's env overrides it.
    pub extra_env: BTreeMap<String, String>,
}

impl Default for DriverConfig {
    fn default() -> DriverConfig {
        DriverConfig {
            stop_grace: Duration::from_secs(10),
            restart_backoff_min: Duration::from_secs(1),
            restart_backoff_max: Duration::from_secs(30),
            healthy_reset_after: Duration::from_secs(60),
            extra_env: BTreeMap::new(),
        }
    }
}

/// Checks that `id` can safely name a directory: non-empty, `[a-z0-9-]`, at most
/// [`ID_LEN_MAX`] bytes.
pub fn validate_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("allocation id is empty".into());
    }
    if id.len() > ID_LEN_MAX {
        return Err(format!(
            "allocation id is {} bytes long, more than the {ID_LEN_MAX} allowed",
            id.len()
        ));
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!(
            "allocation id {id:?} contains {bad:?}; only a-z, 0-9 and '-' are allowed because the id names a directory"
        ));
    }
    Ok(())
}

/// Checks everything about a spec that would make spawning it pointless or unsafe, so such a
/// spec is reported once instead of failing and restarting forever.
pub fn validate_spec(key: &str, spec: &AllocSpec) -> Result<(), String> {
    validate_id(key)?;
    if spec.id != key {
        return Err(format!(
            "desired-set key {key:?} differs from the spec's id {:?}",
            spec.id
        ));
    }
    let Some(program) = spec.command.first() else {
        return Err(format!("allocation {key}: command is empty"));
    };
    if program.is_empty() {
        return Err(format!(
            "allocation {key}: command[0] (the program) is empty"
        ));
    }
    if spec.command.iter().any(|arg| arg.contains('\0')) {
        return Err(format!(
            "allocation {key}: a command argument contains a NUL byte"
        ));
    }
    for (name, value) in &spec.env {
        if name.is_empty() || name.contains(['=', '\0']) || value.contains('\0') {
            return Err(format!(
                "allocation {key}: env variable {name:?} is not a valid name=value pair"
            ));
        }
    }
    if spec.deployment.contains('\0') {
        return Err(format!(
            "allocation {key}: deployment name contains a NUL byte"
        ));
    }
    if let Some(gpu) = spec
        .gpu_uuids
        .iter()
        .find(|g| g.is_empty() || g.contains([',', '\0']))
    {
        return Err(format!("allocation {key}: GPU UUID {gpu:?} is not valid"));
    }
    if spec.health.probe == HealthProbe::Off {
        return Ok(());
    }
    if spec.port == 0 {
        return Err(format!(
            "allocation {key}: a health check needs a port, and port is 0"
        ));
    }
    if spec.health.interval_ms == 0 || spec.health.timeout_ms == 0 {
        return Err(format!(
            "allocation {key}: health interval_ms and timeout_ms must be above 0"
        ));
    }
    if let HealthProbe::Http(path) = &spec.health.probe {
        let printable = path.bytes().all(|b| b.is_ascii_graphic());
        if !path.starts_with('/') || !printable || path.len() > HEALTH_PATH_LEN_MAX {
            return Err(format!(
                "allocation {key}: health path {path:?} must start with '/' and be printable ASCII without spaces, at most {HEALTH_PATH_LEN_MAX} bytes"
            ));
        }
    }
    Ok(())
}

/// Runs model servers for one agent. Cheap to clone; all clones drive the same processes.
///
/// Dropping the last clone abandons the supervisors but leaves every process running, which is
/// what an agent crash does too: the next agent run re-adopts them with [`Driver::adopt`].
#[derive(Clone)]
pub struct Driver {
    owner: Arc<Owner>,
}

/// Aborts the supervisors when the last [`Driver`] clone goes; they hold only [`Shared`], so
/// they cannot keep themselves alive.
struct Owner {
    shared: Arc<Shared>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        for slot in self.shared.lock_slots().values() {
            slot.task.abort();
        }
    }
}

pub(crate) struct Shared {
    data_dir: PathBuf,
    cfg: DriverConfig,
    events: mpsc::Sender<StatusChange>,
    /// One entry per allocation with a live supervisor; the supervisor removes its own entry
    /// as its last act, after reporting Stopped.
    slots: Mutex<BTreeMap<String, Slot>>,
    /// Desired ids whose spec was rejected, so each rejection is reported once, not on every
    /// converge. Bounded by the desired set: ids that leave it are forgotten.
    rejected: Mutex<BTreeSet<String>>,
}

pub(crate) struct Slot {
    phase: Phase,
    pid: Option<u32>,
    /// `Some(reason)` once a stop was asked for; the first reason wins.
    stop_tx: watch::Sender<Option<String>>,
    /// Becomes true when the process group is gone and the state file removed.
    gone_rx: watch::Receiver<bool>,
    task: JoinHandle<()>,
}

impl Slot {
    fn request_stop(&self, reason: &str) {
        self.stop_tx.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(reason.to_owned());
            true
        });
    }

    fn stopping(&self) -> bool {
        self.stop_tx.borrow().is_some()
    }
}

impl Shared {
    fn lock_slots(&self) -> MutexGuard<'_, BTreeMap<String, Slot>> {
        // A panic elsewhere while holding the lock leaves the map itself consistent (every
        // update is a single insert, remove or field store), so the poison is not contagious.
        self.slots
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn lock_rejected(&self) -> MutexGuard<'_, BTreeSet<String>> {
        self.rejected
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn allocs_dir(&self) -> PathBuf {
        self.data_dir.join("allocs")
    }

    /// Only for validated ids: the id becomes a path component.
    fn alloc_dir(&self, id: &str) -> PathBuf {
        assert!(
            validate_id(id).is_ok(),
            "alloc_dir called with an unvalidated id"
        );
        self.allocs_dir().join(id)
    }

    async fn report(&self, change: StatusChange) {
        if let Some(slot) = self.lock_slots().get_mut(&change.id) {
            slot.phase = change.phase;
            slot.pid = change.pid;
        }
        // A closed channel means the agent is shutting down; nobody is left to tell.
        let _ = self.events.send(change).await;
    }
}

impl Driver {
    /// `data_dir`: the agent's data dir; allocation dirs live in `data_dir/allocs/<id>/`.
    /// Status changes are sent on `events`; when it is full the sender waits.
    pub fn new(
        data_dir: PathBuf,
        mut cfg: DriverConfig,
        events: mpsc::Sender<StatusChange>,
    ) -> Driver {
        cfg.restart_backoff_min = cfg.restart_backoff_min.max(BACKOFF_FLOOR);
        cfg.restart_backoff_max = cfg.restart_backoff_max.max(cfg.restart_backoff_min);
        let shared = Arc::new(Shared {
            data_dir,
            cfg,
            events,
            slots: Mutex::new(BTreeMap::new()),
            rejected: Mutex::new(BTreeSet::new()),
        });
        Driver {
            owner: Arc::new(Owner { shared }),
        }
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.owner.shared
    }

    /// Called once at agent start: finds the state files of a previous agent run and adopts
    /// every process still alive (same pid and same start time, so a reused pid is never
    /// adopted). Dead ones are reported `Failed` (or `Stopped`, if that run was stopping them),
    /// their leftover group members killed, and their state files removed. A process the
    /// previous run was in the middle of stopping is stopped, not adopted. Returns the ids
    /// adopted.
    pub async fn adopt(&self) -> Vec<String> {
        let shared = self.shared();
        let allocs_dir = shared.allocs_dir();
        let found = match tokio::task::spawn_blocking(move || scan_states(&allocs_dir)).await {
            Ok(found) => found,
            Err(e) => {
                tracing::error!(error = %e, "cannot scan allocation state files");
                return Vec::new();
            }
        };
        let mut adopted = Vec::new();
        for (id, found) in found {
            if shared.lock_slots().contains_key(&id) {
                continue;
            }
            let dir = shared.alloc_dir(&id);
            let state = match found {
                Ok(state) => state,
                Err(reason) => {
                    set_aside_unreadable(&dir);
                    let reason = format!(
                        "state file unreadable ({reason}); any process it described is left alone and no longer managed"
                    );
                    shared
                        .report(change(&id, Phase::Failed, None, reason, 0))
                        .await;
                    continue;
                }
            };
            let mut proc = Proc::Adopted {
                pid: state.pid,
                start_time: state.start_time,
            };
            if process::is_alive(state.pid, state.start_time) {
                let start = match state.stop_reason {
                    Some(reason) => Start::FinishStop(proc, reason),
                    None => {
                        adopted.push(id.clone());
                        Start::Adopted(proc)
                    }
                };
                let slot = supervisor::launch(shared, state.spec, state.restarts, start);
                shared.lock_slots().insert(id, slot);
                continue;
            }
            // The leader is gone, but a worker it forked may still hold its port or GPU.
            process::terminate(&mut proc, shared.cfg.stop_grace).await;
            if let Err(e) = state::remove(&dir) {
                tracing::warn!(alloc = %id, error = %e, "cannot remove state file of a dead allocation");
            }
            let (phase, reason) = match state.stop_reason {
                Some(reason) => (Phase::Stopped, reason),
                None => (
                    Phase::Failed,
                    format!(
                        "process {} exited while the agent was not running",
                        state.pid
                    ),
                ),
            };
            shared
                .report(change(&id, phase, None, reason, state.restarts))
                .await;
        }
        adopted
    }

    /// Makes the running set equal `desired`: starts what is missing, asks what is running but
    /// not desired to stop (without waiting for it). Idempotent and cheap: an allocation that
    /// is already managed is left alone. An id whose stop is still in progress is started by
    /// the first converge after that stop completes. An invalid spec is reported `Failed` once
    /// and never spawned.
    pub async fn converge(&self, desired: &BTreeMap<String, AllocSpec>) {
        let shared = self.shared();
        let mut rejections = Vec::new();
        {
            let mut slots = shared.lock_slots();
            let mut rejected = shared.lock_rejected();
            // A supervisor removes its slot before finishing, so a finished task that still has
            // a slot panicked; dropping the slot lets the allocation be started again.
            slots.retain(|id, slot| {
                let panicked = slot.task.is_finished();
                if panicked {
                    tracing::error!(alloc = %id, "allocation supervisor died; its process may be unmanaged");
                }
                !panicked
            });
            for (id, slot) in slots.iter() {
                if !desired.contains_key(id) && !slot.stopping() {
                    slot.request_stop("no longer in the desired set");
                }
            }
            for (key, spec) in desired {
                if slots.contains_key(key) {
                    continue;
                }
                match validate_spec(key, spec) {
                    Ok(()) => {
                        rejected.remove(key);
                        let slot = supervisor::launch(shared, spec.clone(), 0, Start::Fresh);
                        slots.insert(key.clone(), slot);
                    }
                    Err(reason) => {
                        if rejected.insert(key.clone()) {
                            tracing::warn!(alloc = %key, %reason, "allocation rejected");
                            rejections.push(change(key, Phase::Failed, None, reason, 0));
                        }
                    }
                }
            }
            rejected.retain(|id| desired.contains_key(id));
        }
        if !rejections.is_empty() {
            // Sent from a task so converge never waits on the receiver; rejected ids have no
            // other events to be ordered against.
            let events = shared.events.clone();
            tokio::spawn(async move {
                for change in rejections {
                    let _ = events.send(change).await;
                }
            });
        }
    }

    /// Stops one allocation: SIGTERM to its process group, SIGKILL after `stop_grace`, then
    /// `Stopped` with `reason`. Returns once the group is gone (the `Stopped` event may follow
    /// a moment later). It is not restarted until it appears again in a later converge.
    pub async fn stop(&self, id: &str, reason: &str) {
        let gone = {
            let slots = self.shared().lock_slots();
            let Some(slot) = slots.get(id) else {
                return;
            };
            slot.request_stop(reason);
            slot.gone_rx.clone()
        };
        wait_gone(gone).await;
    }

    /// Stops every allocation, all at once, so the whole takes about one `stop_grace`.
    pub async fn stop_all(&self, reason: &str) {
        let gone: Vec<_> = {
            let slots = self.shared().lock_slots();
            slots
                .values()
                .map(|slot| {
                    slot.request_stop(reason);
                    slot.gone_rx.clone()
                })
                .collect()
        };
        for gone in gone {
            wait_gone(gone).await;
        }
    }

    /// Ids currently managed (starting, running, waiting to restart, or stopping) with their
    /// last reported phase and pid.
    pub fn snapshot(&self) -> Vec<(String, Phase, Option<u32>)> {
        self.shared()
            .lock_slots()
            .iter()
            .map(|(id, slot)| (id.clone(), slot.phase, slot.pid))
            .collect()
    }

    /// Paths of an allocation's stdout and stderr logs. An invalid id gets paths under
    /// `allocs/_invalid/`, which the driver never creates.
    pub fn log_paths(&self, id: &str) -> (PathBuf, PathBuf) {
        let allocs = self.shared().allocs_dir();
        match validate_id(id) {
            Ok(()) => logs::paths(&allocs.join(id)),
            Err(_) => logs::paths(&allocs.join("_invalid")),
        }
    }
}

async fn wait_gone(mut gone: watch::Receiver<bool>) {
    // An error means the supervisor is gone without saying so (aborted); nothing to wait for.
    let _ = gone.wait_for(|gone| *gone).await;
}

fn change(
    id: &str,
    phase: Phase,
    exit_code: Option<i32>,
    reason: String,
    restarts: u32,
) -> StatusChange {
    StatusChange {
        id: id.to_owned(),
        phase,
        exit_code,
        reason,
        restarts,
        pid: None,
    }
}

/// Reads every `allocs/<id>/state.json`. Directories whose name is not a valid id are not ours
/// and are skipped; a state file that cannot be read or does not match its directory is
/// returned as an error for the caller to report.
fn scan_states(allocs_dir: &Path) -> Vec<(String, Result<state::StateFile, String>)> {
    let entries = match std::fs::read_dir(allocs_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            tracing::error!(dir = %allocs_dir.display(), error = %e, "cannot list allocation dirs; nothing adopted");
            return Vec::new();
        }
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(id) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if validate_id(&id).is_err() {
            continue;
        }
        let read = match state::read(&entry.path()) {
            Ok(None) => continue,
            Ok(Some(st)) if st.spec.id != id => Err(format!(
                "it names allocation {:?} but lives in the directory of {id:?}",
                st.spec.id
            )),
            Ok(Some(st)) => Ok(st),
            Err(e) => Err(e.to_string()),
        };
        found.push((id, read));
    }
    found
}

/// Keeps an unreadable state file for an operator to inspect, but out of the way of the next
/// adoption.
fn set_aside_unreadable(dir: &Path) {
    let from = state::path(dir);
    let to = dir.join("state.json.unreadable");
    if let Err(e) = std::fs::rename(&from, &to) {
        tracing::warn!(file = %from.display(), error = %e, "cannot set aside unreadable state file");
    }
}
