//! Shapes and text of `sovctl policy ...`: the numbered, immutable policy versions compliance
//! reviewers plan, apply, read and compare, and what a version does to running replicas.

use std::collections::BTreeMap;

use serde::Serialize;
use sov_proto::v1 as pb;

use super::{Table, dash_if_empty, fields, shell_join, sorted, time_cell};
use crate::diff::FileDiff;

/// Hex digits of a bundle hash shown where the full hash would not fit; enough to tell
/// versions apart and to find one by eye, as git's short commit ids do.
pub const HASH_SHORT_LEN: usize = 12;
/// Characters of a comment shown in `policy list`; `policy show` has it whole.
const COMMENT_CELL_MAX: usize = 60;

/// `sov.v1.PolicyRule`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyRuleView {
    pub id: String,
    pub effect: String,
    pub reason: String,
    pub on_change: String,
    pub file: String,
}

impl From<pb::PolicyRule> for PolicyRuleView {
    fn from(r: pb::PolicyRule) -> Self {
        PolicyRuleView {
            id: r.id,
            effect: r.effect,
            reason: r.reason,
            on_change: r.on_change,
            file: r.file,
        }
    }
}

/// `sov.v1.PolicyVersion`. `files` is empty where the server sends none (`List`); `impact`
/// and `plan_hash` are filled in answers to `Apply` only.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyVersionView {
    pub version: u64,
    pub bundle_hash: String,
    pub activated_at_ms: i64,
    pub author: String,
    pub comment: String,
    pub files: BTreeMap<String, String>,
    pub rules: Vec<PolicyRuleView>,
    pub revision: u64,
    pub changed: bool,
    pub impact: Vec<AllocationImpactView>,
    pub plan_hash: String,
}

impl From<pb::PolicyVersion> for PolicyVersionView {
    fn from(v: pb::PolicyVersion) -> Self {
        PolicyVersionView {
            version: v.version,
            bundle_hash: v.bundle_hash,
            activated_at_ms: v.activated_at_ms,
            author: v.author,
            comment: v.comment,
            files: sorted(v.files),
            rules: v.rules.into_iter().map(PolicyRuleView::from).collect(),
            revision: v.revision,
            changed: v.changed,
            impact: v
                .impact
                .into_iter()
                .map(AllocationImpactView::from)
                .collect(),
            plan_hash: v.plan_hash,
        }
    }
}

/// `sov.v1.AllocationImpact`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AllocationImpactView {
    pub allocation: String,
    pub deployment: String,
    pub node: String,
    pub action: String,
    pub rules: Vec<String>,
    pub drain: bool,
}

impl From<pb::AllocationImpact> for AllocationImpactView {
    fn from(a: pb::AllocationImpact) -> Self {
        AllocationImpactView {
            allocation: a.allocation,
            deployment: a.deployment,
            node: a.node,
            action: a.action,
            rules: a.rules,
            drain: a.drain,
        }
    }
}

/// `sov.v1.DeploymentImpact`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeploymentImpactView {
    pub deployment: String,
    pub state: String,
    pub replicas_wanted: u32,
    pub replicas_kept: u32,
    pub replicas_placeable: u32,
    pub explanation: String,
}

/// `sov.v1.PolicyPlan`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyPlanView {
    pub version: u64,
    pub replaces_version: u64,
    pub bundle_hash: String,
    pub changed: bool,
    pub plan_hash: String,
    pub allocations: Vec<AllocationImpactView>,
    pub deployments: Vec<DeploymentImpactView>,
    pub revision: u64,
    pub rules: Vec<PolicyRuleView>,
}

impl From<pb::PolicyPlan> for PolicyPlanView {
    fn from(p: pb::PolicyPlan) -> Self {
        PolicyPlanView {
            version: p.version,
            replaces_version: p.replaces_version,
            bundle_hash: p.bundle_hash,
            changed: p.changed,
            plan_hash: p.plan_hash,
            allocations: p
                .allocations
                .into_iter()
                .map(AllocationImpactView::from)
                .collect(),
            deployments: p
                .deployments
                .into_iter()
                .map(|d| DeploymentImpactView {
                    deployment: d.deployment,
                    state: d.state,
                    replicas_wanted: d.replicas_wanted,
                    replicas_kept: d.replicas_kept,
                    replicas_placeable: d.replicas_placeable,
                    explanation: d.explanation,
                })
                .collect(),
            revision: p.revision,
            rules: p.rules.into_iter().map(PolicyRuleView::from).collect(),
        }
    }
}

