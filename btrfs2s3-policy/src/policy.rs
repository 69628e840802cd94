//! A preservation policy evaluated at a given instant in a given time zone.

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;

use crate::{Params, TimeSpan, Timeframe};

/// [`Params`] evaluated at the instant `now` in a time zone.
///
/// For each timeframe with a count N > 0, the policy *preserves* the N most recent spans of
/// that timeframe: the one containing `now` and the N - 1 before it. For years down to days,
/// "before" is calendar arithmetic in the time zone; for hours, minutes and seconds it is
/// elapsed time (`now` minus k hours), which behaves sensibly across DST changes.
///
/// There is no clock here: `now` is whatever the caller says it is.
///
/// ```
/// use btrfs2s3_policy::{Policy, Timeframe, TimeSpan};
/// use jiff::{Timestamp, tz::TimeZone};
///
/// let tz = TimeZone::get("Europe/Berlin")?;
/// let now: Timestamp = "2026-05-20T12:00:00Z".parse()?;
/// let policy = Policy::new("1y 3m".parse()?, tz.clone(), now);
///
/// let march = TimeSpan::containing(Timeframe::Months, "2026-03-15T00:00:00Z".parse()?, &tz);
/// let february = TimeSpan::containing(Timeframe::Months, "2026-02-15T00:00:00Z".parse()?, &tz);
/// assert!(policy.preserves(&march)); // May, April, March
/// assert!(!policy.preserves(&february));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Policy {
    params: Params,
    tz: TimeZone,
    now: Timestamp,
    // The civil date of `now` in `tz`, computed once.
    today: Date,
}

impl Policy {
    /// A policy with these parameters, in this time zone, evaluated at `now`.
    #[must_use]
    pub fn new(params: Params, tz: TimeZone, now: Timestamp) -> Policy {
        let today = tz.to_datetime(now).date();
        Policy {
            params,
            tz,
            now,
            today,
        }
    }

    /// The parameters of this policy.
    #[must_use]
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The time zone spans are computed in.
    #[must_use]
    pub fn time_zone(&self) -> &TimeZone {
        &self.tz
    }

