//! The placement timeline of one deployment: one row per replica (allocation), a bar from its
//! placement until it was told to stop, moved, or now, coloured by how it stood with the rules
//! in force, with the policy activations as vertical markers. Drawn as inline SVG, so the page
//! needs no script and no asset.
//!
//! Two parts: [`fold`], pure, turns the deployment's history events into rows and segments
//! (unit-tested below); [`svg`] draws them. Neither reads the store or the state: the page
//! handler (`pages.rs`) reads a bounded page of events and passes them in, so what is drawn is
//! exactly what the history says, never the live state.

use std::collections::{BTreeSet, HashMap};

use maud::{Markup, html};

use crate::history::{Event, What};

/// Bar colours: compliant green, violating (audit) amber, migrating blue, a stop-now rule's
/// stop red, policy activations purple. Badges on the other pages are tints of the same hues,
/// so a reader learns them once; these exact colours appear only in the bars and the legend's
/// swatches (the browser test counts them to tell that the timeline was drawn).
pub const COMPLIANT: &str = "#2e7d32";
pub const VIOLATING: &str = "#f9a825";
pub const MIGRATING: &str = "#1565c0";
pub const STOP_NOW: &str = "#c62828";
pub const POLICY: &str = "#6a1b9a";
/// A replica placed before the events read: how it stood then is not known from them.
pub const UNKNOWN: &str = "#bdbdbd";
/// End tick of a replica stopped for any other reason (scaled down, deleted, node lost).
const STOPPED: &str = "#424242";

/// Drawing geometry, in SVG user units (pixels at 100 % zoom).
const WIDTH: i64 = 1200;
const LABEL_WIDTH: i64 = 300;
const RIGHT_MARGIN: i64 = 24;
const TOP: i64 = 28;
const ROW_HEIGHT: i64 = 26;
const BAR_HEIGHT: i64 = 16;
const AXIS_HEIGHT: i64 = 24;
/// A segment shorter than this is widened to it: a one-second move on a month-long timeline
/// must still be seen.
const SEGMENT_WIDTH_MIN: i64 = 3;
const END_MARK_WIDTH: i64 = 6;

/// How a replica stood with the rules in force during a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    Compliant,
    /// Forbidden by an `audit` rule: kept running, on record.
    Violating,
    /// Forbidden by a `migrate` rule or on a draining node: moving away.
    Migrating,
    /// Placed before the first event read, and nothing read since says how it stands.
    Unknown,
}

impl Standing {
    pub fn as_str(self) -> &'static str {
        match self {
            Standing::Compliant => "compliant",
            Standing::Violating => "violating",
            Standing::Migrating => "migrating",
            Standing::Unknown => "unknown",
        }
    }

    fn colour(self) -> &'static str {
        match self {
            Standing::Compliant => COMPLIANT,
            Standing::Violating => VIOLATING,
            Standing::Migrating => MIGRATING,
            Standing::Unknown => UNKNOWN,
        }
    }
}

/// A stretch of a replica's bar with one standing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub from_ms: i64,
    pub to_ms: i64,
    pub standing: Standing,
}

/// How a replica's bar ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Still meant to run at the end of the window.
    Open,
    /// A `stop-now` rule stopped it (red mark).
    StopNow { rules: Vec<String> },
    /// It moved: its replacement on `to_node` runs.
    Migrated { to_node: String },
    /// Told to stop for another reason, or its agent reported it stopped.
    Stopped { reason: String },
}

/// One replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub allocation: String,
    pub node: String,
    /// From the placement event's facts; empty when the placement is before the window.
    pub country: String,
    /// When it was placed; `None` when that was before the first event read.
    pub placed_ms: Option<i64>,
    /// The allocation it took over from, if a replacement.
    pub replaces: String,
    pub segments: Vec<Segment>,
    pub ending: Ending,
    /// When it ended; `None` while open.
    pub ended_ms: Option<i64>,
}

