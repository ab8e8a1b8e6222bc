//! The agent's configuration file (`sov-agent --config agent.toml`): which schedulers to talk
//! to, what this node is called, where it is and who runs it, and (for dev/test fleets only)
//! which GPUs to pretend it has.
//!
//! Owns: the file format, defaults, and validation. Location facts are checked here with the
//! scheduler's own rules ([`validate_node`]) so a malformed fact stops the agent at start with a
//! sentence naming the file and the field, instead of a registration the scheduler refuses (or,
//! worse, a node placed by policy on the strength of a typo).
//!
//! The file is read in two steps: serde turns TOML into a private `ConfigFile` that mirrors it
//! (strings stay strings, so a bad duration or trust value can be reported with its field's
//! name, which serde's own errors cannot do), then [`AgentConfig::validate`] checks the typed
//! result. Programs that build an [`AgentConfig`] themselves (the fleet simulator) call
//! `validate` too.
//!
//! The `[tls]` table only names the agent's certificate files; whether they exist and fit this
//! node is checked when the agent starts ([`crate::credentials`]), after `--tls-*` flags have
//! had their say.
//!
//! ```toml
//! name = "fr-par-1"
//! schedulers = ["10.0.0.5:7400", "10.0.0.6:7400"]
//! data_dir = "/var/lib/sov-agent"
//! refingerprint_interval = "60s"
//! stop_grace = "10s"
//!
//! [tls]
//! ca = "/etc/sov/tls/ca.crt"
//! cert = "/etc/sov/tls/fr-par-1.crt"
//! key = "/etc/sov/tls/fr-par-1.key"
//!
//! [location]
//! country = "FR"
//! subdivision = "FR-IDF"
//! site = "par-1"
//! operator = "Example Cloud SAS"
//! operator_hq = "FR"
//! ultimate_parent_hq = "FR"
//! trust = "self-reported"
//!
//! [location.certifications]
//! secnumcloud = "2027-06-30"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sov_scheduler::state::ValidationError;
use sov_scheduler::state::node::{Gpu, Inventory, LocationTrust, NodeFacts};
use sov_scheduler::state::{validate_deployment_name, validate_node};

/// Used when the file leaves `refingerprint_interval` out: often enough to notice a GPU that
/// fell off the bus within a minute, rarely enough that NVML queries cost nothing measurable.
pub const REFINGERPRINT_INTERVAL_DEFAULT: Duration = Duration::from_secs(60);
/// Below one second re-fingerprinting would be busy work: hardware does not change that fast.
pub const REFINGERPRINT_INTERVAL_MIN: Duration = Duration::from_secs(1);
/// Above an hour a lost GPU would keep attracting placements for too long.
pub const REFINGERPRINT_INTERVAL_MAX: Duration = Duration::from_secs(3_600);

/// Used when the file leaves `stop_grace` out: what container runtimes use, long enough for a
/// model server to finish in-flight requests.
pub const STOP_GRACE_DEFAULT: Duration = Duration::from_secs(10);
/// A shorter grace is a SIGKILL in disguise.
pub const STOP_GRACE_MIN: Duration = Duration::from_millis(100);
/// A server that has not exited after ten minutes is hung; waiting longer only delays drains.
pub const STOP_GRACE_MAX: Duration = Duration::from_secs(600);

/// Faster heartbeats would load the leader without detecting failures any sooner in practice.
pub const HEARTBEAT_INTERVAL_MIN: Duration = Duration::from_millis(100);
/// Slower heartbeats would outlive any sensible liveness TTL on the scheduler.
pub const HEARTBEAT_INTERVAL_MAX: Duration = Duration::from_secs(60);

/// A scheduler cluster has 3 to 7 voters; a longer list is a mistake (or a copy-paste loop).
pub const SCHEDULERS_MAX: usize = 16;
/// Longer than any sensible `https://host:port`.
pub const SCHEDULER_URL_LEN_MAX: usize = 256;
/// Per `[[simulated_gpus]]` entry; the scheduler caps a node at 64 GPUs in total as well.
pub const SIMULATED_GPU_COUNT_MAX: u32 = 64;

/// A validated agent configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// Node name: a DNS label (lowercase letters, digits, '-'), unique in the cluster and stable
    /// across restarts, because allocations are bound to it.
    pub name: String,
    /// Scheduler API endpoints as written (`host:port`, `https://host:port` or
    /// `http://host:port`, all meaning that host and port: every connection is mutual TLS).
    /// Any member will do: the agent follows whichever one is the leader, so list them all to
    /// survive the loss of any one. [`scheduler_address`] gives the `host:port` of each.
    pub schedulers: Vec<String>,
    /// Allocation directories, model-server logs and the agent's state files live here, so an
    /// agent restarted with the same directory re-adopts the servers it started. A relative
    /// path is relative to the agent's working directory.
    pub data_dir: PathBuf,
    /// How often to heartbeat; `None` uses what the scheduler asks for at registration, which
    /// is right unless you are testing liveness detection.
    pub heartbeat_interval: Option<Duration>,
    /// How often inventory is re-measured (it also is on SIGHUP).
    pub refingerprint_interval: Duration,
    /// Time between SIGTERM and SIGKILL when a model server is stopped.
    pub stop_grace: Duration,
    /// Where the node is and who operates it, exactly as registration reports them, always as
    /// [`LocationTrust::SelfReported`]: what the operator vouches for travels in the agent's
    /// certificate, and the scheduler takes it from there.
    pub location: NodeFacts,
    /// Replaces measured CPU and memory where set.
    pub resources: ResourceOverrides,
    /// GPUs that do not exist, for dev/test fleets; reported with `simulated = true`.
    pub simulated_gpus: Vec<SimulatedGpus>,
    /// `[tls]`: the agent's certificate files. Required to run, but checked at start
    /// ([`crate::credentials::Credentials::for_node`]) since flags may supply them.
    pub tls: TlsPaths,
}

