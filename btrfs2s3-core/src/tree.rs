//! Backups as trees: full backups at the roots, each differential under its send parent. One
//! walk for every place that shows a tree (the plan's preview, `list`).

use std::collections::{BTreeMap, BTreeSet};

use uuid::Uuid;

/// A backup, as far as its place in a tree goes.
pub trait Node {
    /// The snapshot it is the stream of.
    fn uuid(&self) -> Uuid;
    /// The snapshot it was sent against.
    fn send_parent(&self) -> Option<Uuid>;
    /// When its snapshot was made, as a transaction: siblings are in this order.
    fn ctransid(&self) -> i64;
}

/// `items` depth-first, each with its depth: every root (a full backup, or a differential
/// whose send parent is not among `items`) followed by its descendants; roots and siblings in
/// ctransid order, ties in the order of `items`. Every item appears exactly once, even when
/// keys say something impossible (two backups of one snapshot, cycles of send parents).
pub fn depth_first<'a, T: Node>(items: &[&'a T]) -> Vec<(&'a T, usize)> {
    let present: BTreeSet<Uuid> = items.iter().map(|item| item.uuid()).collect();
    let mut children: BTreeMap<Uuid, Vec<&T>> = BTreeMap::new();
    let mut roots = Vec::new();
    for item in items {
        match item.send_parent() {
            Some(parent) if present.contains(&parent) => {
                children.entry(parent).or_default().push(item);
            }
            _ => roots.push(*item),
        }
    }
    roots.sort_by_key(|item| item.ctransid());
    for siblings in children.values_mut() {
        siblings.sort_by_key(|item| item.ctransid());
    }
    // Items on a cycle of send parents have no root above them: after the real roots, the
    // first unvisited one of each cycle starts a tree of its own, so nothing goes unshown.
    let mut leftovers: Vec<&T> = items.to_vec();
    leftovers.sort_by_key(|item| item.ctransid());
    let mut ordered = Vec::with_capacity(items.len());
    let mut visited = BTreeSet::new();
    for root in roots.into_iter().chain(leftovers) {
        let mut stack = vec![(root, 0)];
        while let Some((item, depth)) = stack.pop() {
            // By address, not uuid: two keys of one snapshot are two rows.
            if !visited.insert(std::ptr::from_ref(item)) {
                continue;
            }
            ordered.push((item, depth));
            if let Some(kids) = children.get(&item.uuid()) {
                stack.extend(kids.iter().rev().map(|kid| (*kid, depth + 1)));
            }
        }
    }
    ordered
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (uuid, send parent, ctransid).
    struct Item(u128, Option<u128>, i64);

    impl Node for Item {
        fn uuid(&self) -> Uuid {
            Uuid::from_u128(self.0)
        }
        fn send_parent(&self) -> Option<Uuid> {
            self.1.map(Uuid::from_u128)
        }
        fn ctransid(&self) -> i64 {
            self.2
        }
    }

    fn check(items: &[Item], expected: &[(u128, usize)]) {
        let refs: Vec<&Item> = items.iter().collect();
        let found: Vec<(u128, usize)> = depth_first(&refs)
            .into_iter()
            .map(|(item, depth)| (item.0, depth))
            .collect();
        assert_eq!(found, expected);
    }

    #[test]
    fn children_follow_their_parent_in_ctransid_order() {
        check(
            &[
                Item(3, Some(1), 30),
                Item(2, Some(1), 20),
                Item(1, None, 10),
                Item(5, Some(2), 50),
                Item(4, Some(9), 40),
            ],
            &[(1, 0), (2, 1), (5, 2), (3, 1), (4, 0)],
        );
    }

    #[test]
    fn cycles_and_self_parents_are_shown_once() {
        check(
            &[Item(1, Some(2), 10), Item(2, Some(1), 20)],
            &[(1, 0), (2, 1)],
        );
        check(&[Item(1, Some(1), 10), Item(2, None, 5)], &[(2, 0), (1, 0)]);
    }

    #[test]
    fn two_backups_of_one_snapshot_are_both_shown() {
        check(
            &[Item(1, None, 10), Item(1, None, 10), Item(2, Some(1), 20)],
            &[(1, 0), (2, 1), (1, 0)],
        );
    }
}
