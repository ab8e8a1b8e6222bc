//! `sov.v1.ClusterService`: status and membership of the scheduler Raft group.

use std::sync::Arc;

use openraft::ServerState;
use sov_proto::v1::cluster_service_server::ClusterService;
use sov_proto::v1::{
    ClusterStatus, ClusterStatusRequest, JoinRequest, Member, MembersRequest, MembersResponse,
    RemoveRequest,
};
use tonic::{Request, Response, Status};

use super::{read_barrier, write_error_status};
use crate::raft::{RaftMetrics, Replica, SovNode};

pub struct ClusterApi {
    replica: Arc<Replica>,
}

impl ClusterApi {
    pub fn new(replica: Arc<Replica>) -> Self {
        Self { replica }
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

#[tonic::async_trait]
impl ClusterService for ClusterApi {
    async fn status(
        &self,
        _request: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatus>, Status> {
        let m = self.replica.metrics();
        let leader = self.replica.leader();
        let cluster_id = self.replica.sm.read().state.cluster.cluster_id.clone();
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
        }))
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
        self.replica
            .add_member(req.id, node, req.learner_only)
            .await
            .map_err(write_error_status)?;
        self.members(Request::new(MembersRequest { consistency: 0 }))
            .await
    }

    async fn remove(
        &self,
        request: Request<RemoveRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        let id = request.get_ref().id;
        if id == 0 {
            return Err(Status::invalid_argument("id: must be greater than 0"));
        }
        tracing::info!(id, "removing scheduler");
        self.replica
            .remove_member(id)
            .await
            .map_err(write_error_status)?;
        self.members(Request::new(MembersRequest { consistency: 0 }))
            .await
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
