//! The agent's certificate: where its three PEM files are (`[tls]` in the config, or
//! `--tls-ca`/`--tls-cert`/`--tls-key`), and the checks made on them before anything is sent.
//!
//! Every scheduler requires a client certificate from the cluster CA with role `agent`, refuses
//! an agent acting for a node its certificate does not name, and takes a node's location from
//! the certificate's claims, refusing a registration whose reported facts disagree
//! ([`sov_proto::identity`]). Each of those refusals would come back as a retried error on every
//! session; checked here, at start, they stop the agent once with a sentence that names the file,
//! the node and the fact, which is kinder.
//!
//! A [`Credentials`] can only be made by [`Credentials::for_node`] (a real agent) or
//! [`Credentials::for_fleet`] (the simulator), so nothing connects to a scheduler with unchecked
//! files, and nothing connects without them.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sov_proto::identity::{Identity, Role};
use sov_proto::tls::{TlsError, TlsFiles};
use sov_scheduler::state::node::NodeFacts;
use tonic::transport::ClientTlsConfig;

use crate::config::TlsPaths;

/// A certificate closer than this to its end is warned about at start: time enough for an
/// operator to issue the next one (`sovctl ca issue`) before the node drops out.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86_400);

/// Errors are walked this deep for a TLS hint; real chains are 3 to 5 long.
const ERROR_CHAIN_DEPTH_MAX: usize = 16;

/// `--tls-ca`, `--tls-cert`, `--tls-key`: each overrides the same key of the config's `[tls]`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsFlags {
    /// The cluster CA's certificate (PEM): only schedulers it signed are trusted. Overrides
    /// [tls] ca of the agent config
    #[arg(long = "tls-ca", env = "SOV_TLS_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Our certificate (PEM) from the cluster CA, role agent: issued for the node (`run`), or
    /// for the wildcard '<name_prefix>-*' of the fleet spec (`fleet`, e.g. 'sim-*'). Overrides
    /// [tls] cert
    #[arg(long = "tls-cert", env = "SOV_TLS_CERT", value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// The private key of that certificate (PEM, readable by this user only). Overrides [tls]
    /// key
    #[arg(long = "tls-key", env = "SOV_TLS_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,
}

impl TlsFlags {
    /// `file` with every path given on the command line (or in the environment) replaced.
    pub fn over(&self, file: &TlsPaths) -> TlsPaths {
        TlsPaths {
            ca: self.ca.clone().or_else(|| file.ca.clone()),
            cert: self.cert.clone().or_else(|| file.cert.clone()),
            key: self.key.clone().or_else(|| file.key.clone()),
        }
    }
}

