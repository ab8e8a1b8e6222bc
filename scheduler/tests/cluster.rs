//! Layer 2 of the test plan: several schedulers in one process, each with its own real redb files
//! in a temp dir and its own real gRPC ports on loopback. Covers replication to every node,
//! leader failover without losing acknowledged writes, catch-up of a restarted node, snapshot
//! installation on a node that fell behind past a purge, and rejection of bad input.
//!
//! Deadlines in here bound how long a test waits for the cluster to converge; they are generous
//! on purpose and are not speed assertions.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sov_proto::v1 as pb;
use sov_proto::v1::cluster_service_client::ClusterServiceClient;
use sov_proto::v1::deployment_service_client::DeploymentServiceClient;
use sov_scheduler::config::Config;
use sov_scheduler::raft::RaftTuning;
use sov_scheduler::server::{self, Listeners, Scheduler};
use sov_scheduler::state;
use tokio::net::TcpListener;

const CONVERGE: Duration = Duration::from_secs(20);

struct Node {
    id: u64,
    config: Config,
    running: Option<Scheduler>,
    /// Listeners bound when the ports were chosen, used by the first start: a port chosen and
    /// released again could be taken (by another test's outgoing connection) before the start.
    bound: Option<Listeners>,
}

/// Binds a restarted node's old address again. The port was free while the node was down, and
/// another socket of this test process (an outgoing connection's ephemeral port, a parallel
/// test's listener) may hold it for a moment: retry for up to 10 s before failing.
async fn rebind(addr: SocketAddr) -> TcpListener {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => return listener,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot bind {addr} again for the restarted node: {e}"),
        }
    }
}

impl Node {
    fn api(&self) -> SocketAddr {
        self.config.api_listen
    }

    fn sched(&self) -> &Scheduler {
        self.running.as_ref().expect("node is running")
    }

    /// A node whose three listeners are bound now, on free ports written into `config`.
    async fn bind(id: u64, mut config: Config) -> Node {
        let bind = || TcpListener::bind("127.0.0.1:0");
        let listeners = Listeners {
            api: bind().await.unwrap(),
            raft: bind().await.unwrap(),
            http: bind().await.unwrap(),
        };
        config.api_listen = listeners.api.local_addr().unwrap();
        config.raft_listen = listeners.raft.local_addr().unwrap();
        config.http_listen = listeners.http.local_addr().unwrap();
        Node {
            id,
            config,
            running: None,
            bound: Some(listeners),
        }
    }

    async fn start(&mut self) {
        let listeners = match self.bound.take() {
            Some(listeners) => listeners,
            None => Listeners {
                api: rebind(self.config.api_listen).await,
                raft: rebind(self.config.raft_listen).await,
                http: rebind(self.config.http_listen).await,
            },
        };
        self.running = Some(server::start(&self.config, listeners).await.unwrap());
    }

    async fn stop(&mut self) {
        if let Some(s) = self.running.take() {
            s.shutdown().await;
        }
    }

    fn applied(&self) -> u64 {
        self.sched()
            .replica
            .metrics()
            .last_applied
            .map_or(0, |l| l.index)
    }

    fn state_bytes(&self) -> Vec<u8> {
        state::encode(&self.sched().replica.sm.read().state)
    }

    /// The history as this node holds it: (events in the state's head, the head's root, events
    /// in the store, the root the store's tree gives, every stored event's bytes).
    fn history(&self) -> (u64, [u8; 32], u64, [u8; 32], Vec<String>) {
        let sm = &self.sched().replica.sm;
        let head = sm.read().state.history.clone();
        let store = sm.history();
        let reader = store.reader().unwrap();
        let stored = reader.size().unwrap();
        let root = sov_proto::merkle::root_at(&reader, stored).unwrap();
        let events = store.events_up_to(stored).unwrap();
        (head.size, head.root(), stored, root, events)
    }
}