/// Rows and markers for one window of time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeline {
    pub start_ms: i64,
    pub end_ms: i64,
    pub rows: Vec<Row>,
    /// Replicas seen in the events but not drawn, because there were more than `rows_max`.
    pub rows_left_out: usize,
    /// Policy activations inside the window: (time, version).
    pub policies: Vec<(i64, u64)>,
}

/// Folds a deployment's events (oldest first) into rows. The window runs from the first
/// event to `end_ms` (now, or the last event read when more follow); `policies` are every
/// activation (time, version), of which those inside the window are kept. At most `rows_max`
/// replicas get a row, in the order they first appear.
pub fn fold(events: &[Event], end_ms: i64, policies: &[(i64, u64)], rows_max: usize) -> Timeline {
    let start_ms = events.first().map_or(end_ms, |e| e.at_ms);
    let end_ms = end_ms.max(events.last().map_or(end_ms, |e| e.at_ms));
    let mut rows: Vec<Row> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut left_out: BTreeSet<String> = BTreeSet::new();
    for e in events {
        let at = e.at_ms;
        let (Some(allocation), Some(node)) = (e.what.allocation(), e.what.node()) else {
            continue;
        };
        let i = match index.get(allocation) {
            Some(&i) => i,
            None if rows.len() < rows_max => {
                // A placement is compliant (apply re-checks it against the policy in force).
                // Seen first through a later event, it was placed before the window, and how
                // it stood then is not in the events read.
                let placed = matches!(e.what, What::AllocationPlaced { .. });
                let (from_ms, standing) = if placed {
                    (at, Standing::Compliant)
                } else {
                    (start_ms, Standing::Unknown)
                };
                rows.push(Row {
                    allocation: allocation.to_string(),
                    node: node.to_string(),
                    country: String::new(),
                    placed_ms: placed.then_some(at),
                    replaces: String::new(),
                    segments: vec![Segment {
                        from_ms,
                        to_ms: end_ms,
                        standing,
                    }],
                    ending: Ending::Open,
                    ended_ms: None,
                });
                index.insert(allocation.to_string(), rows.len() - 1);
                rows.len() - 1
            }
            None => {
                left_out.insert(allocation.to_string());
                continue;
            }
        };
        let row = &mut rows[i];
        match &e.what {
            What::AllocationPlaced {
                facts, replaces, ..
            } => {
                row.country.clone_from(&facts.country);
                row.replaces.clone_from(replaces);
            }
            What::ViolationDetected { action, .. } => match action.as_str() {
                "migrate" => switch(row, Standing::Migrating, at),
                "audit" => switch(row, Standing::Violating, at),
                _ => {}
            },
            What::ViolationCleared(_) => switch(row, Standing::Compliant, at),
            What::AllocationMigrated { to_node, .. } => end(
                row,
                at,
                Ending::Migrated {
                    to_node: to_node.clone(),
                },
            ),
            // A stop that names rules is a stop-now violation (other stops name none).
            What::StopOrdered { reason, rules, .. } => {
                let ending = if rules.is_empty() {
                    Ending::Stopped {
                        reason: reason.clone(),
                    }
                } else {
                    Ending::StopNow {
                        rules: rules.clone(),
                    }
                };
                end(row, at, ending);
            }
            What::AllocationStopped(_) => end(
                row,
                at,
                Ending::Stopped {
                    reason: "its agent reported it stopped".into(),
                },
            ),
            _ => {}
        }
    }
    for row in &mut rows {
        let to = row.ended_ms.unwrap_or(end_ms);
        if let Some(last) = row.segments.last_mut() {
            last.to_ms = to;
        }
    }
    Timeline {
        start_ms,
        end_ms,
        rows,
        rows_left_out: left_out.len(),
        policies: policies
            .iter()
            .copied()
            .filter(|(at, _)| (start_ms..=end_ms).contains(at))
            .collect(),
    }
}

