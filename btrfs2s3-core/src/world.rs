//! The outside world a run acts on, as one narrow trait: snapshots on disk, objects in
//! buckets. The real one is [`crate::real::RealWorld`] (btrfs and S3); the unit tests and the
//! safety properties use an in-memory fake. Every operation is async so that the real world
//! can keep blocking btrfs calls off the runtime's worker threads.

use std::path::PathBuf;
use std::sync::Arc;

use snafu::Snafu;

use crate::pipeline::PipelineError;
use crate::plan::{AbortUpload, ExtendLock, SnapshotRef, SnapshotState, SourceState, UploadSpec};

/// The outside world, as a run sees it.
#[allow(async_fn_in_trait)] // used with concrete types only, never as `dyn World`
pub trait World {
    /// Creates a read-only snapshot of `source` named `name` in its snapshot directory.
    async fn create_snapshot(
        &mut self,
        source: &SourceState,
        name: &str,
    ) -> Result<SnapshotState, WorldError>;
    /// Renames a snapshot (named as it is now) to `to`.
    async fn rename_snapshot(&mut self, snapshot: &SnapshotRef, to: &str)
    -> Result<(), WorldError>;
    /// Destroys a snapshot (named as it is now).
    async fn destroy_snapshot(&mut self, snapshot: &SnapshotRef) -> Result<(), WorldError>;
    /// What runs uploads, several at a time.
    type Uploader<'a>: Uploader
    where
        Self: 'a;
    /// The uploader, for the upload phase of a run: nothing else is done while it lives.
    fn uploader(&mut self) -> Self::Uploader<'_>;
    /// Deletes objects from a remote; fails if any of them was not deleted.
    async fn delete_backups(&mut self, remote: &str, keys: &[Arc<str>]) -> Result<(), WorldError>;
    /// Aborts a multipart upload.
    async fn abort_upload(&mut self, upload: &AbortUpload) -> Result<(), WorldError>;
    /// Makes a backup's object lock reach `extend.lock`.
    async fn extend_lock(&mut self, extend: &ExtendLock) -> Result<(), WorldError>;
}

/// Runs uploads; several of its calls may be in flight at once.
#[allow(async_fn_in_trait)] // used with concrete types only
pub trait Uploader {
    /// Streams one snapshot (named as it is now) into one object per spec: the specs share
    /// their snapshot, send parent and `pipe_through`, so one `btrfs send` and one pipeline
    /// feed them all. `progress` hears the bytes of the stream read so far. An error of the
    /// stream itself (the send, a command) is the outer error, for every spec; otherwise each
    /// spec gets its own result: the bytes stored, or why its remote failed.
    async fn upload(
        &self,
        uploads: &[UploadSpec],
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Vec<Result<u64, WorldError>>, WorldError>;
}

/// Why an operation of the world failed.
#[derive(Debug, Snafu)]
#[snafu(visibility(pub(crate)))]
pub enum WorldError {
    /// The snapshot directory is not one the run opened.
    #[snafu(display("snapshot directory {} was not opened", directory.display()))]
    DirectoryNotOpened {
        /// The directory.
        directory: PathBuf,
    },
    /// The source is not one the run opened.
    #[snafu(display("source {} was not opened", path.display()))]
    SourceNotOpened {
        /// The source.
        path: PathBuf,
    },
    /// The remote is not one the run connected to.
    #[snafu(display("remote {remote} was not connected"))]
    RemoteNotConnected {
        /// The remote's id.
        remote: String,
    },
    /// The snapshot does not exist: it is only planned (`--pretend`).
    #[snafu(display("snapshot {name} is only planned: it does not exist"))]
    OnlyPlanned {
        /// Its planned name.
        name: String,
    },
    /// A btrfs operation failed.
    #[snafu(transparent)]
    Btrfs {
        /// What btrfs said.
        source: btrfs2s3_btrfs::Error,
    },
    /// An S3 request failed.
    #[snafu(transparent)]
    Storage {
        /// What S3 said.
        source: btrfs2s3_s3::Error,
    },
    /// An upload's stream failed.
    #[snafu(transparent)]
    Pipeline {
        /// Which part of it, and why.
        source: PipelineError,
    },
    /// The thread a blocking operation ran on ended without a result.
    #[snafu(display("a worker thread failed: {message}"))]
    Worker {
        /// What the runtime said.
        message: String,
    },
    /// A failure a test asked for.
    #[cfg(test)]
    #[snafu(display("{message}"))]
    Injected {
        /// What failed.
        message: String,
    },
}
