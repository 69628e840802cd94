//! The planner: from the assessed state of sources, snapshot directories and buckets to a
//! [`Plan`], a plain list of actions with their reasons. Pure: no IO, `now` is in the input.
//!
//! The same `Plan` value drives the printed preview, `--pretend`, `--json` and the executor,
//! so what is shown is what is done.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use btrfs2s3_policy::{
    BackupItem, BrokenChain, Flags, Item, Keep, KeepBackup, Params, Policy, Reasons, TimeSpan,
    resolve,
};
use btrfs2s3_s3::{BackupMeta, ListedBackup, UploadOptions, format_ctime};
use btrfs2s3_s3::{LockMode, ObjectLock};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::Serialize;
use snafu::Snafu;
use uuid::Uuid;

use crate::config::SendProtocol;
use crate::pipeline::PipeCommand;
use crate::storage::{LockSettings, StorageClasses};

/// Everything the planner needs to know, gathered by [`crate::real::RealWorld::open`] (and
/// the new snapshots of [`crate::run::cycle`]).
#[derive(Debug, Clone)]
pub struct Assessment {
    /// The configured time zone.
    pub timezone: TimeZone,
    /// Its name, for output.
    pub timezone_name: String,
    /// The instant policies are evaluated at.
    pub now: Timestamp,
    /// The sources, in config order.
    pub sources: Vec<SourceState>,
    /// The remotes used by some source, in config order.
    pub remotes: Vec<RemoteState>,
}

/// A source subvolume, its snapshots and where it is backed up.
#[derive(Debug, Clone)]
pub struct SourceState {
    /// The subvolume's path.
    pub path: PathBuf,
    /// The name of its directory: the prefix of snapshot names and object keys.
    pub name: String,
    /// Its uuid: its snapshots' parent uuid.
    pub uuid: Uuid,
    /// The transaction of its last change: it gets a new snapshot when this is newer than
    /// its newest snapshot's.
    pub ctransid: u64,
    /// When it last changed (what a new snapshot's ctime would be).
    pub ctime: Timestamp,
    /// The directory of its snapshots.
    pub snapshot_dir: PathBuf,
    /// Its read-only snapshots in that directory.
    pub snapshots: Vec<SnapshotState>,
    /// The remotes it is backed up to.
    pub uploads: Vec<UploadTarget>,
}

/// A read-only snapshot of a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotState {
    /// Its current name in the snapshot directory.
    pub name: String,
    /// Its subvolume id; `None` for a snapshot that is only planned (`--pretend`).
    pub id: Option<u64>,
    /// Its uuid.
    pub uuid: Uuid,
    /// When its data last changed.
    pub ctime: Timestamp,
    /// The transaction of its last change.
    pub ctransid: u64,
    /// Whether this run created it (or, with `--pretend`, would create it).
    pub origin: Origin,
}

/// Where a snapshot comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// It was there before this run.
    Existing,
    /// This run created it because the source changed.
    Created,
    /// `--pretend`: it would be created; it does not exist.
    Planned,
}

/// One (source, remote) pair of the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadTarget {
    /// The remote's id.
    pub remote: String,
    /// The preservation policy for this pair.
    pub preserve: Params,
    /// The commands the stream goes through.
    pub pipe_through: Vec<PipeCommand>,
    /// The storage classes of new backups; the bucket's default without.
    pub storage_classes: Option<StorageClasses>,
    /// The send stream's format.
    pub send_protocol: SendProtocol,
}

/// A bucket and the backups found in it.
#[derive(Debug, Clone)]
pub struct RemoteState {
    /// The remote's id.
    pub id: String,
    /// Its bucket.
    pub bucket: String,
    /// Every backup: an object whose key parses as a backup's, with its other pieces.
    pub backups: Vec<BackupState>,
    /// Backups stored as several objects of which some are missing (never restorable: a
    /// later run uploads them again or deletes them).
    pub broken: Vec<BackupState>,
    /// Pieces of backups that belong to no backup: left by an upload that was interrupted.
    pub leftovers: Vec<Arc<str>>,
    /// The config's `max_object_size`: longer backups are stored in pieces of this size.
    pub max_object_size: u64,
    /// How many objects are not ours.
    pub foreign_objects: usize,
    /// How many `ListObjectsV2` pages the listing took.
    pub pages: u32,
    /// Multipart uploads that were started and never completed or aborted.
    pub pending_uploads: Vec<PendingUpload>,
    /// The config's object lock for new backups.
    pub object_lock: Option<LockSettings>,
    /// Whether the bucket has Object Lock enabled (then every backup's retention is read).
    pub lock_enabled: bool,
}

/// A multipart upload left behind (by a crashed or killed run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingUpload {
    /// The key it would have created.
    pub key: String,
    /// Its id.
    pub upload_id: String,
}

/// One backup object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupState {
    /// Its key (shared with the plan's rows and actions: a bucket can hold a hundred
    /// thousand of them).
    pub key: Arc<str>,
    /// What the key says.
    pub meta: BackupMeta,
    /// Its size in bytes (of all its pieces).
    pub size: u64,
    /// Its storage class, when the server says.
    pub storage_class: Option<String>,
    /// Its object-lock retention, when the bucket has object lock (read for every backup of
    /// such a bucket).
    pub retention: Option<ObjectLock>,
    /// The keys of its other pieces, in order, when it is stored as several objects (`key`
    /// is the first).
    pub pieces: Vec<Arc<str>>,
}

impl BackupState {
    /// The name of the source it is a backup of, as its key says.
    #[must_use]
    pub fn source_name(&self) -> &str {
        BackupMeta::base_name(&self.key)
    }
}

/// Why and how something is kept, for output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeepSummary {
    /// Why it is kept.
    pub reasons: Reasons,
    /// How.
    pub flags: Flags,
    /// The preserved spans it is the first item of, described (`2026-03 monthly`), longest
    /// first.
    pub time_spans: Vec<String>,
}

impl KeepSummary {
    fn new(keep: &Keep, tz: &TimeZone) -> KeepSummary {
        let mut spans: Vec<_> = keep.time_spans.iter().collect();
        spans.sort_by_key(|span| (span.timeframe(), span.start()));
        KeepSummary {
            reasons: keep.reasons,
            flags: keep.flags,
            time_spans: spans.into_iter().map(|span| span.describe(tz)).collect(),
        }
    }

    fn merge(&mut self, other: KeepSummary) {
        self.reasons |= other.reasons;
        self.flags |= other.flags;
        for span in other.time_spans {
            if !self.time_spans.contains(&span) {
                self.time_spans.push(span);
            }
        }
    }

    /// A short description: the first preserved span, else the main reason.
    #[must_use]
    pub fn describe(&self) -> String {
        if let Some(span) = self.time_spans.first() {
            span.clone()
        } else if self.reasons.contains(Reasons::MOST_RECENT) {
            "most recent".to_owned()
        } else if self.reasons.contains(Reasons::SEND_ANCESTOR) {
            "send ancestor".to_owned()
        } else {
            "kept".to_owned()
        }
    }
}

/// A snapshot in the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedSnapshot {
    /// The source it belongs to.
    pub source: PathBuf,
    /// Its directory.
    pub directory: PathBuf,
    /// Its current name.
    pub name: String,
    /// The name it gets when kept.
    pub target_name: String,
    /// Its subvolume id; `None` for a snapshot that is only planned.
    pub id: Option<u64>,
    /// Its uuid.
    pub uuid: Uuid,
    /// Its ctime, ISO 8601 in the configured time zone.
    pub ctime: String,
    /// Its ctransid.
    pub ctransid: u64,
    /// Whether this run created it.
    pub origin: Origin,
    /// Why it is kept; `None`: it is destroyed.
    pub keep: Option<KeepSummary>,
}

