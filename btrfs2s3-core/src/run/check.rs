//! `check`: before the first backup and after changing anything, everything a run needs,
//! one line per check — each source and snapshot directory (a subvolume root? the same
//! filesystem? writable? safe for root?), the programs of `pipe_through`, and each remote
//! (reachable, credentials, bucket, may list, may put and delete a probe object, versioning
//! and Object Lock, clock). It takes no snapshot and leaves nothing behind.

use btrfs2s3_btrfs::{SnapshotDir, Subvolume};
use btrfs2s3_s3::{Remote, Versioning, probe_key};
use jiff::Timestamp;
use serde::Serialize;

use crate::cancel::Cancel;
use crate::config::{Config, SourceConfig};
use crate::text::{escape, escape_os};

/// The result of one check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckLine {
    /// What was checked: `source /mnt/pool/home`, `remote aws`.
    pub subject: String,
    /// Whether it passed.
    pub ok: bool,
    /// What was found, and what to do about a problem.
    pub text: String,
}

impl CheckLine {
    fn ok(subject: &str, text: String) -> CheckLine {
        CheckLine {
            subject: subject.to_owned(),
            ok: true,
            text,
        }
    }

    fn problem(subject: &str, text: String) -> CheckLine {
        CheckLine {
            subject: subject.to_owned(),
            ok: false,
            text,
        }
    }
}

/// Checks everything `config` needs; tells `ui` each line as it is found. Returns whether all
/// passed.
pub async fn check(config: &Config, ui: &impl Fn(&CheckLine), cancel: &Cancel) -> bool {
    let mut all_ok = true;
    let mut tell = |line: CheckLine| {
        all_ok &= line.ok;
        ui(&line);
    };
    for source in &config.sources {
        let checked = source.clone();
        let lines = tokio::task::spawn_blocking(move || check_source(&checked))
            .await
            .unwrap_or_else(|error| {
                vec![CheckLine::problem(
                    "source",
                    format!("a worker thread failed: {error}"),
                )]
            });
        for line in lines {
            tell(line);
        }
    }
    for remote in &config.remotes {
        if cancel.is_cancelled() {
            break;
        }
        let used = config.sources.iter().any(|source| {
            source
                .upload_to_remotes
                .iter()
                .any(|upload| upload.remote_id == remote.id)
        });
        if !used {
            tell(CheckLine::ok(
                &format!("remote {}", remote.id),
                "no source uploads to it: not checked".to_owned(),
            ));
            continue;
        }
        for line in check_remote(remote, cancel).await {
            tell(line);
        }
    }
    all_ok
}

/// The source, its snapshot directory, and the programs of its uploads.
fn check_source(source: &SourceConfig) -> Vec<CheckLine> {
    let subject = format!("source {}", escape_os(source.path.as_os_str()));
    let mut lines = Vec::new();
    let subvolume = match Subvolume::open(&source.path) {
        Ok(subvolume) => {
            lines.push(CheckLine::ok(
                &subject,
                format!("a btrfs subvolume (uuid {})", subvolume.info().uuid),
            ));
            Some(subvolume)
        }
        Err(error) => {
            lines.push(CheckLine::problem(
                &subject,
                format!(
                    "{}; path: must be the root of a btrfs subvolume",
                    crate::error_chain(&error)
                ),
            ));
            None
        }
    };
    let dir_subject = format!("snapshots {}", escape_os(source.snapshots.as_os_str()));
    match SnapshotDir::open(&source.snapshots) {
        Ok(dir) => {
            let mut problems = Vec::new();
            if let Some(subvolume) = &subvolume
                && let Err(error) = dir.check_same_filesystem(subvolume)
            {
                problems.push(crate::error_chain(&error));
            }
            if let Err(errno) =
                nix::unistd::access(&source.snapshots, nix::unistd::AccessFlags::W_OK)
            {
                problems.push(format!("not writable: {}", errno.desc()));
            }
            if let Err(error) = crate::real::trusted_snapshot_directory(&source.snapshots) {
                problems.push(crate::error_chain(&error));
            }
            lines.push(if problems.is_empty() {
                CheckLine::ok(
                    &dir_subject,
                    "a directory on the same btrfs filesystem, writable, and only root (or this user) can change it".to_owned(),
                )
            } else {
                CheckLine::problem(&dir_subject, problems.join("; "))
            });
        }
        Err(error) => lines.push(CheckLine::problem(
            &dir_subject,
            format!(
                "{}; snapshots: must be a directory on the source's btrfs filesystem",
                crate::error_chain(&error)
            ),
        )),
    }
    for upload in &source.upload_to_remotes {
        if let Some(pipeline) = upload.pipeline_shown() {
            lines.push(CheckLine::ok(
                &format!("pipe_through to {}", upload.remote_id),
                format!("runs {}", escape(&pipeline)),
            ));
        }
    }
    lines
}

