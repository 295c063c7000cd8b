//! The SQLite backend's settings, and `sqlite:///` URLs.

use std::path::PathBuf;
use std::time::Duration;

use crate::backend::options::Options;
use crate::{Error, Result};

/// The options a SQLite backend takes, by name (`backend_from_url`, the
/// Python class's keywords).
pub const OPTIONS: &[&str] = &["lease_timeout", "busy_timeout", "poll_max", "keep_finished"];

/// Longest pause between two looks at the queue when it is empty.
///
/// Publishes from this process wake idle receivers at once (a `Notify`); a
/// publish from another process is only seen by polling. A poll is one
/// seek in the `(queue, run_at)` index, in WAL mode a read that takes no
/// lock (~10 µs), so 4 polls a second per idle worker cost nothing
/// measurable while keeping the cross-process pickup under 250 ms. Polls
/// back off from [`POLL_MIN`] so a queue that just went idle is looked at
/// again soon; a job delayed to a known time is looked for at that time.
pub const DEFAULT_POLL_MAX: Duration = Duration::from_millis(250);
/// The first pause after the queue went empty.
pub const POLL_MIN: Duration = Duration::from_millis(5);
/// How long a writer waits for another process's write lock.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// How a [`SqliteBackend`](super::SqliteBackend) reaches its file and leases jobs.
#[derive(Debug, Clone)]
pub struct SqliteConfig {
    /// The database file (created with its tables if missing).
    pub path: PathBuf,
    /// The queue this backend consumes and publishes to.
    pub queue: String,
    /// How long a claimed job stays leased without renewal: a worker that
    /// dies mid-job gives its jobs back after this long. Renewed every
    /// third of it while the handler runs.
    pub lease_timeout: Duration,
    pub busy_timeout: Duration,
    pub poll_max: Duration,
    /// How long a finished (acked) job is kept in `foxtive_finished_jobs`
    /// for inspection before the retention duty deletes it; zero (the
    /// default) deletes it at the ack.
    pub keep_finished: Duration,
}

impl SqliteConfig {
    pub fn new(path: impl Into<PathBuf>, queue: &str) -> Self {
        SqliteConfig {
            path: path.into(),
            queue: queue.to_string(),
            lease_timeout: Duration::from_secs(30),
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
            poll_max: DEFAULT_POLL_MAX,
            keep_finished: Duration::ZERO,
        }
    }

    /// The settings for `path` and `queue` from named options (an absent one
    /// keeps its default); an unknown option is an error listing
    /// [`OPTIONS`]. The rules are [`validate`](Self::validate)'s, checked
    /// when the backend is built.
    pub fn from_options(
        path: impl Into<PathBuf>,
        queue: &str,
        mut options: Options,
    ) -> Result<Self> {
        let mut cfg = SqliteConfig::new(path, queue);
        if let Some(d) = options.take_seconds("lease_timeout")? {
            cfg.lease_timeout = d;
        }
        if let Some(d) = options.take_seconds("busy_timeout")? {
            cfg.busy_timeout = d;
        }
        if let Some(d) = options.take_seconds("poll_max")? {
            cfg.poll_max = d;
        }
        if let Some(d) = options.take_seconds("keep_finished")? {
            cfg.keep_finished = d;
        }
        options.finish("SQLite (sqlite:///)", OPTIONS)?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        if self.queue.is_empty() {
            return Err(Error::Config("queue: must be a non-empty string".into()));
        }
        if self.path.as_os_str().is_empty() {
            return Err(Error::Config(
                "path: must be a file path such as foxtive.db".into(),
            ));
        }
        if self.lease_timeout < Duration::from_millis(300) {
            return Err(Error::Config(format!(
                "lease_timeout: must be >= 0.3 seconds, got {}",
                self.lease_timeout.as_secs_f64()
            )));
        }
        if self.poll_max < POLL_MIN {
            return Err(Error::Config(format!(
                "poll_max: must be >= {} seconds",
                POLL_MIN.as_secs_f64()
            )));
        }
        Ok(())
    }
}

/// The file a `sqlite://` URL names, read as SQLAlchemy does:
/// `sqlite:///rel/path.db` is relative to the working directory,
/// `sqlite:////abs/path.db` absolute. No host, no query.
pub fn path_from_url(url: &str) -> Result<PathBuf> {
    let rest = url
        .get(..9)
        .filter(|s| s.eq_ignore_ascii_case("sqlite://"))
        .map(|_| &url[9..])
        .ok_or_else(|| Error::Config(format!("url: expected sqlite:///path.db, got {url:?}")))?;
    let Some(path) = rest.strip_prefix('/') else {
        return Err(Error::Config(format!(
            "url: sqlite:// takes no host: sqlite:///relative.db or sqlite:////absolute.db, \
             got {url:?}"
        )));
    };
    if path.is_empty() || path.contains('?') || path == ":memory:" {
        return Err(Error::Config(format!(
            "url: expected a file path (sqlite:///foxtive.db; no query, no :memory:: \
             several processes share the file), got {url:?}"
        )));
    }
    Ok(PathBuf::from(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_read_as_sqlalchemy_does() {
        assert_eq!(
            path_from_url("sqlite:///foxtive.db").unwrap(),
            PathBuf::from("foxtive.db")
        );
        assert_eq!(
            path_from_url("sqlite:///data/q.db").unwrap(),
            PathBuf::from("data/q.db")
        );
        assert_eq!(
            path_from_url("SQLITE:////tmp/q.db").unwrap(),
            PathBuf::from("/tmp/q.db")
        );
        for bad in [
            "sqlite://",
            "sqlite:///",
            "sqlite://host/x.db",
            "sqlite:///x.db?mode=ro",
            "redis://x",
        ] {
            assert!(path_from_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn settings_come_from_named_options() {
        use crate::backend::options::OptionValue;
        let mut o = Options::new();
        o.set("lease_timeout", OptionValue::Int(2))
            .set("poll_max", OptionValue::Float(0.5));
        let c = SqliteConfig::from_options("x.db", "q", o).unwrap();
        assert_eq!(c.lease_timeout, Duration::from_secs(2));
        assert_eq!(c.poll_max, Duration::from_millis(500));
        assert_eq!(c.busy_timeout, DEFAULT_BUSY_TIMEOUT);
        let mut o = Options::new();
        o.set("prefetch", OptionValue::Int(3));
        let e = SqliteConfig::from_options("x.db", "q", o)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("'prefetch'")
                && e.contains("lease_timeout, busy_timeout, poll_max, keep_finished"),
            "{e}"
        );
    }

    #[test]
    fn config_rejects_what_cannot_work() {
        let mut c = SqliteConfig::new("x.db", "q");
        assert!(c.validate().is_ok());
        c.lease_timeout = Duration::from_millis(10);
        assert!(c.validate().is_err());
        assert!(SqliteConfig::new("x.db", "").validate().is_err());
    }
}
