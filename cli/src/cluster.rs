//! `sovctl cluster ...`: membership and health of the scheduler Raft group, through
//! `sov.v1.ClusterService`. Each function makes its call(s) and prints the answer; routing and
//! retries belong to `client`, rendering to `output`.

use std::time::Duration;

use sov_proto::v1::cluster_service_client::ClusterServiceClient;
use sov_proto::v1::{ClusterStatusRequest, JoinRequest, MembersRequest, RemoveRequest};

use crate::client::{CallOpts, Client, read_consistency};
use crate::output::{self, ClusterStatusView, Format, MembersView};

/// Joining waits for the new node to copy the log (or a snapshot) before it can vote; on a busy
/// cluster that takes far longer than an ordinary call.
const JOIN_TIMEOUT_MIN: Duration = Duration::from_secs(120);

pub async fn status(client: &mut Client, format: Format) -> anyhow::Result<()> {
    let answer = client
        .call(ClusterStatusRequest {}, |ch, req| async move {
            ClusterServiceClient::new(ch).status(req).await
        })
        .await?;
    output::emit(
        format,
        &ClusterStatusView::from(answer),
        output::status_text,
    )
}

pub async fn members(client: &mut Client, format: Format, stale: bool) -> anyhow::Result<()> {
    let req = MembersRequest {
        consistency: read_consistency(stale),
    };
    let answer = client
        .call(req, |ch, req| async move {
            ClusterServiceClient::new(ch).members(req).await
        })
        .await?;
    output::emit(format, &MembersView::from(answer), |v| {
        output::members_table(&v.members, v.leader_id)
    })
}

pub async fn join(client: &mut Client, format: Format, req: JoinRequest) -> anyhow::Result<()> {
    let id = req.id;
    eprintln!("adding scheduler {id} as learner, waiting for it to catch up…");
    let opts = CallOpts {
        timeout: client.ordinary().timeout.max(JOIN_TIMEOUT_MIN),
        // A join that outlives the deadline is most likely still copying the log; sending it
        // again elsewhere would only start a second wait.
        retry_timeouts: false,
    };
    let answer = client
        .call_with(opts, req, |ch, req| async move {
            ClusterServiceClient::new(ch).join(req).await
        })
        .await?;
    output::emit(format, &MembersView::from(answer), |v| {
        let membership = match v.members.iter().find(|m| m.id == id) {
            Some(m) if m.voter => "as a voter",
            Some(_) => "as a learner",
            None => "(not yet listed as a member)",
        };
        format!(
            "scheduler {id} joined {membership}\n\n{}",
            output::members_table(&v.members, v.leader_id)
        )
    })
}

pub async fn remove(client: &mut Client, format: Format, id: u64) -> anyhow::Result<()> {
    let answer = client
        .call(RemoveRequest { id }, |ch, req| async move {
            ClusterServiceClient::new(ch).remove(req).await
        })
        .await?;
    output::emit(format, &MembersView::from(answer), |v| {
        format!(
            "scheduler {id} removed\n\n{}",
            output::members_table(&v.members, v.leader_id)
        )
    })
}
