//! The object-key codec: all of a backup's metadata lives in its key.
//!
//! ```text
//! <base>.ctim<ctime>.ctid<ctransid>.uuid<uuid>.sndp<send parent>.prnt<parent uuid>.mdvn1.seqn0
//! ```
//!
//! so that a single `ListObjectsV2` pass tells the whole state of a bucket. Encoding produces
//! exactly the keys of the Python tool btrfs2s3 2.1.0, and parsing accepts what it accepts: the
//! last `/`-separated component is split into `.`-suffixes; each suffix is a 4-letter code and
//! a value; unknown codes (`.gz`, `.age`) are ignored, order does not matter, and a value that
//! does not parse counts as missing.

use std::fmt;
use std::fmt::Write as _;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use uuid::Uuid;

/// The metadata version this codec writes and accepts.
const METADATA_VERSION: i128 = 1;

/// Everything a backup's key says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BackupMeta {
    /// The uuid of the snapshot that was sent.
    pub uuid: Uuid,
    /// The uuid of the snapshot's source subvolume (its btrfs parent uuid).
    pub parent_uuid: Uuid,
    /// The snapshot it was sent against (`btrfs send -p`), `None` for a full backup.
    pub send_parent_uuid: Option<Uuid>,
    /// The snapshot's ctransid.
    pub ctransid: i64,
    /// The snapshot's ctime, whole seconds (the key has no sub-second part).
    pub ctime: Timestamp,
}

/// Why a key is not a backup key. The messages are the Python tool's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    /// No `.mdvn` suffix: most likely an object that is not ours.
    MissingVersion,
    /// A metadata version other than 1.
    UnsupportedVersion,
    /// A sequence number other than 0 (or none).
    UnsupportedSequence,
    /// One of ctim, ctid, uuid, sndp, prnt is missing or does not parse.
    Incomplete,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyError::MissingVersion => "backup name metadata version missing (not a backup?)",
            KeyError::UnsupportedVersion => "unsupported backup name metadata version",
            KeyError::UnsupportedSequence => "unsupported sequence number",
            KeyError::Incomplete => "missing or incomplete parameters for backup name",
        })
    }
}

impl std::error::Error for KeyError {}

