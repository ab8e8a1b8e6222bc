//! Driver tests against real processes (`/bin/sh`, `sleep`) in temporary data dirs, with short
//! grace and backoff durations so each test takes a few seconds at most.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep, timeout};

use super::process::{group_has_running_members, read_stat};
use super::state::{self, STATE_VERSION, StateFile};
use super::supervisor::child_env;
use super::*;

const EVENT_WAIT: Duration = Duration::from_secs(10);
const GRACE: Duration = Duration::from_millis(500);

fn test_cfg() -> DriverConfig {
    DriverConfig {
        stop_grace: GRACE,
        restart_backoff_min: Duration::from_millis(50),
        restart_backoff_max: Duration::from_millis(200),
        healthy_reset_after: Duration::from_secs(60),
        extra_env: BTreeMap::from([("SOV_NODE".to_owned(), "node-a".to_owned())]),
    }
}

fn spec(id: &str, command: &[&str]) -> AllocSpec {
    AllocSpec {
        id: id.to_owned(),
        deployment: "tiny-echo".to_owned(),
        command: command.iter().map(|s| (*s).to_owned()).collect(),
        env: BTreeMap::new(),
        working_dir: None,
        gpu_uuids: Vec::new(),
        port: 0,
        health: HealthCheck {
            probe: HealthProbe::Off,
            interval_ms: 100,
            timeout_ms: 500,
        },
        stop_after_disconnect_ms: 0,
    }
}

fn desired(specs: &[AllocSpec]) -> BTreeMap<String, AllocSpec> {
    specs.iter().map(|s| (s.id.clone(), s.clone())).collect()
}

fn new_driver(dir: &Path) -> (Driver, mpsc::Receiver<StatusChange>) {
    let (tx, rx) = mpsc::channel(64);
    (Driver::new(dir.to_path_buf(), test_cfg(), tx), rx)
}

async fn next_event(rx: &mut mpsc::Receiver<StatusChange>) -> StatusChange {
    timeout(EVENT_WAIT, rx.recv())
        .await
        .expect("no status change within 10 s")
        .expect("event channel closed")
}

async fn expect(rx: &mut mpsc::Receiver<StatusChange>, id: &str, phase: Phase) -> StatusChange {
    let change = next_event(rx).await;
    assert_eq!(
        (change.id.as_str(), change.phase),
        (id, phase),
        "{change:?}"
    );
    change
}

async fn expect_quiet(rx: &mut mpsc::Receiver<StatusChange>, for_: Duration) {
    if let Ok(Some(change)) = timeout(for_, rx.recv()).await {
        panic!("unexpected status change {change:?}");
    }
}

fn running(pid: u32) -> bool {
    read_stat(pid).is_some_and(|st| st.is_running())
}

async fn wait_for_file(path: &Path) -> String {
    let deadline = Instant::now() + EVENT_WAIT;
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && text.ends_with('\n')
        {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{} never written",
            path.display()
        );
        sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn starts_and_reports_running_with_off_probe() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (driver, mut rx) = new_driver(dir.path());
    let mut a = spec(
        "echo-1",
        &[
            "sh",
            "-c",
            "echo \"$PORT|$CUDA_VISIBLE_DEVICES|$SOV_ALLOCATION|$SOV_DEPLOYMENT|$SOV_NODE|$MODEL\"; exec sleep 100",
        ],
    );
    a.port = 8123;
    a.gpu_uuids = vec!["GPU-1".into(), "GPU-2".into()];
    a.env.insert("MODEL".into(), "tiny".into());
    driver.converge(&desired(&[a])).await;

    let starting = expect(&mut rx, "echo-1", Phase::Starting).await;
    let pid = starting.pid.expect("pid");
    assert_eq!(
        (starting.restarts, starting.reason.as_str()),
        (0, "started")
    );
    let running_change = expect(&mut rx, "echo-1", Phase::Running).await;
    assert_eq!(running_change.pid, Some(pid));
    assert_eq!(
        driver.snapshot(),
        vec![("echo-1".to_owned(), Phase::Running, Some(pid))]
    );

    let (stdout, stderr) = driver.log_paths("echo-1");
    let text = wait_for_file(&stdout).await;
    assert!(text.starts_with("--- sov: start #1 at "), "{text}");
    assert!(
        text.contains("8123|GPU-1,GPU-2|echo-1|tiny-echo|node-a|tiny\n"),
        "{text}"
    );
    assert!(stderr.exists());
    let alloc_dir = dir.path().join("allocs/echo-1");
    let st = state::read(&alloc_dir).expect("read").expect("state.json");
    assert_eq!(
        (st.pid, st.restarts, st.spec.id.as_str()),
        (pid, 0, "echo-1")
    );

    // sleep honours SIGTERM, so the stop takes far less than the grace.
    let t0 = Instant::now();
    driver.stop("echo-1", "test done").await;
    assert!(t0.elapsed() < GRACE, "took {:?}", t0.elapsed());
    let stopped = expect(&mut rx, "echo-1", Phase::Stopped).await;
    assert_eq!(
        (stopped.reason.as_str(), stopped.pid),
        ("test done", Some(pid))
    );
    assert!(!running(pid));
    assert!(
        !state::path(&alloc_dir).exists(),
        "state.json removed on stop"
    );
    assert!(stdout.exists(), "logs are kept");
    sleep(Duration::from_millis(50)).await;
    assert!(driver.snapshot().is_empty());
}

