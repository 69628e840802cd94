//! Getting backups back: which to receive in what order (pure), receiving one into a btrfs
//! filesystem, and verifying one without writing anything.

use std::collections::BTreeSet;
use std::path::Path;

use btrfs2s3_btrfs::SnapshotDir;
use btrfs2s3_s3::{Remote, format_ctime};
use jiff::tz::TimeZone;
use serde::Serialize;
use uuid::Uuid;

use crate::catalog::{Catalog, SelectError, Selection};
use crate::pipeline::{PipeCommand, PipelineError, download_into};
use crate::trust::{Trustee, Untrusted};

/// One backup to restore, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestoreItem {
    /// The object key.
    pub key: String,
    /// The keys of its other pieces, when it is stored as several objects.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pieces: Vec<String>,
    /// The snapshot's uuid.
    pub uuid: Uuid,
    /// The source's name, from the key.
    pub source: String,
    /// The snapshot it was sent against; received before it.
    pub send_parent: Option<Uuid>,
    /// The snapshot's ctime in the configured time zone.
    pub ctime: String,
    /// The snapshot's ctransid.
    pub ctransid: i64,
    /// The object's size.
    pub size: u64,
    /// Its storage class, when the server says.
    pub storage_class: Option<String>,
    /// Already in the destination (a subvolume there was received from it): skipped.
    pub present: bool,
}

/// The backups to receive for `selection`, parents first, marking those already `present`
/// (received uuids of the destination's subvolumes).
pub fn plan_restore(
    catalog: &Catalog,
    selection: &Selection,
    present: &BTreeSet<Uuid>,
    tz: &TimeZone,
) -> Result<Vec<RestoreItem>, SelectError> {
    Ok(catalog
        .select(selection)?
        .into_iter()
        .map(|backup| RestoreItem {
            key: backup.key.to_string(),
            pieces: backup.pieces.iter().map(ToString::to_string).collect(),
            uuid: backup.meta.uuid,
            source: backup.source_name().to_owned(),
            send_parent: backup.meta.send_parent_uuid,
            ctime: format_ctime(backup.meta.ctime, tz),
            ctransid: backup.meta.ctransid,
            size: backup.size,
            storage_class: backup.storage_class.clone(),
            present: present.contains(&backup.meta.uuid),
        })
        .collect())
}

/// Opens the destination of a restore (it must be a directory on btrfs) and returns the
/// uuids that the subvolumes directly inside it were received from.
pub fn received_uuids(dest: &Path) -> Result<BTreeSet<Uuid>, btrfs2s3_btrfs::Error> {
    Ok(SnapshotDir::open(dest)?
        .subvolumes()?
        .into_iter()
        .filter_map(|subvolume| subvolume.info.received_uuid)
        .collect())
}

/// The commands a stream goes through on its way back: `pipe_through` (as the user typed
/// them), then `btrfs receive --chroot DEST`, or `btrfs receive --dump` without a destination (which
/// parses every command of the stream and checks its checksums without writing anything).
/// Every program is looked up and checked like the config's.
pub fn receive_chain(
    pipe_through: &[Vec<String>],
    dest: Option<&Path>,
    trustee: Trustee,
) -> Result<Vec<PipeCommand>, Untrusted> {
    // `--chroot`: the stream comes from a bucket others may write to; whatever paths it
    // names, `btrfs receive` confined to DEST cannot write outside it.
    let receive: Vec<String> = match dest {
        Some(dest) => vec!["--chroot".to_owned(), dest.to_string_lossy().into_owned()],
        None => vec!["--dump".to_owned()],
    };
    pipe_through
        .iter()
        .cloned()
        .chain([["btrfs".to_owned(), "receive".to_owned()]
            .into_iter()
            .chain(receive)
            .collect()])
        .map(|argv| PipeCommand::resolved(argv, trustee))
        .collect()
}

/// The commands that undo `pipe_through` on a stream's way back (for btrfs2s3's own parser,
/// which reads their output), looked up and checked like the config's.
pub fn undo_chain(
    pipe_through: &[Vec<String>],
    trustee: Trustee,
) -> Result<Vec<PipeCommand>, Untrusted> {
    pipe_through
        .iter()
        .cloned()
        .map(|argv| PipeCommand::resolved(argv, trustee))
        .collect()
}

/// Streams backup `key` (with its other `pieces`) through `commands` (see [`receive_chain`])
/// into DEST. If that fails,
/// the half-received subvolume it leaves (writable, without a received uuid) is deleted, so
/// that running the restore again starts that backup afresh.
pub async fn receive<K: AsRef<str> + Sync>(
    remote: &Remote,
    key: &str,
    pieces: &[K],
    dest: &Path,
    commands: &[PipeCommand],
    progress: &(dyn Fn(u64) + Sync),
) -> Result<u64, PipelineError> {
    // The directory is looked at on a blocking thread: btrfs calls stay off the runtime's
    // workers.
    let dest = dest.to_path_buf();
    let (directory, before) = tokio::task::spawn_blocking(move || {
        let directory = SnapshotDir::open(&dest).ok();
        let before: BTreeSet<u64> = directory
            .as_ref()
            .and_then(|dir| dir.subvolumes().ok())
            .map(|subvolumes| subvolumes.iter().map(|s| s.info.id).collect())
            .unwrap_or_default();
        (directory, before)
    })
    .await
    .map_err(|error| PipelineError::Internal {
        message: format!("the thread that looked at the destination failed: {error}"),
    })?;
    let result = download_into(remote, key, pieces, commands, progress)
        .await
        .map_err(explain_stream_version);
    if result.is_err()
        && let Some(dir) = directory
    {
        // Best effort: the receive's error is what the user needs to see.
        let _ = tokio::task::spawn_blocking(move || delete_partial(&dir, &before)).await;
    }
    result
}

