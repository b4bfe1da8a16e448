"""The Kaggle dress rehearsal: every kernel of both profiles, in order, in fake Kaggle sessions
(kaggle/rehearsal.py), exits 0 and leaves 04's metrics and 05's gallery."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SYSTEMS = {"zero-shot", "fine-tuned"}


@pytest.mark.slow
def test_kaggle_rehearsal_plays_every_kernel_of_both_profiles(tmp_path):
    out = tmp_path / "rehearsal"
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "kaggle_rehearsal.sh"), "--out",
                           str(out)], capture_output=True, text=True, timeout=1500,
                          env={**os.environ, "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads((out / "rehearsal.json").read_text())
    assert record["ok"] and {k["session"] for k in record["kernels"]} >= {
        "03_finetune_lora-session1", "03_finetune_lora-session2", "03b_scst", "04_evaluate",
        "05_gallery", "06_caption_demo"}
    for tag, profile in (("uitviic", "uitviic-blip"), ("flickr8k", "flickr8k-blip2")):
        run = out / tag / "{}" / "working" / "runs" / profile
        metrics = json.loads((Path(str(run).format("04_evaluate")) / "eval" / "metrics.json")
                             .read_text())
        assert set(metrics) == SYSTEMS and all(0 <= m["CIDEr"] for m in metrics.values())
        scst = Path(str(run).format("03b_scst") + "-scst") / "last" / "state.json"
        assert json.loads(scst.read_text())["scst_from"].endswith(f"runs/{profile}/best")
        ev = Path(str(run).format("04_evaluate")) / "eval"
        scored = json.loads((ev / "metrics_scst.json").read_text())  # 03b's adapter, found
        assert {"CIDEr", "TTR", "vocab_size"} <= scored.keys() and scored["CIDEr"] >= 0
        assert len(json.loads((ev / "predictions_scst.json").read_text())) == \
            len(json.loads((ev / "predictions_fine_tuned.json").read_text()))  # same images
        gallery = Path(str(run).format("05_gallery")) / "eval" / "gallery.png"
        assert gallery.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        resumed = json.loads((Path(str(run).format("03_finetune_lora-session2")) / "last" /
                              "state.json").read_text())
        assert resumed["finished"] and resumed["epoch"] == 2
