//! btrfs2s3's own receiver against `btrfs receive`, the oracle: generated histories of
//! changes on real btrfs, snapshotted after each step and sent (full, then differentials; some
//! with protocol 2 and compressed extents), are received by `btrfs receive` on btrfs and
//! applied by `btrfs2s3_stream::receive` to plain directories on tmpfs and ext4, both one
//! directory per snapshot and in place; every snapshot's manifest must match.
//!
//! `BTRFS2S3_HISTORIES` sets how many histories run (default 300); `BTRFS2S3_HISTORY_SEED`
//! runs one seed alone (a failure names its seed).
// Tests fail by panicking, helpers included.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use btrfs2s3_stream::model::Tree;
use btrfs2s3_stream::receive::{Options, Parent, Receiver, copy_tree};
use btrfs2s3_stream::{Attribute, Kind};
use btrfs2s3_tests::{TestEnv, unique_name};
use support::{directory_times, manifest, run, without_owners};

/// splitmix64: small, seedable, good enough to pick operations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            None
        } else {
            Some(&items[usize::try_from(self.below(items.len() as u64)).unwrap()])
        }
    }

    fn bytes(&mut self, length: usize) -> Vec<u8> {
        if self.below(2) == 0 {
            // Text, which compresses (protocol 2 sends it compressed).
            let word = self.below(1000);
            let phrase = format!("line {word} of many alike\n");
            phrase.bytes().cycle().take(length).collect()
        } else {
            (0..length).map(|_| self.next().to_le_bytes()[0]).collect()
        }
    }

    fn length(&mut self) -> usize {
        match self.below(6) {
            0 => 0,
            1 | 2 => usize::try_from(self.below(5000)).unwrap(),
            3 | 4 => usize::try_from(self.below(300_000)).unwrap(),
            _ => usize::try_from(4096 * self.below(64)).unwrap(),
        }
    }
}

/// What a history's source looks like now.
struct Listing {
    dirs: Vec<PathBuf>,
    files: Vec<PathBuf>,
    others: Vec<PathBuf>,
}

fn list(root: &Path) -> Listing {
    let mut listing = Listing {
        dirs: vec![PathBuf::new()],
        files: Vec::new(),
        others: Vec::new(),
    };
    let mut pending = vec![PathBuf::new()];
    while let Some(dir) = pending.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(root.join(&dir))
            .unwrap()
            .map(|e| e.unwrap())
            .collect();
        entries.sort_by_key(std::fs::DirEntry::file_name);
        for entry in entries {
            let path = dir.join(entry.file_name());
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                listing.dirs.push(path.clone());
                pending.push(path);
            } else if kind.is_file() {
                listing.files.push(path);
            } else {
                listing.others.push(path);
            }
        }
    }
    listing
}

