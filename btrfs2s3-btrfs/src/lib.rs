//! Safe access to btrfs: subvolume information, read-only snapshots and send streams.
//!
//! Subvolume operations go through the system's libbtrfsutil (a hand-written `extern "C"`
//! block, no bindgen); send streams through the `BTRFS_IOC_SEND` ioctl. This is the only crate
//! of btrfs2s3 with `unsafe` code, and every `unsafe` block says why it is sound.
//!
//! ```no_run
//! use btrfs2s3_btrfs::{SendOptions, SnapshotDir, Subvolume};
//! use std::ffi::OsStr;
//!
//! let home = Subvolume::open("/mnt/pool/home")?;
//! let snapshots = SnapshotDir::open("/mnt/pool/.snapshots")?;
//! let info = snapshots.create_snapshot(&home, OsStr::new("home.NEW.1234"))?;
//! assert!(info.is_read_only());
//! for snapshot in snapshots.snapshots_of(home.info().uuid)? {
//!     println!("{:?} ctransid {}", snapshot.name, snapshot.info.ctransid);
//! }
//! let snapshot = snapshots.open_snapshot(OsStr::new("home.NEW.1234"), info.id)?;
//! let out = std::fs::File::create("/tmp/home.send")?;
//! btrfs2s3_btrfs::send(&snapshot, &out, &SendOptions::default())?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod ffi;

use std::ffi::{CStr, CString, OsStr, OsString};
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use nix::fcntl::{AtFlags, OFlag, RenameFlags};
use nix::sys::stat::Mode;
use snafu::Snafu;
use uuid::Uuid;

/// The inode number of the root directory of every btrfs subvolume.
const BTRFS_FIRST_FREE_OBJECTID: u64 = 256;
/// `BTRFS_SUBVOL_RDONLY` in the root item's flags.
const BTRFS_ROOT_SUBVOL_RDONLY: u64 = 1 << 0;

/// The errors of btrfs operations. Each names the path (and subvolume id where known) and
/// keeps the OS error.
#[derive(Debug, Snafu)]
#[snafu(visibility(pub(crate)))]
pub enum Error {
    /// The path is not on btrfs at all.
    #[snafu(display("{} is not on a btrfs filesystem", path.display()))]
    NotBtrfs {
        /// The path.
        path: PathBuf,
    },
    /// The path is on btrfs but not the root directory of a subvolume.
    #[snafu(display("{} is not a btrfs subvolume (it must be the root directory of one)", path.display()))]
    NotSubvolume {
        /// The path.
        path: PathBuf,
    },
    /// Snapshots can only be made in a directory of the source's own filesystem.
    #[snafu(display(
        "snapshot directory {} is on another filesystem than {}",
        directory.display(),
        source_path.display()
    ))]
    OtherFilesystem {
        /// The snapshot directory.
        directory: PathBuf,
        /// The subvolume to snapshot.
        source_path: PathBuf,
    },
    /// The name is taken.
    #[snafu(display("{} already exists", path.display()))]
    AlreadyExists {
        /// The path that exists.
        path: PathBuf,
    },
    /// The subvolume under a name is not the one we looked at before.
    #[snafu(display(
        "{} changed under us: it was subvolume {expected}, now it is subvolume {actual}",
        path.display()
    ))]
    Changed {
        /// The path.
        path: PathBuf,
        /// The subvolume id we expected.
        expected: u64,
        /// The one we found.
        actual: u64,
    },
    /// The operation was not permitted.
    #[snafu(display("failed to {operation} {}{}: permission denied{}", path.display(), id_text(*subvolume_id), operation.permission_hint()))]
    PermissionDenied {
        /// What we tried.
        operation: Operation,
        /// The path.
        path: PathBuf,
        /// The subvolume, if known.
        subvolume_id: Option<u64>,
        /// The OS error.
        source: io::Error,
    },
    /// Any other failure of a system call or a libbtrfsutil function.
    #[snafu(display("failed to {operation} {}{}", path.display(), id_text(*subvolume_id)))]
    Os {
        /// What we tried.
        operation: Operation,
        /// The path.
        path: PathBuf,
        /// The subvolume, if known.
        subvolume_id: Option<u64>,
        /// The OS error.
        source: io::Error,
    },
}

