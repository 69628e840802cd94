//! Immutable, cost-aware backups on real servers: object locks until the keep-until the
//! policy implies (extended when it grows, outlived by nothing that depends on them), storage
//! classes by tree level within the minimum durations, restores from archive classes, and
//! the clear refusals (a bucket without Object Lock, a wrong clock).
// Tests fail by panicking, helpers included.
#![allow(clippy::unwrap_used)]

mod support;

use std::fmt::Write as _;
use std::process::Output;
use std::time::Duration;

use btrfs2s3_tests::TestEnv;
use btrfs2s3_tests::proxy::{Fault, FaultProxy, Match};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, ToSpan};
use serde_json::Value;
use support::Fixture;

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The servers of the environment that do object lock (moto, SeaweedFS).
fn lock_servers(env: &TestEnv) -> Vec<&str> {
    env.s3
        .iter()
        .filter(|s| s.object_lock)
        .map(|s| s.name.as_str())
        .collect()
}

/// A config of one source uploading to every remote of `fixture` with `preserve`, with
/// `upload_extra` lines under each upload entry and `s3_extra` under each remote's `s3:`.
fn write_config(fixture: &Fixture, preserve: &str, upload_extra: &str, s3_extra: &str) {
    let mut yaml = format!(
        "timezone: Europe/Berlin\nsources:\n  - path: {}\n    snapshots: {}\n    upload_to_remotes:\n",
        fixture.source.display(),
        fixture.snapshots.display()
    );
    for (id, _, _) in &fixture.remotes {
        let _ = write!(
            yaml,
            "      - id: {id}\n        preserve: {preserve}\n{upload_extra}"
        );
    }
    let mut remotes = fixture.remotes_yaml();
    for (_, _, bucket) in &fixture.remotes {
        remotes = remotes.replace(
            &format!("      bucket: {bucket}\n"),
            &format!("      bucket: {bucket}\n{s3_extra}"),
        );
    }
    yaml.push_str(&remotes);
    fixture.write_raw_config(&yaml);
}

