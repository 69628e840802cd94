//! btrfs2s3's object keys and S3 operations.
//!
//! Every backup is one object whose key carries all of its metadata ([`BackupMeta`]), so one
//! paged listing of a bucket tells the whole state.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod archive;
mod error;
mod key;
mod pieces;
mod probe;
mod rate;
mod remote;
mod retention;
mod tls;
mod upload;

pub use archive::{Availability, Restore, RestoreTier, needs_restore};
pub use error::{DeleteFailure, Error, Failure, RequestError};
pub use key::{BackupMeta, KeyError, decode_key, format_ctime};
pub use pieces::{PIECE_SIZE_METADATA, first_piece_key, piece_key};
pub use probe::{FirstPage, LockConfiguration, Versioning, probe_key};
pub use rate::RateLimit;
pub use remote::{
    DEFAULT_MAX_OBJECT_SIZE, ListedBackup, ListedObject, Listing, MIN_MAX_OBJECT_SIZE,
    PendingUpload, PieceHook, Remote, RemoteConfig, Secret, UploadSettings, Verify,
};
pub use upload::{LockMode, ObjectLock, StagedUpload, UploadOptions, part_size};
