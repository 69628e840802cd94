//! `btrfs2s3 daemon`: runs cycles — each exactly an `update --force` — when they are due
//! (see [`schedule`]), on listings it keeps between cycles ([`ListingCache`]), and otherwise
//! sleeps, looking at the sources' generations every few seconds. It holds the locks only
//! during a cycle, so a manual `update` or `restore` can run in between (and a manual
//! `update` makes the next cycle list again). SIGHUP reloads the config (a bad one is
//! reported and the old one kept); the [`Cancel`] (SIGTERM) stops it like an interrupted
//! `update`. systemd hears about it all through [`Notifier`].

pub mod notify;
pub mod schedule;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use btrfs2s3_btrfs::Subvolume;
use btrfs2s3_policy::Policy;
use jiff::Timestamp;

use crate::cache::ListingCache;
use crate::cancel::Cancel;
use crate::config::{Config, ConfigError};
use crate::metrics::{Metrics, RunRecord};
use crate::ping::{Pinger, Signal};
use crate::plan::Plan;
use crate::run::{Mode, Ui, UpdateOptions, UpdateReport, update_cached};
pub use notify::Notifier;
pub use schedule::{CycleEnd, Reason, Schedule};

/// How often the daemon looks at the sources' generations, at most (more often with a
/// shorter `--interval`).
pub const POLL: Duration = Duration::from_secs(5);

/// How the daemon runs.
#[derive(Debug)]
pub struct DaemonOptions {
    /// The least time between two snapshots of a source (`--interval`).
    pub interval: Duration,
    /// How old a listing may get before a cycle lists again (`--relist`).
    pub relist: Duration,
    /// How long a cycle waits for another run's locks.
    pub wait: Duration,
    /// Where to write metrics after every cycle (`--metrics`).
    pub metrics: Option<PathBuf>,
    /// Where to ping around every cycle (`--ping`).
    pub ping: Option<Pinger>,
    /// A bandwidth limit for all remotes together (`--rate-limit`).
    pub rate_limit: Option<crate::storage::BandwidthLimit>,
}

/// What the daemon has to say, for its log.
#[derive(Debug)]
pub enum Event<'a> {
    /// It runs `config`.
    Started {
        /// The config.
        config: &'a Config,
    },
    /// A cycle starts.
    CycleStarted {
        /// Why.
        reason: &'a Reason,
    },
    /// A cycle ended.
    CycleEnded {
        /// What it did.
        report: &'a UpdateReport,
        /// How long it took.
        took: Duration,
        /// When the next cycle is due at the latest, if no source changes.
        next: Option<Timestamp>,
    },
    /// SIGHUP: the config was loaded again.
    Reloaded {
        /// The new config.
        config: &'a Config,
    },
    /// SIGHUP: the config could not be loaded; the old one stays.
    ReloadFailed {
        /// Why.
        error: &'a ConfigError,
    },
    /// Something went wrong that does not stop the daemon (a ping, the metrics file, a
    /// source that cannot be watched).
    Warning {
        /// What.
        message: String,
    },
    /// It stops.
    Stopped {
        /// The signal that stopped it.
        cause: Option<&'static str>,
    },
}

