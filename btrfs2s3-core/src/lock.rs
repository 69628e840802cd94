//! Keeps runs from overlapping.
//!
//! - A run of a config holds an exclusive `flock` on a lock file derived from the config's
//!   path, so two runs of the same config never overlap.
//! - A run also holds an exclusive `flock` on each snapshot directory it uses (on the
//!   directory itself), so two runs that share a snapshot directory — from the same config or
//!   from two configs — never interleave their snapshots, renames and destroys.
//!
//! The kernel releases the locks when the process ends, however it ends. The holder writes
//! its pid into the config's lock file and into a side file for each directory, so the next
//! run can say who holds a lock.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use tokio_util::sync::CancellationToken;

/// A held lock; released on drop.
#[derive(Debug)]
pub struct Lock {
    _flock: Flock<File>,
    /// What is locked (the lock file, or the directory).
    path: PathBuf,
    /// A side file holding our pid, removed on drop.
    pid_file: Option<PathBuf>,
    /// The pid the previous holder of a config's lock left in the lock file.
    previous_holder: Option<u32>,
}

impl Lock {
    /// The lock file, or the locked directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pid of the process that held a config's lock before us, as it left it in the
    /// lock file (the file keeps it after that process ended); `None` if the file was new.
    /// A daemon that finds another pid there knows another run came in between.
    #[must_use]
    pub fn previous_holder(&self) -> Option<u32> {
        self.previous_holder
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        if let Some(pid_file) = &self.pid_file {
            let _ = std::fs::remove_file(pid_file);
        }
    }
}

/// Why a lock was not taken.
#[derive(Debug)]
pub enum LockError {
    /// A lock or pid file is a symlink, or not ours: planted by someone, never followed.
    Unsafe {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// The wait for it was interrupted (a signal).
    Interrupted {
        /// What is locked.
        path: PathBuf,
    },
    /// Another run holds it.
    Held {
        /// What is locked.
        path: PathBuf,
        /// The holder's pid, if it left it.
        holder: Option<u32>,
        /// How long we waited.
        waited: Duration,
    },
    /// The lock could not be used.
    Io {
        /// What is locked.
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
                holder,
                waited,
            } => {
                let who = holder.map_or_else(
                    || "another btrfs2s3 run".to_owned(),
                    |pid| format!("another btrfs2s3 run (pid {pid})"),
                );
                write!(f, "{who} holds the lock on {}", path.display())?;
                if waited.is_zero() {
                    write!(
                        f,
                        "; try again when it is done, or wait for it with --wait SECONDS"
                    )
                } else {
                    write!(f, " (waited {} s)", waited.as_secs())
                }
            }
            LockError::Io { path, source } => write!(f, "cannot lock {}: {source}", path.display()),
            LockError::Unsafe { path, problem } => write!(
                f,
                "refusing lock file {}: {problem}; if no btrfs2s3 runs, remove it",
                path.display()
            ),
            LockError::Interrupted { path } => write!(
                f,
                "interrupted while waiting for the lock on {}",
                path.display()
            ),
        }
    }
}

impl std::error::Error for LockError {}

impl LockError {
    /// Whether another run holds the lock (as opposed to an error or an interruption).
    #[must_use]
    pub fn is_held(&self) -> bool {
        matches!(self, LockError::Held { .. })
    }

    /// Whether a lock or pid file was planted or is not ours.
    #[must_use]
    pub fn is_unsafe(&self) -> bool {
        matches!(self, LockError::Unsafe { .. })
    }
}

/// Where our lock and pid files go: `/run/lock` if it is writable, else `fallback`.
fn lock_dir(fallback: &Path) -> PathBuf {
    let run_lock = Path::new("/run/lock");
    if nix::unistd::access(run_lock, nix::unistd::AccessFlags::W_OK).is_ok() && run_lock.is_dir() {
        run_lock.to_path_buf()
    } else {
        fallback.to_path_buf()
    }
}

