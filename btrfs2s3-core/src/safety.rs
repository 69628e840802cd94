//! The safety properties over generated histories: runs of `update` on the in-memory world,
//! with time passing, sources changing, uploads failing, runs crashing part-way, and users
//! meddling (deleting snapshots and backups, adding their own objects and snapshots, renaming
//! snapshots). After every run:
//!
//! 1. no object whose key is not a backup key was deleted;
//! 2. no backup whose send parent was in the bucket lost that parent (deletes never break a
//!    chain);
//! 3. no snapshot was destroyed before an upload that uses it succeeded;
//! 4. a run that went well leaves nothing to do: planning its outcome plans nothing.
//!
//! The number of histories is `BTRFS2S3_SAFETY_HISTORIES` (default 2,000; `cargo xtask test`
//! runs 100,000 in a release build).

use std::collections::{BTreeMap, BTreeSet};

use btrfs2s3_s3::BackupMeta;
use jiff::SignedDuration;
use proptest::prelude::*;
use tokio_util::sync::CancellationToken;

use crate::execute::{ActionResult, Silent, execute};
use crate::fake::FakeWorld;
use crate::plan::{Action, plan};

/// Something that happens between or during runs.
#[derive(Debug, Clone)]
enum Event {
    /// Time passes.
    Wait(SignedDuration),
    /// A source changes.
    Change(usize),
    /// `update` runs; uploads of these remotes fail; it crashes after that many operations.
    Run {
        failing_remote: Option<usize>,
        crash_after: Option<usize>,
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
        5 => (proptest::option::weighted(0.15, 0..2usize), proptest::option::weighted(0.15, 0..6usize))
            .prop_map(|(failing_remote, crash_after)| Event::Run { failing_remote, crash_after }),
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

/// A world with two sources: the first backed up to both remotes, the second to one.
fn world(zone: &str, policies: [&str; 3]) -> FakeWorld {
    let mut world = FakeWorld::new(zone, "2026-01-05T10:00:00Z");
    world.add_source(
        "home",
        1,
        &[(REMOTES[0], policies[0]), (REMOTES[1], policies[1])],
    );
    world.add_source("media", 2, &[(REMOTES[1], policies[2])]);
    world
}

fn all_snapshots(world: &FakeWorld) -> Vec<(std::path::PathBuf, u64)> {
    world
        .snapshots
        .iter()
        .flat_map(|(dir, snapshots)| snapshots.keys().map(move |id| (dir.clone(), *id)))
        .collect()
}

/// One run with its checks. Returns an error message when a property fails.
fn run(
    world: &mut FakeWorld,
    failing_remote: Option<usize>,
    crash_after: Option<usize>,
) -> Result<(), String> {
    world.take_snapshots();
    let before = world.objects.clone();
    let planned = plan(&world.assessment()).map_err(|e| e.to_string())?;
    let failing: BTreeSet<String> = planned
        .actions
        .iter()
        .filter_map(|action| match action {
            Action::Upload { remote, key, .. }
                if failing_remote.is_some_and(|r| REMOTES[r] == remote) =>
            {
                Some(key.to_string())
            }
            _ => None,
        })
        .collect();
    world.failing_keys.clone_from(&failing);
    world.crash_after = crash_after;
    world.log.clear();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| e.to_string())?;
    let outcome = runtime.block_on(execute(&planned, world, &Silent, &CancellationToken::new()));
    world.failing_keys.clear();
    world.crash_after = None;

    // 1. Foreign objects are never deleted.
    for (remote, objects) in &before {
        for key in objects
            .keys()
            .filter(|key| BackupMeta::parse_key(key).is_err())
        {
            if !world.objects[remote].contains_key(key) {
                return Err(format!("foreign object {key} deleted from {remote}"));
            }
        }
    }
    // 2. Deletes never take a backup's send parent away.
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
    // 3. No snapshot was destroyed before an upload using it succeeded.
    let mut uploaded: BTreeSet<String> = BTreeSet::new();
    for (action, result) in &outcome.results {
        match (action, result) {
            (Action::Upload { key, .. }, ActionResult::Done { .. }) => {
                uploaded.insert(key.to_string());
            }
            (Action::Destroy { snapshot }, ActionResult::Done { .. }) => {
                for (other, _) in &outcome.results {
                    if let Action::Upload {
                        key,
                        snapshot: sent,
                        send_parent,
                        ..
                    } = other
                    {
                        let uses = sent.uuid == snapshot.uuid
                            || send_parent
                                .as_ref()
                                .is_some_and(|p| p.uuid == snapshot.uuid);
                        if uses && !uploaded.contains(&**key) {
                            return Err(format!(
                                "{} destroyed while the upload of {key} needs it",
                                snapshot.name
                            ));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    // 4. A run that went well leaves nothing to do.
    if outcome.succeeded() {
        world.take_snapshots();
        let again = plan(&world.assessment()).map_err(|e| e.to_string())?;
        if again.has_work() {
            return Err(format!("a successful run left work: {:?}", again.actions));
        }
    }
    Ok(())
}

fn apply(world: &mut FakeWorld, event: &Event) -> Result<(), String> {
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
        } => run(world, *failing_remote, *crash_after)?,
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
        if let Err(message) = run(&mut world, None, None) {
            prop_assert!(false, "the final run: {message}");
        }
    }
}

/// The properties hold in the plans too: the planner never plans a delete of a backup that a
/// kept backup depends on (`plan` refuses such a plan, so every plan above was checked), and
/// the counts of what the histories exercised are not trivial.
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
            if let Event::Run { .. } = event {
                world.take_snapshots();
                if let Ok(planned) = plan(&world.assessment()) {
                    for action in &planned.actions {
                        let kind = match action {
                            Action::AbortUpload { .. } => "abort",
                            Action::CreateSnapshot { .. } => "create",
                            Action::Rename { .. } => "rename",
                            Action::Upload {
                                send_parent: None, ..
                            } => "full upload",
                            Action::Upload { .. } => "differential upload",
                            Action::Destroy { .. } => "destroy",
                            Action::Delete { .. } => "delete",
                        };
                        *seen.entry(kind).or_default() += 1;
                    }
                }
            }
            let _ = apply(&mut world, &event);
        }
    }
    for kind in [
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
