//! Continuous compliance end to end (issue #5): real schedulers, real agents and real model
//! servers (`sov-model-server`), rules changed under running workloads.
//!
//! - the June 2026 directive: a `stop-now` rule stops the forbidden replicas of a 4E091 model
//!   (their processes are gone) while everything else keeps its process; then a `migrate` rule
//!   moves an EU-residency deployment off a US-owned Irish node, make-before-break, with the
//!   replacement healthy before the old process stops;
//! - the leader is killed in the middle of a migration: the new leader finishes it, no more
//!   processes run at once than replicas + `max_parallel`, nothing is lost;
//! - a drain moves replicas away make-before-break, and a forced drain stops them at once.
//!
//! Each test logs a timeline, so a failure can be read.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use sov_e2e::agent::{Agent, Facts, alive, model_servers};
use sov_e2e::{
    Cluster, Timeline, bin, cluster_status, history_events, http_get, rfc3339, sovctl, u64_field,
    wait_until,
};

/// A short TTL so a killed leader's successor is found quickly, and agents are not marked
/// down while the machine is busy.
const SCHEDULER_FLAGS: [&str; 4] = [
    "--heartbeat-ttl-ms",
    "6000",
    "--heartbeat-interval-ms",
    "500",
];
const WAIT: Duration = Duration::from_secs(60);

/// These tests each run 3 schedulers, several agents and up to a dozen model servers: one at a
/// time, so they do not starve each other (and the assertions on processes) of the 2 CPUs.
static HEAVY: Mutex<()> = Mutex::new(());

fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Node facts of the directive scenario's fleet, named `<country>-<pid>` so the `/proc` sweeps
/// of parallel test binaries never see each other's model servers.
fn fleet() -> Vec<(String, Facts)> {
    let facts = |country, operator, hq, parent| Facts {
        country,
        operator,
        operator_hq: hq,
        ultimate_parent_hq: parent,
    };
    let pid = std::process::id();
    [
        ("de", facts("DE", "Beispiel Rechenzentrum GmbH", "DE", "DE")),
        ("fr", facts("FR", "Exemple Cloud SAS", "FR", "FR")),
        (
            "ie",
            facts("IE", "Example Hyperscale Ireland Ltd", "IE", "US"),
        ),
        ("pl", facts("PL", "Przyklad Chmura sp. z o.o.", "PL", "PL")),
        ("us", facts("US", "Example Hyperscale Inc", "US", "US")),
    ]
    .into_iter()
    .map(|(n, f)| (format!("{n}-{pid}"), f))
    .collect()
}

/// A bundle directory: the shipped schema, entity data, base permit and residency rule, plus
/// the example rules named (deploy/examples/rules/NAME.cedar).
fn bundle(root: &Path, name: &str, rules: &[&str]) -> String {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).expect("bundle dir");
    for file in [
        "schema.cedarschema",
        "entities.json",
        "base.cedar",
        "residency.cedar",
    ] {
        std::fs::copy(repo().join("deploy/policies").join(file), dir.join(file)).expect("copy");
    }
    for rule in rules {
        let file = format!("{rule}.cedar");
        std::fs::copy(
            repo().join("deploy/examples/rules").join(&file),
            dir.join(&file),
        )
        .expect("copy rule");
    }
    dir.to_str().expect("utf-8 path").to_string()
}

/// A deployment of the tiny model server with a 1 s HTTP health check; `extra` is TOML added
/// at the top level (before the tables).
fn spec(root: &Path, name: &str, replicas: u32, extra: &str, command: &[String]) -> String {
    let path = root.join(format!("{name}.toml"));
    let command: Vec<String> = command.iter().map(|c| format!("{c:?}")).collect();
    std::fs::write(
        &path,
        format!(
            "name = {name:?}\nmodel = \"sov/tiny\"\nreplicas = {replicas}\ncommand = [{}]\n{extra}\n\
             [resources]\ncpu_millis = 100\nmemory_mib = 64\n\
             [health]\nhttp = \"/health\"\ninterval = \"1s\"\ntimeout = \"1s\"\n",
            command.join(", ")
        ),
    )
    .expect("cannot write spec");
    path.to_str().expect("utf-8 path").to_string()
}

fn server() -> Vec<String> {
    vec![bin("sov-model-server").to_str().expect("utf-8").to_string()]
}