impl BackupMeta {
    /// The key suffix encoding this metadata, with ctime in time zone `tz`.
    ///
    /// ```
    /// use btrfs2s3_s3::BackupMeta;
    /// use jiff::tz::TimeZone;
    /// use uuid::Uuid;
    ///
    /// let meta = BackupMeta {
    ///     uuid: Uuid::from_u128(1),
    ///     parent_uuid: Uuid::from_u128(2),
    ///     send_parent_uuid: None,
    ///     ctransid: 81234,
    ///     ctime: "2026-03-08T09:00:00Z".parse()?,
    /// };
    /// let suffix = meta.key_suffix(&TimeZone::get("America/Los_Angeles")?);
    /// assert_eq!(
    ///     suffix,
    ///     ".ctim2026-03-08T01:00:00-08:00.ctid81234\
    ///      .uuid00000000-0000-0000-0000-000000000001\
    ///      .sndp00000000-0000-0000-0000-000000000000\
    ///      .prnt00000000-0000-0000-0000-000000000002.mdvn1.seqn0"
    /// );
    /// assert_eq!(BackupMeta::parse_key(&format!("home{suffix}.zst"))?, meta);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn key_suffix(&self, tz: &TimeZone) -> String {
        self.piece_suffix(tz, 0)
    }

    /// The key suffix of piece `piece` of a backup stored as several objects (`seqn<piece>`;
    /// piece 0 is the one [`BackupMeta::key_suffix`] names).
    #[must_use]
    pub fn piece_suffix(&self, tz: &TimeZone, piece: u32) -> String {
        format!(
            ".ctim{}.ctid{}.uuid{}.sndp{}.prnt{}.mdvn{METADATA_VERSION}.seqn{piece}",
            format_ctime(self.ctime, tz),
            self.ctransid,
            self.uuid.hyphenated(),
            self.send_parent_uuid.unwrap_or(Uuid::nil()).hyphenated(),
            self.parent_uuid.hyphenated(),
        )
    }

    /// The key of this backup for a source whose directory name is `base`.
    #[must_use]
    pub fn key(&self, base: &str, tz: &TimeZone) -> String {
        format!("{base}{}", self.key_suffix(tz))
    }

    /// The base of a key: its last `/`-separated component up to the first `.` (leading dots
    /// aside), which for our keys is the source directory's name.
    ///
    /// ```
    /// use btrfs2s3_s3::BackupMeta;
    ///
    /// assert_eq!(BackupMeta::base_name("backups/home.ctim2026-03-08T01:00:00-08:00.mdvn1"), "home");
    /// assert_eq!(BackupMeta::base_name(".hidden.ctid5"), "hidden");
    /// ```
    #[must_use]
    pub fn base_name(key: &str) -> &str {
        let name = file_name(key).trim_start_matches('.');
        name.split('.').next().unwrap_or(name)
    }

    /// Parses a key (or a path: only its last `/`-separated component counts). Only the
    /// first piece of a backup (`seqn0`) is a backup key, as for the Python tool.
    pub fn parse_key(key: &str) -> Result<BackupMeta, KeyError> {
        match BackupMeta::parse_piece(key)? {
            (meta, 0) => Ok(meta),
            _ => Err(KeyError::UnsupportedSequence),
        }
    }

    /// Parses the key of any piece of a backup: its metadata and its piece number (`seqn`).
    ///
    /// ```
    /// use btrfs2s3_s3::BackupMeta;
    /// use jiff::tz::TimeZone;
    /// use uuid::Uuid;
    ///
    /// let meta = BackupMeta {
    ///     uuid: Uuid::from_u128(1),
    ///     parent_uuid: Uuid::from_u128(2),
    ///     send_parent_uuid: None,
    ///     ctransid: 81234,
    ///     ctime: "2026-03-08T09:00:00Z".parse()?,
    /// };
    /// let key = format!("home{}", meta.piece_suffix(&TimeZone::UTC, 3));
    /// assert_eq!(BackupMeta::parse_piece(&key)?, (meta, 3));
    /// assert!(BackupMeta::parse_key(&key).is_err(), "not the first piece");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn parse_piece(key: &str) -> Result<(BackupMeta, u32), KeyError> {
        let mut uuid = None;
        let mut parent_uuid = None;
        let mut send_parent_uuid = None;
        let mut ctransid = None;
        let mut ctime = None;
        let mut version = None;
        let mut sequence = None;
        for suffix in suffixes(file_name(key)) {
            // `suffix` is ".cccc<value>": the code is the 4 characters after the dot.
            let mut chars = suffix.char_indices().skip(1);
            let Some(value_start) = chars
                .nth(4)
                .map(|(i, _)| i)
                .or_else(|| (suffix.chars().count() == 5).then_some(suffix.len()))
            else {
                continue;
            };
            let (code, value) = (&suffix[1..value_start], &suffix[value_start..]);
            // As in Python, a value that does not parse leaves an earlier good one in place.
            match code {
                "ctim" => ctime = parse_ctime(value).or(ctime),
                "ctid" => {
                    ctransid = python_int(value)
                        .and_then(|n| i64::try_from(n).ok())
                        .or(ctransid);
                }
                "uuid" => uuid = python_uuid(value).or(uuid),
                "sndp" => send_parent_uuid = python_uuid(value).or(send_parent_uuid),
                "prnt" => parent_uuid = python_uuid(value).or(parent_uuid),
                "mdvn" => version = python_int(value).or(version),
                "seqn" => sequence = python_int(value).or(sequence),
                _ => {}
            }
        }
        match version {
            None => return Err(KeyError::MissingVersion),
            Some(METADATA_VERSION) => {}
            Some(_) => return Err(KeyError::UnsupportedVersion),
        }
        let piece = sequence
            .and_then(|n| u32::try_from(n).ok())
            .ok_or(KeyError::UnsupportedSequence)?;
        match (uuid, parent_uuid, ctransid, ctime, send_parent_uuid) {
            (Some(uuid), Some(parent_uuid), Some(ctransid), Some(ctime), Some(send_parent)) => {
                Ok((
                    BackupMeta {
                        uuid,
                        parent_uuid,
                        send_parent_uuid: (!send_parent.is_nil()).then_some(send_parent),
                        ctransid,
                        ctime,
                    },
                    piece,
                ))
            }
            _ => Err(KeyError::Incomplete),
        }
    }
}

