//! The send stream parser against what `btrfs send` really writes: protocol 1 and 2 (with
//! compressed extents), full and differential, as stored in the bucket, and damaged copies.
// Tests fail by panicking, helpers included.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;

use btrfs2s3_stream::model::{Tree, check};
use btrfs2s3_stream::{Error, Kind, Parser};
use btrfs2s3_tests::TestEnv;
use support::{Fixture, run};

/// The kinds of a stream's commands; every checksum checked.
fn kinds(stream: &[u8]) -> Result<Vec<Kind>, Error> {
    let mut parser = Parser::new(stream)?;
    let mut kinds = Vec::new();
    while let Some(command) = parser.next_command()? {
        kinds.push(command.kind());
    }
    Ok(kinds)
}

/// Every path of `root` (a snapshot) and nothing else is in `tree`, with the same type, mode,
/// owner, size (of regular files), mtime and symlink target.
fn assert_model_is_snapshot(tree: &Tree, root: &std::path::Path) {
    use btrfs2s3_stream::model::Node;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    fn walk(dir: &std::path::Path, prefix: &[u8], out: &mut Vec<(Vec<u8>, std::path::PathBuf)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let mut path = prefix.to_vec();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(entry.file_name().as_bytes());
            let full = entry.path();
            if entry.file_type().unwrap().is_dir() {
                walk(&full, &path, out);
            }
            out.push((path, full));
        }
    }
    let mut on_disk = Vec::new();
    walk(root, b"", &mut on_disk);
    on_disk.push((Vec::new(), root.to_path_buf()));
    on_disk.sort();
    let modelled: Vec<&[u8]> = tree.entries().map(|(path, _)| path).collect();
    assert_eq!(
        on_disk
            .iter()
            .map(|(p, _)| p.as_slice())
            .collect::<Vec<_>>(),
        modelled
    );
    for (path, full) in &on_disk {
        let inode = tree.inode(path).unwrap();
        let meta = std::fs::symlink_metadata(full).unwrap();
        let what = String::from_utf8_lossy(path);
        let node = match meta.file_type() {
            t if t.is_dir() => Node::Directory,
            t if t.is_file() => Node::File,
            t if t.is_symlink() => Node::Symlink,
            _ => Node::Special,
        };
        assert_eq!(inode.node, node, "{what}");
        // A symlink's mode is always 0777, and no stream sets it.
        if node != Node::Symlink {
            assert_eq!(
                inode.mode & 0o7777,
                u64::from(meta.mode() & 0o7777),
                "{what}"
            );
        }
        assert_eq!(
            (inode.uid, inode.gid),
            (u64::from(meta.uid()), u64::from(meta.gid())),
            "{what}"
        );
        if node == Node::File {
            assert_eq!(inode.size, meta.size(), "{what}");
        }
        let mtime = inode.mtime.unwrap();
        assert_eq!(
            (mtime.seconds, i64::from(mtime.nanoseconds)),
            (meta.mtime(), meta.mtime_nsec()),
            "{what}"
        );
        if node == Node::Symlink {
            let target = std::fs::read_link(full).unwrap();
            assert_eq!(
                inode.target.as_deref(),
                Some(target.as_os_str().as_bytes()),
                "{what}"
            );
        }
    }
}

