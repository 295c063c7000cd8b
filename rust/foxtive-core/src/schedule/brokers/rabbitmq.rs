//! Schedules on RabbitMQ: the lease and the last ticks live in the app's
//! result store (Redis, PostgreSQL or SQLite), not in an exclusive queue.
//!
//! Why not an exclusive queue (`foxtive.schedule.<app>.leader`, held by the
//! leader's connection, dropped by the broker when that connection dies):
//!
//! * No fencing. A leader that is cut off keeps believing it leads until
//!   its own connection notices; RabbitMQ only drops the queue after the
//!   heartbeat timeout (60 s by default), and a successor cannot prove to
//!   anyone that the old leader's writes are stale. The stores here give a
//!   fencing token and a compare-and-set record in one atomic step.
//! * The ticks must be stored durably somewhere that can be compared and
//!   set: RabbitMQ has no such place (a stream holds the history, but no
//!   "current value only if my token is current").
//! * Failover stays bounded by the lease (at most 10 s), whatever the AMQP
//!   heartbeat settings.
//! * RabbitMQ apps already need a result store for `dedup_key`; the
//!   scheduler asks for nothing new.
//!
//! RabbitMQ cannot deduplicate a tick by its message id either, so ticks
//! are recorded (fenced) *before* they are published ([`records_first`]):
//! a stale leader's record fails and it publishes nothing; a leader killed
//! between the record and the publish loses that one tick (at most once
//! for that tick, as the README says).
//!
//! [`records_first`]: crate::schedule::store::TickStore::records_first

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::ScheduleBroker;
use crate::backend::registry;
use crate::schedule::leader::{Holder, LeaderInfo, LeaderLease, Lease};
use crate::schedule::store::{Stored, TickStore};
use crate::{Error, Result};

/// The result-store schemes a RabbitMQ app's schedules can live in.
const STORES: &[&str] = &["redis", "postgres", "sqlite"];

/// A RabbitMQ app's lease and ticks, kept in its result store `results`.
pub struct RabbitSchedule {
    store: Arc<dyn ScheduleBroker>,
}

impl RabbitSchedule {
    /// `results`: the app's result store URL (`App(results="redis://...")`).
    pub fn new(results: Option<&str>, app: &str) -> Result<Self> {
        let url = results.ok_or_else(|| {
            Error::Config(
                "schedules: on RabbitMQ the leader lease and the last ticks live in the \
                 app's result store; give the app one: App(..., results=\"redis://...\" | \
                 \"postgresql://...\" | \"sqlite:///...\"), or run with --no-scheduler"
                    .into(),
            )
        })?;
        let kind = registry::backend_kind(url)?;
        if !STORES.contains(&kind.name) {
            return Err(Error::Config(format!(
                "results: schedules on RabbitMQ keep their lease in a Redis, PostgreSQL or \
                 SQLite result store, not in {}",
                kind.name
            )));
        }
        Ok(RabbitSchedule {
            store: super::open(url, app)?,
        })
    }
}

#[async_trait]
impl LeaderLease for RabbitSchedule {
    async fn try_acquire(&self, holder: &Holder, ttl: Duration) -> Result<Option<Lease>> {
        self.store.try_acquire(holder, ttl).await
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<bool> {
        self.store.renew(lease, ttl).await
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        self.store.release(lease).await
    }

    async fn current(&self) -> Result<Option<LeaderInfo>> {
        self.store.current().await
    }
}

#[async_trait]
impl TickStore for RabbitSchedule {
    async fn last(&self, schedule: &str) -> Result<Option<Stored>> {
        self.store.last(schedule).await
    }

    async fn record(&self, schedule: &str, value: &Stored, token: u64) -> Result<bool> {
        self.store.record(schedule, value, token).await
    }

    async fn all(&self) -> Result<Vec<(String, Stored)>> {
        self.store.all().await
    }

    fn records_first(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_a_result_store_that_can_hold_a_lease() {
        let no_store = RabbitSchedule::new(None, "app").err().unwrap().to_string();
        assert!(no_store.contains("result store"), "{no_store}");
        let amqp = RabbitSchedule::new(Some("amqp://guest:secret@localhost/"), "app")
            .err()
            .unwrap()
            .to_string();
        assert!(amqp.contains("not in rabbitmq"), "{amqp}");
        assert!(!amqp.contains("secret"));
        assert!(RabbitSchedule::new(Some("memory://"), "app").is_err());
        assert!(RabbitSchedule::new(Some("redis://127.0.0.1:6379/0"), "app")
            .unwrap()
            .records_first());
    }

    /// Through `open_with_results`, a RabbitMQ app's lease and ticks are the
    /// result store's (the real Redis): fenced like any other.
    #[tokio::test]
    async fn an_amqp_app_leases_and_records_in_its_redis_result_store() {
        let redis_url = std::env::var("FOXTIVE_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
        let app = format!("rabbit-sched-{:012x}", rand::random::<u64>() >> 16);
        let amqp = "amqp://guest:guest@127.0.0.1:5672/%2f";
        let open = || super::super::open_with_results(amqp, &app, Some(&redis_url)).unwrap();
        let (a, b) = (open(), open());
        assert!(a.records_first() && b.records_first());
        super::super::tests::contract_between(a, b).await;
        // What redis-rs reads under the app's keys is that record.
        let client = ::redis::Client::open(redis_url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let base = format!("foxtive:schedules:{{{app}}}");
        let raw: Option<String> = ::redis::cmd("HGET")
            .arg(format!("{base}:ticks"))
            .arg("s")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(raw.as_deref(), Some("every:1\t1800000001")); // the contract's last record
        super::super::tests::delete_redis_schedules(&mut conn, &app).await;
    }
}