/// What was being done when a system call or a libbtrfsutil function failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Opening a directory.
    Open,
    /// `stat` of a path.
    Stat,
    /// Reading the filesystem type.
    ReadFilesystemType,
    /// Reading a subvolume's information.
    ReadSubvolumeInfo,
    /// Reading the filesystem's information.
    ReadFilesystemInfo,
    /// Listing a directory.
    List,
    /// Creating a snapshot.
    CreateSnapshot,
    /// Renaming a snapshot.
    Rename,
    /// Deleting a snapshot.
    DeleteSnapshot,
    /// Clearing a snapshot's read-only flag (to delete it without `CAP_SYS_ADMIN`).
    ClearReadOnly,
    /// A full send stream.
    Send,
    /// A differential send stream.
    SendDifferential,
    /// Turning a name into a C string.
    UseName,
}

impl Operation {
    /// What might help when the operation is not permitted.
    fn permission_hint(self) -> &'static str {
        match self {
            Operation::Send | Operation::SendDifferential => {
                " (needs CAP_SYS_ADMIN for send: run as root)"
            }
            _ => "",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::Open => "open",
            Operation::Stat => "stat",
            Operation::ReadFilesystemType => "read the filesystem type of",
            Operation::ReadSubvolumeInfo => "read the subvolume information of",
            Operation::ReadFilesystemInfo => "read the filesystem information of",
            Operation::List => "list",
            Operation::CreateSnapshot => "create a snapshot at",
            Operation::Rename => "rename",
            Operation::DeleteSnapshot => "delete the snapshot",
            Operation::ClearReadOnly => "clear the read-only flag of",
            Operation::Send => "send",
            Operation::SendDifferential => "send (differential)",
            Operation::UseName => "use the name",
        })
    }
}

fn id_text(id: Option<u64>) -> String {
    id.map(|id| format!(" (subvolume {id})"))
        .unwrap_or_default()
}

/// A `Result` of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the OS said, turned into our error for `operation` on `path`.
fn os_error(
    operation: Operation,
    path: &Path,
    subvolume_id: Option<u64>,
    source: io::Error,
) -> Error {
    let path = path.to_path_buf();
    match source.raw_os_error() {
        Some(libc::EEXIST) => Error::AlreadyExists { path },
        Some(libc::EPERM | libc::EACCES) => Error::PermissionDenied {
            operation,
            path,
            subvolume_id,
            source,
        },
        _ => Error::Os {
            operation,
            path,
            subvolume_id,
            source,
        },
    }
}

fn nix_error(
    operation: Operation,
    path: &Path,
    subvolume_id: Option<u64>,
    errno: nix::Error,
) -> Error {
    os_error(operation, path, subvolume_id, io::Error::from(errno))
}

/// Checks a libbtrfsutil return code; on failure, reads errno (which the library leaves set by
/// the failing system call) right away.
fn check(
    code: ffi::BtrfsUtilError,
    operation: Operation,
    path: &Path,
    subvolume_id: Option<u64>,
) -> Result<()> {
    if code == ffi::BTRFS_UTIL_OK {
        return Ok(());
    }
    let errno = io::Error::last_os_error();
    match code {
        ffi::BTRFS_UTIL_ERROR_NOT_BTRFS => Err(Error::NotBtrfs {
            path: path.to_path_buf(),
        }),
        ffi::BTRFS_UTIL_ERROR_NOT_SUBVOLUME => Err(Error::NotSubvolume {
            path: path.to_path_buf(),
        }),
        _ => {
            // SAFETY: btrfs_util_strerror returns a pointer to a static string (or NULL for
            // an unknown code), which we only read.
            let what = unsafe { ffi::btrfs_util_strerror(code) };
            let source = if what.is_null() || errno.raw_os_error().is_some_and(|e| e != 0) {
                errno
            } else {
                // SAFETY: non-null, NUL-terminated and static, per the library's contract.
                let text = unsafe { CStr::from_ptr(what) }
                    .to_string_lossy()
                    .into_owned();
                io::Error::other(text)
            };
            Err(os_error(operation, path, subvolume_id, source))
        }
    }
}

