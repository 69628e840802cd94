//! Fills a bucket with empty backup objects whose keys describe a long history of hourly
//! backups of one source, shaped as the policy `1y 1m 1d` shapes them (a full backup per
//! year, monthly differentials against it, daily ones against the monthly, hourly ones
//! against the daily). Used by `cargo xtask bench` to measure planning at scale.
//!
//! ```text
//! fill-bucket --endpoint URL --region R --bucket B [--create-bucket]
//!             [--count N --name NAME --source-uuid UUID --until RFC3339]
//! ```
//!
//! Credentials come from `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`. The N backups end
//! one hour before `--until`, one per hour, ctransids growing. Prints one JSON line:
//! `{"objects":N,"seconds":S}`.
#![allow(missing_docs)] // an example binary, documented above

use std::process::ExitCode;
use std::time::Instant;

use btrfs2s3_s3::{BackupMeta, Remote, RemoteConfig, Secret};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, Unit};
use uuid::Uuid;

struct Args {
    endpoint: String,
    region: String,
    bucket: String,
    create_bucket: bool,
    count: u64,
    name: String,
    source_uuid: Uuid,
    until: Timestamp,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mut parsed = Args {
        endpoint: String::new(),
        region: "us-east-1".to_owned(),
        bucket: String::new(),
        create_bucket: false,
        count: 0,
        name: "source".to_owned(),
        source_uuid: Uuid::nil(),
        until: Timestamp::now(),
    };
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--endpoint" => parsed.endpoint = value()?,
            "--region" => parsed.region = value()?,
            "--bucket" => parsed.bucket = value()?,
            "--create-bucket" => parsed.create_bucket = true,
            "--count" => parsed.count = value()?.parse().map_err(|e| format!("--count: {e}"))?,
            "--name" => parsed.name = value()?,
            "--source-uuid" => {
                parsed.source_uuid = value()?
                    .parse()
                    .map_err(|e| format!("--source-uuid: {e}"))?;
            }
            "--until" => parsed.until = value()?.parse().map_err(|e| format!("--until: {e}"))?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if parsed.endpoint.is_empty() || parsed.bucket.is_empty() {
        return Err("--endpoint and --bucket are required".to_owned());
    }
    Ok(parsed)
}

/// The keys of `count` hourly backups ending an hour before `until`, in UTC.
fn history(args: &Args) -> Result<Vec<String>, jiff::Error> {
    let utc = TimeZone::UTC;
    let hours = i64::try_from(args.count).unwrap_or(i64::MAX);
    let first = args
        .until
        .round(Unit::Second)?
        .checked_sub(SignedDuration::from_hours(hours))?;
    // The current year, month and day, each with the uuid of its first backup.
    let mut year: Option<(i16, Uuid)> = None;
    let mut month: Option<(i8, Uuid)> = None;
    let mut day: Option<(i8, Uuid)> = None;
    let mut keys = Vec::new();
    for n in 0..hours {
        let ctime = first.checked_add(SignedDuration::from_hours(n))?;
        let civil = utc.to_datetime(ctime);
        let n = n.unsigned_abs();
        let uuid = Uuid::from_u64_pair(0x6265_6e63_6800_0000, n);
        let new_year = year.is_none_or(|(y, _)| y != civil.year());
        let new_month = new_year || month.is_none_or(|(m, _)| m != civil.month());
        let new_day = new_month || day.is_none_or(|(d, _)| d != civil.day());
        let send_parent = match (new_year, new_month, new_day) {
            (true, _, _) => None,
            (false, true, _) => year.map(|(_, first)| first),
            (false, false, true) => month.map(|(_, first)| first),
            (false, false, false) => day.map(|(_, first)| first),
        };
        if new_year {
            year = Some((civil.year(), uuid));
        }
        if new_month {
            month = Some((civil.month(), uuid));
        }
        if new_day {
            day = Some((civil.day(), uuid));
        }
        let meta = BackupMeta {
            uuid,
            parent_uuid: args.source_uuid,
            send_parent_uuid: send_parent,
            ctransid: 1000 + i64::try_from(n).unwrap_or(i64::MAX) * 10,
            ctime,
        };
        keys.push(meta.key(&args.name, &utc));
    }
    Ok(keys)
}

async fn run(args: Args) -> Result<(u64, f64), Box<dyn std::error::Error>> {
    let config = RemoteConfig {
        endpoint_url: Some(args.endpoint.clone()),
        region: Some(args.region.clone()),
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
    let keys = history(&args)?;
    let started = Instant::now();
    // Many small requests at once: the server, not the round trips, sets the pace.
    let mut tasks = tokio::task::JoinSet::new();
    let mut keys = keys.into_iter();
    let mut put = 0u64;
    loop {
        while tasks.len() < 64 {
            let Some(key) = keys.next() else { break };
            let client = remote.sdk_client().clone();
            let bucket = args.bucket.clone();
            tasks.spawn(async move { client.put_object().bucket(bucket).key(key).send().await });
        }
        match tasks.join_next().await {
            Some(result) => {
                result??;
                put += 1;
            }
            None => break,
        }
    }
    Ok((put, started.elapsed().as_secs_f64()))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("fill-bucket: {message}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("fill-bucket: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok((objects, seconds)) => {
            println!("{{\"objects\":{objects},\"seconds\":{seconds:.6}}}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fill-bucket: {e}");
            ExitCode::FAILURE
        }
    }
}
