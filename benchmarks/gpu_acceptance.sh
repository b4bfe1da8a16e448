#!/usr/bin/env bash
# The GPU acceptance run from a checkout, vicap_utils importable without installing it:
#   bash benchmarks/gpu_acceptance.sh [--blip2-full-depth] [--out FILE]   # Kaggle T4 x2, a lent GPU
#   bash benchmarks/gpu_acceptance.sh --device cpu                         # the dry run (seconds)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" "$root/benchmarks/gpu_acceptance.py" "$@"
