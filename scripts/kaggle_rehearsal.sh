#!/usr/bin/env bash
# Kaggle dress rehearsal on the CPU: bundle the kernels, play both profiles' kernels in order in
# fake Kaggle sessions, exit 0 only when every one ran and wrote what it should. Usage:
#   scripts/kaggle_rehearsal.sh [--out DIR] [--profile NAME] [--java]   (see kaggle/rehearsal.py)
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" kaggle/rehearsal.py "$@"
