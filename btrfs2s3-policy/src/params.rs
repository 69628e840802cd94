//! The preservation parameters (`1y 3m 30d 24h`) and their grammar.

use std::fmt;
use std::str::FromStr;

/// A kind of calendar interval: years, quarters, months, weeks, days, hours, minutes or seconds.
///
/// Timeframes are ordered from the longest to the shortest, which is also the order in which
/// they appear in the policy grammar and the order in which they shape the backup tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum Timeframe {
    /// Calendar years, starting on January 1st at midnight.
    Years,
    /// Quarters, starting on January, April, July or October 1st at midnight.
    Quarters,
    /// Calendar months, starting on the 1st at midnight.
    Months,
    /// ISO weeks, starting on Monday at midnight.
    Weeks,
    /// Days, from midnight to midnight (23 or 25 hours long on DST changes).
    Days,
    /// Wall-clock hours.
    Hours,
    /// Wall-clock minutes.
    Minutes,
    /// Seconds.
    Seconds,
}

impl Timeframe {
    /// All timeframes, longest first.
    pub const ALL: [Timeframe; 8] = [
        Timeframe::Years,
        Timeframe::Quarters,
        Timeframe::Months,
        Timeframe::Weeks,
        Timeframe::Days,
        Timeframe::Hours,
        Timeframe::Minutes,
        Timeframe::Seconds,
    ];

    /// The unit letter of this timeframe in the policy grammar (`y q m w d h M s`).
    #[must_use]
    pub const fn unit(self) -> char {
        match self {
            Timeframe::Years => 'y',
            Timeframe::Quarters => 'q',
            Timeframe::Months => 'm',
            Timeframe::Weeks => 'w',
            Timeframe::Days => 'd',
            Timeframe::Hours => 'h',
            Timeframe::Minutes => 'M',
            Timeframe::Seconds => 's',
        }
    }

    /// The adjective used when describing a span of this timeframe ("yearly", "daily", ...).
    #[must_use]
    pub const fn adjective(self) -> &'static str {
        match self {
            Timeframe::Years => "yearly",
            Timeframe::Quarters => "quarterly",
            Timeframe::Months => "monthly",
            Timeframe::Weeks => "weekly",
            Timeframe::Days => "daily",
            Timeframe::Hours => "hourly",
            Timeframe::Minutes => "minutely",
            Timeframe::Seconds => "secondly",
        }
    }

    const fn index(self) -> usize {
        self as usize
    }

    fn from_unit(unit: char) -> Option<Timeframe> {
        Timeframe::ALL.into_iter().find(|tf| tf.unit() == unit)
    }
}

impl fmt::Display for Timeframe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Timeframe::Years => "years",
            Timeframe::Quarters => "quarters",
            Timeframe::Months => "months",
            Timeframe::Weeks => "weeks",
            Timeframe::Days => "days",
            Timeframe::Hours => "hours",
            Timeframe::Minutes => "minutes",
            Timeframe::Seconds => "seconds",
        };
        f.write_str(name)
    }
}

/// How many spans of each timeframe a policy preserves, parsed from strings like `1y 3m 30d 24h`.
///
/// The grammar is `[<N>y] [<N>q] [<N>m] [<N>w] [<N>d] [<N>h] [<N>M] [<N>s]`: each part is
/// optional, the order is fixed, parts are separated by spaces and at least one part is given.
/// A part with a count of zero is allowed and means the same as leaving it out.
///
/// ```
/// use btrfs2s3_policy::{Params, Timeframe};
///
/// let params: Params = "1y 3m 30d".parse()?;
/// assert_eq!(params.count(Timeframe::Months), 3);
/// assert_eq!(params.count(Timeframe::Hours), 0);
/// assert_eq!(params.to_string(), "1y 3m 30d");
/// assert!("1m 1y".parse::<Params>().is_err());
/// # Ok::<(), btrfs2s3_policy::ParamsError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Params {
    // `None` when the part was not written at all, so that `Display` reproduces the input.
    counts: [Option<u32>; 8],
}

impl Params {
    /// Parameters with the given count for each listed timeframe and nothing else.
    ///
    /// ```
    /// use btrfs2s3_policy::{Params, Timeframe};
    /// let params = Params::new([(Timeframe::Years, 1), (Timeframe::Days, 7)]);
    /// assert_eq!(params.to_string(), "1y 7d");
    /// ```
    #[must_use]
    pub fn new(counts: impl IntoIterator<Item = (Timeframe, u32)>) -> Params {
        let mut params = Params::default();
        for (timeframe, count) in counts {
            params.counts[timeframe.index()] = Some(count);
        }
        params
    }

