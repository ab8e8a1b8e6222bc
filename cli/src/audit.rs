//! `sovctl audit ...`: what a compliance reviewer checks for themselves. `verify` checks an
//! export offline, with nothing but the file and the cluster's public key: it never opens a
//! connection, so it gives the same answer on an air-gapped laptop years later. `checkpoint`
//! asks the cluster for a signed statement of its history's size and root now, through
//! `sov.v1.HistoryService.Checkpoint`, and can check its signature here.
//!
//! The checks themselves belong to `sov_proto::evidence` (shared with the scheduler, which
//! signs); this module reads the files, maps the outcome to exit codes (1 = the evidence does
//! not verify, 2 = the files given cannot be used) and prints it through `output::history`.

use std::path::Path;

use anyhow::Context;
use ed25519_dalek::VerifyingKey;
use sov_proto::evidence::{self, Checkpoint};
use sov_proto::v1::history_service_client::HistoryServiceClient;
use sov_proto::v1::{CheckpointRequest, SignedCheckpoint};

use crate::UsageError;
use crate::atomic_file::{AtomicFile, refuse_to_replace};
use crate::client::Client;
use crate::output::history::{
    self as out, CheckpointAnswerView, CheckpointView, VerifiedView, VerifyView,
};
use crate::output::{self, Format};

/// Largest export `audit verify` reads: it holds the file in memory. A larger history is
/// exported, and verified, in time ranges (`--since`/`--until`), chained with `--previous`.
const EVIDENCE_BYTES_MAX: u64 = 4 * 1024 * 1024 * 1024;

/// Reads a public key file (`cluster.pub`).
fn read_key(path: &Path) -> Result<VerifyingKey, UsageError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| UsageError(format!("cannot read key file {}: {e}", path.display())))?;
    evidence::parse_public_key(&text).map_err(|e| {
        UsageError(format!(
            "{}: {e}; pass the cluster's public key, cluster.pub, which `sov-scheduler keygen` \
             writes next to the signing key",
            path.display()
        ))
    })
}

/// Why an export could not be handed to the verifier.
#[derive(Debug)]
enum Unread {
    /// Bytes that are not UTF-8: the verifier's business (an altered file), so a failure.
    Altered(String),
    /// The file cannot be read at all: bad input.
    Usage(UsageError),
}

