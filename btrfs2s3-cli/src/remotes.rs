//! `list`, `restore` and `verify`: their arguments, the rendering of what they find, and their
//! exit codes. The work is `btrfs2s3_core::run`'s.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use btrfs2s3_core::catalog::{CatalogView, SelectError, Selection, UuidPrefix};
use btrfs2s3_core::config::{self, Needs};
use btrfs2s3_core::error_chain;
use btrfs2s3_core::pipeline::PipelineError;
use btrfs2s3_core::restore;
use btrfs2s3_core::run::{
    self, ArchiveOptions, ArchiveStatus, ArchiveUi, BackupLabel, ReadError, RestoreOptions,
    RestorePlan, RestoreTier, Target, Transfer, TransferUi, Verdict, VerifyOptions, VerifyUi,
};
use btrfs2s3_core::text::escape;

use crate::exit;
use crate::output::{ShortIds, backup_label, bytes, short_time};
use crate::paint::{Stream, Style, paint};
use crate::progress::Progress;

/// Which remote(s) to read: from a config, or given on the command line.
#[derive(Debug, clap::Args)]
pub struct RemoteArgs {
    /// The configuration file (only its remotes and time zone are used).
    #[arg(required_unless_present = "bucket", conflicts_with = "bucket")]
    pub config: Option<PathBuf>,
    /// The id of the remote in the config (default: every remote; `restore` needs one).
    #[arg(long, value_name = "ID", conflicts_with = "bucket")]
    pub remote: Option<String>,
    /// Without a config: the bucket to read.
    #[arg(long)]
    pub bucket: Option<String>,
    /// Without a config: the S3 endpoint (default: AWS).
    #[arg(long, value_name = "URL", requires = "bucket")]
    pub endpoint_url: Option<String>,
    /// Without a config: the region.
    #[arg(long, requires = "bucket")]
    pub region: Option<String>,
    /// Without a config: a profile of ~/.aws/config and ~/.aws/credentials.
    #[arg(long, requires = "bucket")]
    pub profile: Option<String>,
}

/// The remotes the arguments name; `Err` is the exit code after the message was printed.
fn target(args: &RemoteArgs, need_one: bool) -> Result<Target, u8> {
    if let Some(bucket) = &args.bucket {
        return Ok(Target::bucket(
            bucket,
            args.endpoint_url.clone(),
            args.region.clone(),
            args.profile.clone(),
        ));
    }
    let Some(path) = &args.config else {
        eprintln!("btrfs2s3: give a config, or the remote with --bucket");
        return Err(exit::USAGE);
    };
    let config = config::load_for(path, Needs::RemotesOnly).map_err(|error| {
        eprintln!("btrfs2s3: {error}");
        exit::USAGE
    })?;
    for warning in &config.warnings {
        crate::warn(warning);
    }
    let only = args.remote.as_deref();
    let target = if need_one {
        Target::single(&config, only)
    } else {
        Target::config(&config, only)
    };
    target.map_err(|error| {
        eprintln!("btrfs2s3: {error}");
        exit::USAGE
    })
}

/// The message and exit code of a read command that could not do its work.
fn failed(error: &ReadError) -> u8 {
    crate::print_error(error);
    if error.is_usage() {
        exit::USAGE
    } else {
        exit::FAILURE
    }
}

/// Arguments of `list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub remotes: RemoteArgs,
    /// Print the same as JSON on standard output.
    #[arg(long)]
    pub json: bool,
}

/// `btrfs2s3 list`.
pub fn list(args: &ListArgs) -> u8 {
    let target = match target(&args.remotes, false) {
        Ok(target) => target,
        Err(code) => return code,
    };
    crate::with_runtime(|cancel| async move {
        match run::list(&target, &cancel).await {
            Ok(views) => print_list(&target, &views, args.json),
            Err(error) => failed(&error),
        }
    })
}

