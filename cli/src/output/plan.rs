//! Shapes and text of `sovctl deploy plan` and `sovctl explain`: where replicas would go or
//! went, and why the other nodes are excluded, in the scheduler's own words.

use serde::Serialize;
use sov_proto::v1 as pb;

use super::{Table, dash_if_empty, gpus_cell, port_cell};

/// `sov.v1.NodeVerdict`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeVerdictView {
    pub node: String,
    pub reasons: Vec<String>,
}

impl From<pb::NodeVerdict> for NodeVerdictView {
    fn from(v: pb::NodeVerdict) -> Self {
        NodeVerdictView {
            node: v.node,
            reasons: v.reasons,
        }
    }
}

/// `sov.v1.PlannedReplica`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlannedReplicaView {
    pub node: String,
    pub gpu_uuids: Vec<String>,
    pub port: u32,
}

/// `sov.v1.DeploymentPlan`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeploymentPlanView {
    pub placements: Vec<PlannedReplicaView>,
    pub running: u32,
    pub unplaceable: u32,
    pub summary: String,
    pub excluded: Vec<NodeVerdictView>,
    pub policy_version: u64,
}

impl From<pb::DeploymentPlan> for DeploymentPlanView {
    fn from(p: pb::DeploymentPlan) -> Self {
        DeploymentPlanView {
            placements: p
                .placements
                .into_iter()
                .map(|r| PlannedReplicaView {
                    node: r.node,
                    gpu_uuids: r.gpu_uuids,
                    port: r.port,
                })
                .collect(),
            running: p.running,
            unplaceable: p.unplaceable,
            summary: p.summary,
            excluded: p.excluded.into_iter().map(NodeVerdictView::from).collect(),
            policy_version: p.policy_version,
        }
    }
}

impl DeploymentPlanView {
    /// Whether applying the spec now would place replicas: what `deploy plan`'s exit code says.
    pub fn would_change(&self) -> bool {
        !self.placements.is_empty()
    }
}

/// `sov.v1.Explanation`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExplanationView {
    pub deployment: String,
    pub replicas_wanted: u32,
    pub replicas_running: u32,
    pub nodes_total: u32,
    pub nodes_eligible: u32,
    pub summary: String,
    pub excluded: Vec<NodeVerdictView>,
    pub policy_version: u64,
}

impl From<pb::Explanation> for ExplanationView {
    fn from(e: pb::Explanation) -> Self {
        ExplanationView {
            deployment: e.deployment,
            replicas_wanted: e.replicas_wanted,
            replicas_running: e.replicas_running,
            nodes_total: e.nodes_total,
            nodes_eligible: e.nodes_eligible,
            summary: e.summary,
            excluded: e.excluded.into_iter().map(NodeVerdictView::from).collect(),
            policy_version: e.policy_version,
        }
    }
}

/// `deploy plan` for the spec `name` wanting `wanted` replicas: the placements, then, when some
/// replicas fit nowhere, the summary and every excluded node's reasons.
pub fn plan_text(name: &str, wanted: u32, p: &DeploymentPlanView) -> String {
    let mut out = format!(
        "{name}: {}/{wanted} {} running, {} to place ({})\n",
        p.running,
        replicas_word(wanted),
        p.placements.len(),
        policy_version_text(p.policy_version)
    );
    if !p.placements.is_empty() {
        let mut table = Table::new(&["NODE", "GPUS", "PORT"]);
        for r in &p.placements {
            table.row(vec![
                dash_if_empty(&r.node),
                gpus_cell(&r.gpu_uuids),
                port_cell(r.port),
            ]);
        }
        out.push('\n');
        out.push_str(&table.render());
    } else if p.unplaceable == 0 {
        out.push_str("Nothing would change.\n");
    }
    if p.unplaceable > 0 {
        out.push('\n');
        out.push_str(&format!(
            "{} {} cannot be placed: {}\n",
            p.unplaceable,
            replicas_word(p.unplaceable),
            if p.summary.is_empty() {
                "the scheduler gave no reason"
            } else {
                &p.summary
            }
        ));
        if !p.excluded.is_empty() {
            out.push('\n');
            out.push_str(&verdicts_table(&p.excluded));
        }
    }
    out
}

