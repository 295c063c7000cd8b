"""The report of ``compare.py``: the tables of each workload (rates with
ratios to foxtive, W4's latencies, W6's memory), the line describing the
workload, and the PNG chart (drawn by matplotlib in the peers venv)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from harness import w5
from harness.config import PEERS_PY, W2_CONC, W2_SLEEP, W4_RATE
from harness.tasks import is_tasks


def fmt_rate(v: float) -> str:
    return f"{v:,.0f}"


def summarise_latency(runs: dict[str, list[dict[str, Any]]],
                      settings: dict[str, str]) -> list[str]:
    lines = ["| contender | p50 ms | p99 ms | max ms | lost | dup | peak RSS MiB | CPU s | "
             "settings |", "|---|---|---|---|---|---|---|---|---|"]
    for k, v in runs.items():
        def m(key: str, v: list[dict[str, Any]] = v) -> str:
            vals = [r[key] for r in v if key in r]
            return f"{statistics.median(vals):.2f}" if vals else "n/a"
        lines.append(f"| {k} | {m('p50_ms')} | {m('p99_ms')} | {m('max_ms')} | "
                     f"{max(r['lost'] for r in v)} | {max(r['dups'] for r in v)} | "
                     f"{statistics.median(r['rss_mib'] for r in v):.1f} | "
                     f"{statistics.median(r['cpu_s'] for r in v):.2f} | {settings[k]} |")
    return lines


def summarise(workload: str, runs: dict[str, list[dict[str, Any]]],
              settings: dict[str, str]) -> tuple[list[str], dict[str, float]]:
    foxes = [k for k in runs if k.startswith("foxtive")]
    med = {k: statistics.median(r["handled_rate"] for r in v) for k, v in runs.items()}
    lines = [f"| contender | handled msg/s median (min-max) | start->last msg/s median | "
             f"lost | dup | peak RSS MiB | CPU s | "
             f"{''.join(f'{f} / this | ' for f in foxes)}settings |",
             "|---|---|---|---|---|---|---|" + "---|" * len(foxes) + "---|"]
    for k, v in runs.items():
        rates = [r["handled_rate"] for r in v]
        ratios = []
        for f in foxes:
            ratios.append(f"{med[f] / med[k]:.2f}" if med[k] and f != k else "-")
        lost = max(r["lost"] for r in v)
        dups = max(r["dups"] for r in v)
        check = "" if all(r["ids_checked"] for r in v) else " (count only)"
        lines.append(
            f"| {k} | {fmt_rate(med[k])} ({fmt_rate(min(rates))}-{fmt_rate(max(rates))}) | "
            f"{fmt_rate(statistics.median(r['start_rate'] for r in v))} | {lost}{check} | "
            f"{dups} | {statistics.median(r['rss_mib'] for r in v):.1f} | "
            f"{statistics.median(r['cpu_s'] for r in v):.2f} | "
            f"{''.join(x + ' | ' for x in ratios)}{settings[k]} |")
    return lines, med


def summarise_w6(runs: dict[str, list[dict[str, Any]]],
                 settings: dict[str, str]) -> list[str]:
    lines = ["| contender | RSS at first failure MiB | RSS with all retries waiting "
             "MiB | growth MiB | lost | dup | settings |", "|---|---|---|---|---|---|---|"]
    for k, v in runs.items():
        b = statistics.median(r.get("rss_before", 0.0) for r in v)
        a = statistics.median(r.get("rss_after", 0.0) for r in v)
        lines.append(f"| {k} | {b:.1f} | {a:.1f} | {a - b:+.1f} | "
                     f"{max(r['lost'] for r in v)} | {max(r['dups'] for r in v)} | "
                     f"{settings[k]} |")
    return lines


def describe(workload: str) -> str:
    """What the workload's handlers do, for its heading in the report."""
    return ("10 % fail on their first attempt and are retried after 50 ms by the "
            "framework's own mechanism; lost = never succeeded, dup = succeeded twice"
            if workload.startswith("w3") else
            "every first attempt fails and is retried in an hour by the framework's "
            "own mechanism; worker RSS" if workload.startswith("w6") else
            f"CPU-bound handler (~1 ms of pure Python, {w5.W5_K:,} iterations), counted "
            f"per process through Redis" if workload.startswith("w5") else
            f"paced at {W4_RATE:,.0f} msg/s, latency publish -> handler start (median "
            f"of rounds of each percentile)" if workload.startswith("w4") else
            f"each awaiting {W2_SLEEP * 1000:.0f} ms at concurrency {W2_CONC} "
            f"(ideal {W2_CONC / W2_SLEEP:,.0f} msg/s)" if workload.startswith("w2")
            else "no-op task taking (int, str), sent by each framework's own producer"
            if is_tasks(workload) else "no-op handler")


def chart(all_meds: dict[str, dict[str, float]], png: Path) -> None:
    script = (
        "import json,sys\n"
        "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
        "d=json.load(open(sys.argv[1]))\n"
        "fig,axes=plt.subplots(len(d),1,figsize=(9,2.2+0.45*sum(len(v) for v in d.values())),"
        "squeeze=False)\n"
        "for ax,(w,meds) in zip(axes[:,0],d.items()):\n"
        "    names=list(meds)[::-1]; vals=[meds[k] for k in names]\n"
        "    cols=['tab:orange' if k.startswith('foxtive') else 'tab:blue' for k in names]\n"
        "    ax.barh(names,vals,color=cols); ax.set_title(w); ax.set_xlim(0,max(vals)*1.25)\n"
        "    ax.set_xlabel('msg/s, first handled -> last handled (median)')\n"
        "    for y,v in enumerate(vals): ax.text(v,y,f' {v:,.0f}',va='center',fontsize=8)\n"
        "fig.tight_layout(); fig.savefig(sys.argv[2],dpi=110)\n")
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(all_meds, f)
    subprocess.run([str(PEERS_PY), "-c", script, f.name, str(png)], check=True)
    os.unlink(f.name)
