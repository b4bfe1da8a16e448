"""Training: mini quality, kill-and-resume equality, run-folder safety, config errors."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from safetensors.torch import load_file

from vicap_utils.__main__ import main

FAST = ["--set", "data.synthetic_images=48", "--set", "train.epochs=4",
        "--set", "train.batch_size=8", "--set", "train.grad_accum=2", "--set", "train.patience=0",
        "--set", "eval.num_beams=1", "--set", "eval.max_new_tokens=6"]


def vicap(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "vicap_utils", *args], capture_output=True,
                          text=True, timeout=1200)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr[-3000:])
    return proc


def adapter(run: Path) -> dict:
    return load_file(str(run / "final" / "adapter_model.safetensors"))


@pytest.mark.slow
def test_mini_profile_learns_vietnamese(tmp_path, mini_run):
    """The quality bar: on a fresh synthetic set of another seed, adapter CIDEr >= 1.0 and
    the English base < 0.3, measured with `vicap predict` and `vicap evaluate`."""
    run = mini_run
    for name in ("best", "final", "last"):
        assert (run / name).is_dir()
    history = (run / "history.csv").read_text().splitlines()
    assert history[0] == "epoch,train_loss,val_loss,val_CIDEr,seconds"
    assert (run / "loss_curve.png").stat().st_size > 1000
    config = json.loads((run / "config.json").read_text())
    assert config["profile"] == "mini"

    fresh = tmp_path / "fresh"
    vicap("synth", "--out", str(fresh), "--n-images", "60", "--seed", "777")
    scores = {}
    for label, extra in (("ft", []), ("zs", ["--no-adapter"])):
        pred = tmp_path / f"{label}.json"
        vicap("predict", "--model", str(run / "best"), *extra, "--annotations",
              str(fresh / "captions.json"), "--images", str(fresh / "images"), "--out", str(pred))
        out = tmp_path / f"metrics_{label}.json"
        vicap("evaluate", "--predictions", str(pred), "--references",
              str(fresh / "captions.json"), "--out", str(out))
        scores[label] = json.loads(out.read_text())
    assert scores["ft"]["CIDEr"] >= 1.0, scores["ft"]
    assert scores["zs"]["CIDEr"] < 0.3, scores["zs"]
    captions = [p["caption"] for p in json.loads((tmp_path / "ft.json").read_text())]
    assert sum(any(c in "ườơđếạ" for c in cap) for cap in captions) > len(captions) * 0.9


@pytest.mark.slow
def test_kill_and_resume_gives_the_same_adapter(tmp_path):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    vicap("train", "--profile", "mini", "--out", str(straight), *FAST)
    args = [sys.executable, "-m", "vicap_utils", "train", "--profile", "mini", "--out",
            str(broken), *FAST, "--set", "train.save_every_steps=3"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    state = broken / "last" / "state.json"
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            if state.is_file():
                try:
                    step = json.loads(state.read_text())["global_step"]
                except (json.JSONDecodeError, KeyError):
                    step = 0
                if step >= 20:
                    break
            assert proc.poll() is None, "training ended before it could be killed"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    killed_at = json.loads(state.read_text())
    assert killed_at["global_step"] >= 20 and not killed_at["finished"]
    assert killed_at["epoch"] < 4 and not (broken / "final").exists()
    vicap("train", "--profile", "mini", "--out", str(broken), *FAST,
          "--set", "train.save_every_steps=3", "--resume")
    a, b = adapter(straight), adapter(broken)
    assert a.keys() == b.keys()
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert diff <= 1e-5, diff
    histories = [pd.read_csv(run / "history.csv") for run in (straight, broken)]
    assert len(histories[0]) == len(histories[1]) == 4
    for column in ("train_loss", "val_loss"):  # the killed epoch's running loss resumed too
        assert histories[1][column].tolist() == pytest.approx(histories[0][column].tolist(),
                                                               abs=1e-3), column


@pytest.mark.slow
def test_run_folder_is_protected_and_resume_checks_config(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--profile", "mini", "--out", str(run), *FAST[:2],
                 "--set", "train.epochs=1", "--set", "train.batch_size=16"]) == 0
    capsys.readouterr()
    adapter_file = run / "final" / "adapter_model.safetensors"
    before = adapter_file.read_bytes()
    assert main(["train", "--profile", "mini", "--out", str(run)]) == 2
    assert "finished run" in capsys.readouterr().err
    assert main(["train", "--profile", "mini", "--out", str(run), "--resume",
                 "--set", "lora.r=4", "--set", "model.max_length=20"]) == 2
    err = capsys.readouterr().err
    assert "lora.r" in err and "model.max_length" in err and "Traceback" not in err
    assert adapter_file.read_bytes() == before  # the refusals left the finished run alone


def test_resume_without_checkpoint_and_bad_override(tmp_path, capsys):
    assert main(["train", "--profile", "mini", "--out", str(tmp_path), "--resume"]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert main(["train", "--profile", "mini", "--out", str(tmp_path),
                 "--set", "train.nope=1"]) == 2
    err = capsys.readouterr().err
    assert "train.nope" in err and "train.lr" in err
    assert main(["train", "--profile", "nosuch", "--out", str(tmp_path)]) == 2


@pytest.mark.slow
def test_nan_loss_stops_with_a_message_and_keeps_the_checkpoint(tmp_path):
    import torch

    run = tmp_path / "run"
    proc = vicap("train", "--profile", "mini", "--out", str(run), *FAST,
                 "--set", "train.lr=1e30", "--set", "train.embedding_lr=1e30",
                 "--set", "train.warmup_ratio=0.5", "--set", "train.save_every_steps=1",
                 check=False)
    assert proc.returncode == 2
    assert "loss became nan" in proc.stderr and "last good checkpoint" in proc.stderr
    assert "Traceback" not in proc.stderr
    state = json.loads((run / "last" / "state.json").read_text())
    assert state["global_step"] >= 1 and not (run / "final").exists()
    weights = load_file(str(run / "last" / "trainable.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())


@pytest.mark.slow
def test_two_process_ddp_training_on_cpu(tmp_path):
    """The multi-GPU path (DDP through Accelerate), run with two CPU processes over gloo."""
    run = tmp_path / "ddp"
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "-m", "vicap_utils", "train", "--profile", "mini", "--out", str(run), *FAST,
         "--set", "train.epochs=1"],
        capture_output=True, text=True, timeout=1200, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("best val CIDEr") == 1
    assert (run / "final" / "adapter_model.safetensors").is_file()
    state = json.loads((run / "last" / "state.json").read_text())
    captions = len(json.loads((run / "data" / "train.json").read_text())["annotations"])
    per_process_batches = -(-captions // (8 * 2))  # batch 8, two processes: each sees half
    assert state["finished"] and state["global_step"] == -(-per_process_batches // 2)


@pytest.mark.slow
def test_a_failing_validation_never_costs_the_epoch(tmp_path, monkeypatch):
    """The epoch's checkpoint is written before validation starts; --resume validates it."""
    import csv

    from vicap_utils.config import load_config
    from vicap_utils.train import Trainer, train

    run = tmp_path / "run"
    cfg = load_config("mini", overrides=[item for item in FAST if item != "--set"] +
                      ["train.epochs=2"])
    validate = Trainer.validate

    def broken(self):
        raise RuntimeError("the validation died")

    monkeypatch.setattr(Trainer, "validate", broken)
    with pytest.raises(RuntimeError, match="validation died"):
        train(cfg, run, log=lambda *a: None)
    state = json.loads((run / "last" / "state.json").read_text())
    assert state["epoch"] == 1 and state["batches_done"] == 0 and state["global_step"] > 0
    assert state["pending"] and not state["history"]
    monkeypatch.setattr(Trainer, "validate", validate)
    summary = train(cfg, run, resume=True, log=lambda *a: None)
    rows = list(csv.DictReader((run / "history.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert all(float(r["val_CIDEr"]) >= 0 for r in rows)
    assert summary["global_step"] == 2 * state["global_step"]


@pytest.mark.slow
def test_a_run_cut_short_in_one_kaggle_session_resumes_in_the_next(tmp_path, monkeypatch,
                                                                   capsys):
    """Session 1 dies mid-run; its output, attached read-only under /kaggle/input, is copied
    back to /kaggle/working by `vicap train --resume` in session 2 and finished there."""
    import shutil

    from vicap_utils.train import Trainer

    args = ["--profile", "mini", *FAST, "--set", "train.epochs=2"]
    first = tmp_path / "session1" / "working" / "run"

    def dies(self):
        raise KeyboardInterrupt  # the session ends during the first validation

    monkeypatch.setattr(Trainer, "validate", dies)
    assert main(["train", *args, "--out", str(first)]) == 130
    assert "Resume with: vicap train" in capsys.readouterr().err
    monkeypatch.undo()
    attached = tmp_path / "session2" / "input" / "my-notebook-output" / "run"
    shutil.copytree(first, attached)
    for path in [attached, *attached.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)  # /kaggle/input is read-only
    monkeypatch.setenv("VICAP_KAGGLE_ROOT", str(tmp_path / "session2"))
    second = tmp_path / "session2" / "working" / "run"
    try:
        assert main(["train", *args, "--out", str(second), "--resume"]) == 0
    finally:
        for path in [attached, *attached.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)
    out = capsys.readouterr().out
    assert "copied the unfinished run" in out and "resumed from" in out
    history = (second / "history.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in history[1:]] == ["1", "2"]
    assert (second / "final" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_overwrite_twice_replaces_the_run_each_time(tmp_path):
    """--overwrite removes the run's outputs and the new run writes them again, still listed
    as vicap's: a second --overwrite (the mini pipeline run twice) replaces them too."""
    from vicap_utils.ops.folders import owned_entries

    run = tmp_path / "run"
    args = ["train", "--profile", "mini", "--out", str(run), "--overwrite", *FAST,
            "--set", "train.max_steps=1", "--set", "train.epochs=1"]
    for _ in range(2):
        assert main(args) == 0
        assert {"last", "best", "final", "config.json", "summary.json"} <= owned_entries(run)
