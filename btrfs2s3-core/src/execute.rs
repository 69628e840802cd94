//! The executor: runs a [`Plan`] through the narrow [`World`] interface (snapshots on disk,
//! objects in buckets), in order — renames, uploads, lock extensions, destroys, deletes — and
//! goes on after a failure with whatever does not depend on it.
//!
//! What depends on what:
//! - an upload whose send parent is uploaded by the same plan waits for it; if that upload
//!   fails, this one is skipped (its object would be a broken chain); likewise when its send
//!   parent's lock was to be extended first and was not (its lock would outlast the parent's);
//! - deletes in a remote for a source are skipped when an upload of that source to that
//!   remote failed: the backups the plan deletes may be the ones the failed upload replaces;
//! - a snapshot an upload sends (or sends against) is destroyed only if that upload
//!   succeeded; otherwise it stays for the next run's retry.
//!
//! The next run plans the skipped and failed work again.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;
use serde::ser::SerializeTuple;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::error_chain;
use crate::plan::{
    Action, Delete, Destroy, ExtendLock, Plan, Rename, SnapshotRef, Upload, UploadSpec,
};
use crate::world::{Uploader, World, WorldError};

/// Hears about progress, for the user.
pub trait Observer: Sync {
    /// An action other than an upload starts.
    fn started(&self, action: &Action);
    /// A stream starts: one `btrfs send` feeding `uploads` (one per remote). Several streams
    /// may be in flight at once; `stream` tells them apart.
    fn streaming(&self, stream: usize, uploads: &[&Action]);
    /// A stream has read this many bytes so far.
    fn progress(&self, stream: usize, bytes: u64);
    /// An action ended.
    fn finished(&self, action: &Action, result: &ActionResult);
}

/// An observer that hears nothing.
pub struct Silent;

impl Observer for Silent {
    fn started(&self, _: &Action) {}
    fn streaming(&self, _: usize, _: &[&Action]) {}
    fn progress(&self, _: usize, _: u64) {}
    fn finished(&self, _: &Action, _: &ActionResult) {}
}

/// How one action went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ActionResult {
    /// Done; for an upload, the bytes stored.
    Done {
        /// Bytes stored, for uploads.
        #[serde(skip_serializing_if = "Option::is_none")]
        bytes: Option<u64>,
    },
    /// Failed.
    Failed {
        /// Why.
        error: ActionError,
    },
    /// Not attempted.
    Skipped {
        /// Why.
        reason: SkipReason,
    },
}

/// The error of a failed action: the world's error itself, shared by the clones of an
/// outcome. Shown (and serialized) as the message with all its causes on one line.
#[derive(Debug, Clone)]
pub struct ActionError(Arc<WorldError>);

impl ActionError {
    /// The error, to tell kinds apart.
    #[must_use]
    pub fn error(&self) -> &WorldError {
        &self.0
    }
}

impl From<WorldError> for ActionError {
    fn from(error: WorldError) -> ActionError {
        ActionError(Arc::new(error))
    }
}

impl fmt::Display for ActionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&error_chain(self.0.as_ref()))
    }
}

impl PartialEq for ActionError {
    fn eq(&self, other: &ActionError) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.to_string() == other.to_string()
    }
}

impl Eq for ActionError {}

impl Serialize for ActionError {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Why an action was not attempted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// The run was interrupted before it.
    Interrupted,
    /// `--pretend` plans show the snapshots a run would create; only a real run creates them.
    OnlyPlanned,
    /// The upload's send parent was to be uploaded first, and was not.
    SendParentNotUploaded {
        /// The send parent's name.
        parent: String,
        /// The remote.
        remote: String,
    },
    /// The upload's send parent was to be locked as long as it first, and was not.
    SendParentNotLocked {
        /// The send parent's name.
        parent: String,
        /// The remote.
        remote: String,
    },
    /// A delete waits while an upload of the same source to the same remote fails: the
    /// backups it deletes may be the ones the failed upload was to replace.
    UploadFailed {
        /// The remote.
        remote: String,
    },
    /// The snapshot stays for the next run, whose upload needs it.
    NeededForRetry {
        /// The snapshot's name.
        snapshot: String,
    },
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::Interrupted => f.write_str("interrupted"),
            SkipReason::OnlyPlanned => {
                f.write_str("a planned snapshot is only created by a real run")
            }
            SkipReason::SendParentNotUploaded { parent, remote } => write!(
                f,
                "its send parent {parent} was not uploaded to {remote} in this run"
            ),
            SkipReason::SendParentNotLocked { parent, remote } => write!(
                f,
                "the lock of its send parent {parent} in {remote} could not be extended to cover it"
            ),
            SkipReason::UploadFailed { remote } => write!(
                f,
                "an upload of this source to {remote} failed; its old backups stay until it succeeds"
            ),
            SkipReason::NeededForRetry { snapshot } => write!(
                f,
                "an upload that uses {snapshot} did not succeed; it stays for the retry"
            ),
        }
    }
}

