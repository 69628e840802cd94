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

mod chart;
mod daemon;
mod output;
mod paint;
mod progress;
mod remotes;
mod simulate;
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
    /// Print a completion script for a shell (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (btrfs2s3.1 and one per command) into a directory.
    #[command(alias = "manpage")]
    Manpages {
        /// Where to write them (e.g. /usr/local/share/man/man1).
        dir: PathBuf,
    },
    /// Show each source's newest backup in each remote, its age, and broken chains; exit 1
    /// if one is too old (--max-age) or broken.
    Status(daemon::StatusArgs),
    /// List the files of one backup (type, mode, owner, size, mtime, path), read from its
    /// chain of streams without btrfs.
    Ls(remotes::LsArgs),
    /// Extract files or directories of one backup, as they are in it, onto any filesystem
    /// without btrfs.
    Extract(remotes::ExtractArgs),
    /// Simulate policies over the years before the first upload: objects and GiB stored by
    /// storage class, uploads and deletes, restore chains, and what it all costs per month.
    Simulate(simulate::SimulateArgs),
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
    /// Upload at most this many bytes per second, all remotes together (`20MiB/s`; KiB, MiB,
    /// GiB), besides each remote's own `rate_limit`.
    #[arg(long, value_name = "RATE", value_parser = btrfs2s3_core::config::parse_rate)]
    pub rate_limit: Option<u64>,
    /// The configuration file.
    pub config: PathBuf,
}

/// Writes `btrfs2s3.1` and `btrfs2s3-<command>.1` for every command into `dir`; returns how
/// many.
fn write_manpages(dir: &std::path::Path) -> std::io::Result<usize> {
    let command = <Cli as clap::CommandFactory>::command();
    let mut count = 0;
    let mut write = |name: &str, page: clap::Command| -> std::io::Result<()> {
        let mut text = Vec::new();
        clap_mangen::Man::new(page).title(name).render(&mut text)?;
        std::fs::write(dir.join(format!("{name}.1")), text)?;
        count += 1;
        Ok(())
    };
    for sub in command.get_subcommands() {
        let name = format!("btrfs2s3-{}", sub.get_name());
        let page = sub
            .clone()
            .name(name.clone())
            .bin_name(format!("btrfs2s3 {}", sub.get_name()));
        write(&name, page)?;
    }
    write("btrfs2s3", command)?;
    Ok(count)
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

/// Prints a warning (the word in yellow on a terminal).
fn warn(text: &str) {
    eprintln!(
        "btrfs2s3: {}: {text}",
        paint::paint("warning", paint::Style::Warning, paint::Stream::Err)
    );
}

/// Loads a config for a command that needs all of it, printing its warnings; `None` after
/// printing why it cannot be loaded.
fn load_config(path: &std::path::Path) -> Option<btrfs2s3_core::config::Config> {
    match btrfs2s3_core::config::load(path) {
        Ok(config) => {
            for warning in &config.warnings {
                crate::warn(warning);
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
        Command::Simulate(args) => simulate::run(&args),
        Command::Ls(args) => remotes::ls(&args),
        Command::Extract(args) => remotes::extract(&args),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "btrfs2s3", &mut std::io::stdout());
            exit::OK
        }
        Command::Manpages { dir } => match write_manpages(&dir) {
            Ok(count) => {
                println!("wrote {count} man page(s) into {}", dir.display());
                exit::OK
            }
            Err(error) => {
                eprintln!(
                    "btrfs2s3: cannot write man pages into {}: {error}",
                    dir.display()
                );
                exit::FAILURE
            }
        },
    };
    ExitCode::from(code)
}

/// Compares a test's output with its expected text in `src/testdata/`; with
/// `BTRFS2S3_BLESS=1` the text is written there instead (review the diff before committing).
#[cfg(test)]
#[allow(clippy::unwrap_used)]
fn expect_text(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("src/testdata")
        .join(name);
    if std::env::var_os("BTRFS2S3_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (BTRFS2S3_BLESS=1 writes it)", path.display()));
    assert_eq!(
        actual,
        expected,
        "the output differs from {} (BTRFS2S3_BLESS=1 rewrites it)",
        path.display()
    );
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::parse_duration;

    #[test]
    fn completion_scripts_are_valid_shell() {
        let mut command = <super::Cli as clap::CommandFactory>::command();
        let mut script = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut command,
            "btrfs2s3",
            &mut script,
        );
        let script = String::from_utf8(script).unwrap();
        for word in [
            "update",
            "daemon",
            "status",
            "check",
            "restore",
            "--max-age",
        ] {
            assert!(script.contains(word), "{word}");
        }
        let dir = std::env::temp_dir().join(format!("btrfs2s3-completion-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("btrfs2s3.bash");
        std::fs::write(&file, &script).unwrap();
        let checked = std::process::Command::new("bash")
            .arg("-n")
            .arg(&file)
            .status()
            .unwrap();
        assert!(checked.success(), "bash -n rejects the completion script");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn man_pages_are_written_for_every_command() {
        let dir = std::env::temp_dir().join(format!("btrfs2s3-man-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let count = super::write_manpages(&dir).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names.len(), count);
        for name in [
            "btrfs2s3.1",
            "btrfs2s3-update.1",
            "btrfs2s3-daemon.1",
            "btrfs2s3-check.1",
        ] {
            assert!(names.contains(&name.to_owned()), "{names:?}");
        }
        let update = std::fs::read_to_string(dir.join("btrfs2s3-update.1")).unwrap();
        assert!(
            update.starts_with(".ie") || update.contains(".TH"),
            "{update}"
        );
        assert!(update.contains("pretend"), "the options are in it");
        std::fs::remove_dir_all(&dir).unwrap();
    }

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
