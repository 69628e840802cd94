//! Measuring one command: wall time, CPU time, peak memory of its whole process tree, and
//! the peak of the bytes it keeps in the temporary directory.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::resource::{UsageWho, getrusage};

use crate::{Result, cmd};

/// What one run of a command cost.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Wall-clock seconds from start to exit.
    pub wall: f64,
    /// User plus system CPU seconds of the process and every descendant it waited for
    /// (`btrfs send` runs in the kernel on behalf of the process that asked, so it counts).
    pub cpu: f64,
    /// The largest sum of the resident set sizes of the process and its descendants, sampled
    /// every 10 ms.
    pub peak_rss: u64,
    /// The largest growth of the bytes used in the temporary directory (a tmpfs given to the
    /// command as `TMPDIR`), sampled every 10 ms.
    pub temp_bytes: u64,
    /// CPU seconds the whole machine spent busy meanwhile (`/proc/stat`: the command, the
    /// servers it talks to, everything): how close to its limit the machine ran.
    pub machine_cpu: f64,
}

/// Runs `command` (its standard output and error go to `log`), feeding `input` to its
/// standard input, with `TMPDIR` set to `temp`, and measures it. Fails when it fails.
pub fn measure(command: &mut Command, temp: &Path, input: &[u8], log: &Path) -> Result<Sample> {
    let log_file = std::fs::File::create(log)?;
    command
        .env("TMPDIR", temp)
        .stdin(Stdio::piped())
        .stdout(log_file.try_clone()?)
        .stderr(log_file);
    let temp_before = used_bytes(temp)?;
    let machine_before = machine_busy_seconds();
    let before = getrusage(UsageWho::RUSAGE_CHILDREN)?;
    let started = Instant::now();
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", cmd::display(command)))?;
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = Arc::clone(&stop);
        let temp = temp.to_owned();
        let pid = child.id();
        std::thread::spawn(move || sample_until(&stop, pid, &temp))
    };
    // Standard input stays open until the command exits: `script` would end the session
    // at its end.
    let mut stdin = child.stdin.take();
    if let Some(stdin) = &mut stdin {
        // A command that does not read its input is not an error here.
        let _ = stdin.write_all(input);
    }
    let status = child.wait()?;
    drop(stdin);
    let wall = started.elapsed().as_secs_f64();
    let machine_cpu = machine_busy_seconds() - machine_before;
    stop.store(true, Ordering::Relaxed);
    let (peak_rss, temp_peak) = sampler.join().map_err(|_| "the sampler panicked")?;
    let after = getrusage(UsageWho::RUSAGE_CHILDREN)?;
    check(status, command, log)?;
    let seconds = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    let cpu = seconds(after.user_time()) + seconds(after.system_time())
        - seconds(before.user_time())
        - seconds(before.system_time());
    Ok(Sample {
        wall,
        cpu,
        peak_rss,
        temp_bytes: temp_peak.saturating_sub(temp_before),
        machine_cpu,
    })
}

/// The CPU seconds the machine has spent busy since boot: every CPU's user, nice, system,
/// irq, softirq and steal time from the first line of `/proc/stat` (in 1/100 s).
fn machine_busy_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let Some(line) = stat.lines().next() else {
        return 0.0;
    };
    // cpu user nice system idle iowait irq softirq steal ...
    let fields: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|field| field.parse().ok())
        .collect();
    let busy: f64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| fields.get(i))
        .sum();
    busy / 100.0
}

fn check(status: ExitStatus, command: &Command, log: &Path) -> Result<()> {
    if status.success() {
        return Ok(());
    }
    let output = std::fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = output.lines().rev().take(15).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Err(format!(
        "{} failed ({status}); the end of {}:\n{}",
        cmd::display(command),
        log.display(),
        tail.join("\n")
    )
    .into())
}

/// Samples until `stop`: the peak tree RSS of `pid` and the peak used bytes of `temp`.
///
/// Finding the tree means reading the `stat` of every process on the machine, so it is
/// done every [`TREE_EVERY`] samples; in between only the tree's own `statm` files are
/// read. The sampler then costs well under 1% of a CPU, which matters on a two-core machine
/// that the measured command keeps busy.
fn sample_until(stop: &AtomicBool, pid: u32, temp: &Path) -> (u64, u64) {
    let page = page_size();
    let (mut rss, mut used) = (0, 0);
    let mut tree = Vec::new();
    for n in 0.. {
        if n % TREE_EVERY == 0 {
            tree = descendants(pid);
        }
        let resident: u64 = tree.iter().map(|pid| resident_pages(*pid) * page).sum();
        rss = rss.max(resident);
        used = used.max(used_bytes(temp).unwrap_or(0));
        if stop.load(Ordering::Relaxed) {
            break;
        }
        std::thread::sleep(SAMPLE_INTERVAL);
    }
    (rss, used)
}

const SAMPLE_INTERVAL: Duration = Duration::from_millis(10);
const TREE_EVERY: u32 = 10;

/// The bytes used on the filesystem of `path`.
fn used_bytes(path: &Path) -> Result<u64> {
    let stat = nix::sys::statvfs::statvfs(path)?;
    Ok((stat.blocks() - stat.blocks_free()) * stat.fragment_size())
}

/// `root` and all its descendants.
fn descendants(root: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![root];
    };
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(parent) = parent_of(pid) {
            children.entry(parent).or_default().push(pid);
        }
    }
    let mut tree = Vec::new();
    let mut queue = vec![root];
    while let Some(pid) = queue.pop() {
        tree.push(pid);
        if let Some(kids) = children.get(&pid) {
            queue.extend(kids);
        }
    }
    tree
}

/// The parent pid, from `/proc/PID/stat` (the field after the state, after the command name
/// in parentheses, which may itself hold spaces and parentheses).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(1)?.parse().ok()
}

fn resident_pages(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|size| u64::try_from(size).ok())
        .unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tree_of_a_shell_with_a_child_has_more_memory_than_the_shell_alone() {
        let temp = std::env::temp_dir();
        let log = temp.join(format!("xtask-measure-{}.log", std::process::id()));
        let alone = measure(
            Command::new("sh").args(["-c", "sleep 0.3"]),
            &temp,
            b"",
            &log,
        )
        .expect("sh runs");
        // A child holding 64 MiB of touched memory for a moment.
        let with_child = measure(
            Command::new("sh").args([
                "-c",
                "python3 -c 'import time; b = bytearray(64 << 20); time.sleep(0.3)'; true",
            ]),
            &temp,
            b"",
            &log,
        )
        .expect("sh and python run");
        let _ = std::fs::remove_file(&log);
        assert!(alone.wall >= 0.3, "{alone:?}");
        assert!(alone.peak_rss > 0, "{alone:?}");
        assert!(
            with_child.peak_rss >= alone.peak_rss + (64 << 20),
            "{alone:?} {with_child:?}"
        );
        assert!(with_child.cpu > 0.0, "{with_child:?}");
    }

    #[test]
    fn a_failing_command_is_an_error_with_its_output() {
        let temp = std::env::temp_dir();
        let log = temp.join(format!("xtask-measure-fail-{}.log", std::process::id()));
        let error = measure(
            Command::new("sh").args(["-c", "echo it broke >&2; exit 3"]),
            &temp,
            b"",
            &log,
        )
        .expect_err("exit 3 is a failure");
        let _ = std::fs::remove_file(&log);
        assert!(error.to_string().contains("it broke"), "{error}");
    }
}
