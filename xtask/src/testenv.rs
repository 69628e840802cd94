//! The integration-test environment: two loopback btrfs filesystems and three S3 servers
//! (moto, Garage and SeaweedFS) on free loopback ports, described to the tests by a JSON file named in
//! `BTRFS2S3_TEST_ENV`. Everything is torn down when the `TestEnv` drops, including after a
//! test failure, a panic or Ctrl-C.

use std::fs::File;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::{Result, cmd, tools};

/// The variable that names the environment file; tests skip themselves without it.
pub const ENV_VAR: &str = "BTRFS2S3_TEST_ENV";

/// Size of each sparse btrfs image: 2 GiB, or `BTRFS2S3_XTASK_IMAGE_GIB`.
fn image_bytes() -> Result<u64> {
    match std::env::var("BTRFS2S3_XTASK_IMAGE_GIB") {
        Ok(gib) => Ok(gib
            .parse::<u64>()
            .map_err(|e| format!("BTRFS2S3_XTASK_IMAGE_GIB={gib}: {e}"))?
            << 30),
        Err(_) => Ok(2 << 30),
    }
}

/// Integration tests need root for loop devices and mounts.
pub fn require_root(task: &str) -> Result<()> {
    let uid = cmd::output(Command::new("id").arg("-u"))?;
    if uid.trim() == "0" {
        Ok(())
    } else {
        Err(format!(
            "the integration tests need root (loop devices, mount, btrfs send); run:\n    sudo -E env \"PATH=$PATH\" {task}"
        )
        .into())
    }
}

/// A running test environment. Fields drop in order: servers, then filesystems, then the
/// temporary directory that held their state.
pub struct TestEnv {
    servers: Vec<Server>,
    mounts: Vec<Mount>,
    env_file: PathBuf,
    dir: TempDir,
    interrupted: Arc<AtomicBool>,
}

impl TestEnv {
    /// Creates the filesystems and starts the servers, installing what is missing, and
    /// writes the description the tests read.
    pub fn start() -> Result<TestEnv> {
        let mut env = TestEnv::empty()?;
        let btrfs = env.add_btrfs("btrfs")?;
        let btrfs_receive = env.add_btrfs("receive")?;
        let moto_tls = env.add_moto_tls()?;
        let moto = env.add_moto()?;
        let garage = env.add_garage()?;
        let seaweedfs = env.add_seaweedfs()?;
        let description = serde_json::json!({
            "btrfs": btrfs,
            "btrfs_receive": btrfs_receive,
            "s3": [moto.to_json(), garage.to_json(), seaweedfs.to_json()],
            "s3_tls": moto_tls.to_json(),
        });
        std::fs::write(&env.env_file, serde_json::to_vec_pretty(&description)?)?;
        Ok(env)
    }

