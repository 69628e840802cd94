//! Streaming upload of a stream of unknown length with bounded memory.
//!
//! The stream is cut into parts. If it ends within the first part it becomes one `PutObject`
//! (an empty stream makes an empty object); otherwise a multipart upload whose parts are sent
//! while the next one is read, at most `parts_in_flight` at a time. Memory is bounded by
//! `(parts_in_flight + 1) × part size` plus a small constant, and nothing touches the disk.
//!
//! An upload is *staged* first: all the bytes are on the server (or in memory, for a small
//! object) but no object exists under the key yet. Only [`StagedUpload::complete`] makes the
//! object appear, atomically. The caller completes once it knows the producer of the stream
//! succeeded (`btrfs send` and every `pipe_through` command exited 0), so a truncated stream
//! can never become an object that looks like a complete backup. Any error, an explicit
//! [`StagedUpload::abort`], or dropping the staged upload aborts the multipart upload.

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, ObjectLockMode, StorageClass,
};
use bytes::{Bytes, BytesMut};
use jiff::Timestamp;
use serde::Serialize;
use snafu::ResultExt;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::task::JoinSet;

use crate::error::{AttemptCounter, Error, ReadStreamSnafu};
use crate::remote::Remote;

/// S3 allows at most this many parts in a multipart upload.
const MAX_PARTS: usize = 10_000;

/// S3's largest part.
const MAX_PART_SIZE: u64 = 5 << 30;

/// An object-lock retention to set on upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ObjectLock {
    /// Governance (privileged users may lift it) or compliance (nobody may).
    pub mode: LockMode,
    /// Until when the object cannot be deleted or overwritten.
    pub retain_until: Timestamp,
}

/// The object-lock retention mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LockMode {
    /// `GOVERNANCE`.
    Governance,
    /// `COMPLIANCE`.
    Compliance,
}

impl std::fmt::Display for LockMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LockMode::Governance => "GOVERNANCE",
            LockMode::Compliance => "COMPLIANCE",
        })
    }
}

/// Per-object options of an upload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UploadOptions {
    /// The storage class (`STANDARD`, `STANDARD_IA`, `GLACIER_IR`...); the bucket's default
    /// otherwise.
    pub storage_class: Option<String>,
    /// An object-lock retention (the bucket must have object lock enabled).
    pub object_lock: Option<ObjectLock>,
    /// Delete what is under the key before anything is uploaded: the first piece of a backup
    /// whose other pieces went missing, which would make the new pieces look like its own
    /// (before the upload starts: some servers, Garage among them, abort the uploads of a
    /// key that is deleted).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub replace: bool,
}

/// How the bytes of an upload are guarded on their way to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Integrity {
    /// A CRC-32C of every part (or object), computed here on the buffered bytes and checked
    /// by the server, and an unsigned payload: cheap, and a corrupted part is refused.
    Crc32c,
    /// What servers without checksum support take: the payload signed with its SHA-256 over
    /// plain HTTP (unsigned over HTTPS), and the SDK's CRC-32 where object lock needs one.
    Signed,
}

/// The CRC-32C of `bytes`, as the `x-amz-checksum-crc32c` header carries it (base64 of the
/// big-endian value).
fn crc32c(bytes: &[u8]) -> String {
    let mut checksum = aws_smithy_checksums::ChecksumAlgorithm::Crc32c.into_impl();
    checksum.update(bytes);
    aws_smithy_types::base64::encode(checksum.finalize())
}

/// Whether a server refused a request because of its checksum header or unsigned payload
/// (rather than because the bytes were wrong): then it gets the signed kind instead.
fn refuses_checksums(error: &Error) -> bool {
    matches!(
        error,
        Error::Request { source, .. }
            if source.failure() == crate::Failure::Service
                && source.code().is_some_and(|code| {
                    matches!(
                        code,
                        "NotImplemented"
                            | "InvalidRequest"
                            | "InvalidArgument"
                            | "XAmzContentSHA256Mismatch"
                            | "MissingContentLength"
                    )
                })
    )
}

/// Whether the server found the bytes of a request other than its checksum says: they were
/// damaged on the way, and sending them again may work.
fn damaged_on_the_way(error: &Error) -> bool {
    matches!(
        error,
        Error::Request { source, .. }
            if source.code().is_some_and(|code| matches!(code, "BadDigest" | "InvalidDigest"))
    )
}

