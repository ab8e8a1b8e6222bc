//! The `sovctl` binary's certificate commands (`ca init`, `ca issue`, `ca show`, `ca token`) and its client
//! credentials (`--tls-dir`, `--as`): the files written and their modes, what is refused and
//! that a refusal writes nothing, and calls over mutual TLS to an in-process server that
//! requires a client certificate from the CA and records who called.
//!
//! Every run is hermetic: no `SOV_*` variable and no default TLS directory from the machine
//! running the tests leaks in.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};

use sov_proto::tls::{TlsFiles, identity_of};
use sov_proto::v1 as pb;
use sov_proto::v1::cluster_service_server::{ClusterService, ClusterServiceServer};
use sov_proto::v1::deployment_service_server::{DeploymentService, DeploymentServiceServer};
use tonic::{Request, Response, Status};

type Answer<T> = Result<Response<T>, Status>;

/// Runs sovctl in `cwd` with only the environment given.
async fn sovctl_in(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_sovctl"));
    command
        .current_dir(cwd)
        .args(args)
        .env_remove("SOV_ENDPOINT")
        .env_remove("SOV_TLS_DIR")
        .env_remove("SOV_AS")
        .env_remove("SOV_TOKEN")
        .env_remove("SOV_TOKEN_FILE")
        // Where the default TLS directory would be: never there unless a test makes it.
        .env("XDG_CONFIG_HOME", cwd.join("no-config"));
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().await.unwrap()
}