struct Cluster {
    nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn start(n: u64, tuning: RaftTuning) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut nodes = Vec::new();
        for id in 1..=n {
            let config = Config {
                node_id: id,
                data_dir: dir.path().join(format!("node-{id}")),
                bootstrap: id == 1,
                join: None,
                raft: tuning.clone(),
                ..Config::default()
            };
            nodes.push(Node::bind(id, config).await);
        }
        let first = nodes[0].api().to_string();
        for node in nodes.iter_mut().skip(1) {
            node.config.join = Some(first.clone());
        }
        for node in &mut nodes {
            node.start().await;
        }
        let cluster = Self { nodes, _dir: dir };
        cluster.wait_for_voters(n as usize).await;
        cluster
    }

    fn node(&self, id: u64) -> &Node {
        &self.nodes[id as usize - 1]
    }

    fn node_mut(&mut self, id: u64) -> &mut Node {
        &mut self.nodes[id as usize - 1]
    }

    fn running(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.running.is_some())
    }

    /// The leader agreed on by every running node, once there is one.
    async fn wait_for_leader(&self, deadline: Duration) -> u64 {
        eventually(deadline, || {
            let views: Vec<Option<u64>> = self
                .running()
                .map(|n| n.sched().replica.metrics().current_leader)
                .collect();
            match views.first() {
                Some(Some(leader))
                    if views.iter().all(|v| *v == Some(*leader))
                        && self
                            .running()
                            .any(|n| n.id == *leader && n.sched().replica.is_leader()) =>
                {
                    Ok(*leader)
                }
                _ => Err(format!("no agreed leader: {views:?}")),
            }
        })
        .await
    }

    async fn wait_for_voters(&self, voters: usize) {
        let leader = self.wait_for_leader(CONVERGE).await;
        eventually(CONVERGE, || {
            let replica = &self.node(leader).sched().replica;
            let have = replica
                .metrics()
                .membership_config
                .membership()
                .voter_ids()
                .count();
            let has_id = !replica.sm.read().state.cluster.cluster_id.is_empty();
            if have == voters && has_id {
                Ok(())
            } else {
                Err(format!(
                    "{have} of {voters} voters, cluster id set: {has_id}"
                ))
            }
        })
        .await
    }

    /// Waits until every running node has applied at least `index`.
    async fn wait_applied(&self, index: u64) {
        eventually(CONVERGE, || {
            let applied: Vec<(u64, u64)> = self.running().map(|n| (n.id, n.applied())).collect();
            if applied.iter().all(|(_, a)| *a >= index) {
                Ok(())
            } else {
                Err(format!("not all nodes applied {index}: {applied:?}"))
            }
        })
        .await
    }
}

