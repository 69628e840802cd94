//! `btrfs2s3 check`: one line per check, exit 0 only when all pass, nothing left behind.
// Tests fail by panicking, helpers included.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::Output;

use btrfs2s3_tests::TestEnv;
use support::Fixture;

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The lines of a check that say PROBLEM.
fn problems(output: &Output) -> Vec<String> {
    stdout(output)
        .lines()
        .filter(|line| line.starts_with("PROBLEM"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_good_setup_passes_every_check_and_is_left_as_it_was() {
    let Some(env) = TestEnv::get("a_good_setup_passes_every_check_and_is_left_as_it_was") else {
        return;
    };
    let fixture = Fixture::new(env, "check-good", &["moto", "garage"]);
    fixture.write_config("1y", &[&["gzip"]]);
    let output = fixture.btrfs2s3(&["check"]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(problems(&output).is_empty(), "{text}");
    for expected in [
        "ok       config ",
        "a btrfs subvolume",
        "on the same btrfs filesystem, writable",
        "pipe_through to moto: runs /usr/bin/gzip",
        "remote moto: bucket ",
        "remote garage: bucket ",
        "may put and delete objects",
        "clocks agree",
    ] {
        assert!(text.contains(expected), "no {expected:?} in:\n{text}");
    }
    assert_eq!(
        text.matches("may put and delete objects").count(),
        2,
        "{text}"
    );
    // Nothing left: no probe object, no snapshot.
    assert!(fixture.keys(0).is_empty() && fixture.keys(1).is_empty());
    assert!(fixture.snapshot_names().is_empty());
}

#[test]
fn problems_are_named_with_what_to_do() {
    let Some(env) = TestEnv::get("problems_are_named_with_what_to_do") else {
        return;
    };
    let fixture = Fixture::new(env, "check-bad", &["garage"]);
    let (_, server, bucket) = &fixture.remotes[0];
    let good = std::fs::read_to_string(&fixture.config).unwrap();
    let check = |yaml: &str| {
        fixture.write_raw_config(yaml);
        fixture.btrfs2s3(&["check"])
    };

    let missing = check(&good.replace(bucket.as_str(), "no-such-bucket"));
    assert_eq!(missing.status.code(), Some(1));
    let found = problems(&missing);
    assert!(
        found.len() == 1 && found[0].contains("the bucket does not exist"),
        "{}",
        stdout(&missing)
    );

    let wrong = check(&good.replace(
        &server.secret_access_key,
        &"0".repeat(server.secret_access_key.len()),
    ));
    assert_eq!(wrong.status.code(), Some(1));
    assert!(
        problems(&wrong)[0].contains("the server refuses the credentials"),
        "{}",
        stdout(&wrong)
    );

    // A key that may only read: listing works; Garage refuses it even the bucket's Object
    // Lock configuration (an owner's operation there), so nothing is probed.
    let reader = server
        .read_only
        .as_ref()
        .expect("Garage has a read-only key");
    let read_only = check(
        &good
            .replace(bucket.as_str(), &reader.bucket)
            .replace(&server.access_key_id, &reader.access_key_id)
            .replace(&server.secret_access_key, &reader.secret_access_key),
    );
    assert_eq!(read_only.status.code(), Some(1), "{}", stdout(&read_only));
    let text = stdout(&read_only);
    assert!(
        text.contains("may list") && text.contains("not probed"),
        "{text}"
    );
    let found = problems(&read_only);
    assert!(
        !found.is_empty()
            && found.iter().all(|line| {
                line.contains("access denied") && line.contains("the credentials need s3:")
            }),
        "{text}"
    );

    // A source that is not a subvolume, and a snapshot directory that is not there.
    let plain = fixture.dir.join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    let local = check(
        &good
            .replace(
                &format!("path: {}", fixture.source.display()),
                &format!("path: {}", plain.display()),
            )
            .replace(
                &format!("snapshots: {}", fixture.snapshots.display()),
                &format!("snapshots: {}/gone", fixture.snapshots.display()),
            ),
    );
    assert_eq!(local.status.code(), Some(1));
    let found = problems(&local);
    assert_eq!(found.len(), 2, "{}", stdout(&local));
    assert!(
        found[0].contains("must be the root of a btrfs subvolume"),
        "{found:?}"
    );
    assert!(
        found[1].contains("snapshots: must be a directory"),
        "{found:?}"
    );

    // A program that is not there: the config itself is wrong (exit 2).
    fixture.write_config("1y", &[&["no-such-compressor"]]);
    let output = fixture.btrfs2s3(&["check"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("no-such-compressor"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_refused_put_says_which_permission_is_missing() {
    use btrfs2s3_tests::proxy::{Fault, FaultProxy, Match};
    let Some(env) = TestEnv::get("a_refused_put_says_which_permission_is_missing") else {
        return;
    };
    let fixture = Fixture::new(env, "check-put", &["moto"]);
    let proxy = FaultProxy::start(&fixture.remotes[0].1.endpoint);
    fixture.write_config_through(&proxy.endpoint(), "1y", "      max_attempts: 1\n");
    proxy.add(Match::put_object(), Fault::Status(403, "AccessDenied"), 10);
    let output = fixture.btrfs2s3(&["check"]);
    assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
    let found = problems(&output);
    assert!(
        found.len() == 1 && found[0].contains("the credentials need s3:PutObject on bucket"),
        "{}",
        stdout(&output)
    );
    proxy.clear();
    let output = fixture.btrfs2s3(&["check"]);
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    assert!(fixture.keys(0).is_empty());
}
