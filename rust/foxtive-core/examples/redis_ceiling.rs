//! The ceiling for draining a Redis stream from Rust: a plain redis-rs
//! consumer, no framework. Loop: XREADGROUP COUNT <batch> then one XACK of
//! the whole batch (plus XDEL with `--delete`) in one pipelined round trip.
//!
//! ```text
//! cargo run --release -p foxtive-core --example redis_ceiling -- \
//!     --url redis://127.0.0.1:6379/0 --stream S --group G --count 100 --expect 100000 [--delete]
//! ```
//! The group must exist. Prints one JSON line: `{"n": .., "seconds": .., "rate": ..}`.

use std::time::{Duration, Instant};

use redis::Value;

struct Args {
    url: String,
    stream: String,
    group: String,
    count: usize,
    expect: usize,
    delete: bool,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        url: "redis://127.0.0.1:6379/0".into(),
        stream: String::new(),
        group: "g".into(),
        count: 100,
        expect: 100_000,
        delete: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => a.url = value()?,
            "--stream" => a.stream = value()?,
            "--group" => a.group = value()?,
            "--count" => a.count = value()?.parse().map_err(|e| format!("--count: {e}"))?,
            "--expect" => a.expect = value()?.parse().map_err(|e| format!("--expect: {e}"))?,
            "--delete" => a.delete = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.stream.is_empty() {
        return Err("--stream is required".into());
    }
    Ok(a)
}

/// The entry ids of an XREADGROUP reply on one stream (bodies are dropped).
fn ids(reply: Value) -> Vec<Vec<u8>> {
    let Value::Array(streams) = reply else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for stream in streams {
        let Value::Array(mut pair) = stream else {
            continue;
        };
        let Some(Value::Array(entries)) = pair.pop() else {
            continue;
        };
        out.reserve(entries.len());
        for entry in entries {
            if let Value::Array(mut parts) = entry {
                if !parts.is_empty() {
                    if let Value::BulkString(id) = parts.swap_remove(0) {
                        out.push(id);
                    }
                }
            }
        }
    }
    out
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = args()?;
    let t0 = Instant::now();
    let client = redis::Client::open(a.url.as_str())?;
    let config =
        redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(10)));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let mut done = 0usize;
    while done < a.expect {
        let reply: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&a.group)
            .arg("ceiling")
            .arg("COUNT")
            .arg(a.count)
            .arg("BLOCK")
            .arg(1000)
            .arg("STREAMS")
            .arg(&a.stream)
            .arg(">")
            .query_async(&mut conn)
            .await?;
        let batch = ids(reply);
        if batch.is_empty() {
            return Err(format!("stream ran dry after {done} of {} entries", a.expect).into());
        }
        let mut pipe = redis::pipe();
        pipe.cmd("XACK")
            .arg(&a.stream)
            .arg(&a.group)
            .arg(&batch)
            .ignore();
        if a.delete {
            pipe.cmd("XDEL").arg(&a.stream).arg(&batch).ignore();
        }
        pipe.query_async::<()>(&mut conn).await?;
        done += batch.len();
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{{\"n\": {done}, \"seconds\": {secs:.6}, \"rate\": {:.1}}}",
        done as f64 / secs
    );
    Ok(())
}
