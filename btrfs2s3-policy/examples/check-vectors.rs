//! Checks the resolver against every `*.json` vector in a directory (the format of
//! `testdata/resolver`, recorded from the Python tool).
//!
//! ```text
//! cargo run -p btrfs2s3-policy --example check-vectors -- DIR
//! ```
//!
//! Prints one line per failing case with a short diff, then `N passed, M failed`; the exit
//! status is non-zero when any case fails.
#![allow(missing_docs)] // an example binary, documented above

mod vectors;

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), None) = (args.next(), args.next()) else {
        eprintln!("usage: check-vectors DIR");
        return ExitCode::from(2);
    };
    let dir = PathBuf::from(dir);
    let report = match vectors::check_dir(&dir) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("cannot read {}: {e}", dir.display());
            return ExitCode::from(2);
        }
    };
    for (file, description) in &report.failures {
        println!("FAIL {}: {description}", file.display());
    }
    println!("{} passed, {} failed", report.passed, report.failures.len());
    if report.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