/// Reads an export whole.
fn read_evidence(path: &Path, what: &str) -> Result<String, Unread> {
    let usage = |why: String| {
        Unread::Usage(UsageError(format!(
            "cannot read {what} {}: {why}",
            path.display()
        )))
    };
    let len = std::fs::metadata(path)
        .map_err(|e| usage(e.to_string()))?
        .len();
    if len > EVIDENCE_BYTES_MAX {
        return Err(usage(format!(
            "it is {len} bytes; sovctl verifies at most {EVIDENCE_BYTES_MAX}. Export shorter \
             time ranges (--since/--until) and chain them with --previous"
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| usage(e.to_string()))?;
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count() + 1;
        // Counted from 1, as editors and `cut -b` count.
        let byte = at + 1;
        Unread::Altered(format!(
            "line {line}: byte {byte} is not UTF-8 text: the file was altered"
        ))
    })
}

/// Verifies the export `file` with the key in `key`, and that it extends `previous`; prints
/// what it proves, or fails with `FAILED: ` and the first place that does not verify.
pub fn verify(
    format: Format,
    file: &Path,
    key: &Path,
    previous: Option<&Path>,
) -> anyhow::Result<()> {
    let key = read_key(key)?;
    let texts = read_evidence(file, "the export").and_then(|text| match previous {
        None => Ok((text, None)),
        Some(p) => match read_evidence(p, "the previous export") {
            Ok(old) => Ok((text, Some(old))),
            // Worded as the verifier words a previous export that does not verify.
            Err(Unread::Altered(why)) => Err(Unread::Altered(format!(
                "the previous export does not verify: {why}"
            ))),
            Err(usage) => Err(usage),
        },
    });
    let outcome = match texts {
        Err(Unread::Usage(usage)) => return Err(usage.into()),
        Err(Unread::Altered(why)) => Err(why),
        Ok((text, old)) => evidence::verify(&text, &key, old.as_deref()).map_err(|e| e.to_string()),
    };
    let key_id = evidence::key_id(&key);
    let (details, error) = match outcome {
        Ok(verified) => (Some(VerifiedView::from(verified)), None),
        Err(why) => (None, Some(why)),
    };
    let view = VerifyView {
        verified: error.is_none(),
        file: file.to_owned(),
        key_id: key_id.clone(),
        error: error.clone(),
        details,
    };
    match (error, &view.details) {
        (None, Some(details)) => {
            output::emit(format, &view, |_| out::verified_line(&key_id, details))
        }
        (error, _) => {
            // Scripts get the verdict on stdout as well; the reason goes to stderr as always.
            if format == Format::Json {
                output::emit(format, &view, |_| String::new())?;
            }
            anyhow::bail!("FAILED: {}", error.unwrap_or_default())
        }
    }
}

/// Checks a checkpoint's signature with `key`; the key's id when it holds.
fn check_signature(c: &SignedCheckpoint, key: &VerifyingKey) -> anyhow::Result<String> {
    let root = <[u8; 32]>::try_from(c.root.as_slice()).map_err(|_| {
        anyhow::anyhow!(
            "the scheduler sent a root of {} bytes, not 32; it is not a checkpoint this sovctl \
             can check",
            c.root.len()
        )
    })?;
    let checkpoint = Checkpoint {
        cluster_id: c.cluster_id.clone(),
        tree_size: c.tree_size,
        root,
        at_ms: c.at_ms,
    };
    let key_id = evidence::key_id(key);
    anyhow::ensure!(
        checkpoint.verify(key, &c.signature),
        "FAILED: the checkpoint's signature does not verify with key {key_id}; the scheduler \
         says key {} signed it. Is this the public key of cluster {}?",
        if c.key_id.is_empty() { "-" } else { &c.key_id },
        c.cluster_id
    );
    Ok(key_id)
}

/// Asks for a signed checkpoint; with `key`, checks its signature here; with `out_file`,
/// writes it to that file as JSON.
pub async fn checkpoint(
    client: &mut Client,
    format: Format,
    key: Option<&Path>,
    out_file: Option<&Path>,
    force: bool,
) -> anyhow::Result<()> {
    // Bad input fails before anything is sent; a checkpoint that fails its check is never
    // written (dropping the file removes the partial one).
    let key = key.map(read_key).transpose()?;
    let saved = match out_file {
        Some(file) => {
            refuse_to_replace(file, force)?;
            let created = AtomicFile::create(file)
                .map_err(|e| UsageError(format!("cannot write {}: {e}", file.display())))?;
            Some((file, created))
        }
        None => None,
    };
    let answer = client
        .call(CheckpointRequest {}, |ch, req| async move {
            HistoryServiceClient::new(ch).checkpoint(req).await
        })
        .await?;
    let verified_with_key = key.map(|k| check_signature(&answer, &k)).transpose()?;
    let view = CheckpointAnswerView {
        checkpoint: CheckpointView::from(&answer),
        verified_with_key,
    };
    if let Some((file, mut created)) = saved {
        let json = serde_json::to_string_pretty(&view.checkpoint).expect("views serialize") + "\n";
        created
            .write_all(json.as_bytes())
            .and_then(|()| created.commit())
            .with_context(|| format!("cannot write the checkpoint to {}", file.display()))?;
    }
    output::emit(format, &view, out::checkpoint_text)?;
    if let Some(file) = out_file {
        eprintln!("checkpoint written to {}", file.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    fn signing_key() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }

    fn signed(at_ms: i64) -> SignedCheckpoint {
        let c = Checkpoint {
            cluster_id: "c-1".into(),
            tree_size: 20,
            root: [9; 32],
            at_ms,
        };
        SignedCheckpoint {
            tree_size: c.tree_size,
            root: c.root.to_vec(),
            at_ms: c.at_ms,
            signature: c.sign(&signing_key()).to_vec(),
            cluster_id: c.cluster_id,
            key_id: evidence::key_id(&signing_key().verifying_key()),
        }
    }

    #[test]
    fn a_checkpoint_verifies_only_as_signed_and_with_its_key() {
        let key = signing_key().verifying_key();
        assert_eq!(
            check_signature(&signed(5), &key).unwrap(),
            evidence::key_id(&key)
        );
        let mut moved = signed(5);
        moved.tree_size = 21;
        let err = check_signature(&moved, &key).unwrap_err().to_string();
        assert!(
            err.starts_with("FAILED: the checkpoint's signature does not verify with key"),
            "{err}"
        );
        let other = SigningKey::from_bytes(&[8; 32]).verifying_key();
        assert!(check_signature(&signed(5), &other).is_err());
        let mut short = signed(5);
        short.root.pop();
        assert!(
            check_signature(&short, &key)
                .unwrap_err()
                .to_string()
                .contains("a root of 31 bytes")
        );
    }

    #[test]
    fn key_files_must_hold_a_public_key() {
        let dir = tempfile::tempdir().unwrap();
        let public = dir.path().join("cluster.pub");
        std::fs::write(
            &public,
            evidence::public_key_text(&signing_key().verifying_key()),
        )
        .unwrap();
        assert_eq!(read_key(&public).unwrap(), signing_key().verifying_key());
        let secret = dir.path().join("cluster.key");
        std::fs::write(&secret, evidence::secret_key_text(&signing_key())).unwrap();
        let err = read_key(&secret).unwrap_err().0;
        assert!(
            err.contains("not a sov public key file") && err.contains("cluster.pub"),
            "{err}"
        );
        let err = read_key(&dir.path().join("none.pub")).unwrap_err().0;
        assert!(err.starts_with("cannot read key file "), "{err}");
    }

    #[test]
    fn bytes_that_are_not_text_are_an_altered_file_not_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("e.jsonl");
        std::fs::write(&file, b"{\"type\":\"header\"}\n{\"a\":\"\xff\"}\n").unwrap();
        match read_evidence(&file, "the export") {
            Err(Unread::Altered(why)) => assert_eq!(
                why,
                "line 2: byte 25 is not UTF-8 text: the file was altered"
            ),
            other => panic!("{other:?}"),
        }
        match read_evidence(&dir.path().join("none"), "the export") {
            Err(Unread::Usage(usage)) => assert!(usage.0.starts_with("cannot read the export ")),
            other => panic!("{other:?}"),
        }
    }
}
