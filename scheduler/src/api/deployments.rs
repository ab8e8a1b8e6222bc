//! `sov.v1.DeploymentService`: create, replace, read and delete deployments.

use std::sync::Arc;

use sov_proto::v1 as pb;
use sov_proto::v1::deployment_service_server::DeploymentService;
use tonic::{Request, Response, Status};

use super::{invalid, propose, read_barrier};
use std::collections::BTreeMap;

use crate::placement::{self, Explanation};
use crate::raft::Replica;
use crate::raft::now_ms;
use crate::reconcile::{self, status, status::DeploymentStatus};
use crate::state::plan::{PolicyGate, day_of};
use crate::state::{
    self, DeploymentSpec, Desired, ExportAttrs, HealthCheck, HealthProbe, Migration, Outcome,
    PlacementPrefs, Proposal, Residency, Resources, Spread, Standing, State, compliance,
};

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
}

pub fn spec_from_pb(spec: pb::DeploymentSpec) -> Result<DeploymentSpec, Status> {
    let r = spec.resources.unwrap_or_default();
    let export = spec.export.unwrap_or_default();
    let residency = spec.residency.unwrap_or_default();
    let health = spec.health.unwrap_or_default();
    let placement = spec.placement.unwrap_or_default();
    if !health.http_path.is_empty() && health.tcp {
        return Err(Status::invalid_argument(
            "spec.health: set either http or tcp, not both",
        ));
    }
    Ok(DeploymentSpec {
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
        health: HealthCheck {
            probe: match (health.http_path.is_empty(), health.tcp) {
                (false, _) => HealthProbe::Http(health.http_path),
                (true, true) => HealthProbe::Tcp,
                (true, false) => HealthProbe::Off,
            },
            interval_ms: health.interval_ms,
            timeout_ms: health.timeout_ms,
        },
        stop_after_disconnect_ms: spec.stop_after_disconnect_ms,
        working_dir: spec.working_dir,
        migration: {
            let m = spec.migration.unwrap_or_default();
            Migration {
                max_parallel: if m.max_parallel == 0 {
                    Migration::MAX_PARALLEL_DEFAULT
                } else {
                    m.max_parallel
                },
                deadline_ms: m.deadline_ms.unwrap_or(Migration::DEADLINE_MS_DEFAULT),
            }
        },
        placement: PlacementPrefs {
            spread: match placement.spread.as_str() {
                "" | "node" => Spread::Node,
                "site" => Spread::Site,
                "country" => Spread::Country,
                "none" => Spread::None,
                other => {
                    return Err(Status::invalid_argument(format!(
                        "spec.placement.spread: {other:?} must be \"node\", \"site\", \"country\" or \"none\""
                    )));
                }
            },
            prefer_countries: placement.prefer_countries,
            prefer_sites: placement.prefer_sites,
        },
    })
}

/// How every deployment of `state` (or only one) stands: compliance state, moves, what could
/// be placed now. Costs one reconcile planning pass (the fleet view and a plan), so callers
/// compute it once per request.
pub fn statuses(state: &State, only: Option<&str>) -> BTreeMap<String, DeploymentStatus> {
    let mut gate = PolicyGate::for_state(state, &compliance::today(state));
    let outlooks = reconcile::outlook(state, &mut gate, now_ms(), only);
    let mut statuses = status::deployments(state, &outlooks, only);
    // Say why replicas that are missing cannot go anywhere.
    for (name, s) in statuses.iter_mut() {
        if s.outlook.wanted > s.outlook.placeable
            && let Some(d) = state.deployments.get(name)
        {
            let e = placement::eligibility(state, &d.spec, &mut gate);
            s.explanation = summarize(&e, gate.version() > 0);
        }
    }
    statuses
}

