//! `sov-scheduler keygen`: makes the cluster's Ed25519 signing key, which signs the placement
//! history's checkpoints and exports, and its public half, which reviewers verify them with.
//!
//! The secret key file is written with mode 0600 and never overwritten: a cluster that changes
//! its key makes every earlier checkpoint unverifiable with the new public key, so replacing
//! one must be a deliberate act (docs/operator-guide.md, "Signing key").

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use ed25519_dalek::SigningKey;
use sov_proto::evidence;

#[derive(Debug, Clone, Args)]
pub struct KeygenArgs {
    /// Directory to write `cluster.key` (secret, mode 0600) and `cluster.pub` into.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// What keygen wrote.
#[derive(Debug)]
pub struct Generated {
    pub secret: PathBuf,
    pub public: PathBuf,
    pub key_id: String,
}

/// Writes a new key pair into `dir`; refuses if either file exists.
pub fn generate(dir: &Path) -> anyhow::Result<Generated> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (secret, public) = (dir.join("cluster.key"), dir.join("cluster.pub"));
    for path in [&secret, &public] {
        anyhow::ensure!(
            !path.exists(),
            "{} exists; keygen never replaces a key (checkpoints signed with it would no longer verify). Move it away first if you really mean to change the cluster's key",
            path.display()
        );
    }
    let mut seed = [0u8; 32];
    rand::fill(&mut seed);
    let key = SigningKey::from_bytes(&seed);
    write_new(&secret, &evidence::secret_key_text(&key), 0o600)?;
    write_new(
        &public,
        &evidence::public_key_text(&key.verifying_key()),
        0o644,
    )?;
    Ok(Generated {
        secret,
        public,
        key_id: evidence::key_id(&key.verifying_key()),
    })
}

fn write_new(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

pub fn run(args: &KeygenArgs) -> anyhow::Result<()> {
    let g = generate(&args.out)?;
    println!(
        "wrote the cluster signing key {} (secret: give it to every scheduler, signing_key in its config) and its public key {} (give it to reviewers: sovctl audit verify --key), key id {}",
        g.secret.display(),
        g.public.display(),
        g.key_id
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_written_private_and_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let g = generate(dir.path()).unwrap();
        let secret = std::fs::read_to_string(&g.secret).unwrap();
        let public = std::fs::read_to_string(&g.public).unwrap();
        let key = evidence::parse_secret_key(&secret).unwrap();
        assert_eq!(
            evidence::parse_public_key(&public).unwrap(),
            key.verifying_key()
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&g.secret).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = generate(dir.path()).unwrap_err().to_string();
        assert!(again.contains("never replaces a key"), "{again}");
        assert_eq!(std::fs::read_to_string(&g.secret).unwrap(), secret);
    }
}
