//! Scale: one send feeding several remotes, several streams at a time, against real btrfs
//! and real S3 servers.
// Tests fail by panicking, helpers included.
#![allow(clippy::unwrap_used)]

mod support;

use std::fmt::Write as _;
use std::process::{Command, Output};

use btrfs2s3_tests::TestEnv;
use btrfs2s3_tests::proxy::{Fault, FaultProxy, Match};
use support::Fixture;

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// 12 MiB that do not compress: three 5 MiB parts.
fn data() -> Vec<u8> {
    (0..12u32 << 20)
        .map(|n| n.wrapping_mul(2_654_435_761).to_le_bytes()[2])
        .collect()
}

/// The lines of the plan's actions.
fn actions(plan: &str) -> Vec<String> {
    plan.lines()
        .skip_while(|line| !line.starts_with("actions:"))
        .skip(1)
        .map(|line| line.trim().to_owned())
        .collect()
}

#[test]
fn one_send_feeds_every_remote() {
    let Some(env) = TestEnv::get("one_send_feeds_every_remote") else {
        return;
    };
    let fixture = Fixture::new(env, "fanout", &["moto", "garage"]);
    // A command whose output differs every time it runs: identical objects in both buckets
    // can only come from one stream.
    fixture.write_config("1y", &[&["sh", "-c", "'head -c 32 /dev/urandom; cat'"]]);
    fixture.write("data", &data());
    let pretend = fixture.btrfs2s3(&["update", "--pretend"]);
    assert!(pretend.status.success(), "{}", stderr(&pretend));
    let uploads: Vec<String> = actions(&stdout(&pretend))
        .into_iter()
        .filter(|line| line.starts_with("upload"))
        .collect();
    assert_eq!(
        uploads.len(),
        1,
        "one action, two destinations: {uploads:?}"
    );
    assert!(uploads[0].contains("-> moto, garage, full"), "{uploads:?}");

    let output = fixture.btrfs2s3(&["update", "--force"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let log = stderr(&output);
    assert_eq!(
        log.lines().filter(|line| line.ends_with(" ...")).count(),
        1,
        "one stream started: {log}"
    );
    let keys = fixture.keys(0);
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(fixture.keys(1), keys, "the same backup in both");
    let moto = fixture.download(0, &keys[0]);
    assert_eq!(moto, fixture.download(1, &keys[0]), "the same bytes");
    assert!(moto.len() > 12 << 20);
}

/// A config with remote 0 (moto) reached through `proxy` and remote 1 (garage) directly:
/// 5 MiB parts, one attempt per request.
fn through_proxy_and_direct(fixture: &Fixture, proxy: &FaultProxy) {
    let mut yaml = format!(
        "timezone: UTC\nsources:\n  - path: {}\n    snapshots: {}\n    upload_to_remotes:\n",
        fixture.source.display(),
        fixture.snapshots.display()
    );
    for (id, _, _) in &fixture.remotes {
        let _ = write!(yaml, "      - id: {id}\n        preserve: 1y\n");
    }
    let remotes = fixture.remotes_yaml().replace(
        &format!("endpoint_url: {}\n", fixture.remotes[0].1.endpoint),
        &format!("endpoint_url: {}\n", proxy.endpoint()),
    );
    for line in remotes.lines() {
        yaml.push_str(line);
        yaml.push('\n');
        if line.trim_start().starts_with("bucket:") {
            yaml.push_str(
                "      part_size_mib: 5\n      max_attempts: 1\n      timeout_seconds: 5\n",
            );
        }
    }
    fixture.write_raw_config(&yaml);
}

#[test]
fn a_remote_that_fails_fails_alone() {
    let Some(env) = TestEnv::get("a_remote_that_fails_fails_alone") else {
        return;
    };
    let fixture = Fixture::new(env, "fanfail", &["moto", "garage"]);
    let proxy = FaultProxy::start(&fixture.remotes[0].1.endpoint);
    through_proxy_and_direct(&fixture, &proxy);
    fixture.write("data", &data());
    proxy.add(
        Match::upload_part(),
        Fault::Status(500, "InternalError"),
        1000,
    );
    let output = fixture.btrfs2s3(&["update", "--force"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let log = stderr(&output);
    let failed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("FAILED") || l.contains("failed"))
        .collect();
    assert!(
        failed.iter().any(|l| l.contains("-> moto"))
            && !failed.iter().any(|l| l.contains("-> garage")),
        "moto alone failed: {log}"
    );
    assert!(fixture.keys(0).is_empty(), "{:?}", fixture.keys(0));
    assert_eq!(
        fixture.pending_uploads(0),
        0,
        "the failed upload was aborted"
    );
    assert_eq!(fixture.keys(1).len(), 1, "garage got its backup");

    // The next run redoes only what failed.
    proxy.clear();
    let pretend = fixture.btrfs2s3(&["update", "--pretend"]);
    let uploads: Vec<String> = actions(&stdout(&pretend))
        .into_iter()
        .filter(|line| line.starts_with("upload"))
        .collect();
    assert_eq!(uploads.len(), 1, "{}", stdout(&pretend));
    assert!(uploads[0].contains("-> moto, full"), "{uploads:?}");
    fixture.update(&[]);
    assert_eq!(fixture.keys(0), fixture.keys(1));
    let verify = fixture.btrfs2s3(&["verify"]);
    assert!(verify.status.success(), "{}", stdout(&verify));
}

/// Two sources, each to one remote: with `parallel_uploads: 2` both streams start before
/// either ends; with 1, one after the other.
#[test]
fn sources_upload_side_by_side() {
    let Some(env) = TestEnv::get("sources_upload_side_by_side") else {
        return;
    };
    let fixture = Fixture::new(env, "parallel", &["garage"]);
    let second = fixture.subvolume("second");
    std::fs::write(second.join("data"), data()).unwrap();
    fixture.write("data", &data());
    for parallel in [2, 1] {
        let yaml = format!(
            "timezone: UTC\nparallel_uploads: {parallel}\nsources:\n  - path: {}\n    snapshots: {}\n    upload_to_remotes:\n      - id: garage\n        preserve: 1y 1s\n  - path: {}\n    snapshots: {}\n    upload_to_remotes:\n      - id: garage\n        preserve: 1y 1s\n{}",
            fixture.source.display(),
            fixture.snapshots.display(),
            second.display(),
            fixture.snapshots.display(),
            fixture.remotes_yaml()
        );
        fixture.write_raw_config(&yaml);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        std::fs::write(second.join("marker"), parallel.to_string()).unwrap();
        // Writes into the first source and commits both.
        fixture.write("marker", parallel.to_string().as_bytes());
        let output = fixture.btrfs2s3(&["update", "--force"]);
        assert!(output.status.success(), "{}", stderr(&output));
        let log = stderr(&output);
        let transfers: Vec<&str> = log
            .lines()
            .filter(|line| line.starts_with("upload"))
            .collect();
        assert_eq!(transfers.len(), 4, "{log}");
        let started = |line: &&str| line.ends_with(" ...");
        if parallel == 2 {
            assert!(
                started(&transfers[0]) && started(&transfers[1]),
                "both started before either ended: {log}"
            );
        } else {
            assert!(
                started(&transfers[0]) && !started(&transfers[1]) && started(&transfers[2]),
                "one after the other: {log}"
            );
        }
    }
}

/// A compressed source sent with protocol 2 travels compressed: a far smaller object than the
/// protocol 1 stream of the same snapshot (another stream, to another remote), and it restores
/// to the same files.
#[test]
fn compressed_extents_travel_compressed() {
    let Some(env) = TestEnv::get("compressed_extents_travel_compressed") else {
        return;
    };
    let fixture = Fixture::new(env, "protocol2", &["moto", "garage"]);
    support::run(
        Command::new("btrfs")
            .args(["property", "set"])
            .arg(&fixture.source)
            .args(["compression", "zstd"]),
    );
    let text: Vec<u8> = b"a line of text that compresses very well, again and again\n"
        .iter()
        .copied()
        .cycle()
        .take(16 << 20)
        .collect();
    fixture.write("text", &text);
    let yaml = format!(
        "timezone: UTC\nsources:\n  - path: {}\n    snapshots: {}\n    upload_to_remotes:\n      - id: moto\n        preserve: 1y\n      - id: garage\n        preserve: 1y\n        send_protocol: 2\n{}",
        fixture.source.display(),
        fixture.snapshots.display(),
        fixture.remotes_yaml()
    );
    fixture.write_raw_config(&yaml);
    let pretend = fixture.btrfs2s3(&["update", "--pretend"]);
    let uploads: Vec<String> = actions(&stdout(&pretend))
        .into_iter()
        .filter(|line| line.starts_with("upload"))
        .collect();
    assert_eq!(uploads.len(), 2, "two formats, two streams: {uploads:?}");
    assert!(
        uploads
            .iter()
            .any(|line| line.contains("-> garage, full, send protocol 2")),
        "{uploads:?}"
    );
    fixture.update(&[]);
    let key = fixture.keys(1).pop().unwrap();
    let v2 = fixture.download(1, &key).len();
    let v1 = fixture.download(0, &fixture.keys(0)[0]).len();
    assert!(
        v1 > 16 << 20,
        "protocol 1 carries the data decompressed: {v1}"
    );
    assert!(v2 < 2 << 20, "protocol 2 carries it compressed: {v2}");

    let verify = fixture.btrfs2s3(&["verify"]);
    assert!(verify.status.success(), "{}", stdout(&verify));
    let dest = env
        .btrfs_receive
        .join(btrfs2s3_tests::unique_name("protocol2"));
    std::fs::create_dir(&dest).unwrap();
    let restored = Command::new(support::binary())
        .arg("restore")
        .arg(&fixture.config)
        .args(["--remote", "garage", "--dest"])
        .arg(&dest)
        .output()
        .unwrap();
    assert!(restored.status.success(), "{}", stderr(&restored));
    let name = &fixture.snapshot_names()[0];
    assert!(
        std::fs::read(dest.join(name).join("text")).unwrap() == text,
        "the restored file is the original"
    );
}
