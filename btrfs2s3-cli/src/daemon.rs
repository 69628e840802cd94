//! `daemon` and `status`: their arguments, the daemon's log, the status table, and their exit
//! codes. The work is `btrfs2s3_core::daemon`'s and `btrfs2s3_core::run::status`'s.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use btrfs2s3_core::daemon::{self, DaemonOptions, DaemonUi, Event};
use btrfs2s3_core::ping::Pinger;
use btrfs2s3_core::plan::{Plan, RemoteState};
use btrfs2s3_core::run::{self, Choice, StatusOptions, StatusReport, Ui};
use btrfs2s3_core::text::{escape, escape_os, human_duration};

use crate::output::{ShortIds, bytes, describe_action};
use crate::paint::{Stream, Style, paint};
use crate::progress::Progress;
use crate::{exit, parse_duration};

/// Arguments of `daemon`.
#[derive(Debug, clap::Args)]
pub struct DaemonArgs {
    /// The least time between two snapshots of a source that keeps changing (e.g. 15m, 1h,
    /// 30s; at least 1s).
    #[arg(long, value_name = "DURATION", default_value = "15m", value_parser = parse_duration)]
    pub interval: Duration,
    /// List the remotes again when the last listing is this old (changes made by other
    /// machines or by hand show up then).
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
    pub relist: Duration,
    /// How long a cycle waits for another run (a manual `update`) to release the locks.
    #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
    pub wait: u64,
    /// After every cycle, write metrics for Prometheus to FILE.
    #[arg(long, value_name = "FILE")]
    pub metrics: Option<PathBuf>,
    /// Health-check URL pinged around every cycle: URL/start, then URL or URL/fail.
    #[arg(long, value_name = "URL")]
    pub ping: Option<String>,
    /// Upload at most this many bytes per second, all remotes together (`20MiB/s`; KiB, MiB,
    /// GiB), besides each remote's own `rate_limit`.
    #[arg(long, value_name = "RATE", value_parser = btrfs2s3_core::config::parse_rate)]
    pub rate_limit: Option<u64>,
    /// The configuration file.
    pub config: PathBuf,
}

/// `btrfs2s3 daemon`.
pub fn daemon(args: &DaemonArgs) -> u8 {
    if args.interval < Duration::from_secs(1) || args.relist < Duration::from_secs(1) {
        eprintln!("btrfs2s3: --interval and --relist must be at least 1s");
        return exit::USAGE;
    }
    let ping = match args.ping.as_deref().map(Pinger::new).transpose() {
        Ok(ping) => ping,
        Err(error) => {
            eprintln!("btrfs2s3: {error}");
            return exit::USAGE;
        }
    };
    let Some(config) = crate::load_config(&args.config) else {
        return exit::USAGE;
    };
    let options = DaemonOptions {
        interval: args.interval,
        relist: args.relist,
        wait: Duration::from_secs(args.wait),
        metrics: args.metrics.clone(),
        ping,
        // One limit for the daemon's whole life, shared by its cycles.
        rate_limit: args
            .rate_limit
            .map(btrfs2s3_core::storage::BandwidthLimit::new),
    };
    let log = Log {
        progress: Progress::new(false),
        interval: options.interval,
        relist: options.relist,
    };
    crate::with_runtime(|cancel| async move {
        match daemon::daemon(config, &options, &log, &cancel).await {
            Ok(()) => exit::OK,
            Err(error) => {
                crate::print_error(&error);
                exit::FAILURE
            }
        }
    })
}

/// The daemon's log, on standard error (the journal, under systemd).
struct Log {
    progress: Progress,
    interval: Duration,
    relist: Duration,
}

crate::progress::observe_through!(Log, progress);

impl Ui for Log {
    fn listed(&self, remote: &RemoteState) {
        eprintln!(
            "btrfs2s3: listed remote {} (bucket {}): {} backup(s), {} other object(s)",
            remote.id,
            remote.bucket,
            remote.backups.len(),
            remote.foreign_objects
        );
    }

    fn show_plan(&self, plan: &Plan) -> std::io::Result<()> {
        for broken in &plan.broken_chains {
            eprintln!(
                "btrfs2s3: warning: in remote {}: {}",
                broken.remote, broken.chain
            );
        }
        let ids = ShortIds::of_plan(plan);
        if plan.has_work() {
            eprintln!("btrfs2s3: plan: {} action(s)", plan.actions.len());
            for action in &plan.actions {
                eprintln!("  {}", describe_action(action, &ids, crate::verbose()));
            }
        }
        self.progress.use_ids(ids);
        Ok(())
    }

    async fn confirm(&self, _created: usize) -> Choice {
        // The daemon never asks.
        Choice::Execute
    }
}