impl Serialize for SkipReason {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// One action and how it went; serialized as `[action, result]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionOutcome {
    /// The action.
    pub action: Action,
    /// How it went.
    pub result: ActionResult,
}

impl ActionOutcome {
    /// Whether the action was done.
    #[must_use]
    pub fn is_done(&self) -> bool {
        matches!(self.result, ActionResult::Done { .. })
    }
}

impl Serialize for ActionOutcome {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut pair = serializer.serialize_tuple(2)?;
        pair.serialize_element(&self.action)?;
        pair.serialize_element(&self.result)?;
        pair.end()
    }
}

/// The result of every action of a plan, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// Each action with its result.
    pub results: Vec<ActionOutcome>,
}

impl Outcome {
    /// Whether every action was done.
    #[must_use]
    pub fn succeeded(&self) -> bool {
        self.results.iter().all(ActionOutcome::is_done)
    }

    /// The actions that failed or were skipped, with why.
    pub fn problems(&self) -> impl Iterator<Item = &ActionOutcome> {
        self.results.iter().filter(|outcome| !outcome.is_done())
    }

    /// How many actions were done.
    #[must_use]
    pub fn done(&self) -> usize {
        self.results
            .iter()
            .filter(|outcome| outcome.is_done())
            .count()
    }

    /// Whether `wanted` holds for an action that was done.
    pub fn any_done(&self, wanted: impl Fn(&Action) -> bool) -> bool {
        self.results
            .iter()
            .any(|outcome| outcome.is_done() && wanted(&outcome.action))
    }
}

/// Runs `plan` against `world`, at most `parallel_uploads` streams at a time (at least one).
/// When `cancel` is cancelled (Ctrl-C), the actions in flight stop (an upload is aborted) and
/// the remaining ones are skipped.
pub async fn execute<W: World>(
    plan: &Plan,
    world: &mut W,
    observer: &dyn Observer,
    cancel: &CancellationToken,
    parallel_uploads: usize,
) -> Outcome {
    let mut executor = Executor {
        world,
        observer,
        results: Vec::with_capacity(plan.actions.len()),
        state: State::default(),
    };
    let mut deletes: BTreeMap<&str, Vec<(&Action, &Delete)>> = BTreeMap::new();
    let mut actions = plan.actions.iter().peekable();
    while let Some(action) = actions.next() {
        if let Action::Upload(upload) = action {
            // The plan's uploads are in one run: they go together, several at a time.
            let mut uploads = vec![(action, upload.as_ref())];
            while let Some(next @ Action::Upload(upload)) = actions.peek() {
                uploads.push((next, upload.as_ref()));
                actions.next();
            }
            executor
                .uploads(&uploads, parallel_uploads.max(1), cancel)
                .await;
            continue;
        }
        if cancel.is_cancelled() {
            executor.record(action, skipped(SkipReason::Interrupted));
            continue;
        }
        let result = match action {
            Action::AbortUpload(abort) => {
                observer.started(action);
                done_or_failed(executor.world.abort_upload(abort).await.map(|()| None))
            }
            Action::CreateSnapshot(_) => skipped(SkipReason::OnlyPlanned),
            Action::Rename(rename) => executor.rename(action, rename).await,
            Action::Upload(_) => unreachable!("uploads go together"),
            Action::ExtendLock(extend) => executor.extend_lock(action, extend).await,
            Action::Destroy(destroy) => executor.destroy(action, destroy).await,
            Action::Delete(delete) => {
                // Deletes are batched per remote, after everything else.
                deletes
                    .entry(&delete.remote)
                    .or_default()
                    .push((action, delete));
                continue;
            }
        };
        executor.record(action, result);
    }
    for (remote, actions) in deletes {
        if cancel.is_cancelled() {
            for (action, _) in actions {
                executor.record(action, skipped(SkipReason::Interrupted));
            }
            continue;
        }
        executor.delete(remote, actions).await;
    }
    Outcome {
        results: executor.results,
    }
}

/// The state of one execution.
struct Executor<'a, W> {
    world: &'a mut W,
    observer: &'a dyn Observer,
    results: Vec<ActionOutcome>,
    state: State,
}

/// What the actions so far did, which decides what the next ones may do.
#[derive(Default)]
struct State {
    /// Snapshot names as they are now, by uuid, for the snapshots renamed so far.
    names: HashMap<Uuid, String>,
    /// Uploads that did not happen: (remote, snapshot uuid).
    missing_uploads: BTreeSet<(String, Uuid)>,
    /// (remote, source) pairs with an upload that did not happen.
    failed_pairs: BTreeSet<(String, PathBuf)>,
    /// Snapshots that an upload which did not succeed sends or sends against.
    unfinished_needs: BTreeSet<Uuid>,
    /// Backups whose lock could not be extended: (remote, snapshot uuid).
    unlocked: BTreeSet<(String, Uuid)>,
}

