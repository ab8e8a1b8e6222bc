//! `sov.v1.NodeService` (operators: list, show, drain) and the registration part of
//! `sov.v1.AgentService` (agents report facts and inventory). Heartbeats and the assignment
//! stream of the agent channel arrive with the node agent (issue #3).

use std::sync::Arc;

use sov_proto::v1 as pb;
use sov_proto::v1::agent_service_server::AgentService;
use sov_proto::v1::node_service_server::NodeService;
use tonic::{Request, Response, Status};

use super::{propose, read_barrier};
use crate::raft::Replica;
use crate::state::node::{Gpu, Inventory, LocationTrust, Node, NodeFacts, NodeStatus};
use crate::state::{NodeRegistration, Outcome, Proposal};

fn trust_from_pb(value: &str) -> Result<LocationTrust, Status> {
    match value {
        "" | "self-reported" => Ok(LocationTrust::SelfReported),
        // Until certificates exist (issue #7) nothing can vouch for a higher level: an agent
        // claiming one is refused rather than believed (fail closed, invariant I5).
        other => Err(Status::invalid_argument(format!(
            "facts.location_trust: {other:?} cannot be claimed by an agent; only \"self-reported\" is accepted"
        ))),
    }
}

pub fn trust_name(trust: LocationTrust) -> &'static str {
    match trust {
        LocationTrust::SelfReported => "self-reported",
        LocationTrust::OperatorCertificate => "operator-certificate",
        LocationTrust::HardwareAttested => "hardware-attested",
    }
}

pub fn registration_from_pb(req: pb::RegisterNodeRequest) -> Result<NodeRegistration, Status> {
    let f = req
        .facts
        .ok_or_else(|| Status::invalid_argument("facts: are required"))?;
    let inv = req.inventory.unwrap_or_default();
    Ok(NodeRegistration {
        name: req.name,
        facts: NodeFacts {
            location_trust: trust_from_pb(&f.location_trust)?,
            country: f.country,
            subdivision: f.subdivision,
            site: f.site,
            operator: f.operator,
            operator_hq: f.operator_hq,
            ultimate_parent_hq: f.ultimate_parent_hq,
            certifications: f.certifications.into_iter().collect(),
        },
        inventory: Inventory {
            cpu_millis: inv.cpu_millis,
            memory_mib: inv.memory_mib,
            gpus: inv
                .gpus
                .into_iter()
                .map(|g| Gpu {
                    index: g.index,
                    uuid: g.uuid,
                    model: g.model,
                    memory_mib: g.memory_mib,
                    mig_enabled: g.mig_enabled,
                    driver_version: g.driver_version,
                    simulated: g.simulated,
                })
                .collect(),
        },
    })
}

pub fn node_to_pb(n: &Node) -> pb::Node {
    let f = &n.facts;
    pb::Node {
        name: n.name.clone(),
        facts: Some(pb::LocationFacts {
            country: f.country.clone(),
            subdivision: f.subdivision.clone(),
            site: f.site.clone(),
            operator: f.operator.clone(),
            operator_hq: f.operator_hq.clone(),
            ultimate_parent_hq: f.ultimate_parent_hq.clone(),
            certifications: f.certifications.clone().into_iter().collect(),
            location_trust: trust_name(f.location_trust).into(),
        }),
        inventory: Some(pb::Inventory {
            cpu_millis: n.inventory.cpu_millis,
            memory_mib: n.inventory.memory_mib,
            gpus: n
                .inventory
                .gpus
                .iter()
                .map(|g| pb::GpuDevice {
                    index: g.index,
                    uuid: g.uuid.clone(),
                    model: g.model.clone(),
                    memory_mib: g.memory_mib,
                    mig_enabled: g.mig_enabled,
                    driver_version: g.driver_version.clone(),
                    simulated: g.simulated,
                })
                .collect(),
        }),
        status: match n.status {
            NodeStatus::Ready => "ready",
            NodeStatus::Down => "down",
        }
        .into(),
        draining: n.draining,
        registered_at_ms: n.registered_at_ms,
        updated_at_ms: n.updated_at_ms,
        revision: n.revision,
    }
}

pub struct NodeApi {
    replica: Arc<Replica>,
}

impl NodeApi {
    pub fn new(replica: Arc<Replica>) -> Self {
        Self { replica }
    }

    async fn set_draining(
        &self,
        name: String,
        draining: bool,
    ) -> Result<Response<pb::Node>, Status> {
        match propose(&self.replica, Proposal::SetDraining { name, draining })
            .await?
            .1
        {
            Outcome::NodeUpdated { node } => Ok(Response::new(node_to_pb(&node))),
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }
}

#[tonic::async_trait]
impl NodeService for NodeApi {
    async fn list(
        &self,
        request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        read_barrier(&self.replica, request.get_ref().consistency).await?;
        let applied = self.replica.sm.read();
        let nodes = applied.state.nodes.values().map(node_to_pb).collect();
        Ok(Response::new(pb::ListNodesResponse {
            nodes,
            revision: applied.state.revision,
        }))
    }

    async fn get(
        &self,
        request: Request<pb::GetNodeRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        let req = request.into_inner();
        read_barrier(&self.replica, req.consistency).await?;
        let applied = self.replica.sm.read();
        let node =
            applied.state.nodes.get(&req.name).ok_or_else(|| {
                Status::not_found(format!("node {:?} is not registered", req.name))
            })?;
        Ok(Response::new(node_to_pb(node)))
    }

    async fn drain(
        &self,
        request: Request<pb::DrainNodeRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        self.set_draining(request.into_inner().name, true).await
    }

    async fn undrain(
        &self,
        request: Request<pb::UndrainNodeRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        self.set_draining(request.into_inner().name, false).await
    }
}

pub struct AgentApi {
    replica: Arc<Replica>,
}

impl AgentApi {
    pub fn new(replica: Arc<Replica>) -> Self {
        Self { replica }
    }
}

fn not_yet(what: &str) -> Status {
    Status::unimplemented(format!(
        "{what} arrives with the node agent (issue #3); this scheduler only registers nodes"
    ))
}

#[tonic::async_trait]
impl AgentService for AgentApi {
    async fn register(
        &self,
        request: Request<pb::RegisterNodeRequest>,
    ) -> Result<Response<pb::RegisterNodeResponse>, Status> {
        let registration = registration_from_pb(request.into_inner())?;
        match propose(
            &self.replica,
            Proposal::RegisterNode {
                node: Box::new(registration),
            },
        )
        .await?
        .1
        {
            Outcome::NodeRegistered { node, .. } => Ok(Response::new(pb::RegisterNodeResponse {
                revision: node.revision,
                heartbeat_ttl_ms: 0,
            })),
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn heartbeat(
        &self,
        _: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        Err(not_yet("heartbeats"))
    }

    type WatchAssignmentsStream = futures::stream::Empty<Result<pb::AssignmentEvent, Status>>;

    async fn watch_assignments(
        &self,
        _: Request<pb::WatchAssignmentsRequest>,
    ) -> Result<Response<Self::WatchAssignmentsStream>, Status> {
        Err(not_yet("the assignment stream"))
    }

    async fn report_status(
        &self,
        _: Request<pb::AllocationStatusReport>,
    ) -> Result<Response<pb::ReportStatusResponse>, Status> {
        Err(not_yet("allocation status reports"))
    }
}
