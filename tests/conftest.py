"""Shared fixtures: outputs kept out of the repository, and one trained `mini` run per session
(shared by the pytest-xdist workers that `scripts/test.sh` starts)."""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from filelock import FileLock

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One torch thread per worker (and its subprocesses): two workers on two cores would
    # otherwise run four threads, slower than two.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session", autouse=True)
def outputs_outside_the_repository(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """VICAP_OUTPUT points into the session's temporary folder, so no test writes ./outputs."""
    old = os.environ.get("VICAP_OUTPUT")
    os.environ["VICAP_OUTPUT"] = str(tmp_path_factory.mktemp("outputs"))
    yield
    if old is None:
        os.environ.pop("VICAP_OUTPUT", None)
    else:
        os.environ["VICAP_OUTPUT"] = old


@pytest.fixture(scope="session")
def mini_output(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An output folder holding one run of the `mini` profile as shipped (runs/mini/), trained
    once for every test that needs a fine-tuned adapter."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the workers' common temporary folder
    root = shared / "mini_output"
    run = root / "runs" / "mini"
    with FileLock(str(shared / "mini_output.lock")):
        if not (run / "final" / "adapter_model.safetensors").is_file():
            proc = subprocess.run([sys.executable, "-m", "vicap_utils", "train", "--profile",
                                   "mini", "--out", str(run)], capture_output=True, text=True,
                                  env={**os.environ, "VICAP_OUTPUT": str(root)}, timeout=1200)
            assert proc.returncode == 0, proc.stderr[-3000:]
    return root


@pytest.fixture(scope="session")
def mini_run(mini_output: Path) -> Path:
    """The run folder of `mini_output`."""
    return mini_output / "runs" / "mini"
