//! Backups stored as several objects ("pieces"), for streams longer than one object may be.
//!
//! A stream longer than `max_object_size` is cut into pieces of exactly that size, the last one
//! shorter (empty when the stream is an exact multiple), stored under the backup's key with
//! `seqn0`, `seqn1`, ... The first piece (`seqn0`, the key the Python tool and every listing
//! know as the backup) carries the piece size in its user metadata and is completed last:
//! while it does not exist, the other pieces are leftovers of an unfinished upload, never a
//! backup. S3 fixes an object's metadata when its upload starts, before the stream's length is
//! known, so the first piece records the piece size rather than the number of pieces; with
//! the rule that the last piece is shorter, the sizes in a listing tell how many there are:
//!
//! - `seqn0` shorter than the piece size: the whole backup is that one object;
//! - `seqn0` exactly the piece size: pieces `seqn1`... follow, each of the piece size, up to
//!   the first shorter one, which is the last.
//!
//! A listing alone cannot tell a whole one-object backup from a first piece whose siblings
//! are all gone (both are a lone `seqn0`), so restores and verifications read the first
//! piece's metadata ([`Remote::download_backup`]) before anything else.

use std::collections::BTreeMap;

use tokio::io::AsyncWrite;

use crate::BackupMeta;
use crate::error::Error;
use crate::remote::{ListedBackup, ListedObject, Remote};

/// The user metadata of a first piece that holds its piece size, in bytes
/// (`x-amz-meta-btrfs2s3-piece-size`).
pub const PIECE_SIZE_METADATA: &str = "btrfs2s3-piece-size";

/// The key of piece `piece` of the backup whose key (that of its first piece) is `key`;
/// `None` for a key that is not a first piece.
///
/// ```
/// use btrfs2s3_s3::piece_key;
///
/// assert_eq!(piece_key("b/home.ctid5.mdvn1.seqn0", 2).as_deref(), Some("b/home.ctid5.mdvn1.seqn2"));
/// assert_eq!(piece_key("notes.txt", 1), None);
/// ```
#[must_use]
pub fn piece_key(key: &str, piece: u32) -> Option<String> {
    let base = key.strip_suffix(".seqn0")?;
    Some(format!("{base}.seqn{piece}"))
}

/// The key of the first piece of the backup that `key`, the key of any piece, belongs to;
/// `None` for a key that does not end with a piece number.
///
/// ```
/// use btrfs2s3_s3::first_piece_key;
///
/// assert_eq!(first_piece_key("home.ctid5.mdvn1.seqn12").as_deref(), Some("home.ctid5.mdvn1.seqn0"));
/// assert_eq!(first_piece_key("home.ctid5"), None);
/// ```
#[must_use]
pub fn first_piece_key(key: &str) -> Option<String> {
    let at = key.rfind(".seqn")?;
    let number = &key[at + 5..];
    (!number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()))
        .then(|| format!("{}.seqn0", &key[..at]))
}

/// What became of the pieces of one listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grouped {
    /// Whole backups (a first piece, and its other pieces when it has them).
    pub backups: Vec<ListedBackup>,
    /// First pieces whose other pieces are not all there: one is missing, or the last one
    /// found is full, so more are missing. Never a backup; the pieces found are in `pieces`.
    pub broken: Vec<ListedBackup>,
    /// Pieces other than the first that belong to no backup: their first piece does not exist
    /// (an upload that was interrupted), or they come after a whole backup's last piece.
    pub leftovers: Vec<ListedObject>,
}

/// Groups the pieces of a listing into backups (see the module documentation). `first`:
/// the first pieces, in key order; `others`: the other pieces with their metadata and piece
/// number, in any order.
#[must_use]
pub fn group(first: Vec<ListedBackup>, others: Vec<(ListedObject, BackupMeta, u32)>) -> Grouped {
    // The other pieces by the key of their first piece, in piece order.
    let mut siblings: BTreeMap<String, BTreeMap<u32, ListedObject>> = BTreeMap::new();
    for (object, _, piece) in others {
        let base = piece_base(&object.key);
        siblings.entry(base).or_default().insert(piece, object);
    }
    let mut grouped = Grouped::default();
    for mut backup in first {
        let Some(found) = siblings.remove(&piece_base(&backup.object.key)) else {
            grouped.backups.push(backup);
            continue;
        };
        let piece_size = backup.object.size;
        let mut whole = false;
        let mut found = found.into_iter().peekable();
        let mut expected = 1;
        while let Some((piece, _)) = found.peek() {
            if *piece != expected {
                break;
            }
            let Some((_, object)) = found.next() else {
                break;
            };
            let last = object.size < piece_size;
            backup.pieces.push(object);
            expected += 1;
            if last {
                whole = true;
                break;
            }
            if object_too_large(&backup.pieces, piece_size) {
                break;
            }
        }
        if whole {
            grouped.leftovers.extend(found.map(|(_, object)| object));
            grouped.backups.push(backup);
        } else {
            backup.pieces.extend(found.map(|(_, object)| object));
            grouped.broken.push(backup);
        }
    }
    grouped
        .leftovers
        .extend(siblings.into_values().flat_map(BTreeMap::into_values));
    grouped
}

