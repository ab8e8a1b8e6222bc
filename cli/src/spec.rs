//! Deployment spec files: the TOML an ML engineer writes, read strictly into a `DeploymentSpec`.
//!
//! Owns the file format and its error messages (with `FILE:LINE:COLUMN`, so a typo is found
//! without guessing). It does not judge values (DNS-label names, replica counts, GPU models): the
//! scheduler validates every client's input once, and its answer reaches the user unchanged.

use std::collections::BTreeMap;
use std::io::Read;

use serde::Deserialize;
use sov_proto::v1::{
    DeploymentSpec, ExportAttributes, HealthCheck, Migration, PlacementPreferences, Residency,
    Resources,
};

use crate::UsageError;

/// The file as written. `deny_unknown_fields` turns a misspelt key into an error instead of a
/// silently ignored setting (a `replica = 3` that deploys one replica is worse than a refusal).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecFile {
    name: String,
    model: String,
    replicas: u32,
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    resources: ResourcesFile,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    export: ExportFile,
    #[serde(default)]
    residency: ResidencyFile,
    #[serde(default)]
    health: HealthFile,
    #[serde(default)]
    placement: PlacementFile,
    /// Absent: the scheduler's defaults (one replacement at a time, 10 minutes).
    #[serde(default)]
    migration: Option<MigrationFile>,
    /// e.g. "30s": stop the replicas when their agent is cut off from the schedulers this long.
    #[serde(default)]
    stop_after_disconnect: Option<String>,
    /// Absolute directory the command runs in; default: the allocation's own directory.
    #[serde(default)]
    working_dir: String,
}

/// Soft preferences: `spread = "node" | "site" | "country" | "none"`, preferred countries/sites.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct PlacementFile {
    spread: String,
    prefer_countries: Vec<String>,
    prefer_sites: Vec<String>,
}

/// How replicas move when a `migrate` rule or a drain says they must leave their node:
/// `max_parallel = 2` replacements at once (0 = the default, 1), and `deadline = "10m"`, how
/// long the old replica may keep running (absent = the default, 10m; `"0s"` = stop it at once).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct MigrationFile {
    max_parallel: u32,
    deadline: Option<String>,
}

/// How the agent checks that a model server is healthy: `http = "/health"` or `tcp = true`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct HealthFile {
    http: String,
    tcp: bool,
    interval: Option<String>,
    timeout: Option<String>,
}

/// Export-control attributes of the model; policy decides where such a model may run.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ExportFile {
    eccn: String,
    weights_published: bool,
    training_compute_log10: u32,
    lineage: Vec<String>,
}

/// The deployment's own residency requirement, on top of the cluster's policy.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ResidencyFile {
    allowed: Vec<String>,
    min_location_trust: u32,
    required_certifications: Vec<String>,
}

/// Per-replica resources; every key is optional and zero (or empty) means "no requirement".
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ResourcesFile {
    gpu_count: u32,
    gpu_model: String,
    gpu_memory_mib: u64,
    cpu_millis: u32,
    memory_mib: u64,
}

/// Default probe timing when a check is set but its timing is not.
const HEALTH_INTERVAL_DEFAULT: &str = "10s";
const HEALTH_TIMEOUT_DEFAULT: &str = "2s";

fn millis(field: &str, text: &str) -> Result<u64, String> {
    crate::duration::parse_deadline(text)
        .map(|d| d.as_millis() as u64)
        .map_err(|e| format!("{field}: {e}"))
}

/// The `[migration]` table. Its deadline may be 0 and is not capped here: the scheduler judges
/// it (at most 30 days), as it judges every other value of a spec.
fn migration(file: &MigrationFile) -> Result<Migration, String> {
    let deadline_ms = match file.deadline.as_deref() {
        None => None,
        Some(text) => Some(
            crate::duration::parse(text)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .map_err(|e| format!("migration.deadline: {e}"))?,
        ),
    };
    Ok(Migration {
        max_parallel: file.max_parallel,
        deadline_ms,
    })
}

impl TryFrom<SpecFile> for DeploymentSpec {
    type Error = String;

