//! Running commands: print what runs, fail with the command line when it fails.

use std::process::{Command, Stdio};

use crate::Result;

/// `cargo`, the one that runs xtask.
pub fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.current_dir(workspace_root());
    command
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// Renders a command line for messages.
pub fn display(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs a command with inherited stdio; an error names the command and its exit status.
pub fn run(command: &mut Command) -> Result<()> {
    eprintln!("xtask: $ {}", display(command));
    let status = command
        .status()
        .map_err(|e| format!("cannot run {}: {e}", display(command)))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{} failed: {status}", display(command)).into())
    }
}

/// Runs a command quietly and returns its stdout; an error carries its stderr.
pub fn output(command: &mut Command) -> Result<String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", display(command)))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "{} failed: {}\n{}{}",
            display(command),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
        .into())
    }
}

/// Whether `program` is found in `PATH` (or the sbin directories, where root's tools live).
pub fn find_program(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(Into::into))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}
