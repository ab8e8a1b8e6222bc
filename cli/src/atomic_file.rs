//! Files sovctl writes whole or not at all: snapshots (`cluster snapshot save`), evidence
//! (`history export -f`) and checkpoints (`audit checkpoint --out`).
//!
//! Owns the write-to-`FILE.partial`, sync, rename, sync-the-directory sequence, so a crash or a
//! failed transfer leaves either the old file or a complete new one, never half of one, and the
//! refusal to replace a file the user did not say may go.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::UsageError;

/// A file being written: bytes go to `FILE.partial`, which becomes `FILE` on `commit`. Dropped
/// without a commit (an error on the way), the partial file is removed.
pub struct AtomicFile {
    file: PathBuf,
    partial: PathBuf,
    /// `None` once committed.
    out: Option<File>,
}

impl AtomicFile {
    /// Starts writing `file` (replacing `FILE.partial` if a failed run left one).
    pub fn create(file: &Path) -> std::io::Result<Self> {
        let mut partial = file.as_os_str().to_owned();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let out = File::create(&partial)?;
        Ok(AtomicFile {
            file: file.to_owned(),
            partial,
            out: Some(out),
        })
    }

    pub fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.out
            .as_mut()
            .expect("no writes after commit")
            .write_all(bytes)
    }

    /// Syncs the data, renames it over the file and syncs the directory, so the new file
    /// survives a crash from here on.
    pub fn commit(mut self) -> std::io::Result<()> {
        let out = self.out.take().expect("committed once");
        out.sync_all()?;
        drop(out);
        std::fs::rename(&self.partial, &self.file)?;
        let dir = match self.file.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        File::open(dir)?.sync_all()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        // After a failed rename `out` is gone too; the partial file may still be there.
        if self.out.is_some() || self.partial.exists() {
            let _ = std::fs::remove_file(&self.partial);
        }
    }
}

/// Refuses to go on when `file` exists and `force` is false: an earlier export or checkpoint
/// is evidence, and losing it to a typo cannot be undone.
pub fn refuse_to_replace(file: &Path, force: bool) -> Result<(), UsageError> {
    if !force && file.exists() {
        return Err(UsageError(format!(
            "{} exists; choose another file, or pass --force to replace it",
            file.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_committed_file_replaces_the_old_one_and_leaves_no_partial() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("evidence.jsonl");
        std::fs::write(&file, "old").unwrap();
        let mut out = AtomicFile::create(&file).unwrap();
        out.write_all(b"new ").unwrap();
        // Until the commit, the old file is what readers see.
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "old");
        out.write_all(b"text").unwrap();
        out.commit().unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "new text");
        assert!(!dir.path().join("evidence.jsonl.partial").exists());
    }

    #[test]
    fn an_abandoned_file_leaves_the_old_one_and_no_partial() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("evidence.jsonl");
        std::fs::write(&file, "old").unwrap();
        let mut out = AtomicFile::create(&file).unwrap();
        out.write_all(b"half").unwrap();
        assert!(dir.path().join("evidence.jsonl.partial").exists());
        drop(out);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "old");
        assert!(!dir.path().join("evidence.jsonl.partial").exists());
    }

    #[test]
    fn an_existing_file_is_replaced_only_with_force() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cp.json");
        refuse_to_replace(&file, false).unwrap();
        std::fs::write(&file, "{}").unwrap();
        let err = refuse_to_replace(&file, false).unwrap_err();
        assert_eq!(
            err.0,
            format!(
                "{} exists; choose another file, or pass --force to replace it",
                file.display()
            )
        );
        refuse_to_replace(&file, true).unwrap();
    }
}
