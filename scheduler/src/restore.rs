//! `sov-scheduler restore`: seeds an empty data dir from a snapshot file
//! (`sovctl cluster snapshot save`), so that one scheduler started on it leads a new cluster
//! holding exactly the saved state; the other schedulers join it with empty data dirs.
//!
//! Owns: checking a snapshot file completely before anything is written (framing, checksums,
//! that the state decodes and hashes to what the header says), refusing to touch a data dir
//! that holds anything unless told to, and writing the two redb files a scheduler starts from.
//!
//! What the seeded data dir holds, through the same storage code a running scheduler uses:
//! the snapshot, installed as the state machine's snapshot, with a membership of this one
//! scheduler as the only voter (at its advertised addresses); a log purged up to the
//! snapshot's last log id; and a vote in that log id's term, so the first election starts a
//! later term and the new leader's entries follow the snapshot's. Log indexes continue where
//! the backup ended, so state revisions keep growing and agents resume normally.
//!
//! Files are written in `<data dir>/.restore-<pid>/` and renamed into place at the end: a
//! failure leaves the data dir as it was. With `--force` the files already there are moved
//! into `<data dir>/pre-restore-<ms>/`, never deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use sov_proto::snapshot_file::{self, DATA_BYTES_MAX, HEADER_BYTES_MAX};

use crate::api::cluster::state_fingerprint;
use crate::config::{Config, RunArgs};
use crate::raft::log_store::LogStore;
use crate::raft::state_machine::{StateMachineStore, snapshot_state};
use crate::raft::{NodeId, SnapshotMeta, SovNode, StoredMembership, Vote, now_ms};

/// The files a scheduler keeps in its data dir (see `crate::raft`).
const DATA_FILES: [&str; 3] = ["history.redb", "raft-log.redb", "raft-state.redb"];
/// Entries a freshly made file system puts in its root; a data dir holding only these is empty.
const IGNORED_ENTRIES: [&str; 1] = ["lost+found"];

/// Flags of `sov-scheduler restore`: the snapshot, and the same settings as `run` (so the
/// restored scheduler is seeded with the id, data dir and addresses it will run with).
#[derive(Debug, Clone, Args)]
pub struct RestoreArgs {
    /// Snapshot file written by `sovctl cluster snapshot save`.
    #[arg(long, value_name = "FILE")]
    pub snapshot: PathBuf,
    /// Restore even if the data dir is not empty: its files are moved into
    /// <data dir>/pre-restore-<ms>/ first (nothing is deleted).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub run: RunArgs,
}

/// What a restore did, for the summary line and for tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub cluster_id: String,
    pub last_log_index: u64,
    pub state_sha256: String,
    pub state_revision: u64,
    /// Where the data dir's previous files went (`--force` on a non-empty dir).
    pub moved_aside: Option<PathBuf>,
}

/// `sov-scheduler restore`: restores, then says what to do next.
pub async fn run(args: RestoreArgs) -> anyhow::Result<()> {
    let config = args.run.resolve()?;
    let restored = restore(&args.snapshot, &config, args.force).await?;
    if let Some(dir) = &restored.moved_aside {
        println!("moved the data dir's previous files to {}", dir.display());
    }
    println!(
        "restored cluster {} up to log index {} into {} (state revision {}, sha256 {})\n\
         scheduler {} is its only voter, at raft {} / api {}.\n\
         next: start it with `sov-scheduler run` and the same settings (--bootstrap is not needed),\n\
         then start the other schedulers with empty data dirs and --join {}",
        restored.cluster_id,
        restored.last_log_index,
        config.data_dir.display(),
        restored.state_revision,
        restored.state_sha256,
        config.node_id,
        config.raft_advertise()?,
        config.api_advertise()?,
        config.api_advertise()?,
    );
    Ok(())
}

