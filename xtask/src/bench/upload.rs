//! `cargo xtask bench upload`: the product's streaming upload from a pipe against a plain
//! `PutObject` of the same bytes from a file, into Garage.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{Stats, build_s3_examples, report_dir, write_random_file};
use crate::testenv::{S3Endpoint, TestEnv};
use crate::{Result, cmd};

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

/// Streams `size_mib` MiB of incompressible data into Garage through the product's upload
/// path (from a pipe, length unknown), and the same bytes as one plain `PutObject` from a
/// file: throughput and peak RSS of each, and their ratio.
pub fn run(size_mib: u64, runs: usize) -> Result<()> {
    let uploader = build_s3_examples(&["upload"])?.join("upload");
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
    let stats = |values: &[f64]| Stats::of(values).ok_or("no measurements");
    let ratio = stats(&stream_tp)?.median / stats(&plain_tp)?.median;
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
        let (tp, rss) = (stats(tp)?, stats(rss)?);
        println!(
            "{name:<28} {:>8.1} [{:.1}, {:.1}] {:>8.1} [{:.1}, {:.1}]",
            tp.median, tp.min, tp.max, rss.median, rss.min, rss.max,
        );
    }
    println!("streamed / plain throughput: {ratio:.2}");

    let out = report_dir()?;
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
