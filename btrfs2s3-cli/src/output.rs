//! The printed preview of a plan: the snapshots, the backup tree of each remote, and the
//! actions. Plain text, aligned in columns, the same on a terminal and in a log.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::Path;

use btrfs2s3_core::execute::ActionResult;
use btrfs2s3_core::plan::{Action, Origin, Plan, PlannedBackup};
use btrfs2s3_core::text::{escape, escape_os};

use crate::paint::{Stream, Style, paint};
use btrfs2s3_policy::Flags;
use uuid::Uuid;

/// A byte count for humans: `1.5 GiB`.
#[must_use]
#[allow(clippy::cast_precision_loss)] // shown with one decimal: precision to spare
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Lays out rows in columns separated by two spaces, written as they are made.
///
/// `rows` produces the rows by calling its argument once per row, and is run twice: once to
/// measure the columns, once to write. Nothing but one row is held at a time, so printing a
/// plan of a hundred thousand backups costs no memory beyond the plan.
pub fn write_table(
    out: &mut dyn Write,
    indent: &str,
    rows: impl Fn(&mut dyn FnMut(&[&str])),
) -> io::Result<()> {
    let mut widths: Vec<usize> = Vec::new();
    rows(&mut |row| {
        for (c, cell) in row.iter().enumerate() {
            let width = crate::paint::width(cell);
            match widths.get_mut(c) {
                Some(max) => *max = (*max).max(width),
                None => widths.push(width),
            }
        }
    });
    let mut result = Ok(());
    let mut line = String::new();
    rows(&mut |row| {
        if result.is_err() {
            return;
        }
        line.clear();
        line.push_str(indent);
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                let pad = widths[c].saturating_sub(crate::paint::width(cell));
                let _ = write!(line, "{cell}{:pad$}  ", "");
            }
        }
        result = writeln!(out, "{}", line.trim_end());
    });
    result
}

/// Uuids as short as they can be while telling every one of a set apart: their first 8 hex
/// digits, as many more as two of them share (as git shortens commit ids).
#[derive(Debug, Clone, Default)]
pub struct ShortIds {
    lengths: std::collections::HashMap<Uuid, usize>,
}

/// The shortest a short uuid is.
const SHORT: usize = 8;

impl ShortIds {
    /// Short forms for `uuids`.
    pub fn new(uuids: impl IntoIterator<Item = Uuid>) -> ShortIds {
        let mut sorted: Vec<Uuid> = uuids.into_iter().collect();
        sorted.sort_unstable();
        sorted.dedup();
        let hex: Vec<String> = sorted.iter().map(|u| u.simple().to_string()).collect();
        let common =
            |a: &str, b: &str| a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
        let lengths = sorted
            .iter()
            .enumerate()
            .map(|(i, uuid)| {
                let before = i.checked_sub(1).map_or(0, |j| common(&hex[i], &hex[j]));
                let after = hex.get(i + 1).map_or(0, |next| common(&hex[i], next));
                (*uuid, (before.max(after) + 1).max(SHORT))
            })
            .collect();
        ShortIds { lengths }
    }

    /// Short forms for every uuid of a plan.
    pub fn of_plan(plan: &Plan) -> ShortIds {
        ShortIds::new(
            plan.backups
                .iter()
                .map(|b| b.uuid)
                .chain(plan.snapshots.iter().map(|s| s.uuid)),
        )
    }

    /// The short form of `uuid` (8 hex digits for one it was not made with).
    #[must_use]
    pub fn get(&self, uuid: Uuid) -> String {
        let length = self.lengths.get(&uuid).copied().unwrap_or(SHORT);
        uuid.simple().to_string()[..length.min(32)].to_owned()
    }
}

/// `2026-11-29T21:00:00+01:00` as `2026-11-29 21:00` (the time zone is the config's).
#[must_use]
pub fn short_time(ctime: &str) -> String {
    match (ctime.get(..10), ctime.get(11..16), ctime.as_bytes().get(10)) {
        (Some(date), Some(time), Some(b'T')) => format!("{date} {time}"),
        _ => ctime.to_owned(),
    }
}

