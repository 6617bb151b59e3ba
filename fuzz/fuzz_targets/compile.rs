//! Fuzzes the whole language front end: KDL parsing (v2, then v1 fallback),
//! validation, compilation, and diagnostic rendering. Any panic is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match sentinel_config::compile("fuzz.kdl", text) {
        Ok(snapshot) => {
            let printed = sentinel_config::print(&snapshot);
            let again = sentinel_config::compile("printed.kdl", &printed).expect("printed form compiles");
            assert_eq!(again.config_hash(), snapshot.config_hash());
        }
        Err(diagnostics) => {
            let _ = diagnostics.render(false);
        }
    }
});
