//! `update` as one call: lock, assess, snapshot what changed, plan, show, ask, execute, and
//! clean up after an interruption or an undo. The caller (the CLI, a daemon) renders the
//! report and decides what it means for the process.
//!
//! [`update`] is the real thing: it takes the config's lock and opens the real world.
//! [`cycle`] is everything after that, generic over the [`World`], so that the unit tests and
//! the safety properties run the very rules a real run follows.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use jiff::Timestamp;
use snafu::{ResultExt, Snafu};
use uuid::Uuid;

use crate::cache::ListingCache;
use crate::cancel::Cancel;
use crate::config::Config;
use crate::error_chain;
use crate::execute::{ActionResult, Observer, Outcome, Silent, execute};
use crate::lock::LockError;
use crate::plan::{
    Action, Assessment, Origin, Plan, PlanError, RemoteState, SnapshotState, SourceState, plan,
};
use crate::real::{AssessError, RealWorld};
use crate::text::escape;
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateOptions {
    /// The instant the policies are evaluated at.
    pub now: Timestamp,
    /// Real or pretend.
    pub mode: Mode,
    /// How long to wait for another run's locks.
    pub wait: Duration,
    /// Ask before acting ([`Ui::confirm`]); otherwise act at once (`--force`, unattended).
    pub ask: bool,
    /// A source that changed gets a new snapshot only when its newest one is at least this
    /// old (a daemon's `--interval`); zero for `update`.
    pub min_snapshot_age: Duration,
    /// How many upload streams run at a time (the config's `parallel_uploads`).
    pub parallel_uploads: usize,
    /// A bandwidth limit for all remotes together (`--rate-limit`), besides each remote's
    /// own; shared by every run that is given it.
    pub rate_limit: Option<crate::storage::BandwidthLimit>,
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
    /// A remote's server refused CRC-32C checksums: its uploads were signed instead.
    fn checksums_refused(&self, _remote: &str) {}
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
    /// The newest snapshot of each source that has one, new ones included, when the run got
    /// as far as taking snapshots.
    pub newest_snapshots: Vec<NewestSnapshot>,
}

/// The newest snapshot of a source (what a daemon schedules from).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewestSnapshot {
    /// The source.
    pub source: PathBuf,
    /// The snapshot's ctransid: the source's generation when it was taken.
    pub ctransid: u64,
    /// When it was taken.
    pub ctime: Timestamp,
}

impl UpdateReport {
    fn failed(error: UpdateError) -> UpdateReport {
        UpdateReport {
            plan: None,
            end: UpdateEnd::Failed(error),
            newest_snapshots: Vec::new(),
        }
    }

    /// Every action's outcome, when the plan was executed (completely or until an
    /// interruption).
    #[must_use]
    pub fn outcome(&self) -> Option<&Outcome> {
        match &self.end {
            UpdateEnd::Executed(outcome) => Some(outcome),
            UpdateEnd::Interrupted(interruption) => interruption.outcome.as_ref(),
            _ => None,
        }
    }

    /// Whether the run did all it had to: nothing failed, nothing was left undone.
    #[must_use]
    pub fn succeeded(&self) -> bool {
        match &self.end {
            UpdateEnd::NothingToDo | UpdateEnd::Shown => true,
            UpdateEnd::Executed(outcome) => outcome.succeeded(),
            UpdateEnd::Failed(_)
            | UpdateEnd::Declined
            | UpdateEnd::Undone(_)
            | UpdateEnd::Interrupted(_) => false,
        }
    }
}

impl UpdateReport {
    /// What the run did, in a line or a few: for a health-check ping, a log, a status.
    #[must_use]
    pub fn summary(&self) -> String {
        match &self.end {
            UpdateEnd::Failed(error) => format!("failed: {}", escape(&error_chain(error))),
            UpdateEnd::Shown => "plan shown".to_owned(),
            UpdateEnd::NothingToDo => "nothing to do".to_owned(),
            UpdateEnd::Declined => "declined at the prompt".to_owned(),
            UpdateEnd::Undone(undone) => {
                format!("undone: {} new snapshot(s) destroyed", undone.destroyed)
            }
            UpdateEnd::Executed(outcome) => {
                let problems: Vec<_> = outcome.problems().collect();
                if problems.is_empty() {
                    return format!("done: {}", count_actions(outcome));
                }
                let mut text = format!(
                    "{} of {} action(s) did not complete",
                    problems.len(),
                    outcome.results.len()
                );
                for problem in problems.iter().take(5) {
                    let _ = write!(
                        text,
                        "\n{}: {}",
                        action_name(&problem.action),
                        escape(&result_text(&problem.result))
                    );
                }
                if problems.len() > 5 {
                    let _ = write!(text, "\nand {} more", problems.len() - 5);
                }
                text
            }
            UpdateEnd::Interrupted(interruption) => format!(
                "interrupted by {}: {} of {} action(s) done",
                interruption.cause.unwrap_or("a signal"),
                interruption.done,
                interruption.total
            ),
        }
    }
}

