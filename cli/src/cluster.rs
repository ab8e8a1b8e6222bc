//! `sovctl cluster ...`: membership and health of the scheduler Raft group, and backups
//! (`snapshot save`), through `sov.v1.ClusterService`. Each function makes its call(s) and
//! prints the answer; routing and retries belong to `client`, rendering to `output`, the
//! snapshot file's layout to `sov_proto::snapshot_file`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use sov_proto::snapshot_file::{self, DATA_BYTES_MAX};
use sov_proto::v1::cluster_service_client::ClusterServiceClient;
use sov_proto::v1::{
    ClusterSnapshotHeader, ClusterSnapshotRequest, ClusterStatusRequest, JoinRequest,
    MembersRequest, RemoveRequest,
};
use tonic::Status;

use crate::atomic_file::AtomicFile;
use crate::client::{CallOpts, Client, read_consistency};
use crate::output::{self, ClusterStatusView, Format, MembersView};

/// Joining waits for the new node to copy the log (or a snapshot) before it can vote; on a busy
/// cluster that takes far longer than an ordinary call.
const JOIN_TIMEOUT_MIN: Duration = Duration::from_secs(120);
/// A snapshot is built, then streamed: up to a gigabyte over a slow link takes minutes.
const SNAPSHOT_TIMEOUT_MIN: Duration = Duration::from_secs(600);
/// The stream's messages are 1 MiB of data plus framing; allow some headroom.
const SNAPSHOT_MESSAGE_BYTES_MAX: usize = 4 * 1024 * 1024;

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

/// What `cluster snapshot save` reports (also its `-o json` document).
#[derive(Debug, Serialize)]
struct SnapshotSavedView {
    file: PathBuf,
    cluster_id: String,
    node_id: u64,
    last_log_index: u64,
    last_log_term: u64,
    data_bytes: u64,
    data_sha256: String,
    state_sha256: String,
    state_revision: u64,
}

/// Shows how much of the snapshot has arrived, on stderr, only when it is a terminal.
struct Progress {
    on_terminal: bool,
}

impl Progress {
    fn show(&self, received: usize, total: u64) {
        if self.on_terminal {
            let mib = |b: f64| b / (1024.0 * 1024.0);
            eprint!(
                "\rreceiving snapshot: {:.1} / {:.1} MiB",
                mib(received as f64),
                mib(total as f64)
            );
        }
    }

    fn done(&self) {
        if self.on_terminal {
            eprintln!();
        }
    }
}

/// Reads the whole `Snapshot` stream: the header, then data up to the length it announces.
async fn receive_snapshot(
    mut stream: tonic::Streaming<sov_proto::v1::ClusterSnapshotChunk>,
    progress: &Progress,
) -> Result<(ClusterSnapshotHeader, Vec<u8>), Status> {
    let header = stream
        .message()
        .await?
        .and_then(|chunk| chunk.header)
        .ok_or_else(|| Status::internal("the snapshot stream did not start with a header"))?;
    if header.data_bytes > DATA_BYTES_MAX {
        return Err(Status::resource_exhausted(format!(
            "the snapshot is {} bytes; sovctl saves at most {DATA_BYTES_MAX}",
            header.data_bytes
        )));
    }
    let mut data = Vec::with_capacity(header.data_bytes as usize);
    while let Some(chunk) = stream.message().await? {
        data.extend_from_slice(&chunk.data);
        if data.len() as u64 > header.data_bytes {
            return Err(Status::data_loss(format!(
                "the scheduler sent more than the {} bytes it announced",
                header.data_bytes
            )));
        }
        progress.show(data.len(), header.data_bytes);
    }
    Ok((header, data))
}

/// Writes the snapshot file through `AtomicFile`, so `file` is never a partial snapshot, even
/// after a crash.
fn write_atomically(
    file: &Path,
    header: &ClusterSnapshotHeader,
    data: &[u8],
) -> anyhow::Result<()> {
    let write = || -> std::io::Result<()> {
        let mut out = AtomicFile::create(file)?;
        out.write_all(&snapshot_file::encode_prefix(header))?;
        out.write_all(data)?;
        out.commit()
    };
    write().with_context(|| format!("cannot write the snapshot to {}", file.display()))
}

pub async fn snapshot_save(
    client: &mut Client,
    format: Format,
    file: &Path,
    stale: bool,
) -> anyhow::Result<()> {
    let req = ClusterSnapshotRequest {
        consistency: read_consistency(stale),
    };
    let opts = CallOpts {
        timeout: client.ordinary().timeout.max(SNAPSHOT_TIMEOUT_MIN),
        // A slow transfer is still a transfer; starting it again elsewhere only doubles the load.
        retry_timeouts: false,
    };
    let progress = Progress {
        on_terminal: std::io::stderr().is_terminal(),
    };
    let progress = &progress;
    let (header, data) = client
        .call_with(opts, req, |ch, req| async move {
            let stream = ClusterServiceClient::new(ch)
                .max_decoding_message_size(SNAPSHOT_MESSAGE_BYTES_MAX)
                .snapshot(req)
                .await?
                .into_inner();
            receive_snapshot(stream, progress)
                .await
                .map(tonic::Response::new)
        })
        .await?;
    progress.done();
    snapshot_file::check_data(&header, &data)
        .context("the snapshot received does not match its header")?;
    write_atomically(file, &header, &data)?;
    let view = SnapshotSavedView {
        file: file.to_owned(),
        cluster_id: header.cluster_id,
        node_id: header.node_id,
        last_log_index: header.last_log_index,
        last_log_term: header.last_log_term,
        data_bytes: header.data_bytes,
        data_sha256: header.data_sha256,
        state_sha256: header.state_sha256,
        state_revision: header.state_revision,
    };
    output::emit(format, &view, |v| {
        format!(
            "saved a snapshot of cluster {} to {}\n  from scheduler {}, up to log index {} (term {})\n  {} bytes, sha256 {}\n  state sha256 {} at revision {}\nrestore with: sov-scheduler restore --snapshot {} --data-dir DIR …\n",
            v.cluster_id,
            v.file.display(),
            v.node_id,
            v.last_log_index,
            v.last_log_term,
            v.data_bytes,
            v.data_sha256,
            v.state_sha256,
            v.state_revision,
            v.file.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_file_is_written_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let data = b"{\"state\":{}}";
        let header = ClusterSnapshotHeader {
            last_log_index: 9,
            data_bytes: data.len() as u64,
            data_sha256: snapshot_file::sha256_hex(data),
            ..Default::default()
        };
        let file = dir.path().join("backup.snap");
        std::fs::write(&file, b"the previous backup").unwrap();
        write_atomically(&file, &header, data).unwrap();
        let written = std::fs::read(&file).unwrap();
        let (back, back_data) = snapshot_file::parse(&written).unwrap();
        assert_eq!((back, back_data), (header.clone(), &data[..]));
        assert!(!dir.path().join("backup.snap.partial").exists());

        let missing = dir.path().join("no-such-dir").join("backup.snap");
        let err = write_atomically(&missing, &header, data).unwrap_err();
        assert!(
            format!("{err:#}").starts_with("cannot write the snapshot to"),
            "{err:#}"
        );
    }
}
