//! Progress of execution: a progress bar per transfer in flight on a terminal; without one, a
//! log line when a transfer starts, one per GiB it moves, and a line when each action ends
//! (with the bytes, seconds and rate of a transfer).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use btrfs2s3_core::execute::{ActionResult, Observer};
use btrfs2s3_core::plan::Action;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::output::{ShortIds, bytes, describe_action, describe_result, describe_stream};

const GIB: u64 = 1 << 30;

/// The key of the one transfer of `restore` and `verify`, which move one object at a time.
const SINGLE: usize = usize::MAX;

/// The observer of an `update` run.
pub struct Progress {
    /// The bars, on a terminal.
    bars: Option<MultiProgress>,
    /// The transfers in flight, by stream.
    transfers: Mutex<HashMap<usize, Transfer>>,
    /// When the step in progress (not a transfer) started.
    step_started: Mutex<Option<Instant>>,
    /// How actions name backups (set from the plan).
    ids: Mutex<ShortIds>,
    /// Whether action lines carry object keys (`-v`).
    verbose: bool,
}

/// One transfer in flight: a stream and the actions it feeds.
struct Transfer {
    label: String,
    bar: Option<ProgressBar>,
    started: Instant,
    moved: u64,
    logged_gib: u64,
    /// The actions of the stream that have not ended yet.
    open: usize,
    /// The uploads it feeds: (remote, key).
    uploads: Vec<(String, Arc<str>)>,
}

impl Progress {
    /// A progress display; bars only when `terminal`.
    #[must_use]
    pub fn new(terminal: bool) -> Progress {
        Progress {
            bars: terminal.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
            transfers: Mutex::new(HashMap::new()),
            step_started: Mutex::new(None),
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

    fn ids(&self) -> ShortIds {
        self.ids.lock().map(|ids| ids.clone()).unwrap_or_default()
    }

    fn describe(&self, action: &Action) -> String {
        describe_action(action, &self.ids(), self.verbose)
    }

    /// Clears any bar left.
    pub fn finish(&self) {
        if let Ok(mut transfers) = self.transfers.lock() {
            for (_, transfer) in transfers.drain() {
                if let Some(bar) = transfer.bar {
                    bar.finish_and_clear();
                }
            }
        }
    }

    /// Prints a line above the bars.
    fn line(&self, text: &str) {
        match &self.bars {
            Some(bars) => bars.suspend(|| eprintln!("{text}")),
            None => eprintln!("{text}"),
        }
    }

    /// A transfer starts: a bar on a terminal, a line otherwise. It ends with the last of
    /// `uploads` (or with its one action, without).
    fn open(&self, key: usize, label: &str, uploads: Vec<(String, Arc<str>)>) {
        let bar = self.bars.as_ref().map(|bars| {
            let bar = bars.add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} {msg}\n  {bytes} at {binary_bytes_per_sec}, {elapsed}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_message(label.to_owned());
            bar.enable_steady_tick(std::time::Duration::from_millis(200));
            bar
        });
        if bar.is_none() {
            self.line(&format!("{label} ..."));
        }
        if let Ok(mut transfers) = self.transfers.lock() {
            transfers.insert(
                key,
                Transfer {
                    label: label.to_owned(),
                    bar,
                    started: Instant::now(),
                    moved: 0,
                    logged_gib: 0,
                    open: uploads.len().max(1),
                    uploads,
                },
            );
        }
    }

    /// A transfer has moved this many bytes so far.
    fn moved(&self, key: usize, total: u64) {
        let log = {
            let Ok(mut transfers) = self.transfers.lock() else {
                return;
            };
            let Some(transfer) = transfers.get_mut(&key) else {
                return;
            };
            transfer.moved = total;
            if let Some(bar) = &transfer.bar {
                bar.set_position(total);
                None
            } else if total / GIB > transfer.logged_gib {
                transfer.logged_gib = total / GIB;
                Some(format!(
                    "  ... {} transferred: {}",
                    bytes(total),
                    transfer.label
                ))
            } else {
                None
            }
        };
        if let Some(log) = log {
            self.line(&log);
        }
    }

    /// One action of a transfer ended with `outcome`: a line with its bytes, seconds and
    /// rate. The transfer's bar goes with its last action.
    fn close(&self, key: usize, label: &str, outcome: &str) {
        let (seconds, moved) = {
            let Ok(mut transfers) = self.transfers.lock() else {
                return;
            };
            let Some(transfer) = transfers.get_mut(&key) else {
                drop(transfers);
                self.line(&format!("{label}: {outcome}"));
                return;
            };
            let ended = (transfer.started.elapsed().as_secs_f64(), transfer.moved);
            transfer.open = transfer.open.saturating_sub(1);
            if transfer.open == 0
                && let Some(transfer) = transfers.remove(&key)
                && let Some(bar) = transfer.bar
            {
                bar.finish_and_clear();
            }
            ended
        };
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
        self.line(&format!("{label}: {outcome} in {seconds:.1} s{rate}"));
    }

    /// A step starts; a transfer gets a progress bar (on a terminal).
    pub fn begin(&self, label: &str, transfer: bool) {
        if transfer {
            self.open(SINGLE, label, Vec::new());
        } else if let Ok(mut started) = self.step_started.lock() {
            *started = Some(Instant::now());
        }
    }

    /// The transfer has moved this many bytes so far.
    pub fn advance(&self, total: u64) {
        self.moved(SINGLE, total);
    }

    /// A step ended with `outcome`.
    pub fn end(&self, label: &str, outcome: &str, transfer: bool) {
        if transfer {
            self.close(SINGLE, label, outcome);
        } else {
            self.line(&format!("{label}: {outcome}"));
        }
    }
}

impl Observer for Progress {
    fn started(&self, action: &Action) {
        self.begin(&self.describe(action), false);
    }

    fn streaming(&self, stream: usize, uploads: &[&Action]) {
        let label = describe_stream(uploads, &self.ids(), self.verbose);
        let members = uploads
            .iter()
            .filter_map(|action| match action {
                Action::Upload(upload) => {
                    Some((upload.spec.remote.clone(), upload.spec.key.clone()))
                }
                _ => None,
            })
            .collect();
        self.open(stream, &label, members);
    }

    fn progress(&self, stream: usize, total: u64) {
        self.moved(stream, total);
    }

    fn finished(&self, action: &Action, result: &ActionResult) {
        let label = self.describe(action);
        let outcome = describe_result(result);
        let stream = match action {
            Action::Upload(upload) => self.transfers.lock().ok().and_then(|transfers| {
                transfers
                    .iter()
                    .find(|(_, transfer)| {
                        transfer.uploads.iter().any(|(remote, key)| {
                            *remote == upload.spec.remote && *key == upload.spec.key
                        })
                    })
                    .map(|(stream, _)| *stream)
            }),
            _ => None,
        };
        match stream {
            Some(stream) => self.close(stream, &label, &outcome),
            // Not started: skipped.
            None => self.end(&label, &outcome, false),
        }
    }
}

/// Implements [`Observer`] for a type by handing every call to its [`Progress`] field.
macro_rules! observe_through {
    ($type:ty, $field:ident) => {
        impl btrfs2s3_core::execute::Observer for $type {
            fn started(&self, action: &btrfs2s3_core::plan::Action) {
                self.$field.started(action);
            }

            fn streaming(&self, stream: usize, uploads: &[&btrfs2s3_core::plan::Action]) {
                self.$field.streaming(stream, uploads);
            }

            fn progress(&self, stream: usize, bytes: u64) {
                self.$field.progress(stream, bytes);
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