/// Answers `GET` with 200 while `healthy` is set and 503 otherwise.
fn serve_health(listener: TcpListener, healthy: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let mut buf = [0u8; 512];
            let _ = conn.read(&mut buf).await;
            let status = if healthy.load(Ordering::SeqCst) {
                "200 OK"
            } else {
                "503 Service Unavailable"
            };
            let response = format!("HTTP/1.0 {status}\r\nContent-Length: 0\r\n\r\n");
            let _ = conn.write_all(response.as_bytes()).await;
        }
    })
}

#[tokio::test]
async fn http_health_gates_running_and_failed_probes_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (driver, mut rx) = new_driver(dir.path());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let healthy = Arc::new(AtomicBool::new(false));
    let server = serve_health(listener, Arc::clone(&healthy));

    let mut a = spec("web-1", &["sleep", "100"]);
    a.port = port;
    a.health.probe = HealthProbe::Http("/health".into());
    driver.converge(&desired(&[a])).await;
    let pid = expect(&mut rx, "web-1", Phase::Starting).await.pid;
    expect_quiet(&mut rx, Duration::from_millis(400)).await;
    assert_eq!(
        driver.snapshot()[0].1,
        Phase::Starting,
        "503 is not healthy"
    );

    healthy.store(true, Ordering::SeqCst);
    let change = expect(&mut rx, "web-1", Phase::Running).await;
    assert_eq!(
        (change.pid, change.reason.as_str()),
        (pid, "health check passed")
    );

    server.abort();
    let failed = expect(&mut rx, "web-1", Phase::Failed).await;
    assert!(
        failed.reason.starts_with("health check failed 3 times: "),
        "{failed:?}"
    );
    assert_eq!(failed.pid, pid);
    let restarted = expect(&mut rx, "web-1", Phase::Starting).await;
    assert_eq!(restarted.restarts, 1);
    assert_ne!(restarted.pid, pid);
    assert!(
        !running(pid.expect("pid")),
        "the unhealthy process was killed"
    );

    driver.stop_all("test done").await;
    expect(&mut rx, "web-1", Phase::Stopped).await;
}

#[tokio::test]
async fn tcp_health_probe_reports_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (driver, mut rx) = new_driver(dir.path());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let mut a = spec("tcp-1", &["sleep", "100"]);
    a.port = listener.local_addr().expect("addr").port();
    a.health.probe = HealthProbe::Tcp;
    driver.converge(&desired(&[a])).await;
    expect(&mut rx, "tcp-1", Phase::Starting).await;
    expect(&mut rx, "tcp-1", Phase::Running).await;
    driver.stop_all("test done").await;
    expect(&mut rx, "tcp-1", Phase::Stopped).await;
}

