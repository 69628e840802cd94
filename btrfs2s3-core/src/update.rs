//! The IO half of `update`: assess the state (open sources and snapshot directories, list
//! each remote once, snapshot sources that changed), and the real [`World`] the executor
//! acts on.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use btrfs2s3_btrfs::{SendOptions, SnapshotDir, Subvolume};
use btrfs2s3_s3::{Remote, UploadOptions};
use jiff::Timestamp;
use snafu::{ResultExt, Snafu};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::Config;
use crate::execute::{UploadJob, World, WorldError};
use crate::plan::{
    Assessment, BackupState, Origin, RemoteState, SnapshotState, SourceState, UploadTarget,
};

/// Why the state could not be assessed. Nothing has been changed when this happens, except
/// that snapshots created before the error stay (they are ordinary snapshots the next run
/// adopts).
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
    /// A new snapshot could not be made.
    #[snafu(display("failed to snapshot {}", path.display()))]
    CreateSnapshot {
        /// The source.
        path: PathBuf,
        /// Why.
        source: btrfs2s3_btrfs::Error,
    },
    /// Another run holds the lock of a snapshot directory.
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
}

impl AssessError {
    /// Whether another run holds a lock we need.
    #[must_use]
    pub fn is_locked(&self) -> bool {
        matches!(self, AssessError::Locked { .. })
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
        )
    }
}

/// Whether `update` may change the system while assessing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Snapshot sources that changed.
    Real,
    /// `--pretend`: plan as if the snapshots were taken, change nothing.
    Pretend,
}

/// Assesses the state for `config` at `now`. In [`Mode::Real`] this creates the snapshots of
/// sources that changed since their last snapshot.
pub async fn assess(
    config: &Config,
    now: Timestamp,
    mode: Mode,
    wait: std::time::Duration,
    cancel: &CancellationToken,
) -> Result<(Assessment, RealWorld), AssessError> {
    // Open everything local first: any problem stops us before anything is changed.
    let (mut opened, dirs) = open_local(config)?;
    // Lock every snapshot directory before looking into them, in a fixed order so that two
    // waiting runs cannot deadlock.
    let mut dir_paths: Vec<&PathBuf> = dirs.keys().collect();
    dir_paths.sort();
    let mut locks = Vec::new();
    for path in dir_paths {
        locks.push(crate::lock::lock_directory(path, wait).context(LockedSnafu { path })?);
    }
    let (remotes, clients) = list_remotes(config, cancel).await?;
    let mut sources = Vec::new();
    for ((subvolume, dir_path), source_config) in opened.iter_mut().zip(&config.sources) {
        let dir = &dirs[dir_path.as_path()];
        sources.push(source_state(source_config, subvolume, dir, mode)?);
    }
    let assessment = Assessment {
        timezone: config.timezone.clone(),
        timezone_name: config.timezone_name.clone(),
        now,
        sources,
        remotes,
    };
    let world = RealWorld {
        dirs,
        remotes: clients,
        upload_options: UploadOptions::default(),
        _locks: locks,
    };
    Ok((assessment, world))
}

type OpenedSources = Vec<(Subvolume, PathBuf)>;
type OpenedDirs = HashMap<PathBuf, SnapshotDir>;

/// Opens every source and snapshot directory (each directory once), and checks that they
/// can work together.
fn open_local(config: &Config) -> Result<(OpenedSources, OpenedDirs), AssessError> {
    let mut opened: OpenedSources = Vec::new();
    let mut dirs: OpenedDirs = HashMap::new();
    for source in &config.sources {
        let subvolume =
            Subvolume::open(&source.path).context(SourceSnafu { path: &source.path })?;
        if let Some((other, _)) = opened
            .iter()
            .find(|(other, _)| other.info().uuid == subvolume.info().uuid)
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
            dirs.insert(source.snapshots.clone(), dir);
        }
        dirs[&source.snapshots]
            .check_same_filesystem(&subvolume)
            .context(SnapshotDirectorySnafu {
                path: &source.snapshots,
            })?;
        opened.push((subvolume, source.snapshots.clone()));
    }
    Ok((opened, dirs))
}

/// Connects to and lists each remote some source uses, once however many sources use it.
async fn list_remotes(
    config: &Config,
    cancel: &CancellationToken,
) -> Result<(Vec<RemoteState>, HashMap<String, Remote>), AssessError> {
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
    for remote in used {
        let error = |source| AssessError::ListRemote {
            remote: remote.id.clone(),
            source: Box::new(source),
        };
        let client = Remote::connect(&remote.s3)
            .await
            .map_err(error)?
            .with_cancellation(cancel.clone());
        let listing = client.list().await.map_err(error)?;
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
        remotes.push(RemoteState {
            id: remote.id.clone(),
            bucket: client.bucket().to_owned(),
            backups: listing.backups.into_iter().map(BackupState::from).collect(),
            foreign_objects: listing.foreign.len(),
            pages: listing.pages,
            pending_uploads,
        });
        clients.insert(remote.id.clone(), client);
    }
    Ok((remotes, clients))
}

