//! `btrfs2s3 update`.

use std::io::{BufRead, IsTerminal, Write};

use std::sync::{Arc, OnceLock};

use btrfs2s3_core::execute::{self, ActionResult, Outcome, error_chain};
use btrfs2s3_core::plan::{self, Action, Plan};
use btrfs2s3_core::update::{self as core_update, Mode};
use btrfs2s3_core::{config, lock};
use tokio_util::sync::CancellationToken;

use crate::{UpdateArgs, exit, output, progress};

/// What the user chose at the prompt.
enum Choice {
    Execute,
    Stop,
    Undo,
}

/// Runs `update`; returns the exit code.
pub fn run(args: &UpdateArgs, verbose: bool) -> u8 {
    let interactive = std::io::stdin().is_terminal();
    if !args.force && !args.pretend && !interactive {
        eprintln!("to run in unattended mode, use --force");
        return exit::FAILURE;
    }
    let config = match config::load(&args.config) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("btrfs2s3: {error}");
            return exit::USAGE;
        }
    };
    for warning in &config.warnings {
        eprintln!("btrfs2s3: warning: {warning}");
    }
    let wait = std::time::Duration::from_secs(args.wait);
    let _lock = match lock::lock(&args.config, wait) {
        Ok(lock) => lock,
        Err(error @ lock::LockError::Held { .. }) => {
            eprintln!("btrfs2s3: {error}");
            return exit::LOCKED;
        }
        Err(error) => {
            eprintln!("btrfs2s3: {error}");
            return exit::FAILURE;
        }
    };
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
    runtime.block_on(run_async(args, &config, interactive, verbose))
}

async fn run_async(
    args: &UpdateArgs,
    config: &config::Config,
    interactive: bool,
    verbose: bool,
) -> u8 {
    let cancel = CancellationToken::new();
    let signal = Arc::new(OnceLock::new());
    if let Err(error) = watch_signals(cancel.clone(), Arc::clone(&signal)) {
        eprintln!("btrfs2s3: cannot handle signals: {error}");
        return exit::FAILURE;
    }
    let (plan, mut world) = match assess_and_plan(args, config, verbose, &cancel).await {
        Ok(planned) => planned,
        Err(code) => return code,
    };
    if cancel.is_cancelled() {
        return interrupted(&plan, None, &mut world, &signal);
    }
    if let Some(code) = show(&plan, args, verbose) {
        return code;
    }
    let choice = if args.force || !interactive {
        Choice::Execute
    } else {
        let created = plan.created_snapshots().count();
        tokio::select! {
            choice = tokio::task::spawn_blocking(move || prompt(created)) => choice.unwrap_or(Choice::Stop),
            () = cancel.cancelled() => return interrupted(&plan, None, &mut world, &signal),
        }
    };
    match choice {
        Choice::Stop => exit::OK,
        Choice::Undo => undo(&plan, &mut world),
        Choice::Execute => {
            let observer = progress::Progress::new(std::io::stderr().is_terminal() && !args.json);
            let outcome = execute::execute(&plan, &mut world, &observer, &cancel).await;
            observer.finish();
            if cancel.is_cancelled() {
                if args.json {
                    print_json(&plan, Some(&outcome));
                }
                return interrupted(&plan, Some(&outcome), &mut world, &signal);
            }
            report(&plan, &outcome, args.json)
        }
    }
}

