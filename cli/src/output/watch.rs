//! Live views of `deploy show --watch`, `policy apply --wait` and `node drain --wait`: what is
//! written for each answer of a poll, given the answer shown before it.
//!
//! Three modes. On a terminal, a compact view redrawn in place with plain ANSI (carriage return,
//! cursor up, clear to end of screen; no terminal library). Elsewhere (a pipe, a CI log), one
//! line with a UTC timestamp whenever something worth a line changed, so a log reads as a
//! history. With `-o json`, one JSON document per line whenever the answer changed. Everything
//! here is pure; `crate::watch` polls and writes.

use serde::Serialize;

use super::policy::PolicyProgressView;
use super::{
    DeploymentView, ReplicaView, STATUS_FAILED, STATUS_RUNNING, STATUS_STOPPED, Table, by_id,
    clock_cell, dash_if_empty, deadline_text, relative_text, replica_notes, replica_status_cell,
    rfc3339_utc, standing_cell,
};

/// Cells of the moves bar: coarse, but it fits beside the summary on a narrow terminal.
const BAR_WIDTH: u32 = 10;
/// Replicas named in one plain line; a line about a large deployment stays readable.
const EVENTS_MAX: usize = 4;
/// Replicas in the terminal view: a view taller than the terminal cannot be redrawn in place
/// (the cursor cannot move above the top row), and 20 rows fit any terminal.
const SCREEN_REPLICAS_MAX: usize = 20;

/// How a watch writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// stdout is a terminal: redraw a compact view in place.
    Terminal,
    /// stdout is a pipe or a file: a timestamped line per change.
    Lines,
    /// `-o json`: one JSON document per line per change.
    Json,
}

/// What a watch shows of one answer.
pub trait Watched: Serialize + PartialEq {
    /// Whether the watch is over.
    fn converged(&self) -> bool;
    /// The compact view redrawn on a terminal, ending with a newline.
    fn screen(&self, now_ms: i64) -> String;
    /// A plain line, without its timestamp and newline.
    fn line(&self, now_ms: i64) -> String;
    /// Whether the line about `self` would tell something the one about `prev` did not.
    fn news(&self, prev: &Self) -> bool;
    /// The last line, once converged, without timestamp and newline.
    fn final_line(&self) -> String;
    /// What is left to do, for the error when the watch times out.
    fn left(&self) -> String;
}

/// The state of the output between answers: on a terminal, what was drawn last and how tall.
#[derive(Debug)]
pub struct Display {
    mode: Mode,
    height: usize,
    shown: String,
}

impl Display {
    pub fn new(mode: Mode) -> Self {
        Display {
            mode,
            height: 0,
            shown: String::new(),
        }
    }

    /// What to write for `new`, the answer after `prev` (`None` for the first); `None` when
    /// nothing is worth writing.
    pub fn update<V: Watched>(&mut self, prev: Option<&V>, new: &V, now_ms: i64) -> Option<String> {
        match self.mode {
            Mode::Json => (prev != Some(new)).then(|| json_line(new)),
            Mode::Lines => match prev {
                Some(prev) if !new.news(prev) => None,
                _ => Some(stamped(now_ms, &new.line(now_ms))),
            },
            Mode::Terminal => {
                let screen = new.screen(now_ms);
                if screen == self.shown {
                    return None;
                }
                let out = redraw(self.height, &screen);
                self.height = screen.lines().count();
                self.shown = screen;
                Some(out)
            }
        }
    }

    /// The end of a watch that converged on `last`. In JSON the last document says so itself.
    pub fn finish<V: Watched>(&self, last: &V, now_ms: i64) -> String {
        match self.mode {
            Mode::Json => String::new(),
            Mode::Lines => stamped(now_ms, &last.final_line()),
            Mode::Terminal => format!("{}\n", last.final_line()),
        }
    }

    /// Something else was written to the terminal (a note on stderr): the next view is drawn
    /// below it, as redrawing over it would count lines that are no longer the view's.
    pub fn interrupted(&mut self) {
        self.height = 0;
        self.shown.clear();
    }
}

