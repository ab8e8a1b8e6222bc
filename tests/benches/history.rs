//! The placement history through a real cluster (issue #6): how fast events are committed and
//! stored through the full Raft path, as-of answers over the API with about a million events,
//! export and offline verification with the real `sovctl`, and bytes per event on disk.
//!
//! Set-up, all real processes on this machine (release binaries under `cargo bench`): three
//! `sov-scheduler run` and `sov-agent fleet` with `SOV_BENCH_NODES` virtual nodes (default
//! 10,000), loaded with `SOV_BENCH_DEPLOYMENTS` deployments (default 1,000) of
//! `SOV_BENCH_REPLICAS` replicas (default 100), every replica placed, started and healthy (three
//! events each). Then the deployments are scaled to half and back (stops ordered and confirmed,
//! replicas placed, started, healthy) until the history holds `SOV_BENCH_EVENTS` events
//! (default 1,000,000). Figures:
//! - append throughput: events committed, applied and stored on every scheduler per second,
//!   per phase (the workload's pace: rounds, agents' acknowledgements), from the schedulers'
//!   `history_size`;
//! - as-of: `HistoryService.AsOf` for random deployments and instants, linearizable and stale:
//!   median, p99, max;
//! - export of the last phase's events (`sovctl history export --since`) and `sovctl audit
//!   verify` of the file: events per second, bytes per exported event;
//! - `history.redb` bytes per event on the leader.
//!
//! Run: `cargo build --release --bins && cargo bench -p sov-e2e --bench history`. Results go to
//! docs/benchmarks.md by hand. Without `--bench` it does nothing.

use std::time::{Duration, Instant};

use sov_e2e::bench::{Loaded, env_usize};
use sov_e2e::{Timeline, cluster_status, cpu_seconds, now_ms, rfc3339, sovctl, u64_field};
use sov_proto::v1 as pb;
use sov_proto::v1::history_service_client::HistoryServiceClient;

/// The number of history events the scheduler at `endpoint` has stored.
fn history_size(endpoint: &str) -> u64 {
    u64_field(&cluster_status(endpoint).expect("status"), "history_size")
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)].as_secs_f64() * 1e3
}

