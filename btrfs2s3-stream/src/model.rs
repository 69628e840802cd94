//! A model of the tree a stream builds: names and what they are, no data. Applying a stream
//! to it checks that every path a command uses exists when it is used (and every path it
//! creates does not), that directories are removed only when empty, and that the stream
//! ends with its `end` command — what `btrfs receive` would stumble on, found without btrfs.

use std::collections::{BTreeMap, HashMap};

use crate::{Attribute, Command, Error, Kind, Timespec};

/// What a name in the tree is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Node {
    /// A directory.
    Directory,
    /// A regular file.
    File,
    /// A symbolic link.
    Symlink,
    /// A device node, FIFO or socket.
    Special,
}

/// What the stream says of one inode (shared by its hard links).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inode {
    /// What it is.
    pub node: Node,
    /// Its mode (permission bits and the rest `chmod` sets; for a device node, `mknod`'s).
    pub mode: u64,
    /// Its owner.
    pub uid: u64,
    /// Its group.
    pub gid: u64,
    /// Its size: the end of the furthest write, clone or allocation, or what `truncate` set.
    pub size: u64,
    /// Its modification time, once `utimes` set it.
    pub mtime: Option<Timespec>,
    /// A symlink's target.
    pub target: Option<Vec<u8>>,
    /// A device node's device number.
    pub rdev: u64,
}

impl Inode {
    pub(crate) fn new(node: Node) -> Inode {
        Inode {
            node,
            mode: 0,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: None,
            target: None,
            rdev: 0,
        }
    }
}

/// The inode number of a subvolume's root directory.
const ROOT_INO: u64 = 256;

/// `fallocate`'s mode bit that leaves the size alone (`FALLOC_FL_KEEP_SIZE`).
const KEEP_SIZE: u64 = 1;

/// A command that does not apply to the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Misfit {
    /// Where the command starts in the stream.
    pub offset: u64,
    /// The command.
    pub kind: Kind,
    /// The path it is about.
    pub path: Vec<u8>,
    /// What is wrong.
    pub problem: &'static str,
}

impl std::fmt::Display for Misfit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the {:?} command at byte {} does not apply: {:?} {}",
            self.kind,
            self.offset,
            String::from_utf8_lossy(&self.path),
            self.problem
        )
    }
}

impl std::error::Error for Misfit {}

/// The tree of one subvolume as a stream builds it.
#[derive(Debug, Clone, Default)]
pub struct Tree {
    /// Every name, by its path from the subvolume's root (the root is the empty path).
    nodes: BTreeMap<Vec<u8>, Node>,
    /// The inode of each name.
    inos: HashMap<Vec<u8>, u64>,
    /// The names of each inode, kept once [`Tree::index_names`] asked for them.
    names: Option<HashMap<u64, Vec<Vec<u8>>>>,
    /// What the stream said of each inode.
    inodes: HashMap<u64, Inode>,
    /// Inode numbers for names of a parent snapshot this model has not seen.
    next_unknown: u64,
    /// Whether the tree started from a parent snapshot this model has not seen: paths it
    /// does not know may exist there, so only what the stream itself creates is checked.
    unknown_base: bool,
    ended: bool,
}

/// The parent directory of `path` (the root for a name at the top).
fn parent(path: &[u8]) -> &[u8] {
    path.iter()
        .rposition(|&b| b == b'/')
        .map_or(&[][..], |at| &path[..at])
}

impl Tree {
    /// An empty tree, waiting for its `subvol` or `snapshot` command.
    #[must_use]
    pub fn new() -> Tree {
        Tree::default()
    }

    /// A tree that starts from a parent snapshot's tree (a differential stream).
    #[must_use]
    pub fn from_parent(parent: &Tree) -> Tree {
        Tree {
            nodes: parent.nodes.clone(),
            inos: parent.inos.clone(),
            names: None,
            inodes: parent.inodes.clone(),
            next_unknown: parent.next_unknown,
            unknown_base: parent.unknown_base,
            ended: false,
        }
    }

    /// How many names the tree holds, the root included.
    #[must_use]
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the tree holds nothing (not even a root).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// What `path` is, if the tree has it.
    #[must_use]
    pub fn get(&self, path: &[u8]) -> Option<Node> {
        self.nodes.get(path).copied()
    }