impl DaemonUi for Log {
    fn event(&self, event: Event<'_>) {
        let line = match event {
            Event::Started { config } => format!(
                "running {}: {} source(s), {} remote(s); a changed source is snapshotted at most every {}, listings are renewed every {}",
                escape_os(config.path.as_os_str()),
                config.sources.len(),
                config.remotes.len(),
                human_duration(self.interval.as_secs()),
                human_duration(self.relist.as_secs()),
            ),
            Event::CycleStarted { reason } => format!("cycle started: {reason}"),
            Event::CycleEnded { report, took, next } => {
                let next = next.map_or_else(String::new, |at| {
                    if at == jiff::Timestamp::MIN {
                        "; next cycle at once".to_owned()
                    } else {
                        format!("; next cycle by {at} unless a source changes")
                    }
                });
                format!(
                    "cycle ended in {:.1} s: {}{next}",
                    took.as_secs_f64(),
                    report.summary()
                )
            }
            Event::Reloaded { config } => format!(
                "config reloaded: {} source(s), {} remote(s)",
                config.sources.len(),
                config.remotes.len()
            ),
            Event::ReloadFailed { error } => format!(
                "config reload failed, running the old config: {}",
                escape(&error.to_string())
            ),
            Event::Warning { message } => format!("warning: {}", escape(&message)),
            Event::Stopped { cause } => format!("stopped ({})", cause.unwrap_or("signal")),
        };
        eprintln!("btrfs2s3: {line}");
    }
}

/// Arguments of `status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Fail (exit 1) when a newest backup is older than this (e.g. 36h, 2d).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub max_age: Option<Duration>,
    /// Print the status as JSON on standard output.
    #[arg(long)]
    pub json: bool,
    /// The configuration file.
    pub config: PathBuf,
}

/// `btrfs2s3 status`.
pub fn status(args: &StatusArgs) -> u8 {
    let Some(config) = crate::load_config(&args.config) else {
        return exit::USAGE;
    };
    let options = StatusOptions {
        now: jiff::Timestamp::now(),
        max_age: args.max_age,
    };
    crate::with_runtime(|cancel| async move {
        let report = run::status(&config, options, &cancel).await;
        if args.json {
            crate::output::print_json(&report);
        } else if let Err(error) = print_status(&report) {
            eprintln!("btrfs2s3: cannot print the status: {error}");
            return exit::FAILURE;
        }
        if report.healthy() {
            exit::OK
        } else {
            exit::FAILURE
        }
    })
}

fn print_status(report: &StatusReport) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    let rows: Vec<[String; 8]> = report
        .pairs
        .iter()
        .map(|pair| {
            let (newest, age, depth) = pair.newest.as_ref().map_or_else(
                || ("-".to_owned(), "-".to_owned(), "-".to_owned()),
                |newest| {
                    (
                        newest.ctime.clone(),
                        human_duration(newest.age_seconds.max(0).unsigned_abs()),
                        newest.depth.to_string(),
                    )
                },
            );
            [
                escape_os(pair.source.as_os_str()).into_owned(),
                pair.remote.clone(),
                newest,
                age,
                depth,
                pair.backups.to_string(),
                bytes(pair.bytes),
                if pair.problems.is_empty() {
                    paint("ok", Style::Added, Stream::Out)
                } else {
                    paint("PROBLEM", Style::Removed, Stream::Out)
                },
            ]
        })
        .collect();
    crate::output::write_table(&mut out, "", |row| {
        row(&[
            "SOURCE", "REMOTE", "NEWEST", "AGE", "DEPTH", "BACKUPS", "SIZE", "STATUS",
        ]);
        for cells in &rows {
            let cells: Vec<&str> = cells.iter().map(String::as_str).collect();
            row(&cells);
        }
    })?;
    for pair in &report.pairs {
        for problem in &pair.problems {
            writeln!(
                out,
                "{} in {}: {problem}",
                escape_os(pair.source.as_os_str()),
                pair.remote
            )?;
        }
    }
    out.flush()
}

/// Arguments of `check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The configuration file.
    pub config: PathBuf,
}

/// `btrfs2s3 check`.
pub fn check(args: &CheckArgs) -> u8 {
    let Some(config) = crate::load_config(&args.config) else {
        return exit::USAGE;
    };
    println!(
        "{:<8} config {}: {} source(s), {} remote(s), time zone {}",
        paint("ok", Style::Added, Stream::Out),
        escape_os(config.path.as_os_str()),
        config.sources.len(),
        config.remotes.len(),
        config.timezone_name
    );
    crate::with_runtime(|cancel| async move {
        let print = |line: &run::CheckLine| {
            let verdict = if line.ok {
                paint("ok", Style::Added, Stream::Out)
            } else {
                paint("PROBLEM", Style::Removed, Stream::Out)
            };
            let pad = 8usize.saturating_sub(if line.ok { 2 } else { 7 });
            println!(
                "{verdict}{:pad$} {}: {}",
                "",
                line.subject,
                escape(&line.text)
            );
        };
        if run::check(&config, &print, &cancel).await {
            exit::OK
        } else {
            exit::FAILURE
        }
    })
}
