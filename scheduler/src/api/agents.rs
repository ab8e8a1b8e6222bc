//! `sov.v1.AgentService`: the channel node agents (and the fleet simulator) speak.
//!
//! - `Register`: facts + inventory become a `RegisterNode` command (any scheduler; followers
//!   forward it).
//! - `Heartbeat`: leader only, kept in memory by [`Liveness`]; a follower answers UNAVAILABLE with
//!   the leader's address so the agent moves there.
//! - `WatchAssignments`: a resumable stream of what the node must run. The first event carries
//!   what changed since the agent's `from_revision` (everything, `full`, when it is 0) plus the
//!   ids the agent knows that are no longer assigned; later events carry each change. A stream
//!   ends when this scheduler stops leading or shuts down, so agents follow the leader and a
//!   deposed leader's stale state never drives them for long.
//! - `ReportStatus`: one status transition becomes a `ReportAllocations` command.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::Stream;
use sov_proto::v1 as pb;
use sov_proto::v1::agent_service_server::AgentService;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status};

use super::attest;
use super::auth::{self, Caller, Permission, caller};
use super::deployments::{desired_name, health_to_pb};
use super::nodes::registration_from_pb;
use super::{invalid, propose, write_error_status};
use crate::leader::liveness::Liveness;
use crate::raft::{Replica, WriteError};
use crate::state::node::NodeStatus;
use crate::state::{
    AllocReport, AllocStatus, Allocation, Outcome, Proposal, State, validate_deployment_name,
};

/// Most allocation ids an agent may list as known when it resumes a stream.
pub const KNOWN_IDS_MAX: usize = 4_096;
/// Most assignments in one stream event; a bigger change is sent as several events.
pub const EVENT_ASSIGNMENTS_MAX: usize = 512;
/// Events buffered per stream before the stream waits for its agent to read.
const STREAM_BUFFER: usize = 8;
/// How long a stream waits for this replica to apply the revision the agent already saw.
const CATCH_UP_WAIT: Duration = Duration::from_secs(5);

pub struct AgentApi {
    replica: Arc<Replica>,
    liveness: Arc<Liveness>,
    shutdown: watch::Receiver<bool>,
    reports: super::reports::ReportBatcher,
    node_index: Arc<NodeIndex>,
    refusals: attest::RecentRefusals,
}

impl AgentApi {
    pub fn new(
        replica: Arc<Replica>,
        liveness: Arc<Liveness>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            reports: super::reports::ReportBatcher::start(replica.clone()),
            node_index: Arc::default(),
            refusals: Default::default(),
            replica,
            liveness,
            shutdown,
        }
    }

    fn not_leader(&self) -> Status {
        write_error_status(WriteError::NotLeader {
            leader: self.replica.leader(),
        })
    }
}

fn node_name(field: &str, name: &str) -> Result<(), Status> {
    validate_deployment_name(name)
        .map_err(|e| Status::invalid_argument(format!("{field}: {}", e.message)))
}

/// What the node's agent must do for one allocation. The deployment's serving command comes
/// with it, so the agent needs nothing else to start the process.
fn assignment(state: &State, a: &Allocation) -> pb::Assignment {
    let spec = state.deployments.get(&a.deployment).map(|d| &d.spec);
    pb::Assignment {
        allocation_id: a.id.clone(),
        deployment: a.deployment.clone(),
        desired: desired_name(a.desired).into(),
        gpu_uuids: a.gpu_uuids.clone(),
        port: u32::from(a.port),
        command: spec.map(|s| s.command.clone()).unwrap_or_default(),
        env: spec
            .map(|s| s.env.clone().into_iter().collect())
            .unwrap_or_default(),
        working_dir: spec.map(|s| s.working_dir.clone()).unwrap_or_default(),
        health: spec.map(|s| health_to_pb(&s.health)),
        stop_after_disconnect_ms: spec.map_or(0, |s| s.stop_after_disconnect_ms),
        revision: a.revision,
    }
}