impl PolicyPlanView {
    /// Running replicas the bundle stops, moves or flags: every impact but a lifted one
    /// ("cleared"), which gives a replica back its place and needs no review.
    pub fn disruptions(&self) -> u32 {
        let c = ImpactCounts::of(&self.allocations);
        c.stop_now + c.migrate + c.audit
    }
}

/// `sov.v1.PolicyProgress`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyProgressView {
    pub revision: u64,
    pub policy_version: u64,
    pub migrating: u32,
    pub replacements_placed: u32,
    pub stopping: u32,
    pub stopping_on_down_nodes: u32,
    pub missing: u32,
    pub unplaceable: u32,
    pub starting: u32,
    pub violating: u32,
    pub next_deadline_ms: i64,
    pub converged: bool,
    pub moves_started: u32,
    pub moves_finished: u32,
}

impl From<pb::PolicyProgress> for PolicyProgressView {
    fn from(p: pb::PolicyProgress) -> Self {
        PolicyProgressView {
            revision: p.revision,
            policy_version: p.policy_version,
            migrating: p.migrating,
            replacements_placed: p.replacements_placed,
            stopping: p.stopping,
            stopping_on_down_nodes: p.stopping_on_down_nodes,
            missing: p.missing,
            unplaceable: p.unplaceable,
            starting: p.starting,
            violating: p.violating,
            next_deadline_ms: p.next_deadline_ms,
            converged: p.converged,
            moves_started: p.moves_started,
            moves_finished: p.moves_finished,
        }
    }
}

/// `AllocationImpact.action` values, strictest first: the order of `policy plan`'s table.
const ACTIONS: [&str; 4] = ["stop-now", "migrate", "audit", "cleared"];

/// Impacts counted by action.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImpactCounts {
    pub stop_now: u32,
    pub migrate: u32,
    pub audit: u32,
    pub cleared: u32,
}

impl ImpactCounts {
    pub fn of(impacts: &[AllocationImpactView]) -> Self {
        let mut c = ImpactCounts::default();
        for i in impacts {
            match i.action.as_str() {
                "stop-now" => c.stop_now += 1,
                "migrate" => c.migrate += 1,
                "audit" => c.audit += 1,
                "cleared" => c.cleared += 1,
                // An action this sovctl does not know is shown in the table, not counted.
                _ => {}
            }
        }
        c
    }
}

/// `sov.v1.ListPoliciesResponse`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyListView {
    pub versions: Vec<PolicyVersionView>,
}

/// One side of `policy diff`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyRefView {
    pub version: u64,
    pub bundle_hash: String,
}

/// `policy diff` (no proto message: sovctl compares two `Get` answers). `files` holds only the
/// files that differ, each with its unified diff; `identical` is true when there are none.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyDiffView {
    pub from: PolicyRefView,
    pub to: PolicyRefView,
    pub identical: bool,
    pub files: Vec<FileDiff>,
}

/// `policy apply`: what the scheduler did with the bundle, and with the running replicas in the
/// same committed entry.
pub fn apply_line(v: &PolicyVersionView) -> String {
    if v.changed {
        let c = ImpactCounts::of(&v.impact);
        let mut line = format!(
            "policy version {} in force (hash {}): {} stopped, {} migrating, {} recorded",
            v.version,
            short_hash(&v.bundle_hash),
            count(c.stop_now, "replica", "replicas"),
            c.migrate,
            count(c.audit, "violation", "violations"),
        );
        if c.cleared > 0 {
            line.push_str(&format!(", {} cleared", c.cleared));
        }
        line + "\n"
    } else {
        format!(
            "policy unchanged: version {} already has this hash ({})\n",
            v.version,
            short_hash(&v.bundle_hash)
        )
    }
}

