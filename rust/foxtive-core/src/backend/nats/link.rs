//! The connection: credentials, reconnects and the state they show.
//!
//! async-nats reconnects by itself (subscriptions included); this link asks
//! it to wait per foxtive's `ReconnectStrategy`, counts the attempts and
//! turns its events into [`BackendState`]. Credentials come from the URL
//! (`nats://user:password@host`, `nats://token@host`) or from the options
//! (`token`, `nkey_file`, `creds_file`); only the redacted URL is ever
//! shown, and errors from the client are scrubbed of the secrets.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::Context;
use async_nats::{Client, ConnectOptions, Event};

use crate::backend::options::Options;
use crate::backend::BackendState;
use crate::policy::ReconnectStrategy;
use crate::redact::{redact_url, scrub, url_secrets};
use crate::{Error, Result};

const CONNECTED: u8 = 0;
const RECONNECTING: u8 = 1;
const CLOSED: u8 = 2;

/// How foxtive authenticates, besides what the URL says.
#[derive(Clone, Default)]
pub struct Auth {
    pub token: Option<String>,
    /// A file holding an nkey seed (`SU...`).
    pub nkey_file: Option<String>,
    /// A `.creds` file (JWT + nkey seed).
    pub creds_file: Option<String>,
}

impl Auth {
    /// The options [`Auth::take_from`] takes: what a NATS backend and the
    /// stores beside it (schedules) accept besides the URL.
    pub const OPTIONS: &'static [&'static str] = &["token", "nkey_file", "creds_file"];

    /// The credentials among `options` (taken out, the rest left).
    pub fn take_from(options: &mut Options) -> Result<Auth> {
        Ok(Auth {
            token: options.take_str("token")?,
            nkey_file: options.take_str("nkey_file")?,
            creds_file: options.take_str("creds_file")?,
        })
    }
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("nkey_file", &self.nkey_file)
            .field("creds_file", &self.creds_file)
            .finish()
    }
}

#[derive(Default)]
struct Counters {
    state: AtomicU8,
    reconnects: AtomicU64,
    failures: AtomicU32,
}

pub struct Link {
    /// The URL with its credentials replaced by `***`.
    pub url: String,
    /// The URL without its userinfo: what the client is given.
    servers: String,
    user: Option<(String, String)>,
    url_token: Option<String>,
    auth: Auth,
    secrets: Vec<String>,
    name: String,
    reconnect: ReconnectStrategy,
    client: tokio::sync::Mutex<Option<(Client, Context)>>,
    counters: Arc<Counters>,
    closed: AtomicBool,
}

