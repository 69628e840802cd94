//! `update` as one call: lock, assess, snapshot what changed, plan, show, ask, execute, and
//! clean up after an interruption or an undo. The caller (the CLI, a daemon) renders the
//! report and decides what it means for the process.
//!
//! [`update`] is the real thing: it takes the config's lock and opens the real world.
//! [`cycle`] is everything after that, generic over the [`World`], so that the unit tests and
//! the safety properties run the very rules a real run follows.

use std::collections::BTreeMap;
use std::io;
use std::sync::Mutex;
use std::time::Duration;

use jiff::Timestamp;
use snafu::{ResultExt, Snafu};
use uuid::Uuid;

use crate::cancel::Cancel;
use crate::config::Config;
use crate::execute::{Observer, Outcome, Silent, execute};
use crate::lock::LockError;
use crate::plan::{
    Action, Assessment, Origin, Plan, PlanError, RemoteState, SnapshotState, SourceState, plan,
};
use crate::real::{AssessError, RealWorld};
use crate::world::{World, WorldError};

/// Whether a run may change the system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Snapshot sources that changed, and execute the plan.
    Real,
    /// `--pretend`: plan as if the snapshots were taken, show the plan, change nothing.
    Pretend,
}

/// How to run `update`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpdateOptions {
    /// The instant the policies are evaluated at.
    pub now: Timestamp,
    /// Real or pretend.
    pub mode: Mode,
    /// How long to wait for another run's locks.
    pub wait: Duration,
    /// Ask before acting ([`Ui::confirm`]); otherwise act at once (`--force`, unattended).
    pub ask: bool,
}

/// What the person at the prompt chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// Execute the plan.
    Execute,
    /// Do nothing more.
    Stop,
    /// Destroy the snapshots this run created, and do nothing more.
    Undo,
}

/// What a run shows and asks on its way. Its [`Observer`] half hears about execution.
#[allow(async_fn_in_trait)] // used with concrete types only
pub trait Ui: Observer {
    /// A remote was listed (before the plan is made).
    fn listed(&self, _remote: &RemoteState) {}
    /// The plan is made: shown before anything is done. An error stops the run, so that
    /// nothing is done that was not shown.
    fn show_plan(&self, plan: &Plan) -> io::Result<()>;
    /// Whether to go on; `created` snapshots were made for this run (they can be undone).
    async fn confirm(&self, created: usize) -> Choice;
}

/// A run that shows nothing and, asked, answers [`Choice::Stop`].
impl Ui for Silent {
    fn show_plan(&self, _plan: &Plan) -> io::Result<()> {
        Ok(())
    }

    async fn confirm(&self, _created: usize) -> Choice {
        Choice::Stop
    }
}

/// Why a run stopped before it acted. Nothing has been changed, except that snapshots
/// created before a [`UpdateError::Snapshot`] stay (ordinary snapshots the next run adopts).
#[derive(Debug, Snafu)]
pub enum UpdateError {
    /// The config's lock: held by another run, unusable, or the wait was interrupted.
    #[snafu(transparent)]
    Lock {
        /// Why.
        source: LockError,
    },
    /// The state could not be assessed.
    #[snafu(transparent)]
    Assess {
        /// Why.
        source: AssessError,
    },
    /// A new snapshot could not be made.
    #[snafu(display("failed to snapshot {}", path.display()))]
    Snapshot {
        /// The source.
        path: std::path::PathBuf,
        /// Why.
        source: WorldError,
    },
    /// The planner refused its own plan.
    #[snafu(transparent)]
    Plan {
        /// Which invariant failed.
        source: PlanError,
    },
    /// The plan could not be shown.
    #[snafu(display("cannot print the plan"))]
    ShowPlan {
        /// Why.
        source: io::Error,
    },
}

impl UpdateError {
    /// Whether another run holds a lock this one needs.
    #[must_use]
    pub fn is_locked(&self) -> bool {
        match self {
            UpdateError::Lock { source } => source.is_held(),
            UpdateError::Assess { source } => source.is_locked(),
            _ => false,
        }
    }

