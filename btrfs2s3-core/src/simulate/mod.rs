//! `simulate`: what a preservation policy stores, uploads, deletes and costs over the years,
//! before the first upload.
//!
//! Time advances snapshot by snapshot. At every step the source has changed, a snapshot is
//! created as `update` creates one, and the real planner ([`crate::plan::plan`], with the real
//! resolver and storage-class rule) decides what is renamed, uploaded, destroyed and
//! deleted; the simulation carries the plan out on its in-memory source and bucket. Nothing
//! of the policy is re-implemented here: only sizes (a full backup is the source's size, a
//! differential the change accumulated since its send parent's snapshot) and prices.

// Money and averages are floats; the counts converted are bytes and objects far below 2^52.
#![allow(clippy::cast_precision_loss)]

mod prices;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use btrfs2s3_policy::{Params, Timeframe};
use btrfs2s3_s3::{BackupMeta, DEFAULT_MAX_OBJECT_SIZE};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use serde::Serialize;
use uuid::Uuid;

pub use prices::{ClassPrice, PriceError, Prices};

use crate::config::SendProtocol;
use crate::plan::{
    Action, Assessment, BackupState, Origin, PlanError, RemoteState, SnapshotState, SourceState,
    UploadTarget, plan_decisions,
};
use crate::storage::{STANDARD, StorageClasses};

/// Seconds in an average month (a Gregorian year over twelve): the unit of "per month".
const MONTH_SECONDS: f64 = 365.2425 / 12.0 * 86_400.0;
const GB: f64 = 1e9;

/// The timeline every policy is run over.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The time zone policies are evaluated in.
    pub timezone: TimeZone,
    /// The first snapshot's instant.
    pub start: Timestamp,
    /// No snapshot at or after this instant.
    pub end: Timestamp,
    /// The time between snapshots (the source changes all the time).
    pub every: SignedDuration,
    /// The bytes of a full backup.
    pub size: u64,
    /// The bytes that change per day: a differential carries what changed since its send
    /// parent's snapshot, at most `size`.
    pub change_per_day: u64,
}

/// One policy to simulate.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// How it is shown: the policy, or the config's source and remote.
    pub label: String,
    /// The preservation policy.
    pub preserve: Params,
    /// Its storage classes; the price table's default class without.
    pub storage_classes: Option<StorageClasses>,
}

/// What one step did.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepRecord {
    /// Backups uploaded.
    pub uploads: u64,
    /// Bytes uploaded.
    pub bytes_uploaded: u64,
    /// Backups deleted.
    pub deletes: u64,
    /// Requests sent (listing, uploads with their parts, deletes).
    pub requests: u64,
    /// Cost of the requests.
    pub request_cost: f64,
    /// Early-deletion fees of the backups deleted before their class's minimum duration.
    pub early_deletion_cost: f64,
}

/// One policy's timeline in progress: a source and a bucket in memory.
#[derive(Debug)]
pub struct Simulation<'a> {
    scenario: &'a Scenario,
    prices: &'a Prices,
    source: SourceState,
    remote: RemoteState,
    /// When each backup was uploaded (for minimum storage durations).
    uploaded: HashMap<Arc<str>, Timestamp>,
    /// Each snapshot's ctime, for the size of differentials against it.
    ctimes: HashMap<Uuid, Timestamp>,
    next_id: u64,
    now: Timestamp,
}

const REMOTE: &str = "simulated";

impl<'a> Simulation<'a> {
    /// A source without snapshots and an empty bucket, at the scenario's start.
    #[must_use]
    pub fn new(scenario: &'a Scenario, prices: &'a Prices, candidate: &Candidate) -> Self {
        let source = SourceState {
            path: PathBuf::from("/simulated/source"),
            name: "source".to_owned(),
            uuid: Uuid::from_u128(1),
            ctransid: 0,
            ctime: scenario.start,
            snapshot_dir: PathBuf::from("/simulated/.snapshots"),
            snapshots: Vec::new(),
            uploads: vec![UploadTarget {
                remote: REMOTE.to_owned(),
                preserve: candidate.preserve,
                pipe_through: Vec::new(),
                storage_classes: candidate.storage_classes.clone(),
                send_protocol: SendProtocol::default(),
            }],
        };
        let remote = RemoteState {
            id: REMOTE.to_owned(),
            bucket: REMOTE.to_owned(),
            backups: Vec::new(),
            broken: Vec::new(),
            leftovers: Vec::new(),
            max_object_size: DEFAULT_MAX_OBJECT_SIZE,
            foreign_objects: 0,
            pages: 1,
            pending_uploads: Vec::new(),
            object_lock: None,
            lock_enabled: false,
        };
        Simulation {
            scenario,
            prices,
            source,
            remote,
            uploaded: HashMap::new(),
            ctimes: HashMap::new(),
            next_id: 256,
            now: scenario.start,
        }
    }

