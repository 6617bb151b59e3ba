//! Tidy: every control-plane metric is listed and documented.

use std::path::Path;

#[test]
fn every_metric_is_listed_and_documented() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let used = sentinel_tests::metric_names(&root.join("src"), "sentinel_cp_");
    let docs = std::fs::read_to_string(root.join("../docs/operations.md")).unwrap();
    assert!(used.len() >= 8, "found only {used:?}");
    for m in &used {
        assert!(
            sentinel_cp::telemetry::METRICS.contains(&m.as_str()),
            "{m} is registered but not in METRICS"
        );
    }
    for m in sentinel_cp::telemetry::METRICS {
        assert!(
            docs.contains(&format!("`{m}`")),
            "{m} is not documented in docs/operations.md"
        );
    }
}