    /// Whether the error is about local setup (paths, filesystems), as opposed to a failure
    /// of something that worked before.
    #[must_use]
    pub fn is_setup_error(&self) -> bool {
        match self {
            UpdateError::Assess { source } => source.is_setup_error(),
            UpdateError::Lock { source } => source.is_unsafe(),
            _ => false,
        }
    }
}

/// The prompt's undo.
#[derive(Debug)]
pub struct Undone {
    /// How many of this run's snapshots were destroyed.
    pub destroyed: usize,
    /// Why the rest were not.
    pub failure: Option<WorldError>,
}

/// How an interrupted run ended.
#[derive(Debug)]
pub struct Interruption {
    /// What interrupted it (`"SIGINT"`), when known.
    pub cause: Option<&'static str>,
    /// The actions done before it stopped.
    pub done: usize,
    /// The actions of the plan.
    pub total: usize,
    /// The execution so far, if it had started.
    pub outcome: Option<Outcome>,
    /// How many snapshots this run created (and no upload used) were destroyed again.
    pub removed: usize,
    /// Snapshots that could not be destroyed.
    pub failures: Vec<WorldError>,
}

/// How a run ended.
#[derive(Debug)]
pub enum UpdateEnd {
    /// It stopped before acting.
    Failed(UpdateError),
    /// `--pretend`: the plan was shown.
    Shown,
    /// The plan has nothing to do.
    NothingToDo,
    /// The person at the prompt said no.
    Declined,
    /// The person at the prompt said undo.
    Undone(Undone),
    /// The plan was executed.
    Executed(Outcome),
    /// A signal stopped it; nothing is half-done.
    Interrupted(Interruption),
}

/// What a run did.
#[derive(Debug)]
pub struct UpdateReport {
    /// The plan, when the run got that far.
    pub plan: Option<Plan>,
    /// How it ended.
    pub end: UpdateEnd,
}

impl UpdateReport {
    fn failed(error: UpdateError) -> UpdateReport {
        UpdateReport {
            plan: None,
            end: UpdateEnd::Failed(error),
        }
    }
}

/// One `update` of `config`: takes the config's lock, opens and assesses the real world, then
/// runs a [`cycle`].
pub async fn update(
    config: &Config,
    options: &UpdateOptions,
    ui: &impl Ui,
    cancel: &Cancel,
) -> UpdateReport {
    let _lock = match crate::lock::lock_async(&config.path, options.wait, cancel.token()).await {
        Ok(lock) => lock,
        Err(error) => return UpdateReport::failed(error.into()),
    };
    let opened = RealWorld::open(config, options.now, options.wait, cancel.token()).await;
    let (mut world, assessment) = match opened {
        Ok(opened) => opened,
        Err(error) => return UpdateReport::failed(error.into()),
    };
    for remote in &assessment.remotes {
        ui.listed(remote);
    }
    cycle(&mut world, assessment, options, ui, cancel).await
}

/// Everything of a run after the world was assessed: snapshot the sources that changed,
/// plan, show, ask, execute; undo, or clean up after an interruption.
pub async fn cycle<W: World>(
    world: &mut W,
    mut assessment: Assessment,
    options: &UpdateOptions,
    ui: &impl Ui,
    cancel: &Cancel,
) -> UpdateReport {
    if let Err(error) = take_snapshots(world, &mut assessment, options.mode).await {
        return UpdateReport::failed(error);
    }
    let plan = match plan(&assessment) {
        Ok(plan) => plan,
        Err(error) => return UpdateReport::failed(error.into()),
    };
    let end = act(world, &plan, options, ui, cancel).await;
    UpdateReport {
        plan: Some(plan),
        end,
    }
}

