//! The `sovctl` binary against a fake scheduler on loopback: what users and scripts see (stdout,
//! stderr, exit codes) for the commands whose behaviour depends on the server's answer. The
//! fake answers from fixed data and records what it was sent; the real scheduler's logic is
//! tested in its own crate.
//!
//! `audit verify` runs offline here, on evidence built in the test with `sov_proto::evidence`
//! and `sov_proto::merkle` and signed with a fixed key, as the scheduler builds it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Output;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use ed25519_dalek::SigningKey;
use sov_proto::evidence::{self, Checkpoint, Line, Seal};
use sov_proto::merkle::{self, Frontier, Hash, NodeSource};
use sov_proto::v1 as pb;
use sov_proto::v1::deployment_service_server::{DeploymentService, DeploymentServiceServer};
use sov_proto::v1::history_service_server::{HistoryService, HistoryServiceServer};
use sov_proto::v1::node_service_server::{NodeService, NodeServiceServer};
use sov_proto::v1::policy_service_server::{PolicyService, PolicyServiceServer};
use tonic::{Request, Response, Status};

type Answer<T> = Result<Response<T>, Status>;

/// A fake scheduler; clones share what it recorded.
#[derive(Clone, Default)]
struct Fake(Arc<Recorded>);

/// What the fake was sent, and how many times it was polled.
#[derive(Default)]
struct Recorded {
    /// The plan hash of every `PolicyService.Apply`, in order.
    applied_plan_hashes: Mutex<Vec<String>>,
    drains: Mutex<Vec<pb::DrainNodeRequest>>,
    /// `DeploymentService.Get` calls per deployment name.
    gets: Mutex<HashMap<String, usize>>,
    progress_polls: AtomicUsize,
    /// Every `HistoryService.Query`, in order.
    queries: Mutex<Vec<pb::HistoryQuery>>,
    as_of: Mutex<Vec<pb::AsOfRequest>>,
    exports: Mutex<Vec<pb::ExportRequest>>,
    /// Answer `Checkpoint` as a scheduler without a signing key does.
    no_signing_key: AtomicBool,
}

/// The plan hash the fake gives a bundle that stops, moves and flags replicas (one with a file
/// named `stop.cedar`), and the one it gives any other bundle.
const DISRUPTIVE_PLAN_HASH: &str =
    "abababababababababababababababababababababababababababababababab";
const CALM_PLAN_HASH: &str = "cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd";

/// The fake's judgement of a bundle: the plan hash applying it now has, and what it does.
fn judge(bundle: &pb::PolicyBundle) -> Result<(&'static str, Vec<pb::AllocationImpact>), Status> {
    if bundle.files.contains_key("bad.cedar") {
        return Err(Status::invalid_argument(
            "invalid policy bundle:\nbad.cedar:1:5: unexpected token `}`\n\
             schema.cedarschema:2:1: unknown type `Strin`",
        ));
    }
    if !bundle.files.contains_key("stop.cedar") {
        return Ok((CALM_PLAN_HASH, vec![]));
    }
    let impact = |action: &str, allocation: &str, node: &str, rule: &str| pb::AllocationImpact {
        allocation: allocation.into(),
        deployment: allocation.rsplit_once('-').unwrap().0.into(),
        node: node.into(),
        action: action.into(),
        rules: vec![rule.into()],
        drain: false,
    };
    Ok((
        DISRUPTIVE_PLAN_HASH,
        vec![
            impact("migrate", "open-eu-1", "sim-us-1", "eu-only"),
            impact("stop-now", "frontier-0", "sim-cn-1", "export-4e091"),
        ],
    ))
}

#[tonic::async_trait]
impl PolicyService for Fake {
    /// Applies as the scheduler does: refused with FAILED_PRECONDITION when a plan hash is sent
    /// and applying the bundle now has another.
    async fn apply(&self, req: Request<pb::ApplyPolicyRequest>) -> Answer<pb::PolicyVersion> {
        let req = req.into_inner();
        let bundle = req.bundle.unwrap_or_default();
        let (plan_hash, impact) = judge(&bundle)?;
        self.0
            .applied_plan_hashes
            .lock()
            .unwrap()
            .push(req.plan_hash.clone());
        if !req.plan_hash.is_empty() && req.plan_hash != plan_hash {
            return Err(Status::failed_precondition(format!(
                "the cluster changed since `sovctl policy plan` computed plan hash {}: applying \
                 the bundle now would have a different impact (plan hash {plan_hash}); run \
                 `sovctl policy plan` again and review it",
                req.plan_hash
            )));
        }
        Ok(Response::new(pb::PolicyVersion {
            version: 4,
            bundle_hash: "3f9a1c0b7d2e4f60a1b2c3d4e5f6".into(),
            author: bundle.author,
            comment: bundle.comment,
            changed: true,
            impact,
            plan_hash: plan_hash.into(),
            ..Default::default()
        }))
    }

    async fn get(&self, req: Request<pb::GetPolicyRequest>) -> Answer<pb::PolicyVersion> {
        let version = req.into_inner().version;
        let text = match version {
            1 | 3 => "permit(principal, action, resource);\n",
            2 => "forbid(principal, action, resource);\n",
            _ => {
                return Err(Status::not_found(format!(
                    "policy version {version} does not exist"
                )));
            }
        };
        Ok(Response::new(pb::PolicyVersion {
            version,
            bundle_hash: format!("hash{version}"),
            files: HashMap::from([("base.cedar".to_owned(), text.to_owned())]),
            ..Default::default()
        }))
    }

    async fn plan(&self, req: Request<pb::PlanPolicyRequest>) -> Answer<pb::PolicyPlan> {
        let bundle = req.into_inner().bundle.unwrap_or_default();
        let (plan_hash, allocations) = judge(&bundle)?;
        let deployments = if allocations.is_empty() {
            vec![]
        } else {
            vec![pb::DeploymentImpact {
                deployment: "frontier".into(),
                state: "unplaceable".into(),
                replicas_wanted: 1,
                replicas_kept: 0,
                replicas_placeable: 0,
                explanation: "0/3 nodes eligible: 3 forbidden by policy export-4e091".into(),
            }]
        };
        Ok(Response::new(pb::PolicyPlan {
            version: 4,
            replaces_version: 3,
            bundle_hash: "3f9a1c0b7d2e4f60a1b2c3d4e5f6".into(),
            changed: true,
            plan_hash: plan_hash.into(),
            allocations,
            deployments,
            revision: 30,
            rules: vec![],
        }))
    }

    /// One replica migrating, with its replacement placed, for two polls; then all done.
    async fn progress(&self, _: Request<pb::ProgressRequest>) -> Answer<pb::PolicyProgress> {
        let poll = self.0.progress_polls.fetch_add(1, Ordering::SeqCst);
        let done = poll >= 2;
        Ok(Response::new(pb::PolicyProgress {
            revision: 30 + poll as u64,
            policy_version: 4,
            migrating: u32::from(!done),
            replacements_placed: u32::from(!done),
            converged: done,
            moves_started: 1,
            moves_finished: u32::from(done),
            ..Default::default()
        }))
    }

    async fn list(&self, _: Request<pb::ListPoliciesRequest>) -> Answer<pb::ListPoliciesResponse> {
        Err(Status::unimplemented("fake"))
    }
}

#[tonic::async_trait]
impl DeploymentService for Fake {
    async fn apply(
        &self,
        _: Request<pb::ApplyDeploymentRequest>,
    ) -> Answer<pb::ApplyDeploymentResponse> {
        Err(Status::unimplemented("fake"))
    }
    /// "echo": two replicas on sim-fr-1, one running, one restarting after its server exited.
    /// "open-eu", "flaky" and "never": a replica moving, see `moving`.
    async fn get(&self, req: Request<pb::GetDeploymentRequest>) -> Answer<pb::Deployment> {
        let name = req.into_inner().name;
        let poll = {
            let mut gets = self.0.gets.lock().unwrap();
            let count = gets.entry(name.clone()).or_default();
            *count += 1;
            *count - 1
        };
        match name.as_str() {
            "echo" => {}
            "open-eu" => return Ok(Response::new(moving(&name, poll))),
            "flaky" if poll == 1 => return Err(Status::unavailable("no leader elected")),
            "flaky" => return Ok(Response::new(moving(&name, poll + 1))),
            "never" => return Ok(Response::new(moving(&name, 0))),
            _ => {
                return Err(Status::not_found(format!(
                    "deployment {name:?} does not exist"
                )));
            }
        }
        Ok(Response::new(pb::Deployment {
            spec: Some(pb::DeploymentSpec {
                name,
                model: "echo".into(),
                replicas: 2,
                working_dir: "/srv/echo".into(),
                ..Default::default()
            }),
            generation: 1,
            revision: 5,
            replicas: echo_replicas(),
            ..Default::default()
        }))
    }
    async fn list(
        &self,
        _: Request<pb::ListDeploymentsRequest>,
    ) -> Answer<pb::ListDeploymentsResponse> {
        Err(Status::unimplemented("fake"))
    }
    async fn delete(
        &self,
        _: Request<pb::DeleteDeploymentRequest>,
    ) -> Answer<pb::DeleteDeploymentResponse> {
        Err(Status::unimplemented("fake"))
    }

