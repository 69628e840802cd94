//! Crashes, interruptions and local faults lose nothing and leave nothing half-done.
// Tests fail by panicking, helpers included.
#![allow(clippy::unwrap_used)]

mod support;

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use btrfs2s3_tests::TestEnv;
use support::{Fixture, run};

/// The instant the crash runs happen at: a year after the fixtures' backups, so that a run
/// creates, renames, uploads, destroys and deletes.
const LATER: &str = "2028-06-01T00:00:00Z";

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Incompressible bytes from a seed.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[5]
        })
        .collect()
}

/// A fixture with moto and Garage, 5 MiB parts, policy `1y`, optional `pipe_through`, and
/// two runs already made: a full backup and a differential.
fn history(env: &'static TestEnv, test: &str, pipe_through: Option<&str>) -> Fixture {
    let fixture = Fixture::new(env, test, &["moto", "garage"]);
    write_config(&fixture, pipe_through);
    fixture.write("one", &noise(6 << 20, 1));
    fixture.update(&[]);
    fixture.write("two", &noise(1 << 20, 2));
    fixture.update(&[]);
    // The change the interrupted run is about: three parts and more.
    fixture.write("three", &noise(12 << 20, 3));
    fixture
}

fn write_config(fixture: &Fixture, pipe_through: Option<&str>) {
    let pipe = pipe_through.map_or_else(String::new, |command| {
        format!("        pipe_through:\n          - {command}\n")
    });
    let mut yaml = format!(
        "timezone: UTC\nsources:\n  - path: {}\n    snapshots: {}\n    upload_to_remotes:\n      - id: moto\n        preserve: 1y\n{pipe}      - id: garage\n        preserve: 1y\n{pipe}",
        fixture.source.display(),
        fixture.snapshots.display(),
    );
    yaml.push_str(&fixture.remotes_yaml().replace(
        "    s3:\n",
        "    s3:\n      part_size_mib: 5\n      parts_in_flight: 2\n",
    ));
    fixture.write_raw_config(&yaml);
}

/// Unmounts a filesystem a test mounted, when the test ends.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// After a repair run: nothing half-done anywhere, and nothing left to do.
fn assert_consistent(fixture: &Fixture, context: &str) {
    assert_eq!(
        &shape(fixture),
        uninterrupted_shape(fixture.env),
        "{context}: the repaired state is what an uninterrupted run keeps"
    );
    let names = fixture.snapshot_names();
    assert!(
        names.iter().all(|name| !name.contains(".NEW.")),
        "{context}: leftover new snapshots: {names:?}"
    );
    let output = fixture.btrfs2s3(&["update", "--pretend", "--now", LATER]);
    assert!(output.status.success(), "{context}: {}", stderr(&output));
    assert!(
        stdout(&output).contains("actions: none"),
        "{context}: a repaired state needs nothing more:\n{}",
        stdout(&output)
    );
    for (index, (remote, _, _)) in fixture.remotes.iter().enumerate() {
        assert_eq!(
            fixture.pending_uploads(index),
            0,
            "{context}: multipart uploads left in {remote}"
        );
        // Every object that parses as a backup is complete and has its send parent.
        let verify = fixture.btrfs2s3(&["verify", "--remote", remote]);
        assert!(
            verify.status.success(),
            "{context}: verify {remote}:\n{}{}",
            stdout(&verify),
            stderr(&verify)
        );
    }
}

/// What is kept, independent of uuids and times: the number of snapshots, and for each
/// remote the depth of every backup in its tree (0 for a full backup, 1 for a differential
/// against a full one, ...), sorted by ctransid.
#[derive(Debug, PartialEq, Eq)]
struct Shape {
    snapshots: usize,
    depths: Vec<Vec<usize>>,
}

fn shape(fixture: &Fixture) -> Shape {
    let depths = (0..fixture.remotes.len())
        .map(|index| {
            let mut backups: Vec<btrfs2s3_s3::BackupMeta> = fixture
                .keys(index)
                .iter()
                .filter_map(|key| btrfs2s3_s3::BackupMeta::parse_key(key).ok())
                .collect();
            backups.sort_by_key(|meta| meta.ctransid);
            let depth = |meta: &btrfs2s3_s3::BackupMeta| {
                let mut depth = 0;
                let mut parent = meta.send_parent_uuid;
                while let Some(uuid) = parent {
                    depth += 1;
                    parent = backups
                        .iter()
                        .find(|other| other.uuid == uuid)
                        .and_then(|other| other.send_parent_uuid);
                }
                depth
            };
            backups.iter().map(depth).collect()
        })
        .collect();
    Shape {
        snapshots: fixture.snapshot_names().len(),
        depths,
    }
}

