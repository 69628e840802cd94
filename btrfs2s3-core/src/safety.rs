//! The safety properties over generated histories: runs of `update` — the real
//! [`crate::run::cycle`], snapshot rule, planner, executor and interruption cleanup — on the
//! in-memory world, with time passing, sources changing, uploads failing, runs crashing or
//! interrupted part-way, and users meddling (deleting snapshots and backups, adding their own
//! objects and snapshots, renaming snapshots). After every run:
//!
//! 1. no object whose key is not a backup key was deleted;
//! 2. no backup whose send parent was in the bucket lost that parent (deletes never break a
//!    chain);
//! 3. no snapshot was destroyed before an upload that uses it succeeded;
//! 4. a run that went well leaves nothing to do: planning its outcome plans nothing;
//! 5. an interrupted run leaves none of the snapshots it created but those it uploaded;
//! 6. in the remote with object lock, no run deletes a locked backup or shortens a lock, and
//!    after a run that went well every kept backup is locked until its keep-until and the
//!    margin;
//! 7. a daemon's cached listing, updated by its runs' actions, is what a new listing would
//!    say, however the runs ended (when nobody else changed the bucket).
//!
//! The number of histories is `BTRFS2S3_SAFETY_HISTORIES` (default 2,000; `cargo xtask test`
//! runs 100,000 in a release build).

use std::collections::{BTreeMap, BTreeSet};

use btrfs2s3_s3::BackupMeta;
use jiff::SignedDuration;
use proptest::prelude::*;

use crate::cache::ListingCache;
use crate::cancel::Cancel;
use crate::execute::{ActionResult, Outcome, Silent};
use crate::fake::FakeWorld;
use crate::plan::{Action, Origin, Plan};
use crate::run::{Mode, UpdateEnd, UpdateReport};
use crate::storage::LockSettings;
use btrfs2s3_s3::LockMode;

/// Something that happens between or during runs.
#[derive(Debug, Clone)]
enum Event {
    /// Time passes.
    Wait(SignedDuration),
    /// A source changes.
    Change(usize),
    /// `update` runs; uploads to this remote fail; it crashes, or is interrupted, after
    /// that many operations.
    Run {
        failing_remote: Option<usize>,
        crash_after: Option<usize>,
        interrupt_after: Option<usize>,
    },
    /// A user deletes a snapshot (the n-th).
    DeleteSnapshot(prop::sample::Index),
    /// A user deletes an object (the n-th of a remote).
    DeleteObject(usize, prop::sample::Index),
    /// A user puts an object of their own.
    PutForeign(usize, u8),
    /// A user renames a snapshot.
    RenameSnapshot(prop::sample::Index),
    /// A user takes a read-only snapshot of a source by hand.
    ManualSnapshot(usize),
}

fn event() -> impl Strategy<Value = Event> {
    let wait = prop::sample::select(vec![
        SignedDuration::from_mins(1),
        SignedDuration::from_hours(1),
        SignedDuration::from_hours(7),
        SignedDuration::from_hours(24),
        SignedDuration::from_hours(24 * 9),
        SignedDuration::from_hours(24 * 40),
        SignedDuration::from_hours(24 * 400),
    ]);
    prop_oneof![
        4 => wait.prop_map(Event::Wait),
        4 => (0..2usize).prop_map(Event::Change),
        5 => (
            proptest::option::weighted(0.15, 0..2usize),
            proptest::option::weighted(0.15, 0..6usize),
            proptest::option::weighted(0.1, 0..6usize),
        )
            .prop_map(|(failing_remote, crash_after, interrupt_after)| Event::Run {
                failing_remote,
                crash_after,
                interrupt_after,
            }),
        1 => any::<prop::sample::Index>().prop_map(Event::DeleteSnapshot),
        1 => (0..2usize, any::<prop::sample::Index>()).prop_map(|(r, i)| Event::DeleteObject(r, i)),
        1 => (0..2usize, any::<u8>()).prop_map(|(r, n)| Event::PutForeign(r, n)),
        1 => any::<prop::sample::Index>().prop_map(Event::RenameSnapshot),
        1 => (0..2usize).prop_map(Event::ManualSnapshot),
    ]
}

