//! The lease and the tick store in each broker, behind one trait.
//!
//! * Redis: `SET NX PX` under a fencing counter (`INCR`), renewed and
//!   released by Lua compare-and-set scripts ([`redis`]).
//! * PostgreSQL: a lease row taken with `INSERT ... ON CONFLICT DO UPDATE
//!   ... WHERE expires_at < now()` ([`postgres`]).
//! * SQLite: a lock row, the same idea in an `IMMEDIATE` transaction
//!   ([`sqlite`]).
//! * memory: a process-wide map ([`super::leader::MemoryLease`]).
//! * RabbitMQ is not done yet: its natural lease is an exclusive queue
//!   (`exclusive=true`, declared by the leader, deleted by the broker when
//!   its connection dies), with the last ticks in the app's result store.
//!   A RabbitMQ app gets a `Config` error naming this.

pub mod postgres;
pub mod redis;
pub mod sqlite;

use std::sync::Arc;

use super::leader::{LeaderLease, MemoryLease};
use super::store::TickStore;
use crate::backend::registry;
use crate::{Error, Result};

/// A broker that holds both the lease and the last ticks of one app.
pub trait ScheduleBroker: LeaderLease + TickStore {}
impl<T: LeaderLease + TickStore> ScheduleBroker for T {}

/// The lease and store of app `app` in the broker `url` names (connects
/// lazily, on first use).
pub fn open(url: &str, app: &str) -> Result<Arc<dyn ScheduleBroker>> {
    if app.is_empty() {
        return Err(Error::Config("app: must be a non-empty name".into()));
    }
    let kind = registry::backend_kind(url)?;
    match kind.name {
        "memory" => Ok(Arc::new(MemoryLease::new(app))),
        "redis" => Ok(Arc::new(redis::RedisSchedule::new(url, app)?)),
        "postgres" => Ok(Arc::new(postgres::PostgresSchedule::new(url, app)?)),
        "sqlite" => Ok(Arc::new(sqlite::SqliteSchedule::new(url, app)?)),
        other => Err(Error::Config(format!(
            "schedules: the {other} broker has no schedule lease yet (memory, redis, \
             postgresql and sqlite do; RabbitMQ's will be an exclusive queue); run the \
             scheduler with --no-scheduler there, or give the app one of those brokers"
        ))),
    }
}
