//! Keeps two runs of the same config from overlapping: an exclusive `flock` on a lock file
//! derived from the config's path, held until the run ends (or its process dies: the kernel
//! releases it). The holder writes its pid into the file, so the next one can say who holds it.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// A held lock; released on drop.
#[derive(Debug)]
pub struct RunLock {
    _lock: Flock<File>,
    path: PathBuf,
}

impl RunLock {
    /// The lock file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Why the lock was not taken.
#[derive(Debug)]
pub enum LockError {
    /// Another run holds it.
    Held {
        /// The lock file.
        path: PathBuf,
        /// The pid written by the holder, if readable.
        holder: Option<u32>,
    },
    /// The lock file could not be used.
    Io {
        /// The lock file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl std::fmt::Display for LockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockError::Held {
                path,
                holder: Some(pid),
            } => write!(
                f,
                "another btrfs2s3 run (pid {pid}) holds the lock {}; try again when it is done",
                path.display()
            ),
            LockError::Held { path, holder: None } => write!(
                f,
                "another btrfs2s3 run holds the lock {}; try again when it is done",
                path.display()
            ),
            LockError::Io { path, source } => {
                write!(f, "cannot use the lock file {}: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for LockError {}

/// The lock file for a config: in `/run/lock` if it is writable, else next to the config.
/// The name carries a hash of the config's absolute path, so the same config reached by
/// different relative paths shares one lock.
#[must_use]
pub fn lock_path(config: &Path) -> PathBuf {
    let absolute = std::fs::canonicalize(config).unwrap_or_else(|_| config.to_path_buf());
    let name = absolute
        .file_name()
        .map_or_else(|| "config".into(), |n| n.to_string_lossy().into_owned());
    let run_lock = Path::new("/run/lock");
    if is_writable_dir(run_lock) {
        // FNV-1a: stable across runs and versions, unlike the standard library's hasher.
        let hash = absolute
            .as_os_str()
            .as_encoded_bytes()
            .iter()
            .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
                (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
            });
        run_lock.join(format!("btrfs2s3-{name}-{hash:016x}.lock"))
    } else {
        absolute.with_file_name(format!(".{name}.btrfs2s3.lock"))
    }
}

fn is_writable_dir(path: &Path) -> bool {
    nix::unistd::access(path, nix::unistd::AccessFlags::W_OK).is_ok() && path.is_dir()
}

/// Takes the lock for `config` without waiting.
pub fn lock(config: &Path) -> Result<RunLock, LockError> {
    let path = lock_path(config);
    let io = |source| LockError::Io {
        path: path.clone(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(mut lock) => {
            lock.set_len(0).map_err(io)?;
            lock.rewind().map_err(io)?;
            writeln!(lock, "{}", std::process::id()).map_err(io)?;
            Ok(RunLock { _lock: lock, path })
        }
        Err((mut file, nix::Error::EWOULDBLOCK)) => {
            let mut text = String::new();
            let holder = file
                .read_to_string(&mut text)
                .ok()
                .and_then(|_| text.trim().parse().ok());
            Err(LockError::Held { path, holder })
        }
        Err((_, errno)) => Err(io(std::io::Error::from(errno))),
    }
}
