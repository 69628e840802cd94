//! `list`, `restore` and `verify`: the commands that read backups. They need only the
//! remotes of a config (and its time zone), or, when the config is lost, a bucket given on
//! the command line.

use std::collections::BTreeSet;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use btrfs2s3_core::catalog::{Catalog, CatalogView, Remote, RemoteConfig, SelectError, Selection};
use btrfs2s3_core::config::{self, Needs};
use btrfs2s3_core::execute::error_chain;
use btrfs2s3_core::plan::BackupState;
use btrfs2s3_core::restore;
use jiff::tz::TimeZone;
use uuid::Uuid;

use crate::exit;
use crate::output::bytes;
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

/// The remotes to read and the time zone to show times in.
struct Target {
    timezone: TimeZone,
    remotes: Vec<(String, RemoteConfig)>,
}

/// Resolves the remote arguments; `Err` is the exit code after the message was printed.
fn target(args: &RemoteArgs, need_one: bool) -> Result<Target, u8> {
    if let Some(bucket) = &args.bucket {
        let config = RemoteConfig {
            endpoint_url: args.endpoint_url.clone(),
            region: args.region.clone(),
            profile: args.profile.clone(),
            ..RemoteConfig::new(bucket)
        };
        return Ok(Target {
            timezone: TimeZone::UTC,
            remotes: vec![(bucket.clone(), config)],
        });
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
        eprintln!("btrfs2s3: warning: {warning}");
    }
    let remotes: Vec<(String, RemoteConfig)> = config
        .remotes
        .iter()
        .filter(|remote| args.remote.as_ref().is_none_or(|id| *id == remote.id))
        .map(|remote| (remote.id.clone(), remote.s3.clone()))
        .collect();
    if let (Some(id), true) = (&args.remote, remotes.is_empty()) {
        let known: Vec<&str> = config.remotes.iter().map(|r| r.id.as_str()).collect();
        eprintln!(
            "btrfs2s3: {} has no remote {id:?} (it has: {})",
            path.display(),
            known.join(", ")
        );
        return Err(exit::USAGE);
    }
    if need_one && remotes.len() != 1 {
        let known: Vec<&str> = remotes.iter().map(|(id, _)| id.as_str()).collect();
        eprintln!(
            "btrfs2s3: {} has several remotes; choose one with --remote ({})",
            path.display(),
            known.join(", ")
        );
        return Err(exit::USAGE);
    }
    Ok(Target {
        timezone: config.timezone.clone(),
        remotes,
    })
}

/// Connects to a remote and reads its catalog; `Err` is the message.
async fn catalog(id: &str, config: &RemoteConfig) -> Result<(Remote, Catalog), String> {
    btrfs2s3_core::catalog::read(id, config)
        .await
        .map_err(|error| error_chain(&error))
}

