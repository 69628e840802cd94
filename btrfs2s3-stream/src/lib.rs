//! btrfs send streams, read command by command, with every command's checksum checked.
//!
//! A stream (what `btrfs send` writes, protocol 1 or 2) is a header — the magic
//! `btrfs-stream\0` and a little-endian `u32` version — and commands. A command is a 10-byte
//! header (`u32` length of its attributes, `u16` command, `u32` CRC-32C of the whole command
//! with this field zeroed) and attributes: `u16` type, `u16` length, the value. In protocol 2
//! the data of a write is the last attribute and has no length: it runs to the command's end.
//!
//! [`Parser`] reads one command at a time from any [`std::io::Read`] (memory is one command:
//! at most 64 KiB in protocol 1, a compressed extent and its header in protocol 2), and
//! refuses what is not a send stream with an error naming the byte offset: a bad magic, an
//! unknown version or command, a checksum that does not match, a stream that ends within a
//! command or before its `end` command. Nothing here needs root, btrfs or libbtrfsutil.
//!
//! ```
//! use btrfs2s3_stream::{Attribute, Kind, Parser};
//!
//! // A stream with one `mkdir` and the `end` command, as `btrfs send` would write them.
//! let mut stream = btrfs2s3_stream::header(1);
//! stream.extend(btrfs2s3_stream::encode(Kind::Mkdir, &[(Attribute::Path, b"docs".to_vec())]));
//! stream.extend(btrfs2s3_stream::encode(Kind::End, &[]));
//!
//! let mut parser = Parser::new(stream.as_slice())?;
//! assert_eq!(parser.version(), 1);
//! let command = parser.next_command()?.expect("a command");
//! assert_eq!(command.kind(), Kind::Mkdir);
//! assert_eq!(command.path(Attribute::Path)?, b"docs");
//! assert_eq!(parser.next_command()?.map(|c| c.kind()), Some(Kind::End));
//! assert!(parser.next_command()?.is_none());
//! # Ok::<(), btrfs2s3_stream::Error>(())
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod crc;
mod decode;
pub mod extract;
pub mod model;
pub mod receive;

use std::io::Read;

use snafu::Snafu;
use uuid::Uuid;

pub use crc::update as crc32c;

/// The first bytes of every send stream.
pub const MAGIC: &[u8; 13] = b"btrfs-stream\0";

/// The newest protocol version this crate reads.
pub const MAX_VERSION: u32 = 2;

/// The largest command accepted: a protocol 2 write of a compressed extent is at most 128 KiB
/// of data and its attributes; anything far beyond is not a stream `btrfs send` wrote.
pub const MAX_COMMAND: u32 = 16 << 20;

const COMMAND_HEADER: usize = 10;

/// What is wrong with a stream, and where.
#[derive(Debug, Snafu)]
#[snafu(visibility(pub(crate)))]
pub enum Error {
    /// Reading failed.
    #[snafu(display("cannot read the stream at byte {offset}: {source}"))]
    Read {
        /// Where.
        offset: u64,
        /// Why.
        source: std::io::Error,
    },
    /// The stream does not start with the magic.
    #[snafu(display("not a btrfs send stream: it does not start with \"btrfs-stream\""))]
    NotAStream,
    /// A version this crate does not read.
    #[snafu(display("send stream version {version} is not supported (1 and 2 are)"))]
    UnsupportedVersion {
        /// The version in the header.
        version: u32,
    },
    /// The stream ends within a command, or without an `end` command.
    #[snafu(display("the stream is cut short at byte {offset}: {what}"))]
    Truncated {
        /// Where it ends.
        offset: u64,
        /// What was expected.
        what: &'static str,
    },
    /// A command whose checksum does not match its bytes.
    #[snafu(display(
        "the command at byte {offset} is damaged: its checksum is {stored:#010x}, its bytes give {computed:#010x}"
    ))]
    BadChecksum {
        /// Where the command starts.
        offset: u64,
        /// The checksum in the command.
        stored: u32,
        /// The checksum of its bytes.
        computed: u32,
    },
    /// A command this crate does not know.
    #[snafu(display("unknown command {command} at byte {offset}"))]
    UnknownCommand {
        /// Where the command starts.
        offset: u64,
        /// Its number.
        command: u16,
    },
    /// A command longer than [`MAX_COMMAND`].
    #[snafu(display(
        "the command at byte {offset} claims {length} bytes, more than a send stream holds"
    ))]
    TooLarge {
        /// Where the command starts.
        offset: u64,
        /// Its claimed length.
        length: u32,
    },
    /// An attribute that overruns its command, or that a command needs and lacks, or whose
    /// value has the wrong size.
    #[snafu(display("the {command:?} command at byte {offset}: attribute {attribute}: {problem}"))]
    BadAttribute {
        /// Where the command starts.
        offset: u64,
        /// The command.
        command: Kind,
        /// The attribute's number.
        attribute: u16,
        /// What is wrong.
        problem: &'static str,
    },
}

