//! The errors of the S3 operations, and the attempt counter every request carries.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use aws_smithy_types::error::display::DisplayErrorContext;
use snafu::Snafu;

/// The errors of this crate. Every one names the bucket (and key) it is about.
#[derive(Debug, Snafu)]
#[snafu(visibility(pub(crate)))]
pub enum Error {
    /// The part size is outside S3's limits.
    #[snafu(display(
        "invalid S3 settings for bucket {bucket}: part size {size} is outside S3's limits (5 MiB to 5 GiB)"
    ))]
    PartSize {
        /// The bucket.
        bucket: String,
        /// The part size asked for, in bytes.
        size: u64,
    },
    /// A count of parts that must be at least 1 is 0.
    #[snafu(display(
        "invalid S3 settings for bucket {bucket}: parts in flight and parts per size step must be at least 1"
    ))]
    ZeroParts {
        /// The bucket.
        bucket: String,
    },
    /// Only one half of a static key pair is given.
    #[snafu(display(
        "invalid S3 settings for bucket {bucket}: aws_access_key_id and aws_secret_access_key must be given together"
    ))]
    HalfCredentials {
        /// The bucket.
        bucket: String,
    },
    /// The CA bundle of `verify` cannot be read.
    #[snafu(display("cannot read the CA bundle {} for bucket {bucket}", path.display()))]
    CaBundle {
        /// The bucket.
        bucket: String,
        /// The bundle.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The CA bundle of `verify` holds no usable certificate.
    #[snafu(display("invalid S3 settings for bucket {bucket}: invalid CA bundle {}: {reason}", path.display()))]
    InvalidCaBundle {
        /// The bucket.
        bucket: String,
        /// The bundle.
        path: PathBuf,
        /// What the TLS library said.
        reason: String,
    },
    /// A request failed (after retries, for retryable failures).
    #[snafu(display("failed to {operation} in bucket {bucket}{}", key_suffix(key.as_deref())))]
    Request {
        /// What we were doing, e.g. "list objects".
        operation: &'static str,
        /// The bucket.
        bucket: String,
        /// The object, if any.
        key: Option<String>,
        /// What the server or the network said.
        source: RequestError,
    },
    /// The stream to upload could not be read.
    #[snafu(display("failed to read the stream to upload to {key} in bucket {bucket}"))]
    ReadStream {
        /// The bucket.
        bucket: String,
        /// The object.
        key: String,
        /// Why.
        source: std::io::Error,
    },
    /// A downloaded object could not be written out.
    #[snafu(display("failed to write {key} of bucket {bucket}"))]
    WriteDownload {
        /// The bucket.
        bucket: String,
        /// The object.
        key: String,
        /// Why.
        source: std::io::Error,
    },
    /// The stream is larger than an S3 object can be with these settings.
    #[snafu(display(
        "the stream to upload to {key} in bucket {bucket} needs more than 10,000 parts"
    ))]
    TooManyParts {
        /// The bucket.
        bucket: String,
        /// The object.
        key: String,
    },
    /// The stream is longer than `max_object_size` and its key is not a backup's, which could
    /// be stored in pieces.
    #[snafu(display(
        "the stream to upload to {key} in bucket {bucket} is longer than max_object_size ({max} bytes)"
    ))]
    ObjectTooLarge {
        /// The bucket.
        bucket: String,
        /// The object.
        key: String,
        /// The largest object allowed.
        max: u64,
    },
    /// A `max_object_size` below S3's smallest part.
    #[snafu(display(
        "max_object_size for bucket {bucket} is {size} bytes; it must be at least 5 MiB"
    ))]
    MaxObjectSize {
        /// The bucket.
        bucket: String,
        /// The size given.
        size: u64,
    },
    /// A backup stored as several objects whose pieces other than the first are gone.
    #[snafu(display(
        "backup {key} in bucket {bucket} is stored in pieces of {piece_size} bytes, and its other pieces are missing: it cannot be restored"
    ))]
    MissingPieces {
        /// The bucket.
        bucket: String,
        /// The backup's key.
        key: String,
        /// The piece size its metadata gives.
        piece_size: u64,
    },
    /// The transfer was cancelled.
    #[snafu(display("the transfer of {key} in bucket {bucket} was cancelled"))]
    Cancelled {
        /// The bucket.
        bucket: String,
        /// The object.
        key: String,
    },
    /// A request could not be built (a key the SDK refuses).
    #[snafu(display("cannot {operation} in bucket {bucket}"))]
    BuildRequest {
        /// What we were doing.
        operation: &'static str,
        /// The bucket.
        bucket: String,
        /// What the SDK said.
        source: aws_sdk_s3::error::BuildError,
    },
    /// The server answered a request in a way S3 does not allow.
    #[snafu(display(
        "the server's answer to {operation} of {key} in bucket {bucket} has no {missing}"
    ))]
    MalformedResponse {
        /// What we asked for.
        operation: &'static str,
        /// The bucket.
        bucket: String,
        /// The object.
        key: String,
        /// What is missing.
        missing: &'static str,
    },
    /// The server answers a paged listing with the page it was just asked for, forever.
    #[snafu(display(
        "the server repeats the same page when asked to {operation} in bucket {bucket}"
    ))]
    EndlessListing {
        /// What we were listing.
        operation: &'static str,
        /// The bucket.
        bucket: String,
    },
    /// The server accepted an object-lock retention but does not keep it.
    #[snafu(display(
        "the server does not keep the object-lock retention of {key} in bucket {bucket}"
    ))]
    RetentionNotKept {
        /// The bucket.
        bucket: String,
        /// The object.
        key: String,
    },
    /// A part upload's task ended without a result (the runtime is shutting down).
    #[snafu(display("the upload of a part of {key} in bucket {bucket} was stopped: {reason}"))]
    PartStopped {
        /// The bucket.
        bucket: String,
        /// The object.
        key: String,
        /// What the runtime said.
        reason: String,
    },
    /// Some keys of a `DeleteObjects` call were not deleted.
    #[snafu(display("failed to delete {} object(s) from bucket {bucket}: {}", failures.len(), describe_failures(failures)))]
    DeleteFailed {
        /// The bucket.
        bucket: String,
        /// Each key that was not deleted, and why.
        failures: Vec<DeleteFailure>,
    },
}

