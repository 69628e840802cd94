//! The `btrfs2s3` command.
#![forbid(unsafe_code)]

fn main() {}
