//! Progress of execution: a progress bar per upload on a terminal; without one, a log line
//! when each action starts and ends, and one per GiB uploaded.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use btrfs2s3_core::execute::{ActionResult, Observer};
use btrfs2s3_core::plan::Action;
use indicatif::{ProgressBar, ProgressStyle};

use crate::output::{bytes, describe_action, describe_result};

const GIB: u64 = 1 << 30;

/// The observer of an `update` run.
pub struct Progress {
    bar: Mutex<Option<ProgressBar>>,
    terminal: bool,
    started: Mutex<Option<Instant>>,
    logged_gib: AtomicU64,
}

impl Progress {
    /// A progress display; bars only when `terminal`.
    #[must_use]
    pub fn new(terminal: bool) -> Progress {
        Progress {
            bar: Mutex::new(None),
            terminal,
            started: Mutex::new(None),
            logged_gib: AtomicU64::new(0),
        }
    }

    /// Clears any bar left.
    pub fn finish(&self) {
        if let Some(bar) = self.bar.lock().ok().and_then(|mut bar| bar.take()) {
            bar.finish_and_clear();
        }
    }
}

impl Progress {
    /// A step starts; a transfer gets a progress bar (on a terminal).
    pub fn begin(&self, label: &str, transfer: bool) {
        if let Ok(mut started) = self.started.lock() {
            *started = Some(Instant::now());
        }
        self.logged_gib.store(0, Ordering::Relaxed);
        if self.terminal && transfer {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} {msg}\n  {bytes} at {binary_bytes_per_sec}, {elapsed}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_message(label.to_owned());
            bar.enable_steady_tick(std::time::Duration::from_millis(200));
            if let Ok(mut slot) = self.bar.lock() {
                *slot = Some(bar);
            }
        } else {
            eprintln!("{label} ...");
        }
    }

    /// A transfer has moved this many bytes so far.
    pub fn advance(&self, total: u64) {
        if let Some(bar) = self.bar.lock().ok().and_then(|bar| bar.clone()) {
            bar.set_position(total);
        } else if total / GIB > self.logged_gib.load(Ordering::Relaxed) {
            self.logged_gib.store(total / GIB, Ordering::Relaxed);
            eprintln!("  ... {} transferred", bytes(total));
        }
    }

    /// A step ended with `outcome`.
    pub fn end(&self, label: &str, outcome: &str, transfer: bool) {
        let seconds = self
            .started
            .lock()
            .ok()
            .and_then(|started| started.map(|s| s.elapsed().as_secs_f64()))
            .unwrap_or(0.0);
        if let Some(bar) = self.bar.lock().ok().and_then(|mut bar| bar.take()) {
            bar.finish_and_clear();
        }
        if transfer {
            eprintln!("{label}: {outcome} in {seconds:.1} s");
        } else {
            eprintln!("{label}: {outcome}");
        }
    }
}

impl Observer for Progress {
    fn started(&self, action: &Action) {
        self.begin(
            &describe_action(action),
            matches!(action, Action::Upload(_)),
        );
    }

    fn progress(&self, total: u64) {
        self.advance(total);
    }

    fn finished(&self, action: &Action, result: &ActionResult) {
        let transfer = matches!(action, Action::Upload(_));
        self.end(&describe_action(action), &describe_result(result), transfer);
    }
}

/// Implements [`Observer`] for a type by handing every call to its [`Progress`] field.
macro_rules! observe_through {
    ($type:ty, $field:ident) => {
        impl btrfs2s3_core::execute::Observer for $type {
            fn started(&self, action: &btrfs2s3_core::plan::Action) {
                self.$field.started(action);
            }

            fn progress(&self, bytes: u64) {
                self.$field.progress(bytes);
            }

            fn finished(
                &self,
                action: &btrfs2s3_core::plan::Action,
                result: &btrfs2s3_core::execute::ActionResult,
            ) {
                self.$field.finished(action, result);
            }
        }
    };
}
pub(crate) use observe_through;
