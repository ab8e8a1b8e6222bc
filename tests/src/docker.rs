//! Containers for end-to-end tests across "real hosts" (DESIGN.md, testing layer 4): the sov
//! image, the compose cluster of `deploy/compose.yaml` (three schedulers, five agents, private
//! networks), the faults (kill, stop, start, partition with `docker network disconnect`) and
//! what a test needs to look inside a container.
//!
//! Every container test starts with [`session`]. Where no Docker engine answers it prints a
//! loud `SKIPPED` line (written past the test harness's capture, so it shows in a passing run)
//! and returns `None`; the test then returns. Otherwise the [`Session`] it returns holds the
//! machine-wide container-test lock (an `flock` on a file in the temp dir), so container tests
//! run one at a time, also across test processes and checkouts (eight containers on a 2-core
//! machine are enough), and the image built from this build's binaries:
//! `deploy/docker/build-image.sh --bin-dir target/<profile>`, a `FROM scratch` image tagged with
//! a hash of its content, so a rebuild with the same binaries is a no-op. The tests use the
//! debug binaries `cargo build --workspace --bins` made; the image is the same as a release one
//! but for their size.
//!
//! A [`Compose`] is one compose project with a name of its own (`sov-e2e-<pid>-<n>`) and its own
//! host ports, so runs never collide. Dropping it removes its containers, networks and volumes
//! (`down -v`), also when the test panics; a failing test first prints the log tail of each of
//! its containers. A test process killed outright leaves its project behind: the next session
//! removes projects whose process is gone. Every docker command is bounded in time, and every
//! wait has a deadline.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{
    Timeline, bin, cluster_status, free_ports, http_get, repo_path, run_bounded, u64_field,
    voter_ids, wait_until,
};

/// The scheduler services of `deploy/compose.yaml`, scheduler `i` at index `i - 1`.
pub const SCHEDULERS: [&str; 3] = ["sched-1", "sched-2", "sched-3"];
/// The agent services of `deploy/compose.yaml` and the node names their configs give.
pub const AGENTS: [(&str, &str); 5] = [
    ("agent-fr", "fr-paris-1"),
    ("agent-de", "de-frankfurt-1"),
    ("agent-pl", "pl-warsaw-1"),
    ("agent-ie", "ie-dublin-1"),
    ("agent-us", "us-virginia-1"),
];
/// Liveness settings of the test clusters: a node is `down` three seconds after its last
/// heartbeat, so node-loss tests take seconds, not the production ten.
pub const HEARTBEAT_TTL_MS: u64 = 3_000;
const HEARTBEAT_INTERVAL_MS: u64 = 500;

/// Longest any one docker or compose command may take (an image build included).
const DOCKER_WALL_MAX: Duration = Duration::from_secs(180);
/// Longest the cluster may take to form after `up` or `start`.
pub const FORM_TIMEOUT: Duration = Duration::from_secs(60);
/// Log lines printed per container when a test fails.
const LOG_TAIL_LINES: usize = 60;

/// Longest a container test waits for another one (here or in another process) to finish:
/// the whole suite takes about two minutes.
const LOCK_WAIT_MAX: Duration = Duration::from_secs(900);
/// A wait for the lock longer than this is announced.
const LOCK_WAIT_ANNOUNCE: Duration = Duration::from_secs(120);
/// Compose projects of the tests are named `sov-e2e-<pid>-<n>`.
const PROJECT_PREFIX: &str = "sov-e2e-";
/// The image tag, built once per test process.
static IMAGE: OnceLock<Result<String, String>> = OnceLock::new();
/// Numbers the compose projects of this process.
static PROJECTS: AtomicU32 = AtomicU32::new(0);

/// What a container test may use: the Docker engine (alone, while this lives), the compose
/// command and the image.
pub struct Session {
    /// Holds the flock; closing the file releases it.
    _lock: File,
    compose: Vec<String>,
    image: String,
    /// The compose cluster's certificates (deploy/docker/certs.sh), issued by the test CA so
    /// [`crate::sovctl`] reaches the containers with its usual identities.
    certs: PathBuf,
}