fn print_list(target: &Target, views: &[CatalogView], json: bool) -> u8 {
    if json {
        #[derive(serde::Serialize)]
        struct Printed<'a> {
            timezone: Option<&'a str>,
            remotes: &'a [CatalogView],
        }
        crate::output::print_json(&Printed {
            timezone: target.timezone.iana_name(),
            remotes: views,
        });
    } else {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        let written = views
            .iter()
            .try_for_each(|view| write_catalog(view, &mut out))
            .and_then(|()| out.flush());
        if let Err(error) = written {
            eprintln!("btrfs2s3: cannot print the list: {error}");
            return exit::FAILURE;
        }
    }
    exit::OK
}

/// The tree of one remote as text.
fn write_catalog(view: &CatalogView, out: &mut dyn Write) -> std::io::Result<()> {
    let count: usize = view.sources.iter().map(|s| s.backups.len()).sum();
    writeln!(
        out,
        "remote {} (bucket {}): {count} backup(s) of {} source(s), {} other object(s)",
        view.remote,
        view.bucket,
        view.sources.len(),
        view.foreign_objects
    )?;
    for key in &view.broken_pieces {
        writeln!(
            out,
            "  warning: backup {} is stored in pieces and some are missing: it cannot be restored",
            escape(key)
        )?;
    }
    if view.leftover_pieces > 0 {
        writeln!(
            out,
            "  {} piece(s) of backups belong to no backup (an upload was interrupted); update deletes them",
            view.leftover_pieces
        )?;
    }
    let ids = ShortIds::new(view.sources.iter().flat_map(|source| {
        std::iter::once(source.uuid).chain(source.backups.iter().map(|b| b.uuid))
    }));
    for source in &view.sources {
        writeln!(
            out,
            "  source {} (uuid {})",
            escape(&source.name),
            ids.get(source.uuid)
        )?;
        crate::output::write_table(out, "    ", |row| {
            row(&["SNAPSHOT", "CTIME", "CTRANSID", "SIZE", "CLASS", ""]);
            for backup in &source.backups {
                let note = match (backup.send_parent, backup.broken) {
                    (Some(parent), true) => {
                        format!("BROKEN CHAIN: send parent {} is missing", ids.get(parent))
                    }
                    (Some(_), false) => "differential".to_owned(),
                    (None, _) => "full".to_owned(),
                };
                row(&[
                    &format!("{}{}", "  ".repeat(backup.depth), ids.get(backup.uuid)),
                    &short_time(&backup.ctime),
                    &backup.ctransid.to_string(),
                    &bytes(backup.size),
                    &escape(backup.storage_class.as_deref().unwrap_or_default()),
                    &note,
                ]);
            }
        })?;
    }
    Ok(())
}

/// How backups in archive storage classes are made readable: the flags of `restore` and
/// `verify`.
#[derive(Debug, clap::Args)]
pub struct ArchiveArgs {
    /// How fast (and dear) restores of backups in archive classes (Glacier, Deep Archive) are.
    #[arg(long, value_enum, value_name = "TIER", default_value_t = Tier::Standard)]
    pub restore_tier: Tier,
    /// How many days a restored copy stays readable.
    #[arg(long, value_name = "N", default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..=30000))]
    pub restore_days: u32,
    /// Request the restores of archived backups and leave, instead of waiting for them (run
    /// the same command again later).
    #[arg(long)]
    pub no_wait: bool,
}

/// `--restore-tier`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Tier {
    /// The cheapest, slowest.
    Bulk,
    /// The default.
    Standard,
    /// Minutes, at a price (not from Deep Archive).
    Expedited,
}

impl ArchiveArgs {
    fn options(&self) -> ArchiveOptions {
        ArchiveOptions {
            tier: match self.restore_tier {
                Tier::Bulk => RestoreTier::Bulk,
                Tier::Standard => RestoreTier::Standard,
                Tier::Expedited => RestoreTier::Expedited,
            },
            days: self.restore_days,
            wait: !self.no_wait,
        }
    }
}

/// The line printed after the restore requests, and at every change while waiting.
impl ArchiveUi for Progress {
    fn archive_status(&self, status: &ArchiveStatus, tier: RestoreTier) {
        eprintln!(
            "btrfs2s3: {}/{} archived object(s) available ({} restore(s) requested now); {}",
            status.readable,
            status.total,
            status.requested,
            tier.typical_wait()
        );
    }
}

