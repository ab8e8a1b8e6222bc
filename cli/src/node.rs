//! `sovctl node ...`: the GPU machines agents registered, through `sov.v1.NodeService`. Each
//! function makes its call and prints the answer; routing and retries belong to `client`,
//! rendering to `output::node`.

use std::time::Duration;

use sov_proto::v1::node_service_client::NodeServiceClient;
use sov_proto::v1::{DrainNodeRequest, GetNodeRequest, ListNodesRequest, UndrainNodeRequest};

use crate::client::{Client, read_consistency};
use crate::duration::DRAIN_DEADLINE_MAX;
use crate::output::node::{self as out, NodeListView, NodeView};
use crate::output::{self, Format, now_ms};
use crate::policy::wait_for_progress;

/// Largest answer accepted: a fleet of thousands of nodes with eight GPUs each is a few MiB,
/// more than tonic's default of 4 MiB allows.
const RESPONSE_BYTES_MAX: usize = 64 * 1024 * 1024;

pub async fn list(client: &mut Client, format: Format, stale: bool) -> anyhow::Result<()> {
    let req = ListNodesRequest {
        consistency: read_consistency(stale),
    };
    let answer = client
        .call(req, |ch, req| async move {
            NodeServiceClient::new(ch)
                .max_decoding_message_size(RESPONSE_BYTES_MAX)
                .list(req)
                .await
        })
        .await?;
    let view = NodeListView::from(answer);
    if format == Format::Table && view.nodes.is_empty() {
        eprintln!("no nodes registered; a node appears here once its sov-agent registers it");
        return Ok(());
    }
    output::emit(format, &view, |v| out::nodes_table(&v.nodes, now_ms()))
}

pub async fn show(
    client: &mut Client,
    format: Format,
    name: String,
    stale: bool,
) -> anyhow::Result<()> {
    let req = GetNodeRequest {
        name,
        consistency: read_consistency(stale),
    };
    let answer = client
        .call(req, |ch, req| async move {
            NodeServiceClient::new(ch).get(req).await
        })
        .await?;
    output::emit(format, &NodeView::from(answer), |n| {
        out::node_text(n, now_ms())
    })
}

/// How `node drain` treats the replicas on the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainReplicas {
    /// Move them make-before-break; each is stopped by this deadline (`None`: the scheduler's
    /// default, 1 hour) whether or not its replacement runs.
    Move { deadline: Option<Duration> },
    /// Stop them at once (`--force`); the scheduler places replacements elsewhere.
    StopNow,
}

/// Drains node `name`; with `wait` (the timeout), then watches the cluster carry the drain
/// out, and returns the exit code of the watch.
pub async fn drain(
    client: &mut Client,
    format: Format,
    name: String,
    replicas: DrainReplicas,
    wait: Option<Duration>,
) -> anyhow::Result<u8> {
    let (deadline_ms, force) = match replicas {
        DrainReplicas::Move { deadline } => {
            let ms = deadline.map_or(0, |d| {
                assert!(
                    !d.is_zero() && d <= DRAIN_DEADLINE_MAX,
                    "the flag parser bounds the deadline"
                );
                d.as_millis() as u64
            });
            (ms, false)
        }
        // The scheduler refuses a deadline with force: stopping at once has none.
        DrainReplicas::StopNow => (0, true),
    };
    let req = DrainNodeRequest {
        name: name.clone(),
        deadline_ms,
        force,
    };
    let answer = client
        .call(req, |ch, req| async move {
            NodeServiceClient::new(ch).drain(req).await
        })
        .await?;
    let view = NodeView::from(answer);
    let line = |n: &NodeView| out::drain_line(n, force, now_ms());
    let Some(timeout) = wait else {
        output::emit(format, &view, line)?;
        return Ok(0);
    };
    output::emit_line(format, &view, line)?;
    wait_for_progress(client, format, timeout, format!("the drain of node {name}")).await
}

pub async fn undrain(client: &mut Client, format: Format, name: String) -> anyhow::Result<()> {
    let answer = client
        .call(UndrainNodeRequest { name }, |ch, req| async move {
            NodeServiceClient::new(ch).undrain(req).await
        })
        .await?;
    output::emit(format, &NodeView::from(answer), out::undrain_line)
}
