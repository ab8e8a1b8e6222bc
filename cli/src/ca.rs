//! `sovctl ca ...`: the cluster's small certificate authority, run by an operator on a machine
//! that holds the CA key, with no cluster and no endpoint. `init` makes the CA, `issue` one
//! certificate per scheduler, agent and person, `show` reads a certificate back.
//!
//! The certificates themselves are `sov_proto::tls`'s business (shared with `sov-scheduler
//! dev`), and what an identity may claim is `sov_proto::identity`'s. This module turns flags
//! into an `Identity` and refuses bad input before anything is written, so a refused `issue`
//! leaves no half-made files; then it says what was written, the opaque id the cluster's
//! history will know the holder by, and what to do next. Bad input (flags, existing files, a
//! missing CA) exits with 2, a failure to write with 1.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;
use sov_proto::identity::{self, Identity, Role};
use sov_proto::tls::{self, CA_CERT_FILE, CA_KEY_FILE, Ca, TlsError};

use crate::UsageError;
use crate::credentials::{expired_at, millis};
use crate::output::{self, Format, fields, rfc3339_utc};

/// Where `ca init` writes and `ca issue` reads the CA when `--dir`/`--ca` is not given.
pub const DIR_DEFAULT: &str = "./sov-ca";
/// The CA certificate's common name when `--name` is not given.
pub const NAME_DEFAULT: &str = "sov cluster CA";
/// Longest CA name: X.509 bounds a common name at 64 characters.
const CA_NAME_CHARS_MAX: usize = 64;
/// Longest lifetime `--days` accepts: the CA's own (ten years). A certificate outliving its CA
/// is refused by every peer anyway.
pub const DAYS_MAX: u64 = tls::CA_VALIDITY_DAYS;
/// DNS names on one scheduler certificate at most.
const DNS_NAMES_MAX: usize = 16;
/// Largest certificate file `ca show` reads; a PEM certificate is a few kilobytes.
const CERT_FILE_BYTES_MAX: u64 = 64 * 1024;

/// A `TlsError` with the exit code it deserves: the files or flags given (2), or writing (1).
fn tls_error(err: TlsError) -> anyhow::Error {
    match err {
        TlsError::Write { .. } | TlsError::Rcgen(_) => anyhow::Error::from(err),
        other => UsageError(other.to_string()).into(),
    }
}

#[derive(Debug, Serialize)]
struct InitView {
    dir: String,
    ca_cert: String,
    ca_key: String,
    name: String,
}

/// `ca init`: a new CA in `dir`, refused if one is there.
pub fn init(format: Format, dir: &Path, name: &str) -> anyhow::Result<()> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > CA_NAME_CHARS_MAX {
        return Err(UsageError(format!(
            "--name must be 1 to {CA_NAME_CHARS_MAX} characters (an X.509 common name)"
        ))
        .into());
    }
    Ca::init(dir, name).map_err(|e| match e {
        TlsError::Exists { path } => UsageError(format!(
            "{} already holds a CA ({} exists) and sov never overwrites keys: use that CA, or \
             make the new one elsewhere with --dir",
            dir.display(),
            path.display()
        ))
        .into(),
        other => tls_error(other),
    })?;
    let view = InitView {
        dir: dir.display().to_string(),
        ca_cert: dir.join(CA_CERT_FILE).display().to_string(),
        ca_key: dir.join(CA_KEY_FILE).display().to_string(),
        name: name.to_owned(),
    };
    output::emit(format, &view, init_text)
}

fn init_text(v: &InitView) -> String {
    format!(
        "Made the CA {:?} in {}:\n  \
         {}  its certificate: every scheduler, agent and user gets a copy (ca issue adds it)\n  \
         {}  its private key (mode 0600): keep it offline and private. Whoever holds it can \
         join the cluster under any identity.\n\
         Next: a certificate for each scheduler, then for each agent and person:\n  \
         sovctl ca issue --ca {} --role scheduler --name sched-1 --out ./sched-1\n\
         See docs/security.md.\n",
        v.name, v.dir, v.ca_cert, v.ca_key, v.dir
    )
}

