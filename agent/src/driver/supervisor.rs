//! One supervisor task per allocation: spawn (or adopt), health-check, restart with backoff,
//! and finally stop, reporting each transition once and in order.
//!
//! Keeping the whole lifecycle of an allocation in one sequential task is what makes "each
//! transition reported exactly once" easy to see: there is no second writer of its status. The
//! [`Driver`](super::Driver) talks to it through two watch channels only: a stop request in,
//! "process group gone" out.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior, interval_at, sleep};

use super::backoff::Backoff;
use super::process::{self, Exit, Proc, terminate};
use super::state::{self, STATE_VERSION, StateFile};
use super::{AllocSpec, HealthProbe, Phase, Shared, Slot, StatusChange, health, logs};

/// Consecutive failed probes of a healthy server before it is declared failed; one lost probe
/// under load is not worth restarting a model that takes minutes to load.
const PROBE_FAILURES_MAX: u32 = 3;

/// A server gets at least this long to become healthy (or `PROBE_FAILURES_MAX` intervals, if
/// longer) before it is failed and restarted.
const HEALTHY_WITHIN_MIN: Duration = Duration::from_secs(30);

/// Without a health probe, a process that is still up this long after spawning is running;
/// it catches the common "wrong flag, exits at once" case.
const OFF_SETTLE: Duration = Duration::from_millis(200);

/// How often a running server's logs are checked against their size limit.
const LOG_CHECK_PERIOD: Duration = Duration::from_secs(30);

/// The PATH a server gets when the agent itself has none.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Agent environment variables a server inherits; everything else is left out so a server's
/// behaviour does not depend on how the agent happened to be started.
const INHERITED_ENV: [&str; 3] = ["PATH", "HOME", "LANG"];

pub(crate) enum Start {
    Fresh,
    /// Alive and left by a previous agent run.
    Adopted(Proc),
    /// Alive, and a previous agent run was stopping it (for this reason) when it died.
    FinishStop(Proc, String),
}

/// Starts the supervisor task of one allocation; the caller inserts the returned slot.
pub(crate) fn launch(shared: &Arc<Shared>, spec: AllocSpec, restarts: u32, start: Start) -> Slot {
    let (stop_tx, stop_rx) = watch::channel(None);
    let (gone_tx, gone_rx) = watch::channel(false);
    let pid = match &start {
        Start::Fresh => None,
        Start::Adopted(proc) | Start::FinishStop(proc, _) => Some(proc.pid()),
    };
    let cfg = &shared.cfg;
    let supervisor = Supervisor {
        shared: Arc::clone(shared),
        dir: shared.alloc_dir(&spec.id),
        spec,
        restarts,
        backoff: Backoff::new(cfg.restart_backoff_min, cfg.restart_backoff_max),
        healthy_since: None,
        stop_rx,
        gone_tx,
    };
    Slot {
        phase: Phase::Starting,
        pid,
        stop_tx,
        gone_rx,
        task: tokio::spawn(supervisor.run(start)),
    }
}

struct Supervisor {
    shared: Arc<Shared>,
    spec: AllocSpec,
    dir: PathBuf,
    restarts: u32,
    backoff: Backoff,
    /// Set by the first healthy probe of the current process.
    healthy_since: Option<Instant>,
    stop_rx: watch::Receiver<Option<String>>,
    gone_tx: watch::Sender<bool>,
}

/// Why watching a process ended.
enum Outcome {
    Exited(Exit),
    Unhealthy(String),
    Stop(String),
}

/// The final report of an allocation.
struct Stopped {
    pid: Option<u32>,
    exit: Option<Exit>,
    reason: String,
}

impl Supervisor {
    async fn run(mut self, start: Start) {
        let stopped = self.lifecycle(start).await;
        if let Err(e) = state::remove(&self.dir) {
            tracing::warn!(alloc = %self.spec.id, error = %e, "cannot remove state file; the next agent run will find the process gone");
        }
        let _ = self.gone_tx.send(true);
        let exit_code = stopped.exit.and_then(Exit::code);
        self.report(Phase::Stopped, stopped.pid, exit_code, stopped.reason)
            .await;
        self.shared.lock_slots().remove(&self.spec.id);
    }