/// Says what was requested when the command does not wait.
fn come_back_later(status: &ArchiveStatus) -> u8 {
    println!(
        "{} of {} archived backup(s) are not available yet ({} restore(s) requested now); run the same command again when they are",
        status.total - status.readable,
        status.total,
        status.requested
    );
    exit::OK
}

/// Progress of transfers on standard error.
impl TransferUi for Progress {
    fn started(&self, transfer: Transfer<'_>) {
        self.begin(&transfer_label(transfer), true);
    }

    fn progress(&self, bytes: u64) {
        self.advance(bytes);
    }

    fn finished(&self, transfer: Transfer<'_>, result: &Result<u64, PipelineError>) {
        let outcome = match (transfer, result) {
            (Transfer::Receive { .. }, Ok(size)) => format!("done ({})", bytes(*size)),
            (Transfer::Verify { .. }, Ok(size)) => format!("ok ({})", bytes(*size)),
            (_, Err(_)) => "FAILED".to_owned(),
        };
        self.end(&transfer_label(transfer), &outcome, true);
    }
}

fn transfer_label(transfer: Transfer<'_>) -> String {
    let ids = ShortIds::default();
    match transfer {
        Transfer::Receive { backup } => format!("receive {}", backup_label(&backup, &ids)),
        Transfer::Verify { remote, backup } => {
            format!("verify  {remote}: {}", backup_label(&backup, &ids))
        }
    }
}

/// Arguments of `restore`.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub remotes: RemoteArgs,
    /// The directory to receive into (on a btrfs filesystem; with `--plain`, any directory).
    #[arg(long, value_name = "PATH")]
    pub dest: PathBuf,
    /// Apply the streams to plain directories with btrfs2s3's own receiver, on any
    /// filesystem, without btrfs-progs or root: one directory per restored snapshot,
    /// `DEST/<snapshot name>` (owners are restored when run as root).
    #[arg(long)]
    pub plain: bool,
    /// With `--plain`: only the newest backup of each source of the selection, its chain
    /// applied to one working tree (the intermediate snapshots are not kept).
    #[arg(long, requires = "plain")]
    pub latest_only: bool,
    /// Restore only this backup (a snapshot uuid or its start, as `list` shows it, with its
    /// send ancestors) or source (every
    /// backup of it). Default: every backup of the remote.
    #[arg(long, value_name = "UUID")]
    pub uuid: Option<UuidPrefix>,
    /// A command each stream goes through before `btrfs receive`, the inverse of the config's
    /// `pipe_through` (e.g. "gunzip"); split into arguments like a shell would, but run without
    /// one. Repeat for several, in order.
    #[arg(long = "pipe-through", value_name = "CMD")]
    pub pipe_through: Vec<String>,
    /// Print the backups that would be received, in order (and which need restoring from an
    /// archive class first), and stop.
    #[arg(long)]
    pub pretend: bool,
    #[command(flatten)]
    pub archive: ArchiveArgs,
}

/// The one remote a read command reads (`target`), and its `--pipe-through` commands split
/// into arguments; an exit code when either is wrong.
fn reader(remotes: &RemoteArgs, pipe_through: &[String]) -> Result<(Target, Vec<Vec<String>>), u8> {
    let target = target(remotes, true)?;
    Ok((target, split_all(pipe_through)?))
}

fn split_all(commands: &[String]) -> Result<Vec<Vec<String>>, u8> {
    commands
        .iter()
        .map(|text| restore::split_command(text))
        .collect::<Result<_, _>>()
        .map_err(|error| {
            eprintln!("btrfs2s3: --pipe-through: {error}");
            exit::USAGE
        })
}

