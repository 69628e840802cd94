//! The executor: runs a [`Plan`] through the narrow [`World`] interface (snapshots on disk,
//! objects in buckets), in order — renames, uploads, destroys, deletes — and goes on after a
//! failure with whatever does not depend on it.
//!
//! What depends on what:
//! - an upload whose send parent is uploaded by the same plan waits for it; if that upload
//!   fails, this one is skipped (its object would be a broken chain);
//! - deletes in a remote for a source are skipped when an upload of that source to that
//!   remote failed: the backups the plan deletes may be the ones the failed upload replaces;
//! - a snapshot an upload sends (or sends against) is destroyed only if that upload
//!   succeeded; otherwise it stays for the next run's retry.
//!
//! The next run plans the skipped and failed work again.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::plan::{Action, Plan, SnapshotRef};

/// An error of the outside world, as a message chain.
pub type WorldError = Box<dyn std::error::Error + Send + Sync>;

/// What one upload needs, with snapshot names as they are now (after renames).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadJob<'a> {
    /// The remote.
    pub remote: &'a str,
    /// The object key.
    pub key: &'a str,
    /// The snapshot directory.
    pub directory: &'a Path,
    /// The snapshot's current name and subvolume id.
    pub snapshot: (&'a str, u64),
    /// The send parent's current name and subvolume id.
    pub send_parent: Option<(&'a str, u64)>,
    /// The commands the stream goes through.
    pub pipe_through: &'a [Vec<String>],
}

/// The outside world, as the executor sees it. The real one is
/// [`crate::update::RealWorld`]; tests use an in-memory fake.
#[allow(async_fn_in_trait)] // used with concrete types only, never as `dyn World`
pub trait World {
    /// Renames snapshot `from` (subvolume `id`) to `to` in `directory`.
    fn rename_snapshot(
        &mut self,
        directory: &Path,
        from: &str,
        to: &str,
        id: u64,
    ) -> Result<(), WorldError>;
    /// Destroys snapshot `name` (subvolume `id`) in `directory`.
    fn destroy_snapshot(&mut self, directory: &Path, name: &str, id: u64)
    -> Result<(), WorldError>;
    /// Streams the snapshot into the object; returns the number of bytes stored.
    async fn upload(
        &mut self,
        job: &UploadJob<'_>,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<u64, WorldError>;
    /// Deletes objects from a remote; fails if any of them was not deleted.
    async fn delete_backups(&mut self, remote: &str, keys: &[Arc<str>]) -> Result<(), WorldError>;
    /// Aborts a multipart upload.
    async fn abort_upload(
        &mut self,
        remote: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<(), WorldError>;
}

/// Hears about progress, for the user.
pub trait Observer: Sync {
    /// An action starts.
    fn started(&self, action: &Action);
    /// An upload has read this many bytes so far.
    fn progress(&self, bytes: u64);
    /// An action ended.
    fn finished(&self, action: &Action, result: &ActionResult);
}

/// An observer that hears nothing.
pub struct Silent;

impl Observer for Silent {
    fn started(&self, _: &Action) {}
    fn progress(&self, _: u64) {}
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
    /// Failed, with the error and its causes.
    Failed {
        /// The message.
        error: String,
    },
    /// Not attempted, because something it depends on failed.
    Skipped {
        /// Why.
        reason: String,
    },
}

/// The result of every action of a plan, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// Each action with its result.
    pub results: Vec<(Action, ActionResult)>,
}

impl Outcome {
    /// Whether every action was done.
    #[must_use]
    pub fn succeeded(&self) -> bool {
        self.results
            .iter()
            .all(|(_, result)| matches!(result, ActionResult::Done { .. }))
    }

    /// The actions that failed or were skipped, with why.
    pub fn problems(&self) -> impl Iterator<Item = &(Action, ActionResult)> {
        self.results
            .iter()
            .filter(|(_, result)| !matches!(result, ActionResult::Done { .. }))
    }
}

/// Renders an error and all its causes on one line.
#[must_use]
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Runs `plan` against `world`. When `cancel` is cancelled (Ctrl-C), the action in flight
/// stops (an upload is aborted) and the remaining ones are skipped.
pub async fn execute<W: World>(
    plan: &Plan,
    world: &mut W,
    observer: &dyn Observer,
    cancel: &CancellationToken,
) -> Outcome {
    let mut executor = Executor {
        world,
        observer,
        results: Vec::with_capacity(plan.actions.len()),
        names: HashMap::new(),
        missing_uploads: BTreeSet::new(),
        failed_pairs: BTreeSet::new(),
        unfinished_needs: BTreeSet::new(),
    };
    let mut deletes: BTreeMap<&str, Vec<&Action>> = BTreeMap::new();
    for action in &plan.actions {
        if cancel.is_cancelled() {
            executor.record(action, interrupted());
            continue;
        }
        let result = match action {
            Action::AbortUpload {
                remote,
                key,
                upload_id,
            } => {
                observer.started(action);
                done_or_failed(
                    executor
                        .world
                        .abort_upload(remote, key, upload_id)
                        .await
                        .map(|()| None),
                )
            }
            Action::CreateSnapshot { .. } => ActionResult::Skipped {
                reason: "a planned snapshot is only created by a real run".to_owned(),
            },
            Action::Rename { snapshot, to } => executor.rename(action, snapshot, to),
            Action::Upload { .. } => executor.upload(action).await,
            Action::Destroy { snapshot } => executor.destroy(action, snapshot),
            Action::Delete { remote, .. } => {
                // Deletes are batched per remote, after everything else.
                deletes.entry(remote).or_default().push(action);
                continue;
            }
        };
        executor.record(action, result);
    }
    for (remote, actions) in deletes {
        if cancel.is_cancelled() {
            for action in actions {
                executor.record(action, interrupted());
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
    results: Vec<(Action, ActionResult)>,
    /// Snapshot names as they are now: (directory, id) -> name.
    names: HashMap<(PathBuf, u64), String>,
    /// Uploads that did not happen: (remote, snapshot uuid).
    missing_uploads: BTreeSet<(String, Uuid)>,
    /// (remote, source) pairs with an upload that did not happen.
    failed_pairs: BTreeSet<(String, PathBuf)>,
    /// Snapshots that an upload which did not succeed sends or sends against.
    unfinished_needs: BTreeSet<Uuid>,
}

impl<W: World> Executor<'_, W> {
    fn record(&mut self, action: &Action, result: ActionResult) {
        self.observer.finished(action, &result);
        self.results.push((action.clone(), result));
    }

    fn current_name(&self, snapshot: &SnapshotRef) -> String {
        self.names
            .get(&(snapshot.directory.clone(), snapshot.id))
            .cloned()
            .unwrap_or_else(|| snapshot.name.clone())
    }

    fn rename(&mut self, action: &Action, snapshot: &SnapshotRef, to: &str) -> ActionResult {
        self.observer.started(action);
        let result =
            self.world
                .rename_snapshot(&snapshot.directory, &snapshot.name, to, snapshot.id);
        if result.is_ok() {
            self.names
                .insert((snapshot.directory.clone(), snapshot.id), to.to_owned());
            crate::failpoint::hit("renamed");
        }
        done_or_failed(result.map(|()| None))
    }

    async fn upload(&mut self, action: &Action) -> ActionResult {
        let Action::Upload {
            remote,
            key,
            source,
            snapshot,
            send_parent,
            pipe_through,
            ..
        } = action
        else {
            unreachable!("upload() is called with uploads only")
        };
        let parent_missing = send_parent.as_ref().filter(|parent| {
            self.missing_uploads
                .contains(&(remote.clone(), parent.uuid))
        });
        let result = if let Some(parent) = parent_missing {
            ActionResult::Skipped {
                reason: format!(
                    "its send parent {} was not uploaded to {remote} in this run",
                    parent.name
                ),
            }
        } else {
            self.observer.started(action);
            let snapshot_name = self.current_name(snapshot);
            let parent_name = send_parent.as_ref().map(|p| (self.current_name(p), p.id));
            let job = UploadJob {
                remote,
                key,
                directory: &snapshot.directory,
                snapshot: (&snapshot_name, snapshot.id),
                send_parent: parent_name.as_ref().map(|(name, id)| (name.as_str(), *id)),
                pipe_through,
            };
            let observer = self.observer;
            let progress = |bytes: u64| {
                crate::failpoint::hit("upload-progress");
                observer.progress(bytes);
            };
            let result = self.world.upload(&job, &progress).await;
            if result.is_ok() {
                crate::failpoint::hit("uploaded");
            }
            done_or_failed(result.map(Some))
        };
        if !matches!(result, ActionResult::Done { .. }) {
            self.missing_uploads.insert((remote.clone(), snapshot.uuid));
            self.failed_pairs.insert((remote.clone(), source.clone()));
            self.unfinished_needs.insert(snapshot.uuid);
            self.unfinished_needs
                .extend(send_parent.as_ref().map(|p| p.uuid));
        }
        result
    }

    fn destroy(&mut self, action: &Action, snapshot: &SnapshotRef) -> ActionResult {
        if self.unfinished_needs.contains(&snapshot.uuid) {
            return ActionResult::Skipped {
                reason: format!(
                    "an upload that uses {} did not succeed; it stays for the retry",
                    snapshot.name
                ),
            };
        }
        self.observer.started(action);
        let name = self.current_name(snapshot);
        let result = self
            .world
            .destroy_snapshot(&snapshot.directory, &name, snapshot.id);
        if result.is_ok() {
            crate::failpoint::hit("destroyed");
        }
        done_or_failed(result.map(|()| None))
    }

    async fn delete(&mut self, remote: &str, actions: Vec<&Action>) {
        let (skipped, to_delete): (Vec<&Action>, Vec<&Action>) =
            actions.into_iter().partition(|action| {
                matches!(action, Action::Delete { source, .. }
                    if self.failed_pairs.contains(&(remote.to_owned(), source.clone())))
            });
        for action in skipped {
            self.record(
                action,
                ActionResult::Skipped {
                    reason: format!(
                        "an upload of this source to {remote} failed; its old backups stay until it succeeds"
                    ),
                },
            );
        }
        if to_delete.is_empty() {
            return;
        }
        let keys: Vec<Arc<str>> = to_delete
            .iter()
            .filter_map(|action| match action {
                Action::Delete { key, .. } => Some(key.clone()),
                _ => None,
            })
            .collect();
        for action in &to_delete {
            self.observer.started(action);
        }
        crate::failpoint::hit("deleting");
        let result = done_or_failed(
            self.world
                .delete_backups(remote, &keys)
                .await
                .map(|()| None),
        );
        for action in to_delete {
            self.record(action, result.clone());
        }
    }
}

fn interrupted() -> ActionResult {
    ActionResult::Skipped {
        reason: "interrupted".to_owned(),
    }
}

fn done_or_failed(result: Result<Option<u64>, WorldError>) -> ActionResult {
    match result {
        Ok(bytes) => ActionResult::Done { bytes },
        Err(error) => ActionResult::Failed {
            error: error_chain(error.as_ref()),
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
        let outcome = runtime.block_on(execute(&plan, world, &Silent, &CancellationToken::new()));
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
                Action::Upload { snapshot, key, .. } if snapshot.name == "m" => Some(key.clone()),
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
                .find(|(action, _)| match action {
                    Action::Upload { snapshot, .. } => snapshot.name == name,
                    _ => false,
                })
                .map(|(_, result)| result.clone())
                .unwrap()
        };
        assert!(matches!(result_of("y"), ActionResult::Done { .. }));
        assert!(matches!(result_of("m"), ActionResult::Failed { .. }));
        let ActionResult::Skipped { reason } = result_of("home.NEW.1") else {
            panic!("not skipped")
        };
        assert!(reason.contains("send parent m"), "{reason}");
        // The other source is not affected.
        assert!(matches!(
            result_of("media.NEW.1"),
            ActionResult::Done { .. }
        ));
        // The old backup of `home` stays while its uploads are failing; the snapshot goes.
        let delete = outcome
            .results
            .iter()
            .find(|(a, _)| matches!(a, Action::Delete { .. }))
            .unwrap();
        assert!(
            matches!(delete.1, ActionResult::Skipped { .. }),
            "{delete:?}"
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
            .map(|(action, _)| action.clone())
            .collect();
        // The rename fails, and so does the upload of that snapshot (the fake refuses to touch
        // it); the yearly and monthly uploads and the cleanup still happen.
        assert!(failed.iter().any(|a| matches!(a, Action::Rename { .. })));
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
            .any(|a| matches!(a, Action::Destroy { snapshot } if snapshot.id == 1));
        let uploads_against_it = plan.actions.iter().any(
            |a| matches!(a, Action::Upload { send_parent: Some(parent), .. } if parent.id == 1),
        );
        assert!(parent_destroyed && uploads_against_it, "{:?}", plan.actions);

        // The upload fails: the parent stays for the retry.
        let mut failing = world.clone();
        failing
            .failing_keys
            .extend(plan.actions.iter().filter_map(|a| match a {
                Action::Upload { key, .. } => Some(key.to_string()),
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
        ));
        let (_, result) = outcome
            .results
            .iter()
            .find(|(a, _)| matches!(a, Action::Destroy { .. }))
            .unwrap();
        assert!(
            matches!(result, ActionResult::Skipped { reason } if reason.contains("retry")),
            "{result:?}"
        );
        assert!(!failing.log.iter().any(|l| l.starts_with("destroy")));

        // The upload succeeds: the parent goes after it, its backup stays as an ancestor.
        let outcome = runtime.block_on(execute(
            &plan,
            &mut world,
            &Silent,
            &CancellationToken::new(),
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
