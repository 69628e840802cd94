//! The listings of remotes kept between the runs of one process (a daemon), so that a run
//! does not list a bucket again: a run's own uploads, deletes, lock extensions and aborts are
//! folded into what it listed, which then is what a new listing would say — as long as
//! nobody else changed the bucket. A failed action on a remote forgets that remote's
//! listing (the next run lists it again); so does anything the caller decides may have
//! changed a bucket behind its back (another run, a config reload, time).

use std::collections::BTreeMap;

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
            let backup = BackupState {
                key: spec.key.clone(),
                meta,
                size,
                storage_class: spec.options.storage_class.clone(),
                retention: spec.options.object_lock,
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