/// Why the agent (or the fleet) will not start with the TLS files it was given. Every message
/// names the file or the flag and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error(
        "{who} needs a certificate from the cluster's CA and none is configured: ask the \
         cluster's operator for one ({issue}; see docs/security.md) and name its three files \
         {place}"
    )]
    NotConfigured {
        who: String,
        issue: String,
        place: &'static str,
    },
    #[error(
        "tls.{key} is not set: write {key} = \"PATH\" under [tls] or pass --tls-{key} \
         (env {env}); all three of ca, cert and key are needed"
    )]
    Incomplete {
        key: &'static str,
        env: &'static str,
    },
    /// Unreadable or not PEM; [`TlsError`] names the file.
    #[error("{0}; check the path under [tls] or in --tls-ca/--tls-cert/--tls-key")]
    Load(TlsError),
    #[error("certificate {cert}: {error}; it must be a certificate issued by `sovctl ca issue`")]
    Unreadable { cert: String, error: TlsError },
    /// The PEM files parse, but TLS cannot use them together (most often a key from another
    /// issuance than the certificate).
    #[error(
        "{cert} and {key} cannot be used for TLS ({error}): check that the key is the one \
         `sovctl ca issue` wrote with this certificate"
    )]
    Unusable {
        cert: String,
        key: String,
        error: String,
    },
    #[error(
        "certificate {cert} is for {identity}, not a node agent: an agent needs one issued with \
         `sovctl ca issue --role agent`"
    )]
    NotAgent { cert: String, identity: Identity },
    #[error(
        "certificate {cert} is for node {cert_name:?}, this agent is {node:?}: use the \
         certificate issued for {node:?}, or set name = {cert_name:?} if that is this node"
    )]
    OtherNode {
        cert: String,
        cert_name: String,
        node: String,
    },
    #[error(
        "certificate {cert} expired on {date} (UTC): ask the cluster's operator for a new one \
         (`sovctl ca issue`; docs/security.md), or check this machine's clock"
    )]
    Expired { cert: String, date: String },
    #[error(
        "certificate {cert} vouches for {fact} = {cert_value:?} but {origin} says {fact} = \
         {file_value:?} under [location]: the scheduler would refuse this registration; correct \
         the file, or have a certificate issued with the right {fact}"
    )]
    LocationMismatch {
        cert: String,
        origin: String,
        fact: &'static str,
        cert_value: String,
        file_value: String,
    },
    #[error(
        "certificate {cert} is for every node named {pattern:?} yet vouches for a location \
         ({claims}): a certificate for many nodes cannot vouch for where one is; issue it again \
         without location claims"
    )]
    WildcardWithClaims {
        cert: String,
        pattern: String,
        claims: String,
    },
    #[error(
        "certificate {cert} vouches for a location ({claims}), but the fleet's virtual nodes \
         report their spec's facts, self-reported: use a wildcard agent certificate without \
         location claims (`sovctl ca issue --role agent --name '{prefix}-*'`)"
    )]
    FleetWithClaims {
        cert: String,
        claims: String,
        prefix: String,
    },
    #[error(
        "certificate {cert} is for node {cert_name:?}, which does not cover virtual node \
         {node:?} (nor {uncovered_more} other of the {nodes} nodes): virtual nodes are named \
         <name_prefix>-<country>-<n>, so the fleet needs the wildcard certificate \
         `sovctl ca issue --role agent --name '{prefix}-*'`, or a name_prefix its certificate \
         covers"
    )]
    FleetNotCovered {
        cert: String,
        cert_name: String,
        node: String,
        uncovered_more: usize,
        nodes: usize,
        prefix: String,
    },
}

/// Checked TLS files: who they say we are, and the client configuration every channel to a
/// scheduler uses.
#[derive(Clone)]
pub struct Credentials {
    client: ClientTlsConfig,
    identity: Identity,
    not_after: SystemTime,
    cert: PathBuf,
}

