//! Malformed configs and command lines: each gets its own clear message (with the file, line
//! and key where they exist), exit status 2, and changes nothing.
// Tests fail by panicking, helpers included.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::process::Command;

use btrfs2s3_tests::TestEnv;
use support::Fixture;

/// How a case breaks the good config.
enum Break {
    /// Replace the first occurrence of `.0` with `.1`.
    Replace(String, String),
    /// Use this file content instead.
    Whole(Vec<u8>),
}

struct Case {
    name: &'static str,
    change: Break,
    /// Text the message must contain.
    expect: String,
    /// Whether the message must point at `config.yaml:<line>:<column>`.
    positioned: bool,
}

fn case(name: &'static str, from: &str, to: &str, expect: &str, positioned: bool) -> Case {
    Case {
        name,
        change: Break::Replace(from.to_owned(), to.to_owned()),
        expect: expect.to_owned(),
        positioned,
    }
}

fn whole(name: &'static str, content: impl Into<Vec<u8>>, expect: &str, positioned: bool) -> Case {
    Case {
        name,
        change: Break::Whole(content.into()),
        expect: expect.to_owned(),
        positioned,
    }
}

#[allow(clippy::too_many_lines)] // a table of cases
fn cases(fixture: &Fixture, env: &TestEnv) -> Vec<Case> {
    let source = fixture.source.display().to_string();
    let snapshots = fixture.snapshots.display().to_string();
    let plain_dir = fixture.dir.join("plain");
    std::fs::create_dir_all(&plain_dir).unwrap();
    let link = fixture.dir.join("link-to-source");
    if !link.exists() {
        std::os::unix::fs::symlink(&fixture.source, &link).unwrap();
    }
    let not_btrfs = std::env::temp_dir().display().to_string();
    let other_fs = env.btrfs_receive.display().to_string();
    let second_source = format!(
        "\n  - path: {}\n    snapshots: {snapshots}\n    upload_to_remotes:\n      - id: moto\n        preserve: 1d",
        link.display()
    );
    vec![
        // YAML syntax and shape.
        whole(
            "unclosed bracket",
            "timezone: UTC\nsources: [\n",
            "unclosed bracket",
            true,
        ),
        whole(
            "a list at the top",
            "- timezone\n- UTC\n",
            "the file must be a mapping with the keys timezone, sources and remotes",
            true,
        ),
        whole("empty file", "", "the file is empty", false),
        whole(
            "only a comment",
            "# nothing here\n",
            "the file is empty",
            false,
        ),
        whole(
            "invalid UTF-8",
            b"timezone: UTC\n# caf\xe9\n".to_vec(),
            "not valid UTF-8",
            true,
        ),
        whole(
            "huge",
            format!("timezone: UTC\n#{}\n", "x".repeat(2 << 20)),
            "a config is at most",
            false,
        ),
        whole(
            "deeply nested",
            format!(
                "timezone: UTC\nsources: {}1{}\n",
                "[".repeat(5000),
                "]".repeat(5000)
            ),
            "the YAML is nested too deeply",
            true,
        ),
        case(
            "a duplicate key",
            "timezone: Europe/Berlin",
            "timezone: UTC\ntimezone: UTC",
            "duplicate mapping key: timezone",
            true,
        ),
        case(
            "a tab for indentation",
            "    snapshots:",
            "\tsnapshots:",
            "found a tab",
            true,
        ),
        // timezone.
        case(
            "no timezone",
            "timezone: Europe/Berlin\n",
            "",
            "missing field `timezone`",
            true,
        ),
        case(
            "an unknown timezone",
            "timezone: Europe/Berlin",
            "timezone: Mars/Olympus_Mons",
            "unknown time zone \"Mars/Olympus_Mons\"",
            true,
        ),
        case(
            "an empty timezone",
            "timezone: Europe/Berlin",
            "timezone: ''",
            "unknown time zone \"\"",
            true,
        ),
        case(
            "a timezone list",
            "timezone: Europe/Berlin",
            "timezone: [UTC]",
            "timezone: expected a time zone name like \"Europe/Berlin\", found a list",
            true,
        ),
        // sources.
        case(
            "no sources",
            "sources:",
            "sourcez:",
            "unknown field `sourcez`",
            true,
        ),
        case(
            "sources not a list",
            "sources:\n",
            "sources: all of them\nx:\n",
            "sources: expected a list of sources, found a single value",
            true,
        ),
        case(
            "an unknown source key",
            "    snapshots:",
            "    retention: 1d\n    snapshots:",
            "unknown field `retention`",
            true,
        ),
        case(
            "a source without path",
            "  - path:",
            "  - paath:",
            "unknown field `paath`",
            true,
        ),
        case(
            "an empty source path",
            &format!("path: {source}"),
            "path: ''",
            "path: must not be empty",
            true,
        ),
        case(
            "an empty snapshots path",
            &format!("snapshots: {snapshots}"),
            "snapshots: ''",
            "snapshots: must not be empty",
            true,
        ),
        case(
            "a source listed twice",
            "\nremotes:",
            &format!(
                "\n  - path: {source}\n    snapshots: {snapshots}\n    upload_to_remotes:\n      - id: moto\n        preserve: 1d\nremotes:"
            ),
            "is already the source on line",
            true,
        ),
        case(
            "no upload_to_remotes",
            "    upload_to_remotes:",
            "    upload_to_remotez:",
            "unknown field `upload_to_remotez`",
            true,
        ),
        case(
            "empty upload_to_remotes",
            "    upload_to_remotes:\n      - id: moto\n        preserve: 1d\n",
            "    upload_to_remotes: []\n",
            "upload_to_remotes: the list for",
            true,
        ),
        case(
            "an unknown remote id",
            "      - id: moto",
            "      - id: aws",
            "remote \"aws\" for source",
            true,
        ),
        case(
            "a remote listed twice for a source",
            "        preserve: 1d\n",
            "        preserve: 1d\n      - id: moto\n        preserve: 1y\n",
            "is listed twice for source",
            true,
        ),
        // preserve.
        case(
            "no preserve",
            "        preserve: 1d\n",
            "",
            "missing field `preserve`",
            true,
        ),
        case(
            "an empty preserve",
            "preserve: 1d",
            "preserve: ''",
            "empty preservation policy",
            true,
        ),
        case(
            "preserve out of order",
            "preserve: 1d",
            "preserve: 1d 1y",
            "\"1y\" must come before \"1d\"",
            true,
        ),
        case(
            "an unknown unit",
            "preserve: 1d",
            "preserve: 1fortnight",
            "unknown unit \"fortnight\"",
            true,
        ),
        case(
            "a negative count",
            "preserve: 1d",
            "preserve: -1d",
            "\"-1d\" is not a count followed by a unit",
            true,
        ),
        case(
            "a huge count",
            "preserve: 1d",
            "preserve: 123456789012d",
            "too large",
            true,
        ),
        case(
            "preserve as a number",
            "preserve: 1d",
            "preserve: 12",
            "is not a count followed by a unit",
            true,
        ),
        // pipe_through.
        case(
            "pipe_through as a string",
            "        preserve: 1d\n",
            "        preserve: 1d\n        pipe_through: gzip\n",
            "pipe_through: expected a list of commands, each a list like [zstd, -T0], found a single value",
            true,
        ),
        case(
            "an empty command",
            "        preserve: 1d\n",
            "        preserve: 1d\n        pipe_through:\n          - []\n",
            "a command must be a non-empty list",
            true,
        ),
        case(
            "an empty program",
            "        preserve: 1d\n",
            "        preserve: 1d\n        pipe_through:\n          - ['', -9]\n",
            "a command must be a non-empty list",
            true,
        ),
        // remotes.
        case(
            "no remotes",
            "\nremotes:",
            "\nremotez:",
            "unknown field `remotez`",
            true,
        ),
        case(
            "empty remotes",
            "\nremotes:\n  - id: moto",
            "\nremotes: []\ny:\n  - id: moto",
            "unknown field `y`",
            true,
        ),
        case(
            "a remote without id",
            "  - id: moto\n    s3:",
            "  - name: moto\n    s3:",
            "unknown field `name`",
            true,
        ),
        case(
            "a duplicate remote id",
            "\nremotes:\n",
            "\nremotes:\n  - id: moto\n    s3:\n      bucket: other\n",
            "is already the id of the remote on line",
            true,
        ),
        case(
            "a remote without s3",
            "    s3:\n      bucket:",
            "    gcs:\n      bucket:",
            "unknown field `gcs`",
            true,
        ),
        case(
            "no bucket",
            "      bucket:",
            "      bucke:",
            "unknown field `bucke`",
            true,
        ),
        case(
            "an empty bucket",
            "      bucket: ",
            "      bucket: ''\n      old_bucket: ",
            "unknown field `old_bucket`",
            true,
        ),
        case(
            "an unknown endpoint key",
            "        region_name:",
            "        regionname:",
            "unknown field `regionname`",
            true,
        ),
        case(
            "verify as a number",
            "        region_name:",
            "        verify: 7\n        region_name:",
            "true, false or the path of a CA bundle",
            true,
        ),
        case(
            "a key id without its secret",
            "        aws_secret_access_key:",
            "        aws_secret_access_kee:",
            "unknown field `aws_secret_access_kee`",
            true,
        ),
        case(
            "a part size too small",
            "      endpoint:",
            "      part_size_mib: 1\n      endpoint:",
            "part_size_mib: must be between 5 and 5120",
            true,
        ),
        case(
            "no parts in flight",
            "      endpoint:",
            "      parts_in_flight: 0\n      endpoint:",
            "parts_in_flight: must be between 1 and 64",
            true,
        ),
        case(
            "no attempts",
            "      endpoint:",
            "      max_attempts: 0\n      endpoint:",
            "max_attempts: must be between 1 and 100",
            true,
        ),
        // Paths that exist but cannot be used.
        case(
            "a source that is not a subvolume",
            &format!("path: {source}"),
            &format!("path: {}", plain_dir.display()),
            "is not a btrfs subvolume",
            false,
        ),
        case(
            "a source that is not on btrfs",
            &format!("path: {source}"),
            &format!("path: {not_btrfs}"),
            "is not on a btrfs filesystem",
            false,
        ),
        case(
            "a source that does not exist",
            &format!("path: {source}"),
            &format!("path: {source}/missing"),
            "No such file or directory",
            false,
        ),
        case(
            "snapshots not on btrfs",
            &format!("snapshots: {snapshots}"),
            &format!("snapshots: {not_btrfs}"),
            "is not on a btrfs filesystem",
            false,
        ),
        case(
            "snapshots on another filesystem",
            &format!("snapshots: {snapshots}"),
            &format!("snapshots: {other_fs}"),
            "is on another filesystem than",
            false,
        ),
        case(
            "snapshots that do not exist",
            &format!("snapshots: {snapshots}"),
            &format!("snapshots: {snapshots}/missing"),
            "No such file or directory",
            false,
        ),
        case(
            "one subvolume as two sources",
            "\nremotes:",
            &format!("{second_source}\nremotes:"),
            "are the same subvolume",
            false,
        ),
    ]
}

