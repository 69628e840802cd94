//! `cargo xtask bench`: measurements reported as ratios against baselines measured in the
//! same run, because absolute figures on a shared two-core machine are noise.
//!
//! - `cargo xtask bench`: full and differential backups, planning at scale and start-up,
//!   btrfs2s3 against the Python tool btrfs2s3 2.1.0, `btrfs send` into /dev/null and a plain
//!   upload of the same bytes (see `compare`).
//! - `cargo xtask bench upload`: the upload path alone against a plain `PutObject`.
//! - `cargo xtask bench scale`: two remotes against one, parallel sources, bandwidth limits,
//!   send protocol 2 (see `scale`).
//! - `cargo xtask bench simulate`: `simulate` over three years of 15-minute snapshots.
//! - `cargo xtask bench restore`: btrfs2s3's own receiver against `btrfs receive`.
//!
//! Tables go to standard output, the same figures as JSON under `target/bench/`.

// Measurements are floats for statistics and integers for counting; the conversions are
// between byte counts far below 2^52 and durations, where precision loss cannot matter.
#![allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

mod compare;
mod measure;
mod restore;
mod scale;
mod simulate;
mod upload;

use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::{Result, cmd};

const USAGE: &str = "\
usage: cargo xtask bench [upload|scale|simulate|restore] [--size-mib N] [--runs N] [--objects N] [--snapshots N]

  (no name)   full and differential backups, planning and start-up against the Python tool
  upload      the upload path alone against a plain PutObject
  scale       two remotes against one, parallel sources, --rate-limit, send protocol 2
  simulate    `simulate` over 3 years of 15-minute snapshots for three policies
  restore     btrfs2s3's own receiver (restore --plain) against btrfs receive

  --size-mib N    data in the source, or uploaded (default 1024)
  --runs N        measured runs of everything (default 3; start-up runs 10 times as many)
  --objects N     backup objects in the bucket for planning (default 100000)
  --snapshots N   snapshots on disk for planning (default 1000)";

/// The knobs of a benchmark run.
#[derive(Debug, Clone)]
pub struct Options {
    pub size_mib: u64,
    pub runs: usize,
    pub objects: u64,
    pub snapshots: u64,
}

/// `cargo xtask bench [what] [options]`.
pub fn run(args: &[String]) -> Result<()> {
    let mut options = Options {
        size_mib: 1024,
        runs: 3,
        objects: 100_000,
        snapshots: 1000,
    };
    let mut what = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| format!("{arg} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--size-mib" => options.size_mib = value()?.parse()?,
            "--runs" => options.runs = value()?.parse::<usize>()?.max(1),
            "--objects" => options.objects = value()?.parse()?,
            "--snapshots" => options.snapshots = value()?.parse()?,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            name if what.is_none() && !name.starts_with('-') => what = Some(name.to_owned()),
            other => return Err(format!("unknown argument {other}\n{USAGE}").into()),
        }
    }
    if options.size_mib == 0 {
        return Err(format!("--size-mib must be at least 1\n{USAGE}").into());
    }
    match what.as_deref() {
        None => compare::run(&options),
        Some("upload") => upload::run(options.size_mib, options.runs),
        Some("scale") => scale::run(&options),
        Some("simulate") => simulate::run(&options),
        Some("restore") => restore::run(&options),
        Some(other) => Err(format!("unknown benchmark {other}\n{USAGE}").into()),
    }
}

/// The median and the range of some measurements.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stats {
    /// `None` for no values.
    pub fn of(values: &[f64]) -> Option<Stats> {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        Some(Stats {
            median: *sorted.get(sorted.len() / 2)?,
            min: *sorted.first()?,
            max: *sorted.last()?,
        })
    }

    pub fn to_json(self) -> serde_json::Value {
        serde_json::json!({ "median": self.median, "min": self.min, "max": self.max })
    }
}

/// Writes `bytes` of incompressible data to `path`.
pub fn write_random_file(path: &Path, bytes: u64) -> Result<()> {
    let mut random = std::fs::File::open("/dev/urandom")?;
    let mut file = std::fs::File::create(path)?;
    let mut left = bytes;
    let mut buffer = vec![0u8; 1 << 20];
    while left > 0 {
        let n = usize::try_from(left.min(buffer.len() as u64))?;
        std::io::Read::read_exact(&mut random, &mut buffer[..n])?;
        file.write_all(&buffer[..n])?;
        left -= n as u64;
    }
    file.sync_all()?;
    Ok(())
}

/// Builds examples of the s3 crate (release); returns the directory of their binaries.
pub fn build_s3_examples(names: &[&str]) -> Result<PathBuf> {
    let mut build = cmd::cargo();
    build.args(["build", "--release", "-p", "btrfs2s3-s3"]);
    for name in names {
        build.args(["--example", name]);
    }
    cmd::run(&mut build)?;
    Ok(cmd::workspace_root().join("target/release/examples"))
}

/// Where the JSON reports go: `target/bench/`.
pub fn report_dir() -> Result<PathBuf> {
    let out = cmd::workspace_root().join("target/bench");
    std::fs::create_dir_all(&out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_take_the_middle_value_and_the_range() {
        let stats = Stats::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((stats.median, stats.min, stats.max), (2.0, 1.0, 3.0));
        let stats = Stats::of(&[5.0]).unwrap();
        assert_eq!((stats.median, stats.min, stats.max), (5.0, 5.0, 5.0));
        assert!(Stats::of(&[]).is_none());
    }
}