/// A key as a listing gave it: as it is, or, when the server applied `EncodingType=url`,
/// decoded (`%XX` bytes, `+` for a space, as form encoding has it and as boto3 decodes).
/// A malformed escape is kept as it is; bytes that are not UTF-8 are replaced (such a key
/// cannot parse as a backup, and is never deleted).
///
/// ```
/// use btrfs2s3_s3::decode_key;
///
/// assert_eq!(decode_key("a%1Bb+c%2Bd", true), "a\u{1b}b c+d");
/// assert_eq!(decode_key("a%1Bb+c", false), "a%1Bb+c");
/// ```
#[must_use]
pub fn decode_key(key: &str, encoded: bool) -> String {
    if !encoded {
        return key.to_owned();
    }
    let bytes = key.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(high), Some(low)) => {
                    decoded.push(u8::try_from(high * 16 + low).unwrap_or(b'?'));
                    i += 3;
                    continue;
                }
                _ => decoded.push(b'%'),
            },
            b'+' => decoded.push(b' '),
            byte => decoded.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

/// Formats an instant as ISO 8601 with seconds and the UTC offset of `tz` at that instant,
/// the way Python's `isoformat(timespec="seconds")` does: `2026-03-08T01:00:00-08:00`,
/// `+00:00` for UTC (never `Z`), sub-seconds floored. Used for keys and snapshot names.
#[must_use]
pub fn format_ctime(instant: Timestamp, tz: &TimeZone) -> String {
    let offset = tz.to_offset(instant);
    let local = offset.to_datetime(instant);
    let seconds = offset.seconds();
    let sign = if seconds < 0 { '-' } else { '+' };
    let seconds = seconds.unsigned_abs();
    let (hh, mm, ss) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    let Ok(year) = u16::try_from(local.year()) else {
        // Years before 1 (jiff goes back to -9999): the general formatter.
        let mut text = format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{sign}{hh:02}:{mm:02}",
            local.year(),
            local.month(),
            local.day(),
            local.hour(),
            local.minute(),
            local.second(),
        );
        if ss != 0 {
            let _ = write!(text, ":{ss:02}");
        }
        return text;
    };
    // Digit by digit: planning formats this for every snapshot and backup, and the general
    // formatter was a sixth of the time of planning (measured by `simulate`).
    let mut text = String::with_capacity(28);
    let digits = |text: &mut String, value: u32, width: u32| {
        for place in (0..width).rev() {
            let digit = value / 10u32.pow(place) % 10;
            text.push(char::from(b'0' + u8::try_from(digit).unwrap_or(0)));
        }
    };
    digits(&mut text, u32::from(year), 4);
    for (separator, value) in [
        ('-', local.month().unsigned_abs()),
        ('-', local.day().unsigned_abs()),
        ('T', local.hour().unsigned_abs()),
        (':', local.minute().unsigned_abs()),
        (':', local.second().unsigned_abs()),
    ] {
        text.push(separator);
        digits(&mut text, u32::from(value), 2);
    }
    text.push(sign);
    digits(&mut text, hh, 2);
    text.push(':');
    digits(&mut text, mm, 2);
    if ss != 0 {
        text.push(':');
        digits(&mut text, ss, 2);
    }
    text
}

/// The last component of a path, as Python's `PurePath(key).name`: empty components and
/// `.` components do not count.
fn file_name(key: &str) -> &str {
    key.split('/')
        .rfind(|part| !part.is_empty() && *part != ".")
        .unwrap_or("")
}

/// Python's `PurePath.suffixes`: nothing when the name ends in a dot; otherwise, after
/// stripping leading dots, every `.`-separated part after the first, each with its dot.
fn suffixes(name: &str) -> impl Iterator<Item = &str> {
    let name = if name.ends_with('.') {
        ""
    } else {
        name.trim_start_matches('.')
    };
    let mut starts = name.match_indices('.').map(|(i, _)| i).peekable();
    std::iter::from_fn(move || {
        let start = starts.next()?;
        let end = starts.peek().copied().unwrap_or(name.len());
        Some(&name[start..end])
    })
}