/// `btrfs2s3 restore`.
pub fn restore(args: &RestoreArgs) -> u8 {
    let (target, pipe_through) = match reader(&args.remotes, &args.pipe_through) {
        Ok(found) => found,
        Err(code) => return code,
    };
    let options = RestoreOptions {
        dest: args.dest.clone(),
        selection: args.uuid.clone().map_or(Selection::All, Selection::Uuid),
        pipe_through,
        plain: args.plain.then_some(run::Plain {
            latest_only: args.latest_only,
        }),
    };
    crate::with_runtime(|cancel| async move {
        let plan = match run::prepare_restore(&target, options, &cancel).await {
            Ok(plan) => plan,
            Err(error) => return failed(&error),
        };
        println!(
            "restoring from remote {} into {}, in this order:",
            plan.remote_id,
            plan.dest.display()
        );
        let ids = ShortIds::new(plan.items.iter().map(|item| item.uuid));
        if let Err(error) = print_restore_plan(&plan, &ids) {
            eprintln!("btrfs2s3: cannot print the restore plan: {error}");
            return exit::FAILURE;
        }
        if args.pretend || plan.is_done() {
            if !args.pretend {
                println!("nothing to do");
            }
            return exit::OK;
        }
        let progress = Progress::new(std::io::stderr().is_terminal());
        progress.use_ids(ids);
        let options = args.archive.options();
        match run::make_restorable(&plan, &options, &progress, &cancel).await {
            Ok(status) if !status.is_complete() => return come_back_later(&status),
            Ok(_) => {}
            Err(error) => return failed(&error),
        }
        let report = run::restore(&plan, &progress).await;
        match report.failure {
            None => {
                print_notes(&report.notes);
                println!(
                    "done: {} backup(s) {} into {}",
                    report.received,
                    if plan.plain.is_some() {
                        "restored"
                    } else {
                        "received"
                    },
                    plan.dest.display()
                );
                exit::OK
            }
            Some(failure) => {
                print_notes(&report.notes);
                eprintln!(
                    "btrfs2s3: restoring {} failed: {}",
                    escape(&failure.key),
                    escape(&error_chain(&failure.error))
                );
                eprintln!(
                    "btrfs2s3: {} backup(s) received; run the same command again to go on (what is there is skipped)",
                    report.received
                );
                exit::FAILURE
            }
        }
    })
}

/// What a plain restore could not restore as the backup has it.
fn print_notes(notes: &run::Notes) {
    let paths = |paths: &[Vec<u8>]| {
        paths
            .iter()
            .map(|path| escape(&String::from_utf8_lossy(path)).into_owned())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if notes.owners_kept > 0 {
        println!(
            "note: owners were not restored ({} name(s)): only root can give files to others; they belong to you",
            notes.owners_kept
        );
    }
    if notes.devices > 0 {
        println!(
            "note: {} device node(s) were not created (only root can), e.g. {}",
            notes.devices,
            paths(&notes.devices_skipped)
        );
    }
    if notes.xattrs > 0 {
        println!(
            "note: {} extended attribute(s) could not be set, e.g. {}",
            notes.xattrs,
            escape(&notes.xattrs_skipped.join("; "))
        );
    }
}

/// The backups a restore receives, in order, as a table on standard output.
fn print_restore_plan(plan: &RestorePlan, ids: &ShortIds) -> std::io::Result<()> {
    let latest_only = plan.plain.is_some_and(|plain| plain.latest_only);
    let rows: Vec<[String; 5]> = plan
        .items
        .iter()
        .enumerate()
        .map(|(at, item)| {
            // With --latest-only, each chain's last backup is kept; the rest are applied.
            let kept = plan
                .items
                .get(at + 1)
                .is_none_or(|next| next.send_parent.is_none());
            let archived = plan.archived().any(|a| a.key == item.key);
            let status = match (item.present, archived) {
                (true, _) => "already there, skipped".to_owned(),
                (false, true) => format!(
                    "to receive, from {} (restored first)",
                    escape(item.storage_class.as_deref().unwrap_or_default())
                ),
                (false, false) if latest_only && !kept => "to apply (not kept)".to_owned(),
                (false, false) => "to receive".to_owned(),
            };
            let id = match item.send_parent {
                Some(parent) => format!("{} <- {}", ids.get(item.uuid), ids.get(parent)),
                None => ids.get(item.uuid),
            };
            let status = if crate::verbose() {
                format!("{status} [key {}]", escape(&item.key))
            } else {
                status
            };
            [
                id,
                escape(&item.source).into_owned(),
                short_time(&item.ctime),
                bytes(item.size),
                status,
            ]
        })
        .collect();
    crate::output::write_table(&mut std::io::stdout().lock(), "  ", |row| {
        row(&["SNAPSHOT", "SOURCE", "CTIME", "SIZE", ""]);
        for cells in &rows {
            let cells: Vec<&str> = cells.iter().map(String::as_str).collect();
            row(&cells);
        }
    })
}

/// Arguments of `verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub remotes: RemoteArgs,
    /// Verify only this backup (a snapshot uuid or its start, with its send ancestors) or
    /// source.
    #[arg(long, value_name = "UUID")]
    pub uuid: Option<UuidPrefix>,
    /// A command each stream goes through before it is checked (e.g. "gunzip"), as for
    /// `restore`.
    #[arg(long = "pipe-through", value_name = "CMD")]
    pub pipe_through: Vec<String>,
    /// What reads the streams: `btrfs` (`btrfs receive --dump`) or `builtin` (btrfs2s3's own
    /// parser, which also applies every path to a model of the tree, and needs no
    /// btrfs-progs). Default: `btrfs` when it is installed, else `builtin`.
    #[arg(long, value_enum, value_name = "PARSER")]
    pub parser: Option<ParserArg>,
    #[command(flatten)]
    pub archive: ArchiveArgs,
}