#[tokio::test]
async fn crashing_process_fails_with_exit_code_and_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (driver, mut rx) = new_driver(dir.path());
    driver
        .converge(&desired(&[spec(
            "crash-1",
            &["/bin/sh", "-c", "echo boom >&2; exit 3"],
        )]))
        .await;
    let first = expect(&mut rx, "crash-1", Phase::Starting).await;
    let mut failed = next_event(&mut rx).await;
    if failed.phase == Phase::Running {
        // Only on a machine so loaded that sh outlives the 200 ms settle time.
        failed = next_event(&mut rx).await;
    }
    assert_eq!(failed.phase, Phase::Failed, "{failed:?}");
    assert_eq!(failed.exit_code, Some(3));
    assert_eq!(failed.reason, "exited with code 3");
    assert_eq!((failed.restarts, failed.pid), (0, first.pid));

    let second = expect(&mut rx, "crash-1", Phase::Starting).await;
    assert_eq!((second.restarts, second.reason.as_str()), (1, "restarted"));
    driver.stop("crash-1", "test done").await;
    // The second run may already have crashed again; Stopped is the last word either way.
    loop {
        let change = next_event(&mut rx).await;
        if change.phase == Phase::Stopped {
            break;
        }
    }
    let (_, stderr) = driver.log_paths("crash-1");
    let text = std::fs::read_to_string(stderr).expect("stderr.log");
    assert!(
        text.contains("--- sov: start #1 at ") && text.contains("--- sov: start #2 at "),
        "{text}"
    );
    assert!(text.contains("boom\n"), "{text}");
}

#[tokio::test]
async fn spawn_failures_name_the_program_and_are_retried() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (driver, mut rx) = new_driver(dir.path());
    driver
        .converge(&desired(&[
            spec("absent-1", &["/nonexistent/model-server"]),
            spec("absent-2", &["sov-no-such-program"]),
        ]))
        .await;
    let wanted = [
        ("absent-1", 0),
        ("absent-1", 1),
        ("absent-2", 0),
        ("absent-2", 1),
    ];
    let mut seen = BTreeMap::new();
    while !wanted
        .iter()
        .all(|(id, n)| seen.contains_key(&(id.to_string(), *n)))
    {
        let change = next_event(&mut rx).await;
        assert_eq!(change.phase, Phase::Failed, "{change:?}");
        assert_eq!(change.pid, None);
        seen.insert((change.id.clone(), change.restarts), change.reason);
    }
    let reason = &seen[&("absent-1".to_owned(), 0)];
    assert!(
        reason.contains("`/nonexistent/model-server`") && reason.contains("No such file"),
        "{reason}"
    );
    let reason = &seen[&("absent-2".to_owned(), 1)];
    assert!(
        reason.contains("`sov-no-such-program`: not found in PATH"),
        "{reason}"
    );
    driver.stop_all("test done").await;
}

#[tokio::test]
async fn invalid_specs_are_rejected_once_and_never_spawned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (driver, mut rx) = new_driver(dir.path());
    let bad = desired(&[spec("Bad_Id", &["sleep", "100"])]);
    driver.converge(&bad).await;
    let failed = expect(&mut rx, "Bad_Id", Phase::Failed).await;
    assert!(
        failed.reason.contains("\"Bad_Id\"") && failed.reason.contains("only a-z"),
        "{failed:?}"
    );
    driver.converge(&bad).await;
    expect_quiet(&mut rx, Duration::from_millis(300)).await;
    assert!(driver.snapshot().is_empty());
    assert!(!dir.path().join("allocs").exists());
    assert!(
        driver
            .log_paths("../etc")
            .0
            .starts_with(dir.path().join("allocs/_invalid"))
    );
}

#[test]
fn validation_rules() {
    assert!(validate_id("tiny-echo-42-0").is_ok());
    for bad in [
        "",
        "a/b",
        "..",
        "A",
        "a_b",
        "a.b",
        &"a".repeat(ID_LEN_MAX + 1),
    ] {
        assert!(validate_id(bad).is_err(), "{bad:?} accepted");
    }
    let good = spec("a-1", &["sleep", "1"]);
    assert!(validate_spec("a-1", &good).is_ok());
    assert!(validate_spec("a-2", &good).is_err(), "key must match id");
    let mut s = good.clone();
    s.command.clear();
    assert!(validate_spec("a-1", &s).is_err());
    let mut s = good.clone();
    s.health.probe = HealthProbe::Http("/health".into());
    assert!(validate_spec("a-1", &s).unwrap_err().contains("port is 0"));
    s.port = 8000;
    assert!(validate_spec("a-1", &s).is_ok());
    s.health.probe = HealthProbe::Http("/health\r\nX: y".into());
    assert!(validate_spec("a-1", &s).is_err());
    let mut s = good;
    s.env.insert("A=B".into(), "c".into());
    assert!(validate_spec("a-1", &s).is_err());
}

