//! Group commit of agents' status reports: the reports of every node that arrive while
//! earlier entries are being committed go into the next `ReportMany` entry together.
//!
//! Why: each Raft command costs about 230 µs of CPU across the cluster (docs/benchmarks.md,
//! raft_commit), whatever its size. When a rule change stops replicas on 2,000 nodes, their
//! agents report within milliseconds of each other: 2,000 commands alone would take half a
//! second of CPU, and they arrive just when the leader is busiest placing replacements. Batched,
//! they are a handful of entries. A lone report still commits at once (no timer waits for
//! company): batches form only while entries are in flight.
//!
//! Why several entries in flight (`IN_FLIGHT_MAX`): with one, the first stop acknowledged after
//! a rule change went alone into an entry, and the 19,000 acknowledgements that arrived a
//! millisecond later waited for it to commit, then for the leader's 20,000-replacement round
//! proposed meanwhile (rule-change benchmark, docs/benchmarks.md): more than a second. Raft
//! pipelines entries anyway. Per node, order is kept: a node's request waits while an entry
//! holding an earlier one of its reports is in flight ([`Pending`]), so a retried report can
//! never be applied before the one it follows.
//!
//! Bounds: at most `QUEUE_MAX` requests wait in the channel and as many here (further callers
//! wait for room: back-pressure, nothing dropped), at most `IN_FLIGHT_MAX` entries are in
//! flight, and one entry carries at most `REPORT_NODES_MAX` nodes and `REPORTS_TOTAL_MAX`
//! reports. Each request is validated before it joins a batch, and each node's reports are
//! applied (or refused) on their own, so one bad request fails alone.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tonic::Status;

use super::{propose, rejection_status};
use crate::raft::Replica;
use crate::state::{NodeReports, Outcome, Proposal, REPORT_NODES_MAX, REPORTS_TOTAL_MAX};

/// Requests waiting for the next entry (in the channel, and again in [`Pending`]).
const QUEUE_MAX: usize = 8_192;

/// Entries of reports being committed at once, at most.
const IN_FLIGHT_MAX: usize = 4;

struct Waiting {
    reports: NodeReports,
    answer: oneshot::Sender<Result<(), Status>>,
}

/// Where the API hands reports to the batcher task of this scheduler.
#[derive(Clone)]
pub struct ReportBatcher {
    queue: mpsc::Sender<Waiting>,
}

impl ReportBatcher {
    /// Starts the batcher task; it ends when every handle is dropped.
    pub fn start(replica: Arc<Replica>) -> Self {
        let (queue, waiting) = mpsc::channel(QUEUE_MAX);
        tokio::spawn(run(replica, waiting));
        ReportBatcher { queue }
    }

    /// Commits `reports` (validated by the caller) with whatever else is waiting; answers once
    /// they are committed and applied.
    pub async fn report(&self, reports: NodeReports) -> Result<(), Status> {
        let (answer, answered) = oneshot::channel();
        self.queue
            .send(Waiting { reports, answer })
            .await
            .map_err(|_| Status::unavailable("this scheduler is shutting down"))?;
        answered
            .await
            .map_err(|_| Status::unavailable("this scheduler is shutting down"))?
    }
}

/// The requests not yet in an entry, and the nodes with reports in entries in flight: which
/// requests go into the next entry. Pure bookkeeping.
#[derive(Default)]
struct Pending {
    /// In arrival order.
    queue: VecDeque<Waiting>,
    /// Node -> how many of its requests are in entries being committed.
    busy: HashMap<String, usize>,
}

impl Pending {
    fn push(&mut self, waiting: Waiting) {
        self.queue.push_back(waiting);
    }

    /// The next entry's requests, in arrival order, within the bounds of one entry. A request
    /// whose node has reports in flight stays queued, and so does every later one of that node
    /// (a node's reports are applied in the order they came). Marks the nodes taken as busy.
    fn next_batch(&mut self) -> Vec<Waiting> {
        let mut batch = Vec::new();
        let mut total = 0;
        let mut kept = VecDeque::new();
        let mut held = HashSet::new();
        while let Some(w) = self.queue.pop_front() {
            let node = &w.reports.node;
            let fits = batch.is_empty()
                || (batch.len() < REPORT_NODES_MAX
                    && total + w.reports.reports.len() <= REPORTS_TOTAL_MAX);
            if !fits || held.contains(node) || self.busy.contains_key(node) {
                held.insert(node.clone());
                kept.push_back(w);
                continue;
            }
            total += w.reports.reports.len();
            batch.push(w);
        }
        self.queue = kept;
        for w in &batch {
            *self.busy.entry(w.reports.node.clone()).or_default() += 1;
        }
        batch
    }

    /// An entry holding these nodes' requests was committed (or failed).
    fn done(&mut self, nodes: &[String]) {
        for node in nodes {
            if let Some(n) = self.busy.get_mut(node) {
                *n -= 1;
                if *n == 0 {
                    self.busy.remove(node);
                }
            }
        }
    }
}

