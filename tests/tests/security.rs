//! Mutual TLS, roles and attested location end to end (issue #7), against real schedulers:
//!
//! - a client with no certificate, with one from another CA, or with an expired one is refused,
//!   on the API port and on the Raft peer port (where only scheduler certificates are let in);
//! - a deployer cannot change policy, an auditor cannot deploy, a deployer scoped to a
//!   namespace cannot touch other deployments; every denial names the missing permission and
//!   is counted in `/metrics`;
//! - an agent cannot act for another node, and an agent reporting a country its certificate
//!   contradicts is refused and the refusal is in the history; one whose certificate vouches
//!   for its facts is `operator-certificate` trusted, and trust is kept per fact (a fact the
//!   certificate does not name stays `self-reported`, and so does the node as a whole);
//! - history records who activated a policy as `role:fingerprint`;
//! - where the cluster accepts bearer tokens, a person's token signed by the cluster CA stands
//!   in for a certificate (same roles, recorded as `role:fingerprint`), and a forged one, another
//!   CA's or none at all is refused; where it does not, a token alone gets nowhere.

use std::path::Path;

use serde_json::Value;
use sov_e2e::pki::pki;
use sov_e2e::{
    Cluster, Timeline, bin, history_events, http_get, repo_path, run_bounded, sovctl, sovctl_with,
};
use sov_proto::identity::{Identity, Role};
use sov_proto::tls::{Ca, valid_for_days};
use sov_proto::v1 as pb;

