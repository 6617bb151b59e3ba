//! Tidy: every control-plane metric is listed and documented.

use std::path::Path;

fn sources(dir: &Path, out: &mut String) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push_str(&std::fs::read_to_string(&path).unwrap());
        }
    }
}

#[test]
fn every_metric_is_listed_and_documented() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut code = String::new();
    sources(&root.join("src"), &mut code);
    let docs = std::fs::read_to_string(root.join("../docs/operations.md")).unwrap();
    let used: std::collections::BTreeSet<&str> = code
        .split('"')
        .filter(|s| {
            s.starts_with("sentinel_cp_") && s.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        })
        .collect();
    assert!(used.len() >= 8, "found only {used:?}");
    for m in &used {
        assert!(
            sentinel_cp::telemetry::METRICS.contains(m),
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