/// Not derived: the TLS configuration holds the private key, which no log may show.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("identity", &self.identity)
            .field("not_after", &utc_date(self.not_after))
            .field("cert", &self.cert)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// For the agent of node `name`, whose `[location]` (in config file `origin`) is `facts`:
    /// the certificate must be an agent's, speak for `name`, be valid now, and vouch for no
    /// location fact other than the file's.
    pub fn for_node(
        paths: &TlsPaths,
        name: &str,
        facts: &NodeFacts,
        origin: &str,
    ) -> Result<Credentials, CredentialError> {
        let files = paths.files().ok_or_else(|| CredentialError::NotConfigured {
            who: format!("the agent of node {name:?}"),
            issue: format!(
                "`sovctl ca issue --role agent --name {name} --country {} ...` with the location \
                 facts it should vouch for",
                if facts.country.is_empty() {
                    "CC"
                } else {
                    &facts.country
                }
            ),
            place: "under [tls] (ca, cert, key) or with --tls-ca, --tls-cert and --tls-key",
        })??;
        let credentials = Credentials::load(&files)?;
        let identity = &credentials.identity;
        if !identity.speaks_for(name) {
            return Err(CredentialError::OtherNode {
                cert: credentials.cert_text(),
                cert_name: identity.name.clone(),
                node: name.to_owned(),
            });
        }
        if identity.is_wildcard() && !identity.location.is_empty() {
            return Err(CredentialError::WildcardWithClaims {
                cert: credentials.cert_text(),
                pattern: identity.name.clone(),
                claims: claims_text(identity),
            });
        }
        for (fact, cert_value) in &identity.location {
            let (fact, file_value) = fact_of(facts, fact);
            if file_value != cert_value {
                return Err(CredentialError::LocationMismatch {
                    cert: credentials.cert_text(),
                    origin: origin.to_owned(),
                    fact,
                    cert_value: cert_value.clone(),
                    file_value: file_value.to_owned(),
                });
            }
        }
        Ok(credentials)
    }

    /// For the fleet simulator speaking for every node of `names` (made with `prefix`, the
    /// spec's `name_prefix`) over shared connections: an agent certificate that speaks for all
    /// of them (the wildcard `<prefix>-*`) and vouches for no location, since virtual nodes'
    /// facts are made up.
    pub fn for_fleet<'a>(
        paths: &TlsPaths,
        prefix: &str,
        names: impl ExactSizeIterator<Item = &'a str>,
    ) -> Result<Credentials, CredentialError> {
        let files = paths
            .files()
            .ok_or_else(|| CredentialError::NotConfigured {
                who: "the fleet simulator".to_owned(),
                issue: format!(
                    "one wildcard certificate for all its nodes: `sovctl ca issue --role agent \
                 --name '{prefix}-*'`, without location flags"
                ),
                place: "with --tls-ca, --tls-cert and --tls-key \
                    (env SOV_TLS_CA, SOV_TLS_CERT, SOV_TLS_KEY)",
            })??;
        let credentials = Credentials::load(&files)?;
        let identity = &credentials.identity;
        if !identity.location.is_empty() {
            return Err(if identity.is_wildcard() {
                CredentialError::WildcardWithClaims {
                    cert: credentials.cert_text(),
                    pattern: identity.name.clone(),
                    claims: claims_text(identity),
                }
            } else {
                CredentialError::FleetWithClaims {
                    cert: credentials.cert_text(),
                    claims: claims_text(identity),
                    prefix: prefix.to_owned(),
                }
            });
        }
        let nodes = names.len();
        let mut uncovered = names.filter(|n| !identity.speaks_for(n));
        if let Some(first) = uncovered.next() {
            return Err(CredentialError::FleetNotCovered {
                cert: credentials.cert_text(),
                cert_name: identity.name.clone(),
                node: first.to_owned(),
                uncovered_more: uncovered.count(),
                nodes,
                prefix: prefix.to_owned(),
            });
        }
        Ok(credentials)
    }

    /// Reads the files and checks what every agent certificate must be: an agent's, and valid
    /// now.
    fn load(files: &TlsFiles) -> Result<Credentials, CredentialError> {
        let material = files.load().map_err(CredentialError::Load)?;
        let cert = files.cert.clone();
        let (identity, not_after) =
            material
                .own_identity()
                .map_err(|error| CredentialError::Unreadable {
                    cert: cert.display().to_string(),
                    error,
                })?;
        if identity.role != Role::Agent {
            return Err(CredentialError::NotAgent {
                cert: cert.display().to_string(),
                identity,
            });
        }
        if not_after <= SystemTime::now() {
            return Err(CredentialError::Expired {
                cert: cert.display().to_string(),
                date: utc_date(not_after),
            });
        }
        // The same call every channel makes, done once here so an unusable key stops the start
        // instead of failing every connection attempt. No connection is made.
        let client = material.client();
        tonic::transport::Endpoint::from_static("https://sov-scheduler:1")
            .tls_config(client.clone())
            .map_err(|e| CredentialError::Unusable {
                cert: cert.display().to_string(),
                key: files.key.display().to_string(),
                error: error_text(&e),
            })?;
        Ok(Credentials {
            client,
            identity,
            not_after,
            cert,
        })
    }

    /// What every channel to a scheduler presents and trusts.
    pub fn client_tls(&self) -> ClientTlsConfig {
        self.client.clone()
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    pub fn cert_path(&self) -> &Path {
        &self.cert
    }

    /// A sentence when the certificate ends within [`EXPIRY_WARNING`] of `now`.
    pub fn expiry_warning(&self, now: SystemTime) -> Option<String> {
        let left = self.not_after.duration_since(now).unwrap_or_default();
        (left < EXPIRY_WARNING).then(|| {
            format!(
                "certificate {} expires on {} (UTC), in {} days: ask the cluster's operator for \
                 a new one (`sovctl ca issue`; docs/security.md) and restart the agent with it",
                self.cert.display(),
                utc_date(self.not_after),
                left.as_secs() / 86_400
            )
        })
    }

    /// Logs who we are to the schedulers, and warns when that ends soon.
    pub fn log(&self) {
        tracing::info!(
            identity = %self.identity,
            location_claims = %claims_text(&self.identity),
            not_after = utc_date(self.not_after),
            cert = %self.cert.display(),
            "mutual TLS to the schedulers"
        );
        if let Some(warning) = self.expiry_warning(SystemTime::now()) {
            tracing::warn!("{warning}");
        }
    }

    fn cert_text(&self) -> String {
        self.cert.display().to_string()
    }
}

