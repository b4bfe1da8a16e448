#!/usr/bin/env bash
# The test command: set up .venv (with test tools and Chromium), then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev --browser
. .venv/bin/activate
python -m pytest -q "$@"
