#!/usr/bin/env bash
# Create .venv (once) and install vicap with everything it needs; safe to run again.
# Usage: bash scripts/setup.sh [--dev] [--browser] [--notebook]
#   --dev      also the test tools (pytest, ruff, voila, playwright)
#   --notebook also JupyterLab, to run the notebooks locally: .venv/bin/jupyter lab notebooks/
#   --browser  also Debian's Chromium for the browser test (needs root and apt-get)
set -euo pipefail
cd "$(dirname "$0")/.."
dev=0; browser=0; notebook=0
for arg in "$@"; do
  case "$arg" in
    --dev) dev=1 ;;
    --browser) browser=1 ;;
    --notebook) notebook=1 ;;
    *) echo "setup.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# A CPU build of torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
if ! python -c "import torch" 2>/dev/null; then
  python -m pip install -q "torch==2.13.0" || python -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
fi
if [ "$dev" = 1 ]; then
  python -m pip install -q -r requirements.txt -e ".[dev]"
else
  python -m pip install -q -r requirements.txt -e .
fi
if [ "$notebook" = 1 ]; then
  python -m pip install -q -r requirements-notebook.txt
fi
if [ "$browser" = 1 ] && [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq chromium >/dev/null
  else
    echo "setup.sh: /usr/bin/chromium missing and not root; the browser test will be skipped" >&2
  fi
fi
echo "vicap environment ready: $(python -c 'import vicap_utils, torch, transformers; print(f"vicap {vicap_utils.__version__}, torch {torch.__version__}, transformers {transformers.__version__}")')"
