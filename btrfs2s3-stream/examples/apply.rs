//! Applies send stream files (a full stream, then its differentials, in order) to a plain
//! directory, in place, as `restore --plain --latest-only` does without the bucket:
//! `cargo run -p btrfs2s3-stream --example apply -- DEST FULL [DIFF...]`. The newest
//! snapshot ends up in `DEST/<its name>`. Used by `cargo xtask bench restore`.
use std::path::PathBuf;

use btrfs2s3_stream::model::Tree;
use btrfs2s3_stream::receive::{Options, Parent, Receiver};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args_os().skip(1).map(PathBuf::from);
    let dest = args.next().ok_or("usage: apply DEST FULL [DIFF...]")?;
    let streams: Vec<PathBuf> = args.collect();
    let work = dest.join(".partial");
    let shadow = dest.join(".shadow");
    std::fs::create_dir(&work)?;
    let owners = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self")?) == 0;
    let mut tree = Tree::new();
    let mut previous = None;
    let mut name = Vec::new();
    for (index, stream) in streams.iter().enumerate() {
        let (start, parent) = match previous {
            None => (Tree::new(), Parent::None),
            Some(uuid) => {
                std::fs::create_dir(&shadow)?;
                let parent = Parent::InPlace {
                    uuid,
                    shadow: shadow.clone(),
                };
                (Tree::from_parent(&tree), parent)
            }
        };
        let options = Options { owners, data: None };
        let receiver = Receiver::new(&work, start, &parent, options)?;
        let reader = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(stream)?);
        let done = receiver.receive(reader, index + 1 == streams.len())?;
        if shadow.exists() {
            std::fs::remove_dir_all(&shadow)?;
        }
        previous = Some(done.uuid);
        tree = done.tree;
        name = done.name;
    }
    std::fs::rename(&work, dest.join(String::from_utf8(name)?))?;
    Ok(())
}
