//! How a backup is stored, decided from its keep-until: its storage class (by the longest
//! timeframe it is kept for, never one whose minimum storage duration outlasts it) and its
//! object lock (until it expires, plus a margin). Pure.

use std::collections::BTreeMap;

use btrfs2s3_policy::Timeframe;
use btrfs2s3_s3::{LockMode, ObjectLock};
use jiff::{SignedDuration, Timestamp};

/// The class S3 stores an object in when nothing else fits.
pub const STANDARD: &str = "STANDARD";

/// The minimum storage durations of AWS's classes, in days: an object deleted earlier is
/// billed as if it had stayed that long.
const KNOWN_MIN_DAYS: &[(&str, u32)] = &[
    ("STANDARD_IA", 30),
    ("ONEZONE_IA", 30),
    ("GLACIER_IR", 90),
    ("GLACIER", 90),
    ("DEEP_ARCHIVE", 180),
];

/// The storage classes of one (source, remote) pair (`storage_class:` and `min_days:`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StorageClasses {
    /// The class of backups kept for a timeframe.
    pub by_timeframe: BTreeMap<Timeframe, String>,
    /// The class of backups kept for no timeframe of the map (the most recent, send
    /// ancestors), and the next choice when none of the map fits.
    pub default: Option<String>,
    /// Minimum storage durations in days, for classes other providers define or price
    /// differently.
    pub min_days: BTreeMap<String, u32>,
}

impl StorageClasses {
    /// One class for every backup.
    #[must_use]
    pub fn one(class: &str) -> StorageClasses {
        StorageClasses {
            default: Some(class.to_owned()),
            ..StorageClasses::default()
        }
    }

    /// The minimum storage duration of `class`, in days (0 for classes without one).
    #[must_use]
    pub fn min_days(&self, class: &str) -> u32 {
        self.min_days.get(class).copied().unwrap_or_else(|| {
            KNOWN_MIN_DAYS
                .iter()
                .find(|(known, _)| *known == class)
                .map_or(0, |(_, days)| *days)
        })
    }

    /// The class of a new backup uploaded at `now`, kept for `kept_for` (the timeframes of
    /// the preserved spans it is the first item of) until `keep_until`: the class of the
    /// longest timeframe it is kept for, else the next shorter timeframe's class in the map,
    /// then `default`, then [`STANDARD`] — the first whose minimum storage duration fits
    /// before `keep_until`, so that no backup is deleted early (and billed for the rest).
    ///
    /// ```
    /// use btrfs2s3_core::storage::StorageClasses;
    /// use btrfs2s3_policy::Timeframe;
    ///
    /// let classes = StorageClasses {
    ///     by_timeframe: [(Timeframe::Years, "DEEP_ARCHIVE"), (Timeframe::Months, "GLACIER_IR")]
    ///         .map(|(t, c)| (t, c.to_owned()))
    ///         .into(),
    ///     default: Some("STANDARD_IA".to_owned()),
    ///     ..StorageClasses::default()
    /// };
    /// let now = "2026-12-10T00:00:00Z".parse()?;
    /// // A yearly backup made in December under `1y` is kept three weeks: not Deep Archive
    /// // (180 days), not Glacier IR (90), not Standard-IA (30).
    /// let until = "2027-01-01T00:00:00Z".parse()?;
    /// assert_eq!(classes.choose([Timeframe::Years], until, now), "STANDARD");
    /// // Under `2y`, the same backup stays a year and more: Deep Archive.
    /// let until = "2028-01-01T00:00:00Z".parse()?;
    /// assert_eq!(classes.choose([Timeframe::Years], until, now), "DEEP_ARCHIVE");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn choose(
        &self,
        kept_for: impl IntoIterator<Item = Timeframe>,
        keep_until: Timestamp,
        now: Timestamp,
    ) -> String {
        let longest = kept_for.into_iter().min();
        let stays_days = keep_until.duration_since(now).as_secs().max(0) / 86_400;
        let by_timeframe = self
            .by_timeframe
            .iter()
            .filter(|(timeframe, _)| longest.is_some_and(|longest| **timeframe >= longest))
            .map(|(_, class)| class.as_str());
        by_timeframe
            .chain(self.default.as_deref())
            .find(|class| stays_days >= i64::from(self.min_days(class)))
            .unwrap_or(STANDARD)
            .to_owned()
    }
}

/// Storage classes as a command line gives them: one class (`STANDARD_IA`), or classes by
/// unit (`y=DEEP_ARCHIVE,m=GLACIER_IR,default=STANDARD`). Units `preserve` keeps no backups
/// of are left out (one argument can serve several policies).
///
/// ```
/// use btrfs2s3_core::storage::parse_classes;
/// use btrfs2s3_policy::Timeframe;
///
/// let classes = parse_classes("y=DEEP_ARCHIVE,d=GLACIER_IR,default=STANDARD_IA", &"1y 30d".parse()?)?;
/// assert_eq!(classes.by_timeframe[&Timeframe::Years], "DEEP_ARCHIVE");
/// assert_eq!(classes.default.as_deref(), Some("STANDARD_IA"));
/// assert!(parse_classes("y=deep", &"1y".parse()?).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn parse_classes(
    text: &str,
    preserve: &btrfs2s3_policy::Params,
) -> Result<StorageClasses, String> {
    let mut classes = StorageClasses::default();
    for part in text.split(',').map(str::trim) {
        let (unit, class) = part.split_once('=').unwrap_or(("default", part));
        let (unit, class) = (unit.trim(), class.trim());
        if !crate::config::is_class_name(class) {
            return Err(format!(
                "{class:?} is not a storage class (like STANDARD_IA or DEEP_ARCHIVE: capital letters, digits and _)"
            ));
        }
        if unit == "default" {
            classes.default = Some(class.to_owned());
            continue;
        }
        let mut chars = unit.chars();
        let timeframe = match (chars.next(), chars.next()) {
            (Some(c), None) => Timeframe::ALL.into_iter().find(|t| t.unit() == c),
            _ => None,
        }
        .ok_or_else(|| format!("{unit:?} is not a unit (y, q, m, w, d, h, M, s) or `default`"))?;
        if preserve.count(timeframe) > 0 {
            classes.by_timeframe.insert(timeframe, class.to_owned());
        }
    }
    Ok(classes)
}