/// FNV-1a of a path: stable across runs and versions, unlike the standard library's hasher.
fn path_hash(path: &Path) -> u64 {
    path.as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
        })
}

/// The lock file for a config: `btrfs2s3-<name>-<hash of the absolute path>.lock` in
/// `/run/lock`, or next to the config when `/run/lock` is not writable. The same config
/// reached by different relative paths shares one lock.
#[must_use]
pub fn lock_path(config: &Path) -> PathBuf {
    let absolute = std::fs::canonicalize(config).unwrap_or_else(|_| config.to_path_buf());
    let name = absolute
        .file_name()
        .map_or_else(|| "config".into(), |n| n.to_string_lossy().into_owned());
    let dir = lock_dir(absolute.parent().unwrap_or(Path::new(".")));
    dir.join(format!(
        "btrfs2s3-{name}-{:016x}.lock",
        path_hash(&absolute)
    ))
}

/// Tries `flock` until it succeeds, `wait` is over or `cancel` is cancelled. Blocks: call it
/// on a blocking thread.
fn flock(
    file: File,
    path: &Path,
    wait: Duration,
    cancel: &CancellationToken,
) -> Result<Flock<File>, (File, LockError)> {
    let started = Instant::now();
    let mut file = file;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((returned, nix::Error::EWOULDBLOCK)) if cancel.is_cancelled() => {
                let error = LockError::Interrupted {
                    path: path.to_path_buf(),
                };
                return Err((returned, error));
            }
            Err((returned, nix::Error::EWOULDBLOCK)) if started.elapsed() < wait => {
                file = returned;
                std::thread::sleep(Duration::from_millis(100).min(wait));
            }
            Err((returned, nix::Error::EWOULDBLOCK)) => {
                let error = LockError::Held {
                    path: path.to_path_buf(),
                    holder: None,
                    waited: started.elapsed().min(wait),
                };
                return Err((returned, error));
            }
            Err((returned, errno)) => {
                let error = LockError::Io {
                    path: path.to_path_buf(),
                    source: std::io::Error::from(errno),
                };
                return Err((returned, error));
            }
        }
    }
}

