//! `allocs/<id>/state.json`: what the agent must remember about a running model server to
//! adopt it after the agent itself restarts (crash, upgrade), instead of killing and
//! restarting a server that may have taken minutes to load its weights.
//!
//! The file is replaced atomically (write a temporary file, then rename) so a crash mid-write
//! leaves the previous version, never a torn one. It exists exactly while the allocation's
//! process may be running; removing it is the last step of a stop.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::AllocSpec;

const STATE_FILE: &str = "state.json";
const STATE_TMP_FILE: &str = "state.json.tmp";

/// Bumped when the format changes incompatibly; a file of another version is not adopted.
pub(crate) const STATE_VERSION: u32 = 1;

/// A spec carries argv and env, so a few KiB is typical; anything this large is not ours.
const STATE_BYTES_MAX: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StateFile {
    pub version: u32,
    /// The process group leader; also the group id (servers are spawned with `process_group(0)`).
    pub pid: u32,
    /// `/proc/<pid>/stat` field 22, so a reused pid is never mistaken for our process.
    pub start_time: u64,
    pub restarts: u32,
    /// Set before the first signal of a stop, so an agent that crashes mid-stop finishes the
    /// stop on its next start instead of adopting a server that was being taken down.
    pub stop_reason: Option<String>,
    pub spec: AllocSpec,
}

pub(crate) fn path(alloc_dir: &Path) -> PathBuf {
    alloc_dir.join(STATE_FILE)
}

pub(crate) fn write(alloc_dir: &Path, state: &StateFile) -> io::Result<()> {
    let bytes = serde_json::to_vec_pretty(state).map_err(io::Error::other)?;
    let tmp = alloc_dir.join(STATE_TMP_FILE);
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path(alloc_dir))
}

/// `Ok(None)` when there is no state file (the allocation was stopped for good, or never ran).
pub(crate) fn read(alloc_dir: &Path) -> io::Result<Option<StateFile>> {
    let path = path(alloc_dir);
    let len = match std::fs::metadata(&path) {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if len > STATE_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is {len} bytes, above the {STATE_BYTES_MAX}-byte limit",
                path.display()
            ),
        ));
    }
    let bytes = std::fs::read(&path)?;
    let state: StateFile = serde_json::from_slice(&bytes).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })?;
    if state.version != STATE_VERSION {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: state format version {} (this agent reads version {STATE_VERSION})",
                path.display(),
                state.version
            ),
        ));
    }
    Ok(Some(state))
}

/// Removing a file that is already gone is success: the goal is its absence.
pub(crate) fn remove(alloc_dir: &Path) -> io::Result<()> {
    match std::fs::remove_file(path(alloc_dir)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
