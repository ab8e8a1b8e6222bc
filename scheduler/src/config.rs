//! Scheduler configuration: a TOML file, overridden by `SOV_*` environment variables, overridden
//! by command-line flags (in that order of increasing precedence).
//!
//! Owns: defaults, parsing, and the checks that turn a wrong setting into one clear sentence at
//! start-up instead of a confusing failure later.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::raft::RaftTuning;

/// Default ports (see DESIGN.md, Interfaces).
pub const API_PORT: u16 = 7400;
pub const RAFT_PORT: u16 = 7401;
pub const HTTP_PORT: u16 = 7402;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// The effective configuration of one scheduler process.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Unique, stable, greater than 0. Never reuse the id of a removed scheduler.
    pub node_id: u64,
    /// Raft log, vote and snapshots live here. Keep it on a disk with honest fsync.
    pub data_dir: PathBuf,
    pub api_listen: SocketAddr,
    pub raft_listen: SocketAddr,
    pub http_listen: SocketAddr,
    /// Addresses other schedulers and clients use to reach this one; default: the listen
    /// addresses (which must then not be unspecified like 0.0.0.0).
    pub api_advertise: Option<String>,
    pub raft_advertise: Option<String>,
    /// Initialize a new cluster with this scheduler as its only voter, if its data dir does not
    /// already belong to a cluster. Use on exactly one scheduler, once.
    pub bootstrap: bool,
    /// API address (host:port) of a running member; a scheduler with an empty data dir asks
    /// it to be added to that cluster.
    pub join: Option<String>,
    pub log_format: LogFormat,
    pub raft: RaftTuning,
    pub liveness: crate::leader::liveness::LivenessConfig,
    /// The cluster's Ed25519 signing key file (`sov-scheduler keygen` writes one): signs the
    /// history's checkpoints and exports. Every scheduler of a cluster has the same key; without
    /// one, history queries work but checkpoints and exports are refused.
    pub signing_key: Option<PathBuf>,
    /// How often a scheduler with a signing key stores a signed checkpoint of the history.
    pub checkpoint_interval_ms: u64,
    /// Mutual TLS on the API and Raft ports: this scheduler's certificate (role `scheduler`),
    /// its key and the cluster CA. `sov-scheduler run` refuses to start without it.
    pub tls: Option<TlsConfig>,
    /// Whether auditors may also activate policy bundles (operators always may).
    pub auditor_applies_policy: bool,
    /// Whether people may call the API port with a bearer token signed by the cluster CA
    /// (`sovctl ca token`) instead of a client certificate. Off by default: the API port then
    /// requires a certificate at the TLS handshake. The Raft port always does.
    pub bearer_tokens: bool,
}

/// The `[tls]` table: three PEM files, made by `sovctl ca init` and `sovctl ca issue --role
/// scheduler`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsConfig {
    pub fn files(&self) -> sov_proto::tls::TlsFiles {
        sov_proto::tls::TlsFiles {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        let local = |port| SocketAddr::from(([127, 0, 0, 1], port));
        Self {
            node_id: 1,
            data_dir: PathBuf::from("sov-data"),
            api_listen: local(API_PORT),
            raft_listen: local(RAFT_PORT),
            http_listen: local(HTTP_PORT),
            api_advertise: None,
            raft_advertise: None,
            bootstrap: false,
            join: None,
            log_format: LogFormat::Text,
            raft: RaftTuning::default(),
            liveness: Default::default(),
            signing_key: None,
            checkpoint_interval_ms: CHECKPOINT_INTERVAL_MS_DEFAULT,
            tls: None,
            auditor_applies_policy: false,
            bearer_tokens: false,
        }
    }
}

/// A signed checkpoint an hour: an auditor's evidence is never more than an hour behind, and a
/// year of checkpoints is under 9,000 records.
pub const CHECKPOINT_INTERVAL_MS_DEFAULT: u64 = 3_600_000;
pub const CHECKPOINT_INTERVAL_MS_MIN: u64 = 1_000;

