//! `allocs/<id>/stdout.log` and `stderr.log`: a model server's output, kept across restarts
//! (appended, with a marker line per start) because the output of the crash before a restart is
//! usually the one an operator needs.
//!
//! Disk is bounded: a log above `LOG_BYTES_MAX` is rotated to `<name>.1` (one old file kept) at
//! each start, and checked again periodically while the server runs, when it is copied to `.1`
//! and truncated in place (the server holds the file open in append mode, so renaming it would
//! not stop it growing). At most about 2 x `LOG_BYTES_MAX` per stream, plus what a server writes
//! between two checks.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub(crate) const LOG_BYTES_MAX: u64 = 64 << 20;

pub(crate) fn paths(alloc_dir: &Path) -> (PathBuf, PathBuf) {
    (alloc_dir.join("stdout.log"), alloc_dir.join("stderr.log"))
}

fn rotated(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// Opens both logs for a new process, rotating oversized ones first, and marks the start.
/// `start_number` counts from 1 over the allocation's life on this node.
pub(crate) fn open_for_start(
    alloc_dir: &Path,
    start_number: u64,
    unix_ms: u128,
) -> io::Result<(File, File)> {
    let (out, err) = paths(alloc_dir);
    let marker = format!("--- sov: start #{start_number} at {unix_ms} ---\n");
    Ok((open_one(&out, &marker)?, open_one(&err, &marker)?))
}

fn open_one(path: &Path, marker: &str) -> io::Result<File> {
    limit_at_start(path)?;
    let mut file = OpenOptions::new().create(true).append(true).open(path)?;
    file.write_all(marker.as_bytes())?;
    Ok(file)
}

fn limit_at_start(path: &Path) -> io::Result<()> {
    if too_big(path)? {
        std::fs::rename(path, rotated(path))?;
    }
    Ok(())
}

fn too_big(path: &Path) -> io::Result<bool> {
    match std::fs::metadata(path) {
        Ok(meta) => Ok(meta.len() > LOG_BYTES_MAX),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Applies the limit to both logs of a running server (copy to `.1`, truncate in place).
pub(crate) fn limit_while_running(alloc_dir: &Path) -> io::Result<()> {
    let (out, err) = paths(alloc_dir);
    for path in [out, err] {
        if too_big(&path)? {
            std::fs::copy(&path, rotated(&path))?;
            OpenOptions::new().write(true).open(&path)?.set_len(0)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_markers_and_rotates_oversized_logs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (out_path, _) = paths(dir.path());
        drop(open_for_start(dir.path(), 1, 10).expect("open"));
        drop(open_for_start(dir.path(), 2, 20).expect("open"));
        let text = std::fs::read_to_string(&out_path).expect("read");
        assert_eq!(
            text,
            "--- sov: start #1 at 10 ---\n--- sov: start #2 at 20 ---\n"
        );

        OpenOptions::new()
            .write(true)
            .open(&out_path)
            .expect("open")
            .set_len(LOG_BYTES_MAX + 1)
            .expect("grow");
        drop(open_for_start(dir.path(), 3, 30).expect("open"));
        assert_eq!(
            std::fs::metadata(rotated(&out_path))
                .expect("rotated")
                .len(),
            LOG_BYTES_MAX + 1
        );
        let text = std::fs::read_to_string(&out_path).expect("read");
        assert_eq!(text, "--- sov: start #3 at 30 ---\n");
    }

    #[test]
    fn truncates_oversized_logs_of_running_servers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (out_path, err_path) = paths(dir.path());
        let (out, _err) = open_for_start(dir.path(), 1, 10).expect("open");
        out.set_len(LOG_BYTES_MAX + 5).expect("grow");
        limit_while_running(dir.path()).expect("limit");
        assert_eq!(std::fs::metadata(&out_path).expect("out").len(), 0);
        assert_eq!(
            std::fs::metadata(rotated(&out_path))
                .expect("rotated")
                .len(),
            LOG_BYTES_MAX + 5
        );
        assert!(!rotated(&err_path).exists(), "a small log is left alone");
    }
}
