//! Shapes and text of `sovctl node ...`: the inventory and facts operators check before they
//! trust a node with a deployment.
//!
//! Simulated GPUs (declared in a dev/test config, not found through NVML) are marked wherever
//! GPUs are shown, so a test fleet is never mistaken for hardware.

use std::collections::BTreeMap;

use serde::Serialize;
use sov_proto::v1 as pb;

use super::{
    ReplicaView, Table, clock_cell, dash_if_empty, deadline_text, fields, gpus_cell, if_set,
    port_cell, replica_notes, replica_status_cell, sorted, time_cell,
};

/// `sov.v1.GpuDevice`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuView {
    pub index: u32,
    pub uuid: String,
    pub model: String,
    pub memory_mib: u64,
    pub mig_enabled: bool,
    pub driver_version: String,
    pub simulated: bool,
}

/// `sov.v1.Inventory`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct InventoryView {
    pub cpu_millis: u32,
    pub memory_mib: u64,
    pub gpus: Vec<GpuView>,
    /// Ports offered to model servers, inclusive; both 0 means the default range.
    pub port_first: u32,
    pub port_last: u32,
}

/// `sov.v1.NodeAllocation`. `replica` is `null` only if a server sends an allocation without
/// one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AllocationView {
    pub deployment: String,
    pub replica: Option<ReplicaView>,
}

/// `sov.v1.LocationFacts`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LocationFactsView {
    pub country: String,
    pub subdivision: String,
    pub site: String,
    pub operator: String,
    pub operator_hq: String,
    pub ultimate_parent_hq: String,
    /// Certification name -> last day valid (YYYY-MM-DD).
    pub certifications: BTreeMap<String, String>,
    /// The least trusted of the facts.
    pub location_trust: String,
    /// Fact name -> how it is known ("operator-certificate" when the node's certificate vouches
    /// for it).
    pub fact_trust: BTreeMap<String, String>,
}

impl LocationFactsView {
    /// A fact's value followed by how it is known, e.g. "FR (operator-certificate)".
    fn with_trust(&self, name: &str, value: &str) -> String {
        match self.fact_trust.get(name) {
            Some(trust) if !value.is_empty() => format!("{value} ({trust})"),
            _ => dash_if_empty(value),
        }
    }
}

/// `sov.v1.Node`. `facts` is `null` when the node has none, which makes it ineligible (fail
/// closed), so it is kept distinct from empty facts; a missing inventory is shown as empty.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeView {
    pub name: String,
    pub facts: Option<LocationFactsView>,
    pub inventory: InventoryView,
    pub status: String,
    pub draining: bool,
    /// While draining: when every replica still on the node is stopped; 0 otherwise.
    pub drain_deadline_ms: i64,
    pub registered_at_ms: i64,
    pub updated_at_ms: i64,
    pub revision: u64,
    pub allocations: Vec<AllocationView>,
}

impl NodeView {
    /// Replicas placed here that the scheduler wants running: the node's share of the work.
    pub fn allocations_to_run(&self) -> usize {
        self.allocations
            .iter()
            .filter(|a| a.replica.as_ref().is_some_and(ReplicaView::wants_run))
            .count()
    }
}

impl From<pb::Node> for NodeView {
    fn from(n: pb::Node) -> Self {
        let inventory = n.inventory.unwrap_or_default();
        NodeView {
            name: n.name,
            facts: n.facts.map(|f| LocationFactsView {
                country: f.country,
                subdivision: f.subdivision,
                site: f.site,
                operator: f.operator,
                operator_hq: f.operator_hq,
                ultimate_parent_hq: f.ultimate_parent_hq,
                certifications: sorted(f.certifications),
                location_trust: f.location_trust,
                fact_trust: sorted(f.fact_trust),
            }),
            inventory: InventoryView {
                cpu_millis: inventory.cpu_millis,
                memory_mib: inventory.memory_mib,
                gpus: inventory
                    .gpus
                    .into_iter()
                    .map(|g| GpuView {
                        index: g.index,
                        uuid: g.uuid,
                        model: g.model,
                        memory_mib: g.memory_mib,
                        mig_enabled: g.mig_enabled,
                        driver_version: g.driver_version,
                        simulated: g.simulated,
                    })
                    .collect(),
                port_first: inventory.port_first,
                port_last: inventory.port_last,
            },
            status: n.status,
            draining: n.draining,
            drain_deadline_ms: n.drain_deadline_ms,
            registered_at_ms: n.registered_at_ms,
            updated_at_ms: n.updated_at_ms,
            revision: n.revision,
            allocations: n
                .allocations
                .into_iter()
                .map(|a| AllocationView {
                    deployment: a.deployment,
                    replica: a.replica.map(ReplicaView::from),
                })
                .collect(),
        }
    }
}

