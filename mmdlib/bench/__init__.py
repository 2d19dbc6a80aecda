"""Benchmarks: `python -m mmdlib.bench NAME [options]` (codec, mmd, independence, generate, hsic).

Each prints a readable table and, as its very last line, one JSON object with its figures."""
