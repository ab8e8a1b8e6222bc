//! Which client certificate sovctl presents: the TLS directory (`--tls-dir`, `SOV_TLS_DIR`, or
//! `$XDG_CONFIG_HOME/sov/tls` when it exists), the identities in it, and which one a command
//! uses.
//!
//! A TLS directory is what `sovctl ca issue --out DIR` writes: the cluster CA's certificate
//! `ca.crt` and, per identity, `NAME.crt` and `NAME.key`. One person may hold several
//! identities (an operator who also reviews history as an auditor), so sovctl picks the one
//! whose role the command needs and nobody types `--as` for the usual case. The choice
//! (`choose`) is pure and tested without files; reading the directory (`load`) is not.
//!
//! Instead of a certificate, a person may hold a bearer token (`sovctl ca token`), in
//! `SOV_TOKEN` or a file (`--token-file`): sovctl then checks the schedulers with the directory's
//! `ca.crt` and presents no certificate ([`token`], [`token_transport`]).
//!
//! No directory at all means no credentials: sovctl then speaks plaintext, which only test
//! servers accept (a real scheduler serves mutual TLS only), and its connection errors say so.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sov_proto::identity::{Identity, Role};
use sov_proto::tls::{CA_CERT_FILE, TlsFiles, TlsMaterial};
use tonic::transport::Endpoint;

use crate::UsageError;
use crate::output::{now_ms, rfc3339_utc};

/// The default TLS directory, below the user's configuration directory.
const DEFAULT_SUBDIR: &str = "sov/tls";
/// Identities read from one directory at most: a person holds a handful; a directory with more
/// is not a client's, and reading each certificate costs a parse.
pub const IDENTITIES_MAX: usize = 64;
/// Appended to connection failures when no certificate is configured.
pub const NO_CERTIFICATE_HINT: &str =
    "no client certificate configured (--tls-dir or SOV_TLS_DIR; see docs/security.md)";

/// What a command needs its certificate for, as far as choosing one goes. The scheduler decides
/// what a role may do (`api::auth` there); this only mirrors it to pick the likeliest fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// A command only this role (of the client roles) may run.
    Role(Role),
    /// A read any of operator, auditor and deployer may make.
    Read,
}

impl Need {
    /// Roles that fit, best first. Reads prefer the role that sees the most, and the deployer
    /// last: it may be scoped to a namespace.
    fn preferred(self) -> &'static [Role] {
        match self {
            Need::Role(Role::Operator) => &[Role::Operator],
            Need::Role(Role::Deployer) => &[Role::Deployer],
            Need::Role(Role::Auditor) => &[Role::Auditor],
            Need::Role(Role::Agent) => &[Role::Agent],
            Need::Role(Role::Scheduler) => &[Role::Scheduler],
            Need::Read => &[Role::Operator, Role::Auditor, Role::Deployer],
        }
    }

    fn describe(self) -> String {
        match self {
            Need::Role(role) => format!("{role} certificate"),
            Need::Read => "operator, auditor or deployer certificate".to_owned(),
        }
    }
}

/// What `choose` picked, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice<'a> {
    /// The only identity there.
    Only(&'a str),
    /// An identity whose role fits the command.
    Fits(&'a str),
    /// None fits; the first by name, so that the scheduler's refusal names what is missing.
    Fallback(&'a str),
}

impl<'a> Choice<'a> {
    pub fn name(self) -> &'a str {
        match self {
            Choice::Only(n) | Choice::Fits(n) | Choice::Fallback(n) => n,
        }
    }
}

/// Picks the identity a command uses from `(name, role)` pairs sorted by name; `None` when there
/// are none. Pure.
pub fn choose(identities: &[(String, Role)], need: Need) -> Option<Choice<'_>> {
    if let [(only, _)] = identities {
        return Some(Choice::Only(only));
    }
    for role in need.preferred() {
        if let Some((name, _)) = identities.iter().find(|(_, r)| r == role) {
            return Some(Choice::Fits(name));
        }
    }
    identities.first().map(|(name, _)| Choice::Fallback(name))
}

