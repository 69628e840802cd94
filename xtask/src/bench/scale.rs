//! `cargo xtask bench scale`: what sharing a stream, parallel uploads, bandwidth limits and
//! send protocol 2 cost and give, each against a baseline measured in the same run:
//!
//! - a full backup to two remotes (one stream feeding two buckets) against one remote;
//! - two sources of half the size with `parallel_uploads: 2` against `1`, as they are and
//!   through a single-threaded `pipe_through` (`gzip -1`), where a stream is bound by its
//!   producer rather than by the server;
//! - an upload with `--rate-limit` against the limit;
//! - a compressible source on a zstd-compressed subvolume, send protocol 2 against 1.
//!
//! The server is a fresh Garage per run, its data in a tmpfs. Both "remotes" are buckets of
//! that one server: on a two-core machine a second server would compete for the same cores.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::compare::fresh_garage;
use super::measure::{Sample, measure};
use super::{Options, Stats, build_s3_examples, report_dir, write_random_file};
use crate::testenv::{S3Endpoint, TestEnv, require_root};
use crate::{Result, cmd, tools};

/// The data of the rate-limited upload, and the limit: about four seconds of transfer.
const RATE_MIB: u64 = 64;
const RATE_LIMIT_MIB: u64 = 16;

struct Scale {
    ours: PathBuf,
    fill: PathBuf,
    fs: PathBuf,
    temp: PathBuf,
    work: PathBuf,
}

/// One measured update: its cost, and what its log says of its uploads.
struct Measured {
    sample: Sample,
    /// (bytes, seconds) of each upload's end line.
    uploads: Vec<(f64, f64)>,
}

#[derive(Default)]
struct Figures {
    one_remote: Vec<Sample>,
    two_remotes: Vec<Sample>,
    sequential: Vec<Sample>,
    parallel: Vec<Sample>,
    /// The same through `gzip -1`.
    gz_sequential: Vec<Sample>,
    gz_parallel: Vec<Sample>,
    /// Achieved rate over the limit.
    rate: Vec<f64>,
    protocol1: Vec<Measured>,
    protocol2: Vec<Measured>,
}

pub fn run(options: &Options) -> Result<()> {
    require_root("cargo xtask bench scale")?;
    tools::ensure_build_prerequisites()?;
    cmd::run(cmd::cargo().args(["build", "--release", "-p", "btrfs2s3-cli"]))?;
    let examples = build_s3_examples(&["fill-bucket"])?;
    let size = options.size_mib << 20;
    let mut env = TestEnv::empty()?;
    let fs = env.add_btrfs_sized("scale", 4 * size + (2 << 30))?;
    let temp = env.add_tmpfs("tmp", 256 << 20)?;
    let work = env.dir().join("work");
    std::fs::create_dir_all(&work)?;
    let scale = Scale {
        ours: cmd::workspace_root().join("target/release/btrfs2s3"),
        fill: examples.join("fill-bucket"),
        fs,
        temp,
        work,
    };
    scale.make_sources(size)?;
    let mut figures = Figures::default();
    for run in 0..options.runs {
        eprintln!("xtask: scale run {run}");
        // Two full copies, the parallel pairs, the rate and protocol sources, with room.
        let (_server, garage) = fresh_garage(7 * size + (1 << 30))?;
        let one = scale.update(&garage, run, "one", &["one"], &["one"], 2, &[])?;
        let two = scale.update(&garage, run, "two", &["one"], &["a1", "a2"], 2, &[])?;
        let (sequential, parallel) = scale.side_by_side(&garage, run, "")?;
        let (gz_sequential, gz_parallel) = scale.side_by_side(&garage, run, "gz")?;
        figures.gz_sequential.push(gz_sequential.sample);
        figures.gz_parallel.push(gz_parallel.sample);
        let limit = format!("{RATE_LIMIT_MIB}MiB/s");
        let rated = scale.update(
            &garage,
            run,
            "rate",
            &["r"],
            &["r"],
            1,
            &["--rate-limit", &limit],
        )?;
        let protocol1 = scale.update(&garage, run, "v1", &["text"], &["v1"], 1, &[])?;
        let protocol2 = scale.update(&garage, run, "v2", &["text"], &["v2"], 1, &[])?;
        figures.one_remote.push(one.sample);
        figures.two_remotes.push(two.sample);
        figures.sequential.push(sequential.sample);
        figures.parallel.push(parallel.sample);
        let (bytes, seconds) = rated
            .uploads
            .first()
            .copied()
            .ok_or("the rate-limited run logged no upload")?;
        figures
            .rate
            .push(bytes / seconds / (RATE_LIMIT_MIB << 20) as f64);
        figures.protocol1.push(protocol1);
        figures.protocol2.push(protocol2);
    }
    report(options, &figures)
}

