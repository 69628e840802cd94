//! Concrete calendar intervals ("March 2026", "2026-03-08 01:00") in a time zone.

use std::fmt;

use jiff::civil::{Date, DateTime, Time};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

use crate::Timeframe;

/// A concrete interval of a [`Timeframe`] in some time zone: `[start, end)`.
///
/// The boundaries are the local wall-clock boundaries of the unit (midnight, the 1st of the
/// month, the top of the hour...) resolved to instants the way the Python tool resolves them:
/// a wall-clock time that does not exist (it falls in a DST gap) moves forward by the length of
/// the gap, and one that exists twice (a DST fold) is its earlier occurrence. So a day is 23 or
/// 25 hours long across a DST change, and spans of one timeframe never overlap and leave no
/// gaps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimeSpan {
    start: Timestamp,
    end: Timestamp,
    timeframe: Timeframe,
}

impl TimeSpan {
    /// The span of `timeframe` that contains `instant` in time zone `tz`.
    ///
    /// ```
    /// use btrfs2s3_policy::{TimeSpan, Timeframe};
    /// use jiff::{Timestamp, tz::TimeZone};
    ///
    /// let tz = TimeZone::get("America/Los_Angeles")?;
    /// // 2026-03-08 is the day DST starts in Los Angeles: it is 23 hours long.
    /// let instant: Timestamp = "2026-03-08T12:00:00-07:00".parse()?;
    /// let day = TimeSpan::containing(Timeframe::Days, instant, &tz);
    /// assert_eq!(day.start().to_string(), "2026-03-08T08:00:00Z");
    /// assert_eq!(day.end().duration_since(day.start()).as_hours(), 23);
    /// # Ok::<(), jiff::Error>(())
    /// ```
    #[must_use]
    pub fn containing(timeframe: Timeframe, instant: Timestamp, tz: &TimeZone) -> TimeSpan {
        let local = tz.to_datetime(instant);
        let (floor, next) = civil_bounds(timeframe, local);
        TimeSpan {
            start: resolve(floor, tz),
            end: resolve(next, tz),
            timeframe,
        }
    }

    /// The first instant of the span.
    #[must_use]
    pub fn start(&self) -> Timestamp {
        self.start
    }

    /// The first instant after the span.
    #[must_use]
    pub fn end(&self) -> Timestamp {
        self.end
    }

    /// The timeframe this span is a unit of.
    #[must_use]
    pub fn timeframe(&self) -> Timeframe {
        self.timeframe
    }

    /// Whether `instant` lies in `[start, end)`.
    #[must_use]
    pub fn contains(&self, instant: Timestamp) -> bool {
        self.start <= instant && instant < self.end
    }

    /// A short human description in time zone `tz`, like `2026-03 monthly` or
    /// `2026-W10 weekly`.
    #[must_use]
    pub fn describe(&self, tz: &TimeZone) -> String {
        let start = tz.to_datetime(self.start);
        let (y, m, d) = (start.year(), start.month(), start.day());
        let (hh, mm, ss) = (start.hour(), start.minute(), start.second());
        let label = match self.timeframe {
            Timeframe::Years => format!("{y:04}"),
            Timeframe::Quarters => format!("{y:04}-Q{}", (m - 1) / 3 + 1),
            Timeframe::Months => format!("{y:04}-{m:02}"),
            Timeframe::Weeks => {
                let week = start.date().iso_week_date();
                format!("{:04}-W{:02}", week.year(), week.week())
            }
            Timeframe::Days => format!("{y:04}-{m:02}-{d:02}"),
            Timeframe::Hours => format!("{y:04}-{m:02}-{d:02}T{hh:02}"),
            Timeframe::Minutes => format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}"),
            Timeframe::Seconds => format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}"),
        };
        format!("{label} {}", self.timeframe.adjective())
    }
}

impl fmt::Display for TimeSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}, {})", self.timeframe, self.start, self.end)
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for TimeSpan {
    /// Serialized as `{"timeframe": "months", "start": <unix seconds>, "end": <unix seconds>}`.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut s = serializer.serialize_struct("TimeSpan", 3)?;
        s.serialize_field("timeframe", &self.timeframe)?;
        s.serialize_field("start", &self.start.as_second())?;
        s.serialize_field("end", &self.end.as_second())?;
        s.end()
    }
}

impl TimeSpan {
    /// The start of the span of this timeframe `n` units after this one, stepping the wall
    /// clock (`n` months after March is August 1st at midnight, resolved like every boundary);
    /// the largest instant when that is beyond jiff's range.
    pub(crate) fn start_of_nth_after(&self, n: u32, tz: &TimeZone) -> Timestamp {
        let (floor, _) = civil_bounds(self.timeframe, tz.to_datetime(self.start));
        civil_step(floor, self.timeframe, n).map_or(Timestamp::MAX, |dt| resolve(dt, tz))
    }
}