/// The remote: reachable, listable, writable, its versioning, Object Lock and clock.
async fn check_remote(remote: &crate::config::Remote, cancel: &Cancel) -> Vec<CheckLine> {
    let subject = format!("remote {}", remote.id);
    let mut lines = Vec::new();
    let client = match Remote::connect(&remote.s3).await {
        Ok(client) => client.with_cancellation(cancel.token().clone()),
        Err(error) => {
            lines.push(CheckLine::problem(&subject, crate::error_chain(&error)));
            return lines;
        }
    };
    let endpoint = remote
        .s3
        .endpoint_url
        .clone()
        .unwrap_or_else(|| "AWS".to_owned());
    match client.first_page().await {
        Ok(page) => {
            let more = if page.truncated { " or more" } else { "" };
            lines.push(CheckLine::ok(
                &subject,
                format!(
                    "bucket {} at {endpoint}: reachable, the credentials work, may list ({}{more} object(s))",
                    remote.s3.bucket, page.objects
                ),
            ));
            lines.push(clock_line(&subject, page.server_time));
        }
        Err(error) => {
            lines.push(CheckLine::problem(&subject, crate::error_chain(&error)));
            return lines;
        }
    }
    let lock = client.lock_configuration().await;
    let versioning = client.versioning().await;
    let versions = match &versioning {
        Ok(Versioning::Off) => "versioning off".to_owned(),
        Ok(Versioning::Enabled) => "versioning enabled (a delete removes every version)".to_owned(),
        Ok(Versioning::Suspended) => {
            "versioning suspended (a delete removes every version)".to_owned()
        }
        Err(error) => {
            lines.push(CheckLine::problem(&subject, crate::error_chain(error)));
            "versioning unknown".to_owned()
        }
    };
    let lock = match lock {
        Ok(lock) => lock,
        Err(error) => {
            lines.push(CheckLine::problem(&subject, crate::error_chain(&error)));
            // A probe object in a bucket whose default retention is unknown could be locked
            // for good: no probe.
            lines.push(CheckLine::ok(
                &subject,
                format!("{versions}; may put and delete: not probed (the Object Lock configuration is unknown)"),
            ));
            return lines;
        }
    };
    let lock_text = match (&lock.enabled, &lock.default_retention) {
        (false, _) => "Object Lock off".to_owned(),
        (true, None) => "Object Lock enabled, no default retention".to_owned(),
        (true, Some(retention)) => format!("Object Lock enabled, default retention {retention}"),
    };
    let text = format!("{lock_text}; {versions}");
    lines.push(match (remote.object_lock.is_some(), lock.enabled) {
        (true, false) => CheckLine::problem(
            &subject,
            format!("{text}; the config sets object_lock: create a bucket with Object Lock enabled, or remove object_lock"),
        ),
        _ => CheckLine::ok(&subject, text),
    });
    if lock.default_retention.is_some() {
        lines.push(CheckLine::ok(
            &subject,
            "may put and delete: not probed (the bucket's default retention would lock a probe object for good)".to_owned(),
        ));
        return lines;
    }
    let versioned = !matches!(versioning, Ok(Versioning::Off));
    lines.push(probe(&client, &subject, versioned).await);
    lines
}

/// How far this machine's clock is from the server's.
fn clock_line(subject: &str, server: Option<Timestamp>) -> CheckLine {
    let Some(server) = server else {
        return CheckLine::ok(
            subject,
            "the server does not say its time (no Date header)".to_owned(),
        );
    };
    let skew = (Timestamp::now().as_second() - server.as_second()).abs();
    if skew > crate::real::MAX_CLOCK_SKEW_SECONDS {
        CheckLine::problem(
            subject,
            format!(
                "this machine's clock is {skew} s off the server's; set it right (NTP): requests fail and object locks come out wrong"
            ),
        )
    } else {
        CheckLine::ok(subject, format!("clocks agree (within {skew} s)"))
    }
}

/// Puts a probe object and deletes it (every version of it).
async fn probe(client: &Remote, subject: &str, versioned: bool) -> CheckLine {
    let id = format!(
        "{}-{}",
        std::process::id(),
        Timestamp::now().as_nanosecond()
    );
    let key = probe_key(&id);
    if let Err(error) = client.put_probe(&key).await {
        return CheckLine::problem(subject, crate::error_chain(&error));
    }
    let deleted = if versioned {
        client.delete_all_versions(&[key.as_str()]).await
    } else {
        client.delete(&[key.as_str()]).await
    };
    match deleted {
        Ok(()) => CheckLine::ok(
            subject,
            "may put and delete objects (a probe object was put and deleted)".to_owned(),
        ),
        Err(error) => CheckLine::problem(
            subject,
            format!(
                "put the probe object {key}, but cannot delete it: {}; delete it by hand",
                crate::error_chain(&error)
            ),
        ),
    }
}
