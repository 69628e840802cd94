//! The integration-test environment, as `cargo xtask` describes it.
//!
//! `cargo xtask test` and `cargo xtask integration` create two loopback btrfs filesystems and
//! start three S3 servers (moto, Garage and SeaweedFS), then run the tests with `BTRFS2S3_TEST_ENV` naming
//! a JSON file that describes them. Tests call [`TestEnv::get`]: without that variable (plain
//! `cargo test`) it prints how to run them and returns `None`, and the test returns early.
#![forbid(unsafe_code)]

pub mod http;
pub mod proxy;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use serde::Deserialize;

/// The variable `cargo xtask` sets.
pub const ENV_VAR: &str = "BTRFS2S3_TEST_ENV";

/// Two btrfs filesystems and the S3 servers.
#[derive(Debug, Clone, Deserialize)]
pub struct TestEnv {
    /// A mounted btrfs filesystem for sources and snapshots.
    pub btrfs: PathBuf,
    /// A second mounted btrfs filesystem, for `btrfs receive`.
    pub btrfs_receive: PathBuf,
    /// The S3 servers, each a separate process on a loopback port.
    pub s3: Vec<S3Server>,
    /// moto behind HTTPS with a self-signed certificate (`ca_bundle` holds it).
    pub s3_tls: S3Server,
}

/// One S3 server of the environment.
#[derive(Debug, Clone, Deserialize)]
pub struct S3Server {
    /// `moto`, `garage` or `seaweedfs`.
    pub name: String,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// The region to sign requests for.
    pub region: String,
    /// Credentials that may create buckets.
    pub access_key_id: String,
    /// The secret of `access_key_id`.
    pub secret_access_key: String,
    /// Whether the server supports object lock (retention on upload).
    pub object_lock: bool,
    /// Whether the server reports storage classes.
    pub storage_classes: bool,
    /// Whether archive classes (`DEEP_ARCHIVE`) need `RestoreObject` before a read.
    #[serde(default)]
    pub archive: bool,
    /// The certificate an HTTPS server uses (self-signed), if it uses HTTPS.
    #[serde(default)]
    pub ca_bundle: Option<PathBuf>,
    /// A bucket with a key that may only read it (Garage has per-key permissions).
    #[serde(default)]
    pub read_only: Option<ReadOnly>,
}

/// A bucket and a key that may only read it.
#[derive(Debug, Clone, Deserialize)]
pub struct ReadOnly {
    /// The bucket.
    pub bucket: String,
    /// The key.
    pub access_key_id: String,
    /// Its secret.
    pub secret_access_key: String,
}

impl TestEnv {
    /// The environment, or `None` (after saying how to get one) when the tests run without it.
    ///
    /// # Panics
    ///
    /// When the file named by `BTRFS2S3_TEST_ENV` cannot be read or parsed: a broken
    /// environment must fail the tests, not skip them.
    #[must_use]
    pub fn get(test: &str) -> Option<&'static TestEnv> {
        static ENV: OnceLock<Option<TestEnv>> = OnceLock::new();
        let env = ENV.get_or_init(|| {
            let path = std::env::var_os(ENV_VAR)?;
            let json = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", PathBuf::from(&path).display()));
            Some(serde_json::from_str(&json).expect("the test environment file is valid JSON"))
        });
        if env.is_none() {
            eprintln!(
                "skipping {test}: it needs root, btrfs and the S3 test servers; \
                 run `cargo xtask integration` (or `cargo xtask test`)"
            );
        }
        env.as_ref()
    }
}

/// A name no other test of this run uses: `<prefix>-<pid>-<n>`, lowercase, valid as a bucket
/// name and as a file name.
#[must_use]
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}
