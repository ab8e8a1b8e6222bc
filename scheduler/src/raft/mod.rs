//! Raft glue: openraft wired to redb storage and a tonic transport, plus [`Replica`], the one
//! handle the API uses to write, read and change membership.
//!
//! Owns: the openraft type configuration, the leader's clock stamp on every command, forwarding
//! of leader-only work from followers to the leader, and linearizable read barriers. Must not
//! touch: the meaning of commands (that is `crate::state`), or the public API's message shapes
//! (that is `crate::api`).
//!
//! Files: [`log_store`] (Raft log + vote on disk), [`state_machine`] (apply + snapshots),
//! [`network`] (outgoing peer RPCs, one cached channel per peer), [`peer_service`] (incoming
//! peer RPCs).

pub mod history_store;
pub mod log_store;
pub mod network;
pub mod peer_service;
pub mod state_machine;
#[cfg(test)]
mod storage_tests;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::async_runtime::WatchReceiver;
use openraft::errors::{
    ChangeMembershipError, ClientWriteError, ForwardToLeader, LinearizableReadError, RaftError,
};
use openraft::{ChangeMembers, ReadPolicy, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};

use crate::state::{Command, Outcome, Proposal};
use log_store::LogStore;
use network::{NetworkFactory, PeerClients};
use state_machine::StateMachineStore;

/// Where a scheduler can be reached. Stored in the Raft membership, so every replica knows every
/// peer's addresses and can point clients at the leader.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SovNode {
    /// host:port of the Raft peer service.
    pub raft_addr: String,
    /// host:port of the public gRPC API.
    pub api_addr: String,
}

impl fmt::Display for SovNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "raft={} api={}", self.raft_addr, self.api_addr)
    }
}

/// What applying a command returned, and the log index it was applied at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResponse {
    pub index: u64,
    pub outcome: Outcome,
}

openraft::declare_raft_types!(
    /// openraft types of sov: commands are [`Command`]s, nodes are [`SovNode`]s.
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        Node = SovNode,
);

pub type NodeId = u64;
pub type SovRaft = openraft::Raft<TypeConfig, StateMachineStore>;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = <TypeConfig as openraft::RaftTypeConfig>::Vote;
pub type Entry = <TypeConfig as openraft::RaftTypeConfig>::Entry;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, Vec<u8>>;
pub type RaftMetrics = openraft::RaftMetrics<TypeConfig>;

/// Tunables of the consensus layer; defaults suit a LAN or loopback cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftTuning {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many applied entries since the last one.
    pub snapshot_logs_since_last: u64,
    /// Entries kept in the log behind the snapshot, so a briefly lagging follower catches up
    /// from the log instead of a full snapshot.
    pub max_in_snapshot_log_to_keep: u64,
    /// Most entries in one AppendEntries message.
    pub max_payload_entries: u64,
    /// How long a client write or read barrier may wait before the API answers UNAVAILABLE.
    pub request_timeout_ms: u64,
}

impl Default for RaftTuning {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 600,
            election_timeout_max_ms: 1200,
            snapshot_logs_since_last: 10_000,
            max_in_snapshot_log_to_keep: 1_000,
            max_payload_entries: 512,
            request_timeout_ms: 10_000,
        }
    }
}

impl RaftTuning {
    fn openraft_config(&self) -> anyhow::Result<openraft::Config> {
        let config = openraft::Config {
            cluster_name: "sov".into(),
            heartbeat_interval: self.heartbeat_interval_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_logs_since_last),
            max_in_snapshot_log_to_keep: self.max_in_snapshot_log_to_keep,
            max_payload_entries: self.max_payload_entries,
            enable_pre_vote: Some(true),
            ..Default::default()
        };
        Ok(config.validate()?)
    }
}

