//! Applying send streams to a directory on any filesystem: what `btrfs receive` does, without
//! btrfs, root or btrfs-progs.
//!
//! A [`Receiver`] applies one stream's commands to a working directory. Every command is
//! first applied to the [`Tree`] model (which refuses paths that do not exist, names that do,
//! and so on), then carried out with `*at` system calls below the working directory: paths
//! are relative, without `.` or `..`, and no symbolic link is followed on the way, so a
//! stream cannot write outside it whatever it names. File data is written, cloned (with
//! `copy_file_range`, which shares extents where the filesystem can and copies otherwise),
//! truncated, allocated and punched; protocol 2's encoded writes are decompressed.
//!
//! A differential applies to its parent's tree, in one of two ways ([`Parent`]): to a copy of
//! the parent's restored directory (clones from the parent read the parent's directory), or
//! in place, where whatever the parent had that the stream changes or removes is kept aside
//! first (a hard link, or a copy before its data changes), so that clones still read the
//! parent's data.
//!
//! What a user without root cannot restore is noted, not fatal ([`Notes`]): ownership, device
//! nodes, extended attributes the filesystem refuses. Without root, directories and files
//! stay writable by their owner while streams apply; [`Receiver::finish`] sets their modes
//! last.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps};
use uuid::Uuid;

use crate::model::{ApplyError, Inode, Misfit, Node, Tree, WriteFailure};
use crate::{Attribute, Command, Kind, Parser};

/// `fallocate`'s mode bits.
const KEEP_SIZE: u64 = 1;
const PUNCH_HOLE: u64 = 2;

/// The extended attribute that `chown` clears: set again after it.
const CAPABILITY: &[u8] = b"security.capability";

/// How many paths a note keeps as examples.
const EXAMPLES: usize = 5;

/// What could not be restored as the stream has it; nothing here stops a restore.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Notes {
    /// Owners that were not set (only root can give files to others): names keep the owner
    /// of whoever restores them.
    pub owners_kept: u64,
    /// Device nodes that were not created (only root can), with the first few paths.
    pub devices_skipped: Vec<Vec<u8>>,
    /// How many device nodes that is.
    pub devices: u64,
    /// Extended attributes that could not be set (a filesystem without them, or `security.`
    /// and `trusted.` ones without root): the first few, with why.
    pub xattrs_skipped: Vec<String>,
    /// How many that is.
    pub xattrs: u64,
}

impl Notes {
    /// Whether there is nothing to tell.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.owners_kept == 0 && self.devices == 0 && self.xattrs == 0
    }

    /// Adds what `other` noted.
    pub fn merge(&mut self, other: Notes) {
        self.owners_kept += other.owners_kept;
        self.devices += other.devices;
        self.xattrs += other.xattrs;
        for path in other.devices_skipped {
            if self.devices_skipped.len() < EXAMPLES {
                self.devices_skipped.push(path);
            }
        }
        for xattr in other.xattrs_skipped {
            if self.xattrs_skipped.len() < EXAMPLES {
                self.xattrs_skipped.push(xattr);
            }
        }
    }
}

/// Where a differential's clones from its parent snapshot read.
#[derive(Debug, Clone)]
pub enum Parent {
    /// None: a full stream.
    None,
    /// The working directory is a copy of the parent's restored directory, which stays as it
    /// is: clones from the parent read it.
    Dir {
        /// The parent snapshot's uuid (what the stream's `snapshot` command names).
        uuid: Uuid,
        /// Its restored directory.
        path: PathBuf,
    },
    /// The working directory holds the parent's tree and the stream changes it in place; what
    /// the parent had is kept in `shadow` (an empty directory on the same filesystem, outside
    /// the working directory) before the stream changes or removes it.
    InPlace {
        /// The parent snapshot's uuid.
        uuid: Uuid,
        /// Where the parent's data is kept aside.
        shadow: PathBuf,
    },
}

/// How to receive.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Set owners (`chown`): needs root.
    pub owners: bool,
    /// Write data only for these inodes of the model (see [`crate::model::Tree::ino`]): the
    /// rest get their names but no data (`extract`). All when `None`.
    pub data: Option<HashSet<u64>>,
}

/// What one stream was.
#[derive(Debug)]
pub struct Received {
    /// The subvolume's name (the `subvol` or `snapshot` command's path).
    pub name: Vec<u8>,
    /// Its uuid.
    pub uuid: Uuid,
    /// The model of its tree.
    pub tree: Tree,
    /// What could not be restored as it was.
    pub notes: Notes,
    /// How many commands were applied.
    pub commands: u64,
}

/// Whether the parent's copy of an inode has been kept aside, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kept {
    /// A hard link: the data is the parent's until the inode's data changes.
    Linked,
    /// A copy.
    Copied,
}

/// The parent's data, kept aside as an in-place differential changes it.
#[derive(Debug)]
struct Shadow {
    dir: File,
    /// The parent's tree, as the stream started.
    parent: Tree,
    parent_inos: HashSet<u64>,
    /// Inodes this stream created (a number the parent used may be used again).
    created: HashSet<u64>,
    kept: HashMap<u64, Kept>,
}

/// Applies one stream to a working directory.
#[derive(Debug)]
pub struct Receiver {
    root: File,
    tree: Tree,
    options: Options,
    parent_uuid: Option<Uuid>,
    parent_dir: Option<File>,
    shadow: Option<Shadow>,
    subvolume: Option<(Vec<u8>, Uuid)>,
    /// The file written last, kept open.
    open: Option<(Vec<u8>, File)>,
    /// Capabilities to set again after `chown`, by path.
    capabilities: HashMap<Vec<u8>, Vec<u8>>,
    /// Device nodes not created (by model inode): commands on them are left out.
    skipped: HashSet<u64>,
    /// Directories whose names changed since the stream last set their times (by model
    /// inode): a stream's temporary names touch directories it then sends no times for.
    touched: HashSet<u64>,
    notes: Notes,
    commands: u64,
}

fn os(path: &[u8]) -> &OsStr {
    OsStr::from_bytes(path)
}

/// Splits a path into its directory and its last name.
fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(at) => (&path[..at], &path[at + 1..]),
        None => (&[][..], path),
    }
}

/// Whether `path` is a plain relative path: names separated by single slashes, none of them
/// `.` or `..`, no NUL.
fn is_plain(path: &[u8]) -> bool {
    path.is_empty()
        || path
            .split(|&b| b == b'/')
            .all(|name| !name.is_empty() && name != b"." && name != b".." && !name.contains(&0))
}

