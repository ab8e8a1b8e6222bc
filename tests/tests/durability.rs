//! I2 durability on one scheduler: every write `sovctl` acknowledged survives a SIGKILL that
//! comes right after the acknowledgement, and a restart on the same data dir.

use std::collections::BTreeSet;
use std::time::Duration;

use sov_e2e::{Cluster, Timeline, deployment_names, sovctl, write_spec};

/// Writes in the burst; the kill follows the last acknowledgement at once.
const BURST: usize = 20;

#[test]
fn acknowledged_writes_survive_kill_9_and_restart() {
    let tl = Timeline::new();
    let mut cluster = Cluster::start(1, tl);
    let endpoint = cluster.node(1).endpoint();
    let scratch = cluster.scratch();

    let mut acknowledged = BTreeSet::new();
    for i in 0..BURST {
        let name = format!("d-{i}");
        let spec = write_spec(&scratch, &name, "m", 1);
        let out = sovctl(
            &endpoint,
            &["deploy", "apply", "-f", spec.to_str().unwrap()],
        );
        out.assert_ok();
        assert!(
            out.stdout.contains(&format!("deployment {name} created")),
            "{out}"
        );
        acknowledged.insert(name);
    }
    // The last acknowledged write is an update, so the test also sees that the newest version
    // (not just some version) of a deployment survives.
    let last = format!("d-{}", BURST - 1);
    let spec = write_spec(&scratch, &last, "m2", 3);
    let out = sovctl(
        &endpoint,
        &["deploy", "apply", "-f", spec.to_str().unwrap()],
    );
    out.assert_ok();
    cluster.node(1).kill();
    tl.log(format_args!(
        "{BURST} creates + 1 update acknowledged; SIGKILLed right after the last ack (`{}`)",
        out.stdout.trim()
    ));

    cluster.node(1).restart();
    let took = cluster.node(1).wait_ready(Duration::from_secs(30));
    tl.log(format_args!(
        "restarted on the same data dir; ready after {} ms",
        took.as_millis()
    ));

    let list = sovctl(&endpoint, &["-o", "json", "deploy", "list"]).json();
    let present = deployment_names(&list);
    let lost: Vec<_> = acknowledged.difference(&present).collect();
    assert!(
        lost.is_empty(),
        "acknowledged deployments lost after kill -9: {lost:?}"
    );
    assert_eq!(present, acknowledged, "unexpected deployments: {list}");
    tl.log(format_args!(
        "deploy list after restart has all {} acknowledged deployments",
        present.len()
    ));

    let shown = sovctl(&endpoint, &["-o", "json", "deploy", "show", &last]).json();
    assert_eq!(shown["spec"]["model"], "m2", "the update was lost: {shown}");
    assert_eq!(shown["spec"]["replicas"], 3, "{shown}");
    assert_eq!(shown["generation"], 2, "{shown}");
    let first = sovctl(&endpoint, &["-o", "json", "deploy", "show", "d-0"]).json();
    assert_eq!(first["spec"]["model"], "m", "{first}");
    assert_eq!(first["generation"], 1, "{first}");
    tl.log(format_args!(
        "deploy show {last}: generation 2 with the updated spec; d-0: generation 1"
    ));
}
