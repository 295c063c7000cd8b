//! JetStream KV buckets foxtive keeps beside a queue: the publish dedup
//! keys (`dedup.rs`) and the schedules' lease and last ticks
//! (`schedule/brokers/nats.rs`).
//!
//! KV on NATS 2.9 has no per-key TTL (2.11 brings it), only a bucket-wide
//! `max_age`: values that must expire carry their own expiry, and the
//! bucket's age only collects them afterwards.

use std::time::Duration;

use async_nats::jetstream::kv::{Operation, Store};
use async_nats::jetstream::stream::{Config as StreamConfig, DiscardPolicy, StorageType};
use async_nats::jetstream::Context;

use super::link::Link;
use crate::Result;

/// A bucket name from `prefix` and `name`: letters, digits, `-` and `_`
/// kept, anything else `_`.
pub fn bucket_name(prefix: &str, name: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + name.len());
    out.push_str(prefix);
    out.extend(name.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
            c
        } else {
            '_'
        }
    }));
    out
}

fn valid_token(t: &str) -> bool {
    !t.is_empty()
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'/' | b'_' | b'='))
}

/// The KV key of `text`: itself when it is a valid key not starting with
/// `x.`, else `x.` and its UTF-8 in hex (`@`, `:` and spaces are not key
/// characters). No two texts share a key.
pub fn key_for(text: &str) -> String {
    if !text.starts_with("x.") && text.split('.').all(valid_token) {
        return text.to_string();
    }
    let mut out = String::with_capacity(2 + text.len() * 2);
    out.push_str("x.");
    for b in text.bytes() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The text of a key made by [`key_for`].
pub fn text_of(key: &str) -> Option<String> {
    let Some(hex) = key.strip_prefix("x.") else {
        return Some(key.to_string());
    };
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    (crate::clock::unix_now() * 1000.0) as u64
}

/// The bucket `name` (history 1), created when absent. `max_age` (zero:
/// none) is raised on an existing bucket that keeps values for less.
pub async fn bucket(
    js: &Context,
    link: &Link,
    name: &str,
    max_age: Duration,
    description: &str,
) -> Result<Store> {
    match js.get_key_value(name).await {
        Ok(store) => {
            raise_max_age(js, link, name, max_age).await?;
            Ok(store)
        }
        Err(_) => {
            // The stream a KV bucket is, created directly: async-nats's
            // `create_key_value` first reads the account info, whose 2.9
            // form it cannot parse.
            let config = StreamConfig {
                name: format!("KV_{name}"),
                description: Some(description.to_string()),
                subjects: vec![format!("$KV.{name}.>")],
                max_messages_per_subject: 1,
                max_age,
                storage: StorageType::File,
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                discard: DiscardPolicy::New,
                num_replicas: 1,
                // The server's default (2 min) may not exceed `max_age`.
                duplicate_window: if max_age.is_zero() {
                    Duration::from_secs(120)
                } else {
                    max_age.min(Duration::from_secs(120))
                },
                ..Default::default()
            };
            if let Err(create) = js.create_stream(config).await {
                // Another process may have created it meanwhile.
                if js.get_key_value(name).await.is_err() {
                    return Err(link.error(&format!("KV bucket {name}"), create, true));
                }
                raise_max_age(js, link, name, max_age).await?;
            }
            js.get_key_value(name)
                .await
                .map_err(|e| link.error(&format!("KV bucket {name}"), e, true))
        }
    }
}

/// Keep values for at least `max_age` (two processes raising it at once
/// both end at their maximum or above: it only ever grows).
async fn raise_max_age(js: &Context, link: &Link, name: &str, max_age: Duration) -> Result<()> {
    let stream_name = format!("KV_{name}");
    let stream = js
        .get_stream(&stream_name)
        .await
        .map_err(|e| link.error(&format!("KV bucket {name}"), e, true))?;
    let have = stream.cached_info().config.max_age;
    // Zero keeps values forever.
    if have.is_zero() || (!max_age.is_zero() && have >= max_age) {
        return Ok(());
    }
    let mut config = stream.cached_info().config.clone();
    config.max_age = max_age;
    js.update_stream(config)
        .await
        .map_err(|e| link.error(&format!("KV bucket {name}: raising max_age"), e, true))?;
    Ok(())
}

/// The live value of `key`: `None` when absent, deleted or purged.
pub async fn live(store: &Store, link: &Link, key: &str) -> Result<Option<(Vec<u8>, u64)>> {
    match store.entry(key).await {
        Ok(Some(e)) if e.operation == Operation::Put => Ok(Some((e.value.to_vec(), e.revision))),
        Ok(_) => Ok(None),
        Err(e) => Err(link.error("KV read", e, true)),
    }
}

/// A KV write that lost a compare-and-set (someone else wrote first).
pub fn lost_race(e: &async_nats::jetstream::kv::UpdateError) -> bool {
    e.kind() == async_nats::jetstream::kv::UpdateErrorKind::WrongLastRevision
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_kept_when_valid_and_encoded_otherwise() {
        assert_eq!(key_for("welcome-ann"), "welcome-ann");
        assert_eq!(key_for("a.b_c/d=e"), "a.b_c/d=e");
        for text in [
            "tick@2026-03-29T02:30:00Z",
            "x.41",
            "a..b",
            ".a",
            "a.",
            "",
            "ü",
            "sp ace",
        ] {
            let key = key_for(text);
            assert!(key.starts_with("x."), "{text:?} -> {key}");
            assert_eq!(text_of(&key).as_deref(), Some(text));
        }
        assert_ne!(key_for("x.41"), key_for("A"));
        assert_eq!(
            bucket_name("foxtive_dedup_", "EMAILS.v2"),
            "foxtive_dedup_EMAILS_v2"
        );
    }
}
