"""Latency percentiles, the same way for W4 (publish -> handler start, in
the recorder) and the tasks' round trip (send -> result())."""

from __future__ import annotations


def percentiles_ms(lat: list[float]) -> dict[str, float]:
    """p50, p99 and max of latencies in seconds, in milliseconds (nearest
    rank, no interpolation); empty for no latencies."""
    lat = sorted(lat)
    if not lat:
        return {}
    return {"p50_ms": lat[len(lat) // 2] * 1000,
            "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000,
            "max_ms": lat[-1] * 1000}
