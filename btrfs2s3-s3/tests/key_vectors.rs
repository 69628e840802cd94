//! Every object-key case recorded from the Python tool btrfs2s3 2.1.0 passes.

#[path = "../examples/key_vectors/mod.rs"]
mod key_vectors;

#[test]
fn python_tool_key_vectors() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/object-keys.json");
    let text = std::fs::read_to_string(path).expect("the vector file is readable");
    let vectors: key_vectors::Vectors = serde_json::from_str(&text).expect("valid vectors");
    let (passed, failures) = key_vectors::check_all(&vectors);
    assert!(
        failures.is_empty(),
        "{passed} passed, {} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(passed, vectors.encode.len() + vectors.decode.len());
    assert_eq!(passed, 1600, "200 encode and 1400 decode cases");
}
