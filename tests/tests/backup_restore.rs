//! Backup and restore of a whole cluster, with the real binaries: `sovctl cluster snapshot
//! save` against a live three-scheduler cluster, `sov-scheduler restore` into a new, empty data
//! dir, one scheduler started on it and two more joining with empty data dirs; the new cluster
//! holds the saved state (same state hash and revision, same deployments and policy versions)
//! and takes writes. A cluster without a majority still gives a `--stale` backup. Bad input (a damaged file, a data dir that is not empty or is in use)
//! fails with a clear message and changes nothing.
//!
//! The state hash compared here is `ClusterStatus.state_sha256`, which covers the placement
//! history's head (size and Merkle frontier).

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;
use sov_e2e::{
    Cluster, FORM_TIMEOUT, Scheduler, Start, Timeline, bin, deployment_names, history_events,
    repo_path, sovctl, state_fingerprint, u64_field, wait_same_state, write_spec,
};

/// Runs `sov-scheduler restore` for `node`, with `extra` flags.
fn restore(node: &Scheduler, snapshot: &Path, extra: &[&str]) -> Output {
    Command::new(bin("sov-scheduler"))
        .arg("restore")
        .arg("--snapshot")
        .arg(snapshot)
        .args(["--node-id", &node.id.to_string()])
        .arg("--data-dir")
        .arg(&node.data_dir)
        .args(["--api-listen", &node.api_addr()])
        .args(["--raft-listen", &node.raft_addr()])
        .args(["--http-listen", &node.http_addr()])
        .args(extra)
        .env_remove("SOV_CONFIG")
        .output()
        .expect("cannot run sov-scheduler restore")
}