/// Runs `update --force --json` and returns its JSON, insisting on success.
fn update_json(fixture: &Fixture) -> Value {
    let output = fixture.btrfs2s3(&["update", "--force", "--json"]);
    assert!(
        output.status.success(),
        "update failed: {}{}",
        stdout(&output),
        stderr(&output)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn timestamp(value: &Value) -> Timestamp {
    value.as_str().unwrap().parse().unwrap()
}

/// The planned backups of remote `remote`.
fn backups<'a>(json: &'a Value, remote: &str) -> Vec<&'a Value> {
    json["plan"]["backups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["remote"] == remote)
        .collect()
}

/// The retention of `key` in remote `index`: (mode, retain-until).
fn retention(fixture: &Fixture, index: usize, key: &str) -> Option<(String, Timestamp)> {
    fixture
        .runtime
        .block_on(fixture.remote(index).retention(key))
        .unwrap()
        .map(|lock| (lock.mode.to_string(), lock.retain_until))
}

/// Rounds up to a whole second, as locks are.
fn ceil(instant: Timestamp) -> Timestamp {
    Timestamp::from_second(instant.as_second() + i64::from(instant.subsec_nanosecond() > 0))
        .unwrap()
}

/// The first backup of the day under `1d 1h` with a margin of an hour is locked until the
/// latest of the next midnight in Berlin, the end of the next hour and now + 1 hour (kept for
/// its day, its hour and a step ahead as the newest), plus the hour.
fn first_locks_are_what_the_policy_says(fixture: &Fixture, first: &Value) {
    let now = timestamp(&first["plan"]["now"]);
    let berlin = TimeZone::get("Europe/Berlin").unwrap();
    for (index, (id, _, _)) in fixture.remotes.iter().enumerate() {
        let planned = backups(first, id);
        assert_eq!(planned.len(), 1, "{id}: {planned:?}");
        let backup = planned[0];
        // The policy's word for the first backup of the day, kept for its day, its hour and
        // a step ahead as the newest: the latest of the next midnight in Berlin, the end of
        // the next hour, and now + 1 hour.
        let ctime = now.to_zoned_datetime(berlin.clone());
        let midnight = ctime.start_of_day().unwrap().checked_add(1.day()).unwrap();
        let hour = ctime
            .with()
            .minute(0)
            .second(0)
            .subsec_nanosecond(0)
            .build()
            .unwrap()
            .checked_add(1.hour())
            .unwrap();
        let expected = [
            midnight.timestamp(),
            hour.timestamp(),
            now.checked_add(SignedDuration::from_hours(1)).unwrap(),
        ]
        .into_iter()
        .max()
        .unwrap();
        let keep_until = timestamp(&backup["keep_until"]);
        // The snapshot's ctime is a moment before the plan's now.
        assert!(
            keep_until <= expected && expected.duration_since(keep_until).as_secs() < 60,
            "{id}: keep until {keep_until}, expected about {expected}"
        );
        let wanted = ceil(
            keep_until
                .checked_add(SignedDuration::from_hours(1))
                .unwrap(),
        );
        let key = backup["key"].as_str().unwrap();
        assert_eq!(
            retention(fixture, index, key),
            Some(("GOVERNANCE".to_owned(), wanted)),
            "{id}"
        );
        assert_eq!(timestamp(&backup["lock"]["retain_until"]), wanted, "{id}");
    }
}

/// Every backup is locked at least until its keep-until and the hour; every send parent at
/// least as long as its child.
fn parents_are_locked_at_least_as_long(fixture: &Fixture, second: &Value) {
    for (index, (id, _, _)) in fixture.remotes.iter().enumerate() {
        for backup in backups(second, id) {
            let key = backup["key"].as_str().unwrap();
            let wanted = ceil(
                timestamp(&backup["keep_until"])
                    .checked_add(SignedDuration::from_hours(1))
                    .unwrap(),
            );
            let (_, until) = retention(fixture, index, key).unwrap();
            assert!(
                until >= wanted,
                "{id}: {key} locked until {until} < {wanted}"
            );
            if let Some(parent) = backup["send_parent"].as_str() {
                let parent = backups(second, id)
                    .into_iter()
                    .find(|b| b["uuid"] == parent)
                    .unwrap();
                let (_, parent_until) =
                    retention(fixture, index, parent["key"].as_str().unwrap()).unwrap();
                assert!(parent_until >= until, "{id}: the parent is locked less");
            }
        }
    }
}

#[test]
fn locks_follow_keep_until_and_grow_with_the_policy() {
    let Some(env) = TestEnv::get("locks_follow_keep_until_and_grow_with_the_policy") else {
        return;
    };
    let fixture = Fixture::locked(env, "locks", &lock_servers(env));
    let lock = "      object_lock:\n        mode: GOVERNANCE\n        extra: 1h\n";
    write_config(&fixture, "1d 1h", "", lock);
    fixture.write("a", b"first");
    let first = update_json(&fixture);
    first_locks_are_what_the_policy_says(&fixture, &first);

    // A differential: locked as long as the policy keeps it, its parent at least as long.
    fixture.write("b", b"second");
    let second = update_json(&fixture);
    parents_are_locked_at_least_as_long(&fixture, &second);

    // The policy grows: the daily backup is kept a day longer, and its lock follows.
    write_config(&fixture, "2d 1h", "", lock);
    let third = update_json(&fixture);
    let extensions: Vec<&Value> = third["plan"]["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["action"] == "extend_lock")
        .collect();
    assert!(!extensions.is_empty(), "{third}");
    for (index, (id, _, _)) in fixture.remotes.iter().enumerate() {
        let daily = backups(&third, id)
            .into_iter()
            .find(|b| b["send_parent"].is_null())
            .unwrap();
        let keep_until = timestamp(&daily["keep_until"]);
        // No longer the newest, it is kept for its day and the next: until the start of its
        // day in Berlin plus two days.
        let ctime =
            timestamp(&daily["ctime"]).to_zoned_datetime(TimeZone::get("Europe/Berlin").unwrap());
        let two_days = ctime.start_of_day().unwrap().checked_add(2.days()).unwrap();
        assert_eq!(keep_until, two_days.timestamp(), "{id}");
        let before = backups(&first, id)[0];
        assert!(
            keep_until > timestamp(&before["keep_until"]),
            "{id}: the keep-until grew"
        );
        let (_, until) = retention(&fixture, index, daily["key"].as_str().unwrap()).unwrap();
        assert_eq!(
            until,
            ceil(
                keep_until
                    .checked_add(SignedDuration::from_hours(1))
                    .unwrap()
            ),
            "{id}"
        );
    }
    // Nothing more to do at the same instant: every lock is where the policy wants it. (Later,
    // the newest backup's lock moves on with the clock: it is kept a step ahead.)
    let now = third["plan"]["now"].as_str().unwrap();
    let output = fixture.btrfs2s3(&["update", "--pretend", "--now", now]);
    assert!(
        stdout(&output).contains("actions: none"),
        "{}",
        stdout(&output)
    );
}

#[test]
fn an_unkept_backup_stays_while_it_is_locked_and_goes_after() {
    let Some(env) = TestEnv::get("an_unkept_backup_stays_while_it_is_locked_and_goes_after") else {
        return;
    };
    let fixture = Fixture::locked(env, "lockedgone", &lock_servers(env));
    let lock = "      object_lock:\n        mode: GOVERNANCE\n        extra: 0h\n";
    write_config(&fixture, "10s", "", lock);
    fixture.write("a", b"first");
    let first = update_json(&fixture);
    let old_keys: Vec<String> = fixture
        .remotes
        .iter()
        .map(|(id, _, _)| backups(&first, id)[0]["key"].as_str().unwrap().to_owned())
        .collect();

    // A policy of one second keeps only the newest backup: the old one is not kept, but
    // its lock (ten seconds) forbids deleting it yet.
    write_config(&fixture, "1s", "", lock);
    std::thread::sleep(Duration::from_millis(1100));
    fixture.write("b", b"second");
    let second = update_json(&fixture);
    let mut locked_until = Timestamp::UNIX_EPOCH;
    for (index, (id, _, _)) in fixture.remotes.iter().enumerate() {
        let old = backups(&second, id)
            .into_iter()
            .find(|b| b["key"] == old_keys[index].as_str())
            .unwrap();
        assert!(old["keep"].is_null(), "{id}: {old}");
        let held = timestamp(&old["held_until"]);
        assert_eq!(fixture.keys(index).len(), 2, "{id}: the old backup stays");
        assert!(
            !second["plan"]["actions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["action"] == "delete"),
            "{second}"
        );
        locked_until = locked_until.max(held);
    }
    let output = fixture.btrfs2s3(&["update", "--pretend"]);
    assert!(
        stdout(&output).contains("not kept: locked until"),
        "{}",
        stdout(&output)
    );

    // Once the lock expired, the next run deletes it, every version of it.
    let wait = locked_until
        .duration_since(Timestamp::now())
        .as_secs()
        .max(0)
        + 2;
    std::thread::sleep(Duration::from_secs(wait.unsigned_abs()));
    update_json(&fixture);
    for (index, (id, _, _)) in fixture.remotes.iter().enumerate() {
        let keys = fixture.keys(index);
        assert_eq!(keys.len(), 1, "{id}: {keys:?}");
        assert_ne!(keys[0], old_keys[index]);
        let remote = fixture.remote(index);
        let versions = fixture
            .runtime
            .block_on(
                remote
                    .sdk_client()
                    .list_object_versions()
                    .bucket(remote.bucket())
                    .send(),
            )
            .unwrap();
        assert_eq!(versions.versions().len(), 1, "{id}: {versions:?}");
        assert!(
            versions.delete_markers().is_empty(),
            "{id}: delete markers left: {versions:?}"
        );
    }
}

#[test]
fn classes_follow_the_tree_within_their_minimum_durations_and_archives_restore() {
    let Some(env) =
        TestEnv::get("classes_follow_the_tree_within_their_minimum_durations_and_archives_restore")
    else {
        return;
    };
    let servers: Vec<&str> = env
        .s3
        .iter()
        .filter(|s| s.storage_classes)
        .map(|s| s.name.as_str())
        .collect();
    let fixture = Fixture::new(env, "classes", &servers);
    let classes = "        storage_class: {y: DEEP_ARCHIVE, default: GLACIER_IR}\n";
    write_config(&fixture, "2y 1d", classes, "");
    let new_class = |json: &Value, id: &str| {
        backups(json, id)
            .into_iter()
            .find(|b| b["new"] == true)
            .map(|b| {
                (
                    b["key"].as_str().unwrap().to_owned(),
                    b["storage_class"].clone(),
                )
            })
            .unwrap()
    };
    // Each run makes one new backup; its class is the planned one and the stored one.
    let run = |data: &[u8], class: &str| {
        fixture.write(&format!("f{}", data.len()), data);
        let json = update_json(&fixture);
        for (index, (id, _, _)) in fixture.remotes.iter().enumerate() {
            let (key, planned) = new_class(&json, id);
            assert_eq!(planned, class, "{id}: {key}");
            let listing = fixture
                .runtime
                .block_on(fixture.remote(index).list())
                .unwrap();
            let stored = listing
                .backups
                .iter()
                .find(|b| b.object.key == key)
                .and_then(|b| b.object.storage_class.clone());
            assert_eq!(stored.as_deref(), Some(class), "{id}: {key}");
        }
        json
    };
    // Kept for its year (two years): Deep Archive.
    run(b"first", "DEEP_ARCHIVE");
    // Kept only as the newest, a day: too short for Glacier IR's 90 days.
    run(b"second!", "STANDARD");
    // Unless the provider bills no minimum for it.
    write_config(
        &fixture,
        "2y 1d",
        &format!("{classes}        min_days: {{GLACIER_IR: 0}}\n"),
        "",
    );
    let third = run(b"third!!!", "GLACIER_IR");

    // The newest backup, a differential against the full one in Deep Archive, restored.
    restore_and_verify_the_archived_chain(&fixture, &third);
}

/// Restores the newest backup of `third` (a differential against the full one in Deep
/// Archive) from every remote, first without waiting where the server archives, then
/// verifies the remote.
fn restore_and_verify_the_archived_chain(fixture: &Fixture, third: &Value) {
    let newest = new_key(third, &fixture.remotes[0].0);
    let uuid = backups(third, &fixture.remotes[0].0)
        .into_iter()
        .find(|b| b["key"] == newest.as_str())
        .unwrap()["uuid"]
        .as_str()
        .unwrap()
        .to_owned();
    for (id, server, _) in &fixture.remotes {
        let dest = fixture
            .env
            .btrfs_receive
            .join(btrfs2s3_tests::unique_name("archived"));
        std::fs::create_dir(&dest).unwrap();
        let dest_text = dest.display().to_string();
        let args = [
            "restore", "--remote", id, "--uuid", &uuid, "--dest", &dest_text,
        ];
        let pretend = fixture.btrfs2s3(&[&args[..], &["--pretend"]].concat());
        assert!(
            stdout(&pretend).contains("from DEEP_ARCHIVE (restored first)"),
            "{id}: {}",
            stdout(&pretend)
        );
        if server.archive {
            // Not waiting: the restore is requested, nothing is received yet.
            let output = fixture.btrfs2s3(&[&args[..], &["--no-wait"]].concat());
            assert!(output.status.success(), "{id}: {}", stderr(&output));
            assert!(
                stdout(&output).contains("are not available yet (1 restore(s) requested now)"),
                "{id}: {}",
                stdout(&output)
            );
            assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 0);
        }
        let output = fixture.btrfs2s3(&args);
        assert!(
            output.status.success(),
            "{id}: {}{}",
            stdout(&output),
            stderr(&output)
        );
        assert!(
            stdout(&output).contains("done: 2 backup(s) received"),
            "{id}: {}",
            stdout(&output)
        );
        // The subvolume received from the newest backup (by its received uuid: names need
        // not sort by age).
        let restored = std::fs::read_dir(&dest)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|path| {
                support::run(
                    std::process::Command::new("btrfs")
                        .args(["subvolume", "show"])
                        .arg(path),
                )
                .lines()
                .any(|line| line.contains("Received UUID:") && line.trim_end().ends_with(&uuid))
            })
            .unwrap_or_else(|| panic!("{id}: no subvolume received from {uuid}"));
        assert_eq!(std::fs::read(restored.join("f8")).unwrap(), b"third!!!");
        // The full backup and the newest differential (the second one is not kept).
        let output = fixture.btrfs2s3(&["verify", "--remote", id]);
        assert!(
            stdout(&output).contains("all 2 backup(s) verified"),
            "{id}: {}{}",
            stdout(&output),
            stderr(&output)
        );
    }
}

/// The key of the new backup of `json` in remote `id`.
fn new_key(json: &Value, id: &str) -> String {
    backups(json, id)
        .into_iter()
        .find(|b| b["new"] == true)
        .map(|b| b["key"].as_str().unwrap().to_owned())
        .unwrap()
}

#[test]
fn object_lock_without_it_in_the_bucket_is_refused_before_anything_changes() {
    let Some(env) =
        TestEnv::get("object_lock_without_it_in_the_bucket_is_refused_before_anything_changes")
    else {
        return;
    };
    // Garage has no object lock at all; the moto bucket has it disabled.
    for server in ["garage", "moto"] {
        let fixture = Fixture::new(env, "nolock", &[server]);
        let lock = "      object_lock:\n        mode: COMPLIANCE\n";
        write_config(&fixture, "1d", "", lock);
        fixture.write("a", b"data");
        let output = fixture.btrfs2s3(&["update", "--force"]);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{server}: {}",
            stderr(&output)
        );
        let bucket = &fixture.remotes[0].2;
        assert!(
            stderr(&output).contains(&format!(
                "bucket {bucket} does not have Object Lock enabled"
            )),
            "{server}: {}",
            stderr(&output)
        );
        assert!(fixture.keys(0).is_empty(), "{server}");
        assert!(fixture.snapshot_names().is_empty(), "{server}");
    }
}