async fn act<W: World>(
    world: &mut W,
    plan: &Plan,
    options: &UpdateOptions,
    ui: &impl Ui,
    cancel: &Cancel,
) -> UpdateEnd {
    if cancel.is_cancelled() {
        return UpdateEnd::Interrupted(interrupted(world, plan, None, cancel).await);
    }
    if let Err(source) = ui.show_plan(plan) {
        return UpdateEnd::Failed(UpdateError::ShowPlan { source });
    }
    if options.mode == Mode::Pretend {
        return UpdateEnd::Shown;
    }
    if !plan.has_work() {
        return UpdateEnd::NothingToDo;
    }
    let choice = if options.ask {
        tokio::select! {
            choice = ui.confirm(plan.created_snapshots().count()) => choice,
            () = cancel.cancelled() => {
                return UpdateEnd::Interrupted(interrupted(world, plan, None, cancel).await);
            }
        }
    } else {
        Choice::Execute
    };
    match choice {
        Choice::Stop => UpdateEnd::Declined,
        Choice::Undo => UpdateEnd::Undone(undo(world, plan).await),
        Choice::Execute => {
            let outcome = execute(plan, world, ui, cancel.token()).await;
            if cancel.is_cancelled() {
                UpdateEnd::Interrupted(interrupted(world, plan, Some(outcome), cancel).await)
            } else {
                UpdateEnd::Executed(outcome)
            }
        }
    }
}

/// The snapshot rule: a source gets a new snapshot when it changed since its newest
/// snapshot, or has none.
#[must_use]
pub fn needs_snapshot(source: &SourceState) -> bool {
    source
        .snapshots
        .iter()
        .map(|snapshot| snapshot.ctransid)
        .max()
        .is_none_or(|newest| source.ctransid > newest)
}

/// The temporary name of a new snapshot of `source_name`: `<name>.NEW.<pid>`, and
/// `<name>.NEW.<pid>-<n>` for the n-th next one of the same name in this process (a daemon
/// is one long process), so no two are ever the same.
fn new_snapshot_name(source_name: &str) -> String {
    static MADE: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());
    let pid = std::process::id();
    let mut made = MADE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let count = made.entry(source_name.to_owned()).or_insert(0);
    let name = match *count {
        0 => format!("{source_name}.NEW.{pid}"),
        n => format!("{source_name}.NEW.{pid}-{n}"),
    };
    *count += 1;
    name
}

/// Applies the snapshot rule to every source: creates the snapshots ([`Mode::Real`]), or adds
/// the ones a real run would create ([`Mode::Pretend`]).
async fn take_snapshots<W: World>(
    world: &mut W,
    assessment: &mut Assessment,
    mode: Mode,
) -> Result<(), UpdateError> {
    for source in &mut assessment.sources {
        if !needs_snapshot(source) {
            continue;
        }
        let name = new_snapshot_name(&source.name);
        let snapshot = match mode {
            Mode::Real => {
                let created = world
                    .create_snapshot(source, &name)
                    .await
                    .context(SnapshotSnafu { path: &source.path })?;
                crate::failpoint::hit("snapshot-created");
                created
            }
            // As if taken now: a snapshot has its source's ctransid and ctime, and a new uuid
            // (a stand-in derived from the source's, never written anywhere).
            Mode::Pretend => SnapshotState {
                name,
                id: None,
                uuid: Uuid::from_u128(source.uuid.as_u128() ^ u128::from(source.ctransid) ^ 0x5eed),
                ctime: source.ctime,
                ctransid: source.ctransid,
                origin: Origin::Planned,
            },
        };
        source.snapshots.push(snapshot);
    }
    Ok(())
}

/// The prompt's undo: destroys the snapshots this run created.
async fn undo<W: World>(world: &mut W, plan: &Plan) -> Undone {
    let mut destroyed = 0;
    for snapshot in plan.created_snapshots() {
        if let Err(error) = world.destroy_snapshot(&snapshot.current()).await {
            return Undone {
                destroyed,
                failure: Some(error),
            };
        }
        destroyed += 1;
    }
    Undone {
        destroyed,
        failure: None,
    }
}

