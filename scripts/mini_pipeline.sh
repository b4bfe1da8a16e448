#!/usr/bin/env bash
# The whole pipeline on the CPU in minutes, no download: synthetic data → audit → split →
# LoRA fine-tuning (mini profile; `vicap train` audits and splits the data itself) →
# zero-shot and fine-tuned captions of a fresh synthetic set → metrics.
# Outputs go to $VICAP_OUTPUT (default ./outputs)/mini-pipeline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
OUT=${VICAP_OUTPUT:-outputs}/mini-pipeline
mkdir -p "$OUT"
set -x
vicap synth --out "$OUT/synthetic" --n-images 600 --seed 0 --overwrite
vicap train --profile mini --out "$OUT/run" --overwrite \
  --set data.train_annotations="$OUT/synthetic/captions.json" \
  --set data.images="$OUT/synthetic/images"
vicap synth --out "$OUT/test" --n-images 100 --seed 777 --overwrite
vicap predict --model "$OUT/run/best" --no-adapter --annotations "$OUT/test/captions.json" \
  --images "$OUT/test/images" --out "$OUT/predictions-zero-shot.json" --overwrite
vicap predict --model "$OUT/run/best" --annotations "$OUT/test/captions.json" \
  --images "$OUT/test/images" --out "$OUT/predictions-fine-tuned.json" --overwrite
for which in zero-shot fine-tuned; do
  vicap evaluate --predictions "$OUT/predictions-$which.json" \
    --references "$OUT/test/captions.json" --out "$OUT/metrics-$which.json" --overwrite
done
set +x
echo "Done. Audit: $OUT/run/data/audit.json · adapter: $OUT/run/best · metrics: $OUT/metrics-{zero-shot,fine-tuned}.json"
