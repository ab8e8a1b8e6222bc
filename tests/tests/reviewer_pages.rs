//! Reviewer pages end to end (issue #6): a real scheduler (signing its history), two real agents
//! (FR, and IE with a US parent) and real model servers. An EU-residency deployment lands on
//! IE, a `migrate` rule moves it to FR, then an `audit` rule puts it on record as violating.
//! Each page is fetched over HTTP and checked (content, 404s, no script anywhere), and headless
//! Chromium renders the timeline and the index: its DOM must hold the timeline's rows and its
//! screenshot the compliant and migrating colours, so the test fails if the timeline is not
//! drawn. Without Chromium the browser half prints SKIPPED and the rest still runs.
//!
//! Screenshots stay in the cluster's temporary directory, which a failing test keeps and names.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use sov_e2e::agent::{Agent, FR, Facts};
use sov_e2e::{Cluster, Timeline, bin, http_get, repo_path, run_bounded, sovctl, wait_until};

const WAIT: Duration = Duration::from_secs(60);
/// Longest one headless Chromium run may take (a cold start on a busy machine is seconds).
const BROWSER_WALL_MAX: Duration = Duration::from_secs(60);
const WINDOW: (u32, u32) = (1280, 900);
/// How long the model server takes to start: a replacement runs no earlier, so a move lasts
/// at least this long.
const MOVE_SECONDS: u32 = 2;
/// The timeline's bar colours (`scheduler/src/web/timeline.rs`).
const COMPLIANT_RGB: [u8; 3] = [0x2e, 0x7d, 0x32];
const MIGRATING_RGB: [u8; 3] = [0x15, 0x65, 0xc0];
/// Pixels of a bar colour that only bars can account for: the legend has one 10x10 swatch of
/// each colour, so more than four swatches' worth means bars were drawn.
const BAR_PIXELS_MIN: usize = 400;

const IE: Facts = Facts {
    country: "IE",
    operator: "Example Hyperscale Ireland Ltd",
    operator_hq: "IE",
    ultimate_parent_hq: "US",
};

/// An `audit` rule: French nodes are on record as violating for EU-residency deployments, and
/// nothing moves.
const AUDIT_FR: &str = "@id(\"audit-fr-review\")\n\
    @reason(\"French sites are under review\")\n\
    @on_change(\"audit\")\n\
    forbid (principal, action == Action::\"Place\", resource)\n\
    when { principal.residency_groups.contains(Group::\"EU27\") && resource.country == Country::\"FR\" };\n";

/// A bundle directory: the shipped schema, entity data, base permit and residency rule, plus
/// `extra` files (name, contents).
fn bundle(root: &Path, name: &str, extra: &[(&str, String)]) -> String {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).expect("bundle dir");
    for file in [
        "schema.cedarschema",
        "entities.json",
        "base.cedar",
        "residency.cedar",
    ] {
        std::fs::copy(repo_path("deploy/policies").join(file), dir.join(file)).expect("copy");
    }
    for (file, text) in extra {
        std::fs::write(dir.join(file), text).expect("write rule");
    }
    dir.to_str().expect("utf-8 path").to_string()
}

/// A rule of deploy/examples/rules, as (file name, contents).
fn example_rule(file: &'static str) -> (&'static str, String) {
    let text = std::fs::read_to_string(repo_path(&format!("deploy/examples/rules/{file}")))
        .expect("example rule");
    (file, text)
}

/// `deploy show -o json` of the deployment.
fn show(endpoints: &str, deployment: &str) -> Result<Value, String> {
    let out = sovctl(endpoints, &["deploy", "show", deployment, "-o", "json"]);
    if out.success() {
        Ok(out.json())
    } else {
        Err(out.stderr.clone())
    }
}

