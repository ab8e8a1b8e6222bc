//! Incoming scheduler-to-scheduler traffic: the `RaftPeer` gRPC service.
//!
//! Owns: decoding peer messages and handing them to openraft, reassembling streamed snapshots
//! (bounded by [`SNAPSHOT_BYTES_MAX`]), and serving forwarded leader-only requests. Forwarded
//! requests are executed locally only, never forwarded again, so a request crosses at most one
//! hop.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use sov_proto::v1::raft_peer_server::RaftPeer;
use sov_proto::v1::{RaftPayload, SnapshotChunk};
use tonic::{Request, Response, Status, Streaming};

use super::network::{from_payload, to_payload};
use super::{LeaderRequest, Replica, Snapshot, SnapshotMeta, Vote};

/// Largest snapshot a follower accepts. The state is bounded by validation limits
/// (`state::validate`), and this cap stops a misbehaving peer from exhausting memory.
pub const SNAPSHOT_BYTES_MAX: usize = 1024 * 1024 * 1024;

pub struct PeerService {
    replica: Arc<Replica>,
}

impl PeerService {
    pub fn new(replica: Arc<Replica>) -> Self {
        Self { replica }
    }
}

fn bad_request(e: serde_json::Error) -> Status {
    Status::invalid_argument(format!("undecodable raft message: {e}"))
}

fn fatal(e: impl std::fmt::Display) -> Status {
    Status::internal(format!("raft core: {e}"))
}

type PayloadStream = Pin<Box<dyn Stream<Item = Result<RaftPayload, Status>> + Send>>;

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let req = from_payload(request.get_ref()).map_err(bad_request)?;
        let resp = self.replica.raft.vote(req).await.map_err(fatal)?;
        Ok(Response::new(to_payload(&resp)))
    }

    async fn pre_vote(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let req = from_payload(request.get_ref()).map_err(bad_request)?;
        let resp = self.replica.raft.pre_vote(req).await.map_err(fatal)?;
        Ok(Response::new(to_payload(&resp)))
    }

    async fn append_entries(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let req = from_payload(request.get_ref()).map_err(bad_request)?;
        let resp = self.replica.raft.append_entries(req).await.map_err(fatal)?;
        Ok(Response::new(to_payload(&resp)))
    }

    type StreamAppendStream = PayloadStream;

    async fn stream_append(
        &self,
        request: Request<Streaming<RaftPayload>>,
    ) -> Result<Response<Self::StreamAppendStream>, Status> {
        // A malformed or broken request ends the input; openraft then ends the output stream
        // and the leader re-establishes replication.
        let input = request
            .into_inner()
            .take_while(|item| futures::future::ready(item.is_ok()))
            .filter_map(|item| async move {
                let payload = item.ok()?;
                match from_payload(&payload) {
                    Ok(req) => Some(req),
                    Err(e) => {
                        tracing::warn!(error = %e, "dropping undecodable append request");
                        None
                    }
                }
            });
        let output = self
            .replica
            .raft
            .stream_append(Box::pin(input))
            .map(|item| match item {
                Ok(result) => Ok(to_payload(&result)),
                Err(fatal_err) => Err(fatal(fatal_err)),
            });
        Ok(Response::new(Box::pin(output)))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftPayload>, Status> {
        let mut chunks = request.into_inner();
        let first = chunks
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
        let (vote, meta): (Vote, SnapshotMeta) =
            serde_json::from_slice(&first.meta_json).map_err(bad_request)?;
        let mut data = first.data;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            if data.len() + chunk.data.len() > SNAPSHOT_BYTES_MAX {
                return Err(Status::resource_exhausted(format!(
                    "snapshot exceeds {SNAPSHOT_BYTES_MAX} bytes"
                )));
            }
            data.extend_from_slice(&chunk.data);
        }
        let snapshot = Snapshot {
            meta,
            snapshot: data,
        };
        let resp = self
            .replica
            .raft
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(fatal)?;
        Ok(Response::new(to_payload(&resp)))
    }

    async fn transfer_leader(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let req = from_payload(request.get_ref()).map_err(bad_request)?;
        let resp = self
            .replica
            .raft
            .handle_transfer_leader(req)
            .await
            .map_err(fatal)?;
        Ok(Response::new(to_payload(&resp)))
    }

    async fn forward(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let req: LeaderRequest = from_payload(request.get_ref()).map_err(bad_request)?;
        let reply = self.replica.handle_leader_request(req).await;
        Ok(Response::new(to_payload(&reply)))
    }
}
