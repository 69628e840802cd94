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

mod output;
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
    /// Print more about what happens.
    #[arg(short, long, global = true)]
    verbose: bool,
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
    /// The configuration file.
    pub config: PathBuf,
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
    let code = match cli.command {
        Command::Update(args) => update::run(&args, cli.verbose),
        Command::List(args) => remotes::list(&args),
        Command::Restore(args) => remotes::restore(&args),
        Command::Verify(args) => remotes::verify(&args),
    };
    ExitCode::from(code)
}
