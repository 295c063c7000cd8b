//! Pure decisions, no I/O: how long to wait, whether to try again.

pub mod backoff;
pub mod reconnect;
pub mod retry;

pub use backoff::Backoff;
pub use reconnect::ReconnectStrategy;
pub use retry::{FailureKind, RetryInfo, RetryPolicy};
