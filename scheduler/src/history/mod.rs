//! History: the tamper-evident placement history, in the pure core (issue #6).
//!
//! Owns: the events (what happened to deployments, allocations, policy versions, violations and
//! nodes, each stamped with the Raft index, the leader's time and the policy version in force),
//! their canonical bytes (the JSON that a Merkle leaf hashes), and the running head of the
//! RFC 9162 tree over them ([`Head`], kept in the replicated state). Must not touch: storage
//! (the events themselves go to the history store, `raft::history_store`, after every apply),
//! clocks, keys.
//!
//! How an event is made, on every replica alike: `apply` and the functions it calls
//! [`record`] what happened; at the end of the command, [`seal`] numbers those events, encodes
//! each, hashes it into the tree and leaves the result in the state's [`Journal`] for the
//! state machine to store. Same log => same events => same bytes => same root (I3); the tree
//! only grows (I4). No personal data: people appear as the opaque ids they submitted.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sov_proto::merkle::{self, Frontier, Hash};

use crate::state::node::NodeFacts;
use crate::state::{DeploymentSpec, State};

/// One history event: a leaf of the tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Its leaf index: 0, 1, 2, ... in the order applied.
    pub seq: u64,
    /// Raft index of the command that recorded it.
    pub raft_index: u64,
    /// The leader's time stamped on that command.
    pub at_ms: i64,
    /// The policy version in force once the command was applied.
    pub policy_version: u64,
    #[serde(flatten)]
    pub what: What,
}

/// A node's facts as a placement was evaluated against them: the record stands on its own after
/// the node is gone or changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Facts {
    pub country: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subdivision: String,
    pub site: String,
    pub operator: String,
    pub operator_hq: String,
    pub ultimate_parent_hq: String,
    /// The least trusted of the location facts.
    pub location_trust: String,
    /// How each location fact was known (fact -> level), when trust is kept per fact.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fact_trust: BTreeMap<String, String>,
    /// Certifications in force on the day of the decision.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certifications: Vec<String>,
}

impl Facts {
    pub fn of(facts: &NodeFacts, today: &str) -> Facts {
        Facts {
            country: facts.country.clone(),
            subdivision: facts.subdivision.clone(),
            site: facts.site.clone(),
            operator: facts.operator.clone(),
            operator_hq: facts.operator_hq.clone(),
            ultimate_parent_hq: facts.ultimate_parent_hq.clone(),
            location_trust: facts.location_trust.as_str().into(),
            fact_trust: facts
                .trust_by_fact()
                .map(|(name, trust)| (name.to_owned(), trust.as_str().to_owned()))
                .collect(),
            certifications: facts
                .certifications
                .iter()
                .filter(|(_, until)| until.as_str() >= today)
                .map(|(name, _)| name.clone())
                .collect(),
        }
    }
}

/// [`Facts`] shared by the placement events of one command that name the same node, and encoded
/// once: a plan that places 20,000 replicas on 8,000 nodes builds and encodes the facts of 8,000
/// nodes, not 20,000 copies (they were about a quarter of such an apply, on every replica).
/// Serializes to exactly the bytes [`Facts`] does, so the leaves hashed are unchanged;
/// dereferences to the [`Facts`].
#[derive(Debug, Clone)]
pub struct SharedFacts(Arc<(Facts, OnceLock<Box<RawValue>>)>);

impl SharedFacts {
    pub fn new(facts: Facts) -> Self {
        SharedFacts(Arc::new((facts, OnceLock::new())))
    }

    /// The facts' JSON, encoded on first use.
    fn json(&self) -> &RawValue {
        self.0.1.get_or_init(|| {
            // Plain strings, a map and a list: encoding cannot fail.
            serde_json::value::to_raw_value(&self.0.0).expect("facts serialize")
        })
    }
}

impl From<Facts> for SharedFacts {
    fn from(facts: Facts) -> Self {
        SharedFacts::new(facts)
    }
}

impl std::ops::Deref for SharedFacts {
    type Target = Facts;
    fn deref(&self) -> &Facts {
        &self.0.0
    }
}

impl PartialEq for SharedFacts {
    fn eq(&self, other: &Self) -> bool {
        self.0.0 == other.0.0
    }
}
impl Eq for SharedFacts {}

impl Serialize for SharedFacts {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.json().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for SharedFacts {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Facts::deserialize(deserializer).map(SharedFacts::new)
    }
}

