//! The resolver: which snapshots and backups to keep, and the send parent of new backups.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;

use jiff::Timestamp;
use uuid::Uuid;

use crate::{Policy, TimeSpan};

/// What the resolver needs to know about a snapshot (and, through [`BackupItem`], a backup).
pub trait Item {
    /// The snapshot's uuid. A backup has the uuid of the snapshot it was made from.
    fn uuid(&self) -> Uuid;
    /// When the subvolume last changed: decides which time spans the item belongs to.
    fn ctime(&self) -> Timestamp;
    /// The transaction id of the last change: orders items ("the first one of a span").
    fn ctransid(&self) -> i64;
}

/// What the resolver needs to know about an existing backup.
pub trait BackupItem: Item {
    /// The uuid of the snapshot this backup was sent against, `None` for a full backup.
    fn send_parent(&self) -> Option<Uuid>;
}

/// References resolve like what they refer to: a caller can pass `&[&Backup]`, a selection
/// of its items, without copying them.
impl<T: Item + ?Sized> Item for &T {
    fn uuid(&self) -> Uuid {
        (**self).uuid()
    }
    fn ctime(&self) -> Timestamp {
        (**self).ctime()
    }
    fn ctransid(&self) -> i64 {
        (**self).ctransid()
    }
}

impl<T: BackupItem + ?Sized> BackupItem for &T {
    fn send_parent(&self) -> Option<Uuid> {
        (**self).send_parent()
    }
}

macro_rules! flag_set {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $bit:expr => $label:literal,)* }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub struct $name(u8);

        impl $name {
            $($(#[$vdoc])* pub const $variant: $name = $name(1 << $bit);)*
            const NAMES: &[($name, &'static str)] = &[$(($name::$variant, $label),)*];

            /// No flags at all.
            #[must_use]
            pub const fn empty() -> $name {
                $name(0)
            }

            /// Whether every flag of `other` is set in `self`.
            #[must_use]
            pub const fn contains(self, other: $name) -> bool {
                self.0 & other.0 == other.0
            }

            /// Whether no flag is set.
            #[must_use]
            pub const fn is_empty(self) -> bool {
                self.0 == 0
            }

            /// The names of the flags that are set, in declaration order.
            pub fn names(self) -> impl Iterator<Item = &'static str> {
                Self::NAMES
                    .iter()
                    .filter(move |(flag, _)| self.contains(*flag))
                    .map(|(_, name)| *name)
            }
        }

        impl std::ops::BitOr for $name {
            type Output = $name;
            fn bitor(self, other: $name) -> $name {
                $name(self.0 | other.0)
            }
        }

        impl std::ops::BitOrAssign for $name {
            fn bitor_assign(&mut self, other: $name) {
                self.0 |= other.0;
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_set().entries(self.names()).finish()
            }
        }

        #[cfg(feature = "serde")]
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_seq(self.names())
            }
        }
    };
}

flag_set! {
    /// Why an item is kept. An item with no reason is deleted.
    Reasons {
        /// It is the nominal (first) item of a span the policy preserves.
        PRESERVED = 0 => "Preserved",
        /// It is the most recent snapshot, or the backup of it.
        MOST_RECENT = 1 => "MostRecent",
        /// A kept backup depends on it as its send parent, directly or transitively.
        SEND_ANCESTOR = 2 => "SendAncestor",
    }
}

flag_set! {
    /// Details about how a kept item is kept.
    Flags {
        /// The backup does not exist yet: it must be created (uploaded).
        NEW = 0 => "New",
        /// A new backup of the nominal snapshot replaces a backup of a newer snapshot.
        REPLACING_NEWER = 1 => "ReplacingNewer",
        /// A backup is kept for a span that has no snapshot (any more).
        NO_SNAPSHOT = 2 => "NoSnapshot",
        /// A backup is kept for a span whose nominal snapshot is newer than the backup.
        SNAPSHOT_IS_NEWER = 3 => "SnapshotIsNewer",
        /// A new backup of the nominal snapshot replaces the span's nominal backup, which is of
        /// another snapshot with the same content (equal ctransids; a snapshot taken by hand,
        /// or taken again after the first was deleted): a span keeps the backup of its own
        /// nominal snapshot, the one that stays on disk as the send parent of later
        /// differentials. Not in the Python tool, which keeps both and may change its mind on
        /// a later run.
        REPLACING_EQUIVALENT = 4 => "ReplacingEquivalent",
    }
}