impl Scale {
    fn btrfs(args: &[&std::ffi::OsStr]) -> Result<String> {
        cmd::output(Command::new("btrfs").args(args))
    }

    fn subvolume(&self, name: &str) -> Result<PathBuf> {
        let path = self.fs.join(name);
        Self::btrfs(&["subvolume".as_ref(), "create".as_ref(), path.as_os_str()])?;
        Ok(path)
    }

    /// `one` (the size), `a` and `b` (half each), `r` (the rate test's data), all
    /// incompressible; `text` (the size of repeated text, zstd-compressed on disk).
    fn make_sources(&self, size: u64) -> Result<()> {
        eprintln!("xtask: writing the sources");
        let fill = |dir: &Path, bytes: u64| -> Result<()> {
            for (n, start) in (0..bytes).step_by(64 << 20).enumerate() {
                write_random_file(
                    &dir.join(format!("data-{n:03}")),
                    (64u64 << 20).min(bytes - start),
                )?;
            }
            Ok(())
        };
        fill(&self.subvolume("one")?, size)?;
        fill(&self.subvolume("a")?, size / 2)?;
        fill(&self.subvolume("b")?, size / 2)?;
        fill(&self.subvolume("r")?, RATE_MIB << 20)?;
        let text = self.subvolume("text")?;
        Self::btrfs(&[
            "property".as_ref(),
            "set".as_ref(),
            text.as_os_str(),
            "compression".as_ref(),
            "zstd".as_ref(),
        ])?;
        let line = b"2026-11-29T22:31:29Z host backup[4242]: a log line much like the others\n";
        let content: Vec<u8> = line
            .iter()
            .copied()
            .cycle()
            .take(usize::try_from(size)?)
            .collect();
        std::fs::write(text.join("log"), content)?;
        Self::btrfs(&["filesystem".as_ref(), "sync".as_ref(), self.fs.as_os_str()])?;
        Ok(())
    }

    /// Sources `a` and `b` one at a time and side by side (cases `<prefix>seq` and
    /// `<prefix>par`), taking turns going first.
    fn side_by_side(
        &self,
        garage: &S3Endpoint,
        run: usize,
        prefix: &str,
    ) -> Result<(Measured, Measured)> {
        let one = |parallel: usize| {
            let case = format!("{prefix}{}", if parallel == 1 { "seq" } else { "par" });
            let bucket = if parallel == 1 { "s" } else { "p" };
            self.update(garage, run, &case, &["a", "b"], &[bucket], parallel, &[])
        };
        if run.is_multiple_of(2) {
            let sequential = one(1)?;
            Ok((sequential, one(2)?))
        } else {
            let parallel = one(2)?;
            Ok((one(1)?, parallel))
        }
    }