/// Flags of `sov-scheduler run`. Each also reads a `SOV_*` variable; unset ones fall back to
/// the config file, then to the defaults.
#[derive(Debug, Clone, Default, Args)]
pub struct RunArgs {
    /// TOML config file (see deploy/scheduler.example.toml).
    #[arg(long, short = 'c', env = "SOV_CONFIG")]
    pub config: Option<PathBuf>,
    /// This scheduler's id (> 0, unique in the cluster) [default: 1]
    #[arg(long, env = "SOV_NODE_ID")]
    pub node_id: Option<u64>,
    /// Directory for the Raft log and snapshots [default: ./sov-data]
    #[arg(long, env = "SOV_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// gRPC API for clients and agents [default: 127.0.0.1:7400]
    #[arg(long, env = "SOV_API_LISTEN")]
    pub api_listen: Option<SocketAddr>,
    /// Raft peer service [default: 127.0.0.1:7401]
    #[arg(long, env = "SOV_RAFT_LISTEN")]
    pub raft_listen: Option<SocketAddr>,
    /// HTTP: /healthz, /readyz, /metrics [default: 127.0.0.1:7402]
    #[arg(long, env = "SOV_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// API address others use to reach this scheduler [default: --api-listen]
    #[arg(long, env = "SOV_API_ADVERTISE")]
    pub api_advertise: Option<String>,
    /// Raft address others use to reach this scheduler [default: --raft-listen]
    #[arg(long, env = "SOV_RAFT_ADVERTISE")]
    pub raft_advertise: Option<String>,
    /// Start a new cluster with this scheduler as sole voter (no-op if already initialized)
    #[arg(long, env = "SOV_BOOTSTRAP")]
    pub bootstrap: bool,
    /// Join the cluster that the scheduler at this API address (host:port) belongs to
    #[arg(long, env = "SOV_JOIN", conflicts_with = "bootstrap")]
    pub join: Option<String>,
    /// Log format [default: text]
    #[arg(long, env = "SOV_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Mark a node down after this long without a heartbeat [default: 10000]
    #[arg(long, env = "SOV_HEARTBEAT_TTL_MS")]
    pub heartbeat_ttl_ms: Option<u64>,
    /// How often agents are told to heartbeat [default: 1000]
    #[arg(long, env = "SOV_HEARTBEAT_INTERVAL_MS")]
    pub heartbeat_interval_ms: Option<u64>,
    /// The most heartbeats a second the leader asks of the whole fleet: in a larger fleet the
    /// interval agents are told stretches to nodes / this, and the TTL to at least four such
    /// intervals (10,000 nodes at 1000: every 10 s, down after 40 s). 0 = never stretch
    /// [default: 1000]
    #[arg(long, env = "SOV_MAX_HEARTBEATS_PER_S", value_name = "N")]
    pub max_heartbeats_per_s: Option<u64>,
    /// The cluster's Ed25519 signing key file, for signed history checkpoints and exports
    /// (`sov-scheduler keygen` makes one; give every scheduler the same file).
    #[arg(long, env = "SOV_SIGNING_KEY", value_name = "FILE")]
    pub signing_key: Option<PathBuf>,
    /// How often each scheduler signs a checkpoint of the history, when it has grown
    /// [default: 3600000, one hour; at least 1000]
    #[arg(long, env = "SOV_CHECKPOINT_INTERVAL_MS", value_name = "MS")]
    pub checkpoint_interval_ms: Option<u64>,
    /// The cluster CA's certificate (PEM), trusted for clients, agents and peers
    #[arg(long, env = "SOV_TLS_CA", value_name = "FILE", requires_all = ["tls_cert", "tls_key"])]
    pub tls_ca: Option<PathBuf>,
    /// This scheduler's certificate (PEM; `sovctl ca issue --role scheduler`)
    #[arg(long, env = "SOV_TLS_CERT", value_name = "FILE", requires_all = ["tls_ca", "tls_key"])]
    pub tls_cert: Option<PathBuf>,
    /// This scheduler's private key (PEM)
    #[arg(long, env = "SOV_TLS_KEY", value_name = "FILE", requires_all = ["tls_ca", "tls_cert"])]
    pub tls_key: Option<PathBuf>,
    /// Let auditors activate policy bundles too (operators always may)
    #[arg(long, env = "SOV_AUDITOR_APPLIES_POLICY")]
    pub auditor_applies_policy: bool,
    /// Accept bearer tokens signed by the cluster CA (`sovctl ca token`) from people without a
    /// client certificate, on the API port only
    #[arg(long, env = "SOV_BEARER_TOKENS")]
    pub bearer_tokens: bool,
}