    /// Runs until a stop is asked for; returns what the final report should say.
    async fn lifecycle(&mut self, start: Start) -> Stopped {
        let mut adopted = match start {
            Start::Fresh => None,
            Start::Adopted(proc) => Some(proc),
            Start::FinishStop(mut proc, reason) => return self.shut_down(&mut proc, reason).await,
        };
        loop {
            let requested = self.stop_rx.borrow().clone();
            if let Some(reason) = requested {
                return Stopped {
                    pid: None,
                    exit: None,
                    reason,
                };
            }
            let (mut proc, how) = match adopted.take() {
                Some(proc) => (proc, "adopted from a previous agent run"),
                None => match self.spawn().await {
                    Ok(proc) if self.restarts == 0 => (proc, "started"),
                    Ok(proc) => (proc, "restarted"),
                    Err(reason) => {
                        self.report(Phase::Failed, None, None, reason).await;
                        if let Some(reason) = self.pause().await {
                            return Stopped {
                                pid: None,
                                exit: None,
                                reason,
                            };
                        }
                        continue;
                    }
                },
            };
            let pid = Some(proc.pid());
            self.report(Phase::Starting, pid, None, how.into()).await;
            match self.watch(&mut proc).await {
                Outcome::Stop(reason) => return self.shut_down(&mut proc, reason).await,
                Outcome::Exited(exit) => {
                    self.report(Phase::Failed, pid, exit.code(), exit.describe())
                        .await;
                    // Workers the server forked may outlive it, holding its port or GPU memory.
                    terminate(&mut proc, self.shared.cfg.stop_grace).await;
                }
                Outcome::Unhealthy(reason) => {
                    self.report(Phase::Failed, pid, None, reason).await;
                    terminate(&mut proc, self.shared.cfg.stop_grace).await;
                }
            }
            let healthy_for = self.healthy_since.take().map(|since| since.elapsed());
            if healthy_for.is_some_and(|d| d >= self.shared.cfg.healthy_reset_after) {
                self.backoff.reset();
            }
            if let Some(reason) = self.pause().await {
                return Stopped {
                    pid: None,
                    exit: None,
                    reason,
                };
            }
        }
    }

    /// Waits out the backoff before the next attempt, unless a stop comes first.
    async fn pause(&mut self) -> Option<String> {
        let delay = self.backoff.next_delay();
        let mut stop_rx = self.stop_rx.clone();
        tokio::select! {
            _ = sleep(delay) => {
                self.restarts = self.restarts.saturating_add(1);
                None
            }
            reason = stop_requested(&mut stop_rx) => Some(reason),
        }
    }

    async fn shut_down(&mut self, proc: &mut Proc, reason: String) -> Stopped {
        // Recorded before the first signal: an agent that dies mid-stop then finishes the stop
        // on its next start instead of adopting a server that was being taken down.
        if let Err(e) = self.persist(proc, Some(reason.clone())).await {
            tracing::warn!(alloc = %self.spec.id, error = %e, "cannot record the stop in the state file");
        }
        let exit = terminate(proc, self.shared.cfg.stop_grace).await;
        Stopped {
            pid: Some(proc.pid()),
            exit,
            reason,
        }
    }

