//! Helpers for the end-to-end tests: a source subvolume with a snapshot directory, buckets
//! on the test S3 servers, a config file, and the real `btrfs2s3` binary.
#![allow(dead_code)] // each test file uses a different part

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use btrfs2s3_s3::{Remote, RemoteConfig, Secret};
use btrfs2s3_tests::{S3Server, TestEnv, unique_name};

/// The `btrfs2s3` binary, built if needed (plain `cargo test -p btrfs2s3-tests` does not
/// build other packages' binaries).
pub fn binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "-p", "btrfs2s3-cli"])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building btrfs2s3 failed");
        // target/debug/deps/<test> -> target/debug/btrfs2s3
        let exe = std::env::current_exe().expect("the test binary has a path");
        exe.parent()
            .and_then(Path::parent)
            .expect("in target/<profile>/deps")
            .join("btrfs2s3")
    })
}

/// Runs a shell-free command and insists on success.
pub fn run(command: &mut Command) -> String {
    let output = command.output().expect("the command runs");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A test setup: `dir/source` (a subvolume), `dir/snapshots`, buckets, a config.
pub struct Fixture {
    pub env: &'static TestEnv,
    pub dir: PathBuf,
    pub source: PathBuf,
    pub snapshots: PathBuf,
    pub config: PathBuf,
    pub remotes: Vec<(String, &'static S3Server, String)>,
    pub runtime: tokio::runtime::Runtime,
}

impl Fixture {
    /// A fixture with one source; `servers` name the S3 servers of the environment to use,
    /// each as a remote with a new bucket.
    pub fn new(env: &'static TestEnv, test: &str, servers: &[&str]) -> Fixture {
        Fixture::with_buckets(env, test, servers, false)
    }

    /// A fixture whose buckets have Object Lock enabled.
    pub fn locked(env: &'static TestEnv, test: &str, servers: &[&str]) -> Fixture {
        Fixture::with_buckets(env, test, servers, true)
    }

    fn with_buckets(
        env: &'static TestEnv,
        test: &str,
        servers: &[&str],
        object_lock: bool,
    ) -> Fixture {
        let dir = env.btrfs.join(unique_name(test));
        std::fs::create_dir(&dir).unwrap();
        let source = dir.join("source");
        run(Command::new("btrfs")
            .args(["subvolume", "create"])
            .arg(&source));
        let snapshots = dir.join("snapshots");
        std::fs::create_dir(&snapshots).unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let remotes = servers
            .iter()
            .map(|name| {
                let server = env
                    .s3
                    .iter()
                    .find(|s| s.name == *name)
                    .expect("a server of the environment");
                let bucket = unique_name("e2e");
                let remote = runtime
                    .block_on(Remote::connect(&remote_config(server, &bucket)))
                    .unwrap();
                runtime
                    .block_on(
                        remote
                            .sdk_client()
                            .create_bucket()
                            .bucket(&bucket)
                            .object_lock_enabled_for_bucket(object_lock)
                            .send(),
                    )
                    .unwrap();
                ((*name).to_owned(), server, bucket)
            })
            .collect();
        let fixture = Fixture {
            env,
            config: dir.join("config.yaml"),
            dir,
            source,
            snapshots,
            remotes,
            runtime,
        };
        fixture.write_config("1y 1m 1d", &[]);
        fixture
    }

    /// The YAML of the `remotes:` section.
    pub fn remotes_yaml(&self) -> String {
        let mut yaml = String::from("remotes:\n");
        for (id, server, bucket) in &self.remotes {
            let _ = write!(
                yaml,
                "  - id: {id}\n    s3:\n      bucket: {bucket}\n      endpoint:\n        endpoint_url: {}\n        region_name: {}\n        aws_access_key_id: {}\n        aws_secret_access_key: {}\n",
                server.endpoint, server.region, server.access_key_id, server.secret_access_key
            );
        }
        yaml
    }

    /// Writes a config with one source uploading to every remote with `preserve`, through
    /// `pipe_through`.
    pub fn write_config(&self, preserve: &str, pipe_through: &[&[&str]]) {
        let mut yaml = format!(
            "timezone: Europe/Berlin\nsources:\n  - path: {}\n    snapshots: {}\n    upload_to_remotes:\n",
            self.source.display(),
            self.snapshots.display()
        );
        for (id, _, _) in &self.remotes {
            let _ = write!(yaml, "      - id: {id}\n        preserve: {preserve}\n");
            if !pipe_through.is_empty() {
                yaml.push_str("        pipe_through:\n");
                for command in pipe_through {
                    let _ = writeln!(yaml, "          - [{}]", command.join(", "));
                }
            }
        }
        yaml.push_str(&self.remotes_yaml());
        self.write_raw_config(&yaml);
    }

    /// Writes a config (time zone UTC) with one source uploading to remote 0 only, with
    /// `preserve`, reaching its server at `endpoint` (a proxy in front of it), with
    /// `s3_settings` added to its `s3:` section (lines indented by six spaces).
    pub fn write_config_through(&self, endpoint: &str, preserve: &str, s3_settings: &str) {
        let (id, server, bucket) = &self.remotes[0];
        let yaml = format!(
            "timezone: UTC\nsources:\n  - path: {}\n    snapshots: {}\n    upload_to_remotes:\n      - id: {id}\n        preserve: {preserve}\nremotes:\n  - id: {id}\n    s3:\n      bucket: {bucket}\n{s3_settings}      endpoint:\n        endpoint_url: {endpoint}\n        region_name: {}\n        aws_access_key_id: {}\n        aws_secret_access_key: {}\n",
            self.source.display(),
            self.snapshots.display(),
            server.region,
            server.access_key_id,
            server.secret_access_key,
        );
        self.write_raw_config(&yaml);
    }

    pub fn write_raw_config(&self, yaml: &str) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(&self.config, yaml).unwrap();
        std::fs::set_permissions(&self.config, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    /// Runs `btrfs2s3 <args> <config>`; whatever happened, no secret is in its output.
    pub fn btrfs2s3(&self, args: &[&str]) -> Output {
        let output = Command::new(binary())
            .args(args)
            .arg(&self.config)
            .output()
            .expect("btrfs2s3 runs");
        self.assert_no_secret(&output, &args.join(" "));
        output
    }

    /// No secret access key of the config appears on the standard output or error of a run.
    pub fn assert_no_secret(&self, output: &Output, context: &str) {
        for (id, server, _) in &self.remotes {
            let secret = server.secret_access_key.as_str();
            for (stream, bytes) in [("stdout", &output.stdout), ("stderr", &output.stderr)] {
                assert!(
                    !String::from_utf8_lossy(bytes).contains(secret),
                    "{context}: the secret access key of {id} is on {stream}"
                );
            }
        }
    }

    /// Runs `btrfs2s3 update --force <extra> <config>` and insists on success.
    pub fn update(&self, extra: &[&str]) -> String {
        let mut args = vec!["update", "--force"];
        args.extend_from_slice(extra);
        let output = self.btrfs2s3(&args);
        assert!(
            output.status.success(),
            "update failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// A `--pretend` run plans nothing.
    pub fn assert_nothing_to_do(&self, context: &str) {
        let output = self.btrfs2s3(&["update", "--pretend"]);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("actions: none"),
            "{context}: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Creates another subvolume `name` in the fixture's directory (a second source).
    pub fn subvolume(&self, name: &str) -> PathBuf {
        let path = self.dir.join(name);
        run(Command::new("btrfs")
            .args(["subvolume", "create"])
            .arg(&path));
        path
    }

    /// Writes a file into the source and commits it.
    pub fn write(&self, name: &str, contents: &[u8]) {
        std::fs::write(self.source.join(name), contents).unwrap();
        run(Command::new("btrfs")
            .args(["filesystem", "sync"])
            .arg(&self.source));
    }

    /// The names in the snapshot directory.
    pub fn snapshot_names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.snapshots)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// A connection to remote `index`.
    pub fn remote(&self, index: usize) -> Remote {
        let (_, server, bucket) = &self.remotes[index];
        self.runtime
            .block_on(Remote::connect(&remote_config(server, bucket)))
            .unwrap()
    }

    /// How many multipart uploads are pending (started, neither completed nor aborted) in
    /// the bucket of remote `index`.
    pub fn pending_uploads(&self, index: usize) -> usize {
        let client = self.remote(index);
        self.runtime
            .block_on(
                client
                    .sdk_client()
                    .list_multipart_uploads()
                    .bucket(client.bucket())
                    .send(),
            )
            .unwrap()
            .uploads()
            .len()
    }

    /// Every key in remote `index` (every piece of every backup too), sorted.
    pub fn keys(&self, index: usize) -> Vec<String> {
        let listing = self.runtime.block_on(self.remote(index).list()).unwrap();
        let mut keys: Vec<String> = listing
            .backups
            .iter()
            .chain(&listing.broken)
            .flat_map(|b| std::iter::once(&b.object).chain(&b.pieces))
            .chain(&listing.leftovers)
            .chain(&listing.foreign)
            .map(|o| o.key.clone())
            .collect();
        keys.sort();
        keys
    }

    /// The object's bytes.
    pub fn download(&self, index: usize, key: &str) -> Vec<u8> {
        let mut bytes = Vec::new();
        self.runtime
            .block_on(self.remote(index).download(key, &mut bytes, &|_| {}))
            .unwrap();
        bytes
    }

    /// Puts an object directly.
    pub fn put(&self, index: usize, key: &str, body: &[u8]) {
        let remote = self.remote(index);
        self.runtime
            .block_on(
                remote
                    .sdk_client()
                    .put_object()
                    .bucket(remote.bucket())
                    .key(key)
                    .body(body.to_vec().into())
                    .send(),
            )
            .unwrap();
    }

    /// Receives a stream file with `btrfs receive` into a fresh directory of the second
    /// filesystem; returns that directory.
    pub fn receive(&self, streams: &[&[u8]]) -> PathBuf {
        let target = self.env.btrfs_receive.join(unique_name("receive"));
        std::fs::create_dir(&target).unwrap();
        for (n, stream) in streams.iter().enumerate() {
            let file = target.join(format!(".stream-{n}"));
            std::fs::write(&file, stream).unwrap();
            run(Command::new("btrfs")
                .args(["receive", "-f"])
                .arg(&file)
                .arg(&target));
            std::fs::remove_file(&file).unwrap();
        }
        target
    }
}

pub fn remote_config(server: &S3Server, bucket: &str) -> RemoteConfig {
    RemoteConfig {
        endpoint_url: Some(server.endpoint.clone()),
        region: Some(server.region.clone()),
        access_key_id: Some(server.access_key_id.clone()),
        secret_access_key: Some(Secret::new(server.secret_access_key.clone())),
        ..RemoteConfig::new(bucket)
    }
}

/// One line per name: path, type and mode, owner, size, mtime, device, content hash or
/// symlink target, extended attributes, and the first path of its hard link group.
///
/// Directories' mtimes are left out: `btrfs receive` leaves a directory that the stream's
/// temporary names passed through with the time of the receive, where btrfs2s3 gives it its
/// time in the snapshot; [`directory_times`] compares those with the snapshot itself.
pub fn manifest(root: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    let mut groups: HashMap<u64, String> = HashMap::new();
    let mut pending = vec![PathBuf::new()];
    let mut paths = Vec::new();
    while let Some(path) = pending.pop() {
        let full = if path.as_os_str().is_empty() {
            root.to_path_buf()
        } else {
            root.join(&path)
        };
        if std::fs::symlink_metadata(&full).unwrap().is_dir() {
            for entry in std::fs::read_dir(&full).unwrap() {
                pending.push(path.join(entry.unwrap().file_name()));
            }
        }
        paths.push(path);
    }
    paths.sort();
    for path in paths {
        let full = if path.as_os_str().is_empty() {
            root.to_path_buf()
        } else {
            root.join(&path)
        };
        let meta = std::fs::symlink_metadata(&full).unwrap();
        let kind = meta.file_type();
        let content = if kind.is_file() {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            std::fs::read(&full).unwrap().hash(&mut hasher);
            format!("{:016x}", hasher.finish())
        } else if kind.is_symlink() {
            String::from_utf8_lossy(std::fs::read_link(&full).unwrap().as_os_str().as_bytes())
                .into_owned()
        } else {
            String::new()
        };
        let mut xattrs = BTreeMap::new();
        let mut names = vec![0u8; 4096];
        let n = rustix::fs::llistxattr(&full, &mut names).unwrap();
        // `btrfs.` attributes are btrfs's properties (compression), which other filesystems
        // do not have.
        for name in names[..n]
            .split(|&b| b == 0)
            .filter(|n| !n.is_empty() && !n.starts_with(b"btrfs."))
        {
            let mut value = vec![0u8; 4096];
            let length =
                rustix::fs::lgetxattr(&full, std::ffi::OsStr::from_bytes(name), &mut value)
                    .unwrap();
            xattrs.insert(
                String::from_utf8_lossy(name).into_owned(),
                value[..length].to_vec(),
            );
        }
        let shown = path.display().to_string();
        let group = if kind.is_dir() {
            String::new()
        } else {
            groups
                .entry(meta.ino())
                .or_insert_with(|| shown.clone())
                .clone()
        };
        let size = if kind.is_dir() { 0 } else { meta.size() };
        let mtime = if kind.is_dir() {
            "-".to_owned()
        } else {
            format!("{}.{:09}", meta.mtime(), meta.mtime_nsec())
        };
        lines.push(format!(
            "{shown:?} {:o} {}:{} {size} {mtime} {} {content} {xattrs:?} link={group}",
            meta.mode(),
            meta.uid(),
            meta.gid(),
            meta.rdev(),
        ));
    }
    lines
}

/// Every directory's path and mtime.
pub fn directory_times(root: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(path) = pending.pop() {
        let full = if path.as_os_str().is_empty() {
            root.to_path_buf()
        } else {
            root.join(&path)
        };
        let meta = std::fs::symlink_metadata(&full).unwrap();
        if meta.is_dir() {
            lines.push(format!(
                "{:?} {}.{:09}",
                path.display().to_string(),
                meta.mtime(),
                meta.mtime_nsec()
            ));
            for entry in std::fs::read_dir(&full).unwrap() {
                pending.push(path.join(entry.unwrap().file_name()));
            }
        }
    }
    lines.sort();
    lines
}

/// Manifest lines (see [`manifest`]) with the owner left out.
pub fn without_owners(lines: Vec<String>) -> Vec<String> {
    lines
        .into_iter()
        .map(|line| {
            let mut fields: Vec<&str> = line.splitn(4, ' ').collect();
            fields[2] = "-";
            fields.join(" ")
        })
        .collect()
}