/// What the daemon shows: its events, and everything a run shows.
pub trait DaemonUi: Ui {
    /// Something happened.
    fn event(&self, event: Event<'_>);
}

/// The daemon could not start.
#[derive(Debug, snafu::Snafu)]
pub enum DaemonError {
    /// SIGHUP cannot be handled.
    #[snafu(display("cannot handle SIGHUP: {source}"))]
    Signals {
        /// Why.
        source: std::io::Error,
    },
    /// `$NOTIFY_SOCKET` cannot be used.
    #[snafu(display("{message}"))]
    Notify {
        /// Why.
        message: String,
    },
}

/// Runs the daemon on `config` until `cancel` is cancelled.
pub async fn daemon(
    config: Config,
    options: &DaemonOptions,
    ui: &impl DaemonUi,
    cancel: &Cancel,
) -> Result<(), DaemonError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup =
        signal(SignalKind::hangup()).map_err(|source| DaemonError::Signals { source })?;
    let notifier =
        Arc::new(Notifier::from_env().map_err(|message| DaemonError::Notify { message })?);
    let _watchdog = notifier.watchdog_period().map(|period| {
        let notifier = Arc::clone(&notifier);
        WatchdogTask(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(period);
            loop {
                ticks.tick().await;
                notifier.watchdog();
            }
        }))
    });
    let mut state = State {
        watch: Watch::new(&config),
        metrics: options.metrics.as_deref().map(Metrics::load),
        config,
        options,
        cache: ListingCache::new(),
        schedule: Schedule::new(options.interval, options.relist),
        notifier: &notifier,
        last: None,
    };
    ui.event(Event::Started {
        config: &state.config,
    });
    notifier.ready("starting the first cycle");
    let poll = POLL.min(options.interval).max(Duration::from_millis(100));
    while !cancel.is_cancelled() {
        let now = Timestamp::now();
        let generations = state.watch.generations(ui).await;
        if let Some(reason) = state
            .schedule
            .due(now, &generations, state.cache.oldest_listing())
        {
            state.cycle(&reason, ui, cancel).await;
            continue;
        }
        let mut nap = poll;
        if let Some(deadline) = state.schedule.deadline(state.cache.oldest_listing()) {
            let until = deadline.duration_since(now);
            nap = nap.min(until.unsigned_abs().max(Duration::from_millis(10)));
        }
        tokio::select! {
            () = tokio::time::sleep(nap) => {}
            _ = hangup.recv() => state.reload(ui),
            () = cancel.cancelled() => {}
        }
    }
    let cause = cancel.cause();
    notifier.stopping(&format!("stopping ({})", cause.unwrap_or("signal")));
    ui.event(Event::Stopped { cause });
    Ok(())
}

/// Aborts the watchdog's task when the daemon ends.
struct WatchdogTask(tokio::task::JoinHandle<()>);

impl Drop for WatchdogTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The daemon's state between cycles.
struct State<'a> {
    config: Config,
    options: &'a DaemonOptions,
    cache: ListingCache,
    schedule: Schedule,
    watch: Watch,
    metrics: Option<Metrics>,
    notifier: &'a Notifier,
    /// The last cycle: when it started, and its summary.
    last: Option<(Timestamp, String)>,
}

impl State<'_> {
    async fn cycle(&mut self, reason: &Reason, ui: &impl DaemonUi, cancel: &Cancel) {
        if *reason == Reason::Relist {
            self.cache.clear();
        }
        let started = Timestamp::now();
        self.notifier.status(&format!(
            "cycle since {started} ({reason}){}",
            self.last_text()
        ));
        ui.event(Event::CycleStarted { reason });
        self.ping(Signal::Start, "", ui).await;
        let clock = Instant::now();
        let options = UpdateOptions {
            now: started,
            mode: Mode::Real,
            wait: self.options.wait,
            ask: false,
            min_snapshot_age: self.options.interval,
            parallel_uploads: self.config.parallel_uploads,
            rate_limit: self.options.rate_limit.clone(),
        };
        let report = update_cached(&self.config, &options, &mut self.cache, ui, cancel).await;
        let took = clock.elapsed();
        let summary = report.summary();
        if let (Some(metrics), Some(path)) = (&mut self.metrics, &self.options.metrics) {
            metrics.record(&RunRecord {
                started,
                duration: took,
                config: Some(&self.config),
                report: Some(&report),
            });
            if let Err(error) = metrics.write(path) {
                ui.event(Event::Warning {
                    message: format!("cannot write metrics to {}: {error}", path.display()),
                });
            }
        }
        let signal = if report.succeeded() {
            Signal::Success
        } else {
            Signal::Fail
        };
        self.ping(signal, &summary, ui).await;
        self.schedule.cycle_ended(CycleEnd {
            started,
            succeeded: report.succeeded(),
            newest: &report.newest_snapshots,
            next_policy_time: report
                .plan
                .as_ref()
                .and_then(|plan| next_policy_time(&self.config, plan)),
        });
        let next = self.schedule.deadline(self.cache.oldest_listing());
        ui.event(Event::CycleEnded {
            report: &report,
            took,
            next,
        });
        self.last = Some((started, summary));
        self.notifier.status(&format!("idle{}", self.last_text()));
    }

    /// `; last cycle at T: summary`, for status lines.
    fn last_text(&self) -> String {
        self.last
            .as_ref()
            .map_or_else(String::new, |(at, summary)| {
                let first = summary.lines().next().unwrap_or_default();
                format!("; last cycle at {at}: {first}")
            })
    }

    async fn ping(&self, signal: Signal, summary: &str, ui: &impl DaemonUi) {
        if let Some(pinger) = &self.options.ping
            && let Err(error) = pinger.send(signal, summary).await
        {
            ui.event(Event::Warning {
                message: error.to_string(),
            });
        }
    }

    fn reload(&mut self, ui: &impl DaemonUi) {
        self.notifier.reloading();
        match crate::config::load(&self.config.path) {
            Ok(config) => {
                self.config = config;
                self.cache.clear();
                self.watch = Watch::new(&self.config);
                let sources: Vec<PathBuf> =
                    self.config.sources.iter().map(|s| s.path.clone()).collect();
                self.schedule.keep_sources(&sources);
                self.schedule.reloaded();
                ui.event(Event::Reloaded {
                    config: &self.config,
                });
                self.notifier
                    .ready(&format!("config reloaded{}", self.last_text()));
            }
            Err(error) => {
                ui.event(Event::ReloadFailed { error: &error });
                self.notifier.ready(&format!(
                    "config reload failed, running the old one: {error}{}",
                    self.last_text()
                ));
            }
        }
    }
}