/// Why and how one item is kept.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Keep {
    /// Why it is kept (never empty in a [`Resolution`]).
    pub reasons: Reasons,
    /// How it is kept.
    pub flags: Flags,
    /// The preserved spans it is the nominal item of.
    pub time_spans: BTreeSet<TimeSpan>,
    /// For a send ancestor: the backups that depend on it directly.
    pub needed_by: BTreeSet<Uuid>,
}

/// A kept backup: an existing one, or a new one to create (flag [`Flags::NEW`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct KeepBackup {
    /// Why and how it is kept.
    #[cfg_attr(feature = "serde", serde(flatten))]
    pub keep: Keep,
    /// The snapshot it is (or is to be) sent against; `None` for a full backup.
    pub send_parent: Option<Uuid>,
    /// The earliest instant at which the policy, with no new snapshots, could stop keeping it
    /// (see [`resolve`]); always after `now`.
    pub keep_until: Timestamp,
}

impl KeepBackup {
    /// Whether this backup does not exist yet and must be created.
    #[must_use]
    pub fn is_new(&self) -> bool {
        self.keep.flags.contains(Flags::NEW)
    }
}

/// A kept backup whose send parent has neither a backup nor a snapshot: it cannot be restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct BrokenChain {
    /// The backup that needs the missing one.
    pub backup: Uuid,
    /// Its send parent, of which there is neither a backup nor a snapshot.
    pub missing_parent: Uuid,
}

impl fmt::Display for BrokenChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "backup chain is broken: {} has send parent {}, which is missing",
            self.backup, self.missing_parent
        )
    }
}

/// The outcome of [`resolve`]: everything kept, by uuid. Everything else is to be deleted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Resolution {
    /// The snapshots to keep.
    pub snapshots: BTreeMap<Uuid, Keep>,
    /// The backups to keep, existing and new.
    pub backups: BTreeMap<Uuid, KeepBackup>,
    /// Kept backups whose chain of send parents cannot be completed, sorted.
    pub broken_chains: Vec<BrokenChain>,
}