/// The ids of every node's allocations at one state revision, built once and shared by every
/// assignment stream that catches up at that revision. Without it each stream scanned every
/// allocation for its node: a rule change that stops replicas on 2,000 nodes of a 100,000
/// allocation cluster cost 2,000 scans, under the state machine's lock (docs/benchmarks.md,
/// Rule changes).
#[derive(Default)]
pub struct NodeIndex {
    cached: Mutex<Option<Arc<RevisionIndex>>>,
}

/// Allocation ids per node at `revision`.
struct RevisionIndex {
    revision: u64,
    by_node: HashMap<String, Vec<String>>,
}

impl NodeIndex {
    /// The index of `state` (built now unless this revision's is cached).
    fn at(&self, state: &State) -> Arc<RevisionIndex> {
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(index) = cached.as_ref()
            && index.revision == state.revision
        {
            return index.clone();
        }
        let mut by_node: HashMap<String, Vec<String>> = HashMap::new();
        for a in state.allocations.values() {
            by_node
                .entry(a.node.clone())
                .or_default()
                .push(a.id.clone());
        }
        let index = Arc::new(RevisionIndex {
            revision: state.revision,
            by_node,
        });
        *cached = Some(index.clone());
        index
    }
}

/// The events that bring an agent that knows `known` (and saw every change up to `since`) to
/// the node's current assignments, given the node's allocations. `full` when `since` is 0.
/// Splits big changes so no event exceeds [`EVENT_ASSIGNMENTS_MAX`] assignments; the last
/// event carries the revision.
fn catch_up<'s>(
    state: &'s State,
    allocations: impl Iterator<Item = &'s Allocation>,
    since: u64,
    known: &mut HashSet<String>,
) -> Vec<pb::AssignmentEvent> {
    let mut current = BTreeSet::new();
    let mut changed = Vec::new();
    for a in allocations {
        current.insert(a.id.as_str());
        if since == 0 || a.revision > since || !known.contains(&a.id) {
            changed.push(assignment(state, a));
        }
    }
    let mut removed: Vec<String> = known
        .iter()
        .filter(|id| !current.contains(id.as_str()))
        .cloned()
        .collect();
    removed.sort();
    known.retain(|id| current.contains(id.as_str()));
    known.extend(current.iter().map(|id| id.to_string()));
    let full = since == 0;
    let mut events = Vec::new();
    let mut chunks = changed.chunks(EVENT_ASSIGNMENTS_MAX).peekable();
    if chunks.peek().is_none() {
        events.push(pb::AssignmentEvent {
            revision: state.revision,
            full,
            assignments: Vec::new(),
            removed,
        });
        return events;
    }
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        events.push(pb::AssignmentEvent {
            // Only the last event of a split change is a safe point to resume from.
            revision: if last { state.revision } else { since },
            // Only the first chunk may say "this is everything": the agent treats later chunks
            // of a full set as additions.
            full: full && events.is_empty(),
            assignments: chunk.to_vec(),
            removed: if last {
                std::mem::take(&mut removed)
            } else {
                Vec::new()
            },
        });
    }
    events
}

type AssignmentStream = Pin<Box<dyn Stream<Item = Result<pb::AssignmentEvent, Status>> + Send>>;

