//! `restore --plain` end to end: backups from the bucket, through `--pipe-through`, applied
//! by btrfs2s3's own receiver to directories on tmpfs, compared with the snapshots they were
//! sent from; resumed, in place (`--latest-only`), and refused when a stream is damaged.
// Tests fail by panicking, helpers included.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use btrfs2s3_tests::{TestEnv, unique_name};
use support::{Fixture, directory_times, manifest, run, without_owners};

fn tmpfs_dir() -> PathBuf {
    let dir = PathBuf::from("/dev/shm").join(unique_name("plain"));
    std::fs::create_dir(&dir).unwrap();
    dir
}

fn restore(fixture: &Fixture, dest: &Path, extra: &[&str]) -> Output {
    let dest = dest.to_string_lossy().into_owned();
    let mut args = vec![
        "restore",
        "--plain",
        "--dest",
        &dest,
        "--pipe-through",
        "gunzip",
    ];
    args.extend_from_slice(extra);
    fixture.btrfs2s3(&args)
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The restored directory holds what the snapshot holds, directory times included.
fn assert_same(snapshot: &Path, restored: &Path) {
    assert_eq!(
        manifest(snapshot),
        manifest(restored),
        "{}",
        restored.display()
    );
    assert_eq!(directory_times(snapshot), directory_times(restored));
}

#[test]
fn plain_restores_are_the_snapshots_on_any_filesystem() {
    let Some(env) = TestEnv::get("plain_restores_are_the_snapshots_on_any_filesystem") else {
        return;
    };
    let fixture = Fixture::new(env, "plain", &["moto"]);
    fixture.write_config("1y 1d", &[&["gzip"]]);
    fill(&fixture);
    fixture.update(&[]);
    let source = &fixture.source;
    std::thread::sleep(std::time::Duration::from_millis(1100));
    // The differential: a rename, a reflink copy of a file that then changes, a removal.
    std::fs::rename(source.join("dir"), source.join("moved")).unwrap();
    run(Command::new("cp")
        .arg("--reflink=always")
        .arg(source.join("moved/a"))
        .arg(source.join("copy")));
    fixture.write("moved/a", b"changed");
    std::fs::remove_file(source.join("sparse")).unwrap();
    fixture.update(&[]);
    let names = fixture.snapshot_names();
    assert_eq!(names.len(), 2, "{names:?}");

    let dest = tmpfs_dir();
    let output = restore(&fixture, &dest, &[]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("done: 2 backup(s) restored"),
        "{}",
        text(&output)
    );
    for name in &names {
        assert_same(&fixture.snapshots.join(name), &dest.join(name));
    }
    // The sparse file's 8 MiB hole is a hole again (the stream has no data for it).
    let sparse = std::fs::metadata(dest.join(&names[0]).join("sparse")).unwrap();
    assert!(sparse.len() > 8 << 20);
    assert!(
        std::os::unix::fs::MetadataExt::blocks(&sparse) * 512 < 1 << 20,
        "{} blocks",
        std::os::unix::fs::MetadataExt::blocks(&sparse)
    );
    // Run again: what is there is skipped.
    let output = restore(&fixture, &dest, &[]);
    assert!(text(&output).contains("nothing to do"), "{}", text(&output));

    // Only the newest, in one working tree.
    let latest = tmpfs_dir();
    let output = restore(&fixture, &latest, &["--latest-only"]);
    assert!(output.status.success(), "{}", text(&output));
    let restored: Vec<String> = std::fs::read_dir(&latest)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with('.'))
        .collect();
    assert_eq!(restored, [names[1].clone()]);
    assert_same(&fixture.snapshots.join(&names[1]), &latest.join(&names[1]));

    check_extract(&fixture, &names[1]);
    check_as_nobody(&fixture, &names);

    // A damaged differential: the restore fails naming the byte, and leaves no directory
    // under the snapshot's name, and nothing half-applied.
    let damaged = tmpfs_dir();
    let keys = keys_by_size(&fixture);
    let diff = &keys[0];
    let original = fixture.download(0, diff);
    let mut bytes = run_gunzip(&original);
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    fixture.put(0, diff, &run_gzip(&bytes));
    let output = restore(&fixture, &damaged, &[]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(text(&output).contains("is damaged"), "{}", text(&output));
    let left: Vec<String> = std::fs::read_dir(&damaged)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.contains(&names[0]), "{left:?}");
    assert!(!left.contains(&names[1]), "{left:?}");
    assert!(
        !left.iter().any(|name| name.contains("partial")),
        "{left:?}"
    );
    // Mended, the same command goes on: the full backup's directory, restored by the run
    // before, is read back as the differential's parent.
    fixture.put(0, diff, &original);
    let output = restore(&fixture, &damaged, &[]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("already there, skipped"),
        "{}",
        text(&output)
    );
    assert_same(&fixture.snapshots.join(&names[1]), &damaged.join(&names[1]));
    for dir in [dest, latest, damaged] {
        std::fs::remove_dir_all(dir).unwrap();
    }
}

