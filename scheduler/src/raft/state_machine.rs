//! The state machine: applies committed entries to [`State`] and keeps snapshots in redb
//! (`<data_dir>/raft-state.redb`).
//!
//! Owns: the in-memory [`State`] every read is served from, the last applied log id and
//! membership, and the current snapshot. Durability model: the log is the source of truth; the
//! state machine is persisted as snapshots (built by openraft every `snapshot_logs_since_last`
//! entries and on demand). On start the latest snapshot is loaded and openraft re-applies the
//! committed entries after it, so a restart lands on exactly the pre-crash state.
//!
//! Applying is delegated to the pure [`crate::state::apply`]; this module only moves bytes. The
//! events each apply records go to the history store's writer (`history_store.rs`) after every
//! batch, which stores them while the next batch applies;
//! it is flushed before a snapshot that counts them is written, cut back to the snapshot's
//! count on start, and travels with a snapshot sent to a follower (the stored snapshot holds
//! the state only: the events are already in the store).

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use redb::{Database, ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};

use super::history_store::HistoryStore;
use super::{CommandResponse, LogId, Snapshot, SnapshotMeta, StoredMembership, TypeConfig};
use crate::state::{self, Outcome, State};

const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");
/// Applies that take at least this long are logged (with the command), so an operator can see
/// what holds the state machine's lock.
const SLOW_APPLY: std::time::Duration = std::time::Duration::from_millis(100);
const KEY_META: &str = "meta";
const KEY_DATA: &str = "data";

/// What the state machine has applied. Readers take the lock briefly and never across an await.
#[derive(Debug, Default)]
pub struct Applied {
    pub last_applied: Option<LogId>,
    pub last_membership: StoredMembership,
    pub state: State,
}

/// Snapshot payload: the state at `meta.last_log_id` and, in a snapshot sent to a follower or
/// saved as a backup, the history events it counts (their canonical JSON, in order). The
/// membership travels in the meta.
#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    state: State,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    history: Vec<String>,
}

struct Inner {
    applied: RwLock<Applied>,
    db: Database,
    history: HistoryStore,
    /// The state revision after the last apply, for watchers that must not poll.
    revision: tokio::sync::watch::Sender<u64>,
    /// Counts applied batches holding a command that [`state::Proposal::wakes_planner`]: see
    /// [`StateMachineStore::watch_planner_wakes`].
    planner_wakes: tokio::sync::watch::Sender<u64>,
    /// One wake-up per node with an assignment stream: see [`StateMachineStore::watch_node`].
    node_watches: Mutex<NodeWatches>,
    /// Whether this replica leads (`Replica::leading`), once Raft runs: a follower applies at a
    /// lower CPU priority ([`FOLLOWER_APPLY_NICE`]).
    leading: std::sync::OnceLock<tokio::sync::watch::Receiver<bool>>,
    follower_applier: FollowerApplier,
}

/// Nice value of the thread a follower applies on (Linux; 0 is the process's own). Nobody
/// waits for a follower's apply: a commit needs the followers' log appends, not their applies,
/// and clients and agents are served by the leader. When schedulers share CPUs (the dev
/// cluster, the benchmarks' two vCPUs), the leader's apply and planning, which everyone waits
/// for, then get the CPU first, and the followers catch up right after. On machines of their
/// own it changes nothing.
const FOLLOWER_APPLY_NICE: i32 = 10;

/// Work for the follower's apply thread.
type Job = Box<dyn FnOnce() + Send>;

/// The thread a follower applies on, at [`FOLLOWER_APPLY_NICE`]: started on first use and kept
/// (a thread's nice value cannot be lowered again without privileges, so the blocking pool's
/// threads are never niced; and one long-lived thread keeps its allocator's pages, where a
/// thread per apply made the kernel zero fresh pages for each, a tenth of the CPU of a large
/// migration). It ends when the store is dropped.
#[derive(Default)]
struct FollowerApplier {
    jobs: Mutex<Option<std::sync::mpsc::Sender<Job>>>,
}