    /// The instant the policy is evaluated at.
    #[must_use]
    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// The spans that `instant` belongs to, one for each timeframe of the policy (those with
    /// a non-zero count), longest first.
    pub fn spans_containing(&self, instant: Timestamp) -> impl Iterator<Item = TimeSpan> + '_ {
        self.params
            .timeframes()
            .map(move |timeframe| TimeSpan::containing(timeframe, instant, &self.tz))
    }

    /// Whether the policy preserves `span`: it is one of the N most recent spans of its
    /// timeframe, where N is the policy's count for that timeframe.
    ///
    /// `span` is expected to come from [`TimeSpan::containing`] with this policy's time zone.
    #[must_use]
    pub fn preserves(&self, span: &TimeSpan) -> bool {
        let count = i64::from(self.params.count(span.timeframe()));
        if count == 0 || span.start() > self.now {
            return false;
        }
        if let Some(unit) = unit_seconds(span.timeframe()) {
            // The k-th preserved span is the one containing `now - k * unit`, k < count.
            // Spans of a timeframe do not overlap, so `span` is preserved exactly when the
            // smallest k whose instant falls before its end also falls at or after its start.
            let since_end = self.now.as_second() - span.end().as_second();
            let k = if since_end < 0 {
                0
            } else {
                since_end / unit + 1
            };
            k < count && self.now.as_second() - k * unit >= span.start().as_second()
        } else {
            let start = self.tz.to_datetime(span.start()).date();
            let back = calendar_distance(span.timeframe(), start, self.today);
            (0..count).contains(&back)
        }
    }

    /// Until when the policy preserves `span`: the first instant at or after `now` at which
    /// the policy, evaluated then, no longer does. `None` when it does not preserve `span` now.
    ///
    /// For years down to days that is the start of the span N units after `span` (N being the
    /// policy's count for the timeframe). For hours, minutes and seconds, which the policy
    /// steps in elapsed time, it is the end of `span` plus N - 1 units; a wall-clock hour that
    /// a DST change of half an hour made shorter than an hour is preserved in windows, and
    /// then it is the end of the current window.
    ///
    /// ```
    /// use btrfs2s3_policy::{Policy, Timeframe, TimeSpan};
    /// use jiff::{Timestamp, tz::TimeZone};
    ///
    /// let tz = TimeZone::get("Europe/Berlin")?;
    /// let now: Timestamp = "2026-05-20T12:00:00Z".parse()?;
    /// let policy = Policy::new("3m 24h".parse()?, tz.clone(), now);
    ///
    /// // March is one of the 3 most recent months until June begins.
    /// let march = TimeSpan::containing(Timeframe::Months, "2026-03-15T00:00:00Z".parse()?, &tz);
    /// assert_eq!(policy.preserved_until(&march), Some("2026-06-01T00:00:00+02:00".parse()?));
    /// // The hour of 11:00 UTC is one of the 24 most recent for another 23 hours.
    /// let hour = TimeSpan::containing(Timeframe::Hours, "2026-05-20T11:30:00Z".parse()?, &tz);
    /// assert_eq!(policy.preserved_until(&hour), Some("2026-05-21T11:00:00Z".parse()?));
    /// let february = TimeSpan::containing(Timeframe::Months, "2026-02-15T00:00:00Z".parse()?, &tz);
    /// assert_eq!(policy.preserved_until(&february), None);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn preserved_until(&self, span: &TimeSpan) -> Option<Timestamp> {
        if !self.preserves(span) {
            return None;
        }
        let count = self.params.count(span.timeframe());
        let Some(unit) = unit_seconds(span.timeframe()) else {
            return Some(span.start_of_nth_after(count, &self.tz));
        };
        let start = span.start().as_second();
        let end = span.end().as_second();
        // Preserved exactly while `now - k * unit` falls in the span for some k < count.
        let steps = if end - start >= unit {
            i64::from(count) - 1
        } else {
            (self.now.as_second() - start).div_euclid(unit)
        };
        let until = steps
            .checked_mul(unit)
            .and_then(|elapsed| end.checked_add(elapsed))
            .unwrap_or(i64::MAX);
        Some(Timestamp::from_second(until).unwrap_or(Timestamp::MAX))
    }

    /// One unit of the policy's shortest timeframe after `now` (on the wall clock for days
    /// and longer), the step by which the newest backup's keep-until stays ahead; `now` for
    /// a policy that preserves nothing.
    #[must_use]
    pub fn one_step_ahead(&self) -> Timestamp {
        let Some(shortest) = self.params.timeframes().last() else {
            return self.now;
        };
        match unit_seconds(shortest) {
            Some(unit) => self
                .now
                .checked_add(jiff::SignedDuration::from_secs(unit))
                .unwrap_or(Timestamp::MAX),
            None => crate::span::civil_step(self.tz.to_datetime(self.now), shortest, 1)
                .map_or(Timestamp::MAX, |later| {
                    crate::span::resolve(later, &self.tz)
                }),
        }
    }

    /// The earliest instant after `now` at which a new span of one of the policy's timeframes
    /// begins: the end of the shortest span containing `now`; `None` for a policy that
    /// preserves nothing. Evaluated between `now` and then, the policy preserves the same
    /// spans, except those whose [`preserved_until`](Policy::preserved_until) falls in
    /// between: a scheduler that wakes at the earlier of the two misses no decision.
    ///
    /// ```
    /// use btrfs2s3_policy::Policy;
    /// use jiff::{Timestamp, tz::TimeZone};
    ///
    /// let tz = TimeZone::get("Europe/Berlin")?;
    /// let now: Timestamp = "2026-05-20T12:34:56Z".parse()?;
    /// let daily = Policy::new("1y 30d".parse()?, tz.clone(), now);
    /// assert_eq!(daily.next_span_start(), Some("2026-05-21T00:00:00+02:00".parse()?));
    /// let hourly = Policy::new("1y 24h".parse()?, tz.clone(), now);
    /// assert_eq!(hourly.next_span_start(), Some("2026-05-20T13:00:00Z".parse()?));
    /// assert_eq!(Policy::new("0y".parse()?, tz, now).next_span_start(), None);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn next_span_start(&self) -> Option<Timestamp> {
        self.params
            .timeframes()
            .map(|timeframe| crate::span::next_change(timeframe, self.now, &self.tz))
            .min()
    }

    /// The spans of `timeframe` that the policy preserves, most recent first.
    pub fn preserved_spans(&self, timeframe: Timeframe) -> impl Iterator<Item = TimeSpan> + '_ {
        let mut cursor = Some(TimeSpan::containing(timeframe, self.now, &self.tz));
        std::iter::from_fn(move || {
            let span = cursor.take()?;
            if !self.preserves(&span) {
                return None;
            }
            let before = span
                .start()
                .checked_sub(jiff::SignedDuration::from_secs(1))
                .ok();
            cursor = before.map(|instant| TimeSpan::containing(timeframe, instant, &self.tz));
            Some(span)
        })
    }
}

/// The fixed length of the sub-day timeframes, which the policy steps through in elapsed time.
fn unit_seconds(timeframe: Timeframe) -> Option<i64> {
    match timeframe {
        Timeframe::Hours => Some(3600),
        Timeframe::Minutes => Some(60),
        Timeframe::Seconds => Some(1),
        _ => None,
    }
}

