"""A training run's folder: its rules, its resumable checkpoint and its history.

Layout: `config.json`, `data/` (the audited data, unless `data.prepared` points elsewhere),
`last/` (everything needed to resume, written atomically: trainable weights, optimizer,
scheduler, GradScaler, RNG states, progress), `best/` and `final/` (adapters), `history.csv`,
`loss_curve.png`, `summary.json`, and `cache/` (vision features too large for RAM). A run
killed at any moment and resumed from `last/` ends with the same adapter as an uninterrupted
one.
"""
from __future__ import annotations

import csv
import io
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vicap_utils.config import Config, config_from_dict, diff_keys
from vicap_utils.io import (
    VicapError,
    atomic_dir,
    atomic_write_json,
    atomic_write_text,
    read_json,
    recover_dir,
)

# Settings a resumed run must share with its checkpoint; everything else may change.
RESUME_KEYS = ["model.family", "model.base", "model.extend_vocab", "model.max_length",
               "model.prompt", "lora.r", "lora.alpha", "lora.target_modules",
               "lora.cross_attention", "lora.train_new_embeddings", "data.source",
               "data.train_annotations", "train.seed", "train.batch_size", "train.grad_accum"]
HISTORY_FIELDS = ["epoch", "train_loss", "val_loss", "val_CIDEr", "seconds"]
# What `--overwrite` removes; `data/` stays (a cache, checked by its fingerprint).
RUN_OUTPUTS = ("last", "best", "final", "history.csv", "loss_curve.png", "config.json",
               "summary.json", "cache")
RUN_ENTRIES = (*RUN_OUTPUTS, "data")


@dataclass
class RunState:
    """Progress that `last/state.json` records."""

    epoch: int = 0  # epochs fully trained
    batches_done: int = 0  # batches of the current epoch already trained
    global_step: int = 0  # optimizer steps
    best_cider: float = -1.0
    best_epoch: int = 0
    bad_epochs: int = 0  # validations in a row without a better CIDEr
    stop: bool = False  # early stop or max_steps reached
    finished: bool = False  # final/ written
    history: list[dict[str, Any]] = field(default_factory=list)
    pending: dict[str, Any] = field(default_factory=dict)  # an epoch trained, not yet validated
    full_val: dict[str, Any] = field(default_factory=dict)  # final model on the whole val set
    loss_sum: float = 0.0  # running sums of the current epoch
    loss_count: int = 0
    vocab_entries: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)


def open_run(out: Path, cfg: Config, resume: bool, overwrite: bool,
             writer: bool = True) -> RunState | None:
    """Check the run folder before any work; return the saved state when resuming.

    Refuses to replace a run without `--overwrite`, to resume without a checkpoint or with a
    config that differs in a RESUME_KEYS setting, and to write into a folder over files vicap
    did not write (see `folders`). The `writer` (the main process, holding the folder's lock)
    claims the folder and, with `--overwrite`, removes the outputs vicap wrote there.
    """
    from vicap_utils.folders import claim, record, remove_owned

    if out.exists() and not out.is_dir():
        raise VicapError(f"{out}: is a file; --out needs a folder for the run")
    if writer:
        claim(out, "run", RUN_ENTRIES, overwrite=overwrite)
        record(out, RUN_ENTRIES)
    last = recover_dir(out / "last") if writer else (out / "last" if (out / "last").is_dir()
                                                     else None)
    if overwrite and not resume:
        if writer:
            remove_owned(out, RUN_OUTPUTS)
        return None
    if not resume:
        if (out / "final").is_dir():
            raise VicapError(f"{out}: holds a finished run; use --resume to continue it "
                             "(with a larger train.epochs) or --overwrite to start again")
        if last is not None:
            raise VicapError(f"{out}: holds an unfinished run in last/; use --resume to "
                             "continue it or --overwrite to start again")
        return None
    if last is None:
        raise VicapError(f"{out}/last: no checkpoint to resume from; run without --resume "
                         "to start")
    if not (last / "state.json").is_file():
        raise VicapError(f"{last}: incomplete checkpoint (no state.json); start again with "
                         "--overwrite")
    state = _read_state(last / "state.json")
    changed = diff_keys(config_from_dict(state.config, f"{last}/state.json"), cfg, RESUME_KEYS)
    if changed:
        raise VicapError(f"{last}: cannot resume, the config differs in {', '.join(changed)} "
                         "(use the run's config.json, or --overwrite)")
    return state