fn text(out: &Output) -> String {
    format!(
        "{}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every scheduler's endpoint, one string each.
fn each(cluster: &Cluster) -> Vec<String> {
    cluster.nodes.iter().map(Scheduler::endpoint).collect()
}

/// `sovctl cluster snapshot save FILE` (with `--stale` when asked), its JSON report.
fn save_snapshot(endpoints: &str, file: &Path, stale: bool) -> Value {
    let mut args = vec!["-o", "json", "cluster", "snapshot", "save"];
    if stale {
        args.push("--stale");
    }
    args.push(file.to_str().unwrap());
    sovctl(endpoints, &args).json()
}

fn policy_versions(endpoints: &str) -> Value {
    sovctl(endpoints, &["-o", "json", "policy", "list"]).json()["versions"].clone()
}

#[test]
fn a_saved_snapshot_restores_a_new_cluster_with_the_same_state() {
    let tl = Timeline::new();
    let old = Cluster::start(3, tl);
    let endpoints = old.endpoints();
    let bundle = repo_path("deploy/policies");
    sovctl(&endpoints, &["policy", "apply", bundle.to_str().unwrap()]).assert_ok();
    let scratch = old.scratch();
    for (name, replicas) in [("alpha", 1), ("beta", 2), ("gamma", 3)] {
        let spec = write_spec(&scratch, name, "sov/tiny", replicas);
        sovctl(
            &endpoints,
            &["deploy", "apply", "-f", spec.to_str().unwrap()],
        )
        .assert_ok();
    }
    let before = wait_same_state(&each(&old), FORM_TIMEOUT);
    let deployments =
        deployment_names(&sovctl(&endpoints, &["-o", "json", "deploy", "list"]).json());
    let policies = policy_versions(&endpoints);
    tl.log(format_args!(
        "old cluster: policy + {} deployments, state {before:?}",
        deployments.len()
    ));

    let file = scratch.join("cluster.snap");
    let saved = save_snapshot(&endpoints, &file, false);
    tl.log(format_args!("saved {}: {saved}", file.display()));
    assert_eq!(saved["state_sha256"], before.0.as_str(), "{saved}");
    assert_eq!(u64_field(&saved, "state_revision"), before.1, "{saved}");
    assert!(u64_field(&saved, "last_log_index") >= before.1, "{saved}");
    assert!(
        !file.with_extension("snap.partial").exists(),
        "no partial file left"
    );

    // A new cluster in new directories, on new ports; scheduler 1 is seeded from the file.
    let root = tempfile::Builder::new()
        .prefix("sov-e2e-restored-")
        .tempdir()
        .expect("tempdir");
    let mut first = Scheduler::prepare(1, root.path(), Start::Plain, &[]);

    let mut damaged = std::fs::read(&file).unwrap();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x01;
    let damaged_file = root.path().join("damaged.snap");
    std::fs::write(&damaged_file, &damaged).unwrap();
    let out = restore(&first, &damaged_file, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the file is damaged"),
        "{}",
        text(&out)
    );
    assert!(
        std::fs::read_dir(&first.data_dir).map_or(true, |mut d| d.next().is_none()),
        "a refused restore wrote nothing"
    );
    tl.log("a damaged snapshot is refused and nothing is written");

    let out = restore(&first, &file, &[]);
    assert!(out.status.success(), "{}", text(&out));
    tl.log(format_args!(
        "restored: {}",
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("")
    ));
    first.restart();
    first.wait_ready(FORM_TIMEOUT);
    assert_eq!(
        state_fingerprint(&first.endpoint()).expect("state of the restored scheduler"),
        before,
        "the restored state differs"
    );
    let join = first.api_addr();
    let mut new = Cluster {
        nodes: vec![first],
        root,
        timeline: tl,
    };
    for id in [2, 3] {
        let node = Scheduler::start_with(id, new.root.path(), Start::Join(join.clone()), &[]);
        new.nodes.push(node);
    }
    let status = new.wait_formed(3);
    tl.log(format_args!(
        "restored cluster formed: leader {}, term {}",
        status["leader_id"], status["term"]
    ));

    // Joining records who added each scheduler in the history: the state moves on from there,
    // the same on every scheduler.
    let joined = wait_same_state(&each(&new), FORM_TIMEOUT);
    assert!(joined.1 > before.1, "{joined:?}");
    let new_endpoints = new.endpoints();
    let joins = history_events(&new_endpoints, &["--kind", "cluster.membership-changed"]).len();
    assert!(
        joins >= 4,
        "two joins of the old cluster and two of the new one: {joins}"
    );
    assert_eq!(status["cluster_id"], saved["cluster_id"], "{status}");
    assert_eq!(
        deployment_names(&sovctl(&new_endpoints, &["-o", "json", "deploy", "list"]).json()),
        deployments
    );
    assert_eq!(policy_versions(&new_endpoints), policies);
    tl.log("state hash, revision, deployments and policy versions are those saved");

    let spec = write_spec(&new.scratch(), "delta", "sov/tiny", 1);
    sovctl(
        &new_endpoints,
        &["deploy", "apply", "-f", spec.to_str().unwrap()],
    )
    .assert_ok();
    let after = wait_same_state(&each(&new), FORM_TIMEOUT);
    assert!(
        after.1 > before.1,
        "the log goes on after the restore: {after:?}"
    );
    tl.log(format_args!("a new write lands at revision {}", after.1));

    // The seeded data dir is now in use: a second restore must not touch it.
    let out = restore(&new.nodes[0], &file, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not empty"),
        "{}",
        text(&out)
    );
    let out = restore(&new.nodes[0], &file, &["--force"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in use by another process"),
        "{}",
        text(&out)
    );
    new.nodes[0].assert_running();
    assert_eq!(
        wait_same_state(&each(&new), FORM_TIMEOUT),
        after,
        "the refused restores changed nothing"
    );
    tl.log("restoring over a non-empty dir is refused; with --force while it runs, too");

    // A cluster that lost its majority still yields a backup of what one scheduler applied.
    let mut old = old;
    old.node(2).kill();
    old.node(3).kill();
    let survivor = old.node(1).endpoint();
    let stale = save_snapshot(&survivor, &scratch.join("stale.snap"), true);
    assert_eq!(stale["state_sha256"], before.0.as_str(), "{stale}");
    tl.log("with two of three schedulers dead, --stale saves the survivor's state");
}