/// `--parser`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ParserArg {
    /// `btrfs receive --dump`.
    Btrfs,
    /// btrfs2s3's own parser.
    Builtin,
}

/// What `verify` finds, one line per backup on standard output.
struct VerifyLines(Progress);

impl TransferUi for VerifyLines {
    fn started(&self, transfer: Transfer<'_>) {
        self.0.started(transfer);
    }

    fn progress(&self, bytes: u64) {
        TransferUi::progress(&self.0, bytes);
    }

    fn finished(&self, transfer: Transfer<'_>, result: &Result<u64, PipelineError>) {
        TransferUi::finished(&self.0, transfer, result);
    }
}

impl ArchiveUi for VerifyLines {
    fn archive_status(&self, status: &ArchiveStatus, tier: RestoreTier) {
        self.0.archive_status(status, tier);
    }
}

impl VerifyUi for VerifyLines {
    fn verdict(&self, remote: &str, backup: BackupLabel<'_>, verdict: &Verdict) {
        let label = backup_label(&backup, &ShortIds::default());
        match verdict {
            Verdict::Intact { .. } => println!(
                "remote {remote}: {label}: {}",
                paint("ok", Style::Added, Stream::Out)
            ),
            Verdict::BrokenChain { send_parent } => println!(
                "remote {remote}: {label}: {}: broken chain: send parent {send_parent} is not in the remote",
                paint("FAILED", Style::Removed, Stream::Out)
            ),
            Verdict::Damaged { error } => println!(
                "remote {remote}: {label}: {}: {}",
                paint("FAILED", Style::Removed, Stream::Out),
                escape(&error_chain(error))
            ),
        }
    }

    fn unselectable(&self, remote: &str, error: &SelectError) {
        println!("remote {remote}: FAILED: {}", escape(&error.to_string()));
    }
}

/// `btrfs2s3 verify`.
pub fn verify(args: &VerifyArgs) -> u8 {
    let target = match target(&args.remotes, false) {
        Ok(target) => target,
        Err(code) => return code,
    };
    let pipe_through = match split_all(&args.pipe_through) {
        Ok(commands) => commands,
        Err(code) => return code,
    };
    let btrfs_installed = || {
        btrfs2s3_core::trust::resolve_program("btrfs", btrfs2s3_core::trust::Trustee::current())
            .is_ok()
    };
    let parser = match args.parser {
        Some(ParserArg::Btrfs) => run::StreamParser::Btrfs,
        None if btrfs_installed() => run::StreamParser::Btrfs,
        Some(ParserArg::Builtin) | None => run::StreamParser::Builtin,
    };
    let options = VerifyOptions {
        uuid: args.uuid.clone(),
        pipe_through,
        archive: args.archive.options(),
        parser,
    };
    let lines = VerifyLines(Progress::new(std::io::stderr().is_terminal()));
    crate::with_runtime(|cancel| async move {
        match run::verify(&target, &options, &lines, &cancel).await {
            Ok(report) => verified(&report, args.uuid.as_ref()),
            Err(error) => failed(&error),
        }
    })
}

