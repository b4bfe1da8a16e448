"""Start `vicap train` in one fresh process per GPU (torch.distributed.run) from a notebook,
whose kernel cannot fork DDP workers once it touched CUDA. Never imports torch."""

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
    """vicap's `error:` line, else the last Python exception line (not the launcher's), else
    the last non-empty line."""
    text = [line.strip() for line in lines if line.strip()]
    vicap = [line for line in text if ": error: " in line]
    python = [line for line in text
              if _PYTHON_ERROR.match(line) and not any(n in line for n in _LAUNCHER_NOISE)]
    return (vicap or python or text or ["no output"])[-1]


def run_streamed(command: Sequence[str], env: Mapping[str, str] | None = None,
                 out: TextIO | None = None) -> tuple[int, list[str]]:
    """Run `command`, forwarding its output to `out` (default stdout) as it arrives; return
    (exit code, last lines). An interrupt stops them all."""
    out = out or sys.stdout
    full_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=full_env, start_new_session=True)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    tail: deque[str] = deque(maxlen=200)  # enough for error_line to find the cause
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
    """Run `vicap train <args>` in `num_processes` processes, streaming the output; return 0,
    or raise a VicapError naming the exit code and the cause."""
    command = distributed_command(["vicap_utils", "train", *args], num_processes)
    code, lines = run_streamed(command, env, out)
    if code != 0:
        raise VicapError(f"training in {num_processes} processes failed (exit code {code}): "
                         f"{error_line(lines)}")
    return code

