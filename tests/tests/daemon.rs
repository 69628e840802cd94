//! The daemon, monitoring and `status`, end to end: the real binary on loopback btrfs, moto
//! behind the test proxy (which counts LIST requests), a `NOTIFY_SOCKET` and an HTTP
//! listener of the test's own.
// Tests fail by panicking, helpers included.
#![allow(clippy::unwrap_used)]

mod support;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use btrfs2s3_core::metrics::Metrics;
use btrfs2s3_tests::TestEnv;
use btrfs2s3_tests::http::Recorder;
use btrfs2s3_tests::proxy::{Fault, FaultProxy, Match};
use support::{Fixture, binary};

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A fixture with moto behind the proxy; `s3_settings` go into the remote's `s3:` section.
fn behind_proxy(env: &'static TestEnv, test: &str, s3_settings: &str) -> (Fixture, FaultProxy) {
    let fixture = Fixture::new(env, test, &["moto"]);
    let proxy = FaultProxy::start(&fixture.remotes[0].1.endpoint);
    fixture.write_config_through(&proxy.endpoint(), "1y 1m 1d", s3_settings);
    (fixture, proxy)
}

/// How many `ListObjectsV2` requests went through the proxy.
fn lists(proxy: &FaultProxy) -> usize {
    proxy
        .log()
        .iter()
        .filter(|line| line.contains("list-type=2"))
        .count()
}

/// Waits up to a minute for `condition`; panics with `context()` if it never holds.
fn wait_for(what: &str, mut condition: impl FnMut() -> bool, context: impl Fn() -> String) {
    let started = Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}:\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A running `btrfs2s3 daemon`, killed if the test ends without stopping it.
struct Daemon {
    child: Child,
    log: PathBuf,
    notify: UnixDatagram,
    /// Every notification received so far.
    notes: Vec<String>,
}

impl Daemon {
    fn start(fixture: &Fixture, extra: &[&str]) -> Daemon {
        Daemon::start_with(fixture, extra, &[])
    }

