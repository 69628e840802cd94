//! `btrfs2s3 update` end to end: the real binary, a loopback btrfs, moto and Garage.
// Tests fail by panicking, helpers included.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::{Command, Stdio};

use btrfs2s3_s3::BackupMeta;
use btrfs2s3_tests::TestEnv;
use support::{Fixture, run};

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn backups(fixture: &Fixture, remote: usize) -> Vec<(String, BackupMeta)> {
    let mut backups: Vec<(String, BackupMeta)> = fixture
        .keys(remote)
        .into_iter()
        .filter_map(|key| BackupMeta::parse_key(&key).ok().map(|meta| (key, meta)))
        .collect();
    backups.sort_by_key(|(_, meta)| meta.ctransid);
    backups
}

fn source_uuid(fixture: &Fixture) -> uuid::Uuid {
    let output = run(Command::new("btrfs")
        .args(["subvolume", "show"])
        .arg(&fixture.source));
    let line = output
        .lines()
        .find(|l| l.trim_start().starts_with("UUID:"))
        .unwrap();
    line.split_whitespace().last().unwrap().parse().unwrap()
}

#[test]
fn full_then_differential_then_expiry_on_moto_and_garage() {
    let Some(env) = TestEnv::get("full_then_differential_then_expiry_on_moto_and_garage") else {
        return;
    };
    let fixture = Fixture::new(env, "cycle", &["moto", "garage"]);
    // One yearly full backup, everything else differential against it.
    fixture.write_config("1y", &[]);
    fixture.write("a", b"first file");

    // First run: one snapshot, renamed to its canonical name; one full backup per remote.
    fixture.update(&[]);
    let names = fixture.snapshot_names();
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(
        names[0].starts_with("source.20") && !names[0].contains("NEW"),
        "{names:?}"
    );
    let source_uuid = source_uuid(&fixture);
    for remote in 0..2 {
        let found = backups(&fixture, remote);
        assert_eq!(found.len(), 1, "remote {remote}: {found:?}");
        let (key, meta) = &found[0];
        assert!(key.starts_with("source.ctim"), "{key}");
        assert_eq!(meta.send_parent_uuid, None, "a full backup");
        assert_eq!(meta.parent_uuid, source_uuid);
        assert!(names[0].ends_with(&format!(".{}", meta.ctransid)));
    }
    let full = fixture.download(0, &backups(&fixture, 0)[0].0);
    assert_eq!(
        full,
        fixture.download(1, &backups(&fixture, 1)[0].0),
        "same stream in both remotes"
    );

    // No change: no new snapshot, nothing to do.
    let out = fixture.update(&[]);
    assert!(out.contains("nothing to do"), "{out}");
    assert_eq!(fixture.snapshot_names(), names);

    // A change: a differential against the yearly snapshot.
    fixture.write("b", b"second file");
    fixture.update(&[]);
    let found = backups(&fixture, 1);
    assert_eq!(found.len(), 2);
    assert_eq!(found[1].1.send_parent_uuid, Some(found[0].1.uuid));
    let diff = fixture.download(1, &found[1].0);
    let received = fixture.receive(&[&full, &diff]);
    let second = received.join(fixture.snapshot_names()[1].clone());
    assert_eq!(std::fs::read(second.join("a")).unwrap(), b"first file");
    assert_eq!(std::fs::read(second.join("b")).unwrap(), b"second file");

    // A third change: the second snapshot is neither preserved (only the first of the year
    // is) nor the most recent any more, so it and its backup go in the same run.
    fixture.write("c", b"third file");
    let out = fixture.update(&[]);
    assert!(out.contains("destroy") && out.contains("delete"), "{out}");
    let kept = backups(&fixture, 0);
    let uuids: Vec<uuid::Uuid> = kept.iter().map(|(_, m)| m.uuid).collect();
    assert_eq!(uuids, [found[0].1.uuid, kept[1].1.uuid]);
    assert_eq!(kept[1].1.send_parent_uuid, Some(found[0].1.uuid));
    assert_eq!(fixture.snapshot_names().len(), 2);

    // "A year later": the first snapshot's year is no longer preserved, so its snapshot is
    // destroyed, but its backup stays: the most recent backup is a differential against it.
    let out = fixture.update(&["--now", "2028-06-01T00:00:00Z"]);
    assert!(out.contains("destroy") && !out.contains("delete"), "{out}");
    for remote in 0..2 {
        let after: Vec<uuid::Uuid> = backups(&fixture, remote)
            .iter()
            .map(|(_, m)| m.uuid)
            .collect();
        assert_eq!(after, uuids, "remote {remote}");
    }
    let names = fixture.snapshot_names();
    assert_eq!(
        names.len(),
        1,
        "only the most recent snapshot stays: {names:?}"
    );
    assert!(names[0].ends_with(&format!(".{}", kept[1].1.ctransid)));
}

