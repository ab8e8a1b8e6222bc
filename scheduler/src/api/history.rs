//! `sov.v1.HistoryService`: the placement history for compliance reviewers: queries, "where did
//! it run at that instant", signed checkpoints, proofs and offline-verifiable exports.
//!
//! Reads the history store (`raft::history_store`) after a read barrier, so an answer reflects
//! every write acknowledged before the call; the tree size and root it reports are the store's
//! own, read in the same transaction as the events. Signing needs the cluster key
//! (`Config::signing_key`); without one, checkpoints and exports are refused with
//! FAILED_PRECONDITION and a sentence saying how to configure one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use sov_proto::evidence::{self, Checkpoint, Line, Seal};
use sov_proto::merkle::{self, Hash};
use sov_proto::v1 as pb;
use sov_proto::v1::history_service_server::HistoryService;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status};

use super::read_barrier;
use crate::history::{Event, What};
use crate::raft::history_store::{Filter, HistoryStore, StoredCheckpoint};
use crate::raft::{Replica, now_ms};

/// Events a page holds when the client asks for none, and the most it may ask for.
pub const PAGE_LIMIT_DEFAULT: u32 = 100;
pub const PAGE_LIMIT_MAX: u32 = 1_000;
/// Event lines per export chunk, and chunks buffered ahead of a slow client.
const EXPORT_LINES_PER_CHUNK: usize = 500;
const EXPORT_CHUNKS_AHEAD: usize = 4;
/// Events an as-of answer reads at most (a deployment's whole life, in practice).
const AS_OF_EVENTS_MAX: usize = 2_000_000;
/// Filter text longest accepted (names are DNS labels; kinds and rules are short).
const FILTER_LEN_MAX: usize = 128;

pub struct HistoryApi {
    replica: Arc<Replica>,
    key: Option<Arc<SigningKey>>,
}

impl HistoryApi {
    pub fn new(replica: Arc<Replica>, key: Option<Arc<SigningKey>>) -> Self {
        Self { replica, key }
    }

    fn key(&self) -> Result<Arc<SigningKey>, Status> {
        self.key.clone().ok_or_else(|| {
            Status::failed_precondition(
                "this scheduler has no signing key: create one with `sov-scheduler keygen --out DIR`, give every scheduler the same key file (signing_key in its config, or --signing-key), and restart it",
            )
        })
    }

    fn store(&self) -> HistoryStore {
        self.replica.sm.history().clone()
    }
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(format!("history store: {e}"))
}

/// Runs a blocking read of the store off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("history task failed: {e}")))?
}

fn check_text(field: &str, value: &str) -> Result<(), Status> {
    if value.len() > FILTER_LEN_MAX || value.contains('\0') {
        return Err(Status::invalid_argument(format!(
            "{field}: must be at most {FILTER_LEN_MAX} characters, without NUL"
        )));
    }
    Ok(())
}

fn filter_of(q: &pb::HistoryQuery) -> Result<Filter, Status> {
    for (field, value) in [
        ("deployment", &q.deployment),
        ("node", &q.node),
        ("country", &q.country),
        ("rule", &q.rule),
        ("kind", &q.kind),
    ] {
        check_text(field, value)?;
    }
    if q.since_ms != 0 && q.until_ms != 0 && q.until_ms <= q.since_ms {
        return Err(Status::invalid_argument(format!(
            "until_ms: {} is not after since_ms {}",
            q.until_ms, q.since_ms
        )));
    }
    Ok(Filter {
        deployment: q.deployment.clone(),
        node: q.node.clone(),
        country: q.country.clone(),
        policy_version: q.policy_version,
        rule: q.rule.clone(),
        kind: q.kind.clone(),
        since_ms: q.since_ms,
        until_ms: q.until_ms,
    })
}

fn event_to_pb(e: &Event, json: String) -> pb::HistoryEvent {
    pb::HistoryEvent {
        seq: e.seq,
        raft_index: e.raft_index,
        at_ms: e.at_ms,
        kind: e.what.kind().into(),
        body: json.into_bytes(),
        policy_version: e.policy_version,
        deployment: e.what.deployment().unwrap_or_default().into(),
        node: e.what.node().unwrap_or_default().into(),
    }
}

