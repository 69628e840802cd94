//! The listings of remotes kept between the runs of one process (a daemon), so that a run
//! does not list a bucket again: a run's own uploads, deletes, lock extensions and aborts are
//! folded into what it listed, which then is what a new listing would say — as long as
//! nobody else changed the bucket. A failed action on a remote forgets that remote's
//! listing (the next run lists it again); so does anything the caller decides may have
//! changed a bucket behind its back (another run, a config reload, time).

use std::collections::BTreeMap;
use std::sync::Arc;

use btrfs2s3_s3::BackupMeta;
use jiff::Timestamp;

use crate::execute::{ActionResult, Outcome};
use crate::plan::{Action, BackupState, RemoteState};

/// One remote as last listed, and what runs did to it since.
#[derive(Debug, Clone)]
struct Cached {
    state: RemoteState,
    /// Whether the bucket keeps versions, once a run asked.
    versioned: Option<bool>,
    /// When it was listed.
    listed_at: Timestamp,
}

/// The remembered listings, by remote id.
#[derive(Debug, Clone, Default)]
pub struct ListingCache {
    remotes: BTreeMap<String, Cached>,
}

impl ListingCache {
    /// A cache that knows no remote: the next run lists every remote it uses.
    #[must_use]
    pub fn new() -> ListingCache {
        ListingCache::default()
    }

    /// Remote `id` as a new listing would find it, and whether its bucket is versioned (when
    /// known); `None` when it must be listed.
    #[must_use]
    pub fn get(&self, id: &str) -> Option<(&RemoteState, Option<bool>)> {
        self.remotes
            .get(id)
            .map(|cached| (&cached.state, cached.versioned))
    }

    /// Remembers remote `state`, listed at `listed_at`. Its backups are kept in key order
    /// (the order S3 lists keys in).
    pub fn store(&mut self, mut state: RemoteState, versioned: Option<bool>, listed_at: Timestamp) {
        state.backups.sort_by(|a, b| a.key.cmp(&b.key));
        self.remotes.insert(
            state.id.clone(),
            Cached {
                state,
                versioned,
                listed_at,
            },
        );
    }

    /// Remembers whether remote `id`'s bucket is versioned.
    pub fn set_versioned(&mut self, id: &str, versioned: bool) {
        if let Some(cached) = self.remotes.get_mut(id) {
            cached.versioned = Some(versioned);
        }
    }

    /// Forgets every listing.
    pub fn clear(&mut self) {
        self.remotes.clear();
    }

    /// Forgets the listing of remote `id`.
    pub fn forget(&mut self, id: &str) {
        self.remotes.remove(id);
    }

    /// When the oldest remembered listing was made; `None` when nothing is remembered.
    #[must_use]
    pub fn oldest_listing(&self) -> Option<Timestamp> {
        self.remotes.values().map(|cached| cached.listed_at).min()
    }

    /// The remembered remotes.
    pub fn remotes(&self) -> impl Iterator<Item = &RemoteState> {
        self.remotes.values().map(|cached| &cached.state)
    }

    /// Folds what a run did into the listings: every action done changes the remote as it
    /// changed the bucket; an action on a remote that failed forgets that remote, whose
    /// bucket may now hold anything between before and after (a part of a delete batch, a
    /// multipart upload whose abort failed).
    pub fn record(&mut self, outcome: &Outcome) {
        for done in &outcome.results {
            let Some(remote) = remote_of(&done.action) else {
                continue;
            };
            match &done.result {
                ActionResult::Skipped { .. } => {}
                ActionResult::Failed { .. } => self.forget(remote),
                ActionResult::Done { bytes } => {
                    let Some(cached) = self.remotes.get_mut(remote) else {
                        continue;
                    };
                    if !apply(&mut cached.state, &done.action, *bytes) {
                        self.forget(remote);
                    }
                }
            }
        }
    }
}

/// The remote an action acts on, if it acts on one.
fn remote_of(action: &Action) -> Option<&str> {
    match action {
        Action::AbortUpload(abort) => Some(&abort.remote),
        Action::Upload(upload) => Some(&upload.spec.remote),
        Action::ExtendLock(extend) => Some(&extend.remote),
        Action::Delete(delete) => Some(&delete.remote),
        Action::CreateSnapshot(_) | Action::Rename(_) | Action::Destroy(_) => None,
    }
}

