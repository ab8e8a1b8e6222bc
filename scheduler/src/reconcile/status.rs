//! Where each deployment stands, derived (never stored): `compliant`, `migrating (n/m)`,
//! `violating (audit)`, `unplaceable`, `degraded (k/n running)`, and how far the whole cluster
//! is from carrying out the rules in force. `sovctl deploy list|show`, `policy apply --wait`,
//! `deploy show --watch` and the metrics read these.
//!
//! Pure: computed from the state and the reconciler's [`super::Outlook`] (what could be placed
//! now), in one pass over the allocations.

use std::collections::{BTreeMap, BTreeSet};

use super::Outlook;
use crate::state::compliance::NodesUp;
use crate::state::{AllocStatus, Desired, Standing, State};

/// The compliance states of a deployment, from the most to the least pressing: a deployment
/// is in the first that applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Compliance {
    /// Replicas are missing and no node can take one.
    Unplaceable,
    /// Replicas are moving off nodes the rules no longer allow.
    Migrating,
    /// Replicas run where an `audit` rule forbids them (on record, not moved).
    Violating,
    /// Fewer replicas run than wanted.
    Degraded,
    Compliant,
}

impl Compliance {
    pub const ALL: [Compliance; 5] = [
        Compliance::Compliant,
        Compliance::Migrating,
        Compliance::Violating,
        Compliance::Unplaceable,
        Compliance::Degraded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Compliance::Unplaceable => "unplaceable",
            Compliance::Migrating => "migrating",
            Compliance::Violating => "violating",
            Compliance::Degraded => "degraded",
            Compliance::Compliant => "compliant",
        }
    }
}

/// How one deployment stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeploymentStatus {
    pub wanted: u32,
    /// Live, and their agents report them running (moving ones included).
    pub running: u32,
    /// Count toward the replicas (`state::compliance::counted`).
    pub counted: u32,
    /// Live and marked migrating; with a replacement placed.
    pub migrating: u32,
    pub replacements_placed: u32,
    /// Told to stop, not yet confirmed by an agent that is up / down.
    pub stopping: u32,
    pub stopping_on_down_nodes: u32,
    /// Live, placed, not reported running.
    pub starting: u32,
    /// Live and violating `audit` rules.
    pub violating: u32,
    pub violated_rules: BTreeSet<String>,
    pub moves_started: u32,
    pub moves_finished: u32,
    pub next_deadline_ms: Option<i64>,
    pub outlook: Outlook,
    /// Why missing replicas cannot be placed (filled in by the caller, which has the policy).
    pub explanation: String,
}

impl DeploymentStatus {
    pub fn compliance(&self) -> Compliance {
        let missing = self.outlook.wanted > self.outlook.placeable;
        if missing && self.outlook.placeable == 0 && self.counted == 0 && self.wanted > 0 {
            Compliance::Unplaceable
        } else if self.migrating > 0 {
            Compliance::Migrating
        } else if self.violating > 0 {
            Compliance::Violating
        } else if self.running < self.wanted {
            Compliance::Degraded
        } else {
            Compliance::Compliant
        }
    }

    /// `migrating (1/3)`, `degraded (1/2 running)`, `violating (audit: rule-a)`, ...; a
    /// shortfall of running replicas is added to any state but `degraded`, which is that.
    pub fn summary(&self) -> String {
        let c = self.compliance();
        let mut text = match c {
            Compliance::Migrating => format!(
                "migrating ({}/{})",
                self.moves_finished,
                self.moves_started.max(self.moves_finished + self.migrating)
            ),
            Compliance::Violating => {
                let rules: Vec<&str> = self.violated_rules.iter().map(String::as_str).collect();
                format!("violating (audit: {})", rules.join(", "))
            }
            Compliance::Degraded => format!("degraded ({}/{} running)", self.running, self.wanted),
            Compliance::Unplaceable | Compliance::Compliant => c.as_str().to_string(),
        };
        if !matches!(c, Compliance::Degraded | Compliance::Unplaceable)
            && self.running < self.wanted
        {
            text.push_str(&format!("; {}/{} running", self.running, self.wanted));
        }
        text
    }

