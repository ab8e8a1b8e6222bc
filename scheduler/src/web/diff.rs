//! The difference between two policy versions as a unified diff, file by file, for the policy
//! version page. Pure: text in, lines out; the page colours them.
//!
//! Bounded twice: the diff algorithm gives up refining after [`DIFF_TIMEOUT`] (the result is
//! still a correct diff, only coarser), and at most `lines_max` lines come out, with a flag
//! saying the rest was cut. Bundles are already bounded in size when they are accepted.

use std::collections::BTreeMap;
use std::time::Duration;

use similar::{ChangeTag, TextDiff};

/// Longest the line diff of one file may refine its answer: two bundles of the largest size
/// accepted must not hold a blocking thread for long.
const DIFF_TIMEOUT: Duration = Duration::from_millis(200);
/// Unchanged lines shown around each change, as `diff -u` does.
const CONTEXT_LINES: usize = 3;

/// One line of a unified diff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// `--- old` or `+++ new`: which file the hunks below are of.
    File(String),
    /// `@@ -a,b +c,d @@`.
    Hunk(String),
    Context(String),
    Added(String),
    Removed(String),
}

/// A diff of two bundles.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    pub lines: Vec<Line>,
    pub added: usize,
    pub removed: usize,
    /// Lines not in `lines` because there were more than asked for.
    pub lines_left_out: usize,
}

/// The unified diff from bundle `old` (version `old_version`) to `new`, file by file in name
/// order; a file only one side has is diffed against nothing.
pub fn bundles(
    old_version: u64,
    old: &BTreeMap<String, String>,
    new_version: u64,
    new: &BTreeMap<String, String>,
    lines_max: usize,
) -> Diff {
    let mut diff = Diff::default();
    let mut names: Vec<&String> = old.keys().chain(new.keys()).collect();
    names.sort_unstable();
    names.dedup();
    for name in names {
        let before = old.get(name).map_or("", String::as_str);
        let after = new.get(name).map_or("", String::as_str);
        if before == after {
            continue;
        }
        let side = |version: u64, present: bool| {
            if present {
                format!("v{version}/{name}")
            } else {
                "/dev/null".to_string()
            }
        };
        let mut out = vec![
            Line::File(format!("--- {}", side(old_version, old.contains_key(name)))),
            Line::File(format!("+++ {}", side(new_version, new.contains_key(name)))),
        ];
        let text = TextDiff::configure()
            .timeout(DIFF_TIMEOUT)
            .diff_lines(before, after);
        for hunk in text
            .unified_diff()
            .context_radius(CONTEXT_LINES)
            .iter_hunks()
        {
            out.push(Line::Hunk(hunk.header().to_string()));
            for change in hunk.iter_changes() {
                let value = change.value().trim_end_matches(['\n', '\r']).to_string();
                out.push(match change.tag() {
                    ChangeTag::Equal => Line::Context(value),
                    ChangeTag::Insert => {
                        diff.added += 1;
                        Line::Added(value)
                    }
                    ChangeTag::Delete => {
                        diff.removed += 1;
                        Line::Removed(value)
                    }
                });
            }
        }
        for line in out {
            if diff.lines.len() < lines_max {
                diff.lines.push(line);
            } else {
                diff.lines_left_out += 1;
            }
        }
    }
    diff
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_changed_line_is_removed_then_added_with_context() {
        let old = files(&[("a.cedar", "one\ntwo\nthree\n"), ("same.json", "{}")]);
        let new = files(&[("a.cedar", "one\nTWO\nthree\n"), ("same.json", "{}")]);
        let d = bundles(1, &old, 2, &new, 100);
        assert_eq!(
            d.lines,
            vec![
                Line::File("--- v1/a.cedar".into()),
                Line::File("+++ v2/a.cedar".into()),
                Line::Hunk("@@ -1,3 +1,3 @@".into()),
                Line::Context("one".into()),
                Line::Removed("two".into()),
                Line::Added("TWO".into()),
                Line::Context("three".into()),
            ]
        );
        assert_eq!((d.added, d.removed, d.lines_left_out), (1, 1, 0));
    }

    #[test]
    fn a_new_file_is_diffed_against_nothing() {
        let old = files(&[]);
        let new = files(&[("rule.cedar", "forbid (principal, action, resource);\n")]);
        let d = bundles(2, &old, 3, &new, 100);
        assert_eq!(d.lines[0], Line::File("--- /dev/null".into()));
        assert_eq!(d.lines[1], Line::File("+++ v3/rule.cedar".into()));
        assert_eq!(
            d.lines[3],
            Line::Added("forbid (principal, action, resource);".into())
        );
        assert_eq!(d.added, 1);
    }

    #[test]
    fn identical_bundles_have_no_lines_and_long_diffs_are_cut() {
        let a = files(&[("a.cedar", "x\n")]);
        assert_eq!(bundles(1, &a, 2, &a, 100), Diff::default());
        let long: String = (0..50).map(|i| format!("line {i}\n")).collect();
        let d = bundles(1, &files(&[]), 2, &files(&[("a.cedar", &long)]), 10);
        assert_eq!(d.lines.len(), 10);
        assert_eq!(d.lines_left_out, 53 - 10);
        assert_eq!(d.added, 50);
    }
}