fn show(endpoints: &str, deployment: &str) -> Result<Value, String> {
    let out = sovctl(endpoints, &["deploy", "show", deployment, "-o", "json"]);
    if out.success() {
        Ok(out.json())
    } else {
        Err(out.stderr.clone())
    }
}

/// Replicas of a deployment that should run: id -> replica.
fn wanted(d: &Value) -> BTreeMap<String, Value> {
    d["replicas"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["desired"] == "run")
        .map(|r| (r["id"].as_str().unwrap_or("").to_string(), r.clone()))
        .collect()
}

/// Waits until the deployment has exactly `replicas` replicas that should run, all reported
/// running, none moving, and `check` holds.
fn wait_converged(
    tl: &Timeline,
    endpoints: &str,
    deployment: &str,
    replicas: usize,
    check: impl Fn(&Value) -> Result<(), String>,
) -> Value {
    let (d, took) = wait_until(&format!("{deployment} converged"), WAIT, || {
        let d = show(endpoints, deployment)?;
        let run = wanted(&d);
        let all_running = run.values().all(|r| r["status"] == "running");
        let moving = run.values().any(|r| r["standing"] == "migrating");
        if run.len() != replicas || !all_running || moving {
            return Err(format!("replicas: {}", d["replicas"]));
        }
        check(&d)?;
        Ok(d)
    });
    let nodes: Vec<String> = wanted(&d)
        .values()
        .map(|r| r["node"].as_str().unwrap_or("").to_string())
        .collect();
    tl.log(format_args!(
        "{deployment}: {replicas} running on {nodes:?} after {} ms",
        took.as_millis()
    ));
    d
}

/// Node names of the replicas that should run.
fn nodes_of(d: &Value) -> BTreeSet<String> {
    wanted(d)
        .values()
        .map(|r| r["node"].as_str().unwrap_or("").to_string())
        .collect()
}

/// The one process of a model server, by node and allocation.
fn pid_of(node: &str, allocation: &str) -> Result<u32, String> {
    match model_servers(node, allocation).as_slice() {
        [pid] => Ok(*pid),
        other => Err(format!("{allocation} on {node}: processes {other:?}")),
    }
}

/// Every model server of every replica that should run: allocation id -> (node, pid).
fn processes(endpoints: &str, deployments: &[&str]) -> BTreeMap<String, (String, u32)> {
    let mut out = BTreeMap::new();
    for d in deployments {
        let shown = show(endpoints, d).expect("deploy show");
        for (id, r) in wanted(&shown) {
            let node = r["node"].as_str().unwrap_or("").to_string();
            let pid = pid_of(&node, &id).expect("one process per replica");
            out.insert(id, (node, pid));
        }
    }
    out
}

fn plan(endpoints: &str, dir: &str) -> Value {
    let out = sovctl(endpoints, &["policy", "plan", dir, "-o", "json"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a plan with impacts exits 1: {out}"
    );
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("plan JSON: {e}: {out}"))
}

/// Samples, every 50 ms until finished, how many replicas of `deployment` have a live process
/// on the given nodes (allocations, not processes: a `sh -c` command has a child with the same
/// environment); keeps the least and the most.
struct Sampler {
    stop: Arc<AtomicBool>,
    least: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(nodes: Vec<String>, deployment: &str) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let least = Arc::new(AtomicUsize::new(usize::MAX));
        let most = Arc::new(AtomicUsize::new(0));
        let (s, l, m) = (stop.clone(), least.clone(), most.clone());
        let prefix = format!("{deployment}-");
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let count = nodes
                    .iter()
                    .flat_map(|n| model_servers(n, ""))
                    .filter_map(allocation_of)
                    .filter(|a| a.starts_with(&prefix))
                    .collect::<BTreeSet<String>>()
                    .len();
                l.fetch_min(count, Ordering::Relaxed);
                m.fetch_max(count, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Sampler {
            stop,
            least,
            most,
            thread: Some(thread),
        }
    }

    /// (least, most) replicas with a process seen at once.
    fn finish(mut self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("sampler");
        }
        (
            self.least.load(Ordering::Relaxed),
            self.most.load(Ordering::Relaxed),
        )
    }
}

