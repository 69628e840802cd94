//! A connection to one bucket: client construction, listing, download and delete.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use aws_config::meta::region::RegionProviderChain;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_s3::config::{Credentials, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::types::{EncodingType, ObjectIdentifier};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use snafu::ResultExt;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::BackupMeta;
use crate::error::{
    AttemptCounter, BuildRequestSnafu, CaBundleSnafu, Error, RequestError, ServerDate, Target,
    WriteDownloadSnafu,
};
use crate::key::decode_key;
use crate::rate::RateLimit;
use crate::upload::Integrity;

/// A secret string: never shown by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    #[must_use]
    pub fn new(secret: impl Into<String>) -> Secret {
        Secret(secret.into())
    }

    /// The secret itself, for the one place that needs it.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(** redacted **)")
    }
}

/// How to check the server's TLS certificate (the config's `verify`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Verify {
    /// The system's trust store (the default, `verify: true`).
    #[default]
    System,
    /// Do not verify (`verify: false`).
    Off,
    /// Trust the certificates in this PEM bundle (`verify: /path/to/ca.pem`).
    CaBundle(PathBuf),
}

/// Tuning of uploads. The defaults suit most links; see the README.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadSettings {
    /// Size of the first parts of a multipart upload, in bytes (at least 5 MiB, S3's minimum).
    pub part_size: u64,
    /// The part size doubles after every this many parts, so that the 10,000 parts S3 allows
    /// hold 5 TiB (the default, 900, does for every allowed part size).
    pub parts_per_size_step: u32,
    /// How many parts are uploaded at once while the next one is read.
    pub parts_in_flight: usize,
    /// The most bytes per second uploads to this remote may read.
    pub rate_limit: Option<u64>,
    /// The largest object: a longer backup is stored in pieces of this size (5 TiB, S3's
    /// limit, by default).
    pub max_object_size: u64,
}

impl Default for UploadSettings {
    fn default() -> UploadSettings {
        UploadSettings {
            part_size: 8 << 20,
            parts_per_size_step: 900,
            parts_in_flight: 4,
            rate_limit: None,
            max_object_size: DEFAULT_MAX_OBJECT_SIZE,
        }
    }
}

/// S3's largest object, 5 TiB: the default `max_object_size`.
pub const DEFAULT_MAX_OBJECT_SIZE: u64 = 5 << 40;

/// The smallest `max_object_size`: S3's smallest part.
pub const MIN_MAX_OBJECT_SIZE: u64 = 5 << 20;

/// A function called with the key of each piece after the first as it is completed (for
/// crash tests).
#[derive(Clone)]
pub struct PieceHook(pub(crate) Arc<dyn Fn(&str) + Send + Sync>);

impl fmt::Debug for PieceHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PieceHook")
    }
}

/// Everything needed to reach a bucket.
#[derive(Debug, Clone, Default)]
pub struct RemoteConfig {
    /// The bucket.
    pub bucket: String,
    /// A custom endpoint (Garage, `MinIO`, B2...); the SDK's default otherwise.
    pub endpoint_url: Option<String>,
    /// The region; otherwise the standard chain (environment, profile), else `us-east-1`.
    pub region: Option<String>,
    /// A profile of `~/.aws/config` and `~/.aws/credentials`.
    pub profile: Option<String>,
    /// Static credentials; otherwise the standard chain.
    pub access_key_id: Option<String>,
    /// The secret of `access_key_id`.
    pub secret_access_key: Option<Secret>,
    /// TLS certificate checking.
    pub verify: Verify,
    /// Path-style addressing (`endpoint/bucket/key`); default: on with a custom endpoint.
    pub force_path_style: Option<bool>,
    /// Total attempts of each request before giving up (the SDK's standard retry with
    /// exponential backoff on throttling, 5xx and connection errors).
    pub max_attempts: u32,
    /// Give up on a connection attempt after this long.
    pub connect_timeout: Duration,
    /// Give up on a request when the server sends nothing for this long.
    pub read_timeout: Duration,
    /// Upload tuning.
    pub upload: UploadSettings,
}

