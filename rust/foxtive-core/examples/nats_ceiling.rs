//! The pure-Rust ceiling for W1 on NATS JetStream: a plain async-nats pull
//! consumer, no foxtive in between (no handler, no engine, no Python). It
//! reads a stream filled beforehand through a durable pull consumer with
//! explicit acks (created here with foxtive's settings: ack_wait 30 s,
//! max_ack_pending 20,000) and acks every message fire-and-forget (a plain
//! publish of the ack, no round trip), as foxtive does but for the last ack
//! of each batch. Two loops:
//!
//! * `fetch` (foxtive's shape): one pull request out at a time for BATCH
//!   messages (`consumer.fetch()`), its messages acked, then the next;
//! * `stream` (async-nats' own continuous pull, `consumer.stream()`): the
//!   next request goes out while half of the last batch is still to come.
//!
//! ```text
//! cargo build --release -p foxtive-core --example nats_ceiling
//! nats_ceiling drain URL STREAM SUBJECT N [BATCH] [fetch|stream]
//! ```
//! `drain` stops after N messages, or when nothing came for 5 s after the
//! first one, flushes the acks and prints one JSON line: `{"n": …,
//! "seconds": …, "rate": …}`, timed from the first message to the flush
//! after the last ack.

use std::pin::Pin;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use futures_core::Stream;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const DURABLE: &str = "ceiling";
const IDLE: Duration = Duration::from_secs(5);

/// The next item of a stream, `None` once it ended or after `wait`.
async fn next_within<S, T>(s: &mut S, wait: Duration) -> Option<T>
where
    S: Stream<Item = T> + Unpin,
{
    let item = std::future::poll_fn(|cx| Pin::new(&mut *s).poll_next(cx));
    tokio::time::timeout(wait, item).await.ok().flatten()
}

struct Tally {
    n: usize,
    done: usize,
    bytes: usize,
    first: Option<Instant>,
    idle_since: Instant,
}

impl Tally {
    fn take(&mut self, msg: &async_nats::jetstream::Message) {
        self.first.get_or_insert_with(Instant::now);
        self.idle_since = Instant::now();
        self.done += 1;
        self.bytes += msg.payload.len();
    }

    fn over(&self) -> bool {
        self.done >= self.n || (self.first.is_some() && self.idle_since.elapsed() > IDLE)
    }
}

async fn drain_fetch(consumer: &PullConsumer, batch: usize, t: &mut Tally) -> Res<()> {
    while !t.over() {
        let mut msgs = consumer
            .fetch()
            .max_messages(batch)
            .expires(Duration::from_secs(1))
            .messages()
            .await?;
        while let Some(msg) = next_within(&mut msgs, IDLE).await {
            let msg = msg?;
            t.take(&msg);
            msg.ack().await?;
        }
    }
    Ok(())
}

async fn drain_stream(consumer: &PullConsumer, batch: usize, t: &mut Tally) -> Res<()> {
    let mut msgs = consumer
        .stream()
        .max_messages_per_batch(batch)
        .messages()
        .await?;
    while !t.over() {
        match next_within(&mut msgs, Duration::from_millis(500)).await {
            Some(msg) => {
                let msg = msg?;
                t.take(&msg);
                msg.ack().await?;
            }
            None => continue, // `over` decides whether the queue stayed empty
        }
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 5 || args[0] != "drain" {
        return Err("usage: nats_ceiling drain URL STREAM SUBJECT N [BATCH] [fetch|stream]".into());
    }
    let (url, stream, subject) = (&args[1], &args[2], &args[3]);
    let n: usize = args[4].parse()?;
    let batch: usize = args.get(5).map(|s| s.parse()).transpose()?.unwrap_or(500);
    let mode = args.get(6).map(String::as_str).unwrap_or("fetch");
    let client = async_nats::connect(url.as_str()).await?;
    let js = async_nats::jetstream::new(client.clone());
    let consumer: PullConsumer = js
        .get_stream(stream.as_str())
        .await?
        .get_or_create_consumer(
            DURABLE,
            pull::Config {
                durable_name: Some(DURABLE.to_string()),
                filter_subject: subject.to_string(),
                ack_policy: AckPolicy::Explicit,
                deliver_policy: DeliverPolicy::All,
                ack_wait: Duration::from_secs(30),
                max_ack_pending: 20_000,
                ..Default::default()
            },
        )
        .await?;
    let mut t = Tally {
        n,
        done: 0,
        bytes: 0,
        first: None,
        idle_since: Instant::now(),
    };
    match mode {
        "fetch" => drain_fetch(&consumer, batch, &mut t).await?,
        "stream" => drain_stream(&consumer, batch, &mut t).await?,
        other => return Err(format!("unknown mode {other} (fetch or stream)").into()),
    }
    client.flush().await?; // the acks are on the wire before the clock stops
    let seconds = t.first.map_or(0.0, |f| f.elapsed().as_secs_f64());
    let rate = if seconds > 0.0 {
        t.done as f64 / seconds
    } else {
        0.0
    };
    println!(
        "{{\"n\": {}, \"seconds\": {seconds:.6}, \"rate\": {rate:.1}, \"bytes\": {}}}",
        t.done, t.bytes
    );
    Ok(())
}
