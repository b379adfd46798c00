//! The receipt audit (`bitnet-validate verify`) on arbitrary text: a verdict with findings
//! for anything that is not a sound receipt, never a panic.
#![no_main]
use bitnet_fuzz::audit::{verify_text, VerifyOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let opts = VerifyOptions {
        public_key: None,
        replay: false,
    };
    let v = verify_text("fuzz", text, &opts);
    assert_eq!(v.ok, v.findings.is_empty());
});
