//! One scheduler process, wired together: storage and Raft ([`Replica`]), the peer service on
//! the Raft port, the public API (+ gRPC health and reflection) on the API port, and the HTTP
//! endpoints; the leader's loops (`crate::leader`), and joining a cluster when configured to.
//!
//! Owns: start-up order and clean shutdown. Tests start several of these in one process on
//! ephemeral ports through [`Listeners`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sov_proto::v1::JoinRequest;
use sov_proto::v1::agent_service_server::AgentServiceServer;
use sov_proto::v1::cluster_service_client::ClusterServiceClient;
use sov_proto::v1::cluster_service_server::ClusterServiceServer;
use sov_proto::v1::deployment_service_server::DeploymentServiceServer;
use sov_proto::v1::history_service_server::HistoryServiceServer;
use sov_proto::v1::node_service_server::NodeServiceServer;
use sov_proto::v1::policy_service_server::PolicyServiceServer;
use sov_proto::v1::raft_peer_server::RaftPeerServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;

use sov_proto::tls::TlsMaterial;

use crate::api::auth::AuthLayer;
use crate::api::{
    AgentApi, ClusterApi, DeploymentApi, HistoryApi, NodeApi, PolicyApi, REQUEST_BYTES_MAX,
};
use crate::config::Config;
use crate::leader;
use crate::raft::network::PEER_MESSAGE_BYTES_MAX;
use crate::raft::peer_service::PeerService;
use crate::raft::{Replica, SovNode};

/// Join attempts before giving up (about ten minutes with the backoff below); the operator can
/// still add the node with `sovctl cluster join`.
const JOIN_ATTEMPTS_MAX: u32 = 120;
const JOIN_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The three sockets of a scheduler, bound before anything starts so tests can use port 0.
pub struct Listeners {
    pub api: TcpListener,
    pub raft: TcpListener,
    pub http: TcpListener,
}

impl Listeners {
    pub async fn bind(config: &Config) -> anyhow::Result<Self> {
        let bind = |addr: SocketAddr, what: &'static str| async move {
            TcpListener::bind(addr).await.with_context(|| {
                format!(
                    "cannot listen for {what} on {addr} (port in use? set it with --{what}-listen)"
                )
            })
        };
        Ok(Self {
            api: bind(config.api_listen, "api").await?,
            raft: bind(config.raft_listen, "raft").await?,
            http: bind(config.http_listen, "http").await?,
        })
    }
}

