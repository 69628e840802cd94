//! The printed preview of a plan: the snapshots, the backup tree of each remote, and the
//! actions. Plain text, aligned in columns, the same on a terminal and in a log.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use btrfs2s3_core::execute::ActionResult;
use btrfs2s3_core::plan::{Action, Origin, Plan, PlannedBackup};
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

/// Lays out rows in columns separated by two spaces.
pub fn table(rows: &[Vec<String>], indent: &str) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|row| row.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = indent.to_owned();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The whole preview.
#[must_use]
pub fn render_plan(plan: &Plan) -> String {
    let mut out = String::new();
    out.push_str("snapshots:\n");
    if plan.snapshots.is_empty() {
        out.push_str("  (none)\n");
    } else {
        let mut rows = vec![
            ["", "path", "ctime", "ctransid", "keep"]
                .map(str::to_owned)
                .to_vec(),
        ];
        for snapshot in &plan.snapshots {
            let marker = match (snapshot.origin, &snapshot.keep) {
                (Origin::Created | Origin::Planned, _) => "+",
                (_, None) => "-",
                _ => " ",
            };
            let name = match snapshot.origin {
                Origin::Planned => format!(
                    "{} (to be created)",
                    snapshot.directory.join(&snapshot.name).display()
                ),
                _ => snapshot
                    .directory
                    .join(&snapshot.name)
                    .display()
                    .to_string(),
            };
            rows.push(vec![
                marker.to_owned(),
                name,
                snapshot.ctime.clone(),
                snapshot.ctransid.to_string(),
                snapshot.keep.as_ref().map_or_else(
                    || "not kept: destroy".to_owned(),
                    btrfs2s3_core::plan::KeepSummary::describe,
                ),
            ]);
        }
        out.push_str(&table(&rows, "  "));
    }

    out.push_str("\nbackups:\n");
    let remotes: BTreeSet<&str> = plan
        .backups
        .iter()
        .map(|b| b.remote.as_str())
        .chain(plan.foreign_objects.keys().map(String::as_str))
        .collect();
    for remote in remotes {
        let foreign = plan.foreign_objects.get(remote).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "  {remote}{}",
            if foreign > 0 {
                format!(" ({foreign} other object(s), never touched)")
            } else {
                String::new()
            }
        );
        let backups: Vec<&PlannedBackup> =
            plan.backups.iter().filter(|b| b.remote == remote).collect();
        if backups.is_empty() {
            out.push_str("    (no backups)\n");
            continue;
        }
        out.push_str(&backup_tree(&backups));
    }

    let actions: Vec<&Action> = plan.actions.iter().collect();
    if actions.is_empty() {
        out.push_str("\nactions: none\n");
    } else {
        out.push_str("\nactions:\n");
        for action in actions {
            let _ = writeln!(out, "  {}", describe_action(action));
        }
    }
    out
}

/// Full backups at the root, differentials under their send parent.
fn backup_tree(backups: &[&PlannedBackup]) -> String {
    let present: BTreeSet<Uuid> = backups.iter().map(|b| b.uuid).collect();
    let mut children: BTreeMap<Uuid, Vec<&PlannedBackup>> = BTreeMap::new();
    let mut roots = Vec::new();
    for backup in backups {
        match backup.send_parent {
            Some(parent) if present.contains(&parent) => {
                children.entry(parent).or_default().push(backup);
            }
            _ => roots.push(*backup),
        }
    }
    let mut rows = Vec::new();
    let mut stack: Vec<(&PlannedBackup, usize)> = roots.iter().rev().map(|b| (*b, 0)).collect();
    // Roots and children in ctransid order.
    stack.sort_by_key(|(b, _)| std::cmp::Reverse(b.ctransid));
    while let Some((backup, depth)) = stack.pop() {
        let marker = if backup.new {
            "+"
        } else if backup.keep.is_none() {
            "-"
        } else {
            " "
        };
        let mut name = format!("{}{}", "  ".repeat(depth), backup.key);
        if backup
            .send_parent
            .is_some_and(|parent| !present.contains(&parent))
        {
            name.push_str(" (send parent missing: broken chain)");
        }
        let keep = match &backup.keep {
            None => "not kept: delete".to_owned(),
            Some(keep) if keep.flags.contains(Flags::NEW) => format!("new: {}", keep.describe()),
            Some(keep) => keep.describe(),
        };
        rows.push(vec![
            marker.to_owned(),
            name,
            keep,
            backup.size.map_or_else(|| "-".to_owned(), bytes),
            backup.storage_class.clone().unwrap_or_default(),
        ]);
        if let Some(kids) = children.get(&backup.uuid) {
            let mut kids = kids.clone();
            kids.sort_by_key(|b| std::cmp::Reverse(b.ctransid));
            stack.extend(kids.into_iter().map(|b| (b, depth + 1)));
        }
    }
    table(&rows, "    ")
}

/// One line describing an action.
#[must_use]
pub fn describe_action(action: &Action) -> String {
    match action {
        Action::AbortUpload { remote, key, .. } => {
            format!(
                "abort    {remote}: the unfinished upload of {key} (left by an interrupted run)"
            )
        }
        Action::CreateSnapshot {
            source,
            directory,
            name,
        } => {
            format!(
                "snapshot {} -> {}",
                source.display(),
                directory.join(name).display()
            )
        }
        Action::Rename { snapshot, to } => {
            format!(
                "rename   {} -> {to}",
                snapshot.directory.join(&snapshot.name).display()
            )
        }
        Action::Upload {
            remote,
            key,
            snapshot,
            send_parent,
            ..
        } => {
            let kind = match send_parent {
                Some(parent) => format!("differential from {}", parent.name),
                None => "full".to_owned(),
            };
            format!(
                "upload   {} -> {remote}: {key} ({kind})",
                snapshot.directory.join(&snapshot.name).display()
            )
        }
        Action::Destroy { snapshot } => {
            format!(
                "destroy  {}",
                snapshot.directory.join(&snapshot.name).display()
            )
        }
        Action::Delete { remote, key, .. } => format!("delete   {remote}: {key}"),
    }
}

/// How an action went, in words.
#[must_use]
pub fn describe_result(result: &ActionResult) -> String {
    match result {
        ActionResult::Done { bytes: Some(n) } => format!("done ({})", bytes(*n)),
        ActionResult::Done { bytes: None } => "done".to_owned(),
        ActionResult::Failed { error } => format!("FAILED: {error}"),
        ActionResult::Skipped { reason } => format!("skipped: {reason}"),
    }
}