/// Python's `int(text, 10)`, for values that fit in an `i128`.
fn python_int(text: &str) -> Option<i128> {
    let (negative, magnitude) = python_int_parts(text, 10)?;
    let value = i128::try_from(magnitude).ok()?;
    Some(if negative { -value } else { value })
}

/// Python's `int(text, radix)` for radix 10 and 16, as a sign and a magnitude: surrounding
/// whitespace, a sign, an optional `0x` prefix (radix 16), digits with single underscores
/// between them.
fn python_int_parts(text: &str, radix: u32) -> Option<(bool, u128)> {
    let text = text.trim();
    let (negative, mut digits) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if radix == 16
        && let Some(rest) = digits
            .strip_prefix("0x")
            .or_else(|| digits.strip_prefix("0X"))
    {
        // After a prefix, Python also allows one underscore before the first digit.
        digits = rest.strip_prefix('_').unwrap_or(rest);
    }
    if digits.is_empty()
        || digits.starts_with('_')
        || digits.ends_with('_')
        || digits.contains("__")
    {
        return None;
    }
    let mut value: u128 = 0;
    for c in digits.chars().filter(|c| *c != '_') {
        let digit = c.to_digit(radix)?;
        value = value
            .checked_mul(u128::from(radix))?
            .checked_add(u128::from(digit))?;
    }
    Some((negative, value))
}

/// Python's `uuid.UUID(text)`: drops `urn:` and `uuid:`, surrounding braces and every hyphen,
/// then needs 32 characters that `int(_, 16)` accepts as a value in 0..2^128.
fn python_uuid(text: &str) -> Option<Uuid> {
    let text = text.replace("urn:", "").replace("uuid:", "");
    let hex: String = text
        .trim_matches(|c| c == '{' || c == '}')
        .chars()
        .filter(|c| *c != '-')
        .collect();
    if hex.chars().count() != 32 {
        return None;
    }
    match python_int_parts(&hex, 16)? {
        (true, value) if value != 0 => None,
        (_, value) => Some(Uuid::from_u128(value)),
    }
}

/// The ISO 8601 forms that `arrow.get(text)` accepts and that can occur in a key suffix
/// (no `/`, no `.`): a date `YYYY-M-D`, `YYYYMMDD`, `YYYY-DDDD`, `YYYYDDDD`, `YYYY-MM` or
/// `YYYY`; optionally `T` or a space and a time `HH[:mm[:ss]]` or `HH[mm[ss]]` with an optional
/// `,fraction`; after a time, optionally `Z` or an offset `±HH[[:]MM]`. No offset means UTC.
/// ISO week dates (`2026-W10-1`) are not accepted. Returns the instant floored to the second.
fn parse_ctime(text: &str) -> Option<Timestamp> {
    let has_t = text.contains('T');
    let has_space = text.contains(' ');
    if has_t && has_space {
        return None;
    }
    let (date_text, time_text) = match text.find(['T', ' ']) {
        Some(i) => (&text[..i], Some(&text[i + 1..])),
        None => (text, None),
    };
    let date = parse_date(date_text)?;
    let ((hour, minute, second), offset_seconds) = match time_text {
        None => ((0, 0, 0), 0),
        Some(time_text) => parse_time_and_offset(time_text)?,
    };
    // "24:00:00" is midnight at the end of the day.
    let (date, hour) = if hour == 24 {
        (date.tomorrow().ok()?, 0)
    } else {
        (date, hour)
    };
    let time = jiff::civil::Time::new(hour, minute, second, 0).ok()?;
    let offset = jiff::tz::Offset::from_seconds(offset_seconds).ok()?;
    offset.to_timestamp(date.to_datetime(time)).ok()
}

