//! `btrfs2s3 update`: the arguments, the terminal's [`Ui`] (plan, prompt, progress) and the
//! report's messages and exit code. The run itself is `btrfs2s3_core::run::update`.

use std::io::{BufRead, IsTerminal, Write};
use std::time::Instant;

use btrfs2s3_core::config;
use btrfs2s3_core::execute::{ActionResult, Outcome};
use btrfs2s3_core::metrics::{Metrics, RunRecord};
use btrfs2s3_core::ping::{Pinger, Signal};
use btrfs2s3_core::plan::{Plan, RemoteState};
use btrfs2s3_core::run::{
    self, Choice, Interruption, Mode, Ui, Undone, UpdateEnd, UpdateError, UpdateOptions,
};
use btrfs2s3_core::text::{escape, escape_os};

use crate::{UpdateArgs, exit, output, progress};

/// Runs `update`; returns the exit code.
pub fn run(args: &UpdateArgs, verbose: bool) -> u8 {
    let pinger = match args.ping.as_deref().map(Pinger::new).transpose() {
        Ok(pinger) => pinger,
        Err(error) => {
            eprintln!("btrfs2s3: {error}");
            return exit::USAGE;
        }
    };
    let started = jiff::Timestamp::now();
    let clock = Instant::now();
    let config = match config::load(&args.config) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("btrfs2s3: {error}");
            // Loudly: a config that stopped loading stops the backups.
            let monitor = Monitor {
                args,
                pinger: pinger.as_ref(),
                started,
                clock,
            };
            let summary = format!("failed: {error}");
            crate::with_runtime(|_| async move {
                monitor.finish(None, None, &summary).await;
                exit::USAGE
            });
            return exit::USAGE;
        }
    };
    for warning in &config.warnings {
        crate::warn(warning);
    }
    // After the config: a bad config is exit 2 in every mode.
    let interactive = std::io::stdin().is_terminal();
    if !args.force && !args.pretend && !interactive {
        eprintln!("to run in unattended mode, use --force");
        return exit::FAILURE;
    }
    if verbose {
        // The programs the config's commands run, as looked up (see the security model).
        for source in &config.sources {
            for upload in &source.upload_to_remotes {
                if let Some(pipeline) = upload.pipeline_shown() {
                    eprintln!(
                        "btrfs2s3: {} to {}: pipe_through {}",
                        escape(&source.path.to_string_lossy()),
                        upload.remote_id,
                        escape(&pipeline)
                    );
                }
            }
        }
    }
    let options = UpdateOptions {
        now: args.now.unwrap_or_else(jiff::Timestamp::now),
        mode: if args.pretend {
            Mode::Pretend
        } else {
            Mode::Real
        },
        wait: std::time::Duration::from_secs(args.wait),
        ask: !args.force && interactive,
        min_snapshot_age: std::time::Duration::ZERO,
        parallel_uploads: config.parallel_uploads,
        rate_limit: args
            .rate_limit
            .map(btrfs2s3_core::storage::BandwidthLimit::new),
    };
    let terminal = Terminal {
        args,
        verbose,
        progress: progress::Progress::new(std::io::stderr().is_terminal() && !args.json),
    };
    let monitor = Monitor {
        args,
        pinger: pinger.as_ref(),
        started,
        clock,
    };
    crate::with_runtime(|cancel| async move {
        monitor.start().await;
        let report = run::update(&config, &options, &terminal, &cancel).await;
        terminal.progress.finish();
        let code = report_code(&report, args);
        monitor
            .finish(Some(&config), Some(&report), &report.summary())
            .await;
        code
    })
}

/// What `--metrics` and `--ping` need to know about a run.
struct Monitor<'a> {
    args: &'a UpdateArgs,
    pinger: Option<&'a Pinger>,
    started: jiff::Timestamp,
    clock: Instant,
}

impl Monitor<'_> {
    /// Pings `URL/start`.
    async fn start(&self) {
        if let Some(pinger) = self.pinger
            && let Err(error) = pinger.send(Signal::Start, "").await
        {
            eprintln!("btrfs2s3: warning: {}", escape(&error.to_string()));
        }
    }

    /// Writes the metrics and pings the end; a failure of either is a warning.
    async fn finish(
        &self,
        config: Option<&config::Config>,
        report: Option<&run::UpdateReport>,
        summary: &str,
    ) {
        if let Some(path) = &self.args.metrics {
            let mut metrics = Metrics::load(path);
            metrics.record(&RunRecord {
                started: self.started,
                duration: self.clock.elapsed(),
                config,
                report,
            });
            if let Err(error) = metrics.write(path) {
                eprintln!(
                    "btrfs2s3: warning: cannot write metrics to {}: {error}",
                    escape_os(path.as_os_str())
                );
            }
        }
        if let Some(pinger) = self.pinger {
            let signal = if report.is_some_and(run::UpdateReport::succeeded) {
                Signal::Success
            } else {
                Signal::Fail
            };
            if let Err(error) = pinger.send(signal, summary).await {
                eprintln!("btrfs2s3: warning: {}", escape(&error.to_string()));
            }
        }
    }
}

/// Reports how a run ended; returns the exit code.
fn report_code(report: &run::UpdateReport, args: &UpdateArgs) -> u8 {
    let plan = report.plan.as_ref();
    match &report.end {
        UpdateEnd::Failed(error) => failed(error),
        UpdateEnd::Shown | UpdateEnd::Declined => exit::OK,
        UpdateEnd::NothingToDo => {
            if !args.json {
                println!("nothing to do");
            }
            exit::OK
        }
        UpdateEnd::Undone(undone) => undo(undone),
        UpdateEnd::Executed(outcome) => executed(plan, outcome, args.json),
        UpdateEnd::Interrupted(interruption) => {
            if let (Some(plan), Some(outcome), true) = (plan, &interruption.outcome, args.json) {
                print_json(plan, Some(outcome));
            }
            interrupted(interruption)
        }
    }
}

