//! Object lock and versions: what a bucket does with them, the retention of an object,
//! extending it, and deleting every version of an object.

use aws_sdk_s3::types::{
    Delete, EncodingType, ObjectIdentifier, ObjectLockMode, ObjectLockRetention,
    ObjectLockRetentionMode,
};
use jiff::Timestamp;
use snafu::ResultExt;
use tokio::task::JoinSet;

use crate::error::{AttemptCounter, BuildRequestSnafu, DeleteFailure, Error};
use crate::key::decode_key;
use crate::remote::Remote;
use crate::upload::{LockMode, ObjectLock};

/// How many `HeadObject` requests run at once when reading many retentions.
const HEADS_IN_FLIGHT: usize = 16;

/// Error codes of servers that do not do object lock or versioning at all.
pub(crate) fn unsupported(code: Option<&str>) -> bool {
    matches!(
        code,
        Some(
            "ObjectLockConfigurationNotFoundError"
                | "NotImplemented"
                | "NoSuchObjectLockConfiguration"
                | "InvalidRequest"
                | "MethodNotAllowed"
        )
    )
}

impl Remote {
    /// Whether the bucket has Object Lock enabled (one `GetObjectLockConfiguration`). A
    /// server that does not implement object lock has it disabled.
    pub async fn object_lock_enabled(&self) -> Result<bool, Error> {
        Ok(self.lock_configuration().await?.enabled)
    }

    /// Whether the bucket keeps versions (one `GetBucketVersioning`): enabled, or suspended
    /// with old versions possibly left. A server that does not implement versioning does not.
    pub async fn versioned(&self) -> Result<bool, Error> {
        Ok(self.versioning().await? != crate::probe::Versioning::Off)
    }

    /// The retention of `key`'s current version, if it has one (`HeadObject`).
    pub async fn retention(&self, key: &str) -> Result<Option<ObjectLock>, Error> {
        let head = self.head(key).await?;
        let mode = match head.object_lock_mode() {
            Some(ObjectLockMode::Governance) => LockMode::Governance,
            Some(ObjectLockMode::Compliance) => LockMode::Compliance,
            _ => return Ok(None),
        };
        Ok(head
            .object_lock_retain_until_date()
            .and_then(|date| Timestamp::from_second(date.secs()).ok())
            .map(|retain_until| ObjectLock { mode, retain_until }))
    }

    /// The retentions of many objects, in the order of `keys`, a few requests at a time.
    pub async fn retentions<K: AsRef<str>>(
        &self,
        keys: &[K],
    ) -> Result<Vec<Option<ObjectLock>>, Error> {
        let mut found = vec![None; keys.len()];
        let mut tasks = JoinSet::new();
        let mut next = 0;
        while next < keys.len() || !tasks.is_empty() {
            while next < keys.len() && tasks.len() < HEADS_IN_FLIGHT {
                let (remote, key, index) = (self.clone(), keys[next].as_ref().to_owned(), next);
                tasks.spawn(async move { (index, remote.retention(&key).await) });
                next += 1;
            }
            match tasks.join_next().await {
                Some(Ok((index, retention))) => found[index] = retention?,
                Some(Err(error)) if error.is_panic() => {
                    std::panic::resume_unwind(error.into_panic())
                }
                Some(Err(error)) => {
                    return Err(Error::PartStopped {
                        bucket: self.bucket.clone(),
                        key: keys[next.saturating_sub(1)].as_ref().to_owned(),
                        reason: error.to_string(),
                    });
                }
                None => {}
            }
        }
        Ok(found)
    }

    /// Makes `key`'s retention reach `lock` (`PutObjectRetention`), and checks that the
    /// server keeps it. Retentions only grow: asking for an earlier date than the object has
    /// is refused by the server (and never asked by btrfs2s3).
    pub async fn extend_retention(&self, key: &str, lock: ObjectLock) -> Result<(), Error> {
        let counter = AttemptCounter::default();
        self.client
            .put_object_retention()
            .bucket(&self.bucket)
            .key(key)
            .retention(
                ObjectLockRetention::builder()
                    .mode(match lock.mode {
                        LockMode::Governance => ObjectLockRetentionMode::Governance,
                        LockMode::Compliance => ObjectLockRetentionMode::Compliance,
                    })
                    .retain_until_date(crate::upload::date_time(lock.retain_until))
                    .build(),
            )
            .customize()
            .interceptor(counter.clone())
            .send()
            .await
            .map_err(|e| {
                self.request_error("set the object-lock retention", Some(key), &counter, &e)
            })?;
        match self.retention(key).await? {
            Some(kept) if kept.mode == lock.mode && kept.retain_until >= lock.retain_until => {
                Ok(())
            }
            _ => Err(Error::RetentionNotKept {
                bucket: self.bucket.clone(),
                key: key.to_owned(),
            }),
        }
    }

