//! btrfs2s3's object keys and S3 operations.
#![deny(missing_docs)]
#![forbid(unsafe_code)]
