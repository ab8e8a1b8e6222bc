//! Node agents end to end: real `sov-scheduler`, `sov-agent` and `sov-model-server` processes.
//!
//! - an assignment becomes a running model server that answers on its port; killed, it is
//!   reported failed and restarted; unassigned, it is stopped and nothing is left behind;
//! - an agent killed goes `down` after the TTL and comes back `ready`; killing the leader marks
//!   no node down (failover grace);
//! - a restarted agent re-adopts the model servers it left running;
//! - malformed location facts stop the agent at start, naming the field;
//! - `stop_after_disconnect`: cut off from every scheduler, the agent stops the model server
//!   within the bound, and starts it again once a scheduler answers.
//!
//! Each test logs a timeline of what it did, so a failure can be read.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use sov_e2e::agent::{Agent, FR, alive};
use sov_e2e::{Cluster, Timeline, bin, cluster_status, sovctl, u64_field, wait_until};

/// Scheduler flags of these tests: a short TTL so `down` is seen in seconds.
const LIVENESS: [&str; 4] = [
    "--heartbeat-ttl-ms",
    "3000",
    "--heartbeat-interval-ms",
    "500",
];
const WAIT: Duration = Duration::from_secs(30);

/// A node name unique to this test process, so the `/proc` sweep of one test never touches
/// another's model servers.
fn node_name(base: &str) -> String {
    format!("{base}-{}", std::process::id())
}

fn apply_default_policy(endpoints: &str) {
    let bundle = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/policies");
    sovctl(
        endpoints,
        &["policy", "apply", bundle.to_str().expect("utf-8 path")],
    )
    .assert_ok();
}

/// A one-replica deployment of the tiny model server, with an HTTP health check every second.
fn write_model_spec(dir: &Path, name: &str, extra: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let server = bin("sov-model-server");
    std::fs::write(
        &path,
        format!(
            "name = {name:?}\nmodel = \"sov/tiny\"\nreplicas = 1\ncommand = [{:?}]\n{extra}\n\
             [resources]\ncpu_millis = 100\nmemory_mib = 64\n\
             [health]\nhttp = \"/health\"\ninterval = \"1s\"\ntimeout = \"1s\"\n",
            server.to_str().expect("utf-8 path")
        ),
    )
    .expect("cannot write spec");
    path
}

/// The single replica of `deployment`, as `deploy show -o json` reports it.
fn replica(endpoints: &str, deployment: &str) -> Result<Value, String> {
    let out = sovctl(endpoints, &["deploy", "show", deployment, "-o", "json"]);
    if !out.success() {
        return Err(out.stderr.clone());
    }
    let v = out.json();
    let replicas = v["replicas"].as_array().cloned().unwrap_or_default();
    match replicas.as_slice() {
        [one] => Ok(one.clone()),
        other => Err(format!("{} replicas", other.len())),
    }
}

fn node_status(endpoints: &str, node: &str) -> Result<String, String> {
    let out = sovctl(endpoints, &["node", "show", node, "-o", "json"]);
    if !out.success() {
        return Err(out.stderr.clone());
    }
    Ok(out.json()["status"].as_str().unwrap_or("").to_string())
}

fn wait_node(tl: &Timeline, endpoints: &str, node: &str, want: &str, timeout: Duration) {
    let (_, took) = wait_until(
        &format!("node {node} {want}"),
        timeout,
        || match node_status(endpoints, node)? {
            s if s == want => Ok(()),
            s => Err(format!("status {s}")),
        },
    );
    tl.log(format_args!(
        "node {node} is {want} after {} ms",
        took.as_millis()
    ));
}

/// Waits until the replica reports `status` (and satisfies `also`), returning it.
fn wait_replica(
    tl: &Timeline,
    endpoints: &str,
    deployment: &str,
    status: &str,
    also: impl Fn(&Value) -> bool,
) -> Value {
    let (r, took) = wait_until(&format!("replica of {deployment} {status}"), WAIT, || {
        let r = replica(endpoints, deployment)?;
        if r["status"] == status && also(&r) {
            Ok(r)
        } else {
            Err(format!("replica {r}"))
        }
    });
    tl.log(format_args!(
        "replica {} is {status} (restarts {}) after {} ms",
        r["id"],
        r["restarts"],
        took.as_millis()
    ));
    r
}

/// The one model-server process of `allocation` on `agent`.
fn one_process(agent: &Agent, allocation: &str) -> u32 {
    let (pid, _) = wait_until(
        &format!("one process of {allocation}"),
        WAIT,
        || match agent.processes(allocation).as_slice() {
            [pid] => Ok(*pid),
            other => Err(format!("processes {other:?}")),
        },
    );
    pid
}

/// POST a completion request to the model server on `port`; returns the body.
fn complete(port: u16, prompt: &str) -> String {
    let body = format!("{{\"prompt\": {prompt:?}, \"max_tokens\": 4}}");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        stream,
        "POST /v1/completions HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    assert!(
        response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"),
        "{response}"
    );
    response
}