#[test]
fn driver_owned_env_wins_over_spec_env() {
    let mut s = spec("a-1", &["x"]);
    s.port = 9000;
    s.env.insert("CUDA_VISIBLE_DEVICES".into(), "all".into());
    s.env.insert("SOV_NODE".into(), "spec-node".into());
    let inherited = |name: &str| match name {
        "HOME" => Some("/home/sov".to_owned()),
        "SECRET" => Some("leak".to_owned()),
        _ => None,
    };
    let extra = BTreeMap::from([
        ("SOV_NODE".to_owned(), "n".to_owned()),
        ("SOV_COUNTRY".to_owned(), "ch".to_owned()),
    ]);
    let env = child_env(inherited, &extra, &s);
    assert_eq!(
        env["CUDA_VISIBLE_DEVICES"], "",
        "no GPUs means none visible, not all"
    );
    assert_eq!(env["PORT"], "9000");
    assert_eq!(env["SOV_NODE"], "spec-node");
    assert_eq!(env["SOV_COUNTRY"], "ch");
    assert_eq!(env["SOV_ALLOCATION"], "a-1");
    assert_eq!(env["HOME"], "/home/sov");
    assert!(env.contains_key("PATH"));
    assert!(
        !env.contains_key("SECRET"),
        "only a minimal env is inherited"
    );
}

#[tokio::test]
async fn stop_sigkills_a_group_that_ignores_sigterm_leaving_no_orphans() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (driver, mut rx) = new_driver(dir.path());
    let script = "trap '' TERM; sleep 100 & echo $! > child.pid; wait";
    driver
        .converge(&desired(&[spec("stubborn-1", &["/bin/sh", "-c", script])]))
        .await;
    let pid = expect(&mut rx, "stubborn-1", Phase::Starting)
        .await
        .pid
        .expect("pid");
    expect(&mut rx, "stubborn-1", Phase::Running).await;
    let child_pid: u32 = wait_for_file(&dir.path().join("allocs/stubborn-1/child.pid"))
        .await
        .trim()
        .parse()
        .expect("child pid");
    assert!(running(child_pid));

    let t0 = Instant::now();
    driver.stop("stubborn-1", "test stop").await;
    let took = t0.elapsed();
    assert!(
        took >= GRACE - Duration::from_millis(20),
        "SIGKILL came after {took:?}, before the grace"
    );
    assert!(took < GRACE + Duration::from_secs(3), "took {took:?}");
    assert!(!running(pid), "leader {pid} survived");
    assert!(!running(child_pid), "child {child_pid} survived: orphan");
    assert!(!group_has_running_members(pid));
    let stopped = expect(&mut rx, "stubborn-1", Phase::Stopped).await;
    assert_eq!(
        (stopped.reason.as_str(), stopped.exit_code),
        ("test stop", None)
    );
}

#[tokio::test]
async fn adopts_processes_left_by_a_crashed_agent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (first, mut rx1) = new_driver(dir.path());
    first
        .converge(&desired(&[spec("keep-1", &["sleep", "100"])]))
        .await;
    let pid = expect(&mut rx1, "keep-1", Phase::Starting)
        .await
        .pid
        .expect("pid");
    expect(&mut rx1, "keep-1", Phase::Running).await;
    // The agent "crashes": its supervisors go, the process stays.
    drop(first);
    sleep(Duration::from_millis(100)).await;
    assert!(running(pid));

    let (second, mut rx2) = new_driver(dir.path());
    assert_eq!(second.adopt().await, vec!["keep-1".to_owned()]);
    let adopted = expect(&mut rx2, "keep-1", Phase::Starting).await;
    assert_eq!(
        (adopted.pid, adopted.reason.as_str()),
        (Some(pid), "adopted from a previous agent run")
    );
    assert_eq!(
        expect(&mut rx2, "keep-1", Phase::Running).await.pid,
        Some(pid)
    );
    assert_eq!(
        second.snapshot(),
        vec![("keep-1".to_owned(), Phase::Running, Some(pid))]
    );

    second.converge(&BTreeMap::new()).await;
    let stopped = expect(&mut rx2, "keep-1", Phase::Stopped).await;
    assert_eq!(
        (stopped.pid, stopped.reason.as_str()),
        (Some(pid), "no longer in the desired set")
    );
    assert!(!running(pid));
    assert!(!state::path(&dir.path().join("allocs/keep-1")).exists());
}