/// Waits until the one replica of `deployment` that should run runs on `node`, compliant or
/// as `standing` says, and nothing else of it should run.
fn wait_on(endpoints: &str, deployment: &str, node: &str, standing: &str) {
    wait_until(&format!("{deployment} {standing} on {node}"), WAIT, || {
        let d = show(endpoints, deployment)?;
        let run: Vec<&Value> = d["replicas"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["desired"] == "run")
            .collect();
        match run.as_slice() {
            [r] if r["node"] == node && r["status"] == "running" && r["standing"] == standing => {
                Ok(())
            }
            _ => Err(format!("replicas: {}", d["replicas"])),
        }
    });
}

/// GETs a page and checks its status; returns the body.
fn page(port: u16, path: &str, status: u16) -> String {
    let (code, body) = http_get(port, path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(code, status, "GET {path}:\n{body}");
    assert!(
        !body.contains("<script"),
        "GET {path} holds a script; the pages must work without JavaScript:\n{body}"
    );
    body
}

fn assert_has(body: &str, path: &str, wanted: &[&str]) {
    for w in wanted {
        assert!(body.contains(w), "GET {path} lacks {w:?}:\n{body}");
    }
}

/// `chromium` or `chromium-browser` on PATH.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name)))
        .find(|p| p.is_file())
}

/// Runs headless Chromium on `url` with `args`, bounded in time; returns its stdout.
fn browse(chromium: &Path, profile: &Path, args: &[String], url: &str) -> String {
    let mut cmd = Command::new(chromium);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .arg(format!("--window-size={},{}", WINDOW.0, WINDOW.1))
    .args(args)
    .arg(url);
    let (status, stdout, stderr) = run_bounded(&mut cmd, BROWSER_WALL_MAX);
    assert!(
        status.is_some_and(|s| s.success()),
        "chromium {args:?} {url} -> {status:?} (killed after {BROWSER_WALL_MAX:?} if None)\n--- stderr\n{stderr}"
    );
    stdout
}

/// A PNG's size and how many of its pixels have each of `colours`.
fn count_colours(png_path: &Path, colours: &[[u8; 3]]) -> ((u32, u32), Vec<usize>) {
    let file = std::fs::File::open(png_path)
        .unwrap_or_else(|e| panic!("no screenshot at {}: {e}", png_path.display()));
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size().expect("a sane PNG size")];
    let info = reader.next_frame(&mut buf).expect("a PNG frame");
    let channels = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("{}: unexpected colour type {other:?}", png_path.display()),
    };
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    let mut counts = vec![0; colours.len()];
    for y in 0..info.height as usize {
        let line = &buf[y * info.line_size..][..info.width as usize * channels];
        for pixel in line.chunks_exact(channels) {
            for (i, c) in colours.iter().enumerate() {
                if pixel[..3] == c[..] {
                    counts[i] += 1;
                }
            }
        }
    }
    ((info.width, info.height), counts)
}

