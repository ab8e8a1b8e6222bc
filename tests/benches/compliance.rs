//! Rule-change reaction (issue #5): how fast a policy change that forbids 20 % of 100,000
//! running allocations is carried out through a real three-scheduler cluster and 10,000
//! virtual agents.
//!
//! Set-up, all real processes on this machine: three `sov-scheduler run` (release when run
//! through `cargo bench`) and `sov-agent fleet` with `SOV_BENCH_NODES` virtual nodes (default
//! 10,000) that register, heartbeat at the pace the leader asks (every 10 s for 10,000 nodes by
//! its default `max_heartbeats_per_s`; `SOV_BENCH_SCHEDULER_ARGS="--max-heartbeats-per-s 0"`
//! for the 1 s of the figures before 2026-12-07) and acknowledge their assignments like real
//! agents (one `ReportStatuses` call per assignment event). The nodes are ten groups of equal
//! size, `site-0` to `site-9`, every node 64 cores; `SOV_BENCH_DEPLOYMENTS` deployments
//! (default 1,000) of `SOV_BENCH_REPLICAS` replicas each (default 100) at 4 cores a replica
//! fill them. Once every replica is acknowledged running, a bundle with one more rule is
//! applied through `PolicyService.Apply`: it forbids every deployment on `site-8` and
//! `site-9`, a fifth of the nodes, as `stop-now` or (second variant) as `migrate`
//! (`max_parallel` = the replica count, so every move may start at once).
//!
//! Figures, from the moment the apply is sent:
//! - (a) the plan committed: stop-now, the answer to the apply (the stops are in the entry
//!   that activates the rule); migrate, the leader's `sov_allocations_moving_unreplaced` back
//!   at 0 (every forbidden replica has its replacement placed);
//! - (b) every virtual agent acknowledged its stops: the leader's `sov_allocations_stopping`
//!   back at 0 and, for migrate, no allocation left migrating.
//!
//! Beside (a), the leader's own side of it, from its log: when it finished applying the entry
//! that carries the plan (its `slow apply` line: stop-now, the policy entry; migrate, the first
//! plan that placed replacements). What the client sees comes later: the answer waits for the
//! entry's history events to be handed to the history store's writer and is encoded and sent
//! while the leader pushes the stops to the agents; the gauge is scraped every 100 ms, and a
//! scrape waits for the state machine's lock (the last scrapes' times are printed: under the
//! load of a migration one takes up to a second).
//!
//! Run: `cargo build --release --bins && cargo bench -p sov-e2e --bench compliance`
//! (`SOV_BENCH_VARIANTS=stop-now,migrate`, `SOV_BENCH_RUNS` per variant, default 3;
//! `SOV_BENCH_PERF=FILE` for a system-wide `perf record` of the reaction, the last run's;
//! `SOV_BENCH_SCHEDULER_ARGS` for extra `sov-scheduler run` flags;
//! `SOV_BENCH_LEADER_LOG=DIR` to keep each run's leader log). Results go to docs/benchmarks.md
//! by hand. Without `--bench` it does nothing.

use std::time::{Duration, Instant};

use sov_e2e::bench::{Extra, Loaded, env_usize, metric, metrics};
use sov_e2e::{Timeline, cpu_seconds, sovctl};

struct Row {
    allocations: u64,
    forbidden: u64,
    committed_s: f64,
    acknowledged_s: f64,
    leader_cpu: f64,
    /// From the leader's log: when its apply of the policy entry ended, and of the first plan
    /// after it that placed replacements. `None` when the log has no such line.
    policy_applied_s: Option<f64>,
    plan_applied_s: Option<f64>,
}

impl Row {
    /// (a) on the leader's side: its apply of the entry that carries the plan ended.
    fn applied_s(&self, variant: &str) -> Option<f64> {
        if variant == "stop-now" {
            self.policy_applied_s
        } else {
            self.plan_applied_s
        }
    }
}