/// The `SOV_ALLOCATION` of a process.
fn allocation_of(pid: u32) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    environ
        .split(|&b| b == 0)
        .find_map(|v| v.strip_prefix(b"SOV_ALLOCATION="))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

#[test]
fn the_june_2026_directive_stops_and_moves_only_what_the_rules_forbid() {
    let _heavy = heavy();
    let tl = Timeline::new();
    let mut cluster = Cluster::start_with(3, tl, &SCHEDULER_FLAGS);
    cluster.wait_formed(3);
    let endpoints = cluster.endpoints();
    let root = cluster.scratch();
    let nodes = fleet();
    let name = |country: &str| {
        nodes
            .iter()
            .find(|(n, _)| n.starts_with(country))
            .map(|(n, _)| n.clone())
            .expect("node")
    };
    let _agents: Vec<Agent> = nodes
        .iter()
        .map(|(n, f)| Agent::start_with_ports(&root, n, &endpoints, f, "", 4))
        .collect();
    wait_until("five nodes ready", WAIT, || {
        let out = sovctl(&endpoints, &["node", "list", "-o", "json"]);
        let ready = out.json()["nodes"]
            .as_array()
            .map_or(0, |n| n.iter().filter(|n| n["status"] == "ready").count());
        if ready == 5 {
            Ok(())
        } else {
            Err(format!("{ready} ready"))
        }
    });
    tl.log("five agents ready: DE, FR, IE (US parent), PL, US");

    // v1: the base permit and residency only.
    let v1 = bundle(&root, "v1", &[]);
    sovctl(&endpoints, &["policy", "apply", &v1]).assert_ok();
    let frontier = spec(
        &root,
        "frontier",
        2,
        "[export]\neccn = \"4E091\"\n[placement]\nprefer_countries = [\"US\", \"FR\"]",
        &server(),
    );
    let open_eu = spec(
        &root,
        "open-eu",
        1,
        "[residency]\nallowed = [\"EU27\"]\n[placement]\nprefer_countries = [\"IE\"]",
        &server(),
    );
    let open_any = spec(&root, "open-any", 3, "", &server());
    for f in [&frontier, &open_eu, &open_any] {
        sovctl(&endpoints, &["deploy", "apply", "-f", f]).assert_ok();
    }
    let fr = wait_converged(&tl, &endpoints, "frontier", 2, |_| Ok(()));
    assert_eq!(
        nodes_of(&fr),
        BTreeSet::from([name("fr"), name("us")]),
        "frontier prefers US and FR"
    );
    let eu = wait_converged(&tl, &endpoints, "open-eu", 1, |_| Ok(()));
    assert_eq!(nodes_of(&eu), BTreeSet::from([name("ie")]));
    wait_converged(&tl, &endpoints, "open-any", 3, |_| Ok(()));
    let before = processes(&endpoints, &["frontier", "open-eu", "open-any"]);
    tl.log(format_args!("model servers: {before:?}"));

    // v2: the directive. The plan names exactly the French frontier replica.
    let v2 = bundle(&root, "v2", &["directive-4e091-us-only"]);
    let p = plan(&endpoints, &v2);
    let impacts = p["allocations"].as_array().cloned().unwrap_or_default();
    assert_eq!(impacts.len(), 1, "{p}");
    assert_eq!(impacts[0]["action"], "stop-now");
    assert_eq!(impacts[0]["deployment"], "frontier");
    assert_eq!(impacts[0]["node"], name("fr").as_str());
    let stopped_id = impacts[0]["allocation"].as_str().unwrap().to_string();
    let hash = p["plan_hash"].as_str().expect("plan hash").to_string();
    let applied_at = Instant::now();
    let out = sovctl(
        &endpoints,
        &[
            "policy",
            "apply",
            &v2,
            "--plan-hash",
            &hash,
            "--wait",
            "--wait-timeout",
            "80s",
        ],
    );
    out.assert_ok();
    tl.log(format_args!(
        "v2 applied and converged: {}",
        out.stdout.trim()
    ));
    let (_, took) =
        wait_until(
            "the French frontier process to be gone",
            WAIT,
            || match model_servers(&name("fr"), &stopped_id).as_slice() {
                [] => Ok(()),
                pids => Err(format!("still running: {pids:?}")),
            },
        );
    tl.log(format_args!(
        "forbidden frontier process on FR gone {} ms after the apply returned ({} ms after it was sent)",
        took.as_millis(),
        applied_at.elapsed().as_millis()
    ));
    assert!(!alive(before[&stopped_id].1));
    // Its replacement may only go where the directive permits: the US node.
    let fr = wait_converged(&tl, &endpoints, "frontier", 2, |_| Ok(()));
    assert_eq!(nodes_of(&fr), BTreeSet::from([name("us")]));

    // v3: EU-residency deployments only on operators with no non-EU parent: open-eu migrates
    // off the US-owned Irish node, make-before-break.
    let v3 = bundle(
        &root,
        "v3",
        &["directive-4e091-us-only", "eu-sovereign-operator"],
    );
    let p = plan(&endpoints, &v3);
    let impacts = p["allocations"].as_array().cloned().unwrap_or_default();
    assert_eq!(impacts.len(), 1, "{p}");
    assert_eq!(impacts[0]["action"], "migrate");
    assert_eq!(impacts[0]["deployment"], "open-eu");
    let old_eu = impacts[0]["allocation"].as_str().unwrap().to_string();
    let hash = p["plan_hash"].as_str().expect("plan hash").to_string();
    let all_nodes: Vec<String> = nodes.iter().map(|(n, _)| n.clone()).collect();
    let sampler = Sampler::start(all_nodes.clone(), "open-eu");
    let out = sovctl(
        &endpoints,
        &[
            "policy",
            "apply",
            &v3,
            "--plan-hash",
            &hash,
            "--wait",
            "--wait-timeout",
            "80s",
        ],
    );
    out.assert_ok();
    tl.log(format_args!(
        "v3 applied and converged: {}",
        out.stdout.trim()
    ));
    let eu = wait_converged(&tl, &endpoints, "open-eu", 1, |d| {
        match model_servers(&name("ie"), &old_eu).as_slice() {
            [] => Ok(()),
            pids => Err(format!(
                "old process on IE still runs: {pids:?} ({})",
                d["replicas"]
            )),
        }
    });
    let (least, most) = sampler.finish();
    tl.log(format_args!(
        "open-eu model servers during the move: at least {least}, at most {most}"
    ));
    assert!(least >= 1, "open-eu was left without a serving process");
    assert!(most <= 2, "more than one replacement at once: {most}");
    let (id, replica) = wanted(&eu).into_iter().next().unwrap();
    let node = replica["node"].as_str().unwrap();
    assert!(
        [name("fr"), name("de"), name("pl")].contains(&node.to_string()),
        "open-eu now on {node}"
    );
    assert_eq!(replica["replaces"], old_eu.as_str());
    let port = replica["port"].as_u64().unwrap() as u16;
    let (code, body) = http_get(port, "/health").expect("replacement answers");
    assert_eq!(code, 200, "{body}");
    tl.log(format_args!(
        "replacement {id} on {node} healthy on port {port}"
    ));

    // Everything else kept its process from the start: never restarted.
    let after = processes(&endpoints, &["frontier", "open-any"]);
    for (id, (node, pid)) in &before {
        if *id == stopped_id || *id == old_eu {
            continue;
        }
        assert_eq!(
            after.get(id),
            Some(&(node.clone(), *pid)),
            "{id} was restarted or moved"
        );
    }
    for d in ["frontier", "open-any"] {
        for r in wanted(&show(&endpoints, d).unwrap()).values() {
            assert_eq!(r["restarts"], 0, "{r}");
        }
    }
    let list = sovctl(&endpoints, &["deploy", "list", "-o", "json"]).json();
    for d in list["deployments"].as_array().unwrap() {
        assert_eq!(d["compliance"]["state"], "compliant", "{d}");
    }

    history_records_the_directive(&tl, &cluster, &stopped_id, &old_eu, &id, node);
}