/// Opens (creating it if need be) a lock or pid file in a directory other users may write
/// (`/run/lock` is world-writable, with the sticky bit): never through a symlink someone
/// planted there (that could make root truncate any file), and only a regular file that
/// belongs to the user running btrfs2s3.
fn open_side_file(path: &Path) -> Result<File, LockError> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let unsafe_file = |problem: String| LockError::Unsafe {
        path: path.to_path_buf(),
        problem,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags((nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_CLOEXEC).bits())
        .open(path)
        .map_err(|source| match source.raw_os_error() {
            Some(code) if code == nix::errno::Errno::ELOOP as i32 => {
                unsafe_file("it is a symbolic link".to_owned())
            }
            Some(code) if code == nix::errno::Errno::EISDIR as i32 => {
                unsafe_file("it is a directory".to_owned())
            }
            _ => LockError::Io {
                path: path.to_path_buf(),
                source,
            },
        })?;
    let metadata = file.metadata().map_err(|source| LockError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if !metadata.is_file() {
        return Err(unsafe_file("it is not a regular file".to_owned()));
    }
    let me = nix::unistd::geteuid().as_raw();
    if metadata.uid() != me {
        return Err(unsafe_file(format!(
            "it belongs to user {}, not to user {me}",
            metadata.uid()
        )));
    }
    Ok(file)
}

fn read_pid(file: &mut impl Read) -> Option<u32> {
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// Runs a blocking lock attempt on a blocking thread, so that a wait of minutes neither
/// stalls the runtime nor ignores a signal (`cancel` ends it).
async fn off_the_runtime(
    path: &Path,
    attempt: impl FnOnce() -> Result<Lock, LockError> + Send + 'static,
) -> Result<Lock, LockError> {
    tokio::task::spawn_blocking(attempt)
        .await
        .map_err(|error| LockError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(error),
        })?
}

/// Takes the lock for `config`, waiting up to `wait` for another run to finish, unless
/// `cancel` ends the wait.
pub async fn lock_async(
    config: &Path,
    wait: Duration,
    cancel: &CancellationToken,
) -> Result<Lock, LockError> {
    let (config, cancel) = (config.to_path_buf(), cancel.clone());
    off_the_runtime(&config.clone(), move || {
        lock_blocking(&config, wait, &cancel)
    })
    .await
}

/// Takes the lock for `config`, waiting up to `wait` for another run to finish. Blocks the
/// calling thread; a run uses [`lock_async`].
pub fn lock(config: &Path, wait: Duration) -> Result<Lock, LockError> {
    lock_blocking(config, wait, &CancellationToken::new())
}

fn lock_blocking(
    config: &Path,
    wait: Duration,
    cancel: &CancellationToken,
) -> Result<Lock, LockError> {
    let path = lock_path(config);
    let io = |source| LockError::Io {
        path: path.clone(),
        source,
    };
    let file = open_side_file(&path)?;
    match flock(file, &path, wait, cancel) {
        Ok(mut lock) => {
            let previous_holder = read_pid(&mut *lock);
            lock.set_len(0).map_err(io)?;
            lock.rewind().map_err(io)?;
            writeln!(lock, "{}", std::process::id()).map_err(io)?;
            Ok(Lock {
                _flock: lock,
                path,
                pid_file: None,
                previous_holder,
            })
        }
        Err((mut file, LockError::Held { path, waited, .. })) => Err(LockError::Held {
            holder: read_pid(&mut file),
            path,
            waited,
        }),
        Err((_, error)) => Err(error),
    }
}

/// Locks the snapshot directory `dir` itself, waiting up to `wait`. Blocks the calling
/// thread; a run uses [`lock_directory_async`].
pub fn lock_directory(dir: &Path, wait: Duration) -> Result<Lock, LockError> {
    lock_directory_blocking(dir, wait, &CancellationToken::new())
}

/// Locks the snapshot directory `dir` itself, waiting up to `wait` unless `cancel` ends the
/// wait.
pub async fn lock_directory_async(
    dir: &Path,
    wait: Duration,
    cancel: &CancellationToken,
) -> Result<Lock, LockError> {
    let (dir, cancel) = (dir.to_path_buf(), cancel.clone());
    off_the_runtime(&dir.clone(), move || {
        lock_directory_blocking(&dir, wait, &cancel)
    })
    .await
}

fn lock_directory_blocking(
    dir: &Path,
    wait: Duration,
    cancel: &CancellationToken,
) -> Result<Lock, LockError> {
    let io = |source| LockError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let absolute = std::fs::canonicalize(dir).map_err(io)?;
    let file = File::open(&absolute).map_err(io)?;
    let pid_file = lock_dir(&std::env::temp_dir())
        .join(format!("btrfs2s3-dir-{:016x}.pid", path_hash(&absolute)));
    match flock(file, dir, wait, cancel) {
        Ok(lock) => {
            let mut side = open_side_file(&pid_file)?;
            side.set_len(0).map_err(|source| LockError::Io {
                path: pid_file.clone(),
                source,
            })?;
            // Best effort: the pid is only for the message of a run that finds the lock held.
            let _ = writeln!(side, "{}", std::process::id());
            Ok(Lock {
                _flock: lock,
                path: dir.to_path_buf(),
                pid_file: Some(pid_file),
                previous_holder: None,
            })
        }
        Err((_, LockError::Held { path, waited, .. })) => Err(LockError::Held {
            holder: open_side_file(&pid_file)
                .ok()
                .and_then(|mut f| read_pid(&mut f)),
            path,
            waited,
        }),
        Err((_, error)) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> (PathBuf, PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("btrfs2s3-lock-test-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("config.yaml");
        std::fs::write(&config, "x").unwrap();
        (dir, config)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_held_lock_names_its_holder_and_can_be_waited_for() {
        let (dir, config) = scratch("held");
        let never = CancellationToken::new();

        let held = lock_async(&config, Duration::ZERO, &never).await.unwrap();
        // flock locks belong to open files: a second open in the same process conflicts.
        let error = lock_async(&config, Duration::ZERO, &never)
            .await
            .unwrap_err();
        assert!(
            matches!(error, LockError::Held { holder: Some(pid), .. } if pid == std::process::id()),
            "{error}"
        );
        assert!(error.is_held());
        assert!(error.to_string().contains("--wait"), "{error}");
        let started = Instant::now();
        let error = lock_async(&config, Duration::from_millis(300), &never)
            .await
            .unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(error.to_string().contains("waited"), "{error}");

        // Released by a waiting run's peer: the wait ends with the lock.
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(held);
        });
        lock_async(&config, Duration::from_secs(10), &never)
            .await
            .unwrap();
        releaser.join().unwrap();

        let held = lock_directory_async(&dir, Duration::ZERO, &never)
            .await
            .unwrap();
        let error = lock_directory_async(&dir, Duration::ZERO, &never)
            .await
            .unwrap_err();
        assert!(
            matches!(error, LockError::Held { holder: Some(pid), .. } if pid == std::process::id()),
            "{error}"
        );
        drop(held);
        lock_directory_async(&dir, Duration::ZERO, &never)
            .await
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_lock_file_tells_who_held_it_before() {
        let (dir, config) = scratch("previous");
        let _ = std::fs::remove_file(lock_path(&config));
        let first = lock(&config, Duration::ZERO).unwrap();
        assert_eq!(first.previous_holder(), None, "a new lock file");
        drop(first);
        let second = lock(&config, Duration::ZERO).unwrap();
        assert_eq!(second.previous_holder(), Some(std::process::id()));
        drop(second);
        // Another process ran in between: it left its pid.
        std::fs::write(lock_path(&config), "4242\n").unwrap();
        let third = lock(&config, Duration::ZERO).unwrap();
        assert_eq!(third.previous_holder(), Some(4242));
        drop(third);
        std::fs::remove_file(lock_path(&config)).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_planted_symlink_is_never_followed() {
        let (dir, config) = scratch("symlink");
        let target = dir.join("precious");
        std::fs::write(&target, "do not truncate me").unwrap();
        let planted = lock_path(&config);
        let _ = std::fs::remove_file(&planted);
        std::os::unix::fs::symlink(&target, &planted).unwrap();
        let error = lock(&config, Duration::ZERO).unwrap_err();
        assert!(error.is_unsafe(), "{error}");
        assert!(error.to_string().contains("symbolic link"), "{error}");
        assert!(
            error.to_string().contains(&planted.display().to_string()),
            "{error}"
        );
        assert_eq!(
            std::fs::read_to_string(&target).unwrap(),
            "do not truncate me"
        );
        std::fs::remove_file(&planted).unwrap();
        // A directory there is refused too.
        std::fs::create_dir(&planted).unwrap();
        assert!(lock(&config, Duration::ZERO).unwrap_err().is_unsafe());
        std::fs::remove_dir(&planted).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_signal_ends_a_long_wait() {
        let (dir, config) = scratch("cancel");
        let never = CancellationToken::new();
        let _held = lock_async(&config, Duration::ZERO, &never).await.unwrap();
        let _held_dir = lock_directory_async(&dir, Duration::ZERO, &never)
            .await
            .unwrap();
        let cancel = CancellationToken::new();
        let canceller = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            canceller.cancel();
        });
        let started = Instant::now();
        let error = lock_async(&config, Duration::from_secs(3600), &cancel)
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(matches!(error, LockError::Interrupted { .. }), "{error}");
        assert!(!error.is_held());
        let error = lock_directory_async(&dir, Duration::from_secs(3600), &cancel)
            .await
            .unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("interrupted while waiting for the lock on"),
            "{error}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
