//! The commands that read backups — `list`, `restore`, `verify` — as calls returning reports.
//! They need only remotes (from a config, or a bucket named on the command line when the
//! config is lost) and a time zone to show times in.

use std::collections::BTreeSet;
use std::path::PathBuf;

use btrfs2s3_s3::{Remote, RemoteConfig, needs_restore};
use jiff::tz::TimeZone;
use snafu::Snafu;
use uuid::Uuid;

use crate::cancel::Cancel;
use crate::catalog::{self, Catalog, CatalogView, SelectError, Selection, UuidPrefix};
use crate::config::{self, Config};
use crate::pipeline::PipeCommand;
use crate::pipeline::PipelineError;
use crate::plan::BackupState;
use crate::restore::{self, RestoreItem};
use crate::run::archive::{ArchiveOptions, ArchiveStatus, ArchiveUi, make_readable};
use crate::trust::{Trustee, Untrusted};

/// The remotes a read command reads, and the time zone it shows times in.
#[derive(Debug, Clone)]
pub struct Target {
    /// The time zone of the config (UTC without one).
    pub timezone: TimeZone,
    /// The remotes, in config order.
    pub remotes: Vec<config::Remote>,
}

/// Remotes that cannot be chosen as asked.
#[derive(Debug, Clone, PartialEq, Eq, Snafu)]
pub enum TargetError {
    /// `--remote` names no remote of the config.
    #[snafu(display("{} has no remote {id:?} (it has: {})", path.display(), known.join(", ")))]
    UnknownRemote {
        /// The config.
        path: PathBuf,
        /// The id asked for.
        id: String,
        /// The ids it has.
        known: Vec<String>,
    },
    /// The command needs one remote and the config has several.
    #[snafu(display("{} has several remotes; choose one with --remote ({})", path.display(), known.join(", ")))]
    SeveralRemotes {
        /// The config.
        path: PathBuf,
        /// The ids it has.
        known: Vec<String>,
    },
}

impl Target {
    /// A bucket named on the command line: times in UTC.
    #[must_use]
    pub fn bucket(
        bucket: &str,
        endpoint_url: Option<String>,
        region: Option<String>,
        profile: Option<String>,
    ) -> Target {
        let s3 = RemoteConfig {
            endpoint_url,
            region,
            profile,
            ..RemoteConfig::new(bucket)
        };
        Target {
            timezone: TimeZone::UTC,
            remotes: vec![config::Remote {
                id: bucket.to_owned(),
                s3,
                object_lock: None,
            }],
        }
    }

    /// The remotes of `config`: all, or the one with id `only`.
    pub fn config(config: &Config, only: Option<&str>) -> Result<Target, TargetError> {
        let remotes: Vec<config::Remote> = config
            .remotes
            .iter()
            .filter(|remote| only.is_none_or(|id| id == remote.id))
            .cloned()
            .collect();
        if let (Some(id), true) = (only, remotes.is_empty()) {
            return Err(TargetError::UnknownRemote {
                path: config.path.clone(),
                id: id.to_owned(),
                known: config.remotes.iter().map(|r| r.id.clone()).collect(),
            });
        }
        Ok(Target {
            timezone: config.timezone.clone(),
            remotes,
        })
    }

    /// The one remote of a config that has one (or of which one was chosen).
    pub fn single(config: &Config, only: Option<&str>) -> Result<Target, TargetError> {
        let target = Target::config(config, only)?;
        if target.remotes.len() == 1 {
            Ok(target)
        } else {
            Err(TargetError::SeveralRemotes {
                path: config.path.clone(),
                known: target.remotes.iter().map(|r| r.id.clone()).collect(),
            })
        }
    }
}

