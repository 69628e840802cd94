//! btrfs2s3's configuration, planner (assess, then plan) and executor.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod config;
