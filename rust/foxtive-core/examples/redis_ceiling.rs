//! The ceiling for draining a Redis stream from Rust, no framework: the
//! same small RESP connection and reply parser foxtive's reader uses
//! (`src/backend/redis_streams/resp.rs`, compiled in here as it is), and
//! nothing per message but slicing out the entry id.
//!
//! Loop: XREADGROUP COUNT <batch>; then one XACK of the whole batch (plus one
//! XDEL with `--delete`) and the next XREADGROUP go out in one write: one
//! round trip per batch. `--sequential` waits for the acks before sending
//! the next read (two round trips per batch, what this example did before).
//!
//! ```text
//! cargo run --release -p foxtive-core --example redis_ceiling -- \
//!     --url redis://127.0.0.1:6379/0 --stream S --group G --count 100 --expect 100000 \
//!     [--delete] [--sequential]
//! ```
//! The group must exist. Prints one JSON line: `{"n": .., "seconds": .., "rate": ..}`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::IntoConnectionInfo;

#[allow(dead_code)]
#[path = "../src/backend/redis_streams/resp.rs"]
mod resp;

use resp::{Frame, RespConn};

struct Args {
    url: String,
    stream: String,
    group: String,
    count: usize,
    expect: usize,
    delete: bool,
    sequential: bool,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        url: "redis://127.0.0.1:6379/0".into(),
        stream: String::new(),
        group: "g".into(),
        count: 100,
        expect: 100_000,
        delete: false,
        sequential: false,
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
            "--sequential" => a.sequential = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.stream.is_empty() {
        return Err("--stream is required".into());
    }
    Ok(a)
}

/// The entry ids of a one-stream XREADGROUP reply, as slices of the read
/// buffer (bodies are dropped with the frame).
fn ids(reply: Frame, out: &mut Vec<Bytes>) -> Result<(), String> {
    if let Frame::Error(e) = reply {
        return Err(e);
    }
    let Some(stream) = reply.into_items().and_then(|s| s.into_iter().next()) else {
        return Ok(());
    };
    let Some(list) = stream.into_items().and_then(|p| p.into_iter().nth(1)) else {
        return Err("unexpected reply shape".into());
    };
    for entry in list.into_items().unwrap_or_default() {
        if let Some(id) = entry
            .into_items()
            .and_then(|parts| parts.into_iter().next())
            .and_then(Frame::into_bytes)
        {
            out.push(id);
        }
    }
    Ok(())
}

/// Read the replies of `n` commands sent earlier; a server error is fatal.
async fn drain(conn: &mut RespConn, n: usize) -> Result<(), Box<dyn std::error::Error>> {
    for _ in 0..n {
        if let Frame::Error(e) = conn.reply().await? {
            return Err(e.into());
        }
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = args()?;
    let count = a.count.to_string();
    let read: [&[u8]; 11] = [
        b"XREADGROUP",
        b"GROUP",
        a.group.as_bytes(),
        b"ceiling",
        b"COUNT",
        count.as_bytes(),
        b"BLOCK",
        b"1000",
        b"STREAMS",
        a.stream.as_bytes(),
        b">",
    ];
    let t0 = Instant::now();
    let info = a.url.as_str().into_connection_info()?;
    let mut conn = RespConn::connect(&info, Duration::from_secs(10))
        .await?
        .ok_or("TLS is not supported here")?;
    let mut batch: Vec<Bytes> = Vec::with_capacity(a.count);
    let mut done = 0usize;
    let mut acks_in_flight = 0;
    conn.queue(&read);
    conn.flush(1).await?;
    while done < a.expect {
        drain(&mut conn, acks_in_flight).await?;
        batch.clear();
        ids(conn.reply().await?, &mut batch)?;
        if batch.is_empty() {
            return Err(format!("stream ran dry after {done} of {} entries", a.expect).into());
        }
        done += batch.len();
        // One argument list per batch (the ids borrow the batch's buffer).
        let mut args: Vec<&[u8]> = Vec::with_capacity(batch.len() + 3);
        args.extend([&b"XACK"[..], a.stream.as_bytes(), a.group.as_bytes()]);
        args.extend(batch.iter().map(|b| &b[..]));
        conn.queue(&args);
        acks_in_flight = 1;
        if a.delete {
            // XDEL <stream> <ids>: the same arguments less the group.
            args[1] = b"XDEL";
            args[2] = a.stream.as_bytes();
            conn.queue(&args[1..]);
            acks_in_flight = 2;
        }
        if a.sequential {
            conn.flush(acks_in_flight).await?;
            drain(&mut conn, acks_in_flight).await?;
            acks_in_flight = 0;
        }
        let reads = usize::from(done < a.expect);
        if reads == 1 {
            conn.queue(&read);
        }
        conn.flush(reads + if a.sequential { 0 } else { acks_in_flight })
            .await?;
    }
    drain(&mut conn, acks_in_flight).await?;
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{{\"n\": {done}, \"seconds\": {secs:.6}, \"rate\": {:.1}}}",
        done as f64 / secs
    );
    Ok(())
}
