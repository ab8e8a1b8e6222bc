//! Who may call what: every gRPC call on the API and Raft ports is mapped to one [`Permission`],
//! and the caller's role (from its client certificate, [`sov_proto::identity`]) must hold it.
//!
//! The check runs as a tower layer in front of every service, before a request is decoded, so a
//! denied caller costs nothing and reaches no handler. A denied call gets `PERMISSION_DENIED`
//! naming the missing permission and who the caller is, and is counted per permission
//! (`sov_denied_calls_total` in `/metrics`). An allowed call carries its [`Caller`] in the
//! request's extensions: handlers that need more than the role (an agent acting only for its own
//! node, a deployer limited to a namespace, history recording who changed policy) read it there.
//!
//! Without TLS (only in-process tests construct such a server: `sov-scheduler run` refuses to
//! start without certificates) there is no caller and every call is allowed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use sov_proto::identity::{Identity, Role};
use tonic::Status;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

/// What a call needs. One per group of RPCs; the names are what denials and metrics print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Permission {
    /// Cluster status, members, nodes, deployments, policy versions, explanations: reading.
    Read,
    /// Apply, plan or delete deployments.
    Deploy,
    /// Drain and undrain nodes.
    NodeAdmin,
    /// Activate a policy bundle.
    PolicyApply,
    /// Add or remove schedulers, save a snapshot of the whole cluster.
    ClusterAdmin,
    /// Query, prove and export history; checkpoints.
    History,
    /// The agent channel, for the caller's own node.
    Agent,
    /// The Raft peer service.
    RaftPeer,
    /// gRPC health and reflection: any authenticated caller.
    Probe,
}

pub const PERMISSIONS: [Permission; 9] = [
    Permission::Read,
    Permission::Deploy,
    Permission::NodeAdmin,
    Permission::PolicyApply,
    Permission::ClusterAdmin,
    Permission::History,
    Permission::Agent,
    Permission::RaftPeer,
    Permission::Probe,
];

impl Permission {
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Deploy => "deploy",
            Permission::NodeAdmin => "node.admin",
            Permission::PolicyApply => "policy.apply",
            Permission::ClusterAdmin => "cluster.admin",
            Permission::History => "history",
            Permission::Agent => "agent",
            Permission::RaftPeer => "raft.peer",
            Permission::Probe => "probe",
        }
    }

    /// The permission a gRPC method path (`/sov.v1.PolicyService/Apply`) needs; `None` for a
    /// path no sov service serves (refused too: unknown is not public).
    pub fn of_path(path: &str) -> Option<Permission> {
        let (service, method) = path.strip_prefix('/')?.split_once('/')?;
        Some(match (service, method) {
            ("grpc.health.v1.Health", _)
            | ("grpc.reflection.v1.ServerReflection", _)
            | ("grpc.reflection.v1alpha.ServerReflection", _) => Permission::Probe,
            ("sov.v1.ClusterService", "Status" | "Members") => Permission::Read,
            ("sov.v1.ClusterService", "Join" | "Remove" | "Snapshot") => Permission::ClusterAdmin,
            ("sov.v1.DeploymentService", "Get" | "List" | "Explain") => Permission::Read,
            ("sov.v1.DeploymentService", "Apply" | "Delete" | "Plan") => Permission::Deploy,
            ("sov.v1.NodeService", "List" | "Get") => Permission::Read,
            ("sov.v1.NodeService", "Drain" | "Undrain") => Permission::NodeAdmin,
            ("sov.v1.PolicyService", "Get" | "List" | "Plan" | "Progress") => Permission::Read,
            ("sov.v1.PolicyService", "Apply") => Permission::PolicyApply,
            ("sov.v1.HistoryService", _) => Permission::History,
            ("sov.v1.AgentService", _) => Permission::Agent,
            ("sov.v1.RaftPeer", _) => Permission::RaftPeer,
            _ => return None,
        })
    }
}