#[test]
fn reviewer_pages_show_a_migration_and_a_browser_draws_its_timeline() {
    let tl = Timeline::new();
    // The harness gives every cluster a signing key.
    let cluster = Cluster::start(1, tl);
    let endpoints = cluster.endpoints();
    let http = cluster.nodes[0].http_port;
    let root = cluster.scratch();
    let pid = std::process::id();
    let (fr, ie) = (format!("fr-{pid}"), format!("ie-{pid}"));
    let _agents: Vec<Agent> = [(&fr, &FR), (&ie, &IE)]
        .into_iter()
        .map(|(n, f)| Agent::start_with_ports(&root, n, &endpoints, f, "", 2))
        .collect();
    wait_until("two nodes ready", WAIT, || {
        let nodes = sovctl(&endpoints, &["node", "list", "-o", "json"]).json();
        let ready = nodes["nodes"]
            .as_array()
            .map_or(0, |n| n.iter().filter(|n| n["status"] == "ready").count());
        if ready == 2 {
            Ok(())
        } else {
            Err(format!("{ready} ready"))
        }
    });

    // Before any policy: nothing can be placed, and the pages say so.
    let body = page(http, "/", 200);
    assert_has(
        &body,
        "/",
        &["No deployment yet", "none applied yet", "read-only"],
    );

    let v1 = bundle(&root, "v1", &[]);
    sovctl(
        &endpoints,
        &["policy", "apply", &v1, "--comment", "base <i>residency</i>"],
    )
    .assert_ok();
    // The model server starts after MOVE_SECONDS, so the move takes at least that long: the
    // migrating stretch of the timeline is wide enough to count in the screenshot.
    let spec = root.join("open-eu.toml");
    let command = format!(
        "sleep {MOVE_SECONDS}; exec {}",
        bin("sov-model-server").display()
    );
    std::fs::write(
        &spec,
        format!(
            "name = \"open-eu\"\nmodel = \"sov/tiny\"\nreplicas = 1\ncommand = [\"sh\", \"-c\", {command:?}]\n\
             [labels]\nteam = \"<script>alert(1)</script>\"\n\
             [residency]\nallowed = [\"EU27\"]\n[placement]\nprefer_countries = [\"IE\"]\n\
             [resources]\ncpu_millis = 100\nmemory_mib = 64\n\
             [health]\nhttp = \"/health\"\ninterval = \"1s\"\ntimeout = \"1s\"\n"
        ),
    )
    .expect("spec");
    sovctl(
        &endpoints,
        &["deploy", "apply", "-f", spec.to_str().unwrap()],
    )
    .assert_ok();
    wait_on(&endpoints, "open-eu", &ie, "compliant");
    tl.log("open-eu runs on IE");

    let v2 = bundle(&root, "v2", &[example_rule("eu-sovereign-operator.cedar")]);
    sovctl(
        &endpoints,
        &[
            "policy",
            "apply",
            &v2,
            "--yes",
            "--wait",
            "--wait-timeout",
            "80s",
        ],
    )
    .assert_ok();
    wait_on(&endpoints, "open-eu", &fr, "compliant");
    tl.log("open-eu moved to FR");
    // First, while the move is a large part of the timeline's window.
    browser_checks(&root, http, &ie, &fr);

    // The index: the deployment, its state, the policy in force, the label made inert.
    for path in ["/", "/deployments"] {
        let body = page(http, path, 200);
        assert_has(
            &body,
            path,
            &[
                "href=\"/deployments/open-eu\"",
                "class=\"badge compliant\"",
                "1 / 1",
                "href=\"/policies/2\"",
                "team=&lt;script&gt;alert(1)&lt;/script&gt;",
                "href=\"/violations\"",
                "href=\"/checkpoint\"",
            ],
        );
    }
    // The timeline: two rows, IE's bar turns blue at v2, FR's stays green.
    let body = page(http, "/deployments/open-eu", 200);
    assert_has(
        &body,
        "/deployments/open-eu",
        &[
            "<svg id=\"timeline\"",
            &format!("{ie} (IE)"),
            &format!("{fr} (FR)"),
            "class=\"seg migrating\"",
            "class=\"seg compliant\"",
            ">v2</text>",
            "allocation.migrated",
            "violation.detected",
            "eu-sovereign-operator",
        ],
    );
    assert_eq!(body.matches("<g class=\"row\"").count(), 2, "{body}");
    // Policies: both versions, the diff adds the rule, the comment inert.
    let body = page(http, "/policies", 200);
    assert_has(
        &body,
        "/policies",
        &[
            "href=\"/policies/1\"",
            "v2</a> (in force)",
            "base &lt;i&gt;residency&lt;/i&gt;",
        ],
    );
    let body = page(http, "/policies/2", 200);
    assert_has(
        &body,
        "/policies/2",
        &[
            "Changes since",
            "+++ v2/eu-sovereign-operator.cedar",
            "<span class=\"add\">+@id(&quot;eu-sovereign-operator&quot;)</span>",
            "<code>migrate</code>",
        ],
    );
    assert_has(
        &page(http, "/policies/1", 200),
        "/policies/1",
        &["The first version"],
    );
    assert_has(
        &page(http, "/violations", 200),
        "/violations",
        &["No open violation"],
    );

    // The checkpoint page: one signed on request, with its key id.
    let signed = sovctl(&endpoints, &["audit", "checkpoint", "-o", "json"]).json();
    let body = page(http, "/checkpoint", 200);
    let key_id = signed["key_id"].as_str().expect("key id in the checkpoint");
    assert_has(
        &body,
        "/checkpoint",
        &[key_id, "sovctl audit verify", "Current history"],
    );
    assert!(!body.contains("No checkpoint is signed yet"), "{body}");

    // Unknown things: a 404 page that says where to look.
    for path in [
        "/deployments/no-such",
        "/deployments/NOT_A_NAME",
        "/policies/99",
        "/policies/abc",
        "/no/such/page",
    ] {
        assert_has(&page(http, path, 404), path, &["Not found", "href=\"/"]);
    }

    // An audit rule: the FR replica keeps running, on record as violating.
    let v3 = bundle(
        &root,
        "v3",
        &[
            example_rule("eu-sovereign-operator.cedar"),
            ("audit-fr.cedar", AUDIT_FR.to_string()),
        ],
    );
    sovctl(&endpoints, &["policy", "apply", &v3, "--yes"]).assert_ok();
    wait_on(&endpoints, "open-eu", &fr, "violating");
    let body = page(http, "/violations", 200);
    assert_has(
        &body,
        "/violations",
        &[
            "href=\"/deployments/open-eu\"",
            &format!("{fr} (FR)"),
            "audit-fr-review",
            "none (audit)",
            "href=\"/policies/3\"",
        ],
    );
    assert_has(
        &page(http, "/", 200),
        "/",
        &[
            "class=\"badge violating\"",
            "violating (audit: audit-fr-review)",
        ],
    );
    assert_has(
        &page(http, "/deployments/open-eu", 200),
        "/deployments/open-eu",
        &["class=\"seg violating\"", ">v3</text>"],
    );
    tl.log("pages checked");
}