/// The size of part `index` (0-based): `base`, doubled every `step` parts, at most 5 GiB.
/// With the default step of 900 parts, 10,000 parts hold more than 5 TiB for every allowed
/// base (5 MiB: 10 TB; the default 8 MiB: 14 TB).
#[must_use]
pub fn part_size(index: usize, base: u64, step: u32) -> u64 {
    let doublings = u32::try_from(index / step.max(1) as usize).unwrap_or(u32::MAX);
    base.checked_shl(doublings)
        .filter(|size| *size <= MAX_PART_SIZE && (size >> doublings) == base)
        .unwrap_or(MAX_PART_SIZE)
}

/// An upload whose bytes are all staged, waiting to become an object.
#[must_use = "a staged upload becomes an object only when completed"]
#[derive(Debug)]
pub struct StagedUpload {
    remote: Remote,
    key: String,
    size: u64,
    options: UploadOptions,
    /// The piece size recorded on the object (a backup's first piece).
    piece_size: Option<u64>,
    staged: Staged,
    /// The keys of the pieces after the first, completed already.
    pieces: Vec<String>,
}

#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "one per upload in flight, never in a collection"
)]
enum Staged {
    /// A small object, still in memory.
    Single(Bytes),
    /// A multipart upload with all its parts uploaded.
    Multipart {
        guard: AbortGuard,
        parts: Vec<CompletedPart>,
    },
}

impl StagedUpload {
    /// The number of bytes of the stream.
    #[must_use]
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The key the object will have.
    #[must_use]
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The keys of the pieces after the first, in order: empty for a stream stored as one
    /// object.
    #[must_use]
    pub fn pieces(&self) -> &[String] {
        &self.pieces
    }

    /// Makes the object appear under its key. Returns its size.
    pub async fn complete(self) -> Result<u64, Error> {
        let StagedUpload {
            remote,
            key,
            size,
            options,
            piece_size,
            staged,
            pieces: _,
        } = self;
        match staged {
            Staged::Single(body) => remote.put_single(&key, body, &options, piece_size).await?,
            Staged::Multipart { guard, parts } => {
                let counter = AttemptCounter::default();
                let result = remote
                    .client
                    .complete_multipart_upload()
                    .bucket(&remote.bucket)
                    .key(&key)
                    .upload_id(guard.upload_id())
                    .multipart_upload(
                        CompletedMultipartUpload::builder()
                            .set_parts(Some(parts))
                            .build(),
                    )
                    .customize()
                    .interceptor(counter.clone())
                    .send()
                    .await;
                if let Err(e) = result {
                    let error = remote.request_error(
                        "complete the multipart upload",
                        Some(&key),
                        &counter,
                        &e,
                    );
                    // Best effort: the original error is the one to report.
                    let _ = guard.abort().await;
                    return Err(error);
                }
                guard.disarm();
            }
        }
        if let Some(lock) = options.object_lock {
            remote.ensure_retention(&key, lock).await?;
        }
        Ok(size)
    }

    /// Discards the staged bytes: aborts the multipart upload, deletes the pieces after the
    /// first.
    pub async fn abort(self) -> Result<(), Error> {
        let aborted = match self.staged {
            Staged::Single(_) => Ok(()),
            Staged::Multipart { guard, .. } => guard.abort().await,
        };
        if !self.pieces.is_empty() {
            self.remote.delete(&self.pieces).await?;
        }
        aborted
    }
}