/// Role -> permission table, with the one setting operators can change: whether auditors may
/// also activate policy (some organisations make compliance own the rules).
#[derive(Debug, Clone, Copy, Default)]
pub struct Roles {
    pub auditor_applies_policy: bool,
}

impl Roles {
    pub fn allows(&self, role: Role, permission: Permission) -> bool {
        use Permission as P;
        match role {
            Role::Operator => matches!(
                permission,
                P::Read | P::NodeAdmin | P::PolicyApply | P::ClusterAdmin | P::History | P::Probe
            ),
            Role::Deployer => matches!(permission, P::Read | P::Deploy | P::Probe),
            Role::Auditor => {
                matches!(permission, P::Read | P::History | P::Probe)
                    || (permission == P::PolicyApply && self.auditor_applies_policy)
            }
            Role::Agent => matches!(permission, P::Agent | P::Probe),
            // Joining is how a new scheduler asks to be added; everything else a scheduler does
            // to another goes through the peer port.
            Role::Scheduler => matches!(
                permission,
                P::RaftPeer | P::Probe | P::ClusterAdmin | P::Read
            ),
        }
    }

    /// The roles that hold `permission`, for the denial message.
    pub fn holders(&self, permission: Permission) -> Vec<&'static str> {
        sov_proto::identity::ROLES
            .into_iter()
            .filter(|r| self.allows(*r, permission))
            .map(Role::as_str)
            .collect()
    }
}

/// The authenticated caller of one request, in its extensions.
#[derive(Debug, Clone)]
pub struct Caller {
    pub identity: Identity,
    /// Opaque id of the certificate ([`sov_proto::tls::fingerprint`]): what history records.
    pub fingerprint: String,
}

impl Caller {
    /// `"operator:3f2a…"`: role and certificate fingerprint, no name (names may be people's).
    pub fn opaque_id(&self) -> String {
        format!("{}:{}", self.identity.role, self.fingerprint)
    }
}

/// The caller of a request that passed the layer; `None` on a server without TLS.
pub fn caller<T>(request: &tonic::Request<T>) -> Option<&Caller> {
    request.extensions().get::<Arc<Caller>>().map(Arc::as_ref)
}

/// Denied calls per permission, since the process started.
static DENIED: [AtomicU64; PERMISSIONS.len() + 1] =
    [const { AtomicU64::new(0) }; PERMISSIONS.len() + 1];

fn count_denied(permission: Option<Permission>) {
    let i = permission
        .and_then(|p| PERMISSIONS.iter().position(|q| *q == p))
        .unwrap_or(PERMISSIONS.len());
    DENIED[i].fetch_add(1, Ordering::Relaxed);
}

/// (permission, denied calls) for `/metrics`; "unknown" for calls to no sov method.
pub fn denied_counts() -> Vec<(&'static str, u64)> {
    PERMISSIONS
        .iter()
        .map(|p| p.as_str())
        .chain(["unknown"])
        .zip(DENIED.iter().map(|c| c.load(Ordering::Relaxed)))
        .collect()
}

/// Counts a denial decided by a handler (an agent speaking for another node).
pub fn denied(permission: Permission, message: String) -> Status {
    count_denied(Some(permission));
    Status::permission_denied(message)
}

