//! Commit throughput and latency of a 3-scheduler cluster, set against the disk's fsync rate,
//! and the batching factor that explains the difference.
//!
//! What it measures: three complete schedulers (`server::start`, real redb files in one temp
//! dir, real gRPC on 127.0.0.1) run in this process. For each level of concurrency (1, 16 and
//! 256 writers by default) that many client tasks send `DeploymentService.Apply` back to back
//! to the leader (or, with `--via-follower`, to a follower that forwards). The API answers only
//! after the command is committed by a quorum and applied on the leader, so the duration of one
//! call is the commit latency a client sees. Per level it reports committed commands per
//! second, p50 and p99 latency, the CPU the whole process used (all three schedulers and the
//! clients share this machine's cores), and the batching factor: the leader's and one
//! follower's durable log appends (`Replica::log_flushes`, one redb transaction and one fsync
//! each) and the entries they wrote, read before and after the measured window. Entries per
//! fsync is how many commands one flush carries; fsyncs per second is how hard the disk works.
//!
//! Why the fsync rate: a command is committed only once it is on disk on the leader and on one
//! follower, and each of those needs an fsync. One `write(4 KiB) + fdatasync` on the same
//! filesystem, back to back, is therefore the physical ceiling of *unbatched* commits per
//! second; one redb write transaction per command (also measured) is the realistic one.
//! openraft hands every entry that arrived while the previous flush ran to the next `append`,
//! one redb transaction and one fsync for the whole batch, so with many writers the cluster
//! must commit many times more commands per second than the disk can fsync. The target: at 256
//! writers, at least 20 times the measured fsync rate. Where the disk's flush is so cheap that
//! the CPU runs out first, entries per fsync shows whether batching itself works.
//!
//! Run: `cargo bench -p sov-scheduler --bench raft_commit -- --seconds 5 --writers 1,16,256`
//! (add `--via-follower` to include forwarding). Without `--bench`, which `cargo bench` passes
//! and `cargo test --benches` does not, it makes a short smoke pass. Figures and their analysis
//! live in docs/benchmarks.md.

use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use sov_proto::v1::cluster_service_client::ClusterServiceClient;
use sov_proto::v1::deployment_service_client::DeploymentServiceClient;
use sov_proto::v1::{
    ApplyDeploymentRequest, ClusterStatus, ClusterStatusRequest, DeploymentSpec, Resources,
};
use sov_scheduler::config::Config;
use sov_scheduler::raft::Replica;
use sov_scheduler::server::{self, Listeners, Scheduler};
use sov_scheduler::state::MAX_DEPLOYMENTS;
use tokio::net::TcpListener;
use tonic::transport::{Channel, Endpoint};

const NODES: u64 = 3;
const CLUSTER_START_TIMEOUT: Duration = Duration::from_secs(60);
/// The fsync probe cycles over this many 4 KiB blocks of a preallocated file, so no write
/// changes the file size and `fdatasync` has no metadata to flush: the cheapest durable write.
const PROBE_BLOCKS: u64 = 256;
const PROBE_BLOCK_BYTES: usize = 4096;
/// About the size of one serialized Apply log entry.
const PROBE_VALUE_BYTES: usize = 512;
/// Client connections per level at most; HTTP/2 multiplexes the writers over them.
const CHANNELS_MAX: usize = 8;
/// Deployment names each writer cycles through. Names are unique per level and writer, so
/// every write changes the state, and the total stays under the state's deployment limit.
const NAMES_PER_WRITER: u64 = 4;
const WRITERS_MAX: usize = 1024;
const SECONDS_MAX: f64 = 600.0;
/// The goal: batching makes 256 writers commit this many times the fsync rate.
const TARGET_WRITERS: usize = 256;
const TARGET_RATIO: f64 = 20.0;

struct Args {
    writers: Vec<usize>,
    warmup: Duration,
    measure: Duration,
    /// How long each disk probe runs; in a real run long enough to average over a noisy disk.
    probe: Duration,
    via_follower: bool,
    /// No `--bench` flag: a quick pass that proves the bench still works, not a measurement.
    smoke: bool,
}