/// Deletes what a failed `btrfs receive` left in `dir`: subvolumes that were not there
/// `before` and have no received uuid (the receive sets it last).
fn delete_partial(dir: &SnapshotDir, before: &BTreeSet<u64>) {
    let Ok(after) = dir.subvolumes() else {
        return;
    };
    for partial in after
        .iter()
        .filter(|s| !before.contains(&s.info.id) && s.info.received_uuid.is_none())
    {
        let _ = dir.delete_snapshot(&partial.name, partial.info.id);
    }
}

/// Streams backup `key` (with its other `pieces`) through `commands` (see [`receive_chain`]
/// without a destination), which checks it without writing anything.
pub async fn verify<K: AsRef<str> + Sync>(
    remote: &Remote,
    key: &str,
    pieces: &[K],
    commands: &[PipeCommand],
    progress: &(dyn Fn(u64) + Sync),
) -> Result<u64, PipelineError> {
    download_into(remote, key, pieces, commands, progress)
        .await
        .map_err(explain_stream_version)
}

/// A `btrfs receive` that refused the stream's version gets told why: the backup was sent
/// with protocol 2 and btrfs-progs is older than 5.19 ("stream version 2 not supported").
fn explain_stream_version(error: PipelineError) -> PipelineError {
    match &error {
        PipelineError::Command { stderr, .. } if stderr.contains("stream version") => {
            PipelineError::ReceiveTooOld {
                source: Box::new(error),
            }
        }
        _ => error,
    }
}

/// A command line that cannot be split into arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitError {
    /// The command line.
    pub text: String,
    /// What is wrong.
    pub reason: &'static str,
}

impl std::fmt::Display for SplitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cannot split {:?} into arguments: {}",
            self.text, self.reason
        )
    }
}

impl std::error::Error for SplitError {}

/// Splits a command line into arguments the way a POSIX shell would (whitespace separates;
/// single quotes keep everything; double quotes keep everything but `\"`, `\\`, `\$` and
/// `` \` ``; a backslash outside quotes escapes the next character), without running a shell:
/// no variables, globs or redirections.
pub fn split_command(text: &str) -> Result<Vec<String>, SplitError> {
    let error = |reason| SplitError {
        text: text.to_owned(),
        reason,
    };
    let mut arguments = Vec::new();
    let mut current: Option<String> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if let Some(argument) = current.take() {
                    arguments.push(argument);
                }
            }
            '\'' => {
                let argument = current.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => argument.push(c),
                        None => return Err(error("unterminated single quote")),
                    }
                }
            }
            '"' => {
                let argument = current.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => argument.push(c),
                            Some(c) => {
                                argument.push('\\');
                                argument.push(c);
                            }
                            None => return Err(error("unterminated double quote")),
                        },
                        Some(c) => argument.push(c),
                        None => return Err(error("unterminated double quote")),
                    }
                }
            }
            '\\' => match chars.next() {
                Some(c) => current.get_or_insert_with(String::new).push(c),
                None => return Err(error("a trailing backslash")),
            },
            c => current.get_or_insert_with(String::new).push(c),
        }
    }
    arguments.extend(current);
    if arguments.is_empty() {
        return Err(error("no command"));
    }
    Ok(arguments)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: &[&str]) {
        assert_eq!(split_command(text).unwrap(), expected, "{text:?}");
    }

    #[test]
    fn an_old_receive_is_told_why_it_cannot_read_a_stream() {
        let refused = |stderr: &str| PipelineError::Command {
            role: "command",
            command: vec!["btrfs".to_owned(), "receive".to_owned()],
            status: "exited with status 1".to_owned(),
            stderr: stderr.to_owned(),
        };
        let explained = explain_stream_version(refused(
            "ERROR: stream version 2 not supported, please use newer version",
        ));
        let text = crate::error_chain(&explained);
        assert!(
            text.contains("btrfs-progs 5.19 or newer") && text.contains("stream version 2"),
            "{text}"
        );
        let other = explain_stream_version(refused("ERROR: checksum mismatch"));
        assert!(matches!(other, PipelineError::Command { .. }));
    }

    #[test]
    fn splits_like_a_shell() {
        check("gunzip", &["gunzip"]);
        check("  zstd  -d   -T0 ", &["zstd", "-d", "-T0"]);
        check(
            "age -d -i '/root/my key.txt'",
            &["age", "-d", "-i", "/root/my key.txt"],
        );
        check(
            r#"sh -c "echo \"hi\" \$HOME""#,
            &["sh", "-c", "echo \"hi\" $HOME"],
        );
        check(r"a\ b c\\d", &["a b", r"c\d"]);
        check("''", &[""]);
        check(r#"x"y"'z'"#, &["xyz"]);
        check(r#""\n""#, &[r"\n"]);
    }

    #[test]
    fn rejects_what_cannot_be_split() {
        for (text, reason) in [
            ("", "no command"),
            ("   ", "no command"),
            ("'open", "unterminated single quote"),
            ("\"open", "unterminated double quote"),
            ("end\\", "a trailing backslash"),
        ] {
            assert_eq!(split_command(text).unwrap_err().reason, reason, "{text:?}");
        }
    }
}
