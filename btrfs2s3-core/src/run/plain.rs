//! `restore --plain`: backups applied to a directory on any filesystem by btrfs2s3's own
//! receiver ([`btrfs2s3_stream::receive`]), without btrfs, btrfs-progs or root.
//!
//! Each backup is applied in `DEST/.btrfs2s3-partial-<uuid>` and renamed to `DEST/<snapshot
//! name>` when its stream has ended; a line in `DEST/.btrfs2s3-restored` then records which
//! backup that directory holds, so running the same restore again skips it. Nothing
//! half-applied ever carries a snapshot's name. A differential applies to a copy of its
//! parent's directory (extents shared where the filesystem can); with `--latest-only` the
//! whole chain applies to one working tree and only the newest is kept.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use btrfs2s3_stream::model::Tree;
use btrfs2s3_stream::receive::{self, Notes, Options, Parent, Receiver};
use uuid::Uuid;

use super::read::{
    BackupLabel, Plain, ReadError, ReceiveFailure, RestoreOptions, RestorePlan, RestoreReport,
    Target, Transfer, TransferUi, read_catalog,
};
use crate::cancel::Cancel;
use crate::config;
use crate::pipeline::{PipelineError, download_read};
use crate::restore::{self, RestoreItem};
use crate::trust::Trustee;

/// The record of what the destination holds: a line per restored backup, its uuid and its
/// directory's name.
pub const RECORD: &str = ".btrfs2s3-restored";
/// Where a backup is applied until its stream ends.
const PARTIAL: &str = ".btrfs2s3-partial-";
/// Where an in-place differential keeps what its parent had.
const SHADOW: &str = ".btrfs2s3-shadow-";

/// The backups restored into `dest` before, by uuid, whose directories are still there.
fn read_record(dest: &Path) -> std::io::Result<HashMap<Uuid, String>> {
    if !std::fs::metadata(dest)?.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            "not a directory",
        ));
    }
    let text = match std::fs::read_to_string(dest.join(RECORD)) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(error) => return Err(error),
    };
    Ok(text
        .lines()
        .filter_map(|line| {
            let (uuid, name) = line.split_once(' ')?;
            Some((uuid.parse().ok()?, name.to_owned()))
        })
        .filter(|(_, name): &(Uuid, String)| is_single_name(name) && dest.join(name).is_dir())
        .collect())
}

fn append_record(dest: &Path, uuid: Uuid, name: &str) -> std::io::Result<()> {
    let line = format!("{uuid} {name}\n");
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(dest.join(RECORD))?;
    file.write_all(line.as_bytes())?;
    file.sync_all()
}

fn is_single_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\n'])
        && !name.starts_with(".btrfs2s3-")
}

/// Prepares a plain restore: the destination must be a directory (on any filesystem).
pub(super) async fn prepare(
    target: &Target,
    remote: &config::Remote,
    options: RestoreOptions,
    plain: Plain,
    cancel: &Cancel,
) -> Result<RestorePlan, ReadError> {
    let commands = restore::undo_chain(&options.pipe_through, Trustee::current())?;
    let dest = options.dest.clone();
    let restored = tokio::task::spawn_blocking(move || read_record(&dest))
        .await
        .map_err(|error| ReadError::Worker {
            message: error.to_string(),
        })?
        .map_err(|source| ReadError::PlainDestination {
            dest: options.dest.clone(),
            source,
        })?;
    let (client, catalog) = read_catalog(remote, cancel).await?;
    let present = restored.keys().copied().collect();
    let mut items =
        restore::plan_restore(&catalog, &options.selection, &present, &target.timezone)?;
    if plain.latest_only {
        items = latest_chains(&items);
    }
    Ok(RestorePlan {
        remote_id: remote.id.clone(),
        dest: options.dest,
        items,
        plain: Some(plain),
        restored,
        commands,
        remote: client,
    })
}

