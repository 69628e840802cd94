//! `cargo xtask bench restore`: btrfs2s3's own receiver (`btrfs2s3-stream`'s `apply`
//! example, what `restore --plain` runs after the download) against `btrfs receive`, on the
//! same stream: `--size-mib` of random data in 16 files and 2,000 small files in 20
//! directories, sent once. The receiver writes onto btrfs (as `btrfs receive` must) and onto
//! tmpfs; the stream is read from tmpfs.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

use super::measure::{Sample, measure};
use super::{Options, Stats, report_dir, write_random_file};
use crate::testenv::{TestEnv, require_root};
use crate::{Result, cmd};

const ROWS: [&str; 3] = [
    "btrfs receive",
    "btrfs2s3 onto btrfs",
    "btrfs2s3 onto tmpfs",
];

fn btrfs<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Result<()> {
    cmd::run(Command::new("btrfs").args(args))?;
    Ok(())
}

pub fn run(options: &Options) -> Result<()> {
    require_root("cargo xtask bench restore")?;
    cmd::run(cmd::cargo().args([
        "build",
        "--release",
        "-p",
        "btrfs2s3-stream",
        "--example",
        "apply",
    ]))?;
    let apply = cmd::workspace_root().join("target/release/examples/apply");
    let bytes = options.size_mib << 20;
    let mut env = TestEnv::empty()?;
    let disk = env.add_btrfs_sized("restore", 3 * bytes + (2 << 30))?;
    let memory = env.add_tmpfs("restore-tmpfs", 2 * bytes + (1 << 30))?;
    let temp = env.add_tmpfs("restore-temp", 64 << 20)?;

    let source = disk.join("source");
    btrfs([
        OsStr::new("subvolume"),
        OsStr::new("create"),
        source.as_os_str(),
    ])?;
    for file in 0..16 {
        write_random_file(&source.join(format!("data-{file}")), bytes / 16)?;
    }
    for dir in 0..20 {
        let dir = source.join(format!("dir-{dir}"));
        std::fs::create_dir(&dir)?;
        for file in 0..100 {
            std::fs::write(
                dir.join(format!("small-{file}")),
                format!("file {file}\n").repeat(50),
            )?;
        }
    }
    let snapshot = disk.join("snapshot");
    btrfs([
        OsStr::new("subvolume"),
        OsStr::new("snapshot"),
        OsStr::new("-r"),
        source.as_os_str(),
        snapshot.as_os_str(),
    ])?;
    let stream = memory.join("stream");
    btrfs([
        OsStr::new("send"),
        OsStr::new("-q"),
        OsStr::new("-f"),
        stream.as_os_str(),
        snapshot.as_os_str(),
    ])?;

    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); ROWS.len()];
    for run in 0..options.runs {
        // Each goes first in turn.
        for offset in 0..ROWS.len() {
            let row = (run + offset) % ROWS.len();
            let dest = match row {
                0 | 1 => disk.join(format!("dest-{run}-{row}")),
                _ => memory.join(format!("dest-{run}-{row}")),
            };
            std::fs::create_dir(&dest)?;
            cmd::run(&mut Command::new("sync"))?;
            let mut command = if row == 0 {
                let mut command = Command::new("btrfs");
                command.args([OsStr::new("receive"), OsStr::new("-q"), OsStr::new("-f")]);
                command.arg(&stream).arg(&dest);
                command
            } else {
                let mut command = Command::new(&apply);
                command.arg(&dest).arg(&stream);
                command
            };
            let log = temp.join(format!("log-{run}-{row}"));
            let sample = measure(&mut command, &temp, b"", &log)?;
            eprintln!(
                "xtask: restore run {run}: {}: {:.2} s wall, {:.2} s CPU",
                ROWS[row], sample.wall, sample.cpu
            );
            samples[row].push(sample);
            remove(&dest, row == 0)?;
        }
    }
    report(options, &samples)
}

/// Removes a restored tree: a received subvolume, or a plain directory.
fn remove(dest: &Path, subvolumes: bool) -> Result<()> {
    if subvolumes {
        for entry in std::fs::read_dir(dest)? {
            btrfs([
                OsStr::new("subvolume"),
                OsStr::new("delete"),
                entry?.path().as_os_str(),
            ])?;
        }
    }
    std::fs::remove_dir_all(dest)?;
    Ok(())
}

fn report(options: &Options, samples: &[Vec<Sample>]) -> Result<()> {
    let stats = |row: usize, figure: fn(&Sample) -> f64| {
        Stats::of(&samples[row].iter().map(figure).collect::<Vec<_>>()).ok_or("no measurements")
    };
    let receive_wall = stats(0, |s| s.wall)?.median;
    let receive_cpu = stats(0, |s| s.cpu)?.median;
    println!(
        "restore of one {} MiB full stream, {} runs (ratios: against btrfs receive in the same run)",
        options.size_mib, options.runs
    );
    let mut rows = Vec::new();
    for (index, name) in ROWS.iter().enumerate() {
        let wall = stats(index, |s| s.wall)?;
        let cpu = stats(index, |s| s.cpu)?;
        let rss = samples[index].iter().map(|s| s.peak_rss).max().unwrap_or(0);
        println!(
            "  {name:<22} wall {:6.2} s ({:.2}-{:.2})  {:.2}x   CPU {:6.2} s  {:.2}x   peak RSS {:.1} MiB",
            wall.median,
            wall.min,
            wall.max,
            wall.median / receive_wall,
            cpu.median,
            cpu.median / receive_cpu,
            rss as f64 / 1_048_576.0
        );
        rows.push(serde_json::json!({
            "row": name,
            "wall": wall.to_json(),
            "cpu": cpu.to_json(),
            "wall_ratio": wall.median / receive_wall,
            "cpu_ratio": cpu.median / receive_cpu,
            "peak_rss": rss,
        }));
    }
    let path = report_dir()?.join("restore.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&serde_json::json!({
            "size_mib": options.size_mib,
            "rows": rows,
        }))?,
    )?;
    println!("figures: {}", path.display());
    Ok(())
}
