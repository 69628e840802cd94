//! `cargo xtask bench`: btrfs2s3 against the Python tool btrfs2s3 2.1.0 and the machine's
//! limits, on a loopback btrfs and a local Garage server.
//!
//! 1. Full backup of the source (incompressible data), `update --force` into an empty bucket.
//! 2. Differential backup after 1% of the data changed.
//!    Baselines for both: `btrfs send` into /dev/null, a plain `PutObject` of the same
//!    stream from a file, and our upload path alone reading that file (no `btrfs send`
//!    competing for the CPUs: the server's limit).
//! 3. Full backup to two remotes (two buckets of one server: a second server would compete
//!    for the same two cores), ours (one `btrfs send` feeding both) and the Python tool's
//!    (one send per remote), against the same tool's full backup to one remote.
//! 4. Planning with many backup objects in the bucket and many snapshots on disk: ours with
//!    `update --pretend`, the Python tool's `update` in a pseudo-terminal answering `n`.
//! 5. Start-up: `--help`.
//!
//! Each tool's pair of backups, and the baselines, get a fresh Garage server whose data lives
//! in a tmpfs (so no block is deduplicated against an earlier run's, and the server's disk
//! is not what is measured), and every measured command a tmpfs as `TMPDIR` (so temporary
//! files are seen, and cost no disk time). The tools alternate which goes first.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::measure::{Sample, measure};
use super::{Options, Stats, build_s3_examples, report_dir, write_random_file};
use crate::testenv::{S3Endpoint, TestEnv, require_root};
use crate::{Result, cmd, tools};

const PYTHON_REQUIREMENT: &str = "btrfs2s3==2.1.0";
const MIB: f64 = 1_048_576.0;

/// The rows of the tables.
const OURS: &str = "btrfs2s3";
const PYTHON: &str = "Python btrfs2s3 2.1.0";
const SEND: &str = "btrfs send > /dev/null";
const PUT: &str = "plain PutObject of the stream file";
/// Our upload path alone: the server's limit for a streamed upload on this machine.
const STREAMED: &str = "our upload of the stream file";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tool {
    Ours,
    Python,
}

impl Tool {
    fn row(self) -> &'static str {
        match self {
            Tool::Ours => OURS,
            Tool::Python => PYTHON,
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Tool::Ours => "ours",
            Tool::Python => "python",
        }
    }

    /// Ours first in even runs, the Python tool first in odd ones.
    fn order(run: usize) -> [Tool; 2] {
        if run.is_multiple_of(2) {
            [Tool::Ours, Tool::Python]
        } else {
            [Tool::Python, Tool::Ours]
        }
    }
}

