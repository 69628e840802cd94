//! The btrfs operations on a real btrfs filesystem (a loopback image made by `cargo xtask`).
// Tests fail by panicking, helpers included.
#![allow(clippy::unwrap_used)]

use std::ffi::OsStr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use btrfs2s3_btrfs::{
    Error, SendOptions, SnapshotDir, Subvolume, is_subvolume, send, subvolume_info,
};
use btrfs2s3_tests::{TestEnv, unique_name};

/// Runs a command and insists that it succeeds.
fn run(command: &mut Command) -> String {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A fresh directory on the test filesystem for one test.
fn workdir(env: &TestEnv, test: &str) -> PathBuf {
    let dir = env.btrfs.join(unique_name(test));
    std::fs::create_dir(&dir).unwrap();
    dir
}

fn create_subvolume(path: &Path) {
    run(Command::new("btrfs")
        .args(["subvolume", "create"])
        .arg(path));
}

fn write(path: &Path, contents: &str) {
    std::fs::write(path, contents).unwrap();
    // Commit the transaction so that the subvolume's ctransid moves now.
    run(Command::new("btrfs")
        .args(["filesystem", "sync"])
        .arg(path.parent().unwrap()));
}

fn names(snapshots: &SnapshotDir) -> Vec<String> {
    snapshots
        .snapshots()
        .unwrap()
        .into_iter()
        .map(|s| s.name.to_string_lossy().into_owned())
        .collect()
}

#[test]
fn subvolume_and_snapshot_information() {
    let Some(env) = TestEnv::get("subvolume_and_snapshot_information") else {
        return;
    };
    let dir = workdir(env, "info");
    let source_path = dir.join("source");
    create_subvolume(&source_path);
    let mut source = Subvolume::open(&source_path).unwrap();
    let fresh = *source.info();
    assert_eq!(
        fresh.parent_uuid, None,
        "a fresh subvolume is not a snapshot"
    );
    assert!(!fresh.is_read_only());
    assert!(!fresh.uuid.is_nil());

    let snapshots = SnapshotDir::open(&dir).unwrap();
    snapshots.check_same_filesystem(&source).unwrap();
    let snapshot = snapshots
        .create_snapshot(&source, OsStr::new("snap1"))
        .unwrap();
    assert_eq!(
        snapshot.parent_uuid,
        Some(fresh.uuid),
        "the snapshot's parent uuid is the source"
    );
    assert!(snapshot.is_read_only());
    assert_ne!(snapshot.uuid, fresh.uuid);
    assert_ne!(snapshot.id, fresh.id);
    assert_eq!(snapshot.received_uuid, None);

    write(&source_path.join("file"), "changed");
    let changed = *source.refresh().unwrap();
    assert!(
        changed.ctransid > fresh.ctransid,
        "ctransid moves when data changes"
    );
    assert!(changed.ctime >= fresh.ctime);
    let again = snapshots
        .create_snapshot(&source, OsStr::new("snap2"))
        .unwrap();
    assert_eq!(
        again.ctransid, changed.ctransid,
        "a snapshot has its source's ctransid"
    );
}

#[test]
fn create_list_rename_and_delete_snapshots() {
    let Some(env) = TestEnv::get("create_list_rename_and_delete_snapshots") else {
        return;
    };
    let dir = workdir(env, "crud");
    let (a_path, b_path) = (dir.join("a"), dir.join("b"));
    create_subvolume(&a_path);
    create_subvolume(&b_path);
    let (a, b) = (
        Subvolume::open(&a_path).unwrap(),
        Subvolume::open(&b_path).unwrap(),
    );
    let snapshot_path = dir.join("snapshots");
    std::fs::create_dir(&snapshot_path).unwrap();
    let snapshots = SnapshotDir::open(&snapshot_path).unwrap();

    let a1 = snapshots.create_snapshot(&a, OsStr::new("a.1")).unwrap();
    snapshots.create_snapshot(&b, OsStr::new("b.1")).unwrap();
    // Things that are not read-only snapshots are not listed.
    run(Command::new("btrfs")
        .args(["subvolume", "snapshot"])
        .arg(&a_path)
        .arg(snapshot_path.join("writable")));
    std::fs::create_dir(snapshot_path.join("plain-directory")).unwrap();
    std::fs::write(snapshot_path.join("a-file"), "x").unwrap();
    create_subvolume(&snapshot_path.join("plain-subvolume"));
    std::os::unix::fs::symlink(&a_path, snapshot_path.join("a-symlink")).unwrap();

    assert_eq!(names(&snapshots), ["a.1", "b.1"]);
    assert_eq!(
        names(&snapshots),
        ["a.1", "b.1"],
        "listing twice lists the same"
    );
    let of_a = snapshots.snapshots_of(a.info().uuid).unwrap();
    assert_eq!(of_a.len(), 1);
    assert_eq!(of_a[0].info.id, a1.id);

    snapshots
        .rename(OsStr::new("a.1"), OsStr::new("a.renamed"))
        .unwrap();
    assert_eq!(names(&snapshots), ["a.renamed", "b.1"]);
    assert!(snapshots.contains(OsStr::new("a.renamed")).unwrap());
    assert!(!snapshots.contains(OsStr::new("a.1")).unwrap());

    // Deleting checks the subvolume id first.
    let wrong = snapshots
        .delete_snapshot(OsStr::new("a.renamed"), a1.id + 1000)
        .unwrap_err();
    assert!(matches!(wrong, Error::Changed { .. }), "{wrong}");
    snapshots
        .delete_snapshot(OsStr::new("a.renamed"), a1.id)
        .unwrap();
    assert_eq!(names(&snapshots), ["b.1"]);
    assert!(snapshots.snapshots_of(a.info().uuid).unwrap().is_empty());
}

/// Every regular file under `root`, relative path → contents.
fn tree(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push((
                    path.strip_prefix(root).unwrap().to_path_buf(),
                    std::fs::read(&path).unwrap(),
                ));
            }
        }
    }
    files.sort();
    files
}