async fn run(replica: Arc<Replica>, mut waiting: mpsc::Receiver<Waiting>) {
    let mut pending = Pending::default();
    let mut commits = JoinSet::new();
    let mut carried: HashMap<tokio::task::Id, Vec<String>> = HashMap::new();
    let mut open = true;
    loop {
        while pending.queue.len() < QUEUE_MAX {
            let Ok(next) = waiting.try_recv() else {
                break;
            };
            pending.push(next);
        }
        if commits.len() < IN_FLIGHT_MAX {
            let batch = pending.next_batch();
            if !batch.is_empty() {
                let nodes: Vec<String> = batch.iter().map(|w| w.reports.node.clone()).collect();
                let replica = replica.clone();
                let task = commits.spawn(async move { commit(&replica, batch).await });
                carried.insert(task.id(), nodes);
                continue;
            }
        }
        if !open && commits.is_empty() && pending.queue.is_empty() {
            return;
        }
        tokio::select! {
            next = waiting.recv(), if open && pending.queue.len() < QUEUE_MAX => match next {
                Some(w) => pending.push(w),
                None => open = false,
            },
            Some(done) = commits.join_next_with_id(), if !commits.is_empty() => {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(e) => e.id(),
                };
                pending.done(&carried.remove(&id).unwrap_or_default());
            }
            else => return,
        }
    }
}

/// Proposes one `ReportMany` and answers each request with its own node's outcome.
async fn commit(replica: &Replica, batch: Vec<Waiting>) {
    let (nodes, answers): (Vec<NodeReports>, Vec<_>) =
        batch.into_iter().map(|w| (w.reports, w.answer)).unzip();
    let (count, reports) = (
        nodes.len(),
        nodes.iter().map(|n| n.reports.len()).sum::<usize>(),
    );
    let started = std::time::Instant::now();
    let proposed = propose(replica, Proposal::ReportMany { nodes }).await;
    tracing::debug!(
        nodes = count,
        reports,
        commit_ms = started.elapsed().as_millis() as u64,
        ok = proposed.is_ok(),
        "agents' reports committed"
    );
    match proposed {
        Ok((_, Outcome::ReportsApplied { per_node })) => {
            for (answer, outcome) in answers.into_iter().zip(per_node) {
                let _ = answer.send(match outcome {
                    Outcome::Rejected(r) => Err(rejection_status(r)),
                    _ => Ok(()),
                });
            }
        }
        Ok((_, other)) => {
            let status = Status::internal(format!("unexpected outcome {other:?}"));
            for answer in answers {
                let _ = answer.send(Err(status.clone()));
            }
        }
        Err(status) => {
            for answer in answers {
                let _ = answer.send(Err(status.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{AllocReport, AllocStatus};

    fn request(node: &str, reports: usize) -> (Waiting, oneshot::Receiver<Result<(), Status>>) {
        let (answer, answered) = oneshot::channel();
        let reports = (0..reports)
            .map(|i| AllocReport {
                id: format!("{node}-{i}"),
                status: AllocStatus::Running,
                exit_code: None,
                reason: String::new(),
                restarts: 0,
            })
            .collect();
        let reports = NodeReports {
            node: node.into(),
            reports,
        };
        (Waiting { reports, answer }, answered)
    }

    fn nodes(batch: &[Waiting]) -> Vec<&str> {
        batch.iter().map(|w| w.reports.node.as_str()).collect()
    }

    #[test]
    fn a_nodes_reports_wait_while_an_earlier_one_is_in_flight() {
        let mut p = Pending::default();
        let mut keep = Vec::new();
        for node in ["a", "b"] {
            let (w, rx) = request(node, 1);
            p.push(w);
            keep.push(rx);
        }
        let first = p.next_batch();
        assert_eq!(nodes(&first), ["a", "b"]);
        // a reports again (a retry) and again, c for the first time: c goes, a waits.
        for node in ["a", "c", "a"] {
            let (w, rx) = request(node, 1);
            p.push(w);
            keep.push(rx);
        }
        assert_eq!(nodes(&p.next_batch()), ["c"]);
        assert!(p.next_batch().is_empty(), "a is still in flight");
        p.done(&["a".into(), "b".into()]);
        // Both of a's requests, in the order they came, in one entry.
        assert_eq!(nodes(&p.next_batch()), ["a", "a"]);
        assert!(p.queue.is_empty());
        p.done(&["a".into(), "a".into(), "c".into()]);
        assert!(p.busy.is_empty());
    }

    #[test]
    fn an_entry_stays_within_its_bounds_and_keeps_arrival_order() {
        let mut p = Pending::default();
        let mut keep = Vec::new();
        let per = REPORTS_TOTAL_MAX / 3 + 1;
        for node in ["a", "b", "c", "d"] {
            let (w, rx) = request(node, per);
            p.push(w);
            keep.push(rx);
        }
        // Two fit; the third would pass REPORTS_TOTAL_MAX: it and d wait for the next entry.
        assert_eq!(nodes(&p.next_batch()), ["a", "b"]);
        assert_eq!(nodes(&p.next_batch()), ["c", "d"]);
        // One request alone always goes, whatever its size.
        let (w, _rx) = request("e", REPORTS_TOTAL_MAX);
        p.push(w);
        assert_eq!(nodes(&p.next_batch()), ["e"]);
        let mut many = Vec::new();
        for i in 0..REPORT_NODES_MAX + 1 {
            let (w, rx) = request(&format!("n{i}"), 1);
            p.push(w);
            many.push(rx);
        }
        assert_eq!(p.next_batch().len(), REPORT_NODES_MAX);
        assert_eq!(nodes(&p.next_batch()), [format!("n{REPORT_NODES_MAX}")]);
    }
}
