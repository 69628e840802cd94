//! The configuration file: the Python tool's YAML format, unchanged, plus optional keys of our
//! own. Loading validates everything that can be validated without touching the system, and
//! every error names the file, the line and column, and the key.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use btrfs2s3_policy::{Params, Timeframe};
use btrfs2s3_s3::{LockMode, RemoteConfig, Secret, UploadSettings, Verify};
use jiff::tz::TimeZone;
use serde::Deserialize;
use serde_saphyr::Spanned;

use std::io::Read as _;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::OpenOptionsExt as _;

use crate::pipeline::PipeCommand;
use crate::storage::{LockSettings, StorageClasses};
use crate::trust::{Kind, Trustee};

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was loaded from.
    pub path: PathBuf,
    /// The IANA name of the time zone policies are evaluated in.
    pub timezone_name: String,
    /// That time zone.
    pub timezone: TimeZone,
    /// The subvolumes to back up.
    pub sources: Vec<SourceConfig>,
    /// The buckets, by id, in file order.
    pub remotes: Vec<Remote>,
    /// How many upload streams run at a time (`parallel_uploads:`, default 2).
    pub parallel_uploads: usize,
    /// Warnings that do not stop the run (a world-readable file holding secrets).
    pub warnings: Vec<String>,
}

/// One source: a subvolume, where its snapshots live, and where its backups go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceConfig {
    /// The subvolume.
    pub path: PathBuf,
    /// The directory of its snapshots, on the same filesystem.
    pub snapshots: PathBuf,
    /// The remotes it is backed up to.
    pub upload_to_remotes: Vec<UploadConfig>,
}

/// How one source is backed up to one remote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadConfig {
    /// The remote's id.
    pub remote_id: String,
    /// The preservation policy.
    pub preserve: Params,
    /// Commands the send stream is piped through, in order (run without a shell); their
    /// programs are looked up and checked by [`load`].
    pub pipe_through: Vec<PipeCommand>,
    /// The storage classes of new backups (`storage_class:`); the bucket's default without.
    pub storage_classes: Option<StorageClasses>,
    /// The send stream's format (`send_protocol:`).
    pub send_protocol: SendProtocol,
}

impl UploadConfig {
    /// The `pipe_through` commands as they run, programs as looked up:
    /// `/usr/bin/zstd -T0 | /usr/bin/age -r age1...` (not escaped); `None` without commands.
    #[must_use]
    pub fn pipeline_shown(&self) -> Option<String> {
        (!self.pipe_through.is_empty()).then(|| {
            self.pipe_through
                .iter()
                .map(PipeCommand::shown)
                .collect::<Vec<_>>()
                .join(" | ")
        })
    }
}

/// The format of a send stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize)]
pub enum SendProtocol {
    /// Version 1: every extent's data as plain bytes; any `btrfs receive` reads it.
    #[default]
    #[serde(rename = "1")]
    V1,
    /// Version 2 with compressed extents sent as they are on disk (`encoded_write`):
    /// smaller streams from a compressed filesystem; `btrfs receive` needs btrfs-progs 5.19
    /// or newer.
    #[serde(rename = "2")]
    V2,
}

impl SendProtocol {
    /// Whether this is version 1, the default.
    #[must_use]
    pub fn is_v1(&self) -> bool {
        *self == SendProtocol::V1
    }
}

/// A remote: an id and how to reach its bucket.
#[derive(Debug, Clone)]
pub struct Remote {
    /// The id sources refer to.
    pub id: String,
    /// The bucket and connection settings.
    pub s3: RemoteConfig,
    /// Object lock of new backups (`object_lock:`).
    pub object_lock: Option<LockSettings>,
}

impl Config {
    /// The remote with this id.
    #[must_use]
    pub fn remote(&self, id: &str) -> Option<&Remote> {
        self.remotes.iter().find(|remote| remote.id == id)
    }
}

/// A configuration that cannot be used: where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// Where in the file, when the problem has a place.
    pub position: Option<Position>,
    /// What is wrong, naming the key.
    pub message: String,
}

/// A place in a config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The line, from 1.
    pub line: u64,
    /// The column, from 1.
    pub column: u64,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some(Position { line, column }) => write!(
                f,
                "invalid config {}:{line}:{column}: {}",
                self.path.display(),
                self.message
            ),
            None => write!(
                f,
                "invalid config {}: {}",
                self.path.display(),
                self.message
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Largest config file we read: configs are small, and this bounds memory on garbage input.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    timezone: Spanned<String>,
    sources: Spanned<Vec<RawSource>>,
    remotes: Spanned<Vec<RawRemote>>,
    #[serde(default)]
    parallel_uploads: Option<Spanned<usize>>,
}

/// A config read only for its remotes (`list`, `restore`, `verify`): the sources are not
/// looked at (their paths may not exist on the machine doing a restore), and the time zone
/// may be left out (UTC then).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRemotesConfig {
    #[serde(default)]
    timezone: Option<Spanned<String>>,
    #[serde(default)]
    #[allow(dead_code)] // present in full configs; deliberately not read
    sources: Option<serde::de::IgnoredAny>,
    remotes: Spanned<Vec<RawRemote>>,
    #[serde(default)]
    #[allow(dead_code)] // only uploads run in parallel
    parallel_uploads: Option<serde::de::IgnoredAny>,
}

/// What a command needs from the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// Everything (`update`).
    Everything,
    /// Only the remotes and the time zone (`list`, `restore`, `verify`).
    RemotesOnly,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    path: Spanned<String>,
    snapshots: Spanned<String>,
    upload_to_remotes: Spanned<Vec<RawUpload>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpload {
    id: Spanned<String>,
    preserve: Spanned<String>,
    #[serde(default)]
    pipe_through: Option<Vec<Spanned<Vec<String>>>>,
    // Our own optional keys.
    #[serde(default)]
    storage_class: Option<Spanned<RawStorageClass>>,
    #[serde(default)]
    min_days: Option<Spanned<BTreeMap<String, Spanned<u32>>>>,
    #[serde(default)]
    send_protocol: Option<Spanned<u32>>,
}

/// `storage_class:`: one class, or a mapping from units to classes.
enum RawStorageClass {
    One(String),
    ByUnit(BTreeMap<String, String>),
}

/// By hand rather than `#[serde(untagged)]`: an untagged enum reads `y` as YAML 1.1's
/// boolean, and the unit of years would never be a key.
impl<'de> Deserialize<'de> for RawStorageClass {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Expected;
        impl<'de> serde::de::Visitor<'de> for Expected {
            type Value = RawStorageClass;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a storage class, or a mapping from units (y, q, m, w, d, h, M, s) and `default` to storage classes",
                )
            }

            fn visit_str<E: serde::de::Error>(self, class: &str) -> Result<Self::Value, E> {
                Ok(RawStorageClass::One(class.to_owned()))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut entries: A,
            ) -> Result<Self::Value, A::Error> {
                let mut map = BTreeMap::new();
                while let Some((unit, class)) = entries.next_entry::<String, String>()? {
                    map.insert(unit, class);
                }
                Ok(RawStorageClass::ByUnit(map))
            }
        }
        deserializer.deserialize_any(Expected)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawObjectLock {
    mode: Spanned<String>,
    #[serde(default)]
    extra: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRemote {
    id: Spanned<String>,
    s3: RawS3,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawS3 {
    bucket: Spanned<String>,
    #[serde(default)]
    endpoint: Option<RawEndpoint>,
    // Our own optional keys.
    #[serde(default)]
    part_size_mib: Option<Spanned<u64>>,
    #[serde(default)]
    parts_in_flight: Option<Spanned<usize>>,
    #[serde(default)]
    rate_limit: Option<Spanned<String>>,
    #[serde(default)]
    max_object_size: Option<Spanned<String>>,
    #[serde(default)]
    max_attempts: Option<Spanned<u32>>,
    #[serde(default)]
    timeout_seconds: Option<Spanned<u64>>,
    #[serde(default)]
    object_lock: Option<RawObjectLock>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    #[serde(default)]
    aws_access_key_id: Option<Spanned<String>>,
    #[serde(default)]
    aws_secret_access_key: Option<Spanned<String>>,
    #[serde(default)]
    region_name: Option<String>,
    #[serde(default)]
    profile_name: Option<String>,
    #[serde(default)]
    verify: Option<Spanned<RawVerify>>,
    #[serde(default)]
    endpoint_url: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged, expecting = "true, false or the path of a CA bundle")]
enum RawVerify {
    Bool(bool),
    Path(String),
}

/// Loads and validates the config at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    load_for(path, Needs::Everything)
}

