//! Policy bundle files: which files of a directory `sovctl policy apply` sends.
//!
//! Owns the choice of files and the errors about them; it does not judge their contents (the
//! scheduler validates a bundle against its schema and answers with every problem, which is the
//! one place that knows Cedar). A bundle is the regular files directly inside one directory
//! whose names end in `.cedar`, `.cedarschema` or `.json`; everything else there (README.md,
//! editor backups, hidden files, subdirectories) stays behind, and the caller says so on stderr
//! so nobody wonders why an edit had no effect.

use std::collections::BTreeMap;
use std::path::Path;

use crate::UsageError;

/// Extensions of the files a bundle is made of: policies, the schema, the entity data.
pub const EXTENSIONS: [&str; 3] = ["cedar", "cedarschema", "json"];
/// Entries looked at in a directory: a policy directory holds a handful of files; pointing
/// sovctl at a home directory by mistake should fail fast, not read everything in it.
const DIR_ENTRIES_MAX: usize = 1000;
/// Files sent in one bundle.
const FILES_MAX: usize = 256;
/// Bytes of file contents sent in one bundle: the scheduler accepts requests of up to 4 MiB,
/// and names, comment and framing need a little of that.
const BYTES_MAX: usize = 4 * 1024 * 1024 - 64 * 1024;

/// What was read from a path.
#[derive(Debug, PartialEq, Eq)]
pub struct Bundle {
    /// File name (without the directory) -> contents, as `PolicyBundle.files` wants them.
    pub files: BTreeMap<String, String>,
    /// Names in the directory that are not part of the bundle, sorted.
    pub skipped: Vec<String>,
}

/// Reads the bundle at `path`: a directory as the module documentation says, or a single
/// `.cedar` file, which is sent alone.
pub fn read(path: &Path) -> Result<Bundle, UsageError> {
    let shown = path.display();
    let meta = std::fs::metadata(path)
        .map_err(|e| UsageError(format!("cannot read policy bundle {shown}: {e}")))?;
    if meta.is_dir() {
        return read_dir(path);
    }
    if extension(&path.to_string_lossy()) != Some("cedar") {
        return Err(UsageError(format!(
            "{shown} is neither a directory nor a .cedar file; pass the directory holding the \
             bundle's .cedar, .cedarschema and .json files"
        )));
    }
    let name = file_name(path)?;
    let text = read_text(path, meta.len())?;
    Ok(Bundle {
        files: BTreeMap::from([(name, text)]),
        skipped: Vec::new(),
    })
}

fn read_dir(dir: &Path) -> Result<Bundle, UsageError> {
    let shown = dir.display();
    let cannot = |e: std::io::Error| UsageError(format!("cannot read directory {shown}: {e}"));
    let mut files = BTreeMap::new();
    let mut skipped = Vec::new();
    let mut bytes = 0;
    for (seen, entry) in std::fs::read_dir(dir).map_err(cannot)?.enumerate() {
        if seen >= DIR_ENTRIES_MAX {
            return Err(UsageError(format!(
                "{shown} holds more than {DIR_ENTRIES_MAX} entries; is it really a policy \
                 bundle directory?"
            )));
        }
        let entry = entry.map_err(cannot)?;
        let path = entry.path();
        let name = file_name(&path)?;
        // Symbolic links count as what they point to, so a bundle may link shared files.
        let is_file = std::fs::metadata(&path).is_ok_and(|m| m.is_file());
        let wanted = is_file
            && !name.starts_with('.')
            && extension(&name).is_some_and(|ext| EXTENSIONS.contains(&ext));
        if !wanted {
            skipped.push(name);
            continue;
        }
        if files.len() == FILES_MAX {
            return Err(UsageError(format!(
                "{shown} holds more than {FILES_MAX} policy files; a bundle may have at most \
                 {FILES_MAX}"
            )));
        }
        let size = entry.metadata().map_or(0, |m| m.len());
        let text = read_text(&path, size)?;
        bytes += text.len();
        if bytes > BYTES_MAX {
            return Err(UsageError(format!(
                "the policy files in {shown} exceed {} KiB together, more than the scheduler \
                 accepts in one bundle",
                BYTES_MAX / 1024
            )));
        }
        files.insert(name, text);
    }
    if files.is_empty() {
        return Err(UsageError(format!(
            "no .cedar, .cedarschema or .json files directly inside {shown}; pass the directory \
             that holds the bundle"
        )));
    }
    skipped.sort();
    Ok(Bundle { files, skipped })
}