/// A backup for a person: `1a2b3c4d (home, 2026-11-29 21:00)`; with `-v`, its key after.
#[must_use]
pub fn backup_label(backup: &btrfs2s3_core::run::BackupLabel<'_>, ids: &ShortIds) -> String {
    let mut label = format!(
        "{} ({}, {})",
        ids.get(backup.uuid),
        escape(backup.source),
        short_time(backup.ctime)
    );
    if crate::verbose() {
        let _ = write!(label, " [key {}]", escape(backup.key));
    }
    label
}

/// Writes the whole preview; `verbose` adds the object keys.
pub fn write_plan(plan: &Plan, verbose: bool, out: &mut dyn Write) -> io::Result<()> {
    let ids = ShortIds::of_plan(plan);
    writeln!(out, "snapshots:")?;
    if plan.snapshots.is_empty() {
        writeln!(out, "  (none)")?;
    }
    let groups: BTreeSet<(&Path, &Path)> = plan
        .snapshots
        .iter()
        .map(|s| (s.source.as_path(), s.directory.as_path()))
        .collect();
    for (source, directory) in groups {
        writeln!(
            out,
            "  {} in {}",
            escape_os(source.as_os_str()),
            escape_os(directory.as_os_str())
        )?;
        write_table(out, "    ", |row| {
            row(&["", "NAME", "CTRANSID", "KEEP"]);
            for snapshot in plan
                .snapshots
                .iter()
                .filter(|s| s.source == source && s.directory == directory)
            {
                let marker = match (snapshot.origin, &snapshot.keep) {
                    (Origin::Created | Origin::Planned, _) => paint("+", Style::Added, Stream::Out),
                    (_, None) => paint("-", Style::Removed, Stream::Out),
                    _ => " ".to_owned(),
                };
                let name = match snapshot.origin {
                    Origin::Planned => format!("{} (to be created)", escape(&snapshot.name)),
                    _ => escape(&snapshot.name).into_owned(),
                };
                let keep = snapshot.keep.as_ref().map_or_else(
                    || "not kept: destroy".to_owned(),
                    btrfs2s3_core::plan::KeepSummary::describe,
                );
                row(&[&marker, &name, &snapshot.ctransid.to_string(), &keep]);
            }
        })?;
    }

    writeln!(out, "\nbackups:")?;
    let pairs: BTreeSet<(&str, &Path)> = plan
        .backups
        .iter()
        .map(|b| (b.remote.as_str(), b.source.as_path()))
        .collect();
    if pairs.is_empty() {
        writeln!(out, "  (none)")?;
    }
    for (remote, source) in pairs {
        writeln!(out, "  {} in {remote}", escape_os(source.as_os_str()))?;
        let backups: Vec<&PlannedBackup> = plan
            .backups
            .iter()
            .filter(|b| b.remote == remote && b.source == source)
            .collect();
        write_backup_tree(&backups, &ids, verbose, out)?;
    }
    for (remote, foreign) in &plan.foreign_objects {
        if *foreign > 0 {
            writeln!(out, "  {remote}: {foreign} other object(s), never touched")?;
        }
    }

    for remote in &plan.locks_off {
        writeln!(
            out,
            "\nnote: the bucket of remote {remote} has Object Lock enabled, but the config sets no object_lock: new backups get the bucket's default retention, if any"
        )?;
    }
    write_actions(plan, &ids, verbose, out)
}

/// The actions; uploads that share a stream are one action with several destinations.
fn write_actions(
    plan: &Plan,
    ids: &ShortIds,
    verbose: bool,
    out: &mut dyn Write,
) -> io::Result<()> {
    if plan.actions.is_empty() {
        writeln!(out, "\nactions: none")?;
    } else {
        writeln!(out, "\nactions:")?;
        // Uploads that share a stream are one action with several destinations.
        let uploads: Vec<&Action> = plan
            .actions
            .iter()
            .filter(|action| matches!(action, Action::Upload(_)))
            .collect();
        let specs = upload_specs(&uploads);
        let mut streams: BTreeMap<usize, Vec<&Action>> = BTreeMap::new();
        for members in btrfs2s3_core::execute::shared_streams(&specs) {
            let first = members[0];
            streams.insert(first, members.iter().map(|&m| uploads[m]).collect());
        }
        let mut upload_index = 0;
        for action in &plan.actions {
            if matches!(action, Action::Upload(_)) {
                if let Some(members) = streams.get(&upload_index) {
                    writeln!(out, "  {}", describe_stream(members, ids, verbose))?;
                }
                upload_index += 1;
            } else {
                writeln!(out, "  {}", describe_action(action, ids, verbose))?;
            }
        }
    }
    Ok(())
}