    /// An environment with nothing in it yet but a temporary directory.
    pub fn empty() -> Result<TestEnv> {
        // Ctrl-C reaches the tests (same process group) and stops them; we must survive it to
        // clean up. A flag handler is reset to the default in child processes on exec.
        let interrupted = Arc::new(AtomicBool::new(false));
        for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(signal, Arc::clone(&interrupted))?;
        }
        let dir = TempDir::new("btrfs2s3-xtask")?;
        Ok(TestEnv {
            servers: Vec::new(),
            mounts: Vec::new(),
            env_file: dir.path().join("env.json"),
            dir,
            interrupted,
        })
    }

    /// The temporary directory everything lives in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Adds a mounted btrfs filesystem; returns its mount point.
    pub fn add_btrfs(&mut self, name: &str) -> Result<PathBuf> {
        self.add_btrfs_sized(name, image_bytes()?)
    }

    /// Adds a mounted btrfs filesystem of `bytes` (a sparse image); returns its mount point.
    pub fn add_btrfs_sized(&mut self, name: &str, bytes: u64) -> Result<PathBuf> {
        let mount = Mount::btrfs(self.dir.path(), name, bytes)?;
        let mountpoint = mount.mountpoint.clone();
        self.mounts.push(mount);
        Ok(mountpoint)
    }

    /// Adds a tmpfs of at most `bytes`; returns its mount point.
    pub fn add_tmpfs(&mut self, name: &str, bytes: u64) -> Result<PathBuf> {
        let mountpoint = self.dir.path().join(name);
        std::fs::create_dir(&mountpoint)?;
        cmd::output(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
                .arg(&mountpoint),
        )?;
        self.mounts.push(Mount {
            image: None,
            loop_device: None,
            mountpoint: mountpoint.clone(),
            mounted: true,
        });
        Ok(mountpoint)
    }

    /// Points `command` at this environment.
    pub fn apply<'a>(&self, command: &'a mut Command) -> &'a mut Command {
        command.env(ENV_VAR, &self.env_file)
    }

    /// A one-line summary for humans.
    pub fn describe(&self) -> String {
        format!("{}={}", ENV_VAR, self.env_file.display())
    }

    fn check_interrupted(&self) -> Result<()> {
        if self.interrupted.load(Ordering::Relaxed) {
            Err("interrupted".into())
        } else {
            Ok(())
        }
    }

    /// Waits until something listens on `port`, or the server exits, or 60 s pass.
    fn wait_for_port(&mut self, port: u16) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            self.check_interrupted()?;
            if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
                return Ok(());
            }
            if let Some(server) = self.servers.last_mut()
                && let Ok(Some(status)) = server.child.try_wait()
            {
                return Err(format!(
                    "{} exited early ({status}); see {}",
                    server.name,
                    server.log.display()
                )
                .into());
            }
            if Instant::now() > deadline {
                return Err(format!("nothing listens on port {port} after 60 s").into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn spawn(&mut self, name: &str, command: &mut Command) -> Result<()> {
        self.spawn_leaving(name, command, Vec::new())
    }

    /// Starts a server that leaves `leftovers` behind when killed (they are removed then).
    fn spawn_leaving(
        &mut self,
        name: &str,
        command: &mut Command,
        leftovers: Vec<PathBuf>,
    ) -> Result<()> {
        let log = self.dir.path().join(format!("{name}.log"));
        let file = File::create(&log)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", cmd::display(command)))?;
        self.servers.push(Server {
            name: name.to_owned(),
            child,
            log,
            leftovers,
        });
        Ok(())
    }

    /// Starts moto on a free port.
    pub fn add_moto(&mut self) -> Result<S3Endpoint> {
        let moto_server = tools::ensure_moto()?;
        let port = free_port()?;
        self.spawn(
            "moto",
            Command::new(&moto_server).args(["-H", "127.0.0.1", "-p", &port.to_string()]),
        )?;
        self.wait_for_port(port)?;
        Ok(S3Endpoint {
            name: "moto",
            endpoint: format!("http://127.0.0.1:{port}"),
            region: "us-east-1",
            access_key_id: "moto-test-key".to_owned(),
            secret_access_key: "moto-test-secret".to_owned(),
            object_lock: true,
            storage_classes: true,
            archive: true,
            ca_bundle: None,
            read_only: None,
        })
    }

    /// Starts SeaweedFS (master, volume, filer and S3 gateway in one process) with a key
    /// that may do everything. Every port is given explicitly: the default gRPC ports are
    /// the HTTP ports + 10000, which can collide.
    pub fn add_seaweedfs(&mut self) -> Result<S3Endpoint> {
        let weed = tools::ensure_seaweedfs()?;
        let root = self.dir.path().join("seaweedfs");
        std::fs::create_dir_all(root.join("data"))?;
        let (key_id, secret) = ("seaweedfs-test-key", "seaweedfs-test-secret");
        let identities = root.join("s3.json");
        std::fs::write(
            &identities,
            serde_json::json!({"identities": [{
                "name": "xtask",
                "credentials": [{"accessKey": key_id, "secretKey": secret}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }]})
            .to_string(),
        )?;
        let ports: Vec<u16> = (0..9).map(|_| free_port()).collect::<Result<_>>()?;
        let [
            master,
            master_grpc,
            volume,
            volume_grpc,
            filer,
            filer_grpc,
            s3,
            s3_grpc,
            iam,
        ] = ports[..]
        else {
            return Err("cannot find 9 free ports".into());
        };
        let port = |name: &str, port: u16| format!("-{name}={port}");
        // It leaves sockets named after its parts and ports in /tmp when killed.
        let leftovers = ports
            .iter()
            .flat_map(|port| {
                ["master", "volume", "filer", "s3"]
                    .into_iter()
                    .flat_map(move |part| {
                        [
                            PathBuf::from(format!("/tmp/seaweedfs-{part}-{port}.sock")),
                            PathBuf::from(format!("/tmp/seaweedfs-{part}-grpc-{port}.sock")),
                        ]
                    })
            })
            .collect::<Vec<PathBuf>>();
        // Sockets a killed server left on these (now free) ports would be in the way.
        for stale in &leftovers {
            let _ = std::fs::remove_file(stale);
        }
        self.spawn_leaving(
            "seaweedfs",
            Command::new(&weed)
                // Its own log files go with the rest of the environment, not into /tmp.
                .arg(format!("-logdir={}", root.display()))
                .arg("server")
                .arg(format!("-dir={}", root.join("data").display()))
                .args(["-ip=127.0.0.1", "-filer", "-s3", "-s3.iam=false"])
                .args(["-master.volumeSizeLimitMB=64", "-volume.max=1000"])
                // Catalog servers of its own on fixed ports (8181, 9101) would collide with
                // another environment on the machine: off.
                .args(["-s3.port.iceberg=0", "-s3.port.lance=0"])
                .arg(port("iam.port", iam))
                .args([
                    port("master.port", master),
                    port("master.port.grpc", master_grpc),
                    port("volume.port", volume),
                    port("volume.port.grpc", volume_grpc),
                    port("filer.port", filer),
                    port("filer.port.grpc", filer_grpc),
                    port("s3.port", s3),
                    port("s3.port.grpc", s3_grpc),
                ])
                .arg(format!("-s3.config={}", identities.display()))
                // One copy per new volume, so many buckets fit (each is a collection).
                .env("WEED_MASTER_VOLUME_GROWTH_COPY_1", "1"),
            leftovers,
        )?;
        self.wait_for_port(s3)?;
        self.wait_for_health(&format!("127.0.0.1:{s3}"))?;
        Ok(S3Endpoint {
            name: "seaweedfs",
            endpoint: format!("http://127.0.0.1:{s3}"),
            region: "us-east-1",
            access_key_id: key_id.to_owned(),
            secret_access_key: secret.to_owned(),
            object_lock: true,
            storage_classes: true,
            archive: false,
            ca_bundle: None,
            read_only: None,
        })
    }

    /// Waits until `GET /healthz` at `address` answers 200 (the S3 gateway of SeaweedFS
    /// listens before its filer is ready).
    fn wait_for_health(&mut self, address: &str) -> Result<()> {
        use std::io::{Read, Write};
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            self.check_interrupted()?;
            let answer = TcpStream::connect(address).and_then(|mut stream| {
                stream.set_read_timeout(Some(Duration::from_secs(5)))?;
                stream.write_all(
                    format!("GET /healthz HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes(),
                )?;
                let mut answer = String::new();
                stream.read_to_string(&mut answer)?;
                Ok(answer)
            });
            if answer.is_ok_and(|answer| {
                answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200")
            }) {
                return Ok(());
            }
            if Instant::now() > deadline {
                // The end of the server's own log says why.
                let tail = self
                    .servers
                    .last()
                    .map(|server| {
                        let text = std::fs::read_to_string(&server.log).unwrap_or_default();
                        let lines: Vec<&str> = text.lines().rev().take(10).collect();
                        let lines: Vec<&str> = lines.into_iter().rev().collect();
                        format!(
                            "\nthe end of {}:\n{}",
                            server.log.display(),
                            lines.join("\n")
                        )
                    })
                    .unwrap_or_default();
                return Err(format!("{address} is not healthy after 60 s{tail}").into());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Starts moto behind HTTPS with a certificate of a test CA, for the `verify` settings.
    pub fn add_moto_tls(&mut self) -> Result<S3Endpoint> {
        let moto_server = tools::ensure_moto()?;
        // A CA and a server certificate it signed (webpki rejects a self-signed CA
        // certificate used directly by a server).
        let file = |name: &str| self.dir.path().join(name);
        let (ca, ca_key) = (file("ca.crt"), file("ca.key"));
        let (cert, key, csr, ext) = (
            file("tls.crt"),
            file("tls.key"),
            file("tls.csr"),
            file("tls.ext"),
        );
        std::fs::write(
            &ext,
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
        )?;
        cmd::output(
            Command::new("openssl")
                .args([
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=btrfs2s3 xtask CA",
                ])
                .arg("-keyout")
                .arg(&ca_key)
                .arg("-out")
                .arg(&ca),
        )?;
        cmd::output(
            Command::new("openssl")
                .args([
                    "req",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-subj",
                    "/CN=127.0.0.1",
                ])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&csr),
        )?;
        cmd::output(
            Command::new("openssl")
                .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
                .arg("-in")
                .arg(&csr)
                .arg("-CA")
                .arg(&ca)
                .arg("-CAkey")
                .arg(&ca_key)
                .arg("-extfile")
                .arg(&ext)
                .arg("-out")
                .arg(&cert),
        )?;
        let port = free_port()?;
        self.spawn(
            "moto-tls",
            Command::new(&moto_server)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .arg("-c")
                .arg(&cert)
                .arg("-k")
                .arg(&key),
        )?;
        self.wait_for_port(port)?;
        Ok(S3Endpoint {
            name: "moto-tls",
            endpoint: format!("https://127.0.0.1:{port}"),
            region: "us-east-1",
            access_key_id: "moto-test-key".to_owned(),
            secret_access_key: "moto-test-secret".to_owned(),
            object_lock: true,
            storage_classes: true,
            archive: true,
            ca_bundle: Some(ca),
            read_only: None,
        })
    }

    /// Starts a single-node Garage with a key that may create buckets.
    pub fn add_garage(&mut self) -> Result<S3Endpoint> {
        let root = self.dir.path().join("garage");
        self.add_garage_in(&root)
    }

    /// Starts a single-node Garage keeping its metadata and data in `root`.
    pub fn add_garage_in(&mut self, root: &Path) -> Result<S3Endpoint> {
        let garage = tools::ensure_garage()?;
        std::fs::create_dir_all(root)?;
        let (rpc, s3, admin) = (free_port()?, free_port()?, free_port()?);
        let config = root.join("garage.toml");
        std::fs::write(
            &config,
            format!(
                r#"metadata_dir = "{root}/meta"
data_dir = "{root}/data"
db_engine = "lmdb"
replication_factor = 1
compression_level = "none"
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:{s3}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin}"
admin_token = "xtask-admin-token"
"#,
                root = root.display(),
                secret = "5ec4e7".repeat(10) + "0123",
            ),
        )?;
        let garage_cmd = || {
            let mut command = Command::new(&garage);
            command.arg("-c").arg(&config).env("RUST_LOG", "warn");
            command
        };
        self.spawn("garage", garage_cmd().arg("server"))?;
        self.wait_for_port(rpc)?;
        let node = cmd::output(garage_cmd().args(["node", "id", "-q"]))?;
        let node = node.trim().split('@').next().unwrap_or_default().to_owned();
        cmd::output(garage_cmd().args(["layout", "assign", "-z", "dc1", "-c", "1GB", &node]))?;
        cmd::output(garage_cmd().args(["layout", "apply", "--version", "1"]))?;
        let (key_id, secret) = ("GK0123456789abcdef01234567", "0123456789abcdef".repeat(4));
        cmd::output(garage_cmd().args(["key", "import", "--yes", "-n", "xtask", key_id, &secret]))?;
        cmd::output(garage_cmd().args(["key", "allow", "--create-bucket", key_id]))?;
        // A bucket that a second key may only read (for the permission tests).
        let (reader_id, reader_secret) =
            ("GKfedcba9876543210fedcba98", "fedcba9876543210".repeat(4));
        cmd::output(garage_cmd().args([
            "key",
            "import",
            "--yes",
            "-n",
            "reader",
            reader_id,
            &reader_secret,
        ]))?;
        cmd::output(garage_cmd().args(["bucket", "create", READ_ONLY_BUCKET]))?;
        cmd::output(garage_cmd().args([
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            READ_ONLY_BUCKET,
            "--key",
            key_id,
        ]))?;
        cmd::output(garage_cmd().args([
            "bucket",
            "allow",
            "--read",
            READ_ONLY_BUCKET,
            "--key",
            reader_id,
        ]))?;
        self.wait_for_port(s3)?;
        Ok(S3Endpoint {
            name: "garage",
            endpoint: format!("http://127.0.0.1:{s3}"),
            region: "garage",
            access_key_id: key_id.to_owned(),
            secret_access_key: secret,
            object_lock: false,
            storage_classes: false,
            archive: false,
            ca_bundle: None,
            read_only: Some(ReadOnly {
                bucket: READ_ONLY_BUCKET,
                access_key_id: reader_id.to_owned(),
                secret_access_key: reader_secret,
            }),
        })
    }
}

/// The Garage bucket the reader key may only read.
const READ_ONLY_BUCKET: &str = "read-only";

/// A bucket and a key that may only read it.
pub struct ReadOnly {
    pub bucket: &'static str,
    pub access_key_id: String,
    pub secret_access_key: String,
}

/// An S3 server of the environment, as the tests see it.
pub struct S3Endpoint {
    pub name: &'static str,
    pub endpoint: String,
    pub region: &'static str,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub object_lock: bool,
    pub storage_classes: bool,
    /// Whether archive classes (`DEEP_ARCHIVE`) need `RestoreObject` before a read.
    pub archive: bool,
    pub ca_bundle: Option<PathBuf>,
    /// A bucket with a key that may only read it, where the server has per-key permissions.
    pub read_only: Option<ReadOnly>,
}

impl S3Endpoint {
    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "endpoint": self.endpoint,
            "region": self.region,
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
            "object_lock": self.object_lock,
            "storage_classes": self.storage_classes,
            "archive": self.archive,
            "ca_bundle": self.ca_bundle,
            "read_only": self.read_only.as_ref().map(|r| serde_json::json!({
                "bucket": r.bucket,
                "access_key_id": r.access_key_id,
                "secret_access_key": r.secret_access_key,
            })),
        })
    }

    /// Sets the credentials of this server in a command's environment.
    pub fn credentials<'a>(&self, command: &'a mut Command) -> &'a mut Command {
        command
            .env("AWS_ACCESS_KEY_ID", &self.access_key_id)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret_access_key)
    }
}