/// Opens directory `path` below `root` without following any symbolic link on the way.
fn open_dir(root: &File, path: &[u8]) -> io::Result<OwnedFd> {
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let target: &OsStr = if path.is_empty() {
        OsStr::new(".")
    } else {
        os(path)
    };
    match rustix::fs::openat2(
        root,
        target,
        flags,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    ) {
        Err(rustix::io::Errno::NOSYS | rustix::io::Errno::PERM) => {
            // Kernels before 5.6, or sandboxes that refuse openat2: one name at a time.
            let mut dir = rustix::fs::openat(root, ".", flags, Mode::empty())?;
            for name in path.split(|&b| b == b'/').filter(|name| !name.is_empty()) {
                dir = rustix::fs::openat(&dir, os(name), flags | OFlags::NOFOLLOW, Mode::empty())?;
            }
            Ok(dir)
        }
        result => Ok(result?),
    }
}

/// Opens `path` below `root` (not following a symbolic link anywhere).
fn open_below(root: &File, path: &[u8], flags: OFlags) -> io::Result<File> {
    let (dir, name) = split(path);
    let dir = open_dir(root, dir)?;
    let name: &OsStr = if name.is_empty() {
        OsStr::new(".")
    } else {
        os(name)
    };
    Ok(File::from(rustix::fs::openat(
        &dir,
        name,
        flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?))
}

fn open_root(path: &Path) -> io::Result<File> {
    Ok(File::from(rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?))
}

/// The mode given while streams apply without root: the owner may write into directories
/// and files (the stream's own mode is set last).
fn relaxed(node: Node, mode: u32) -> u32 {
    match node {
        Node::Directory => mode | 0o700,
        Node::File => mode | 0o600,
        Node::Symlink | Node::Special => mode,
    }
}

/// Copies `length` bytes from `from` at `from_offset` to `to` at `to_offset`: extents are
/// shared where the filesystem can (`copy_file_range` clones on btrfs and XFS), copied
/// otherwise. Stops early where `from` ends.
pub fn copy_range(
    from: &File,
    from_offset: u64,
    to: &File,
    to_offset: u64,
    length: u64,
) -> io::Result<()> {
    let mut done = 0;
    while done < length {
        let mut at_from = from_offset + done;
        let mut at_to = to_offset + done;
        let chunk = usize::try_from(length - done)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        match rustix::fs::copy_file_range(from, Some(&mut at_from), to, Some(&mut at_to), chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => done += n as u64,
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => {
                // Not across these filesystems, not within one file, or not at all here.
                return copy_by_reading(
                    from,
                    from_offset + done,
                    to,
                    to_offset + done,
                    length - done,
                );
            }
        }
    }
    Ok(())
}

fn copy_by_reading(
    from: &File,
    from_offset: u64,
    to: &File,
    to_offset: u64,
    length: u64,
) -> io::Result<()> {
    let mut buffer = vec![0u8; 1 << 20];
    let mut done = 0;
    while done < length {
        let want = usize::try_from(length - done)
            .unwrap_or(usize::MAX)
            .min(buffer.len());
        let n = match from.read_at(&mut buffer[..want], from_offset + done) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        to.write_all_at(&buffer[..n], to_offset + done)?;
        done += n as u64;
    }
    Ok(())
}

/// Copies a whole file's data, leaving its holes holes, and gives `to` its size.
pub fn copy_data(from: &File, to: &File) -> io::Result<()> {
    let size = from.metadata()?.len();
    let mut at = 0;
    while at < size {
        let data = match rustix::fs::seek(from, rustix::fs::SeekFrom::Data(at)) {
            Ok(data) => data,
            // No data after `at`: the rest is a hole.
            Err(rustix::io::Errno::NXIO) => break,
            // A filesystem without SEEK_DATA: all of it is data.
            Err(_) => at,
        };
        let hole = rustix::fs::seek(from, rustix::fs::SeekFrom::Hole(data)).unwrap_or(size);
        copy_range(from, data, to, data, hole.min(size) - data)?;
        at = hole.max(data + 1);
    }
    to.set_len(size)
}

impl Receiver {
    /// A receiver that applies a stream to the directory `root` (empty for a full stream; the
    /// parent's tree for a differential), whose model is `tree` ([`Tree::new`], or
    /// [`Tree::from_parent`] of the parent's).
    pub fn new(
        root: &Path,
        mut tree: Tree,
        parent: &Parent,
        options: Options,
    ) -> io::Result<Receiver> {
        let root = open_root(root)?;
        let (parent_uuid, parent_dir, shadow) = match parent {
            Parent::None => (None, None, None),
            Parent::Dir { uuid, path } => (Some(*uuid), Some(open_root(path)?), None),
            Parent::InPlace { uuid, shadow } => {
                let parent_inos = tree
                    .entries()
                    .filter_map(|(path, _)| tree.ino(path))
                    .collect();
                let parent = tree.clone();
                // Clones from the parent look up where its files are now.
                tree.index_names();
                (
                    Some(*uuid),
                    None,
                    Some(Shadow {
                        dir: open_root(shadow)?,
                        parent,
                        parent_inos,
                        created: HashSet::new(),
                        kept: HashMap::new(),
                    }),
                )
            }
        };
        // Device nodes an earlier stream could not create (without root) are not there.
        let mut skipped = HashSet::new();
        for (path, inode) in tree.entries() {
            if inode.node != Node::Special {
                continue;
            }
            let (dir, name) = split(path);
            let missing = open_dir(&root, dir).is_ok_and(|dir| {
                matches!(
                    rustix::fs::statat(&dir, os(name), AtFlags::SYMLINK_NOFOLLOW),
                    Err(rustix::io::Errno::NOENT)
                )
            });
            if missing && let Some(ino) = tree.ino(path) {
                skipped.insert(ino);
            }
        }
        Ok(Receiver {
            root,
            tree,
            options,
            parent_uuid,
            parent_dir,
            shadow,
            subvolume: None,
            open: None,
            capabilities: HashMap::new(),
            skipped,
            touched: HashSet::new(),
            notes: Notes::default(),
            commands: 0,
        })
    }

    /// Applies one command: to the model first, then to the directory.
    pub fn apply(&mut self, command: &Command) -> Result<(), ApplyError> {
        let misfit = |path: &[u8], problem| {
            ApplyError::Misfit(Misfit {
                offset: command.offset(),
                kind: command.kind(),
                path: path.to_vec(),
                problem,
            })
        };
        for attribute in [Attribute::Path, Attribute::PathTo, Attribute::ClonePath] {
            if let Some(path) = command.get(attribute)
                && !is_plain(path)
            {
                return Err(misfit(path, "is not a plain relative path"));
            }
        }
        if command.kind() == Kind::Link
            && let Some(path) = command.get(Attribute::PathLink)
            && !is_plain(path)
        {
            return Err(misfit(path, "is not a plain relative path"));
        }
        // What the parent's copy of a name needs, looked up before the model moves on.
        let before = self.keep_before(command)?;
        // Whether the command is about a device node left out (looked up before an unlink
        // or rename takes the name from the model).
        let about = if command.kind() == Kind::Link {
            Attribute::PathLink
        } else {
            Attribute::Path
        };
        let skipped = command.get(about).is_some_and(|path| self.is_skipped(path));
        self.tree.apply(command)?;
        let path = command.get(Attribute::Path).unwrap_or_default().to_vec();
        let failed = |source: io::Error| {
            ApplyError::Write(WriteFailure {
                offset: command.offset(),
                kind: command.kind(),
                path: path.clone(),
                source,
            })
        };
        if let Some((ino, link)) = before {
            self.keep(ino, &path_for_keep(command), link)
                .map_err(failed)?;
        }
        self.carry_out(command, skipped)
            .map_err(|error| match error {
                Carry::Io(source) => failed(source),
                Carry::Apply(error) => error,
                Carry::Misfit(problem) => misfit(&path, problem),
            })?;
        self.track_times(command);
        self.commands += 1;
        Ok(())
    }

    /// Keeps track of the directories whose names a command changed, and of those whose
    /// times it set.
    fn track_times(&mut self, command: &Command) {
        let mut parents = |attribute| {
            if let Some(path) = command.get(attribute)
                && let Some(ino) = self.tree.ino(split(path).0)
            {
                self.touched.insert(ino);
            }
        };
        match command.kind() {
            Kind::Mkfile
            | Kind::Mkdir
            | Kind::Mknod
            | Kind::Mkfifo
            | Kind::Mksock
            | Kind::Symlink
            | Kind::Link
            | Kind::Unlink
            | Kind::Rmdir => parents(Attribute::Path),
            Kind::Rename => {
                parents(Attribute::Path);
                parents(Attribute::PathTo);
            }
            Kind::Utimes => {
                if let Some(ino) = command.get(Attribute::Path).and_then(|p| self.tree.ino(p)) {
                    self.touched.remove(&ino);
                }
            }
            _ => {}
        }
    }

    /// Gives the directories whose names changed after their times were set (or that the
    /// stream sent no times for) the modification time the model has for them: the time the
    /// stream set earlier, or the parent's. `btrfs receive` leaves the time of the receive.
    fn restore_times(&self) -> io::Result<()> {
        if self.touched.is_empty() {
            return Ok(());
        }
        for (path, inode) in self.tree.entries() {
            let (Some(ino), Some(mtime)) = (self.tree.ino(path), inode.mtime) else {
                continue;
            };
            if inode.node != Node::Directory || !self.touched.contains(&ino) {
                continue;
            }
            let times = Timestamps {
                last_access: Timespec {
                    tv_sec: 0,
                    tv_nsec: rustix::fs::UTIME_OMIT,
                },
                last_modification: Timespec {
                    tv_sec: mtime.seconds,
                    tv_nsec: i64::from(mtime.nanoseconds),
                },
            };
            if path.is_empty() {
                rustix::fs::futimens(&self.root, &times)?;
            } else {
                let (dir, name) = split(path);
                let dir = open_dir(&self.root, dir)?;
                rustix::fs::utimensat(&dir, os(name), &times, AtFlags::SYMLINK_NOFOLLOW)?;
            }
        }
        Ok(())
    }

    /// For an in-place differential: the parent's inode that `command` is about to change
    /// (`false`) or unlink (`true`), if it is not kept aside yet.
    fn keep_before(&self, command: &Command) -> Result<Option<(u64, bool)>, ApplyError> {
        let Some(shadow) = &self.shadow else {
            return Ok(None);
        };
        let (path, link) = match command.kind() {
            Kind::Write | Kind::EncodedWrite | Kind::Clone | Kind::Truncate | Kind::Fallocate => {
                (command.path(Attribute::Path)?, false)
            }
            Kind::Unlink => (command.path(Attribute::Path)?, true),
            Kind::Rename => (command.path(Attribute::PathTo)?, true),
            _ => return Ok(None),
        };
        let Some(ino) = self.tree.ino(path) else {
            return Ok(None);
        };
        let is_parents = shadow.parent_inos.contains(&ino) && !shadow.created.contains(&ino);
        let is_file = self.tree.get(path) == Some(Node::File);
        let kept = shadow.kept.get(&ino);
        let needed = match kept {
            None => true,
            Some(Kept::Linked) => !link,
            Some(Kept::Copied) => false,
        };
        Ok(
            (is_parents && is_file && needed && !self.skipped.contains(&ino))
                .then_some((ino, link)),
        )
    }

    /// Keeps the parent's inode `ino`, now at `path`, aside: a hard link when it is about to
    /// lose a name, a copy when its data is about to change.
    fn keep(&mut self, ino: u64, path: &[u8], link: bool) -> io::Result<()> {
        let Some(shadow) = &mut self.shadow else {
            return Ok(());
        };
        let name = ino.to_string();
        if link {
            let (dir, file) = split(path);
            let dir = open_dir(&self.root, dir)?;
            if rustix::fs::linkat(&dir, os(file), &shadow.dir, name.as_str(), AtFlags::empty())
                .is_ok()
            {
                shadow.kept.insert(ino, Kept::Linked);
                return Ok(());
            }
        }
        // A copy of what the parent had: from the kept link if there is one, else the file.
        let source = if shadow.kept.get(&ino) == Some(&Kept::Linked) {
            open_below(&shadow.dir, name.as_bytes(), OFlags::RDONLY)?
        } else {
            open_below(&self.root, path, OFlags::RDONLY)?
        };
        let temporary = format!("{name}.copy");
        let copy = open_below(
            &shadow.dir,
            temporary.as_bytes(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC,
        )?;
        copy_data(&source, &copy)?;
        rustix::fs::renameat(&shadow.dir, temporary.as_str(), &shadow.dir, name.as_str())?;
        shadow.kept.insert(ino, Kept::Copied);
        Ok(())
    }

    /// Applies the stream from `reader` to its end, then [`Receiver::finish`]es (`last`: no
    /// other stream applies to this directory after this one).
    pub fn receive(mut self, reader: impl io::Read, last: bool) -> Result<Received, ApplyError> {
        let mut parser = Parser::new(reader)?;
        while let Some(command) = parser.next_command()? {
            self.apply(&command)?;
        }
        self.finish(last)
    }

    /// Ends the stream (it must have ended with its `end` command): sets the capabilities
    /// that wait for a `chown`, and with `modes` (the last stream applied to this directory)
    /// and without root, the modes that were relaxed while streams applied.
    pub fn finish(mut self, modes: bool) -> Result<Received, ApplyError> {
        let unfinished = |problem| {
            ApplyError::Misfit(Misfit {
                offset: 0,
                kind: Kind::End,
                path: Vec::new(),
                problem,
            })
        };
        let Some((name, uuid)) = self.subvolume.take() else {
            return Err(unfinished("the stream has no subvol or snapshot command"));
        };
        if !self.tree.ended() {
            return Err(unfinished("the stream has not ended"));
        }
        let finish_failed = |path: &[u8], source: io::Error| {
            ApplyError::Write(WriteFailure {
                offset: 0,
                kind: Kind::End,
                path: path.to_vec(),
                source,
            })
        };
        self.open = None;
        for (path, value) in std::mem::take(&mut self.capabilities) {
            if self.tree.get(&path).is_some() {
                self.set_xattr(&path, CAPABILITY, &value);
            }
        }
        // Device nodes left out, by the names they ended with (not the stream's temporary
        // ones).
        let mut skipped: Vec<u64> = self.skipped.iter().copied().collect();
        skipped.sort_unstable();
        self.notes.devices_skipped = skipped
            .into_iter()
            .filter_map(|ino| self.tree.path_of(ino).map(<[u8]>::to_vec))
            .take(EXAMPLES)
            .collect();
        self.restore_times()
            .map_err(|error| finish_failed(b"", error))?;
        if modes && !self.options.owners {
            let entries: Vec<(Vec<u8>, Node, u32)> = self
                .tree
                .entries()
                .filter(|(_, inode)| matches!(inode.node, Node::Directory | Node::File))
                .map(|(path, inode)| (path.to_vec(), inode.node, mode_bits(inode.mode)))
                .filter(|(_, node, mode)| relaxed(*node, *mode) != *mode)
                .collect();
            // The deepest first: a directory keeps its way in until its names are done.
            for (path, _, mode) in entries.iter().rev() {
                self.chmod(path, *mode)
                    .map_err(|error| finish_failed(path, error))?;
            }
        }
        Ok(Received {
            name,
            uuid,
            tree: self.tree,
            notes: self.notes,
            commands: self.commands,
        })
    }

    fn ino(&self, path: &[u8]) -> Option<u64> {
        self.tree.ino(path)
    }

    /// Whether the inode behind `path` was left out (a device node without root).
    fn is_skipped(&self, path: &[u8]) -> bool {
        !self.skipped.is_empty()
            && self
                .ino(path)
                .is_some_and(|ino| self.skipped.contains(&ino))
    }

    /// Whether data of the inode behind `path` is written (`extract` leaves most out).
    fn wants_data(&self, path: &[u8]) -> bool {
        match &self.options.data {
            None => true,
            Some(inodes) => self.ino(path).is_some_and(|ino| inodes.contains(&ino)),
        }
    }

    /// The file at `path`, open for writing (kept open for the commands that follow).
    fn file(&mut self, path: &[u8]) -> io::Result<&File> {
        let open = match self.open.take() {
            Some(open) if open.0 == path => open,
            _ => (path.to_vec(), open_below(&self.root, path, OFlags::WRONLY)?),
        };
        Ok(&self.open.insert(open).1)
    }

    fn chmod(&self, path: &[u8], mode: u32) -> io::Result<()> {
        let mode = Mode::from_raw_mode(mode);
        if path.is_empty() {
            return Ok(rustix::fs::fchmod(&self.root, mode)?);
        }
        // chmod follows a symbolic link at the end of a path (Linux has no "nofollow" for it
        // before 6.6): the name is opened without following it, and a link is left alone.
        let target = open_below(&self.root, path, OFlags::PATH)?;
        let stat = rustix::fs::fstat(&target)?;
        if FileType::from_raw_mode(stat.st_mode) == FileType::Symlink {
            return Ok(());
        }
        let by_fd = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&target));
        Ok(rustix::fs::chmod(by_fd.as_str(), mode)?)
    }

    fn set_xattr(&mut self, path: &[u8], name: &[u8], value: &[u8]) {
        let result = self.with_proc_path(path, |target| {
            rustix::fs::lsetxattr(target, os(name), value, rustix::fs::XattrFlags::empty())
        });
        if let Err(error) = result {
            if name.starts_with(b"btrfs.") && error.raw_os_error() == Some(libc_enotsup()) {
                // A btrfs property (compression): other filesystems have none.
                return;
            }
            self.notes.xattrs += 1;
            if self.notes.xattrs_skipped.len() < EXAMPLES {
                self.notes.xattrs_skipped.push(format!(
                    "{} on {:?}: {error}",
                    String::from_utf8_lossy(name),
                    String::from_utf8_lossy(path)
                ));
            }
        }
    }

    /// Runs `f` with a path that names `path` below the root without following symbolic
    /// links on the way (its directory through `/proc/self/fd`).
    fn with_proc_path<T>(
        &self,
        path: &[u8],
        f: impl FnOnce(&Path) -> rustix::io::Result<T>,
    ) -> io::Result<T> {
        use std::os::fd::AsRawFd;
        if path.is_empty() {
            let target = PathBuf::from(format!("/proc/self/fd/{}/.", self.root.as_raw_fd()));
            return Ok(f(&target)?);
        }
        let (dir, name) = split(path);
        let dir = open_dir(&self.root, dir)?;
        let mut target = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
        target.push(os(name));
        Ok(f(&target)?)
    }

    #[allow(clippy::too_many_lines)]
    fn carry_out(&mut self, command: &Command, skipped: bool) -> Result<(), Carry> {
        let kind = command.kind();
        let path = command.get(Attribute::Path).unwrap_or_default();
        if matches!(kind, Kind::Rename | Kind::Unlink | Kind::Link | Kind::Rmdir) {
            // Names change: the open file may no longer be at its path.
            self.open = None;
        }
        if skipped && kind != Kind::Rename {
            // A device node left out: nothing of it is on disk.
            return Ok(());
        }
        match kind {
            Kind::Subvol | Kind::Snapshot => {
                let (_, name) = split(path);
                if path.is_empty() || name.len() != path.len() {
                    return Err(Carry::Misfit("is not a single name for a subvolume"));
                }
                let uuid = command.uuid(Attribute::Uuid)?;
                if kind == Kind::Snapshot {
                    let parent = command.uuid(Attribute::CloneUuid)?;
                    if self.parent_uuid != Some(parent) {
                        return Err(Carry::Misfit(
                            "is a snapshot of a parent other than the one restored",
                        ));
                    }
                } else if self.parent_uuid.is_some() {
                    return Err(Carry::Misfit(
                        "is a full stream where a differential was expected",
                    ));
                }
                self.subvolume = Some((path.to_vec(), uuid));
            }
            Kind::Mkfile => {
                let file = open_below(
                    &self.root,
                    path,
                    OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL,
                )?;
                self.created(path);
                self.open = Some((path.to_vec(), file));
            }
            Kind::Mkdir => {
                let (dir, name) = split(path);
                let dir = open_dir(&self.root, dir)?;
                rustix::fs::mkdirat(&dir, os(name), Mode::from_raw_mode(0o700))?;
                self.created(path);
            }
            Kind::Mknod | Kind::Mkfifo | Kind::Mksock => {
                let mode = command.u64(Attribute::Mode).unwrap_or(0);
                let file_type = match kind {
                    Kind::Mkfifo => FileType::Fifo,
                    Kind::Mksock => FileType::Socket,
                    _ => FileType::from_raw_mode(mode_bits(mode) & 0o170_000),
                };
                let rdev = command.u64(Attribute::Rdev).unwrap_or(0);
                let (dir, name) = split(path);
                let dir = open_dir(&self.root, dir)?;
                self.created(path);
                match rustix::fs::mknodat(
                    &dir,
                    os(name),
                    file_type,
                    Mode::from_raw_mode(0o600),
                    rdev,
                ) {
                    Ok(()) => {}
                    Err(rustix::io::Errno::PERM)
                        if matches!(
                            file_type,
                            FileType::CharacterDevice | FileType::BlockDevice
                        ) =>
                    {
                        self.notes.devices += 1;
                        if let Some(ino) = self.ino(path) {
                            self.skipped.insert(ino);
                        }
                    }
                    Err(error) => return Err(Carry::Io(error.into())),
                }
            }
            Kind::Symlink => {
                let target = command.path(Attribute::PathLink)?;
                let (dir, name) = split(path);
                let dir = open_dir(&self.root, dir)?;
                rustix::fs::symlinkat(os(target), &dir, os(name))?;
                self.created(path);
            }
            Kind::Rename => {
                let to = command.path(Attribute::PathTo)?;
                let (from_dir, from_name) = split(path);
                let (to_dir, to_name) = split(to);
                let from_dir = open_dir(&self.root, from_dir)?;
                let to_dir = open_dir(&self.root, to_dir)?;
                if skipped {
                    // A device node left out: the name it would have replaced goes.
                    match rustix::fs::unlinkat(&to_dir, os(to_name), AtFlags::empty()) {
                        Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                        Err(error) => return Err(Carry::Io(error.into())),
                    }
                } else {
                    rustix::fs::renameat(&from_dir, os(from_name), &to_dir, os(to_name))?;
                }
            }
            Kind::Link => {
                let target = command.path(Attribute::PathLink)?;
                let (dir, name) = split(path);
                let (target_dir, target_name) = split(target);
                let dir = open_dir(&self.root, dir)?;
                let target_dir = open_dir(&self.root, target_dir)?;
                rustix::fs::linkat(
                    &target_dir,
                    os(target_name),
                    &dir,
                    os(name),
                    AtFlags::empty(),
                )?;
            }
            Kind::Unlink | Kind::Rmdir => {
                let (dir, name) = split(path);
                let dir = open_dir(&self.root, dir)?;
                let flags = if kind == Kind::Rmdir {
                    AtFlags::REMOVEDIR
                } else {
                    AtFlags::empty()
                };
                rustix::fs::unlinkat(&dir, os(name), flags)?;
            }
            Kind::SetXattr | Kind::RemoveXattr => {
                let name = command.required(Attribute::XattrName)?.to_vec();
                if kind == Kind::SetXattr {
                    let value = command.required(Attribute::XattrData)?.to_vec();
                    if name == CAPABILITY && self.options.owners {
                        // `chown` clears it: set after the owner is.
                        self.capabilities.insert(path.to_vec(), value);
                    } else {
                        self.set_xattr(path, &name, &value);
                    }
                } else {
                    self.capabilities.remove(path);
                    let _ = self
                        .with_proc_path(path, |target| rustix::fs::lremovexattr(target, os(&name)));
                }
            }
            Kind::Write => {
                if !self.wants_data(path) {
                    return Ok(());
                }
                let offset = command.u64(Attribute::FileOffset)?;
                let data = command.required(Attribute::Data)?;
                self.file(path)?.write_all_at(data, offset)?;
            }
            Kind::EncodedWrite => {
                if !self.wants_data(path) {
                    return Ok(());
                }
                self.encoded_write(command, path)?;
            }
            Kind::Clone => {
                if !self.wants_data(path) {
                    return Ok(());
                }
                self.clone_range(command, path)?;
            }
            Kind::Truncate => {
                if !self.wants_data(path) {
                    return Ok(());
                }
                let size = command.u64(Attribute::Size)?;
                self.file(path)?.set_len(size)?;
            }
            Kind::Fallocate => {
                if !self.wants_data(path) {
                    return Ok(());
                }
                self.fallocate(command, path)?;
            }
            Kind::Chmod => {
                let Some(node) = self.tree.get(path) else {
                    return Ok(());
                };
                if node == Node::Symlink {
                    return Ok(());
                }
                let mode = mode_bits(command.u64(Attribute::Mode)?) & 0o7777;
                let mode = if self.options.owners {
                    mode
                } else {
                    relaxed(node, mode)
                };
                self.chmod(path, mode)?;
            }
            Kind::Chown => {
                if !self.options.owners {
                    self.notes.owners_kept += 1;
                    return Ok(());
                }
                let uid = u32::try_from(command.u64(Attribute::Uid)?).unwrap_or(u32::MAX);
                let gid = u32::try_from(command.u64(Attribute::Gid)?).unwrap_or(u32::MAX);
                self.chown(path, uid, gid)?;
                if let Some(value) = self.capabilities.remove(path) {
                    self.set_xattr(path, CAPABILITY, &value);
                }
            }
            Kind::Utimes => {
                let time = |attribute| -> Result<Timespec, crate::Error> {
                    let t = command.timespec(attribute)?;
                    Ok(Timespec {
                        tv_sec: t.seconds,
                        tv_nsec: i64::from(t.nanoseconds),
                    })
                };
                let times = Timestamps {
                    last_access: time(Attribute::Atime)?,
                    last_modification: time(Attribute::Mtime)?,
                };
                // The data written so far is in before the time is set.
                self.open = None;
                if path.is_empty() {
                    rustix::fs::futimens(&self.root, &times)?;
                } else {
                    let (dir, name) = split(path);
                    let dir = open_dir(&self.root, dir)?;
                    rustix::fs::utimensat(&dir, os(name), &times, AtFlags::SYMLINK_NOFOLLOW)?;
                }
            }
            // Inode flags, `--no-data` extents and fs-verity: `btrfs receive` leaves them too.
            Kind::Fileattr | Kind::UpdateExtent | Kind::EnableVerity | Kind::End => {}
        }
        Ok(())
    }

    fn created(&mut self, path: &[u8]) {
        if let (Some(shadow), Some(ino)) = (&mut self.shadow, self.tree.ino(path)) {
            shadow.created.insert(ino);
        }
    }

    fn chown(&self, path: &[u8], uid: u32, gid: u32) -> io::Result<()> {
        let uid = Some(rustix::fs::Uid::from_raw(uid));
        let gid = Some(rustix::fs::Gid::from_raw(gid));
        if path.is_empty() {
            return Ok(rustix::fs::fchown(&self.root, uid, gid)?);
        }
        let (dir, name) = split(path);
        let dir = open_dir(&self.root, dir)?;
        Ok(rustix::fs::chownat(
            &dir,
            os(name),
            uid,
            gid,
            AtFlags::SYMLINK_NOFOLLOW,
        )?)
    }

    fn encoded_write(&mut self, command: &Command, path: &[u8]) -> Result<(), Carry> {
        let offset = command.u64(Attribute::FileOffset)?;
        let file_length = command.u64(Attribute::UnencodedFileLen)?;
        let length = command.u64(Attribute::UnencodedLen)?;
        let start = command.u64(Attribute::UnencodedOffset)?;
        let compression = command.u64(Attribute::Compression).unwrap_or(0);
        if command.u64(Attribute::Encryption).unwrap_or(0) != 0 {
            return Err(Carry::Misfit(
                "is written encrypted, which no btrfs does yet",
            ));
        }
        if start
            .checked_add(file_length)
            .is_none_or(|end| end > length)
        {
            return Err(Carry::Misfit("is written past its extent's end"));
        }
        let data = command.required(Attribute::Data)?;
        let decoded = crate::decode::decode(data, compression, length).map_err(|problem| {
            Carry::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("cannot decompress the extent: {problem}"),
            ))
        })?;
        let range = usize::try_from(start).unwrap_or(usize::MAX)
            ..usize::try_from(start + file_length).unwrap_or(usize::MAX);
        self.file(path)?.write_all_at(&decoded[range], offset)?;
        Ok(())
    }

    fn clone_range(&mut self, command: &Command, path: &[u8]) -> Result<(), Carry> {
        let offset = command.u64(Attribute::FileOffset)?;
        let length = command.u64(Attribute::CloneLen)?;
        let source_offset = command.u64(Attribute::CloneOffset)?;
        let source_path = command.path(Attribute::ClonePath)?;
        let source_uuid = command.uuid(Attribute::CloneUuid)?;
        let own = self.subvolume.as_ref().map(|(_, uuid)| *uuid);
        let source = if Some(source_uuid) == own {
            open_below(&self.root, source_path, OFlags::RDONLY)?
        } else if Some(source_uuid) == self.parent_uuid {
            if let Some(dir) = &self.parent_dir {
                open_below(dir, source_path, OFlags::RDONLY)?
            } else if let Some(shadow) = &self.shadow {
                let Some(ino) = shadow.parent.ino(source_path) else {
                    return Err(Carry::Misfit(
                        "is cloned from a name the parent does not have",
                    ));
                };
                if shadow.kept.contains_key(&ino) {
                    open_below(&shadow.dir, ino.to_string().as_bytes(), OFlags::RDONLY)?
                } else {
                    let Some(now) = self.tree.path_of(ino) else {
                        return Err(Carry::Misfit("is cloned from a file the stream removed"));
                    };
                    open_below(&self.root, now, OFlags::RDONLY)?
                }
            } else {
                return Err(Carry::Misfit("is cloned from a parent that was not given"));
            }
        } else {
            return Err(Carry::Misfit(
                "is cloned from a subvolume that is neither this one nor its parent",
            ));
        };
        let file = self.file(path)?;
        copy_range(&source, source_offset, file, offset, length)?;
        Ok(())
    }

    fn fallocate(&mut self, command: &Command, path: &[u8]) -> Result<(), Carry> {
        let mode = command.u64(Attribute::FallocateMode)?;
        let offset = command.u64(Attribute::FileOffset)?;
        let length = command.u64(Attribute::Size)?;
        let file = self.file(path)?;
        let mut flags = rustix::fs::FallocateFlags::empty();
        if mode & KEEP_SIZE != 0 {
            flags |= rustix::fs::FallocateFlags::KEEP_SIZE;
        }
        if mode & PUNCH_HOLE != 0 {
            flags |= rustix::fs::FallocateFlags::PUNCH_HOLE;
        }
        match rustix::fs::fallocate(file, flags, offset, length) {
            Ok(()) => {}
            Err(_) if mode & PUNCH_HOLE != 0 => {
                // No holes here: zeros read the same.
                let size = file.metadata()?.len();
                let end = (offset + length).min(size);
                let zeros = vec![0u8; 1 << 20];
                let mut at = offset;
                while at < end {
                    let n = usize::try_from(end - at)
                        .unwrap_or(usize::MAX)
                        .min(zeros.len());
                    file.write_all_at(&zeros[..n], at)?;
                    at += n as u64;
                }
            }
            Err(_) => {
                // No preallocation here: only the size it gives matters.
                if mode & KEEP_SIZE == 0 && file.metadata()?.len() < offset + length {
                    file.set_len(offset + length)?;
                }
            }
        }
        Ok(())
    }
}

