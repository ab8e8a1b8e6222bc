//! Group commit of agents' status reports: the reports of every node that arrive while one
//! commit is in flight go into the next `ReportMany` entry together.
//!
//! Why: each Raft command costs about 230 µs of CPU across the cluster (docs/benchmarks.md,
//! raft_commit), whatever its size. When a rule change stops replicas on 2,000 nodes, their
//! agents report within milliseconds of each other: 2,000 commands alone would take half a
//! second of CPU, and they arrive just when the leader is busiest placing replacements. Batched,
//! they are a handful of entries. A lone report still commits at once (no timer waits for
//! company): batches form only while a commit is in flight.
//!
//! Bounds: at most `QUEUE_MAX` requests wait (further callers wait for room: back-pressure,
//! nothing dropped), and one entry carries at most `REPORT_NODES_MAX` nodes and
//! `REPORTS_TOTAL_MAX` reports. Each request is validated before it joins a batch, and each
//! node's reports are applied (or refused) on their own, so one bad request fails alone.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tonic::Status;

use super::{propose, rejection_status};
use crate::raft::Replica;
use crate::state::{NodeReports, Outcome, Proposal, REPORT_NODES_MAX, REPORTS_TOTAL_MAX};

/// Requests waiting for the next entry.
const QUEUE_MAX: usize = 8_192;

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

async fn run(replica: Arc<Replica>, mut waiting: mpsc::Receiver<Waiting>) {
    while let Some(first) = waiting.recv().await {
        let mut total = first.reports.reports.len();
        let mut batch = vec![first];
        while batch.len() < REPORT_NODES_MAX {
            let Ok(next) = waiting.try_recv() else {
                break;
            };
            if total + next.reports.reports.len() > REPORTS_TOTAL_MAX {
                // Full: it opens the next entry.
                commit(&replica, std::mem::replace(&mut batch, vec![next])).await;
                total = batch[0].reports.reports.len();
                continue;
            }
            total += next.reports.reports.len();
            batch.push(next);
        }
        commit(&replica, batch).await;
    }
}

/// Proposes one `ReportMany` and answers each request with its own node's outcome.
async fn commit(replica: &Replica, batch: Vec<Waiting>) {
    let (nodes, answers): (Vec<NodeReports>, Vec<_>) =
        batch.into_iter().map(|w| (w.reports, w.answer)).unzip();
    match propose(replica, Proposal::ReportMany { nodes }).await {
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