#[test]
fn pipe_through_gzip_stores_gzip() {
    let Some(env) = TestEnv::get("pipe_through_gzip_stores_gzip") else {
        return;
    };
    let fixture = Fixture::new(env, "gzip", &["moto"]);
    fixture.write_config("1y", &[&["gzip"]]);
    fixture.write("text", &b"compressible ".repeat(10_000));
    fixture.update(&[]);
    let (key, _) = backups(&fixture, 0).remove(0);
    let object = fixture.download(0, &key);
    assert_eq!(&object[..2], &[0x1f, 0x8b], "gzip magic");
    let mut gunzip = Command::new("gunzip")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = gunzip.stdin.take().unwrap();
    let writer =
        std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &object).unwrap());
    let stream = gunzip.wait_with_output().unwrap().stdout;
    writer.join().unwrap();
    let received = fixture.receive(&[&stream]);
    let name = &fixture.snapshot_names()[0];
    assert_eq!(
        std::fs::read(received.join(name).join("text")).unwrap(),
        b"compressible ".repeat(10_000)
    );
}

#[test]
fn a_failing_pipe_through_command_leaves_no_object() {
    let Some(env) = TestEnv::get("a_failing_pipe_through_command_leaves_no_object") else {
        return;
    };
    let fixture = Fixture::new(env, "false", &["moto", "garage"]);
    fixture.write("big", &vec![7u8; 20 << 20]);
    for command in [
        &["false"][..],
        &["sh", "-c", "head -c 12000000; echo broken >&2; exit 3"][..],
    ] {
        fixture.write_config("1y", &[command]);
        let output = fixture.btrfs2s3(&["update", "--force"]);
        assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
        let message = stderr(&output);
        assert!(
            message.contains(&format!("pipe_through command `{}`", command.join(" "))),
            "{message}"
        );
        for remote in 0..2 {
            assert!(
                fixture.keys(remote).is_empty(),
                "no object in remote {remote}"
            );
            let client = fixture.remote(remote);
            let uploads = fixture
                .runtime
                .block_on(
                    client
                        .sdk_client()
                        .list_multipart_uploads()
                        .bucket(client.bucket())
                        .send(),
                )
                .unwrap();
            assert!(
                uploads.uploads().is_empty(),
                "no multipart upload left in remote {remote}"
            );
        }
    }
    let message = stderr(&fixture.btrfs2s3(&["update", "--force"]));
    assert!(
        message.contains("exited with status 3: broken"),
        "the command's stderr is shown: {message}"
    );
    // Fixed, the next run picks the work up.
    fixture.write_config("1y", &[]);
    fixture.update(&[]);
    assert_eq!(backups(&fixture, 0).len(), 1);
    assert_eq!(
        fixture.snapshot_names().len(),
        1,
        "the snapshot of the failed runs was adopted"
    );
}