/// `explain`: replicas running, the summary, and every excluded node with its reasons; with
/// `node`, that node's reasons alone, one per line.
pub fn explanation_text(e: &ExplanationView, node: Option<&str>) -> String {
    let mut out = format!(
        "{}: {}/{} {} running ({})\n",
        e.deployment,
        e.replicas_running,
        e.replicas_wanted,
        replicas_word(e.replicas_wanted),
        policy_version_text(e.policy_version)
    );
    if let Some(node) = node {
        let reasons: Vec<&String> = e
            .excluded
            .iter()
            .filter(|v| v.node == node)
            .flat_map(|v| &v.reasons)
            .collect();
        if reasons.is_empty() {
            out.push_str(&format!(
                "{node}: nothing excludes it; it could take a replica of {}\n",
                e.deployment
            ));
        } else {
            out.push_str(&format!("{node} is excluded:\n"));
            for reason in reasons {
                out.push_str(&format!("  {reason}\n"));
            }
        }
        return out;
    }
    if e.summary.is_empty() {
        out.push_str(&format!(
            "{}/{} nodes eligible\n",
            e.nodes_eligible, e.nodes_total
        ));
    } else {
        out.push_str(&e.summary);
        out.push('\n');
    }
    if !e.excluded.is_empty() {
        out.push('\n');
        out.push_str(&verdicts_table(&e.excluded));
    }
    out
}

/// Excluded nodes in name order, reasons joined with `; `.
pub fn verdicts_table(verdicts: &[NodeVerdictView]) -> String {
    let mut sorted: Vec<&NodeVerdictView> = verdicts.iter().collect();
    sorted.sort_by(|a, b| a.node.cmp(&b.node));
    let mut table = Table::new(&["NODE", "REASONS"]);
    for v in sorted {
        table.row(vec![
            dash_if_empty(&v.node),
            dash_if_empty(&v.reasons.join("; ")),
        ]);
    }
    table.render()
}

fn replicas_word(n: u32) -> &'static str {
    if n == 1 { "replica" } else { "replicas" }
}

