//! The node agent's main loop: register, heartbeat, watch assignments, converge, report.
//!
//! Every connection is mutual TLS with the agent's [`Credentials`], checked before `run` is
//! called, so a session never starts with a certificate the scheduler would refuse for a reason
//! the agent could have seen itself.
//!
//! One *session* is one connection to the leader: (re)register when needed, open the
//! assignment stream resuming from the last revision seen (with the ids the agent knows, so the
//! scheduler can name the ones that are gone), then heartbeat and apply events until something
//! fails; the next session starts where the error points (the leader's address, or the next
//! endpoint), after a jittered backoff.
//!
//! Around the sessions run three small tasks:
//! - the reporter sends status transitions from the driver to the scheduler, in order, retrying
//!   with backoff (a bounded queue; transitions made while cut off are sent on reconnect);
//! - the fail-closed watchdog stops allocations whose deployment sets `stop_after_disconnect`
//!   once no scheduler has answered for that long, and keeps them stopped until a session is
//!   back (then the assignment says run again, and the driver restarts them);
//! - the fingerprinter re-measures inventory periodically and on SIGHUP and re-registers when
//!   it changed.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use sov_proto::v1 as pb;
use tokio::sync::{Notify, mpsc, watch};
use tonic::{Code, Status};

use crate::client::{Backoff, Schedulers, bounded, one_line, with_timeout};
use crate::config::{AgentConfig, scheduler_address};
use crate::credentials::{Credentials, error_chain, tls_hint};
use crate::driver::{AllocSpec, Driver, DriverConfig, HealthCheck, HealthProbe, StatusChange};
use crate::inventory::Fingerprinter;
use sov_scheduler::api::nodes::{facts_to_pb, inventory_to_pb};
use sov_scheduler::state::node::Inventory;

/// Status transitions kept while no scheduler answers; beyond that the oldest are dropped
/// (the latest state of every allocation is re-sent anyway with its next transition).
const REPORT_QUEUE_MAX: usize = 1_024;
/// Reports sent in one call: the scheduler's limit per command (`state::REPORTS_MAX`).
const REPORTS_BATCH_MAX: usize = sov_scheduler::state::REPORTS_MAX;
/// Driver events buffered before the driver waits for the agent.
const DRIVER_EVENTS: usize = 256;
/// Reason length the scheduler accepts.
const REASON_LEN_MAX: usize = 1_024;
/// How often the fail-closed watchdog looks at the clock.
const WATCHDOG_EVERY: Duration = Duration::from_millis(250);
/// Heartbeat interval until the scheduler says otherwise.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(1);
/// The shortest interval a fail-closed deployment's `stop_after_disconnect` makes the agent
/// heartbeat at.
const HEARTBEAT_FLOOR: Duration = Duration::from_millis(250);
const HEALTH_INTERVAL_DEFAULT_MS: u32 = 10_000;
const HEALTH_TIMEOUT_DEFAULT_MS: u32 = 2_000;
/// Contact this recent counts as "connected" for lifting fail-closed stops.
const CONTACT_FRESH: Duration = Duration::from_secs(1);
/// How often a connected agent re-applies its assignments even without news.
const RECONVERGE_EVERY: Duration = Duration::from_secs(2);

/// What the agent was told to do, as of `revision`.
#[derive(Debug, Default)]
struct Assignments {
    revision: u64,
    by_id: BTreeMap<String, pb::Assignment>,
}

impl Assignments {
    fn apply(&mut self, event: pb::AssignmentEvent) {
        if event.full {
            self.by_id.clear();
        }
        for a in event.assignments {
            self.by_id.insert(a.allocation_id.clone(), a);
        }
        for id in &event.removed {
            self.by_id.remove(id);
        }
        if event.revision > 0 {
            self.revision = event.revision;
        }
    }

