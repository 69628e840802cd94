//! Preservation policies for btrfs2s3: which snapshots and backups to keep, and the shape of
//! the tree of differential backups.
//!
//! A policy such as `1y 3m 30d 24h` says how many of the most recent spans of each timeframe
//! to preserve: here the current year, the current month and the two before it, and so on. The
//! first item (smallest ctransid) of each preserved span is kept. The timeframes also give the
//! backup tree its shape: the first snapshot of a year becomes a full backup, the first of a
//! month a differential against that yearly one, the first of a day a differential against the
//! monthly one, and so on.
//!
//! The crate is pure: no IO, no clock (`now` is a parameter), no global state. Time spans are
//! computed in a caller-provided [`jiff::tz::TimeZone`], never the system's.
//!
//! Its decisions are those of the Python tool btrfs2s3 2.1.0; the test suite checks them
//! against 300 cases recorded from that tool.
//!
//! # Example
//!
//! ```
//! use btrfs2s3_policy::{resolve, BackupItem, Item, Params, Policy, Reasons};
//! use jiff::{Timestamp, tz::TimeZone};
//! use uuid::Uuid;
//!
//! /// Whatever the caller's snapshot type is: it only has to implement `Item`.
//! struct Snapshot { uuid: Uuid, ctime: Timestamp, ctransid: i64 }
//! impl Item for Snapshot {
//!     fn uuid(&self) -> Uuid { self.uuid }
//!     fn ctime(&self) -> Timestamp { self.ctime }
//!     fn ctransid(&self) -> i64 { self.ctransid }
//! }
//!
//! /// An existing backup also knows what it was sent against.
//! struct Backup { snapshot: Snapshot, send_parent: Option<Uuid> }
//! impl Item for Backup {
//!     fn uuid(&self) -> Uuid { self.snapshot.uuid }
//!     fn ctime(&self) -> Timestamp { self.snapshot.ctime }
//!     fn ctransid(&self) -> i64 { self.snapshot.ctransid }
//! }
//! impl BackupItem for Backup {
//!     fn send_parent(&self) -> Option<Uuid> { self.send_parent }
//! }
//!
//! // One snapshot a day in January 2026, each already backed up as a full backup.
//! let day = |n: i64| Snapshot {
//!     uuid: Uuid::from_u128(n as u128),
//!     ctime: Timestamp::from_second(1_767_261_600 + n * 86_400).unwrap(),
//!     ctransid: 100 + n,
//! };
//! let snapshots: Vec<_> = (0..31).map(day).collect();
//! let backups: Vec<_> = (0..31).map(|n| Backup { snapshot: day(n), send_parent: None }).collect();
//!
//! let params: Params = "1m 7d".parse()?;
//! let now: Timestamp = "2026-01-31T20:00:00Z".parse()?;
//! let policy = Policy::new(params, TimeZone::get("Europe/Berlin")?, now);
//! let resolution = resolve(&snapshots, &backups, &policy);
//!
//! // The monthly snapshot and the last 7 daily ones survive; the rest is to be deleted.
//! assert_eq!(resolution.snapshots.len(), 8);
//! assert_eq!(resolution.backups.len(), 8);
//! let monthly = &resolution.snapshots[&Uuid::from_u128(0)];
//! assert!(monthly.reasons.contains(Reasons::PRESERVED));
//! assert_eq!(monthly.time_spans.iter().next().unwrap().describe(policy.time_zone()), "2026-01 monthly");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod params;
mod policy;
mod resolve;
mod span;

pub use params::{Params, ParamsError, Timeframe};
pub use policy::Policy;
pub use resolve::{
    BackupItem, BrokenChain, Flags, Item, Keep, KeepBackup, Reasons, Resolution, resolve,
};
pub use span::TimeSpan;
