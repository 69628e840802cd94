//! The S3 operations against real servers (moto, Garage and SeaweedFS, started by
//! `cargo xtask`).
// Tests fail by panicking, helpers included.
#![allow(clippy::unwrap_used)]

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use btrfs2s3_s3::{
    Availability, BackupMeta, Error, LockMode, ObjectLock, Remote, RemoteConfig, Restore,
    RestoreTier, Secret, UploadOptions, UploadSettings, Verify,
};
use btrfs2s3_tests::{S3Server, TestEnv, unique_name};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use tokio::io::{AsyncRead, ReadBuf};
use uuid::Uuid;

const MIB: u64 = 1 << 20;

fn config(server: &S3Server, bucket: &str) -> RemoteConfig {
    RemoteConfig {
        endpoint_url: Some(server.endpoint.clone()),
        region: Some(server.region.clone()),
        access_key_id: Some(server.access_key_id.clone()),
        secret_access_key: Some(Secret::new(server.secret_access_key.clone())),
        upload: UploadSettings {
            part_size: 5 * MIB,
            parts_per_size_step: 1000,
            parts_in_flight: 3,
            ..UploadSettings::default()
        },
        ..RemoteConfig::new(bucket)
    }
}

/// A remote for a new, empty bucket on `server`.
async fn new_bucket(server: &S3Server, object_lock: bool) -> Remote {
    let bucket = unique_name("s3test");
    let remote = Remote::connect(&config(server, &bucket)).await.unwrap();
    remote
        .sdk_client()
        .create_bucket()
        .bucket(&bucket)
        .object_lock_enabled_for_bucket(object_lock)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{}: create bucket {bucket}: {e:?}", server.name));
    remote
}

async fn with_settings(remote: &Remote, server: &S3Server, upload: UploadSettings) -> Remote {
    Remote::connect(&RemoteConfig {
        upload,
        ..config(server, remote.bucket())
    })
    .await
    .unwrap()
}

/// Deterministic, incompressible bytes.
fn data(len: u64, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[3]
        })
        .collect()
}

fn no_progress(_: u64) {}

/// An error with all its causes, the way the CLI prints it.
fn report(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

async fn download(remote: &Remote, key: &str) -> Vec<u8> {
    let mut out = Vec::new();
    remote.download(key, &mut out, &no_progress).await.unwrap();
    out
}

async fn etag(remote: &Remote, key: &str) -> String {
    let head = remote
        .sdk_client()
        .head_object()
        .bucket(remote.bucket())
        .key(key)
        .send()
        .await
        .unwrap();
    head.e_tag()
        .unwrap_or_default()
        .trim_matches('"')
        .to_owned()
}

async fn pending_multipart_uploads(remote: &Remote) -> usize {
    let uploads = remote
        .sdk_client()
        .list_multipart_uploads()
        .bucket(remote.bucket())
        .send()
        .await
        .unwrap();
    uploads.uploads().len()
}

/// Puts an empty object under each key, 20 at a time.
async fn put_empty_objects(remote: &Remote, keys: &[String]) {
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in keys.chunks(keys.len().div_ceil(20).max(1)) {
        let (client, bucket, chunk) = (
            remote.sdk_client().clone(),
            remote.bucket().to_owned(),
            chunk.to_vec(),
        );
        tasks.spawn(async move {
            for key in chunk {
                let put = client.put_object().bucket(&bucket).key(&key);
                put.body(Vec::new().into()).send().await.unwrap();
            }
        });
    }
    tasks.join_all().await;
}

fn servers(test: &str) -> &'static [S3Server] {
    TestEnv::get(test).map_or(&[], |env| env.s3.as_slice())
}

fn backup_key(n: u128) -> String {
    let meta = BackupMeta {
        uuid: Uuid::from_u128(n),
        parent_uuid: Uuid::from_u128(7),
        send_parent_uuid: None,
        ctransid: i64::try_from(n).unwrap(),
        ctime: Timestamp::from_second(1_800_000_000).unwrap(),
    };
    meta.key("home", &TimeZone::UTC)
}

