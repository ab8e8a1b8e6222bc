//! A simulated fleet against a real three-scheduler cluster: 1,000 virtual nodes
//! (`sov-agent fleet`, one process, shared connections) register and stay `ready` for 60 s at
//! the default 1 s heartbeat and 10 s TTL (1,000 nodes is the most the default
//! `max_heartbeats_per_s` keeps at 1 s). A bigger run (5k, 10k nodes) is the heartbeat
//! benchmark in docs/benchmarks.md, not a test. A smaller fleet over a small heartbeat budget
//! checks that the leader stretches the pace and the fleet follows it.

use std::time::{Duration, Instant};

use sov_e2e::agent::{node_counts, start_fleet, wait_ready};
use sov_e2e::bench::metric;
use sov_e2e::{Cluster, Timeline, cluster_status, u64_field};

const NODES: usize = 1_000;
const HOLD: Duration = Duration::from_secs(60);

/// Checks every 5 s for `hold` that the fleet runs and all `nodes` stay ready.
fn hold_ready(
    tl: Timeline,
    endpoints: &str,
    fleet: &mut std::process::Child,
    log_path: &std::path::Path,
    nodes: usize,
    hold: Duration,
) {
    let start = Instant::now();
    while start.elapsed() < hold {
        std::thread::sleep(Duration::from_secs(5));
        assert!(
            fleet.try_wait().expect("try_wait").is_none(),
            "the fleet exited; its log:\n{}",
            std::fs::read_to_string(log_path).unwrap_or_default()
        );
        let (ready, down) = node_counts(endpoints, false).expect("node list");
        tl.log(format_args!(
            "t+{:>2}s: {ready} ready, {down} down",
            start.elapsed().as_secs()
        ));
        assert_eq!(
            (ready, down),
            (nodes, 0),
            "every virtual node must stay ready; fleet log:\n{}",
            std::fs::read_to_string(log_path).unwrap_or_default()
        );
    }
}

#[test]
fn a_thousand_virtual_nodes_register_and_stay_ready_for_a_minute() {
    let tl = Timeline::new();
    let cluster = Cluster::start(3, tl);
    let endpoints = cluster.endpoints();
    let log_path = cluster.scratch().join("fleet.log");
    let mut fleet = start_fleet(NODES, &endpoints, &log_path);
    tl.log(format_args!("started a fleet of {NODES} virtual nodes"));

    let took = wait_ready(&endpoints, NODES, Duration::from_secs(120));
    tl.log(format_args!(
        "{NODES} nodes registered and ready after {} ms",
        took.as_millis()
    ));
    hold_ready(tl, &endpoints, &mut fleet, &log_path, NODES, HOLD);
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

/// Heartbeats a second in the fleet's progress lines (`heartbeats/s N`), with the line's `t=`.
fn heartbeat_rates(log: &str) -> Vec<(u64, f64)> {
    log.lines()
        .filter_map(|l| {
            let t = l
                .strip_prefix("fleet: t=")?
                .trim_start()
                .split('s')
                .next()?;
            let rate = l.split("heartbeats/s ").nth(1)?.split_whitespace().next()?;
            Some((t.parse().ok()?, rate.parse().ok()?))
        })
        .collect()
}

#[test]
fn the_leader_stretches_the_heartbeat_pace_past_its_budget_and_the_fleet_follows() {
    // 100 nodes, at most 10 heartbeats a second: every 10 s, down after 40 s (four intervals;
    // at the configured 10 s TTL they would be marked down between two heartbeats).
    const FLEET: usize = 100;
    let tl = Timeline::new();
    let mut cluster = Cluster::start_with(3, tl, &["--max-heartbeats-per-s", "10"]);
    let endpoints = cluster.endpoints();
    let leader = u64_field(&cluster_status(&endpoints).expect("status"), "leader_id");
    let http = cluster.node(leader).http_port;
    let log_path = cluster.scratch().join("fleet.log");
    let mut fleet = start_fleet(FLEET, &endpoints, &log_path);
    wait_ready(&endpoints, FLEET, Duration::from_secs(60));
    assert_eq!(metric(http, "sov_heartbeat_interval_ms"), Some(10_000));
    assert_eq!(metric(http, "sov_heartbeat_ttl_ms"), Some(40_000));
    // Held past the configured TTL three times over: nobody goes down at the slower pace.
    let hold = Duration::from_secs(30);
    hold_ready(tl, &endpoints, &mut fleet, &log_path, FLEET, hold);
    let _ = fleet.kill();
    let _ = fleet.wait();
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    // Once every node has had an answer (within the first 10 s interval), the fleet sends
    // about 10 a second; at the unstretched 1 s it would send 100.
    let settled: Vec<f64> = heartbeat_rates(&log)
        .into_iter()
        .filter(|&(t, _)| t >= 20)
        .map(|(_, rate)| rate)
        .collect();
    tl.log(format_args!("heartbeats/s once settled: {settled:?}"));
    assert!(!settled.is_empty(), "no progress lines; fleet log:\n{log}");
    assert!(
        settled.iter().all(|&rate| rate <= 30.0),
        "the fleet did not slow to the stretched pace: {settled:?}; fleet log:\n{log}"
    );
}
