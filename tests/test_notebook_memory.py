"""Notebooks 03 and 04 on a T4: no model they built stays alive beside the next one (the
trainer's in 03, each evaluated system's in 04). Their `.py` twins run in-process in an IPython
shell (as a kernel runs them, output cache included) with automatic garbage collection off and
every loaded model caught in a reference cycle, as transformers leaves the first model a
process loads: a model counts as gone only once the code itself freed it."""
from __future__ import annotations

import gc
import shutil
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jupytext
import pytest
from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config as ShellConfig

import vicap_utils.builders
import vicap_utils.captioner
import vicap_utils.ops.adapters
import vicap_utils.train
from vicap_utils.data import load_captions, write_coco

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


class Stop(Exception):
    """Raised by a probe once it has seen what it came for."""


class Weights:
    """Weak references to the weights of every model a wrapped loader returned."""

    def __init__(self) -> None:
        self.loads: list[list[weakref.ref]] = []

    def wrap(self, load: Callable[..., Any]) -> Callable[..., Any]:
        """`load` (returning a Captioner), recording weak references to its weights and
        leaving the model in a reference cycle that only a garbage collection frees."""
        def recorded(*args: Any, **kwargs: Any) -> Any:
            cap = load(*args, **kwargs)
            self.loads.append([weakref.ref(p) for p in cap.model.parameters()])
            cycle: list[Any] = [cap.model]
            cycle.append(cycle)
            return cap
        return recorded

    def alive(self) -> list[int]:
        """Per load so far, how many of its weights are still alive (nothing collected)."""
        return [sum(ref() is not None for ref in refs) for refs in self.loads]


@pytest.fixture
def shell(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[InteractiveShell]:
    """A fresh in-process IPython shell on the `mini` profile, its outputs under tmp_path,
    with automatic garbage collection off while it lives."""
    monkeypatch.setenv("VICAP_PROFILE", "mini")
    monkeypatch.setenv("VICAP_OUTPUT", str(tmp_path / "outputs"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    config = ShellConfig()
    config.HistoryManager.hist_file = ":memory:"
    gc.collect()
    gc.disable()
    try:
        yield InteractiveShell.instance(config=config)
    finally:
        gc.enable()
        InteractiveShell.clear_instance()
        gc.collect()


def trim(captions: Path, n: int) -> None:
    """Keep the first `n` images (by id) of a caption file, and their captions."""
    cs = load_captions(captions)
    write_coco(cs.subset(sorted(cs.images, key=str)[:n]), captions)


def run_until(shell: InteractiveShell, name: str, parameters: dict[str, Any],
              last: str) -> None:
    """Run notebook `name`'s code cells (parameters injected after the first, as papermill
    does) up to the first cell containing `last`; a `Stop` ends the run early."""
    cells = [c.source for c in jupytext.read(NOTEBOOKS / f"{name}.py").cells
             if c.cell_type == "code"]
    injected = "\n".join(f"{key} = {value!r}" for key, value in parameters.items())
    for source in [cells[0], injected, *cells[1:]]:
        result = shell.run_cell(source, store_history=True)
        if isinstance(result.error_in_exec, Stop):
            return
        result.raise_error()
        if last in source:
            return
    raise AssertionError(f"no cell of {name} contains {last!r}")


@pytest.mark.slow
def test_03_frees_its_hand_built_model_before_the_trainer_starts(
        shell: InteractiveShell, mini_run: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    weights, optimizers = Weights(), []
    build_optimizer = vicap_utils.builders.build_optimizer

    def tracked_optimizer(*args: Any, **kwargs: Any) -> Any:
        optimizer, scheduler = build_optimizer(*args, **kwargs)
        optimizers.extend([weakref.ref(optimizer), weakref.ref(scheduler)])
        return optimizer, scheduler

    seen: dict[str, Any] = {}

    def probe(*args: Any, **kwargs: Any) -> None:
        seen["weights"] = weights.alive()
        seen["optimizer"] = [ref() is not None for ref in optimizers]
        raise Stop

    data = tmp_path / "outputs" / "data" / "mini"  # notebook 01's output, fewer images
    shutil.copytree(mini_run / "data", data)
    trim(data / "train.json", 16)
    trim(data / "val.json", 2)
    monkeypatch.setattr(vicap_utils.captioner, "load_base",
                        weights.wrap(vicap_utils.captioner.load_base))
    monkeypatch.setattr(vicap_utils.builders, "build_optimizer", tracked_optimizer)
    monkeypatch.setattr(vicap_utils.train, "train_on_every_gpu", probe)
    run_until(shell, "03_finetune_lora", {"HAND_STEPS": 2}, "train_on_every_gpu(cfg")
    assert len(weights.loads) == 1 and len(weights.loads[0]) > 50
    assert seen == {"weights": [0], "optimizer": [False, False]}


@pytest.mark.slow
def test_04_keeps_one_model_alive_at_a_time(shell: InteractiveShell, mini_run: Path,
                                            tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "outputs" / "runs" / "mini"
    for part in ("best", "data"):
        shutil.copytree(mini_run / part, run / part)
    trim(run / "data" / "val.json", 3)
    monkeypatch.setenv("PATH", str(tmp_path / "no-java"))  # METEOR's JVM: 15 s, beside the point
    weights = Weights()
    alive_at_load: list[list[int]] = []

    def load_base(*args: Any, **kwargs: Any) -> Any:
        alive_at_load.append(weights.alive())
        return loader(*args, **kwargs)

    loader = weights.wrap(vicap_utils.ops.adapters.load_base)
    monkeypatch.setattr(vicap_utils.ops.adapters, "load_base", load_base)
    run_until(shell, "04_evaluate", {"N_BY_HAND": 2}, "evaluate_run(")
    assert alive_at_load == [[], [0], [0, 0]]  # the adapter by hand, then base and adapter
    assert (run / "eval" / "metrics.json").is_file()