fn receive(stream: &Path, into: &Path) {
    run(Command::new("btrfs")
        .args(["receive", "-f"])
        .arg(stream)
        .arg(into));
}

#[test]
fn full_and_differential_streams_are_accepted_by_btrfs_receive() {
    let Some(env) = TestEnv::get("full_and_differential_streams_are_accepted_by_btrfs_receive")
    else {
        return;
    };
    let dir = workdir(env, "send");
    let source_path = dir.join("data");
    create_subvolume(&source_path);
    std::fs::create_dir(source_path.join("sub")).unwrap();
    write(&source_path.join("sub/kept"), "unchanged file");
    write(&source_path.join("changing"), "first version");
    let source = Subvolume::open(&source_path).unwrap();
    let snapshots = SnapshotDir::open(&dir).unwrap();
    let full = snapshots
        .create_snapshot(&source, OsStr::new("data.1"))
        .unwrap();
    write(&source_path.join("changing"), "second version, longer");
    write(&source_path.join("new"), &"x".repeat(100_000));
    let diff = snapshots
        .create_snapshot(&source, OsStr::new("data.2"))
        .unwrap();

    let streams = env.btrfs_receive.join(unique_name("streams"));
    std::fs::create_dir(&streams).unwrap();
    let (full_stream, diff_stream) = (streams.join("full"), streams.join("diff"));
    let fd = snapshots
        .open_snapshot(OsStr::new("data.1"), full.id)
        .unwrap();
    send(
        &fd,
        &std::fs::File::create(&full_stream).unwrap(),
        &SendOptions::default(),
    )
    .unwrap();
    let fd = snapshots
        .open_snapshot(OsStr::new("data.2"), diff.id)
        .unwrap();
    let options = SendOptions {
        parent: Some(full.id),
        ..SendOptions::default()
    };
    send(&fd, &std::fs::File::create(&diff_stream).unwrap(), &options).unwrap();
    let (full_len, diff_len) = (
        std::fs::metadata(&full_stream).unwrap().len(),
        std::fs::metadata(&diff_stream).unwrap().len(),
    );
    assert!(
        diff_len < full_len + 100_000,
        "the differential stream carries only the changes"
    );

    let target = env.btrfs_receive.join(unique_name("received"));
    std::fs::create_dir(&target).unwrap();
    receive(&full_stream, &target);
    receive(&diff_stream, &target);
    for (name, info) in [("data.1", full), ("data.2", diff)] {
        let received = target.join(name);
        assert_eq!(tree(&received), tree(&dir.join(name)), "{name}: same files");
        let fd = std::fs::File::open(&received).unwrap();
        let received_info = subvolume_info(std::os::fd::AsFd::as_fd(&fd), &received).unwrap();
        assert_eq!(
            received_info.received_uuid,
            Some(info.uuid),
            "{name}: received from our snapshot"
        );
    }
}