/// `sov.v1.ListNodesResponse`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeListView {
    pub nodes: Vec<NodeView>,
    pub revision: u64,
}

impl From<pb::ListNodesResponse> for NodeListView {
    fn from(r: pb::ListNodesResponse) -> Self {
        NodeListView {
            nodes: r.nodes.into_iter().map(NodeView::from).collect(),
            revision: r.revision,
        }
    }
}

/// Marks GPUs that are not real hardware.
const SIMULATED_MARK: &str = "(simulated)";
/// The range a node offers when its inventory names none (`Inventory.port_first`/`port_last`).
const DEFAULT_PORTS: (u32, u32) = (20000, 20999);

/// `node list`, sorted by name. ALLOCS counts the replicas placed to run there.
pub fn nodes_table(nodes: &[NodeView], now_ms: i64) -> String {
    let mut sorted: Vec<&NodeView> = nodes.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut table = Table::new(&[
        "NAME",
        "STATUS",
        "COUNTRY",
        "SITE",
        "OPERATOR",
        "PARENT HQ",
        "TRUST",
        "GPUS",
        "CPU",
        "MEMORY",
        "ALLOCS",
    ]);
    for n in sorted {
        let facts = |get: fn(&LocationFactsView) -> &str| {
            n.facts
                .as_ref()
                .map_or("-".to_owned(), |f| dash_if_empty(get(f)))
        };
        table.row(vec![
            dash_if_empty(&n.name),
            status_cell(n, now_ms),
            facts(|f| &f.country),
            facts(|f| &f.site),
            facts(|f| &f.operator),
            facts(|f| &f.ultimate_parent_hq),
            facts(|f| &f.location_trust),
            if_set(
                !n.inventory.gpus.is_empty(),
                &gpus_summary(&n.inventory.gpus),
                "-",
            ),
            cores(n.inventory.cpu_millis),
            mebibytes(n.inventory.memory_mib),
            n.allocations_to_run().to_string(),
        ]);
    }
    table.render()
}

/// `node show`: every fact, then every GPU, then the replicas placed here.
pub fn node_text(n: &NodeView, now_ms: i64) -> String {
    let mut pairs = vec![
        ("Name", dash_if_empty(&n.name)),
        ("Status", status_cell(n, now_ms)),
    ];
    if n.draining && n.drain_deadline_ms > 0 {
        pairs.push((
            "Drain deadline",
            format!(
                "{}: replicas still here are stopped then",
                deadline_text(n.drain_deadline_ms, now_ms)
            ),
        ));
    }
    match &n.facts {
        Some(f) => pairs.extend([
            ("Country", f.with_trust("country", &f.country)),
            ("Subdivision", f.with_trust("subdivision", &f.subdivision)),
            ("Site", f.with_trust("site", &f.site)),
            ("Operator", f.with_trust("operator", &f.operator)),
            ("Operator HQ", f.with_trust("operator_hq", &f.operator_hq)),
            (
                "Ultimate parent HQ",
                f.with_trust("ultimate_parent_hq", &f.ultimate_parent_hq),
            ),
            (
                "Location trust",
                if f.location_trust.is_empty() {
                    "-".to_owned()
                } else {
                    format!("{} (the least of its facts)", f.location_trust)
                },
            ),
            ("Certifications", certifications(&f.certifications)),
        ]),
        None => pairs.push((
            "Facts",
            "missing: no deployment is placed here until the agent reports them".to_owned(),
        )),
    }
    let inv = &n.inventory;
    pairs.extend([
        ("CPU", cores(inv.cpu_millis)),
        (
            "Memory",
            if_set(
                inv.memory_mib > 0,
                &format!("{} ({} MiB)", mebibytes(inv.memory_mib), inv.memory_mib),
                "-",
            ),
        ),
        (
            "GPUs",
            if_set(!inv.gpus.is_empty(), &gpus_summary(&inv.gpus), "none"),
        ),
        ("Ports", ports(inv.port_first, inv.port_last)),
        ("Allocations", allocations_summary(n)),
        ("Registered", time_cell(n.registered_at_ms)),
        ("Updated", time_cell(n.updated_at_ms)),
        ("Revision", n.revision.to_string()),
    ]);
    let mut out = fields(&pairs);
    if !inv.gpus.is_empty() {
        out.push('\n');
        out.push_str(&gpus_table(&inv.gpus));
    }
    if !n.allocations.is_empty() {
        out.push('\n');
        out.push_str(&allocations_table(n));
    }
    out
}