    /// How many of the most recent spans of `timeframe` are preserved (zero when absent).
    #[must_use]
    pub fn count(&self, timeframe: Timeframe) -> u32 {
        self.counts[timeframe.index()].unwrap_or(0)
    }

    /// The timeframes with a non-zero count, longest first. These define the shape of the
    /// backup tree: the first one is the level of full backups.
    pub fn timeframes(&self) -> impl Iterator<Item = Timeframe> + '_ {
        Timeframe::ALL.into_iter().filter(|tf| self.count(*tf) > 0)
    }
}

/// Why a preservation string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamsError {
    /// The string has no parts at all.
    Empty,
    /// A part is not a number followed by a unit letter.
    Malformed {
        /// The offending part.
        part: String,
    },
    /// A part ends in a letter that is not one of `y q m w d h M s`.
    UnknownUnit {
        /// The offending part.
        part: String,
        /// The unknown unit letter(s).
        unit: String,
    },
    /// A part comes after a part of a shorter timeframe, or a timeframe is repeated.
    OutOfOrder {
        /// The offending part.
        part: String,
        /// The part it should have come before.
        previous: String,
    },
    /// A count does not fit in 32 bits.
    Overflow {
        /// The offending part.
        part: String,
    },
}

impl fmt::Display for ParamsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const GRAMMAR: &str = "expected parts like \"1y 3m 30d 24h\" in the order y q m w d h M s";
        match self {
            ParamsError::Empty => write!(f, "empty preservation policy ({GRAMMAR})"),
            ParamsError::Malformed { part } => {
                write!(f, "{part:?} is not a count followed by a unit ({GRAMMAR})")
            }
            ParamsError::UnknownUnit { part, unit } => write!(
                f,
                "{part:?} has unknown unit {unit:?} (units are y=years q=quarters m=months \
                 w=weeks d=days h=hours M=minutes s=seconds)"
            ),
            ParamsError::OutOfOrder { part, previous } => write!(
                f,
                "{part:?} must come before {previous:?} ({GRAMMAR}, each at most once)"
            ),
            ParamsError::Overflow { part } => {
                write!(
                    f,
                    "the count in {part:?} is too large (at most {})",
                    u32::MAX
                )
            }
        }
    }
}

impl std::error::Error for ParamsError {}

impl FromStr for Params {
    type Err = ParamsError;

    /// Parses the policy grammar.
    ///
    /// The Python tool's regular expression lets parts be separated (and surrounded) by up to
    /// one space per part; we accept any run of spaces, which accepts every string the Python
    /// tool accepts except the empty one, which the specification calls an error.
    fn from_str(desc: &str) -> Result<Params, ParamsError> {
        let mut params = Params::default();
        let mut previous: Option<(Timeframe, &str)> = None;
        for part in desc.split(' ').filter(|part| !part.is_empty()) {
            let digits_end =
                part.find(|c: char| !c.is_ascii_digit())
                    .ok_or_else(|| ParamsError::Malformed {
                        part: part.to_owned(),
                    })?;
            let (digits, unit) = part.split_at(digits_end);
            if digits.is_empty() {
                return Err(ParamsError::Malformed {
                    part: part.to_owned(),
                });
            }
            let mut chars = unit.chars();
            let timeframe = match (chars.next().and_then(Timeframe::from_unit), chars.next()) {
                (Some(timeframe), None) => timeframe,
                _ if unit.chars().all(char::is_alphabetic) => {
                    return Err(ParamsError::UnknownUnit {
                        part: part.to_owned(),
                        unit: unit.to_owned(),
                    });
                }
                _ => {
                    return Err(ParamsError::Malformed {
                        part: part.to_owned(),
                    });
                }
            };
            if let Some((previous_timeframe, previous_part)) = previous
                && previous_timeframe >= timeframe
            {
                return Err(ParamsError::OutOfOrder {
                    part: part.to_owned(),
                    previous: previous_part.to_owned(),
                });
            }
            let count = digits.parse::<u32>().map_err(|_| ParamsError::Overflow {
                part: part.to_owned(),
            })?;
            params.counts[timeframe.index()] = Some(count);
            previous = Some((timeframe, part));
        }
        if previous.is_none() {
            return Err(ParamsError::Empty);
        }
        Ok(params)
    }
}