#[test]
fn malformed_configs_exit_2_with_their_own_message_and_change_nothing() {
    let Some(env) =
        TestEnv::get("malformed_configs_exit_2_with_their_own_message_and_change_nothing")
    else {
        return;
    };
    let fixture = Fixture::new(env, "badinput", &["moto"]);
    fixture.write_config("1d", &[]);
    fixture.write("f", b"data");
    let good = std::fs::read_to_string(&fixture.config).unwrap();
    let cases = cases(&fixture, env);
    assert!(cases.len() >= 40, "{} cases", cases.len());
    let secret = fixture.remotes[0].1.secret_access_key.clone();
    let mut messages: BTreeMap<String, &str> = BTreeMap::new();
    for case in &cases {
        let content = match &case.change {
            Break::Replace(from, to) => {
                assert!(
                    good.contains(from.as_str()),
                    "{}: {from:?} is not in the config",
                    case.name
                );
                good.replacen(from.as_str(), to, 1).into_bytes()
            }
            Break::Whole(content) => content.clone(),
        };
        std::fs::write(&fixture.config, &content).unwrap();
        let output = fixture.btrfs2s3(&["-v", "update", "--force"]);
        let message = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(output.status.code(), Some(2), "{}: {message}", case.name);
        assert!(
            message.contains(&case.expect),
            "{}: expected {:?} in {message}",
            case.name,
            case.expect
        );
        if case.positioned {
            let config = fixture.config.display().to_string();
            let position = message
                .split(&format!("{config}:"))
                .nth(1)
                .unwrap_or_default();
            let numbers: Vec<&str> = position.splitn(3, ':').take(2).collect();
            assert!(
                numbers.len() == 2
                    && numbers
                        .iter()
                        .all(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit())),
                "{}: the message points at file:line:column: {message}",
                case.name
            );
        }
        assert!(
            !message.contains(&secret),
            "{}: the secret is shown",
            case.name
        );
        assert!(
            fixture.snapshot_names().is_empty(),
            "{}: a snapshot was made",
            case.name
        );
        assert!(
            fixture.keys(0).is_empty(),
            "{}: an object was made",
            case.name
        );
        if let Some(other) = messages.insert(message.clone(), case.name) {
            panic!("{} and {other} give the same message: {message}", case.name);
        }
    }
    // A directory is not a config.
    let output = Command::new(support::binary())
        .args(["update", "--force"])
        .arg(&fixture.dir)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("not a regular file"));
}