#[test]
fn sending_into_a_closed_pipe_fails_cleanly() {
    let Some(env) = TestEnv::get("sending_into_a_closed_pipe_fails_cleanly") else {
        return;
    };
    let dir = workdir(env, "pipe");
    let source_path = dir.join("data");
    create_subvolume(&source_path);
    write(&source_path.join("big"), &"y".repeat(1 << 20));
    let source = Subvolume::open(&source_path).unwrap();
    let snapshots = SnapshotDir::open(&dir).unwrap();
    let info = snapshots
        .create_snapshot(&source, OsStr::new("data.1"))
        .unwrap();
    let fd = snapshots
        .open_snapshot(OsStr::new("data.1"), info.id)
        .unwrap();

    // A reader that takes a little, then goes away.
    let mut reader = Command::new("head")
        .args(["-c", "1000"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stdin = reader.stdin.take().unwrap();
    let error = send(&fd, &stdin, &SendOptions::default()).unwrap_err();
    reader.wait().unwrap();
    let Error::Os { source, .. } = &error else {
        panic!("unexpected error {error}")
    };
    assert_eq!(source.raw_os_error(), Some(libc::EPIPE), "{error}");
    assert!(error.to_string().contains("data.1"), "{error}");
}

#[test]
fn errors_name_the_path_and_the_problem() {
    let Some(env) = TestEnv::get("errors_name_the_path_and_the_problem") else {
        return;
    };
    // Not btrfs: the system's temporary directory is not on the test filesystem.
    let elsewhere = std::env::temp_dir();
    let error = Subvolume::open(&elsewhere).unwrap_err();
    assert!(
        matches!(error, Error::NotBtrfs { .. }) || {
            // Some machines keep /tmp on btrfs; /proc never is.
            matches!(
                Subvolume::open("/proc").unwrap_err(),
                Error::NotBtrfs { .. }
            )
        }
    );
    let message = SnapshotDir::open("/proc").unwrap_err().to_string();
    assert_eq!(message, "/proc is not on a btrfs filesystem");

    // Not a subvolume: a plain directory on btrfs.
    let dir = workdir(env, "errors");
    let message = Subvolume::open(&dir).unwrap_err().to_string();
    assert!(
        message.contains(&*dir.to_string_lossy()) && message.contains("not a btrfs subvolume"),
        "{message}"
    );
    let fd = std::fs::File::open(&dir).unwrap();
    assert!(!is_subvolume(std::os::fd::AsFd::as_fd(&fd), &dir).unwrap());

    // Missing paths keep the OS error.
    let missing = dir.join("missing");
    let error = Subvolume::open(&missing).unwrap_err();
    let Error::Os { source, .. } = &error else {
        panic!("unexpected error {error}")
    };
    assert_eq!(source.raw_os_error(), Some(libc::ENOENT));
    assert!(error.to_string().contains("missing"), "{error}");

    // A snapshot directory on another filesystem.
    let source_path = dir.join("source");
    create_subvolume(&source_path);
    let source = Subvolume::open(&source_path).unwrap();
    let other = SnapshotDir::open(&env.btrfs_receive).unwrap();
    let message = other
        .check_same_filesystem(&source)
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("is on another filesystem than"),
        "{message}"
    );
    let error = other
        .create_snapshot(&source, OsStr::new(&unique_name("cross")))
        .unwrap_err();
    assert!(matches!(error, Error::OtherFilesystem { .. }), "{error}");

    // Names that already exist.
    let snapshots = SnapshotDir::open(&dir).unwrap();
    snapshots
        .create_snapshot(&source, OsStr::new("taken"))
        .unwrap();
    let error = snapshots
        .create_snapshot(&source, OsStr::new("taken"))
        .unwrap_err();
    assert!(matches!(error, Error::AlreadyExists { .. }), "{error}");
    assert!(
        error.to_string().ends_with("taken already exists"),
        "{error}"
    );
    snapshots
        .create_snapshot(&source, OsStr::new("also-taken"))
        .unwrap();
    let error = snapshots
        .rename(OsStr::new("also-taken"), OsStr::new("taken"))
        .unwrap_err();
    assert!(matches!(error, Error::AlreadyExists { .. }), "{error}");
}

/// What a child process of this test binary does when started as an unprivileged user:
/// set by `as_unprivileged_user`.
const CHILD_TASK: &str = "BTRFS2S3_BTRFS_TEST_CHILD_TASK";

/// Runs `test` (a test of this file) again in a child process as user and group 65534
/// (nobody), with `task` in its environment.
fn as_unprivileged_user(test: &str, task: &str) -> std::process::Output {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD_TASK, task)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap()
}

