//! The state machine: applies committed entries to [`State`] and keeps snapshots in redb
//! (`<data_dir>/raft-state.redb`).
//!
//! Owns: the in-memory [`State`] every read is served from, the last applied log id and
//! membership, and the current snapshot. Durability model: the log is the source of truth; the
//! state machine is persisted as snapshots (built by openraft every `snapshot_logs_since_last`
//! entries and on demand). On start the latest snapshot is loaded and openraft re-applies the
//! committed entries after it, so a restart lands on exactly the pre-crash state.
//!
//! Applying is delegated to the pure [`crate::state::apply`]; this module only moves bytes.

use std::io;
use std::path::Path;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use redb::{Database, ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{CommandResponse, LogId, Snapshot, SnapshotMeta, StoredMembership, TypeConfig};
use crate::state::{self, Outcome, State};

const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");
const KEY_META: &str = "meta";
const KEY_DATA: &str = "data";

/// What the state machine has applied. Readers take the lock briefly and never across an await.
#[derive(Debug, Default)]
pub struct Applied {
    pub last_applied: Option<LogId>,
    pub last_membership: StoredMembership,
    pub state: State,
}

/// Snapshot payload: the state at `meta.last_log_id`. The membership travels in the meta.
#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    state: State,
}

struct Inner {
    applied: RwLock<Applied>,
    db: Database,
    /// The state revision after the last apply, for watchers (assignment streams) that must
    /// not poll.
    revision: tokio::sync::watch::Sender<u64>,
}

/// Cheap to clone; all clones share the same state and database.
#[derive(Clone)]
pub struct StateMachineStore {
    inner: Arc<Inner>,
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl StateMachineStore {
    /// Opens the snapshot database and restores the state from the latest snapshot, if any.
    pub fn open(dir: &Path) -> io::Result<Self> {
        let db = super::log_store::open_db(&dir.join("raft-state.redb"))?;
        let txn = db.begin_write().map_err(io_err)?;
        txn.open_table(SNAPSHOT).map_err(io_err)?;
        txn.commit().map_err(io_err)?;
        let mut applied = Applied::default();
        if let Some(snapshot) = read_snapshot(&db)? {
            let body: SnapshotBody = decode_body(&snapshot.snapshot)?;
            applied = Applied {
                last_applied: snapshot.meta.last_log_id,
                last_membership: snapshot.meta.last_membership.clone(),
                state: body.state,
            };
        }
        let (revision, _) = tokio::sync::watch::channel(applied.state.revision);
        Ok(Self {
            inner: Arc::new(Inner {
                applied: RwLock::new(applied),
                db,
                revision,
            }),
        })
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

    fn publish_revision(&self) {
        let revision = self.read().state.revision;
        self.inner.revision.send_if_modified(|r| {
            let moved = *r != revision;
            *r = revision;
            moved
        });
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
            };
            (meta, body)
        };
        let this = self.clone();
        let m = meta.clone();
        let data = tokio::task::spawn_blocking(move || {
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
        while let Some((entry, responder)) = entries.try_next().await? {
            let index = entry.log_id.index;
            let outcome = {
                let mut applied = self
                    .inner
                    .applied
                    .write()
                    .unwrap_or_else(|p| p.into_inner());
                applied.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => Outcome::Noop,
                    EntryPayload::Normal(ref command) => {
                        state::apply(&mut applied.state, index, command)
                    }
                    EntryPayload::Membership(ref membership) => {
                        applied.last_membership =
                            StoredMembership::new(Some(entry.log_id), membership.clone());
                        Outcome::Noop
                    }
                }
            };
            if let Some(responder) = responder {
                responder.send(CommandResponse { index, outcome });
            }
        }
        self.publish_revision();
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
        let body = decode_body(&snapshot)?;
        let this = self.clone();
        let m = meta.clone();
        tokio::task::spawn_blocking(move || this.write_snapshot(&m, &snapshot))
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
        self.publish_revision();
        tracing::info!(last_log_id = ?meta.last_log_id, "installed snapshot from leader");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || read_snapshot(&this.inner.db))
            .await
            .map_err(io_err)?
    }
}
