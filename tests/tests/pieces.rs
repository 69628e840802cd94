//! Backups longer than `max_object_size`, stored as several objects, against real btrfs and
//! real S3 servers (moto and Garage), with a tiny `max_object_size` of 16 MiB.
// Tests fail by panicking, helpers included.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use btrfs2s3_tests::{TestEnv, unique_name};
use support::Fixture;

const SERVERS: [&str; 2] = ["moto", "garage"];

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `mib` MiB that do not compress, different for each `seed`.
fn data(mib: u32, seed: u32) -> Vec<u8> {
    (0..mib << 20)
        .map(|n| (n ^ seed).wrapping_mul(2_654_435_761).to_le_bytes()[2])
        .collect()
}

/// A fixture whose one source goes to moto and Garage, `1y`, in objects of at most 16 MiB
/// (5 MiB parts).
fn fixture(env: &'static TestEnv, test: &str) -> Fixture {
    let fixture = Fixture::new(env, test, &SERVERS);
    fixture.write_config("1y", &[]);
    let yaml = std::fs::read_to_string(&fixture.config).unwrap().replace(
        "      bucket:",
        "      max_object_size: 16MiB\n      part_size_mib: 5\n      bucket:",
    );
    fixture.write_raw_config(&yaml);
    fixture
}

/// The sizes of the objects of each backup in remote `index`, first piece first, and how
/// many pieces belong to no backup.
fn stored(fixture: &Fixture, index: usize) -> (Vec<Vec<u64>>, usize) {
    let listing = fixture
        .runtime
        .block_on(fixture.remote(index).list())
        .unwrap();
    assert!(listing.broken.is_empty(), "{listing:?}");
    let mut backups: Vec<(i64, Vec<u64>)> = listing
        .backups
        .iter()
        .map(|backup| {
            let sizes = std::iter::once(&backup.object)
                .chain(&backup.pieces)
                .map(|object| object.size)
                .collect();
            (backup.meta.ctransid, sizes)
        })
        .collect();
    backups.sort();
    (
        backups.into_iter().map(|(_, sizes)| sizes).collect(),
        listing.leftovers.len(),
    )
}

/// Restores everything of remote `remote` into a fresh directory; returns it.
fn restore(fixture: &Fixture, remote: &str) -> (Output, PathBuf) {
    let dest = fixture.env.btrfs_receive.join(unique_name("pieces"));
    std::fs::create_dir(&dest).unwrap();
    let output = Command::new(support::binary())
        .arg("restore")
        .arg(&fixture.config)
        .args(["--remote", remote, "--dest"])
        .arg(&dest)
        .output()
        .unwrap();
    (output, dest)
}

/// Asserts that the newest snapshot restored into `dest` holds `files`.
fn assert_restored(fixture: &Fixture, dest: &Path, files: &[(&str, &[u8])]) {
    let newest = fixture.snapshot_names().pop().unwrap();
    for (name, contents) in files {
        let restored = std::fs::read(dest.join(&newest).join(name)).unwrap();
        assert!(restored == *contents, "{name} restored differs");
    }
}

const MIB: u64 = 1 << 20;