/// Runs the binary as `nobody` with `args`, reading remote 0 without the config (`--bucket`,
/// credentials in the environment), with `home` as its home.
fn as_nobody(fixture: &Fixture, args: &[&str], home: &Path) -> Output {
    let (_, server, bucket) = &fixture.remotes[0];
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(support::binary())
        .args(args)
        .args(["--bucket", bucket, "--endpoint-url", &server.endpoint])
        .args(["--region", &server.region])
        .env("AWS_ACCESS_KEY_ID", &server.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &server.secret_access_key)
        .env("HOME", home)
        .output()
        .unwrap()
}

/// The full backup's source: a hard link, a symlink, a sparse file, an extended attribute,
/// another owner, a read-only directory.
fn fill(fixture: &Fixture) {
    let source = &fixture.source;
    std::fs::create_dir_all(source.join("dir/deeper")).unwrap();
    fixture.write("dir/a", &vec![7u8; 300_000]);
    std::fs::hard_link(source.join("dir/a"), source.join("dir/deeper/a-again")).unwrap();
    std::os::unix::fs::symlink("dir/a", source.join("link")).unwrap();
    let sparse = std::fs::File::create(source.join("sparse")).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, b"end", 8 << 20).unwrap();
    rustix::fs::setxattr(
        source.join("dir/a"),
        "user.note",
        b"kept",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    std::os::unix::fs::chown(source.join("dir/deeper"), Some(1000), Some(100)).unwrap();
    // A directory its owner may not write to: a restore without root must still fill it.
    std::fs::set_permissions(
        source.join("dir/deeper"),
        std::os::unix::fs::PermissionsExt::from_mode(0o555),
    )
    .unwrap();
}

/// `restore --plain` by a user without root, without the config (`--bucket`, credentials in
/// the environment): the same snapshots, but every name is the user's, and a note says so.
fn check_as_nobody(fixture: &Fixture, names: &[String]) {
    let dest = tmpfs_dir();
    std::os::unix::fs::chown(&dest, Some(65534), Some(65534)).unwrap();
    let dest_text = dest.to_string_lossy().into_owned();
    let output = as_nobody(
        fixture,
        &[
            "restore",
            "--plain",
            "--pipe-through",
            "gunzip",
            "--dest",
            &dest_text,
        ],
        &dest,
    );
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("note: owners were not restored"),
        "{}",
        text(&output)
    );
    let owners_masked = |root: &Path| without_owners(manifest(root));
    // And one directory of the newest backup, extracted (it is read-only: moved out all the
    // same).
    let to = dest.join("extracted");
    let newest = btrfs2s3_s3::BackupMeta::parse_key(&keys_by_size(fixture)[0])
        .unwrap()
        .uuid
        .to_string();
    let to_text = to.to_string_lossy().into_owned();
    let output = as_nobody(
        fixture,
        &[
            "extract",
            "--pipe-through",
            "gunzip",
            "--uuid",
            &newest,
            "--path",
            "moved/deeper",
            "--to",
            &to_text,
        ],
        &dest,
    );
    assert!(output.status.success(), "{}", text(&output));
    let snapshot = fixture.snapshots.join(&names[1]).join("moved/deeper");
    assert_eq!(
        without_owners(manifest(&snapshot)),
        without_owners(manifest(&to.join("moved/deeper")))
    );
    for name in names {
        let restored = manifest(&dest.join(name));
        assert!(
            restored.iter().all(|line| line.contains(" 65534:65534 ")),
            "{restored:?}"
        );
        assert_eq!(
            owners_masked(&fixture.snapshots.join(name)),
            owners_masked(&dest.join(name))
        );
        assert_eq!(
            directory_times(&fixture.snapshots.join(name)),
            directory_times(&dest.join(name))
        );
    }
    std::fs::remove_dir_all(dest).unwrap();
}