/// One random change to the tree at `root`.
#[allow(clippy::too_many_lines)]
fn change(rng: &mut Rng, root: &Path, counter: &mut u32) {
    let listing = list(root);
    *counter += 1;
    let fresh = |rng: &mut Rng, counter: u32| -> PathBuf {
        let dir = rng.pick(&listing.dirs).unwrap().clone();
        dir.join(format!("n{counter}"))
    };
    let open = |path: &Path| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(root.join(path))
            .unwrap()
    };
    match rng.below(25) {
        0..=2 => {
            let path = fresh(rng, *counter);
            let length = rng.length();
            let data = rng.bytes(length);
            if rng.below(4) == 0 {
                // Sparse: data after a hole.
                let file = std::fs::File::create(root.join(&path)).unwrap();
                std::os::unix::fs::FileExt::write_all_at(&file, &data, rng.below(4 << 20)).unwrap();
            } else {
                std::fs::write(root.join(&path), data).unwrap();
            }
        }
        3 | 4 => {
            if let Some(path) = rng.pick(&listing.files) {
                let file = open(path);
                let size = file.metadata().unwrap().len();
                let length = rng.length().min(200_000);
                let data = rng.bytes(length);
                std::os::unix::fs::FileExt::write_all_at(&file, &data, rng.below(size + 1))
                    .unwrap();
            }
        }
        5 => {
            if let Some(path) = rng.pick(&listing.files) {
                let size = rng.below(400_000);
                open(path).set_len(size).unwrap();
            }
        }
        6 => {
            if let Some(path) = rng.pick(&listing.files) {
                let file = open(path);
                let size = file.metadata().unwrap().len();
                let offset = rng.below(size + 1);
                let length = rng.below(200_000) + 1;
                rustix::fs::fallocate(
                    &file,
                    rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
                    offset,
                    length,
                )
                .unwrap();
            }
        }
        7 => {
            if let Some(path) = rng.pick(&listing.files) {
                let link = fresh(rng, *counter);
                std::fs::hard_link(root.join(path), root.join(link)).unwrap();
            }
        }
        8 | 9 => {
            // A rename of anything but the root, never into itself.
            let mut all: Vec<PathBuf> = listing.files.clone();
            all.extend(listing.others.iter().cloned());
            all.extend(listing.dirs.iter().skip(1).cloned());
            if let Some(from) = rng.pick(&all) {
                let to = fresh(rng, *counter);
                if !to.starts_with(from) {
                    std::fs::rename(root.join(from), root.join(to)).unwrap();
                }
            }
        }
        10 => {
            // Two names swap.
            if let (Some(a), Some(b)) = (rng.pick(&listing.files), rng.pick(&listing.files))
                && a != b
            {
                let temporary = root.join(format!("swap{counter}"));
                std::fs::rename(root.join(a), &temporary).unwrap();
                std::fs::rename(root.join(b), root.join(a)).unwrap();
                std::fs::rename(&temporary, root.join(b)).unwrap();
            }
        }
        11 => {
            let path = fresh(rng, *counter);
            std::fs::create_dir(root.join(&path)).unwrap();
            if rng.below(2) == 0 {
                std::fs::create_dir(root.join(path).join("inner")).unwrap();
            }
        }
        12 => {
            let mut gone: Vec<PathBuf> = listing.files.clone();
            gone.extend(listing.others.iter().cloned());
            if let Some(path) = rng.pick(&gone) {
                std::fs::remove_file(root.join(path)).unwrap();
            }
        }
        13 => {
            if let Some(dir) = rng.pick(&listing.dirs[1..]) {
                std::fs::remove_dir_all(root.join(dir)).unwrap();
            }
        }
        14 => {
            let path = fresh(rng, *counter);
            let target = format!("../target{}", rng.below(10));
            std::os::unix::fs::symlink(target, root.join(path)).unwrap();
        }
        15 => {
            let path = fresh(rng, *counter);
            let (kind, rdev) = match rng.below(3) {
                0 => (rustix::fs::FileType::Fifo, 0),
                1 => (
                    rustix::fs::FileType::CharacterDevice,
                    rustix::fs::makedev(1, 3),
                ),
                _ => (
                    rustix::fs::FileType::BlockDevice,
                    rustix::fs::makedev(7, 200),
                ),
            };
            rustix::fs::mknodat(
                rustix::fs::CWD,
                root.join(path),
                kind,
                rustix::fs::Mode::from_raw_mode(0o640),
                rdev,
            )
            .unwrap();
        }
        16 | 23 => {
            let mut all: Vec<PathBuf> = listing.files.clone();
            all.extend(listing.dirs.iter().cloned());
            if let Some(path) = rng.pick(&all) {
                let name = format!("user.k{}", rng.below(3));
                let length = usize::try_from(rng.below(40)).unwrap();
                let value = rng.bytes(length);
                let target = root.join(path);
                let mut names = vec![0u8; 4096];
                let n = rustix::fs::llistxattr(&target, &mut names).unwrap();
                let existing: Vec<&[u8]> = names[..n]
                    .split(|&b| b == 0)
                    .filter(|name| name.starts_with(b"user."))
                    .collect();
                if rng.below(2) == 0
                    && let Some(name) = rng.pick(&existing)
                {
                    rustix::fs::lremovexattr(&target, std::ffi::OsStr::from_bytes(name)).unwrap();
                } else {
                    rustix::fs::lsetxattr(
                        &target,
                        name.as_str(),
                        &value,
                        rustix::fs::XattrFlags::empty(),
                    )
                    .unwrap();
                }
            }
        }
        17 => {
            let mut all: Vec<PathBuf> = listing.files.clone();
            all.extend(listing.dirs.iter().cloned());
            if let Some(path) = rng.pick(&all) {
                let modes = [
                    0o644, 0o600, 0o755, 0o4755, 0o2750, 0o1777, 0o444, 0o500, 0o000,
                ];
                let mode = *rng.pick(&modes).unwrap();
                std::fs::set_permissions(root.join(path), std::fs::Permissions::from_mode(mode))
                    .unwrap();
            }
        }
        18 => {
            let mut all: Vec<PathBuf> = listing.files.clone();
            all.extend(listing.dirs.iter().cloned());
            all.extend(listing.others.iter().cloned());
            if let Some(path) = rng.pick(&all) {
                let ids = [0, 1, 1000, 65534];
                std::os::unix::fs::lchown(
                    root.join(path),
                    rng.pick(&ids).copied(),
                    rng.pick(&ids).copied(),
                )
                .unwrap();
            }
        }
        19 => {
            if let Some(path) = rng.pick(&listing.files) {
                let seconds = i64::try_from(1_000_000_000 + rng.below(700_000_000)).unwrap();
                let time = rustix::fs::Timespec {
                    tv_sec: seconds,
                    tv_nsec: i64::try_from(rng.below(1_000_000_000)).unwrap(),
                };
                rustix::fs::utimensat(
                    rustix::fs::CWD,
                    root.join(path),
                    &rustix::fs::Timestamps {
                        last_access: time,
                        last_modification: time,
                    },
                    rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
                )
                .unwrap();
            }
        }
        20..=22 => {
            // A reflink copy (clones within the snapshot, or from the parent's).
            if let Some(path) = rng.pick(&listing.files) {
                let copy = fresh(rng, *counter);
                run(Command::new("cp")
                    .arg("--reflink=always")
                    .arg(root.join(path))
                    .arg(root.join(copy)));
                // The original goes or changes: the copy's extents are then only the parent
                // snapshot's to clone from.
                match rng.below(3) {
                    0 => std::fs::remove_file(root.join(path)).unwrap(),
                    1 => std::fs::write(root.join(path), rng.bytes(100)).unwrap(),
                    _ => {}
                }
            }
        }
        _ => {
            // A file becomes a directory of the same name.
            if let Some(path) = rng.pick(&listing.files) {
                std::fs::remove_file(root.join(path)).unwrap();
                std::fs::create_dir(root.join(path)).unwrap();
                std::fs::write(root.join(path).join("inside"), b"inside").unwrap();
            }
        }
    }
}

