//! `ls`: the files of one backup, as its chain of streams builds them, without btrfs.

use btrfs2s3_stream::model::{Node, Tree};
use serde::Serialize;
use snafu::Snafu;

use super::read::{BackupLabel, ReadError, Target, Transfer, TransferUi, read_catalog};
use crate::cancel::Cancel;
use crate::catalog::{Selection, UuidPrefix};
use crate::pipeline::{PipelineError, download_checked};
use crate::restore;
use crate::trust::Trustee;

/// What to list.
#[derive(Debug, Clone)]
pub struct LsOptions {
    /// The backup (a snapshot uuid or its start).
    pub uuid: UuidPrefix,
    /// Only this path and what is below it (relative to the snapshot's root).
    pub path: Option<String>,
    /// The commands each stream goes through before it is read (`pipe_through` undone).
    pub pipe_through: Vec<Vec<String>>,
}

/// One name of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LsEntry {
    /// Its path from the snapshot's root (bytes that are not UTF-8 replaced).
    pub path: String,
    /// `directory`, `file`, `symlink` or `special`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Its mode (permission bits).
    pub mode: u64,
    /// Its owner.
    pub uid: u64,
    /// Its group.
    pub gid: u64,
    /// Its size in bytes.
    pub size: u64,
    /// Its modification time (seconds since the epoch), when the stream set it.
    pub mtime: Option<i64>,
    /// A symlink's target.
    pub target: Option<String>,
}

/// The files of one backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LsReport {
    /// The backup's key.
    pub key: String,
    /// Its names, in path order.
    pub entries: Vec<LsEntry>,
}

/// Why `ls` could not list.
#[derive(Debug, Snafu)]
pub enum LsError {
    /// The remote, the selection or a command.
    #[snafu(transparent)]
    Read {
        /// Why.
        source: ReadError,
    },
    /// `--uuid` named a source (many backups), not one backup.
    #[snafu(display(
        "--uuid {uuid} names a source, not a backup: give a backup's uuid (see `list`)"
    ))]
    NotOneBackup {
        /// The uuid given.
        uuid: UuidPrefix,
    },
    /// A stream of the chain could not be read or does not apply.
    #[snafu(display("cannot read backup {key}"))]
    Stream {
        /// The backup.
        key: String,
        /// Why.
        source: PipelineError,
    },
    /// The backup has no such path.
    #[snafu(display("backup {key} has no {path:?}"))]
    NoSuchPath {
        /// The backup.
        key: String,
        /// The path asked for.
        path: String,
    },
}

impl LsError {
    /// Whether the command was asked for something that cannot be.
    #[must_use]
    pub fn is_usage(&self) -> bool {
        match self {
            LsError::Read { source } => source.is_usage(),
            LsError::NotOneBackup { .. } | LsError::NoSuchPath { .. } => true,
            LsError::Stream { .. } => false,
        }
    }
}