    /// Places every replica of "new", nothing of "settled" (all running).
    async fn plan(&self, req: Request<pb::PlanDeploymentRequest>) -> Answer<pb::DeploymentPlan> {
        let spec = req.into_inner().spec.unwrap_or_default();
        let (placements, running) = match spec.name.as_str() {
            "settled" => (vec![], spec.replicas),
            _ => (
                (0..spec.replicas)
                    .map(|i| pb::PlannedReplica {
                        node: format!("sim-fr-{i}"),
                        gpu_uuids: vec![format!("sim-fr-{i}-gpu0")],
                        port: 7500,
                    })
                    .collect(),
                0,
            ),
        };
        Ok(Response::new(pb::DeploymentPlan {
            placements,
            running,
            policy_version: 2,
            ..Default::default()
        }))
    }

    async fn explain(&self, req: Request<pb::ExplainRequest>) -> Answer<pb::Explanation> {
        let req = req.into_inner();
        let all = vec![
            pb::NodeVerdict {
                node: "sim-us-1".into(),
                reasons: vec!["forbidden by policy residency".into(), "down".into()],
            },
            pb::NodeVerdict {
                node: "sim-de-1".into(),
                reasons: vec!["draining".into()],
            },
        ];
        Ok(Response::new(pb::Explanation {
            deployment: req.name,
            replicas_wanted: 2,
            replicas_running: 1,
            nodes_total: 3,
            nodes_eligible: 1,
            summary: "1/3 nodes eligible: 1 forbidden by policy residency, 1 draining".into(),
            excluded: all
                .into_iter()
                .filter(|v| req.node.is_empty() || v.node == req.node)
                .collect(),
            policy_version: 2,
        }))
    }
}

