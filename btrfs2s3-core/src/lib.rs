//! btrfs2s3's configuration, planner and executor, and every command as one call.
//!
//! A run ([`run::update()`]) is assess, then plan, then execute:
//! - [`real::RealWorld::open`] gathers the state (IO): sources, snapshots, bucket listings;
//! - [`run::cycle`] snapshots the sources that changed, through the [`world::World`];
//! - [`plan::plan`] turns the state into a [`plan::Plan`] (pure);
//! - [`execute::execute`] runs the plan through the [`world::World`].
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod cache;
pub mod cancel;
pub mod catalog;
pub mod config;
pub mod daemon;
pub mod execute;
pub mod failpoint;
#[cfg(test)]
mod fake;
pub mod lock;
pub mod metrics;
pub mod ping;
pub mod pipeline;
pub mod plan;
pub mod real;
pub mod restore;
pub mod run;
#[cfg(test)]
mod safety;
pub mod simulate;
pub mod storage;
pub mod text;
pub mod tree;
pub mod trust;
pub mod world;

/// Renders an error and all its causes on one line, leaving out a cause whose text the
/// message already contains.
#[must_use]
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The whole technical account of the causes of `error` that keep one (an S3 request's SDK
/// error with its debug structures), outermost first: what `-v` adds to a one-line error.
#[must_use]
pub fn error_details(error: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut details = Vec::new();
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(request) = error.downcast_ref::<btrfs2s3_s3::RequestError>() {
            details.push(request.detail().to_owned());
        }
        current = error.source();
    }
    details
}