const ZONES: &[&str] = &[
    "UTC",
    "Europe/Berlin",
    "America/St_Johns",
    "Australia/Lord_Howe",
];
const POLICIES: &[&str] = &[
    "1y",
    "1y 1m 1d",
    "2q 2w 3d 24h",
    "1y 3m 30d 24h",
    "0y 1d",
    "1d 24h 60M",
];
const REMOTES: [&str; 2] = ["aws", "gcs"];

/// The object lock of the second remote.
const LOCK: LockSettings = LockSettings {
    mode: LockMode::Governance,
    extra: SignedDuration::from_hours(30),
};

/// A world with two sources: the first backed up to both remotes, the second to one. The
/// second remote locks its backups.
fn world(zone: &str, policies: [&str; 3]) -> FakeWorld {
    let mut world = FakeWorld::new(zone, "2026-01-05T10:00:00Z");
    world.add_source(
        "home",
        1,
        &[(REMOTES[0], policies[0]), (REMOTES[1], policies[1])],
    );
    world.add_source("media", 2, &[(REMOTES[1], policies[2])]);
    world.locks.insert(REMOTES[1].to_owned(), LOCK);
    // Upload streams interleave (two at a time, as `parallel_uploads` defaults to).
    world.yields_per_stream = 2;
    world
}

fn all_snapshots(world: &FakeWorld) -> Vec<(std::path::PathBuf, u64)> {
    world
        .snapshots
        .iter()
        .flat_map(|(dir, snapshots)| snapshots.keys().map(move |id| (dir.clone(), *id)))
        .collect()
}

/// Runs the real `update` cycle on the fake world.
fn cycle_on(world: &mut FakeWorld, mode: Mode, cancel: &Cancel) -> UpdateReport {
    let options = world.options(mode);
    world.cycle(&options, &Silent, cancel)
}

/// Sets up the failures of a run: uploads to a remote fail; the world crashes, or the run
/// is interrupted, after that many operations. Returns the run's cancellation.
fn arm(
    world: &mut FakeWorld,
    failing_remote: Option<usize>,
    crash_after: Option<usize>,
    interrupt_after: Option<usize>,
) -> Cancel {
    let cancel = Cancel::new();
    world.failing_remotes = failing_remote
        .map(|r| REMOTES[r].to_owned())
        .into_iter()
        .collect();
    world.crash_after = crash_after;
    world.interrupt_after = interrupt_after.map(|n| (n, cancel.clone()));
    cancel
}

/// The run is over: the world works again.
fn disarm(world: &mut FakeWorld) {
    world.failing_remotes.clear();
    world.crash_after = None;
    world.interrupt_after = None;
}

/// One run with its checks; returns its report. An error is the message of a property that
/// failed.
fn run(
    world: &mut FakeWorld,
    failing_remote: Option<usize>,
    crash_after: Option<usize>,
    interrupt_after: Option<usize>,
) -> Result<UpdateReport, String> {
    let before = world.objects.clone();
    let cancel = arm(world, failing_remote, crash_after, interrupt_after);
    world.log.clear();
    let report = cycle_on(world, Mode::Real, &cancel);
    disarm(world);
    let empty = Outcome {
        results: Vec::new(),
    };
    let outcome = match &report.end {
        UpdateEnd::Executed(outcome) => outcome,
        UpdateEnd::Interrupted(interruption) => interruption.outcome.as_ref().unwrap_or(&empty),
        _ => &empty,
    };

    no_foreign_object_deleted(&before, world)?;
    no_chain_broken(&before, world)?;
    no_snapshot_destroyed_too_early(outcome)?;
    if !world.lock_violations.is_empty() {
        return Err(format!("locks not respected: {:?}", world.lock_violations));
    }
    if matches!(&report.end, UpdateEnd::Executed(outcome) if outcome.succeeded()) {
        if let Some(plan) = &report.plan {
            kept_backups_are_locked(world, plan)?;
        }
        nothing_left_to_do(world)?;
    }
    if let (UpdateEnd::Interrupted(interruption), Some(plan)) = (&report.end, &report.plan)
        && interruption.failures.is_empty()
    {
        no_new_snapshot_left(world, plan, outcome)?;
    }
    Ok(report)
}