#[test]
fn a_bucket_with_object_lock_and_no_lock_in_the_config_is_said_once() {
    let Some(env) =
        TestEnv::get("a_bucket_with_object_lock_and_no_lock_in_the_config_is_said_once")
    else {
        return;
    };
    let fixture = Fixture::locked(env, "lockoff", &lock_servers(env));
    write_config(&fixture, "1d", "", "");
    fixture.write("a", b"data");
    let output = fixture.btrfs2s3(&["update", "--pretend"]);
    for (id, _, _) in &fixture.remotes {
        let note = format!(
            "note: the bucket of remote {id} has Object Lock enabled, but the config sets no object_lock"
        );
        assert_eq!(
            stdout(&output).matches(&note).count(),
            1,
            "{}",
            stdout(&output)
        );
    }
    fixture.update(&[]);
}

#[test]
fn a_wrong_clock_stops_the_run_before_it_uploads() {
    let Some(env) = TestEnv::get("a_wrong_clock_stops_the_run_before_it_uploads") else {
        return;
    };
    let fixture = Fixture::locked(env, "clock", &["moto"]);
    let (_, server, bucket) = &fixture.remotes[0];
    let proxy = FaultProxy::start(&server.endpoint);
    let yaml = format!(
        "timezone: UTC\nsources:\n  - path: {}\n    snapshots: {}\n    upload_to_remotes:\n      - id: moto\n        preserve: 1d\nremotes:\n  - id: moto\n    s3:\n      bucket: {bucket}\n      object_lock:\n        mode: GOVERNANCE\n      endpoint:\n        endpoint_url: {}\n        region_name: {}\n        aws_access_key_id: {}\n        aws_secret_access_key: {}\n",
        fixture.source.display(),
        fixture.snapshots.display(),
        proxy.endpoint(),
        server.region,
        server.access_key_id,
        server.secret_access_key,
    );
    fixture.write_raw_config(&yaml);
    fixture.write("a", b"data");
    // The server says it is 2024.
    proxy.add(
        Match::list_objects(),
        Fault::Date("Mon, 01 Jan 2024 00:00:00 GMT"),
        1000,
    );
    let output = fixture.btrfs2s3(&["update", "--force"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("this machine's clock")
            && stderr(&output).contains("2024-01-01T00:00:00Z"),
        "{}",
        stderr(&output)
    );
    assert!(fixture.keys(0).is_empty());
    assert!(fixture.snapshot_names().is_empty());
    // With the clock right again, the run goes through.
    proxy.clear();
    fixture.update(&[]);
    assert_eq!(fixture.keys(0).len(), 1);
}