/// When the decisions of the plan's policies may next change: the next span start of any
/// policy of the config, or the next keep-until or lock-hold end of a backup.
#[must_use]
pub fn next_policy_time(config: &Config, plan: &Plan) -> Option<Timestamp> {
    let spans = config
        .sources
        .iter()
        .flat_map(|source| &source.upload_to_remotes)
        .filter_map(|upload| {
            Policy::new(upload.preserve, config.timezone.clone(), plan.now).next_span_start()
        });
    let backups = plan
        .backups
        .iter()
        .flat_map(|backup| [backup.keep_until, backup.held_until])
        .flatten();
    spans.chain(backups).filter(|at| *at > plan.now).min()
}

/// The sources whose generations the daemon reads every few seconds. Each look opens the
/// source, reads its generation and closes it again: a daemon that kept them open would keep
/// their filesystems from being unmounted.
struct Watch {
    sources: Vec<PathBuf>,
    /// Sources that could not be read, already reported.
    reported: BTreeSet<PathBuf>,
}

impl Watch {
    fn new(config: &Config) -> Watch {
        Watch {
            sources: config
                .sources
                .iter()
                .map(|source| source.path.clone())
                .collect(),
            reported: BTreeSet::new(),
        }
    }

    /// Each readable source's generation (ctransid). A source that cannot be read is left
    /// out (and reported once): a cycle would fail on it with the full story.
    async fn generations(&mut self, ui: &impl DaemonUi) -> BTreeMap<PathBuf, u64> {
        let sources = self.sources.clone();
        let read = tokio::task::spawn_blocking(move || {
            sources
                .into_iter()
                .map(|path| {
                    let generation = Subvolume::open(&path)
                        .map(|subvolume| subvolume.info().ctransid)
                        .map_err(|error| error.to_string());
                    (path, generation)
                })
                .collect::<Vec<_>>()
        })
        .await;
        let mut generations = BTreeMap::new();
        for (path, result) in read.unwrap_or_default() {
            match result {
                Ok(generation) => {
                    self.reported.remove(&path);
                    generations.insert(path, generation);
                }
                Err(message) => {
                    if !self.reported.contains(&path) {
                        ui.event(Event::Warning {
                            message: format!(
                                "cannot watch source {}: {message}",
                                crate::text::escape_os(path.as_os_str())
                            ),
                        });
                        self.reported.insert(path);
                    }
                }
            }
        }
        generations
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeWorld;

    fn config(preserve: &[&str]) -> Config {
        let remotes = ["r0", "r1", "r2"];
        let uploads: Vec<(&str, &str)> =
            remotes.into_iter().zip(preserve.iter().copied()).collect();
        crate::fake::config("Europe/Berlin", &uploads)
    }

    fn plan_at(now: &str) -> Plan {
        let mut world = FakeWorld::new("Europe/Berlin", now);
        world.add_source("home", 1, &[("r0", "1y")]);
        crate::plan::plan(&world.assessment()).unwrap()
    }

    #[test]
    fn the_next_policy_time_is_the_nearest_span_start() {
        let plan = plan_at("2026-05-20T12:34:00Z");
        let next = |preserve: &[&str]| next_policy_time(&config(preserve), &plan).unwrap();
        // Midnight in Berlin.
        assert_eq!(next(&["1y 30d"]), "2026-05-20T22:00:00Z".parse().unwrap());
        assert_eq!(
            next(&["1y", "1y 24h"]),
            "2026-05-20T13:00:00Z".parse().unwrap()
        );
        assert_eq!(next(&["1y 3m"]), "2026-05-31T22:00:00Z".parse().unwrap());
    }
}
