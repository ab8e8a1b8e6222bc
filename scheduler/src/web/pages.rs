//! Reviewer pages (issue #6): what a compliance reviewer reads in a browser, server-rendered
//! HTML on the HTTP port.
//!
//! - `/` (also `/deployments`): every deployment with its compliance state, replicas running of
//!   wanted, the policy version in force, a link to its timeline;
//! - `/deployments/{name}`: its placement timeline ([`super::timeline`]) and its events;
//! - `/violations`: replicas that should run and stand violating or migrating, from the state;
//! - `/checkpoint`: the latest signed checkpoint of the history, or why there is none, and the
//!   current tree size and root;
//! - the policy pages are in [`super::policies`].
//!
//! Must not write: no handler proposes, signs, or takes a lock longer than a copy of what it
//! shows. Everything is bounded (rows, events read per page) and the page says when it cut
//! something. Pages need no script and no asset (inline CSS and SVG), and every value from the
//! state or the history goes through maud's escaping; the Content-Security-Policy header tells
//! the browser to run no script even if one slipped in.

use std::collections::BTreeMap;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};
use sov_proto::merkle;

use super::{Web, timeline};
use crate::api::deployments::with_statuses;
use crate::history::Event;
use crate::raft::history_store::{Filter, StoredCheckpoint};
use crate::raft::now_ms;
use crate::reconcile::status::{Compliance, DeploymentStatus};
use crate::state::{Desired, Standing, State as Applied};

/// Deployments listed on the index (the state holds at most `MAX_DEPLOYMENTS`).
const DEPLOYMENT_ROWS_MAX: usize = 1_000;
/// Events of a deployment read for one timeline page; later ones are on the next page.
const TIMELINE_EVENTS_MAX: usize = 1_000;
/// Replicas drawn on one timeline.
const TIMELINE_ROWS_MAX: usize = 100;
/// Violating and migrating replicas listed.
const VIOLATION_ROWS_MAX: usize = 1_000;

/// What every page shows in its header: whose view this is, and when.
pub struct Frame {
    pub cluster_id: String,
    pub node_id: u64,
    /// Raft index of the last command this scheduler applied: the pages show its state.
    pub applied: u64,
    pub now_ms: i64,
}

impl Frame {
    pub fn of(node_id: u64, state: &Applied) -> Frame {
        Frame {
            cluster_id: state.cluster.cluster_id.clone(),
            node_id,
            applied: state.revision,
            now_ms: now_ms(),
        }
    }

    pub fn read(web: &Web) -> Frame {
        Frame::of(web.replica.id, &web.replica.sm.read().state)
    }

    /// A fixed frame for rendering tests: 2026-06-12 18:00:05.123 UTC.
    #[cfg(test)]
    pub fn for_tests() -> Frame {
        Frame {
            cluster_id: "sov-test".into(),
            node_id: 1,
            applied: 42,
            now_ms: 1_781_287_205_123,
        }
    }
}

/// `2026-06-12 18:00:05.123 UTC`.
pub fn utc(ms: i64) -> String {
    let day_ms = ms.rem_euclid(86_400_000);
    format!(
        "{} {:02}:{:02}:{:02}.{:03} UTC",
        crate::state::plan::day_of(ms),
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1_000 % 60,
        day_ms % 1_000
    )
}