/// Feeds one agent's stream until the agent goes away, this replica stops leading, or the
/// scheduler shuts down.
async fn serve_assignments(
    replica: Arc<Replica>,
    index: Arc<NodeIndex>,
    node: String,
    from_revision: u64,
    mut known: HashSet<String>,
    tx: mpsc::Sender<Result<pb::AssignmentEvent, Status>>,
    mut shutdown: watch::Receiver<bool>,
) {
    // Subscribed before the first read, so no change between the two is missed.
    let mut touches = replica.sm.watch_node(&node);
    let mut leading = replica.leading();
    let mut sent = from_revision;
    let mut first = true;
    loop {
        let events = {
            let applied = replica.sm.read();
            let state = &applied.state;
            let touched = state.nodes.get(&node).map_or(0, |n| n.assignments_revision);
            if first || touched > sent {
                let index = index.at(state);
                let ids = index.by_node.get(&node).map_or(&[][..], Vec::as_slice);
                catch_up(
                    state,
                    ids.iter().filter_map(|id| state.allocations.get(id)),
                    if first { from_revision } else { sent },
                    &mut known,
                )
            } else {
                Vec::new()
            }
        };
        first = false;
        for event in events {
            sent = sent.max(event.revision);
            if tx.send(Ok(event)).await.is_err() {
                return;
            }
        }
        tokio::select! {
            changed = touches.changed() => if changed.is_err() { return },
            changed = leading.changed() => if changed.is_err() { return },
            _ = shutdown.changed() => {}
            () = tx.closed() => return,
        }
        if *shutdown.borrow() {
            let _ = tx
                .send(Err(Status::unavailable(
                    "scheduler shutting down; reconnect to another",
                )))
                .await;
            return;
        }
        if !*leading.borrow_and_update() {
            let mut status = write_error_status(WriteError::NotLeader {
                leader: replica.leader(),
            });
            status = Status::with_metadata(
                status.code(),
                "this scheduler no longer leads; resume the stream on the leader",
                status.metadata().clone(),
            );
            let _ = tx.send(Err(status)).await;
            return;
        }
    }
}