/// Where the inode to keep aside is found after the model applied the command: a rename's
/// replaced name is gone from the model but still on disk at the new path.
fn path_for_keep(command: &Command) -> Vec<u8> {
    let attribute = if command.kind() == Kind::Rename {
        Attribute::PathTo
    } else {
        Attribute::Path
    };
    command.get(attribute).unwrap_or_default().to_vec()
}

fn libc_enotsup() -> i32 {
    rustix::io::Errno::OPNOTSUPP.raw_os_error()
}

fn mode_bits(mode: u64) -> u32 {
    u32::try_from(mode & 0o177_777).unwrap_or(0)
}

/// Why carrying out a command failed.
enum Carry {
    Io(io::Error),
    Apply(ApplyError),
    Misfit(&'static str),
}

impl From<io::Error> for Carry {
    fn from(error: io::Error) -> Carry {
        Carry::Io(error)
    }
}

impl From<rustix::io::Errno> for Carry {
    fn from(error: rustix::io::Errno) -> Carry {
        Carry::Io(error.into())
    }
}

impl From<crate::Error> for Carry {
    fn from(error: crate::Error) -> Carry {
        Carry::Apply(ApplyError::Stream(error))
    }
}

/// What a file of this type is in the model.
fn node_of(file_type: std::fs::FileType) -> Node {
    if file_type.is_dir() {
        Node::Directory
    } else if file_type.is_file() {
        Node::File
    } else if file_type.is_symlink() {
        Node::Symlink
    } else {
        Node::Special
    }
}

/// The model of a restored directory: its names, what they are, modes, owners, sizes, times,
/// symlink targets; hard links share an inode. The start of a differential restored into a
/// copy of a directory restored earlier.
pub fn scan(root: &Path) -> io::Result<Tree> {
    let mut tree = Tree::new();
    let mut links: HashMap<(u64, u64), u64> = HashMap::new();
    let mut pending = vec![Vec::new()];
    while let Some(path) = pending.pop() {
        let full = if path.is_empty() {
            root.to_path_buf()
        } else {
            root.join(os(&path))
        };
        let metadata = std::fs::symlink_metadata(&full)?;
        let file_type = metadata.file_type();
        let node = node_of(file_type);
        let mut inode = Inode::new(node);
        inode.mode = u64::from(metadata.mode() & 0o7777);
        inode.uid = u64::from(metadata.uid());
        inode.gid = u64::from(metadata.gid());
        inode.size = metadata.len();
        inode.mtime = Some(crate::Timespec {
            seconds: metadata.mtime(),
            nanoseconds: u32::try_from(metadata.mtime_nsec()).unwrap_or(0),
        });
        inode.rdev = metadata.rdev();
        if node == Node::Symlink {
            inode.target = Some(
                std::fs::read_link(&full)?
                    .into_os_string()
                    .into_encoded_bytes(),
            );
        }
        let key = (metadata.dev(), metadata.ino());
        let known = (node != Node::Directory)
            .then(|| links.get(&key).copied())
            .flatten();
        let ino = tree.insert_found(path.clone(), known, inode);
        links.insert(key, ino);
        if node == Node::Directory {
            for entry in std::fs::read_dir(&full)? {
                let entry = entry?;
                let mut child = path.clone();
                if !child.is_empty() {
                    child.push(b'/');
                }
                child.extend_from_slice(entry.file_name().as_bytes());
                pending.push(child);
            }
        }
    }
    Ok(tree)
}

/// Removes the tree at `path` (nothing there is fine), first giving its directories their
/// owner's permissions: a restore without root may have left one that forbids it (a stream
/// killed while `finish` set the modes).
pub fn remove_tree(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut pending = vec![path.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(metadata) = std::fs::symlink_metadata(&dir) else {
            continue;
        };
        if !metadata.is_dir() {
            continue;
        }
        if metadata.permissions().mode() & 0o700 != 0o700 {
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    pending.push(entry.path());
                }
            }
        }
    }
    match std::fs::remove_dir_all(path) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        result => result,
    }
}