    /// What the stream said of the inode behind `path`.
    #[must_use]
    pub fn inode(&self, path: &[u8]) -> Option<&Inode> {
        self.inos.get(path).and_then(|ino| self.inodes.get(ino))
    }

    /// The inode number behind `path` (the stream's, or one the model gave a name it did not
    /// see created): the same for every hard link, and kept across renames.
    #[must_use]
    pub fn ino(&self, path: &[u8]) -> Option<u64> {
        self.inos.get(path).copied()
    }

    /// A path of inode `ino`, if the tree still has one: at once after
    /// [`Tree::index_names`], else by a look at every name.
    #[must_use]
    pub fn path_of(&self, ino: u64) -> Option<&[u8]> {
        match &self.names {
            Some(names) => names.get(&ino)?.iter().min().map(Vec::as_slice),
            None => self
                .nodes
                .keys()
                .find(|path| self.inos.get(*path) == Some(&ino))
                .map(Vec::as_slice),
        }
    }

    /// Keeps an index from inodes to their names from now on, for [`Tree::path_of`] (a
    /// receiver cloning from a parent's files looks them up often).
    pub fn index_names(&mut self) {
        let mut names: HashMap<u64, Vec<Vec<u8>>> = HashMap::new();
        for (path, ino) in &self.inos {
            names.entry(*ino).or_default().push(path.clone());
        }
        self.names = Some(names);
    }

    /// Gives `path` inode `ino`.
    fn bind(&mut self, path: Vec<u8>, ino: u64) {
        if let Some(old) = self.inos.insert(path.clone(), ino) {
            self.forget_name(old, &path);
        }
        if let Some(names) = &mut self.names {
            names.entry(ino).or_default().push(path);
        }
    }

    /// Takes `path`'s inode away; returns it.
    fn unbind(&mut self, path: &[u8]) -> Option<u64> {
        let ino = self.inos.remove(path)?;
        self.forget_name(ino, path);
        Some(ino)
    }

    fn forget_name(&mut self, ino: u64, path: &[u8]) {
        if let Some(names) = &mut self.names
            && let Some(paths) = names.get_mut(&ino)
        {
            if let Some(at) = paths.iter().position(|p| p == path) {
                paths.swap_remove(at);
            }
            if paths.is_empty() {
                names.remove(&ino);
            }
        }
    }

    /// Adds a name found on disk (see [`crate::receive::scan`]); `key` tells hard links apart.
    pub(crate) fn insert_found(&mut self, path: Vec<u8>, ino: Option<u64>, inode: Inode) -> u64 {
        let ino = ino.unwrap_or_else(|| {
            if path.is_empty() {
                ROOT_INO
            } else {
                self.unknown_ino()
            }
        });
        self.add(path, ino, inode);
        ino
    }

    /// Every name with its inode, in path order (the root first, as the empty path).
    pub fn entries(&self) -> impl Iterator<Item = (&[u8], &Inode)> {
        self.nodes.keys().filter_map(|path| {
            let inode = self.inode(path)?;
            Some((path.as_slice(), inode))
        })
    }

    /// The inode behind `path`, to change (a name of an unseen parent gets one).
    fn inode_mut(&mut self, path: &[u8]) -> Option<&mut Inode> {
        let ino = *self.inos.get(path)?;
        self.inodes.get_mut(&ino)
    }