/// Writes `line` to stderr past the test harness's output capture, so it is seen even when the
/// test passes.
fn loud(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// `docker ARGS`: stdout, or why it failed.
pub fn docker(args: &[&str]) -> Result<String, String> {
    let (status, stdout, stderr) = run_bounded(Command::new("docker").args(args), DOCKER_WALL_MAX);
    match status {
        Some(s) if s.success() => Ok(stdout),
        Some(s) => Err(format!(
            "`docker {}` {s}: {}",
            args.join(" "),
            stderr.trim()
        )),
        None => Err(format!(
            "`docker {}` did not finish within {DOCKER_WALL_MAX:?}",
            args.join(" ")
        )),
    }
}

/// `docker ARGS`, which must succeed.
fn docker_ok(args: &[&str]) -> String {
    docker(args).unwrap_or_else(|e| panic!("{e}"))
}

/// The suite's entry: `None` (after a loud SKIPPED line) when no Docker engine is reachable.
/// Panics when Docker is there but Compose or the image is not, because then the tests could
/// run and must not pass silently.
pub fn session(test: &str) -> Option<Session> {
    // A missing `docker` binary fails to spawn, which `run_bounded` reports as a panic; ask
    // whether it exists first.
    if Command::new("docker").arg("--version").output().is_err() {
        loud(&format!(
            "SKIPPED: no Docker engine reachable (no `docker` command); container test {test} did not run"
        ));
        return None;
    }
    if let Err(why) = docker(&["info", "--format", "{{.ServerVersion}}"]) {
        loud(&format!(
            "SKIPPED: no Docker engine reachable ({why}); container test {test} did not run"
        ));
        return None;
    }
    let lock = lock_suite(test);
    remove_orphaned_projects();
    let compose = compose_command().unwrap_or_else(|e| panic!("{e}"));
    let image = IMAGE
        .get_or_init(build_image)
        .clone()
        .unwrap_or_else(|e| panic!("{e}"));
    let certs = CERTS
        .get_or_init(compose_certs)
        .clone()
        .unwrap_or_else(|e| panic!("{e}"));
    Some(Session {
        _lock: lock,
        compose,
        image,
        certs,
    })
}

static CERTS: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// Runs deploy/docker/certs.sh with the test CA, into a directory of this process.
fn compose_certs() -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix("sov-e2e-compose-tls-")
        .tempdir()
        .map_err(|e| format!("cannot create the compose certificates' dir: {e}"))?
        .keep();
    // The containers' user must reach its own directory below.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| e.to_string())?;
    let ca = dir.join("ca");
    std::fs::create_dir(&ca).map_err(|e| e.to_string())?;
    let test_ca = crate::pki::pki().ca_dir();
    for file in ["ca.crt", "ca.key"] {
        std::fs::copy(test_ca.join(file), ca.join(file)).map_err(|e| e.to_string())?;
    }
    let (status, out, err) = run_bounded(
        Command::new(repo_path("deploy/docker/certs.sh"))
            .arg(&dir)
            .env("SOVCTL", crate::bin("sovctl")),
        DOCKER_WALL_MAX,
    );
    match status {
        Some(s) if s.success() => Ok(dir),
        _ => Err(format!(
            "deploy/docker/certs.sh failed ({status:?}): {out}{err}"
        )),
    }
}

