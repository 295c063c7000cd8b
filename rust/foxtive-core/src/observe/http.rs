//! The small HTTP server behind `HealthServer`: GET /health, /ready,
//! /metrics. Hand-written HTTP/1.1 (one request per connection, GET and
//! HEAD only) because three read-only endpoints do not justify a web stack.
//! With a dashboard (`HealthServer(pool, dashboard=True)`), every other
//! path is passed through, bytes as they come, to the dashboard's own
//! server on a loopback port: the health endpoints stay in Rust, where a
//! handler holding the GIL cannot make them late.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::health::{assess, json_str, Health};
use super::Metrics;
use crate::{Error, Result};

/// Most bytes read of a request head.
const MAX_REQUEST: usize = 8 * 1024;
/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// One pool the server reports on.
pub struct Watched {
    pub metrics: Arc<Metrics>,
    pub concurrency_limit: usize,
}

/// What the server reports on: one pool, or every pool of a process that
/// runs several (`foxtive run app` runs a pool per queue, and one probe must
/// see them all: a process is live only if every pool is, ready only if
/// every pool is).
pub struct Source {
    pub pools: Vec<Watched>,
    /// Where paths other than the health endpoints go, if anywhere.
    pub dashboard: Option<SocketAddr>,
}

pub struct HttpServer {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
}

impl HttpServer {
    /// Bind and serve in the background. Must be called inside the runtime.
    pub async fn start(host: &str, port: u16, source: Arc<Source>) -> Result<Self> {
        let listener = TcpListener::bind((host, port)).await.map_err(|e| {
            Error::Config(format!("host/port: cannot listen on {host}:{port}: {e}"))
        })?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Backend(format!("health server address: {e}")))?;
        let (stop, mut stopped) = watch::channel(false);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        if let Ok((stream, _)) = accepted {
                            tokio::spawn(serve(stream, source.clone()));
                        }
                    }
                    _ = stopped.changed() => break,
                }
            }
        });
        Ok(HttpServer { addr, stop })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stop(&self) {
        self.stop.send_replace(true);
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn serve(mut stream: TcpStream, source: Arc<Source>) {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let head_read = tokio::time::timeout(READ_TIMEOUT, async {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_REQUEST {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        true
    })
    .await;
    if !matches!(head_read, Ok(true)) {
        return;
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let method = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("").split('?').next().unwrap_or("");
    if let Some(dashboard) = source.dashboard {
        if !is_health_path(path) {
            return pass_through(stream, &buf, dashboard).await;
        }
    }
    let (status, content_type, body) = if method != "GET" && method != "HEAD" {
        (
            405,
            "application/json",
            "{\"error\":\"method not allowed\"}".to_string(),
        )
    } else {
        route(path, &source)
    };
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let mut response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method != "HEAD" {
        response.extend_from_slice(body.as_bytes());
    }
    let _ = stream.write_all(&response).await;
    let _ = stream.shutdown().await;
}

fn is_health_path(path: &str) -> bool {
    matches!(
        path,
        "/health" | "/healthz" | "/live" | "/ready" | "/readyz" | "/metrics"
    )
}

/// Hand the connection to the dashboard: what was read so far, then both
/// directions copied until either side closes.
async fn pass_through(mut stream: TcpStream, head: &[u8], to: SocketAddr) {
    let Ok(Ok(mut upstream)) = tokio::time::timeout(READ_TIMEOUT, TcpStream::connect(to)).await
    else {
        let body = "{\"error\":\"dashboard unavailable\"}";
        let response = format!(
            "HTTP/1.1 502 Bad Gateway\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(response.as_bytes()).await;
        return;
    };
    if upstream.write_all(head).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut stream, &mut upstream).await;
}

fn route(path: &str, source: &Source) -> (u16, &'static str, String) {
    match path {
        "/health" | "/healthz" | "/live" => {
            let (live, body) = judge(source);
            (if live { 200 } else { 503 }, "application/json", body)
        }
        "/ready" | "/readyz" => {
            let ready = source
                .pools
                .iter()
                .all(|p| assess(&p.metrics, p.concurrency_limit).ready);
            let (_, body) = judge(source);
            (if ready { 200 } else { 503 }, "application/json", body)
        }
        "/metrics" => {
            // The pools' series, each family declared once, then those of
            // the schedulers running in this process (`foxtive run` runs one
            // beside the pools; their families are their own).
            let pools: Vec<&Metrics> = source.pools.iter().map(|p| &*p.metrics).collect();
            let mut body = Metrics::render_many(&pools);
            body.push_str(&crate::schedule::scheduler::render_running());
            (200, "text/plain; version=0.0.4; charset=utf-8", body)
        }
        other => (
            404,
            "application/json",
            format!("{{\"error\":\"not found\",\"path\":{}}}", json_str(other)),
        ),
    }
}

/// Whether every pool is live (healthy or degraded), and the JSON body: one
/// pool's health as it always was, or for several pools the worst status
/// with each pool's health under `pools`.
fn judge(source: &Source) -> (bool, String) {
    let judged: Vec<(Health, &str)> = source
        .pools
        .iter()
        .map(|p| (assess(&p.metrics, p.concurrency_limit), p.metrics.pool()))
        .collect();
    let live = judged.iter().all(|(h, _)| h.http_status() == 200);
    if let [(h, pool)] = judged.as_slice() {
        return (live, h.to_json(pool));
    }
    let rank = |s: &str| match s {
        "unhealthy" => 2,
        "degraded" => 1,
        _ => 0,
    };
    let worst = judged
        .iter()
        .map(|(h, _)| h.status)
        .max_by_key(|s| rank(s))
        .unwrap_or("unhealthy");
    let ready = !judged.is_empty() && judged.iter().all(|(h, _)| h.ready);
    let pools: Vec<String> = judged.iter().map(|(h, pool)| h.to_json(pool)).collect();
    let body = format!(
        "{{\"status\":{},\"ready\":{ready},\"pools\":[{}]}}",
        json_str(worst),
        pools.join(",")
    );
    (live && !judged.is_empty(), body)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pools "a" and "b", neither running.
    fn two_pools() -> Source {
        let watched = |name: &str| Watched {
            metrics: Metrics::new(name, &[Arc::from("w")]),
            concurrency_limit: 4,
        };
        Source {
            pools: vec![watched("a"), watched("b")],
            dashboard: None,
        }
    }

    #[test]
    fn metrics_of_several_pools_declare_each_family_once() {
        let source = two_pools();
        let (status, content_type, body) = route("/metrics", &source);
        assert_eq!(status, 200);
        assert!(content_type.starts_with("text/plain; version=0.0.4"));
        let types: Vec<&str> = body.lines().filter(|l| l.starts_with("# TYPE ")).collect();
        let mut unique = types.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(
            types.len(),
            unique.len(),
            "a family declared twice:\n{body}"
        );
        for pool in ["a", "b"] {
            let line =
                format!("foxtive_worker_messages_received_total{{pool=\"{pool}\",queue=\"\"}} 0");
            assert!(body.lines().any(|l| l == line), "{pool} missing:\n{body}");
        }
    }

    #[test]
    fn several_pools_are_live_and_ready_only_together() {
        let source = two_pools();
        let (status, _, body) = route("/health", &source);
        assert_eq!(status, 503, "pools that are not running are not live");
        assert!(body.starts_with("{\"status\":\"unhealthy\",\"ready\":false,\"pools\":[{"));
        assert!(body.contains("\"pool\":\"a\"") && body.contains("\"pool\":\"b\""));
        assert_eq!(route("/ready", &source).0, 503);
    }
}