/// Errors of leader-only operations, in the form they cross the wire between schedulers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum WriteError {
    /// This node is not the leader and could not hand the request over. `leader` is the best
    /// known leader, so a client can retry there.
    #[error("this scheduler is not the leader{}", leader_hint(.leader))]
    NotLeader { leader: Option<(NodeId, SovNode)> },
    /// No quorum or no leader right now; retrying later may succeed.
    #[error("{0}")]
    Unavailable(String),
    /// The request itself is wrong (e.g. removing the last voter); retrying will not help.
    #[error("{0}")]
    Invalid(String),
    /// Storage or Raft core failure on the leader.
    #[error("internal error: {0}")]
    Internal(String),
}

fn leader_hint(leader: &Option<(NodeId, SovNode)>) -> String {
    match leader {
        Some((id, node)) => format!("; the leader is scheduler {id} at {}", node.api_addr),
        None => "; no leader is known (election in progress?)".into(),
    }
}

/// Leader-only work that a follower forwards over the peer channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LeaderRequest {
    Propose(Proposal),
    ReadIndex,
    AddMember {
        id: NodeId,
        node: SovNode,
        learner_only: bool,
    },
    RemoveMember {
        id: NodeId,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LeaderReply {
    Proposed(Box<CommandResponse>),
    ReadIndex(u64),
    MembershipChanged,
}

/// The replicated state as one scheduler sees it, plus the means to change it.
pub struct Replica {
    pub id: NodeId,
    pub node: SovNode,
    pub raft: SovRaft,
    pub sm: StateMachineStore,
    pub peers: Arc<PeerClients>,
    request_timeout: Duration,
    /// Serializes membership changes on the leader: openraft refuses a change while another is
    /// uncommitted, so concurrent joins queue here instead of failing.
    membership_change: tokio::sync::Mutex<()>,
    storage_closed: StorageClosed,
    pub log_flushes: Arc<log_store::FlushStats>,
    /// Whether this replica leads, changed only when that changes: see [`Replica::leading`].
    leading: tokio::sync::watch::Receiver<bool>,
}

/// Tells when both redb files of a replica are closed, i.e. every task that used them is gone.
#[derive(Clone)]
pub struct StorageClosed {
    log: std::sync::Weak<redb::Database>,
    state: std::sync::Weak<dyn std::any::Any + Send + Sync>,
}

impl StorageClosed {
    pub fn is_closed(&self) -> bool {
        self.log.strong_count() == 0 && self.state.strong_count() == 0
    }
}

/// Follows Raft's metrics in one task and publishes only whether this replica leads.
fn watch_leadership(raft: &SovRaft) -> tokio::sync::watch::Receiver<bool> {
    let mut metrics = raft.metrics();
    let leads = |m: &RaftMetrics| m.state == ServerState::Leader;
    let (tx, rx) = tokio::sync::watch::channel(leads(&metrics.borrow_watched()));
    tokio::spawn(async move {
        loop {
            let now = leads(&metrics.borrow_watched());
            tx.send_if_modified(|was| std::mem::replace(was, now) != now);
            if metrics.changed().await.is_err() {
                // Raft stopped: nobody leads here any more.
                tx.send_replace(false);
                return;
            }
        }
    });
    rx
}

impl Replica {
    /// Opens (or creates) the on-disk state under `data_dir` and starts the Raft node, calling
    /// peers with `peer_tls` when given (see [`PeerClients`]). The node stays passive until it is initialized ([`Replica::bootstrap`]) or added by a leader.
    pub async fn open(
        id: NodeId,
        node: SovNode,
        data_dir: &Path,
        tuning: &RaftTuning,
        peer_tls: Option<tonic::transport::ClientTlsConfig>,
    ) -> anyhow::Result<Arc<Self>> {
        anyhow::ensure!(id > 0, "node id must be greater than 0");
        std::fs::create_dir_all(data_dir)?;
        let log_store = LogStore::open(data_dir)?;
        let sm = StateMachineStore::open(data_dir)?;
        let log_flushes = log_store.flush_stats();
        let storage_closed = StorageClosed {
            log: log_store.closed_probe(),
            state: sm.closed_probe(),
        };
        let peers = Arc::new(PeerClients::new(peer_tls));
        let network = NetworkFactory::new(peers.clone());
        let config = Arc::new(tuning.openraft_config()?);
        let raft = SovRaft::new(id, config, network, log_store, sm.clone()).await?;
        let leading = watch_leadership(&raft);
        sm.set_leading(leading.clone());
        Ok(Arc::new(Self {
            id,
            node,
            raft,
            sm,
            peers,
            request_timeout: Duration::from_millis(tuning.request_timeout_ms),
            membership_change: tokio::sync::Mutex::new(()),
            storage_closed,
            log_flushes,
            leading,
        }))
    }

    /// Changes when this replica starts or stops leading; ends (`changed()` fails) when Raft
    /// shuts down. For tasks that must stop when leadership goes (the assignment streams):
    /// Raft's metrics change on every commit, and 10,000 streams waking for each would cost
    /// more than the commits.
    pub fn leading(&self) -> tokio::sync::watch::Receiver<bool> {
        self.leading.clone()
    }

    /// Makes this node the sole voter of a new cluster, unless it already belongs to one. The
    /// cluster id is proposed by the first leader (see [`Replica::ensure_cluster_id`]).
    pub async fn bootstrap(&self) -> anyhow::Result<bool> {
        if self.raft.is_initialized().await? {
            return Ok(false);
        }
        let members = BTreeMap::from([(self.id, self.node.clone())]);
        self.raft.initialize(members).await?;
        Ok(true)
    }

    /// On the leader: proposes a random cluster id if the state has none yet. Idempotent, and
    /// safe to race: apply keeps only the first id.
    pub async fn ensure_cluster_id(&self) -> Result<(), WriteError> {
        if !self.sm.read().state.cluster.cluster_id.is_empty() || !self.raft.is_leader() {
            return Ok(());
        }
        let cluster_id = format!("sov-{:016x}", rand::random::<u64>());
        self.propose_local(Proposal::InitCluster { cluster_id })
            .await
            .map(|_| ())
    }

    /// Probe for [`StorageClosed::is_closed`]; hold it, drop the replica, then poll.
    pub fn storage_closed(&self) -> StorageClosed {
        self.storage_closed.clone()
    }

    pub fn metrics(&self) -> RaftMetrics {
        self.raft.metrics().borrow_watched().clone()
    }

    /// The leader as this node believes it to be.
    pub fn leader(&self) -> Option<(NodeId, SovNode)> {
        let m = self.metrics();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id)?.clone();
        Some((id, node))
    }

    /// Reads the state in place: heartbeats and assignment streams ask this thousands of
    /// times a second, and `metrics()` clones the whole metrics (membership included).
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow_watched().state == ServerState::Leader
    }

    /// Commits a proposal and returns what applying it did. Followers forward to the leader
    /// (one hop, bounded by the request timeout).
    pub async fn propose(&self, proposal: Proposal) -> Result<CommandResponse, WriteError> {
        match self.leader_call(LeaderRequest::Propose(proposal)).await? {
            LeaderReply::Proposed(resp) => Ok(*resp),
            other => Err(WriteError::Internal(format!(
                "leader answered {other:?} to a proposal"
            ))),
        }
    }

    /// Blocks until this replica has applied everything committed before the call, so a read
    /// that follows is linearizable (the read-index protocol; followers ask the leader for the
    /// index, then wait for their own state machine).
    pub async fn read_barrier(&self) -> Result<u64, WriteError> {
        let index = match self.leader_call(LeaderRequest::ReadIndex).await? {
            LeaderReply::ReadIndex(i) => i,
            other => {
                return Err(WriteError::Internal(format!(
                    "leader answered {other:?} to a read index"
                )));
            }
        };
        self.raft
            .wait(Some(self.request_timeout))
            .applied_index_at_least(Some(index), "read barrier")
            .await
            .map_err(|e| {
                WriteError::Unavailable(format!(
                    "this scheduler did not catch up to index {index}: {e}"
                ))
            })?;
        Ok(index)
    }

    pub async fn add_member(
        &self,
        id: NodeId,
        node: SovNode,
        learner_only: bool,
    ) -> Result<(), WriteError> {
        self.leader_call(LeaderRequest::AddMember {
            id,
            node,
            learner_only,
        })
        .await
        .map(|_| ())
    }

    pub async fn remove_member(&self, id: NodeId) -> Result<(), WriteError> {
        self.leader_call(LeaderRequest::RemoveMember { id })
            .await
            .map(|_| ())
    }

    /// Runs `request` here if this node is the leader, else forwards it to the leader. During
    /// an election (no leader known) it waits, bounded by the request timeout, for one to emerge
    /// rather than failing a client in the middle of a failover.
    async fn leader_call(&self, request: LeaderRequest) -> Result<LeaderReply, WriteError> {
        let first = self.leader_call_once(request.clone()).await;
        if !matches!(first, Err(WriteError::NotLeader { leader: None })) {
            return first;
        }
        let elected = self
            .raft
            .wait(Some(self.request_timeout))
            .metrics(|m| m.current_leader.is_some(), "a leader is known")
            .await;
        match elected {
            Ok(_) => self.leader_call_once(request).await,
            Err(_) => first,
        }
    }

    async fn leader_call_once(&self, request: LeaderRequest) -> Result<LeaderReply, WriteError> {
        match self.handle_leader_request(request.clone()).await {
            Err(WriteError::NotLeader {
                leader: Some((leader_id, leader_node)),
            }) if leader_id != self.id => {
                let leader = Some((leader_id, leader_node.clone()));
                let forwarded = tokio::time::timeout(
                    self.request_timeout,
                    network::forward(&self.peers, &leader_node.raft_addr, &request),
                )
                .await;
                match forwarded {
                    Ok(Ok(reply)) => reply,
                    // The leader is unreachable from here; the client may still reach it.
                    Ok(Err(e)) => {
                        tracing::warn!(leader_id, error = %e, "forwarding to the leader failed");
                        Err(WriteError::NotLeader { leader })
                    }
                    Err(_) => Err(WriteError::Unavailable(format!(
                        "the leader (scheduler {leader_id}) did not answer within {:?}",
                        self.request_timeout
                    ))),
                }
            }
            other => other,
        }
    }

    /// Leader-only work, done locally; never forwards (so forwarding is at most one hop).
    pub async fn handle_leader_request(
        &self,
        request: LeaderRequest,
    ) -> Result<LeaderReply, WriteError> {
        let work = async {
            match request {
                LeaderRequest::Propose(p) => self
                    .propose_local(p)
                    .await
                    .map(|r| LeaderReply::Proposed(Box::new(r))),
                LeaderRequest::ReadIndex => {
                    self.read_index_local().await.map(LeaderReply::ReadIndex)
                }
                LeaderRequest::AddMember {
                    id,
                    node,
                    learner_only,
                } => self
                    .add_member_local(id, node, learner_only)
                    .await
                    .map(|_| LeaderReply::MembershipChanged),
                LeaderRequest::RemoveMember { id } => self
                    .remove_member_local(id)
                    .await
                    .map(|_| LeaderReply::MembershipChanged),
            }
        };
        // Catching up a new learner can take long; everything else is bounded by the timeout.
        tokio::time::timeout(self.request_timeout * 6, work)
            .await
            .unwrap_or_else(|_| {
                Err(WriteError::Unavailable(
                    "timed out waiting for the Raft quorum".into(),
                ))
            })
    }

    async fn propose_local(&self, proposal: Proposal) -> Result<CommandResponse, WriteError> {
        let command = Command {
            at_ms: now_ms(),
            proposal,
        };
        let work = self.raft.client_write(command);
        match tokio::time::timeout(self.request_timeout, work).await {
            Ok(Ok(resp)) => Ok(resp.response().clone()),
            Ok(Err(e)) => Err(self.map_write_error(e)),
            Err(_) => Err(WriteError::Unavailable(
                "the write was not committed in time (is a quorum of schedulers up?); its outcome is unknown".into(),
            )),
        }
    }

    async fn read_index_local(&self) -> Result<u64, WriteError> {
        let work = self.raft.ensure_linearizable(ReadPolicy::ReadIndex);
        match tokio::time::timeout(self.request_timeout, work).await {
            Ok(Ok(read_log_id)) => Ok(read_log_id.log_id().index),
            Ok(Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f)))) => {
                Err(self.not_leader(f))
            }
            Ok(Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(e)))) => Err(
                WriteError::Unavailable(format!("no quorum to confirm leadership: {e}")),
            ),
            Ok(Err(RaftError::Fatal(f))) => Err(WriteError::Internal(f.to_string())),
            Err(_) => Err(WriteError::Unavailable(
                "leadership could not be confirmed in time".into(),
            )),
        }
    }

    async fn add_member_local(
        &self,
        id: NodeId,
        node: SovNode,
        learner_only: bool,
    ) -> Result<(), WriteError> {
        if id == 0 {
            return Err(WriteError::Invalid(
                "scheduler id must be greater than 0".into(),
            ));
        }
        let _serialized = self.membership_change.lock().await;
        let m = self.metrics();
        let membership = m.membership_config.membership();
        if let Some(existing) = membership.get_node(&id)
            && existing != &node
        {
            return Err(WriteError::Invalid(format!(
                "scheduler {id} is already a member with addresses {existing}; remove it first to change them"
            )));
        }
        if let Some((other, _)) = membership
            .nodes()
            .find(|(other, n)| **other != id && n.raft_addr == node.raft_addr)
        {
            return Err(WriteError::Invalid(format!(
                "raft address {} is already used by scheduler {other}",
                node.raft_addr
            )));
        }
        self.raft
            .add_learner(id, node, true)
            .await
            .map_err(|e| self.map_write_error(e))?;
        if !learner_only {
            let voters = BTreeSet::from([id]);
            self.raft
                .change_membership(ChangeMembers::AddVoterIds(voters), false)
                .await
                .map_err(|e| self.map_write_error(e))?;
        }
        Ok(())
    }

    async fn remove_member_local(&self, id: NodeId) -> Result<(), WriteError> {
        let _serialized = self.membership_change.lock().await;
        let m = self.metrics();
        let membership = m.membership_config.membership();
        if membership.get_node(&id).is_none() {
            return Err(WriteError::Invalid(format!(
                "scheduler {id} is not a member of this cluster"
            )));
        }
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let change = if voters.contains(&id) {
            if voters.len() == 1 {
                return Err(WriteError::Invalid(format!(
                    "scheduler {id} is the last voter; removing it would leave the cluster without a quorum"
                )));
            }
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        self.raft
            .change_membership(change, false)
            .await
            .map_err(|e| self.map_write_error(e))?;
        Ok(())
    }

    fn not_leader(&self, f: ForwardToLeader<TypeConfig>) -> WriteError {
        let leader = match (f.leader_id, f.leader_node) {
            (Some(id), Some(node)) => Some((id, node)),
            _ => None,
        };
        WriteError::NotLeader { leader }
    }

    fn map_write_error(
        &self,
        e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>,
    ) -> WriteError {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => self.not_leader(f),
            RaftError::APIError(ClientWriteError::LogEntryDiscarded(f)) => {
                WriteError::Unavailable(format!(
                    "leadership changed while writing; the outcome is unknown, check and retry ({})",
                    leader_hint(&self.not_leader(f).leader_opt())
                ))
            }
            RaftError::APIError(ClientWriteError::ChangeMembershipError(
                ChangeMembershipError::InProgress(e),
            )) => WriteError::Unavailable(format!(
                "another membership change is still in progress; retry shortly ({e})"
            )),
            RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                WriteError::Invalid(e.to_string())
            }
            RaftError::APIError(other) => WriteError::Invalid(other.to_string()),
            RaftError::Fatal(f) => WriteError::Internal(f.to_string()),
        }
    }
}

impl WriteError {
    fn leader_opt(self) -> Option<(NodeId, SovNode)> {
        match self {
            WriteError::NotLeader { leader } => leader,
            _ => None,
        }
    }
}

/// The leader's wall clock in milliseconds since the Unix epoch. Only proposers call this;
/// `apply` never does.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