/// The store's size and the root of its tree, read in one transaction.
fn head(reader: &crate::raft::history_store::Reader, size: u64) -> Result<Hash, Status> {
    merkle::root_at(reader, size).map_err(internal)
}

/// Signs the store's current head with `key`, keeps the checkpoint, and returns it.
pub fn sign_checkpoint(
    store: &HistoryStore,
    cluster_id: &str,
    key: &SigningKey,
) -> std::io::Result<StoredCheckpoint> {
    let reader = store.reader()?;
    let tree_size = reader.size()?;
    let root = merkle::root_at(&reader, tree_size).map_err(std::io::Error::other)?;
    let checkpoint = Checkpoint {
        cluster_id: cluster_id.to_string(),
        tree_size,
        root,
        at_ms: now_ms(),
    };
    let stored = StoredCheckpoint {
        signature: checkpoint.sign(key).to_vec(),
        key_id: evidence::key_id(&key.verifying_key()),
        checkpoint,
    };
    store.put_checkpoint(&stored)?;
    Ok(stored)
}

fn checkpoint_to_pb(c: &StoredCheckpoint) -> pb::SignedCheckpoint {
    pb::SignedCheckpoint {
        tree_size: c.checkpoint.tree_size,
        root: c.checkpoint.root.to_vec(),
        at_ms: c.checkpoint.at_ms,
        signature: c.signature.clone(),
        cluster_id: c.checkpoint.cluster_id.clone(),
        key_id: c.key_id.clone(),
    }
}

/// Stores a signed checkpoint every `every` while this scheduler runs, when it has a key.
pub async fn checkpoint_loop(
    replica: Arc<Replica>,
    key: Arc<SigningKey>,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
        // A new cluster gets its id from its first leader: wait for it (once), rather than
        // skipping a whole interval.
        let cluster_id = loop {
            let id = replica.sm.read().state.cluster.cluster_id.clone();
            if !id.is_empty() {
                break id;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => return,
            }
        };
        let (store, key) = (replica.sm.history().clone(), key.clone());
        // Nothing new since the last checkpoint: it still stands, no need to sign again.
        let sign = move || {
            let latest = store.latest_checkpoint()?.map(|c| c.checkpoint.tree_size);
            if latest.is_some() && latest == Some(store.size()?) {
                return Ok(None);
            }
            sign_checkpoint(&store, &cluster_id, &key).map(Some)
        };
        match tokio::task::spawn_blocking(sign).await {
            Ok(Ok(None)) => {}
            Ok(Ok(Some(c))) => tracing::info!(
                tree_size = c.checkpoint.tree_size,
                root = %hex::encode(c.checkpoint.root),
                "signed a history checkpoint"
            ),
            Ok(Err(e)) => tracing::warn!(error = %e, "history checkpoint not signed"),
            Err(e) => tracing::warn!(error = %e, "history checkpoint task failed"),
        }
    }
}

/// Where the replicas of a deployment ran at `at_ms`, folded from its events; and how many
/// events were read. The policy version in force is the caller's to fill in (from the state).
pub fn as_of(
    store: &HistoryStore,
    deployment: &str,
    at_ms: i64,
) -> Result<(pb::AsOfAnswer, u64), Status> {
    let reader = store.reader().map_err(internal)?;
    let filter = Filter {
        deployment: deployment.to_string(),
        until_ms: at_ms.saturating_add(1),
        ..Default::default()
    };
    let mut replicas: BTreeMap<String, pb::AsOfReplica> = BTreeMap::new();
    let mut existed = false;
    let mut read = 0u64;
    let mut from = 0u64;
    loop {
        let page = reader.query(&filter, from, 10_000).map_err(internal)?;
        for (e, _) in &page.events {
            read += 1;
            if read as usize > AS_OF_EVENTS_MAX {
                return Err(Status::resource_exhausted(format!(
                    "deployment {deployment} has more than {AS_OF_EVENTS_MAX} events before that instant; export its history and fold it offline"
                )));
            }
            fold(&mut replicas, &mut existed, e);
        }
        match page.next {
            Some(seq) => from = seq,
            None => break,
        }
    }
    Ok((
        pb::AsOfAnswer {
            deployment: deployment.to_string(),
            at_ms,
            existed,
            policy_version: 0,
            bundle_hash: String::new(),
            replicas: replicas.into_values().collect(),
            events_read: read,
        },
        read,
    ))
}

