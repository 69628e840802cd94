//! The real world: btrfs sources and snapshot directories, and S3 remotes. Opening it
//! gathers the state a run plans from — it opens every source and snapshot directory, locks
//! the directories, lists each remote once and each source's snapshots — and the [`World`]
//! operations then act on what it opened. Blocking btrfs calls run on the runtime's blocking
//! threads, never on its workers.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use btrfs2s3_btrfs::{SendOptions, Snapshot, SnapshotDir, Subvolume};
use btrfs2s3_s3::{BackupMeta, Remote};
use jiff::Timestamp;
use snafu::{ResultExt, Snafu};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::cache::ListingCache;
use crate::config::{Config, SourceConfig};
use crate::plan::{
    AbortUpload, Assessment, BackupState, ExtendLock, Origin, RemoteState, SnapshotRef,
    SnapshotState, SourceState, UploadSpec, UploadTarget,
};
use crate::world::{Uploader, World, WorldError};

/// Why the state could not be assessed. Nothing has been changed when this happens.
#[derive(Debug, Snafu)]
#[snafu(visibility(pub(crate)))]
pub enum AssessError {
    /// A source or snapshot directory is unusable (not btrfs, not a subvolume, missing...).
    #[snafu(display("cannot use source {}", path.display()))]
    Source {
        /// The source.
        path: PathBuf,
        /// Why.
        source: btrfs2s3_btrfs::Error,
    },
    /// A snapshot directory is unusable.
    #[snafu(display("cannot use snapshot directory {}", path.display()))]
    SnapshotDirectory {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: btrfs2s3_btrfs::Error,
    },
    /// Two config entries name the same subvolume.
    #[snafu(display("sources {} and {} are the same subvolume ({uuid})", first.display(), second.display()))]
    SameSource {
        /// The first entry.
        first: PathBuf,
        /// The second.
        second: PathBuf,
        /// The subvolume.
        uuid: Uuid,
    },
    /// A source's directory name cannot prefix keys and snapshot names.
    #[snafu(display("source {} has no usable directory name (it must be valid UTF-8)", path.display()))]
    SourceName {
        /// The source.
        path: PathBuf,
    },
    /// Another run holds the lock of a snapshot directory, or the wait for it was
    /// interrupted.
    #[snafu(display("cannot use snapshot directory {}", path.display()))]
    Locked {
        /// The directory.
        path: PathBuf,
        /// Who holds it.
        source: crate::lock::LockError,
    },
    /// A remote could not be listed.
    #[snafu(display("cannot list remote {remote}"))]
    ListRemote {
        /// The remote's id.
        remote: String,
        /// Why.
        source: Box<btrfs2s3_s3::Error>,
    },
    /// Someone other than root (or the user running btrfs2s3) can change a snapshot
    /// directory, where root destroys subvolumes.
    #[snafu(transparent)]
    Untrusted {
        /// Who, and how to fix it.
        source: crate::trust::Untrusted,
    },
    /// The config locks backups in a bucket without Object Lock.
    #[snafu(display(
        "remote {remote}: bucket {bucket} does not have Object Lock enabled (or its server does not support it), but the config sets object_lock; create a bucket with Object Lock enabled, or remove object_lock"
    ))]
    ObjectLockDisabled {
        /// The remote's id.
        remote: String,
        /// Its bucket.
        bucket: String,
    },
    /// The clocks of this machine and of a server whose backups get locks disagree.
    #[snafu(display(
        "remote {remote}: this machine's clock ({local}) and the server's ({server}) differ by {} s; a lock computed from a wrong clock is wrong for years, so nothing was uploaded: set the clock right (NTP)",
        (local.as_second() - server.as_second()).abs()
    ))]
    ClockSkew {
        /// The remote's id.
        remote: String,
        /// This machine's time.
        local: Timestamp,
        /// The server's time (its `Date` header).
        server: Timestamp,
    },
    /// The thread a blocking operation ran on ended without a result.
    #[snafu(display("a worker thread failed: {message}"))]
    Worker {
        /// What the runtime said.
        message: String,
    },
}