impl RunArgs {
    /// Builds the effective configuration: defaults < file < environment < flags.
    pub fn resolve(&self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => load_file(path)?,
            None => Config::default(),
        };
        macro_rules! set {
            ($($field:ident),*) => { $( if let Some(v) = &self.$field { config.$field = v.clone(); } )* };
        }
        set!(
            node_id,
            data_dir,
            api_listen,
            raft_listen,
            http_listen,
            log_format
        );
        if self.api_advertise.is_some() {
            config.api_advertise.clone_from(&self.api_advertise);
        }
        if self.raft_advertise.is_some() {
            config.raft_advertise.clone_from(&self.raft_advertise);
        }
        if self.join.is_some() {
            config.join.clone_from(&self.join);
        }
        config.bootstrap |= self.bootstrap;
        if let Some(ttl) = self.heartbeat_ttl_ms {
            config.liveness.heartbeat_ttl_ms = ttl;
            // The grace after a leader change follows the TTL unless the file set it.
            config.liveness.failover_grace_ms = config.liveness.failover_grace_ms.max(ttl);
        }
        if let Some(interval) = self.heartbeat_interval_ms {
            config.liveness.heartbeat_interval_ms = interval;
        }
        if let Some(rate) = self.max_heartbeats_per_s {
            config.liveness.max_heartbeats_per_s = rate;
        }
        if self.signing_key.is_some() {
            config.signing_key.clone_from(&self.signing_key);
        }
        if let Some(every) = self.checkpoint_interval_ms {
            config.checkpoint_interval_ms = every;
        }
        if let (Some(ca), Some(cert), Some(key)) = (&self.tls_ca, &self.tls_cert, &self.tls_key) {
            config.tls = Some(TlsConfig {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            });
        }
        config.auditor_applies_policy |= self.auditor_applies_policy;
        config.bearer_tokens |= self.bearer_tokens;
        config.check()?;
        Ok(config)
    }

    /// [`RunArgs::resolve`] for a scheduler that will serve: certificates are required.
    pub fn resolve_to_serve(&self) -> anyhow::Result<Config> {
        let config = self.resolve()?;
        if config.tls.is_none() {
            bail!(
                "no certificates: a scheduler serves only mutual TLS. Set [tls] ca, cert and key in the config file (or --tls-ca, --tls-cert, --tls-key); make them with `sovctl ca init` and `sovctl ca issue --role scheduler` (docs/security.md). For a throwaway local cluster, `sov-scheduler dev` makes its own CA"
            );
        }
        Ok(config)
    }
}

pub fn load_file(path: &Path) -> anyhow::Result<Config> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))
}

fn advertised(explicit: &Option<String>, listen: SocketAddr, flag: &str) -> anyhow::Result<String> {
    match explicit {
        Some(addr) => Ok(addr.clone()),
        None if listen.ip().is_unspecified() => bail!(
            "{flag} is required when listening on {listen}: other schedulers need a concrete address to reach this one"
        ),
        None => Ok(listen.to_string()),
    }
}