/// `3 action(s): 1 upload, 2 delete` and the bytes uploaded.
fn count_actions(outcome: &Outcome) -> String {
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    let mut uploaded = 0;
    for done in &outcome.results {
        *kinds.entry(action_kind(&done.action)).or_default() += 1;
        if let (Action::Upload(_), ActionResult::Done { bytes: Some(bytes) }) =
            (&done.action, &done.result)
        {
            uploaded += bytes;
        }
    }
    let kinds: Vec<String> = kinds
        .into_iter()
        .map(|(kind, n)| format!("{n} {kind}"))
        .collect();
    format!(
        "{} action(s): {}; {uploaded} byte(s) uploaded",
        outcome.results.len(),
        kinds.join(", ")
    )
}

/// The kind of an action, in a word.
fn action_kind(action: &Action) -> &'static str {
    match action {
        Action::AbortUpload(_) => "abort",
        Action::CreateSnapshot(_) => "snapshot",
        Action::Rename(_) => "rename",
        Action::Upload(_) => "upload",
        Action::ExtendLock(_) => "lock",
        Action::Destroy(_) => "destroy",
        Action::Delete(_) => "delete",
    }
}

/// An action and what it is about, shortly.
fn action_name(action: &Action) -> String {
    let kind = action_kind(action);
    match action {
        Action::AbortUpload(abort) => format!("{kind} {}: {}", abort.remote, escape(&abort.key)),
        Action::Upload(upload) => format!(
            "{kind} {}: {}",
            upload.spec.remote,
            escape(&upload.spec.key)
        ),
        Action::ExtendLock(extend) => {
            format!("{kind} {}: {}", extend.remote, escape(&extend.key))
        }
        Action::Delete(delete) => format!("{kind} {}: {}", delete.remote, escape(&delete.key)),
        Action::CreateSnapshot(create) => format!("{kind} {}", escape(&create.name)),
        Action::Rename(rename) => format!("{kind} {}", escape(&rename.snapshot.name)),
        Action::Destroy(destroy) => format!("{kind} {}", escape(&destroy.snapshot.name)),
    }
}

fn result_text(result: &ActionResult) -> String {
    match result {
        ActionResult::Done { .. } => "done".to_owned(),
        ActionResult::Failed { error } => format!("failed: {error}"),
        ActionResult::Skipped { reason } => format!("skipped: {reason}"),
    }
}

/// One `update` of `config`: takes the config's lock, opens and assesses the real world
/// (listing every remote), then runs a [`cycle`].
pub async fn update(
    config: &Config,
    options: &UpdateOptions,
    ui: &impl Ui,
    cancel: &Cancel,
) -> UpdateReport {
    run_update(config, options, None, ui, cancel).await
}

/// [`update`] with listings a long-running caller (the daemon) keeps between runs: remotes
/// that `cache` remembers are not listed, and afterwards `cache` holds every remote as the
/// run left it. If another process held the config's lock since this one last did (a manual
/// `update` ran in between), the cache is cleared first: that run may have changed the
/// buckets.
pub async fn update_cached(
    config: &Config,
    options: &UpdateOptions,
    cache: &mut ListingCache,
    ui: &impl Ui,
    cancel: &Cancel,
) -> UpdateReport {
    run_update(config, options, Some(cache), ui, cancel).await
}

async fn run_update(
    config: &Config,
    options: &UpdateOptions,
    mut cache: Option<&mut ListingCache>,
    ui: &impl Ui,
    cancel: &Cancel,
) -> UpdateReport {
    let lock = match crate::lock::lock_async(&config.path, options.wait, cancel.token()).await {
        Ok(lock) => lock,
        Err(error) => return UpdateReport::failed(error.into()),
    };
    if let Some(cache) = cache.as_deref_mut()
        && lock.previous_holder() != Some(std::process::id())
    {
        cache.clear();
    }
    let opened = RealWorld::open(
        config,
        options.now,
        options.wait,
        cancel.token(),
        cache.as_deref_mut(),
    )
    .await;
    let (mut world, assessment) = match opened {
        Ok(opened) => opened,
        Err(error) => {
            // A request failed, or the state is not what the cache says.
            if let Some(cache) = cache {
                cache.clear();
            }
            return UpdateReport::failed(error.into());
        }
    };
    for remote in assessment
        .remotes
        .iter()
        .filter(|remote| world.listed().contains(&remote.id))
    {
        ui.listed(remote);
    }
    if let Some(limit) = &options.rate_limit {
        world.limit_uploads(limit);
    }
    let report = cycle(&mut world, assessment, options, ui, cancel).await;
    for remote in world.checksum_refusals() {
        ui.checksums_refused(&remote);
    }
    if let Some(cache) = cache {
        world.teach(cache);
        if let Some(outcome) = report.outcome() {
            cache.record(outcome);
        }
    }
    report
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
    if let Err(error) = take_snapshots(world, &mut assessment, options).await {
        return UpdateReport::failed(error);
    }
    let newest_snapshots = newest_snapshots(&assessment);
    let plan = match plan(&assessment) {
        Ok(plan) => plan,
        Err(error) => {
            return UpdateReport {
                newest_snapshots,
                ..UpdateReport::failed(error.into())
            };
        }
    };
    let end = act(world, &plan, options, ui, cancel).await;
    UpdateReport {
        plan: Some(plan),
        end,
        newest_snapshots,
    }
}

