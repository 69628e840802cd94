//! Streams between btrfs, commands and S3, both ways:
//!
//! - upload: `btrfs send [-p parent] | pipe_through... | S3`. The send runs in a blocking
//!   thread writing into a pipe; the commands run as child processes (no shell) chained by
//!   pipes; the last output streams into a staged upload. The object appears only when the
//!   send and every command exited successfully: otherwise the staged upload is aborted, so a
//!   truncated stream never looks like a complete backup.
//! - download: `S3 | commands...`, for restore (`gunzip | btrfs receive DEST`) and verify
//!   (`gunzip | btrfs receive --dump`). The object streams into the first command; every
//!   command's exit status is checked.

use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use btrfs2s3_btrfs::SendOptions;
use btrfs2s3_s3::{Remote, StagedUpload, UploadOptions};
use snafu::Snafu;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::task::JoinHandle;

use crate::trust::{SYSTEM_PATH, Trustee, Untrusted, is_dangerous_variable, resolve_program};

/// How much of a command's standard error we keep for the error message.
const STDERR_TAIL_BYTES: usize = 2048;

/// Why a stream between btrfs, commands and S3 failed.
#[derive(Debug, Snafu)]
#[snafu(visibility(pub(crate)))]
pub enum PipelineError {
    /// A pipe could not be made.
    #[snafu(display("cannot create a pipe"))]
    Pipe {
        /// The OS error.
        source: std::io::Error,
    },
    /// The stream could not be read.
    #[snafu(display("cannot read the stream to upload"))]
    ReadStream {
        /// The OS error.
        source: std::io::Error,
    },
    /// A command could not be started.
    #[snafu(display("cannot start {role} {}", CommandLine(command)))]
    Spawn {
        /// What the command is for (`pipe_through command`, `command`).
        role: &'static str,
        /// The command.
        command: Vec<String>,
        /// The OS error.
        source: std::io::Error,
    },
    /// `btrfs send` failed.
    #[snafu(display("btrfs send failed"))]
    Send {
        /// The btrfs error.
        source: btrfs2s3_btrfs::Error,
    },
    /// A command exited unsuccessfully.
    #[snafu(display("{role} {} {status}{}", CommandLine(command), stderr_text(stderr)))]
    Command {
        /// What the command is for.
        role: &'static str,
        /// The command.
        command: Vec<String>,
        /// How it ended ("exited with status 1", "was killed by signal 9").
        status: String,
        /// The end of what it wrote to standard error.
        stderr: String,
    },
    /// The transfer to or from S3 failed.
    #[snafu(display("the transfer failed"))]
    Storage {
        /// The S3 error.
        source: btrfs2s3_s3::Error,
    },
    /// `btrfs receive` is older than the stream's format.
    #[snafu(display(
        "btrfs receive cannot read this backup, sent with send protocol 2 (send_protocol: 2): it needs btrfs-progs 5.19 or newer"
    ))]
    ReceiveTooOld {
        /// What `btrfs receive` said.
        source: Box<PipelineError>,
    },
    /// The stream is not a whole, well-formed send stream (checked by btrfs2s3 itself).
    #[snafu(display("{}", if matches!(source, btrfs2s3_stream::model::ApplyError::Write(_)) {
        "cannot write what the stream holds"
    } else {
        "the stream does not check out"
    }))]
    Stream {
        /// What is wrong, and at which byte.
        source: btrfs2s3_stream::model::ApplyError,
    },
    /// A restored directory could not be prepared, renamed or recorded (`restore --plain`).
    #[snafu(display("cannot {what} {}", path.display()))]
    Local {
        /// What was being done.
        what: &'static str,
        /// To what.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A worker thread died.
    #[snafu(display("internal error: {message}"))]
    Internal {
        /// What happened.
        message: String,
    },
}

impl PipelineError {
    /// A copy of this error as text, for a progress line (the error itself goes into the
    /// report): a `PipelineError` holds IO errors, which cannot be cloned.
    pub(crate) fn copy_as_text(&self) -> PipelineError {
        PipelineError::Internal {
            message: crate::error_chain(self),
        }
    }
}

