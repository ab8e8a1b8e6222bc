//! The systemd units in `deploy/systemd/`: each runs its binary as a dedicated user with the
//! hardening the operator guide promises (no new privileges, a read-only system, one state
//! directory that matches the example config's data dir, a restart policy); `systemd-analyze
//! verify` finds nothing to say about them, and `systemd-analyze security` rates their
//! exposure at most `EXPOSURE_MAX`. Where `systemd-analyze` is not installed those two checks
//! print a loud SKIPPED line (tests/run.sh installs it on Debian when it runs as root).
//!
//! This checks the unit files, not a live systemd: a machine running the tests has no systemd
//! to start services under.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::Command;

use sov_e2e::{bin, repo_path};

/// `systemd-analyze security` exposure (0-100; systemd prints it divided by ten) above which a
/// unit fails the test: both are rated "OK" (below 2.5) by systemd 252, with room for newer
/// versions that weigh settings differently.
const EXPOSURE_MAX: u32 = 30;

struct Unit {
    file: &'static str,
    binary: &'static str,
    user: &'static str,
    state_dir: &'static str,
    config: &'static str,
    example: &'static str,
}

const UNITS: [Unit; 2] = [
    Unit {
        file: "sov-scheduler.service",
        binary: "sov-scheduler",
        user: "sov",
        state_dir: "sov",
        config: "/etc/sov/scheduler.toml",
        example: "deploy/scheduler.example.toml",
    },
    Unit {
        file: "sov-agent.service",
        binary: "sov-agent",
        user: "sov-agent",
        state_dir: "sov-agent",
        config: "/etc/sov/agent.toml",
        example: "deploy/agent.example.toml",
    },
];

/// `Key=value` settings of a unit file (a key set twice keeps every value, in order).
fn settings(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        if let Some((key, value)) = line.split_once('=') {
            map.entry(key.to_owned())
                .or_default()
                .push(value.to_owned());
        }
    }
    map
}

fn one<'a>(settings: &'a BTreeMap<String, Vec<String>>, unit: &str, key: &str) -> &'a str {
    match settings.get(key).map(Vec::as_slice) {
        Some([value]) => value,
        other => panic!("{unit}: expected one {key}=, found {other:?}"),
    }
}

#[test]
fn units_run_as_a_dedicated_user_with_hardening_a_state_directory_and_restarts() {
    let sysusers = std::fs::read_to_string(repo_path("deploy/systemd/sov.sysusers")).unwrap();
    for unit in &UNITS {
        let text =
            std::fs::read_to_string(repo_path(&format!("deploy/systemd/{}", unit.file))).unwrap();
        let s = settings(&text);
        let name = unit.file;
        assert_eq!(one(&s, name, "User"), unit.user);
        assert!(
            sysusers
                .lines()
                .any(|l| l.split_whitespace().take(2).eq(["u", unit.user])),
            "{name}: user {} is not declared in sov.sysusers",
            unit.user
        );
        assert_eq!(
            one(&s, name, "ExecStart"),
            format!(
                "/usr/local/bin/{} run --config {}",
                unit.binary, unit.config
            )
        );
        for (key, want) in [
            ("NoNewPrivileges", "yes"),
            ("ProtectSystem", "strict"),
            ("ProtectHome", "yes"),
            ("PrivateTmp", "yes"),
            ("CapabilityBoundingSet", ""),
            ("StateDirectory", unit.state_dir),
        ] {
            assert_eq!(one(&s, name, key), want, "{name}: {key}");
        }
        assert!(
            matches!(one(&s, name, "Restart"), "on-failure" | "always"),
            "{name}: Restart"
        );
        // The example config the install steps copy to /etc/sov writes where the unit lets it.
        let example = std::fs::read_to_string(repo_path(unit.example)).unwrap();
        let data_dir = format!("data_dir = \"/var/lib/{}\"", unit.state_dir);
        assert!(
            example.lines().any(|l| l.trim() == data_dir),
            "{}: expected `{data_dir}` to match {name}",
            unit.example
        );
    }
    let agent =
        settings(&std::fs::read_to_string(repo_path("deploy/systemd/sov-agent.service")).unwrap());
    assert_eq!(
        one(&agent, "sov-agent.service", "KillMode"),
        "process",
        "model servers must survive an agent restart (the agent re-adopts them)"
    );
}

#[test]
fn systemd_analyze_accepts_the_units_and_rates_them_ok() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        let _ = writeln!(
            std::io::stderr().lock(),
            "SKIPPED: systemd-analyze not installed (Debian: apt-get install systemd); unit files not verified"
        );
        return;
    }
    // `verify` checks that ExecStart names an executable: point it at the built binaries.
    let dir = tempfile::tempdir().unwrap();
    for unit in &UNITS {
        let text =
            std::fs::read_to_string(repo_path(&format!("deploy/systemd/{}", unit.file))).unwrap();
        let built = bin(unit.binary);
        let local = text.replace(
            &format!("/usr/local/bin/{}", unit.binary),
            built.to_str().unwrap(),
        );
        let path = dir.path().join(unit.file);
        std::fs::write(&path, local).unwrap();

        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&path)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr).to_string();
        let about_it: Vec<&str> = said.lines().filter(|l| l.contains(unit.file)).collect();
        assert!(
            out.status.success() && about_it.is_empty(),
            "systemd-analyze verify {}: {}\n{said}",
            unit.file,
            out.status
        );

        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=true"])
            .arg(format!("--threshold={EXPOSURE_MAX}"))
            .arg(&path)
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&out.stdout);
        let overall = report.lines().last().unwrap_or("");
        assert!(
            out.status.success(),
            "{}: exposure above {EXPOSURE_MAX}: {overall}\n{report}",
            unit.file
        );
        eprintln!("{overall}");
    }
}
