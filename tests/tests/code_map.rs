//! Tidy: docs/architecture.md is the code map. Every workspace crate has
//! its section, and every module of every crate is named in it, so a new
//! module cannot land without its line in the map.

use std::path::Path;

#[test]
fn the_code_map_names_every_crate_and_module() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let map = std::fs::read_to_string(root.join("docs/architecture.md")).unwrap();
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let members = manifest
        .lines()
        .find(|l| l.trim_start().starts_with("members"))
        .expect("workspace members");
    let crates: Vec<&str> = members.split('"').skip(1).step_by(2).collect();
    assert!(crates.len() >= 8, "{crates:?}");
    let mut missing = Vec::new();
    for krate in crates {
        if !map.contains(&format!("## `{krate}/`")) {
            missing.push(format!("section `{krate}/`"));
        }
        let src = root.join(krate).join("src");
        let Ok(entries) = std::fs::read_dir(&src) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = path.file_stem().unwrap().to_string_lossy().to_string();
            let is_module = path.is_dir() || path.extension().is_some_and(|e| e == "rs");
            if !is_module || ["lib", "main", "mod", "bin"].contains(&name.as_str()) {
                continue;
            }
            if ![
                format!("`{name}`"),
                format!("`{name}/"),
                format!("`{name}::"),
            ]
            .iter()
            .any(|n| map.contains(n.as_str()))
            {
                missing.push(format!("{krate}/src/{name}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs/architecture.md does not name: {missing:#?}"
    );
}