/// `[tls]`: PEM files issued by the cluster's CA (`sovctl ca issue --role agent --name NODE
/// --out DIR` writes all three into DIR). A relative path is relative to the agent's working
/// directory. `--tls-ca`, `--tls-cert` and `--tls-key` override each key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsPaths {
    /// The cluster CA's certificate (`ca.crt`): the only issuer of scheduler certificates the
    /// agent trusts.
    pub ca: Option<PathBuf>,
    /// This agent's certificate (`NODE.crt`), naming the node and the location facts the
    /// operator vouches for.
    pub cert: Option<PathBuf>,
    /// Its private key (`NODE.key`), readable by the agent's user only.
    pub key: Option<PathBuf>,
}

/// `[resources]`: what to offer the scheduler instead of what the machine has, e.g. to keep
/// some CPU and memory for the operating system and the agent itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceOverrides {
    /// CPU in thousandths of a core (16 cores = 16000); unset: logical CPUs x 1000.
    pub cpu_millis: Option<u32>,
    /// Memory in MiB; unset: total physical memory.
    pub memory_mib: Option<u64>,
    /// First and last port (inclusive) the scheduler may give this node's model servers;
    /// unset: 20000-20999. Distinct ranges let several agents share one host (dev clusters).
    pub port_first: Option<u16>,
    pub port_last: Option<u16>,
}

impl ResourceOverrides {
    /// The port range as [`Inventory`] carries it: (0, 0) when unset, which the scheduler reads
    /// as its default range. [`AgentConfig::validate`] ensures both ends are set or neither.
    pub fn ports(&self) -> (u16, u16) {
        (self.port_first.unwrap_or(0), self.port_last.unwrap_or(0))
    }
}

/// One `[[simulated_gpus]]` entry: `count` identical GPUs that exist only on paper. For
/// exercising placement and the agent on machines without GPUs; never on a production node,
/// where a workload would be placed on hardware that is not there.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatedGpus {
    /// Model name as NVML would report it, e.g. "NVIDIA H100 80GB HBM3", so placement
    /// constraints written for real fleets match.
    pub model: String,
    /// Memory of one GPU in MiB.
    pub memory_mib: u64,
    /// How many GPUs this entry declares (1 to 64; default 1).
    #[serde(default = "one")]
    pub count: u32,
}

fn one() -> u32 {
    1
}

/// Why a configuration was refused. Every variant names the file; parse and validation errors
/// name the line or field too.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The I/O error is part of the message rather than a `source`, so `{:#}` at the binary's
    /// edge does not print it twice.
    #[error("{origin}: cannot read the agent configuration: {error}")]
    Read {
        origin: String,
        error: std::io::Error,
    },
    /// Not TOML, a value of the wrong type, or a field the agent does not know.
    #[error("{origin}:{position}: {message}")]
    Parse {
        origin: String,
        /// `line:column`, or empty when TOML gives no position.
        position: String,
        message: String,
    },
    #[error("{origin}: {error}")]
    Invalid {
        origin: String,
        error: ValidationError,
    },
}