fn all_digits(text: &str, len: std::ops::RangeInclusive<usize>) -> Option<i32> {
    if !len.contains(&text.len()) || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn parse_date(text: &str) -> Option<jiff::civil::Date> {
    // Digits and dashes only; the byte slicing below needs ASCII.
    if !text.is_ascii() {
        return None;
    }
    let parts: Vec<&str> = text.split('-').collect();
    let (year, month, day) = match parts.as_slice() {
        [year, month, day] => (
            all_digits(year, 4..=4)?,
            all_digits(month, 1..=2)?,
            all_digits(day, 1..=2)?,
        ),
        [year, rest] if rest.len() == 3 => {
            return ordinal_date(all_digits(year, 4..=4)?, all_digits(rest, 3..=3)?);
        }
        [year, month] => (all_digits(year, 4..=4)?, all_digits(month, 2..=2)?, 1),
        [compact] => match compact.len() {
            8 => (
                all_digits(&compact[..4], 4..=4)?,
                all_digits(&compact[4..6], 2..=2)?,
                all_digits(&compact[6..], 2..=2)?,
            ),
            7 => {
                return ordinal_date(
                    all_digits(&compact[..4], 4..=4)?,
                    all_digits(&compact[4..], 3..=3)?,
                );
            }
            4 => (all_digits(compact, 4..=4)?, 1, 1),
            _ => return None,
        },
        _ => return None,
    };
    jiff::civil::Date::new(
        i16::try_from(year).ok()?,
        i8::try_from(month).ok()?,
        i8::try_from(day).ok()?,
    )
    .ok()
    .filter(|date| date.year() >= 1)
}

fn ordinal_date(year: i32, day_of_year: i32) -> Option<jiff::civil::Date> {
    let year = i16::try_from(year).ok().filter(|year| *year >= 1)?;
    jiff::civil::Date::new(year, 1, 1)
        .ok()?
        .with()
        .day_of_year(i16::try_from(day_of_year).ok()?)
        .build()
        .ok()
}

/// `HH[:mm[:ss]][,fraction]` or `HH[mm[ss]]`, then optionally `Z` or `±HH[[:]MM]`.
/// Returns the hour (24 only for `24:00:00`), minute and second, and the offset in seconds.
fn parse_time_and_offset(text: &str) -> Option<((i8, i8, i8), i32)> {
    let (clock, zone) = match text.find(['+', '-', 'Z', 'z']) {
        Some(i) => (&text[..i], Some(&text[i..])),
        None => (text, None),
    };
    let (clock, fraction) = match clock.split_once(',') {
        Some((clock, fraction)) => (clock, Some(fraction)),
        None => (clock, None),
    };
    if fraction.is_some_and(|f| f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit())) {
        return None;
    }
    let fields: Vec<&str> = if clock.contains(':') {
        clock.split(':').collect()
    } else if clock.len() % 2 == 0 {
        (0..clock.len())
            .step_by(2)
            .map(|i| clock.get(i..i + 2))
            .collect::<Option<_>>()?
    } else {
        return None;
    };
    if !(1..=3).contains(&fields.len()) || (fraction.is_some() && fields.len() != 3) {
        return None;
    }
    let mut values = [0i8; 3];
    for (value, field) in values.iter_mut().zip(&fields) {
        *value = i8::try_from(all_digits(field, 2..=2)?).ok()?;
    }
    let [hour, minute, second] = values;
    let valid =
        (hour < 24 || (hour == 24 && minute == 0 && second == 0)) && minute < 60 && second < 60;
    if !valid {
        return None;
    }
    let offset = match zone {
        None | Some("Z" | "z") => 0,
        Some(zone) => parse_offset(zone)?,
    };
    Some(((hour, minute, second), offset))
}