impl State {
    /// The snapshot under its name as it is now (after the renames so far).
    fn current(&self, snapshot: &SnapshotRef) -> SnapshotRef {
        match self.names.get(&snapshot.uuid) {
            Some(name) => SnapshotRef {
                name: name.clone(),
                ..snapshot.clone()
            },
            None => snapshot.clone(),
        }
    }

    /// Why an upload cannot be done now, if it cannot: its send parent's upload or lock
    /// extension in its remote did not happen.
    fn blocked(&self, spec: &UploadSpec) -> Option<SkipReason> {
        let parent = spec.send_parent.as_ref()?;
        let id = (spec.remote.clone(), parent.uuid);
        if self.missing_uploads.contains(&id) {
            Some(SkipReason::SendParentNotUploaded {
                parent: parent.name.clone(),
                remote: spec.remote.clone(),
            })
        } else if self.unlocked.contains(&id) {
            // Its lock would outlast its send parent's: a chain ransomware could break.
            Some(SkipReason::SendParentNotLocked {
                parent: parent.name.clone(),
                remote: spec.remote.clone(),
            })
        } else {
            None
        }
    }

    /// Notes how an upload went: one that did not happen blocks its children and the deletes
    /// of its pair, and keeps its snapshots for the retry.
    fn upload_ended(&mut self, spec: &UploadSpec, result: &ActionResult) {
        if !matches!(result, ActionResult::Done { .. }) {
            self.missing_uploads
                .insert((spec.remote.clone(), spec.snapshot.uuid));
            self.failed_pairs
                .insert((spec.remote.clone(), spec.source.clone()));
            self.unfinished_needs.insert(spec.snapshot.uuid);
            self.unfinished_needs
                .extend(spec.send_parent.as_ref().map(|p| p.uuid));
        }
    }
}

impl<W: World> Executor<'_, W> {
    fn record(&mut self, action: &Action, result: ActionResult) {
        self.observer.finished(action, &result);
        self.results.push(ActionOutcome {
            action: action.clone(),
            result,
        });
    }

    async fn rename(&mut self, action: &Action, rename: &Rename) -> ActionResult {
        self.observer.started(action);
        let result = self
            .world
            .rename_snapshot(&rename.snapshot, &rename.to)
            .await;
        if result.is_ok() {
            self.state
                .names
                .insert(rename.snapshot.uuid, rename.to.clone());
            crate::failpoint::hit("renamed");
        }
        done_or_failed(result.map(|()| None))
    }

    async fn extend_lock(&mut self, action: &Action, extend: &ExtendLock) -> ActionResult {
        self.observer.started(action);
        let result = done_or_failed(self.world.extend_lock(extend).await.map(|()| None));
        if !matches!(result, ActionResult::Done { .. }) {
            self.state
                .unlocked
                .insert((extend.remote.clone(), extend.uuid));
        }
        result
    }

    /// Runs the plan's uploads: those that share a stream (see [`shared_streams`]) as one,
    /// up to `parallel` streams at a time, each once every upload its uploads are sent
    /// against (in the same remote) has ended. Results are recorded in plan order.
    async fn uploads(
        &mut self,
        uploads: &[(&Action, &Upload)],
        parallel: usize,
        cancel: &CancellationToken,
    ) {
        use futures_util::StreamExt;

        let mut phase = UploadPhase::new(uploads);
        let Executor {
            world,
            observer,
            results: outcomes,
            state,
        } = self;
        let observer = *observer;
        let uploader = world.uploader();
        let mut in_flight = futures_util::stream::FuturesUnordered::new();
        loop {
            while in_flight.len() < parallel {
                let Some((stream, current)) = phase.next_ready(state, observer, cancel) else {
                    break;
                };
                let actions = phase.actions(stream);
                observer.streaming(stream, &actions);
                let uploader = &uploader;
                in_flight.push(async move {
                    let progress = |bytes: u64| {
                        crate::failpoint::hit("upload-progress");
                        observer.progress(stream, bytes);
                    };
                    (stream, uploader.upload(&current, &progress).await)
                });
            }
            let Some((stream, result)) = in_flight.next().await else {
                break;
            };
            phase.ended(stream, result, state, observer);
        }
        outcomes.extend(phase.outcomes());
    }

    async fn destroy(&mut self, action: &Action, destroy: &Destroy) -> ActionResult {
        let snapshot = self.state.current(&destroy.snapshot);
        if self.state.unfinished_needs.contains(&snapshot.uuid) {
            return skipped(SkipReason::NeededForRetry {
                snapshot: snapshot.name,
            });
        }
        self.observer.started(action);
        let result = self.world.destroy_snapshot(&snapshot).await;
        if result.is_ok() {
            crate::failpoint::hit("destroyed");
        }
        done_or_failed(result.map(|()| None))
    }

    async fn delete(&mut self, remote: &str, actions: Vec<(&Action, &Delete)>) {
        let (waiting, to_delete): (Vec<_>, Vec<_>) =
            actions.into_iter().partition(|(_, delete)| {
                self.state
                    .failed_pairs
                    .contains(&(remote.to_owned(), delete.source.clone()))
            });
        for (action, _) in waiting {
            self.record(
                action,
                skipped(SkipReason::UploadFailed {
                    remote: remote.to_owned(),
                }),
            );
        }
        if to_delete.is_empty() {
            return;
        }
        let keys: Vec<Arc<str>> = to_delete
            .iter()
            .flat_map(|(_, delete)| [&delete.key].into_iter().chain(&delete.pieces))
            .cloned()
            .collect();
        for (action, _) in &to_delete {
            self.observer.started(action);
        }
        crate::failpoint::hit("deleting");
        let result = done_or_failed(
            self.world
                .delete_backups(remote, &keys)
                .await
                .map(|()| None),
        );
        for (action, _) in to_delete {
            self.record(action, result.clone());
        }
    }
}

