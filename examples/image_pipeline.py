"""An image pipeline: download → resize → upload, three pools chained by queues.

Each stage is its own pool on its own queue, sized for its kind of work
(network-bound stages get many slots, the CPU-bound one few), and publishes
its result to the next stage's queue with that backend's `publish`. A
failure in one stage retries just that stage. The three pools run
concurrently (`run_async`); when every image is uploaded we shut them down.

    python examples/image_pipeline.py [--broker memory|rabbitmq|redis]
"""

import asyncio
import hashlib
import json
from typing import Any

import _brokers

import foxtive

IMAGES = 12


class DownloadWorker(foxtive.Worker):
    id = "download"

    def __init__(self, next_stage: Any) -> None:
        self.next_stage = next_stage

    async def process(self, message: foxtive.Message) -> None:
        url = message.json()["url"]
        await asyncio.sleep(0.02)  # HTTP GET
        if url.endswith("/3.jpg") and message.attempt == 1:
            raise ConnectionError("503 from the image host")  # retried by this stage only
        image = {"url": url, "pixels": hashlib.sha256(url.encode()).hexdigest() * 64}
        await self.next_stage.publish(json.dumps(image).encode())


def shrink(pixels: str) -> str:
    """CPU-bound work: runs on a thread so the event loop stays free."""
    return "".join(pixels[i] for i in range(0, len(pixels), 4))


class ResizeWorker(foxtive.Worker):
    id = "resize"

    def __init__(self, next_stage: Any) -> None:
        self.next_stage = next_stage

    async def process(self, message: foxtive.Message) -> None:
        image = message.json()
        before = len(image["pixels"])
        image["pixels"] = await asyncio.to_thread(shrink, image["pixels"])
        image["resized"] = f"{before} → {len(image['pixels'])}"
        await self.next_stage.publish(json.dumps(image).encode())


class UploadWorker(foxtive.Worker):
    id = "upload"

    def __init__(self) -> None:
        self.uploaded: list[str] = []
        self.all_done = asyncio.Event()

    async def process(self, message: foxtive.Message) -> None:
        image = message.json()
        await asyncio.sleep(0.02)  # PUT to the CDN
        self.uploaded.append(image["url"])
        print(f"uploaded {image['url']} (resized {image['resized']})")
        if len(self.uploaded) == IMAGES:
            self.all_done.set()


def stage(name: str, limit: int, worker: foxtive.Worker, backend: Any) -> foxtive.WorkerPool:
    return (
        foxtive.WorkerPoolBuilder(f"{name}-pool")
        .with_concurrency_limit(limit)
        .with_middleware(foxtive.RetryHandler(max_retries=3, initial_backoff=0.05,
                                              max_backoff=0.2))
        .add_worker(worker)
        .with_backend(backend)
        .build()
    )


async def main() -> None:
    args = _brokers.parser(__doc__).parse_args()
    downloads = _brokers.backend(args.broker, "downloads")
    resizes = _brokers.backend(args.broker, "resizes")
    uploads = _brokers.backend(args.broker, "uploads")
    uploader = UploadWorker()
    pools = [
        stage("download", 10, DownloadWorker(next_stage=resizes), downloads),  # network-bound
        stage("resize", 2, ResizeWorker(next_stage=uploads), resizes),         # CPU-bound
        stage("upload", 10, uploader, uploads),                                # network-bound
    ]
    await downloads.publish_many(
        [json.dumps({"url": f"https://img.example.com/{i}.jpg"}).encode() for i in range(IMAGES)]
    )

    runs = [asyncio.create_task(p.run_async(handle_signals=False)) for p in pools]
    try:
        await asyncio.wait_for(uploader.all_done.wait(), timeout=60)
    finally:
        for p in pools:
            p.shutdown()  # graceful: each finishes what it has in flight
        await asyncio.gather(*runs)

    for p in pools:
        s = p.stats()
        print(f"{p.name:<14} processed {s['processed']:>2}, retried {s['retried']}")
    print(f"pipeline done: uploaded {len(uploader.uploaded)} of {IMAGES} images")
    await _brokers.cleanup(downloads, resizes, uploads)


if __name__ == "__main__":
    asyncio.run(main())
