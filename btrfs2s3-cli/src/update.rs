//! `btrfs2s3 update`.

use std::io::{BufRead, IsTerminal, Write};

use btrfs2s3_core::execute::{self, Outcome, error_chain};
use btrfs2s3_core::plan::{self, Plan};
use btrfs2s3_core::update::{self as core_update, Mode};
use btrfs2s3_core::{config, lock};

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
    let now = args.now.unwrap_or_else(jiff::Timestamp::now);
    let mode = if args.pretend {
        Mode::Pretend
    } else {
        Mode::Real
    };
    let wait = std::time::Duration::from_secs(args.wait);
    let (assessment, mut world) = match core_update::assess(config, now, mode, wait).await {
        Ok(assessed) => assessed,
        Err(error) => {
            eprintln!("btrfs2s3: {}", error_chain(&error));
            return if error.is_locked() {
                exit::LOCKED
            } else if error.is_setup_error() {
                exit::USAGE
            } else {
                exit::FAILURE
            };
        }
    };
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
    let plan = match plan::plan(&assessment) {
        Ok(plan) => plan,
        Err(error) => {
            eprintln!("btrfs2s3: {error}");
            return exit::FAILURE;
        }
    };
    for broken in &plan.broken_chains {
        eprintln!(
            "btrfs2s3: warning: in remote {}: {}",
            broken.remote, broken.chain
        );
    }

    if args.json {
        if args.pretend || !plan.has_work() {
            print_json(&plan, None);
            return exit::OK;
        }
    } else {
        print!("{}", output::render_plan(&plan));
        if verbose {
            println!("policy evaluated at {} in {}", plan.now, plan.timezone);
        }
    }
    if args.pretend {
        return exit::OK;
    }
    if !plan.has_work() {
        if !args.json {
            println!("nothing to do");
        }
        return exit::OK;
    }

    let choice = if args.force || !interactive {
        Choice::Execute
    } else {
        prompt(&plan)
    };
    match choice {
        Choice::Stop => exit::OK,
        Choice::Undo => {
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
        Choice::Execute => {
            let observer = progress::Progress::new(std::io::stderr().is_terminal() && !args.json);
            let outcome = execute::execute(&plan, &mut world, &observer).await;
            observer.finish();
            report(&plan, &outcome, args.json)
        }
    }
}

fn print_json(plan: &Plan, outcome: Option<&Outcome>) {
    let value = match outcome {
        Some(outcome) => serde_json::json!({ "plan": plan, "outcome": outcome }),
        None => serde_json::json!({ "plan": plan }),
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&value).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    );
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

fn prompt(plan: &Plan) -> Choice {
    let created = plan.created_snapshots().count();
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
