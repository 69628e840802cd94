//! btrfs2s3's configuration, planner and executor.
//!
//! `update` is assess, then plan, then execute:
//! - [`update::assess`] gathers the state (IO): sources, snapshots, bucket listings, and
//!   creates the snapshots of sources that changed;
//! - [`plan::plan`] turns it into a [`plan::Plan`] (pure);
//! - [`execute::execute`] runs the plan through a [`execute::World`].
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod catalog;
pub mod config;
pub mod execute;
pub mod failpoint;
#[cfg(test)]
mod fake;
pub mod lock;
pub mod pipeline;
pub mod plan;
pub mod restore;
#[cfg(test)]
mod safety;
pub mod tree;
pub mod update;
