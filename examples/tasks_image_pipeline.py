"""Tasks: the image pipeline, task-style (the twin of image_pipeline.py).

download → resize → upload as a chain of tasks: each task sends the next,
each on its own queue, so each stage gets its own pool sized for its kind
of work (network-bound stages many slots, the CPU-bound one few) and a
failure retries just that stage. `resize` is a plain `def`: it runs on a
thread and sends the next task with `send_sync`.

Run the workers, then start the pipeline from anywhere:

    FOXTIVE_BROKER=sqlite:///images.db foxtive run tasks_image_pipeline:app
    FOXTIVE_BROKER=sqlite:///images.db python examples/tasks_image_pipeline.py send URL...

With no broker set it runs the three stages in one process on the memory
backend, then shuts them down once every image is uploaded:

    python examples/tasks_image_pipeline.py
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys

import foxtive

IMAGES = 12

app = foxtive.App("images", broker=os.environ.get("FOXTIVE_BROKER") or "memory://",
                  retry=foxtive.RetryHandler(max_retries=3, initial_backoff=0.05,
                                             max_backoff=0.2))

_failed_once: set[str] = set()  # the demo image host answers 503 once for /3.jpg
uploaded: list[str] = []
all_uploaded: asyncio.Event | None = None


@app.task(queue="downloads", name="images.download")
async def download(url: str) -> None:
    await asyncio.sleep(0.02)  # HTTP GET
    if url.endswith("/3.jpg") and url not in _failed_once:
        _failed_once.add(url)
        raise ConnectionError("503 from the image host")  # retried by this stage only
    pixels = hashlib.sha256(url.encode()).hexdigest() * 64
    await resize.send(url, pixels)


@app.task(queue="resizes", name="images.resize")
def resize(url: str, pixels: str) -> None:
    """CPU-bound: a plain def runs on a thread, so the event loop stays free."""
    small = "".join(pixels[i] for i in range(0, len(pixels), 4))
    upload.send_sync(url, small, f"{len(pixels)} → {len(small)}")


@app.task(queue="uploads", name="images.upload")
async def upload(url: str, pixels: str, resized: str) -> None:
    await asyncio.sleep(0.02)  # PUT to the CDN
    uploaded.append(url)
    print(f"uploaded {url} (resized {resized})", flush=True)
    if all_uploaded is not None and len(uploaded) == IMAGES:
        all_uploaded.set()


async def run_pipeline() -> None:
    global all_uploaded
    all_uploaded = asyncio.Event()
    pools = [app.pool("downloads", concurrency_limit=10),  # network-bound
             app.pool("resizes", concurrency_limit=2),     # CPU-bound
             app.pool("uploads", concurrency_limit=10)]    # network-bound
    await download.send_many([(f"https://img.example.com/{i}.jpg",) for i in range(IMAGES)])
    runs = [asyncio.create_task(p.run_async(handle_signals=False)) for p in pools]
    try:
        await asyncio.wait_for(all_uploaded.wait(), timeout=60)
    finally:
        for p in pools:
            p.shutdown()  # graceful: each finishes what it has in flight
        await asyncio.gather(*runs)
    for p in pools:
        s = p.stats()
        print(f"{p.name:<17} processed {s['processed']:>2}, retried {s['retried']}")
    print(f"pipeline done: uploaded {len(uploaded)} of {IMAGES} images")
    await app.aclose()


def main(argv: list[str]) -> int:
    if argv[:1] == ["send"]:  # producer only: the workers run elsewhere
        for url in argv[1:]:
            print(f"sent {download.send_sync(url).id}: {url}")
        app.close()
        return 0
    asyncio.run(run_pipeline())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