#[tokio::test]
async fn listing_pages_through_thousands_and_keeps_foreign_keys_apart() {
    for server in servers("listing_pages_through_thousands_and_keeps_foreign_keys_apart") {
        let remote = new_bucket(server, false).await;
        let mut keys: Vec<String> = (1..=1100).map(backup_key).collect();
        keys.extend((0..400).map(|n| format!("unrelated/file-{n}.txt")));
        put_empty_objects(&remote, &keys).await;

        let listing = remote.list().await.unwrap();
        assert_eq!(
            listing.pages, 2,
            "{}: 1500 keys take two pages",
            server.name
        );
        assert_eq!(listing.backups.len(), 1100, "{}", server.name);
        assert_eq!(listing.foreign.len(), 400, "{}", server.name);
        assert!(
            listing
                .foreign
                .iter()
                .all(|o| o.key.starts_with("unrelated/"))
        );
        let uuids: std::collections::BTreeSet<u128> = listing
            .backups
            .iter()
            .map(|b| b.meta.uuid.as_u128())
            .collect();
        assert_eq!(uuids, (1..=1100).collect());
    }
}

#[tokio::test]
async fn small_and_empty_streams_become_single_objects() {
    for server in servers("small_and_empty_streams_become_single_objects") {
        let remote = new_bucket(server, false).await;
        for (key, len) in [
            ("empty", 0),
            ("small", 1000),
            ("under-one-part", 5 * MIB - 1),
            ("one-part", 5 * MIB),
        ] {
            let bytes = data(len, len);
            let size = remote
                .upload(
                    key,
                    &mut bytes.as_slice(),
                    &UploadOptions::default(),
                    &no_progress,
                )
                .await
                .unwrap();
            assert_eq!(size, len, "{}: {key}", server.name);
            assert_eq!(
                download(&remote, key).await,
                bytes,
                "{}: {key}",
                server.name
            );
            // A multipart ETag ends in -<parts>; a PutObject ETag is a plain MD5.
            assert!(
                !etag(&remote, key).await.contains('-'),
                "{}: {key} is a single PutObject",
                server.name
            );
        }
        let listing = remote.list().await.unwrap();
        let empty = listing.foreign.iter().find(|o| o.key == "empty").unwrap();
        assert_eq!(
            empty.size, 0,
            "{}: an empty stream makes an empty object",
            server.name
        );
    }
}

#[tokio::test]
async fn larger_streams_become_multipart_uploads_with_growing_parts() {
    for server in servers("larger_streams_become_multipart_uploads_with_growing_parts") {
        let remote = new_bucket(server, false).await;
        let bytes = data(5 * MIB + 1, 1);
        remote
            .upload(
                "just-over",
                &mut bytes.as_slice(),
                &UploadOptions::default(),
                &no_progress,
            )
            .await
            .unwrap();
        assert_eq!(
            download(&remote, "just-over").await,
            bytes,
            "{}",
            server.name
        );
        assert!(
            etag(&remote, "just-over").await.ends_with("-2"),
            "{}: two parts",
            server.name
        );

        // Parts double every 2 parts: 5, 5, 10, 10, then 15 of 20 MiB. Without growth the
        // same 45 MiB would take 9 parts.
        let growing = with_settings(
            &remote,
            server,
            UploadSettings {
                part_size: 5 * MIB,
                parts_per_size_step: 2,
                parts_in_flight: 2,
                ..UploadSettings::default()
            },
        )
        .await;
        let bytes = data(45 * MIB, 2);
        let seen = std::sync::atomic::AtomicU64::new(0);
        let progress = |n: u64| seen.store(n, std::sync::atomic::Ordering::Relaxed);
        let size = growing
            .upload(
                "growing",
                &mut bytes.as_slice(),
                &UploadOptions::default(),
                &progress,
            )
            .await
            .unwrap();
        assert_eq!(size, 45 * MIB);
        assert_eq!(seen.into_inner(), 45 * MIB, "progress reaches the total");
        assert!(
            etag(&remote, "growing").await.ends_with("-5"),
            "{}: five parts",
            server.name
        );
        assert_eq!(download(&remote, "growing").await, bytes, "{}", server.name);
        assert_eq!(
            pending_multipart_uploads(&remote).await,
            0,
            "{}",
            server.name
        );
    }
}

