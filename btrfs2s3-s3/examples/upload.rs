//! Uploads standard input (a stream of unknown length) or a file, and reports throughput and
//! peak memory. Used by `cargo xtask bench upload`.
//!
//! ```text
//! upload --endpoint URL --region R --bucket B --key K [--create-bucket]
//!        [--put-file PATH | --stream-file PATH]
//! ```
//!
//! Credentials come from `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`. By default standard
//! input, a pipe, is streamed through `Remote::upload` (the product's path); `--stream-file`
//! streams a file through the same path; `--put-file` sends a file as one plain `PutObject`
//! (the baseline). Prints one JSON line:
//! `{"bytes":N,"seconds":S,"peak_rss_bytes":M}`.
#![allow(missing_docs)] // an example binary, documented above

use std::process::ExitCode;
use std::time::Instant;

use btrfs2s3_s3::{Remote, RemoteConfig, Secret, UploadOptions};

struct Args {
    endpoint: String,
    region: String,
    bucket: String,
    key: String,
    create_bucket: bool,
    put_file: Option<String>,
    stream_file: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mut parsed = Args {
        endpoint: String::new(),
        region: "us-east-1".to_owned(),
        bucket: String::new(),
        key: String::new(),
        create_bucket: false,
        put_file: None,
        stream_file: None,
    };
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--endpoint" => parsed.endpoint = value()?,
            "--region" => parsed.region = value()?,
            "--bucket" => parsed.bucket = value()?,
            "--key" => parsed.key = value()?,
            "--put-file" => parsed.put_file = Some(value()?),
            "--stream-file" => parsed.stream_file = Some(value()?),
            "--create-bucket" => parsed.create_bucket = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if parsed.endpoint.is_empty() || parsed.bucket.is_empty() || parsed.key.is_empty() {
        return Err("--endpoint, --bucket and --key are required".to_owned());
    }
    Ok(parsed)
}

/// The peak resident set size of this process (`VmHWM`), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kib| kib * 1024)
}

async fn run(args: Args) -> Result<(u64, f64), Box<dyn std::error::Error>> {
    let config = RemoteConfig {
        endpoint_url: Some(args.endpoint),
        region: Some(args.region),
        access_key_id: std::env::var("AWS_ACCESS_KEY_ID").ok(),
        secret_access_key: std::env::var("AWS_SECRET_ACCESS_KEY").ok().map(Secret::new),
        ..RemoteConfig::new(&args.bucket)
    };
    let remote = Remote::connect(&config).await?;
    if args.create_bucket {
        remote
            .sdk_client()
            .create_bucket()
            .bucket(&args.bucket)
            .send()
            .await?;
    }
    let started = Instant::now();
    let bytes = if let Some(path) = args.put_file {
        let body = aws_sdk_s3::primitives::ByteStream::from_path(&path).await?;
        let length = std::fs::metadata(&path)?.len();
        remote
            .sdk_client()
            .put_object()
            .bucket(&args.bucket)
            .key(&args.key)
            .body(body)
            .send()
            .await?;
        length
    } else if let Some(path) = args.stream_file {
        let mut file = tokio::fs::File::open(&path).await?;
        remote
            .upload(&args.key, &mut file, &UploadOptions::default(), &|_| {})
            .await?
    } else {
        // Standard input is a pipe, read without blocking the runtime, as the product reads
        // the output of `btrfs send | pipe_through`.
        use std::os::fd::AsFd;
        let stdin = std::io::stdin().as_fd().try_clone_to_owned()?;
        let mut pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(stdin)?;
        remote
            .upload(&args.key, &mut pipe, &UploadOptions::default(), &|_| {})
            .await?
    };
    Ok((bytes, started.elapsed().as_secs_f64()))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("upload: {message}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("upload: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok((bytes, seconds)) => {
            println!(
                "{{\"bytes\":{bytes},\"seconds\":{seconds:.6},\"peak_rss_bytes\":{}}}",
                peak_rss()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("upload: {e}");
            ExitCode::FAILURE
        }
    }
}