/// Applies one event of a deployment to the picture of its replicas.
fn fold(replicas: &mut BTreeMap<String, pb::AsOfReplica>, existed: &mut bool, e: &Event) {
    match &e.what {
        What::DeploymentCreated(_) | What::DeploymentChanged(_) => *existed = true,
        What::DeploymentDeleted { .. } => *existed = false,
        What::AllocationPlaced {
            allocation,
            node,
            facts,
            eligible,
            ..
        } => {
            replicas.insert(
                allocation.clone(),
                pb::AsOfReplica {
                    allocation: allocation.clone(),
                    node: node.clone(),
                    country: facts.country.clone(),
                    operator: facts.operator.clone(),
                    operator_hq: facts.operator_hq.clone(),
                    ultimate_parent_hq: facts.ultimate_parent_hq.clone(),
                    location_trust: facts.location_trust.clone(),
                    certifications: facts.certifications.clone(),
                    placed_under_policy: e.policy_version,
                    placed_at_ms: e.at_ms,
                    status: "pending".into(),
                    standing: "compliant".into(),
                    eligible_because: eligible.clone(),
                },
            );
        }
        What::AllocationStarted(a) => {
            set(replicas, &a.allocation, |r| r.status = "starting".into())
        }
        What::AllocationHealthy(a) => set(replicas, &a.allocation, |r| r.status = "running".into()),
        What::AllocationFailed { allocation: a, .. } => {
            set(replicas, &a.allocation, |r| r.status = "failed".into())
        }
        What::ViolationDetected {
            allocation: a,
            rules,
            action,
            drain,
        } => {
            let why = if rules.is_empty() && *drain {
                "node draining".to_string()
            } else {
                rules.join(", ")
            };
            set(replicas, &a.allocation, |r| {
                r.standing = format!("{action}: {why}")
            })
        }
        What::ViolationCleared(a) => {
            set(replicas, &a.allocation, |r| r.standing = "compliant".into())
        }
        // Ordered to stop: its process may still run until its agent confirms, so it stays in
        // the answer, as stopping, until then (an agent that never comes back leaves it so, as
        // the state does).
        What::StopOrdered { allocation: a, .. } => {
            set(replicas, &a.allocation, |r| r.status = "stopping".into())
        }
        What::AllocationMigrated { allocation, .. } => {
            set(replicas, allocation, |r| r.status = "stopping".into())
        }
        What::AllocationStopped(a) => {
            replicas.remove(&a.allocation);
        }
        _ => {}
    }
}

fn set(
    replicas: &mut BTreeMap<String, pb::AsOfReplica>,
    id: &str,
    f: impl FnOnce(&mut pb::AsOfReplica),
) {
    if let Some(r) = replicas.get_mut(id) {
        f(r);
    }
}

