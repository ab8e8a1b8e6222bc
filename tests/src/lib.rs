//! Harness for end-to-end tests that start the real `sov-scheduler` and `sovctl` binaries on
//! loopback (DESIGN.md, testing layer 3: kill -9, restart, data-dir reuse); [`agent`] adds
//! node agents, [`docker`] containers on private networks (layer 4).
//!
//! Owns: finding the built binaries, handing out loopback ports, starting schedulers as child
//! processes (and killing them whatever happens to the test), running `sovctl`, and waiting for
//! conditions with deadlines. It does not decide what a test asserts.
//!
//! The binaries are not built by `cargo test -p sov-e2e`; run `cargo build --workspace --bins`
//! first. Every process the harness starts is SIGKILLed when its wrapper is dropped, including
//! while a test panics, and also if the test process itself dies (`PR_SET_PDEATHSIG`). When a
//! test fails, the wrappers print the tail of each scheduler's log and keep the temporary
//! directory, so the failure can be read without running it again.
//!
//! Nothing here sleeps to let something happen: waits poll a condition until a deadline and
//! fail with the last reason the condition gave.

pub mod agent;
pub mod bench;
pub mod docker;
pub mod pki;

use std::collections::{BTreeSet, HashSet};
use std::fmt::Display;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How often waits re-check their condition: fast enough to measure a failover to within a
/// tenth of a second, slow enough not to starve a 2-core machine of CPU for the schedulers.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Longest a single `sovctl` run may take before the harness kills it: its own budget is five
/// attempts of `--timeout` seconds plus backoff, so this only catches a hung client.
const SOVCTL_WALL_MAX: Duration = Duration::from_secs(90);
/// Log lines printed per scheduler when a test fails.
const LOG_TAIL_LINES: usize = 40;
/// Longest log line printed in a tail, in characters.
const LOG_LINE_CHARS_MAX: usize = 300;

/// Prints a timeline of what a test does, with milliseconds since the test began, so a failure
/// can be read as a sequence of events.
#[derive(Debug, Clone, Copy)]
pub struct Timeline {
    start: Instant,
}

impl Default for Timeline {
    fn default() -> Self {
        Self::new()
    }
}

impl Timeline {
    pub fn new() -> Self {
        Timeline {
            start: Instant::now(),
        }
    }

    pub fn elapsed_ms(&self) -> u128 {
        self.start.elapsed().as_millis()
    }

    pub fn log(&self, what: impl Display) {
        eprintln!("[{:>6} ms] {what}", self.elapsed_ms());
    }
}

/// This machine's wall clock, in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

/// RFC 3339 (UTC, milliseconds) of a Unix time in ms, without a date crate.
pub fn rfc3339(ms: i64) -> String {
    let (days, rest) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3_600_000,
        rest / 60_000 % 60,
        rest / 1000 % 60,
        rest % 1000
    )
}

/// Path of a binary built by `cargo build --workspace --bins`, next to this test's `deps/` dir.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("cannot find the test executable's path");
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable is not under target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} not found: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// A path inside the repository (`deploy/policies`, `deploy/compose.yaml`, ...).
pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

/// Ports handed out by this test process, so two schedulers of one test never get the same one
/// (the kernel may return a just-released ephemeral port again).
static PORTS_GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// Ports [`free_ports`] hands out: below Linux's ephemeral range (32768-60999), so no outgoing
/// connection of any process (a gRPC client's source port) can take one between the moment it
/// is chosen and the moment a scheduler binds it; and below the model servers' default range
/// (20000-20999).
const TEST_PORTS: std::ops::Range<u16> = 10_000..20_000;

