"""A run's folder and its resumable `last/` (trainable weights, optimizer, scheduler, scaler, each
process's RNG; atomic): a run killed and resumed ends as an uninterrupted one."""

import io
import random
import reprlib
import typing
import zipfile
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pydantic
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save

from vicap_utils.audit import OUTPUTS
from vicap_utils.config import Config, config_from_dict, diff_keys
from vicap_utils.ops.folders import claim, record, refuse_aliases, remove_owned
from vicap_utils.ops.io import (
    VicapError,
    atomic_dir,
    atomic_write_json,
    read_json,
    reading_as,
    recover_dir,
)
from vicap_utils.prepare import SPLIT_FILES, SUB_AUDITS

# Settings a resumed run must share with its checkpoint; everything else may change.
RESUME_KEYS = ["model.family", "model.base", "model.extend_vocab", "model.max_length",
               "model.prompt", "lora.r", "lora.alpha", "lora.target_modules",
               "lora.cross_attention", "lora.train_new_embeddings", "data.source",
               "data.train_annotations", "train.seed", "train.batch_size", "train.grad_accum"]
# What a checkpoint state cannot do without; any other field missing takes its default.
STATE_REQUIRED = ("epoch", "batches_done", "global_step", "config")
# What `--overwrite` removes; `data/` stays (a cache, checked by its fingerprint).
RUN_OUTPUTS = ("last", "best", "final", "history.csv", "loss_curve.png", "config.json",
               "summary.json", "cache")
RUN_ENTRIES = (*RUN_OUTPUTS, "data")
RUN_STARTED = ("config.json", "data")  # written as a run starts; the rest recorded when written
LAST_FILES = ("state.json", "trainable.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt")
START_AGAIN = "start again with --overwrite instead of --resume"
TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "text",
              dict[str, Any]: "an object", list[str]: "a list of text",
              list[dict[str, Any]]: "a list of objects"}
# Any failure to read or apply a checkpoint file, as a one-line error naming it.
damaged = partial(reading_as, what="damaged checkpoint file", fix=START_AGAIN)


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
    loss_sum: float = 0.0  # of the current epoch's batch losses (batches_done of them)
    vocab_entries: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    scst_from: str = ""  # self-critical training from this adapter


def open_run(out: Path, cfg: Config, resume: bool, overwrite: bool,
             writer: bool = True) -> RunState | None:
    """Check the run folder before any work; return the saved state when resuming. The `writer`
    (main process, holding the lock) claims it and, with `--overwrite`, clears vicap's outputs."""
    if out.exists() and not out.is_dir():
        raise VicapError(f"{out}: is a file; --out needs a folder for the run")
    refuse_inputs_in_outputs(out, cfg)
    if writer:
        claim(out, "run", RUN_ENTRIES, overwrite=overwrite)
        last = recover_dir(out / "last")
        if overwrite and not resume:
            remove_owned(out, RUN_OUTPUTS)
        record(out, RUN_STARTED)
    else:
        last = out / "last" if (out / "last").is_dir() else None
    if overwrite and not resume:
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
        earlier = any((out / name).exists() for name in RUN_OUTPUTS)
        raise VicapError(f"{out}/last: no checkpoint to resume from; " + (
            START_AGAIN if earlier else "run without --resume to start"))
    check_last(last)
    state = read_state(last / "state.json")
    changed = diff_keys(config_from_dict(state.config, f"{last}/state.json"), cfg, RESUME_KEYS)
    if changed:
        raise VicapError(f"{last}: cannot resume, the config differs in {', '.join(changed)} "
                         "(use the run's config.json, or --overwrite)")
    return state


def refuse_inputs_in_outputs(out: Path, cfg: Config) -> None:
    """Refuse a data path that training would write over, before the folder is claimed."""
    d = cfg.data
    inputs = [(f"data.{key}", getattr(d, key)) for key in
              ("train_annotations", "val_annotations", "test_annotations", "images")
              if getattr(d, key)]
    outputs = [("--out", out / name) for name in RUN_ENTRIES]
    if d.prepared:
        outputs += [("data.prepared", Path(d.prepared) / name)
                    for name in (*OUTPUTS, *SPLIT_FILES, *SUB_AUDITS)]
    refuse_aliases(inputs, outputs)


def check_last(last: Path) -> None:
    """Refuse a checkpoint with a missing, empty or truncated file, before any work."""
    missing = [name for name in LAST_FILES if not (last / name).is_file()]
    if missing:
        raise VicapError(f"{last}: incomplete checkpoint (no {missing[0]}); {START_AGAIN}")
    with damaged(last / "trainable.safetensors") as path, safe_open(str(path), "pt") as weights:
        weights.keys()
    for name in sorted(p.name for p in last.glob("*.pt")):  # torch's files are zip archives
        with damaged(last / name) as path, zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
            if bad is not None:
                raise ValueError(f"member {bad} fails its checksum")