    /// Records what a command says of its path's inode: owner, mode, times, size.
    fn record(&mut self, command: &Command) -> Result<(), Error> {
        let path = command.path(Attribute::Path)?;
        let end = |length: u64| -> Result<u64, Error> {
            Ok(command.u64(Attribute::FileOffset)?.saturating_add(length))
        };
        let size = match command.kind() {
            Kind::Write => Some(end(command.required(Attribute::Data)?.len() as u64)?),
            Kind::EncodedWrite => Some(end(command.u64(Attribute::UnencodedFileLen)?)?),
            Kind::Clone => Some(end(command.u64(Attribute::CloneLen)?)?),
            Kind::UpdateExtent => Some(end(command.u64(Attribute::Size)?)?),
            Kind::Fallocate if command.u64(Attribute::FallocateMode)? & KEEP_SIZE == 0 => {
                Some(end(command.u64(Attribute::Size)?)?)
            }
            _ => None,
        };
        let truncate = if command.kind() == Kind::Truncate {
            Some(command.u64(Attribute::Size)?)
        } else {
            None
        };
        let mode = if command.kind() == Kind::Chmod {
            Some(command.u64(Attribute::Mode)?)
        } else {
            None
        };
        let owner = if command.kind() == Kind::Chown {
            Some((command.u64(Attribute::Uid)?, command.u64(Attribute::Gid)?))
        } else {
            None
        };
        let mtime = if command.kind() == Kind::Utimes {
            Some(command.timespec(Attribute::Mtime)?)
        } else {
            None
        };
        if let Some(inode) = self.inode_mut(path) {
            if let Some(size) = size {
                inode.size = inode.size.max(size);
            }
            if let Some(size) = truncate {
                inode.size = size;
            }
            if let Some(mode) = mode {
                inode.mode = mode;
            }
            if let Some((uid, gid)) = owner {
                inode.uid = uid;
                inode.gid = gid;
            }
            if mtime.is_some() {
                inode.mtime = mtime;
            }
        }
        Ok(())
    }

    /// Whether the stream's `end` command was applied.
    #[must_use]
    pub fn ended(&self) -> bool {
        self.ended
    }

    fn exists(&self, path: &[u8]) -> bool {
        self.unknown_base || self.nodes.contains_key(path)
    }

    fn is_directory(&self, path: &[u8]) -> bool {
        match self.nodes.get(path) {
            Some(node) => *node == Node::Directory,
            None => self.unknown_base,
        }
    }

    /// The names below `path` (a directory).
    fn children(&self, path: &[u8]) -> impl Iterator<Item = &Vec<u8>> {
        let mut prefix = path.to_vec();
        if !prefix.is_empty() {
            prefix.push(b'/');
        }
        self.nodes
            .range(prefix.clone()..)
            .take_while(move |(key, _)| key.starts_with(&prefix))
            .filter(|(key, _)| !key.is_empty())
            .map(|(key, _)| key)
    }

    /// Applies one command.
    pub fn apply(&mut self, command: &Command) -> Result<(), ApplyError> {
        let misfit = |path: &[u8], problem| {
            ApplyError::Misfit(Misfit {
                offset: command.offset(),
                kind: command.kind(),
                path: path.to_vec(),
                problem,
            })
        };
        if self.ended {
            return Err(misfit(b"", "comes after the end command"));
        }
        match command.kind() {
            Kind::Subvol => {
                *self = Tree::new();
                self.add(Vec::new(), ROOT_INO, Inode::new(Node::Directory));
            }
            Kind::Snapshot => {
                if self.nodes.is_empty() {
                    // No parent tree given: check what the stream creates, trust the rest.
                    self.unknown_base = true;
                    self.add(Vec::new(), ROOT_INO, Inode::new(Node::Directory));
                }
            }
            Kind::Mkfile
            | Kind::Mkdir
            | Kind::Mknod
            | Kind::Mkfifo
            | Kind::Mksock
            | Kind::Symlink => {
                let path = command.path(Attribute::Path)?;
                self.create(path, command)
                    .map_err(|problem| misfit(path, problem))?;
            }
            Kind::Rename => {
                let from = command.path(Attribute::Path)?;
                let to = command.path(Attribute::PathTo)?;
                self.rename(from, to)
                    .map_err(|problem| misfit(from, problem))?;
            }
            Kind::Link => {
                let path = command.path(Attribute::Path)?;
                let target = command.path(Attribute::PathLink)?;
                self.link(path, target)
                    .map_err(|(path, problem)| misfit(path, problem))?;
            }
            Kind::Unlink | Kind::Rmdir => {
                let path = command.path(Attribute::Path)?;
                self.remove(path, command.kind() == Kind::Rmdir)
                    .map_err(|problem| misfit(path, problem))?;
            }
            Kind::Clone => {
                let path = command.path(Attribute::Path)?;
                if !self.exists(path) {
                    return Err(misfit(path, "is written but does not exist"));
                }
                // The source may be in another subvolume (the parent snapshot): only a path
                // of this one is checked.
                if command.get(Attribute::CloneUuid).is_none() {
                    let source = command.path(Attribute::ClonePath)?;
                    if !self.exists(source) {
                        return Err(misfit(source, "is cloned from but does not exist"));
                    }
                }
                self.record(command)?;
            }
            Kind::Write
            | Kind::Truncate
            | Kind::Chmod
            | Kind::Chown
            | Kind::Utimes
            | Kind::SetXattr
            | Kind::RemoveXattr
            | Kind::UpdateExtent
            | Kind::Fallocate
            | Kind::Fileattr
            | Kind::EncodedWrite
            | Kind::EnableVerity => {
                let path = command.path(Attribute::Path)?;
                if !self.exists(path) {
                    return Err(misfit(path, "is changed but does not exist"));
                }
                self.record(command)?;
            }
            Kind::End => self.ended = true,
        }
        Ok(())
    }

