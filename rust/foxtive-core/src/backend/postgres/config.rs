//! What a PostgreSQL backend is given: the DSN (a libpq URL), the queue, the
//! schema its tables live in, and the lease a fetched job is held for.

use std::str::FromStr;
use std::time::Duration;

use super::tls::{take_tls, TlsSettings};
use crate::redact::{query_pairs, redact_url, scrub, url_secrets};
use crate::{Error, Result};

/// The schema when neither the caller nor the DSN (`?schema=`) names one.
pub const DEFAULT_SCHEMA: &str = "foxtive";
/// `application_name` of foxtive's connections (unless the DSN sets one),
/// so an operator (or a test) can find them in `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "foxtive";
/// The longest identifier PostgreSQL keeps whole (NAMEDATALEN - 1).
const MAX_IDENTIFIER: usize = 63;

/// Settings of one PostgreSQL backend.
#[derive(Debug, Clone)]
pub struct PostgresConfig {
    /// The queue: rows of `jobs` with this `queue` value.
    pub queue: String,
    /// The schema holding `jobs`, `dead_letters` and `schema_version`.
    pub schema: String,
    /// How long a fetched job stays leased to this worker without renewal.
    pub lease_timeout: Duration,
    /// Longest sleep of an idle worker between two looks, should a wake-up
    /// (NOTIFY) be lost (PgBouncer in transaction mode, a dropped connection).
    pub poll_interval: Duration,
    /// Reconnect delays after the connection is lost.
    pub reconnect: crate::policy::ReconnectStrategy,
    /// How long a finished (acked) job is kept in `finished_jobs` for
    /// inspection before the retention duty deletes it; zero (the default)
    /// deletes it at the ack.
    pub keep_finished: Duration,
}

impl PostgresConfig {
    pub fn new(queue: &str) -> Self {
        PostgresConfig {
            queue: queue.to_string(),
            schema: DEFAULT_SCHEMA.to_string(),
            lease_timeout: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            reconnect: crate::policy::ReconnectStrategy::exponential(
                Duration::from_millis(200),
                Duration::from_secs(10),
                2.0,
                0.1,
            )
            .unwrap_or_default(),
            keep_finished: Duration::ZERO,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.queue.is_empty() {
            return Err(Error::Config("queue: must be a non-empty string".into()));
        }
        validate_schema(&self.schema)?;
        if self.lease_timeout < Duration::from_millis(100) {
            return Err(Error::Config(format!(
                "lease_timeout: must be >= 0.1 seconds, got {}",
                self.lease_timeout.as_secs_f64()
            )));
        }
        if self.poll_interval.is_zero() {
            return Err(Error::Config("poll_interval: must be > 0".into()));
        }
        Ok(())
    }
}

/// A schema name PostgreSQL keeps as written (it is always quoted).
pub fn validate_schema(schema: &str) -> Result<()> {
    if schema.is_empty() || schema.len() > MAX_IDENTIFIER || schema.contains('\0') {
        return Err(Error::Config(format!(
            "schema: must be 1 to {MAX_IDENTIFIER} bytes, got {schema:?}"
        )));
    }
    Ok(())
}

/// A DSN taken apart: what the client connects with, what may be shown.
#[derive(Clone)]
pub(crate) struct Dsn {
    pub config: tokio_postgres::Config,
    /// The DSN with its password replaced by `***`.
    pub redacted: String,
    /// Texts that must never appear in a message (the password, raw and decoded).
    pub secrets: Vec<String>,
    /// The schema named by `?schema=`, if any.
    pub schema: Option<String>,
    /// What the client connects with, as text (the DSN without `schema=`,
    /// TLS settings included): backends with equal keys (and schema) may
    /// share connections. Holds the password: never shown.
    pub key: String,
    /// `sslmode`, `sslrootcert`, ... (`tls.rs`), taken out of the text the
    /// client parses; every connection opens through [`super::tls::connect`].
    pub tls: TlsSettings,
}

/// Parse a `postgresql://` / `postgres://` URL (or a `key=value` DSN). The
/// `schema` query parameter is foxtive's and is taken out before the rest
/// goes to the client, which rejects options it does not know.
pub(crate) fn parse_dsn(dsn: &str) -> Result<Dsn> {
    let redacted = redact_url(dsn);
    let mut secrets = url_secrets(dsn);
    let (key, schema) = take_schema(dsn);
    let (client_dsn, tls) = take_tls(&key, &mut secrets)?;
    let mut config = tokio_postgres::Config::from_str(&client_dsn).map_err(|e| {
        Error::Config(scrub(
            format!("dsn: not a PostgreSQL URL ({redacted}): {e}"),
            &secrets,
        ))
    })?;
    if let Some(password) = config.get_password() {
        // A key=value DSN or a password the URL parser decoded differently.
        if let Ok(p) = std::str::from_utf8(password) {
            if !p.is_empty() && !secrets.iter().any(|s| s == p) {
                secrets.push(p.to_string());
                secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
            }
        }
    }
    if config.get_application_name().is_none() {
        config.application_name(APPLICATION_NAME);
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(5));
    }
    // A peer that vanished (host down, cable cut) is noticed within a minute.
    config.keepalives_idle(Duration::from_secs(30));
    if let Some(s) = &schema {
        validate_schema(s)?;
    }
    let redacted = scrub(redacted, &secrets);
    Ok(Dsn {
        config,
        redacted,
        secrets,
        schema,
        key,
        tls,
    })
}

