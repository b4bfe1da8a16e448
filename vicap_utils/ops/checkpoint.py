"""A training run's folder: its rules, its resumable checkpoint and its history.

Layout: `config.json`, `data/` (the audited data, unless `data.prepared` points elsewhere),
`last/` (everything needed to resume, written atomically: trainable weights, optimizer,
scheduler, GradScaler, RNG states, progress), `best/` and `final/` (adapters), `history.csv`,
`loss_curve.png`, `summary.json`, and `cache/` (vision features too large for RAM). A run
killed at any moment and resumed from `last/` ends with the same adapter as an uninterrupted
one.
"""
from __future__ import annotations

import contextlib
import csv
import io
import random
import reprlib
import typing
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vicap_utils.config import Config, config_from_dict, diff_keys
from vicap_utils.ops.folders import claim, record, remove_owned
from vicap_utils.ops.io import (
    VicapError,
    atomic_dir,
    atomic_write_json,
    atomic_write_text,
    error_summary,
    read_json,
    recover_dir,
)

# Settings a resumed run must share with its checkpoint; everything else may change.
RESUME_KEYS = ["model.family", "model.base", "model.extend_vocab", "model.max_length",
               "model.prompt", "lora.r", "lora.alpha", "lora.target_modules",
               "lora.cross_attention", "lora.train_new_embeddings", "data.source",
               "data.train_annotations", "train.seed", "train.batch_size", "train.grad_accum"]
# What a checkpoint state cannot do without; any other field missing takes its default.
STATE_REQUIRED = ("epoch", "batches_done", "global_step", "config")
HISTORY_FIELDS = ["epoch", "train_loss", "val_loss", "val_CIDEr", "seconds"]
# What `--overwrite` removes; `data/` stays (a cache, checked by its fingerprint).
RUN_OUTPUTS = ("last", "best", "final", "history.csv", "loss_curve.png", "config.json",
               "summary.json", "cache")
RUN_ENTRIES = (*RUN_OUTPUTS, "data")
# What every run writes as soon as it starts; each other entry is recorded as vicap's when it
# is first written (the feature cache only when features do not fit in RAM).
RUN_STARTED = ("config.json", "data")
# What `save_last` always writes (scaler.pt only with fp16).
LAST_FILES = ("state.json", "trainable.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt")
START_AGAIN = "start again with --overwrite instead of --resume"


@dataclass
class RunState:
    """Progress that `last/state.json` records."""

    epoch: int = 0  # epochs fully trained
    batches_done: int = 0  # batches of the current epoch already trained
    global_step: int = 0  # optimizer steps
    skipped_steps: int = 0  # of them, fp16 steps the GradScaler skipped (gradients overflowed)
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
    if out.exists() and not out.is_dir():
        raise VicapError(f"{out}: is a file; --out needs a folder for the run")
    refuse_inputs_in_outputs(out, cfg)
    if writer:
        claim(out, "run", RUN_ENTRIES, overwrite=overwrite)
        record(out, RUN_STARTED)
    last = recover_dir(out / "last") if writer else (out / "last" if (out / "last").is_dir()
                                                     else None)
    if overwrite and not resume:
        if writer:
            remove_owned(out, RUN_OUTPUTS)
            record(out, RUN_STARTED)
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
        raise VicapError(f"{out}/last: no checkpoint to resume from; " + (
            START_AGAIN if _holds_outputs(out) else "run without --resume to start"))
    check_last(last)
    state = _read_state(last / "state.json")
    changed = diff_keys(config_from_dict(state.config, f"{last}/state.json"), cfg, RESUME_KEYS)
    if changed:
        raise VicapError(f"{last}: cannot resume, the config differs in {', '.join(changed)} "
                         "(use the run's config.json, or --overwrite)")
    return state


