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

/// A held lock; released on drop.
#[derive(Debug)]
pub struct Lock {
    _flock: Flock<File>,
    /// What is locked (the lock file, or the directory).
    path: PathBuf,
    /// A side file holding our pid, removed on drop.
    pid_file: Option<PathBuf>,
}

impl Lock {
    /// The lock file, or the locked directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
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
        }
    }
}

impl std::error::Error for LockError {}

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

/// Tries `flock` until it succeeds or `wait` is over.
fn flock(file: File, path: &Path, wait: Duration) -> Result<Flock<File>, (File, LockError)> {
    let started = Instant::now();
    let mut file = file;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
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

fn read_pid(file: &mut impl Read) -> Option<u32> {
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// Takes the lock for `config`, waiting up to `wait` for another run to finish.
pub fn lock(config: &Path, wait: Duration) -> Result<Lock, LockError> {
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
    match flock(file, &path, wait) {
        Ok(mut lock) => {
            lock.set_len(0).map_err(io)?;
            lock.rewind().map_err(io)?;
            writeln!(lock, "{}", std::process::id()).map_err(io)?;
            Ok(Lock {
                _flock: lock,
                path,
                pid_file: None,
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

/// Locks the snapshot directory `dir` itself, waiting up to `wait`.
pub fn lock_directory(dir: &Path, wait: Duration) -> Result<Lock, LockError> {
    let io = |source| LockError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let absolute = std::fs::canonicalize(dir).map_err(io)?;
    let file = File::open(&absolute).map_err(io)?;
    let pid_file = lock_dir(&std::env::temp_dir())
        .join(format!("btrfs2s3-dir-{:016x}.pid", path_hash(&absolute)));
    match flock(file, dir, wait) {
        Ok(lock) => {
            // Best effort: the pid is only for the message of a run that finds the lock held.
            let _ = std::fs::write(&pid_file, format!("{}\n", std::process::id()));
            Ok(Lock {
                _flock: lock,
                path: dir.to_path_buf(),
                pid_file: Some(pid_file),
            })
        }
        Err((_, LockError::Held { path, waited, .. })) => Err(LockError::Held {
            holder: File::open(&pid_file)
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

    #[test]
    fn a_held_lock_names_its_holder_and_can_be_waited_for() {
        let dir = std::env::temp_dir().join(format!("btrfs2s3-lock-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("config.yaml");
        std::fs::write(&config, "x").unwrap();

        let held = lock(&config, Duration::ZERO).unwrap();
        // flock locks belong to open files: a second open in the same process conflicts.
        let error = lock(&config, Duration::ZERO).unwrap_err();
        assert!(
            matches!(error, LockError::Held { holder: Some(pid), .. } if pid == std::process::id()),
            "{error}"
        );
        assert!(error.to_string().contains("--wait"), "{error}");
        let started = Instant::now();
        let error = lock(&config, Duration::from_millis(300)).unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(error.to_string().contains("waited"), "{error}");

        // Released by a waiting run's peer: the wait ends with the lock.
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(held);
        });
        lock(&config, Duration::from_secs(10)).unwrap();
        releaser.join().unwrap();

        let held = lock_directory(&dir, Duration::ZERO).unwrap();
        let error = lock_directory(&dir, Duration::ZERO).unwrap_err();
        assert!(
            matches!(error, LockError::Held { holder: Some(pid), .. } if pid == std::process::id()),
            "{error}"
        );
        drop(held);
        lock_directory(&dir, Duration::ZERO).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