/// Runs `render` with the applied state and the statuses of its deployments (or of `only`),
/// off the async workers (the statuses plan the fleet, which takes a while on a large cluster).
/// Applies wait meanwhile, as they waited for the copy of the state this used to make: at
/// 100,000 allocations the statuses of 1,000 deployments take about as long as that copy
/// (55.7 ms against 40-116 ms on a loaded machine, `cargo bench -p sov-scheduler --bench
/// compliance`), and there is no copy left to free.
pub async fn with_statuses<T: Send + 'static>(
    replica: &Replica,
    only: Option<String>,
    render: impl FnOnce(&State, &BTreeMap<String, DeploymentStatus>) -> T + Send + 'static,
) -> Result<T, Status> {
    let sm = replica.sm.clone();
    tokio::task::spawn_blocking(move || {
        let applied = sm.read();
        let statuses = statuses(&applied.state, only.as_deref());
        render(&applied.state, &statuses)
    })
    .await
    .map_err(|e| Status::internal(format!("computing deployment statuses failed: {e}")))
}

pub fn compliance_to_pb(s: &DeploymentStatus) -> pb::DeploymentCompliance {
    pb::DeploymentCompliance {
        state: s.compliance().as_str().into(),
        summary: s.summary(),
        replicas_wanted: s.wanted,
        replicas_running: s.running,
        moves_started: s.moves_started,
        moves_finished: s.moves_finished,
        violated_rules: s.violated_rules.iter().cloned().collect(),
        explanation: s.explanation.clone(),
        converged: s.converged(),
        next_deadline_ms: s.next_deadline_ms.unwrap_or(0),
    }
}

/// The deployment with its replicas (every allocation of it in `state`) and, when given, how
/// it stands.
pub fn deployment_to_pb(
    d: &state::Deployment,
    state: &State,
    status: Option<&DeploymentStatus>,
) -> pb::Deployment {
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
            health: Some(health_to_pb(&s.health)),
            stop_after_disconnect_ms: s.stop_after_disconnect_ms,
            working_dir: s.working_dir.clone(),
            placement: Some(pb::PlacementPreferences {
                spread: match s.placement.spread {
                    Spread::None => "none",
                    Spread::Node => "node",
                    Spread::Site => "site",
                    Spread::Country => "country",
                }
                .into(),
                prefer_countries: s.placement.prefer_countries.clone(),
                prefer_sites: s.placement.prefer_sites.clone(),
            }),
            migration: Some(pb::Migration {
                max_parallel: s.migration.max_parallel,
                deadline_ms: Some(s.migration.deadline_ms),
            }),
        }),
        generation: d.generation,
        created_at_ms: d.created_at_ms,
        updated_at_ms: d.updated_at_ms,
        revision: d.revision,
        replicas: state
            .allocations
            .values()
            .filter(|a| a.deployment == s.name)
            .map(replica_to_pb)
            .collect(),
        compliance: status.map(compliance_to_pb),
    }
}

pub fn health_to_pb(h: &HealthCheck) -> pb::HealthCheck {
    pb::HealthCheck {
        http_path: match &h.probe {
            HealthProbe::Http(path) => path.clone(),
            _ => String::new(),
        },
        tcp: h.probe == HealthProbe::Tcp,
        interval_ms: h.interval_ms,
        timeout_ms: h.timeout_ms,
    }
}

/// One allocation as clients see it: where, with what, and what its agent last reported.
pub fn replica_to_pb(a: &state::Allocation) -> pb::Replica {
    pb::Replica {
        id: a.id.clone(),
        node: a.node.clone(),
        gpu_uuids: a.gpu_uuids.clone(),
        port: u32::from(a.port),
        desired: desired_name(a.desired).into(),
        policy_version: a.policy_version,
        created_at_ms: a.created_at_ms,
        status: a.status.as_str().into(),
        exit_code: a.exit_code,
        status_reason: a.status_reason.clone(),
        restarts: a.restarts,
        status_at_ms: a.status_at_ms,
        standing: a.standing.as_str().into(),
        rules: match &a.standing {
            Standing::Compliant => Vec::new(),
            Standing::Violating { rules, .. } | Standing::Migrating { rules, .. } => rules.clone(),
        },
        drain: matches!(a.standing, Standing::Migrating { drain: true, .. }),
        deadline_ms: match a.standing {
            Standing::Migrating { deadline_ms, .. } => deadline_ms,
            _ => 0,
        },
        replacement: match &a.standing {
            Standing::Migrating { replacement, .. } => replacement.clone(),
            _ => String::new(),
        },
        replaces: a.replaces.clone(),
        standing_since_ms: match a.standing {
            Standing::Compliant => 0,
            Standing::Violating { since_ms, .. } | Standing::Migrating { since_ms, .. } => since_ms,
        },
        stop_reason: a.stop_reason.clone(),
        standing_policy_version: match a.standing {
            Standing::Compliant => 0,
            Standing::Violating { policy_version, .. }
            | Standing::Migrating { policy_version, .. } => policy_version,
        },
    }
}