impl FollowerApplier {
    fn start() -> io::Result<std::sync::mpsc::Sender<Job>> {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("sov-apply-follower".into())
            .spawn(move || {
                #[cfg(target_os = "linux")]
                // SAFETY: setpriority only reads its arguments; the id is this thread's own.
                unsafe {
                    libc::setpriority(
                        libc::PRIO_PROCESS,
                        libc::gettid() as libc::id_t,
                        FOLLOWER_APPLY_NICE,
                    );
                }
                for job in rx {
                    // A panicking apply drops its answer, so its caller gets an error, and
                    // the thread goes on to the next job: were it to end instead, a job sent
                    // while it unwinds would be dropped unanswered.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            })
            .map_err(io_err)?;
        Ok(tx)
    }

    /// Runs `work` on the thread (started, or started again if it is gone) and waits for it.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> io::Result<T> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = answer.send(work());
        });
        {
            let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
            let sent = match jobs.as_ref() {
                Some(tx) => tx.send(job).map_err(|e| e.0),
                None => Err(job),
            };
            if let Err(job) = sent {
                // Not started yet (or, which should not happen, gone): start it.
                let tx = Self::start()?;
                tx.send(job)
                    .map_err(|_| io_err("the follower's apply thread did not start"))?;
                *jobs = Some(tx);
            }
        }
        answered
            .await
            .map_err(|_| io_err("the follower's apply thread ended without an answer"))
    }
}

/// Runs `work` (an apply) off the async workers: on the blocking pool, or, when `yield_cpu`,
/// on the follower's apply thread ([`FollowerApplier`]).
async fn off_workers<T: Send + 'static>(
    follower: &FollowerApplier,
    yield_cpu: bool,
    work: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    if yield_cpu {
        follower.run(work).await
    } else {
        tokio::task::spawn_blocking(work).await.map_err(io_err)
    }
}

/// The channels behind [`StateMachineStore::watch_node`], by node name. A channel whose
/// streams are all gone is dropped the next time its node is touched, or by a sweep once the
/// map has doubled since the last one, so it never holds many more than the live streams'
/// nodes.
#[derive(Default)]
struct NodeWatches {
    by_node: HashMap<String, tokio::sync::watch::Sender<u64>>,
    /// Size at which the next sweep of channels without receivers runs.
    sweep_at: usize,
}

/// Fewest channels before sweeping is worth it.
const NODE_WATCHES_SWEEP_MIN: usize = 1_024;