/// `local` plus `n` units of `timeframe` on the wall clock, if that is within jiff's range.
pub(crate) fn civil_step(local: DateTime, timeframe: Timeframe, n: u32) -> Option<DateTime> {
    let n = i64::from(n);
    let span = match timeframe {
        Timeframe::Years => jiff::Span::new().try_years(n),
        Timeframe::Quarters => jiff::Span::new().try_months(n * 3),
        Timeframe::Months => jiff::Span::new().try_months(n),
        Timeframe::Weeks => jiff::Span::new().try_days(n * 7),
        Timeframe::Days => jiff::Span::new().try_days(n),
        Timeframe::Hours => jiff::Span::new().try_hours(n),
        Timeframe::Minutes => jiff::Span::new().try_minutes(n),
        Timeframe::Seconds => jiff::Span::new().try_seconds(n),
    }
    .ok()?;
    local.checked_add(span).ok()
}

/// The wall-clock start of the unit containing `local`, and the start of the next unit.
fn civil_bounds(timeframe: Timeframe, local: DateTime) -> (DateTime, DateTime) {
    let date = local.date();
    let midnight = |date: Date| date.to_datetime(Time::midnight());
    // Calendar arithmetic on dates between jiff's limits (years -9999..=9999) cannot fail for
    // the small steps below except at the very end of the supported range, where we saturate.
    let add = |dt: DateTime, span: jiff::Span| dt.checked_add(span).unwrap_or(DateTime::MAX);
    match timeframe {
        Timeframe::Years => {
            let floor = midnight(date.first_of_year());
            (floor, add(floor, 1.year()))
        }
        Timeframe::Quarters => {
            let first_month = (date.month() - 1) / 3 * 3 + 1;
            let floor = midnight(
                Date::new(date.year(), first_month, 1).unwrap_or_else(|_| date.first_of_month()),
            );
            (floor, add(floor, 3.months()))
        }
        Timeframe::Months => {
            let floor = midnight(date.first_of_month());
            (floor, add(floor, 1.month()))
        }
        Timeframe::Weeks => {
            let back = i64::from(date.weekday().to_monday_zero_offset());
            let floor = add(midnight(date), (-back).days());
            (floor, add(floor, 7.days()))
        }
        Timeframe::Days => {
            let floor = midnight(date);
            (floor, add(floor, 1.day()))
        }
        Timeframe::Hours => {
            let floor = date.to_datetime(Time::constant(local.hour(), 0, 0, 0));
            (floor, add(floor, 1.hour()))
        }
        Timeframe::Minutes => {
            let floor = date.to_datetime(Time::constant(local.hour(), local.minute(), 0, 0));
            (floor, add(floor, 1.minute()))
        }
        Timeframe::Seconds => {
            let floor = local.with().subsec_nanosecond(0).build().unwrap_or(local);
            (floor, add(floor, 1.second()))
        }
    }
}

/// The first instant after `instant` at which the span of `timeframe` containing it changes:
/// usually that span's end, but in the second pass through a DST fold the end resolves to the
/// fold's first pass (the span does not contain `instant`), and the wall clock's next unit
/// starts at its later occurrence.
pub(crate) fn next_change(timeframe: Timeframe, instant: Timestamp, tz: &TimeZone) -> Timestamp {
    let (_, next) = civil_bounds(timeframe, tz.to_datetime(instant));
    let end = resolve(next, tz);
    if end > instant {
        return end;
    }
    tz.to_ambiguous_timestamp(next)
        .later()
        .ok()
        .filter(|later| *later > instant)
        .unwrap_or_else(|| {
            instant
                .checked_add(jiff::SignedDuration::from_secs(1))
                .unwrap_or(Timestamp::MAX)
        })
}