/// Copies the tree at `from` into the new directory `to` (which must not exist): every
/// name, its data (extents shared where the filesystem can, holes kept), hard links as hard
/// links, extended attributes, modes, times, and with `owners` the owners. Without `owners`
/// directories and files keep their owner's write permission (as a [`Receiver`] wants).
pub fn copy_tree(from: &Path, to: &Path, owners: bool) -> io::Result<()> {
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut directories = Vec::new();
    copy_entry(from, to, owners, &mut links, &mut directories)?;
    // Directory times last, the deepest first: filling a directory changes its time.
    for (path, metadata) in directories.iter().rev() {
        set_times(path, metadata)?;
    }
    Ok(())
}

fn copy_entry(
    from: &Path,
    to: &Path,
    owners: bool,
    links: &mut HashMap<(u64, u64), PathBuf>,
    directories: &mut Vec<(PathBuf, std::fs::Metadata)>,
) -> io::Result<()> {
    let metadata = std::fs::symlink_metadata(from)?;
    let file_type = metadata.file_type();
    let key = (metadata.dev(), metadata.ino());
    if !file_type.is_dir() {
        if let Some(first) = links.get(&key) {
            return std::fs::hard_link(first, to);
        }
        if metadata.nlink() > 1 {
            links.insert(key, to.to_path_buf());
        }
    }
    let mode = metadata.mode() & 0o7777;
    let node = node_of(file_type);
    if file_type.is_dir() {
        std::fs::create_dir(to)?;
    } else if file_type.is_file() {
        let source = File::open(from)?;
        let copy = File::options().write(true).create_new(true).open(to)?;
        copy_data(&source, &copy)?;
    } else if file_type.is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(from)?, to)?;
    } else {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            to,
            FileType::from_raw_mode(metadata.mode()),
            Mode::from_raw_mode(mode),
            metadata.rdev(),
        )?;
    }
    copy_xattrs(from, to);
    if owners {
        std::os::unix::fs::lchown(to, Some(metadata.uid()), Some(metadata.gid()))?;
    }
    if !file_type.is_symlink() {
        let mode = if owners { mode } else { relaxed(node, mode) };
        rustix::fs::chmod(to, Mode::from_raw_mode(mode))?;
    }
    if file_type.is_dir() {
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            copy_entry(
                &entry.path(),
                &to.join(entry.file_name()),
                owners,
                links,
                directories,
            )?;
        }
        directories.push((to.to_path_buf(), metadata));
    } else {
        set_times(to, &metadata)?;
    }
    Ok(())
}