impl Args {
    fn parse() -> anyhow::Result<Self> {
        let mut bench = false;
        let mut seconds = None;
        let mut writers = None;
        let mut via_follower = false;
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--bench" => bench = true,
                "--via-follower" => via_follower = true,
                "--seconds" => {
                    let value = args.next().context("--seconds needs a value, e.g. 5")?;
                    let s: f64 = value
                        .parse()
                        .with_context(|| format!("--seconds {value:?} is not a number"))?;
                    ensure!(
                        s > 0.0 && s <= SECONDS_MAX,
                        "--seconds must be above 0 and at most {SECONDS_MAX}"
                    );
                    seconds = Some(s);
                }
                "--writers" => {
                    let value = args
                        .next()
                        .context("--writers needs a list, e.g. 1,16,256")?;
                    let list = value
                        .split(',')
                        .map(|w| w.trim().parse::<usize>())
                        .collect::<Result<Vec<_>, _>>()
                        .with_context(|| {
                            format!("--writers {value:?} is not a list like 1,16,256")
                        })?;
                    writers = Some(list);
                }
                other => bail!(
                    "unknown argument {other:?}; usage: raft_commit [--seconds N] [--writers 1,16,256] [--via-follower]"
                ),
            }
        }
        // A smoke pass keeps `cargo test --benches` quick while still exercising every step.
        let (default_seconds, default_writers, warmup, probe) = if bench {
            (
                5.0,
                vec![1, 16, 256],
                Duration::from_secs(1),
                Duration::from_secs(2),
            )
        } else {
            let short = Duration::from_millis(100);
            (0.2, vec![1, 16], short, short)
        };
        let writers = writers.unwrap_or(default_writers);
        ensure!(
            writers.iter().all(|&w| (1..=WRITERS_MAX).contains(&w)),
            "--writers: each level must be from 1 to {WRITERS_MAX}"
        );
        let names = writers.iter().sum::<usize>() as u64 * NAMES_PER_WRITER;
        ensure!(
            names <= MAX_DEPLOYMENTS as u64,
            "--writers: the levels together would create {names} deployments; the state holds at most {MAX_DEPLOYMENTS}"
        );
        Ok(Self {
            writers,
            warmup,
            measure: Duration::from_secs_f64(seconds.unwrap_or(default_seconds)),
            probe,
            via_follower,
            smoke: !bench,
        })
    }

    /// The command line that reproduces this run.
    fn command(&self) -> String {
        let writers: Vec<String> = self.writers.iter().map(ToString::to_string).collect();
        format!(
            "cargo bench -p sov-scheduler --bench raft_commit -- --seconds {} --writers {}{}",
            self.measure.as_secs_f64(),
            writers.join(","),
            if self.via_follower {
                " --via-follower"
            } else {
                ""
            }
        )
    }
}

/// What one level of concurrency achieved during its measured window.
struct Level {
    writers: usize,
    commits_per_s: f64,
    p50: Duration,
    p99: Duration,
    /// CPU seconds this process used per wall-clock second: how many cores were busy.
    cpu_cores: f64,
    /// Durable log appends during the window, on the leader and on the watched follower.
    leader_flushes: Flushes,
    follower_flushes: Flushes,
    /// False if the leader lost its leadership (or its term moved) during the window: then the
    /// flush counts are not the leader's alone.
    leader_stable: bool,
    errors: usize,
    first_error: Option<String>,
}

/// A replica's counters of durable log appends: one redb write transaction and one fsync per
/// flush, carrying `entries` log entries in all.
#[derive(Clone, Copy)]
struct Flushes {
    flushes: u64,
    entries: u64,
}

impl Flushes {
    fn read(replica: &Replica) -> Self {
        Self {
            flushes: replica.log_flushes.flushes.load(Ordering::Relaxed),
            entries: replica.log_flushes.entries.load(Ordering::Relaxed),
        }
    }

    fn since(self, earlier: Self) -> Self {
        Self {
            flushes: self.flushes - earlier.flushes,
            entries: self.entries - earlier.entries,
        }
    }

    /// The batching factor; `None` without a flush.
    fn entries_per_flush(self) -> Option<f64> {
        (self.flushes > 0).then(|| self.entries as f64 / self.flushes as f64)
    }
}

/// The two replicas whose flush counters each level reads: the leader, and the follower that
/// `--via-follower` sends the writes to.
struct Watched {
    leader: Arc<Replica>,
    follower: Arc<Replica>,
}

