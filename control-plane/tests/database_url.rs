//! `--database-url` does what it says, and `sentinel-cp migrate` migrates
//! and exits: the real binary, in temporary directories.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_sentinel-cp");

fn migrate(url: &str, cwd: &std::path::Path) -> std::process::Output {
    Command::new(BIN)
        .args(["migrate", "--database-url", url])
        .env_remove("DATABASE_URL")
        .current_dir(cwd)
        .output()
        .unwrap()
}

#[test]
fn an_absolute_sqlite_url_creates_the_file_without_mode_rwc() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cp.db");
    let out = migrate(&format!("sqlite://{}", db.display()), dir.path());
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("migrations applied"));
    assert!(db.is_file());
    // Again: migrations already applied is fine.
    assert!(
        migrate(&format!("sqlite://{}", db.display()), dir.path())
            .status
            .success()
    );
}

#[test]
fn relative_sqlite_urls_are_relative_to_the_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    for (url, file) in [
        ("sqlite:a.db", "a.db"),
        ("sqlite://b.db", "b.db"),
        ("sqlite:data/c.db?cache=private", "data/c.db"),
    ] {
        let out = migrate(url, dir.path());
        assert!(out.status.success(), "{url}: {out:?}");
        assert!(dir.path().join(file).is_file(), "{url}");
    }
}

#[test]
fn a_missing_directory_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("no/such/dir/cp.db");
    let out = migrate(&format!("sqlite://{}", db.display()), dir.path());
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not exist: create it first"), "{err}");
    assert!(!db.exists());
}
