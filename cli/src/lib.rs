//! The parts of `sovctl` that read what users write, as a library: deployment spec files
//! ([`spec`]) and durations ([`duration`]). The binary (`main.rs`) uses them from here, and so
//! do the fuzz targets (`fuzz/fuzz_targets/spec_file.rs`), which feed them hostile input.
//! Everything else of the CLI lives in the binary.

pub mod duration;
pub mod spec;

/// Bad input from the user: flags, endpoints, spec files. Exits with 2, like clap's own usage
/// errors, so scripts can tell "you asked wrongly" from "the cluster said no".
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}
