//! Colour on a terminal: `+` green, `-` and failures red, warnings yellow. `--color
//! auto|always|never`; `auto` (the default) colours a stream that is a terminal, unless
//! `NO_COLOR` is set (<https://no-color.org>). Text from the bucket or the file system is
//! escaped before it gets here, so the only escape sequences in the output are these.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

/// When to colour (`--color`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum When {
    /// On a terminal, unless `NO_COLOR` is set.
    #[default]
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

static STDOUT: AtomicBool = AtomicBool::new(false);
static STDERR: AtomicBool = AtomicBool::new(false);

/// Decides, once, whether each stream gets colour.
pub fn init(when: When) {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|value| !value.is_empty());
    let decide = |terminal: bool| match when {
        When::Always => true,
        When::Never => false,
        When::Auto => terminal && !no_color,
    };
    STDOUT.store(decide(std::io::stdout().is_terminal()), Ordering::Relaxed);
    STDERR.store(decide(std::io::stderr().is_terminal()), Ordering::Relaxed);
}

/// A colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Something added: green.
    Added,
    /// Something removed, a failure: red.
    Removed,
    /// A warning: yellow.
    Warning,
}

/// The stream a text goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Out,
    /// Standard error.
    Err,
}

/// `text` in `style`, if `stream` gets colour.
#[must_use]
pub fn paint(text: &str, style: Style, stream: Stream) -> String {
    let enabled = match stream {
        Stream::Out => STDOUT.load(Ordering::Relaxed),
        Stream::Err => STDERR.load(Ordering::Relaxed),
    };
    if !enabled || text.is_empty() {
        return text.to_owned();
    }
    let code = match style {
        Style::Added => "32",
        Style::Removed => "31",
        Style::Warning => "33",
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}

/// How many columns `text` takes: its characters, not counting colour sequences.
#[must_use]
pub fn width(text: &str) -> usize {
    let mut count = 0;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI ... final byte (a letter).
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            count += 1;
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_sequences_take_no_columns() {
        assert_eq!(width("\x1b[32m+\x1b[0m"), 1);
        assert_eq!(width("plain"), 5);
        assert_eq!(width("a\x1b[31mbc\x1b[0md"), 4);
    }
}