/// Takes the machine-wide container-test lock, waiting (bounded) for whoever holds it. Each
/// call opens the file anew, so two tests of one process exclude each other too.
fn lock_suite(test: &str) -> File {
    let path = std::env::temp_dir().join("sov-e2e-containers.lock");
    let file = File::create(&path)
        .unwrap_or_else(|e| panic!("cannot open the lock file {}: {e}", path.display()));
    let start = Instant::now();
    let mut told = false;
    loop {
        // SAFETY: flock(2) on a descriptor this function owns.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return file;
        }
        assert!(
            start.elapsed() < LOCK_WAIT_MAX,
            "container test {test} waited {LOCK_WAIT_MAX:?} for {} and gave up",
            path.display()
        );
        // Tests of one process queue here all the time; say so only when the wait is long,
        // which is another process's suite.
        if !told && start.elapsed() > LOCK_WAIT_ANNOUNCE {
            loud(&format!(
                "container test {test} waits for another container test (lock {})",
                path.display()
            ));
            told = true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Removes the containers, networks and volumes of test projects whose process no longer runs
/// (a test killed with SIGKILL never gets to drop its [`Compose`]).
fn remove_orphaned_projects() {
    let label = "{{.Label \"com.docker.compose.project\"}}";
    let mut projects = BTreeSet::new();
    for kind in ["ps -a", "network ls", "volume ls"] {
        let mut args: Vec<&str> = kind.split(' ').collect();
        args.extend(["--format", label]);
        for name in docker(&args).unwrap_or_default().lines() {
            projects.insert(name.trim().to_owned());
        }
    }
    for project in projects {
        let Some(pid) = project
            .strip_prefix(PROJECT_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let filter = format!("label=com.docker.compose.project={project}");
        for (list, remove) in [
            ("ps -aq", "rm -f -v"),
            ("network ls -q", "network rm"),
            ("volume ls -q", "volume rm -f"),
        ] {
            let mut args: Vec<&str> = list.split(' ').collect();
            args.extend(["--filter", &filter]);
            let ids = docker(&args).unwrap_or_default();
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut rm: Vec<&str> = remove.split(' ').collect();
                rm.extend(&ids);
                let _ = docker(&rm);
            }
        }
        loud(&format!(
            "removed compose project {project}, left behind by a test process that is gone"
        ));
    }
}

/// `docker compose` (the plugin) where it exists, else `docker-compose`.
fn compose_command() -> Result<Vec<String>, String> {
    let candidates: [&[&str]; 2] = [&["docker", "compose"], &["docker-compose"]];
    for candidate in candidates {
        let works = Command::new(candidate[0])
            .args(&candidate[1..])
            .arg("version")
            .output()
            .is_ok_and(|out| out.status.success());
        if works {
            return Ok(candidate.iter().map(|s| (*s).to_owned()).collect());
        }
    }
    Err(
        "a Docker engine is reachable but neither `docker compose` nor `docker-compose` \
         works; install Compose (Debian: apt-get install docker-compose)"
            .to_owned(),
    )
}

/// Builds (or finds) the image of this build's binaries; returns its content-hash tag.
fn build_image() -> Result<String, String> {
    let bin_dir = bin("sov-scheduler")
        .parent()
        .expect("binaries live in a directory")
        .to_owned();
    let script = repo_path("deploy/docker/build-image.sh");
    let started = std::time::Instant::now();
    let (status, stdout, stderr) = run_bounded(
        Command::new(&script).arg("--bin-dir").arg(&bin_dir),
        DOCKER_WALL_MAX,
    );
    let tag = stdout.lines().last().unwrap_or("").trim().to_owned();
    match status {
        Some(s) if s.success() && !tag.is_empty() => {
            let what = stderr
                .lines()
                .find(|l| l.contains("is up to date") || l.starts_with("built image"))
                .unwrap_or("")
                .trim();
            loud(&format!(
                "container tests use image {tag} ({what}, {} ms)",
                started.elapsed().as_millis()
            ));
            Ok(tag)
        }
        _ => Err(format!(
            "{} --bin-dir {} failed ({status:?}):\n{stderr}",
            script.display(),
            bin_dir.display()
        )),
    }
}

/// A network a container was taken off, and how to put it back as it was.
pub struct Partition {
    pub service: String,
    network: String,
    container: String,
    aliases: Vec<String>,
}

/// One compose project of `deploy/compose.yaml`.
pub struct Compose {
    pub project: String,
    compose: Vec<String>,
    env: Vec<(String, String)>,
    /// Host ports of each scheduler's API and HTTP port, scheduler `i` at `i - 1`.
    pub api_ports: [u16; 3],
    pub http_ports: [u16; 3],
    /// Host port of each agent's model-server port, by service.
    pub model_ports: BTreeMap<&'static str, u16>,
    timeline: Timeline,
}

impl Compose {
    /// Creates and starts `services` of a new project, on fresh host ports.
    pub fn up(session: &Session, timeline: Timeline, services: &[&str]) -> Compose {
        let n = PROJECTS.fetch_add(1, Ordering::Relaxed);
        let project = format!("{PROJECT_PREFIX}{}-{n}", std::process::id());
        let ports = free_ports(6 + AGENTS.len());
        let mut env = vec![
            ("SOV_IMAGE".to_owned(), session.image.clone()),
            // A killed container stays dead: the test decides when things come back.
            ("SOV_RESTART".to_owned(), "no".to_owned()),
            (
                "SOV_HEARTBEAT_TTL_MS".to_owned(),
                HEARTBEAT_TTL_MS.to_string(),
            ),
            (
                "SOV_HEARTBEAT_INTERVAL_MS".to_owned(),
                HEARTBEAT_INTERVAL_MS.to_string(),
            ),
            ("SOV_LOG".to_owned(), "info".to_owned()),
            (
                "SOV_TLS_HOST_DIR".to_owned(),
                session.certs.display().to_string(),
            ),
        ];
        for i in 0..3 {
            env.push((format!("SOV_API_PORT_{}", i + 1), ports[i].to_string()));
            env.push((format!("SOV_HTTP_PORT_{}", i + 1), ports[3 + i].to_string()));
        }
        let mut model_ports = BTreeMap::new();
        for (i, (service, _)) in AGENTS.iter().enumerate() {
            let suffix = service.trim_start_matches("agent-").to_uppercase();
            env.push((format!("SOV_MODEL_PORT_{suffix}"), ports[6 + i].to_string()));
            model_ports.insert(*service, ports[6 + i]);
        }
        let compose = Compose {
            project,
            compose: session.compose.clone(),
            env,
            api_ports: [ports[0], ports[1], ports[2]],
            http_ports: [ports[3], ports[4], ports[5]],
            model_ports,
            timeline,
        };
        let mut args = vec!["up", "-d"];
        args.extend_from_slice(services);
        compose.run(&args);
        timeline.log(format_args!(
            "compose project {} up ({}): {}",
            compose.project,
            session.image,
            services.join(" ")
        ));
        compose
    }

    /// The compose command of this project with `args`, in an environment where only this
    /// project's SOV_* settings reach the compose file.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.compose[0]);
        cmd.args(&self.compose[1..])
            .args(["-p", &self.project, "-f"])
            .arg(repo_path("deploy/compose.yaml"))
            .args(args);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("SOV_") {
                cmd.env_remove(key);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Runs the compose command of this project; panics with its output if it fails.
    pub fn run(&self, args: &[&str]) -> String {
        let (status, stdout, stderr) = run_bounded(&mut self.command(args), DOCKER_WALL_MAX);
        match status {
            Some(s) if s.success() => stdout,
            _ => panic!(
                "`{} {}` failed ({status:?}):\n{stderr}{stdout}",
                self.compose.join(" "),
                args.join(" ")
            ),
        }
    }

    /// `http://127.0.0.1:<port>` of scheduler `i` (1-based) on the host.
    pub fn endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.api_ports[i - 1])
    }

    /// All three schedulers' endpoints, comma-separated.
    pub fn endpoints(&self) -> String {
        (1..=3)
            .map(|i| self.endpoint(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `/readyz` of scheduler `i` through its published HTTP port.
    pub fn readyz(&self, i: usize) -> Result<(), String> {
        match http_get(self.http_ports[i - 1], "/readyz") {
            Ok((200, _)) => Ok(()),
            Ok((code, body)) => Err(format!("sched-{i} /readyz {code}: {}", body.trim())),
            Err(e) => Err(format!("sched-{i} /readyz unreachable: {e}")),
        }
    }

    /// Waits until the schedulers numbered in `which` all report three voters, one leader
    /// they agree on and a cluster id, and answer `/readyz`; returns the first one's status.
    pub fn wait_formed(&self, which: &[usize]) -> Value {
        let (status, took) = wait_until(
            "the schedulers to agree on three voters and a leader",
            FORM_TIMEOUT,
            || {
                let mut leader = None;
                let mut first = None;
                for &i in which {
                    let s =
                        cluster_status(&self.endpoint(i)).map_err(|e| format!("sched-{i}: {e}"))?;
                    let voters = voter_ids(&s).len();
                    let l = u64_field(&s, "leader_id");
                    if voters != 3 || l == 0 || s["cluster_id"].as_str().unwrap_or("").is_empty() {
                        return Err(format!("sched-{i}: {voters} voters, leader {l}"));
                    }
                    if *leader.get_or_insert(l) != l {
                        return Err(format!("leaders differ: {leader:?} and {l}"));
                    }
                    self.readyz(i)?;
                    first.get_or_insert(s);
                }
                Ok(first.expect("at least one scheduler"))
            },
        );
        self.timeline.log(format_args!(
            "schedulers {which:?} formed: leader {}, term {} ({} ms)",
            status["leader_id"],
            status["term"],
            took.as_millis()
        ));
        status
    }

    /// The ids of `service`'s containers (running or not; one-off `compose run` containers
    /// left out).
    fn containers(&self, service: &str) -> Result<Vec<String>, String> {
        let project = format!("label=com.docker.compose.project={}", self.project);
        let svc = format!("label=com.docker.compose.service={service}");
        let args = [
            "ps",
            "-aq",
            "--filter",
            &project,
            "--filter",
            &svc,
            "--filter",
            "label=com.docker.compose.oneoff=False",
        ];
        Ok(docker(&args)?
            .split_whitespace()
            .map(str::to_owned)
            .collect())
    }

    /// The id of `service`'s container (running or not).
    pub fn container(&self, service: &str) -> String {
        let ids = self.containers(service).unwrap_or_else(|e| panic!("{e}"));
        match ids.as_slice() {
            [id] => id.clone(),
            other => panic!(
                "{} containers for service {service}: {other:?}",
                other.len()
            ),
        }
    }

    /// The full name of one of the project's networks (`api` or `raft`).
    fn network(&self, name: &str) -> String {
        let project = format!("label=com.docker.compose.project={}", self.project);
        let net = format!("label=com.docker.compose.network={name}");
        let out = docker_ok(&[
            "network",
            "ls",
            "--format",
            "{{.Name}}",
            "--filter",
            &project,
            "--filter",
            &net,
        ]);
        let names: Vec<&str> = out.split_whitespace().collect();
        match names.as_slice() {
            [one] => (*one).to_owned(),
            other => panic!("{} networks named {name}: {other:?}", other.len()),
        }
    }

    /// SIGKILL to `service`'s container.
    pub fn kill(&self, service: &str) {
        docker_ok(&["kill", &self.container(service)]);
        self.timeline.log(format_args!("docker kill {service}"));
    }

    /// Whether `service`'s container runs, and since when (Docker's `StartedAt`).
    pub fn running_since(&self, service: &str) -> Option<String> {
        let state = docker_ok(&[
            "inspect",
            "-f",
            "{{.State.Running}} {{.State.StartedAt}}",
            &self.container(service),
        ]);
        match state.trim().split_once(' ') {
            Some(("true", since)) => Some(since.to_owned()),
            _ => None,
        }
    }

    /// `compose stop` (SIGTERM, then SIGKILL after 10 s) of `services`, in parallel; checks
    /// that they stopped.
    pub fn stop(&self, services: &[&str]) {
        let mut args = vec!["stop"];
        args.extend_from_slice(services);
        self.run(&args);
        for service in services {
            assert_eq!(self.running_since(service), None, "{service} still runs");
        }
        self.timeline
            .log(format_args!("compose stop {}", services.join(" ")));
    }

    /// `compose start` of `services`: the same containers and volumes again.
    pub fn start(&self, services: &[&str]) {
        let mut args = vec!["start"];
        args.extend_from_slice(services);
        self.run(&args);
        let since: Vec<String> = services
            .iter()
            .map(|s| format!("{s} since {}", self.running_since(s).unwrap_or("-".into())))
            .collect();
        self.timeline
            .log(format_args!("compose start: {}", since.join(", ")));
    }

    /// Takes `service` off `network` (`api` or `raft`): a partition. Remembers the container's
    /// names on that network, so [`Compose::heal`] brings it back reachable by them.
    pub fn partition(&self, service: &str, network: &str) -> Partition {
        let container = self.container(service);
        let network = self.network(network);
        let networks: Value = serde_json::from_str(&docker_ok(&[
            "inspect",
            "-f",
            "{{json .NetworkSettings.Networks}}",
            &container,
        ]))
        .expect("docker inspect prints JSON");
        // The container's short id is an alias Docker adds by itself on every connect.
        let aliases = networks[&network]["Aliases"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .filter(|alias| !container.starts_with(alias))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        docker_ok(&["network", "disconnect", &network, &container]);
        self.timeline.log(format_args!(
            "PARTITION: {service} disconnected from {network}"
        ));
        Partition {
            service: service.to_owned(),
            network,
            container,
            aliases,
        }
    }

    /// Puts a partitioned container back on its network under the same names.
    pub fn heal(&self, partition: Partition) {
        let mut args = vec!["network", "connect"];
        for alias in &partition.aliases {
            args.extend(["--alias", alias.as_str()]);
        }
        args.extend([partition.network.as_str(), partition.container.as_str()]);
        docker_ok(&args);
        self.timeline.log(format_args!(
            "HEAL: {} reconnected to {} as {}",
            partition.service,
            partition.network,
            partition.aliases.join(", ")
        ));
    }

    /// How many `sov-model-server` processes run in `service`'s container (`docker top`).
    pub fn model_servers(&self, service: &str) -> Result<usize, String> {
        let top = docker(&["top", &self.container(service), "-o", "pid,args"])?;
        Ok(top
            .lines()
            .skip(1)
            .filter(|line| line.contains("sov-model-server"))
            .count())
    }

    /// The last lines of `service`'s log.
    pub fn logs(&self, service: &str) -> String {
        let tail = LOG_TAIL_LINES.to_string();
        let (_, stdout, stderr) = run_bounded(
            Command::new("docker").args(["logs", "--tail", &tail, &self.container(service)]),
            DOCKER_WALL_MAX,
        );
        format!("{stdout}{stderr}")
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for service in SCHEDULERS.iter().chain(AGENTS.iter().map(|(s, _)| s)) {
                if !self.containers(service).unwrap_or_default().is_empty() {
                    eprintln!(
                        "\n----- {service} of {}: last {LOG_TAIL_LINES} log lines -----\n{}",
                        self.project,
                        self.logs(service)
                    );
                }
            }
        }
        // Containers, networks and volumes go, whatever happened to the test.
        let mut down = self.command(&["down", "-v", "--remove-orphans", "-t", "2"]);
        let (status, _, stderr) = run_bounded(&mut down, DOCKER_WALL_MAX);
        if !status.is_some_and(|s| s.success()) {
            eprintln!(
                "cannot remove compose project {} ({status:?}): {stderr}",
                self.project
            );
        }
    }
}