/// Why a read command could not do its work.
#[derive(Debug, Snafu)]
pub enum ReadError {
    /// A remote could not be read.
    #[snafu(transparent)]
    Catalog {
        /// Which, and why.
        source: catalog::ReadError,
    },
    /// The restore's destination is unusable.
    #[snafu(display("cannot restore into {}", dest.display()))]
    Destination {
        /// The destination.
        dest: PathBuf,
        /// Why.
        source: btrfs2s3_btrfs::Error,
    },
    /// The destination of a plain restore is not a directory, or its record cannot be read.
    #[snafu(display("cannot restore into {}", dest.display()))]
    PlainDestination {
        /// The destination.
        dest: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The backups asked for cannot be selected.
    #[snafu(transparent)]
    Select {
        /// Why.
        source: SelectError,
    },
    /// A command the stream goes through cannot be trusted.
    #[snafu(transparent)]
    Program {
        /// Why.
        source: Untrusted,
    },
    /// A restore reads one remote.
    #[snafu(display("a restore reads one remote, not {count}"))]
    NotOneRemote {
        /// How many it was given.
        count: usize,
    },
    /// An archived backup could not be made readable.
    #[snafu(display("cannot restore {key} of bucket {bucket} from its archive class"))]
    Archive {
        /// The bucket.
        bucket: String,
        /// The object.
        key: String,
        /// Why.
        source: Box<btrfs2s3_s3::Error>,
    },
    /// A signal stopped the command.
    #[snafu(display("interrupted by {cause}"))]
    Interrupted {
        /// The signal.
        cause: &'static str,
    },
    /// The thread a blocking operation ran on ended without a result.
    #[snafu(display("a worker thread failed: {message}"))]
    Worker {
        /// What the runtime said.
        message: String,
    },
}

impl ReadError {
    /// Whether the command was asked for something that cannot be (a usage error), as
    /// opposed to a failure on the way.
    #[must_use]
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            ReadError::Destination { .. }
                | ReadError::PlainDestination { .. }
                | ReadError::NotOneRemote { .. }
                | ReadError::Program { .. }
                | ReadError::Select {
                    source: SelectError::Unknown { .. } | SelectError::Ambiguous { .. }
                }
        )
    }
}

/// Connects to `remote` and reads its catalog; a signal ends the wait.
pub(crate) async fn read_catalog(
    remote: &config::Remote,
    cancel: &Cancel,
) -> Result<(Remote, Catalog), ReadError> {
    tokio::select! {
        read = catalog::read(&remote.id, &remote.s3) => {
            let (client, catalog) = read?;
            Ok((client.with_cancellation(cancel.token().clone()), catalog))
        }
        () = cancel.cancelled() => Err(interrupted(cancel)),
    }
}

fn interrupted(cancel: &Cancel) -> ReadError {
    ReadError::Interrupted {
        cause: cancel.cause().unwrap_or("a signal"),
    }
}

/// `list`: the backups of every remote of `target`, as trees per source.
pub async fn list(target: &Target, cancel: &Cancel) -> Result<Vec<CatalogView>, ReadError> {
    let mut views = Vec::new();
    for remote in &target.remotes {
        let (_, catalog) = read_catalog(remote, cancel).await?;
        views.push(catalog.view(&target.timezone));
    }
    Ok(views)
}

/// A transfer out of a remote, for progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transfer<'a> {
    /// A backup received into the destination.
    Receive {
        /// The backup.
        backup: BackupLabel<'a>,
    },
    /// A backup checked.
    Verify {
        /// The remote.
        remote: &'a str,
        /// The backup.
        backup: BackupLabel<'a>,
    },
}

/// A backup as a person reads it: its snapshot's uuid, source and time (and, for `-v`, its
/// key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupLabel<'a> {
    /// The object key.
    pub key: &'a str,
    /// The snapshot's uuid.
    pub uuid: Uuid,
    /// The source's name, from the key.
    pub source: &'a str,
    /// The snapshot's ctime, ISO 8601 in the configured time zone.
    pub ctime: &'a str,
}

impl<'a> BackupLabel<'a> {
    /// The label of a backup to receive.
    #[must_use]
    pub fn of_item(item: &'a RestoreItem) -> BackupLabel<'a> {
        BackupLabel {
            key: &item.key,
            uuid: item.uuid,
            source: &item.source,
            ctime: &item.ctime,
        }
    }

    /// The label of a listed backup whose ctime was formatted as `ctime`.
    #[must_use]
    pub fn of_backup(backup: &'a BackupState, ctime: &'a str) -> BackupLabel<'a> {
        BackupLabel {
            key: &backup.key,
            uuid: backup.meta.uuid,
            source: backup.source_name(),
            ctime,
        }
    }
}

/// Hears about transfers, for the user.
pub trait TransferUi: Sync {
    /// A transfer starts.
    fn started(&self, transfer: Transfer<'_>);
    /// It has moved this many bytes so far.
    fn progress(&self, bytes: u64);
    /// It ended: the bytes moved, or why not.
    fn finished(&self, transfer: Transfer<'_>, result: &Result<u64, PipelineError>);
}

/// What to restore, and how.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// The directory to receive into (on btrfs).
    pub dest: PathBuf,
    /// The backups (with their send ancestors).
    pub selection: Selection,
    /// The commands each stream goes through before `btrfs receive`.
    pub pipe_through: Vec<Vec<String>>,
    /// Apply the streams to a plain directory with btrfs2s3's own receiver instead of
    /// `btrfs receive`.
    pub plain: Option<Plain>,
}

/// How a plain restore goes (`restore --plain`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Plain {
    /// Only the newest backup of the selection, its chain applied to one working tree.
    pub latest_only: bool,
}