/// Polls `check` until it succeeds; fails the test with its last complaint after `deadline`.
async fn eventually<T>(deadline: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        match check() {
            Ok(value) => return value,
            Err(why) => assert!(start.elapsed() < deadline, "after {deadline:?}: {why}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn spec(name: &str, replicas: u32) -> pb::DeploymentSpec {
    pb::DeploymentSpec {
        name: name.into(),
        model: "tiny".into(),
        replicas,
        ..Default::default()
    }
}

async fn deploy_client(addr: SocketAddr) -> DeploymentServiceClient<tonic::transport::Channel> {
    DeploymentServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

/// Applies a deployment like a real client would: UNAVAILABLE (leadership moving on a loaded
/// machine) is retried a bounded number of times; applying the same spec twice is a no-op.
async fn apply(
    addr: SocketAddr,
    name: &str,
    replicas: u32,
) -> Result<pb::ApplyDeploymentResponse, tonic::Status> {
    let request = pb::ApplyDeploymentRequest {
        spec: Some(spec(name, replicas)),
        expected_generation: 0,
    };
    let mut attempts = 0;
    loop {
        attempts += 1;
        match deploy_client(addr).await.apply(request.clone()).await {
            Err(status) if status.code() == tonic::Code::Unavailable && attempts < 5 => {
                eprintln!("retrying {name} after: {}", status.message());
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            result => return result.map(|r| r.into_inner()),
        }
    }
}

async fn get(
    addr: SocketAddr,
    name: &str,
    consistency: pb::ReadConsistency,
) -> Result<pb::Deployment, tonic::Status> {
    let request = pb::GetDeploymentRequest {
        name: name.into(),
        consistency: consistency as i32,
    };
    deploy_client(addr)
        .await
        .get(request)
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_through_a_follower_is_readable_on_every_node() {
    let cluster = Cluster::start(3, RaftTuning::default()).await;
    let leader = cluster.wait_for_leader(CONVERGE).await;
    let follower = cluster.nodes.iter().find(|n| n.id != leader).unwrap();

    let resp = apply(follower.api(), "via-follower", 2)
        .await
        .expect("forwarded write");
    assert!(resp.created);
    let revision = resp.deployment.unwrap().revision;

    for node in &cluster.nodes {
        // Linearizable read on each node, follower reads included: no waiting needed.
        let d = get(
            node.api(),
            "via-follower",
            pb::ReadConsistency::Linearizable,
        )
        .await
        .unwrap();
        assert_eq!(d.revision, revision, "node {}", node.id);
    }
    // I3: replicas at the same applied index hold byte-identical state.
    cluster.wait_applied(revision).await;
    let bytes: Vec<Vec<u8>> = cluster.nodes.iter().map(Node::state_bytes).collect();
    assert!(
        bytes.windows(2).all(|w| w[0] == w[1]),
        "replica states differ"
    );

    let status = ClusterServiceClient::connect(format!("http://{}", follower.api()))
        .await
        .unwrap()
        .status(pb::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.leader_id, leader);
    assert_eq!(status.members.len(), 3);
    assert!(status.cluster_id.starts_with("sov-"));
    for mut node in cluster.nodes {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_loss_elects_a_new_leader_and_keeps_acknowledged_writes_and_the_old_leader_catches_up()
 {
    let mut cluster = Cluster::start(3, RaftTuning::default()).await;
    let old_leader = cluster.wait_for_leader(CONVERGE).await;
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let name = format!("before-{i}");
        apply(cluster.node(old_leader).api(), &name, 1)
            .await
            .unwrap();
        acknowledged.push(name);
    }

    cluster.node_mut(old_leader).stop().await;
    let stopped_at = Instant::now();
    let new_leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    eprintln!(
        "new leader {new_leader} elected {:?} after stopping leader {old_leader}",
        stopped_at.elapsed()
    );
    assert_ne!(new_leader, old_leader);

    let survivor = cluster.running().next().unwrap().api();
    for i in 0..10 {
        let name = format!("after-{i}");
        apply(survivor, &name, 1).await.unwrap();
        acknowledged.push(name);
    }
    for name in &acknowledged {
        get(survivor, name, pb::ReadConsistency::Linearizable)
            .await
            .unwrap_or_else(|e| panic!("{name} lost: {e}"));
    }

    cluster.node_mut(old_leader).start().await;
    let commit = cluster
        .node(new_leader)
        .sched()
        .replica
        .metrics()
        .local_committed
        .unwrap()
        .index;
    cluster.wait_applied(commit).await;
    let rejoined = cluster.node(old_leader);
    for name in &acknowledged {
        get(rejoined.api(), name, pb::ReadConsistency::Stale)
            .await
            .unwrap_or_else(|e| panic!("{name} missing: {e}"));
    }
    assert_eq!(
        rejoined.state_bytes(),
        cluster.node(new_leader).state_bytes()
    );
    for mut node in cluster.nodes {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_behind_the_purged_log_is_sent_a_snapshot() {
    let tuning = RaftTuning {
        snapshot_logs_since_last: 20,
        max_in_snapshot_log_to_keep: 0,
        ..RaftTuning::default()
    };
    let mut cluster = Cluster::start(3, tuning).await;
    let leader = cluster.wait_for_leader(CONVERGE).await;
    let lagging = if leader == 3 { 2 } else { 3 };
    cluster.node_mut(lagging).stop().await;
    // The stopped node's log ends here; everything after must come from the leader, and the
    // leader purges its log behind snapshots as it goes.
    let addr = cluster.node(leader).api();
    for i in 0..80 {
        apply(addr, &format!("snap-{}", i % 10), i + 1)
            .await
            .unwrap();
    }
    // Snapshots are built and the log purged in the background after the writes; wait for it.
    let deadline = tokio::time::Instant::now() + CONVERGE;
    let purged = loop {
        let m = cluster.node(leader).sched().replica.metrics();
        let purged = m.purged.map_or(0, |l| l.index);
        if purged > 40 || tokio::time::Instant::now() > deadline {
            break purged;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        purged > 40,
        "the leader should have purged its log behind a snapshot (purged {purged})"
    );

    cluster.node_mut(lagging).start().await;
    let commit = cluster
        .node(leader)
        .sched()
        .replica
        .metrics()
        .local_committed
        .unwrap()
        .index;
    cluster.wait_applied(commit).await;
    let m = cluster.node(lagging).sched().replica.metrics();
    let snapshot = m.snapshot.map_or(0, |l| l.index);
    assert!(
        snapshot >= purged,
        "lagging node should hold a snapshot at or past {purged}, has {snapshot}"
    );
    assert_eq!(
        cluster.node(lagging).state_bytes(),
        cluster.node(leader).state_bytes()
    );

    // The placement history came with the snapshot: the same events, the same root, on every
    // node, and the store agrees with the head in the replicated state (issue #6, I3).
    let (size, root, stored, stored_root, events) = cluster.node(leader).history();
    assert!(
        size >= 80,
        "80 deployment writes recorded, history has {size}"
    );
    assert_eq!((stored, stored_root), (size, root));
    for id in 1..=3 {
        assert_eq!(
            cluster.node(id).history(),
            (size, root, stored, stored_root, events.clone()),
            "node {id}'s history differs from the leader's"
        );
    }

    // And again after every node restarts: the store is cut back to the snapshot and the log
    // re-applied, which must write the same bytes.
    for id in 1..=3 {
        cluster.node_mut(id).stop().await;
    }
    for id in 1..=3 {
        cluster.node_mut(id).start().await;
    }
    let leader = cluster.wait_for_leader(CONVERGE).await;
    apply(cluster.node(leader).api(), "after-restart", 1)
        .await
        .unwrap();
    let commit = cluster
        .node(leader)
        .sched()
        .replica
        .metrics()
        .local_committed
        .unwrap()
        .index;
    cluster.wait_applied(commit).await;
    let after = cluster.node(leader).history();
    assert_eq!(after.0, size + 1, "one more event: after-restart created");
    assert_eq!(after.4[..events.len()], events[..], "history rewritten");
    for id in 1..=3 {
        assert_eq!(cluster.node(id).history(), after, "node {id} after restart");
    }
    for mut node in cluster.nodes {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_requests_get_invalid_argument_and_write_nothing() {
    let cluster = Cluster::start(1, RaftTuning::default()).await;
    let node = cluster.node(1);
    let before = node.sched().replica.metrics().last_log_index;

    let cases: Vec<(pb::ApplyDeploymentRequest, &str)> = vec![
        (
            pb::ApplyDeploymentRequest {
                spec: None,
                expected_generation: 0,
            },
            "spec: is required",
        ),
        (
            pb::ApplyDeploymentRequest {
                spec: Some(spec("Bad_Name", 1)),
                expected_generation: 0,
            },
            "spec.name:",
        ),
        (
            pb::ApplyDeploymentRequest {
                spec: Some(spec("ok", 5000)),
                expected_generation: 0,
            },
            "spec.replicas: is 5000; the limit is 1000",
        ),
        (
            pb::ApplyDeploymentRequest {
                spec: Some(pb::DeploymentSpec {
                    env: [("PORT".to_string(), "1".to_string())].into(),
                    ..spec("ok", 1)
                }),
                expected_generation: 0,
            },
            "spec.env.PORT:",
        ),
    ];
    let mut client = deploy_client(node.api()).await;
    for (request, expected) in cases {
        let status = client.apply(request).await.unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{}",
            status.message()
        );
        assert!(
            status.message().starts_with(expected),
            "{:?} should start with {expected:?}",
            status.message()
        );
    }
    let status = client
        .delete(pb::DeleteDeploymentRequest {
            name: "../etc".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let status = client
        .list(pb::ListDeploymentsRequest {
            consistency: 0,
            limit: 5000,
            after: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    let mut cluster_client = ClusterServiceClient::connect(format!("http://{}", node.api()))
        .await
        .unwrap();
    let status = cluster_client
        .join(pb::JoinRequest {
            id: 9,
            raft_addr: "nowhere".into(),
            api_addr: "127.0.0.1:1".into(),
            learner_only: true,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let status = cluster_client
        .remove(pb::RemoveRequest { id: 1 })
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        tonic::Code::InvalidArgument,
        "removing the last voter: {}",
        status.message()
    );

    assert_eq!(
        node.sched().replica.metrics().last_log_index,
        before,
        "bad input must not reach the log"
    );
    assert!(node.sched().replica.sm.read().state.deployments.is_empty());

    // Deterministic rejections at apply time are reported precisely too.
    let status = client
        .delete(pb::DeleteDeploymentRequest {
            name: "absent".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    apply(node.api(), "cas", 1).await.unwrap();
    let status = client
        .apply(pb::ApplyDeploymentRequest {
            spec: Some(spec("cas", 2)),
            expected_generation: 5,
        })
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        tonic::Code::FailedPrecondition,
        "{}",
        status.message()
    );
    let mut cluster = cluster;
    cluster.node_mut(1).stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_single_node_comes_back_with_its_state() {
    let mut cluster = Cluster::start(1, RaftTuning::default()).await;
    let addr = cluster.node(1).api();
    for i in 0..5 {
        apply(addr, &format!("keep-{i}"), 1).await.unwrap();
    }
    let before = cluster.node(1).state_bytes();
    cluster.node_mut(1).stop().await;
    cluster.node_mut(1).start().await;
    cluster.wait_for_leader(CONVERGE).await;
    get(addr, "keep-4", pb::ReadConsistency::Linearizable)
        .await
        .unwrap();
    let after = cluster.node(1).state_bytes();
    assert_eq!(before, after);
    cluster.node_mut(1).stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_can_be_removed_added_as_learners_and_promoted() {
    let mut cluster = Cluster::start(3, RaftTuning::default()).await;
    let leader = cluster.wait_for_leader(CONVERGE).await;
    let follower = cluster.nodes.iter().find(|n| n.id != leader).unwrap().api();
    let mut client = ClusterServiceClient::connect(format!("http://{follower}"))
        .await
        .unwrap();
    let victim = if leader == 3 { 2 } else { 3 };

    // Removal through a follower is forwarded to the leader.
    let members = client
        .remove(pb::RemoveRequest { id: victim })
        .await
        .unwrap()
        .into_inner()
        .members;
    assert_eq!(members.len(), 2, "{members:?}");
    cluster.node_mut(victim).stop().await;
    apply(follower, "after-removal", 1)
        .await
        .expect("two voters still form a majority");

    // A new, empty scheduler is added as a learner first, then promoted.
    let dir = tempfile::tempdir().unwrap();
    let mut newcomer = Node::bind(
        4,
        Config {
            node_id: 4,
            data_dir: dir.path().join("node-4"),
            ..Config::default()
        },
    )
    .await;
    newcomer.start().await;
    let join = |learner_only| pb::JoinRequest {
        id: 4,
        raft_addr: newcomer.config.raft_listen.to_string(),
        api_addr: newcomer.config.api_listen.to_string(),
        learner_only,
    };
    let members = client.join(join(true)).await.unwrap().into_inner().members;
    let four = members
        .iter()
        .find(|m| m.id == 4)
        .expect("node 4 is a member");
    assert!(!four.voter, "learner_only keeps it a learner");
    get(
        newcomer.api(),
        "after-removal",
        pb::ReadConsistency::Linearizable,
    )
    .await
    .expect("a learner serves linearizable reads");

    let members = client.join(join(false)).await.unwrap().into_inner().members;
    assert!(
        members.iter().find(|m| m.id == 4).unwrap().voter,
        "promoted to voter: {members:?}"
    );
    assert_eq!(members.iter().filter(|m| m.voter).count(), 3);

    // The same id with different addresses is refused rather than silently re-pointed.
    let mut clash = join(false);
    clash.raft_addr = "127.0.0.1:1".into();
    let status = client.join(clash).await.unwrap_err();
    assert_eq!(
        status.code(),
        tonic::Code::InvalidArgument,
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("already a member"),
        "{}",
        status.message()
    );

    newcomer.stop().await;
    for mut node in cluster.nodes {
        node.stop().await;
    }
}

/// Plain HTTP/1.0 GET on loopback, so the test needs no HTTP client crate.
async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let code = response
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_reflection_and_http_endpoints_answer() {
    let mut cluster = Cluster::start(1, RaftTuning::default()).await;
    let node = cluster.node(1);
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", node.api()))
        .unwrap()
        .connect()
        .await
        .unwrap();

    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in ["", "sov.v1.ClusterService", "sov.v1.DeploymentService"] {
        let resp = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap();
        assert_eq!(
            resp.into_inner().status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service:?}"
        );
    }

    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        responses.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "sov.v1.ClusterService",
        "sov.v1.DeploymentService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }

    let http = node.sched().http_addr;
    assert_eq!(http_get(http, "/healthz").await, (200, "ok\n".to_string()));
    assert_eq!(
        http_get(http, "/readyz").await,
        (200, "ready\n".to_string())
    );
    let (code, metrics) = http_get(http, "/metrics").await;
    assert_eq!(code, 200);
    for line in [
        "sov_raft_is_leader 1",
        "sov_raft_voters 1",
        "sov_raft_apply_lag 0",
        "sov_ready 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line:?} missing from:\n{metrics}"
        );
    }
    let flushes: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("sov_raft_log_flushes_total "))
        .and_then(|v| v.parse().ok())
        .expect("flush counter");
    assert!(flushes > 0, "bootstrapping wrote to the log durably");
    for gauge in [
        "sov_raft_term",
        "sov_raft_leader_id",
        "sov_raft_commit_index",
        "sov_raft_applied_index",
    ] {
        assert!(
            metrics.contains(&format!("# TYPE {gauge} gauge")),
            "{gauge} missing"
        );
    }
    cluster.node_mut(1).stop().await;
}

fn registration(name: &str, country: &str) -> pb::RegisterNodeRequest {
    pb::RegisterNodeRequest {
        name: name.into(),
        facts: Some(pb::LocationFacts {
            country: country.into(),
            operator: "Example Cloud".into(),
            operator_hq: country.into(),
            ultimate_parent_hq: country.into(),
            certifications: [("secnumcloud".to_string(), "2030-01-31".to_string())].into(),
            ..Default::default()
        }),
        inventory: Some(pb::Inventory {
            cpu_millis: 64_000,
            memory_mib: 256 * 1024,
            gpus: vec![pb::GpuDevice {
                index: 0,
                uuid: format!("GPU-{name}-0"),
                model: "NVIDIA H100 80GB HBM3".into(),
                memory_mib: 81_559,
                simulated: true,
                ..Default::default()
            }],
            ..Default::default()
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_register_through_any_scheduler_and_can_be_drained() {
    use sov_proto::v1::agent_service_client::AgentServiceClient;
    use sov_proto::v1::node_service_client::NodeServiceClient;
    let cluster = Cluster::start(3, RaftTuning::default()).await;
    let leader = cluster.wait_for_leader(CONVERGE).await;
    let follower = cluster.nodes.iter().find(|n| n.id != leader).unwrap().api();
    let mut agent = AgentServiceClient::connect(format!("http://{follower}"))
        .await
        .unwrap();
    agent
        .register(registration("gpu-fr-1", "FR"))
        .await
        .unwrap();
    agent
        .register(registration("gpu-de-1", "DE"))
        .await
        .unwrap();

    for node in &cluster.nodes {
        let mut client = NodeServiceClient::connect(format!("http://{}", node.api()))
            .await
            .unwrap();
        let nodes = client
            .list(pb::ListNodesRequest { consistency: 0 })
            .await
            .unwrap()
            .into_inner()
            .nodes;
        let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["gpu-de-1", "gpu-fr-1"], "scheduler {}", node.id);
        assert!(
            nodes[0].inventory.as_ref().unwrap().gpus[0].simulated,
            "simulated GPUs stay marked"
        );
    }

    let mut nodes = NodeServiceClient::connect(format!("http://{follower}"))
        .await
        .unwrap();
    let drained = nodes
        .drain(pb::DrainNodeRequest {
            name: "gpu-fr-1".into(),
            deadline_ms: 0,
            force: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(drained.draining);
    let back = nodes
        .undrain(pb::UndrainNodeRequest {
            name: "gpu-fr-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!back.draining);
    let status = nodes
        .drain(pb::DrainNodeRequest {
            name: "nope".into(),
            deadline_ms: 0,
            force: false,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);

    // Malformed facts are refused with the field named, and nothing is written.
    let before = cluster
        .node(leader)
        .sched()
        .replica
        .metrics()
        .last_log_index;
    for (mutate, field) in [
        (
            Box::new(|r: &mut pb::RegisterNodeRequest| {
                r.facts.as_mut().unwrap().country = "UK".into()
            }) as Box<dyn Fn(&mut pb::RegisterNodeRequest)>,
            "facts.country",
        ),
        (
            Box::new(|r: &mut pb::RegisterNodeRequest| {
                r.facts.as_mut().unwrap().subdivision = "DE-BY".into()
            }),
            "facts.subdivision",
        ),
        (
            Box::new(|r: &mut pb::RegisterNodeRequest| {
                r.facts.as_mut().unwrap().location_trust = "hardware-attested".into()
            }),
            "facts.location_trust",
        ),
        (
            Box::new(|r: &mut pb::RegisterNodeRequest| r.name = "Bad Name".into()),
            "node.name",
        ),
    ] {
        let mut request = registration("gpu-fr-2", "FR");
        mutate(&mut request);
        let status = agent.register(request).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().starts_with(field),
            "{:?} should name {field}",
            status.message()
        );
    }
    assert_eq!(
        cluster
            .node(leader)
            .sched()
            .replica
            .metrics()
            .last_log_index,
        before
    );
    for mut node in cluster.nodes {
        node.stop().await;
    }
}