pub fn desired_name(d: Desired) -> &'static str {
    match d {
        Desired::Run => "run",
        Desired::Stop => "stop",
    }
}

#[tonic::async_trait]
impl DeploymentService for DeploymentApi {
    async fn apply(
        &self,
        request: Request<pb::ApplyDeploymentRequest>,
    ) -> Result<Response<pb::ApplyDeploymentResponse>, Status> {
        let scope = namespace_of(&request);
        let req = request.into_inner();
        let spec = req
            .spec
            .ok_or_else(|| Status::invalid_argument("spec: is required"))?;
        in_namespace(scope.as_deref(), &spec.name)?;
        let expected_generation = (req.expected_generation > 0).then_some(req.expected_generation);
        let proposal = Proposal::ApplyDeployment {
            spec: Box::new(spec_from_pb(spec)?),
            expected_generation,
        };
        match propose(&self.replica, proposal).await? {
            (
                _,
                Outcome::DeploymentApplied {
                    deployment,
                    created,
                    changed,
                },
            ) => {
                let name = deployment.spec.name.clone();
                let deployment =
                    with_statuses(&self.replica, Some(name.clone()), move |state, s| {
                        deployment_to_pb(&deployment, state, s.get(&name))
                    })
                    .await?;
                Ok(Response::new(pb::ApplyDeploymentResponse {
                    deployment: Some(deployment),
                    created,
                    changed,
                }))
            }
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
        let name = req.name;
        with_statuses(&self.replica, Some(name.clone()), move |state, s| {
            let deployment = state
                .deployments
                .get(&name)
                .ok_or_else(|| Status::not_found(format!("deployment {name:?} does not exist")))?;
            Ok(Response::new(deployment_to_pb(
                deployment,
                state,
                s.get(&name),
            )))
        })
        .await?
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
        let after = req.after;
        with_statuses(&self.replica, None, move |state, status| {
            let start = if after.is_empty() {
                std::ops::Bound::Unbounded
            } else {
                std::ops::Bound::Excluded(after)
            };
            let mut page: Vec<_> = state
                .deployments
                .range::<String, _>((start, std::ops::Bound::Unbounded))
                .take(limit + 1)
                .map(|(name, d)| deployment_to_pb(d, state, status.get(name)))
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
            Response::new(pb::ListDeploymentsResponse {
                deployments: page,
                next_after,
                revision: state.revision,
            })
        })
        .await
    }

    async fn plan(
        &self,
        request: Request<pb::PlanDeploymentRequest>,
    ) -> Result<Response<pb::DeploymentPlan>, Status> {
        let scope = namespace_of(&request);
        let spec = request
            .into_inner()
            .spec
            .ok_or_else(|| Status::invalid_argument("spec: is required"))?;
        in_namespace(scope.as_deref(), &spec.name)?;
        let spec = spec_from_pb(spec)?;
        state::validate_spec(&spec).map_err(invalid)?;
        read_barrier(&self.replica, 0).await?;
        let applied = self.replica.sm.read();
        let state = &applied.state;
        let today = day_of(now_ms());
        let mut gate = PolicyGate::for_state(state, &today);
        let running = spec.replicas - placement::missing_replicas(state, &spec);
        let (placements, unplaced) = placement::plan_spec(state, &spec, &mut gate);
        let unplaceable = spec.replicas - running - placements.len() as u32;
        let (summary, excluded) = unplaced
            .map(|e| (e.to_string(), verdicts(&e, None)))
            .unwrap_or_default();
        Ok(Response::new(pb::DeploymentPlan {
            placements: placements
                .into_iter()
                .map(|p| pb::PlannedReplica {
                    node: p.node,
                    gpu_uuids: p.gpu_uuids,
                    port: u32::from(p.port),
                })
                .collect(),
            running,
            unplaceable,
            summary,
            excluded,
            policy_version: gate.version(),
        }))
    }

    async fn explain(
        &self,
        request: Request<pb::ExplainRequest>,
    ) -> Result<Response<pb::Explanation>, Status> {
        let req = request.into_inner();
        state::validate_deployment_name(&req.name).map_err(invalid)?;
        read_barrier(&self.replica, req.consistency).await?;
        let applied = self.replica.sm.read();
        let state = &applied.state;
        let deployment = state.deployments.get(&req.name).ok_or_else(|| {
            Status::not_found(format!("deployment {:?} does not exist", req.name))
        })?;
        if !req.node.is_empty() && !state.nodes.contains_key(&req.node) {
            return Err(Status::not_found(format!(
                "node {:?} is not registered",
                req.node
            )));
        }
        let today = day_of(now_ms());
        let mut gate = PolicyGate::for_state(state, &today);
        // Why would one more replica not fit? This is the question whether replicas are
        // missing (why not placed) or not (which nodes could take another).
        let mut probe = deployment.spec.clone();
        probe.replicas =
            deployment.spec.replicas - placement::missing_replicas(state, &deployment.spec) + 1;
        let explanation = match placement::plan_spec(state, &probe, &mut gate) {
            (_, Some(e)) => e,
            (_, None) => placement::eligibility(state, &probe, &mut gate),
        };
        let node = (!req.node.is_empty()).then_some(req.node.as_str());
        Ok(Response::new(pb::Explanation {
            deployment: req.name.clone(),
            replicas_wanted: deployment.spec.replicas,
            // What the agents report, not what is placed: a placed replica whose server
            // keeps failing is not running.
            replicas_running: state
                .allocations
                .values()
                .filter(|a| {
                    a.deployment == req.name
                        && a.desired == Desired::Run
                        && a.status == state::AllocStatus::Running
                })
                .count() as u32,
            nodes_total: explanation.nodes_total as u32,
            nodes_eligible: explanation.nodes_eligible as u32,
            summary: summarize(&explanation, gate.version() > 0),
            excluded: verdicts(&explanation, node),
            policy_version: gate.version(),
        }))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteDeploymentRequest>,
    ) -> Result<Response<pb::DeleteDeploymentResponse>, Status> {
        let scope = namespace_of(&request);
        let name = request.into_inner().name;
        in_namespace(scope.as_deref(), &name)?;
        let (revision, _) = propose(&self.replica, Proposal::DeleteDeployment { name }).await?;
        Ok(Response::new(pb::DeleteDeploymentResponse { revision }))
    }
}

/// Every excluded node with every reason, or only `node`'s.
fn verdicts(e: &Explanation, node: Option<&str>) -> Vec<pb::NodeVerdict> {
    e.per_node
        .iter()
        .filter(|(name, _)| node.is_none_or(|n| n == name.as_str()))
        .map(|(name, reasons)| pb::NodeVerdict {
            node: name.clone(),
            reasons: reasons.iter().map(|r| r.to_string()).collect(),
        })
        .collect()
}

/// The one-line summary, led by the reason that trumps all others when there is one.
fn summarize(e: &Explanation, policy_in_force: bool) -> String {
    if policy_in_force {
        e.to_string()
    } else {
        format!(
            "no policy bundle is in force, so nothing can be placed (apply one: sovctl policy apply deploy/policies); {e}"
        )
    }
}

/// The deployment-name prefix the caller's certificate limits it to, if any.
fn namespace_of<T>(request: &Request<T>) -> Option<String> {
    super::auth::caller(request).and_then(|c| c.identity.namespace.clone())
}

/// A deployer scoped to a namespace touches only deployments whose names start with it.
fn in_namespace(scope: Option<&str>, name: &str) -> Result<(), Status> {
    match scope {
        Some(prefix) if !name.starts_with(prefix) => Err(super::auth::denied(
            super::auth::Permission::Deploy,
            format!(
                "deployment {name:?} is outside your namespace: your certificate allows names starting with {prefix:?}"
            ),
        )),
        _ => Ok(()),
    }
}