/// A sovctl credentials directory holding one identity issued by `ca`.
fn credentials(
    ca: &Ca,
    dir: &Path,
    role: Role,
    not_after: std::time::SystemTime,
) -> std::path::PathBuf {
    ca.issue(
        &Identity::new(role, role.as_str()).unwrap(),
        not_after,
        &[],
        dir,
    )
    .unwrap();
    dir.to_path_buf()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn registration(name: &str, country: &str) -> pb::RegisterNodeRequest {
    pb::RegisterNodeRequest {
        name: name.into(),
        facts: Some(pb::LocationFacts {
            country: country.into(),
            site: "s-1".into(),
            location_trust: "self-reported".into(),
            ..Default::default()
        }),
        inventory: Some(pb::Inventory {
            cpu_millis: 4000,
            memory_mib: 4096,
            ..Default::default()
        }),
    }
}

#[test]
fn certificates_roles_and_attested_location_are_enforced() {
    let tl = Timeline::new();
    let mut cluster = Cluster::start(3, tl);
    let endpoints = cluster.endpoints();
    let endpoint = endpoints.split(',').next().unwrap().to_string();
    let dir = cluster.scratch();
    let policies = repo_path("deploy/policies");
    let policies = policies.to_str().unwrap();

    // --- Who may connect at all -------------------------------------------------------------
    // sovctl with no credentials anywhere tries plaintext and is told why it failed.
    let empty = dir.join("empty-home");
    std::fs::create_dir_all(&empty).unwrap();
    let (status, _, stderr) = run_bounded(
        std::process::Command::new(bin("sovctl"))
            .args([
                "--endpoint",
                &endpoint,
                "--timeout",
                "3",
                "cluster",
                "status",
            ])
            .env_remove("SOV_TLS_DIR")
            .env_remove("SOV_AS")
            .env("HOME", &empty)
            .env("XDG_CONFIG_HOME", &empty),
        std::time::Duration::from_secs(30),
    );
    assert!(
        !status.unwrap().success(),
        "a client without a certificate was served"
    );
    assert!(stderr.contains("no client certificate"), "{stderr}");
    // A TLS client that trusts the cluster CA but presents no certificate of its own.
    let rt = runtime();
    let anonymous = rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(endpoint.clone())
            .unwrap()
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(
                        std::fs::read_to_string(pki().ca_cert()).unwrap(),
                    ))
                    .domain_name(sov_proto::tls::SCHEDULER_SERVER_NAME),
            )
            .unwrap()
            .connect()
            .await;
        match channel {
            Err(e) => Err(e.to_string()),
            Ok(c) => pb::cluster_service_client::ClusterServiceClient::new(c)
                .status(pb::ClusterStatusRequest {})
                .await
                .map(|_| ())
                .map_err(|s| s.to_string()),
        }
    });
    assert!(
        anonymous.is_err(),
        "a TLS client without a certificate was served"
    );
    let other_ca = Ca::init(&dir.join("other-ca"), "another cluster").unwrap();
    let foreign = credentials(
        &other_ca,
        &dir.join("foreign"),
        Role::Operator,
        valid_for_days(1),
    );
    let out = sovctl_with(
        &foreign,
        &endpoint,
        &["--timeout", "3", "cluster", "status"],
    );
    assert!(!out.success(), "another CA's certificate was accepted");
    assert!(out.stderr.contains("TLS handshake"), "{}", out.stderr);
    let expired = credentials(
        pki().ca(),
        &dir.join("expired"),
        Role::Operator,
        std::time::SystemTime::now() - std::time::Duration::from_secs(3600),
    );
    let out = sovctl_with(
        &expired,
        &endpoint,
        &["--timeout", "3", "cluster", "status"],
    );
    assert!(!out.success(), "an expired certificate was accepted");
    tl.log(format_args!(
        "refused: no certificate, another CA's, an expired one ({})",
        out.stderr.trim()
    ));

    // The Raft port lets in scheduler certificates of this CA only.
    let raft = format!("https://{}", cluster.node(1).raft_addr());
    let operator = sov_proto::tls::TlsFiles::in_dir(&pki().client_dir(), "operator");
    let status = rt.block_on(async {
        let channel = pki().channel_with(&raft, &operator).await;
        pb::raft_peer_client::RaftPeerClient::new(channel)
            .vote(pb::RaftPayload::default())
            .await
            .unwrap_err()
    });
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("raft.peer"),
        "{}",
        status.message()
    );
    let foreign_scheduler = other_ca
        .issue(
            &Identity::new(Role::Scheduler, "intruder").unwrap(),
            valid_for_days(1),
            &[],
            &dir.join("intruder"),
        )
        .unwrap()
        .files;
    let connected = rt.block_on(async {
        let material = foreign_scheduler.load().unwrap();
        let channel = tonic::transport::Endpoint::from_shared(raft.clone())
            .unwrap()
            .tls_config(material.client())
            .unwrap()
            .connect()
            .await;
        match channel {
            Err(e) => Err(e.to_string()),
            Ok(c) => pb::raft_peer_client::RaftPeerClient::new(c)
                .vote(pb::RaftPayload::default())
                .await
                .map(|_| ())
                .map_err(|s| s.to_string()),
        }
    });
    assert!(
        connected.is_err(),
        "another CA's scheduler reached the Raft port"
    );
    tl.log("Raft port: an operator is denied raft.peer; another CA's scheduler cannot connect");

    // --- Roles -------------------------------------------------------------------------------
    let out = sovctl(
        &endpoints,
        &["--as", "deployer", "policy", "apply", policies],
    );
    assert!(!out.success(), "a deployer changed policy");
    assert!(
        out.stderr.contains("policy.apply") && out.stderr.contains("deployer"),
        "{}",
        out.stderr
    );
    sovctl(
        &endpoints,
        &["--as", "operator", "policy", "apply", policies],
    )
    .assert_ok();
    let spec = sov_e2e::write_spec(&dir, "team-a-chat", "lab/tiny", 1);
    let spec = spec.to_str().unwrap();
    let out = sovctl(
        &endpoints,
        &["--as", "auditor", "deploy", "apply", "-f", spec],
    );
    assert!(!out.success(), "an auditor deployed");
    assert!(out.stderr.contains("deploy"), "{}", out.stderr);
    sovctl(
        &endpoints,
        &["--as", "deployer", "deploy", "apply", "-f", spec],
    )
    .assert_ok();
    // A deployer scoped to "team-b-" may not touch team-a's deployment.
    let scoped = dir.join("team-b");
    pki()
        .ca()
        .issue(
            &Identity::new(Role::Deployer, "team-b")
                .unwrap()
                .with_namespace("team-b-")
                .unwrap(),
            valid_for_days(1),
            &[],
            &scoped,
        )
        .unwrap();
    let out = sovctl_with(&scoped, &endpoints, &["deploy", "delete", "team-a-chat"]);
    assert!(
        !out.success(),
        "a scoped deployer deleted another team's deployment"
    );
    assert!(out.stderr.contains("namespace"), "{}", out.stderr);
    // Reads are for every person's role.
    sovctl(&endpoints, &["--as", "auditor", "deploy", "list"]).assert_ok();
    tl.log("roles: deployer cannot apply policy, auditor cannot deploy, namespaces hold");

    // --- Agents: their own node only, and the location their certificate vouches for -------
    let fr = pki().agent("fr-secure-1", &[("country", "FR"), ("site", "s-1")]);
    // This one's certificate vouches for its country only; it reports a site too.
    let de = pki().agent("de-partly-1", &[("country", "DE")]);
    rt.block_on(async {
        let mut agent = pb::agent_service_client::AgentServiceClient::new(
            pki().channel_with(&endpoint, &de).await,
        );
        agent.register(registration("de-partly-1", "DE")).await
    })
    .expect("an agent whose certificate vouches for some of its facts registers");
    let (trusted, other_node, lied) = rt.block_on(async {
        let mut agent = pb::agent_service_client::AgentServiceClient::new(
            pki().channel_with(&endpoint, &fr).await,
        );
        let trusted = agent.register(registration("fr-secure-1", "FR")).await;
        let other_node = agent
            .heartbeat(pb::HeartbeatRequest {
                name: "somebody-else".into(),
                ..Default::default()
            })
            .await;
        let lied = agent.register(registration("fr-secure-1", "DE")).await;
        (trusted, other_node, lied)
    });
    trusted.expect("an agent whose certificate vouches for its facts registers");
    let other_node = other_node.unwrap_err();
    assert_eq!(
        other_node.code(),
        tonic::Code::PermissionDenied,
        "{other_node:?}"
    );
    let lied = lied.unwrap_err();
    assert_eq!(lied.code(), tonic::Code::PermissionDenied, "{lied:?}");
    assert!(
        lied.message().contains("country") && lied.message().contains("\"DE\""),
        "{}",
        lied.message()
    );
    let node = sovctl(&endpoints, &["-o", "json", "node", "show", "fr-secure-1"]).json();
    assert_eq!(
        node["facts"]["location_trust"], "operator-certificate",
        "{node}"
    );
    assert_eq!(node["facts"]["country"], "FR", "{node}");
    assert_eq!(
        node["facts"]["fact_trust"],
        serde_json::json!({"country": "operator-certificate", "site": "operator-certificate"}),
        "{node}"
    );
    // Trust is kept per fact: the vouched country, the self-reported site, and the node as a
    // whole at the lesser of the two.
    let partly = sovctl(&endpoints, &["-o", "json", "node", "show", "de-partly-1"]).json();
    assert_eq!(
        partly["facts"]["fact_trust"],
        serde_json::json!({"country": "operator-certificate", "site": "self-reported"}),
        "{partly}"
    );
    assert_eq!(
        partly["facts"]["location_trust"], "self-reported",
        "{partly}"
    );
    let shown = sovctl(&endpoints, &["node", "show", "de-partly-1"]);
    shown.assert_ok();
    assert!(
        shown.stdout.contains("DE (operator-certificate)")
            && shown.stdout.contains("s-1 (self-reported)"),
        "{}",
        shown.stdout
    );
    let events = history_events(&endpoints, &["--kind", "node.registration-refused"]);
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(events[0].to_string().contains("fr-secure-1"), "{events:?}");
    tl.log("agent: trusted by its certificate, denied another node, a false country refused and recorded");

    // --- Who did it, and what was denied ------------------------------------------------------
    let activated = Value::Array(history_events(&endpoints, &["--kind", "policy.activated"]));
    assert!(
        activated.to_string().contains("operator:"),
        "the policy's author is not the operator's certificate: {activated}"
    );
    let (_, metrics) = http_get(cluster.node(1).http_port, "/metrics").unwrap();
    let denied: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("sov_denied_calls_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(denied >= 1, "no denial counted:\n{metrics}");
    tl.log(format_args!(
        "history names the policy's author by certificate; {denied} denials counted"
    ));
}

