"""Metrics: what the pool counts, in the Prometheus text format.

pool.metrics_text() is what GET /metrics serves (foxtive.HealthServer);
apps that already run prometheus_client can register
foxtive.PrometheusCollector(pool) instead. Counters live in Rust and add up
across runs of the pool. Labels never contain error texts, only types.

    python examples/metrics.py [--broker memory|rabbitmq|redis]
"""

import asyncio

import _brokers

import foxtive

SHOWN = (
    "foxtive_worker_messages_received_total",
    "foxtive_worker_messages_processed_total",
    "foxtive_worker_errors_total",
    "foxtive_worker_message_processing_duration_seconds_count",
    "foxtive_worker_message_processing_duration_seconds_sum",
)


async def send_email(message: foxtive.Message) -> None:
    await asyncio.sleep(0.005)
    if message.text().endswith("3") and message.attempt == 1:
        raise ConnectionResetError("SMTP hung up")  # retried once, then fine


async def main() -> None:
    args = _brokers.parser(__doc__).parse_args()
    backend = _brokers.backend(args.broker, "emails")
    pool = (
        foxtive.WorkerPoolBuilder("email-pool")
        .with_middleware(foxtive.RetryHandler(max_retries=2, initial_backoff=0.01,
                                              max_backoff=0.05))
        .add_worker(send_email, id="email")
        .with_backend(backend)
        .build()
    )
    await backend.publish_many([f"email {i}".encode() for i in range(25)])
    await pool.run_until_idle_async(timeout=30)

    for line in pool.metrics_text().splitlines():
        if line.startswith(SHOWN):
            print(line)
    try:
        import prometheus_client

        registry = prometheus_client.CollectorRegistry()
        registry.register(foxtive.PrometheusCollector(pool))
        families = {f.name for f in registry.collect()}
        print(f"prometheus_client sees {len(families)} foxtive metric families")
    except ImportError:
        pass
    print(f"processed {pool.stats()['processed']}")
    await _brokers.cleanup(backend)


if __name__ == "__main__":
    asyncio.run(main())
