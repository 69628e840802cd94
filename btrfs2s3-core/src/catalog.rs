//! What a remote holds, organised: the backups of each source as trees (full backups at the
//! roots, differentials under their send parents), broken chains, and selections of backups
//! with everything they need, parents first — for `list`, `restore` and `verify`. Pure.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use btrfs2s3_s3::{BackupMeta, format_ctime};
use btrfs2s3_s3::{Remote, RemoteConfig};
use jiff::tz::TimeZone;
use serde::Serialize;
use uuid::Uuid;

use crate::plan::BackupState;

/// The backups of one remote.
#[derive(Debug, Clone)]
pub struct Catalog {
    /// The remote's id.
    pub remote: String,
    /// Its bucket.
    pub bucket: String,
    /// One backup per snapshot uuid (the first key in key order, if several name one).
    backups: Vec<BackupState>,
    /// Objects that are not backups.
    pub foreign_objects: usize,
    /// Backups stored as several objects of which some are missing: they cannot be restored.
    pub broken_pieces: Vec<BackupState>,
    /// Pieces of backups that belong to no backup (an upload was interrupted between them).
    pub leftover_pieces: usize,
    by_uuid: HashMap<Uuid, usize>,
}

/// What to pick from a catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Every backup.
    All,
    /// The backup of this snapshot and its send ancestors, or every backup of this source:
    /// the one snapshot or source whose uuid starts so.
    Uuid(UuidPrefix),
}

/// A uuid, or its first hex digits (at least 4; dashes are ignored), as `--uuid` takes it:
/// `1a2b3c4d` stands for the one uuid that starts so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UuidPrefix(String);

impl UuidPrefix {
    /// Whether `uuid` starts with this prefix.
    #[must_use]
    pub fn matches(&self, uuid: Uuid) -> bool {
        uuid.simple().to_string().starts_with(&self.0)
    }
}

impl From<Uuid> for UuidPrefix {
    fn from(uuid: Uuid) -> UuidPrefix {
        UuidPrefix(uuid.simple().to_string())
    }
}

impl std::str::FromStr for UuidPrefix {
    type Err = String;

    fn from_str(text: &str) -> Result<UuidPrefix, String> {
        let hex: String = text.chars().filter(|c| *c != '-').collect();
        if hex.len() < 4 || hex.len() > 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!(
                "{text:?} is not a uuid or the start of one (at least 4 hex digits)"
            ));
        }
        Ok(UuidPrefix(hex.to_ascii_lowercase()))
    }
}

impl std::fmt::Display for UuidPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A selection that cannot be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SelectError {
    /// The uuid is neither a backup's nor a source's.
    Unknown {
        /// The remote.
        remote: String,
        /// The uuid (or start of one) asked for.
        uuid: UuidPrefix,
    },
    /// Several snapshots or sources have uuids that start so.
    Ambiguous {
        /// The remote.
        remote: String,
        /// The start of a uuid asked for.
        uuid: UuidPrefix,
        /// The uuids that start so.
        candidates: Vec<Uuid>,
    },
    /// Some backups need a send parent that is not in the remote.
    Broken {
        /// The remote.
        remote: String,
        /// Where the chains break.
        chains: Vec<BrokenLink>,
    },
}

/// A backup whose send parent is not in the remote.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct BrokenLink {
    /// The backup's key.
    pub key: String,
    /// The missing send parent.
    pub send_parent: Uuid,
}

impl std::fmt::Display for SelectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SelectError::Unknown { remote, uuid } => write!(
                f,
                "remote {remote} has no backup of a snapshot or source with uuid {uuid} (see `btrfs2s3 list`)"
            ),
            SelectError::Ambiguous {
                remote,
                uuid,
                candidates,
            } => {
                let shown: Vec<String> = candidates.iter().map(Uuid::to_string).collect();
                write!(
                    f,
                    "in remote {remote}, several uuids start with {uuid}: {}; give more digits",
                    shown.join(", ")
                )
            }
            SelectError::Broken { remote, chains } => {
                write!(f, "in remote {remote}, backup chains are broken: ")?;
                let described: Vec<String> = chains
                    .iter()
                    .map(|link| {
                        format!(
                            "{} needs send parent {}, which is not in the remote",
                            link.key, link.send_parent
                        )
                    })
                    .collect();
                f.write_str(&described.join("; "))
            }
        }
    }
}