/// `n` distinct loopback ports that were free a moment ago, from [`TEST_PORTS`]. Another
/// process could still bind one before the scheduler does; that race is accepted (the scheduler
/// then fails to start with a clear message in its log), but no connection's source port can.
pub fn free_ports(n: usize) -> Vec<u16> {
    let mut given = PORTS_GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    let span = TEST_PORTS.end - TEST_PORTS.start;
    // Start somewhere different in every process, so test binaries run one after another do
    // not reuse the same ports while the previous one's sockets linger.
    let mut next = (std::process::id() % u32::from(span)) as u16;
    let mut held = Vec::new();
    let mut ports = Vec::new();
    let mut tried = 0u32;
    while ports.len() < n {
        assert!(
            tried < u32::from(span),
            "no free loopback port left in {TEST_PORTS:?}"
        );
        tried += 1;
        let port = TEST_PORTS.start + next;
        next = (next + 1) % span;
        if given.contains(&port) {
            continue;
        }
        // Keep every listener open until all are chosen.
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            held.push(listener);
            given.insert(port);
            ports.push(port);
        }
    }
    ports
}

/// `n` consecutive loopback ports from [`TEST_PORTS`] that were free a moment ago (a node's
/// model-server port range); returns the first.
pub fn free_port_range(n: u16) -> u16 {
    let mut given = PORTS_GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    let span = TEST_PORTS.end - TEST_PORTS.start;
    let offset = (std::process::id() % u32::from(span)) as u16;
    for step in 0..span / n {
        let first = TEST_PORTS.start + (offset + step * n) % (span - n);
        let range = first..first + n;
        if range.clone().any(|p| given.contains(&p)) {
            continue;
        }
        let held: Vec<TcpListener> = range
            .clone()
            .filter_map(|p| TcpListener::bind(("127.0.0.1", p)).ok())
            .collect();
        if held.len() == usize::from(n) {
            given.extend(range);
            return first;
        }
    }
    panic!("no {n} consecutive free loopback ports left in {TEST_PORTS:?}");
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub fn port_accepts(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
}

/// One plain HTTP/1.0 GET on loopback: (status code, body). Raw, to need no HTTP client crate.
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let bad = || std::io::Error::other(format!("not an HTTP response: {response:?}"));
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(bad)?;
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Ok((code, body))
}

/// Polls `check` every [`POLL_INTERVAL`] until it returns `Ok`, or panics after `timeout` with
/// the last reason it gave. Returns the value and how long the wait took.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> (T, Duration) {
    let start = Instant::now();
    loop {
        match check() {
            Ok(value) => return (value, start.elapsed()),
            Err(reason) if start.elapsed() >= timeout => {
                panic!("timed out after {timeout:?} waiting for {what}; last: {reason}")
            }
            Err(_) => std::thread::sleep(POLL_INTERVAL),
        }
    }
}

/// User plus system CPU time of process `pid` so far, in seconds (from `/proc/<pid>/stat`;
/// 0 when it cannot be read). Benchmarks divide its growth by wall time: cores used.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields after the command: state is [0]; utime is field 14 overall -> [11], stime [12].
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    (ticks(11) + ticks(12)) / hz
}

/// Last `lines` lines of a text file, or a note saying why there are none.
pub fn file_tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..]
                .iter()
                .map(|line| shorten(line))
                .collect::<Vec<_>>()
                .join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Cuts a log line to [`LOG_LINE_CHARS_MAX`] characters: openraft logs whole Raft states on one
/// line, which would bury the lines that matter.
fn shorten(line: &str) -> String {
    match line.char_indices().nth(LOG_LINE_CHARS_MAX) {
        Some((at, _)) => format!("{} …", &line[..at]),
        None => line.to_owned(),
    }
}

/// Makes a child die with the test process even if the test is SIGKILLed (cargo test timeout,
/// Ctrl-C), so no scheduler outlives the run and holds its ports.
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches only the calling (child) process.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// Writes a minimal deployment spec file and returns its path.
pub fn write_spec(dir: &Path, name: &str, model: &str, replicas: u32) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!("name = {name:?}\nmodel = {model:?}\nreplicas = {replicas}\n"),
    )
    .expect("cannot write spec file");
    path
}

// ------------------------------------------------------------------------------------------------
// sovctl
// ------------------------------------------------------------------------------------------------

/// What one `sovctl` run did.
#[derive(Debug)]
pub struct SovctlOutput {
    pub args: Vec<String>,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl SovctlOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Panics, showing the command and its output, unless it exited 0.
    pub fn assert_ok(&self) -> &Self {
        assert!(self.success(), "{self}");
        self
    }

