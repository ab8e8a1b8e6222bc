//! The placement history on disk (`<data_dir>/history.redb`): every event the state machine
//! applied, the Merkle tree's nodes (for proofs), indexes for queries, and signed checkpoints.
//!
//! Owns the bytes; what they mean is `crate::history` (events, the head in the replicated state)
//! and `sov_proto::merkle` (the tree). Durability model: the Raft log and the snapshots are the
//! source of truth. Events are written after every apply without an fsync (cheap), and made
//! durable (one fsync) before a snapshot that counts them is written. On start the store is
//! cut back to the size the snapshot's state records, and re-applying the log after the
//! snapshot writes the rest again, byte for byte. A follower that installs a snapshot receives
//! the events with it.
//!
//! Writing happens on a thread of its own (the writer), in the order batches were handed to it
//! by [`HistoryStore::append`], so the state machine answers and goes on applying while a
//! batch is stored (20,000 events of a policy change take 40-200 ms). Every read waits first
//! for the writer to store what was handed to it before the read began ([`HistoryStore::settle`]),
//! so a read after an acknowledged write sees that write's events, as when applies stored them
//! themselves. The queue holds at most [`WRITE_QUEUE_MAX`] batches: an apply that would queue
//! more waits. A failed write stops the writer; the next append and every read then fail with
//! its error (the state machine's apply fails, which stops Raft on this scheduler).
//!
//! Tables:
//! - `events`: seq -> the event's canonical JSON (the leaf's bytes);
//! - `nodes`: level << 56 | index -> hash of that perfect subtree, for levels 4 and up (a
//!   proof needs O(log n) reads; a node below level 4 is recomputed from its at most 8 events,
//!   which saves most of the writes: a stored node per 16 events instead of two per event);
//! - `postings`: `tag | name | 0x00 | first seq` -> the seqs of one append batch's events with
//!   that name (by deployment, node, country, rule and kind), as u32 offsets from the first:
//!   a batch of 40,000 events (a policy change stopping 20,000 replicas) writes one key per
//!   distinct name instead of one per event and name;
//! - `checkpoints`: tree size -> a signed checkpoint (JSON);
//! - `meta`: "size".
//!
//! Event times and policy versions never decrease along the history (`history::seal`), so a
//! time range or a policy version is a range of seqs, found by bisecting `events`: no index.

use std::io;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition,
};
use serde::{Deserialize, Serialize};
use sov_proto::merkle::{Frontier, Hash, NodeSource};

use crate::history::{Event, Recorded};

const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const NODES: TableDefinition<u64, &[u8]> = TableDefinition::new("nodes");
const POSTINGS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("postings");
const CHECKPOINTS: TableDefinition<u64, &[u8]> = TableDefinition::new("checkpoints");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const KEY_SIZE: &str = "size";

/// Index tags.
const BY_DEPLOYMENT: u8 = b'd';
const BY_NODE: u8 = b'n';
const BY_COUNTRY: u8 = b'c';
const BY_RULE: u8 = b'r';
const BY_KIND: u8 = b'k';

/// Tree nodes below this level are not stored but recomputed from the events they cover.
const NODE_LEVEL_MIN: u32 = 4;
/// Events per batch of postings when a snapshot's history replaces the store.
const REPLACE_BATCH: usize = 50_000;
/// Recomputed nodes a reader keeps (an export asks for the same low nodes over and over).
const NODE_CACHE_MAX: usize = 4_096;
/// Batches handed to the writer and not yet stored, at most; an append beyond waits.
pub const WRITE_QUEUE_MAX: usize = 8;
/// How long a read waits for the writer to store what it needs before it fails.
const SETTLE_MAX: Duration = Duration::from_secs(120);
/// A batch stored in at least this long is logged (`slow history store`).
const SLOW_STORE: Duration = Duration::from_millis(100);

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn node_key(level: u32, index: u64) -> u64 {
    (u64::from(level) << 56) | index
}

/// `tag | name | 0x00`: the prefix of a name index (names never contain NUL: validated).
fn name_prefix(tag: u8, name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(name.len() + 10);
    key.push(tag);
    key.extend_from_slice(name.as_bytes());
    key.push(0);
    key
}

fn with_seq(mut prefix: Vec<u8>, seq: u64) -> Vec<u8> {
    prefix.extend_from_slice(&seq.to_be_bytes());
    prefix
}

/// Every name an event is found by, as posting-key prefixes.
fn index_names(e: &Event) -> Vec<Vec<u8>> {
    let w = &e.what;
    let mut names = vec![name_prefix(BY_KIND, w.kind())];
    if let Some(d) = w.deployment() {
        names.push(name_prefix(BY_DEPLOYMENT, d));
    }
    if let Some(n) = w.node() {
        names.push(name_prefix(BY_NODE, n));
    }
    if let crate::history::What::AllocationMigrated { to_node, .. } = w {
        names.push(name_prefix(BY_NODE, to_node));
    }
    if let Some(c) = w.country() {
        names.push(name_prefix(BY_COUNTRY, c));
    }
    for r in w.rules() {
        names.push(name_prefix(BY_RULE, r));
    }
    names
}

/// The seqs of a posting (key `prefix | first seq`, value u32 offsets).
fn posting_seqs(key: &[u8], value: &[u8]) -> io::Result<impl Iterator<Item = u64>> {
    let first = key_seq(key)?;
    if !value.len().is_multiple_of(4) {
        return Err(io_err("history posting of a length not a multiple of 4"));
    }
    Ok(value
        .chunks_exact(4)
        .map(move |c| first + u64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]]))))
}