/// Starts a new segment with `standing` at `at`, unless the replica has ended or already
/// stands so.
fn switch(row: &mut Row, standing: Standing, at: i64) {
    if row.ended_ms.is_some() {
        return;
    }
    let Some(last) = row.segments.last_mut() else {
        return;
    };
    if last.standing == standing {
        return;
    }
    last.to_ms = at;
    row.segments.push(Segment {
        from_ms: at,
        to_ms: at,
        standing,
    });
}

/// Ends the bar at `at`; the first ending recorded wins (a move is followed by its stop order,
/// a stop order by the agent's confirmation).
fn end(row: &mut Row, at: i64, ending: Ending) {
    if row.ended_ms.is_none() {
        row.ended_ms = Some(at);
        row.ending = ending;
    }
}

/// The x coordinate of time `at`.
fn x_of(t: &Timeline, at: i64) -> i64 {
    let span = (t.end_ms - t.start_ms).max(1);
    let area = WIDTH - LABEL_WIDTH - RIGHT_MARGIN;
    LABEL_WIDTH + ((at - t.start_ms).clamp(0, span) as i128 * area as i128 / span as i128) as i64
}

/// The timeline as an inline SVG element (`id="timeline"`, one `g.row` per replica); times
/// are shown with `utc`.
pub fn svg(t: &Timeline, utc: impl Fn(i64) -> String) -> Markup {
    let rows = t.rows.len() as i64;
    let height = TOP + rows.max(1) * ROW_HEIGHT + AXIS_HEIGHT;
    let bottom = TOP + rows.max(1) * ROW_HEIGHT;
    let right = WIDTH - RIGHT_MARGIN;
    html! {
        svg id="timeline" xmlns="http://www.w3.org/2000/svg" width=(WIDTH) height=(height)
            viewBox=(format!("0 0 {WIDTH} {height}")) role="img"
            aria-label=(format!("Placement timeline: {} replicas", t.rows.len())) {
            rect x="0" y="0" width=(WIDTH) height=(height) fill="#ffffff" {}
            line x1=(LABEL_WIDTH) y1=(bottom) x2=(right) y2=(bottom) stroke="#9e9e9e" {}
            text x=(LABEL_WIDTH) y=(bottom + 16) font-size="11" fill="#424242" { (utc(t.start_ms)) }
            text x=(right) y=(bottom + 16) font-size="11" fill="#424242" text-anchor="end" {
                (utc(t.end_ms))
            }
            @for (i, row) in t.rows.iter().enumerate() {
                (row_svg(t, row, TOP + i as i64 * ROW_HEIGHT, &utc))
            }
            @for (at, version) in &t.policies {
                @let x = x_of(t, *at);
                g class="policy-marker" {
                    title { "policy v" (version) " activated " (utc(*at)) }
                    line x1=(x) y1=(TOP - 6) x2=(x) y2=(bottom) stroke=(POLICY)
                        stroke-width="2" stroke-dasharray="4 3" {}
                    text x=(x + 3) y=(TOP - 10) font-size="12" font-weight="bold" fill=(POLICY) {
                        "v" (version)
                    }
                }
            }
        }
    }
}

