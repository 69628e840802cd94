//! The printed preview of a plan: the snapshots, the backup tree of each remote, and the
//! actions. Plain text, aligned in columns, the same on a terminal and in a log.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::{self, Write};

use btrfs2s3_core::execute::ActionResult;
use btrfs2s3_core::plan::{Action, Origin, Plan, PlannedBackup, SnapshotRef};
use btrfs2s3_core::text::{escape, escape_os};
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
            let width = cell.chars().count();
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
                let _ = write!(line, "{cell:<width$}  ", width = widths[c]);
            }
        }
        result = writeln!(out, "{}", line.trim_end());
    });
    result
}

/// Writes the whole preview.
pub fn write_plan(plan: &Plan, out: &mut dyn Write) -> io::Result<()> {
    writeln!(out, "snapshots:")?;
    if plan.snapshots.is_empty() {
        writeln!(out, "  (none)")?;
    } else {
        write_table(out, "  ", |row| {
            row(&["", "path", "ctime", "ctransid", "keep"]);
            for snapshot in &plan.snapshots {
                let marker = match (snapshot.origin, &snapshot.keep) {
                    (Origin::Created | Origin::Planned, _) => "+",
                    (_, None) => "-",
                    _ => " ",
                };
                let path = snapshot.directory.join(&snapshot.name);
                let name = match snapshot.origin {
                    Origin::Planned => format!("{} (to be created)", escape_os(path.as_os_str())),
                    _ => escape_os(path.as_os_str()).into_owned(),
                };
                let keep = snapshot.keep.as_ref().map_or_else(
                    || "not kept: destroy".to_owned(),
                    btrfs2s3_core::plan::KeepSummary::describe,
                );
                row(&[
                    marker,
                    &name,
                    &snapshot.ctime,
                    &snapshot.ctransid.to_string(),
                    &keep,
                ]);
            }
        })?;
    }

    writeln!(out, "\nbackups:")?;
    let remotes: BTreeSet<&str> = plan
        .backups
        .iter()
        .map(|b| b.remote.as_str())
        .chain(plan.foreign_objects.keys().map(String::as_str))
        .collect();
    for remote in remotes {
        let foreign = plan.foreign_objects.get(remote).copied().unwrap_or(0);
        if foreign > 0 {
            writeln!(out, "  {remote} ({foreign} other object(s), never touched)")?;
        } else {
            writeln!(out, "  {remote}")?;
        }
        let backups: Vec<&PlannedBackup> =
            plan.backups.iter().filter(|b| b.remote == remote).collect();
        if backups.is_empty() {
            writeln!(out, "    (no backups)")?;
            continue;
        }
        write_backup_tree(&backups, out)?;
    }

    for remote in &plan.locks_off {
        writeln!(
            out,
            "\nnote: the bucket of remote {remote} has Object Lock enabled, but the config sets no object_lock: new backups get the bucket's default retention, if any"
        )?;
    }
    if plan.actions.is_empty() {
        writeln!(out, "\nactions: none")?;
    } else {
        writeln!(out, "\nactions:")?;
        for action in &plan.actions {
            writeln!(out, "  {}", describe_action(action))?;
        }
    }
    Ok(())
}