impl AssessError {
    /// Whether another run holds a lock we need.
    #[must_use]
    pub fn is_locked(&self) -> bool {
        matches!(self, AssessError::Locked { source, .. } if source.is_held())
    }

    /// Whether the error is about local setup (paths, filesystems): a usage error, as
    /// opposed to a failure of something that worked before (a remote, a snapshot).
    #[must_use]
    pub fn is_setup_error(&self) -> bool {
        matches!(
            self,
            AssessError::Source { .. }
                | AssessError::SnapshotDirectory { .. }
                | AssessError::SameSource { .. }
                | AssessError::SourceName { .. }
                | AssessError::ObjectLockDisabled { .. }
                | AssessError::Untrusted { .. }
        ) || matches!(self, AssessError::Locked { source, .. } if source.is_unsafe())
    }
}

/// Runs blocking `work` on the runtime's blocking threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| error.to_string())
}

/// A remote the run connected to.
struct Connected {
    client: Remote,
    /// Whether the bucket keeps versions, once known.
    versioned: Option<bool>,
}

/// The real snapshots and buckets.
pub struct RealWorld {
    sources: HashMap<PathBuf, Arc<Subvolume>>,
    dirs: HashMap<PathBuf, Arc<SnapshotDir>>,
    remotes: HashMap<String, Connected>,
    /// The remotes that were listed (the others came from the cache), in config order.
    listed: Vec<String>,
    /// The snapshot directories' locks, held until the run ends.
    _locks: Vec<crate::lock::Lock>,
}

impl RealWorld {
    /// Opens everything `config` names and reads the state at `now`: the sources, their
    /// snapshots and every remote some source uses — as `cache` remembers it, or listed (and
    /// then remembered, when there is a cache). The snapshot directories stay locked (waiting up to `wait` for
    /// another run) until the world is dropped. Changes nothing.
    pub async fn open(
        config: &Config,
        now: Timestamp,
        wait: Duration,
        cancel: &CancellationToken,
        cache: Option<&mut ListingCache>,
    ) -> Result<(RealWorld, Assessment), AssessError> {
        let worker = |message| AssessError::Worker { message };
        // Open everything local first: any problem stops us before anything is changed.
        let source_configs = config.sources.clone();
        let (opened, dirs) = blocking(move || open_local(&source_configs))
            .await
            .map_err(worker)??;
        // Lock every snapshot directory before looking into them, in a fixed order so that
        // two waiting runs cannot deadlock.
        let mut dir_paths: Vec<&PathBuf> = dirs.keys().collect();
        dir_paths.sort();
        let mut locks = Vec::new();
        for path in dir_paths {
            let lock = crate::lock::lock_directory_async(path, wait, cancel)
                .await
                .context(LockedSnafu { path })?;
            locks.push(lock);
        }
        let source_uuids: Vec<Uuid> = opened.iter().map(|s| s.info().uuid).collect();
        let (remotes, clients, listed) = list_remotes(config, &source_uuids, cancel, cache).await?;
        let mut sources = Vec::new();
        for (subvolume, source_config) in opened.iter().zip(&config.sources) {
            let dir = Arc::clone(&dirs[&source_config.snapshots]);
            let uuid = subvolume.info().uuid;
            let listed = blocking(move || dir.snapshots_of(uuid))
                .await
                .map_err(worker)?
                .context(SnapshotDirectorySnafu {
                    path: &source_config.snapshots,
                })?;
            sources.push(source_state(source_config, subvolume, listed)?);
        }
        let assessment = Assessment {
            timezone: config.timezone.clone(),
            timezone_name: config.timezone_name.clone(),
            now,
            sources,
            remotes,
        };
        let world = RealWorld {
            sources: opened
                .into_iter()
                .map(|subvolume| (subvolume.path().to_path_buf(), subvolume))
                .collect(),
            dirs,
            remotes: clients,
            listed,
            _locks: locks,
        };
        Ok((world, assessment))
    }

    /// The remotes whose server refused CRC-32C checksums in this run.
    #[must_use]
    pub fn checksum_refusals(&self) -> Vec<String> {
        let mut refusing: Vec<String> = self
            .remotes
            .iter()
            .filter(|(_, connected)| connected.client.refuses_checksums())
            .map(|(id, _)| id.clone())
            .collect();
        refusing.sort();
        refusing
    }