/// Object lock of a remote's new backups (`object_lock:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockSettings {
    /// Governance (lifted by those allowed to bypass it) or compliance (by nobody).
    pub mode: LockMode,
    /// A margin added to every lock.
    pub extra: SignedDuration,
}

impl LockSettings {
    /// The lock a backup kept until `keep_until` should have: that instant plus the margin,
    /// rounded up to a whole second (S3 stores retention dates in seconds).
    #[must_use]
    pub fn lock_for(&self, keep_until: Timestamp) -> ObjectLock {
        let until = keep_until.checked_add(self.extra).unwrap_or(Timestamp::MAX);
        let second = until.as_second() + i64::from(until.subsec_nanosecond() > 0);
        ObjectLock {
            mode: self.mode,
            retain_until: Timestamp::from_second(second).unwrap_or(until),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes(map: &[(Timeframe, &str)], default: Option<&str>) -> StorageClasses {
        StorageClasses {
            by_timeframe: map.iter().map(|(t, c)| (*t, (*c).to_owned())).collect(),
            default: default.map(str::to_owned),
            min_days: BTreeMap::new(),
        }
    }

    /// The class of a backup kept for `kept_for` that stays `days` days.
    fn check(classes: &StorageClasses, kept_for: &[Timeframe], days: i64, expected: &str) {
        let now: Timestamp = "2026-06-01T00:00:00Z".parse().unwrap();
        let until = now
            .checked_add(SignedDuration::from_hours(days * 24))
            .unwrap();
        assert_eq!(
            classes.choose(kept_for.iter().copied(), until, now),
            expected,
            "{kept_for:?} for {days} days"
        );
    }

    #[test]
    fn the_longest_timeframe_whose_class_fits() {
        use Timeframe::{Days, Hours, Months, Quarters, Years};
        let tiered = classes(
            &[
                (Years, "DEEP_ARCHIVE"),
                (Quarters, "GLACIER"),
                (Months, "GLACIER_IR"),
            ],
            Some("STANDARD_IA"),
        );
        check(&tiered, &[Years, Months], 400, "DEEP_ARCHIVE");
        check(&tiered, &[Years], 180, "DEEP_ARCHIVE");
        check(&tiered, &[Years], 179, "GLACIER");
        check(&tiered, &[Years], 89, "STANDARD_IA");
        check(&tiered, &[Years], 29, "STANDARD");
        // Kept for a timeframe the map does not name: the next shorter one's class.
        check(&tiered, &[Days], 100, "STANDARD_IA");
        check(
            &classes(&[(Hours, "ONEZONE_IA")], None),
            &[Days],
            100,
            "ONEZONE_IA",
        );
        // Kept for no timeframe (most recent, send ancestor): the default.
        check(&tiered, &[], 400, "STANDARD_IA");
        check(&tiered, &[], 3, "STANDARD");
        // A shorter timeframe's class is never chosen over a longer one that fits.
        check(&tiered, &[Quarters, Months], 95, "GLACIER");
    }

    #[test]
    fn one_class_for_all_still_respects_its_minimum() {
        let one = StorageClasses::one("STANDARD_IA");
        check(&one, &[Timeframe::Years], 30, "STANDARD_IA");
        check(&one, &[Timeframe::Hours], 1, "STANDARD");
        // Classes without a known minimum always fit; min_days overrides what is known.
        check(&StorageClasses::one("COLD"), &[], 0, "COLD");
        let mut custom = StorageClasses::one("COLD");
        custom.min_days.insert("COLD".to_owned(), 60);
        check(&custom, &[], 59, "STANDARD");
        custom.min_days.insert("STANDARD_IA".to_owned(), 0);
        assert_eq!(custom.min_days("STANDARD_IA"), 0);
        assert_eq!(custom.min_days("DEEP_ARCHIVE"), 180);
    }

    #[test]
    fn a_lock_is_keep_until_and_the_margin() {
        let settings = LockSettings {
            mode: LockMode::Compliance,
            extra: SignedDuration::from_hours(24 * 30),
        };
        let lock = settings.lock_for("2026-06-01T00:00:00Z".parse().unwrap());
        assert_eq!(lock.mode, LockMode::Compliance);
        assert_eq!(lock.retain_until.to_string(), "2026-07-01T00:00:00Z");
        assert_eq!(
            settings.lock_for(Timestamp::MAX).retain_until,
            Timestamp::MAX
        );
        let fraction: Timestamp = "2026-06-01T00:00:00.25Z".parse().unwrap();
        assert_eq!(
            settings.lock_for(fraction).retain_until.to_string(),
            "2026-07-01T00:00:01Z"
        );
    }
}

/// A bandwidth limit for all remotes together (`--rate-limit`): the uploads of every run given
/// a clone of it share it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BandwidthLimit(pub(crate) btrfs2s3_s3::RateLimit);

impl BandwidthLimit {
    /// At most `bytes_per_second`, all uploads together.
    #[must_use]
    pub fn new(bytes_per_second: u64) -> BandwidthLimit {
        BandwidthLimit(btrfs2s3_s3::RateLimit::new(bytes_per_second))
    }
}