/// Resolves a wall-clock time to an instant: a time in a DST gap moves forward by the gap, a
/// time in a fold is its earlier occurrence. This is jiff's "compatible" disambiguation, and
/// it is also what the Python tool (arrow + zoneinfo with `fold=0`) does.
pub(crate) fn resolve(local: DateTime, tz: &TimeZone) -> Timestamp {
    tz.to_ambiguous_timestamp(local)
        .compatible()
        .unwrap_or(if local.year() < 0 {
            Timestamp::MIN
        } else {
            Timestamp::MAX
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks the span of `timeframe` containing `instant` (RFC 3339) in `zone`: its start
    /// and end as RFC 3339 instants with the local offset.
    fn check(zone: &str, timeframe: Timeframe, instant: &str, start: &str, end: &str) {
        let tz = TimeZone::get(zone).unwrap();
        let instant: Timestamp = instant.parse().unwrap();
        let span = TimeSpan::containing(timeframe, instant, &tz);
        let fmt = |ts: Timestamp| {
            ts.to_zoned_datetime(tz.clone())
                .strftime("%FT%T%:z")
                .to_string()
        };
        assert_eq!(
            (fmt(span.start()), fmt(span.end())),
            (start.to_owned(), end.to_owned()),
            "{zone} {timeframe} of {instant}"
        );
        assert!(span.contains(instant));
    }

    #[test]
    fn calendar_units() {
        use Timeframe::*;
        let la = "America/Los_Angeles";
        let t = "2026-05-20T13:45:30-07:00";
        check(
            la,
            Years,
            t,
            "2026-01-01T00:00:00-08:00",
            "2027-01-01T00:00:00-08:00",
        );
        check(
            la,
            Quarters,
            t,
            "2026-04-01T00:00:00-07:00",
            "2026-07-01T00:00:00-07:00",
        );
        check(
            la,
            Months,
            t,
            "2026-05-01T00:00:00-07:00",
            "2026-06-01T00:00:00-07:00",
        );
        // 2026-05-20 is a Wednesday; weeks start on Monday.
        check(
            la,
            Weeks,
            t,
            "2026-05-18T00:00:00-07:00",
            "2026-05-25T00:00:00-07:00",
        );
        check(
            la,
            Days,
            t,
            "2026-05-20T00:00:00-07:00",
            "2026-05-21T00:00:00-07:00",
        );
        check(
            la,
            Hours,
            t,
            "2026-05-20T13:00:00-07:00",
            "2026-05-20T14:00:00-07:00",
        );
        check(
            la,
            Minutes,
            t,
            "2026-05-20T13:45:00-07:00",
            "2026-05-20T13:46:00-07:00",
        );
        check(
            la,
            Seconds,
            t,
            "2026-05-20T13:45:30-07:00",
            "2026-05-20T13:45:31-07:00",
        );
        // Quarters start in January, April, July and October.
        let q4 = "2026-12-31T23:59:59-08:00";
        check(
            la,
            Quarters,
            q4,
            "2026-10-01T00:00:00-07:00",
            "2027-01-01T00:00:00-08:00",
        );
        // A week that spans the new year.
        let w = "2027-01-01T10:00:00-08:00";
        check(
            la,
            Weeks,
            w,
            "2026-12-28T00:00:00-08:00",
            "2027-01-04T00:00:00-08:00",
        );
    }

    #[test]
    fn dst_days_are_23_and_25_hours() {
        use Timeframe::*;
        let berlin = "Europe/Berlin";
        check(
            berlin,
            Days,
            "2026-03-29T12:00:00+02:00",
            "2026-03-29T00:00:00+01:00",
            "2026-03-30T00:00:00+02:00",
        );
        check(
            berlin,
            Days,
            "2026-10-25T12:00:00+01:00",
            "2026-10-25T00:00:00+02:00",
            "2026-10-26T00:00:00+01:00",
        );
        // The hour that contains the skipped hour ends at the next wall-clock hour.
        check(
            berlin,
            Hours,
            "2026-03-29T01:30:00+01:00",
            "2026-03-29T01:00:00+01:00",
            "2026-03-29T03:00:00+02:00",
        );
        // The repeated hour: both occurrences fall in one two-hour span starting at the first.
        check(
            berlin,
            Hours,
            "2026-10-25T02:30:00+01:00",
            "2026-10-25T02:00:00+02:00",
            "2026-10-25T03:00:00+01:00",
        );
    }

    #[test]
    fn odd_offsets() {
        use Timeframe::*;
        check(
            "Asia/Kolkata",
            Hours,
            "2026-05-20T13:45:00+05:30",
            "2026-05-20T13:00:00+05:30",
            "2026-05-20T14:00:00+05:30",
        );
        check(
            "Asia/Kathmandu",
            Days,
            "2026-05-20T00:10:00+05:45",
            "2026-05-20T00:00:00+05:45",
            "2026-05-21T00:00:00+05:45",
        );
        check(
            "Pacific/Chatham",
            Months,
            "2026-04-05T03:00:00+12:45",
            "2026-04-01T00:00:00+13:45",
            "2026-05-01T00:00:00+12:45",
        );
        // Lord Howe moves its clocks by 30 minutes: 02:00 -> 02:30 on 2026-10-04.
        check(
            "Australia/Lord_Howe",
            Hours,
            "2026-10-04T02:40:00+11:00",
            "2026-10-04T02:30:00+11:00",
            "2026-10-04T03:00:00+11:00",
        );
    }

    #[test]
    fn midnight_in_a_dst_gap() {
        // Santiago skips from 24:00 to 01:00 when DST starts, so that day starts at 01:00.
        check(
            "America/Santiago",
            Timeframe::Days,
            "2026-09-06T12:00:00-03:00",
            "2026-09-06T01:00:00-03:00",
            "2026-09-07T00:00:00-03:00",
        );
    }

    #[test]
    fn describe() {
        let tz = TimeZone::get("UTC").unwrap();
        let instant: Timestamp = "2026-03-08T01:02:03Z".parse().unwrap();
        let cases = [
            (Timeframe::Years, "2026 yearly"),
            (Timeframe::Quarters, "2026-Q1 quarterly"),
            (Timeframe::Months, "2026-03 monthly"),
            (Timeframe::Weeks, "2026-W10 weekly"),
            (Timeframe::Days, "2026-03-08 daily"),
            (Timeframe::Hours, "2026-03-08T01 hourly"),
            (Timeframe::Minutes, "2026-03-08T01:02 minutely"),
            (Timeframe::Seconds, "2026-03-08T01:02:03 secondly"),
        ];
        for (timeframe, expected) in cases {
            let span = TimeSpan::containing(timeframe, instant, &tz);
            assert_eq!(span.describe(&tz), expected);
        }
    }
}
