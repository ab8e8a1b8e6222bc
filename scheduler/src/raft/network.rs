//! Outgoing scheduler-to-scheduler traffic: openraft's `RaftNetworkV2` over the `RaftPeer` gRPC
//! service, and forwarding of leader-only requests.
//!
//! Owns: the peer channel cache. There is exactly one tonic [`Channel`] (one HTTP/2 connection,
//! multiplexing every stream) per peer address, shared by replication, votes, snapshots,
//! heartbeats and forwarded client requests; openraft's per-target clients are cheap handles on
//! it. Every call is bounded: by openraft's TTLs for Raft RPCs, by a chunk size for snapshots and
//! by a message size cap for everything.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use openraft::OptionalSend;
use openraft::base::{BoxFuture, BoxStream};
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult,
    TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sov_proto::v1::raft_peer_client::RaftPeerClient;
use sov_proto::v1::{RaftPayload, SnapshotChunk};
use tonic::transport::{Channel, ClientTlsConfig};

use super::{LeaderReply, LeaderRequest, NodeId, Snapshot, SovNode, TypeConfig, Vote, WriteError};

/// Largest gRPC message a scheduler sends or accepts from a peer.
pub const PEER_MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Snapshot data is streamed in chunks of this size.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest pause before re-opening a replication stream to a peer that keeps failing.
const REDIAL_BACKOFF_MAX: Duration = Duration::from_secs(1);
const REDIAL_BACKOFF_FIRST: Duration = Duration::from_millis(20);

/// One lazily connected channel per peer address, created on first use and reused forever, and
/// per address the count of consecutive failed attempts to open a replication stream. With
/// `tls`, every channel is mutual TLS with this scheduler's certificate (peers accept only
/// scheduler certificates of the cluster's CA).
#[derive(Default)]
pub struct PeerClients {
    channels: Mutex<HashMap<String, Channel>>,
    stream_failures: Mutex<HashMap<String, u32>>,
    tls: Option<ClientTlsConfig>,
}

impl PeerClients {
    pub fn new(tls: Option<ClientTlsConfig>) -> Self {
        Self {
            tls,
            ..Self::default()
        }
    }

