//! `status`: for each (source, remote) pair of a config, the newest backup's time and age,
//! its chain depth, how many backups there are and how much they hold, and broken chains;
//! healthy or not, for a monitoring check. Reads only: one listing per remote, no locks.

use std::path::{Path, PathBuf};
use std::time::Duration;

use btrfs2s3_btrfs::Subvolume;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::Serialize;
use uuid::Uuid;

use crate::cancel::Cancel;
use crate::catalog::Catalog;
use crate::config::Config;
use crate::plan::BackupState;
use crate::run::read::read_catalog;

/// What `status` checks.
#[derive(Debug, Clone, Copy)]
pub struct StatusOptions {
    /// The instant ages are measured at.
    pub now: Timestamp,
    /// The oldest a pair's newest backup may be (`--max-age`).
    pub max_age: Option<Duration>,
}

/// The state of every pair.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// When it was measured.
    pub now: Timestamp,
    /// The oldest a newest backup may be, in seconds, if checked.
    pub max_age_seconds: Option<u64>,
    /// Each (source, remote) pair of the config, in config order.
    pub pairs: Vec<PairStatus>,
}

impl StatusReport {
    /// Whether every pair is fine.
    #[must_use]
    pub fn healthy(&self) -> bool {
        self.pairs.iter().all(|pair| pair.problems.is_empty())
    }
}

/// One source in one remote.
#[derive(Debug, Clone, Serialize)]
pub struct PairStatus {
    /// The source.
    pub source: PathBuf,
    /// The remote.
    pub remote: String,
    /// The source's uuid, if it could be read (otherwise its backups are found by name).
    pub source_uuid: Option<Uuid>,
    /// How many backups it has there.
    pub backups: usize,
    /// Their bytes.
    pub bytes: u64,
    /// The newest one.
    pub newest: Option<NewestBackup>,
    /// How many of its backups cannot be restored: a send ancestor is missing.
    pub unrestorable: usize,
    /// What is wrong; empty when all is well.
    pub problems: Vec<String>,
}

/// A pair's newest backup.
#[derive(Debug, Clone, Serialize)]
pub struct NewestBackup {
    /// Its key.
    pub key: String,
    /// Its snapshot's time, in the config's time zone.
    pub ctime: String,
    /// How old that snapshot is, in seconds.
    pub age_seconds: i64,
    /// How many differentials stand between it and its full backup (0: it is one).
    pub depth: usize,
}

/// How a pair's backups are recognised in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Identity {
    /// By the source's uuid.
    Uuid(Uuid),
    /// By the source's name, when the source cannot be read (gone, or not ours to read).
    Name(String),
}

/// `status` of `config`.
pub async fn status(config: &Config, options: StatusOptions, cancel: &Cancel) -> StatusReport {
    let mut pairs = Vec::new();
    let mut identities = Vec::new();
    for source in &config.sources {
        identities.push(identify(&source.path).await);
    }
    for remote in &config.remotes {
        let used: Vec<(usize, &Path)> = config
            .sources
            .iter()
            .enumerate()
            .filter(|(_, source)| {
                source
                    .upload_to_remotes
                    .iter()
                    .any(|upload| upload.remote_id == remote.id)
            })
            .map(|(n, source)| (n, source.path.as_path()))
            .collect();
        if used.is_empty() {
            continue;
        }
        let catalog = read_catalog(remote, cancel)
            .await
            .map(|(_, catalog)| catalog);
        for (n, path) in used {
            let pair = match &catalog {
                Ok(catalog) => {
                    pair_status(catalog, path, &identities[n], &config.timezone, options)
                }
                Err(error) => PairStatus {
                    source: path.to_path_buf(),
                    remote: remote.id.clone(),
                    source_uuid: None,
                    backups: 0,
                    bytes: 0,
                    newest: None,
                    unrestorable: 0,
                    problems: vec![format!(
                        "cannot list the remote: {}",
                        crate::text::escape(&crate::error_chain(error))
                    )],
                },
            };
            pairs.push(pair);
        }
    }
    StatusReport {
        now: options.now,
        max_age_seconds: options.max_age.map(|age| age.as_secs()),
        pairs,
    }
}

/// The source's uuid, or its name when it cannot be read.
async fn identify(path: &Path) -> Identity {
    let opened = path.to_path_buf();
    let uuid = tokio::task::spawn_blocking(move || Subvolume::open(&opened).map(|s| s.info().uuid))
        .await
        .ok()
        .and_then(Result::ok);
    match uuid {
        Some(uuid) => Identity::Uuid(uuid),
        None => Identity::Name(
            path.file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default(),
        ),
    }
}

