//! The one error type of foxtive-core.

/// Everything that can go wrong inside the core.
///
/// Messages never contain a URL password: backends build them from
/// [`crate::redact::redact_url`]ed strings.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is out of range; the text names the setting and what is allowed.
    #[error("{0}")]
    Config(String),
    /// The broker refused or failed an operation.
    #[error("backend error: {0}")]
    Backend(String),
    /// The connection or channel is gone; a reconnect may help.
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    /// A second settlement of the same delivery.
    #[error("message already settled")]
    AlreadySettled,
    /// The engine or backend is shutting down or closed.
    #[error("shut down")]
    Shutdown,
    /// A dead-letter store could not record or read a message.
    #[error("dead-letter store error: {0}")]
    DeadLetter(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// True when the failure is about the connection, so reconnecting may help.
    pub fn is_connection(&self) -> bool {
        matches!(self, Error::ConnectionLost(_))
    }
}