impl Link {
    pub fn new(url: &str, auth: Auth, reconnect: ReconnectStrategy, name: String) -> Result<Self> {
        let redacted = redact_url(url);
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(Error::Config(format!(
                "url: expected nats://host:port, got {redacted}"
            )));
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        if !tail.is_empty() && tail != "/" {
            return Err(Error::Config(format!(
                "url: nats:// takes no path or query (settings are options), got {redacted}"
            )));
        }
        let (userinfo, hosts) = match authority.rfind('@') {
            Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
            None => (None, authority),
        };
        if hosts.is_empty() {
            return Err(Error::Config(format!("url: no host in {redacted}")));
        }
        let (user, url_token) = match userinfo {
            Some(info) => match info.split_once(':') {
                Some((u, p)) => (Some((decode(u), decode(p))), None),
                None => (None, Some(decode(info))),
            },
            None => (None, None),
        };
        let servers = hosts
            .split(',')
            .map(|h| format!("{scheme}://{h}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut secrets = url_secrets(url);
        for s in [url_token.clone(), auth.token.clone()]
            .into_iter()
            .flatten()
        {
            secrets.push(s);
        }
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Ok(Link {
            url: redacted,
            servers,
            user,
            url_token,
            auth,
            secrets,
            name,
            reconnect,
            client: tokio::sync::Mutex::new(None),
            counters: Arc::new(Counters::default()),
            closed: AtomicBool::new(false),
        })
    }

    /// Text from the client with every secret replaced by `***`.
    pub fn scrub(&self, text: impl std::fmt::Display) -> String {
        scrub(text.to_string(), &self.secrets)
    }

    /// An error of `what`, scrubbed; `connection` errors may pass with a reconnect.
    pub fn error(&self, what: &str, e: impl std::fmt::Display, connection: bool) -> Error {
        let text = format!("{what} ({}): {}", self.url, self.scrub(e));
        if connection {
            Error::ConnectionLost(text)
        } else {
            Error::Backend(text)
        }
    }

    /// Used again after close (a publish, a new pool run).
    pub fn open_again(&self) {
        self.closed.store(false, Ordering::Release);
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The client and its JetStream context, connecting first when there is none.
    pub async fn conn(&self) -> Result<(Client, Context)> {
        if self.is_closed() {
            return Err(Error::Shutdown);
        }
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let client = self.connect().await?;
        let js = async_nats::jetstream::new(client.clone());
        *slot = Some((client.clone(), js.clone()));
        Ok((client, js))
    }

    /// The client (connecting first when there is none). Taken for every
    /// receive and settle: only the client is cloned, not the JetStream
    /// context (whose clone copies its API prefix).
    pub async fn client(&self) -> Result<Client> {
        if self.is_closed() {
            return Err(Error::Shutdown);
        }
        if let Some((c, _)) = self.client.lock().await.as_ref() {
            return Ok(c.clone());
        }
        self.conn().await.map(|(c, _)| c)
    }

    async fn connect(&self) -> Result<Client> {
        let mut opts = match &self.auth.creds_file {
            Some(path) => ConnectOptions::with_credentials_file(path)
                .await
                .map_err(|e| self.error("creds_file", e, false))?,
            None => ConnectOptions::new(),
        };
        if let Some(path) = &self.auth.nkey_file {
            let seed = std::fs::read_to_string(path)
                .map_err(|e| Error::Config(format!("nkey_file: cannot read {path:?}: {e}")))?;
            opts = opts.nkey(seed.trim().to_string());
        }
        if let Some((u, p)) = &self.user {
            opts = opts.user_and_password(u.clone(), p.clone());
        }
        if let Some(t) = self.auth.token.as_ref().or(self.url_token.as_ref()) {
            opts = opts.token(t.clone());
        }
        if self.servers.starts_with("tls://") {
            // ring and aws-lc are both in the build: pick one, as for rediss://.
            let _ = rustls::crypto::ring::default_provider().install_default();
            opts = opts.require_tls(true);
        }
        let counters = self.counters.clone();
        let strategy = self.reconnect;
        let on_event = self.counters.clone();
        let url = self.url.clone();
        opts = opts
            .name(&self.name)
            .connection_timeout(Duration::from_secs(5))
            .max_reconnects(None::<usize>)
            .reconnect_delay_callback(move |attempt| {
                counters.reconnects.fetch_add(1, Ordering::AcqRel);
                let n = u32::try_from(attempt.max(1)).unwrap_or(u32::MAX);
                counters.failures.store(n, Ordering::Release);
                if attempt <= 1 {
                    Duration::ZERO
                } else {
                    strategy.delay(n - 1)
                }
            })
            .event_callback(move |event| {
                let c = on_event.clone();
                let url = url.clone();
                async move {
                    match event {
                        Event::Connected => {
                            c.failures.store(0, Ordering::Release);
                            let _ = c.state.compare_exchange(
                                RECONNECTING,
                                CONNECTED,
                                Ordering::AcqRel,
                                Ordering::Acquire,
                            );
                            tracing::info!(url = %url, "NATS connection restored");
                        }
                        Event::Disconnected => {
                            let _ = c.state.compare_exchange(
                                CONNECTED,
                                RECONNECTING,
                                Ordering::AcqRel,
                                Ordering::Acquire,
                            );
                            tracing::warn!(url = %url, "NATS connection lost; reconnecting");
                        }
                        _ => {}
                    }
                }
            });
        self.counters.state.store(CONNECTED, Ordering::Release);
        let client = opts.connect(self.servers.as_str()).await.map_err(|e| {
            self.counters.failures.fetch_add(1, Ordering::AcqRel);
            self.error("connect", e, true)
        })?;
        self.counters.failures.store(0, Ordering::Release);
        Ok(client)
    }

    /// Flush what was sent and close the connection.
    pub async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let client = self.client.lock().await.take();
        if let Some((client, _)) = client {
            let _ = tokio::time::timeout(Duration::from_secs(3), client.flush()).await;
            let _ = tokio::time::timeout(Duration::from_secs(3), client.drain()).await;
        }
        self.counters.state.store(CLOSED, Ordering::Release);
    }

    pub fn state(&self) -> BackendState {
        if self.is_closed() {
            return BackendState::Closed;
        }
        match self.counters.state.load(Ordering::Acquire) {
            RECONNECTING => BackendState::Reconnecting,
            CLOSED => BackendState::Closed,
            _ => BackendState::Connected,
        }
    }

    pub fn reconnect_attempts(&self) -> u64 {
        self.counters.reconnects.load(Ordering::Acquire)
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.counters.failures.load(Ordering::Acquire)
    }
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("url", &self.url)
            .field("auth", &self.auth)
            .finish()
    }
}

/// `%XX` decoded (userinfo of a URL).
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(url: &str) -> Link {
        Link::new(
            url,
            Auth::default(),
            ReconnectStrategy::default(),
            "t".into(),
        )
        .unwrap()
    }

    #[test]
    fn credentials_come_out_of_the_url_and_never_show() {
        let l = link("nats://ann:s3cr%40t@127.0.0.1:4222");
        assert_eq!(l.servers, "nats://127.0.0.1:4222");
        assert_eq!(l.user, Some(("ann".into(), "s3cr@t".into())));
        assert!(!l.url.contains("s3cr"), "{}", l.url);
        let l = link("nats://tok3n@h1:4222,h2:4222");
        assert_eq!(l.servers, "nats://h1:4222,nats://h2:4222");
        assert_eq!(l.url_token.as_deref(), Some("tok3n"));
        assert!(!l.url.contains("tok3n"), "{}", l.url);
        assert!(!l.scrub("auth tok3n failed").contains("tok3n"));
        assert!(!format!("{l:?}").contains("tok3n"));
        let e = Link::new(
            "nats://u:pw@h/x?password=pw",
            Auth::default(),
            ReconnectStrategy::default(),
            "t".into(),
        )
        .unwrap_err();
        assert!(!e.to_string().contains("pw@"), "{e}");
    }
}