/// The newest backup of each source of `items` with its chain, root first, each chain whole
/// (applied to one working tree from its full backup) unless that newest is there already.
fn latest_chains(items: &[RestoreItem]) -> Vec<RestoreItem> {
    let mut sources: Vec<&str> = Vec::new();
    for item in items {
        if !sources.contains(&item.source.as_str()) {
            sources.push(&item.source);
        }
    }
    let mut chosen = Vec::new();
    for source in sources {
        let mut chain = newest_chain(
            items
                .iter()
                .filter(|item| item.source == source)
                .cloned()
                .collect(),
        );
        let done = chain.last().is_some_and(|item| item.present);
        for item in &mut chain {
            item.present = done;
        }
        chosen.extend(chain);
    }
    chosen
}

/// The newest of `items` (by ctime, then ctransid) and its send ancestors, root first.
fn newest_chain(items: Vec<RestoreItem>) -> Vec<RestoreItem> {
    let Some(newest) = items
        .iter()
        .max_by(|a, b| (&a.ctime, a.ctransid).cmp(&(&b.ctime, b.ctransid)))
        .map(|item| item.uuid)
    else {
        return items;
    };
    let by_uuid: HashMap<Uuid, &RestoreItem> = items.iter().map(|item| (item.uuid, item)).collect();
    let mut chain = Vec::new();
    let mut next = Some(newest);
    while let Some(uuid) = next {
        let Some(item) = by_uuid.get(&uuid) else {
            break;
        };
        chain.push((*item).clone());
        next = item.send_parent;
    }
    chain.reverse();
    chain
}

/// Whether this process may give files to others (root).
fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn local(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PipelineError {
    let path = path.to_path_buf();
    move |source| PipelineError::Local { what, path, source }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, PipelineError> + Send + 'static,
) -> Result<T, PipelineError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| PipelineError::Internal {
            message: format!("a worker thread failed: {error}"),
        })?
}

/// Removes what a failed or killed restore left (its own names only).
fn remove_leftover(path: &Path) -> Result<(), PipelineError> {
    receive::remove_tree(path).map_err(local("remove", path))
}

/// What the restore knows of the backups restored so far.
struct Restored {
    dest: PathBuf,
    names: HashMap<Uuid, String>,
    /// Trees of backups restored in this run that a selected differential still needs.
    trees: HashMap<Uuid, Tree>,
    children: HashMap<Uuid, usize>,
    notes: Notes,
}

/// Applies the backups of `plan` that are not in the destination yet, in order; stops at the
/// first that fails (running the same restore again goes on from there).
pub(super) async fn restore(plan: &RestorePlan, ui: &impl TransferUi) -> RestoreReport {
    let latest_only = plan.plain.is_some_and(|plain| plain.latest_only);
    let pending: Vec<&RestoreItem> = plan.items.iter().filter(|item| !item.present).collect();
    let mut children = HashMap::new();
    for item in &pending {
        if let Some(parent) = item.send_parent {
            *children.entry(parent).or_insert(0) += 1;
        }
    }
    let mut state = Restored {
        dest: plan.dest.clone(),
        names: plan.restored.clone(),
        trees: HashMap::new(),
        children,
        notes: Notes::default(),
    };
    let (received, failure) = if latest_only {
        // One chain per source, each from its full backup.
        let mut received = 0;
        let mut failure = None;
        let mut starts: Vec<usize> = pending
            .iter()
            .enumerate()
            .filter(|(_, item)| item.send_parent.is_none())
            .map(|(at, _)| at)
            .collect();
        starts.push(pending.len());
        for range in starts.windows(2) {
            match restore_in_place(plan, &pending[range[0]..range[1]], &mut state, ui).await {
                Ok(()) => received += 1,
                Err(error) => {
                    failure = Some(error);
                    break;
                }
            }
        }
        (received, failure)
    } else {
        let mut received = 0;
        let mut failure = None;
        for item in &pending {
            let transfer = Transfer::Receive {
                backup: BackupLabel::of_item(item),
            };
            ui.started(transfer);
            let result = restore_one(plan, item, &mut state, ui).await;
            ui.finished(transfer, &result);
            match result {
                Ok(_) => received += 1,
                Err(error) => {
                    failure = Some((item.key.clone(), error));
                    break;
                }
            }
        }
        (received, failure)
    };
    RestoreReport {
        received,
        notes: state.notes,
        failure: failure.map(|(key, error)| ReceiveFailure { key, error }),
    }
}