    /// Makes every upload also draw from `limit` (shared by all remotes).
    pub fn limit_uploads(&mut self, limit: &crate::storage::BandwidthLimit) {
        for connected in self.remotes.values_mut() {
            connected.client = connected.client.clone().with_rate_limit(limit.0.clone());
        }
    }

    /// The remotes that were listed rather than taken from the cache, in config order.
    #[must_use]
    pub fn listed(&self) -> &[String] {
        &self.listed
    }

    /// Tells `cache` what the run learned about the buckets (whether they keep versions).
    pub fn teach(&self, cache: &mut ListingCache) {
        for (id, connected) in &self.remotes {
            if let Some(versioned) = connected.versioned {
                cache.set_versioned(id, versioned);
            }
        }
    }
}

type OpenedSources = Vec<Arc<Subvolume>>;
type OpenedDirs = HashMap<PathBuf, Arc<SnapshotDir>>;

/// Opens every source and snapshot directory (each directory once), and checks that they
/// can work together.
fn open_local(sources: &[SourceConfig]) -> Result<(OpenedSources, OpenedDirs), AssessError> {
    let mut opened: OpenedSources = Vec::new();
    let mut dirs: OpenedDirs = HashMap::new();
    for source in sources {
        let subvolume =
            Subvolume::open(&source.path).context(SourceSnafu { path: &source.path })?;
        if let Some(other) = opened
            .iter()
            .find(|other| other.info().uuid == subvolume.info().uuid)
        {
            return Err(AssessError::SameSource {
                first: other.path().to_path_buf(),
                second: source.path.clone(),
                uuid: subvolume.info().uuid,
            });
        }
        if !dirs.contains_key(&source.snapshots) {
            let dir = SnapshotDir::open(&source.snapshots).context(SnapshotDirectorySnafu {
                path: &source.snapshots,
            })?;
            trusted_snapshot_directory(&source.snapshots)?;
            dirs.insert(source.snapshots.clone(), Arc::new(dir));
        }
        dirs[&source.snapshots]
            .check_same_filesystem(&subvolume)
            .context(SnapshotDirectorySnafu {
                path: &source.snapshots,
            })?;
        opened.push(Arc::new(subvolume));
    }
    Ok((opened, dirs))
}

/// How far this machine's clock may be from a server's when backups get locks.
pub(crate) const MAX_CLOCK_SKEW_SECONDS: i64 = 300;

/// Root destroys subvolumes in a snapshot directory: nobody else may be able to change it
/// (not even with a sticky bit), nor a directory above it.
pub(crate) fn trusted_snapshot_directory(dir: &Path) -> Result<(), AssessError> {
    use crate::trust::{Kind, Trustee, check_directories, check_metadata};
    let trustee = Trustee::current();
    let inspect = |source| crate::trust::Untrusted::Inspect {
        kind: Kind::SnapshotDirectory,
        path: dir.to_path_buf(),
        source,
    };
    let canonical = std::fs::canonicalize(dir).map_err(inspect)?;
    let metadata = std::fs::metadata(&canonical).map_err(inspect)?;
    check_metadata(Kind::SnapshotDirectory, dir, &metadata, trustee)?;
    check_directories(&canonical, trustee)?;
    Ok(())
}

/// The remotes a run uses, their clients, and the ids of those that were listed.
type Remotes = (Vec<RemoteState>, HashMap<String, Connected>, Vec<String>);

