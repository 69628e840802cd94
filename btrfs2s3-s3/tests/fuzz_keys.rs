//! Fuzzing the object-key parser: a corpus of odd keys (kept in `testdata/fuzz-corpus`) and
//! random edits of it. Nothing may panic; whatever parses must encode back to a key that
//! parses to the same metadata.

use btrfs2s3_s3::BackupMeta;
use jiff::tz::TimeZone;
use proptest::prelude::*;

fn corpus() -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/fuzz-corpus/keys.txt");
    std::fs::read_to_string(path)
        .expect("the corpus is there")
        .lines()
        .map(str::to_owned)
        .collect()
}

fn check(key: &str) {
    if let Ok(meta) = BackupMeta::parse_key(key) {
        let again = BackupMeta::parse_key(&meta.key("x", &TimeZone::UTC));
        assert_eq!(again, Ok(meta), "{key:?}");
    }
}

#[test]
fn the_corpus_parses_or_fails_cleanly() {
    let corpus = corpus();
    assert!(corpus.len() >= 5);
    for key in &corpus {
        check(key);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn edited_keys_never_panic(
        which in any::<prop::sample::Index>(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), prop::sample::select(vec!['.', '/', '-', ':', '+', 'T', 'Z', '0', '9', 'f', '_', ' ', '{', '}', 'é', '\u{0}'])), 0..10),
        cut in any::<prop::sample::Index>(),
    ) {
        let corpus = corpus();
        let mut key: Vec<char> = corpus[which.index(corpus.len())].chars().collect();
        for (at, c) in edits {
            let at = at.index(key.len() + 1);
            if at < key.len() && at % 2 == 0 {
                key[at] = c;
            } else {
                key.insert(at, c);
            }
        }
        key.truncate(key.len() - cut.index(key.len() / 4 + 1));
        let key: String = key.into_iter().collect();
        check(&key);
    }
}