/// Checks `snapshot` and seeds `config.data_dir` from it; see the module documentation.
pub async fn restore(snapshot: &Path, config: &Config, force: bool) -> anyhow::Result<Restored> {
    let file = read_file(snapshot)?;
    let (header, data) = snapshot_file::parse(&file)
        .with_context(|| format!("{} cannot be restored", snapshot.display()))?;
    let meta: SnapshotMeta = serde_json::from_str(&header.meta_json).with_context(|| {
        format!(
            "{}: the snapshot metadata is not readable",
            snapshot.display()
        )
    })?;
    let Some(last_log_id) = meta.last_log_id else {
        bail!("{}: the snapshot covers no log entry", snapshot.display());
    };
    if last_log_id.index != header.last_log_index {
        bail!(
            "{}: the header says log index {} but the metadata says {}; the file is damaged",
            snapshot.display(),
            header.last_log_index,
            last_log_id.index
        );
    }
    let state = snapshot_state(data)
        .with_context(|| format!("{}: the state does not decode", snapshot.display()))?;
    let (state_sha256, state_revision) = state_fingerprint(&state);
    if state_sha256 != header.state_sha256 || state_revision != header.state_revision {
        bail!(
            "{}: the state hashes to {state_sha256} at revision {state_revision}, but the header \
             says {} at {}; the file is damaged",
            snapshot.display(),
            header.state_sha256,
            header.state_revision
        );
    }
    let node = SovNode {
        raft_addr: config.raft_advertise()?,
        api_addr: config.api_advertise()?,
    };

    let dir = &config.data_dir;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the data dir {}", dir.display()))?;
    let existing = data_dir_entries(dir)?;
    if !existing.is_empty() && !force {
        bail!(
            "the data dir {} is not empty (it holds {}); restore into an empty dir, or pass \
             --force to move its files into {}/pre-restore-<ms>/ first",
            dir.display(),
            existing.join(", "),
            dir.display()
        );
    }
    if !existing.is_empty() {
        ensure_not_in_use(dir)?;
    }

    let staging = dir.join(format!(".restore-{}", std::process::id()));
    let seeded = seed(&staging, config.node_id, node, &meta, data.to_vec()).await;
    if let Err(e) = seeded {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e.context(format!(
            "cannot write the restored state in {}",
            dir.display()
        )));
    }
    let moved_aside = if existing.is_empty() {
        None
    } else {
        Some(move_aside(dir, &existing)?)
    };
    for name in DATA_FILES {
        std::fs::rename(staging.join(name), dir.join(name))
            .with_context(|| format!("cannot move {name} into {}", dir.display()))?;
    }
    std::fs::remove_dir_all(&staging)
        .with_context(|| format!("cannot remove {}", staging.display()))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync {}", dir.display()))?;
    tracing::info!(
        data_dir = %dir.display(),
        last_log_index = last_log_id.index,
        %state_sha256,
        "restored a snapshot"
    );
    Ok(Restored {
        cluster_id: header.cluster_id,
        last_log_index: last_log_id.index,
        state_sha256,
        state_revision,
        moved_aside,
    })
}

/// The whole file, refusing one larger than any snapshot sov writes before reading it.
fn read_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("cannot read the snapshot file {}", path.display()))?
        .len();
    let len_max = (snapshot_file::MAGIC.len() + 4 + HEADER_BYTES_MAX) as u64 + DATA_BYTES_MAX;
    if len > len_max {
        bail!(
            "{} is {len} bytes, more than any sov snapshot ({len_max}); is it the right file?",
            path.display()
        );
    }
    std::fs::read(path).with_context(|| format!("cannot read the snapshot file {}", path.display()))
}

