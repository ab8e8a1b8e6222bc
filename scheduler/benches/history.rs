//! The placement history without Raft or the network (issue #6): what recording, storing and
//! reading events costs one scheduler, on a history of `--events N` events (default 1,000,000).
//!
//! The events are made the way `apply` makes them (`history::record`, then `history::seal`:
//! numbered, canonical JSON, hashed into the tree) and stored with `HistoryStore::append` in
//! batches of `--batch` events (default 20,000, the size of a large reconcile round). Their
//! mix is a cluster's: 1,000 deployments whose replicas are placed (with the node's facts),
//! started, become healthy, and some are later stopped for a rule (violation detected, stop
//! ordered, stopped). Figures:
//! - record + seal, and store, in events per second; bytes per event of `history.redb`;
//! - as-of answers (the API's code, `api::history::as_of`) for random deployments and instants:
//!   median, p99, max;
//! - a query page of 1,000 events of one deployment; inclusion proofs.
//!
//! Run: `cargo bench -p sov-scheduler --bench history` (`-- --events N --batch B`). Without
//! `--bench` it runs 20,000 events once as a smoke pass. Figures go to docs/benchmarks.md by
//! hand; the end-to-end figures (through Raft) are `cargo bench -p sov-e2e --bench history`.

use std::time::{Duration, Instant};

use sov_proto::merkle;
use sov_scheduler::api::history::as_of;
use sov_scheduler::history::{self, AllocationRef, Facts, What};
use sov_scheduler::raft::history_store::{Filter, HistoryStore};
use sov_scheduler::state::State;

const DEPLOYMENTS: u64 = 1_000;
/// 2026-12-01T00:00:00Z.
const T0: i64 = 1_796_083_200_000;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| v.parse().expect("a number"))
}

/// A small deterministic generator (xorshift), so every run stores the same history.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The facts of node `n`, as a placement records them.
fn facts(n: u64) -> Facts {
    let countries = ["FR", "DE", "PL", "IE", "NL", "SE", "US", "JP"];
    let country = countries[(n % countries.len() as u64) as usize];
    Facts {
        country: country.into(),
        subdivision: String::new(),
        site: format!("site-{}", n % 33),
        operator: format!("operator-{}", n % 16),
        operator_hq: country.into(),
        ultimate_parent_hq: if n.is_multiple_of(5) { "US" } else { country }.into(),
        location_trust: "operator-certificate".into(),
        fact_trust: [
            "country",
            "site",
            "operator",
            "operator_hq",
            "ultimate_parent_hq",
        ]
        .into_iter()
        .map(|fact| (fact.to_owned(), "operator-certificate".to_owned()))
        .collect(),
        certifications: vec!["iso27001".into(), "secnumcloud".into()],
    }
}