    fn try_from(file: SpecFile) -> Result<Self, String> {
        let h = &file.health;
        let checked = !h.http.is_empty() || h.tcp;
        let interval = h.interval.as_deref().unwrap_or(HEALTH_INTERVAL_DEFAULT);
        let timeout = h.timeout.as_deref().unwrap_or(HEALTH_TIMEOUT_DEFAULT);
        let health = HealthCheck {
            http_path: h.http.clone(),
            tcp: h.tcp,
            interval_ms: if checked {
                millis("health.interval", interval)?.min(u64::from(u32::MAX)) as u32
            } else {
                0
            },
            timeout_ms: if checked {
                millis("health.timeout", timeout)?.min(u64::from(u32::MAX)) as u32
            } else {
                0
            },
        };
        let stop_after_disconnect_ms = match file.stop_after_disconnect.as_deref() {
            None => 0,
            Some(text) => millis("stop_after_disconnect", text)?,
        };
        let migration = file.migration.as_ref().map(migration).transpose()?;
        Ok(to_spec(file, health, stop_after_disconnect_ms, migration))
    }
}

fn to_spec(
    file: SpecFile,
    health: HealthCheck,
    stop_after_disconnect_ms: u64,
    migration: Option<Migration>,
) -> DeploymentSpec {
    let r = file.resources;
    DeploymentSpec {
        name: file.name,
        model: file.model,
        replicas: file.replicas,
        resources: Some(Resources {
            gpu_count: r.gpu_count,
            gpu_model: r.gpu_model,
            gpu_memory_mib: r.gpu_memory_mib,
            cpu_millis: r.cpu_millis,
            memory_mib: r.memory_mib,
        }),
        command: file.command,
        env: file.env.into_iter().collect(),
        labels: file.labels.into_iter().collect(),
        export: Some(ExportAttributes {
            eccn: file.export.eccn,
            weights_published: file.export.weights_published,
            training_compute_log10: file.export.training_compute_log10,
            lineage: file.export.lineage,
        }),
        residency: Some(Residency {
            allowed: file.residency.allowed,
            min_location_trust: file.residency.min_location_trust,
            required_certifications: file.residency.required_certifications,
        }),
        health: Some(health),
        stop_after_disconnect_ms,
        working_dir: file.working_dir,
        placement: Some(PlacementPreferences {
            spread: file.placement.spread,
            prefer_countries: file.placement.prefer_countries,
            prefer_sites: file.placement.prefer_sites,
        }),
        migration,
    }
}

/// Reads and parses the spec at `path`; `-` means standard input, so specs can be piped in.
pub fn read(path: &str) -> Result<DeploymentSpec, UsageError> {
    let (text, source) = if path == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| UsageError(format!("cannot read spec from standard input: {e}")))?;
        (text, "<stdin>")
    } else {
        let text = std::fs::read_to_string(path)
            .map_err(|e| UsageError(format!("cannot read spec file {path}: {e}")))?;
        (text, path)
    };
    parse(&text, source)
}

/// Parses spec text; `source` names the file in error messages.
pub fn parse(text: &str, source: &str) -> Result<DeploymentSpec, UsageError> {
    let file: SpecFile = toml::from_str(text).map_err(|e| {
        // toml's own Display draws a multi-line source excerpt; sovctl reports one line.
        let message = e.message().trim();
        match e.span() {
            // A missing key comes with an empty span at 0 (or one over the whole file): it
            // points nowhere in particular, and "line 1" would send the reader looking there.
            Some(span) if !(span.start == 0 && (span.is_empty() || span.end >= text.len())) => {
                let (line, column) = line_column(text, span.start);
                UsageError(format!("{source}:{line}:{column}: {message}"))
            }
            _ => UsageError(format!("{source}: {message}")),
        }
    })?;
    DeploymentSpec::try_from(file).map_err(|e| UsageError(format!("{source}: {e}")))
}