/// A restore ready to go: the backups to receive, in order.
#[derive(Debug)]
pub struct RestorePlan {
    /// The remote.
    pub remote_id: String,
    /// The destination.
    pub dest: PathBuf,
    /// Every selected backup, parents first, those already in the destination marked.
    pub items: Vec<RestoreItem>,
    /// A plain restore, and the names of the backups restored into the destination before.
    pub plain: Option<Plain>,
    pub(super) restored: std::collections::HashMap<Uuid, String>,
    pub(super) commands: Vec<PipeCommand>,
    pub(super) remote: Remote,
}

impl RestorePlan {
    /// The backups to receive that are in an archive class: they need a restore request.
    pub fn archived(&self) -> impl Iterator<Item = &RestoreItem> {
        self.items
            .iter()
            .filter(|item| !item.present && needs_restore(item.storage_class.as_deref()))
    }

    /// Whether everything is in the destination already.
    #[must_use]
    pub fn is_done(&self) -> bool {
        self.items.iter().all(|item| item.present)
    }
}

/// How a restore went.
#[derive(Debug)]
pub struct RestoreReport {
    /// How many backups were received.
    pub received: usize,
    /// What a plain restore could not restore as it was (owners without root, ...).
    pub notes: btrfs2s3_stream::receive::Notes,
    /// The backup that could not be received; the ones after it were not tried.
    pub failure: Option<ReceiveFailure>,
}

/// A backup that could not be received.
#[derive(Debug)]
pub struct ReceiveFailure {
    /// Its key.
    pub key: String,
    /// Why (a half-received subvolume was deleted).
    pub error: PipelineError,
}

/// Prepares `restore` from the one remote of `target` (see [`Target::single`]): checks the
/// destination, reads the remote, and selects the backups to receive, parents first.
pub async fn prepare_restore(
    target: &Target,
    options: RestoreOptions,
    cancel: &Cancel,
) -> Result<RestorePlan, ReadError> {
    let [remote] = target.remotes.as_slice() else {
        return Err(ReadError::NotOneRemote {
            count: target.remotes.len(),
        });
    };
    if let Some(plain) = options.plain {
        return super::plain::prepare(target, remote, options, plain, cancel).await;
    }
    let commands = restore::receive_chain(
        &options.pipe_through,
        Some(&options.dest),
        Trustee::current(),
    )?;
    let dest = options.dest.clone();
    let present = tokio::task::spawn_blocking(move || restore::received_uuids(&dest))
        .await
        .map_err(|error| ReadError::Worker {
            message: error.to_string(),
        })?
        .map_err(|source| ReadError::Destination {
            dest: options.dest.clone(),
            source,
        })?;
    let (client, catalog) = read_catalog(remote, cancel).await?;
    let items = restore::plan_restore(&catalog, &options.selection, &present, &target.timezone)?;
    Ok(RestorePlan {
        remote_id: remote.id.clone(),
        dest: options.dest,
        items,
        plain: None,
        restored: std::collections::HashMap::new(),
        commands,
        remote: client,
    })
}

/// Requests restores of the archived backups `plan` receives, all at once, and with
/// `options.wait` waits until they can be read.
pub async fn make_restorable(
    plan: &RestorePlan,
    options: &ArchiveOptions,
    ui: &impl ArchiveUi,
    cancel: &Cancel,
) -> Result<ArchiveStatus, ReadError> {
    let archived: Vec<(&Remote, &str)> = plan
        .archived()
        .map(|item| (&plan.remote, item.key.as_str()))
        .collect();
    make_readable(&archived, options, ui, cancel).await
}

