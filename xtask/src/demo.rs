//! `cargo xtask demo`: btrfs2s3 at work on a throw-away setup — a loopback btrfs with a source
//! subvolume, a local S3 server (moto), three backup runs with changes in between, and the
//! resulting backup tree. Everything is removed at the end.

use std::path::Path;
use std::process::Command;

use crate::testenv::{S3Endpoint, TestEnv};
use crate::{Result, cmd, tools};

fn banner(text: &str) {
    println!("\n\x1b[1m==> {text}\x1b[0m");
}

pub fn run() -> Result<()> {
    tools::ensure_build_prerequisites()?;
    crate::testenv::require_root("cargo xtask demo")?;
    cmd::run(cmd::cargo().args(["build", "--quiet", "-p", "btrfs2s3-cli"]))?;
    let binary = cmd::workspace_root().join("target/debug/btrfs2s3");

    let mut env = TestEnv::empty()?;
    banner("a throw-away btrfs filesystem (a 2 GiB sparse image on a loop device)");
    let mount = env.add_btrfs("pool")?;
    println!("mounted at {}", mount.display());
    banner("a local S3 server (moto) with a bucket");
    let s3 = env.add_moto()?;
    create_bucket(&s3, "demo-backups")?;
    println!("{} bucket demo-backups", s3.endpoint);

    let source = mount.join("home");
    let snapshots = mount.join(".snapshots");
    cmd::output(
        Command::new("btrfs")
            .args(["subvolume", "create"])
            .arg(&source),
    )?;
    std::fs::create_dir(&snapshots)?;
    std::fs::write(source.join("notes.txt"), "my irreplaceable notes\n")?;
    std::fs::create_dir(source.join("photos"))?;
    std::fs::write(source.join("photos/cat.jpg"), vec![0x42; 3 << 20])?;

    let config = env.dir().join("btrfs2s3.yaml");
    let yaml = format!(
        "timezone: Europe/Berlin
sources:
  - path: {source}
    snapshots: {snapshots}
    upload_to_remotes:
      - id: local
        preserve: 1y 3m 30d 24h
        pipe_through:
          - [gzip, -1]
remotes:
  - id: local
    s3:
      bucket: demo-backups
      endpoint:
        endpoint_url: {endpoint}
        region_name: {region}
        aws_access_key_id: {key_id}
        aws_secret_access_key: {secret}
",
        source = source.display(),
        snapshots = snapshots.display(),
        endpoint = s3.endpoint,
        region = s3.region,
        key_id = s3.access_key_id,
        secret = s3.secret_access_key,
    );
    std::fs::write(&config, &yaml)?;
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    banner(&format!("the config, {}", config.display()));
    print!("{}", yaml.replace(&s3.secret_access_key, "********"));

    let update = |title: &str| -> Result<()> {
        banner(title);
        println!("$ btrfs2s3 update --force {}", config.display());
        let status = Command::new(&binary)
            .args(["update", "--force"])
            .arg(&config)
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("btrfs2s3 update failed: {status}").into())
        }
    };
    update("run 1: the first snapshot becomes a full backup")?;
    sync(&source)?;
    std::fs::write(
        source.join("notes.txt"),
        "my irreplaceable notes\nand a second line\n",
    )?;
    sync(&source)?;
    update("run 2, after editing notes.txt: a differential backup, sent against run 1's snapshot")?;
    std::fs::write(source.join("photos/dog.jpg"), vec![0x17; 1 << 20])?;
    sync(&source)?;
    update("run 3, after adding a photo: the previous differential is replaced by a new one")?;

    banner("the result: what btrfs2s3 would do now (nothing), with the backup tree");
    println!("$ btrfs2s3 update --pretend {}", config.display());
    Command::new(&binary)
        .args(["update", "--pretend"])
        .arg(&config)
        .status()?;
    banner("snapshots on disk");
    for entry in std::fs::read_dir(&snapshots)? {
        println!("{}", entry?.path().display());
    }
    banner("cleaning up: unmounting, detaching the loop device, stopping the server");
    Ok(())
}

fn sync(path: &Path) -> Result<()> {
    cmd::output(Command::new("btrfs").args(["filesystem", "sync"]).arg(path))?;
    Ok(())
}

/// Creates a bucket with the boto3 that comes with moto (no AWS CLI needed).
fn create_bucket(s3: &S3Endpoint, bucket: &str) -> Result<()> {
    let python = tools::ensure_moto()?.with_file_name("python");
    cmd::output(s3.credentials(Command::new(python).args([
        "-c",
        &format!(
            "import boto3; boto3.client('s3', endpoint_url='{}', region_name='{}').create_bucket(Bucket='{bucket}')",
            s3.endpoint, s3.region
        ),
    ])))?;
    Ok(())
}
