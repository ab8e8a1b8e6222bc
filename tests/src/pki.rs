//! The certificates of end-to-end tests: one certificate authority per test process (made with
//! the same code as `sovctl ca`), and from it a certificate for every scheduler, agent and
//! client a test starts. Every connection in these tests is mutual TLS, as in production.
//!
//! Layout under a temporary directory kept for the life of the process and removed when it
//! exits (the CA's private key included; a process killed outright leaves it behind):
//! - `ca/`: the CA;
//! - `client/`: `ca.crt` and the identities `operator`, `deployer`, `auditor` (sovctl picks the
//!   one a command needs; [`crate::sovctl`] points `SOV_TLS_DIR` here);
//! - `scheduler-<id>/`: one per scheduler id;
//! - `agents/`: one per node name, with the node's location claims.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use sov_proto::identity::{Identity, Role};
use sov_proto::tls::{Ca, TlsFiles, valid_for_days};

/// Days the test certificates last.
const TEST_CERT_DAYS: u64 = 7;

pub struct Pki {
    ca: Ca,
    root: PathBuf,
    /// Serialises issuing: tests of one process run on many threads.
    issuing: Mutex<()>,
}

/// The test PKI's directory, once made: what [`remove_at_exit`] removes. Kept beside
/// `Pki::root` because it is set before the CA is made, so a set-up that fails is removed too.
static ROOT: OnceLock<PathBuf> = OnceLock::new();

/// Removes the test PKI's directory; run by `exit` (statics are never dropped), after the
/// tests, whose clusters have stopped their processes by then.
extern "C" fn remove_at_exit() {
    if let Some(root) = ROOT.get() {
        let _ = std::fs::remove_dir_all(root);
    }
}

/// The process's test PKI, made on first use.
pub fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let root = tempfile::Builder::new()
            .prefix("sov-e2e-pki-")
            .tempdir()
            .expect("cannot create the test PKI dir")
            .keep();
        if ROOT.set(root.clone()).is_ok() {
            // SAFETY: registers a plain function with no arguments, once per process.
            unsafe {
                libc::atexit(remove_at_exit);
            }
        }
        let ca = Ca::init(&root.join("ca"), "sov end-to-end test CA").expect("test CA");
        let pki = Pki {
            ca,
            root,
            issuing: Mutex::new(()),
        };
        for role in [Role::Operator, Role::Deployer, Role::Auditor] {
            pki.issue(
                &Identity::new(role, role.as_str()).expect("identity"),
                &pki.client_dir(),
            );
        }
        pki
    })
}

impl Pki {
    /// sovctl's credentials directory (`SOV_TLS_DIR`).
    pub fn client_dir(&self) -> PathBuf {
        self.root.join("client")
    }

    /// The CA's directory (`ca.crt`, `ca.key`).
    pub fn ca_dir(&self) -> PathBuf {
        self.root.join("ca")
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.root.join("ca").join(sov_proto::tls::CA_CERT_FILE)
    }

    /// The CA itself, for tests that issue unusual certificates (expired, other roles).
    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    /// Issues `identity` into `out` unless it is there already.
    pub fn issue(&self, identity: &Identity, out: &Path) -> TlsFiles {
        let _guard = self.issuing.lock().unwrap_or_else(|p| p.into_inner());
        let files = TlsFiles::issued(out, identity);
        if !files.cert.exists() {
            self.ca
                .issue(identity, valid_for_days(TEST_CERT_DAYS), &[], out)
                .unwrap_or_else(|e| panic!("cannot issue a certificate for {identity}: {e}"));
        }
        files
    }

    /// The certificate of scheduler `id` (the same for every cluster of this process).
    pub fn scheduler(&self, id: u64) -> TlsFiles {
        let name = format!("scheduler-{id}");
        self.issue(
            &Identity::new(Role::Scheduler, &name).expect("identity"),
            &self.root.join(&name),
        )
    }

    /// `--tls-ca`, `--tls-cert`, `--tls-key` for `files`.
    pub fn flags(files: &TlsFiles) -> Vec<String> {
        vec![
            "--tls-ca".into(),
            files.ca.display().to_string(),
            "--tls-cert".into(),
            files.cert.display().to_string(),
            "--tls-key".into(),
            files.key.display().to_string(),
        ]
    }

    /// An agent certificate for node `name` vouching for `claims` (fact, value).
    pub fn agent(&self, name: &str, claims: &[(&str, &str)]) -> TlsFiles {
        let mut identity = Identity::new(Role::Agent, name).expect("identity");
        for (fact, value) in claims {
            identity = identity.with_location(fact, value).expect("claim");
        }
        // One directory per set of claims: a test that changes a node's facts restarts its
        // agent with a certificate for the new ones.
        let tag = sov_proto::merkle::leaf_hash(format!("{claims:?}").as_bytes());
        let dir = format!("{name}-{}", &hex_prefix(&tag));
        self.issue(&identity, &self.root.join("agents").join(dir))
    }

    /// The fleet simulator's wildcard certificate for nodes named `prefix*`.
    pub fn fleet(&self, prefix: &str) -> TlsFiles {
        let name = format!("{prefix}*");
        self.issue(
            &Identity::new(Role::Agent, &name).expect("identity"),
            &self.root.join("fleet"),
        )
    }

    /// The `[tls]` table of an agent config for `files`.
    pub fn agent_toml(files: &TlsFiles) -> String {
        format!(
            "[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
            files.ca, files.cert, files.key
        )
    }

    /// A client channel to `endpoint` as the test identity of `role` (operator, deployer or
    /// auditor), for tests and benchmarks that call the API directly.
    pub async fn channel(&self, endpoint: &str, role: Role) -> tonic::transport::Channel {
        let files = TlsFiles::in_dir(&self.client_dir(), role.as_str());
        self.channel_with(endpoint, &files).await
    }

    /// A client channel to `endpoint` presenting the certificate in `files`.
    pub async fn channel_with(
        &self,
        endpoint: &str,
        files: &TlsFiles,
    ) -> tonic::transport::Channel {
        let material = files.load().expect("client identity");
        sov_proto::tls::scheduler_endpoint(endpoint, Some(&material.client()))
            .expect("endpoint")
            .tcp_nodelay(true)
            .connect()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "cannot connect to {endpoint} with {}: {e}",
                    files.cert.display()
                )
            })
    }
}

fn hex_prefix(hash: &[u8; 32]) -> String {
    hash[..4].iter().map(|b| format!("{b:02x}")).collect()
}
