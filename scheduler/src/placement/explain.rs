//! Explanations: why replicas cannot be placed, in the words users need.
//!
//! The summary counts every node once, under its first reason, and names the rule or the
//! resource: `0/12 nodes eligible: 8 forbidden by policy eu-residency ("Data must stay in the
//! EU"), 3 insufficient GPU memory (need 80 GiB per GPU, largest free 40 GiB), 1 down`. The
//! per-node view keeps every reason (every forbidding rule, every shortfall), not just the first.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::feasibility::Reason;
use super::fit::Shortfall;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    pub nodes_total: usize,
    pub nodes_eligible: usize,
    /// Every ineligible node with every reason, in node-name order.
    pub per_node: BTreeMap<String, Vec<Reason>>,
}

impl Explanation {
    pub fn new(nodes_total: usize, per_node: BTreeMap<String, Vec<Reason>>) -> Self {
        Self {
            nodes_total,
            nodes_eligible: nodes_total - per_node.len(),
            per_node,
        }
    }

    /// `(label, count)` groups in order of first appearance by node name, each node counted
    /// once under its first reason. Resource shortfalls of one kind are merged, keeping the
    /// largest free amount seen, so the summary states how far off the best node is.
    pub fn groups(&self) -> Vec<(String, usize)> {
        let mut order: Vec<String> = Vec::new();
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        let mut merged: BTreeMap<String, Reason> = BTreeMap::new();
        for reasons in self.per_node.values() {
            let Some(first) = reasons.first() else {
                continue;
            };
            let key = group_key(first);
            let slot = merged.entry(key.clone()).or_insert_with(|| first.clone());
            if let (Reason::Short(a), Reason::Short(b)) = (slot.clone(), first) {
                *slot = Reason::Short(widest(a, b.clone()));
            }
            if !counts.contains_key(&key) {
                order.push(key.clone());
            }
            *counts.entry(key).or_default() += 1;
        }
        order
            .into_iter()
            .map(|key| (merged[&key].to_string(), counts[&key]))
            .collect()
    }
}

/// Nodes with the same key are counted together in the summary.
fn group_key(reason: &Reason) -> String {
    let kind = match reason {
        Reason::Down => "down",
        Reason::Draining => "draining",
        Reason::Forbidden(rule) => return format!("policy:{}", rule.id),
        Reason::Short(Shortfall::GpuCount { .. }) => "gpu-count",
        Reason::Short(Shortfall::GpuModel { need }) => return format!("gpu-model:{need}"),
        Reason::Short(Shortfall::GpuMemory { .. }) => "gpu-memory",
        Reason::Short(Shortfall::Cpu { .. }) => "cpu",
        Reason::Short(Shortfall::Memory { .. }) => "memory",
        Reason::Short(Shortfall::Ports { .. }) => "ports",
    };
    kind.to_string()
}

/// Of two shortfalls of the same kind, the one with the most free capacity.
fn widest(a: Shortfall, b: Shortfall) -> Shortfall {
    use Shortfall::*;
    match (&a, &b) {
        (
            GpuMemory {
                largest_free_mib: x,
                ..
            },
            GpuMemory {
                largest_free_mib: y,
                ..
            },
        ) if y > x => b,
        (GpuCount { free: x, .. }, GpuCount { free: y, .. }) if y > x => b,
        (Cpu { free_millis: x, .. }, Cpu { free_millis: y, .. }) if y > x => b,
        (Memory { free_mib: x, .. }, Memory { free_mib: y, .. }) if y > x => b,
        _ => a,
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} nodes eligible",
            self.nodes_eligible, self.nodes_total
        )?;
        let groups = self.groups();
        if self.nodes_total == 0 {
            return write!(f, ": no nodes are registered");
        }
        for (i, (label, count)) in groups.iter().enumerate() {
            write!(f, "{}{count} {label}", if i == 0 { ": " } else { ", " })?;
        }
        Ok(())
    }
}
