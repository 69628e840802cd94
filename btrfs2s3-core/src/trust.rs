//! What root runs must be out of other users' reach, the way sudo treats sudoers files, sshd
//! `authorized_keys` and cron crontabs: the config (it names the commands btrfs2s3 runs), the
//! programs of `pipe_through`, the snapshot directories (root destroys subvolumes there) and
//! the lock files.
//!
//! A file is trusted when it belongs to root or to the user running btrfs2s3 and nobody else
//! can write it; a directory on its path when nobody else can write it, or when its sticky bit
//! keeps others from renaming or removing what they do not own (`/tmp`).

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use snafu::Snafu;

/// The `PATH` `pipe_through` programs are looked up in and run with: the system's
/// directories only, never whatever the environment of the run says.
pub const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Variables removed from the environment of the commands btrfs2s3 runs: they change which
/// code a program loads or runs before its own.
#[must_use]
pub fn is_dangerous_variable(name: &OsStr) -> bool {
    let name = name.as_encoded_bytes();
    name.starts_with(b"LD_") || name == b"BASH_ENV" || name == b"ENV"
}

/// Whose files are trusted: root's, and those of the user btrfs2s3 runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trustee {
    uid: u32,
}

impl Trustee {
    /// The user this process runs as.
    #[must_use]
    pub fn current() -> Trustee {
        Trustee {
            uid: nix::unistd::geteuid().as_raw(),
        }
    }

    /// A given user (for tests).
    #[must_use]
    pub fn user(uid: u32) -> Trustee {
        Trustee { uid }
    }

    fn trusts(self, uid: u32) -> bool {
        uid == 0 || uid == self.uid
    }

    fn name(self) -> &'static str {
        if self.uid == 0 { "root" } else { "you" }
    }

    fn chown_target(self) -> String {
        if self.uid == 0 {
            "root:".to_owned()
        } else {
            self.uid.to_string()
        }
    }
}

/// What a file or directory is, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The config.
    Config,
    /// A `pipe_through` program.
    Program,
    /// A snapshot directory.
    SnapshotDirectory,
    /// A directory on the path of one of those.
    Directory,
    /// A lock or pid file.
    LockFile,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Config => "config",
            Kind::Program => "program",
            Kind::SnapshotDirectory => "snapshot directory",
            Kind::Directory => "directory",
            Kind::LockFile => "lock file",
        })
    }
}

/// Why a file or directory cannot be trusted.
#[derive(Debug, Snafu)]
#[snafu(visibility(pub(crate)))]
pub enum Untrusted {
    /// It belongs to someone else.
    #[snafu(display(
        "{kind} {} belongs to user {owner}: someone other than {} could change what btrfs2s3 runs; fix: {fix}",
        path.display(), trustee.name()
    ))]
    Owner {
        /// What it is.
        kind: Kind,
        /// It.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// Who may own it.
        trustee: Trustee,
        /// The commands that make it safe.
        fix: String,
    },
    /// Others can write it.
    #[snafu(display(
        "{kind} {} can be changed by {who} (mode {mode:04o}): someone other than {} could change what btrfs2s3 runs; fix: {fix}",
        path.display(), trustee.name()
    ))]
    Writable {
        /// What it is.
        kind: Kind,
        /// It.
        path: PathBuf,
        /// Who besides its owner.
        who: String,
        /// Its mode.
        mode: u32,
        /// Who may write it.
        trustee: Trustee,
        /// The commands that make it safe.
        fix: String,
    },
    /// It is not what it must be (a symlink where a lock file goes, a directory...).
    #[snafu(display("{kind} {} is not a regular file", path.display()))]
    NotRegular {
        /// What it is.
        kind: Kind,
        /// It.
        path: PathBuf,
    },
    /// It cannot be looked at.
    #[snafu(display("cannot check {kind} {}", path.display()))]
    Inspect {
        /// What it is.
        kind: Kind,
        /// It.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A `pipe_through` program is not where it is said to be.
    #[snafu(display("program {program:?} is not found in {SYSTEM_PATH} (give its absolute path)"))]
    ProgramNotFound {
        /// The program as written.
        program: String,
    },
    /// A `pipe_through` program given as a relative path.
    #[snafu(display(
        "program {program:?} is a relative path: give an absolute path, or a name to look up in {SYSTEM_PATH}"
    ))]
    RelativeProgram {
        /// The program as written.
        program: String,
    },
}