/// The credentials a command connects with.
pub struct Credentials {
    pub not_after: SystemTime,
    pub material: TlsMaterial,
}

impl Credentials {
    /// What to check when a TLS handshake fails: the files, by path, and the three usual
    /// causes.
    pub fn handshake_advice(&self) -> String {
        format!(
            "check that {} is this cluster's CA, that {} has not expired (sovctl ca show {}), and \
             that the endpoint is a scheduler of this cluster",
            self.material.files.ca.display(),
            self.material.files.cert.display(),
            self.material.files.cert.display(),
        )
    }
}

/// `$XDG_CONFIG_HOME/sov/tls`, else `$HOME/.config/sov/tls`; `None` without either variable.
pub fn default_dir() -> Option<PathBuf> {
    let non_empty = |var: &str| std::env::var_os(var).filter(|v| !v.is_empty());
    if let Some(config) = non_empty("XDG_CONFIG_HOME") {
        return Some(PathBuf::from(config).join(DEFAULT_SUBDIR));
    }
    non_empty("HOME").map(|home| PathBuf::from(home).join(".config").join(DEFAULT_SUBDIR))
}

/// Reads the credentials a command uses: from `dir` (`--tls-dir`, `SOV_TLS_DIR`) or the default
/// directory when it exists; `--as` `as_name`, or the identity that fits `need`. `Ok(None)`
/// when no directory is configured or there by default. Notes on stderr when no identity fits
/// or the certificate has expired: the scheduler has the last word, and its refusal says why.
pub fn load(
    dir: Option<&Path>,
    as_name: Option<&str>,
    need: Need,
) -> Result<Option<Credentials>, UsageError> {
    let dir = match dir {
        Some(dir) if dir.is_dir() => dir.to_path_buf(),
        Some(dir) => {
            return Err(UsageError(format!(
                "--tls-dir {}: no such directory; it should hold ca.crt, NAME.crt and NAME.key \
                 (written by `sovctl ca issue --out DIR`)",
                dir.display()
            )));
        }
        None => match default_dir().filter(|d| d.is_dir()) {
            Some(dir) => dir,
            None if as_name.is_some() => {
                return Err(UsageError(format!(
                    "--as needs a TLS directory: pass --tls-dir DIR or set SOV_TLS_DIR (there is \
                     none at {})",
                    default_dir().map_or("~/.config/sov/tls".into(), |d| d.display().to_string())
                )));
            }
            None => return Ok(None),
        },
    };
    let names = identity_names(&dir)?;
    let name = match as_name {
        Some(wanted) if names.iter().any(|n| n == wanted) => wanted.to_owned(),
        Some(wanted) => {
            return Err(UsageError(format!(
                "--as {wanted}: no {wanted}.crt and {wanted}.key in {}; it holds: {}",
                dir.display(),
                names.join(", ")
            )));
        }
        None if names.len() == 1 => names[0].clone(),
        None => {
            let mut identities = Vec::with_capacity(names.len());
            for name in &names {
                let (identity, _, _) = read_identity(&dir, name)?;
                identities.push((name.clone(), identity.role));
            }
            let choice = choose(&identities, need).expect("the directory holds identities");
            if let Choice::Fallback(name) = choice {
                eprintln!(
                    "note: no {} in {}; calling as {name} (pick another with --as)",
                    need.describe(),
                    dir.display()
                );
            }
            choice.name().to_owned()
        }
    };
    let (_, not_after, material) = read_identity(&dir, &name)?;
    check_usable(&material)?;
    let credentials = Credentials {
        not_after,
        material,
    };
    if let Some(expired) = expired_at(credentials.not_after) {
        eprintln!(
            "warning: {} expired at {expired}; the cluster will refuse it. Get a new one (sovctl \
             ca issue)",
            credentials.material.files.cert.display()
        );
    }
    Ok(Some(credentials))
}

/// Longest token file read; a token is a few hundred bytes.
const TOKEN_FILE_BYTES_MAX: u64 = 16 * 1024;