#[tonic::async_trait]
impl AgentService for AgentApi {
    async fn register(
        &self,
        request: Request<pb::RegisterNodeRequest>,
    ) -> Result<Response<pb::RegisterNodeResponse>, Status> {
        let caller = caller(&request).cloned();
        let mut registration = registration_from_pb(request.into_inner())?;
        let name = registration.name.clone();
        if let Some(caller) = &caller {
            speaks_for(Some(caller), &name)?;
            if let Err(reason) = attest::attest(&caller.identity, &mut registration.facts) {
                return Err(self.refuse(caller, &name, reason).await);
            }
        }
        match propose(
            &self.replica,
            Proposal::RegisterNode {
                node: Box::new(registration),
            },
        )
        .await?
        .1
        {
            Outcome::NodeRegistered { node, .. } => {
                // Registering is a sign of life; it spares the first heartbeat a race with the
                // TTL when the leader handled the registration itself.
                let nodes = self.replica.sm.read().state.nodes.len();
                let pace = self
                    .liveness
                    .heartbeat(&name, NodeStatus::Ready, nodes, Instant::now());
                Ok(Response::new(pb::RegisterNodeResponse {
                    revision: node.revision,
                    heartbeat_ttl_ms: pace.ttl_ms,
                    heartbeat_interval_ms: pace.interval_ms,
                }))
            }
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        speaks_for(caller(&request), &request.get_ref().name)?;
        let req = request.into_inner();
        node_name("name", &req.name)?;
        if !self.replica.is_leader() {
            return Err(self.not_leader());
        }
        let (status, revision, nodes) = {
            let applied = self.replica.sm.read();
            let Some(node) = applied.state.nodes.get(&req.name) else {
                return Err(Status::not_found(format!(
                    "node {:?} is not registered; register it first (the agent does this on its own when it starts or reconnects)",
                    req.name
                )));
            };
            (
                node.status,
                applied.state.revision,
                applied.state.nodes.len(),
            )
        };
        let pace = self
            .liveness
            .heartbeat(&req.name, status, nodes, Instant::now());
        Ok(Response::new(pb::HeartbeatResponse {
            leader_id: self.replica.id,
            status: status.as_str().into(),
            heartbeat_ttl_ms: pace.ttl_ms,
            heartbeat_interval_ms: pace.interval_ms,
            revision,
        }))
    }

    type WatchAssignmentsStream = AssignmentStream;

    async fn watch_assignments(
        &self,
        request: Request<pb::WatchAssignmentsRequest>,
    ) -> Result<Response<Self::WatchAssignmentsStream>, Status> {
        speaks_for(caller(&request), &request.get_ref().node)?;
        let req = request.into_inner();
        node_name("node", &req.node)?;
        if req.known.len() > KNOWN_IDS_MAX {
            return Err(Status::invalid_argument(format!(
                "known: {} ids; at most {KNOWN_IDS_MAX}",
                req.known.len()
            )));
        }
        if !self.replica.is_leader() {
            return Err(self.not_leader());
        }
        // The agent may have seen a revision this replica has committed but not yet applied
        // (it just became leader): wait, bounded, rather than send it an older view.
        let mut revisions = self.replica.sm.subscribe();
        let caught_up = tokio::time::timeout(
            CATCH_UP_WAIT,
            revisions.wait_for(|&r| r >= req.from_revision),
        )
        .await;
        if !matches!(caught_up, Ok(Ok(_))) {
            return Err(Status::unavailable(format!(
                "this scheduler has not applied revision {} yet; retry shortly",
                req.from_revision
            )));
        }
        if !self.replica.sm.read().state.nodes.contains_key(&req.node) {
            return Err(Status::not_found(format!(
                "node {:?} is not registered; register it first",
                req.node
            )));
        }
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(serve_assignments(
            self.replica.clone(),
            self.node_index.clone(),
            req.node,
            req.from_revision,
            req.known.into_iter().collect(),
            tx,
            self.shutdown.clone(),
        ));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn report_status(
        &self,
        request: Request<pb::AllocationStatusReport>,
    ) -> Result<Response<pb::ReportStatusResponse>, Status> {
        speaks_for(caller(&request), &request.get_ref().node)?;
        let req = request.into_inner();
        let node = req.node.clone();
        self.report(node, vec![req]).await
    }

    async fn report_statuses(
        &self,
        request: Request<pb::AllocationStatusBatch>,
    ) -> Result<Response<pb::ReportStatusResponse>, Status> {
        speaks_for(caller(&request), &request.get_ref().node)?;
        let req = request.into_inner();
        if req.reports.len() > crate::state::REPORTS_MAX {
            return Err(Status::invalid_argument(format!(
                "reports: {} in one batch; the limit is {}",
                req.reports.len(),
                crate::state::REPORTS_MAX
            )));
        }
        self.report(req.node, req.reports).await
    }
}

/// With mutual TLS, an agent acts only for the node (or the prefix) its certificate names.
fn speaks_for(caller: Option<&Caller>, node: &str) -> Result<(), Status> {
    match caller {
        Some(c) if !c.identity.speaks_for(node) => Err(auth::denied(
            Permission::Agent,
            format!(
                "{} may not act for node {node:?}: an agent's certificate names the node it speaks for",
                c.identity
            ),
        )),
        _ => Ok(()),
    }
}

impl AgentApi {
    /// Refuses a registration whose facts disagree with the agent's certificate, recording the
    /// refusal in history (at most once per node and reason per
    /// [`attest::REFUSAL_RECORD_INTERVAL`]: agents retry).
    async fn refuse(&self, caller: &Caller, node: &str, reason: String) -> Status {
        tracing::warn!(node, %reason, by = caller.opaque_id(), "registration refused");
        if self.refusals.should_record(node, &reason, Instant::now()) {
            let recorded = propose(
                &self.replica,
                Proposal::RefuseRegistration {
                    node: node.to_string(),
                    reason: reason.clone(),
                    by: caller.opaque_id(),
                },
            )
            .await;
            if let Err(e) = recorded {
                tracing::warn!(
                    node,
                    error = e.message(),
                    "the refusal was not recorded in history"
                );
            }
        }
        auth::denied(
            Permission::Agent,
            format!(
                "registration of node {node:?} refused: {reason}. Fix the agent's [location] or issue it a certificate with the right claims; the refusal is recorded in the history"
            ),
        )
    }

    /// Commits status transitions of `node`'s allocations as one `ReportAllocations` command.
    async fn report(
        &self,
        node: String,
        reports: Vec<pb::AllocationStatusReport>,
    ) -> Result<Response<pb::ReportStatusResponse>, Status> {
        let reports = reports
            .into_iter()
            .map(|r| {
                let status = match AllocStatus::parse(&r.status) {
                    Some(AllocStatus::Pending) | None => {
                        return Err(Status::invalid_argument(format!(
                            "status: {:?} must be \"starting\", \"running\", \"failed\" or \"stopped\"",
                            r.status
                        )));
                    }
                    Some(s) => s,
                };
                Ok(AllocReport {
                    id: r.allocation_id,
                    status,
                    exit_code: r.exit_code,
                    reason: r.reason,
                    restarts: r.restarts,
                })
            })
            .collect::<Result<Vec<_>, Status>>()?;
        let batch = crate::state::NodeReports { node, reports };
        crate::state::validate_node_reports(&batch).map_err(invalid)?;
        // Committed together with other nodes' reports arriving meanwhile (`reports.rs`).
        self.reports.report(batch).await?;
        Ok(Response::new(pb::ReportStatusResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::node::Node;

    fn alloc(id: &str, node: &str, revision: u64) -> Allocation {
        Allocation {
            id: id.into(),
            deployment: "d".into(),
            node: node.into(),
            revision,
            ..Allocation::default()
        }
    }

    fn state(allocs: &[Allocation], revision: u64) -> State {
        let mut s = State {
            revision,
            ..State::default()
        };
        s.nodes.insert(
            "n".into(),
            Node {
                name: "n".into(),
                ..Node::default()
            },
        );
        for a in allocs {
            s.allocations.insert(a.id.clone(), a.clone());
        }
        s
    }

    /// `node`'s allocations, as the stream's index gives them.
    fn of<'s>(s: &'s State, node: &str) -> impl Iterator<Item = &'s Allocation> {
        let index = NodeIndex::default().at(s);
        let ids = index.by_node.get(node).cloned().unwrap_or_default();
        ids.into_iter().filter_map(move |id| s.allocations.get(&id))
    }

    fn ids(e: &pb::AssignmentEvent) -> Vec<&str> {
        e.assignments
            .iter()
            .map(|a| a.allocation_id.as_str())
            .collect()
    }

    #[test]
    fn first_watch_gets_the_full_set_of_its_node_only() {
        let s = state(&[alloc("a", "n", 3), alloc("b", "other", 4)], 9);
        let mut known = HashSet::new();
        let events = catch_up(&s, of(&s, "n"), 0, &mut known);
        assert_eq!(events.len(), 1);
        assert!(events[0].full);
        assert_eq!(ids(&events[0]), ["a"]);
        assert_eq!(events[0].revision, 9);
        assert_eq!(known, HashSet::from(["a".to_string()]));
    }

    #[test]
    fn resume_sends_changes_since_and_what_the_agent_must_drop() {
        let s = state(&[alloc("a", "n", 3), alloc("c", "n", 12)], 14);
        // The agent saw revision 10, knows "a" and "b"; "b" has since gone.
        let mut known = HashSet::from(["a".to_string(), "b".to_string()]);
        let events = catch_up(&s, of(&s, "n"), 10, &mut known);
        assert_eq!(events.len(), 1);
        assert!(!events[0].full);
        assert_eq!(ids(&events[0]), ["c"]);
        assert_eq!(events[0].removed, ["b"]);
        assert_eq!(events[0].revision, 14);
        // Nothing new: one empty event that still advances the revision.
        let events = catch_up(&s, of(&s, "n"), 14, &mut known);
        assert_eq!(events.len(), 1);
        assert!(events[0].assignments.is_empty() && events[0].removed.is_empty());
    }

    #[test]
    fn big_changes_are_split_and_only_the_last_part_is_a_resume_point() {
        let allocs: Vec<Allocation> = (0..EVENT_ASSIGNMENTS_MAX + 3)
            .map(|i| alloc(&format!("a{i:04}"), "n", 5))
            .collect();
        let s = state(&allocs, 6);
        let events = catch_up(&s, of(&s, "n"), 0, &mut HashSet::new());
        assert_eq!(events.len(), 2);
        assert!(events[0].full && !events[1].full);
        assert_eq!(events[0].revision, 0);
        assert_eq!(events[1].revision, 6);
        assert_eq!(
            events[0].assignments.len() + events[1].assignments.len(),
            allocs.len()
        );
    }
}
