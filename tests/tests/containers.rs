//! End-to-end tests across containers (DESIGN.md, testing layer 4): the compose cluster of
//! `deploy/compose.yaml`, three schedulers and five agents in their own containers on private
//! networks, the image built from this build's binaries, and faults a real deployment meets:
//!
//! - the leader cut off from the other two schedulers (`docker network disconnect` from the
//!   Raft network): a new leader is elected, the old one commits nothing, writes acknowledged
//!   by the majority survive the heal, no write sent to the minority exists afterwards;
//! - an agent's container killed: its node goes `down` after the TTL, nothing is ever
//!   placed where policy forbids; its replicas run again on other nodes the policy permits;
//! - a rolling restart of the three schedulers while a client applies deployments: every
//!   acknowledged write is there at the end;
//! - an agent cut off from every scheduler: its `stop_after_disconnect` model server stops
//!   within the bound, and everything converges after the reconnect;
//! - the whole cluster stopped and started on the same volumes: the same state (hash and
//!   revision), then agents and model servers back;
//! - the whole cluster lost, volumes included, and restored from a snapshot saved from the
//!   host (`sov-scheduler restore` in a one-off container, as the operator guide says).
//!
//! The state compared is `ClusterStatus.state_sha256` at `state_revision`, which covers the
//! placement history's head (size and Merkle frontier). Without a Docker engine
//! every test prints `SKIPPED: ...` and passes; with one, they run one at a time. Each logs a
//! timeline of its faults, and a failing test prints each container's log tail.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use sov_e2e::docker::{AGENTS, Compose, HEARTBEAT_TTL_MS, SCHEDULERS, Session, session};
use sov_e2e::{
    Timeline, cluster_status, deployment_names, history_events, http_get, repo_path, sovctl,
    u64_field, wait_same_state, wait_until,
};

/// Deadline of ordinary waits: placements, model servers starting, convergence.
const WAIT: Duration = Duration::from_secs(60);
/// Nodes of EU-headquartered operators in the EU: where an EU27-resident deployment may run.
const EU_SOVEREIGN: [&str; 3] = ["fr-paris-1", "de-frankfurt-1", "pl-warsaw-1"];

fn agent_service(node: &str) -> &'static str {
    AGENTS
        .iter()
        .find(|(_, n)| *n == node)
        .map(|(service, _)| *service)
        .unwrap_or_else(|| panic!("no agent service runs node {node}"))
}

fn agent_services() -> Vec<&'static str> {
    AGENTS.iter().map(|(s, _)| *s).collect()
}

fn apply_default_policy(endpoints: &str) {
    let bundle = repo_path("deploy/policies");
    sovctl(endpoints, &["policy", "apply", bundle.to_str().unwrap()]).assert_ok();
}

/// Applies a deployment of the tiny model server listening on the agents' one model-server
/// port, on every address of its container (so the host reaches it through the published
/// port), with `extra` spec lines; waits until its replicas run and returns them.
fn deploy_tiny(
    tl: &Timeline,
    endpoints: &str,
    name: &str,
    replicas: u32,
    extra: &str,
) -> Vec<Value> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "name = {name:?}\nmodel = \"sov/tiny\"\nreplicas = {replicas}\n\
             command = [\"sov-model-server\", \"--listen\", \"0.0.0.0:20000\"]\n{extra}\n\
             [resources]\ncpu_millis = 100\nmemory_mib = 64\n\
             [health]\nhttp = \"/health\"\ninterval = \"1s\"\ntimeout = \"1s\"\n"
        ),
    )
    .expect("cannot write spec");
    apply(endpoints, &path);
    wait_running(tl, endpoints, name, replicas as usize, |_| true)
}

fn apply(endpoints: &str, spec: &Path) {
    sovctl(
        endpoints,
        &["deploy", "apply", "-f", spec.to_str().unwrap()],
    )
    .assert_ok();
}