/// The shape after an uninterrupted run on the history, made once per test binary.
fn uninterrupted_shape(env: &'static TestEnv) -> &'static Shape {
    static SHAPE: std::sync::OnceLock<Shape> = std::sync::OnceLock::new();
    SHAPE.get_or_init(|| {
        let fixture = history(env, "uninterrupted", None);
        fixture.update(&["--now", LATER]);
        let shape = shape(&fixture);
        // A full backup and a differential per remote at least, or the comparison is weak.
        assert!(shape.depths.iter().all(|d| d.len() >= 2), "{shape:?}");
        shape
    })
}

/// A verbose run that dies at `failpoint`; whatever it printed holds no secret.
fn crash_run(fixture: &Fixture, failpoint: &str) -> Output {
    let output = Command::new(support::binary())
        .args(["-v", "update", "--force", "--now", LATER])
        .arg(&fixture.config)
        .env(btrfs2s3_core::failpoint::VARIABLE, failpoint)
        .output()
        .unwrap();
    fixture.assert_no_secret(&output, failpoint);
    output
}

#[test]
fn a_crash_at_any_point_is_repaired_by_the_next_run() {
    let Some(env) = TestEnv::get("a_crash_at_any_point_is_repaired_by_the_next_run") else {
        return;
    };
    let points = [
        "snapshot-created:1",
        "renamed:1",
        "upload-progress:1",
        // The first upload reads its 13 MiB through a 1 MiB pipe: at least 13 progress
        // calls, so the 12th is inside it (most likely past its first 8 MiB part).
        "upload-progress:12",
        "uploaded:1",
        "uploaded:2",
        "destroyed:1",
        "deleting:1",
    ];
    for point in points {
        let fixture = history(env, &format!("crash-{}", point.replace(':', "-")), None);
        let output = crash_run(&fixture, point);
        assert_eq!(
            output.status.signal(),
            Some(9),
            "{point}: killed at the point: {}",
            stderr(&output)
        );
        fixture.update(&["--now", LATER]);
        assert_consistent(&fixture, point);
    }
    // A kill while a multipart upload is certainly pending (the failpoints above may strike
    // before the server has registered it): the next run finds and aborts it.
    let fixture = history(env, "crash-multipart", None);
    write_config(&fixture, Some(SLOW));
    let mut child = spawn_update(&fixture);
    wait_until_uploading(&fixture);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        fixture.pending_uploads(0) > 0,
        "the killed upload is pending"
    );
    write_config(&fixture, None);
    let repair = fixture.update(&["--now", LATER]);
    assert!(
        repair.contains("abort"),
        "the repair run aborts the stale upload:\n{repair}"
    );
    assert_consistent(&fixture, "kill -9 during a multipart upload");
}

/// A `pipe_through` that passes 1 MiB every 0.2 s: it keeps an upload going long enough.
const SLOW: &str = "[python3, -c, \"import sys, time\\nwhile d := sys.stdin.buffer.read1(1 << 20):\\n    sys.stdout.buffer.write(d); sys.stdout.flush(); time.sleep(0.2)\"]";

