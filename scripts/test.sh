#!/usr/bin/env bash
# The test command: set up .venv (with test tools and Chromium), then run the whole suite in
# two pytest-xdist workers (a test file stays on one worker: its fixtures are built once).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev --browser
. .venv/bin/activate
python -m pytest -q -n "${VICAP_TEST_WORKERS:-2}" --dist loadfile "$@"