/// Writes the postings of `events` (consecutive, after everything stored): one key per name.
fn write_postings(
    postings: &mut redb::Table<&[u8], &[u8]>,
    events: impl Iterator<Item = (u64, Vec<Vec<u8>>)>,
) -> io::Result<()> {
    let mut batch: std::collections::BTreeMap<Vec<u8>, (u64, Vec<u8>)> = Default::default();
    for (seq, names) in events {
        for name in names {
            let (first, offsets) = batch.entry(name).or_insert_with(|| (seq, Vec::new()));
            let offset = u32::try_from(seq - *first)
                .map_err(|_| io_err("more than 2^32 events in one history batch"))?;
            offsets.extend_from_slice(&offset.to_le_bytes());
        }
    }
    // In key order: each B-tree page is visited once per batch.
    for (name, (first, offsets)) in batch {
        postings
            .insert(with_seq(name, first).as_slice(), offsets.as_slice())
            .map_err(io_err)?;
    }
    Ok(())
}

/// What a query asks for; empty fields do not filter.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub deployment: String,
    pub node: String,
    pub country: String,
    pub policy_version: u64,
    pub rule: String,
    pub kind: String,
    /// Leader time: since inclusive, until exclusive; 0 = unbounded.
    pub since_ms: i64,
    pub until_ms: i64,
}

impl Filter {
    fn matches(&self, e: &Event) -> bool {
        let w = &e.what;
        let migrated_to = match w {
            crate::history::What::AllocationMigrated { to_node, .. } => Some(to_node.as_str()),
            _ => None,
        };
        (self.deployment.is_empty() || w.deployment() == Some(&self.deployment))
            && (self.node.is_empty()
                || w.node() == Some(&self.node)
                || migrated_to == Some(&self.node))
            && (self.country.is_empty() || w.country() == Some(&self.country))
            && (self.policy_version == 0 || e.policy_version == self.policy_version)
            && (self.rule.is_empty() || w.rules().contains(&self.rule))
            && (self.kind.is_empty() || w.kind() == self.kind)
            && (self.since_ms == 0 || e.at_ms >= self.since_ms)
            && (self.until_ms == 0 || e.at_ms < self.until_ms)
    }

    /// The index to scan (the most selective name filter given), as its key prefix; `None`
    /// when no name filters, and the events themselves are scanned.
    fn index_prefix(&self) -> Option<Vec<u8>> {
        if !self.deployment.is_empty() {
            Some(name_prefix(BY_DEPLOYMENT, &self.deployment))
        } else if !self.node.is_empty() {
            Some(name_prefix(BY_NODE, &self.node))
        } else if !self.rule.is_empty() {
            Some(name_prefix(BY_RULE, &self.rule))
        } else if !self.country.is_empty() {
            Some(name_prefix(BY_COUNTRY, &self.country))
        } else if !self.kind.is_empty() {
            Some(name_prefix(BY_KIND, &self.kind))
        } else {
            None
        }
    }
}

/// The seq of a posting key (its last 8 bytes).
fn key_seq(key: &[u8]) -> io::Result<u64> {
    let tail = key
        .len()
        .checked_sub(8)
        .map(|at| &key[at..])
        .ok_or_else(|| io_err("history index key too short"))?;
    Ok(u64::from_be_bytes(tail.try_into().map_err(io_err)?))
}

/// A signed checkpoint as stored and served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCheckpoint {
    pub checkpoint: sov_proto::evidence::Checkpoint,
    #[serde(with = "hex_vec")]
    pub signature: Vec<u8>,
    pub key_id: String,
}

