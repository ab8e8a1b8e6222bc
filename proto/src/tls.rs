//! Mutual TLS for every sov connection, and the small certificate authority operators run with
//! `sovctl ca` (and `sov-scheduler dev` runs, throwaway, for a local cluster).
//!
//! Every party holds three files: the cluster CA's certificate (`ca.crt`), its own certificate
//! and its own private key. Servers (schedulers) require a client certificate signed by the same
//! CA; clients check that the server's certificate, also signed by that CA, names
//! [`SCHEDULER_SERVER_NAME`]: clients reach schedulers by many addresses (loopback, container
//! names, IPs), and what matters is "a scheduler of this cluster", which only scheduler
//! certificates say. Who a caller is comes from its certificate's URI names
//! ([`crate::identity`]).
//!
//! Keys are ECDSA P-256 (rcgen with ring; no C++ toolchain needed). Private keys are written with
//! mode 0600 and never overwritten.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use sha2::{Digest, Sha256};
use tonic::transport::{
    Certificate, ClientTlsConfig, Endpoint, Identity as TlsIdentity, ServerTlsConfig,
};

use crate::identity::{Identity, IdentityError, Role};

/// The DNS name every scheduler certificate carries and every client expects.
pub const SCHEDULER_SERVER_NAME: &str = "sov-scheduler";

/// File names in a CA directory and in a directory of issued credentials.
pub const CA_CERT_FILE: &str = "ca.crt";
pub const CA_KEY_FILE: &str = "ca.key";

/// Default lifetimes: the CA outlives many rotations of what it issues.
pub const CA_VALIDITY_DAYS: u64 = 3650;
pub const CERT_VALIDITY_DAYS_DEFAULT: u64 = 365;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} already exists; move it away first (sov never overwrites keys)")]
    Exists { path: PathBuf },
    #[error("{path} is not a PEM {what}")]
    NotPem { path: PathBuf, what: &'static str },
    #[error("{0}")]
    Identity(#[from] IdentityError),
    #[error("certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{0}")]
    Invalid(String),
}

/// Where one party's credentials live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The three files, read and checked to be PEM.
#[derive(Clone)]
pub struct TlsMaterial {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub files: TlsFiles,
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

impl TlsFiles {
    /// `DIR/ca.crt`, `DIR/NAME.crt`, `DIR/NAME.key`: the layout `sovctl ca issue --out DIR`
    /// writes.
    pub fn in_dir(dir: &Path, name: &str) -> TlsFiles {
        TlsFiles {
            ca: dir.join(CA_CERT_FILE),
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        }
    }

    /// Where [`Ca::issue`] writes `identity`'s files in `dir`: `NAME.crt` and `NAME.key`, a
    /// wildcard `sim-*` as `sim-all.*`.
    pub fn issued(dir: &Path, identity: &Identity) -> TlsFiles {
        let stem = identity.name.trim_end_matches('*');
        if identity.is_wildcard() {
            TlsFiles::in_dir(dir, &format!("{stem}all"))
        } else {
            TlsFiles::in_dir(dir, stem)
        }
    }

    pub fn load(&self) -> Result<TlsMaterial, TlsError> {
        let pem = |path: &Path, what: &'static str, tag: &str| {
            let text = read(path)?;
            if !text.contains(&format!("-----BEGIN {tag}")) {
                return Err(TlsError::NotPem {
                    path: path.to_path_buf(),
                    what,
                });
            }
            Ok(text)
        };
        Ok(TlsMaterial {
            ca_pem: pem(&self.ca, "CA certificate", "CERTIFICATE")?,
            cert_pem: pem(&self.cert, "certificate", "CERTIFICATE")?,
            key_pem: pem(&self.key, "private key", "").and_then(|k| {
                if k.contains("PRIVATE KEY-----") {
                    Ok(k)
                } else {
                    Err(TlsError::NotPem {
                        path: self.key.clone(),
                        what: "private key",
                    })
                }
            })?,
            files: self.clone(),
        })
    }
}

impl TlsMaterial {
    /// For a scheduler's listeners: present our certificate, require a client certificate
    /// signed by the cluster CA.
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(TlsIdentity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
    }

    /// For anything that calls a scheduler: present our certificate, trust only the cluster CA,
    /// expect a scheduler certificate.
    pub fn client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(TlsIdentity::from_pem(&self.cert_pem, &self.key_pem))
            .domain_name(SCHEDULER_SERVER_NAME)
    }

    /// Who our own certificate says we are, and until when it is valid.
    pub fn own_identity(&self) -> Result<(Identity, SystemTime), TlsError> {
        let der = pem_to_der(&self.cert_pem).ok_or_else(|| TlsError::NotPem {
            path: self.files.cert.clone(),
            what: "certificate",
        })?;
        let identity = identity_of(&der)?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| TlsError::Invalid(format!("{}: {e}", self.files.cert.display())))?;
        let not_after = cert.validity().not_after.timestamp();
        Ok((
            identity,
            SystemTime::UNIX_EPOCH + Duration::from_secs(not_after.max(0) as u64),
        ))
    }
}

