//! The Raft log and vote, persisted in redb (`<data_dir>/raft-log.redb`).
//!
//! Owns durability of everything openraft asks to keep: log entries, the vote, the committed
//! log id and the purge point. The contract that makes acknowledged writes survive a crash
//! (invariant I2): `save_vote` returns only after the vote is fsynced, and `append` signals its
//! flush callback only after the redb transaction holding the entries has committed with
//! `Durability::Immediate` (an fsync). openraft batches entries that arrive while a flush is in
//! progress into the next `append`, so one fsync covers many client writes.
//!
//! redb is synchronous: every transaction runs on tokio's blocking pool so the Raft core's
//! async tasks never stall on the disk.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use redb::{Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Entry, LogId, TypeConfig, Vote};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_PURGED: &str = "last_purged";

/// Counters of durable appends, so operators and the benchmark can see how well appends are
/// batched (entries per fsync).
#[derive(Debug, Default)]
pub struct FlushStats {
    /// Durable (fsynced) append transactions.
    pub flushes: AtomicU64,
    /// Entries written by those transactions.
    pub entries: AtomicU64,
}

/// Cheap to clone: every clone shares one redb database.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    stats: Arc<FlushStats>,
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn encode<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(io_err)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    serde_json::from_slice(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// How long to wait for another holder of a database file to let go before giving up. A
/// scheduler restarted in the same process (tests) can race the previous instance's last
/// destructor; a second process on the same data dir waits this long and then gets a clear error.
const OPEN_LOCK_WAIT: Duration = Duration::from_secs(5);

/// Opens (or creates) a redb file, waiting a bounded time if another handle still holds it.
pub(crate) fn open_db(path: &Path) -> io::Result<Database> {
    let deadline = Instant::now() + OPEN_LOCK_WAIT;
    loop {
        match Database::create(path) {
            Ok(db) => return Ok(db),
            Err(DatabaseError::DatabaseAlreadyOpen) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(DatabaseError::DatabaseAlreadyOpen) => {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!(
                        "{} is in use by another process (is another sov-scheduler running on this data dir?)",
                        path.display()
                    ),
                ));
            }
            Err(e) => return Err(io_err(format!("{}: {e}", path.display()))),
        }
    }
}

impl LogStore {
    pub fn open(dir: &Path) -> io::Result<Self> {
        let db = open_db(&dir.join("raft-log.redb"))?;
        let txn = db.begin_write().map_err(io_err)?;
        txn.open_table(LOG).map_err(io_err)?;
        txn.open_table(META).map_err(io_err)?;
        txn.commit().map_err(io_err)?;
        Ok(Self {
            db: Arc::new(db),
            stats: Arc::default(),
        })
    }

    pub fn flush_stats(&self) -> Arc<FlushStats> {
        self.stats.clone()
    }

    /// A handle that tells when every clone of this store has been dropped (the file is closed).
    pub fn closed_probe(&self) -> std::sync::Weak<Database> {
        Arc::downgrade(&self.db)
    }