    /// Deletes every version of each of `keys`, delete markers included, by version id: in a
    /// versioned bucket a plain delete leaves a delete marker and keeps the data (and its
    /// bill). Fails naming every version that was not deleted (a locked one, for instance).
    pub async fn delete_all_versions<K: AsRef<str> + Sync>(&self, keys: &[K]) -> Result<(), Error> {
        let mut identifiers = Vec::new();
        for key in keys {
            let key = key.as_ref();
            for version_id in self.versions(key).await? {
                identifiers.push(
                    ObjectIdentifier::builder()
                        .key(key)
                        .version_id(version_id)
                        .build()
                        .context(BuildRequestSnafu {
                            operation: "delete objects",
                            bucket: &self.bucket,
                        })?,
                );
            }
        }
        self.delete_identifiers(identifiers).await
    }

    /// The version ids of exactly `key` (versions and delete markers).
    async fn versions(&self, key: &str) -> Result<Vec<String>, Error> {
        let mut found = Vec::new();
        let (mut key_marker, mut version_marker): (Option<String>, Option<String>) = (None, None);
        loop {
            let counter = AttemptCounter::default();
            let page = self
                .client
                .list_object_versions()
                .bucket(&self.bucket)
                .prefix(key)
                .encoding_type(EncodingType::Url)
                .set_key_marker(key_marker.clone())
                .set_version_id_marker(version_marker.clone())
                .customize()
                .interceptor(counter.clone())
                .send()
                .await
                .map_err(|e| self.request_error("list the versions", Some(key), &counter, &e))?;
            let encoded = page.encoding_type() == Some(&EncodingType::Url);
            let ours = |listed: Option<&str>| listed.is_some_and(|l| decode_key(l, encoded) == key);
            let versions = page
                .versions()
                .iter()
                .filter(|v| ours(v.key()))
                .filter_map(|v| v.version_id());
            let markers = page
                .delete_markers()
                .iter()
                .filter(|m| ours(m.key()))
                .filter_map(|m| m.version_id());
            found.extend(versions.chain(markers).map(str::to_owned));
            if page.is_truncated() != Some(true) {
                return Ok(found);
            }
            let next = (
                page.next_key_marker().map(str::to_owned),
                page.next_version_id_marker().map(str::to_owned),
            );
            if next.0.is_none() && next.1.is_none() {
                return Ok(found);
            }
            if next == (key_marker.clone(), version_marker.clone()) {
                return Err(Error::EndlessListing {
                    bucket: self.bucket.clone(),
                    operation: "list the versions",
                });
            }
            (key_marker, version_marker) = next;
        }
    }

    /// `DeleteObjects` of `identifiers`, at most 1000 per call, checking that the server
    /// confirms every one.
    pub(crate) async fn delete_identifiers(
        &self,
        identifiers: Vec<ObjectIdentifier>,
    ) -> Result<(), Error> {
        let mut failures = Vec::new();
        for batch in identifiers.chunks(1000) {
            let delete = Delete::builder()
                .set_objects(Some(batch.to_vec()))
                .quiet(false)
                .build()
                .context(BuildRequestSnafu {
                    operation: "delete objects",
                    bucket: &self.bucket,
                })?;
            let counter = AttemptCounter::default();
            let response = self
                .client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .customize()
                .interceptor(counter.clone())
                .send()
                .await
                .map_err(|e| self.request_error("delete objects", None, &counter, &e))?;
            let deleted: std::collections::HashSet<(&str, Option<&str>)> = response
                .deleted()
                .iter()
                .filter_map(|d| d.key().map(|key| (key, d.version_id())))
                .collect();
            // What the server said about each identifier we sent. moto leaves the version id
            // out of its errors, and some servers out of their confirmations of plain deletes.
            let error_for = |key: &str, version: Option<&str>| {
                response.errors().iter().find(|error| {
                    error.key() == Some(key)
                        && (error.version_id() == version || error.version_id().is_none())
                })
            };
            for identifier in batch {
                let (key, version) = (identifier.key(), identifier.version_id());
                let reason = if let Some(error) = error_for(key, version) {
                    format!(
                        "{} ({})",
                        error.code().unwrap_or("error"),
                        error.message().unwrap_or("no message")
                    )
                } else if deleted.contains(&(key, version))
                    || (version.is_none() && deleted.iter().any(|(k, _)| *k == key))
                {
                    continue;
                } else {
                    "not confirmed by the server".to_owned()
                };
                failures.push(DeleteFailure {
                    key: describe(key, version),
                    reason,
                });
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(Error::DeleteFailed {
                bucket: self.bucket.clone(),
                failures,
            })
        }
    }
}

/// A key, with its version when there is one.
fn describe(key: &str, version_id: Option<&str>) -> String {
    match version_id {
        Some(version) => format!("{key} (version {version})"),
        None => key.to_owned(),
    }
}
