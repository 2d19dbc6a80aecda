#!/usr/bin/env bash
# The paper preset on one GPU, first (scripts/gpu_smoke.py: ~5-8 minutes): codec with amp + resume mid
# macro-batch, the paper LM per pattern, cached generation. Pass --device cpu --quick to check the plumbing.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python scripts/gpu_smoke.py "$@"