/// Receives the backups of `plan` that are not in the destination yet, in order; stops at
/// the first that fails (running the same restore again goes on from there).
pub async fn restore(plan: &RestorePlan, ui: &impl TransferUi) -> RestoreReport {
    if plan.plain.is_some() {
        return super::plain::restore(plan, ui).await;
    }
    let mut received = 0;
    for item in plan.items.iter().filter(|item| !item.present) {
        let transfer = Transfer::Receive {
            backup: BackupLabel::of_item(item),
        };
        ui.started(transfer);
        let progress = |bytes| ui.progress(bytes);
        let result = restore::receive(
            &plan.remote,
            &item.key,
            &item.pieces,
            &plan.dest,
            &plan.commands,
            &progress,
        )
        .await;
        ui.finished(transfer, &result);
        match result {
            Ok(_) => received += 1,
            Err(error) => {
                return RestoreReport {
                    received,
                    notes: btrfs2s3_stream::receive::Notes::default(),
                    failure: Some(ReceiveFailure {
                        key: item.key.clone(),
                        error,
                    }),
                };
            }
        }
    }
    RestoreReport {
        received,
        notes: btrfs2s3_stream::receive::Notes::default(),
        failure: None,
    }
}

/// What to verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyOptions {
    /// A backup (with its send ancestors) or a source (a uuid or its start); every backup
    /// when `None`.
    pub uuid: Option<UuidPrefix>,
    /// The commands each stream goes through before it is checked.
    pub pipe_through: Vec<Vec<String>>,
    /// How to make archived backups readable.
    pub archive: ArchiveOptions,
    /// What reads the streams.
    pub parser: StreamParser,
}

/// The trees of the backups checked by the builtin parser that a selected differential still
/// needs: a differential is applied to its send parent's tree when the parent was checked in
/// the same run (parents come first), else with the parent's names trusted.
struct Trees {
    by_uuid: std::collections::HashMap<uuid::Uuid, btrfs2s3_stream::model::Tree>,
    /// How many selected backups not checked yet are sent against each backup.
    children: std::collections::HashMap<uuid::Uuid, usize>,
}

impl Trees {
    fn new(selected: &[&BackupState]) -> Trees {
        let mut children = std::collections::HashMap::new();
        for backup in selected {
            if let Some(parent) = backup.meta.send_parent_uuid {
                *children.entry(parent).or_insert(0) += 1;
            }
        }
        Trees {
            by_uuid: std::collections::HashMap::new(),
            children,
        }
    }

    async fn check(
        &mut self,
        client: &btrfs2s3_s3::Remote,
        backup: &BackupState,
        commands: &[crate::pipeline::PipeCommand],
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<u64, crate::pipeline::PipelineError> {
        use btrfs2s3_stream::model::Tree;
        let start = match backup.meta.send_parent_uuid {
            None => Tree::new(),
            Some(parent) => {
                let start = self
                    .by_uuid
                    .get(&parent)
                    .map_or_else(Tree::new, Tree::from_parent);
                // A parent whose children are all checked is let go.
                if let Some(left) = self.children.get_mut(&parent) {
                    *left = left.saturating_sub(1);
                    if *left == 0 {
                        self.by_uuid.remove(&parent);
                    }
                }
                start
            }
        };
        let (size, tree) = crate::pipeline::download_checked(
            client,
            &backup.key,
            &backup.pieces,
            commands,
            start,
            progress,
        )
        .await?;
        // Kept while a selected backup is sent against it.
        if self
            .children
            .get(&backup.meta.uuid)
            .is_some_and(|left| *left > 0)
        {
            self.by_uuid.insert(backup.meta.uuid, tree);
        }
        Ok(size)
    }
}

/// What checks a stream in `verify`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamParser {
    /// `btrfs receive --dump` (btrfs-progs): every command and checksum.
    Btrfs,
    /// btrfs2s3's own parser: every checksum, and every path applied to a model of the tree
    /// (a differential to its parent's, when the parent was checked in the same run). Needs
    /// no btrfs-progs.
    Builtin,
}

/// What `verify` found about one backup, or about a remote's selection.
#[derive(Debug)]
pub enum Verdict {
    /// The stream parses and its checksums match.
    Intact {
        /// Its size.
        size: u64,
    },
    /// The stream parses, but its send parent is not in the remote: it cannot be restored.
    BrokenChain {
        /// The missing send parent.
        send_parent: Uuid,
    },
    /// The stream is damaged, or could not be read.
    Damaged {
        /// Why.
        error: PipelineError,
    },
}

/// Hears what `verify` finds, as it finds it.
pub trait VerifyUi: TransferUi + ArchiveUi {
    /// A backup was checked (a broken chain is told before its stream is checked).
    fn verdict(&self, remote: &str, backup: BackupLabel<'_>, verdict: &Verdict);
    /// A remote's selection cannot be made (its chains are broken).
    fn unselectable(&self, remote: &str, error: &SelectError);
}

/// How `verify` went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyReport {
    /// How many backups were checked.
    pub checked: usize,
    /// How many problems were found.
    pub problems: usize,
    /// Whether the uuid asked for was found in some remote.
    pub found: bool,
    /// The archived backups of the selection. When some are not readable yet (the command
    /// was told not to wait), nothing was checked.
    pub archive: ArchiveStatus,
}

