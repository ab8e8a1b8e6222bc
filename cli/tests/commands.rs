//! The `sovctl` binary against a fake scheduler on loopback: what users and scripts see (stdout,
//! stderr, exit codes) for the commands whose behaviour depends on the server's answer. The
//! fake answers from fixed data; the real scheduler's logic is tested in its own crate.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};

use sov_proto::v1 as pb;
use sov_proto::v1::deployment_service_server::{DeploymentService, DeploymentServiceServer};
use sov_proto::v1::node_service_server::{NodeService, NodeServiceServer};
use sov_proto::v1::policy_service_server::{PolicyService, PolicyServiceServer};
use tonic::{Request, Response, Status};

type Answer<T> = Result<Response<T>, Status>;

struct Fake;

#[tonic::async_trait]
impl PolicyService for Fake {
    async fn apply(&self, req: Request<pb::ApplyPolicyRequest>) -> Answer<pb::PolicyVersion> {
        let bundle = req.into_inner().bundle.unwrap_or_default();
        if bundle.files.contains_key("bad.cedar") {
            return Err(Status::invalid_argument(
                "invalid policy bundle:\nbad.cedar:1:5: unexpected token `}`\n\
                 schema.cedarschema:2:1: unknown type `Strin`",
            ));
        }
        Ok(Response::new(pb::PolicyVersion {
            version: 4,
            bundle_hash: "3f9a1c0b7d2e4f60a1b2c3d4e5f6".into(),
            author: bundle.author,
            comment: bundle.comment,
            changed: true,
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
    async fn get(&self, req: Request<pb::GetDeploymentRequest>) -> Answer<pb::Deployment> {
        let name = req.into_inner().name;
        if name != "echo" {
            return Err(Status::not_found(format!(
                "deployment {name:?} does not exist"
            )));
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
        // Echo the deadline through the revision so the test sees what was sent.
        Ok(Response::new(pb::Node {
            name: req.name,
            draining: true,
            revision: req.deadline_ms,
            ..Default::default()
        }))
    }
    async fn undrain(&self, _: Request<pb::UndrainNodeRequest>) -> Answer<pb::Node> {
        Err(Status::unimplemented("fake"))
    }
}

async fn serve() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(PolicyServiceServer::new(Fake))
            .add_service(DeploymentServiceServer::new(Fake))
            .add_service(NodeServiceServer::new(Fake))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
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
    let addr = serve().await;
    let dir = ScratchDir::new();
    dir.write("base.cedar", "permit(principal, action, resource);\n");
    dir.write("schema.cedarschema", "entity Node;\n");
    dir.write("README.md", "# bundle\n");
    let out = sovctl(addr, &["policy", "apply", dir.path(), "--comment", "first"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "policy version 4 activated (hash 3f9a1c0b7d2e…)\n"
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
    let addr = serve().await;
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
    let addr = serve().await;
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
    let addr = serve().await;
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
    let addr = serve().await;
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
    let addr = serve().await;
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
    let addr = serve().await;
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
    let addr = serve().await;
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
    let addr = serve().await;
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
            "\nID       NODE       GPUS                PORT    DESIRED   STATUS            RESTARTS   POLICY VERSION\n\
             echo-0   sim-fr-1   1 (sim-fr-1-gpu0)   20000   run       running           0          2\n\
             echo-1   sim-fr-1   1 (sim-fr-1-gpu1)   20001   run       failed (exit 2)   5          2\n\
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
    let addr = serve().await;
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
        (v["draining"].as_bool(), v["revision"].as_u64()),
        (Some(true), Some(90_000))
    );
    let out = sovctl(addr, &["node", "show", "x"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "error: not found: node \"x\" is not registered\n"
    );
}