/// Where the plain restores go: tmpfs or ext4, by turns.
fn plain_base(seed: u64) -> PathBuf {
    let base = if seed.is_multiple_of(2) {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(unique_name("oracle"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Applies `streams` (full first) with btrfs2s3's receiver: one directory per snapshot under
/// `dest`, or with `in_place` one working tree; returns the restored directories' paths (the
/// last only, in place).
fn plain_restore(dest: &Path, streams: &[PathBuf], in_place: bool) -> Vec<PathBuf> {
    let mut restored = Vec::new();
    let mut previous: Option<(PathBuf, uuid::Uuid, Tree)> = None;
    let work = dest.join("work");
    for (index, stream) in streams.iter().enumerate() {
        let shadow = dest.join("shadow");
        let (tree, parent) = match &previous {
            None => {
                std::fs::create_dir(&work).unwrap();
                (Tree::new(), Parent::None)
            }
            Some((_, uuid, tree)) if in_place => {
                std::fs::create_dir(&shadow).unwrap();
                (
                    Tree::from_parent(tree),
                    Parent::InPlace {
                        uuid: *uuid,
                        shadow: shadow.clone(),
                    },
                )
            }
            Some((dir, uuid, tree)) => {
                copy_tree(dir, &work, true).unwrap();
                (
                    Tree::from_parent(tree),
                    Parent::Dir {
                        uuid: *uuid,
                        path: dir.clone(),
                    },
                )
            }
        };
        let last = index + 1 == streams.len();
        let receiver = Receiver::new(
            &work,
            tree,
            &parent,
            Options {
                owners: true,
                data: None,
            },
        )
        .unwrap();
        let reader = std::io::BufReader::new(std::fs::File::open(stream).unwrap());
        let outcome = receiver
            .receive(reader, last || !in_place)
            .unwrap_or_else(|error| panic!("{}: {error}", stream.display()));
        if shadow.exists() {
            std::fs::remove_dir_all(&shadow).unwrap();
        }
        let name = String::from_utf8(outcome.name).unwrap();
        let dir = dest.join(&name);
        if in_place {
            if last {
                std::fs::rename(&work, &dir).unwrap();
                restored.push(dir.clone());
            }
        } else {
            std::fs::rename(&work, &dir).unwrap();
            restored.push(dir.clone());
        }
        previous = Some((dir, outcome.uuid, outcome.tree));
    }
    restored
}

/// The first lines where two manifests differ.
fn differences(expected: &[String], actual: &[String]) -> String {
    let mut out = String::new();
    for line in expected
        .iter()
        .filter(|line| !actual.contains(line))
        .take(8)
    {
        let _ = write!(out, "\n  - {line}");
    }
    for line in actual
        .iter()
        .filter(|line| !expected.contains(line))
        .take(8)
    {
        let _ = write!(out, "\n  + {line}");
    }
    out
}

/// How often each command kind came up, and clones from the parent snapshot.
type Tally = std::sync::Mutex<BTreeMap<String, u64>>;

fn tally(streams: &[PathBuf], counts: &Tally) {
    let mut counts = counts.lock().unwrap();
    for stream in streams {
        let reader = std::io::BufReader::new(std::fs::File::open(stream).unwrap());
        let mut parser = btrfs2s3_stream::Parser::new(reader).unwrap();
        let mut own = None;
        while let Some(command) = parser.next_command().unwrap() {
            let kind = command.kind();
            if matches!(kind, Kind::Subvol | Kind::Snapshot) {
                own = Some(command.uuid(Attribute::Uuid).unwrap());
            }
            *counts.entry(format!("{kind:?}")).or_default() += 1;
            if kind == Kind::Clone && Some(command.uuid(Attribute::CloneUuid).unwrap()) != own {
                *counts
                    .entry("Clone from the parent".to_owned())
                    .or_default() += 1;
            }
            if kind == Kind::EncodedWrite {
                let compression = match command.u64(Attribute::Compression).unwrap() {
                    0 => "none",
                    1 => "zlib",
                    2 => "zstd",
                    _ => "lzo",
                };
                *counts
                    .entry(format!("EncodedWrite {compression}"))
                    .or_default() += 1;
            }
        }
    }
}

/// What a history is compared by.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Check {
    /// As root: every way of restoring, and extracts.
    Root,
    /// As a user without root (`nobody`), the `apply` example in place: the same but for
    /// owners and device nodes.
    User,
}

/// One history: generated, snapshotted, sent, received both ways and compared.
fn history(env: &TestEnv, seed: u64, counts: &Tally, check: Check) {
    let mut rng = Rng(seed);
    let dir = env.btrfs.join(unique_name("oracle"));
    std::fs::create_dir(&dir).unwrap();
    let source = dir.join("source");
    run(Command::new("btrfs")
        .args(["subvolume", "create"])
        .arg(&source));
    // Some histories on compressed files, sent with protocol 2 and compressed extents.
    let compression = match seed % 4 {
        0 => Some("zstd"),
        1 => Some("zlib"),
        2 => Some("lzo"),
        _ => None,
    };
    if let Some(compression) = compression {
        run(Command::new("btrfs")
            .args(["property", "set"])
            .arg(&source)
            .args(["compression", compression]));
    }
    let steps = 2 + rng.below(3);
    let mut counter = 0;
    let mut streams = Vec::new();
    let mut snapshots: Vec<PathBuf> = Vec::new();
    for step in 0..steps {
        let changes = if step == 0 { 12 } else { 1 + rng.below(8) };
        for _ in 0..changes {
            change(&mut rng, &source, &mut counter);
        }
        let snapshot = dir.join(format!("snap{step}"));
        run(Command::new("btrfs")
            .args(["subvolume", "snapshot", "-r"])
            .arg(&source)
            .arg(&snapshot));
        let stream = dir.join(format!("stream{step}"));
        let mut sender = Command::new("btrfs");
        sender.args(["send", "-q"]);
        if compression.is_some() {
            sender.args(["--proto", "2", "--compressed-data"]);
        }
        if let Some(parent) = snapshots.last() {
            sender.arg("-p").arg(parent);
        }
        run(sender.arg("-f").arg(&stream).arg(&snapshot));
        snapshots.push(snapshot);
        streams.push(stream);
    }
    tally(&streams, counts);
    // The oracle.
    let received = env.btrfs_receive.join(unique_name("oracle"));
    std::fs::create_dir(&received).unwrap();
    for stream in &streams {
        run(Command::new("btrfs")
            .args(["receive", "-q", "-f"])
            .arg(stream)
            .arg(&received));
    }
    let plain = plain_base(seed);
    let what = format!("seed {seed} ({compression:?})");
    match check {
        Check::Root => {
            compare(&what, &streams, &snapshots, &received, &plain);
            extract_some(&mut rng, &what, &streams, &received, &plain);
            refuse_damage(&mut rng, &what, &streams[0], &plain);
        }
        Check::User => as_user(&what, &streams, &received, &plain),
    }
    // Clean up: subvolumes, then the plain directories.
    for subvolume in std::fs::read_dir(&received).unwrap() {
        run(Command::new("btrfs")
            .args(["subvolume", "delete"])
            .arg(subvolume.unwrap().path()));
    }
    std::fs::remove_dir(&received).unwrap();
    for subvolume in snapshots.iter().chain([&source]) {
        run(Command::new("btrfs")
            .args(["subvolume", "delete"])
            .arg(subvolume));
    }
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&plain).unwrap();
}

/// Extracts a few random paths of the last snapshot as `extract` does (a first pass for the
/// clones, a second with only the needed data, in place) and compares them with what `btrfs
/// receive` made; files whose data was not needed stay empty.
fn extract_some(rng: &mut Rng, what: &str, streams: &[PathBuf], received: &Path, plain: &Path) {
    use btrfs2s3_stream::extract;
    let mut tree = Tree::new();
    let mut chain = Vec::new();
    for (index, stream) in streams.iter().enumerate() {
        let mut next = if index == 0 {
            Tree::new()
        } else {
            Tree::from_parent(&tree)
        };
        let reader = std::io::BufReader::new(std::fs::File::open(stream).unwrap());
        chain.push(extract::read(reader, &mut next).unwrap());
        tree = next;
    }
    let names: Vec<Vec<u8>> = tree
        .entries()
        .map(|(path, _)| path.to_vec())
        .filter(|path| !path.is_empty())
        .collect();
    let mut wanted: Vec<Vec<u8>> = Vec::new();
    for _ in 0..3 {
        if let Some(path) = rng.pick(&names)
            && !wanted
                .iter()
                .any(|w| extract::is_below(path, w) || extract::is_below(w, path))
        {
            wanted.push(path.clone());
        }
    }
    let paths: Vec<&[u8]> = wanted.iter().map(Vec::as_slice).collect();
    let needed = extract::needed(&tree, &paths, &chain);
    let work = plain.join("extract");
    let shadow = plain.join("extract-shadow");
    std::fs::create_dir(&work).unwrap();
    let mut model = Tree::new();
    let mut uuid = None;
    for (index, (stream, data)) in streams.iter().zip(&needed).enumerate() {
        let parent = match uuid {
            None => Parent::None,
            Some(uuid) => {
                let _ = std::fs::remove_dir_all(&shadow);
                std::fs::create_dir(&shadow).unwrap();
                Parent::InPlace {
                    uuid,
                    shadow: shadow.clone(),
                }
            }
        };
        let start = if index == 0 {
            Tree::new()
        } else {
            Tree::from_parent(&model)
        };
        let options = Options {
            owners: true,
            data: Some(data.clone()),
        };
        let applier = Receiver::new(&work, start, &parent, options).unwrap();
        let reader = std::io::BufReader::new(std::fs::File::open(stream).unwrap());
        let done = applier
            .receive(reader, index + 1 == streams.len())
            .unwrap_or_else(|error| panic!("{what}: extract: {error}"));
        uuid = Some(done.uuid);
        model = done.tree;
    }
    let last = received.join(format!("snap{}", streams.len() - 1));
    for path in &wanted {
        let relative = PathBuf::from(String::from_utf8_lossy(path).as_ref());
        let (expected, actual) = (
            manifest(&last.join(&relative)),
            manifest(&work.join(&relative)),
        );
        assert!(
            expected == actual,
            "{what}: extract of {} differs from btrfs receive:{}",
            relative.display(),
            differences(&expected, &actual)
        );
    }
    // What was not asked for, nor cloned from, has its name but no data.
    let any: std::collections::HashSet<u64> = needed.iter().flatten().copied().collect();
    for (path, inode) in model.entries() {
        let ino = model.ino(path).unwrap();
        if inode.node == btrfs2s3_stream::model::Node::File && !any.contains(&ino) {
            let relative = PathBuf::from(String::from_utf8_lossy(path).as_ref());
            let size = std::fs::symlink_metadata(work.join(&relative))
                .unwrap()
                .len();
            assert_eq!(
                size,
                0,
                "{what}: {} was not asked for but has data",
                relative.display()
            );
        }
    }
    let _ = std::fs::remove_dir_all(&shadow);
}

/// A cut and a damaged copy of the full stream are refused, naming a byte offset.
fn refuse_damage(rng: &mut Rng, what: &str, stream: &Path, plain: &Path) {
    let bytes = std::fs::read(stream).unwrap();
    // After the header (a damaged or missing magic or version is another error).
    let after_header =
        |rng: &mut Rng| 17 + usize::try_from(rng.below(bytes.len() as u64 - 17)).unwrap();
    let cut = bytes[..after_header(rng)].to_vec();
    let mut flipped = bytes.clone();
    let at = after_header(rng);
    flipped[at] ^= 1 << rng.below(8);
    for (name, damaged) in [("cut", cut), ("flipped", flipped)] {
        let dest = plain.join(format!("damaged-{name}"));
        std::fs::create_dir(&dest).unwrap();
        let receiver =
            Receiver::new(&dest, Tree::new(), &Parent::None, Options::default()).unwrap();
        let error = receiver
            .receive(damaged.as_slice(), true)
            .expect_err("a damaged stream is refused");
        let message = error.to_string();
        assert!(message.contains("byte"), "{what}: {name}: {message}");
    }
}

/// The `apply` example (what `restore --plain --latest-only` runs), built once.
fn apply_example() -> &'static Path {
    static APPLY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    APPLY.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "--quiet",
                "-p",
                "btrfs2s3-stream",
                "--example",
                "apply",
            ])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .status()
            .unwrap();
        assert!(status.success(), "building the apply example failed");
        let exe = std::env::current_exe().unwrap();
        exe.parent()
            .unwrap()
            .parent()
            .unwrap()
            .join("examples/apply")
    })
}

