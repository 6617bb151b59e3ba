//! Tidy: the metrics the runner records are the ones it lists, and both
//! prefixes (control plane, standalone proxy) are documented.

use std::path::Path;

#[test]
fn every_discovery_metric_is_listed_and_documented() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let code = std::fs::read_to_string(root.join("src/runner.rs")).unwrap();
    // The runner builds names as format!("{}_SUFFIX", prefix).
    let used: Vec<&str> = code
        .split("\"{}_")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .collect();
    assert!(used.len() >= 4, "found only {used:?}");
    for m in &used {
        assert!(
            sentinel_discovery::runner::METRIC_SUFFIXES.contains(m),
            "{m} is recorded but not in METRIC_SUFFIXES"
        );
    }
    let docs = std::fs::read_to_string(root.join("../docs/operations.md")).unwrap();
    for prefix in ["sentinel_cp_discovery", "sentinel_discovery"] {
        for name in sentinel_discovery::runner::metric_names(prefix) {
            assert!(
                docs.contains(&format!("`{name}`")),
                "{name} is not documented in docs/operations.md"
            );
        }
    }
}