impl AgentConfig {
    /// Reads, parses and validates the file at `path`. Errors start with the path as given.
    pub fn load(path: impl AsRef<Path>) -> anyhow::Result<AgentConfig> {
        let path = path.as_ref();
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            origin: origin.clone(),
            error,
        })?;
        Ok(Self::from_toml_str(&text, &origin)?)
    }

    /// Parses and validates `text`; `origin` (a file name) starts every error message.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<AgentConfig, ConfigError> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| parse_error(text, origin, &e))?;
        let invalid = |error| ConfigError::Invalid {
            origin: origin.to_owned(),
            error,
        };
        let config = file.into_config().map_err(invalid)?;
        config.validate().map_err(invalid)?;
        Ok(config)
    }

    /// Location facts as registration reports them.
    pub fn facts(&self) -> NodeFacts {
        self.location.clone()
    }

    /// Checks everything the file can get wrong; the first problem is returned, with the field
    /// named as it is written in the file (`location.country`, `simulated_gpus[1].count`).
    pub fn validate(&self) -> Result<(), ValidationError> {
        if let Err(e) = validate_deployment_name(&self.name) {
            return Err(invalid("name", e.message));
        }
        self.validate_schedulers()?;
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid(
                "data_dir",
                "is required: the directory for allocation state and model-server logs \
                 (e.g. \"/var/lib/sov-agent\")",
            ));
        }
        if let Some(interval) = self.heartbeat_interval {
            check_range(
                "heartbeat_interval",
                interval,
                HEARTBEAT_INTERVAL_MIN,
                HEARTBEAT_INTERVAL_MAX,
            )?;
        }
        check_range(
            "refingerprint_interval",
            self.refingerprint_interval,
            REFINGERPRINT_INTERVAL_MIN,
            REFINGERPRINT_INTERVAL_MAX,
        )?;
        check_range(
            "stop_grace",
            self.stop_grace,
            STOP_GRACE_MIN,
            STOP_GRACE_MAX,
        )?;
        self.validate_location_presence()?;
        self.validate_resources()?;
        self.validate_simulated_gpus()?;

        // The scheduler's own checks, on exactly what registration will send (minus the
        // measured inventory, which is not known yet), so nothing it would refuse gets past.
        let inventory = Inventory {
            cpu_millis: self.resources.cpu_millis.unwrap_or(0),
            memory_mib: self.resources.memory_mib.unwrap_or(0),
            gpus: simulated_gpu_list(&self.name, &self.simulated_gpus, 0),
            port_first: self.resources.ports().0,
            port_last: self.resources.ports().1,
        };
        validate_node(&self.name, &self.location, &inventory).map_err(|e| ValidationError {
            field: config_field(&e.field, &self.simulated_gpus),
            message: e.message,
        })
    }

    fn validate_schedulers(&self) -> Result<(), ValidationError> {
        if self.schedulers.is_empty() {
            return Err(invalid(
                "schedulers",
                "at least one scheduler endpoint is required, e.g. \
                 schedulers = [\"http://10.0.0.5:7400\"]",
            ));
        }
        if self.schedulers.len() > SCHEDULERS_MAX {
            return Err(invalid(
                "schedulers",
                format!(
                    "lists {} endpoints; the limit is {SCHEDULERS_MAX} (one per scheduler)",
                    self.schedulers.len()
                ),
            ));
        }
        let mut seen = Vec::with_capacity(self.schedulers.len());
        for (i, url) in self.schedulers.iter().enumerate() {
            let field = format!("schedulers[{i}]");
            let address = scheduler_address(url).map_err(|message| invalid(&field, message))?;
            // "http://a:1" and "a:1" are one scheduler: listing both would only skew the
            // rotation towards it.
            if seen.contains(&address) {
                return Err(invalid(field, format!("{url:?} is listed twice")));
            }
            seen.push(address);
        }
        Ok(())
    }

    /// The scheduler accepts empty facts (older agents, tests); a configured node must state
    /// them, because residency policies decide on them and an empty one matches nothing.
    fn validate_location_presence(&self) -> Result<(), ValidationError> {
        let facts = &self.location;
        for (field, value, example) in [
            ("location.country", &facts.country, "\"FR\""),
            ("location.site", &facts.site, "\"par-1\""),
            (
                "location.operator",
                &facts.operator,
                "\"Example Cloud SAS\"",
            ),
            ("location.operator_hq", &facts.operator_hq, "\"FR\""),
            (
                "location.ultimate_parent_hq",
                &facts.ultimate_parent_hq,
                "\"FR\"",
            ),
        ] {
            if value.trim().is_empty() {
                let key = field.trim_start_matches("location.");
                return Err(invalid(
                    field,
                    format!(
                        "is required: residency policies decide on it (e.g. {key} = {example} \
                         under [location])"
                    ),
                ));
            }
        }
        if facts.location_trust != LocationTrust::SelfReported {
            return Err(invalid("location.trust", trust_unsupported_message()));
        }
        Ok(())
    }

    fn validate_resources(&self) -> Result<(), ValidationError> {
        if self.resources.cpu_millis == Some(0) {
            return Err(invalid(
                "resources.cpu_millis",
                "must be above 0; leave it out to offer what the machine has",
            ));
        }
        if self.resources.memory_mib == Some(0) {
            return Err(invalid(
                "resources.memory_mib",
                "must be above 0; leave it out to offer what the machine has",
            ));
        }
        // One end alone would silently fall back to the default range at registration.
        match (self.resources.port_first, self.resources.port_last) {
            (Some(_), None) => Err(invalid(
                "resources.port_last",
                "is required when port_first is set (e.g. port_first = 21000, port_last = 21999)",
            )),
            (None, Some(_)) => Err(invalid(
                "resources.port_first",
                "is required when port_last is set (e.g. port_first = 21000, port_last = 21999)",
            )),
            _ => Ok(()),
        }
    }

    fn validate_simulated_gpus(&self) -> Result<(), ValidationError> {
        for (i, entry) in self.simulated_gpus.iter().enumerate() {
            if entry.model.trim().is_empty() {
                return Err(invalid(
                    format!("simulated_gpus[{i}].model"),
                    "is required, as NVML would report it (e.g. \"NVIDIA H100 80GB HBM3\")",
                ));
            }
            if entry.memory_mib == 0 {
                return Err(invalid(
                    format!("simulated_gpus[{i}].memory_mib"),
                    "must be above 0 (e.g. 81920 for 80 GiB)",
                ));
            }
            if !(1..=SIMULATED_GPU_COUNT_MAX).contains(&entry.count) {
                return Err(invalid(
                    format!("simulated_gpus[{i}].count"),
                    format!(
                        "is {}; it must be between 1 and {SIMULATED_GPU_COUNT_MAX}",
                        entry.count
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Expands `[[simulated_gpus]]` entries into GPUs, numbering their `index` from
/// `first_index`. UUIDs depend only on the node name and the GPU's position among the
/// simulated ones, so they survive restarts and allocations bound to them keep matching.
pub(crate) fn simulated_gpu_list(
    node: &str,
    entries: &[SimulatedGpus],
    first_index: u32,
) -> Vec<Gpu> {
    entries
        .iter()
        .flat_map(|entry| (0..entry.count).map(move |_| entry))
        .zip(0u32..)
        .map(|(entry, ordinal)| Gpu {
            index: first_index.saturating_add(ordinal),
            uuid: format!("GPU-sim-{node}-{ordinal}"),
            model: entry.model.clone(),
            memory_mib: entry.memory_mib,
            mig_enabled: false,
            driver_version: "simulated".to_owned(),
            simulated: true,
        })
        .collect()
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ValidationError {
    ValidationError {
        field: field.into(),
        message: message.into(),
    }
}

fn trust_unsupported_message() -> String {
    "only \"self-reported\" can be written here: what the operator vouches for is carried by the \
     agent's certificate (its location claims, from `sovctl ca issue --country ...`) and read by \
     the scheduler from there, and hardware attestation is not supported yet; remove the line or \
     write trust = \"self-reported\""
        .to_owned()
}

/// Translates a field path from the scheduler's validation (`facts.country`,
/// `inventory.gpus[3].model`) into where the value is written in the agent's file.
fn config_field(field: &str, simulated: &[SimulatedGpus]) -> String {
    if field == "node.name" {
        return "name".to_owned();
    }
    if let Some(rest) = field.strip_prefix("facts.") {
        return format!("location.{rest}");
    }
    if field == "inventory.ports" {
        return "resources.port_first".to_owned();
    }
    if field == "inventory.gpus entries" {
        return "simulated_gpus (GPUs in total)".to_owned();
    }
    if let Some(rest) = field.strip_prefix("inventory.gpus[")
        && let Some((index, tail)) = rest.split_once(']')
        && let Ok(index) = index.parse::<u32>()
    {
        let mut first = 0u32;
        for (entry, gpus) in simulated.iter().enumerate() {
            if index < first.saturating_add(gpus.count) {
                return format!("simulated_gpus[{entry}]{tail}");
            }
            first = first.saturating_add(gpus.count);
        }
    }
    if let Some(rest) = field.strip_prefix("inventory.") {
        return format!("resources.{rest}");
    }
    field.to_owned()
}

/// The `HOST:PORT` of a scheduler endpoint written `HOST:PORT`, `https://HOST:PORT` or
/// `http://HOST:PORT` (HOST a name, an IPv4 address or a bracketed IPv6 address): the scheme
/// is accepted for older configs and leader hints but changes nothing, since every connection
/// is mutual TLS. Anything else is refused here: a path or a missing port would only fail
/// later, at connection time, with a less helpful error.
pub fn scheduler_address(url: &str) -> Result<String, String> {
    let usage = || {
        format!(
            "{url:?} is not a scheduler endpoint; write it as HOST:PORT (or https://HOST:PORT) \
             with nothing after the port (e.g. \"10.0.0.5:7400\")"
        )
    };
    if url.len() > SCHEDULER_URL_LEN_MAX {
        return Err(format!(
            "is {} bytes long; the limit is {SCHEDULER_URL_LEN_MAX}",
            url.len()
        ));
    }
    let authority = match url.split_once("://") {
        Some(("http" | "https", authority)) => authority,
        Some(_) => return Err(usage()),
        None => url,
    };
    let (host, port, host_ok) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']').ok_or_else(usage)?;
        let port = after.strip_prefix(':').ok_or_else(usage)?;
        let ok = host
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
        (host, port, ok)
    } else {
        let (host, port) = authority.rsplit_once(':').ok_or_else(usage)?;
        let ok = host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        (host, port, ok)
    };
    if host.is_empty() || !host_ok {
        return Err(usage());
    }
    let port_ok = !port.is_empty()
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u16>().is_ok_and(|p| p > 0);
    if !port_ok {
        return Err(usage());
    }
    Ok(authority.to_owned())
}

fn check_range(
    field: &str,
    value: Duration,
    min: Duration,
    max: Duration,
) -> Result<(), ValidationError> {
    if value < min || value > max {
        return Err(invalid(
            field,
            format!(
                "is {}; it must be between {} and {}",
                duration_text(value),
                duration_text(min),
                duration_text(max)
            ),
        ));
    }
    Ok(())
}

/// Parses a duration written like "500ms", "30s", "10m", "1h" or a sum of those ("1m30s").
/// A bare number is refused: "10" could mean seconds or milliseconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let usage = || {
        format!("{text:?} is not a duration; write it like \"500ms\", \"30s\", \"10m\" or \"1h\"")
    };
    let mut rest = text;
    if rest.is_empty() {
        return Err(usage());
    }
    let mut total_ms: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(usage)?;
        if digits == 0 {
            return Err(usage());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| usage())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit_ms: u64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return Err(usage()),
        };
        rest = &rest[unit_len..];
        total_ms = number
            .checked_mul(unit_ms)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(usage)?;
    }
    Ok(Duration::from_millis(total_ms))
}

/// Writes a duration the way the file does, in the largest unit that keeps it exact.
fn duration_text(duration: Duration) -> String {
    let ms = duration.as_millis();
    match ms {
        0 => "0s".to_owned(),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1_000 == 0 => format!("{}s", ms / 1_000),
        ms => format!("{ms}ms"),
    }
}

/// serde's TOML errors carry a byte span but no field path; the line and column are the best
/// pointer available, and the message already names the offending key or type.
fn parse_error(text: &str, origin: &str, error: &toml::de::Error) -> ConfigError {
    let position = error.span().map_or_else(String::new, |span| {
        let before = &text[..span.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        format!("{line}:{column}")
    });
    ConfigError::Parse {
        origin: origin.to_owned(),
        position,
        message: error.message().trim_end().to_owned(),
    }
}

/// The file as written. Values whose errors must name their field (durations, trust,
/// certification dates) are kept loose here and converted in [`ConfigFile::into_config`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    /// See [`AgentConfig::name`].
    #[serde(default)]
    name: String,
    /// See [`AgentConfig::schedulers`].
    #[serde(default)]
    schedulers: Vec<String>,
    /// See [`AgentConfig::data_dir`].
    #[serde(default)]
    data_dir: PathBuf,
    /// Duration text; see [`AgentConfig::heartbeat_interval`].
    heartbeat_interval: Option<toml::Value>,
    /// Duration text, default [`REFINGERPRINT_INTERVAL_DEFAULT`].
    refingerprint_interval: Option<toml::Value>,
    /// Duration text, default [`STOP_GRACE_DEFAULT`].
    stop_grace: Option<toml::Value>,
    /// `[location]`; a missing table is reported field by field.
    #[serde(default)]
    location: LocationFile,
    /// `[resources]`.
    #[serde(default)]
    resources: ResourceOverrides,
    /// `[[simulated_gpus]]`.
    #[serde(default)]
    simulated_gpus: Vec<SimulatedGpus>,
    /// `[tls]`.
    #[serde(default)]
    tls: TlsPaths,
}

/// `[location]` as written; see [`NodeFacts`] for the meaning of each field.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct LocationFile {
    /// ISO 3166-1 alpha-2, upper case ("FR").
    country: String,
    /// ISO 3166-2 code of a subdivision of `country` ("FR-IDF"); optional.
    subdivision: String,
    /// The operator's name for the site or data centre.
    site: String,
    /// Legal entity operating the node.
    operator: String,
    /// Country of the operator's headquarters (ISO 3166-1 alpha-2).
    operator_hq: String,
    /// Country of the operator's ultimate parent company (ISO 3166-1 alpha-2).
    ultimate_parent_hq: String,
    /// How the facts are known: only "self-reported" can be written (the certificate carries
    /// what the operator vouches for).
    trust: Option<String>,
    /// Certification name -> last valid day, as a string "2027-06-30" or a TOML date.
    certifications: BTreeMap<String, toml::Value>,
}

