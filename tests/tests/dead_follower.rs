//! A dead follower must not make the leader spin: replication to an unreachable peer has to back
//! off (TIGER_STYLE: a limit on every retry), or one lost machine costs the leader a CPU core and
//! floods its log, on exactly the day an operator needs both.
//!
//! Regression test: openraft re-opens a failed replication stream at once, so the transport
//! itself backs off (`PeerClients::redial_delay` in `scheduler/src/raft/network.rs`). Without it
//! the leader redialled a dead peer over 1000 times a second, each attempt logging a WARN line.

use std::time::{Duration, Instant};

use sov_e2e::{Cluster, Timeline, cluster_status, u64_field};

/// How long the leader is watched after the follower dies. A measurement window, not a wait for
/// something to happen.
const WINDOW: Duration = Duration::from_secs(3);
/// Failed replication attempts the leader may log in `WINDOW`: one per heartbeat (100 ms) would
/// be 30; openraft's default backoff (500 ms) gives about 6.
const FAILED_ATTEMPTS_MAX: usize = 60;

fn failed_attempts(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("ReplicationCore recv RPCError"))
        .count()
}

#[test]
fn leader_backs_off_from_a_dead_follower() {
    let tl = Timeline::new();
    let mut cluster = Cluster::start(3, tl);
    let status = cluster_status(&cluster.endpoints()).expect("cluster status");
    let leader = u64_field(&status, "leader_id");
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let leader_log = cluster.node(leader).log_path.clone();
    let before = failed_attempts(&std::fs::read_to_string(&leader_log).unwrap());
    cluster.node(follower).kill();
    let killed_at = Instant::now();
    tl.log(format_args!(
        "SIGKILLed follower {follower}; leader is {leader}"
    ));
    std::thread::sleep(WINDOW);
    cluster.node(leader).assert_running();
    let text = std::fs::read_to_string(&leader_log).unwrap();
    let failed = failed_attempts(&text) - before;
    tl.log(format_args!(
        "leader logged {failed} failed replication attempts in {} ms",
        killed_at.elapsed().as_millis()
    ));
    assert!(
        failed <= FAILED_ATTEMPTS_MAX,
        "the leader retried a dead follower {failed} times in {WINDOW:?} (at most \
         {FAILED_ATTEMPTS_MAX} expected): replication does not back off"
    );
}