/// Seconds from `wall0` (milliseconds since the epoch) to the time of a leader log line
/// (`2026-12-02T11:30:01.173074Z  INFO ...`); `None` for a line before it, or not a log line.
fn seconds_after(line: &str, wall0: i64) -> Option<f64> {
    const DAY_MS: i64 = 86_400_000;
    let time = line.split_whitespace().next()?.split_once('T')?.1;
    let mut hms = time.strip_suffix('Z')?.split(':');
    let (h, m): (i64, i64) = (hms.next()?.parse().ok()?, hms.next()?.parse().ok()?);
    let s: f64 = hms.next()?.parse().ok()?;
    let of_day = h * 3_600_000 + m * 60_000 + (s * 1000.0).round() as i64;
    // Past midnight since wall0 is fine; a line before wall0 comes out almost a day later.
    let after = (of_day - wall0.rem_euclid(DAY_MS)).rem_euclid(DAY_MS);
    (after < DAY_MS / 2).then_some(after as f64 / 1000.0)
}

/// When the leader finished applying the first entry after `wall0` whose command starts with
/// `command` (`apply-policy(`, `apply-plan(`) and places something, from its log.
fn applied_on_leader(log: &str, command: &str, wall0: i64) -> Option<f64> {
    // `slow apply` lines (applies of 100 ms or more) are written as the apply ends, before the
    // entry's history events are stored and its proposer answered.
    let command = format!("command={command}");
    log.lines()
        .filter(|l| {
            l.contains("slow apply") && l.contains(&command) && !l.contains("(0 placements")
        })
        .find_map(|l| seconds_after(l, wall0))
}

