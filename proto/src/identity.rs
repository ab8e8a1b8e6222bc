//! Who is calling: the identity a sov certificate carries, written as URI subject alternative
//! names (SPIFFE-style) so any X.509 tool shows it.
//!
//! One certificate names exactly one identity:
//! - `spiffe://sov/<role>/<name>`: the role (`operator`, `deployer`, `auditor`, `scheduler`, or
//!   `node` for an agent) and the name. An agent's name is its node's name; a name ending in `*`
//!   lets one agent speak for every node whose name starts with what comes before it (the fleet
//!   simulator), and such nodes' facts stay `self-reported`.
//! - `sov://location/<fact>/<value>`, agents only: the location facts the operator vouches for
//!   (country, subdivision, site, operator, operator_hq, ultimate_parent_hq). The scheduler takes
//!   these over what the agent reports and refuses an agent that reports something else.
//! - `sov://scope/namespace/<prefix>`, deployers only, optional: the deployer may only touch
//!   deployments whose name starts with `<prefix>`.
//!
//! Pure: parsing and printing only. Certificates are made in [`crate::tls`].

use std::collections::BTreeMap;
use std::fmt;

/// What a caller may do is decided by its role (the scheduler's `api::auth` maps each RPC to a
/// permission and each permission to the roles that hold it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Runs the cluster: membership, nodes, drains, policy, backups.
    Operator,
    /// Submits deployments (ML engineers).
    Deployer,
    /// Reads policy and history, exports evidence (compliance reviewers).
    Auditor,
    /// A node agent: only its own node's endpoints.
    Agent,
    /// A scheduler: the Raft peer port and joining a cluster.
    Scheduler,
}

pub const ROLES: [Role; 5] = [
    Role::Operator,
    Role::Deployer,
    Role::Auditor,
    Role::Agent,
    Role::Scheduler,
];

impl Role {
    /// As `sovctl ca issue --role` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Deployer => "deployer",
            Role::Auditor => "auditor",
            Role::Agent => "agent",
            Role::Scheduler => "scheduler",
        }
    }

    /// The path segment of the SPIFFE id: agents are named after their node.
    fn uri_segment(self) -> &'static str {
        match self {
            Role::Agent => "node",
            other => other.as_str(),
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        ROLES
            .into_iter()
            .find(|r| r.as_str() == s || r.uri_segment() == s)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The location facts a certificate may vouch for, as the agent's config and the node facts
/// name them.
pub const LOCATION_FACTS: [&str; 6] = [
    "country",
    "subdivision",
    "site",
    "operator",
    "operator_hq",
    "ultimate_parent_hq",
];

/// Longest name or claim value accepted in a certificate (names become node names and labels).
pub const NAME_BYTES_MAX: usize = 128;

const SPIFFE_PREFIX: &str = "spiffe://sov/";
const LOCATION_PREFIX: &str = "sov://location/";
const SCOPE_PREFIX: &str = "sov://scope/namespace/";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub role: Role,
    pub name: String,
    /// Fact (one of [`LOCATION_FACTS`]) -> value; agents only.
    pub location: BTreeMap<String, String>,
    /// Deployment-name prefix a deployer is limited to; deployers only.
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("the certificate names no sov identity (no spiffe://sov/<role>/<name> URI)")]
    Missing,
    #[error("the certificate names {0} sov identities; it must name exactly one")]
    Several(usize),
    #[error("{0}")]
    Invalid(String),
}

/// A name or claim value: non-empty, at most [`NAME_BYTES_MAX`] bytes, and made of characters
/// that are safe in a URI path, a file name, a label and a log line.
pub fn check_name(what: &str, value: &str) -> Result<(), IdentityError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if value.is_empty() {
        return Err(IdentityError::Invalid(format!("{what} is empty")));
    }
    if value.len() > NAME_BYTES_MAX {
        return Err(IdentityError::Invalid(format!(
            "{what} is {} bytes long; at most {NAME_BYTES_MAX}",
            value.len()
        )));
    }
    if value.starts_with('.') || !value.chars().all(ok_char) {
        return Err(IdentityError::Invalid(format!(
            "{what} {value:?} may only use letters, digits, '-', '_' and '.', and not start with '.'"
        )));
    }
    Ok(())
}