/// The endpoint of the scheduler at `address` (`HOST:PORT`; a `scheme://` in front is ignored,
/// since the transport follows the credentials): mutual TLS with `tls`, plaintext without (only
/// in-process tests serve that).
pub fn scheduler_endpoint(
    address: &str,
    tls: Option<&ClientTlsConfig>,
) -> Result<Endpoint, tonic::transport::Error> {
    let authority = address.split_once("://").map_or(address, |(_, a)| a);
    match tls {
        Some(tls) => Endpoint::from_shared(format!("https://{authority}"))?.tls_config(tls.clone()),
        None => Endpoint::from_shared(format!("http://{authority}")),
    }
}

fn pem_to_der(pem_text: &str) -> Option<Vec<u8>> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem_text.as_bytes()).ok()?;
    Some(pem.contents)
}

/// The sov identity in a DER certificate (a peer's, as the TLS layer hands it over).
pub fn identity_of(der: &[u8]) -> Result<Identity, IdentityError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| IdentityError::Invalid(format!("unreadable certificate: {e}")))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| IdentityError::Invalid(format!("unreadable alternative names: {e}")))?;
    let uris = san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::URI(u) => Some(*u),
                    _ => None,
                })
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    Identity::from_uris(uris)
}

/// An opaque, stable id for a certificate (first 16 bytes of the SHA-256 of its DER, hex): what
/// history records about the person or machine behind a change, with no personal data in it.
/// `sovctl ca issue` prints it, so the organisation can keep the mapping to people elsewhere.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(&Sha256::digest(der)[..16])
}

/// Writes `contents` to a new file (never replacing one), private to its owner when `private`.
pub fn write_new(path: &Path, contents: &str, private: bool) -> Result<(), TlsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options
        .write(true)
        .create_new(true)
        .mode(if private { 0o600 } else { 0o644 });
    let mut file = options.open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            TlsError::Exists {
                path: path.to_path_buf(),
            }
        } else {
            TlsError::Write {
                path: path.to_path_buf(),
                source,
            }
        }
    })?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|source| TlsError::Write {
            path: path.to_path_buf(),
            source,
        })
}

fn days(n: u64) -> Duration {
    Duration::from_secs(n * 86_400)
}

/// The cluster's certificate authority: a directory holding `ca.crt` and `ca.key`.
pub struct Ca {
    cert_pem: String,
    key: KeyPair,
    dir: PathBuf,
}

/// What [`Ca::issue`] wrote.
#[derive(Debug, Clone)]
pub struct Issued {
    pub files: TlsFiles,
    pub fingerprint: String,
    pub uris: Vec<String>,
    pub not_after: SystemTime,
}