    /// Watches one process until it exits, turns unhealthy, or a stop is asked for. A probe
    /// runs to completion (bounded by its timeout) before an exit or stop is noticed.
    async fn watch(&mut self, proc: &mut Proc) -> Outcome {
        let mut stop_rx = self.stop_rx.clone();
        let health = self.spec.health.clone();
        let port = self.spec.port;
        let probe_interval = Duration::from_millis(health.interval_ms.into());
        let probe_timeout = Duration::from_millis(health.timeout_ms.into());
        let started = Instant::now();
        let healthy_within = HEALTHY_WITHIN_MIN.max(probe_interval * PROBE_FAILURES_MAX);
        let mut probes = match health.probe {
            // One tick to settle; later ticks find the process already running and do nothing.
            HealthProbe::Off => interval_at(started + OFF_SETTLE, LOG_CHECK_PERIOD),
            HealthProbe::Http(_) | HealthProbe::Tcp => interval_at(started, probe_interval),
        };
        probes.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut log_checks = interval_at(started + LOG_CHECK_PERIOD, LOG_CHECK_PERIOD);
        let mut failures = 0u32;
        loop {
            tokio::select! {
                exit = proc.wait() => return Outcome::Exited(exit),
                reason = stop_requested(&mut stop_rx) => return Outcome::Stop(reason),
                _ = log_checks.tick() => self.limit_logs().await,
                _ = probes.tick() => {
                    let result = health::probe(&health.probe, port, probe_timeout).await;
                    match (result, self.healthy_since) {
                        (Ok(()), None) => {
                            self.healthy_since = Some(Instant::now());
                            let reason = match health.probe {
                                HealthProbe::Off => "up (no health check configured)",
                                HealthProbe::Http(_) | HealthProbe::Tcp => "health check passed",
                            };
                            self.report(Phase::Running, Some(proc.pid()), None, reason.into()).await;
                        }
                        (Ok(()), Some(_)) => failures = 0,
                        (Err(e), Some(_)) => {
                            failures += 1;
                            if failures >= PROBE_FAILURES_MAX {
                                return Outcome::Unhealthy(format!(
                                    "health check failed {PROBE_FAILURES_MAX} times: {e}"
                                ));
                            }
                        }
                        (Err(e), None) if started.elapsed() >= healthy_within => {
                            return Outcome::Unhealthy(format!(
                                "not healthy within {} s of starting: {e}",
                                healthy_within.as_secs()
                            ));
                        }
                        // Still loading: failures before the first success are expected.
                        (Err(_), None) => {}
                    }
                }
            }
        }
    }

    async fn limit_logs(&self) {
        let dir = self.dir.clone();
        let result =
            off_runtime(move || logs::limit_while_running(&dir).map_err(|e| e.to_string())).await;
        if let Err(e) = result {
            tracing::warn!(alloc = %self.spec.id, error = %e, "cannot limit log size");
        }
    }

    /// Spawns the server once. `Err` is a reason naming what failed, for the Failed report.
    async fn spawn(&self) -> Result<Proc, String> {
        let spec = &self.spec;
        let env = child_env(
            |name| std::env::var(name).ok(),
            &self.shared.cfg.extra_env,
            spec,
        );
        let dir = self.dir.clone();
        let working_dir = spec.working_dir.clone().unwrap_or_else(|| dir.clone());
        let program = spec.command[0].clone();
        let path_var = env.get("PATH").cloned().unwrap_or_default();
        let start_number = u64::from(self.restarts) + 1;
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let prepared_dir = working_dir.clone();
        let (resolved, stdout, stderr) = off_runtime(move || {
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            if !prepared_dir.is_dir() {
                return Err(format!(
                    "working directory {} does not exist",
                    prepared_dir.display()
                ));
            }
            let resolved = resolve_program(&program, &path_var, &prepared_dir)?;
            let (stdout, stderr) = logs::open_for_start(&dir, start_number, unix_ms)
                .map_err(|e| format!("cannot open log files in {}: {e}", dir.display()))?;
            Ok((resolved, stdout, stderr))
        })
        .await?;

        let mut command = tokio::process::Command::new(&resolved);
        command
            .args(&spec.command[1..])
            .env_clear()
            .envs(&env)
            .current_dir(&working_dir)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            // Its own group, so a stop reaches every worker it forks.
            .process_group(0)
            // It must outlive an agent crash, to be re-adopted.
            .kill_on_drop(false);
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start `{}`: {e}", spec.command[0]))?;
        let Some(pid) = child.id() else {
            return Err(format!(
                "`{}` exited before its pid could be read",
                spec.command[0]
            ));
        };
        // Unreadable only without /proc; 0 then never matches, so the process is never adopted.
        let start_time = process::read_stat(pid).map_or(0, |st| st.start_time);
        let mut proc = Proc::Child {
            child,
            pid,
            start_time,
        };
        if let Err(e) = self.persist(&proc, None).await {
            // Without its state file a restarted agent could neither adopt nor stop it.
            terminate(&mut proc, self.shared.cfg.stop_grace).await;
            return Err(format!(
                "cannot write {}: {e}; process {pid} was stopped",
                state::path(&self.dir).display()
            ));
        }
        Ok(proc)
    }

