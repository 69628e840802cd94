//! `cargo xtask bench`: measurements reported as ratios against a baseline measured in the
//! same run, because absolute figures on a shared two-core machine are noise.

// Measurements are floats for statistics and integers for counting; the conversions are
// between byte counts far below 2^52 and durations, where precision loss cannot matter.
#![allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::testenv::{S3Endpoint, TestEnv};
use crate::{Result, cmd};

const USAGE: &str = "usage: cargo xtask bench upload [--size-mib N] [--runs N]";

/// `cargo xtask bench <what> [options]`.
pub fn run(args: &[String]) -> Result<()> {
    let Some((what, options)) = args.split_first() else {
        return Err(USAGE.into());
    };
    let mut size_mib = 1024u64;
    let mut runs = 3usize;
    let mut options = options.iter();
    while let Some(option) = options.next() {
        let mut value = || {
            options
                .next()
                .ok_or_else(|| format!("{option} needs a value\n{USAGE}"))
        };
        match option.as_str() {
            "--size-mib" => size_mib = value()?.parse()?,
            "--runs" => runs = value()?.parse()?,
            other => return Err(format!("unknown option {other}\n{USAGE}").into()),
        }
    }
    match what.as_str() {
        "upload" => upload(size_mib, runs.max(1)),
        other => Err(format!("unknown benchmark {other}\n{USAGE}").into()),
    }
}

/// One measured upload, as the `upload` example reports it.
struct Measurement {
    bytes: u64,
    seconds: f64,
    peak_rss_bytes: u64,
}

impl Measurement {
    fn throughput(&self) -> f64 {
        self.bytes as f64 / self.seconds
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn spread(values: &[f64]) -> (f64, f64) {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (min, max)
}

/// Streams `size_mib` MiB of incompressible data into Garage through the product's upload
/// path (from a pipe, length unknown), and the same bytes as one plain `PutObject` from a
/// file: throughput and peak RSS of each, and their ratio.
fn upload(size_mib: u64, runs: usize) -> Result<()> {
    cmd::run(cmd::cargo().args([
        "build",
        "--release",
        "-p",
        "btrfs2s3-s3",
        "--example",
        "upload",
    ]))?;
    let uploader = cmd::workspace_root().join("target/release/examples/upload");
    let mut env = TestEnv::empty()?;
    let garage = env.add_garage()?;
    let data = env.dir().join("data.bin");
    write_random_file(&data, size_mib << 20)?;

    let mut streamed = Vec::new();
    let mut plain = Vec::new();
    for run in 0..runs {
        // Alternate the order so that neither side always runs on a warmer cache.
        let order = if run % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for stream in order {
            let bucket = format!("bench-{}-{run}", if stream { "stream" } else { "plain" });
            let measurement = measure_upload(&uploader, &garage, &bucket, &data, stream)?;
            eprintln!(
                "xtask: run {run} {}: {:.1} MiB/s, peak RSS {:.1} MiB",
                if stream {
                    "streamed"
                } else {
                    "plain PutObject"
                },
                measurement.throughput() / f64::from(1 << 20),
                measurement.peak_rss_bytes as f64 / f64::from(1 << 20),
            );
            if stream { &mut streamed } else { &mut plain }.push(measurement);
        }
    }

    let mib = f64::from(1 << 20);
    let throughputs =
        |ms: &[Measurement]| ms.iter().map(|m| m.throughput() / mib).collect::<Vec<_>>();
    let rss = |ms: &[Measurement]| {
        ms.iter()
            .map(|m| m.peak_rss_bytes as f64 / mib)
            .collect::<Vec<_>>()
    };
    let (stream_tp, plain_tp) = (throughputs(&streamed), throughputs(&plain));
    let (stream_rss, plain_rss) = (rss(&streamed), rss(&plain));
    let ratio = median(stream_tp.clone()) / median(plain_tp.clone());
    println!(
        "upload of {size_mib} MiB of incompressible data into Garage, {runs} runs (median [min, max])"
    );
    println!(
        "{:<28} {:>22} {:>22}",
        "", "throughput MiB/s", "peak RSS MiB"
    );
    for (name, tp, rss) in [
        ("streamed (btrfs2s3 upload)", &stream_tp, &stream_rss),
        ("plain PutObject of a file", &plain_tp, &plain_rss),
    ] {
        let (tp_min, tp_max) = spread(tp);
        let (rss_min, rss_max) = spread(rss);
        println!(
            "{name:<28} {:>8.1} [{tp_min:.1}, {tp_max:.1}] {:>8.1} [{rss_min:.1}, {rss_max:.1}]",
            median(tp.clone()),
            median(rss.clone()),
        );
    }
    println!("streamed / plain throughput: {ratio:.2}");

    let out = cmd::workspace_root().join("target/bench");
    std::fs::create_dir_all(&out)?;
    let report = serde_json::json!({
        "benchmark": "upload",
        "size_bytes": size_mib << 20,
        "runs": runs,
        "streamed": { "throughput_mib_s": stream_tp, "peak_rss_mib": stream_rss },
        "plain_put_object": { "throughput_mib_s": plain_tp, "peak_rss_mib": plain_rss },
        "throughput_ratio_median": ratio,
    });
    std::fs::write(out.join("upload.json"), serde_json::to_vec_pretty(&report)?)?;
    println!("written to {}", out.join("upload.json").display());
    Ok(())
}

fn write_random_file(path: &Path, bytes: u64) -> Result<()> {
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

fn measure_upload(
    uploader: &PathBuf,
    server: &S3Endpoint,
    bucket: &str,
    data: &Path,
    stream: bool,
) -> Result<Measurement> {
    let mut command = Command::new(uploader);
    server.credentials(&mut command);
    command
        .args([
            "--endpoint",
            &server.endpoint,
            "--region",
            server.region,
            "--bucket",
            bucket,
        ])
        .args(["--key", "object", "--create-bucket"])
        .stdout(Stdio::piped());
    // The product reads `btrfs send | pipe_through` from a pipe, so the streamed side reads
    // from `cat` through a pipe too.
    let mut feeder = None;
    if stream {
        let mut cat = Command::new("cat")
            .arg(data)
            .stdout(Stdio::piped())
            .spawn()?;
        command.stdin(cat.stdout.take().ok_or("cat has no stdout")?);
        feeder = Some(cat);
    } else {
        command.arg("--put-file").arg(data).stdin(Stdio::null());
    }
    let output = command.output()?;
    if let Some(mut cat) = feeder {
        cat.wait()?;
    }
    if !output.status.success() {
        return Err(format!("{} failed: {}", cmd::display(&command), output.status).into());
    }
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let field = |name: &str| {
        report[name]
            .as_f64()
            .ok_or(format!("no {name} in {report}"))
    };
    Ok(Measurement {
        bytes: field("bytes")? as u64,
        seconds: field("seconds")?,
        peak_rss_bytes: field("peak_rss_bytes")? as u64,
    })
}
