//! The pure-Rust ceiling for the RabbitMQ "send" benchmark: plain lapin
//! publishing N task-shaped messages (persistent, `mandatory`, a body of the
//! task envelope's size, the headers `foxtive-task`, `foxtive-envelope`,
//! `content-type`, content type JSON and a message id) to one durable queue,
//! every one confirmed by the broker. No foxtive in between.
//!
//! ```text
//! cargo run --release -p foxtive-core --example rabbitmq_publish_ceiling -- MODE QUEUE N [CHANNELS] [WINDOW]
//! ```
//! Modes (all but the last with publisher confirms, all confirms awaited
//! before the clock stops):
//! * `awaited`: each `basic_publish` awaited before the next one (the write
//!   of its frames to the socket), the confirms awaited at the end;
//! * `pipelined`: up to WINDOW publishes whose frames are not written yet,
//!   in order, then the confirms one by one;
//! * `wait`: as `pipelined`, but the confirms taken by one
//!   `wait_for_confirms` per channel;
//! * `unconfirmed`: as `pipelined` on channels without confirms (what
//!   writing the same messages costs when nothing waits for the broker; not
//!   a contender, a yardstick).
//!
//! CHANNELS (default 1) splits the messages over that many confirm channels
//! of one connection, publishing concurrently. Prints one JSON line:
//! `{"n": …, "seconds": …, "rate": …}`, timed from the first publish to the
//! last confirm.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Instant;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, PublisherConfirm,
};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;
type Publishing<'a> = Pin<Box<dyn Future<Output = lapin::Result<PublisherConfirm>> + Send + 'a>>;

fn url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Awaited,
    Pipelined,
    Wait,
    /// No publisher confirms (for comparison only: nothing says the
    /// broker stored anything).
    Unconfirmed,
}

/// The body `foxtive.envelope.encode((i, "x" * 64), {})` gives.
fn body(i: usize) -> Vec<u8> {
    format!("{{\"args\":[{i},\"{}\"],\"kwargs\":{{}}}}", "x".repeat(64)).into_bytes()
}

fn properties(i: usize) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        "foxtive-task".into(),
        AMQPValue::LongString(LongString::from("bench.noop")),
    );
    headers.insert("foxtive-envelope".into(), AMQPValue::LongLongInt(1));
    headers.insert(
        "content-type".into(),
        AMQPValue::LongString(LongString::from("application/json")),
    );
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(ShortString::from(format!("{i:032x}")))
        .with_headers(headers)
}

/// Publish `range` on `ch`; the confirms (mode `wait`: none, they are taken
/// by `wait_for_confirms`).
async fn publish_range(
    ch: &Channel,
    queue: &str,
    range: std::ops::Range<usize>,
    mode: Mode,
    window: usize,
) -> Res<Vec<PublisherConfirm>> {
    let opts = BasicPublishOptions {
        mandatory: true,
        immediate: false,
    };
    let mut confirms = Vec::with_capacity(range.len());
    if mode == Mode::Awaited {
        for i in range {
            confirms.push(
                ch.basic_publish("".into(), queue.into(), opts, &body(i), properties(i))
                    .await?,
            );
        }
        return Ok(confirms);
    }
    // Pipelined: each publish is polled once as soon as it is made (that
    // first poll takes its delivery tag and queues its frames, in order),
    // then the oldest are polled until their frames are written.
    let mut next = range.start;
    let mut writing: VecDeque<Publishing<'_>> = VecDeque::with_capacity(window);
    std::future::poll_fn(|cx| {
        loop {
            while writing.len() < window && next < range.end {
                let i = next;
                next += 1;
                // The future owns the body (lapin copies it into frames on
                // that first poll).
                let mut f: Publishing<'_> = Box::pin(async move {
                    let b = body(i);
                    ch.basic_publish("".into(), queue.into(), opts, &b, properties(i))
                        .await
                });
                match f.as_mut().poll(cx) {
                    Poll::Ready(r) if writing.is_empty() => confirms.push(r?),
                    Poll::Ready(r) => {
                        let r = r?;
                        writing.push_back(Box::pin(async move { Ok(r) }));
                    }
                    Poll::Pending => writing.push_back(f),
                }
            }
            let mut progressed = false;
            while let Some(f) = writing.front_mut() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(r) => {
                        confirms.push(r?);
                        writing.pop_front();
                        progressed = true;
                    }
                    Poll::Pending => break,
                }
            }
            if writing.is_empty() && next >= range.end {
                return Poll::Ready(Ok::<(), Box<dyn std::error::Error + Send + Sync>>(()));
            }
            if !progressed {
                return Poll::Pending;
            }
        }
    })
    .await?;
    Ok(confirms)
}

async fn settle(ch: &Channel, confirms: Vec<PublisherConfirm>, mode: Mode) -> Res<usize> {
    let n = confirms.len();
    if mode == Mode::Wait {
        drop(confirms);
        let returned = ch.wait_for_confirms().await?;
        if !returned.is_empty() {
            return Err(format!("{} returned (unroutable)", returned.len()).into());
        }
        return Ok(n);
    }
    for c in confirms {
        match c.await? {
            Confirmation::Ack(None) | Confirmation::NotRequested => {}
            other => return Err(format!("not confirmed: {other:?}").into()),
        }
    }
    Ok(n)
}

async fn run(mode: Mode, queue: &str, n: usize, channels: usize, window: usize) -> Res<()> {
    let conn = Connection::connect(&url(), ConnectionProperties::default()).await?;
    let mut chans = Vec::with_capacity(channels);
    for _ in 0..channels.max(1) {
        let ch = conn.create_channel().await?;
        if mode != Mode::Unconfirmed {
            ch.confirm_select(ConfirmSelectOptions::default()).await?;
        }
        chans.push(ch);
    }
    chans[0]
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    // One untimed message per channel: every channel is warm.
    for ch in &chans {
        let c = publish_range(ch, queue, n..n + 1, Mode::Awaited, 1).await?;
        settle(ch, c, Mode::Awaited).await?;
    }
    let started = Instant::now();
    let per = n.div_ceil(chans.len());
    let mut tasks = Vec::new();
    for (k, ch) in chans.iter().enumerate() {
        let (ch, queue) = (ch.clone(), queue.to_string());
        let range = (k * per).min(n)..((k + 1) * per).min(n);
        tasks.push(tokio::spawn(async move {
            let confirms = publish_range(&ch, &queue, range, mode, window).await?;
            settle(&ch, confirms, mode).await
        }));
    }
    let mut done = 0;
    for t in tasks {
        done += t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{{\"n\": {done}, \"seconds\": {secs:.4}, \"rate\": {:.1}}}",
        done as f64 / secs.max(1e-9)
    );
    conn.close(200, "done".into()).await?;
    Ok(())
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: rabbitmq_publish_ceiling awaited|pipelined|wait|unconfirmed QUEUE N [CHANNELS] [WINDOW]";
    if args.len() < 4 {
        return Err(usage.into());
    }
    let mode = match args[1].as_str() {
        "awaited" => Mode::Awaited,
        "pipelined" => Mode::Pipelined,
        "wait" => Mode::Wait,
        "unconfirmed" => Mode::Unconfirmed,
        _ => return Err(usage.into()),
    };
    let n: usize = args[3].parse()?;
    let channels: usize = args.get(4).map_or(Ok(1), |s| s.parse())?;
    let window: usize = args.get(5).map_or(Ok(1024), |s| s.parse())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(mode, &args[2], n, channels, window.max(1)))
}
