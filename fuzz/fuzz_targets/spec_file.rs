//! A deployment spec file as `sovctl deploy apply -f FILE` reads it: TOML text parsed strictly
//! into a spec, then what the scheduler does with the request sovctl sends (conversion and
//! validation). Whatever the bytes, every step returns an error or a value; none panics. An
//! error names the file, and a spec the scheduler accepts passes validation again unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sov_scheduler::api::deployments::spec_from_pb;
use sov_scheduler::state::validate_spec;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let spec = match sovctl::spec::parse(text, "fuzz.toml") {
        Ok(spec) => spec,
        Err(e) => {
            assert!(e.0.starts_with("fuzz.toml"), "error without its file: {e}");
            return;
        }
    };
    if let Ok(spec) = spec_from_pb(spec)
        && validate_spec(&spec).is_ok()
    {
        assert!(validate_spec(&spec.clone()).is_ok());
    }
});
