//! `cargo xtask bench simulate`: `btrfs2s3 simulate` over three years of 15-minute snapshots
//! (105,192 steps) for three policies, which must take seconds, not minutes. No root, no
//! server: the simulation is pure.

use std::process::Command;

use super::measure::measure;
use super::{Options, Stats, report_dir};
use crate::{Result, cmd};

const POLICIES: [&str; 3] = ["1y 3m 30d 24h", "2y 12m 7d", "1y 12m 4w 7d 24h 4M"];

pub fn run(options: &Options) -> Result<()> {
    cmd::run(cmd::cargo().args(["build", "--release", "-p", "btrfs2s3-cli"]))?;
    let ours = cmd::workspace_root().join("target/release/btrfs2s3");
    let work = std::env::temp_dir().join(format!("btrfs2s3-bench-simulate-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let mut samples = Vec::new();
    let mut steps = 0u64;
    for run in 0..options.runs {
        let mut command = Command::new(&ours);
        command.args(["simulate", "--json", "--every", "15m", "--years", "3"]);
        command.args([
            "--size",
            "500GiB",
            "--change",
            "2GiB/day",
            "--start",
            "2027-01-01",
        ]);
        command.args(["--timezone", "Europe/Berlin"]);
        for policy in POLICIES {
            command.args(["--preserve", policy]);
        }
        let log = work.join(format!("simulate-{run}.json"));
        let sample = measure(&mut command, &work, b"", &log)?;
        let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&log)?)?;
        steps = report["outcomes"].as_array().map_or(0, |outcomes| {
            outcomes.iter().filter_map(|o| o["steps"].as_u64()).sum()
        });
        eprintln!(
            "xtask: simulate run {run}: {:.2} s wall, {steps} steps",
            sample.wall
        );
        samples.push(sample);
    }
    std::fs::remove_dir_all(&work)?;
    let wall =
        Stats::of(&samples.iter().map(|s| s.wall).collect::<Vec<_>>()).ok_or("no measurements")?;
    let rss = samples.iter().map(|s| s.peak_rss).max().unwrap_or(0);
    let per_step = wall.median / steps.max(1) as f64 * 1e6;
    println!(
        "simulate: 3 years of 15-minute snapshots, {} policies, {steps} steps: {:.2} s ({:.2}-{:.2}), {per_step:.1} µs per step, peak RSS {:.1} MiB",
        POLICIES.len(),
        wall.median,
        wall.min,
        wall.max,
        rss as f64 / 1_048_576.0
    );
    let json = serde_json::json!({
        "policies": POLICIES,
        "steps": steps,
        "wall": wall.to_json(),
        "microseconds_per_step": per_step,
        "peak_rss": rss,
    });
    let path = report_dir()?.join("simulate.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    println!("figures: {}", path.display());
    Ok(())
}
