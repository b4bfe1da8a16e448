"""Multi-process training launched from a notebook: streamed output, one-line failures."""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from vicap_utils.ops import launch
from vicap_utils.ops.io import VicapError

CPU_DDP = {"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
TINY = ["--set", "data.synthetic_images=48", "--set", "train.epochs=1",
        "--set", "train.batch_size=8", "--set", "eval.num_beams=1",
        "--set", "eval.max_new_tokens=6"]


def test_workers_get_their_rank_and_output_is_streamed(tmp_path):
    (tmp_path / "fakejob.py").write_text(textwrap.dedent("""
        import os, sys
        print(f"rank {os.environ['RANK']} of {os.environ['WORLD_SIZE']}: {sys.argv[1:]}")
        print("progress 50%", end="\\r", file=sys.stderr)
        print("progress 100%", file=sys.stderr)
    """))
    out = io.StringIO()
    code, tail = launch.run_streamed(launch.distributed_command(["fakejob", "a", "b"], 2),
                                     {"PYTHONPATH": str(tmp_path)}, out)
    assert code == 0
    assert "rank 0 of 2: ['a', 'b']" in out.getvalue()
    assert "rank 1 of 2: ['a', 'b']" in out.getvalue()
    assert "progress 50%\rprogress 100%" in out.getvalue()  # bars redraw in place
    assert "progress 100%" in tail and not any("\r" in line for line in tail)


def test_a_failing_worker_raises_its_own_error_line(tmp_path):
    out = io.StringIO()
    with pytest.raises(VicapError) as err:
        launch.launch_training(["--profile", "mini", "--set", "train.nope=1",
                                "--out", str(tmp_path / "run")], 2, CPU_DDP, out)
    assert re.match(r"training in 2 processes failed \(exit code 1\): vicap train: error: "
                    r".*unknown key train\.nope", str(err.value))
    assert "\n" not in str(err.value)
    assert len(re.findall(r"vicap train: error: .*unknown key train\.nope", out.getvalue())) == 2
    assert not (tmp_path / "run" / "last").exists()


def test_launching_never_imports_torch_in_the_notebook_process(tmp_path):
    script = textwrap.dedent("""
        import io, sys
        from vicap_utils.ops.launch import launch_training
        out = io.StringIO()
        assert launch_training(["--help"], 2, out=out) == 0
        assert out.getvalue().count("usage: vicap train") == 2, out.getvalue()
        assert "torch" not in sys.modules, "the parent imported torch"
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_interrupting_the_notebook_stops_every_worker(tmp_path):
    pid_file = tmp_path / "pid"

    class Interrupting(io.StringIO):
        def write(self, text: str) -> int:
            if "started" in text:
                raise KeyboardInterrupt
            return super().write(text)

    child = (f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); "
             "print('started', flush=True); time.sleep(120)")
    start = time.time()
    with pytest.raises(KeyboardInterrupt):
        launch.run_streamed([sys.executable, "-c", child], out=Interrupting())
    pid = int(pid_file.read_text())
    assert time.time() - start < 60
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_error_line_prefers_the_cause_over_the_launchers_summary():
    tail = ["epoch 1: train loss 2.3", "Traceback (most recent call last):",
            '  File "x.py", line 3, in <module>', "ValueError: images folder is empty",
            "E0101 torch.distributed.elastic.multiprocessing.api: failed (exitcode: 1)",
            "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ",
            "============================================================"]
    assert launch.error_line(tail) == "ValueError: images folder is empty"
    assert launch.error_line(["a", "vicap train: error: x.json: not found", "b"]) == \
        "vicap train: error: x.json: not found"
    assert launch.error_line(["", "Killed", ""]) == "Killed"
    assert launch.error_line([]) == "no output"
    with pytest.raises(VicapError, match="num_processes=0"):
        launch.distributed_command(["vicap_utils"], 0)
    assert launch.distributed_command(["vicap_utils", "env"], 1) == \
        [sys.executable, "-m", "vicap_utils", "env"]


@pytest.mark.slow
def test_two_process_training_of_the_mini_profile_from_a_notebook(tmp_path):
    run = tmp_path / "run"
    out = io.StringIO()
    assert launch.launch_training(["--profile", "mini", "--out", str(run), *TINY], 2,
                                  CPU_DDP, out) == 0
    assert out.getvalue().count("best val CIDEr") == 1  # rank 0 reports, once
    assert (run / "final" / "adapter_model.safetensors").is_file()
    state = json.loads((run / "last" / "state.json").read_text())
    assert state["finished"] and Path(run / "history.csv").read_text().count("\n") == 2
