//! Policy-gated placement end to end, on a three-scheduler cluster: nothing is placed before a
//! policy bundle is in force, an invalid bundle changes nothing, and with the shipped default
//! bundle (deploy/policies) replicas land only on nodes that residency, the EU-operator rule, the
//! 4E091 export rule and the embargo allow; `deploy plan`, `explain` and `node drain` say so in
//! the scheduler's own words, and every scheduler holds the same placements.
//!
//! Everything goes through the real `sovctl` binary except node registration: to test placement
//! alone, with a fleet of eleven precise location facts, the test registers nodes with simulated
//! GPUs through `AgentService.Register` and runs no agents (see `agents.rs` for those).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use sov_e2e::{Cluster, SovctlOutput, Timeline, cluster_status, sovctl, u64_field, wait_until};
use sov_proto::v1 as pb;
use sov_proto::v1::agent_service_client::AgentServiceClient;

/// How long the leader may take to place the replicas of a new deployment (it normally takes
/// one Raft round trip after the apply).
const PLACE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a follower may take to apply what the leader committed.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(20);
/// GPUs of every simulated node: four 80 GB H100s, as NVML reports them.
const GPUS_PER_NODE: u32 = 4;
const GPU_MODEL: &str = "NVIDIA H100 80GB HBM3";
const GPU_MEMORY_MIB: u64 = 81_559;

/// One simulated node: its name and where it, its operator and the operator's ultimate parent
/// are headquartered.
struct SimNode {
    name: &'static str,
    country: &'static str,
    operator: &'static str,
    operator_hq: &'static str,
    ultimate_parent_hq: &'static str,
}

const FLEET: &[SimNode] = &[
    SimNode {
        name: "sim-fr-paris-1",
        country: "FR",
        operator: "Exemple Cloud SAS",
        operator_hq: "FR",
        ultimate_parent_hq: "FR",
    },
    SimNode {
        name: "sim-de-frankfurt-1",
        country: "DE",
        operator: "Beispiel Rechenzentrum GmbH",
        operator_hq: "DE",
        ultimate_parent_hq: "DE",
    },
    SimNode {
        name: "sim-pl-warsaw-1",
        country: "PL",
        operator: "Przyklad Chmura sp. z o.o.",
        operator_hq: "PL",
        ultimate_parent_hq: "PL",
    },
    // An Irish subsidiary of a US company: in the EU27, but not EU-headquartered all the way up.
    SimNode {
        name: "sim-ie-dublin-1",
        country: "IE",
        operator: "Example Hyperscale Ireland Ltd",
        operator_hq: "IE",
        ultimate_parent_hq: "US",
    },
    SimNode {
        name: "sim-us-virginia-1",
        country: "US",
        operator: "Example Hyperscale Inc",
        operator_hq: "US",
        ultimate_parent_hq: "US",
    },
    // Embargoed (Country Group D:5): nothing may ever run here.
    SimNode {
        name: "sim-cn-shanghai-1",
        country: "CN",
        operator: "Example Cloud Shanghai Co",
        operator_hq: "CN",
        ultimate_parent_hq: "CN",
    },
    SimNode {
        name: "sim-ch-zurich-1",
        country: "CH",
        operator: "Beispiel Rechenzentrum AG",
        operator_hq: "CH",
        ultimate_parent_hq: "CH",
    },
    SimNode {
        name: "sim-gb-london-1",
        country: "GB",
        operator: "Example Compute Ltd",
        operator_hq: "GB",
        ultimate_parent_hq: "GB",
    },
];

fn sim(country: &str) -> &'static SimNode {
    FLEET
        .iter()
        .find(|n| n.country == country)
        .unwrap_or_else(|| panic!("no simulated node in {country}"))
}

fn country_of(node: &str) -> &'static str {
    FLEET
        .iter()
        .find(|n| n.name == node)
        .unwrap_or_else(|| panic!("replica on a node the test never registered: {node:?}"))
        .country
}

fn gpu_uuid(node: &str, index: u32) -> String {
    format!("GPU-SIMULATED-{node}-{index}")
}