    /// Stdout parsed as JSON (the command must have run with `-o json` and succeeded).
    pub fn json(&self) -> Value {
        self.assert_ok();
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self}"))
    }
}

impl Display for SovctlOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`sovctl {}` -> {} in {} ms\n--- stdout\n{}--- stderr\n{}---",
            self.args.join(" "),
            self.status,
            self.elapsed.as_millis(),
            self.stdout,
            self.stderr
        )
    }
}

/// Runs `cmd` to completion with piped stdout and stderr, killing it after `limit`: the exit
/// status (`None` when it was killed) and both outputs.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> (Option<ExitStatus>, String, String) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    die_with_parent(cmd);
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", cmd.get_program()));
    let mut stdout_pipe = child.stdout.take().expect("piped stdout");
    let mut stderr_pipe = child.stderr.take().expect("piped stderr");
    // Read both pipes while waiting, so a large output cannot block the child on a full pipe.
    let stdout_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout_pipe.read_to_string(&mut s);
        s
    });
    let stderr_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr_pipe.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for a child") {
            break Some(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    (
        status,
        stdout_reader.join().unwrap_or_default(),
        stderr_reader.join().unwrap_or_default(),
    )
}

/// Runs `sovctl --endpoint ENDPOINTS ARGS...` to completion, with the test PKI's client
/// identities ([`pki`]).
pub fn sovctl(endpoints: &str, args: &[&str]) -> SovctlOutput {
    sovctl_with(&pki::pki().client_dir(), endpoints, args)
}

/// [`sovctl`] with the client identities in `tls_dir` (another cluster's CA, e.g. the dev
/// cluster's).
pub fn sovctl_with(tls_dir: &Path, endpoints: &str, args: &[&str]) -> SovctlOutput {
    let mut all = vec!["--endpoint".to_owned(), endpoints.to_owned()];
    all.extend(args.iter().map(|a| (*a).to_owned()));
    let start = Instant::now();
    let mut cmd = Command::new(bin("sovctl"));
    cmd.args(&all)
        .env_remove("SOV_ENDPOINT")
        .env_remove("SOV_AS")
        .env_remove("SOV_TOKEN")
        .env_remove("SOV_TOKEN_FILE")
        .env("SOV_TLS_DIR", tls_dir);
    let (status, stdout, stderr) = run_bounded(&mut cmd, SOVCTL_WALL_MAX);
    let Some(status) = status else {
        panic!(
            "`sovctl {}` hung for more than {SOVCTL_WALL_MAX:?}",
            all.join(" ")
        );
    };
    SovctlOutput {
        args: all,
        status,
        stdout,
        stderr,
        elapsed: start.elapsed(),
    }
}

/// `sovctl history query` with `filter` flags (e.g. `["--kind", "policy.activated"]`), as JSON
/// events; the query must succeed.
pub fn history_events(endpoints: &str, filter: &[&str]) -> Vec<Value> {
    let mut args = vec!["history", "query", "--limit", "10000", "-o", "json"];
    args.extend_from_slice(filter);
    let out = sovctl(endpoints, &args);
    out.assert_ok();
    out.json()["events"].as_array().cloned().unwrap_or_default()
}

/// `cluster status -o json` as answered by the first reachable endpoint, or why not.
pub fn cluster_status(endpoints: &str) -> Result<Value, String> {
    let out = sovctl(
        endpoints,
        &["--timeout", "2", "-o", "json", "cluster", "status"],
    );
    if !out.success() {
        return Err(out.stderr.trim().to_owned());
    }
    serde_json::from_str(&out.stdout).map_err(|e| format!("bad JSON ({e}): {}", out.stdout))
}

/// (state SHA-256, state revision) as one scheduler reports them in `cluster status`: equal
/// pairs mean equal replicated state (invariant I3).
pub fn state_fingerprint(endpoint: &str) -> Result<(String, u64), String> {
    let s = cluster_status(endpoint)?;
    Ok((
        s["state_sha256"].as_str().unwrap_or("").to_owned(),
        u64_field(&s, "state_revision"),
    ))
}

