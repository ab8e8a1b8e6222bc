//! `sov.v1.PolicyService`: apply, read and list policy bundle versions.
//!
//! A bundle is compiled here first so an invalid one is refused with every problem
//! (`file:line:column: message`) before anything is proposed; apply compiles it again, the same
//! way on every replica, before it becomes a version.

use std::sync::Arc;

use sov_proto::v1 as pb;
use sov_proto::v1::policy_service_server::PolicyService;
use tonic::{Request, Response, Status};

use super::deployments::with_statuses;
use super::{propose, read_barrier, rejection_status};
use crate::placement;
use crate::policy::{self, CompiledPolicy, Effect, OnChange};
use crate::raft::{Replica, now_ms};
use crate::reconcile::{self, status};
use crate::state::compliance::{self, Change};
use crate::state::plan::PolicyGate;
use crate::state::policies::{PolicyBundle, PolicyVersion};
use crate::state::{self, Command, Outcome, Proposal, State};

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
        impact: Vec::new(),
        plan_hash: String::new(),
    }
}

/// A bundle from the wire, compiled: an invalid one is refused with every problem
/// (`file:line:column: message`) before anything is proposed or planned.
fn bundle_from_pb(
    bundle: Option<pb::PolicyBundle>,
) -> Result<(PolicyBundle, CompiledPolicy), Status> {
    let bundle = bundle.ok_or_else(|| Status::invalid_argument("bundle: is required"))?;
    let files = bundle.files.into_iter().collect();
    let compiled = policy::compile(&files)
        .map_err(|e| Status::invalid_argument(format!("invalid policy bundle:\n{e}")))?;
    Ok((
        PolicyBundle {
            files,
            author: bundle.author,
            comment: bundle.comment,
        },
        compiled,
    ))
}

pub fn change_to_pb(c: &Change) -> pb::AllocationImpact {
    pb::AllocationImpact {
        allocation: c.allocation.clone(),
        deployment: c.deployment.clone(),
        node: c.node.clone(),
        action: c.action.as_str().into(),
        rules: c.rules.clone(),
        drain: c.drain,
    }
}

/// Applies `bundle` to a copy of `state`, exactly as the real apply would at the next index,
/// and reports what it would do: the allocations it stops, moves or flags, the deployments it
/// leaves short of replicas, and the plan hash.
fn dry_run(
    mut state: State,
    bundle: PolicyBundle,
    compiled: &CompiledPolicy,
) -> Result<pb::PolicyPlan, Status> {
    // The copy must not share the real state's policy cache: it would leave the evaluator of a
    // version that does not exist there.
    state.policy_cache = Default::default();
    let before = {
        let mut gate = PolicyGate::for_state(&state, &compliance::today(&state));
        reconcile::shortfall(&state, &mut gate)
    };
    let revision = state.revision;
    let replaces_version = state.policies.last().map_or(0, |v| v.version);
    let command = Command {
        at_ms: now_ms(),
        proposal: Proposal::ApplyPolicy {
            bundle: Box::new(bundle),
            expected_plan_hash: None,
        },
    };
    let (version, hash, changed, impact) = match state::apply(&mut state, revision + 1, &command) {
        Outcome::PolicyApplied {
            version,
            hash,
            changed,
            impact,
            ..
        } => (version, hash, changed, impact),
        Outcome::Rejected(r) => return Err(rejection_status(r)),
        other => return Err(Status::internal(format!("unexpected outcome {other:?}"))),
    };
    let mut gate = PolicyGate::for_state(&state, &compliance::today(&state));
    let after = reconcile::shortfall(&state, &mut gate);
    let touched: std::collections::BTreeSet<&str> = impact
        .changes
        .iter()
        .map(|c| c.deployment.as_str())
        .collect();
    let mut deployments = Vec::new();
    for (name, s) in &after {
        let was = before.get(name).map_or(0, |b| b.served());
        let short = s.served() < s.wanted;
        if !short || (s.served() >= was && !touched.contains(name.as_str())) {
            continue;
        }
        let explanation = state
            .deployments
            .get(name)
            .map(|d| placement::eligibility(&state, &d.spec, &mut gate).to_string())
            .unwrap_or_default();
        deployments.push(pb::DeploymentImpact {
            deployment: name.clone(),
            state: if s.served() == 0 {
                "unplaceable"
            } else {
                "degraded"
            }
            .into(),
            replicas_wanted: s.wanted,
            replicas_kept: s.kept,
            replicas_placeable: s.placeable,
            explanation,
        });
    }
    let rules = version_to_pb(
        state.policies.last().expect("a version was just applied"),
        Some(compiled),
        false,
    )
    .rules;
    Ok(pb::PolicyPlan {
        version,
        replaces_version,
        bundle_hash: hash,
        changed,
        plan_hash: impact.plan_hash.clone(),
        allocations: impact.changes.iter().map(change_to_pb).collect(),
        deployments,
        revision,
        rules,
    })
}

