//! `sov-proto`: the generated gRPC bindings of the sov.v1 API.
//!
//! Owns the wire contract and nothing else: no logic, no validation (that lives in the
//! scheduler's `api` module). Three services make up sov.v1:
//! - the public API (`ClusterService`, `DeploymentService`, and the later `NodeService`,
//!   `PolicyService`, `HistoryService`) used by `sovctl` and other clients on port 7400;
//! - the agent channel (`AgentService`), also on port 7400;
//! - the Raft peer service (`RaftPeer`) between schedulers on port 7401.
//!
//! Also the file formats and proofs sov's programs share: [`snapshot_file`], a backup made of the
//! `Snapshot` stream, written by `sovctl` and read by `sov-scheduler restore`; [`merkle`], the
//! RFC 9162 tree of the placement history; and [`evidence`], signed checkpoints and the export
//! file that `sovctl audit verify` checks offline.

pub mod evidence;
pub mod identity;
pub mod merkle;
pub mod snapshot_file;
pub mod tls;
pub mod token;

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("sov.v1");
}

/// Encoded `FileDescriptorSet` of sov.v1, for gRPC server reflection (so `grpcurl` works).
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("sov_v1_descriptor");

/// Trailer key carrying the leader's API address when a call could not be forwarded.
pub const LEADER_API_METADATA: &str = "sov-leader-api";