/// 1-based line and column (in characters) of byte offset `at`.
fn line_column(text: &str, at: usize) -> (usize, usize) {
    let before = &text[..at.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
name = "mistral-7b"
model = "mistralai/Mistral-7B-Instruct-v0.3"
replicas = 2
command = ["python3", "-m", "http.server"]

[resources]
gpu_count = 1
gpu_model = ""
gpu_memory_mib = 40000
cpu_millis = 4000
memory_mib = 16384

[env]
HF_HUB_OFFLINE = "1"

[labels]
team = "nlp"

[export]
eccn = "4E091"
weights_published = true
training_compute_log10 = 26
lineage = ["base"]

[residency]
allowed = ["EU27", "CH"]
min_location_trust = 2
required_certifications = ["secnumcloud"]
"#;

    #[test]
    fn full_spec_maps_every_field() {
        let spec = parse(FULL, "mistral.toml").unwrap();
        assert_eq!(spec.name, "mistral-7b");
        assert_eq!(spec.model, "mistralai/Mistral-7B-Instruct-v0.3");
        assert_eq!(spec.replicas, 2);
        assert_eq!(spec.command, ["python3", "-m", "http.server"]);
        let r = spec.resources.unwrap();
        assert_eq!(
            (
                r.gpu_count,
                r.gpu_model.as_str(),
                r.gpu_memory_mib,
                r.cpu_millis,
                r.memory_mib
            ),
            (1, "", 40000, 4000, 16384)
        );
        assert_eq!(
            spec.env.get("HF_HUB_OFFLINE").map(String::as_str),
            Some("1")
        );
        assert_eq!(spec.labels.get("team").map(String::as_str), Some("nlp"));
        assert_eq!(
            spec.export,
            Some(ExportAttributes {
                eccn: "4E091".into(),
                weights_published: true,
                training_compute_log10: 26,
                lineage: vec!["base".into()],
            })
        );
        assert_eq!(
            spec.residency,
            Some(Residency {
                allowed: vec!["EU27".into(), "CH".into()],
                min_location_trust: 2,
                required_certifications: vec!["secnumcloud".into()],
            })
        );
    }

    #[test]
    fn optional_sections_default_to_zero_and_empty() {
        let spec = parse("name = \"a\"\nmodel = \"m\"\nreplicas = 1\n", "a.toml").unwrap();
        assert!(spec.command.is_empty() && spec.env.is_empty() && spec.labels.is_empty());
        assert_eq!(spec.resources, Some(Resources::default()));
    }

    #[test]
    fn unknown_top_level_field_names_field_and_line() {
        let text = "name = \"a\"\nmodel = \"m\"\nreplica = 1\n";
        let err = parse(text, "a.toml").unwrap_err().0;
        assert!(err.starts_with("a.toml:3:1: "), "{err}");
        assert!(err.contains("unknown field `replica`"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn unknown_resources_field_names_field_and_line() {
        let text = "name = \"a\"\nmodel = \"m\"\nreplicas = 1\n[resources]\ngpus = 2\n";
        let err = parse(text, "a.toml").unwrap_err().0;
        assert!(err.starts_with("a.toml:5:1: "), "{err}");
        assert!(err.contains("unknown field `gpus`"), "{err}");
    }

    #[test]
    fn missing_name_is_reported() {
        let err = parse("model = \"m\"\nreplicas = 1\n", "a.toml")
            .unwrap_err()
            .0;
        assert_eq!(err, "a.toml: missing field `name`");
    }

    #[test]
    fn wrong_type_is_reported_with_position() {
        let err = parse("name = \"a\"\nmodel = \"m\"\nreplicas = -1\n", "a.toml")
            .unwrap_err()
            .0;
        assert!(err.starts_with("a.toml:3:12: "), "{err}");
    }

    #[test]
    fn health_check_and_disconnect_rule_become_milliseconds() {
        let text = "name = \"a\"\nmodel = \"m\"\nreplicas = 1\nstop_after_disconnect = \"1m30s\"\n[health]\nhttp = \"/health\"\ninterval = \"5s\"\n";
        let spec = parse(text, "s.toml").unwrap();
        let health = spec.health.unwrap();
        assert_eq!(
            (
                health.http_path.as_str(),
                health.interval_ms,
                health.timeout_ms
            ),
            ("/health", 5_000, 2_000)
        );
        assert_eq!(spec.stop_after_disconnect_ms, 90_000);

        let unchecked = parse("name = \"a\"\nmodel = \"m\"\nreplicas = 1\n", "s.toml").unwrap();
        assert_eq!(
            unchecked.health.unwrap().interval_ms,
            0,
            "no probe, no timing"
        );
        assert_eq!(unchecked.stop_after_disconnect_ms, 0);

        let err = parse(
            "name = \"a\"\nmodel = \"m\"\nreplicas = 1\nstop_after_disconnect = \"30\"\n",
            "s.toml",
        )
        .unwrap_err();
        assert!(
            err.0.starts_with("s.toml: stop_after_disconnect:"),
            "{}",
            err.0
        );
    }

    #[test]
    fn migration_table_sets_parallelism_and_deadline() {
        let base = "name = \"a\"\nmodel = \"m\"\nreplicas = 3\n";
        let spec = parse(
            &format!("{base}[migration]\nmax_parallel = 2\ndeadline = \"10m\"\n"),
            "m.toml",
        )
        .unwrap();
        assert_eq!(
            spec.migration,
            Some(Migration {
                max_parallel: 2,
                deadline_ms: Some(600_000),
            })
        );
        let at_once = parse(&format!("{base}[migration]\ndeadline = \"0s\"\n"), "m.toml").unwrap();
        assert_eq!(
            at_once.migration,
            Some(Migration {
                max_parallel: 0,
                deadline_ms: Some(0),
            })
        );
        // An empty table asks for the defaults, as an absent one does, but says so explicitly.
        let empty = parse(&format!("{base}[migration]\n"), "m.toml").unwrap();
        assert_eq!(empty.migration, Some(Migration::default()));
        assert_eq!(parse(base, "m.toml").unwrap().migration, None);
    }

    #[test]
    fn migration_table_refuses_unknown_keys_and_bad_durations() {
        let base = "name = \"a\"\nmodel = \"m\"\nreplicas = 3\n[migration]\n";
        let err = parse(&format!("{base}parallel = 2\n"), "m.toml")
            .unwrap_err()
            .0;
        assert!(err.starts_with("m.toml:5:1: "), "{err}");
        assert!(err.contains("unknown field `parallel`"), "{err}");
        let err = parse(&format!("{base}deadline = \"10\"\n"), "m.toml")
            .unwrap_err()
            .0;
        assert!(
            err.starts_with("m.toml: migration.deadline: \"10\" is not a duration"),
            "{err}"
        );
    }

    #[test]
    fn line_column_counts_characters_not_bytes() {
        assert_eq!(line_column("ab\ncé d", 7), (2, 4));
        assert_eq!(line_column("x", 0), (1, 1));
    }

    #[test]
    fn shipped_examples_parse() {
        for file in ["tiny-echo.toml", "mistral-7b.toml", "frontier-4e091.toml"] {
            let path = format!("{}/../deploy/examples/{file}", env!("CARGO_MANIFEST_DIR"));
            let spec = read(&path).unwrap_or_else(|e| panic!("{file}: {}", e.0));
            assert!(!spec.name.is_empty() && spec.replicas > 0, "{file}");
            assert_eq!(
                file,
                format!("{}.toml", spec.name),
                "file named after the deployment"
            );
        }
    }

    #[test]
    fn shipped_examples_show_residency_and_export_control() {
        let read_example = |file: &str| {
            read(&format!(
                "{}/../deploy/examples/{file}",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap_or_else(|e| panic!("{file}: {}", e.0))
        };
        let mistral = read_example("mistral-7b.toml");
        assert_eq!(mistral.residency.unwrap().allowed, ["EU27"]);
        let frontier = read_example("frontier-4e091.toml");
        let export = frontier.export.unwrap();
        assert_eq!(
            (export.eccn.as_str(), export.training_compute_log10),
            ("4E091", 26)
        );
        let r = frontier.resources.unwrap();
        assert_eq!((r.gpu_count, r.gpu_memory_mib), (8, 80_000));
    }
}
