"""The GPU acceptance script: its CPU dry run passes every check and writes one JSON; requests
this machine cannot serve end in one line."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_acceptance  # noqa: E402


def numbers(tree) -> list[float]:
    """Every number in a JSON tree."""
    if isinstance(tree, dict):
        return [x for v in tree.values() for x in numbers(v)]
    if isinstance(tree, list):
        return [x for v in tree for x in numbers(v)]
    return [tree] if isinstance(tree, (int, float)) and not isinstance(tree, bool) else []


@pytest.mark.slow
def test_cpu_dry_run_passes_every_check_and_writes_one_json(tmp_path: Path) -> None:
    # A fresh process: the script forks one child per section, which must not follow torch work.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    out = tmp_path / "acceptance.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_acceptance.py"), "--device", "cpu",
         "--out", str(out)], capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["kind"] == gpu_acceptance.KIND and report["dry_run"] and report["passed"]
    assert report["device"]["kind"] == "cpu"
    assert all(report["versions"][k] not in (None, "not installed")
               for k in ("torch", "transformers", "peft", "accelerate", "bitsandbytes"))
    assert {k: c["status"] for k, c in report["checks"].items()} == {
        "fp16_lora_trains": "pass", "blip2_8bit_layers": "pass", "blip2_lora_trains": "pass",
        "blip2_under_15_gib": "pass", "generation_batched_vs_one": "pass",
        "two_processes": "skipped"}
    assert all(math.isfinite(x) for x in numbers(report))
    for mode in ("lora_no_cache", "lora_cached"):
        r = report["fp16_lora"][mode]
        assert r["amp"] and r["losses_finite"] and r["nonfinite_grad_steps"] == 0
        assert r["samples_per_s"] > 0 and r["last_grad_norm"] > 0 and r["peak_memory_mib"] >= 0
    blip2 = report["blip2_8bit"]
    assert blip2["linear8bit"]["type"] == "bitsandbytes.nn.modules.Linear8bitLt"
    assert blip2["linear8bit"]["count"] > 0 and blip2["linear8bit"]["int8_weights"]
    assert blip2["linear8bit"]["language_model_unquantized"] == []
    assert blip2["last_grad_norm"] > 0 and blip2["samples_per_s"] > 0
    assert blip2["amp"] and blip2["nonfinite_grad_steps"] == 0  # fp16, as on a T4
    gen = report["generation"]
    assert gen["batched_vs_one_at_a_time"] == pytest.approx(
        gen["batched"]["images_per_s"] / gen["one_at_a_time"]["images_per_s"])
    assert report["two_processes"]["status"].startswith("skipped")
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == len(report["checks"]) + 1 and lines[-1].startswith("passed")


def test_refuses_to_overwrite_a_file_it_did_not_write(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": 1}', encoding="utf-8")
    assert gpu_acceptance.main(["--device", "cpu", "--out", str(notes)]) == 2
    assert notes.read_text(encoding="utf-8") == '{"mine": 1}'
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(notes) in err and "choose another --out" in err
    ours = tmp_path / "ours.json"
    ours.write_text(json.dumps({"kind": gpu_acceptance.KIND}), encoding="utf-8")
    assert gpu_acceptance.refuse_foreign(ours) == ""


@pytest.mark.skipif(gpu_acceptance.gpu_count() > 0, reason="a GPU is present")
def test_cuda_without_a_gpu_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        gpu_acceptance.main(["--device", "cuda"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--device cpu" in err


def test_a_bad_figure_fails_its_check() -> None:
    ga = gpu_acceptance
    good = {"losses_finite": True, "last_grad_norm": 0.5, "final_loss": 2.0,
            "nonfinite_grad_steps": 0, "samples_per_s": 3.0, "amp": True}
    assert ga.trains(good)["status"] == "pass"
    assert ga.trains({**good, "last_grad_norm": float("nan")})["status"] == "fail"
    assert ga.trains({**good, "losses_finite": False})["status"] == "fail"
    assert ga.fp16_check({"lora_no_cache": {**good, "amp": False}})["status"] == "fail"
    assert ga.memory_check({"peak_memory_mib": ga.CAP_MIB + 1})["status"] == "fail"
    oom = {"error": "out of memory under the 15,360 MiB cap"}
    assert [ga.memory_check(oom)["status"], ga.trains(oom)["status"]] == ["fail", "fail"]
    layers = {"type": "bitsandbytes.nn.modules.Linear8bitLt", "count": 6, "int8_weights": True,
              "language_model_unquantized": ["model.decoder.layers.0.fc1"]}
    assert ga.eight_bit_check({"linear8bit": layers})["status"] == "fail"
    rates = {"one_at_a_time": {"images_per_s": 1.0}, "batched": {"images_per_s": 5.0}}
    assert ga.generation_check(rates, 5.0, "cuda")["status"] == "fail"
    assert ga.generation_check(rates, 5.0, "cpu")["status"] == "pass"
    ddp = {"processes": 2, "distributed_type": "MULTI_GPU", "samples_per_s": 9.0,
           "final_loss": 2.0, "max_weight_difference": 0.0}
    assert ga.ddp_check(ddp, 2)["status"] == "pass"
    assert ga.ddp_check({**ddp, "max_weight_difference": 1e-3}, 2)["status"] == "fail"
    assert ga.ddp_check({**ddp, "processes": 1}, 2)["status"] == "fail"
