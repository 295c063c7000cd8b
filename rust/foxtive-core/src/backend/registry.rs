//! Broker URL scheme -> backend kind, in one place (`backend_from_url`).
//!
//! This module decides only which backend a URL is for; building the backend
//! from the URL and the queue name is left to the caller (the Python front
//! maps each kind to its class). A new backend is one row in [`SCHEMES`].
//! Errors show the URL with its credentials replaced by `***`.

use crate::redact::redact_url;
use crate::{Error, Result};

/// Which backend a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Memory,
    RabbitMq,
    Redis,
    Sqlite,
    Postgres,
    Nats,
    RedisCluster,
}

impl BackendKind {
    /// The kind's name, as returned to Python and shown in errors.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Memory => "memory",
            BackendKind::RabbitMq => "rabbitmq",
            BackendKind::Redis => "redis",
            BackendKind::Sqlite => "sqlite",
            BackendKind::Postgres => "postgres",
            BackendKind::Nats => "nats",
            BackendKind::RedisCluster => "redis-cluster",
        }
    }

    /// The backend's type name, the same in Rust and in Python: what error
    /// messages that list the backends show.
    pub fn type_name(self) -> &'static str {
        match self {
            BackendKind::Memory => "MemoryBackend",
            BackendKind::RabbitMq => "RabbitMqBackend",
            BackendKind::Redis | BackendKind::RedisCluster => "RedisStreamBackend",
            BackendKind::Sqlite => "SqliteBackend",
            BackendKind::Postgres => "PostgresBackend",
            BackendKind::Nats => "NatsBackend",
        }
    }

    /// False for the backends that are announced but not built yet: their
    /// URLs get an error saying so rather than "unknown scheme".
    pub fn is_available(self) -> bool {
        matches!(
            self,
            BackendKind::Memory
                | BackendKind::RabbitMq
                | BackendKind::Redis
                | BackendKind::Postgres
        )
    }
}

/// Every scheme foxtive knows, lower case, in the order errors list them.
pub const SCHEMES: &[(&str, BackendKind)] = &[
    ("memory", BackendKind::Memory),
    ("amqp", BackendKind::RabbitMq),
    ("amqps", BackendKind::RabbitMq),
    ("redis", BackendKind::Redis),
    ("rediss", BackendKind::Redis),
    ("unix", BackendKind::Redis),
    ("redis+unix", BackendKind::Redis),
    ("sqlite", BackendKind::Sqlite),
    ("postgresql", BackendKind::Postgres),
    ("postgres", BackendKind::Postgres),
    ("nats", BackendKind::Nats),
    ("redis+cluster", BackendKind::RedisCluster),
];

/// The type names of the backends usable now, each once, in [`SCHEMES`] order.
pub fn available_backends() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = Vec::new();
    for (_, kind) in SCHEMES {
        if kind.is_available() && !names.contains(&kind.type_name()) {
            names.push(kind.type_name());
        }
    }
    names
}

/// The backend kind `url` is for, or a `Config` error that lists the schemes
/// usable now and those still to come.
pub fn backend_kind(url: &str) -> Result<BackendKind> {
    let scheme = scheme_of(url).ok_or_else(|| {
        // The text may be a bare `user:password@host`: never echo it.
        Error::Config(format!(
            "url: expected scheme://..., got text without a URL scheme; {}",
            known_schemes()
        ))
    })?;
    let kind = SCHEMES
        .iter()
        .find(|(name, _)| *name == scheme)
        .map(|(_, kind)| *kind)
        .ok_or_else(|| {
            Error::Config(format!(
                "url: unknown scheme '{scheme}://' in {}; {}",
                redact_url(url),
                known_schemes()
            ))
        })?;
    if !kind.is_available() {
        return Err(Error::Config(format!(
            "backend '{}' is not available yet ({scheme}:// in {}); {}",
            kind.as_str(),
            redact_url(url),
            known_schemes()
        )));
    }
    if kind == BackendKind::Memory && url.len() > "memory://".len() {
        return Err(Error::Config(format!(
            "url: memory:// takes nothing after the scheme (the queue is the second \
             argument), got {}",
            redact_url(url)
        )));
    }
    Ok(kind)
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
    let list = |available: bool| {
        SCHEMES
            .iter()
            .filter(|(_, kind)| kind.is_available() == available)
            .map(|(name, _)| format!("{name}://"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "known schemes: {}; not available yet: {}",
        list(true),
        list(false)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_message(url: &str) -> String {
        match backend_kind(url) {
            Err(Error::Config(m)) => m,
            other => panic!("expected a Config error for {url}, got {other:?}"),
        }
    }

    #[test]
    fn registry_maps_each_available_scheme() {
        let cases = [
            ("memory://", BackendKind::Memory),
            (
                "amqp://guest:guest@127.0.0.1:5672/%2f",
                BackendKind::RabbitMq,
            ),
            ("AMQPS://h/v", BackendKind::RabbitMq),
            ("redis://127.0.0.1:6379/0", BackendKind::Redis),
            ("rediss://h:6380", BackendKind::Redis),
            ("unix:///tmp/redis.sock", BackendKind::Redis),
            ("redis+unix:///tmp/redis.sock?db=1", BackendKind::Redis),
            ("postgresql://u@h/db?schema=s", BackendKind::Postgres),
            ("postgres://u@h/db", BackendKind::Postgres),
        ];
        for (url, kind) in cases {
            assert_eq!(backend_kind(url).ok(), Some(kind), "{url}");
        }
    }

    #[test]
    fn registry_names_backends_still_to_come() {
        for (url, name) in [
            ("sqlite:///foxtive.db", "sqlite"),
            ("nats://h:4222", "nats"),
            ("redis+cluster://h1:7000,h2:7001", "redis-cluster"),
        ] {
            let m = config_message(url);
            assert!(
                m.starts_with(&format!("backend '{name}' is not available yet")),
                "{m}"
            );
            assert!(m.contains("known schemes: memory://, amqp://"), "{m}");
        }
    }

    #[test]
    fn registry_unknown_and_missing_schemes_list_the_known_ones() {
        let m = config_message("kafka://h:9092");
        assert!(m.contains("unknown scheme 'kafka://'"), "{m}");
        assert!(m.contains("redis+unix://"), "{m}");
        let m = config_message("127.0.0.1:6379");
        assert!(m.contains("without a URL scheme"), "{m}");
        assert!(config_message("memory://q").contains("takes nothing"));
    }

    #[test]
    fn registry_lists_each_available_backend_once() {
        assert_eq!(
            available_backends(),
            [
                "MemoryBackend",
                "RabbitMqBackend",
                "RedisStreamBackend",
                "PostgresBackend"
            ]
        );
    }

    #[test]
    fn registry_errors_never_show_a_password() {
        for url in [
            "kafka://user:s3cret@h:9092",
            "nats://user:s3cret@h:4222",
            "user:s3cret@h:5672",
            "memory://user:s3cret@h",
            "1amqp://user:s3cret@h",
        ] {
            let m = config_message(url);
            assert!(!m.contains("s3cret"), "{m}");
        }
    }
}