macro_rules! numbered {
    ($(#[$meta:meta])* $name:ident { $($(#[$doc:meta])* $variant:ident = $value:literal,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$doc])* $variant = $value,)*
        }

        impl $name {
            /// The one numbered `value`, if any.
            #[must_use]
            pub fn from_number(value: u16) -> Option<$name> {
                match value {
                    $($value => Some($name::$variant),)*
                    _ => None,
                }
            }

            /// Its number in a stream.
            #[must_use]
            pub fn number(self) -> u16 {
                self as u16
            }
        }
    };
}

numbered! {
    /// A command of a send stream.
    Kind {
        /// The stream creates a new subvolume (a full send).
        Subvol = 1,
        /// The stream creates a snapshot of its parent (a differential send).
        Snapshot = 2,
        /// Create a regular file.
        Mkfile = 3,
        /// Create a directory.
        Mkdir = 4,
        /// Create a device node.
        Mknod = 5,
        /// Create a FIFO.
        Mkfifo = 6,
        /// Create a socket.
        Mksock = 7,
        /// Create a symbolic link.
        Symlink = 8,
        /// Rename.
        Rename = 9,
        /// Create a hard link.
        Link = 10,
        /// Remove a name.
        Unlink = 11,
        /// Remove a directory.
        Rmdir = 12,
        /// Set an extended attribute.
        SetXattr = 13,
        /// Remove an extended attribute.
        RemoveXattr = 14,
        /// Write data.
        Write = 15,
        /// Clone a range from another file.
        Clone = 16,
        /// Set a file's size.
        Truncate = 17,
        /// Set the mode.
        Chmod = 18,
        /// Set the owner.
        Chown = 19,
        /// Set the times.
        Utimes = 20,
        /// The end of the stream.
        End = 21,
        /// A range changed (`--no-data` sends).
        UpdateExtent = 22,
        /// Preallocate or punch a hole (protocol 2).
        Fallocate = 23,
        /// Set the inode flags (protocol 2).
        Fileattr = 24,
        /// Write data as stored, compressed (protocol 2).
        EncodedWrite = 25,
        /// Enable fs-verity (protocol 3).
        EnableVerity = 26,
    }
}

numbered! {
    /// An attribute of a command.
    Attribute {
        /// A subvolume's uuid.
        Uuid = 1,
        /// A subvolume's transaction.
        Ctransid = 2,
        /// An inode number.
        Ino = 3,
        /// A size.
        Size = 4,
        /// A mode.
        Mode = 5,
        /// An owner.
        Uid = 6,
        /// A group.
        Gid = 7,
        /// A device number.
        Rdev = 8,
        /// The change time.
        Ctime = 9,
        /// The modification time.
        Mtime = 10,
        /// The access time.
        Atime = 11,
        /// The creation time.
        Otime = 12,
        /// An extended attribute's name.
        XattrName = 13,
        /// An extended attribute's value.
        XattrData = 14,
        /// The path a command acts on.
        Path = 15,
        /// The new path of a rename.
        PathTo = 16,
        /// The target of a symlink or link.
        PathLink = 17,
        /// An offset in a file.
        FileOffset = 18,
        /// Data.
        Data = 19,
        /// The uuid of a clone's source subvolume.
        CloneUuid = 20,
        /// The transaction of a clone's source subvolume.
        CloneCtransid = 21,
        /// The path of a clone's source file.
        ClonePath = 22,
        /// The offset in a clone's source file.
        CloneOffset = 23,
        /// The length of a clone.
        CloneLen = 24,
        /// How to fallocate.
        FallocateMode = 25,
        /// Inode flags.
        Fileattr = 26,
        /// The length of an encoded write's data once decoded.
        UnencodedFileLen = 27,
        /// The length of the decoded extent.
        UnencodedLen = 28,
        /// Where the written range starts in the decoded extent.
        UnencodedOffset = 29,
        /// The compression of an encoded write.
        Compression = 30,
        /// The encryption of an encoded write.
        Encryption = 31,
        /// An fs-verity hash algorithm.
        VerityAlgorithm = 32,
        /// An fs-verity block size.
        VerityBlockSize = 33,
        /// An fs-verity salt.
        VeritySalt = 34,
        /// An fs-verity signature.
        VeritySig = 35,
    }
}

