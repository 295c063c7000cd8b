//! What the pool counts and how healthy it is.

pub mod health;
pub mod http;
pub mod live;
pub mod metrics;
pub mod stats;

pub use health::{assess, Health};
pub use http::{HttpServer, Source, Watched};
pub use live::{EngineState, Live};
pub use metrics::Metrics;
pub use stats::StatsSnapshot;
