//! `btrfs2s3 list`, `restore` and `verify` end to end: backups made by `update` on the
//! loopback btrfs, read back from moto and Garage into the second btrfs filesystem.
// Tests fail by panicking, helpers included.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use btrfs2s3_s3::BackupMeta;
use btrfs2s3_tests::{TestEnv, unique_name};
use support::{Fixture, run};

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Every file, directory and symlink under `root` with its type, mode, owner, size, content
/// hash, link target, mtime and extended attributes, as JSON (python3 reads xattrs for us).
fn manifest(root: &Path) -> serde_json::Value {
    const SCRIPT: &str = r#"
import hashlib, json, os, stat, sys
root = sys.argv[1]
out = {}
for directory, dirs, files in os.walk(root):
    for name in dirs + files:
        path = os.path.join(directory, name)
        st = os.lstat(path)
        entry = {"mode": st.st_mode, "uid": st.st_uid, "gid": st.st_gid, "mtime": int(st.st_mtime),
                 "xattrs": {k: os.getxattr(path, k, follow_symlinks=False).hex()
                            for k in sorted(os.listxattr(path, follow_symlinks=False))}}
        if stat.S_ISLNK(st.st_mode):
            entry["link"] = os.readlink(path)
        elif stat.S_ISREG(st.st_mode):
            entry["size"] = st.st_size
            entry["sha256"] = hashlib.sha256(open(path, "rb").read()).hexdigest()
        out[os.path.relpath(path, root)] = entry
print(json.dumps(out, sort_keys=True))
"#;
    let out = run(Command::new("python3").args(["-c", SCRIPT]).arg(root));
    serde_json::from_str(&out).unwrap()
}