/// Waits until every endpoint reports the same state fingerprint, and returns it.
pub fn wait_same_state(endpoints: &[String], timeout: Duration) -> (String, u64) {
    let (fingerprint, _) = wait_until("every scheduler at the same state", timeout, || {
        let all: Vec<_> = endpoints
            .iter()
            .map(|e| state_fingerprint(e).map_err(|why| format!("{e}: {why}")))
            .collect::<Result<_, _>>()?;
        if all.windows(2).all(|w| w[0] == w[1]) {
            Ok(all[0].clone())
        } else {
            Err(format!("{all:?}"))
        }
    });
    fingerprint
}

/// An unsigned field of a JSON object (0 when missing or not a number).
pub fn u64_field(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

/// Ids of the members that `status` lists as voters.
pub fn voter_ids(status: &Value) -> BTreeSet<u64> {
    status["members"]
        .as_array()
        .map(|members| {
            members
                .iter()
                .filter(|m| m["voter"] == Value::Bool(true))
                .filter_map(|m| m["id"].as_u64())
                .collect()
        })
        .unwrap_or_default()
}

/// Names in a `deploy list -o json` document.
pub fn deployment_names(list: &Value) -> BTreeSet<String> {
    list["deployments"]
        .as_array()
        .unwrap_or_else(|| panic!("no `deployments` array in {list}"))
        .iter()
        .map(|d| {
            d["spec"]["name"]
                .as_str()
                .unwrap_or_else(|| panic!("deployment without spec.name: {d}"))
                .to_owned()
        })
        .collect()
}

// ------------------------------------------------------------------------------------------------
// Schedulers
// ------------------------------------------------------------------------------------------------

/// How a scheduler finds its cluster at start-up.
#[derive(Debug, Clone)]
pub enum Start {
    /// `--bootstrap`: a new cluster with this scheduler as its only voter (a no-op once the data
    /// dir belongs to a cluster).
    Bootstrap,
    /// `--join ADDR`: ask the member at this API address to add it (a no-op once a member).
    Join(String),
    /// Neither flag: the data dir says which cluster this is.
    Plain,
}

/// One `sov-scheduler run` child process and everything needed to restart it identically.
/// Dropping it SIGKILLs the process; if the thread is panicking it also prints the log tail.
pub struct Scheduler {
    pub id: u64,
    pub api_port: u16,
    pub raft_port: u16,
    pub http_port: u16,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    start: Start,
    child: Option<Child>,
    starts: u32,
    /// Extra `sov-scheduler run` flags, given on every (re)start.
    extra_args: Vec<String>,
}

impl Scheduler {
    /// Starts scheduler `id` with its data dir and log under `root/node-<id>/`, on fresh ports.
    pub fn start(id: u64, root: &Path, start: Start) -> Scheduler {
        Self::start_with(id, root, start, &[])
    }

    /// Like [`Scheduler::start`], with extra `sov-scheduler run` flags (kept for restarts).
    pub fn start_with(id: u64, root: &Path, start: Start, extra_args: &[&str]) -> Scheduler {
        let mut s = Self::prepare(id, root, start, extra_args);
        s.spawn();
        s
    }

    /// Everything [`Scheduler::start_with`] sets up (ports, directories), without starting the
    /// process: for a test that seeds the data dir first. [`Scheduler::restart`] starts it.
    pub fn prepare(id: u64, root: &Path, start: Start, extra_args: &[&str]) -> Scheduler {
        let ports = free_ports(3);
        let dir = root.join(format!("node-{id}"));
        std::fs::create_dir_all(&dir).expect("cannot create node dir");
        Scheduler {
            id,
            api_port: ports[0],
            raft_port: ports[1],
            http_port: ports[2],
            data_dir: dir.join("data"),
            log_path: dir.join("scheduler.log"),
            start,
            child: None,
            starts: 0,
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
        }
    }

    /// `--raft-listen` / `--http-listen` as given to this scheduler.
    pub fn raft_addr(&self) -> String {
        format!("127.0.0.1:{}", self.raft_port)
    }

    pub fn http_addr(&self) -> String {
        format!("127.0.0.1:{}", self.http_port)
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "scheduler {} is running", self.id);
        self.starts += 1;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("cannot open scheduler log");
        // Marks each start in the log, so a restart's lines can be told from the first run's.
        let _ = writeln!(
            log,
            "===== sov-e2e: start #{} of scheduler {} ({:?}) =====",
            self.starts, self.id, self.start
        );
        let mut cmd = Command::new(bin("sov-scheduler"));
        cmd.arg("run")
            .args(["--node-id", &self.id.to_string()])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--api-listen", &self.api_addr()])
            .args(["--raft-listen", &self.raft_addr()])
            .args(["--http-listen", &self.http_addr()]);
        match &self.start {
            Start::Bootstrap => {
                cmd.arg("--bootstrap");
            }
            Start::Join(addr) => {
                cmd.args(["--join", addr]);
            }
            Start::Plain => {}
        }
        cmd.args(pki::Pki::flags(&pki::pki().scheduler(self.id)));
        cmd.args(&self.extra_args);
        // Only the flags above configure it: no stray SOV_* setting from the environment.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("SOV_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("SOV_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log file"))
            .stderr(log);
        die_with_parent(&mut cmd);
        self.child = Some(cmd.spawn().expect("cannot start sov-scheduler"));
    }

    /// `127.0.0.1:<api port>`, as `--join` takes it.
    pub fn api_addr(&self) -> String {
        format!("127.0.0.1:{}", self.api_port)
    }

    /// `https://127.0.0.1:<api port>`, as `sovctl --endpoint` takes it.
    pub fn endpoint(&self) -> String {
        format!("https://{}", self.api_addr())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Panics with the log tail if the process has exited on its own.
    pub fn assert_running(&mut self) {
        let Some(child) = self.child.as_mut() else {
            panic!("scheduler {} was killed by the test", self.id);
        };
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!(
                "scheduler {} exited by itself ({status}); last lines of {}:\n{}",
                self.id,
                self.log_path.display(),
                file_tail(&self.log_path, LOG_TAIL_LINES)
            );
        }
    }

    /// SIGKILL (no shutdown of any kind) and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: the process stays, its sockets stay open, it answers nothing (a hung host).
    pub fn pause(&self) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
        }
    }

    /// SIGCONT after [`Scheduler::pause`].
    pub fn resume(&self) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(pid as i32, libc::SIGCONT) };
        }
    }

    /// Starts the process again with the same id, ports, data dir and flags.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// `/readyz`: Ok when it answers 200, else the reason.
    pub fn readyz(&self) -> Result<(), String> {
        match http_get(self.http_port, "/readyz") {
            Ok((200, _)) => Ok(()),
            Ok((code, body)) => Err(format!("/readyz {code}: {}", body.trim())),
            Err(e) => Err(format!("/readyz unreachable: {e}")),
        }
    }

    /// Waits until `/readyz` answers 200, failing early if the process dies.
    pub fn wait_ready(&mut self, timeout: Duration) -> Duration {
        let what = format!("scheduler {} to be ready", self.id);
        wait_until(&what, timeout, || {
            self.assert_running();
            self.readyz()
        })
        .1
    }

    /// `cluster status -o json` answered by this scheduler alone.
    pub fn status(&self) -> Result<Value, String> {
        cluster_status(&self.endpoint())
    }

    pub fn log_tail(&self) -> String {
        file_tail(&self.log_path, LOG_TAIL_LINES)
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "\n----- last lines of scheduler {} log ({}) -----\n{}\n-----",
                self.id,
                self.log_path.display(),
                self.log_tail()
            );
        }
    }
}