/// Full backups at the root, differentials under their send parent.
fn write_backup_tree(backups: &[&PlannedBackup], out: &mut dyn Write) -> io::Result<()> {
    let present: BTreeSet<Uuid> = backups.iter().map(|b| b.uuid).collect();
    let tree = btrfs2s3_core::tree::depth_first(backups);
    write_table(out, "    ", |row| {
        for (backup, depth) in &tree {
            let marker = if backup.new {
                "+"
            } else if backup.keep.is_none() {
                "-"
            } else {
                " "
            };
            let mut name = format!("{}{}", "  ".repeat(*depth), escape(&backup.key));
            if backup
                .send_parent
                .is_some_and(|parent| !present.contains(&parent))
            {
                name.push_str(" (send parent missing: broken chain)");
            }
            let keep = match (&backup.keep, backup.held_until) {
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
            let lock = backup.lock.map_or_else(String::new, |lock| {
                format!("locked until {}", lock.retain_until)
            });
            let size = backup.size.map_or_else(|| "-".to_owned(), bytes);
            row(&[
                marker,
                &name,
                &keep,
                &size,
                &escape(backup.storage_class.as_deref().unwrap_or_default()),
                &lock,
            ]);
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

/// One line describing an action.
#[must_use]
pub fn describe_action(action: &Action) -> String {
    match action {
        Action::AbortUpload(abort) => format!(
            "abort    {}: the unfinished upload of {} (left by an interrupted run)",
            abort.remote,
            escape(&abort.key)
        ),
        Action::CreateSnapshot(create) => format!(
            "snapshot {} -> {}",
            escape_os(create.source.as_os_str()),
            escape_os(create.directory.join(&create.name).as_os_str())
        ),
        Action::Rename(rename) => format!(
            "rename   {} -> {}",
            shown(&rename.snapshot),
            escape(&rename.to)
        ),
        Action::Upload(upload) => {
            let spec = &upload.spec;
            let kind = match &spec.send_parent {
                Some(parent) => format!("differential from {}", escape(&parent.name)),
                None => "full".to_owned(),
            };
            format!(
                "upload   {} -> {}: {} ({kind})",
                shown(&spec.snapshot),
                spec.remote,
                escape(&spec.key)
            )
        }
        Action::ExtendLock(extend) => format!(
            "lock     {}: {} until {} ({})",
            extend.remote,
            escape(&extend.key),
            extend.lock.retain_until,
            extend.lock.mode
        ),
        Action::Destroy(destroy) => format!("destroy  {}", shown(&destroy.snapshot)),
        Action::Delete(delete) => {
            format!("delete   {}: {}", delete.remote, escape(&delete.key))
        }
    }
}

/// A snapshot's path, escaped.
fn shown(snapshot: &SnapshotRef) -> String {
    escape_os(snapshot.directory.join(&snapshot.name).as_os_str()).into_owned()
}

/// How an action went, in words.
#[must_use]
pub fn describe_result(result: &ActionResult) -> String {
    match result {
        ActionResult::Done { bytes: Some(n) } => format!("done ({})", bytes(*n)),
        ActionResult::Done { bytes: None } => "done".to_owned(),
        ActionResult::Failed { error } => format!("FAILED: {}", escape(&error.to_string())),
        ActionResult::Skipped { reason } => format!("skipped: {}", escape(&reason.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use btrfs2s3_core::plan::{KeepSummary, Plan, PlannedBackup};
    use btrfs2s3_policy::{Flags, Reasons};
    use uuid::Uuid;

    use super::*;

    fn render(plan: &Plan) -> String {
        let mut out = Vec::new();
        write_plan(plan, &mut out).expect("writing to memory");
        String::from_utf8(out).expect("the preview is text")
    }

    fn backup(n: u128, parent: Option<u128>, ctransid: i64, kept: bool) -> PlannedBackup {
        PlannedBackup {
            remote: "r".to_owned(),
            key: format!("key{n}").into(),
            source: "/src".into(),
            uuid: Uuid::from_u128(n),
            send_parent: parent.map(Uuid::from_u128),
            ctime: "2026-01-01T00:00:00+00:00".to_owned(),
            ctransid,
            size: Some(1 << 20),
            storage_class: None,
            new: false,
            keep_until: None,
            lock: None,
            held_until: None,
            keep: kept.then(|| KeepSummary {
                reasons: Reasons::PRESERVED,
                flags: Flags::default(),
                time_spans: vec![format!("span {n}")],
            }),
        }
    }

    fn plan(backups: Vec<PlannedBackup>) -> Plan {
        Plan {
            now: jiff::Timestamp::UNIX_EPOCH,
            timezone: "UTC".to_owned(),
            snapshots: Vec::new(),
            backups,
            foreign_objects: BTreeMap::new(),
            broken_chains: Vec::new(),
            locks_off: Vec::new(),
            actions: Vec::new(),
        }
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
    fn differentials_are_shown_under_their_send_parent_in_ctransid_order() {
        let text = render(&plan(vec![
            backup(3, Some(1), 30, true),
            backup(2, Some(1), 20, false),
            backup(1, None, 10, true),
            backup(4, Some(9), 40, true),
        ]));
        // (marker, depth, key, broken) of each backup row: "    " indent, marker, two
        // spaces, then two spaces per level before the key.
        let rows: Vec<(char, usize, &str, bool)> = text
            .lines()
            .filter(|line| line.contains("key"))
            .map(|line| {
                let marker = line.chars().nth(4).unwrap();
                let name = &line[7..];
                let key = name.trim_start().split(' ').next().unwrap();
                let depth = (name.len() - name.trim_start().len()) / 2;
                (marker, depth, key, line.contains("broken chain"))
            })
            .collect();
        assert_eq!(
            rows,
            [
                (' ', 0, "key1", false),
                ('-', 1, "key2", false),
                (' ', 1, "key3", false),
                (' ', 0, "key4", true),
            ],
            "{text}"
        );
        assert!(text.ends_with("\nactions: none\n"), "{text}");
    }
}
