//! Links libbtrfsutil statically when its archive is installed (Debian's libbtrfsutil-dev
//! has one), so that the `btrfs2s3` binary runs where libbtrfsutil is not installed: `restore
//! --plain`, `extract`, `ls` and `verify --parser builtin` on a machine without btrfs. Else,
//! or with `BTRFS2S3_LINK_BTRFSUTIL=dynamic`, it links the shared library.
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-env-changed=BTRFS2S3_LINK_BTRFSUTIL");
    let dynamic = std::env::var("BTRFS2S3_LINK_BTRFSUTIL").is_ok_and(|how| how == "dynamic");
    let archive = library_dirs()
        .into_iter()
        .find(|dir| dir.join("libbtrfsutil.a").is_file());
    match archive {
        Some(dir) if !dynamic => {
            println!("cargo::rustc-link-search=native={}", dir.display());
            println!("cargo::rustc-link-lib=static=btrfsutil");
        }
        _ => println!("cargo::rustc-link-lib=dylib=btrfsutil"),
    }
}

/// Where libbtrfsutil may be: pkg-config's answer, then the usual directories.
fn library_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(output) = Command::new("pkg-config")
        .args(["--variable=libdir", "libbtrfsutil"])
        .output()
        && output.status.success()
    {
        let dir = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        if !dir.is_empty() {
            dirs.push(PathBuf::from(dir));
        }
    }
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    for dir in [
        format!("/usr/lib/{arch}-linux-gnu"),
        "/usr/lib64".to_owned(),
        "/usr/lib".to_owned(),
        "/usr/local/lib".to_owned(),
    ] {
        dirs.push(PathBuf::from(dir));
    }
    dirs
}
