//! Shapes and text of `sovctl history ...` and `sovctl audit ...`: the placement history as a
//! compliance reviewer reads it, where a deployment ran at an instant, signed checkpoints, and
//! what an export and its verification established.
//!
//! An event's JSON is the body the scheduler recorded (the bytes its Merkle leaf hashes), parsed
//! and shown as it is, so what a reviewer quotes from `-o json` is what the evidence holds. The
//! DETAIL column is a one-line summary per kind; kinds this sovctl does not know show `-`.

use std::path::PathBuf;

use serde::Serialize;
use serde_json::{Map, Value};
use sov_proto::v1 as pb;

use super::policy::short_hash;
use super::{Table, dash_if_empty, fields, rfc3339_utc, time_cell};

/// Ranges of leaves a line names before it says how many more there are.
const LEAF_RANGES_SHOWN_MAX: usize = 4;
/// A policy comment in the DETAIL column is cut after this many characters.
const COMMENT_DETAIL_MAX: usize = 40;

/// Lower-case hex of bytes (roots, signatures), as the evidence file writes them.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One history event: the recorded body as JSON. The envelope's fields (`seq`, `raft_index`,
/// `at_ms`, `kind`, `policy_version`) are in every body the scheduler writes; they are added
/// only where a body lacks them. A body that is not a JSON object is kept as `body_text`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct EventView {
    pub event: Map<String, Value>,
    // The envelope, for the table (the JSON is the body alone). `deployment` and `node` are
    // what the event is about: for a move, the node it left.
    #[serde(skip)]
    pub seq: u64,
    #[serde(skip)]
    pub at_ms: i64,
    #[serde(skip)]
    pub kind: String,
    #[serde(skip)]
    pub policy_version: u64,
    #[serde(skip)]
    pub deployment: String,
    #[serde(skip)]
    pub node: String,
}

impl From<pb::HistoryEvent> for EventView {
    fn from(e: pb::HistoryEvent) -> Self {
        let mut event = match serde_json::from_slice::<Value>(&e.body) {
            Ok(Value::Object(map)) => map,
            _ => Map::from_iter([(
                "body_text".to_owned(),
                Value::String(String::from_utf8_lossy(&e.body).into_owned()),
            )]),
        };
        for (key, value) in [
            ("seq", Value::from(e.seq)),
            ("raft_index", Value::from(e.raft_index)),
            ("at_ms", Value::from(e.at_ms)),
            ("kind", Value::from(e.kind.clone())),
            ("policy_version", Value::from(e.policy_version)),
        ] {
            event.entry(key).or_insert(value);
        }
        EventView {
            event,
            seq: e.seq,
            at_ms: e.at_ms,
            kind: e.kind,
            policy_version: e.policy_version,
            deployment: e.deployment,
            node: e.node,
        }
    }
}

/// `history query -o json`: the events, oldest first, and the history they were read from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryView {
    pub events: Vec<EventView>,
    /// Size and root (hex) of the history the last page was read from: every event listed is
    /// a leaf of that tree.
    pub tree_size: u64,
    pub root: String,
    /// More events match than `--limit` let through.
    pub more: bool,
}

/// `history query`: SEQ, TIME (UTC), KIND, DEPLOYMENT, NODE, POLICY, DETAIL.
pub fn events_table(events: &[EventView]) -> String {
    let mut table = Table::new(&[
        "SEQ",
        "TIME (UTC)",
        "KIND",
        "DEPLOYMENT",
        "NODE",
        "POLICY",
        "DETAIL",
    ]);
    for e in events {
        table.row(vec![
            e.seq.to_string(),
            time_cell(e.at_ms),
            dash_if_empty(&e.kind),
            dash_if_empty(&e.deployment),
            dash_if_empty(&e.node),
            policy_cell(e.policy_version),
            event_detail(&e.kind, &e.event),
        ]);
    }
    table.render()
}

fn policy_cell(version: u64) -> String {
    if version == 0 {
        "-".to_owned()
    } else {
        format!("v{version}")
    }
}

/// A text field of an event body; empty when absent.
fn text<'a>(e: &'a Map<String, Value>, key: &str) -> &'a str {
    e.get(key).and_then(Value::as_str).unwrap_or("")
}