/// The one event of `kind` about allocation `id` in `events`.
fn event_of<'a>(events: &'a [Value], kind: &str, id: &str) -> &'a Value {
    let found: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == kind && e["allocation"] == id)
        .collect();
    assert_eq!(found.len(), 1, "one {kind} of {id} in {events:#?}");
    found[0]
}

/// `sovctl history query --deployment D --as-of T` (T in ms): allocation -> replica.
fn as_of(endpoints: &str, deployment: &str, at_ms: i64) -> BTreeMap<String, Value> {
    let at = rfc3339(at_ms);
    let out = sovctl(
        endpoints,
        &[
            "history",
            "query",
            "--deployment",
            deployment,
            "--as-of",
            &at,
            "-o",
            "json",
        ],
    );
    out.assert_ok();
    let answer = out.json();
    assert_eq!(answer["at_ms"], at_ms, "{answer}");
    answer["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["allocation"].as_str().unwrap().to_string(), r.clone()))
        .collect()
}

/// The history of the directive scenario (issues #5 and #6): each step recorded with the policy
/// version in force, as-of answers before, during and after the migration, and an export that
/// verifies offline with the cluster's public key.
fn history_records_the_directive(
    tl: &Timeline,
    cluster: &Cluster,
    stopped: &str,
    old_eu: &str,
    new_eu: &str,
    new_node: &str,
) {
    let endpoints = cluster.endpoints();
    let policies = history_events(&endpoints, &["--kind", "policy.activated"]);
    let versions: Vec<u64> = policies
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions.len(), 3, "{policies:#?}");
    for e in &policies {
        assert_eq!(e["policy_version"], e["version"], "{e}");
    }
    let (v2, v3) = (versions[1], versions[2]);
    assert_eq!(policies[1]["stopped"], 1, "v2 stopped one replica");
    assert_eq!(policies[2]["migrating"], 1, "v3 moved one replica");

    // The directive's stop: ordered, naming the rule, in the entry that activated v2, then
    // confirmed by the agent; the replacement placed under v2 on the US node, with its facts.
    let frontier = history_events(&endpoints, &["--deployment", "frontier"]);
    let ordered = event_of(&frontier, "allocation.stop-ordered", stopped);
    assert_eq!(ordered["rules"][0], "directive-4e091-us-only");
    assert_eq!(ordered["policy_version"], v2, "{ordered}");
    assert_eq!(
        ordered["raft_index"], policies[1]["raft_index"],
        "same entry: {ordered}"
    );
    let by_rule = history_events(&endpoints, &["--rule", "directive-4e091-us-only"]);
    assert_eq!(
        by_rule.len(),
        1,
        "one stop under the directive: {by_rule:#?}"
    );
    let confirmed = event_of(&frontier, "allocation.stopped", stopped);
    assert!(confirmed["seq"].as_u64() > ordered["seq"].as_u64());
    let replacement: Vec<&Value> = frontier
        .iter()
        .filter(|e| e["kind"] == "allocation.placed" && e["policy_version"] == v2)
        .collect();
    assert_eq!(replacement.len(), 1, "{frontier:#?}");
    assert_eq!(replacement[0]["facts"]["country"], "US");
    assert_eq!(replacement[0]["facts"]["ultimate_parent_hq"], "US");

    // The move: detected under v3, the replacement placed (replaces = the old one), healthy,
    // then the old one migrated to it and stopped.
    let eu = history_events(&endpoints, &["--deployment", "open-eu"]);
    let detected = event_of(&eu, "violation.detected", old_eu);
    assert_eq!(detected["action"], "migrate");
    assert_eq!(detected["rules"][0], "eu-sovereign-operator");
    assert_eq!(detected["policy_version"], v3);
    let placed = event_of(&eu, "allocation.placed", new_eu);
    assert_eq!(placed["replaces"], old_eu);
    assert_eq!(placed["node"], new_node);
    assert_eq!(
        placed["facts"]["ultimate_parent_hq"],
        placed["facts"]["country"]
    );
    let healthy = event_of(&eu, "allocation.healthy", new_eu);
    let migrated = event_of(&eu, "allocation.migrated", old_eu);
    assert_eq!(migrated["to_node"], new_node);
    assert_eq!(migrated["replacement"], new_eu);
    let gone = event_of(&eu, "allocation.stopped", old_eu);
    let seq = |e: &Value| e["seq"].as_u64().unwrap();
    assert!(seq(detected) < seq(placed) && seq(placed) < seq(healthy));
    assert!(seq(healthy) < seq(migrated) && seq(migrated) < seq(gone));
    tl.log("history: v1..v3, the stop and the move, each with its policy version");

    // As of instants before, during and after the move.
    let at = |e: &Value| e["at_ms"].as_i64().unwrap();
    let before = as_of(&endpoints, "open-eu", at(detected) - 1);
    assert_eq!(before.keys().collect::<Vec<_>>(), [old_eu], "{before:?}");
    assert_eq!(before[old_eu]["country"], "IE");
    assert_eq!(before[old_eu]["ultimate_parent_hq"], "US");
    assert_eq!(before[old_eu]["standing"], "compliant");
    let during = as_of(&endpoints, "open-eu", at(healthy));
    assert_eq!(during.len(), 2, "{during:?}");
    assert!(
        during[old_eu]["standing"]
            .as_str()
            .unwrap()
            .starts_with("migrate"),
        "{during:?}"
    );
    assert_eq!(during[new_eu]["node"], new_node);
    assert_eq!(during[new_eu]["status"], "running");
    let after = as_of(&endpoints, "open-eu", at(gone));
    assert_eq!(after.keys().collect::<Vec<_>>(), [new_eu], "{after:?}");
    assert_eq!(after[new_eu]["placed_under_policy"], v3);
    tl.log("as-of before, during and after the move: IE, IE + replacement, replacement");

    // Everything exported verifies offline against the signed checkpoint.
    let file = cluster.scratch().join("evidence.jsonl");
    let file = file.to_str().unwrap();
    sovctl(&endpoints, &["history", "export", "-f", file]).assert_ok();
    let key = cluster.public_key();
    let out = sovctl(
        "http://127.0.0.1:1",
        &["audit", "verify", file, "--key", key.to_str().unwrap()],
    );
    out.assert_ok();
    tl.log(format_args!("audit verify: {}", out.stdout.trim()));
}