fn c_name(name: &OsStr, path: &Path) -> Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| Error::Os {
        operation: Operation::UseName,
        path: path.to_path_buf(),
        subvolume_id: None,
        source: io::Error::new(io::ErrorKind::InvalidInput, "the name contains a NUL byte"),
    })
}

/// Everything btrfs knows about a subvolume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubvolumeInfo {
    /// The subvolume id, unique within the filesystem.
    pub id: u64,
    /// The id of the subvolume containing it.
    pub parent_id: u64,
    /// The subvolume's uuid.
    pub uuid: Uuid,
    /// The uuid of the subvolume it is a snapshot of, if it is a snapshot.
    pub parent_uuid: Option<Uuid>,
    /// The uuid of the subvolume it was received from, if it was received.
    pub received_uuid: Option<Uuid>,
    /// The transaction that last changed the subvolume's root.
    pub generation: u64,
    /// The transaction that last changed anything in the subvolume.
    pub ctransid: u64,
    /// The transaction that created the subvolume.
    pub otransid: u64,
    /// When anything in the subvolume last changed.
    pub ctime: Timestamp,
    /// When the subvolume was created.
    pub otime: Timestamp,
    /// The raw root item flags.
    pub flags: u64,
}

impl SubvolumeInfo {
    /// Whether the subvolume is read-only.
    #[must_use]
    pub fn is_read_only(&self) -> bool {
        self.flags & BTRFS_ROOT_SUBVOL_RDONLY != 0
    }

    fn from_raw(raw: &ffi::SubvolumeInfo) -> SubvolumeInfo {
        let uuid = |bytes: [u8; 16]| Some(Uuid::from_bytes(bytes)).filter(|uuid| !uuid.is_nil());
        let time = |ts: libc::timespec| {
            Timestamp::new(ts.tv_sec, i32::try_from(ts.tv_nsec).unwrap_or(0))
                .unwrap_or(Timestamp::UNIX_EPOCH)
        };
        SubvolumeInfo {
            id: raw.id,
            parent_id: raw.parent_id,
            uuid: Uuid::from_bytes(raw.uuid),
            parent_uuid: uuid(raw.parent_uuid),
            received_uuid: uuid(raw.received_uuid),
            generation: raw.generation,
            ctransid: raw.ctransid,
            otransid: raw.otransid,
            ctime: time(raw.ctime),
            otime: time(raw.otime),
            flags: raw.flags,
        }
    }
}

/// Whether the open file is on a btrfs filesystem.
pub fn is_btrfs(fd: BorrowedFd<'_>, path: &Path) -> Result<bool> {
    let stat = nix::sys::statfs::fstatfs(fd)
        .map_err(|e| nix_error(Operation::ReadFilesystemType, path, None, e))?;
    Ok(stat.filesystem_type() == nix::sys::statfs::BTRFS_SUPER_MAGIC)
}

/// Whether the open directory is the root of a btrfs subvolume.
pub fn is_subvolume(fd: BorrowedFd<'_>, path: &Path) -> Result<bool> {
    if !is_btrfs(fd, path)? {
        return Ok(false);
    }
    let stat = nix::sys::stat::fstat(fd).map_err(|e| nix_error(Operation::Stat, path, None, e))?;
    Ok(stat.st_ino == BTRFS_FIRST_FREE_OBJECTID && (stat.st_mode & libc::S_IFMT) == libc::S_IFDIR)
}