impl std::error::Error for SelectError {}

/// One backup, for output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackupView {
    /// The object key.
    pub key: String,
    /// The snapshot's uuid (what `--uuid` takes).
    pub uuid: Uuid,
    /// The snapshot it was sent against.
    pub send_parent: Option<Uuid>,
    /// The snapshot's ctime in the configured time zone.
    pub ctime: String,
    /// The snapshot's ctransid.
    pub ctransid: i64,
    /// The object's size.
    pub size: u64,
    /// The storage class, when the server says.
    pub storage_class: Option<String>,
    /// Depth in the tree: 0 for a full backup.
    pub depth: usize,
    /// Its send parent is not in the remote: it cannot be restored.
    pub broken: bool,
}

/// The backups of one source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceView {
    /// The source's uuid (the snapshots' parent uuid).
    pub uuid: Uuid,
    /// Its name, from the keys.
    pub name: String,
    /// Its backups in tree order: each full backup followed by its descendants.
    pub backups: Vec<BackupView>,
}

/// A remote, for output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CatalogView {
    /// The remote's id.
    pub remote: String,
    /// Its bucket.
    pub bucket: String,
    /// How many objects are not backups.
    pub foreign_objects: usize,
    /// The keys of backups stored as several objects of which some are missing.
    pub broken_pieces: Vec<String>,
    /// How many pieces of backups belong to no backup.
    pub leftover_pieces: usize,
    /// The sources, by name.
    pub sources: Vec<SourceView>,
}

/// Connects to remote `id` and reads its catalog (one paged listing).
pub async fn read(id: &str, config: &RemoteConfig) -> Result<(Remote, Catalog), ReadError> {
    let error = |source| ReadError {
        remote: id.to_owned(),
        source: Box::new(source),
    };
    let remote = Remote::connect(config).await.map_err(error)?;
    let listing = remote.list().await.map_err(error)?;
    let backups = listing.backups.into_iter().map(BackupState::from).collect();
    let mut catalog = Catalog::new(
        id.to_owned(),
        remote.bucket().to_owned(),
        backups,
        listing.foreign.len(),
    );
    catalog.broken_pieces = listing.broken.into_iter().map(BackupState::from).collect();
    catalog.leftover_pieces = listing.leftovers.len();
    Ok((remote, catalog))
}

/// A remote could not be read.
#[derive(Debug)]
pub struct ReadError {
    /// The remote's id.
    pub remote: String,
    /// Why.
    pub source: Box<btrfs2s3_s3::Error>,
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot read remote {}", self.remote)
    }
}

impl std::error::Error for ReadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.source.as_ref())
    }
}

impl Catalog {
    /// A catalog of these backups.
    #[must_use]
    pub fn new(
        remote: String,
        bucket: String,
        mut backups: Vec<BackupState>,
        foreign_objects: usize,
    ) -> Catalog {
        backups.sort_by(|a, b| a.key.cmp(&b.key));
        let mut seen = BTreeSet::new();
        backups.retain(|backup| seen.insert(backup.meta.uuid));
        backups.sort_by_key(|backup| (backup.meta.ctransid, backup.meta.ctime, backup.meta.uuid));
        let by_uuid = backups
            .iter()
            .enumerate()
            .map(|(i, b)| (b.meta.uuid, i))
            .collect();
        Catalog {
            remote,
            bucket,
            backups,
            foreign_objects,
            broken_pieces: Vec::new(),
            leftover_pieces: 0,
            by_uuid,
        }
    }

    /// The backup of this snapshot.
    #[must_use]
    pub fn get(&self, uuid: Uuid) -> Option<&BackupState> {
        self.by_uuid.get(&uuid).map(|i| &self.backups[*i])
    }