/// A backup in the plan: an existing one, or a new one to upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedBackup {
    /// The remote.
    pub remote: String,
    /// The object key.
    pub key: Arc<str>,
    /// The source it is a backup of.
    pub source: PathBuf,
    /// The snapshot it is (or will be) the stream of.
    pub uuid: Uuid,
    /// The snapshot it is sent against; `None` for a full backup.
    pub send_parent: Option<Uuid>,
    /// The snapshot's ctime, ISO 8601 in the configured time zone.
    pub ctime: String,
    /// The snapshot's ctransid.
    pub ctransid: i64,
    /// The object's size, for existing backups.
    pub size: Option<u64>,
    /// The storage class, when known.
    pub storage_class: Option<String>,
    /// Whether it is to be uploaded by this plan.
    pub new: bool,
    /// Why it is kept; `None`: it is deleted (unless its lock forbids it yet).
    pub keep: Option<KeepSummary>,
    /// Until when the policy keeps it, for kept backups.
    pub keep_until: Option<Timestamp>,
    /// Its object lock after this plan: the lock it has, or gets (on upload, or extended).
    pub lock: Option<ObjectLock>,
    /// For a backup the policy no longer keeps: until when it must stay all the same (its
    /// lock, or the lock of a backup sent against it); it is deleted by a run after that.
    pub held_until: Option<Timestamp>,
}

/// A snapshot as an action refers to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotRef {
    /// Its directory.
    pub directory: PathBuf,
    /// Its name when the plan was made.
    pub name: String,
    /// Its subvolume id (checked before anything is done to it); `None` for a snapshot that
    /// is only planned, which no action can touch.
    pub id: Option<u64>,
    /// Its uuid.
    pub uuid: Uuid,
}

/// One upload: what is sent, against what, through which commands, to which object. The
/// plan shows it, the executor runs it and the world performs it; the object's own options
/// (storage class, lock) are the s3 crate's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UploadSpec {
    /// The remote.
    pub remote: String,
    /// The object key.
    pub key: Arc<str>,
    /// The source.
    pub source: PathBuf,
    /// The snapshot to send.
    pub snapshot: SnapshotRef,
    /// The snapshot to send against; `None` for a full backup.
    pub send_parent: Option<SnapshotRef>,
    /// The commands the stream goes through.
    pub pipe_through: Vec<PipeCommand>,
    /// The send stream's format.
    #[serde(skip_serializing_if = "SendProtocol::is_v1")]
    pub send_protocol: SendProtocol,
    /// How the object is stored.
    #[serde(skip_serializing_if = "is_default")]
    pub options: UploadOptions,
}

fn is_default(options: &UploadOptions) -> bool {
    *options == UploadOptions::default()
}

/// Abort a multipart upload a crashed run of ours left behind (its parts cost storage).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AbortUpload {
    /// The remote.
    pub remote: String,
    /// The key it would have created.
    pub key: String,
    /// Its id.
    pub upload_id: String,
}

/// `--pretend` only: the snapshot this run would create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CreateSnapshot {
    /// The source.
    pub source: PathBuf,
    /// Where.
    pub directory: PathBuf,
    /// Its temporary name.
    pub name: String,
}

/// Give a kept snapshot its canonical name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rename {
    /// The snapshot.
    pub snapshot: SnapshotRef,
    /// The new name.
    pub to: String,
}

/// Send a snapshot (against its send parent) through the pipeline into an object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Upload {
    /// What is uploaded where.
    #[serde(flatten)]
    pub spec: UploadSpec,
    /// Why it is uploaded.
    pub keep: KeepSummary,
}

/// Make a kept backup's object lock reach its keep-until (plus the config's margin).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExtendLock {
    /// The remote.
    pub remote: String,
    /// The object key.
    pub key: Arc<str>,
    /// Its snapshot's uuid.
    pub uuid: Uuid,
    /// The lock it gets.
    pub lock: ObjectLock,
    /// Until when it is locked now, if it is.
    pub from: Option<Timestamp>,
    /// The keys of its other pieces, which get the same lock (a backup stored as several
    /// objects).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pieces: Vec<Arc<str>>,
}

/// Destroy a snapshot no remote keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Destroy {
    /// The snapshot.
    pub snapshot: SnapshotRef,
}

/// Delete a backup the policy no longer keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Delete {
    /// The remote.
    pub remote: String,
    /// The object key.
    pub key: Arc<str>,
    /// The source it is a backup of.
    pub source: PathBuf,
    /// Its snapshot's uuid.
    pub uuid: Uuid,
    /// The keys of its other pieces (a backup stored as several objects), deleted after
    /// `key`; or pieces left by an interrupted upload of `key`, which does not exist.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pieces: Vec<Arc<str>>,
}

/// One thing to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Abort a multipart upload left behind.
    AbortUpload(AbortUpload),
    /// `--pretend` only: a snapshot this run would create.
    CreateSnapshot(CreateSnapshot),
    /// Give a kept snapshot its canonical name.
    Rename(Rename),
    /// Upload a new backup. (Boxed: a plan can hold a hundred thousand deletes, and every
    /// action is as large as the largest variant.)
    Upload(Box<Upload>),
    /// Extend a kept backup's lock.
    ExtendLock(ExtendLock),
    /// Destroy a snapshot.
    Destroy(Destroy),
    /// Delete a backup.
    Delete(Delete),
}

/// A broken chain found in one remote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RemoteBrokenChain {
    /// The remote.
    pub remote: String,
    /// The chain.
    #[serde(flatten)]
    pub chain: BrokenChain,
}

/// What `update` is about to do, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// The instant policies were evaluated at.
    pub now: Timestamp,
    /// The configured time zone.
    pub timezone: String,
    /// Every snapshot of every source.
    pub snapshots: Vec<PlannedSnapshot>,
    /// Every backup of every (source, remote) pair, existing and new.
    pub backups: Vec<PlannedBackup>,
    /// Objects in each remote that are not backups (never touched).
    pub foreign_objects: BTreeMap<String, usize>,
    /// Kept backups whose send parent is gone: they cannot be restored.
    pub broken_chains: Vec<RemoteBrokenChain>,
    /// Remotes whose bucket has Object Lock enabled but whose config sets no `object_lock`:
    /// new backups get the bucket's default retention, if any.
    pub locks_off: Vec<String>,
    /// The actions, in execution order: aborts of stale uploads, renames, lock extensions
    /// (a send parent is locked as long as its new child before the child exists), uploads,
    /// destroys, deletes.
    pub actions: Vec<Action>,
}

impl PlannedSnapshot {
    /// The snapshot under its current name, as actions refer to it.
    #[must_use]
    pub fn current(&self) -> SnapshotRef {
        SnapshotRef {
            directory: self.directory.clone(),
            name: self.name.clone(),
            id: self.id,
            uuid: self.uuid,
        }
    }
}

impl Plan {
    /// Whether executing the plan changes anything (a `--pretend` snapshot creation does not
    /// count: it is shown, not done).
    #[must_use]
    pub fn has_work(&self) -> bool {
        self.actions
            .iter()
            .any(|action| !matches!(action, Action::CreateSnapshot(_)))
    }

    /// The snapshots this run created.
    pub fn created_snapshots(&self) -> impl Iterator<Item = &PlannedSnapshot> {
        self.snapshots
            .iter()
            .filter(|snapshot| snapshot.origin == Origin::Created)
    }
}

