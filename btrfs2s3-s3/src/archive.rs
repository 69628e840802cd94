//! Objects in archive storage classes (`GLACIER`, `DEEP_ARCHIVE`): they cannot be read until a
//! restore request has made a temporary copy available.

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::types::{GlacierJobParameters, RestoreRequest, StorageClass, Tier};
use snafu::ResultExt;

use crate::error::{AttemptCounter, BuildRequestSnafu, Error};
use crate::remote::Remote;

/// Whether an object can be read now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    /// In a storage class that is read directly (`GLACIER_IR` included).
    Readable,
    /// Archived, and no restore was requested (or the restored copy expired).
    Archived,
    /// Archived, and a restore is under way.
    Restoring,
    /// Archived, and a restored copy can be read.
    Restored,
}

impl Availability {
    /// Whether a `GetObject` succeeds now.
    #[must_use]
    pub fn is_readable(self) -> bool {
        matches!(self, Availability::Readable | Availability::Restored)
    }
}

/// How fast (and how dear) a restore is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreTier {
    /// The cheapest and slowest (hours, up to 48 for `DEEP_ARCHIVE`).
    Bulk,
    /// The default (3-5 hours for `GLACIER`, up to 12 for `DEEP_ARCHIVE`).
    Standard,
    /// Minutes, for `GLACIER` only, at a price.
    Expedited,
}

/// What a restore request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restore {
    /// A restore was started (or, for a restored object, its copy kept longer).
    Requested,
    /// A restore was under way already.
    InProgress,
    /// The server does not archive (its storage classes are labels, like SeaweedFS's): the
    /// object can be read as it is.
    NotNeeded,
}

/// Whether objects of `class` need a restore request before they can be read.
#[must_use]
pub fn needs_restore(class: Option<&str>) -> bool {
    matches!(class, Some("GLACIER" | "DEEP_ARCHIVE"))
}

impl Remote {
    /// Whether `key` can be read now, or needs (or awaits) a restore (`HeadObject`).
    pub async fn availability(&self, key: &str) -> Result<Availability, Error> {
        let head = self.head(key).await?;
        let archived = needs_restore(head.storage_class().map(StorageClass::as_str));
        Ok(match (archived, head.restore()) {
            (false, _) => Availability::Readable,
            (true, None) => Availability::Archived,
            (true, Some(restore)) if restore.contains("ongoing-request=\"true\"") => {
                Availability::Restoring
            }
            (true, Some(_)) => Availability::Restored,
        })
    }

    /// Asks for a temporary copy of archived `key`, readable for `days` (`RestoreObject`). A
    /// restore already under way is not an error, and neither is a server that does not
    /// archive at all.
    pub async fn request_restore(
        &self,
        key: &str,
        tier: RestoreTier,
        days: u32,
    ) -> Result<Restore, Error> {
        let tier = match tier {
            RestoreTier::Bulk => Tier::Bulk,
            RestoreTier::Standard => Tier::Standard,
            RestoreTier::Expedited => Tier::Expedited,
        };
        let job =
            GlacierJobParameters::builder()
                .tier(tier)
                .build()
                .context(BuildRequestSnafu {
                    operation: "request a restore",
                    bucket: &self.bucket,
                })?;
        let request = RestoreRequest::builder()
            .days(i32::try_from(days).unwrap_or(i32::MAX))
            .glacier_job_parameters(job)
            .build();
        let counter = AttemptCounter::default();
        let result = self
            .client
            .restore_object()
            .bucket(&self.bucket)
            .key(key)
            .restore_request(request)
            .customize()
            .interceptor(counter.clone())
            .send()
            .await;
        match result {
            Ok(_) => Ok(Restore::Requested),
            Err(error) => match error.code() {
                Some("RestoreAlreadyInProgress") => Ok(Restore::InProgress),
                Some("MethodNotAllowed" | "NotImplemented") => Ok(Restore::NotNeeded),
                _ => Err(self.request_error("request a restore", Some(key), &counter, &error)),
            },
        }
    }
}