/// The upload phase of an execution: which streams wait for which, and how each upload went.
struct UploadPhase<'p> {
    uploads: &'p [(&'p Action, &'p Upload)],
    /// The uploads of each stream (indexes into `uploads`); once it starts, those that go.
    streams: Vec<Vec<usize>>,
    /// The streams each stream waits for.
    waiting: Vec<BTreeSet<usize>>,
    started: Vec<bool>,
    results: Vec<Option<ActionResult>>,
}

impl<'p> UploadPhase<'p> {
    fn new(uploads: &'p [(&'p Action, &'p Upload)]) -> UploadPhase<'p> {
        let specs: Vec<&UploadSpec> = uploads.iter().map(|(_, upload)| &upload.spec).collect();
        let streams = shared_streams(&specs);
        let mut producer: HashMap<(&str, Uuid), usize> = HashMap::new();
        for (stream, members) in streams.iter().enumerate() {
            for &member in members {
                producer.insert((&specs[member].remote, specs[member].snapshot.uuid), stream);
            }
        }
        let waiting = streams
            .iter()
            .map(|members| {
                members
                    .iter()
                    .filter_map(|&member| {
                        let parent = specs[member].send_parent.as_ref()?;
                        producer
                            .get(&(specs[member].remote.as_str(), parent.uuid))
                            .copied()
                    })
                    .collect()
            })
            .collect();
        UploadPhase {
            uploads,
            started: vec![false; streams.len()],
            results: vec![None; uploads.len()],
            streams,
            waiting,
        }
    }

    fn spec(&self, member: usize) -> &'p UploadSpec {
        &self.uploads[member].1.spec
    }

    /// The actions of a started stream.
    fn actions(&self, stream: usize) -> Vec<&'p Action> {
        self.streams[stream]
            .iter()
            .map(|&member| self.uploads[member].0)
            .collect()
    }

    /// The first stream, in plan order, that waits for nothing more, with the uploads of it
    /// that can go (under the snapshots' current names); the others are recorded as skipped.
    fn next_ready(
        &mut self,
        state: &mut State,
        observer: &dyn Observer,
        cancel: &CancellationToken,
    ) -> Option<(usize, Vec<UploadSpec>)> {
        loop {
            let stream = (0..self.streams.len())
                .find(|&s| !self.started[s] && self.waiting[s].is_empty())?;
            self.started[stream] = true;
            let mut runnable = Vec::new();
            for member in std::mem::take(&mut self.streams[stream]) {
                let spec = self.spec(member);
                let reason = if cancel.is_cancelled() {
                    Some(SkipReason::Interrupted)
                } else {
                    state.blocked(spec)
                };
                match reason {
                    Some(reason) => self.record(member, skipped(reason), state, observer),
                    None => runnable.push(member),
                }
            }
            if runnable.is_empty() {
                // Nothing to wait for: the streams waiting on it may look again.
                self.unblock(stream);
                continue;
            }
            let current = runnable
                .iter()
                .map(|&member| {
                    let spec = self.spec(member);
                    UploadSpec {
                        snapshot: state.current(&spec.snapshot),
                        send_parent: spec.send_parent.as_ref().map(|p| state.current(p)),
                        ..spec.clone()
                    }
                })
                .collect();
            self.streams[stream] = runnable;
            return Some((stream, current));
        }
    }

    /// A stream ended with `result` (see [`Uploader::upload`]).
    fn ended(
        &mut self,
        stream: usize,
        result: Result<Vec<Result<u64, WorldError>>, WorldError>,
        state: &mut State,
        observer: &dyn Observer,
    ) {
        let members = std::mem::take(&mut self.streams[stream]);
        let results: Vec<ActionResult> = match result {
            Ok(each) => each
                .into_iter()
                .map(|result| done_or_failed(result.map(Some)))
                .collect(),
            Err(error) => {
                // The stream failed: every upload it fed did.
                let error = ActionError::from(error);
                members
                    .iter()
                    .map(|_| ActionResult::Failed {
                        error: error.clone(),
                    })
                    .collect()
            }
        };
        for (member, result) in members.into_iter().zip(results) {
            if matches!(result, ActionResult::Done { .. }) {
                crate::failpoint::hit("uploaded");
            }
            self.record(member, result, state, observer);
        }
        self.unblock(stream);
    }

    fn record(
        &mut self,
        member: usize,
        result: ActionResult,
        state: &mut State,
        observer: &dyn Observer,
    ) {
        observer.finished(self.uploads[member].0, &result);
        state.upload_ended(self.spec(member), &result);
        self.results[member] = Some(result);
    }

    fn unblock(&mut self, stream: usize) {
        for waits in &mut self.waiting {
            waits.remove(&stream);
        }
    }

    /// Every upload with its result, in plan order.
    fn outcomes(self) -> impl Iterator<Item = ActionOutcome> + 'p {
        self.uploads
            .iter()
            .zip(self.results)
            .map(|((action, _), result)| ActionOutcome {
                action: (*action).clone(),
                // Every stream ends: dependencies point to earlier snapshots, so none waits
                // forever.
                result: result.unwrap_or_else(|| skipped(SkipReason::Interrupted)),
            })
    }
}