/// `verify`: every selected backup of every remote of `target` is read to its end through
/// `btrfs receive --dump` (which checks every command's checksum), and every chain is
/// checked for a missing send parent.
pub async fn verify(
    target: &Target,
    options: &VerifyOptions,
    ui: &impl VerifyUi,
    cancel: &Cancel,
) -> Result<VerifyReport, ReadError> {
    let commands = match options.parser {
        StreamParser::Btrfs => {
            restore::receive_chain(&options.pipe_through, None, Trustee::current())?
        }
        StreamParser::Builtin => restore::undo_chain(&options.pipe_through, Trustee::current())?,
    };
    let mut report = VerifyReport {
        checked: 0,
        problems: 0,
        found: options.uuid.is_none(),
        archive: ArchiveStatus::default(),
    };
    // Every remote is read first: the archived backups of all of them are requested at once.
    let mut remotes = Vec::new();
    for remote in &target.remotes {
        let (client, catalog) = read_catalog(remote, cancel).await?;
        remotes.push((remote, client, catalog));
    }
    let mut selections = Vec::new();
    for (remote, client, catalog) in &remotes {
        let selected: Vec<&BackupState> = match &options.uuid {
            None => catalog.backups().iter().collect(),
            Some(uuid) => match catalog.select(&Selection::Uuid(uuid.clone())) {
                Ok(selected) => {
                    report.found = true;
                    selected
                }
                Err(SelectError::Unknown { .. }) => continue,
                Err(error) => {
                    report.found = true;
                    ui.unselectable(&remote.id, &error);
                    report.problems += 1;
                    continue;
                }
            },
        };
        selections.push((*remote, client, catalog, selected));
    }
    let archived: Vec<(&Remote, &str)> = selections
        .iter()
        .flat_map(|(_, client, _, selected)| {
            selected
                .iter()
                .filter(|backup| needs_restore(backup.storage_class.as_deref()))
                .map(move |backup| (*client, &*backup.key))
        })
        .collect();
    report.archive = make_readable(&archived, &options.archive, ui, cancel).await?;
    if !report.archive.is_complete() {
        return Ok(report);
    }
    for (remote, client, catalog, selected) in selections {
        let mut trees = Trees::new(&selected);
        // Chains first: a backup whose send parent is gone cannot be restored, however
        // intact its bytes are.
        let mut broken = BTreeSet::new();
        for backup in catalog.broken_chains() {
            if selected.iter().any(|s| s.meta.uuid == backup.meta.uuid)
                && let Some(send_parent) = backup.meta.send_parent_uuid
            {
                broken.insert(backup.meta.uuid);
                let ctime = btrfs2s3_s3::format_ctime(backup.meta.ctime, &target.timezone);
                let label = BackupLabel::of_backup(backup, &ctime);
                ui.verdict(&remote.id, label, &Verdict::BrokenChain { send_parent });
                report.problems += 1;
            }
        }
        for &backup in &selected {
            let ctime = btrfs2s3_s3::format_ctime(backup.meta.ctime, &target.timezone);
            let label = BackupLabel::of_backup(backup, &ctime);
            let transfer = Transfer::Verify {
                remote: &remote.id,
                backup: label,
            };
            ui.started(transfer);
            let progress = |bytes| ui.progress(bytes);
            let result = match options.parser {
                StreamParser::Btrfs => {
                    restore::verify(client, &backup.key, &backup.pieces, &commands, &progress).await
                }
                StreamParser::Builtin => trees.check(client, backup, &commands, &progress).await,
            };
            ui.finished(transfer, &result);
            // A stream cut short by a signal says nothing about the backup.
            if cancel.is_cancelled() {
                return Err(interrupted(cancel));
            }
            report.checked += 1;
            match result {
                // A broken chain was told already.
                Ok(_) if broken.contains(&backup.meta.uuid) => {}
                Ok(size) => ui.verdict(&remote.id, label, &Verdict::Intact { size }),
                Err(error) => {
                    ui.verdict(&remote.id, label, &Verdict::Damaged { error });
                    report.problems += 1;
                }
            }
        }
    }
    Ok(report)
}