/// Yields `good` bytes of data, then fails like a producer that died.
struct FailingReader {
    data: Vec<u8>,
    position: usize,
}

impl AsyncRead for FailingReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.position >= self.data.len() {
            return Poll::Ready(Err(io::Error::other("btrfs send died")));
        }
        let n = buf
            .remaining()
            .min(self.data.len() - self.position)
            .min(64 * 1024);
        let start = self.position;
        buf.put_slice(&self.data[start..start + n]);
        self.position += n;
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn a_failing_stream_leaves_no_object_and_no_multipart_upload() {
    for server in servers("a_failing_stream_leaves_no_object_and_no_multipart_upload") {
        let remote = new_bucket(server, false).await;
        for (key, good) in [("fails-early", MIB), ("fails-late", 17 * MIB)] {
            let mut reader = FailingReader {
                data: data(good, 3),
                position: 0,
            };
            let error = remote
                .upload(key, &mut reader, &UploadOptions::default(), &no_progress)
                .await
                .unwrap_err();
            assert!(
                matches!(error, Error::ReadStream { .. }),
                "{}: {error}",
                server.name
            );
            let message = error.to_string();
            assert!(
                message.contains(key) && message.contains(remote.bucket()),
                "{message}"
            );
        }
        let listing = remote.list().await.unwrap();
        assert!(
            listing.foreign.is_empty() && listing.backups.is_empty(),
            "{}: no object",
            server.name
        );
        assert_eq!(
            pending_multipart_uploads(&remote).await,
            0,
            "{}: no multipart upload",
            server.name
        );

        // A staged upload the caller abandons (its producer exited non-zero) leaves nothing.
        let bytes = data(12 * MIB, 4);
        let staged = remote
            .stage_upload(
                "abandoned",
                &mut bytes.as_slice(),
                &UploadOptions::default(),
                &no_progress,
            )
            .await
            .unwrap();
        assert_eq!(staged.size(), 12 * MIB);
        assert_eq!(
            pending_multipart_uploads(&remote).await,
            1,
            "{}: staged, not complete",
            server.name
        );
        assert!(
            remote.list().await.unwrap().foreign.is_empty(),
            "{}: no object before completion",
            server.name
        );
        staged.abort().await.unwrap();
        assert_eq!(
            pending_multipart_uploads(&remote).await,
            0,
            "{}",
            server.name
        );
        assert!(
            remote.list().await.unwrap().foreign.is_empty(),
            "{}",
            server.name
        );
    }
}

#[tokio::test]
async fn delete_removes_1500_keys_and_checks_each() {
    for server in servers("delete_removes_1500_keys_and_checks_each") {
        let remote = new_bucket(server, false).await;
        let keys: Vec<String> = (0..1500).map(|n| format!("delete/{n}")).collect();
        put_empty_objects(&remote, &keys).await;
        remote
            .sdk_client()
            .put_object()
            .bucket(remote.bucket())
            .key("keep-me")
            .body(Vec::new().into())
            .send()
            .await
            .unwrap();

        remote
            .delete(&keys)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", server.name));
        let listing = remote.list().await.unwrap();
        let left: Vec<&str> = listing.foreign.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(left, ["keep-me"], "{}", server.name);
    }
}