#[test]
fn malformed_command_lines_exit_2() {
    let Some(env) = TestEnv::get("malformed_command_lines_exit_2") else {
        return;
    };
    let fixture = Fixture::new(env, "badcli", &["moto"]);
    let config = fixture.config.display().to_string();
    let dest = env.btrfs_receive.display().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["update", "--force", "/nonexistent/btrfs2s3.yaml"],
            "/nonexistent/btrfs2s3.yaml: cannot read the file",
        ),
        (
            vec!["update", "--force", "--pretend", &config],
            "cannot be used with",
        ),
        (
            vec!["update", "--now", "yesterday", &config],
            "is not an RFC 3339 instant",
        ),
        (
            vec!["update", "--wait", "soon", &config],
            "invalid value 'soon'",
        ),
        (vec!["update"], "required"),
        (vec!["upgrade", &config], "unrecognized subcommand"),
        (
            vec!["update", "--colour", &config],
            "unexpected argument '--colour'",
        ),
        (vec!["restore", &config], "--dest"),
        (
            vec!["restore", &config, "--dest", &dest, "--uuid", "not-a-uuid"],
            "invalid value 'not-a-uuid'",
        ),
        (
            vec![
                "restore",
                &config,
                "--dest",
                &dest,
                "--pipe-through",
                "gunzip 'oops",
            ],
            "unterminated single quote",
        ),
        (
            vec!["restore", &config, "--remote", "nowhere", "--dest", &dest],
            "has no remote \"nowhere\"",
        ),
        (
            vec!["list", &config, "--bucket", "b"],
            "cannot be used with",
        ),
        (vec!["list", "--endpoint-url", "http://x"], "required"),
        (
            vec!["verify", "--bucket", "b", "--uuid", "12"],
            "invalid value '12'",
        ),
        (
            vec!["restore", &config, "--dest", &dest, "--latest-only"],
            "--plain",
        ),
        (
            vec!["restore", &config, "--dest", "/nonexistent/dir", "--plain"],
            "cannot restore into /nonexistent/dir",
        ),
        (
            vec!["extract", &config, "--uuid", "12345678", "--to", &dest],
            "--path",
        ),
        (
            vec!["extract", &config, "--uuid", "12345678", "--path", "a"],
            "--to",
        ),
        (
            vec![
                "extract", &config, "--uuid", "12345678", "--path", "/", "--to", &dest,
            ],
            "the snapshot's root",
        ),
    ];
    for (args, expect) in cases {
        let output = Command::new(support::binary())
            .args(&args)
            .output()
            .unwrap();
        let message = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(output.status.code(), Some(2), "{args:?}: {message}");
        assert!(
            message.contains(expect),
            "{args:?}: expected {expect:?} in {message}"
        );
    }
    assert!(fixture.snapshot_names().is_empty());
}

