//! Metrics for Prometheus (`node_exporter`'s textfile collector, or anything that reads the
//! text exposition format), written after every run (`update --metrics FILE`) or daemon
//! cycle. The file is replaced atomically, so a reader never sees half of it; counters and
//! the last successes of earlier runs are carried over from the file itself, so they survive
//! restarts.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::Timestamp;

use crate::config::Config;
use crate::execute::ActionResult;
use crate::plan::{Action, Plan};
use crate::run::{UpdateEnd, UpdateReport};

/// Every metric: name, type, help.
const FAMILIES: &[(&str, &str, &str)] = &[
    (
        LAST_SUCCESS,
        "gauge",
        "When the last run that left this source's backups in this remote complete started",
    ),
    (LAST_RUN, "gauge", "When the last run started"),
    (
        LAST_RUN_SUCCESS,
        "gauge",
        "Whether the last run did everything it had to (1) or not (0)",
    ),
    (RUN_DURATION, "gauge", "How long the last run took"),
    (UPLOADED, "counter", "Bytes uploaded, over all runs"),
    (BACKUPS, "gauge", "Backups in the remote"),
    (STORED, "gauge", "Bytes the backups take in the remote"),
    (
        FAILED,
        "counter",
        "Actions that failed, by kind, over all runs",
    ),
];

const LAST_SUCCESS: &str = "btrfs2s3_last_success_timestamp_seconds";
const LAST_RUN: &str = "btrfs2s3_last_run_timestamp_seconds";
const LAST_RUN_SUCCESS: &str = "btrfs2s3_last_run_success";
const RUN_DURATION: &str = "btrfs2s3_run_duration_seconds";
const UPLOADED: &str = "btrfs2s3_uploaded_bytes_total";
const BACKUPS: &str = "btrfs2s3_backups";
const STORED: &str = "btrfs2s3_stored_bytes";
const FAILED: &str = "btrfs2s3_failed_actions_total";

/// The kinds of actions, as `failed_actions_total` labels them.
const KINDS: &[&str] = &[
    "abort_upload",
    "rename",
    "upload",
    "extend_lock",
    "destroy",
    "delete",
];

/// The storage class label of a backup stored in the bucket's default class.
const DEFAULT_CLASS: &str = "STANDARD";

/// One time series: a metric name and its labels, in order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Series {
    name: String,
    labels: Vec<(String, String)>,
}

impl Series {
    fn new(name: &str, labels: &[(&str, &str)]) -> Series {
        Series {
            name: name.to_owned(),
            labels: labels
                .iter()
                .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                .collect(),
        }
    }

    fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, value)| value.as_str())
    }
}

/// A run, as the metrics see it.
#[derive(Debug)]
pub struct RunRecord<'a> {
    /// When it started.
    pub started: Timestamp,
    /// How long it took.
    pub duration: Duration,
    /// The config it ran, when it could be loaded.
    pub config: Option<&'a Config>,
    /// What it did, when it got to run at all.
    pub report: Option<&'a UpdateReport>,
}

/// The metrics, as last written.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    series: BTreeMap<Series, f64>,
}

impl Metrics {
    /// The metrics in the file at `path`: empty if there is none; lines that are not ours
    /// are dropped.
    #[must_use]
    pub fn load(path: &Path) -> Metrics {
        std::fs::read_to_string(path)
            .map(|text| Metrics::parse(&text))
            .unwrap_or_default()
    }

    /// Parses the text format as [`Metrics::render`] writes it.
    #[must_use]
    pub fn parse(text: &str) -> Metrics {
        let known: BTreeSet<&str> = FAMILIES.iter().map(|(name, _, _)| *name).collect();
        let series = text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(parse_line)
            .filter(|(series, _)| known.contains(series.name.as_str()))
            .collect();
        Metrics { series }
    }