fn row_svg(t: &Timeline, row: &Row, y: i64, utc: &impl Fn(i64) -> String) -> Markup {
    let bar_y = y + (ROW_HEIGHT - BAR_HEIGHT) / 2;
    let label = if row.country.is_empty() {
        row.node.clone()
    } else {
        format!("{} ({})", row.node, row.country)
    };
    let placed = match row.placed_ms {
        Some(at) => format!("placed {}", utc(at)),
        None => "placed before the first event shown".to_string(),
    };
    let ended = match (&row.ending, row.ended_ms) {
        (Ending::Open, _) | (_, None) => "meant to run".to_string(),
        (Ending::StopNow { rules }, Some(at)) => {
            format!(
                "stopped by stop-now rule {} at {}",
                rules.join(", "),
                utc(at)
            )
        }
        (Ending::Migrated { to_node }, Some(at)) => format!("moved to {to_node} at {}", utc(at)),
        (Ending::Stopped { reason }, Some(at)) => format!("told to stop at {}: {reason}", utc(at)),
    };
    let end_x = x_of(t, row.ended_ms.unwrap_or(t.end_ms));
    html! {
        g class="row" data-allocation=(row.allocation) {
            title { (row.allocation) " on " (label) "; " (placed) "; " (ended) }
            text x=(LABEL_WIDTH - 8) y=(bar_y + BAR_HEIGHT - 3) font-size="12" fill="#212121"
                text-anchor="end" { (label) }
            @for s in &row.segments {
                @let x = x_of(t, s.from_ms);
                @let w = (x_of(t, s.to_ms) - x).max(SEGMENT_WIDTH_MIN);
                rect class=(format!("seg {}", s.standing.as_str())) x=(x) y=(bar_y) width=(w)
                    height=(BAR_HEIGHT) fill=(s.standing.colour()) {
                    title { (s.standing.as_str()) " from " (utc(s.from_ms)) " to " (utc(s.to_ms)) }
                }
            }
            @match &row.ending {
                Ending::StopNow { .. } => {
                    rect class="end stop-now" x=(end_x - END_MARK_WIDTH / 2) y=(bar_y - 3)
                        width=(END_MARK_WIDTH) height=(BAR_HEIGHT + 6) fill=(STOP_NOW) {}
                }
                Ending::Stopped { .. } => {
                    rect class="end stopped" x=(end_x - 1) y=(bar_y - 2) width="2"
                        height=(BAR_HEIGHT + 4) fill=(STOPPED) {}
                }
                Ending::Migrated { .. } | Ending::Open => {}
            }
        }
    }
}

/// Why a replica stands forbidden: the rules, and its node's drain.
pub fn why(rules: &[String], drain: bool) -> String {
    match (rules.is_empty(), drain) {
        (_, false) => rules.join(", "),
        (true, true) => "node draining".into(),
        (false, true) => format!("{}; node draining", rules.join(", ")),
    }
}

