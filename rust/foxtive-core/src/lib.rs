//! foxtive-core: the broker-agnostic engine behind the `foxtive` Python package.
//!
//! Everything that runs per message and is not the user's code lives here:
//! backends, admission (capacity, strategies), settlement, the failure policy
//! and the counters. Nothing in this crate knows Python exists; the PyO3 glue
//! in `foxtive-py` drives it through [`pool::Engine`].

pub mod backend;
pub mod clock;
pub mod dlq;
pub mod error;
pub mod message;
pub mod observe;
pub mod policy;
pub mod pool;
pub mod redact;
pub mod redis_url;
pub mod schedule;

pub use error::{Error, Result};
pub use message::{Delivery, HeaderValue, Headers, Outgoing, PackedReceipt, Receipt, Settlement};
