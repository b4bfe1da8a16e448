"""Train on several GPUs from a notebook: `vicap train` under torch.distributed.run, as a child.

A notebook kernel cannot fork DDP workers once it has touched CUDA, so the workers are fresh
processes: `python -m torch.distributed.run --standalone --nproc_per_node N -m vicap_utils
train …` (each worker's Accelerator picks up the rank from the environment). This module never
imports torch; the children's output is forwarded to the notebook as it comes.
"""
from __future__ import annotations

import codecs
import os
import re
import signal
import subprocess
import sys
from collections import deque
from collections.abc import Mapping, Sequence
from typing import TextIO

from vicap_utils.ops.io import VicapError

_TAIL_LINES = 200
_PYTHON_ERROR = re.compile(r"^\s*(?:\w+\.)*\w*(?:Error|Exception|Interrupt): \S")
_LAUNCHER_NOISE = ("torch.distributed.elastic", "ChildFailedError")


def distributed_command(module_args: Sequence[str], num_processes: int) -> list[str]:
    """`python -m <module_args>` in `num_processes` workers (a plain run for one)."""
    if num_processes < 1:
        raise VicapError(f"num_processes={num_processes}: expected 1 or more")
    if num_processes == 1:
        return [sys.executable, "-m", *module_args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={num_processes}", "-m", *module_args]


def error_line(lines: Sequence[str]) -> str:
    """The line that says what went wrong: vicap's own `error:` line, else the last Python
    exception line that is not the launcher's summary, else the last non-empty line."""
    text = [line.strip() for line in lines if line.strip()]
    for line in reversed(text):
        if ": error: " in line:
            return line
    for line in reversed(text):
        if _PYTHON_ERROR.match(line) and not any(n in line for n in _LAUNCHER_NOISE):
            return line
    return text[-1] if text else "no output"


def run_streamed(command: Sequence[str], env: Mapping[str, str] | None = None,
                 out: TextIO | None = None) -> tuple[int, list[str]]:
    """Run `command`, forwarding its stdout and stderr to `out` (default sys.stdout) as they
    arrive (carriage returns kept, so progress bars redraw in place); return (exit code, last
    lines). Interrupting the caller stops the whole process group."""
    out = sys.stdout if out is None else out
    full_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=full_env, start_new_session=True)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    tail: deque[str] = deque(maxlen=_TAIL_LINES)
    pending = ""
    try:
        while chunk := os.read(proc.stdout.fileno(), 65536):
            text = decoder.decode(chunk)
            out.write(text)
            out.flush()
            *done, pending = (pending + text).split("\n")
            tail.extend(line.split("\r")[-1] for line in done)
        code = proc.wait()
    except BaseException:
        _stop(proc)
        raise
    finally:
        proc.stdout.close()
    tail.extend(pending.split("\r")[-1:])
    return code, list(tail)


def _stop(proc: subprocess.Popen) -> None:
    """Interrupt the launcher and its workers (one process group), then make sure they end."""
    for sig, wait in ((signal.SIGINT, 30), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def launch_training(args: Sequence[str], num_processes: int = 2,
                    env: Mapping[str, str] | None = None, out: TextIO | None = None) -> int:
    """Run `vicap train <args>` (the CLI's flags: --profile/--config/--set/--out/--resume/
    --overwrite) in `num_processes` processes, one per GPU, streaming the output; return 0.
    A failure raises VicapError naming the exit code and the line that says why."""
    command = distributed_command(["vicap_utils", "train", *args], num_processes)
    code, lines = run_streamed(command, env, out)
    if code != 0:
        raise VicapError(f"training in {num_processes} processes failed (exit code {code}): "
                         f"{error_line(lines)}")
    return code


def train_on_every_gpu(cfg, run, resume: bool = False, overwrite: bool = False) -> dict:
    """Train `cfg` into the folder `run` from a notebook, on every GPU there is: in this process
    on one GPU or the CPU, else one worker process per GPU (Kaggle's T4 x2); returns the run's
    summary either way. A --resume that finds no checkpoint in `run` first brings back the
    newest unfinished run a previous session left under the Kaggle input root."""
    import json
    import tempfile
    from pathlib import Path

    from vicap_utils.config import save_config
    from vicap_utils.ops.handover import prepare_resume
    from vicap_utils.ops.hardware import detect

    run = Path(run)
    if resume and prepare_resume(run, cfg.profile) is None:
        resume = False  # nothing to resume anywhere: a fresh run
    gpus = detect().count
    if gpus <= 1:
        from vicap_utils.train import train

        return train(cfg, run, resume=resume, overwrite=overwrite)
    with tempfile.TemporaryDirectory(prefix="vicap-launch-") as tmp:
        config = save_config(cfg, Path(tmp) / "config.json")
        flags = ["--resume"] if resume else ["--overwrite"] if overwrite else []
        launch_training(["--config", str(config), "--out", str(run), *flags], gpus)
    return json.loads((run / "summary.json").read_text(encoding="utf-8"))
