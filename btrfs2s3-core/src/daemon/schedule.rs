//! When the daemon runs a cycle: pure, with the clock and the sources' generations as
//! arguments, so that the rules are tested with a fake clock.
//!
//! A cycle runs
//! - at start, and after a config reload;
//! - for a source that changed (its generation passed its newest snapshot's) once at least
//!   the interval passed since that snapshot;
//! - when the policies' decisions may change: a span boundary passes, or a backup's
//!   keep-until or lock-hold ends (so expiries happen on time without changes);
//! - when the oldest listing is older than the re-list period (a cycle on a fresh listing);
//! - after a failed cycle, with a back-off, and only then: a failure does not turn every
//!   poll into a cycle.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use crate::run::NewestSnapshot;

/// The longest back-off after failures, unless the interval is longer.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// Why a cycle runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The daemon started.
    Start,
    /// The config was reloaded.
    Reloaded,
    /// The last cycle failed; this is the retry.
    Retry,
    /// The listings are older than `--relist`.
    Relist,
    /// A span boundary, a keep-until or a lock-hold passed.
    PolicyTime,
    /// These sources changed.
    Changed(Vec<PathBuf>),
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Start => f.write_str("start"),
            Reason::Reloaded => f.write_str("config reloaded"),
            Reason::Retry => f.write_str("retry after a failure"),
            Reason::Relist => f.write_str("time to list the remotes again"),
            Reason::PolicyTime => f.write_str("the policy's time to expire backups"),
            Reason::Changed(sources) => {
                let sources: Vec<String> = sources
                    .iter()
                    .map(|path| crate::text::escape_os(path.as_os_str()).into_owned())
                    .collect();
                write!(f, "changed: {}", sources.join(", "))
            }
        }
    }
}

/// How a cycle ended, as the schedule needs to know it.
#[derive(Debug, Clone, Copy)]
pub struct CycleEnd<'a> {
    /// When it started.
    pub started: Timestamp,
    /// Whether it did everything it had to.
    pub succeeded: bool,
    /// The newest snapshot of each source, if the cycle got that far.
    pub newest: &'a [NewestSnapshot],
    /// When the policies' decisions may next change, if the cycle planned.
    pub next_policy_time: Option<Timestamp>,
}

/// The daemon's schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    interval: Duration,
    relist: Duration,
    /// A cycle is due regardless (start, reload).
    pending: Option<Reason>,
    /// The newest snapshot of each source, as of the last cycle that saw it.
    newest: BTreeMap<PathBuf, (u64, Timestamp)>,
    next_policy_time: Option<Timestamp>,
    /// Failed cycles in a row.
    failures: u32,
    retry_at: Option<Timestamp>,
}

impl Schedule {
    /// A schedule whose first cycle is due at once.
    #[must_use]
    pub fn new(interval: Duration, relist: Duration) -> Schedule {
        Schedule {
            interval,
            relist,
            pending: Some(Reason::Start),
            newest: BTreeMap::new(),
            next_policy_time: None,
            failures: 0,
            retry_at: None,
        }
    }

    /// The config was reloaded: a cycle is due at once.
    pub fn reloaded(&mut self) {
        self.pending = Some(Reason::Reloaded);
    }

    /// Failed cycles in a row.
    #[must_use]
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Why a cycle is due at `now`, if one is. `generations` are the sources' current
    /// generations; `oldest_listing` is when the oldest remembered listing was made.
    #[must_use]
    pub fn due(
        &self,
        now: Timestamp,
        generations: &BTreeMap<PathBuf, u64>,
        oldest_listing: Option<Timestamp>,
    ) -> Option<Reason> {
        if let Some(reason) = &self.pending {
            return Some(reason.clone());
        }
        if let Some(retry_at) = self.retry_at {
            return (now >= retry_at).then_some(Reason::Retry);
        }
        if oldest_listing.is_some_and(|listed| now >= after(listed, self.relist)) {
            return Some(Reason::Relist);
        }
        if self.next_policy_time.is_some_and(|at| now >= at) {
            return Some(Reason::PolicyTime);
        }
        let changed: Vec<PathBuf> = generations
            .iter()
            .filter(|(source, generation)| match self.newest.get(*source) {
                None => true,
                Some((snapshot, taken)) => {
                    *generation > snapshot && now >= after(*taken, self.interval)
                }
            })
            .map(|(source, _)| source.clone())
            .collect();
        (!changed.is_empty()).then_some(Reason::Changed(changed))
    }