/// `simulate` needs no btrfs and no server: its bad input is refused before it starts.
#[test]
fn malformed_simulate_command_lines_exit_2() {
    let simulate = |extra: &[&str]| -> Vec<String> {
        let mut args = vec!["simulate", "--preserve", "1y", "--size", "1GiB"];
        args.extend_from_slice(extra);
        args.into_iter().map(str::to_owned).collect()
    };
    let owned = |args: &[&str]| -> Vec<String> { args.iter().map(|a| (*a).to_owned()).collect() };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            owned(&["simulate", "--size", "1GiB"]),
            "nothing to simulate",
        ),
        (
            owned(&["simulate", "--preserve", "1y", "--change", "1GiB/day"]),
            "--size is needed",
        ),
        (
            owned(&[
                "simulate",
                "--preserve",
                "1y 1z",
                "--size",
                "1GiB",
                "--change",
                "1GiB/day",
            ]),
            "--preserve \"1y 1z\"",
        ),
        (
            simulate(&["--change", "1GiB"]),
            "--change: expected a size per day",
        ),
        (
            simulate(&[
                "--change",
                "1GiB/day",
                "--prices",
                "/nonexistent/prices.yaml",
            ]),
            "not aws, b2 or wasabi",
        ),
        (
            simulate(&["--change", "1GiB/day", "--storage-class", "y=deep"]),
            "--storage-class: \"deep\" is not a storage class",
        ),
        (
            simulate(&["--change", "1GiB/day", "--every", "1s", "--years", "50"]),
            "too many to simulate",
        ),
        (simulate(&["--years", "0"]), "invalid value '0'"),
    ];
    for (args, expect) in cases {
        let output = Command::new(support::binary())
            .args(&args)
            .output()
            .unwrap();
        let message = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(output.status.code(), Some(2), "{args:?}: {message}");
        assert!(
            message.contains(expect),
            "{args:?}: expected {expect:?} in {message}"
        );
    }
}