fn key_suffix(key: Option<&str>) -> String {
    key.map(|key| format!(" (key {key})")).unwrap_or_default()
}

/// A key that `DeleteObjects` did not delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteFailure {
    /// The key.
    pub key: String,
    /// The server's error code and message, or that it did not confirm the delete.
    pub reason: String,
}

fn describe_failures(failures: &[DeleteFailure]) -> String {
    let mut text: Vec<String> = failures
        .iter()
        .take(5)
        .map(|failure| format!("{}: {}", failure.key, failure.reason))
        .collect();
    if failures.len() > 5 {
        text.push(format!("and {} more", failures.len() - 5));
    }
    text.join("; ")
}

/// A failed request, in plain words: what went wrong (the network, the server's error code
/// and message), what to do about it where something is obvious, and how many attempts were
/// made. The SDK's whole story, with its debug structures, is kept for `-v`
/// ([`RequestError::detail`]).
#[derive(Debug)]
pub struct RequestError {
    failure: Failure,
    attempts: u32,
    /// Boxed: every `Result` of this crate carries an error, and most are `Ok`.
    texts: Box<Texts>,
}

#[derive(Debug)]
struct Texts {
    message: String,
    hint: Option<String>,
    code: Option<String>,
    detail: String,
}

/// What kind of failure a request met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// Nothing listens at the endpoint.
    Refused,
    /// The endpoint's host name does not resolve.
    UnknownHost,
    /// The TLS handshake failed (an untrusted or wrong certificate).
    Tls,
    /// No answer in time.
    Timeout,
    /// Another network failure.
    Network,
    /// No credentials were found.
    NoCredentials,
    /// The server does not know the access key, or the secret is wrong.
    BadCredentials,
    /// The credentials may not do this.
    AccessDenied,
    /// The bucket does not exist.
    NoSuchBucket,
    /// The bucket is in another region.
    WrongRegion,
    /// This machine's clock is too far from the server's.
    ClockSkew,
    /// Another answer of the server.
    Service,
    /// Anything else.
    Other,
}

/// Where a request went, for messages: the endpoint URL, or AWS.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target<'a> {
    pub(crate) endpoint: Option<&'a str>,
    pub(crate) bucket: &'a str,
    pub(crate) operation: &'static str,
}

impl Target<'_> {
    fn endpoint(&self) -> String {
        self.endpoint
            .map_or_else(|| "the AWS endpoint".to_owned(), str::to_owned)
    }
}

impl RequestError {
    /// The S3 error code, e.g. `NoSuchBucket`, when the server answered.
    #[must_use]
    pub fn code(&self) -> Option<&str> {
        self.texts.code.as_deref()
    }

    /// How many attempts were made before giving up.
    #[must_use]
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// What kind of failure it was.
    #[must_use]
    pub fn failure(&self) -> Failure {
        self.failure
    }

    /// The SDK's whole account of the failure, debug structures included (for `-v`).
    #[must_use]
    pub fn detail(&self) -> &str {
        &self.texts.detail
    }

