//! Policy pages of the reviewer pages: `/policies` lists every policy version (who applied it,
//! when, why, its hash and how many rules it has), `/policies/{v}` shows one version: its
//! rules, its diff against the version before it ([`super::diff`]), and its files.
//!
//! Read-only: versions are copied out of the state (a bundle at a time) and compiled or parsed
//! off the async workers; nothing is written or cached. Bounded: the list shows the newest
//! [`POLICY_ROWS_MAX`] versions, a diff at most [`DIFF_LINES_MAX`] lines.

use std::collections::BTreeMap;
use std::str::FromStr;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};

use super::pages::{Frame, Nav, failed, not_found_page, page, respond, utc};
use super::{Web, diff};
use crate::api::policies::on_change_name;
use crate::policy::Effect;
use crate::state::policies::PolicyVersion;

/// Versions listed, newest first.
const POLICY_ROWS_MAX: usize = 200;
/// Lines of a version's diff shown.
const DIFF_LINES_MAX: usize = 5_000;

/// The rules of a stored version: its `.cedar` files' policies. Every stored version compiled
/// when it was accepted, so parsing alone counts them (far cheaper than compiling, which also
/// validates the schema and the entity data). `None` when a file no longer parses (a changed
/// Cedar release).
pub fn rules_count(files: &BTreeMap<String, String>) -> Option<usize> {
    files
        .iter()
        .filter(|(name, _)| name.ends_with(".cedar"))
        .map(|(_, text)| {
            cedar_policy::PolicySet::from_str(text)
                .ok()
                .map(|set| set.policies().count())
        })
        .sum()
}

/// A version's hash, shortened for tables (the full one is on its page).
fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

pub fn render_list(
    frame: &Frame,
    versions: &[(PolicyVersion, Option<usize>)],
    total: usize,
) -> Markup {
    let body = html! {
        p { "Every accepted bundle is a new, immutable, numbered version; the newest is in force. "
            "Each page shows a version's rules, files and what changed since the one before." }
        @if versions.len() < total {
            p.note { "Showing the newest " (versions.len()) " of " (total)
                " versions; any older one is at /policies/N, and `sovctl policy list` lists them all." }
        }
        @if versions.is_empty() {
            p { "No policy bundle has been applied yet, so nothing can be placed. Apply one with "
                code { "sovctl policy apply deploy/policies" } "." }
        } @else {
            table {
                tr { th { "version" } th { "activated" } th { "author" } th { "comment" } th { "hash" } th { "rules" } }
                @for (v, rules) in versions {
                    tr {
                        td {
                            a href=(format!("/policies/{}", v.version)) { "v" (v.version) }
                            @if v.version == total as u64 { " (in force)" }
                        }
                        td { (utc(v.activated_at_ms)) }
                        td { (v.author) }
                        td { (v.comment) }
                        td { code title=(v.hash) { (short(&v.hash)) } }
                        td { @match rules { Some(n) => (n), None => "?" } }
                    }
                }
            }
        }
    };
    page(frame, Nav::Policies, "Policy versions", body)
}

pub async fn list(State(web): State<Web>) -> Response {
    // Only what the table shows is copied under the lock: the files stay in the state.
    let (frame, versions, total) = {
        let applied = web.replica.sm.read();
        let all = &applied.state.policies;
        let newest: Vec<PolicyVersion> = all
            .iter()
            .rev()
            .take(POLICY_ROWS_MAX)
            .map(|v| PolicyVersion {
                files: BTreeMap::new(),
                hash: v.hash.clone(),
                author: v.author.clone(),
                comment: v.comment.clone(),
                ..*v
            })
            .collect();
        (Frame::of(web.replica.id, &applied.state), newest, all.len())
    };
    let replica = web.replica.clone();
    let counted = tokio::task::spawn_blocking(move || {
        versions
            .into_iter()
            .map(|v| {
                // One version's policy files at a time (up to a bundle's size limit each),
                // copied under a short read lock, so applies never wait for the parsing.
                let files: BTreeMap<String, String> = {
                    let applied = replica.sm.read();
                    let stored = v
                        .version
                        .checked_sub(1)
                        .and_then(|i| applied.state.policies.get(i as usize));
                    stored.map_or_else(BTreeMap::new, |p| {
                        p.files
                            .iter()
                            .filter(|(name, _)| name.ends_with(".cedar"))
                            .map(|(k, t)| (k.clone(), t.clone()))
                            .collect()
                    })
                };
                let rules = rules_count(&files);
                (v, rules)
            })
            .collect::<Vec<_>>()
    })
    .await;
    match counted {
        Ok(versions) => respond(StatusCode::OK, render_list(&frame, &versions, total)),
        Err(e) => failed(&frame, "counting the rules of the policy versions", e),
    }
}

