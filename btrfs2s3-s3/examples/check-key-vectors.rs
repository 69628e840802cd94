//! Checks the object-key codec against a vector file in the format of
//! `testdata/object-keys.json` (recorded from the Python tool).
//!
//! ```text
//! cargo run -p btrfs2s3-s3 --example check-key-vectors -- FILE
//! ```
//!
//! One case per `encode` entry and one per `decode` entry; prints each failure, then
//! `N passed, M failed`, and exits non-zero when any case fails.
#![allow(missing_docs)] // an example binary, documented above

mod key_vectors;

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(file), None) = (args.next(), args.next()) else {
        eprintln!("usage: check-key-vectors FILE");
        return ExitCode::from(2);
    };
    let text = match std::fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("cannot read {}: {e}", file.to_string_lossy());
            return ExitCode::from(2);
        }
    };
    let vectors: key_vectors::Vectors = match serde_json::from_str(&text) {
        Ok(vectors) => vectors,
        Err(e) => {
            eprintln!("cannot parse {}: {e}", file.to_string_lossy());
            return ExitCode::from(2);
        }
    };
    let (passed, failures) = key_vectors::check_all(&vectors);
    for failure in &failures {
        println!("FAIL {failure}");
    }
    println!("{passed} passed, {} failed", failures.len());
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