/// Full backups at the root, differentials under their send parent: one row each.
fn write_backup_tree(
    backups: &[&PlannedBackup],
    ids: &ShortIds,
    verbose: bool,
    out: &mut dyn Write,
) -> io::Result<()> {
    let present: BTreeSet<Uuid> = backups.iter().map(|b| b.uuid).collect();
    let tree = btrfs2s3_core::tree::depth_first(backups);
    let locks = backups.iter().any(|b| b.lock.is_some());
    let classes = backups.iter().any(|b| b.storage_class.is_some());
    write_table(out, "    ", |row| {
        let mut header = vec!["", "SNAPSHOT", "CTIME", "TYPE", "CTRANSID", "SIZE"];
        if classes {
            header.push("CLASS");
        }
        if locks {
            header.push("LOCKED UNTIL");
        }
        header.push("KEEP");
        if verbose {
            header.push("KEY");
        }
        row(&header);
        for (backup, depth) in &tree {
            let marker = if backup.new {
                paint("+", Style::Added, Stream::Out)
            } else if backup.keep.is_none() {
                paint("-", Style::Removed, Stream::Out)
            } else {
                " ".to_owned()
            };
            let id = format!("{}{}", "  ".repeat(*depth), ids.get(backup.uuid));
            let broken = backup
                .send_parent
                .is_some_and(|parent| !present.contains(&parent));
            let kind = if backup.send_parent.is_some() {
                "diff"
            } else {
                "full"
            };
            let mut keep = match (&backup.keep, backup.held_until) {
                (None, Some(until)) if backup.lock.is_some_and(|l| l.retain_until >= until) => {
                    format!("not kept: locked until {until}")
                }
                (None, Some(until)) => {
                    format!("not kept: stays until {until} (a locked backup needs it)")
                }
                (None, None) => "not kept: delete".to_owned(),
                (Some(keep), _) if keep.flags.contains(Flags::NEW) => {
                    format!("new: {}", keep.describe())
                }
                (Some(keep), _) => keep.describe(),
            };
            if broken {
                keep.push_str(&paint(
                    "; BROKEN CHAIN: its send parent is missing",
                    Style::Removed,
                    Stream::Out,
                ));
            }
            let size = backup.size.map_or_else(|| "-".to_owned(), bytes);
            let lock = backup
                .lock
                .map_or_else(String::new, |lock| lock.retain_until.to_string());
            let class = escape(backup.storage_class.as_deref().unwrap_or_default()).into_owned();
            let ctime = short_time(&backup.ctime);
            let ctransid = backup.ctransid.to_string();
            let key = escape(&backup.key).into_owned();
            let mut cells: Vec<&str> = vec![&marker, &id, &ctime, kind, &ctransid, &size];
            if classes {
                cells.push(&class);
            }
            if locks {
                cells.push(&lock);
            }
            cells.push(&keep);
            if verbose {
                cells.push(&key);
            }
            row(&cells);
        }
    })
}

/// Prints `value` as pretty JSON on standard output, serialized as it is written. A failure
/// to write (standard output closed) is reported on standard error.
pub fn print_json(value: &impl serde::Serialize) {
    let mut out = io::BufWriter::new(io::stdout().lock());
    let written = serde_json::to_writer_pretty(&mut out, value)
        .map_err(io::Error::from)
        .and_then(|()| writeln!(out))
        .and_then(|()| out.flush());
    if let Err(error) = written {
        eprintln!("btrfs2s3: cannot print the JSON output: {error}");
    }
}