/// Applies an action that was done to a remote's state; false if the state cannot follow
/// (then it must be listed again).
fn apply(state: &mut RemoteState, action: &Action, bytes: Option<u64>) -> bool {
    let position = |state: &RemoteState, key: &str| {
        state
            .backups
            .binary_search_by(|backup| (*backup.key).cmp(key))
    };
    match action {
        Action::Upload(upload) => {
            let spec = &upload.spec;
            let (Ok(meta), Some(size)) = (BackupMeta::parse_key(&spec.key), bytes) else {
                return false;
            };
            // A stream of `size` bytes is cut into pieces of `max_object_size`, the last one
            // shorter: its pieces after the first are as many as whole pieces fit.
            let pieces: Vec<Arc<str>> = (1..=size / state.max_object_size)
                .filter_map(|piece| btrfs2s3_s3::piece_key(&spec.key, u32::try_from(piece).ok()?))
                .map(Arc::from)
                .collect();
            // The upload replaced what an interrupted one left under this key.
            state.broken.retain(|broken| broken.key != spec.key);
            state.leftovers.retain(|key| {
                btrfs2s3_s3::first_piece_key(key).as_deref() != Some(&*spec.key)
                    || !pieces.contains(key)
            });
            let backup = BackupState {
                key: spec.key.clone(),
                meta,
                size,
                storage_class: spec.options.storage_class.clone(),
                retention: spec.options.object_lock,
                pieces,
            };
            // Keys are listed in order; an upload to an existing key replaces its object.
            match position(state, &spec.key) {
                Ok(at) => state.backups[at] = backup,
                Err(at) => state.backups.insert(at, backup),
            }
        }
        Action::Delete(delete) => {
            if let Ok(at) = position(state, &delete.key) {
                state.backups.remove(at);
            }
            state.broken.retain(|broken| broken.key != delete.key);
            state.leftovers.retain(|key| !delete.pieces.contains(key));
        }
        Action::ExtendLock(extend) => {
            if let Ok(at) = position(state, &extend.key) {
                state.backups[at].retention = Some(extend.lock);
            }
        }
        Action::AbortUpload(abort) => state
            .pending_uploads
            .retain(|pending| pending.upload_id != abort.upload_id || pending.key != abort.key),
        Action::CreateSnapshot(_) | Action::Rename(_) | Action::Destroy(_) => {}
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeWorld;

    /// The keys of the pieces after the first of `key`.
    fn pieces(key: &str, numbers: &[u32]) -> Vec<Arc<str>> {
        numbers
            .iter()
            .map(|&n| btrfs2s3_s3::piece_key(key, n).unwrap().into())
            .collect()
    }

    #[test]
    fn an_upload_in_pieces_is_cached_as_a_listing_would_show_it() {
        let mut world = FakeWorld::new("UTC", "2026-03-08T12:00:00Z");
        world.add_source("home", 1, &[("aws", "1y")]);
        world.add_snapshot(0, "home.NEW.99", 10, "2026-03-08T11:59:00Z", 500);
        let assessment = world.assessment();
        let plan = crate::plan::plan(&assessment).unwrap();
        let upload = plan.actions.last().unwrap();
        let Action::Upload(spec) = upload else {
            panic!("{upload:?}")
        };
        let key = spec.spec.key.clone();
        let mut state = assessment.remotes[0].clone();
        state.max_object_size = 16;
        // An interrupted upload of the same backup left pieces 1 and 3.
        state.leftovers = pieces(&key, &[1, 3]);
        // 40 bytes: pieces of 16, 16 and 8.
        assert!(apply(&mut state, upload, Some(40)));
        assert_eq!(state.backups.len(), 1);
        assert_eq!(state.backups[0].pieces, pieces(&key, &[1, 2]));
        assert_eq!(state.backups[0].size, 40);
        assert_eq!(state.leftovers, pieces(&key, &[3]), "3 is after the last");
        // An exact multiple ends with an empty piece.
        assert!(apply(&mut state, upload, Some(32)));
        assert_eq!(state.backups[0].pieces, pieces(&key, &[1, 2]));
        assert!(apply(&mut state, upload, Some(15)));
        assert!(state.backups[0].pieces.is_empty());
    }
}