/// Connects to each remote some source uses, once however many sources use it, and lists it
/// unless `cache` remembers it. In a bucket with Object Lock, the retention of every backup
/// of the config's sources is read too.
async fn list_remotes(
    config: &Config,
    sources: &[Uuid],
    cancel: &CancellationToken,
    mut cache: Option<&mut ListingCache>,
) -> Result<Remotes, AssessError> {
    let used = config.remotes.iter().filter(|remote| {
        config.sources.iter().any(|source| {
            source
                .upload_to_remotes
                .iter()
                .any(|upload| upload.remote_id == remote.id)
        })
    });
    let mut remotes = Vec::new();
    let mut clients = HashMap::new();
    let mut listed = Vec::new();
    for remote in used {
        if let Some((state, versioned)) = cache.as_deref().and_then(|cache| cache.get(&remote.id)) {
            let client = Remote::connect(&remote.s3)
                .await
                .map_err(|source| AssessError::ListRemote {
                    remote: remote.id.clone(),
                    source: Box::new(source),
                })?
                .with_cancellation(cancel.clone())
                .with_piece_hook(|_| crate::failpoint::hit("piece-uploaded"));
            remotes.push(state.clone());
            clients.insert(remote.id.clone(), Connected { client, versioned });
            continue;
        }
        let (state, client) = list_remote(remote, sources, cancel).await?;
        // Object lock implies versions; otherwise the first delete asks.
        let versioned = state.lock_enabled.then_some(true);
        if let Some(cache) = cache.as_deref_mut() {
            cache.store(state.clone(), versioned, Timestamp::now());
        }
        remotes.push(state);
        clients.insert(remote.id.clone(), Connected { client, versioned });
        listed.push(remote.id.clone());
    }
    Ok((remotes, clients, listed))
}

async fn list_remote(
    remote: &crate::config::Remote,
    sources: &[Uuid],
    cancel: &CancellationToken,
) -> Result<(RemoteState, Remote), AssessError> {
    let error = |source| AssessError::ListRemote {
        remote: remote.id.clone(),
        source: Box::new(source),
    };
    let client = Remote::connect(&remote.s3)
        .await
        .map_err(error)?
        .with_cancellation(cancel.clone())
        .with_piece_hook(|_| crate::failpoint::hit("piece-uploaded"));
    let lock_enabled = client.object_lock_enabled().await.map_err(error)?;
    if remote.object_lock.is_some() && !lock_enabled {
        return Err(AssessError::ObjectLockDisabled {
            remote: remote.id.clone(),
            bucket: client.bucket().to_owned(),
        });
    }
    let listing = client.list().await.map_err(error)?;
    if remote.object_lock.is_some()
        && let Some(server) = listing.server_time
    {
        let local = Timestamp::now();
        if (local.as_second() - server.as_second()).abs() > MAX_CLOCK_SKEW_SECONDS {
            return Err(AssessError::ClockSkew {
                remote: remote.id.clone(),
                local,
                server,
            });
        }
    }
    let pending_uploads = client
        .pending_uploads()
        .await
        .map_err(error)?
        .into_iter()
        .map(|upload| crate::plan::PendingUpload {
            key: upload.key,
            upload_id: upload.upload_id,
        })
        .collect();
    let mut backups: Vec<BackupState> =
        listing.backups.into_iter().map(BackupState::from).collect();
    if lock_enabled {
        // Only the backups of this config's sources: the planner never touches others.
        let ours: Vec<usize> = (0..backups.len())
            .filter(|&i| sources.contains(&backups[i].meta.parent_uuid))
            .collect();
        let keys: Vec<&str> = ours.iter().map(|&i| &*backups[i].key).collect();
        let retentions = client.retentions(&keys).await.map_err(error)?;
        for (i, retention) in ours.into_iter().zip(retentions) {
            backups[i].retention = retention;
        }
    }
    let state = RemoteState {
        id: remote.id.clone(),
        bucket: client.bucket().to_owned(),
        backups,
        broken: listing.broken.into_iter().map(BackupState::from).collect(),
        leftovers: listing
            .leftovers
            .into_iter()
            .map(|object| object.key.into())
            .collect(),
        max_object_size: remote.s3.upload.max_object_size,
        foreign_objects: listing.foreign.len(),
        pages: listing.pages,
        pending_uploads,
        object_lock: remote.object_lock,
        lock_enabled,
    };
    Ok((state, client))
}

/// Whether `key` is a piece of a backup other than its first.
fn is_later_piece(key: &str) -> bool {
    BackupMeta::parse_piece(key).is_ok_and(|(_, piece)| piece > 0)
}