/// Loads and validates what `needs` asks for of the config at `path`.
pub fn load_for(path: &Path, needs: Needs) -> Result<Config, ConfigError> {
    let error = |message: String| ConfigError {
        path: path.to_path_buf(),
        position: None,
        message,
    };
    // Opened once, and everything checked on what was opened: a file swapped between the
    // checks and the read is not read. Non-blocking, so that a FIFO does not hang us.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)
        .map_err(|e| error(format!("cannot read the file: {e}")))?;
    let metadata = file
        .metadata()
        .map_err(|e| error(format!("cannot read the file: {e}")))?;
    if !metadata.is_file() {
        return Err(error("not a regular file".to_owned()));
    }
    // It decides what btrfs2s3 runs, as root: nobody else may be able to change it.
    let trustee = Trustee::current();
    let untrusted = |e: crate::trust::Untrusted| error(e.to_string());
    crate::trust::check_metadata(Kind::Config, path, &metadata, trustee).map_err(untrusted)?;
    let opened = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .or_else(|_| std::fs::canonicalize(path))
        .map_err(|e| error(format!("cannot read the file: {e}")))?;
    crate::trust::check_directories(&opened, trustee).map_err(untrusted)?;
    if metadata.len() > MAX_CONFIG_BYTES {
        return Err(error(format!(
            "the file is {} bytes long; a config is at most {MAX_CONFIG_BYTES}",
            metadata.len()
        )));
    }
    let mut bytes = Vec::new();
    (&mut file)
        .take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| error(format!("cannot read the file: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let offset = e.utf8_error().valid_up_to();
        let before = &e.as_bytes()[..offset];
        let lines: Vec<&[u8]> = before.split(|b| *b == b'\n').collect();
        let line = lines.len() as u64;
        let column = lines.last().map_or(0, |last| last.len()) as u64 + 1;
        ConfigError {
            path: path.to_path_buf(),
            position: Some(Position { line, column }),
            message: "the file is not valid UTF-8".to_owned(),
        }
    })?;
    let mut config = parse_for(path, &text, needs)?;
    resolve_programs(&mut config, trustee).map_err(error)?;
    if has_secrets(&config) {
        use std::os::unix::fs::PermissionsExt;
        let mode = metadata.permissions().mode();
        if mode & 0o044 != 0 {
            config.warnings.push(format!(
                "{} holds secret keys and other users can read it (mode {:o}); consider `chmod 600 {}`",
                path.display(),
                mode & 0o777,
                path.display()
            ));
        }
    }
    Ok(config)
}

/// Looks up every `pipe_through` program (in the system's PATH, for a bare name) and checks
/// that nobody but root and `trustee` can change it.
fn resolve_programs(config: &mut Config, trustee: Trustee) -> Result<(), String> {
    for source in &mut config.sources {
        for upload in &mut source.upload_to_remotes {
            for command in &mut upload.pipe_through {
                *command =
                    PipeCommand::resolved(command.argv().to_vec(), trustee).map_err(|e| {
                        format!(
                            "sources: {}: upload_to_remotes: {}: pipe_through: {e}",
                            source.path.display(),
                            upload.remote_id
                        )
                    })?;
            }
        }
    }
    Ok(())
}

fn has_secrets(config: &Config) -> bool {
    config
        .remotes
        .iter()
        .any(|remote| remote.s3.secret_access_key.is_some())
}

/// Parses and validates config text; `path` is only used in errors.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    parse_for(path, text, Needs::Everything)
}

/// Parses and validates what `needs` asks for of config text.
pub fn parse_for(path: &Path, text: &str, needs: Needs) -> Result<Config, ConfigError> {
    let at = |location: &serde_saphyr::Location, message: String| ConfigError {
        path: path.to_path_buf(),
        position: Some(Position {
            line: location.line(),
            column: location.column(),
        }),
        message,
    };
    let (timezone, raw_sources, raw_remotes, parallel) = match needs {
        Needs::Everything => {
            let raw: RawConfig = deserialize(path, text)?;
            (
                Some(raw.timezone),
                Some(raw.sources),
                raw.remotes,
                raw.parallel_uploads,
            )
        }
        Needs::RemotesOnly => {
            let raw: RawRemotesConfig = deserialize(path, text)?;
            (raw.timezone, None, raw.remotes, None)
        }
    };
    let parallel_uploads = match parallel {
        Some(parallel) if !(1..=16).contains(&parallel.value) => {
            return Err(at(
                &parallel.referenced,
                "parallel_uploads: must be between 1 and 16".to_owned(),
            ));
        }
        Some(parallel) => parallel.value,
        None => DEFAULT_PARALLEL_UPLOADS,
    };
    let (timezone_name, timezone) = match timezone {
        Some(name) => {
            let timezone = TimeZone::get(&name.value).map_err(|_| {
                at(
                    &name.referenced,
                    format!(
                        "timezone: unknown time zone {:?} (expected an IANA name like \"Europe/Berlin\")",
                        name.value
                    ),
                )
            })?;
            (name.value, timezone)
        }
        None => ("UTC".to_owned(), TimeZone::UTC),
    };
    let (remotes, remote_ids) = parse_remotes(raw_remotes, &at)?;
    let sources = match raw_sources {
        Some(raw_sources) => parse_sources(raw_sources, &remote_ids, &at)?,
        None => Vec::new(),
    };
    let warnings = remotes
        .iter()
        .filter(|remote| remote.s3.upload.max_object_size < SMALL_OBJECT_SIZE)
        .map(|remote| {
            format!(
                "remote {:?}: max_object_size is {} bytes, below 5GiB: every backup longer than that is stored as several objects, which the Python tool cannot restore",
                remote.id, remote.s3.upload.max_object_size
            )
        })
        .collect();
    Ok(Config {
        path: path.to_path_buf(),
        timezone_name,
        timezone,
        sources,
        remotes,
        parallel_uploads,
        warnings,
    })
}

/// The largest `max_object_size`: Backblaze B2's largest object (10 TB); S3 takes 5 TiB.
pub const MAX_MAX_OBJECT_SIZE: u64 = 10_000_000_000_000;

/// A `max_object_size` below this gets a warning: it only makes sense for tests and for
/// providers with small objects.
const SMALL_OBJECT_SIZE: u64 = 5 << 30;