#[test]
fn a_long_backup_is_stored_in_pieces_and_restored_whole() {
    let Some(env) = TestEnv::get("a_long_backup_is_stored_in_pieces_and_restored_whole") else {
        return;
    };
    let fixture = fixture(env, "pieces");
    let big = data(40, 1);
    fixture.write("big", &big);
    let output = fixture.btrfs2s3(&["update", "--force"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("max_object_size is 16777216 bytes, below 5GiB"),
        "the small size is warned about: {}",
        stderr(&output)
    );
    for index in 0..2 {
        let (backups, leftovers) = stored(&fixture, index);
        assert_eq!(backups.len(), 1, "{backups:?}");
        let sizes = &backups[0];
        assert_eq!(sizes.len(), 3, "{sizes:?}");
        assert_eq!(&sizes[..2], [16 * MIB, 16 * MIB], "{sizes:?}");
        assert!(sizes[2] > 8 * MIB && sizes[2] < 16 * MIB, "{sizes:?}");
        assert_eq!(leftovers, 0);
        assert_eq!(fixture.pending_uploads(index), 0);
    }
    let list = fixture.btrfs2s3(&["list"]);
    assert!(list.status.success(), "{}", stderr(&list));
    assert!(
        stdout(&list).contains("1 backup(s) of 1 source(s)"),
        "{}",
        stdout(&list)
    );

    // A differential of 20 MiB: two pieces. Then another change: it is no longer kept,
    // and every piece of it goes.
    let more = data(20, 2);
    fixture.write("more", &more);
    fixture.update(&[]);
    for index in 0..2 {
        let (backups, _) = stored(&fixture, index);
        assert_eq!(backups.len(), 2, "{backups:?}");
        assert_eq!(backups[1].len(), 2, "{backups:?}");
    }
    fixture.write("small", b"small");
    let out = fixture.update(&[]);
    assert!(out.contains("(and 1 more piece)"), "{out}");
    for index in 0..2 {
        let (backups, leftovers) = stored(&fixture, index);
        assert_eq!(backups.len(), 2, "{backups:?}");
        // The new differential is against the full backup: it carries `more` too.
        assert_eq!(backups[1].len(), 2, "{backups:?}");
        assert_eq!(leftovers, 0, "nothing of the deleted one stays");
        assert_eq!(fixture.keys(index).len(), 5, "{:?}", fixture.keys(index));
    }

    let verify = fixture.btrfs2s3(&["verify"]);
    assert!(verify.status.success(), "{}", stderr(&verify));
    for remote in SERVERS {
        let (output, dest) = restore(&fixture, remote);
        assert!(output.status.success(), "{remote}: {}", stderr(&output));
        assert_restored(
            &fixture,
            &dest,
            &[("big", &big), ("more", &more), ("small", b"small")],
        );
    }
}

#[test]
fn a_kill_between_the_pieces_leaves_no_backup_and_the_next_run_completes_it() {
    let Some(env) =
        TestEnv::get("a_kill_between_the_pieces_leaves_no_backup_and_the_next_run_completes_it")
    else {
        return;
    };
    let fixture = fixture(env, "piecekill");
    let big = data(40, 3);
    fixture.write("big", &big);
    let output = Command::new(support::binary())
        .args(["update", "--force"])
        .arg(&fixture.config)
        .env("BTRFS2S3_FAILPOINT", "piece-uploaded:1")
        .output()
        .unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&output.status),
        Some(9),
        "killed after the first piece: {}",
        stderr(&output)
    );
    // One remote got a piece after the first, and neither has a backup.
    let leftovers: Vec<usize> = (0..2).map(|index| stored(&fixture, index).1).collect();
    assert!(leftovers.contains(&1), "{leftovers:?}");
    for index in 0..2 {
        assert!(stored(&fixture, index).0.is_empty());
    }
    let list = fixture.btrfs2s3(&["list"]);
    assert!(
        stdout(&list).contains("1 piece(s) of backups belong to no backup"),
        "{}",
        stdout(&list)
    );
    let (_, dest) = restore(&fixture, "moto");
    assert_eq!(
        std::fs::read_dir(&dest).unwrap().count(),
        0,
        "nothing to restore"
    );

    // The next run uploads the backup again, over the piece left.
    fixture.update(&[]);
    for index in 0..2 {
        let (backups, leftovers) = stored(&fixture, index);
        assert_eq!(backups.len(), 1, "{backups:?}");
        assert_eq!(backups[0].len(), 3, "{backups:?}");
        assert_eq!(leftovers, 0);
        assert_eq!(
            fixture.pending_uploads(index),
            0,
            "the killed upload was aborted"
        );
    }
    let (output, dest) = restore(&fixture, "garage");
    assert!(output.status.success(), "{}", stderr(&output));
    assert_restored(&fixture, &dest, &[("big", &big)]);
}

#[test]
fn missing_pieces_are_told_and_never_restored_as_whole() {
    let Some(env) = TestEnv::get("missing_pieces_are_told_and_never_restored_as_whole") else {
        return;
    };
    let fixture = fixture(env, "pieceloss");
    let big = data(40, 4);
    fixture.write("big", &big);
    fixture.update(&[]);
    let keys = fixture.keys(0);
    assert_eq!(keys.len(), 3, "{keys:?}");
    let remote = fixture.remote(0);
    let delete = |keys: &[String]| fixture.runtime.block_on(remote.delete(keys)).unwrap();

    // Every piece after the first gone: the listing shows a lone first piece, and its
    // metadata tells that it is not whole.
    delete(&keys[1..]);
    let verify = fixture.btrfs2s3(&["verify", "--remote", "moto"]);
    assert!(!verify.status.success(), "{}", stdout(&verify));
    assert!(
        stdout(&verify).contains("its other pieces are missing"),
        "{}{}",
        stdout(&verify),
        stderr(&verify)
    );
    let (output, dest) = restore(&fixture, "moto");
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("its other pieces are missing"),
        "{}",
        stderr(&output)
    );
    assert_eq!(
        std::fs::read_dir(&dest).unwrap().count(),
        0,
        "nothing half-received stays"
    );

    // A middle piece gone: the listing tells, status reports it, and the next run uploads
    // the backup again.
    fixture.put(0, &keys[2], &[0; 1000]);
    let list = fixture.btrfs2s3(&["list", "--remote", "moto"]);
    assert!(
        stdout(&list).contains("is stored in pieces and some are missing"),
        "{}",
        stdout(&list)
    );
    let status = fixture.btrfs2s3(&["status"]);
    assert_eq!(status.status.code(), Some(1), "{}", stdout(&status));
    assert!(
        stdout(&status).contains("have pieces missing"),
        "{}",
        stdout(&status)
    );
    let out = fixture.update(&[]);
    assert!(out.contains("upload"), "{out}");
    let (backups, leftovers) = stored(&fixture, 0);
    assert_eq!(backups.len(), 1, "{backups:?}");
    assert_eq!(backups[0].len(), 3, "{backups:?}");
    assert_eq!(leftovers, 0);
    let verify = fixture.btrfs2s3(&["verify", "--remote", "moto"]);
    assert!(verify.status.success(), "{}", stderr(&verify));
}
