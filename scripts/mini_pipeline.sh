#!/usr/bin/env bash
# The whole pipeline on the CPU in minutes, no download: synthetic data → audit → split →
# LoRA fine-tuning (mini profile) → zero-shot and fine-tuned captions → metrics.
# Outputs go to $VICAP_OUTPUT (default ./outputs/mini-pipeline).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
OUT=${VICAP_OUTPUT:-outputs}/mini-pipeline
mkdir -p "$OUT"
set -x
vicap synth --out "$OUT/synthetic" --n-images 600 --seed 0
vicap audit --annotations "$OUT/synthetic/captions.json" --images "$OUT/synthetic/images" --out "$OUT/audit"
vicap split --annotations "$OUT/audit/clean.json" --out "$OUT/split"
vicap train --profile mini --out "$OUT/run" --overwrite \
  --set data.train_annotations="$OUT/split/train.json" \
  --set data.val_annotations="$OUT/split/val.json" \
  --set data.images="$OUT/synthetic/images"
vicap synth --out "$OUT/test" --n-images 100 --seed 777
for which in zero-shot fine-tuned; do
  flag=""; [ "$which" = zero-shot ] && flag="--no-adapter"
  vicap predict --model "$OUT/run/best" $flag --annotations "$OUT/test/captions.json" \
    --images "$OUT/test/images" --out "$OUT/predictions-$which.json"
  vicap evaluate --predictions "$OUT/predictions-$which.json" \
    --references "$OUT/test/captions.json" --out "$OUT/metrics-$which.json"
done
set +x
echo "Done. Adapter: $OUT/run/best · metrics: $OUT/metrics-{zero-shot,fine-tuned}.json"
