//! `sov.v1.ClusterService`: status and membership of the scheduler Raft group, and backups
//! (`Snapshot`: a Raft snapshot built on demand and streamed to the client).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use openraft::ServerState;
use openraft::storage::RaftStateMachine;
use sov_proto::snapshot_file::{DATA_BYTES_MAX, sha256_hex};
use sov_proto::v1::cluster_service_server::ClusterService;
use sov_proto::v1::{
    ClusterSnapshotChunk, ClusterSnapshotHeader, ClusterSnapshotRequest, ClusterStatus,
    ClusterStatusRequest, JoinRequest, Member, MembersRequest, MembersResponse, RemoveRequest,
};
use tonic::{Request, Response, Status};

use super::{read_barrier, write_error_status};
use crate::raft::state_machine::snapshot_state;
use crate::raft::{RaftMetrics, Replica, Snapshot, SovNode, now_ms};
use crate::state;
use crate::state::Proposal;

/// Data bytes per message of the `Snapshot` stream: well under the 4 MiB gRPC default, so no
/// client needs a raised message limit.
const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;
/// How long building a snapshot for a backup may take. Serializing the state of a 10,000-node
/// cluster takes well under a second; this only bounds a stuck build.
const SNAPSHOT_BUILD_TIMEOUT: Duration = Duration::from_secs(60);

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<ClusterSnapshotChunk, Status>> + Send>>;

pub struct ClusterApi {
    replica: Arc<Replica>,
    /// The state hash of the last `Status`, by revision: every command bumps the revision, so
    /// an unchanged revision means unchanged state, and a status poll of a quiet cluster does
    /// not serialize the whole state again (megabytes for a large fleet).
    hashed: std::sync::Mutex<Option<(u64, String)>>,
}

impl ClusterApi {
    pub fn new(replica: Arc<Replica>) -> Self {
        Self {
            replica,
            hashed: std::sync::Mutex::new(None),
        }
    }
}

pub fn role(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

fn members(m: &RaftMetrics) -> Vec<Member> {
    let membership = m.membership_config.membership();
    let matched = m.replication.as_ref();
    membership
        .nodes()
        .map(|(id, node)| Member {
            id: *id,
            raft_addr: node.raft_addr.clone(),
            api_addr: node.api_addr.clone(),
            voter: membership.voter_ids().any(|v| v == *id),
            matched_index: matched
                .and_then(|r| r.get(id))
                .map(|log_id| log_id.as_ref().map_or(0, |l| l.index)),
        })
        .collect()
}

/// Checks a `host:port` address well enough that a typo is caught before it enters the
/// membership (where it would make a peer permanently unreachable).
fn validate_addr(field: &str, addr: &str) -> Result<(), Status> {
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| {
        Status::invalid_argument(format!(
            "{field}: {addr:?} must be host:port, e.g. 10.0.0.2:7401"
        ))
    })?;
    let port_ok = port.parse::<u16>().is_ok_and(|p| p > 0);
    let host_ok = !host.is_empty() && host.len() <= 253 && !host.contains(['/', ' ']);
    if !port_ok || !host_ok {
        return Err(Status::invalid_argument(format!(
            "{field}: {addr:?} must be host:port with a port from 1 to 65535, e.g. 10.0.0.2:7401"
        )));
    }
    Ok(())
}

/// SHA-256 of the state's canonical bytes and its revision, the pair replicas agree on when
/// they have applied the same commands.
pub fn state_fingerprint(state: &state::State) -> (String, u64) {
    (sha256_hex(&state::encode(state)), state.revision)
}

