//! The scheduler: admission under the pool and per-worker limits, the choice
//! of worker, the hand-off lanes to the handler side, and batched settlement.

pub mod engine;
pub mod inflight;
pub mod lane;
pub mod strategy;

pub use engine::{Engine, EngineConfig, EngineState, WorkerSpec};
pub use inflight::InFlight;
pub use lane::{Lane, WakeFd};
pub use strategy::Strategy;
