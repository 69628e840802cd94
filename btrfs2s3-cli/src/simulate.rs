//! `btrfs2s3 simulate`: what policies will store, cost and take to restore.

use std::io::Write;
use std::path::{Path, PathBuf};

use btrfs2s3_core::config::{Config, parse_size};
use btrfs2s3_core::simulate::{Candidate, Outcome, Prices, Report, Scenario, simulate};
use btrfs2s3_core::storage::parse_classes;
use btrfs2s3_policy::Params;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

use crate::exit;
use crate::output::{print_json, write_table};

/// Arguments of `simulate`.
#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// A preservation policy to simulate (repeat to compare several side by side).
    #[arg(long, value_name = "POLICY")]
    pub preserve: Vec<String>,
    /// The time between snapshots (the source changes all the time).
    #[arg(long, value_name = "DURATION", default_value = "15m", value_parser = crate::parse_duration)]
    pub every: std::time::Duration,
    /// The size of a full backup (e.g. 500GiB).
    #[arg(long, value_name = "SIZE")]
    pub size: Option<String>,
    /// How much changes per day (e.g. 2GiB/day): a differential carries what changed since
    /// its send parent's snapshot.
    #[arg(long, value_name = "SIZE/day")]
    pub change: Option<String>,
    /// How long to simulate.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub years: u32,
    /// The time zone policies are evaluated in (default: the config's, else UTC).
    #[arg(long, value_name = "ZONE")]
    pub timezone: Option<String>,
    /// The first snapshot's date (default: today).
    #[arg(long, value_name = "DATE")]
    pub start: Option<jiff::civil::Date>,
    /// Storage classes: one (`STANDARD_IA`) or by unit
    /// (`y=DEEP_ARCHIVE,m=GLACIER_IR,default=STANDARD`).
    #[arg(long, value_name = "CLASSES")]
    pub storage_class: Option<String>,
    /// Prices: aws, b2, wasabi, or a YAML file of the same shape.
    #[arg(long, value_name = "TABLE", default_value = "aws")]
    pub prices: String,
    /// Also draw GiB stored over time, by storage class, one panel per policy, into this SVG
    /// file.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Print everything as JSON, with a series per day.
    #[arg(long)]
    pub json: bool,
    /// A configuration file: its policies, time zone and storage classes; --size and
    /// --change default to what its buckets' backups show.
    pub config: Option<PathBuf>,
}

/// `btrfs2s3 simulate`.
pub fn run(args: &SimulateArgs) -> u8 {
    let config = match &args.config {
        Some(path) => match crate::load_config(path) {
            Some(config) => Some(config),
            None => return exit::USAGE,
        },
        None => None,
    };
    let prepared = match prepare(args, config.as_ref()) {
        Ok(prepared) => prepared,
        Err(message) => {
            eprintln!("btrfs2s3: simulate: {message}");
            return exit::USAGE;
        }
    };
    match prepared {
        Prepared::Ready(ready) => finish(args, ready),
        Prepared::NeedsBucket(config, partial) => crate::with_runtime(|cancel| async move {
            match measure_from_buckets(&config, &partial, &cancel).await {
                Ok(ready) => finish(args, ready),
                Err(message) => {
                    eprintln!("btrfs2s3: simulate: {message}");
                    exit::FAILURE
                }
            }
        }),
    }
}

type Ready = (Scenario, Vec<Candidate>, Prices);

enum Prepared {
    Ready(Ready),
    /// A config without --size or --change: they come from its buckets.
    NeedsBucket(Box<Config>, Ready),
}

fn finish(args: &SimulateArgs, (scenario, candidates, prices): Ready) -> u8 {
    let started = std::time::Instant::now();
    let report = match simulate(&scenario, &candidates, &prices) {
        Ok(report) => report,
        Err(error) => {
            eprintln!("btrfs2s3: simulate: {error}");
            return exit::FAILURE;
        }
    };
    if let Some(path) = &args.svg
        && let Err(error) = std::fs::write(path, crate::chart::svg(&report))
    {
        eprintln!(
            "btrfs2s3: simulate: cannot write {}: {error}",
            path.display()
        );
        return exit::FAILURE;
    }
    if args.json {
        print_json(&report);
    } else if let Err(error) = write_report(&mut std::io::stdout().lock(), &scenario, &report) {
        eprintln!("btrfs2s3: cannot print the simulation: {error}");
        return exit::FAILURE;
    }
    if crate::verbose() {
        let steps: u64 = report.outcomes.iter().map(|o| o.steps).sum();
        eprintln!(
            "btrfs2s3: simulated {steps} steps in {:.2} s",
            started.elapsed().as_secs_f64()
        );
    }
    exit::OK
}