/// A planner invariant did not hold; the plan is refused rather than risk the backups.
#[derive(Debug, Clone, PartialEq, Eq, Snafu)]
#[snafu(display("internal error while planning: {what}"))]
pub struct PlanError {
    /// Which invariant.
    pub what: Broken,
}

/// The invariants the planner checks.
#[derive(Debug, Clone, PartialEq, Eq, Snafu)]
pub enum Broken {
    /// A source uploads to a remote that was not assessed.
    #[snafu(display("remote {remote} was not assessed"))]
    RemoteNotAssessed {
        /// The remote.
        remote: String,
    },
    /// The resolver planned an existing backup as new.
    #[snafu(display("backup {key} exists but was planned as new"))]
    ExistingPlannedAsNew {
        /// Its key.
        key: Arc<str>,
    },
    /// The resolver planned a backup of a snapshot that does not exist.
    #[snafu(display("new backup of {uuid} has no snapshot"))]
    NoSnapshot {
        /// The snapshot's uuid.
        uuid: Uuid,
    },
    /// The plan would delete a backup that a kept backup needs.
    #[snafu(display(
        "backup {key} in {remote} is needed by a kept backup but planned to be deleted"
    ))]
    NeededBackupDeleted {
        /// The remote.
        remote: String,
        /// The backup's key.
        key: Arc<str>,
    },
}

impl From<Broken> for PlanError {
    fn from(what: Broken) -> PlanError {
        PlanError { what }
    }
}

impl Item for SnapshotState {
    fn uuid(&self) -> Uuid {
        self.uuid
    }
    fn ctime(&self) -> Timestamp {
        self.ctime
    }
    fn ctransid(&self) -> i64 {
        i64::try_from(self.ctransid).unwrap_or(i64::MAX)
    }
}

impl Item for BackupState {
    fn uuid(&self) -> Uuid {
        self.meta.uuid
    }
    fn ctime(&self) -> Timestamp {
        self.meta.ctime
    }
    fn ctransid(&self) -> i64 {
        self.meta.ctransid
    }
}

impl BackupItem for BackupState {
    fn send_parent(&self) -> Option<Uuid> {
        self.meta.send_parent_uuid
    }
}

impl From<ListedBackup> for BackupState {
    fn from(backup: ListedBackup) -> BackupState {
        BackupState {
            size: backup.size(),
            key: backup.object.key.into(),
            meta: backup.meta,
            storage_class: backup.object.storage_class,
            retention: None,
            pieces: backup
                .pieces
                .into_iter()
                .map(|piece| piece.key.into())
                .collect(),
        }
    }
}

impl crate::tree::Node for BackupState {
    fn uuid(&self) -> Uuid {
        self.meta.uuid
    }
    fn send_parent(&self) -> Option<Uuid> {
        self.meta.send_parent_uuid
    }
    fn ctransid(&self) -> i64 {
        self.meta.ctransid
    }
}

impl crate::tree::Node for PlannedBackup {
    fn uuid(&self) -> Uuid {
        self.uuid
    }
    fn send_parent(&self) -> Option<Uuid> {
        self.send_parent
    }
    fn ctransid(&self) -> i64 {
        self.ctransid
    }
}

/// The canonical name of a snapshot: `<source name>.<ctime with offset>.<ctransid>`.
#[must_use]
pub fn snapshot_name(source_name: &str, ctime: Timestamp, ctransid: u64, tz: &TimeZone) -> String {
    format!("{source_name}.{}.{ctransid}", format_ctime(ctime, tz))
}

fn snapshot_ref(source: &SourceState, snapshot: &SnapshotState) -> SnapshotRef {
    SnapshotRef {
        directory: source.snapshot_dir.clone(),
        name: snapshot.name.clone(),
        id: snapshot.id,
        uuid: snapshot.uuid,
    }
}

/// Plans one `update` run.
pub fn plan(assessment: &Assessment) -> Result<Plan, PlanError> {
    plan_with(assessment, true)
}

/// The plan [`plan`] makes, without what only output shows: the rows' ctimes and the spans a
/// kept item is the first of are left empty. The actions are the same. For `simulate`, which
/// plans a hundred thousand times and shows none of them.
pub fn plan_decisions(assessment: &Assessment) -> Result<Plan, PlanError> {
    plan_with(assessment, false)
}

fn plan_with(assessment: &Assessment, detailed: bool) -> Result<Plan, PlanError> {
    let mut builder = Builder {
        detailed,
        tz: &assessment.timezone,
        now: assessment.now,
        snapshots: Vec::new(),
        backups: Vec::new(),
        broken_chains: Vec::new(),
        aborts: Vec::new(),
        creates: Vec::new(),
        renames: Vec::new(),
        uploads: Vec::new(),
        extensions: Vec::new(),
        destroys: Vec::new(),
        deletes: Vec::new(),
        cleanups: Vec::new(),
    };
    for source in &assessment.sources {
        let mut kept_snapshots: BTreeMap<Uuid, KeepSummary> = BTreeMap::new();
        for target in &source.uploads {
            let remote = assessment
                .remotes
                .iter()
                .find(|remote| remote.id == target.remote)
                .ok_or_else(|| Broken::RemoteNotAssessed {
                    remote: target.remote.clone(),
                })?;
            builder.plan_pair(source, target, remote, &mut kept_snapshots)?;
        }
        builder.plan_snapshots(source, &mut kept_snapshots);
    }
    builder.finish(assessment)
}

/// The plan under construction; actions are collected by kind and put in order at the end.
struct Builder<'a> {
    /// Whether rows get what only output shows (see [`plan_decisions`]).
    detailed: bool,
    tz: &'a TimeZone,
    now: Timestamp,
    snapshots: Vec<PlannedSnapshot>,
    backups: Vec<PlannedBackup>,
    broken_chains: Vec<RemoteBrokenChain>,
    aborts: Vec<Action>,
    creates: Vec<Action>,
    renames: Vec<Action>,
    uploads: Vec<Action>,
    extensions: Vec<Action>,
    destroys: Vec<Action>,
    deletes: Vec<Action>,
    /// Deletes of pieces that are no backup (not subject to the invariants of backups).
    cleanups: Vec<Action>,
}