    /// The latest instant the next cycle is due at if no source changes (the daemon sleeps
    /// until then, or until its next look at the sources); `None` when only a change can
    /// make one due.
    #[must_use]
    pub fn deadline(&self, oldest_listing: Option<Timestamp>) -> Option<Timestamp> {
        if self.pending.is_some() {
            return Some(Timestamp::MIN);
        }
        if let Some(retry_at) = self.retry_at {
            return Some(retry_at);
        }
        let relist = oldest_listing.map(|listed| after(listed, self.relist));
        [relist, self.next_policy_time].into_iter().flatten().min()
    }

    /// When a changed source becomes due: its newest snapshot's time plus the interval.
    /// The daemon looks at the sources no less often than this asks.
    #[must_use]
    pub fn change_due(&self, source: &PathBuf) -> Option<Timestamp> {
        self.newest
            .get(source)
            .map(|(_, taken)| after(*taken, self.interval))
    }

    /// Takes in how a cycle ended.
    pub fn cycle_ended(&mut self, end: CycleEnd<'_>) {
        self.pending = None;
        for newest in end.newest {
            self.newest
                .insert(newest.source.clone(), (newest.ctransid, newest.ctime));
        }
        // A cycle that planned knows the next policy time; one that failed before keeps
        // the old one (its retry comes first anyway).
        if end.succeeded || end.next_policy_time.is_some() {
            self.next_policy_time = end.next_policy_time;
        }
        if end.succeeded {
            self.failures = 0;
            self.retry_at = None;
        } else {
            self.failures = self.failures.saturating_add(1);
            self.retry_at = Some(after(end.started, self.backoff()));
        }
    }

    /// The wait after the latest failure: the interval, doubled for each failure in a row
    /// after the first, at most an hour (or the interval, if that is longer).
    #[must_use]
    pub fn backoff(&self) -> Duration {
        let doublings = self.failures.saturating_sub(1).min(20);
        let limit = MAX_BACKOFF.max(self.interval);
        self.interval
            .max(Duration::from_secs(1))
            .saturating_mul(1 << doublings)
            .min(limit)
    }

    /// Forgets sources that are no longer configured.
    pub fn keep_sources(&mut self, sources: &[PathBuf]) {
        self.newest.retain(|source, _| sources.contains(source));
    }
}