/// `queries` as-of answers for random deployments and instants in `span`, over one channel.
fn as_of_latencies(
    loaded: &Loaded,
    consistency: pb::ReadConsistency,
    span: (i64, i64),
    queries: usize,
) -> (Vec<Duration>, u64) {
    let mut client = loaded.runtime.block_on(async {
        HistoryServiceClient::new(
            sov_e2e::pki::pki()
                .channel(&loaded.api, sov_proto::identity::Role::Auditor)
                .await,
        )
    });
    let mut seed = 0x5eed_u64;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut took = Vec::with_capacity(queries);
    let mut read = 0;
    for _ in 0..queries {
        let request = pb::AsOfRequest {
            deployment: format!("bench-{:04}", next(loaded.deployments as u64)),
            at_ms: span.0 + next((span.1 - span.0).max(1) as u64) as i64,
            consistency: consistency as i32,
        };
        let t = Instant::now();
        let answer = loaded
            .runtime
            .block_on(client.as_of(request))
            .unwrap_or_else(|s| panic!("as-of: {}", s.message()))
            .into_inner();
        took.push(t.elapsed());
        read += answer.events_read;
    }
    took.sort();
    (took, read / queries as u64)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("history (e2e): run with `cargo bench -p sov-e2e --bench history`; skipped");
        return;
    }
    let nodes = env_usize("SOV_BENCH_NODES", 10_000);
    let deployments = env_usize("SOV_BENCH_DEPLOYMENTS", 1_000);
    let replicas = env_usize("SOV_BENCH_REPLICAS", 100) as u32;
    let target = env_usize("SOV_BENCH_EVENTS", 1_000_000) as u64;
    println!(
        "placement history through a 3-scheduler cluster: {nodes} virtual nodes, {deployments} deployments x {replicas} replicas, until {target} events"
    );
    let tl = Timeline::new();
    let t = Instant::now();
    let mut loaded = Loaded::start(tl, nodes, deployments, replicas);
    let first_ms = now_ms();
    let endpoints: Vec<String> = loaded.endpoints.split(',').map(String::from).collect();
    let size = history_size(&loaded.api);
    println!(
        "load: {size} events in {:.1} s ({:.0} events/s, registrations and placement included)",
        t.elapsed().as_secs_f64(),
        size as f64 / t.elapsed().as_secs_f64()
    );

    // Scale down and up until the history is big enough.
    let mut rates = Vec::new();
    let mut last_phase_ms = first_ms;
    let mut phase = 0;
    while history_size(&loaded.api) < target {
        phase += 1;
        let want = if phase % 2 == 1 {
            replicas / 2
        } else {
            replicas
        };
        let (before, cpu0, t) = (
            history_size(&loaded.api),
            cpu_seconds(loaded.leader_pid),
            Instant::now(),
        );
        last_phase_ms = now_ms();
        loaded.apply_deployments(want);
        loaded.wait_running(
            deployments as u64 * u64::from(want),
            Duration::from_secs(900),
        );
        // Every scheduler has stored the phase's events.
        let after = history_size(&loaded.api);
        while endpoints.iter().any(|e| history_size(e) < after) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let secs = t.elapsed().as_secs_f64();
        let rate = (after - before) as f64 / secs;
        println!(
            "phase {phase} (to {want} replicas each): {} events in {secs:.1} s = {rate:.0} events/s; leader CPU {:.2} cores; history {after}",
            after - before,
            (cpu_seconds(loaded.leader_pid) - cpu0) / secs
        );
        rates.push(rate);
    }
    rates.sort_by(f64::total_cmp);
    let events = history_size(&loaded.api);
    println!(
        "append throughput: median {:.0} events/s over {} phases ({:.0}..{:.0})",
        rates[rates.len() / 2],
        rates.len(),
        rates[0],
        rates[rates.len() - 1]
    );

    // As-of over the API.
    let span = (first_ms - 60_000, now_ms());
    for (name, consistency) in [
        ("linearizable", pb::ReadConsistency::Linearizable),
        ("stale", pb::ReadConsistency::Stale),
    ] {
        let (took, read) = as_of_latencies(&loaded, consistency, span, 1_000);
        println!(
            "as-of ({name}, 1000 random deployments and instants, {events} events, {read} events folded on average): median {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            percentile(&took, 0.5),
            percentile(&took, 0.99),
            took[took.len() - 1].as_secs_f64() * 1e3
        );
    }

    // Export of the last phase, and offline verification, with the real sovctl.
    let dir = loaded.cluster.scratch();
    let file = dir.join("evidence.jsonl");
    let file_s = file.to_str().expect("utf-8");
    let t = Instant::now();
    let out = sovctl(
        &loaded.endpoints,
        &[
            "history",
            "export",
            "--since",
            &rfc3339(last_phase_ms),
            "-f",
            file_s,
            "-o",
            "json",
            "--timeout",
            "120",
        ],
    );
    out.assert_ok();
    let exported = t.elapsed().as_secs_f64();
    let n = u64_field(&out.json(), "events");
    let bytes = std::fs::metadata(&file).expect("export").len();
    let key = loaded.cluster.public_key();
    let t = Instant::now();
    let verified = sovctl(
        "http://127.0.0.1:1",
        &[
            "audit",
            "verify",
            file_s,
            "--key",
            key.to_str().expect("utf-8"),
        ],
    );
    verified.assert_ok();
    let verify = t.elapsed().as_secs_f64();
    println!(
        "export: {n} events in {exported:.1} s = {:.0} events/s, {:.0} bytes per event in the file; audit verify: {verify:.1} s = {:.0} events/s",
        n as f64 / exported,
        bytes as f64 / n as f64,
        n as f64 / verify
    );

    let leader = u64_field(&cluster_status(&loaded.api).expect("status"), "leader_id");
    let db = loaded.cluster.node(leader).data_dir.join("history.redb");
    let on_disk = std::fs::metadata(&db).expect("history.redb").len();
    println!(
        "history.redb on the leader: {:.1} MiB for {events} events = {:.0} bytes per event",
        on_disk as f64 / (1 << 20) as f64,
        on_disk as f64 / events as f64
    );
}