/// One command of a pipeline: its arguments as written (for messages and the plan), and the
/// program it runs — looked up and checked once, when the config is loaded (see
/// [`crate::trust::resolve_program`]). Serialized as its arguments.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PipeCommand {
    argv: Vec<String>,
    program: PathBuf,
}

impl PipeCommand {
    /// A command as written, its program not looked up yet (it runs as found in
    /// [`SYSTEM_PATH`]). `argv` is not empty.
    #[must_use]
    pub fn new(argv: Vec<String>) -> PipeCommand {
        let program = PathBuf::from(argv.first().map_or("", String::as_str));
        PipeCommand { argv, program }
    }

    /// The command with its program looked up and checked: nobody but root and `trustee`
    /// can change it.
    pub fn resolved(argv: Vec<String>, trustee: Trustee) -> Result<PipeCommand, Untrusted> {
        let program = resolve_program(argv.first().map_or("", String::as_str), trustee)?;
        Ok(PipeCommand { argv, program })
    }

    /// Its arguments as written, the program's name first.
    #[must_use]
    pub fn argv(&self) -> &[String] {
        &self.argv
    }

    /// The program it runs.
    #[must_use]
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// The command as it runs, the program as looked up: `/usr/bin/zstd -T0` (not escaped).
    #[must_use]
    pub fn shown(&self) -> String {
        std::iter::once(self.program.to_string_lossy().into_owned())
            .chain(self.argv[1..].iter().cloned())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl serde::Serialize for PipeCommand {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.argv.serialize(serializer)
    }
}

/// A command line for messages: `zstd -T0`.
struct CommandLine<'a>(&'a [String]);