async fn sovctl(cwd: &Path, args: &[&str]) -> Output {
    sovctl_in(cwd, args, &[]).await
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// Asserts a run failed with `code` and a one-line error containing every one of `needles`.
fn assert_refused(out: &Output, code: i32, needles: &[&str]) {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    for needle in needles {
        assert!(errors[0].contains(needle), "{needle:?} not in {stderr}");
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A directory with a CA made by `sovctl ca init` in `./sov-ca`.
async fn with_ca() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let out = sovctl(dir.path(), &["ca", "init"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    dir
}

async fn issue(cwd: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["ca", "issue", "-o", "json"];
    all.extend_from_slice(args);
    json(&sovctl(cwd, &all).await)
}

#[tokio::test(flavor = "multi_thread")]
async fn ca_init_makes_a_private_key_and_says_what_next() {
    let dir = tempfile::tempdir().unwrap();
    let out = sovctl(dir.path(), &["ca", "init", "--name", "acme CA"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for needle in [
        "./sov-ca/ca.crt",
        "./sov-ca/ca.key",
        "keep it offline and private",
        "sovctl ca issue --ca ./sov-ca --role scheduler",
        "docs/security.md",
    ] {
        assert!(stdout.contains(needle), "{needle:?} not in {stdout}");
    }
    assert_eq!(mode(&dir.path().join("sov-ca/ca.key")), 0o600);
    let before = std::fs::read(dir.path().join("sov-ca/ca.key")).unwrap();
    // Never a second CA over the first.
    let again = sovctl(dir.path(), &["ca", "init"]).await;
    assert_refused(
        &again,
        2,
        &["./sov-ca already holds a CA", "never overwrites"],
    );
    assert_eq!(
        std::fs::read(dir.path().join("sov-ca/ca.key")).unwrap(),
        before
    );
    // Elsewhere is fine, and needs no cluster even with an endpoint nobody answers.
    let elsewhere = sovctl_in(
        dir.path(),
        &["ca", "init", "--dir", "second", "-o", "json"],
        &[("SOV_ENDPOINT", "unreachable.invalid:1")],
    )
    .await;
    assert_eq!(json(&elsewhere)["ca_key"], "second/ca.key");
}

#[tokio::test(flavor = "multi_thread")]
async fn ca_issue_writes_each_role_and_ca_show_reads_it_back() {
    let dir = with_ca().await;
    let cwd = dir.path();
    let cases: [(&str, &[&str], &str); 5] = [
        ("operator", &[], "spiffe://sov/operator/ops-1"),
        (
            "deployer",
            &["--namespace", "team-a-"],
            "spiffe://sov/deployer/ops-1",
        ),
        ("auditor", &[], "spiffe://sov/auditor/ops-1"),
        (
            "agent",
            &["--country", "FR", "--operator-hq", "FR", "--site", "par-2"],
            "spiffe://sov/node/ops-1",
        ),
        (
            "scheduler",
            &["--dns", "sched-1.internal"],
            "spiffe://sov/scheduler/ops-1",
        ),
    ];
    for (role, extra, uri) in cases {
        let out_dir = format!("out-{role}");
        let mut args = vec!["--role", role, "--name", "ops-1", "--out", &out_dir];
        args.extend_from_slice(extra);
        let issued = issue(cwd, &args).await;
        let out = cwd.join(&out_dir);
        assert_eq!(issued["role"], role);
        assert_eq!(issued["uris"][0], uri);
        assert_eq!(
            issued["written"],
            serde_json::json!([
                format!("{out_dir}/ops-1.crt"),
                format!("{out_dir}/ops-1.key"),
                format!("{out_dir}/ca.crt")
            ])
        );
        assert_eq!(mode(&out.join("ops-1.key")), 0o600, "{role}");
        assert_eq!(mode(&out.join("ops-1.crt")), 0o644, "{role}");
        let fingerprint = issued["fingerprint"].as_str().unwrap();
        assert_eq!(fingerprint.len(), 32);
        assert_eq!(issued["opaque_id"], format!("{role}:{fingerprint}"));
        assert_eq!(issued["expired"], false);
        // The files are what a client loads, and name the identity.
        let material = TlsFiles::in_dir(&out, "ops-1").load().unwrap();
        let (identity, _) = material.own_identity().unwrap();
        assert_eq!(identity.role.as_str(), role);

        let cert = format!("{out_dir}/ops-1.crt");
        let shown = json(&sovctl(cwd, &["ca", "show", &cert, "-o", "json"]).await);
        assert_eq!(shown["fingerprint"], fingerprint);
        assert_eq!(shown["uris"], issued["uris"]);
        assert_eq!(shown["not_after"], issued["not_after"]);
        assert_eq!(shown["expired"], false);
        match role {
            "agent" => assert_eq!(
                shown["location"],
                serde_json::json!({"country": "FR", "operator_hq": "FR", "site": "par-2"})
            ),
            "deployer" => assert_eq!(shown["namespace"], "team-a-"),
            "scheduler" => {
                assert_eq!(
                    shown["dns"],
                    serde_json::json!(["sov-scheduler", "sched-1.internal"])
                )
            }
            _ => {}
        }
    }
    // The table says the same for people, with the expiry.
    let shown = sovctl(cwd, &["ca", "show", "out-agent/ops-1.crt"]).await;
    let stdout = text(&shown.stdout);
    assert!(stdout.contains("country=FR"), "{stdout}");
    assert!(stdout.contains("(valid)"), "{stdout}");
    // A second identity goes into the same directory beside the first, sharing ca.crt.
    let second = issue(
        cwd,
        &[
            "--role",
            "auditor",
            "--name",
            "rev",
            "--out",
            "out-operator",
        ],
    )
    .await;
    assert_eq!(
        second["written"],
        serde_json::json!(["out-operator/rev.crt", "out-operator/rev.key"])
    );
    // The text output explains the opaque id.
    let out = sovctl(
        cwd,
        &[
            "ca", "issue", "--role", "deployer", "--name", "d2", "--out", "o",
        ],
    )
    .await;
    let stdout = text(&out.stdout);
    assert!(stdout.contains("never the name"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("Opaque id:") && l.contains(" deployer:")),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ca_issue_never_overwrites() {
    let dir = with_ca().await;
    let cwd = dir.path();
    issue(cwd, &["--role", "operator", "--name", "ops", "--out", "o"]).await;
    let key = std::fs::read(cwd.join("o/ops.key")).unwrap();
    let again = sovctl(
        cwd,
        &[
            "ca", "issue", "--role", "deployer", "--name", "ops", "--out", "o",
        ],
    )
    .await;
    assert_refused(&again, 2, &["o/ops.crt already exists", "never overwrites"]);
    assert_eq!(std::fs::read(cwd.join("o/ops.key")).unwrap(), key);
    // A directory holding another CA's certificate is refused before anything is written.
    let other = sovctl(cwd, &["ca", "init", "--dir", "other-ca"]).await;
    assert!(other.status.success());
    let mixed = sovctl(
        cwd,
        &[
            "ca", "issue", "--ca", "other-ca", "--role", "auditor", "--name", "rev", "--out", "o",
        ],
    )
    .await;
    assert_refused(&mixed, 2, &["o/ca.crt holds another CA's certificate"]);
    assert!(!cwd.join("o/rev.key").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_refused_with_a_reason_and_writes_nothing() {
    let dir = with_ca().await;
    let cwd = dir.path();
    let cases: [(&[&str], &str); 9] = [
        (
            &["--role", "root", "--name", "x"],
            "invalid value 'root' for '--role <ROLE>'",
        ),
        (
            &["--role", "operator", "--name", "../x"],
            "--name \"../x\": the name \"../x\" may only use",
        ),
        (
            &["--role", "operator", "--name", ".x"],
            "not start with '.'",
        ),
        (
            &["--role", "operator", "--name", "x", "--country", "FR"],
            "--country \"FR\": location claims are for agents",
        ),
        (
            &["--role", "auditor", "--name", "x", "--namespace", "team-"],
            "--namespace \"team-\": a namespace scope is for deployers",
        ),
        (
            &["--role", "agent", "--name", "x", "--dns", "x.internal"],
            "DNS names are for scheduler certificates",
        ),
        (
            &["--role", "agent", "--name", "sim-*", "--country", "FR"],
            "--country on the wildcard agent \"sim-*\"",
        ),
        (
            &["--role", "operator", "--name", "x", "--ca", "nowhere"],
            "sovctl ca init --dir nowhere",
        ),
        (
            &[
                "--role",
                "operator",
                "--name",
                "x",
                "--days",
                "1",
                "--not-after",
                "now",
            ],
            "cannot be used with",
        ),
    ];
    for (args, needle) in cases {
        let mut all = vec!["ca", "issue", "--out", "out"];
        all.extend_from_slice(args);
        let out = sovctl(cwd, &all).await;
        assert_refused(&out, 2, &[needle]);
        assert!(!cwd.join("out").exists(), "{args:?} wrote something");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_certificate_can_be_made_and_is_shown_as_such() {
    let dir = with_ca().await;
    let cwd = dir.path();
    let out = sovctl(
        cwd,
        &[
            "ca",
            "issue",
            "--role",
            "operator",
            "--name",
            "old",
            "--not-after",
            "2024-01-01T00:00:00Z",
            "--out",
            "o",
            "-o",
            "json",
        ],
    )
    .await;
    assert!(
        text(&out.stderr).starts_with("warning: --not-after 2024-01-01T00:00:00Z is in the past"),
        "{}",
        text(&out.stderr)
    );
    let issued = json(&out);
    assert_eq!(
        (issued["expired"].clone(), issued["not_after"].clone()),
        (
            serde_json::json!(true),
            serde_json::json!("2024-01-01T00:00:00Z")
        )
    );
    let shown = sovctl(cwd, &["ca", "show", "o/old.crt"]).await;
    assert!(
        text(&shown.stdout).contains("2024-01-01T00:00:00Z (EXPIRED)"),
        "{}",
        text(&shown.stdout)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wildcard_agent_is_told_its_nodes_stay_self_reported() {
    let dir = with_ca().await;
    let cwd = dir.path();
    let out = sovctl(
        cwd,
        &[
            "ca", "issue", "--role", "agent", "--name", "sim-*", "--out", "f",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("self-reported"),
        "{}",
        text(&out.stderr)
    );
    assert!(cwd.join("f/sim-all.crt").exists());
    let shown = sovctl(cwd, &["ca", "show", "f/sim-all.crt"]).await;
    assert!(
        text(&shown.stdout).contains("self-reported"),
        "{}",
        text(&shown.stdout)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ca_show_refuses_what_is_no_certificate() {
    let dir = with_ca().await;
    let out = sovctl(dir.path(), &["ca", "show", "sov-ca/ca.key"]).await;
    assert_refused(&out, 2, &["not a CERTIFICATE"]);
    let out = sovctl(dir.path(), &["ca", "show", "missing.crt"]).await;
    assert_refused(&out, 2, &["missing.crt: cannot read it"]);
}

// ------------------------------------------------------------------------------------------------
// Calls over mutual TLS
// ------------------------------------------------------------------------------------------------

/// A scheduler stand-in that requires a client certificate and records who made each call:
/// (method, role, name).
#[derive(Clone, Default)]
struct Fake(Arc<Mutex<Vec<(String, String, String)>>>);

impl Fake {
    fn record<T>(&self, method: &str, req: &Request<T>) {
        let certs = req.peer_certs().expect("TLS requires a client certificate");
        let identity = identity_of(&certs[0]).unwrap();
        self.0
            .lock()
            .unwrap()
            .push((method.to_owned(), identity.role.to_string(), identity.name));
    }

    fn calls(&self) -> Vec<(String, String, String)> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

#[tonic::async_trait]
impl ClusterService for Fake {
    type SnapshotStream = tokio_stream::Empty<Result<pb::ClusterSnapshotChunk, Status>>;

    async fn status(&self, req: Request<pb::ClusterStatusRequest>) -> Answer<pb::ClusterStatus> {
        self.record("status", &req);
        Ok(Response::new(pb::ClusterStatus {
            node_id: 1,
            role: "leader".into(),
            leader_id: 1,
            ..Default::default()
        }))
    }
    async fn members(&self, _: Request<pb::MembersRequest>) -> Answer<pb::MembersResponse> {
        Err(Status::unimplemented("fake"))
    }
    async fn join(&self, _: Request<pb::JoinRequest>) -> Answer<pb::MembersResponse> {
        Err(Status::unimplemented("fake"))
    }
    async fn remove(&self, req: Request<pb::RemoveRequest>) -> Answer<pb::MembersResponse> {
        self.record("remove", &req);
        Ok(Response::new(pb::MembersResponse::default()))
    }
    async fn snapshot(
        &self,
        _: Request<pb::ClusterSnapshotRequest>,
    ) -> Answer<Self::SnapshotStream> {
        Err(Status::unimplemented("fake"))
    }
}

#[tonic::async_trait]
impl DeploymentService for Fake {
    async fn apply(
        &self,
        _: Request<pb::ApplyDeploymentRequest>,
    ) -> Answer<pb::ApplyDeploymentResponse> {
        Err(Status::unimplemented("fake"))
    }
    async fn get(&self, _: Request<pb::GetDeploymentRequest>) -> Answer<pb::Deployment> {
        Err(Status::unimplemented("fake"))
    }
    async fn list(
        &self,
        _: Request<pb::ListDeploymentsRequest>,
    ) -> Answer<pb::ListDeploymentsResponse> {
        Err(Status::unimplemented("fake"))
    }
    async fn delete(
        &self,
        req: Request<pb::DeleteDeploymentRequest>,
    ) -> Answer<pb::DeleteDeploymentResponse> {
        self.record("delete", &req);
        Ok(Response::new(pb::DeleteDeploymentResponse::default()))
    }
    async fn plan(&self, _: Request<pb::PlanDeploymentRequest>) -> Answer<pb::DeploymentPlan> {
        Err(Status::unimplemented("fake"))
    }
    async fn explain(&self, _: Request<pb::ExplainRequest>) -> Answer<pb::Explanation> {
        Err(Status::unimplemented("fake"))
    }
}

/// Serves the fake over mutual TLS with the scheduler certificate in `dir`/`sched`.
async fn serve_tls(dir: &Path) -> (SocketAddr, Fake) {
    let material = TlsFiles::in_dir(&dir.join("sched"), "sched-1")
        .load()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = Fake::default();
    tokio::spawn(
        tonic::transport::Server::builder()
            .tls_config(material.server())
            .unwrap()
            .add_service(ClusterServiceServer::new(fake.clone()))
            .add_service(DeploymentServiceServer::new(fake.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (addr, fake)
}

/// A CA, a scheduler certificate in `sched/`, and a client directory `creds/` holding the
/// identities named (role, name).
async fn cluster_pki(identities: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = with_ca().await;
    let cwd = dir.path();
    issue(
        cwd,
        &["--role", "scheduler", "--name", "sched-1", "--out", "sched"],
    )
    .await;
    for (role, name) in identities {
        issue(cwd, &["--role", role, "--name", name, "--out", "creds"]).await;
    }
    dir
}

fn creds(dir: &Path) -> String {
    dir.join("creds").to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn sovctl_calls_over_mutual_tls_with_the_identity_the_command_needs() {
    let dir = cluster_pki(&[("deployer", "dev"), ("operator", "ops"), ("auditor", "rev")]).await;
    let cwd = dir.path();
    let (addr, fake) = serve_tls(cwd).await;
    let endpoint = addr.to_string();
    let creds = creds(cwd);
    let run = |args: Vec<&'static str>, env: Vec<(&'static str, String)>| {
        let endpoint = endpoint.clone();
        let cwd = cwd.to_path_buf();
        async move {
            let mut all: Vec<&str> = args;
            all.extend(["--endpoint", &endpoint, "--timeout", "5"]);
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let out = sovctl_in(&cwd, &all, &env).await;
            assert!(out.status.success(), "{all:?}: {}", text(&out.stderr));
            out
        }
    };
    let call = |role: &str, name: &str, method: &str| {
        vec![(method.to_owned(), role.to_owned(), name.to_owned())]
    };
    let with_dir = vec![("SOV_TLS_DIR", creds.clone())];
    run(vec!["cluster", "status"], with_dir.clone()).await;
    assert_eq!(fake.calls(), call("operator", "ops", "status"));
    run(vec!["deploy", "delete", "x"], with_dir.clone()).await;
    assert_eq!(fake.calls(), call("deployer", "dev", "delete"));
    run(vec!["cluster", "remove", "4"], with_dir.clone()).await;
    assert_eq!(fake.calls(), call("operator", "ops", "remove"));
    // --as (or SOV_AS) overrides the choice; the server has the last word on what it allows.
    run(
        vec!["cluster", "status", "--as", "dev", "--tls-dir", "creds"],
        vec![],
    )
    .await;
    assert_eq!(fake.calls(), call("deployer", "dev", "status"));
    let mut with_as = with_dir.clone();
    with_as.push(("SOV_AS", "rev".into()));
    run(vec!["cluster", "status"], with_as).await;
    assert_eq!(fake.calls(), call("auditor", "rev", "status"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_default_directory_is_used_and_reads_prefer_the_auditor_to_the_deployer() {
    let dir = cluster_pki(&[("deployer", "dev"), ("auditor", "rev")]).await;
    let cwd = dir.path();
    let (addr, fake) = serve_tls(cwd).await;
    // $XDG_CONFIG_HOME/sov/tls, found without any flag.
    let config = cwd.join("config");
    std::fs::create_dir_all(config.join("sov")).unwrap();
    std::fs::rename(cwd.join("creds"), config.join("sov/tls")).unwrap();
    let out = sovctl_in(
        cwd,
        &[
            "cluster",
            "status",
            "--endpoint",
            &format!("https://{addr}"),
        ],
        &[("XDG_CONFIG_HOME", config.to_str().unwrap())],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        fake.calls(),
        [("status".to_owned(), "auditor".to_owned(), "rev".to_owned())]
    );
    // No operator there: the first identity calls, and a note says so.
    let out = sovctl_in(
        cwd,
        &["cluster", "remove", "4", "--endpoint", &addr.to_string()],
        &[("XDG_CONFIG_HOME", config.to_str().unwrap())],
    )
    .await;
    assert!(
        text(&out.stderr).contains("note: no operator certificate in"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(fake.calls()[0].1, "deployer");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_certificate_the_error_says_one_is_missing() {
    let dir = cluster_pki(&[("operator", "ops")]).await;
    let cwd = dir.path();
    let (addr, fake) = serve_tls(cwd).await;
    let out = sovctl(
        cwd,
        &[
            "cluster",
            "status",
            "--endpoint",
            &addr.to_string(),
            "--timeout",
            "5",
        ],
    )
    .await;
    assert_refused(
        &out,
        1,
        &[
            &format!("the connection to http://{addr} failed"),
            "no client certificate configured (--tls-dir or SOV_TLS_DIR; see docs/security.md)",
        ],
    );
    assert!(fake.calls().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_handshake_says_what_to_check_on_one_line() {
    let dir = cluster_pki(&[("operator", "ops")]).await;
    let cwd = dir.path();
    let (addr, fake) = serve_tls(cwd).await;
    let endpoint = addr.to_string();
    // Expired: the server refuses it (and sovctl warns first).
    let out = sovctl(
        cwd,
        &[
            "ca",
            "issue",
            "--role",
            "operator",
            "--name",
            "old",
            "--not-after",
            "2024-01-01T00:00:00Z",
            "--out",
            "old",
        ],
    )
    .await;
    assert!(out.status.success());
    let out = sovctl(
        cwd,
        &[
            "cluster",
            "status",
            "--tls-dir",
            "old",
            "--endpoint",
            &endpoint,
        ],
    )
    .await;
    assert_refused(
        &out,
        1,
        &[
            &format!("TLS handshake with https://{addr} failed"),
            "CertificateExpired",
            "check that old/ca.crt is this cluster's CA",
            "old/old.crt has not expired",
        ],
    );
    assert!(
        text(&out.stderr).starts_with("warning: old/old.crt expired at 2024-01-01T00:00:00Z"),
        "{}",
        text(&out.stderr)
    );
    // Another cluster's credentials: neither side trusts the other.
    let out = sovctl(cwd, &["ca", "init", "--dir", "other-ca"]).await;
    assert!(out.status.success());
    let out = sovctl(
        cwd,
        &[
            "ca", "issue", "--ca", "other-ca", "--role", "operator", "--name", "ops", "--out",
            "other",
        ],
    )
    .await;
    assert!(out.status.success());
    let out = sovctl(
        cwd,
        &[
            "cluster",
            "status",
            "--tls-dir",
            "other",
            "--endpoint",
            &endpoint,
        ],
    )
    .await;
    assert_refused(
        &out,
        1,
        &[
            "TLS handshake with",
            "invalid peer certificate",
            "scheduler of this cluster",
        ],
    );
    assert!(fake.calls().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_that_cannot_be_used_are_bad_input() {
    let dir = cluster_pki(&[("operator", "ops"), ("auditor", "rev")]).await;
    let cwd = dir.path();
    let creds = creds(cwd);
    let status = |extra: Vec<String>| {
        let cwd: PathBuf = cwd.to_path_buf();
        async move {
            let mut all = vec!["cluster".to_owned(), "status".to_owned()];
            all.extend(extra);
            all.extend(["--endpoint".to_owned(), "127.0.0.1:1".to_owned()]);
            let args: Vec<&str> = all.iter().map(String::as_str).collect();
            sovctl(&cwd, &args).await
        }
    };
    let out = status(vec![
        "--tls-dir".into(),
        creds.clone(),
        "--as".into(),
        "bob".into(),
    ])
    .await;
    assert_refused(
        &out,
        2,
        &["--as bob: no bob.crt and bob.key in", "it holds: ops, rev"],
    );
    let out = status(vec!["--tls-dir".into(), "nowhere".into()]).await;
    assert_refused(&out, 2, &["--tls-dir nowhere: no such directory"]);
    let out = status(vec!["--as".into(), "ops".into()]).await;
    assert_refused(&out, 2, &["--as needs a TLS directory"]);
    std::fs::create_dir(cwd.join("empty")).unwrap();
    let out = status(vec!["--tls-dir".into(), "empty".into()]).await;
    assert_refused(&out, 2, &["empty holds no identity"]);
    // A key that is not the certificate's.
    std::fs::copy(cwd.join("creds/rev.key"), cwd.join("mixed.key")).unwrap();
    std::fs::create_dir(cwd.join("mixed")).unwrap();
    for file in ["ca.crt", "ops.crt"] {
        std::fs::copy(cwd.join("creds").join(file), cwd.join("mixed").join(file)).unwrap();
    }
    std::fs::rename(cwd.join("mixed.key"), cwd.join("mixed/ops.key")).unwrap();
    let out = status(vec!["--tls-dir".into(), "mixed".into()]).await;
    assert_refused(
        &out,
        2,
        &["mixed/ops.crt and mixed/ops.key cannot be used together"],
    );
}

#[tokio::test]
async fn a_token_is_signed_by_the_ca_for_people_only_and_kept_private() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let out = sovctl(cwd, &["ca", "init", "--dir", "ca"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // To standard output alone, for `SOV_TOKEN=$(...)`; what it is on standard error.
    let out = sovctl(
        cwd,
        &[
            "ca",
            "token",
            "--ca",
            "ca",
            "--role",
            "deployer",
            "--name",
            "ml-1",
            "--namespace",
            "team-a-",
            "--ttl",
            "8h",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let token = text(&out.stdout);
    assert_eq!(token.lines().count(), 1, "{token}");
    let ca_pem = std::fs::read_to_string(cwd.join("ca/ca.crt")).unwrap();
    let verified = sov_proto::token::Verifier::from_ca_pem(&ca_pem)
        .unwrap()
        .verify(token.trim(), std::time::SystemTime::now())
        .unwrap();
    assert_eq!(verified.identity.namespace.as_deref(), Some("team-a-"));
    assert!(
        text(&out.stderr).contains("Opaque id:"),
        "{}",
        text(&out.stderr)
    );
    // --out: a new file, mode 0600, never overwritten.
    let args = [
        "ca",
        "token",
        "--ca",
        "ca",
        "--role",
        "auditor",
        "--name",
        "rev",
        "--out",
        "rev.token",
    ];
    let out = sovctl(cwd, &args).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(mode(&cwd.join("rev.token")), 0o600);
    assert_refused(
        &sovctl(cwd, &args).await,
        2,
        &["rev.token", "already exists"],
    );
    // Machines get certificates; lives are short.
    let out = sovctl(
        cwd,
        &[
            "ca", "token", "--ca", "ca", "--role", "agent", "--name", "n-1",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert_refused(
        &sovctl(
            cwd,
            &[
                "ca", "token", "--ca", "ca", "--role", "operator", "--name", "o", "--ttl", "8d",
            ],
        )
        .await,
        2,
        &["--ttl", "168h"],
    );
}

#[tokio::test]
async fn a_token_needs_the_cluster_ca_and_must_look_like_one() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    std::fs::write(cwd.join("bad.token"), "hello\n").unwrap();
    assert_refused(
        &sovctl(cwd, &["--token-file", "bad.token", "deploy", "list"]).await,
        2,
        &["--token-file bad.token", "not a sov bearer token"],
    );
    let out = sovctl_in(
        cwd,
        &["deploy", "list"],
        &[
            ("SOV_TOKEN", "sov1.e30.AAAA"),
            ("SOV_TLS_DIR", cwd.to_str().unwrap()),
        ],
    )
    .await;
    assert_refused(&out, 2, &["needs the cluster CA's certificate", "ca.crt"]);
    let out = sovctl_in(
        cwd,
        &["--as", "alice", "deploy", "list"],
        &[("SOV_TOKEN", "sov1.e30.AAAA")],
    )
    .await;
    assert_refused(&out, 2, &["--as", "bearer token"]);
}