    pub(crate) fn new<E>(
        error: &SdkError<E, HttpResponse>,
        attempts: u32,
        target: Target<'_>,
    ) -> RequestError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let detail = format!("{}", DisplayErrorContext(error));
        let (failure, message, code) = match error {
            SdkError::ServiceError(service) => {
                let inner = service.err();
                let response = service.raw();
                let status = response.status().as_u16();
                let code = inner.code().map(str::to_owned);
                let failure = service_failure(code.as_deref(), inner.message(), status);
                // The request id a provider's support asks for.
                let request_id = response
                    .headers()
                    .get("x-amz-request-id")
                    .map(|id| {
                        let id: String = id
                            .chars()
                            .filter(char::is_ascii_graphic)
                            .take(128)
                            .collect();
                        format!(", request id {id}")
                    })
                    .unwrap_or_default();
                let said = match (inner.code(), inner.message()) {
                    (Some(code), Some(message)) => format!("{code}: {}", printable(message)),
                    (Some(code), None) => code.to_owned(),
                    _ => "no error code".to_owned(),
                };
                let message = match failure {
                    Failure::NoSuchBucket => format!("the bucket does not exist ({said})"),
                    Failure::AccessDenied => format!("access denied ({said})"),
                    Failure::BadCredentials => {
                        format!("the server refuses the credentials ({said})")
                    }
                    Failure::WrongRegion => format!("the bucket is in another region ({said})"),
                    Failure::ClockSkew => {
                        format!("this machine's clock is too far from the server's ({said})")
                    }
                    _ => said,
                };
                (
                    failure,
                    format!("{message} (HTTP {status}{request_id})"),
                    code,
                )
            }
            SdkError::TimeoutError(_) => (
                Failure::Timeout,
                format!("no answer from {} in time", target.endpoint()),
                None,
            ),
            other => {
                let (failure, cause) = transport_failure(other);
                let message = match failure {
                    Failure::Refused => {
                        format!(
                            "cannot connect to {}: connection refused",
                            target.endpoint()
                        )
                    }
                    Failure::UnknownHost => {
                        format!("cannot connect to {}: unknown host", target.endpoint())
                    }
                    Failure::Tls => format!(
                        "the TLS handshake with {} failed: {cause}",
                        target.endpoint()
                    ),
                    Failure::Timeout => {
                        format!("no answer from {} in time", target.endpoint())
                    }
                    Failure::NoCredentials => format!("no credentials: {cause}"),
                    _ => format!("cannot reach {}: {cause}", target.endpoint()),
                };
                (failure, message, None)
            }
        };
        RequestError {
            failure,
            attempts,
            texts: Box::new(Texts {
                hint: hint(failure, target),
                message,
                code,
                detail,
            }),
        }
    }

    /// A response body that broke off mid-stream.
    pub(crate) fn broken_body(
        error: &(dyn std::error::Error + 'static),
        attempts: u32,
    ) -> RequestError {
        let (_, cause) = transport_failure(error);
        RequestError {
            failure: Failure::Network,
            attempts,
            texts: Box::new(Texts {
                message: format!("the download broke off: {cause}"),
                detail: format!("{}", DisplayErrorContext(error)),
                hint: None,
                code: None,
            }),
        }
    }
}

/// Text from the network, on one line and without control characters.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(500)
        .collect()
}

/// The kind of a service error, from its code, message and HTTP status.
fn service_failure(code: Option<&str>, message: Option<&str>, status: u16) -> Failure {
    // Some servers (Garage) say AccessDenied for a bad signature or an unknown key.
    let about_credentials = message.is_some_and(|message| {
        let message = message.to_ascii_lowercase();
        message.contains("signature")
            || message.contains("no such key")
            || message.contains("access key")
    });
    match code {
        Some("AccessDenied" | "Forbidden") if about_credentials => Failure::BadCredentials,
        Some("NoSuchBucket") => Failure::NoSuchBucket,
        Some("AccessDenied" | "AllAccessDisabled" | "Forbidden") => Failure::AccessDenied,
        Some("InvalidAccessKeyId" | "SignatureDoesNotMatch" | "InvalidToken" | "ExpiredToken") => {
            Failure::BadCredentials
        }
        Some(
            "PermanentRedirect"
            | "AuthorizationHeaderMalformed"
            | "IllegalLocationConstraintException",
        ) => Failure::WrongRegion,
        Some("RequestTimeTooSkewed") => Failure::ClockSkew,
        None if status == 403 => Failure::AccessDenied,
        None if status == 301 => Failure::WrongRegion,
        _ => Failure::Service,
    }
}