impl TlsPaths {
    /// The three files; `None` when none is set, an error naming the first missing one when
    /// only some are. An empty path counts as not set.
    fn files(&self) -> Option<Result<TlsFiles, CredentialError>> {
        let set = |p: &Option<PathBuf>| p.clone().filter(|p| !p.as_os_str().is_empty());
        let (ca, cert, key) = (set(&self.ca), set(&self.cert), set(&self.key));
        if ca.is_none() && cert.is_none() && key.is_none() {
            return None;
        }
        let need = |p: Option<PathBuf>, key: &'static str, env: &'static str| {
            p.ok_or(CredentialError::Incomplete { key, env })
        };
        Some((|| {
            Ok(TlsFiles {
                ca: need(ca, "ca", "SOV_TLS_CA")?,
                cert: need(cert, "cert", "SOV_TLS_CERT")?,
                key: need(key, "key", "SOV_TLS_KEY")?,
            })
        })())
    }
}

/// The configured value of location fact `fact` (one of
/// [`sov_proto::identity::LOCATION_FACTS`], which is all a parsed identity can hold).
fn fact_of<'f>(facts: &'f NodeFacts, fact: &str) -> (&'static str, &'f str) {
    match fact {
        "country" => ("country", &facts.country),
        "subdivision" => ("subdivision", &facts.subdivision),
        "site" => ("site", &facts.site),
        "operator" => ("operator", &facts.operator),
        "operator_hq" => ("operator_hq", &facts.operator_hq),
        "ultimate_parent_hq" => ("ultimate_parent_hq", &facts.ultimate_parent_hq),
        // Identity::from_uris refuses any other fact; reaching this is a bug in sov-proto, and
        // a claim the agent cannot compare must stop it rather than be waved through.
        _ => ("an unknown fact", ""),
    }
}