/// Cheap to clone; all clones share the same state and database.
#[derive(Clone)]
pub struct StateMachineStore {
    inner: Arc<Inner>,
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl StateMachineStore {
    /// Tells the store whether its replica leads (`Replica::leading`), once Raft runs; until
    /// then, and on the leader, it applies at the process's priority.
    pub fn set_leading(&self, leading: tokio::sync::watch::Receiver<bool>) {
        let _ = self.inner.leading.set(leading);
    }

    /// Opens the snapshot database and restores the state from the latest snapshot, if any.
    pub fn open(dir: &Path) -> io::Result<Self> {
        let db = super::log_store::open_db(&dir.join("raft-state.redb"))?;
        let txn = db.begin_write().map_err(io_err)?;
        txn.open_table(SNAPSHOT).map_err(io_err)?;
        txn.commit().map_err(io_err)?;
        let history = HistoryStore::open(dir)?;
        let mut applied = Applied::default();
        if let Some(snapshot) = read_snapshot(&db)? {
            let body: SnapshotBody = decode_body(&snapshot.snapshot)?;
            applied = Applied {
                last_applied: snapshot.meta.last_log_id,
                last_membership: snapshot.meta.last_membership.clone(),
                state: body.state,
            };
        }
        // Events past the snapshot are written again as openraft re-applies the log after it.
        let counted = applied.state.history.size;
        history.truncate(counted)?;
        let stored = history.size()?;
        if stored < counted {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the history store ({}) holds {stored} events but the snapshot counts {counted}: it was lost or replaced; restore the data dir from a backup, or start this scheduler with an empty data dir so it receives a snapshot with the history",
                    dir.join("history.redb").display()
                ),
            ));
        }
        let (revision, _) = tokio::sync::watch::channel(applied.state.revision);
        Ok(Self {
            inner: Arc::new(Inner {
                applied: RwLock::new(applied),
                db,
                history,
                revision,
                planner_wakes: tokio::sync::watch::channel(0).0,
                node_watches: Mutex::default(),
                leading: std::sync::OnceLock::new(),
                follower_applier: FollowerApplier::default(),
            }),
        })
    }

    /// The placement history on disk (reads: queries, proofs, exports).
    pub fn history(&self) -> &HistoryStore {
        &self.inner.history
    }

    /// A handle that tells when every clone of this store has been dropped (the file is closed).
    pub fn closed_probe(&self) -> std::sync::Weak<dyn std::any::Any + Send + Sync> {
        let weak: std::sync::Weak<Inner> = Arc::downgrade(&self.inner);
        weak
    }

    /// Changes whenever the applied state's revision moves.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.revision.subscribe()
    }

    /// Changes after the apply of a command that should be planned for at once
    /// ([`state::Proposal::wakes_planner`]: a policy, a deployment, a drain, nodes down or up): the
    /// reconcile loop cuts its pause between quiet rounds short on it.
    pub fn watch_planner_wakes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.planner_wakes.subscribe()
    }

    /// Changes when an applied command changes the assignments of `node` (its
    /// `assignments_revision`), or when a snapshot replaces the state. An assignment stream
    /// waits on this rather than on [`Self::subscribe`]: every commit woke every stream before,
    /// 10,000 wake-ups (each taking the read lock) per agent report batch in a 10,000-node
    /// cluster, although a commit touches the assignments of few nodes or none.
    pub fn watch_node(&self, node: &str) -> tokio::sync::watch::Receiver<u64> {
        let mut watches = self
            .inner
            .node_watches
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = watches.by_node.get(node) {
            return tx.subscribe();
        }
        if watches.by_node.len() >= watches.sweep_at {
            watches.by_node.retain(|_, tx| tx.receiver_count() > 0);
            watches.sweep_at = (watches.by_node.len() * 2).max(NODE_WATCHES_SWEEP_MIN);
        }
        let (tx, rx) = tokio::sync::watch::channel(0);
        watches.by_node.insert(node.to_string(), tx);
        rx
    }

    /// Tells watchers that the state moved: [`Self::subscribe`]'s always, [`Self::watch_node`]'s
    /// for each node whose assignments changed since the last call (every node's after a
    /// snapshot replaced the state).
    fn publish_revision(&self, snapshot: bool) {
        let applied = self.read();
        let revision = applied.state.revision;
        // Subscribers are told only when the revision moved, as before the per-node channels.
        let mut before = revision;
        self.inner.revision.send_if_modified(|r| {
            before = std::mem::replace(r, revision);
            before != revision
        });
        if revision == before && !snapshot {
            return;
        }
        let mut watches = self
            .inner
            .node_watches
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if watches.by_node.is_empty() {
            return;
        }
        if snapshot {
            watches.by_node.retain(|_, tx| {
                tx.send_modify(|_| {});
                tx.receiver_count() > 0
            });
            return;
        }
        // One pass over the nodes (about a tenth of a millisecond at 10,000): cheaper than
        // tracking the touched ones in every apply.
        let mut gone = Vec::new();
        for (name, node) in &applied.state.nodes {
            let touched = node.assignments_revision;
            if touched > before
                && let Some(tx) = watches.by_node.get(name)
                && tx.send(touched).is_err()
            {
                gone.push(name);
            }
        }
        for name in gone {
            watches.by_node.remove(name);
        }
    }

    /// Read access to the applied state. Hold the guard only for a synchronous read.
    pub fn read(&self) -> RwLockReadGuard<'_, Applied> {
        self.inner
            .applied
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write_snapshot(&self, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()> {
        let meta_bytes = serde_json::to_vec(meta).map_err(io_err)?;
        let txn = self.inner.db.begin_write().map_err(io_err)?;
        {
            let mut table = txn.open_table(SNAPSHOT).map_err(io_err)?;
            table
                .insert(KEY_META, meta_bytes.as_slice())
                .map_err(io_err)?;
            table.insert(KEY_DATA, data).map_err(io_err)?;
        }
        txn.commit().map_err(io_err)
    }
}