    /// Every backup, oldest first.
    #[must_use]
    pub fn backups(&self) -> &[BackupState] {
        &self.backups
    }

    /// Every backup whose send parent is not in the remote.
    #[must_use]
    pub fn broken_chains(&self) -> Vec<&BackupState> {
        self.backups
            .iter()
            .filter(|b| {
                b.meta
                    .send_parent_uuid
                    .is_some_and(|parent| !self.by_uuid.contains_key(&parent))
            })
            .collect()
    }

    /// The backups of `selection` and all their send ancestors, parents before children.
    pub fn select(&self, selection: &Selection) -> Result<Vec<&BackupState>, SelectError> {
        let wanted: Vec<&BackupState> = match selection {
            Selection::All => self.backups.iter().collect(),
            Selection::Uuid(prefix) => {
                let uuid = self.resolve(prefix)?;
                if let Some(backup) = self.get(uuid) {
                    vec![backup]
                } else {
                    let of_source: Vec<&BackupState> = self
                        .backups
                        .iter()
                        .filter(|b| b.meta.parent_uuid == uuid)
                        .collect();
                    of_source
                }
            }
        };
        let mut selected: BTreeSet<Uuid> = BTreeSet::new();
        let mut broken = Vec::new();
        for backup in wanted {
            let mut current = backup;
            while selected.insert(current.meta.uuid) {
                let Some(parent) = current.meta.send_parent_uuid else {
                    break;
                };
                if let Some(parent_backup) = self.get(parent) {
                    current = parent_backup;
                } else {
                    broken.push(BrokenLink {
                        key: current.key.to_string(),
                        send_parent: parent,
                    });
                    break;
                }
            }
        }
        if !broken.is_empty() {
            broken.sort();
            broken.dedup();
            return Err(SelectError::Broken {
                remote: self.remote.clone(),
                chains: broken,
            });
        }
        let mut ordered: Vec<&BackupState> = self
            .backups
            .iter()
            .filter(|b| selected.contains(&b.meta.uuid))
            .collect();
        ordered.sort_by_key(|b| (self.depth(b), b.meta.ctransid, b.meta.uuid));
        Ok(ordered)
    }

    /// Whether every send ancestor of `backup` is in the remote (it can be restored).
    #[must_use]
    pub fn chain_is_complete(&self, backup: &BackupState) -> bool {
        let mut current = backup;
        let mut seen = BTreeSet::new();
        while let Some(parent) = current.meta.send_parent_uuid {
            // Missing, or a cycle (keys can say anything).
            match self.get(parent) {
                Some(parent) if seen.insert(parent.meta.uuid) => current = parent,
                _ => return false,
            }
        }
        true
    }

    /// The one snapshot or source uuid of the catalog that starts with `prefix`.
    fn resolve(&self, prefix: &UuidPrefix) -> Result<Uuid, SelectError> {
        let candidates: BTreeSet<Uuid> = self
            .backups
            .iter()
            .flat_map(|b| [b.meta.uuid, b.meta.parent_uuid])
            .filter(|uuid| prefix.matches(*uuid))
            .collect();
        let mut candidates = candidates.into_iter();
        match (candidates.next(), candidates.len()) {
            (None, _) => Err(SelectError::Unknown {
                remote: self.remote.clone(),
                uuid: prefix.clone(),
            }),
            (Some(uuid), 0) => Ok(uuid),
            (Some(first), _) => Err(SelectError::Ambiguous {
                remote: self.remote.clone(),
                uuid: prefix.clone(),
                candidates: std::iter::once(first).chain(candidates).collect(),
            }),
        }
    }

    /// How many send ancestors a backup has in the remote (0 for a full backup).
    #[must_use]
    pub fn depth(&self, backup: &BackupState) -> usize {
        let mut depth = 0;
        let mut current = backup;
        let mut seen = BTreeSet::new();
        while let Some(parent) = current.meta.send_parent_uuid.and_then(|p| self.get(p)) {
            if !seen.insert(parent.meta.uuid) {
                break; // a cycle cannot come from btrfs2s3, but keys can say anything
            }
            depth += 1;
            current = parent;
        }
        depth
    }