/// Who besides the owner can write something with this mode and group, if anyone.
fn other_writers(mode: u32, gid: u32) -> Option<String> {
    if mode & 0o002 != 0 {
        Some("every user".to_owned())
    } else if mode & 0o020 != 0 {
        Some(format!("the members of group {gid}"))
    } else {
        None
    }
}

/// Checks the metadata of a file (or, for `Kind::SnapshotDirectory`, the directory itself).
pub fn check_metadata(
    kind: Kind,
    path: &Path,
    metadata: &std::fs::Metadata,
    trustee: Trustee,
) -> Result<(), Untrusted> {
    let fix = |what: &str| format!("chown {} {what}; chmod go-w {what}", trustee.chown_target());
    let shown = path.display().to_string();
    if !trustee.trusts(metadata.uid()) {
        return Err(Untrusted::Owner {
            kind,
            path: path.to_path_buf(),
            owner: metadata.uid(),
            trustee,
            fix: fix(&shown),
        });
    }
    if let Some(who) = other_writers(metadata.mode(), metadata.gid()) {
        return Err(Untrusted::Writable {
            kind,
            path: path.to_path_buf(),
            who,
            mode: metadata.mode() & 0o7777,
            trustee,
            fix: fix(&shown),
        });
    }
    Ok(())
}

/// Checks every directory from `path`'s parent up to `/`: each belongs to root or the
/// trustee, and is writable by nobody else unless its sticky bit is set. `path` must be
/// absolute and free of symlinks (canonical).
pub fn check_directories(path: &Path, trustee: Trustee) -> Result<(), Untrusted> {
    check_directory_chain(path.ancestors().skip(1), trustee)
}

/// [`check_directories`] of `dir` itself and every directory above it.
pub fn check_directory_and_above(dir: &Path, trustee: Trustee) -> Result<(), Untrusted> {
    check_directory_chain(dir.ancestors(), trustee)
}

fn check_directory_chain<'a>(
    dirs: impl Iterator<Item = &'a Path>,
    trustee: Trustee,
) -> Result<(), Untrusted> {
    for dir in dirs {
        let metadata = std::fs::metadata(dir).map_err(|source| Untrusted::Inspect {
            kind: Kind::Directory,
            path: dir.to_path_buf(),
            source,
        })?;
        let sticky = metadata.mode() & 0o1000 != 0;
        let shown = dir.display().to_string();
        if !trustee.trusts(metadata.uid()) {
            return Err(Untrusted::Owner {
                kind: Kind::Directory,
                path: dir.to_path_buf(),
                owner: metadata.uid(),
                trustee,
                fix: format!("chown {} {shown}", trustee.chown_target()),
            });
        }
        if let (Some(who), false) = (other_writers(metadata.mode(), metadata.gid()), sticky) {
            return Err(Untrusted::Writable {
                kind: Kind::Directory,
                path: dir.to_path_buf(),
                who,
                mode: metadata.mode() & 0o7777,
                trustee,
                fix: format!("chmod go-w {shown}"),
            });
        }
    }
    Ok(())
}

/// Checks an existing file or directory and every directory above it, following symlinks to
/// what they name.
pub fn check_path(kind: Kind, path: &Path, trustee: Trustee) -> Result<PathBuf, Untrusted> {
    let inspect = |source| Untrusted::Inspect {
        kind,
        path: path.to_path_buf(),
        source,
    };
    let canonical = std::fs::canonicalize(path).map_err(inspect)?;
    let metadata = std::fs::metadata(&canonical).map_err(inspect)?;
    check_metadata(kind, &canonical, &metadata, trustee)?;
    check_directories(&canonical, trustee)?;
    Ok(canonical)
}

