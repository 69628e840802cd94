//! Stopping a run cleanly: a cancellation that remembers its cause, and the signals that
//! trigger it.

use std::sync::{Arc, OnceLock};

use tokio_util::sync::CancellationToken;

/// Asks a run to stop: uploads in flight are aborted, what remains is skipped, a lock wait
/// ends. Clones share one state.
#[derive(Debug, Clone, Default)]
pub struct Cancel {
    token: CancellationToken,
    cause: Arc<OnceLock<&'static str>>,
}

impl Cancel {
    /// A cancellation that has not happened.
    #[must_use]
    pub fn new() -> Cancel {
        Cancel::default()
    }

    /// Cancels, because of `cause` (`"SIGINT"`); the first cause is the one remembered.
    pub fn cancel(&self, cause: &'static str) {
        let _ = self.cause.set(cause);
        self.token.cancel();
    }

    /// Whether it happened.
    #[must_use]
    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Why, once it happened.
    #[must_use]
    pub fn cause(&self) -> Option<&'static str> {
        self.cause.get().copied()
    }

    /// The token the executor and the S3 client watch.
    #[must_use]
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Waits until it happens.
    pub async fn cancelled(&self) {
        self.token.cancelled().await;
    }
}

/// What the signal watcher saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalEvent {
    /// The first SIGINT or SIGTERM: the run is cancelled and stops cleanly.
    Stopping(&'static str),
    /// Another one after that: the user wants out at once.
    Again(&'static str),
}

/// Cancels `cancel` on the first SIGINT or SIGTERM and tells `notify`; tells it again about
/// the next one (the caller decides what "at once" means). Must be called inside a tokio
/// runtime.
pub fn on_signals(
    cancel: &Cancel,
    notify: impl Fn(SignalEvent) + Send + 'static,
) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let cancel = cancel.clone();
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        };
        cancel.cancel(name);
        notify(SignalEvent::Stopping(name));
        let again = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        };
        notify(SignalEvent::Again(again));
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_cause_is_remembered() {
        let cancel = Cancel::new();
        let clone = cancel.clone();
        assert!(!cancel.is_cancelled());
        assert_eq!(cancel.cause(), None);
        clone.cancel("SIGTERM");
        cancel.cancel("SIGINT");
        assert!(cancel.is_cancelled() && cancel.token().is_cancelled());
        assert_eq!(cancel.cause(), Some("SIGTERM"));
    }
}