/// What happened. The `kind` names are the ones queries filter on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum What {
    #[serde(rename = "cluster.initialized")]
    ClusterInitialized { cluster_id: String },
    #[serde(rename = "deployment.created")]
    DeploymentCreated(DeploymentFacts),
    #[serde(rename = "deployment.changed")]
    DeploymentChanged(DeploymentFacts),
    #[serde(rename = "deployment.deleted")]
    DeploymentDeleted { deployment: String },
    #[serde(rename = "allocation.placed")]
    AllocationPlaced {
        allocation: String,
        deployment: String,
        node: String,
        facts: SharedFacts,
        /// Why the node was eligible: no rule of this policy version forbade it on these facts.
        eligible: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        replaces: String,
    },
    /// The agent reports the process started, not yet healthy.
    #[serde(rename = "allocation.started")]
    AllocationStarted(AllocationRef),
    #[serde(rename = "allocation.healthy")]
    AllocationHealthy(AllocationRef),
    #[serde(rename = "allocation.failed")]
    AllocationFailed {
        #[serde(flatten)]
        allocation: AllocationRef,
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
    },
    /// The cluster told the allocation to stop.
    #[serde(rename = "allocation.stop-ordered")]
    StopOrdered {
        #[serde(flatten)]
        allocation: AllocationRef,
        reason: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        rules: Vec<String>,
    },
    /// Its agent confirmed it stopped.
    #[serde(rename = "allocation.stopped")]
    AllocationStopped(AllocationRef),
    /// A migrating allocation was stopped because its replacement runs.
    #[serde(rename = "allocation.migrated")]
    AllocationMigrated {
        allocation: String,
        deployment: String,
        from_node: String,
        to_node: String,
        replacement: String,
    },
    #[serde(rename = "policy.activated")]
    PolicyActivated {
        version: u64,
        bundle_hash: String,
        author: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        comment: String,
        stopped: u32,
        migrating: u32,
        violations: u32,
        cleared: u32,
    },
    /// A running allocation became forbidden where it is; `action` is what follows
    /// ("stop-now", "migrate" or "audit").
    #[serde(rename = "violation.detected")]
    ViolationDetected {
        #[serde(flatten)]
        allocation: AllocationRef,
        rules: Vec<String>,
        action: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        drain: bool,
    },
    #[serde(rename = "violation.cleared")]
    ViolationCleared(AllocationRef),
    #[serde(rename = "node.registered")]
    NodeRegistered { node: String, facts: Facts },
    #[serde(rename = "node.facts-changed")]
    NodeFactsChanged { node: String, facts: Facts },
    #[serde(rename = "node.down")]
    NodeDown { node: String },
    #[serde(rename = "node.ready")]
    NodeReady { node: String },
    #[serde(rename = "node.drained")]
    NodeDrained { node: String, deadline_ms: i64 },
    #[serde(rename = "node.undrained")]
    NodeUndrained { node: String },
    #[serde(rename = "certification.expired")]
    CertificationExpired {
        node: String,
        certification: String,
        valid_until: String,
    },
    /// An agent's registration was refused: it reported location facts its certificate does
    /// not vouch for. `by` is the certificate's opaque id (role:fingerprint).
    #[serde(rename = "node.registration-refused")]
    NodeRegistrationRefused {
        node: String,
        reason: String,
        by: String,
    },
    /// A scheduler was added or removed; `by` is who asked (role:fingerprint).
    #[serde(rename = "cluster.membership-changed")]
    MembershipChanged { change: String, by: String },
}

/// Which allocation an event is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationRef {
    pub allocation: String,
    pub deployment: String,
    pub node: String,
}

/// What a deployment event records of the spec: what policy reads, and its size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentFacts {
    pub deployment: String,
    pub generation: u64,
    pub model: String,
    pub replicas: u32,
    pub eccn: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub residency: Vec<String>,
}

impl DeploymentFacts {
    pub fn of(spec: &DeploymentSpec, generation: u64) -> Self {
        DeploymentFacts {
            deployment: spec.name.clone(),
            generation,
            model: spec.model.clone(),
            replicas: spec.replicas,
            eccn: spec.export.eccn.clone(),
            residency: spec.residency.allowed.clone(),
        }
    }
}

