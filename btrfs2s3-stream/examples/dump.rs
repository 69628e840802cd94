//! Prints the commands of a send stream (from a file, or standard input), one per line with
//! its offset, and checks every checksum: `cargo run -p btrfs2s3-stream --example dump -- FILE`.
use std::io::{Read, Write};

use btrfs2s3_stream::{Attribute, Parser};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let input: Box<dyn Read> = match std::env::args_os().nth(1) {
        Some(path) => Box::new(std::io::BufReader::new(std::fs::File::open(path)?)),
        None => Box::new(std::io::stdin().lock()),
    };
    let mut parser = Parser::new(input)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "version {}", parser.version())?;
    while let Some(command) = parser.next_command()? {
        let path = command
            .get(Attribute::Path)
            .map(|path| String::from_utf8_lossy(path).into_owned())
            .unwrap_or_default();
        writeln!(out, "{:>10} {:?} {path}", command.offset(), command.kind())?;
    }
    Ok(())
}
