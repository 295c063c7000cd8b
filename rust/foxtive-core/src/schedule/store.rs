//! The last enqueued tick of each schedule, kept in the broker (next to the
//! lease) so that a scheduler started anywhere knows what was missed.
//!
//! A record is written only by the current lease holder: `record` takes the
//! fencing token and is a no-op (false) when the token is no longer current.

use std::collections::HashMap;
use std::sync::OnceLock;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;

use super::leader::MemoryLease;
use crate::Result;

/// What is stored per schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The trigger's fingerprint when the tick was recorded: a changed
    /// schedule starts afresh instead of catching up under its old rules.
    pub fingerprint: String,
    pub tick: DateTime<Utc>,
}

impl Stored {
    /// `fingerprint\ttick-unix-seconds`.
    pub fn encode(&self) -> String {
        format!("{}\t{}", self.fingerprint, self.tick.timestamp())
    }

    pub fn decode(text: &str) -> Option<Self> {
        let (fingerprint, secs) = text.rsplit_once('\t')?;
        let tick = DateTime::from_timestamp(secs.parse().ok()?, 0)?;
        Some(Stored {
            fingerprint: fingerprint.to_string(),
            tick,
        })
    }
}

/// Last ticks, per app and schedule name.
#[async_trait]
pub trait TickStore: Send + Sync + 'static {
    async fn last(&self, schedule: &str) -> Result<Option<Stored>>;
    /// Store `value` for `schedule` if `token` is still the app's current
    /// lease; false when it is not (nothing written).
    async fn record(&self, schedule: &str, value: &Stored, token: u64) -> Result<bool>;
    /// Every schedule with a stored tick (`foxtive schedules`).
    async fn all(&self) -> Result<Vec<(String, Stored)>>;
    /// True when the queue's broker cannot deduplicate ticks by id
    /// (RabbitMQ): the scheduler then records a tick (fenced) before it
    /// publishes it, instead of after.
    fn records_first(&self) -> bool {
        false
    }
}

fn memory_ticks() -> &'static Mutex<HashMap<(String, String), Stored>> {
    static TICKS: OnceLock<Mutex<HashMap<(String, String), Stored>>> = OnceLock::new();
    TICKS.get_or_init(|| Mutex::new(HashMap::new()))
}

#[async_trait]
impl TickStore for MemoryLease {
    async fn last(&self, schedule: &str) -> Result<Option<Stored>> {
        Ok(memory_ticks()
            .lock()
            .get(&(self.app.clone(), schedule.to_string()))
            .cloned())
    }

    async fn record(&self, schedule: &str, value: &Stored, token: u64) -> Result<bool> {
        if !self.holds(token) {
            return Ok(false);
        }
        memory_ticks()
            .lock()
            .insert((self.app.clone(), schedule.to_string()), value.clone());
        Ok(true)
    }

    async fn all(&self) -> Result<Vec<(String, Stored)>> {
        let mut out: Vec<(String, Stored)> = memory_ticks()
            .lock()
            .iter()
            .filter(|((app, _), _)| *app == self.app)
            .map(|((_, name), v)| (name.clone(), v.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::leader::{Holder, LeaderLease};
    use std::time::Duration;

    #[tokio::test]
    async fn only_the_current_lease_records() {
        let store = MemoryLease::new("store-test-app");
        let lease = store
            .try_acquire(&Holder::this_process(), Duration::from_secs(1))
            .await
            .unwrap()
            .unwrap();
        let v = Stored {
            fingerprint: "every:1".into(),
            tick: DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
        };
        assert!(!store.record("a", &v, lease.token + 1).await.unwrap());
        assert_eq!(store.last("a").await.unwrap(), None);
        assert!(store.record("a", &v, lease.token).await.unwrap());
        assert_eq!(store.last("a").await.unwrap(), Some(v.clone()));
        assert_eq!(Stored::decode(&v.encode()), Some(v));
    }
}