/// Decides one call: the caller from the connection's client certificate, the permission from
/// the path. Pure apart from the counters.
fn decide(
    roles: &Roles,
    path: &str,
    certs: Option<&[tonic::transport::CertificateDer<'static>]>,
) -> Result<Arc<Caller>, Status> {
    let permission = Permission::of_path(path);
    let refuse = |message: String| {
        count_denied(permission);
        Err(Status::permission_denied(message))
    };
    let Some(der) = certs.and_then(|c| c.first()) else {
        return refuse("no client certificate: every sov call needs one (sovctl --tls-dir or SOV_TLS_DIR; see docs/security.md)".into());
    };
    let identity = match sov_proto::tls::identity_of(der) {
        Ok(identity) => identity,
        Err(e) => return refuse(format!("your certificate is not a sov identity: {e}")),
    };
    let Some(permission) = permission else {
        return refuse(format!("{path} is not a sov method"));
    };
    if !roles.allows(identity.role, permission) {
        return refuse(format!(
            "{path} needs the {} permission (held by: {}); you are {identity}",
            permission.as_str(),
            roles.holders(permission).join(", "),
        ));
    }
    Ok(Arc::new(Caller {
        fingerprint: sov_proto::tls::fingerprint(der),
        identity,
    }))
}

/// The tower layer that runs [`decide`] in front of a tonic server.
#[derive(Debug, Clone, Copy)]
pub struct AuthLayer {
    pub roles: Roles,
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            roles: self.roles,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    roles: Roles,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;

impl<S, B> tower::Service<http::Request<B>> for Auth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let certs = request
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .map(|info| info.peer_certs());
        // A server without TLS has no connection info of this type: nothing to check.
        if let Some(certs) = certs {
            match decide(
                &self.roles,
                request.uri().path(),
                certs.as_deref().map(Vec::as_slice),
            ) {
                Ok(caller) => {
                    request.extensions_mut().insert(caller);
                }
                Err(status) => {
                    tracing::info!(
                        path = request.uri().path(),
                        reason = status.message(),
                        "call denied"
                    );
                    return Box::pin(async move { Ok(status.into_http()) });
                }
            }
        }
        // The clone is ready only after poll_ready; swap so the ready one serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_holds_exactly_its_permissions() {
        let roles = Roles::default();
        let can = |role, path: &str| roles.allows(role, Permission::of_path(path).unwrap());
        assert!(can(Role::Deployer, "/sov.v1.DeploymentService/Apply"));
        assert!(!can(Role::Deployer, "/sov.v1.PolicyService/Apply"));
        assert!(!can(Role::Deployer, "/sov.v1.HistoryService/Export"));
        assert!(can(Role::Auditor, "/sov.v1.HistoryService/Export"));
        assert!(can(Role::Auditor, "/sov.v1.PolicyService/Get"));
        assert!(!can(Role::Auditor, "/sov.v1.DeploymentService/Apply"));
        assert!(!can(Role::Auditor, "/sov.v1.PolicyService/Apply"));
        assert!(
            Roles {
                auditor_applies_policy: true
            }
            .allows(Role::Auditor, Permission::PolicyApply)
        );
        assert!(can(Role::Operator, "/sov.v1.NodeService/Drain"));
        assert!(can(Role::Operator, "/sov.v1.PolicyService/Apply"));
        assert!(!can(Role::Operator, "/sov.v1.DeploymentService/Apply"));
        assert!(!can(Role::Operator, "/sov.v1.AgentService/Register"));
        assert!(can(Role::Agent, "/sov.v1.AgentService/Register"));
        assert!(!can(Role::Agent, "/sov.v1.DeploymentService/List"));
        assert!(!can(Role::Agent, "/sov.v1.RaftPeer/AppendEntries"));
        assert!(can(Role::Scheduler, "/sov.v1.RaftPeer/AppendEntries"));
        assert!(can(Role::Scheduler, "/sov.v1.ClusterService/Join"));
        assert!(!can(Role::Operator, "/sov.v1.RaftPeer/Vote"));
        assert!(!can(Role::Deployer, "/sov.v1.RaftPeer/Vote"));
        assert_eq!(Permission::of_path("/sov.v1.Nope/Nope"), None);
        assert_eq!(Permission::of_path("garbage"), None);
    }

    #[test]
    fn a_call_without_a_certificate_is_denied_and_counted() {
        let before = denied_counts();
        let err = decide(&Roles::default(), "/sov.v1.PolicyService/Apply", None).unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(
            err.message().contains("no client certificate"),
            "{}",
            err.message()
        );
        let after = denied_counts();
        let policy = |c: &[(&str, u64)]| c.iter().find(|(p, _)| *p == "policy.apply").unwrap().1;
        assert!(policy(&after) > policy(&before));
    }
}