/// A token of `ca` for `role` `name`, valid ten minutes, written to `dir/NAME.token`.
fn token_file(
    ca: &Ca,
    role: Role,
    name: &str,
    dir: &Path,
) -> (std::path::PathBuf, sov_proto::token::Issued) {
    let issued = sov_proto::token::issue(
        ca,
        &Identity::new(role, name).unwrap(),
        std::time::Duration::from_secs(600),
    )
    .unwrap();
    let file = dir.join(format!("{name}.token"));
    std::fs::write(&file, &issued.token).unwrap();
    (file, issued)
}

/// A directory holding only the cluster CA's certificate: what a token holder needs.
fn ca_only_dir(root: &Path) -> std::path::PathBuf {
    let dir = root.join("ca-only");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ca.crt"), pki().ca().cert_pem()).unwrap();
    dir
}

#[test]
fn bearer_tokens_stand_in_for_certificates_where_the_cluster_accepts_them() {
    let tl = Timeline::new();
    let cluster = Cluster::start_with(1, tl, &["--bearer-tokens"]);
    let endpoints = cluster.endpoints();
    let scratch = cluster.scratch();
    let ca_only = ca_only_dir(&scratch);
    let with_token = |file: &Path, args: &[&str]| {
        let mut all = vec!["--token-file", file.to_str().unwrap()];
        all.extend(args);
        sovctl_with(&ca_only, &endpoints, &all)
    };

    // An operator's token, made with sovctl against the test CA's directory.
    let operator_token = scratch.join("operator.token");
    let made = run_bounded(
        std::process::Command::new(bin("sovctl")).args([
            "-o",
            "json",
            "ca",
            "token",
            "--role",
            "operator",
            "--name",
            "ops-1",
            "--ttl",
            "1h",
            "--ca",
            pki().ca().dir().to_str().unwrap(),
            "--out",
            operator_token.to_str().unwrap(),
        ]),
        std::time::Duration::from_secs(30),
    );
    assert_eq!(made.0.and_then(|s| s.code()), Some(0), "{}", made.2);
    let made: Value = serde_json::from_str(&made.1).unwrap();
    let fingerprint = made["fingerprint"].as_str().unwrap().to_owned();
    with_token(
        &operator_token,
        &[
            "policy",
            "apply",
            repo_path("deploy/policies").to_str().unwrap(),
            "--yes",
        ],
    )
    .assert_ok();
    let activated = Value::Array(history_events(&endpoints, &["--kind", "policy.activated"]));
    assert!(
        activated
            .to_string()
            .contains(&format!("operator:{fingerprint}")),
        "the token's fingerprint is not the author: {activated}"
    );
    tl.log("an operator's token activated policy, recorded as operator:FINGERPRINT");

    // A deployer's token may read and deploy, not change policy.
    let (deployer_token, deployer) = token_file(pki().ca(), Role::Deployer, "ml-1", &scratch);
    with_token(&deployer_token, &["deploy", "list"]).assert_ok();
    let out = with_token(
        &deployer_token,
        &[
            "policy",
            "apply",
            repo_path("deploy/policies").to_str().unwrap(),
            "--yes",
        ],
    );
    assert!(!out.success(), "a deployer's token changed policy");
    assert!(out.stderr.contains("policy.apply"), "{}", out.stderr);

    // Altered, another CA's, or none: refused, saying why.
    let mut forged = deployer.token.clone();
    forged.replace_range(10..11, if &forged[10..11] == "A" { "B" } else { "A" });
    let forged_file = scratch.join("forged.token");
    std::fs::write(&forged_file, &forged).unwrap();
    let out = with_token(&forged_file, &["deploy", "list"]);
    assert!(!out.success(), "a forged token was accepted");
    assert!(
        out.stderr.contains("not signed by this cluster's CA")
            || out.stderr.contains("unreadable")
            || out.stderr.contains("base64"),
        "{}",
        out.stderr
    );
    let other = Ca::init(&scratch.join("other-ca"), "other").unwrap();
    let (foreign_file, _) = token_file(&other, Role::Operator, "mallory", &scratch);
    let out = with_token(&foreign_file, &["deploy", "list"]);
    assert!(!out.success(), "another CA's token was accepted");
    assert!(
        out.stderr.contains("not signed by this cluster's CA"),
        "{}",
        out.stderr
    );
    let out = sovctl_with(&ca_only, &endpoints, &["deploy", "list"]);
    assert!(
        !out.success(),
        "a call with neither certificate nor token was accepted"
    );
    tl.log("forged, foreign and missing tokens refused");

    // Certificates still work beside tokens.
    sovctl(&endpoints, &["deploy", "list"]).assert_ok();
}

#[test]
fn a_token_alone_gets_nowhere_where_the_cluster_does_not_accept_tokens() {
    let tl = Timeline::new();
    let cluster = Cluster::start(1, tl);
    let scratch = cluster.scratch();
    let ca_only = ca_only_dir(&scratch);
    let (file, _) = token_file(pki().ca(), Role::Operator, "ops-1", &scratch);
    let out = sovctl_with(
        &ca_only,
        &cluster.endpoints(),
        &["--token-file", file.to_str().unwrap(), "deploy", "list"],
    );
    assert!(!out.success(), "a token was accepted where tokens are off");
    assert!(
        out.stderr.contains("bearer_tokens = true"),
        "{}",
        out.stderr
    );
    tl.log(format_args!("refused: {}", out.stderr.trim()));
}
