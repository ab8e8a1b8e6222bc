//! `sov.v1.NodeService` (operators: list, show, drain) and the conversions of node facts and
//! inventory between protobuf and the core types (shared with the agent channel, `agents.rs`).

use std::collections::HashMap;
use std::sync::Arc;

use sov_proto::v1 as pb;
use sov_proto::v1::node_service_server::NodeService;
use tonic::{Request, Response, Status};

use super::deployments::replica_to_pb;
use super::{propose, read_barrier};
use crate::raft::Replica;
use crate::state::node::{Gpu, Inventory, LocationTrust, Node, NodeFacts};
use crate::state::{Allocation, NodeRegistration, Outcome, Proposal, State};

/// A trust level an agent sends for `field`. An agent cannot vouch for itself: a higher level
/// comes only from its certificate (`attest`), so a claim of one is refused rather than
/// believed (fail closed, invariant I5).
fn trust_from_pb(field: &str, value: &str) -> Result<LocationTrust, Status> {
    match value {
        "" | "self-reported" => Ok(LocationTrust::SelfReported),
        other => Err(Status::invalid_argument(format!(
            "{field}: {other:?} cannot be claimed by an agent; only \"self-reported\" is accepted (the agent's certificate carries what the operator vouches for)"
        ))),
    }
}

pub fn trust_name(trust: LocationTrust) -> &'static str {
    trust.as_str()
}

fn port(field: &str, value: u32) -> Result<u16, Status> {
    u16::try_from(value)
        .map_err(|_| Status::invalid_argument(format!("{field}: {value} is not a port number")))
}

pub fn registration_from_pb(req: pb::RegisterNodeRequest) -> Result<NodeRegistration, Status> {
    let f = req
        .facts
        .ok_or_else(|| Status::invalid_argument("facts: are required"))?;
    // What an agent says of its own facts is self-reported whatever it sends; the scheduler
    // sets the levels from its certificate (`attest`).
    for (fact, trust) in &f.fact_trust {
        if !sov_proto::identity::LOCATION_FACTS.contains(&fact.as_str()) {
            return Err(Status::invalid_argument(format!(
                "facts.fact_trust: {fact:?} is not a location fact (they are {})",
                sov_proto::identity::LOCATION_FACTS.join(", ")
            )));
        }
        trust_from_pb(&format!("facts.fact_trust.{fact}"), trust)?;
    }
    let inv = req.inventory.unwrap_or_default();
    Ok(NodeRegistration {
        name: req.name,
        facts: NodeFacts {
            location_trust: trust_from_pb("facts.location_trust", &f.location_trust)?,
            country: f.country,
            subdivision: f.subdivision,
            site: f.site,
            operator: f.operator,
            operator_hq: f.operator_hq,
            ultimate_parent_hq: f.ultimate_parent_hq,
            certifications: f.certifications.into_iter().collect(),
            fact_trust: Default::default(),
        },
        inventory: Inventory {
            cpu_millis: inv.cpu_millis,
            memory_mib: inv.memory_mib,
            port_first: port("inventory.port_first", inv.port_first)?,
            port_last: port("inventory.port_last", inv.port_last)?,
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

/// Location facts as the wire carries them.
pub fn facts_to_pb(f: &NodeFacts) -> pb::LocationFacts {
    pb::LocationFacts {
        country: f.country.clone(),
        subdivision: f.subdivision.clone(),
        site: f.site.clone(),
        operator: f.operator.clone(),
        operator_hq: f.operator_hq.clone(),
        ultimate_parent_hq: f.ultimate_parent_hq.clone(),
        certifications: f.certifications.clone().into_iter().collect(),
        location_trust: trust_name(f.location_trust).into(),
        fact_trust: f
            .trust_by_fact()
            .map(|(name, trust)| (name.to_owned(), trust.as_str().to_owned()))
            .collect(),
    }
}

/// Inventory as the wire carries it, ports as declared (0/0 = the default range). Agents send
/// this; the scheduler's answers fill in the effective range.
pub fn inventory_to_pb(inv: &Inventory) -> pb::Inventory {
    pb::Inventory {
        cpu_millis: inv.cpu_millis,
        memory_mib: inv.memory_mib,
        gpus: inv
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
        port_first: u32::from(inv.port_first),
        port_last: u32::from(inv.port_last),
    }
}

/// A node as clients see it, with the allocations placed on it (`allocations` yields them).
pub fn node_to_pb<'a>(n: &Node, allocations: impl IntoIterator<Item = &'a Allocation>) -> pb::Node {
    let (port_first, port_last) = n.inventory.port_range();
    pb::Node {
        name: n.name.clone(),
        facts: Some(facts_to_pb(&n.facts)),
        inventory: Some(pb::Inventory {
            port_first: u32::from(port_first),
            port_last: u32::from(port_last),
            ..inventory_to_pb(&n.inventory)
        }),
        status: n.status.as_str().into(),
        draining: n.draining,
        drain_deadline_ms: n.drain_deadline_ms,
        registered_at_ms: n.registered_at_ms,
        updated_at_ms: n.updated_at_ms,
        revision: n.revision,
        allocations: allocations
            .into_iter()
            .map(|a| pb::NodeAllocation {
                deployment: a.deployment.clone(),
                replica: Some(replica_to_pb(a)),
            })
            .collect(),
    }
}

/// Allocations grouped by node, in one pass (listing 10k nodes must not scan allocations 10k
/// times).
fn allocations_by_node(state: &State) -> HashMap<&str, Vec<&Allocation>> {
    let mut by_node: HashMap<&str, Vec<&Allocation>> = HashMap::new();
    for a in state.allocations.values() {
        by_node.entry(a.node.as_str()).or_default().push(a);
    }
    by_node
}

fn node_with_allocations(state: &State, n: &Node) -> pb::Node {
    node_to_pb(n, state.allocations.values().filter(|a| a.node == n.name))
}

/// How long the replicas of a drained node may keep running when the operator gives no
/// deadline (Nomad's default too): long enough for replacements to load their weights.
pub const DRAIN_DEADLINE_MS_DEFAULT: u64 = 3_600_000;

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
        deadline_ms: u64,
    ) -> Result<Response<pb::Node>, Status> {
        let proposal = Proposal::SetDraining {
            name,
            draining,
            deadline_ms,
        };
        match propose(&self.replica, proposal).await?.1 {
            Outcome::NodeUpdated { node } => Ok(Response::new(node_with_allocations(
                &self.replica.sm.read().state,
                &node,
            ))),
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
        let by_node = allocations_by_node(&applied.state);
        let nodes = applied
            .state
            .nodes
            .values()
            .map(|n| {
                let allocs = by_node.get(n.name.as_str()).into_iter().flatten().copied();
                node_to_pb(n, allocs)
            })
            .collect();
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
        Ok(Response::new(node_with_allocations(&applied.state, node)))
    }

    async fn drain(
        &self,
        request: Request<pb::DrainNodeRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        let req = request.into_inner();
        let deadline_ms = match (req.force, req.deadline_ms) {
            (true, 0) => 0,
            (true, _) => {
                return Err(Status::invalid_argument(
                    "force: stops the replicas at once, so it takes no deadline_ms; pass one or the other",
                ));
            }
            (false, 0) => DRAIN_DEADLINE_MS_DEFAULT,
            (false, ms) => ms,
        };
        self.set_draining(req.name, true, deadline_ms).await
    }

    async fn undrain(
        &self,
        request: Request<pb::UndrainNodeRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        self.set_draining(request.into_inner().name, false, 0).await
    }
}