impl Builder<'_> {
    /// Why and how `keep` keeps something (without its spans' descriptions unless detailed).
    fn summary(&self, keep: &Keep) -> KeepSummary {
        if self.detailed {
            KeepSummary::new(keep, self.tz)
        } else {
            KeepSummary {
                reasons: keep.reasons,
                flags: keep.flags,
                time_spans: Vec::new(),
            }
        }
    }

    /// A ctime as rows show it (empty unless detailed).
    fn ctime(&self, instant: Timestamp) -> String {
        if self.detailed {
            format_ctime(instant, self.tz)
        } else {
            String::new()
        }
    }

    /// Resolves one (source, remote) pair: its backups are kept, deleted or uploaded; the
    /// snapshots it keeps are merged into `kept_snapshots`.
    fn plan_pair(
        &mut self,
        source: &SourceState,
        target: &UploadTarget,
        remote: &RemoteState,
        kept_snapshots: &mut BTreeMap<Uuid, KeepSummary>,
    ) -> Result<(), PlanError> {
        let existing: Vec<&BackupState> = remote
            .backups
            .iter()
            .filter(|backup| backup.meta.parent_uuid == source.uuid)
            .collect();
        // Multipart uploads of this source's backups are ours, and no other run of ours is
        // uploading (we hold the snapshot directory's lock): they were left by a crash.
        for pending in &remote.pending_uploads {
            // Any piece of a backup: a backup stored as several objects has an upload each.
            if BackupMeta::parse_piece(&pending.key)
                .is_ok_and(|(meta, _)| meta.parent_uuid == source.uuid)
            {
                self.aborts.push(Action::AbortUpload(AbortUpload {
                    remote: remote.id.clone(),
                    key: pending.key.clone(),
                    upload_id: pending.upload_id.clone(),
                }));
            }
        }
        let policy = Policy::new(target.preserve, self.tz.clone(), self.now);
        let resolution = resolve(&source.snapshots, &existing, &policy);
        for (uuid, keep) in &resolution.snapshots {
            let summary = self.summary(keep);
            match kept_snapshots.get_mut(uuid) {
                Some(kept) => kept.merge(summary),
                None => {
                    kept_snapshots.insert(*uuid, summary);
                }
            }
        }
        self.broken_chains.extend(
            resolution
                .broken_chains
                .iter()
                .map(|chain| RemoteBrokenChain {
                    remote: remote.id.clone(),
                    chain: *chain,
                }),
        );
        self.plan_existing(source, remote, &existing, &resolution)?;
        // New backups: uploads. A send parent is the first snapshot of a span that contains
        // its child, so it has a smaller ctransid: uploading in ctransid order uploads
        // parents first.
        let mut new_uploads = Vec::new();
        for (uuid, kept) in resolution.backups.iter().filter(|(_, kept)| kept.is_new()) {
            let find = |uuid: Uuid| {
                source
                    .snapshots
                    .iter()
                    .find(|snapshot| snapshot.uuid == uuid)
                    .ok_or(Broken::NoSnapshot { uuid })
            };
            let snapshot = find(*uuid)?;
            let send_parent = kept.send_parent.map(find).transpose()?;
            new_uploads.push((
                snapshot.ctransid,
                self.upload(source, target, remote, snapshot, send_parent, kept),
            ));
        }
        new_uploads.sort_by_key(|(ctransid, _)| *ctransid);
        self.uploads
            .extend(new_uploads.into_iter().map(|(_, action)| action));
        self.plan_cleanups(source, remote);
        Ok(())
    }

    /// Deletes of what interrupted uploads of `source`'s backups left in `remote`: pieces
    /// without their first piece, and backups some of whose pieces are missing. Not what
    /// this run uploads again under the same key (the upload replaces it), and not in a
    /// bucket with Object Lock, where such pieces may be locked (they stay, and are listed).
    fn plan_cleanups(&mut self, source: &SourceState, remote: &RemoteState) {
        if remote.lock_enabled || (remote.broken.is_empty() && remote.leftovers.is_empty()) {
            return;
        }
        let uploading: BTreeSet<&str> = self
            .uploads
            .iter()
            .filter_map(|action| match action {
                Action::Upload(upload) if upload.spec.remote == remote.id => {
                    Some(&*upload.spec.key)
                }
                _ => None,
            })
            .collect();
        let mut cleanups = Vec::new();
        for backup in &remote.broken {
            if backup.meta.parent_uuid == source.uuid && !uploading.contains(&*backup.key) {
                cleanups.push(Delete {
                    remote: remote.id.clone(),
                    key: backup.key.clone(),
                    source: source.path.clone(),
                    uuid: backup.meta.uuid,
                    pieces: backup.pieces.clone(),
                });
            }
        }
        let mut leftovers: BTreeMap<String, (Uuid, Vec<Arc<str>>)> = BTreeMap::new();
        for key in &remote.leftovers {
            let (Ok((meta, _)), Some(first)) = (
                BackupMeta::parse_piece(key),
                btrfs2s3_s3::first_piece_key(key),
            ) else {
                continue;
            };
            if meta.parent_uuid == source.uuid && !uploading.contains(first.as_str()) {
                leftovers
                    .entry(first)
                    .or_insert_with(|| (meta.uuid, Vec::new()))
                    .1
                    .push(key.clone());
            }
        }
        for (first, (uuid, pieces)) in leftovers {
            cleanups.push(Delete {
                remote: remote.id.clone(),
                key: first.into(),
                source: source.path.clone(),
                uuid,
                pieces,
            });
        }
        self.cleanups
            .extend(cleanups.into_iter().map(Action::Delete));
    }

    /// The existing backups of one pair: kept, held, or deleted; locks extended.
    fn plan_existing(
        &mut self,
        source: &SourceState,
        remote: &RemoteState,
        existing: &[&BackupState],
        resolution: &btrfs2s3_policy::Resolution,
    ) -> Result<(), PlanError> {
        // Existing backups: kept, held, or deleted. Several keys may name one snapshot's
        // backup (the same stream stored twice); they share its fate.
        self.backups
            .reserve(existing.len() + resolution.backups.len());
        let holds = Holds::new(existing, resolution, remote.object_lock, self.now);
        for backup in existing {
            let keep = resolution.backups.get(&backup.meta.uuid);
            if keep.is_some_and(btrfs2s3_policy::KeepBackup::is_new) {
                return Err(Broken::ExistingPlannedAsNew {
                    key: backup.key.clone(),
                }
                .into());
            }
            let summary = keep.map(|kept| self.summary(&kept.keep));
            let keep_until = keep.map(|kept| kept.keep_until);
            let hold = holds.until(backup.meta.uuid);
            let lock = match (remote.object_lock, hold) {
                (Some(settings), Some(until)) => self.extend_lock(
                    remote,
                    backup,
                    ObjectLock {
                        mode: settings.mode,
                        retain_until: until,
                    },
                ),
                _ => backup.retention,
            };
            // A backup the policy no longer keeps stays while it is locked, or while one that
            // stays was sent against it; a later run deletes it.
            let held_until = if summary.is_none() { hold } else { None };
            if summary.is_none() && hold.is_none() {
                self.deletes.push(Action::Delete(Delete {
                    remote: remote.id.clone(),
                    key: backup.key.clone(),
                    source: source.path.clone(),
                    uuid: backup.meta.uuid,
                    pieces: backup.pieces.clone(),
                }));
            }
            self.backups.push(PlannedBackup {
                remote: remote.id.clone(),
                key: backup.key.clone(),
                source: source.path.clone(),
                uuid: backup.meta.uuid,
                send_parent: backup.meta.send_parent_uuid,
                ctime: self.ctime(backup.meta.ctime),
                ctransid: backup.meta.ctransid,
                size: Some(backup.size),
                storage_class: backup.storage_class.clone(),
                new: false,
                keep: summary,
                keep_until,
                lock,
                held_until,
            });
        }
        Ok(())
    }

    /// The upload of a new backup of `snapshot`, recorded in the backup list too.
    fn upload(
        &mut self,
        source: &SourceState,
        target: &UploadTarget,
        remote: &RemoteState,
        snapshot: &SnapshotState,
        send_parent: Option<&SnapshotState>,
        kept: &KeepBackup,
    ) -> Action {
        let meta = BackupMeta {
            uuid: snapshot.uuid,
            parent_uuid: source.uuid,
            send_parent_uuid: send_parent.map(|parent| parent.uuid),
            ctransid: snapshot.ctransid().max(0),
            ctime: Timestamp::from_second(snapshot.ctime.as_second()).unwrap_or(snapshot.ctime),
        };
        let key: Arc<str> = meta.key(&source.name, self.tz).into();
        let summary = self.summary(&kept.keep);
        let storage_class = target.storage_classes.as_ref().map(|classes| {
            let kept_for = kept.keep.time_spans.iter().map(TimeSpan::timeframe);
            classes.choose(kept_for, kept.keep_until, self.now)
        });
        let object_lock = remote
            .object_lock
            .map(|settings| settings.lock_for(kept.keep_until))
            .filter(|lock| lock.retain_until > self.now);
        self.backups.push(PlannedBackup {
            remote: remote.id.clone(),
            key: key.clone(),
            source: source.path.clone(),
            uuid: snapshot.uuid,
            send_parent: meta.send_parent_uuid,
            ctime: self.ctime(snapshot.ctime),
            ctransid: meta.ctransid,
            size: None,
            storage_class: storage_class.clone(),
            new: true,
            keep: Some(summary.clone()),
            keep_until: Some(kept.keep_until),
            lock: object_lock,
            held_until: None,
        });
        Action::Upload(Box::new(Upload {
            spec: UploadSpec {
                remote: remote.id.clone(),
                source: source.path.clone(),
                snapshot: snapshot_ref(source, snapshot),
                send_parent: send_parent.map(|parent| snapshot_ref(source, parent)),
                pipe_through: target.pipe_through.clone(),
                send_protocol: target.send_protocol,
                options: UploadOptions {
                    storage_class,
                    object_lock,
                    // A backup whose pieces are not all there is uploaded again in place.
                    replace: remote.broken.iter().any(|broken| *broken.key == *key),
                },
                key,
            },
            keep: summary,
        }))
    }

    /// Plans extending `backup`'s lock to `wanted` when it is locked less; returns the lock
    /// it has after the plan. Locks only grow, and a compliance lock stays one (no one may
    /// turn it into a governance lock).
    fn extend_lock(
        &mut self,
        remote: &RemoteState,
        backup: &BackupState,
        wanted: ObjectLock,
    ) -> Option<ObjectLock> {
        let current = backup.retention;
        if wanted.retain_until <= self.now
            || current.is_some_and(|lock| lock.retain_until >= wanted.retain_until)
        {
            return current;
        }
        let lock = ObjectLock {
            mode: match current {
                Some(ObjectLock {
                    mode: LockMode::Compliance,
                    ..
                }) => LockMode::Compliance,
                _ => wanted.mode,
            },
            retain_until: wanted.retain_until,
        };
        self.extensions.push(Action::ExtendLock(ExtendLock {
            remote: remote.id.clone(),
            key: backup.key.clone(),
            uuid: backup.meta.uuid,
            lock,
            from: current.map(|lock| lock.retain_until),
            pieces: backup.pieces.clone(),
        }));
        Some(lock)
    }

    /// The snapshots of a source: kept ones get their canonical name, the rest are
    /// destroyed.
    fn plan_snapshots(
        &mut self,
        source: &SourceState,
        kept_snapshots: &mut BTreeMap<Uuid, KeepSummary>,
    ) {
        // Oldest first, as the Python tool shows them.
        let mut ordered: Vec<&SnapshotState> = source.snapshots.iter().collect();
        ordered.sort_by_key(|snapshot| (snapshot.ctransid, snapshot.ctime, snapshot.uuid));
        for snapshot in ordered {
            let keep = kept_snapshots.remove(&snapshot.uuid);
            let target_name =
                snapshot_name(&source.name, snapshot.ctime, snapshot.ctransid, self.tz);
            match (&keep, snapshot.origin) {
                (_, Origin::Planned) => self.creates.push(Action::CreateSnapshot(CreateSnapshot {
                    source: source.path.clone(),
                    directory: source.snapshot_dir.clone(),
                    name: snapshot.name.clone(),
                })),
                (Some(_), _) if snapshot.name != target_name => {
                    self.renames.push(Action::Rename(Rename {
                        snapshot: snapshot_ref(source, snapshot),
                        to: target_name.clone(),
                    }));
                }
                (None, _) => self.destroys.push(Action::Destroy(Destroy {
                    snapshot: snapshot_ref(source, snapshot),
                })),
                (Some(_), _) => {}
            }
            self.snapshots.push(PlannedSnapshot {
                source: source.path.clone(),
                directory: source.snapshot_dir.clone(),
                name: snapshot.name.clone(),
                target_name,
                id: snapshot.id,
                uuid: snapshot.uuid,
                ctime: self.ctime(snapshot.ctime),
                ctransid: snapshot.ctransid,
                origin: snapshot.origin,
                keep,
            });
        }
    }

    fn finish(self, assessment: &Assessment) -> Result<Plan, PlanError> {
        check_invariants(&self.deletes, &self.backups)?;
        let foreign_objects = assessment
            .remotes
            .iter()
            .map(|remote| (remote.id.clone(), remote.foreign_objects))
            .collect();
        // The deletes can be most of a large plan: the others go in front of them, in their
        // buffer, rather than everything being copied into a new one.
        let mut actions = self.deletes;
        actions.extend(self.cleanups);
        actions.splice(
            0..0,
            self.aborts
                .into_iter()
                .chain(self.creates)
                .chain(self.renames)
                .chain(self.extensions)
                .chain(self.uploads)
                .chain(self.destroys),
        );
        Ok(Plan {
            now: assessment.now,
            timezone: assessment.timezone_name.clone(),
            snapshots: self.snapshots,
            backups: self.backups,
            foreign_objects,
            broken_chains: self.broken_chains,
            locks_off: assessment
                .remotes
                .iter()
                .filter(|remote| remote.lock_enabled && remote.object_lock.is_none())
                .map(|remote| remote.id.clone())
                .collect(),
            actions,
        })
    }
}