/// The leader's term while `replica` believes it is the leader, else `None`.
fn leading_term(replica: &Replica) -> Option<u64> {
    let metrics = replica.metrics();
    (metrics.current_leader == Some(replica.id)).then_some(metrics.current_term)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("cannot create a temp dir for the data dirs")?;
    // Both probes run before the cluster starts, so nothing else touches the disk meanwhile.
    let probe_dir = dir.path().to_path_buf();
    let probe = args.probe;
    let fsync_per_s = tokio::task::spawn_blocking(move || fsync_rate(&probe_dir, probe)).await??;
    let probe_dir = dir.path().to_path_buf();
    let redb_per_s =
        tokio::task::spawn_blocking(move || redb_commit_rate(&probe_dir, probe)).await??;

    let nodes = start_cluster(dir.path()).await?;
    let status = wait_for_cluster(nodes[0].api_addr).await?;
    let follower = status
        .members
        .iter()
        .find(|m| m.id != status.leader_id)
        .context("the cluster has no follower")?;
    let target = if args.via_follower {
        follower.api_addr.clone()
    } else {
        status.leader_api_addr.clone()
    };
    let replica = |id: u64| {
        nodes
            .iter()
            .find(|n| n.replica.id == id)
            .map(|n| n.replica.clone())
            .with_context(|| format!("scheduler {id} is not one of this process's schedulers"))
    };
    let watched = Watched {
        leader: replica(status.leader_id)?,
        follower: replica(follower.id)?,
    };

    let mut levels = Vec::new();
    for (index, &writers) in args.writers.iter().enumerate() {
        levels.push(run_level(&target, &watched, index, writers, &args).await?);
    }
    // A replica handle keeps its state machine's redb file open; shutdown waits for it to close.
    drop(watched);
    for node in nodes {
        node.shutdown().await;
    }

    print_report(&args, fsync_per_s, redb_per_s, &levels);
    Ok(())
}