impl Config {
    pub fn check(&self) -> anyhow::Result<()> {
        if self.node_id == 0 {
            bail!("node_id must be greater than 0");
        }
        if self.bootstrap && self.join.is_some() {
            bail!(
                "bootstrap and join are mutually exclusive: bootstrap starts a new cluster, join enters an existing one"
            );
        }
        let ports = [self.api_listen, self.raft_listen, self.http_listen];
        for (i, a) in ports.iter().enumerate() {
            if ports[..i].contains(a) && a.port() != 0 {
                bail!("api_listen, raft_listen and http_listen must differ; {a} is used twice");
            }
        }
        let r = &self.raft;
        if r.election_timeout_min_ms <= r.heartbeat_interval_ms * 2
            || r.election_timeout_max_ms <= r.election_timeout_min_ms
        {
            bail!(
                "raft timing: need heartbeat_interval_ms * 2 < election_timeout_min_ms < election_timeout_max_ms"
            );
        }
        self.liveness.check()?;
        if self.checkpoint_interval_ms < CHECKPOINT_INTERVAL_MS_MIN {
            bail!(
                "checkpoint_interval_ms: {} is below {CHECKPOINT_INTERVAL_MS_MIN}",
                self.checkpoint_interval_ms
            );
        }
        self.api_advertise()?;
        self.raft_advertise()?;
        Ok(())
    }

    pub fn api_advertise(&self) -> anyhow::Result<String> {
        advertised(&self.api_advertise, self.api_listen, "api_advertise")
    }

    pub fn raft_advertise(&self) -> anyhow::Result<String> {
        advertised(&self.raft_advertise, self.raft_listen, "raft_advertise")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(
            &path,
            "node_id = 3\napi_listen = \"127.0.0.1:9000\"\n[raft]\nsnapshot_logs_since_last = 50\n[liveness]\nmax_heartbeats_per_s = 500\n",
        )
        .unwrap();
        let args = RunArgs {
            config: Some(path.clone()),
            node_id: Some(4),
            ..Default::default()
        };
        let err = args.resolve_to_serve().unwrap_err().to_string();
        assert!(err.contains("no certificates"), "{err}");
        let args = RunArgs {
            tls_ca: Some("ca.crt".into()),
            tls_cert: Some("s.crt".into()),
            tls_key: Some("s.key".into()),
            ..args
        };
        let c = args.resolve_to_serve().unwrap();
        assert_eq!(c.tls.as_ref().unwrap().cert, PathBuf::from("s.crt"));
        assert_eq!(c.node_id, 4, "flag beats file");
        assert_eq!(c.api_listen.port(), 9000, "file beats default");
        assert_eq!(c.raft.snapshot_logs_since_last, 50);
        assert_eq!(c.liveness.max_heartbeats_per_s, 500);
        assert_eq!(c.raft_listen.port(), RAFT_PORT);
        assert_eq!(c.api_advertise().unwrap(), "127.0.0.1:9000");

        std::fs::write(&path, "node_id = 3\nnode_idd = 4\n").unwrap();
        let err = RunArgs {
            config: Some(path),
            ..Default::default()
        }
        .resolve()
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown field `node_idd`"), "{err}");
    }

    #[test]
    fn the_shipped_example_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/scheduler.example.toml");
        let c = load_file(&path).unwrap();
        c.check().unwrap();
        assert_eq!(c.api_advertise().unwrap(), "sched-1.example.eu:7400");
        assert_eq!(
            c.liveness,
            crate::leader::liveness::LivenessConfig::default(),
            "the example shows the defaults"
        );
    }

    #[test]
    fn bad_settings_are_explained() {
        let mut c = Config {
            node_id: 0,
            ..Config::default()
        };
        assert!(
            c.check()
                .unwrap_err()
                .to_string()
                .contains("greater than 0")
        );
        c.node_id = 1;
        c.api_listen = "0.0.0.0:7400".parse().unwrap();
        assert!(
            c.check()
                .unwrap_err()
                .to_string()
                .contains("api_advertise is required")
        );
        c.api_advertise = Some("10.0.0.1:7400".into());
        c.check().unwrap();
        c.http_listen = c.raft_listen;
        assert!(c.check().unwrap_err().to_string().contains("must differ"));
    }
}