impl ConfigFile {
    fn into_config(self) -> Result<AgentConfig, ValidationError> {
        let heartbeat_interval = duration_field("heartbeat_interval", self.heartbeat_interval)?;
        let refingerprint_interval =
            duration_field("refingerprint_interval", self.refingerprint_interval)?
                .unwrap_or(REFINGERPRINT_INTERVAL_DEFAULT);
        let stop_grace =
            duration_field("stop_grace", self.stop_grace)?.unwrap_or(STOP_GRACE_DEFAULT);
        let location = self.location.into_facts()?;
        Ok(AgentConfig {
            name: self.name,
            schedulers: self.schedulers,
            data_dir: self.data_dir,
            heartbeat_interval,
            refingerprint_interval,
            stop_grace,
            location,
            resources: self.resources,
            simulated_gpus: self.simulated_gpus,
            tls: self.tls,
        })
    }
}

impl LocationFile {
    fn into_facts(self) -> Result<NodeFacts, ValidationError> {
        let location_trust = match self.trust.as_deref() {
            None | Some("self-reported") => LocationTrust::SelfReported,
            Some("operator-certificate" | "hardware-attested") => {
                return Err(invalid("location.trust", trust_unsupported_message()));
            }
            Some(other) => {
                return Err(invalid(
                    "location.trust",
                    format!(
                        "{other:?} is not a trust level; the levels are \"self-reported\", \
                         \"operator-certificate\" and \"hardware-attested\", and only \
                         \"self-reported\" can be written here (the agent's certificate carries \
                         what the operator vouches for)"
                    ),
                ));
            }
        };
        let mut certifications = BTreeMap::new();
        for (name, value) in self.certifications {
            let until = match value {
                toml::Value::String(text) => text,
                toml::Value::Datetime(dt)
                    if dt.date.is_some() && dt.time.is_none() && dt.offset.is_none() =>
                {
                    dt.to_string()
                }
                _ => {
                    return Err(invalid(
                        format!("location.certifications.{name}"),
                        format!(
                            "must be the certification's last valid day, YYYY-MM-DD \
                             (e.g. {name} = \"2027-06-30\")"
                        ),
                    ));
                }
            };
            certifications.insert(name, until);
        }
        Ok(NodeFacts {
            country: self.country,
            subdivision: self.subdivision,
            site: self.site,
            operator: self.operator,
            operator_hq: self.operator_hq,
            ultimate_parent_hq: self.ultimate_parent_hq,
            certifications,
            location_trust,
            fact_trust: BTreeMap::new(),
        })
    }
}