/// Which existing backups of one (source, remote) pair stay, and until when they must be
/// locked. A backup stays while the policy keeps it, while its own lock has not expired, and
/// while a backup that stays was sent against it: deleting it would make that one useless,
/// and a locked backup that ransomware cannot delete is only worth something with its whole
/// chain. Locks follow the same rule: a send parent is locked at least as long as anything
/// sent against it.
struct Holds {
    until: HashMap<Uuid, Timestamp>,
}

impl Holds {
    fn new(
        existing: &[&BackupState],
        resolution: &btrfs2s3_policy::Resolution,
        lock: Option<LockSettings>,
        now: Timestamp,
    ) -> Holds {
        let mut until: HashMap<Uuid, Timestamp> = HashMap::new();
        let mut hold = |uuid: Uuid, instant: Timestamp| {
            let entry = until.entry(uuid).or_insert(instant);
            *entry = (*entry).max(instant);
        };
        for (uuid, kept) in &resolution.backups {
            // Kept backups stay regardless; with locks, until their lock runs out.
            let instant = lock.map_or(Timestamp::MAX, |lock| {
                lock.lock_for(kept.keep_until).retain_until
            });
            hold(*uuid, instant);
        }
        for backup in existing {
            if let Some(retention) = backup.retention
                && retention.retain_until > now
            {
                hold(backup.meta.uuid, retention.retain_until);
            }
        }
        let mut parents: HashMap<Uuid, Uuid> = HashMap::new();
        for backup in existing {
            if let Some(parent) = backup.meta.send_parent_uuid {
                parents.entry(backup.meta.uuid).or_insert(parent);
            }
        }
        for (uuid, kept) in &resolution.backups {
            if let Some(parent) = kept.send_parent {
                parents.insert(*uuid, parent);
            }
        }
        // Values only grow along finite chains; one pass per backup settles even cycles.
        for _ in 0..=parents.len() {
            let mut changed = false;
            for (child, parent) in &parents {
                let Some(&child_until) = until.get(child) else {
                    continue;
                };
                let parent_until = until.entry(*parent).or_insert(child_until);
                if *parent_until < child_until {
                    *parent_until = child_until;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        Holds { until }
    }

    /// Until when `uuid` must stay (and, with locks, be locked); `None`: it may go.
    fn until(&self, uuid: Uuid) -> Option<Timestamp> {
        self.until.get(&uuid).copied()
    }
}

/// The safety rule, checked on the finished plan: no backup that a kept backup depends on
/// is deleted.
///
/// A snapshot may be destroyed although an upload of the same plan sends against it (when
/// the policy no longer keeps it, but the new most recent snapshot's backup is a
/// differential against it): uploads run before destroys, and the executor keeps the
/// snapshot if that upload does not succeed.
fn check_invariants(deletes: &[Action], backups: &[PlannedBackup]) -> Result<(), PlanError> {
    let depended_on: BTreeSet<(&str, Uuid)> = backups
        .iter()
        .filter(|backup| backup.keep.is_some())
        .filter_map(|backup| {
            backup
                .send_parent
                .map(|parent| (backup.remote.as_str(), parent))
        })
        .collect();
    let kept: BTreeSet<(&str, Uuid)> = backups
        .iter()
        .filter(|backup| backup.keep.is_some())
        .map(|backup| (backup.remote.as_str(), backup.uuid))
        .collect();
    for action in deletes {
        if let Action::Delete(delete) = action
            && (depended_on.contains(&(delete.remote.as_str(), delete.uuid))
                || kept.contains(&(delete.remote.as_str(), delete.uuid)))
        {
            return Err(Broken::NeededBackupDeleted {
                remote: delete.remote.clone(),
                key: delete.key.clone(),
            }
            .into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeWorld;
    use btrfs2s3_s3::LockMode;

    /// The actions of the plan, one short line each.
    fn actions(world: &FakeWorld) -> Vec<String> {
        let plan = plan(&world.assessment()).unwrap();
        plan.actions
            .iter()
            .map(|action| match action {
                Action::AbortUpload(abort) => format!("abort {} {}", abort.remote, abort.key),
                Action::CreateSnapshot(create) => format!("create {}", create.name),
                Action::Rename(rename) => format!("rename {} {}", rename.snapshot.name, rename.to),
                Action::Upload(upload) => {
                    let spec = &upload.spec;
                    match &spec.send_parent {
                        Some(parent) => format!(
                            "upload {} {} from {}",
                            spec.remote, spec.snapshot.name, parent.name
                        ),
                        None => format!("upload {} {} full", spec.remote, spec.snapshot.name),
                    }
                }
                Action::ExtendLock(extend) => {
                    format!("lock {} until {}", extend.remote, extend.lock.retain_until)
                }
                Action::Destroy(destroy) => format!("destroy {}", destroy.snapshot.name),
                Action::Delete(delete) => {
                    format!("delete {} {}", delete.remote, delete.uuid.as_u128() >> 64)
                }
            })
            .collect()
    }

    #[test]
    fn pieces_of_interrupted_uploads_go_unless_the_same_backup_is_uploaded_again() {
        let mut world = FakeWorld::new("UTC", "2026-03-08T12:00:00Z");
        world.add_source("home", 1, &[("aws", "1y")]);
        world.add_snapshot(0, "home.NEW.99", 10, "2026-03-08T11:59:00Z", 500);
        let mut assessment = world.assessment();
        let first = plan(&assessment).unwrap();
        let Some(Action::Upload(upload)) = first.actions.last() else {
            panic!("{:?}", first.actions)
        };
        let key = upload.spec.key.clone();
        let piece =
            |key: &str, n: u32| -> Arc<str> { btrfs2s3_s3::piece_key(key, n).unwrap().into() };
        // The backup about to be uploaded was left broken; another one (of a snapshot that
        // is gone) left two pieces and no first one.
        let meta = BackupMeta::parse_key(&key).unwrap();
        let other = BackupMeta {
            uuid: Uuid::from_u128(77 << 64),
            ..meta
        };
        let other_key = other.key("home", &TimeZone::UTC);
        let remote = &mut assessment.remotes[0];
        remote.broken.push(BackupState {
            key: key.clone(),
            meta,
            size: 32,
            storage_class: None,
            retention: None,
            pieces: vec![piece(&key, 2)],
        });
        remote.leftovers = vec![piece(&key, 3), piece(&other_key, 1), piece(&other_key, 2)];
        let second = plan(&assessment).unwrap();
        let uploads: Vec<&Upload> = second
            .actions
            .iter()
            .filter_map(|action| match action {
                Action::Upload(upload) => Some(&**upload),
                _ => None,
            })
            .collect();
        assert_eq!(uploads.len(), 1);
        assert_eq!(uploads[0].spec.key, key);
        assert!(
            uploads[0].spec.options.replace,
            "the broken one is replaced"
        );
        let deletes: Vec<&Delete> = second
            .actions
            .iter()
            .filter_map(|action| match action {
                Action::Delete(delete) => Some(delete),
                _ => None,
            })
            .collect();
        assert_eq!(deletes.len(), 1, "{deletes:?}");
        assert_eq!(&*deletes[0].key, other_key.as_str());
        assert_eq!(
            deletes[0].pieces,
            [piece(&other_key, 1), piece(&other_key, 2)]
        );
        // In a bucket with Object Lock, pieces may be locked: they stay.
        assessment.remotes[0].lock_enabled = true;
        let locked = plan(&assessment).unwrap();
        assert!(
            !locked
                .actions
                .iter()
                .any(|action| matches!(action, Action::Delete(_))),
            "{:?}",
            locked.actions
        );
    }

    #[test]
    fn a_new_snapshot_is_renamed_and_uploaded_as_a_full_backup() {
        let mut world = FakeWorld::new("UTC", "2026-03-08T12:00:00Z");
        world.add_source("home", 1, &[("aws", "1y 1m 1d")]);
        world.add_snapshot(0, "home.NEW.99", 10, "2026-03-08T11:59:00Z", 500);
        assert_eq!(
            actions(&world),
            [
                "rename home.NEW.99 home.2026-03-08T11:59:00+00:00.500",
                "upload aws home.NEW.99 full",
            ]
        );
    }

    #[test]
    fn differentials_follow_the_policy_timeframes() {
        let mut world = FakeWorld::new("Europe/Berlin", "2026-03-08T12:00:00Z");
        world.add_source("home", 1, &[("aws", "1y 1m 1d")]);
        world.add_snapshot(0, "y", 1, "2026-01-02T10:00:00Z", 100); // yearly
        world.add_snapshot(0, "m", 2, "2026-03-01T10:00:00Z", 200); // monthly
        world.add_snapshot(0, "d", 3, "2026-03-08T08:00:00Z", 300); // daily
        world.add_snapshot(0, "h", 4, "2026-03-08T11:00:00Z", 400); // most recent
        let found = actions(&world);
        let uploads: Vec<&String> = found.iter().filter(|a| a.starts_with("upload")).collect();
        assert_eq!(
            uploads,
            [
                "upload aws y full",
                "upload aws m from y",
                "upload aws d from m",
                "upload aws h from d",
            ]
        );
    }

    #[test]
    fn expired_snapshots_are_destroyed_and_backups_deleted_but_ancestors_stay() {
        let mut world = FakeWorld::new("UTC", "2026-06-10T12:00:00Z");
        world.add_source("home", 1, &[("aws", "1m 1d")]);
        let names = [
            (
                "home.2026-05-01T00:00:00+00:00.100",
                1,
                "2026-05-01T00:00:00Z",
                100,
            ),
            (
                "home.2026-06-01T00:00:00+00:00.200",
                2,
                "2026-06-01T00:00:00Z",
                200,
            ),
            (
                "home.2026-06-05T00:00:00+00:00.300",
                3,
                "2026-06-05T00:00:00Z",
                300,
            ),
            (
                "home.2026-06-10T00:00:00+00:00.400",
                4,
                "2026-06-10T00:00:00Z",
                400,
            ),
        ];
        for (name, id, ctime, ctransid) in names {
            world.add_snapshot(0, name, id, ctime, ctransid);
        }
        world.add_backup(0, "aws", 1, None);
        world.add_backup(0, "aws", 2, None);
        world.add_backup(0, "aws", 3, Some(2));
        world.add_backup(0, "aws", 4, Some(2));
        // May is out of the policy: its snapshot and backup go. The 5th is neither preserved
        // (1d keeps only the 10th) nor the send parent of a kept backup: it goes too. June's
        // monthly stays, also as the send parent of the 10th.
        assert_eq!(
            actions(&world),
            [
                "destroy home.2026-05-01T00:00:00+00:00.100",
                "destroy home.2026-06-05T00:00:00+00:00.300",
                "delete aws 1",
                "delete aws 3",
            ]
        );
    }

    #[test]
    fn foreign_objects_and_other_sources_backups_are_untouched() {
        let mut world = FakeWorld::new("UTC", "2026-06-10T12:00:00Z");
        world.add_source("home", 1, &[("aws", "1d")]);
        world.add_source("other", 2, &[("gcs", "1d")]);
        world.add_snapshot(
            0,
            "home.2026-06-10T00:00:00+00:00.400",
            4,
            "2026-06-10T00:00:00Z",
            400,
        );
        world.add_snapshot(1, "old-other", 5, "2020-01-01T00:00:00Z", 50);
        world.add_backup(0, "aws", 4, None);
        // A backup of `other` in `aws`, a remote `other` does not use: not ours to judge.
        world.add_backup(1, "aws", 5, None);
        world
            .objects
            .get_mut("aws")
            .unwrap()
            .insert("notes.txt".to_owned(), 5);
        let plan = plan(&world.assessment()).unwrap();
        assert_eq!(plan.foreign_objects["aws"], 1);
        let found = actions(&world);
        assert!(found.iter().all(|a| !a.starts_with("delete")), "{found:?}");
    }

    #[test]
    fn only_our_own_unfinished_uploads_are_aborted() {
        let mut world = FakeWorld::new("UTC", "2026-06-10T12:00:00Z");
        world.add_source("home", 1, &[("aws", "1d")]);
        world.add_source("media", 2, &[("gcs", "1d")]);
        world.add_snapshot(
            0,
            "home.2026-06-10T00:00:00+00:00.400",
            4,
            "2026-06-10T00:00:00Z",
            400,
        );
        world.add_snapshot(
            1,
            "media.2026-06-10T00:00:00+00:00.500",
            5,
            "2026-06-10T00:00:00Z",
            500,
        );
        let ours = world.add_backup(0, "aws", 4, None);
        // The pending upload of a backup of `media`, a source that does not use `aws`, and
        // one under a key that is not a backup: not ours.
        let theirs = world.add_backup(1, "aws", 5, None);
        for key in [&ours, &theirs] {
            world.objects.get_mut("aws").unwrap().remove(key);
        }
        for (key, id) in [(&ours, "u1"), (&theirs, "u2")] {
            world
                .pending_uploads
                .insert(("aws".to_owned(), key.clone(), id.to_owned()));
        }
        world.pending_uploads.insert((
            "aws".to_owned(),
            "videos/big.mkv".to_owned(),
            "u3".to_owned(),
        ));
        let found = actions(&world);
        assert_eq!(
            found
                .iter()
                .filter(|a| a.starts_with("abort"))
                .collect::<Vec<_>>(),
            [&format!("abort aws {ours}")]
        );
        assert!(
            found[0].starts_with("abort"),
            "aborts come first: {found:?}"
        );
    }

    #[test]
    fn pretend_plans_show_the_snapshot_to_create() {
        let mut world = FakeWorld::new("UTC", "2026-06-10T12:00:00Z");
        world.add_source("home", 1, &[("aws", "1d")]);
        world.add_snapshot(0, "home.NEW.7", 9, "2026-06-10T11:00:00Z", 900);
        world
            .snapshots
            .values_mut()
            .for_each(|s| s.values_mut().for_each(|s| s.origin = Origin::Planned));
        let found = actions(&world);
        assert_eq!(found, ["create home.NEW.7", "upload aws home.NEW.7 full"]);
        // The creation itself is only shown; the upload is work.
        let plan = plan(&world.assessment()).unwrap();
        assert!(plan.has_work());
        assert_eq!(
            plan.actions
                .iter()
                .filter(|a| matches!(a, Action::CreateSnapshot(_)))
                .count(),
            1
        );
    }

    fn locked(world: &mut FakeWorld, remote: &str, mode: LockMode, extra_hours: i64) {
        world.locks.insert(
            remote.to_owned(),
            LockSettings {
                mode,
                extra: jiff::SignedDuration::from_hours(extra_hours),
            },
        );
    }

    fn backup(plan: &Plan, id: u64) -> &PlannedBackup {
        plan.backups
            .iter()
            .find(|b| b.uuid.as_u128() >> 64 == u128::from(id))
            .unwrap()
    }

    #[test]
    fn new_backups_are_locked_until_their_keep_until_and_the_margin() {
        let mut world = FakeWorld::new("UTC", "2026-03-08T12:00:00Z");
        world.add_source("home", 1, &[("aws", "1y 1m")]);
        locked(&mut world, "aws", LockMode::Governance, 24);
        world.add_snapshot(0, "y", 1, "2026-01-02T10:00:00Z", 100);
        world.add_snapshot(0, "m", 2, "2026-03-01T10:00:00Z", 200);
        let plan = plan(&world.assessment()).unwrap();
        let lock_of = |name: &str| {
            plan.actions.iter().find_map(|action| match action {
                Action::Upload(upload) if upload.spec.snapshot.name == name => {
                    upload.spec.options.object_lock
                }
                _ => None,
            })
        };
        // The yearly full is kept until 2027 begins; the monthly one until April begins, but
        // it is the most recent, kept a month ahead of now, and the yearly outlives it.
        let yearly = lock_of("y").unwrap();
        assert_eq!(yearly.mode, LockMode::Governance);
        assert_eq!(yearly.retain_until.to_string(), "2027-01-02T00:00:00Z");
        assert_eq!(
            lock_of("m").unwrap().retain_until.to_string(),
            "2026-04-09T12:00:00Z"
        );
        assert_eq!(
            backup(&plan, 2)
                .keep_until
                .map(|t| t.to_string())
                .as_deref(),
            Some("2026-04-08T12:00:00Z")
        );
    }

    #[test]
    fn locks_grow_with_keep_until_and_never_shrink_or_soften() {
        let mut world = FakeWorld::new("UTC", "2026-03-08T12:00:00Z");
        world.add_source("home", 1, &[("aws", "2y")]);
        locked(&mut world, "aws", LockMode::Governance, 0);
        world.add_snapshot(0, "a", 1, "2025-01-02T10:00:00Z", 100);
        world.add_snapshot(0, "b", 2, "2026-01-02T10:00:00Z", 200);
        let (key_a, key_b) = (
            world.add_backup(0, "aws", 1, None),
            world.add_backup(0, "aws", 2, None),
        );
        let lock = |mode, until: &str| ObjectLock {
            mode,
            retain_until: until.parse().unwrap(),
        };
        // a: compliance, too short; b: longer than the policy needs.
        world.retentions.insert(
            ("aws".to_owned(), key_a.clone()),
            lock(LockMode::Compliance, "2026-06-01T00:00:00Z"),
        );
        world.retentions.insert(
            ("aws".to_owned(), key_b.clone()),
            lock(LockMode::Governance, "2030-01-01T00:00:00Z"),
        );
        let plan = plan(&world.assessment()).unwrap();
        let extensions: Vec<&ExtendLock> = plan
            .actions
            .iter()
            .filter_map(|action| match action {
                Action::ExtendLock(extend) => Some(extend),
                _ => None,
            })
            .collect();
        assert_eq!(extensions.len(), 1, "{extensions:?}");
        assert_eq!(&*extensions[0].key, key_a);
        assert_eq!(extensions[0].lock.mode, LockMode::Compliance);
        assert_eq!(
            extensions[0].lock.retain_until.to_string(),
            "2027-01-01T00:00:00Z"
        );
        assert_eq!(
            extensions[0].from.map(|t| t.to_string()).as_deref(),
            Some("2026-06-01T00:00:00Z")
        );
        // The plan shows the locks as they will be.
        assert_eq!(backup(&plan, 1).lock, Some(extensions[0].lock));
        assert_eq!(
            backup(&plan, 2)
                .lock
                .map(|l| l.retain_until.to_string())
                .as_deref(),
            Some("2030-01-01T00:00:00Z")
        );
    }

    #[test]
    fn a_locked_backup_outlives_the_policy_and_keeps_its_send_parent() {
        let mut world = FakeWorld::new("UTC", "2027-06-10T12:00:00Z");
        world.add_source("home", 1, &[("aws", "1y")]);
        locked(&mut world, "aws", LockMode::Governance, 0);
        world.add_snapshot(0, "old", 1, "2026-01-02T10:00:00Z", 100);
        world.add_snapshot(0, "mid", 2, "2026-05-02T10:00:00Z", 200);
        world.add_snapshot(0, "new", 3, "2027-06-01T10:00:00Z", 300);
        world.add_backup(0, "aws", 1, None);
        let mid = world.add_backup(0, "aws", 2, Some(1));
        world.add_backup(0, "aws", 3, None);
        // 2026 is out of the policy, but the differential of May is locked until August,
        // and it needs the full backup it was sent against.
        world.retentions.insert(
            ("aws".to_owned(), mid),
            ObjectLock {
                mode: LockMode::Governance,
                retain_until: "2027-08-01T00:00:00Z".parse().unwrap(),
            },
        );
        let first = plan(&world.assessment()).unwrap();
        assert!(
            !first.actions.iter().any(|a| matches!(a, Action::Delete(_))),
            "{:?}",
            first.actions
        );
        for id in [1, 2] {
            let held = backup(&first, id);
            assert!(held.keep.is_none());
            assert_eq!(
                held.held_until.map(|t| t.to_string()).as_deref(),
                Some("2027-08-01T00:00:00Z"),
                "{id}"
            );
        }
        // The full backup's lock now covers its locked child.
        assert!(first.actions.iter().any(|a| matches!(a,
            Action::ExtendLock(extend) if extend.uuid == world.snapshot_uuid(1)
                && extend.lock.retain_until.to_string() == "2027-08-01T00:00:00Z")));
        // After August, both go.
        world.now = "2027-08-02T00:00:00Z".parse().unwrap();
        let later = plan(&world.assessment()).unwrap();
        let deletes = later
            .actions
            .iter()
            .filter(|a| matches!(a, Action::Delete(_)))
            .count();
        assert_eq!(deletes, 2, "{:?}", later.actions);
    }

    #[test]
    fn new_backups_get_the_class_of_their_longest_timeframe_that_fits() {
        let mut world = FakeWorld::new("UTC", "2026-12-10T12:00:00Z");
        world.add_source("home", 1, &[("aws", "2y 1m")]);
        world.sources[0].uploads[0].storage_classes = Some(crate::storage::StorageClasses {
            by_timeframe: [
                (btrfs2s3_policy::Timeframe::Years, "DEEP_ARCHIVE".to_owned()),
                (btrfs2s3_policy::Timeframe::Months, "GLACIER_IR".to_owned()),
            ]
            .into(),
            default: Some("STANDARD_IA".to_owned()),
            min_days: BTreeMap::new(),
        });
        world.add_snapshot(0, "y", 1, "2026-01-02T10:00:00Z", 100);
        world.add_snapshot(0, "m", 2, "2026-12-01T10:00:00Z", 200);
        let plan = plan(&world.assessment()).unwrap();
        // Kept until 2028: Deep Archive. December's monthly is the most recent, kept a month
        // ahead of now (31 days): too short for Glacier IR (90), long enough for the
        // default, Standard-IA (30).
        assert_eq!(
            backup(&plan, 1).storage_class.as_deref(),
            Some("DEEP_ARCHIVE")
        );
        assert_eq!(
            backup(&plan, 2).storage_class.as_deref(),
            Some("STANDARD_IA")
        );
        let classes: Vec<Option<&str>> = plan
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Upload(upload) => Some(upload.spec.options.storage_class.as_deref()),
                _ => None,
            })
            .collect();
        assert_eq!(classes, [Some("DEEP_ARCHIVE"), Some("STANDARD_IA")]);
    }

    /// The worked example of the README's "Storage classes": each row's new backup and the
    /// class it gets.
    #[test]
    fn the_readme_storage_class_example() {
        use btrfs2s3_policy::Timeframe::{Days, Months, Years};
        let classes = crate::storage::StorageClasses {
            by_timeframe: [
                (Years, "DEEP_ARCHIVE"),
                (Months, "GLACIER_IR"),
                (Days, "STANDARD_IA"),
            ]
            .map(|(t, c)| (t, c.to_owned()))
            .into(),
            default: Some("STANDARD".to_owned()),
            min_days: BTreeMap::new(),
        };
        // (backed-up snapshots, the new snapshot and now, its class)
        let rows: &[(&[&str], &str, &str)] = &[
            (&[], "2026-01-05T00:10:00Z", "DEEP_ARCHIVE"),
            (&[], "2026-12-10T12:00:00Z", "STANDARD_IA"),
            (
                &["2026-01-05T00:10:00Z"],
                "2026-03-01T00:10:00Z",
                "GLACIER_IR",
            ),
            (
                &["2026-01-05T00:10:00Z"],
                "2026-05-03T12:00:00Z",
                "STANDARD_IA",
            ),
            (
                &["2026-01-05T00:10:00Z", "2026-03-01T00:10:00Z"],
                "2026-03-08T00:10:00Z",
                "STANDARD",
            ),
            (
                &[
                    "2026-01-05T00:10:00Z",
                    "2026-03-01T00:10:00Z",
                    "2026-03-08T00:10:00Z",
                ],
                "2026-03-08T05:00:00Z",
                "STANDARD",
            ),
        ];
        for (older, new, class) in rows {
            let mut world = FakeWorld::new("UTC", new);
            world.add_source("home", 1, &[("aws", "1y 3m 30d 24h")]);
            world.sources[0].uploads[0].storage_classes = Some(classes.clone());
            let mut previous = None;
            for (n, ctime) in older.iter().enumerate() {
                let id = n as u64 + 1;
                world.add_snapshot(0, &format!("s{id}"), id, ctime, id * 100);
                world.add_backup(0, "aws", id, previous);
                previous = previous.or(Some(1));
            }
            world.add_snapshot(0, "new", 99, new, 9900);
            let plan = plan(&world.assessment()).unwrap();
            assert_eq!(
                backup(&plan, 99).storage_class.as_deref(),
                Some(*class),
                "{new}"
            );
        }
    }
}