/// Whether the last piece of `pieces` is larger than the first: never so in a backup of ours.
fn object_too_large(pieces: &[ListedObject], piece_size: u64) -> bool {
    pieces.last().is_some_and(|piece| piece.size > piece_size)
}

/// The key of the first piece of the backup that `key`, a piece's key, belongs to.
fn piece_base(key: &str) -> String {
    first_piece_key(key).unwrap_or_else(|| key.to_owned())
}

/// Splits a listing's backup objects into first pieces and others.
pub(crate) fn classify(
    key: &str,
    object: ListedObject,
    first: &mut Vec<ListedBackup>,
    others: &mut Vec<(ListedObject, BackupMeta, u32)>,
    foreign: &mut Vec<ListedObject>,
) {
    match BackupMeta::parse_piece(key) {
        // Only keys that end with the piece number are ours (the Python tool's `seqn` can
        // be anywhere in a key, but it only ever writes `seqn0`, and last).
        Ok((meta, 0)) => first.push(ListedBackup {
            object,
            meta,
            pieces: Vec::new(),
        }),
        Ok((meta, piece)) if key.ends_with(&format!(".seqn{piece}")) => {
            others.push((object, meta, piece));
        }
        Ok(_) | Err(_) => foreign.push(object),
    }
}

impl Remote {
    /// Downloads backup `key` into `writer`: its first piece, then `pieces` (the keys of its
    /// other pieces, in order, as [`Listing`](crate::Listing) grouped them), as one stream.
    /// The first piece's metadata decides whether there are others: a backup that needs
    /// pieces that are not given is an error before anything is written, and pieces given to
    /// a backup of one object are not read. `progress` is called with the bytes written so
    /// far. Returns the stream's size.
    pub async fn download_backup<K: AsRef<str> + Sync>(
        &self,
        key: &str,
        pieces: &[K],
        writer: &mut (impl AsyncWrite + Unpin),
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<u64, Error> {
        let head = self.head(key).await?;
        let size = head
            .content_length()
            .and_then(|size| u64::try_from(size).ok());
        let piece_size = head
            .metadata()
            .and_then(|metadata| metadata.get(PIECE_SIZE_METADATA))
            .and_then(|value| value.parse::<u64>().ok());
        let pieces: &[K] = match (piece_size, size) {
            (Some(piece_size), Some(size)) if size == piece_size => {
                if pieces.is_empty() {
                    return Err(Error::MissingPieces {
                        bucket: self.bucket.clone(),
                        key: key.to_owned(),
                        piece_size,
                    });
                }
                pieces
            }
            _ => &[],
        };
        let mut written = self.download(key, writer, progress).await?;
        for piece in pieces {
            let before = written;
            written += self
                .download(piece.as_ref(), writer, &|bytes| progress(before + bytes))
                .await?;
        }
        Ok(written)
    }
}

/// Whether `key` is a backup's key, which can have other pieces.
pub(crate) fn can_have_pieces(key: &str) -> bool {
    key.rsplit('.').next() == Some("seqn0") && BackupMeta::parse_key(key).is_ok()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use uuid::Uuid;

    use super::*;

    fn meta(n: u128) -> BackupMeta {
        BackupMeta {
            uuid: Uuid::from_u128(n),
            parent_uuid: Uuid::from_u128(1000),
            send_parent_uuid: None,
            ctransid: i64::try_from(n).unwrap_or(0),
            ctime: jiff::Timestamp::from_second(1_700_000_000).unwrap_or_default(),
        }
    }

    fn object(key: String, size: u64) -> ListedObject {
        ListedObject {
            key,
            size,
            storage_class: None,
        }
    }

    /// A listing of backup `n` stored with `sizes` (first piece first), minus the pieces in
    /// `missing`.
    fn listing(backups: &[(u128, Vec<u64>, Vec<u32>)]) -> Grouped {
        let mut first = Vec::new();
        let mut others = Vec::new();
        let mut foreign = Vec::new();
        for (n, sizes, missing) in backups {
            let meta = meta(*n);
            for (piece, size) in (0u32..).zip(sizes) {
                if missing.contains(&piece) {
                    continue;
                }
                let key = format!("home{}", meta.piece_suffix(&jiff::tz::TimeZone::UTC, piece));
                classify(
                    &key.clone(),
                    object(key, *size),
                    &mut first,
                    &mut others,
                    &mut foreign,
                );
            }
        }
        assert!(foreign.is_empty());
        first.sort_by(|a, b| a.object.key.cmp(&b.object.key));
        group(first, others)
    }

    fn summary(grouped: &Grouped) -> (Vec<(u128, u64, usize)>, Vec<u128>, usize) {
        (
            grouped
                .backups
                .iter()
                .map(|b| (b.meta.uuid.as_u128(), b.size(), b.pieces.len()))
                .collect(),
            grouped
                .broken
                .iter()
                .map(|b| b.meta.uuid.as_u128())
                .collect(),
            grouped.leftovers.len(),
        )
    }

    #[test]
    fn pieces_group_into_backups_by_their_sizes() {
        type Case = (u128, Vec<u64>, Vec<u32>);
        let cases: &[(&str, Vec<Case>, _)] = &[
            (
                "one object",
                vec![(1, vec![7], vec![])],
                (vec![(1, 7, 0)], vec![], 0),
            ),
            (
                "three pieces",
                vec![(1, vec![16, 16, 3], vec![])],
                (vec![(1, 35, 2)], vec![], 0),
            ),
            (
                "an exact multiple ends with an empty piece",
                vec![(1, vec![16, 16, 0], vec![])],
                (vec![(1, 32, 2)], vec![], 0),
            ),
            (
                "a missing middle piece",
                vec![(1, vec![16, 16, 3], vec![1])],
                (vec![], vec![1], 0),
            ),
            (
                "a missing last piece",
                vec![(1, vec![16, 16, 3], vec![2])],
                (vec![], vec![1], 0),
            ),
            (
                "an interrupted upload: no first piece",
                vec![(1, vec![16, 16, 3], vec![0])],
                (vec![], vec![], 2),
            ),
            (
                "pieces after the last one are left over",
                vec![(1, vec![16, 3, 16, 2], vec![])],
                (vec![(1, 19, 1)], vec![], 2),
            ),
            (
                "a piece larger than the first is not ours",
                vec![(1, vec![16, 20, 3], vec![])],
                (vec![], vec![1], 0),
            ),
            (
                "backups side by side",
                vec![
                    (1, vec![16, 1], vec![]),
                    (2, vec![4], vec![]),
                    (3, vec![16, 16, 2], vec![0]),
                ],
                (vec![(1, 17, 1), (2, 4, 0)], vec![], 2),
            ),
        ];
        for (name, backups, expected) in cases {
            assert_eq!(&summary(&listing(backups)), expected, "{name}");
        }
    }

    #[test]
    fn only_first_piece_keys_can_have_pieces() {
        let key = format!("home{}", meta(1).key_suffix(&jiff::tz::TimeZone::UTC));
        assert!(can_have_pieces(&key));
        assert!(!can_have_pieces(&piece_key(&key, 1).unwrap_or_default()));
        assert!(!can_have_pieces("home.seqn0"), "not a backup key");
    }

    proptest! {
        /// However a stream was cut and whichever pieces were lost, a backup is whole exactly
        /// when every piece is there, and then its size is the stream's.
        #[test]
        fn a_backup_is_whole_exactly_when_no_piece_is_missing(
            piece_size in 1u64..64,
            length in 0u64..400,
            lost in proptest::collection::vec(any::<prop::sample::Index>(), 0..3),
        ) {
            let mut sizes = Vec::new();
            let mut rest = length;
            loop {
                let size = rest.min(piece_size);
                sizes.push(size);
                rest -= size;
                if size < piece_size {
                    break;
                }
            }
            let lost: Vec<u32> = lost
                .iter()
                .map(|index| u32::try_from(index.index(sizes.len())).unwrap_or(0))
                .collect();
            let grouped = listing(&[(1, sizes.clone(), lost.clone())]);
            let kept = (0..sizes.len()).filter(|i| !lost.contains(&u32::try_from(*i).unwrap_or(0))).count();
            if lost.is_empty() {
                prop_assert_eq!(summary(&grouped), (vec![(1, length, sizes.len() - 1)], vec![], 0));
            } else if lost.contains(&0) {
                prop_assert_eq!(summary(&grouped), (vec![], vec![], kept));
            } else if kept == 1 {
                // A lone first piece: only its metadata tells that others are missing.
                prop_assert_eq!(summary(&grouped), (vec![(1, piece_size, 0)], vec![], 0));
            } else {
                prop_assert_eq!(summary(&grouped), (vec![], vec![1], 0));
            }
        }
    }
}