/// `screen` in place of the `height` lines drawn before it (which the cursor is just below).
/// A line wider than the terminal wraps and takes two rows, so a view must stay narrow: the
/// watch views use compact tables for that reason.
pub fn redraw(height: usize, screen: &str) -> String {
    if height == 0 {
        screen.to_owned()
    } else {
        format!("\r\x1b[{height}A\x1b[J{screen}")
    }
}

/// `[###-------] 1/3 moved`.
pub fn progress_bar(done: u32, total: u32) -> String {
    let done = done.min(total);
    let filled = (done * BAR_WIDTH).checked_div(total).unwrap_or(0);
    format!(
        "[{}{}] {done}/{total} moved",
        "#".repeat(filled as usize),
        "-".repeat((BAR_WIDTH - filled) as usize)
    )
}

fn stamped(now_ms: i64, text: &str) -> String {
    format!("{} {text}\n", rfc3339_utc(now_ms))
}

fn json_line<V: Serialize>(view: &V) -> String {
    // The views are plain structs and string-keyed maps, which always serialize.
    serde_json::to_string(view).expect("views serialize") + "\n"
}

// ------------------------------------------------------------------------------------------------
// deploy show --watch
// ------------------------------------------------------------------------------------------------

impl DeploymentView {
    fn summary(&self) -> String {
        self.compliance
            .as_ref()
            .map_or_else(|| "-".to_owned(), |c| c.summary_text())
    }

    /// Replicas running and wanted, as the compliance report counts them.
    fn running_of_wanted(&self) -> (u32, u32) {
        self.compliance.as_ref().map_or_else(
            || {
                let wanted = self.spec.as_ref().map_or(0, |s| s.replicas);
                (self.running() as u32, wanted)
            },
            |c| (c.replicas_running, c.replicas_wanted),
        )
    }
}

impl Watched for DeploymentView {
    fn converged(&self) -> bool {
        self.compliance.as_ref().is_some_and(|c| c.converged)
    }

    fn screen(&self, now_ms: i64) -> String {
        let (running, wanted) = self.running_of_wanted();
        let mut head = vec![format!("{}: {}", self.name(), self.summary())];
        if let Some(c) = self.compliance.as_ref().filter(|c| c.moves_started > 0) {
            head.push(progress_bar(c.moves_finished, c.moves_started));
        }
        head.push(format!("running {running}/{wanted}"));
        if let Some(c) = self.compliance.as_ref().filter(|c| c.next_deadline_ms > 0) {
            head.push(format!(
                "next deadline {} ({})",
                clock_cell(c.next_deadline_ms, now_ms),
                relative_text(c.next_deadline_ms, now_ms)
            ));
        }
        let mut out = head.join("   ") + "\n\n";
        if self.replicas.is_empty() {
            out.push_str("No replicas placed.\n");
            return out;
        }
        // Replicas in motion first: they are what a watch is about.
        let mut shown = by_id(&self.replicas);
        shown.sort_by_key(|r| in_motion(r).is_none());
        shown.truncate(SCREEN_REPLICAS_MAX);
        out.push_str(&compact_replicas_table(&shown, now_ms));
        if self.replicas.len() > shown.len() {
            out.push_str(&format!(
                "… and {} more replicas, at rest (`sovctl deploy show {}` lists them all)\n",
                self.replicas.len() - shown.len(),
                self.name()
            ));
        }
        out.push_str(&replica_notes(shown));
        out
    }

    fn line(&self, now_ms: i64) -> String {
        let (running, wanted) = self.running_of_wanted();
        let mut line = format!(
            "{} {}: {running} running of {wanted}",
            self.name(),
            self.summary()
        );
        let events = replica_events(&self.replicas, now_ms);
        if !events.is_empty() {
            line.push_str("; ");
            line.push_str(&events.join(", "));
        }
        line
    }

    fn news(&self, prev: &Self) -> bool {
        self.summary() != prev.summary() || replica_story(self) != replica_story(prev)
    }

    fn final_line(&self) -> String {
        let (running, wanted) = self.running_of_wanted();
        format!(
            "{} converged: {}, {running} running of {wanted}",
            self.name(),
            self.summary()
        )
    }

    fn left(&self) -> String {
        self.summary()
    }
}

