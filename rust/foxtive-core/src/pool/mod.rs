//! The scheduler: admission under the pool and per-worker limits, the choice
//! of worker, the hand-off lanes to the handler side, and batched settlement.

pub mod config;
mod drain;
pub mod engine;
mod fetch;
pub mod inflight;
pub mod lane;
pub mod runner;
mod settle;
pub mod strategy;

pub use crate::observe::EngineState;
pub use config::{EngineConfig, WorkerSpec, DEFAULT_MAX_DELIVERIES};
pub use engine::{compose_policies, Engine};
pub use inflight::InFlight;
pub use lane::{Lane, WakeFd};
pub use runner::HandlerResult;
pub use strategy::Strategy;