type Objects = BTreeMap<String, BTreeMap<String, u64>>;

/// 1. Foreign objects are never deleted.
fn no_foreign_object_deleted(before: &Objects, world: &FakeWorld) -> Result<(), String> {
    for (remote, objects) in before {
        for key in objects
            .keys()
            .filter(|key| BackupMeta::parse_key(key).is_err())
        {
            if !world.objects[remote].contains_key(key) {
                return Err(format!("foreign object {key} deleted from {remote}"));
            }
        }
    }
    Ok(())
}

/// 2. Deletes never take a backup's send parent away.
fn no_chain_broken(before: &Objects, world: &FakeWorld) -> Result<(), String> {
    for (remote, objects) in &world.objects {
        let uuids: BTreeSet<_> = objects
            .keys()
            .filter_map(|k| BackupMeta::parse_key(k).ok())
            .map(|m| m.uuid)
            .collect();
        let uuids_before: BTreeSet<_> = before[remote]
            .keys()
            .filter_map(|k| BackupMeta::parse_key(k).ok())
            .map(|m| m.uuid)
            .collect();
        for key in objects.keys() {
            let Ok(meta) = BackupMeta::parse_key(key) else {
                continue;
            };
            if let Some(parent) = meta.send_parent_uuid
                && uuids_before.contains(&parent)
                && !uuids.contains(&parent)
            {
                return Err(format!("{key} in {remote} lost its send parent {parent}"));
            }
        }
    }
    Ok(())
}

