//! Times the resolver on a large history (the benchmark of the policy issue).
//!
//! ```text
//! cargo run --release -p btrfs2s3-policy --example bench-resolve -- 10000
//! ```
//!
//! N snapshots one minute apart, each with an existing backup whose send parent is the first
//! snapshot; policy `1y 12m 4w 31d 24h 60M 60s` in Europe/Berlin; `now` one minute after the
//! last snapshot. Prints `resolve_seconds=<float> kept_snapshots=<n> kept_backups=<n>`.
#![allow(missing_docs)] // an example binary, documented above

use std::process::ExitCode;
use std::time::Instant;

use btrfs2s3_policy::{BackupItem, Item, Policy, resolve};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use uuid::Uuid;

struct Snapshot {
    uuid: Uuid,
    ctime: Timestamp,
    ctransid: i64,
    send_parent: Option<Uuid>,
}

impl Item for Snapshot {
    fn uuid(&self) -> Uuid {
        self.uuid
    }
    fn ctime(&self) -> Timestamp {
        self.ctime
    }
    fn ctransid(&self) -> i64 {
        self.ctransid
    }
}

impl BackupItem for Snapshot {
    fn send_parent(&self) -> Option<Uuid> {
        self.send_parent
    }
}

fn main() -> ExitCode {
    let count: i64 = match std::env::args().nth(1).map(|arg| arg.parse()) {
        None => 10_000,
        Some(Ok(count)) if count > 0 => count,
        Some(_) => {
            eprintln!("usage: bench-resolve [COUNT]");
            return ExitCode::from(2);
        }
    };
    // 2026-01-01T00:00:00Z
    let start = 1_767_225_600;
    let first = Uuid::from_u128(1);
    let item = |n: i64, send_parent: Option<Uuid>| Snapshot {
        uuid: Uuid::from_u128(n.unsigned_abs().into()),
        ctime: Timestamp::from_second(start + 60 * (n - 1)).expect("in range"),
        ctransid: 1000 + n,
        send_parent,
    };
    let snapshots: Vec<_> = (1..=count).map(|n| item(n, None)).collect();
    let backups: Vec<_> = (1..=count)
        .map(|n| item(n, (n != 1).then_some(first)))
        .collect();
    let tz = TimeZone::get("Europe/Berlin").expect("Europe/Berlin is in the tz database");
    let now = Timestamp::from_second(start + 60 * count).expect("in range");
    let params = "1y 12m 4w 31d 24h 60M 60s".parse().expect("valid policy");

    let started = Instant::now();
    let policy = Policy::new(params, tz, now);
    let resolution = resolve(&snapshots, &backups, &policy);
    let seconds = started.elapsed().as_secs_f64();

    println!(
        "resolve_seconds={seconds:.6} kept_snapshots={} kept_backups={}",
        resolution.snapshots.len(),
        resolution.backups.len()
    );
    ExitCode::SUCCESS
}
