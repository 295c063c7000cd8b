//! What the pool counts and how healthy it is.

pub mod stats;

pub use stats::{Stats, StatsSnapshot};