/// The style sheet, inline: the pages load nothing else. Badges are tints of the bars' hues
/// (their border is their text colour); the bars' exact colours appear only in the timeline
/// and its legend swatches, so a screenshot can tell whether the timeline was drawn.
fn style() -> String {
    use timeline::{POLICY, VIOLATING};
    format!(
        "body{{font-family:system-ui,sans-serif;margin:0;color:#212121;background:#fafafa}}\
         header{{background:#263238;color:#eceff1;padding:.5rem 1rem}}\
         header a{{color:#fff;margin-right:1rem;text-decoration:none}}\
         header a.here{{text-decoration:underline}}\
         header .meta{{margin:.25rem 0 0;font-size:.8rem;color:#b0bec5}}\
         main{{padding:.5rem 1rem 2rem}}h1{{font-size:1.3rem;margin:.5rem 0}}\
         table{{border-collapse:collapse;margin:.5rem 0;background:#fff}}\
         th,td{{border:1px solid #e0e0e0;padding:.2rem .5rem;text-align:left;vertical-align:top;font-size:.85rem}}\
         th{{background:#eceff1}}code,pre{{font-family:ui-monospace,monospace;font-size:.8rem}}\
         .badge{{display:inline-block;padding:0 .4rem;border-radius:.6rem;border:1px solid;font-size:.8rem}}\
         .badge.compliant{{background:#e8f5e9;color:#1b5e20}}\
         .badge.migrating{{background:#e3f2fd;color:#0d47a1}}\
         .badge.violating{{background:#fff8e1;color:#6d4c00}}\
         .badge.unplaceable{{background:#ffebee;color:#b71c1c}}\
         .badge.degraded{{background:#f5f5f5;color:#424242}}\
         .note{{background:#fff8e1;border-left:4px solid {VIOLATING};padding:.3rem .6rem}}\
         .legend span.sw{{display:inline-block;width:10px;height:10px;margin:0 .3rem 0 .8rem}}\
         .legend .policy{{border-left:2px dashed {POLICY};height:10px;display:inline-block;margin:0 .3rem 0 .8rem}}\
         pre.diff{{background:#fff;border:1px solid #e0e0e0;padding:.5rem;overflow-x:auto}}\
         pre.diff .add{{background:#e6ffec;color:#116329}}pre.diff .del{{background:#ffebe9;color:#a40e26}}\
         pre.diff .hunk{{color:#6f42c1}}pre.diff .file{{font-weight:bold}}\
         pre.file{{background:#fff;border:1px solid #e0e0e0;padding:.5rem;overflow-x:auto}}"
    )
}

/// Which page of the navigation this is.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Deployments,
    Violations,
    Policies,
    Checkpoint,
    None,
}