mod hex_vec {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        hex::decode(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// Cheap to clone: every clone shares one redb database and one writer.
#[derive(Clone)]
pub struct HistoryStore {
    db: Arc<Database>,
    progress: Arc<Progress>,
    writer: Arc<Writer>,
}

/// How far the writer got, as event counts: handed to it (`queued`) and stored (`stored`).
#[derive(Default)]
struct Progress {
    counts: Mutex<Counts>,
    changed: Condvar,
}

#[derive(Debug, Default, Clone)]
struct Counts {
    queued: u64,
    stored: u64,
    /// The error that stopped the writer.
    failed: Option<String>,
}

impl Counts {
    /// The writer's error, once it has stopped on one.
    fn check(&self) -> io::Result<()> {
        match &self.failed {
            Some(failed) => Err(io_err(format!(
                "the history store's writer failed: {failed}"
            ))),
            None => Ok(()),
        }
    }
}

impl Progress {
    fn lock(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets both counts (nothing is queued: the caller settled first).
    fn reset(&self, size: u64) {
        let mut counts = self.lock();
        counts.queued = size;
        counts.stored = size;
        self.changed.notify_all();
    }
}

/// The writer thread's queue. Dropped with the last clone of the store: the queue closes, the
/// writer stores what is left and ends, and the drop waits for it (so the database file is
/// closed once every clone is gone, as a restart in the same process needs).
struct Writer {
    tx: Option<mpsc::SyncSender<Vec<Recorded>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The writer: stores each batch in order, then tells waiting readers.
fn write_loop(db: Arc<Database>, progress: Arc<Progress>, rx: mpsc::Receiver<Vec<Recorded>>) {
    for batch in rx {
        let started = Instant::now();
        let result = store_batch(&db, &batch);
        let took = started.elapsed();
        if took >= SLOW_STORE {
            tracing::info!(
                events = batch.len(),
                store_ms = took.as_millis() as u64,
                "slow history store"
            );
        }
        let mut counts = progress.lock();
        match result {
            Ok(()) => counts.stored = batch.last().map_or(counts.stored, |r| r.event.seq + 1),
            Err(e) => {
                tracing::error!(error = %e, "history store: writing failed; this scheduler stops applying");
                counts.failed = Some(e.to_string());
                progress.changed.notify_all();
                return;
            }
        }
        progress.changed.notify_all();
    }
}

/// Writes one batch (consecutive events that continue the store) in one transaction, without
/// an fsync.
fn store_batch(db: &Database, recorded: &[Recorded]) -> io::Result<()> {
    if recorded.is_empty() {
        return Ok(());
    }
    let mut txn = db.begin_write().map_err(io_err)?;
    txn.set_durability(Durability::None).map_err(io_err)?;
    {
        let mut events = txn.open_table(EVENTS).map_err(io_err)?;
        let mut nodes = txn.open_table(NODES).map_err(io_err)?;
        let mut postings = txn.open_table(POSTINGS).map_err(io_err)?;
        let mut meta = txn.open_table(META).map_err(io_err)?;
        let size = meta.get(KEY_SIZE).map_err(io_err)?.map_or(0, |v| v.value());
        if recorded[0].event.seq != size {
            return Err(io_err(format!(
                "history store holds {size} events but the next to store is number {}; the store and the state disagree",
                recorded[0].event.seq
            )));
        }
        for r in recorded {
            events
                .insert(r.event.seq, r.json.as_bytes())
                .map_err(io_err)?;
            for (level, i, hash) in r.nodes.iter().filter(|n| n.0 >= NODE_LEVEL_MIN) {
                nodes
                    .insert(node_key(*level, *i), hash.as_slice())
                    .map_err(io_err)?;
            }
        }
        write_postings(
            &mut postings,
            recorded
                .iter()
                .map(|r| (r.event.seq, index_names(&r.event))),
        )?;
        let last = recorded[recorded.len() - 1].event.seq;
        meta.insert(KEY_SIZE, last + 1).map_err(io_err)?;
    }
    txn.commit().map_err(io_err)
}

/// Events of a query, each with its stored JSON, and the seq to continue from when there may
/// be more.
pub struct Page {
    pub events: Vec<(Event, String)>,
    pub next: Option<u64>,
}

/// A read transaction that answers proofs (`NodeSource`).
pub struct Reader {
    txn: ReadTransaction,
    /// Nodes below [`NODE_LEVEL_MIN`] already recomputed.
    low: std::cell::RefCell<std::collections::HashMap<(u32, u64), Hash>>,
}

impl NodeSource for Reader {
    fn node(&self, level: u32, index: u64) -> Option<Hash> {
        if level >= NODE_LEVEL_MIN {
            let table = self.txn.open_table(NODES).ok()?;
            let value = table.get(node_key(level, index)).ok()??;
            return value.value().try_into().ok();
        }
        if let Some(h) = self.low.borrow().get(&(level, index)) {
            return Some(*h);
        }
        // The perfect subtree of 2^level leaves from index << level: hash its events.
        let events = self.txn.open_table(EVENTS).ok()?;
        let (first, count) = (index << level, 1u64 << level);
        let mut frontier = Frontier::default();
        for entry in events.range(first..first + count).ok()? {
            let (_, json) = entry.ok()?;
            frontier.push(sov_proto::merkle::leaf_hash(json.value()));
        }
        if frontier.size != count {
            return None;
        }
        let hash = frontier.root();
        let mut low = self.low.borrow_mut();
        if low.len() >= NODE_CACHE_MAX {
            low.clear();
        }
        low.insert((level, index), hash);
        Some(hash)
    }
}

impl Reader {
    /// Events stored, as of this reader's transaction.
    pub fn size(&self) -> io::Result<u64> {
        let meta = self.txn.open_table(META).map_err(io_err)?;
        Ok(meta.get(KEY_SIZE).map_err(io_err)?.map_or(0, |v| v.value()))
    }

    pub fn event(&self, seq: u64) -> io::Result<Option<String>> {
        let table = self.txn.open_table(EVENTS).map_err(io_err)?;
        Ok(table
            .get(seq)
            .map_err(io_err)?
            .map(|v| String::from_utf8_lossy(v.value()).into_owned()))
    }

    /// The first seq in `lo..hi` whose event satisfies `past` (which must hold for every event
    /// after one it holds for), or `hi`.
    fn bisect(
        events: &redb::ReadOnlyTable<u64, &[u8]>,
        mut lo: u64,
        mut hi: u64,
        past: impl Fn(&Event) -> bool,
    ) -> io::Result<u64> {
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let json = events
                .get(mid)
                .map_err(io_err)?
                .ok_or_else(|| io_err(format!("history event {mid} is missing")))?;
            let event: Event = serde_json::from_slice(json.value()).map_err(io_err)?;
            if past(&event) {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        Ok(lo)
    }

    /// The seqs that the time range and policy version of `filter` allow: event times and
    /// policy versions never decrease along the history, so they are one range.
    fn seq_range(
        &self,
        events: &redb::ReadOnlyTable<u64, &[u8]>,
        filter: &Filter,
    ) -> io::Result<std::ops::Range<u64>> {
        let size = self.size()?;
        let (mut lo, mut hi) = (0, size);
        if filter.since_ms != 0 {
            lo = Self::bisect(events, lo, hi, |e| e.at_ms >= filter.since_ms)?;
        }
        if filter.until_ms != 0 {
            hi = Self::bisect(events, lo, hi, |e| e.at_ms >= filter.until_ms)?;
        }
        if filter.policy_version != 0 {
            let v = filter.policy_version;
            lo = Self::bisect(events, lo, hi, |e| e.policy_version >= v)?;
            hi = Self::bisect(events, lo, hi, |e| e.policy_version > v)?;
        }
        Ok(lo..hi)
    }

    /// Events matching `filter` with seq ≥ `from`, at most `limit`, oldest first.
    pub fn query(&self, filter: &Filter, from: u64, limit: usize) -> io::Result<Page> {
        let events = self.txn.open_table(EVENTS).map_err(io_err)?;
        let range = self.seq_range(&events, filter)?;
        let (lo, hi) = (range.start.max(from), range.end);
        let mut out = Vec::new();
        let mut take = |seq: u64, json: &[u8]| -> io::Result<Option<Page>> {
            let json = String::from_utf8_lossy(json).into_owned();
            let event: Event = serde_json::from_str(&json).map_err(io_err)?;
            if !filter.matches(&event) {
                return Ok(None);
            }
            if out.len() == limit {
                return Ok(Some(Page {
                    events: std::mem::take(&mut out),
                    next: Some(seq),
                }));
            }
            out.push((event, json));
            Ok(None)
        };
        if lo < hi {
            match filter.index_prefix() {
                Some(prefix) => {
                    let postings = self.txn.open_table(POSTINGS).map_err(io_err)?;
                    // From the posting that holds `lo` (the last one starting at or before it),
                    // to the last one starting before `hi`.
                    let (at_lo, end) = (with_seq(prefix.clone(), lo), with_seq(prefix.clone(), hi));
                    let start = postings
                        .range(with_seq(prefix, 0).as_slice()..=at_lo.as_slice())
                        .map_err(io_err)?
                        .next_back()
                        .transpose()
                        .map_err(io_err)?
                        .map_or(at_lo, |(k, _)| k.value().to_vec());
                    for entry in postings
                        .range(start.as_slice()..end.as_slice())
                        .map_err(io_err)?
                    {
                        let (key, value) = entry.map_err(io_err)?;
                        for seq in posting_seqs(key.value(), value.value())? {
                            if seq < lo {
                                continue;
                            }
                            if seq >= hi {
                                break;
                            }
                            let Some(json) = events.get(seq).map_err(io_err)? else {
                                continue;
                            };
                            if let Some(page) = take(seq, json.value())? {
                                return Ok(page);
                            }
                        }
                    }
                }
                None => {
                    for entry in events.range(lo..hi).map_err(io_err)? {
                        let (seq, json) = entry.map_err(io_err)?;
                        if let Some(page) = take(seq.value(), json.value())? {
                            return Ok(page);
                        }
                    }
                }
            }
        }
        Ok(Page {
            events: out,
            next: None,
        })
    }
}

impl HistoryStore {
    pub fn open(dir: &Path) -> io::Result<Self> {
        let db = super::log_store::open_db(&dir.join("history.redb"))?;
        let txn = db.begin_write().map_err(io_err)?;
        txn.open_table(EVENTS).map_err(io_err)?;
        txn.open_table(NODES).map_err(io_err)?;
        txn.open_table(POSTINGS).map_err(io_err)?;
        txn.open_table(CHECKPOINTS).map_err(io_err)?;
        txn.open_table(META).map_err(io_err)?;
        txn.commit().map_err(io_err)?;
        let db = Arc::new(db);
        let progress = Arc::new(Progress::default());
        let (tx, rx) = mpsc::sync_channel(WRITE_QUEUE_MAX);
        let thread = std::thread::Builder::new()
            .name("history-writer".into())
            .spawn({
                let (db, progress) = (db.clone(), progress.clone());
                move || write_loop(db, progress, rx)
            })?;
        let store = HistoryStore {
            db,
            progress,
            writer: Arc::new(Writer {
                tx: Some(tx),
                thread: Some(thread),
            }),
        };
        let size = store.stored_size()?;
        store.progress.reset(size);
        Ok(store)
    }

    /// A handle that tells when every clone has been dropped (the file is closed).
    pub fn closed_probe(&self) -> std::sync::Weak<Database> {
        Arc::downgrade(&self.db)
    }

    /// A read transaction, once everything appended before the call is stored.
    pub fn reader(&self) -> io::Result<Reader> {
        self.settle()?;
        Ok(Reader {
            txn: self.db.begin_read().map_err(io_err)?,
            low: Default::default(),
        })
    }

    /// Events stored, once everything appended before the call is stored.
    pub fn size(&self) -> io::Result<u64> {
        self.settle()?;
        self.stored_size()
    }

    fn stored_size(&self) -> io::Result<u64> {
        let txn = self.db.begin_read().map_err(io_err)?;
        let meta = txn.open_table(META).map_err(io_err)?;
        Ok(meta.get(KEY_SIZE).map_err(io_err)?.map_or(0, |v| v.value()))
    }

    /// Events appended but not stored yet (the writer's lag).
    pub fn lag(&self) -> u64 {
        let counts = self.progress.lock();
        counts.queued - counts.stored
    }

    /// Waits until everything appended before the call is stored.
    pub fn settle(&self) -> io::Result<()> {
        let queued = self.progress.lock().queued;
        self.wait_stored(queued)
    }

    /// Waits until the store holds at least `size` events (at most [`SETTLE_MAX`]; the events
    /// must have been appended or be about to be).
    pub fn wait_stored(&self, size: u64) -> io::Result<()> {
        let deadline = Instant::now() + SETTLE_MAX;
        let mut counts = self.progress.lock();
        loop {
            counts.check()?;
            if counts.stored >= size {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(io_err(format!(
                    "the history store holds {} events; waited {} s for it to hold {size}",
                    counts.stored,
                    SETTLE_MAX.as_secs()
                )));
            }
            counts = self
                .progress
                .changed
                .wait_timeout(counts, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Hands what applies recorded (in order, continuing what was appended before) to the
    /// writer, which stores it without an fsync; returns at once unless the writer's queue is
    /// full. A batch that does not continue the store is refused here, and nothing changes.
    pub fn append(&self, recorded: Vec<Recorded>) -> io::Result<()> {
        let (Some(first), Some(last)) = (recorded.first(), recorded.last()) else {
            return Ok(());
        };
        let (first, next) = (first.event.seq, last.event.seq + 1);
        {
            let mut counts = self.progress.lock();
            counts.check()?;
            if first != counts.queued {
                return Err(io_err(format!(
                    "history store holds {} events but the next to store is number {first}; the store and the state disagree",
                    counts.queued
                )));
            }
            counts.queued = next;
        }
        let tx = self
            .writer
            .tx
            .as_ref()
            .expect("the writer's queue lives as long as the store");
        tx.send(recorded)
            .map_err(|_| io_err("the history store's writer has stopped"))
    }

    /// Makes everything appended so far durable (one fsync).
    pub fn flush(&self) -> io::Result<()> {
        self.settle()?;
        let txn = self.db.begin_write().map_err(io_err)?;
        txn.commit().map_err(io_err)
    }

    /// Cuts the store back to its first `size` events (what the state machine's snapshot
    /// counts: the rest is written again as the log is re-applied).
    pub fn truncate(&self, size: u64) -> io::Result<()> {
        let stored = self.size()?;
        if stored <= size {
            return Ok(());
        }
        self.truncate_stored(size, stored)?;
        self.progress.reset(size);
        Ok(())
    }

    fn truncate_stored(&self, size: u64, stored: u64) -> io::Result<()> {
        let txn = self.db.begin_write().map_err(io_err)?;
        {
            let mut events = txn.open_table(EVENTS).map_err(io_err)?;
            let mut nodes = txn.open_table(NODES).map_err(io_err)?;
            let mut postings = txn.open_table(POSTINGS).map_err(io_err)?;
            let mut meta = txn.open_table(META).map_err(io_err)?;
            let mut names = std::collections::BTreeSet::new();
            for seq in size..stored {
                let Some(json) = events.remove(seq).map_err(io_err)? else {
                    continue;
                };
                let event: Event = serde_json::from_slice(json.value()).map_err(io_err)?;
                drop(json);
                names.extend(index_names(&event));
            }
            // Per name: postings that start at or past `size` go; the one before is cut short.
            for name in names {
                let cut = with_seq(name.clone(), size);
                let gone: Vec<Vec<u8>> = postings
                    .range(cut.as_slice()..with_seq(name.clone(), u64::MAX).as_slice())
                    .map_err(io_err)?
                    .map(|e| e.map(|(k, _)| k.value().to_vec()).map_err(io_err))
                    .collect::<io::Result<_>>()?;
                for key in gone {
                    postings.remove(key.as_slice()).map_err(io_err)?;
                }
                let before = postings
                    .range(with_seq(name.clone(), 0).as_slice()..cut.as_slice())
                    .map_err(io_err)?
                    .next_back()
                    .transpose()
                    .map_err(io_err)?
                    .map(|(k, v)| (k.value().to_vec(), v.value().to_vec()));
                if let Some((key, value)) = before {
                    let kept: Vec<u8> = posting_seqs(&key, &value)?
                        .zip(value.chunks_exact(4))
                        .filter(|(seq, _)| *seq < size)
                        .flat_map(|(_, bytes)| bytes.to_vec())
                        .collect();
                    if kept.len() < value.len() {
                        postings
                            .insert(key.as_slice(), kept.as_slice())
                            .map_err(io_err)?;
                    }
                }
            }
            // Nodes that cover any leaf at or past `size` are not part of the shorter tree.
            let mut level = NODE_LEVEL_MIN;
            while (1u64 << level) <= stored {
                let first = size >> level;
                let last = stored >> level;
                for i in first..=last {
                    nodes.remove(node_key(level, i)).map_err(io_err)?;
                }
                level += 1;
            }
            meta.insert(KEY_SIZE, size).map_err(io_err)?;
        }
        txn.commit().map_err(io_err)
    }

    /// The first `size` events' JSON, for a snapshot sent to a follower.
    pub fn events_up_to(&self, size: u64) -> io::Result<Vec<String>> {
        self.wait_stored(size)?;
        let txn = self.db.begin_read().map_err(io_err)?;
        let events = txn.open_table(EVENTS).map_err(io_err)?;
        let mut out = Vec::with_capacity(size as usize);
        for entry in events.range(0..size).map_err(io_err)? {
            let (_, v) = entry.map_err(io_err)?;
            out.push(String::from_utf8_lossy(v.value()).into_owned());
        }
        Ok(out)
    }

    /// Replaces the whole store with `events` (a snapshot installed from the leader): the tree
    /// and the indexes are rebuilt from them. Returns the root they make.
    pub fn replace_all(&self, events: &[String]) -> io::Result<Hash> {
        self.settle()?;
        let root = self.replace_stored(events)?;
        self.progress.reset(events.len() as u64);
        Ok(root)
    }

    fn replace_stored(&self, events: &[String]) -> io::Result<Hash> {
        let txn = self.db.begin_write().map_err(io_err)?;
        let mut frontier = Frontier::default();
        {
            for table in [EVENTS, NODES, CHECKPOINTS] {
                txn.delete_table(table).map_err(io_err)?;
            }
            txn.delete_table(POSTINGS).map_err(io_err)?;
            let mut table = txn.open_table(EVENTS).map_err(io_err)?;
            let mut nodes = txn.open_table(NODES).map_err(io_err)?;
            let mut postings = txn.open_table(POSTINGS).map_err(io_err)?;
            let mut names = Vec::new();
            let mut meta = txn.open_table(META).map_err(io_err)?;
            txn.open_table(CHECKPOINTS).map_err(io_err)?;
            for (seq, json) in events.iter().enumerate() {
                let event: Event = serde_json::from_str(json).map_err(io_err)?;
                if event.seq != seq as u64 {
                    return Err(io_err(format!(
                        "snapshot history event {seq} says it is number {}",
                        event.seq
                    )));
                }
                table.insert(event.seq, json.as_bytes()).map_err(io_err)?;
                for (level, i, hash) in frontier
                    .push(sov_proto::merkle::leaf_hash(json.as_bytes()))
                    .into_iter()
                    .filter(|n| n.0 >= NODE_LEVEL_MIN)
                {
                    nodes
                        .insert(node_key(level, i), hash.as_slice())
                        .map_err(io_err)?;
                }
                names.push((event.seq, index_names(&event)));
                if names.len() == REPLACE_BATCH {
                    write_postings(&mut postings, names.drain(..))?;
                }
            }
            write_postings(&mut postings, names.drain(..))?;
            meta.insert(KEY_SIZE, events.len() as u64).map_err(io_err)?;
        }
        txn.commit().map_err(io_err)?;
        Ok(frontier.root())
    }

    pub fn put_checkpoint(&self, cp: &StoredCheckpoint) -> io::Result<()> {
        let txn = self.db.begin_write().map_err(io_err)?;
        {
            let mut table = txn.open_table(CHECKPOINTS).map_err(io_err)?;
            let json = serde_json::to_vec(cp).map_err(io_err)?;
            table
                .insert(cp.checkpoint.tree_size, json.as_slice())
                .map_err(io_err)?;
        }
        txn.commit().map_err(io_err)
    }

    /// The checkpoint of the largest tree size stored.
    pub fn latest_checkpoint(&self) -> io::Result<Option<StoredCheckpoint>> {
        let txn = self.db.begin_read().map_err(io_err)?;
        let table = txn.open_table(CHECKPOINTS).map_err(io_err)?;
        let Some(last) = table.last().map_err(io_err)? else {
            return Ok(None);
        };
        serde_json::from_slice(last.1.value())
            .map(Some)
            .map_err(io_err)
    }
}

#[cfg(test)]
mod tests {
    //! The store against the pure core: what `seal` produced is stored, found by every index,
    //! proven against the head's root, cut back and replaced without leaving stale nodes.

    use sov_proto::merkle::{self, Frontier};

    use super::*;
    use crate::history::{AllocationRef, Event, Facts, Recorded, What};

    /// `n` more events, as `seal` would record them after `frontier`.
    fn events(frontier: &mut Frontier, n: u64) -> Vec<Recorded> {
        (0..n)
            .map(|_| {
                let seq = frontier.size;
                let what = match seq % 3 {
                    0 => What::AllocationPlaced {
                        allocation: format!("a{seq}"),
                        deployment: format!("d{}", seq % 5),
                        node: format!("n{}", seq % 7),
                        facts: Facts {
                            country: if seq.is_multiple_of(2) { "FR" } else { "US" }.into(),
                            ..Default::default()
                        }
                        .into(),
                        eligible: "test".into(),
                        replaces: String::new(),
                    },
                    1 => What::StopOrdered {
                        allocation: AllocationRef {
                            allocation: format!("a{seq}"),
                            deployment: format!("d{}", seq % 5),
                            node: format!("n{}", seq % 7),
                        },
                        reason: "policy".into(),
                        rules: vec!["directive".into()],
                    },
                    _ => What::NodeDown {
                        node: format!("n{}", seq % 7),
                    },
                };
                let event = Event {
                    seq,
                    raft_index: seq + 10,
                    at_ms: 1_000 * seq as i64,
                    policy_version: 1 + seq / 10,
                    what,
                };
                let json = serde_json::to_string(&event).unwrap();
                let nodes = frontier.push(merkle::leaf_hash(json.as_bytes()));
                Recorded { event, json, nodes }
            })
            .collect()
    }

    fn seqs(page: &Page) -> Vec<u64> {
        page.events.iter().map(|(e, _)| e.seq).collect()
    }

    #[test]
    fn appended_events_are_found_by_every_index_and_proven_against_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let store = HistoryStore::open(dir.path()).unwrap();
        let mut frontier = Frontier::default();
        let all = events(&mut frontier, 40);
        store.append(all[..17].to_vec()).unwrap();
        store.append(all[17..].to_vec()).unwrap();
        assert_eq!(store.size().unwrap(), 40);

        let reader = store.reader().unwrap();
        assert_eq!(merkle::root_at(&reader, 40).unwrap(), frontier.root());
        for i in [0, 1, 16, 17, 39] {
            let json = reader.event(i).unwrap().unwrap();
            assert_eq!(json, all[i as usize].json);
            let proof = merkle::inclusion_proof(&reader, i, 40).unwrap();
            assert!(merkle::verify_inclusion(
                i,
                40,
                &merkle::leaf_hash(json.as_bytes()),
                &proof,
                &frontier.root()
            ));
        }

        let by = |f: Filter| seqs(&reader.query(&f, 0, 1000).unwrap());
        let expect = |p: &dyn Fn(&Event) -> bool| -> Vec<u64> {
            all.iter()
                .filter(|r| p(&r.event))
                .map(|r| r.event.seq)
                .collect()
        };
        assert_eq!(
            by(Filter {
                deployment: "d2".into(),
                ..Default::default()
            }),
            expect(&|e| e.what.deployment() == Some("d2"))
        );
        assert_eq!(
            by(Filter {
                node: "n3".into(),
                ..Default::default()
            }),
            expect(&|e| e.what.node() == Some("n3"))
        );
        assert_eq!(
            by(Filter {
                country: "FR".into(),
                ..Default::default()
            }),
            expect(&|e| e.what.country() == Some("FR"))
        );
        assert_eq!(
            by(Filter {
                rule: "directive".into(),
                kind: "allocation.stop-ordered".into(),
                ..Default::default()
            }),
            expect(&|e| e.what.kind() == "allocation.stop-ordered")
        );
        assert_eq!(
            by(Filter {
                policy_version: 3,
                ..Default::default()
            }),
            (20..30).collect::<Vec<_>>()
        );
        assert_eq!(
            by(Filter {
                since_ms: 5_000,
                until_ms: 9_000,
                ..Default::default()
            }),
            vec![5, 6, 7, 8]
        );
        assert_eq!(by(Filter::default()), (0..40).collect::<Vec<_>>());
        // A name index within a time range and a policy version (seq ranges, by bisection).
        assert_eq!(
            by(Filter {
                node: "n1".into(),
                since_ms: 10_000,
                until_ms: 30_000,
                ..Default::default()
            }),
            expect(&|e| e.what.node() == Some("n1") && (10..30).contains(&e.seq))
        );
        assert_eq!(
            by(Filter {
                kind: "node.down".into(),
                policy_version: 2,
                ..Default::default()
            }),
            expect(&|e| e.what.kind() == "node.down" && (10..20).contains(&e.seq))
        );
        assert!(
            by(Filter {
                since_ms: 50_000,
                ..Default::default()
            })
            .is_empty()
        );

        // Paging: a full page says where to go on; the pages make the whole answer.
        let filter = Filter {
            node: "n1".into(),
            ..Default::default()
        };
        let mut from = 0;
        let mut paged = Vec::new();
        loop {
            let page = reader.query(&filter, from, 2).unwrap();
            assert!(page.events.len() <= 2);
            paged.extend(seqs(&page));
            match page.next {
                Some(next) => from = next,
                None => break,
            }
        }
        assert_eq!(paged, by(filter));
    }

    #[test]
    fn an_append_that_does_not_continue_the_store_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = HistoryStore::open(dir.path()).unwrap();
        let mut frontier = Frontier::default();
        let all = events(&mut frontier, 6);
        store.append(all[..3].to_vec()).unwrap();
        let err = store.append(all[4..].to_vec()).unwrap_err();
        assert!(err.to_string().contains("holds 3 events"), "{err}");
        assert_eq!(store.size().unwrap(), 3);
    }

    #[test]
    fn a_read_after_an_append_sees_every_event_appended_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = HistoryStore::open(dir.path()).unwrap();
        let mut frontier = Frontier::default();
        let mut appended = 0;
        for n in [1, 300, 7, 2_000, 1, 40] {
            let batch = events(&mut frontier, n);
            store.append(batch).unwrap();
            appended += n;
            // No wait in between: the read waits for the writer.
            let reader = store.reader().unwrap();
            assert_eq!(reader.size().unwrap(), appended);
            assert!(reader.event(appended - 1).unwrap().is_some());
            assert_eq!(store.lag(), 0);
        }
        assert_eq!(store.events_up_to(appended).unwrap().len() as u64, appended);
        assert_eq!(
            merkle::root_at(&store.reader().unwrap(), appended).unwrap(),
            frontier.root()
        );
    }

    #[test]
    fn a_failed_write_fails_the_next_append_and_every_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = HistoryStore::open(dir.path()).unwrap();
        let mut frontier = Frontier::default();
        store.append(events(&mut frontier, 3)).unwrap();
        store.settle().unwrap();
        // The file moved on behind the writer's back: its next write finds it disagreeing.
        let txn = store.db.begin_write().unwrap();
        txn.open_table(META).unwrap().insert(KEY_SIZE, 99).unwrap();
        txn.commit().unwrap();
        store.append(events(&mut frontier, 2)).unwrap();
        let err = store.reader().err().expect("a read after a failed write");
        assert!(err.to_string().contains("writer failed"), "{err}");
        assert!(err.to_string().contains("holds 99 events"), "{err}");
        let err = store.append(events(&mut frontier, 1)).unwrap_err();
        assert!(err.to_string().contains("writer failed"), "{err}");
        assert!(store.flush().is_err());
    }

    #[test]
    fn the_last_clone_dropped_closes_the_file_after_storing_the_queue() {
        let dir = tempfile::tempdir().unwrap();
        let mut frontier = Frontier::default();
        let store = HistoryStore::open(dir.path()).unwrap();
        let probe = store.closed_probe();
        let other = store.clone();
        for _ in 0..WRITE_QUEUE_MAX * 2 {
            store.append(events(&mut frontier, 500)).unwrap();
        }
        drop(store);
        assert!(probe.upgrade().is_some(), "a clone still holds it");
        drop(other);
        assert!(probe.upgrade().is_none(), "the writer still holds the file");
        // Opened again at once in the same process: redb refuses a file still open.
        let store = HistoryStore::open(dir.path()).unwrap();
        assert_eq!(store.size().unwrap(), frontier.size);
    }

    #[test]
    fn truncate_then_reappend_gives_the_same_tree_and_no_stale_index_entries() {
        let dir = tempfile::tempdir().unwrap();
        let store = HistoryStore::open(dir.path()).unwrap();
        let mut frontier = Frontier::default();
        let all = events(&mut frontier, 37);
        store.append(all.to_vec()).unwrap();
        for cut in [36, 32, 21, 16, 1, 0] {
            store.truncate(cut).unwrap();
            assert_eq!(store.size().unwrap(), cut);
            let reader = store.reader().unwrap();
            assert!(reader.event(cut).unwrap().is_none());
            let all_seqs = seqs(&reader.query(&Filter::default(), 0, 1000).unwrap());
            assert_eq!(all_seqs, (0..cut).collect::<Vec<_>>());
            let on_n1 = Filter {
                node: "n1".into(),
                ..Default::default()
            };
            let expect = |upto: u64| -> Vec<u64> {
                all[..upto as usize]
                    .iter()
                    .filter(|r| r.event.what.node() == Some("n1"))
                    .map(|r| r.event.seq)
                    .collect()
            };
            assert_eq!(seqs(&reader.query(&on_n1, 0, 1000).unwrap()), expect(cut));
            drop(reader);
            // Append the rest again (in two batches): same root as the uncut tree, every proof
            // still checks, every posting found once.
            let half = (cut as usize + all.len()) / 2;
            store.append(all[cut as usize..half].to_vec()).unwrap();
            store.append(all[half..].to_vec()).unwrap();
            let reader = store.reader().unwrap();
            assert_eq!(seqs(&reader.query(&on_n1, 0, 1000).unwrap()), expect(37));
            assert_eq!(merkle::root_at(&reader, 37).unwrap(), frontier.root());
            for size in [1, 5, 16, 17, 37] {
                let proof = merkle::consistency_proof(&reader, size, 37).unwrap();
                let old = merkle::root_at(&reader, size).unwrap();
                assert!(merkle::verify_consistency(
                    size,
                    37,
                    &old,
                    &frontier.root(),
                    &proof
                ));
            }
        }
    }

    #[test]
    fn replace_all_rebuilds_tree_and_indexes_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let mut frontier = Frontier::default();
        let all = events(&mut frontier, 25);
        {
            let store = HistoryStore::open(dir.path()).unwrap();
            let mut other = Frontier::default();
            store.append(events(&mut other, 9)[..4].to_vec()).unwrap();
            let jsons: Vec<String> = all.iter().map(|r| r.json.clone()).collect();
            assert_eq!(store.replace_all(&jsons).unwrap(), frontier.root());
            assert_eq!(store.events_up_to(25).unwrap(), jsons);
            assert_eq!(store.events_up_to(3).unwrap(), jsons[..3]);
            store.flush().unwrap();
        }
        let store = HistoryStore::open(dir.path()).unwrap();
        assert_eq!(store.size().unwrap(), 25);
        let reader = store.reader().unwrap();
        assert_eq!(merkle::root_at(&reader, 25).unwrap(), frontier.root());
        let stops = reader
            .query(
                &Filter {
                    kind: "allocation.stop-ordered".into(),
                    ..Default::default()
                },
                0,
                100,
            )
            .unwrap();
        assert_eq!(
            seqs(&stops),
            (0..25).filter(|s| s % 3 == 1).collect::<Vec<_>>()
        );

        // Events numbered out of order are refused, and the store is left as it was.
        let mut bad: Vec<String> = all.iter().map(|r| r.json.clone()).collect();
        bad.swap(2, 3);
        let err = store.replace_all(&bad).unwrap_err();
        assert!(err.to_string().contains("says it is number"), "{err}");
        assert_eq!(store.size().unwrap(), 25);
    }

    #[test]
    fn the_latest_checkpoint_is_the_largest_tree() {
        let dir = tempfile::tempdir().unwrap();
        let store = HistoryStore::open(dir.path()).unwrap();
        assert!(store.latest_checkpoint().unwrap().is_none());
        for size in [5, 12, 9] {
            store
                .put_checkpoint(&StoredCheckpoint {
                    checkpoint: sov_proto::evidence::Checkpoint {
                        cluster_id: "c".into(),
                        tree_size: size,
                        root: [size as u8; 32],
                        at_ms: 0,
                    },
                    signature: vec![1, 2, 3],
                    key_id: "k".into(),
                })
                .unwrap();
        }
        let latest = store.latest_checkpoint().unwrap().unwrap();
        assert_eq!(latest.checkpoint.tree_size, 12);
        assert_eq!(latest.signature, vec![1, 2, 3]);
    }
}
