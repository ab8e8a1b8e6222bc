//! The placement history end to end (issue #6): real schedulers and agents, `sovctl history` and
//! `sovctl audit` as a reviewer runs them.
//!
//! - an export verifies offline with the cluster's public key (no scheduler reachable); a later
//!   export verifies as an extension of the first; each kind of tampering with a real export
//!   (a flipped byte, a removed, reordered, inserted or duplicated event, a truncated tail, a
//!   forged checkpoint, another cluster's key) fails and names the line;
//! - every scheduler holds the same history root at the same revision, also after one of them
//!   is killed and restarted and the cluster moved on meanwhile;
//! - checkpoints are signed on the configured interval and on demand.
//!
//! The as-of query across a migration is checked in the directive scenario
//! (`tests/tests/compliance.rs`), where a real migration happens.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use sov_e2e::agent::{Agent, FR, Facts};
use sov_e2e::{Cluster, Timeline, cluster_status, repo_path, sovctl, u64_field, wait_until};

const WAIT: Duration = Duration::from_secs(60);

const DE: Facts = Facts {
    country: "DE",
    operator: "Beispiel Rechenzentrum GmbH",
    operator_hq: "DE",
    ultimate_parent_hq: "DE",
};

/// A deployment of the tiny model server, `replicas` replicas.
fn spec(dir: &Path, name: &str, replicas: u32) -> String {
    let path = dir.join(format!("{name}.toml"));
    let server = sov_e2e::bin("sov-model-server");
    std::fs::write(
        &path,
        format!(
            "name = {name:?}\nmodel = \"sov/tiny\"\nreplicas = {replicas}\ncommand = [{:?}]\n\
             [resources]\ncpu_millis = 100\nmemory_mib = 64\n\
             [health]\nhttp = \"/health\"\ninterval = \"1s\"\ntimeout = \"1s\"\n",
            server.to_str().expect("utf-8")
        ),
    )
    .expect("cannot write spec");
    path.to_str().expect("utf-8").to_string()
}

fn running(endpoints: &str, deployment: &str, want: usize) -> Result<(), String> {
    let out = sovctl(endpoints, &["deploy", "show", deployment, "-o", "json"]);
    if !out.success() {
        return Err(out.stderr);
    }
    let d = out.json();
    let n = d["replicas"]
        .as_array()
        .map_or(0, |r| r.iter().filter(|r| r["status"] == "running").count());
    if n == want {
        Ok(())
    } else {
        Err(format!("{n}/{want} running"))
    }
}

