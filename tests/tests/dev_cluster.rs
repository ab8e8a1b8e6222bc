//! The README's main path: `sov-scheduler dev` (run from the repository root, as the README
//! says) brings up three schedulers and five real agents, the shipped `tiny-echo` example is
//! placed and its model servers answer on their ports, Ctrl-C stops every scheduler, agent and
//! model server cleanly, and running the same command again continues with the same data.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sov_e2e::{
    Timeline, bin, die_with_parent, file_tail, http_get, port_accepts, sovctl_with, wait_until,
};

const NODES: u16 = 3;
/// Scheduler i uses BASE+10*(i-1) .. +2, so a three-node cluster spans BASE..=BASE+22.
const PORT_SPAN: u16 = 10 * (NODES - 1) + 3;
const UP_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// A base port whose whole span is free right now: tried at pseudo-random places in
/// 21000..60000 (seeded from the pid and clock, so parallel runs spread out).
fn free_base_port() -> u16 {
    let mut seed = u64::from(std::process::id())
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
    for _ in 0..200 {
        // xorshift: spread without a rand dependency.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        // Above the dev agents' model-server ports (20000-20999).
        let base = 21_000 + (seed % 39_000) as u16;
        let held: Vec<_> = (base..base + PORT_SPAN)
            .map_while(|p| TcpListener::bind(("127.0.0.1", p)).ok())
            .collect();
        if held.len() == PORT_SPAN as usize {
            return base;
        }
    }
    panic!("found no {PORT_SPAN} consecutive free loopback ports in 21000..60000");
}

/// One `sov-scheduler dev` process; SIGKILLed on drop (its schedulers then get SIGTERM from
/// the kernel through their parent-death signal). On a failing test it prints the launcher's
/// output and each scheduler's log tail.
struct Dev {
    child: Option<Child>,
    dir: PathBuf,
    stderr_log: PathBuf,
    stdout_lines: mpsc::Receiver<String>,
    stdout_seen: Vec<String>,
}

