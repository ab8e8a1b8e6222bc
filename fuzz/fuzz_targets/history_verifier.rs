//! An evidence file as `sovctl audit verify` reads it from anywhere: arbitrary text checked
//! against a fixed public key, with and without a "previous" export (the input split at its
//! first NUL byte). Never panics, and never accepts: nothing here is signed by the key.
#![no_main]

use ed25519_dalek::SigningKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let key = SigningKey::from_bytes(&[7; 32]).verifying_key();
    let (current, previous) = match text.split_once('\0') {
        Some((c, p)) => (c, Some(p)),
        None => (text, None),
    };
    let verified = sov_proto::evidence::verify(current, &key, previous);
    assert!(
        verified.is_err() || current.lines().all(|l| l.trim().is_empty()),
        "an unsigned file verified"
    );
});