#[tokio::test]
async fn wrong_credentials_and_missing_buckets_are_clear_errors() {
    for server in servers("wrong_credentials_and_missing_buckets_are_clear_errors") {
        let missing = Remote::connect(&config(server, "no-such-bucket-here"))
            .await
            .unwrap();
        let message = report(&missing.list().await.unwrap_err());
        assert!(
            message.contains("no-such-bucket-here") && message.contains("NoSuchBucket"),
            "{}: {message}",
            server.name
        );

        let remote = new_bucket(server, false).await;
        let wrong = Remote::connect(&RemoteConfig {
            secret_access_key: Some(Secret::new("definitely-wrong")),
            ..config(server, remote.bucket())
        })
        .await
        .unwrap();
        match wrong
            .upload(
                "x",
                &mut &b"data"[..],
                &UploadOptions::default(),
                &no_progress,
            )
            .await
        {
            // moto accepts any credentials.
            Ok(_) if server.name == "moto" => {}
            Ok(_) => panic!("{}: wrong credentials accepted", server.name),
            Err(error) => {
                let message = report(&error);
                assert!(
                    !message.contains("definitely-wrong"),
                    "{}: the secret leaked: {message}",
                    server.name
                );
                assert!(
                    message.contains(remote.bucket()) && message.contains("attempt"),
                    "{}: {message}",
                    server.name
                );
            }
        }
    }
}

#[tokio::test]
async fn storage_class_and_object_lock_are_set_on_upload() {
    for server in servers("storage_class_and_object_lock_are_set_on_upload") {
        let remote = new_bucket(server, server.object_lock).await;
        let retain_until = Timestamp::from_second(Timestamp::now().as_second() + 86_400).unwrap();
        let options = UploadOptions {
            storage_class: Some("STANDARD_IA".to_owned()),
            object_lock: server.object_lock.then_some(ObjectLock {
                mode: LockMode::Governance,
                retain_until,
            }),
            replace: false,
        };
        for (key, len) in [("single", MIB), ("multi", 11 * MIB)] {
            let bytes = data(len, 5);
            let result = remote
                .upload(key, &mut bytes.as_slice(), &options, &no_progress)
                .await;
            if !server.storage_classes {
                // Garage either ignores what it does not support or says so clearly.
                if let Err(error) = result {
                    let message = report(&error);
                    assert!(message.contains(key), "{}: {message}", server.name);
                    continue;
                }
                assert_eq!(
                    download(&remote, key).await,
                    bytes,
                    "{}: {key}",
                    server.name
                );
                continue;
            }
            result.unwrap_or_else(|e| panic!("{}: {key}: {e}", server.name));
            let head = remote
                .sdk_client()
                .head_object()
                .bucket(remote.bucket())
                .key(key)
                .send()
                .await
                .unwrap();
            assert_eq!(
                head.storage_class()
                    .map(aws_sdk_s3::types::StorageClass::as_str),
                Some("STANDARD_IA"),
                "{}: {key}",
                server.name
            );
            if server.object_lock {
                assert_eq!(
                    head.object_lock_mode()
                        .map(aws_sdk_s3::types::ObjectLockMode::as_str),
                    Some("GOVERNANCE"),
                    "{}: {key}",
                    server.name
                );
                let until = head
                    .object_lock_retain_until_date()
                    .map(aws_sdk_s3::primitives::DateTime::secs);
                assert_eq!(
                    until,
                    Some(retain_until.as_second()),
                    "{}: {key}",
                    server.name
                );
            }
            let listing = remote.list().await.unwrap();
            let listed = listing.foreign.iter().find(|o| o.key == key).unwrap();
            assert_eq!(
                listed.storage_class.as_deref(),
                Some("STANDARD_IA"),
                "{}: {key}",
                server.name
            );
        }
        if !server.object_lock {
            // A server without object lock must not leave the user believing a backup is
            // immutable: the upload reports it.
            let options = UploadOptions {
                object_lock: Some(ObjectLock {
                    mode: LockMode::Compliance,
                    retain_until,
                }),
                ..UploadOptions::default()
            };
            let error = remote
                .upload("locked", &mut &b"data"[..], &options, &no_progress)
                .await
                .unwrap_err();
            let message = report(&error);
            assert!(
                message.contains("object-lock retention") && message.contains("locked"),
                "{}: {message}",
                server.name
            );
        }
    }
}