    /// Runs a blocking closure on tokio's blocking pool with a handle to the database.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(io_err)?
    }

    fn read_meta<T: DeserializeOwned>(db: &Database, key: &str) -> io::Result<Option<T>> {
        let txn = db.begin_read().map_err(io_err)?;
        let table = txn.open_table(META).map_err(io_err)?;
        table
            .get(key)
            .map_err(io_err)?
            .map(|v| decode(v.value()))
            .transpose()
    }

    /// Writes one meta key in its own transaction. `durable` decides whether the commit fsyncs.
    async fn write_meta<T: Serialize>(
        &self,
        key: &'static str,
        value: &T,
        durable: bool,
    ) -> io::Result<()> {
        let bytes = encode(value)?;
        self.blocking(move |db| {
            let mut txn = db.begin_write().map_err(io_err)?;
            if !durable {
                txn.set_durability(Durability::None).map_err(io_err)?;
            }
            txn.open_table(META)
                .map_err(io_err)?
                .insert(key, bytes.as_slice())
                .map_err(io_err)?;
            txn.commit().map_err(io_err)
        })
        .await
    }

    fn entries_in(db: &Database, range: (Bound<u64>, Bound<u64>)) -> io::Result<Vec<Entry>> {
        let txn = db.begin_read().map_err(io_err)?;
        let table = txn.open_table(LOG).map_err(io_err)?;
        let mut out = Vec::new();
        for item in table.range::<u64>(range).map_err(io_err)? {
            let (_, v) = item.map_err(io_err)?;
            out.push(decode(v.value())?);
        }
        Ok(out)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let range = (range.start_bound().cloned(), range.end_bound().cloned());
        self.blocking(move |db| Self::entries_in(db, range)).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.blocking(|db| Self::read_meta(db, KEY_VOTE)).await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        self.blocking(|db| {
            let last_purged_log_id: Option<LogId> = Self::read_meta(db, KEY_PURGED)?;
            let txn = db.begin_read().map_err(io_err)?;
            let table = txn.open_table(LOG).map_err(io_err)?;
            let last = table.last().map_err(io_err)?;
            let last_log_id = match last {
                Some((_, v)) => Some(decode::<Entry>(v.value())?.log_id),
                None => last_purged_log_id,
            };
            Ok(LogState {
                last_purged_log_id,
                last_log_id,
            })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        // Durable before returning: a node that forgets its vote after a crash could vote twice
        // in one term and elect two leaders.
        self.write_meta(KEY_VOTE, vote, true).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Not fsynced on its own: losing it only means the restarted node re-learns the commit
        // index from the leader. It rides along with the next durable append.
        self.write_meta(KEY_COMMITTED, &committed, false).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self
            .blocking(|db| Self::read_meta::<Option<LogId>>(db, KEY_COMMITTED))
            .await?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let encoded: Vec<(u64, Vec<u8>)> = entries
            .into_iter()
            .map(|e| Ok((e.log_id.index, encode(&e)?)))
            .collect::<io::Result<_>>()?;
        let entries_count = encoded.len() as u64;
        let result = self
            .blocking(move |db| {
                let txn = db.begin_write().map_err(io_err)?;
                {
                    let mut table = txn.open_table(LOG).map_err(io_err)?;
                    for (index, bytes) in &encoded {
                        table.insert(*index, bytes.as_slice()).map_err(io_err)?;
                    }
                }
                // Default durability is Immediate: commit returns after fsync.
                txn.commit().map_err(io_err)
            })
            .await;
        if result.is_ok() {
            self.stats.flushes.fetch_add(1, Ordering::Relaxed);
            self.stats
                .entries
                .fetch_add(entries_count, Ordering::Relaxed);
        }
        // Only now is the data on disk; openraft may acknowledge the entries after this.
        callback.io_completed(
            result
                .as_ref()
                .map(|_| ())
                .map_err(|e| io::Error::new(e.kind(), e.to_string())),
        );
        result
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |id| id.index + 1);
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(io_err)?;
            txn.open_table(LOG)
                .map_err(io_err)?
                .retain_in(from.., |_, _| false)
                .map_err(io_err)?;
            txn.commit().map_err(io_err)
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let bytes = encode(&Some(log_id))?;
        let upto = log_id.index;
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(io_err)?;
            // The purge point is written first in the same transaction, so a reader never sees
            // the entries gone without knowing where the log now starts.
            txn.open_table(META)
                .map_err(io_err)?
                .insert(KEY_PURGED, bytes.as_slice())
                .map_err(io_err)?;
            txn.open_table(LOG)
                .map_err(io_err)?
                .retain_in(..=upto, |_, _| false)
                .map_err(io_err)?;
            txn.commit().map_err(io_err)
        })
        .await
    }
}