    fn start_with(fixture: &Fixture, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        let socket = fixture.dir.join("notify.sock");
        let _ = std::fs::remove_file(&socket);
        let notify = UnixDatagram::bind(&socket).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let log = fixture.dir.join("daemon.log");
        let child = Command::new(binary())
            .args(["daemon", "--interval", "1s"])
            .args(extra)
            .arg(&fixture.config)
            .env("NOTIFY_SOCKET", &socket)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut daemon = Daemon {
            child,
            log,
            notify,
            notes: Vec::new(),
        };
        daemon.wait_note("READY=1");
        daemon
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many cycles ended so far.
    fn cycles(&self) -> usize {
        self.log().matches("cycle ended").count()
    }

    /// Waits for the daemon's log to show `count` cycles ended.
    fn wait_cycles(&self, count: usize) {
        wait_for(
            &format!("{count} cycle(s)"),
            || self.cycles() >= count,
            || self.log(),
        );
    }

    /// Reads notifications until one contains `text`.
    fn wait_note(&mut self, text: &str) {
        let started = Instant::now();
        let mut buffer = [0; 4096];
        while !self.notes.iter().any(|note| note.contains(text)) {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no notification with {text:?}; got {:?}; log:\n{}",
                self.notes,
                self.log()
            );
            if let Ok(n) = self.notify.recv(&mut buffer) {
                self.notes
                    .push(String::from_utf8_lossy(&buffer[..n]).into_owned());
            }
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGTERM, then the exit status (within 30 seconds).
    fn stop(&mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the daemon did not stop:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn metrics(path: &Path) -> Metrics {
    Metrics::parse(&std::fs::read_to_string(path).unwrap())
}

#[test]
fn the_daemon_backs_up_changes_on_its_listing() {
    let Some(env) = TestEnv::get("the_daemon_backs_up_changes_on_its_listing") else {
        return;
    };
    let (fixture, proxy) = behind_proxy(env, "daemon-changes", "");
    let metrics_file = fixture.dir.join("btrfs2s3.prom");
    let pings = Recorder::start(200);
    let ping = pings.url().to_owned();
    fixture.write("one", b"first");
    let mut daemon = Daemon::start(
        &fixture,
        &["--metrics", metrics_file.to_str().unwrap(), "--ping", &ping],
    );
    daemon.wait_cycles(1);
    assert_eq!(fixture.keys(0).len(), 1, "{}", daemon.log());
    assert_eq!(lists(&proxy), 1, "the start lists once");

    // A change is backed up within the interval, on the listing in memory.
    fixture.write("two", b"second");
    daemon.wait_cycles(2);
    assert_eq!(fixture.keys(0).len(), 2, "{}", daemon.log());
    // The policy keeps one backup a day: the third replaces the second (its upload, the
    // delete and the destroy all go into the listing in memory).
    fixture.write("three", b"third");
    daemon.wait_cycles(3);
    assert_eq!(fixture.keys(0).len(), 2, "{}", daemon.log());
    assert_eq!(lists(&proxy), 1, "no LIST request between re-lists");

    // No change, no cycle.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(daemon.cycles(), 3, "{}", daemon.log());

    let written = metrics(&metrics_file);
    let pair = [
        ("source", fixture.source.to_str().unwrap()),
        ("remote", "moto"),
    ];
    assert_eq!(written.get("btrfs2s3_backups", &pair), Some(2.0));
    assert_eq!(written.get("btrfs2s3_last_run_success", &[]), Some(1.0));
    assert!(
        written
            .get("btrfs2s3_last_success_timestamp_seconds", &pair)
            .is_some()
    );
    let got = pings.requests();
    assert_eq!(
        got.iter()
            .filter(|p| p.starts_with("GET /ping/check-uuid/start"))
            .count(),
        3,
        "{got:?}"
    );
    assert_eq!(
        got.iter()
            .filter(|p| p.starts_with("POST /ping/check-uuid done:"))
            .count(),
        3,
        "{got:?}"
    );
    assert!(daemon.notes.iter().any(|n| n.starts_with("READY=1")));

    assert!(daemon.stop().success(), "{}", daemon.log());
    daemon.wait_note("STOPPING=1");
    // The daemon's listing was right: a fresh run finds nothing to do.
    fixture.assert_nothing_to_do("after the daemon");
}

#[test]
fn a_manual_update_in_between_makes_the_daemon_list_again() {
    let Some(env) = TestEnv::get("a_manual_update_in_between_makes_the_daemon_list_again") else {
        return;
    };
    let (fixture, proxy) = behind_proxy(env, "daemon-manual", "");
    fixture.write("one", b"first");
    let mut daemon = Daemon::start(&fixture, &[]);
    daemon.wait_cycles(1);
    assert_eq!(lists(&proxy), 1);

    // A manual run between cycles: it gets the locks at once, and lists.
    fixture.update(&["--wait", "60"]);
    assert_eq!(lists(&proxy), 2);
    // The next cycle does not trust its listing any more.
    fixture.write("two", b"second");
    daemon.wait_cycles(2);
    assert_eq!(lists(&proxy), 3, "{}", daemon.log());
    assert_eq!(fixture.keys(0).len(), 2);
    fixture.write("three", b"third");
    daemon.wait_cycles(3);
    assert_eq!(
        lists(&proxy),
        3,
        "back on its own listing: {}",
        daemon.log()
    );
    assert!(daemon.stop().success());
    fixture.assert_nothing_to_do("after the daemon");
}

#[test]
fn the_daemon_lists_again_after_a_failure_and_the_relist_period() {
    let Some(env) = TestEnv::get("the_daemon_lists_again_after_a_failure_and_the_relist_period")
    else {
        return;
    };
    let (fixture, proxy) = behind_proxy(env, "daemon-relist", "      max_attempts: 1\n");
    fixture.write("one", b"first");
    proxy.add(Match::put_object(), Fault::Status(500, "InternalError"), 1);
    let mut daemon = Daemon::start_with(
        &fixture,
        &["--relist", "4s"],
        &[("WATCHDOG_USEC", "500000")],
    );
    // The first cycle fails; the retry (a second later) lists again, and succeeds.
    daemon.wait_cycles(2);
    let log = daemon.log();
    assert!(
        log.contains("cycle started: retry after a failure"),
        "{log}"
    );
    assert_eq!(lists(&proxy), 2, "{log}");
    assert_eq!(fixture.keys(0).len(), 1, "{log}");
    // Four seconds after that listing, a cycle on a fresh one.
    daemon.wait_cycles(3);
    let log = daemon.log();
    assert!(
        log.contains("cycle started: time to list the remotes again"),
        "{log}"
    );
    assert_eq!(lists(&proxy), 3, "{log}");
    // systemd's watchdog hears from it twice per WATCHDOG_USEC.
    daemon.wait_note("WATCHDOG=1");
    assert!(daemon.stop().success());
}

#[test]
fn sighup_reloads_and_a_bad_config_keeps_the_old_one() {
    let Some(env) = TestEnv::get("sighup_reloads_and_a_bad_config_keeps_the_old_one") else {
        return;
    };
    let (fixture, _proxy) = behind_proxy(env, "daemon-reload", "");
    let good = std::fs::read_to_string(&fixture.config).unwrap();
    let mut daemon = Daemon::start(&fixture, &[]);
    daemon.wait_cycles(1);

    fixture.write_raw_config("sources: [\n");
    daemon.signal("HUP");
    wait_for(
        "the failed reload",
        || daemon.log().contains("config reload failed"),
        || daemon.log(),
    );
    daemon.wait_note("STATUS=config reload failed");
    assert!(daemon.is_running());
    // Still at work on the old config.
    fixture.write("two", b"second");
    daemon.wait_cycles(2);
    assert_eq!(fixture.keys(0).len(), 2, "{}", daemon.log());

    fixture.write_raw_config(&good);
    daemon.signal("HUP");
    daemon.wait_note("RELOADING=1");
    wait_for(
        "the reload",
        || daemon.log().contains("config reloaded"),
        || daemon.log(),
    );
    // A reload runs a cycle (on a fresh listing).
    daemon.wait_cycles(3);
    assert!(daemon.log().contains("cycle started: config reloaded"));
    assert!(daemon.stop().success());
}

#[test]
fn sigterm_stops_a_cycle_with_nothing_half_done() {
    let Some(env) = TestEnv::get("sigterm_stops_a_cycle_with_nothing_half_done") else {
        return;
    };
    let (fixture, proxy) = behind_proxy(env, "daemon-stop", "      part_size_mib: 5\n");
    let data: Vec<u8> = (0..12u32 << 20)
        .map(|n| n.wrapping_mul(2_654_435_761).to_le_bytes()[2])
        .collect();
    fixture.write("data", &data);
    // The second part hangs: the upload is in flight when the signal comes.
    proxy.add(
        Match::upload_part(),
        Fault::Stall(Duration::from_secs(600)),
        100,
    );
    let mut daemon = Daemon::start(&fixture, &[]);
    wait_for(
        "the upload to start",
        || proxy.log().iter().any(|line| line.contains("partNumber=")),
        || daemon.log(),
    );
    let status = daemon.stop();
    let log = daemon.log();
    assert!(status.success(), "{status}: {log}");
    assert!(log.contains("interrupted by SIGTERM"), "{log}");
    assert!(log.contains("stopped (SIGTERM)"), "{log}");
    proxy.clear();
    assert_eq!(fixture.pending_uploads(0), 0, "the upload was aborted");
    assert!(fixture.keys(0).is_empty());
    assert!(
        fixture.snapshot_names().is_empty(),
        "the new snapshot was removed: {:?}",
        fixture.snapshot_names()
    );
}

#[test]
fn update_writes_metrics_and_pings_after_failure_and_success() {
    let Some(env) = TestEnv::get("update_writes_metrics_and_pings_after_failure_and_success")
    else {
        return;
    };
    let (fixture, proxy) = behind_proxy(env, "monitoring", "      max_attempts: 1\n");
    let metrics_file = fixture.dir.join("btrfs2s3.prom");
    let pings = Recorder::start(200);
    let ping = pings.url().to_owned();
    let args = [
        "update",
        "--force",
        "--metrics",
        metrics_file.to_str().unwrap(),
        "--ping",
        &ping,
    ];
    fixture.write("one", b"first");
    proxy.add(
        Match::put_object(),
        Fault::Status(500, "InternalError"),
        100,
    );
    proxy.add(
        Match::upload_part(),
        Fault::Status(500, "InternalError"),
        100,
    );
    let failed = fixture.btrfs2s3(&args);
    assert_eq!(failed.status.code(), Some(1), "{}", stderr(&failed));
    let pair = [
        ("source", fixture.source.to_str().unwrap()),
        ("remote", "moto"),
    ];
    let written = metrics(&metrics_file);
    assert_eq!(written.get("btrfs2s3_last_run_success", &[]), Some(0.0));
    assert_eq!(
        written.get("btrfs2s3_failed_actions_total", &[("kind", "upload")]),
        Some(1.0)
    );
    assert_eq!(written.get("btrfs2s3_uploaded_bytes_total", &[]), Some(0.0));
    assert_eq!(
        written.get("btrfs2s3_last_success_timestamp_seconds", &pair),
        None
    );
    {
        let got = pings.requests();
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].starts_with("GET /ping/check-uuid/start"), "{got:?}");
        assert!(
            got[1].starts_with("POST /ping/check-uuid/fail 1 of"),
            "{got:?}"
        );
        assert!(got[1].contains("InternalError"), "{got:?}");
    }

    proxy.clear();
    fixture.btrfs2s3(&args);
    let written = metrics(&metrics_file);
    assert_eq!(written.get("btrfs2s3_last_run_success", &[]), Some(1.0));
    assert_eq!(
        written.get("btrfs2s3_failed_actions_total", &[("kind", "upload")]),
        Some(1.0),
        "counters carry over"
    );
    assert!(written.get("btrfs2s3_uploaded_bytes_total", &[]).unwrap() > 0.0);
    assert!(
        written
            .get("btrfs2s3_last_success_timestamp_seconds", &pair)
            .is_some()
    );
    assert_eq!(written.get("btrfs2s3_backups", &pair), Some(1.0));
    let got = pings.requests();
    assert!(got[3].starts_with("POST /ping/check-uuid done:"), "{got:?}");

    // An unreachable monitor is a warning, not a failed backup.
    let output = fixture.btrfs2s3(&["update", "--force", "--ping", "http://127.0.0.1:9/x"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("warning: ping to http://127.0.0.1:9/…"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn status_says_when_backups_are_stale_or_broken() {
    let Some(env) = TestEnv::get("status_says_when_backups_are_stale_or_broken") else {
        return;
    };
    let fixture = Fixture::new(env, "status", &["moto"]);
    fixture.write("one", b"first");
    fixture.update(&[]);
    fixture.write("two", b"second");
    fixture.update(&[]);

    let fresh = fixture.btrfs2s3(&["status", "--max-age", "1h"]);
    assert!(
        fresh.status.success(),
        "{}{}",
        stdout(&fresh),
        stderr(&fresh)
    );
    let table = stdout(&fresh);
    assert!(table.starts_with("SOURCE"), "{table}");
    assert!(table.contains(" ok"), "{table}");

    let json = fixture.btrfs2s3(&["status", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let pair = &report["pairs"][0];
    assert_eq!(pair["remote"], "moto");
    assert_eq!(pair["backups"], 2);
    assert_eq!(pair["newest"]["depth"], 1, "{pair}");
    assert!(pair["problems"].as_array().unwrap().is_empty());

    std::thread::sleep(Duration::from_secs(2));
    let stale = fixture.btrfs2s3(&["status", "--max-age", "1s"]);
    assert_eq!(stale.status.code(), Some(1));
    assert!(
        stdout(&stale).contains("the newest backup is"),
        "{}",
        stdout(&stale)
    );

    // The full backup goes: the differential cannot be restored.
    let full = fixture
        .keys(0)
        .into_iter()
        .find(|key| key.contains(".sndp00000000-0000-0000-0000-000000000000."))
        .unwrap();
    fixture
        .runtime
        .block_on(fixture.remote(0).delete(&[full]))
        .unwrap();
    let broken = fixture.btrfs2s3(&["status"]);
    assert_eq!(broken.status.code(), Some(1));
    assert!(
        stdout(&broken).contains("cannot be restored"),
        "{}",
        stdout(&broken)
    );

    let bad = fixture.btrfs2s3(&["status", "--max-age", "soon"]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
}