/// Starts `sleep 100` in its own group, outside any driver, as a previous agent run would have.
fn foreign_sleep() -> (std::process::Child, u32, u64) {
    use std::os::unix::process::CommandExt;
    let child = std::process::Command::new("sleep")
        .arg("100")
        .process_group(0)
        .spawn()
        .expect("spawn sleep");
    let pid = child.id();
    let start_time = read_stat(pid).expect("stat").start_time;
    (child, pid, start_time)
}

fn write_state(data_dir: &Path, id: &str, pid: u32, start_time: u64, stop_reason: Option<&str>) {
    let alloc_dir = data_dir.join("allocs").join(id);
    std::fs::create_dir_all(&alloc_dir).expect("mkdir");
    let state = StateFile {
        version: STATE_VERSION,
        pid,
        start_time,
        restarts: 2,
        stop_reason: stop_reason.map(str::to_owned),
        spec: spec(id, &["sleep", "100"]),
    };
    state::write(&alloc_dir, &state).expect("write state");
}

#[tokio::test]
async fn a_reused_pid_is_not_adopted_nor_signalled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut stranger, pid, start_time) = foreign_sleep();
    // Same pid, different start time: the pid now names some other process.
    write_state(dir.path(), "old-1", pid, start_time + 1, None);
    let (driver, mut rx) = new_driver(dir.path());
    assert!(driver.adopt().await.is_empty());
    let failed = expect(&mut rx, "old-1", Phase::Failed).await;
    assert_eq!(failed.restarts, 2);
    assert!(
        failed
            .reason
            .contains("exited while the agent was not running"),
        "{failed:?}"
    );
    assert!(!state::path(&dir.path().join("allocs/old-1")).exists());
    assert!(running(pid), "the unrelated process must be left alone");
    assert!(driver.snapshot().is_empty());
    stranger.kill().expect("kill");
    stranger.wait().expect("reap");
}

#[tokio::test]
async fn an_interrupted_stop_is_finished_not_adopted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut leftover, pid, start_time) = foreign_sleep();
    write_state(dir.path(), "going-1", pid, start_time, Some("scaled down"));
    let (driver, mut rx) = new_driver(dir.path());
    assert!(driver.adopt().await.is_empty());
    let stopped = expect(&mut rx, "going-1", Phase::Stopped).await;
    assert_eq!(
        (stopped.reason.as_str(), stopped.pid),
        ("scaled down", Some(pid))
    );
    assert!(!running(pid));
    leftover.wait().expect("reap");
}

#[tokio::test]
async fn converge_is_idempotent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (driver, mut rx) = new_driver(dir.path());
    let want = desired(&[spec("once-1", &["sleep", "100"])]);
    driver.converge(&want).await;
    driver.converge(&want).await;
    let pid = expect(&mut rx, "once-1", Phase::Starting).await.pid;
    expect(&mut rx, "once-1", Phase::Running).await;
    driver.converge(&want).await;
    expect_quiet(&mut rx, Duration::from_millis(300)).await;
    assert_eq!(
        driver.snapshot(),
        vec![("once-1".to_owned(), Phase::Running, pid)]
    );
    let (stdout, _) = driver.log_paths("once-1");
    let text = std::fs::read_to_string(stdout).expect("stdout.log");
    assert_eq!(text.matches("--- sov: start #").count(), 1, "{text}");
    driver.stop_all("test done").await;
    expect(&mut rx, "once-1", Phase::Stopped).await;
}

#[test]
fn driver_and_its_futures_can_move_between_threads() {
    fn assert_send_sync<T: Send + Sync>(_: &T) {}
    fn assert_send<T: Send>(_: &T) {}
    let (tx, _rx) = mpsc::channel(1);
    let driver = Driver::new("/nonexistent".into(), DriverConfig::default(), tx);
    assert_send_sync(&driver);
    let want = BTreeMap::new();
    assert_send(&driver.converge(&want));
    assert_send(&driver.adopt());
    assert_send(&driver.stop("a", "b"));
    assert_send(&driver.stop_all("b"));
}