/// The newest snapshot of each source that has one.
fn newest_snapshots(assessment: &Assessment) -> Vec<NewestSnapshot> {
    assessment
        .sources
        .iter()
        .filter_map(|source| {
            let newest = source
                .snapshots
                .iter()
                .max_by_key(|s| (s.ctransid, s.ctime))?;
            Some(NewestSnapshot {
                source: source.path.clone(),
                ctransid: newest.ctransid,
                ctime: newest.ctime,
            })
        })
        .collect()
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
            let outcome = execute(plan, world, ui, cancel.token(), options.parallel_uploads).await;
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

/// Whether the newest snapshot of `source` is at least `min_snapshot_age` old, or it has
/// none, or the newest is from the future (the clock was set back: better a snapshot too
/// many than none until the clock catches up).
fn old_enough(source: &SourceState, options: &UpdateOptions) -> bool {
    let Some(newest) = source.snapshots.iter().map(|snapshot| snapshot.ctime).max() else {
        return true;
    };
    let age = options.now.duration_since(newest);
    options.min_snapshot_age.is_zero()
        || age.is_negative()
        || age.unsigned_abs() >= options.min_snapshot_age
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
    options: &UpdateOptions,
) -> Result<(), UpdateError> {
    for source in &mut assessment.sources {
        if !needs_snapshot(source) || !old_enough(source, options) {
            continue;
        }
        let name = new_snapshot_name(&source.name);
        let snapshot = match options.mode {
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
        fn streaming(&self, _: usize, _: &[&Action]) {}
        fn progress(&self, _: usize, _: u64) {}
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
            ask,
            ..world.options(mode)
        };
        world.cycle(&options, ui, cancel)
    }

    #[test]
    fn a_minimum_snapshot_age_holds_changes_back_until_it_passed() {
        // The only snapshot is from 2026-03-01T00:00; the source changed since.
        let cycle_at = |now: &str, min_snapshot_age: Duration| {
            let mut world = changed();
            world.now = now.parse().unwrap();
            let options = UpdateOptions {
                min_snapshot_age,
                ..world.options(Mode::Real)
            };
            let report = world.cycle(&options, &Silent, &Cancel::new());
            (snapshot_count(&world), report)
        };
        let fifteen = Duration::from_secs(900);
        let (count, report) = cycle_at("2026-03-01T00:14:59Z", fifteen);
        assert_eq!(count, 1, "too young: no new snapshot");
        assert_eq!(
            report.newest_snapshots,
            [NewestSnapshot {
                source: "/pool/home".into(),
                ctransid: 100,
                ctime: "2026-03-01T00:00:00Z".parse().unwrap(),
            }]
        );
        let (count, report) = cycle_at("2026-03-01T00:15:00Z", fifteen);
        assert_eq!(count, 2);
        assert_eq!(report.newest_snapshots[0].ctransid, 107);
        assert_eq!(cycle_at("2026-03-01T00:00:01Z", Duration::ZERO).0, 2);
        // A newest snapshot from the future (the clock was set back) holds nothing back.
        assert_eq!(cycle_at("2026-02-01T00:00:00Z", fifteen).0, 2);
    }

    #[test]
    fn summaries_say_what_happened_in_a_line_or_a_few() {
        let mut world = changed();
        let ui = Scripted::answering(Choice::Execute);
        let report = run(&mut world, Mode::Real, false, &ui, &Cancel::new());
        assert_eq!(
            report.summary(),
            "done: 2 action(s): 1 rename, 1 upload; 100 byte(s) uploaded"
        );
        let report = run(&mut world, Mode::Real, false, &ui, &Cancel::new());
        assert_eq!(report.summary(), "nothing to do");
        world.touch(0);
        world.now = "2026-03-09T12:00:00Z".parse().unwrap();
        world.failing_remotes.insert("aws".to_owned());
        let report = run(&mut world, Mode::Real, false, &ui, &Cancel::new());
        let summary = report.summary();
        assert!(
            summary.starts_with("2 of 4 action(s) did not complete\nupload aws: home."),
            "{summary}"
        );
        assert!(summary.contains("failed: injected failure"), "{summary}");
        assert!(summary.contains("\ndelete aws: home."), "{summary}");
        assert!(summary.contains("skipped: an upload"), "{summary}");
        assert!(!report.succeeded());
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
