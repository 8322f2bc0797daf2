//! [`TaskFailed`]: blocking work (PKCS#11 calls, key derivation, file
//! streaming) that ran on tokio's blocking threads and never finished
//! because it panicked or was cancelled. That is a bug or a shutdown, never
//! something an operator or a client did, so it is an error kind of its own
//! (an internal error), with the join error as its source. Every layer's
//! error type wraps it in a `TaskFailed` variant:
//!
//! ```ignore
//! tokio::task::spawn_blocking(move || open_token(&cfg))
//!     .await
//!     .map_err(TaskFailed::doing("opening the token"))??;
//! ```

use tokio::task::JoinError;

/// Blocking work that panicked or was cancelled before it finished.
#[derive(Debug, thiserror::Error)]
#[error("{what}: task failed: {source}")]
pub struct TaskFailed {
    what: &'static str,
    #[source]
    source: JoinError,
}

impl TaskFailed {
    /// The failure of the task doing `what`.
    pub fn new(what: &'static str, source: JoinError) -> Self {
        Self { what, source }
    }

    /// `.map_err(TaskFailed::doing("opening the token"))` on the result of
    /// awaiting a blocking task.
    pub fn doing(what: &'static str) -> impl FnOnce(JoinError) -> TaskFailed {
        move |source| Self::new(what, source)
    }

    /// What the task was doing.
    pub fn what(&self) -> &'static str {
        self.what
    }

    /// Whether the task panicked (rather than being cancelled).
    pub fn is_panic(&self) -> bool {
        self.source.is_panic()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_task_is_a_task_failure_that_keeps_its_cause() {
        let e = tokio::task::spawn_blocking(|| -> u8 { panic!("boom") })
            .await
            .map_err(TaskFailed::doing("opening the token"))
            .unwrap_err();
        assert!(e.is_panic());
        assert_eq!(e.what(), "opening the token");
        assert!(
            e.to_string()
                .starts_with("opening the token: task failed: ")
        );
        let source = std::error::Error::source(&e).expect("the join error is kept");
        assert!(source.is::<JoinError>());
    }
}
