//! The security model through the real binary, as root: a config, a program or a lock file
//! that someone else could change is refused before anything runs; keys planted in the
//! bucket stay data (listed, escaped, never followed).
// Tests fail by panicking, helpers included.
#![allow(clippy::unwrap_used)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use btrfs2s3_tests::TestEnv;
use support::Fixture;

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Runs `btrfs2s3 update --force CONFIG` with extra environment variables.
fn update(config: &Path, env: &[(&str, &str)]) -> Output {
    Command::new(support::binary())
        .args(["update", "--force"])
        .arg(config)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// The fixture's config with a `pipe_through` of `command` (YAML flow list).
fn config_with_pipe(fixture: &Fixture, command: &str) -> String {
    format!(
        "timezone: UTC\nsources:\n  - path: {}\n    snapshots: {}\n    upload_to_remotes:\n      - id: moto\n        preserve: 1d\n        pipe_through:\n          - {command}\n{}",
        fixture.source.display(),
        fixture.snapshots.display(),
        fixture.remotes_yaml()
    )
}

/// Nothing happened: no snapshot, no object, and the marker the command would have made is
/// not there.
fn nothing_ran(fixture: &Fixture, marker: &Path, context: &str) {
    assert!(
        fixture.snapshot_names().is_empty(),
        "{context}: {:?}",
        fixture.snapshot_names()
    );
    assert!(fixture.keys(0).is_empty(), "{context}");
    assert!(!marker.exists(), "{context}: the command ran");
}

#[test]
fn a_config_others_can_change_never_runs_anything() {
    let Some(env) = TestEnv::get("a_config_others_can_change_never_runs_anything") else {
        return;
    };
    let fixture = Fixture::new(env, "unsafeconfig", &["moto"]);
    fixture.write("a", b"data");
    let marker = fixture.dir.join("PWNED");
    let yaml = config_with_pipe(
        &fixture,
        &format!("[sh, -c, 'touch {}; cat']", marker.display()),
    );
    let open_dir = fixture.dir.join("open");
    std::fs::create_dir(&open_dir).unwrap();
    // (where the config is, its mode, its owner, the directory's mode, what the message says)
    let cases: &[(&str, u32, u32, u32, &str)] = &[
        (
            "world-writable",
            0o666,
            0,
            0o755,
            "can be changed by every user (mode 0666)",
        ),
        (
            "group-writable",
            0o664,
            0,
            0o755,
            "can be changed by the members of group",
        ),
        (
            "someone else's",
            0o600,
            65534,
            0o755,
            "belongs to user 65534",
        ),
        (
            "in an open directory",
            0o600,
            0,
            0o777,
            "can be changed by every user (mode 0777)",
        ),
    ];
    for (case, mode, owner, dir_mode, message) in cases {
        let config = open_dir.join("config.yaml");
        std::fs::write(&config, &yaml).unwrap();
        chmod(&config, *mode);
        std::os::unix::fs::chown(&config, Some(*owner), Some(0)).unwrap();
        chmod(&open_dir, *dir_mode);
        let output = update(&config, &[]);
        assert_eq!(output.status.code(), Some(2), "{case}: {}", stderr(&output));
        let error = stderr(&output);
        assert!(error.contains(message), "{case}: {error}");
        assert!(
            error.contains("chmod go-w") || error.contains("chown"),
            "{case}: the fix is named: {error}"
        );
        nothing_ran(&fixture, &marker, case);
        chmod(&open_dir, 0o755);
        std::fs::remove_file(&config).unwrap();
    }
    // A safe file in a directory everyone may write but with the sticky bit (like /tmp) is
    // fine: nobody can replace it there.
    let sticky = fixture.dir.join("sticky");
    std::fs::create_dir(&sticky).unwrap();
    chmod(&sticky, 0o1777);
    let config = sticky.join("config.yaml");
    std::fs::write(&config, &yaml).unwrap();
    chmod(&config, 0o600);
    let output = update(&config, &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(marker.exists(), "the command of a safe config runs");
}

#[test]
fn pipe_through_programs_others_can_replace_are_refused() {
    let Some(env) = TestEnv::get("pipe_through_programs_others_can_replace_are_refused") else {
        return;
    };
    let fixture = Fixture::new(env, "unsafeprogram", &["moto"]);
    fixture.write("a", b"data");
    let open_dir = fixture.dir.join("bin");
    std::fs::create_dir(&open_dir).unwrap();
    let program = open_dir.join("mycat");
    std::fs::copy("/bin/cat", &program).unwrap();
    chmod(&program, 0o755);
    let marker = fixture.dir.join("never");
    let cases: &[(&str, String, u32, u32, &str)] = &[
        (
            "a program in an open directory",
            format!("[{}]", program.display()),
            0o777,
            0o755,
            "can be changed by every user (mode 0777)",
        ),
        (
            "a program others can write",
            format!("[{}]", program.display()),
            0o755,
            0o777,
            "can be changed by every user (mode 0777)",
        ),
        (
            "a relative path",
            "[./mycat]".to_owned(),
            0o755,
            0o755,
            "is a relative path",
        ),
        (
            "a name only the caller's PATH has",
            "[mycat]".to_owned(),
            0o755,
            0o755,
            "is not found in /usr/local/sbin:",
        ),
    ];
    let path = format!("{}:{}", open_dir.display(), std::env::var("PATH").unwrap());
    for (case, command, dir_mode, program_mode, message) in cases {
        fixture.write_raw_config(&config_with_pipe(&fixture, command));
        chmod(&open_dir, *dir_mode);
        chmod(&program, *program_mode);
        let output = update(&fixture.config, &[("PATH", &path)]);
        assert_eq!(output.status.code(), Some(2), "{case}: {}", stderr(&output));
        assert!(
            stderr(&output).contains(message),
            "{case}: {}",
            stderr(&output)
        );
        nothing_ran(&fixture, &marker, case);
    }
    chmod(&open_dir, 0o755);
    chmod(&program, 0o755);

    // A safe one runs, in an environment of the system's PATH and without loader variables.
    let env_file = fixture.dir.join("env");
    fixture.write_raw_config(&config_with_pipe(
        &fixture,
        &format!("[sh, -c, 'env > {}; cat']", env_file.display()),
    ));
    let output = update(
        &fixture.config,
        &[
            ("PATH", &path),
            ("LD_BTRFS2S3_TEST", "1"),
            ("BASH_ENV", "/x"),
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let seen = std::fs::read_to_string(&env_file).unwrap();
    assert!(
        seen.contains("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"),
        "{seen}"
    );
    assert!(
        !seen.contains("LD_BTRFS2S3_TEST") && !seen.contains("BASH_ENV"),
        "{seen}"
    );
}

#[test]
fn a_symlink_planted_at_the_lock_file_is_never_followed() {
    let Some(env) = TestEnv::get("a_symlink_planted_at_the_lock_file_is_never_followed") else {
        return;
    };
    let fixture = Fixture::new(env, "lockfile", &["moto"]);
    fixture.write("a", b"data");
    let target = fixture.dir.join("precious");
    std::fs::write(&target, "root's file").unwrap();
    let lock = btrfs2s3_core::lock::lock_path(&fixture.config);
    let _ = std::fs::remove_file(&lock);
    std::os::unix::fs::symlink(&target, &lock).unwrap();
    let output = fixture.btrfs2s3(&["update", "--force"]);
    std::fs::remove_file(&lock).unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains(&format!("refusing lock file {}", lock.display()))
            && stderr(&output).contains("symbolic link"),
        "{}",
        stderr(&output)
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "root's file");
    assert!(fixture.snapshot_names().is_empty());
    fixture.update(&[]);
}

/// Keys anyone who can write to a bucket could plant: terminal escapes, other control
/// characters, paths that climb.
const PLANTED: &[&str] = &[
    "evil\u{1b}[2J\u{1b}[31mred",
    "bell\u{7}and\u{8}backspace",
    "line\nbtrfs2s3: all 99 backup(s) verified",
    "../../../etc/passwd",
    "right\u{202e}txt.exe",
];

/// Puts an object under `key` directly; whether the server took it.
fn try_put(fixture: &Fixture, index: usize, key: &str) -> bool {
    let remote = fixture.remote(index);
    fixture
        .runtime
        .block_on(
            remote
                .sdk_client()
                .put_object()
                .bucket(remote.bucket())
                .key(key)
                .body(b"not a backup".to_vec().into())
                .send(),
        )
        .is_ok()
}

/// Plants, in every remote, a real stream under a key whose source name is a terminal
/// escape (it parses as a backup of another source, uuid 0xbad) and the [`PLANTED`] keys the
/// server takes; returns how many keys each remote holds then.
fn plant(fixture: &Fixture, source: &str) -> Vec<usize> {
    let mut counts = Vec::new();
    for (index, (id, _, _)) in fixture.remotes.iter().enumerate() {
        // A real stream under a key whose source name is a terminal escape: it parses as a
        // backup of another source.
        let ours = fixture.keys(index).remove(0);
        let stream = fixture.download(index, &ours);
        let meta = btrfs2s3_s3::BackupMeta::parse_key(&ours).unwrap();
        let foreign_source = btrfs2s3_s3::BackupMeta {
            uuid: uuid::Uuid::from_u128(0x5eed),
            parent_uuid: uuid::Uuid::from_u128(0xbad),
            ..meta
        };
        let disguised = foreign_source.key(
            &format!("{source}\u{1b}]0;pwned\u{7}"),
            &jiff::tz::TimeZone::UTC,
        );
        fixture.put(index, &disguised, &stream);
        // Servers refuse some of these names (moto a path that climbs); what they take is
        // planted.
        let planted = PLANTED
            .iter()
            .filter(|key| try_put(fixture, index, key))
            .count();
        assert!(planted >= 3, "{id}: only {planted} planted");
        let keys = fixture.keys(index);
        assert_eq!(keys.len(), 2 + planted, "{id}: {keys:?}");
        counts.push(keys.len());
    }

    counts
}

#[test]
fn planted_keys_stay_data() {
    let Some(env) = TestEnv::get("planted_keys_stay_data") else {
        return;
    };
    let servers: Vec<&str> = env.s3.iter().map(|s| s.name.as_str()).collect();
    let fixture = Fixture::new(env, "planted", &servers);
    fixture.write("a", b"data");
    fixture.update(&[]);
    let source = btrfs2s3_tests::unique_name("stranger");
    let counts = plant(&fixture, &source);

    // update lists them all and still backs up; nothing of theirs is touched.
    fixture.write("b", b"more");
    let output = fixture.btrfs2s3(&["update", "--force"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let everything = |output: &Output| format!("{}{}", stdout(output), stderr(output));
    for (index, (id, _, _)) in fixture.remotes.iter().enumerate() {
        assert_eq!(fixture.keys(index).len(), counts[index] + 1, "{id}");
    }

    // list, verify and restore --pretend read them, and print them escaped.
    let list = fixture.btrfs2s3(&["list"]);
    assert!(list.status.success(), "{}", stderr(&list));
    let verify = fixture.btrfs2s3(&["verify"]);
    assert!(verify.status.success(), "{}", everything(&verify));
    assert!(
        stdout(&verify).contains(&format!("{source}\\x1b]0;pwned\\x07")),
        "{}",
        stdout(&verify)
    );
    let dest = fixture
        .env
        .btrfs_receive
        .join(btrfs2s3_tests::unique_name("planted"));
    std::fs::create_dir(&dest).unwrap();
    let dest_text = dest.display().to_string();
    let pretend = fixture.btrfs2s3(&[
        "restore",
        "--remote",
        &fixture.remotes[0].0,
        "--uuid",
        &uuid::Uuid::from_u128(0xbad).to_string(),
        "--dest",
        &dest_text,
        "--pretend",
    ]);
    assert!(pretend.status.success(), "{}", stderr(&pretend));
    assert!(
        stdout(&pretend).contains("\\x1b]0;pwned\\x07"),
        "{}",
        stdout(&pretend)
    );
    for output in [&list, &verify, &pretend] {
        let text = everything(output);
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{7}') && !text.contains('\u{202e}'),
            "a control character reached the terminal: {text:?}"
        );
        assert!(
            !text.contains("\nbtrfs2s3: all 99"),
            "a forged line: {text}"
        );
    }
    assert!(
        stdout(&list).contains("\\x1b]0;pwned\\x07"),
        "{}",
        stdout(&list)
    );

    // Restored, the disguised backup lands in DEST and nowhere else.
    let restore = fixture.btrfs2s3(&[
        "restore",
        "--remote",
        &fixture.remotes[0].0,
        "--uuid",
        &uuid::Uuid::from_u128(0xbad).to_string(),
        "--dest",
        &dest_text,
    ]);
    assert!(restore.status.success(), "{}", everything(&restore));
    let restored: Vec<PathBuf> = std::fs::read_dir(&dest)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(restored.len(), 1, "{restored:?}");
    assert_eq!(std::fs::read(restored[0].join("a")).unwrap(), b"data");
}
