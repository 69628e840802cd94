//! Network faults between btrfs2s3 and S3, injected by a proxy: each run either succeeds
//! after retries or fails with a clear error naming the operation and the key; it never
//! reports success for an upload that did not complete, never leaves a half-done backup, and
//! the next run repairs.
// Tests fail by panicking, helpers included.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::Output;
use std::time::{Duration, Instant};

use btrfs2s3_tests::TestEnv;
use btrfs2s3_tests::proxy::{Fault, FaultProxy, Match};
use support::Fixture;

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A fixture whose config reaches moto through a fault proxy: 5 MiB parts, 3 attempts per
/// request, a 3-second timeout; one source with 12 MiB of new data (a 3-part upload).
fn behind_proxy(env: &'static TestEnv, test: &str) -> (Fixture, FaultProxy) {
    let fixture = Fixture::new(env, test, &["moto"]);
    let proxy = FaultProxy::start(&fixture.remotes[0].1.endpoint);
    fixture.write_config_through(
        &proxy.endpoint(),
        "1y",
        "      part_size_mib: 5\n      parts_in_flight: 2\n      max_attempts: 3\n      timeout_seconds: 3\n",
    );
    let data: Vec<u8> = (0..12u32 << 20)
        .map(|n| n.wrapping_mul(2_654_435_761).to_le_bytes()[2])
        .collect();
    fixture.write("data", &data);
    (fixture, proxy)
}

/// Whatever happened, what is in the bucket is whole, and a run without faults finishes
/// the job.
fn assert_repairable(fixture: &Fixture, proxy: &FaultProxy, context: &str) {
    proxy.clear();
    let output = fixture.btrfs2s3(&["update", "--force"]);
    assert!(
        output.status.success(),
        "{context}: the next run repairs: {}",
        stderr(&output)
    );
    assert_eq!(
        fixture.pending_uploads(0),
        0,
        "{context}: no multipart upload left"
    );
    let verify = fixture.btrfs2s3(&["verify"]);
    assert!(
        verify.status.success(),
        "{context}: {}{}",
        stdout(&verify),
        stderr(&verify)
    );
    let output = fixture.btrfs2s3(&["update", "--pretend"]);
    assert!(
        stdout(&output).contains("actions: none"),
        "{context}: {}",
        stdout(&output)
    );
}

/// Faults the retries absorb: the run succeeds, and the proxy saw the fault.
#[test]
fn transient_faults_are_retried() {
    let Some(env) = TestEnv::get("transient_faults_are_retried") else {
        return;
    };
    let cases: Vec<(&str, Match, Fault, usize)> = vec![
        (
            "503 SlowDown on parts",
            Match::upload_part(),
            Fault::Status(503, "SlowDown"),
            2,
        ),
        (
            "500 on completion",
            Match::complete_multipart(),
            Fault::Status(500, "InternalError"),
            1,
        ),
        (
            "reset mid-request on a part",
            Match::upload_part(),
            Fault::ResetMidRequest,
            1,
        ),
        (
            "reset mid-response on the listing",
            Match::list_objects(),
            Fault::ResetMidResponse,
            1,
        ),
        (
            "one stalled listing",
            Match::list_objects(),
            Fault::Stall(Duration::from_secs(3600)),
            1,
        ),
    ];
    for (name, matcher, fault, times) in cases {
        let (fixture, proxy) = behind_proxy(env, "transient");
        proxy.add(matcher, fault, times);
        let output = fixture.btrfs2s3(&["-v", "update", "--force"]);
        assert!(output.status.success(), "{name}: {}", stderr(&output));
        fixture.assert_no_secret(&output, name);
        let injected = proxy
            .log()
            .iter()
            .filter(|line| !line.contains("-> HTTP/1.1"))
            .count();
        assert!(
            injected >= times,
            "{name}: the fault happened: {:?}",
            proxy.log()
        );
        assert_repairable(&fixture, &proxy, name);
    }
}

/// A part whose bytes are damaged on the way is refused by a server that checks its CRC-32C
/// and sent again: the backup is whole. moto checks no checksum (and no signed payload
/// either): it stores the damaged part, and `verify` finds the damage.
#[test]
fn a_damaged_part_is_refused_and_sent_again() {
    let Some(env) = TestEnv::get("a_damaged_part_is_refused_and_sent_again") else {
        return;
    };
    for server in &env.s3 {
        let name = &server.name;
        let checks = name != "moto";
        let fixture = Fixture::new(env, "damaged", &[name.as_str()]);
        let proxy = FaultProxy::start(&fixture.remotes[0].1.endpoint);
        fixture.write_config_through(
            &proxy.endpoint(),
            "1y",
            "      part_size_mib: 5\n      max_attempts: 3\n",
        );
        let data: Vec<u8> = (0..12u32 << 20)
            .map(|n| n.wrapping_mul(2_654_435_761).to_le_bytes()[2])
            .collect();
        fixture.write("data", &data);
        proxy.add(Match::upload_part(), Fault::FlipBody, 1);
        let output = fixture.btrfs2s3(&["update", "--force"]);
        assert!(output.status.success(), "{name}: {}", stderr(&output));
        let answer = if checks { "400" } else { "200" };
        let log = proxy.log();
        assert!(
            log.iter()
                .any(|line| line.contains(&format!("flipped: HTTP/1.1 {answer}"))),
            "{name}: the server answered {answer} to the damaged part: {log:?}"
        );
        let verify = fixture.btrfs2s3(&["verify"]);
        assert_eq!(
            verify.status.success(),
            checks,
            "{name}: the backup is whole where the server checks: {}",
            stdout(&verify)
        );
    }
}