fn verified(report: &run::VerifyReport, uuid: Option<&UuidPrefix>) -> u8 {
    if !report.archive.is_complete() {
        return come_back_later(&report.archive);
    }
    if let (false, Some(uuid)) = (report.found, uuid) {
        eprintln!("btrfs2s3: no remote has a backup or source with uuid {uuid}");
        return exit::USAGE;
    }
    if report.problems > 0 {
        println!(
            "{} problem(s) in {} backup(s) checked",
            report.problems, report.checked
        );
        exit::FAILURE
    } else {
        println!("all {} backup(s) verified", report.checked);
        exit::OK
    }
}

#[cfg(test)]
mod tests {
    use btrfs2s3_core::catalog::{BackupView, SourceView};
    use uuid::Uuid;

    use super::*;

    fn backup(n: u128, parent: Option<u128>, depth: usize, broken: bool) -> BackupView {
        let uuid =
            |n: u128| Uuid::from_u128(n.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835));
        BackupView {
            key: format!("home.key{n}"),
            uuid: uuid(n),
            send_parent: parent.map(uuid),
            ctime: format!("2026-0{n}-01T03:00:00+01:00"),
            ctransid: 80_000 + i64::try_from(n).unwrap(),
            size: 1_000_000 * u64::try_from(n).unwrap(),
            storage_class: Some("STANDARD".to_owned()),
            depth,
            broken,
        }
    }

    #[test]
    fn a_list_reads_as_expected() {
        let view = CatalogView {
            remote: "aws".to_owned(),
            bucket: "my-backups".to_owned(),
            foreign_objects: 2,
            broken_pieces: vec!["home.ctim2026-05-01T00:00:00+00:00.ctid9.uuid00000000-0000-0000-0000-000000000009.sndp00000000-0000-0000-0000-000000000000.prnt00000000-0000-0000-0000-000000000001.mdvn1.seqn0".to_owned()],
            leftover_pieces: 3,
            sources: vec![SourceView {
                uuid: Uuid::from_u128(0xfeed_0000_0000_0000_0000_0000_0000_0000),
                name: "home".to_owned(),
                backups: vec![
                    backup(1, None, 0, false),
                    backup(2, Some(1), 1, false),
                    backup(3, Some(2), 2, false),
                    backup(4, Some(9), 0, true),
                ],
            }],
        };
        let mut out = Vec::new();
        write_catalog(&view, &mut out).unwrap();
        crate::expect_text("list.txt", &String::from_utf8(out).unwrap());
    }
}

/// Arguments of `ls`.
#[derive(Debug, clap::Args)]
pub struct LsArgs {
    #[command(flatten)]
    pub remotes: RemoteArgs,
    /// The backup (a snapshot uuid or its start, as `list` shows it).
    #[arg(long, value_name = "UUID")]
    pub uuid: UuidPrefix,
    /// Only this file or directory (and what is below it), from the snapshot's root.
    #[arg(long, value_name = "PATH")]
    pub path: Option<String>,
    /// A command each stream goes through before it is read (e.g. "gunzip"), as for
    /// `restore`.
    #[arg(long = "pipe-through", value_name = "CMD")]
    pub pipe_through: Vec<String>,
    /// Print the same as JSON on standard output.
    #[arg(long)]
    pub json: bool,
}

/// `btrfs2s3 ls`.
pub fn ls(args: &LsArgs) -> u8 {
    let (target, pipe_through) = match reader(&args.remotes, &args.pipe_through) {
        Ok(found) => found,
        Err(code) => return code,
    };
    let options = run::LsOptions {
        uuid: args.uuid.clone(),
        path: args.path.clone(),
        pipe_through,
    };
    let timezone = target.timezone.clone();
    let progress = Progress::new(std::io::stderr().is_terminal());
    crate::with_runtime(|cancel| async move {
        match run::ls(&target, &options, &progress, &cancel).await {
            Ok(report) => {
                if args.json {
                    crate::output::print_json(&report);
                } else if let Err(error) =
                    write_ls(&report, &timezone, &mut std::io::stdout().lock())
                {
                    eprintln!("btrfs2s3: cannot print the list: {error}");
                    return exit::FAILURE;
                }
                exit::OK
            }
            Err(error) => {
                crate::print_error(&error);
                if error.is_usage() {
                    exit::USAGE
                } else {
                    exit::FAILURE
                }
            }
        }
    })
}