    /// The catalog as trees per source, for `list`.
    #[must_use]
    pub fn view(&self, tz: &TimeZone) -> CatalogView {
        let mut sources: BTreeMap<Uuid, Vec<&BackupState>> = BTreeMap::new();
        for backup in &self.backups {
            sources
                .entry(backup.meta.parent_uuid)
                .or_default()
                .push(backup);
        }
        let mut views: Vec<SourceView> = sources
            .into_iter()
            .map(|(uuid, backups)| {
                let name = backups
                    .first()
                    .map_or("", |b| BackupMeta::base_name(&b.key))
                    .to_owned();
                SourceView {
                    uuid,
                    name,
                    backups: self.tree(&backups, tz),
                }
            })
            .collect();
        views.sort_by(|a, b| (&a.name, a.uuid).cmp(&(&b.name, b.uuid)));
        CatalogView {
            remote: self.remote.clone(),
            bucket: self.bucket.clone(),
            foreign_objects: self.foreign_objects,
            broken_pieces: self
                .broken_pieces
                .iter()
                .map(|backup| backup.key.to_string())
                .collect(),
            leftover_pieces: self.leftover_pieces,
            sources: views,
        }
    }

    /// Backups in depth-first tree order, oldest first at each level.
    fn tree(&self, backups: &[&BackupState], tz: &TimeZone) -> Vec<BackupView> {
        crate::tree::depth_first(backups)
            .into_iter()
            .map(|(backup, depth)| BackupView {
                key: backup.key.to_string(),
                uuid: backup.meta.uuid,
                send_parent: backup.meta.send_parent_uuid,
                ctime: format_ctime(backup.meta.ctime, tz),
                ctransid: backup.meta.ctransid,
                size: backup.size,
                storage_class: backup.storage_class.clone(),
                depth,
                broken: backup
                    .meta
                    .send_parent_uuid
                    .is_some_and(|parent| !self.by_uuid.contains_key(&parent)),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::Timestamp;

    /// A backup of snapshot `n` of source `source`, sent against `parent`.
    fn backup(source: u128, n: u128, parent: Option<u128>) -> BackupState {
        let meta = BackupMeta {
            uuid: Uuid::from_u128(n),
            parent_uuid: Uuid::from_u128(source),
            send_parent_uuid: parent.map(Uuid::from_u128),
            ctransid: i64::try_from(n).unwrap() * 10,
            ctime: Timestamp::from_second(1_800_000_000 + i64::try_from(n).unwrap()).unwrap(),
        };
        BackupState {
            key: meta
                .key(
                    if source == 1000 { "home" } else { "media" },
                    &TimeZone::UTC,
                )
                .into(),
            meta,
            size: 10,
            storage_class: None,
            retention: None,
            pieces: Vec::new(),
        }
    }

    fn by(n: u128) -> Selection {
        Selection::Uuid(UuidPrefix::from(Uuid::from_u128(n)))
    }

    #[test]
    fn a_unique_start_of_a_uuid_selects_and_an_ambiguous_one_says_so() {
        let catalog = sample();
        // Snapshot 3 is 00000000-0000-0000-0000-000000000003.
        let three: UuidPrefix = "00000000000000000000000000000003".parse().unwrap();
        assert_eq!(
            uuids(&catalog.select(&Selection::Uuid(three)).unwrap()),
            [1, 2, 3]
        );
        // A short start that only one uuid has.
        let mut other = backup(1000, 1, None);
        other.meta.uuid = Uuid::from_u128(0xabcd_ef01 << 96);
        let single = Catalog::new("r".to_owned(), "b".to_owned(), vec![other], 0);
        assert_eq!(
            single
                .select(&Selection::Uuid("ABCDef".parse().unwrap()))
                .unwrap()
                .len(),
            1
        );
        let dashed: UuidPrefix = "00000000-0000-0000-0000-000000000003".parse().unwrap();
        assert_eq!(dashed, "00000000000000000000000000000003".parse().unwrap());
        let error = catalog
            .select(&Selection::Uuid("0000".parse().unwrap()))
            .unwrap_err();
        assert!(
            matches!(&error, SelectError::Ambiguous { candidates, .. } if candidates.len() == 8),
            "{error}"
        );
        assert!(error.to_string().contains("give more digits"), "{error}");
        for bad in ["abc", "xyz12345", &"0".repeat(33)] {
            assert!(bad.parse::<UuidPrefix>().is_err(), "{bad}");
        }
    }

    fn catalog(backups: Vec<BackupState>) -> Catalog {
        Catalog::new("r".to_owned(), "b".to_owned(), backups, 0)
    }

    fn uuids(selected: &[&BackupState]) -> Vec<u128> {
        selected.iter().map(|b| b.meta.uuid.as_u128()).collect()
    }

    /// home: 1 (full) ← 2 ← 3, 1 ← 4; media: 7 (full) ← 8.
    fn sample() -> Catalog {
        catalog(vec![
            backup(1000, 4, Some(1)),
            backup(1000, 3, Some(2)),
            backup(1000, 1, None),
            backup(1000, 2, Some(1)),
            backup(2000, 8, Some(7)),
            backup(2000, 7, None),
        ])
    }

    #[test]
    fn a_backup_brings_its_ancestors_root_first() {
        let catalog = sample();
        assert_eq!(uuids(&catalog.select(&by(3)).unwrap()), [1, 2, 3]);
        assert_eq!(uuids(&catalog.select(&by(4)).unwrap()), [1, 4]);
        assert_eq!(uuids(&catalog.select(&by(7)).unwrap()), [7]);
    }

    #[test]
    fn a_source_uuid_selects_all_its_backups() {
        let catalog = sample();
        assert_eq!(uuids(&catalog.select(&by(2000)).unwrap()), [7, 8]);
        assert_eq!(uuids(&catalog.select(&by(1000)).unwrap()), [1, 2, 4, 3]);
        let all = catalog.select(&Selection::All).unwrap();
        assert_eq!(
            uuids(&all),
            [1, 7, 2, 4, 8, 3],
            "every parent before its children"
        );
    }

    #[test]
    fn unknown_uuids_and_broken_chains_are_errors() {
        let catalog = sample();
        let error = catalog.select(&by(99)).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("no backup of a snapshot or source with uuid"),
            "{error}"
        );
        let broken = catalog_with_gap();
        let error = broken.select(&by(3)).unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains(&Uuid::from_u128(2).to_string()),
            "names the missing parent: {message}"
        );
        assert!(
            message.contains(&*backup(1000, 3, Some(2)).key),
            "names the backup: {message}"
        );
        assert_eq!(broken.broken_chains().len(), 1);
        // What does not need the missing backup is still selectable.
        assert_eq!(uuids(&broken.select(&by(1)).unwrap()), [1]);
    }

    fn catalog_with_gap() -> Catalog {
        catalog(vec![backup(1000, 1, None), backup(1000, 3, Some(2))])
    }

    #[test]
    fn the_view_is_a_tree_per_source() {
        let view = sample().view(&TimeZone::UTC);
        let names: Vec<&str> = view.sources.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["home", "media"]);
        let home: Vec<(u128, usize)> = view.sources[0]
            .backups
            .iter()
            .map(|b| (b.uuid.as_u128(), b.depth))
            .collect();
        assert_eq!(home, [(1, 0), (2, 1), (3, 2), (4, 1)]);
        let gap = catalog_with_gap().view(&TimeZone::UTC);
        assert!(
            gap.sources[0]
                .backups
                .iter()
                .any(|b| b.broken && b.uuid.as_u128() == 3)
        );
    }

    #[test]
    fn duplicate_keys_of_one_snapshot_count_once() {
        let mut copy = backup(1000, 1, None);
        copy.key = format!("{}.copy", copy.key).into();
        let catalog = catalog(vec![backup(1000, 1, None), copy]);
        assert_eq!(catalog.backups().len(), 1);
    }
}