impl fmt::Display for CommandLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`", self.0.join(" "))
    }
}

fn stderr_text(stderr: &str) -> String {
    let trimmed = stderr.trim();
    if trimmed.is_empty() {
        String::new()
    } else {
        format!(": {}", trimmed.replace('\n', " | "))
    }
}

fn describe_status(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => format!("ended with {status}"),
    }
}

/// A started command.
struct Running {
    command: Vec<String>,
    child: Child,
    stderr: JoinHandle<String>,
}

/// Commands started in a chain, each reading the previous one's output.
struct Chain {
    role: &'static str,
    running: Vec<Running>,
}

impl Chain {
    /// Starts `commands`; the first reads `first_stdin`, the last writes `last_stdout`. On
    /// error, the commands started so far are in the chain (to be killed and waited for).
    fn spawn(
        role: &'static str,
        commands: &[PipeCommand],
        first_stdin: Stdio,
        last_stdout: Stdio,
    ) -> (Chain, Result<(), PipelineError>) {
        let mut chain = Chain {
            role,
            running: Vec::new(),
        };
        let mut stdin = Some(first_stdin);
        let mut last_stdout = Some(last_stdout);
        for (n, command) in commands.iter().enumerate() {
            let stdin = match stdin.take() {
                Some(stdin) => stdin,
                // The previous command's output.
                None => match chain.running.last_mut().and_then(|r| r.child.stdout.take()) {
                    Some(stdout) => match stdout.try_into() {
                        Ok(previous_output) => previous_output,
                        Err(source) => return (chain, Err(PipelineError::Pipe { source })),
                    },
                    None => Stdio::null(),
                },
            };
            let stdout = if n + 1 == commands.len() {
                last_stdout.take().unwrap_or_else(Stdio::null)
            } else {
                Stdio::piped()
            };
            let mut spawn = Command::new(command.program());
            // The commands run with the system's PATH, and without the variables that change
            // what a program loads before its own code (LD_PRELOAD...).
            spawn.env("PATH", SYSTEM_PATH);
            for (name, _) in std::env::vars_os() {
                if is_dangerous_variable(&name) {
                    spawn.env_remove(name);
                }
            }
            let spawned = spawn
                .args(&command.argv()[1..])
                .stdin(stdin)
                .stdout(stdout)
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn();
            let mut child = match spawned {
                Ok(child) => child,
                Err(source) => {
                    let error = PipelineError::Spawn {
                        role,
                        command: command.argv().to_vec(),
                        source,
                    };
                    return (chain, Err(error));
                }
            };
            if let Some(stdin) = &child.stdin {
                widen_pipe(stdin);
            }
            if let Some(stdout) = &child.stdout {
                widen_pipe(stdout);
            }
            let stderr = child.stderr.take();
            let stderr = tokio::spawn(async move {
                match stderr {
                    Some(stderr) => read_tail(stderr).await,
                    None => String::new(),
                }
            });
            chain.running.push(Running {
                command: command.argv().to_vec(),
                child,
                stderr,
            });
        }
        (chain, Ok(()))
    }

    fn first_stdin(&mut self) -> Option<ChildStdin> {
        self.running.first_mut().and_then(|r| r.child.stdin.take())
    }

    fn last_stdout(&mut self) -> Option<ChildStdout> {
        self.running.last_mut().and_then(|r| r.child.stdout.take())
    }

    /// Stops every command (when the transfer gave up: they would block on a pipe).
    fn kill(&mut self) {
        for running in &mut self.running {
            let _ = running.child.start_kill();
        }
    }

    /// Waits for every command; returns the one that failed first, as far as can be told:
    /// a command that exited with a status of its own is preferred over one killed by
    /// SIGPIPE (its reader died) or SIGKILL (we stopped it after another failure).
    async fn wait(self) -> Option<PipelineError> {
        self.wait_ranked().await.map(|(_, failure)| failure)
    }

    /// [`Chain::wait`], with whether the failure is collateral (1: killed by SIGPIPE or
    /// SIGKILL) or a command's own (0).
    async fn wait_ranked(self) -> Option<(u8, PipelineError)> {
        use std::os::unix::process::ExitStatusExt;
        let mut failures = Vec::new();
        for mut running in self.running {
            let status = running.child.wait().await;
            let stderr = running.stderr.await.unwrap_or_default();
            let (rank, status) = match status {
                Ok(status) if status.success() => continue,
                Ok(status) => {
                    let collateral = matches!(status.signal(), Some(libc_signal) if libc_signal == 9 || libc_signal == 13);
                    (u8::from(collateral), describe_status(status))
                }
                Err(e) => (0, format!("could not be waited for: {e}")),
            };
            failures.push((
                rank,
                PipelineError::Command {
                    role: self.role,
                    command: running.command,
                    status,
                    stderr,
                },
            ));
        }
        // The sort is stable: among equals, the first command wins.
        failures.sort_by_key(|(rank, _)| *rank);
        failures.into_iter().next()
    }
}

/// Where one stream of an upload goes.
#[derive(Debug, Clone, Copy)]
pub struct Destination<'a> {
    /// The bucket.
    pub remote: &'a Remote,
    /// The object key.
    pub key: &'a str,
    /// How the object is stored.
    pub options: &'a UploadOptions,
}

/// Sends `snapshot` (against `options.parent`) through `pipe_through` into one object per
/// destination: one `btrfs send` and one pipeline whose output feeds every destination's
/// staged upload (see `tee`). Every object appears only once the send and every command
/// succeeded. The outer error is the stream's (every destination fails with it); otherwise each
/// destination has its own result: the size of the stored object, or why its remote failed.
pub async fn upload_snapshot(
    destinations: &[Destination<'_>],
    snapshot: OwnedFd,
    options: SendOptions,
    pipe_through: &[PipeCommand],
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Vec<Result<u64, PipelineError>>, PipelineError> {
    let (read_end, write_end) = std::io::pipe().map_err(|source| PipelineError::Pipe { source })?;
    widen_pipe(&read_end);
    let send = tokio::task::spawn_blocking(move || {
        let result = btrfs2s3_btrfs::send(&snapshot, &write_end, &options);
        // Closing the write end is the end of the stream for the reader.
        drop(write_end);
        result
    });
    let (mut chain, staged) = if pipe_through.is_empty() {
        let staged = match tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(read_end))
        {
            // Read the send pipe directly, without blocking the runtime.
            Ok(mut pipe) => stage_all(destinations, &mut pipe, progress).await,
            Err(source) => Err(PipelineError::Pipe { source }),
        };
        (
            Chain {
                role: "pipe_through command",
                running: Vec::new(),
            },
            staged,
        )
    } else {
        let (mut chain, started) = Chain::spawn(
            "pipe_through command",
            pipe_through,
            Stdio::from(read_end),
            Stdio::piped(),
        );
        let staged = match (started, chain.last_stdout()) {
            (Ok(()), Some(mut stdout)) => stage_all(destinations, &mut stdout, progress).await,
            (Err(error), _) => Err(error),
            (Ok(()), None) => Err(PipelineError::Internal {
                message: "the last command has no output pipe".to_owned(),
            }),
        };
        (chain, staged)
    };
    // Nobody reads the stream any more when every destination failed.
    if !staged
        .as_ref()
        .is_ok_and(|staged| staged.iter().any(Result::is_ok))
    {
        chain.kill();
    }
    let send_result = send.await.map_err(|e| PipelineError::Internal {
        message: format!("the send thread failed: {e}"),
    })?;
    let command_failure = chain.wait().await;

    // Reading the stream failing (or a command not starting) is the error to report.
    let staged = staged?;
    let any_staged = staged.iter().any(Result::is_ok);
    // A command that failed is the cause of a broken pipe in `btrfs send`, so it goes first.
    let failure = command_failure.or_else(|| {
        send_result
            .err()
            .map(|source| PipelineError::Send { source })
    });
    if let Some(failure) = failure
        && any_staged
    {
        // Best effort: the failure is what matters, and an abandoned staged upload is
        // aborted when dropped anyway.
        futures_util::future::join_all(staged.into_iter().flatten().map(StagedUpload::abort)).await;
        return Err(failure);
    }
    let completions = staged.into_iter().map(|staged| async move {
        staged?
            .complete()
            .await
            .map_err(|source| PipelineError::Storage { source })
    });
    Ok(futures_util::future::join_all(completions).await)
}

/// Stages the stream of `reader` for every destination: directly for one, through [`tee`]
/// for several. The outer error is the stream's.
async fn stage_all(
    destinations: &[Destination<'_>],
    reader: &mut (impl AsyncRead + Unpin),
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Vec<Result<StagedUpload, PipelineError>>, PipelineError> {
    if let [only] = destinations {
        return Ok(vec![stage(*only, reader, progress).await]);
    }
    let (senders, mut receivers): (Vec<_>, Vec<_>) = destinations
        .iter()
        .map(|_| {
            let (sender, receiver) = tokio::sync::mpsc::channel(TEE_CHUNKS_QUEUED);
            (sender, ChunkReader::new(receiver))
        })
        .unzip();
    let staging = futures_util::future::join_all(destinations.iter().zip(&mut receivers).map(
        |(destination, receiver)| async move {
            let staged = stage(*destination, receiver, &|_| {}).await;
            // A destination that failed reads no more: the tee drops it.
            receiver.close();
            staged
        },
    ));
    let (teed, staged) = tokio::join!(tee(reader, senders, progress), staging);
    if let Err(source) = teed {
        // The destinations saw an end of the stream that was none.
        futures_util::future::join_all(staged.into_iter().flatten().map(StagedUpload::abort)).await;
        return Err(PipelineError::ReadStream { source });
    }
    Ok(staged)
}

/// How many chunks of the stream wait for each destination of a shared stream.
const TEE_CHUNKS_QUEUED: usize = 4;

/// The size of the chunks a shared stream is read in.
const TEE_CHUNK_BYTES: usize = 1 << 20;

/// Reads `reader` to its end, handing every chunk to each destination's queue in turn, so
/// the slowest destination sets the pace and memory stays bounded (`TEE_CHUNKS_QUEUED`
/// chunks per destination besides its upload's own parts). A destination whose upload
/// failed closes its queue and is left out from then on; when none is left, reading stops.
/// The end of the stream is the end of every queue.
async fn tee(
    reader: &mut (impl AsyncRead + Unpin),
    senders: Vec<tokio::sync::mpsc::Sender<bytes::Bytes>>,
    progress: &(dyn Fn(u64) + Sync),
) -> std::io::Result<()> {
    let mut senders: Vec<_> = senders.into_iter().map(Some).collect();
    let mut total = 0u64;
    loop {
        let mut chunk = bytes::BytesMut::with_capacity(TEE_CHUNK_BYTES);
        while chunk.len() < TEE_CHUNK_BYTES {
            if reader.read_buf(&mut chunk).await? == 0 {
                break;
            }
        }
        if chunk.is_empty() {
            return Ok(());
        }
        total += chunk.len() as u64;
        progress(total);
        let chunk = chunk.freeze();
        for slot in &mut senders {
            if let Some(sender) = slot
                && sender.send(chunk.clone()).await.is_err()
            {
                *slot = None;
            }
        }
        if senders.iter().all(Option::is_none) {
            return Ok(());
        }
    }
}

/// The reading end of one destination's queue of a shared stream.
struct ChunkReader {
    receiver: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    chunk: bytes::Bytes,
}

impl ChunkReader {
    fn new(receiver: tokio::sync::mpsc::Receiver<bytes::Bytes>) -> ChunkReader {
        ChunkReader {
            receiver,
            chunk: bytes::Bytes::new(),
        }
    }

    /// Takes no more chunks (and drops the queued ones): the tee leaves this one out.
    fn close(&mut self) {
        self.receiver.close();
        while self.receiver.try_recv().is_ok() {}
    }
}

impl AsyncRead for ChunkReader {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        while self.chunk.is_empty() {
            match self.receiver.poll_recv(cx) {
                Poll::Ready(Some(chunk)) => self.chunk = chunk,
                // The end of the stream.
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
        let n = self.chunk.len().min(buf.remaining());
        buf.put_slice(&self.chunk.split_to(n));
        Poll::Ready(Ok(()))
    }
}

async fn stage(
    destination: Destination<'_>,
    reader: &mut (impl AsyncRead + Unpin),
    progress: &(dyn Fn(u64) + Sync),
) -> Result<StagedUpload, PipelineError> {
    destination
        .remote
        .stage_upload(destination.key, reader, destination.options, progress)
        .await
        .map_err(|source| PipelineError::Storage { source })
}

/// Streams backup `key` of `remote` (its first piece, then its other `pieces`) into `commands`
/// (the first reads it, the last consumes it: `btrfs receive DEST`). Returns its size.
pub async fn download_into<K: AsRef<str> + Sync>(
    remote: &Remote,
    key: &str,
    pieces: &[K],
    commands: &[PipeCommand],
    progress: &(dyn Fn(u64) + Sync),
) -> Result<u64, PipelineError> {
    let (mut chain, started) = Chain::spawn("command", commands, Stdio::piped(), Stdio::null());
    let downloaded = match (started, chain.first_stdin()) {
        (Ok(()), Some(mut stdin)) => {
            let downloaded = remote
                .download_backup(key, pieces, &mut stdin, progress)
                .await
                .map_err(|source| PipelineError::Storage { source });
            // The end of the stream for the first command.
            drop(stdin);
            downloaded
        }
        (Err(error), _) => Err(error),
        (Ok(()), None) => Err(PipelineError::Internal {
            message: "the first command has no input pipe".to_owned(),
        }),
    };
    // A download that broke off on the network side is the cause, and the commands we stop
    // because of it are not; a command that failed on its own explains a broken pipe (a
    // failed write of the download), so then the command goes first.
    let network_failure = matches!(
        &downloaded,
        Err(PipelineError::Storage { source }) if !matches!(source, btrfs2s3_s3::Error::WriteDownload { .. })
    );
    if downloaded.is_err() {
        chain.kill();
    }
    match (chain.wait().await, downloaded) {
        (_, Err(error)) if network_failure => Err(error),
        (Some(failure), _) => Err(failure),
        (None, downloaded) => downloaded,
    }
}

/// Streams backup `key` of `remote` (its first piece, then its other `pieces`) through
/// `commands` (`pipe_through` undone: decryption, decompression) into btrfs2s3's own send
/// stream parser, which checks every command's checksum and applies the stream to `tree` (an
/// empty one for a full backup, its parent's for a differential) without writing anything.
/// Returns the bytes downloaded and the tree as the stream left it.
pub async fn download_checked<K: AsRef<str> + Sync>(
    remote: &Remote,
    key: &str,
    pieces: &[K],
    commands: &[PipeCommand],
    mut tree: btrfs2s3_stream::model::Tree,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(u64, btrfs2s3_stream::model::Tree), PipelineError> {
    download_read(remote, key, pieces, commands, progress, move |reader| {
        btrfs2s3_stream::model::check(reader, &mut tree).map(|_| tree)
    })
    .await
}

/// Streams backup `key` of `remote` (its first piece, then its other `pieces`) through
/// `commands` into `read`, which runs on a blocking thread and reads the stream from its
/// argument (a parser and a model, or a [`btrfs2s3_stream::receive::Receiver`] writing a
/// directory). Returns the bytes downloaded and what `read` returned.
pub async fn download_read<K: AsRef<str> + Sync, T: Send + 'static>(
    remote: &Remote,
    key: &str,
    pieces: &[K],
    commands: &[PipeCommand],
    progress: &(dyn Fn(u64) + Sync),
    read: impl FnOnce(
        std::io::BufReader<std::fs::File>,
    ) -> Result<T, btrfs2s3_stream::model::ApplyError>
    + Send
    + 'static,
) -> Result<(u64, T), PipelineError> {
    // The stream reaches the parser through a pipe: the last command's output, or ours.
    let (mut chain, reader, mut writer): (
        Option<Chain>,
        std::fs::File,
        Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
    ) = if commands.is_empty() {
        let (reader, writer) = std::io::pipe().map_err(|source| PipelineError::Pipe { source })?;
        let writer = std::fs::File::from(OwnedFd::from(writer));
        (
            None,
            std::fs::File::from(OwnedFd::from(reader)),
            Box::new(tokio::fs::File::from_std(writer)),
        )
    } else {
        let (mut chain, started) =
            Chain::spawn("command", commands, Stdio::piped(), Stdio::piped());
        let ends = started.and_then(|()| match (chain.first_stdin(), chain.last_stdout()) {
            (Some(stdin), Some(stdout)) => {
                let fd = stdout
                    .into_owned_fd()
                    .map_err(|source| PipelineError::Pipe { source })?;
                // The parser reads in a blocking thread.
                let _ = nix::fcntl::fcntl(
                    &fd,
                    nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
                );
                Ok((std::fs::File::from(fd), stdin))
            }
            _ => Err(PipelineError::Internal {
                message: "the commands have no pipes".to_owned(),
            }),
        });
        match ends {
            Ok((reader, stdin)) => (Some(chain), reader, Box::new(stdin)),
            Err(error) => {
                chain.kill();
                let _ = chain.wait().await;
                return Err(error);
            }
        }
    };
    let parsing = tokio::task::spawn_blocking(move || {
        let reader = std::io::BufReader::with_capacity(PIPE_CAPACITY as usize, reader);
        read(reader)
    });
    let downloaded = remote
        .download_backup(key, pieces, &mut writer, progress)
        .await;
    // The end of the stream for the first command (or the parser).
    drop(writer);
    if downloaded.is_err()
        && let Some(chain) = &mut chain
    {
        chain.kill();
    }
    let checked = parsing.await.map_err(|error| PipelineError::Internal {
        message: format!("the stream checker failed: {error}"),
    })?;
    let failed_command = match chain {
        Some(chain) => chain.wait_ranked().await,
        None => None,
    };
    // A download that broke off on the network side is the cause; then a command that
    // failed on its own (a wrong key for gpg); then what the parser found; then a command
    // stopped because the parser stopped reading.
    match (downloaded, failed_command, checked) {
        (Err(source), _, _) if !matches!(source, btrfs2s3_s3::Error::WriteDownload { .. }) => {
            Err(PipelineError::Storage { source })
        }
        (_, Some((rank, failure)), checked) if rank == 0 || checked.is_ok() => Err(failure),
        (_, _, Err(source)) => Err(PipelineError::Stream { source }),
        (Err(source), _, Ok(_)) => Err(PipelineError::Storage { source }),
        (Ok(size), _, Ok(value)) => Ok((size, value)),
    }
}

/// The capacity given to the pipes of a pipeline: Linux's default maximum for unprivileged
/// processes (`/proc/sys/fs/pipe-max-size`).
const PIPE_CAPACITY: i32 = 1 << 20;

/// Grows a pipe from the default 64 KiB to [`PIPE_CAPACITY`]: 16 times fewer wake-ups of the
/// writer and the reader per byte (measured by `cargo xtask bench`: about 8% less wall time
/// for a full backup). Best effort: a pipe keeps its size when the user's pipe quota is spent.
fn widen_pipe(pipe: &impl AsFd) {
    let _ = nix::fcntl::fcntl(pipe, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_CAPACITY));
}

/// Reads a stream to its end, keeping only the last `STDERR_TAIL_BYTES`.
async fn read_tail(mut stream: impl AsyncRead + Unpin) -> String {
    let mut tail: Vec<u8> = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                tail.extend_from_slice(&buffer[..n]);
                if tail.len() > STDERR_TAIL_BYTES {
                    tail.drain(..tail.len() - STDERR_TAIL_BYTES);
                }
            }
        }
    }
    String::from_utf8_lossy(&tail).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capacity(pipe: &impl AsFd) -> i32 {
        nix::fcntl::fcntl(pipe, nix::fcntl::FcntlArg::F_GETPIPE_SZ).expect("F_GETPIPE_SZ")
    }

    /// Reads a chunk reader to its end, closing it after `stop_after` bytes (a destination
    /// that failed).
    async fn drain(mut reader: ChunkReader, stop_after: Option<usize>) -> Vec<u8> {
        let mut read = Vec::new();
        let mut buffer = [0u8; 7000];
        loop {
            if stop_after.is_some_and(|limit| read.len() >= limit) {
                reader.close();
                return read;
            }
            let n = reader.read(&mut buffer).await.unwrap();
            if n == 0 {
                return read;
            }
            read.extend_from_slice(&buffer[..n]);
        }
    }

    #[tokio::test]
    async fn a_tee_gives_every_reader_the_whole_stream_and_leaves_out_who_stops() {
        let stream: Vec<u8> = (0..5 * TEE_CHUNK_BYTES + 12345)
            .map(|i| u8::try_from(i % 251).unwrap())
            .collect();
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..3)
            .map(|_| {
                let (sender, receiver) = tokio::sync::mpsc::channel(TEE_CHUNKS_QUEUED);
                (sender, ChunkReader::new(receiver))
            })
            .unzip();
        let mut receivers = receivers.into_iter();
        let progress = std::sync::Mutex::new(Vec::new());
        let record = |bytes: u64| progress.lock().unwrap().push(bytes);
        let mut input = &stream[..];
        let (teed, whole, stopped, other) = tokio::join!(
            tee(&mut input, senders, &record),
            drain(receivers.next().unwrap(), None),
            drain(receivers.next().unwrap(), Some(TEE_CHUNK_BYTES)),
            drain(receivers.next().unwrap(), None),
        );
        teed.unwrap();
        assert!(
            whole == stream && other == stream,
            "every reader got it all"
        );
        assert_eq!(stopped, stream[..stopped.len()], "a prefix");
        assert!(stopped.len() < stream.len());
        let progress = progress.into_inner().unwrap();
        assert_eq!(progress.last(), Some(&(stream.len() as u64)));
    }

    #[tokio::test]
    async fn a_tee_stops_reading_when_every_reader_stopped() {
        let stream = vec![7u8; 20 * TEE_CHUNK_BYTES];
        let (sender, receiver) = tokio::sync::mpsc::channel(TEE_CHUNKS_QUEUED);
        let read = std::sync::atomic::AtomicU64::new(0);
        let record = |bytes: u64| read.store(bytes, std::sync::atomic::Ordering::Relaxed);
        let mut input = &stream[..];
        let (teed, got) = tokio::join!(
            tee(&mut input, vec![sender], &record),
            drain(ChunkReader::new(receiver), Some(1)),
        );
        teed.unwrap();
        assert!(!got.is_empty());
        let read = read.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            read < stream.len() as u64 / 2,
            "the tee stopped early: {read} bytes"
        );
    }

    #[tokio::test]
    async fn the_pipes_of_a_chain_are_widened() {
        let commands = [
            PipeCommand::new(vec!["cat".to_owned()]),
            PipeCommand::new(vec!["cat".to_owned()]),
        ];
        let (mut chain, started) =
            Chain::spawn("command", &commands, Stdio::piped(), Stdio::piped());
        started.expect("cat starts");
        let stdin = chain.first_stdin().expect("an input pipe");
        let stdout = chain.last_stdout().expect("an output pipe");
        assert_eq!(capacity(&stdin), PIPE_CAPACITY);
        assert_eq!(capacity(&stdout), PIPE_CAPACITY);
        drop(stdin);
        assert!(chain.wait().await.is_none());
    }
}