/// The replicas on a terminal, in the order given: the columns that change while replicas move,
/// and no wider.
fn compact_replicas_table(replicas: &[&ReplicaView], now_ms: i64) -> String {
    let mut table = Table::new(&["ID", "NODE", "DESIRED", "STATUS", "STANDING"]);
    for r in replicas {
        table.row(vec![
            dash_if_empty(&r.id),
            dash_if_empty(&r.node),
            dash_if_empty(&r.desired),
            replica_status_cell(r),
            standing_cell(r, now_ms),
        ]);
    }
    table.render()
}

/// How a replica is in motion, if it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Motion {
    /// A replacement not running yet.
    Starting,
    /// Must leave its node and has no replacement yet.
    AwaitingReplacement,
    /// Must leave its node; its replacement is placed (and says how it is doing).
    Replaced,
    /// Told to stop, not stopped yet.
    Stopping,
}

fn in_motion(r: &ReplicaView) -> Option<Motion> {
    if r.wants_run() && !r.replaces.is_empty() && r.status != STATUS_RUNNING {
        Some(Motion::Starting)
    } else if r.wants_run() && r.is_migrating() {
        Some(if r.replacement.is_empty() {
            Motion::AwaitingReplacement
        } else {
            Motion::Replaced
        })
    } else if !r.wants_run() && r.status != STATUS_STOPPED && r.status != STATUS_FAILED {
        Some(Motion::Stopping)
    } else {
        None
    }
}

/// What a plain line says about replicas that are in motion: replacements starting, replicas
/// waiting for one, replicas being stopped; at most `EVENTS_MAX`, then how many more.
fn replica_events(replicas: &[ReplicaView], now_ms: i64) -> Vec<String> {
    let mut events: Vec<String> = by_id(replicas)
        .into_iter()
        .filter_map(|r| {
            let node = dash_if_empty(&r.node);
            match in_motion(r)? {
                Motion::Starting => {
                    let how = match r.status.as_str() {
                        "" | "pending" | "starting" => "starting",
                        other => other,
                    };
                    Some(format!("replacement {} {how} on {node}", r.id))
                }
                Motion::AwaitingReplacement => Some(format!(
                    "{} must leave {node} by {}, replacement placing",
                    r.id,
                    clock_cell(r.deadline_ms, now_ms)
                )),
                // Its replacement's event tells the story.
                Motion::Replaced => None,
                Motion::Stopping => Some(format!("{} stopping on {node}", r.id)),
            }
        })
        .collect();
    if events.len() > EVENTS_MAX {
        let more = events.len() - EVENTS_MAX;
        events.truncate(EVENTS_MAX);
        events.push(format!("and {more} more"));
    }
    events
}

/// What a plain line is about: each replica's place, desire, status and standing. Times and
/// restart counts are left out: they change without anything moving.
fn replica_story(d: &DeploymentView) -> Vec<[&str; 6]> {
    by_id(&d.replicas)
        .into_iter()
        .map(|r| {
            [
                r.id.as_str(),
                r.node.as_str(),
                r.desired.as_str(),
                r.status.as_str(),
                r.standing.as_str(),
                r.replacement.as_str(),
            ]
        })
        .collect()
}

// ------------------------------------------------------------------------------------------------
// policy apply --wait, node drain --wait
// ------------------------------------------------------------------------------------------------

impl PolicyProgressView {
    /// What is left to do, e.g. `2 migrating (1 with a replacement placed), 1 stopping`.
    fn items(&self) -> String {
        let mut items = Vec::new();
        if self.migrating > 0 {
            let placed = match self.replacements_placed {
                0 => String::new(),
                n => format!(" ({n} with a replacement placed)"),
            };
            items.push(format!("{} migrating{placed}", self.migrating));
        }
        for (n, what) in [
            (self.stopping, "stopping"),
            (self.stopping_on_down_nodes, "stopping on down nodes"),
            (self.starting, "starting"),
            (self.missing, "to place"),
            (self.unplaceable, "unplaceable"),
            (self.violating, "violating audit rules"),
        ] {
            if n > 0 {
                items.push(format!("{n} {what}"));
            }
        }
        if items.is_empty() {
            "nothing left to do".to_owned()
        } else {
            items.join(", ")
        }
    }

    fn label(&self) -> String {
        match self.policy_version {
            0 => "no policy in force".to_owned(),
            v => format!("policy version {v}"),
        }
    }
}