/// Has this scheduler build a Raft snapshot that covers everything it has applied now, and
/// returns it (it may be a newer one, built meanwhile by openraft itself).
async fn fresh_snapshot(replica: &Replica) -> Result<Snapshot, Status> {
    let target = replica.sm.read().last_applied.map_or(0, |l| l.index);
    replica
        .raft
        .trigger()
        .snapshot()
        .await
        .map_err(|e| Status::internal(format!("cannot start a snapshot: {e}")))?;
    replica
        .raft
        .wait(Some(SNAPSHOT_BUILD_TIMEOUT))
        .metrics(
            |m| m.snapshot.is_some_and(|s| s.index >= target),
            "snapshot for a backup",
        )
        .await
        .map_err(|e| {
            Status::unavailable(format!(
                "the snapshot up to index {target} was not built within {SNAPSHOT_BUILD_TIMEOUT:?}: {e}"
            ))
        })?;
    let mut sm = replica.sm.clone();
    sm.get_current_snapshot()
        .await
        .map_err(|e| Status::internal(format!("cannot read the snapshot: {e}")))?
        .ok_or_else(|| Status::internal("the snapshot was built but cannot be found"))
}

/// The header of a backup: where the snapshot ends in the log, and the checksums of its data
/// and of the state it holds (computed from the data, so they describe exactly what is sent).
fn snapshot_header(
    replica: &Replica,
    snapshot: &Snapshot,
) -> Result<ClusterSnapshotHeader, Status> {
    let data = &snapshot.snapshot;
    if data.len() as u64 > DATA_BYTES_MAX {
        return Err(Status::resource_exhausted(format!(
            "the snapshot is {} bytes; backups are limited to {DATA_BYTES_MAX}",
            data.len()
        )));
    }
    let state = snapshot_state(data)
        .map_err(|e| Status::internal(format!("the snapshot does not decode: {e}")))?;
    let (state_sha256, state_revision) = state_fingerprint(&state);
    let last = snapshot.meta.last_log_id;
    Ok(ClusterSnapshotHeader {
        cluster_id: state.cluster.cluster_id.clone(),
        node_id: replica.id,
        last_log_index: last.map_or(0, |l| l.index),
        last_log_term: last.map_or(0, |l| l.leader_id.term),
        meta_json: serde_json::to_string(&snapshot.meta)
            .map_err(|e| Status::internal(format!("cannot encode the snapshot meta: {e}")))?,
        data_bytes: data.len() as u64,
        data_sha256: sha256_hex(data),
        state_sha256,
        state_revision,
        created_at_ms: now_ms(),
    })
}

#[tonic::async_trait]
impl ClusterService for ClusterApi {
    type SnapshotStream = SnapshotStream;