fn runtime() -> Result<tokio::runtime::Runtime, u8> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| {
            eprintln!("btrfs2s3: cannot start: {error}");
            exit::FAILURE
        })
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
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let mut views = Vec::new();
    for (id, config) in &target.remotes {
        match runtime.block_on(catalog(id, config)) {
            Ok((_, catalog)) => views.push(catalog.view(&target.timezone)),
            Err(message) => {
                eprintln!("btrfs2s3: {message}");
                return exit::FAILURE;
            }
        }
    }
    if args.json {
        #[derive(serde::Serialize)]
        struct Printed<'a> {
            timezone: Option<&'a str>,
            remotes: &'a [CatalogView],
        }
        crate::output::print_json(&Printed {
            timezone: target.timezone.iana_name(),
            remotes: &views,
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
    for source in &view.sources {
        writeln!(out, "  source {} (uuid {})", source.name, source.uuid)?;
        crate::output::write_table(out, "    ", |row| {
            row(&["uuid", "ctime", "ctransid", "size", "class", ""]);
            for backup in &source.backups {
                let note = match (backup.send_parent, backup.broken) {
                    (Some(parent), true) => {
                        format!("BROKEN CHAIN: send parent {parent} is missing")
                    }
                    (Some(_), false) => "differential".to_owned(),
                    (None, _) => "full".to_owned(),
                };
                row(&[
                    &format!("{}{}", "  ".repeat(backup.depth), backup.uuid),
                    &backup.ctime,
                    &backup.ctransid.to_string(),
                    &bytes(backup.size),
                    backup.storage_class.as_deref().unwrap_or_default(),
                    &note,
                ]);
            }
        })?;
    }
    Ok(())
}

/// Arguments of `restore`.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub remotes: RemoteArgs,
    /// The directory to receive into (on a btrfs filesystem).
    #[arg(long, value_name = "PATH")]
    pub dest: PathBuf,
    /// Restore only this backup (a snapshot uuid, with its send ancestors) or source (every
    /// backup of it). Default: every backup of the remote.
    #[arg(long, value_name = "UUID")]
    pub uuid: Option<Uuid>,
    /// A command each stream goes through before `btrfs receive`, the inverse of the config's
    /// `pipe_through` (e.g. "gunzip"); split into arguments like a shell would, but run without
    /// one. Repeat for several, in order.
    #[arg(long = "pipe-through", value_name = "CMD")]
    pub pipe_through: Vec<String>,
    /// Print the backups that would be received, in order, and stop.
    #[arg(long)]
    pub pretend: bool,
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

fn select_error_code(error: &SelectError) -> u8 {
    match error {
        SelectError::Unknown { .. } => exit::USAGE,
        SelectError::Broken { .. } => exit::FAILURE,
    }
}

/// `btrfs2s3 restore`.
pub fn restore(args: &RestoreArgs) -> u8 {
    let target = match target(&args.remotes, true) {
        Ok(target) => target,
        Err(code) => return code,
    };
    let pipe_through = match split_all(&args.pipe_through) {
        Ok(commands) => commands,
        Err(code) => return code,
    };
    let present = match restore::received_uuids(&args.dest) {
        Ok(present) => present,
        Err(error) => {
            eprintln!(
                "btrfs2s3: cannot restore into {}: {}",
                args.dest.display(),
                error_chain(&error)
            );
            return exit::USAGE;
        }
    };
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let (id, config) = &target.remotes[0];
    let (remote, catalog) = match runtime.block_on(catalog(id, config)) {
        Ok(found) => found,
        Err(message) => {
            eprintln!("btrfs2s3: {message}");
            return exit::FAILURE;
        }
    };
    let selection = args.uuid.map_or(Selection::All, Selection::Uuid);
    let items = match restore::plan_restore(&catalog, selection, &present, &target.timezone) {
        Ok(items) => items,
        Err(error) => {
            eprintln!("btrfs2s3: {error}");
            return select_error_code(&error);
        }
    };
    println!(
        "restoring from remote {id} into {}, in this order:",
        args.dest.display()
    );
    for item in &items {
        let status = if item.present {
            "already there, skipped"
        } else {
            "to receive"
        };
        println!(
            "  {}  {}  {}  {status}",
            item.key,
            item.ctime,
            bytes(item.size)
        );
    }
    if args.pretend || items.iter().all(|item| item.present) {
        if !args.pretend {
            println!("nothing to do");
        }
        return exit::OK;
    }
    let progress = Progress::new(std::io::stderr().is_terminal());
    let mut received = 0;
    for item in items.iter().filter(|item| !item.present) {
        let label = format!("receive {}", item.key);
        progress.begin(&label, true);
        let advance = |n: u64| progress.advance(n);
        let result = runtime.block_on(restore::receive(
            &remote,
            &item.key,
            &args.dest,
            &pipe_through,
            &advance,
        ));
        match result {
            Ok(size) => {
                progress.end(&label, &format!("done ({})", bytes(size)), true);
                received += 1;
            }
            Err(error) => {
                progress.end(&label, "FAILED", true);
                eprintln!(
                    "btrfs2s3: restoring {} failed: {}",
                    item.key,
                    error_chain(&error)
                );
                eprintln!(
                    "btrfs2s3: {received} backup(s) received; run the same command again to go on (what is there is skipped)"
                );
                return exit::FAILURE;
            }
        }
    }
    println!(
        "done: {received} backup(s) received into {}",
        args.dest.display()
    );
    exit::OK
}

/// Arguments of `verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub remotes: RemoteArgs,
    /// Verify only this backup (a snapshot uuid, with its send ancestors) or source.
    #[arg(long, value_name = "UUID")]
    pub uuid: Option<Uuid>,
    /// A command each stream goes through before it is checked (e.g. "gunzip"), as for
    /// `restore`.
    #[arg(long = "pipe-through", value_name = "CMD")]
    pub pipe_through: Vec<String>,
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
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let progress = Progress::new(std::io::stderr().is_terminal());
    let (mut checked, mut failed) = (0usize, 0usize);
    let mut found_uuid = args.uuid.is_none();
    for (id, config) in &target.remotes {
        let (remote, catalog) = match runtime.block_on(catalog(id, config)) {
            Ok(found) => found,
            Err(message) => {
                eprintln!("btrfs2s3: {message}");
                return exit::FAILURE;
            }
        };
        // Chains first: a backup whose send parent is gone cannot be restored, however
        // intact its bytes are.
        let broken: BTreeSet<Uuid> = catalog
            .broken_chains()
            .iter()
            .map(|b| b.meta.uuid)
            .collect();
        let selected: Vec<&BackupState> = match args.uuid {
            None => catalog.backups().iter().collect(),
            Some(uuid) => match catalog.select(Selection::Uuid(uuid)) {
                Ok(selected) => {
                    found_uuid = true;
                    selected
                }
                Err(SelectError::Unknown { .. }) => continue,
                Err(error) => {
                    found_uuid = true;
                    println!("remote {id}: FAILED: {error}");
                    failed += 1;
                    continue;
                }
            },
        };
        for backup in catalog.broken_chains() {
            if selected.iter().any(|s| s.meta.uuid == backup.meta.uuid) {
                println!(
                    "remote {id}: {}: FAILED: broken chain: send parent {} is not in the remote",
                    backup.key,
                    backup.meta.send_parent_uuid.unwrap_or_default()
                );
                failed += 1;
            }
        }
        for backup in selected {
            let label = format!("verify {id}: {}", backup.key);
            progress.begin(&label, true);
            let advance = |n: u64| progress.advance(n);
            checked += 1;
            match runtime.block_on(restore::verify(
                &remote,
                &backup.key,
                &pipe_through,
                &advance,
            )) {
                Ok(size) => {
                    progress.end(&label, &format!("ok ({})", bytes(size)), true);
                    if !broken.contains(&backup.meta.uuid) {
                        println!("remote {id}: {}: ok", backup.key);
                    }
                }
                Err(error) => {
                    progress.end(&label, "FAILED", true);
                    println!(
                        "remote {id}: {}: FAILED: {}",
                        backup.key,
                        error_chain(&error)
                    );
                    failed += 1;
                }
            }
        }
    }
    if !found_uuid {
        eprintln!(
            "btrfs2s3: no remote has a backup or source with uuid {}",
            args.uuid.unwrap_or_default()
        );
        return exit::USAGE;
    }
    if failed > 0 {
        println!("{failed} problem(s) in {checked} backup(s) checked");
        exit::FAILURE
    } else {
        println!("all {checked} backup(s) verified");
        exit::OK
    }
}
