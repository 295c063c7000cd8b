//! Lease and last ticks in a NATS JetStream KV bucket.
//!
//! Bucket `foxtive_schedules_<app>` (history 1, nothing expires by age):
//!
//! * key `leader`: `<token>|<expires ms>|<host|pid|nonce>`. Taken with a KV
//!   `create` (refused when the key exists) or, once expired, an `update`
//!   expecting the revision read: of several schedulers exactly one wins.
//!   The fencing token is the **revision** of the write that took the
//!   lease (revisions only grow); that write stores `0` as the token,
//!   renewals (updates expecting the current revision) store the token, so
//!   a reader knows it either way. Release deletes expecting the revision.
//! * key `tick.<schedule>`: `<token>|<stored>`. A record first checks that
//!   its token is the current, unexpired lease, then writes expecting the
//!   revision it read, and never over a record of a larger token: a leader
//!   deposed between the check and the write cannot overwrite its
//!   successor.
//!
//! It connects as the app's NATS backend does (the same [`Auth`]: the
//! URL's `user:password@` or `token@`, `token`, `nkey_file`, `creds_file`),
//! and shows only the redacted URL.
//!
//! Expiry compares the clocks of the hosts (as a lease in a database row
//! does); the lease is at most 10 s and renewed every third of it.

use std::time::Duration;

use async_nats::jetstream::kv::{CreateErrorKind, Store};
use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::OnceCell;

use crate::backend::nats::kv;
use crate::backend::nats::link::{Auth, Link};
use crate::policy::ReconnectStrategy;
use crate::schedule::leader::{Holder, LeaderInfo, LeaderLease, Lease};
use crate::schedule::store::{Stored, TickStore};
use crate::{Error, Result};

const LEADER: &str = "leader";
const TICK: &str = "tick.";
/// How often a record retries a compare-and-set lost to another write.
const ATTEMPTS: usize = 5;

pub struct NatsSchedule {
    link: Link,
    bucket: String,
    store: OnceCell<Store>,
}

/// The `leader` key's value.
#[derive(Debug, PartialEq, Eq)]
struct LeaderValue {
    /// 0 in the write that took the lease (its revision is the token).
    token: u64,
    expires_ms: u64,
    holder: Holder,
}

impl LeaderValue {
    fn encode(&self) -> Bytes {
        Bytes::from(format!(
            "{}|{}|{}",
            self.token,
            self.expires_ms,
            self.holder.encode()
        ))
    }

    fn decode(raw: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(raw).ok()?;
        let (token, rest) = text.split_once('|')?;
        let (expires, holder) = rest.split_once('|')?;
        Some(LeaderValue {
            token: token.parse().ok()?,
            expires_ms: expires.parse().ok()?,
            holder: Holder::decode(holder)?,
        })
    }

    /// The fencing token of a lease stored at `revision`.
    fn token_at(&self, revision: u64) -> u64 {
        if self.token == 0 {
            revision
        } else {
            self.token
        }
    }
}

fn expiry(ttl: Duration) -> u64 {
    kv::now_ms().saturating_add(ttl.as_millis() as u64)
}

impl NatsSchedule {
    /// The lease and ticks of `app` on `url`, connecting with the URL's
    /// credentials and `auth` (those of the app's NATS backend).
    pub fn new(url: &str, app: &str, auth: Auth) -> Result<Self> {
        let link = Link::new(
            url,
            auth,
            ReconnectStrategy::default(),
            format!("foxtive schedules {app}"),
        )?;
        Ok(NatsSchedule {
            link,
            bucket: kv::bucket_name("foxtive_schedules_", app),
            store: OnceCell::new(),
        })
    }

    async fn store(&self) -> Result<Store> {
        self.store
            .get_or_try_init(|| async {
                let (_, js) = self.link.conn().await?;
                kv::bucket(
                    &js,
                    &self.link,
                    &self.bucket,
                    Duration::ZERO,
                    "foxtive schedules: leader lease and last ticks",
                )
                .await
            })
            .await
            .cloned()
    }

    fn error(&self, what: &str, e: impl std::fmt::Display) -> Error {
        self.link
            .error(&format!("schedules on NATS, {what}"), e, false)
    }

    /// The live lease: its value and revision (expired ones included).
    async fn leader(&self, store: &Store) -> Result<Option<(LeaderValue, u64)>> {
        Ok(kv::live(store, &self.link, LEADER)
            .await?
            .and_then(|(raw, rev)| Some((LeaderValue::decode(&raw)?, rev))))
    }

    /// True when `token` is the current, unexpired lease.
    async fn holds(&self, store: &Store, token: u64) -> Result<bool> {
        Ok(self
            .leader(store)
            .await?
            .is_some_and(|(v, rev)| v.token_at(rev) == token && v.expires_ms > kv::now_ms()))
    }
}