/// A server that refuses CRC-32C checksums gets signed uploads, and `-v` says so.
#[test]
fn a_server_that_refuses_checksums_gets_signed_uploads() {
    let Some(env) = TestEnv::get("a_server_that_refuses_checksums_gets_signed_uploads") else {
        return;
    };
    let (fixture, proxy) = behind_proxy(env, "nochecksums");
    proxy.add(
        Match::upload_part(),
        Fault::Status(400, "NotImplemented"),
        1,
    );
    let output = fixture.btrfs2s3(&["-v", "update", "--force"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("remote moto refused CRC-32C checksums"),
        "{}",
        stderr(&output)
    );
    assert_repairable(&fixture, &proxy, "refused checksums");
}

/// Faults that last: the run fails within bounds, naming the operation and the key, and
/// leaves nothing half-done.
#[test]
fn lasting_faults_fail_clearly_and_leave_nothing_half_done() {
    let Some(env) = TestEnv::get("lasting_faults_fail_clearly_and_leave_nothing_half_done") else {
        return;
    };
    let cases: Vec<(&str, Match, Fault, &[&str])> = vec![
        (
            "500 on every part",
            Match::upload_part(),
            Fault::Status(500, "InternalError"),
            &["upload a part", "InternalError", "after 3 attempts"],
        ),
        (
            "resets on every part",
            Match::upload_part(),
            Fault::ResetMidRequest,
            &["upload a part", "after 3 attempts"],
        ),
        (
            "a server that stalls",
            Match::upload_part(),
            Fault::Stall(Duration::from_secs(3600)),
            &["upload a part", "after 3 attempts"],
        ),
        (
            "a listing that never comes",
            Match::list_objects(),
            Fault::Stall(Duration::from_secs(3600)),
            &["list objects", "after 3 attempts"],
        ),
    ];
    for (name, matcher, fault, fragments) in cases {
        let (fixture, proxy) = behind_proxy(env, "lasting");
        proxy.add(matcher, fault, 1000);
        let started = Instant::now();
        let output = fixture.btrfs2s3(&["-v", "update", "--force"]);
        let elapsed = started.elapsed();
        assert_eq!(output.status.code(), Some(1), "{name}: {}", stderr(&output));
        assert!(
            elapsed < Duration::from_secs(120),
            "{name}: gave up in bounded time ({elapsed:?})"
        );
        let message = stderr(&output);
        for fragment in fragments {
            assert!(
                message.contains(fragment),
                "{name}: {fragment:?} in {message}"
            );
        }
        if name != "a listing that never comes" {
            assert!(
                message.contains("source.ctim"),
                "{name}: names the key: {message}"
            );
        }
        fixture.assert_no_secret(&output, name);
        // No object that looks like a backup appeared.
        assert!(fixture.keys(0).is_empty(), "{name}: {:?}", fixture.keys(0));
        assert_repairable(&fixture, &proxy, name);
    }
}

/// The server completes the multipart upload but the answer is lost: the run may report the
/// failure (the retry finds no such upload), but never loses or corrupts the backup.
#[test]
fn a_lost_completion_answer_leaves_a_whole_backup() {
    let Some(env) = TestEnv::get("a_lost_completion_answer_leaves_a_whole_backup") else {
        return;
    };
    let (fixture, proxy) = behind_proxy(env, "lostanswer");
    proxy.add(Match::complete_multipart(), Fault::ResetMidResponse, 1);
    let output = fixture.btrfs2s3(&["update", "--force"]);
    if !output.status.success() {
        assert!(
            stderr(&output).contains("complete the multipart upload"),
            "{}",
            stderr(&output)
        );
    }
    assert_repairable(&fixture, &proxy, "lost completion answer");
}

/// A truncated download is an error, never a successful verify or restore.
#[test]
fn truncated_downloads_are_errors() {
    let Some(env) = TestEnv::get("truncated_downloads_are_errors") else {
        return;
    };
    let (fixture, proxy) = behind_proxy(env, "truncated");
    fixture.update(&[]);
    proxy.add(Match::get_object(), Fault::TruncateBody, 1000);
    let output = fixture.btrfs2s3(&["verify"]);
    assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
    let report = stdout(&output);
    assert!(
        report.contains("FAILED") && report.contains("download broke off"),
        "the report names the truncated download, not the commands stopped because of it: {report}"
    );
    let dest = fixture
        .env
        .btrfs_receive
        .join(btrfs2s3_tests::unique_name("truncated"));
    std::fs::create_dir(&dest).unwrap();
    let output = fixture.btrfs2s3(&["restore", "--dest", dest.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let leftovers: Vec<_> = std::fs::read_dir(&dest).unwrap().collect();
    assert!(
        leftovers.is_empty(),
        "a failed receive leaves no half-received subvolume: {leftovers:?}"
    );
}
