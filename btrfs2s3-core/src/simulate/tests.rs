use std::collections::BTreeSet;

use proptest::prelude::*;

use super::*;
use crate::cancel::Cancel;
use crate::execute::Silent;
use crate::fake::FakeWorld;
use crate::plan::plan;
use crate::run::Mode;

const GIB: u64 = 1 << 30;

fn scenario(zone: &str, start: &str, end: &str, every_minutes: i64) -> Scenario {
    Scenario {
        timezone: TimeZone::get(zone).unwrap(),
        start: start.parse().unwrap(),
        end: end.parse().unwrap(),
        every: SignedDuration::from_mins(every_minutes),
        size: 100 * GIB,
        change_per_day: 24 * GIB,
    }
}

fn candidate(preserve: &str) -> Candidate {
    Candidate {
        label: preserve.to_owned(),
        preserve: preserve.parse().unwrap(),
        storage_classes: None,
    }
}

/// Steps hourly through one day, from 00:00 to 23:00: the state just before midnight.
fn one_day(preserve: &str) -> Vec<(u64, u64)> {
    let scenario = scenario("UTC", "2026-03-08T00:00:00Z", "2026-03-09T00:00:00Z", 60);
    let prices = Prices::load("aws").unwrap();
    let mut simulation = Simulation::new(&scenario, &prices, &candidate(preserve));
    let mut now = scenario.start;
    while now < scenario.end {
        simulation.step(now).unwrap();
        now = now.checked_add(scenario.every).unwrap();
    }
    let mut backups: Vec<(u64, u64)> = simulation
        .backups()
        .iter()
        .map(|b| (b.size / GIB, u64::from(b.meta.send_parent_uuid.is_some())))
        .collect();
    backups.sort_unstable();
    backups
}

/// The Python tool's README works out a source of 100 GB of which 1 GB changes per hour,
/// with hourly backups for a day: `24h` stores 24 full backups (2400 GB); `1d 24h` one full
/// backup and hourly differentials against it (the README counts 1 to 24 GB, 400 GB in
/// all; at 23:00 the day's differentials are the 23 of 1 to 23 GB: 376 GB).
#[test]
fn the_python_tools_worked_example() {
    let hourly = one_day("24h");
    assert_eq!(hourly.len(), 24);
    assert!(hourly.iter().all(|(gib, diff)| *gib == 100 && *diff == 0));
    assert_eq!(hourly.iter().map(|(gib, _)| gib).sum::<u64>(), 2400);

    let tree = one_day("1d 24h");
    assert_eq!(tree.len(), 24);
    assert_eq!(tree.iter().filter(|(_, diff)| *diff == 0).count(), 1);
    let differentials: Vec<u64> = tree
        .iter()
        .filter(|(_, diff)| *diff == 1)
        .map(|(gib, _)| *gib)
        .collect();
    assert_eq!(differentials, (1..=23).collect::<Vec<_>>());
    assert_eq!(tree.iter().map(|(gib, _)| gib).sum::<u64>(), 376);
}

/// The same timeline through the fake world (the real `update` cycle: snapshot, plan,
/// execute) leaves, step by step, the backups the simulation has.
#[test]
fn the_simulation_keeps_what_update_keeps_step_by_step() {
    for (preserve, zone, every) in [
        ("1y 3m 30d 24h", "Europe/Berlin", 60 * 7),
        ("2y 12m 7d", "America/New_York", 60 * 11),
        ("1m 2w 3d 4h 5M", "UTC", 17),
    ] {
        let scenario = scenario(zone, "2026-10-20T00:00:00Z", "2026-11-10T00:00:00Z", every);
        let prices = Prices::load("aws").unwrap();
        let mut simulation = Simulation::new(&scenario, &prices, &candidate(preserve));
        let mut world = FakeWorld::new(zone, "2026-10-20T00:00:00Z");
        world.add_source("source", 1, &[("aws", preserve)]);
        let mut now = scenario.start;
        let mut steps = 0;
        while now < scenario.end {
            simulation.step(now).unwrap();
            world.now = now;
            world.touch(0);
            let options = world.options(Mode::Real);
            world.cycle(&options, &Silent, &Cancel::new());
            // Keys differ in uuids and ctransids; the ctimes and the tree say the same.
            let ours: BTreeSet<(Timestamp, bool)> = simulation
                .backups()
                .iter()
                .map(|b| (b.meta.ctime, b.meta.send_parent_uuid.is_some()))
                .collect();
            let fake: BTreeSet<(Timestamp, bool)> = world.objects["aws"]
                .keys()
                .map(|key| {
                    let meta = BackupMeta::parse_key(key).unwrap();
                    (meta.ctime, meta.send_parent_uuid.is_some())
                })
                .collect();
            assert_eq!(ours, fake, "{preserve} at {now}");
            assert_eq!(
                simulation.snapshots().len(),
                world.snapshots.values().map(BTreeMap::len).sum::<usize>(),
                "{preserve} at {now}"
            );
            now = now.checked_add(scenario.every).unwrap();
            steps += 1;
        }
        assert!(steps > 40, "{steps}");
    }
}

