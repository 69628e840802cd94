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

/// A failed request: the server's error code and message or the network error, and how many
/// attempts were made.
#[derive(Debug)]
pub struct RequestError {
    message: String,
    code: Option<String>,
    attempts: u32,
}

impl RequestError {
    /// The S3 error code, e.g. `NoSuchBucket`, when the server answered.
    #[must_use]
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }

    /// How many attempts were made before giving up.
    #[must_use]
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    pub(crate) fn new<E>(error: &SdkError<E, HttpResponse>, attempts: u32) -> RequestError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let (message, code) = match error {
            SdkError::ServiceError(service) => {
                let inner = service.err();
                let code = inner.code().map(str::to_owned);
                let response = service.raw();
                let message = match (inner.code(), inner.message()) {
                    (Some(code), Some(message)) => format!("{code}: {message}"),
                    (Some(code), None) => code.to_owned(),
                    _ => format!("{}", DisplayErrorContext(inner)),
                };
                // The status, and the request id a provider's support asks for.
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
                (
                    format!(
                        "{message} (HTTP {}{request_id})",
                        response.status().as_u16()
                    ),
                    code,
                )
            }
            other => (format!("{}", DisplayErrorContext(other)), None),
        };
        RequestError {
            message,
            code,
            attempts,
        }
    }
}

impl RequestError {
    /// A failure that is not an SDK error (a body that broke off mid-stream).
    pub(crate) fn other(message: String, attempts: u32) -> RequestError {
        RequestError {
            message,
            code: None,
            attempts,
        }
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plural = if self.attempts == 1 { "" } else { "s" };
        write!(
            f,
            "{} (after {} attempt{plural})",
            self.message, self.attempts
        )
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
