//! Which inodes' data an extract of some paths needs: the inodes at those paths at the end of
//! the chain, and every inode their data was cloned from on the way, in this stream or from
//! the parent snapshot (and so on back). A first pass over the chain records its clones
//! ([`read`]); [`needed`] then says, per stream, whose data to write.

use std::collections::HashSet;

use crate::model::{ApplyError, Tree};
use crate::{Attribute, Kind, Parser};

/// The clones of one stream, by the model's inode numbers: (destination, source).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Clones {
    /// From a file of the snapshot being built.
    pub within: Vec<(u64, u64)>,
    /// From a file of the parent snapshot (numbers of the parent's tree).
    pub from_parent: Vec<(u64, u64)>,
}

/// Applies a stream to `tree` (like [`crate::model::check`]) and records its clones.
pub fn read(reader: impl std::io::Read, tree: &mut Tree) -> Result<Clones, ApplyError> {
    let mut parser = Parser::new(reader)?;
    let parent = tree.clone();
    let mut own = None;
    let mut clones = Clones::default();
    while let Some(command) = parser.next_command()? {
        match command.kind() {
            Kind::Subvol | Kind::Snapshot => own = Some(command.uuid(Attribute::Uuid)?),
            Kind::Clone => {
                let destination = tree.ino(command.path(Attribute::Path)?);
                let source_path = command.path(Attribute::ClonePath)?;
                if Some(command.uuid(Attribute::CloneUuid)?) == own {
                    if let (Some(d), Some(s)) = (destination, tree.ino(source_path)) {
                        clones.within.push((d, s));
                    }
                } else if let (Some(d), Some(s)) = (destination, parent.ino(source_path)) {
                    clones.from_parent.push((d, s));
                }
            }
            _ => {}
        }
        tree.apply(&command)?;
    }
    Ok(clones)
}

/// Whether `path` is `wanted` or below it.
#[must_use]
pub fn is_below(path: &[u8], wanted: &[u8]) -> bool {
    wanted.is_empty()
        || (path.starts_with(wanted)
            && (path.len() == wanted.len() || path.get(wanted.len()) == Some(&b'/')))
}

/// For each stream of a chain (`chain[k]` its clones), the inodes whose data to write so
/// that `paths` of `tree` (the chain's last tree) have theirs. A superset: an inode number
/// the chain used for two files counts for both.
#[must_use]
pub fn needed(tree: &Tree, paths: &[&[u8]], chain: &[Clones]) -> Vec<HashSet<u64>> {
    let mut need: HashSet<u64> = tree
        .entries()
        .filter(|(path, _)| paths.iter().any(|wanted| is_below(path, wanted)))
        .filter_map(|(path, _)| tree.ino(path))
        .collect();
    let mut per_stream = vec![HashSet::new(); chain.len()];
    for (k, clones) in chain.iter().enumerate().rev() {
        // Clones within the stream: the sources' data is needed in this stream already.
        loop {
            let before = need.len();
            for (destination, source) in &clones.within {
                if need.contains(destination) {
                    need.insert(*source);
                }
            }
            if need.len() == before {
                break;
            }
        }
        per_stream[k].clone_from(&need);
        for (destination, source) in &clones.from_parent {
            if need.contains(destination) {
                need.insert(*source);
            }
        }
    }
    per_stream
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_sources_are_needed_back_along_the_chain() {
        // Stream 0 writes 10 and 11; stream 1 clones 20 from the parent's 11 and 21 from its
        // own 20; wanted at the end: the file of 21.
        let chain = [
            Clones::default(),
            Clones {
                within: vec![(21, 20)],
                from_parent: vec![(20, 11)],
            },
        ];
        let mut tree = Tree::new();
        tree.insert_found(
            Vec::new(),
            None,
            crate::model::Inode::new(crate::model::Node::Directory),
        );
        tree.insert_found(
            b"want".to_vec(),
            Some(21),
            crate::model::Inode::new(crate::model::Node::File),
        );
        tree.insert_found(
            b"other".to_vec(),
            Some(10),
            crate::model::Inode::new(crate::model::Node::File),
        );
        let need = needed(&tree, &[b"want"], &chain);
        assert_eq!(need[1], HashSet::from([21, 20]));
        assert_eq!(need[0], HashSet::from([21, 20, 11]));
        assert!(!need[0].contains(&10));
    }

    #[test]
    fn below_means_the_path_or_under_it() {
        assert!(is_below(b"a/b", b"a"));
        assert!(is_below(b"a", b"a"));
        assert!(!is_below(b"ab", b"a"));
        assert!(is_below(b"x", b""));
    }
}