impl fmt::Display for Params {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for timeframe in Timeframe::ALL {
            if let Some(count) = self.counts[timeframe.index()] {
                if !first {
                    f.write_str(" ")?;
                }
                write!(f, "{count}{}", timeframe.unit())?;
                first = false;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check_ok(input: &str, expected: &str) {
        let params: Params = input.parse().unwrap_or_else(|e| panic!("{input:?}: {e}"));
        assert_eq!(params.to_string(), expected, "{input:?}");
    }

    fn check_err(input: &str, expected: &ParamsError) {
        assert_eq!(input.parse::<Params>().as_ref(), Err(expected), "{input:?}");
    }

    #[test]
    fn accepts_the_grammar() {
        for (input, expected) in [
            ("1y", "1y"),
            ("1y 3m 30d 24h", "1y 3m 30d 24h"),
            ("1y 1q 1m 1w 1d 1h 1M 1s", "1y 1q 1m 1w 1d 1h 1M 1s"),
            ("0y 1d", "0y 1d"),
            ("60M 60s", "60M 60s"),
            // The Python tool's regex lets a space follow (or precede) each part.
            (" 1d", "1d"),
            ("1d ", "1d"),
            ("1y  1d", "1y 1d"),
            ("007d", "7d"),
            ("4294967295s", "4294967295s"),
        ] {
            check_ok(input, expected);
        }
    }

    #[test]
    fn rejects_with_a_reason() {
        let part = |s: &str| s.to_owned();
        check_err("", &ParamsError::Empty);
        check_err("   ", &ParamsError::Empty);
        check_err(
            "1m 1y",
            &ParamsError::OutOfOrder {
                part: part("1y"),
                previous: part("1m"),
            },
        );
        check_err(
            "1d 1d",
            &ParamsError::OutOfOrder {
                part: part("1d"),
                previous: part("1d"),
            },
        );
        check_err(
            "3x",
            &ParamsError::UnknownUnit {
                part: part("3x"),
                unit: part("x"),
            },
        );
        check_err(
            "3D",
            &ParamsError::UnknownUnit {
                part: part("3D"),
                unit: part("D"),
            },
        );
        check_err(
            "3yy",
            &ParamsError::UnknownUnit {
                part: part("3yy"),
                unit: part("yy"),
            },
        );
        check_err("-1d", &ParamsError::Malformed { part: part("-1d") });
        check_err("d", &ParamsError::Malformed { part: part("d") });
        check_err("12", &ParamsError::Malformed { part: part("12") });
        check_err("1y3m", &ParamsError::Malformed { part: part("1y3m") });
        check_err("1.5d", &ParamsError::Malformed { part: part("1.5d") });
        check_err("1d\t", &ParamsError::Malformed { part: part("1d\t") });
        check_err(
            "4294967296s",
            &ParamsError::Overflow {
                part: part("4294967296s"),
            },
        );
    }

    #[test]
    fn errors_read_well() {
        let message = "1m 1y".parse::<Params>().unwrap_err().to_string();
        assert!(
            message.contains("\"1y\" must come before \"1m\""),
            "{message}"
        );
        let message = "3x".parse::<Params>().unwrap_err().to_string();
        assert!(message.contains("unknown unit \"x\""), "{message}");
    }

    #[test]
    fn timeframes_skip_zero_counts() {
        let params: Params = "0y 2m 1d".parse().unwrap();
        assert_eq!(
            params.timeframes().collect::<Vec<_>>(),
            [Timeframe::Months, Timeframe::Days]
        );
    }

    fn arb_params() -> impl Strategy<Value = Params> {
        proptest::collection::vec(proptest::option::of(any::<u32>()), 8)
            .prop_filter("at least one part", |counts| {
                counts.iter().any(Option::is_some)
            })
            .prop_map(|counts| {
                let mut params = Params::default();
                params.counts.copy_from_slice(&counts);
                params
            })
    }

    proptest! {
        #[test]
        fn parse_display_round_trip(params in arb_params()) {
            let text = params.to_string();
            let parsed: Params = text.parse().unwrap();
            prop_assert_eq!(parsed, params);
            prop_assert_eq!(parsed.to_string(), text);
        }

        #[test]
        fn parsing_never_panics(text in "[0-9yqmwdhMs x-]{0,24}") {
            let _ = text.parse::<Params>();
        }
    }
}
