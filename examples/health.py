"""Health checks for Kubernetes: /health (liveness), /ready (readiness), /metrics.

The HealthServer answers from Rust, so a handler hogging the GIL cannot make
a healthy worker look dead. Port 0 picks a free port (use 8080 in a pod).

    python examples/health.py [--broker memory|rabbitmq|redis]

    livenessProbe:  {httpGet: {path: /health, port: 8080}}
    readinessProbe: {httpGet: {path: /ready, port: 8080}}
"""

import asyncio
import urllib.error
import urllib.request

import _brokers

import foxtive


def get(url: str) -> str:
    """GET url → "status body" (blocking: call it with asyncio.to_thread)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return f"{r.status} {r.read().decode()}"
    except urllib.error.HTTPError as e:  # 503 when unhealthy / not ready
        return f"{e.code} {e.read().decode()}"


async def send_email(message: foxtive.Message) -> None:
    await asyncio.sleep(0.01)


async def main() -> None:
    args = _brokers.parser(__doc__).parse_args()
    backend = _brokers.backend(args.broker, "emails")
    pool = (
        foxtive.WorkerPoolBuilder("email-pool")
        .add_worker(send_email, id="email")
        .with_backend(backend)
        .build()
    )
    with foxtive.HealthServer(pool, host="127.0.0.1", port=0) as server:
        print(f"serving {server.url}/health, /ready and /metrics")
        health, ready = f"{server.url}/health", f"{server.url}/ready"
        print("before the pool runs:  /health", await asyncio.to_thread(get, health))

        await backend.publish_many([b"email"] * 20)
        running = asyncio.create_task(pool.run_async(handle_signals=False))
        while pool.stats()["processed"] < 20:
            await asyncio.sleep(0.05)
        print("while it runs:         /health", await asyncio.to_thread(get, health))
        print("                       /ready ", await asyncio.to_thread(get, ready))

        pool.shutdown()  # what SIGTERM does
        await running
        print("after shutdown:        /ready ", await asyncio.to_thread(get, ready))
    print(f"processed {pool.stats()['processed']}; health: {pool.health()['status']}")
    await _brokers.cleanup(backend)


if __name__ == "__main__":
    asyncio.run(main())