/// Names in the data dir, except those a new file system puts there and this tool's own
/// leftover staging dirs.
fn data_dir_entries(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if !IGNORED_ENTRIES.contains(&name.as_str()) && !name.starts_with(".restore-") {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Fails if a scheduler has the data dir's databases open (they are locked while in use).
fn ensure_not_in_use(dir: &Path) -> anyhow::Result<()> {
    for name in DATA_FILES {
        let path = dir.join(name);
        if path.exists() {
            drop(crate::raft::log_store::open_db(&path).with_context(|| {
                format!("stop the scheduler that uses {} first", dir.display())
            })?);
        }
    }
    Ok(())
}

/// Moves `names` from `dir` into a new `dir/pre-restore-<ms>/`, returning that directory.
fn move_aside(dir: &Path, names: &[String]) -> anyhow::Result<PathBuf> {
    let aside = dir.join(format!("pre-restore-{}", now_ms()));
    std::fs::create_dir(&aside).with_context(|| format!("cannot create {}", aside.display()))?;
    for name in names {
        std::fs::rename(dir.join(name), aside.join(name))
            .with_context(|| format!("cannot move {name} into {}", aside.display()))?;
    }
    Ok(aside)
}

/// Writes both redb files into `staging` through the scheduler's own stores.
async fn seed(
    staging: &Path,
    id: NodeId,
    node: SovNode,
    meta: &SnapshotMeta,
    data: Vec<u8>,
) -> anyhow::Result<()> {
    let last_log_id = meta
        .last_log_id
        .context("the snapshot covers no log entry")?;
    std::fs::create_dir(staging).with_context(|| format!("cannot create {}", staging.display()))?;
    let membership =
        openraft::Membership::new(vec![BTreeSet::from([id])], BTreeMap::from([(id, node)]))?;
    let seeded_meta = SnapshotMeta {
        last_log_id: Some(last_log_id),
        last_membership: StoredMembership::new(Some(last_log_id), membership),
    };
    let mut sm = StateMachineStore::open(staging)?;
    sm.install_snapshot(&seeded_meta, data).await?;
    let mut log = LogStore::open(staging)?;
    log.save_vote(&Vote::new(last_log_id.leader_id.term, id))
        .await?;
    log.purge(last_log_id).await?;
    log.save_committed(Some(last_log_id)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{RaftTuning, Replica};
    use crate::state::{self, Command, Proposal, State};
    use sov_proto::v1::ClusterSnapshotHeader;
    use std::time::Duration;

    /// The one command of the sample state: it also records one history event.
    fn init() -> Command {
        Command {
            at_ms: 1,
            proposal: Proposal::InitCluster {
                cluster_id: "sov-restore-test".into(),
            },
        }
    }

    /// A state with a cluster id and a revision, as a backup would hold it.
    fn sample_state() -> State {
        let mut state = State::default();
        state::apply(&mut state, 41, &init());
        state
    }

    /// A snapshot file as `sovctl cluster snapshot save` writes it, of `state` at log index 41,
    /// term 3, taken from a three-scheduler cluster: the state, and the history events it counts
    /// (those of the sample state's one command).
    fn snapshot_file_of(state: &State) -> Vec<u8> {
        let mut replayed = State::default();
        state::apply(&mut replayed, 41, &init());
        let history: Vec<String> = replayed
            .journal
            .sealed
            .iter()
            .map(|r| r.json.clone())
            .collect();
        assert_eq!(history.len() as u64, state.history.size);
        // The state machine's snapshot body; `snapshot_state` reading it back checks the shape.
        let data =
            serde_json::to_vec(&serde_json::json!({ "state": state, "history": history })).unwrap();
        assert_eq!(&snapshot_state(&data).unwrap(), state);
        let log_id = crate::raft::LogId::new(
            openraft::vote::leader_id_adv::LeaderId {
                term: 3,
                node_id: 2,
            },
            41,
        );
        let nodes = (1..=3).map(|i| {
            (
                i,
                SovNode {
                    raft_addr: format!("old-{i}:7401"),
                    api_addr: format!("old-{i}:7400"),
                },
            )
        });
        let membership =
            openraft::Membership::new(vec![BTreeSet::from([1, 2, 3])], BTreeMap::from_iter(nodes))
                .unwrap();
        let meta = SnapshotMeta {
            last_log_id: Some(log_id),
            last_membership: StoredMembership::new(Some(log_id), membership),
        };
        let (state_sha256, state_revision) = state_fingerprint(state);
        let header = ClusterSnapshotHeader {
            cluster_id: state.cluster.cluster_id.clone(),
            node_id: 2,
            last_log_index: 41,
            last_log_term: 3,
            meta_json: serde_json::to_string(&meta).unwrap(),
            data_bytes: data.len() as u64,
            data_sha256: snapshot_file::sha256_hex(&data),
            state_sha256,
            state_revision,
            created_at_ms: 1,
        };
        let mut file = snapshot_file::encode_prefix(&header);
        file.extend_from_slice(&data);
        file
    }

    fn config_for(dir: &Path) -> Config {
        Config {
            node_id: 7,
            data_dir: dir.to_owned(),
            ..Config::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restored_data_dir_starts_a_one_voter_cluster_with_the_saved_state() {
        let tmp = tempfile::tempdir().unwrap();
        let state = sample_state();
        let file = tmp.path().join("backup.snap");
        std::fs::write(&file, snapshot_file_of(&state)).unwrap();
        let config = config_for(&tmp.path().join("data"));
        let restored = restore(&file, &config, false).await.unwrap();
        assert_eq!(restored.last_log_index, 41);
        assert_eq!(restored.cluster_id, "sov-restore-test");
        assert_eq!(restored.moved_aside, None);
        let mut names = data_dir_entries(&config.data_dir).unwrap();
        names.sort();
        assert_eq!(
            names,
            DATA_FILES.map(String::from).to_vec(),
            "no staging left"
        );

        let node = SovNode {
            raft_addr: config.raft_advertise().unwrap(),
            api_addr: config.api_advertise().unwrap(),
        };
        let replica = Replica::open(7, node, &config.data_dir, &RaftTuning::default(), None)
            .await
            .unwrap();
        assert_eq!(
            replica.sm.read().state,
            state,
            "the saved state, before any election"
        );
        replica
            .raft
            .wait(Some(Duration::from_secs(10)))
            .metrics(
                |m| m.current_leader == Some(7),
                "the restored scheduler leads",
            )
            .await
            .unwrap();
        let m = replica.metrics();
        assert_eq!(
            m.membership_config
                .membership()
                .voter_ids()
                .collect::<Vec<_>>(),
            vec![7]
        );
        assert!(
            m.current_term > 3,
            "a later term than the backup's: {}",
            m.current_term
        );
        let resp = replica
            .propose(Proposal::InitCluster {
                cluster_id: "ignored".into(),
            })
            .await
            .unwrap();
        assert!(
            resp.index > 41,
            "the log continues after the snapshot: {}",
            resp.index
        );
        let after = replica.sm.read().state.clone();
        assert_eq!(after.cluster.cluster_id, "sov-restore-test");
        assert_eq!(after.revision, resp.index);
        replica.raft.shutdown().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_damaged_file_or_a_used_data_dir_changes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let good = snapshot_file_of(&sample_state());
        let data_dir = tmp.path().join("data");
        let config = config_for(&data_dir);

        let mut damaged = good.clone();
        *damaged.last_mut().unwrap() ^= 0x20;
        let file = tmp.path().join("damaged.snap");
        std::fs::write(&file, &damaged).unwrap();
        let err = format!("{:#}", restore(&file, &config, true).await.unwrap_err());
        assert!(err.contains("SHA-256") && err.contains("damaged"), "{err}");
        assert!(
            data_dir_entries(&data_dir).map_or(true, |e| e.is_empty()),
            "nothing written"
        );

        std::fs::create_dir_all(&data_dir).unwrap();
        std::fs::write(data_dir.join("raft-log.redb"), b"someone's log").unwrap();
        let file = tmp.path().join("good.snap");
        std::fs::write(&file, &good).unwrap();
        let err = format!("{:#}", restore(&file, &config, false).await.unwrap_err());
        assert!(
            err.contains("not empty") && err.contains("--force"),
            "{err}"
        );
        assert_eq!(
            std::fs::read(data_dir.join("raft-log.redb")).unwrap(),
            b"someone's log"
        );
        assert_eq!(data_dir_entries(&data_dir).unwrap(), vec!["raft-log.redb"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn force_moves_the_previous_files_aside() {
        let tmp = tempfile::tempdir().unwrap();
        let data_dir = tmp.path().join("data");
        std::fs::create_dir_all(&data_dir).unwrap();
        std::fs::write(data_dir.join("notes.txt"), b"keep me").unwrap();
        let file = tmp.path().join("good.snap");
        std::fs::write(&file, snapshot_file_of(&sample_state())).unwrap();
        let restored = restore(&file, &config_for(&data_dir), true).await.unwrap();
        let aside = restored.moved_aside.expect("moved aside");
        assert_eq!(std::fs::read(aside.join("notes.txt")).unwrap(), b"keep me");
        assert!(data_dir.join("raft-state.redb").is_file());
    }
}
