//! An in-memory [`World`]: snapshot directories and buckets as maps, with failures on demand.
//! It can also describe itself as an [`Assessment`], so a test can plan, execute, and plan
//! again. For unit tests of the planner and the executor; integration tests use real btrfs
//! and real S3 servers.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use btrfs2s3_s3::{BackupMeta, ObjectLock};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use uuid::Uuid;

use crate::cancel::Cancel;
use crate::plan::{
    AbortUpload, Assessment, BackupState, ExtendLock, Origin, RemoteState, SnapshotRef,
    SnapshotState, SourceState, UploadSpec, UploadTarget,
};
use crate::storage::LockSettings;
use crate::world::{Uploader, World, WorldError};

/// A source of the fake world.
#[derive(Debug, Clone)]
pub struct FakeSource {
    pub path: PathBuf,
    pub name: String,
    pub uuid: Uuid,
    pub directory: PathBuf,
    pub uploads: Vec<UploadTarget>,
}

/// The fake world.
#[derive(Debug, Clone)]
pub struct FakeWorld {
    pub timezone: TimeZone,
    pub now: Timestamp,
    pub sources: Vec<FakeSource>,
    /// directory → id → snapshot (its name is the current name).
    pub snapshots: BTreeMap<PathBuf, BTreeMap<u64, SnapshotState>>,
    /// remote → key → size.
    pub objects: BTreeMap<String, BTreeMap<String, u64>>,
    /// Multipart uploads left behind: (remote, key, upload id).
    pub pending_uploads: BTreeSet<(String, String, String)>,
    /// Uploads to these keys fail.
    pub failing_keys: BTreeSet<String>,
    /// Uploads to these remotes fail.
    pub failing_remotes: BTreeSet<String>,
    /// Snapshot operations fail on these names.
    pub failing_snapshots: BTreeSet<String>,
    /// Every operation, in order.
    pub log: Vec<String>,
    /// When set, this many more operations succeed, then every one fails (a crash).
    pub crash_after: Option<usize>,
    /// When set, this many more operations succeed, then the run is cancelled (a signal).
    pub interrupt_after: Option<(usize, Cancel)>,
    /// Each source's current ctransid (it grows as the source changes).
    pub source_ctransid: Vec<u64>,
    /// The next subvolume id.
    pub next_id: u64,
    /// The object lock of each remote that has one (its bucket has Object Lock enabled).
    pub locks: BTreeMap<String, LockSettings>,
    /// The retention of each locked object: (remote, key) → lock.
    pub retentions: BTreeMap<(String, String), ObjectLock>,
    /// The storage class each object was uploaded with: (remote, key) → class.
    pub classes: BTreeMap<(String, String), String>,
    /// Deletes of objects whose lock had not expired, and locks shortened (the bucket refuses
    /// both; a correct planner never asks).
    pub lock_violations: Vec<String>,
    /// Each upload stream yields this many times before it stores anything, so that several
    /// can be in flight at once.
    pub yields_per_stream: usize,
    /// The most upload streams that were in flight at once.
    pub most_streams_in_flight: usize,
}

impl FakeWorld {
    pub fn new(timezone: &str, now: &str) -> FakeWorld {
        FakeWorld {
            timezone: TimeZone::get(timezone).expect("a known zone"),
            now: now.parse().expect("an RFC 3339 instant"),
            sources: Vec::new(),
            snapshots: BTreeMap::new(),
            objects: BTreeMap::new(),
            pending_uploads: BTreeSet::new(),
            failing_keys: BTreeSet::new(),
            failing_remotes: BTreeSet::new(),
            failing_snapshots: BTreeSet::new(),
            log: Vec::new(),
            crash_after: None,
            interrupt_after: None,
            source_ctransid: Vec::new(),
            next_id: 1000,
            locks: BTreeMap::new(),
            retentions: BTreeMap::new(),
            classes: BTreeMap::new(),
            lock_violations: Vec::new(),
            yields_per_stream: 0,
            most_streams_in_flight: 0,
        }
    }