#[test]
fn a_new_leader_finishes_a_migration_the_old_one_started() {
    let _heavy = heavy();
    let tl = Timeline::new();
    let mut cluster = Cluster::start_with(3, tl, &SCHEDULER_FLAGS);
    cluster.wait_formed(3);
    let endpoints = cluster.endpoints();
    let root = cluster.scratch();
    let nodes: Vec<(String, Facts)> = fleet()
        .into_iter()
        .filter(|(n, _)| ["de", "fr", "ie"].iter().any(|c| n.starts_with(c)))
        .collect();
    let _agents: Vec<Agent> = nodes
        .iter()
        .map(|(n, f)| Agent::start_with_ports(&root, n, &endpoints, f, "", 2))
        .collect();
    let ie = nodes[2].0.clone();
    sovctl(&endpoints, &["policy", "apply", &bundle(&root, "v1", &[])]).assert_ok();
    // Replacements take 4 s to become healthy, so the migration is caught in the middle.
    let slow = vec![
        "sh".to_string(),
        "-c".to_string(),
        format!("sleep 4; exec {}", server()[0]),
    ];
    let d = spec(
        &root,
        "open-eu",
        2,
        "[residency]\nallowed = [\"EU27\"]\n[placement]\nspread = \"none\"\nprefer_countries = [\"IE\"]\n\
         [migration]\nmax_parallel = 1\ndeadline = \"5m\"",
        &slow,
    );
    sovctl(&endpoints, &["deploy", "apply", "-f", &d]).assert_ok();
    let placed = wait_converged(&tl, &endpoints, "open-eu", 2, |_| Ok(()));
    assert_eq!(nodes_of(&placed), BTreeSet::from([ie.clone()]));

    let all_nodes: Vec<String> = nodes.iter().map(|(n, _)| n.clone()).collect();
    let sampler = Sampler::start(all_nodes, "open-eu");
    let v2 = bundle(&root, "v2", &["eu-sovereign-operator"]);
    sovctl(&endpoints, &["policy", "apply", &v2, "--yes"]).assert_ok();
    tl.log("migrate rule applied");
    // The first replacement is placed and starting: kill the leader now.
    let (replacement, _) = wait_until("a replacement placed", WAIT, || {
        let d = show(&endpoints, "open-eu")?;
        wanted(&d)
            .into_values()
            .find(|r| r["replaces"].as_str().is_some_and(|s| !s.is_empty()))
            .filter(|r| r["status"] != "running")
            .ok_or_else(|| format!("replicas: {}", d["replicas"]))
    });
    let leader = u64_field(&cluster_status(&endpoints).expect("status"), "leader_id");
    cluster.node(leader).kill();
    tl.log(format_args!(
        "killed leader {leader} while {} starts on {}",
        replacement["id"], replacement["node"]
    ));
    let survivors: Vec<String> = (1..=3)
        .filter(|id| *id != leader)
        .map(|id| cluster.node(id).endpoint())
        .collect();
    let endpoints = survivors.join(",");
    let done = wait_converged(&tl, &endpoints, "open-eu", 2, |d| {
        if nodes_of(d).contains(&ie) || !model_servers(&ie, "").is_empty() {
            Err("still on the Irish node".into())
        } else {
            Ok(())
        }
    });
    let (least, most) = sampler.finish();
    tl.log(format_args!(
        "open-eu processes during the move: at least {least}, at most {most}"
    ));
    assert!(least >= 2, "fell below its 2 replicas: {least}");
    assert!(
        most <= 3,
        "more than 2 replicas + max_parallel 1 at once: {most}"
    );
    assert!(nodes_of(&done).iter().all(|n| *n != ie));
    let versions = sovctl(&endpoints, &["policy", "list", "-o", "json"]).json();
    assert_eq!(versions["versions"].as_array().map(Vec::len), Some(2));
}