    /// How often to heartbeat when `asked` to: never slower than a third of the tightest
    /// `stop_after_disconnect` among what should run (at least [`HEARTBEAT_FLOOR`]), so that a
    /// leader that stretches the fleet's pace never leaves this agent's contact clock stale
    /// long enough to fail closed with a scheduler in reach.
    fn heartbeat_every(&self, asked: Duration) -> Duration {
        self.by_id
            .values()
            .filter(|a| a.desired == "run" && a.stop_after_disconnect_ms > 0)
            .map(|a| Duration::from_millis(a.stop_after_disconnect_ms / 3).max(HEARTBEAT_FLOOR))
            .fold(asked, Duration::min)
    }
}

struct Shared {
    name: String,
    schedulers: Schedulers,
    driver: Driver,
    /// Last time a scheduler answered (heartbeat, stream event, report).
    contact: Mutex<Instant>,
    assignments: Mutex<Assignments>,
    /// Stopped fail-closed; not restarted until a session is back.
    fenced: Mutex<BTreeSet<String>>,
    /// Stop assignments already reported stopped, so each is reported once.
    stop_reported: Mutex<BTreeSet<String>>,
    reports: Mutex<VecDeque<pb::AllocationStatusReport>>,
    report_ready: Notify,
    inventory: Mutex<Inventory>,
    reregister: Notify,
    heartbeat_override: Option<Duration>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn touch(&self) {
        *lock(&self.contact) = Instant::now();
    }

    fn queue_report(&self, report: pb::AllocationStatusReport) {
        let mut q = lock(&self.reports);
        if q.len() >= REPORT_QUEUE_MAX {
            q.pop_front();
            tracing::warn!("status report queue full; dropped the oldest report");
        }
        q.push_back(report);
        drop(q);
        self.report_ready.notify_one();
    }

    fn report_change(&self, c: StatusChange) {
        tracing::info!(
            allocation = c.id,
            status = c.phase.as_str(),
            exit_code = ?c.exit_code,
            restarts = c.restarts,
            pid = ?c.pid,
            reason = c.reason,
            "allocation status"
        );
        self.queue_report(pb::AllocationStatusReport {
            node: self.name.clone(),
            allocation_id: c.id,
            status: c.phase.as_str().into(),
            exit_code: c.exit_code,
            reason: one_line(&c.reason, REASON_LEN_MAX),
            restarts: c.restarts,
        });
    }

    /// Makes the driver's processes match the assignments: run what says run (unless fenced),
    /// stop everything else, and confirm stops of allocations that were never running here.
    async fn converge(&self) {
        let (run, stop): (BTreeMap<String, AllocSpec>, Vec<String>) = {
            let assignments = lock(&self.assignments);
            let fenced = lock(&self.fenced);
            let mut run = BTreeMap::new();
            let mut stop = Vec::new();
            for (id, a) in &assignments.by_id {
                if a.desired == "run" {
                    if !fenced.contains(id) {
                        run.insert(id.clone(), alloc_spec(a));
                    }
                } else {
                    stop.push(id.clone());
                }
            }
            (run, stop)
        };
        self.driver.converge(&run).await;
        let managed: BTreeSet<String> = self
            .driver
            .snapshot()
            .into_iter()
            .map(|(id, ..)| id)
            .collect();
        let mut reported = lock(&self.stop_reported);
        reported.retain(|id| stop.contains(id));
        for id in stop {
            if !managed.contains(&id) && reported.insert(id.clone()) {
                self.queue_report(pb::AllocationStatusReport {
                    node: self.name.clone(),
                    allocation_id: id,
                    status: "stopped".into(),
                    exit_code: None,
                    reason: "not running on this node; stopped as the scheduler asked".into(),
                    restarts: 0,
                });
            }
        }
    }
}