    /// A hard link `path` to `target`; what does not fit, and where.
    fn link<'p>(
        &mut self,
        path: &'p [u8],
        target: &'p [u8],
    ) -> Result<(), (&'p [u8], &'static str)> {
        if !self.exists(target) {
            return Err((target, "is linked to but does not exist"));
        }
        if self.nodes.contains_key(path) {
            return Err((path, "already exists"));
        }
        if !self.is_directory(parent(path)) {
            return Err((path, "has no directory to be in"));
        }
        let node = self.nodes.get(target).copied().unwrap_or(Node::File);
        let ino = if let Some(ino) = self.inos.get(target) {
            *ino
        } else {
            let ino = self.unknown_ino();
            self.inodes.insert(ino, Inode::new(node));
            ino
        };
        self.nodes.insert(path.to_vec(), node);
        self.bind(path.to_vec(), ino);
        Ok(())
    }

    /// Removes a name (`unlink`) or an empty directory (`rmdir`).
    fn remove(&mut self, path: &[u8], directory: bool) -> Result<(), &'static str> {
        if directory {
            if !self.is_directory(path) {
                return Err("is not a directory (rmdir)");
            }
            if self.children(path).next().is_some() {
                return Err("is removed but not empty");
            }
        } else {
            if self.nodes.get(path) == Some(&Node::Directory) {
                return Err("is a directory (unlink)");
            }
            if !self.exists(path) {
                return Err("is removed but does not exist");
            }
        }
        self.nodes.remove(path);
        self.unbind(path);
        Ok(())
    }

    fn add(&mut self, path: Vec<u8>, ino: u64, inode: Inode) {
        self.nodes.insert(path.clone(), inode.node);
        self.bind(path, ino);
        self.inodes.entry(ino).or_insert(inode);
    }

    fn create(&mut self, path: &[u8], command: &Command) -> Result<(), &'static str> {
        if path.is_empty() {
            return Err("is the root");
        }
        if self.nodes.contains_key(path) {
            return Err("already exists");
        }
        if !self.is_directory(parent(path)) {
            return Err("has no directory to be in");
        }
        let node = match command.kind() {
            Kind::Mkdir => Node::Directory,
            Kind::Mkfile => Node::File,
            Kind::Symlink => Node::Symlink,
            _ => Node::Special,
        };
        let mut inode = Inode::new(node);
        inode.target = command.get(Attribute::PathLink).map(<[u8]>::to_vec);
        if let Ok(mode) = command.u64(Attribute::Mode) {
            inode.mode = mode;
        }
        if let Ok(rdev) = command.u64(Attribute::Rdev) {
            inode.rdev = rdev;
        }
        let ino = match command.u64(Attribute::Ino) {
            Ok(ino) => ino,
            Err(_) => self.unknown_ino(),
        };
        // A new inode: what an earlier one of that number said is gone.
        self.inodes.insert(ino, inode.clone());
        self.add(path.to_vec(), ino, inode);
        Ok(())
    }

    /// An inode number for a name the model has not seen created.
    pub(crate) fn unknown_ino(&mut self) -> u64 {
        self.next_unknown += 1;
        u64::MAX - self.next_unknown
    }

    fn rename(&mut self, from: &[u8], to: &[u8]) -> Result<(), &'static str> {
        if from.is_empty() || to.is_empty() {
            return Err("renames the root");
        }
        if !self.exists(from) {
            return Err("is renamed but does not exist");
        }
        if !self.is_directory(parent(to)) {
            return Err("is renamed into no directory");
        }
        if to.starts_with(from) && to.get(from.len()) == Some(&b'/') {
            return Err("is renamed into itself");
        }
        if self.nodes.get(to) == Some(&Node::Directory) && self.children(to).next().is_some() {
            return Err("is renamed over a directory that is not empty");
        }
        let node = self.nodes.remove(from);
        let ino = self.unbind(from);
        // A directory moves with everything below it.
        let below: Vec<Vec<u8>> = self.children(from).cloned().collect();
        // Whatever the new name held is replaced (as rename(2) replaces a file).
        self.nodes.remove(to);
        self.unbind(to);
        for old in below {
            let mut new = to.to_vec();
            new.extend_from_slice(&old[from.len()..]);
            if let Some(child) = self.nodes.remove(&old) {
                self.nodes.insert(new.clone(), child);
            }
            if let Some(child) = self.unbind(&old) {
                self.bind(new, child);
            }
        }
        let (node, ino) = if let (Some(node), Some(ino)) = (node, ino) {
            (node, ino)
        } else {
            // A name of the parent snapshot the model has not seen.
            let ino = self.unknown_ino();
            self.inodes.insert(ino, Inode::new(Node::File));
            (Node::File, ino)
        };
        self.nodes.insert(to.to_vec(), node);
        self.bind(to.to_vec(), ino);
        Ok(())
    }
}