def refuse_inputs_in_outputs(out: Path, cfg: Config) -> None:
    """Refuse, before the run folder is claimed or cleared, a configured data path that
    training would write over: one of the run's outputs (or inside one), or a file the
    prepared-data folder (`data.prepared`) receives."""
    from vicap_utils.audit import OUTPUTS
    from vicap_utils.ops.folders import refuse_aliases
    from vicap_utils.prepare import SPLIT_FILES, SUB_AUDITS

    d = cfg.data
    inputs = [(f"data.{key}", getattr(d, key)) for key in
              ("train_annotations", "val_annotations", "test_annotations", "images")
              if getattr(d, key)]
    outputs = [("--out", out / name) for name in RUN_ENTRIES]
    if d.prepared:
        outputs += [("data.prepared", Path(d.prepared) / name)
                    for name in (*OUTPUTS, *SPLIT_FILES, *SUB_AUDITS)]
    refuse_aliases(inputs, outputs)


def _holds_outputs(out: Path) -> bool:
    """True when the run folder holds outputs of an earlier run (beyond its data/)."""
    return any((out / name).exists() for name in RUN_OUTPUTS)


def check_last(last: Path) -> None:
    """Refuse, before any work, a checkpoint with a missing, empty or truncated file: every
    file `save_last` writes is there, its safetensors header and its zip archives whole."""
    from safetensors import safe_open

    missing = [name for name in LAST_FILES if not (last / name).is_file()]
    if missing:
        raise VicapError(f"{last}: incomplete checkpoint (no {missing[0]}); {START_AGAIN}")
    with _checkpoint_file(last / "trainable.safetensors") as path, \
            safe_open(str(path), "pt") as weights:
        weights.keys()
    for name in sorted(p.name for p in last.glob("*.pt")):  # torch's files are zip archives
        with _checkpoint_file(last / name) as path, zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
            if bad is not None:
                raise ValueError(f"member {bad} fails its checksum")


@contextlib.contextmanager
def _checkpoint_file(path: Path) -> Iterator[Path]:
    """Turn any failure to read or apply one checkpoint file into a one-line error naming it
    (torch, safetensors and zipfile each raise their own exception types)."""
    try:
        yield path
    except VicapError:
        raise
    except Exception as exc:
        raise VicapError(f"{path}: damaged checkpoint file ({error_summary(exc)}); "
                         f"{START_AGAIN}") from None


def _read_state(path: Path) -> RunState:
    """RunState from last/state.json; a malformed file (not an object, no progress or config,
    a value of the wrong type) is a one-line error. Fields added by a later vicap (absent from
    an older checkpoint) take their defaults."""
    raw = read_json(path, "checkpoint state")
    if not isinstance(raw, dict):
        raise VicapError(f"{path}: not a vicap checkpoint state (not an object); {START_AGAIN}")
    hints = typing.get_type_hints(RunState)
    for f in fields(RunState):
        if f.name not in raw:
            if f.name in STATE_REQUIRED:
                raise VicapError(f"{path}: malformed checkpoint state (no {f.name!r}); "
                                 f"{START_AGAIN}")
            continue
        if not _has_type(raw[f.name], hints[f.name]):
            raise VicapError(f"{path}: malformed checkpoint state ({f.name!r} is "
                             f"{reprlib.repr(raw[f.name])}, not {_type_name(hints[f.name])}); "
                             f"{START_AGAIN}")
    return RunState(**{f.name: raw[f.name] for f in fields(RunState) if f.name in raw})


def _has_type(value: Any, hint: Any) -> bool:
    """True when a JSON value fits a RunState field's type (bool is no int, an int is a float;
    a list's items are checked too)."""
    kind = typing.get_origin(hint) or hint
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if not isinstance(value, kind):
        return False
    item = typing.get_args(hint)[0] if kind is list else None
    return item is None or all(_has_type(v, item) for v in value)


def _type_name(hint: Any) -> str:
    """"an integer", "a list of text"… for messages."""
    kind = typing.get_origin(hint) or hint
    names = {int: "an integer", float: "a number", bool: "true or false", str: "text",
             dict: "an object"}
    if kind is list:
        item = typing.get_origin(typing.get_args(hint)[0]) or typing.get_args(hint)[0]
        return "a list of " + {str: "text", dict: "objects"}.get(item, "values")
    return names.get(kind, kind.__name__)


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


def own_rng_state(saved: list[dict[str, Any]] | dict[str, Any], rank: int) -> dict[str, Any]:
    """This process's entry of rng.pt's per-process states (the main process's for a rank
    beyond them), or the one state of an older checkpoint."""
    if isinstance(saved, dict):
        return saved
    return saved[rank] if rank < len(saved) else saved[0]