fn number(e: &Map<String, Value>, key: &str) -> u64 {
    e.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// A list-of-text field, joined with `, `; empty when absent.
fn list(e: &Map<String, Value>, key: &str) -> String {
    e.get(key)
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// The one-line summary of an event of `kind`, from its body: what a reviewer scanning the
/// table needs to tell events apart. Everything else is in `-o json`.
pub fn event_detail(kind: &str, e: &Map<String, Value>) -> String {
    let alloc = text(e, "allocation");
    match kind {
        "cluster.initialized" => format!("cluster {} initialized", text(e, "cluster_id")),
        "deployment.created" | "deployment.changed" => {
            let verb = kind.trim_start_matches("deployment.");
            let mut detail = format!(
                "{verb}: generation {}, model {}, {} replicas",
                number(e, "generation"),
                dash_if_empty(text(e, "model")),
                number(e, "replicas")
            );
            let eccn = text(e, "eccn");
            if !eccn.is_empty() && !eccn.eq_ignore_ascii_case("EAR99") {
                detail.push_str(&format!(", ECCN {eccn}"));
            }
            let residency = list(e, "residency");
            if !residency.is_empty() {
                detail.push_str(&format!(", residency {residency}"));
            }
            detail
        }
        "deployment.deleted" => "deleted".to_owned(),
        "allocation.placed" => {
            let facts = e.get("facts").and_then(Value::as_object);
            let place = facts.map_or_else(String::new, |f| {
                let mut where_ = vec![dash_if_empty(text(f, "country"))];
                let parent = text(f, "ultimate_parent_hq");
                if !parent.is_empty() {
                    where_.push(format!("parent {parent}"));
                }
                format!(" ({})", where_.join(", "))
            });
            let mut detail = format!("{alloc} placed on {}{place}", text(e, "node"));
            let replaces = text(e, "replaces");
            if !replaces.is_empty() {
                detail.push_str(&format!(", replaces {replaces}"));
            }
            detail
        }
        "allocation.started" | "allocation.healthy" | "allocation.stopped" => {
            format!("{alloc} {}", kind.trim_start_matches("allocation."))
        }
        "allocation.failed" => {
            let exit = e
                .get("exit_code")
                .and_then(Value::as_i64)
                .map_or_else(String::new, |c| format!(" (exit {c})"));
            format!("{alloc} failed{exit}: {}", dash_if_empty(text(e, "reason")))
        }
        "allocation.stop-ordered" => {
            let reason = text(e, "reason");
            let mut detail = format!("{alloc} stop ordered: {}", dash_if_empty(reason));
            // The scheduler's reasons name the rules; say them only where one does not.
            let rules = list(e, "rules");
            if !rules.is_empty() && !rules.split(", ").all(|r| reason.contains(r)) {
                detail.push_str(&format!(" (rules: {rules})"));
            }
            detail
        }
        "allocation.migrated" => format!(
            "{alloc} migrated {} → {} (replacement {})",
            dash_if_empty(text(e, "from_node")),
            dash_if_empty(text(e, "to_node")),
            dash_if_empty(text(e, "replacement"))
        ),
        "policy.activated" => {
            let mut detail = format!(
                "policy v{} activated by {}: {} stopped, {} migrating, {} violations, {} cleared",
                number(e, "version"),
                dash_if_empty(text(e, "author")),
                number(e, "stopped"),
                number(e, "migrating"),
                number(e, "violations"),
                number(e, "cleared")
            );
            let comment = text(e, "comment").lines().next().unwrap_or("").trim();
            if !comment.is_empty() {
                let cut = match comment.char_indices().nth(COMMENT_DETAIL_MAX) {
                    Some((at, _)) => format!("{}…", comment[..at].trim_end()),
                    None => comment.to_owned(),
                };
                detail.push_str(&format!(" ({cut:?})"));
            }
            detail
        }
        "violation.detected" => {
            let rules = list(e, "rules");
            let why = match (rules.is_empty(), e.get("drain").and_then(Value::as_bool)) {
                (true, Some(true)) => "node draining".to_owned(),
                _ => dash_if_empty(&rules),
            };
            format!(
                "{alloc} violation {}: {why}",
                dash_if_empty(text(e, "action"))
            )
        }
        "violation.cleared" => format!("{alloc} violation cleared"),
        "node.registered" | "node.facts-changed" => {
            let verb = if kind == "node.registered" {
                "registered"
            } else {
                "facts changed"
            };
            let facts = e
                .get("facts")
                .and_then(Value::as_object)
                .map_or_else(|| "-".to_owned(), facts_text);
            format!("{verb}: {facts}")
        }
        "node.down" | "node.ready" | "node.undrained" => kind["node.".len()..].to_owned(),
        "node.drained" => {
            let deadline = e.get("deadline_ms").and_then(Value::as_i64).unwrap_or(0);
            format!("draining until {}", time_cell(deadline))
        }
        "certification.expired" => format!(
            "certification {} expired (valid until {})",
            dash_if_empty(text(e, "certification")),
            dash_if_empty(text(e, "valid_until"))
        ),
        _ => "-".to_owned(),
    }
}

/// A node's facts in a line: `IE, site dub-1, operator acme (HQ IE, parent US), trust
/// operator-certificate, certified iso27001`.
fn facts_text(f: &Map<String, Value>) -> String {
    let mut parts = vec![dash_if_empty(text(f, "country"))];
    let site = text(f, "site");
    if !site.is_empty() {
        parts.push(format!("site {site}"));
    }
    let operator = text(f, "operator");
    if !operator.is_empty() {
        let (hq, parent) = (text(f, "operator_hq"), text(f, "ultimate_parent_hq"));
        let owners: Vec<String> = [("HQ", hq), ("parent", parent)]
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        if owners.is_empty() {
            parts.push(format!("operator {operator}"));
        } else {
            parts.push(format!("operator {operator} ({})", owners.join(", ")));
        }
    }
    let trust = text(f, "location_trust");
    if !trust.is_empty() {
        // Facts known better than the node as a whole (trust is kept per fact).
        let better: Vec<String> = f
            .get("fact_trust")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter_map(|(fact, level)| {
                let level = level.as_str()?;
                (level != trust).then(|| format!("{fact} {level}"))
            })
            .collect();
        if better.is_empty() {
            parts.push(format!("trust {trust}"));
        } else {
            parts.push(format!("trust {trust} ({})", better.join(", ")));
        }
    }
    let certifications = list(f, "certifications");
    if !certifications.is_empty() {
        parts.push(format!("certified {certifications}"));
    }
    parts.join(", ")
}

/// `sov.v1.AsOfReplica`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AsOfReplicaView {
    pub allocation: String,
    pub node: String,
    pub country: String,
    pub operator: String,
    pub operator_hq: String,
    pub ultimate_parent_hq: String,
    pub location_trust: String,
    pub certifications: Vec<String>,
    pub placed_under_policy: u64,
    pub placed_at_ms: i64,
    pub status: String,
    pub standing: String,
    pub eligible_because: String,
}

impl From<pb::AsOfReplica> for AsOfReplicaView {
    fn from(r: pb::AsOfReplica) -> Self {
        AsOfReplicaView {
            allocation: r.allocation,
            node: r.node,
            country: r.country,
            operator: r.operator,
            operator_hq: r.operator_hq,
            ultimate_parent_hq: r.ultimate_parent_hq,
            location_trust: r.location_trust,
            certifications: r.certifications,
            placed_under_policy: r.placed_under_policy,
            placed_at_ms: r.placed_at_ms,
            status: r.status,
            standing: r.standing,
            eligible_because: r.eligible_because,
        }
    }
}

/// `sov.v1.AsOfAnswer`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AsOfView {
    pub deployment: String,
    pub at_ms: i64,
    pub existed: bool,
    pub policy_version: u64,
    pub bundle_hash: String,
    pub replicas: Vec<AsOfReplicaView>,
    pub events_read: u64,
}