    /// The backups in the bucket now.
    #[must_use]
    pub fn backups(&self) -> &[BackupState] {
        &self.remote.backups
    }

    /// The snapshots on disk now.
    #[must_use]
    pub fn snapshots(&self) -> &[SnapshotState] {
        &self.source.snapshots
    }

    /// The instant of the last step.
    #[must_use]
    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// One step at `now`: the source changed, a snapshot is created, and the plan of an
    /// `update` at `now` is carried out.
    pub fn step(&mut self, now: Timestamp) -> Result<StepRecord, PlanError> {
        self.now = now;
        self.next_id += 1;
        let id = self.next_id;
        self.source.ctransid += 1;
        self.source.ctime = now;
        let uuid = Uuid::from_u128(u128::from(id) << 64 | 1);
        self.ctimes.insert(uuid, now);
        self.source.snapshots.push(SnapshotState {
            name: format!("{}.NEW.{id}", self.source.name),
            id: Some(id),
            uuid,
            ctime: now,
            ctransid: self.source.ctransid,
            origin: Origin::Created,
        });
        let assessment = Assessment {
            timezone: self.scenario.timezone.clone(),
            timezone_name: String::new(),
            now,
            sources: vec![self.source.clone()],
            remotes: vec![self.remote.clone()],
        };
        let plan = plan_decisions(&assessment)?;
        for snapshot in &mut self.source.snapshots {
            snapshot.origin = Origin::Existing;
        }
        let mut record = StepRecord {
            requests: 1 + self.remote.backups.len() as u64 / 1000,
            ..StepRecord::default()
        };
        record.request_cost = record.requests as f64 * self.prices.list_per_1000 / 1000.0;
        let mut deleted = false;
        for action in &plan.actions {
            match action {
                Action::Rename(rename) => {
                    if let Some(snapshot) = self
                        .source
                        .snapshots
                        .iter_mut()
                        .find(|s| s.id == rename.snapshot.id)
                    {
                        snapshot.name.clone_from(&rename.to);
                    }
                }
                Action::Upload(upload) => self.upload(&upload.spec, &mut record),
                Action::Destroy(destroy) => {
                    self.source
                        .snapshots
                        .retain(|s| s.id != destroy.snapshot.id);
                    self.ctimes.remove(&destroy.snapshot.uuid);
                }
                Action::Delete(delete) => {
                    deleted = true;
                    self.delete(&delete.key, &mut record);
                }
                Action::ExtendLock(extend) => {
                    if let Some(backup) =
                        self.remote.backups.iter_mut().find(|b| b.key == extend.key)
                    {
                        backup.retention = Some(extend.lock);
                    }
                }
                Action::AbortUpload(_) | Action::CreateSnapshot(_) => {}
            }
        }
        if deleted {
            // One DeleteObjects call.
            record.requests += 1;
        }
        Ok(record)
    }

    fn upload(&mut self, spec: &crate::plan::UploadSpec, record: &mut StepRecord) {
        let Ok(meta) = BackupMeta::parse_key(&spec.key) else {
            return;
        };
        let size = match &spec.send_parent {
            None => self.scenario.size,
            Some(parent) => {
                let since = self
                    .ctimes
                    .get(&parent.uuid)
                    .map_or(0.0, |ctime| meta.ctime.duration_since(*ctime).as_secs_f64());
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let changed = (self.scenario.change_per_day as f64 * since / 86_400.0) as u64;
                changed.min(self.scenario.size)
            }
        };
        let class = spec
            .options
            .storage_class
            .clone()
            .unwrap_or_else(|| self.prices.default_class.clone());
        let requests = upload_requests(size);
        record.uploads += 1;
        record.bytes_uploaded += size;
        record.requests += requests;
        record.request_cost += requests as f64 * self.prices.class(&class).put_per_1000 / 1000.0;
        self.uploaded.insert(spec.key.clone(), self.now);
        let backup = BackupState {
            key: spec.key.clone(),
            meta,
            size,
            storage_class: Some(class),
            retention: spec.options.object_lock,
            pieces: Vec::new(),
        };
        match self
            .remote
            .backups
            .binary_search_by(|b| b.key.cmp(&backup.key))
        {
            Ok(at) => self.remote.backups[at] = backup,
            Err(at) => self.remote.backups.insert(at, backup),
        }
    }