/// A source and the snapshots of it that were listed.
fn source_state(
    source_config: &SourceConfig,
    subvolume: &Subvolume,
    listed: Vec<Snapshot>,
) -> Result<SourceState, AssessError> {
    let info = subvolume.info();
    Ok(SourceState {
        path: source_config.path.clone(),
        name: source_name(&source_config.path)?,
        uuid: info.uuid,
        ctransid: info.ctransid,
        ctime: info.ctime,
        snapshot_dir: source_config.snapshots.clone(),
        snapshots: listed
            .into_iter()
            .map(|snapshot| SnapshotState {
                name: snapshot.name.to_string_lossy().into_owned(),
                id: Some(snapshot.info.id),
                uuid: snapshot.info.uuid,
                ctime: snapshot.info.ctime,
                ctransid: snapshot.info.ctransid,
                origin: Origin::Existing,
            })
            .collect(),
        uploads: source_config
            .upload_to_remotes
            .iter()
            .map(|upload| UploadTarget {
                remote: upload.remote_id.clone(),
                preserve: upload.preserve,
                pipe_through: upload.pipe_through.clone(),
                storage_classes: upload.storage_classes.clone(),
                send_protocol: upload.send_protocol,
            })
            .collect(),
    })
}

/// The name of a source's directory: `home` for `/mnt/pool/home/`.
fn source_name(path: &Path) -> Result<String, AssessError> {
    path.file_name()
        .and_then(OsStr::to_str)
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| AssessError::SourceName {
            path: path.to_path_buf(),
        })
}

impl RealWorld {
    fn dir(&self, directory: &Path) -> Result<Arc<SnapshotDir>, WorldError> {
        self.dirs
            .get(directory)
            .cloned()
            .ok_or_else(|| WorldError::DirectoryNotOpened {
                directory: directory.to_path_buf(),
            })
    }

    fn remote(&self, id: &str) -> Result<&Remote, WorldError> {
        self.remotes
            .get(id)
            .map(|connected| &connected.client)
            .ok_or_else(|| WorldError::RemoteNotConnected {
                remote: id.to_owned(),
            })
    }

    fn connected(&mut self, id: &str) -> Result<&mut Connected, WorldError> {
        self.remotes
            .get_mut(id)
            .ok_or_else(|| WorldError::RemoteNotConnected {
                remote: id.to_owned(),
            })
    }

    /// Runs `work` on the snapshot directory of `snapshot`, which must exist (not only be
    /// planned), on a blocking thread.
    async fn on_snapshot<T: Send + 'static>(
        &self,
        snapshot: &SnapshotRef,
        work: impl FnOnce(&SnapshotDir, &OsStr, u64) -> btrfs2s3_btrfs::Result<T> + Send + 'static,
    ) -> Result<T, WorldError> {
        let dir = self.dir(&snapshot.directory)?;
        let id = snapshot.id.ok_or_else(|| WorldError::OnlyPlanned {
            name: snapshot.name.clone(),
        })?;
        let name = snapshot.name.clone();
        let result = blocking(move || work(&dir, OsStr::new(&name), id))
            .await
            .map_err(|message| WorldError::Worker { message })?;
        Ok(result?)
    }
}

impl World for RealWorld {
    async fn create_snapshot(
        &mut self,
        source: &SourceState,
        name: &str,
    ) -> Result<SnapshotState, WorldError> {
        let dir = self.dir(&source.snapshot_dir)?;
        let subvolume =
            self.sources
                .get(&source.path)
                .cloned()
                .ok_or_else(|| WorldError::SourceNotOpened {
                    path: source.path.clone(),
                })?;
        let new_name = name.to_owned();
        let created = blocking(move || dir.create_snapshot(&subvolume, OsStr::new(&new_name)))
            .await
            .map_err(|message| WorldError::Worker { message })??;
        Ok(SnapshotState {
            name: name.to_owned(),
            id: Some(created.id),
            uuid: created.uuid,
            ctime: created.ctime,
            ctransid: created.ctransid,
            origin: Origin::Created,
        })
    }