/// Decides which snapshots and backups of one source (in one remote) to keep under `policy`.
///
/// This is the algorithm of the Python tool btrfs2s3 2.1.0:
///
/// 1. **`Preserved`.** For each span that some snapshot or backup belongs to and that the policy
///    preserves, keep its nominal (first) snapshot S, and a backup of it unless the span's
///    nominal backup B is older than S or is S's own backup; keep B when it is S's backup,
///    older than S, or there is no S. (The Python tool compares ctransids only, so a B of
///    another snapshot with S's content counts as S's backup there; here a new backup of S
///    replaces it, flagged [`Flags::REPLACING_EQUIVALENT`], because only a backup whose
///    snapshot is on disk can be the send parent of the next differential.)
/// 2. **`MostRecent`.** Keep the snapshot with the largest ctransid, and a backup of it.
/// 3. **`SendAncestor`.** Keep the send parent of every kept backup, transitively, creating a
///    backup of the parent snapshot when none exists.
///
/// Every kept backup also gets its **keep-until** (ours; the Python tool has none): the latest
/// of the instants [`Policy::preserved_until`] gives for the spans it is kept for; for the
/// most recent backup, the end of the span of the shortest timeframe that contains it and
/// [`Policy::one_step_ahead`] (the newest backup is always kept a step ahead); and the
/// keep-until of every kept backup sent against it (a parent outlives its children).
/// Evaluated at any instant before it, with the same items, the policy still keeps the
/// backup. Object lock dates and storage classes are derived from it.
///
/// A new backup's send parent follows the policy's timeframes from the longest: it is the
/// nominal snapshot of the last span for which the snapshot is *not* nominal, stopping at the
/// first span for which it is. A snapshot that is nominal for its longest span is a full
/// backup.
///
/// "First" and "most recent" order by ctransid, then ctime, then uuid, so the result does not
/// depend on the order of the inputs. If two items share a uuid, only the first in that order
/// is considered.
///
/// ```
/// use btrfs2s3_policy::{resolve, BackupItem, Item, Policy, Reasons};
/// use jiff::{Timestamp, tz::TimeZone};
/// use uuid::Uuid;
///
/// struct Snap { uuid: Uuid, ctime: Timestamp, ctransid: i64 }
/// impl Item for Snap {
///     fn uuid(&self) -> Uuid { self.uuid }
///     fn ctime(&self) -> Timestamp { self.ctime }
///     fn ctransid(&self) -> i64 { self.ctransid }
/// }
/// struct NoBackup;
/// impl Item for NoBackup {
///     fn uuid(&self) -> Uuid { unreachable!() }
///     fn ctime(&self) -> Timestamp { unreachable!() }
///     fn ctransid(&self) -> i64 { unreachable!() }
/// }
/// impl BackupItem for NoBackup {
///     fn send_parent(&self) -> Option<Uuid> { unreachable!() }
/// }
///
/// let snap = |n: u128, ctime: &str| Snap {
///     uuid: Uuid::from_u128(n),
///     ctime: ctime.parse().unwrap(),
///     ctransid: n as i64,
/// };
/// let snapshots = [
///     snap(1, "2026-01-05T10:00:00Z"), // first of the year: a full backup
///     snap(2, "2026-02-03T10:00:00Z"), // first of February: differential against 1
///     snap(3, "2026-02-04T10:00:00Z"), // most recent: differential against 2
/// ];
/// let now = "2026-02-04T11:00:00Z".parse()?;
/// let policy = Policy::new("1y 1m".parse()?, TimeZone::UTC, now);
/// let resolution = resolve(&snapshots, &[] as &[NoBackup], &policy);
///
/// assert_eq!(resolution.snapshots.len(), 3);
/// let parent = |n: u128| resolution.backups[&Uuid::from_u128(n)].send_parent;
/// assert_eq!(parent(1), None);
/// assert_eq!(parent(2), Some(Uuid::from_u128(1)));
/// assert_eq!(parent(3), Some(Uuid::from_u128(2)));
/// assert!(resolution.backups[&Uuid::from_u128(3)].keep.reasons.contains(Reasons::MOST_RECENT));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use]
pub fn resolve<S: Item, B: BackupItem>(
    snapshots: &[S],
    backups: &[B],
    policy: &Policy,
) -> Resolution {
    let mut resolver = Resolver {
        snapshots: Index::new(snapshots, policy),
        backups: Index::new(backups, policy),
        backup_items: backups,
        policy,
        result: Resolution::default(),
    };
    resolver.keep_preserved();
    resolver.keep_most_recent();
    resolver.keep_send_ancestors();
    resolver.set_keep_until();
    resolver.result.broken_chains.sort_unstable();
    resolver.result
}

/// The order of "first" and "most recent": ctransid, then ctime, then uuid.
fn order_key(item: &impl Item) -> (i64, Timestamp, Uuid) {
    (item.ctransid(), item.ctime(), item.uuid())
}

/// Items of one kind indexed by uuid and by the spans they belong to.
struct Index<'a, T> {
    items: &'a [T],
    by_uuid: HashMap<Uuid, usize>,
    /// The spans of item `i` are `spans[i * stride..(i + 1) * stride]`, longest first.
    spans: Vec<TimeSpan>,
    stride: usize,
    nominal: HashMap<TimeSpan, usize>,
}