/// Why a stream does not apply.
#[derive(Debug)]
pub enum ApplyError {
    /// The stream itself is broken.
    Stream(Error),
    /// A command does not fit the tree.
    Misfit(Misfit),
    /// A command could not be carried out on the directory it is applied to.
    Write(WriteFailure),
}

/// A command that the filesystem refused (see [`crate::receive`]).
#[derive(Debug)]
pub struct WriteFailure {
    /// Where the command starts in the stream.
    pub offset: u64,
    /// The command.
    pub kind: Kind,
    /// The path it is about.
    pub path: Vec<u8>,
    /// Why.
    pub source: std::io::Error,
}

impl std::fmt::Display for WriteFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the {:?} command at byte {} failed on {:?}: {}",
            self.kind,
            self.offset,
            String::from_utf8_lossy(&self.path),
            self.source
        )
    }
}

impl std::error::Error for WriteFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl From<Error> for ApplyError {
    fn from(error: Error) -> ApplyError {
        ApplyError::Stream(error)
    }
}

impl std::fmt::Display for ApplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApplyError::Stream(error) => error.fmt(f),
            ApplyError::Misfit(misfit) => misfit.fmt(f),
            ApplyError::Write(failure) => failure.fmt(f),
        }
    }
}

impl std::error::Error for ApplyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ApplyError::Stream(error) => Some(error),
            ApplyError::Misfit(misfit) => Some(misfit),
            ApplyError::Write(failure) => Some(failure),
        }
    }
}