/// The GPUs of `node show` by index, each simulated one marked, with a note on what that means.
fn gpus_table(gpus: &[GpuView]) -> String {
    let mut by_index: Vec<&GpuView> = gpus.iter().collect();
    by_index.sort_by_key(|g| g.index);
    let mut table = Table::new(&["INDEX", "UUID", "MODEL", "MEMORY", "MIG", "DRIVER"]);
    for g in by_index {
        table.row(vec![
            g.index.to_string(),
            dash_if_empty(&g.uuid),
            marked_if_simulated(dash_if_empty(&g.model), g.simulated),
            format!("{} MiB", g.memory_mib),
            if_set(g.mig_enabled, "on", "off"),
            dash_if_empty(&g.driver_version),
        ]);
    }
    let mut out = table.render();
    if gpus.iter().any(|g| g.simulated) {
        out.push_str(
            "\nSimulated GPUs were declared in a dev/test config, not found through NVML: \
             there is no such hardware behind them.\n",
        );
    }
    out
}

/// The replicas placed on the node, by id, with why any of them is down. A replica on a
/// simulated GPU is marked, as the GPU itself is. An allocation without a replica (which no
/// scheduler sends) has nothing to show and is left out.
fn allocations_table(n: &NodeView) -> String {
    let simulated = |uuid: &String| {
        n.inventory
            .gpus
            .iter()
            .any(|g| g.simulated && g.uuid == *uuid)
    };
    let mut placed: Vec<(&str, &ReplicaView)> = n
        .allocations
        .iter()
        .filter_map(|a| Some((a.deployment.as_str(), a.replica.as_ref()?)))
        .collect();
    placed.sort_by(|a, b| a.1.id.cmp(&b.1.id));
    let mut table = Table::new(&[
        "ID",
        "DEPLOYMENT",
        "GPUS",
        "PORT",
        "DESIRED",
        "STATUS",
        "RESTARTS",
    ]);
    for &(deployment, r) in &placed {
        table.row(vec![
            dash_if_empty(&r.id),
            dash_if_empty(deployment),
            marked_if_simulated(gpus_cell(&r.gpu_uuids), r.gpu_uuids.iter().any(simulated)),
            port_cell(r.port),
            dash_if_empty(&r.desired),
            replica_status_cell(r),
            r.restarts.to_string(),
        ]);
    }
    table.render() + &replica_notes(placed.iter().map(|&(_, r)| r))
}

/// `20000-20999`; the default range when the inventory names none (a scheduler that predates
/// port ranges), marked so.
fn ports(first: u32, last: u32) -> String {
    match (first, last) {
        (0, 0) => format!("{}-{} (default)", DEFAULT_PORTS.0, DEFAULT_PORTS.1),
        (first, last) => format!("{first}-{last}"),
    }
}

/// `none`, `2 to run`, or `2 to run, 1 to stop`: desired stop are replicas the scheduler is
/// stopping (their deployment was deleted or they moved) until the agent confirms they stopped.
fn allocations_summary(n: &NodeView) -> String {
    if n.allocations.is_empty() {
        return "none".to_owned();
    }
    let run = n.allocations_to_run();
    match n.allocations.len() - run {
        0 => format!("{run} to run"),
        other => format!("{run} to run, {other} to stop"),
    }
}