/// A cluster of schedulers in one temporary directory: scheduler 1 bootstraps, the others join
/// it. Dropping it kills every scheduler; on a failing test the directory is kept for reading.
pub struct Cluster {
    /// Indexed by id - 1. Declared before `root` so the processes die before their dir goes.
    pub nodes: Vec<Scheduler>,
    pub root: tempfile::TempDir,
    pub timeline: Timeline,
}

/// Longest the harness waits for a cluster to form, well above a normal start (about 2 s).
pub const FORM_TIMEOUT: Duration = Duration::from_secs(45);

impl Cluster {
    /// Starts `n` schedulers and waits until all are voters, a leader is known, the cluster has
    /// its id, and every scheduler answers `/readyz` with 200.
    pub fn start(n: u64, timeline: Timeline) -> Cluster {
        Self::start_with(n, timeline, &[])
    }

    /// Like [`Cluster::start`], with extra `sov-scheduler run` flags for every scheduler.
    pub fn start_with(n: u64, timeline: Timeline, extra_args: &[&str]) -> Cluster {
        assert!(n >= 1);
        let root = tempfile::Builder::new()
            .prefix("sov-e2e-")
            .tempdir()
            .expect("cannot create temp dir");
        // Every cluster signs its history, with a key made by the real `keygen`.
        let keys = root.path().join("keys");
        let (status, out, err) = run_bounded(
            Command::new(bin("sov-scheduler"))
                .args(["keygen", "--out"])
                .arg(&keys),
            Duration::from_secs(30),
        );
        assert!(
            status.is_some_and(|s| s.success()),
            "sov-scheduler keygen failed: {out}{err}"
        );
        let key = keys.join("cluster.key").to_string_lossy().into_owned();
        let mut extra_args = extra_args.to_vec();
        extra_args.extend(["--signing-key", key.as_str()]);
        let extra_args = extra_args.as_slice();
        let mut cluster = Cluster {
            nodes: Vec::new(),
            root,
            timeline,
        };
        cluster.nodes.push(Scheduler::start_with(
            1,
            cluster.root.path(),
            Start::Bootstrap,
            extra_args,
        ));
        let first = cluster.nodes[0].api_addr();
        let took = cluster.nodes[0].wait_ready(FORM_TIMEOUT);
        timeline.log(format_args!(
            "scheduler 1 bootstrapped and ready after {} ms (api {}, dir {})",
            took.as_millis(),
            first,
            cluster.root.path().display()
        ));
        for id in 2..=n {
            let node = Scheduler::start_with(
                id,
                cluster.root.path(),
                Start::Join(first.clone()),
                extra_args,
            );
            cluster.nodes.push(node);
        }
        cluster.wait_formed(n as usize);
        timeline.log(format_args!(
            "cluster of {n} formed: endpoints {}",
            cluster.endpoints()
        ));
        cluster
    }