/// Reads a whole stream and applies it to `tree` (a new [`Tree`] for a full stream, or
/// [`Tree::from_parent`] for a differential): every checksum, every path, and the end.
/// Returns how many commands were applied.
pub fn check(reader: impl std::io::Read, tree: &mut Tree) -> Result<u64, ApplyError> {
    let mut parser = crate::Parser::new(reader)?;
    let mut commands = 0;
    while let Some(command) = parser.next_command()? {
        tree.apply(&command)?;
        commands += 1;
    }
    Ok(commands)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Parser, encode, header};

    /// Commands from `(kind, path, second path)`, as a parsed stream gives them.
    fn commands(steps: &[(Kind, &str, &str)]) -> Vec<Command> {
        let mut bytes = header(1);
        for (kind, path, other) in steps {
            let mut attributes = vec![(Attribute::Path, path.as_bytes().to_vec())];
            let number = |n: u64| n.to_le_bytes().to_vec();
            let mut time = number(1_700_000_000);
            time.extend(7u32.to_le_bytes());
            match kind {
                Kind::Rename => attributes.push((Attribute::PathTo, other.as_bytes().to_vec())),
                Kind::Link => attributes.push((Attribute::PathLink, other.as_bytes().to_vec())),
                Kind::Clone => attributes.extend([
                    (Attribute::FileOffset, number(0)),
                    (Attribute::CloneLen, number(4096)),
                    (Attribute::ClonePath, other.as_bytes().to_vec()),
                    (Attribute::CloneOffset, number(0)),
                ]),
                Kind::Write => attributes.extend([
                    (Attribute::FileOffset, number(100)),
                    (Attribute::Data, b"data".to_vec()),
                ]),
                Kind::Utimes => attributes.extend([
                    (Attribute::Atime, time.clone()),
                    (Attribute::Mtime, time.clone()),
                    (Attribute::Ctime, time),
                ]),
                Kind::Chmod => attributes.push((Attribute::Mode, number(0o640))),
                _ => {}
            }

            bytes.extend(encode(*kind, &attributes));
        }
        let mut parser = Parser::new(bytes.as_slice()).unwrap();
        let mut commands = Vec::new();
        while let Ok(Some(command)) = parser.next_command() {
            commands.push(command);
        }
        commands
    }

    /// Applies `steps` to `tree`; the index and problem of the first that does not fit.
    fn apply(tree: &mut Tree, steps: &[(Kind, &str, &str)]) -> Result<(), (usize, &'static str)> {
        for (index, command) in commands(steps).iter().enumerate() {
            match tree.apply(command) {
                Ok(()) => {}
                Err(ApplyError::Misfit(misfit)) => return Err((index, misfit.problem)),
                Err(error) => panic!("{error}"),
            }
        }
        Ok(())
    }

    const FULL: &[(Kind, &str, &str)] = &[
        (Kind::Subvol, "home", ""),
        (Kind::Mkdir, "o257-7-0", ""),
        (Kind::Rename, "o257-7-0", "d"),
        (Kind::Mkfile, "o258-7-0", ""),
        (Kind::Rename, "o258-7-0", "d/f"),
        (Kind::Write, "d/f", ""),
        (Kind::Link, "d/g", "d/f"),
        (Kind::Clone, "d/g", "d/f"),
        (Kind::Symlink, "l", ""),
        (Kind::Utimes, "", ""),
    ];

    #[test]
    fn a_full_stream_builds_its_tree() {
        let mut tree = Tree::new();
        apply(&mut tree, FULL).unwrap();
        assert_eq!(tree.get(b"d"), Some(Node::Directory));
        assert_eq!(tree.get(b"d/g"), Some(Node::File));
        assert_eq!(tree.get(b"o257-7-0"), None);
        assert_eq!(tree.len(), 5, "the root, d, d/f, d/g, l");
        // Hard links share their inode: the clone after the write made it 4096 bytes.
        let inode = tree.inode(b"d/g").unwrap();
        assert_eq!((inode.node, inode.size), (Node::File, 4096));
        assert_eq!(tree.inode(b"d/f"), Some(inode));
        let root = tree.inode(b"").unwrap();
        assert_eq!(
            root.mtime.map(|t| (t.seconds, t.nanoseconds)),
            Some((1_700_000_000, 7))
        );
        assert_eq!(tree.entries().count(), 5);
        // A directory moves with what is in it; a non-empty one cannot be removed.
        apply(
            &mut tree,
            &[(Kind::Rename, "d", "e"), (Kind::Unlink, "e/f", "")],
        )
        .unwrap();
        assert_eq!(tree.get(b"e/g"), Some(Node::File));
        assert_eq!(
            apply(&mut tree, &[(Kind::Rmdir, "e", "")]),
            Err((0, "is removed but not empty"))
        );
        apply(
            &mut tree,
            &[
                (Kind::Unlink, "e/g", ""),
                (Kind::Rmdir, "e", ""),
                (Kind::End, "", ""),
            ],
        )
        .unwrap();
        assert!(tree.ended());
        assert_eq!(
            apply(&mut tree, &[(Kind::Write, "l", "")]),
            Err((0, "comes after the end command"))
        );
    }

    #[test]
    fn commands_that_do_not_fit_are_told_with_their_path() {
        for (steps, expected) in [
            (
                vec![(Kind::Write, "nowhere", "")],
                (0, "is changed but does not exist"),
            ),
            (
                vec![(Kind::Mkfile, "no/dir", "")],
                (0, "has no directory to be in"),
            ),
            (
                vec![(Kind::Mkfile, "f", ""), (Kind::Mkfile, "f", "")],
                (1, "already exists"),
            ),
            (
                vec![(Kind::Mkfile, "f", ""), (Kind::Rmdir, "f", "")],
                (1, "is not a directory (rmdir)"),
            ),
            (
                vec![(Kind::Mkdir, "d", ""), (Kind::Unlink, "d", "")],
                (1, "is a directory (unlink)"),
            ),
            (
                vec![(Kind::Rename, "a", "b")],
                (0, "is renamed but does not exist"),
            ),
            (
                vec![(Kind::Mkdir, "d", ""), (Kind::Rename, "d", "d/e")],
                (1, "is renamed into itself"),
            ),
            (
                vec![(Kind::Link, "a", "b")],
                (0, "is linked to but does not exist"),
            ),
            (
                vec![(Kind::Mkfile, "f", ""), (Kind::Clone, "f", "g")],
                (1, "is cloned from but does not exist"),
            ),
        ] {
            let mut tree = Tree::new();
            let mut all = vec![(Kind::Subvol, "s", "")];
            all.extend(steps.iter().copied());
            let result = apply(&mut tree, &all).map_err(|(index, problem)| (index - 1, problem));
            assert_eq!(result, Err(expected), "{steps:?}");
        }
        let misfit = {
            let mut tree = Tree::new();
            let commands = commands(&[(Kind::Subvol, "s", ""), (Kind::Write, "x/y", "")]);
            tree.apply(&commands[0]).unwrap();
            tree.apply(&commands[1]).unwrap_err()
        };
        assert_eq!(
            misfit.to_string(),
            "the Write command at byte 32 does not apply: \"x/y\" is changed but does not exist"
        );
    }

    #[test]
    fn a_differential_applies_to_its_parents_tree() {
        let mut full = Tree::new();
        apply(&mut full, FULL).unwrap();
        let diff = [
            (Kind::Snapshot, "home.2", ""),
            (Kind::Unlink, "l", ""),
            (Kind::Rename, "d", "e"),
            (Kind::Write, "e/f", ""),
        ];
        apply(&mut Tree::from_parent(&full), &diff).unwrap();
        // Against another tree it does not fit.
        let mut other = Tree::new();
        apply(&mut other, &[(Kind::Subvol, "x", "")]).unwrap();
        assert_eq!(
            apply(&mut Tree::from_parent(&other), &diff),
            Err((1, "is removed but does not exist"))
        );
        // Without a parent tree, what the parent had is trusted; what the stream makes is not.
        let mut unknown = Tree::new();
        apply(&mut unknown, &diff).unwrap();
        assert_eq!(
            apply(
                &mut unknown,
                &[(Kind::Mkfile, "n", ""), (Kind::Mkfile, "n", "")]
            ),
            Err((1, "already exists"))
        );
    }

    proptest::proptest! {
        /// With its index of names, `path_of` answers as a look at every name does, whatever
        /// names come, go and move.
        #[test]
        fn the_index_of_names_agrees_with_a_look_at_every_name(
            steps in proptest::collection::vec((0..5usize, 0..6usize, 0..6usize), 1..60)
        ) {
            const NAMES: [&str; 6] = ["a", "b", "a/c", "b/d", "a/c/e", "f"];
            let kinds = [Kind::Mkdir, Kind::Mkfile, Kind::Rename, Kind::Link, Kind::Unlink];
            let mut indexed = Tree::new();
            let mut plain = Tree::new();
            let start = commands(&[(Kind::Subvol, "home", "")]);
            indexed.apply(&start[0]).unwrap();
            plain.apply(&start[0]).unwrap();
            indexed.index_names();
            for (kind, path, other) in steps {
                let step = [(kinds[kind], NAMES[path], NAMES[other])];
                let command = &commands(&step)[0];
                let (a, b) = (indexed.apply(command).is_ok(), plain.apply(command).is_ok());
                proptest::prop_assert_eq!(a, b);
                for ino in plain.inos.values() {
                    proptest::prop_assert_eq!(indexed.path_of(*ino), plain.path_of(*ino));
                }
            }
        }
    }
}