impl From<pb::AsOfAnswer> for AsOfView {
    fn from(a: pb::AsOfAnswer) -> Self {
        AsOfView {
            deployment: a.deployment,
            at_ms: a.at_ms,
            existed: a.existed,
            policy_version: a.policy_version,
            bundle_hash: a.bundle_hash,
            replicas: a.replicas.into_iter().map(AsOfReplicaView::from).collect(),
            events_read: a.events_read,
        }
    }
}

/// `policy version 3 (hash 6f0c1d2e3f4a…)`, or that no policy was in force.
fn policy_in_force(version: u64, bundle_hash: &str) -> String {
    match (version, bundle_hash.is_empty()) {
        // Fail closed: with no policy in force the scheduler placed nothing.
        (0, _) => "no policy".to_owned(),
        (v, true) => format!("policy version {v}"),
        (v, false) => format!("policy version {v} (hash {})", short_hash(bundle_hash)),
    }
}

/// `history query --as-of`: the policy in force at the instant, where every replica ran, on
/// which facts, and why each node was eligible.
pub fn as_of_text(a: &AsOfView) -> String {
    let at = rfc3339_utc(a.at_ms);
    let policy = policy_in_force(a.policy_version, &a.bundle_hash);
    if !a.existed {
        return format!(
            "{} did not exist at {at} ({policy} in force then)\n",
            a.deployment
        );
    }
    let count = a.replicas.len();
    let noun = if count == 1 { "replica" } else { "replicas" };
    let mut out = format!(
        "{} at {at}: {policy} in force; {count} {noun}\n",
        a.deployment
    );
    if a.replicas.is_empty() {
        out.push_str("No replica was placed to run at that instant.\n");
        return out;
    }
    let mut table = Table::new(&[
        "ALLOCATION",
        "NODE",
        "COUNTRY",
        "OPERATOR",
        "PARENT HQ",
        "TRUST",
        "PLACED UNDER",
        "STATUS",
        "STANDING",
    ]);
    for r in &a.replicas {
        table.row(vec![
            dash_if_empty(&r.allocation),
            dash_if_empty(&r.node),
            dash_if_empty(&r.country),
            dash_if_empty(&r.operator),
            dash_if_empty(&r.ultimate_parent_hq),
            dash_if_empty(&r.location_trust),
            placed_under_cell(r),
            dash_if_empty(&r.status),
            dash_if_empty(&r.standing),
        ]);
    }
    out.push('\n');
    out.push_str(&table.render());
    out.push('\n');
    for r in &a.replicas {
        let certified = if r.certifications.is_empty() {
            String::new()
        } else {
            format!(" (certified {})", r.certifications.join(", "))
        };
        out.push_str(&format!(
            "  {}{certified}: eligible because {}\n",
            dash_if_empty(&r.allocation),
            dash_if_empty(&r.eligible_because)
        ));
    }
    out
}