fn run(variant: &str, nodes: usize, deployments: usize, replicas: u32) -> Row {
    let tl = Timeline::new();
    let mut loaded = Loaded::start(tl, nodes, deployments, replicas);
    let (http, leader_pid, total) = (loaded.http, loaded.leader_pid, loaded.replicas_total());
    std::thread::sleep(Duration::from_secs(3));

    // `SOV_BENCH_PERF=FILE`: a system-wide `perf record` of the reaction alone (from the apply
    // to (b)), for `perf report -i FILE --sort comm,dso,sym`.
    let perf = std::env::var("SOV_BENCH_PERF").ok().map(|out| {
        std::process::Command::new("perf")
            .args(["record", "-a", "-F", "499", "-o", &out])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("SOV_BENCH_PERF is set but perf cannot be started")
    });
    let cpu0 = cpu_seconds(leader_pid);
    let wall0 = sov_e2e::now_ms();
    tl.log(format_args!(
        "applying the rule at {} (t=0)",
        sov_e2e::rfc3339(wall0)
    ));
    let t0 = Instant::now();
    let version = loaded.apply_policy(Extra::Sites(variant));
    let answered = t0.elapsed();
    let forbidden = version.impact.len() as u64;
    tl.log(format_args!(
        "rule applied as version {} in {:.3} s: {forbidden} allocations affected",
        version.version,
        answered.as_secs_f64()
    ));
    let committed = if variant == "stop-now" {
        answered
    } else {
        // Each scrape's start and duration, the last few printed: how much of (a) is the
        // scrape itself (it waits for the state machine's lock and a blocking thread).
        let mut scrapes: Vec<(f64, f64)> = Vec::new();
        loop {
            let sent = t0.elapsed();
            let unreplaced = metric(http, "sov_allocations_moving_unreplaced").unwrap_or(u64::MAX);
            scrapes.push((sent.as_secs_f64(), (t0.elapsed() - sent).as_secs_f64()));
            if unreplaced == 0 {
                let last: Vec<String> = scrapes[scrapes.len().saturating_sub(4)..]
                    .iter()
                    .map(|(at, took)| format!("{at:.2}+{took:.2}"))
                    .collect();
                tl.log(format_args!(
                    "gauge scrapes (sent at + took, s), the last: {}",
                    last.join(", ")
                ));
                break t0.elapsed();
            }
            assert!(
                t0.elapsed() < Duration::from_secs(300),
                "{unreplaced} replacements not placed"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    // The curve of the wait, a line each time the counts change (at most every 100 ms): where
    // the time goes between (a) and (b).
    let mut last = (u64::MAX, u64::MAX);
    let acknowledged = loop {
        let now = metrics(
            http,
            &[
                "sov_allocations_stopping",
                "sov_allocations_by_standing{standing=\"migrating\"}",
            ],
        );
        let (stopping, migrating) = (now[0].unwrap_or(u64::MAX), now[1].unwrap_or(u64::MAX));
        if (stopping, migrating) != last {
            last = (stopping, migrating);
            tl.log(format_args!(
                "t={:.2} s: {stopping} stopping, {migrating} migrating",
                t0.elapsed().as_secs_f64()
            ));
        }
        if stopping == 0 && migrating == 0 {
            break t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "stops not acknowledged: {stopping} stopping, {migrating} migrating"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let leader_cpu = (cpu_seconds(leader_pid) - cpu0) / acknowledged.as_secs_f64().max(1e-3);
    if let Some(mut perf) = perf {
        let _ = std::process::Command::new("kill")
            .args(["-INT", &perf.id().to_string()])
            .status();
        let _ = perf.wait();
    }
    let log = std::fs::read_to_string(&loaded.leader_log).unwrap_or_default();
    // `SOV_BENCH_LEADER_LOG=DIR`: keeps the leader's log of each run there.
    if let Ok(dir) = std::env::var("SOV_BENCH_LEADER_LOG") {
        let keep = std::path::Path::new(&dir).join(format!("leader-{variant}-{}.log", wall0));
        std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(&keep, &log))
            .unwrap_or_else(|e| {
                panic!("SOV_BENCH_LEADER_LOG: cannot write {}: {e}", keep.display())
            });
    }
    for line in log
        .lines()
        .filter(|l| l.contains("reconcile round applied"))
        .rev()
        .take(12)
    {
        let fields: Vec<&str> = line
            .split_whitespace()
            .filter(|w| {
                [
                    "proposed=",
                    "placed=",
                    "stops=",
                    "stopped=",
                    "copy_ms=",
                    "plan_ms=",
                    "commit_ms=",
                ]
                .iter()
                .any(|k| w.starts_with(k))
            })
            .collect();
        tl.log(format_args!(
            "leader round (newest first): {}",
            fields.join(" ")
        ));
    }
    let _ = sovctl(&loaded.endpoints, &["cluster", "status"]);
    Row {
        policy_applied_s: applied_on_leader(&log, "apply-policy(", wall0),
        plan_applied_s: applied_on_leader(&log, "apply-plan(", wall0),
        allocations: total,
        forbidden,
        committed_s: committed.as_secs_f64(),
        acknowledged_s: acknowledged.as_secs_f64(),
        leader_cpu,
    }
}

fn seconds(s: Option<f64>) -> String {
    s.map_or("- (not in its log by then)".into(), |s| format!("{s:.3} s"))
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("compliance (e2e): run with `cargo bench -p sov-e2e --bench compliance`; skipped");
        return;
    }
    let nodes = env_usize("SOV_BENCH_NODES", 10_000);
    let deployments = env_usize("SOV_BENCH_DEPLOYMENTS", 1_000);
    let replicas = env_usize("SOV_BENCH_REPLICAS", 100) as u32;
    let runs = env_usize("SOV_BENCH_RUNS", 3);
    let variants = std::env::var("SOV_BENCH_VARIANTS").unwrap_or("stop-now,migrate".into());
    for variant in variants.split(',') {
        assert!(
            ["stop-now", "migrate"].contains(&variant),
            "SOV_BENCH_VARIANTS: {variant:?} is not stop-now or migrate"
        );
        println!(
            "rule change ({variant}) through a 3-scheduler cluster: {nodes} virtual nodes, {deployments} deployments x {replicas} replicas, {runs} runs"
        );
        let mut rows: Vec<Row> = (0..runs)
            .map(|_| {
                let row = run(variant, nodes, deployments, replicas);
                println!(
                    "run: {} of {} allocations forbidden; (a) plan committed {:.3} s, (b) every stop acknowledged {:.3} s after the apply was sent; leader CPU {:.2} cores; leader's log: policy entry applied at {}, first replacements at {}",
                    row.forbidden,
                    row.allocations,
                    row.committed_s,
                    row.acknowledged_s,
                    row.leader_cpu,
                    seconds(row.policy_applied_s),
                    seconds(row.plan_applied_s),
                );
                row
            })
            .collect();
        rows.sort_by(|a, b| a.acknowledged_s.total_cmp(&b.acknowledged_s));
        let median = &rows[rows.len() / 2];
        let mut committed: Vec<f64> = rows.iter().map(|r| r.committed_s).collect();
        committed.sort_by(f64::total_cmp);
        let mut applied: Vec<f64> = rows.iter().filter_map(|r| r.applied_s(variant)).collect();
        applied.sort_by(f64::total_cmp);
        println!(
            "median ({variant}): (a) {:.3} s (applied on the leader at {}), (b) {:.3} s",
            committed[committed.len() / 2],
            seconds(applied.get(applied.len() / 2).copied()),
            median.acknowledged_s
        );
    }
}
