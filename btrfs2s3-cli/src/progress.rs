//! Progress of execution: a progress bar per transfer on a terminal; without one, a log line
//! when a transfer starts, one per GiB it moves, and a line when each action ends (with the
//! bytes, seconds and rate of a transfer).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use btrfs2s3_core::execute::{ActionResult, Observer};
use btrfs2s3_core::plan::Action;
use indicatif::{ProgressBar, ProgressStyle};

use crate::output::{ShortIds, bytes, describe_action, describe_result};

const GIB: u64 = 1 << 30;

/// The observer of an `update` run.
pub struct Progress {
    bar: Mutex<Option<ProgressBar>>,
    terminal: bool,
    started: Mutex<Option<Instant>>,
    logged_gib: AtomicU64,
    /// Bytes the transfer in progress moved so far.
    moved: AtomicU64,
    /// How actions name backups (set from the plan).
    ids: Mutex<ShortIds>,
    /// Whether action lines carry object keys (`-v`).
    verbose: bool,
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
            moved: AtomicU64::new(0),
            ids: Mutex::new(ShortIds::default()),
            verbose: crate::verbose(),
        }
    }

    /// Names backups as `ids` does (the plan's short uuids).
    pub fn use_ids(&self, ids: ShortIds) {
        if let Ok(mut slot) = self.ids.lock() {
            *slot = ids;
        }
    }

    fn describe(&self, action: &Action) -> String {
        let ids = self.ids.lock().map(|ids| ids.clone()).unwrap_or_default();
        describe_action(action, &ids, self.verbose)
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
        self.moved.store(0, Ordering::Relaxed);
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
        } else if transfer {
            eprintln!("{label} ...");
        }
    }

    /// A transfer has moved this many bytes so far.
    pub fn advance(&self, total: u64) {
        self.moved.store(total, Ordering::Relaxed);
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
            let moved = self.moved.load(Ordering::Relaxed);
            #[allow(
                clippy::cast_precision_loss,
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss
            )]
            let rate = if seconds > 0.0 {
                format!(", {}/s", bytes((moved as f64 / seconds) as u64))
            } else {
                String::new()
            };
            eprintln!("{label}: {outcome} in {seconds:.1} s{rate}");
        } else {
            eprintln!("{label}: {outcome}");
        }
    }
}

impl Observer for Progress {
    fn started(&self, action: &Action) {
        self.begin(&self.describe(action), matches!(action, Action::Upload(_)));
    }

    fn progress(&self, total: u64) {
        self.advance(total);
    }

    fn finished(&self, action: &Action, result: &ActionResult) {
        let transfer = matches!(action, Action::Upload(_));
        self.end(&self.describe(action), &describe_result(result), transfer);
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