    /// Runs `update --force` of `sources` (each with a fresh snapshot directory) to new
    /// buckets `buckets` (the `text` source with send protocol 2 when the case is `v2`).
    #[allow(clippy::too_many_arguments)] // one measured case, spelled out
    fn update(
        &self,
        garage: &S3Endpoint,
        run: usize,
        case: &str,
        sources: &[&str],
        buckets: &[&str],
        parallel: usize,
        extra: &[&str],
    ) -> Result<Measured> {
        let mut yaml = format!("timezone: UTC\nparallel_uploads: {parallel}\nsources:\n");
        for source in sources {
            let snapshots = self.fs.join(format!("snapshots-{run}-{case}-{source}"));
            std::fs::create_dir(&snapshots)?;
            let _ = write!(
                yaml,
                "  - path: {}\n    snapshots: {}\n    upload_to_remotes:\n",
                self.fs.join(source).display(),
                snapshots.display()
            );
            for bucket in buckets {
                let _ = writeln!(yaml, "      - id: {bucket}\n        preserve: 1y");
                if case == "v2" {
                    yaml.push_str("        send_protocol: 2\n");
                }
                if case.starts_with("gz") {
                    yaml.push_str("        pipe_through:\n          - [gzip, \"-1\"]\n");
                }
            }
        }
        yaml.push_str("remotes:\n");
        for bucket in buckets {
            let name = format!("{case}-{bucket}-{run}");
            let mut create = Command::new(&self.fill);
            garage.credentials(&mut create);
            cmd::output(
                create
                    .args(["--endpoint", &garage.endpoint, "--region", garage.region])
                    .args(["--bucket", &name, "--create-bucket"]),
            )?;
            let _ = write!(
                yaml,
                "  - id: {bucket}\n    s3:\n      bucket: {name}\n      endpoint:\n        endpoint_url: {}\n        region_name: {}\n",
                garage.endpoint, garage.region
            );
        }
        let config = self.work.join(format!("{case}-{run}.yaml"));
        std::fs::write(&config, yaml)?;
        let mut command = Command::new(&self.ours);
        garage.credentials(&mut command);
        command.args(["update", "--force"]).args(extra).arg(&config);
        let log = self.work.join(format!("{case}-{run}.log"));
        let sample = measure(&mut command, &self.temp, b"", &log)?;
        let uploads = upload_lines(&std::fs::read_to_string(&log)?);
        if uploads.len() < sources.len() {
            return Err(format!("{case}: expected uploads in {}", log.display()).into());
        }
        eprintln!(
            "xtask: run {run} {case}: {:.2} s wall, {:.2} s CPU",
            sample.wall, sample.cpu
        );
        Ok(Measured { sample, uploads })
    }
}

/// The (bytes, seconds) of every finished upload in a log:
/// `upload   1a2b3c4d -> r, full: done (64.0 MiB) in 4.0 s, 16.0 MiB/s`.
fn upload_lines(log: &str) -> Vec<(f64, f64)> {
    log.lines()
        .filter(|line| line.starts_with("upload"))
        .filter_map(|line| {
            let done = line.split(": done (").nth(1)?;
            let (amount, rest) = done.split_once(") in ")?;
            let seconds: f64 = rest.split(' ').next()?.parse().ok()?;
            let (number, unit) = amount.split_once(' ')?;
            let scale = match unit {
                "B" => 1.0,
                "KiB" => 1024.0,
                "MiB" => 1_048_576.0,
                "GiB" => 1_073_741_824.0,
                _ => return None,
            };
            Some((number.parse::<f64>().ok()? * scale, seconds))
        })
        .collect()
}

fn median(values: &[f64]) -> Result<Stats> {
    Stats::of(values).ok_or_else(|| "no measurements".into())
}