/// Registers every node of [`FLEET`] through `AgentService.Register`, spreading the calls over
/// the schedulers (a follower passes the write on to the leader).
fn register_fleet(tl: &Timeline, endpoints: &[String]) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("cannot build a tokio runtime");
    runtime.block_on(async {
        for (i, node) in FLEET.iter().enumerate() {
            let endpoint = endpoints[i % endpoints.len()].clone();
            let request = pb::RegisterNodeRequest {
                name: node.name.into(),
                facts: Some(pb::LocationFacts {
                    country: node.country.into(),
                    subdivision: String::new(),
                    site: format!("{}-site", node.country.to_lowercase()),
                    operator: node.operator.into(),
                    operator_hq: node.operator_hq.into(),
                    ultimate_parent_hq: node.ultimate_parent_hq.into(),
                    certifications: Default::default(),
                    location_trust: "self-reported".into(),
                    fact_trust: Default::default(),
                }),
                inventory: Some(pb::Inventory {
                    cpu_millis: 64_000,
                    memory_mib: 512 * 1024,
                    gpus: (0..GPUS_PER_NODE)
                        .map(|index| pb::GpuDevice {
                            index,
                            uuid: gpu_uuid(node.name, index),
                            model: GPU_MODEL.into(),
                            memory_mib: GPU_MEMORY_MIB,
                            mig_enabled: false,
                            driver_version: "550.54.15".into(),
                            simulated: true,
                        })
                        .collect(),
                    ..Default::default()
                }),
            };
            let call = async {
                let pki = sov_e2e::pki::pki();
                let mut client = AgentServiceClient::new(
                    pki.channel_with(&endpoint, &pki.agent(node.name, &[])).await,
                );
                client
                    .register(request)
                    .await
                    .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
            };
            let answer = tokio::time::timeout(Duration::from_secs(15), call)
                .await
                .unwrap_or_else(|_| Err("no answer in 15 s".into()))
                .unwrap_or_else(|e| panic!("registering {} at {endpoint}: {e}", node.name));
            tl.log(format_args!(
                "registered {} ({}, operator HQ {}, parent HQ {}) through {endpoint} at revision {}",
                node.name,
                node.country,
                node.operator_hq,
                node.ultimate_parent_hq,
                answer.into_inner().revision
            ));
        }
    });
}