fn decode_body(data: &[u8]) -> io::Result<SnapshotBody> {
    serde_json::from_slice(data).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// The state a snapshot's data holds: how a backup is checked before anything is restored
/// from it (`crate::restore`) and how its header's state hash is computed.
pub fn snapshot_state(data: &[u8]) -> io::Result<State> {
    decode_body(data).map(|body| body.state)
}

fn read_snapshot(db: &Database) -> io::Result<Option<Snapshot>> {
    let txn = db.begin_read().map_err(io_err)?;
    let table = txn.open_table(SNAPSHOT).map_err(io_err)?;
    let (Some(meta), Some(data)) = (
        table.get(KEY_META).map_err(io_err)?,
        table.get(KEY_DATA).map_err(io_err)?,
    ) else {
        return Ok(None);
    };
    let meta: SnapshotMeta = serde_json::from_slice(meta.value()).map_err(io_err)?;
    Ok(Some(Snapshot {
        meta,
        snapshot: data.value().to_vec(),
    }))
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        // Copy under the lock, serialize outside it: serializing 100,000 allocations takes
        // hundreds of milliseconds, and applies (which need the write lock) must not wait.
        let (meta, body) = {
            let applied = self.read();
            let meta = SnapshotMeta {
                last_log_id: applied.last_applied,
                last_membership: applied.last_membership.clone(),
            };
            let body = SnapshotBody {
                state: applied.state.clone(),
                history: Vec::new(),
            };
            (meta, body)
        };
        let this = self.clone();
        let m = meta.clone();
        let data = tokio::task::spawn_blocking(move || {
            // Every event the snapshot counts must survive a crash before the snapshot does.
            // The copy may count events of a batch still being applied: wait for those too.
            this.inner.history.wait_stored(body.state.history.size)?;
            this.inner.history.flush()?;
            let data = serde_json::to_vec(&body).map_err(io_err)?;
            this.write_snapshot(&m, &data)?;
            Ok::<_, io::Error>(data)
        })
        .await
        .map_err(io_err)??;
        tracing::info!(last_log_id = ?meta.last_log_id, bytes = data.len(), "built snapshot");
        Ok(Snapshot {
            meta,
            snapshot: data,
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let applied = self.read();
        Ok((applied.last_applied, applied.last_membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut batch = Vec::new();
        while let Some(item) = entries.try_next().await? {
            batch.push(item);
        }
        let wakes_planner = batch.iter().any(|(entry, _)| {
            matches!(&entry.payload, EntryPayload::Normal(c) if c.proposal.wakes_planner())
        });
        // Applying is synchronous and can take a while (a plan of 5,000 placements over
        // 100,000 allocations): off the async workers, so they keep answering Raft heartbeats
        // and votes meanwhile, and a busy apply never costs the cluster its leader.
        let this = self.clone();
        let following = self.inner.leading.get().is_some_and(|l| !*l.borrow());
        let answered = off_workers(&self.inner.follower_applier, following, move || {
            let mut recorded = Vec::new();
            let answered = batch
                .into_iter()
                .map(|(entry, responder)| {
                    // Taken per entry, so readers get a turn between entries.
                    let mut applied = this
                        .inner
                        .applied
                        .write()
                        .unwrap_or_else(|p| p.into_inner());
                    let index = entry.log_id.index;
                    applied.last_applied = Some(entry.log_id);
                    let outcome = match entry.payload {
                        EntryPayload::Blank => Outcome::Noop,
                        EntryPayload::Normal(ref command) => {
                            let started = std::time::Instant::now();
                            let outcome = state::apply(&mut applied.state, index, command);
                            recorded.append(&mut applied.state.journal.sealed);
                            let took = started.elapsed();
                            if took >= SLOW_APPLY {
                                tracing::info!(
                                    index,
                                    command = %command,
                                    apply_ms = took.as_millis() as u64,
                                    "slow apply"
                                );
                            }
                            outcome
                        }
                        EntryPayload::Membership(ref membership) => {
                            applied.last_membership =
                                StoredMembership::new(Some(entry.log_id), membership.clone());
                            Outcome::Noop
                        }
                    };
                    (responder, CommandResponse { index, outcome })
                })
                .collect::<Vec<_>>();
            // Handed to the history store's writer before anyone is answered: a history read
            // after an answer waits for the writer to store what the answer acknowledges, and
            // the next batch applies while this one is stored.
            this.inner.history.append(recorded)?;
            Ok::<_, io::Error>(answered)
        })
        .await??;
        for (responder, response) in answered {
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        self.publish_revision(false);
        if wakes_planner {
            self.inner.planner_wakes.send_modify(|n| *n += 1);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Vec<u8>,
    ) -> Result<(), io::Error> {
        let mut body = decode_body(&snapshot)?;
        let this = self.clone();
        let m = meta.clone();
        let history = std::mem::take(&mut body.history);
        let head = body.state.history.clone();
        let state_only = serde_json::to_vec(&body).map_err(io_err)?;
        tokio::task::spawn_blocking(move || {
            // The events first, checked against the root the state holds; then the snapshot,
            // kept without them (they are in the store).
            if history.len() as u64 != head.size {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "the snapshot counts {} history events but carries {}",
                        head.size,
                        history.len()
                    ),
                ));
            }
            let root = this.inner.history.replace_all(&history)?;
            if root != head.root() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the snapshot's history events do not make the root its state holds",
                ));
            }
            this.inner.history.flush()?;
            this.write_snapshot(&m, &state_only)
        })
        .await
        .map_err(io_err)??;
        let mut applied = self
            .inner
            .applied
            .write()
            .unwrap_or_else(|p| p.into_inner());
        *applied = Applied {
            last_applied: meta.last_log_id,
            last_membership: meta.last_membership.clone(),
            state: body.state,
        };
        drop(applied);
        self.publish_revision(true);
        tracing::info!(last_log_id = ?meta.last_log_id, "installed snapshot from leader");
        Ok(())
    }

    /// The stored snapshot, with the history events it counts added: what a follower installs
    /// and a backup saves.
    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let Some(mut snapshot) = read_snapshot(&this.inner.db)? else {
                return Ok(None);
            };
            let mut body = decode_body(&snapshot.snapshot)?;
            if body.state.history.size > 0 {
                body.history = this.inner.history.events_up_to(body.state.history.size)?;
                snapshot.snapshot = serde_json::to_vec(&body).map_err(io_err)?;
            }
            Ok(Some(snapshot))
        })
        .await
        .map_err(io_err)?
    }
}