#[tonic::async_trait]
impl PolicyService for PolicyApi {
    async fn apply(
        &self,
        request: Request<pb::ApplyPolicyRequest>,
    ) -> Result<Response<pb::PolicyVersion>, Status> {
        let by = super::auth::caller(&request).map(super::auth::Caller::opaque_id);
        let req = request.into_inner();
        let (mut bundle, compiled) = bundle_from_pb(req.bundle)?;
        // With mutual TLS the author is who the certificate says (role:fingerprint), not what
        // the client typed.
        if let Some(by) = by {
            bundle.author = by;
        }
        let (author, comment) = (bundle.author.clone(), bundle.comment.clone());
        let proposal = Proposal::ApplyPolicy {
            bundle: Box::new(bundle),
            expected_plan_hash: (!req.plan_hash.is_empty()).then_some(req.plan_hash),
        };
        let (index, outcome) = propose(&self.replica, proposal).await?;
        let Outcome::PolicyApplied {
            version,
            hash,
            activated_at_ms,
            changed,
            impact,
        } = outcome
        else {
            return Err(Status::internal(format!("unexpected outcome {outcome:?}")));
        };
        // A new version is described from the outcome and the bundle sent, without the state
        // machine's lock: right after a rule change the leader copies the state for the round
        // that carries it out, and an apply waiting behind that copy would hold this answer
        // (part of the benchmark's "plan committed"; docs/benchmarks.md, Rule changes).
        let mut out = if changed {
            let stored = PolicyVersion {
                version,
                files: Default::default(),
                hash,
                author,
                comment,
                activated_at_ms,
                revision: index,
            };
            version_to_pb(&stored, Some(&compiled), false)
        } else {
            let applied = self.replica.sm.read();
            let stored = applied
                .state
                .policies
                .get(version as usize - 1)
                .ok_or_else(|| {
                    Status::internal(format!("version {version} missing after apply"))
                })?;
            version_to_pb(stored, Some(&compiled), false)
        };
        out.changed = changed;
        out.impact = impact.changes.iter().map(change_to_pb).collect();
        out.plan_hash = impact.plan_hash;
        Ok(Response::new(out))
    }

    async fn plan(
        &self,
        request: Request<pb::PlanPolicyRequest>,
    ) -> Result<Response<pb::PolicyPlan>, Status> {
        let (bundle, compiled) = bundle_from_pb(request.into_inner().bundle)?;
        read_barrier(&self.replica, 0).await?;
        let state = self.replica.sm.read().state.clone();
        // Off the async workers: a dry run re-checks every allocation and plans every
        // deployment twice (tens of milliseconds at 100,000 allocations).
        let plan = tokio::task::spawn_blocking(move || dry_run(state, bundle, &compiled))
            .await
            .map_err(|e| Status::internal(format!("policy plan failed: {e}")))??;
        Ok(Response::new(plan))
    }

    async fn progress(
        &self,
        request: Request<pb::ProgressRequest>,
    ) -> Result<Response<pb::PolicyProgress>, Status> {
        read_barrier(&self.replica, request.get_ref().consistency).await?;
        with_statuses(&self.replica, None, |state, statuses| {
            let p = status::progress(statuses);
            Response::new(pb::PolicyProgress {
                revision: state.revision,
                policy_version: state.policies.last().map_or(0, |v| v.version),
                migrating: p.migrating,
                replacements_placed: p.replacements_placed,
                stopping: p.stopping,
                stopping_on_down_nodes: p.stopping_on_down_nodes,
                missing: p.missing,
                unplaceable: p.unplaceable,
                starting: p.starting,
                violating: p.violating,
                next_deadline_ms: p.next_deadline_ms.unwrap_or(0),
                converged: p.converged,
                moves_started: p.moves_started,
                moves_finished: p.moves_finished,
            })
        })
        .await
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
