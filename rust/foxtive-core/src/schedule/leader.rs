//! The leader lease: one scheduler of an app leads at a time, elected
//! through a lease held in the broker itself (no extra service).
//!
//! A lease has a fencing token that grows with every acquisition: whatever
//! the leader writes (the last tick of a schedule) is conditional on its
//! token still being the current one, so a leader that lost its lease
//! without knowing (paused, cut off) cannot overwrite its successor's work.
//! Leases last at most [`MAX_LEASE`] and are renewed by a tokio task
//! ([`super::scheduler`]), never by Python code, so a handler that holds the
//! GIL cannot make a live leader lose its lease.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::{Error, Result};

/// The longest lease foxtive takes: a dead leader is replaced within this
/// (plus one look of the others, a third of it).
pub const MAX_LEASE: Duration = Duration::from_secs(10);
/// The shortest lease (tests): below this, renewals could not keep up.
pub const MIN_LEASE: Duration = Duration::from_millis(500);

/// Who holds (or asks for) a lease: host and process id, shown by
/// `foxtive schedules`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub host: String,
    pub pid: u32,
    /// Unique per scheduler: two schedulers of one process are two holders.
    pub nonce: String,
}

impl Holder {
    /// This process, with a fresh nonce.
    pub fn this_process() -> Self {
        Holder {
            host: hostname(),
            pid: std::process::id(),
            nonce: format!("{:016x}", rand::random::<u64>()),
        }
    }

    /// `host|pid|nonce`, the form stored in the broker.
    pub fn encode(&self) -> String {
        format!(
            "{}|{}|{}",
            self.host.replace('|', "_"),
            self.pid,
            self.nonce
        )
    }

    pub fn decode(text: &str) -> Option<Self> {
        let mut parts = text.rsplitn(3, '|');
        let nonce = parts.next()?.to_string();
        let pid = parts.next()?.parse().ok()?;
        let host = parts.next()?.to_string();
        Some(Holder { host, pid, nonce })
    }
}

/// The host name (the `HOSTNAME` variable, `/etc/hostname`, else "localhost").
pub fn hostname() -> String {
    if let Ok(h) = std::env::var("HOSTNAME") {
        if !h.trim().is_empty() {
            return h.trim().to_string();
        }
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// A lease this scheduler holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Fencing token: larger for every later acquisition.
    pub token: u64,
    pub holder: Holder,
}

/// The current leader, as the broker sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaderInfo {
    pub holder: Holder,
    pub token: u64,
    /// Time left on the lease.
    pub expires_in: Duration,
}

/// A lease in a broker, per app.
#[async_trait]
pub trait LeaderLease: Send + Sync + 'static {
    /// Take the lease if nobody holds it (or the holder's expired).
    async fn try_acquire(&self, holder: &Holder, ttl: Duration) -> Result<Option<Lease>>;
    /// Extend a lease still held; false when it was lost.
    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<bool>;
    /// Give the lease up (shutdown) so that another takes over at once.
    async fn release(&self, lease: &Lease) -> Result<()>;
    /// Who leads now, if anyone.
    async fn current(&self) -> Result<Option<LeaderInfo>>;
}

/// Check a lease duration against [`MIN_LEASE`]..=[`MAX_LEASE`].
pub fn check_lease(ttl: Duration) -> Result<Duration> {
    if ttl < MIN_LEASE || ttl > MAX_LEASE {
        return Err(Error::Config(format!(
            "lease: must be between {} and {} seconds, got {}",
            MIN_LEASE.as_secs_f64(),
            MAX_LEASE.as_secs_f64(),
            ttl.as_secs_f64()
        )));
    }
    Ok(ttl)
}

/// The memory broker's lease: one per app name in this process.
#[derive(Debug, Default)]
struct MemoryLeaseState {
    holder: Option<(Holder, u64, Instant)>,
    fence: u64,
}

fn memory_leases() -> &'static Mutex<HashMap<String, MemoryLeaseState>> {
    static LEASES: OnceLock<Mutex<HashMap<String, MemoryLeaseState>>> = OnceLock::new();
    LEASES.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The memory broker's lease (and tick store: see [`super::store`]).
#[derive(Debug, Clone)]
pub struct MemoryLease {
    pub(crate) app: String,
}

impl MemoryLease {
    pub fn new(app: &str) -> Self {
        MemoryLease {
            app: app.to_string(),
        }
    }

    /// True when `token` is the app's current, unexpired lease.
    pub(crate) fn holds(&self, token: u64) -> bool {
        let leases = memory_leases().lock();
        leases
            .get(&self.app)
            .and_then(|s| s.holder.as_ref())
            .is_some_and(|(_, t, until)| *t == token && *until > Instant::now())
    }
}

#[async_trait]
impl LeaderLease for MemoryLease {
    async fn try_acquire(&self, holder: &Holder, ttl: Duration) -> Result<Option<Lease>> {
        let mut leases = memory_leases().lock();
        let state = leases.entry(self.app.clone()).or_default();
        let now = Instant::now();
        if matches!(&state.holder, Some((_, _, until)) if *until > now) {
            return Ok(None);
        }
        state.fence += 1;
        state.holder = Some((holder.clone(), state.fence, now + ttl));
        Ok(Some(Lease {
            token: state.fence,
            holder: holder.clone(),
        }))
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<bool> {
        let mut leases = memory_leases().lock();
        let Some(state) = leases.get_mut(&self.app) else {
            return Ok(false);
        };
        match &mut state.holder {
            Some((_, token, until)) if *token == lease.token && *until > Instant::now() => {
                *until = Instant::now() + ttl;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        let mut leases = memory_leases().lock();
        if let Some(state) = leases.get_mut(&self.app) {
            if matches!(&state.holder, Some((_, t, _)) if *t == lease.token) {
                state.holder = None;
            }
        }
        Ok(())
    }

    async fn current(&self) -> Result<Option<LeaderInfo>> {
        let leases = memory_leases().lock();
        let now = Instant::now();
        Ok(leases
            .get(&self.app)
            .and_then(|s| s.holder.as_ref())
            .filter(|(_, _, until)| *until > now)
            .map(|(holder, token, until)| LeaderInfo {
                holder: holder.clone(),
                token: *token,
                expires_in: *until - now,
            }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_lease_elects_one_and_fences_the_next() {
        let lease = MemoryLease::new("leader-test-app");
        let (a, b) = (Holder::this_process(), Holder::this_process());
        let ttl = Duration::from_millis(500);
        let first = lease.try_acquire(&a, ttl).await.unwrap().unwrap();
        assert!(lease.try_acquire(&b, ttl).await.unwrap().is_none());
        assert!(lease.renew(&first, ttl).await.unwrap());
        assert_eq!(lease.current().await.unwrap().unwrap().holder, a);
        lease.release(&first).await.unwrap();
        let second = lease.try_acquire(&b, ttl).await.unwrap().unwrap();
        assert!(second.token > first.token);
        assert!(!lease.renew(&first, ttl).await.unwrap());
        assert!(!lease.holds(first.token));
        assert!(lease.holds(second.token));
    }

    #[test]
    fn holders_round_trip_through_their_stored_form() {
        let h = Holder {
            host: "web|1".into(),
            pid: 42,
            nonce: "ab".into(),
        };
        let back = Holder::decode(&h.encode()).unwrap();
        assert_eq!(
            (back.host.as_str(), back.pid, back.nonce.as_str()),
            ("web_1", 42, "ab")
        );
        assert!(check_lease(Duration::from_secs(11)).is_err());
        assert!(check_lease(Duration::from_secs(3)).is_ok());
    }
}