    fn delete(&mut self, key: &str, record: &mut StepRecord) {
        let Ok(at) = self.remote.backups.binary_search_by(|b| (*b.key).cmp(key)) else {
            return;
        };
        let backup = self.remote.backups.remove(at);
        record.deletes += 1;
        let class = backup.storage_class.as_deref().unwrap_or(STANDARD);
        let price = self.prices.class(class);
        if let Some(uploaded) = self.uploaded.remove(key) {
            let stayed = self.now.duration_since(uploaded).as_secs_f64();
            let minimum = f64::from(price.min_days) * 86_400.0;
            if stayed < minimum {
                let gb = backup.size as f64 / GB;
                record.early_deletion_cost +=
                    gb * price.storage_gb_month * (minimum - stayed) / MONTH_SECONDS;
            }
        }
    }

    /// Bytes and objects stored now, by storage class.
    #[must_use]
    pub fn stored(&self) -> BTreeMap<String, Stored> {
        let mut stored: BTreeMap<String, Stored> = BTreeMap::new();
        for backup in &self.remote.backups {
            let class = backup.storage_class.as_deref().unwrap_or(STANDARD);
            let entry = stored.entry(class.to_owned()).or_default();
            entry.objects += 1;
            entry.bytes += backup.size;
        }
        stored
    }

    /// The longest restore chain (backups a restore downloads, the backup included), and
    /// the bytes a restore of the newest backup downloads.
    #[must_use]
    pub fn chains(&self) -> (usize, u64) {
        let by_uuid: HashMap<Uuid, &BackupState> = self
            .remote
            .backups
            .iter()
            .map(|b| (b.meta.uuid, b))
            .collect();
        let chain = |backup: &BackupState| {
            let (mut length, mut bytes) = (0, 0);
            let mut current = Some(backup);
            while let Some(b) = current {
                length += 1;
                bytes += b.size;
                current = b
                    .meta
                    .send_parent_uuid
                    .and_then(|parent| by_uuid.get(&parent).copied());
                if length > by_uuid.len() {
                    break;
                }
            }
            (length, bytes)
        };
        let longest = self
            .remote
            .backups
            .iter()
            .map(|b| chain(b).0)
            .max()
            .unwrap_or(0);
        let newest = self
            .remote
            .backups
            .iter()
            .max_by_key(|b| (b.meta.ctime, b.meta.ctransid))
            .map_or(0, |b| chain(b).1);
        (longest, newest)
    }
}

/// Requests of an upload of `size` bytes: one `PutObject` up to a part (8 MiB), else
/// start, parts (growing as btrfs2s3 grows them) and completion.
fn upload_requests(size: u64) -> u64 {
    const PART: u64 = 8 << 20;
    const STEP: u64 = 900;
    if size <= PART {
        return 1;
    }
    let (mut left, mut parts, mut part) = (size, 0u64, PART);
    while left > 0 {
        let tier = (STEP * part).min(left);
        parts += tier.div_ceil(part);
        left -= tier;
        part = (part * 2).min(5 << 30);
    }
    parts + 2
}

/// Objects and bytes of one storage class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Stored {
    /// Objects.
    pub objects: u64,
    /// Bytes.
    pub bytes: u64,
}

/// One day of a policy's timeline: the state at the day's last step, and what the day's
/// steps did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Day {
    /// The date, in the scenario's time zone.
    pub date: String,
    /// Objects stored.
    pub objects: u64,
    /// Bytes stored, by storage class.
    pub bytes_by_class: BTreeMap<String, u64>,
    /// Backups uploaded that day.
    pub uploads: u64,
    /// Backups deleted that day.
    pub deletes: u64,
    /// Bytes uploaded that day.
    pub bytes_uploaded: u64,
    /// What the day cost: storage, requests and early-deletion fees.
    pub cost: f64,
}

/// Dollars (or the price table's currency) per month, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Costs {
    /// Storage.
    pub storage: f64,
    /// Requests.
    pub requests: f64,
    /// Early-deletion fees.
    pub early_deletion: f64,
    /// All of them.
    pub total: f64,
}

/// A policy's figures once its tree is steady.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Steady {
    /// When the steady period starts: one span of the policy's longest unit after the first
    /// snapshot (the start itself when the simulation is shorter than that).
    pub from: Timestamp,
    /// Objects stored, on average.
    pub objects: f64,
    /// Bytes stored, on average.
    pub bytes: f64,
    /// Objects and bytes on average, by storage class.
    pub by_class: BTreeMap<String, (f64, f64)>,
    /// Backups uploaded per month.
    pub uploads_per_month: f64,
    /// Backups deleted per month.
    pub deletes_per_month: f64,
    /// Bytes uploaded per month.
    pub bytes_uploaded_per_month: f64,
    /// The longest restore chain seen (backups one restore downloads).
    pub longest_chain: usize,
    /// The bytes a restore of the newest backup downloads: on average, and at most.
    pub restore_newest_bytes: (f64, u64),
    /// Cost per month.
    pub cost_per_month: Costs,
}