#[test]
fn storage_classes_and_early_deletions_are_priced() {
    let mut scenario = scenario(
        "UTC",
        "2026-01-01T00:00:00Z",
        "2027-06-01T00:00:00Z",
        6 * 60,
    );
    // The full backup is most of what is stored.
    scenario.change_per_day = GIB / 2;
    let prices = Prices::load("aws").unwrap();
    let mut tiered = candidate("1y 3m 7d");
    tiered.storage_classes = Some(StorageClasses {
        by_timeframe: [
            (Timeframe::Years, "DEEP_ARCHIVE".to_owned()),
            (Timeframe::Months, "GLACIER_IR".to_owned()),
        ]
        .into(),
        default: Some("STANDARD".to_owned()),
        ..StorageClasses::default()
    });
    let plain = candidate("1y 3m 7d");
    let report = simulate(&scenario, &[plain, tiered], &prices).unwrap();
    let [plain, tiered] = &report.outcomes[..] else {
        panic!("two outcomes")
    };
    assert!(tiered.steady.by_class.contains_key("DEEP_ARCHIVE"));
    assert_eq!(
        plain.steady.by_class.keys().collect::<Vec<_>>(),
        ["STANDARD"]
    );
    // The same tree, stored for less.
    assert!((plain.steady.objects - tiered.steady.objects).abs() < 1e-6);
    assert!(tiered.steady.cost_per_month.storage < plain.steady.cost_per_month.storage / 2.0);
    // Wasabi bills 90 days for the dailies deleted after a week.
    let wasabi = Prices::load("wasabi").unwrap();
    let report = simulate(&scenario, &[candidate("1y 3m 7d")], &wasabi).unwrap();
    assert!(report.outcomes[0].steady.cost_per_month.early_deletion > 0.0);
    assert!(report.outcomes[0].steady.cost_per_month.requests.abs() < f64::EPSILON);
}

#[test]
fn upload_requests_follow_the_part_sizes() {
    assert_eq!(upload_requests(0), 1);
    assert_eq!(upload_requests(8 << 20), 1);
    assert_eq!(
        upload_requests((8 << 20) + 1),
        4,
        "two parts, start and end"
    );
    // 900 parts of 8 MiB, then 16 MiB ones.
    assert_eq!(upload_requests(900 * (8 << 20) + (16 << 20)), 903);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// At every step the bucket holds exactly what the planner keeps: planning again at the
    /// same instant uploads and deletes nothing, and every backup is kept or held.
    #[test]
    fn the_bucket_is_what_the_planner_keeps(
        preserve in prop::sample::select(&["1y 3m 30d 24h", "2y 12m 7d", "1m 1w 1d 6h", "3d 12h 30M"][..]),
        every in 13i64..600,
        start_day in 0i64..365,
    ) {
        let start = Timestamp::from_second(1_767_225_600 + start_day * 86_400).unwrap();
        let scenario = Scenario {
            timezone: TimeZone::get("Europe/Berlin").unwrap(),
            start,
            end: start.checked_add(SignedDuration::from_hours(24 * 20)).unwrap(),
            every: SignedDuration::from_mins(every),
            size: 1000,
            change_per_day: 100,
        };
        let prices = Prices::load("b2").unwrap();
        let mut simulation = Simulation::new(&scenario, &prices, &candidate(preserve));
        let mut now = scenario.start;
        while now < scenario.end {
            simulation.step(now).unwrap();
            let assessment = Assessment {
                timezone: scenario.timezone.clone(),
                timezone_name: String::new(),
                now,
                sources: vec![simulation.source.clone()],
                remotes: vec![simulation.remote.clone()],
            };
            let again = plan(&assessment).unwrap();
            prop_assert!(
                !again.actions.iter().any(|a| matches!(a, Action::Upload(_) | Action::Delete(_))),
                "{preserve} at {now}: {:?}", again.actions
            );
            let kept: BTreeSet<&str> = again
                .backups
                .iter()
                .filter(|b| b.keep.is_some() || b.held_until.is_some())
                .map(|b| &*b.key)
                .collect();
            let stored: BTreeSet<&str> = simulation.backups().iter().map(|b| &*b.key).collect();
            prop_assert_eq!(kept, stored);
            let bytes: u64 = simulation.stored().values().map(|s| s.bytes).sum();
            prop_assert!(bytes <= 1000 * simulation.backups().len() as u64);
            now = now.checked_add(scenario.every).unwrap();
        }
    }
}