#[cfg(test)]
mod tests {
    use openraft::testing::log_id;

    use super::*;
    use crate::raft::Entry;
    use crate::state::{Allocation, Command, Deployment, DeploymentSpec, Proposal, node::Node};

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_follower_applies_on_a_thread_of_lower_priority_the_leader_on_the_pool() {
        fn thread_and_nice() -> (Option<String>, i32, std::thread::ThreadId) {
            // SAFETY: getpriority only reads its arguments; the id is this thread's own.
            let nice =
                unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) };
            let me = std::thread::current();
            (me.name().map(String::from), nice, me.id())
        }
        let follower = FollowerApplier::default();
        let (pool_name, pool_nice, _) = off_workers(&follower, false, thread_and_nice)
            .await
            .unwrap();
        assert_ne!(pool_name.as_deref(), Some("sov-apply-follower"));
        let (name, nice, id) = off_workers(&follower, true, thread_and_nice).await.unwrap();
        assert_eq!(name.as_deref(), Some("sov-apply-follower"));
        assert_eq!(nice, (pool_nice + FOLLOWER_APPLY_NICE).min(19));
        // The same thread every time, and the pool's threads are never niced: the leader's next
        // apply runs at full priority.
        let (_, _, again_id) = off_workers(&follower, true, thread_and_nice).await.unwrap();
        assert_eq!(again_id, id);
        let (_, again, _) = off_workers(&follower, false, thread_and_nice)
            .await
            .unwrap();
        assert_eq!(again, pool_nice);
        // A panicking apply is answered with an error; the thread lives on for the next ones,
        // sent at once (while it unwinds) and later.
        for _ in 0..5 {
            let lost = off_workers(&follower, true, || panic!("an apply that panics")).await;
            assert!(lost.is_err());
            let (name, _, after_id) = off_workers(&follower, true, thread_and_nice).await.unwrap();
            assert_eq!(name.as_deref(), Some("sov-apply-follower"));
            assert_eq!(after_id, id);
        }
    }

    /// At revision 5: nodes "busy" (deployment "d"'s one allocation) and "idle" (nothing).
    fn two_nodes() -> State {
        let mut state = State::default();
        let spec = DeploymentSpec {
            name: "d".into(),
            model: "m".into(),
            replicas: 1,
            ..Default::default()
        };
        state.deployments.insert(
            "d".into(),
            Deployment {
                spec,
                generation: 1,
                created_at_ms: 1,
                updated_at_ms: 1,
                revision: 1,
                moves: Default::default(),
            },
        );
        for name in ["busy", "idle"] {
            let node = Node {
                name: name.into(),
                ..Default::default()
            };
            state.nodes.insert(name.into(), node);
        }
        let allocation = Allocation {
            id: "d-1-0".into(),
            deployment: "d".into(),
            node: "busy".into(),
            revision: 1,
            ..Default::default()
        };
        state.allocations.insert(allocation.id.clone(), allocation);
        state.revision = 5;
        state
    }

    fn entry(index: u64, proposal: Proposal) -> Result<EntryResponder<TypeConfig>, io::Error> {
        let payload = EntryPayload::Normal(Command {
            at_ms: 10,
            proposal,
        });
        let entry = Entry {
            log_id: log_id::<TypeConfig>(1, 1, index),
            payload,
        };
        Ok((entry, None))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_wakes_only_the_streams_of_the_nodes_whose_assignments_it_changed() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = StateMachineStore::open(dir.path()).unwrap();
        let mut busy = sm.watch_node("busy");
        let mut idle = sm.watch_node("idle");

        let meta = SnapshotMeta {
            last_log_id: Some(log_id::<TypeConfig>(1, 1, 5)),
            last_membership: StoredMembership::default(),
        };
        let body = SnapshotBody {
            state: two_nodes(),
            history: Vec::new(),
        };
        sm.install_snapshot(&meta, serde_json::to_vec(&body).unwrap())
            .await
            .unwrap();
        assert!(busy.has_changed().unwrap(), "a snapshot wakes every stream");
        assert!(idle.has_changed().unwrap(), "a snapshot wakes every stream");
        busy.mark_unchanged();
        idle.mark_unchanged();

        // Deleting "d" stops its allocation: "busy"'s assignments change, "idle"'s do not. And
        // the reconcile loop is woken: an engineer's change is planned for at once.
        let mut wakes = sm.watch_planner_wakes();
        let delete = Proposal::DeleteDeployment { name: "d".into() };
        sm.apply(futures::stream::iter([entry(6, delete)]))
            .await
            .unwrap();
        assert!(busy.has_changed().unwrap());
        assert_eq!(*busy.borrow_and_update(), 6, "the revision that touched it");
        assert!(
            !idle.has_changed().unwrap(),
            "an untouched node's stream sleeps"
        );
        assert!(wakes.has_changed().unwrap());
        wakes.mark_unchanged();

        // A commit that changes no node's assignments wakes nobody, though the revision moved.
        let mut revisions = sm.subscribe();
        revisions.mark_unchanged();
        let spec = DeploymentSpec {
            name: "e".into(),
            model: "m".into(),
            replicas: 1,
            ..Default::default()
        };
        let create = Proposal::ApplyDeployment {
            spec: Box::new(spec),
            expected_generation: None,
        };
        sm.apply(futures::stream::iter([entry(7, create)]))
            .await
            .unwrap();
        assert!(revisions.has_changed().unwrap());
        assert!(!busy.has_changed().unwrap() && !idle.has_changed().unwrap());
        assert!(wakes.has_changed().unwrap());
        wakes.mark_unchanged();

        // An entry that applies no command (a leader's blank entry) moves no revision and
        // tells no subscriber.
        revisions.mark_unchanged();
        let blank = Entry {
            log_id: log_id::<TypeConfig>(2, 1, 8),
            payload: EntryPayload::Blank,
        };
        sm.apply(futures::stream::iter([Ok((blank, None))]))
            .await
            .unwrap();
        assert!(!revisions.has_changed().unwrap());
        assert!(!wakes.has_changed().unwrap());

        // What agents send by the thousand moves the revision but leaves the loop its pause.
        let refused = Proposal::RefuseRegistration {
            node: "n".into(),
            reason: "r".into(),
            by: "b".into(),
        };
        sm.apply(futures::stream::iter([entry(9, refused)]))
            .await
            .unwrap();
        assert!(revisions.has_changed().unwrap());
        assert!(!wakes.has_changed().unwrap());

        // Channels whose streams are all gone are swept once the map has grown enough.
        let watched = |sm: &StateMachineStore| sm.inner.node_watches.lock().unwrap().by_node.len();
        for i in 2..NODE_WATCHES_SWEEP_MIN {
            drop(sm.watch_node(&format!("gone-{i}")));
        }
        assert_eq!(watched(&sm), NODE_WATCHES_SWEEP_MIN);
        let _again = sm.watch_node("again");
        assert_eq!(watched(&sm), 3, "busy, idle (still watched) and again");
    }
}