impl Watched for PolicyProgressView {
    fn converged(&self) -> bool {
        self.converged
    }

    fn screen(&self, now_ms: i64) -> String {
        let mut head = vec![format!("{}:", self.label())];
        if self.moves_started > 0 {
            head.push(progress_bar(self.moves_finished, self.moves_started));
        }
        head.push(self.items());
        let mut out = head.join("   ") + "\n";
        if self.next_deadline_ms > 0 {
            out.push_str(&format!(
                "next deadline {}\n",
                deadline_text(self.next_deadline_ms, now_ms)
            ));
        }
        out
    }

    fn line(&self, _now_ms: i64) -> String {
        let moved = match self.moves_started {
            0 => String::new(),
            started => format!("{}/{started} moved; ", self.moves_finished),
        };
        format!("{}: {moved}{}", self.label(), self.items())
    }

    fn news(&self, prev: &Self) -> bool {
        // Every commit moves the revision; only the counts make a line worth writing.
        let unrevised = |p: &Self| PolicyProgressView {
            revision: 0,
            ..p.clone()
        };
        unrevised(self) != unrevised(prev)
    }

    fn final_line(&self) -> String {
        let mut line = format!(
            "converged: nothing left to stop, move or place under {}",
            self.label()
        );
        let remains: Vec<String> = [
            (self.starting, "starting"),
            (self.unplaceable, "unplaceable"),
            (self.violating, "violating audit rules"),
        ]
        .into_iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
        if !remains.is_empty() {
            line.push_str(&format!(" ({})", remains.join(", ")));
        }
        line
    }