/// One line describing an action: snapshots by their names, backups by their short uuids
/// (`verbose` adds the object keys).
#[must_use]
pub fn describe_action(action: &Action, ids: &ShortIds, verbose: bool) -> String {
    let key = |key: &str| {
        if verbose {
            format!(" [key {}]", escape(key))
        } else {
            String::new()
        }
    };
    match action {
        Action::AbortUpload(abort) => format!(
            "abort    {}: an unfinished upload (left by an interrupted run) of {}",
            abort.remote,
            escape(&abort.key)
        ),
        Action::CreateSnapshot(create) => format!(
            "snapshot {} -> {}",
            escape_os(create.source.as_os_str()),
            escape(&create.name)
        ),
        Action::Rename(rename) => format!(
            "rename   {} -> {}",
            escape(&rename.snapshot.name),
            escape(&rename.to)
        ),
        Action::Upload(upload) => {
            let spec = &upload.spec;
            let kind = match &spec.send_parent {
                Some(parent) => format!("differential from {}", ids.get(parent.uuid)),
                None => "full".to_owned(),
            };
            format!(
                "upload   {} -> {}, {kind}{}",
                ids.get(spec.snapshot.uuid),
                spec.remote,
                key(&spec.key)
            )
        }
        Action::ExtendLock(extend) => format!(
            "lock     {} in {} until {} ({}){}",
            ids.get(extend.uuid),
            extend.remote,
            extend.lock.retain_until,
            extend.lock.mode,
            key(&extend.key)
        ),
        Action::Destroy(destroy) => format!("destroy  {}", escape(&destroy.snapshot.name)),
        Action::Delete(delete) => format!(
            "delete   {} from {}{}{}",
            ids.get(delete.uuid),
            delete.remote,
            match delete.pieces.len() {
                0 => String::new(),
                1 => " (and 1 more piece)".to_owned(),
                n => format!(" (and {n} more pieces)"),
            },
            key(&delete.key)
        ),
    }
}

/// The specs of the uploads among `actions`.
fn upload_specs<'a>(actions: &[&'a Action]) -> Vec<&'a btrfs2s3_core::plan::UploadSpec> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::Upload(upload) => Some(&upload.spec),
            _ => None,
        })
        .collect()
}

/// What one stream of uploads does: `upload   1715609f -> aws, b2, full` (the uploads share
/// snapshot, send parent and commands; only their remotes and keys differ).
#[must_use]
pub fn describe_stream(uploads: &[&Action], ids: &ShortIds, verbose: bool) -> String {
    let specs = upload_specs(uploads);
    let Some(first) = specs.first() else {
        return String::new();
    };
    let mut kind = match &first.send_parent {
        Some(parent) => format!("differential from {}", ids.get(parent.uuid)),
        None => "full".to_owned(),
    };
    if !first.send_protocol.is_v1() {
        kind.push_str(", send protocol 2");
    }
    let remotes: Vec<&str> = specs.iter().map(|spec| spec.remote.as_str()).collect();
    let keys = if verbose {
        let keys: Vec<String> = specs
            .iter()
            .map(|spec| escape(&spec.key).into_owned())
            .collect();
        format!(" [key {}]", keys.join(", "))
    } else {
        String::new()
    };
    format!(
        "upload   {} -> {}, {kind}{keys}",
        ids.get(first.snapshot.uuid),
        remotes.join(", ")
    )
}