/// Headless Chromium on the timeline and the index: the DOM holds the rows, the screenshot
/// the bar colours.
fn browser_checks(root: &Path, http: u16, ie: &str, fr: &str) {
    let Some(chromium) = chromium() else {
        // Written past the test harness's capture, so a passing run shows it too.
        let _ = writeln!(
            std::io::stderr().lock(),
            "SKIPPED: chromium not installed (apt-get install chromium); reviewer pages checked over HTTP only, not in a browser"
        );
        return;
    };
    let profile = root.join("chromium-profile");
    let base = format!("http://127.0.0.1:{http}");
    let dom = browse(
        &chromium,
        &profile,
        &["--dump-dom".into()],
        &format!("{base}/deployments/open-eu"),
    );
    assert_has(
        &dom,
        "the timeline's DOM",
        &[
            "<svg id=\"timeline\"",
            &format!("{ie} (IE)"),
            &format!("{fr} (FR)"),
        ],
    );
    assert_eq!(dom.matches("<g class=\"row\"").count(), 2, "{dom}");
    let dom = browse(
        &chromium,
        &profile,
        &["--dump-dom".into()],
        &format!("{base}/"),
    );
    assert_has(&dom, "the index's DOM", &["open-eu", "badge compliant"]);

    for (name, path) in [("timeline", "/deployments/open-eu"), ("index", "/")] {
        let png = root.join(format!("{name}.png"));
        browse(
            &chromium,
            &profile,
            &[format!("--screenshot={}", png.display())],
            &format!("{base}{path}"),
        );
        let (size, counts) = count_colours(&png, &[COMPLIANT_RGB, MIGRATING_RGB]);
        assert_eq!(size, WINDOW, "{} has the wrong size", png.display());
        eprintln!(
            "{name} screenshot {}: {} compliant and {} migrating pixels",
            png.display(),
            counts[0],
            counts[1]
        );
        if name == "timeline" {
            assert!(
                counts[0] > BAR_PIXELS_MIN && counts[1] > BAR_PIXELS_MIN,
                "the timeline is not drawn: {} compliant and {} migrating pixels (more than {BAR_PIXELS_MIN} each wanted); see {}",
                counts[0],
                counts[1],
                png.display()
            );
        }
    }
}
