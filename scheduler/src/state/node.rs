//! Nodes as the replicated state knows them: where they are and who runs them (location facts),
//! what they have (inventory), and whether they can take work (status).
//!
//! Pure data; the commands that change nodes live in `nodes.rs`, and placement
//! (`crate::placement`) and policy (`crate::policy`) read these types.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How a location fact is known. Ordered: policy can require a minimum (invariant I5).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum LocationTrust {
    /// The agent's own configuration says so.
    #[default]
    SelfReported = 1,
    /// The operator's certificate for the node carries the claim (issue #7).
    OperatorCertificate = 2,
    /// A hardware root of trust attests it.
    HardwareAttested = 3,
}

impl LocationTrust {
    pub fn level(self) -> u8 {
        self as u8
    }

    /// "self-reported", "operator-certificate" or "hardware-attested", as the API and the
    /// history write it.
    pub fn as_str(self) -> &'static str {
        match self {
            LocationTrust::SelfReported => "self-reported",
            LocationTrust::OperatorCertificate => "operator-certificate",
            LocationTrust::HardwareAttested => "hardware-attested",
        }
    }
}

/// Where a node is and who operates it. Countries are ISO 3166-1 alpha-2 codes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeFacts {
    pub country: String,
    /// ISO 3166-2 code (e.g. "FR-IDF"); empty when not given.
    pub subdivision: String,
    pub site: String,
    /// Legal entity operating the node.
    pub operator: String,
    pub operator_hq: String,
    /// Country of the operator's ultimate parent company.
    pub ultimate_parent_hq: String,
    /// Certification name -> last day it is valid (YYYY-MM-DD, inclusive).
    pub certifications: BTreeMap<String, String>,
    /// The least trusted of the location facts the node has (see [`Self::trust_of`]): what a
    /// rule on `location_trust` sees.
    pub location_trust: LocationTrust,
    /// How each location fact is known, by fact name (`sov_proto::identity::LOCATION_FACTS`),
    /// for the facts the node has. Empty in states written before trust was kept per fact:
    /// every fact then has `location_trust`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub fact_trust: BTreeMap<String, LocationTrust>,
}

impl NodeFacts {
    /// The location facts by name, in `sov_proto::identity::LOCATION_FACTS` order (a test in
    /// `state/tests.rs` holds the two together).
    pub fn location(&self) -> [(&'static str, &str); 6] {
        [
            ("country", &self.country),
            ("subdivision", &self.subdivision),
            ("site", &self.site),
            ("operator", &self.operator),
            ("operator_hq", &self.operator_hq),
            ("ultimate_parent_hq", &self.ultimate_parent_hq),
        ]
    }

    /// How the location fact `name` is known; `None` when the node does not have it (empty).
    pub fn trust_of(&self, name: &str) -> Option<LocationTrust> {
        let (_, value) = self.location().into_iter().find(|(n, _)| *n == name)?;
        if value.is_empty() {
            return None;
        }
        Some(
            self.fact_trust
                .get(name)
                .copied()
                .unwrap_or(self.location_trust),
        )
    }

    /// The facts the node has, with how each is known.
    pub fn trust_by_fact(&self) -> impl Iterator<Item = (&'static str, LocationTrust)> + '_ {
        self.location()
            .into_iter()
            .filter_map(|(name, _)| Some((name, self.trust_of(name)?)))
    }

    /// Sets the trust of every fact the node has (`vouched` says which ones a certificate
    /// vouches for), and `location_trust` to the least of them: one self-reported fact keeps
    /// the node self-reported for rules on `location_trust` (invariant I5, fail closed).
    pub fn set_trust(&mut self, vouched: impl Fn(&str) -> bool) {
        let per_fact: BTreeMap<String, LocationTrust> = self
            .location()
            .into_iter()
            .filter(|(_, value)| !value.is_empty())
            .map(|(name, _)| {
                let trust = if vouched(name) {
                    LocationTrust::OperatorCertificate
                } else {
                    LocationTrust::SelfReported
                };
                (name.to_owned(), trust)
            })
            .collect();
        self.location_trust = per_fact
            .values()
            .copied()
            .min()
            .unwrap_or(LocationTrust::SelfReported);
        self.fact_trust = per_fact;
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct Gpu {
    pub index: u32,
    pub uuid: String,
    /// Model name as NVML reports it, e.g. "NVIDIA H100 80GB HBM3".
    pub model: String,
    pub memory_mib: u64,
    pub mig_enabled: bool,
    pub driver_version: String,
    /// Declared in a dev/test configuration rather than found through NVML.
    pub simulated: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct Inventory {
    /// CPU in thousandths of a core.
    pub cpu_millis: u32,
    pub memory_mib: u64,
    pub gpus: Vec<Gpu>,
    /// Ports the node offers model servers (inclusive); 0/0 = the default 20000-20999.
    pub port_first: u16,
    pub port_last: u16,
}

impl Inventory {
    /// The port range model servers get on this node.
    pub fn port_range(&self) -> (u16, u16) {
        if self.port_first == 0 && self.port_last == 0 {
            (
                crate::placement::fit::PORT_FIRST,
                crate::placement::fit::PORT_LAST,
            )
        } else {
            (self.port_first, self.port_last)
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    #[default]
    Ready,
    /// Missed heartbeats past its TTL; takes no new work.
    Down,
}

impl NodeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Ready => "ready",
            NodeStatus::Down => "down",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Node {
    /// DNS-label style, unique in the cluster.
    pub name: String,
    pub facts: NodeFacts,
    pub inventory: Inventory,
    pub status: NodeStatus,
    /// Drained nodes take no new work, and their replicas move elsewhere.
    pub draining: bool,
    /// While draining: leader time by which every replica still here is stopped, replaced or
    /// not.
    pub drain_deadline_ms: i64,
    pub registered_at_ms: i64,
    pub updated_at_ms: i64,
    /// Raft index of the last change.
    pub revision: u64,
    /// Raft index of the last change to what this node's agent must run (an allocation placed
    /// here, or told to stop). Assignment streams compare it to what they sent, so a commit
    /// elsewhere in the cluster wakes no agent's stream for nothing.
    pub assignments_revision: u64,
}