/// `policy list`, oldest first; the version in force (the newest, as every accepted bundle
/// becomes the version in force) carries a `*`.
pub fn versions_table(versions: &[PolicyVersionView]) -> String {
    let mut sorted: Vec<&PolicyVersionView> = versions.iter().collect();
    sorted.sort_by_key(|v| v.version);
    let active = sorted.last().map(|v| v.version);
    let mut table = Table::new(&[
        "VERSION",
        "ACTIVE",
        "HASH",
        "ACTIVATED",
        "AUTHOR",
        "COMMENT",
    ]);
    for v in sorted {
        table.row(vec![
            v.version.to_string(),
            if Some(v.version) == active { "*" } else { "" }.to_owned(),
            dash_if_empty(&short_hash(&v.bundle_hash)),
            time_cell(v.activated_at_ms),
            dash_if_empty(&v.author),
            dash_if_empty(&comment_cell(&v.comment)),
        ]);
    }
    table.render()
}

/// `policy show`: metadata, the rules, and with `with_files` every file in full.
pub fn version_text(v: &PolicyVersionView, with_files: bool) -> String {
    let file_list = if v.files.is_empty() {
        "-".to_owned()
    } else {
        v.files
            .iter()
            .map(|(name, text)| match text.lines().count() {
                1 => format!("{name} (1 line)"),
                n => format!("{name} ({n} lines)"),
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let mut out = fields(&[
        ("Version", v.version.to_string()),
        ("Hash", dash_if_empty(&v.bundle_hash)),
        ("Activated", time_cell(v.activated_at_ms)),
        ("Author", dash_if_empty(&v.author)),
        ("Comment", dash_if_empty(v.comment.trim())),
        ("Revision", v.revision.to_string()),
        ("Files", file_list),
    ]);
    out.push('\n');
    if v.rules.is_empty() {
        out.push_str("No rules.\n");
    } else {
        out.push_str(&rules_table(&v.rules));
    }
    if with_files {
        for (name, text) in &v.files {
            out.push_str(&format!("\n==> {name} <==\n{text}"));
            if !text.is_empty() && !text.ends_with('\n') {
                out.push('\n');
            }
        }
    }
    out
}

/// `policy plan`: what applying the bundle now would do, then the plan hash and the command that
/// applies exactly this plan (`apply_command`, made by the caller, which knows the path typed).
pub fn plan_text(p: &PolicyPlanView, apply_command: &str) -> String {
    let hash_lines = format!("plan hash: {}\n", dash_if_empty(&p.plan_hash));
    if !p.changed {
        return format!(
            "policy plan: bundle {} is identical to version {} in force: applying it changes \
             nothing\n{hash_lines}",
            short_hash(&p.bundle_hash),
            p.version
        );
    }
    let replacing = match p.replaces_version {
        0 => "the first version".to_owned(),
        v => format!("replacing version {v}"),
    };
    let mut out = format!(
        "policy plan: bundle {} would become version {} ({replacing})\n\n",
        short_hash(&p.bundle_hash),
        p.version
    );
    if p.rules.is_empty() {
        out.push_str("No rules.\n");
    } else {
        out.push_str(&rules_table(&p.rules));
    }
    out.push('\n');
    if p.allocations.is_empty() {
        out.push_str("No running replica changes standing.\n");
    } else {
        out.push_str(&impacts_table(&p.allocations));
    }
    if !p.deployments.is_empty() {
        out.push_str("\nDeployments left short of replicas:\n");
        out.push_str(&deployment_impacts(&p.deployments));
    }
    out.push('\n');
    out.push_str(&plan_summary(p));
    out.push_str(&hash_lines);
    out.push_str(&format!(
        "to apply exactly this plan, run: {apply_command}\n"
    ));
    out
}

/// Every allocation impact, strictest action first, then by deployment and allocation.
fn impacts_table(impacts: &[AllocationImpactView]) -> String {
    let rank = |a: &str| {
        ACTIONS
            .iter()
            .position(|x| *x == a)
            .unwrap_or(ACTIONS.len())
    };
    let mut sorted: Vec<&AllocationImpactView> = impacts.iter().collect();
    sorted.sort_by(|a, b| {
        (rank(&a.action), &a.deployment, &a.allocation).cmp(&(
            rank(&b.action),
            &b.deployment,
            &b.allocation,
        ))
    });
    let mut table = Table::new(&["ACTION", "DEPLOYMENT", "ALLOCATION", "NODE", "RULES"]);
    for i in sorted {
        let mut why: Vec<&str> = i.rules.iter().map(String::as_str).collect();
        if i.drain {
            why.push("node draining");
        }
        table.row(vec![
            dash_if_empty(&i.action),
            dash_if_empty(&i.deployment),
            dash_if_empty(&i.allocation),
            dash_if_empty(&i.node),
            dash_if_empty(&why.join(", ")),
        ]);
    }
    table.render()
}

/// The deployments a bundle leaves short, then why, a line each.
fn deployment_impacts(deployments: &[DeploymentImpactView]) -> String {
    let mut sorted: Vec<&DeploymentImpactView> = deployments.iter().collect();
    sorted.sort_by(|a, b| a.deployment.cmp(&b.deployment));
    let mut table = Table::new(&["DEPLOYMENT", "STATE", "WANTED", "KEPT", "PLACEABLE"]);
    for d in &sorted {
        table.row(vec![
            dash_if_empty(&d.deployment),
            dash_if_empty(&d.state),
            d.replicas_wanted.to_string(),
            d.replicas_kept.to_string(),
            d.replicas_placeable.to_string(),
        ]);
    }
    let mut out = table.render();
    for d in sorted.iter().filter(|d| !d.explanation.is_empty()) {
        out.push_str(&format!("  {}: {}\n", d.deployment, d.explanation));
    }
    out
}

/// `4 replicas stop at once, 1 migrates, 0 audited; 1 deployment degraded`.
pub fn plan_summary(p: &PolicyPlanView) -> String {
    let c = ImpactCounts::of(&p.allocations);
    let mut line = format!(
        "{} at once, {} {}, {} audited",
        count(c.stop_now, "replica stops", "replicas stop"),
        c.migrate,
        if c.migrate == 1 {
            "migrates"
        } else {
            "migrate"
        },
        c.audit
    );
    if c.cleared > 0 {
        line.push_str(&format!(", {} cleared", c.cleared));
    }
    let short = |state: &str| p.deployments.iter().filter(|d| d.state == state).count();
    let (unplaceable, degraded) = (short("unplaceable"), short("degraded"));
    let deployments = match (unplaceable, degraded) {
        (0, 0) => "no deployment left short".to_owned(),
        (0, d) => format!("{} degraded", count(d as u32, "deployment", "deployments")),
        (u, 0) => format!(
            "{} unplaceable",
            count(u as u32, "deployment", "deployments")
        ),
        (u, d) => format!(
            "{} unplaceable, {d} degraded",
            count(u as u32, "deployment", "deployments")
        ),
    };
    format!("{line}; {deployments}\n")
}

/// `sovctl policy apply DIR --plan-hash H`, and the `extra` flags, quoted for a shell.
pub fn apply_command(path: &str, plan_hash: &str, extra: &[String]) -> String {
    let mut args: Vec<String> = ["sovctl", "policy", "apply", path, "--plan-hash", plan_hash]
        .map(str::to_owned)
        .to_vec();
    args.extend(extra.iter().cloned());
    shell_join(&args)
}

/// `1 replica`, `4 replicas`.
fn count(n: u32, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The rules of a version, in the order the server lists them.
pub fn rules_table(rules: &[PolicyRuleView]) -> String {
    let mut table = Table::new(&["ID", "EFFECT", "ON CHANGE", "REASON", "FILE"]);
    for r in rules {
        table.row(vec![
            dash_if_empty(&r.id),
            dash_if_empty(&r.effect),
            dash_if_empty(&r.on_change),
            dash_if_empty(&r.reason),
            dash_if_empty(&r.file),
        ]);
    }
    table.render()
}

/// `policy diff`: every differing file's unified diff, or one line saying there are none.
pub fn diff_text(d: &PolicyDiffView) -> String {
    if d.identical {
        return format!(
            "policy versions {} and {} have the same files\n",
            d.from.version, d.to.version
        );
    }
    let mut out = String::new();
    for f in &d.files {
        let note = match f.change {
            crate::diff::FileChange::Added => format!("only in version {}", d.to.version),
            crate::diff::FileChange::Removed => format!("only in version {}", d.from.version),
            crate::diff::FileChange::Changed => "changed".to_owned(),
        };
        // A line `patch` skips as leading garbage, as it does git's `diff --git` lines.
        out.push_str(&format!("# {}: {note}\n", f.name));
        out.push_str(&f.diff);
    }
    out
}

/// The first `HASH_SHORT_LEN` characters of a hash, with `…` when cut.
pub fn short_hash(hash: &str) -> String {
    match hash.char_indices().nth(HASH_SHORT_LEN) {
        Some((cut, _)) => format!("{}…", &hash[..cut]),
        None => hash.to_owned(),
    }
}

/// The first line of a comment, cut to `COMMENT_CELL_MAX` characters.
fn comment_cell(comment: &str) -> String {
    let first = comment.trim().lines().next().unwrap_or("");
    let more_lines = comment.trim().lines().nth(1).is_some();
    match first.char_indices().nth(COMMENT_CELL_MAX) {
        Some((cut, _)) => format!("{}…", &first[..cut]),
        None if more_lines => format!("{first} …"),
        None => first.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff;
    use std::collections::HashMap;

    const HASH: &str = "3f9a1c0b7d2e4f60a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718";

    fn version(n: u64) -> PolicyVersionView {
        PolicyVersionView::from(pb::PolicyVersion {
            version: n,
            bundle_hash: HASH.into(),
            activated_at_ms: 1_700_000_000_000,
            author: "alice".into(),
            comment: "EU residency for every model".into(),
            files: HashMap::from([
                (
                    "eu.cedar".into(),
                    "@id(\"eu-residency\")\nforbid(principal, action, resource);\n".into(),
                ),
                ("schema.cedarschema".into(), "entity Node;".into()),
            ]),
            rules: vec![
                pb::PolicyRule {
                    id: "eu-residency".into(),
                    effect: "forbid".into(),
                    reason: "Data must stay in the EU".into(),
                    on_change: "migrate".into(),
                    file: "eu.cedar".into(),
                },
                pb::PolicyRule {
                    id: "allow-all".into(),
                    effect: "permit".into(),
                    reason: String::new(),
                    on_change: String::new(),
                    file: "eu.cedar".into(),
                },
            ],
            revision: 40,
            changed: true,
            impact: vec![],
            plan_hash: PLAN_HASH.into(),
        })
    }

    const PLAN_HASH: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";

    fn impact(
        action: &str,
        deployment: &str,
        allocation: &str,
        rules: &[&str],
    ) -> pb::AllocationImpact {
        pb::AllocationImpact {
            allocation: allocation.into(),
            deployment: deployment.into(),
            node: format!("sim-{allocation}"),
            action: action.into(),
            rules: rules.iter().map(|r| (*r).to_owned()).collect(),
            drain: false,
        }
    }

    /// Version 5 replacing 4: stops two replicas of frontier, moves one of open-eu, flags one,
    /// lifts one, and leaves frontier degraded.
    fn plan() -> PolicyPlanView {
        PolicyPlanView::from(pb::PolicyPlan {
            version: 5,
            replaces_version: 4,
            bundle_hash: HASH.into(),
            changed: true,
            plan_hash: PLAN_HASH.into(),
            allocations: vec![
                impact("audit", "chat", "chat-0", &["gdpr-audit"]),
                impact("migrate", "open-eu", "open-eu-1", &["eu-only"]),
                impact("cleared", "chat", "chat-1", &[]),
                impact("stop-now", "frontier", "frontier-1", &["export-4e091"]),
                impact(
                    "stop-now",
                    "frontier",
                    "frontier-0",
                    &["export-4e091", "embargo"],
                ),
            ],
            deployments: vec![pb::DeploymentImpact {
                deployment: "frontier".into(),
                state: "degraded".into(),
                replicas_wanted: 3,
                replicas_kept: 1,
                replicas_placeable: 0,
                explanation: "1/4 nodes eligible: 3 forbidden by policy export-4e091".into(),
            }],
            revision: 88,
            rules: vec![pb::PolicyRule {
                id: "export-4e091".into(),
                effect: "forbid".into(),
                reason: "4E091 models stay in tier-1 countries".into(),
                on_change: "stop-now".into(),
                file: "export.cedar".into(),
            }],
        })
    }

    #[test]
    fn apply_line_says_what_the_version_did_or_that_it_is_unchanged() {
        let mut v = version(3);
        assert_eq!(
            apply_line(&v),
            "policy version 3 in force (hash 3f9a1c0b7d2e…): 0 replicas stopped, 0 migrating, 0 \
             violations recorded\n"
        );
        v.impact = plan().allocations;
        assert_eq!(
            apply_line(&v),
            "policy version 3 in force (hash 3f9a1c0b7d2e…): 2 replicas stopped, 1 migrating, 1 \
             violation recorded, 1 cleared\n"
        );
        v.impact.truncate(1);
        v.impact[0].action = "stop-now".into();
        assert!(apply_line(&v).contains(": 1 replica stopped, 0 migrating, 0 violations"));
        v.changed = false;
        assert_eq!(
            apply_line(&v),
            "policy unchanged: version 3 already has this hash (3f9a1c0b7d2e…)\n"
        );
    }

    #[test]
    fn list_marks_the_newest_version_as_active() {
        let mut old = version(1);
        old.comment = "first\nwith a second line".into();
        old.author = String::new();
        let text = versions_table(&[version(2), old]);
        assert_eq!(
            text,
            concat!(
                "VERSION   ACTIVE   HASH            ACTIVATED              AUTHOR   COMMENT\n",
                "1                  3f9a1c0b7d2e…   2023-11-14T22:13:20Z   -        first …\n",
                "2         *        3f9a1c0b7d2e…   2023-11-14T22:13:20Z   alice    EU residency for every model\n",
            )
        );
    }

    #[test]
    fn long_comments_are_cut_in_the_list() {
        let cell = comment_cell(&"x".repeat(100));
        assert_eq!(cell.chars().count(), COMMENT_CELL_MAX + 1);
        assert!(cell.ends_with('…'));
    }

    #[test]
    fn show_has_metadata_and_rules_and_files_only_when_asked() {
        let v = version(3);
        let text = version_text(&v, false);
        for expected in [
            "Version:    3\n",
            &format!("Hash:       {HASH}\n"),
            "Author:     alice\n",
            "Files:      eu.cedar (2 lines)\n            schema.cedarschema (1 line)\n",
            "ID             EFFECT   ON CHANGE   REASON                     FILE\n",
            "eu-residency   forbid   migrate     Data must stay in the EU   eu.cedar\n",
            "allow-all      permit   -           -                          eu.cedar\n",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
        assert!(!text.contains("==>"), "{text}");
        let with_files = version_text(&v, true);
        assert!(
            with_files.ends_with(
                "\n==> eu.cedar <==\n@id(\"eu-residency\")\nforbid(principal, action, resource);\n\
                 \n==> schema.cedarschema <==\nentity Node;\n"
            ),
            "{with_files}"
        );
    }

    #[test]
    fn diff_text_notes_each_file_then_its_diff() {
        let a = BTreeMap::from([("a.cedar".to_owned(), "x\n".to_owned())]);
        let b = BTreeMap::from([
            ("a.cedar".to_owned(), "y\n".to_owned()),
            ("b.cedar".to_owned(), "z\n".to_owned()),
        ]);
        let view = PolicyDiffView {
            from: PolicyRefView {
                version: 1,
                bundle_hash: "h1".into(),
            },
            to: PolicyRefView {
                version: 2,
                bundle_hash: "h2".into(),
            },
            identical: false,
            files: diff::bundles(&a, &b, "v1", "v2"),
        };
        assert_eq!(
            diff_text(&view),
            "# a.cedar: changed\n--- v1/a.cedar\n+++ v2/a.cedar\n@@ -1 +1 @@\n-x\n+y\n\
             # b.cedar: only in version 2\n--- /dev/null\n+++ v2/b.cedar\n@@ -0,0 +1 @@\n+z\n"
        );
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(json["files"][1]["change"], "added");
        assert_eq!(json["from"]["version"], 1);

        let same = PolicyDiffView {
            identical: true,
            files: vec![],
            ..view
        };
        assert_eq!(
            diff_text(&same),
            "policy versions 1 and 2 have the same files\n"
        );
    }

    #[test]
    fn plan_text_lists_impacts_strictest_first_then_the_hash_and_the_command() {
        let command = apply_command("deploy/policies", PLAN_HASH, &[]);
        assert_eq!(
            plan_text(&plan(), &command),
            format!(
                "policy plan: bundle 3f9a1c0b7d2e… would become version 5 (replacing version 4)\n\
                 \n\
                 ID             EFFECT   ON CHANGE   REASON                                  FILE\n\
                 export-4e091   forbid   stop-now    4E091 models stay in tier-1 countries   export.cedar\n\
                 \n\
                 ACTION     DEPLOYMENT   ALLOCATION   NODE             RULES\n\
                 stop-now   frontier     frontier-0   sim-frontier-0   export-4e091, embargo\n\
                 stop-now   frontier     frontier-1   sim-frontier-1   export-4e091\n\
                 migrate    open-eu      open-eu-1    sim-open-eu-1    eu-only\n\
                 audit      chat         chat-0       sim-chat-0       gdpr-audit\n\
                 cleared    chat         chat-1       sim-chat-1       -\n\
                 \n\
                 Deployments left short of replicas:\n\
                 DEPLOYMENT   STATE      WANTED   KEPT   PLACEABLE\n\
                 frontier     degraded   3        1      0\n  \
                 frontier: 1/4 nodes eligible: 3 forbidden by policy export-4e091\n\
                 \n\
                 2 replicas stop at once, 1 migrates, 1 audited, 1 cleared; 1 deployment degraded\n\
                 plan hash: {PLAN_HASH}\n\
                 to apply exactly this plan, run: sovctl policy apply deploy/policies --plan-hash \
                 {PLAN_HASH}\n"
            )
        );
    }

    #[test]
    fn a_plan_without_impacts_says_so() {
        let mut p = plan();
        p.allocations.clear();
        p.deployments.clear();
        p.replaces_version = 0;
        let text = plan_text(&p, "sovctl policy apply x --plan-hash h");
        assert!(
            text.starts_with(
                "policy plan: bundle 3f9a1c0b7d2e… would become version 5 (the first version)\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "\nNo running replica changes standing.\n\n0 replicas stop at once, 0 migrate, 0 \
                 audited; no deployment left short\n"
            ),
            "{text}"
        );
        assert_eq!(p.disruptions(), 0);
        p.changed = false;
        p.version = 4;
        assert_eq!(
            plan_text(&p, "unused"),
            format!(
                "policy plan: bundle 3f9a1c0b7d2e… is identical to version 4 in force: applying \
                 it changes nothing\nplan hash: {PLAN_HASH}\n"
            )
        );
    }

    #[test]
    fn disruptions_count_every_impact_but_a_lifted_one() {
        let mut p = plan();
        assert_eq!(p.disruptions(), 4);
        p.allocations.retain(|a| a.action == "cleared");
        assert_eq!(p.disruptions(), 0);
    }

    #[test]
    fn plan_summary_counts_short_deployments_by_state() {
        let mut p = plan();
        let short = |name: &str, state: &str| DeploymentImpactView {
            deployment: name.into(),
            state: state.into(),
            ..p.deployments[0].clone()
        };
        p.deployments = vec![
            short("a", "unplaceable"),
            short("b", "unplaceable"),
            short("c", "degraded"),
        ];
        p.allocations.truncate(2);
        assert_eq!(
            plan_summary(&p),
            "0 replicas stop at once, 1 migrates, 1 audited; 2 deployments unplaceable, 1 degraded\n"
        );
        p.deployments.truncate(1);
        assert!(plan_summary(&p).ends_with("; 1 deployment unplaceable\n"));
    }

    #[test]
    fn the_apply_command_is_quoted_for_a_shell() {
        assert_eq!(
            apply_command(
                "my policies",
                "ab",
                &["--comment".into(), "allow CH".into()]
            ),
            "sovctl policy apply 'my policies' --plan-hash ab --comment 'allow CH'"
        );
    }

    #[test]
    fn plan_json_mirrors_proto_field_names() {
        let json = serde_json::to_value(plan()).unwrap();
        assert_eq!(json["plan_hash"], PLAN_HASH);
        assert_eq!(json["allocations"][0]["action"], "audit");
        assert_eq!(json["allocations"][0]["drain"], false);
        assert_eq!(json["deployments"][0]["replicas_kept"], 1);
        assert_eq!(json["rules"][0]["on_change"], "stop-now");
        assert_eq!(json["replaces_version"], 4);
    }

    #[test]
    fn json_mirrors_proto_field_names() {
        let json = serde_json::to_value(version(3)).unwrap();
        assert_eq!(json["bundle_hash"], HASH);
        assert_eq!(json["rules"][0]["on_change"], "migrate");
        assert_eq!(json["files"]["schema.cedarschema"], "entity Node;");
        assert_eq!(json["changed"], true);
        assert_eq!(json["impact"], serde_json::json!([]));
        assert_eq!(json["plan_hash"], PLAN_HASH);
    }
}