/// Every node's status, by name.
fn node_statuses(endpoints: &str) -> Result<BTreeMap<String, String>, String> {
    let out = sovctl(endpoints, &["node", "list", "-o", "json"]);
    if !out.success() {
        return Err(out.stderr.trim().to_owned());
    }
    Ok(out.json()["nodes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap_or("").to_owned(),
                n["status"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect())
}

/// Waits until `nodes` all have status `want`.
fn wait_nodes(tl: &Timeline, endpoints: &str, nodes: &[&str], want: &str, timeout: Duration) {
    let (_, took) = wait_until(&format!("{nodes:?} {want}"), timeout, || {
        let statuses = node_statuses(endpoints)?;
        let wrong: Vec<_> = nodes
            .iter()
            .filter(|n| statuses.get(**n).map(String::as_str) != Some(want))
            .collect();
        if wrong.is_empty() {
            Ok(())
        } else {
            Err(format!("{statuses:?}"))
        }
    });
    tl.log(format_args!(
        "{} node(s) {want} after {} ms",
        nodes.len(),
        took.as_millis()
    ));
}

fn replicas(endpoints: &str, deployment: &str) -> Result<Vec<Value>, String> {
    let out = sovctl(endpoints, &["deploy", "show", deployment, "-o", "json"]);
    if !out.success() {
        return Err(out.stderr.trim().to_owned());
    }
    Ok(out.json()["replicas"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

fn node_of(replica: &Value) -> &str {
    replica["node"].as_str().unwrap_or("")
}

/// Waits until `deployment` has `want` replicas reporting `running` (and passing `also`).
fn wait_running(
    tl: &Timeline,
    endpoints: &str,
    deployment: &str,
    want: usize,
    also: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let (running, took) = wait_until(
        &format!("{want} running replicas of {deployment}"),
        WAIT,
        || {
            let all = replicas(endpoints, deployment)?;
            let running: Vec<Value> = all
                .iter()
                .filter(|r| r["status"] == "running")
                .cloned()
                .collect();
            if running.len() == want && also(&running) {
                Ok(running)
            } else {
                Err(format!("replicas {all:?}"))
            }
        },
    );
    let nodes: Vec<&str> = running.iter().map(node_of).collect();
    tl.log(format_args!(
        "{deployment}: {want} replica(s) running on {nodes:?} after {} ms",
        took.as_millis()
    ));
    running
}

fn wait_model_servers(tl: &Timeline, compose: &Compose, service: &str, want: usize) -> Duration {
    let (_, took) = wait_until(
        &format!("{want} model server(s) in {service}"),
        WAIT,
        || match compose.model_servers(service)? {
            n if n == want => Ok(()),
            n => Err(format!("{n} running")),
        },
    );
    tl.log(format_args!(
        "{service} runs {want} model server(s) ({} ms)",
        took.as_millis()
    ));
    took
}

/// The three schedulers and `agents` (entries of [`AGENTS`], maybe none) up, with the default
/// policy in force and the agents' nodes ready; and the schedulers' endpoints.
fn cluster_with(session: &Session, tl: Timeline, agents: &[(&str, &str)]) -> (Compose, String) {
    let mut services = SCHEDULERS.to_vec();
    services.extend(agents.iter().map(|(service, _)| *service));
    let compose = Compose::up(session, tl, &services);
    compose.wait_formed(&[1, 2, 3]);
    let endpoints = compose.endpoints();
    apply_default_policy(&endpoints);
    let nodes: Vec<&str> = agents.iter().map(|(_, node)| *node).collect();
    wait_nodes(&tl, &endpoints, &nodes, "ready", WAIT);
    (compose, endpoints)
}

fn each_scheduler(compose: &Compose) -> Vec<String> {
    (1..=3).map(|i| compose.endpoint(i)).collect()
}

#[test]
fn partitioned_leader_commits_nothing_and_the_majority_keeps_every_acknowledged_write() {
    let Some(session) = session("partitioned_leader") else {
        return;
    };
    let tl = Timeline::new();
    let (compose, endpoints) = cluster_with(&session, tl, &[]);
    let status = compose.wait_formed(&[1, 2, 3]);
    let old = u64_field(&status, "leader_id") as usize;
    let majority: Vec<usize> = (1..=3).filter(|i| *i != old).collect();
    let majority_endpoints = majority
        .iter()
        .map(|i| compose.endpoint(*i))
        .collect::<Vec<_>>()
        .join(",");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut acknowledged = BTreeSet::new();
    for name in ["before-1", "before-2"] {
        apply(&endpoints, &sov_e2e::write_spec(dir.path(), name, "m", 1));
        acknowledged.insert(name.to_owned());
    }

    let cut = compose.partition(SCHEDULERS[old - 1], "raft");
    let (leader, took) = wait_until("a new leader among the majority", WAIT, || {
        let leaders = majority
            .iter()
            .map(|i| cluster_status(&compose.endpoint(*i)).map(|s| u64_field(&s, "leader_id")))
            .collect::<Result<Vec<_>, _>>()?;
        match leaders.as_slice() {
            [a, b] if a == b && *a != 0 && *a != old as u64 => Ok(*a),
            other => Err(format!("leaders seen by the majority: {other:?}")),
        }
    });
    tl.log(format_args!(
        "the majority elected scheduler {leader} {} ms after the partition",
        took.as_millis()
    ));
    let old_before = cluster_status(&compose.endpoint(old)).expect("the old leader answers");
    tl.log(format_args!(
        "the old leader, scheduler {old}, sees itself as {} in term {}, committed {}",
        old_before["role"], old_before["term"], old_before["committed_index"]
    ));

    let minority = sov_e2e::write_spec(dir.path(), "minority-write", "m", 1);
    let out = sovctl(
        &compose.endpoint(old),
        &[
            "--timeout",
            "3",
            "deploy",
            "apply",
            "-f",
            minority.to_str().unwrap(),
        ],
    );
    assert!(!out.success(), "the minority acknowledged a write: {out}");
    tl.log(format_args!(
        "write through the old leader not acknowledged: {}",
        out.stderr.lines().last().unwrap_or("")
    ));
    for i in 0..5 {
        let name = format!("majority-{i}");
        apply(
            &majority_endpoints,
            &sov_e2e::write_spec(dir.path(), &name, "m", 1),
        );
        acknowledged.insert(name);
    }
    tl.log("5 writes acknowledged through the majority");
    let old_after = cluster_status(&compose.endpoint(old)).expect("the old leader answers");
    assert_eq!(
        u64_field(&old_after, "committed_index"),
        u64_field(&old_before, "committed_index"),
        "the old leader committed while cut off: {old_after}"
    );

    compose.heal(cut);
    let state = wait_same_state(&each_scheduler(&compose), WAIT);
    let status = compose.wait_formed(&[1, 2, 3]);
    tl.log(format_args!(
        "healed: leader {}, every scheduler at state {state:?}",
        status["leader_id"]
    ));
    for i in 1..=3 {
        let list = sovctl(
            &compose.endpoint(i),
            &["-o", "json", "deploy", "list", "--stale"],
        )
        .json();
        assert_eq!(
            deployment_names(&list),
            acknowledged,
            "scheduler {i} after the heal: every acknowledged write, and nothing sent to the minority"
        );
    }
    tl.log("each scheduler holds exactly the acknowledged writes");
}

/// Kills the container of one agent that runs a replica of an EU27-resident deployment and
/// watches where replicas go. With `expect_replacement`, waits until both replicas run again on
/// other EU-sovereign nodes.
fn killed_agent(test: &str, expect_replacement: bool) {
    let Some(session) = session(test) else {
        return;
    };
    let tl = Timeline::new();
    let (compose, endpoints) = cluster_with(&session, tl, &AGENTS);

    let running = deploy_tiny(
        &tl,
        &endpoints,
        "eu-tiny",
        2,
        "[residency]\nallowed = [\"EU27\"]",
    );
    for r in &running {
        assert!(
            EU_SOVEREIGN.contains(&node_of(r)),
            "placed against policy: {r}"
        );
    }
    let victim = node_of(&running[0]).to_owned();

    let killed = Instant::now();
    compose.kill(agent_service(&victim));
    wait_nodes(
        &tl,
        &endpoints,
        &[&victim],
        "down",
        Duration::from_millis(HEARTBEAT_TTL_MS) + WAIT,
    );
    let down_after = killed.elapsed();
    assert!(
        down_after >= Duration::from_millis(HEARTBEAT_TTL_MS - 500),
        "down before the TTL: {down_after:?}"
    );
    tl.log(format_args!(
        "{victim} down {} ms after the kill (TTL {HEARTBEAT_TTL_MS} ms)",
        down_after.as_millis()
    ));

    // Every replica seen from now on is on an EU-sovereign node: ie-dublin-1 and us-virginia-1
    // are ready and have room, only the policy keeps replicas off them.
    let watch = if expect_replacement {
        WAIT
    } else {
        Duration::from_secs(10)
    };
    let deadline = Instant::now() + watch;
    let mut seen = BTreeSet::new();
    loop {
        let all = replicas(&endpoints, "eu-tiny").expect("deploy show");
        for r in &all {
            let node = node_of(r).to_owned();
            assert!(
                EU_SOVEREIGN.contains(&node.as_str()),
                "placed against policy: {r}"
            );
            if seen.insert((node.clone(), r["status"].to_string())) {
                tl.log(format_args!("eu-tiny replica on {node}: {}", r["status"]));
            }
        }
        let replaced = all
            .iter()
            .filter(|r| r["status"] == "running" && node_of(r) != victim)
            .count();
        if expect_replacement && replaced == 2 {
            tl.log("both replicas run again, on EU-sovereign nodes other than the dead one");
            break;
        }
        assert!(
            Instant::now() < deadline || !expect_replacement,
            "the replica of {victim} was not placed again within {watch:?}: {all:?}"
        );
        if Instant::now() >= deadline {
            tl.log(format_args!(
                "nothing placed where policy forbids during {} s after {victim} went down",
                watch.as_secs()
            ));
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn killed_agent_goes_down_after_the_ttl_and_nothing_is_placed_where_policy_forbids() {
    killed_agent("killed_agent_goes_down", false);
}

#[test]
fn killed_agents_replicas_are_placed_again_only_where_policy_permits() {
    killed_agent("killed_agents_replicas_are_placed_again", true);
}

#[test]
fn rolling_restart_of_every_scheduler_keeps_every_acknowledged_write() {
    let Some(session) = session("rolling_restart") else {
        return;
    };
    let tl = Timeline::new();
    let (compose, endpoints) = cluster_with(&session, tl, &[]);
    let dir = tempfile::tempdir().expect("tempdir");

    // A client applies deployments one after another for the whole test, through all three
    // schedulers, and remembers which ones were acknowledged.
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));
    let client = {
        let (stop, acknowledged) = (stop.clone(), acknowledged.clone());
        let (endpoints, dir) = (endpoints.clone(), dir.path().to_owned());
        std::thread::spawn(move || {
            let mut refused = 0u32;
            for i in 0.. {
                if stop.load(Ordering::Relaxed) {
                    return (i, refused);
                }
                let name = format!("w-{i}");
                let spec = sov_e2e::write_spec(&dir, &name, "m", 1);
                let spec = spec.to_str().unwrap();
                let out = sovctl(
                    &endpoints,
                    &["--timeout", "5", "deploy", "apply", "-f", spec],
                );
                if out.success() {
                    acknowledged.lock().unwrap().insert(name);
                } else {
                    refused += 1;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            unreachable!("the loop only ends through `stop`")
        })
    };

    for (i, service) in SCHEDULERS.iter().enumerate() {
        std::thread::sleep(Duration::from_secs(2));
        let before = acknowledged.lock().unwrap().len();
        compose.stop(&[service]);
        compose.start(&[service]);
        let (_, took) = wait_until(&format!("{service} ready again"), WAIT, || {
            compose.readyz(i + 1)
        });
        tl.log(format_args!(
            "{service} restarted and ready after {} ms ({} writes acknowledged so far, {before} before its stop)",
            took.as_millis(),
            acknowledged.lock().unwrap().len()
        ));
    }
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let (attempts, refused) = client.join().expect("the client thread panicked");
    let acknowledged = acknowledged.lock().unwrap().clone();
    tl.log(format_args!(
        "client stopped: {attempts} writes sent, {} acknowledged, {refused} not",
        acknowledged.len()
    ));
    assert!(
        acknowledged.len() >= 10,
        "too few writes went through for the test to mean anything: {}",
        acknowledged.len()
    );

    let state = wait_same_state(&each_scheduler(&compose), WAIT);
    tl.log(format_args!("every scheduler at state {state:?}"));
    for i in 1..=3 {
        let list = sovctl(
            &compose.endpoint(i),
            &["-o", "json", "deploy", "list", "--stale"],
        )
        .json();
        let present = deployment_names(&list);
        let lost: Vec<_> = acknowledged.difference(&present).collect();
        assert!(
            lost.is_empty(),
            "scheduler {i} lost acknowledged writes: {lost:?}"
        );
    }
    tl.log("every acknowledged write is on every scheduler");
}

#[test]
fn cut_off_agent_stops_its_fail_closed_model_server_in_time_and_converges_after_reconnect() {
    let Some(session) = session("cut_off_agent") else {
        return;
    };
    let tl = Timeline::new();
    // agent-fr alone: the deployment may run in France only.
    let (compose, endpoints) = cluster_with(&session, tl, &AGENTS[..1]);

    let bound = Duration::from_secs(5);
    let extra = "stop_after_disconnect = \"5s\"\n[residency]\nallowed = [\"FR\"]";
    let running = deploy_tiny(&tl, &endpoints, "fenced", 1, extra);
    let reported_at = u64_field(&running[0], "status_at_ms");
    wait_model_servers(&tl, &compose, "agent-fr", 1);

    let cut_at = Instant::now();
    let cut = compose.partition("agent-fr", "api");
    let (_, _) = wait_until("the fail-closed stop", bound + WAIT, || {
        match compose.model_servers("agent-fr")? {
            0 => Ok(()),
            n => Err(format!("{n} model server(s) still running")),
        }
    });
    let stopped_after = cut_at.elapsed();
    tl.log(format_args!(
        "model server stopped {} ms after the cut (bound {} ms)",
        stopped_after.as_millis(),
        bound.as_millis()
    ));
    // The agent counts from its last answered call, up to one heartbeat before the cut.
    assert!(
        stopped_after >= bound - Duration::from_secs(1),
        "stopped before the bound: {stopped_after:?}"
    );
    assert!(
        stopped_after <= bound + Duration::from_secs(10),
        "stopped long after the bound: {stopped_after:?}"
    );
    wait_nodes(&tl, &endpoints, &["fr-paris-1"], "down", WAIT);

    compose.heal(cut);
    wait_nodes(&tl, &endpoints, &["fr-paris-1"], "ready", WAIT);
    wait_model_servers(&tl, &compose, "agent-fr", 1);
    wait_running(&tl, &endpoints, "fenced", 1, |r| {
        node_of(&r[0]) == "fr-paris-1" && u64_field(&r[0], "status_at_ms") > reported_at
    });
    let logs = compose.logs("agent-fr");
    assert!(
        logs.contains("fail-closed"),
        "the agent says why it stopped the server:\n{logs}"
    );
    wait_same_state(&each_scheduler(&compose), WAIT);
    tl.log("converged: node ready, the model server runs again and is reported running");
}

#[test]
fn whole_cluster_stop_and_start_on_the_same_volumes_keeps_the_state() {
    let Some(session) = session("whole_cluster_stop_and_start") else {
        return;
    };
    let tl = Timeline::new();
    let (compose, endpoints) = cluster_with(&session, tl, &AGENTS);
    let all_nodes: Vec<&str> = AGENTS.iter().map(|(_, n)| *n).collect();

    // The agents registered the facts of their config files.
    let nodes = sovctl(&endpoints, &["node", "list", "-o", "json"]).json();
    let facts: BTreeMap<String, (String, String)> = nodes["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| {
            let f = &n["facts"];
            (
                n["name"].as_str().unwrap_or("").to_owned(),
                (
                    f["country"].as_str().unwrap_or("").to_owned(),
                    f["ultimate_parent_hq"].as_str().unwrap_or("").to_owned(),
                ),
            )
        })
        .collect();
    let expected: BTreeMap<String, (String, String)> = [
        ("fr-paris-1", "FR", "FR"),
        ("de-frankfurt-1", "DE", "DE"),
        ("pl-warsaw-1", "PL", "PL"),
        ("ie-dublin-1", "IE", "US"),
        ("us-virginia-1", "US", "US"),
    ]
    .iter()
    .map(|(n, c, p)| ((*n).to_owned(), ((*c).to_owned(), (*p).to_owned())))
    .collect();
    assert_eq!(facts, expected, "{nodes}");

    // The shipped compose example, reached from the host through the published ports.
    apply(&endpoints, &repo_path("deploy/docker/tiny-echo.toml"));
    let running = wait_running(&tl, &endpoints, "tiny-echo", 2, |_| true);
    for r in &running {
        let node = node_of(r);
        let port = compose.model_ports[agent_service(node)];
        let (code, body) = http_get(port, "/").expect("the model server answers from the host");
        assert_eq!(code, 200, "{body}");
        assert!(body.contains(&format!("node: {node}")), "{body}");
        tl.log(format_args!(
            "host port {port} reaches the model server on {node}"
        ));
    }

    let agents = agent_services();
    compose.stop(&agents);
    wait_nodes(&tl, &endpoints, &all_nodes, "down", WAIT);
    // Nodes that went down a little before the others may have had their replicas moved
    // (with every node down the cluster is disrupted and moves nothing): "before" is the state
    // once it no longer changes.
    let (before, _) = wait_until("the state to settle", WAIT, || {
        let first = wait_same_state(&each_scheduler(&compose), WAIT);
        std::thread::sleep(Duration::from_secs(2));
        let second = wait_same_state(&each_scheduler(&compose), WAIT);
        if first == second {
            Ok(second)
        } else {
            Err(format!("moved from {first:?} to {second:?}"))
        }
    });
    let deployments_before = sovctl(&endpoints, &["-o", "json", "deploy", "list"]).json();
    let applied_before = u64_field(
        &cluster_status(&endpoints).expect("status"),
        "applied_index",
    );
    tl.log(format_args!(
        "agents stopped, nodes down; state {before:?}, applied index {applied_before}"
    ));

    compose.stop(&SCHEDULERS);
    compose.start(&SCHEDULERS);
    let status = compose.wait_formed(&[1, 2, 3]);
    for (i, endpoint) in each_scheduler(&compose).iter().enumerate() {
        let after = sov_e2e::state_fingerprint(endpoint).expect("status");
        assert_eq!(after, before, "scheduler {} after the restart", i + 1);
    }
    assert!(
        u64_field(&status, "applied_index") >= applied_before,
        "{status}"
    );
    assert_eq!(
        sovctl(&endpoints, &["-o", "json", "deploy", "list"]).json(),
        deployments_before
    );
    tl.log(format_args!(
        "restarted from the same volumes: state unchanged on all three, applied index {}",
        status["applied_index"]
    ));

    compose.start(&agents);
    wait_nodes(&tl, &endpoints, &all_nodes, "ready", WAIT);
    for r in wait_running(&tl, &endpoints, "tiny-echo", 2, |_| true) {
        let service = agent_service(node_of(&r));
        wait_model_servers(&tl, &compose, service, 1);
        let port = compose.model_ports[service];
        wait_until(
            "the model server to answer again",
            WAIT,
            || match http_get(port, "/health") {
                Ok((200, _)) => Ok(()),
                other => Err(format!("{other:?}")),
            },
        );
    }
    tl.log("agents back: nodes ready, tiny-echo's model servers answer again");
}

#[test]
fn a_compose_cluster_is_restored_from_a_snapshot_into_fresh_volumes() {
    let Some(session) = session("restore_into_fresh_volumes") else {
        return;
    };
    let tl = Timeline::new();
    let (compose, endpoints) = cluster_with(&session, tl, &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    for name in ["kept-1", "kept-2"] {
        apply(&endpoints, &sov_e2e::write_spec(dir.path(), name, "m", 1));
    }
    let before = wait_same_state(&each_scheduler(&compose), WAIT);
    let deployments = sovctl(&endpoints, &["-o", "json", "deploy", "list"]).json();
    let file = dir.path().join("cluster.snap");
    let saved = sovctl(
        &endpoints,
        &[
            "-o",
            "json",
            "cluster",
            "snapshot",
            "save",
            file.to_str().unwrap(),
        ],
    )
    .json();
    assert_eq!(saved["state_sha256"], before.0.as_str(), "{saved}");
    tl.log(format_args!(
        "saved a snapshot from the host: state {before:?}"
    ));

    // The disaster: every container and volume gone.
    compose.run(&["down", "-v", "-t", "2"]);
    tl.log("compose down -v: containers and volumes removed");

    // The operator guide's recipe: seed sched-1's new volume, then bring the cluster up.
    let mount = format!("{}:/tmp/cluster.snap:ro", file.display());
    let out = compose.run(&[
        "run",
        "--rm",
        "--no-deps",
        "-v",
        &mount,
        "sched-1",
        "sov-scheduler",
        "restore",
        "--snapshot",
        "/tmp/cluster.snap",
        "--node-id",
        "1",
        "--api-advertise",
        "sched-1:7400",
        "--raft-advertise",
        "sched-1-raft:7401",
    ]);
    tl.log(format_args!(
        "restored into sched-1's volume: {}",
        out.lines().next().unwrap_or("")
    ));
    compose.run(&["up", "-d", "sched-1", "sched-2", "sched-3"]);
    compose.wait_formed(&[1, 2, 3]);
    // The joins of sched-2 and sched-3 are recorded in the history (who added them), so the
    // state moves on from the restored one, the same on every scheduler.
    let restored = wait_same_state(&each_scheduler(&compose), WAIT);
    assert!(restored.1 > before.1, "{restored:?} after {before:?}");
    let joins = history_events(&endpoints, &["--kind", "cluster.membership-changed"]).len();
    assert!(
        joins >= 4,
        "two joins before the backup, two after the restore: {joins}"
    );
    // The deployments as saved; the list's own revision moved on with the recorded joins.
    assert_eq!(
        sovctl(&endpoints, &["-o", "json", "deploy", "list"]).json()["deployments"],
        deployments["deployments"]
    );
    tl.log("the new cluster (sched-2 and sched-3 joined with empty volumes) holds the saved state");
}
