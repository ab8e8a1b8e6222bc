//! How long a new deployment waits for its first replica on a quiet cluster: from `sovctl
//! deploy apply`'s acknowledgement to the replica placed (committed by the Raft majority and
//! applied by the leader). What an engineer waits for, and, at 10,000 nodes, how soon a rule
//! change's migrations are planned: both go through the leader's reconcile loop waking up.
//!
//! Set-up, all real processes on this machine: three `sov-scheduler run` (release when run
//! through `cargo bench`), `sov-agent fleet` with `SOV_BENCH_NODES` virtual nodes (default 5;
//! simulated GPUs), the shipped policy bundle. Then `SOV_BENCH_RUNS` times (default 30): a
//! one-replica deployment is applied with `sovctl`, the leader's `sov_replicas_placed` gauge is
//! read every 2 ms until it moves, and the deployment is deleted; the next one is applied 20 to
//! 520 ms later (spread evenly), so that some land while the leader's reconcile loop pauses
//! after the commit of the fleet's report that the last one stopped, as they do on a cluster
//! whose agents report all the time.
//!
//! Figures: the median, the 90th percentile and the longest wait, and how many waited over
//! 100 ms. Run: `cargo build --release --bins && cargo bench -p sov-e2e --bench
//! deploy_latency`. Results go to docs/benchmarks.md by hand. Without `--bench` (`cargo test
//! --benches`) it does nothing.

use std::time::{Duration, Instant};

use sov_e2e::agent::{start_fleet, wait_ready};
use sov_e2e::bench::metric;
use sov_e2e::{Cluster, Timeline, cluster_status, repo_path, sovctl, u64_field, write_spec};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}: {v:?} is not a whole number"))
        })
        .unwrap_or(default)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "deploy_latency (e2e): run with `cargo bench -p sov-e2e --bench deploy_latency`; skipped"
        );
        return;
    }
    let nodes = env_usize("SOV_BENCH_NODES", 5);
    let runs = env_usize("SOV_BENCH_RUNS", 30).max(1);
    let tl = Timeline::new();
    let mut cluster = Cluster::start_with(3, tl, &[]);
    let endpoints = cluster.endpoints();
    let leader = u64_field(&cluster_status(&endpoints).expect("status"), "leader_id");
    let http = cluster.node(leader).http_port;
    let scratch = cluster.scratch();
    let mut fleet = start_fleet(nodes, &endpoints, &scratch.join("fleet.log"));
    wait_ready(&endpoints, nodes, Duration::from_secs(120));
    let bundle = repo_path("deploy/policies");
    sovctl(&endpoints, &["policy", "apply", &bundle.to_string_lossy()]).assert_ok();

    let placed = || metric(http, "sov_replicas_placed").expect("the leader's /metrics");
    let mut waits = Vec::with_capacity(runs);
    for i in 0..runs {
        // Spread over half a second after the last run's delete, whose stop the fleet reports
        // at once: some applies land while the loop pauses after that report's commit, as they
        // do on a cluster whose agents report all the time.
        std::thread::sleep(Duration::from_millis(20 + (i as u64 * 137) % 500));
        let name = format!("latency-{i}");
        let spec = write_spec(&scratch, &name, "sov/tiny-echo", 1);
        let before = placed();
        sovctl(
            &endpoints,
            &["deploy", "apply", "-f", &spec.to_string_lossy()],
        )
        .assert_ok();
        let acknowledged = Instant::now();
        while placed() <= before {
            assert!(
                acknowledged.elapsed() < Duration::from_secs(30),
                "{name} was not placed within 30 s"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        let waited = acknowledged.elapsed();
        tl.log(format_args!(
            "{name}: placed {} ms after the acknowledgement",
            waited.as_millis()
        ));
        waits.push(waited);
        sovctl(&endpoints, &["deploy", "delete", &name]).assert_ok();
    }
    let _ = fleet.kill();
    let _ = fleet.wait();

    waits.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let at = |q: f64| waits[((waits.len() - 1) as f64 * q).round() as usize];
    let slow = waits
        .iter()
        .filter(|w| **w > Duration::from_millis(100))
        .count();
    println!(
        "\n| runs | median | 90th percentile | longest | over 100 ms |\n|---:|---:|---:|---:|---:|"
    );
    println!(
        "| {runs} | {:.0} ms | {:.0} ms | {:.0} ms | {slow} |",
        ms(at(0.5)),
        ms(at(0.9)),
        ms(at(1.0))
    );
}