fn policy_version_text(version: u64) -> String {
    if version == 0 {
        // Fail closed: with no policy in force the scheduler places nothing.
        "no policy in force".to_owned()
    } else {
        format!("policy version {version}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORBIDDEN: &str = "forbidden by policy eu-residency (\"Data must stay in the EU\")";
    const SHORT: &str = "insufficient GPU memory (need 80 GiB per GPU, largest free 40 GiB)";

    fn verdict(node: &str, reasons: &[&str]) -> pb::NodeVerdict {
        pb::NodeVerdict {
            node: node.into(),
            reasons: reasons.iter().map(|r| (*r).to_owned()).collect(),
        }
    }

    fn plan(placements: usize, running: u32, unplaceable: u32) -> DeploymentPlanView {
        DeploymentPlanView::from(pb::DeploymentPlan {
            placements: (0..placements)
                .map(|i| pb::PlannedReplica {
                    node: format!("gpu-fr-{}", i + 1),
                    gpu_uuids: vec![format!("GPU-8f2c1e0{i}-1b2c-3d4e-5f60-718293a4b5c6")],
                    port: 7501 + i as u32,
                })
                .collect(),
            running,
            unplaceable,
            summary: if unplaceable > 0 {
                format!("0/3 nodes eligible: 2 {FORBIDDEN}, 1 down")
            } else {
                String::new()
            },
            excluded: if unplaceable > 0 {
                vec![
                    verdict("gpu-us-2", &[FORBIDDEN, SHORT]),
                    verdict("gpu-us-1", &[FORBIDDEN]),
                    verdict("gpu-de-1", &["down"]),
                ]
            } else {
                vec![]
            },
            policy_version: 3,
        })
    }

    #[test]
    fn plan_lists_placements() {
        let p = plan(2, 0, 0);
        assert!(p.would_change());
        assert_eq!(
            plan_text("mistral-7b", 2, &p),
            concat!(
                "mistral-7b: 0/2 replicas running, 2 to place (policy version 3)\n",
                "\n",
                "NODE       GPUS                PORT\n",
                "gpu-fr-1   1 (GPU-8f2c1e00…)   7501\n",
                "gpu-fr-2   1 (GPU-8f2c1e01…)   7502\n",
            )
        );
    }

    #[test]
    fn plan_with_everything_running_changes_nothing() {
        let p = plan(0, 2, 0);
        assert!(!p.would_change());
        assert_eq!(
            plan_text("mistral-7b", 2, &p),
            "mistral-7b: 2/2 replicas running, 0 to place (policy version 3)\nNothing would change.\n"
        );
    }

    #[test]
    fn plan_explains_unplaceable_replicas_per_node() {
        let p = plan(0, 1, 1);
        assert!(!p.would_change());
        let text = plan_text("mistral-7b", 2, &p);
        assert_eq!(
            text,
            format!(
                "mistral-7b: 1/2 replicas running, 0 to place (policy version 3)\n\
                 \n\
                 1 replica cannot be placed: 0/3 nodes eligible: 2 {FORBIDDEN}, 1 down\n\
                 \n\
                 NODE       REASONS\n\
                 gpu-de-1   down\n\
                 gpu-us-1   {FORBIDDEN}\n\
                 gpu-us-2   {FORBIDDEN}; {SHORT}\n"
            )
        );
    }

    fn explanation(excluded: Vec<pb::NodeVerdict>) -> ExplanationView {
        ExplanationView::from(pb::Explanation {
            deployment: "mistral-7b".into(),
            replicas_wanted: 2,
            replicas_running: 1,
            nodes_total: 12,
            nodes_eligible: 0,
            summary: format!("0/12 nodes eligible: 8 {FORBIDDEN}, 3 {SHORT}, 1 down"),
            excluded,
            policy_version: 0,
        })
    }

    #[test]
    fn explain_shows_summary_then_every_excluded_node() {
        let e = explanation(vec![
            verdict("gpu-us-1", &[FORBIDDEN, SHORT]),
            verdict("gpu-de-1", &["down"]),
        ]);
        assert_eq!(
            explanation_text(&e, None),
            format!(
                "mistral-7b: 1/2 replicas running (no policy in force)\n\
                 0/12 nodes eligible: 8 {FORBIDDEN}, 3 {SHORT}, 1 down\n\
                 \n\
                 NODE       REASONS\n\
                 gpu-de-1   down\n\
                 gpu-us-1   {FORBIDDEN}; {SHORT}\n"
            )
        );
    }

    #[test]
    fn explain_for_one_node_lists_each_reason_on_its_own_line() {
        let e = explanation(vec![verdict("gpu-us-1", &[FORBIDDEN, SHORT])]);
        assert_eq!(
            explanation_text(&e, Some("gpu-us-1")),
            format!(
                "mistral-7b: 1/2 replicas running (no policy in force)\n\
                 gpu-us-1 is excluded:\n  {FORBIDDEN}\n  {SHORT}\n"
            )
        );
        let eligible = explanation(vec![]);
        assert!(
            explanation_text(&eligible, Some("gpu-fr-1")).ends_with(
                "gpu-fr-1: nothing excludes it; it could take a replica of mistral-7b\n"
            )
        );
    }

    #[test]
    fn json_mirrors_proto_field_names() {
        let json = serde_json::to_value(plan(1, 0, 1)).unwrap();
        assert_eq!(
            json["placements"][0]["gpu_uuids"][0],
            "GPU-8f2c1e00-1b2c-3d4e-5f60-718293a4b5c6"
        );
        assert_eq!(json["excluded"][0]["reasons"][1], SHORT);
        assert_eq!(json["policy_version"], 3);
        let json = serde_json::to_value(explanation(vec![])).unwrap();
        assert_eq!(json["replicas_running"], 1);
        assert_eq!(json["nodes_total"], 12);
    }
}
