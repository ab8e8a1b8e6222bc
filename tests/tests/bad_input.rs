//! Bad input is refused with a precise one-line reason and nothing is written (DESIGN.md, flow
//! step 2): through `sovctl`, and through the gRPC API directly.

use std::time::Duration;

use sov_e2e::{Cluster, Timeline, cluster_status, deployment_names, sovctl, u64_field};
use sov_proto::v1::ApplyDeploymentRequest;
use sov_proto::v1::deployment_service_client::DeploymentServiceClient;
use tonic::Code;

/// The scheduler's indexes once nothing more is being written.
fn settled_log_index(endpoint: &str) -> u64 {
    let s = cluster_status(endpoint).expect("cluster status");
    let last = u64_field(&s, "last_log_index");
    assert_eq!(
        last,
        u64_field(&s, "applied_index"),
        "log still moving: {s}"
    );
    last
}

#[test]
fn invalid_specs_are_refused_and_nothing_is_written() {
    let tl = Timeline::new();
    let mut cluster = Cluster::start(1, tl);
    let endpoint = cluster.node(1).endpoint();
    let scratch = cluster.scratch();
    let before = settled_log_index(&endpoint);
    tl.log(format_args!("last_log_index before: {before}"));

    let cases = [
        (
            "bad-name.toml",
            "name = \"Bad_Name\"\nmodel = \"m\"\nreplicas = 1\n",
            "error: invalid argument: spec.name: ",
        ),
        (
            "too-many.toml",
            "name = \"too-many\"\nmodel = \"m\"\nreplicas = 100000\n",
            "error: invalid argument: spec.replicas: ",
        ),
        (
            "no-model.toml",
            "name = \"no-model\"\nmodel = \"  \"\nreplicas = 1\n",
            "error: invalid argument: spec.model: ",
        ),
    ];
    for (file, text, expected) in cases {
        let path = scratch.join(file);
        std::fs::write(&path, text).unwrap();
        let out = sovctl(
            &endpoint,
            &["deploy", "apply", "-f", path.to_str().unwrap()],
        );
        // 1: the cluster said no (2 would mean sovctl itself judged the input).
        assert_eq!(out.status.code(), Some(1), "{out}");
        assert!(out.stdout.is_empty(), "{out}");
        assert_eq!(out.stderr.lines().count(), 1, "not one line: {out}");
        assert!(out.stderr.starts_with(expected), "{out}");
        tl.log(format_args!("{file}: refused: {}", out.stderr.trim()));
    }

    // A file sovctl cannot read as a spec is its own usage error (exit 2), found offline.
    let path = scratch.join("typo.toml");
    std::fs::write(&path, "name = \"typo\"\nmodel = \"m\"\nreplica = 1\n").unwrap();
    let out = sovctl(
        &endpoint,
        &["deploy", "apply", "-f", path.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(2), "{out}");
    assert_eq!(out.stderr.lines().count(), 1, "not one line: {out}");
    assert!(out.stderr.starts_with("error: "), "{out}");
    assert!(out.stderr.contains("replica"), "{out}");
    tl.log(format_args!(
        "typo.toml: usage error: {}",
        out.stderr.trim()
    ));

    // The gRPC API itself: a request without a spec.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let status = runtime.block_on(async {
        let mut client = DeploymentServiceClient::new(
            sov_e2e::pki::pki()
                .channel(&endpoint, sov_proto::identity::Role::Deployer)
                .await,
        );
        let call = client.apply(ApplyDeploymentRequest {
            spec: None,
            expected_generation: 0,
        });
        tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .expect("no answer within 10 s")
            .expect_err("an apply without a spec was accepted")
    });
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("spec"), "{status:?}");
    tl.log(format_args!(
        "gRPC apply without spec: {:?}: {}",
        status.code(),
        status.message()
    ));

    let list = sovctl(&endpoint, &["-o", "json", "deploy", "list"]).json();
    assert!(deployment_names(&list).is_empty(), "{list}");
    let after = settled_log_index(&endpoint);
    assert_eq!(after, before, "a refused request reached the Raft log");
    tl.log(format_args!(
        "deploy list is empty and last_log_index is still {after}"
    ));
}
