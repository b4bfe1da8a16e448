"""The training benchmark runs end to end on tiny shapes and writes its JSON and table."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_train  # noqa: E402

PARENT = {"state": "as imported"}


def parent_state(s: bench_train.Settings) -> str:
    """What a child process sees of this module's state."""
    return PARENT["state"]


def test_tiny_bench_train_writes_rates_and_table(tmp_path: Path) -> None:
    # A fresh process: the script forks one child per mode, which must not follow torch work.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_train.py"), "--tiny", "--steps", "2",
         "--out", str(tmp_path)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "bench_train.json").read_text(encoding="utf-8"))
    assert json.loads(proc.stdout) == report
    for key in ("date", "device", "versions", "settings", "train", "generate", "ratios",
                "image_loading", "projection_uitviic_blip_30_epochs"):
        assert key in report
    assert set(report["train"]) == {"full_ft_fp32", "lora_no_cache", "lora_cached"}
    for mode in report["train"].values():
        assert mode["samples_per_s"] > 0 and mode["peak_memory_mib"] >= 0
    assert report["train"]["lora_cached"]["cache_images_per_s"] > 0
    for mode in ("one_at_a_time", "batched"):
        assert report["generate"][mode]["images_per_s"] > 0
    assert report["ratios"]["cache_vs_no_cache"] > 0
    assert report["projection_uitviic_blip_30_epochs"]["lora_cached"]["total_hours"] > 0
    table = (tmp_path / "bench_train.md").read_text(encoding="utf-8")
    assert "| training mode | samples/s |" in table and "|---|" in table
    assert "lora_cached" in table and "batched" in table


def test_a_cuda_child_starts_fresh_rather_than_forked(monkeypatch) -> None:
    # On a GPU machine importing peft imports bitsandbytes, which initialises CUDA in the
    # parent; a forked child cannot use CUDA after that, so a CUDA child must be a new process
    # that inherits none of the parent's state.
    monkeypatch.setitem(PARENT, "state", "changed in the parent")
    s = bench_train.Settings(device="cuda", shapes=bench_train.TINY, steps=1)
    assert bench_train.isolated(parent_state, s) == "as imported"
    assert bench_train.isolated(parent_state, replace(s, device="cpu")) == "changed in the parent"