fn prepare(args: &SimulateArgs, config: Option<&Config>) -> Result<Prepared, String> {
    let prices = Prices::load(&args.prices).map_err(|e| e.to_string())?;
    if let Some(path) = &args.svg
        && !writable(path)
    {
        return Err(format!(
            "--svg {}: its directory does not exist",
            path.display()
        ));
    }
    let zone = args
        .timezone
        .clone()
        .or_else(|| config.map(|c| c.timezone_name.clone()))
        .unwrap_or_else(|| "UTC".to_owned());
    let timezone = TimeZone::get(&zone).map_err(|_| {
        format!(
            "--timezone: unknown time zone {zone:?} (expected an IANA name like \"Europe/Berlin\")"
        )
    })?;
    let start_date = args
        .start
        .unwrap_or_else(|| Timestamp::now().to_zoned_datetime(timezone.clone()).date());
    let start = start_date
        .to_zoned_datetime(timezone.clone())
        .map_err(|e| format!("--start: {e}"))?;
    let end = start
        .checked_add(jiff::Span::new().years(args.years))
        .map_err(|e| format!("--years: {e}"))?;
    let every = SignedDuration::try_from(args.every).map_err(|e| format!("--every: {e}"))?;
    if every < SignedDuration::from_secs(1) {
        return Err("--every: must be at least 1s".to_owned());
    }
    let candidates = candidates(args, config)?;
    if candidates.is_empty() {
        return Err("nothing to simulate: give --preserve POLICY or a config".to_owned());
    }
    let steps = (end.timestamp().as_second() - start.timestamp().as_second()) / every.as_secs();
    if steps > 10_000_000 {
        return Err(format!(
            "{steps} snapshots is too many to simulate: take fewer --years or a longer --every"
        ));
    }
    let size = args
        .size
        .as_deref()
        .map(|text| parse_size(text).map_err(|e| format!("--size: {e}")))
        .transpose()?;
    let change = args
        .change
        .as_deref()
        .map(|text| parse_change(text).map_err(|e| format!("--change: {e}")))
        .transpose()?;
    let mut scenario = Scenario {
        timezone,
        start: start.timestamp(),
        end: end.timestamp(),
        every,
        size: size.unwrap_or(0),
        change_per_day: change.unwrap_or(0),
    };
    match (size, change, config) {
        (Some(_), Some(_), _) => Ok(Prepared::Ready((scenario, candidates, prices))),
        (_, _, Some(config)) => {
            scenario.size = size.unwrap_or(0);
            scenario.change_per_day = change.unwrap_or(u64::MAX);
            Ok(Prepared::NeedsBucket(
                Box::new(config.clone()),
                (scenario, candidates, prices),
            ))
        }
        (None, _, None) => Err("--size is needed without a config (e.g. --size 500GiB)".to_owned()),
        (_, None, None) => {
            Err("--change is needed without a config (e.g. --change 2GiB/day)".to_owned())
        }
    }
}

/// The policies to simulate: each `--preserve`, then each pair of the config.
fn candidates(args: &SimulateArgs, config: Option<&Config>) -> Result<Vec<Candidate>, String> {
    let classes = |preserve: &Params| {
        args.storage_class
            .as_deref()
            .map(|text| parse_classes(text, preserve).map_err(|e| format!("--storage-class: {e}")))
            .transpose()
    };
    let mut candidates = Vec::new();
    for text in &args.preserve {
        let preserve: Params = text
            .parse()
            .map_err(|e| format!("--preserve {text:?}: {e}"))?;
        candidates.push(Candidate {
            label: preserve.to_string(),
            storage_classes: classes(&preserve)?,
            preserve,
        });
    }
    if let Some(config) = config {
        for source in &config.sources {
            for upload in &source.upload_to_remotes {
                candidates.push(Candidate {
                    label: format!("{} -> {}", source.path.display(), upload.remote_id),
                    preserve: upload.preserve,
                    storage_classes: match &args.storage_class {
                        Some(_) => classes(&upload.preserve)?,
                        None => upload.storage_classes.clone(),
                    },
                });
            }
        }
    }
    Ok(candidates)
}

/// `2GiB/day`, `500MiB/d`: bytes per day.
fn parse_change(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let amount = trimmed
        .strip_suffix("/day")
        .or_else(|| trimmed.strip_suffix("/d"))
        .ok_or_else(|| format!("expected a size per day like \"2GiB/day\", found {text:?}"))?;
    parse_size(amount)
}