/// A time as a stream gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timespec {
    /// Seconds since the epoch.
    pub seconds: i64,
    /// Nanoseconds.
    pub nanoseconds: u32,
}

/// One command, its attributes checked against its length and its checksum against its
/// bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    offset: u64,
    kind: Kind,
    /// The attributes' bytes.
    body: Vec<u8>,
    /// (type, start, end) of each attribute's value in `body`.
    attributes: Vec<(u16, usize, usize)>,
}

impl Command {
    /// What it does.
    #[must_use]
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Where it starts in the stream.
    #[must_use]
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The value of `attribute`, if the command has it.
    #[must_use]
    pub fn get(&self, attribute: Attribute) -> Option<&[u8]> {
        self.attributes
            .iter()
            .find(|(number, _, _)| *number == attribute.number())
            .map(|(_, start, end)| &self.body[*start..*end])
    }

    /// The attributes in order: their numbers and values.
    pub fn attributes(&self) -> impl Iterator<Item = (u16, &[u8])> {
        self.attributes
            .iter()
            .map(|(number, start, end)| (*number, &self.body[*start..*end]))
    }

    fn bad(&self, attribute: Attribute, problem: &'static str) -> Error {
        Error::BadAttribute {
            offset: self.offset,
            command: self.kind,
            attribute: attribute.number(),
            problem,
        }
    }

    /// The value of `attribute`, which the command must have.
    pub fn required(&self, attribute: Attribute) -> Result<&[u8], Error> {
        self.get(attribute)
            .ok_or_else(|| self.bad(attribute, "missing"))
    }

    /// A path (bytes: paths need not be UTF-8).
    pub fn path(&self, attribute: Attribute) -> Result<&[u8], Error> {
        self.required(attribute)
    }

    /// A little-endian integer of 1, 2, 4 or 8 bytes.
    pub fn u64(&self, attribute: Attribute) -> Result<u64, Error> {
        let value = self.required(attribute)?;
        let mut bytes = [0u8; 8];
        match value.len() {
            1 | 2 | 4 | 8 => {
                bytes[..value.len()].copy_from_slice(value);
                Ok(u64::from_le_bytes(bytes))
            }
            _ => Err(self.bad(attribute, "not an integer of 1, 2, 4 or 8 bytes")),
        }
    }

    /// A uuid.
    pub fn uuid(&self, attribute: Attribute) -> Result<Uuid, Error> {
        let value = self.required(attribute)?;
        <[u8; 16]>::try_from(value)
            .map(Uuid::from_bytes)
            .map_err(|_| self.bad(attribute, "not a uuid of 16 bytes"))
    }

    /// A time: `u64` seconds and `u32` nanoseconds.
    pub fn timespec(&self, attribute: Attribute) -> Result<Timespec, Error> {
        let value = self.required(attribute)?;
        if value.len() != 12 {
            return Err(self.bad(attribute, "not a time of 12 bytes"));
        }
        let mut seconds = [0u8; 8];
        seconds.copy_from_slice(&value[..8]);
        let mut nanoseconds = [0u8; 4];
        nanoseconds.copy_from_slice(&value[8..]);
        Ok(Timespec {
            seconds: i64::from_le_bytes(seconds),
            nanoseconds: u32::from_le_bytes(nanoseconds),
        })
    }
}

/// Reads a stream command by command.
#[derive(Debug)]
pub struct Parser<R> {
    reader: R,
    version: u32,
    offset: u64,
    ended: bool,
}

/// Reads exactly `buffer.len()` bytes, or fewer only at the end of the stream; returns how
/// many.
fn read_full(reader: &mut impl Read, buffer: &mut [u8], offset: u64) -> Result<usize, Error> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(Error::Read {
                    offset: offset + filled as u64,
                    source,
                });
            }
        }
    }
    Ok(filled)
}

impl<R: Read> Parser<R> {
    /// Reads the stream header.
    pub fn new(mut reader: R) -> Result<Parser<R>, Error> {
        let mut header = [0u8; 17];
        let read = read_full(&mut reader, &mut header, 0)?;
        if read < MAGIC.len() || header[..MAGIC.len()] != *MAGIC {
            return Err(Error::NotAStream);
        }
        if read < header.len() {
            return Err(Error::Truncated {
                offset: read as u64,
                what: "the header's version",
            });
        }
        let version = u32::from_le_bytes([header[13], header[14], header[15], header[16]]);
        if !(1..=MAX_VERSION).contains(&version) {
            return Err(Error::UnsupportedVersion { version });
        }
        Ok(Parser {
            reader,
            version,
            offset: header.len() as u64,
            ended: false,
        })
    }