/// One backup into its own directory: a copy of its parent's, the stream applied, renamed.
async fn restore_one(
    plan: &RestorePlan,
    item: &RestoreItem,
    state: &mut Restored,
    ui: &impl TransferUi,
) -> Result<u64, PipelineError> {
    let owners = is_root();
    let work = state.dest.join(format!("{PARTIAL}{}", item.uuid));
    let (tree, parent) = match item.send_parent {
        None => {
            let path = work.clone();
            blocking(move || {
                remove_leftover(&path)?;
                std::fs::create_dir(&path).map_err(local("create", &path))
            })
            .await?;
            (Tree::new(), Parent::None)
        }
        Some(parent) => {
            let Some(name) = state.names.get(&parent) else {
                return Err(PipelineError::Internal {
                    message: format!("the send parent {parent} of {} is not restored", item.key),
                });
            };
            let parent_dir = state.dest.join(name);
            let known = state.trees.get(&parent).map(Tree::from_parent);
            let (path, from) = (work.clone(), parent_dir.clone());
            let tree = blocking(move || {
                remove_leftover(&path)?;
                let tree = match known {
                    Some(tree) => tree,
                    // Restored by an earlier run: its names are read back from disk.
                    None => Tree::from_parent(&receive::scan(&from).map_err(local("read", &from))?),
                };
                receive::copy_tree(&from, &path, owners).map_err(local("copy into", &path))?;
                Ok(tree)
            })
            .await?;
            (
                tree,
                Parent::Dir {
                    uuid: parent,
                    path: parent_dir,
                },
            )
        }
    };
    let result = apply(plan, item, &work, tree, parent, true, ui).await;
    let received = match result {
        Ok(received) => received,
        Err(error) => {
            let path = work.clone();
            let _ = blocking(move || remove_leftover(&path)).await;
            return Err(error);
        }
    };
    let (size, received) = received;
    let name = finish(&state.dest, item.uuid, &work, &received.name).await?;
    state.names.insert(item.uuid, name);
    state.notes.merge(received.notes);
    if let Some(parent) = item.send_parent
        && let Some(count) = state.children.get_mut(&parent)
    {
        *count -= 1;
        if *count == 0 {
            state.trees.remove(&parent);
        }
    }
    if state
        .children
        .get(&item.uuid)
        .is_some_and(|count| *count > 0)
    {
        state.trees.insert(item.uuid, received.tree);
    }
    Ok(size)
}

/// The chain of `items` (full backup first) applied to one working tree; only the newest is
/// kept, under its name.
async fn restore_in_place(
    plan: &RestorePlan,
    items: &[&RestoreItem],
    state: &mut Restored,
    ui: &impl TransferUi,
) -> Result<(), (String, PipelineError)> {
    let Some(newest) = items.last() else {
        return Ok(());
    };
    let work = state.dest.join(format!("{PARTIAL}{}", newest.uuid));
    let path = work.clone();
    let fail = |item: &RestoreItem| {
        let key = item.key.clone();
        move |error| (key, error)
    };
    blocking(move || {
        remove_leftover(&path)?;
        std::fs::create_dir(&path).map_err(local("create", &path))
    })
    .await
    .map_err(fail(newest))?;
    let mut tree = Tree::new();
    let mut last_name = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let transfer = Transfer::Receive {
            backup: BackupLabel::of_item(item),
        };
        ui.started(transfer);
        let shadow = state.dest.join(format!("{SHADOW}{}", item.uuid));
        let parent = match (index, item.send_parent) {
            (0, _) | (_, None) => Parent::None,
            (_, Some(uuid)) => Parent::InPlace {
                uuid,
                shadow: shadow.clone(),
            },
        };
        let start = if index == 0 {
            Tree::new()
        } else {
            Tree::from_parent(&tree)
        };
        let shadow_path = shadow.clone();
        let mut result = blocking(move || {
            remove_leftover(&shadow_path)?;
            std::fs::create_dir(&shadow_path).map_err(local("create", &shadow_path))
        })
        .await
        .map(|()| 0);
        if result.is_ok() {
            let last = index + 1 == items.len();
            result =
                apply(plan, item, &work, start, parent, last, ui)
                    .await
                    .map(|(size, received)| {
                        tree = received.tree;
                        last_name = received.name;
                        state.notes.merge(received.notes);
                        size
                    });
        }
        let shadow_path = shadow.clone();
        let _ = blocking(move || remove_leftover(&shadow_path)).await;
        ui.finished(
            transfer,
            &result
                .as_ref()
                .copied()
                .map_err(PipelineError::copy_as_text),
        );
        if let Err(error) = result {
            let path = work.clone();
            let _ = blocking(move || remove_leftover(&path)).await;
            return Err(fail(item)(error));
        }
    }
    let name = finish(&state.dest, newest.uuid, &work, &last_name)
        .await
        .map_err(fail(newest))?;
    state.names.insert(newest.uuid, name);
    Ok(())
}