/// Information about the subvolume containing the open file (no privileges needed).
pub fn subvolume_info(fd: BorrowedFd<'_>, path: &Path) -> Result<SubvolumeInfo> {
    if !is_btrfs(fd, path)? {
        return Err(Error::NotBtrfs {
            path: path.to_path_buf(),
        });
    }
    let mut raw = std::mem::MaybeUninit::<ffi::SubvolumeInfo>::zeroed();
    // SAFETY: `fd` is an open descriptor for the duration of the call, and `raw` points to
    // writable memory of the size and layout of `struct btrfs_util_subvolume_info` (checked by
    // a test), which the library fills in completely on success.
    let code = unsafe { ffi::btrfs_util_subvolume_info_fd(fd.as_raw_fd(), 0, raw.as_mut_ptr()) };
    check(code, Operation::ReadSubvolumeInfo, path, None)?;
    // SAFETY: the call succeeded, so the library initialised the struct; it was zeroed before
    // anyway, and every bit pattern is a valid value of its integer and array fields.
    let raw = unsafe { raw.assume_init() };
    Ok(SubvolumeInfo::from_raw(&raw))
}

/// The uuid of the btrfs filesystem the open file is on (`BTRFS_IOC_FS_INFO`, no privileges
/// needed).
pub fn filesystem_uuid(fd: BorrowedFd<'_>, path: &Path) -> Result<Uuid> {
    let mut args = std::mem::MaybeUninit::<ffi::FsInfoArgs>::zeroed();
    // SAFETY: `fd` is open for the duration of the call and `args` points to a zeroed buffer
    // of the size the ioctl number encodes (`struct btrfs_ioctl_fs_info_args`, 1024 bytes,
    // checked by a test); zero flags ask for the basic fields only.
    unsafe { ffi::btrfs_ioc_fs_info(fd.as_raw_fd(), args.as_mut_ptr()) }
        .map_err(|e| nix_error(Operation::ReadFilesystemInfo, path, None, e))?;
    // SAFETY: the buffer was zero-initialised and the kernel wrote plain integers into it.
    let args = unsafe { args.assume_init() };
    Ok(Uuid::from_bytes(args.fsid))
}

fn open_directory(dir: Option<BorrowedFd<'_>>, name: &Path, full_path: &Path) -> Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW;
    let result = match dir {
        Some(dir) => nix::fcntl::openat(dir, name, flags, Mode::empty()),
        None => nix::fcntl::open(name, flags - OFlag::O_NOFOLLOW, Mode::empty()),
    };
    result.map_err(|e| nix_error(Operation::Open, full_path, None, e))
}

/// An open subvolume: a source to snapshot.
pub struct Subvolume {
    path: PathBuf,
    fd: OwnedFd,
    info: SubvolumeInfo,
}

impl fmt::Debug for Subvolume {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subvolume")
            .field("path", &self.path)
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl Subvolume {
    /// Opens `path`, which must be the root directory of a btrfs subvolume.
    pub fn open(path: impl AsRef<Path>) -> Result<Subvolume> {
        let path = path.as_ref().to_path_buf();
        let fd = open_directory(None, &path, &path)?;
        if !is_btrfs(fd.as_fd(), &path)? {
            return Err(Error::NotBtrfs { path });
        }
        if !is_subvolume(fd.as_fd(), &path)? {
            return Err(Error::NotSubvolume { path });
        }
        let info = subvolume_info(fd.as_fd(), &path)?;
        Ok(Subvolume { path, fd, info })
    }

    /// The path it was opened at.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its information as of opening.
    #[must_use]
    pub fn info(&self) -> &SubvolumeInfo {
        &self.info
    }

    /// Reads its information again (the ctransid moves as data changes).
    pub fn refresh(&mut self) -> Result<&SubvolumeInfo> {
        self.info = subvolume_info(self.fd.as_fd(), &self.path)?;
        Ok(&self.info)
    }
}

impl AsFd for Subvolume {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A subvolume found in a directory: a snapshot, a received subvolume...
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Its name in the directory.
    pub name: OsString,
    /// What btrfs knows about it.
    pub info: SubvolumeInfo,
}

/// An open directory that holds snapshots.
pub struct SnapshotDir {
    path: PathBuf,
    fd: OwnedFd,
}

impl fmt::Debug for SnapshotDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotDir")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SnapshotDir {
    /// Opens `path`, a directory on a btrfs filesystem (any directory, not necessarily a
    /// subvolume root).
    pub fn open(path: impl AsRef<Path>) -> Result<SnapshotDir> {
        let path = path.as_ref().to_path_buf();
        let fd = open_directory(None, &path, &path)?;
        if !is_btrfs(fd.as_fd(), &path)? {
            return Err(Error::NotBtrfs { path });
        }
        Ok(SnapshotDir { path, fd })
    }