/// A source and its snapshots; snapshots it first when it changed since its last snapshot
/// (for real, or only in the plan with [`Mode::Pretend`]).
fn source_state(
    source_config: &crate::config::SourceConfig,
    subvolume: &Subvolume,
    dir: &SnapshotDir,
    mode: Mode,
) -> Result<SourceState, AssessError> {
    let name = source_name(&source_config.path)?;
    let listed = dir
        .snapshots_of(subvolume.info().uuid)
        .context(SnapshotDirectorySnafu { path: dir.path() })?;
    let mut snapshots: Vec<SnapshotState> = listed
        .into_iter()
        .map(|snapshot| SnapshotState {
            name: snapshot.name.to_string_lossy().into_owned(),
            id: snapshot.info.id,
            uuid: snapshot.info.uuid,
            ctime: snapshot.info.ctime,
            ctransid: snapshot.info.ctransid,
            origin: Origin::Existing,
        })
        .collect();
    let info = *subvolume.info();
    let newest = snapshots.iter().map(|snapshot| snapshot.ctransid).max();
    if newest.is_none_or(|newest| info.ctransid > newest) {
        let new_name = format!("{name}.NEW.{}", std::process::id());
        snapshots.push(match mode {
            Mode::Real => {
                let created = dir
                    .create_snapshot(subvolume, OsStr::new(&new_name))
                    .context(CreateSnapshotSnafu {
                        path: &source_config.path,
                    })?;
                crate::failpoint::hit("snapshot-created");
                SnapshotState {
                    name: new_name,
                    id: created.id,
                    uuid: created.uuid,
                    ctime: created.ctime,
                    ctransid: created.ctransid,
                    origin: Origin::Created,
                }
            }
            // Plan as if it were taken now: a snapshot has its source's ctransid and ctime, and
            // a new uuid (a stand-in derived from the source's, never written anywhere).
            Mode::Pretend => SnapshotState {
                name: new_name,
                id: 0,
                uuid: Uuid::from_u128(info.uuid.as_u128() ^ u128::from(info.ctransid) ^ 0x5eed),
                ctime: info.ctime,
                ctransid: info.ctransid,
                origin: Origin::Planned,
            },
        });
    }
    Ok(SourceState {
        path: source_config.path.clone(),
        name,
        uuid: info.uuid,
        snapshot_dir: dir.path().to_path_buf(),
        snapshots,
        uploads: source_config
            .upload_to_remotes
            .iter()
            .map(|upload| UploadTarget {
                remote: upload.remote_id.clone(),
                preserve: upload.preserve,
                pipe_through: upload.pipe_through.clone(),
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

/// The real snapshots and buckets.
pub struct RealWorld {
    dirs: HashMap<PathBuf, SnapshotDir>,
    remotes: HashMap<String, Remote>,
    upload_options: UploadOptions,
    /// The snapshot directories' locks, held until the run ends.
    _locks: Vec<crate::lock::Lock>,
}

impl RealWorld {
    fn dir(&self, directory: &Path) -> Result<&SnapshotDir, WorldError> {
        self.dirs.get(directory).ok_or_else(|| {
            format!("snapshot directory {} was not opened", directory.display()).into()
        })
    }

    fn remote(&self, id: &str) -> Result<&Remote, WorldError> {
        self.remotes
            .get(id)
            .ok_or_else(|| format!("remote {id} was not connected").into())
    }

    /// Destroys the snapshots this run created (the prompt's "undo").
    pub fn destroy_created(
        &mut self,
        snapshots: &[(PathBuf, String, u64)],
    ) -> Result<(), WorldError> {
        for (directory, name, id) in snapshots {
            self.destroy_snapshot(directory, name, *id)?;
        }
        Ok(())
    }
}

impl World for RealWorld {
    fn rename_snapshot(
        &mut self,
        directory: &Path,
        from: &str,
        to: &str,
        id: u64,
    ) -> Result<(), WorldError> {
        let dir = self.dir(directory)?;
        // Only rename what is still the snapshot we planned for.
        dir.open_snapshot(OsStr::new(from), id)?;
        dir.rename(OsStr::new(from), OsStr::new(to))?;
        Ok(())
    }

    fn destroy_snapshot(
        &mut self,
        directory: &Path,
        name: &str,
        id: u64,
    ) -> Result<(), WorldError> {
        self.dir(directory)?.delete_snapshot(OsStr::new(name), id)?;
        Ok(())
    }

    async fn upload(
        &mut self,
        job: &UploadJob<'_>,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<u64, WorldError> {
        let dir = self.dir(job.directory)?;
        let (name, id) = job.snapshot;
        let snapshot = dir.open_snapshot(OsStr::new(name), id)?;
        let parent = match job.send_parent {
            Some((parent_name, parent_id)) => {
                // Checks that the send parent is still there and still the same subvolume.
                dir.open_snapshot(OsStr::new(parent_name), parent_id)?;
                Some(parent_id)
            }
            None => None,
        };
        let options = SendOptions {
            parent,
            ..SendOptions::default()
        };
        let remote = self.remote(job.remote)?;
        let size = crate::pipeline::upload_snapshot(
            remote,
            job.key,
            snapshot,
            options,
            job.pipe_through,
            &self.upload_options,
            progress,
        )
        .await?;
        Ok(size)
    }

    async fn delete_backups(&mut self, remote: &str, keys: &[Arc<str>]) -> Result<(), WorldError> {
        self.remote(remote)?.delete(keys).await?;
        Ok(())
    }

    async fn abort_upload(
        &mut self,
        remote: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<(), WorldError> {
        self.remote(remote)?.abort_upload(key, upload_id).await?;
        Ok(())
    }
}