/// The next `n` events of the mix, about allocation numbers from `*next_alloc`.
fn events(rng: &mut Rng, next_alloc: &mut u64, n: usize) -> Vec<What> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let id = *next_alloc;
        *next_alloc += 1;
        let d = rng.below(DEPLOYMENTS);
        let node = rng.below(10_000);
        let a = AllocationRef {
            allocation: format!("bench-{d:04}-{id}"),
            deployment: format!("bench-{d:04}"),
            node: format!("bench-fr-{node}"),
        };
        out.push(What::AllocationPlaced {
            allocation: a.allocation.clone(),
            deployment: a.deployment.clone(),
            node: a.node.clone(),
            facts: facts(node).into(),
            eligible: "no rule of policy version 2 forbids it on these facts, and the node was ready with the resources".into(),
            replaces: String::new(),
        });
        out.push(What::AllocationStarted(a.clone()));
        out.push(What::AllocationHealthy(a.clone()));
        if rng.below(5) == 0 {
            let rules = vec!["bench-sites".to_string()];
            out.push(What::ViolationDetected {
                allocation: a.clone(),
                rules: rules.clone(),
                action: "stop-now".into(),
                drain: false,
            });
            out.push(What::StopOrdered {
                allocation: a.clone(),
                reason: "policy v3: bench-sites (stop-now)".into(),
                rules,
            });
            out.push(What::AllocationStopped(a));
        }
    }
    out
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let total = arg("--events", if full { 1_000_000 } else { 20_000 });
    let batch = arg("--batch", 20_000) as usize;
    let dir = tempfile::tempdir().expect("temp dir");
    let store = HistoryStore::open(dir.path()).expect("open");
    let mut state = State::default();
    let mut rng = Rng(0x5eed);
    let mut next_alloc = 0;
    let (mut sealing, mut storing) = (Duration::ZERO, Duration::ZERO);
    let mut json_bytes = 0u64;
    let mut index = 0u64;
    while state.history.size < total {
        let n = batch.min((total - state.history.size) as usize);
        index += 1;
        let whats = events(&mut rng, &mut next_alloc, n);
        // One command per batch; time advances 1 s per batch.
        let at_ms = T0 + index as i64 * 1_000;
        let t = Instant::now();
        for w in whats {
            history::record(&mut state, w);
        }
        history::seal(&mut state, index, at_ms);
        let recorded = std::mem::take(&mut state.journal.sealed);
        sealing += t.elapsed();
        json_bytes += recorded.iter().map(|r| r.json.len() as u64).sum::<u64>();
        let t = Instant::now();
        // Timed until the writer has stored the batch (the appends of a scheduler overlap
        // with its applies; here they are measured alone).
        store.append(recorded).expect("append");
        store.settle().expect("store");
        storing += t.elapsed();
    }
    let t = Instant::now();
    store.flush().expect("flush");
    let flushed = t.elapsed();
    let events = state.history.size;
    let file = std::fs::metadata(dir.path().join("history.redb"))
        .expect("history.redb")
        .len();
    println!(
        "{events} events in batches of {batch}: record + seal {:.0} events/s ({:.2} s), store {:.0} events/s ({:.2} s), flush {} ms",
        events as f64 / sealing.as_secs_f64(),
        sealing.as_secs_f64(),
        events as f64 / storing.as_secs_f64(),
        storing.as_secs_f64(),
        flushed.as_millis()
    );
    println!(
        "size: history.redb {:.1} MiB = {:.0} bytes per event (event JSON alone {:.0} bytes)",
        file as f64 / (1 << 20) as f64,
        file as f64 / events as f64,
        json_bytes as f64 / events as f64
    );

    // As-of answers for random deployments and instants in the history's time span.
    let span = index as i64 * 1_000;
    let queries = if full { 1_000 } else { 50 };
    let mut took = Vec::with_capacity(queries);
    let mut read = 0u64;
    for _ in 0..queries {
        let d = format!("bench-{:04}", rng.below(DEPLOYMENTS));
        let at = T0 + rng.below(span as u64) as i64;
        let t = Instant::now();
        let (answer, events_read) = as_of(&store, &d, at).expect("as-of");
        took.push(t.elapsed());
        read += events_read;
        std::hint::black_box(answer);
    }
    took.sort();
    println!(
        "as-of ({queries} random deployments and instants, {:.0} events folded on average): median {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        read as f64 / queries as f64,
        percentile(&took, 0.5).as_secs_f64() * 1e3,
        percentile(&took, 0.99).as_secs_f64() * 1e3,
        took[took.len() - 1].as_secs_f64() * 1e3
    );

    // A page of one deployment's events, and inclusion proofs.
    let reader = store.reader().expect("reader");
    let t = Instant::now();
    let page = reader
        .query(
            &Filter {
                deployment: "bench-0042".into(),
                ..Default::default()
            },
            0,
            1_000,
        )
        .expect("query");
    println!(
        "query: a page of {} events of one deployment in {:.2} ms",
        page.events.len(),
        t.elapsed().as_secs_f64() * 1e3
    );
    let t = Instant::now();
    let proofs = if full { 10_000 } else { 100 };
    for i in 0..proofs {
        let leaf = rng.below(events);
        let proof = merkle::inclusion_proof(&reader, leaf, events).expect("proof");
        std::hint::black_box((i, proof));
    }
    println!(
        "inclusion proofs at tree size {events}: {:.1} µs each",
        t.elapsed().as_secs_f64() * 1e6 / proofs as f64
    );
}
