//! The public gRPC API (sov.v1) on port 7400: request validation, mapping to proposals and
//! reads, and mapping of every failure to a status a client can act on.
//!
//! Owns: the translation between protobuf messages and core types, and the error contract:
//! - bad input -> `INVALID_ARGUMENT` naming the field, before anything is proposed;
//! - a deterministic rejection at apply time -> `NOT_FOUND` / `FAILED_PRECONDITION` /
//!   `RESOURCE_EXHAUSTED`;
//! - no reachable leader -> `UNAVAILABLE`, with the trailer `sov-leader-api` naming the leader's
//!   API address when one is known, so `sovctl` can retry there.
//!
//! Must not touch: Raft internals (it goes through [`crate::raft::Replica`]) or state directly
//! except to read it after a read barrier.

pub mod agents;
pub mod attest;
pub mod auth;
pub mod cluster;
pub mod deployments;
pub mod history;
pub mod nodes;
pub mod policies;
pub mod reports;

use std::sync::Arc;

use sov_proto::v1::ReadConsistency;
use tonic::Status;
use tonic::metadata::MetadataValue;

use crate::raft::{Replica, WriteError};
use crate::state::{self, Outcome, Proposal, Rejection, ValidationError};

pub use agents::AgentApi;
pub use cluster::ClusterApi;
pub use deployments::DeploymentApi;
pub use history::HistoryApi;
pub use nodes::NodeApi;
pub use policies::PolicyApi;

/// Largest request the public API accepts; specs are far smaller.
pub const REQUEST_BYTES_MAX: usize = 4 * 1024 * 1024;

pub fn write_error_status(e: WriteError) -> Status {
    match &e {
        WriteError::NotLeader { leader } => {
            let mut status = Status::unavailable(e.to_string());
            if let Some((_, node)) = leader
                && let Ok(v) = MetadataValue::try_from(node.api_addr.as_str())
            {
                status
                    .metadata_mut()
                    .insert(sov_proto::LEADER_API_METADATA, v);
            }
            status
        }
        WriteError::Unavailable(msg) => Status::unavailable(msg.clone()),
        WriteError::Invalid(msg) => Status::invalid_argument(msg.clone()),
        WriteError::Internal(msg) => Status::internal(msg.clone()),
    }
}

pub fn invalid(e: ValidationError) -> Status {
    Status::invalid_argument(e.to_string())
}

pub fn rejection_status(r: Rejection) -> Status {
    match r {
        Rejection::NotFound(_) | Rejection::NodeNotFound(_) => Status::not_found(r.to_string()),
        Rejection::GenerationMismatch { .. } | Rejection::PlanHashMismatch { .. } => {
            Status::failed_precondition(r.to_string())
        }
        Rejection::Invalid(e) => invalid(e),
        Rejection::InvalidPolicy(_) => Status::invalid_argument(r.to_string()),
        Rejection::TooManyDeployments { .. }
        | Rejection::TooManyNodes { .. }
        | Rejection::TooManyPolicyVersions { .. } => Status::resource_exhausted(r.to_string()),
    }
}

/// Validates a proposal (bad input -> `INVALID_ARGUMENT`, nothing written), commits it, and
/// maps a deterministic rejection at apply time to its status. Returns the log index and what
/// applying did.
pub async fn propose(replica: &Replica, proposal: Proposal) -> Result<(u64, Outcome), Status> {
    state::validate_proposal(&proposal).map_err(invalid)?;
    let resp = replica
        .propose(proposal)
        .await
        .map_err(write_error_status)?;
    match resp.outcome {
        Outcome::Rejected(r) => Err(rejection_status(r)),
        outcome => Ok((resp.index, outcome)),
    }
}

/// Waits until this replica may answer a read with the requested consistency.
pub async fn read_barrier(replica: &Arc<Replica>, consistency: i32) -> Result<(), Status> {
    match ReadConsistency::try_from(consistency) {
        Ok(ReadConsistency::Stale) => Ok(()),
        Ok(ReadConsistency::Unspecified | ReadConsistency::Linearizable) => replica
            .read_barrier()
            .await
            .map(|_| ())
            .map_err(write_error_status),
        Err(_) => Err(Status::invalid_argument(format!(
            "consistency: unknown value {consistency}; use 1 (linearizable) or 2 (stale)"
        ))),
    }
}