/// `text (simulated)` when `simulated`.
fn marked_if_simulated(text: String, simulated: bool) -> String {
    if simulated {
        format!("{text} {SIMULATED_MARK}")
    } else {
        text
    }
}

/// `node drain`: what changed, and what happens to the replicas still on the node. `force`:
/// the drain stopped them at once.
pub fn drain_line(n: &NodeView, force: bool, now_ms: i64) -> String {
    let replicas = if force {
        "its replicas were told to stop at once and are replaced elsewhere".to_owned()
    } else if n.drain_deadline_ms > 0 {
        format!(
            "its replicas move elsewhere, each stopped once its replacement runs, or at {} \
             whatever happens",
            deadline_text(n.drain_deadline_ms, now_ms)
        )
    } else {
        "its replicas move elsewhere, each stopped once its replacement runs".to_owned()
    };
    format!(
        "node {} is draining: no new replicas are placed on it; {replicas}\n",
        n.name
    )
}

/// `node undrain`.
pub fn undrain_line(n: &NodeView) -> String {
    format!(
        "node {} is no longer draining: new replicas may be placed on it\n",
        n.name
    )
}

/// `ready`, `down`, and `,draining` after either, with the drain's deadline:
/// `ready,draining (until 12:00:00Z)`.
fn status_cell(n: &NodeView, now_ms: i64) -> String {
    let status = dash_if_empty(&n.status);
    match (n.draining, n.drain_deadline_ms) {
        (false, _) => status,
        (true, 0) => format!("{status},draining"),
        (true, ms) => format!("{status},draining (until {})", clock_cell(ms, now_ms)),
    }
}

/// `8 x NVIDIA H100 80GB HBM3`, models in order of first appearance by index, joined with ` + `
/// when mixed; `(simulated)` at the end when any of them is.
fn gpus_summary(gpus: &[GpuView]) -> String {
    let mut by_index: Vec<&GpuView> = gpus.iter().collect();
    by_index.sort_by_key(|g| g.index);
    let mut groups: Vec<(&str, usize)> = Vec::new();
    for g in by_index {
        let model = if g.model.is_empty() {
            "unknown model"
        } else {
            g.model.as_str()
        };
        match groups.iter_mut().find(|(m, _)| *m == model) {
            Some((_, count)) => *count += 1,
            None => groups.push((model, 1)),
        }
    }
    let text = groups
        .iter()
        .map(|(model, count)| format!("{count} x {model}"))
        .collect::<Vec<_>>()
        .join(" + ");
    marked_if_simulated(text, gpus.iter().any(|g| g.simulated))
}