    /// One more operation: fails once the crash budget is spent; cancels the run once the
    /// interruption budget is.
    fn operate(&mut self) -> Result<(), WorldError> {
        if let Some((left, cancel)) = &mut self.interrupt_after {
            if *left == 0 {
                cancel.cancel("SIGTERM");
            } else {
                *left -= 1;
            }
        }
        match &mut self.crash_after {
            Some(0) => Err(injected("crashed")),
            Some(left) => {
                *left -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// The source changed.
    pub fn touch(&mut self, source: usize) {
        self.source_ctransid[source] += 7;
    }

    /// Adds a source `name` in `/pool`, snapshotted into `/pool/.snapshots`, backed up to
    /// each `(remote, preserve)`.
    pub fn add_source(&mut self, name: &str, uuid: u128, uploads: &[(&str, &str)]) {
        let uploads = uploads
            .iter()
            .map(|(remote, preserve)| {
                self.objects.entry((*remote).to_owned()).or_default();
                UploadTarget {
                    remote: (*remote).to_owned(),
                    preserve: preserve.parse().expect("a valid policy"),
                    pipe_through: Vec::new(),
                    storage_classes: None,
                    send_protocol: crate::config::SendProtocol::V1,
                }
            })
            .collect();
        self.source_ctransid.push(100);
        self.sources.push(FakeSource {
            path: PathBuf::from("/pool").join(name),
            name: name.to_owned(),
            uuid: Uuid::from_u128(uuid),
            directory: PathBuf::from("/pool/.snapshots"),
            uploads,
        });
    }

    /// Adds a snapshot of source `source` (an index), named `name`.
    pub fn add_snapshot(&mut self, source: usize, name: &str, id: u64, ctime: &str, ctransid: u64) {
        let directory = self.sources[source].directory.clone();
        let uuid =
            Uuid::from_u128(u128::from(id) << 64 | self.sources[source].uuid.as_u128() & 0xffff);
        self.snapshots.entry(directory).or_default().insert(
            id,
            SnapshotState {
                name: name.to_owned(),
                id: Some(id),
                uuid,
                ctime: ctime.parse().expect("an RFC 3339 instant"),
                ctransid,
                origin: Origin::Existing,
            },
        );
    }

    /// The uuid of snapshot `id`.
    pub fn snapshot_uuid(&self, id: u64) -> Uuid {
        self.snapshots
            .values()
            .find_map(|snapshots| snapshots.get(&id))
            .map(|snapshot| snapshot.uuid)
            .expect("a known snapshot")
    }

    /// Puts a backup of snapshot `id` of source `source` in `remote`.
    pub fn add_backup(
        &mut self,
        source: usize,
        remote: &str,
        id: u64,
        send_parent: Option<u64>,
    ) -> String {
        let snapshot = self
            .snapshots
            .values()
            .find_map(|snapshots| snapshots.get(&id))
            .expect("a known snapshot")
            .clone();
        let meta = BackupMeta {
            uuid: snapshot.uuid,
            parent_uuid: self.sources[source].uuid,
            send_parent_uuid: send_parent.map(|parent| self.snapshot_uuid(parent)),
            ctransid: i64::try_from(snapshot.ctransid).expect("small"),
            ctime: Timestamp::from_second(snapshot.ctime.as_second()).expect("in range"),
        };
        let key = meta.key(&self.sources[source].name, &self.timezone);
        self.objects
            .entry(remote.to_owned())
            .or_default()
            .insert(key.clone(), 100);
        key
    }

    /// The state as `assess` would find it.
    pub fn assessment(&self) -> Assessment {
        let sources = self
            .sources
            .iter()
            .zip(&self.source_ctransid)
            .map(|(source, ctransid)| SourceState {
                path: source.path.clone(),
                name: source.name.clone(),
                uuid: source.uuid,
                ctransid: *ctransid,
                ctime: self.now,
                snapshot_dir: source.directory.clone(),
                snapshots: self
                    .snapshots
                    .get(&source.directory)
                    .map(|snapshots| {
                        snapshots
                            .values()
                            .filter(|s| s.uuid.as_u128() & 0xffff == source.uuid.as_u128() & 0xffff)
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default(),
                uploads: source.uploads.clone(),
            })
            .collect();
        let remotes = self
            .objects
            .iter()
            .map(|(remote, objects)| {
                let mut backups = Vec::new();
                let mut foreign_objects = 0;
                for (key, size) in objects {
                    match BackupMeta::parse_key(key) {
                        Ok(meta) => backups.push(BackupState {
                            key: key.as_str().into(),
                            meta,
                            size: *size,
                            storage_class: self
                                .classes
                                .get(&(remote.clone(), key.clone()))
                                .cloned(),
                            retention: self.retentions.get(&(remote.clone(), key.clone())).copied(),
                            pieces: Vec::new(),
                        }),
                        Err(_) => foreign_objects += 1,
                    }
                }
                RemoteState {
                    id: remote.clone(),
                    bucket: format!("bucket-{remote}"),
                    backups,
                    broken: Vec::new(),
                    leftovers: Vec::new(),
                    max_object_size: btrfs2s3_s3::DEFAULT_MAX_OBJECT_SIZE,
                    foreign_objects,
                    pages: 1,
                    pending_uploads: self
                        .pending_uploads
                        .iter()
                        .filter(|(r, _, _)| r == remote)
                        .map(|(_, key, upload_id)| crate::plan::PendingUpload {
                            key: key.clone(),
                            upload_id: upload_id.clone(),
                        })
                        .collect(),
                    object_lock: self.locks.get(remote).copied(),
                    lock_enabled: self.locks.contains_key(remote),
                }
            })
            .collect();
        Assessment {
            timezone: self.timezone.clone(),
            timezone_name: "test".to_owned(),
            now: self.now,
            sources,
            remotes,
        }
    }

    /// The options of an unattended run at the world's now.
    pub fn options(&self, mode: crate::run::Mode) -> crate::run::UpdateOptions {
        crate::run::UpdateOptions {
            now: self.now,
            mode,
            wait: std::time::Duration::ZERO,
            ask: false,
            min_snapshot_age: std::time::Duration::ZERO,
            parallel_uploads: crate::config::DEFAULT_PARALLEL_UPLOADS,
            rate_limit: None,
        }
    }

    /// Runs the real update cycle on this world, from `assessment`.
    pub fn cycle_from(
        &mut self,
        assessment: Assessment,
        options: &crate::run::UpdateOptions,
        ui: &impl crate::run::Ui,
        cancel: &Cancel,
    ) -> crate::run::UpdateReport {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
            .block_on(crate::run::cycle(self, assessment, options, ui, cancel))
    }

    /// Runs the real update cycle on this world as it is.
    pub fn cycle(
        &mut self,
        options: &crate::run::UpdateOptions,
        ui: &impl crate::run::Ui,
        cancel: &Cancel,
    ) -> crate::run::UpdateReport {
        let assessment = self.assessment();
        self.cycle_from(assessment, options, ui, cancel)
    }

    /// The snapshot `snapshot` refers to, if it is still there under that name.
    fn snapshot_mut(&mut self, snapshot: &SnapshotRef) -> Result<&mut SnapshotState, WorldError> {
        let name = &snapshot.name;
        if self.failing_snapshots.contains(name) {
            return Err(injected(&format!("injected failure on {name}")));
        }
        let id = snapshot
            .id
            .ok_or_else(|| WorldError::OnlyPlanned { name: name.clone() })?;
        self.snapshots
            .get_mut(&snapshot.directory)
            .and_then(|snapshots| snapshots.get_mut(&id))
            .filter(|found| found.name == *name)
            .ok_or_else(|| {
                injected(&format!(
                    "no snapshot {name} ({id}) in {}",
                    snapshot.directory.display()
                ))
            })
    }
}

/// Uploads of the fake world. A call borrows the world only while it does not wait, so
/// several calls can be in flight at once.
pub struct FakeUploader<'a> {
    world: RefCell<&'a mut FakeWorld>,
    in_flight: Cell<usize>,
}

impl Uploader for FakeUploader<'_> {
    async fn upload(
        &self,
        uploads: &[UploadSpec],
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Vec<Result<u64, WorldError>>, WorldError> {
        let Some(first) = uploads.first() else {
            return Ok(Vec::new());
        };
        self.in_flight.set(self.in_flight.get() + 1);
        let yields = {
            let mut world = self.world.borrow_mut();
            world.most_streams_in_flight = world.most_streams_in_flight.max(self.in_flight.get());
            let remotes: Vec<&str> = uploads.iter().map(|u| u.remote.as_str()).collect();
            world.log.push(format!(
                "send {} {}",
                first.snapshot.name,
                remotes.join(",")
            ));
            world.yields_per_stream
        };
        for _ in 0..yields {
            tokio::task::yield_now().await;
        }
        self.in_flight.set(self.in_flight.get() - 1);
        let mut world = self.world.borrow_mut();
        // The stream: its snapshots must be there.
        world.snapshot_mut(&first.snapshot)?;
        if let Some(parent) = &first.send_parent {
            world.snapshot_mut(parent)?;
        }
        progress(100);
        Ok(uploads.iter().map(|upload| world.store(upload)).collect())
    }
}

impl FakeWorld {
    /// One object of an upload.
    fn store(&mut self, upload: &UploadSpec) -> Result<u64, WorldError> {
        self.operate()?;
        if self.failing_keys.contains(&*upload.key) || self.failing_remotes.contains(&upload.remote)
        {
            return Err(injected(&format!(
                "injected failure uploading {}",
                upload.key
            )));
        }
        self.objects
            .entry(upload.remote.clone())
            .or_default()
            .insert(upload.key.to_string(), 100);
        let id = (upload.remote.clone(), upload.key.to_string());
        if let Some(lock) = upload.options.object_lock {
            self.retentions.insert(id.clone(), lock);
        }
        if let Some(class) = &upload.options.storage_class {
            self.classes.insert(id, class.clone());
        }
        self.log
            .push(format!("upload {} {}", upload.remote, upload.snapshot.name));
        Ok(100)
    }
}

fn injected(message: &str) -> WorldError {
    WorldError::Injected {
        message: message.to_owned(),
    }
}

impl World for FakeWorld {
    async fn create_snapshot(
        &mut self,
        source: &SourceState,
        name: &str,
    ) -> Result<SnapshotState, WorldError> {
        self.operate()?;
        let index = self
            .sources
            .iter()
            .position(|fake| fake.path == source.path)
            .ok_or_else(|| injected("no such source"))?;
        self.next_id += 1;
        let id = self.next_id;
        let now = self.now.to_string();
        self.add_snapshot(index, name, id, &now, self.source_ctransid[index]);
        self.log.push(format!("create {name}"));
        let mut created = self.snapshots[&source.snapshot_dir][&id].clone();
        created.origin = Origin::Created;
        Ok(created)
    }

    async fn rename_snapshot(
        &mut self,
        snapshot: &SnapshotRef,
        to: &str,
    ) -> Result<(), WorldError> {
        self.operate()?;
        self.snapshot_mut(snapshot)?.name = to.to_owned();
        self.log.push(format!("rename {} {to}", snapshot.name));
        Ok(())
    }

    async fn destroy_snapshot(&mut self, snapshot: &SnapshotRef) -> Result<(), WorldError> {
        self.operate()?;
        let id = self.snapshot_mut(snapshot)?.id;
        if let (Some(snapshots), Some(id)) = (self.snapshots.get_mut(&snapshot.directory), id) {
            snapshots.remove(&id);
        }
        self.log.push(format!("destroy {}", snapshot.name));
        Ok(())
    }

    type Uploader<'a> = FakeUploader<'a>;

    fn uploader(&mut self) -> FakeUploader<'_> {
        FakeUploader {
            world: RefCell::new(self),
            in_flight: Cell::new(0),
        }
    }

    async fn extend_lock(&mut self, extend: &ExtendLock) -> Result<(), WorldError> {
        self.operate()?;
        let id = (extend.remote.clone(), extend.key.to_string());
        if !self
            .objects
            .get(&extend.remote)
            .is_some_and(|o| o.contains_key(&*extend.key))
        {
            return Err(injected(&format!("no object {}", extend.key)));
        }
        if let Some(current) = self.retentions.get(&id)
            && current.retain_until > extend.lock.retain_until
        {
            self.lock_violations
                .push(format!("lock of {} shortened", extend.key));
            return Err(injected("a lock cannot be shortened"));
        }
        self.retentions.insert(id, extend.lock);
        self.log
            .push(format!("lock {} {}", extend.remote, extend.key));
        Ok(())
    }

    async fn abort_upload(&mut self, upload: &AbortUpload) -> Result<(), WorldError> {
        self.operate()?;
        let AbortUpload {
            remote,
            key,
            upload_id,
        } = upload;
        if self
            .pending_uploads
            .remove(&(remote.clone(), key.clone(), upload_id.clone()))
        {
            self.log.push(format!("abort {remote} {key}"));
            Ok(())
        } else {
            Err(injected(&format!(
                "no upload {upload_id} of {key} in {remote}"
            )))
        }
    }

    async fn delete_backups(&mut self, remote: &str, keys: &[Arc<str>]) -> Result<(), WorldError> {
        self.operate()?;
        for key in keys {
            let id = (remote.to_owned(), key.to_string());
            if let Some(lock) = self.retentions.get(&id)
                && lock.retain_until > self.now
            {
                self.lock_violations.push(format!(
                    "delete of {key} locked until {}",
                    lock.retain_until
                ));
                return Err(injected(&format!("{key} is locked")));
            }
            self.retentions.remove(&id);
            self.classes.remove(&id);
        }
        let objects = self.objects.entry(remote.to_owned()).or_default();
        for key in keys {
            if objects.remove(&**key).is_none() {
                return Err(injected(&format!("no object {key} in {remote}")));
            }
            self.log.push(format!("delete {remote} {key}"));
        }
        Ok(())
    }
}

/// A config whose one source, `/pool/home`, is backed up to each `(remote, preserve)`: what
/// [`FakeWorld::add_source`] makes, as a config file would say it.
pub fn config(timezone: &str, uploads: &[(&str, &str)]) -> crate::config::Config {
    use std::fmt::Write as _;
    let mut yaml = format!(
        "timezone: {timezone}\nsources:\n  - path: /pool/home\n    snapshots: /pool/.snapshots\n    upload_to_remotes:\n"
    );
    for (remote, preserve) in uploads {
        let _ = write!(yaml, "      - id: {remote}\n        preserve: {preserve}\n");
    }
    yaml.push_str("remotes:\n");
    for (remote, _) in uploads {
        let _ = write!(
            yaml,
            "  - id: {remote}\n    s3:\n      bucket: bucket-{remote}\n"
        );
    }
    crate::config::parse(std::path::Path::new("/etc/btrfs2s3.yaml"), &yaml).expect("a valid config")
}
