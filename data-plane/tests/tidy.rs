//! Tidy: every metric the proxy registers is in telemetry::METRICS and is
//! documented in docs/operations.md.

use std::path::Path;

#[test]
fn every_metric_is_listed_and_documented() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let used = sentinel_tests::metric_names(&root.join("src"), "sentinel_");
    let docs = std::fs::read_to_string(root.join("../docs/operations.md")).unwrap();
    assert!(used.len() >= 10, "found only {used:?}");
    for m in &used {
        assert!(
            sentinel_proxy::telemetry::METRICS.contains(&m.as_str()),
            "{m} is registered but not in METRICS"
        );
    }
    for m in sentinel_proxy::telemetry::METRICS {
        assert!(
            docs.contains(&format!("`{m}`")),
            "{m} is not documented in docs/operations.md"
        );
    }
}