/// The most a policy needed at any time of the simulation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Peak {
    /// Objects.
    pub objects: u64,
    /// Bytes.
    pub bytes: u64,
    /// The dearest calendar month's cost.
    pub cost_per_month: f64,
}

/// What one policy stores, uploads, deletes and costs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    /// The candidate's label.
    pub label: String,
    /// The policy.
    pub preserve: String,
    /// Steps simulated (snapshots taken).
    pub steps: u64,
    /// Once the tree is steady.
    pub steady: Steady,
    /// The peaks.
    pub peak: Peak,
    /// Day by day.
    pub days: Vec<Day>,
}

/// Everything `simulate` found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The first snapshot's instant.
    pub start: Timestamp,
    /// The end of the simulation.
    pub end: Timestamp,
    /// The price table used.
    pub prices: String,
    /// When its prices were taken.
    pub prices_taken: String,
    /// Its currency.
    pub currency: String,
    /// One outcome per candidate, in order.
    pub outcomes: Vec<Outcome>,
}

/// Runs every candidate over the scenario's timeline (side by side on the machine's CPUs).
pub fn simulate(
    scenario: &Scenario,
    candidates: &[Candidate],
    prices: &Prices,
) -> Result<Report, PlanError> {
    // Candidates are independent: one thread each, as many at a time as there are CPUs.
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let mut outcomes = Vec::with_capacity(candidates.len());
    for chunk in candidates.chunks(threads) {
        let results: Vec<Result<Outcome, PlanError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|candidate| scope.spawn(|| run_one(scenario, candidate, prices)))
                .collect();
            handles
                .into_iter()
                .map(|handle| {
                    handle
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect()
        });
        for result in results {
            outcomes.push(result?);
        }
    }
    Ok(Report {
        start: scenario.start,
        end: scenario.end,
        prices: prices.name.clone(),
        prices_taken: prices.taken.clone(),
        currency: prices.currency.clone(),
        outcomes,
    })
}

/// When one span of the policy's longest unit has passed since `start`.
fn steady_from(preserve: &Params, start: Timestamp, tz: &TimeZone) -> Timestamp {
    let Some(longest) = preserve.timeframes().min() else {
        return start;
    };
    let span = match longest {
        Timeframe::Years => jiff::Span::new().years(1),
        Timeframe::Quarters => jiff::Span::new().months(3),
        Timeframe::Months => jiff::Span::new().months(1),
        Timeframe::Weeks => jiff::Span::new().weeks(1),
        Timeframe::Days => jiff::Span::new().days(1),
        Timeframe::Hours => jiff::Span::new().hours(1),
        Timeframe::Minutes => jiff::Span::new().minutes(1),
        Timeframe::Seconds => jiff::Span::new().seconds(1),
    };
    start
        .to_zoned_datetime(tz.clone())
        .checked_add(span)
        .map_or(start, |zoned| zoned.timestamp())
}

/// Sums over a period of steps, for averages.
#[derive(Debug, Default)]
struct Totals {
    seconds: f64,
    /// Integrals over time (value × seconds).
    objects: f64,
    bytes: f64,
    by_class: BTreeMap<String, (f64, f64)>,
    uploads: u64,
    deletes: u64,
    bytes_uploaded: u64,
    storage_cost: f64,
    request_cost: f64,
    early_cost: f64,
    longest_chain: usize,
    restore_bytes: f64,
    restore_max: u64,
}

impl Totals {
    /// One step of the steady period, which lasted `seconds`.
    fn add(
        &mut self,
        seconds: f64,
        stored: &BTreeMap<String, Stored>,
        record: &StepRecord,
        storage_cost: f64,
        (longest, restore): (usize, u64),
    ) {
        self.seconds += seconds;
        for (class, s) in stored {
            self.objects += s.objects as f64 * seconds;
            self.bytes += s.bytes as f64 * seconds;
            let entry = self.by_class.entry(class.clone()).or_default();
            entry.0 += s.objects as f64 * seconds;
            entry.1 += s.bytes as f64 * seconds;
        }
        self.uploads += record.uploads;
        self.deletes += record.deletes;
        self.bytes_uploaded += record.bytes_uploaded;
        self.storage_cost += storage_cost;
        self.request_cost += record.request_cost;
        self.early_cost += record.early_deletion_cost;
        self.longest_chain = self.longest_chain.max(longest);
        self.restore_bytes += restore as f64 * seconds;
        self.restore_max = self.restore_max.max(restore);
    }

