//! `extract`: some files or directories of one backup, as they are in it, on any filesystem.
//!
//! Two passes over the backup's chain: the first applies it to a model only and records its
//! clones, to learn which inodes' data the wanted paths need (theirs, and whatever their data
//! was cloned from); the second applies it to a working tree in the destination with every
//! name but only that data, then moves the wanted paths into place and removes the rest.
//! Disk use is what is extracted, what clones of it need, and an empty file per other name.

use std::path::{Path, PathBuf};

use btrfs2s3_stream::extract::{self, Clones};
use btrfs2s3_stream::model::Tree;
use btrfs2s3_stream::receive::{self, Notes, Options, Parent, Receiver};
use snafu::Snafu;

use super::ls::{LsError, chain};
use super::read::{BackupLabel, Target, Transfer, TransferUi};
use crate::cancel::Cancel;
use crate::catalog::UuidPrefix;
use crate::pipeline::{PipelineError, download_read};

/// What to extract.
#[derive(Debug, Clone)]
pub struct ExtractOptions {
    /// The backup (a snapshot uuid or its start).
    pub uuid: UuidPrefix,
    /// The paths (relative to the snapshot's root) to extract, with what is below them.
    pub paths: Vec<String>,
    /// Where: each path lands at `to/<path>`.
    pub to: PathBuf,
    /// The commands each stream goes through before it is read (`pipe_through` undone).
    pub pipe_through: Vec<Vec<String>>,
}

/// What was extracted.
#[derive(Debug)]
pub struct ExtractReport {
    /// The backup's key.
    pub key: String,
    /// Where each path went.
    pub extracted: Vec<PathBuf>,
    /// Bytes downloaded (the chain is read twice).
    pub downloaded: u64,
    /// What could not be restored as it was.
    pub notes: Notes,
}

/// Why `extract` could not extract.
#[derive(Debug, Snafu)]
pub enum ExtractError {
    /// The remote, the selection, a command, a stream, or a path the backup lacks.
    #[snafu(transparent)]
    Select {
        /// Why.
        source: LsError,
    },
    /// A path names the whole snapshot.
    #[snafu(display(
        "a path is the snapshot's root: to get all of it, use `restore --plain --latest-only`"
    ))]
    WholeSnapshot,
    /// The destination already has a wanted path.
    #[snafu(display("{} exists already: extract into another directory", path.display()))]
    Exists {
        /// The path.
        path: PathBuf,
    },
    /// The destination cannot be written.
    #[snafu(display("cannot {what} {}", path.display()))]
    Local {
        /// What was being done.
        what: &'static str,
        /// To what.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl ExtractError {
    /// Whether the command was asked for something that cannot be.
    #[must_use]
    pub fn is_usage(&self) -> bool {
        match self {
            ExtractError::Select { source } => source.is_usage(),
            ExtractError::Exists { .. } | ExtractError::WholeSnapshot => true,
            ExtractError::Local { .. } => false,
        }
    }
}