/// Fills in the size and daily change a config's buckets show: the newest full backup's
/// size, and the bytes of recent differentials over the days since their send parents.
async fn measure_from_buckets(
    config: &Config,
    partial: &Ready,
    cancel: &btrfs2s3_core::cancel::Cancel,
) -> Result<Ready, String> {
    let (scenario, candidates, prices) = partial;
    let mut scenario = scenario.clone();
    let mut full: Option<(Timestamp, u64)> = None;
    let (mut changed, mut seconds) = (0u64, 0i64);
    for remote in &config.remotes {
        if cancel.is_cancelled() {
            return Err("interrupted".to_owned());
        }
        let (_, catalog) = btrfs2s3_core::catalog::read(&remote.id, &remote.s3)
            .await
            .map_err(|e| btrfs2s3_core::error_chain(&e))?;
        let names: Vec<String> = config
            .sources
            .iter()
            .filter(|source| {
                source
                    .upload_to_remotes
                    .iter()
                    .any(|u| u.remote_id == remote.id)
            })
            .filter_map(|source| {
                source
                    .path
                    .file_name()
                    .map(|name| name.to_string_lossy().into_owned())
            })
            .collect();
        let ours: Vec<_> = catalog
            .backups()
            .iter()
            .filter(|b| names.iter().any(|n| n == b.source_name()))
            .collect();
        for backup in &ours {
            match backup.meta.send_parent_uuid.and_then(|p| catalog.get(p)) {
                None if backup.meta.send_parent_uuid.is_none()
                    && full.is_none_or(|(ctime, _)| backup.meta.ctime > ctime) =>
                {
                    full = Some((backup.meta.ctime, backup.size));
                }
                None => {}
                Some(parent) => {
                    changed += backup.size;
                    seconds += backup
                        .meta
                        .ctime
                        .duration_since(parent.meta.ctime)
                        .as_secs();
                }
            }
        }
    }
    if scenario.size == 0 {
        scenario.size = full
            .map(|(_, size)| size)
            .ok_or("the config's buckets hold no full backup of its sources: give --size")?;
    }
    if scenario.change_per_day == u64::MAX {
        if seconds <= 0 {
            return Err(
                "the config's buckets hold no differential backups of its sources: give --change"
                    .to_owned(),
            );
        }
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss
        )]
        {
            scenario.change_per_day = (changed as f64 * 86_400.0 / seconds as f64) as u64;
        }
    }
    Ok((scenario, candidates.clone(), prices.clone()))
}

fn gib(bytes: f64) -> String {
    format!("{:.1}", bytes / f64::from(1u32 << 30))
}

fn money(value: f64) -> String {
    format!("{value:.2}")
}

/// The report as a table, policies side by side.
fn write_report(out: &mut dyn Write, scenario: &Scenario, report: &Report) -> std::io::Result<()> {
    #[allow(clippy::cast_precision_loss)]
    let (size, change) = (
        gib(scenario.size as f64),
        gib(scenario.change_per_day as f64),
    );
    writeln!(
        out,
        "simulated {} to {}: a snapshot every {}, {size} GiB, {change} GiB changing per day ({} snapshots)",
        report
            .start
            .to_zoned_datetime(scenario.timezone.clone())
            .date(),
        report
            .end
            .to_zoned_datetime(scenario.timezone.clone())
            .date(),
        humantime_span(scenario.every),
        report.outcomes.first().map_or(0, |o| o.steps),
    )?;
    writeln!(
        out,
        "prices: {} (taken {}), {} per month",
        report.prices, report.prices_taken, report.currency
    )?;
    writeln!(
        out,
        "once the tree is steady (after one span of the policy's longest unit), on average:"
    )?;
    let rows = rows(report);
    write_table(out, "  ", |row| {
        for (name, values) in &rows {
            let mut cells: Vec<&str> = vec![name.as_str()];
            cells.extend(values.iter().map(String::as_str));
            row(&cells);
        }
    })
}

