//! Heartbeat capacity: how many virtual nodes a three-scheduler cluster holds `ready` at a 1 s
//! heartbeat (pinned with `--max-heartbeats-per-s 0`; by default the leader stretches the pace
//! past 1,000 nodes), and what the leader's CPU costs for it.
//!
//! For each fleet size it starts a fresh cluster (the built binaries, release when run through
//! `cargo bench`), starts `sov-agent fleet`, waits until every node is registered and ready,
//! then holds for `SOV_BENCH_HOLD_S` seconds (default 30) and measures:
//! - the leader's CPU (user + system time from `/proc/<pid>/stat`) per second of wall time,
//!   as a share of one core;
//! - heartbeats per second answered (from the fleet's own progress line);
//! - the lowest count of `ready` nodes seen while holding (polled every 5 s).
//!
//! Run: `cargo build --release --bins && cargo bench -p sov-e2e --bench heartbeats`
//! (sizes: `SOV_BENCH_NODES=1000,5000,10000`). Absolute numbers depend on the machine; the
//! fleet simulator shares it with the schedulers. Results go to docs/benchmarks.md by hand.

use std::time::{Duration, Instant};

use sov_e2e::agent::{node_counts, start_fleet, wait_ready};
use sov_e2e::{Cluster, Timeline, cluster_status, cpu_seconds, u64_field};

fn ready_count(endpoints: &str) -> usize {
    node_counts(endpoints, true).map_or(0, |(ready, _)| ready)
}

struct Row {
    nodes: usize,
    register_s: f64,
    leader_cpu: f64,
    heartbeats_per_s: f64,
    min_ready: usize,
}

fn run(nodes: usize, hold: Duration) -> Row {
    let tl = Timeline::new();
    // At 1 s whatever the fleet's size: the leader would otherwise stretch the pace past
    // 1,000 nodes (`liveness.max_heartbeats_per_s`), and this measures what 1 s costs.
    let mut cluster = Cluster::start_with(3, tl, &["--max-heartbeats-per-s", "0"]);
    let endpoints = cluster.endpoints();
    let leader = u64_field(&cluster_status(&endpoints).expect("status"), "leader_id");
    let leader_pid = cluster.node(leader).pid().expect("leader pid");
    let log_path = cluster.scratch().join("fleet.log");
    let mut fleet = start_fleet(nodes, &endpoints, &log_path);
    let register_s = wait_ready(&endpoints, nodes, Duration::from_secs(300)).as_secs_f64();
    tl.log(format_args!("{nodes} ready after {register_s:.1} s"));
    // Let registration's burst settle before measuring steady state.
    std::thread::sleep(Duration::from_secs(5));
    let cpu0 = cpu_seconds(leader_pid);
    let t0 = Instant::now();
    let mut min_ready = nodes;
    while t0.elapsed() < hold {
        std::thread::sleep(Duration::from_secs(5));
        min_ready = min_ready.min(ready_count(&endpoints));
    }
    let leader_cpu = (cpu_seconds(leader_pid) - cpu0) / t0.elapsed().as_secs_f64();
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    let heartbeats_per_s = text
        .lines()
        .rev()
        .find_map(|l| {
            let i = l.find("heartbeats/s ")?;
            l[i + "heartbeats/s ".len()..]
                .split_whitespace()
                .next()?
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(0.0);
    let _ = fleet.kill();
    let _ = fleet.wait();
    Row {
        nodes,
        register_s,
        leader_cpu,
        heartbeats_per_s,
        min_ready,
    }
}

fn main() {
    let sizes: Vec<usize> = std::env::var("SOV_BENCH_NODES")
        .unwrap_or_else(|_| "1000,5000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let hold = Duration::from_secs(
        std::env::var("SOV_BENCH_HOLD_S")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(30),
    );
    let rows: Vec<Row> = sizes.iter().map(|&n| run(n, hold)).collect();
    println!(
        "\n| virtual nodes | all ready after | leader CPU (share of one core) | heartbeats/s answered | fewest ready while holding {} s |",
        hold.as_secs()
    );
    println!("|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {:.1} s | {:.2} | {:.0} | {} |",
            r.nodes, r.register_s, r.leader_cpu, r.heartbeats_per_s, r.min_ready
        );
    }
}
