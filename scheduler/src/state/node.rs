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
    pub location_trust: LocationTrust,
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