/// `policy v2 at 2026-06-11T18:00:00Z`: the version a replica's placement was checked against.
fn placed_under_cell(r: &AsOfReplicaView) -> String {
    let policy = match r.placed_under_policy {
        0 => "no policy".to_owned(),
        v => format!("policy v{v}"),
    };
    format!("{policy} at {}", time_cell(r.placed_at_ms))
}

/// `sov.v1.SignedCheckpoint`, bytes in hex.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckpointView {
    pub cluster_id: String,
    pub tree_size: u64,
    pub root: String,
    pub at_ms: i64,
    pub signature: String,
    pub key_id: String,
}

impl From<&pb::SignedCheckpoint> for CheckpointView {
    fn from(c: &pb::SignedCheckpoint) -> Self {
        CheckpointView {
            cluster_id: c.cluster_id.clone(),
            tree_size: c.tree_size,
            root: hex(&c.root),
            at_ms: c.at_ms,
            signature: hex(&c.signature),
            key_id: c.key_id.clone(),
        }
    }
}

/// `audit checkpoint`: the checkpoint, and the id of the key that verified it here, if one
/// was given (`null` otherwise).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckpointAnswerView {
    #[serde(flatten)]
    pub checkpoint: CheckpointView,
    pub verified_with_key: Option<String>,
}

pub fn checkpoint_text(v: &CheckpointAnswerView) -> String {
    let c = &v.checkpoint;
    let mut pairs = vec![
        ("Cluster", dash_if_empty(&c.cluster_id)),
        ("Tree size", c.tree_size.to_string()),
        ("Root", dash_if_empty(&c.root)),
        ("Time", time_cell(c.at_ms)),
        ("Key ID", dash_if_empty(&c.key_id)),
        ("Signature", dash_if_empty(&c.signature)),
    ];
    pairs.push((
        "Verified",
        match &v.verified_with_key {
            Some(key) => format!("yes, the signature is valid for key {key}"),
            None => "not here (pass --key cluster.pub to check the signature)".to_owned(),
        },
    ));
    fields(&pairs)
}

/// Leaf ranges as a reader says them: `3..14`, `1..2, 9`; after `LEAF_RANGES_SHOWN_MAX`
/// ranges, how many more.
pub fn leaves_text(ranges: &[(u64, u64)]) -> String {
    let mut parts: Vec<String> = ranges
        .iter()
        .take(LEAF_RANGES_SHOWN_MAX)
        .map(|&(first, last)| {
            if first == last {
                first.to_string()
            } else {
                format!("{first}..{last}")
            }
        })
        .collect();
    if ranges.len() > LEAF_RANGES_SHOWN_MAX {
        parts.push(format!(
            "and {} more ranges",
            ranges.len() - LEAF_RANGES_SHOWN_MAX
        ));
    }
    parts.join(", ")
}

/// `12 events (leaves 3..14)`, `1 event (leaf 7)`, `0 events`.
fn events_and_leaves(events: u64, ranges: &[(u64, u64)]) -> String {
    let noun = if events == 1 { "event" } else { "events" };
    match ranges {
        [] => format!("{events} {noun}"),
        [(first, last)] if first == last => format!("{events} {noun} (leaf {first})"),
        _ => format!("{events} {noun} (leaves {})", leaves_text(ranges)),
    }
}