/// How an action went, in words.
#[must_use]
pub fn describe_result(result: &ActionResult) -> String {
    match result {
        ActionResult::Done { bytes: Some(n) } => format!("done ({})", bytes(*n)),
        ActionResult::Done { bytes: None } => "done".to_owned(),
        ActionResult::Failed { error } => format!(
            "{}: {}",
            paint("FAILED", Style::Removed, Stream::Err),
            escape(&error.to_string())
        ),
        ActionResult::Skipped { reason } => format!("skipped: {}", escape(&reason.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use btrfs2s3_core::plan::{
        Delete, Destroy, KeepSummary, Plan, PlannedBackup, PlannedSnapshot, Rename, SnapshotRef,
        Upload, UploadSpec,
    };
    use btrfs2s3_policy::{Flags, Reasons};
    use uuid::Uuid;

    use super::*;

    fn render(plan: &Plan, verbose: bool) -> String {
        let mut out = Vec::new();
        write_plan(plan, verbose, &mut out).expect("writing to memory");
        String::from_utf8(out).expect("the preview is text")
    }

    /// A uuid that looks like one: the n-th of a fixed pseudo-random sequence.
    fn uuid(n: u128) -> Uuid {
        Uuid::from_u128(n.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835) | 1)
    }

    const SOURCE: &str = "/mnt/pool/home";
    const SOURCE_UUID: u128 = 0xfeed;

    fn keep(span: &str, new: bool) -> KeepSummary {
        KeepSummary {
            reasons: Reasons::PRESERVED,
            flags: if new { Flags::NEW } else { Flags::default() },
            time_spans: vec![span.to_owned()],
        }
    }

    fn key(n: u128, parent: Option<u128>, ctime: &str, ctransid: i64) -> String {
        format!(
            "home.ctim{ctime}.ctid{ctransid}.uuid{}.sndp{}.prnt{}.mdvn1.seqn0",
            uuid(n),
            parent.map_or(Uuid::nil(), uuid),
            uuid(SOURCE_UUID)
        )
    }

    /// A plan of a year of a `1y 12m 30d` policy: the yearly full backup, a differential
    /// per month under it and a differential per day under each month — `months` months of
    /// `days` days — with the last day new, the day before it deleted, and everything a run
    /// does to them.
    #[allow(clippy::too_many_lines)] // a fixture
    // UploadOptions is the s3 crate's type, which the CLI never names.
    #[allow(clippy::default_trait_access)]
    fn year(months: u32, days: u32) -> Plan {
        let snapshot_ref = |n: u128, name: &str| SnapshotRef {
            directory: "/mnt/pool/.snapshots".into(),
            name: name.to_owned(),
            id: Some(256 + u64::try_from(n).unwrap()),
            uuid: uuid(n),
        };
        let mut backups = Vec::new();
        let mut snapshots = Vec::new();
        let mut actions = Vec::new();
        let mut add =
            |n: u128, parent: Option<u128>, month: u32, day: u32, span: String, state: char| {
                let ctime = format!("2026-{month:02}-{day:02}T03:00:00+01:00");
                let ctransid = 80_000 + i64::try_from(n).unwrap() * 37;
                let key = key(n, parent, &ctime, ctransid);
                let name = format!("home.{ctime}.{ctransid}");
                let new = state == '+';
                let kept = state != '-';
                backups.push(PlannedBackup {
                    remote: "aws".to_owned(),
                    key: key.clone().into(),
                    source: SOURCE.into(),
                    uuid: uuid(n),
                    send_parent: parent.map(uuid),
                    ctime: ctime.clone(),
                    ctransid,
                    size: (!new).then_some(1_234_567 * u64::try_from(n % 7 + 1).unwrap()),
                    storage_class: Some(
                        if parent.is_none() {
                            "DEEP_ARCHIVE"
                        } else {
                            "STANDARD_IA"
                        }
                        .to_owned(),
                    ),
                    new,
                    keep: kept.then(|| keep(&span, new)),
                    keep_until: None,
                    lock: None,
                    held_until: None,
                });
                snapshots.push(PlannedSnapshot {
                    source: SOURCE.into(),
                    directory: "/mnt/pool/.snapshots".into(),
                    name: if new {
                        "home.NEW.4242".to_owned()
                    } else {
                        name.clone()
                    },
                    target_name: name.clone(),
                    id: Some(256 + u64::try_from(n).unwrap()),
                    uuid: uuid(n),
                    ctime,
                    ctransid: u64::try_from(ctransid).unwrap(),
                    origin: if new {
                        Origin::Created
                    } else {
                        Origin::Existing
                    },
                    keep: kept.then(|| keep(&span, new)),
                });
                let current = snapshot_ref(n, if new { "home.NEW.4242" } else { &name });
                match state {
                    '+' => {
                        actions.push(Action::Rename(Rename {
                            snapshot: current.clone(),
                            to: name,
                        }));
                        actions.push(Action::Upload(Box::new(Upload {
                            spec: UploadSpec {
                                remote: "aws".to_owned(),
                                key: key.into(),
                                source: SOURCE.into(),
                                snapshot: current,
                                send_parent: parent.map(|p| snapshot_ref(p, "parent")),
                                pipe_through: Vec::new(),
                                send_protocol: Default::default(),
                                options: Default::default(),
                            },
                            keep: keep(&span, true),
                        })));
                    }
                    '-' => {
                        actions.push(Action::Destroy(Destroy { snapshot: current }));
                        actions.push(Action::Delete(Delete {
                            remote: "aws".to_owned(),
                            key: key.into(),
                            source: SOURCE.into(),
                            uuid: uuid(n),
                            pieces: Vec::new(),
                        }));
                    }
                    _ => {}
                }
            };
        add(1, None, 1, 1, "2026 yearly".to_owned(), ' ');
        let mut n = 1;
        for month in 1..=months {
            n += 1;
            let monthly = n;
            add(
                monthly,
                Some(1),
                month,
                1,
                format!("2026-{month:02} monthly"),
                ' ',
            );
            for day in 2..=days + 1 {
                n += 1;
                let state = match (month == months, day) {
                    (true, d) if d == days + 1 => '+',
                    (true, d) if d == days => '-',
                    _ => ' ',
                };
                add(
                    n,
                    Some(monthly),
                    month,
                    day,
                    format!("2026-{month:02}-{day:02} daily"),
                    state,
                );
            }
        }
        actions.sort_by_key(|action| match action {
            Action::Rename(_) => 0,
            Action::Upload(_) => 1,
            Action::Destroy(_) => 2,
            _ => 3,
        });
        Plan {
            now: "2026-12-31T12:00:00Z".parse().unwrap(),
            timezone: "Europe/Berlin".to_owned(),
            snapshots,
            backups,
            foreign_objects: BTreeMap::from([("aws".to_owned(), 2)]),
            broken_chains: Vec::new(),
            locks_off: Vec::new(),
            actions,
        }
    }

    #[test]
    fn the_plan_reads_as_expected() {
        crate::expect_text("plan.txt", &render(&year(2, 3), false));
        crate::expect_text("plan-verbose.txt", &render(&year(1, 2), true));
    }

    #[test]
    fn a_hundred_backup_plan_fits_a_terminal() {
        let plan = year(9, 10);
        assert_eq!(plan.backups.len(), 100);
        let text = render(&plan, false);
        let widest = text.lines().map(|line| line.chars().count()).max().unwrap();
        assert!(widest <= 120, "{widest} columns:\n{text}");
        // Most lines fit 80 columns; only the snapshot names' and backup rows' tables go
        // beyond.
        let wide = text
            .lines()
            .filter(|line| line.chars().count() > 100)
            .count();
        assert_eq!(wide, 0, "{text}");
    }

    #[test]
    fn log_lines_read_as_expected() {
        let plan = year(1, 3);
        let ids = ShortIds::of_plan(&plan);
        let results = [
            ActionResult::Done { bytes: None },
            ActionResult::Done {
                bytes: Some(5_432_100),
            },
            ActionResult::Skipped {
                reason: btrfs2s3_core::execute::SkipReason::Interrupted,
            },
        ];
        let mut text = String::new();
        for (action, result) in plan.actions.iter().zip(results.iter().cycle()) {
            let _ = writeln!(
                text,
                "{}: {}",
                describe_action(action, &ids, false),
                describe_result(result)
            );
        }
        crate::expect_text("actions.txt", &text);
        assert!(
            text.lines().all(|line| line.chars().count() <= 100),
            "{text}"
        );
    }

    #[test]
    fn short_ids_grow_until_they_differ() {
        let a = Uuid::from_u128(0x1234_5678_9abc_0000_0000_0000_0000_0000);
        let b = Uuid::from_u128(0x1234_5678_9abd_0000_0000_0000_0000_0000);
        let c = Uuid::from_u128(0xffff_0000_0000_0000_0000_0000_0000_0000);
        let ids = ShortIds::new([a, b, c]);
        assert_eq!(ids.get(a), "123456789abc");
        assert_eq!(ids.get(b), "123456789abd");
        assert_eq!(ids.get(c), "ffff0000");
        assert_eq!(ids.get(Uuid::nil()), "00000000", "an unknown one: 8 digits");
    }

    #[test]
    fn columns_are_as_wide_as_their_widest_cell() {
        let mut out = Vec::new();
        write_table(&mut out, "> ", |row| {
            row(&["a", "bbbb", "c"]);
            row(&["aaa", "b", "last cell is not padded"]);
            row(&["a", "b", ""]);
        })
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "> a    bbbb  c\n> aaa  b     last cell is not padded\n> a    b\n"
        );
    }

    #[test]
    fn a_missing_send_parent_is_a_broken_chain() {
        let mut plan = year(1, 2);
        // The monthly differential is gone: its days hang under nothing.
        plan.backups.retain(|b| b.uuid != uuid(2));
        let text = render(&plan, false);
        let broken: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("BROKEN CHAIN"))
            .collect();
        assert_eq!(broken.len(), 2, "{text}");
        assert!(broken.iter().all(|l| l.contains("diff")), "{text}");
    }
}