/// Writes a deployment spec with `[resources]`, `[export]` and `[residency]` sections.
fn write_spec(
    dir: &Path,
    name: &str,
    replicas: u32,
    gpu_count: u32,
    eccn: &str,
    residency: &[&str],
) -> PathBuf {
    let allowed: Vec<String> = residency.iter().map(|c| format!("{c:?}")).collect();
    let text = format!(
        "name = {name:?}\n\
         model = \"example/{name}\"\n\
         replicas = {replicas}\n\
         command = [\"sh\", \"-c\", \"exec sleep infinity\"]\n\
         \n\
         [resources]\n\
         gpu_count = {gpu_count}\n\
         gpu_memory_mib = 80000\n\
         cpu_millis = 1000\n\
         memory_mib = 4096\n\
         \n\
         [export]\n\
         eccn = {eccn:?}\n\
         \n\
         [residency]\n\
         allowed = [{}]\n",
        allowed.join(", ")
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("cannot write spec file");
    path
}

fn path_arg(path: &Path) -> &str {
    path.to_str().expect("non-UTF-8 temp path")
}

/// The rule ids in reasons such as `forbidden by policy residency ("...")`.
fn policy_ids(reasons: &[String]) -> BTreeSet<String> {
    reasons
        .iter()
        .filter_map(|r| r.strip_prefix("forbidden by policy "))
        .map(|rest| {
            rest.split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

/// `excluded` of an `explain` or `deploy plan` JSON document: node -> every reason.
fn excluded(doc: &Value) -> BTreeMap<String, Vec<String>> {
    doc["excluded"]
        .as_array()
        .unwrap_or_else(|| panic!("no `excluded` array in {doc}"))
        .iter()
        .map(|v| {
            let node = v["node"].as_str().expect("verdict without node").to_owned();
            let reasons = v["reasons"]
                .as_array()
                .expect("verdict without reasons")
                .iter()
                .map(|r| r.as_str().expect("reason is not a string").to_owned())
                .collect();
            (node, reasons)
        })
        .collect()
}

/// Replicas of a `deploy show -o json` document, sorted by id.
fn replicas(show: &Value) -> Vec<Value> {
    let mut list = show["replicas"]
        .as_array()
        .unwrap_or_else(|| panic!("no `replicas` array in {show}"))
        .clone();
    list.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    list
}

fn str_field<'v>(v: &'v Value, key: &str) -> &'v str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("no string `{key}` in {v}"))
}

fn exit_code(out: &SovctlOutput) -> i32 {
    out.status
        .code()
        .unwrap_or_else(|| panic!("sovctl died by a signal: {out}"))
}

/// Waits until `name` has `want` replicas that should run, and returns them (sorted by id).
fn wait_placed(tl: &Timeline, endpoints: &str, name: &str, want: usize) -> Vec<Value> {
    let (placed, took) = wait_until(
        &format!("{want} replicas of {name} to be placed"),
        PLACE_TIMEOUT,
        || {
            let out = sovctl(endpoints, &["-o", "json", "deploy", "show", name]);
            if !out.success() {
                return Err(out.stderr.trim().to_owned());
            }
            let show: Value = serde_json::from_str(&out.stdout)
                .map_err(|e| format!("bad JSON ({e}): {}", out.stdout))?;
            let all = replicas(&show);
            let running = all.iter().filter(|r| r["desired"] == "run").count();
            if running >= want {
                Ok(all)
            } else {
                Err(format!("{running} of {want} placed: {}", show["replicas"]))
            }
        },
    );
    tl.log(format_args!(
        "{name}: {} replicas placed after {} ms on {:?}",
        placed.len(),
        took.as_millis(),
        placed
            .iter()
            .map(|r| str_field(r, "node"))
            .collect::<Vec<_>>()
    ));
    placed
}

/// Every placed replica sits on GPUs of its own node, with no GPU given twice.
fn assert_gpus_consistent(name: &str, placed: &[Value], gpus_each: usize) {
    let mut seen = BTreeSet::new();
    for r in placed {
        let node = str_field(r, "node");
        let gpus = r["gpu_uuids"].as_array().expect("gpu_uuids");
        assert_eq!(gpus.len(), gpus_each, "{name}: wrong GPU count in {r}");
        for gpu in gpus {
            let gpu = gpu.as_str().expect("gpu uuid");
            assert!(
                (0..GPUS_PER_NODE).any(|i| gpu == gpu_uuid(node, i)),
                "{name}: replica on {node} holds GPU {gpu} of another node: {r}"
            );
            assert!(seen.insert(gpu.to_owned()), "{name}: GPU {gpu} given twice");
        }
    }
}

/// Copies every file of `from` into `to`.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("cannot create bundle copy");
    for entry in std::fs::read_dir(from).expect("cannot read the policy bundle") {
        let path = entry.expect("dir entry").path();
        if path.is_file() {
            std::fs::copy(&path, to.join(path.file_name().unwrap())).expect("cannot copy");
        }
    }
}

/// Replaces the first `from` in `dir/file` by `to`; returns the 1-based line and column where
/// `from` started.
fn edit(dir: &Path, file: &str, from: &str, to: &str) -> (usize, usize) {
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path).expect("cannot read bundle file");
    let at = text
        .find(from)
        .unwrap_or_else(|| panic!("{file} no longer contains {from:?}: update this test"));
    let line = text[..at].matches('\n').count() + 1;
    let column = at - text[..at].rfind('\n').map_or(0, |nl| nl + 1) + 1;
    std::fs::write(&path, text.replacen(from, to, 1)).expect("cannot write bundle file");
    (line, column)
}

