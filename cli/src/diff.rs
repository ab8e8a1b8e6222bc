//! Line-based unified diffs, for `sovctl policy diff`: the text a reviewer reads to see what a
//! new policy version changed, in the format of `diff -u` (so `patch -p1` and diff viewers take
//! it).
//!
//! Owns the comparison and nothing else: no I/O, no colours. The edit script is a longest common
//! subsequence of lines, computed after trimming the common head and tail, which is all a policy
//! bundle needs (files of hundreds of lines, changes of a few). The table is bounded by
//! `LCS_CELLS_MAX`; past it the changed middle is shown as one removed and one added block,
//! which is still a correct diff, only not the shortest one.

use std::collections::{BTreeMap, BTreeSet};

/// Unchanged lines shown around each change, as `diff -u` and git show them.
const CONTEXT_LINES: usize = 3;
/// Largest LCS table computed, in cells of 4 bytes: 16 MiB of memory. Two files of 2,000
/// changed lines each fit; policy files are far smaller.
const LCS_CELLS_MAX: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Same,
    Removed,
    Added,
}

/// How a file differs between two bundles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileChange {
    Added,
    Removed,
    Changed,
}

/// One file that differs, with its unified diff (headers included).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FileDiff {
    pub name: String,
    pub change: FileChange,
    pub diff: String,
}

/// Every file that differs between two bundles (file name -> contents), in name order. Files
/// are labelled `OLD/name` and `NEW/name`; a file missing on one side is `/dev/null` there.
/// Empty when the bundles hold the same files with the same contents.
pub fn bundles(
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
    old_label: &str,
    new_label: &str,
) -> Vec<FileDiff> {
    let names: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    let mut diffs = Vec::new();
    for name in names {
        let (change, before, after) = match (old.get(name), new.get(name)) {
            (Some(a), Some(b)) if a == b => continue,
            (Some(a), Some(b)) => (FileChange::Changed, a.as_str(), b.as_str()),
            (Some(a), None) => (FileChange::Removed, a.as_str(), ""),
            (None, Some(b)) => (FileChange::Added, "", b.as_str()),
            (None, None) => unreachable!("{name} comes from one of the two bundles"),
        };
        let from = match change {
            FileChange::Added => "/dev/null".to_owned(),
            _ => format!("{old_label}/{name}"),
        };
        let to = match change {
            FileChange::Removed => "/dev/null".to_owned(),
            _ => format!("{new_label}/{name}"),
        };
        // An empty file added or removed has no lines, so no hunk; the headers still say so.
        let diff =
            unified(before, after, &from, &to).unwrap_or_else(|| format!("--- {from}\n+++ {to}\n"));
        diffs.push(FileDiff {
            name: name.clone(),
            change,
            diff,
        });
    }
    diffs
}

/// The unified diff of two texts with `---`/`+++` headers naming them, or `None` when they are
/// equal. A last line without a line break is followed by `\ No newline at end of file`.
pub fn unified(old: &str, new: &str, old_name: &str, new_name: &str) -> Option<String> {
    if old == new {
        return None;
    }
    let a: Vec<&str> = old.split_inclusive('\n').collect();
    let b: Vec<&str> = new.split_inclusive('\n').collect();
    let script = edit_script(&a, &b);
    let mut out = format!("--- {old_name}\n+++ {new_name}\n");
    for (start, end) in hunks(&script) {
        write_hunk(&mut out, &script[start..end]);
    }
    Some(out)
}

/// One line of the edit script, with the numbers of old and new lines that precede it.
#[derive(Debug, Clone, Copy)]
struct Edit<'a> {
    op: Op,
    line: &'a str,
    old_before: usize,
    new_before: usize,
}