#[test]
fn a_drain_moves_replicas_away_and_a_forced_drain_stops_them_at_once() {
    let _heavy = heavy();
    let tl = Timeline::new();
    let mut cluster = Cluster::start_with(1, tl, &SCHEDULER_FLAGS);
    cluster.wait_formed(1);
    let endpoints = cluster.endpoints();
    let root = cluster.scratch();
    let nodes: Vec<(String, Facts)> = fleet()
        .into_iter()
        .filter(|(n, _)| ["de", "fr"].iter().any(|c| n.starts_with(c)))
        .collect();
    let _agents: Vec<Agent> = nodes
        .iter()
        .map(|(n, f)| Agent::start_with_ports(&root, n, &endpoints, f, "", 2))
        .collect();
    let (de, fr) = (nodes[0].0.clone(), nodes[1].0.clone());
    sovctl(&endpoints, &["policy", "apply", &bundle(&root, "v1", &[])]).assert_ok();
    let d = spec(
        &root,
        "svc",
        1,
        "[placement]\nprefer_countries = [\"FR\"]",
        &server(),
    );
    sovctl(&endpoints, &["deploy", "apply", "-f", &d]).assert_ok();
    let placed = wait_converged(&tl, &endpoints, "svc", 1, |_| Ok(()));
    assert_eq!(nodes_of(&placed), BTreeSet::from([fr.clone()]));
    let old = pid_of(&fr, wanted(&placed).keys().next().unwrap()).unwrap();

    let out = sovctl(
        &endpoints,
        &[
            "node",
            "drain",
            &fr,
            "--deadline",
            "2m",
            "--wait",
            "--wait-timeout",
            "80s",
        ],
    );
    out.assert_ok();
    tl.log(format_args!("drained {fr}: {}", out.stdout.trim()));
    let moved = wait_converged(&tl, &endpoints, "svc", 1, |_| Ok(()));
    assert_eq!(nodes_of(&moved), BTreeSet::from([de.clone()]));
    wait_until("the FR process to be gone", WAIT, || {
        if alive(old) {
            Err("alive".into())
        } else {
            Ok(())
        }
    });

    // A forced drain of the last node stops its replica at once; with nowhere left to go, the
    // deployment is unplaceable and says why.
    sovctl(&endpoints, &["node", "drain", &de, "--force"]).assert_ok();
    wait_until("svc stopped and unplaceable", WAIT, || {
        let d = show(&endpoints, "svc")?;
        let state = d["compliance"]["state"].as_str().unwrap_or("").to_string();
        if wanted(&d).is_empty() && state == "unplaceable" && model_servers(&de, "").is_empty() {
            Ok(())
        } else {
            Err(format!("{state}: {}", d["replicas"]))
        }
    });
    let explained = show(&endpoints, "svc").unwrap();
    let why = explained["compliance"]["explanation"]
        .as_str()
        .unwrap_or("");
    assert!(why.contains("draining"), "{why}");
    tl.log(format_args!("forced drain: svc unplaceable: {why}"));
}
