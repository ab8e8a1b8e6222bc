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
//! Where the operator enabled bearer tokens (`bearer_tokens`), a person may present a token
//! signed by the cluster CA (`authorization: Bearer sov1...`, [`sov_proto::token`]) instead of a
//! client certificate, on the API port only; a certificate, when there is one, wins.
//!
//! Without TLS (only in-process tests construct such a server: `sov-scheduler run` refuses to
//! start without certificates) there is no caller and every call is allowed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
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
    /// Opaque id of the certificate ([`sov_proto::tls::fingerprint`]) or bearer token
    /// ([`sov_proto::token::fingerprint`]): what history records.
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

/// How a caller proves who it is: the connection's client certificate chain, and the bearer
/// token of the request when tokens are accepted.
struct Credentials<'a> {
    certs: Option<&'a [tonic::transport::CertificateDer<'static>]>,
    /// The token and the verifier, when the request carries one and tokens are accepted.
    token: Option<(&'a str, &'a sov_proto::token::Verifier)>,
    tokens_accepted: bool,
}

/// Decides one call: the caller from the connection's client certificate (or bearer token), the
/// permission from the path. Pure apart from the counters.
fn decide(roles: &Roles, path: &str, credentials: Credentials<'_>) -> Result<Arc<Caller>, Status> {
    let permission = Permission::of_path(path);
    let refuse = |message: String| {
        count_denied(permission);
        Err(Status::permission_denied(message))
    };
    let (identity, fingerprint) = match (
        credentials.certs.and_then(|c| c.first()),
        credentials.token,
    ) {
        (Some(der), _) => match identify(der) {
            Ok(known) => known,
            Err(e) => return refuse(format!("your certificate is not a sov identity: {e}")),
        },
        (None, Some((token, verifier))) => {
            match verifier.verify(token, std::time::SystemTime::now()) {
                Ok(verified) => (verified.identity, verified.fingerprint),
                Err(reason) => {
                    count_denied(permission);
                    return Err(Status::unauthenticated(reason));
                }
            }
        }
        (None, None) if credentials.tokens_accepted => {
            count_denied(permission);
            return Err(Status::unauthenticated(
                "no client certificate and no bearer token: every sov call needs one (sovctl --tls-dir, SOV_TLS_DIR, or SOV_TOKEN / --token-file; see docs/security.md)",
            ));
        }
        (None, None) => {
            return refuse("no client certificate: every sov call needs one (sovctl --tls-dir or SOV_TLS_DIR; see docs/security.md)".into());
        }
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
        fingerprint,
        identity,
    }))
}

/// Most client certificates whose identity [`identify`] remembers (forgotten all at once when
/// full: a fleet has few certificates, a wildcard one for thousands of virtual nodes).
const CERT_IDENTITIES_MAX: usize = 1_024;

type Identified = Result<(Identity, String), String>;

/// The identity and fingerprint of a client certificate, remembered by its bytes: parsing the
/// X.509 and hashing it for every call (every agent heartbeat) took 2-3 % of a loaded leader's
/// CPU. A pure function of the bytes (rustls checked the chain and dates at the handshake), so
/// remembering it changes no decision.
fn identify(der: &[u8]) -> Identified {
    type Seen = Mutex<HashMap<Vec<u8>, Identified, foldhash::fast::RandomState>>;
    static SEEN: OnceLock<Seen> = OnceLock::new();
    let seen = SEEN.get_or_init(Default::default);
    if let Some(known) = seen.lock().unwrap_or_else(|p| p.into_inner()).get(der) {
        return known.clone();
    }
    let known = sov_proto::tls::identity_of(der)
        .map(|identity| (identity, sov_proto::tls::fingerprint(der)))
        .map_err(|e| e.to_string());
    let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
    if seen.len() >= CERT_IDENTITIES_MAX {
        seen.clear();
    }
    seen.insert(der.to_vec(), known.clone());
    known
}

/// The token of an `authorization: Bearer TOKEN` header, if any.
fn bearer<B>(request: &http::Request<B>) -> Option<&str> {
    let value = request
        .headers()
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// The tower layer that runs [`decide`] in front of a tonic server.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    pub roles: Roles,
    /// Bearer tokens accepted (API port, `bearer_tokens` on), checked with the cluster CA.
    pub tokens: Option<Arc<sov_proto::token::Verifier>>,
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            roles: self.roles,
            tokens: self.tokens.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    roles: Roles,
    tokens: Option<Arc<sov_proto::token::Verifier>>,
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
            let credentials = Credentials {
                certs: certs.as_deref().map(Vec::as_slice),
                token: self
                    .tokens
                    .as_deref()
                    .and_then(|verifier| Some((bearer(&request)?, verifier))),
                tokens_accepted: self.tokens.is_some(),
            };
            match decide(&self.roles, request.uri().path(), credentials) {
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
        let nothing = Credentials {
            certs: None,
            token: None,
            tokens_accepted: false,
        };
        let err = decide(&Roles::default(), "/sov.v1.PolicyService/Apply", nothing).unwrap_err();
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

    #[test]
    fn a_bearer_token_stands_for_a_certificate_where_tokens_are_accepted() {
        use sov_proto::token::{TTL_DEFAULT, Verifier, issue};
        let dir = tempfile::tempdir().unwrap();
        let ca = sov_proto::tls::Ca::init(dir.path(), "test CA").unwrap();
        let verifier = Verifier::from_ca_pem(ca.cert_pem()).unwrap();
        let alice = Identity::new(Role::Deployer, "alice").unwrap();
        let token = issue(&ca, &alice, TTL_DEFAULT).unwrap().token;
        let token = token.as_str();
        fn with<'a>(token: &'a str, verifier: &'a Verifier) -> Credentials<'a> {
            Credentials {
                certs: None,
                token: Some((token, verifier)),
                tokens_accepted: true,
            }
        }
        let caller = decide(
            &Roles::default(),
            "/sov.v1.DeploymentService/Apply",
            with(token, &verifier),
        )
        .expect("a deployer's token may deploy");
        assert_eq!(caller.identity, alice);
        assert_eq!(caller.fingerprint, sov_proto::token::fingerprint(token));
        // The role still decides.
        let err = decide(
            &Roles::default(),
            "/sov.v1.PolicyService/Apply",
            with(token, &verifier),
        )
        .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(err.message().contains("policy.apply"), "{}", err.message());
        // A forged token is not authenticated.
        let err = decide(
            &Roles::default(),
            "/sov.v1.DeploymentService/Apply",
            with("sov1.e30.AAAA", &verifier),
        )
        .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        // Neither certificate nor token, where tokens are accepted: the message names both.
        let nothing = Credentials {
            certs: None,
            token: None,
            tokens_accepted: true,
        };
        let err = decide(&Roles::default(), "/sov.v1.DeploymentService/List", nothing).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        assert!(err.message().contains("SOV_TOKEN"), "{}", err.message());
    }

    #[test]
    fn the_bearer_header_is_read_case_insensitively() {
        let request = |value: &str| {
            http::Request::builder()
                .header("authorization", value)
                .body(())
                .unwrap()
        };
        assert_eq!(bearer(&request("Bearer sov1.a.b")), Some("sov1.a.b"));
        assert_eq!(bearer(&request("bearer  sov1.a.b ")), Some("sov1.a.b"));
        assert_eq!(bearer(&request("Basic dXNlcg==")), None);
        assert_eq!(bearer(&http::Request::new(())), None);
    }
}