/// What makes a stream: snapshot, send parent, commands, format.
type StreamId<'s> = (
    Uuid,
    Option<Uuid>,
    &'s [crate::pipeline::PipeCommand],
    crate::config::SendProtocol,
);

/// The uploads (indexes into `specs`, in order) that share one stream: the same snapshot
/// sent against the same parent in the same format through the same commands, to different
/// remotes. The streams
/// are in the order of their first upload.
#[must_use]
pub fn shared_streams(specs: &[&UploadSpec]) -> Vec<Vec<usize>> {
    let mut streams: Vec<Vec<usize>> = Vec::new();
    let mut by_stream: HashMap<StreamId<'_>, usize> = HashMap::new();
    for (index, spec) in specs.iter().enumerate() {
        let id = (
            spec.snapshot.uuid,
            spec.send_parent.as_ref().map(|parent| parent.uuid),
            spec.pipe_through.as_slice(),
            spec.send_protocol,
        );
        match by_stream.get(&id) {
            // One object per remote in a stream.
            Some(&stream)
                if !streams[stream]
                    .iter()
                    .any(|&member| specs[member].remote == spec.remote) =>
            {
                streams[stream].push(index);
            }
            _ => {
                by_stream.insert(id, streams.len());
                streams.push(vec![index]);
            }
        }
    }
    streams
}

fn skipped(reason: SkipReason) -> ActionResult {
    ActionResult::Skipped { reason }
}