/// 3. No snapshot was destroyed before an upload using it succeeded.
fn no_snapshot_destroyed_too_early(outcome: &Outcome) -> Result<(), String> {
    let mut uploaded: BTreeSet<String> = BTreeSet::new();
    for done in &outcome.results {
        match (&done.action, &done.result) {
            (Action::Upload(upload), ActionResult::Done { .. }) => {
                uploaded.insert(upload.spec.key.to_string());
            }
            (Action::Destroy(destroy), ActionResult::Done { .. }) => {
                for other in &outcome.results {
                    if let Action::Upload(upload) = &other.action {
                        let spec = &upload.spec;
                        let uses = spec.snapshot.uuid == destroy.snapshot.uuid
                            || spec
                                .send_parent
                                .as_ref()
                                .is_some_and(|p| p.uuid == destroy.snapshot.uuid);
                        if uses && !uploaded.contains(&*spec.key) {
                            return Err(format!(
                                "{} destroyed while the upload of {} needs it",
                                destroy.snapshot.name, spec.key
                            ));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// After a run that went well, every backup the locked remote keeps is locked until its
/// keep-until and the margin (property 6).
fn kept_backups_are_locked(world: &FakeWorld, plan: &Plan) -> Result<(), String> {
    for backup in plan.backups.iter().filter(|b| b.remote == REMOTES[1]) {
        let (Some(_), Some(keep_until)) = (&backup.keep, backup.keep_until) else {
            continue;
        };
        let wanted = LOCK.lock_for(keep_until).retain_until;
        let has = world
            .retentions
            .get(&(backup.remote.clone(), backup.key.to_string()))
            .map(|lock| lock.retain_until);
        if has.is_none_or(|has| has < wanted) {
            return Err(format!(
                "{} is kept until {keep_until} but locked until {has:?}",
                backup.key
            ));
        }
    }
    Ok(())
}

/// 4. A run that went well leaves nothing to do, not even a snapshot to take.
fn nothing_left_to_do(world: &mut FakeWorld) -> Result<(), String> {
    let again = cycle_on(world, Mode::Pretend, &Cancel::new());
    match (&again.plan, &again.end) {
        (Some(plan), UpdateEnd::Shown) if plan.actions.is_empty() => Ok(()),
        (plan, end) => Err(format!(
            "a successful run left work: {end:?} {:?}",
            plan.as_ref().map(|plan| &plan.actions)
        )),
    }
}

/// 5. An interrupted run removes the snapshots it created, unless it uploaded them.
fn no_new_snapshot_left(world: &FakeWorld, plan: &Plan, outcome: &Outcome) -> Result<(), String> {
    for snapshot in plan
        .snapshots
        .iter()
        .filter(|s| s.origin == Origin::Created)
    {
        let uploaded = outcome.any_done(|action| {
            matches!(action, Action::Upload(upload) if upload.spec.snapshot.uuid == snapshot.uuid)
        });
        let still_there = snapshot.id.is_some_and(|id| {
            world
                .snapshots
                .get(&snapshot.directory)
                .is_some_and(|snapshots| snapshots.contains_key(&id))
        });
        if still_there != uploaded {
            return Err(format!(
                "an interrupted run left {} (uploaded: {uploaded}, there: {still_there})",
                snapshot.name
            ));
        }
    }
    Ok(())
}

/// Applies `event`; returns the report of a run.
fn apply(world: &mut FakeWorld, event: &Event) -> Result<Option<UpdateReport>, String> {
    match event {
        Event::Wait(duration) => {
            world.now = world
                .now
                .checked_add(*duration)
                .map_err(|e| e.to_string())?;
        }
        Event::Change(source) => world.touch(*source),
        Event::Run {
            failing_remote,
            crash_after,
            interrupt_after,
        } => return run(world, *failing_remote, *crash_after, *interrupt_after).map(Some),
        Event::DeleteSnapshot(index) => {
            let all = all_snapshots(world);
            if !all.is_empty() {
                let (dir, id) = &all[index.index(all.len())];
                if let Some(snapshots) = world.snapshots.get_mut(dir) {
                    snapshots.remove(id);
                }
            }
        }
        Event::DeleteObject(remote, index) => {
            if let Some(objects) = world.objects.get_mut(REMOTES[*remote]) {
                let keys: Vec<String> = objects.keys().cloned().collect();
                if !keys.is_empty() {
                    objects.remove(&keys[index.index(keys.len())]);
                }
            }
        }
        Event::PutForeign(remote, n) => {
            world
                .objects
                .entry(REMOTES[*remote].to_owned())
                .or_default()
                .insert(format!("mine/notes-{n}.txt"), 1);
        }
        Event::RenameSnapshot(index) => {
            let all = all_snapshots(world);
            if !all.is_empty() {
                let (dir, id) = all[index.index(all.len())].clone();
                if let Some(snapshot) = world.snapshots.get_mut(&dir).and_then(|s| s.get_mut(&id)) {
                    snapshot.name = format!("renamed-by-hand-{id}");
                }
            }
        }
        Event::ManualSnapshot(source) => {
            world.next_id += 1;
            let id = world.next_id;
            let now = world.now.to_string();
            let ctransid = world.source_ctransid[*source];
            world.add_snapshot(*source, &format!("manual-{id}"), id, &now, ctransid);
        }
    }
    Ok(None)
}

/// A run on the listings `cache` remembers (the others listed and remembered), then the
/// cache updated as the daemon does; property 7 checked.
fn run_cached(
    world: &mut FakeWorld,
    cache: &mut ListingCache,
    failing_remote: Option<usize>,
    crash_after: Option<usize>,
    interrupt_after: Option<usize>,
) -> Result<(), String> {
    let cancel = arm(world, failing_remote, crash_after, interrupt_after);
    let mut assessment = world.assessment();
    for remote in &mut assessment.remotes {
        match cache.get(&remote.id) {
            Some((cached, _)) => *remote = cached.clone(),
            None => cache.store(remote.clone(), None, world.now),
        }
    }
    let options = world.options(Mode::Real);
    let report = world.cycle_from(assessment, &options, &Silent, &cancel);
    disarm(world);
    if let Some(outcome) = report.outcome() {
        cache.record(outcome);
    }
    let listed = world.assessment();
    for fresh in &listed.remotes {
        let Some((cached, _)) = cache.get(&fresh.id) else {
            continue;
        };
        if cached.backups != fresh.backups
            || cached.pending_uploads != fresh.pending_uploads
            || cached.foreign_objects != fresh.foreign_objects
        {
            return Err(format!(
                "the cache of {} is not what a listing says after {:?}:\ncached {:?}\nlisted {:?}",
                fresh.id, report.end, cached.backups, fresh.backups
            ));
        }
    }
    Ok(())
}

fn histories() -> u32 {
    std::env::var("BTRFS2S3_SAFETY_HISTORIES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2_000)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: histories(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn no_history_breaks_the_safety_properties(
        zone in prop::sample::select(ZONES),
        policies in [prop::sample::select(POLICIES), prop::sample::select(POLICIES), prop::sample::select(POLICIES)],
        events in proptest::collection::vec(event(), 1..24),
    ) {
        let mut world = world(zone, policies);
        for (n, event) in events.iter().enumerate() {
            if let Err(message) = apply(&mut world, event) {
                prop_assert!(false, "after event {n} ({event:?}) at {}: {message}", world.now);
            }
        }
        // And however it went, a final quiet run repairs everything.
        if let Err(message) = run(&mut world, None, None, None) {
            prop_assert!(false, "the final run: {message}");
        }
    }

    #[test]
    fn a_cached_listing_is_what_a_new_listing_says(
        zone in prop::sample::select(ZONES),
        policies in [prop::sample::select(POLICIES), prop::sample::select(POLICIES), prop::sample::select(POLICIES)],
        events in proptest::collection::vec(event(), 1..24),
    ) {
        let mut world = world(zone, policies);
        let mut cache = ListingCache::new();
        for (n, event) in events.iter().enumerate() {
            let result = match event {
                Event::Run { failing_remote, crash_after, interrupt_after } => {
                    run_cached(&mut world, &mut cache, *failing_remote, *crash_after, *interrupt_after)
                }
                other => {
                    // Someone else changed the bucket: the daemon would not know until it
                    // lists again; here it lists again at once.
                    if matches!(other, Event::DeleteObject(..) | Event::PutForeign(..)) {
                        cache.clear();
                    }
                    apply(&mut world, other).map(|_| ())
                }
            };
            if let Err(message) = result {
                prop_assert!(false, "after event {n} ({event:?}) at {}: {message}", world.now);
            }
        }
    }
}

/// The properties hold in the plans too: the planner never plans a delete of a backup that a
/// kept backup depends on (`plan` refuses such a plan, so every plan above was checked), and
/// the histories exercise every kind of action and every way a run ends.
#[test]
fn the_histories_exercise_every_kind_of_action() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut seen: BTreeMap<&'static str, usize> = BTreeMap::new();
    for _ in 0..300 {
        let events = proptest::strategy::ValueTree::current(
            &proptest::collection::vec(event(), 1..24)
                .new_tree(&mut runner)
                .expect("a history"),
        );
        let mut world = world("Europe/Berlin", ["1y 1m 1d", "2q 2w 3d 24h", "1d 24h 60M"]);
        for event in events {
            let Ok(Some(report)) = apply(&mut world, &event) else {
                continue;
            };
            if let UpdateEnd::Interrupted(interruption) = &report.end {
                *seen.entry("interrupted").or_default() += 1;
                if interruption.removed > 0 {
                    *seen.entry("new snapshot removed").or_default() += 1;
                }
            }
            let Some(planned) = report.plan else {
                continue;
            };
            for action in &planned.actions {
                let kind = match action {
                    Action::AbortUpload(_) => "abort",
                    Action::CreateSnapshot(_) => "create",
                    Action::Rename(_) => "rename",
                    Action::Upload(upload) if upload.spec.send_parent.is_none() => "full upload",
                    Action::Upload(_) => "differential upload",
                    Action::ExtendLock(_) => "lock extension",
                    Action::Destroy(_) => "destroy",
                    Action::Delete(_) => "delete",
                };
                *seen.entry(kind).or_default() += 1;
            }
            if planned
                .snapshots
                .iter()
                .any(|s| s.origin == Origin::Created)
            {
                *seen.entry("new snapshot").or_default() += 1;
            }
            *seen.entry("unkept but held").or_default() += planned
                .backups
                .iter()
                .filter(|b| b.held_until.is_some())
                .count();
        }
    }
    for kind in [
        "unkept but held",
        "lock extension",
        "interrupted",
        "new snapshot removed",
        "new snapshot",
        "rename",
        "full upload",
        "differential upload",
        "destroy",
        "delete",
    ] {
        assert!(
            seen.get(kind).copied().unwrap_or(0) > 20,
            "{kind}: {seen:?}"
        );
    }
}
