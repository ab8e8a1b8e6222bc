//! Leader loss in a three-scheduler cluster under a steady stream of writes: a new leader is
//! elected, no acknowledged write is lost (I2, minority loss), writes are accepted again, and the
//! killed scheduler rejoins from its data dir and catches up.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sov_e2e::{
    Cluster, Timeline, cluster_status, deployment_names, sovctl, u64_field, wait_until, write_spec,
};

/// Acknowledged writes before the leader is killed.
const ACKS_BEFORE_KILL: usize = 10;
/// The writer stops after this many attempts after the kill, or after `WRITE_AFTER_KILL_MAX`.
const ATTEMPTS_AFTER_KILL: usize = 30;
const WRITE_AFTER_KILL_MAX: Duration = Duration::from_secs(20);
/// Generous bound on the election (timeouts are 0.6-1.2 s by default); the measured time is
/// printed, not asserted on.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug)]
struct Attempt {
    name: String,
    acknowledged: bool,
    /// When the attempt ended, in ms since the test began.
    at_ms: u128,
    took_ms: u128,
    error: String,
}

#[test]
fn leader_kill_loses_no_acknowledged_write_and_the_node_rejoins() {
    let tl = Timeline::new();
    let mut cluster = Cluster::start(3, tl);
    let endpoints = cluster.endpoints();
    let scratch = cluster.scratch();

    let attempts: Arc<Mutex<Vec<Attempt>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (attempts, stop, endpoints) = (attempts.clone(), stop.clone(), endpoints.clone());
        std::thread::spawn(move || {
            for i in 0.. {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let name = format!("d-{i}");
                let spec = write_spec(&scratch, &name, "m", 1);
                let out = sovctl(
                    &endpoints,
                    &[
                        "--timeout",
                        "5",
                        "deploy",
                        "apply",
                        "-f",
                        spec.to_str().unwrap(),
                    ],
                );
                let attempt = Attempt {
                    name,
                    acknowledged: out.success(),
                    at_ms: tl.elapsed_ms(),
                    took_ms: out.elapsed.as_millis(),
                    error: out.stderr.trim().replace('\n', " | "),
                };
                if !attempt.acknowledged {
                    tl.log(format_args!(
                        "writer: {} NOT acknowledged after {} ms: {}",
                        attempt.name, attempt.took_ms, attempt.error
                    ));
                }
                attempts.lock().unwrap().push(attempt);
            }
        })
    };
    let acked = |attempts: &Mutex<Vec<Attempt>>| {
        attempts
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.acknowledged)
            .count()
    };

    wait_until(
        &format!("{ACKS_BEFORE_KILL} acknowledged writes"),
        Duration::from_secs(30),
        || match acked(&attempts) {
            n if n >= ACKS_BEFORE_KILL => Ok(()),
            n => Err(format!("{n} acknowledged")),
        },
    );
    let before = cluster_status(&endpoints).expect("cluster status before the kill");
    let old_leader = u64_field(&before, "leader_id");
    let old_term = u64_field(&before, "term");
    assert!((1..=3).contains(&old_leader), "no leader: {before}");
    let attempts_at_kill = attempts.lock().unwrap().len();
    cluster.node(old_leader).kill();
    let killed_at = Instant::now();
    tl.log(format_args!(
        "SIGKILLed leader {old_leader} (term {old_term}) after {} acknowledged writes",
        acked(&attempts)
    ));

    // Failover: a survivor calls itself leader in a newer term.
    let survivors: Vec<u64> = (1..=3).filter(|id| *id != old_leader).collect();
    let survivor_endpoints: Vec<String> = survivors
        .iter()
        .map(|id| cluster.node(*id).endpoint())
        .collect();
    let (new_leader, _) = wait_until("a new leader among the survivors", FAILOVER_TIMEOUT, || {
        let mut views = Vec::new();
        for endpoint in &survivor_endpoints {
            match cluster_status(endpoint) {
                Ok(s) if s["role"] == "leader" && u64_field(&s, "term") > old_term => {
                    return Ok(u64_field(&s, "node_id"));
                }
                Ok(s) => views.push(format!(
                    "{}: {} term {} leader {}",
                    s["node_id"], s["role"], s["term"], s["leader_id"]
                )),
                Err(e) => views.push(e),
            }
        }
        Err(views.join("; "))
    });
    let failover = killed_at.elapsed();
    tl.log(format_args!(
        "FAILOVER: scheduler {new_leader} is leader {} ms after the kill",
        failover.as_millis()
    ));

    // Keep writing through the failover and after it.
    wait_until(
        "the writer to finish its attempts after the kill",
        WRITE_AFTER_KILL_MAX + Duration::from_secs(40),
        || {
            let made = attempts.lock().unwrap().len() - attempts_at_kill;
            if made >= ATTEMPTS_AFTER_KILL || killed_at.elapsed() >= WRITE_AFTER_KILL_MAX {
                stop.store(true, Ordering::SeqCst);
            }
            if stop.load(Ordering::SeqCst) && writer.is_finished() {
                Ok(())
            } else {
                Err(format!("{made} attempts since the kill"))
            }
        },
    );
    writer.join().expect("writer thread panicked");
    let attempts = std::mem::take(&mut *attempts.lock().unwrap());
    let after_kill = &attempts[attempts_at_kill..];
    let failed: Vec<&Attempt> = attempts.iter().filter(|a| !a.acknowledged).collect();
    let acknowledged: BTreeSet<String> = attempts
        .iter()
        .filter(|a| a.acknowledged)
        .map(|a| a.name.clone())
        .collect();
    let attempted: BTreeSet<String> = attempts.iter().map(|a| a.name.clone()).collect();
    let slowest = attempts.iter().map(|a| a.took_ms).max().unwrap_or(0);
    tl.log(format_args!(
        "writer stopped: {} attempts ({} after the kill), {} acknowledged, {} failed, slowest {} ms",
        attempts.len(),
        after_kill.len(),
        acknowledged.len(),
        failed.len(),
        slowest
    ));
    for a in &failed {
        tl.log(format_args!(
            "  failed: {} (ended at {} ms, took {} ms): {}",
            a.name, a.at_ms, a.took_ms, a.error
        ));
    }
    assert!(
        after_kill.iter().any(|a| a.acknowledged),
        "no write was acknowledged after the leader was killed: {after_kill:#?}"
    );

    // Every acknowledged write is in a linearizable read from a survivor; nothing that was never
    // attempted appears (unacknowledged ones may or may not have been applied).
    let survivor = survivor_endpoints.join(",");
    let list = sovctl(&survivor, &["-o", "json", "deploy", "list"]).json();
    let present = deployment_names(&list);
    let lost: Vec<&String> = acknowledged.difference(&present).collect();
    assert!(
        lost.is_empty(),
        "acknowledged writes missing after the leader was killed: {lost:?}"
    );
    let phantom: Vec<&String> = present.difference(&attempted).collect();
    assert!(phantom.is_empty(), "never-written deployments: {phantom:?}");
    tl.log(format_args!(
        "survivors list {} deployments, including all {} acknowledged",
        present.len(),
        acknowledged.len()
    ));

    // The killed scheduler comes back with the same data dir and flags, and catches up.
    let leader_status = cluster_status(&survivor).expect("status from the survivors");
    let committed = u64_field(&leader_status, "committed_index");
    cluster.node(old_leader).restart();
    let restarted_at = Instant::now();
    let node = cluster.node(old_leader);
    let endpoint = node.endpoint();
    let (applied, _) = wait_until(
        &format!("scheduler {old_leader} to apply up to index {committed}"),
        Duration::from_secs(30),
        || {
            node.assert_running();
            let s = node.status()?;
            match u64_field(&s, "applied_index") {
                applied if applied >= committed && s["role"] == "follower" => Ok(applied),
                applied => Err(format!("{} applied {applied}", s["role"])),
            }
        },
    );
    tl.log(format_args!(
        "restarted scheduler {old_leader} is a follower and applied index {applied} >= {committed} after {} ms",
        restarted_at.elapsed().as_millis()
    ));
    let list = sovctl(&endpoint, &["-o", "json", "deploy", "list", "--stale"]).json();
    let local = deployment_names(&list);
    let missing: Vec<&String> = acknowledged.difference(&local).collect();
    assert!(
        missing.is_empty(),
        "the restarted scheduler's own copy lacks acknowledged writes: {missing:?}"
    );
    let phantom: Vec<&String> = local.difference(&attempted).collect();
    assert!(phantom.is_empty(), "never-written deployments: {phantom:?}");
    let now = deployment_names(&sovctl(&survivor, &["-o", "json", "deploy", "list"]).json());
    assert_eq!(
        local, now,
        "the restarted replica differs from the survivors"
    );
    tl.log(format_args!(
        "restarted scheduler's stale list has all {} deployments; failover took {} ms",
        local.len(),
        failover.as_millis()
    ));
}