/// A location claim's value (an operator's legal name has spaces and dots): printable, at most
/// [`NAME_BYTES_MAX`] bytes, no control characters.
fn check_claim(what: &str, value: &str) -> Result<(), IdentityError> {
    if value.trim().is_empty() {
        return Err(IdentityError::Invalid(format!("{what} is empty")));
    }
    if value.len() > NAME_BYTES_MAX {
        return Err(IdentityError::Invalid(format!(
            "{what} is {} bytes long; at most {NAME_BYTES_MAX}",
            value.len()
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(IdentityError::Invalid(format!(
            "{what} {value:?} contains control characters"
        )));
    }
    Ok(())
}

/// Percent-encodes everything but RFC 3986's unreserved characters, so any claim value fits a
/// URI path segment.
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn decode(value: &str) -> Result<String, IdentityError> {
    let bad = || IdentityError::Invalid(format!("malformed percent-encoding in {value:?}"));
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = value.get(i + 1..i + 3).ok_or_else(bad)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

impl Identity {
    pub fn new(role: Role, name: &str) -> Result<Identity, IdentityError> {
        let bare = match role {
            Role::Agent => name.strip_suffix('*').unwrap_or(name),
            _ => name,
        };
        check_name("the name", bare)?;
        Ok(Identity {
            role,
            name: name.to_string(),
            location: BTreeMap::new(),
            namespace: None,
        })
    }

    pub fn with_location(mut self, fact: &str, value: &str) -> Result<Identity, IdentityError> {
        if self.role != Role::Agent {
            return Err(IdentityError::Invalid(format!(
                "location claims are for agents; this certificate's role is {}",
                self.role
            )));
        }
        if !LOCATION_FACTS.contains(&fact) {
            return Err(IdentityError::Invalid(format!(
                "unknown location fact {fact:?}; one of {}",
                LOCATION_FACTS.join(", ")
            )));
        }
        check_claim(fact, value)?;
        if self.location.insert(fact.into(), value.into()).is_some() {
            return Err(IdentityError::Invalid(format!("{fact} is claimed twice")));
        }
        Ok(self)
    }

    pub fn with_namespace(mut self, prefix: &str) -> Result<Identity, IdentityError> {
        if self.role != Role::Deployer {
            return Err(IdentityError::Invalid(format!(
                "a namespace scope is for deployers; this certificate's role is {}",
                self.role
            )));
        }
        check_name("the namespace", prefix)?;
        self.namespace = Some(prefix.into());
        Ok(self)
    }

    /// The URI subject alternative names that carry this identity.
    pub fn uris(&self) -> Vec<String> {
        let mut uris = vec![format!(
            "{SPIFFE_PREFIX}{}/{}",
            self.role.uri_segment(),
            self.name
        )];
        uris.extend(
            self.location
                .iter()
                .map(|(k, v)| format!("{LOCATION_PREFIX}{k}/{}", encode(v))),
        );
        uris.extend(self.namespace.iter().map(|p| format!("{SCOPE_PREFIX}{p}")));
        uris
    }

    /// Reads the identity back from a certificate's URI names; URIs outside sov's schemes are
    /// ignored, a malformed sov URI is an error (a certificate is never half understood).
    pub fn from_uris<'a>(
        uris: impl IntoIterator<Item = &'a str>,
    ) -> Result<Identity, IdentityError> {
        let mut ids = Vec::new();
        let mut location = Vec::new();
        let mut namespace = None;
        for uri in uris {
            if let Some(rest) = uri.strip_prefix(SPIFFE_PREFIX) {
                let (role, name) = rest
                    .split_once('/')
                    .and_then(|(r, n)| Some((Role::parse(r)?, n)))
                    .ok_or_else(|| IdentityError::Invalid(format!("malformed identity {uri}")))?;
                ids.push((role, name));
            } else if let Some(rest) = uri.strip_prefix(LOCATION_PREFIX) {
                let (fact, value) = rest.split_once('/').ok_or_else(|| {
                    IdentityError::Invalid(format!("malformed location claim {uri}"))
                })?;
                location.push((fact, decode(value)?));
            } else if let Some(prefix) = uri.strip_prefix(SCOPE_PREFIX) {
                namespace = Some(prefix);
            }
        }
        let (role, name) = match ids.as_slice() {
            [] => return Err(IdentityError::Missing),
            [one] => *one,
            many => return Err(IdentityError::Several(many.len())),
        };
        let mut identity = Identity::new(role, name)?;
        for (fact, value) in location {
            identity = identity.with_location(fact, &value)?;
        }
        if let Some(prefix) = namespace {
            identity = identity.with_namespace(prefix)?;
        }
        Ok(identity)
    }

    /// Whether this identity may act for node `node`: its own name, or a name under its
    /// wildcard prefix.
    pub fn speaks_for(&self, node: &str) -> bool {
        if self.role != Role::Agent {
            return false;
        }
        match self.name.strip_suffix('*') {
            Some(prefix) => node.starts_with(prefix),
            None => self.name == node,
        }
    }

    /// A wildcard agent identity vouches for no location.
    pub fn is_wildcard(&self) -> bool {
        self.role == Role::Agent && self.name.ends_with('*')
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}", self.role, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_survives_its_uris() {
        let id = Identity::new(Role::Agent, "fr-par-1")
            .unwrap()
            .with_location("country", "FR")
            .unwrap()
            .with_location("operator_hq", "FR")
            .unwrap()
            .with_location("operator", "Exemple Cloud S.A.S. / 100%")
            .unwrap();
        let uris = id.uris();
        assert!(
            uris.iter().all(|u| !u.contains(' ')),
            "claims are encoded: {uris:?}"
        );
        assert_eq!(uris[0], "spiffe://sov/node/fr-par-1");
        assert!(uris.contains(&"sov://location/country/FR".to_string()));
        let back = Identity::from_uris(uris.iter().map(String::as_str)).unwrap();
        assert_eq!(back, id);
        let dep = Identity::new(Role::Deployer, "team-a")
            .unwrap()
            .with_namespace("team-a-")
            .unwrap();
        let back = Identity::from_uris(dep.uris().iter().map(String::as_str)).unwrap();
        assert_eq!(back, dep);
    }

    #[test]
    fn bad_identities_are_refused_with_a_reason() {
        assert_eq!(
            Identity::from_uris(["https://example.com"]),
            Err(IdentityError::Missing)
        );
        assert_eq!(
            Identity::from_uris(["spiffe://sov/operator/a", "spiffe://sov/auditor/b"]),
            Err(IdentityError::Several(2))
        );
        for bad in [
            "spiffe://sov/root/a",
            "spiffe://sov/operator/../etc",
            "spiffe://sov/operator/a b",
            "spiffe://sov/operator/",
        ] {
            assert!(
                matches!(Identity::from_uris([bad]), Err(IdentityError::Invalid(_))),
                "{bad}"
            );
        }
        let err = Identity::from_uris(["spiffe://sov/operator/a", "sov://location/country/FR"])
            .unwrap_err();
        assert!(err.to_string().contains("for agents"), "{err}");
        let err = Identity::new(Role::Agent, "n")
            .unwrap()
            .with_location("planet", "earth")
            .unwrap_err();
        assert!(err.to_string().contains("unknown location fact"), "{err}");
        assert!(Identity::new(Role::Operator, &"a".repeat(NAME_BYTES_MAX + 1)).is_err());
        assert!(Identity::new(Role::Operator, "ops*").is_err());
    }

    #[test]
    fn an_agent_speaks_only_for_its_node_or_its_prefix() {
        let one = Identity::new(Role::Agent, "fr-1").unwrap();
        assert!(one.speaks_for("fr-1"));
        assert!(!one.speaks_for("fr-10"));
        let fleet = Identity::new(Role::Agent, "sim-*").unwrap();
        assert!(fleet.is_wildcard());
        assert!(fleet.speaks_for("sim-00042"));
        assert!(!fleet.speaks_for("fr-1"));
        let operator = Identity::new(Role::Operator, "fr-1").unwrap();
        assert!(!operator.speaks_for("fr-1"));
    }
}