/// Deployment `name` at poll `poll` of a move: its replica on sim-de-1 must leave; for polls 0
/// and 1 its replacement is starting on sim-fr-paris-1, at poll 2 it runs, from poll 3 on the
/// old replica is stopped and the deployment converged.
fn moving(name: &str, poll: usize) -> pb::Deployment {
    let old_id = format!("{name}-41-0");
    let new_id = format!("{name}-42-0");
    let done = poll >= 3;
    let old = pb::Replica {
        id: old_id.clone(),
        node: "sim-de-1".into(),
        desired: if done { "stop" } else { "run" }.into(),
        status: if done { "stopped" } else { "running" }.into(),
        standing: if done { "compliant" } else { "migrating" }.into(),
        rules: if done { vec![] } else { vec!["eu-only".into()] },
        replacement: if done { String::new() } else { new_id.clone() },
        deadline_ms: if done { 0 } else { 4_102_444_800_000 },
        stop_reason: if done {
            format!("moved: replaced by {new_id}")
        } else {
            String::new()
        },
        ..Default::default()
    };
    let new = pb::Replica {
        id: new_id,
        node: "sim-fr-paris-1".into(),
        desired: "run".into(),
        status: if poll >= 2 { "running" } else { "pending" }.into(),
        standing: "compliant".into(),
        replaces: old_id,
        ..Default::default()
    };
    pb::Deployment {
        spec: Some(pb::DeploymentSpec {
            name: name.into(),
            model: "m".into(),
            replicas: 1,
            ..Default::default()
        }),
        generation: 1,
        revision: 10 + poll as u64,
        replicas: vec![old, new],
        compliance: Some(pb::DeploymentCompliance {
            state: if done { "compliant" } else { "migrating" }.into(),
            summary: if done { "compliant" } else { "migrating (0/1)" }.into(),
            replicas_wanted: 1,
            replicas_running: 1,
            moves_started: 1,
            moves_finished: u32::from(done),
            converged: done,
            next_deadline_ms: if done { 0 } else { 4_102_444_800_000 },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The replicas of deployment "echo", both on sim-fr-1.
fn echo_replicas() -> Vec<pb::Replica> {
    let replica = |i: u32, status: &str| pb::Replica {
        id: format!("echo-{i}"),
        node: "sim-fr-1".into(),
        gpu_uuids: vec![format!("sim-fr-1-gpu{i}")],
        port: 20000 + i,
        desired: "run".into(),
        policy_version: 2,
        status: status.into(),
        ..Default::default()
    };
    vec![
        replica(0, "running"),
        pb::Replica {
            exit_code: Some(2),
            status_reason: "exited with code 2: No module named vllm".into(),
            restarts: 5,
            ..replica(1, "failed")
        },
    ]
}

/// sim-fr-1: two simulated GPUs, the replicas of "echo" and one being stopped.
fn sim_node() -> pb::Node {
    let gpu = |index| pb::GpuDevice {
        index,
        uuid: format!("sim-fr-1-gpu{index}"),
        model: "NVIDIA H100 80GB HBM3".into(),
        memory_mib: 81559,
        simulated: true,
        ..Default::default()
    };
    let mut allocations: Vec<pb::NodeAllocation> = echo_replicas()
        .into_iter()
        .map(|r| pb::NodeAllocation {
            deployment: "echo".into(),
            replica: Some(r),
        })
        .collect();
    allocations.push(pb::NodeAllocation {
        deployment: "gone".into(),
        replica: Some(pb::Replica {
            id: "gone-0".into(),
            node: "sim-fr-1".into(),
            port: 20002,
            desired: "stop".into(),
            status: "running".into(),
            ..Default::default()
        }),
    });
    pb::Node {
        name: "sim-fr-1".into(),
        facts: Some(pb::LocationFacts {
            country: "FR".into(),
            ..Default::default()
        }),
        inventory: Some(pb::Inventory {
            cpu_millis: 64_000,
            memory_mib: 512 * 1024,
            gpus: vec![gpu(0), gpu(1)],
            port_first: 20000,
            port_last: 20999,
        }),
        status: "ready".into(),
        allocations,
        ..Default::default()
    }
}

#[tonic::async_trait]
impl NodeService for Fake {
    async fn list(&self, _: Request<pb::ListNodesRequest>) -> Answer<pb::ListNodesResponse> {
        Ok(Response::new(pb::ListNodesResponse {
            nodes: vec![sim_node()],
            revision: 9,
        }))
    }
    async fn get(&self, req: Request<pb::GetNodeRequest>) -> Answer<pb::Node> {
        match req.into_inner().name.as_str() {
            "sim-fr-1" => Ok(Response::new(sim_node())),
            name => Err(Status::not_found(format!(
                "node \"{name}\" is not registered"
            ))),
        }
    }
    async fn drain(&self, req: Request<pb::DrainNodeRequest>) -> Answer<pb::Node> {
        let req = req.into_inner();
        self.0.drains.lock().unwrap().push(req.clone());
        Ok(Response::new(pb::Node {
            name: req.name,
            draining: true,
            drain_deadline_ms: 4_102_444_800_000,
            ..Default::default()
        }))
    }
    async fn undrain(&self, _: Request<pb::UndrainNodeRequest>) -> Answer<pb::Node> {
        Err(Status::unimplemented("fake"))
    }
}

/// 2026-06-12T18:00:00Z: the instant of the as-of question in the tests.
const AT: i64 = 1_781_287_200_000;
/// The cluster the fake history belongs to.
const CLUSTER: &str = "c-test";

/// A history event as the scheduler records it: its envelope and its body's bytes.
fn recorded(seq: u64, policy_version: u64, body: serde_json::Value) -> pb::HistoryEvent {
    let mut body = body.as_object().unwrap().clone();
    let kind = body["kind"].as_str().unwrap().to_owned();
    let field = |name: &str| {
        body.get(name)
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_owned()
    };
    let (deployment, node) = (field("deployment"), field("node"));
    body.insert("seq".into(), seq.into());
    body.insert("at_ms".into(), (AT + seq as i64 * 1000).into());
    body.insert("policy_version".into(), policy_version.into());
    pb::HistoryEvent {
        seq,
        raft_index: 100 + seq,
        at_ms: AT + seq as i64 * 1000,
        kind,
        body: serde_json::to_vec(&body).unwrap(),
        policy_version,
        deployment,
        node,
    }
}

/// Deployment "open-eu" moving off an Irish node whose operator's parent is American.
fn open_eu_story() -> Vec<pb::HistoryEvent> {
    use serde_json::json;
    let placed = |alloc: &str, node: &str, country: &str, parent: &str| {
        json!({"kind": "allocation.placed", "allocation": alloc, "deployment": "open-eu",
               "node": node, "facts": {"country": country, "ultimate_parent_hq": parent},
               "eligible": "no rule forbids it"})
    };
    let mut replacement = placed("open-eu-9", "de-1", "DE", "DE");
    replacement["replaces"] = "open-eu-7".into();
    vec![
        recorded(12, 2, placed("open-eu-7", "ie-1", "IE", "US")),
        recorded(
            19,
            3,
            json!({"kind": "violation.detected", "allocation": "open-eu-7",
                   "deployment": "open-eu", "node": "ie-1",
                   "rules": ["eu-sovereign-operator"], "action": "migrate"}),
        ),
        recorded(20, 3, replacement),
        recorded(
            24,
            3,
            json!({"kind": "allocation.migrated", "allocation": "open-eu-7",
                   "deployment": "open-eu", "from_node": "ie-1", "to_node": "de-1",
                   "replacement": "open-eu-9"}),
        ),
    ]
}

/// The history of a small cluster: events as the scheduler records them, in a Merkle tree that
/// can prove any of them, as the scheduler's history store does.
struct History {
    frontier: Frontier,
    nodes: HashMap<(u32, u64), Hash>,
    events: Vec<String>,
}

impl NodeSource for History {
    fn node(&self, level: u32, index: u64) -> Option<Hash> {
        self.nodes.get(&(level, index)).copied()
    }
}

/// The first `size` events of the fake cluster's history (so `history(5)` is a prefix of
/// `history(8)`, as an earlier export's history is of a later one's).
fn history(size: u64) -> History {
    let mut h = History {
        frontier: Frontier::default(),
        nodes: HashMap::new(),
        events: Vec::new(),
    };
    for seq in 0..size {
        let event = format!(
            "{{\"seq\":{seq},\"raft_index\":{},\"at_ms\":{},\"policy_version\":2,\
             \"kind\":\"allocation.placed\",\"allocation\":\"open-eu-{seq}\",\
             \"deployment\":\"open-eu\",\"node\":\"ie-1\"}}",
            100 + seq,
            AT + seq as i64 * 1000
        );
        for (level, index, hash) in h.frontier.push(merkle::leaf_hash(event.as_bytes())) {
            h.nodes.insert((level, index), hash);
        }
        h.events.push(event);
    }
    h
}

/// The cluster's signing key in the tests.
fn cluster_key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

/// An export of every event of `h`, as `HistoryService.Export` writes it, with a consistency
/// proof from `previous` when given, sealed with `key`.
fn export_text(h: &History, previous: Option<u64>, key: &SigningKey) -> String {
    let size = h.frontier.size;
    let mut lines = vec![
        Line::Header {
            format: evidence::FORMAT.into(),
            cluster_id: CLUSTER.into(),
            exported_at_ms: AT + 60_000,
            filter: "all".into(),
        }
        .to_json(),
    ];
    for leaf in 0..size {
        lines.push(
            Line::Event {
                leaf,
                event: h.events[leaf as usize].clone(),
                proof: merkle::inclusion_proof(h, leaf, size).unwrap(),
            }
            .to_json(),
        );
    }
    if let Some(from) = previous {
        lines.push(
            Line::Consistency {
                from_size: from,
                from_root: merkle::root_at(h, from).unwrap(),
                proof: merkle::consistency_proof(h, from, size).unwrap(),
            }
            .to_json(),
        );
    }
    let mut seal = Seal {
        checkpoint: Checkpoint {
            cluster_id: CLUSTER.into(),
            tree_size: size,
            root: h.frontier.root(),
            at_ms: AT + 60_000,
        },
        checkpoint_signature: Vec::new(),
        leaves: evidence::ranges(0..size),
        filter: "all".into(),
        signature: Vec::new(),
    };
    seal.sign(key);
    lines.push(Line::Seal(seal).to_json());
    lines.join("\n") + "\n"
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The size of the history the fake serves.
const FAKE_TREE_SIZE: u64 = 8;
/// The most events the fake puts in one page, whatever the client asks for, so that paging
/// shows.
const FAKE_PAGE_MAX: usize = 100;

#[tonic::async_trait]
impl HistoryService for Fake {
    /// "open-eu": its story, one page. Anything else: 300 node events, in pages of at most
    /// `FAKE_PAGE_MAX`.
    async fn query(&self, req: Request<pb::HistoryQuery>) -> Answer<pb::HistoryPage> {
        let q = req.into_inner();
        self.0.queries.lock().unwrap().push(q.clone());
        let all: Vec<pb::HistoryEvent> = if q.deployment == "open-eu" {
            open_eu_story()
        } else {
            (0..300)
                .map(|seq| {
                    recorded(
                        seq,
                        1,
                        serde_json::json!({"kind": "node.down", "node": "sim-fr-1"}),
                    )
                })
                .collect()
        };
        let from: usize = if q.page_token.is_empty() {
            0
        } else {
            q.page_token.parse().unwrap()
        };
        let end = (from + (q.limit as usize).min(FAKE_PAGE_MAX)).min(all.len());
        Ok(Response::new(pb::HistoryPage {
            events: all[from..end].to_vec(),
            next_page: if end < all.len() {
                end.to_string()
            } else {
                String::new()
            },
            tree_size: 300,
            root: vec![0x6f; 32],
        }))
    }

    /// "open-eu" ran two replicas at any instant; nothing else ever existed.
    async fn as_of(&self, req: Request<pb::AsOfRequest>) -> Answer<pb::AsOfAnswer> {
        let req = req.into_inner();
        self.0.as_of.lock().unwrap().push(req.clone());
        let replica = |alloc: &str, node: &str, country: &str, parent: &str| pb::AsOfReplica {
            allocation: alloc.into(),
            node: node.into(),
            country: country.into(),
            operator: "acme".into(),
            operator_hq: country.into(),
            ultimate_parent_hq: parent.into(),
            location_trust: "operator-certificate".into(),
            certifications: vec!["iso27001".into()],
            placed_under_policy: 2,
            placed_at_ms: AT - 3_600_000,
            status: "running".into(),
            standing: "compliant".into(),
            eligible_because: "no rule of policy version 2 forbids it on these facts".into(),
        };
        let existed = req.deployment == "open-eu";
        Ok(Response::new(pb::AsOfAnswer {
            deployment: req.deployment,
            at_ms: req.at_ms,
            existed,
            policy_version: 3,
            bundle_hash: "6f0c1d2e3f4a5b6c7d8e9f0011223344".into(),
            replicas: if existed {
                vec![
                    replica("open-eu-7", "ie-1", "IE", "US"),
                    replica("open-eu-8", "fr-1", "FR", "FR"),
                ]
            } else {
                vec![]
            },
            events_read: 9,
        }))
    }

    async fn checkpoint(&self, _: Request<pb::CheckpointRequest>) -> Answer<pb::SignedCheckpoint> {
        if self.0.no_signing_key.load(Ordering::SeqCst) {
            return Err(Status::failed_precondition(
                "this scheduler has no signing key: create one with `sov-scheduler keygen --out DIR`",
            ));
        }
        let h = history(FAKE_TREE_SIZE);
        let checkpoint = Checkpoint {
            cluster_id: CLUSTER.into(),
            tree_size: FAKE_TREE_SIZE,
            root: h.frontier.root(),
            at_ms: AT,
        };
        Ok(Response::new(pb::SignedCheckpoint {
            tree_size: checkpoint.tree_size,
            root: checkpoint.root.to_vec(),
            at_ms: checkpoint.at_ms,
            signature: checkpoint.sign(&cluster_key()).to_vec(),
            cluster_id: checkpoint.cluster_id,
            key_id: evidence::key_id(&cluster_key().verifying_key()),
        }))
    }

    async fn prove(&self, _: Request<pb::ProofRequest>) -> Answer<pb::Proof> {
        Err(Status::unimplemented("fake"))
    }

    type ExportStream = tokio_stream::Iter<std::vec::IntoIter<Result<pb::EvidenceChunk, Status>>>;

    /// The whole history, in two chunks; for deployment "cut", without its seal.
    async fn export(&self, req: Request<pb::ExportRequest>) -> Answer<Self::ExportStream> {
        let req = req.into_inner();
        self.0.exports.lock().unwrap().push(req.clone());
        let previous = (req.previous_size > 0).then_some(req.previous_size);
        let text = export_text(&history(FAKE_TREE_SIZE), previous, &cluster_key());
        let mut lines: Vec<&str> = text.lines().collect();
        if req.deployment == "cut" {
            lines.pop();
        }
        let chunk = |lines: &[&str]| {
            Ok(pb::EvidenceChunk {
                lines: (lines.join("\n") + "\n").into_bytes(),
            })
        };
        let half = lines.len() / 2;
        Ok(Response::new(tokio_stream::iter(vec![
            chunk(&lines[..half]),
            chunk(&lines[half..]),
        ])))
    }
}

async fn serve() -> (SocketAddr, Fake) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = Fake::default();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(PolicyServiceServer::new(fake.clone()))
            .add_service(DeploymentServiceServer::new(fake.clone()))
            .add_service(NodeServiceServer::new(fake.clone()))
            .add_service(HistoryServiceServer::new(fake.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (addr, fake)
}

/// Runs `sovctl` against the fake, in plaintext: no client certificate from the machine running
/// the tests (`SOV_TLS_DIR`, `SOV_AS`, the default directory) leaks in.
async fn sovctl(addr: SocketAddr, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_sovctl"))
        .args(args)
        .args(["--endpoint", &addr.to_string(), "--timeout", "5"])
        .env_remove("SOV_ENDPOINT")
        .env_remove("SOV_TLS_DIR")
        .env_remove("SOV_AS")
        .env("XDG_CONFIG_HOME", "/nonexistent/sovctl-commands-test")
        .env("USER", "ops-7")
        .output()
        .await
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// A fresh directory under the system's temporary directory, removed when dropped.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "sovctl-commands-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&path).unwrap();
        ScratchDir(path)
    }

    fn write(&self, name: &str, text: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_apply_reports_the_version_and_the_files_sent() {
    let (addr, fake) = serve().await;
    let dir = ScratchDir::new();
    dir.write("base.cedar", "permit(principal, action, resource);\n");
    dir.write("schema.cedarschema", "entity Node;\n");
    dir.write("README.md", "# bundle\n");
    let out = sovctl(addr, &["policy", "apply", dir.path(), "--comment", "first"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "policy version 4 in force (hash 3f9a1c0b7d2e…): 0 replicas stopped, 0 migrating, 0 \
         violations recorded\n"
    );
    // Nothing running changes, so it applied at once, with the hash of the plan it checked.
    assert_eq!(
        *fake.0.applied_plan_hashes.lock().unwrap(),
        [CALM_PLAN_HASH]
    );
    assert_eq!(
        text(&out.stderr),
        format!(
            "sending 2 files from {}: base.cedar, schema.cedarschema (left out: README.md)\n",
            dir.path()
        )
    );
    let json = sovctl(addr, &["policy", "apply", dir.path(), "-o", "json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(
        (v["version"].as_u64(), v["author"].as_str()),
        (Some(4), Some("ops-7"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_bundle_prints_every_problem_on_its_own_line() {
    let (addr, _) = serve().await;
    let dir = ScratchDir::new();
    dir.write("bad.cedar", "permit(}\n");
    let out = sovctl(addr, &["policy", "apply", dir.path()]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = text(&out.stderr);
    assert!(
        stderr.ends_with(
            "error: invalid policy bundle:\n  bad.cedar:1:5: unexpected token `}`\n  \
             schema.cedarschema:2:1: unknown type `Strin`\n"
        ),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_apply_of_a_missing_directory_is_a_usage_error() {
    let (addr, _) = serve().await;
    let out = sovctl(addr, &["policy", "apply", "/nonexistent/policies"]).await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with("error: cannot read policy bundle /nonexistent/policies: "),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_diff_exits_like_diff() {
    let (addr, _) = serve().await;
    let differ = sovctl(addr, &["policy", "diff", "1", "2"]).await;
    assert_eq!(differ.status.code(), Some(1), "{}", text(&differ.stderr));
    assert_eq!(
        text(&differ.stdout),
        "# base.cedar: changed\n--- v1/base.cedar\n+++ v2/base.cedar\n@@ -1 +1 @@\n\
         -permit(principal, action, resource);\n+forbid(principal, action, resource);\n"
    );
    let same = sovctl(addr, &["policy", "diff", "1", "3"]).await;
    assert_eq!(same.status.code(), Some(0));
    assert_eq!(
        text(&same.stdout),
        "policy versions 1 and 3 have the same files\n"
    );
    let trouble = sovctl(addr, &["policy", "diff", "1", "9"]).await;
    assert_eq!(trouble.status.code(), Some(2));
    assert_eq!(
        text(&trouble.stderr),
        "error: not found: policy version 9 does not exist\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deploy_plan_exit_code_says_whether_anything_would_change() {
    let (addr, _) = serve().await;
    let dir = ScratchDir::new();
    let spec = |name: &str| format!("name = \"{name}\"\nmodel = \"m\"\nreplicas = 2\n");
    let new = dir.write("new.toml", &spec("new"));
    let settled = dir.write("settled.toml", &spec("settled"));

    let out = sovctl(addr, &["deploy", "plan", "-f", &new]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "new: 0/2 replicas running, 2 to place (policy version 2)\n\n\
         NODE       GPUS                PORT\n\
         sim-fr-0   1 (sim-fr-0-gpu0)   7500\n\
         sim-fr-1   1 (sim-fr-1-gpu0)   7500\n"
    );
    let out = sovctl(addr, &["deploy", "plan", "-f", &settled]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).ends_with("Nothing would change.\n"));

    let bad = dir.write("bad.toml", "name = \"x\"\n");
    let out = sovctl(addr, &["deploy", "plan", "-f", &bad]).await;
    assert_eq!(out.status.code(), Some(2));

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = sovctl(closed, &["deploy", "plan", "-f", &new]).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread")]
async fn explain_lists_excluded_nodes_or_one_nodes_reasons() {
    let (addr, _) = serve().await;
    let out = sovctl(addr, &["explain", "mistral-7b"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "mistral-7b: 1/2 replicas running (policy version 2)\n\
         1/3 nodes eligible: 1 forbidden by policy residency, 1 draining\n\n\
         NODE       REASONS\n\
         sim-de-1   draining\n\
         sim-us-1   forbidden by policy residency; down\n"
    );
    let out = sovctl(addr, &["explain", "mistral-7b", "--node", "sim-us-1"]).await;
    assert_eq!(
        text(&out.stdout),
        "mistral-7b: 1/2 replicas running (policy version 2)\n\
         sim-us-1 is excluded:\n  forbidden by policy residency\n  down\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn node_list_marks_simulated_gpus_in_table_and_json() {
    let (addr, _) = serve().await;
    let out = sovctl(addr, &["node", "list"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    // ALLOCS: the two replicas of "echo"; the one being stopped does not count.
    assert!(
        table.contains("2 x NVIDIA H100 80GB HBM3 (simulated)   64 cores   512 GiB   2\n"),
        "{table}"
    );
    assert!(table.starts_with("NAME "), "{table}");
    assert!(
        table.lines().next().unwrap().ends_with("   ALLOCS"),
        "{table}"
    );
    let out = sovctl(addr, &["node", "list", "-o", "json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["nodes"][0]["inventory"]["gpus"][1]["simulated"], true);
    assert_eq!(
        v["nodes"][0]["allocations"][2]["replica"]["desired"],
        "stop"
    );
    assert_eq!(v["revision"], 9);
}

#[tokio::test(flavor = "multi_thread")]
async fn node_show_lists_ports_and_allocations_with_why_they_are_down() {
    let (addr, _) = serve().await;
    let out = sovctl(addr, &["node", "show", "sim-fr-1"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for expected in [
        "Ports:               20000-20999\n",
        "Allocations:         2 to run, 1 to stop\n",
        "   NVIDIA H100 80GB HBM3 (simulated)   81559 MiB   ",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in\n{stdout}"
        );
    }
    assert!(
        stdout.ends_with(
            "\nID       DEPLOYMENT   GPUS                            PORT    DESIRED   STATUS            RESTARTS\n\
             echo-0   echo         1 (sim-fr-1-gpu0) (simulated)   20000   run       running           0\n\
             echo-1   echo         1 (sim-fr-1-gpu1) (simulated)   20001   run       failed (exit 2)   5\n\
             gone-0   gone         -                               20002   stop      running           0\n\
             \n  echo-1: exited with code 2: No module named vllm\n"
        ),
        "{stdout}"
    );
    let out = sovctl(addr, &["node", "show", "sim-fr-1", "-o", "json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["inventory"]["port_last"], 20999);
    let failed = &v["allocations"][1];
    assert_eq!(failed["deployment"], "echo");
    assert_eq!(
        (
            failed["replica"]["status"].as_str(),
            failed["replica"]["exit_code"].as_i64(),
            failed["replica"]["restarts"].as_u64()
        ),
        (Some("failed"), Some(2), Some(5))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deploy_show_says_which_replicas_run_and_why_one_does_not() {
    let (addr, _) = serve().await;
    let out = sovctl(addr, &["deploy", "show", "echo"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for expected in [
        "Running:             1/2 (2 placed)\n",
        "Working dir:         /srv/echo\n",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in\n{stdout}"
        );
    }
    assert!(
        stdout.ends_with(
            "\nID       NODE       GPUS                PORT    DESIRED   STATUS            RESTARTS   POLICY VERSION   STANDING\n\
             echo-0   sim-fr-1   1 (sim-fr-1-gpu0)   20000   run       running           0          2                -\n\
             echo-1   sim-fr-1   1 (sim-fr-1-gpu1)   20001   run       failed (exit 2)   5          2                -\n\
             \n  echo-1: exited with code 2: No module named vllm\n"
        ),
        "{stdout}"
    );
    let out = sovctl(addr, &["deploy", "show", "echo", "-o", "json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["spec"]["working_dir"], "/srv/echo");
    let failed = &v["replicas"][1];
    assert_eq!(
        (
            failed["status"].as_str(),
            failed["exit_code"].as_i64(),
            failed["status_reason"].as_str(),
            failed["restarts"].as_u64()
        ),
        (
            Some("failed"),
            Some(2),
            Some("exited with code 2: No module named vllm"),
            Some(5)
        )
    );
    assert_eq!(v["replicas"][0]["exit_code"], serde_json::Value::Null);
}

#[tokio::test(flavor = "multi_thread")]
async fn node_drain_sends_the_deadline_in_milliseconds() {
    let (addr, fake) = serve().await;
    let out = sovctl(
        addr,
        &[
            "node",
            "drain",
            "sim-fr-1",
            "--deadline",
            "1m30s",
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["draining"].as_bool(), v["drain_deadline_ms"].as_i64()),
        (Some(true), Some(4_102_444_800_000))
    );
    let sent = fake.0.drains.lock().unwrap().pop().unwrap();
    assert_eq!((sent.deadline_ms, sent.force), (90_000, false));
    let out = sovctl(addr, &["node", "show", "x"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "error: not found: node \"x\" is not registered\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn node_drain_force_sends_force_and_no_deadline() {
    let (addr, fake) = serve().await;
    let out = sovctl(addr, &["node", "drain", "sim-fr-1", "--force"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "node sim-fr-1 is draining: no new replicas are placed on it; its replicas were told to \
         stop at once and are replaced elsewhere\n"
    );
    let sent = fake.0.drains.lock().unwrap().clone();
    assert_eq!(
        sent,
        [pb::DrainNodeRequest {
            name: "sim-fr-1".into(),
            deadline_ms: 0,
            force: true,
        }]
    );
    let both = sovctl(
        addr,
        &["node", "drain", "sim-fr-1", "--force", "--deadline", "1h"],
    )
    .await;
    assert_eq!(both.status.code(), Some(2));
    assert!(
        text(&both.stderr).contains("'--force' cannot be used with '--deadline <DURATION>'"),
        "{}",
        text(&both.stderr)
    );
    assert_eq!(fake.0.drains.lock().unwrap().len(), 1, "nothing sent");
}

/// A bundle directory whose `stop.cedar` makes the fake plan stop, move and flag replicas.
fn disruptive_bundle() -> ScratchDir {
    let dir = ScratchDir::new();
    dir.write("stop.cedar", "forbid(principal, action, resource);\n");
    dir
}

/// The lines of a watch's plain output without their timestamps, checking that each has one.
fn unstamped(stdout: &[u8]) -> Vec<String> {
    text(stdout)
        .lines()
        .map(|line| {
            let (stamp, rest) = line.split_at(21);
            assert!(
                stamp.len() == 21 && stamp.as_bytes()[10] == b'T' && stamp.ends_with("Z "),
                "no UTC timestamp: {line:?}"
            );
            rest.to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_plan_prints_impacts_and_the_hash_and_exits_1() {
    let (addr, fake) = serve().await;
    let dir = disruptive_bundle();
    let out = sovctl(addr, &["policy", "plan", dir.path()]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!(
            "policy plan: bundle 3f9a1c0b7d2e… would become version 4 (replacing version 3)\n\
             \n\
             No rules.\n\
             \n\
             ACTION     DEPLOYMENT   ALLOCATION   NODE       RULES\n\
             stop-now   frontier     frontier-0   sim-cn-1   export-4e091\n\
             migrate    open-eu      open-eu-1    sim-us-1   eu-only\n\
             \n\
             Deployments left short of replicas:\n\
             DEPLOYMENT   STATE         WANTED   KEPT   PLACEABLE\n\
             frontier     unplaceable   1        0      0\n  \
             frontier: 0/3 nodes eligible: 3 forbidden by policy export-4e091\n\
             \n\
             1 replica stops at once, 1 migrates, 0 audited; 1 deployment unplaceable\n\
             plan hash: {DISRUPTIVE_PLAN_HASH}\n\
             to apply exactly this plan, run: sovctl policy apply {} --plan-hash \
             {DISRUPTIVE_PLAN_HASH}\n",
            dir.path()
        )
    );
    assert!(
        fake.0.applied_plan_hashes.lock().unwrap().is_empty(),
        "a plan applies nothing"
    );
    let json = sovctl(addr, &["policy", "plan", dir.path(), "-o", "json"]).await;
    assert_eq!(json.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["plan_hash"], DISRUPTIVE_PLAN_HASH);
    assert_eq!(v["allocations"][1]["action"], "stop-now");

    let calm = ScratchDir::new();
    calm.write("base.cedar", "permit(principal, action, resource);\n");
    let out = sovctl(addr, &["policy", "plan", calm.path()]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("\nNo running replica changes standing.\n"),
        "{}",
        text(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_plan_exit_codes_tell_a_bad_bundle_from_a_bad_cluster() {
    let (addr, _) = serve().await;
    let bad = ScratchDir::new();
    bad.write("bad.cedar", "permit(}\n");
    let out = sovctl(addr, &["policy", "plan", bad.path()]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).ends_with(
            "error: invalid policy bundle:\n  bad.cedar:1:5: unexpected token `}`\n  \
             schema.cedarschema:2:1: unknown type `Strin`\n"
        ),
        "{}",
        text(&out.stderr)
    );
    let missing = sovctl(addr, &["policy", "plan", "/nonexistent/policies"]).await;
    assert_eq!(missing.status.code(), Some(2));
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = sovctl(closed, &["policy", "plan", bad.path()]).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_apply_without_flags_refuses_a_bundle_that_stops_replicas() {
    let (addr, fake) = serve().await;
    let dir = disruptive_bundle();
    let out = sovctl(
        addr,
        &["policy", "apply", dir.path(), "--comment", "tier-1 only"],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    let stderr = text(&out.stderr);
    let command = format!(
        "sovctl policy apply {} --plan-hash {DISRUPTIVE_PLAN_HASH} --comment 'tier-1 only'",
        dir.path()
    );
    // The note, the plan as `policy plan` prints it, then one line.
    assert!(stderr.starts_with("sending 1 file from "), "{stderr}");
    assert!(
        stderr.contains("\nstop-now   frontier     frontier-0   sim-cn-1   export-4e091\n"),
        "{stderr}"
    );
    assert!(
        stderr.ends_with(&format!(
            "\nerror: this bundle stops, moves or flags 2 running replicas; review the plan \
             above, then run: {command} (or --yes to skip the check)\n"
        )),
        "{stderr}"
    );
    assert!(
        fake.0.applied_plan_hashes.lock().unwrap().is_empty(),
        "nothing applied"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_apply_sends_the_plan_hash_or_none_with_yes() {
    let (addr, fake) = serve().await;
    let dir = disruptive_bundle();
    let out = sovctl(
        addr,
        &[
            "policy",
            "apply",
            dir.path(),
            "--plan-hash",
            DISRUPTIVE_PLAN_HASH,
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "policy version 4 in force (hash 3f9a1c0b7d2e…): 1 replica stopped, 1 migrating, 0 \
         violations recorded\n"
    );
    let out = sovctl(
        addr,
        &["policy", "apply", dir.path(), "--yes", "-o", "json"],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["impact"][1]["action"], "stop-now");
    assert_eq!(v["plan_hash"], DISRUPTIVE_PLAN_HASH);
    assert_eq!(
        *fake.0.applied_plan_hashes.lock().unwrap(),
        [DISRUPTIVE_PLAN_HASH, ""]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plan_hash_the_cluster_moved_past_is_reported_on_one_line() {
    let (addr, _) = serve().await;
    let dir = disruptive_bundle();
    let out = sovctl(
        addr,
        &["policy", "apply", dir.path(), "--plan-hash", CALM_PLAN_HASH],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    let last = stderr.lines().last().unwrap();
    assert_eq!(
        last,
        format!(
            "error: failed precondition: the cluster changed since plan hash cdcdcdcdcdcd… was \
             computed: applying the bundle now would stop, move or flag other replicas than \
             planned, so nothing was applied; review the new plan with: sovctl policy plan {}",
            dir.path()
        )
    );
    assert_eq!(
        stderr.lines().count(),
        2,
        "the files note, then one line: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_apply_wait_follows_progress_until_converged() {
    let (addr, fake) = serve().await;
    let dir = disruptive_bundle();
    let out = sovctl(addr, &["policy", "apply", dir.path(), "--yes", "--wait"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let (first, rest) = stdout.split_once('\n').unwrap();
    assert!(first.starts_with("policy version 4 in force "), "{stdout}");
    assert_eq!(
        unstamped(rest.as_bytes()),
        [
            "policy version 4: 0/1 moved; 1 migrating (1 with a replacement placed)",
            "policy version 4: 1/1 moved; nothing left to do",
            "converged: nothing left to stop, move or place under policy version 4",
        ]
    );
    assert_eq!(fake.0.progress_polls.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn deploy_show_watch_prints_a_line_per_change_until_converged() {
    let (addr, fake) = serve().await;
    let out = sovctl(addr, &["deploy", "show", "open-eu", "--watch"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        unstamped(&out.stdout),
        [
            "open-eu migrating (0/1): 1 running of 1; replacement open-eu-42-0 starting on \
             sim-fr-paris-1",
            "open-eu migrating (0/1): 1 running of 1",
            "open-eu compliant: 1 running of 1",
            "open-eu converged: compliant, 1 running of 1",
        ]
    );
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
    assert_eq!(fake.0.gets.lock().unwrap()["open-eu"], 4);

    let json = sovctl(
        addr,
        &["deploy", "show", "open-eu", "--watch", "-o", "json"],
    )
    .await;
    assert_eq!(json.status.code(), Some(0), "{}", text(&json.stderr));
    // The deployment converged already: one document, which says so.
    let docs: Vec<serde_json::Value> = text(&json.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(docs.len(), 1, "{}", text(&json.stdout));
    assert_eq!(docs[0]["compliance"]["converged"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn deploy_show_watch_rides_out_a_leader_change() {
    let (addr, _) = serve().await;
    let out = sovctl(addr, &["deploy", "show", "flaky", "--watch"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "said once: {stderr}");
    assert!(
        stderr.starts_with(&format!(
            "no answer this time (http://{addr}: unavailable: no leader elected); still \
             watching until "
        )),
        "{stderr}"
    );
    assert_eq!(
        unstamped(&out.stdout).last().unwrap(),
        "flaky converged: compliant, 1 running of 1"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deploy_show_watch_gives_up_at_the_timeout_saying_what_is_left() {
    let (addr, _) = serve().await;
    let out = sovctl(
        addr,
        &[
            "deploy",
            "show",
            "never",
            "--watch",
            "--watch-timeout",
            "1s",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "error: deployment never not converged after 1s: migrating (0/1)\n"
    );
    assert_eq!(unstamped(&out.stdout).len(), 1, "one line: nothing changed");
    let gone = sovctl(addr, &["deploy", "show", "gone", "--watch"]).await;
    assert_eq!(gone.status.code(), Some(1));
    assert_eq!(
        text(&gone.stderr),
        "error: not found: deployment \"gone\" does not exist\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn history_query_follows_pages_up_to_the_limit() {
    let (addr, fake) = serve().await;
    let out = sovctl(
        addr,
        &[
            "history",
            "query",
            "--node",
            "sim-fr-1",
            "--kind",
            "node.down",
            "--since",
            "2026-06-12T18:00:00Z",
            "--until",
            "2026-06-12T21:00:00+02:00",
            "--limit",
            "250",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 251, "a header and 250 events");
    assert!(
        stdout.lines().nth(1).unwrap().starts_with(
            "0     2026-06-12T18:00:00Z   node.down   -            sim-fr-1   v1       down"
        ),
        "{stdout}"
    );
    assert!(
        stdout.lines().last().unwrap().starts_with("249 "),
        "{stdout}"
    );
    assert_eq!(
        text(&out.stderr),
        "more events follow; raise --limit (at most 100000) or narrow the filters to see them\n"
    );
    let sent = fake.0.queries.lock().unwrap().clone();
    let pages: Vec<(u32, &str)> = sent
        .iter()
        .map(|q| (q.limit, q.page_token.as_str()))
        .collect();
    assert_eq!(pages, [(250, ""), (150, "100"), (50, "200")]);
    let q = &sent[0];
    assert_eq!(
        (
            q.node.as_str(),
            q.kind.as_str(),
            q.since_ms,
            q.until_ms,
            q.deployment.as_str()
        ),
        ("sim-fr-1", "node.down", AT, AT + 3_600_000, "")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn history_query_shows_a_line_per_event_and_the_bodies_as_json() {
    let (addr, _) = serve().await;
    let out = sovctl(addr, &["history", "query", "--deployment", "open-eu"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "SEQ   TIME (UTC)             KIND                  DEPLOYMENT   NODE   POLICY   DETAIL\n\
         12    2026-06-12T18:00:12Z   allocation.placed     open-eu      ie-1   v2       open-eu-7 placed on ie-1 (IE, parent US)\n\
         19    2026-06-12T18:00:19Z   violation.detected    open-eu      ie-1   v3       open-eu-7 violation migrate: eu-sovereign-operator\n\
         20    2026-06-12T18:00:20Z   allocation.placed     open-eu      de-1   v3       open-eu-9 placed on de-1 (DE, parent DE), replaces open-eu-7\n\
         24    2026-06-12T18:00:24Z   allocation.migrated   open-eu      -      v3       open-eu-7 migrated ie-1 → de-1 (replacement open-eu-9)\n"
    );
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));

    let out = sovctl(
        addr,
        &["history", "query", "--deployment", "open-eu", "-o", "json"],
    )
    .await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["tree_size"].as_u64(), v["more"].as_bool()),
        (Some(300), Some(false))
    );
    assert_eq!(v["root"], "6f".repeat(32));
    let placed = &v["events"][0];
    assert_eq!(
        (
            placed["seq"].as_u64(),
            placed["kind"].as_str(),
            placed["facts"]["ultimate_parent_hq"].as_str(),
            placed["eligible"].as_str()
        ),
        (
            Some(12),
            Some("allocation.placed"),
            Some("US"),
            Some("no rule forbids it")
        )
    );
    assert_eq!(v["events"][3]["to_node"], "de-1");
}

#[tokio::test(flavor = "multi_thread")]
async fn history_query_refuses_relative_times_and_reversed_ranges() {
    let (addr, fake) = serve().await;
    for bad in ["-1h", "30m ago", "2026-06-12T18:00:00"] {
        let out = sovctl(addr, &["history", "query", "--since", bad]).await;
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains(&format!(
                "{bad:?} is not a time; write it in RFC 3339 with a time zone, like \
                 2026-06-12T18:00:00Z"
            )),
            "{bad}: {stderr}"
        );
    }
    let out = sovctl(
        addr,
        &[
            "history",
            "query",
            "--since",
            "2026-06-12T18:00:00Z",
            "--until",
            "2026-06-12T17:00:00Z",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "error: --until 2026-06-12T17:00:00Z is not after --since 2026-06-12T18:00:00Z; the \
         range is since (inclusive) to until (exclusive)\n"
    );
    assert!(fake.0.queries.lock().unwrap().is_empty(), "nothing sent");
}

#[tokio::test(flavor = "multi_thread")]
async fn history_query_as_of_shows_where_each_replica_ran_and_why() {
    let (addr, fake) = serve().await;
    let out = sovctl(
        addr,
        &[
            "history",
            "query",
            "--deployment",
            "open-eu",
            "--as-of",
            "2026-06-12T18:00:00Z",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "open-eu at 2026-06-12T18:00:00Z: policy version 3 (hash 6f0c1d2e3f4a…) in force; 2 replicas\n\
         \n\
         ALLOCATION   NODE   COUNTRY   OPERATOR   PARENT HQ   TRUST                  PLACED UNDER                        STATUS    STANDING\n\
         open-eu-7    ie-1   IE        acme       US          operator-certificate   policy v2 at 2026-06-12T17:00:00Z   running   compliant\n\
         open-eu-8    fr-1   FR        acme       FR          operator-certificate   policy v2 at 2026-06-12T17:00:00Z   running   compliant\n\
         \n  \
         open-eu-7 (certified iso27001): eligible because no rule of policy version 2 forbids it on these facts\n  \
         open-eu-8 (certified iso27001): eligible because no rule of policy version 2 forbids it on these facts\n"
    );
    assert_eq!(fake.0.as_of.lock().unwrap()[0].at_ms, AT);
    assert!(fake.0.queries.lock().unwrap().is_empty(), "no event query");

    let json = sovctl(
        addr,
        &[
            "history",
            "query",
            "--deployment",
            "open-eu",
            "--as-of",
            "2026-06-12T18:00:00Z",
            "-o",
            "json",
        ],
    )
    .await;
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(
        (
            v["existed"].as_bool(),
            v["replicas"][0]["ultimate_parent_hq"].as_str()
        ),
        (Some(true), Some("US"))
    );

    let gone = sovctl(
        addr,
        &[
            "history",
            "query",
            "--deployment",
            "gone",
            "--as-of",
            "2026-06-12T18:00:00Z",
        ],
    )
    .await;
    assert_eq!(gone.status.code(), Some(0));
    assert_eq!(
        text(&gone.stdout),
        "gone did not exist at 2026-06-12T18:00:00Z (policy version 3 (hash 6f0c1d2e3f4a…) in \
         force then)\n"
    );

    // The instant needs a deployment, and event filters mean nothing with it.
    for bad in [
        &["history", "query", "--as-of", "now"][..],
        &[
            "history",
            "query",
            "--deployment",
            "open-eu",
            "--as-of",
            "now",
            "--kind",
            "node.down",
        ],
    ] {
        let out = sovctl(addr, bad).await;
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
    }
}

/// Writes the public key file of `key` to `dir`, and returns its path.
fn key_file(dir: &ScratchDir, name: &str, key: &SigningKey) -> String {
    dir.write(name, &evidence::public_key_text(&key.verifying_key()))
}

#[tokio::test(flavor = "multi_thread")]
async fn history_export_writes_the_file_whole_and_extends_a_previous_one() {
    let (addr, fake) = serve().await;
    let dir = ScratchDir::new();
    let may = dir.write("may.jsonl", &export_text(&history(5), None, &cluster_key()));
    let june = format!("{}/june.jsonl", dir.path());
    let out = sovctl(
        addr,
        &[
            "history",
            "export",
            "--since",
            "2026-06-01T00:00:00Z",
            "--deployment",
            "open-eu",
            "--previous",
            &may,
            "-f",
            &june,
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    let root = hex(&history(FAKE_TREE_SIZE).frontier.root());
    assert_eq!(
        text(&out.stderr),
        format!(
            "exported 8 events (leaves 0..7), tree size 8, extending tree size 5, root {}…, to \
             {june}\n",
            &root[..12]
        )
    );
    let sent = fake.0.exports.lock().unwrap().pop().unwrap();
    assert_eq!(
        (sent.previous_size, sent.since_ms, sent.deployment.as_str()),
        (5, 1_780_272_000_000, "open-eu")
    );
    assert_eq!(
        std::fs::read_to_string(&june).unwrap(),
        export_text(&history(FAKE_TREE_SIZE), Some(5), &cluster_key())
    );
    assert!(!std::path::Path::new(&format!("{june}.partial")).exists());

    // What was written verifies, and extends May's export.
    let key = key_file(&dir, "cluster.pub", &cluster_key());
    let verified =
        sovctl_offline(&["audit", "verify", &june, "--key", &key, "--previous", &may]).await;
    assert_eq!(
        verified.status.code(),
        Some(0),
        "{}",
        text(&verified.stderr)
    );
    assert!(
        text(&verified.stdout).ends_with("; extends the previous export at tree size 5\n"),
        "{}",
        text(&verified.stdout)
    );

    // An existing file is evidence: kept, and nothing is asked of the cluster.
    std::fs::write(&june, "keep me").unwrap();
    let again = sovctl(addr, &["history", "export", "-f", &june]).await;
    assert_eq!(again.status.code(), Some(2));
    assert_eq!(
        text(&again.stderr),
        format!("error: {june} exists; choose another file, or pass --force to replace it\n")
    );
    assert_eq!(std::fs::read_to_string(&june).unwrap(), "keep me");
    assert!(fake.0.exports.lock().unwrap().is_empty(), "nothing sent");
    let forced = sovctl(
        addr,
        &["history", "export", "-f", &june, "--force", "-o", "json"],
    )
    .await;
    assert_eq!(forced.status.code(), Some(0), "{}", text(&forced.stderr));
    let v: serde_json::Value = serde_json::from_slice(&forced.stdout).unwrap();
    assert_eq!(
        (
            v["events"].as_u64(),
            v["tree_size"].as_u64(),
            v["previous_size"].is_null()
        ),
        (Some(8), Some(8), true)
    );
    assert_eq!(
        std::fs::read_to_string(&june).unwrap(),
        export_text(&history(FAKE_TREE_SIZE), None, &cluster_key())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn history_export_to_stdout_streams_the_evidence() {
    let (addr, _) = serve().await;
    let out = sovctl(addr, &["history", "export"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        export_text(&history(FAKE_TREE_SIZE), None, &cluster_key())
    );
    assert!(
        text(&out.stderr).ends_with(", to stdout\n"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn history_export_without_a_seal_writes_no_file() {
    let (addr, fake) = serve().await;
    let dir = ScratchDir::new();
    let file = format!("{}/cut.jsonl", dir.path());
    let out = sovctl(
        addr,
        &["history", "export", "--deployment", "cut", "-f", &file],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!(
            "error: the export ended after 8 events without its signed seal; {file} was not \
             written. Run it again\n"
        )
    );
    assert!(!std::path::Path::new(&file).exists());
    assert!(!std::path::Path::new(&format!("{file}.partial")).exists());

    let nowhere = format!("{}/no-such-dir/e.jsonl", dir.path());
    let out = sovctl(addr, &["history", "export", "-f", &nowhere]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).starts_with(&format!("error: cannot write {nowhere}: ")),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        fake.0.exports.lock().unwrap().len(),
        1,
        "only the first was sent"
    );

    let not_an_export = dir.write("notes.txt", "hello\n");
    let out = sovctl(addr, &["history", "export", "--previous", &not_an_export]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).starts_with(&format!(
            "error: --previous {not_an_export}: its last line is not the seal of a sov export"
        )),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_checkpoint_prints_and_checks_the_signed_checkpoint() {
    let (addr, fake) = serve().await;
    let dir = ScratchDir::new();
    let key = key_file(&dir, "cluster.pub", &cluster_key());
    let saved = format!("{}/cp.json", dir.path());
    let out = sovctl(
        addr,
        &["audit", "checkpoint", "--key", &key, "--out", &saved],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let key_id = evidence::key_id(&cluster_key().verifying_key());
    let root = hex(&history(FAKE_TREE_SIZE).frontier.root());
    for expected in [
        "Cluster:    c-test\n".to_owned(),
        "Tree size:  8\n".to_owned(),
        format!("Root:       {root}\n"),
        "Time:       2026-06-12T18:00:00Z\n".to_owned(),
        format!("Key ID:     {key_id}\n"),
        format!("Verified:   yes, the signature is valid for key {key_id}\n"),
    ] {
        assert!(
            stdout.contains(&expected),
            "missing {expected:?} in\n{stdout}"
        );
    }
    assert_eq!(
        text(&out.stderr),
        format!("checkpoint written to {saved}\n")
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&saved).unwrap()).unwrap();
    assert_eq!(
        (
            v["tree_size"].as_u64(),
            v["root"].as_str(),
            v["cluster_id"].as_str()
        ),
        (Some(8), Some(root.as_str()), Some(CLUSTER))
    );
    assert_eq!(v["signature"].as_str().map(str::len), Some(128));

    // Another cluster's key: the signature does not hold, and nothing is written.
    let other = key_file(&dir, "other.pub", &SigningKey::from_bytes(&[8; 32]));
    let elsewhere = format!("{}/cp2.json", dir.path());
    let out = sovctl(
        addr,
        &["audit", "checkpoint", "--key", &other, "--out", &elsewhere],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr)
            .starts_with("error: FAILED: the checkpoint's signature does not verify with key "),
        "{}",
        text(&out.stderr)
    );
    assert!(!std::path::Path::new(&elsewhere).exists());

    let unchecked = sovctl(addr, &["audit", "checkpoint", "-o", "json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&unchecked.stdout).unwrap();
    assert_eq!(
        (v["tree_size"].as_u64(), v["verified_with_key"].is_null()),
        (Some(8), true)
    );

    fake.0.no_signing_key.store(true, Ordering::SeqCst);
    let refused = sovctl(addr, &["audit", "checkpoint"]).await;
    assert_eq!(refused.status.code(), Some(1));
    assert_eq!(
        text(&refused.stderr),
        "error: failed precondition: this scheduler has no signing key: create one with \
         `sov-scheduler keygen --out DIR`\n"
    );
}

/// Runs `sovctl` as a reviewer would offline: no `--endpoint`, a `SOV_ENDPOINT` naming a host
/// that does not exist and a `SOV_TLS_DIR` that does not either, so a command that so much as
/// reads them fails.
async fn sovctl_offline(args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_sovctl"))
        .args(args)
        .env("SOV_ENDPOINT", "https://unreachable.invalid:7400")
        .env("SOV_TLS_DIR", "/nonexistent/sovctl-commands-test")
        .output()
        .await
        .unwrap()
}

/// An export of the fake cluster's 8 events, the key file that verifies it, and its lines:
/// line 1 the header, lines 2 to 9 leaves 0 to 7, line 10 the seal.
struct Evidence {
    dir: ScratchDir,
    key: String,
    lines: Vec<String>,
}

impl Evidence {
    fn new() -> Self {
        let dir = ScratchDir::new();
        let key = key_file(&dir, "cluster.pub", &cluster_key());
        let lines = export_text(&history(8), None, &cluster_key())
            .lines()
            .map(str::to_owned)
            .collect();
        Evidence { dir, key, lines }
    }

    /// `audit verify` of `lines` written to a file; the file's path and the result.
    async fn verify(&self, lines: &[String]) -> (String, Output) {
        let file = self.dir.write("export.jsonl", &(lines.join("\n") + "\n"));
        let out = sovctl_offline(&["audit", "verify", &file, "--key", &self.key]).await;
        (file, out)
    }

    /// Asserts that `lines` fail to verify with exit code 1 and exactly `reason`.
    async fn assert_fails(&self, lines: &[String], reason: &str) {
        let (_, out) = self.verify(lines).await;
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
        assert_eq!(text(&out.stderr), format!("error: FAILED: {reason}\n"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_verify_accepts_an_untampered_export_offline() {
    let e = Evidence::new();
    // A scheduler address that must not be called: anything connecting would show here.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let (file, out) = e.verify(&e.lines).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let root = hex(&history(8).frontier.root());
    let key_id = evidence::key_id(&cluster_key().verifying_key());
    assert_eq!(
        text(&out.stdout),
        format!(
            "OK: 8 events (leaves 0..7) of cluster c-test verify against the checkpoint signed \
             by key {key_id}: tree size 8, root {root}, at 2026-06-12T18:01:00Z\n"
        )
    );
    let addr = listener.local_addr().unwrap().to_string();
    let out = sovctl_offline(&[
        "audit",
        "verify",
        &file,
        "--key",
        &e.key,
        "--endpoint",
        &addr,
        "-o",
        "json",
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            v["verified"].as_bool(),
            v["events"].as_u64(),
            v["root"].as_str()
        ),
        (Some(true), Some(8), Some(root.as_str()))
    );
    assert_eq!(
        listener.accept().unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "audit verify connected to the endpoint"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_verify_names_a_flipped_byte() {
    let e = Evidence::new();
    let mut lines = e.lines.clone();
    // Leaf 3 on line 5: the node it ran on, changed from ie-1 to ie-7.
    lines[4] = lines[4].replacen("ie-1", "ie-7", 1);
    assert_ne!(lines[4], e.lines[4]);
    e.assert_fails(
        &lines,
        "line 5: leaf 3 does not match the signed history (tree size 8): the event or its proof \
         was altered",
    )
    .await;
    let (_, out) = e.verify(&lines).await;
    let (file, json) = {
        let file = e.dir.write("export.jsonl", &(lines.join("\n") + "\n"));
        let json = sovctl_offline(&["audit", "verify", &file, "--key", &e.key, "-o", "json"]).await;
        (file, json)
    };
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["verified"], false);
    assert_eq!(v["file"], file);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .starts_with("line 5: leaf 3 does not match"),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_verify_names_a_removed_event() {
    let e = Evidence::new();
    let mut lines = e.lines.clone();
    lines.remove(3);
    e.assert_fails(
        &lines,
        "line 4: leaf 2 is missing before this line (leaf 3): an event was removed",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_verify_names_swapped_events() {
    let e = Evidence::new();
    let mut lines = e.lines.clone();
    // Leaves 4 and 5, on lines 6 and 7.
    lines.swap(5, 6);
    e.assert_fails(
        &lines,
        "line 6: leaf 5 comes before leaf 4, which is further down: events were reordered",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_verify_names_a_truncated_tail() {
    let e = Evidence::new();
    e.assert_fails(
        &e.lines[..7],
        "no seal: the file ends at line 7 without its signed last line; it was truncated",
    )
    .await;
    // Cut inside the seal's line, as a copy interrupted mid-way leaves it.
    let mut cut = e.lines.clone();
    let seal = cut.pop().unwrap();
    cut.push(seal[..seal.len() / 2].to_owned());
    let (_, out) = e.verify(&cut).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with("error: FAILED: line 10: not an evidence line (")
            && stderr.ends_with("): the file was altered\n"),
        "{stderr}"
    );
    // Events cut off, the seal put back: the seal lists them.
    let mut short = e.lines[..6].to_vec();
    short.push(e.lines[9].clone());
    e.assert_fails(
        &short,
        "leaf 5 and any after it that the seal lists are missing after line 6: events were \
         removed or the file was truncated",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_verify_names_a_forged_checkpoint() {
    let e = Evidence::new();
    let key_id = evidence::key_id(&cluster_key().verifying_key());
    let forged_seal = format!(
        "line 10: the seal's signature does not verify with key {key_id}: the checkpoint or the \
         list of exported events was altered, or another key signed it"
    );
    // Another root in the seal: the history of a cluster that placed open-eu-0 elsewhere.
    let mut lines = e.lines.clone();
    let root = hex(&history(8).frontier.root());
    lines[9] = lines[9].replace(&root, &hex(&history(7).frontier.root()));
    assert_ne!(lines[9], e.lines[9]);
    e.assert_fails(&lines, &forged_seal).await;
    // A whole export made and signed by someone without the cluster's key.
    let forger = SigningKey::from_bytes(&[8; 32]);
    let forged: Vec<String> = export_text(&history(8), None, &forger)
        .lines()
        .map(str::to_owned)
        .collect();
    e.assert_fails(&forged, &forged_seal).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_verify_checks_the_chain_to_a_previous_export() {
    let e = Evidence::new();
    let may = e
        .dir
        .write("may.jsonl", &export_text(&history(5), None, &cluster_key()));
    let june = e.dir.write(
        "june.jsonl",
        &export_text(&history(8), Some(5), &cluster_key()),
    );
    let out = sovctl_offline(&[
        "audit",
        "verify",
        &june,
        "--key",
        &e.key,
        "--previous",
        &may,
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("OK: 8 events (leaves 0..7) of cluster c-test")
            && text(&out.stdout).ends_with("; extends the previous export at tree size 5\n"),
        "{}",
        text(&out.stdout)
    );
    let bare = e.dir.write(
        "bare.jsonl",
        &export_text(&history(8), None, &cluster_key()),
    );
    let out = sovctl_offline(&[
        "audit",
        "verify",
        &bare,
        "--key",
        &e.key,
        "--previous",
        &may,
    ])
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "error: FAILED: no consistency proof from tree size 5 in this export: export again with \
         --previous\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_verify_of_unusable_files_is_bad_input() {
    let e = Evidence::new();
    let (file, _) = e.verify(&e.lines).await;
    let missing = format!("{}/none.jsonl", e.dir.path());
    let out = sovctl_offline(&["audit", "verify", &missing, "--key", &e.key]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).starts_with(&format!("error: cannot read the export {missing}: ")),
        "{}",
        text(&out.stderr)
    );
    let secret = e
        .dir
        .write("cluster.key", &evidence::secret_key_text(&cluster_key()));
    let out = sovctl_offline(&["audit", "verify", &file, "--key", &secret]).await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with(&format!("error: {secret}: not a sov public key file"))
            && stderr.lines().count() == 1,
        "{stderr}"
    );
    let out = sovctl_offline(&["audit", "verify", &file]).await;
    assert_eq!(out.status.code(), Some(2), "--key is required");
}