    pub fn client(&self, addr: &str) -> Result<RaftPeerClient<Channel>, tonic::transport::Error> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let channel = match channels.get(addr) {
            Some(c) => c.clone(),
            None => {
                let endpoint = sov_proto::tls::scheduler_endpoint(addr, self.tls.as_ref())?;
                let channel = endpoint
                    .connect_timeout(CONNECT_TIMEOUT)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(10))
                    .keep_alive_while_idle(true)
                    .connect_lazy();
                channels.insert(addr.to_string(), channel.clone());
                channel
            }
        };
        Ok(RaftPeerClient::new(channel)
            .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX))
    }

    /// How long to wait before opening another replication stream to `addr`. openraft re-opens
    /// a failed stream at once, so without this a dead peer would be redialled in a tight loop
    /// (a busy core and thousands of log lines a second); capped exponential backoff bounds it.
    fn redial_delay(&self, addr: &str) -> Duration {
        let failures = self
            .stream_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match failures.get(addr) {
            None | Some(0) => Duration::ZERO,
            Some(n) => REDIAL_BACKOFF_FIRST
                .saturating_mul(1 << (n - 1).min(16))
                .min(REDIAL_BACKOFF_MAX),
        }
    }

    fn record_stream_result(&self, addr: &str, ok: bool) {
        let mut failures = self
            .stream_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if ok {
            failures.remove(addr);
        } else {
            let n = failures.entry(addr.to_string()).or_insert(0);
            *n = n.saturating_add(1);
        }
    }

    /// Number of cached channels (one per distinct peer address ever contacted).
    pub fn len(&self) -> usize {
        self.channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub(crate) fn to_payload<T: Serialize>(value: &T) -> RaftPayload {
    // openraft's messages and ours are plain data; serializing them to JSON cannot fail.
    RaftPayload {
        json: serde_json::to_vec(value).expect("raft message serializes"),
    }
}

pub(crate) fn from_payload<T: DeserializeOwned>(
    payload: &RaftPayload,
) -> Result<T, serde_json::Error> {
    serde_json::from_slice(&payload.json)
}

fn status_to_rpc(status: tonic::Status) -> RPCError<TypeConfig> {
    // UNAVAILABLE is what tonic reports for refused or dropped connections: let openraft back
    // off instead of hammering a dead peer.
    if status.code() == tonic::Code::Unavailable {
        RPCError::Unreachable(Unreachable::new(&status))
    } else {
        RPCError::Network(NetworkError::new(&status))
    }
}

fn decode_err(e: serde_json::Error) -> RPCError<TypeConfig> {
    RPCError::Network(NetworkError::new(&e))
}

/// Creates per-target clients for openraft; all of them draw on the shared [`PeerClients`].
pub struct NetworkFactory {
    peers: Arc<PeerClients>,
}

impl NetworkFactory {
    pub fn new(peers: Arc<PeerClients>) -> Self {
        Self { peers }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &SovNode) -> PeerConnection {
        PeerConnection {
            target,
            addr: node.raft_addr.clone(),
            client: self.peers.client(&node.raft_addr).ok(),
            peers: self.peers.clone(),
        }
    }
}

/// openraft's handle on one peer. `client` is `None` only if the address does not parse, in
/// which case every RPC reports the peer unreachable with the reason.
pub struct PeerConnection {
    target: NodeId,
    addr: String,
    client: Option<RaftPeerClient<Channel>>,
    peers: Arc<PeerClients>,
}

impl PeerConnection {
    fn client(&self) -> Result<RaftPeerClient<Channel>, RPCError<TypeConfig>> {
        self.client.clone().ok_or_else(|| {
            RPCError::Unreachable(Unreachable::from_string(format!(
                "scheduler {} has an invalid raft address {:?}",
                self.target, self.addr
            )))
        })
    }

    async fn unary<Req, Resp, F, Fut>(
        &self,
        req: &Req,
        ttl: Duration,
        call: F,
    ) -> Result<Resp, RPCError<TypeConfig>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        F: FnOnce(RaftPeerClient<Channel>, RaftPayload) -> Fut,
        Fut: Future<Output = Result<tonic::Response<RaftPayload>, tonic::Status>>,
    {
        let fut = call(self.client()?, to_payload(req));
        let resp = tokio::time::timeout(ttl, fut)
            .await
            .map_err(|_| {
                RPCError::Unreachable(Unreachable::from_string(format!(
                    "no answer within {ttl:?}"
                )))
            })?
            .map_err(status_to_rpc)?;
        from_payload(resp.get_ref()).map_err(decode_err)
    }
}

impl RaftNetworkV2<TypeConfig> for PeerConnection {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(&rpc, option.hard_ttl(), |mut c, p| async move {
            c.append_entries(p).await
        })
        .await
    }

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        _option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<
            BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>,
            RPCError<TypeConfig>,
        >,
    >
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        Box::pin(async move {
            let mut client = self.client()?;
            let delay = self.peers.redial_delay(&self.addr);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let requests = input.map(|req| to_payload(&req));
            let opened = client.stream_append(requests).await;
            self.peers.record_stream_result(&self.addr, opened.is_ok());
            let response = opened.map_err(status_to_rpc)?;
            let results = response.into_inner().map(|item| {
                let payload = item.map_err(status_to_rpc)?;
                from_payload::<StreamAppendResult<TypeConfig>>(&payload).map_err(decode_err)
            });
            Ok(Box::pin(results) as BoxStream<'s, _>)
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(&rpc, option.hard_ttl(), |mut c, p| async move {
            c.vote(p).await
        })
        .await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(&rpc, option.hard_ttl(), |mut c, p| async move {
            c.pre_vote(p).await
        })
        .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let mut client = self.client()?;
        let chunk_bytes = option
            .snapshot_chunk_size()
            .unwrap_or(SNAPSHOT_CHUNK_BYTES)
            .clamp(1, SNAPSHOT_CHUNK_BYTES);
        let meta_json =
            serde_json::to_vec(&(&vote, &snapshot.meta)).map_err(|e| NetworkError::new(&e))?;
        let data = snapshot.snapshot;
        let total = data.len().div_ceil(chunk_bytes).max(1);
        let chunks = (0..total).map(move |i| {
            let end = ((i + 1) * chunk_bytes).min(data.len());
            SnapshotChunk {
                meta_json: if i == 0 {
                    meta_json.clone()
                } else {
                    Vec::new()
                },
                data: data[i * chunk_bytes..end].to_vec(),
            }
        });
        let send = client.install_snapshot(futures::stream::iter(chunks));
        let resp = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            r = tokio::time::timeout(option.hard_ttl(), send) => r,
        };
        let resp = resp
            .map_err(|_| Unreachable::from_string("snapshot transfer timed out"))?
            .map_err(status_to_rpc)?;
        Ok(from_payload(resp.get_ref()).map_err(|e| NetworkError::new(&e))?)
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(&req, option.hard_ttl(), |mut c, p| async move {
            c.transfer_leader(p).await
        })
        .await
    }
}

/// Sends leader-only work to the scheduler at `raft_addr`, over the shared peer channel.
pub async fn forward(
    peers: &PeerClients,
    raft_addr: &str,
    request: &LeaderRequest,
) -> Result<Result<LeaderReply, WriteError>, tonic::Status> {
    let mut client = peers
        .client(raft_addr)
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let reply = client.forward(to_payload(request)).await?;
    from_payload(reply.get_ref())
        .map_err(|e| tonic::Status::internal(format!("bad reply from leader: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redial_backoff_grows_caps_and_resets() {
        let peers = PeerClients::default();
        let addr = "127.0.0.1:1";
        assert_eq!(peers.redial_delay(addr), Duration::ZERO);
        let mut delays = Vec::new();
        for _ in 0..10 {
            peers.record_stream_result(addr, false);
            delays.push(peers.redial_delay(addr).as_millis());
        }
        assert_eq!(delays, [20, 40, 80, 160, 320, 640, 1000, 1000, 1000, 1000]);
        assert_eq!(
            peers.redial_delay("127.0.0.1:2"),
            Duration::ZERO,
            "per address"
        );
        peers.record_stream_result(addr, true);
        assert_eq!(peers.redial_delay(addr), Duration::ZERO);
    }
}