/// The driver's view of one assignment.
fn alloc_spec(a: &pb::Assignment) -> AllocSpec {
    let health = a.health.clone().unwrap_or_default();
    let probe = if !health.http_path.is_empty() {
        HealthProbe::Http(health.http_path)
    } else if health.tcp {
        HealthProbe::Tcp
    } else {
        HealthProbe::Off
    };
    AllocSpec {
        id: a.allocation_id.clone(),
        deployment: a.deployment.clone(),
        command: a.command.clone(),
        env: a.env.clone().into_iter().collect(),
        working_dir: (!a.working_dir.is_empty()).then(|| PathBuf::from(&a.working_dir)),
        gpu_uuids: a.gpu_uuids.clone(),
        // The scheduler only hands out ports in 20000-20999; anything else is a bug upstream
        // and the driver refuses port 0.
        port: u16::try_from(a.port).unwrap_or(0),
        health: HealthCheck {
            probe,
            interval_ms: if health.interval_ms == 0 {
                HEALTH_INTERVAL_DEFAULT_MS
            } else {
                health.interval_ms
            },
            timeout_ms: if health.timeout_ms == 0 {
                HEALTH_TIMEOUT_DEFAULT_MS
            } else {
                health.timeout_ms
            },
        },
        stop_after_disconnect_ms: a.stop_after_disconnect_ms,
    }
}

fn registration(name: &str, cfg: &AgentConfig, inventory: &Inventory) -> pb::RegisterNodeRequest {
    pb::RegisterNodeRequest {
        name: name.to_string(),
        facts: Some(facts_to_pb(&cfg.facts())),
        inventory: Some(inventory_to_pb(inventory)),
    }
}

/// Why a session ended, and what the next one must do first.
enum SessionEnd {
    Shutdown,
    Reregister,
    Failed(String, Status),
}

