//! The agent and the fleet simulator over mutual TLS, against an in-process stand-in for a
//! scheduler's `AgentService` that requires a client certificate from the test CA and, as the
//! real one does, refuses a caller whose certificate does not speak for the node it names.
//!
//! Why a stand-in and not `sov-scheduler`: these tests are about the agent's side of the
//! handshake (which files it presents, which it trusts, what it says when that fails); the
//! scheduler's checks have their own tests.

use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use sov_agent::client::Schedulers;
use sov_agent::config::{AgentConfig, TlsPaths};
use sov_agent::credentials::{Credentials, TlsFlags, error_chain, tls_hint};
use sov_agent::fleet::FleetArgs;
use sov_proto::identity::{Identity, Role};
use sov_proto::tls::{Ca, TlsFiles, identity_of, valid_for_days};
use sov_proto::v1 as pb;
use sov_proto::v1::agent_service_server::{AgentService, AgentServiceServer};
use tokio::sync::watch;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// Longest wait for something the stand-in should see; generous for a loaded CI machine.
const WAIT: Duration = Duration::from_secs(20);

/// (certificate name, node) of every call the stand-in accepted.
type Seen = Arc<Mutex<Vec<(String, String, &'static str)>>>;

#[derive(Clone, Default)]
struct Stub {
    seen: Seen,
}

impl Stub {
    /// Who called, as the real scheduler decides it: the client certificate's identity, which
    /// must speak for `node`.
    fn admit<T>(&self, request: &Request<T>, node: &str, call: &'static str) -> Result<(), Status> {
        let certs = request
            .peer_certs()
            .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        let identity =
            identity_of(certs[0].as_ref()).map_err(|e| Status::unauthenticated(e.to_string()))?;
        if !identity.speaks_for(node) {
            return Err(Status::permission_denied(format!(
                "{identity} does not speak for {node}"
            )));
        }
        self.seen
            .lock()
            .unwrap()
            .push((identity.name, node.to_owned(), call));
        Ok(())
    }
}

type Events = Pin<Box<dyn futures::Stream<Item = Result<pb::AssignmentEvent, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for Stub {
    async fn register(
        &self,
        request: Request<pb::RegisterNodeRequest>,
    ) -> Result<Response<pb::RegisterNodeResponse>, Status> {
        let node = request.get_ref().name.clone();
        self.admit(&request, &node, "register")?;
        Ok(Response::new(pb::RegisterNodeResponse {
            revision: 1,
            heartbeat_ttl_ms: 5_000,
            heartbeat_interval_ms: 200,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let node = request.get_ref().name.clone();
        self.admit(&request, &node, "heartbeat")?;
        Ok(Response::new(pb::HeartbeatResponse {
            status: "ready".into(),
            heartbeat_interval_ms: 200,
            ..Default::default()
        }))
    }

    type WatchAssignmentsStream = Events;

    async fn watch_assignments(
        &self,
        request: Request<pb::WatchAssignmentsRequest>,
    ) -> Result<Response<Events>, Status> {
        let node = request.get_ref().node.clone();
        self.admit(&request, &node, "watch")?;
        let empty = pb::AssignmentEvent {
            revision: 1,
            full: true,
            ..Default::default()
        };
        let events = futures::stream::iter([Ok(empty)]).chain(futures::stream::pending());
        Ok(Response::new(Box::pin(events)))
    }

    async fn report_status(
        &self,
        request: Request<pb::AllocationStatusReport>,
    ) -> Result<Response<pb::ReportStatusResponse>, Status> {
        let node = request.get_ref().node.clone();
        self.admit(&request, &node, "report")?;
        Ok(Response::new(pb::ReportStatusResponse::default()))
    }

    async fn report_statuses(
        &self,
        request: Request<pb::AllocationStatusBatch>,
    ) -> Result<Response<pb::ReportStatusResponse>, Status> {
        let node = request.get_ref().node.clone();
        self.admit(&request, &node, "report")?;
        Ok(Response::new(pb::ReportStatusResponse::default()))
    }
}

/// A CA in `dir/<name>` and what it issues.
struct Pki {
    root: std::path::PathBuf,
    ca: Ca,
}

impl Pki {
    fn new(dir: &Path, name: &str) -> Pki {
        let root = dir.join(name);
        let ca = Ca::init(&root.join("ca"), name).expect("CA");
        Pki { root, ca }
    }

    fn issue_until(&self, identity: &Identity, not_after: SystemTime) -> TlsFiles {
        let out = self.root.join(identity.name.replace('*', "all"));
        self.ca
            .issue(identity, not_after, &[], &out)
            .expect("issue")
            .files
    }

    fn issue(&self, identity: &Identity) -> TlsFiles {
        self.issue_until(identity, valid_for_days(30))
    }

    fn scheduler(&self) -> TlsFiles {
        self.issue(&Identity::new(Role::Scheduler, "s1").expect("identity"))
    }
}

fn paths(files: &TlsFiles) -> TlsPaths {
    TlsPaths {
        ca: Some(files.ca.clone()),
        cert: Some(files.cert.clone()),
        key: Some(files.key.clone()),
    }
}

/// Serves the stand-in with mutual TLS on a free loopback port; returns the port. With `tls`
/// `None`, in plain text (a port that is not what the agent expects).
async fn serve(stub: Stub, tls: Option<&TlsFiles>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let mut builder = Server::builder();
    if let Some(files) = tls {
        let material = files.load().expect("scheduler TLS files");
        builder = builder.tls_config(material.server()).expect("server TLS");
    }
    let router = builder.add_service(AgentServiceServer::new(stub));
    tokio::spawn(router.serve_with_incoming(TcpIncoming::from(listener)));
    port
}

async fn wait_for(seen: &Seen, what: impl Fn(&[(String, String, &'static str)]) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !what(&seen.lock().unwrap()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not seen in time; seen: {:?}",
            seen.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_agent_registers_and_heartbeats_over_mutual_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path(), "cluster");
    let stub = Stub::default();
    let port = serve(stub.clone(), Some(&pki.scheduler())).await;
    let agent = Identity::new(Role::Agent, "fr-par-1")
        .and_then(|id| id.with_location("country", "FR"))
        .expect("identity");
    let files = pki.issue(&agent);
    // Written with the old scheme on purpose: it names the host and port, TLS is used anyway.
    let text = format!(
        "name = \"fr-par-1\"\n\
         schedulers = [\"http://127.0.0.1:{port}\"]\n\
         data_dir = {:?}\n\
         [location]\n\
         country = \"FR\"\n\
         site = \"par-1\"\n\
         operator = \"Example Cloud SAS\"\n\
         operator_hq = \"FR\"\n\
         ultimate_parent_hq = \"FR\"\n\
         [resources]\n\
         cpu_millis = 1000\n\
         memory_mib = 1024\n\
         [tls]\n\
         ca = {:?}\n\
         cert = {:?}\n\
         key = {:?}\n",
        dir.path().join("data"),
        files.ca,
        files.cert,
        files.key,
    );
    let cfg = AgentConfig::from_toml_str(&text, "agent.toml").expect("config");
    let credentials = Credentials::for_node(&cfg.tls, &cfg.name, &cfg.location, "agent.toml")
        .expect("credentials");
    let (stop, shutdown) = watch::channel(false);
    let agent = tokio::spawn(sov_agent::agent::run(cfg, credentials, true, shutdown));
    wait_for(&stub.seen, |seen| {
        ["register", "watch", "heartbeat"]
            .iter()
            .all(|call| seen.iter().any(|(_, _, c)| c == call))
    })
    .await;
    assert!(
        stub.seen
            .lock()
            .unwrap()
            .iter()
            .all(|(cert, node, _)| cert == "fr-par-1" && node == "fr-par-1")
    );
    stop.send(true).expect("agent running");
    tokio::time::timeout(WAIT, agent)
        .await
        .expect("agent stops")
        .expect("agent task")
        .expect("agent run");
}

#[tokio::test]
async fn the_fleet_speaks_for_its_nodes_with_one_wildcard_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path(), "cluster");
    let stub = Stub::default();
    let port = serve(stub.clone(), Some(&pki.scheduler())).await;
    let files = pki.issue(&Identity::new(Role::Agent, "t-*").expect("identity"));
    let spec = dir.path().join("fleet.toml");
    std::fs::write(
        &spec,
        "name_prefix = \"t\"\n\
         [[group]]\ncountry = \"FR\"\ncpu_millis = 1000\nmemory_mib = 1024\n\
         [[group]]\ncountry = \"DE\"\ncpu_millis = 1000\nmemory_mib = 1024\n",
    )
    .expect("spec");
    let args = |tls: &TlsFiles| FleetArgs {
        nodes: 4,
        spec: spec.clone(),
        schedulers: vec![format!("127.0.0.1:{port}")],
        heartbeat_interval_ms: Some(200),
        nodes_per_connection: 2,
        register_concurrency: 4,
        status_every_s: 1,
        duration_s: Some(60),
        tls: TlsFlags {
            ca: Some(tls.ca.clone()),
            cert: Some(tls.cert.clone()),
            key: Some(tls.key.clone()),
        },
    };
    let (stop, shutdown) = watch::channel(false);
    let fleet = tokio::spawn(sov_agent::fleet::run(args(&files), shutdown));
    wait_for(&stub.seen, |seen| {
        seen.iter().filter(|(_, _, c)| *c == "heartbeat").count() >= 8
            && seen.iter().filter(|(_, _, c)| *c == "register").count() == 4
    })
    .await;
    {
        let seen = stub.seen.lock().unwrap();
        let mut nodes: Vec<&str> = seen
            .iter()
            .filter(|(_, _, c)| *c == "register")
            .map(|(_, n, _)| n.as_str())
            .collect();
        nodes.sort_unstable();
        assert_eq!(nodes, ["t-de-1", "t-de-3", "t-fr-0", "t-fr-2"]);
        assert!(seen.iter().all(|(cert, _, _)| cert == "t-*"));
    }
    stop.send(true).expect("fleet running");
    tokio::time::timeout(WAIT, fleet)
        .await
        .expect("fleet stops")
        .expect("fleet task")
        .expect("fleet run");

    // A certificate that does not cover every virtual node stops the fleet before it connects.
    let narrow = pki.issue(&Identity::new(Role::Agent, "t-fr-*").expect("identity"));
    let (_stop, shutdown) = watch::channel(false);
    let err = sov_agent::fleet::run(args(&narrow), shutdown)
        .await
        .expect_err("t-de-1 is not covered")
        .to_string();
    assert!(err.contains("\"t-de-1\"") && err.contains("'t-*'"), "{err}");
}

/// Calls `register` once through the agent's client, as `credentials`, at `port`.
async fn register_once(credentials: &Credentials, port: u16) -> Status {
    let schedulers = Schedulers::new(vec![format!("127.0.0.1:{port}")], credentials.client_tls());
    let (_, mut client) = schedulers.client().expect("client");
    client
        .register(pb::RegisterNodeRequest {
            name: "fr-par-1".into(),
            ..Default::default()
        })
        .await
        .expect_err("the handshake must fail")
}

fn agent_credentials(files: &TlsFiles) -> Credentials {
    let facts = sov_scheduler::state::node::NodeFacts::default();
    Credentials::for_node(&paths(files), "fr-par-1", &facts, "agent.toml").expect("credentials")
}

#[tokio::test]
async fn failed_handshakes_say_what_to_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = Pki::new(dir.path(), "cluster");
    let other = Pki::new(dir.path(), "other");
    let agent = Identity::new(Role::Agent, "fr-par-1").expect("identity");
    let ours = agent_credentials(&cluster.issue(&agent));

    // A scheduler whose certificate another CA signed.
    let port = serve(Stub::default(), Some(&other.scheduler())).await;
    let error = error_chain(&register_once(&ours, port).await);
    let hint = tls_hint(&error).unwrap_or_else(|| panic!("no hint for {error}"));
    assert!(hint.contains("different CAs"), "{error}: {hint}");

    // A scheduler whose certificate has expired.
    let expired = cluster.issue_until(
        &Identity::new(Role::Scheduler, "s-old").expect("identity"),
        SystemTime::now() - Duration::from_secs(3_600),
    );
    let port = serve(Stub::default(), Some(&expired)).await;
    let error = error_chain(&register_once(&ours, port).await);
    let hint = tls_hint(&error).unwrap_or_else(|| panic!("no hint for {error}"));
    assert!(hint.contains("validity period"), "{error}: {hint}");

    // Our certificate from another CA, the right CA to trust: the scheduler refuses us.
    let foreign = other.issue(&agent);
    let mixed = TlsFiles {
        ca: cluster.ca.dir().join("ca.crt"),
        ..foreign
    };
    let port = serve(Stub::default(), Some(&cluster.scheduler())).await;
    let error = error_chain(&register_once(&agent_credentials(&mixed), port).await);
    assert!(tls_hint(&error).is_some(), "no hint for {error}");

    // Not a TLS port at all.
    let port = serve(Stub::default(), None).await;
    let error = error_chain(&register_once(&ours, port).await);
    let hint = tls_hint(&error).unwrap_or_else(|| panic!("no hint for {error}"));
    assert!(hint.contains("does not speak TLS"), "{error}: {hint}");
}
