//! The foxtive NATS backend alone (no engine, no Python): receive batches
//! and settle them as acks, reading and settling overlapped as in the
//! engine. Between `nats_ceiling` (async-nats alone) and foxtive's W1 in
//! `benches/compare.py`, it says which part costs what.
//!
//! ```text
//! cargo build --release -p foxtive-core --example nats_backend_drain
//! nats_backend_drain URL STREAM SUBJECT N [PREFETCH] [MAX]
//! ```
//! `MAX` is the room a receive asks for (the pool's free room; default
//! 1000). The stream is filled beforehand; prints `{"n", "seconds", "rate"}`,
//! timed from the first delivery to the last settle.

use std::sync::Arc;
use std::time::{Duration, Instant};

use foxtive_core::backend::nats::{Auth, NatsBackend, NatsConfig};
use foxtive_core::backend::Backend;
use foxtive_core::Settlement;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        return Err("usage: nats_backend_drain URL STREAM SUBJECT N [PREFETCH] [MAX]".into());
    }
    let n: usize = args[3].parse()?;
    let mut cfg = NatsConfig::for_queue(&args[2]);
    cfg.stream = args[1].clone();
    cfg.subject = args[2].clone();
    cfg.prefetch = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(500);
    let max: usize = args.get(5).map(|s| s.parse()).transpose()?.unwrap_or(1000);
    let backend = Arc::new(NatsBackend::new(&args[0], cfg, Auth::default())?);
    backend.connect().await?;
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
    let mut first: Option<Instant> = None;
    while done < n {
        let got = backend.receive(max, Duration::from_secs(5)).await?;
        if got.is_empty() {
            return Err(format!("ran dry after {done}").into());
        }
        first.get_or_insert_with(Instant::now);
        done += got.len();
        let _ = tx.send(
            got.into_iter()
                .map(|d| (Arc::new(d), Settlement::Ack))
                .collect(),
        );
    }
    drop(tx);
    settler.await??;
    let secs = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
    backend.close().await?;
    println!(
        "{{\"n\": {done}, \"seconds\": {secs:.6}, \"rate\": {:.1}}}",
        done as f64 / secs.max(1e-9)
    );
    Ok(())
}