#[test]
fn unprivileged_users_cannot_send_but_may_delete_their_snapshots() {
    const TEST: &str = "unprivileged_users_cannot_send_but_may_delete_their_snapshots";
    if let Ok(task) = std::env::var(CHILD_TASK) {
        // The child, as nobody. Its task is "<send|delete> <snapshot dir> <name> <id>".
        let parts: Vec<&str> = task.split(' ').collect();
        let snapshots = SnapshotDir::open(parts[1]).unwrap();
        let id: u64 = parts[3].parse().unwrap();
        match parts[0] {
            "send" => {
                let fd = snapshots.open_snapshot(OsStr::new(parts[2]), id).unwrap();
                let error = send(&fd, &dev_null(), &SendOptions::default()).unwrap_err();
                println!("CHILD-RESULT {error}");
            }
            "delete" => {
                snapshots.delete_snapshot(OsStr::new(parts[2]), id).unwrap();
                println!("CHILD-RESULT deleted");
            }
            other => panic!("unknown task {other}"),
        }
        return;
    }
    let Some(env) = TestEnv::get(TEST) else {
        return;
    };
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping {TEST}: needs root to start an unprivileged child");
        return;
    }
    let dir = workdir(env, "unprivileged");
    let source_path = dir.join("theirs");
    create_subvolume(&source_path);
    write(&source_path.join("file"), "data");
    // The user owns the source (so its snapshots) and may write in the snapshot directory.
    run(Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(&source_path)
        .arg(&dir));
    let source = Subvolume::open(&source_path).unwrap();
    let snapshots = SnapshotDir::open(&dir).unwrap();
    let info = snapshots
        .create_snapshot(&source, OsStr::new("theirs.1"))
        .unwrap();
    let dir_text = dir.to_string_lossy().into_owned();

    let output = as_unprivileged_user(TEST, &format!("send {dir_text} theirs.1 {}", info.id));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "child failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("CHILD-RESULT failed to send")
            && stdout.contains("permission denied (needs CAP_SYS_ADMIN for send"),
        "{stdout}"
    );

    // Deleting needs user_subvol_rm_allowed, and the read-only flag cleared first.
    run(Command::new("mount")
        .args(["-o", "remount,user_subvol_rm_allowed"])
        .arg(&env.btrfs));
    let output = as_unprivileged_user(TEST, &format!("delete {dir_text} theirs.1 {}", info.id));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("CHILD-RESULT deleted"),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!snapshots.contains(OsStr::new("theirs.1")).unwrap());
}

fn dev_null() -> std::fs::File {
    std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .unwrap()
}

#[test]
fn protocol_2_streams_carry_compressed_extents() {
    let Some(env) = TestEnv::get("protocol_2_streams_carry_compressed_extents") else {
        return;
    };
    let dir = workdir(env, "proto2");
    let source_path = dir.join("data");
    create_subvolume(&source_path);
    // Files created in a directory with the compression property are stored compressed.
    run(Command::new("btrfs")
        .args(["property", "set"])
        .arg(&source_path)
        .args(["compression", "zstd"]));
    write(
        &source_path.join("compressible"),
        &"abcdefgh".repeat(200_000),
    );
    let source = Subvolume::open(&source_path).unwrap();
    let snapshots = SnapshotDir::open(&dir).unwrap();
    let info = snapshots
        .create_snapshot(&source, OsStr::new("data.1"))
        .unwrap();
    let fd = snapshots
        .open_snapshot(OsStr::new("data.1"), info.id)
        .unwrap();

    let streams = env.btrfs_receive.join(unique_name("proto2"));
    std::fs::create_dir(&streams).unwrap();
    let (plain, compressed) = (streams.join("v1"), streams.join("v2-compressed"));
    send(
        &fd,
        &std::fs::File::create(&plain).unwrap(),
        &SendOptions::default(),
    )
    .unwrap();
    let options = SendOptions {
        protocol: Some(2),
        compressed: true,
        ..SendOptions::default()
    };
    send(&fd, &std::fs::File::create(&compressed).unwrap(), &options).unwrap();
    let (plain_len, compressed_len) = (
        std::fs::metadata(&plain).unwrap().len(),
        std::fs::metadata(&compressed).unwrap().len(),
    );
    assert!(
        compressed_len * 4 < plain_len,
        "compressed extents travel compressed: {compressed_len} vs {plain_len}"
    );

    let target = streams.join("received");
    std::fs::create_dir(&target).unwrap();
    receive(&compressed, &target);
    assert_eq!(tree(&target.join("data.1")), tree(&dir.join("data.1")));
}