/// Starts `update --force --now LATER` with its output captured.
fn spawn_update(fixture: &Fixture) -> std::process::Child {
    Command::new(support::binary())
        .args(["update", "--force", "--now", LATER])
        .arg(&fixture.config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until an upload to the first remote is under way: a multipart upload exists.
fn wait_until_uploading(fixture: &Fixture) {
    let started = Instant::now();
    while fixture.pending_uploads(0) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no upload started"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn kills_at_random_moments_are_repaired_by_the_next_run() {
    let Some(env) = TestEnv::get("kills_at_random_moments_are_repaired_by_the_next_run") else {
        return;
    };
    for seed in 1..=10u64 {
        let fixture = history(env, &format!("kill-{seed}"), None);
        let delay =
            Duration::from_millis(noise(2, seed).iter().map(|b| u64::from(*b)).sum::<u64>() * 4);
        let mut child = Command::new(support::binary())
            .args(["update", "--force", "--now", LATER])
            .arg(&fixture.config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill();
        child.wait().unwrap();
        fixture.update(&["--now", LATER]);
        assert_consistent(&fixture, &format!("seed {seed}, killed after {delay:?}"));
    }
}

#[test]
fn sigint_and_sigterm_stop_cleanly() {
    let Some(env) = TestEnv::get("sigint_and_sigterm_stop_cleanly") else {
        return;
    };
    for signal in ["INT", "TERM"] {
        let fixture = history(env, &format!("sig{}", signal.to_lowercase()), None);
        write_config(&fixture, Some(SLOW));
        let names = fixture.snapshot_names();
        let keys: Vec<Vec<String>> = (0..2).map(|i| fixture.keys(i)).collect();
        let child = spawn_update(&fixture);
        let pid = child.id();
        wait_until_uploading(&fixture);
        run(Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string()));
        let output = child.wait_with_output().unwrap();
        fixture.assert_no_secret(&output, signal);
        assert_eq!(
            output.status.code(),
            Some(1),
            "{signal}: {}",
            stderr(&output)
        );
        let message = stderr(&output);
        let last = message.lines().last().unwrap_or_default();
        assert!(
            last.contains(&format!("interrupted by SIG{signal}")),
            "{signal}: a one-line reason: {message}"
        );
        assert!(
            last.contains("1 new snapshot(s) removed"),
            "{signal}: {last}"
        );
        // Nothing half-done: no new object, no pending upload, the new snapshot gone (the
        // renames of this run were undone by removing what they renamed, not more).
        for (index, keys) in keys.iter().enumerate() {
            assert_eq!(
                &fixture.keys(index),
                keys,
                "{signal}: no object was added or removed"
            );
            assert_eq!(
                fixture.pending_uploads(index),
                0,
                "{signal}: the upload in flight was aborted"
            );
        }
        assert_eq!(
            fixture.snapshot_names(),
            names,
            "{signal}: the snapshot of this run is gone, the others stay"
        );
        // And the next run does the work.
        write_config(&fixture, None);
        fixture.update(&["--now", LATER]);
        assert_consistent(&fixture, signal);
    }
}

#[test]
fn a_pipe_through_command_killed_or_chatty() {
    let Some(env) = TestEnv::get("a_pipe_through_command_killed_or_chatty") else {
        return;
    };
    let fixture = history(env, "chatty", None);
    write_config(&fixture, Some("[sh, -c, \"head -c 3000000; kill -9 $$\"]"));
    let keys: Vec<Vec<String>> = (0..2).map(|i| fixture.keys(i)).collect();
    let output = fixture.btrfs2s3(&["update", "--force"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("was killed by signal 9"),
        "{}",
        stderr(&output)
    );
    for (index, keys) in keys.iter().enumerate() {
        assert_eq!(
            &fixture.keys(index),
            keys,
            "no object from a killed pipeline"
        );
    }
    // A command that writes to stderr but succeeds is fine.
    write_config(&fixture, Some("[sh, -c, \"echo just a warning >&2; cat\"]"));
    fixture.update(&["--now", LATER]);
    assert_consistent(&fixture, "chatty");
}

#[test]
fn a_full_filesystem_fails_the_snapshot_and_the_next_run_repairs() {
    let Some(env) = TestEnv::get("a_full_filesystem_fails_the_snapshot_and_the_next_run_repairs")
    else {
        return;
    };
    // A small filesystem of its own (mixed block groups: data and metadata share the space).
    let fixture = Fixture::new(env, "enospc", &["moto"]);
    let image = fixture.dir.join("small.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(128 << 20)
        .unwrap();
    run(Command::new("mkfs.btrfs")
        .args(["-q", "--mixed"])
        .arg(&image));
    let mountpoint = fixture.dir.join("small");
    std::fs::create_dir(&mountpoint).unwrap();
    run(Command::new("mount")
        .args(["-o", "loop"])
        .arg(&image)
        .arg(&mountpoint));
    let _unmount = Unmount(mountpoint.clone());
    let source = mountpoint.join("data");
    run(Command::new("btrfs")
        .args(["subvolume", "create"])
        .arg(&source));
    let snapshots = mountpoint.join("snapshots");
    std::fs::create_dir(&snapshots).unwrap();
    let yaml = format!(
        "timezone: UTC\nsources:\n  - path: {}\n    snapshots: {}\n    upload_to_remotes:\n      - id: moto\n        preserve: 1y\n{}",
        source.display(),
        snapshots.display(),
        fixture.remotes_yaml()
    );
    fixture.write_raw_config(&yaml);
    // Fill it up: files until the filesystem says no more.
    let mut n = 0;
    while std::fs::write(source.join(format!("fill-{n}")), noise(1 << 20, n)).is_ok() {
        n += 1;
    }
    for small in 0.. {
        if std::fs::write(source.join(format!("small-{small}")), b"x").is_err() {
            break;
        }
    }
    let _ = Command::new("btrfs")
        .args(["filesystem", "sync"])
        .arg(&source)
        .status();
    let output = fixture.btrfs2s3(&["update", "--force"]);
    let message = stderr(&output);
    if output.status.success() {
        // Some kernels find room for a snapshot in reserved metadata: then there is no
        // fault to test, but the run must still have made a complete backup.
        eprintln!("note: the full filesystem still took a snapshot; no ENOSPC to test");
        assert_eq!(fixture.keys(0).len(), 1);
        return;
    }
    assert_eq!(output.status.code(), Some(1), "{message}");
    assert!(
        message.contains("failed to snapshot") && message.contains("space"),
        "{message}"
    );
    assert!(fixture.keys(0).is_empty(), "nothing uploaded");
    // Free some space: the next run snapshots and uploads.
    for m in 0..(n / 2) {
        std::fs::remove_file(source.join(format!("fill-{m}"))).unwrap();
    }
    let _ = Command::new("btrfs")
        .args(["filesystem", "sync"])
        .arg(&source)
        .status();
    let output = fixture.btrfs2s3(&["update", "--force"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(fixture.keys(0).len(), 1);
}

#[test]
fn a_removed_snapshot_directory_is_a_clear_error_and_a_new_one_starts_over() {
    let Some(env) =
        TestEnv::get("a_removed_snapshot_directory_is_a_clear_error_and_a_new_one_starts_over")
    else {
        return;
    };
    let fixture = Fixture::new(env, "removed", &["moto"]);
    fixture.write_config("1y 1d", &[]);
    fixture.write("f", b"data");
    fixture.update(&[]);
    let first_backups = fixture.keys(0);
    // Someone deletes the snapshots (and the directory).
    for name in fixture.snapshot_names() {
        run(Command::new("btrfs")
            .args(["subvolume", "delete"])
            .arg(fixture.snapshots.join(name)));
    }
    std::fs::remove_dir(&fixture.snapshots).unwrap();
    let output = fixture.btrfs2s3(&["update", "--force"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains(&*fixture.snapshots.to_string_lossy()),
        "{}",
        stderr(&output)
    );
    assert_eq!(fixture.keys(0), first_backups, "nothing deleted");
    // A new directory: a new snapshot of the unchanged source. Its full backup replaces the
    // old one, which has the same content but whose snapshot is gone, so it could not be the
    // parent of the next differential.
    std::fs::create_dir(&fixture.snapshots).unwrap();
    fixture.update(&[]);
    let keys = fixture.keys(0);
    assert_eq!(keys.len(), 1, "{keys:?}");
    let (old, new) = (
        btrfs2s3_s3::BackupMeta::parse_key(&first_backups[0]).unwrap(),
        btrfs2s3_s3::BackupMeta::parse_key(&keys[0]).unwrap(),
    );
    assert_eq!((new.ctransid, new.send_parent_uuid), (old.ctransid, None));
    assert_ne!(new.uuid, old.uuid);
    assert_eq!(fixture.snapshot_names().len(), 1);
    let output = fixture.btrfs2s3(&["update", "--pretend"]);
    assert!(
        stdout(&output).contains("actions: none"),
        "{}",
        stdout(&output)
    );
}