/// Assesses the state and plans; `Err` is the exit code, after the message.
async fn assess_and_plan(
    args: &UpdateArgs,
    config: &config::Config,
    verbose: bool,
    cancel: &CancellationToken,
) -> Result<(Plan, core_update::RealWorld), u8> {
    let now = args.now.unwrap_or_else(jiff::Timestamp::now);
    let mode = if args.pretend {
        Mode::Pretend
    } else {
        Mode::Real
    };
    let wait = std::time::Duration::from_secs(args.wait);
    let (assessment, world) = core_update::assess(config, now, mode, wait, cancel)
        .await
        .map_err(|error| {
            eprintln!("btrfs2s3: {}", error_chain(&error));
            if error.is_locked() {
                exit::LOCKED
            } else if error.is_setup_error() {
                exit::USAGE
            } else {
                exit::FAILURE
            }
        })?;
    if verbose {
        for remote in &assessment.remotes {
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
    let plan = plan::plan(&assessment).map_err(|error| {
        eprintln!("btrfs2s3: {error}");
        exit::FAILURE
    })?;
    for broken in &plan.broken_chains {
        eprintln!(
            "btrfs2s3: warning: in remote {}: {}",
            broken.remote, broken.chain
        );
    }
    Ok((plan, world))
}

/// Shows the plan; `Some(code)` when the run ends here (`--pretend`, nothing to do).
fn show(plan: &Plan, args: &UpdateArgs, verbose: bool) -> Option<u8> {
    if args.json {
        if args.pretend || !plan.has_work() {
            print_json(plan, None);
            return Some(exit::OK);
        }
    } else {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        let written = output::write_plan(plan, &mut out)
            .and_then(|()| {
                if verbose {
                    writeln!(out, "policy evaluated at {} in {}", plan.now, plan.timezone)?;
                }
                Ok(())
            })
            .and_then(|()| out.flush());
        if let Err(error) = written {
            eprintln!("btrfs2s3: cannot print the plan: {error}");
            return Some(exit::FAILURE);
        }
    }
    if args.pretend {
        return Some(exit::OK);
    }
    if !plan.has_work() {
        if !args.json {
            println!("nothing to do");
        }
        return Some(exit::OK);
    }
    None
}

/// The prompt's "undo": destroys the snapshots this run created.
fn undo(plan: &Plan, world: &mut core_update::RealWorld) -> u8 {
    let created: Vec<_> = plan
        .created_snapshots()
        .map(|s| (s.directory.clone(), s.name.clone(), s.id))
        .collect();
    match world.destroy_created(&created) {
        Ok(()) => {
            println!(
                "destroyed the {} snapshot(s) created by this run",
                created.len()
            );
            exit::OK
        }
        Err(error) => {
            eprintln!("btrfs2s3: {}", error_chain(error.as_ref()));
            exit::FAILURE
        }
    }
}

/// Cancels `cancel` on the first SIGINT or SIGTERM (remembering which in `signal`); a second
/// one ends the process at once.
fn watch_signals(
    cancel: CancellationToken,
    signal: Arc<OnceLock<&'static str>>,
) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal as listen};
    let mut interrupt = listen(SignalKind::interrupt())?;
    let mut terminate = listen(SignalKind::terminate())?;
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        };
        let _ = signal.set(name);
        eprintln!("btrfs2s3: {name} received: stopping cleanly (send it again to stop at once)");
        cancel.cancel();
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        eprintln!("btrfs2s3: stopping at once");
        std::process::exit(i32::from(exit::FAILURE));
    });
    Ok(())
}

/// Ends an interrupted run: destroys the snapshots this run created that no backup uses yet,
/// and says in one line what happened.
fn interrupted(
    plan: &Plan,
    outcome: Option<&Outcome>,
    world: &mut core_update::RealWorld,
    signal: &OnceLock<&'static str>,
) -> u8 {
    let done = |wanted: &dyn Fn(&Action) -> bool| {
        outcome.is_some_and(|outcome| {
            outcome.results.iter().any(|(action, result)| {
                wanted(action) && matches!(result, ActionResult::Done { .. })
            })
        })
    };
    let mut removed = 0;
    for snapshot in plan.created_snapshots() {
        let uploaded = done(
            &|action| matches!(action, Action::Upload { snapshot: s, .. } if s.uuid == snapshot.uuid),
        );
        if uploaded {
            continue;
        }
        let renamed = done(
            &|action| matches!(action, Action::Rename { snapshot: s, .. } if s.uuid == snapshot.uuid),
        );
        let name = if renamed {
            &snapshot.target_name
        } else {
            &snapshot.name
        };
        match world.destroy_created(&[(snapshot.directory.clone(), name.clone(), snapshot.id)]) {
            Ok(()) => removed += 1,
            Err(error) => eprintln!("btrfs2s3: {}", error_chain(error.as_ref())),
        }
    }
    let (done_count, total) = outcome.map_or((0, plan.actions.len()), |outcome| {
        let done = outcome
            .results
            .iter()
            .filter(|(_, result)| matches!(result, ActionResult::Done { .. }))
            .count();
        (done, outcome.results.len())
    });
    eprintln!(
        "btrfs2s3: interrupted by {}: {done_count} of {total} action(s) done, nothing half-done left; {removed} new snapshot(s) removed",
        signal.get().copied().unwrap_or("a signal")
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

fn report(plan: &Plan, outcome: &Outcome, json: bool) -> u8 {
    if json {
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
    for (action, result) in problems {
        eprintln!(
            "  {}: {}",
            output::describe_action(action),
            output::describe_result(result)
        );
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