/// The absolute path of `program` as a `pipe_through` command names it: an absolute path as
/// it is, a bare name looked up in [`SYSTEM_PATH`]; checked like the config (nobody but root
/// and the trustee can change it, or a directory on its path).
pub fn resolve_program(program: &str, trustee: Trustee) -> Result<PathBuf, Untrusted> {
    let path = if program.starts_with('/') {
        PathBuf::from(program)
    } else if program.contains('/') {
        return Err(Untrusted::RelativeProgram {
            program: program.to_owned(),
        });
    } else {
        SYSTEM_PATH
            .split(':')
            .map(|dir| Path::new(dir).join(program))
            .find(|candidate| is_executable(candidate))
            .ok_or_else(|| Untrusted::ProgramNotFound {
                program: program.to_owned(),
            })?
    };
    if !path.exists() {
        return Err(Untrusted::ProgramNotFound {
            program: program.to_owned(),
        });
    }
    // The directories of the name as written count too: a symlink in a directory others
    // can write could be pointed elsewhere.
    if let Some(parent) = path.parent() {
        check_directory_and_above(parent, trustee)?;
    }
    check_path(Kind::Program, &path, trustee)?;
    Ok(path)
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("btrfs2s3-trust-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn files_others_can_write_are_refused_with_the_fix() {
        let dir = scratch("files");
        let me = Trustee::current();
        let file = dir.join("config.yaml");
        std::fs::write(&file, "x").unwrap();
        for (mode, refused) in [(0o600, false), (0o644, false), (0o664, true), (0o666, true)] {
            chmod(&file, mode);
            let result = check_path(Kind::Config, &file, me);
            assert_eq!(result.is_err(), refused, "{mode:o}: {result:?}");
            if let Err(error) = result {
                let message = error.to_string();
                assert!(message.contains("chmod go-w"), "{message}");
                assert!(message.contains(&file.display().to_string()), "{message}");
            }
        }
        // Someone else's file, even read-only.
        chmod(&file, 0o600);
        let stranger = Trustee::user(4242);
        let uid = std::fs::metadata(&file).unwrap().uid();
        if uid != 0 {
            assert!(matches!(
                check_path(Kind::Config, &file, stranger),
                Err(Untrusted::Owner { .. })
            ));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn directories_others_can_write_are_refused_unless_sticky() {
        let dir = scratch("dirs");
        let me = Trustee::current();
        let open = dir.join("open");
        std::fs::create_dir(&open).unwrap();
        let file = open.join("config.yaml");
        std::fs::write(&file, "x").unwrap();
        chmod(&file, 0o600);
        chmod(&open, 0o777);
        let error = check_path(Kind::Config, &file, me).unwrap_err();
        assert!(
            matches!(&error, Untrusted::Writable { kind: Kind::Directory, path, .. } if *path == open),
            "{error}"
        );
        assert!(error.to_string().contains("every user"), "{error}");
        chmod(&open, 0o1777);
        check_path(Kind::Config, &file, me).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn programs_are_looked_up_in_the_system_path_only() {
        let me = Trustee::current();
        let sh = resolve_program("sh", me).unwrap();
        assert!(sh.is_absolute() && sh.ends_with("sh"), "{}", sh.display());
        assert!(matches!(
            resolve_program("no-such-program-btrfs2s3", me),
            Err(Untrusted::ProgramNotFound { .. })
        ));
        assert!(matches!(
            resolve_program("bin/sh", me),
            Err(Untrusted::RelativeProgram { .. })
        ));
        let dir = scratch("programs");
        let program = dir.join("tool");
        std::fs::write(&program, "#!/bin/sh\n").unwrap();
        chmod(&program, 0o755);
        assert_eq!(
            resolve_program(program.to_str().unwrap(), me).unwrap(),
            program
        );
        chmod(&program, 0o777);
        assert!(resolve_program(program.to_str().unwrap(), me).is_err());
        chmod(&program, 0o755);
        chmod(&dir, 0o777);
        assert!(resolve_program(program.to_str().unwrap(), me).is_err());
        chmod(&dir, 0o755);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn loader_variables_are_dangerous() {
        for name in [
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "LD_AUDIT",
            "BASH_ENV",
            "ENV",
        ] {
            assert!(is_dangerous_variable(OsStr::new(name)), "{name}");
        }
        for name in ["HOME", "LANG", "PATH", "GNUPGHOME", "OLD_PWD"] {
            assert!(!is_dangerous_variable(OsStr::new(name)), "{name}");
        }
    }
}