    /// The averages of the steady period that started at `from`.
    fn steady(&self, from: Timestamp) -> Steady {
        let per_second = |value: f64| {
            if self.seconds > 0.0 {
                value / self.seconds
            } else {
                0.0
            }
        };
        let per_month = |value: f64| per_second(value) * MONTH_SECONDS;
        Steady {
            from,
            objects: per_second(self.objects),
            bytes: per_second(self.bytes),
            by_class: self
                .by_class
                .iter()
                .map(|(class, (objects, bytes))| {
                    (class.clone(), (per_second(*objects), per_second(*bytes)))
                })
                .collect(),
            uploads_per_month: per_month(self.uploads as f64),
            deletes_per_month: per_month(self.deletes as f64),
            bytes_uploaded_per_month: per_month(self.bytes_uploaded as f64),
            longest_chain: self.longest_chain,
            restore_newest_bytes: (per_second(self.restore_bytes), self.restore_max),
            cost_per_month: Costs {
                storage: per_month(self.storage_cost),
                requests: per_month(self.request_cost),
                early_deletion: per_month(self.early_cost),
                total: per_month(self.storage_cost + self.request_cost + self.early_cost),
            },
        }
    }
}

fn run_one(
    scenario: &Scenario,
    candidate: &Candidate,
    prices: &Prices,
) -> Result<Outcome, PlanError> {
    let tz = &scenario.timezone;
    let steady_start = steady_from(&candidate.preserve, scenario.start, tz);
    let steady_start = if steady_start < scenario.end {
        steady_start
    } else {
        scenario.start
    };
    let mut simulation = Simulation::new(scenario, prices, candidate);
    let mut totals = Totals::default();
    let mut days: Vec<Day> = Vec::new();
    let mut months: BTreeMap<(i16, i8), f64> = BTreeMap::new();
    let mut peak = Peak {
        objects: 0,
        bytes: 0,
        cost_per_month: 0.0,
    };
    let mut steps = 0;
    let mut now = scenario.start;
    while now < scenario.end {
        let record = simulation.step(now)?;
        steps += 1;
        let next = now
            .checked_add(scenario.every)
            .unwrap_or(scenario.end)
            .min(scenario.end);
        let seconds = next.duration_since(now).as_secs_f64();
        let stored = simulation.stored();
        let objects: u64 = stored.values().map(|s| s.objects).sum();
        let bytes: u64 = stored.values().map(|s| s.bytes).sum();
        let storage_cost: f64 = stored
            .iter()
            .map(|(class, s)| {
                s.bytes as f64 / GB * prices.class(class).storage_gb_month * seconds / MONTH_SECONDS
            })
            .sum();
        let cost = storage_cost + record.request_cost + record.early_deletion_cost;
        peak.objects = peak.objects.max(objects);
        peak.bytes = peak.bytes.max(bytes);
        let local = now.to_zoned_datetime(tz.clone());
        *months.entry((local.year(), local.month())).or_default() += cost;
        let date = local.date().to_string();
        if days.last().is_none_or(|day| day.date != date) {
            days.push(Day {
                date,
                objects: 0,
                bytes_by_class: BTreeMap::new(),
                uploads: 0,
                deletes: 0,
                bytes_uploaded: 0,
                cost: 0.0,
            });
        }
        if let Some(day) = days.last_mut() {
            day.objects = objects;
            day.bytes_by_class = stored.iter().map(|(c, s)| (c.clone(), s.bytes)).collect();
            day.uploads += record.uploads;
            day.deletes += record.deletes;
            day.bytes_uploaded += record.bytes_uploaded;
            day.cost += cost;
        }
        if now >= steady_start {
            totals.add(seconds, &stored, &record, storage_cost, simulation.chains());
        }
        now = next;
    }
    // A month only partly simulated is not a month's cost.
    let whole_months: Vec<f64> = if months.len() > 2 {
        months
            .values()
            .skip(1)
            .take(months.len() - 2)
            .copied()
            .collect()
    } else {
        months.values().copied().collect()
    };
    peak.cost_per_month = whole_months.into_iter().fold(0.0, f64::max);
    let steady = totals.steady(steady_start);
    Ok(Outcome {
        label: candidate.label.clone(),
        preserve: candidate.preserve.to_string(),
        steps,
        steady,
        peak,
        days,
    })
}

#[cfg(test)]
mod tests;