/// Back-to-back `write(4 KiB) + fdatasync` per second on one file in `dir`.
fn fsync_rate(dir: &Path, duration: Duration) -> anyhow::Result<f64> {
    let path = dir.join("fsync-probe");
    let file = File::options()
        .create_new(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    let block = [0xa5_u8; PROBE_BLOCK_BYTES];
    let offset = |n: u64| (n % PROBE_BLOCKS) * PROBE_BLOCK_BYTES as u64;
    for n in 0..PROBE_BLOCKS {
        file.write_all_at(&block, offset(n))?;
    }
    file.sync_all()?;
    let start = Instant::now();
    let mut syncs = 0_u64;
    while start.elapsed() < duration {
        file.write_all_at(&block, offset(syncs))?;
        file.sync_data()?;
        syncs += 1;
    }
    let rate = syncs as f64 / start.elapsed().as_secs_f64();
    std::fs::remove_file(&path)?;
    Ok(rate)
}

/// Back-to-back redb write transactions of one insert each, committed with the default
/// durability (`Immediate`, as the Raft log uses), per second: unbatched commits through the
/// same storage engine.
fn redb_commit_rate(dir: &Path, duration: Duration) -> anyhow::Result<f64> {
    const TABLE: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("probe");
    let path = dir.join("redb-probe.redb");
    let db = redb::Database::create(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    let value = [0x5a_u8; PROBE_VALUE_BYTES];
    let start = Instant::now();
    let mut commits = 0_u64;
    while start.elapsed() < duration {
        let txn = db.begin_write()?;
        txn.open_table(TABLE)?.insert(commits, value.as_slice())?;
        txn.commit()?;
        commits += 1;
    }
    let rate = commits as f64 / start.elapsed().as_secs_f64();
    drop(db);
    std::fs::remove_file(&path)?;
    Ok(rate)
}

async fn bind_local() -> anyhow::Result<TcpListener> {
    Ok(TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?)
}

/// Scheduler 1 bootstraps the cluster; the others join it through its API (and retry until it
/// has become leader).
async fn start_cluster(dir: &Path) -> anyhow::Result<Vec<Scheduler>> {
    let mut nodes: Vec<Scheduler> = Vec::new();
    for id in 1..=NODES {
        let listeners = Listeners {
            api: bind_local().await?,
            raft: bind_local().await?,
            http: bind_local().await?,
        };
        let config = Config {
            node_id: id,
            data_dir: dir.join(format!("node-{id}")),
            api_listen: listeners.api.local_addr()?,
            raft_listen: listeners.raft.local_addr()?,
            http_listen: listeners.http.local_addr()?,
            bootstrap: id == 1,
            join: nodes.first().map(|first| first.api_addr.to_string()),
            ..Config::default()
        };
        nodes.push(server::start(&config, listeners).await?);
    }
    Ok(nodes)
}

/// Polls scheduler 1 until it knows a leader, all schedulers are voters and the cluster id is
/// committed (so no membership change or set-up write overlaps the measurement).
async fn wait_for_cluster(api_addr: SocketAddr) -> anyhow::Result<ClusterStatus> {
    let deadline = Instant::now() + CLUSTER_START_TIMEOUT;
    let mut client = ClusterServiceClient::connect(format!("http://{api_addr}")).await?;
    loop {
        let status = client.status(ClusterStatusRequest {}).await?.into_inner();
        let voters = status.members.iter().filter(|m| m.voter).count() as u64;
        if status.leader_id != 0 && voters == NODES && !status.cluster_id.is_empty() {
            return Ok(status);
        }
        ensure!(
            Instant::now() < deadline,
            "the cluster did not form within {CLUSTER_START_TIMEOUT:?} (leader {}, {voters}/{NODES} voters)",
            status.leader_id
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One write: a small spec whose replica count flips on every visit to a name, so each
/// command changes the state and bumps the deployment's generation.
fn apply_request(level: usize, writer: usize, seq: u64) -> ApplyDeploymentRequest {
    let round = seq / NAMES_PER_WRITER;
    ApplyDeploymentRequest {
        spec: Some(DeploymentSpec {
            name: format!("l{level}-w{writer}-{}", seq % NAMES_PER_WRITER),
            model: "bench/tiny-model".into(),
            replicas: 1 + (round % 2) as u32,
            resources: Some(Resources {
                cpu_millis: 500,
                memory_mib: 512,
                ..Resources::default()
            }),
            command: vec!["serve".into(), "--port".into(), "8000".into()],
            ..DeploymentSpec::default()
        }),
        // expected_generation 0: apply unconditionally.
        ..ApplyDeploymentRequest::default()
    }
}

/// What one writer saw in the measured window.
#[derive(Default)]
struct WriterLog {
    latencies: Vec<Duration>,
    errors: usize,
    first_error: Option<String>,
}

/// Sends writes back to back until `until`; keeps the calls that completed in
/// `[measure_from, until]` (earlier ones are warm-up).
async fn writer(
    mut client: DeploymentServiceClient<Channel>,
    level: usize,
    writer: usize,
    measure_from: Instant,
    until: Instant,
) -> WriterLog {
    let mut log = WriterLog::default();
    let mut seq = 0;
    while Instant::now() < until {
        let request = apply_request(level, writer, seq);
        seq += 1;
        let sent = Instant::now();
        let result = client.apply(request).await;
        let done = Instant::now();
        if done < measure_from || done > until {
            continue;
        }
        match result {
            Ok(_) => log.latencies.push(done - sent),
            Err(status) => {
                log.errors += 1;
                log.first_error.get_or_insert_with(|| status.to_string());
            }
        }
    }
    log
}

async fn run_level(
    target: &str,
    watched: &Watched,
    level: usize,
    writers: usize,
    args: &Args,
) -> anyhow::Result<Level> {
    let endpoint = Endpoint::from_shared(format!("http://{target}"))?.tcp_nodelay(true);
    let mut channels = Vec::new();
    for _ in 0..writers.min(CHANNELS_MAX) {
        channels.push(endpoint.connect().await?);
    }
    let measure_from = Instant::now() + args.warmup;
    let until = measure_from + args.measure;
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let client = DeploymentServiceClient::new(channels[w % channels.len()].clone());
            tokio::spawn(writer(client, level, w, measure_from, until))
        })
        .collect();
    tokio::time::sleep_until(measure_from.into()).await;
    let cpu_from = cpu_time();
    let term_from = leading_term(&watched.leader);
    let leader_from = Flushes::read(&watched.leader);
    let follower_from = Flushes::read(&watched.follower);
    tokio::time::sleep_until(until.into()).await;
    let cpu = cpu_time() - cpu_from;
    let leader_flushes = Flushes::read(&watched.leader).since(leader_from);
    let follower_flushes = Flushes::read(&watched.follower).since(follower_from);
    let leader_stable = term_from.is_some() && leading_term(&watched.leader) == term_from;

    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for task in tasks {
        let log = task.await?;
        latencies.extend(log.latencies);
        errors += log.errors;
        first_error = first_error.or(log.first_error);
    }
    latencies.sort_unstable();
    let seconds = args.measure.as_secs_f64();
    Ok(Level {
        writers,
        commits_per_s: latencies.len() as f64 / seconds,
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        cpu_cores: cpu.as_secs_f64() / seconds,
        leader_flushes,
        follower_flushes,
        leader_stable,
        errors,
        first_error,
    })
}

/// Nearest-rank percentile of sorted samples; zero when there are none.
fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// User plus system CPU time of this process, all threads.
fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes into the zero-initialized struct it is given, which is a
    // valid `rusage` (plain integers).
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

fn print_report(args: &Args, fsync_per_s: f64, redb_per_s: f64, levels: &[Level]) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let route = if args.via_follower {
        "a follower (forwarded to the leader)"
    } else {
        "the leader"
    };
    println!(
        "raft_commit: {NODES} schedulers in one process on 127.0.0.1, writers send Apply to {route}"
    );
    println!(
        "machine: {cores} cores; data dirs and probes under {}",
        std::env::temp_dir().display()
    );
    println!("fsync rate (4 KiB pwrite + fdatasync): {fsync_per_s:.0}/s");
    println!(
        "redb single-commit rate (1 insert per write txn, Durability::Immediate): {redb_per_s:.0}/s"
    );
    println!(
        "measured {:.1} s per level after {:.1} s of warm-up",
        args.measure.as_secs_f64(),
        args.warmup.as_secs_f64()
    );
    println!();
    println!(
        "| writers | commits/s | p50 ms | p99 ms | x fsync rate | x redb commit rate | leader fsyncs/s | entries/fsync leader | follower fsyncs/s | entries/fsync follower | CPU cores busy | errors |"
    );
    println!(
        "|--------:|----------:|-------:|-------:|-------------:|-------------------:|----------------:|---------------------:|------------------:|-----------------------:|---------------:|-------:|"
    );
    let seconds = args.measure.as_secs_f64();
    let per_flush = |f: Flushes| {
        f.entries_per_flush()
            .map_or_else(|| "-".to_owned(), |e| format!("{e:.1}"))
    };
    for l in levels {
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {:.1} | {:.1} | {:.0} | {} | {:.0} | {} | {:.2} | {} |",
            l.writers,
            l.commits_per_s,
            l.p50.as_secs_f64() * 1e3,
            l.p99.as_secs_f64() * 1e3,
            l.commits_per_s / fsync_per_s,
            l.commits_per_s / redb_per_s,
            l.leader_flushes.flushes as f64 / seconds,
            per_flush(l.leader_flushes),
            l.follower_flushes.flushes as f64 / seconds,
            per_flush(l.follower_flushes),
            l.cpu_cores,
            l.errors
        );
    }
    println!();
    println!(
        "fsyncs/s and entries/fsync: durable log appends (one redb transaction and one fdatasync each) in the window, from Replica::log_flushes"
    );
    for l in levels.iter().filter(|l| !l.leader_stable) {
        println!(
            "{} writers: the leader changed during the window; its flush figures include other work",
            l.writers
        );
    }
    for l in levels.iter().filter(|l| l.errors > 0) {
        if let Some(error) = &l.first_error {
            println!("{} writers, first error: {error}", l.writers);
        }
    }
    for l in levels.iter().filter(|l| l.writers == TARGET_WRITERS) {
        let ratio = l.commits_per_s / fsync_per_s;
        let verdict = if ratio >= TARGET_RATIO {
            "met"
        } else {
            "NOT met"
        };
        println!(
            "target: {TARGET_WRITERS} writers commit >= {TARGET_RATIO}x the fsync rate; measured {ratio:.1}x: {verdict}"
        );
        if let Some(batch) = l.leader_flushes.entries_per_flush() {
            println!(
                "batching at {TARGET_WRITERS} writers: {batch:.1} entries per fsync on the leader"
            );
        }
    }
    if args.smoke {
        println!("smoke pass (no --bench flag): not a measurement");
    } else {
        println!("command: {}", args.command());
    }
}