/// `country=FR, site=par-1`, or `none`.
fn claims_text(identity: &Identity) -> String {
    if identity.location.is_empty() {
        return "none".to_owned();
    }
    identity
        .location
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `YYYY-MM-DD` (UTC) of `t`: certificates are issued for days, so the day is what an operator
/// needs to read. (Howard Hinnant's `civil_from_days`.)
pub fn utc_date(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// `error` and every error under it, joined: tonic's own errors say little more than
/// "transport error" at the top.
fn error_text(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    for _ in 0..ERROR_CHAIN_DEPTH_MAX {
        let Some(inner) = source else { break };
        let line = inner.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = inner.source();
    }
    text
}

/// The status's message and every error under it, joined: tonic often says only "transport
/// error" and keeps the TLS reason in the source chain.
pub fn error_chain(status: &tonic::Status) -> String {
    match std::error::Error::source(status) {
        Some(source) => {
            let below = error_text(source);
            if below.contains(status.message()) {
                below
            } else {
                format!("{}: {below}", status.message())
            }
        }
        None => status.message().to_owned(),
    }
}

/// What to check when a connection failed in the TLS handshake, from the error's text (rustls
/// names the failure; the first match wins). `None` when it does not look like a TLS failure.
pub fn tls_hint(error: &str) -> Option<&'static str> {
    const HINTS: [(&[&str], &str); 6] = [
        (
            &["Expired", "expired", "NotValidYet"],
            "a certificate is outside its validity period: ours (tls.cert) or the scheduler's \
             has expired or is not valid yet; renew it with `sovctl ca issue`, and check both \
             machines' clocks",
        ),
        (
            &[
                "UnknownIssuer",
                "UnknownCA",
                "BadSignature",
                "unknown issuer",
            ],
            "the certificates come from different CAs: tls.ca must be the cluster CA that \
             signed the schedulers' certificates, and ours must be signed by it too",
        ),
        (
            &["NotValidForName", "not valid for name"],
            "the server's certificate is not a scheduler's (it does not name sov-scheduler): \
             check that the endpoint is a scheduler's API port of this cluster",
        ),
        (
            &[
                "CertificateRequired",
                "BadCertificate",
                "AccessDenied",
                "CertificateRevoked",
            ],
            "the scheduler refused our certificate: check that tls.cert and tls.key are the \
             pair issued by this cluster's CA",
        ),
        (
            &["InvalidContentType", "corrupt message", "WrongVersion"],
            "the endpoint does not speak TLS: it is not a scheduler's API port, or that \
             scheduler runs without TLS",
        ),
        (
            &[
                "invalid peer certificate",
                "fatal alert",
                "HandshakeFailure",
            ],
            "the TLS handshake failed: check tls.ca, tls.cert and tls.key against the cluster's \
             CA (docs/security.md)",
        ),
    ];
    HINTS
        .iter()
        .find(|(needles, _)| needles.iter().any(|n| error.contains(n)))
        .map(|(_, hint)| *hint)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sov_proto::tls::{Ca, valid_for_days};

    const DAY: Duration = Duration::from_secs(86_400);

    struct Pki {
        dir: tempfile::TempDir,
        ca: Ca,
        /// Certificates issued so far: each goes to its own directory, since a name may be
        /// issued twice (the CA never overwrites).
        issued: std::cell::Cell<u32>,
    }

    impl Pki {
        fn new() -> Pki {
            let dir = tempfile::tempdir().expect("tempdir");
            let ca = Ca::init(&dir.path().join("ca"), "test CA").expect("CA");
            Pki {
                dir,
                ca,
                issued: std::cell::Cell::new(0),
            }
        }

        /// Issues `identity` valid until `not_after` into its own directory.
        fn issue_until(&self, identity: &Identity, not_after: SystemTime) -> TlsPaths {
            self.issued.set(self.issued.get() + 1);
            let out = self.dir.path().join(self.issued.get().to_string());
            let issued = self
                .ca
                .issue(identity, not_after, &[], &out)
                .expect("issue");
            TlsPaths {
                ca: Some(issued.files.ca),
                cert: Some(issued.files.cert),
                key: Some(issued.files.key),
            }
        }

        fn issue(&self, identity: &Identity) -> TlsPaths {
            self.issue_until(identity, valid_for_days(365))
        }
    }

    fn agent(name: &str, claims: &[(&str, &str)]) -> Identity {
        claims.iter().fold(
            Identity::new(Role::Agent, name).expect("identity"),
            |id, (fact, value)| id.with_location(fact, value).expect("claim"),
        )
    }

    fn facts() -> NodeFacts {
        NodeFacts {
            country: "FR".into(),
            subdivision: "FR-IDF".into(),
            site: "par-1".into(),
            operator: "Example Cloud SAS".into(),
            operator_hq: "FR".into(),
            ultimate_parent_hq: "FR".into(),
            ..NodeFacts::default()
        }
    }

    fn for_node(paths: &TlsPaths) -> Result<Credentials, CredentialError> {
        Credentials::for_node(paths, "fr-par-1", &facts(), "agent.toml")
    }

    #[test]
    fn a_matching_certificate_is_accepted() {
        let pki = Pki::new();
        let paths = pki.issue(&agent(
            "fr-par-1",
            &[
                ("country", "FR"),
                ("subdivision", "FR-IDF"),
                ("site", "par-1"),
            ],
        ));
        let credentials = for_node(&paths).expect("valid");
        assert_eq!(credentials.identity().name, "fr-par-1");
        assert_eq!(credentials.identity().location.len(), 3);
        assert!(credentials.not_after() > SystemTime::now() + 300 * DAY);
        assert_eq!(credentials.expiry_warning(SystemTime::now()), None);
    }

    #[test]
    fn missing_certificates_are_refused_with_how_to_get_them() {
        let err = for_node(&TlsPaths::default())
            .expect_err("no TLS")
            .to_string();
        assert!(
            err.contains("sovctl ca issue --role agent --name fr-par-1 --country FR"),
            "{err}"
        );
        assert!(err.contains("docs/security.md"), "{err}");
        assert!(err.contains("--tls-ca") && err.contains("[tls]"), "{err}");

        let err = Credentials::for_fleet(&TlsPaths::default(), "sim", ["sim-fr-0"].into_iter())
            .expect_err("no TLS")
            .to_string();
        assert!(err.contains("--name 'sim-*'"), "{err}");
    }

    #[test]
    fn a_partial_tls_table_names_the_missing_key() {
        let pki = Pki::new();
        let mut paths = pki.issue(&agent("fr-par-1", &[]));
        paths.key = None;
        let err = for_node(&paths).expect_err("no key").to_string();
        assert!(
            err.starts_with("tls.key is not set") && err.contains("--tls-key"),
            "{err}"
        );
        paths.key = Some(PathBuf::new());
        assert!(matches!(
            for_node(&paths),
            Err(CredentialError::Incomplete { key: "key", .. })
        ));
    }

    #[test]
    fn unreadable_files_are_named() {
        let pki = Pki::new();
        let mut paths = pki.issue(&agent("fr-par-1", &[]));
        let missing = pki.dir.path().join("nowhere.crt");
        paths.cert = Some(missing.clone());
        let err = for_node(&paths).expect_err("missing file").to_string();
        assert!(err.contains(&missing.display().to_string()), "{err}");
        // The key where the certificate should be.
        paths.cert = paths.key.clone();
        let err = for_node(&paths).expect_err("not a certificate").to_string();
        assert!(err.contains("is not a PEM certificate"), "{err}");
    }

    #[test]
    fn a_key_from_another_issuance_is_refused() {
        let pki = Pki::new();
        let mut paths = pki.issue(&agent("fr-par-1", &[]));
        paths.key = pki.issue(&agent("fr-par-1", &[])).key;
        let err = for_node(&paths).expect_err("mismatched key");
        assert!(matches!(err, CredentialError::Unusable { .. }), "{err}");
    }

    #[test]
    fn a_certificate_for_another_node_is_refused_naming_both() {
        let pki = Pki::new();
        let paths = pki.issue(&agent("fr-par-2", &[]));
        let err = for_node(&paths).expect_err("other node").to_string();
        assert!(
            err.contains("is for node \"fr-par-2\", this agent is \"fr-par-1\""),
            "{err}"
        );
        assert!(err.contains("fr-par-2.crt"), "{err}");
    }

    #[test]
    fn a_certificate_of_another_role_is_refused() {
        let pki = Pki::new();
        let paths = pki.issue(&Identity::new(Role::Operator, "fr-par-1").expect("id"));
        let err = for_node(&paths).expect_err("operator").to_string();
        assert!(
            err.contains("not a node agent") && err.contains("--role agent"),
            "{err}"
        );
    }

    #[test]
    fn a_location_claim_that_disagrees_is_refused_naming_the_fact_and_both_values() {
        let pki = Pki::new();
        let paths = pki.issue(&agent("fr-par-1", &[("country", "FR"), ("site", "par-2")]));
        let err = for_node(&paths).expect_err("site differs");
        let CredentialError::LocationMismatch {
            fact,
            cert_value,
            file_value,
            ..
        } = &err
        else {
            panic!("expected a location mismatch, got {err}");
        };
        assert_eq!(
            (*fact, cert_value.as_str(), file_value.as_str()),
            ("site", "par-2", "par-1")
        );
        let text = err.to_string();
        assert!(
            text.contains("site = \"par-2\"") && text.contains("agent.toml says site = \"par-1\""),
            "{text}"
        );

        // A claim for a fact the file leaves empty disagrees too.
        let mut no_subdivision = facts();
        no_subdivision.subdivision.clear();
        let paths = pki.issue(&agent("fr-par-1", &[("subdivision", "FR-IDF")]));
        let err = Credentials::for_node(&paths, "fr-par-1", &no_subdivision, "agent.toml")
            .expect_err("subdivision not in the file");
        assert!(
            matches!(
                err,
                CredentialError::LocationMismatch {
                    fact: "subdivision",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_wildcard_certificate_with_claims_is_refused() {
        let pki = Pki::new();
        let paths = pki.issue(&agent("fr-*", &[("country", "FR")]));
        let err = for_node(&paths)
            .expect_err("wildcard with claims")
            .to_string();
        assert!(
            err.contains("\"fr-*\"") && err.contains("country=FR"),
            "{err}"
        );
        let err = Credentials::for_fleet(&paths, "fr", ["fr-fr-0"].into_iter())
            .expect_err("wildcard with claims")
            .to_string();
        assert!(err.contains("without location claims"), "{err}");

        // Without claims a wildcard speaks for the node; its facts stay self-reported.
        let paths = pki.issue(&agent("fr-par-*", &[]));
        assert!(for_node(&paths).is_ok());
    }

    #[test]
    fn an_expired_certificate_is_refused_and_one_ending_soon_is_warned_about() {
        let pki = Pki::new();
        let paths = pki.issue_until(
            &agent("fr-par-1", &[]),
            SystemTime::now() - Duration::from_secs(3_600),
        );
        let err = for_node(&paths).expect_err("expired").to_string();
        assert!(
            err.contains("expired on") && err.contains("sovctl ca issue"),
            "{err}"
        );

        let pki = Pki::new();
        let paths = pki.issue_until(&agent("fr-par-1", &[]), valid_for_days(10));
        let credentials = for_node(&paths).expect("valid for ten days");
        let warning = credentials
            .expiry_warning(SystemTime::now())
            .expect("ends within 30 days");
        assert!(
            warning.contains("in 9 days") || warning.contains("in 10 days"),
            "{warning}"
        );
        assert_eq!(
            credentials.expiry_warning(SystemTime::now() - 30 * DAY),
            None
        );
    }

    #[test]
    fn the_fleet_needs_a_certificate_covering_every_virtual_node() {
        let pki = Pki::new();
        let names = ["sim-fr-0", "sim-de-1", "sim-fr-2"];
        let paths = pki.issue(&agent("sim-*", &[]));
        let credentials =
            Credentials::for_fleet(&paths, "sim", names.into_iter()).expect("covered");
        assert!(credentials.identity().is_wildcard());

        let paths = pki.issue(&agent("sim-fr-*", &[]));
        let err = Credentials::for_fleet(&paths, "sim", names.into_iter())
            .expect_err("sim-de-1 not covered")
            .to_string();
        assert!(
            err.contains("virtual node \"sim-de-1\" (nor 0 other of the 3 nodes)")
                && err.contains("--name 'sim-*'"),
            "{err}"
        );

        let paths = pki.issue(&agent("sim-fr-0", &[("country", "FR")]));
        let err = Credentials::for_fleet(&paths, "sim", ["sim-fr-0"].into_iter())
            .expect_err("claims")
            .to_string();
        assert!(err.contains("self-reported"), "{err}");
    }

    #[test]
    fn flags_override_the_file_one_by_one() {
        let file = TlsPaths {
            ca: Some("file-ca".into()),
            cert: Some("file-cert".into()),
            key: None,
        };
        let flags = TlsFlags {
            ca: None,
            cert: Some("flag-cert".into()),
            key: Some("flag-key".into()),
        };
        assert_eq!(
            flags.over(&file),
            TlsPaths {
                ca: Some("file-ca".into()),
                cert: Some("flag-cert".into()),
                key: Some("flag-key".into()),
            }
        );
    }

    #[test]
    fn dates_are_utc_days() {
        let at = |secs: u64| utc_date(SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "1970-01-01");
        assert_eq!(at(951_782_400), "2000-02-29");
        assert_eq!(at(1_735_689_599), "2024-12-31");
        assert_eq!(at(1_735_689_600), "2025-01-01");
    }

    #[test]
    fn handshake_failures_get_a_hint() {
        for (error, expected) in [
            ("invalid peer certificate: UnknownIssuer", "different CAs"),
            ("received fatal alert: UnknownCA", "different CAs"),
            ("invalid peer certificate: Expired", "validity period"),
            (
                "received fatal alert: CertificateExpired",
                "validity period",
            ),
            (
                "invalid peer certificate: NotValidForName",
                "not a scheduler's",
            ),
            (
                "received fatal alert: CertificateRequired",
                "refused our certificate",
            ),
            (
                "received corrupt message of type InvalidContentType",
                "does not speak TLS",
            ),
        ] {
            let hint = tls_hint(error).unwrap_or_else(|| panic!("no hint for {error}"));
            assert!(hint.contains(expected), "{error}: {hint}");
        }
        assert_eq!(tls_hint("connection refused"), None);
    }
}