/// Reads one file as UTF-8 (the API carries text), refusing oversized files before reading.
fn read_text(path: &Path, size: u64) -> Result<String, UsageError> {
    let shown = path.display();
    if size > BYTES_MAX as u64 {
        return Err(UsageError(format!(
            "{shown} is {} KiB, more than the scheduler accepts in one bundle ({} KiB)",
            size / 1024,
            BYTES_MAX / 1024
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| UsageError(format!("cannot read {shown}: {e}")))?;
    String::from_utf8(bytes)
        .map_err(|_| UsageError(format!("{shown} is not UTF-8 text; policy files must be")))
}

fn file_name(path: &Path) -> Result<String, UsageError> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .ok_or_else(|| {
            UsageError(format!(
                "{} has no usable file name (it must be UTF-8)",
                path.display()
            ))
        })
}

/// The text after the last '.', if the name has one that does not start it.
fn extension(name: &str) -> Option<&str> {
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() && !stem.ends_with('/') => Some(ext),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh directory under the system's temporary directory, removed when dropped.
    struct ScratchDir(PathBuf);

    impl ScratchDir {
        fn new() -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "sovctl-bundle-test-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::SeqCst)
            ));
            std::fs::create_dir_all(&path).unwrap();
            ScratchDir(path)
        }

        fn write(&self, name: &str, text: &str) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, text).unwrap();
            path
        }
    }

    impl Drop for ScratchDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_directory_sends_its_policy_files_and_skips_the_rest() {
        let dir = ScratchDir::new();
        dir.write("eu.cedar", "forbid(principal, action, resource);\n");
        dir.write("schema.cedarschema", "entity Node;\n");
        dir.write("entities.json", "[]\n");
        dir.write("README.md", "# policy\n");
        dir.write("eu.cedar~", "old\n");
        dir.write(".hidden.cedar", "x\n");
        std::fs::create_dir(dir.0.join("sub.cedar")).unwrap();
        let bundle = read(&dir.0).unwrap();
        assert_eq!(
            bundle.files.keys().collect::<Vec<_>>(),
            ["entities.json", "eu.cedar", "schema.cedarschema"]
        );
        assert_eq!(bundle.files["schema.cedarschema"], "entity Node;\n");
        assert_eq!(
            bundle.skipped,
            [".hidden.cedar", "README.md", "eu.cedar~", "sub.cedar"]
        );
    }

    #[test]
    fn a_single_cedar_file_is_sent_alone() {
        let dir = ScratchDir::new();
        let path = dir.write("eu.cedar", "permit(principal, action, resource);\n");
        dir.write("other.cedar", "x\n");
        let bundle = read(&path).unwrap();
        assert_eq!(bundle.files.keys().collect::<Vec<_>>(), ["eu.cedar"]);
        assert!(bundle.skipped.is_empty());
    }

    #[test]
    fn other_single_files_are_refused() {
        let dir = ScratchDir::new();
        let path = dir.write("entities.json", "[]\n");
        let err = read(&path).unwrap_err().0;
        assert!(
            err.contains("neither a directory nor a .cedar file"),
            "{err}"
        );
    }

    #[test]
    fn a_directory_without_policy_files_is_refused() {
        let dir = ScratchDir::new();
        dir.write("README.md", "# nothing here\n");
        let err = read(&dir.0).unwrap_err().0;
        assert!(
            err.starts_with("no .cedar, .cedarschema or .json files"),
            "{err}"
        );
    }

    #[test]
    fn missing_path_and_binary_files_are_reported() {
        let dir = ScratchDir::new();
        let err = read(&dir.0.join("nope")).unwrap_err().0;
        assert!(err.starts_with("cannot read policy bundle "), "{err}");
        std::fs::write(dir.0.join("bad.cedar"), [0xff, 0xfe, 0x00]).unwrap();
        let err = read(&dir.0).unwrap_err().0;
        assert!(
            err.ends_with("bad.cedar is not UTF-8 text; policy files must be"),
            "{err}"
        );
    }

    #[test]
    fn extensions_need_a_stem() {
        assert_eq!(extension("a.cedar"), Some("cedar"));
        assert_eq!(extension("a.b.json"), Some("json"));
        assert_eq!(extension(".cedar"), None);
        assert_eq!(extension("cedar"), None);
        assert_eq!(extension("dir/x.cedar"), Some("cedar"));
    }
}