/// A free TCP port on the loopback interface.
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

struct Server {
    name: String,
    child: Child,
    log: PathBuf,
    /// Files it leaves behind when killed.
    leftovers: Vec<PathBuf>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for leftover in &self.leftovers {
            let _ = std::fs::remove_file(leftover);
        }
    }
}

/// A mounted filesystem: btrfs in a sparse image file through a loop device, or a tmpfs.
struct Mount {
    image: Option<PathBuf>,
    loop_device: Option<String>,
    mountpoint: PathBuf,
    mounted: bool,
}

impl Mount {
    fn btrfs(dir: &Path, name: &str, bytes: u64) -> Result<Mount> {
        let image = dir.join(format!("{name}.img"));
        let mut mount = Mount {
            image: Some(image.clone()),
            loop_device: None,
            mountpoint: dir.join(name),
            mounted: false,
        };
        File::create(&image)?.set_len(bytes)?;
        cmd::output(Command::new("mkfs.btrfs").arg("-q").arg(&image))?;
        let device = cmd::output(
            Command::new("losetup")
                .args(["--find", "--show"])
                .arg(&image),
        )?;
        mount.loop_device = Some(device.trim().to_owned());
        std::fs::create_dir(&mount.mountpoint)?;
        cmd::output(
            Command::new("mount")
                .arg(device.trim())
                .arg(&mount.mountpoint),
        )?;
        mount.mounted = true;
        Ok(mount)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.mounted {
            // A process that still has a file open keeps the mount busy for a moment.
            let unmounted = (0..10).any(|attempt| {
                if attempt > 0 {
                    std::thread::sleep(Duration::from_millis(300));
                }
                cmd::output(Command::new("umount").arg(&self.mountpoint)).is_ok()
            });
            if !unmounted {
                eprintln!(
                    "xtask: {} is busy; detaching it lazily",
                    self.mountpoint.display()
                );
                let _ = cmd::output(Command::new("umount").arg("-l").arg(&self.mountpoint));
            }
        }
        if let Some(device) = &self.loop_device
            && let Err(e) = cmd::output(Command::new("losetup").arg("-d").arg(device))
        {
            eprintln!("xtask: cannot detach {device}: {e}");
        }
        if let Some(image) = &self.image {
            let _ = std::fs::remove_file(image);
        }
    }
}

/// A directory under the system temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> Result<TempDir> {
        let path =
            cmd::output(Command::new("mktemp").args(["-d", "-t", &format!("{prefix}.XXXXXX")]))?;
        let path = PathBuf::from(path.trim());
        // Tests run some commands as an unprivileged user, who must reach the mounts inside.
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        Ok(TempDir(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("xtask: cannot remove {}: {e}", self.0.display());
        }
    }
}
