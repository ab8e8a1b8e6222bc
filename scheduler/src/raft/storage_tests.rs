//! Storage conformance and durability tests: openraft's own storage test suite run against the
//! redb log store and state machine, plus restart tests that reopen the files and check that
//! everything acknowledged is still there.

use openraft::storage::{IOFlushed, RaftLogStorage, RaftStateMachine};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::testing::log_id;
use openraft::type_config::TypeConfigExt;
use openraft::{EntryPayload, RaftLogReader, RaftSnapshotBuilder, StorageError};

use super::log_store::LogStore;
use super::state_machine::StateMachineStore;
use super::{Entry, TypeConfig, Vote};
use crate::state::{Command, DeploymentSpec, Proposal};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = LogStore::open(dir.path()).expect("log store");
        let sm = StateMachineStore::open(dir.path()).expect("state machine");
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite() {
    Suite::test_all(Builder).await.unwrap();
}

fn deploy(index: u64, name: &str) -> Entry {
    let spec = DeploymentSpec {
        name: name.into(),
        model: "m".into(),
        replicas: 1,
        ..Default::default()
    };
    let command = Command {
        at_ms: 1,
        proposal: Proposal::ApplyDeployment {
            spec: Box::new(spec),
            expected_generation: None,
        },
    };
    Entry {
        log_id: log_id::<TypeConfig>(1, 1, index),
        payload: EntryPayload::Normal(command),
    }
}

/// What `append` acknowledges through its callback, and what `save_vote` returned for, is on
/// disk: reopening the files finds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_appends_and_votes_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = LogStore::open(dir.path()).unwrap();
        log.save_vote(&Vote::new(3, 2)).await.unwrap();
        let (tx, rx) = TypeConfig::oneshot();
        log.append(
            (1..=5).map(|i| deploy(i, &format!("d{i}"))),
            IOFlushed::signal(tx),
        )
        .await
        .unwrap();
        rx.await.unwrap().expect("flush acknowledged");
        log.truncate_after(Some(log_id::<TypeConfig>(1, 1, 4)))
            .await
            .unwrap();
        log.purge(log_id::<TypeConfig>(1, 1, 2)).await.unwrap();
    }
    let mut log = LogStore::open(dir.path()).unwrap();
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 2)));
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(2));
    assert_eq!(state.last_log_id.map(|l| l.index), Some(4));
    let entries = log.try_get_log_entries(0..10).await.unwrap();
    assert_eq!(
        entries.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
        vec![3, 4]
    );
}

/// A snapshot written by the builder is what a restarted state machine starts from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_machine_restarts_from_its_last_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let expected = {
        let mut sm = StateMachineStore::open(dir.path()).unwrap();
        let entries = (1..=3).map(|i| Ok((deploy(i, &format!("d{i}")), None)));
        sm.apply(futures::stream::iter(entries)).await.unwrap();
        let snapshot = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_eq!(snapshot.meta.last_log_id.map(|l| l.index), Some(3));
        crate::state::encode(&sm.read().state)
    };
    let mut sm = StateMachineStore::open(dir.path()).unwrap();
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied.map(|l| l.index), Some(3));
    assert_eq!(crate::state::encode(&sm.read().state), expected);
    assert!(sm.get_current_snapshot().await.unwrap().is_some());
}
