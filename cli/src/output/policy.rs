//! Shapes and text of `sovctl policy ...`: the numbered, immutable policy versions compliance
//! reviewers apply, read and compare.

use std::collections::BTreeMap;

use serde::Serialize;
use sov_proto::v1 as pb;

use super::{Table, dash_if_empty, fields, sorted, time_cell};
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

/// `sov.v1.PolicyVersion`. `files` is empty where the server sends none (`List`).
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
            rules: v
                .rules
                .into_iter()
                .map(|r| PolicyRuleView {
                    id: r.id,
                    effect: r.effect,
                    reason: r.reason,
                    on_change: r.on_change,
                    file: r.file,
                })
                .collect(),
            revision: v.revision,
            changed: v.changed,
        }
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

/// `policy apply`: what the scheduler did with the bundle.
pub fn apply_line(v: &PolicyVersionView) -> String {
    if v.changed {
        format!(
            "policy version {} activated (hash {})\n",
            v.version,
            short_hash(&v.bundle_hash)
        )
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
        })
    }

    #[test]
    fn apply_line_says_activated_or_unchanged() {
        let mut v = version(3);
        assert_eq!(
            apply_line(&v),
            "policy version 3 activated (hash 3f9a1c0b7d2e…)\n"
        );
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
    fn json_mirrors_proto_field_names() {
        let json = serde_json::to_value(version(3)).unwrap();
        assert_eq!(json["bundle_hash"], HASH);
        assert_eq!(json["rules"][0]["on_change"], "migrate");
        assert_eq!(json["files"]["schema.cedarschema"], "entity Node;");
        assert_eq!(json["changed"], true);
    }
}
