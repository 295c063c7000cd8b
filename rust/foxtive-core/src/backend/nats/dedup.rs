//! Publish deduplication (`Outgoing::dedup`): a message with a key is
//! enqueued only if no message took the key within its TTL, else the id
//! of the one that did is returned.
//!
//! The keys live in the KV bucket `foxtive_dedup_<STREAM>` (`kv.rs`). A
//! key is taken with a KV `create`, which the server refuses when the key
//! exists (`Nats-Expected-Last-Subject-Sequence: 0`), so of two publishers
//! racing for one key exactly one wins. The value is
//! `<expires ms>|<taken ms>|<message id>`: NATS 2.9 has no per-key TTL, so
//! a key found past its expiry is taken over with an `update` expecting
//! its revision (a compare-and-set: again one winner), and the bucket's
//! `max_age` (the longest TTL asked for) only collects old keys.
//!
//! Not one atomic step as Redis's Lua script or SQL's transaction are: the
//! key is taken, then the message published. A failed publish gives the key
//! back (delete expecting the revision). A process that dies between the
//! two leaves the key without its message; a publish of the same message
//! id within [`REPUBLISH_WITHIN`] repairs that (publishes again; the
//! stream's `Nats-Msg-Id` window drops the copy if the first got through),
//! which is how a scheduler tick (id = key) is never lost to a leader's
//! death. Expiry compares this host's clock with the writer's.

use bytes::Bytes;

use super::kv;
use super::*;
use crate::message::Dedup;

/// A key holding this publish's own message id, taken less than this ago,
/// is published again (see the module docs). Well inside the two-minute
/// duplicate window a stream gets by default.
const REPUBLISH_WITHIN: Duration = Duration::from_secs(60);

/// The shortest `max_age` of the dedup bucket.
const BUCKET_MIN_AGE: Duration = Duration::from_secs(60);

/// What a dedup key holds.
#[derive(Debug, PartialEq, Eq)]
struct Held {
    expires_ms: u64,
    taken_ms: u64,
    id: String,
}

impl Held {
    fn encode(&self) -> Bytes {
        Bytes::from(format!("{}|{}|{}", self.expires_ms, self.taken_ms, self.id))
    }

    fn decode(raw: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(raw).ok()?;
        let mut parts = text.splitn(3, '|');
        Some(Held {
            expires_ms: parts.next()?.parse().ok()?,
            taken_ms: parts.next()?.parse().ok()?,
            id: parts.next()?.to_string(),
        })
    }
}

/// How often a key is tried when others keep changing it under us.
const ATTEMPTS: usize = 5;

impl Inner {
    /// The dedup bucket, kept once opened (its `max_age` raised to `ttl`).
    async fn dedup_bucket(&self, ttl: Duration) -> Result<async_nats::jetstream::kv::Store> {
        let mut slot = self.dedup.lock().await;
        if let Some((store, age)) = slot.as_ref() {
            if *age >= ttl {
                return Ok(store.clone());
            }
        }
        let (_, js) = self.link.conn().await?;
        let name = kv::bucket_name("foxtive_dedup_", &self.cfg.stream);
        // The bucket only collects expired keys (values carry their expiry):
        // at least a minute, so a short TTL does not churn its config.
        let age = slot
            .as_ref()
            .map_or(ttl, |(_, a)| (*a).max(ttl))
            .max(BUCKET_MIN_AGE);
        let store = kv::bucket(&js, &self.link, &name, age, "foxtive publish dedup keys").await?;
        *slot = Some((store.clone(), age));
        Ok(store)
    }

    /// Publish `out` unless its dedup key is held; the id holding the key.
    pub(super) async fn publish_once(&self, out: Outgoing, dedup: &Dedup) -> Result<String> {
        let ttl = dedup.ttl.max(Duration::from_millis(1));
        let store = self.dedup_bucket(ttl).await?;
        let key = kv::key_for(&dedup.key);
        let mut out = out;
        let id = out
            .message_id
            .get_or_insert_with(crate::backend::postgres::publish::new_message_id)
            .clone();
        for _ in 0..ATTEMPTS {
            let now = kv::now_ms();
            let mine = Held {
                expires_ms: now.saturating_add(ttl.as_millis() as u64),
                taken_ms: now,
                id: id.clone(),
            };
            let taken = match kv::live(&store, &self.link, &key).await? {
                None => store.create(&key, mine.encode()).await.map_err(|e| {
                    if e.kind() == async_nats::jetstream::kv::CreateErrorKind::AlreadyExists {
                        None
                    } else {
                        Some(self.link.error("dedup key", e, true))
                    }
                }),
                Some((raw, revision)) => match Held::decode(&raw) {
                    Some(held) if held.expires_ms > now => {
                        let fresh =
                            now.saturating_sub(held.taken_ms) < REPUBLISH_WITHIN.as_millis() as u64;
                        if held.id == id && fresh {
                            // Ours, maybe never published: again (see above).
                            self.publish_now(vec![out]).await?;
                        }
                        return Ok(held.id);
                    }
                    // Expired (or unreadable): take it over if still so.
                    _ => store
                        .update(&key, mine.encode(), revision)
                        .await
                        .map_err(|e| {
                            if kv::lost_race(&e) {
                                None
                            } else {
                                Some(self.link.error("dedup key", e, true))
                            }
                        }),
                },
            };
            let revision = match taken {
                Ok(revision) => revision,
                Err(None) => continue, // another publisher wrote first: look again
                Err(Some(e)) => return Err(e),
            };
            return match self.publish_now(vec![out]).await {
                Ok(_) => Ok(id),
                Err(e) => {
                    // Give the key back, unless someone took it meanwhile.
                    let _ = store.delete_expect_revision(&key, Some(revision)).await;
                    Err(e)
                }
            };
        }
        Err(Error::Backend(format!(
            "dedup key {:?}: changed by others {ATTEMPTS} times in a row",
            dedup.key
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_round_trips_with_bars_in_the_id() {
        let h = Held {
            expires_ms: 10,
            taken_ms: 5,
            id: "a|b".into(),
        };
        assert_eq!(Held::decode(&h.encode()), Some(h));
        assert_eq!(Held::decode(b"x|1|id"), None);
    }
}