/// `instant` plus `duration`, saturating.
fn after(instant: Timestamp, duration: Duration) -> Timestamp {
    SignedDuration::try_from(duration)
        .ok()
        .and_then(|duration| instant.checked_add(duration).ok())
        .unwrap_or(Timestamp::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);
    const DAY: Duration = Duration::from_secs(86_400);

    fn at(time: &str) -> Timestamp {
        format!("2026-05-20T{time}Z").parse().unwrap()
    }

    fn generations(home: u64) -> BTreeMap<PathBuf, u64> {
        BTreeMap::from([(PathBuf::from("/pool/home"), home)])
    }

    fn newest(ctransid: u64, time: &str) -> Vec<NewestSnapshot> {
        vec![NewestSnapshot {
            source: "/pool/home".into(),
            ctransid,
            ctime: at(time),
        }]
    }

    /// A schedule after a good start cycle at 10:00 that snapshotted generation 100.
    fn started() -> Schedule {
        let mut schedule = Schedule::new(15 * MINUTE, DAY);
        assert_eq!(
            schedule.due(at("10:00:00"), &generations(100), None),
            Some(Reason::Start)
        );
        schedule.cycle_ended(CycleEnd {
            started: at("10:00:00"),
            succeeded: true,
            newest: &newest(100, "10:00:00"),
            next_policy_time: Some(at("11:00:00")),
        });
        schedule
    }

    #[test]
    fn a_change_waits_for_the_interval_since_the_newest_snapshot() {
        let schedule = started();
        let listed = Some(at("10:00:00"));
        assert_eq!(
            schedule.due(at("10:05:00"), &generations(100), listed),
            None
        );
        assert_eq!(
            schedule.due(at("10:05:00"), &generations(101), listed),
            None
        );
        assert_eq!(
            schedule.due(at("10:14:59"), &generations(101), listed),
            None
        );
        assert_eq!(
            schedule.due(at("10:15:00"), &generations(101), listed),
            Some(Reason::Changed(vec!["/pool/home".into()]))
        );
        // No change, no cycle, however long it has been (until the next policy time).
        assert_eq!(
            schedule.due(at("10:59:59"), &generations(100), listed),
            None
        );
        assert_eq!(
            schedule.change_due(&"/pool/home".into()),
            Some(at("10:15:00"))
        );
    }

    #[test]
    fn a_source_never_snapshotted_is_due_at_once() {
        let schedule = started();
        let mut both = generations(100);
        both.insert("/pool/new".into(), 5);
        assert_eq!(
            schedule.due(at("10:01:00"), &both, Some(at("10:00:00"))),
            Some(Reason::Changed(vec!["/pool/new".into()]))
        );
    }

    #[test]
    fn policy_time_runs_a_cycle_without_changes() {
        let mut schedule = started();
        let listed = Some(at("10:00:00"));
        assert_eq!(schedule.deadline(listed), Some(at("11:00:00")));
        assert_eq!(
            schedule.due(at("11:00:00"), &generations(100), listed),
            Some(Reason::PolicyTime)
        );
        schedule.cycle_ended(CycleEnd {
            started: at("11:00:00"),
            succeeded: true,
            newest: &newest(100, "10:00:00"),
            next_policy_time: Some(at("12:00:00")),
        });
        assert_eq!(
            schedule.due(at("11:00:01"), &generations(100), listed),
            None
        );
    }

    #[test]
    fn listings_are_renewed_after_the_relist_period() {
        let schedule = started();
        let mut schedule = schedule;
        schedule.next_policy_time = None;
        let listed = Some(at("10:00:00"));
        assert_eq!(schedule.deadline(listed), Some(at("10:00:00") + DAY));
        let next_day: Timestamp = "2026-05-21T10:00:00Z".parse().unwrap();
        assert_eq!(
            schedule.due(next_day, &generations(100), listed),
            Some(Reason::Relist)
        );
        // Nothing remembered (a failure or another run cleared it): the next cycle lists
        // anyway, and no cycle is needed for that alone.
        assert_eq!(schedule.due(next_day, &generations(100), None), None);
        assert_eq!(schedule.deadline(None), None);
    }

    #[test]
    fn failures_back_off_and_hold_other_reasons() {
        let mut schedule = started();
        let listed = Some(at("10:00:00"));
        let failed = |schedule: &mut Schedule, time: &str| {
            schedule.cycle_ended(CycleEnd {
                started: at(time),
                succeeded: false,
                newest: &[],
                next_policy_time: None,
            });
        };
        failed(&mut schedule, "10:20:00");
        assert_eq!(schedule.failures(), 1);
        assert_eq!(schedule.backoff(), 15 * MINUTE);
        // A change does not bring the retry forward.
        assert_eq!(
            schedule.due(at("10:30:00"), &generations(105), listed),
            None
        );
        assert_eq!(schedule.deadline(listed), Some(at("10:35:00")));
        assert_eq!(
            schedule.due(at("10:35:00"), &generations(105), listed),
            Some(Reason::Retry)
        );
        failed(&mut schedule, "10:35:00");
        assert_eq!(schedule.deadline(listed), Some(at("11:05:00")));
        failed(&mut schedule, "11:05:00");
        failed(&mut schedule, "12:05:00");
        failed(&mut schedule, "13:05:00");
        assert_eq!(
            schedule.backoff(),
            Duration::from_secs(3600),
            "at most an hour"
        );
        schedule.cycle_ended(CycleEnd {
            started: at("14:05:00"),
            succeeded: true,
            newest: &newest(105, "14:05:00"),
            next_policy_time: Some(at("15:00:00")),
        });
        assert_eq!(schedule.failures(), 0);
        assert_eq!(
            schedule.due(at("14:06:00"), &generations(105), listed),
            None
        );
    }

    #[test]
    fn a_reload_is_due_at_once() {
        let mut schedule = started();
        schedule.reloaded();
        assert_eq!(schedule.deadline(None), Some(Timestamp::MIN));
        assert_eq!(
            schedule.due(at("10:01:00"), &generations(100), None),
            Some(Reason::Reloaded)
        );
    }

    #[test]
    fn a_one_second_interval_backs_off_from_one_second() {
        let mut schedule = Schedule::new(Duration::from_secs(1), DAY);
        for _ in 0..3 {
            schedule.cycle_ended(CycleEnd {
                started: at("10:00:00"),
                succeeded: false,
                newest: &[],
                next_policy_time: None,
            });
        }
        assert_eq!(schedule.backoff(), Duration::from_secs(4));
    }
}