/// Ends an interrupted run: destroys the snapshots this run created that no backup uses yet
/// (under the name they have now), so the next run starts from a state a run can leave.
async fn interrupted<W: World>(
    world: &mut W,
    plan: &Plan,
    outcome: Option<Outcome>,
    cancel: &Cancel,
) -> Interruption {
    let done = |wanted: &dyn Fn(&Action) -> bool| {
        outcome
            .as_ref()
            .is_some_and(|outcome| outcome.any_done(wanted))
    };
    let mut removed = 0;
    let mut failures = Vec::new();
    for snapshot in plan.created_snapshots() {
        let uploaded = done(
            &|action| matches!(action, Action::Upload(upload) if upload.spec.snapshot.uuid == snapshot.uuid),
        );
        if uploaded {
            continue;
        }
        let renamed = done(
            &|action| matches!(action, Action::Rename(rename) if rename.snapshot.uuid == snapshot.uuid),
        );
        let mut current = snapshot.current();
        if renamed {
            current.name.clone_from(&snapshot.target_name);
        }
        match world.destroy_snapshot(&current).await {
            Ok(()) => removed += 1,
            Err(error) => failures.push(error),
        }
    }
    let (done, total) = outcome.as_ref().map_or((0, plan.actions.len()), |outcome| {
        (outcome.done(), outcome.results.len())
    });
    Interruption {
        cause: cancel.cause(),
        done,
        total,
        outcome,
        removed,
        failures,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::execute::ActionResult;
    use crate::fake::FakeWorld;

    #[test]
    fn new_snapshot_names_are_unique_in_a_process() {
        let pid = std::process::id();
        let first = new_snapshot_name("unique-test");
        let second = new_snapshot_name("unique-test");
        assert_eq!(first, format!("unique-test.NEW.{pid}"));
        assert_eq!(second, format!("unique-test.NEW.{pid}-1"));
        assert_eq!(
            new_snapshot_name("unique-other"),
            format!("unique-other.NEW.{pid}")
        );
    }

    /// A scripted person at the prompt.
    struct Scripted {
        answer: Choice,
        /// Cancel the run while asking (a Ctrl-C at the prompt).
        interrupt: Option<Cancel>,
        shown: AtomicBool,
        fail_to_show: bool,
    }

    impl Scripted {
        fn answering(answer: Choice) -> Scripted {
            Scripted {
                answer,
                interrupt: None,
                shown: AtomicBool::new(false),
                fail_to_show: false,
            }
        }
    }

    impl Observer for Scripted {
        fn started(&self, _: &Action) {}
        fn progress(&self, _: u64) {}
        fn finished(&self, _: &Action, _: &ActionResult) {}
    }

    impl Ui for Scripted {
        fn show_plan(&self, _plan: &Plan) -> io::Result<()> {
            self.shown.store(true, Ordering::Relaxed);
            if self.fail_to_show {
                Err(io::Error::from(io::ErrorKind::BrokenPipe))
            } else {
                Ok(())
            }
        }

        async fn confirm(&self, _created: usize) -> Choice {
            if let Some(cancel) = &self.interrupt {
                cancel.cancel("SIGINT");
                std::future::pending::<()>().await;
            }
            self.answer
        }
    }

    /// A source that changed since its only snapshot (which has a backup).
    fn changed() -> FakeWorld {
        let mut world = FakeWorld::new("UTC", "2026-03-08T12:00:00Z");
        world.add_source("home", 1, &[("aws", "1y 1m 1d")]);
        world.add_snapshot(
            0,
            "home.2026-03-01T00:00:00+00:00.100",
            1,
            "2026-03-01T00:00:00Z",
            100,
        );
        world.add_backup(0, "aws", 1, None);
        world.touch(0);
        world
    }

    fn run(
        world: &mut FakeWorld,
        mode: Mode,
        ask: bool,
        ui: &Scripted,
        cancel: &Cancel,
    ) -> UpdateReport {
        let options = UpdateOptions {
            now: world.now,
            mode,
            wait: Duration::ZERO,
            ask,
        };
        let assessment = world.assessment();
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(cycle(world, assessment, &options, ui, cancel))
    }

    fn snapshot_count(world: &FakeWorld) -> usize {
        world.snapshots.values().map(BTreeMap::len).sum()
    }

    #[test]
    fn pretend_shows_the_snapshot_it_would_take_and_changes_nothing() {
        let mut world = changed();
        let ui = Scripted::answering(Choice::Execute);
        let report = run(&mut world, Mode::Pretend, false, &ui, &Cancel::new());
        assert!(matches!(report.end, UpdateEnd::Shown), "{:?}", report.end);
        assert!(ui.shown.load(Ordering::Relaxed));
        assert!(world.log.is_empty(), "{:?}", world.log);
        let plan = report.plan.unwrap();
        let planned: Vec<_> = plan
            .snapshots
            .iter()
            .filter(|s| s.origin == Origin::Planned)
            .collect();
        assert_eq!(planned.len(), 1);
        assert_eq!(
            planned[0].id, None,
            "a planned snapshot has no subvolume id"
        );
        assert!(matches!(plan.actions[0], Action::CreateSnapshot(_)));
    }

    #[test]
    fn the_prompt_can_stop_or_undo() {
        let mut world = changed();
        let report = run(
            &mut world,
            Mode::Real,
            true,
            &Scripted::answering(Choice::Stop),
            &Cancel::new(),
        );
        assert!(
            matches!(report.end, UpdateEnd::Declined),
            "{:?}",
            report.end
        );
        // The snapshot stays: the next run adopts it.
        assert_eq!(snapshot_count(&world), 2);
        assert!(
            world.log.iter().all(|l| l.starts_with("create")),
            "{:?}",
            world.log
        );

        let mut world = changed();
        let report = run(
            &mut world,
            Mode::Real,
            true,
            &Scripted::answering(Choice::Undo),
            &Cancel::new(),
        );
        let UpdateEnd::Undone(undone) = &report.end else {
            panic!("{:?}", report.end)
        };
        assert_eq!((undone.destroyed, undone.failure.is_none()), (1, true));
        assert_eq!(snapshot_count(&world), 1);
        assert_eq!(world.objects["aws"].len(), 1, "nothing uploaded");
    }

    #[test]
    fn a_signal_at_the_prompt_removes_the_new_snapshot() {
        let mut world = changed();
        let cancel = Cancel::new();
        let ui = Scripted {
            interrupt: Some(cancel.clone()),
            ..Scripted::answering(Choice::Execute)
        };
        let report = run(&mut world, Mode::Real, true, &ui, &cancel);
        let UpdateEnd::Interrupted(interruption) = &report.end else {
            panic!("{:?}", report.end)
        };
        assert_eq!(interruption.cause, Some("SIGINT"));
        assert_eq!((interruption.removed, interruption.done), (1, 0));
        assert!(interruption.outcome.is_none());
        assert_eq!(snapshot_count(&world), 1);
    }

    #[test]
    fn a_plan_that_cannot_be_shown_is_not_executed() {
        let mut world = changed();
        let ui = Scripted {
            fail_to_show: true,
            ..Scripted::answering(Choice::Execute)
        };
        let report = run(&mut world, Mode::Real, false, &ui, &Cancel::new());
        assert!(
            matches!(&report.end, UpdateEnd::Failed(UpdateError::ShowPlan { .. })),
            "{:?}",
            report.end
        );
        assert!(
            world.log.iter().all(|l| l.starts_with("create")),
            "{:?}",
            world.log
        );
    }

    #[test]
    fn a_failed_snapshot_stops_the_run_before_it_plans() {
        let mut world = changed();
        world.crash_after = Some(0);
        let report = run(
            &mut world,
            Mode::Real,
            false,
            &Scripted::answering(Choice::Execute),
            &Cancel::new(),
        );
        let UpdateEnd::Failed(error) = &report.end else {
            panic!("{:?}", report.end)
        };
        assert!(report.plan.is_none());
        assert!(!error.is_locked() && !error.is_setup_error());
        assert!(
            crate::error_chain(error).starts_with("failed to snapshot /pool/home: crashed"),
            "{}",
            crate::error_chain(error)
        );
    }
}