#[tokio::test]
async fn verify_checks_certificates_unless_told_otherwise() {
    let Some(env) = TestEnv::get("verify_checks_certificates_unless_told_otherwise") else {
        return;
    };
    let server = &env.s3_tls;
    let bucket = unique_name("tls");
    let connect = |verify: Verify| {
        let config = RemoteConfig {
            verify,
            ..config(server, &bucket)
        };
        async move { Remote::connect(&config).await.unwrap() }
    };
    let bundle = server
        .ca_bundle
        .clone()
        .expect("the TLS server has a certificate");

    // The system trust store does not know the self-signed certificate.
    let error = connect(Verify::System).await.list().await.unwrap_err();
    let message = report(&error);
    assert!(
        message.contains(&bucket) && message.to_lowercase().contains("certificate"),
        "{message}"
    );

    // Trusting its certificate, or not verifying, works.
    let trusting = connect(Verify::CaBundle(bundle)).await;
    trusting
        .sdk_client()
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    trusting
        .upload(
            "a",
            &mut &b"over TLS"[..],
            &UploadOptions::default(),
            &no_progress,
        )
        .await
        .unwrap();
    // Over TLS, bodies go unsigned (TLS guards them): a multipart upload arrives whole.
    let big: Vec<u8> = (0..20u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    trusting
        .upload("b", &mut &big[..], &UploadOptions::default(), &no_progress)
        .await
        .unwrap();
    let insecure = connect(Verify::Off).await;
    assert_eq!(download(&insecure, "a").await, b"over TLS");
    assert!(
        download(&insecure, "b").await == big,
        "the multipart upload over TLS differs"
    );

    // A bundle that cannot be read is a clear error naming it.
    let config = RemoteConfig {
        verify: Verify::CaBundle("/nonexistent/ca.pem".into()),
        ..config(server, &bucket)
    };
    let message = report(&Remote::connect(&config).await.unwrap_err());
    assert!(message.contains("/nonexistent/ca.pem"), "{message}");
}

/// A lock until `seconds` from now.
fn lock_in(mode: LockMode, seconds: i64) -> ObjectLock {
    ObjectLock {
        mode,
        retain_until: Timestamp::from_second(Timestamp::now().as_second() + seconds).unwrap(),
    }
}

async fn put(remote: &Remote, key: &str, options: &UploadOptions) {
    remote
        .upload(key, &mut &b"backup"[..], options, &no_progress)
        .await
        .unwrap_or_else(|e| panic!("{}: upload {key}: {}", remote.bucket(), report(&e)));
}

#[tokio::test]
async fn object_lock_is_detected_read_and_extended_where_the_server_has_it() {
    for server in servers("object_lock_is_detected_read_and_extended_where_the_server_has_it") {
        let plain = new_bucket(server, false).await;
        assert!(
            !plain.object_lock_enabled().await.unwrap(),
            "{}",
            server.name
        );
        assert!(!plain.versioned().await.unwrap(), "{}", server.name);
        put(&plain, "unlocked", &UploadOptions::default()).await;
        assert_eq!(plain.retention("unlocked").await.unwrap(), None);
        if !server.object_lock {
            // Asking anyway fails, naming what was asked.
            let error = plain
                .extend_retention("unlocked", lock_in(LockMode::Governance, 60))
                .await
                .unwrap_err();
            assert!(
                report(&error).contains("object-lock retention"),
                "{}: {}",
                server.name,
                report(&error)
            );
            continue;
        }
        let locked = new_bucket(server, true).await;
        assert!(
            locked.object_lock_enabled().await.unwrap(),
            "{}",
            server.name
        );
        assert!(locked.versioned().await.unwrap(), "{}", server.name);
        let first = lock_in(LockMode::Governance, 3600);
        let options = UploadOptions {
            object_lock: Some(first),
            ..UploadOptions::default()
        };
        put(&locked, "a", &options).await;
        put(&locked, "b", &UploadOptions::default()).await;
        let found = locked.retentions(&["a", "b"]).await.unwrap();
        assert_eq!(found, [Some(first), None], "{}", server.name);
        // Extended; the server keeps the later date.
        let later = lock_in(LockMode::Governance, 7200);
        locked.extend_retention("a", later).await.unwrap();
        assert_eq!(
            locked.retention("a").await.unwrap(),
            Some(later),
            "{}",
            server.name
        );
        // Locked versions cannot be deleted, and the error names them.
        let error = locked.delete_all_versions(&["a"]).await.unwrap_err();
        let Error::DeleteFailed { failures, .. } = &error else {
            panic!("{}: {}", server.name, report(&error))
        };
        assert_eq!(failures.len(), 1, "{}: {failures:?}", server.name);
        assert!(failures[0].key.starts_with("a (version "), "{failures:?}");
        assert!(locked.retention("a").await.unwrap().is_some());
    }
}

#[tokio::test]
async fn deleting_all_versions_leaves_no_version_and_no_delete_marker() {
    for server in servers("deleting_all_versions_leaves_no_version_and_no_delete_marker") {
        if !server.object_lock {
            continue;
        }
        // A versioned bucket (object lock implies versions) with two versions of one key.
        let bucket = new_bucket(server, true).await;
        for _ in 0..2 {
            put(&bucket, "twice", &UploadOptions::default()).await;
        }
        put(&bucket, "other", &UploadOptions::default()).await;
        bucket.delete_all_versions(&["twice"]).await.unwrap();
        let versions = bucket
            .sdk_client()
            .list_object_versions()
            .bucket(bucket.bucket())
            .send()
            .await
            .unwrap();
        let keys: Vec<&str> = versions
            .versions()
            .iter()
            .filter_map(|v| v.key())
            .chain(versions.delete_markers().iter().filter_map(|m| m.key()))
            .collect();
        assert_eq!(keys, ["other"], "{}", server.name);
    }
}

#[tokio::test]
async fn archived_objects_are_restored_before_they_are_read() {
    for server in servers("archived_objects_are_restored_before_they_are_read") {
        if !server.storage_classes {
            continue;
        }
        let remote = new_bucket(server, false).await;
        let options = UploadOptions {
            storage_class: Some("DEEP_ARCHIVE".to_owned()),
            ..UploadOptions::default()
        };
        put(&remote, "deep", &options).await;
        put(
            &remote,
            "ir",
            &UploadOptions {
                storage_class: Some("GLACIER_IR".to_owned()),
                ..UploadOptions::default()
            },
        )
        .await;
        assert_eq!(
            remote.availability("ir").await.unwrap(),
            Availability::Readable
        );
        let before = remote.availability("deep").await.unwrap();
        assert_eq!(before, Availability::Archived, "{}", server.name);
        let requested = remote
            .request_restore("deep", RestoreTier::Standard, 1)
            .await
            .unwrap();
        if server.archive {
            assert_eq!(requested, Restore::Requested, "{}", server.name);
            // moto finishes a restore at once; asking again is not an error.
            assert_eq!(
                remote.availability("deep").await.unwrap(),
                Availability::Restored
            );
            remote
                .request_restore("deep", RestoreTier::Standard, 1)
                .await
                .unwrap();
        } else {
            // The server does not archive: the class is a label, the object is readable.
            assert_eq!(requested, Restore::NotNeeded, "{}", server.name);
        }
        let mut read = Vec::new();
        remote
            .download("deep", &mut read, &no_progress)
            .await
            .unwrap();
        assert_eq!(read, b"backup");
    }
}

#[tokio::test]
async fn the_listing_tells_the_servers_clock() {
    for server in servers("the_listing_tells_the_servers_clock") {
        let remote = new_bucket(server, false).await;
        let listing = remote.list().await.unwrap();
        let server_time = listing
            .server_time
            .unwrap_or_else(|| panic!("{}: no Date header", server.name));
        let skew = (server_time.as_second() - Timestamp::now().as_second()).abs();
        assert!(skew < 60, "{}: {server_time}", server.name);
    }
}