/// One pair's status from its remote's catalog.
fn pair_status(
    catalog: &Catalog,
    path: &Path,
    identity: &Identity,
    tz: &TimeZone,
    options: StatusOptions,
) -> PairStatus {
    let mut problems = Vec::new();
    let ours = |backup: &&BackupState| match identity {
        Identity::Uuid(uuid) => backup.meta.parent_uuid == *uuid,
        Identity::Name(name) => btrfs2s3_s3::BackupMeta::base_name(&backup.key) == name,
    };
    let backups: Vec<&BackupState> = catalog.backups().iter().filter(ours).collect();
    if let Identity::Name(_) = identity {
        let sources: std::collections::BTreeSet<Uuid> =
            backups.iter().map(|b| b.meta.parent_uuid).collect();
        if sources.len() > 1 {
            problems.push(format!(
                "the source cannot be read, and backups of {} sources have its name",
                sources.len()
            ));
        }
    }
    let unrestorable = backups
        .iter()
        .filter(|backup| !catalog.chain_is_complete(backup))
        .count();
    if unrestorable > 0 {
        problems.push(format!(
            "{unrestorable} backup(s) cannot be restored: a send ancestor is missing"
        ));
    }
    let missing_pieces = catalog.broken_pieces.iter().filter(ours).count();
    if missing_pieces > 0 {
        problems.push(format!(
            "{missing_pieces} backup(s) stored in pieces have pieces missing: they cannot be restored"
        ));
    }
    let unrestorable = unrestorable + missing_pieces;
    let newest = backups
        .iter()
        .max_by_key(|b| (b.meta.ctime, b.meta.ctransid))
        .map(|backup| {
            let age = options.now.duration_since(backup.meta.ctime).as_secs();
            NewestBackup {
                key: backup.key.to_string(),
                ctime: btrfs2s3_s3::format_ctime(backup.meta.ctime, tz),
                age_seconds: age,
                depth: catalog.depth(backup),
            }
        });
    if let Some(max_age) = options.max_age {
        let max = i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX);
        match &newest {
            None => problems.push("no backup".to_owned()),
            Some(newest) if newest.age_seconds > max => problems.push(format!(
                "the newest backup is {} old, more than {}",
                crate::text::human_duration(newest.age_seconds.unsigned_abs()),
                crate::text::human_duration(max_age.as_secs())
            )),
            Some(_) => {}
        }
    }
    PairStatus {
        source: path.to_path_buf(),
        remote: catalog.remote.clone(),
        source_uuid: match identity {
            Identity::Uuid(uuid) => Some(*uuid),
            Identity::Name(_) => None,
        },
        backups: backups.len(),
        bytes: backups.iter().map(|b| b.size).sum(),
        newest,
        unrestorable,
        problems,
    }
}

#[cfg(test)]
mod tests {
    use btrfs2s3_s3::BackupMeta;

    use super::*;

    const HOME: u128 = 1000;

    fn backup(source: u128, n: u128, parent: Option<u128>, day: u8) -> BackupState {
        let meta = BackupMeta {
            uuid: Uuid::from_u128(n),
            parent_uuid: Uuid::from_u128(source),
            send_parent_uuid: parent.map(Uuid::from_u128),
            ctransid: i64::try_from(n).unwrap() * 10,
            ctime: format!("2026-05-{day:02}T12:00:00Z").parse().unwrap(),
        };
        BackupState {
            key: meta
                .key(
                    if source == HOME { "home" } else { "media" },
                    &TimeZone::UTC,
                )
                .into(),
            meta,
            size: 10 * u64::try_from(n).unwrap(),
            storage_class: None,
            retention: None,
            pieces: Vec::new(),
        }
    }

    fn check(backups: Vec<BackupState>, identity: &Identity, max_age: Option<u64>) -> PairStatus {
        let catalog = Catalog::new("aws".to_owned(), "bucket".to_owned(), backups, 0);
        let options = StatusOptions {
            now: "2026-05-20T12:00:00Z".parse().unwrap(),
            max_age: max_age.map(|hours| Duration::from_secs(hours * 3600)),
        };
        pair_status(
            &catalog,
            Path::new("/pool/home"),
            identity,
            &TimeZone::UTC,
            options,
        )
    }

    /// home: 1 (full, May 1) ← 2 (May 10) ← 3 (May 19); media: 7.
    fn sample() -> Vec<BackupState> {
        vec![
            backup(HOME, 1, None, 1),
            backup(HOME, 2, Some(1), 10),
            backup(HOME, 3, Some(2), 19),
            backup(2000, 7, None, 20),
        ]
    }

    #[test]
    fn the_newest_backup_its_age_and_depth() {
        let status = check(sample(), &Identity::Uuid(Uuid::from_u128(HOME)), Some(48));
        assert_eq!((status.backups, status.bytes), (3, 60));
        let newest = status.newest.unwrap();
        assert_eq!(newest.ctime, "2026-05-19T12:00:00+00:00");
        assert_eq!(newest.age_seconds, 86_400);
        assert_eq!(newest.depth, 2);
        assert!(status.problems.is_empty(), "{:?}", status.problems);
    }

    #[test]
    fn too_old_missing_and_broken_are_problems() {
        let home = Identity::Uuid(Uuid::from_u128(HOME));
        let status = check(sample(), &home, Some(12));
        assert_eq!(
            status.problems,
            ["the newest backup is 1d old, more than 12h"]
        );
        // Without --max-age, age is no problem.
        assert!(check(sample(), &home, None).problems.is_empty());
        let status = check(Vec::new(), &home, Some(12));
        assert_eq!(status.problems, ["no backup"]);
        assert!(check(Vec::new(), &home, None).problems.is_empty());
        // The full backup is gone: both differentials are unrestorable.
        let mut broken = sample();
        broken.remove(0);
        let status = check(broken, &home, None);
        assert_eq!(status.unrestorable, 2);
        assert_eq!(
            status.problems,
            ["2 backup(s) cannot be restored: a send ancestor is missing"]
        );
    }

    #[test]
    fn an_unreadable_source_is_found_by_name() {
        let status = check(sample(), &Identity::Name("home".to_owned()), None);
        assert_eq!(status.backups, 3);
        assert_eq!(status.source_uuid, None);
        let mut two = sample();
        let mut other = backup(3000, 9, None, 2);
        other.key = other.key.replace("media", "home").into();
        let _ = BackupMeta::parse_key(&other.key).unwrap();
        two.push(other);
        let status = check(two, &Identity::Name("home".to_owned()), None);
        assert_eq!(
            status.problems,
            ["the source cannot be read, and backups of 2 sources have its name"]
        );
    }
}
