//! `sov.v1.DeploymentService`: create, replace, read and delete deployments.

use std::sync::Arc;

use sov_proto::v1 as pb;
use sov_proto::v1::deployment_service_server::DeploymentService;
use tonic::{Request, Response, Status};

use super::{invalid, read_barrier, rejection_status, write_error_status};
use crate::raft::Replica;
use crate::state::{self, DeploymentSpec, ExportAttrs, Outcome, Proposal, Residency, Resources};

/// Page size when the client asks for none, and the most it may ask for.
pub const LIST_LIMIT_DEFAULT: u32 = 100;
pub const LIST_LIMIT_MAX: u32 = 1_000;

pub struct DeploymentApi {
    replica: Arc<Replica>,
}

impl DeploymentApi {
    pub fn new(replica: Arc<Replica>) -> Self {
        Self { replica }
    }

    async fn propose(&self, proposal: Proposal) -> Result<(u64, Outcome), Status> {
        state::validate_proposal(&proposal).map_err(invalid)?;
        let resp = self
            .replica
            .propose(proposal)
            .await
            .map_err(write_error_status)?;
        match resp.outcome {
            Outcome::Rejected(r) => Err(rejection_status(r)),
            outcome => Ok((resp.index, outcome)),
        }
    }
}

pub fn spec_from_pb(spec: pb::DeploymentSpec) -> DeploymentSpec {
    let r = spec.resources.unwrap_or_default();
    let export = spec.export.unwrap_or_default();
    let residency = spec.residency.unwrap_or_default();
    DeploymentSpec {
        name: spec.name,
        model: spec.model,
        replicas: spec.replicas,
        resources: Resources {
            gpu_count: r.gpu_count,
            gpu_model: r.gpu_model,
            gpu_memory_mib: r.gpu_memory_mib,
            cpu_millis: r.cpu_millis,
            memory_mib: r.memory_mib,
        },
        command: spec.command,
        env: spec.env.into_iter().collect(),
        labels: spec.labels.into_iter().collect(),
        export: ExportAttrs {
            eccn: if export.eccn.is_empty() {
                ExportAttrs::default().eccn
            } else {
                export.eccn
            },
            weights_published: export.weights_published,
            training_compute_log10: export.training_compute_log10,
            lineage: export.lineage,
        },
        residency: Residency {
            allowed: residency.allowed,
            // Out-of-range values are kept so validation can name them instead of clamping.
            min_location_trust: u8::try_from(residency.min_location_trust).unwrap_or(u8::MAX),
            required_certifications: residency.required_certifications,
        },
    }
}

pub fn deployment_to_pb(d: &state::Deployment) -> pb::Deployment {
    let s = &d.spec;
    let r = &s.resources;
    pb::Deployment {
        spec: Some(pb::DeploymentSpec {
            name: s.name.clone(),
            model: s.model.clone(),
            replicas: s.replicas,
            resources: Some(pb::Resources {
                gpu_count: r.gpu_count,
                gpu_model: r.gpu_model.clone(),
                gpu_memory_mib: r.gpu_memory_mib,
                cpu_millis: r.cpu_millis,
                memory_mib: r.memory_mib,
            }),
            command: s.command.clone(),
            env: s.env.clone().into_iter().collect(),
            labels: s.labels.clone().into_iter().collect(),
            export: Some(pb::ExportAttributes {
                eccn: s.export.eccn.clone(),
                weights_published: s.export.weights_published,
                training_compute_log10: s.export.training_compute_log10,
                lineage: s.export.lineage.clone(),
            }),
            residency: Some(pb::Residency {
                allowed: s.residency.allowed.clone(),
                min_location_trust: u32::from(s.residency.min_location_trust),
                required_certifications: s.residency.required_certifications.clone(),
            }),
        }),
        generation: d.generation,
        created_at_ms: d.created_at_ms,
        updated_at_ms: d.updated_at_ms,
        revision: d.revision,
    }
}

#[tonic::async_trait]
impl DeploymentService for DeploymentApi {
    async fn apply(
        &self,
        request: Request<pb::ApplyDeploymentRequest>,
    ) -> Result<Response<pb::ApplyDeploymentResponse>, Status> {
        let req = request.into_inner();
        let spec = req
            .spec
            .ok_or_else(|| Status::invalid_argument("spec: is required"))?;
        let expected_generation = (req.expected_generation > 0).then_some(req.expected_generation);
        let proposal = Proposal::ApplyDeployment {
            spec: Box::new(spec_from_pb(spec)),
            expected_generation,
        };
        match self.propose(proposal).await? {
            (
                _,
                Outcome::DeploymentApplied {
                    deployment,
                    created,
                    changed,
                },
            ) => Ok(Response::new(pb::ApplyDeploymentResponse {
                deployment: Some(deployment_to_pb(&deployment)),
                created,
                changed,
            })),
            (_, other) => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn get(
        &self,
        request: Request<pb::GetDeploymentRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        let req = request.into_inner();
        state::validate_deployment_name(&req.name).map_err(invalid)?;
        read_barrier(&self.replica, req.consistency).await?;
        let applied = self.replica.sm.read();
        let deployment = applied.state.deployments.get(&req.name).ok_or_else(|| {
            Status::not_found(format!("deployment {:?} does not exist", req.name))
        })?;
        Ok(Response::new(deployment_to_pb(deployment)))
    }

    async fn list(
        &self,
        request: Request<pb::ListDeploymentsRequest>,
    ) -> Result<Response<pb::ListDeploymentsResponse>, Status> {
        let req = request.into_inner();
        if req.limit > LIST_LIMIT_MAX {
            return Err(Status::invalid_argument(format!(
                "limit: is {}; the limit is {LIST_LIMIT_MAX}",
                req.limit
            )));
        }
        let limit = if req.limit == 0 {
            LIST_LIMIT_DEFAULT
        } else {
            req.limit
        } as usize;
        read_barrier(&self.replica, req.consistency).await?;
        let applied = self.replica.sm.read();
        let after = std::ops::Bound::Excluded(req.after.clone());
        let start = if req.after.is_empty() {
            std::ops::Bound::Unbounded
        } else {
            after
        };
        let mut page: Vec<_> = applied
            .state
            .deployments
            .range::<String, _>((start, std::ops::Bound::Unbounded))
            .take(limit + 1)
            .map(|(_, d)| deployment_to_pb(d))
            .collect();
        let next_after = if page.len() > limit {
            page.truncate(limit);
            page.last()
                .and_then(|d| d.spec.as_ref())
                .map(|s| s.name.clone())
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListDeploymentsResponse {
            deployments: page,
            next_after,
            revision: applied.state.revision,
        }))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteDeploymentRequest>,
    ) -> Result<Response<pb::DeleteDeploymentResponse>, Status> {
        let name = request.into_inner().name;
        let (revision, _) = self.propose(Proposal::DeleteDeployment { name }).await?;
        Ok(Response::new(pb::DeleteDeploymentResponse { revision }))
    }
}