impl Ca {
    /// Makes a new CA in `dir` (created if missing); refuses if one is there already.
    pub fn init(dir: &Path, common_name: &str) -> Result<Ca, TlsError> {
        std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        for file in [CA_CERT_FILE, CA_KEY_FILE] {
            if dir.join(file).exists() {
                return Err(TlsError::Exists {
                    path: dir.join(file),
                });
            }
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn.push(DnType::OrganizationName, "sov");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(3600)).into();
        params.not_after = (now + days(CA_VALIDITY_DAYS)).into();
        let cert = params.self_signed(&key)?;
        // The key first: a directory with a certificate but no key cannot issue anything.
        write_new(&dir.join(CA_KEY_FILE), &key.serialize_pem(), true)?;
        write_new(&dir.join(CA_CERT_FILE), &cert.pem(), false)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key,
            dir: dir.to_path_buf(),
        })
    }

    pub fn load(dir: &Path) -> Result<Ca, TlsError> {
        let cert_pem = read(&dir.join(CA_CERT_FILE))?;
        let key_path = dir.join(CA_KEY_FILE);
        let key = KeyPair::from_pem(&read(&key_path)?).map_err(|_| TlsError::NotPem {
            path: key_path,
            what: "private key",
        })?;
        Ok(Ca {
            cert_pem,
            key,
            dir: dir.to_path_buf(),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's key, for what else it signs (bearer tokens, `crate::token`).
    pub(crate) fn key(&self) -> &KeyPair {
        &self.key
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Issues a certificate for `identity`, valid until `not_after`, into `out`: `NAME.crt`,
    /// `NAME.key` (0600) and a copy of `ca.crt` (so the directory is all a party needs).
    /// Scheduler certificates also name [`SCHEDULER_SERVER_NAME`] and `dns` as DNS names.
    pub fn issue(
        &self,
        identity: &Identity,
        not_after: SystemTime,
        dns: &[String],
        out: &Path,
    ) -> Result<Issued, TlsError> {
        let now = SystemTime::now();
        let files = TlsFiles::issued(out, identity);
        for path in [&files.cert, &files.key] {
            if path.exists() {
                return Err(TlsError::Exists { path: path.clone() });
            }
        }
        // Checked before anything is written: a refusal leaves no files behind.
        let ca_copy = out.join(CA_CERT_FILE);
        let ca_matches = match read(&ca_copy) {
            Ok(existing) if existing == self.cert_pem => true,
            Ok(_) => {
                return Err(TlsError::Invalid(format!(
                    "{} holds another CA's certificate; issue into another directory",
                    ca_copy.display()
                )));
            }
            Err(_) => false,
        };
        let mut names = Vec::new();
        if identity.role == Role::Scheduler {
            names.push(SCHEDULER_SERVER_NAME.to_string());
            names.extend(dns.iter().cloned());
        } else if !dns.is_empty() {
            return Err(TlsError::Invalid(
                "DNS names are for scheduler certificates only".into(),
            ));
        }
        let mut params = CertificateParams::new(names)?;
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            format!("{} {}", identity.role, identity.name),
        );
        dn.push(DnType::OrganizationName, "sov");
        params.distinguished_name = dn;
        for uri in identity.uris() {
            params.subject_alt_names.push(SanType::URI(
                uri.as_str()
                    .try_into()
                    .map_err(|_| TlsError::Invalid(format!("{uri} is not ASCII")))?,
            ));
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        // Valid from a day before now (or before the end, for an already expired test
        // certificate), so clocks a little behind still accept it.
        let not_before = (now - days(1)).min(not_after - days(1));
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        let key = KeyPair::generate()?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)?;
        let cert = params.signed_by(&key, &issuer)?;
        std::fs::create_dir_all(out).map_err(|source| TlsError::Write {
            path: out.to_path_buf(),
            source,
        })?;
        write_new(&files.key, &key.serialize_pem(), true)?;
        write_new(&files.cert, &cert.pem(), false)?;
        if !ca_matches {
            write_new(&ca_copy, &self.cert_pem, false)?;
        }
        Ok(Issued {
            files,
            fingerprint: fingerprint(cert.der()),
            uris: identity.uris(),
            not_after,
        })
    }
}

/// `now + days`, for `--days`.
pub fn valid_for_days(n: u64) -> SystemTime {
    SystemTime::now() + days(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_issues_certificates_that_carry_their_identity() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::init(&dir.path().join("ca"), "test CA").unwrap();
        let id = Identity::new(Role::Agent, "fr-1")
            .unwrap()
            .with_location("country", "FR")
            .unwrap();
        let out = dir.path().join("fr-1");
        let issued = ca.issue(&id, valid_for_days(30), &[], &out).unwrap();
        let material = issued.files.load().unwrap();
        let (back, not_after) = material.own_identity().unwrap();
        assert_eq!(back, id);
        assert!(not_after > SystemTime::now());
        assert_eq!(issued.fingerprint.len(), 32);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&issued.files.key)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Never overwritten.
        assert!(matches!(
            ca.issue(&id, valid_for_days(30), &[], &out),
            Err(TlsError::Exists { .. })
        ));
        assert!(matches!(
            Ca::init(&dir.path().join("ca"), "again"),
            Err(TlsError::Exists { .. })
        ));
        // A reloaded CA issues into the same directory.
        let again = Ca::load(&dir.path().join("ca")).unwrap();
        let ops = Identity::new(Role::Operator, "ops").unwrap();
        again.issue(&ops, valid_for_days(1), &[], &out).unwrap();
        assert!(
            ca.issue(
                &ops,
                valid_for_days(1),
                &["x".into()],
                &dir.path().join("o")
            )
            .is_err()
        );
    }

    #[test]
    fn missing_and_wrong_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles::in_dir(dir.path(), "nobody");
        let err = files.load().err().unwrap().to_string();
        assert!(err.contains("ca.crt"), "{err}");
        std::fs::write(dir.path().join("ca.crt"), "hello").unwrap();
        let err = files.load().err().unwrap().to_string();
        assert!(err.contains("is not a PEM CA certificate"), "{err}");
    }
}