/// `extract` of two paths of the newest backup (named `newest_name`), from its chain: the
/// reflinked copy's data came from the full backup's file.
fn check_extract(fixture: &Fixture, newest_name: &str) {
    let to = tmpfs_dir().join("out");
    let newest = btrfs2s3_s3::BackupMeta::parse_key(&keys_by_size(fixture)[0])
        .unwrap()
        .uuid
        .to_string();
    let to_text = to.to_string_lossy().into_owned();
    let output = fixture.btrfs2s3(&[
        "extract",
        "--uuid",
        &newest,
        "--path",
        "copy",
        "--path",
        "moved/deeper",
        "--to",
        &to_text,
        "--pipe-through",
        "gunzip",
    ]);
    assert!(output.status.success(), "{}", text(&output));
    let snapshot = fixture.snapshots.join(newest_name);
    for path in ["copy", "moved/deeper"] {
        assert_eq!(
            manifest(&snapshot.join(path)),
            manifest(&to.join(path)),
            "{path}"
        );
    }
    let mut left: Vec<String> = std::fs::read_dir(&to)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["copy", "moved"]);
    // Again: the paths exist now, a usage error; so is a path the backup lacks.
    for (path, message) in [
        ("copy", "exists already"),
        ("nowhere", "has no \"nowhere\""),
    ] {
        let output = fixture.btrfs2s3(&[
            "extract",
            "--uuid",
            &newest,
            "--path",
            path,
            "--to",
            &to_text,
            "--pipe-through",
            "gunzip",
        ]);
        assert_eq!(output.status.code(), Some(2), "{}", text(&output));
        assert!(text(&output).contains(message), "{}", text(&output));
    }
    std::fs::remove_dir_all(to.parent().unwrap()).unwrap();
}

/// The keys of remote 0, smallest first (the differential before the full backup).
fn keys_by_size(fixture: &Fixture) -> Vec<String> {
    let mut keys = fixture.keys(0);
    keys.sort_by_key(|key| fixture.download(0, key).len());
    keys
}

fn filter(program: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input).unwrap());
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(output.status.success());
    output.stdout
}

fn run_gzip(input: &[u8]) -> Vec<u8> {
    filter("gzip", &["-c"], input)
}

fn run_gunzip(input: &[u8]) -> Vec<u8> {
    filter("gunzip", &["-c"], input)
}

/// The binary carries libbtrfsutil (linked statically where its archive is installed, as on
/// the build machines): copied alone to a machine without btrfs, it restores.
#[test]
fn the_binary_runs_without_libbtrfsutil_installed() {
    let archive_installed = [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
    ]
    .iter()
    .any(|dir| Path::new(dir).join("libbtrfsutil.a").is_file());
    if !archive_installed {
        eprintln!("skipping: no libbtrfsutil.a here, so the binary links the shared library");
        return;
    }
    let dynamic = run(Command::new("readelf")
        .arg("--dynamic")
        .arg(support::binary()));
    assert!(dynamic.contains("NEEDED"), "{dynamic}");
    assert!(!dynamic.contains("libbtrfsutil"), "{dynamic}");
}