impl Dev {
    fn start(dir: &Path, base_port: u16, run: u32) -> Dev {
        let stderr_log = dir.with_file_name(format!("dev-launcher-{run}.stderr"));
        let stderr = std::fs::File::create(&stderr_log).unwrap();
        let mut cmd = Command::new(bin("sov-scheduler"));
        cmd.arg("dev")
            .arg("--dir")
            .arg(dir)
            .args(["--base-port", &base_port.to_string()])
            .current_dir(repo_root())
            .env("SOV_LOG", "info")
            // Not under `cargo run`: the launcher must not start a nested cargo build.
            .env_remove("CARGO")
            .env_remove("SOV_DEV_DIR")
            .env_remove("SOV_CONFIG")
            // The launcher links sovctl's default credentials under here: not the real home.
            .env("XDG_CONFIG_HOME", dir.with_file_name("config"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().expect("cannot start sov-scheduler dev");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Dev {
            child: Some(child),
            dir: dir.to_owned(),
            stderr_log,
            stdout_lines: rx,
            stdout_seen: Vec::new(),
        }
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().expect("dev is running").id() as i32
    }

    /// Waits for the line that says the cluster is up; fails early if the launcher exits.
    fn wait_up(&mut self) -> Duration {
        let start = Instant::now();
        loop {
            match self.stdout_lines.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => {
                    let up = line.contains("sov dev cluster is up");
                    self.stdout_seen.push(line);
                    if up {
                        return start.elapsed();
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.as_mut().unwrap().wait().unwrap();
                    panic!("sov-scheduler dev exited ({status}) before the cluster was up");
                }
            }
            assert!(
                start.elapsed() < UP_TIMEOUT,
                "the dev cluster was not up within {UP_TIMEOUT:?}"
            );
        }
    }

    /// Sends SIGINT (what Ctrl-C sends) and waits for the launcher to exit.
    fn interrupt(&mut self) -> (ExitStatus, Duration) {
        // SAFETY: kill(2) on our own unreaped child.
        let rc = unsafe { libc::kill(self.pid(), libc::SIGINT) };
        assert_eq!(rc, 0, "kill(SIGINT) failed");
        let start = Instant::now();
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return (status, start.elapsed());
            }
            assert!(
                start.elapsed() < STOP_TIMEOUT,
                "sov-scheduler dev did not exit within {STOP_TIMEOUT:?} of SIGINT"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            self.stdout_seen.extend(self.stdout_lines.try_iter());
            eprintln!(
                "\n----- dev launcher stdout -----\n{}\n----- dev launcher stderr ({}) -----\n{}",
                self.stdout_seen.join("\n"),
                self.stderr_log.display(),
                file_tail(&self.stderr_log, 40)
            );
            for id in 1..=NODES {
                let log = self.dir.join(format!("node-{id}")).join("scheduler.log");
                eprintln!(
                    "----- scheduler {id} ({}) -----\n{}",
                    log.display(),
                    file_tail(&log, 25)
                );
            }
        }
    }
}

/// The dev cluster's client identities (its throwaway CA issued them).
fn dev_tls(dir: &Path) -> PathBuf {
    dir.join("tls").join("client")
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Ports of the tiny-echo replicas, once both report running.
fn running_ports(tls: &Path, endpoint: &str) -> Result<Vec<u16>, String> {
    let shown = sovctl_with(
        tls,
        endpoint,
        &["-o", "json", "deploy", "show", "tiny-echo"],
    );
    if !shown.success() {
        return Err(shown.stderr.clone());
    }
    let v = shown.json();
    let replicas = v["replicas"].as_array().cloned().unwrap_or_default();
    let running: Vec<u16> = replicas
        .iter()
        .filter(|r| r["status"] == "running")
        .filter_map(|r| r["port"].as_u64().and_then(|p| u16::try_from(p).ok()))
        .collect();
    if running.len() == 2 {
        Ok(running)
    } else {
        Err(format!("replicas: {}", v["replicas"]))
    }
}

/// Every port of every dev scheduler (API, Raft, HTTP).
fn dev_ports(base: u16) -> Vec<u16> {
    (0..NODES)
        .flat_map(|i| (0..3).map(move |o| base + 10 * i + o))
        .collect()
}

/// After the launcher exits, nothing may listen on any scheduler port: no scheduler was left
/// behind. Polled briefly, since a closing socket may linger for a moment.
fn assert_all_stopped(base: u16) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let open: Vec<u16> = dev_ports(base)
            .into_iter()
            .filter(|p| port_accepts(*p))
            .collect();
        if open.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "ports still accepting connections after the dev launcher exited: {open:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn dev_cluster_starts_stops_on_ctrl_c_and_keeps_its_data() {
    let tl = Timeline::new();
    let root = tempfile::Builder::new()
        .prefix("sov-e2e-dev-")
        .tempdir()
        .unwrap();
    let dir = root.path().join("dev");
    let base = free_base_port();
    let endpoint = format!("http://127.0.0.1:{base}");
    tl.log(format_args!(
        "base port {base}, dir {}",
        root.path().display()
    ));

    let mut dev = Dev::start(&dir, base, 1);
    let took = dev.wait_up();
    tl.log(format_args!("dev cluster up after {} ms", took.as_millis()));

    let nodes = sovctl_with(&dev_tls(&dir), &endpoint, &["-o", "json", "node", "list"]).json();
    let ready = nodes["nodes"]
        .as_array()
        .map_or(0, |n| n.iter().filter(|n| n["status"] == "ready").count());
    assert_eq!(ready, 5, "five agents registered: {nodes}");
    let spec = repo_root().join("deploy/examples/tiny-echo.toml");
    let out = sovctl_with(
        &dev_tls(&dir),
        &endpoint,
        &["deploy", "apply", "-f", spec.to_str().unwrap()],
    );
    out.assert_ok();
    tl.log(format_args!("applied: {}", out.stdout.trim()));
    let (ports, took) = wait_until("both tiny-echo replicas running", UP_TIMEOUT, || {
        running_ports(&dev_tls(&dir), &endpoint)
    });
    tl.log(format_args!(
        "tiny-echo running on ports {ports:?} after {} ms",
        took.as_millis()
    ));
    for port in &ports {
        let (code, body) = http_get(*port, "/").expect("model server answers");
        assert_eq!(code, 200, "{body}");
        assert!(
            body.contains("sim-"),
            "it says which node it runs on: {body}"
        );
    }

    let (status, took) = dev.interrupt();
    assert!(status.success(), "dev exited with {status} after SIGINT");
    tl.log(format_args!(
        "SIGINT: dev exited 0 after {} ms",
        took.as_millis()
    ));
    assert_all_stopped(base);
    for port in &ports {
        assert!(
            !port_accepts(*port),
            "model server on {port} outlived the dev cluster"
        );
    }
    tl.log(format_args!(
        "no scheduler port ({base}..={}) accepts connections",
        base + PORT_SPAN - 1
    ));
    drop(dev);

    let mut dev = Dev::start(&dir, base, 2);
    let took = dev.wait_up();
    tl.log(format_args!(
        "same command again: dev cluster up after {} ms",
        took.as_millis()
    ));
    let said = std::fs::read_to_string(&dev.stderr_log).unwrap_or_default();
    assert!(
        said.contains("reusing the data of the previous run"),
        "the second start did not say it reuses the data:\n{said}"
    );
    let shown = sovctl_with(
        &dev_tls(&dir),
        &endpoint,
        &["-o", "json", "deploy", "show", "tiny-echo"],
    )
    .json();
    assert_eq!(shown["spec"]["replicas"], 2, "{shown}");
    assert_eq!(shown["generation"], 1, "{shown}");
    tl.log("tiny-echo survived the restart (generation 1, 2 replicas)");

    let (status, took) = dev.interrupt();
    assert!(status.success(), "dev exited with {status} after SIGINT");
    assert_all_stopped(base);
    tl.log(format_args!(
        "SIGINT again: dev exited 0 after {} ms; all ports closed",
        took.as_millis()
    ));
}