    async fn rename_snapshot(
        &mut self,
        snapshot: &SnapshotRef,
        to: &str,
    ) -> Result<(), WorldError> {
        let to = to.to_owned();
        self.on_snapshot(snapshot, move |dir, name, id| {
            // Only rename what is still the snapshot we planned for.
            dir.open_snapshot(name, id)?;
            dir.rename(name, OsStr::new(&to))
        })
        .await
    }

    async fn destroy_snapshot(&mut self, snapshot: &SnapshotRef) -> Result<(), WorldError> {
        self.on_snapshot(snapshot, SnapshotDir::delete_snapshot)
            .await
    }

    type Uploader<'a> = &'a RealWorld;

    fn uploader(&mut self) -> &RealWorld {
        self
    }

    /// In a versioned bucket every version goes, delete markers included: a plain delete
    /// would leave a delete marker and keep the data (and its bill).
    async fn delete_backups(&mut self, remote: &str, keys: &[Arc<str>]) -> Result<(), WorldError> {
        let connected = self.connected(remote)?;
        let versioned = if let Some(versioned) = connected.versioned {
            versioned
        } else {
            let versioned = connected.client.versioned().await?;
            connected.versioned = Some(versioned);
            versioned
        };
        // A backup's first piece goes before its others: a crash in between leaves pieces
        // that are no backup (a later run deletes them), never a backup missing pieces.
        let (first, others): (Vec<&Arc<str>>, Vec<&Arc<str>>) =
            keys.iter().partition(|key| !is_later_piece(key));
        for keys in [first, others] {
            if keys.is_empty() {
                continue;
            }
            if versioned {
                connected.client.delete_all_versions(&keys).await?;
            } else {
                connected.client.delete(&keys).await?;
            }
        }
        Ok(())
    }

    async fn extend_lock(&mut self, extend: &ExtendLock) -> Result<(), WorldError> {
        let remote = self.remote(&extend.remote)?;
        for key in extend.pieces.iter().chain([&extend.key]) {
            remote.extend_retention(key, extend.lock).await?;
        }
        Ok(())
    }

    async fn abort_upload(&mut self, upload: &AbortUpload) -> Result<(), WorldError> {
        self.remote(&upload.remote)?
            .abort_upload(&upload.key, &upload.upload_id)
            .await?;
        Ok(())
    }
}

impl Uploader for &RealWorld {
    async fn upload(
        &self,
        uploads: &[UploadSpec],
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Vec<Result<u64, WorldError>>, WorldError> {
        let Some(first) = uploads.first() else {
            return Ok(Vec::new());
        };
        let parent = match &first.send_parent {
            // Checks that the send parent is still there and still the same subvolume.
            Some(parent) => Some(
                self.on_snapshot(parent, |dir, name, id| {
                    dir.open_snapshot(name, id).map(|_| id)
                })
                .await?,
            ),
            None => None,
        };
        let snapshot = self
            .on_snapshot(&first.snapshot, SnapshotDir::open_snapshot)
            .await?;
        let compressed = first.send_protocol == crate::config::SendProtocol::V2;
        let options = SendOptions {
            parent,
            protocol: compressed.then_some(2),
            compressed,
        };
        // A remote that is not connected fails alone; the others get the stream.
        let mut results: Vec<Option<Result<u64, WorldError>>> = Vec::new();
        let mut destinations = Vec::new();
        for upload in uploads {
            match self.remote(&upload.remote) {
                Ok(remote) => {
                    results.push(None);
                    destinations.push(crate::pipeline::Destination {
                        remote,
                        key: &upload.key,
                        options: &upload.options,
                    });
                }
                Err(error) => results.push(Some(Err(error))),
            }
        }
        let mut streamed = crate::pipeline::upload_snapshot(
            &destinations,
            snapshot,
            options,
            &first.pipe_through,
            progress,
        )
        .await?
        .into_iter();
        Ok(results
            .into_iter()
            .map(|result| {
                result.unwrap_or_else(|| match streamed.next() {
                    Some(streamed) => streamed.map_err(WorldError::from),
                    None => Err(WorldError::Worker {
                        message: "an upload's result went missing".to_owned(),
                    }),
                })
            })
            .collect())
    }
}