/// The bearer token configured: `--token-file` (or `SOV_TOKEN_FILE`), else `SOV_TOKEN`; `None`
/// when neither is set. Checked for shape only; the scheduler judges it.
pub fn token(file: Option<&Path>) -> Result<Option<String>, UsageError> {
    let (text, source) = match file {
        Some(path) => {
            let size = std::fs::metadata(path)
                .map_err(|e| UsageError(format!("--token-file {}: {e}", path.display())))?
                .len();
            if size > TOKEN_FILE_BYTES_MAX {
                return Err(UsageError(format!(
                    "--token-file {}: {size} bytes is no token (a token is a few hundred bytes)",
                    path.display()
                )));
            }
            let text = std::fs::read_to_string(path)
                .map_err(|e| UsageError(format!("--token-file {}: {e}", path.display())))?;
            (text, format!("--token-file {}", path.display()))
        }
        None => match std::env::var("SOV_TOKEN") {
            Ok(text) if !text.trim().is_empty() => (text, "SOV_TOKEN".to_owned()),
            _ => return Ok(None),
        },
    };
    let token = text.trim();
    if !token.starts_with(sov_proto::token::PREFIX) || token.contains(char::is_whitespace) {
        return Err(UsageError(format!(
            "{source}: not a sov bearer token (one line starting with {}; made by `sovctl ca \
             token`)",
            sov_proto::token::PREFIX
        )));
    }
    if let Some(expired) = sov_proto::token::claimed_expiry(token).and_then(expired_at) {
        eprintln!(
            "warning: the bearer token in {source} expired at {expired}; the cluster will refuse \
             it. Get a new one (sovctl ca token)"
        );
    }
    Ok(Some(token.to_owned()))
}

/// How to connect with bearer token `token`: TLS checking the schedulers against `ca.crt` of
/// the TLS directory (`dir`, or the default one), no client certificate.
pub fn token_transport(
    dir: Option<&Path>,
    token: String,
) -> Result<crate::client::Transport, UsageError> {
    let dir = dir.map(Path::to_path_buf).or_else(default_dir);
    let ca = dir.as_ref().map(|d| d.join(CA_CERT_FILE));
    let Some(ca_pem) = ca.as_ref().and_then(|ca| std::fs::read_to_string(ca).ok()) else {
        return Err(UsageError(format!(
            "a bearer token needs the cluster CA's certificate to check the schedulers: put \
             ca.crt in {} (or point --tls-dir / SOV_TLS_DIR at a directory holding it)",
            dir.map_or("~/.config/sov/tls".into(), |d| d.display().to_string())
        )));
    };
    let ca = ca.expect("read above");
    let mut header: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
        format!("Bearer {token}")
            .parse()
            .map_err(|_| UsageError("the bearer token holds characters a header cannot".into()))?;
    // Kept out of debug output and HTTP/2 header compression tables.
    header.set_sensitive(true);
    Ok(crate::client::Transport::Token {
        advice: format!(
            "check that {} is this cluster's CA and that the endpoint is a scheduler of this \
             cluster",
            ca.display()
        ),
        ca_pem,
        token: header,
    })
}

/// When `not_after` has passed, the instant in RFC 3339; `None` while it is valid.
pub fn expired_at(not_after: SystemTime) -> Option<String> {
    let ms = millis(not_after);
    (ms <= now_ms()).then(|| rfc3339_utc(ms))
}

/// Milliseconds since the Unix epoch; 0 before it.
pub fn millis(at: SystemTime) -> i64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The identities in `dir`: every `NAME.crt` with a `NAME.key` beside it, `ca.crt` aside, sorted.
fn identity_names(dir: &Path) -> Result<Vec<String>, UsageError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| UsageError(format!("cannot read {}: {e}", dir.display())))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| UsageError(format!("cannot read {}: {e}", dir.display())))?;
        let file = entry.file_name();
        let Some(name) = file.to_str().and_then(|f| f.strip_suffix(".crt")) else {
            continue;
        };
        if file.to_str() == Some(CA_CERT_FILE) || !dir.join(format!("{name}.key")).is_file() {
            continue;
        }
        if names.len() == IDENTITIES_MAX {
            return Err(UsageError(format!(
                "{} holds more than {IDENTITIES_MAX} identities; keep a client's own in a \
                 directory of its own",
                dir.display()
            )));
        }
        names.push(name.to_owned());
    }
    if names.is_empty() {
        return Err(UsageError(format!(
            "{} holds no identity (NAME.crt with NAME.key); issue one with `sovctl ca issue \
             --out {}`",
            dir.display(),
            dir.display()
        )));
    }
    names.sort();
    Ok(names)
}

