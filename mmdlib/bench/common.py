"""Helpers shared by the benchmarks: the table and the closing JSON line."""
from __future__ import annotations

import json
import resource


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def report(title: str, rows: list[tuple[str, object]], result: dict) -> dict:
    """Print a two-column table, then `result` as one JSON object on the last line."""
    width = max(len(k) for k, _ in rows)
    print(f"\n{title}\n" + "-" * (width + 20))
    for k, v in rows:
        print(f"{k:<{width}}  {v:.4g}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    print(json.dumps(result), flush=True)
    return result