/// What `history export` wrote (the stderr line, and with `-o json -f FILE` the document).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExportedView {
    /// `null`: written to stdout.
    pub file: Option<PathBuf>,
    pub cluster_id: String,
    pub events: u64,
    pub leaves: Vec<(u64, u64)>,
    pub tree_size: u64,
    pub root: String,
    pub at_ms: i64,
    /// The earlier tree size the export proves it extends, if asked (`--previous`).
    pub previous_size: Option<u64>,
}

/// `exported 12 events (leaves 3..14), tree size 20, root 6f0c1d2e3f4a…, to export.jsonl`.
pub fn exported_line(v: &ExportedView) -> String {
    let to = v
        .file
        .as_ref()
        .map_or_else(|| "stdout".to_owned(), |f| f.display().to_string());
    let extends = v
        .previous_size
        .map_or_else(String::new, |m| format!(", extending tree size {m}"));
    format!(
        "exported {}, tree size {}{extends}, root {}, to {to}\n",
        events_and_leaves(v.events, &v.leaves),
        v.tree_size,
        short_hash(&v.root)
    )
}

/// What `audit verify` found (`-o json`): `verified` and, when true, what the file proves;
/// when false, the verifier's `error`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VerifyView {
    pub verified: bool,
    pub file: PathBuf,
    /// The id of the public key given with --key.
    pub key_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(flatten)]
    pub details: Option<VerifiedView>,
}

/// What a verified export proves.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VerifiedView {
    pub cluster_id: String,
    pub tree_size: u64,
    pub root: String,
    pub at_ms: i64,
    pub events: u64,
    pub leaves: Vec<(u64, u64)>,
    /// The filter the export was made with, as the scheduler wrote it in the seal.
    pub filter: String,
    /// The tree size of the previous export it was shown to extend (`--previous`).
    pub extends: Option<u64>,
}

impl From<sov_proto::evidence::Verified> for VerifiedView {
    fn from(v: sov_proto::evidence::Verified) -> Self {
        VerifiedView {
            cluster_id: v.checkpoint.cluster_id,
            tree_size: v.checkpoint.tree_size,
            root: hex(&v.checkpoint.root),
            at_ms: v.checkpoint.at_ms,
            events: v.events,
            leaves: v.leaves,
            filter: v.filter,
            extends: v.extends,
        }
    }
}