#[test]
fn two_sources_and_two_remotes_list_each_remote_once() {
    let Some(env) = TestEnv::get("two_sources_and_two_remotes_list_each_remote_once") else {
        return;
    };
    let fixture = Fixture::new(env, "two", &["moto", "garage"]);
    let second = fixture.subvolume("second");
    std::fs::write(second.join("f"), "second source").unwrap();
    fixture.write("f", b"first source");
    let yaml = format!(
        "timezone: UTC\nsources:\n  - path: {}\n    snapshots: {}\n    upload_to_remotes:\n      - id: moto\n        preserve: 1d\n      - id: garage\n        preserve: 1y 1d\n  - path: {}\n    snapshots: {}\n    upload_to_remotes:\n      - id: moto\n        preserve: 1y\n      - id: garage\n        preserve: 1d\n{}",
        fixture.source.display(),
        fixture.snapshots.display(),
        second.display(),
        fixture.snapshots.display(),
        fixture.remotes_yaml()
    );
    fixture.write_raw_config(&yaml);
    let output = fixture.btrfs2s3(&["-v", "update", "--force"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let log = stderr(&output);
    let listings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("listed remote"))
        .collect();
    assert_eq!(listings.len(), 2, "{log}");
    assert!(
        listings.iter().all(|l| l.ends_with("1 page(s)")),
        "{listings:?}"
    );
    for remote in 0..2 {
        let found = backups(&fixture, remote);
        assert_eq!(found.len(), 2, "a backup of each source in remote {remote}");
        assert_ne!(found[0].1.parent_uuid, found[1].1.parent_uuid);
    }
    assert_eq!(fixture.snapshot_names().len(), 2);
    assert!(
        fixture
            .snapshot_names()
            .iter()
            .any(|n| n.starts_with("second."))
    );
}

#[test]
fn foreign_objects_and_foreign_snapshots_are_untouched() {
    let Some(env) = TestEnv::get("foreign_objects_and_foreign_snapshots_are_untouched") else {
        return;
    };
    let fixture = Fixture::new(env, "foreign", &["moto"]);
    fixture.write_config("1d", &[]);
    // Things in the bucket and in the snapshot directory that are not this source's backups
    // and snapshots.
    fixture.put(0, "notes.txt", b"mine");
    let other = BackupMeta {
        uuid: uuid::Uuid::from_u128(1),
        parent_uuid: uuid::Uuid::from_u128(2),
        send_parent_uuid: None,
        ctransid: 1,
        ctime: jiff::Timestamp::from_second(1_600_000_000).unwrap(),
    };
    let other_key = other.key("elsewhere", &jiff::tz::TimeZone::UTC);
    fixture.put(0, &other_key, b"someone else's stream");
    let other_subvolume = fixture.dir.join("other");
    run(Command::new("btrfs")
        .args(["subvolume", "create"])
        .arg(&other_subvolume));
    run(Command::new("btrfs")
        .args(["subvolume", "snapshot", "-r"])
        .arg(&other_subvolume)
        .arg(fixture.snapshots.join("other-readonly")));
    run(Command::new("btrfs")
        .args(["subvolume", "snapshot"])
        .arg(&fixture.source)
        .arg(fixture.snapshots.join("writable-of-source")));
    std::fs::create_dir(fixture.snapshots.join("plain-directory")).unwrap();

    fixture.write("x", b"x");
    fixture.update(&[]);
    fixture.write("y", b"y");
    fixture.update(&[]);
    fixture.update(&["--now", "2030-01-01T00:00:00Z"]);
    let keys = fixture.keys(0);
    assert!(
        keys.contains(&"notes.txt".to_owned()) && keys.contains(&other_key),
        "{keys:?}"
    );
    let names = fixture.snapshot_names();
    for name in ["other-readonly", "writable-of-source", "plain-directory"] {
        assert!(
            names.contains(&name.to_owned()),
            "{name} is still there: {names:?}"
        );
    }
}

#[test]
fn manual_snapshots_are_adopted_and_renamed() {
    let Some(env) = TestEnv::get("manual_snapshots_are_adopted_and_renamed") else {
        return;
    };
    let fixture = Fixture::new(env, "manual", &["moto"]);
    fixture.write("f", b"data");
    run(Command::new("btrfs")
        .args(["subvolume", "snapshot", "-r"])
        .arg(&fixture.source)
        .arg(fixture.snapshots.join("my snapshot")));
    fixture.update(&[]);
    let names = fixture.snapshot_names();
    assert_eq!(
        names.len(),
        1,
        "no new snapshot: the manual one is as new as the source: {names:?}"
    );
    assert!(names[0].starts_with("source.20"), "{names:?}");
    assert_eq!(backups(&fixture, 0).len(), 1);
}

#[test]
fn a_second_run_of_the_same_config_is_locked_out() {
    let Some(env) = TestEnv::get("a_second_run_of_the_same_config_is_locked_out") else {
        return;
    };
    let fixture = Fixture::new(env, "lock", &["moto"]);
    let held = btrfs2s3_core::lock::lock(&fixture.config, std::time::Duration::ZERO).unwrap();
    let output = fixture.btrfs2s3(&["update", "--force"]);
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(
        message.contains(&format!("pid {}", std::process::id())),
        "{message}"
    );
    assert!(fixture.snapshot_names().is_empty(), "nothing was done");
    drop(held);
    fixture.update(&[]);
}

#[test]
fn pretend_changes_nothing() {
    let Some(env) = TestEnv::get("pretend_changes_nothing") else {
        return;
    };
    let fixture = Fixture::new(env, "pretend", &["moto"]);
    fixture.write("f", b"data");
    fixture.update(&[]);
    fixture.write("g", b"more");
    let (names, keys) = (fixture.snapshot_names(), fixture.keys(0));
    for now in [None, Some("2031-01-01T00:00:00Z")] {
        let mut args = vec!["update", "--pretend"];
        args.extend(now.map(|now| ["--now", now]).into_iter().flatten());
        let output = fixture.btrfs2s3(&args);
        assert!(output.status.success(), "{}", stderr(&output));
        let preview = stdout(&output);
        assert!(
            preview.contains("(to be created)") && preview.contains("upload"),
            "{preview}"
        );
        assert_eq!(
            fixture.snapshot_names(),
            names,
            "no snapshot was made or changed"
        );
        assert_eq!(fixture.keys(0), keys, "no object was made or changed");
    }
}

#[test]
fn the_json_plan_has_the_actions_of_the_preview() {
    let Some(env) = TestEnv::get("the_json_plan_has_the_actions_of_the_preview") else {
        return;
    };
    let fixture = Fixture::new(env, "json", &["moto"]);
    fixture.write_config("1y 1m 1d", &[]);
    fixture.write("f", b"data");
    fixture.update(&[]);
    fixture.write("g", b"more");
    let args = ["update", "--pretend", "--now", "2029-02-03T04:05:06Z"];
    let preview = stdout(&fixture.btrfs2s3(&args));
    let verbose = stdout(&fixture.btrfs2s3(&[&["-v"][..], &args[..]].concat()));
    let json: serde_json::Value =
        serde_json::from_slice(&fixture.btrfs2s3(&[&args[..], &["--json"]].concat()).stdout)
            .unwrap();
    let actions = json["plan"]["actions"].as_array().unwrap();
    let action_lines = |text: &str| -> Vec<String> {
        text.lines()
            .skip_while(|l| *l != "actions:")
            .skip(1)
            .filter(|l| l.starts_with("  "))
            .map(str::to_owned)
            .collect()
    };
    let preview_actions = action_lines(&preview);
    let verbose_actions = action_lines(&verbose);
    assert_eq!(actions.len(), preview_actions.len(), "{preview}");
    assert_eq!(actions.len(), verbose_actions.len(), "{verbose}");
    for ((action, line), verbose_line) in actions.iter().zip(&preview_actions).zip(&verbose_actions)
    {
        let kind = action["action"].as_str().unwrap();
        let word = match kind {
            "create_snapshot" => "snapshot",
            "upload" => "upload",
            "rename" => "rename",
            "destroy" => "destroy",
            "delete" => "delete",
            other => panic!("unexpected action {other}"),
        };
        assert!(line.trim_start().starts_with(word), "{kind} vs {line}");
        // Backups by their short uuids; their keys only with -v.
        let key = action["key"].as_str().or(action["spec"]["key"].as_str());
        if let Some(key) = key {
            assert!(!line.contains(key), "{line} shows the key {key}");
            assert!(verbose_line.contains(key), "{verbose_line} names {key}");
        }
        let uuid = action["uuid"]
            .as_str()
            .or(action["spec"]["snapshot"]["uuid"].as_str());
        if let (Some(uuid), true) = (uuid, kind != "destroy" && kind != "rename") {
            let short = &uuid.replace('-', "")[..8];
            assert!(line.contains(short), "{line} names {short}");
        }
    }
    assert_eq!(json["plan"]["now"], "2029-02-03T04:05:06Z");

    // Executed with --json: the plan and the outcome of each of its actions.
    let output = fixture.btrfs2s3(&["update", "--force", "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let planned = json["plan"]["actions"].as_array().unwrap();
    let results = json["outcome"]["results"].as_array().unwrap();
    assert!(!planned.is_empty());
    assert_eq!(planned.len(), results.len());
    assert!(
        results.iter().all(|r| r[1]["result"] == "done"),
        "{results:?}"
    );
}

#[test]
fn unattended_runs_need_force() {
    let Some(env) = TestEnv::get("unattended_runs_need_force") else {
        return;
    };
    let fixture = Fixture::new(env, "unattended", &["moto"]);
    let output = Command::new(support::binary())
        .args(["update"])
        .arg(&fixture.config)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr(&output).trim(),
        "to run in unattended mode, use --force"
    );
    assert!(fixture.snapshot_names().is_empty());
    // The config is checked first: a missing one is a usage error, --force or not.
    let missing = fixture.dir.join("no-such-config.yaml");
    let output = Command::new(support::binary())
        .arg("update")
        .arg(&missing)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("no-such-config.yaml") && stderr(&output).contains("No such file"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn bad_configs_exit_2_and_change_nothing() {
    let Some(env) = TestEnv::get("bad_configs_exit_2_and_change_nothing") else {
        return;
    };
    let fixture = Fixture::new(env, "badconfig", &["moto"]);
    fixture.write_config("1y", &[]);
    fixture.write("f", b"data");
    let good = std::fs::read_to_string(&fixture.config).unwrap();
    let source = fixture.source.display().to_string();
    let snapshots = fixture.snapshots.display().to_string();
    let not_btrfs = std::env::temp_dir().display().to_string();
    let cases: Vec<(String, &str)> = vec![
        (
            good.replace("timezone: Europe/Berlin", "timezone: Europe/Atlantis"),
            "unknown time zone \"Europe/Atlantis\"",
        ),
        (
            good.replace("preserve: 1y", "preserve: 1d 1y"),
            "\"1y\" must come before \"1d\"",
        ),
        (
            good.replace("preserve: 1y", "preserve: 1y\n        colour: red"),
            "unknown field `colour`",
        ),
        (
            good.replace(
                "      - id: moto\n        preserve",
                "      - id: nowhere\n        preserve",
            ),
            "remote \"nowhere\"",
        ),
        (
            good.replace(&format!("path: {source}"), &format!("path: {snapshots}")),
            "is not a btrfs subvolume",
        ),
        (
            good.replace(
                &format!("path: {source}"),
                &format!("path: {source}/missing"),
            ),
            "missing",
        ),
        (
            good.replace(
                &format!("snapshots: {snapshots}"),
                &format!("snapshots: {not_btrfs}"),
            ),
            "is not on a btrfs filesystem",
        ),
        (
            good.replace(
                &format!("snapshots: {snapshots}"),
                &format!("snapshots: {}", env.btrfs_receive.display()),
            ),
            "is on another filesystem",
        ),
        ("timezone: UTC\nsources: [\n".to_owned(), "c"),
    ];
    for (yaml, fragment) in cases {
        fixture.write_raw_config(&yaml);
        let output = fixture.btrfs2s3(&["update", "--force"]);
        let message = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{fragment}: {message}");
        assert!(
            message.contains(fragment),
            "expected {fragment:?} in {message}"
        );
        assert!(
            message.contains("config.yaml") || message.contains("cannot use"),
            "names the file or path: {message}"
        );
        assert!(
            fixture.snapshot_names().is_empty(),
            "{fragment}: no snapshot"
        );
        assert!(fixture.keys(0).is_empty(), "{fragment}: no object");
    }
    let missing = Command::new(support::binary())
        .args(["update", "--force", "/nonexistent/config.yaml"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        stderr(&missing).contains("/nonexistent/config.yaml: cannot read the file"),
        "{}",
        stderr(&missing)
    );
    let conflicting = Command::new(support::binary())
        .args(["update", "--force", "--pretend", "x.yaml"])
        .output()
        .unwrap();
    assert_eq!(
        conflicting.status.code(),
        Some(2),
        "--force and --pretend conflict"
    );
}

/// Runs `btrfs2s3 update CONFIG` in a pseudo-terminal (through `script`), typing `answer`.
fn interactive_update(fixture: &Fixture, answer: &str) -> (std::process::ExitStatus, String) {
    let command_line = format!(
        "{} update {}",
        support::binary().display(),
        fixture.config.display()
    );
    let mut script = Command::new("script")
        .args(["-qec", &command_line, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = script.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, answer.as_bytes()).unwrap();
    let output = script.wait_with_output().unwrap();
    drop(stdin);
    (
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[test]
fn the_prompt_continues_stops_or_undoes() {
    let Some(env) = TestEnv::get("the_prompt_continues_stops_or_undoes") else {
        return;
    };
    let fixture = Fixture::new(env, "prompt", &["moto"]);
    fixture.write("f", b"data");

    // "u": the snapshot just taken is destroyed again, nothing is uploaded.
    let (status, out) = interactive_update(&fixture, "u\n");
    assert!(status.success(), "{out}");
    assert!(
        out.contains("continue? (y)es, (n)o, (u)ndo the new snapshots"),
        "{out}"
    );
    assert!(fixture.snapshot_names().is_empty(), "undone: {out}");
    assert!(fixture.keys(0).is_empty());

    // "n": the snapshot stays (the next run adopts it), nothing else happens.
    let (status, out) = interactive_update(&fixture, "n\n");
    assert!(status.success(), "{out}");
    let names = fixture.snapshot_names();
    assert_eq!(names.len(), 1);
    assert!(names[0].contains(".NEW."), "not renamed: {names:?}");
    assert!(fixture.keys(0).is_empty());

    // An unknown answer asks again; "y" goes ahead. No new snapshot this time, so the
    // question has no undo.
    let (status, out) = interactive_update(&fixture, "maybe\ny\n");
    assert!(status.success(), "{out}");
    assert_eq!(out.matches("continue? (y)es, (n)o: ").count(), 2, "{out}");
    assert_eq!(fixture.keys(0).len(), 1);
    assert!(!fixture.snapshot_names()[0].contains(".NEW."));
}

#[test]
fn runs_sharing_a_snapshot_directory_never_interleave() {
    let Some(env) = TestEnv::get("runs_sharing_a_snapshot_directory_never_interleave") else {
        return;
    };
    let fixture = Fixture::new(env, "shared", &["moto"]);
    fixture.write("f", b"data");
    // A second config file for the same source and snapshot directory.
    let other = fixture.dir.join("other.yaml");
    std::fs::copy(&fixture.config, &other).unwrap();

    // Someone holds the directory: the run gives up at once, naming them...
    let held =
        btrfs2s3_core::lock::lock_directory(&fixture.snapshots, std::time::Duration::ZERO).unwrap();
    let output = fixture.btrfs2s3(&["update", "--force"]);
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(
        message.contains(&format!("pid {}", std::process::id())),
        "{message}"
    );
    assert!(
        message.contains(&*fixture.snapshots.to_string_lossy()),
        "{message}"
    );
    assert!(fixture.snapshot_names().is_empty());
    // ...or waits for them with --wait.
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(1500));
        drop(held);
    });
    let output = fixture.btrfs2s3(&["update", "--force", "--wait", "30"]);
    assert!(output.status.success(), "{}", stderr(&output));
    releaser.join().unwrap();

    // Two runs of two configs started together: one waits for the other; the second finds
    // the first's snapshot and has nothing to do.
    fixture.write("g", b"more");
    let spawn = |config: &std::path::Path| {
        Command::new(support::binary())
            .args(["update", "--force", "--wait", "60"])
            .arg(config)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (first, second) = (spawn(&fixture.config), spawn(&other));
    for child in [first, second] {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
    }
    let names = fixture.snapshot_names();
    assert_eq!(names.len(), 2, "one new snapshot, not two: {names:?}");
    assert!(names.iter().all(|n| !n.contains(".NEW.")), "{names:?}");
    assert_eq!(backups(&fixture, 0).len(), 2);
}
