//! Crash points for the crash-consistency tests.
//!
//! `BTRFS2S3_FAILPOINT=<name>:<n>` makes the process kill itself with SIGKILL the n-th time
//! it passes the point `<name>` — no destructors, no cleanup, exactly like a power cut or
//! `kill -9` at that moment. Without the variable, a point costs one atomic load. The points:
//!
//! | name | where |
//! |------|-------|
//! | `snapshot-created` | after a new snapshot was created, before anything else |
//! | `renamed` | after a snapshot was renamed |
//! | `upload-progress` | each time an upload has read more of its stream |
//! | `uploaded` | after an upload completed |
//! | `destroyed` | after a snapshot was destroyed |
//! | `deleting` | just before a batch of backups is deleted |
//! | `piece-uploaded` | after a piece other than the first of a backup stored in pieces was completed |

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// The variable naming the point.
pub const VARIABLE: &str = "BTRFS2S3_FAILPOINT";

struct Armed {
    name: String,
    at: u64,
    hits: Mutex<HashMap<String, u64>>,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let value = std::env::var(VARIABLE).ok()?;
            let (name, at) = value.split_once(':').unwrap_or((&value, "1"));
            Some(Armed {
                name: name.to_owned(),
                at: at.parse().unwrap_or(1),
                hits: Mutex::new(HashMap::new()),
            })
        })
        .as_ref()
}

/// Passes the point `name`: kills the process if it is the armed point's n-th pass.
pub fn hit(name: &str) {
    let Some(armed) = armed() else { return };
    if armed.name != name {
        return;
    }
    let count = {
        let Ok(mut hits) = armed.hits.lock() else {
            return;
        };
        let count = hits.entry(name.to_owned()).or_insert(0);
        *count += 1;
        *count
    };
    if count == armed.at {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}