    fn left(&self) -> String {
        self.items()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::ComplianceView;
    use sov_proto::v1 as pb;

    /// 2026-12-01T10:00:03Z.
    const NOW: i64 = 1_796_119_203_000;

    fn replica(id: &str, node: &str, desired: &str, status: &str) -> ReplicaView {
        ReplicaView::from(pb::Replica {
            id: id.into(),
            node: node.into(),
            desired: desired.into(),
            status: status.into(),
            standing: "compliant".into(),
            ..Default::default()
        })
    }

    /// open-eu: one replica migrating off sim-de-1 to a replacement starting on sim-fr-paris-1.
    fn migrating() -> DeploymentView {
        let mut old = replica("open-eu-41-0", "sim-de-1", "run", "running");
        old.standing = "migrating".into();
        old.rules = vec!["eu-only".into()];
        old.replacement = "open-eu-42-0".into();
        old.deadline_ms = NOW + 252_000;
        let mut new = replica("open-eu-42-0", "sim-fr-paris-1", "run", "starting");
        new.replaces = "open-eu-41-0".into();
        DeploymentView {
            spec: None,
            generation: 1,
            created_at_ms: 0,
            updated_at_ms: 0,
            revision: 7,
            replicas: vec![new, old],
            compliance: Some(ComplianceView {
                state: "migrating".into(),
                summary: "migrating (0/1)".into(),
                replicas_wanted: 1,
                replicas_running: 1,
                moves_started: 1,
                moves_finished: 0,
                next_deadline_ms: NOW + 252_000,
                ..Default::default()
            }),
        }
    }

    fn named(mut d: DeploymentView, name: &str) -> DeploymentView {
        d.spec = Some(crate::output::SpecView::from(pb::DeploymentSpec {
            name: name.into(),
            replicas: 1,
            ..Default::default()
        }));
        d
    }

    /// The move done: the replacement runs, the old replica is stopped.
    fn moved() -> DeploymentView {
        let mut d = named(migrating(), "open-eu");
        d.replicas[0].status = "running".into();
        let old = &mut d.replicas[1];
        (old.desired, old.status, old.standing) =
            ("stop".into(), "stopped".into(), "compliant".into());
        old.stop_reason = "moved: replaced by open-eu-42-0".into();
        let c = d.compliance.as_mut().unwrap();
        (c.state, c.summary) = ("compliant".into(), "compliant".into());
        (c.moves_finished, c.next_deadline_ms, c.converged) = (1, 0, true);
        d
    }

    fn progress() -> PolicyProgressView {
        PolicyProgressView {
            revision: 40,
            policy_version: 5,
            migrating: 2,
            replacements_placed: 1,
            stopping: 1,
            stopping_on_down_nodes: 0,
            missing: 0,
            unplaceable: 1,
            starting: 1,
            violating: 0,
            next_deadline_ms: NOW + 600_000,
            converged: false,
            moves_started: 3,
            moves_finished: 1,
        }
    }

    #[test]
    fn the_bar_fills_with_moves_finished() {
        assert_eq!(progress_bar(0, 3), "[----------] 0/3 moved");
        assert_eq!(progress_bar(1, 3), "[###-------] 1/3 moved");
        assert_eq!(progress_bar(3, 3), "[##########] 3/3 moved");
        // A server counting more finished than started does not overflow the bar.
        assert_eq!(progress_bar(4, 3), "[##########] 3/3 moved");
        assert_eq!(progress_bar(0, 0), "[----------] 0/0 moved");
    }

    #[test]
    fn redraw_moves_up_over_the_last_view_and_clears_it() {
        assert_eq!(redraw(0, "a\nb\n"), "a\nb\n");
        assert_eq!(redraw(2, "c\n"), "\r\x1b[2A\x1b[Jc\n");
    }

    #[test]
    fn plain_lines_tell_the_summary_and_the_replicas_in_motion() {
        let d = named(migrating(), "open-eu");
        assert_eq!(
            d.line(NOW),
            "open-eu migrating (0/1): 1 running of 1; replacement open-eu-42-0 starting on \
             sim-fr-paris-1"
        );
        let mut waiting = d.clone();
        waiting.replicas.remove(0);
        waiting.replicas[0].replacement.clear();
        assert_eq!(
            waiting.line(NOW),
            "open-eu migrating (0/1): 1 running of 1; open-eu-41-0 must leave sim-de-1 by \
             10:04:15Z, replacement placing"
        );
        let mut stopping = moved();
        stopping.replicas[1].status = "running".into();
        assert!(
            stopping
                .line(NOW)
                .ends_with("; open-eu-41-0 stopping on sim-de-1"),
            "{}",
            stopping.line(NOW)
        );
        assert_eq!(moved().line(NOW), "open-eu compliant: 1 running of 1");
    }

    #[test]
    fn plain_lines_name_a_few_replicas_then_count_the_rest() {
        let mut d = named(migrating(), "big");
        d.replicas = (0..6)
            .map(|i| replica(&format!("big-{i}"), "n", "stop", "running"))
            .collect();
        assert!(
            d.line(NOW).ends_with(
                "big-0 stopping on n, big-1 stopping on n, big-2 stopping on n, big-3 stopping \
                 on n, and 2 more"
            ),
            "{}",
            d.line(NOW)
        );
    }

    #[test]
    fn lines_are_written_only_when_the_story_changes() {
        let mut display = Display::new(Mode::Lines);
        let first = named(migrating(), "open-eu");
        assert_eq!(
            display.update(None, &first, NOW).unwrap(),
            "2026-12-01T10:00:03Z open-eu migrating (0/1): 1 running of 1; replacement \
             open-eu-42-0 starting on sim-fr-paris-1\n"
        );
        // A later poll with only times and restart counts moved says nothing.
        let mut same = first.clone();
        same.revision = 9;
        same.replicas[0].status_at_ms = NOW;
        same.replicas[1].restarts = 1;
        assert_eq!(display.update(Some(&first), &same, NOW + 500), None);
        let done = moved();
        assert!(display.update(Some(&same), &done, NOW + 1000).is_some());
        assert_eq!(
            display.finish(&done, NOW + 1000),
            "2026-12-01T10:00:04Z open-eu converged: compliant, 1 running of 1\n"
        );
    }

    #[test]
    fn json_lines_are_written_for_every_changed_answer() {
        let mut display = Display::new(Mode::Json);
        let first = named(migrating(), "open-eu");
        let line = display.update(None, &first, NOW).unwrap();
        assert!(
            line.ends_with("}\n") && line.matches('\n').count() == 1,
            "{line}"
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["compliance"]["summary"], "migrating (0/1)");
        assert_eq!(display.update(Some(&first), &first.clone(), NOW), None);
        let mut later = first.clone();
        later.revision = 9;
        assert!(display.update(Some(&first), &later, NOW).is_some());
        assert_eq!(display.finish(&later, NOW), "");
    }

    #[test]
    fn a_terminal_gets_the_view_redrawn_in_place_when_it_changes() {
        let mut display = Display::new(Mode::Terminal);
        let first = named(migrating(), "open-eu");
        let drawn = display.update(None, &first, NOW).unwrap();
        assert_eq!(
            drawn,
            "open-eu: migrating (0/1)   [----------] 0/1 moved   running 1/1   next deadline \
             10:04:15Z (in 4m12s)\n\
             \n\
             ID             NODE             DESIRED   STATUS     STANDING\n\
             open-eu-41-0   sim-de-1         run       running    migrating → open-eu-42-0, by 10:04:15Z\n\
             open-eu-42-0   sim-fr-paris-1   run       starting   replaces open-eu-41-0\n"
        );
        // The same view a moment later (same second): nothing to redraw.
        assert_eq!(display.update(Some(&first), &first, NOW + 400), None);
        // A second later the countdown moved: the 5 lines drawn are replaced.
        let again = display.update(Some(&first), &first, NOW + 1000).unwrap();
        assert!(again.starts_with("\r\x1b[5A\x1b[Jopen-eu: "), "{again:?}");
        assert!(again.contains("(in 4m11s)"), "{again:?}");
        // After a note on stderr the view starts afresh below it.
        display.interrupted();
        let below = display.update(Some(&first), &first, NOW + 1000).unwrap();
        assert!(below.starts_with("open-eu: "), "{below:?}");
        assert_eq!(
            display.finish(&moved(), NOW),
            "open-eu converged: compliant, 1 running of 1\n"
        );
    }

    #[test]
    fn a_large_deployment_shows_its_replicas_in_motion_first_and_no_more_than_fit() {
        let mut d = named(migrating(), "big");
        d.replicas = (0..30)
            .map(|i| replica(&format!("big-{i:02}"), "n", "run", "running"))
            .collect();
        d.replicas[25].desired = "stop".into();
        let screen = d.screen(NOW);
        let rows: Vec<&str> = screen.lines().skip(3).collect();
        assert_eq!(rows.len(), SCREEN_REPLICAS_MAX + 1, "{screen}");
        assert!(rows[0].starts_with("big-25   n      stop "), "{screen}");
        assert!(rows[1].starts_with("big-00 "), "{screen}");
        assert_eq!(
            rows[SCREEN_REPLICAS_MAX],
            "… and 10 more replicas, at rest (`sovctl deploy show big` lists them all)"
        );
    }

    #[test]
    fn progress_lists_what_is_left() {
        let p = progress();
        assert_eq!(
            p.line(NOW),
            "policy version 5: 1/3 moved; 2 migrating (1 with a replacement placed), 1 \
             stopping, 1 starting, 1 unplaceable"
        );
        assert_eq!(
            p.screen(NOW),
            "policy version 5:   [###-------] 1/3 moved   2 migrating (1 with a replacement \
             placed), 1 stopping, 1 starting, 1 unplaceable\n\
             next deadline 2026-12-01T10:10:03Z (in 10m)\n"
        );
        assert_eq!(
            p.left(),
            "2 migrating (1 with a replacement placed), 1 stopping, 1 starting, 1 unplaceable"
        );
        let done = PolicyProgressView {
            migrating: 0,
            replacements_placed: 0,
            stopping: 0,
            starting: 0,
            unplaceable: 0,
            violating: 2,
            stopping_on_down_nodes: 1,
            moves_started: 0,
            moves_finished: 0,
            next_deadline_ms: 0,
            converged: true,
            ..p
        };
        assert_eq!(
            done.line(NOW),
            "policy version 5: 1 stopping on down nodes, 2 violating audit rules"
        );
        assert_eq!(
            done.final_line(),
            "converged: nothing left to stop, move or place under policy version 5 (2 violating \
             audit rules)"
        );
    }

    #[test]
    fn progress_lines_ignore_a_new_revision_alone() {
        let p = progress();
        let mut later = p.clone();
        later.revision += 3;
        assert!(!later.news(&p));
        later.moves_finished += 1;
        assert!(later.news(&p));
    }
}
