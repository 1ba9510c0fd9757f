"""``python -m bench.compare OURS.json PEERS.jsonl``: our figures against each peer's.

OURS.json is the ``raw.json`` of a ``python -m bench`` run; PEERS.jsonl the ``raw.jsonl``
of ``../shared/peers/run.sh`` (run right after ours, on the same box and servers). Prints,
per workload, ours, the peer's median over its repeats, and the ratio ours / peer: above 1
we are faster, for latency and memory (lower is better) above 1 we are better too, since
the ratio there is peer / ours.
"""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Any

# (column, our key path, the peers' key path, higher is better?)
WORKLOADS = [
    ("single enqueue/s", "enqueue_single.jobs_per_s", "w1_single", True),
    ("batch enqueue/s", "enqueue_batch.jobs_per_s", "w1_batch", True),
    ("drain @10 jobs/s", "drain_10.jobs_per_s", "w2_10.jobs_per_s", True),
    ("drain @100 jobs/s", "drain_100.jobs_per_s", "w2_100.jobs_per_s", True),
    ("latency p50 ms", "latency.p50_ms", "w3.p50_ms", False),
    ("latency p99 ms", "latency.p99_ms", "w3.p99_ms", False),
    ("peak RSS MB", "peak_rss_mb", "peak_rss_mb", False),
]


def get(d: Any, path: str) -> Any:
    for key in path.split("."):
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def peer_medians(lines: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    by_peer: dict[str, list[dict[str, Any]]] = {}
    for r in lines:
        if "error" not in r:
            by_peer.setdefault(r["peer"], []).append(r)
    out: dict[str, dict[str, float | None]] = {}
    for peer, runs in by_peer.items():
        out[peer] = {}
        for _, _, path, _ in WORKLOADS:
            vals = [v for v in (get(r, path) for r in runs) if v is not None]
            out[peer][path] = statistics.median(vals) if vals else None
    return out


def ratio(ours: float | None, theirs: float | None, higher_better: bool) -> str:
    if not ours or not theirs:
        return "—"
    return f"{(ours / theirs if higher_better else theirs / ours):.2f}x"


def render(ours: dict[str, Any], peers: dict[str, dict[str, float | None]]) -> str:
    names = list(peers)
    head = "| workload | ours | " + " | ".join(f"{p} | ours/{p}" for p in names) + " |"
    rows = [head, "|---|---:|" + "---:|---:|" * len(names)]
    for label, our_path, peer_path, higher in WORKLOADS:
        mine = get(ours, our_path)
        cells = [label, "—" if mine is None else f"{mine:,.1f}"]
        for p in names:
            theirs = peers[p].get(peer_path)
            cells += ["—" if theirs is None else f"{theirs:,.1f}", ratio(mine, theirs, higher)]
        rows.append("| " + " | ".join(cells) + " |")
    rows.append("")
    rows.append("Ratios: ours ÷ peer for rates, peer ÷ ours for latency and memory; "
                "above 1x we do better.")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__)
    ap.add_argument("ours")
    ap.add_argument("peers")
    a = ap.parse_args()
    with open(a.ours) as f:
        ours = json.load(f)
    with open(a.peers) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    print(render(ours, peer_medians(lines)))


if __name__ == "__main__":
    main()
