//! A policy bundle as `PolicyService.Apply` receives it: file names and contents, compiled
//! (Cedar parse, schema validation, entity data, annotations). The input is split on NUL bytes
//! into name, content, name, content, ... Never panics; errors are values.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parts: Vec<&str> = text.split('\0').collect();
    let files: BTreeMap<String, String> = parts
        .chunks(2)
        .map(|pair| (pair[0].to_string(), pair.get(1).unwrap_or(&"").to_string()))
        .collect();
    let _ = sov_scheduler::policy::compile(&files);
});