fn local(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ExtractError {
    let path = path.to_path_buf();
    move |source| ExtractError::Local { what, path, source }
}

/// Extracts `options.paths` of backup `options.uuid` of the one remote of `target` into
/// `options.to`.
pub async fn extract(
    target: &Target,
    options: &ExtractOptions,
    ui: &impl TransferUi,
    cancel: &Cancel,
) -> Result<ExtractReport, ExtractError> {
    // The paths first: nothing is read from the remote for a command that cannot work.
    let wanted: Vec<Vec<u8>> = options
        .paths
        .iter()
        .map(|path| path.trim_matches('/').as_bytes().to_vec())
        .collect();
    for path in &wanted {
        if path.is_empty() {
            return Err(ExtractError::WholeSnapshot);
        }
        let target_path = options.to.join(String::from_utf8_lossy(path).as_ref());
        if std::fs::symlink_metadata(&target_path).is_ok() {
            return Err(ExtractError::Exists { path: target_path });
        }
    }
    let chain = chain(target, &options.uuid, &options.pipe_through, cancel).await?;
    let Some(last) = chain.backups.last() else {
        return Err(LsError::NotOneBackup {
            uuid: options.uuid.clone(),
        }
        .into());
    };
    let key = last.key.to_string();
    std::fs::create_dir_all(&options.to).map_err(local("create", &options.to))?;
    let mut downloaded = 0;

    let (tree, clones, size) = first_pass(target, &chain, ui).await?;
    downloaded += size;
    for (path, text) in wanted.iter().zip(&options.paths) {
        if tree.inode(path).is_none() {
            return Err(LsError::NoSuchPath {
                key,
                path: text.clone(),
            }
            .into());
        }
    }
    let paths: Vec<&[u8]> = wanted.iter().map(Vec::as_slice).collect();
    let needed = extract::needed(&tree, &paths, &clones);
    drop(tree);

    // Second pass: every name, the needed data, in one working tree.
    let work = options
        .to
        .join(format!(".btrfs2s3-extract-{}", last.meta.uuid));
    let shadow = options
        .to
        .join(format!(".btrfs2s3-extract-shadow-{}", last.meta.uuid));
    let _ = receive::remove_tree(&work);
    std::fs::create_dir(&work).map_err(local("create", &work))?;
    let result = second_pass(target, &chain, needed, &work, &shadow, ui).await;
    let _ = receive::remove_tree(&shadow);
    let (size, notes) = match result {
        Ok(done) => done,
        Err(error) => {
            let _ = receive::remove_tree(&work);
            return Err(error);
        }
    };
    downloaded += size;
    let mut extracted = Vec::new();
    for path in &wanted {
        let relative = PathBuf::from(String::from_utf8_lossy(path).as_ref());
        let into = options.to.join(&relative);
        if let Some(parent) = into.parent() {
            std::fs::create_dir_all(parent).map_err(local("create", parent))?;
        }
        move_out(&work.join(&relative), &into).map_err(local("move into", &into))?;
        extracted.push(into);
    }
    // The rest of the tree: names without data.
    receive::remove_tree(&work).map_err(local("remove", &work))?;
    Ok(ExtractReport {
        key,
        extracted,
        downloaded,
        notes,
    })
}

/// The first pass over `chain`: the model of its last tree and the clones of each stream.
async fn first_pass(
    target: &Target,
    chain: &super::ls::Chain<'_>,
    ui: &impl TransferUi,
) -> Result<(Tree, Vec<Clones>, u64), ExtractError> {
    let mut downloaded = 0;
    let mut tree = Tree::new();
    let mut clones: Vec<Clones> = Vec::new();
    for backup in &chain.backups {
        let ctime = btrfs2s3_s3::format_ctime(backup.meta.ctime, &target.timezone);
        let transfer = Transfer::Verify {
            remote: &chain.remote.id,
            backup: BackupLabel::of_backup(backup, &ctime),
        };
        let mut start = Tree::from_parent(&tree);
        if backup.meta.send_parent_uuid.is_none() {
            start = Tree::new();
        }
        let (size, (found, next)) = read_backup(chain, backup, transfer, ui, move |reader| {
            extract::read(reader, &mut start).map(|clones| (clones, start))
        })
        .await?;
        downloaded += size;
        clones.push(found);
        tree = next;
    }
    Ok((tree, clones, downloaded))
}

/// The second pass over `chain`: each stream applied in place to `work` with only the
/// `needed` data.
async fn second_pass(
    target: &Target,
    chain: &super::ls::Chain<'_>,
    needed: Vec<std::collections::HashSet<u64>>,
    work: &Path,
    shadow: &Path,
    ui: &impl TransferUi,
) -> Result<(u64, Notes), ExtractError> {
    let owners = nix::unistd::geteuid().is_root();
    let mut tree = Tree::new();
    let mut notes = Notes::default();
    let mut downloaded = 0;
    let count = chain.backups.len();
    for (index, (backup, data)) in chain.backups.iter().zip(needed).enumerate() {
        let ctime = btrfs2s3_s3::format_ctime(backup.meta.ctime, &target.timezone);
        let transfer = Transfer::Receive {
            backup: BackupLabel::of_backup(backup, &ctime),
        };
        let (start, parent) = match backup.meta.send_parent_uuid {
            Some(uuid) if index > 0 => {
                let _ = receive::remove_tree(shadow);
                std::fs::create_dir(shadow).map_err(local("create", shadow))?;
                (
                    Tree::from_parent(&tree),
                    Parent::InPlace {
                        uuid,
                        shadow: shadow.to_path_buf(),
                    },
                )
            }
            _ => (Tree::new(), Parent::None),
        };
        let options = Options {
            owners,
            data: Some(data),
        };
        let receiver = Receiver::new(work, start, &parent, options).map_err(local("open", work))?;
        let last = index + 1 == count;
        let (size, outcome) = read_backup(chain, backup, transfer, ui, move |reader| {
            receiver.receive(reader, last)
        })
        .await?;
        downloaded += size;
        notes.merge(outcome.notes);
        tree = outcome.tree;
    }
    Ok((downloaded, notes))
}

/// Streams `backup` of `chain` into `read` (on a blocking thread), telling `ui`.
async fn read_backup<T: Send + 'static>(
    chain: &super::ls::Chain<'_>,
    backup: &crate::plan::BackupState,
    transfer: Transfer<'_>,
    ui: &impl TransferUi,
    read: impl FnOnce(
        std::io::BufReader<std::fs::File>,
    ) -> Result<T, btrfs2s3_stream::model::ApplyError>
    + Send
    + 'static,
) -> Result<(u64, T), ExtractError> {
    ui.started(transfer);
    let progress = |bytes| ui.progress(bytes);
    let result = download_read(
        &chain.client,
        &backup.key,
        &backup.pieces,
        &chain.commands,
        &progress,
        read,
    )
    .await;
    let report = result
        .as_ref()
        .map(|(size, _)| *size)
        .map_err(PipelineError::copy_as_text);
    ui.finished(transfer, &report);
    result.map_err(|source| {
        LsError::Stream {
            key: backup.key.to_string(),
            source,
        }
        .into()
    })
}

/// Renames `from` to `to` (another directory): a directory that its mode keeps its owner
/// from writing to (needed to change its `..`) is writable for the move only.
fn move_out(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let metadata = std::fs::symlink_metadata(from)?;
    let mode = metadata.permissions().mode() & 0o7777;
    let locked = metadata.is_dir() && mode & 0o200 == 0;
    if locked {
        std::fs::set_permissions(from, std::fs::Permissions::from_mode(mode | 0o200))?;
    }
    std::fs::rename(from, to)?;
    if locked {
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}
