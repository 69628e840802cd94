//! Fuzzing the config loader: a corpus of odd configs (kept in `testdata/fuzz-corpus`), the
//! corpus mutated at random, and arbitrary bytes. Nothing may panic or hang, and memory stays
//! bounded (the loader refuses files over 1 MiB, deep nesting and alias bombs).
// Tests fail by panicking, helpers included.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use btrfs2s3_core::config::{Needs, load_for, parse_for};
use proptest::prelude::*;

fn corpus() -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/fuzz-corpus/config");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("the corpus is there")
        .map(|entry| entry.expect("a corpus entry").path())
        .collect();
    files.sort();
    files
        .iter()
        .map(|path| std::fs::read(path).expect("a readable corpus file"))
        .collect()
}

/// Parses in both modes; the result does not matter, only that there is one.
fn parse_both(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    for needs in [Needs::Everything, Needs::RemotesOnly] {
        let _ = parse_for(Path::new("fuzz.yaml"), &text, needs);
    }
}

#[test]
fn the_corpus_loads_or_fails_cleanly() {
    let corpus = corpus();
    assert!(corpus.len() >= 10);
    let dir = std::env::temp_dir().join(format!("btrfs2s3-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (n, bytes) in corpus.iter().enumerate() {
        parse_both(bytes);
        // Through the file loader too (invalid UTF-8 is its business).
        let path = dir.join(format!("{n}.yaml"));
        std::fs::write(&path, bytes).unwrap();
        let _ = load_for(&path, Needs::Everything);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// One edit of a byte string.
#[derive(Debug, Clone)]
enum Edit {
    Flip(prop::sample::Index, u8),
    Insert(prop::sample::Index, u8),
    Delete(prop::sample::Index),
    Truncate(prop::sample::Index),
    Duplicate(prop::sample::Index, prop::sample::Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    let interesting = prop::sample::select(vec![
        b':', b'-', b' ', b'\n', b'[', b']', b'{', b'}', b'&', b'*', b'!', b'"', b'\'', b'#',
        b'\t', b'|', b'>', 0, 0xff,
    ]);
    prop_oneof![
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Flip(i, b)),
        (any::<prop::sample::Index>(), interesting).prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<prop::sample::Index>().prop_map(Edit::Delete),
        any::<prop::sample::Index>().prop_map(Edit::Truncate),
        (any::<prop::sample::Index>(), any::<prop::sample::Index>())
            .prop_map(|(a, b)| Edit::Duplicate(a, b)),
    ]
}

fn apply(bytes: &mut Vec<u8>, edit: &Edit) {
    if bytes.is_empty() {
        bytes.push(b'x');
    }
    let len = bytes.len();
    match edit {
        Edit::Flip(i, b) => bytes[i.index(len)] ^= b,
        Edit::Insert(i, b) => bytes.insert(i.index(len + 1), *b),
        Edit::Delete(i) => {
            bytes.remove(i.index(len));
        }
        Edit::Truncate(i) => bytes.truncate(i.index(len + 1)),
        Edit::Duplicate(a, b) => {
            let (x, y) = (a.index(len), b.index(len));
            let (start, end) = (x.min(y), x.max(y));
            let copy = bytes[start..end].to_vec();
            bytes.splice(end..end, copy);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn mutated_corpus_never_panics(
        which in any::<prop::sample::Index>(),
        edits in proptest::collection::vec(edit(), 1..12),
    ) {
        let corpus = corpus();
        let mut bytes = corpus[which.index(corpus.len())].clone();
        for edit in &edits {
            apply(&mut bytes, edit);
        }
        parse_both(&bytes);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        parse_both(&bytes);
    }

    #[test]
    fn yaml_shaped_noise_never_panics(text in "([a-z_]{1,12}: ?|  |- |\\[|\\]|\\{|\\}|, |\n|&a |\\*a|\"[a-z/]*\"|[0-9]{1,5}[ymdhMs ]?){0,60}") {
        parse_both(text.as_bytes());
    }
}
