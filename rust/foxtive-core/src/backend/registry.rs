//! Broker URL scheme -> backend, in one place (`backend_from_url`).
//!
//! Every backend foxtive builds is one [`Kind`], declared in its own folder
//! (`backend/<name>/`) and listed once in [`super::KINDS`]: its schemes, its
//! type name and, when the core can build it from a URL alone, how to open
//! it. Backends announced but not built yet are rows of [`PLANNED`], so their
//! URLs get "not available yet" rather than "unknown scheme". Errors show the
//! URL with its credentials replaced by `***`.

use std::sync::Arc;

use super::options::Options;
use super::Backend;
use crate::dlq::DeadLetterStore;
use crate::redact::redact_url;
use crate::{Error, Result};

/// A backend opened from a URL: the backend and, when it has one, its own
/// dead-letter queue as a store (`foxtive dlq`, `backend.dead_letter_queue()`).
pub struct Opened {
    pub backend: Arc<dyn Backend>,
    pub dead_letters: Option<Arc<dyn DeadLetterStore>>,
}

/// Build a backend from its URL, the queue it consumes and its options.
pub type OpenFn = fn(url: &str, queue: &str, options: Options) -> Result<Opened>;

/// One backend foxtive knows.
#[derive(Debug)]
pub struct Kind {
    /// Short name: returned to Python, shown in errors ("sqlite").
    pub name: &'static str,
    /// The class name, the same in Rust and in Python ("SqliteBackend").
    pub type_name: &'static str,
    /// URL schemes, lower case, in the order errors list them.
    pub schemes: &'static [&'static str],
    /// How the core opens it from a URL; `None` when its Python class builds
    /// it from a typed config of its own (RabbitMQ, Redis Streams).
    pub open: Option<OpenFn>,
}

/// Announced backends that are not built yet.
pub const PLANNED: &[Kind] = &[Kind {
    name: "sqlite",
    type_name: "SqliteBackend",
    schemes: &["sqlite"],
    open: None,
}];

fn available() -> impl Iterator<Item = &'static Kind> {
    super::KINDS.iter().copied()
}

/// Planned backends not built yet (a row left in [`PLANNED`] after its
/// backend landed in [`super::KINDS`] is ignored).
fn planned() -> impl Iterator<Item = &'static Kind> {
    PLANNED
        .iter()
        .filter(|p| !super::KINDS.iter().any(|k| k.name == p.name))
}

/// The kind named `name` ("sqlite"), if it is available.
pub fn kind_named(name: &str) -> Option<&'static Kind> {
    available().find(|k| k.name == name)
}

/// The type names of the backends usable now, each once, in [`super::KINDS`] order.
pub fn available_backends() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = Vec::new();
    for kind in available() {
        if !names.contains(&kind.type_name) {
            names.push(kind.type_name);
        }
    }
    names
}

/// The backend `url` is for, or a `Config` error that lists the schemes
/// usable now and those still to come.
pub fn backend_kind(url: &str) -> Result<&'static Kind> {
    let scheme = scheme_of(url).ok_or_else(|| {
        // The text may be a bare `user:password@host`: never echo it.
        Error::Config(format!(
            "url: expected scheme://..., got text without a URL scheme; {}",
            known_schemes()
        ))
    })?;
    let has = |k: &&Kind| k.schemes.contains(&scheme.as_str());
    if let Some(kind) = available().find(has) {
        return Ok(kind);
    }
    if let Some(kind) = planned().find(has) {
        return Err(Error::Config(format!(
            "backend '{}' is not available yet ({scheme}:// in {}); {}",
            kind.name,
            redact_url(url),
            known_schemes()
        )));
    }
    Err(Error::Config(format!(
        "url: unknown scheme '{scheme}://' in {}; {}",
        redact_url(url),
        known_schemes()
    )))
}

/// Open the backend `url` names, when the core can build it from a URL
/// (`Ok(None)` when its Python class builds it instead).
pub fn open(url: &str, queue: &str, options: Options) -> Result<Option<Opened>> {
    let kind = backend_kind(url)?;
    match kind.open {
        Some(open) => open(url, queue, options).map(Some),
        None => Ok(None),
    }
}