/// The lines of an export: header, events with proofs, a consistency proof if asked, the seal.
fn export_lines(
    store: &HistoryStore,
    cluster_id: &str,
    key: &SigningKey,
    req: &pb::ExportRequest,
    out: &mpsc::Sender<Result<pb::EvidenceChunk, Status>>,
) -> Result<(), Status> {
    let reader = store.reader().map_err(internal)?;
    let size = reader.size().map_err(internal)?;
    let root = head(&reader, size)?;
    let filter = Filter {
        deployment: req.deployment.clone(),
        node: req.node.clone(),
        since_ms: req.since_ms,
        until_ms: req.until_ms,
        ..Default::default()
    };
    let filter_text = format!(
        "since_ms={} until_ms={} deployment={} node={}",
        req.since_ms, req.until_ms, req.deployment, req.node
    );
    let mut lines = vec![
        Line::Header {
            format: evidence::FORMAT.into(),
            cluster_id: cluster_id.to_string(),
            exported_at_ms: now_ms(),
            filter: filter_text.clone(),
        }
        .to_json(),
    ];
    let send = |lines: &mut Vec<String>| -> Result<(), Status> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut text = lines.join("\n");
        text.push('\n');
        lines.clear();
        out.blocking_send(Ok(pb::EvidenceChunk {
            lines: text.into_bytes(),
        }))
        .map_err(|_| Status::cancelled("the client went away"))
    };
    let mut leaves = Vec::new();
    let mut from = 0u64;
    loop {
        let page = reader
            .query(&filter, from, EXPORT_LINES_PER_CHUNK)
            .map_err(internal)?;
        for (e, json) in page.events {
            if e.seq >= size {
                break;
            }
            let proof = merkle::inclusion_proof(&reader, e.seq, size).map_err(internal)?;
            leaves.push(e.seq);
            lines.push(
                Line::Event {
                    leaf: e.seq,
                    event: json,
                    proof,
                }
                .to_json(),
            );
        }
        send(&mut lines)?;
        match page.next {
            Some(seq) if seq < size => from = seq,
            _ => break,
        }
    }
    if req.previous_size > 0 {
        if req.previous_size > size {
            return Err(Status::invalid_argument(format!(
                "previous_size: {} is larger than the history ({size} events); is the previous export from another cluster?",
                req.previous_size
            )));
        }
        let from_root = head(&reader, req.previous_size)?;
        let proof =
            merkle::consistency_proof(&reader, req.previous_size, size).map_err(internal)?;
        lines.push(
            Line::Consistency {
                from_size: req.previous_size,
                from_root,
                proof,
            }
            .to_json(),
        );
    }
    let mut seal = Seal {
        checkpoint: Checkpoint {
            cluster_id: cluster_id.to_string(),
            tree_size: size,
            root,
            at_ms: now_ms(),
        },
        checkpoint_signature: Vec::new(),
        leaves: evidence::ranges(leaves),
        filter: filter_text,
        signature: Vec::new(),
    };
    seal.sign(key);
    lines.push(Line::Seal(seal).to_json());
    send(&mut lines)
}

#[tonic::async_trait]
impl HistoryService for HistoryApi {
    async fn query(
        &self,
        request: Request<pb::HistoryQuery>,
    ) -> Result<Response<pb::HistoryPage>, Status> {
        let q = request.into_inner();
        if q.limit > PAGE_LIMIT_MAX {
            return Err(Status::invalid_argument(format!(
                "limit: is {}; the limit is {PAGE_LIMIT_MAX}",
                q.limit
            )));
        }
        let limit = if q.limit == 0 {
            PAGE_LIMIT_DEFAULT
        } else {
            q.limit
        } as usize;
        let from = if q.page_token.is_empty() {
            0
        } else {
            q.page_token.parse::<u64>().map_err(|_| {
                Status::invalid_argument(format!(
                    "page_token: {:?} is not one this API returned",
                    q.page_token
                ))
            })?
        };
        let filter = filter_of(&q)?;
        read_barrier(&self.replica, q.consistency).await?;
        let store = self.store();
        blocking(move || {
            let reader = store.reader().map_err(internal)?;
            let size = reader.size().map_err(internal)?;
            let root = head(&reader, size)?;
            let page = reader.query(&filter, from, limit).map_err(internal)?;
            Ok(Response::new(pb::HistoryPage {
                events: page
                    .events
                    .into_iter()
                    .map(|(e, json)| event_to_pb(&e, json))
                    .collect(),
                next_page: page.next.map(|n| n.to_string()).unwrap_or_default(),
                tree_size: size,
                root: root.to_vec(),
            }))
        })
        .await
    }