impl<'a, T: Item> Index<'a, T> {
    fn new(items: &'a [T], policy: &Policy) -> Index<'a, T> {
        let timeframes: Vec<_> = policy.params().timeframes().collect();
        let stride = timeframes.len();
        // Visit items in ctime order so consecutive items mostly share their spans: computing
        // a span takes time zone lookups, checking whether the previous one still applies does
        // not. This keeps resolving 10,000 snapshots in the low milliseconds.
        let mut order: Vec<usize> = (0..items.len()).collect();
        order.sort_by_key(|&i| order_key(&items[i]));
        let mut by_time = order.clone();
        by_time.sort_by_key(|&i| items[i].ctime());

        let mut by_uuid = HashMap::with_capacity(items.len());
        for &i in &order {
            by_uuid.entry(items[i].uuid()).or_insert(i);
        }

        let placeholder = TimeSpan::containing(
            crate::Timeframe::Seconds,
            Timestamp::UNIX_EPOCH,
            policy.time_zone(),
        );
        let mut spans = vec![placeholder; items.len() * stride];
        let mut last: Vec<Option<TimeSpan>> = vec![None; stride];
        let mut nominal: HashMap<TimeSpan, usize> = HashMap::new();
        for &i in &by_time {
            if by_uuid.get(&items[i].uuid()) != Some(&i) {
                continue;
            }
            let ctime = items[i].ctime();
            for (j, &timeframe) in timeframes.iter().enumerate() {
                let span = match last[j] {
                    Some(span) if span.contains(ctime) => span,
                    _ => TimeSpan::containing(timeframe, ctime, policy.time_zone()),
                };
                last[j] = Some(span);
                spans[i * stride + j] = span;
                nominal
                    .entry(span)
                    .and_modify(|current| {
                        if order_key(&items[i]) < order_key(&items[*current]) {
                            *current = i;
                        }
                    })
                    .or_insert(i);
            }
        }
        Index {
            items,
            by_uuid,
            spans,
            stride,
            nominal,
        }
    }

    fn spans_of(&self, i: usize) -> &[TimeSpan] {
        &self.spans[i * self.stride..(i + 1) * self.stride]
    }

    fn nominal(&self, span: &TimeSpan) -> Option<usize> {
        self.nominal.get(span).copied()
    }

    fn get(&self, uuid: Uuid) -> Option<usize> {
        self.by_uuid.get(&uuid).copied()
    }

    fn most_recent(&self) -> Option<usize> {
        self.by_uuid
            .values()
            .copied()
            .max_by_key(|&i| order_key(&self.items[i]))
    }
}

/// The context a mark is made in: the phase's reason and, in phase 1, the span.
#[derive(Clone, Copy)]
struct Why {
    reason: Reasons,
    span: Option<TimeSpan>,
    needed_by: Option<Uuid>,
}

impl Why {
    fn update(self, keep: &mut Keep, flags: Flags) {
        keep.reasons |= self.reason;
        keep.flags |= flags;
        keep.time_spans.extend(self.span);
        keep.needed_by.extend(self.needed_by);
    }
}

struct Resolver<'a, S, B> {
    snapshots: Index<'a, S>,
    backups: Index<'a, B>,
    backup_items: &'a [B],
    policy: &'a Policy,
    result: Resolution,
}