/// The rows of the report's table: a name, then a value per policy.
fn rows(report: &Report) -> Vec<(String, Vec<String>)> {
    let classes: std::collections::BTreeSet<&String> = report
        .outcomes
        .iter()
        .flat_map(|o| o.steady.by_class.keys())
        .collect();
    let column = |value: &dyn Fn(&Outcome) -> String| -> Vec<String> {
        report.outcomes.iter().map(value).collect()
    };
    let mut rows: Vec<(String, Vec<String>)> = vec![
        (String::new(), column(&|o| o.label.clone())),
        (
            "objects".to_owned(),
            column(&|o| format!("{:.0}", o.steady.objects)),
        ),
        ("GiB stored".to_owned(), column(&|o| gib(o.steady.bytes))),
    ];
    for class in &classes {
        rows.push((
            format!("  {class}"),
            column(&|o| {
                o.steady.by_class.get(*class).map_or_else(
                    || "-".to_owned(),
                    |(objects, bytes)| format!("{} ({objects:.0})", gib(*bytes)),
                )
            }),
        ));
    }
    rows.extend([
        (
            "uploads / month".to_owned(),
            column(&|o| format!("{:.0}", o.steady.uploads_per_month)),
        ),
        (
            "deletes / month".to_owned(),
            column(&|o| format!("{:.0}", o.steady.deletes_per_month)),
        ),
        (
            "GiB uploaded / month".to_owned(),
            column(&|o| gib(o.steady.bytes_uploaded_per_month)),
        ),
        (
            "longest restore chain".to_owned(),
            column(&|o| o.steady.longest_chain.to_string()),
        ),
        (
            "GiB to restore the newest (avg, max)".to_owned(),
            column(&|o| {
                #[allow(clippy::cast_precision_loss)]
                let max = o.steady.restore_newest_bytes.1 as f64;
                format!("{}, {}", gib(o.steady.restore_newest_bytes.0), gib(max))
            }),
        ),
        (
            "storage / month".to_owned(),
            column(&|o| money(o.steady.cost_per_month.storage)),
        ),
        (
            "requests / month".to_owned(),
            column(&|o| money(o.steady.cost_per_month.requests)),
        ),
        (
            "early deletion / month".to_owned(),
            column(&|o| money(o.steady.cost_per_month.early_deletion)),
        ),
        (
            "total / month".to_owned(),
            column(&|o| money(o.steady.cost_per_month.total)),
        ),
        (
            "peak GiB stored".to_owned(),
            column(&|o| {
                #[allow(clippy::cast_precision_loss)]
                let bytes = o.peak.bytes as f64;
                gib(bytes)
            }),
        ),
        (
            "peak objects".to_owned(),
            column(&|o| o.peak.objects.to_string()),
        ),
        (
            "dearest month".to_owned(),
            column(&|o| money(o.peak.cost_per_month)),
        ),
    ]);
    rows
}

/// `15m`, `1h`, `1d`: a duration as the options take it.
fn humantime_span(duration: SignedDuration) -> String {
    let seconds = duration.as_secs();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if seconds >= size && seconds % size == 0 {
            return format!("{}{unit}", seconds / size);
        }
    }
    format!("{seconds}s")
}

/// Whether `path` names a file in a directory that exists (checked before the simulation).
fn writable(path: &Path) -> bool {
    path.parent()
        .is_none_or(|dir| dir.as_os_str().is_empty() || dir.is_dir())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario() -> Scenario {
        Scenario {
            timezone: TimeZone::get("Europe/Berlin").unwrap(),
            start: "2026-12-31T23:00:00Z".parse().unwrap(),
            end: "2027-03-01T00:00:00Z".parse().unwrap(),
            every: SignedDuration::from_hours(6),
            size: 100 << 30,
            change_per_day: 2 << 30,
        }
    }

    fn candidate(preserve: &str, classes: Option<&str>) -> Candidate {
        let preserve: Params = preserve.parse().unwrap();
        Candidate {
            label: preserve.to_string(),
            storage_classes: classes.map(|text| parse_classes(text, &preserve).unwrap()),
            preserve,
        }
    }

    #[test]
    fn a_simulation_reads_as_expected() {
        let scenario = scenario();
        let candidates = [
            candidate("1m 7d", None),
            candidate("1m 2w 7d 4h", Some("m=GLACIER_IR,default=STANDARD_IA")),
        ];
        let report = simulate(&scenario, &candidates, &Prices::load("aws").unwrap()).unwrap();
        let mut out = Vec::new();
        write_report(&mut out, &scenario, &report).unwrap();
        crate::expect_text("simulate.txt", &String::from_utf8(out).unwrap());
        let chart = crate::chart::svg(&report);
        assert!(chart.starts_with("<svg") && chart.ends_with("</svg>\n"));
        assert_eq!(
            chart.matches("font-weight=\"bold\"").count(),
            2,
            "a panel per policy"
        );
        assert!(
            chart.contains(">STANDARD_IA</text>") && !chart.contains(">GLACIER_IR</text>"),
            "a legend entry per class stored (the monthlies of `1m` never stay the 90 days of Glacier IR)"
        );
    }

    #[test]
    fn changes_are_sizes_per_day() {
        assert_eq!(parse_change("2GiB/day"), Ok(2 << 30));
        assert_eq!(parse_change("500MB/d"), Ok(500_000_000));
        assert!(parse_change("2GiB").unwrap_err().contains("per day"));
        assert!(parse_change("lots/day").is_err());
    }
}