/// `ISO27001 valid until 2026-12-31`, one per line.
fn certifications(certs: &BTreeMap<String, String>) -> String {
    if certs.is_empty() {
        return "-".to_owned();
    }
    certs
        .iter()
        .map(|(name, until)| format!("{name} valid until {}", dash_if_empty(until)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Thousandths of a core, in whole cores where they are whole.
fn cores(millis: u32) -> String {
    match millis {
        0 => "-".to_owned(),
        1000 => "1 core".to_owned(),
        m if m % 1000 == 0 => format!("{} cores", m / 1000),
        m => format!("{m}m"),
    }
}

/// MiB in GiB from 1 GiB up (one decimal unless whole), else in MiB.
fn mebibytes(mib: u64) -> String {
    match mib {
        0 => "-".to_owned(),
        m if m < 1024 => format!("{m} MiB"),
        m if m % 1024 == 0 => format!("{} GiB", m / 1024),
        m => format!("{:.1} GiB", m as f64 / 1024.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// The renderers' "now": 2023-11-14T22:15:00Z.
    const NOW: i64 = 1_700_000_100_000;

    fn gpu(index: u32, model: &str, simulated: bool) -> pb::GpuDevice {
        pb::GpuDevice {
            index,
            uuid: format!("GPU-{index:08x}-1111-2222-3333-444444444444"),
            model: model.into(),
            memory_mib: 81559,
            mig_enabled: false,
            driver_version: "550.54.15".into(),
            simulated,
        }
    }

    fn node(name: &str, gpus: Vec<pb::GpuDevice>) -> NodeView {
        NodeView::from(pb::Node {
            name: name.into(),
            facts: Some(pb::LocationFacts {
                country: "FR".into(),
                subdivision: "FR-IDF".into(),
                site: "par-2".into(),
                operator: "Acme SAS".into(),
                operator_hq: "FR".into(),
                ultimate_parent_hq: "US".into(),
                certifications: HashMap::from([
                    ("SecNumCloud".into(), "2027-03-01".into()),
                    ("ISO27001".into(), "2026-12-31".into()),
                ]),
                location_trust: "self-reported".into(),
                fact_trust: HashMap::from([
                    ("country".into(), "operator-certificate".into()),
                    ("subdivision".into(), "self-reported".into()),
                ]),
            }),
            inventory: Some(pb::Inventory {
                cpu_millis: 64_000,
                memory_mib: 524_288,
                gpus,
                port_first: 20000,
                port_last: 20999,
            }),
            status: "ready".into(),
            draining: false,
            drain_deadline_ms: 0,
            registered_at_ms: 1_700_000_000_000,
            updated_at_ms: 1_700_000_060_000,
            revision: 12,
            allocations: vec![],
        })
    }

    fn allocation(
        deployment: &str,
        id: &str,
        gpu: u32,
        desired: &str,
        status: &str,
    ) -> AllocationView {
        AllocationView {
            deployment: deployment.into(),
            replica: Some(ReplicaView::from(pb::Replica {
                id: id.into(),
                node: "gpu-fr-1".into(),
                gpu_uuids: vec![format!("GPU-{gpu:08x}-1111-2222-3333-444444444444")],
                port: 20000 + gpu,
                desired: desired.into(),
                status: status.into(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn list_shows_one_row_per_node_sorted_by_name() {
        let mut drained = node("gpu-de-1", vec![]);
        drained.draining = true;
        drained.status = "down".into();
        let h100 = "NVIDIA H100 80GB HBM3";
        let mut busy = node("gpu-fr-1", vec![gpu(0, h100, false), gpu(1, h100, false)]);
        // ALLOCS counts what the node is asked to run, not what it is stopping.
        busy.allocations = vec![
            allocation("a", "a-1", 0, "run", "running"),
            allocation("b", "b-1", 1, "run", "failed"),
            allocation("c", "c-1", 1, "stop", "running"),
        ];
        let text = nodes_table(&[busy, drained], NOW);
        assert_eq!(
            text,
            concat!(
                "NAME       STATUS          COUNTRY   SITE    OPERATOR   PARENT HQ   TRUST           GPUS                        CPU        MEMORY    ALLOCS\n",
                "gpu-de-1   down,draining   FR        par-2   Acme SAS   US          self-reported   -                           64 cores   512 GiB   0\n",
                "gpu-fr-1   ready           FR        par-2   Acme SAS   US          self-reported   2 x NVIDIA H100 80GB HBM3   64 cores   512 GiB   2\n",
            )
        );
    }

    #[test]
    fn simulated_gpus_are_marked_in_the_list() {
        let text = nodes_table(
            &[node(
                "sim-1",
                vec![
                    gpu(0, "NVIDIA A100-SXM4-40GB", true),
                    gpu(1, "NVIDIA A100-SXM4-40GB", false),
                ],
            )],
            NOW,
        );
        assert!(
            text.contains("2 x NVIDIA A100-SXM4-40GB (simulated)"),
            "{text}"
        );
    }

    #[test]
    fn mixed_models_are_counted_per_model() {
        let gpus: Vec<GpuView> = node(
            "n",
            vec![gpu(2, "B", false), gpu(0, "A", false), gpu(1, "A", false)],
        )
        .inventory
        .gpus;
        assert_eq!(gpus_summary(&gpus), "2 x A + 1 x B");
    }

    #[test]
    fn a_node_without_facts_shows_dashes_and_says_why_in_show() {
        let mut n = node("bare", vec![]);
        n.facts = None;
        let row = nodes_table(&[n.clone()], NOW);
        assert!(
            row.lines().nth(1).unwrap().starts_with("bare   ready    -"),
            "{row}"
        );
        let text = node_text(&n, NOW);
        assert!(
            text.contains("Facts:        missing: no deployment is placed here"),
            "{text}"
        );
        assert_eq!(
            serde_json::to_value(&n).unwrap()["facts"],
            serde_json::Value::Null
        );
    }

    #[test]
    fn show_lists_every_fact_and_every_gpu() {
        let mut n = node(
            "gpu-fr-1",
            vec![
                gpu(1, "NVIDIA H100 80GB HBM3", true),
                gpu(0, "NVIDIA H100 80GB HBM3", true),
            ],
        );
        n.draining = true;
        let text = node_text(&n, NOW);
        for expected in [
            "Name:                gpu-fr-1\n",
            "Status:              ready,draining\n",
            "Country:             FR (operator-certificate)\n",
            "Subdivision:         FR-IDF (self-reported)\n",
            "Operator HQ:         FR\n",
            "Ultimate parent HQ:  US\n",
            "Location trust:      self-reported (the least of its facts)\n",
            "Certifications:      ISO27001 valid until 2026-12-31\n                     SecNumCloud valid until 2027-03-01\n",
            "CPU:                 64 cores\n",
            "Memory:              512 GiB (524288 MiB)\n",
            "GPUs:                2 x NVIDIA H100 80GB HBM3 (simulated)\n",
            "Ports:               20000-20999\n",
            "Allocations:         none\n",
            "Revision:            12\n",
            "INDEX   UUID                                       MODEL                               MEMORY      MIG   DRIVER\n",
            "0       GPU-00000000-1111-2222-3333-444444444444   NVIDIA H100 80GB HBM3 (simulated)   81559 MiB   off   550.54.15\n",
            "1       GPU-00000001-1111-2222-3333-444444444444   NVIDIA H100 80GB HBM3 (simulated)   ",
            "Simulated GPUs were declared in a dev/test config",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
        let gpu0 = text.find("\n0   ").unwrap();
        assert!(gpu0 < text.find("\n1   ").unwrap(), "GPUs sorted by index");
    }

    #[test]
    fn show_of_real_gpus_carries_no_simulation_note() {
        let text = node_text(&node("n", vec![gpu(0, "NVIDIA L4", false)]), NOW);
        assert!(!text.contains("imulated GPUs"), "{text}");
        assert!(!text.contains("(simulated)"), "{text}");
        assert!(text.contains("   NVIDIA L4   81559 MiB"), "{text}");
    }

    #[test]
    fn show_lists_allocations_by_id_with_why_they_are_down() {
        let mut n = node(
            "gpu-fr-1",
            vec![gpu(0, "NVIDIA L4", false), gpu(1, "NVIDIA L4", true)],
        );
        let mut failed = allocation("echo", "echo-2", 1, "run", "failed");
        let r = failed.replica.as_mut().unwrap();
        (r.exit_code, r.restarts) = (Some(1), 4);
        r.status_reason = "exited with code 1: address already in use".into();
        n.allocations = vec![
            failed,
            allocation("old", "old-1", 0, "stop", "stopped"),
            allocation("echo", "echo-1", 0, "run", "running"),
        ];
        n.inventory.port_first = 21000;
        n.inventory.port_last = 21099;
        let text = node_text(&n, NOW);
        assert!(
            text.contains("Ports:               21000-21099\n"),
            "{text}"
        );
        assert!(
            text.contains("Allocations:         2 to run, 1 to stop\n"),
            "{text}"
        );
        assert!(
            text.ends_with(concat!(
                "\nID       DEPLOYMENT   GPUS                            PORT    DESIRED   STATUS            RESTARTS\n",
                "echo-1   echo         1 (GPU-00000000…)               20000   run       running           0\n",
                "echo-2   echo         1 (GPU-00000001…) (simulated)   20001   run       failed (exit 1)   4\n",
                "old-1    old          1 (GPU-00000000…)               20000   stop      stopped           0\n",
                "\n  echo-2: exited with code 1: address already in use\n",
            )),
            "{text}"
        );
    }

    #[test]
    fn ports_default_when_the_inventory_names_none() {
        assert_eq!(ports(0, 0), "20000-20999 (default)");
        assert_eq!(ports(30000, 30010), "30000-30010");
    }

    #[test]
    fn json_mirrors_proto_field_names() {
        let json = serde_json::to_value(node("n", vec![gpu(0, "X", true)])).unwrap();
        assert_eq!(json["facts"]["ultimate_parent_hq"], "US");
        assert_eq!(json["facts"]["certifications"]["ISO27001"], "2026-12-31");
        assert_eq!(json["inventory"]["gpus"][0]["simulated"], true);
        assert_eq!(json["inventory"]["gpus"][0]["driver_version"], "550.54.15");
        assert_eq!(json["draining"], false);
        assert_eq!(json["inventory"]["port_first"], 20000);
        assert_eq!(json["inventory"]["port_last"], 20999);
        assert_eq!(json["allocations"], serde_json::json!([]));
        let mut n = node("n", vec![]);
        n.allocations = vec![allocation("echo", "echo-1", 0, "run", "running")];
        let json = serde_json::to_value(n).unwrap();
        assert_eq!(json["allocations"][0]["deployment"], "echo");
        assert_eq!(json["allocations"][0]["replica"]["id"], "echo-1");
        assert_eq!(json["allocations"][0]["replica"]["status"], "running");
        assert_eq!(
            json["allocations"][0]["replica"]["exit_code"],
            serde_json::Value::Null
        );
    }

    #[test]
    fn sizes_read_naturally() {
        assert_eq!(cores(0), "-");
        assert_eq!(cores(1000), "1 core");
        assert_eq!(cores(2500), "2500m");
        assert_eq!(mebibytes(512), "512 MiB");
        assert_eq!(mebibytes(1536), "1.5 GiB");
        assert_eq!(mebibytes(2048), "2 GiB");
    }

    #[test]
    fn drain_line_says_how_the_replicas_leave() {
        let mut n = node("gpu-fr-1", vec![]);
        n.draining = true;
        n.drain_deadline_ms = NOW + 3_600_000;
        assert_eq!(
            drain_line(&n, false, NOW),
            "node gpu-fr-1 is draining: no new replicas are placed on it; its replicas move \
             elsewhere, each stopped once its replacement runs, or at 2023-11-14T23:15:00Z (in \
             1h) whatever happens\n"
        );
        assert_eq!(
            drain_line(&n, true, NOW),
            "node gpu-fr-1 is draining: no new replicas are placed on it; its replicas were told \
             to stop at once and are replaced elsewhere\n"
        );
        n.drain_deadline_ms = 0;
        assert!(
            drain_line(&n, false, NOW).ends_with("each stopped once its replacement runs\n"),
            "{}",
            drain_line(&n, false, NOW)
        );
    }

    #[test]
    fn a_draining_node_shows_its_deadline_in_list_and_show() {
        let mut n = node("gpu-fr-1", vec![]);
        n.draining = true;
        n.drain_deadline_ms = NOW + 6_300_000;
        let row = nodes_table(&[n.clone()], NOW);
        assert!(
            row.contains("\ngpu-fr-1   ready,draining (until 00:00:00Z)   FR   "),
            "{row}"
        );
        let text = node_text(&n, NOW);
        assert!(
            text.contains(
                "Status:              ready,draining (until 00:00:00Z)\n\
                 Drain deadline:      2023-11-15T00:00:00Z (in 1h45m): replicas still here are \
                 stopped then\n"
            ),
            "{text}"
        );
        n.draining = false;
        n.drain_deadline_ms = 0;
        assert!(!node_text(&n, NOW).contains("Drain deadline"));
    }

    #[test]
    fn show_says_why_replicas_on_the_node_were_told_to_stop() {
        let mut n = node("gpu-fr-1", vec![gpu(0, "NVIDIA L4", false)]);
        let mut moved = allocation("echo", "echo-1", 0, "stop", "running");
        moved.replica.as_mut().unwrap().stop_reason = "drain of gpu-fr-1: deadline passed".into();
        n.allocations = vec![moved];
        let text = node_text(&n, NOW);
        assert!(
            text.ends_with("\n  echo-1: told to stop: drain of gpu-fr-1: deadline passed\n"),
            "{text}"
        );
    }
}