#[test]
fn real_send_streams_parse_with_every_checksum_checked() {
    let Some(env) = TestEnv::get("real_send_streams_parse_with_every_checksum_checked") else {
        return;
    };
    let fixture = Fixture::new(env, "stream", &["moto"]);
    fixture.write_config("1y 1d", &[]);
    // Compressed on disk, so that protocol 2 sends encoded writes.
    run(Command::new("btrfs")
        .args(["property", "set"])
        .arg(&fixture.source)
        .args(["compression", "zstd"]));
    std::fs::create_dir(fixture.source.join("dir")).unwrap();
    std::os::unix::fs::symlink("dir/log", fixture.source.join("link")).unwrap();
    fixture.write(
        "dir/log",
        &b"a line of a log, much like the others\n".repeat(50_000),
    );
    fixture.update(&[]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    std::fs::rename(fixture.source.join("dir"), fixture.source.join("moved")).unwrap();
    fixture.write("new", b"new file");
    fixture.update(&[]);

    // The backups as stored: a full and a differential stream.
    let mut streams: Vec<Vec<u8>> = fixture
        .keys(0)
        .iter()
        .map(|key| fixture.download(0, key))
        .collect();
    streams.sort_by_key(Vec::len);
    let diff = kinds(&streams[0]).unwrap();
    let full = kinds(&streams[1]).unwrap();
    assert_eq!(full.first(), Some(&Kind::Subvol), "{full:?}");
    assert_eq!(diff.first(), Some(&Kind::Snapshot), "{diff:?}");
    for kinds in [&full, &diff] {
        assert_eq!(kinds.last(), Some(&Kind::End));
    }
    assert!(full.contains(&Kind::Symlink) && full.contains(&Kind::Write));
    assert!(diff.contains(&Kind::Rename) && diff.contains(&Kind::Write));

    // Both apply to the tree model: the full one to an empty tree, the differential to the
    // full one's tree.
    let mut tree = Tree::new();
    check(streams[1].as_slice(), &mut tree).unwrap();
    assert!(tree.ended());
    assert!(tree.get(b"dir/log").is_some() && tree.get(b"link").is_some());
    let mut next = Tree::from_parent(&tree);
    check(streams[0].as_slice(), &mut next).unwrap();
    assert!(next.get(b"moved/log").is_some() && next.get(b"dir").is_none());
    assert!(next.get(b"new").is_some());

    // The model's names and what the stream said of them are the snapshot's: type, mode,
    // owner, size, mtime, symlink target, for every path.
    assert_model_is_snapshot(&tree, &fixture.snapshots.join(&fixture.snapshot_names()[0]));
    assert_model_is_snapshot(&next, &fixture.snapshots.join(&fixture.snapshot_names()[1]));

    // Protocol 2 with compressed data: the extents as stored.
    let snapshot = fixture.snapshots.join(&fixture.snapshot_names()[0]);
    let v2 = fixture.dir.join("v2.stream");
    run(Command::new("btrfs")
        .args(["send", "-q", "--proto", "2", "--compressed-data", "-f"])
        .arg(&v2)
        .arg(&snapshot));
    let v2 = std::fs::read(&v2).unwrap();
    assert_eq!(Parser::new(v2.as_slice()).unwrap().version(), 2);
    let encoded = kinds(&v2).unwrap();
    check(v2.as_slice(), &mut Tree::new()).unwrap();
    assert!(encoded.contains(&Kind::EncodedWrite), "{encoded:?}");
    assert!(
        v2.len() < streams[1].len() / 4,
        "compressed extents travel compressed"
    );

    // A damaged byte is found where it is; a cut stream is never whole.
    let mut damaged = streams[1].clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x40;
    let error = kinds(&damaged).unwrap_err();
    assert!(
        matches!(error, Error::BadChecksum { offset, .. } if offset <= middle as u64),
        "{error}"
    );
    assert!(error.to_string().contains("is damaged"), "{error}");
    let error = kinds(&streams[1][..middle]).unwrap_err();
    assert!(matches!(error, Error::Truncated { .. }), "{error}");
}

#[test]
fn verify_with_the_builtin_parser_needs_no_btrfs_progs() {
    let Some(env) = TestEnv::get("verify_with_the_builtin_parser_needs_no_btrfs_progs") else {
        return;
    };
    // Plain streams, and streams through gzip (the parser reads gunzip's output).
    for (name, pipe_through) in [("plain", &[][..]), ("gzip", &[&["gzip"][..]][..])] {
        let fixture = Fixture::new(env, &format!("builtin{name}"), &["moto"]);
        fixture.write_config("1y 1d", pipe_through);
        std::fs::create_dir(fixture.source.join("dir")).unwrap();
        fixture.write("dir/a", &vec![3u8; 200_000]);
        fixture.update(&[]);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        std::fs::rename(fixture.source.join("dir"), fixture.source.join("moved")).unwrap();
        fixture.write("moved/b", b"b");
        fixture.update(&[]);
        let mut args = vec!["verify", "--parser", "builtin"];
        if !pipe_through.is_empty() {
            args.extend(["--pipe-through", "gunzip"]);
        }
        let verify = fixture.btrfs2s3(&args);
        let stdout = String::from_utf8_lossy(&verify.stdout).into_owned();
        assert!(
            verify.status.success(),
            "{name}: {stdout}{}",
            String::from_utf8_lossy(&verify.stderr)
        );
        assert_eq!(stdout.matches(": ok").count(), 2, "{name}: {stdout}");
        if !pipe_through.is_empty() {
            continue;
        }
        // A damaged byte in the full backup: named with its offset.
        let mut keys = fixture.keys(0);
        keys.sort_by_key(|key| fixture.download(0, key).len());
        let full = keys.last().unwrap();
        let mut bytes = fixture.download(0, full);
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x10;
        fixture.put(0, full, &bytes);
        let verify = fixture.btrfs2s3(&args);
        let stdout = String::from_utf8_lossy(&verify.stdout).into_owned();
        assert_eq!(verify.status.code(), Some(1), "{stdout}");
        assert!(
            stdout.contains("is damaged") && stdout.contains("at byte"),
            "{stdout}"
        );
    }
}

#[test]
fn ls_lists_a_backups_files_from_its_chain() {
    use std::os::unix::fs::PermissionsExt;
    let Some(env) = TestEnv::get("ls_lists_a_backups_files_from_its_chain") else {
        return;
    };
    let fixture = Fixture::new(env, "ls", &["moto"]);
    fixture.write_config("1y 1d", &[&["gzip"]]);
    std::fs::create_dir(fixture.source.join("dir")).unwrap();
    fixture.write("dir/a", &vec![5u8; 12_345]);
    std::fs::set_permissions(
        fixture.source.join("dir/a"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    std::os::unix::fs::symlink("moved/a", fixture.source.join("link")).unwrap();
    fixture.update(&[]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    std::fs::rename(fixture.source.join("dir"), fixture.source.join("moved")).unwrap();
    fixture.write("moved/b", b"bb");
    fixture.update(&[]);
    // The differential: its files are its full backup's with its own changes applied.
    let newest = fixture
        .keys(0)
        .iter()
        .filter_map(|key| btrfs2s3_s3::BackupMeta::parse_key(key).ok())
        .max_by_key(|meta| meta.ctransid)
        .unwrap();
    let uuid = newest.uuid.to_string();
    let ls = |extra: &[&str]| {
        let mut args = vec!["ls", "--uuid", &uuid, "--pipe-through", "gunzip"];
        args.extend_from_slice(extra);
        fixture.btrfs2s3(&args)
    };
    let output = ls(&["--json"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let entries = report["entries"].as_array().unwrap();
    let find = |path: &str| {
        entries
            .iter()
            .find(|entry| entry["path"] == path)
            .unwrap_or_else(|| panic!("no {path} in {entries:?}"))
    };
    assert_eq!(find("moved/a")["size"], 12_345);
    assert_eq!(find("moved/a")["mode"], 0o640);
    assert_eq!(find("moved/b")["size"], 2);
    assert_eq!(find("moved")["type"], "directory");
    assert_eq!(find("link")["target"], "moved/a");
    assert!(!entries.iter().any(|entry| entry["path"] == "dir"));
    // One directory, as `ls -l` shows it.
    let output = ls(&["--path", "moved"]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(
        text.contains("-rw-r-----") && text.contains("moved/a"),
        "{text}"
    );
    // A path the backup does not have, and a source's uuid, are usage errors.
    let output = ls(&["--path", "nowhere"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("has no \"nowhere\""));
    let source = newest.parent_uuid.to_string();
    let output = fixture.btrfs2s3(&["ls", "--uuid", &source]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("names a source"));
}