/// When a certificate stops being valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    Days(u64),
    Until(SystemTime),
}

/// What `ca issue` is asked for, as the flags give it.
#[derive(Debug, Clone)]
pub struct IssueSpec {
    pub role: Role,
    pub name: String,
    pub ca: PathBuf,
    pub out: PathBuf,
    /// (fact, value), facts from `identity::LOCATION_FACTS`, in flag order.
    pub location: Vec<(&'static str, String)>,
    pub namespace: Option<String>,
    pub dns: Vec<String>,
    pub validity: Validity,
}

/// The flag each location fact is given with, for error messages.
fn flag_of(fact: &str) -> String {
    format!("--{}", fact.replace('_', "-"))
}

/// The identity `spec` asks for, or why it cannot be issued. Pure: nothing is read or written.
pub fn identity_of(spec: &IssueSpec) -> Result<Identity, UsageError> {
    let usage = |e: identity::IdentityError| UsageError(e.to_string());
    let mut identity = Identity::new(spec.role, &spec.name)
        .map_err(|e| UsageError(format!("--name {:?}: {e}", spec.name)))?;
    if identity.is_wildcard() && !spec.location.is_empty() {
        return Err(UsageError(format!(
            "{} on the wildcard agent {:?}: the scheduler refuses location claims on wildcard \
             certificates (one certificate cannot vouch for where many nodes are); issue one \
             certificate per node to claim locations",
            flag_of(spec.location[0].0),
            spec.name
        )));
    }
    for (fact, value) in &spec.location {
        identity = identity
            .with_location(fact, value)
            .map_err(|e| UsageError(format!("{} {value:?}: {}", flag_of(fact), usage(e))))?;
    }
    if let Some(prefix) = &spec.namespace {
        identity = identity
            .with_namespace(prefix)
            .map_err(|e| UsageError(format!("--namespace {prefix:?}: {}", usage(e))))?;
    }
    if !spec.dns.is_empty() && spec.role != Role::Scheduler {
        return Err(UsageError(format!(
            "--dns {:?}: DNS names are for scheduler certificates; this certificate's role is {}",
            spec.dns[0], spec.role
        )));
    }
    if spec.dns.len() > DNS_NAMES_MAX {
        return Err(UsageError(format!(
            "{} DNS names; at most {DNS_NAMES_MAX} (clients check only {})",
            spec.dns.len(),
            tls::SCHEDULER_SERVER_NAME
        )));
    }
    for name in &spec.dns {
        identity::check_name("--dns", name).map_err(usage)?;
    }
    Ok(identity)
}

#[derive(Debug, Serialize)]
struct IssuedView {
    role: String,
    name: String,
    cert: String,
    key: String,
    ca_cert: String,
    /// The files this run created (`ca_cert` only if it was not there yet).
    written: Vec<String>,
    uris: Vec<String>,
    dns: Vec<String>,
    fingerprint: String,
    /// What the cluster's history records about the holder: `role:fingerprint`.
    opaque_id: String,
    not_after: String,
    expired: bool,
    /// What to do with the files.
    next: String,
}

/// `ca issue`: checks everything, then writes `NAME.crt`, `NAME.key` and, if missing, `ca.crt`
/// into `spec.out`.
pub fn issue(format: Format, spec: &IssueSpec) -> anyhow::Result<()> {
    let identity = identity_of(spec)?;
    let not_after = match spec.validity {
        Validity::Days(days) => tls::valid_for_days(days),
        Validity::Until(at) => at,
    };
    let ca = Ca::load(&spec.ca).map_err(|e| {
        UsageError(format!(
            "{e}; make a CA with `sovctl ca init --dir {}`, or point --ca at yours",
            spec.ca.display()
        ))
    })?;
    // `Ca::issue` writes the key before it looks at the CA copy; look first, so that a refusal
    // leaves nothing behind.
    let ca_copy = spec.out.join(CA_CERT_FILE);
    let ca_copy_exists = ca_copy.exists();
    if ca_copy_exists && std::fs::read_to_string(&ca_copy).ok().as_deref() != Some(ca.cert_pem()) {
        return Err(UsageError(format!(
            "{} holds another CA's certificate; issue into another --out directory",
            ca_copy.display()
        ))
        .into());
    }
    if let Some(at) = expired_at(not_after) {
        eprintln!(
            "warning: --not-after {at} is in the past: this certificate is expired from the \
             start and every scheduler will refuse it (useful to test that they do)"
        );
    }
    if identity.is_wildcard() {
        eprintln!(
            "note: {:?} is a wildcard agent certificate (the fleet simulator's): location claims \
             on wildcard certificates are refused, so its nodes' facts stay self-reported",
            identity.name
        );
    }
    let issued = ca
        .issue(&identity, not_after, &spec.dns, &spec.out)
        .map_err(tls_error)?;
    let files = &issued.files;
    let mut written = vec![
        files.cert.display().to_string(),
        files.key.display().to_string(),
    ];
    if !ca_copy_exists {
        written.push(files.ca.display().to_string());
    }
    let stem = files
        .cert
        .file_stem()
        .map_or(String::new(), |s| s.to_string_lossy().into_owned());
    let view = IssuedView {
        role: identity.role.to_string(),
        name: identity.name.clone(),
        cert: files.cert.display().to_string(),
        key: files.key.display().to_string(),
        ca_cert: files.ca.display().to_string(),
        written,
        uris: issued.uris.clone(),
        dns: spec.dns.clone(),
        opaque_id: format!("{}:{}", identity.role, issued.fingerprint),
        fingerprint: issued.fingerprint.clone(),
        not_after: rfc3339_utc(millis(issued.not_after)),
        expired: expired_at(issued.not_after).is_some(),
        next: next_step(identity.role, &spec.out, &stem, files),
    };
    output::emit(format, &view, issued_text)
}

/// What the holder does with the files, by role.
fn next_step(role: Role, out: &Path, stem: &str, files: &tls::TlsFiles) -> String {
    match role {
        Role::Operator | Role::Deployer | Role::Auditor => format!(
            "sovctl --tls-dir {} --as {stem} cluster status (or copy the three files into \
             ~/.config/sov/tls, where sovctl looks by default)",
            out.display()
        ),
        Role::Scheduler => format!(
            "give the scheduler [tls] ca = {:?}, cert = {:?}, key = {:?} in its config (or \
             --tls-ca, --tls-cert, --tls-key)",
            files.ca.display().to_string(),
            files.cert.display().to_string(),
            files.key.display().to_string()
        ),
        Role::Agent => format!(
            "install the three files on the node's agent (see docs/security.md): {}, {}, {}",
            files.ca.display(),
            files.cert.display(),
            files.key.display()
        ),
    }
}

fn issued_text(v: &IssuedView) -> String {
    let expiry = if v.expired {
        format!("{} (already expired)", v.not_after)
    } else {
        v.not_after.clone()
    };
    let mut pairs = vec![
        ("Role", v.role.clone()),
        ("Name", v.name.clone()),
        ("Identity", v.uris.join("\n")),
    ];
    if !v.dns.is_empty() {
        pairs.push(("DNS names", v.dns.join("\n")));
    }
    pairs.extend([
        ("Fingerprint", v.fingerprint.clone()),
        ("Opaque id", v.opaque_id.clone()),
        ("Not after", expiry),
        ("Wrote", v.written.join("\n")),
    ]);
    format!(
        "{}\nThe cluster's history records who changed what as ROLE:FINGERPRINT (above: opaque \
         id), never the name. Keep the mapping from this id to the person or machine outside \
         the cluster. {} is private (mode 0600): it stays with its holder.\nNext: {}\n",
        fields(&pairs),
        v.key,
        v.next
    )
}

/// What `ca token` is asked for, as the flags give it.
#[derive(Debug, Clone)]
pub struct TokenSpec {
    pub role: Role,
    pub name: String,
    pub namespace: Option<String>,
    pub ca: PathBuf,
    pub ttl: std::time::Duration,
    /// Write the token to this new file (0600) instead of standard output.
    pub out: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct TokenView {
    role: String,
    name: String,
    uris: Vec<String>,
    fingerprint: String,
    opaque_id: String,
    not_after: String,
    /// The file written, with `--out`; the token itself otherwise.
    file: Option<String>,
    token: Option<String>,
}

/// `ca token`: a bearer token for a person, signed by the CA's key. Without `--out` the token
/// alone goes to standard output (so `SOV_TOKEN=$(sovctl ca token ...)` works) and what it is
/// to standard error.
pub fn token(format: Format, spec: &TokenSpec) -> anyhow::Result<()> {
    use sov_proto::token::{TOKEN_ROLES, TTL_MAX};
    if !TOKEN_ROLES.contains(&spec.role) {
        return Err(UsageError(format!(
            "--role {}: tokens are for people (operator, deployer, auditor); agents and              schedulers get certificates (sovctl ca issue)",
            spec.role
        ))
        .into());
    }
    if spec.ttl.is_zero() || spec.ttl > TTL_MAX {
        return Err(UsageError(format!(
            "--ttl: a token lives at most {}h, and it cannot be revoked before then: keep it short",
            TTL_MAX.as_secs() / 3600
        ))
        .into());
    }
    let identity = identity_of(&IssueSpec {
        role: spec.role,
        name: spec.name.clone(),
        ca: spec.ca.clone(),
        out: PathBuf::new(),
        location: Vec::new(),
        namespace: spec.namespace.clone(),
        dns: Vec::new(),
        validity: Validity::Days(1),
    })?;
    let ca = Ca::load(&spec.ca).map_err(|e| {
        UsageError(format!(
            "{e}; tokens are signed by the CA's key: point --ca at the directory of `sovctl ca init`"
        ))
    })?;
    let issued = sov_proto::token::issue(&ca, &identity, spec.ttl).map_err(tls_error)?;
    if let Some(out) = &spec.out {
        tls::write_new(out, &format!("{}\n", issued.token), true).map_err(tls_error)?;
    }
    let view = TokenView {
        role: identity.role.to_string(),
        name: identity.name.clone(),
        uris: identity.uris(),
        opaque_id: format!("{}:{}", identity.role, issued.fingerprint),
        fingerprint: issued.fingerprint.clone(),
        not_after: rfc3339_utc(millis(issued.not_after)),
        file: spec.out.as_ref().map(|p| p.display().to_string()),
        token: spec.out.is_none().then(|| issued.token.clone()),
    };
    match (format, &view.token) {
        // The token alone on stdout, for command substitution; the rest for the person.
        (Format::Table, Some(token)) => {
            eprint!("{}", token_text(&view));
            println!("{token}");
            Ok(())
        }
        _ => output::emit(format, &view, token_text),
    }
}

fn token_text(v: &TokenView) -> String {
    let pairs = [
        ("Role", v.role.clone()),
        ("Name", v.name.clone()),
        ("Identity", v.uris.join("\n")),
        ("Fingerprint", v.fingerprint.clone()),
        ("Opaque id", v.opaque_id.clone()),
        ("Not after", v.not_after.clone()),
        (
            "Wrote",
            v.file
                .clone()
                .unwrap_or_else(|| "- (the token is on standard output)".into()),
        ),
    ];
    format!(
        "{}\nA bearer token works until it expires and cannot be revoked before: hand it over \
         privately, and keep the opaque id's mapping to the person outside the cluster. \
         Schedulers accept tokens only with bearer_tokens = true (--bearer-tokens).\nNext: \
         SOV_TOKEN=... or sovctl --token-file FILE, with the cluster's ca.crt in --tls-dir\n",
        fields(&pairs)
    )
}

#[derive(Debug, Serialize)]
struct ShowView {
    file: String,
    /// `"ca"` for a CA certificate, otherwise the identity's role.
    role: String,
    name: String,
    uris: Vec<String>,
    location: std::collections::BTreeMap<String, String>,
    namespace: Option<String>,
    dns: Vec<String>,
    /// A wildcard agent: its nodes' facts stay self-reported.
    wildcard: bool,
    issuer: String,
    fingerprint: String,
    opaque_id: Option<String>,
    not_before: String,
    not_after: String,
    expired: bool,
}

/// `ca show`: what a certificate file says, offline.
pub fn show(format: Format, file: &Path) -> anyhow::Result<()> {
    let usage = |why: String| UsageError(format!("{}: {why}", file.display()));
    let size = std::fs::metadata(file)
        .map_err(|e| usage(format!("cannot read it: {e}")))?
        .len();
    if size > CERT_FILE_BYTES_MAX {
        return Err(usage(format!(
            "{size} bytes is no certificate (at most {CERT_FILE_BYTES_MAX})"
        ))
        .into());
    }
    let text = std::fs::read(file).map_err(|e| usage(format!("cannot read it: {e}")))?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&text)
        .map_err(|_| usage("not a PEM certificate (-----BEGIN CERTIFICATE-----)".into()))?;
    if pem.label != "CERTIFICATE" {
        return Err(usage(format!(
            "holds a {}, not a CERTIFICATE (a key is never shown)",
            pem.label
        ))
        .into());
    }
    let (_, cert) = x509_parser::parse_x509_certificate(&pem.contents)
        .map_err(|e| usage(format!("unreadable certificate: {e}")))?;
    let fingerprint = tls::fingerprint(&pem.contents);
    let dns = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let common_name = |name: &x509_parser::x509::X509Name<'_>| {
        name.iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let validity = cert.validity();
    let not_after_ms = validity.not_after.timestamp().saturating_mul(1000);
    let mut view = ShowView {
        file: file.display().to_string(),
        role: "ca".into(),
        name: common_name(cert.subject()),
        uris: Vec::new(),
        location: Default::default(),
        namespace: None,
        dns,
        wildcard: false,
        issuer: common_name(cert.issuer()),
        opaque_id: None,
        fingerprint,
        not_before: rfc3339_utc(validity.not_before.timestamp().saturating_mul(1000)),
        not_after: rfc3339_utc(not_after_ms),
        expired: not_after_ms <= output::now_ms(),
    };
    match tls::identity_of(&pem.contents) {
        Ok(identity) => {
            view.role = identity.role.to_string();
            view.uris = identity.uris();
            view.wildcard = identity.is_wildcard();
            view.opaque_id = Some(format!("{}:{}", identity.role, view.fingerprint));
            view.name = identity.name;
            view.location = identity.location;
            view.namespace = identity.namespace;
        }
        Err(_) if cert.is_ca() => {}
        Err(e) => return Err(usage(format!("not a sov certificate: {e}")).into()),
    }
    output::emit(format, &view, show_text)
}

fn show_text(v: &ShowView) -> String {
    let mut pairs = vec![("File", v.file.clone())];
    if v.role == "ca" {
        pairs.push(("Kind", "CA certificate".to_owned()));
        pairs.push(("Name", v.name.clone()));
    } else {
        pairs.push(("Role", v.role.clone()));
        pairs.push(("Name", v.name.clone()));
        pairs.push(("Identity", v.uris.join("\n")));
        let location = if v.wildcard {
            "none: a wildcard agent's nodes stay self-reported".to_owned()
        } else if v.location.is_empty() {
            "-".to_owned()
        } else {
            v.location
                .iter()
                .map(|(fact, value)| format!("{fact}={value}"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        if v.role == Role::Agent.as_str() {
            pairs.push(("Location", location));
        }
        if let Some(prefix) = &v.namespace {
            pairs.push(("Namespace", format!("deployments named {prefix}*")));
        }
    }
    if !v.dns.is_empty() {
        pairs.push(("DNS names", v.dns.join("\n")));
    }
    pairs.push(("Issuer", v.issuer.clone()));
    pairs.push(("Fingerprint", v.fingerprint.clone()));
    if let Some(id) = &v.opaque_id {
        pairs.push(("Opaque id", id.clone()));
    }
    pairs.push(("Not before", v.not_before.clone()));
    let expiry = if v.expired {
        format!("{} (EXPIRED)", v.not_after)
    } else {
        format!("{} (valid)", v.not_after)
    };
    pairs.push(("Not after", expiry));
    fields(&pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(role: Role, name: &str) -> IssueSpec {
        IssueSpec {
            role,
            name: name.into(),
            ca: PathBuf::from("ca"),
            out: PathBuf::from("out"),
            location: Vec::new(),
            namespace: None,
            dns: Vec::new(),
            validity: Validity::Days(1),
        }
    }

    fn refusal(spec: &IssueSpec) -> String {
        identity_of(spec).unwrap_err().0
    }

    #[test]
    fn flags_become_the_identity() {
        let mut agent = spec(Role::Agent, "fr-par-1");
        agent.location = vec![("country", "FR".into()), ("operator_hq", "FR".into())];
        let id = identity_of(&agent).unwrap();
        assert_eq!(
            id.uris(),
            [
                "spiffe://sov/node/fr-par-1",
                "sov://location/country/FR",
                "sov://location/operator_hq/FR"
            ]
        );
        let mut deployer = spec(Role::Deployer, "team-a");
        deployer.namespace = Some("team-a-".into());
        assert_eq!(
            identity_of(&deployer).unwrap().namespace.as_deref(),
            Some("team-a-")
        );
        let mut scheduler = spec(Role::Scheduler, "sched-1");
        scheduler.dns = vec!["sched-1.internal".into()];
        assert!(identity_of(&scheduler).is_ok());
    }

    #[test]
    fn claims_outside_their_role_are_refused_naming_the_flag() {
        let mut op = spec(Role::Operator, "ops");
        op.location = vec![("operator_hq", "FR".into())];
        let err = refusal(&op);
        assert!(
            err.starts_with("--operator-hq \"FR\": location claims are for agents"),
            "{err}"
        );
        let mut auditor = spec(Role::Auditor, "rev");
        auditor.namespace = Some("x".into());
        assert!(
            refusal(&auditor).contains("a namespace scope is for deployers"),
            "{}",
            refusal(&auditor)
        );
        let mut agent = spec(Role::Agent, "n1");
        agent.dns = vec!["n1.local".into()];
        assert!(refusal(&agent).contains("DNS names are for scheduler certificates"));
        let mut sched = spec(Role::Scheduler, "s1");
        sched.dns = vec!["../x".into()];
        assert!(refusal(&sched).contains("--dns"));
    }

    #[test]
    fn a_wildcard_agent_claims_no_location() {
        assert!(
            identity_of(&spec(Role::Agent, "sim-*"))
                .unwrap()
                .is_wildcard()
        );
        let mut fleet = spec(Role::Agent, "sim-*");
        fleet.location = vec![("country", "FR".into())];
        let err = refusal(&fleet);
        assert!(err.contains("--country on the wildcard agent"), "{err}");
        assert!(refusal(&spec(Role::Operator, "ops*")).starts_with("--name \"ops*\""));
    }

    #[test]
    fn bad_names_are_refused() {
        for bad in ["../x", "", ".hidden", "a b", "x/y"] {
            let err = refusal(&spec(Role::Operator, bad));
            assert!(err.starts_with("--name"), "{bad}: {err}");
        }
    }
}