    /// The path it was opened at.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks that snapshots of `source` can be made here: same btrfs filesystem.
    pub fn check_same_filesystem(&self, source: &Subvolume) -> Result<()> {
        let here = filesystem_uuid(self.fd.as_fd(), &self.path)?;
        let there = filesystem_uuid(source.as_fd(), source.path())?;
        if here == there {
            Ok(())
        } else {
            Err(Error::OtherFilesystem {
                directory: self.path.clone(),
                source_path: source.path().to_path_buf(),
            })
        }
    }

    /// Every subvolume directly inside the directory, sorted by name. Anything else (files,
    /// plain directories, symlinks) is ignored.
    pub fn subvolumes(&self) -> Result<Vec<Snapshot>> {
        // A new open file description: a duplicate descriptor would share the directory
        // offset, and a second listing would start where the first one ended.
        let fresh = open_directory(Some(self.fd.as_fd()), Path::new("."), &self.path)?;
        let mut dir = nix::dir::Dir::from_fd(fresh)
            .map_err(|e| nix_error(Operation::List, &self.path, None, e))?;
        let mut snapshots = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(|e| nix_error(Operation::List, &self.path, None, e))?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            if name == "." || name == ".." {
                continue;
            }
            if matches!(entry.file_type(), Some(t) if t != nix::dir::Type::Directory) {
                continue;
            }
            let full_path = self.path.join(name);
            // Entries can vanish while we list (another process deleting a snapshot).
            let fd = match open_directory(Some(self.fd.as_fd()), Path::new(name), &full_path) {
                Ok(fd) => fd,
                Err(Error::Os { source, .. }) if source.raw_os_error() == Some(libc::ENOENT) => {
                    continue;
                }
                Err(Error::Os { source, .. }) if source.raw_os_error() == Some(libc::ENOTDIR) => {
                    continue;
                }
                Err(Error::Os { source, .. }) if source.raw_os_error() == Some(libc::ELOOP) => {
                    continue;
                }
                Err(e) => return Err(e),
            };
            if !is_subvolume(fd.as_fd(), &full_path)? {
                continue;
            }
            let info = subvolume_info(fd.as_fd(), &full_path)?;
            snapshots.push(Snapshot {
                name: name.to_os_string(),
                info,
            });
        }
        snapshots.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(snapshots)
    }

    /// Every read-only subvolume directly inside the directory that is a snapshot of
    /// something. Anything else (files, directories, writable subvolumes) is ignored.
    pub fn snapshots(&self) -> Result<Vec<Snapshot>> {
        let mut snapshots = self.subvolumes()?;
        snapshots
            .retain(|snapshot| snapshot.info.is_read_only() && snapshot.info.parent_uuid.is_some());
        Ok(snapshots)
    }

    /// The read-only snapshots of the subvolume with uuid `source`.
    pub fn snapshots_of(&self, source: Uuid) -> Result<Vec<Snapshot>> {
        let mut snapshots = self.snapshots()?;
        snapshots.retain(|snapshot| snapshot.info.parent_uuid == Some(source));
        Ok(snapshots)
    }

    /// Creates a read-only snapshot of `source` named `name` here, and returns its information.
    pub fn create_snapshot(&self, source: &Subvolume, name: &OsStr) -> Result<SubvolumeInfo> {
        let path = self.path.join(name);
        let c_name = c_name(name, &path)?;
        // SAFETY: both descriptors are open for the duration of the call, the name is a valid
        // NUL-terminated string that outlives it, and NULL is allowed for the unused transid
        // pointer and the qgroup inheritance.
        let code = unsafe {
            ffi::btrfs_util_create_snapshot_fd2(
                source.as_fd().as_raw_fd(),
                self.fd.as_raw_fd(),
                c_name.as_ptr(),
                ffi::CREATE_SNAPSHOT_READ_ONLY,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        match check(code, Operation::CreateSnapshot, &path, None) {
            Err(Error::Os { source: errno, .. }) if errno.raw_os_error() == Some(libc::EXDEV) => {
                return Err(Error::OtherFilesystem {
                    directory: self.path.clone(),
                    source_path: source.path().to_path_buf(),
                });
            }
            other => other?,
        }
        let fd = open_directory(Some(self.fd.as_fd()), Path::new(name), &path)?;
        subvolume_info(fd.as_fd(), &path)
    }

    /// Opens the snapshot `name`, checking that it is still subvolume `expected_id`.
    pub fn open_snapshot(&self, name: &OsStr, expected_id: u64) -> Result<OwnedFd> {
        let path = self.path.join(name);
        let fd = open_directory(Some(self.fd.as_fd()), Path::new(name), &path)?;
        if !is_subvolume(fd.as_fd(), &path)? {
            return Err(Error::NotSubvolume { path });
        }
        let info = subvolume_info(fd.as_fd(), &path)?;
        if info.id != expected_id {
            return Err(Error::Changed {
                path,
                expected: expected_id,
                actual: info.id,
            });
        }
        Ok(fd)
    }

    /// Renames `from` to `to` within the directory; fails if `to` exists.
    pub fn rename(&self, from: &OsStr, to: &OsStr) -> Result<()> {
        let path = self.path.join(from);
        nix::fcntl::renameat2(
            self.fd.as_fd(),
            Path::new(from),
            self.fd.as_fd(),
            Path::new(to),
            RenameFlags::RENAME_NOREPLACE,
        )
        .map_err(|e| match e {
            nix::Error::EEXIST => Error::AlreadyExists {
                path: self.path.join(to),
            },
            e => nix_error(Operation::Rename, &path, None, e),
        })
    }

    /// Deletes the snapshot `name`, after checking that it is still subvolume `expected_id`.
    ///
    /// As root this works on any subvolume. A user without `CAP_SYS_ADMIN` may delete
    /// subvolumes they own on a filesystem mounted with `user_subvol_rm_allowed`, but only
    /// writable ones: on permission denied, the read-only flag is cleared and the deletion
    /// tried again.
    pub fn delete_snapshot(&self, name: &OsStr, expected_id: u64) -> Result<()> {
        let path = self.path.join(name);
        let fd = self.open_snapshot(name, expected_id)?;
        let c_name = c_name(name, &path)?;
        let delete = || {
            // SAFETY: the directory descriptor is open for the duration of the call and the
            // name is a valid NUL-terminated string that outlives it.
            let code = unsafe {
                ffi::btrfs_util_delete_subvolume_fd(self.fd.as_raw_fd(), c_name.as_ptr(), 0)
            };
            check(code, Operation::DeleteSnapshot, &path, Some(expected_id))
        };
        // Without CAP_SYS_ADMIN the kernel refuses read-only subvolumes with EROFS.
        let refused = |error: &Error| match error {
            Error::PermissionDenied { .. } => true,
            Error::Os { source, .. } => source.raw_os_error() == Some(libc::EROFS),
            _ => false,
        };
        match delete() {
            Err(error) if refused(&error) && !nix::unistd::geteuid().is_root() => {
                // SAFETY: `fd` is the open root directory of the subvolume for the duration of
                // the call.
                let code =
                    unsafe { ffi::btrfs_util_set_subvolume_read_only_fd(fd.as_raw_fd(), false) };
                check(code, Operation::ClearReadOnly, &path, Some(expected_id))?;
                drop(fd);
                delete()
            }
            other => other,
        }
    }

    /// Whether an entry `name` exists in the directory.
    pub fn contains(&self, name: &OsStr) -> Result<bool> {
        match nix::sys::stat::fstatat(
            self.fd.as_fd(),
            Path::new(name),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(_) => Ok(true),
            Err(nix::Error::ENOENT) => Ok(false),
            Err(e) => Err(nix_error(Operation::Stat, &self.path.join(name), None, e)),
        }
    }
}

impl AsFd for SnapshotDir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Options of a send stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendOptions {
    /// Send the difference against this snapshot (its subvolume id); it is also offered as
    /// a clone source. `None` makes a full stream.
    pub parent: Option<u64>,
    /// The send protocol version; `None` lets the kernel choose (version 1).
    pub protocol: Option<u32>,
    /// Send compressed extents as they are, without decompressing (protocol 2 or later,
    /// Linux 6.0 or later).
    pub compressed: bool,
}

/// Writes the send stream of the read-only snapshot `snapshot` to `out` (a pipe or a file),
/// the way `btrfs send [-p parent]` does; `btrfs receive` accepts the result.
///
/// Blocks until the whole stream is written. Needs `CAP_SYS_ADMIN`. If the reader of a pipe
/// goes away, this fails with "broken pipe".
pub fn send(snapshot: &impl AsFd, out: &impl AsFd, options: &SendOptions) -> Result<()> {
    let snapshot = snapshot.as_fd();
    let path = fd_path(snapshot);
    let clone_sources: Vec<u64> = options.parent.into_iter().collect();
    let mut flags = 0;
    if options.protocol.is_some() {
        flags |= ffi::SEND_FLAG_VERSION;
    }
    if options.compressed {
        flags |= ffi::SEND_FLAG_COMPRESSED;
    }
    let args = ffi::SendArgs {
        send_fd: i64::from(out.as_fd().as_raw_fd()),
        clone_sources_count: clone_sources.len() as u64,
        clone_sources: if clone_sources.is_empty() {
            std::ptr::null()
        } else {
            clone_sources.as_ptr()
        },
        parent_root: options.parent.unwrap_or(0),
        flags,
        version: options.protocol.unwrap_or(0),
        reserved: [0; 28],
    };
    // SAFETY: `snapshot` and `out` are open for the duration of the call (borrowed), `args`
    // has the layout of `struct btrfs_ioctl_send_args` (checked by a test), and its
    // `clone_sources` pointer is either NULL with a count of 0 or points to `clone_sources`,
    // which lives until after the call.
    let result = unsafe { ffi::btrfs_ioc_send(snapshot.as_raw_fd(), &raw const args) };
    result.map(drop).map_err(|errno| {
        let operation = if options.parent.is_some() {
            Operation::SendDifferential
        } else {
            Operation::Send
        };
        nix_error(operation, &path, None, errno)
    })
}

/// The path of an open file, for error messages (`/proc/self/fd/N` when unknown).
fn fd_path(fd: BorrowedFd<'_>) -> PathBuf {
    let link = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    std::fs::read_link(&link).unwrap_or(link)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(operation: Operation) -> String {
        os_error(
            operation,
            Path::new("/pool/.snapshots/home"),
            Some(257),
            io::Error::from_raw_os_error(libc::EPERM),
        )
        .to_string()
    }

    #[test]
    fn only_a_refused_send_hints_at_root() {
        for operation in [Operation::Send, Operation::SendDifferential] {
            let message = refused(operation);
            assert!(message.contains("needs CAP_SYS_ADMIN"), "{message}");
            assert!(
                message.starts_with(&format!("failed to {operation} ")),
                "{message}"
            );
        }
        let message = refused(Operation::Rename);
        assert_eq!(
            message,
            "failed to rename /pool/.snapshots/home (subvolume 257): permission denied"
        );
    }
}