    /// The protocol version.
    #[must_use]
    pub fn version(&self) -> u32 {
        self.version
    }

    /// How many bytes were read so far.
    #[must_use]
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next command; `None` at the end of the stream, which must come after an `end`
    /// command.
    pub fn next_command(&mut self) -> Result<Option<Command>, Error> {
        let offset = self.offset;
        let mut header = [0u8; COMMAND_HEADER];
        let read = read_full(&mut self.reader, &mut header, offset)?;
        if read == 0 {
            return if self.ended {
                Ok(None)
            } else {
                Err(Error::Truncated {
                    offset,
                    what: "no end command",
                })
            };
        }
        if read < COMMAND_HEADER {
            return Err(Error::Truncated {
                offset: offset + read as u64,
                what: "a command header",
            });
        }
        let length = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let number = u16::from_le_bytes([header[4], header[5]]);
        let stored = u32::from_le_bytes([header[6], header[7], header[8], header[9]]);
        if length > MAX_COMMAND {
            return Err(Error::TooLarge { offset, length });
        }
        let mut body = vec![0u8; length as usize];
        let read = read_full(&mut self.reader, &mut body, offset + COMMAND_HEADER as u64)?;
        if read < body.len() {
            return Err(Error::Truncated {
                offset: offset + (COMMAND_HEADER + read) as u64,
                what: "a command's attributes",
            });
        }
        let mut zeroed = header;
        zeroed[6..].fill(0);
        let computed = crc::update(crc::update(0, &zeroed), &body);
        if computed != stored {
            return Err(Error::BadChecksum {
                offset,
                stored,
                computed,
            });
        }
        let kind = Kind::from_number(number).ok_or(Error::UnknownCommand {
            offset,
            command: number,
        })?;
        self.offset = offset + (COMMAND_HEADER + body.len()) as u64;
        let attributes = self.attributes(offset, kind, &body)?;
        if kind == Kind::End {
            self.ended = true;
        }
        Ok(Some(Command {
            offset,
            kind,
            body,
            attributes,
        }))
    }

    /// The attributes of a command's body: (type, start, end) of each value.
    fn attributes(
        &self,
        offset: u64,
        kind: Kind,
        body: &[u8],
    ) -> Result<Vec<(u16, usize, usize)>, Error> {
        let mut attributes = Vec::new();
        let mut at = 0;
        while at < body.len() {
            let bad = |attribute: u16, problem| Error::BadAttribute {
                offset,
                command: kind,
                attribute,
                problem,
            };
            if body.len() - at < 2 {
                return Err(bad(0, "an attribute header overruns the command"));
            }
            let number = u16::from_le_bytes([body[at], body[at + 1]]);
            // In protocol 2 the data of a write has no length: it runs to the end.
            if self.version >= 2 && number == Attribute::Data.number() {
                attributes.push((number, at + 2, body.len()));
                break;
            }
            if body.len() - at < 4 {
                return Err(bad(number, "an attribute header overruns the command"));
            }
            let length = usize::from(u16::from_le_bytes([body[at + 2], body[at + 3]]));
            let start = at + 4;
            let end = start + length;
            if end > body.len() {
                return Err(bad(number, "its value overruns the command"));
            }
            attributes.push((number, start, end));
            at = end;
        }
        Ok(attributes)
    }
}

/// The header of a stream of protocol `version` (for tests and tools that write streams).
#[must_use]
pub fn header(version: u32) -> Vec<u8> {
    let mut bytes = MAGIC.to_vec();
    bytes.extend(version.to_le_bytes());
    bytes
}

/// One command as `btrfs send` writes it (protocol 1 framing: every attribute with its
/// length), with its checksum.
#[must_use]
pub fn encode(kind: Kind, attributes: &[(Attribute, Vec<u8>)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (attribute, value) in attributes {
        body.extend(attribute.number().to_le_bytes());
        body.extend(u16::try_from(value.len()).unwrap_or(u16::MAX).to_le_bytes());
        body.extend(value);
    }
    let mut command = Vec::with_capacity(COMMAND_HEADER + body.len());
    command.extend(u32::try_from(body.len()).unwrap_or(u32::MAX).to_le_bytes());
    command.extend(kind.number().to_le_bytes());
    command.extend([0u8; 4]);
    command.extend(&body);
    let crc = crc::update(0, &command);
    command[6..10].copy_from_slice(&crc.to_le_bytes());
    command
}

#[cfg(test)]
mod tests;
