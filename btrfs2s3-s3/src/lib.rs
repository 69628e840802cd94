//! btrfs2s3's object keys and S3 operations.
//!
//! Every backup is one object whose key carries all of its metadata ([`BackupMeta`]), so one
//! paged listing of a bucket tells the whole state.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod key;

pub use key::{BackupMeta, KeyError, format_ctime};
