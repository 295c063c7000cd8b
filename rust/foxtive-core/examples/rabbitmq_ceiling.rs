//! The pure-Rust ceiling for the RabbitMQ throughput benchmark: a plain lapin
//! consumer (prefetch, manual acks, one `multiple` ack per drained batch), no
//! foxtive in between. Also pre-publishes the messages.
//!
//! ```text
//! cargo run --release -p foxtive-core --example rabbitmq_ceiling -- publish QUEUE N [SIZE]
//! cargo run --release -p foxtive-core --example rabbitmq_ceiling -- drain QUEUE N [PREFETCH]
//! ```
//! `drain` prints one JSON line: `{"n": …, "seconds": …, "rate": …}`, timed
//! from the first delivery to the last ack.

use std::pin::Pin;
use std::task::Poll;
use std::time::Instant;

use futures_core::Stream;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

async fn publish(queue: &str, n: usize, size: usize) -> Res<()> {
    let conn = Connection::connect(&url(), ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await?;
    let body = vec![b'x'; size];
    let mut pending = Vec::with_capacity(1000);
    for i in 0..n {
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(format!("m-{i}").into());
        pending.push(
            ch.basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &body,
                props,
            )
            .await?,
        );
        if pending.len() == 1000 {
            for c in pending.drain(..) {
                c.await?;
            }
        }
    }
    for c in pending.drain(..) {
        c.await?;
    }
    conn.close(200, "done".into()).await?;
    Ok(())
}

async fn drain(queue: &str, n: usize, prefetch: u16) -> Res<()> {
    let conn = Connection::connect(&url(), ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "ceiling".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut done = 0usize;
    let mut started: Option<Instant> = None;
    let mut batch = Vec::with_capacity(prefetch as usize);
    while done < n {
        // Everything buffered (at least one), then one ack for the lot.
        std::future::poll_fn(|cx| loop {
            match Pin::new(&mut consumer).poll_next(cx) {
                Poll::Ready(Some(Ok(d))) => batch.push(d),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending if batch.is_empty() => return Poll::Pending,
                Poll::Pending => return Poll::Ready(Ok(())),
            }
        })
        .await?;
        started.get_or_insert_with(Instant::now);
        let Some(last) = batch.last() else { break };
        let tag = last.delivery_tag;
        done += batch.len();
        // Touch the body as a handler would.
        let bytes: usize = batch.iter().map(|d| d.data.len()).sum();
        std::hint::black_box(bytes);
        batch.clear();
        ch.basic_ack(tag, BasicAckOptions { multiple: true })
            .await?;
    }
    let secs = started.map_or(0.0, |s| s.elapsed().as_secs_f64());
    println!(
        "{{\"n\": {done}, \"seconds\": {secs:.4}, \"rate\": {:.1}}}",
        done as f64 / secs.max(1e-9)
    );
    conn.close(200, "done".into()).await?;
    Ok(())
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: rabbitmq_ceiling publish QUEUE N [SIZE] | drain QUEUE N [PREFETCH]";
    if args.len() < 4 {
        return Err(usage.into());
    }
    let n: usize = args[3].parse()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        match args[1].as_str() {
            "publish" => publish(&args[2], n, args.get(4).map_or(Ok(100), |s| s.parse())?).await,
            "drain" => drain(&args[2], n, args.get(4).map_or(Ok(1000), |s| s.parse())?).await,
            _ => Err(usage.into()),
        }
    })
}