#[test]
fn assignment_runs_a_model_server_restarts_it_and_stops_it_without_orphans() {
    let tl = Timeline::new();
    let mut cluster = Cluster::start_with(1, tl, &LIVENESS);
    let endpoints = cluster.endpoints();
    apply_default_policy(&endpoints);
    let name = node_name("fr-life");
    let agent = Agent::start(cluster.root.path(), &name, &endpoints, &FR, "");
    wait_node(&tl, &endpoints, &name, "ready", WAIT);

    let spec = write_model_spec(&cluster.scratch(), "tiny", "");
    sovctl(
        &endpoints,
        &["deploy", "apply", "-f", spec.to_str().unwrap()],
    )
    .assert_ok();
    let r = wait_replica(&tl, &endpoints, "tiny", "running", |_| true);
    let id = r["id"].as_str().expect("replica id").to_string();
    assert_eq!(r["node"], name.as_str());
    assert_eq!(u64_field(&r, "port"), u64::from(agent.port));

    let answer = complete(agent.port, "hello sovereign world");
    assert!(answer.contains("\"choices\""), "{answer}");
    assert!(
        answer.contains(&name),
        "the server says where it runs: {answer}"
    );
    tl.log(format_args!("model server answered on port {}", agent.port));

    let first = one_process(&agent, &id);
    // SAFETY: kill(2) of the model server this test started through sov.
    unsafe { libc::kill(first as i32, libc::SIGKILL) };
    tl.log(format_args!("killed model server pid {first}"));
    // The failure is reported with the restart count; the restart follows within the backoff,
    // often faster than a poll, so `failed` itself may not be seen here (the agent log has it).
    wait_replica(&tl, &endpoints, "tiny", "running", |r| {
        u64_field(r, "restarts") >= 1
    });
    let log = std::fs::read_to_string(&agent.log_path).unwrap_or_default();
    assert!(
        log.contains("status=\"failed\"") && log.contains(&id),
        "the agent reports the failure"
    );
    let second = one_process(&agent, &id);
    assert_ne!(first, second, "a new process runs");
    assert!(!alive(first));
    complete(agent.port, "again");

    sovctl(&endpoints, &["deploy", "delete", "tiny"]).assert_ok();
    let (_, took) = wait_until("the model server to stop", WAIT, || {
        if agent.processes("").is_empty() && !alive(second) {
            Ok(())
        } else {
            Err(format!("processes {:?}", agent.processes("")))
        }
    });
    tl.log(format_args!(
        "model server stopped {} ms after delete",
        took.as_millis()
    ));
    wait_until("the allocation to be forgotten", WAIT, || {
        let node = sovctl(&endpoints, &["node", "show", &name, "-o", "json"]).json();
        match node["allocations"].as_array().map(Vec::len) {
            Some(0) | None => Ok(()),
            Some(n) => Err(format!("{n} allocations")),
        }
    });
    drop(agent);
    cluster.node(1).assert_running();
}

