//! The `btrfs2s3` command: keeps a tree of differential btrfs backups in S3-compatible object
//! storage.
//!
//! This binary parses arguments, prints plans and progress, asks before acting, and turns
//! errors into messages and exit codes (the only place that does):
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | done (or nothing to do) |
//! | 1 | a failure: an upload, a remote, a snapshot operation; or unattended without `--force` |
//! | 2 | usage or configuration error: nothing was changed |
//! | 3 | another run of the same config holds the lock |
#![forbid(unsafe_code)]

mod daemon;
mod output;
mod paint;
mod progress;
mod remotes;
mod update;

use std::path::PathBuf;
use std::process::ExitCode;

use btrfs2s3_core::cancel::{self, Cancel, SignalEvent};
use clap::{Parser, Subcommand};

/// Exit codes, decided once (see the README).
pub mod exit {
    /// Done.
    pub const OK: u8 = 0;
    /// Something failed.
    pub const FAILURE: u8 = 1;
    /// Bad usage or configuration; nothing was changed.
    pub const USAGE: u8 = 2;
    /// Another run holds the lock.
    pub const LOCKED: u8 = 3;
}

/// btrfs2s3 maintains a tree of differential backups of btrfs subvolumes in S3-compatible
/// object storage.
#[derive(Debug, Parser)]
#[command(name = "btrfs2s3", version, about, long_about = None)]
#[command(after_help = "Documentation: README.md of the btrfs2s3 repository.")]
struct Cli {
    /// Print more about what happens (object keys, the full story of errors).
    #[arg(short, long, global = true)]
    verbose: bool,
    /// Colour on a terminal: auto (unless `NO_COLOR` is set), always or never.
    #[arg(long, global = true, value_enum, value_name = "WHEN", default_value_t = paint::When::Auto)]
    color: paint::When,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// One backup cycle: snapshot what changed, upload new backups, delete what the policy
    /// no longer keeps.
    Update(UpdateArgs),
    /// Show every backup of the remote(s) as a tree per source.
    List(remotes::ListArgs),
    /// Receive backups into a btrfs filesystem, parents first.
    Restore(remotes::RestoreArgs),
    /// Check that backups are intact: every stream parses and its checksums match, and every
    /// chain is complete.
    Verify(remotes::VerifyArgs),
    /// Run until stopped: a backup cycle whenever a source changed (at most every
    /// --interval) or the policy expires backups, on listings kept in memory.
    Daemon(daemon::DaemonArgs),
    /// Check everything a backup needs, one line each: sources, snapshot directories,
    /// programs, and each remote (reachable, credentials, bucket, may list, put and delete,
    /// versioning, Object Lock, clock); exit 1 on a problem. Changes nothing.
    Check(daemon::CheckArgs),
    /// Show each source's newest backup in each remote, its age, and broken chains; exit 1
    /// if one is too old (--max-age) or broken.
    Status(daemon::StatusArgs),
}

/// Arguments of `update`.
#[derive(Debug, clap::Args)]
pub struct UpdateArgs {
    /// Act without asking (needed when not run from a terminal, e.g. from cron).
    #[arg(long)]
    pub force: bool,
    /// Show the plan and change nothing, not even a new snapshot.
    #[arg(long, conflicts_with = "force")]
    pub pretend: bool,
    /// Print the plan (and, after execution, the outcome) as JSON on standard output.
    #[arg(long)]
    pub json: bool,
    /// Evaluate the policy at this instant (RFC 3339, e.g. 2026-03-08T12:00:00Z) instead of
    /// now.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub now: Option<jiff::Timestamp>,
    /// When another run holds a lock (of this config, or of a snapshot directory), wait up
    /// to this many seconds for it instead of giving up at once.
    #[arg(long, value_name = "SECONDS", default_value_t = 0)]
    pub wait: u64,
    /// After the run, write metrics for Prometheus to FILE (text format, replaced
    /// atomically; counters carry over from the file).
    #[arg(long, value_name = "FILE", conflicts_with = "pretend")]
    pub metrics: Option<PathBuf>,
    /// Health-check URL (healthchecks.io, Uptime Kuma): GET URL/start before the run, then
    /// POST URL after a run that went well or URL/fail after one that did not.
    #[arg(long, value_name = "URL", conflicts_with = "pretend")]
    pub ping: Option<String>,
    /// The configuration file.
    pub config: PathBuf,
}

/// Whether `-v` was given.
static VERBOSE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether `-v` was given.
fn verbose() -> bool {
    VERBOSE.load(std::sync::atomic::Ordering::Relaxed)
}

