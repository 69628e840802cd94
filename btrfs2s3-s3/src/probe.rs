//! What `btrfs2s3 check` asks a bucket: the first page of its listing (with the server's
//! clock), its Object Lock configuration (with its default retention) and versioning, and
//! whether a small probe object can be put and deleted again. The probe's key can never be a
//! backup's.

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{BucketVersioningStatus, ChecksumAlgorithm, ObjectLockEnabled};

use crate::error::{AttemptCounter, Error, ServerDate};
use crate::remote::Remote;

/// The first page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirstPage {
    /// Objects on it (at most 1000).
    pub objects: usize,
    /// Whether there are more.
    pub truncated: bool,
    /// The server's clock, if it said.
    pub server_time: Option<jiff::Timestamp>,
}

/// A bucket's Object Lock configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockConfiguration {
    /// Whether Object Lock is enabled.
    pub enabled: bool,
    /// The default retention of new objects (`GOVERNANCE for 30 days`), if any.
    pub default_retention: Option<String>,
}

/// A bucket's versioning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versioning {
    /// Never enabled.
    Off,
    /// Enabled.
    Enabled,
    /// Enabled once, suspended now (old versions may remain).
    Suspended,
}

/// The key of a probe object: `btrfs2s3-check-probe/<id>`, which no backup key can be (a
/// backup key has no `/`).
#[must_use]
pub fn probe_key(id: &str) -> String {
    format!("btrfs2s3-check-probe/{id}")
}

impl Remote {
    /// The first page of the bucket's listing (one `ListObjectsV2`).
    pub async fn first_page(&self) -> Result<FirstPage, Error> {
        let server_date = ServerDate::default();
        let page = self.list_page(None, &server_date).await?;
        Ok(FirstPage {
            objects: page.contents().len(),
            truncated: page.is_truncated() == Some(true),
            server_time: server_date.get(),
        })
    }

    /// The bucket's Object Lock configuration (one `GetObjectLockConfiguration`); disabled
    /// on a server without object lock.
    pub async fn lock_configuration(&self) -> Result<LockConfiguration, Error> {
        let counter = AttemptCounter::default();
        let result = self
            .client
            .get_object_lock_configuration()
            .bucket(&self.bucket)
            .customize()
            .interceptor(counter.clone())
            .send()
            .await;
        let output = match result {
            Ok(output) => output,
            Err(error) if crate::retention::unsupported(error.code()) => {
                return Ok(LockConfiguration {
                    enabled: false,
                    default_retention: None,
                });
            }
            Err(error) => {
                return Err(self.request_error(
                    "read the object lock configuration",
                    None,
                    &counter,
                    &error,
                ));
            }
        };
        let config = output.object_lock_configuration();
        let enabled = config.and_then(|config| config.object_lock_enabled())
            == Some(&ObjectLockEnabled::Enabled);
        let default_retention = config
            .and_then(|config| config.rule())
            .and_then(|rule| rule.default_retention())
            .map(|retention| {
                let mode = retention.mode().map_or("", |mode| mode.as_str());
                match (retention.days(), retention.years()) {
                    (Some(days), _) => format!("{mode} for {days} day(s)"),
                    (_, Some(years)) => format!("{mode} for {years} year(s)"),
                    _ => mode.to_owned(),
                }
            });
        Ok(LockConfiguration {
            enabled,
            default_retention,
        })
    }

    /// The bucket's versioning (one `GetBucketVersioning`).
    pub async fn versioning(&self) -> Result<Versioning, Error> {
        let counter = AttemptCounter::default();
        let result = self
            .client
            .get_bucket_versioning()
            .bucket(&self.bucket)
            .customize()
            .interceptor(counter.clone())
            .send()
            .await;
        match result {
            Ok(output) => Ok(match output.status() {
                Some(BucketVersioningStatus::Enabled) => Versioning::Enabled,
                Some(BucketVersioningStatus::Suspended) => Versioning::Suspended,
                _ => Versioning::Off,
            }),
            Err(error) if crate::retention::unsupported(error.code()) => Ok(Versioning::Off),
            // moto answers a never-versioned bucket with a root element the SDK does not
            // parse; the body still says (by leaving the status out) what it means.
            Err(error) => match error
                .raw_response()
                .filter(|response| response.status().is_success())
                .and_then(|response| response.body().bytes())
            {
                Some(body) => {
                    let body = String::from_utf8_lossy(body);
                    Ok(if body.contains("<Status>Enabled</Status>") {
                        Versioning::Enabled
                    } else if body.contains("<Status>Suspended</Status>") {
                        Versioning::Suspended
                    } else {
                        Versioning::Off
                    })
                }
                None => Err(self.request_error("read the versioning of", None, &counter, &error)),
            },
        }
    }

    /// Puts a small object at `key` (with a checksum, as a bucket with Object Lock wants).
    pub async fn put_probe(&self, key: &str) -> Result<(), Error> {
        let counter = AttemptCounter::default();
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from_static(
                b"written by `btrfs2s3 check`, which deletes it again\n",
            ))
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .customize()
            .interceptor(counter.clone())
            .send()
            .await
            .map_err(|e| self.request_error("upload", Some(key), &counter, &e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_key_is_never_a_backup_key() {
        let key = probe_key("host-1234-5678");
        assert!(crate::BackupMeta::parse_key(&key).is_err(), "{key}");
    }
}
