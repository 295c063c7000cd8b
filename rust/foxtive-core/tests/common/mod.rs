//! Helpers shared by the integration tests (`mod common;` in each).

pub mod postgres;