#[test]
fn silent_agent_goes_down_after_the_ttl_and_a_leader_change_marks_nobody_down() {
    let tl = Timeline::new();
    let mut cluster = Cluster::start_with(3, tl, &LIVENESS);
    let endpoints = cluster.endpoints();
    let name = node_name("fr-live");
    let mut agent = Agent::start(cluster.root.path(), &name, &endpoints, &FR, "");
    wait_node(&tl, &endpoints, &name, "ready", WAIT);

    agent.kill();
    tl.log("killed the agent (SIGKILL)");
    wait_node(&tl, &endpoints, &name, "down", Duration::from_secs(20));
    agent.restart();
    tl.log("restarted the agent");
    wait_node(&tl, &endpoints, &name, "ready", WAIT);

    let leader = u64_field(&cluster_status(&endpoints).expect("status"), "leader_id");
    cluster.node(leader).kill();
    tl.log(format_args!("killed the leader, scheduler {leader}"));
    // Past the new leader's grace (10 s) plus a TTL: the node must never read `down`.
    let watch_until = Instant::now() + Duration::from_secs(16);
    let mut seen = Vec::new();
    while Instant::now() < watch_until {
        if let Ok(status) = node_status(&endpoints, &name) {
            assert_ne!(status, "down", "a leader change marked the node down");
            if seen.last() != Some(&status) {
                tl.log(format_args!("node {name} reads {status}"));
                seen.push(status);
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(seen.last().map(String::as_str), Some("ready"));
    drop(agent);
}

#[test]
fn restarted_agent_re_adopts_its_model_servers() {
    let tl = Timeline::new();
    let cluster = Cluster::start_with(1, tl, &LIVENESS);
    let endpoints = cluster.endpoints();
    apply_default_policy(&endpoints);
    let name = node_name("fr-adopt");
    let mut agent = Agent::start(cluster.root.path(), &name, &endpoints, &FR, "");
    let spec = write_model_spec(&cluster.scratch(), "adopted", "");
    sovctl(
        &endpoints,
        &["deploy", "apply", "-f", spec.to_str().unwrap()],
    )
    .assert_ok();
    let r = wait_replica(&tl, &endpoints, "adopted", "running", |_| true);
    let id = r["id"].as_str().expect("id").to_string();
    let pid = one_process(&agent, &id);

    agent.kill();
    tl.log(format_args!(
        "killed the agent; model server {pid} keeps running"
    ));
    std::thread::sleep(Duration::from_secs(1));
    assert!(alive(pid), "the model server must survive an agent crash");
    agent.restart();
    tl.log("restarted the agent");
    wait_until("the agent to re-adopt", WAIT, || {
        if agent.log_tail().contains("re-adopted") {
            Ok(())
        } else {
            Err("no re-adoption logged yet".to_string())
        }
    });
    // Several health checks later, still the same single process, never restarted.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        agent.processes(&id),
        vec![pid],
        "re-adopted, not duplicated"
    );
    let r = replica(&endpoints, "adopted").expect("replica");
    assert_eq!(r["status"], "running", "{r}");
    assert_eq!(u64_field(&r, "restarts"), 0, "{r}");
    complete(agent.port, "still here");
    drop(agent);
}

#[test]
fn malformed_location_facts_stop_the_agent_at_start_naming_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (field, facts, wrong) in [
        (
            "location.country",
            "country = \"FRA\"\nultimate_parent_hq = \"FR\"",
            "FRA",
        ),
        (
            "location.subdivision",
            "country = \"FR\"\nsubdivision = \"DE-BY\"\nultimate_parent_hq = \"FR\"",
            "DE-BY",
        ),
        (
            "location.ultimate_parent_hq",
            "country = \"FR\"\nultimate_parent_hq = \"XX\"",
            "XX",
        ),
    ] {
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            format!(
                "name = \"bad\"\nschedulers = [\"http://127.0.0.1:1\"]\ndata_dir = {:?}\n\
                 [location]\nsite = \"s\"\noperator = \"o\"\noperator_hq = \"FR\"\n{facts}\n",
                dir.path().join("data")
            ),
        )
        .expect("write");
        let out = std::process::Command::new(bin("sov-agent"))
            .args(["run", "--config"])
            .arg(&path)
            .output()
            .expect("run sov-agent");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{field}: the agent started anyway");
        assert!(
            stderr.contains(field) && stderr.contains(wrong),
            "{field}: the error must name the field and the value: {stderr}"
        );
    }
}

#[test]
fn cut_off_agent_stops_fail_closed_workloads_and_restarts_them_on_reconnect() {
    let tl = Timeline::new();
    let mut cluster = Cluster::start_with(1, tl, &LIVENESS);
    let endpoints = cluster.endpoints();
    apply_default_policy(&endpoints);
    let name = node_name("fr-fence");
    let agent = Agent::start(cluster.root.path(), &name, &endpoints, &FR, "");
    let spec = write_model_spec(
        &cluster.scratch(),
        "fenced",
        "stop_after_disconnect = \"3s\"",
    );
    sovctl(
        &endpoints,
        &["deploy", "apply", "-f", spec.to_str().unwrap()],
    )
    .assert_ok();
    let r = wait_replica(&tl, &endpoints, "fenced", "running", |_| true);
    let id = r["id"].as_str().expect("id").to_string();
    let pid = one_process(&agent, &id);

    cluster.node(1).pause();
    let cut = Instant::now();
    tl.log("paused the only scheduler (SIGSTOP): the agent is cut off");
    wait_until("the fail-closed stop", Duration::from_secs(20), || {
        if alive(pid) {
            Err("model server still running".to_string())
        } else {
            Ok(())
        }
    });
    let after = cut.elapsed();
    tl.log(format_args!(
        "model server stopped {} ms after the cut",
        after.as_millis()
    ));
    assert!(
        after >= Duration::from_millis(2_500),
        "stopped before the 3 s bound: {after:?}"
    );
    cluster.node(1).resume();
    tl.log("resumed the scheduler");
    let (second, took) = wait_until("the model server to start again", WAIT, || {
        match agent.processes(&id).as_slice() {
            [p] if *p != pid => Ok(*p),
            other => Err(format!("processes {other:?}")),
        }
    });
    tl.log(format_args!(
        "model server {second} started {} ms after the scheduler came back",
        took.as_millis()
    ));
    let before = u64_field(&r, "status_at_ms");
    wait_replica(&tl, &endpoints, "fenced", "running", |again| {
        u64_field(again, "status_at_ms") > before
    });
    assert!(
        agent.log_tail().contains("fail-closed")
            || std::fs::read_to_string(&agent.log_path)
                .unwrap_or_default()
                .contains("fail-closed"),
        "the agent says why it stopped the server"
    );
    drop(agent);
}