/// What a failure of the network or the server prints must be one line a person can act
/// on: what failed, on what, why in plain words, and what to do; no debug structures.
fn assert_plain(output: &std::process::Output, expect: &[&str], context: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{context}: {stderr}");
    for text in expect {
        assert!(
            stderr.contains(text),
            "{context}: no {text:?} in:\n{stderr}"
        );
    }
    for debug in [
        "{ ",
        "Some(",
        "SdkBody",
        "DispatchFailure",
        "ConnectorError",
    ] {
        assert!(
            !stderr.contains(debug),
            "{context}: a debug structure ({debug}) in:\n{stderr}"
        );
    }
}

#[test]
fn network_and_server_failures_say_what_to_do() {
    use btrfs2s3_tests::proxy::{Fault, FaultProxy, Match};
    let Some(env) = TestEnv::get("network_and_server_failures_say_what_to_do") else {
        return;
    };
    let fixture = Fixture::new(env, "failures", &["moto"]);
    fixture.write("f", b"data");
    let one_attempt = "      max_attempts: 1\n";
    let update = || fixture.btrfs2s3(&["update", "--force"]);

    fixture.write_config_through("http://127.0.0.1:1", "1d", one_attempt);
    let refused = update();
    assert_plain(
        &refused,
        &[
            "cannot connect to http://127.0.0.1:1: connection refused",
            "check endpoint_url",
        ],
        "refused",
    );
    // -v adds the whole technical story.
    let verbose = fixture.btrfs2s3(&["-v", "update", "--force"]);
    assert!(
        String::from_utf8_lossy(&verbose.stderr).contains("  details: "),
        "{}",
        String::from_utf8_lossy(&verbose.stderr)
    );

    fixture.write_config_through("http://no-such-host.invalid:9000", "1d", one_attempt);
    assert_plain(
        &update(),
        &["unknown host", "check endpoint_url"],
        "unknown host",
    );

    fixture.write_config_through(&env.s3_tls.endpoint, "1d", one_attempt);
    assert_plain(
        &update(),
        &["the TLS handshake with https://", "verify: /path/to/ca.pem"],
        "TLS",
    );

    let good = std::fs::read_to_string(&fixture.config).unwrap();
    let (_, server, bucket) = &fixture.remotes[0];
    fixture.write_config_through(&server.endpoint, "1d", one_attempt);
    let good_moto = std::fs::read_to_string(&fixture.config).unwrap();
    fixture.write_raw_config(&good_moto.replace(bucket.as_str(), "no-such-bucket-here"));
    assert_plain(
        &update(),
        &[
            "the bucket does not exist",
            "btrfs2s3 does not create buckets",
        ],
        "missing bucket",
    );
    drop(good);

    // What a server says, through the proxy.
    let proxy = FaultProxy::start(&server.endpoint);
    fixture.write_config_through(&proxy.endpoint(), "1d", one_attempt);
    for (matcher, code, expect) in [
        (
            Match::list_objects(),
            "AccessDenied",
            vec![
                "access denied",
                "the credentials need s3:ListBucket on bucket",
            ],
        ),
        (
            Match::list_objects(),
            "RequestTimeTooSkewed",
            vec!["clock is too far from the server's", "NTP"],
        ),
        (
            Match::put_object(),
            "AccessDenied",
            vec!["the credentials need s3:PutObject on bucket"],
        ),
    ] {
        proxy.clear();
        proxy.add(matcher, Fault::Status(403, code), 100);
        assert_plain(&update(), &expect, code);
    }
    proxy.clear();
    fixture.write_config_through(&proxy.endpoint(), "1y 1m 1d", one_attempt);
    fixture.update(&[]);
    fixture.write("g", b"more");
    fixture.update(&[]);
    // A third backup the same day replaces the second: a delete, which is refused.
    fixture.write("h", b"even more");
    proxy.add(
        Match::delete_objects(),
        Fault::Status(403, "AccessDenied"),
        100,
    );
    assert_plain(
        &update(),
        &["the credentials need s3:DeleteObject"],
        "delete denied",
    );
}

#[test]
fn wrong_credentials_say_which() {
    let Some(env) = TestEnv::get("wrong_credentials_say_which") else {
        return;
    };
    let fixture = Fixture::new(env, "credentials", &["garage"]);
    fixture.write("f", b"data");
    let (_, server, _) = &fixture.remotes[0];
    let good = std::fs::read_to_string(&fixture.config).unwrap();
    fixture.write_raw_config(&good.replace(
        &format!("aws_secret_access_key: {}", server.secret_access_key),
        "aws_secret_access_key: 0000000000000000000000000000000000000000000000000000000000000000",
    ));
    let output = fixture.btrfs2s3(&["update", "--force"]);
    assert_plain(
        &output,
        &[
            "the server refuses the credentials",
            "check aws_access_key_id and aws_secret_access_key",
        ],
        "wrong secret",
    );
}