/// One line saying what an event of a deployment's history records, for the events table.
pub fn detail(e: &Event) -> String {
    match &e.what {
        What::DeploymentCreated(d) | What::DeploymentChanged(d) => {
            let residency = if d.residency.is_empty() {
                String::new()
            } else {
                format!(", residency {}", d.residency.join(", "))
            };
            format!(
                "generation {}: model {}, {} replicas, ECCN {}{residency}",
                d.generation, d.model, d.replicas, d.eccn
            )
        }
        What::DeploymentDeleted { .. } => "deleted".into(),
        What::AllocationPlaced {
            allocation,
            node,
            facts,
            eligible,
            replaces,
            ..
        } => {
            let replaces = if replaces.is_empty() {
                String::new()
            } else {
                format!(", replacing {replaces}")
            };
            format!(
                "{allocation} on {node} ({}, operator {}, parent HQ {}){replaces}: {eligible}",
                facts.country, facts.operator, facts.ultimate_parent_hq
            )
        }
        What::AllocationStarted(a) => format!("{} on {} started", a.allocation, a.node),
        What::AllocationHealthy(a) => format!("{} on {} healthy", a.allocation, a.node),
        What::AllocationFailed {
            allocation: a,
            reason,
            exit_code,
        } => match exit_code {
            Some(code) => format!("{} on {}: {reason} (exit {code})", a.allocation, a.node),
            None => format!("{} on {}: {reason}", a.allocation, a.node),
        },
        What::StopOrdered {
            allocation: a,
            reason,
            ..
        } => format!("{} on {}: {reason}", a.allocation, a.node),
        What::AllocationStopped(a) => format!("{} on {} stopped", a.allocation, a.node),
        What::AllocationMigrated {
            allocation,
            from_node,
            to_node,
            replacement,
            ..
        } => {
            format!("{allocation} moved from {from_node} to {to_node} (replacement {replacement})")
        }
        What::ViolationDetected {
            allocation: a,
            rules,
            action,
            drain,
        } => format!(
            "{} on {}: {action} ({})",
            a.allocation,
            a.node,
            why(rules, *drain)
        ),
        What::ViolationCleared(a) => format!("{} on {}: compliant again", a.allocation, a.node),
        other => other.kind().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{AllocationRef, Facts};

    fn event(seq: u64, at_ms: i64, what: What) -> Event {
        Event {
            seq,
            raft_index: seq + 1,
            at_ms,
            policy_version: 1,
            what,
        }
    }

    fn placed(seq: u64, at: i64, id: &str, node: &str, country: &str) -> Event {
        event(
            seq,
            at,
            What::AllocationPlaced {
                allocation: id.into(),
                deployment: "d".into(),
                node: node.into(),
                facts: Facts {
                    country: country.into(),
                    ..Facts::default()
                }
                .into(),
                eligible: String::new(),
                replaces: String::new(),
            },
        )
    }

    fn on(id: &str, node: &str) -> AllocationRef {
        AllocationRef {
            allocation: id.into(),
            deployment: "d".into(),
            node: node.into(),
        }
    }

    fn detected(seq: u64, at: i64, id: &str, node: &str, action: &str) -> Event {
        event(
            seq,
            at,
            What::ViolationDetected {
                allocation: on(id, node),
                rules: vec!["rule-a".into()],
                action: action.into(),
                drain: false,
            },
        )
    }

    fn stop(seq: u64, at: i64, id: &str, node: &str) -> Event {
        event(
            seq,
            at,
            What::StopOrdered {
                allocation: on(id, node),
                reason: "why".into(),
                rules: Vec::new(),
            },
        )
    }

    fn seg(from_ms: i64, to_ms: i64, standing: Standing) -> Segment {
        Segment {
            from_ms,
            to_ms,
            standing,
        }
    }

    #[test]
    fn a_migration_is_blue_from_detection_to_the_move_and_the_replacement_green_until_now() {
        let events = vec![
            placed(0, 1_000, "d-1", "ie", "IE"),
            detected(1, 5_000, "d-1", "ie", "migrate"),
            placed(2, 5_000, "d-2", "fr", "FR"),
            event(
                3,
                8_000,
                What::AllocationMigrated {
                    allocation: "d-1".into(),
                    deployment: "d".into(),
                    from_node: "ie".into(),
                    to_node: "fr".into(),
                    replacement: "d-2".into(),
                },
            ),
            stop(4, 8_000, "d-1", "ie"),
        ];
        let t = fold(&events, 10_000, &[(500, 1), (5_000, 2)], 10);
        assert_eq!((t.start_ms, t.end_ms), (1_000, 10_000));
        assert_eq!(t.policies, vec![(5_000, 2)], "v1 is before the window");
        assert_eq!(t.rows.len(), 2);
        let old = &t.rows[0];
        assert_eq!((old.node.as_str(), old.country.as_str()), ("ie", "IE"));
        assert_eq!(
            old.segments,
            vec![
                seg(1_000, 5_000, Standing::Compliant),
                seg(5_000, 8_000, Standing::Migrating)
            ]
        );
        assert_eq!(
            old.ending,
            Ending::Migrated {
                to_node: "fr".into()
            }
        );
        assert_eq!(old.ended_ms, Some(8_000));
        let new = &t.rows[1];
        assert_eq!(new.segments, vec![seg(5_000, 10_000, Standing::Compliant)]);
        assert_eq!((new.ending.clone(), new.ended_ms), (Ending::Open, None));
    }

    #[test]
    fn audit_is_amber_until_cleared_and_stop_now_ends_the_bar_with_its_rules() {
        let events = vec![
            placed(0, 0, "d-1", "a", "DE"),
            placed(1, 0, "d-2", "b", "US"),
            detected(2, 100, "d-1", "a", "audit"),
            event(3, 200, What::ViolationCleared(on("d-1", "a"))),
            event(
                5,
                300,
                What::StopOrdered {
                    allocation: on("d-2", "b"),
                    reason: "policy v2: rule-a (stop-now)".into(),
                    rules: vec!["rule-a".into()],
                },
            ),
            event(6, 400, What::AllocationStopped(on("d-2", "b"))),
        ];
        let t = fold(&events, 1_000, &[], 10);
        assert_eq!(
            t.rows[0].segments,
            vec![
                seg(0, 100, Standing::Compliant),
                seg(100, 200, Standing::Violating),
                seg(200, 1_000, Standing::Compliant)
            ]
        );
        let stopped = &t.rows[1];
        assert_eq!(stopped.segments, vec![seg(0, 300, Standing::Compliant)]);
        assert_eq!(
            stopped.ending,
            Ending::StopNow {
                rules: vec!["rule-a".into()]
            },
            "the agent's confirmation does not replace the rule's stop"
        );
        assert_eq!(stopped.ended_ms, Some(300));
    }

    #[test]
    fn replicas_placed_before_the_window_start_at_it_and_rows_are_capped() {
        let events = vec![
            stop(0, 50, "d-0", "x"),
            placed(1, 60, "d-1", "a", "FR"),
            placed(2, 70, "d-2", "b", "FR"),
            placed(3, 80, "d-3", "c", "FR"),
            stop(4, 90, "d-3", "c"),
        ];
        let t = fold(&events, 100, &[], 2);
        assert_eq!(t.rows.len(), 2);
        assert_eq!(t.rows_left_out, 2, "d-2 and d-3, each counted once");
        let early = &t.rows[0];
        assert_eq!(early.placed_ms, None);
        assert_eq!(early.segments, vec![seg(50, 50, Standing::Unknown)]);
        assert!(matches!(early.ending, Ending::Stopped { .. }));
    }

    #[test]
    fn a_replica_placed_before_the_window_is_unknown_until_an_event_says_how_it_stands() {
        let events = vec![
            event(0, 10, What::AllocationHealthy(on("d-1", "a"))),
            detected(1, 20, "d-1", "a", "migrate"),
        ];
        let t = fold(&events, 30, &[], 10);
        assert_eq!(
            t.rows[0].segments,
            vec![
                seg(10, 20, Standing::Unknown),
                seg(20, 30, Standing::Migrating)
            ]
        );
    }

    #[test]
    fn the_svg_has_a_row_per_replica_with_coloured_segments_and_policy_markers() {
        let events = vec![
            placed(0, 0, "d-1", "ie", "IE"),
            detected(1, 500, "d-1", "ie", "migrate"),
            placed(2, 500, "d-2", "fr", "FR"),
        ];
        let t = fold(&events, 1_000, &[(500, 2)], 10);
        let svg = svg(&t, |ms| format!("t{ms}")).into_string();
        assert!(svg.starts_with("<svg id=\"timeline\""), "{svg}");
        assert_eq!(svg.matches("<g class=\"row\"").count(), 2);
        assert!(svg.contains("class=\"seg migrating\""));
        assert!(svg.contains(&format!("fill=\"{MIGRATING}\"")));
        assert!(svg.contains(&format!("fill=\"{COMPLIANT}\"")));
        assert!(svg.contains("ie (IE)") && svg.contains("fr (FR)"));
        assert!(svg.contains(">v2</text>"));
        // Every element is closed: SVG inside HTML has no void elements.
        assert_eq!(svg.matches("<rect").count(), svg.matches("</rect>").count());
    }
}