/// Policy versions as `policy list -o json` reports them.
fn policy_versions(endpoints: &str, stale: bool) -> Vec<u64> {
    let mut args = vec!["-o", "json", "policy", "list"];
    if stale {
        args.push("--stale");
    }
    sovctl(endpoints, &args).json()["versions"]
        .as_array()
        .expect("no `versions` array")
        .iter()
        .map(|v| u64_field(v, "version"))
        .collect()
}

#[test]
fn a_three_node_cluster_places_replicas_only_where_policy_allows() {
    let tl = Timeline::new();
    // The test registers nodes itself and runs no agents to heartbeat for them: a TTL of an
    // hour keeps them ready for the whole test.
    let mut cluster = Cluster::start_with(3, tl, &["--heartbeat-ttl-ms", "3600000"]);
    let endpoints = cluster.endpoints();
    let each: Vec<String> = cluster.nodes.iter().map(|n| n.endpoint()).collect();
    let scratch = cluster.scratch();
    let bundle_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/policies");
    let bundle = path_arg(&bundle_dir);

    // 1. Before any policy: a deployment is accepted but nothing can be placed.
    let eu = "eu-chat";
    let eu_spec = write_spec(&scratch, eu, 3, 1, "", &["EU27"]);
    sovctl(&endpoints, &["deploy", "apply", "-f", path_arg(&eu_spec)]).assert_ok();
    let out = sovctl(&endpoints, &["explain", eu])
        .assert_ok()
        .stdout
        .clone();
    assert!(
        out.contains("0/3 replicas running") && out.contains("no policy in force"),
        "explain without nodes or policy does not say no policy is in force:\n{out}"
    );
    tl.log(format_args!(
        "no nodes, no policy: explain says {:?}",
        out.trim()
    ));

    register_fleet(&tl, &each);
    let nodes = sovctl(&endpoints, &["-o", "json", "node", "list"]).json();
    let listed = nodes["nodes"].as_array().expect("no `nodes` array");
    assert_eq!(listed.len(), FLEET.len(), "node list: {nodes}");
    for n in listed {
        let gpus = n["inventory"]["gpus"].as_array().expect("gpus");
        assert_eq!(gpus.len(), GPUS_PER_NODE as usize, "{n}");
        assert!(gpus.iter().all(|g| g["simulated"] == true), "{n}");
    }

    let explain = sovctl(&endpoints, &["-o", "json", "explain", eu]).json();
    assert_eq!(u64_field(&explain, "policy_version"), 0, "{explain}");
    assert_eq!(u64_field(&explain, "nodes_total"), FLEET.len() as u64);
    assert_eq!(u64_field(&explain, "nodes_eligible"), 0, "{explain}");
    let verdicts = excluded(&explain);
    for node in FLEET {
        let reasons = verdicts
            .get(node.name)
            .unwrap_or_else(|| panic!("{} not excluded without a policy: {explain}", node.name));
        assert!(
            policy_ids(reasons).contains("no-policy"),
            "{} is not excluded for `no-policy`: {reasons:?}",
            node.name
        );
    }
    let plan = sovctl(&endpoints, &["deploy", "plan", "-f", path_arg(&eu_spec)]);
    assert_eq!(exit_code(&plan), 0, "plan without policy: {plan}");
    let show = sovctl(&endpoints, &["-o", "json", "deploy", "show", eu]).json();
    assert!(
        replicas(&show).is_empty(),
        "placed without a policy: {show}"
    );
    tl.log(format_args!(
        "8 nodes, no policy: every node excluded by `no-policy`, plan exits 0, {eu} has 0 replicas; summary {:?}",
        str_field(&explain, "summary")
    ));

    // 2. The default bundle becomes version 1; invalid bundles are refused and change nothing.
    let out = sovctl(&endpoints, &["policy", "apply", bundle]);
    out.assert_ok();
    assert!(
        out.stdout.contains("policy version 1 in force"),
        "unexpected answer to policy apply: {out}"
    );
    tl.log(format_args!("{}", out.stdout.trim()));

    let broken = scratch.join("bundle-syntax");
    copy_dir(&bundle_dir, &broken);
    let target = "\"US-Embargo\" };";
    let (line, column) = edit(&broken, "embargo-d5.cedar", target, "\"US-Embargo\" ;");
    // The `;` now stands where the `}` was.
    let column = column + target.find('}').unwrap();
    let out = sovctl(&endpoints, &["policy", "apply", path_arg(&broken)]);
    assert_eq!(exit_code(&out), 1, "syntax error not refused: {out}");
    let location = format!("embargo-d5.cedar:{line}:{column}:");
    assert!(
        out.stderr.contains(&location),
        "stderr does not name {location}: {out}"
    );
    tl.log(format_args!(
        "bundle with a syntax error refused: {:?}",
        out.stderr.lines().last().unwrap_or_default()
    ));

    let later = scratch.join("bundle-on-change");
    copy_dir(&bundle_dir, &later);
    let (on_change_line, _) = edit(
        &later,
        "residency.cedar",
        "@on_change(\"migrate\")",
        "@on_change(\"later\")",
    );
    let out = sovctl(&endpoints, &["policy", "apply", path_arg(&later)]);
    assert_eq!(
        exit_code(&out),
        1,
        "@on_change(\"later\") not refused: {out}"
    );
    let problem = out
        .stderr
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("residency.cedar:"))
        .unwrap_or_else(|| panic!("stderr does not name residency.cedar: {out}"));
    let mut parts = problem.splitn(4, ':');
    let (_, at_line, at_column) = (parts.next(), parts.next(), parts.next());
    let at_line: usize = at_line
        .and_then(|l| l.parse().ok())
        .unwrap_or_else(|| panic!("no line number in {problem:?}"));
    assert!(
        at_column.is_some_and(|c| c.parse::<usize>().is_ok()),
        "no column in {problem:?}"
    );
    // The policy begins with its `@id` two lines above `@on_change`.
    assert!(
        (on_change_line - 2..=on_change_line).contains(&at_line),
        "{problem:?} does not point at the policy with @on_change on line {on_change_line}"
    );
    assert!(
        problem.contains("later"),
        "{problem:?} does not quote the value"
    );
    tl.log(format_args!(
        "bundle with @on_change(\"later\") refused: {problem:?}"
    ));
    assert_eq!(
        policy_versions(&endpoints, false),
        vec![1],
        "refused bundles changed the policy versions"
    );

    // 3 and 4. The EU27 deployment (applied in step 1) lands on EU-operated EU nodes only.
    let eu_replicas = wait_placed(&tl, &endpoints, eu, 3);
    assert_eq!(eu_replicas.len(), 3, "{eu}: {eu_replicas:?}");
    for r in &eu_replicas {
        let country = country_of(str_field(r, "node"));
        assert!(
            ["FR", "DE", "PL"].contains(&country),
            "{eu} replica placed in {country}, outside EU-operated EU27 nodes: {r}"
        );
        assert_eq!(r["desired"], "run", "{r}");
        assert_eq!(u64_field(r, "policy_version"), 1, "{r}");
    }
    let eu_nodes: BTreeSet<&str> = eu_replicas.iter().map(|r| str_field(r, "node")).collect();
    assert_eq!(
        eu_nodes.len(),
        3,
        "{eu}: replicas not spread over the three eligible nodes: {eu_nodes:?}"
    );
    assert_gpus_consistent(eu, &eu_replicas, 1);

    let explain = sovctl(&endpoints, &["-o", "json", "explain", eu]).json();
    // Placed, not running: no agent runs these test nodes, so none reports a server up.
    assert_eq!(u64_field(&explain, "replicas_running"), 0, "{explain}");
    assert_eq!(u64_field(&explain, "policy_version"), 1, "{explain}");
    assert_eq!(u64_field(&explain, "nodes_eligible"), 3, "{explain}");
    let verdicts = excluded(&explain);
    let rules = |country: &str| -> BTreeSet<String> {
        let node = sim(country).name;
        policy_ids(
            verdicts
                .get(node)
                .unwrap_or_else(|| panic!("{node} not excluded for {eu}: {explain}")),
        )
    };
    let set = |ids: &[&str]| -> BTreeSet<String> { ids.iter().map(|s| (*s).to_owned()).collect() };
    let eu_hq = "eu-headquartered-operator";
    assert_eq!(rules("IE"), set(&[eu_hq]), "IE reasons: {explain}");
    assert_eq!(rules("US"), set(&["residency", eu_hq]), "{explain}");
    assert_eq!(rules("CH"), set(&["residency", eu_hq]), "{explain}");
    assert_eq!(rules("GB"), set(&["residency", eu_hq]), "{explain}");
    assert_eq!(
        rules("CN"),
        set(&["residency", eu_hq, "embargo-d5"]),
        "{explain}"
    );
    for country in ["FR", "DE", "PL"] {
        assert!(
            !verdicts.contains_key(sim(country).name),
            "{country} excluded for {eu}: {explain}"
        );
    }
    let ie = sim("IE").name;
    let only_ie = sovctl(&endpoints, &["-o", "json", "explain", eu, "--node", ie]).json();
    let ie_verdicts = excluded(&only_ie);
    assert_eq!(
        ie_verdicts.keys().collect::<Vec<_>>(),
        vec![ie],
        "explain --node {ie} lists other nodes: {only_ie}"
    );
    assert_eq!(
        ie_verdicts[ie].len(),
        1,
        "{ie}: unexpected reasons: {only_ie}"
    );
    assert_eq!(policy_ids(&ie_verdicts[ie]), set(&[eu_hq]), "{only_ie}");
    tl.log(format_args!(
        "explain {eu}: {}; {ie}: {:?}",
        str_field(&explain, "summary"),
        ie_verdicts[ie]
    ));

    // 5. A 4E091 model lands only in Tier 1, with Tier 1 headquarters and parent.
    let frontier = "frontier";
    let frontier_spec = write_spec(&scratch, frontier, 1, 1, "4E091", &[]);
    sovctl(
        &endpoints,
        &["deploy", "apply", "-f", path_arg(&frontier_spec)],
    )
    .assert_ok();
    let frontier_replicas = wait_placed(&tl, &endpoints, frontier, 1);
    assert_eq!(frontier_replicas.len(), 1, "{frontier_replicas:?}");
    let country = country_of(str_field(&frontier_replicas[0], "node"));
    assert!(
        ["FR", "DE", "IE", "US", "GB"].contains(&country),
        "4E091 replica placed in {country}, outside Tier 1: {frontier_replicas:?}"
    );
    assert_gpus_consistent(frontier, &frontier_replicas, 1);
    let explain = sovctl(&endpoints, &["-o", "json", "explain", frontier]).json();
    let verdicts = excluded(&explain);
    let tier1 = "export-4e091-tier1";
    let rules = |country: &str| -> BTreeSet<String> {
        policy_ids(
            verdicts
                .get(sim(country).name)
                .map_or(&[][..], Vec::as_slice),
        )
    };
    assert_eq!(rules("PL"), set(&[tier1]), "{explain}");
    assert_eq!(rules("CH"), set(&[tier1]), "{explain}");
    assert_eq!(rules("CN"), set(&[tier1, "embargo-d5"]), "{explain}");
    for country in ["FR", "DE", "IE", "US", "GB"] {
        assert!(
            !verdicts.contains_key(sim(country).name),
            "{country} excluded for {frontier}: {explain}"
        );
    }
    assert_eq!(u64_field(&explain, "nodes_eligible"), 5, "{explain}");
    tl.log(format_args!(
        "{frontier} (4E091) placed in {country}; explain: {}",
        str_field(&explain, "summary")
    ));

    // 6. `deploy plan`: 0 when nothing would be placed, 1 when replicas would be; writes nothing.
    let huge = "huge";
    let huge_spec = write_spec(&scratch, huge, 1, 16, "", &[]);
    let out = sovctl(
        &endpoints,
        &["-o", "json", "deploy", "plan", "-f", path_arg(&huge_spec)],
    );
    assert_eq!(exit_code(&out), 0, "16-GPU plan: {out}");
    let plan: Value = serde_json::from_str(&out.stdout).expect("plan JSON");
    assert!(plan["placements"].as_array().unwrap().is_empty(), "{plan}");
    assert_eq!(u64_field(&plan, "unplaceable"), 1, "{plan}");
    let verdicts = excluded(&plan);
    for node in FLEET {
        let reasons = verdicts
            .get(node.name)
            .unwrap_or_else(|| panic!("{} not excluded from a 16-GPU plan: {plan}", node.name));
        assert!(
            reasons.iter().any(|r| r.starts_with("insufficient GPUs")),
            "{}: no GPU shortfall among {reasons:?}",
            node.name
        );
    }
    assert_eq!(
        policy_ids(&verdicts[sim("CN").name]),
        set(&["embargo-d5"]),
        "{plan}"
    );
    tl.log(format_args!(
        "plan of 16 GPUs exits 0: {}",
        str_field(&plan, "summary")
    ));

    let more = "eu-batch";
    let more_spec = write_spec(&scratch, more, 2, 1, "", &["EU27"]);
    let out = sovctl(
        &endpoints,
        &["-o", "json", "deploy", "plan", "-f", path_arg(&more_spec)],
    );
    assert_eq!(exit_code(&out), 1, "fitting plan: {out}");
    let plan: Value = serde_json::from_str(&out.stdout).expect("plan JSON");
    let planned: Vec<&str> = plan["placements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| str_field(p, "node"))
        .collect();
    assert_eq!(planned.len(), 2, "{plan}");
    assert!(
        planned
            .iter()
            .all(|n| ["FR", "DE", "PL"].contains(&country_of(n))),
        "{plan}"
    );
    let out = sovctl(&endpoints, &["deploy", "plan", "-f", path_arg(&more_spec)]);
    assert_eq!(exit_code(&out), 1, "fitting plan (table): {out}");
    for node in &planned {
        assert!(
            out.stdout.contains(node),
            "planned node {node} not listed: {out}"
        );
    }
    let out = sovctl(&endpoints, &["deploy", "show", more]);
    assert!(!out.success(), "deploy plan wrote {more}: {out}");
    // A spec whose replicas all run already: nothing would change.
    let out = sovctl(
        &endpoints,
        &["-o", "json", "deploy", "plan", "-f", path_arg(&eu_spec)],
    );
    assert_eq!(exit_code(&out), 0, "plan of the running {eu}: {out}");
    let plan: Value = serde_json::from_str(&out.stdout).expect("plan JSON");
    assert_eq!(u64_field(&plan, "running"), 3, "{plan}");
    assert!(plan["placements"].as_array().unwrap().is_empty(), "{plan}");
    assert_eq!(u64_field(&plan, "unplaceable"), 0, "{plan}");
    tl.log(format_args!(
        "plan of {more} exits 1, would place on {planned:?}"
    ));

    // 7. A drained node is excluded from new placements, and explain says why.
    let drained = str_field(&eu_replicas[0], "node").to_owned();
    sovctl(&endpoints, &["node", "drain", &drained]).assert_ok();
    let node = sovctl(&endpoints, &["-o", "json", "node", "show", &drained]).json();
    assert_eq!(node["draining"], true, "{node}");
    let explain = sovctl(
        &endpoints,
        &["-o", "json", "explain", eu, "--node", &drained],
    )
    .json();
    let reasons = excluded(&explain).remove(&drained).unwrap_or_default();
    assert!(
        reasons.iter().any(|r| r == "draining"),
        "explain --node {drained} does not list `draining`: {explain}"
    );
    assert!(policy_ids(&reasons).is_empty(), "{explain}");
    let out = sovctl(
        &endpoints,
        &["-o", "json", "deploy", "plan", "-f", path_arg(&more_spec)],
    );
    assert_eq!(exit_code(&out), 1, "plan after drain: {out}");
    let plan: Value = serde_json::from_str(&out.stdout).expect("plan JSON");
    for p in plan["placements"].as_array().unwrap() {
        let node = str_field(p, "node");
        assert_ne!(node, drained, "plan places on the drained node: {plan}");
        assert!(["FR", "DE", "PL"].contains(&country_of(node)), "{plan}");
    }
    // A drain also moves the replicas already there, make-before-break (issue #5): the one on
    // the drained node is marked migrating with the drain's deadline and a replacement is
    // placed on another EU node; it keeps its place until the replacement runs (no agent runs
    // here, so it never does). The other replicas are untouched.
    let (show, took) = wait_until(
        "a replacement for the drained replica",
        PLACE_TIMEOUT,
        || {
            let show = sovctl(&endpoints, &["-o", "json", "deploy", "show", eu]).json();
            let placed = replicas(&show);
            if placed.len() == eu_replicas.len() + 1 {
                Ok(show)
            } else {
                Err(format!("replicas: {}", show["replicas"]))
            }
        },
    );
    let now = replicas(&show);
    let moving = now
        .iter()
        .find(|r| str_field(r, "node") == drained)
        .expect("the drained node's replica stays until replaced");
    assert_eq!(moving["standing"], "migrating", "{show}");
    assert_eq!(moving["drain"], true, "{show}");
    let replacement = now
        .iter()
        .find(|r| r["replaces"] == moving["id"])
        .expect("a replacement linked to it");
    assert_eq!(moving["replacement"], replacement["id"], "{show}");
    assert_ne!(str_field(replacement, "node"), drained);
    assert!(["FR", "DE", "PL"].contains(&country_of(str_field(replacement, "node"))));
    for r in &eu_replicas {
        if str_field(r, "node") != drained {
            assert!(now.contains(r), "draining {drained} changed {r}: {show}");
        }
    }
    tl.log(format_args!(
        "drained {drained}: explain --node lists {reasons:?}; its replica migrates to {} ({} ms)",
        str_field(replacement, "node"),
        took.as_millis()
    ));

    // 8. Every scheduler's own copy holds exactly the acknowledged placements.
    let status = cluster_status(&endpoints).expect("cluster status");
    let leader = u64_field(&status, "leader_id");
    assert!((1..=3).contains(&leader), "no leader: {status}");
    let leader_status = cluster.node(leader).status().expect("the leader's status");
    let committed = u64_field(&leader_status, "committed_index");
    let explanations: BTreeMap<&str, Value> = [eu, frontier]
        .into_iter()
        .map(|d| (d, sovctl(&endpoints, &["-o", "json", "explain", d]).json()))
        .collect();
    for deployment in [eu, frontier] {
        let linearizable =
            replicas(&sovctl(&endpoints, &["-o", "json", "deploy", "show", deployment]).json());
        for id in 1..=3 {
            let node = cluster.node(id);
            let endpoint = node.endpoint();
            let (applied, _) = wait_until(
                &format!("scheduler {id} to apply up to index {committed}"),
                CATCH_UP_TIMEOUT,
                || {
                    node.assert_running();
                    let s = node.status()?;
                    match u64_field(&s, "applied_index") {
                        applied if applied >= committed => Ok(applied),
                        applied => Err(format!("applied {applied}")),
                    }
                },
            );
            let local = replicas(
                &sovctl(
                    &endpoint,
                    &["-o", "json", "deploy", "show", deployment, "--stale"],
                )
                .json(),
            );
            assert_eq!(
                local, linearizable,
                "scheduler {id} (applied {applied}) disagrees on {deployment}'s replicas"
            );
            assert_eq!(policy_versions(&endpoint, true), vec![1], "scheduler {id}");
            // Placement is deterministic (I3): every scheduler explains it the same way.
            let local_explain =
                sovctl(&endpoint, &["-o", "json", "explain", deployment, "--stale"]).json();
            assert_eq!(
                excluded(&local_explain),
                excluded(&explanations[deployment]),
                "scheduler {id} explains {deployment} differently"
            );
        }
        tl.log(format_args!(
            "all 3 schedulers hold the same {} replicas of {deployment} (index >= {committed})",
            linearizable.len()
        ));
    }
    tl.log("done");
}
