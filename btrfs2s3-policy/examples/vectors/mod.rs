//! The resolver test-vector format recorded from the Python tool (SPEC section 9), and a
//! checker that compares our resolver's output with it. Shared by the unit tests and the
//! `check-vectors` example.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use btrfs2s3_policy::{BackupItem, Item, Keep, Params, Policy, resolve};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::Deserialize;
use uuid::Uuid;

#[derive(Debug, Deserialize)]
pub struct Case {
    pub timezone: String,
    pub preserve: String,
    pub now: i64,
    pub snapshots: Vec<VectorSnapshot>,
    pub backups: Vec<VectorBackup>,
    pub expect: Expect,
}

#[derive(Debug, Deserialize)]
pub struct VectorSnapshot {
    pub uuid: Uuid,
    pub ctime: i64,
    pub ctransid: i64,
}

#[derive(Debug, Deserialize)]
pub struct VectorBackup {
    pub uuid: Uuid,
    pub ctime: i64,
    pub ctransid: i64,
    pub send_parent: Option<Uuid>,
}

#[derive(Debug, Deserialize)]
pub struct Expect {
    pub keep_snapshots: BTreeMap<Uuid, ExpectKeep>,
    pub keep_backups: BTreeMap<Uuid, ExpectKeep>,
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
pub struct ExpectKeep {
    pub reasons: Vec<String>,
    pub flags: Vec<String>,
    pub time_spans: Vec<(i64, i64)>,
    #[serde(default)]
    pub send_parent: Option<Uuid>,
}

fn timestamp(seconds: i64) -> Timestamp {
    Timestamp::from_second(seconds).expect("vector timestamps are in range")
}

impl Item for VectorSnapshot {
    fn uuid(&self) -> Uuid {
        self.uuid
    }
    fn ctime(&self) -> Timestamp {
        timestamp(self.ctime)
    }
    fn ctransid(&self) -> i64 {
        self.ctransid
    }
}

impl Item for VectorBackup {
    fn uuid(&self) -> Uuid {
        self.uuid
    }
    fn ctime(&self) -> Timestamp {
        timestamp(self.ctime)
    }
    fn ctransid(&self) -> i64 {
        self.ctransid
    }
}

impl BackupItem for VectorBackup {
    fn send_parent(&self) -> Option<Uuid> {
        self.send_parent
    }
}

/// Our result in the vector format, for comparison.
fn to_expect(keep: &Keep, send_parent: Option<Uuid>) -> ExpectKeep {
    let mut time_spans: Vec<_> = keep
        .time_spans
        .iter()
        .map(|span| (span.start().as_second(), span.end().as_second()))
        .collect();
    time_spans.sort_unstable();
    ExpectKeep {
        reasons: keep.reasons.names().map(str::to_owned).collect(),
        flags: keep.flags.names().map(str::to_owned).collect(),
        time_spans,
        send_parent,
    }
}

fn normalize(expect: &ExpectKeep) -> ExpectKeep {
    let sorted = |v: &[String]| {
        let mut v = v.to_vec();
        v.sort();
        v
    };
    let mut time_spans = expect.time_spans.clone();
    time_spans.sort_unstable();
    ExpectKeep {
        reasons: sorted(&expect.reasons),
        flags: sorted(&expect.flags),
        time_spans,
        send_parent: expect.send_parent,
    }
}

/// Compares two maps of kept items, describing every difference in `diff`.
fn compare(
    what: &str,
    expected: &BTreeMap<Uuid, ExpectKeep>,
    actual: &BTreeMap<Uuid, ExpectKeep>,
    diff: &mut String,
) {
    let uuids: BTreeSet<_> = expected.keys().chain(actual.keys()).collect();
    for uuid in uuids {
        match (expected.get(uuid), actual.get(uuid)) {
            (Some(e), Some(a)) if normalize(e) == normalize(a) => {}
            (Some(e), Some(a)) => {
                let _ = write!(diff, "\n  {what} {uuid}: expected {e:?}, got {a:?}");
            }
            (Some(e), None) => {
                let _ = write!(diff, "\n  {what} {uuid}: expected kept {e:?}, got not kept");
            }
            (None, Some(a)) => {
                let _ = write!(diff, "\n  {what} {uuid}: expected not kept, got kept {a:?}");
            }
            (None, None) => {}
        }
    }
}

/// Runs one case; `Err` holds a short description of every difference.
pub fn check_case(case: &Case) -> Result<(), String> {
    let tz = TimeZone::get(&case.timezone).map_err(|e| format!("time zone: {e}"))?;
    let params: Params = case
        .preserve
        .parse()
        .map_err(|e| format!("preserve {:?}: {e}", case.preserve))?;
    let policy = Policy::new(params, tz, timestamp(case.now));
    let resolution = resolve(&case.snapshots, &case.backups, &policy);

    let snapshots = resolution
        .snapshots
        .iter()
        .map(|(uuid, keep)| (*uuid, to_expect(keep, None)))
        .collect();
    let backups = resolution
        .backups
        .iter()
        .map(|(uuid, kept)| (*uuid, to_expect(&kept.keep, kept.send_parent)))
        .collect();
    let mut diff = String::new();
    compare(
        "snapshot",
        &case.expect.keep_snapshots,
        &snapshots,
        &mut diff,
    );
    compare("backup", &case.expect.keep_backups, &backups, &mut diff);
    if diff.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "({} {:?} now={}){diff}",
            case.timezone, case.preserve, case.now
        ))
    }
}

/// The outcome of checking every `*.json` file of a directory.
pub struct Report {
    pub passed: usize,
    /// (file, description) of every failure, in file name order.
    pub failures: Vec<(PathBuf, String)>,
}

/// Checks every `*.json` file in `dir`. A file that cannot be read or parsed is a failure.
pub fn check_dir(dir: &Path) -> std::io::Result<Report> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|path| path.extension().is_some_and(|ext| ext == "json"));
    files.sort();
    let mut report = Report {
        passed: 0,
        failures: Vec::new(),
    };
    for file in files {
        let outcome = std::fs::read_to_string(&file)
            .map_err(|e| format!("cannot read: {e}"))
            .and_then(|text| {
                serde_json::from_str::<Case>(&text).map_err(|e| format!("cannot parse: {e}"))
            })
            .and_then(|case| check_case(&case));
        match outcome {
            Ok(()) => report.passed += 1,
            Err(description) => report.failures.push((file, description)),
        }
    }
    Ok(report)
}