fn read_identity(
    dir: &Path,
    name: &str,
) -> Result<(Identity, SystemTime, TlsMaterial), UsageError> {
    let material = TlsFiles::in_dir(dir, name)
        .load()
        .map_err(|e| UsageError(e.to_string()))?;
    let (identity, not_after) = material
        .own_identity()
        .map_err(|e| UsageError(format!("{}: {e}", material.files.cert.display())))?;
    Ok((identity, not_after, material))
}

/// Builds the TLS client configuration once, offline, so that a key that does not parse or
/// does not match is reported as such, not as a connection failure at every endpoint.
fn check_usable(material: &TlsMaterial) -> Result<(), UsageError> {
    Endpoint::from_static("https://sov-scheduler")
        .tls_config(material.client())
        .map(drop)
        .map_err(|e| {
            UsageError(format!(
                "{} and {} cannot be used together: {}",
                material.files.cert.display(),
                material.files.key.display(),
                crate::client::connect_reason(&e)
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(pairs: &[(&str, Role)]) -> Vec<(String, Role)> {
        pairs.iter().map(|(n, r)| ((*n).to_owned(), *r)).collect()
    }

    #[test]
    fn a_lone_identity_is_used_whatever_the_command() {
        let one = ids(&[("ana", Role::Deployer)]);
        for need in [Need::Read, Need::Role(Role::Operator)] {
            assert_eq!(choose(&one, need), Some(Choice::Only("ana")));
        }
        assert_eq!(choose(&[], Need::Read), None);
    }

    #[test]
    fn the_role_a_command_needs_is_picked() {
        let all = ids(&[
            ("ana", Role::Deployer),
            ("bo", Role::Auditor),
            ("cy", Role::Operator),
            ("dee", Role::Deployer),
        ]);
        assert_eq!(
            choose(&all, Need::Role(Role::Deployer)),
            Some(Choice::Fits("ana"))
        );
        assert_eq!(
            choose(&all, Need::Role(Role::Auditor)),
            Some(Choice::Fits("bo"))
        );
        assert_eq!(
            choose(&all, Need::Role(Role::Operator)),
            Some(Choice::Fits("cy"))
        );
        assert_eq!(choose(&all, Need::Read), Some(Choice::Fits("cy")));
    }

    #[test]
    fn reads_prefer_operator_then_auditor_then_deployer() {
        let no_operator = ids(&[("ana", Role::Deployer), ("bo", Role::Auditor)]);
        assert_eq!(choose(&no_operator, Need::Read), Some(Choice::Fits("bo")));
        let deployers = ids(&[("ana", Role::Deployer), ("n1", Role::Agent)]);
        assert_eq!(choose(&deployers, Need::Read), Some(Choice::Fits("ana")));
    }

    #[test]
    fn without_a_fit_the_first_is_used_for_the_server_to_refuse() {
        let two = ids(&[("ana", Role::Deployer), ("bo", Role::Auditor)]);
        assert_eq!(
            choose(&two, Need::Role(Role::Operator)),
            Some(Choice::Fallback("ana"))
        );
        let machines = ids(&[("n1", Role::Agent), ("s1", Role::Scheduler)]);
        assert_eq!(choose(&machines, Need::Read), Some(Choice::Fallback("n1")));
    }

    #[test]
    fn expiry_is_told_in_rfc3339() {
        let past = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_781_287_200);
        assert_eq!(expired_at(past).as_deref(), Some("2026-06-12T18:00:00Z"));
        let later = SystemTime::now() + std::time::Duration::from_secs(3600);
        assert_eq!(expired_at(later), None);
    }
}