#[async_trait]
impl LeaderLease for NatsSchedule {
    async fn try_acquire(&self, holder: &Holder, ttl: Duration) -> Result<Option<Lease>> {
        let store = self.store().await?;
        let value = LeaderValue {
            token: 0,
            expires_ms: expiry(ttl),
            holder: holder.clone(),
        }
        .encode();
        let taken = match self.leader(&store).await? {
            Some((v, _)) if v.expires_ms > kv::now_ms() => return Ok(None),
            Some((_, revision)) => match store.update(LEADER, value, revision).await {
                Ok(rev) => Some(rev),
                Err(e) if kv::lost_race(&e) => None,
                Err(e) => return Err(self.error("taking the lease", e)),
            },
            None => match store.create(LEADER, value).await {
                Ok(rev) => Some(rev),
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => None,
                Err(e) => return Err(self.error("taking the lease", e)),
            },
        };
        Ok(taken.map(|token| Lease {
            token,
            holder: holder.clone(),
        }))
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<bool> {
        let store = self.store().await?;
        let Some((v, revision)) = self.leader(&store).await? else {
            return Ok(false);
        };
        if v.token_at(revision) != lease.token
            || v.holder != lease.holder
            || v.expires_ms <= kv::now_ms()
        {
            return Ok(false);
        }
        let value = LeaderValue {
            token: lease.token,
            expires_ms: expiry(ttl),
            holder: lease.holder.clone(),
        }
        .encode();
        match store.update(LEADER, value, revision).await {
            Ok(_) => Ok(true),
            Err(e) if kv::lost_race(&e) => Ok(false),
            Err(e) => Err(self.error("renewing the lease", e)),
        }
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        let store = self.store().await?;
        if let Some((v, revision)) = self.leader(&store).await? {
            if v.token_at(revision) == lease.token && v.holder == lease.holder {
                // Expecting the revision: a successor's lease is never deleted.
                let _ = store.delete_expect_revision(LEADER, Some(revision)).await;
            }
        }
        Ok(())
    }

    async fn current(&self) -> Result<Option<LeaderInfo>> {
        let store = self.store().await?;
        let now = kv::now_ms();
        Ok(self
            .leader(&store)
            .await?
            .filter(|(v, _)| v.expires_ms > now)
            .map(|(v, rev)| LeaderInfo {
                token: v.token_at(rev),
                expires_in: Duration::from_millis(v.expires_ms - now),
                holder: v.holder,
            }))
    }
}

/// A tick record: `<token>|<Stored>`.
fn decode_tick(raw: &[u8]) -> Option<(u64, Stored)> {
    let text = std::str::from_utf8(raw).ok()?;
    let (token, stored) = text.split_once('|')?;
    Some((token.parse().ok()?, Stored::decode(stored)?))
}

#[async_trait]
impl TickStore for NatsSchedule {
    async fn last(&self, schedule: &str) -> Result<Option<Stored>> {
        let store = self.store().await?;
        let key = format!("{TICK}{}", kv::key_for(schedule));
        Ok(kv::live(&store, &self.link, &key)
            .await?
            .and_then(|(raw, _)| decode_tick(&raw))
            .map(|(_, s)| s))
    }

    async fn record(&self, schedule: &str, value: &Stored, token: u64) -> Result<bool> {
        let store = self.store().await?;
        let key = format!("{TICK}{}", kv::key_for(schedule));
        let body = Bytes::from(format!("{token}|{}", value.encode()));
        for _ in 0..ATTEMPTS {
            if !self.holds(&store, token).await? {
                return Ok(false);
            }
            let written = match kv::live(&store, &self.link, &key).await? {
                Some((raw, _)) if decode_tick(&raw).is_some_and(|(t, _)| t > token) => {
                    // A later leader's record: never overwritten by an older one.
                    return Ok(false);
                }
                Some((_, revision)) => store
                    .update(&key, body.clone(), revision)
                    .await
                    .map_err(|e| (kv::lost_race(&e), e.to_string())),
                None => store
                    .create(&key, body.clone())
                    .await
                    .map_err(|e| (e.kind() == CreateErrorKind::AlreadyExists, e.to_string())),
            };
            match written {
                Ok(_) => return Ok(true),
                Err((true, _)) => continue, // written meanwhile: look again
                Err((false, e)) => return Err(self.error("recording a tick", e)),
            }
        }
        Ok(false)
    }

    async fn all(&self) -> Result<Vec<(String, Stored)>> {
        use futures_core::Stream;

        let store = self.store().await?;
        let mut listing = store
            .keys()
            .await
            .map_err(|e| self.error("listing ticks", e))?;
        let mut keys = Vec::new();
        while let Some(key) =
            std::future::poll_fn(|cx| std::pin::Pin::new(&mut listing).poll_next(cx)).await
        {
            keys.push(key.map_err(|e| self.error("listing ticks", e))?);
        }
        let mut out = Vec::new();
        for key in keys {
            let Some(name) = key.strip_prefix(TICK).and_then(kv::text_of) else {
                continue;
            };
            if let Some((raw, _)) = kv::live(&store, &self.link, &key).await? {
                if let Some((_, stored)) = decode_tick(&raw) {
                    out.push((name, stored));
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_values_round_trip_and_name_their_token() {
        let v = LeaderValue {
            token: 0,
            expires_ms: 1_800_000_000_000,
            holder: Holder {
                host: "h".into(),
                pid: 7,
                nonce: "n".into(),
            },
        };
        let back = LeaderValue::decode(&v.encode()).unwrap();
        assert_eq!(back, v);
        assert_eq!(back.token_at(42), 42);
        assert_eq!(LeaderValue { token: 9, ..back }.token_at(42), 9);
    }
}
