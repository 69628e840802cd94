//! One upload: `btrfs send [-p parent] | pipe_through... | S3`.
//!
//! The send runs in a blocking thread writing into a pipe; the `pipe_through` commands run as
//! child processes (no shell) chained by pipes; the last output streams into a staged upload.
//! The object appears only when the send and every command exited successfully: otherwise
//! the staged upload is aborted, so a truncated stream never looks like a complete backup.

use std::fmt;
use std::os::fd::OwnedFd;
use std::process::Stdio;

use btrfs2s3_btrfs::SendOptions;
use btrfs2s3_s3::{Remote, UploadOptions};
use snafu::Snafu;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, ChildStdout, Command};
use tokio::task::JoinHandle;

/// How much of a command's standard error we keep for the error message.
const STDERR_TAIL_BYTES: usize = 2048;

/// Why an upload failed.
#[derive(Debug, Snafu)]
#[snafu(visibility(pub(crate)))]
pub enum UploadError {
    /// A pipe could not be made.
    #[snafu(display("cannot create a pipe"))]
    Pipe {
        /// The OS error.
        source: std::io::Error,
    },
    /// A command could not be started.
    #[snafu(display("cannot start pipe_through command {}", CommandLine(command)))]
    Spawn {
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
    #[snafu(display(
        "pipe_through command {} {status}{}",
        CommandLine(command),
        stderr_text(stderr)
    ))]
    Command {
        /// The command.
        command: Vec<String>,
        /// How it ended ("exited with status 1", "was killed by signal 9").
        status: String,
        /// The end of what it wrote to standard error.
        stderr: String,
    },
    /// The upload itself failed.
    #[snafu(display("the upload failed"))]
    Storage {
        /// The S3 error.
        source: btrfs2s3_s3::Error,
    },
    /// A worker thread died.
    #[snafu(display("internal error: {message}"))]
    Internal {
        /// What happened.
        message: String,
    },
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

/// A started `pipe_through` command.
struct Running {
    command: Vec<String>,
    child: Child,
    stderr: JoinHandle<String>,
}

/// Where the end of the pipeline comes out.
enum Output {
    /// No commands: the send pipe itself.
    SendPipe(OwnedFd),
    /// The last command's standard output.
    Command(ChildStdout),
}

/// Sends `snapshot` (against `options.parent`) through `pipe_through` into `key` of `remote`.
/// Returns the size of the stored object.
pub async fn upload_snapshot(
    remote: &Remote,
    key: &str,
    snapshot: OwnedFd,
    options: SendOptions,
    pipe_through: &[Vec<String>],
    upload_options: &UploadOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<u64, UploadError> {
    let (read_end, write_end) = std::io::pipe().map_err(|source| UploadError::Pipe { source })?;
    let send = tokio::task::spawn_blocking(move || {
        let result = btrfs2s3_btrfs::send(&snapshot, &write_end, &options);
        // Closing the write end is the end of the stream for the reader.
        drop(write_end);
        result
    });
    let (mut running, output) = spawn_commands(pipe_through, OwnedFd::from(read_end));
    let staged = match output {
        Ok(output) => stage(remote, key, output, upload_options, progress).await,
        Err(error) => Err(error),
    };
    // Stop the producers if the upload gave up early; they would block on a full pipe.
    if staged.is_err() {
        for command in &mut running {
            let _ = command.child.start_kill();
        }
    }
    let send_result = send.await.map_err(|e| UploadError::Internal {
        message: format!("the send thread failed: {e}"),
    })?;
    let command_failure = wait_all(running).await;

    // The upload failing (or a command not starting) is the error to report.
    let staged = staged?;
    // A command that failed is the cause of a broken pipe in `btrfs send`, so it goes first.
    let failure =
        command_failure.or_else(|| send_result.err().map(|source| UploadError::Send { source }));
    if let Some(failure) = failure {
        // Best effort: the failure is what matters, and an abandoned staged upload is
        // aborted when dropped anyway.
        let _ = staged.abort().await;
        return Err(failure);
    }
    staged
        .complete()
        .await
        .map_err(|source| UploadError::Storage { source })
}

/// Starts the commands, each reading the previous one's output; the first reads `input`.
fn spawn_commands(
    pipe_through: &[Vec<String>],
    input: OwnedFd,
) -> (Vec<Running>, Result<Output, UploadError>) {
    let mut running: Vec<Running> = Vec::new();
    let mut output = Output::SendPipe(input);
    for command in pipe_through {
        let stdin = match output {
            Output::SendPipe(fd) => Stdio::from(fd),
            Output::Command(stdout) => match stdout.try_into() {
                Ok(stdio) => stdio,
                Err(source) => return (running, Err(UploadError::Pipe { source })),
            },
        };
        let spawned = Command::new(&command[0])
            .args(&command[1..])
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(source) => {
                let error = UploadError::Spawn {
                    command: command.clone(),
                    source,
                };
                return (running, Err(error));
            }
        };
        let stderr = child.stderr.take();
        let stderr = tokio::spawn(async move {
            match stderr {
                Some(stderr) => read_tail(stderr).await,
                None => String::new(),
            }
        });
        let Some(stdout) = child.stdout.take() else {
            return (
                running,
                Err(UploadError::Internal {
                    message: format!("{} has no output pipe", CommandLine(command)),
                }),
            );
        };
        output = Output::Command(stdout);
        running.push(Running {
            command: command.clone(),
            child,
            stderr,
        });
    }
    (running, Ok(output))
}

/// Stages the pipeline's output as an upload of `key`.
async fn stage(
    remote: &Remote,
    key: &str,
    output: Output,
    upload_options: &UploadOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<btrfs2s3_s3::StagedUpload, UploadError> {
    let result = match output {
        Output::Command(mut stdout) => {
            remote
                .stage_upload(key, &mut stdout, upload_options, progress)
                .await
        }
        // Read the send pipe directly, without blocking the runtime.
        Output::SendPipe(fd) => {
            let mut pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(fd)
                .map_err(|source| UploadError::Pipe { source })?;
            remote
                .stage_upload(key, &mut pipe, upload_options, progress)
                .await
        }
    };
    result.map_err(|source| UploadError::Storage { source })
}

/// Waits for every command; returns the first one that failed.
async fn wait_all(running: Vec<Running>) -> Option<UploadError> {
    let mut failure = None;
    for mut command in running {
        let status = command.child.wait().await;
        let stderr = command.stderr.await.unwrap_or_default();
        let failed = match status {
            Ok(status) if status.success() => None,
            Ok(status) => Some(describe_status(status)),
            Err(e) => Some(format!("could not be waited for: {e}")),
        };
        if let (Some(status), None) = (failed, &failure) {
            failure = Some(UploadError::Command {
                command: command.command,
                status,
                stderr,
            });
        }
    }
    failure
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
