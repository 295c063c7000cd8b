//! The foxtive Redis Streams backend alone (no engine, no Python): receive
//! batches and settle them as acks, as fast as it can. Shows what the
//! backend costs over the plain redis-rs loop of `redis_ceiling`.
//!
//! ```text
//! cargo run --release -p foxtive-core --example redis_backend_drain -- \
//!     --stream S --group G --count 100 --expect 100000 [--delete]
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use foxtive_core::backend::redis_streams::{RedisStreamBackend, RedisStreamConfig};
use foxtive_core::backend::Backend;
use foxtive_core::Settlement;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut url = "redis://127.0.0.1:6379/0".to_string();
    let (mut stream, mut group, mut count, mut expect, mut delete) = (
        String::new(),
        "g".to_string(),
        100usize,
        100_000usize,
        false,
    );
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--url" => url = it.next().ok_or("--url")?,
            "--stream" => stream = it.next().ok_or("--stream")?,
            "--group" => group = it.next().ok_or("--group")?,
            "--count" => count = it.next().ok_or("--count")?.parse()?,
            "--expect" => expect = it.next().ok_or("--expect")?.parse()?,
            "--delete" => delete = true,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let mut cfg = RedisStreamConfig::new(&stream, &group);
    cfg.batch_size = count;
    cfg.delete_on_ack = delete;
    let backend = Arc::new(RedisStreamBackend::new(&url, cfg)?);
    let t0 = Instant::now();
    backend.connect().await?;
    // Reading and settling overlap, as in the engine.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<_>>();
    let settler = {
        let backend = backend.clone();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch: Vec<_> = first;
                while let Ok(more) = rx.try_recv() {
                    batch.extend(more);
                }
                backend.settle(batch).await?;
            }
            Ok::<_, foxtive_core::Error>(())
        })
    };
    let mut done = 0;
    while done < expect {
        let got = backend.receive(count, Duration::from_secs(1)).await?;
        if got.is_empty() {
            return Err(format!("ran dry after {done}").into());
        }
        done += got.len();
        let _ = tx.send(
            got.into_iter()
                .map(|d| (Arc::new(d), Settlement::Ack))
                .collect(),
        );
    }
    drop(tx);
    settler.await??;
    backend.close().await?;
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{{\"n\": {done}, \"seconds\": {secs:.6}, \"rate\": {:.1}}}",
        done as f64 / secs
    );
    Ok(())
}
