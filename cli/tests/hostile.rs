//! `sentinelctl validate` on hostile files (issue 11, defect 1): 2,000
//! nested blocks once aborted it with a stack overflow (exit 134). Now it
//! exits 1 with a located diagnostic.

use std::process::Command;

#[test]
fn two_thousand_nested_blocks_exit_1_with_a_located_diagnostic() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("deep.kdl");
    let text = format!("{}{}", "a {\n".repeat(2_000), "}\n".repeat(2_000));
    std::fs::write(&file, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sentinelctl"))
        .arg("validate")
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let all = format!("{stdout}{stderr}");
    assert!(all.contains("blocks are nested more than 16 deep"), "{all}");
    assert!(all.contains("deep.kdl:17:3"), "{all}");
    assert!(all.contains("help:"), "{all}");
}

#[test]
fn syntax_error_storms_exit_1_not_abort() {
    let dir = tempfile::tempdir().unwrap();
    for (i, text) in ["} ".repeat(5_000), "(t)".repeat(5_000), "/- ".repeat(5_000)]
        .into_iter()
        .enumerate()
    {
        let file = dir.path().join(format!("storm-{i}.kdl"));
        std::fs::write(&file, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_sentinelctl"))
            .arg("validate")
            .arg(&file)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(1),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