    /// The value of a series, for tests and tools.
    #[must_use]
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.series.get(&Series::new(name, labels)).copied()
    }

    fn set(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.series.insert(Series::new(name, labels), value);
    }

    fn add(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        *self.series.entry(Series::new(name, labels)).or_insert(0.0) += value;
    }

    /// Adds a run: its time, result and duration; what it uploaded and what failed; and,
    /// when it planned, what each (source, remote) pair holds now and whether the pair is
    /// complete. What the run did not find out (the bucket of a run that failed early) stays
    /// as before; pairs that are no longer in the config are dropped.
    #[allow(clippy::cast_precision_loss)] // byte counts beyond 2^53 lose precision; Prometheus stores doubles anyway
    pub fn record(&mut self, run: &RunRecord<'_>) {
        let started = run.started.as_millisecond() as f64 / 1000.0;
        let succeeded = run.report.is_some_and(UpdateReport::succeeded);
        self.set(LAST_RUN, &[], started);
        self.set(LAST_RUN_SUCCESS, &[], if succeeded { 1.0 } else { 0.0 });
        self.set(RUN_DURATION, &[], run.duration.as_secs_f64());
        self.add(UPLOADED, &[], 0.0);
        for kind in KINDS {
            self.add(FAILED, &[("kind", kind)], 0.0);
        }
        if let Some(config) = run.config {
            let pairs: BTreeSet<(String, String)> = config
                .sources
                .iter()
                .flat_map(|source| {
                    source
                        .upload_to_remotes
                        .iter()
                        .map(|upload| (source.path.display().to_string(), upload.remote_id.clone()))
                })
                .collect();
            self.series.retain(|series, _| {
                match (series.label("source"), series.label("remote")) {
                    (Some(source), Some(remote)) => {
                        pairs.contains(&(source.to_owned(), remote.to_owned()))
                    }
                    _ => true,
                }
            });
        }
        let Some(report) = run.report else {
            return;
        };
        if let Some(outcome) = report.outcome() {
            for done in &outcome.results {
                match (&done.action, &done.result) {
                    (Action::Upload(_), ActionResult::Done { bytes: Some(bytes) }) => {
                        self.add(UPLOADED, &[], *bytes as f64);
                    }
                    (action, ActionResult::Failed { .. }) => {
                        self.add(FAILED, &[("kind", kind(action))], 1.0);
                    }
                    _ => {}
                }
            }
        }
        let acted = matches!(
            report.end,
            UpdateEnd::Executed(_) | UpdateEnd::NothingToDo | UpdateEnd::Interrupted(_)
        );
        if let (Some(plan), true) = (&report.plan, acted) {
            self.record_holdings(plan, report);
            let complete = matches!(report.end, UpdateEnd::Executed(_) | UpdateEnd::NothingToDo);
            let incomplete = incomplete_pairs(plan, report);
            for (source, remote) in pairs_of(plan) {
                if complete && !incomplete.contains(&(source.clone(), remote.clone())) {
                    self.set(
                        LAST_SUCCESS,
                        &[("source", &source), ("remote", &remote)],
                        started,
                    );
                }
            }
        }
    }

    /// What each pair of the plan holds after the run: its backups and their bytes by class.
    #[allow(clippy::cast_precision_loss)]
    fn record_holdings(&mut self, plan: &Plan, report: &UpdateReport) {
        let mut uploaded: HashMap<(&str, &str), u64> = HashMap::new();
        let mut deleted: HashSet<(&str, &str)> = HashSet::new();
        for done in report.outcome().map_or(&[][..], |outcome| &outcome.results) {
            let ActionResult::Done { bytes } = done.result else {
                continue;
            };
            match &done.action {
                Action::Upload(upload) => {
                    uploaded.insert((&upload.spec.remote, &upload.spec.key), bytes.unwrap_or(0));
                }
                Action::Delete(delete) => {
                    deleted.insert((&delete.remote, &delete.key));
                }
                _ => {}
            }
        }
        let mut counts: BTreeMap<(String, String), u64> = BTreeMap::new();
        let mut bytes: BTreeMap<(String, String, String), u64> = BTreeMap::new();
        for pair in pairs_of(plan) {
            counts.insert(pair, 0);
        }
        for backup in &plan.backups {
            let id = (backup.remote.as_str(), &*backup.key);
            let size = if backup.new {
                match uploaded.get(&id) {
                    Some(size) => *size,
                    None => continue,
                }
            } else if deleted.contains(&id) {
                continue;
            } else {
                backup.size.unwrap_or(0)
            };
            let source = backup.source.display().to_string();
            *counts
                .entry((source.clone(), backup.remote.clone()))
                .or_default() += 1;
            let class = backup
                .storage_class
                .clone()
                .unwrap_or_else(|| DEFAULT_CLASS.to_owned());
            *bytes
                .entry((source, backup.remote.clone(), class))
                .or_default() += size;
        }
        // The classes a pair no longer uses go.
        self.series.retain(|series, _| {
            series.name != STORED
                || !counts.contains_key(&(
                    series.label("source").unwrap_or_default().to_owned(),
                    series.label("remote").unwrap_or_default().to_owned(),
                ))
        });
        for ((source, remote), count) in counts {
            self.set(
                BACKUPS,
                &[("source", &source), ("remote", &remote)],
                count as f64,
            );
        }
        for ((source, remote, class), size) in bytes {
            self.set(
                STORED,
                &[
                    ("source", &source),
                    ("remote", &remote),
                    ("storage_class", &class),
                ],
                size as f64,
            );
        }
    }

    /// The metrics in the text exposition format.
    #[must_use]
    pub fn render(&self) -> String {
        let mut text = String::new();
        for (name, kind, help) in FAMILIES {
            let series: Vec<_> = self
                .series
                .iter()
                .filter(|(series, _)| series.name == *name)
                .collect();
            if series.is_empty() {
                continue;
            }
            let _ = writeln!(text, "# HELP {name} {help}.");
            let _ = writeln!(text, "# TYPE {name} {kind}");
            for (series, value) in series {
                text.push_str(name);
                if !series.labels.is_empty() {
                    let labels: Vec<String> = series
                        .labels
                        .iter()
                        .map(|(key, value)| format!("{key}=\"{}\"", escape_label(value)))
                        .collect();
                    let _ = write!(text, "{{{}}}", labels.join(","));
                }
                let _ = writeln!(text, " {value}");
            }
        }
        text
    }

    /// Writes the metrics to `path` atomically: into a new file next to it, then renamed
    /// over it (a reader sees the old file or the new one, never a part). The new file is
    /// created exclusively and never through a symlink.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let name = path.file_name().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the metrics path names no file",
            )
        })?;
        let mut temporary_name = std::ffi::OsString::from(".");
        temporary_name.push(name);
        temporary_name.push(format!(".tmp-{}", std::process::id()));
        let temporary: PathBuf = path.with_file_name(temporary_name);
        let _ = std::fs::remove_file(&temporary);
        let written = (|| {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
                .open(&temporary)?;
            file.write_all(self.render().as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&temporary, path)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&temporary);
        }
        written
    }
}