/// Runs the agent until `shutdown` turns true. Model servers keep running when the agent stops,
/// so a restarted agent re-adopts them, unless `stop_on_exit`. `credentials` are
/// [`Credentials::for_node`] of `cfg`.
pub async fn run(
    cfg: AgentConfig,
    credentials: Credentials,
    stop_on_exit: bool,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    credentials.log();
    let addresses = cfg
        .schedulers
        .iter()
        .map(|e| scheduler_address(e).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create data_dir {}", cfg.data_dir.display()))?;
    let mut fingerprinter = Fingerprinter::new(&cfg);
    let inventory = fingerprinter.fingerprint();
    tracing::info!(
        node = cfg.name,
        cpu_millis = inventory.cpu_millis,
        memory_mib = inventory.memory_mib,
        gpus = inventory.gpus.len(),
        simulated_gpus = inventory.gpus.iter().filter(|g| g.simulated).count(),
        "inventory"
    );
    let (events_tx, mut events_rx) = mpsc::channel(DRIVER_EVENTS);
    let driver_config = DriverConfig {
        stop_grace: cfg.stop_grace,
        extra_env: BTreeMap::from([
            ("SOV_NODE".to_string(), cfg.name.clone()),
            ("SOV_COUNTRY".to_string(), cfg.location.country.clone()),
        ]),
        ..DriverConfig::default()
    };
    let shared = Arc::new(Shared {
        name: cfg.name.clone(),
        schedulers: Schedulers::new(addresses, credentials.client_tls()),
        driver: Driver::new(cfg.data_dir.clone(), driver_config, events_tx),
        contact: Mutex::new(Instant::now()),
        assignments: Mutex::new(Assignments::default()),
        fenced: Mutex::new(BTreeSet::new()),
        stop_reported: Mutex::new(BTreeSet::new()),
        reports: Mutex::new(VecDeque::new()),
        report_ready: Notify::new(),
        inventory: Mutex::new(inventory),
        reregister: Notify::new(),
        heartbeat_override: cfg.heartbeat_interval,
    });
    let forward = {
        let shared = shared.clone();
        tokio::spawn(async move {
            while let Some(change) = events_rx.recv().await {
                shared.report_change(change);
            }
        })
    };
    let adopted = shared.driver.adopt().await;
    if !adopted.is_empty() {
        tracing::info!(
            count = adopted.len(),
            ids = ?adopted,
            "re-adopted model servers left running by the previous agent"
        );
    }
    let reporter = tokio::spawn(reporter(shared.clone()));
    let watchdog = tokio::spawn(watchdog(shared.clone()));
    let refingerprint = tokio::spawn(refingerprint(
        shared.clone(),
        fingerprinter,
        cfg.refingerprint_interval,
    ));

    // Capped at a second: during a failover the agent must find the new leader well within
    // its grace period; the jitter keeps a fleet from reconnecting in lockstep.
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
    let mut need_register = true;
    loop {
        if *shutdown.borrow() {
            break;
        }
        match session(&shared, &cfg, need_register, &mut shutdown).await {
            SessionEnd::Shutdown => break,
            SessionEnd::Reregister => {
                need_register = true;
                backoff.reset();
                continue;
            }
            SessionEnd::Failed(endpoint, status) => {
                need_register = status.code() == Code::NotFound;
                let next = shared.schedulers.failed(&endpoint, &status);
                let delay = backoff.next_delay();
                let error = error_chain(&status);
                if let Some(hint) = tls_hint(&error) {
                    // Retrying cannot fix a certificate problem; the operator must see it.
                    tracing::error!(
                        scheduler = endpoint,
                        error,
                        hint,
                        next = next,
                        retry_in_ms = delay.as_millis() as u64,
                        "TLS handshake with the scheduler failed"
                    );
                } else if matches!(
                    status.code(),
                    Code::PermissionDenied | Code::Unauthenticated
                ) {
                    tracing::error!(
                        scheduler = endpoint,
                        code = ?status.code(),
                        error,
                        cert = %credentials.cert_path().display(),
                        next = next,
                        retry_in_ms = delay.as_millis() as u64,
                        "the scheduler refused this agent's certificate"
                    );
                } else {
                    tracing::warn!(
                        scheduler = endpoint,
                        code = ?status.code(),
                        error,
                        next = next,
                        retry_in_ms = delay.as_millis() as u64,
                        "lost the scheduler session"
                    );
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    }
    if stop_on_exit {
        tracing::info!("stopping every model server (--stop-on-exit)");
        shared
            .driver
            .stop_all("the agent stopped (--stop-on-exit)")
            .await;
        // Give the reporter a moment to tell the scheduler; the next agent start re-syncs anyway.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while !lock(&shared.reports).is_empty() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
    }
    for task in [reporter, watchdog, refingerprint, forward] {
        task.abort();
    }
    if stop_on_exit {
        tracing::info!("agent stopped; its model servers are stopped too");
    } else {
        tracing::info!(
            "agent stopped; model servers keep running and are re-adopted at next start"
        );
    }
    Ok(())
}

/// One connection to the leader; see the module doc.
async fn session(
    shared: &Arc<Shared>,
    cfg: &AgentConfig,
    register: bool,
    shutdown: &mut watch::Receiver<bool>,
) -> SessionEnd {
    let (endpoint, mut client) = match shared.schedulers.client() {
        Ok(c) => c,
        Err(e) => {
            return SessionEnd::Failed(
                shared.schedulers.current(),
                Status::unavailable(e.to_string()),
            );
        }
    };
    let fail = |status: Status| SessionEnd::Failed(endpoint.clone(), status);
    let mut interval = shared.heartbeat_override.unwrap_or(DEFAULT_HEARTBEAT);
    if register {
        let request = registration(&cfg.name, cfg, &lock(&shared.inventory));
        match client.register(with_timeout(request)).await {
            Ok(resp) => {
                let resp = resp.into_inner();
                if shared.heartbeat_override.is_none() && resp.heartbeat_interval_ms > 0 {
                    interval = Duration::from_millis(resp.heartbeat_interval_ms);
                }
                tracing::info!(
                    scheduler = endpoint,
                    revision = resp.revision,
                    heartbeat_ttl_ms = resp.heartbeat_ttl_ms,
                    heartbeat_interval_ms = interval.as_millis() as u64,
                    "registered"
                );
            }
            Err(status) if status.code() == Code::InvalidArgument => {
                // The scheduler refuses our facts or inventory: retrying unchanged cannot help,
                // but the operator must see why, loudly and repeatedly.
                tracing::error!(error = status.message(), "registration refused");
                return fail(status);
            }
            Err(status) => return fail(status),
        }
    }
    let (revision, known) = {
        let a = lock(&shared.assignments);
        (a.revision, a.by_id.keys().take(4_096).cloned().collect())
    };
    let request = pb::WatchAssignmentsRequest {
        node: cfg.name.clone(),
        from_revision: revision,
        known,
    };
    let mut stream = match bounded(client.watch_assignments(request)).await {
        Ok(resp) => resp.into_inner(),
        Err(status) => return fail(status),
    };
    shared.touch();
    tracing::info!(
        scheduler = endpoint,
        from_revision = revision,
        "watching assignments"
    );

    let heartbeats = async {
        loop {
            let last_seen_revision = lock(&shared.assignments).revision;
            let request = pb::HeartbeatRequest {
                name: cfg.name.clone(),
                last_seen_revision,
            };
            match client.clone().heartbeat(with_timeout(request)).await {
                Ok(resp) => {
                    shared.touch();
                    let resp = resp.into_inner();
                    if shared.heartbeat_override.is_none()
                        && resp.heartbeat_interval_ms > 0
                        && Duration::from_millis(resp.heartbeat_interval_ms) != interval
                    {
                        interval = Duration::from_millis(resp.heartbeat_interval_ms);
                        tracing::info!(
                            heartbeat_interval_ms = resp.heartbeat_interval_ms,
                            heartbeat_ttl_ms = resp.heartbeat_ttl_ms,
                            "the leader asks for another heartbeat pace"
                        );
                    }
                }
                Err(status) => return status,
            }
            let every = lock(&shared.assignments).heartbeat_every(interval);
            tokio::time::sleep(every).await;
        }
    };
    let events = async {
        // The driver starts an allocation whose stop was still in progress only at a later
        // converge, so converge on a tick too, not only on events. Never before this session's
        // first event: right after an agent restart the assignments are still empty, and a
        // converge then would stop the model servers just re-adopted.
        let mut reconverge = tokio::time::interval_at(
            tokio::time::Instant::now() + RECONVERGE_EVERY,
            RECONVERGE_EVERY,
        );
        let mut synced = false;
        loop {
            let message = tokio::select! {
                m = stream.message() => m,
                _ = reconverge.tick() => {
                    if synced {
                        shared.converge().await;
                    }
                    continue;
                }
            };
            match message {
                Ok(Some(event)) => {
                    synced = true;
                    shared.touch();
                    let (full, changed, removed) =
                        (event.full, event.assignments.len(), event.removed.len());
                    lock(&shared.assignments).apply(event);
                    tracing::debug!(full, changed, removed, "assignment event");
                    shared.converge().await;
                }
                Ok(None) => {
                    return Status::unavailable("the scheduler closed the assignment stream");
                }
                Err(status) => return status,
            }
        }
    };
    tokio::select! {
        status = heartbeats => fail(status),
        status = events => fail(status),
        _ = shared.reregister.notified() => SessionEnd::Reregister,
        _ = shutdown.changed() => SessionEnd::Shutdown,
    }
}

/// Sends queued status transitions in order, retrying with backoff: everything queued (up to
/// `REPORTS_BATCH_MAX`) in one `ReportStatuses` call, so ten replicas stopped at once cost one
/// Raft command, not ten. A batch the scheduler calls malformed is split: the reports are
/// sent one at a time until the bad one is found and dropped.
async fn reporter(shared: Arc<Shared>) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut one_at_a_time = false;
    loop {
        let batch: Vec<pb::AllocationStatusReport> = {
            let q = lock(&shared.reports);
            let take = if one_at_a_time { 1 } else { REPORTS_BATCH_MAX };
            q.iter().take(take).cloned().collect()
        };
        if batch.is_empty() {
            one_at_a_time = false;
            shared.report_ready.notified().await;
            continue;
        }
        let result = match shared.schedulers.client() {
            Ok((endpoint, mut client)) => {
                let request = pb::AllocationStatusBatch {
                    node: batch[0].node.clone(),
                    reports: batch.clone(),
                };
                client
                    .report_statuses(with_timeout(request))
                    .await
                    .map_err(|s| (endpoint, s))
            }
            Err(e) => Err((
                shared.schedulers.current(),
                Status::unavailable(e.to_string()),
            )),
        };
        match result {
            Ok(_) => {
                shared.touch();
                backoff.reset();
                pop_sent(&shared, &batch);
            }
            Err((_, status)) if status.code() == Code::InvalidArgument && batch.len() > 1 => {
                one_at_a_time = true;
            }
            Err((_, status)) if status.code() == Code::InvalidArgument => {
                // Retrying a report the scheduler calls malformed would block every later one.
                tracing::error!(
                    error = status.message(),
                    allocation = batch[0].allocation_id,
                    "status report refused; dropped"
                );
                pop_sent(&shared, &batch);
            }
            Err((endpoint, status)) => {
                let delay = backoff.next_delay();
                tracing::debug!(
                    scheduler = endpoint,
                    error = status.message(),
                    "status report not delivered; retrying"
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Removes `sent` from the front of the report queue (it is still there: only the reporter
/// takes from the front; others append at the back).
fn pop_sent(shared: &Shared, sent: &[pb::AllocationStatusReport]) {
    let mut q = lock(&shared.reports);
    for report in sent {
        if q.front() == Some(report) {
            q.pop_front();
        }
    }
}

/// Fail closed: stops allocations whose `stop_after_disconnect` has passed without contact.
async fn watchdog(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(WATCHDOG_EVERY);
    loop {
        tick.tick().await;
        let silent = lock(&shared.contact).elapsed();
        if silent < CONTACT_FRESH {
            // A scheduler answered again (a new session, or the old one recovered): the
            // fenced allocations may run again, supervised.
            let unfenced = std::mem::take(&mut *lock(&shared.fenced));
            if !unfenced.is_empty() {
                tracing::info!(ids = ?unfenced, "scheduler reachable again; fail-closed stops lifted");
                shared.converge().await;
            }
            continue;
        }
        let due: Vec<(String, u64)> = {
            let assignments = lock(&shared.assignments);
            let fenced = lock(&shared.fenced);
            assignments
                .by_id
                .values()
                .filter(|a| {
                    a.desired == "run"
                        && a.stop_after_disconnect_ms > 0
                        && silent > Duration::from_millis(a.stop_after_disconnect_ms)
                        && !fenced.contains(&a.allocation_id)
                })
                .map(|a| (a.allocation_id.clone(), a.stop_after_disconnect_ms))
                .collect()
        };
        let fenced_any = !due.is_empty();
        for (id, limit_ms) in due {
            lock(&shared.fenced).insert(id.clone());
            let reason = format!(
                "fail-closed: no scheduler reachable for {} ms (stop_after_disconnect = {limit_ms} ms)",
                silent.as_millis()
            );
            tracing::warn!(allocation = id, reason, "stopping model server");
            shared.driver.stop(&id, &reason).await;
        }
        if fenced_any {
            // Tell the driver the fenced allocations are not wanted now, so it starts them
            // again once they are (after the next session opens).
            shared.converge().await;
        }
    }
}

/// Re-measures inventory periodically and on SIGHUP; re-registers when it changed.
async fn refingerprint(shared: Arc<Shared>, mut fingerprinter: Fingerprinter, every: Duration) {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        let why = tokio::select! {
            _ = tick.tick() => "periodic",
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => "SIGHUP",
        };
        let inventory = fingerprinter.fingerprint();
        let changed = {
            let mut current = lock(&shared.inventory);
            let changed = *current != inventory;
            *current = inventory.clone();
            changed
        };
        if changed {
            tracing::info!(
                why,
                cpu_millis = inventory.cpu_millis,
                memory_mib = inventory.memory_mib,
                gpus = inventory.gpus.len(),
                "inventory changed; registering again"
            );
            shared.reregister.notify_one();
        } else {
            tracing::debug!(why, "inventory unchanged");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(id: &str, desired: &str) -> pb::Assignment {
        pb::Assignment {
            allocation_id: id.into(),
            desired: desired.into(),
            ..Default::default()
        }
    }

    #[test]
    fn events_replace_on_full_and_patch_otherwise() {
        let mut a = Assignments::default();
        a.apply(pb::AssignmentEvent {
            revision: 5,
            full: true,
            assignments: vec![assignment("x", "run"), assignment("y", "run")],
            removed: vec![],
        });
        a.apply(pb::AssignmentEvent {
            revision: 9,
            full: false,
            assignments: vec![assignment("y", "stop")],
            removed: vec!["x".into()],
        });
        assert_eq!(a.revision, 9);
        assert_eq!(a.by_id.keys().collect::<Vec<_>>(), ["y"]);
        assert_eq!(a.by_id["y"].desired, "stop");
        // The non-final part of a split event (revision 0) does not move the resume point.
        a.apply(pb::AssignmentEvent {
            revision: 0,
            full: true,
            assignments: vec![assignment("z", "run")],
            removed: vec![],
        });
        assert_eq!(a.revision, 9);
        assert_eq!(a.by_id.keys().collect::<Vec<_>>(), ["z"]);
    }

    #[test]
    fn fail_closed_deployments_keep_the_heartbeat_within_a_third_of_their_limit() {
        let asked = Duration::from_secs(10);
        let mut a = Assignments::default();
        assert_eq!(a.heartbeat_every(asked), asked);
        let mut tight = assignment("t", "run");
        tight.stop_after_disconnect_ms = 6_000;
        let mut loose = assignment("l", "run");
        loose.stop_after_disconnect_ms = 60_000;
        // A stopped allocation's limit no longer matters.
        let mut stopped = assignment("s", "stop");
        stopped.stop_after_disconnect_ms = 1_000;
        a.apply(pb::AssignmentEvent {
            revision: 1,
            full: true,
            assignments: vec![tight, loose, stopped],
            removed: vec![],
        });
        assert_eq!(a.heartbeat_every(asked), Duration::from_secs(2));
        // Never faster than the floor, never slower than asked.
        let mut tightest = assignment("x", "run");
        tightest.stop_after_disconnect_ms = 300;
        a.by_id.insert("x".into(), tightest);
        assert_eq!(a.heartbeat_every(asked), HEARTBEAT_FLOOR);
        assert_eq!(
            a.heartbeat_every(Duration::from_millis(100)),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn assignments_become_driver_specs_with_defaults() {
        let mut a = assignment("d-1-0", "run");
        a.port = 20_001;
        a.health = Some(pb::HealthCheck {
            http_path: "/health".into(),
            ..Default::default()
        });
        let spec = alloc_spec(&a);
        assert_eq!(spec.port, 20_001);
        assert_eq!(spec.health.probe, HealthProbe::Http("/health".into()));
        assert_eq!(spec.health.interval_ms, HEALTH_INTERVAL_DEFAULT_MS);
        assert_eq!(spec.working_dir, None);
    }
}