def _read_state(path: Path) -> RunState:
    """RunState from last/state.json; a malformed file is a one-line error."""
    raw = read_json(path, "checkpoint state")
    known = RunState.__dataclass_fields__
    if not isinstance(raw, dict) or not isinstance(raw.get("config"), dict):
        raise VicapError(f"{path}: not a vicap checkpoint state; start again with --overwrite")
    try:
        return RunState(**{k: v for k, v in raw.items() if k in known})
    except TypeError as exc:
        raise VicapError(f"{path}: malformed checkpoint state ({exc})") from None


def rng_state() -> dict[str, Any]:
    """Every RNG a training step can draw from."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model) -> dict[str, torch.Tensor]:
    """The trainable tensors (LoRA and new token rows), detached, on the CPU."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_last(out: Path, model, optimizer, scheduler, scaler, state: RunState) -> None:
    """Write last/ in one atomic step: weights, optimizer, scheduler, scaler, RNG, progress."""
    from safetensors.torch import save_file

    with atomic_dir(out / "last") as tmp:
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        if scaler is not None:
            torch.save(scaler.state_dict(), tmp / "scaler.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        atomic_write_json(tmp / "state.json", asdict(state))


def load_last(out: Path, model, optimizer, scheduler, scaler) -> None:
    """Restore what `save_last` wrote into the live model, optimizer, scheduler and RNGs."""
    from safetensors.torch import load_file

    last = out / "last"
    weights = load_file(str(last / "trainable.safetensors"))
    missing = set(weights) - {n for n, _ in model.named_parameters()}
    if missing:
        raise VicapError(f"{last}: checkpoint does not fit this model ({sorted(missing)[0]})")
    model.load_state_dict(weights, strict=False)
    optimizer.load_state_dict(torch.load(last / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(last / "scheduler.pt", weights_only=False))
    if scaler is not None and (last / "scaler.pt").is_file():
        scaler.load_state_dict(torch.load(last / "scaler.pt", weights_only=False))
    set_rng_state(torch.load(last / "rng.pt", weights_only=False))


def write_history(out: Path, history: list[dict[str, Any]]) -> Path:
    """history.csv with the contract's columns, one row per epoch."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS)
    writer.writeheader()
    writer.writerows(history)
    return atomic_write_text(out / "history.csv", buf.getvalue())


def write_reports(out: Path, history: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    """A finished run's history.csv, loss_curve.png (loss and CIDEr per epoch), summary.json."""
    import matplotlib.pyplot as plt

    from vicap_utils.report import plot_history

    write_history(out, history)
    if history:
        plt.close(plot_history(history, out / "loss_curve.png"))
    atomic_write_json(out / "summary.json", summary)


def run_references(run: Path, split: str = "val") -> tuple[Path, Path]:
    """(captions file, images folder) of a training run's `val` or `test` split, from its
    data/ record."""
    sources = read_json(run / "data" / "sources.json", "run data record")
    captions = run / "data" / f"{split}.json"
    if split not in ("val", "test") or not sources.get(f"{split}_images") or \
            not captions.is_file():
        raise VicapError(f"{run}/data: no {split!r} split recorded (a test split needs the data "
                         "set's own test file, e.g. UIT-ViIC's uitviic_captions_test2017.json)")
    return captions, Path(sources[f"{split}_images"])