fn set_times(path: &Path, metadata: &std::fs::Metadata) -> io::Result<()> {
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: metadata.atime(),
            tv_nsec: metadata.atime_nsec(),
        },
        last_modification: Timespec {
            tv_sec: metadata.mtime(),
            tv_nsec: metadata.mtime_nsec(),
        },
    };
    Ok(rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &times,
        AtFlags::SYMLINK_NOFOLLOW,
    )?)
}

/// Copies what extended attributes can be copied (best effort: the copy is of a tree this
/// restore wrote, whose attributes were set, or noted, when it was written).
fn copy_xattrs(from: &Path, to: &Path) {
    let Ok(size) = rustix::fs::llistxattr_query(from) else {
        return;
    };
    if size == 0 {
        return;
    }
    let mut names = vec![0u8; size];
    let Ok(size) = rustix::fs::llistxattr(from, &mut names) else {
        return;
    };
    for name in names[..size]
        .split(|&b| b == 0)
        .filter(|name| !name.is_empty())
    {
        let mut value = vec![0u8; 1 << 16];
        if let Ok(n) = rustix::fs::lgetxattr(from, os(name), &mut value) {
            let _ =
                rustix::fs::lsetxattr(to, os(name), &value[..n], rustix::fs::XattrFlags::empty());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::{encode, header};

    /// A directory of its own under the system's temporary directory, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir = std::env::temp_dir()
                .join(format!("btrfs2s3-receive-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("work")).unwrap();
            std::fs::create_dir_all(dir.join("outside")).unwrap();
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A command: its kind and attributes.
    type Step = (Kind, Vec<(Attribute, Vec<u8>)>);

    /// A full stream: `subvol`, then `commands`, then `end`.
    fn stream(commands: &[Step]) -> Vec<u8> {
        let mut bytes = header(1);
        bytes.extend(encode(
            Kind::Subvol,
            &[
                (Attribute::Path, b"snap".to_vec()),
                (Attribute::Uuid, vec![7; 16]),
                (Attribute::Ctransid, 1u64.to_le_bytes().to_vec()),
            ],
        ));
        for (kind, attributes) in commands {
            bytes.extend(encode(*kind, attributes));
        }
        bytes.extend(encode(Kind::End, &[]));
        bytes
    }

    fn path(attribute: Attribute, value: &str) -> (Attribute, Vec<u8>) {
        (attribute, value.as_bytes().to_vec())
    }

    fn receive(scratch: &Scratch, bytes: &[u8]) -> Result<Received, ApplyError> {
        let receiver = Receiver::new(
            &scratch.0.join("work"),
            Tree::new(),
            &Parent::None,
            Options::default(),
        )
        .unwrap();
        receiver.receive(bytes, true)
    }

    #[test]
    fn a_stream_cannot_reach_outside_its_directory() {
        let scratch = Scratch::new("escape");
        let outside = scratch.0.join("outside");
        let target = outside.to_string_lossy().into_owned();
        let attempts: Vec<Vec<Step>> = vec![
            vec![(Kind::Mkfile, vec![path(Attribute::Path, "../outside/evil")])],
            vec![(Kind::Mkdir, vec![path(Attribute::Path, "/tmp/evil")])],
            vec![(Kind::Mkfile, vec![path(Attribute::Path, "a//b")])],
            // Through a symbolic link to the directory outside.
            vec![
                (
                    Kind::Symlink,
                    vec![
                        path(Attribute::Path, "link"),
                        path(Attribute::PathLink, &target),
                    ],
                ),
                (Kind::Mkfile, vec![path(Attribute::Path, "link/evil")]),
            ],
            vec![(
                Kind::Link,
                vec![
                    path(Attribute::Path, "here"),
                    path(Attribute::PathLink, "../outside/file"),
                ],
            )],
        ];
        for attempt in attempts {
            let error = receive(&scratch, &stream(&attempt)).unwrap_err();
            assert!(
                error.to_string().contains("does not apply"),
                "{attempt:?}: {error}"
            );
            assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
            std::fs::remove_dir_all(scratch.0.join("work")).unwrap();
            std::fs::create_dir(scratch.0.join("work")).unwrap();
        }
    }

    #[test]
    fn chmod_of_a_symbolic_link_leaves_its_target_alone() {
        let scratch = Scratch::new("chmod");
        let victim = scratch.0.join("outside/victim");
        std::fs::write(&victim, b"x").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        let bytes = stream(&[
            (
                Kind::Symlink,
                vec![
                    path(Attribute::Path, "link"),
                    path(Attribute::PathLink, &victim.to_string_lossy()),
                ],
            ),
            (
                Kind::Chmod,
                vec![
                    path(Attribute::Path, "link"),
                    (Attribute::Mode, 0o777u64.to_le_bytes().to_vec()),
                ],
            ),
        ]);
        receive(&scratch, &bytes).unwrap();
        let mode = std::fs::metadata(&victim).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_tree_with_locked_directories_is_removed() {
        let scratch = Scratch::new("remove");
        let tree = scratch.0.join("work/tree");
        std::fs::create_dir_all(tree.join("a/b")).unwrap();
        std::fs::write(tree.join("a/b/file"), b"x").unwrap();
        for (dir, mode) in [("a/b", 0o000), ("a", 0o500)] {
            std::fs::set_permissions(tree.join(dir), std::fs::Permissions::from_mode(mode))
                .unwrap();
        }
        remove_tree(&tree).unwrap();
        assert!(!tree.exists());
        // Nothing there: nothing to do.
        remove_tree(&tree).unwrap();
    }

    #[test]
    fn files_get_their_data_modes_and_names() {
        let scratch = Scratch::new("files");
        let bytes = stream(&[
            (Kind::Mkdir, vec![path(Attribute::Path, "dir")]),
            (Kind::Mkfile, vec![path(Attribute::Path, "dir/file")]),
            (
                Kind::Write,
                vec![
                    path(Attribute::Path, "dir/file"),
                    (Attribute::FileOffset, 3u64.to_le_bytes().to_vec()),
                    path(Attribute::Data, "abc"),
                ],
            ),
            (
                Kind::Chmod,
                vec![
                    path(Attribute::Path, "dir"),
                    (Attribute::Mode, 0o500u64.to_le_bytes().to_vec()),
                ],
            ),
            (
                Kind::Link,
                vec![
                    path(Attribute::Path, "again"),
                    path(Attribute::PathLink, "dir/file"),
                ],
            ),
        ]);
        let received = receive(&scratch, &bytes).unwrap();
        assert_eq!(received.name, b"snap");
        let work = scratch.0.join("work");
        assert_eq!(std::fs::read(work.join("dir/file")).unwrap(), b"\0\0\0abc");
        assert_eq!(std::fs::read(work.join("again")).unwrap(), b"\0\0\0abc");
        let mode = std::fs::metadata(work.join("dir"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o500);
        std::fs::set_permissions(work.join("dir"), std::fs::Permissions::from_mode(0o700)).unwrap();
    }
}