impl<S: Item, B: BackupItem> Resolver<'_, S, B> {
    fn mark_snapshot(&mut self, i: usize, why: Why) {
        let uuid = self.snapshots.items[i].uuid();
        why.update(
            self.result.snapshots.entry(uuid).or_default(),
            Flags::empty(),
        );
    }

    fn mark_backup(&mut self, uuid: Uuid, send_parent: Option<Uuid>, why: Why, flags: Flags) {
        let kept = self
            .result
            .backups
            .entry(uuid)
            .or_insert_with(|| KeepBackup {
                keep: Keep::default(),
                send_parent,
                keep_until: Timestamp::MIN,
            });
        why.update(&mut kept.keep, flags);
    }

    /// Keeps a backup of snapshot `i`: the one already kept, else the existing one, else a new
    /// one. Returns its uuid.
    fn keep_backup_of_snapshot(&mut self, i: usize, mut flags: Flags, why: Why) -> Uuid {
        let uuid = self.snapshots.items[i].uuid();
        let send_parent = if let Some(kept) = self.result.backups.get(&uuid) {
            kept.send_parent
        } else if let Some(b) = self.backups.get(uuid) {
            self.backup_items[b].send_parent()
        } else {
            flags |= Flags::NEW;
            self.new_send_parent(i)
        };
        self.mark_backup(uuid, send_parent, why, flags);
        uuid
    }

    /// The send parent of a new backup of snapshot `i` (section 4 of the specification).
    fn new_send_parent(&self, i: usize) -> Option<Uuid> {
        let mut send_parent = None;
        for span in self.snapshots.spans_of(i) {
            // Snapshot `i` belongs to `span`, so the span has a nominal snapshot.
            let nominal = self.snapshots.nominal(span).unwrap_or(i);
            if nominal == i {
                break;
            }
            send_parent = Some(self.snapshots.items[nominal].uuid());
        }
        send_parent
    }

    fn keep_preserved(&mut self) {
        let spans: BTreeSet<TimeSpan> = self
            .snapshots
            .nominal
            .keys()
            .chain(self.backups.nominal.keys())
            .copied()
            .filter(|span| self.policy.preserves(span))
            .collect();
        for span in spans {
            let why = Why {
                reason: Reasons::PRESERVED,
                span: Some(span),
                needed_by: None,
            };
            let snapshot = self.snapshots.nominal(&span);
            let backup = self.backups.nominal(&span);
            let ctransid_of_backup = backup.map(|b| self.backup_items[b].ctransid());
            let backup_of_other_snapshot = backup.is_some_and(|b| {
                snapshot
                    .is_some_and(|s| self.backup_items[b].uuid() != self.snapshots.items[s].uuid())
            });
            if let Some(s) = snapshot {
                self.mark_snapshot(s, why);
                let snapshot_ctransid = self.snapshots.items[s].ctransid();
                match ctransid_of_backup {
                    None => {
                        self.keep_backup_of_snapshot(s, Flags::NEW, why);
                    }
                    Some(b) if b > snapshot_ctransid => {
                        self.keep_backup_of_snapshot(s, Flags::REPLACING_NEWER, why);
                    }
                    Some(b) if b == snapshot_ctransid && backup_of_other_snapshot => {
                        self.keep_backup_of_snapshot(s, Flags::REPLACING_EQUIVALENT, why);
                    }
                    Some(_) => {}
                }
            }
            if let Some(b) = backup {
                let item = &self.backup_items[b];
                let (uuid, send_parent, ctransid) =
                    (item.uuid(), item.send_parent(), item.ctransid());
                match snapshot.map(|s| self.snapshots.items[s].ctransid()) {
                    None => self.mark_backup(uuid, send_parent, why, Flags::NO_SNAPSHOT),
                    Some(s) if ctransid < s => {
                        self.mark_backup(uuid, send_parent, why, Flags::SNAPSHOT_IS_NEWER);
                    }
                    Some(s) if ctransid == s && !backup_of_other_snapshot => {
                        self.mark_backup(uuid, send_parent, why, Flags::empty());
                    }
                    Some(_) => {}
                }
            }
        }
    }

    fn keep_most_recent(&mut self) {
        if let Some(s) = self.snapshots.most_recent() {
            let why = Why {
                reason: Reasons::MOST_RECENT,
                span: None,
                needed_by: None,
            };
            self.mark_snapshot(s, why);
            self.keep_backup_of_snapshot(s, Flags::empty(), why);
        }
    }

    /// Fills in every kept backup's keep-until: its own, then its descendants'.
    fn set_keep_until(&mut self) {
        let policy = self.policy;
        let shortest = policy.params().timeframes().last();
        for (uuid, kept) in &mut self.result.backups {
            let mut until = kept
                .keep
                .time_spans
                .iter()
                .filter_map(|span| policy.preserved_until(span))
                .max()
                .unwrap_or(Timestamp::MIN);
            if kept.keep.reasons.contains(Reasons::MOST_RECENT) {
                let ctime = self
                    .backups
                    .get(*uuid)
                    .map(|b| self.backup_items[b].ctime())
                    .or_else(|| {
                        self.snapshots
                            .get(*uuid)
                            .map(|s| self.snapshots.items[s].ctime())
                    });
                let span_end = shortest
                    .zip(ctime)
                    .map_or(Timestamp::MIN, |(timeframe, ctime)| {
                        TimeSpan::containing(timeframe, ctime, policy.time_zone()).end()
                    });
                until = until.max(span_end).max(policy.one_step_ahead());
            }
            kept.keep_until = until;
        }
        // A parent outlives its children. Keys can say anything, cycles included: values only
        // grow, so at most one pass per backup settles them.
        for _ in 0..self.result.backups.len() {
            let mut changed = false;
            let children: Vec<(Uuid, Timestamp)> = self
                .result
                .backups
                .values()
                .filter_map(|kept| kept.send_parent.map(|parent| (parent, kept.keep_until)))
                .collect();
            for (parent, until) in children {
                if let Some(kept) = self.result.backups.get_mut(&parent)
                    && kept.keep_until < until
                {
                    kept.keep_until = until;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
    }

    fn keep_send_ancestors(&mut self) {
        let mut queue: VecDeque<(Uuid, Option<Uuid>)> = self
            .result
            .backups
            .iter()
            .map(|(uuid, kept)| (*uuid, kept.send_parent))
            .collect();
        while let Some((uuid, send_parent)) = queue.pop_front() {
            let Some(parent) = send_parent else { continue };
            if self.result.backups.contains_key(&parent) {
                continue;
            }
            let why = Why {
                reason: Reasons::SEND_ANCESTOR,
                span: None,
                needed_by: Some(uuid),
            };
            if let Some(b) = self.backups.get(parent) {
                let grandparent = self.backup_items[b].send_parent();
                self.mark_backup(parent, grandparent, why, Flags::empty());
                queue.push_back((parent, grandparent));
            } else if let Some(s) = self.snapshots.get(parent) {
                let kept = self.keep_backup_of_snapshot(s, Flags::NEW, why);
                let grandparent = self.result.backups[&kept].send_parent;
                queue.push_back((kept, grandparent));
            } else {
                self.result.broken_chains.push(BrokenChain {
                    backup: uuid,
                    missing_parent: parent,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::tz::TimeZone;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    struct Thing {
        uuid: Uuid,
        ctime: Timestamp,
        ctransid: i64,
        send_parent: Option<Uuid>,
    }

    impl Item for Thing {
        fn uuid(&self) -> Uuid {
            self.uuid
        }
        fn ctime(&self) -> Timestamp {
            self.ctime
        }
        fn ctransid(&self) -> i64 {
            self.ctransid
        }
    }

    impl BackupItem for Thing {
        fn send_parent(&self) -> Option<Uuid> {
            self.send_parent
        }
    }

    const ZONES: &[&str] = &[
        "UTC",
        "Europe/Berlin",
        "America/St_Johns",
        "Australia/Lord_Howe",
    ];
    const POLICIES: &[&str] = &[
        "1y",
        "1y 3m 30d 24h",
        "2q 2w 3d",
        "1d 24h 60M",
        "0y 2m",
        "1y 1q 1m 1w 1d 1h 1M 1s",
    ];

    /// A history: snapshots made over about two years (ctransid grows with ctime, as on a
    /// real filesystem), backups of some of them (and of some snapshots that are gone) sent
    /// against random earlier ones, a policy, a zone and `now` after the last snapshot.
    #[derive(Debug, Clone)]
    struct History {
        snapshots: Vec<Thing>,
        backups: Vec<Thing>,
        policy: Policy,
    }

    fn arb_history() -> impl Strategy<Value = History> {
        let things = proptest::collection::vec(
            (
                1i64..5_000_000,
                any::<bool>(),
                any::<bool>(),
                any::<prop::sample::Index>(),
                proptest::bool::weighted(0.2),
            ),
            0..40,
        );
        (things, 0..ZONES.len(), 0..POLICIES.len(), 0i64..200_000).prop_map(
            |(things, zone, preserve, after)| {
                let mut ctime = 1_767_225_600;
                let mut snapshots = Vec::new();
                let mut backups: Vec<Thing> = Vec::new();
                let mut ctransid = 7;
                for (n, (gap, has_snapshot, has_backup, parent, unchanged)) in
                    things.into_iter().enumerate()
                {
                    ctime += gap;
                    // Some snapshots are taken again without a change: equal ctransids.
                    if !unchanged {
                        ctransid += 10;
                    }
                    let thing = Thing {
                        uuid: Uuid::from_u128(n as u128 + 1),
                        ctime: Timestamp::from_second(ctime).unwrap(),
                        ctransid,
                        send_parent: None,
                    };
                    if has_backup {
                        let send_parent = (!backups.is_empty() && parent.index(3) > 0)
                            .then(|| backups[parent.index(backups.len())].uuid);
                        backups.push(Thing {
                            send_parent,
                            ..thing.clone()
                        });
                    }
                    if has_snapshot || !has_backup {
                        snapshots.push(thing);
                    }
                }
                let now = Timestamp::from_second(ctime + after).unwrap();
                let policy = Policy::new(
                    POLICIES[preserve].parse().unwrap(),
                    TimeZone::get(ZONES[zone]).unwrap(),
                    now,
                );
                History {
                    snapshots,
                    backups,
                    policy,
                }
            },
        )
    }

    fn thing(n: u128, ctime: &str, ctransid: i64, send_parent: Option<u128>) -> Thing {
        Thing {
            uuid: Uuid::from_u128(n),
            ctime: ctime.parse().unwrap(),
            ctransid,
            send_parent: send_parent.map(Uuid::from_u128),
        }
    }

    #[test]
    fn a_backup_of_a_gone_snapshot_with_the_same_content_is_replaced() {
        // Snapshot 1 was backed up, then deleted by hand and taken again as snapshot 2, with
        // no change in between: backup 1 has snapshot 2's content, but not its uuid, so the
        // next differential (sent against snapshot 2) could not be received on top of it.
        let policy = Policy::new(
            "1y".parse().unwrap(),
            TimeZone::UTC,
            "2026-06-01T00:00:00Z".parse().unwrap(),
        );
        let backup1 = thing(1, "2026-01-05T10:00:00Z", 100, None);
        let snapshot2 = thing(2, "2026-01-05T11:00:00Z", 100, None);
        let on_disk = [snapshot2.clone()];
        let first = resolve(&on_disk, std::slice::from_ref(&backup1), &policy);
        let kept = &first.backups[&snapshot2.uuid];
        assert!(kept.is_new());
        assert!(kept.keep.flags.contains(Flags::REPLACING_EQUIVALENT));
        assert_eq!(kept.send_parent, None);
        assert!(!first.backups.contains_key(&backup1.uuid), "{first:?}");
        // Once the new backup exists, the next run keeps it, and still not backup 1.
        let second = resolve(&on_disk, &[backup1.clone(), snapshot2.clone()], &policy);
        assert_eq!(second.backups.keys().collect::<Vec<_>>(), [&snapshot2.uuid]);
        assert!(!second.backups[&snapshot2.uuid].is_new());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn result_does_not_depend_on_input_order(
            history in arb_history(),
            swaps in proptest::collection::vec(any::<(prop::sample::Index, prop::sample::Index)>(), 0..60),
        ) {
            let expected = resolve(&history.snapshots, &history.backups, &history.policy);
            let mut snapshots = history.snapshots.clone();
            let mut backups = history.backups.clone();
            for (a, b) in &swaps {
                let n = snapshots.len();
                if n > 0 {
                    snapshots.swap(a.index(n), b.index(n));
                }
                let n = backups.len();
                if n > 0 {
                    backups.swap(a.index(n), b.index(n));
                }
            }
            prop_assert_eq!(resolve(&snapshots, &backups, &history.policy), expected);
        }

        #[test]
        fn send_parents_of_kept_backups_are_kept_or_reported(history in arb_history()) {
            let resolution = resolve(&history.snapshots, &history.backups, &history.policy);
            for (uuid, kept) in &resolution.backups {
                prop_assert!(!kept.keep.reasons.is_empty());
                if let Some(parent) = kept.send_parent {
                    let broken = BrokenChain { backup: *uuid, missing_parent: parent };
                    prop_assert!(
                        resolution.backups.contains_key(&parent) || resolution.broken_chains.contains(&broken),
                        "{uuid} needs {parent}"
                    );
                }
                if kept.is_new() {
                    // A new backup is made of a snapshot that exists, against one that exists.
                    prop_assert!(history.snapshots.iter().any(|s| s.uuid == *uuid));
                    if let Some(parent) = kept.send_parent {
                        prop_assert!(history.snapshots.iter().any(|s| s.uuid == parent));
                    }
                }
            }
            for chain in &resolution.broken_chains {
                prop_assert!(!history.snapshots.iter().any(|s| s.uuid == chain.missing_parent));
                prop_assert!(!history.backups.iter().any(|b| b.uuid == chain.missing_parent));
            }
        }

        #[test]
        fn keep_until_is_after_now_and_parents_outlive_children(history in arb_history()) {
            let resolution = resolve(&history.snapshots, &history.backups, &history.policy);
            for (uuid, kept) in &resolution.backups {
                prop_assert!(kept.keep_until > history.policy.now(), "{uuid}: {kept:?}");
                if let Some(parent) = kept.send_parent.and_then(|p| resolution.backups.get(&p)) {
                    prop_assert!(parent.keep_until >= kept.keep_until, "{uuid}: {kept:?} {parent:?}");
                }
            }
        }

        #[test]
        fn before_keep_until_the_policy_still_keeps_the_backup(
            history in arb_history(),
            fractions in proptest::collection::vec(0.0f64..1.0, 3),
        ) {
            let first = resolve(&history.snapshots, &history.backups, &history.policy);
            let now = history.policy.now().as_second();
            for (uuid, kept) in &first.backups {
                let until = kept.keep_until.as_second().min(now + 20 * 366 * 86_400);
                let mut instants: Vec<i64> = fractions
                    .iter()
                    .map(|f| {
                        #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
                        let offset = ((until - now) as f64 * f) as i64;
                        now + offset
                    })
                    .collect();
                instants.push(until - 1);
                for instant in instants {
                    let later = Policy::new(
                        *history.policy.params(),
                        history.policy.time_zone().clone(),
                        Timestamp::from_second(instant).unwrap(),
                    );
                    let again = resolve(&history.snapshots, &history.backups, &later);
                    prop_assert!(
                        again.backups.contains_key(uuid),
                        "{uuid} kept until {} is dropped at {instant}",
                        kept.keep_until
                    );
                }
            }
        }

        #[test]
        fn resolving_the_outcome_again_keeps_the_same(history in arb_history()) {
            let first = resolve(&history.snapshots, &history.backups, &history.policy);
            // Carry the first resolution out: delete what is not kept, create what is new.
            let snapshots: Vec<Thing> = history.snapshots.iter().filter(|s| first.snapshots.contains_key(&s.uuid)).cloned().collect();
            let backups: Vec<Thing> = first.backups.iter().map(|(uuid, kept)| {
                let source = history.backups.iter().chain(&history.snapshots).find(|t| t.uuid == *uuid).unwrap();
                Thing { send_parent: kept.send_parent, ..source.clone() }
            }).collect();
            let second = resolve(&snapshots, &backups, &history.policy);
            prop_assert_eq!(second.snapshots.keys().collect::<Vec<_>>(), first.snapshots.keys().collect::<Vec<_>>());
            prop_assert_eq!(second.backups.keys().collect::<Vec<_>>(), first.backups.keys().collect::<Vec<_>>());
            prop_assert!(second.backups.values().all(|kept| !kept.is_new()), "nothing new to upload");
        }
    }
}