    async fn status(
        &self,
        _request: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatus>, Status> {
        let m = self.replica.metrics();
        let leader = self.replica.leader();
        // One lock for the id, hash and revision, so the three describe the same state.
        let (cluster_id, (state_sha256, state_revision), history) = {
            let applied = self.replica.sm.read();
            let history = applied.state.history.clone();
            let mut hashed = self.hashed.lock().unwrap_or_else(|p| p.into_inner());
            let fingerprint = match hashed.as_ref() {
                Some((revision, hash)) if *revision == applied.state.revision => {
                    (hash.clone(), *revision)
                }
                _ => {
                    let fresh = state_fingerprint(&applied.state);
                    *hashed = Some((fresh.1, fresh.0.clone()));
                    fresh
                }
            };
            (
                applied.state.cluster.cluster_id.clone(),
                fingerprint,
                history,
            )
        };
        let index = |l: &Option<crate::raft::LogId>| l.as_ref().map_or(0, |l| l.index);
        Ok(Response::new(ClusterStatus {
            cluster_id,
            node_id: self.replica.id,
            role: role(m.state).into(),
            term: m.current_term,
            leader_id: leader.as_ref().map_or(0, |(id, _)| *id),
            leader_api_addr: leader.map(|(_, n)| n.api_addr).unwrap_or_default(),
            last_log_index: m.last_log_index.unwrap_or(0),
            committed_index: index(&m.local_committed),
            applied_index: index(&m.last_applied),
            snapshot_index: index(&m.snapshot),
            purged_index: index(&m.purged),
            members: members(&m),
            state_sha256,
            state_revision,
            history_size: history.size,
            history_root: hex::encode(history.root()),
        }))
    }

    async fn snapshot(
        &self,
        request: Request<ClusterSnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        read_barrier(&self.replica, request.get_ref().consistency).await?;
        let snapshot = fresh_snapshot(&self.replica).await?;
        let replica = self.replica.clone();
        let (header, snapshot) = tokio::task::spawn_blocking(move || {
            snapshot_header(&replica, &snapshot).map(|h| (h, snapshot))
        })
        .await
        .map_err(|e| Status::internal(format!("snapshot header task failed: {e}")))??;
        tracing::info!(
            last_log_index = header.last_log_index,
            bytes = header.data_bytes,
            state_sha256 = %header.state_sha256,
            "sending a snapshot for a backup"
        );
        let data = snapshot.snapshot;
        let chunks = data.len().div_ceil(SNAPSHOT_CHUNK_BYTES);
        let first = ClusterSnapshotChunk {
            header: Some(header),
            data: Vec::new(),
        };
        // Chunks are cut one at a time as the client reads, so the data is held once.
        let rest = (0..chunks).map(move |i| {
            let end = ((i + 1) * SNAPSHOT_CHUNK_BYTES).min(data.len());
            Ok(ClusterSnapshotChunk {
                header: None,
                data: data[i * SNAPSHOT_CHUNK_BYTES..end].to_vec(),
            })
        });
        let stream = futures::stream::iter(std::iter::once(Ok(first)).chain(rest));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn members(
        &self,
        request: Request<MembersRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        read_barrier(&self.replica, request.get_ref().consistency).await?;
        let m = self.replica.metrics();
        Ok(Response::new(MembersResponse {
            members: members(&m),
            leader_id: m.current_leader.unwrap_or(0),
        }))
    }

    async fn join(
        &self,
        request: Request<JoinRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        let by = super::auth::caller(&request).map(super::auth::Caller::opaque_id);
        let req = request.into_inner();
        if req.id == 0 {
            return Err(Status::invalid_argument("id: must be greater than 0"));
        }
        validate_addr("raft_addr", &req.raft_addr)?;
        validate_addr("api_addr", &req.api_addr)?;
        let node = SovNode {
            raft_addr: req.raft_addr,
            api_addr: req.api_addr,
        };
        tracing::info!(id = req.id, %node, learner_only = req.learner_only, "adding scheduler");
        let change = format!(
            "scheduler {} added as {} (raft {}, api {})",
            req.id,
            if req.learner_only { "learner" } else { "voter" },
            node.raft_addr,
            node.api_addr
        );
        let added = self
            .replica
            .add_member(req.id, node, req.learner_only)
            .await;
        if added.is_ok() {
            self.record_membership(change, by).await;
        }
        added.map_err(write_error_status)?;
        self.members(Request::new(MembersRequest { consistency: 0 }))
            .await
    }

    async fn remove(
        &self,
        request: Request<RemoveRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        let by = super::auth::caller(&request).map(super::auth::Caller::opaque_id);
        let id = request.get_ref().id;
        if id == 0 {
            return Err(Status::invalid_argument("id: must be greater than 0"));
        }
        tracing::info!(id, "removing scheduler");
        self.replica
            .remove_member(id)
            .await
            .map_err(write_error_status)?;
        self.record_membership(format!("scheduler {id} removed"), by)
            .await;
        self.members(Request::new(MembersRequest { consistency: 0 }))
            .await
    }
}

impl ClusterApi {
    /// Records a membership change and who asked for it in history. The change itself is
    /// committed already; a failure here is logged, not returned (the caller's request did
    /// what it asked).
    async fn record_membership(&self, change: String, by: Option<String>) {
        let proposal = Proposal::RecordMembership {
            change,
            by: by.unwrap_or_default(),
        };
        if let Err(e) = super::propose(&self.replica, proposal).await {
            tracing::warn!(
                error = e.message(),
                "membership change not recorded in history"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::validate_addr;

    #[test]
    fn addresses_are_checked() {
        assert!(validate_addr("a", "127.0.0.1:7401").is_ok());
        assert!(validate_addr("a", "sched-2.eu:7401").is_ok());
        for bad in [
            "",
            "127.0.0.1",
            "127.0.0.1:0",
            "127.0.0.1:99999",
            ":7401",
            "http://x:1/",
        ] {
            let e = validate_addr("raft_addr", bad).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}");
            assert!(e.message().starts_with("raft_addr:"), "{}", e.message());
        }
    }
}