def trainable_state(model) -> dict[str, torch.Tensor]:
    """The trainable tensors (LoRA and new token rows), detached, on the CPU."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_last(out: Path, model, optimizer, scheduler, scaler, state: RunState,
              rng_states: list[dict[str, Any]] | None = None) -> None:
    """Write last/ in one atomic step: weights, optimizer, scheduler, scaler, the RNG states of
    every process (`rng_states`, rank order; default: this one's), progress.

    Each file is serialised in memory and written with plain file writes, so a full disk is an
    OSError that `atomic_dir` reports as "disk full" (torch and safetensors writing a file
    themselves raise their own errors without the cause)."""
    from safetensors.torch import save

    record(out, ["last"])
    with atomic_dir(out / "last") as tmp:
        (tmp / "trainable.safetensors").write_bytes(save(trainable_state(model)))
        _torch_save(optimizer.state_dict(), tmp / "optimizer.pt")
        _torch_save(scheduler.state_dict(), tmp / "scheduler.pt")
        if scaler is not None:
            _torch_save(scaler.state_dict(), tmp / "scaler.pt")
        _torch_save(rng_states or [rng_state()], tmp / "rng.pt")
        atomic_write_json(tmp / "state.json", asdict(state))


def _torch_save(obj: Any, path: Path) -> None:
    """torch.save through memory, so a failed write raises the OSError that caused it."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    path.write_bytes(buf.getbuffer())


def load_last(out: Path, model, optimizer, scheduler, scaler, rank: int = 0) -> None:
    """Restore what `save_last` wrote into the live model, optimizer, scheduler and RNGs (those
    process `rank` saved); a file that does not load or does not fit is a one-line error
    naming it."""
    from safetensors.torch import load_file

    last = out / "last"
    with _checkpoint_file(last / "trainable.safetensors") as path:
        weights = load_file(str(path))
        params = dict(model.named_parameters())
        wrong = sorted(n for n, t in weights.items() if n not in params or
                       params[n].shape != t.shape)
        if wrong:
            name = wrong[0]
            fit = (f"{name} has shape {list(weights[name].shape)}, the model's "
                   f"{list(params[name].shape)}") if name in params else f"no parameter {name}"
            raise VicapError(f"{path}: checkpoint does not fit this model ({fit}); "
                             f"{START_AGAIN}")
        model.load_state_dict(weights, strict=False)
    parts = [(optimizer, "optimizer.pt"), (scheduler, "scheduler.pt")]
    if scaler is not None and (last / "scaler.pt").is_file():
        parts.append((scaler, "scaler.pt"))
    for part, name in parts:
        with _checkpoint_file(last / name) as path:
            part.load_state_dict(torch.load(path, weights_only=False))
    with _checkpoint_file(last / "rng.pt") as path:
        set_rng_state(own_rng_state(torch.load(path, weights_only=False), rank))


def run_summary(out: Path, state: RunState, vocab_report: dict[str, Any], model
                ) -> dict[str, Any]:
    """summary.json's content: where things went and the headline numbers."""
    from vicap_utils.captioner import trainable_table

    return {"out": str(out), "epochs_run": state.epoch, "best_epoch": state.best_epoch,
            "best_val_CIDEr": state.best_cider, "global_step": state.global_step,
            "skipped_steps": state.skipped_steps,
            "vocabulary": vocab_report, "trainable": trainable_table(model),
            "full_val": state.full_val, "best": str(out / "best"), "final": str(out / "final")}


def write_history(out: Path, history: list[dict[str, Any]]) -> Path:
    """history.csv with the contract's columns, one row per epoch."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS)
    writer.writeheader()
    writer.writerows(history)
    record(out, ["history.csv"])
    return atomic_write_text(out / "history.csv", buf.getvalue())


def write_reports(out: Path, history: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    """A finished run's history.csv, loss_curve.png (loss and CIDEr per epoch), summary.json."""
    import matplotlib.pyplot as plt

    from vicap_utils.teach.report import plot_history

    write_history(out, history)
    record(out, ["loss_curve.png", "summary.json"])
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