fn duration_field(
    field: &str,
    value: Option<toml::Value>,
) -> Result<Option<Duration>, ValidationError> {
    match value {
        None => Ok(None),
        Some(toml::Value::String(text)) => parse_duration(&text)
            .map(Some)
            .map_err(|message| invalid(field, message)),
        Some(other) => Err(invalid(
            field,
            format!(
                "{other} is not a duration; write it as a string with a unit, like \"500ms\", \
                 \"30s\", \"10m\" or \"1h\""
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example configuration documented for operators, with every field set.
    const FULL: &str = r#"
name = "fr-par-1"
schedulers = ["http://127.0.0.1:7400", "http://127.0.0.1:7410"]
data_dir = "/var/lib/sov-agent"
heartbeat_interval = "1s"
refingerprint_interval = "60s"
stop_grace = "10s"

[location]
country = "FR"
subdivision = "FR-IDF"
site = "par-1"
operator = "Example Cloud SAS"
operator_hq = "FR"
ultimate_parent_hq = "FR"
trust = "self-reported"

[location.certifications]
secnumcloud = "2027-06-30"
c5-type2 = "2027-01-31"

[resources]
cpu_millis = 16000
memory_mib = 65536

[[simulated_gpus]]
model = "NVIDIA H100 80GB HBM3"
memory_mib = 81920
count = 4
"#;

    const MINIMAL: &str = r#"
name = "fr-par-1"
schedulers = ["http://127.0.0.1:7400"]
data_dir = "/var/lib/sov-agent"

[location]
country = "FR"
site = "par-1"
operator = "Example Cloud SAS"
operator_hq = "FR"
ultimate_parent_hq = "FR"
"#;

    /// `FULL` with the first line that starts with `key =` (under any table) replaced.
    fn with_line(base: &str, key: &str, line: &str) -> String {
        let prefix = format!("{key} =");
        let mut found = false;
        let text: Vec<&str> = base
            .lines()
            .map(|l| {
                if !found && l.starts_with(&prefix) {
                    found = true;
                    line
                } else {
                    l
                }
            })
            .collect();
        assert!(found, "{key} not in the base config");
        text.join("\n")
    }

    fn invalid_field(text: &str) -> (String, ConfigError) {
        let err = AgentConfig::from_toml_str(text, "agent.toml").expect_err("must be refused");
        match &err {
            ConfigError::Invalid { error, .. } => (error.field.clone(), err),
            other => panic!("expected a validation error, got {other}"),
        }
    }

    #[test]
    fn full_config_parses() {
        let cfg = AgentConfig::from_toml_str(FULL, "agent.toml").expect("valid");
        assert_eq!(cfg.name, "fr-par-1");
        assert_eq!(
            cfg.schedulers,
            ["http://127.0.0.1:7400", "http://127.0.0.1:7410"]
        );
        assert_eq!(cfg.data_dir, PathBuf::from("/var/lib/sov-agent"));
        assert_eq!(cfg.heartbeat_interval, Some(Duration::from_secs(1)));
        assert_eq!(cfg.refingerprint_interval, Duration::from_secs(60));
        assert_eq!(cfg.stop_grace, Duration::from_secs(10));
        assert_eq!(cfg.resources.cpu_millis, Some(16_000));
        assert_eq!(cfg.resources.memory_mib, Some(65_536));
        assert_eq!(
            cfg.simulated_gpus,
            [SimulatedGpus {
                model: "NVIDIA H100 80GB HBM3".to_owned(),
                memory_mib: 81_920,
                count: 4,
            }]
        );
        let facts = cfg.facts();
        assert_eq!(facts.country, "FR");
        assert_eq!(facts.subdivision, "FR-IDF");
        assert_eq!(facts.site, "par-1");
        assert_eq!(facts.operator, "Example Cloud SAS");
        assert_eq!(facts.operator_hq, "FR");
        assert_eq!(facts.ultimate_parent_hq, "FR");
        assert_eq!(facts.location_trust, LocationTrust::SelfReported);
        assert_eq!(facts.certifications["secnumcloud"], "2027-06-30");
        assert_eq!(facts.certifications["c5-type2"], "2027-01-31");
    }

    #[test]
    fn optional_fields_take_their_defaults() {
        let cfg = AgentConfig::from_toml_str(MINIMAL, "agent.toml").expect("valid");
        assert_eq!(cfg.heartbeat_interval, None);
        assert_eq!(cfg.refingerprint_interval, REFINGERPRINT_INTERVAL_DEFAULT);
        assert_eq!(cfg.stop_grace, STOP_GRACE_DEFAULT);
        assert_eq!(cfg.resources, ResourceOverrides::default());
        assert!(cfg.simulated_gpus.is_empty());
        assert!(cfg.location.subdivision.is_empty());
        assert!(cfg.location.certifications.is_empty());
        assert_eq!(cfg.location.location_trust, LocationTrust::SelfReported);
    }

    #[test]
    fn malformed_country_names_the_file_and_field() {
        let text = with_line(FULL, "country", "country = \"FRA\"");
        let (field, err) = invalid_field(&text);
        assert_eq!(field, "location.country");
        assert_eq!(
            err.to_string(),
            "agent.toml: location.country: \"FRA\" is not an ISO 3166-1 alpha-2 country code \
             (upper case, e.g. \"FR\")"
        );
    }

    #[test]
    fn missing_country_is_required() {
        let text = with_line(MINIMAL, "country", "");
        let (field, err) = invalid_field(&text);
        assert_eq!(field, "location.country");
        assert!(err.to_string().contains("is required"), "{err}");
    }

    #[test]
    fn subdivision_of_another_country_is_refused() {
        let text = with_line(FULL, "subdivision", "subdivision = \"DE-BY\"");
        let (field, err) = invalid_field(&text);
        assert_eq!(field, "location.subdivision");
        assert!(err.to_string().contains("\"DE-BY\""), "{err}");
    }

    #[test]
    fn headquarters_countries_are_checked() {
        let text = with_line(FULL, "ultimate_parent_hq", "ultimate_parent_hq = \"USA\"");
        assert_eq!(invalid_field(&text).0, "location.ultimate_parent_hq");
        let text = with_line(FULL, "operator_hq", "operator_hq = \"fr\"");
        assert_eq!(invalid_field(&text).0, "location.operator_hq");
    }

    #[test]
    fn bad_certification_date_names_the_certification() {
        let text = with_line(FULL, "secnumcloud", "secnumcloud = \"2027-02-30\"");
        let (field, err) = invalid_field(&text);
        assert_eq!(field, "location.certifications.secnumcloud");
        assert!(err.to_string().contains("2027-02-30"), "{err}");

        let text = with_line(FULL, "secnumcloud", "secnumcloud = 2027");
        assert_eq!(
            invalid_field(&text).0,
            "location.certifications.secnumcloud"
        );
    }

    #[test]
    fn certification_names_are_checked() {
        let text = with_line(FULL, "secnumcloud", "SecNumCloud = \"2027-06-30\"");
        assert_eq!(
            invalid_field(&text).0,
            "location.certifications.SecNumCloud"
        );
    }

    #[test]
    fn toml_dates_are_accepted_for_certifications() {
        let text = with_line(FULL, "secnumcloud", "secnumcloud = 2027-06-30");
        let cfg = AgentConfig::from_toml_str(&text, "agent.toml").expect("valid");
        assert_eq!(cfg.location.certifications["secnumcloud"], "2027-06-30");
    }

    #[test]
    fn unknown_fields_are_refused_with_their_line() {
        let text = with_line(FULL, "stop_grace", "stop_grase = \"10s\"");
        let err = AgentConfig::from_toml_str(&text, "agent.toml").expect_err("typo");
        let ConfigError::Parse {
            position, message, ..
        } = &err
        else {
            panic!("expected a parse error, got {err}");
        };
        assert_eq!(position, "7:1");
        assert!(message.contains("unknown field `stop_grase`"), "{message}");
        assert!(err.to_string().starts_with("agent.toml:7:1: "), "{err}");

        let text = with_line(FULL, "site", "sight = \"par-1\"");
        let err = AgentConfig::from_toml_str(&text, "agent.toml").expect_err("typo");
        assert!(err.to_string().contains("unknown field `sight`"), "{err}");

        let text = format!("{FULL}flavour = \"x\"\n");
        let err = AgentConfig::from_toml_str(&text, "agent.toml").expect_err("typo");
        assert!(err.to_string().contains("unknown field `flavour`"), "{err}");
    }

    #[test]
    fn bad_durations_name_the_field() {
        for (key, value) in [
            ("heartbeat_interval", "\"1x\""),
            ("refingerprint_interval", "\"60\""),
            ("stop_grace", "10"),
            ("stop_grace", "\"1.5s\""),
        ] {
            let text = with_line(FULL, key, &format!("{key} = {value}"));
            let (field, err) = invalid_field(&text);
            assert_eq!(field, key, "{err}");
            assert!(err.to_string().contains("is not a duration"), "{err}");
        }
    }

    #[test]
    fn durations_out_of_range_name_the_field() {
        for (key, value) in [
            ("heartbeat_interval", "\"10ms\""),
            ("heartbeat_interval", "\"2m\""),
            ("refingerprint_interval", "\"500ms\""),
            ("refingerprint_interval", "\"2h\""),
            ("stop_grace", "\"0s\""),
            ("stop_grace", "\"11m\""),
        ] {
            let text = with_line(FULL, key, &format!("{key} = {value}"));
            let (field, err) = invalid_field(&text);
            assert_eq!(field, key, "{err}");
            assert!(err.to_string().contains("it must be between"), "{err}");
        }
    }

    #[test]
    fn unproven_trust_levels_are_refused_with_the_reason() {
        let text = with_line(FULL, "trust", "trust = \"operator-certificate\"");
        let (field, err) = invalid_field(&text);
        assert_eq!(field, "location.trust");
        let text = err.to_string();
        assert!(text.contains("only \"self-reported\""), "{text}");
        assert!(text.contains("certificate"), "{text}");

        let text = with_line(FULL, "trust", "trust = \"trust-me\"");
        let (field, err) = invalid_field(&text);
        assert_eq!(field, "location.trust");
        assert!(err.to_string().contains("not a trust level"), "{err}");
    }

    #[test]
    fn schedulers_are_required_and_must_be_endpoints() {
        let text = with_line(FULL, "schedulers", "schedulers = []");
        let (field, err) = invalid_field(&text);
        assert_eq!(field, "schedulers");
        assert!(err.to_string().contains("at least one"), "{err}");

        let text = with_line(FULL, "schedulers", "");
        assert_eq!(invalid_field(&text).0, "schedulers");

        for bad in [
            "grpc://127.0.0.1:7400",
            "127.0.0.1",
            "https://127.0.0.1:7400/",
            "http://127.0.0.1",
            "http://127.0.0.1:7400/",
            "http://:7400",
            "http://127.0.0.1:0",
            "http://127.0.0.1:99999",
            "http://user@host:7400",
            "http://[::1]",
        ] {
            let line = format!("schedulers = [\"http://10.0.0.5:7400\", \"{bad}\"]");
            let (field, err) = invalid_field(&with_line(FULL, "schedulers", &line));
            assert_eq!(field, "schedulers[1]", "{bad}: {err}");
        }

        for line in [
            "schedulers = [\"http://a:1\", \"http://a:1\"]",
            "schedulers = [\"http://a:1\", \"https://a:1\"]",
            "schedulers = [\"a:1\", \"http://a:1\"]",
        ] {
            let (field, err) = invalid_field(&with_line(FULL, "schedulers", line));
            assert_eq!(field, "schedulers[1]", "{line}");
            assert!(err.to_string().contains("listed twice"), "{err}");
        }
    }

    #[test]
    fn endpoints_mean_their_host_and_port_with_or_without_a_scheme() {
        for (written, address) in [
            ("http://127.0.0.1:7400", "127.0.0.1:7400"),
            ("https://127.0.0.1:7400", "127.0.0.1:7400"),
            ("127.0.0.1:7400", "127.0.0.1:7400"),
            (
                "https://scheduler-1.example.eu:443",
                "scheduler-1.example.eu:443",
            ),
            ("scheduler-1:7400", "scheduler-1:7400"),
            ("http://[::1]:7400", "[::1]:7400"),
            ("[fd00::5]:7400", "[fd00::5]:7400"),
        ] {
            assert_eq!(
                scheduler_address(written),
                Ok(address.to_owned()),
                "{written}"
            );
        }
        assert!(scheduler_address("::1:7400").is_err());
    }

    #[test]
    fn the_documented_example_is_valid() {
        let text = include_str!("../../deploy/agent.example.toml");
        let cfg = AgentConfig::from_toml_str(text, "deploy/agent.example.toml").expect("valid");
        assert!(cfg.tls.ca.is_some() && cfg.tls.cert.is_some() && cfg.tls.key.is_some());
    }

    #[test]
    fn the_tls_table_names_three_files() {
        let text = format!(
            "{MINIMAL}\n[tls]\nca = \"/etc/sov/tls/ca.crt\"\ncert = \"fr-par-1.crt\"\n\
             key = \"fr-par-1.key\"\n"
        );
        let cfg = AgentConfig::from_toml_str(&text, "agent.toml").expect("valid");
        assert_eq!(
            cfg.tls,
            TlsPaths {
                ca: Some(PathBuf::from("/etc/sov/tls/ca.crt")),
                cert: Some(PathBuf::from("fr-par-1.crt")),
                key: Some(PathBuf::from("fr-par-1.key")),
            }
        );
        assert_eq!(
            AgentConfig::from_toml_str(MINIMAL, "agent.toml")
                .expect("valid")
                .tls,
            TlsPaths::default()
        );
        let text = format!("{MINIMAL}\n[tls]\ncertificate = \"x.crt\"\n");
        let err = AgentConfig::from_toml_str(&text, "agent.toml").expect_err("typo");
        assert!(
            err.to_string().contains("unknown field `certificate`"),
            "{err}"
        );
    }

    #[test]
    fn node_name_must_be_a_dns_label() {
        let text = with_line(FULL, "name", "name = \"FR_par_1\"");
        let (field, err) = invalid_field(&text);
        assert_eq!(field, "name");
        assert!(err.to_string().contains("DNS label"), "{err}");
    }

    #[test]
    fn simulated_gpus_are_checked_per_entry() {
        let extra = "[[simulated_gpus]]\nmodel = \"NVIDIA L4\"\nmemory_mib = 23034\n";
        for (line, key, field) in [
            ("count = 0", "count", "simulated_gpus[1].count"),
            ("count = 65", "count", "simulated_gpus[1].count"),
            (
                "memory_mib = 0",
                "memory_mib",
                "simulated_gpus[1].memory_mib",
            ),
            ("model = \" \"", "model", "simulated_gpus[1].model"),
        ] {
            let second = with_line(&format!("{extra}count = 1\n"), key, line);
            let text = format!("{FULL}\n{second}\n");
            assert_eq!(invalid_field(&text).0, field, "{line}");
        }

        // Two entries of 40 are each fine but exceed the scheduler's limit per node.
        let text = with_line(FULL, "count", "count = 40");
        let text = format!("{text}\n{extra}count = 40\n");
        let (field, err) = invalid_field(&text);
        assert_eq!(field, "simulated_gpus (GPUs in total)", "{err}");
    }

    #[test]
    fn scheduler_checks_on_simulated_gpus_map_back_to_their_entry() {
        let text =
            format!("{FULL}\n[[simulated_gpus]]\nmodel = \"bad\\u0007model\"\nmemory_mib = 1\n");
        let (field, err) = invalid_field(&text);
        assert_eq!(field, "simulated_gpus[1].model", "{err}");
    }

    #[test]
    fn resource_overrides_must_be_positive_and_bounded() {
        let text = with_line(FULL, "cpu_millis", "cpu_millis = 0");
        assert_eq!(invalid_field(&text).0, "resources.cpu_millis");
        let text = with_line(FULL, "memory_mib", "memory_mib = 0");
        assert_eq!(invalid_field(&text).0, "resources.memory_mib");
        let text = with_line(FULL, "cpu_millis", "cpu_millis = 4000000000");
        assert_eq!(invalid_field(&text).0, "resources.cpu_millis");
    }

    #[test]
    fn port_ranges_need_both_ends_in_order() {
        let with_ports = |lines: &str| format!("{MINIMAL}\n[resources]\n{lines}\n");
        let cfg = AgentConfig::from_toml_str(
            &with_ports("port_first = 21000\nport_last = 21999"),
            "agent.toml",
        )
        .expect("valid");
        assert_eq!(cfg.resources.ports(), (21_000, 21_999));
        assert_eq!(
            AgentConfig::from_toml_str(MINIMAL, "agent.toml")
                .expect("valid")
                .resources
                .ports(),
            (0, 0)
        );

        for (lines, field) in [
            ("port_first = 21000", "resources.port_last"),
            ("port_last = 21999", "resources.port_first"),
            (
                "port_first = 22000\nport_last = 21999",
                "resources.port_first",
            ),
            ("port_first = 80\nport_last = 90", "resources.port_first"),
        ] {
            let (got, err) = invalid_field(&with_ports(lines));
            assert_eq!(got, field, "{lines}: {err}");
        }
    }

    #[test]
    fn required_facts_and_data_dir_are_named() {
        for key in ["site", "operator", "operator_hq", "ultimate_parent_hq"] {
            let text = with_line(MINIMAL, key, "");
            assert_eq!(invalid_field(&text).0, format!("location.{key}"));
        }
        let text = with_line(MINIMAL, "data_dir", "");
        assert_eq!(invalid_field(&text).0, "data_dir");
    }

    #[test]
    fn simulated_gpu_uuids_depend_only_on_node_and_position() {
        let entries = [
            SimulatedGpus {
                model: "A".to_owned(),
                memory_mib: 1,
                count: 2,
            },
            SimulatedGpus {
                model: "B".to_owned(),
                memory_mib: 2,
                count: 1,
            },
        ];
        let gpus = simulated_gpu_list("n1", &entries, 3);
        let uuids: Vec<&str> = gpus.iter().map(|g| g.uuid.as_str()).collect();
        assert_eq!(uuids, ["GPU-sim-n1-0", "GPU-sim-n1-1", "GPU-sim-n1-2"]);
        let indexes: Vec<u32> = gpus.iter().map(|g| g.index).collect();
        assert_eq!(indexes, [3, 4, 5]);
        assert_eq!(gpus[2].model, "B");
        assert!(
            gpus.iter()
                .all(|g| g.simulated && g.driver_version == "simulated")
        );
        assert_eq!(simulated_gpu_list("n1", &entries, 0)[0].uuid, gpus[0].uuid);
    }

    #[test]
    fn load_names_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, with_line(FULL, "country", "country = \"FRA\"")).expect("write");
        let err = AgentConfig::load(&path).expect_err("bad country");
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("{}: location.country: ", path.display())),
            "{text}"
        );

        std::fs::write(&path, FULL).expect("write");
        assert_eq!(AgentConfig::load(&path).expect("valid").name, "fr-par-1");

        let missing = dir.path().join("missing.toml");
        let err = AgentConfig::load(&missing).expect_err("missing file");
        assert!(
            err.to_string().contains("missing.toml: cannot read"),
            "{err}"
        );
        // The binary prints errors with `{:#}`; the I/O cause must appear once, not twice.
        assert_eq!(format!("{err:#}"), err.to_string());
    }

    #[test]
    fn durations_parse_with_units_and_sums() {
        for (text, ms) in [
            ("500ms", 500),
            ("30s", 30_000),
            ("10m", 600_000),
            ("1h", 3_600_000),
            ("1m30s", 90_000),
            ("0s", 0),
        ] {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_millis(ms)),
                "{text}"
            );
        }
        for text in [
            "",
            "10",
            "s",
            "10x",
            "1.5s",
            "-1s",
            "10 s",
            " 10s",
            "1d",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(text).is_err(), "{text:?} must be refused");
        }
    }

    #[test]
    fn durations_print_in_the_largest_exact_unit() {
        assert_eq!(duration_text(Duration::from_millis(100)), "100ms");
        assert_eq!(duration_text(Duration::from_secs(90)), "90s");
        assert_eq!(duration_text(Duration::from_secs(600)), "10m");
        assert_eq!(duration_text(Duration::from_secs(7_200)), "2h");
    }
}