impl RemoteConfig {
    /// A config for `bucket` with every other setting at its default.
    #[must_use]
    pub fn new(bucket: impl Into<String>) -> RemoteConfig {
        RemoteConfig {
            bucket: bucket.into(),
            max_attempts: 5,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(120),
            ..RemoteConfig::default()
        }
    }
}

/// One object of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedObject {
    /// The key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Storage class as the server reports it (`STANDARD`, `GLACIER`...), if it does.
    pub storage_class: Option<String>,
}

/// A multipart upload that was started and neither completed nor aborted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingUpload {
    /// The key it would create.
    pub key: String,
    /// Its id.
    pub upload_id: String,
    /// When it was started (unix seconds), if the server says.
    pub initiated: Option<i64>,
}

/// One backup of a listing: the object and what its key says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedBackup {
    /// The object.
    pub object: ListedObject,
    /// The metadata in its key.
    pub meta: BackupMeta,
    /// Its other pieces, in order, when it is stored as several objects (the first is
    /// `object`); empty for a backup of one object.
    pub pieces: Vec<ListedObject>,
}

impl ListedBackup {
    /// The size of the backup: of all its pieces.
    #[must_use]
    pub fn size(&self) -> u64 {
        self.object.size + self.pieces.iter().map(|piece| piece.size).sum::<u64>()
    }
}

/// Everything in a bucket, split into our backups and foreign objects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// Whole backups: objects whose keys parse as backup keys, with their other pieces.
    pub backups: Vec<ListedBackup>,
    /// Backups stored as several objects of which some are missing: they cannot be restored.
    pub broken: Vec<ListedBackup>,
    /// Pieces of backups that belong to no backup (an upload was interrupted between them).
    pub leftovers: Vec<ListedObject>,
    /// Objects whose keys do not parse: not ours, never to be deleted.
    pub foreign: Vec<ListedObject>,
    /// How many `ListObjectsV2` pages were read.
    pub pages: u32,
    /// The server's clock at the listing (its `Date` header), if it said.
    pub server_time: Option<jiff::Timestamp>,
}

/// A connection to one bucket.
#[derive(Debug, Clone)]
pub struct Remote {
    pub(crate) client: aws_sdk_s3::Client,
    pub(crate) bucket: String,
    /// The endpoint URL, for messages; AWS's when `None`.
    pub(crate) endpoint: Option<String>,
    pub(crate) upload: UploadSettings,
    /// Whether upload bodies go without a SHA-256 in their signature: over HTTPS, where TLS
    /// already guards the bytes in transit (as the AWS CLI does). Hashing every byte costs
    /// about 0.7 CPU seconds per GiB here, and as much again on servers that check it.
    pub(crate) unsigned_payload: bool,
    /// Cancels uploads and downloads in flight (Ctrl-C): they stop and clean up.
    pub(crate) cancel: CancellationToken,
    /// The bandwidth limits uploads draw from: this remote's own, and one shared with
    /// other remotes.
    pub(crate) limits: Vec<RateLimit>,
    /// How many times a request whose bytes arrived damaged is sent.
    pub(crate) max_attempts: u32,
    /// What the server was found to take for upload integrity (shared by clones): unknown
    /// until the first upload.
    integrity: Arc<OnceLock<Integrity>>,
    /// Called as each piece after a backup's first is completed.
    pub(crate) on_piece: Option<PieceHook>,
}