/// A size: `5TiB`, `16MiB`, `1.5GiB`, `10TB`, `123456` (bytes; suffixes KiB, MiB, GiB, TiB
/// and KB, MB, GB, TB).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let expected = || {
        format!(
            "expected a size like \"5TiB\" or \"16MiB\" (KiB, MiB, GiB, TiB, KB, MB, GB, TB), found {text:?}"
        )
    };
    let amount = text.trim();
    let (number, unit) = [
        ("KiB", 1u64 << 10),
        ("MiB", 1 << 20),
        ("GiB", 1 << 30),
        ("TiB", 1 << 40),
        ("KB", 1000),
        ("MB", 1_000_000),
        ("GB", 1_000_000_000),
        ("TB", 1_000_000_000_000),
    ]
    .into_iter()
    .find_map(|(suffix, unit)| Some((amount.strip_suffix(suffix)?, unit)))
    .unwrap_or((amount, 1));
    let number: f64 = number.trim().parse().map_err(|_| expected())?;
    #[allow(clippy::cast_precision_loss)]
    let bytes = (number * unit as f64).round();
    if !(0.0..=1e18).contains(&bytes) {
        return Err(expected());
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Ok(bytes as u64)
}

/// A bandwidth: `20MiB/s`, `512KiB/s`, `1.5GiB/s`, `100000/s` (bytes per second; the `/s` may be
/// left out). At least 1 KiB/s.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let expected =
        || format!("expected bytes per second like \"20MiB/s\" (KiB, MiB or GiB), found {text:?}");
    let trimmed = text.trim();
    let amount = trimmed.strip_suffix("/s").unwrap_or(trimmed).trim_end();
    let (number, unit) = [("KiB", 1u64 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30)]
        .into_iter()
        .find_map(|(suffix, unit)| Some((amount.strip_suffix(suffix)?, unit)))
        .unwrap_or((amount, 1));
    let number: f64 = number.trim().parse().map_err(|_| expected())?;
    #[allow(clippy::cast_precision_loss)]
    let bytes = number * unit as f64;
    if !(1024.0..=1e15).contains(&bytes) {
        return Err(format!(
            "must be between 1KiB/s and 1000TiB/s, found {text:?}"
        ));
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Ok(bytes as u64)
}

/// How many upload streams run at a time unless the config says: two keep a 2-core machine
/// busy while one stream waits on the network.
pub const DEFAULT_PARALLEL_UPLOADS: usize = 2;

/// The YAML into `T`, with serde-saphyr's errors turned into ours.
fn deserialize<'de, T: Deserialize<'de>>(path: &Path, text: &'de str) -> Result<T, ConfigError> {
    let mut options = serde_saphyr::options::Options::default();
    options.with_snippet = false;
    serde_saphyr::from_str_with_options(text, options).map_err(|e| {
        let position = e.location().map(|l| Position {
            line: l.line(),
            column: l.column(),
        });
        let mut message = e.to_string();
        if let Some(Position { line, column }) = position {
            let suffix = format!(" at line {line}, column {column}");
            if let Some(stripped) = message.strip_suffix(&suffix) {
                message = stripped.to_owned();
            }
        }
        let only_comments = text
            .lines()
            .all(|line| line.trim().is_empty() || line.trim_start().starts_with('#'));
        if message == "unexpected end of input" && only_comments {
            "the file is empty; it needs timezone, sources and remotes".clone_into(&mut message);
        } else if position == Some(Position { line: 1, column: 1 })
            && message == "expected mapping start"
        {
            "the file must be a mapping with the keys timezone, sources and remotes"
                .clone_into(&mut message);
        }
        message = match position.and_then(|position| key_at(text, position)) {
            Some((key, found)) => about_key(&key, &message, found),
            None => friendlier(&message),
        };
        ConfigError {
            path: path.to_path_buf(),
            position,
            message,
        }
    })
}

/// What kind of value starts at a position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    List,
    Mapping,
    Scalar,
}

impl Found {
    fn words(self) -> &'static str {
        match self {
            Found::List => "a list",
            Found::Mapping => "a mapping",
            Found::Scalar => "a single value",
        }
    }
}

/// The key whose value is at `position` (1-based line and column) of a YAML text, and what
/// kind of value is there: the `key:` before it on its line, or the nearest line above that
/// is less indented and ends in `key:`.
fn key_at(text: &str, position: Position) -> Option<(String, Found)> {
    let lines: Vec<&str> = text.lines().collect();
    let index = usize::try_from(position.line).ok()?.checked_sub(1)?;
    let line = *lines.get(index)?;
    let column = usize::try_from(position.column).ok()?.saturating_sub(1);
    let (before, at) = line.split_at(
        line.char_indices()
            .nth(column)
            .map_or(line.len(), |(i, _)| i),
    );
    let at = at.trim_start();
    let found = if at.starts_with('[') || at.starts_with("- ") || at == "-" {
        Found::List
    } else if at.starts_with('{') || mapping_key(at).is_some() {
        Found::Mapping
    } else {
        Found::Scalar
    };
    if let Some(key) = before
        .trim_end()
        .strip_suffix(':')
        .and_then(mapping_key_end)
    {
        return Some((key, found));
    }
    // A value on the lines after its key: the key is above, less indented.
    let indent = |line: &str| line.len() - line.trim_start_matches([' ', '-']).len();
    let own = indent(line);
    lines[..index]
        .iter()
        .rev()
        .filter(|above| !above.trim().is_empty() && !above.trim_start().starts_with('#'))
        .find(|above| indent(above) < own)
        .and_then(|above| above.trim_end().strip_suffix(':').and_then(mapping_key_end))
        .map(|key| (key, found))
}