impl Remote {
    /// Reads `reader` to its end and stages it for `key`: see the module documentation.
    /// `progress` is called with the number of bytes read so far.
    ///
    /// A stream longer than `max_object_size` is stored in pieces (see
    /// [`piece_key`](crate::piece_key)): the pieces after the first are completed as they are
    /// read (without their first piece they are leftovers, never a backup), the first piece
    /// only by [`StagedUpload::complete`].
    pub async fn stage_upload<R: AsyncRead + Unpin>(
        &self,
        key: &str,
        reader: &mut R,
        options: &UploadOptions,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<StagedUpload, Error> {
        if options.replace {
            self.delete(&[key]).await?;
        }
        let max = self.upload.max_object_size;
        let pieced = crate::pieces::can_have_pieces(key);
        let piece_size = pieced.then_some(max);
        let mut total = 0u64;
        let first = self
            .stage_object(
                key,
                &mut (&mut *reader).take(max),
                options,
                piece_size,
                &mut total,
                progress,
            )
            .await?;
        let mut staged = StagedUpload {
            remote: self.clone(),
            key: key.to_owned(),
            size: total,
            options: options.clone(),
            piece_size,
            staged: first,
            pieces: Vec::new(),
        };
        if total < max {
            return Ok(staged);
        }
        match self
            .stage_pieces(key, reader, &mut staged, pieced, &mut total, progress)
            .await
        {
            Ok(()) => {
                staged.size = total;
                Ok(staged)
            }
            Err(error) => {
                // Best effort: the original error is the one to report.
                let _ = staged.abort().await;
                Err(error)
            }
        }
    }

    /// Stores the rest of a stream whose first `max_object_size` bytes are staged as pieces
    /// after the first, each completed at once, into `staged.pieces`. The last piece is
    /// shorter than the others: empty if the stream ends with a full one.
    async fn stage_pieces<R: AsyncRead + Unpin>(
        &self,
        key: &str,
        reader: &mut R,
        staged: &mut StagedUpload,
        pieced: bool,
        total: &mut u64,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(), Error> {
        let max = self.upload.max_object_size;
        if !pieced {
            // Is there anything left? A one-byte read tells.
            let mut probe = [0u8; 1];
            let read = reader.read(&mut probe).await.context(ReadStreamSnafu {
                bucket: self.bucket.clone(),
                key,
            })?;
            if read > 0 {
                return Err(Error::ObjectTooLarge {
                    bucket: self.bucket.clone(),
                    key: key.to_owned(),
                    max,
                });
            }
            return Ok(());
        }
        for piece in 1u32.. {
            let piece_key = crate::piece_key(key, piece).unwrap_or_default();
            let before = *total;
            let object = self
                .stage_object(
                    &piece_key,
                    &mut (&mut *reader).take(max),
                    &staged.options,
                    None,
                    total,
                    progress,
                )
                .await?;
            StagedUpload {
                remote: self.clone(),
                key: piece_key.clone(),
                size: *total - before,
                options: staged.options.clone(),
                piece_size: None,
                staged: object,
                pieces: Vec::new(),
            }
            .complete()
            .await?;
            staged.pieces.push(piece_key.clone());
            if let Some(hook) = &self.on_piece {
                (hook.0)(&piece_key);
            }
            if *total - before < max {
                break;
            }
        }
        Ok(())
    }

    /// Reads `reader` to its end and stages it as one object.
    async fn stage_object<R: AsyncRead + Unpin>(
        &self,
        key: &str,
        reader: &mut R,
        options: &UploadOptions,
        piece_size: Option<u64>,
        total: &mut u64,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Staged, Error> {
        let first_size = self.part_size(0);
        let first = self
            .read_part(key, reader, first_size, total, progress)
            .await?;
        if (first.len() as u64) < first_size {
            return Ok(Staged::Single(first));
        }
        // The first part is full: the stream may end right here, which only the next read
        // can tell. Reading the second part before starting a multipart upload keeps a
        // stream of exactly one part a single PutObject.
        let second_size = self.part_size(1);
        let second = self
            .read_part(key, reader, second_size, total, progress)
            .await?;
        if second.is_empty() {
            return Ok(Staged::Single(first));
        }
        let (guard, start) = self
            .start_multipart(key, options, piece_size, first, second)
            .await?;
        match self
            .upload_parts(key, reader, &guard, start, total, progress)
            .await
        {
            Ok(parts) => Ok(Staged::Multipart { guard, parts }),
            Err(error) => {
                // Best effort: the original error is the one to report.
                let _ = guard.abort().await;
                Err(error)
            }
        }
    }

    /// Aborts a multipart upload, discarding its parts.
    pub async fn abort_upload(&self, key: &str, upload_id: &str) -> Result<(), Error> {
        let counter = AttemptCounter::default();
        self.client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .customize()
            .interceptor(counter.clone())
            .send()
            .await
            .map_err(|e| {
                self.request_error("abort the multipart upload", Some(key), &counter, &e)
            })?;
        Ok(())
    }

    /// Uploads a whole stream to `key` at once (stage, then complete). Returns its size.
    pub async fn upload<R: AsyncRead + Unpin>(
        &self,
        key: &str,
        reader: &mut R,
        options: &UploadOptions,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<u64, Error> {
        self.stage_upload(key, reader, options, progress)
            .await?
            .complete()
            .await
    }

    /// Checks that `key` carries the retention `lock`, setting it with `PutObjectRetention`
    /// when the server ignored it on upload (moto does for multipart uploads). A backup the
    /// user believes immutable must be immutable: a server that cannot do it is an error.
    async fn ensure_retention(&self, key: &str, lock: ObjectLock) -> Result<(), Error> {
        match self.retention(key).await? {
            Some(kept) if kept.mode == lock.mode && kept.retain_until >= lock.retain_until => {
                Ok(())
            }
            _ => self.extend_retention(key, lock).await,
        }
    }

    fn part_size(&self, index: usize) -> u64 {
        part_size(
            index,
            self.upload.part_size,
            self.upload.parts_per_size_step,
        )
    }

    /// Reads up to `size` bytes: fewer only at the end of the stream.
    async fn read_part<R: AsyncRead + Unpin>(
        &self,
        key: &str,
        reader: &mut R,
        size: u64,
        total: &mut u64,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Bytes, Error> {
        let capacity = usize::try_from(size).unwrap_or(usize::MAX);
        let mut buffer = BytesMut::with_capacity(capacity);
        while buffer.len() < capacity {
            let remaining = (capacity - buffer.len()) as u64;
            let mut limited = (&mut *reader).take(remaining);
            let read = tokio::select! {
                read = limited.read_buf(&mut buffer) => read,
                () = self.cancel.cancelled() => return Err(self.cancelled(key)),
            }
            .context(ReadStreamSnafu {
                bucket: self.bucket.clone(),
                key,
            })?;
            if read == 0 {
                break;
            }
            *total += read as u64;
            progress(*total);
            for limit in &self.limits {
                let wait = limit.take(read);
                if !wait.is_zero() {
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = self.cancel.cancelled() => return Err(self.cancelled(key)),
                    }
                }
            }
        }
        Ok(buffer.freeze())
    }

    /// Puts a small object in one request, with a CRC-32C unless this server refused one.
    async fn put_single(
        &self,
        key: &str,
        body: Bytes,
        options: &UploadOptions,
        piece_size: Option<u64>,
    ) -> Result<(), Error> {
        if self.integrity() != Some(Integrity::Signed) {
            match self
                .put_object(key, &body, options, piece_size, Integrity::Crc32c)
                .await
            {
                Ok(()) => {
                    self.learn_integrity(Integrity::Crc32c);
                    return Ok(());
                }
                Err(error) if self.integrity().is_none() && refuses_checksums(&error) => {
                    self.learn_integrity(Integrity::Signed);
                }
                Err(error) => return Err(error),
            }
        }
        self.put_object(key, &body, options, piece_size, Integrity::Signed)
            .await
    }

    /// One `PutObject`, sent again while the server finds its bytes damaged.
    async fn put_object(
        &self,
        key: &str,
        body: &Bytes,
        options: &UploadOptions,
        piece_size: Option<u64>,
        integrity: Integrity,
    ) -> Result<(), Error> {
        let mut attempt = 1;
        loop {
            let counter = AttemptCounter::default();
            let mut request = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .body(ByteStream::from(body.clone()))
                .set_storage_class(options.storage_class.as_deref().map(StorageClass::from))
                .set_metadata(piece_metadata(piece_size));
            request = match integrity {
                // The algorithm too: servers want it with object lock; with the value given,
                // the SDK computes nothing itself.
                Integrity::Crc32c => request
                    .checksum_algorithm(ChecksumAlgorithm::Crc32C)
                    .checksum_crc32_c(crc32c(body)),
                Integrity::Signed => request.set_checksum_algorithm(signed_checksum(options)),
            };
            if let Some(lock) = options.object_lock {
                request = request
                    .object_lock_mode(lock_mode(lock.mode))
                    .object_lock_retain_until_date(date_time(lock.retain_until));
            }
            let request = request.customize().interceptor(counter.clone());
            let request = if self.unsigned(integrity) {
                request.disable_payload_signing()
            } else {
                request
            };
            match request.send().await {
                Ok(_) => return Ok(()),
                Err(e) => {
                    let error = self.request_error("upload", Some(key), &counter, &e);
                    if !(damaged_on_the_way(&error) && attempt < self.max_attempts) {
                        return Err(error);
                    }
                }
            }
            attempt += 1;
        }
    }

    /// Starts a multipart upload with the first two parts read. Until this server is known
    /// to take CRC-32C checksums, the first part goes alone and decides: if the server refuses
    /// it, that upload is aborted and another starts the signed way.
    async fn start_multipart(
        &self,
        key: &str,
        options: &UploadOptions,
        piece_size: Option<u64>,
        first: Bytes,
        second: Bytes,
    ) -> Result<(AbortGuard, PartsStart), Error> {
        let known = self.integrity();
        if known != Some(Integrity::Signed) {
            let guard = self
                .create_multipart_upload(key, options, piece_size, Integrity::Crc32c)
                .await;
            let guard = match guard {
                Err(error) if known.is_none() && refuses_checksums(&error) => None,
                guard => Some(guard?),
            };
            if let Some(guard) = guard {
                if known == Some(Integrity::Crc32c) {
                    return Ok((guard, PartsStart::new(Integrity::Crc32c, first, second)));
                }
                let probe = self.clone().upload_part(
                    key.to_owned(),
                    guard.upload_id().to_owned(),
                    1,
                    first.clone(),
                    Integrity::Crc32c,
                );
                let part = tokio::select! {
                    part = probe => part,
                    () = self.cancel.cancelled() => {
                        let _ = guard.abort().await;
                        return Err(self.cancelled(key));
                    }
                };
                match part {
                    Ok(part) => {
                        self.learn_integrity(Integrity::Crc32c);
                        let start = PartsStart {
                            integrity: Integrity::Crc32c,
                            index: 1,
                            next: Some(second),
                            queued: None,
                            completed: vec![part],
                        };
                        return Ok((guard, start));
                    }
                    Err(error) if refuses_checksums(&error) => {
                        let _ = guard.abort().await;
                    }
                    Err(error) => {
                        let _ = guard.abort().await;
                        return Err(error);
                    }
                }
            }
            self.learn_integrity(Integrity::Signed);
        }
        let guard = self
            .create_multipart_upload(key, options, piece_size, Integrity::Signed)
            .await?;
        Ok((guard, PartsStart::new(Integrity::Signed, first, second)))
    }

    async fn create_multipart_upload(
        &self,
        key: &str,
        options: &UploadOptions,
        piece_size: Option<u64>,
        integrity: Integrity,
    ) -> Result<AbortGuard, Error> {
        let counter = AttemptCounter::default();
        let mut request = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .set_storage_class(options.storage_class.as_deref().map(StorageClass::from))
            .set_metadata(piece_metadata(piece_size))
            .set_checksum_algorithm(match integrity {
                Integrity::Crc32c => Some(ChecksumAlgorithm::Crc32C),
                Integrity::Signed => signed_checksum(options),
            });
        if let Some(lock) = options.object_lock {
            request = request
                .object_lock_mode(lock_mode(lock.mode))
                .object_lock_retain_until_date(date_time(lock.retain_until));
        }
        let output = request
            .customize()
            .interceptor(counter.clone())
            .send()
            .await
            .map_err(|e| self.request_error("start a multipart upload", Some(key), &counter, &e))?;
        let upload_id = output.upload_id().ok_or_else(|| Error::MalformedResponse {
            operation: "start a multipart upload",
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            missing: "upload id",
        })?;
        Ok(AbortGuard {
            remote: self.clone(),
            key: key.to_owned(),
            upload_id: Some(upload_id.to_owned()),
        })
    }

    /// Uploads the parts already read and the rest of the stream, at most `parts_in_flight`
    /// at once. Returns the completed parts in order.
    async fn upload_parts<R: AsyncRead + Unpin>(
        &self,
        key: &str,
        reader: &mut R,
        guard: &AbortGuard,
        start: PartsStart,
        total: &mut u64,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Vec<CompletedPart>, Error> {
        let PartsStart {
            integrity,
            mut index,
            mut next,
            mut queued,
            mut completed,
        } = start;
        let mut tasks: JoinSet<Result<CompletedPart, Error>> = JoinSet::new();
        let mut at_end = false;
        loop {
            let Some(part) = next.take() else { break };
            // A part shorter than its size is the last one.
            at_end |= (part.len() as u64) < self.part_size(index);
            while tasks.len() >= self.upload.parts_in_flight {
                completed.push(self.join_part(key, &mut tasks).await?);
            }
            let part_number = i32::try_from(index + 1).unwrap_or(i32::MAX);
            tasks.spawn(self.clone().upload_part(
                key.to_owned(),
                guard.upload_id().to_owned(),
                part_number,
                part,
                integrity,
            ));
            index += 1;
            next = match queued.take() {
                Some(part) => Some(part),
                None if at_end => None,
                None => {
                    if index >= MAX_PARTS {
                        // Is there anything left? A one-byte read tells.
                        let mut probe = [0u8; 1];
                        let read = reader.read(&mut probe).await.context(ReadStreamSnafu {
                            bucket: self.bucket.clone(),
                            key,
                        })?;
                        if read > 0 {
                            return Err(Error::TooManyParts {
                                bucket: self.bucket.clone(),
                                key: key.to_owned(),
                            });
                        }
                        None
                    } else {
                        let part = self
                            .read_part(key, reader, self.part_size(index), total, progress)
                            .await?;
                        (!part.is_empty()).then_some(part)
                    }
                }
            };
        }
        while !tasks.is_empty() {
            completed.push(self.join_part(key, &mut tasks).await?);
        }
        completed.sort_by_key(CompletedPart::part_number);
        Ok(completed)
    }

    fn cancelled(&self, key: &str) -> Error {
        Error::Cancelled {
            bucket: self.bucket.clone(),
            key: key.to_owned(),
        }
    }

    async fn join_part(
        &self,
        key: &str,
        tasks: &mut JoinSet<Result<CompletedPart, Error>>,
    ) -> Result<CompletedPart, Error> {
        let joined = tokio::select! {
            joined = tasks.join_next() => joined,
            () = self.cancel.cancelled() => return Err(self.cancelled(key)),
        };
        match joined {
            Some(Ok(result)) => result,
            Some(Err(join_error)) if join_error.is_panic() => {
                std::panic::resume_unwind(join_error.into_panic())
            }
            // Tasks are only cancelled when the set is dropped, never while we wait on it.
            Some(Err(join_error)) => Err(Error::PartStopped {
                bucket: self.bucket.clone(),
                key: key.to_owned(),
                reason: join_error.to_string(),
            }),
            None => unreachable!("join_part is only called on a non-empty set"),
        }
    }

    /// Uploads one part, sent again while the server finds its bytes damaged.
    async fn upload_part(
        self,
        key: String,
        upload_id: String,
        part_number: i32,
        body: Bytes,
        integrity: Integrity,
    ) -> Result<CompletedPart, Error> {
        let checksum = (integrity == Integrity::Crc32c).then(|| crc32c(&body));
        let mut attempt = 1;
        loop {
            let counter = AttemptCounter::default();
            let request = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(&key)
                .upload_id(&upload_id)
                .part_number(part_number)
                .body(ByteStream::from(body.clone()))
                .set_checksum_algorithm(checksum.as_ref().map(|_| ChecksumAlgorithm::Crc32C))
                .set_checksum_crc32_c(checksum.clone())
                .customize()
                .interceptor(counter.clone());
            let request = if self.unsigned(integrity) {
                request.disable_payload_signing()
            } else {
                request
            };
            let error = match request.send().await {
                Ok(output) => {
                    return Ok(CompletedPart::builder()
                        .part_number(part_number)
                        .set_e_tag(output.e_tag().map(str::to_owned))
                        .set_checksum_crc32_c(
                            checksum.or_else(|| output.checksum_crc32_c().map(str::to_owned)),
                        )
                        .set_checksum_crc32(output.checksum_crc32().map(str::to_owned))
                        .build());
                }
                Err(e) => self.request_error("upload a part", Some(&key), &counter, &e),
            };
            if !(damaged_on_the_way(&error) && attempt < self.max_attempts) {
                return Err(error);
            }
            attempt += 1;
        }
    }

    /// Whether a request's payload goes unsigned: with a CRC-32C, or over HTTPS.
    fn unsigned(&self, integrity: Integrity) -> bool {
        integrity == Integrity::Crc32c || self.unsigned_payload
    }
}

/// The parts a multipart upload starts with: those already uploaded, the next ones read.
struct PartsStart {
    integrity: Integrity,
    /// The index of `next`.
    index: usize,
    next: Option<Bytes>,
    queued: Option<Bytes>,
    completed: Vec<CompletedPart>,
}

impl PartsStart {
    fn new(integrity: Integrity, first: Bytes, second: Bytes) -> PartsStart {
        PartsStart {
            integrity,
            index: 0,
            next: Some(first),
            queued: Some(second),
            completed: Vec::new(),
        }
    }
}

/// The user metadata of a backup's first piece: its piece size.
fn piece_metadata(piece_size: Option<u64>) -> Option<std::collections::HashMap<String, String>> {
    piece_size.map(|size| {
        std::collections::HashMap::from([(crate::PIECE_SIZE_METADATA.to_owned(), size.to_string())])
    })
}

/// The checksum the SDK adds to a signed upload: CRC-32 where object lock needs one.
fn signed_checksum(options: &UploadOptions) -> Option<ChecksumAlgorithm> {
    options.object_lock.map(|_| ChecksumAlgorithm::Crc32)
}

fn lock_mode(mode: LockMode) -> ObjectLockMode {
    match mode {
        LockMode::Governance => ObjectLockMode::Governance,
        LockMode::Compliance => ObjectLockMode::Compliance,
    }
}

pub(crate) fn date_time(instant: Timestamp) -> aws_sdk_s3::primitives::DateTime {
    aws_sdk_s3::primitives::DateTime::from_secs(instant.as_second())
}

/// Aborts its multipart upload unless disarmed. Dropped without `abort` or `disarm` (the
/// upload's future was cancelled), it aborts in the background.
#[derive(Debug)]
struct AbortGuard {
    remote: Remote,
    key: String,
    upload_id: Option<String>,
}

impl AbortGuard {
    fn upload_id(&self) -> &str {
        self.upload_id.as_deref().unwrap_or_default()
    }

    fn disarm(mut self) {
        self.upload_id = None;
    }

    async fn abort(mut self) -> Result<(), Error> {
        let Some(upload_id) = self.upload_id.take() else {
            return Ok(());
        };
        self.remote.abort_upload(&self.key, &upload_id).await
    }
}

impl Drop for AbortGuard {
    fn drop(&mut self) {
        if let Some(upload_id) = self.upload_id.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let remote = self.remote.clone();
            let key = self.key.clone();
            runtime.spawn(async move {
                let _ = remote.abort_upload(&key, &upload_id).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_sizes_grow_so_that_5_tib_fits() {
        let base = 8 << 20;
        assert_eq!(part_size(0, base, 900), base);
        assert_eq!(part_size(899, base, 900), base);
        assert_eq!(part_size(900, base, 900), 2 * base);
        assert_eq!(part_size(9999, base, 900), 5 << 30, "capped at 5 GiB");
        let capacity: u64 = (0..MAX_PARTS).map(|i| part_size(i, base, 900)).sum();
        assert!(capacity >= 5 << 40, "{capacity}");
        // The smallest allowed base also fits 5 TiB.
        let capacity: u64 = (0..MAX_PARTS).map(|i| part_size(i, 5 << 20, 900)).sum();
        assert!(capacity >= 5 << 40, "{capacity}");
    }

    #[test]
    fn part_sizes_stop_at_5_gib() {
        assert_eq!(part_size(0, 5 << 30, 1), 5 << 30);
        assert_eq!(part_size(5, 1 << 30, 1), 5 << 30);
        assert_eq!(part_size(usize::MAX, 8 << 20, 1), 5 << 30);
    }
}