impl Remote {
    /// Builds a client for `config`. Nothing is sent yet: errors about credentials or the
    /// bucket surface with the first request.
    pub async fn connect(config: &RemoteConfig) -> Result<Remote, Error> {
        let bucket = config.bucket.clone();
        if config.upload.part_size < 5 << 20 || config.upload.part_size > 5 << 30 {
            return Err(Error::PartSize {
                bucket,
                size: config.upload.part_size,
            });
        }
        if config.upload.max_object_size < MIN_MAX_OBJECT_SIZE {
            return Err(Error::MaxObjectSize {
                bucket,
                size: config.upload.max_object_size,
            });
        }
        if config.upload.parts_in_flight == 0 || config.upload.parts_per_size_step == 0 {
            return Err(Error::ZeroParts { bucket });
        }
        let region = RegionProviderChain::first_try(config.region.clone().map(Region::new))
            .or_default_provider()
            .or_else(Region::from_static("us-east-1"));
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(region)
            .retry_config(RetryConfig::standard().with_max_attempts(config.max_attempts.max(1)))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(config.connect_timeout)
                    .read_timeout(config.read_timeout)
                    .build(),
            );
        if let Some(profile) = &config.profile {
            loader = loader.profile_name(profile);
        }
        if let Some(url) = &config.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        match (&config.access_key_id, &config.secret_access_key) {
            (Some(id), Some(secret)) => {
                loader = loader.credentials_provider(Credentials::new(
                    id,
                    secret.expose(),
                    None,
                    None,
                    "btrfs2s3 config",
                ));
            }
            (None, None) => {}
            _ => return Err(Error::HalfCredentials { bucket }),
        }
        match &config.verify {
            Verify::System => {}
            Verify::CaBundle(path) => {
                let pem = tokio::fs::read(path).await.context(CaBundleSnafu {
                    bucket: bucket.clone(),
                    path: path.clone(),
                })?;
                let client =
                    crate::tls::client_trusting(pem).map_err(|reason| Error::InvalidCaBundle {
                        bucket: bucket.clone(),
                        path: path.clone(),
                        reason,
                    })?;
                loader = loader.http_client(client);
            }
            Verify::Off => {
                loader = loader.http_client(crate::tls::client_without_verification());
            }
        }
        let sdk_config = loader.load().await;
        let s3_config = aws_sdk_s3::config::Builder::from(&sdk_config)
            .force_path_style(
                config
                    .force_path_style
                    .unwrap_or(config.endpoint_url.is_some()),
            )
            // The SDK's default adds CRC32 checksums to every upload in an aws-chunked body,
            // which third-party servers reject (Garage 2.5 answers InvalidDigest to multipart
            // uploads). Checksums are sent where the API requires them, or when asked for.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .build();
        Ok(Remote {
            client: aws_sdk_s3::Client::from_conf(s3_config),
            bucket: config.bucket.clone(),
            endpoint: config.endpoint_url.clone(),
            upload: config.upload,
            unsigned_payload: config
                .endpoint_url
                .as_deref()
                .is_none_or(|url| url.to_ascii_lowercase().starts_with("https://")),
            cancel: CancellationToken::new(),
            limits: config
                .upload
                .rate_limit
                .map(RateLimit::new)
                .into_iter()
                .collect(),
            max_attempts: config.max_attempts.max(1),
            integrity: Arc::new(OnceLock::new()),
            on_piece: None,
        })
    }

    /// How uploads are guarded, once the first one found out.
    pub(crate) fn integrity(&self) -> Option<Integrity> {
        self.integrity.get().copied()
    }

    /// Remembers how uploads are guarded (the first answer stays).
    pub(crate) fn learn_integrity(&self, integrity: Integrity) {
        let _ = self.integrity.set(integrity);
    }

    /// Whether this server refused CRC-32C checksums (or unsigned payloads), so uploads to it
    /// are signed with their SHA-256 instead.
    #[must_use]
    pub fn refuses_checksums(&self) -> bool {
        self.integrity() == Some(Integrity::Signed)
    }

    /// This remote calling `hook` with the key of each piece after a backup's first as it is
    /// completed.
    #[must_use]
    pub fn with_piece_hook(mut self, hook: impl Fn(&str) + Send + Sync + 'static) -> Remote {
        self.on_piece = Some(PieceHook(Arc::new(hook)));
        self
    }

    /// This remote with uploads that also draw from `limit` (shared with other remotes).
    #[must_use]
    pub fn with_rate_limit(mut self, limit: RateLimit) -> Remote {
        self.limits.push(limit);
        self
    }

    /// This remote with uploads and downloads that stop when `token` is cancelled: an upload
    /// in flight is aborted (no object, no multipart upload left), a download ends with
    /// [`Error::Cancelled`].
    #[must_use]
    pub fn with_cancellation(mut self, token: CancellationToken) -> Remote {
        self.cancel = token;
        self
    }

    /// The bucket.
    #[must_use]
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The underlying SDK client, configured like every request of this crate, for operations
    /// this crate does not wrap.
    #[must_use]
    pub fn sdk_client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    pub(crate) fn request_error<E>(
        &self,
        operation: &'static str,
        key: Option<&str>,
        counter: &AttemptCounter,
        error: &SdkError<E, HttpResponse>,
    ) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        Error::Request {
            operation,
            bucket: self.bucket.clone(),
            key: key.map(str::to_owned),
            source: RequestError::new(
                error,
                counter.get(),
                Target {
                    endpoint: self.endpoint.as_deref(),
                    bucket: &self.bucket,
                    operation,
                },
            ),
        }
    }

    /// One page of the bucket's listing (`ListObjectsV2`, 1000 keys), after `continuation`;
    /// the server's `Date` goes to `server_date`.
    pub(crate) async fn list_page(
        &self,
        continuation: Option<String>,
        server_date: &ServerDate,
    ) -> Result<aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Output, Error> {
        let counter = AttemptCounter::default();
        self.client
            .list_objects_v2()
            .bucket(&self.bucket)
            .max_keys(1000)
            // Keys are anyone's choice who can write to the bucket: one with a control
            // character (legal in S3, impossible in XML 1.0) would make every listing
            // fail. Encoded, it is just another key.
            .encoding_type(EncodingType::Url)
            .set_continuation_token(continuation)
            .customize()
            .interceptor(counter.clone())
            .interceptor(server_date.clone())
            .send()
            .await
            .map_err(|e| self.request_error("list objects", None, &counter, &e))
    }

    /// Lists the whole bucket in one paged `ListObjectsV2` pass (1000 keys a page).
    pub async fn list(&self) -> Result<Listing, Error> {
        let mut listing = Listing::default();
        let mut others = Vec::new();
        let mut continuation: Option<String> = None;
        let server_date = ServerDate::default();
        loop {
            let page = self.list_page(continuation.clone(), &server_date).await?;
            listing.pages += 1;
            let encoded = page.encoding_type() == Some(&EncodingType::Url);
            for object in page.contents() {
                let Some(key) = object.key() else { continue };
                let key = &decode_key(key, encoded);
                let listed = ListedObject {
                    key: key.to_owned(),
                    size: object
                        .size()
                        .map_or(0, |size| u64::try_from(size).unwrap_or(0)),
                    storage_class: object
                        .storage_class()
                        .map(|class| class.as_str().to_owned()),
                };
                crate::pieces::classify(
                    key,
                    listed,
                    &mut listing.backups,
                    &mut others,
                    &mut listing.foreign,
                );
            }
            match page.next_continuation_token() {
                Some(token) if page.is_truncated() == Some(true) => {
                    if continuation.as_deref() == Some(token) {
                        return Err(Error::EndlessListing {
                            bucket: self.bucket.clone(),
                            operation: "list objects",
                        });
                    }
                    continuation = Some(token.to_owned());
                }
                _ => {
                    listing.server_time = server_date.get();
                    let grouped =
                        crate::pieces::group(std::mem::take(&mut listing.backups), others);
                    listing.backups = grouped.backups;
                    listing.broken = grouped.broken;
                    listing.leftovers = grouped.leftovers;
                    return Ok(listing);
                }
            }
        }
    }

    /// Downloads an object into `writer`, streaming (memory stays at the SDK's buffer size),
    /// calling `progress` with the bytes written so far. Returns the object's size.
    pub async fn download(
        &self,
        key: &str,
        writer: &mut (impl AsyncWrite + Unpin),
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<u64, Error> {
        let counter = AttemptCounter::default();
        let response = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .customize()
            .interceptor(counter.clone())
            .send()
            .await
            .map_err(|e| self.request_error("download", Some(key), &counter, &e))?;
        let mut body = response.body;
        let mut written = 0u64;
        loop {
            let next = tokio::select! {
                next = body.try_next() => next,
                () = self.cancel.cancelled() => {
                    return Err(Error::Cancelled { bucket: self.bucket.clone(), key: key.to_owned() });
                }
            };
            let chunk = next.map_err(|e| Error::Request {
                operation: "download",
                bucket: self.bucket.clone(),
                key: Some(key.to_owned()),
                source: RequestError::broken_body(&e, counter.get()),
            })?;
            let Some(chunk) = chunk else { break };
            writer.write_all(&chunk).await.context(WriteDownloadSnafu {
                bucket: self.bucket.clone(),
                key,
            })?;
            written += chunk.len() as u64;
            progress(written);
        }
        writer.flush().await.context(WriteDownloadSnafu {
            bucket: self.bucket.clone(),
            key,
        })?;
        Ok(written)
    }

    /// Every multipart upload of the bucket that was started and neither completed nor
    /// aborted (they cost storage until aborted).
    pub async fn pending_uploads(&self) -> Result<Vec<PendingUpload>, Error> {
        let mut uploads = Vec::new();
        let (mut key_marker, mut id_marker): (Option<String>, Option<String>) = (None, None);
        loop {
            let counter = AttemptCounter::default();
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .encoding_type(EncodingType::Url)
                .set_key_marker(key_marker.clone())
                .set_upload_id_marker(id_marker.clone())
                .customize()
                .interceptor(counter.clone())
                .send()
                .await
                .map_err(|e| self.request_error("list multipart uploads", None, &counter, &e))?;
            let encoded = page.encoding_type() == Some(&EncodingType::Url);
            for upload in page.uploads() {
                if let (Some(key), Some(upload_id)) = (upload.key(), upload.upload_id()) {
                    uploads.push(PendingUpload {
                        key: decode_key(key, encoded),
                        upload_id: upload_id.to_owned(),
                        initiated: upload
                            .initiated()
                            .map(aws_sdk_s3::primitives::DateTime::secs),
                    });
                }
            }
            if page.is_truncated() != Some(true) {
                return Ok(uploads);
            }
            let next = (
                page.next_key_marker().map(str::to_owned),
                page.next_upload_id_marker().map(str::to_owned),
            );
            if next.0.is_none() && next.1.is_none() {
                return Ok(uploads);
            }
            if next == (key_marker.clone(), id_marker.clone()) {
                return Err(Error::EndlessListing {
                    bucket: self.bucket.clone(),
                    operation: "list multipart uploads",
                });
            }
            (key_marker, id_marker) = next;
        }
    }

    /// Deletes `keys` with `DeleteObjects`, at most 1000 per call, and checks that the server
    /// confirms every one. Keys it reports as failed, or does not confirm, make the error. In
    /// a versioned bucket this leaves delete markers: use [`Remote::delete_all_versions`].
    pub async fn delete<K: AsRef<str> + Sync>(&self, keys: &[K]) -> Result<(), Error> {
        let identifiers = keys
            .iter()
            .map(|key| ObjectIdentifier::builder().key(key.as_ref()).build())
            .collect::<Result<Vec<_>, _>>()
            .context(BuildRequestSnafu {
                operation: "delete objects",
                bucket: &self.bucket,
            })?;
        self.delete_identifiers(identifiers).await
    }

    /// The metadata of `key` (`HeadObject`).
    pub(crate) async fn head(
        &self,
        key: &str,
    ) -> Result<aws_sdk_s3::operation::head_object::HeadObjectOutput, Error> {
        let counter = AttemptCounter::default();
        self.client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .customize()
            .interceptor(counter.clone())
            .send()
            .await
            .map_err(|e| self.request_error("read the metadata", Some(key), &counter, &e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `connect` says about settings it refuses (it sends nothing, so no server is
    /// needed).
    async fn refused(change: impl FnOnce(&mut RemoteConfig)) -> Error {
        let mut config = RemoteConfig::new("bucket");
        change(&mut config);
        Remote::connect(&config)
            .await
            .expect_err("the settings are refused")
    }

    #[tokio::test]
    async fn unusable_settings_are_told_apart() {
        let error = refused(|c| c.upload.part_size = 1 << 20).await;
        assert!(
            matches!(error, Error::PartSize { size, .. } if size == 1 << 20),
            "{error}"
        );
        let error = refused(|c| c.upload.parts_in_flight = 0).await;
        assert!(matches!(error, Error::ZeroParts { .. }), "{error}");
        let error = refused(|c| c.access_key_id = Some("AKIA".to_owned())).await;
        assert!(matches!(error, Error::HalfCredentials { .. }), "{error}");
        let error = refused(|c| c.secret_access_key = Some(Secret::new("s3cr3t"))).await;
        assert!(matches!(error, Error::HalfCredentials { .. }), "{error}");
        assert!(!format!("{error} {error:?}").contains("s3cr3t"));
    }
}