/// A whole page: header with the navigation, the cluster id, the read-only note and the time.
pub fn page(frame: &Frame, nav: Nav, title: &str, body: Markup) -> Markup {
    let link = |href: &str, here: Nav, text: &str| {
        html! { a href=(href) class=[(nav == here).then_some("here")] { (text) } }
    };
    let cluster = if frame.cluster_id.is_empty() {
        "(no cluster id yet)"
    } else {
        frame.cluster_id.as_str()
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · sov " (cluster) }
                style { (maud::PreEscaped(style())) }
            }
            body {
                header {
                    nav {
                        strong { "sov" } " · "
                        (link("/", Nav::Deployments, "Deployments"))
                        (link("/violations", Nav::Violations, "Violations"))
                        (link("/policies", Nav::Policies, "Policies"))
                        (link("/checkpoint", Nav::Checkpoint, "Checkpoint"))
                    }
                    p.meta {
                        "cluster " code { (cluster) }
                        " · as applied by scheduler " (frame.node_id) " at index " (frame.applied)
                        " · read-only: nothing on these pages changes the cluster · rendered "
                        (utc(frame.now_ms))
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// An HTML response with headers that keep it inert: no script may run, nothing loads.
pub fn respond(status: StatusCode, markup: Markup) -> Response {
    let mut response = (status, markup.into_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A 404 page that says what was asked and where to look instead.
pub fn not_found_page(frame: &Frame, what: &str, hint: Markup) -> Response {
    respond(
        StatusCode::NOT_FOUND,
        page(
            frame,
            Nav::None,
            "Not found",
            html! { p { (what) } p { (hint) } },
        ),
    )
}

/// A 500 page: reading the state or the history failed.
pub fn failed(frame: &Frame, what: &str, error: impl std::fmt::Display) -> Response {
    respond(
        StatusCode::INTERNAL_SERVER_ERROR,
        page(
            frame,
            Nav::None,
            "Error",
            html! {
                p { (what) " failed: " code { (error.to_string()) } }
                p { "The scheduler's log says more; another scheduler of the cluster can serve these pages too." }
            },
        ),
    )
}

/// Any path no page has.
pub async fn fallback(State(web): State<Web>, uri: Uri) -> Response {
    not_found_page(
        &Frame::read(&web),
        &format!("There is no page at {}.", uri.path()),
        html! { "The pages are " a href="/" { "deployments" } ", " a href="/violations" { "violations" }
        ", " a href="/policies" { "policies" } " and " a href="/checkpoint" { "the checkpoint" } "." },
    )
}

/// A compliance-state badge, tinted by state.
fn badge(c: Compliance, text: &str) -> Markup {
    html! { span class=(format!("badge {}", c.as_str())) { (text) } }
}

/// One line of the index.
pub struct DeploymentRow {
    pub name: String,
    pub model: String,
    pub labels: BTreeMap<String, String>,
    pub compliance: Compliance,
    pub summary: String,
    pub running: u32,
    pub wanted: u32,
    /// Why missing replicas cannot be placed, when some cannot.
    pub explanation: String,
}

impl DeploymentRow {
    fn of(d: &crate::state::Deployment, status: Option<&DeploymentStatus>) -> DeploymentRow {
        let s = status.cloned().unwrap_or_default();
        DeploymentRow {
            name: d.spec.name.clone(),
            model: d.spec.model.clone(),
            labels: d.spec.labels.clone(),
            compliance: s.compliance(),
            summary: s.summary(),
            running: s.running,
            wanted: d.spec.replicas,
            explanation: s.explanation.clone(),
        }
    }
}

/// What the index shows.
pub struct IndexView {
    /// The first deployments by name, at most [`DEPLOYMENT_ROWS_MAX`].
    pub rows: Vec<DeploymentRow>,
    pub total: usize,
    /// Deployments per compliance state, all of them counted.
    pub by_state: BTreeMap<Compliance, usize>,
    /// The policy version in force.
    pub policy: Option<u64>,
}

/// The index: every deployment and how it stands.
pub fn render_index(frame: &Frame, v: &IndexView) -> Markup {
    let (rows, total, policy) = (&v.rows, v.total, v.policy);
    let body = html! {
        p {
            "deployments: " (total)
            @for (c, n) in &v.by_state { " · " (badge(*c, c.as_str())) " " (n) }
            " · policy in force: "
            @match policy {
                Some(v) => a href=(format!("/policies/{v}")) { "v" (v) },
                None => "none applied yet (nothing can be placed)",
            }
        }
        @if rows.len() < total {
            p.note { "Showing the first " (rows.len()) " of " (total)
                " deployments, by name; `sovctl deploy list` lists them all." }
        }
        @if rows.is_empty() {
            p { "No deployment yet." }
        } @else {
            table {
                tr { th { "deployment" } th { "model" } th { "labels" } th { "compliance" }
                     th { "running / wanted" } th { "policy in force" } }
                @for r in rows {
                    tr {
                        td { a href=(format!("/deployments/{}", r.name)) { (r.name) } }
                        td { (r.model) }
                        td { @for (k, v) in &r.labels { code { (k) "=" (v) } " " } }
                        td {
                            (badge(r.compliance, r.compliance.as_str()))
                            @if r.summary != r.compliance.as_str() { " " (r.summary) }
                            @if !r.explanation.is_empty() { br; small { (r.explanation) } }
                        }
                        td { (r.running) " / " (r.wanted) }
                        td { @match policy { Some(v) => a href=(format!("/policies/{v}")) { "v" (v) }, None => "none" } }
                    }
                }
            }
        }
    };
    page(frame, Nav::Deployments, "Deployments", body)
}

pub async fn index(State(web): State<Web>) -> Response {
    let node_id = web.replica.id;
    let rendered = with_statuses(&web.replica, None, move |state, statuses| {
        let mut by_state = BTreeMap::new();
        for s in statuses.values() {
            *by_state.entry(s.compliance()).or_default() += 1;
        }
        let view = IndexView {
            rows: state
                .deployments
                .values()
                .take(DEPLOYMENT_ROWS_MAX)
                .map(|d| DeploymentRow::of(d, statuses.get(&d.spec.name)))
                .collect(),
            total: state.deployments.len(),
            by_state,
            policy: state.policies.last().map(|v| v.version),
        };
        render_index(&Frame::of(node_id, state), &view)
    })
    .await;
    match rendered {
        Ok(markup) => respond(StatusCode::OK, markup),
        Err(e) => failed(
            &Frame::read(&web),
            "computing the deployments' states",
            e.message(),
        ),
    }
}

/// `from=SEQ` of a query string: the first event of a timeline page.
fn from_seq(query: Option<&str>) -> u64 {
    query
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("from="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// What the deployment page shows, read from the state and one page of the history.
pub struct DeploymentView {
    pub name: String,
    /// The deployment as it is now; `None` when it was deleted (its history remains).
    pub current: Option<DeploymentRow>,
    pub policy: Option<u64>,
    pub events: Vec<Event>,
    pub from: u64,
    /// The seq to continue from when more events follow.
    pub next: Option<u64>,
    pub timeline: timeline::Timeline,
}

pub fn render_deployment(frame: &Frame, v: &DeploymentView) -> Markup {
    use timeline::{COMPLIANT, MIGRATING, POLICY, STOP_NOW, UNKNOWN, VIOLATING};
    let t = &v.timeline;
    let body = html! {
        @match &v.current {
            Some(r) => p {
                (badge(r.compliance, r.compliance.as_str()))
                @if r.summary != r.compliance.as_str() { " " (r.summary) }
                " · "
                (r.running) " of " (r.wanted) " replicas running · model " code { (r.model) }
                " · policy in force: "
                @match v.policy { Some(p) => a href=(format!("/policies/{p}")) { "v" (p) }, None => "none" }
                @if !r.explanation.is_empty() { br; (r.explanation) }
            },
            None => p.note { "This deployment is not in the current state (deleted); its history remains." },
        }
        h2 { "Placement timeline" }
        p.legend {
            "One row per replica, from its placement to its stop, move, or now:"
            span.sw style=(format!("background:{COMPLIANT}")) {} "compliant"
            span.sw style=(format!("background:{VIOLATING}")) {} "violating (audit)"
            span.sw style=(format!("background:{MIGRATING}")) {} "migrating"
            span.sw style=(format!("background:{STOP_NOW}")) {} "stopped by a stop-now rule"
            @if t.rows.iter().any(|r| r.segments.iter().any(|s| s.standing == timeline::Standing::Unknown)) {
                span.sw style=(format!("background:{UNKNOWN}")) {} "placed before the events shown"
            }
            span.policy {} span style=(format!("color:{POLICY}")) { "policy version activated" }
        }
        p {
            "Events " (v.events.first().map_or(v.from, |e| e.seq)) " to "
            (v.events.last().map_or(v.from, |e| e.seq)) " of the history, "
            (utc(t.start_ms)) " to " (utc(t.end_ms)) "."
            @if v.from > 0 { " " a href=(format!("/deployments/{}", v.name)) { "← first events" } }
            @if let Some(next) = v.next {
                " " a href=(format!("/deployments/{}?from={next}", v.name)) { "later events →" }
            }
        }
        @if v.next.is_some() {
            p.note { "This page reads at most " (TIMELINE_EVENTS_MAX)
                " events of the deployment; the timeline ends at the last of them. Later events are on the next page." }
        }
        @if t.rows_left_out > 0 {
            p.note { (t.rows_left_out) " more replicas are in these events but not drawn (at most "
                (TIMELINE_ROWS_MAX) " rows); the table below lists all their events." }
        }
        @if t.rows.is_empty() {
            p { "No replica of this deployment in these events." }
        } @else {
            div style="overflow-x:auto" { (timeline::svg(t, utc)) }
        }
        h2 { "Events" }
        table {
            tr { th { "seq" } th { "time" } th { "kind" } th { "policy" } th { "detail" } }
            @for e in &v.events {
                tr {
                    td { (e.seq) } td { (utc(e.at_ms)) } td { code { (e.what.kind()) } }
                    td { "v" (e.policy_version) } td { (timeline::detail(e)) }
                }
            }
        }
        p { "The same events from the command line: " code { "sovctl history query --deployment " (v.name) }
            "; with proofs, to check offline: " code { "sovctl history export --deployment " (v.name) " -f FILE" } "." }
    };
    page(
        frame,
        Nav::Deployments,
        &format!("Deployment {}", v.name),
        body,
    )
}

pub async fn deployment(
    State(web): State<Web>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let frame = Frame::read(&web);
    if crate::state::validate_deployment_name(&name).is_err() {
        return not_found_page(
            &frame,
            &format!("{name:?} is not a deployment name."),
            html! { "Deployment names are DNS labels; " a href="/" { "the index" } " lists them." },
        );
    }
    let from = from_seq(query.as_deref());
    let store = web.replica.sm.history().clone();
    let node_id = web.replica.id;
    let missing = format!(
        "There is no deployment {name:?}, and the history has no event of one by that name."
    );
    let only = Some(name.clone());
    let rendered = with_statuses(&web.replica, only, move |state, statuses| {
        let filter = Filter {
            deployment: name.clone(),
            ..Filter::default()
        };
        let page = store
            .reader()
            .and_then(|r| r.query(&filter, from, TIMELINE_EVENTS_MAX))?;
        let frame = Frame::of(node_id, state);
        let current = state
            .deployments
            .get(&name)
            .map(|d| DeploymentRow::of(d, statuses.get(&name)));
        if current.is_none() && page.events.is_empty() {
            return Ok(None);
        }
        let events: Vec<Event> = page.events.into_iter().map(|(e, _)| e).collect();
        // With more events to come, the window ends at the last one read: "now" would draw
        // bars past what this page knows.
        let end_ms = match (page.next, events.last()) {
            (Some(_), Some(last)) => last.at_ms,
            _ => frame.now_ms,
        };
        let activations: Vec<(i64, u64)> = state
            .policies
            .iter()
            .map(|p| (p.activated_at_ms, p.version))
            .collect();
        let view = DeploymentView {
            timeline: timeline::fold(&events, end_ms, &activations, TIMELINE_ROWS_MAX),
            name,
            current,
            policy: state.policies.last().map(|v| v.version),
            events,
            from,
            next: page.next,
        };
        Ok::<_, std::io::Error>(Some(render_deployment(&frame, &view)))
    })
    .await;
    match rendered {
        Ok(Ok(Some(markup))) => respond(StatusCode::OK, markup),
        Ok(Ok(None)) => not_found_page(
            &frame,
            &missing,
            html! { a href="/" { "The index" } " lists the deployments." },
        ),
        Ok(Err(e)) => failed(&frame, "reading the history", e),
        Err(e) => failed(&frame, "computing the deployment's state", e.message()),
    }
}

/// A replica that should run and stands violating or migrating.
pub struct ViolationRow {
    pub deployment: String,
    pub allocation: String,
    pub node: String,
    pub country: String,
    pub standing: &'static str,
    /// The rules, or why it moves when no rule says so (a drain).
    pub why: String,
    pub since_ms: i64,
    pub deadline_ms: Option<i64>,
    pub replacement: String,
    pub policy_version: u64,
}

/// Open violations of `state`, the first `max` by allocation id, and how many there are.
pub fn open_violations(state: &Applied, max: usize) -> (Vec<ViolationRow>, usize) {
    let mut rows = Vec::new();
    let mut total = 0;
    for a in state.allocations.values() {
        if a.desired != Desired::Run || a.standing == Standing::Compliant {
            continue;
        }
        total += 1;
        if rows.len() == max {
            continue;
        }
        let (why, since_ms, deadline_ms, replacement, policy_version) = match &a.standing {
            Standing::Violating {
                rules,
                since_ms,
                policy_version,
            } => (rules.join(", "), *since_ms, None, "", *policy_version),
            Standing::Migrating {
                rules,
                drain,
                since_ms,
                deadline_ms,
                policy_version,
                replacement,
            } => (
                timeline::why(rules, *drain),
                *since_ms,
                Some(*deadline_ms),
                replacement.as_str(),
                *policy_version,
            ),
            Standing::Compliant => continue,
        };
        rows.push(ViolationRow {
            deployment: a.deployment.clone(),
            allocation: a.id.clone(),
            node: a.node.clone(),
            country: state
                .nodes
                .get(&a.node)
                .map(|n| n.facts.country.clone())
                .unwrap_or_default(),
            standing: a.standing.as_str(),
            why,
            since_ms,
            deadline_ms,
            replacement: replacement.to_string(),
            policy_version,
        });
    }
    (rows, total)
}

pub fn render_violations(frame: &Frame, rows: &[ViolationRow], total: usize) -> Markup {
    let body = html! {
        p { "Replicas that should run and that a rule in force forbids where they are (or whose node drains): "
            b { "violating" } " ones keep running on record (" code { "audit" } " rules), "
            b { "migrating" } " ones move away and are stopped by their deadline." }
        @if rows.len() < total {
            p.note { "Showing " (rows.len()) " of " (total) " open violations, by allocation id." }
        }
        @if rows.is_empty() {
            p { "No open violation: every replica that should run is compliant with the policy in force." }
        } @else {
            table {
                tr { th { "deployment" } th { "allocation" } th { "node" } th { "standing" }
                     th { "rules" } th { "since" } th { "deadline" } th { "replacement" } th { "found under" } }
                @for r in rows {
                    tr {
                        td { a href=(format!("/deployments/{}", r.deployment)) { (r.deployment) } }
                        td { code { (r.allocation) } }
                        td { (r.node) @if !r.country.is_empty() { " (" (r.country) ")" } }
                        td { span class=(format!("badge {}", r.standing)) { (r.standing) } }
                        td { (r.why) }
                        td { (utc(r.since_ms)) }
                        td { @match r.deadline_ms { Some(d) => (utc(d)), None => "none (audit)" } }
                        td { @if r.replacement.is_empty() { "—" } @else { code { (r.replacement) } } }
                        td { a href=(format!("/policies/{}", r.policy_version)) { "v" (r.policy_version) } }
                    }
                }
            }
        }
    };
    page(frame, Nav::Violations, "Open violations", body)
}

pub async fn violations(State(web): State<Web>) -> Response {
    // Collected under the read lock (one pass, like a metrics scrape), rendered outside it.
    let (frame, rows, total) = {
        let applied = web.replica.sm.read();
        let (rows, total) = open_violations(&applied.state, VIOLATION_ROWS_MAX);
        (Frame::of(web.replica.id, &applied.state), rows, total)
    };
    respond(StatusCode::OK, render_violations(&frame, &rows, total))
}

/// What the checkpoint page shows.
pub struct CheckpointView {
    /// The id of the key this scheduler signs with; `None` when it has none.
    pub key_id: Option<String>,
    pub latest: Option<StoredCheckpoint>,
    pub tree_size: u64,
    pub root: merkle::Hash,
}

pub fn render_checkpoint(frame: &Frame, v: &CheckpointView) -> Markup {
    let body = html! {
        @match &v.latest {
            Some(c) => {
                p { "The latest checkpoint this scheduler signed: the cluster's history had "
                    b { (c.checkpoint.tree_size) } " events with this root at that time." }
                table {
                    tr { th { "cluster" } td { code { (c.checkpoint.cluster_id) } } }
                    tr { th { "tree size" } td { (c.checkpoint.tree_size) } }
                    tr { th { "root" } td { code { (hex::encode(c.checkpoint.root)) } } }
                    tr { th { "time" } td { (utc(c.checkpoint.at_ms)) } }
                    tr { th { "key id" } td { code { (c.key_id) } } }
                    tr { th { "signature (Ed25519)" } td { code { (hex::encode(&c.signature)) } } }
                }
                @if v.tree_size > c.checkpoint.tree_size {
                    p { (v.tree_size - c.checkpoint.tree_size) " events were recorded since; the next checkpoint will cover them." }
                }
            }
            None => @match &v.key_id {
                None => p.note {
                    "No checkpoint is signed: this scheduler has no signing key "
                    "(create one with " code { "sov-scheduler keygen --out DIR" } ", give every scheduler "
                    "the same key file, " code { "signing_key" } " in its config or " code { "--signing-key" }
                    ", and restart it)."
                },
                Some(key_id) => p.note {
                    "No checkpoint is signed yet. This scheduler signs with key " code { (key_id) }
                    " on its checkpoint interval once the history has grown; "
                    code { "sovctl audit checkpoint" } " signs one now."
                },
            },
        }
        h2 { "Current history" }
        table {
            tr { th { "tree size" } td { (v.tree_size) } }
            tr { th { "root" } td { code { (hex::encode(v.root)) } } }
        }
        h2 { "How to verify" }
        p { "A checkpoint signs the text " code { "sov-checkpoint/1\\ncluster ID\\nsize N\\nroot HEX\\nat_ms MS\\n" }
            " with the cluster's Ed25519 key. Reviewers hold its public half, " code { "cluster.pub" } ", and check evidence offline:" }
        pre.file {
            "sovctl audit checkpoint --key cluster.pub        # a fresh signed checkpoint, signature checked\n"
            "sovctl history export -f june.jsonl              # events with proofs and a signed seal\n"
            "sovctl audit verify june.jsonl --key cluster.pub # never contacts the cluster"
        }
        p { "Keep the checkpoints you were given: every later export must verify as an extension of them "
            "(" code { "--previous" } "), so a kept checkpoint pins down the past." }
    };
    page(frame, Nav::Checkpoint, "History checkpoint", body)
}

pub async fn checkpoint(State(web): State<Web>) -> Response {
    let frame = Frame::read(&web);
    let store = web.replica.sm.history().clone();
    let key_id = web.key_id.clone();
    let read = tokio::task::spawn_blocking(move || -> std::io::Result<CheckpointView> {
        let reader = store.reader()?;
        let tree_size = reader.size()?;
        let root = merkle::root_at(&reader, tree_size).map_err(std::io::Error::other)?;
        Ok(CheckpointView {
            key_id,
            latest: store.latest_checkpoint()?,
            tree_size,
            root,
        })
    })
    .await;
    match read {
        Ok(Ok(view)) => respond(StatusCode::OK, render_checkpoint(&frame, &view)),
        Ok(Err(e)) => failed(&frame, "reading the history store", e),
        Err(e) => failed(&frame, "reading the history store", e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_with_milliseconds() {
        assert_eq!(utc(1_781_287_205_123), "2026-06-12 18:00:05.123 UTC");
        assert_eq!(utc(0), "1970-01-01 00:00:00.000 UTC");
    }

    #[test]
    fn data_is_escaped_and_pages_carry_no_script() {
        let row = DeploymentRow {
            name: "open-eu".into(),
            model: "m<b>".into(),
            labels: BTreeMap::from([("team".to_string(), "<script>alert(1)</script>".to_string())]),
            compliance: Compliance::Compliant,
            summary: "compliant".into(),
            running: 1,
            wanted: 1,
            explanation: String::new(),
        };
        let view = IndexView {
            rows: vec![row],
            total: 1,
            by_state: BTreeMap::from([(Compliance::Compliant, 1)]),
            policy: Some(3),
        };
        let html = render_index(&Frame::for_tests(), &view).into_string();
        assert!(!html.contains("<script"), "{html}");
        assert!(
            html.contains("team=&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{html}"
        );
        assert!(html.contains("m&lt;b&gt;"));
        assert!(html.contains("href=\"/deployments/open-eu\""));
        assert!(html.contains("class=\"badge compliant\""));
        assert!(html.contains("href=\"/policies/3\""));
        assert!(html.contains("sov-test") && html.contains("read-only"));
        assert!(html.contains("2026-06-12 18:00:05.123 UTC"));
    }

    #[test]
    fn the_index_says_when_it_cut_the_list() {
        let view = IndexView {
            rows: Vec::new(),
            total: 5_000,
            by_state: BTreeMap::new(),
            policy: None,
        };
        let html = render_index(&Frame::for_tests(), &view).into_string();
        assert!(html.contains("Showing the first 0 of 5000"), "{html}");
        assert!(html.contains("none applied yet"));
    }

    #[test]
    fn the_query_names_the_first_event() {
        assert_eq!(from_seq(Some("from=17")), 17);
        assert_eq!(from_seq(Some("x=1&from=9")), 9);
        assert_eq!(from_seq(Some("from=abc")), 0);
        assert_eq!(from_seq(None), 0);
    }

    #[test]
    fn open_violations_are_the_replicas_that_should_run_and_are_not_compliant() {
        let mut state = Applied::default();
        let alloc = |id: &str, desired, standing| crate::state::Allocation {
            id: id.into(),
            deployment: "d".into(),
            node: "n".into(),
            desired,
            standing,
            ..Default::default()
        };
        let violating = Standing::Violating {
            rules: vec!["audit-a".into()],
            since_ms: 5,
            policy_version: 2,
        };
        let draining = Standing::Migrating {
            rules: Vec::new(),
            drain: true,
            since_ms: 6,
            deadline_ms: 60_006,
            policy_version: 2,
            replacement: "d-9".into(),
        };
        for a in [
            alloc("d-1", Desired::Run, violating.clone()),
            alloc("d-2", Desired::Run, draining),
            alloc("d-3", Desired::Run, Standing::Compliant),
            alloc("d-4", Desired::Stop, violating),
        ] {
            state.allocations.insert(a.id.clone(), a);
        }
        let (rows, total) = open_violations(&state, 10);
        assert_eq!(total, 2);
        assert_eq!(
            (rows[0].allocation.as_str(), rows[0].why.as_str()),
            ("d-1", "audit-a")
        );
        assert_eq!(rows[0].deadline_ms, None);
        assert_eq!(
            (rows[1].why.as_str(), rows[1].deadline_ms),
            ("node draining", Some(60_006))
        );
        let html = render_violations(&Frame::for_tests(), &rows, total).into_string();
        assert!(
            html.contains("none (audit)") && html.contains("<code>d-9</code>"),
            "{html}"
        );
        let (rows, total) = open_violations(&state, 1);
        assert_eq!((rows.len(), total), (1, 2));
        let html = render_violations(&Frame::for_tests(), &rows, total).into_string();
        assert!(html.contains("Showing 1 of 2 open violations"), "{html}");
    }

    #[test]
    fn the_checkpoint_page_says_why_none_is_signed() {
        let mut view = CheckpointView {
            key_id: None,
            latest: None,
            tree_size: 7,
            root: [0xab; 32],
        };
        let html = render_checkpoint(&Frame::for_tests(), &view).into_string();
        assert!(html.contains("this scheduler has no signing key"), "{html}");
        assert!(html.contains(&"ab".repeat(32)));
        assert!(html.contains("sovctl audit verify"));
        view.key_id = Some("e573ec7b7d702bd7".into());
        let html = render_checkpoint(&Frame::for_tests(), &view).into_string();
        assert!(html.contains("No checkpoint is signed yet"), "{html}");
        assert!(html.contains("e573ec7b7d702bd7"), "{html}");
    }
}