/// What `update` shows and asks on a terminal, or writes into a log.
struct Terminal<'a> {
    args: &'a UpdateArgs,
    verbose: bool,
    progress: progress::Progress,
}

progress::observe_through!(Terminal<'_>, progress);

impl Ui for Terminal<'_> {
    fn checksums_refused(&self, remote: &str) {
        if self.verbose {
            eprintln!(
                "btrfs2s3: remote {remote} refused CRC-32C checksums: its uploads were signed with their SHA-256 instead (more CPU)"
            );
        }
    }

    fn listed(&self, remote: &RemoteState) {
        if self.verbose {
            eprintln!(
                "btrfs2s3: listed remote {} (bucket {}): {} backup(s), {} other object(s), {} page(s)",
                remote.id,
                remote.bucket,
                remote.backups.len(),
                remote.foreign_objects,
                remote.pages
            );
        }
    }

    fn show_plan(&self, plan: &Plan) -> std::io::Result<()> {
        self.progress.use_ids(output::ShortIds::of_plan(plan));
        for broken in &plan.broken_chains {
            eprintln!(
                "btrfs2s3: warning: in remote {}: {}",
                broken.remote, broken.chain
            );
        }
        if self.args.json {
            // Executed plans are printed with their outcome at the end.
            if self.args.pretend || !plan.has_work() {
                print_json(plan, None);
            }
            return Ok(());
        }
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        output::write_plan(plan, self.verbose, &mut out)?;
        if self.verbose {
            writeln!(out, "policy evaluated at {} in {}", plan.now, plan.timezone)?;
        }
        out.flush()
    }

    async fn confirm(&self, created: usize) -> Choice {
        tokio::task::spawn_blocking(move || prompt(created))
            .await
            .unwrap_or(Choice::Stop)
    }
}

fn failed(error: &UpdateError) -> u8 {
    crate::print_error(error);
    if error.is_locked() {
        exit::LOCKED
    } else if error.is_setup_error() {
        exit::USAGE
    } else {
        exit::FAILURE
    }
}

fn undo(undone: &Undone) -> u8 {
    match &undone.failure {
        None => {
            println!(
                "destroyed the {} snapshot(s) created by this run",
                undone.destroyed
            );
            exit::OK
        }
        Some(error) => {
            crate::print_error(error);
            exit::FAILURE
        }
    }
}

fn interrupted(interruption: &Interruption) -> u8 {
    for error in &interruption.failures {
        crate::print_error(error);
    }
    eprintln!(
        "btrfs2s3: interrupted by {}: {} of {} action(s) done, nothing half-done left; {} new snapshot(s) removed",
        interruption.cause.unwrap_or("a signal"),
        interruption.done,
        interruption.total,
        interruption.removed
    );
    exit::FAILURE
}

fn print_json(plan: &Plan, outcome: Option<&Outcome>) {
    /// Serialized as it is written: a plan of a hundred thousand backups is not copied into
    /// a JSON tree first.
    #[derive(serde::Serialize)]
    struct Printed<'a> {
        plan: &'a Plan,
        #[serde(skip_serializing_if = "Option::is_none")]
        outcome: Option<&'a Outcome>,
    }
    output::print_json(&Printed { plan, outcome });
}

fn executed(plan: Option<&Plan>, outcome: &Outcome, json: bool) -> u8 {
    if json && let Some(plan) = plan {
        print_json(plan, Some(outcome));
    }
    let problems: Vec<_> = outcome.problems().collect();
    if problems.is_empty() {
        if !json {
            println!("done: {} action(s)", outcome.results.len());
        }
        return exit::OK;
    }
    eprintln!(
        "btrfs2s3: {} of {} action(s) did not complete:",
        problems.len(),
        outcome.results.len()
    );
    let ids = plan.map(output::ShortIds::of_plan).unwrap_or_default();
    for problem in problems {
        eprintln!(
            "  {}: {}",
            output::describe_action(&problem.action, &ids, crate::verbose()),
            output::describe_result(&problem.result)
        );
        if let (true, ActionResult::Failed { error }) = (crate::verbose(), &problem.result) {
            for detail in btrfs2s3_core::error_details(error.error()) {
                eprintln!("    details: {}", escape(&detail));
            }
        }
    }
    eprintln!("btrfs2s3: the next run picks up the failed work");
    exit::FAILURE
}

fn prompt(created: usize) -> Choice {
    let question = if created > 0 {
        println!(
            "{created} new read-only snapshot(s) were created for this run; `u` destroys them again."
        );
        "continue? (y)es, (n)o, (u)ndo the new snapshots: "
    } else {
        "continue? (y)es, (n)o: "
    };
    let stdin = std::io::stdin();
    loop {
        print!("{question}");
        let _ = std::io::stdout().flush();
        let mut line = String::new();
        match stdin.lock().read_line(&mut line) {
            Ok(0) | Err(_) => return Choice::Stop,
            Ok(_) => {}
        }
        match line.trim().to_lowercase().as_str() {
            "y" | "yes" => return Choice::Execute,
            "n" | "no" => return Choice::Stop,
            "u" | "undo" if created > 0 => return Choice::Undo,
            _ => {}
        }
    }
}
