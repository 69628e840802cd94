//! `cargo xtask`: the project's development tasks.
//!
//! ```text
//! cargo xtask test          everything CI runs: fmt, clippy, docs, unit and integration tests
//! cargo xtask integration   only the tests that need root, btrfs and the S3 servers
//! cargo xtask demo          a guided run of btrfs2s3 on a throw-away btrfs and S3 server
//! cargo xtask shell         a shell inside a test environment (for poking around)
//! cargo xtask bench         backups, planning and start-up against the Python tool
//! cargo xtask bench upload  upload throughput and memory against a plain PutObject
//! ```
//!
//! Everything that can be installed is installed on demand: Debian packages with apt-get,
//! moto with pip into a virtualenv and Garage with `cargo install`, both in a cache directory
//! outside the repository (`~/.cache/btrfs2s3-xtask`, or `$BTRFS2S3_XTASK_CACHE`) that later
//! runs reuse.

#![forbid(unsafe_code)]

mod bench;
mod cmd;
mod demo;
mod testenv;
mod tools;

use std::process::ExitCode;

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

const USAGE: &str = "\
usage: cargo xtask <task>

tasks:
  test          fmt check, clippy -D warnings, docs, unit tests and integration tests
                (integration tests need root: loop devices and mounts)
  integration   only the integration tests (real btrfs, moto and Garage)
  demo          a guided tour: a full backup and two differentials on a throw-away setup
  shell         start a shell inside a test environment; BTRFS2S3_TEST_ENV describes it
  bench         full and differential backups, planning at scale and start-up, against
                the Python tool btrfs2s3 2.1.0, btrfs send and a plain upload
                (cargo xtask bench --help for the options)
  bench upload  stream 1 GiB into Garage vs a plain PutObject of the same bytes
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(),
        Some("integration") => integration(),
        Some("shell") => shell(),
        Some("demo") => demo::run(),
        Some("bench") => bench::run(&args[1..]),
        Some("help" | "-h" | "--help") => {
            print!("{USAGE}");
            Ok(())
        }
        _ => {
            eprint!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Everything CI runs.
fn test() -> Result<()> {
    tools::ensure_build_prerequisites()?;
    cmd::run(cmd::cargo().args(["fmt", "--all", "--check"]))?;
    cmd::run(cmd::cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    cmd::run(
        cmd::cargo()
            .args(["doc", "--workspace", "--no-deps"])
            .env("RUSTDOCFLAGS", "-D warnings"),
    )?;
    // Licenses compatible with ours, crates from the registry only (deny.toml). Advisories
    // need a database this machine cannot download.
    cmd::run(
        std::process::Command::new(tools::ensure_cargo_deny()?)
            .args(["check", "licenses", "bans", "sources"])
            .current_dir(cmd::workspace_root()),
    )?;
    testenv::require_root("cargo xtask test")?;
    let env = testenv::TestEnv::start()?;
    cmd::run(env.apply(cmd::cargo().args(["test", "--workspace"])))?;
    // The safety properties over many more generated histories than the quick run above: in
    // a release build, where 100,000 take about half a minute.
    cmd::run(
        cmd::cargo()
            .args([
                "test",
                "--release",
                "-p",
                "btrfs2s3-core",
                "--lib",
                "safety",
            ])
            .env("BTRFS2S3_SAFETY_HISTORIES", "100000"),
    )?;
    Ok(())
}

/// Only the integration test targets (the `tests/*.rs` files of every crate).
fn integration() -> Result<()> {
    tools::ensure_build_prerequisites()?;
    testenv::require_root("cargo xtask integration")?;
    let env = testenv::TestEnv::start()?;
    cmd::run(env.apply(cmd::cargo().args(["test", "--workspace", "--test", "*"])))?;
    Ok(())
}

fn shell() -> Result<()> {
    tools::ensure_build_prerequisites()?;
    testenv::require_root("cargo xtask shell")?;
    let env = testenv::TestEnv::start()?;
    println!("test environment: {}", env.describe());
    println!("exit the shell to tear it down");
    let shell = std::env::var("SHELL").unwrap_or_else(|_| "/bin/sh".to_owned());
    // The shell's exit status is the user's business.
    let _ = env.apply(&mut std::process::Command::new(shell)).status();
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    /// The architecture's dependency direction, checked against `cargo metadata`:
    /// policy at the bottom, btrfs and s3 beside each other, core above them, cli on top.
    #[test]
    fn crate_dependencies_point_one_way() {
        let output = std::process::Command::new(env!("CARGO"))
            .args(["metadata", "--format-version", "1", "--no-deps"])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .output()
            .expect("cargo metadata runs");
        assert!(output.status.success(), "cargo metadata failed");
        let metadata: serde_json::Value =
            serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON");
        let ours = |name: &str| name.starts_with("btrfs2s3-");
        let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for package in metadata["packages"].as_array().expect("packages") {
            let name = package["name"].as_str().expect("name").to_owned();
            let normal: BTreeSet<String> = package["dependencies"]
                .as_array()
                .expect("dependencies")
                .iter()
                .filter(|dep| dep["kind"].is_null()) // normal dependencies, not dev or build
                .map(|dep| dep["name"].as_str().expect("name").to_owned())
                .filter(|dep| ours(dep))
                .collect();
            deps.insert(name, normal);
        }
        let allowed: BTreeMap<&str, &[&str]> = BTreeMap::from([
            ("btrfs2s3-policy", &[][..]),
            ("btrfs2s3-btrfs", &[][..]),
            ("btrfs2s3-s3", &[][..]),
            ("btrfs2s3-stream", &[][..]),
            (
                "btrfs2s3-core",
                &[
                    "btrfs2s3-policy",
                    "btrfs2s3-btrfs",
                    "btrfs2s3-s3",
                    "btrfs2s3-stream",
                ][..],
            ),
            ("btrfs2s3-cli", &["btrfs2s3-core", "btrfs2s3-policy"][..]),
        ]);
        for (name, allowed) in allowed {
            let actual = deps
                .get(name)
                .unwrap_or_else(|| panic!("{name} is a member"));
            let unexpected: Vec<_> = actual
                .iter()
                .filter(|dep| !allowed.contains(&dep.as_str()))
                .collect();
            assert!(
                unexpected.is_empty(),
                "{name} must not depend on {unexpected:?} (see ARCHITECTURE.md)"
            );
        }
    }

    /// The binary never touches btrfs or S3 itself: not as a dependency (above), and not by
    /// naming those crates through a re-export of core's. Core re-exports neither.
    #[test]
    fn the_cli_reaches_btrfs_and_s3_only_through_core() {
        let root = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
        let mut offenders = Vec::new();
        for (dir, forbidden) in [
            (
                "btrfs2s3-cli/src",
                &["btrfs2s3_btrfs", "btrfs2s3_s3", "btrfs2s3_stream"][..],
            ),
            (
                "btrfs2s3-core/src",
                &["pub use btrfs2s3_btrfs", "pub use btrfs2s3_s3"][..],
            ),
        ] {
            let files = rust_files(&root.join(dir));
            assert!(
                files.len() > 2,
                "the sources of {dir} moved: update this test"
            );
            for file in files {
                let text = std::fs::read_to_string(&file).expect("a readable source file");
                for (n, line) in text.lines().enumerate() {
                    if forbidden.iter().any(|name| line.contains(name)) {
                        offenders.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                    }
                }
            }
        }
        assert!(
            offenders.is_empty(),
            "the CLI must go through core (see ARCHITECTURE.md):\n{}",
            offenders.join("\n")
        );
    }

    fn rust_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).expect("a source directory") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                found.extend(rust_files(&path));
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                found.push(path);
            }
        }
        found
    }
}
