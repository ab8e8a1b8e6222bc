//! The `sovctl` binary against a fake scheduler on loopback: what users and scripts see (stdout,
//! stderr, exit codes) for the commands whose behaviour depends on the server's answer. The
//! fake answers from fixed data and records what it was sent; the real scheduler's logic is
//! tested in its own crate.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use sov_proto::v1 as pb;
use sov_proto::v1::deployment_service_server::{DeploymentService, DeploymentServiceServer};
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

async fn serve() -> (SocketAddr, Fake) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = Fake::default();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(PolicyServiceServer::new(fake.clone()))
            .add_service(DeploymentServiceServer::new(fake.clone()))
            .add_service(NodeServiceServer::new(fake.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (addr, fake)
}

async fn sovctl(addr: SocketAddr, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_sovctl"))
        .args(args)
        .args(["--endpoint", &addr.to_string(), "--timeout", "5"])
        .env_remove("SOV_ENDPOINT")
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