/// `dsn` without its `schema=` query parameters, and the last one's value.
fn take_schema(dsn: &str) -> (String, Option<String>) {
    let Some(q) = dsn.find('?') else {
        return (dsn.to_string(), None);
    };
    let (base, query) = (&dsn[..q], &dsn[q + 1..]);
    let mut schema = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let decoded = query_pairs(&format!("?{pair}"));
            match decoded.first() {
                Some((k, v)) if k == "schema" => {
                    schema = Some(v.clone());
                    false
                }
                _ => !pair.is_empty(),
            }
        })
        .collect();
    if kept.is_empty() {
        (base.to_string(), schema)
    } else {
        (format!("{base}?{}", kept.join("&")), schema)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_is_taken_out_of_the_url() {
        let d = parse_dsn("postgresql://u:s3cret@127.0.0.1:5432/test?schema=jobs&sslmode=disable")
            .unwrap();
        assert_eq!(d.schema.as_deref(), Some("jobs"));
        assert_eq!(d.config.get_dbname(), Some("test"));
        assert_eq!(d.config.get_application_name(), Some(APPLICATION_NAME));
        assert!(!d.redacted.contains("s3cret"), "{}", d.redacted);
    }

    #[test]
    fn the_password_never_shows_in_errors() {
        let err = parse_dsn("postgresql://u:s3cret@127.0.0.1:5432/test?bogus=1")
            .err()
            .unwrap()
            .to_string();
        assert!(!err.contains("s3cret"), "{err}");
        assert!(err.contains("dsn"), "{err}");
    }

    #[test]
    fn tls_settings_are_read_and_kept_in_the_key() {
        let d = parse_dsn(
            "postgresql://u:s3cret@db.example/test?sslmode=verify-full&sslrootcert=/ca.pem&schema=s",
        )
        .unwrap();
        assert_eq!(d.tls.mode, super::super::tls::SslMode::VerifyFull);
        assert!(
            d.key.contains("sslrootcert=/ca.pem"),
            "shares only with equal TLS"
        );
        assert!(!d.key.contains("schema="));
        let d = parse_dsn("host=h dbname=d sslmode=verify-ca sslrootcert=/ca.pem").unwrap();
        assert_eq!(d.config.get_dbname(), Some("d"));
        assert_eq!(d.tls.mode, super::super::tls::SslMode::VerifyCa);
    }

    #[test]
    fn a_bad_schema_is_a_config_error() {
        assert!(parse_dsn("postgres://h/db?schema=").is_err());
        assert!(PostgresConfig {
            schema: "x".repeat(64),
            ..PostgresConfig::new("q")
        }
        .validate()
        .is_err());
    }
}