/// The action kind, as labelled.
fn kind(action: &Action) -> &'static str {
    match action {
        Action::AbortUpload(_) => "abort_upload",
        Action::CreateSnapshot(_) => "create_snapshot",
        Action::Rename(_) => "rename",
        Action::Upload(_) => "upload",
        Action::ExtendLock(_) => "extend_lock",
        Action::Destroy(_) => "destroy",
        Action::Delete(_) => "delete",
    }
}

/// The (source, remote) pairs a plan is about.
fn pairs_of(plan: &Plan) -> BTreeSet<(String, String)> {
    plan.backups
        .iter()
        .map(|backup| (backup.source.display().to_string(), backup.remote.clone()))
        .chain(plan.actions.iter().filter_map(|action| match action {
            Action::Upload(upload) => Some((
                upload.spec.source.display().to_string(),
                upload.spec.remote.clone(),
            )),
            _ => None,
        }))
        .collect()
}

/// The pairs some upload, delete or lock extension of which was not done.
fn incomplete_pairs(plan: &Plan, report: &UpdateReport) -> HashSet<(String, String)> {
    let sources: HashMap<(&str, uuid::Uuid), &Path> = plan
        .backups
        .iter()
        .map(|backup| {
            (
                (backup.remote.as_str(), backup.uuid),
                backup.source.as_path(),
            )
        })
        .collect();
    let pair = |action: &Action| -> Option<(String, String)> {
        let (source, remote) = match action {
            Action::Upload(upload) => (upload.spec.source.as_path(), &upload.spec.remote),
            Action::Delete(delete) => (delete.source.as_path(), &delete.remote),
            Action::ExtendLock(extend) => (
                *sources.get(&(extend.remote.as_str(), extend.uuid))?,
                &extend.remote,
            ),
            _ => return None,
        };
        Some((source.display().to_string(), remote.clone()))
    };
    match report.outcome() {
        Some(outcome) => outcome
            .results
            .iter()
            .filter(|done| !done.is_done())
            .filter_map(|done| pair(&done.action))
            .collect(),
        None => plan.actions.iter().filter_map(pair).collect(),
    }
}