impl What {
    /// The event's kind, e.g. "allocation.placed".
    pub fn kind(&self) -> &'static str {
        match self {
            What::ClusterInitialized { .. } => "cluster.initialized",
            What::DeploymentCreated(_) => "deployment.created",
            What::DeploymentChanged(_) => "deployment.changed",
            What::DeploymentDeleted { .. } => "deployment.deleted",
            What::AllocationPlaced { .. } => "allocation.placed",
            What::AllocationStarted(_) => "allocation.started",
            What::AllocationHealthy(_) => "allocation.healthy",
            What::AllocationFailed { .. } => "allocation.failed",
            What::StopOrdered { .. } => "allocation.stop-ordered",
            What::AllocationStopped(_) => "allocation.stopped",
            What::AllocationMigrated { .. } => "allocation.migrated",
            What::PolicyActivated { .. } => "policy.activated",
            What::ViolationDetected { .. } => "violation.detected",
            What::ViolationCleared(_) => "violation.cleared",
            What::NodeRegistered { .. } => "node.registered",
            What::NodeFactsChanged { .. } => "node.facts-changed",
            What::NodeDown { .. } => "node.down",
            What::NodeReady { .. } => "node.ready",
            What::NodeDrained { .. } => "node.drained",
            What::NodeUndrained { .. } => "node.undrained",
            What::CertificationExpired { .. } => "certification.expired",
            What::NodeRegistrationRefused { .. } => "node.registration-refused",
            What::MembershipChanged { .. } => "cluster.membership-changed",
        }
    }

    /// The deployment the event is about, if any.
    pub fn deployment(&self) -> Option<&str> {
        match self {
            What::DeploymentCreated(d) | What::DeploymentChanged(d) => Some(&d.deployment),
            What::DeploymentDeleted { deployment }
            | What::AllocationPlaced { deployment, .. }
            | What::AllocationMigrated { deployment, .. } => Some(deployment),
            What::AllocationStarted(a)
            | What::AllocationHealthy(a)
            | What::AllocationStopped(a)
            | What::ViolationCleared(a)
            | What::AllocationFailed { allocation: a, .. }
            | What::StopOrdered { allocation: a, .. }
            | What::ViolationDetected { allocation: a, .. } => Some(&a.deployment),
            _ => None,
        }
    }

    /// The allocation the event is about, if any.
    pub fn allocation(&self) -> Option<&str> {
        match self {
            What::AllocationPlaced { allocation, .. }
            | What::AllocationMigrated { allocation, .. } => Some(allocation),
            What::AllocationStarted(a)
            | What::AllocationHealthy(a)
            | What::AllocationStopped(a)
            | What::ViolationCleared(a)
            | What::AllocationFailed { allocation: a, .. }
            | What::StopOrdered { allocation: a, .. }
            | What::ViolationDetected { allocation: a, .. } => Some(&a.allocation),
            _ => None,
        }
    }

    /// The node the event is about, if any (a move is about the node it left).
    pub fn node(&self) -> Option<&str> {
        match self {
            What::AllocationPlaced { node, .. }
            | What::NodeRegistered { node, .. }
            | What::NodeFactsChanged { node, .. }
            | What::NodeDown { node }
            | What::NodeReady { node }
            | What::NodeDrained { node, .. }
            | What::NodeUndrained { node }
            | What::NodeRegistrationRefused { node, .. }
            | What::CertificationExpired { node, .. } => Some(node),
            What::AllocationMigrated { from_node, .. } => Some(from_node),
            What::AllocationStarted(a)
            | What::AllocationHealthy(a)
            | What::AllocationStopped(a)
            | What::ViolationCleared(a)
            | What::AllocationFailed { allocation: a, .. }
            | What::StopOrdered { allocation: a, .. }
            | What::ViolationDetected { allocation: a, .. } => Some(&a.node),
            _ => None,
        }
    }

    /// The country the event records facts of, if it carries facts.
    pub fn country(&self) -> Option<&str> {
        match self {
            What::AllocationPlaced { facts, .. } => Some(&facts.country),
            What::NodeRegistered { facts, .. } | What::NodeFactsChanged { facts, .. } => {
                Some(&facts.country)
            }
            _ => None,
        }
    }

    /// The rules the event names.
    pub fn rules(&self) -> &[String] {
        match self {
            What::StopOrdered { rules, .. } | What::ViolationDetected { rules, .. } => rules,
            _ => &[],
        }
    }
}

/// Serializes a hash as 64 hex digits in the state's JSON.
mod hex_hash_list {
    use serde::{Deserialize, Deserializer, Serializer, ser::SerializeSeq};