/// A shortest edit script turning `a` into `b` (within `LCS_CELLS_MAX`), removals before
/// additions within each change.
fn edit_script<'a>(a: &[&'a str], b: &[&'a str]) -> Vec<Edit<'a>> {
    let head = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let tail = a[head..]
        .iter()
        .rev()
        .zip(b[head..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (mid_a, mid_b) = (&a[head..a.len() - tail], &b[head..b.len() - tail]);

    let mut ops: Vec<(Op, &'a str)> = Vec::with_capacity(a.len() + b.len());
    ops.extend(a[..head].iter().map(|l| (Op::Same, *l)));
    match (mid_a.len() + 1).checked_mul(mid_b.len() + 1) {
        Some(cells) if cells <= LCS_CELLS_MAX => lcs_ops(mid_a, mid_b, &mut ops),
        _ => {
            ops.extend(mid_a.iter().map(|l| (Op::Removed, *l)));
            ops.extend(mid_b.iter().map(|l| (Op::Added, *l)));
        }
    }
    ops.extend(a[a.len() - tail..].iter().map(|l| (Op::Same, *l)));

    let (mut old_before, mut new_before) = (0, 0);
    let script: Vec<Edit<'a>> = ops
        .into_iter()
        .map(|(op, line)| {
            let edit = Edit {
                op,
                line,
                old_before,
                new_before,
            };
            old_before += usize::from(op != Op::Added);
            new_before += usize::from(op != Op::Removed);
            edit
        })
        .collect();
    assert_eq!(
        (old_before, new_before),
        (a.len(), b.len()),
        "the edit script must consume both texts"
    );
    script
}

/// Appends the LCS-based edits of `a` into `b` to `ops`.
fn lcs_ops<'a>(a: &[&'a str], b: &[&'a str], ops: &mut Vec<(Op, &'a str)>) {
    let width = b.len() + 1;
    // suffix[i * width + j]: length of the longest common subsequence of a[i..] and b[j..].
    let mut suffix = vec![0u32; (a.len() + 1) * width];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            suffix[i * width + j] = if a[i] == b[j] {
                suffix[(i + 1) * width + j + 1] + 1
            } else {
                suffix[(i + 1) * width + j].max(suffix[i * width + j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i] == b[j] {
            ops.push((Op::Same, a[i]));
            i += 1;
            j += 1;
        } else if suffix[(i + 1) * width + j] >= suffix[i * width + j + 1] {
            ops.push((Op::Removed, a[i]));
            i += 1;
        } else {
            ops.push((Op::Added, b[j]));
            j += 1;
        }
    }
    ops.extend(a[i..].iter().map(|l| (Op::Removed, *l)));
    ops.extend(b[j..].iter().map(|l| (Op::Added, *l)));
}

/// Ranges `[start, end)` of the script shown as hunks: each change with `CONTEXT_LINES` of
/// context, changes closer than twice that merged into one hunk.
fn hunks(script: &[Edit<'_>]) -> Vec<(usize, usize)> {
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    for (i, edit) in script.iter().enumerate() {
        if edit.op == Op::Same {
            continue;
        }
        let start = i.saturating_sub(CONTEXT_LINES);
        let end = (i + 1 + CONTEXT_LINES).min(script.len());
        match ranges.last_mut() {
            Some(last) if start <= last.1 => last.1 = end,
            _ => ranges.push((start, end)),
        }
    }
    ranges
}

fn write_hunk(out: &mut String, hunk: &[Edit<'_>]) {
    let first = hunk.first().expect("a hunk holds at least one change");
    let old_count = hunk.iter().filter(|e| e.op != Op::Added).count();
    let new_count = hunk.iter().filter(|e| e.op != Op::Removed).count();
    out.push_str(&format!(
        "@@ -{} +{} @@\n",
        hunk_range(first.old_before, old_count),
        hunk_range(first.new_before, new_count)
    ));
    for edit in hunk {
        out.push(match edit.op {
            Op::Same => ' ',
            Op::Removed => '-',
            Op::Added => '+',
        });
        out.push_str(edit.line);
        if !edit.line.ends_with('\n') {
            out.push_str("\n\\ No newline at end of file\n");
        }
    }
}

/// `start,count` of a hunk header, 1-based; an empty range names the line before it, and a
/// count of one is left out, as `diff -u` writes them.
fn hunk_range(lines_before: usize, count: usize) -> String {
    match count {
        0 => format!("{lines_before},0"),
        1 => format!("{}", lines_before + 1),
        _ => format!("{},{count}", lines_before + 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(n: std::ops::RangeInclusive<u32>) -> String {
        n.map(|i| format!("line {i}\n")).collect()
    }

    #[test]
    fn equal_texts_have_no_diff() {
        assert_eq!(unified("a\nb\n", "a\nb\n", "x", "y"), None);
        assert_eq!(unified("", "", "x", "y"), None);
    }

    #[test]
    fn one_changed_line_gets_three_lines_of_context() {
        let old = lines(1..=10);
        let new = old.replace("line 5\n", "line five\n");
        assert_eq!(
            unified(&old, &new, "v1/a.cedar", "v2/a.cedar").unwrap(),
            "--- v1/a.cedar\n+++ v2/a.cedar\n@@ -2,7 +2,7 @@\n line 2\n line 3\n line 4\n\
             -line 5\n+line five\n line 6\n line 7\n line 8\n"
        );
    }

    #[test]
    fn distant_changes_make_separate_hunks_and_near_ones_merge() {
        let old = lines(1..=20);
        let new = old
            .replace("line 2\n", "line two\n")
            .replace("line 18\n", "line eighteen\n");
        let diff = unified(&old, &new, "a", "b").unwrap();
        assert_eq!(diff.matches("@@ -").count(), 2, "{diff}");
        assert!(diff.contains("@@ -1,5 +1,5 @@\n"), "{diff}");
        assert!(diff.contains("@@ -15,6 +15,6 @@\n"), "{diff}");

        let near = old
            .replace("line 5\n", "line five\n")
            .replace("line 11\n", "line eleven\n");
        let diff = unified(&old, &near, "a", "b").unwrap();
        assert_eq!(diff.matches("@@ -").count(), 1, "{diff}");
        assert!(diff.contains("@@ -2,13 +2,13 @@\n"), "{diff}");
    }

    #[test]
    fn insertions_and_deletions_are_minimal() {
        let diff = unified("a\nb\nc\nd\n", "a\nc\nd\ne\n", "x", "y").unwrap();
        assert_eq!(diff, "--- x\n+++ y\n@@ -1,4 +1,4 @@\n a\n-b\n c\n d\n+e\n");
    }

    #[test]
    fn whole_file_added_and_removed() {
        assert_eq!(
            unified("", "a\nb\n", "/dev/null", "v2/n.cedar").unwrap(),
            "--- /dev/null\n+++ v2/n.cedar\n@@ -0,0 +1,2 @@\n+a\n+b\n"
        );
        assert_eq!(
            unified("a\n", "", "v1/n.cedar", "/dev/null").unwrap(),
            "--- v1/n.cedar\n+++ /dev/null\n@@ -1 +0,0 @@\n-a\n"
        );
    }

    #[test]
    fn missing_final_newline_is_marked() {
        assert_eq!(
            unified("a\nb", "a\nb\n", "x", "y").unwrap(),
            "--- x\n+++ y\n@@ -1,2 +1,2 @@\n a\n-b\n\\ No newline at end of file\n+b\n"
        );
    }

    #[test]
    fn oversized_middle_falls_back_to_one_replaced_block() {
        // Every line differs, so nothing is trimmed and the table would exceed its bound.
        let n = 2100;
        let old: String = (0..n).map(|i| format!("old {i}\n")).collect();
        let new: String = (0..n).map(|i| format!("new {i}\n")).collect();
        let diff = unified(&old, &new, "a", "b").unwrap();
        assert!(diff.contains("@@ -1,2100 +1,2100 @@\n"), "{}", &diff[..80]);
        assert_eq!(diff.lines().filter(|l| l.starts_with('-')).count(), n + 1);
        assert_eq!(diff.lines().filter(|l| l.starts_with('+')).count(), n + 1);
    }

    #[test]
    fn script_reproduces_both_texts() {
        let cases = [
            ("", "x\n"),
            ("a\nb\nc\n", "c\nb\na\n"),
            ("p\nq\nr\ns\n", "q\ns\nt\n"),
            ("same\n", "same"),
        ];
        for (old, new) in cases {
            let a: Vec<&str> = old.split_inclusive('\n').collect();
            let b: Vec<&str> = new.split_inclusive('\n').collect();
            let script = edit_script(&a, &b);
            let rebuilt_old: String = script
                .iter()
                .filter(|e| e.op != Op::Added)
                .map(|e| e.line)
                .collect();
            let rebuilt_new: String = script
                .iter()
                .filter(|e| e.op != Op::Removed)
                .map(|e| e.line)
                .collect();
            assert_eq!((rebuilt_old.as_str(), rebuilt_new.as_str()), (old, new));
        }
    }

    #[test]
    fn bundles_note_added_removed_and_changed_files_in_name_order() {
        let old = BTreeMap::from([
            (
                "a.cedar".to_owned(),
                "permit(principal, action, resource);\n".to_owned(),
            ),
            ("gone.cedar".to_owned(), "x\n".to_owned()),
            ("same.json".to_owned(), "[]\n".to_owned()),
        ]);
        let new = BTreeMap::from([
            (
                "a.cedar".to_owned(),
                "forbid(principal, action, resource);\n".to_owned(),
            ),
            ("new.cedar".to_owned(), "y\n".to_owned()),
            ("same.json".to_owned(), "[]\n".to_owned()),
        ]);
        let diffs = bundles(&old, &new, "v1", "v2");
        let summary: Vec<(&str, FileChange)> =
            diffs.iter().map(|d| (d.name.as_str(), d.change)).collect();
        assert_eq!(
            summary,
            [
                ("a.cedar", FileChange::Changed),
                ("gone.cedar", FileChange::Removed),
                ("new.cedar", FileChange::Added),
            ]
        );
        assert!(
            diffs[0]
                .diff
                .starts_with("--- v1/a.cedar\n+++ v2/a.cedar\n")
        );
        assert!(
            diffs[1]
                .diff
                .starts_with("--- v1/gone.cedar\n+++ /dev/null\n")
        );
        assert!(
            diffs[2]
                .diff
                .starts_with("--- /dev/null\n+++ v2/new.cedar\n")
        );
        assert!(bundles(&old, &old, "v1", "v1").is_empty());
    }

    #[test]
    fn an_empty_file_added_still_shows_its_headers() {
        let new = BTreeMap::from([("empty.cedar".to_owned(), String::new())]);
        let diffs = bundles(&BTreeMap::new(), &new, "v1", "v2");
        assert_eq!(diffs[0].diff, "--- /dev/null\n+++ v2/empty.cedar\n");
        assert_eq!(diffs[0].change, FileChange::Added);
    }
}
