//! Safe access to btrfs: subvolume information, read-only snapshots and send streams.
//!
//! This is the only crate of btrfs2s3 with `unsafe` code.
#![deny(missing_docs)]