    pub fn serialize<S: Serializer>(nodes: &[(u32, [u8; 32])], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(nodes.len()))?;
        for (level, h) in nodes {
            seq.serialize_element(&(level, hex::encode(h)))?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(u32, [u8; 32])>, D::Error> {
        Vec::<(u32, String)>::deserialize(d)?
            .into_iter()
            .map(|(level, text)| {
                hex::decode(&text)
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .map(|h| (level, h))
                    .ok_or_else(|| serde::de::Error::custom(format!("{text:?} is not a hash")))
            })
            .collect()
    }
}

/// The head of the history tree, part of the replicated state: how many events, and the roots
/// of the perfect subtrees that make the tree (enough to append and to compute the root).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Head {
    pub size: u64,
    #[serde(with = "hex_hash_list")]
    pub frontier: Vec<(u32, Hash)>,
    /// The time of the last event. Event times never go back (see [`seal`]), so the store
    /// finds a time range by bisecting the events in order, with no time index.
    pub last_at_ms: i64,
}

impl Head {
    fn as_frontier(&self) -> Frontier {
        Frontier {
            size: self.size,
            nodes: self.frontier.clone(),
        }
    }

    /// The root of the tree (RFC 9162 `MTH`).
    pub fn root(&self) -> Hash {
        self.as_frontier().root()
    }
}

/// One event as the state machine stores it: the event, its canonical JSON (the leaf's bytes)
/// and the tree nodes its leaf completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub event: Event,
    pub json: String,
    pub nodes: Vec<(u32, u64, Hash)>,
}

/// What the last applied command recorded, for the state machine to store. Not part of the
/// state's value: two states are equal whatever their journals hold, and a copy of a state
/// starts with an empty one (only the state machine's own state is ever drained).
#[derive(Debug, Default)]
pub struct Journal {
    /// Recorded by `apply` so far in this command, not yet numbered.
    pending: Vec<What>,
    /// Sealed: numbered, encoded, hashed.
    pub sealed: Vec<Recorded>,
}

impl Clone for Journal {
    fn clone(&self) -> Self {
        Journal::default()
    }
}

impl PartialEq for Journal {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for Journal {}

/// Notes that `what` happened in the command being applied.
pub fn record(state: &mut State, what: What) {
    state.journal.pending.push(what);
}

/// Ends a command: numbers the events it recorded, encodes them, and appends them to the tree.
/// Returns how many.
///
/// The events carry the command's leader time, except that it never goes back: a new leader
/// whose clock is behind the old one's stamps its first events with the last event's time. So
/// event times, like policy versions, never decrease along the history.
pub fn seal(state: &mut State, raft_index: u64, at_ms: i64) -> usize {
    let pending = std::mem::take(&mut state.journal.pending);
    if pending.is_empty() {
        return 0;
    }
    let at_ms = at_ms.max(state.history.last_at_ms);
    let policy_version = state.policies.last().map_or(0, |v| v.version);
    let mut frontier = state.history.as_frontier();
    let count = pending.len();
    for what in pending {
        let event = Event {
            seq: frontier.size,
            raft_index,
            at_ms,
            policy_version,
            what,
        };
        // Plain structs and strings: serializing cannot fail.
        let json = serde_json::to_string(&event).expect("events serialize");
        let nodes = frontier.push(merkle::leaf_hash(json.as_bytes()));
        state.journal.sealed.push(Recorded { event, json, nodes });
    }
    state.history = Head {
        size: frontier.size,
        frontier: frontier.nodes,
        last_at_ms: at_ms,
    };
    count
}

/// Why a node was eligible for a placement made under `policy_version` (0: none in force).
pub fn eligibility(policy_version: u64) -> String {
    if policy_version == 0 {
        "no policy in force".into()
    } else {
        format!(
            "no rule of policy version {policy_version} forbids it on these facts, and the node was ready with the resources"
        )
    }
}

/// The placement event of allocation `a` just placed on a node with `facts` (made once per
/// node and command: `Facts::of(&node.facts, today).into()`), `eligible` as [`eligibility`]
/// says.
pub fn placed(a: &crate::state::Allocation, facts: SharedFacts, eligible: String) -> What {
    What::AllocationPlaced {
        allocation: a.id.clone(),
        deployment: a.deployment.clone(),
        node: a.node.clone(),
        facts,
        eligible,
        replaces: a.replaces.clone(),
    }
}

/// The allocation an event is about.
pub fn alloc_ref(a: &crate::state::Allocation) -> AllocationRef {
    AllocationRef {
        allocation: a.id.clone(),
        deployment: a.deployment.clone(),
        node: a.node.clone(),
    }
}

#[cfg(test)]
mod tests;