/// The key `key: ...` starts with.
fn mapping_key(text: &str) -> Option<String> {
    let (key, _) = text.split_once(':')?;
    let key = key.trim();
    (!key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .then(|| key.to_owned())
}

/// The key at the end of `... key` (a line's text before its `:`).
fn mapping_key_end(text: &str) -> Option<String> {
    let key = text
        .rsplit([' ', '-', '{', ','])
        .next()
        .unwrap_or_default()
        .trim();
    (!key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .then(|| key.to_owned())
}

/// What a key's value should look like, for messages.
fn expected_value(key: &str) -> &'static str {
    match key {
        "preserve" => "a string like \"1y 3m 30d\"",
        "timezone" => "a time zone name like \"Europe/Berlin\"",
        "path" | "snapshots" | "ca_bundle" => "a path",
        "id" => "a remote id",
        "bucket" => "a bucket name",
        "pipe_through" => "a list of commands, each a list like [zstd, -T0]",
        "sources" => "a list of sources",
        "remotes" => "a list of remotes",
        "upload_to_remotes" => "a list of remotes to upload to",
        "storage_class" => "a storage class, or a mapping from units to storage classes",
        "object_lock" => "a mapping with mode (and extra)",
        _ => "",
    }
}

/// A YAML library message about the value of `key`, found to be `found`, in the words of a
/// config's reader, naming the key.
fn about_key(key: &str, message: &str, found: Found) -> String {
    let expected = expected_value(key);
    let kind = match message {
        "expected sequence start" => Some("a list"),
        "expected mapping start" => Some("a mapping (key: value)"),
        "expected string scalar" => Some("a single value"),
        _ => None,
    };
    if let Some(kind) = kind {
        let wanted = if expected.is_empty() { kind } else { expected };
        return format!("{key}: expected {wanted}, found {}", found.words());
    }
    let message = friendlier(message);
    if message.starts_with(key) || message.contains(&format!("`{key}`")) {
        message
    } else {
        format!("{key}: {message}")
    }
}

/// The YAML library's messages in the words of a config's reader.
fn friendlier(message: &str) -> String {
    let message = message
        .trim_end_matches(", set DuplicateKeyPolicy in Options if acceptable")
        .to_owned();
    match message.as_str() {
        "expected sequence start" => "expected a list here".to_owned(),
        "expected mapping start" => "expected a mapping (key: value) here".to_owned(),
        "expected string scalar" => "expected a single value (a string) here".to_owned(),
        "recursion limit exceeded" => "the YAML is nested too deeply".to_owned(),
        _ => message,
    }
}

/// Where each remote id is defined: id → line.
type RemoteIds = BTreeMap<String, u64>;

fn parse_remotes(
    raw_remotes: Spanned<Vec<RawRemote>>,
    at: &impl Fn(&serde_saphyr::Location, String) -> ConfigError,
) -> Result<(Vec<Remote>, RemoteIds), ConfigError> {
    if raw_remotes.value.is_empty() {
        return Err(at(
            &raw_remotes.referenced,
            "remotes: the list is empty; at least one remote is needed".to_owned(),
        ));
    }
    let mut remotes = Vec::new();
    let mut remote_ids = BTreeMap::new();
    for raw_remote in raw_remotes.value {
        let id = raw_remote.id.value.clone();
        if id.is_empty() {
            return Err(at(
                &raw_remote.id.referenced,
                "remotes: id: must not be empty".to_owned(),
            ));
        }
        if let Some(first_line) = remote_ids.insert(id.clone(), raw_remote.id.referenced.line()) {
            return Err(at(
                &raw_remote.id.referenced,
                format!("remotes: id: {id:?} is already the id of the remote on line {first_line}"),
            ));
        }
        let object_lock = raw_remote
            .s3
            .object_lock
            .as_ref()
            .map(|lock| lock_settings(lock, at))
            .transpose()?;
        remotes.push(Remote {
            id,
            s3: remote_config(raw_remote.s3, at)?,
            object_lock,
        });
    }

    Ok((remotes, remote_ids))
}

fn parse_sources(
    raw_sources: Spanned<Vec<RawSource>>,
    remote_ids: &RemoteIds,
    at: &impl Fn(&serde_saphyr::Location, String) -> ConfigError,
) -> Result<Vec<SourceConfig>, ConfigError> {
    if raw_sources.value.is_empty() {
        return Err(at(
            &raw_sources.referenced,
            "sources: the list is empty; at least one source is needed".to_owned(),
        ));
    }
    let mut sources = Vec::new();
    let mut source_paths = BTreeMap::new();
    for raw_source in raw_sources.value {
        let source_path = PathBuf::from(&raw_source.path.value);
        if raw_source.path.value.is_empty() {
            return Err(at(
                &raw_source.path.referenced,
                "sources: path: must not be empty".to_owned(),
            ));
        }
        if raw_source.snapshots.value.is_empty() {
            return Err(at(
                &raw_source.snapshots.referenced,
                "sources: snapshots: must not be empty".to_owned(),
            ));
        }
        let normalized: PathBuf = source_path.components().collect();
        if let Some(first_line) = source_paths.insert(normalized, raw_source.path.referenced.line())
        {
            return Err(at(
                &raw_source.path.referenced,
                format!(
                    "sources: path: {} is already the source on line {first_line}",
                    source_path.display()
                ),
            ));
        }
        if raw_source.upload_to_remotes.value.is_empty() {
            return Err(at(
                &raw_source.upload_to_remotes.referenced,
                format!(
                    "sources: upload_to_remotes: the list for {} is empty",
                    source_path.display()
                ),
            ));
        }
        let mut uploads = Vec::new();
        let mut seen = BTreeSet::new();
        for raw_upload in raw_source.upload_to_remotes.value {
            let id = raw_upload.id.value.clone();
            if !remote_ids.contains_key(&id) {
                let known: Vec<&str> = remote_ids.keys().map(String::as_str).collect();
                return Err(at(
                    &raw_upload.id.referenced,
                    format!(
                        "upload_to_remotes: id: remote {id:?} for source {} is not defined in remotes (defined: {})",
                        source_path.display(),
                        known.join(", ")
                    ),
                ));
            }
            if !seen.insert(id.clone()) {
                return Err(at(
                    &raw_upload.id.referenced,
                    format!(
                        "upload_to_remotes: id: remote {id:?} is listed twice for source {}",
                        source_path.display()
                    ),
                ));
            }
            let preserve: Params = raw_upload
                .preserve
                .value
                .parse()
                .map_err(|e| at(&raw_upload.preserve.referenced, format!("preserve: {e}")))?;
            let pipe_through = parse_pipe_through(raw_upload.pipe_through.unwrap_or_default(), at)?;
            let storage_classes =
                storage_classes(raw_upload.storage_class, raw_upload.min_days, &preserve, at)?;
            let send_protocol = send_protocol(raw_upload.send_protocol, at)?;
            uploads.push(UploadConfig {
                remote_id: id,
                preserve,
                pipe_through,
                storage_classes,
                send_protocol,
            });
        }
        sources.push(SourceConfig {
            path: source_path,
            snapshots: PathBuf::from(raw_source.snapshots.value),
            upload_to_remotes: uploads,
        });
    }

    Ok(sources)
}

/// `send_protocol:` 1 (the default) or 2.
fn send_protocol(
    raw: Option<Spanned<u32>>,
    at: &impl Fn(&serde_saphyr::Location, String) -> ConfigError,
) -> Result<SendProtocol, ConfigError> {
    match raw {
        None => Ok(SendProtocol::V1),
        Some(version) if version.value == 1 => Ok(SendProtocol::V1),
        Some(version) if version.value == 2 => Ok(SendProtocol::V2),
        Some(version) => Err(at(
            &version.referenced,
            format!(
                "upload_to_remotes: send_protocol: expected 1 or 2, found {}",
                version.value
            ),
        )),
    }
}

/// Checks that every `pipe_through` command names a program.
fn parse_pipe_through(
    commands: Vec<Spanned<Vec<String>>>,
    at: &impl Fn(&serde_saphyr::Location, String) -> ConfigError,
) -> Result<Vec<PipeCommand>, ConfigError> {
    let rule = "pipe_through: a command must be a non-empty list whose first item names a program";
    commands
        .into_iter()
        .map(|command| match command.value.first() {
            None => Err(at(
                &command.referenced,
                format!("{rule} (this one is empty)"),
            )),
            Some(program) if program.is_empty() => Err(at(
                &command.referenced,
                format!("{rule} (this one's program is an empty string)"),
            )),
            Some(_) => Ok(PipeCommand::new(command.value)),
        })
        .collect()
}

/// Whether `class` looks like a storage class: `STANDARD_IA`, `GLACIER`...
pub(crate) fn is_class_name(class: &str) -> bool {
    class.starts_with(|c: char| c.is_ascii_uppercase())
        && class
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// `storage_class:` and `min_days:` of an upload entry.
fn storage_classes(
    raw: Option<Spanned<RawStorageClass>>,
    raw_min_days: Option<Spanned<BTreeMap<String, Spanned<u32>>>>,
    preserve: &Params,
    at: &impl Fn(&serde_saphyr::Location, String) -> ConfigError,
) -> Result<Option<StorageClasses>, ConfigError> {
    let Some(raw) = raw else {
        if let Some(min_days) = raw_min_days {
            return Err(at(
                &min_days.referenced,
                "min_days: only applies with storage_class".to_owned(),
            ));
        }
        return Ok(None);
    };
    let bad_class = |class: &str| {
        at(
            &raw.referenced,
            format!(
                "storage_class: {class:?} is not a storage class (like STANDARD_IA or DEEP_ARCHIVE: capital letters, digits and _)"
            ),
        )
    };
    let mut classes = StorageClasses::default();
    match raw.value {
        RawStorageClass::One(class) => {
            if !is_class_name(&class) {
                return Err(bad_class(&class));
            }
            classes.default = Some(class);
        }
        RawStorageClass::ByUnit(map) => {
            if map.is_empty() {
                return Err(at(
                    &raw.referenced,
                    "storage_class: the mapping is empty".to_owned(),
                ));
            }
            for (unit, class) in map {
                if !is_class_name(&class) {
                    return Err(bad_class(&class));
                }
                if unit == "default" {
                    classes.default = Some(class);
                    continue;
                }
                let mut chars = unit.chars();
                let timeframe = match (chars.next(), chars.next()) {
                    (Some(c), None) => Timeframe::ALL.into_iter().find(|t| t.unit() == c),
                    _ => None,
                };
                let Some(timeframe) = timeframe else {
                    return Err(at(
                        &raw.referenced,
                        format!(
                            "storage_class: {unit:?} is not a unit (y, q, m, w, d, h, M, s) or `default`"
                        ),
                    ));
                };
                if preserve.count(timeframe) == 0 {
                    return Err(at(
                        &raw.referenced,
                        format!(
                            "storage_class: {unit}: the policy `{preserve}` keeps no {} backups",
                            timeframe.adjective()
                        ),
                    ));
                }
                classes.by_timeframe.insert(timeframe, class);
            }
        }
    }
    for (class, days) in raw_min_days.map(|m| m.value).unwrap_or_default() {
        if !is_class_name(&class) {
            return Err(at(
                &days.referenced,
                format!("min_days: {class:?} is not a storage class"),
            ));
        }
        if days.value > 3650 {
            return Err(at(
                &days.referenced,
                format!("min_days: {class}: at most 3650 days"),
            ));
        }
        classes.min_days.insert(class, days.value);
    }
    Ok(Some(classes))
}

/// `object_lock:` of a remote.
fn lock_settings(
    raw: &RawObjectLock,
    at: &impl Fn(&serde_saphyr::Location, String) -> ConfigError,
) -> Result<LockSettings, ConfigError> {
    let mode = match raw.mode.value.to_ascii_uppercase().as_str() {
        "GOVERNANCE" => LockMode::Governance,
        "COMPLIANCE" => LockMode::Compliance,
        _ => {
            return Err(at(
                &raw.mode.referenced,
                format!(
                    "object_lock: mode: {:?} is neither GOVERNANCE nor COMPLIANCE",
                    raw.mode.value
                ),
            ));
        }
    };
    let extra = match &raw.extra {
        None => jiff::SignedDuration::ZERO,
        Some(extra) => parse_margin(&extra.value).ok_or_else(|| {
            at(
                &extra.referenced,
                format!(
                    "object_lock: extra: {:?} is not a margin like 30d or 12h",
                    extra.value
                ),
            )
        })?,
    };
    Ok(LockSettings { mode, extra })
}

/// `<N>d` or `<N>h`, at most ten years.
fn parse_margin(text: &str) -> Option<jiff::SignedDuration> {
    let (number, hours_per_unit) = match text.as_bytes().last()? {
        b'd' => (&text[..text.len() - 1], 24),
        b'h' => (&text[..text.len() - 1], 1),
        _ => return None,
    };
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let hours = number.parse::<i64>().ok()?.checked_mul(hours_per_unit)?;
    (hours <= 24 * 3660).then(|| jiff::SignedDuration::from_hours(hours))
}

fn remote_config(
    raw: RawS3,
    at: &impl Fn(&serde_saphyr::Location, String) -> ConfigError,
) -> Result<RemoteConfig, ConfigError> {
    if raw.bucket.value.is_empty() {
        return Err(at(
            &raw.bucket.referenced,
            "s3: bucket: must not be empty".to_owned(),
        ));
    }
    let mut config = RemoteConfig::new(raw.bucket.value);
    if let Some(endpoint) = raw.endpoint {
        match (&endpoint.aws_access_key_id, &endpoint.aws_secret_access_key) {
            (Some(given), None) | (None, Some(given)) => {
                return Err(at(
                    &given.referenced,
                    "endpoint: aws_access_key_id and aws_secret_access_key must be given together"
                        .to_owned(),
                ));
            }
            _ => {}
        }
        config.access_key_id = endpoint.aws_access_key_id.map(|id| id.value);
        config.secret_access_key = endpoint.aws_secret_access_key.map(|s| Secret::new(s.value));
        config.region = endpoint.region_name;
        config.profile = endpoint.profile_name;
        config.endpoint_url = endpoint.endpoint_url;
        if let Some(verify) = endpoint.verify {
            config.verify = match verify.value {
                RawVerify::Bool(true) => Verify::System,
                RawVerify::Bool(false) => Verify::Off,
                RawVerify::Path(path) if path.is_empty() => {
                    return Err(at(
                        &verify.referenced,
                        "endpoint: verify: expected true, false or the path of a CA bundle"
                            .to_owned(),
                    ));
                }
                RawVerify::Path(path) => Verify::CaBundle(PathBuf::from(path)),
            };
        }
    }
    let mut upload = UploadSettings::default();
    if let Some(part_size) = raw.part_size_mib {
        if !(5..=5120).contains(&part_size.value) {
            return Err(at(
                &part_size.referenced,
                "s3: part_size_mib: must be between 5 and 5120".to_owned(),
            ));
        }
        upload.part_size = part_size.value << 20;
    }
    if let Some(parts) = raw.parts_in_flight {
        if !(1..=64).contains(&parts.value) {
            return Err(at(
                &parts.referenced,
                "s3: parts_in_flight: must be between 1 and 64".to_owned(),
            ));
        }
        upload.parts_in_flight = parts.value;
    }
    if let Some(rate) = raw.rate_limit {
        upload.rate_limit = Some(
            parse_rate(&rate.value)
                .map_err(|message| at(&rate.referenced, format!("s3: rate_limit: {message}")))?,
        );
    }
    if let Some(size) = raw.max_object_size {
        let bytes = parse_size(&size.value)
            .map_err(|message| at(&size.referenced, format!("s3: max_object_size: {message}")))?;
        if !(btrfs2s3_s3::MIN_MAX_OBJECT_SIZE..=MAX_MAX_OBJECT_SIZE).contains(&bytes) {
            return Err(at(
                &size.referenced,
                format!(
                    "s3: max_object_size: must be between 5MiB and 10TB (10,000,000,000,000 bytes), found {:?}",
                    size.value
                ),
            ));
        }
        upload.max_object_size = bytes;
    }
    config.upload = upload;
    if let Some(attempts) = raw.max_attempts {
        if !(1..=100).contains(&attempts.value) {
            return Err(at(
                &attempts.referenced,
                "s3: max_attempts: must be between 1 and 100".to_owned(),
            ));
        }
        config.max_attempts = attempts.value;
    }
    if let Some(timeout) = raw.timeout_seconds {
        if timeout.value == 0 {
            return Err(at(
                &timeout.referenced,
                "s3: timeout_seconds: must be at least 1".to_owned(),
            ));
        }
        config.read_timeout = Duration::from_secs(timeout.value);
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A complete config in the Python tool's format, every key used.
    const PYTHON_CONFIG: &str = r"timezone: America/Los_Angeles
sources:
  - path: /mnt/pool/home
    snapshots: /mnt/pool/.snapshots
    upload_to_remotes:
      - id: aws
        preserve: 1y 3m 30d 24h
        pipe_through:
          - [zstd, -T0]
          - [age, -r, age1xyz]
  - path: /mnt/pool/media/
    snapshots: /mnt/pool/.snapshots
    upload_to_remotes:
      - id: aws
        preserve: 1y
      - id: local
        preserve: 7d
remotes:
  - id: aws
    s3:
      bucket: my-bucket
      endpoint:
        profile_name: backup
        region_name: us-west-2
        aws_access_key_id: AKIAEXAMPLE
        aws_secret_access_key: very-secret
        endpoint_url: https://s3.us-west-2.amazonaws.com
        verify: false
  - id: local
    s3:
      bucket: local-bucket
      endpoint:
        endpoint_url: https://minio.lan:9000
        verify: /etc/ssl/minio-ca.pem
";

    #[test]
    fn rates_read_like_their_units() {
        for (text, expected) in [
            ("20MiB/s", Ok(20 << 20)),
            ("512KiB/s", Ok(512 << 10)),
            ("1.5GiB/s", Ok(3 << 29)),
            ("100000/s", Ok(100_000)),
            ("2MiB", Ok(2 << 20)),
            (" 8 MiB/s ", Ok(8 << 20)),
            ("1000/s", Err("must be between")),
            ("0MiB/s", Err("must be between")),
            ("-1MiB/s", Err("must be between")),
            ("fast", Err("expected bytes per second")),
            ("20MB/s", Err("expected bytes per second")),
            ("20 MiB per second", Err("expected bytes per second")),
        ] {
            match (parse_rate(text), expected) {
                (Ok(rate), Ok(expected)) => assert_eq!(rate, expected, "{text}"),
                (Err(message), Err(fragment)) => {
                    assert!(message.contains(fragment), "{text}: {message}");
                }
                (got, _) => panic!("{text}: {got:?}"),
            }
        }
    }

    #[test]
    fn sizes_take_binary_and_decimal_units() {
        for (text, expected) in [
            ("5TiB", Ok(5u64 << 40)),
            ("16MiB", Ok(16 << 20)),
            ("1.5GiB", Ok(3 << 29)),
            ("10TB", Ok(10_000_000_000_000)),
            (" 2 KB ", Ok(2000)),
            ("123456", Ok(123_456)),
            ("-1MiB", Err("expected a size")),
            ("big", Err("expected a size")),
            ("5 TiB please", Err("expected a size")),
        ] {
            match (parse_size(text), expected) {
                (Ok(rate), Ok(expected)) => assert_eq!(rate, expected, "{text}"),
                (Err(message), Err(fragment)) => {
                    assert!(message.contains(fragment), "{text}: {message}");
                }
                (got, _) => panic!("{text}: {got:?}"),
            }
        }
    }

    #[test]
    fn python_tool_config_is_accepted_unchanged() {
        let config = parse(Path::new("c.yaml"), PYTHON_CONFIG).unwrap();
        assert_eq!(config.timezone_name, "America/Los_Angeles");
        assert_eq!(config.sources.len(), 2);
        let home = &config.sources[0];
        assert_eq!(home.path, Path::new("/mnt/pool/home"));
        assert_eq!(
            home.upload_to_remotes[0].preserve.to_string(),
            "1y 3m 30d 24h"
        );
        assert_eq!(
            home.upload_to_remotes[0]
                .pipe_through
                .iter()
                .map(PipeCommand::argv)
                .collect::<Vec<_>>(),
            [vec!["zstd", "-T0"], vec!["age", "-r", "age1xyz"]]
        );
        assert_eq!(
            home.upload_to_remotes[0].pipeline_shown().as_deref(),
            Some("zstd -T0 | age -r age1xyz")
        );
        assert_eq!(
            config.sources[1].upload_to_remotes[0].pipeline_shown(),
            None
        );
        let aws = &config.remote("aws").unwrap().s3;
        assert_eq!(aws.bucket, "my-bucket");
        assert_eq!(aws.profile.as_deref(), Some("backup"));
        assert_eq!(aws.region.as_deref(), Some("us-west-2"));
        assert_eq!(aws.access_key_id.as_deref(), Some("AKIAEXAMPLE"));
        assert_eq!(
            aws.secret_access_key.as_ref().map(Secret::expose),
            Some("very-secret")
        );
        assert_eq!(aws.verify, Verify::Off);
        let local = &config.remote("local").unwrap().s3;
        assert_eq!(
            local.verify,
            Verify::CaBundle("/etc/ssl/minio-ca.pem".into())
        );
        assert_eq!(local.access_key_id, None);
        assert_eq!(config.parallel_uploads, DEFAULT_PARALLEL_UPLOADS);
        assert_eq!(
            config.sources[0].upload_to_remotes[0].send_protocol,
            SendProtocol::V1
        );
        let two = parse(
            Path::new("c.yaml"),
            &PYTHON_CONFIG.replacen(
                "        preserve: 1y 3m 30d 24h\n",
                "        preserve: 1y 3m 30d 24h\n        send_protocol: 2\n",
                1,
            ),
        )
        .unwrap();
        assert_eq!(
            two.sources[0].upload_to_remotes[0].send_protocol,
            SendProtocol::V2
        );
        let four = parse(
            Path::new("c.yaml"),
            &PYTHON_CONFIG.replacen("sources:", "parallel_uploads: 4\nsources:", 1),
        )
        .unwrap();
        assert_eq!(four.parallel_uploads, 4);
        // The secret never shows in debug output.
        assert!(!format!("{config:?}").contains("very-secret"));
    }

    #[test]
    fn our_own_keys_are_optional_and_checked() {
        let config = parse(Path::new("c.yaml"), &PYTHON_CONFIG.replace(
            "      bucket: local-bucket\n",
            "      bucket: local-bucket\n      part_size_mib: 16\n      parts_in_flight: 2\n      rate_limit: 5MiB/s\n      max_object_size: 16MiB\n      max_attempts: 3\n      timeout_seconds: 30\n",
        ))
        .unwrap();
        let local = &config.remote("local").unwrap().s3;
        assert_eq!(config.remote("local").unwrap().object_lock, None);
        assert_eq!(config.sources[0].upload_to_remotes[0].storage_classes, None);
        assert_eq!(local.upload.part_size, 16 << 20);
        assert_eq!(local.upload.parts_in_flight, 2);
        assert_eq!(local.max_attempts, 3);
        assert_eq!(local.upload.rate_limit, Some(5 << 20));
        assert_eq!(local.upload.max_object_size, 16 << 20);
        assert_eq!(local.read_timeout, Duration::from_secs(30));
    }

    #[test]
    fn storage_classes_and_object_lock() {
        let text = PYTHON_CONFIG
            .replace(
                "        preserve: 1y 3m 30d 24h\n",
                "        preserve: 1y 3m 30d 24h\n        storage_class: {y: DEEP_ARCHIVE, m: GLACIER_IR, default: STANDARD_IA}\n        min_days: {GLACIER_IR: 91}\n",
            )
            .replace(
                "        preserve: 7d\n",
                "        preserve: 7d\n        storage_class: ONEZONE_IA\n",
            )
            .replace(
                "      bucket: my-bucket\n",
                "      bucket: my-bucket\n      object_lock:\n        mode: compliance\n        extra: 36h\n",
            );
        let config = parse(Path::new("c.yaml"), &text).unwrap();
        let tiered = config.sources[0].upload_to_remotes[0]
            .storage_classes
            .as_ref()
            .unwrap();
        assert_eq!(tiered.by_timeframe[&Timeframe::Years], "DEEP_ARCHIVE");
        assert_eq!(tiered.by_timeframe[&Timeframe::Months], "GLACIER_IR");
        assert_eq!(tiered.default.as_deref(), Some("STANDARD_IA"));
        assert_eq!(tiered.min_days("GLACIER_IR"), 91);
        assert_eq!(
            config.sources[1].upload_to_remotes[1].storage_classes,
            Some(StorageClasses::one("ONEZONE_IA"))
        );
        assert_eq!(
            config.remote("aws").unwrap().object_lock,
            Some(LockSettings {
                mode: LockMode::Compliance,
                extra: jiff::SignedDuration::from_hours(36),
            })
        );
        assert_eq!(parse_margin("0d"), Some(jiff::SignedDuration::ZERO));
        for bad in [
            "",
            "d",
            "1",
            "1w",
            "-1d",
            "1.5d",
            "99999999999999999999d",
            "4000d",
        ] {
            assert_eq!(parse_margin(bad), None, "{bad:?}");
        }
    }

    /// `PYTHON_CONFIG` with `from` replaced by `to` must fail at `line:column` with a message
    /// containing `fragment`.
    fn check_error(from: &str, to: &str, position: Option<(u64, u64)>, fragment: &str) {
        assert!(
            PYTHON_CONFIG.contains(from),
            "{from:?} is not in the config"
        );
        let text = PYTHON_CONFIG.replacen(from, to, 1);
        let error = parse(Path::new("c.yaml"), &text).expect_err(fragment);
        assert!(
            error.message.contains(fragment),
            "{from:?} -> {to:?}: {error}"
        );
        assert_eq!(
            error.position.map(|p| (p.line, p.column)),
            position,
            "{from:?} -> {to:?}: {error}"
        );
        assert!(
            error.to_string().starts_with("invalid config c.yaml"),
            "{error}"
        );
    }

    /// (replace this, with this, expected position, expected message fragment).
    type Case = (&'static str, &'static str, Option<(u64, u64)>, &'static str);

    #[test]
    #[allow(clippy::too_many_lines)] // a table of cases
    fn bad_configs_say_where_and_what() {
        let cases: &[Case] = &[
            (
                "        preserve: 1y 3m 30d 24h\n",
                "        preserve: 1y 3m 30d 24h\n        storage_class: standard\n",
                Some((8, 24)),
                "storage_class: \"standard\" is not a storage class",
            ),
            (
                "        preserve: 1y 3m 30d 24h\n",
                "        preserve: 1y 3m 30d 24h\n        storage_class: {x: GLACIER}\n",
                Some((8, 24)),
                "storage_class: \"x\" is not a unit",
            ),
            (
                "        preserve: 1y 3m 30d 24h\n",
                "        preserve: 1y 3m 30d 24h\n        storage_class: {w: GLACIER}\n",
                Some((8, 24)),
                "storage_class: w: the policy `1y 3m 30d 24h` keeps no weekly backups",
            ),
            (
                "        preserve: 1y 3m 30d 24h\n",
                "        preserve: 1y 3m 30d 24h\n        storage_class: [GLACIER]\n",
                Some((8, 9)),
                "a storage class, or a mapping",
            ),
            (
                "        preserve: 1y 3m 30d 24h\n",
                "        preserve: 1y 3m 30d 24h\n        min_days: {GLACIER: 5}\n",
                Some((8, 19)),
                "min_days: only applies with storage_class",
            ),
            (
                "        preserve: 1y 3m 30d 24h\n",
                "        preserve: 1y 3m 30d 24h\n        storage_class: GLACIER\n        min_days: {GLACIER: 9999}\n",
                Some((9, 29)),
                "min_days: GLACIER: at most 3650 days",
            ),
            (
                "      bucket: my-bucket\n",
                "      bucket: my-bucket\n      object_lock:\n        mode: forever\n",
                Some((23, 15)),
                "object_lock: mode: \"forever\" is neither GOVERNANCE nor COMPLIANCE",
            ),
            (
                "      bucket: my-bucket\n",
                "      bucket: my-bucket\n      object_lock:\n        mode: GOVERNANCE\n        extra: 30 days\n",
                Some((24, 16)),
                "object_lock: extra: \"30 days\" is not a margin like 30d or 12h",
            ),
            (
                "      bucket: my-bucket\n",
                "      bucket: my-bucket\n      object_lock:\n        extra: 1d\n",
                Some((23, 9)),
                "missing field `mode`",
            ),
            (
                "timezone: America/Los_Angeles",
                "timezone: Mars/Olympus",
                Some((1, 11)),
                "unknown time zone \"Mars/Olympus\"",
            ),
            (
                "timezone: America/Los_Angeles\n",
                "",
                Some((17, 1)),
                "missing field `timezone`",
            ),
            (
                "timezone: America/Los_Angeles",
                "timezone: [UTC]",
                Some((1, 11)),
                "timezone: expected a time zone name like \"Europe/Berlin\", found a list",
            ),
            (
                "timezone: America/Los_Angeles",
                "timezone: UTC\ncolour: blue",
                Some((2, 1)),
                "unknown field `colour`",
            ),
            (
                "        preserve: 1y 3m 30d 24h",
                "        preserve: 1m 1y",
                Some((7, 19)),
                "preserve: \"1y\" must come before \"1m\"",
            ),
            (
                "        preserve: 1y 3m 30d 24h",
                "        preserve: [1y]",
                Some((7, 19)),
                "preserve: expected a string like \"1y 3m 30d\", found a list",
            ),
            (
                "        preserve: 1y 3m 30d 24h",
                "        preserve:\n          y: 1",
                Some((8, 11)),
                "preserve: expected a string like \"1y 3m 30d\", found a mapping",
            ),
            (
                "        preserve: 1y 3m 30d 24h",
                "        preserve: 3x",
                Some((7, 19)),
                "unknown unit \"x\"",
            ),
            (
                "        preserve: 1y 3m 30d 24h",
                "        preserve: ''",
                Some((7, 19)),
                "empty preservation policy",
            ),
            (
                "        preserve: 1y 3m 30d 24h",
                "        preserve: 99999999999d",
                Some((7, 19)),
                "too large",
            ),
            (
                "        preserve: 1y 3m 30d 24h\n",
                "",
                Some((7, 9)),
                "missing field `preserve`",
            ),
            (
                "          - [zstd, -T0]",
                "          - []",
                Some((9, 13)),
                "a command must be a non-empty list",
            ),
            (
                "          - [zstd, -T0]",
                "          - ['', -T0]",
                Some((9, 13)),
                "a command must be a non-empty list",
            ),
            (
                "          - [zstd, -T0]",
                "          - zstd -T0",
                Some((9, 13)),
                "pipe_through: expected a list of commands, each a list like [zstd, -T0], found a single value",
            ),
            (
                "      - id: local",
                "      - id: nowhere",
                Some((16, 13)),
                "remote \"nowhere\" for source /mnt/pool/media/ is not defined",
            ),
            (
                "      - id: local",
                "      - id: aws",
                Some((16, 13)),
                "remote \"aws\" is listed twice for source /mnt/pool/media/",
            ),
            (
                "\n  - id: local",
                "\n  - id: aws",
                Some((29, 9)),
                "\"aws\" is already the id of the remote on line 19",
            ),
            (
                "  - path: /mnt/pool/media/",
                "  - path: /mnt/pool/home/",
                Some((11, 11)),
                "/mnt/pool/home/ is already the source on line 3",
            ),
            (
                "  - path: /mnt/pool/media/",
                "  - path: ''",
                Some((11, 11)),
                "path: must not be empty",
            ),
            (
                "    upload_to_remotes:\n      - id: aws\n        preserve: 1y\n      - id: local\n        preserve: 7d\n",
                "    upload_to_remotes: []\n",
                Some((13, 24)),
                "upload_to_remotes: the list for /mnt/pool/media/ is empty",
            ),
            (
                "      bucket: my-bucket",
                "      bucket: ''",
                Some((21, 15)),
                "bucket: must not be empty",
            ),
            (
                "      bucket: my-bucket",
                "      bukket: my-bucket",
                Some((21, 7)),
                "unknown field `bukket`",
            ),
            (
                "        verify: false",
                "        verify: 3",
                Some((28, 17)),
                "true, false or the path of a CA bundle",
            ),
            (
                "        aws_access_key_id: AKIAEXAMPLE\n",
                "",
                Some((25, 32)),
                "must be given together",
            ),
            (
                "      bucket: local-bucket",
                "      bucket: local-bucket\n      part_size_mib: 1",
                Some((32, 22)),
                "part_size_mib: must be between 5 and 5120",
            ),
            (
                "      bucket: local-bucket",
                "      bucket: local-bucket\n      parts_in_flight: 0",
                Some((32, 24)),
                "parts_in_flight: must be between 1 and 64",
            ),
            (
                "      bucket: local-bucket",
                "      bucket: local-bucket\n      max_object_size: 4MiB",
                Some((32, 24)),
                "s3: max_object_size: must be between 5MiB and 10TB",
            ),
            (
                "      bucket: local-bucket",
                "      bucket: local-bucket\n      max_object_size: huge",
                Some((32, 24)),
                "s3: max_object_size: expected a size like \"5TiB\"",
            ),
            (
                "      bucket: local-bucket",
                "      bucket: local-bucket\n      rate_limit: fast",
                Some((32, 19)),
                "s3: rate_limit: expected bytes per second like \"20MiB/s\"",
            ),
            (
                "        preserve: 1y 3m 30d 24h\n",
                "        preserve: 1y 3m 30d 24h\n        send_protocol: 3\n",
                Some((8, 24)),
                "send_protocol: expected 1 or 2, found 3",
            ),
            (
                "sources:",
                "parallel_uploads: 0\nsources:",
                Some((2, 19)),
                "parallel_uploads: must be between 1 and 16",
            ),
            (
                "sources:",
                "parallel_uploads: two\nsources:",
                Some((2, 19)),
                "parallel_uploads",
            ),
            (
                "    snapshots: /mnt/pool/.snapshots\n    upload_to_remotes:\n      - id: aws\n        preserve: 1y 3m",
                "    upload_to_remotes:\n      - id: aws\n        preserve: 1y 3m",
                Some((4, 5)),
                "missing field `snapshots`",
            ),
            ("sources:", "sources: [", None, "bracket"),
        ];
        for (from, to, position, fragment) in cases {
            if fragment == &"bracket" {
                let text = PYTHON_CONFIG.replacen(from, to, 1);
                let error = parse(Path::new("c.yaml"), &text).unwrap_err();
                assert!(
                    error.position.is_some(),
                    "syntax errors have a position: {error}"
                );
                continue;
            }
            check_error(from, to, *position, fragment);
        }
    }

    #[test]
    fn remotes_only_configs_need_no_sources() {
        let text = "remotes:\n  - id: a\n    s3:\n      bucket: b\n";
        let config = parse_for(Path::new("c.yaml"), text, Needs::RemotesOnly).unwrap();
        assert_eq!(config.timezone_name, "UTC");
        assert!(config.sources.is_empty());
        assert_eq!(config.remote("a").unwrap().s3.bucket, "b");
        // A full config is fine too; its sources are not looked at.
        let full = PYTHON_CONFIG.replace("preserve: 1y 3m 30d 24h", "preserve: nonsense");
        let config = parse_for(Path::new("c.yaml"), &full, Needs::RemotesOnly).unwrap();
        assert_eq!(config.timezone_name, "America/Los_Angeles");
        assert_eq!(config.remotes.len(), 2);
        // The remotes are still checked.
        let error =
            parse_for(Path::new("c.yaml"), "remotes: []\n", Needs::RemotesOnly).unwrap_err();
        assert!(
            error.message.contains("remotes: the list is empty"),
            "{error}"
        );
        // Everything needs the sources.
        let error = parse(Path::new("c.yaml"), text).unwrap_err();
        assert!(error.message.contains("missing field"), "{error}");
    }

    #[test]
    fn empty_lists_and_files_are_errors() {
        let error = parse(Path::new("c.yaml"), "").unwrap_err();
        assert!(error.message.contains("the file is empty"), "{error}");
        let error = parse(
            Path::new("c.yaml"),
            "timezone: UTC\nsources: []\nremotes: []\n",
        )
        .unwrap_err();
        assert!(
            error.message.contains("remotes: the list is empty"),
            "{error}"
        );
        let text = "timezone: UTC\nsources: []\nremotes:\n  - id: a\n    s3:\n      bucket: b\n";
        let error = parse(Path::new("c.yaml"), text).unwrap_err();
        assert!(
            error.message.contains("sources: the list is empty"),
            "{error}"
        );
        assert_eq!(
            error.position,
            Some(Position {
                line: 2,
                column: 10
            })
        );
    }

    #[test]
    fn load_checks_the_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("btrfs2s3-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = load(&dir.join("missing.yaml")).unwrap_err();
        assert!(
            missing
                .to_string()
                .contains("missing.yaml: cannot read the file"),
            "{missing}"
        );
        let not_utf8 = dir.join("latin1.yaml");
        std::fs::write(&not_utf8, b"timezone: UTC\n# caf\xe9\n").unwrap();
        let error = load(&not_utf8).unwrap_err();
        assert_eq!(error.position, Some(Position { line: 2, column: 6 }));
        assert!(error.message.contains("not valid UTF-8"));
        let world_readable = dir.join("secrets.yaml");
        // Programs this machine has (loading looks them up).
        let text = PYTHON_CONFIG
            .replace("[zstd, -T0]", "[cat]")
            .replace("[age, -r, age1xyz]", "[sh, -c, cat]");
        std::fs::write(&world_readable, &text).unwrap();
        std::fs::set_permissions(&world_readable, std::fs::Permissions::from_mode(0o644)).unwrap();
        let config = load(&world_readable).unwrap();
        assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
        assert!(config.warnings[0].contains("chmod 600"));
        let commands = &config.sources[0].upload_to_remotes[0].pipe_through;
        assert!(
            commands.iter().all(|c| c.program().is_absolute()),
            "{commands:?}"
        );
        assert_eq!(commands[1].argv(), ["sh", "-c", "cat"], "as written");
        std::fs::set_permissions(&world_readable, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(load(&world_readable).unwrap().warnings.is_empty());
        // One that others can change is refused, with the fix.
        std::fs::set_permissions(&world_readable, std::fs::Permissions::from_mode(0o666)).unwrap();
        let error = load(&world_readable).unwrap_err();
        assert!(error.message.contains("chmod go-w"), "{error}");
        // And one whose program is not on the system's PATH.
        std::fs::set_permissions(&world_readable, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(
            &world_readable,
            text.replace("[cat]", "[no-such-btrfs2s3-tool]"),
        )
        .unwrap();
        let error = load(&world_readable).unwrap_err();
        assert!(
            error
                .message
                .contains("pipe_through: program \"no-such-btrfs2s3-tool\" is not found"),
            "{error}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