/// Streams `item` into a receiver that applies it to `work`.
async fn apply(
    plan: &RestorePlan,
    item: &RestoreItem,
    work: &Path,
    tree: Tree,
    parent: Parent,
    last: bool,
    ui: &impl TransferUi,
) -> Result<(u64, receive::Received), PipelineError> {
    let options = Options {
        owners: is_root(),
        data: None,
    };
    let receiver = Receiver::new(work, tree, &parent, options).map_err(local("open", work))?;
    let progress = |bytes| ui.progress(bytes);
    download_read(
        &plan.remote,
        &item.key,
        &item.pieces,
        &plan.commands,
        &progress,
        move |reader| receiver.receive(reader, last),
    )
    .await
}

/// Gives the applied tree in `work` its snapshot's name and records it.
async fn finish(
    dest: &Path,
    uuid: Uuid,
    work: &Path,
    name: &[u8],
) -> Result<String, PipelineError> {
    let name = String::from_utf8(name.to_vec())
        .ok()
        .filter(|name| is_single_name(name))
        .ok_or_else(|| PipelineError::Internal {
            message: format!(
                "the stream names its snapshot {:?}, which is not a usable directory name",
                String::from_utf8_lossy(name)
            ),
        })?;
    let (dest, work) = (dest.to_path_buf(), work.to_path_buf());
    let final_name = name.clone();
    blocking(move || {
        let target = dest.join(&final_name);
        if std::fs::symlink_metadata(&target).is_ok() {
            remove_leftover(&work)?;
            return Err(local("restore over", &target)(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "it exists already (move it away, or restore into another directory)",
            )));
        }
        std::fs::rename(&work, &target).map_err(local("rename into", &target))?;
        append_record(&dest, uuid, &final_name).map_err(local("record in", &dest.join(RECORD)))
    })
    .await?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(n: u128, source: &str, parent: Option<u128>, present: bool) -> RestoreItem {
        RestoreItem {
            key: format!("key{n}"),
            pieces: Vec::new(),
            uuid: Uuid::from_u128(n),
            source: source.to_owned(),
            send_parent: parent.map(Uuid::from_u128),
            ctime: format!("2026-01-{n:02}T00:00:00Z"),
            ctransid: i64::try_from(n).unwrap(),
            size: 1,
            storage_class: None,
            present,
        }
    }

    #[test]
    fn latest_only_takes_each_sources_newest_chain() {
        // home: 1 <- 2 <- 3, 1 <- 4 (the newest); etc: 5 <- 6 (there already).
        let items = [
            item(1, "home", None, true),
            item(2, "home", Some(1), false),
            item(3, "home", Some(2), false),
            item(4, "home", Some(1), false),
            item(5, "etc", None, false),
            item(6, "etc", Some(5), true),
        ];
        let chosen: Vec<(u128, bool)> = latest_chains(&items)
            .iter()
            .map(|item| (item.uuid.as_u128(), item.present))
            .collect();
        // home's chain applies whole (its full backup in DEST is not the working tree);
        // etc's newest is there: nothing to do.
        assert_eq!(chosen, [(1, false), (4, false), (5, true), (6, true)]);
    }

    #[test]
    fn record_lines_name_single_directories() {
        assert!(is_single_name("home.2026-01-01T00:00:00+00:00"));
        for bad in ["", ".", "..", "a/b", "a\nb", ".btrfs2s3-partial-x"] {
            assert!(!is_single_name(bad), "{bad:?}");
        }
    }
}