fn set_xattr(path: &Path, name: &str, value: &str) {
    run(Command::new("python3")
        .args(["-c", "import os, sys; os.setxattr(sys.argv[1], sys.argv[2], sys.argv[3].encode(), follow_symlinks=False)"])
        .arg(path)
        .args([name, value]));
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A fixture with three runs of `update` with changes between, one second apart so that
/// each snapshot is the first of its second and kept (`1y 60s`): run 1 is the full backup,
/// runs 2 and 3 differentials against it. moto gets gzip, Garage the plain stream.
fn three_runs(env: &'static TestEnv, test: &str) -> Fixture {
    let fixture = Fixture::new(env, test, &["moto", "garage"]);
    let yaml = format!(
        "timezone: Europe/Berlin\nsources:\n  - path: {}\n    snapshots: {}\n    upload_to_remotes:\n      - id: moto\n        preserve: 1y 60s\n        pipe_through:\n          - [gzip]\n      - id: garage\n        preserve: 1y 60s\n{}",
        fixture.source.display(),
        fixture.snapshots.display(),
        fixture.remotes_yaml()
    );
    fixture.write_raw_config(&yaml);
    let source = &fixture.source;
    // Run 1: files with modes, a directory, a symlink, an xattr.
    std::fs::write(source.join("a.txt"), "alpha\n").unwrap();
    std::fs::create_dir(source.join("dir")).unwrap();
    std::fs::write(source.join("dir/b.bin"), vec![0xab; 300_000]).unwrap();
    chmod(&source.join("dir"), 0o750);
    std::os::unix::fs::symlink("a.txt", source.join("link")).unwrap();
    set_xattr(&source.join("a.txt"), "user.note", "first");
    fixture.write("marker", b"1");
    fixture.update(&[]);
    // Run 2: change a file, add one with another mode, remove one.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    std::fs::write(source.join("a.txt"), "alpha, changed\n").unwrap();
    std::fs::write(source.join("secret"), "only me").unwrap();
    chmod(&source.join("secret"), 0o600);
    std::fs::remove_file(source.join("dir/b.bin")).unwrap();
    fixture.write("marker", b"2");
    fixture.update(&[]);
    // Run 3: another xattr value, a bigger file.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    set_xattr(&source.join("a.txt"), "user.note", "second");
    std::fs::write(
        source.join("dir/big.bin"),
        (0..2_000_000u32)
            .map(|n| (n % 251) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    fixture.write("marker", b"3");
    fixture.update(&[]);
    assert_eq!(fixture.snapshot_names().len(), 3, "three snapshots kept");
    fixture
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

fn fresh_dest(env: &TestEnv) -> PathBuf {
    let dest = env.btrfs_receive.join(unique_name("restore"));
    std::fs::create_dir(&dest).unwrap();
    dest
}

fn restore(fixture: &Fixture, remote: &str, dest: &Path, extra: &[&str]) -> Output {
    Command::new(support::binary())
        .arg("restore")
        .arg(&fixture.config)
        .args(["--remote", remote, "--dest"])
        .arg(dest)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn round_trip_restores_every_snapshot_exactly() {
    let Some(env) = TestEnv::get("round_trip_restores_every_snapshot_exactly") else {
        return;
    };
    let fixture = three_runs(env, "roundtrip");
    for (remote, pipe) in [
        ("moto", &["--pipe-through", "gunzip"][..]),
        ("garage", &[][..]),
    ] {
        let dest = fresh_dest(env);
        let output = restore(&fixture, remote, &dest, pipe);
        assert!(
            output.status.success(),
            "{remote}: {}{}",
            stdout(&output),
            stderr(&output)
        );
        for name in fixture.snapshot_names() {
            assert_eq!(
                manifest(&dest.join(&name)),
                manifest(&fixture.snapshots.join(&name)),
                "{remote}: {name} is restored exactly"
            );
        }
        // Running it again skips what is there.
        let again = restore(&fixture, remote, &dest, pipe);
        assert!(again.status.success(), "{}", stderr(&again));
        let out = stdout(&again);
        assert_eq!(out.matches("already there, skipped").count(), 3, "{out}");
        assert!(out.contains("nothing to do"), "{out}");
    }
}

#[test]
fn restoring_one_differential_brings_its_ancestors() {
    let Some(env) = TestEnv::get("restoring_one_differential_brings_its_ancestors") else {
        return;
    };
    let fixture = three_runs(env, "single");
    let found = backups(&fixture, 1);
    let (_, last) = found.last().unwrap();
    let dest = fresh_dest(env);
    let uuid = last.uuid.to_string();
    let pretend = restore(&fixture, "garage", &dest, &["--uuid", &uuid, "--pretend"]);
    assert!(pretend.status.success(), "{}", stderr(&pretend));
    let printed = stdout(&pretend);
    let listed: Vec<&str> = printed
        .lines()
        .filter(|l| l.contains("to receive"))
        .map(str::trim)
        .collect();
    assert_eq!(
        listed.len(),
        2,
        "the full backup, then the differential: {listed:?}"
    );
    let short = |uuid: uuid::Uuid| uuid.simple().to_string()[..8].to_owned();
    assert!(
        listed[0].starts_with(&short(found[0].1.uuid))
            && listed[1].starts_with(&short(last.uuid))
            && listed[1].contains(&format!("<- {}", short(found[0].1.uuid))),
        "{listed:?}"
    );
    assert!(
        std::fs::read_dir(&dest).unwrap().next().is_none(),
        "--pretend receives nothing"
    );

    let output = restore(&fixture, "garage", &dest, &["--uuid", &uuid]);
    assert!(output.status.success(), "{}", stderr(&output));
    let mut names: Vec<String> = std::fs::read_dir(&dest)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut expected = vec![
        fixture.snapshot_names()[0].clone(),
        fixture.snapshot_names()[2].clone(),
    ];
    expected.sort();
    assert_eq!(names, expected);
    let name = &fixture.snapshot_names()[2];
    assert_eq!(
        manifest(&dest.join(name)),
        manifest(&fixture.snapshots.join(name))
    );
}

#[test]
fn verify_passes_on_good_backups_and_fails_on_altered_bytes() {
    let Some(env) = TestEnv::get("verify_passes_on_good_backups_and_fails_on_altered_bytes") else {
        return;
    };
    let fixture = three_runs(env, "verify");
    let verify = |remote: &str, extra: &[&str]| {
        Command::new(support::binary())
            .arg("verify")
            .arg(&fixture.config)
            .args(["--remote", remote])
            .args(extra)
            .output()
            .unwrap()
    };
    let good = verify("moto", &["--pipe-through", "gunzip"]);
    assert!(good.status.success(), "{}{}", stdout(&good), stderr(&good));
    assert!(
        stdout(&good).contains("all 3 backup(s) verified"),
        "{}",
        stdout(&good)
    );
    let good = verify("garage", &[]);
    assert!(good.status.success(), "{}{}", stdout(&good), stderr(&good));

    // Flip one byte in the middle of the biggest plain stream, and of a gzip stream.
    for (index, remote, pipe) in [
        (1, "garage", &[][..]),
        (0, "moto", &["--pipe-through", "gunzip"][..]),
    ] {
        let (key, meta) = backups(&fixture, index)
            .into_iter()
            .max_by_key(|(k, _)| fixture.download(index, k).len())
            .unwrap();
        let short = &meta.uuid.simple().to_string()[..8];
        let mut bytes = fixture.download(index, &key);
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x55;
        fixture.put(index, &key, &bytes);
        let bad = verify(remote, pipe);
        assert_eq!(bad.status.code(), Some(1), "{remote}: {}", stdout(&bad));
        let report = stdout(&bad);
        let line = report
            .lines()
            .find(|l| l.contains(short))
            .unwrap_or_else(|| panic!("{remote}: no line for {short}: {report}"));
        assert!(line.contains("FAILED"), "{remote}: {report}");
        assert!(
            report.contains("1 problem(s) in 3 backup(s) checked"),
            "{remote}: {report}"
        );
    }
}

#[test]
fn list_shows_what_is_in_the_bucket() {
    let Some(env) = TestEnv::get("list_shows_what_is_in_the_bucket") else {
        return;
    };
    let fixture = three_runs(env, "list");
    fixture.put(1, "other/notes.txt", b"not ours");
    let output = Command::new(support::binary())
        .arg("list")
        .arg(&fixture.config)
        .arg("--json")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let remotes = json["remotes"].as_array().unwrap();
    assert_eq!(remotes.len(), 2);
    for (index, remote) in remotes.iter().enumerate() {
        let keys_in_bucket: Vec<String> = backups(&fixture, index)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        let sources = remote["sources"].as_array().unwrap();
        assert_eq!(sources.len(), 1);
        assert_eq!(sources[0]["name"], "source");
        let mut listed: Vec<String> = sources[0]["backups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["key"].as_str().unwrap().to_owned())
            .collect();
        listed.sort();
        let mut expected = keys_in_bucket.clone();
        expected.sort();
        assert_eq!(listed, expected, "remote {index}");
        let depths: Vec<u64> = sources[0]["backups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["depth"].as_u64().unwrap())
            .collect();
        assert_eq!(
            depths,
            [0, 1, 1],
            "a full backup and two differentials under it"
        );
    }
    assert_eq!(remotes[1]["foreign_objects"], 1);
    assert_eq!(remotes[0]["foreign_objects"], 0);
    // The text version shows the same tree.
    let text = stdout(
        &Command::new(support::binary())
            .arg("list")
            .arg(&fixture.config)
            .args(["--remote", "garage"])
            .output()
            .unwrap(),
    );
    assert!(
        text.contains("3 backup(s) of 1 source(s), 1 other object(s)"),
        "{text}"
    );
    assert_eq!(text.matches("differential").count(), 2, "{text}");
}

#[test]
fn restore_and_list_work_without_the_config() {
    let Some(env) = TestEnv::get("restore_and_list_work_without_the_config") else {
        return;
    };
    let fixture = three_runs(env, "noconfig");
    let (_, server, bucket) = &fixture.remotes[1];
    let remote_args = [
        "--bucket",
        bucket.as_str(),
        "--endpoint-url",
        server.endpoint.as_str(),
        "--region",
        server.region.as_str(),
    ];
    let credentials = [
        ("AWS_ACCESS_KEY_ID", server.access_key_id.as_str()),
        ("AWS_SECRET_ACCESS_KEY", server.secret_access_key.as_str()),
    ];
    let list = Command::new(support::binary())
        .arg("list")
        .args(remote_args)
        .envs(credentials)
        .output()
        .unwrap();
    assert!(list.status.success(), "{}", stderr(&list));
    assert!(
        stdout(&list).contains("3 backup(s) of 1 source(s)"),
        "{}",
        stdout(&list)
    );
    let dest = fresh_dest(env);
    let output = Command::new(support::binary())
        .arg("restore")
        .args(remote_args)
        .arg("--dest")
        .arg(&dest)
        .envs(credentials)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 3);
}

#[test]
fn restore_errors_are_clear() {
    let Some(env) = TestEnv::get("restore_errors_are_clear") else {
        return;
    };
    let fixture = three_runs(env, "errors");
    // DEST not on btrfs.
    let output = restore(&fixture, "garage", &std::env::temp_dir(), &[]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("is not on a btrfs filesystem"),
        "{}",
        stderr(&output)
    );
    // Several remotes and no --remote.
    let output = Command::new(support::binary())
        .arg("restore")
        .arg(&fixture.config)
        .arg("--dest")
        .arg(fresh_dest(env))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("choose one with --remote"),
        "{}",
        stderr(&output)
    );
    // An unknown uuid.
    let output = restore(
        &fixture,
        "garage",
        &fresh_dest(env),
        &["--uuid", "00000000-0000-0000-0000-00000000abcd"],
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("no backup of a snapshot or source with uuid"),
        "{}",
        stderr(&output)
    );
    // A pipe command that fails (gunzip on a stream that is not gzip).
    let output = restore(
        &fixture,
        "garage",
        &fresh_dest(env),
        &["--pipe-through", "gunzip -q"],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("command `gunzip -q` exited with status"),
        "{}",
        stderr(&output)
    );
    // btrfs receive failing: a subvolume of the same name is already in the way.
    let dest = fresh_dest(env);
    let first = fixture.snapshot_names()[0].clone();
    run(Command::new("btrfs")
        .args(["subvolume", "create"])
        .arg(dest.join(&first)));
    let output = restore(&fixture, "garage", &dest, &[]);
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(
        message.contains("command `btrfs receive") && message.contains("ERROR"),
        "receive's stderr is shown: {message}"
    );
    // A chain with a missing ancestor: delete the full backup from the bucket.
    let found = backups(&fixture, 1);
    let remote = fixture.remote(1);
    fixture
        .runtime
        .block_on(remote.delete(&[found[0].0.clone()]))
        .unwrap();
    let output = restore(
        &fixture,
        "garage",
        &fresh_dest(env),
        &["--uuid", &found[2].1.uuid.to_string()],
    );
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(
        message.contains(&found[2].0) && message.contains(&found[0].1.uuid.to_string()),
        "names both: {message}"
    );
    // verify reports the broken chains too.
    let output = Command::new(support::binary())
        .arg("verify")
        .arg(&fixture.config)
        .args(["--remote", "garage"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stdout(&output).matches("broken chain").count(),
        2,
        "{}",
        stdout(&output)
    );
}