/// Applies the streams as `nobody` and compares the newest snapshot with `btrfs receive`'s:
/// the same, but every name is nobody's and device nodes are left out.
fn as_user(what: &str, streams: &[PathBuf], received: &Path, plain: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    let dest = plain.join("user");
    std::fs::create_dir(&dest).unwrap();
    std::os::unix::fs::chown(&dest, Some(65534), Some(65534)).unwrap();
    for stream in streams {
        std::fs::set_permissions(stream, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(apply_example())
        .arg(&dest)
        .args(streams)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{what}: apply as nobody: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let name = format!("snap{}", streams.len() - 1);
    let without_devices = |lines: Vec<String>| -> Vec<String> {
        lines
            .into_iter()
            // Device nodes: character (0o02) and block (0o06) special files.
            .filter(|line| {
                let mode = line.split(' ').nth(1).unwrap_or_default();
                !(mode.len() == 5 && (mode.starts_with('2') || mode.starts_with('6')))
            })
            .collect::<Vec<_>>()
    };
    let expected = without_owners(without_devices(manifest(&received.join(&name))));
    let restored = manifest(&dest.join(&name));
    assert!(
        restored.iter().all(|line| line.contains(" 65534:65534 ")),
        "{what}: a name not nobody's: {restored:?}"
    );
    let actual = without_owners(without_devices(restored));
    assert!(
        expected == actual,
        "{what}: as nobody, the restore differs from btrfs receive:{}",
        differences(&expected, &actual)
    );
}

/// Restores `streams` both ways into `plain` and compares each snapshot with what `btrfs
/// receive` made of it in `received` (and directory times with the `snapshots` themselves).
fn compare(what: &str, streams: &[PathBuf], snapshots: &[PathBuf], received: &Path, plain: &Path) {
    // A failure's streams are kept for a look with `examples/dump.rs` (next to the plain
    // restores, `.failed`).
    let keep = plain.with_extension("failed");
    let _ = std::fs::create_dir_all(&keep);
    for stream in streams {
        std::fs::copy(stream, keep.join(stream.file_name().unwrap())).unwrap();
    }
    let per_snapshot = plain_restore(
        &plain.join("each"),
        &{
            std::fs::create_dir(plain.join("each")).unwrap();
            streams.to_vec()
        },
        false,
    );
    std::fs::create_dir(plain.join("latest")).unwrap();
    let latest = plain_restore(&plain.join("latest"), streams, true);
    for (index, restored) in per_snapshot.iter().enumerate() {
        let name = format!("snap{index}");
        let expected = manifest(&received.join(&name));
        let actual = manifest(restored);
        assert!(
            expected == actual,
            "{what}, {name}: the plain restore differs from btrfs receive:{}",
            differences(&expected, &actual)
        );
        let truth = directory_times(&snapshots[index]);
        let times = directory_times(restored);
        assert!(
            truth == times,
            "{what}, {name}: directory times differ from the snapshot's:{}",
            differences(&truth, &times)
        );
        if index + 1 == per_snapshot.len() {
            let in_place_times = directory_times(&latest[0]);
            assert!(
                truth == in_place_times,
                "{what}, {name}: in place, directory times differ from the snapshot's:{}",
                differences(&truth, &in_place_times)
            );
            let in_place = manifest(&latest[0]);
            assert!(
                expected == in_place,
                "{what}, {name}: the in-place restore differs from btrfs receive:{}",
                differences(&expected, &in_place)
            );
        }
    }
    std::fs::remove_dir_all(&keep).unwrap();
}

#[test]
fn plain_restores_match_btrfs_receive_on_generated_histories() {
    let Some(env) = TestEnv::get("plain_restores_match_btrfs_receive_on_generated_histories")
    else {
        return;
    };
    if let Ok(seed) = std::env::var("BTRFS2S3_HISTORY_SEED") {
        history(env, seed.parse().unwrap(), &Tally::default(), Check::Root);
        return;
    }
    let count: u64 = std::env::var("BTRFS2S3_HISTORIES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(300);
    // Two at a time: the machine has two cores, and half the time is btrfs's.
    let next = std::sync::atomic::AtomicU64::new(0);
    let counts = Tally::default();
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if seed >= count {
                        break;
                    }
                    history(env, seed, &counts, Check::Root);
                }
            });
        }
    });
    // The histories did exercise what they are for.
    let counts = counts.into_inner().unwrap();
    eprintln!("commands over {count} histories: {counts:?}");
    if count >= 50 {
        for kind in [
            "Clone",
            "Clone from the parent",
            "EncodedWrite",
            "EncodedWrite lzo",
            "EncodedWrite zlib",
            "EncodedWrite zstd",
            "Fallocate",
            "Link",
            "Mkfifo",
            "Mknod",
            "RemoveXattr",
            "Rename",
            "Rmdir",
            "SetXattr",
            "Symlink",
            "Truncate",
            "Unlink",
            "Utimes",
            "Write",
        ] {
            assert!(counts.contains_key(kind), "no {kind} in {counts:?}");
        }
    }
}

#[test]
fn without_root_a_plain_restore_differs_only_in_owners_and_devices() {
    let Some(env) = TestEnv::get("without_root_a_plain_restore_differs_only_in_owners_and_devices")
    else {
        return;
    };
    // Other seeds than the test above's, a few dozen.
    for seed in 10_000..10_030 {
        history(env, seed, &Tally::default(), Check::User);
    }
}