/// Arguments of `extract`.
#[derive(Debug, clap::Args)]
pub struct ExtractArgs {
    #[command(flatten)]
    pub remotes: RemoteArgs,
    /// The backup (a snapshot uuid or its start, as `list` shows it).
    #[arg(long, value_name = "UUID")]
    pub uuid: UuidPrefix,
    /// A file or directory to extract (with what is below it), from the snapshot's root;
    /// repeat for several.
    #[arg(long, value_name = "PATH", required = true)]
    pub path: Vec<String>,
    /// Where to put them: each path lands at DIR/PATH (DIR is created if needed; a path that
    /// exists there is an error).
    #[arg(long, value_name = "DIR")]
    pub to: PathBuf,
    /// A command each stream goes through before it is read (e.g. "gunzip"), as for
    /// `restore`.
    #[arg(long = "pipe-through", value_name = "CMD")]
    pub pipe_through: Vec<String>,
}

/// `btrfs2s3 extract`.
pub fn extract(args: &ExtractArgs) -> u8 {
    let (target, pipe_through) = match reader(&args.remotes, &args.pipe_through) {
        Ok(found) => found,
        Err(code) => return code,
    };
    let options = run::ExtractOptions {
        uuid: args.uuid.clone(),
        paths: args.path.clone(),
        to: args.to.clone(),
        pipe_through,
    };
    let progress = Progress::new(std::io::stderr().is_terminal());
    crate::with_runtime(|cancel| async move {
        match run::extract(&target, &options, &progress, &cancel).await {
            Ok(report) => {
                print_notes(&report.notes);
                for path in &report.extracted {
                    println!("extracted {}", escape(&path.to_string_lossy()));
                }
                println!(
                    "done: from backup {} ({} downloaded: the chain is read twice)",
                    escape(&report.key),
                    bytes(report.downloaded)
                );
                exit::OK
            }
            Err(error) => {
                crate::print_error(&error);
                if error.is_usage() {
                    exit::USAGE
                } else {
                    exit::FAILURE
                }
            }
        }
    })
}

/// `drwxr-xr-x`: the type and the permission bits, as `ls -l` shows them.
fn mode_string(kind: &str, mode: u64) -> String {
    let mut text = String::with_capacity(10);
    text.push(match kind {
        "directory" => 'd',
        "symlink" => 'l',
        "special" => 's',
        _ => '-',
    });
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        text.push(if bits & 4 != 0 { 'r' } else { '-' });
        text.push(if bits & 2 != 0 { 'w' } else { '-' });
        text.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    text
}

/// The files of a backup, one line each: type and mode, owner, size, mtime, path.
fn write_ls(
    report: &run::LsReport,
    timezone: &jiff::tz::TimeZone,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let rows: Vec<[String; 5]> = report
        .entries
        .iter()
        .map(|entry| {
            let mtime = entry
                .mtime
                .and_then(|seconds| jiff::Timestamp::from_second(seconds).ok())
                .map_or_else(
                    || "-".to_owned(),
                    |time| {
                        time.to_zoned_datetime(timezone.clone())
                            .strftime("%Y-%m-%d %H:%M")
                            .to_string()
                    },
                );
            let path = if entry.path.is_empty() {
                ".".to_owned()
            } else {
                escape(&entry.path).to_string()
            };
            let path = match &entry.target {
                Some(target) => format!("{path} -> {}", escape(target)),
                None => path,
            };
            [
                mode_string(entry.kind, entry.mode),
                format!("{}:{}", entry.uid, entry.gid),
                entry.size.to_string(),
                mtime,
                path,
            ]
        })
        .collect();
    crate::output::write_table(out, "", |row| {
        for cells in &rows {
            row(&cells.each_ref().map(String::as_str));
        }
    })
}