/// `OK: 12 events (leaves 3..14) of cluster C verify against the checkpoint signed by key K:
/// tree size 20, root R, at TIME`, and `; extends the previous export at tree size M`.
pub fn verified_line(key_id: &str, v: &VerifiedView) -> String {
    let extends = v.extends.map_or_else(String::new, |m| {
        format!("; extends the previous export at tree size {m}")
    });
    format!(
        "OK: {} of cluster {} verify against the checkpoint signed by key {key_id}: tree size \
         {}, root {}, at {}{extends}\n",
        events_and_leaves(v.events, &v.leaves),
        dash_if_empty(&v.cluster_id),
        v.tree_size,
        v.root,
        rfc3339_utc(v.at_ms)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// 2026-06-12T18:00:00Z.
    const AT: i64 = 1_781_287_200_000;

    fn body(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    fn detail(value: Value) -> String {
        let e = body(value);
        event_detail(text(&e, "kind"), &e)
    }

    fn facts() -> Value {
        json!({"country": "IE", "site": "dub-1", "operator": "acme", "operator_hq": "IE",
               "ultimate_parent_hq": "US", "location_trust": "operator-certificate",
               "certifications": ["iso27001"]})
    }

    #[test]
    fn every_kind_has_a_summary_that_says_what_happened() {
        let a = |kind: &str, extra: Value| {
            let mut e = body(json!({"kind": kind, "allocation": "open-eu-7",
                                     "deployment": "open-eu", "node": "ie-1"}));
            e.extend(body(extra));
            Value::Object(e)
        };
        let cases = [
            (
                json!({"kind": "cluster.initialized", "cluster_id": "c-1"}),
                "cluster c-1 initialized",
            ),
            (
                json!({"kind": "deployment.created", "deployment": "open-eu", "generation": 1,
                       "model": "llama", "replicas": 2, "eccn": "4E091",
                       "residency": ["EU27", "CH"]}),
                "created: generation 1, model llama, 2 replicas, ECCN 4E091, residency EU27, CH",
            ),
            (
                json!({"kind": "deployment.changed", "generation": 2, "model": "llama",
                       "replicas": 3, "eccn": ""}),
                "changed: generation 2, model llama, 3 replicas",
            ),
            (json!({"kind": "deployment.deleted"}), "deleted"),
            (
                a("allocation.placed", json!({"facts": facts()})),
                "open-eu-7 placed on ie-1 (IE, parent US)",
            ),
            (
                a(
                    "allocation.placed",
                    json!({"facts": {"country": "DE"}, "replaces": "open-eu-3"}),
                ),
                "open-eu-7 placed on ie-1 (DE), replaces open-eu-3",
            ),
            (a("allocation.started", json!({})), "open-eu-7 started"),
            (a("allocation.healthy", json!({})), "open-eu-7 healthy"),
            (a("allocation.stopped", json!({})), "open-eu-7 stopped"),
            (
                a(
                    "allocation.failed",
                    json!({"reason": "exited with code 2", "exit_code": 2}),
                ),
                "open-eu-7 failed (exit 2): exited with code 2",
            ),
            (
                a(
                    "allocation.stop-ordered",
                    json!({"reason": "policy v2: directive-4e091-us-only (stop-now)",
                           "rules": ["directive-4e091-us-only"]}),
                ),
                "open-eu-7 stop ordered: policy v2: directive-4e091-us-only (stop-now)",
            ),
            (
                a(
                    "allocation.stop-ordered",
                    json!({"reason": "node drained", "rules": ["eu-only"]}),
                ),
                "open-eu-7 stop ordered: node drained (rules: eu-only)",
            ),
            (
                a(
                    "allocation.migrated",
                    json!({"from_node": "ie-1", "to_node": "de-1",
                           "replacement": "open-eu-9"}),
                ),
                "open-eu-7 migrated ie-1 → de-1 (replacement open-eu-9)",
            ),
            (
                json!({"kind": "policy.activated", "version": 3, "author": "reviewer-7",
                       "stopped": 1, "migrating": 0, "violations": 2, "cleared": 0}),
                "policy v3 activated by reviewer-7: 1 stopped, 0 migrating, 2 violations, 0 cleared",
            ),
            (
                json!({"kind": "policy.activated", "version": 4, "author": "r",
                       "comment": "directive 2026-06 section 4e091 applies to every frontier model\nmore",
                       "stopped": 0, "migrating": 0, "violations": 0, "cleared": 1}),
                "policy v4 activated by r: 0 stopped, 0 migrating, 0 violations, 1 cleared \
                 (\"directive 2026-06 section 4e091 applies…\")",
            ),
            (
                a(
                    "violation.detected",
                    json!({"rules": ["eu-sovereign-operator"], "action": "migrate"}),
                ),
                "open-eu-7 violation migrate: eu-sovereign-operator",
            ),
            (
                a(
                    "violation.detected",
                    json!({"rules": [], "action": "migrate", "drain": true}),
                ),
                "open-eu-7 violation migrate: node draining",
            ),
            (
                a("violation.cleared", json!({})),
                "open-eu-7 violation cleared",
            ),
            (
                json!({"kind": "node.registered", "node": "ie-1", "facts": facts()}),
                "registered: IE, site dub-1, operator acme (HQ IE, parent US), trust \
                 operator-certificate, certified iso27001",
            ),
            (
                json!({"kind": "node.facts-changed", "node": "ie-1",
                       "facts": {"country": "IE", "operator": "acme"}}),
                "facts changed: IE, operator acme",
            ),
            (
                json!({"kind": "node.facts-changed", "node": "ie-1",
                       "facts": {"country": "IE", "operator": "acme",
                                 "location_trust": "self-reported",
                                 "fact_trust": {"country": "operator-certificate",
                                                "operator": "self-reported"}}}),
                "facts changed: IE, operator acme, trust self-reported (country \
                 operator-certificate)",
            ),
            (json!({"kind": "node.down", "node": "ie-1"}), "down"),
            (json!({"kind": "node.ready", "node": "ie-1"}), "ready"),
            (
                json!({"kind": "node.undrained", "node": "ie-1"}),
                "undrained",
            ),
            (
                json!({"kind": "node.drained", "node": "ie-1", "deadline_ms": AT}),
                "draining until 2026-06-12T18:00:00Z",
            ),
            (
                json!({"kind": "certification.expired", "node": "ie-1",
                       "certification": "c5", "valid_until": "2026-06-01"}),
                "certification c5 expired (valid until 2026-06-01)",
            ),
            (json!({"kind": "quota.exceeded", "node": "ie-1"}), "-"),
        ];
        for (event, expected) in cases {
            assert_eq!(detail(event.clone()), expected, "{event}");
        }
    }

    fn pb_event(seq: u64, body: &str) -> pb::HistoryEvent {
        pb::HistoryEvent {
            seq,
            raft_index: 40 + seq,
            at_ms: AT + seq as i64 * 1000,
            kind: "allocation.placed".into(),
            body: body.as_bytes().to_vec(),
            policy_version: 2,
            deployment: "open-eu".into(),
            node: "ie-1".into(),
        }
    }

    #[test]
    fn an_event_is_its_recorded_body_with_the_envelope_filling_gaps_only() {
        let recorded = r#"{"seq":5,"raft_index":45,"at_ms":1781287205000,"policy_version":2,"kind":"allocation.placed","allocation":"open-eu-7","deployment":"open-eu","node":"ie-1","facts":{"country":"IE"},"eligible":"no rule forbids it"}"#;
        let v = EventView::from(pb_event(5, recorded));
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(
            json,
            serde_json::from_str::<Value>(recorded).unwrap(),
            "the body as recorded, nothing added"
        );
        let bare = EventView::from(pb_event(6, r#"{"allocation":"x"}"#));
        assert_eq!(
            serde_json::to_value(&bare).unwrap(),
            json!({"allocation": "x", "seq": 6, "raft_index": 46, "at_ms": AT + 6000,
                   "kind": "allocation.placed", "policy_version": 2})
        );
        let broken = EventView::from(pb_event(7, "not json"));
        assert_eq!(broken.event["body_text"], "not json");
        assert_eq!(broken.event["seq"], 7);
    }

    #[test]
    fn the_events_table_has_one_row_per_event() {
        let recorded = r#"{"kind":"allocation.placed","allocation":"open-eu-7","node":"ie-1","facts":{"country":"IE","ultimate_parent_hq":"US"}}"#;
        let mut policy = pb_event(
            9,
            r#"{"kind":"policy.activated","version":3,"author":"reviewer-7","stopped":1,"migrating":0,"violations":0,"cleared":0}"#,
        );
        policy.kind = "policy.activated".into();
        policy.deployment.clear();
        policy.node.clear();
        policy.policy_version = 3;
        let events = [
            EventView::from(pb_event(5, recorded)),
            EventView::from(policy),
        ];
        assert_eq!(
            events_table(&events),
            "SEQ   TIME (UTC)             KIND                DEPLOYMENT   NODE   POLICY   DETAIL\n\
             5     2026-06-12T18:00:05Z   allocation.placed   open-eu      ie-1   v2       open-eu-7 placed on ie-1 (IE, parent US)\n\
             9     2026-06-12T18:00:09Z   policy.activated    -            -      v3       policy v3 activated by reviewer-7: 1 stopped, 0 migrating, 0 violations, 0 cleared\n"
        );
    }

    fn as_of(existed: bool, replicas: Vec<AsOfReplicaView>) -> AsOfView {
        AsOfView {
            deployment: "open-eu".into(),
            at_ms: AT,
            existed,
            policy_version: 3,
            bundle_hash: "6f0c1d2e3f4a5b6c7d8e9f00".into(),
            replicas,
            events_read: 12,
        }
    }

    fn as_of_replica(id: &str, node: &str, certifications: &[&str]) -> AsOfReplicaView {
        AsOfReplicaView {
            allocation: id.into(),
            node: node.into(),
            country: "IE".into(),
            operator: "acme".into(),
            operator_hq: "IE".into(),
            ultimate_parent_hq: "US".into(),
            location_trust: "operator-certificate".into(),
            certifications: certifications.iter().map(|c| (*c).to_owned()).collect(),
            placed_under_policy: 2,
            placed_at_ms: AT - 86_400_000,
            status: "running".into(),
            standing: "compliant".into(),
            eligible_because: "no rule of policy version 2 forbids it on these facts".into(),
        }
    }

    #[test]
    fn as_of_says_where_each_replica_ran_and_why_it_was_allowed_there() {
        let mut migrating = as_of_replica("open-eu-8", "ie-2", &[]);
        migrating.standing = "migrate: eu-sovereign-operator".into();
        let v = as_of(
            true,
            vec![as_of_replica("open-eu-7", "ie-1", &["iso27001"]), migrating],
        );
        assert_eq!(
            as_of_text(&v),
            "open-eu at 2026-06-12T18:00:00Z: policy version 3 (hash 6f0c1d2e3f4a…) in force; 2 replicas\n\
             \n\
             ALLOCATION   NODE   COUNTRY   OPERATOR   PARENT HQ   TRUST                  PLACED UNDER                        STATUS    STANDING\n\
             open-eu-7    ie-1   IE        acme       US          operator-certificate   policy v2 at 2026-06-11T18:00:00Z   running   compliant\n\
             open-eu-8    ie-2   IE        acme       US          operator-certificate   policy v2 at 2026-06-11T18:00:00Z   running   migrate: eu-sovereign-operator\n\
             \n  \
             open-eu-7 (certified iso27001): eligible because no rule of policy version 2 forbids it on these facts\n  \
             open-eu-8: eligible because no rule of policy version 2 forbids it on these facts\n"
        );
    }

    #[test]
    fn as_of_says_when_the_deployment_did_not_exist_or_ran_nothing() {
        assert_eq!(
            as_of_text(&as_of(false, vec![])),
            "open-eu did not exist at 2026-06-12T18:00:00Z (policy version 3 (hash \
             6f0c1d2e3f4a…) in force then)\n"
        );
        let mut none = as_of(true, vec![]);
        none.policy_version = 0;
        none.bundle_hash.clear();
        assert_eq!(
            as_of_text(&none),
            "open-eu at 2026-06-12T18:00:00Z: no policy in force; 0 replicas\n\
             No replica was placed to run at that instant.\n"
        );
    }

    #[test]
    fn leaves_read_as_ranges_and_are_bounded() {
        assert_eq!(leaves_text(&[(3, 14)]), "3..14");
        assert_eq!(leaves_text(&[(1, 2), (9, 9)]), "1..2, 9");
        let many: Vec<(u64, u64)> = (0..6).map(|i| (i * 10, i * 10 + 1)).collect();
        assert_eq!(
            leaves_text(&many),
            "0..1, 10..11, 20..21, 30..31, and 2 more ranges"
        );
        assert_eq!(events_and_leaves(0, &[]), "0 events");
        assert_eq!(events_and_leaves(1, &[(7, 7)]), "1 event (leaf 7)");
    }

    #[test]
    fn the_export_line_names_what_was_written_where() {
        let mut v = ExportedView {
            file: Some(PathBuf::from("june.jsonl")),
            cluster_id: "c-1".into(),
            events: 12,
            leaves: vec![(3, 14)],
            tree_size: 20,
            root: "6f0c1d2e3f4a5b6c7d8e9f00".into(),
            at_ms: AT,
            previous_size: None,
        };
        assert_eq!(
            exported_line(&v),
            "exported 12 events (leaves 3..14), tree size 20, root 6f0c1d2e3f4a…, to june.jsonl\n"
        );
        v.file = None;
        v.previous_size = Some(9);
        assert_eq!(
            exported_line(&v),
            "exported 12 events (leaves 3..14), tree size 20, extending tree size 9, root \
             6f0c1d2e3f4a…, to stdout\n"
        );
    }

    #[test]
    fn the_verified_line_states_what_the_signature_covers() {
        let mut v = VerifiedView {
            cluster_id: "c-1".into(),
            tree_size: 20,
            root: "ab".repeat(32),
            at_ms: AT,
            events: 12,
            leaves: vec![(3, 14)],
            filter: String::new(),
            extends: None,
        };
        assert_eq!(
            verified_line("0123456789abcdef", &v),
            format!(
                "OK: 12 events (leaves 3..14) of cluster c-1 verify against the checkpoint \
                 signed by key 0123456789abcdef: tree size 20, root {}, at 2026-06-12T18:00:00Z\n",
                "ab".repeat(32)
            )
        );
        v.extends = Some(9);
        assert!(verified_line("k", &v).ends_with("; extends the previous export at tree size 9\n"));
    }

    #[test]
    fn a_checkpoint_shows_every_field_and_whether_it_was_checked() {
        let c = pb::SignedCheckpoint {
            tree_size: 20,
            root: vec![0xab; 32],
            at_ms: AT,
            signature: vec![0x01, 0xff],
            cluster_id: "c-1".into(),
            key_id: "0123456789abcdef".into(),
        };
        let mut v = CheckpointAnswerView {
            checkpoint: CheckpointView::from(&c),
            verified_with_key: None,
        };
        assert_eq!(
            checkpoint_text(&v),
            format!(
                "Cluster:    c-1\n\
                 Tree size:  20\n\
                 Root:       {}\n\
                 Time:       2026-06-12T18:00:00Z\n\
                 Key ID:     0123456789abcdef\n\
                 Signature:  01ff\n\
                 Verified:   not here (pass --key cluster.pub to check the signature)\n",
                "ab".repeat(32)
            )
        );
        v.verified_with_key = Some("0123456789abcdef".into());
        assert!(
            checkpoint_text(&v)
                .ends_with("Verified:   yes, the signature is valid for key 0123456789abcdef\n")
        );
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["root"], "ab".repeat(32));
        assert_eq!(json["verified_with_key"], "0123456789abcdef");
    }
}