/// The scheme of `url`, lower-cased, when it is a valid RFC 3986 scheme
/// followed by `://`.
fn scheme_of(url: &str) -> Option<String> {
    let (scheme, _) = url.split_once("://")?;
    let mut chars = scheme.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    (first_ok && rest_ok).then(|| scheme.to_ascii_lowercase())
}

/// The sentence every registry error ends with.
pub fn known_schemes() -> String {
    let list = |kinds: &mut dyn Iterator<Item = &Kind>| {
        kinds
            .flat_map(|k| k.schemes.iter())
            .map(|s| format!("{s}://"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let planned = list(&mut planned());
    if planned.is_empty() {
        format!("known schemes: {}", list(&mut available()))
    } else {
        format!(
            "known schemes: {}; not available yet: {planned}",
            list(&mut available())
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_message(url: &str) -> String {
        match backend_kind(url) {
            Err(Error::Config(m)) => m,
            Err(other) => panic!("expected a Config error for {url}, got {other:?}"),
            Ok(kind) => panic!("expected a Config error for {url}, got {kind:?}"),
        }
    }

    #[test]
    fn registry_opens_what_the_core_can_build_from_a_url() {
        let opened = open("memory://", "jobs", Options::new()).unwrap().unwrap();
        assert_eq!(opened.backend.name(), "jobs");
        assert!(opened.dead_letters.is_some());
        let mut extra = Options::new();
        extra.set("colour", super::super::options::OptionValue::Bool(true));
        assert!(open("memory://", "jobs", extra).is_err());
        // RabbitMQ is built by its Python class from its typed config.
        assert!(open("amqp://h", "jobs", Options::new()).unwrap().is_none());
    }

    #[test]
    fn registry_maps_each_available_scheme() {
        let cases = [
            ("memory://", "memory"),
            ("amqp://guest:guest@127.0.0.1:5672/%2f", "rabbitmq"),
            ("AMQPS://h/v", "rabbitmq"),
            ("redis://127.0.0.1:6379/0", "redis"),
            ("rediss://h:6380", "redis"),
            ("unix:///tmp/redis.sock", "redis"),
            ("redis+unix:///tmp/redis.sock?db=1", "redis"),
            ("sqlite:///foxtive.db", "sqlite"),
            ("postgresql://u@h/db?schema=s", "postgres"),
            ("postgres://u@h/db", "postgres"),
            ("nats://h:4222", "nats"),
            ("tls://h:4222", "nats"),
        ];
        for (url, name) in cases {
            assert_eq!(backend_kind(url).ok().map(|k| k.name), Some(name), "{url}");
        }
    }

    #[test]
    fn registry_opens_redis_cluster_urls_with_the_redis_backend() {
        for url in ["redis+cluster://h1:7000,h2:7001", "rediss+cluster://h:7000"] {
            assert_eq!(
                backend_kind(url).ok().map(|k| k.name),
                Some("redis"),
                "{url}"
            );
        }
    }

    #[test]
    fn registry_unknown_and_missing_schemes_list_the_known_ones() {
        let m = config_message("kafka://h:9092");
        assert!(m.contains("unknown scheme 'kafka://'"), "{m}");
        assert!(m.contains("redis+unix://"), "{m}");
        let m = config_message("127.0.0.1:6379");
        assert!(m.contains("without a URL scheme"), "{m}");
        let Err(Error::Config(m)) = open("memory://q", "q", Options::new()) else {
            panic!("memory://q opened");
        };
        assert!(m.contains("takes nothing"), "{m}");
    }

    #[test]
    fn registry_lists_each_available_backend_once() {
        assert_eq!(
            available_backends(),
            [
                "MemoryBackend",
                "RabbitMqBackend",
                "RedisStreamBackend",
                "SqliteBackend",
                "PostgresBackend",
                "NatsBackend"
            ]
        );
    }

    #[test]
    fn registry_errors_never_show_a_password() {
        for url in [
            "kafka://user:s3cret@h:9092",
            "mqtt://user:s3cret@h1:1883,h2:1883",
            "user:s3cret@h:5672",
            "1amqp://user:s3cret@h",
        ] {
            let m = config_message(url);
            assert!(!m.contains("s3cret"), "{m}");
        }
        let Err(e) = open("memory://user:s3cret@h", "q", Options::new()) else {
            panic!("memory:// with text after the scheme opened");
        };
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }
}