/// Lists the files of the backup `options.uuid` of the one remote of `target`: its chain
/// (the full backup, then each differential down to it) is streamed through `pipe_through`
/// into btrfs2s3's own parser and applied to a model of the tree. Memory holds the names,
/// not the data.
pub async fn ls(
    target: &Target,
    options: &LsOptions,
    ui: &impl TransferUi,
    cancel: &Cancel,
) -> Result<LsReport, LsError> {
    let Chain {
        remote,
        client,
        commands,
        backups: chain,
    } = chain(target, &options.uuid, &options.pipe_through, cancel).await?;
    let Some(last) = chain.last() else {
        return Err(LsError::NotOneBackup {
            uuid: options.uuid.clone(),
        });
    };
    let mut tree = Tree::new();
    for backup in &chain {
        let ctime = btrfs2s3_s3::format_ctime(backup.meta.ctime, &target.timezone);
        let transfer = Transfer::Verify {
            remote: &remote.id,
            backup: BackupLabel::of_backup(backup, &ctime),
        };
        ui.started(transfer);
        let progress = |bytes| ui.progress(bytes);
        let start = if backup.meta.send_parent_uuid.is_some() {
            Tree::from_parent(&tree)
        } else {
            Tree::new()
        };
        let result = download_checked(
            &client,
            &backup.key,
            &backup.pieces,
            &commands,
            start,
            &progress,
        )
        .await;
        let (result, next) = match result {
            Ok((size, next)) => (Ok(size), Some(next)),
            Err(error) => (Err(error), None),
        };
        ui.finished(transfer, &result);
        if let Err(source) = result {
            return Err(LsError::Stream {
                key: backup.key.to_string(),
                source,
            });
        }
        if let Some(next) = next {
            tree = next;
        }
    }
    let key = last.key.to_string();
    let wanted = options
        .path
        .as_deref()
        .map(|p| p.trim_matches('/').as_bytes().to_vec());
    if let Some(path) = &wanted
        && tree.inode(path).is_none()
    {
        return Err(LsError::NoSuchPath {
            key,
            path: options.path.clone().unwrap_or_default(),
        });
    }
    let entries = entries(&tree, wanted.as_deref());
    Ok(LsReport { key, entries })
}

/// One backup's chain: the full backup, then each differential down to it.
pub(super) struct Chain<'t> {
    pub remote: &'t crate::config::Remote,
    pub client: btrfs2s3_s3::Remote,
    pub commands: Vec<crate::pipeline::PipeCommand>,
    pub backups: Vec<crate::plan::BackupState>,
}

/// Reads the one remote of `target` and selects the chain of backup `uuid`; the commands
/// that undo `pipe_through` are checked.
pub(super) async fn chain<'t>(
    target: &'t Target,
    uuid: &UuidPrefix,
    pipe_through: &[Vec<String>],
    cancel: &Cancel,
) -> Result<Chain<'t>, LsError> {
    let [remote] = target.remotes.as_slice() else {
        return Err(ReadError::NotOneRemote {
            count: target.remotes.len(),
        }
        .into());
    };
    let commands =
        restore::undo_chain(pipe_through, Trustee::current()).map_err(ReadError::from)?;
    let (client, catalog) = read_catalog(remote, cancel).await?;
    let backups: Vec<crate::plan::BackupState> = catalog
        .select(&Selection::Uuid(uuid.clone()))
        .map_err(ReadError::from)?
        .into_iter()
        .cloned()
        .collect();
    // A backup and its ancestors form one line; a source's backups do not.
    let one_line = backups
        .last()
        .is_some_and(|last| uuid.matches(last.meta.uuid))
        && backups
            .windows(2)
            .all(|pair| pair[1].meta.send_parent_uuid == Some(pair[0].meta.uuid));
    if !one_line {
        return Err(LsError::NotOneBackup { uuid: uuid.clone() });
    }
    Ok(Chain {
        remote,
        client,
        commands,
        backups,
    })
}

/// The names of `tree` at and below `wanted` (all of them without).
fn entries(tree: &Tree, wanted: Option<&[u8]>) -> Vec<LsEntry> {
    tree.entries()
        .filter(|(path, _)| {
            wanted.is_none_or(|wanted| btrfs2s3_stream::extract::is_below(path, wanted))
        })
        .map(|(path, inode)| LsEntry {
            path: String::from_utf8_lossy(path).into_owned(),
            kind: match inode.node {
                Node::Directory => "directory",
                Node::File => "file",
                Node::Symlink => "symlink",
                Node::Special => "special",
            },
            mode: inode.mode & 0o7777,
            uid: inode.uid,
            gid: inode.gid,
            size: inode.size,
            mtime: inode.mtime.map(|t| t.seconds),
            target: inode
                .target
                .as_deref()
                .map(|t| String::from_utf8_lossy(t).into_owned()),
        })
        .collect()
}