/// A running scheduler. Dropping it does not stop it; call [`Scheduler::shutdown`].
pub struct Scheduler {
    pub replica: Arc<Replica>,
    pub api_addr: SocketAddr,
    pub raft_addr: SocketAddr,
    pub http_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Accepted connections with Nagle's algorithm off. The builder's `tcp_nodelay` does not apply
/// to a listener handed in from outside, and without it small gRPC replies wait for delayed
/// ACKs (a 40 ms floor on commit latency, measured in docs/benchmarks.md).
fn nodelay(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

pub async fn start(config: &Config, listeners: Listeners) -> anyhow::Result<Scheduler> {
    let api_addr = listeners.api.local_addr()?;
    let raft_addr = listeners.raft.local_addr()?;
    let http_addr = listeners.http.local_addr()?;
    let node = SovNode {
        raft_addr: config
            .raft_advertise
            .clone()
            .unwrap_or_else(|| raft_addr.to_string()),
        api_addr: config
            .api_advertise
            .clone()
            .unwrap_or_else(|| api_addr.to_string()),
    };
    let signing_key = match &config.signing_key {
        None => None,
        Some(path) => Some(Arc::new(load_signing_key(path)?)),
    };
    let tls = match &config.tls {
        None => None,
        Some(tls) => Some(load_tls(tls)?),
    };
    let replica = Replica::open(
        config.node_id,
        node.clone(),
        &config.data_dir,
        &config.raft,
        tls.as_ref().map(TlsMaterial::client),
    )
    .await
    .with_context(|| format!("cannot open the data dir {}", config.data_dir.display()))?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks = Vec::new();

    let peer = RaftPeerServer::new(PeerService::new(replica.clone()))
        .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX);
    let roles = crate::api::auth::Roles {
        auditor_applies_policy: config.auditor_applies_policy,
    };
    // Bearer tokens (API port only, when enabled): checked against the CA the TLS layer trusts.
    let tokens = match (&tls, config.bearer_tokens) {
        (Some(tls), true) => Some(Arc::new(
            sov_proto::token::Verifier::from_ca_pem(&tls.ca_pem)
                .context("bearer_tokens is on, but the CA cannot check tokens")?,
        )),
        _ => None,
    };
    // `api`: the API port, where a client certificate is optional when tokens are accepted (the
    // auth layer then requires one or the other).
    let builder = |api: bool| -> anyhow::Result<tonic::transport::Server<_>> {
        let mut builder = tonic::transport::Server::builder();
        let tokens = tokens.clone().filter(|_| api);
        if let Some(tls) = &tls {
            builder = builder
                .tls_config(tls.server().client_auth_optional(tokens.is_some()))
                .context("TLS configuration refused")?;
        }
        Ok(builder.layer(AuthLayer { roles, tokens }))
    };
    let raft_server = builder(false)?
        .add_service(peer)
        .serve_with_incoming_shutdown(nodelay(listeners.raft), stopped(shutdown_rx.clone()));
    tasks.push(tokio::spawn(async move {
        if let Err(e) = raft_server.await {
            tracing::error!(error = %e, "raft peer server failed");
        }
    }));

    let liveness = Arc::new(leader::liveness::Liveness::new(config.liveness));
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<ClusterServiceServer<ClusterApi>>()
        .await;
    health
        .set_serving::<DeploymentServiceServer<DeploymentApi>>()
        .await;
    health.set_serving::<NodeServiceServer<NodeApi>>().await;
    health.set_serving::<AgentServiceServer<AgentApi>>().await;
    health.set_serving::<PolicyServiceServer<PolicyApi>>().await;
    health
        .set_serving::<HistoryServiceServer<HistoryApi>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(sov_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(sov_proto::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let api_server = builder(true)?
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(
            ClusterServiceServer::new(ClusterApi::new(replica.clone()))
                .max_decoding_message_size(REQUEST_BYTES_MAX),
        )
        .add_service(
            DeploymentServiceServer::new(DeploymentApi::new(replica.clone()))
                .max_decoding_message_size(REQUEST_BYTES_MAX),
        )
        .add_service(
            NodeServiceServer::new(NodeApi::new(replica.clone()))
                .max_decoding_message_size(REQUEST_BYTES_MAX),
        )
        .add_service(
            AgentServiceServer::new(AgentApi::new(
                replica.clone(),
                liveness.clone(),
                shutdown_rx.clone(),
            ))
            .max_decoding_message_size(REQUEST_BYTES_MAX),
        )
        .add_service(
            PolicyServiceServer::new(PolicyApi::new(replica.clone()))
                .max_decoding_message_size(REQUEST_BYTES_MAX),
        )
        .add_service(
            HistoryServiceServer::new(HistoryApi::new(replica.clone(), signing_key.clone()))
                .max_decoding_message_size(REQUEST_BYTES_MAX),
        )
        .serve_with_incoming_shutdown(nodelay(listeners.api), stopped(shutdown_rx.clone()));
    tasks.push(tokio::spawn(async move {
        if let Err(e) = api_server.await {
            tracing::error!(error = %e, "API server failed");
        }
    }));

    let web = axum::serve(
        listeners.http,
        crate::web::router(
            replica.clone(),
            signing_key
                .as_ref()
                .map(|k| sov_proto::evidence::key_id(&k.verifying_key())),
            config.liveness,
        ),
    )
    .with_graceful_shutdown(stopped(shutdown_rx.clone()));
    tasks.push(tokio::spawn(async move {
        if let Err(e) = web.await {
            tracing::error!(error = %e, "HTTP server failed");
        }
    }));

    if config.bootstrap {
        if replica.bootstrap().await? {
            tracing::info!(
                node_id = config.node_id,
                "bootstrapped a new cluster with this scheduler as its only voter"
            );
        } else {
            tracing::info!("data dir already belongs to a cluster; --bootstrap ignored");
        }
    }
    tasks.push(tokio::spawn(leader::cluster_id_duty(
        replica.clone(),
        shutdown_rx.clone(),
    )));
    tasks.push(tokio::spawn(leader::liveness::liveness_loop(
        replica.clone(),
        liveness.clone(),
        shutdown_rx.clone(),
    )));
    tasks.push(tokio::spawn(leader::reconcile_loop(
        replica.clone(),
        shutdown_rx.clone(),
    )));
    match &signing_key {
        Some(key) => tasks.push(tokio::spawn(crate::api::history::checkpoint_loop(
            replica.clone(),
            key.clone(),
            Duration::from_millis(config.checkpoint_interval_ms),
            shutdown_rx.clone(),
        ))),
        None => tracing::warn!(
            "no signing key configured (signing_key / --signing-key): history checkpoints and exports are refused; create one with `sov-scheduler keygen --out DIR`"
        ),
    }
    if let Some(target) = config.join.clone() {
        tasks.push(tokio::spawn(join_cluster(
            replica.clone(),
            target,
            node,
            tls.as_ref().map(TlsMaterial::client),
            shutdown_rx.clone(),
        )));
    }
    tracing::info!(
        node_id = config.node_id, %api_addr, %raft_addr, %http_addr, data_dir = %config.data_dir.display(),
        "scheduler started"
    );
    Ok(Scheduler {
        replica,
        api_addr,
        raft_addr,
        http_addr,
        shutdown,
        tasks,
    })
}

/// Asks the cluster at `target` to add this scheduler, unless it is already a member. Retries
/// with capped exponential backoff, a bounded number of times, and stops at once on an answer
/// that retrying cannot change (e.g. the id is taken).
async fn join_cluster(
    replica: Arc<Replica>,
    target: String,
    node: SovNode,
    tls: Option<tonic::transport::ClientTlsConfig>,
    shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(200);
    for attempt in 1..=JOIN_ATTEMPTS_MAX {
        if *shutdown.borrow() {
            return;
        }
        match replica.raft.is_initialized().await {
            Ok(true) => {
                tracing::info!("this scheduler is a cluster member; nothing to join");
                return;
            }
            Ok(false) => {}
            Err(e) => {
                tracing::error!(error = %e, "raft core stopped; not joining");
                return;
            }
        }
        let request = JoinRequest {
            id: replica.id,
            raft_addr: node.raft_addr.clone(),
            api_addr: node.api_addr.clone(),
            learner_only: false,
        };
        let result = async {
            let unavailable =
                |e: tonic::transport::Error| tonic::Status::unavailable(e.to_string());
            let endpoint =
                sov_proto::tls::scheduler_endpoint(&target, tls.as_ref()).map_err(unavailable)?;
            let mut client =
                ClusterServiceClient::new(endpoint.connect().await.map_err(unavailable)?);
            client.join(request).await
        }
        .await;
        match result {
            Ok(_) => {
                tracing::info!(%target, "joined the cluster");
                return;
            }
            Err(status) if status.code() == tonic::Code::InvalidArgument => {
                tracing::error!(%target, reason = status.message(), "the cluster refused to add this scheduler; fix the configuration and restart");
                return;
            }
            Err(status) => {
                tracing::warn!(%target, attempt, attempts_max = JOIN_ATTEMPTS_MAX, reason = status.message(), "join failed; retrying");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(JOIN_BACKOFF_MAX);
    }
    tracing::error!(%target, "gave up joining after {JOIN_ATTEMPTS_MAX} attempts; add this scheduler with `sovctl cluster join`");
}

impl Scheduler {
    /// Stops serving, stops the Raft core and waits (bounded) for every task.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        if let Err(e) = self.replica.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        for task in self.tasks {
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                tracing::warn!("a server task did not stop within 5s");
            }
        }
        // openraft's storage tasks wind down after `shutdown` returns; wait (bounded) until the
        // last handle on the redb files is gone, so the process does not exit in the middle of
        // a database's final flush.
        let closed = self.replica.storage_closed();
        drop(self.replica);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !closed.is_closed() {
            if std::time::Instant::now() > deadline {
                tracing::warn!("storage still open 10s after shutdown");
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Runs a scheduler until SIGINT or SIGTERM, then shuts it down cleanly.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let listeners = Listeners::bind(&config).await?;
    let scheduler = start(&config, listeners).await?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; shutting down"),
        _ = sigterm.recv() => tracing::info!("terminated; shutting down"),
    }
    scheduler.shutdown().await;
    tracing::info!("scheduler stopped");
    Ok(())
}

/// Reads the cluster's signing key, saying what to do when it cannot.
/// Certificates closer to expiry than this are warned about at start-up.
const CERT_EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86_400);

/// Reads this scheduler's TLS files and checks that the certificate is a scheduler's.
fn load_tls(config: &crate::config::TlsConfig) -> anyhow::Result<TlsMaterial> {
    let material = config.files().load()?;
    let (identity, not_after) = material
        .own_identity()
        .with_context(|| format!("certificate {}", config.cert.display()))?;
    anyhow::ensure!(
        identity.role == sov_proto::identity::Role::Scheduler,
        "{} is the certificate of {identity}; a scheduler needs one issued with `sovctl ca issue --role scheduler`",
        config.cert.display()
    );
    match not_after.duration_since(std::time::SystemTime::now()) {
        Err(_) => anyhow::bail!(
            "{} expired; issue a new one (docs/security.md, rotation)",
            config.cert.display()
        ),
        Ok(left) if left < CERT_EXPIRY_WARNING => tracing::warn!(
            cert = %config.cert.display(),
            days_left = left.as_secs() / 86_400,
            "this scheduler's certificate expires soon; issue a new one (docs/security.md, rotation)"
        ),
        Ok(_) => {}
    }
    tracing::info!(identity = %identity, "mutual TLS on the API and Raft ports");
    Ok(material)
}

pub fn load_signing_key(path: &std::path::Path) -> anyhow::Result<ed25519_dalek::SigningKey> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read the signing key {}; create one with `sov-scheduler keygen --out DIR`",
            path.display()
        )
    })?;
    sov_proto::evidence::parse_secret_key(&text)
        .with_context(|| format!("signing key {}", path.display()))
}
