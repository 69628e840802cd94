//! Backups in archive storage classes (`GLACIER`, `DEEP_ARCHIVE`) are read only after a
//! restore request made a temporary copy: `restore` and `verify` request one for every object
//! of their selection that needs it, all at once, then wait for them (or leave, and find them
//! readable when run again).

use std::time::Duration;

use btrfs2s3_s3::{Availability, Remote, Restore};

use crate::cancel::Cancel;
use crate::run::ReadError;

/// How fast (and how dear) a restore from an archive class is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreTier {
    /// The cheapest and slowest.
    Bulk,
    /// The default.
    Standard,
    /// Minutes, at a price; `GLACIER` only.
    Expedited,
}

impl RestoreTier {
    /// How long AWS says a restore of this tier takes, for messages.
    #[must_use]
    pub fn typical_wait(self) -> &'static str {
        match self {
            RestoreTier::Bulk => "Bulk retrievals take 5-12 hours (up to 48 from DEEP_ARCHIVE)",
            RestoreTier::Standard => {
                "Standard retrievals take 3-5 hours (up to 12 from DEEP_ARCHIVE)"
            }
            RestoreTier::Expedited => {
                "Expedited retrievals take 1-5 minutes (not available from DEEP_ARCHIVE)"
            }
        }
    }

    fn s3(self) -> btrfs2s3_s3::RestoreTier {
        match self {
            RestoreTier::Bulk => btrfs2s3_s3::RestoreTier::Bulk,
            RestoreTier::Standard => btrfs2s3_s3::RestoreTier::Standard,
            RestoreTier::Expedited => btrfs2s3_s3::RestoreTier::Expedited,
        }
    }
}

/// How to make archived backups readable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveOptions {
    /// How fast (and dear) the restores are.
    pub tier: RestoreTier,
    /// How long a restored copy stays readable, in days.
    pub days: u32,
    /// Wait until every copy is readable; otherwise request them and leave.
    pub wait: bool,
}

impl Default for ArchiveOptions {
    fn default() -> ArchiveOptions {
        ArchiveOptions {
            tier: RestoreTier::Standard,
            days: 7,
            wait: true,
        }
    }
}

/// Where the archived objects of a selection stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ArchiveStatus {
    /// How many objects of the selection are in archive classes.
    pub total: usize,
    /// How many of those can be read now.
    pub readable: usize,
    /// How many restores this command requested.
    pub requested: usize,
}

impl ArchiveStatus {
    /// Whether every archived object can be read.
    #[must_use]
    pub fn is_complete(&self) -> bool {
        self.readable == self.total
    }
}

/// Hears how the archived objects come back.
pub trait ArchiveUi: Sync {
    /// The status after the requests, and after every change while waiting.
    fn archive_status(&self, status: &ArchiveStatus, tier: RestoreTier);
}

/// How long to sleep before the `n`-th look at restores in progress: 10 s, doubling to 10
/// minutes (a Standard restore takes hours; there is no point asking every second).
fn poll_interval(n: u32) -> Duration {
    Duration::from_secs(10u64.saturating_mul(1 << n.min(6)).min(600))
}

/// Makes the archived `objects` readable: a restore is requested for each that needs one,
/// all at once; then, with `options.wait`, waits (a signal ends the wait) until every one
/// can be read. Objects in other classes are not looked at.
pub(crate) async fn make_readable(
    objects: &[(&Remote, &str)],
    options: &ArchiveOptions,
    ui: &impl ArchiveUi,
    cancel: &Cancel,
) -> Result<ArchiveStatus, ReadError> {
    let error = |remote: &Remote, key: &str| {
        let (bucket, key) = (remote.bucket().to_owned(), key.to_owned());
        move |source| ReadError::Archive {
            bucket,
            key,
            source: Box::new(source),
        }
    };
    let mut status = ArchiveStatus {
        total: objects.len(),
        ..ArchiveStatus::default()
    };
    if objects.is_empty() {
        return Ok(status);
    }
    let mut pending = Vec::new();
    for (remote, key) in objects {
        let availability = remote.availability(key).await.map_err(error(remote, key))?;
        if availability.is_readable() {
            status.readable += 1;
            continue;
        }
        if availability == Availability::Archived {
            let restore = remote
                .request_restore(key, options.tier.s3(), options.days)
                .await
                .map_err(error(remote, key))?;
            match restore {
                Restore::NotNeeded => {
                    status.readable += 1;
                    continue;
                }
                Restore::Requested => status.requested += 1,
                Restore::InProgress => {}
            }
        }
        pending.push((*remote, *key));
    }
    ui.archive_status(&status, options.tier);
    let mut looks = 0;
    while options.wait && !pending.is_empty() {
        tokio::select! {
            () = tokio::time::sleep(poll_interval(looks)) => {}
            () = cancel.cancelled() => {
                return Err(ReadError::Interrupted { cause: cancel.cause().unwrap_or("a signal") });
            }
        }
        looks += 1;
        let waiting = pending.len();
        let mut still = Vec::new();
        for (remote, key) in pending {
            if remote
                .availability(key)
                .await
                .map_err(error(remote, key))?
                .is_readable()
            {
                status.readable += 1;
            } else {
                still.push((remote, key));
            }
        }
        if still.len() != waiting {
            ui.archive_status(&status, options.tier);
        }
        pending = still;
    }
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_slow_down_to_ten_minutes() {
        let intervals: Vec<u64> = (0..9).map(|n| poll_interval(n).as_secs()).collect();
        assert_eq!(intervals, [10, 20, 40, 80, 160, 320, 600, 600, 600]);
    }
}