/// Samples by row: ours, the Python tool's, then the baselines.
#[derive(Default)]
struct Rows(Vec<(&'static str, Vec<Sample>)>);

impl Rows {
    fn push(&mut self, row: &'static str, sample: Sample) {
        if let Some((_, samples)) = self.0.iter_mut().find(|(name, _)| *name == row) {
            samples.push(sample);
        } else {
            self.0.push((row, vec![sample]));
            let rank = |name: &str| {
                [OURS, PYTHON, SEND, PUT, STREAMED]
                    .iter()
                    .position(|r| *r == name)
            };
            self.0.sort_by_key(|(name, _)| rank(name));
        }
    }

    fn get(&self, row: &str) -> &[Sample] {
        self.0
            .iter()
            .find(|(name, _)| *name == row)
            .map_or(&[], |(_, samples)| samples)
    }

    fn median(&self, row: &str, figure: impl Fn(&Sample) -> f64) -> f64 {
        let values: Vec<f64> = self.get(row).iter().map(figure).collect();
        Stats::of(&values).map_or(f64::NAN, |stats| stats.median)
    }
}

struct Programs {
    ours: PathBuf,
    python: PathBuf,
    upload: PathBuf,
    fill: PathBuf,
}

struct Bench {
    programs: Programs,
    options: Options,
    /// The btrfs filesystem: `base` (the data), `source` (a fresh writable snapshot of it
    /// for every measured pair), `snapshots`, and `plan`, `plan-snapshots` for planning.
    fs: PathBuf,
    /// A tmpfs, `TMPDIR` of every measured command.
    temp: PathBuf,
    /// Configs, logs and stream files.
    work: PathBuf,
}

pub fn run(options: &Options) -> Result<()> {
    require_root("cargo xtask bench")?;
    tools::ensure_build_prerequisites()?;
    cmd::run(cmd::cargo().args(["build", "--release", "-p", "btrfs2s3-cli"]))?;
    let examples = build_s3_examples(&["upload", "fill-bucket"])?;
    let venv = tools::ensure_venv("venv-btrfs2s3-2.1.0", PYTHON_REQUIREMENT, "btrfs2s3")?;
    let release = cmd::workspace_root().join("target/release");
    let programs = Programs {
        ours: release.join("btrfs2s3"),
        python: venv.join("btrfs2s3"),
        upload: examples.join("upload"),
        fill: examples.join("fill-bucket"),
    };
    let size = options.size_mib << 20;
    let mut env = TestEnv::empty()?;
    let fs = env.add_btrfs_sized("bench", 3 * size + (2 << 30))?;
    // The Python tool keeps a whole part (up to 5 GiB) in a temporary file.
    let temp = env.add_tmpfs("tmp", size + size / 4 + (256 << 20))?;
    let work = env.dir().join("work");
    std::fs::create_dir_all(&work)?;
    let bench = Bench {
        programs,
        options: options.clone(),
        fs,
        temp,
        work,
    };
    bench.make_base()?;
    let backups = bench.backups()?;
    let planning = bench.planning()?;
    let startup = bench.startup()?;
    report(options, &backups, &planning, &startup)
}

/// The figures of the backup measurements.
struct Backups {
    full: Rows,
    differential: Rows,
    /// Full backups to two remotes.
    two_remotes: Rows,
    /// The sizes of the full and the differential stream.
    stream_bytes: (u64, u64),
}

impl Bench {
    fn btrfs<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Result<String> {
        cmd::output(Command::new("btrfs").args(args))
    }

    fn delete_subvolume(path: &Path) -> Result<()> {
        Self::btrfs([
            OsStr::new("subvolume"),
            OsStr::new("delete"),
            path.as_os_str(),
        ])?;
        Ok(())
    }

    /// Room for what one server holds: the streams of a full and a differential backup, or
    /// the planning bucket.
    fn server_bytes(&self) -> u64 {
        2 * (self.options.size_mib << 20) + (512 << 20)
    }

    fn data_files(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = std::fs::read_dir(self.fs.join("base"))?
            .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<std::io::Result<_>>()?;
        names.sort();
        Ok(names)
    }

    /// `base`: the data, in files of 64 MiB.
    fn make_base(&self) -> Result<()> {
        eprintln!(
            "xtask: writing {} MiB of incompressible data",
            self.options.size_mib
        );
        let base = self.fs.join("base");
        Self::btrfs([
            OsStr::new("subvolume"),
            OsStr::new("create"),
            base.as_os_str(),
        ])?;
        let size = self.options.size_mib << 20;
        let file_size = 64u64 << 20;
        for (n, start) in (0..size).step_by(64 << 20).enumerate() {
            write_random_file(
                &base.join(format!("data-{n:03}")),
                file_size.min(size - start),
            )?;
        }
        Self::btrfs([
            OsStr::new("filesystem"),
            OsStr::new("sync"),
            self.fs.as_os_str(),
        ])?;
        Ok(())
    }

    /// A fresh `source` (a writable snapshot of `base`) and an empty `snapshots`.
    fn reset(&self) -> Result<()> {
        let snapshots = self.fs.join("snapshots");
        if snapshots.is_dir() {
            for entry in std::fs::read_dir(&snapshots)? {
                let path = entry?.path();
                Self::delete_subvolume(&path)?;
            }
        }
        std::fs::create_dir_all(&snapshots)?;
        let source = self.fs.join("source");
        if source.exists() {
            Self::delete_subvolume(&source)?;
        }
        let base = self.fs.join("base");
        Self::btrfs([
            OsStr::new("subvolume"),
            OsStr::new("snapshot"),
            base.as_os_str(),
            source.as_os_str(),
        ])?;
        // Deleted subvolumes are cleaned up in the background: wait for that, so it does
        // not compete with the measurement.
        Self::btrfs([
            OsStr::new("subvolume"),
            OsStr::new("sync"),
            self.fs.as_os_str(),
        ])?;
        Self::btrfs([
            OsStr::new("filesystem"),
            OsStr::new("sync"),
            self.fs.as_os_str(),
        ])?;
        Ok(())
    }

    /// Overwrites 1% of the source's data with new random bytes, in 1 MiB pieces at places
    /// that depend on `seed`.
    fn modify(&self, seed: u64) -> Result<()> {
        use std::os::unix::fs::FileExt as _;
        let files = self.data_files()?;
        let source = self.fs.join("source");
        let total = (self.options.size_mib << 20) / 100;
        let mut random = std::fs::File::open("/dev/urandom")?;
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut done = 0;
        let mut buffer = vec![0u8; 1 << 20];
        while done < total {
            let len = (total - done).min(1 << 20);
            let name = &files[usize::try_from(next() % files.len() as u64)?];
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(source.join(name))?;
            let room = file.metadata()?.len().saturating_sub(len) / 4096;
            let offset = if room == 0 { 0 } else { next() % room * 4096 };
            let piece = &mut buffer[..usize::try_from(len)?];
            std::io::Read::read_exact(&mut random, piece)?;
            file.write_all_at(piece, offset)?;
            done += len;
        }
        Self::btrfs([
            OsStr::new("filesystem"),
            OsStr::new("sync"),
            source.as_os_str(),
        ])?;
        Ok(())
    }

    /// A config for one source and one remote, with the credentials left to the environment
    /// (the Python tool ignores them in the file).
    fn config(
        &self,
        name: &str,
        source: (&str, &str),
        bucket: &str,
        garage: &S3Endpoint,
        preserve: &str,
    ) -> Result<PathBuf> {
        self.config_remotes(name, source, &[bucket], garage, preserve)
    }

    /// A config for one source uploading to one remote per bucket of `buckets`.
    fn config_remotes(
        &self,
        name: &str,
        (source, snapshots): (&str, &str),
        buckets: &[&str],
        garage: &S3Endpoint,
        preserve: &str,
    ) -> Result<PathBuf> {
        use std::fmt::Write as _;
        let path = self.work.join(format!("{name}.yaml"));
        let mut yaml = format!(
            "timezone: UTC\nsources:\n  - path: {}\n    snapshots: {}\n    upload_to_remotes:\n",
            self.fs.join(source).display(),
            self.fs.join(snapshots).display(),
        );
        let id = |n: usize| {
            if n == 0 {
                "bench".to_owned()
            } else {
                format!("bench{n}")
            }
        };
        for n in 0..buckets.len() {
            let _ = write!(
                yaml,
                "      - id: {}\n        preserve: {preserve}\n",
                id(n)
            );
        }
        yaml.push_str("remotes:\n");
        for (n, bucket) in buckets.iter().enumerate() {
            let _ = write!(
                yaml,
                "  - id: {}\n    s3:\n      bucket: {bucket}\n      endpoint:\n        endpoint_url: {}\n        region_name: {}\n",
                id(n),
                garage.endpoint,
                garage.region,
            );
        }
        std::fs::write(&path, yaml)?;
        Ok(path)
    }

    fn tool(&self, tool: Tool, garage: &S3Endpoint) -> Command {
        let mut command = Command::new(match tool {
            Tool::Ours => &self.programs.ours,
            Tool::Python => &self.programs.python,
        });
        garage.credentials(&mut command);
        command
    }

    fn measure(&self, command: &mut Command, input: &[u8], log: &str) -> Result<Sample> {
        measure(
            command,
            &self.temp,
            input,
            &self.work.join(format!("{log}.log")),
        )
    }

    /// Creates `bucket` (with no objects) or fills it with `count` backup objects.
    fn fill_bucket(&self, garage: &S3Endpoint, bucket: &str, extra: &[&str]) -> Result<String> {
        let mut command = Command::new(&self.programs.fill);
        garage.credentials(&mut command);
        cmd::output(
            command
                .args(["--endpoint", &garage.endpoint, "--region", garage.region])
                .args(["--bucket", bucket, "--create-bucket"])
                .args(extra),
        )
    }

    /// How many backups `list` finds through `config`: the measured run must have made them.
    fn count_backups(&self, config: &Path, garage: &S3Endpoint) -> Result<usize> {
        let listing = cmd::output(
            self.tool(Tool::Ours, garage)
                .args(["list", "--json"])
                .arg(config),
        )?;
        let json: serde_json::Value = serde_json::from_str(&listing)?;
        Ok(count_keys(&json))
    }

    fn backups(&self) -> Result<Backups> {
        let mut backups = Backups {
            full: Rows::default(),
            differential: Rows::default(),
            two_remotes: Rows::default(),
            stream_bytes: (0, 0),
        };
        for run in 0..self.options.runs {
            for tool in Tool::order(run) {
                self.reset()?;
                let (_server, garage) = fresh_garage(self.server_bytes())?;
                let name = format!("{}-{run}", tool.slug());
                self.fill_bucket(&garage, &name, &[])?;
                let config = self.config(
                    &name,
                    ("source", "snapshots"),
                    &name,
                    &garage,
                    "1y 1m 1d 1h",
                )?;
                for (kind, rows) in [
                    ("full", &mut backups.full),
                    ("differential", &mut backups.differential),
                ] {
                    if kind == "differential" {
                        self.modify(run as u64 + 1)?;
                    }
                    eprintln!("xtask: run {run}: {} {kind} backup", tool.row());
                    let sample = self.measure(
                        self.tool(tool, &garage)
                            .args(["update", "--force"])
                            .arg(&config),
                        b"",
                        &format!("{name}-{kind}"),
                    )?;
                    rows.push(tool.row(), sample);
                }
                let found = self.count_backups(&config, &garage)?;
                if found != 2 {
                    return Err(format!(
                        "{}: expected a full and a differential backup in the bucket, found {found}",
                        tool.row()
                    )
                    .into());
                }
                if tool == Tool::Ours {
                    backups.stream_bytes = self.baselines(run, &mut backups)?;
                }
            }
            for tool in Tool::order(run) {
                let sample = self.two_remotes(run, tool)?;
                backups.two_remotes.push(tool.row(), sample);
            }
        }
        Ok(backups)
    }

    /// A full backup of a fresh source to two buckets.
    fn two_remotes(&self, run: usize, tool: Tool) -> Result<Sample> {
        self.reset()?;
        let (_server, garage) = fresh_garage(self.server_bytes())?;
        let name = format!("{}-two-{run}", tool.slug());
        let buckets = [format!("{name}-a"), format!("{name}-b")];
        for bucket in &buckets {
            self.fill_bucket(&garage, bucket, &[])?;
        }
        let config = self.config_remotes(
            &name,
            ("source", "snapshots"),
            &[&buckets[0], &buckets[1]],
            &garage,
            "1y 1m 1d 1h",
        )?;
        eprintln!(
            "xtask: run {run}: {} full backup to two remotes",
            tool.row()
        );
        let sample = self.measure(
            self.tool(tool, &garage)
                .args(["update", "--force"])
                .arg(&config),
            b"",
            &name,
        )?;
        let found = self.count_backups(&config, &garage)?;
        if found != 2 {
            return Err(format!(
                "{}: expected a full backup in each of two buckets, found {found}",
                tool.row()
            )
            .into());
        }
        Ok(sample)
    }

    /// The limits, on the snapshots ours just backed up: `btrfs send` into /dev/null, and a
    /// plain upload of each stream from a file. Returns the sizes of the two streams.
    fn baselines(&self, run: usize, backups: &mut Backups) -> Result<(u64, u64)> {
        let mut snapshots: Vec<PathBuf> = std::fs::read_dir(self.fs.join("snapshots"))?
            .map(|entry| entry.map(|e| e.path()))
            .collect::<std::io::Result<_>>()?;
        // Named <source>.<ctime>.<ctransid>: in the order of creation by ctransid.
        snapshots.sort_by_key(|path| {
            path.extension()
                .and_then(|ctransid| ctransid.to_str()?.parse::<u64>().ok())
        });
        let [first, second] = snapshots.as_slice() else {
            return Err(format!("expected two snapshots, found {snapshots:?}").into());
        };
        let sends: [(&mut Rows, Option<&PathBuf>, &PathBuf, &str); 2] = [
            (&mut backups.full, None, first, "full"),
            (
                &mut backups.differential,
                Some(first),
                second,
                "differential",
            ),
        ];
        let (_server, garage) = fresh_garage(self.server_bytes())?;
        let bucket = format!("plain-{run}");
        self.fill_bucket(&garage, &bucket, &[])?;
        let mut sizes = Vec::new();
        for (rows, parent, snapshot, kind) in sends {
            let send = |output: &Path| {
                let mut command = Command::new("btrfs");
                command.args(["send", "-q"]);
                if let Some(parent) = parent {
                    command.arg("-p").arg(parent);
                }
                command.arg("-f").arg(output).arg(snapshot);
                command
            };
            eprintln!("xtask: run {run}: baselines, {kind}");
            let sample = self.measure(
                &mut send(Path::new("/dev/null")),
                b"",
                &format!("send-{run}-{kind}"),
            )?;
            rows.push(SEND, sample);
            let stream = self.work.join(format!("{kind}.stream"));
            cmd::run(&mut send(&stream))?;
            sizes.push(std::fs::metadata(&stream)?.len());
            let mut upload = Command::new(&self.programs.upload);
            garage.credentials(&mut upload);
            upload
                .args(["--endpoint", &garage.endpoint, "--region", garage.region])
                .args(["--bucket", &bucket, "--key", kind, "--put-file"])
                .arg(&stream);
            let sample = self.measure(&mut upload, b"", &format!("put-{run}-{kind}"))?;
            rows.push(PUT, sample);
            let mut streamed = Command::new(&self.programs.upload);
            garage.credentials(&mut streamed);
            streamed
                .args(["--endpoint", &garage.endpoint, "--region", garage.region])
                .args(["--bucket", &bucket, "--key", &format!("{kind}-streamed")])
                .arg("--stream-file")
                .arg(&stream);
            let sample = self.measure(&mut streamed, b"", &format!("streamed-{run}-{kind}"))?;
            rows.push(STREAMED, sample);
            std::fs::remove_file(&stream)?;
        }
        Ok((sizes[0], sizes[1]))
    }

    /// Planning: many snapshots on disk, many backup objects in the bucket.
    fn planning(&self) -> Result<Rows> {
        let (count, objects) = (self.options.snapshots, self.options.objects);
        let source = self.fs.join("plan");
        let snapshots = self.fs.join("plan-snapshots");
        Self::btrfs([
            OsStr::new("subvolume"),
            OsStr::new("create"),
            source.as_os_str(),
        ])?;
        std::fs::create_dir_all(&snapshots)?;
        eprintln!("xtask: planning: taking {count} snapshots");
        for n in 0..count {
            // A change between snapshots, so that each has its own ctransid.
            std::fs::write(source.join("counter"), n.to_string())?;
            let snapshot = snapshots.join(format!("plan.{n:06}"));
            Self::btrfs([
                OsStr::new("subvolume"),
                OsStr::new("snapshot"),
                OsStr::new("-r"),
                source.as_os_str(),
                snapshot.as_os_str(),
            ])?;
        }
        let uuid = subvolume_uuid(&source)?;
        let (_server, garage) = fresh_garage(self.server_bytes())?;
        eprintln!("xtask: planning: putting {objects} backup objects");
        let filled = self.fill_bucket(
            &garage,
            "planning",
            &[
                "--count",
                &objects.to_string(),
                "--name",
                "plan",
                "--source-uuid",
                &uuid,
            ],
        )?;
        eprintln!("xtask: planning: {}", filled.trim());
        let config = self.config(
            "planning",
            ("plan", "plan-snapshots"),
            "planning",
            &garage,
            "1y 3m 30d 24h",
        )?;
        let mut rows = Rows::default();
        for run in 0..self.options.runs {
            for tool in Tool::order(run) {
                eprintln!("xtask: run {run}: {} planning", tool.row());
                let log = format!("planning-{}-{run}", tool.slug());
                let sample = match tool {
                    Tool::Ours => self.measure(
                        self.tool(tool, &garage)
                            .args(["update", "--pretend"])
                            .arg(&config),
                        b"",
                        &log,
                    )?,
                    // The Python tool has no --pretend: it shows the plan and asks, on a
                    // terminal; `script` gives it one, and we answer no.
                    Tool::Python => {
                        let line = format!(
                            "{} update {}",
                            self.programs.python.display(),
                            config.display()
                        );
                        let mut script = Command::new("script");
                        garage.credentials(&mut script);
                        script.args(["-qec", &line, "/dev/null"]);
                        self.measure(&mut script, b"n\n", &log)?
                    }
                };
                let printed = std::fs::read_to_string(self.work.join(format!("{log}.log")))?;
                let expected = match tool {
                    Tool::Ours => "actions:",
                    Tool::Python => "continue?",
                };
                if !printed.contains(expected) {
                    return Err(format!(
                        "{} planning did not get to the plan; see {log}.log in {}",
                        tool.row(),
                        self.work.display()
                    )
                    .into());
                }
                rows.push(tool.row(), sample);
                // A snapshot the Python tool took and we declined to use.
                for entry in std::fs::read_dir(&snapshots)? {
                    let path = entry?.path();
                    if path.to_string_lossy().contains(".NEW.") {
                        Self::delete_subvolume(&path)?;
                    }
                }
            }
        }
        Ok(rows)
    }

    /// Start-up: `--help`, ten times per run.
    fn startup(&self) -> Result<Rows> {
        let mut rows = Rows::default();
        for run in 0..self.options.runs * 10 {
            for tool in Tool::order(run) {
                let program = match tool {
                    Tool::Ours => &self.programs.ours,
                    Tool::Python => &self.programs.python,
                };
                let sample = self.measure(
                    Command::new(program).arg("--help"),
                    b"",
                    &format!("help-{}", tool.slug()),
                )?;
                rows.push(tool.row(), sample);
            }
        }
        Ok(rows)
    }
}

/// A Garage server of its own, stopped when the returned environment drops, holding its
/// data in a tmpfs of `bytes`: the server's disk is not what is measured, and its
/// background writeback would add noise to the next measurement.
pub(super) fn fresh_garage(bytes: u64) -> Result<(TestEnv, S3Endpoint)> {
    let mut env = TestEnv::empty()?;
    let root = env.add_tmpfs("garage", bytes)?;
    let garage = env.add_garage_in(&root)?;
    Ok((env, garage))
}

/// The uuid of a subvolume, from `btrfs subvolume show`.
fn subvolume_uuid(path: &Path) -> Result<String> {
    let show = Bench::btrfs([
        OsStr::new("subvolume"),
        OsStr::new("show"),
        path.as_os_str(),
    ])?;
    show.lines()
        .find_map(|line| line.trim().strip_prefix("UUID:"))
        .map(|uuid| uuid.trim().to_owned())
        .ok_or_else(|| format!("no UUID in btrfs subvolume show {}", path.display()).into())
}

/// The number of backup keys anywhere in a `list --json` document.
fn count_keys(json: &serde_json::Value) -> usize {
    match json {
        serde_json::Value::Object(map) => map
            .iter()
            .map(|(name, value)| match value {
                serde_json::Value::String(key) if name == "key" && key.contains(".mdvn") => 1,
                other => count_keys(other),
            })
            .sum(),
        serde_json::Value::Array(items) => items.iter().map(count_keys).sum(),
        _ => 0,
    }
}

/// One figure of a row: its median with the range, or just the median.
fn figure(samples: &[Sample], value: impl Fn(&Sample) -> f64, range: bool) -> String {
    let values: Vec<f64> = samples.iter().map(value).collect();
    match Stats::of(&values) {
        Some(stats) if range => format!("{:.2} ({:.2}–{:.2})", stats.median, stats.min, stats.max),
        Some(stats) => format!("{:.1}", stats.median),
        None => "-".to_owned(),
    }
}

fn print_table(title: &str, rows: &Rows, bytes: Option<u64>) {
    println!("\n{title}");
    println!(
        "  {:<36} {:>22} {:>22} {:>7} {:>13} {:>9}",
        "", "wall s", "MiB/s", "CPU s", "peak RSS MiB", "temp MiB"
    );
    for (name, samples) in &rows.0 {
        let throughput = bytes.map_or_else(
            || "-".to_owned(),
            |bytes| figure(samples, |s| bytes as f64 / MIB / s.wall, true),
        );
        println!(
            "  {:<36} {:>22} {:>22} {:>7} {:>13} {:>9}",
            name,
            figure(samples, |s| s.wall, true),
            throughput,
            figure(samples, |s| s.cpu, false),
            figure(samples, |s| s.peak_rss as f64 / MIB, false),
            figure(samples, |s| s.temp_bytes as f64 / MIB, false),
        );
    }
}

fn rows_json(rows: &Rows, bytes: Option<u64>) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for (name, samples) in &rows.0 {
        let series = |value: &dyn Fn(&Sample) -> f64| -> serde_json::Value {
            let values: Vec<f64> = samples.iter().map(value).collect();
            serde_json::json!({
                "samples": values,
                "stats": Stats::of(&values).map(Stats::to_json),
            })
        };
        out.insert(
            (*name).to_owned(),
            serde_json::json!({
                "wall_s": series(&|s| s.wall),
                "throughput_mib_s": bytes.map(|bytes| series(&|s| bytes as f64 / MIB / s.wall)),
                "cpu_s": series(&|s| s.cpu),
                "peak_rss_mib": series(&|s| s.peak_rss as f64 / MIB),
                "temp_mib": series(&|s| s.temp_bytes as f64 / MIB),
            }),
        );
    }
    serde_json::Value::Object(out)
}

/// The ratios of medians (how many times faster ours is: full vs the Python tool, full vs
/// the plain upload, full vs our upload path alone, differential vs the Python tool,
/// planning, start-up) and the goals.
struct Verdict {
    ratios: [f64; 6],
    /// Two remotes: ours against the Python tool (throughput), and each tool's two-remote
    /// full backup over its one-remote one (wall, CPU): ours, then the Python tool's.
    two_remotes: TwoRemotes,
    goals: [(&'static str, bool, String); 5],
}

/// The figures of the two-remote full backup.
struct TwoRemotes {
    vs_python: f64,
    ours_wall: f64,
    ours_cpu: f64,
    python_wall: f64,
    python_cpu: f64,
}

fn verdict(backups: &Backups, planning: &Rows, startup: &Rows) -> Verdict {
    let wall = |rows: &Rows, row: &str| rows.median(row, |s| s.wall);
    let full_vs_python = wall(&backups.full, PYTHON) / wall(&backups.full, OURS);
    let full_vs_put = wall(&backups.full, PUT) / wall(&backups.full, OURS);
    let full_vs_streamed = wall(&backups.full, STREAMED) / wall(&backups.full, OURS);
    let diff_vs_python = wall(&backups.differential, PYTHON) / wall(&backups.differential, OURS);
    let planning_vs_python = wall(planning, PYTHON) / wall(planning, OURS);
    let startup_vs_python = wall(startup, PYTHON) / wall(startup, OURS);
    let cpu = |rows: &Rows, row: &str| rows.median(row, |s| s.cpu);
    let two_remotes = TwoRemotes {
        vs_python: wall(&backups.two_remotes, PYTHON) / wall(&backups.two_remotes, OURS),
        ours_wall: wall(&backups.two_remotes, OURS) / wall(&backups.full, OURS),
        ours_cpu: cpu(&backups.two_remotes, OURS) / cpu(&backups.full, OURS),
        python_wall: wall(&backups.two_remotes, PYTHON) / wall(&backups.full, PYTHON),
        python_cpu: cpu(&backups.two_remotes, PYTHON) / cpu(&backups.full, PYTHON),
    };
    let ours: Vec<&Sample> = [&backups.full, &backups.differential, planning]
        .iter()
        .flat_map(|rows| rows.get(OURS))
        .collect();
    let peak_rss = ours.iter().map(|s| s.peak_rss).max().unwrap_or(0);
    let temp_bytes = ours.iter().map(|s| s.temp_bytes).max().unwrap_or(0);
    let goals = [
        (
            "full-backup throughput at least 2x the Python tool's",
            full_vs_python >= 2.0,
            format!("{full_vs_python:.2}x"),
        ),
        (
            "full-backup throughput at least 0.9x the plain upload's",
            full_vs_put >= 0.9,
            format!("{full_vs_put:.2}x"),
        ),
        (
            "peak RSS under 200 MB (every run of ours)",
            peak_rss < 200_000_000,
            format!("{:.1} MB", peak_rss as f64 / 1e6),
        ),
        (
            "zero temporary disk bytes (every run of ours)",
            temp_bytes == 0,
            format!("{temp_bytes} bytes"),
        ),
        (
            "planning at least 10x faster than the Python tool",
            planning_vs_python >= 10.0,
            format!("{planning_vs_python:.1}x"),
        ),
    ];
    Verdict {
        ratios: [
            full_vs_python,
            full_vs_put,
            full_vs_streamed,
            diff_vs_python,
            planning_vs_python,
            startup_vs_python,
        ],
        two_remotes,
        goals,
    }
}

fn report(options: &Options, backups: &Backups, planning: &Rows, startup: &Rows) -> Result<()> {
    let (full_bytes, diff_bytes) = backups.stream_bytes;
    println!(
        "\nbtrfs2s3 benchmark: {} MiB of incompressible data, {} runs; median (min–max)",
        options.size_mib, options.runs
    );
    print_table(
        &format!("full backup (stream of {:.1} MiB)", full_bytes as f64 / MIB),
        &backups.full,
        Some(full_bytes),
    );
    print_table(
        &format!(
            "differential backup after changing 1% (stream of {:.1} MiB)",
            diff_bytes as f64 / MIB
        ),
        &backups.differential,
        Some(diff_bytes),
    );
    print_table(
        &format!(
            "planning: {} backup objects, {} snapshots (ours: update --pretend; Python: update, answering n)",
            options.objects, options.snapshots
        ),
        planning,
        None,
    );
    print_table(
        &format!(
            "full backup to two remotes (stream of {:.1} MiB, twice)",
            full_bytes as f64 / MIB
        ),
        &backups.two_remotes,
        Some(2 * full_bytes),
    );
    print_table("start-up: --help", startup, None);

    let Verdict {
        ratios,
        two_remotes,
        goals,
    } = verdict(backups, planning, startup);
    let [
        full_vs_python,
        full_vs_put,
        full_vs_streamed,
        diff_vs_python,
        planning_vs_python,
        startup_vs_python,
    ] = ratios;
    println!(
        "\nratios of medians (how many times faster ours is): full backup {full_vs_python:.2}x the Python tool, {full_vs_put:.2}x the plain upload, {full_vs_streamed:.2}x our upload path alone; differential {diff_vs_python:.2}x the Python tool; planning {planning_vs_python:.1}x; start-up {startup_vs_python:.1}x"
    );
    println!(
        "two remotes: ours {:.2}x the Python tool's throughput; two remotes over one: ours {:.2}x the wall time, {:.2}x the CPU (of btrfs2s3 and its children; the server's is not counted); the Python tool {:.2}x the wall time, {:.2}x the CPU",
        two_remotes.vs_python,
        two_remotes.ours_wall,
        two_remotes.ours_cpu,
        two_remotes.python_wall,
        two_remotes.python_cpu
    );
    println!("goals:");
    for (goal, met, value) in &goals {
        println!(
            "  [{}] {goal}: {value}",
            if *met { "met" } else { "MISSED" }
        );
    }

    let json = report_json(
        options,
        backups,
        planning,
        startup,
        &Verdict {
            ratios,
            two_remotes,
            goals,
        },
    );
    let path = report_dir()?.join("bench.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&json)?)?;
    println!("written to {}", path.display());
    Ok(())
}

/// The figures of `report` as JSON.
fn report_json(
    options: &Options,
    backups: &Backups,
    planning: &Rows,
    startup: &Rows,
    verdict: &Verdict,
) -> serde_json::Value {
    let (full_bytes, diff_bytes) = backups.stream_bytes;
    let Verdict {
        ratios,
        two_remotes,
        goals,
    } = verdict;
    let [
        full_vs_python,
        full_vs_put,
        full_vs_streamed,
        diff_vs_python,
        planning_vs_python,
        startup_vs_python,
    ] = *ratios;
    serde_json::json!({
        "benchmark": "compare",
        "size_mib": options.size_mib,
        "runs": options.runs,
        "objects": options.objects,
        "snapshots": options.snapshots,
        "cpus": std::thread::available_parallelism().map_or(0, usize::from),
        "full": { "stream_bytes": full_bytes, "rows": rows_json(&backups.full, Some(full_bytes)) },
        "differential": {
            "stream_bytes": diff_bytes,
            "rows": rows_json(&backups.differential, Some(diff_bytes)),
        },
        "two_remotes": {
            "rows": rows_json(&backups.two_remotes, Some(2 * full_bytes)),
            "ours_vs_python": two_remotes.vs_python,
            "ours_two_over_one_wall": two_remotes.ours_wall,
            "ours_two_over_one_cpu": two_remotes.ours_cpu,
            "python_two_over_one_wall": two_remotes.python_wall,
            "python_two_over_one_cpu": two_remotes.python_cpu,
        },
        "planning": { "rows": rows_json(planning, None) },
        "startup": { "rows": rows_json(startup, None) },
        "ratios": {
            "full_vs_python": full_vs_python,
            "full_vs_plain_upload": full_vs_put,
            "full_vs_upload_alone": full_vs_streamed,
            "differential_vs_python": diff_vs_python,
            "planning_vs_python": planning_vs_python,
            "startup_vs_python": startup_vs_python,
        },
        "goals": goals.iter().map(|(goal, met, value)| serde_json::json!({
            "goal": goal, "met": met, "value": value,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_keys_are_counted_wherever_they_are_in_the_listing() {
        let listing = serde_json::json!({
            "remotes": [{
                "sources": [{
                    "backups": [
                        {"key": "a.ctim2026.mdvn1.seqn0", "children": [
                            {"key": "b.ctim2026.mdvn1.seqn0", "children": []}
                        ]},
                    ],
                }],
                "foreign": [{"key": "notes.txt"}],
            }],
        });
        assert_eq!(count_keys(&listing), 2);
    }

    #[test]
    fn the_tools_take_turns_going_first() {
        assert_eq!(Tool::order(0), [Tool::Ours, Tool::Python]);
        assert_eq!(Tool::order(1), [Tool::Python, Tool::Ours]);
    }
}