/// `±HH`, `±HHMM` or `±HH:MM`, strictly less than 24 hours. Also `±HH:MM:SS`, which arrow
/// rejects although Python writes it for historic offsets (local mean time): accepting it
/// lets every key we write parse again.
fn parse_offset(zone: &str) -> Option<i32> {
    // Only digits, signs and colons belong here; the byte slicing below needs ASCII (a key
    // from the bucket may hold anything).
    if !zone.is_ascii() {
        return None;
    }
    let (sign, rest) = match zone.as_bytes().first()? {
        b'+' => (1, &zone[1..]),
        b'-' => (-1, &zone[1..]),
        _ => return None,
    };
    let (hours, minutes) = match rest.len() {
        2 => (rest, "00"),
        4 => (&rest[..2], &rest[2..]),
        5 | 8 if rest.as_bytes()[2] == b':' => (&rest[..2], &rest[3..]),
        _ => return None,
    };
    let (minutes, extra_seconds) = match minutes.split_once(':') {
        Some((minutes, seconds)) => (minutes, all_digits(seconds, 2..=2).filter(|s| *s < 60)?),
        None => (minutes, 0),
    };
    let seconds =
        all_digits(hours, 2..=2)? * 3600 + all_digits(minutes, 2..=2)? * 60 + extra_seconds;
    (seconds < 86_400).then_some(sign * seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_keys_are_decoded_only_when_encoded() {
        for (listed, decoded) in [
            ("plain", "plain"),
            ("a%2Fb%3F", "a/b?"),
            ("space+and%2Bplus", "space and+plus"),
            ("%1B%5B2J", "\u{1b}[2J"),
            ("%C3%BC", "\u{fc}"),
            ("bad%zzescape", "bad%zzescape"),
            ("end%", "end%"),
            ("end%4", "end%4"),
            ("%FF", "\u{fffd}"),
        ] {
            assert_eq!(decode_key(listed, true), decoded, "{listed}");
            assert_eq!(decode_key(listed, false), listed);
        }
    }
    use proptest::prelude::*;

    const U: &str = "ec99108d-db5b-4fab-8f4d-3e27dda1494c";
    const P: &str = "8201e2bd-73ab-4876-b734-d7c1c7fde805";
    const S: &str = "830c71c2-cdcc-4929-af45-e678309d6b79";

    /// A valid key with the suffix for `code` replaced by `replacement` (or dropped if empty).
    fn key_with(code: &str, replacement: &str) -> String {
        let suffixes = [
            ("ctim", "ctim2030-10-13T17:23:02+11:00".to_owned()),
            ("ctid", "ctid42".to_owned()),
            ("uuid", format!("uuid{U}")),
            ("sndp", format!("sndp{S}")),
            ("prnt", format!("prnt{P}")),
            ("mdvn", "mdvn1".to_owned()),
            ("seqn", "seqn0".to_owned()),
        ];
        let mut key = "home".to_owned();
        for (c, suffix) in suffixes {
            let suffix = if c == code {
                replacement.to_owned()
            } else {
                suffix
            };
            if !suffix.is_empty() {
                key.push('.');
                key.push_str(&suffix);
            }
        }
        key
    }

    fn check(key: &str, expected: Result<(i64, i64), KeyError>) {
        let actual = BackupMeta::parse_key(key).map(|meta| (meta.ctime.as_second(), meta.ctransid));
        assert_eq!(actual, expected, "{key}");
    }

    #[test]
    fn values_parse_like_python() {
        let ok = Ok((1_918_102_982, 42));
        // Python's int(): whitespace, signs, underscores between digits, leading zeros.
        check(&key_with("ctid", "ctid 42 "), ok);
        check(&key_with("ctid", "ctid+42"), ok);
        check(&key_with("ctid", "ctid0_042"), ok);
        check(&key_with("ctid", "ctid-42"), Ok((1_918_102_982, -42)));
        check(&key_with("ctid", "ctid4__2"), Err(KeyError::Incomplete));
        check(&key_with("ctid", "ctid42_"), Err(KeyError::Incomplete));
        check(
            &key_with("ctid", "ctid99999999999999999999"),
            Err(KeyError::Incomplete),
        );
        // Python's UUID(): braces, urn prefix, no hyphens, upper case.
        check(&key_with("uuid", &format!("uuid{{{U}}}")), ok);
        check(&key_with("uuid", &format!("uuidurn:uuid:{U}")), ok);
        check(
            &key_with(
                "uuid",
                &format!("uuid{}", U.replace('-', "").to_uppercase()),
            ),
            ok,
        );
        check(
            &key_with("uuid", &format!("uuid{}", &U[1..])),
            Err(KeyError::Incomplete),
        );
        // ISO 8601 forms that arrow accepts; no offset means UTC.
        check(&key_with("ctim", "ctim2030-10-13T06:23:02Z"), ok);
        check(&key_with("ctim", "ctim2030-10-13T06:23:02+00"), ok);
        check(&key_with("ctim", "ctim20301013T172302+1100"), ok);
        check(&key_with("ctim", "ctim2030-10-13 06:23:02"), ok);
        check(&key_with("ctim", "ctim2030-10-13T06:23:02,999Z"), ok);
        check(&key_with("ctim", "ctim2030-10-13"), Ok((1_918_080_000, 42)));
        check(&key_with("ctim", "ctim2030-286"), Ok((1_918_080_000, 42)));
        check(
            &key_with("ctim", "ctim2030-10-12T24:00:00Z"),
            Ok((1_918_080_000, 42)),
        );
        check(
            &key_with("ctim", "ctim2030-10-13T25:00:00Z"),
            Err(KeyError::Incomplete),
        );
        check(
            &key_with("ctim", "ctim2030-13-13"),
            Err(KeyError::Incomplete),
        );
        check(
            &key_with("ctim", "ctim2030-10-13T06:23:02+24:00"),
            Err(KeyError::Incomplete),
        );
        check(
            &key_with("ctim", "ctim2030-10-13T06 23:02"),
            Err(KeyError::Incomplete),
        );
        // A bad value leaves an earlier good one in place.
        check(&format!("{}.ctidzzz", key_with("ctid", "ctid42")), ok);
    }

    #[test]
    fn errors_in_python_order() {
        check(&key_with("mdvn", ""), Err(KeyError::MissingVersion));
        check(
            &key_with("mdvn", "mdvn2"),
            Err(KeyError::UnsupportedVersion),
        );
        check(&key_with("seqn", ""), Err(KeyError::UnsupportedSequence));
        check(
            &key_with("seqn", "seqn1"),
            Err(KeyError::UnsupportedSequence),
        );
        check(&key_with("prnt", ""), Err(KeyError::Incomplete));
        // A missing version wins over everything else.
        check("home.ctid1", Err(KeyError::MissingVersion));
        check("", Err(KeyError::MissingVersion));
    }

    #[test]
    fn only_the_last_path_component_counts() {
        let key = key_with("ctid", "ctid42");
        check(&format!("backups/host/{key}"), Ok((1_918_102_982, 42)));
        check(&format!("{key}/"), Ok((1_918_102_982, 42)));
        check(&format!("{key}/."), Ok((1_918_102_982, 42)));
        check(&format!("{key}/other"), Err(KeyError::MissingVersion));
        // A trailing dot means no suffixes at all (Python's PurePath.suffixes).
        check(&format!("{key}."), Err(KeyError::MissingVersion));
        // Leading dots belong to the base name.
        check(&format!("..{key}"), Ok((1_918_102_982, 42)));
        // Unknown suffixes are ignored, wherever they are.
        check(&format!("{key}.zst.age"), Ok((1_918_102_982, 42)));
        check(
            &key.replacen("home", "home.tar.x", 1),
            Ok((1_918_102_982, 42)),
        );
    }

    #[test]
    fn offsets_with_seconds_are_written_like_python() {
        // Amsterdam was at +00:19:32 in the winter of 1920.
        let tz = TimeZone::get("Europe/Amsterdam").unwrap();
        let instant: Timestamp = "1920-01-15T12:00:00Z".parse().unwrap();
        assert_eq!(format_ctime(instant, &tz), "1920-01-15T12:19:32+00:19:32");
        let meta = BackupMeta {
            uuid: Uuid::from_u128(1),
            parent_uuid: Uuid::from_u128(2),
            send_parent_uuid: None,
            ctransid: 1,
            ctime: instant,
        };
        assert_eq!(BackupMeta::parse_key(&meta.key("old", &tz)), Ok(meta));
        let instant: Timestamp = "2026-06-01T12:00:00.999Z".parse().unwrap();
        assert_eq!(format_ctime(instant, &tz), "2026-06-01T14:00:00+02:00");
        assert_eq!(
            format_ctime(instant, &TimeZone::UTC),
            "2026-06-01T12:00:00+00:00"
        );
    }

    fn arb_uuid() -> impl Strategy<Value = Uuid> {
        any::<u128>().prop_map(Uuid::from_u128)
    }

    #[test]
    fn non_ascii_where_digits_belong_is_no_backup_and_no_panic() {
        // Found by the fuzz test: byte slicing inside a multi-byte character.
        for ctime in [
            "2026-03-08T01:00:00+1é1",
            "2026-03-08T01:00:00-é:00",
            "2é2603-08T01:00:00+01:00",
            "20260é08T01:00:00+01:00",
            "2026é08T01:00:00Z",
        ] {
            let key = format!(
                "home.ctim{ctime}.ctid1.uuid{U}.sndp{NIL}.prnt{U}.mdvn1.seqn0",
                U = "00000000-0000-0000-0000-000000000001",
                NIL = "00000000-0000-0000-0000-000000000000"
            );
            assert_eq!(
                BackupMeta::parse_key(&key),
                Err(KeyError::Incomplete),
                "{key}"
            );
        }
    }

    proptest! {
        /// The digit-by-digit formatting says what the general formatter says.
        #[test]
        fn ctimes_format_as_the_general_formatter_does(
            second in -62_000_000_000i64..250_000_000_000,
            zone in proptest::sample::select(&["UTC", "Europe/Berlin", "America/St_Johns", "Asia/Kathmandu", "Africa/Monrovia"][..]),
        ) {
            let tz = TimeZone::get(zone).unwrap();
            let instant = Timestamp::from_second(second).unwrap();
            let offset = tz.to_offset(instant);
            let local = offset.to_datetime(instant);
            let seconds = offset.seconds();
            let sign = if seconds < 0 { '-' } else { '+' };
            let seconds = seconds.unsigned_abs();
            let mut expected = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{sign}{:02}:{:02}",
                local.year(), local.month(), local.day(), local.hour(), local.minute(), local.second(),
                seconds / 3600, seconds / 60 % 60,
            );
            if !seconds.is_multiple_of(60) {
                let _ = write!(expected, ":{:02}", seconds % 60);
            }
            prop_assert_eq!(format_ctime(instant, &tz), expected);
        }

        #[test]
        fn encode_then_parse_is_the_identity(
            uuid in arb_uuid(),
            parent_uuid in arb_uuid(),
            send_parent_uuid in proptest::option::of(arb_uuid().prop_filter("not nil", |u| !u.is_nil())),
            ctransid in any::<i64>(),
            // Years 1900 to 2200.
            ctime in -2_208_988_800i64..7_258_118_400,
            zone in proptest::sample::select(jiff::tz::db().available().map(|name| name.to_string()).collect::<Vec<_>>()),
            base in "[a-z_-]{1,12}",
        ) {
            let tz = TimeZone::get(&zone).unwrap();
            let meta = BackupMeta {
                uuid,
                parent_uuid,
                send_parent_uuid,
                ctransid,
                ctime: Timestamp::from_second(ctime).unwrap(),
            };
            prop_assert_eq!(BackupMeta::parse_key(&meta.key(&base, &tz)), Ok(meta));
        }

        #[test]
        fn pieces_encode_and_parse_and_only_the_first_is_a_backup_key(
            uuid in arb_uuid(),
            parent_uuid in arb_uuid(),
            ctransid in any::<i64>(),
            ctime in 0i64..4_102_444_800,
            piece in any::<u32>(),
        ) {
            let meta = BackupMeta {
                uuid,
                parent_uuid,
                send_parent_uuid: None,
                ctransid,
                ctime: Timestamp::from_second(ctime).unwrap(),
            };
            let key = format!("home{}", meta.piece_suffix(&TimeZone::UTC, piece));
            prop_assert_eq!(BackupMeta::parse_piece(&key), Ok((meta, piece)));
            prop_assert_eq!(
                BackupMeta::parse_key(&key),
                if piece == 0 { Ok(meta) } else { Err(KeyError::UnsupportedSequence) }
            );
        }

        #[test]
        fn parsing_never_panics(key in "\\PC{0,80}", tail in "(\\.[a-z]{4}[-0-9a-fT:+ ]{0,40}){0,9}") {
            let _ = BackupMeta::parse_key(&key);
            let _ = BackupMeta::parse_key(&format!("{key}{tail}"));
        }
    }
}