/// How many units of a calendar timeframe lie between the unit containing `earlier` and the
/// unit containing `later` (0 when they are the same unit).
fn calendar_distance(timeframe: Timeframe, earlier: Date, later: Date) -> i64 {
    let months = |date: Date| i64::from(date.year()) * 12 + i64::from(date.month()) - 1;
    let days = |date: Date| {
        date.since(Date::constant(1970, 1, 1))
            .map_or(0, |span| i64::from(span.get_days()))
    };
    match timeframe {
        Timeframe::Years => i64::from(later.year()) - i64::from(earlier.year()),
        Timeframe::Quarters => months(later).div_euclid(3) - months(earlier).div_euclid(3),
        Timeframe::Months => months(later) - months(earlier),
        Timeframe::Weeks => {
            let monday =
                |date: Date| days(date) - i64::from(date.weekday().to_monday_zero_offset());
            (monday(later) - monday(earlier)).div_euclid(7)
        }
        Timeframe::Days => days(later) - days(earlier),
        Timeframe::Hours | Timeframe::Minutes | Timeframe::Seconds => {
            unreachable!("sub-day timeframes are stepped in elapsed time")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(preserve: &str, zone: &str, now: &str) -> Policy {
        Policy::new(
            preserve.parse().unwrap(),
            TimeZone::get(zone).unwrap(),
            now.parse().unwrap(),
        )
    }

    /// The preserved spans of each timeframe, described, most recent first.
    fn check(preserve: &str, zone: &str, now: &str, expected: &[&str]) {
        let policy = policy(preserve, zone, now);
        let actual: Vec<String> = policy
            .params()
            .timeframes()
            .flat_map(|tf| policy.preserved_spans(tf).collect::<Vec<_>>())
            .map(|span| span.describe(policy.time_zone()))
            .collect();
        assert_eq!(actual, expected, "{preserve} at {now} in {zone}");
    }

    #[test]
    fn preserved_spans() {
        check(
            "2y 2q 3m",
            "UTC",
            "2026-03-31T10:00:00Z",
            &[
                "2026 yearly",
                "2025 yearly",
                "2026-Q1 quarterly",
                "2025-Q4 quarterly",
                "2026-03 monthly",
                "2026-02 monthly",
                "2026-01 monthly",
            ],
        );
        check(
            "2w 3d",
            "America/Los_Angeles",
            "2026-03-09T01:00:00-07:00",
            &[
                "2026-W11 weekly",
                "2026-W10 weekly",
                "2026-03-09 daily",
                "2026-03-08 daily",
                "2026-03-07 daily",
            ],
        );
        // Hours step in elapsed time, so the skipped hour does not shift anything.
        check(
            "3h",
            "Europe/Berlin",
            "2026-03-29T03:30:00+02:00",
            &[
                "2026-03-29T03 hourly",
                "2026-03-29T01 hourly",
                "2026-03-29T00 hourly",
            ],
        );
        check(
            "0y 1M",
            "UTC",
            "2026-01-01T00:00:59Z",
            &["2026-01-01T00:00 minutely"],
        );
    }

    #[test]
    fn spans_after_now_are_not_preserved() {
        let policy = policy("5y 5d 5h", "UTC", "2026-01-01T00:00:00Z");
        let tz = policy.time_zone().clone();
        let later: Timestamp = "2026-01-01T01:00:00Z".parse().unwrap();
        let next_year: Timestamp = "2027-01-01T00:00:00Z".parse().unwrap();
        assert!(policy.preserves(&TimeSpan::containing(Timeframe::Years, later, &tz)));
        assert!(!policy.preserves(&TimeSpan::containing(Timeframe::Hours, later, &tz)));
        assert!(!policy.preserves(&TimeSpan::containing(Timeframe::Years, next_year, &tz)));
    }

    #[test]
    fn huge_counts_are_cheap() {
        let policy = policy("4294967295d", "UTC", "2026-01-01T00:00:00Z");
        let old: Timestamp = "1900-01-01T00:00:00Z".parse().unwrap();
        let span = TimeSpan::containing(Timeframe::Days, old, policy.time_zone());
        assert!(policy.preserves(&span));
    }

    const ZONES: &[&str] = &[
        "UTC",
        "Europe/Berlin",
        "America/St_Johns",
        "Australia/Lord_Howe",
    ];
    const POLICIES: &[&str] = &[
        "1y 3m 30d 24h",
        "2q 2w 3d",
        "5d 48h 90M 30s",
        "1y 1q 1m 1w 1d 1h 1M 1s",
    ];

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Preserved until: preserved at every instant from now to just before, not at it.
        #[test]
        fn a_span_is_preserved_exactly_until_preserved_until(
            zone in proptest::sample::select(ZONES),
            preserve in proptest::sample::select(POLICIES),
            now in 1_700_000_000i64..1_900_000_000,
            age in 0i64..40_000_000,
            fraction in 0.0f64..1.0,
        ) {
            let tz = TimeZone::get(zone).unwrap();
            let now = Timestamp::from_second(now).unwrap();
            let at = |instant: Timestamp| Policy::new(preserve.parse().unwrap(), tz.clone(), instant);
            let policy = at(now);
            let instant = Timestamp::from_second(now.as_second() - age).unwrap();
            for span in policy.spans_containing(instant).collect::<Vec<_>>() {
                let Some(until) = policy.preserved_until(&span) else {
                    proptest::prop_assert!(!policy.preserves(&span));
                    continue;
                };
                proptest::prop_assert!(until > now, "{span}: {until}");
                proptest::prop_assert!(!at(until).preserves(&span), "{span} still at {until}");
                let last = Timestamp::from_second(until.as_second() - 1).unwrap();
                proptest::prop_assert!(at(last).preserves(&span), "{span} not at {last}");
                #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
                let between = now.as_second()
                    + ((until.as_second() - now.as_second()) as f64 * fraction) as i64;
                let between = Timestamp::from_second(between).unwrap();
                proptest::prop_assert!(at(between).preserves(&span), "{span} not at {between}");
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Nothing changes before the next span starts, except what `preserved_until` says.
        #[test]
        fn decisions_stay_until_the_next_span_start(
            zone in proptest::sample::select(ZONES),
            preserve in proptest::sample::select(POLICIES),
            now in 1_700_000_000i64..1_900_000_000,
            age in 0i64..40_000_000,
            fraction in 0.0f64..1.0,
        ) {
            let tz = TimeZone::get(zone).unwrap();
            let now = Timestamp::from_second(now).unwrap();
            let at = |instant: Timestamp| Policy::new(preserve.parse().unwrap(), tz.clone(), instant);
            let policy = at(now);
            let next = policy.next_span_start().unwrap();
            proptest::prop_assert!(next > now);
            let last = Timestamp::from_second(next.as_second() - 1).unwrap();
            // The newest spans are still the ones containing now.
            let newest: Vec<_> = policy.spans_containing(now).collect();
            proptest::prop_assert_eq!(&at(last).spans_containing(last).collect::<Vec<_>>(), &newest);
            proptest::prop_assert_ne!(at(next).spans_containing(next).collect::<Vec<_>>(), newest);
            let instant = Timestamp::from_second(now.as_second() - age).unwrap();
            for span in policy.spans_containing(instant).collect::<Vec<_>>() {
                let until = policy.preserved_until(&span).map_or(next, |until| until.min(next));
                #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
                let between = now.as_second()
                    + ((until.as_second() - 1 - now.as_second()) as f64 * fraction) as i64;
                let between = Timestamp::from_second(between.max(now.as_second())).unwrap();
                proptest::prop_assert_eq!(
                    at(between).preserves(&span),
                    policy.preserves(&span),
                    "{} at {}", span, between
                );
            }
        }
    }

    #[test]
    fn one_step_ahead_is_one_unit_of_the_shortest_timeframe() {
        let ahead = |preserve: &str| {
            policy(preserve, "Europe/Berlin", "2026-03-28T12:00:00Z")
                .one_step_ahead()
                .to_string()
        };
        assert_eq!(ahead("1y 24h"), "2026-03-28T13:00:00Z");
        // A wall-clock day: the night to the 29th is an hour short (DST begins).
        assert_eq!(ahead("1y 1d"), "2026-03-29T11:00:00Z");
        assert_eq!(ahead("0y"), "2026-03-28T12:00:00Z");
    }

    #[test]
    fn the_next_span_starts_after_now_in_the_second_pass_of_a_fold() {
        // 01:00Z is 02:00 CET, the second 02:00 of the night clocks go back: the minute's
        // end, 02:01, resolves to its first pass (00:01Z), before now.
        for (preserve, next) in [
            ("1y 30M", "2027-10-31T01:01:00Z"),
            ("1y 30s", "2027-10-31T01:00:01Z"),
            ("1y 48h", "2027-10-31T02:00:00Z"),
        ] {
            let policy = policy(preserve, "Europe/Berlin", "2027-10-31T01:00:00Z");
            assert_eq!(
                policy.next_span_start(),
                Some(next.parse().unwrap()),
                "{preserve}"
            );
        }
    }

    #[test]
    fn spans_containing_follow_the_policy_timeframes() {
        let policy = policy("1y 0m 1d", "UTC", "2026-01-01T00:00:00Z");
        let timeframes: Vec<_> = policy
            .spans_containing("2025-06-01T00:00:00Z".parse().unwrap())
            .map(|span| span.timeframe())
            .collect();
        assert_eq!(timeframes, [Timeframe::Years, Timeframe::Days]);
    }
}