fn report(options: &Options, figures: &Figures) -> Result<()> {
    let wall = |samples: &[Sample]| samples.iter().map(|s| s.wall).collect::<Vec<_>>();
    let cpu = |samples: &[Sample]| samples.iter().map(|s| s.cpu).collect::<Vec<_>>();
    let ratio = |a: &[f64], b: &[f64]| -> Result<f64> { Ok(median(a)?.median / median(b)?.median) };
    let two_wall = ratio(&wall(&figures.two_remotes), &wall(&figures.one_remote))?;
    let two_cpu = ratio(&cpu(&figures.two_remotes), &cpu(&figures.one_remote))?;
    let speedup = ratio(&wall(&figures.sequential), &wall(&figures.parallel))?;
    let gz_speedup = ratio(&wall(&figures.gz_sequential), &wall(&figures.gz_parallel))?;
    let rate = median(&figures.rate)?;
    let stream_bytes = |measured: &[Measured]| {
        measured
            .iter()
            .map(|m| m.uploads.iter().map(|(bytes, _)| bytes).sum::<f64>())
            .collect::<Vec<_>>()
    };
    let bytes_ratio = ratio(
        &stream_bytes(&figures.protocol2),
        &stream_bytes(&figures.protocol1),
    )?;
    let walls = |measured: &[Measured]| measured.iter().map(|m| m.sample.wall).collect::<Vec<_>>();
    let protocol_wall = ratio(&walls(&figures.protocol2), &walls(&figures.protocol1))?;
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get) as f64;
    let busy = |samples: &[Sample]| -> Result<f64> {
        let values: Vec<f64> = samples
            .iter()
            .map(|s| s.machine_cpu / (s.wall * cores))
            .collect();
        Ok(median(&values)?.median)
    };
    let mib = options.size_mib;
    println!(
        "scale, {mib} MiB, {} runs (medians; ratios of medians)",
        options.runs
    );
    println!(
        "  full backup to two remotes / to one:        {two_wall:.2}x wall, {two_cpu:.2}x CPU (goal <= 1.3x)"
    );
    println!(
        "  two sources of {} MiB, one at a time / side by side: {speedup:.2}x faster side by side (goal >= 1.5x)",
        mib / 2
    );
    println!(
        "  the same through pipe_through gzip -1 (one core per stream):  {gz_speedup:.2}x faster side by side (goal >= 1.5x)"
    );
    println!(
        "  the machine's CPUs were busy: one remote {:.0}%, two {:.0}%, one at a time {:.0}%, side by side {:.0}%; with gzip one at a time {:.0}%, side by side {:.0}%",
        100.0 * busy(&figures.one_remote)?,
        100.0 * busy(&figures.two_remotes)?,
        100.0 * busy(&figures.sequential)?,
        100.0 * busy(&figures.parallel)?,
        100.0 * busy(&figures.gz_sequential)?,
        100.0 * busy(&figures.gz_parallel)?
    );
    println!(
        "  {RATE_MIB} MiB at --rate-limit {RATE_LIMIT_MIB}MiB/s: achieved {:.3}x the limit ({:.3}-{:.3}; goal within 5%)",
        rate.median, rate.min, rate.max
    );
    println!(
        "  {mib} MiB of text, zstd on disk, send protocol 2 / 1: {bytes_ratio:.3}x the bytes, {protocol_wall:.2}x the wall time"
    );
    let json = serde_json::json!({
        "size_mib": mib,
        "runs": options.runs,
        "two_remotes_over_one": { "wall": two_wall, "cpu": two_cpu },
        "sequential_over_parallel_wall": speedup,
        "gzip_sequential_over_parallel_wall": gz_speedup,
        "machine_busy": {
            "one_remote": busy(&figures.one_remote)?,
            "two_remotes": busy(&figures.two_remotes)?,
            "sequential": busy(&figures.sequential)?,
            "parallel": busy(&figures.parallel)?,
            "gzip_sequential": busy(&figures.gz_sequential)?,
            "gzip_parallel": busy(&figures.gz_parallel)?,
        },
        "rate_achieved_over_limit": rate.to_json(),
        "protocol2_over_1": { "bytes": bytes_ratio, "wall": protocol_wall },
        "walls": {
            "one_remote": median(&wall(&figures.one_remote))?.to_json(),
            "two_remotes": median(&wall(&figures.two_remotes))?.to_json(),
            "sequential": median(&wall(&figures.sequential))?.to_json(),
            "parallel": median(&wall(&figures.parallel))?.to_json(),
            "gzip_sequential": median(&wall(&figures.gz_sequential))?.to_json(),
            "gzip_parallel": median(&wall(&figures.gz_parallel))?.to_json(),
        },
        "stream_bytes": {
            "protocol1": median(&stream_bytes(&figures.protocol1))?.to_json(),
            "protocol2": median(&stream_bytes(&figures.protocol2))?.to_json(),
        },
    });
    let path = report_dir()?.join("scale.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    println!("figures: {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_lines_give_bytes_and_seconds() {
        let log = "rename   r.NEW.1 -> r.2026: done\n\
                   upload   1a2b3c4d -> r, full ...\n\
                   upload   1a2b3c4d -> r, full: done (64.0 MiB) in 4.0 s, 16.0 MiB/s\n\
                   upload   5e6f7a8b -> a1, a2, full: done (512 B) in 0.1 s, 5.0 KiB/s\n\
                   upload   9c0d1e2f -> r, full: FAILED: refused\n";
        assert_eq!(upload_lines(log), [(64.0 * 1_048_576.0, 4.0), (512.0, 0.1)]);
    }
}
