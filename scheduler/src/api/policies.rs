//! `sov.v1.PolicyService`: apply, read and list policy bundle versions.
//!
//! A bundle is compiled here first so an invalid one is refused with every problem
//! (`file:line:column: message`) before anything is proposed; apply compiles it again, the same
//! way on every replica, before it becomes a version.

use std::sync::Arc;

use sov_proto::v1 as pb;
use sov_proto::v1::policy_service_server::PolicyService;
use tonic::{Request, Response, Status};

use super::{propose, read_barrier};
use crate::policy::{self, CompiledPolicy, Effect, OnChange};
use crate::raft::Replica;
use crate::state::policies::{PolicyBundle, PolicyVersion};
use crate::state::{Outcome, Proposal};

pub struct PolicyApi {
    replica: Arc<Replica>,
}

impl PolicyApi {
    pub fn new(replica: Arc<Replica>) -> Self {
        Self { replica }
    }
}

pub fn on_change_name(on_change: OnChange) -> &'static str {
    match on_change {
        OnChange::Audit => "audit",
        OnChange::Migrate => "migrate",
        OnChange::StopNow => "stop-now",
    }
}

fn version_to_pb(
    v: &PolicyVersion,
    compiled: Option<&CompiledPolicy>,
    with_files: bool,
) -> pb::PolicyVersion {
    pb::PolicyVersion {
        version: v.version,
        bundle_hash: v.hash.clone(),
        activated_at_ms: v.activated_at_ms,
        author: v.author.clone(),
        comment: v.comment.clone(),
        files: if with_files {
            v.files.clone().into_iter().collect()
        } else {
            Default::default()
        },
        rules: compiled
            .map(|c| {
                c.rules()
                    .iter()
                    .map(|r| pb::PolicyRule {
                        id: r.id.clone(),
                        effect: match r.effect {
                            Effect::Permit => "permit",
                            Effect::Forbid => "forbid",
                        }
                        .into(),
                        reason: r.reason.clone(),
                        on_change: match r.effect {
                            Effect::Permit => String::new(),
                            Effect::Forbid => on_change_name(r.on_change).into(),
                        },
                        file: r.file.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        revision: v.revision,
        changed: true,
    }
}

#[tonic::async_trait]
impl PolicyService for PolicyApi {
    async fn apply(
        &self,
        request: Request<pb::ApplyPolicyRequest>,
    ) -> Result<Response<pb::PolicyVersion>, Status> {
        let req = request.into_inner();
        if !req.plan_hash.is_empty() {
            return Err(Status::unimplemented(
                "plan_hash checks arrive with `sovctl policy plan` (issue #5)",
            ));
        }
        let bundle = req
            .bundle
            .ok_or_else(|| Status::invalid_argument("bundle: is required"))?;
        let files = bundle.files.into_iter().collect();
        let compiled = policy::compile(&files)
            .map_err(|e| Status::invalid_argument(format!("invalid policy bundle:\n{e}")))?;
        let proposal = Proposal::ApplyPolicy {
            bundle: Box::new(PolicyBundle {
                files,
                author: bundle.author,
                comment: bundle.comment,
            }),
        };
        let (version, changed) = match propose(&self.replica, proposal).await?.1 {
            Outcome::PolicyApplied {
                version, changed, ..
            } => (version, changed),
            other => return Err(Status::internal(format!("unexpected outcome {other:?}"))),
        };
        let applied = self.replica.sm.read();
        let stored = applied
            .state
            .policies
            .get(version as usize - 1)
            .ok_or_else(|| Status::internal(format!("version {version} missing after apply")))?;
        let mut out = version_to_pb(stored, Some(&compiled), false);
        out.changed = changed;
        Ok(Response::new(out))
    }

    async fn get(
        &self,
        request: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::PolicyVersion>, Status> {
        let req = request.into_inner();
        read_barrier(&self.replica, req.consistency).await?;
        let applied = self.replica.sm.read();
        let versions = &applied.state.policies;
        let wanted = if req.version == 0 {
            versions.len() as u64
        } else {
            req.version
        };
        let Some(v) = wanted.checked_sub(1).and_then(|i| versions.get(i as usize)) else {
            return Err(if versions.is_empty() {
                Status::not_found(
                    "no policy bundle has been applied yet; apply one with `sovctl policy apply deploy/policies`",
                )
            } else {
                Status::not_found(format!(
                    "policy version {} does not exist; versions are 1 to {}",
                    req.version,
                    versions.len()
                ))
            });
        };
        let compiled = if v.version == versions.len() as u64 {
            applied.state.active_policy().map(|(_, c)| c)
        } else {
            policy::compile(&v.files).ok()
        };
        Ok(Response::new(version_to_pb(v, compiled.as_ref(), true)))
    }

    async fn list(
        &self,
        request: Request<pb::ListPoliciesRequest>,
    ) -> Result<Response<pb::ListPoliciesResponse>, Status> {
        read_barrier(&self.replica, request.get_ref().consistency).await?;
        let applied = self.replica.sm.read();
        let versions = applied
            .state
            .policies
            .iter()
            .map(|v| version_to_pb(v, None, false))
            .collect();
        Ok(Response::new(pb::ListPoliciesResponse { versions }))
    }
}