fn escape_label(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// One sample line: `name{key="value",...} number` or `name number`.
fn parse_line(line: &str) -> Option<(Series, f64)> {
    let line = line.trim();
    let (head, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let Some((name, rest)) = head.split_once('{') else {
        return Some((Series::new(head, &[]), value));
    };
    let mut labels = Vec::new();
    let mut chars = rest.chars();
    loop {
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
        if chars.next() != Some('"') {
            return None;
        }
        let mut text = String::new();
        loop {
            match chars.next()? {
                '\\' => match chars.next()? {
                    'n' => text.push('\n'),
                    other => text.push(other),
                },
                '"' => break,
                c => text.push(c),
            }
        }
        labels.push((key.trim_start_matches(',').to_owned(), text));
        match chars.next()? {
            ',' => {}
            '}' => break,
            _ => return None,
        }
    }
    Some((
        Series {
            name: name.to_owned(),
            labels,
        },
        value,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cancel::Cancel;
    use crate::execute::Silent;
    use crate::fake::FakeWorld;
    use crate::run::Mode;

    fn config(remotes: &[&str]) -> Config {
        let uploads: Vec<(&str, &str)> = remotes.iter().map(|id| (*id, "1y 1d")).collect();
        crate::fake::config("UTC", &uploads)
    }

    fn world() -> FakeWorld {
        let mut world = FakeWorld::new("UTC", "2026-03-01T10:00:00Z");
        world.add_source("home", 1, &[("aws", "1y 1d"), ("gcs", "1y 1d")]);
        world
    }

    fn run(world: &mut FakeWorld) -> UpdateReport {
        let options = world.options(Mode::Real);
        world.cycle(&options, &Silent, &Cancel::new())
    }

    fn record(metrics: &mut Metrics, config: &Config, report: &UpdateReport, at: &str) {
        metrics.record(&RunRecord {
            started: at.parse().unwrap(),
            duration: Duration::from_millis(2500),
            config: Some(config),
            report: Some(report),
        });
    }

    const HOME_AWS: &[(&str, &str)] = &[("source", "/pool/home"), ("remote", "aws")];
    const HOME_GCS: &[(&str, &str)] = &[("source", "/pool/home"), ("remote", "gcs")];

    #[test]
    fn a_run_that_went_well() {
        let config = config(&["aws", "gcs"]);
        let mut world = world();
        let mut metrics = Metrics::default();
        let report = run(&mut world);
        record(&mut metrics, &config, &report, "2026-03-01T10:00:00Z");
        assert_eq!(metrics.get(LAST_RUN, &[]), Some(1_772_359_200.0));
        assert_eq!(metrics.get(LAST_RUN_SUCCESS, &[]), Some(1.0));
        assert_eq!(metrics.get(RUN_DURATION, &[]), Some(2.5));
        // The fake stores 100 bytes per upload: one full backup to each remote.
        assert_eq!(metrics.get(UPLOADED, &[]), Some(200.0));
        assert_eq!(metrics.get(LAST_SUCCESS, HOME_AWS), Some(1_772_359_200.0));
        assert_eq!(metrics.get(LAST_SUCCESS, HOME_GCS), Some(1_772_359_200.0));
        assert_eq!(metrics.get(BACKUPS, HOME_AWS), Some(1.0));
        let stored = [
            ("source", "/pool/home"),
            ("remote", "aws"),
            ("storage_class", "STANDARD"),
        ];
        assert_eq!(metrics.get(STORED, &stored), Some(100.0));
        assert_eq!(metrics.get(FAILED, &[("kind", "upload")]), Some(0.0));

        // A day later, a change: a differential, and the counters add up.
        world.now = "2026-03-02T10:00:00Z".parse().unwrap();
        world.touch(0);
        let report = run(&mut world);
        record(&mut metrics, &config, &report, "2026-03-02T10:00:00Z");
        assert_eq!(metrics.get(UPLOADED, &[]), Some(400.0));
        assert_eq!(metrics.get(BACKUPS, HOME_AWS), Some(2.0));
        assert_eq!(metrics.get(STORED, &stored), Some(200.0));
        assert_eq!(metrics.get(LAST_SUCCESS, HOME_AWS), Some(1_772_445_600.0));
    }

    #[test]
    fn a_failed_upload_keeps_the_last_success_of_its_pair_only() {
        let config = config(&["aws", "gcs"]);
        let mut world = world();
        let mut metrics = Metrics::default();
        let report = run(&mut world);
        record(&mut metrics, &config, &report, "2026-03-01T10:00:00Z");
        world.now = "2026-03-02T10:00:00Z".parse().unwrap();
        world.touch(0);
        world.failing_remotes.insert("gcs".to_owned());
        let report = run(&mut world);
        record(&mut metrics, &config, &report, "2026-03-02T10:00:00Z");
        assert_eq!(metrics.get(LAST_RUN_SUCCESS, &[]), Some(0.0));
        assert_eq!(metrics.get(LAST_SUCCESS, HOME_AWS), Some(1_772_445_600.0));
        assert_eq!(metrics.get(LAST_SUCCESS, HOME_GCS), Some(1_772_359_200.0));
        assert_eq!(metrics.get(FAILED, &[("kind", "upload")]), Some(1.0));
        assert_eq!(metrics.get(BACKUPS, HOME_GCS), Some(1.0));
        assert_eq!(metrics.get(BACKUPS, HOME_AWS), Some(2.0));
    }

    #[test]
    fn a_run_that_failed_early_keeps_what_it_did_not_see() {
        let mut world = world();
        let mut metrics = Metrics::default();
        let report = run(&mut world);
        record(
            &mut metrics,
            &config(&["aws", "gcs"]),
            &report,
            "2026-03-01T10:00:00Z",
        );
        let failed_early = |config| RunRecord {
            started: "2026-03-02T10:00:00Z".parse().unwrap(),
            duration: Duration::from_secs(1),
            config,
            report: None,
        };
        // The config could not be loaded.
        metrics.record(&failed_early(None));
        assert_eq!(metrics.get(LAST_RUN_SUCCESS, &[]), Some(0.0));
        assert_eq!(metrics.get(LAST_RUN, &[]), Some(1_772_445_600.0));
        assert_eq!(metrics.get(BACKUPS, HOME_GCS), Some(1.0));
        assert_eq!(metrics.get(LAST_SUCCESS, HOME_AWS), Some(1_772_359_200.0));
        // The new config has no gcs pair any more: its series go, the others stay.
        metrics.record(&failed_early(Some(&config(&["aws"]))));
        assert_eq!(metrics.get(BACKUPS, HOME_GCS), None);
        assert_eq!(metrics.get(LAST_SUCCESS, HOME_GCS), None);
        assert_eq!(metrics.get(BACKUPS, HOME_AWS), Some(1.0));
        assert_eq!(metrics.get(LAST_SUCCESS, HOME_AWS), Some(1_772_359_200.0));
    }

    #[test]
    fn the_file_is_replaced_and_read_back() {
        let config = config(&["aws", "gcs"]);
        let mut world = world();
        let mut metrics = Metrics::default();
        record(
            &mut metrics,
            &config,
            &run(&mut world),
            "2026-03-01T10:00:00Z",
        );
        let dir = std::env::temp_dir().join(format!("btrfs2s3-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("btrfs2s3.prom");
        std::fs::write(&path, "old").unwrap();
        metrics.write(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains(
                "# TYPE btrfs2s3_uploaded_bytes_total counter\nbtrfs2s3_uploaded_bytes_total 200\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("btrfs2s3_backups{source=\"/pool/home\",remote=\"aws\"} 1\n"),
            "{text}"
        );
        assert_eq!(Metrics::load(&path), metrics);
        // Only the file itself is left: the temporary one was renamed.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    proptest::proptest! {
        #[test]
        fn labels_survive_rendering_and_parsing(
            source in "[ -~\n]{0,12}",
            value in -1.0e15f64..1.0e15,
        ) {
            let mut metrics = Metrics::default();
            metrics.set(BACKUPS, &[("source", &source), ("remote", "r\"1\\")], value);
            metrics.set(LAST_RUN, &[], value);
            proptest::prop_assert_eq!(Metrics::parse(&metrics.render()), metrics);
        }
    }
}
