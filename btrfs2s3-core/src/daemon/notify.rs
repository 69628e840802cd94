//! The systemd notification protocol (`sd_notify`), without libsystemd: datagrams of
//! `KEY=value` lines to the socket `$NOTIFY_SOCKET` names (a path, or `@name` in the
//! abstract namespace). `READY=1` once running, `STATUS=` lines for `systemctl status`,
//! `RELOADING=1` and `STOPPING=1` around a reload and a stop, `WATCHDOG=1` as often as
//! `$WATCHDOG_USEC` asks. Without `$NOTIFY_SOCKET` (not started by systemd) nothing is sent.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Where notifications go, if anywhere.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// The notifier `$NOTIFY_SOCKET` and `$WATCHDOG_USEC` (for this process, if
    /// `$WATCHDOG_PID` says so) describe; an error names a socket that cannot be used.
    pub fn from_env() -> Result<Notifier, String> {
        let target = match std::env::var_os("NOTIFY_SOCKET") {
            None => None,
            Some(name) => Some(connect(&name).map_err(|error| {
                format!(
                    "cannot use NOTIFY_SOCKET={}: {error}",
                    crate::text::escape_os(&name)
                )
            })?),
        };
        let for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .is_none_or(|pid| pid.trim() == std::process::id().to_string());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|usec| usec.trim().parse::<u64>().ok())
            .filter(|usec| *usec > 0 && for_us && target.is_some())
            .map(Duration::from_micros);
        Ok(Notifier { target, watchdog })
    }

    /// A notifier that sends nothing.
    #[must_use]
    pub fn none() -> Notifier {
        Notifier {
            target: None,
            watchdog: None,
        }
    }

    /// How often systemd wants to hear `WATCHDOG=1`; we send it twice as often.
    #[must_use]
    pub fn watchdog_period(&self) -> Option<Duration> {
        self.watchdog.map(|period| period / 2)
    }

    /// Sends `state` (newline-separated `KEY=value` assignments); best effort.
    pub fn send(&self, state: &str) {
        if let Some((socket, address)) = &self.target {
            let _ = socket.send_to_addr(state.as_bytes(), address);
        }
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// A status line for `systemctl status`.
    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={}", one_line(status)));
    }

    /// A reload starts.
    pub fn reloading(&self) {
        let monotonic = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|now| now.tv_sec() * 1_000_000 + now.tv_nsec() / 1000)
            .unwrap_or_default();
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={monotonic}"));
    }

    /// The service stops.
    pub fn stopping(&self, status: &str) {
        self.send(&format!("STOPPING=1\nSTATUS={}", one_line(status)));
    }

    /// The watchdog's keep-alive.
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }
}

/// Status text on one line (a newline would start a new assignment).
fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], "; ")
}

fn connect(name: &std::ffi::OsStr) -> std::io::Result<(UnixDatagram, SocketAddr)> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = name.as_bytes();
    let address = match bytes.first() {
        Some(b'@') => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(&bytes[1..])?
        }
        Some(b'/') => SocketAddr::from_pathname(name)?,
        _ => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not an absolute path or an @abstract name",
            ));
        }
    };
    let socket = UnixDatagram::unbound()?;
    // Never wait for a reader that is behind: a notification is best effort, and a daemon
    // blocked on its status line would be a daemon stuck.
    socket.set_nonblocking(true)?;
    Ok((socket, address))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_reach_a_path_socket_as_one_datagram_each() {
        let dir = std::env::temp_dir().join(format!("btrfs2s3-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).unwrap();
        let (socket, address) = connect(path.as_os_str()).unwrap();
        let notifier = Notifier {
            target: Some((socket, address)),
            watchdog: Some(Duration::from_secs(30)),
        };
        notifier.ready("waiting\nfor changes");
        notifier.stopping("SIGTERM");
        let mut buffer = [0; 256];
        let n = listener.recv(&mut buffer).unwrap();
        assert_eq!(&buffer[..n], b"READY=1\nSTATUS=waiting; for changes");
        let n = listener.recv(&mut buffer).unwrap();
        assert_eq!(&buffer[..n], b"STOPPING=1\nSTATUS=SIGTERM");
        assert_eq!(notifier.watchdog_period(), Some(Duration::from_secs(15)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn abstract_names_and_bad_names() {
        let name = format!("btrfs2s3-test-{}", std::process::id());
        let address = {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes()).unwrap()
        };
        let listener = UnixDatagram::bind_addr(&address).unwrap();
        let (socket, address) = connect(std::ffi::OsStr::new(&format!("@{name}"))).unwrap();
        socket.send_to_addr(b"READY=1", &address).unwrap();
        let mut buffer = [0; 16];
        let n = listener.recv(&mut buffer).unwrap();
        assert_eq!(&buffer[..n], b"READY=1");
        assert!(connect(std::ffi::OsStr::new("relative")).is_err());
    }
}