/// Prints an error on one line (escaped), and with `-v` the technical details of its causes.
fn print_error(error: &(dyn std::error::Error + 'static)) {
    use btrfs2s3_core::text::escape;
    eprintln!("btrfs2s3: {}", escape(&btrfs2s3_core::error_chain(error)));
    if verbose() {
        for detail in btrfs2s3_core::error_details(error) {
            eprintln!("  details: {}", escape(&detail));
        }
    }
}

/// Loads a config for a command that needs all of it, printing its warnings; `None` after
/// printing why it cannot be loaded.
fn load_config(path: &std::path::Path) -> Option<btrfs2s3_core::config::Config> {
    match btrfs2s3_core::config::load(path) {
        Ok(config) => {
            for warning in &config.warnings {
                eprintln!(
                    "btrfs2s3: {}: {warning}",
                    crate::paint::paint(
                        "warning",
                        crate::paint::Style::Warning,
                        crate::paint::Stream::Err
                    )
                );
            }
            Some(config)
        }
        Err(error) => {
            eprintln!("btrfs2s3: {error}");
            None
        }
    }
}

/// A duration like `15m`, `1h30m`, `2d` or `90s` (a day is 24 hours), or plain seconds.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    use jiff::{SpanRelativeTo, Unit};
    let invalid =
        |detail: String| format!("{text:?} is not a duration like 15m, 1h30m, 2d: {detail}");
    if let Ok(seconds) = text.trim().parse::<u64>() {
        return Ok(std::time::Duration::from_secs(seconds));
    }
    let span: jiff::Span = text
        .trim()
        .parse()
        .map_err(|e: jiff::Error| invalid(e.to_string()))?;
    let seconds = span
        .total((Unit::Second, SpanRelativeTo::days_are_24_hours()))
        .map_err(|e| invalid(e.to_string()))?;
    if !(0.0..=1e12).contains(&seconds) {
        return Err(invalid("out of range".to_owned()));
    }
    Ok(std::time::Duration::from_secs_f64(seconds))
}

fn parse_time(text: &str) -> Result<jiff::Timestamp, String> {
    text.parse::<jiff::Timestamp>()
        .map_err(|e| format!("{text:?} is not an RFC 3339 instant like 2026-03-08T12:00:00Z: {e}"))
}

/// Runs `work` to its exit code on a multi-threaded runtime whose [`Cancel`] the first SIGINT
/// or SIGTERM triggers (the run stops cleanly); a second one ends the process at once.
fn with_runtime<F: Future<Output = u8>>(work: impl FnOnce(Cancel) -> F) -> u8 {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("btrfs2s3: cannot start: {error}");
            return exit::FAILURE;
        }
    };
    runtime.block_on(async {
        let cancel = Cancel::new();
        let watched = cancel::on_signals(&cancel, |event| match event {
            SignalEvent::Stopping(name) => eprintln!(
                "btrfs2s3: {name} received: stopping cleanly (send it again to stop at once)"
            ),
            SignalEvent::Again(_) => {
                eprintln!("btrfs2s3: stopping at once");
                std::process::exit(i32::from(exit::FAILURE));
            }
        });
        if let Err(error) = watched {
            eprintln!("btrfs2s3: cannot handle signals: {error}");
            return exit::FAILURE;
        }
        work(cancel).await
    })
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            // Help and version are not errors.
            let code = if error.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            let _ = error.print();
            return ExitCode::from(code);
        }
    };
    VERBOSE.store(cli.verbose, std::sync::atomic::Ordering::Relaxed);
    paint::init(cli.color);
    let code = match cli.command {
        Command::Update(args) => update::run(&args, cli.verbose),
        Command::List(args) => remotes::list(&args),
        Command::Restore(args) => remotes::restore(&args),
        Command::Verify(args) => remotes::verify(&args),
        Command::Daemon(args) => daemon::daemon(&args),
        Command::Status(args) => daemon::status(&args),
        Command::Check(args) => daemon::check(&args),
    };
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::parse_duration;

    #[test]
    fn durations() {
        for (text, seconds) in [
            ("15m", 900),
            ("1s", 1),
            ("24h", 86_400),
            ("2d", 172_800),
            ("1h30m", 5400),
            ("1h 30m", 5400),
            ("90", 90),
            ("1w", 604_800),
        ] {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_secs(seconds)),
                "{text}"
            );
        }
        for text in ["", "-5m", "1mo", "soon"] {
            let parsed = parse_duration(text);
            assert!(parsed.is_err(), "{text}: {parsed:?}");
        }
    }
}
