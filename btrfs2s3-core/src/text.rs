//! Text from places nobody vouches for — object keys (anyone who can write to the bucket
//! chooses them), storage classes and error messages from the server, names from streams,
//! paths — made safe to print: a planted key must not rewrite the terminal or forge a line of
//! a log.

use std::borrow::Cow;
use std::ffi::OsStr;
use std::fmt::Write as _;

/// Whether `c` must not reach a terminal as it is: control characters (C0, DEL, C1), and
/// the invisible marks that reorder text (bidirectional overrides and isolates).
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// `text` with every unsafe character escaped (`\x1b`, `\u{202e}`) and backslashes doubled
/// (so an escape in the output always means an escaped character). Unchanged, and not
/// copied, when there is nothing to escape.
///
/// ```
/// use btrfs2s3_core::text::escape;
///
/// assert_eq!(escape("home.ctim2026"), "home.ctim2026");
/// assert_eq!(escape("evil\x1b[2Jkey\nFORGED LINE"), "evil\\x1b[2Jkey\\x0aFORGED LINE");
/// assert_eq!(escape("a\\b"), "a\\\\b");
/// ```
#[must_use]
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(|c| is_unsafe(c) || c == '\\') {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            c if is_unsafe(c) && u32::from(c) < 0x100 => {
                let _ = write!(escaped, "\\x{:02x}", u32::from(c));
            }
            c if is_unsafe(c) => {
                let _ = write!(escaped, "\\u{{{:x}}}", u32::from(c));
            }
            c => escaped.push(c),
        }
    }
    Cow::Owned(escaped)
}

/// [`escape`] for a path or a file name, whose bytes need not be UTF-8: invalid bytes are
/// escaped as `\xNN`.
#[must_use]
pub fn escape_os(text: &OsStr) -> Cow<'_, str> {
    if let Some(text) = text.to_str() {
        return escape(text);
    }
    let mut escaped = String::new();
    for chunk in text.as_encoded_bytes().utf8_chunks() {
        escaped.push_str(&escape(chunk.valid()));
        for byte in chunk.invalid() {
            let _ = write!(escaped, "\\x{byte:02x}");
        }
    }
    Cow::Owned(escaped)
}

/// Whether a name from an untrusted place (a source name from a key, a name in a stream) can
/// be used as one component of a path: not empty, not `.` or `..`, no `/` and no NUL.
///
/// ```
/// use btrfs2s3_core::text::is_safe_component;
///
/// assert!(is_safe_component("home"));
/// for bad in ["", ".", "..", "../etc", "a/b", "a\0b"] {
///     assert!(!is_safe_component(bad), "{bad:?}");
/// }
/// ```
#[must_use]
pub fn is_safe_component(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
}

/// A duration in its two largest units: `1d 2h`, `12h`, `5m 30s`, `0s`.
#[must_use]
pub fn human_duration(seconds: u64) -> String {
    let units = [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)];
    let parts: Vec<String> = units
        .iter()
        .scan(seconds, |left, (unit, size)| {
            let n = *left / size;
            *left %= size;
            Some((n, unit))
        })
        .skip_while(|(n, _)| *n == 0)
        .take(2)
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect();
    if parts.is_empty() {
        "0s".to_owned()
    } else {
        parts.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn every_unsafe_character_is_escaped() {
        for (raw, shown) in [
            ("plain key.ctim+01:00", "plain key.ctim+01:00"),
            ("\x07bell", "\\x07bell"),
            ("tab\there", "tab\\x09here"),
            ("del\x7f", "del\\x7f"),
            ("c1\u{9b}31m", "c1\\x9b31m"),
            ("right\u{202e}left", "right\\u{202e}left"),
            ("ünïcödé", "ünïcödé"),
        ] {
            assert_eq!(escape(raw), shown, "{raw:?}");
        }
        let invalid = OsStr::from_bytes(b"name\xff\x1b");
        assert_eq!(escape_os(invalid), "name\\xff\\x1b");
    }

    proptest::proptest! {
        /// Nothing escaped reaches the output: no control character, and the escaping can be
        /// told apart from the text (it is one-to-one).
        #[test]
        fn escaped_text_has_no_control_characters(a in ".*", b in ".*") {
            let (ea, eb) = (escape(&a), escape(&b));
            proptest::prop_assert!(!ea.chars().any(is_unsafe));
            if a != b {
                proptest::prop_assert_ne!(ea, eb);
            }
        }
    }

    #[test]
    fn durations_in_two_units() {
        assert_eq!(human_duration(0), "0s");
        assert_eq!(human_duration(59), "59s");
        assert_eq!(human_duration(3600), "1h");
        assert_eq!(human_duration(86_400 + 7200 + 60), "1d 2h");
        assert_eq!(human_duration(86_400 + 60), "1d");
        assert_eq!(human_duration(330), "5m 30s");
    }
}