    async fn persist(&self, proc: &Proc, stop_reason: Option<String>) -> Result<(), String> {
        let state = StateFile {
            version: STATE_VERSION,
            pid: proc.pid(),
            start_time: proc.start_time(),
            restarts: self.restarts,
            stop_reason,
            spec: self.spec.clone(),
        };
        let dir = self.dir.clone();
        off_runtime(move || state::write(&dir, &state).map_err(|e| e.to_string())).await
    }

    async fn report(&self, phase: Phase, pid: Option<u32>, exit_code: Option<i32>, reason: String) {
        let id = &self.spec.id;
        match phase {
            Phase::Failed => {
                tracing::warn!(alloc = %id, ?pid, restarts = self.restarts, %reason, "allocation failed")
            }
            _ => {
                tracing::info!(alloc = %id, ?pid, phase = phase.as_str(), %reason, "allocation status")
            }
        }
        let change = StatusChange {
            id: id.clone(),
            phase,
            exit_code,
            reason,
            restarts: self.restarts,
            pid,
        };
        self.shared.report(change).await;
    }
}

/// Resolves when a stop was asked for, with its reason.
async fn stop_requested(stop_rx: &mut watch::Receiver<Option<String>>) -> String {
    match stop_rx.wait_for(Option::is_some).await {
        Ok(reason) => reason.clone().unwrap_or_default(),
        // The sender lives in the slot, which only this supervisor removes; seeing it gone
        // means the driver itself is being torn down.
        Err(_) => "driver shut down".into(),
    }
}

/// Runs blocking file work off the async worker threads.
async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(format!("internal error: blocking task failed: {e}")))
}

/// The complete environment of a server. Later layers win: inherited agent env, then the
/// driver config's `extra_env`, then the spec's env, then the variables the driver owns (a
/// spec must not widen its own GPU visibility or change its port).
pub(crate) fn child_env(
    inherited: impl Fn(&str) -> Option<String>,
    extra_env: &BTreeMap<String, String>,
    spec: &AllocSpec,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for name in INHERITED_ENV {
        if let Some(value) = inherited(name) {
            env.insert(name.to_owned(), value);
        }
    }
    env.entry("PATH".to_owned())
        .or_insert_with(|| DEFAULT_PATH.to_owned());
    env.extend(extra_env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.insert("PORT".into(), spec.port.to_string());
    // Empty, not unset, without GPUs: unset would show a CUDA process every GPU on the node.
    env.insert("CUDA_VISIBLE_DEVICES".into(), spec.gpu_uuids.join(","));
    env.insert("SOV_ALLOCATION".into(), spec.id.clone());
    env.insert("SOV_DEPLOYMENT".into(), spec.deployment.clone());
    env
}

/// Finds the program the way a shell would, but with the server's PATH, and says which PATH
/// was searched when it is not there (the usual cause: a PATH that differs from a login shell's).
fn resolve_program(program: &str, path_var: &str, working_dir: &Path) -> Result<PathBuf, String> {
    if program.contains('/') {
        // A relative path is relative to where the server runs, not to the agent's cwd.
        return Ok(working_dir.join(program));
    }
    path_var
        .split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(program))
        .find(|candidate| is_executable_file(candidate))
        .ok_or_else(|| format!("cannot start `{program}`: not found in PATH ({path_var})"))
}

fn is_executable_file(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}