    async fn as_of(
        &self,
        request: Request<pb::AsOfRequest>,
    ) -> Result<Response<pb::AsOfAnswer>, Status> {
        let req = request.into_inner();
        crate::state::validate_deployment_name(&req.deployment).map_err(super::invalid)?;
        read_barrier(&self.replica, req.consistency).await?;
        // The version in force at the instant, from the state's list of versions.
        let (version, hash) = {
            let applied = self.replica.sm.read();
            applied
                .state
                .policies
                .iter()
                .rev()
                .find(|v| v.activated_at_ms <= req.at_ms)
                .map(|v| (v.version, v.hash.clone()))
                .unwrap_or_default()
        };
        let store = self.store();
        let (mut answer, _) = blocking(move || as_of(&store, &req.deployment, req.at_ms)).await?;
        answer.policy_version = version;
        answer.bundle_hash = hash;
        Ok(Response::new(answer))
    }

    async fn checkpoint(
        &self,
        _: Request<pb::CheckpointRequest>,
    ) -> Result<Response<pb::SignedCheckpoint>, Status> {
        let key = self.key()?;
        read_barrier(&self.replica, 0).await?;
        let cluster_id = self.replica.sm.read().state.cluster.cluster_id.clone();
        let store = self.store();
        let stored =
            blocking(move || sign_checkpoint(&store, &cluster_id, &key).map_err(internal)).await?;
        Ok(Response::new(checkpoint_to_pb(&stored)))
    }

    async fn prove(
        &self,
        request: Request<pb::ProofRequest>,
    ) -> Result<Response<pb::Proof>, Status> {
        let req = request.into_inner();
        read_barrier(&self.replica, req.read_consistency).await?;
        let store = self.store();
        blocking(move || {
            let reader = store.reader().map_err(internal)?;
            let stored = reader.size().map_err(internal)?;
            let size = if req.tree_size == 0 {
                stored
            } else {
                req.tree_size
            };
            if size > stored {
                return Err(Status::out_of_range(format!(
                    "tree_size: {size} is larger than the history ({stored} events)"
                )));
            }
            let root = head(&reader, size)?;
            let (hashes, first_root) = if req.consistency {
                if req.first_size > size {
                    return Err(Status::invalid_argument(format!(
                        "first_size: {} is larger than tree_size {size}",
                        req.first_size
                    )));
                }
                (
                    merkle::consistency_proof(&reader, req.first_size, size).map_err(internal)?,
                    head(&reader, req.first_size)?.to_vec(),
                )
            } else {
                if req.leaf_index >= size {
                    return Err(Status::out_of_range(format!(
                        "leaf_index: {} is not in a history of {size} events",
                        req.leaf_index
                    )));
                }
                (
                    merkle::inclusion_proof(&reader, req.leaf_index, size).map_err(internal)?,
                    Vec::new(),
                )
            };
            Ok(Response::new(pb::Proof {
                hashes: hashes.iter().map(|h| h.to_vec()).collect(),
                tree_size: size,
                root: root.to_vec(),
                first_root,
            }))
        })
        .await
    }

    type ExportStream = tokio_stream::wrappers::ReceiverStream<Result<pb::EvidenceChunk, Status>>;

    async fn export(
        &self,
        request: Request<pb::ExportRequest>,
    ) -> Result<Response<Self::ExportStream>, Status> {
        let req = request.into_inner();
        check_text("deployment", &req.deployment)?;
        check_text("node", &req.node)?;
        let key = self.key()?;
        read_barrier(&self.replica, 0).await?;
        let cluster_id = self.replica.sm.read().state.cluster.cluster_id.clone();
        let store = self.store();
        let (tx, rx) = mpsc::channel(EXPORT_CHUNKS_AHEAD);
        tokio::task::spawn_blocking(move || {
            if let Err(status) = export_lines(&store, &cluster_id, &key, &req, &tx) {
                let _ = tx.blocking_send(Err(status));
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }
}