/// `audit verify` with no cluster reachable: (success, stdout + stderr).
fn verify(file: &Path, key: &Path, previous: Option<&Path>) -> (bool, String) {
    let mut args = vec![
        "audit".to_string(),
        "verify".into(),
        file.to_string_lossy().into_owned(),
        "--key".into(),
        key.to_string_lossy().into_owned(),
    ];
    if let Some(p) = previous {
        args.push("--previous".into());
        args.push(p.to_string_lossy().into_owned());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = sovctl("http://127.0.0.1:1", &args);
    (out.success(), format!("{}{}", out.stdout, out.stderr))
}

/// Writes `lines` (joined, newline-terminated) to `dir/name` and verifies it against `key`.
fn verify_lines(dir: &Path, name: &str, lines: &[String], key: &Path) -> (bool, String) {
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n") + "\n").expect("write tampered copy");
    verify(&path, key, None)
}

/// Every scheduler's (state revision, history size, history root), once they all agree.
fn same_history(endpoints: &[String]) -> (u64, u64, String) {
    let (seen, _) = wait_until("every scheduler at the same history", WAIT, || {
        let mut seen = Vec::new();
        for e in endpoints {
            let s = cluster_status(e)?;
            seen.push((
                u64_field(&s, "state_revision"),
                u64_field(&s, "history_size"),
                s["history_root"].as_str().unwrap_or("").to_string(),
            ));
        }
        if seen.windows(2).all(|w| w[0] == w[1]) && seen[0].1 > 0 {
            Ok(seen[0].clone())
        } else {
            Err(format!("{seen:?}"))
        }
    });
    seen
}

#[test]
fn exports_verify_offline_extend_each_other_and_name_every_tampering() {
    let tl = Timeline::new();
    let mut cluster = Cluster::start_with(3, tl, &["--checkpoint-interval-ms", "1000"]);
    let endpoints = cluster.endpoints();
    let each: Vec<String> = endpoints.split(',').map(String::from).collect();
    let dir = cluster.scratch();
    let key = cluster.public_key();
    let pid = std::process::id();
    let _agents = [
        Agent::start_with_ports(&dir, &format!("fr-h{pid}"), &endpoints, &FR, "", 4),
        Agent::start_with_ports(&dir, &format!("de-h{pid}"), &endpoints, &DE, "", 4),
    ];
    let policies = repo_path("deploy/policies");
    sovctl(&endpoints, &["policy", "apply", policies.to_str().unwrap()]).assert_ok();
    sovctl(
        &endpoints,
        &["deploy", "apply", "-f", &spec(&dir, "ledger", 2)],
    )
    .assert_ok();
    wait_until("ledger running", WAIT, || running(&endpoints, "ledger", 2));
    tl.log("ledger: 2 replicas running");

    // First export, verified with nothing but the public key.
    let first = dir.join("2026-11.jsonl");
    sovctl(
        &endpoints,
        &["history", "export", "-f", first.to_str().unwrap()],
    )
    .assert_ok();
    let (ok, said) = verify(&first, &key, None);
    assert!(ok, "{said}");
    assert!(said.contains("OK:"), "{said}");

    // The cluster moves on; a second export extends the first.
    sovctl(
        &endpoints,
        &["deploy", "apply", "-f", &spec(&dir, "ledger", 3)],
    )
    .assert_ok();
    wait_until("ledger scaled", WAIT, || running(&endpoints, "ledger", 3));
    let second = dir.join("2026-12.jsonl");
    sovctl(
        &endpoints,
        &[
            "history",
            "export",
            "--previous",
            first.to_str().unwrap(),
            "-f",
            second.to_str().unwrap(),
        ],
    )
    .assert_ok();
    let (ok, said) = verify(&second, &key, Some(&first));
    assert!(ok, "{said}");
    assert!(said.contains("extends the previous export"), "{said}");
    tl.log(format_args!("second export: {}", said.trim()));

    // An export of one deployment verifies too: the seal lists exactly its leaves.
    let only = dir.join("ledger.jsonl");
    sovctl(
        &endpoints,
        &[
            "history",
            "export",
            "--deployment",
            "ledger",
            "-f",
            only.to_str().unwrap(),
        ],
    )
    .assert_ok();
    let (ok, said) = verify(&only, &key, None);
    assert!(ok, "{said}");

    // Tampering with the real export: each fails and names where.
    let text = std::fs::read_to_string(&second).unwrap();
    let lines: Vec<String> = text.lines().map(String::from).collect();
    let events: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains("\"type\":\"event\""))
        .map(|(i, _)| i)
        .collect();
    assert!(events.len() > 10, "{} event lines", events.len());
    let placed = *events
        .iter()
        .find(|&&i| lines[i].contains("allocation.placed"))
        .expect("a placement in the export");
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        (
            "flipped",
            {
                let mut l = lines.clone();
                l[placed] = l[placed].replacen("\\\"country\\\":\\\"", "\\\"country\\\":\\\"X", 1);
                assert_ne!(l[placed], lines[placed], "the country was changed");
                l
            },
            "was altered",
        ),
        (
            "removed",
            {
                let mut l = lines.clone();
                l.remove(events[5]);
                l
            },
            "was removed",
        ),
        (
            "swapped",
            {
                let mut l = lines.clone();
                l.swap(events[3], events[4]);
                l
            },
            "reordered",
        ),
        (
            "inserted",
            {
                let mut l = lines.clone();
                l.insert(events[7], lines[events[2]].clone());
                l
            },
            "reordered or repeated",
        ),
        ("truncated", lines[..events[8]].to_vec(), "truncated"),
        (
            "forged",
            {
                // A seal whose checkpoint claims another root: its signature no longer holds.
                let mut l = lines.clone();
                let last = l.len() - 1;
                let mut seal: Value = serde_json::from_str(&l[last]).unwrap();
                assert!(seal["root"].is_string(), "{seal}");
                seal["root"] = Value::String("00".repeat(32));
                l[last] = seal.to_string();
                l
            },
            "signature does not verify",
        ),
    ];
    for (name, tampered, says) in cases {
        let (ok, said) = verify_lines(&dir, &format!("{name}.jsonl"), &tampered, &key);
        assert!(!ok, "{name}: a tampered export verified: {said}");
        assert!(said.contains(says), "{name}: {said}");
        if name != "truncated" {
            assert!(
                said.contains("line "),
                "{name} does not name the line: {said}"
            );
        }
        tl.log(format_args!("{name}: {}", said.trim()));
    }
    // Another cluster's key does not verify this cluster's export.
    let other = dir.join("other-key");
    let (status, out, err) = sov_e2e::run_bounded(
        std::process::Command::new(sov_e2e::bin("sov-scheduler"))
            .args(["keygen", "--out"])
            .arg(&other),
        Duration::from_secs(30),
    );
    assert!(status.is_some_and(|s| s.success()), "{out}{err}");
    let (ok, said) = verify(&second, &other.join("cluster.pub"), None);
    assert!(!ok && said.contains("signature does not verify"), "{said}");

    // Same root everywhere, also after a scheduler was killed, missed writes and restarted.
    let before = same_history(&each);
    cluster.node(3).kill();
    sovctl(
        &endpoints,
        &["deploy", "apply", "-f", &spec(&dir, "ledger", 1)],
    )
    .assert_ok();
    wait_until("ledger scaled down", WAIT, || {
        running(&endpoints, "ledger", 1)
    });
    cluster.node(3).restart();
    let after = same_history(&each);
    assert!(after.1 > before.1, "{before:?} -> {after:?}");
    tl.log(format_args!(
        "every scheduler: revision {}, {} events, root {}",
        after.0, after.1, after.2
    ));

    // Checkpoints: signed every second by each scheduler while the history grows, and on
    // demand; both verify.
    let (checkpoint, _) = wait_until("a checkpoint of the whole history", WAIT, || {
        let out = sovctl(
            &endpoints,
            &[
                "audit",
                "checkpoint",
                "--key",
                key.to_str().unwrap(),
                "-o",
                "json",
            ],
        );
        if !out.success() {
            return Err(out.stderr);
        }
        let v = out.json();
        if u64_field(&v, "tree_size") >= after.1 {
            Ok(v)
        } else {
            Err(format!("{v}"))
        }
    });
    assert!(checkpoint["verified_with_key"].is_string(), "{checkpoint}");
    let log = std::fs::read_to_string(&cluster.node(1).log_path).unwrap_or_default()
        + &std::fs::read_to_string(&cluster.node(2).log_path).unwrap_or_default();
    assert!(
        log.contains("signed a history checkpoint"),
        "no periodic checkpoint in the schedulers' logs"
    );
}