    /// Nothing is left to stop, move or place that can be placed.
    pub fn settled(&self) -> bool {
        self.migrating == 0 && self.stopping == 0 && self.outlook.placeable == 0
    }

    /// Settled, and every replica that counts reports running: what `deploy show --watch`
    /// waits for.
    pub fn converged(&self) -> bool {
        self.settled() && self.starting == 0
    }
}

/// The status of every deployment in `state` (or of `only`), given what the reconciler could
/// place now.
pub fn deployments(
    state: &State,
    outlooks: &BTreeMap<String, Outlook>,
    only: Option<&str>,
) -> BTreeMap<String, DeploymentStatus> {
    let mut out: BTreeMap<String, DeploymentStatus> = state
        .deployments
        .values()
        .filter(|d| only.is_none_or(|o| o == d.spec.name))
        .map(|d| {
            (
                d.spec.name.clone(),
                DeploymentStatus {
                    wanted: d.spec.replicas,
                    moves_started: d.moves.started,
                    moves_finished: d.moves.finished,
                    outlook: outlooks.get(&d.spec.name).copied().unwrap_or_default(),
                    ..Default::default()
                },
            )
        })
        .collect();
    let up = NodesUp::of(state);
    for a in state.allocations.values() {
        let Some(s) = out.get_mut(&a.deployment) else {
            continue;
        };
        let is_live = up.live(a);
        if a.desired == Desired::Stop {
            let node_up = state
                .nodes
                .get(&a.node)
                .is_some_and(|n| n.status != crate::state::node::NodeStatus::Down);
            if node_up {
                s.stopping += 1;
            } else {
                s.stopping_on_down_nodes += 1;
            }
            continue;
        }
        if !is_live {
            continue;
        }
        if a.status == AllocStatus::Running {
            s.running += 1;
        }
        if crate::state::compliance::live_replacement(state, a).is_none() {
            s.counted += 1;
            if a.status != AllocStatus::Running {
                s.starting += 1;
            }
        }
        match &a.standing {
            Standing::Compliant => {}
            Standing::Violating { rules, .. } => {
                s.violating += 1;
                s.violated_rules.extend(rules.iter().cloned());
            }
            Standing::Migrating {
                deadline_ms,
                replacement,
                ..
            } => {
                s.migrating += 1;
                if !replacement.is_empty() {
                    s.replacements_placed += 1;
                }
                s.next_deadline_ms = Some(
                    s.next_deadline_ms
                        .map_or(*deadline_ms, |d| d.min(*deadline_ms)),
                );
            }
        }
    }
    out
}

/// How far the cluster is from carrying out the rules in force.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    pub migrating: u32,
    pub replacements_placed: u32,
    pub stopping: u32,
    pub stopping_on_down_nodes: u32,
    pub missing: u32,
    pub unplaceable: u32,
    pub starting: u32,
    pub violating: u32,
    pub next_deadline_ms: Option<i64>,
    pub moves_started: u32,
    pub moves_finished: u32,
    /// Nothing left to stop, move or place that can be placed.
    pub converged: bool,
}

/// Sums the deployments' statuses.
pub fn progress(statuses: &BTreeMap<String, DeploymentStatus>) -> Progress {
    let mut p = Progress {
        converged: true,
        ..Default::default()
    };
    for s in statuses.values() {
        p.migrating += s.migrating;
        p.replacements_placed += s.replacements_placed;
        p.stopping += s.stopping;
        p.stopping_on_down_nodes += s.stopping_on_down_nodes;
        p.missing += s.outlook.placeable;
        p.unplaceable += s.outlook.wanted - s.outlook.placeable;
        p.starting += s.starting;
        p.violating += s.violating;
        p.moves_started += s.moves_started;
        p.moves_finished += s.moves_finished;
        p.next_deadline_ms = match (p.next_deadline_ms, s.next_deadline_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        p.converged &= s.settled();
    }
    p
}