/// The kind of a failure before any answer, and its innermost cause in words.
fn transport_failure(error: &(dyn std::error::Error + 'static)) -> (Failure, String) {
    let mut failure = Failure::Network;
    let mut cause = error.to_string();
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = current {
        let text = error.to_string();
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return (Failure::Tls, tls.to_string());
        }
        let io = error.downcast_ref::<std::io::Error>();
        if let Some(io) = io {
            failure = match io.kind() {
                std::io::ErrorKind::ConnectionRefused => Failure::Refused,
                std::io::ErrorKind::TimedOut => Failure::Timeout,
                _ if text.contains("failed to lookup address") => Failure::UnknownHost,
                _ => failure,
            };
        }
        if text.starts_with("dns error") || text.contains("failed to lookup address") {
            failure = Failure::UnknownHost;
        }
        if text.contains("credentials") && failure == Failure::Network {
            failure = Failure::NoCredentials;
        }
        cause = text;
        // An I/O error hides the error it wraps (a TLS error, another I/O error) from the
        // chain of sources.
        current = match io.and_then(std::io::Error::get_ref) {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => error.source(),
        };
    }
    (failure, cause)
}

/// What to do about a failure, where something is obvious.
fn hint(failure: Failure, target: Target<'_>) -> Option<String> {
    Some(match failure {
        Failure::Refused => "check endpoint_url, and that the server is running".to_owned(),
        Failure::UnknownHost => "check endpoint_url (the host name does not resolve)".to_owned(),
        Failure::Tls => "check the server's certificate, or give the CA that signed it with verify: /path/to/ca.pem".to_owned(),
        Failure::Timeout => "check the network and the server, or raise timeout_seconds".to_owned(),
        Failure::NoCredentials => "give aws_access_key_id and aws_secret_access_key (or profile_name) in the config, or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".to_owned(),
        Failure::BadCredentials => "check aws_access_key_id and aws_secret_access_key (or the profile)".to_owned(),
        Failure::AccessDenied => match permission(target.operation) {
            Some(permission) => format!(
                "the credentials need {permission} on bucket {}",
                target.bucket
            ),
            None => format!("check the credentials' permissions on bucket {}", target.bucket),
        },
        Failure::NoSuchBucket => format!(
            "check bucket ({}), endpoint_url and region_name; btrfs2s3 does not create buckets",
            target.bucket
        ),
        Failure::WrongRegion => "check region_name".to_owned(),
        Failure::ClockSkew => "set this machine's clock right (NTP)".to_owned(),
        Failure::Network | Failure::Service | Failure::Other => return None,
    })
}

/// The IAM permission an operation needs.
fn permission(operation: &str) -> Option<&'static str> {
    Some(match operation {
        "list objects" => "s3:ListBucket",
        "list multipart uploads" => "s3:ListBucketMultipartUploads",
        "download" | "read the metadata" => "s3:GetObject",
        "upload"
        | "start a multipart upload"
        | "upload a part"
        | "complete the multipart upload" => "s3:PutObject",
        "abort the multipart upload" => "s3:AbortMultipartUpload",
        "delete objects" => "s3:DeleteObject (and s3:DeleteObjectVersion in a versioned bucket)",
        "set the object-lock retention" => "s3:PutObjectRetention",
        "list the versions" => "s3:ListBucketVersions",
        "read the versioning of" => "s3:GetBucketVersioning",
        "read the object lock configuration" => "s3:GetBucketObjectLockConfiguration",
        "request a restore" => "s3:RestoreObject",
        _ => return None,
    })
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plural = if self.attempts == 1 { "" } else { "s" };
        write!(
            f,
            "{} (after {} attempt{plural})",
            self.texts.message, self.attempts
        )?;
        if let Some(hint) = &self.texts.hint {
            write!(f, "; {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for RequestError {}

/// Remembers the `Date` header of the last response: the server's clock.
#[derive(Debug, Clone, Default)]
pub(crate) struct ServerDate(Arc<std::sync::Mutex<Option<String>>>);

impl ServerDate {
    /// The server's time, if it said it in a form we read (RFC 2822, as HTTP dates are).
    pub(crate) fn get(&self) -> Option<jiff::Timestamp> {
        let text = self.0.lock().ok()?.clone()?;
        jiff::fmt::rfc2822::parse(&text)
            .ok()
            .map(|zoned| zoned.timestamp())
    }
}

impl Intercept for ServerDate {
    fn name(&self) -> &'static str {
        "ServerDate"
    }

    fn read_before_deserialization(
        &self,
        context: &aws_smithy_runtime_api::client::interceptors::context::BeforeDeserializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let (Some(date), Ok(mut slot)) =
            (context.response().headers().get("date"), self.0.lock())
        {
            *slot = Some(date.to_owned());
        }
        Ok(())
    }
}

/// Counts the attempts of one request (installed per operation with `customize()`).
#[derive(Debug, Clone, Default)]
pub(crate) struct AttemptCounter(Arc<AtomicU32>);

impl AttemptCounter {
    pub(crate) fn get(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Intercept for AttemptCounter {
    fn name(&self) -> &'static str {
        "AttemptCounter"
    }

    fn read_before_attempt(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}