fn done_or_failed(result: Result<Option<u64>, WorldError>) -> ActionResult {
    match result {
        Ok(bytes) => ActionResult::Done { bytes },
        Err(error) => ActionResult::Failed {
            error: error.into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeWorld;
    use crate::plan::plan;

    fn run(world: &mut FakeWorld) -> (Plan, Outcome) {
        let plan = plan(&world.assessment()).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let outcome =
            runtime.block_on(execute(&plan, world, &Silent, &CancellationToken::new(), 2));
        (plan, outcome)
    }

    /// A source with a yearly, a monthly and a daily snapshot, none backed up yet, one old
    /// snapshot to destroy and one old backup to delete.
    fn history() -> FakeWorld {
        let mut world = FakeWorld::new("UTC", "2026-03-08T12:00:00Z");
        world.add_source("home", 1, &[("aws", "1y 1m 1d")]);
        world.add_snapshot(0, "old", 1, "2025-06-01T00:00:00Z", 50);
        world.add_backup(0, "aws", 1, None);
        world.add_snapshot(0, "y", 2, "2026-01-02T00:00:00Z", 100);
        world.add_snapshot(0, "m", 3, "2026-03-01T00:00:00Z", 200);
        world.add_snapshot(0, "home.NEW.1", 4, "2026-03-08T11:00:00Z", 300);
        world
    }

    #[test]
    fn actions_run_in_order_and_uploads_use_the_new_names() {
        let mut world = history();
        let (_, outcome) = run(&mut world);
        assert!(outcome.succeeded(), "{outcome:?}");
        let kinds: Vec<&str> = world
            .log
            .iter()
            .map(|line| line.split(' ').next().unwrap())
            .collect();
        let first = |kind: &str| kinds.iter().position(|k| *k == kind).unwrap();
        let last = |kind: &str| kinds.iter().rposition(|k| *k == kind).unwrap();
        assert!(last("rename") < first("upload"));
        assert!(last("upload") < first("destroy"));
        assert!(last("destroy") < first("delete"));
        // The upload of the renamed snapshot found it under its new name.
        assert!(
            world
                .log
                .contains(&"upload aws home.2026-03-08T11:00:00+00:00.300".to_owned()),
            "{:?}",
            world.log
        );
    }

    fn run_with(world: &mut FakeWorld, parallel: usize) -> Outcome {
        let plan = plan(&world.assessment()).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(execute(
            &plan,
            world,
            &Silent,
            &CancellationToken::new(),
            parallel,
        ))
    }

    /// [`history`] backed up to two remotes alike.
    fn two_remotes() -> FakeWorld {
        let mut world = FakeWorld::new("UTC", "2026-03-08T12:00:00Z");
        world.add_source("home", 1, &[("aws", "1y 1m 1d"), ("b2", "1y 1m 1d")]);
        world.add_snapshot(0, "y", 2, "2026-01-02T00:00:00Z", 100);
        world.add_snapshot(0, "m", 3, "2026-03-01T00:00:00Z", 200);
        world.add_snapshot(0, "d", 4, "2026-03-08T11:00:00Z", 300);
        world
    }

    /// The streams of the log: `send <ctransid> <remotes>`.
    fn sends(world: &FakeWorld) -> Vec<String> {
        world
            .log
            .iter()
            .filter_map(|line| {
                let mut words = line.strip_prefix("send ")?.split(' ');
                let name = words.next()?;
                let ctransid = name.rsplit('.').next()?;
                Some(format!("send {ctransid} {}", words.next()?))
            })
            .collect()
    }

    #[test]
    fn one_stream_feeds_every_remote_of_a_snapshot() {
        let mut world = two_remotes();
        let outcome = run_with(&mut world, 2);
        assert!(outcome.succeeded(), "{outcome:?}");
        assert_eq!(
            sends(&world),
            ["send 100 aws,b2", "send 200 aws,b2", "send 300 aws,b2"]
        );
        assert_eq!(world.objects["aws"].len(), 3);
        assert_eq!(world.objects["b2"].len(), 3);
        // One result per upload.
        let uploads = outcome
            .results
            .iter()
            .filter(|outcome| matches!(outcome.action, Action::Upload(_)))
            .count();
        assert_eq!(uploads, 6);
    }

    #[test]
    fn a_remote_that_fails_fails_alone_and_its_children_wait() {
        let mut world = two_remotes();
        world.add_snapshot(0, "old", 1, "2025-06-01T00:00:00Z", 50);
        world.add_backup(0, "b2", 1, None);
        world.failing_remotes.insert("b2".to_owned());
        let outcome = run_with(&mut world, 2);
        let result_of = |remote: &str, name: &str| {
            outcome
                .results
                .iter()
                .find(|outcome| match &outcome.action {
                    Action::Upload(upload) => {
                        upload.spec.remote == remote && upload.spec.snapshot.name == name
                    }
                    _ => false,
                })
                .map(|outcome| outcome.result.clone())
                .unwrap()
        };
        for name in ["y", "m", "d"] {
            assert!(
                matches!(result_of("aws", name), ActionResult::Done { .. }),
                "{name}: {outcome:?}"
            );
        }
        assert!(matches!(result_of("b2", "y"), ActionResult::Failed { .. }));
        assert_eq!(
            result_of("b2", "m"),
            skipped(SkipReason::SendParentNotUploaded {
                parent: "y".to_owned(),
                remote: "b2".to_owned()
            })
        );
        // The children went to the remote that works, alone in their streams.
        assert_eq!(
            sends(&world),
            ["send 100 aws,b2", "send 200 aws", "send 300 aws"]
        );
        // The old backup in the failing remote stays until its replacement is there.
        let delete = outcome
            .results
            .iter()
            .find(|outcome| matches!(outcome.action, Action::Delete(_)))
            .unwrap();
        assert_eq!(
            delete.result,
            skipped(SkipReason::UploadFailed {
                remote: "b2".to_owned()
            })
        );
    }

    #[test]
    fn streams_run_side_by_side_up_to_the_limit_and_children_after_parents() {
        for (parallel, expected) in [(1, 1), (2, 2), (3, 3), (8, 3)] {
            let mut world = FakeWorld::new("UTC", "2026-03-08T12:00:00Z");
            for source in 0..3 {
                let name = format!("s{source}");
                world.add_source(&name, 1 + source as u128, &[("aws", "1y 1m 1d")]);
                let id = 10 * (source as u64 + 1);
                world.add_snapshot(source, "y", id, "2026-01-02T00:00:00Z", 100);
                world.add_snapshot(source, "m", id + 1, "2026-03-01T00:00:00Z", 200);
                world.add_snapshot(source, "d", id + 2, "2026-03-08T11:00:00Z", 300);
            }
            world.yields_per_stream = 5;
            let outcome = run_with(&mut world, parallel);
            assert!(outcome.succeeded(), "{outcome:?}");
            assert_eq!(
                world.most_streams_in_flight, expected,
                "parallel {parallel}: {:?}",
                world.log
            );
            // Every differential started after its parent's upload ended.
            let position = |line: String| {
                world
                    .log
                    .iter()
                    .position(|l| *l == line)
                    .unwrap_or_else(|| panic!("{line}: {:?}", world.log))
            };
            for source in 0..3 {
                let name = |date: &str, ctransid: u32| format!("s{source}.{date}+00:00.{ctransid}");
                let yearly = name("2026-01-02T00:00:00", 100);
                let monthly = name("2026-03-01T00:00:00", 200);
                let daily = name("2026-03-08T11:00:00", 300);
                assert!(
                    position(format!("upload aws {yearly}"))
                        < position(format!("send {monthly} aws")),
                    "{:?}",
                    world.log
                );
                assert!(
                    position(format!("upload aws {monthly}"))
                        < position(format!("send {daily} aws")),
                    "{:?}",
                    world.log
                );
            }
        }
    }

    #[test]
    fn streams_share_snapshot_parent_and_commands_and_one_object_per_remote() {
        let spec = |remote: &str, snapshot: u128, parent: Option<u128>, pipe: &[&str]| {
            let reference = |uuid: u128| SnapshotRef {
                directory: "/pool/.snapshots".into(),
                name: format!("s{uuid}"),
                id: Some(1),
                uuid: Uuid::from_u128(uuid),
            };
            UploadSpec {
                remote: remote.to_owned(),
                key: format!("{remote}-{snapshot}").into(),
                source: "/pool/home".into(),
                snapshot: reference(snapshot),
                send_parent: parent.map(reference),
                pipe_through: pipe
                    .iter()
                    .map(|c| crate::pipeline::PipeCommand::new(vec![(*c).to_owned()]))
                    .collect(),
                send_protocol: crate::config::SendProtocol::V1,
                options: btrfs2s3_s3::UploadOptions::default(),
            }
        };
        let v2 = |spec: UploadSpec| UploadSpec {
            send_protocol: crate::config::SendProtocol::V2,
            ..spec
        };
        let cases: Vec<(Vec<UploadSpec>, Vec<Vec<usize>>)> = vec![
            (vec![], vec![]),
            (vec![spec("a", 1, None, &[])], vec![vec![0]]),
            (
                vec![spec("a", 1, None, &[]), spec("b", 1, None, &[])],
                vec![vec![0, 1]],
            ),
            // Another send parent, other commands: other streams.
            (
                vec![
                    spec("a", 2, Some(1), &[]),
                    spec("b", 2, None, &[]),
                    spec("c", 2, Some(1), &["gzip"]),
                    spec("d", 2, Some(1), &[]),
                ],
                vec![vec![0, 3], vec![1], vec![2]],
            ),
            // Interleaved snapshots keep the order of their first upload.
            (
                vec![
                    spec("a", 1, None, &[]),
                    spec("a", 2, Some(1), &[]),
                    spec("b", 1, None, &[]),
                    spec("b", 2, Some(1), &[]),
                ],
                vec![vec![0, 2], vec![1, 3]],
            ),
            // Another stream format: another stream.
            (
                vec![spec("a", 1, None, &[]), v2(spec("b", 1, None, &[]))],
                vec![vec![0], vec![1]],
            ),
            // Never two objects of one remote in a stream.
            (
                vec![spec("a", 1, None, &[]), spec("a", 1, None, &[])],
                vec![vec![0], vec![1]],
            ),
        ];
        for (specs, expected) in cases {
            let refs: Vec<&UploadSpec> = specs.iter().collect();
            assert_eq!(shared_streams(&refs), expected, "{specs:?}");
        }
    }

    #[test]
    fn running_the_plan_leaves_nothing_to_do() {
        let mut world = history();
        let (_, outcome) = run(&mut world);
        assert!(outcome.succeeded());
        let again = plan(&world.assessment()).unwrap();
        assert!(!again.has_work(), "{:?}", again.actions);
    }

    #[test]
    fn a_failed_upload_skips_what_depends_on_it_and_nothing_else() {
        let mut world = history();
        world.add_source("media", 2, &[("aws", "1d")]);
        world.add_snapshot(1, "media.NEW.1", 9, "2026-03-08T11:00:00Z", 310);
        let first_plan = plan(&world.assessment()).unwrap();
        // Make the monthly upload fail: the daily one is sent against it.
        let monthly_key = first_plan
            .actions
            .iter()
            .find_map(|a| match a {
                Action::Upload(upload) if upload.spec.snapshot.name == "m" => {
                    Some(upload.spec.key.clone())
                }
                _ => None,
            })
            .unwrap();
        world.failing_keys.insert(monthly_key.to_string());
        let (_, outcome) = run(&mut world);
        assert!(!outcome.succeeded());
        let result_of = |name: &str| {
            outcome
                .results
                .iter()
                .find(|outcome| match &outcome.action {
                    Action::Upload(upload) => upload.spec.snapshot.name == name,
                    _ => false,
                })
                .map(|outcome| outcome.result.clone())
                .unwrap()
        };
        assert!(matches!(result_of("y"), ActionResult::Done { .. }));
        assert!(matches!(result_of("m"), ActionResult::Failed { .. }));
        assert_eq!(
            result_of("home.NEW.1"),
            ActionResult::Skipped {
                reason: SkipReason::SendParentNotUploaded {
                    parent: "m".to_owned(),
                    remote: "aws".to_owned()
                }
            }
        );
        // The other source is not affected.
        assert!(matches!(
            result_of("media.NEW.1"),
            ActionResult::Done { .. }
        ));
        // The old backup of `home` stays while its uploads are failing; the snapshot goes.
        let delete = outcome
            .results
            .iter()
            .find(|outcome| matches!(outcome.action, Action::Delete(_)))
            .unwrap();
        assert_eq!(
            delete.result,
            ActionResult::Skipped {
                reason: SkipReason::UploadFailed {
                    remote: "aws".to_owned()
                }
            }
        );
        assert!(world.log.contains(&"destroy old".to_owned()));
        // The next run, without the failure, finishes the job.
        world.failing_keys.clear();
        let (_, outcome) = run(&mut world);
        assert!(outcome.succeeded(), "{outcome:?}");
        assert!(!plan(&world.assessment()).unwrap().has_work());
    }

    #[test]
    fn a_failed_rename_does_not_stop_the_uploads() {
        let mut world = history();
        world.failing_snapshots.insert("home.NEW.1".to_owned());
        let (_, outcome) = run(&mut world);
        let failed: Vec<_> = outcome
            .problems()
            .map(|outcome| outcome.action.clone())
            .collect();
        // The rename fails, and so does the upload of that snapshot (the fake refuses to touch
        // it); the yearly and monthly uploads and the cleanup still happen.
        assert!(failed.iter().any(|a| matches!(a, Action::Rename(_))));
        let uploads: Vec<&String> = world
            .log
            .iter()
            .filter(|l| l.starts_with("upload"))
            .collect();
        assert_eq!(uploads.len(), 2, "{uploads:?}");
        assert!(world.log.iter().any(|l| l == "destroy old"));
    }

    #[test]
    fn a_snapshot_an_unfinished_upload_needs_is_kept() {
        // The policy no longer keeps the yearly snapshot (now is years later), but the new
        // most recent snapshot's backup is a differential against it: the plan uploads,
        // then destroys it.
        let mut world = FakeWorld::new("UTC", "2030-03-08T12:00:00Z");
        world.add_source("home", 1, &[("aws", "1y")]);
        world.add_snapshot(
            0,
            "home.2026-01-02T00:00:00+00:00.100",
            1,
            "2026-01-02T00:00:00Z",
            100,
        );
        world.add_backup(0, "aws", 1, None);
        world.add_snapshot(0, "home.NEW.2", 2, "2026-03-08T11:00:00Z", 300);
        let plan = plan(&world.assessment()).unwrap();
        let parent_destroyed = plan
            .actions
            .iter()
            .any(|a| matches!(a, Action::Destroy(destroy) if destroy.snapshot.id == Some(1)));
        let uploads_against_it = plan.actions.iter().any(|a| {
            matches!(a, Action::Upload(upload)
                if upload.spec.send_parent.as_ref().is_some_and(|parent| parent.id == Some(1)))
        });
        assert!(parent_destroyed && uploads_against_it, "{:?}", plan.actions);

        // The upload fails: the parent stays for the retry.
        let mut failing = world.clone();
        failing
            .failing_keys
            .extend(plan.actions.iter().filter_map(|a| match a {
                Action::Upload(upload) => Some(upload.spec.key.to_string()),
                _ => None,
            }));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let outcome = runtime.block_on(execute(
            &plan,
            &mut failing,
            &Silent,
            &CancellationToken::new(),
            2,
        ));
        let destroy = outcome
            .results
            .iter()
            .find(|outcome| matches!(outcome.action, Action::Destroy(_)))
            .unwrap();
        assert!(
            matches!(&destroy.result, ActionResult::Skipped { reason: SkipReason::NeededForRetry { snapshot } }
                if snapshot == "home.2026-01-02T00:00:00+00:00.100"),
            "{destroy:?}"
        );
        assert!(!failing.log.iter().any(|l| l.starts_with("destroy")));

        // The upload succeeds: the parent goes after it, its backup stays as an ancestor.
        let outcome = runtime.block_on(execute(
            &plan,
            &mut world,
            &Silent,
            &CancellationToken::new(),
            2,
        ));
        assert!(outcome.succeeded(), "{outcome:?}");
        let upload = world
            .log
            .iter()
            .position(|l| l.starts_with("upload"))
            .unwrap();
        let destroy = world
            .log
            .iter()
            .position(|l| l.starts_with("destroy"))
            .unwrap();
        assert!(upload < destroy);
        assert!(!crate::plan::plan(&world.assessment()).unwrap().has_work());
    }
}