def read_state(path: Path) -> RunState:
    """RunState from state.json (a malformed one: a one-line error; newer fields: defaults)."""
    raw = read_json(path, "checkpoint state")
    if not isinstance(raw, dict):
        raise VicapError(f"{path}: not a vicap checkpoint state (not an object); {START_AGAIN}")
    for name, hint in typing.get_type_hints(RunState).items():
        if name not in raw:
            if name in STATE_REQUIRED:
                raise VicapError(f"{path}: malformed checkpoint state (no {name!r}); {START_AGAIN}")
            continue
        try:  # strict: a bool is no number, an int is a float, list items are checked
            pydantic.TypeAdapter(hint).validate_python(raw[name], strict=True)
        except pydantic.ValidationError:
            raise VicapError(f"{path}: malformed checkpoint state ({name!r} is "
                             f"{reprlib.repr(raw[name])}, not {TYPE_NAMES[hint]}); "
                             f"{START_AGAIN}") from None
    return RunState(**{f.name: raw[f.name] for f in fields(RunState) if f.name in raw})


def rng_state() -> dict[str, Any]:
    """Every RNG a training step can draw from."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def save_last(out: Path, model, optimizer, scheduler, scaler, state: RunState,
              rng_states: list[dict[str, Any]] | None = None) -> None:
    """Write last/ atomically with every process's RNG states (rank order; default: this one's),
    serialised in memory so a full disk is an OSError `atomic_dir` reports."""
    record(out, ["last"])
    trainable = {n: p.detach().cpu().clone() for n, p in model.named_parameters()
                 if p.requires_grad}
    parts = {"optimizer.pt": optimizer.state_dict(), "scheduler.pt": scheduler.state_dict(),
             "rng.pt": rng_states or [rng_state()],
             **({"scaler.pt": scaler.state_dict()} if scaler and scaler.is_enabled() else {})}
    with atomic_dir(out / "last") as tmp:
        (tmp / "trainable.safetensors").write_bytes(save(trainable))
        for name, obj in parts.items():
            buf = io.BytesIO()
            torch.save(obj, buf)
            (tmp / name).write_bytes(buf.getbuffer())
        atomic_write_json(tmp / "state.json", asdict(state))


def load_last(out: Path, model, optimizer, scheduler, scaler, rank: int = 0) -> None:
    """Restore last/ into the live parts and the RNGs process `rank` saved (else the main's)."""
    last = out / "last"
    with damaged(last / "trainable.safetensors") as path:
        weights = load_file(str(path))
        params = dict(model.named_parameters())
        name = min((n for n, t in weights.items()
                    if n not in params or params[n].shape != t.shape), default=None)
        if name is not None:
            fit = (f"{name} has shape {list(weights[name].shape)}, the model's "
                   f"{list(params[name].shape)}") if name in params else f"no parameter {name}"
            raise VicapError(f"{path}: checkpoint does not fit this model ({fit}); {START_AGAIN}")
        model.load_state_dict(weights, strict=False)
    parts = [(optimizer, "optimizer.pt"), (scheduler, "scheduler.pt")]
    if scaler is not None and (last / "scaler.pt").is_file():
        parts.append((scaler, "scaler.pt"))
    for part, name in parts:
        with damaged(last / name) as path:
            part.load_state_dict(torch.load(path, weights_only=False))
    with damaged(last / "rng.pt") as path:
        saved = torch.load(path, weights_only=False)
        if isinstance(saved, list):
            saved = saved[rank] if rank < len(saved) else saved[0]
        random.setstate(saved["python"])
        np.random.set_state(saved["numpy"])
        torch.set_rng_state(saved["torch"])
        if "cuda" in saved and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved["cuda"])


def run_references(run: Path, split: str = "val") -> tuple[Path, Path]:
    """(captions file, images folder) of a training run's `val` or `test` split (its data/)."""
    sources = read_json(run / "data" / "sources.json", "run data record")
    captions = run / "data" / f"{split}.json"
    if split not in ("val", "test") or not sources.get(f"{split}_images") or \
            not captions.is_file():
        raise VicapError(f"{run}/data: no {split!r} split recorded (a test split needs the data "
                         "set's own test file, e.g. UIT-ViIC's uitviic_captions_test2017.json)")
    return captions, Path(sources[f"{split}_images"])