    /// Waits until scheduler 1 reports `voters` voters, a leader and a cluster id, and every
    /// running scheduler is ready.
    pub fn wait_formed(&mut self, voters: usize) -> Value {
        let endpoint = self.nodes[0].endpoint();
        let nodes = &mut self.nodes;
        let (status, _) = wait_until(
            &format!("{voters} voters, a leader and a cluster id"),
            FORM_TIMEOUT,
            || {
                for node in nodes.iter_mut() {
                    node.assert_running();
                }
                let s = cluster_status(&endpoint)?;
                let have = voter_ids(&s).len();
                if have < voters || u64_field(&s, "leader_id") == 0 {
                    return Err(format!("{have} voters, leader {}", s["leader_id"]));
                }
                if s["cluster_id"].as_str().unwrap_or("").is_empty() {
                    return Err("no cluster id yet".into());
                }
                for node in nodes.iter() {
                    node.readyz()
                        .map_err(|e| format!("scheduler {}: {e}", node.id))?;
                }
                Ok(s)
            },
        );
        status
    }

    /// Every scheduler's endpoint, comma-separated, in id order.
    pub fn endpoints(&self) -> String {
        self.nodes
            .iter()
            .map(Scheduler::endpoint)
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn node(&mut self, id: u64) -> &mut Scheduler {
        &mut self.nodes[(id - 1) as usize]
    }

    /// The public half of the key every scheduler of this cluster signs its history with
    /// (`sovctl audit verify --key`).
    pub fn public_key(&self) -> PathBuf {
        self.root.path().join("keys").join("cluster.pub")
    }

    /// A directory for spec files and other test inputs.
    pub fn scratch(&self) -> PathBuf {
        let dir = self.root.path().join("scratch");
        std::fs::create_dir_all(&dir).expect("cannot create scratch dir");
        dir
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The nodes drop (and print their logs) right after this, by field order.
        if std::thread::panicking() {
            self.root.disable_cleanup(true);
            eprintln!(
                "\n===== test failed; its schedulers' data and logs are kept under {} =====",
                self.root.path().display()
            );
        }
    }
}