/// One rule as the version page lists it.
pub struct RuleRow {
    pub id: String,
    pub effect: &'static str,
    /// Empty for a permit.
    pub on_change: &'static str,
    pub reason: String,
    pub file: String,
}

/// What the version page shows.
pub struct VersionView {
    pub version: PolicyVersion,
    /// The version before it, if any.
    pub previous: Option<u64>,
    pub diff: diff::Diff,
    /// `Err` with the reason when the version no longer compiles.
    pub rules: Result<Vec<RuleRow>, String>,
    pub in_force: bool,
}

pub fn render_version(frame: &Frame, v: &VersionView) -> Markup {
    let p = &v.version;
    let body = html! {
        table {
            tr { th { "version" } td { "v" (p.version) @if v.in_force { " (in force)" } } }
            tr { th { "activated" } td { (utc(p.activated_at_ms)) " (Raft index " (p.revision) ")" } }
            tr { th { "author" } td { (p.author) } }
            tr { th { "comment" } td { (p.comment) } }
            tr { th { "bundle hash (SHA-256)" } td { code { (p.hash) } } }
        }
        h2 { "Rules" }
        @match &v.rules {
            Ok(rules) => table {
                tr { th { "id" } th { "effect" } th { "on change" } th { "reason" } th { "file" } }
                @for r in rules {
                    tr { td { code { (r.id) } } td { (r.effect) } td { code { (r.on_change) } }
                         td { (r.reason) } td { (r.file) } }
                }
            },
            Err(why) => p.note { "This version does not compile any more: " (why) },
        }
        @match v.previous {
            Some(prev) => {
                h2 { "Changes since " a href=(format!("/policies/{prev}")) { "v" (prev) } }
                @if v.diff.lines.is_empty() {
                    p { "No file changed." }
                } @else {
                    p { (v.diff.added) " lines added, " (v.diff.removed) " removed." }
                    pre.diff {
                        @for line in &v.diff.lines {
                            @match line {
                                diff::Line::File(t) => span.file { (t) } ,
                                diff::Line::Hunk(t) => span.hunk { (t) },
                                diff::Line::Context(t) => span { " " (t) },
                                diff::Line::Added(t) => span.add { "+" (t) },
                                diff::Line::Removed(t) => span.del { "-" (t) },
                            }
                            "\n"
                        }
                    }
                    @if v.diff.lines_left_out > 0 {
                        p.note { (v.diff.lines_left_out) " more lines of the diff are not shown; "
                            code { "sovctl policy diff " (prev) " " (p.version) } " prints it whole." }
                    }
                }
            }
            None => p { "The first version: nothing to compare it with." },
        }
        h2 { "Files" }
        @for (name, text) in &p.files {
            details {
                summary { code { (name) } " (" (text.lines().count()) " lines)" }
                pre.file { (text) }
            }
        }
    };
    page(
        frame,
        Nav::Policies,
        &format!("Policy v{}", p.version),
        body,
    )
}

