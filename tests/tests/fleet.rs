//! A simulated fleet against a real three-scheduler cluster: 1,000 virtual nodes
//! (`sov-agent fleet`, one process, shared connections) register and stay `ready` for 60 s at
//! the default 1 s heartbeat and 10 s TTL. A bigger run (5k, 10k nodes) is the heartbeat
//! benchmark in docs/benchmarks.md, not a test.

use std::time::{Duration, Instant};

use sov_e2e::agent::{node_counts, start_fleet};
use sov_e2e::{Cluster, Timeline, wait_until};

const NODES: usize = 1_000;
const HOLD: Duration = Duration::from_secs(60);

#[test]
fn a_thousand_virtual_nodes_register_and_stay_ready_for_a_minute() {
    let tl = Timeline::new();
    let cluster = Cluster::start(3, tl);
    let endpoints = cluster.endpoints();
    let log_path = cluster.scratch().join("fleet.log");
    let mut fleet = start_fleet(NODES, &endpoints, &log_path);
    tl.log(format_args!("started a fleet of {NODES} virtual nodes"));

    let (_, took) = wait_until(
        &format!("{NODES} ready nodes"),
        Duration::from_secs(120),
        || match node_counts(&endpoints, false)? {
            (ready, _) if ready == NODES => Ok(()),
            (ready, down) => Err(format!("{ready} ready, {down} down")),
        },
    );
    tl.log(format_args!(
        "{NODES} nodes registered and ready after {} ms",
        took.as_millis()
    ));

    let start = Instant::now();
    while start.elapsed() < HOLD {
        std::thread::sleep(Duration::from_secs(5));
        assert!(
            fleet.try_wait().expect("try_wait").is_none(),
            "the fleet exited; its log:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        let (ready, down) = node_counts(&endpoints, false).expect("node list");
        tl.log(format_args!(
            "t+{:>2}s: {ready} ready, {down} down",
            start.elapsed().as_secs()
        ));
        assert_eq!(
            (ready, down),
            (NODES, 0),
            "every virtual node must stay ready; fleet log:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
    }
    let _ = fleet.kill();
    let _ = fleet.wait();
    let summary = std::fs::read_to_string(&log_path).unwrap_or_default();
    tl.log(format_args!(
        "fleet's last progress line: {}",
        summary
            .lines()
            .rev()
            .find(|l| l.starts_with("fleet: t="))
            .unwrap_or("-")
    ));
}
