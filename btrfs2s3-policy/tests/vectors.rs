//! The 300 resolver cases recorded from the Python tool btrfs2s3 2.1.0 all pass.

#[path = "../examples/vectors/mod.rs"]
mod vectors;

use std::path::Path;

#[test]
fn python_tool_vectors() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/resolver");
    let report = vectors::check_dir(&dir).expect("the vector directory is readable");
    let failures: Vec<String> = report
        .failures
        .iter()
        .map(|(file, description)| format!("{}: {description}", file.display()))
        .collect();
    assert!(
        failures.is_empty(),
        "{} passed, {} failed:\n{}",
        report.passed,
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(report.passed, 300, "every vector file was checked");
}