pub async fn version(State(web): State<Web>, Path(wanted): Path<String>) -> Response {
    let (frame, found, total) = {
        let applied = web.replica.sm.read();
        let all = &applied.state.policies;
        let found = wanted
            .trim_start_matches('v')
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_sub(1))
            .and_then(|i| all.get(i as usize))
            .map(|v| {
                let previous = v
                    .version
                    .checked_sub(2)
                    .and_then(|i| all.get(i as usize))
                    .cloned();
                (v.clone(), previous)
            });
        (
            Frame::of(web.replica.id, &applied.state),
            found,
            all.len() as u64,
        )
    };
    let Some((version, previous)) = found else {
        let hint = if total == 0 {
            html! { "No policy bundle has been applied yet." }
        } else {
            html! { "Versions are v1 to v" (total) "; " a href="/policies" { "the list" } " has them all." }
        };
        return not_found_page(
            &frame,
            &format!("There is no policy version {wanted:?}."),
            hint,
        );
    };
    let rendered = tokio::task::spawn_blocking(move || {
        let rules = crate::policy::compile(&version.files)
            .map(|c| {
                c.rules()
                    .iter()
                    .map(|r| RuleRow {
                        id: r.id.clone(),
                        // As `sovctl policy show` says it: a permit's `on_change` is internal.
                        effect: match r.effect {
                            Effect::Permit => "permit",
                            Effect::Forbid => "forbid",
                        },
                        on_change: match r.effect {
                            Effect::Permit => "",
                            Effect::Forbid => on_change_name(r.on_change),
                        },
                        reason: r.reason.clone(),
                        file: r.file.clone(),
                    })
                    .collect()
            })
            .map_err(|e| e.to_string());
        let diff = previous.as_ref().map_or_else(diff::Diff::default, |prev| {
            diff::bundles(
                prev.version,
                &prev.files,
                version.version,
                &version.files,
                DIFF_LINES_MAX,
            )
        });
        let view = VersionView {
            in_force: version.version == total,
            previous: previous.map(|p| p.version),
            diff,
            rules,
            version,
        };
        render_version(&frame, &view)
    })
    .await;
    match rendered {
        Ok(markup) => respond(StatusCode::OK, markup),
        Err(e) => failed(&Frame::read(&web), "rendering the policy version", e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(n: u64, files: &[(&str, &str)]) -> PolicyVersion {
        PolicyVersion {
            version: n,
            files: files
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            hash: "0123456789abcdef0123".into(),
            author: "reviewer-7".into(),
            comment: "<b>tighten</b>".into(),
            activated_at_ms: 1_000,
            revision: 5,
        }
    }

    #[test]
    fn rules_are_counted_in_cedar_files_only() {
        let v = version(
            1,
            &[
                (
                    "base.cedar",
                    "@id(\"a\") permit (principal, action, resource);\n\
                     @id(\"b\") forbid (principal, action, resource) when { false };",
                ),
                ("entities.json", "[]"),
            ],
        );
        assert_eq!(rules_count(&v.files), Some(2));
        assert_eq!(
            rules_count(&version(1, &[("x.cedar", "not cedar")]).files),
            None
        );
    }

    #[test]
    fn the_version_page_colours_the_diff_and_escapes_the_files() {
        let old = version(1, &[("a.cedar", "permit;\n")]);
        let new = version(2, &[("a.cedar", "permit;\nforbid <x>;\n")]);
        let view = VersionView {
            diff: diff::bundles(1, &old.files, 2, &new.files, 100),
            version: new,
            previous: Some(1),
            rules: Err("test".into()),
            in_force: true,
        };
        let html = render_version(&Frame::for_tests(), &view).into_string();
        assert!(
            html.contains("<span class=\"add\">+forbid &lt;x&gt;;</span>"),
            "{html}"
        );
        assert!(html.contains("<span class=\"file\">--- v1/a.cedar</span>"));
        assert!(html.contains("&lt;b&gt;tighten&lt;/b&gt;"));
        assert!(html.contains("href=\"/policies/1\""));
        assert!(!html.contains("<script"));
    }

    #[test]
    fn the_list_marks_the_version_in_force() {
        let versions = vec![(version(2, &[]), Some(3)), (version(1, &[]), None)];
        let html = render_list(&Frame::for_tests(), &versions, 2).into_string();
        assert!(html.contains("v2</a> (in force)"), "{html}");
        assert!(html.contains("<code title=\"0123456789abcdef0123\">0123456789ab</code>"));
    }
}
