"""Run configuration: dataclasses per concern, named profiles, and type-checked overrides.

A run is fully described by one `Config`; `vicap train` writes it resolved as `config.json`
beside its outputs, and `--config` reads such a file back.
"""
from __future__ import annotations

import copy
import json
import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from vicap_utils.ops.io import VicapError, read_json


@dataclass
class DataConfig:
    """Where the captions and images are, and how to split them."""

    source: str = "synthetic"  # synthetic | coco | flickr8k
    train_annotations: str = ""  # COCO JSON, Flickr8k token/CSV file; "" = discover or synthesise
    val_annotations: str = ""  # "" = hold out val_fraction of the training images
    test_annotations: str = ""  # optional test captions, audited beside the others
    images: str = ""  # images folder ("" = beside the annotations / discovered)
    prepared: str = ""  # folder of the audited, split data ("" = the run folder's data/)
    val_fraction: float = 0.1
    split_seed: int = 42
    max_train_images: int = 0  # 0 = all
    max_val_images: int = 0
    synthetic_images: int = 600  # mini profile: size of the synthetic set drawn at first use
    synthetic_seed: int = 0
    lang: str = "vi"


@dataclass
class ModelConfig:
    """Which base model, how it is loaded, and how text is tokenised."""

    family: str = "blip"  # blip | blip2
    base: str = "mini"  # hub id, local folder, or "mini" (tiny BLIP built and cached here)
    load_in_8bit: bool = False  # bitsandbytes; needs CUDA compute capability >= 7.5
    extend_vocab: bool = True  # add Vietnamese syllables/letters to BLIP-1's WordPiece vocab
    max_length: int = 40  # caption tokens, bos and eos included
    prompt: str = ""  # optional text prefix (masked out of the loss)
    gradient_checkpointing: bool = False
    vision_fp32: bool = True  # BLIP-2: keep the ViT in fp32 (fp16 ViT is known to give NaN)


@dataclass
class LoraSettings:
    """LoRA adapter shape and placement."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str = "default"  # "default" (per family), a regex, or comma-separated names
    cross_attention: bool = False  # BLIP-1: also adapt the decoder's cross-attention
    train_new_embeddings: bool = True  # train the rows of the added Vietnamese tokens


@dataclass
class TrainConfig:
    """Optimisation, precision, checkpoints and early stopping."""

    epochs: int = 30
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 5e-5
    embedding_lr: float = 0.0  # 0 = same as lr; new token rows often want more
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    scheduler: str = "cosine"  # cosine | linear | constant
    label_smoothing: float = 0.05
    max_grad_norm: float = 1.0
    mixed_precision: str = "auto"  # auto | no | fp16 | bf16
    patience: int = 3  # epochs without a better validation CIDEr before stopping; 0 = never
    seed: int = 42
    num_workers: int = -1  # image-decoding DataLoader workers; -1 = min(4, CPUs) when needed
    cache_vision_features: bool = True  # encode each image once where the ViT is frozen
    val_every: int = 1  # validate every N epochs
    val_sample: int = 250  # validate epochs on a fixed sample of at most N images; 0 = all
    max_steps: int = 0  # 0 = no limit (tests use it to stop early)
    save_every_steps: int = 0  # also checkpoint last/ every N optimizer steps (0 = per epoch)


@dataclass
class EvalConfig:
    """Decoding for validation and prediction."""

    num_beams: int = 3
    max_new_tokens: int = 30
    batch_size: int = 16
    repetition_penalty: float = 1.0


@dataclass
class Config:
    """Everything one run needs."""

    profile: str = "mini"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict, JSON-ready."""
        return asdict(self)

    def to_json(self) -> str:
        """Indented JSON for config.json."""
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=2)


SECTIONS = ("data", "model", "lora", "train", "eval")

PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    # The real `uitviic-blip` recipe (LoRA r16/alpha32/dropout 0.05 on the decoder's
    # self-attention, new token rows at 10x the LoRA learning rate, warmup + cosine, label
    # smoothing 0.05, early stopping on validation CIDEr with patience 3), scaled down. The
    # differences, all sizes or rates: a tiny base built here instead of BLIP-base, synthetic data;
    # lr 2e-3 / embedding_lr 2e-2 instead of 5e-5 / 5e-4 (a tiny model trained from scratch on
    # 600 images wants larger steps); batch 32 x 1 instead of 8 x 2; 12 epochs instead of 30;
    # max_length 32 instead of 40; eval batch 64.
    "mini": {
        "data": {"source": "synthetic", "synthetic_images": 600, "val_fraction": 0.1},
        "model": {"family": "blip", "base": "mini", "max_length": 32},
        "lora": {"r": 16, "alpha": 32, "dropout": 0.05},
        "train": {"epochs": 12, "batch_size": 32, "lr": 2e-3, "embedding_lr": 2e-2,
                  "label_smoothing": 0.05, "patience": 3, "cache_vision_features": True},
        "eval": {"num_beams": 3, "max_new_tokens": 30, "batch_size": 64},
    },
    "uitviic-blip": {
        "data": {"source": "coco"},
        "model": {"family": "blip", "base": "Salesforce/blip-image-captioning-base",
                  "max_length": 40},
        "lora": {"r": 16, "alpha": 32, "dropout": 0.05},
        "train": {"epochs": 30, "batch_size": 8, "grad_accum": 2, "lr": 5e-5,
                  "embedding_lr": 5e-4, "label_smoothing": 0.05, "patience": 3},
        "eval": {"num_beams": 3, "max_new_tokens": 40, "batch_size": 32},
    },
    "flickr8k-blip2": {
        "data": {"source": "flickr8k", "lang": "en"},
        "model": {"family": "blip2", "base": "Salesforce/blip2-opt-2.7b", "load_in_8bit": True,
                  "extend_vocab": False, "max_length": 40},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.05, "train_new_embeddings": False},
        "train": {"epochs": 5, "batch_size": 4, "grad_accum": 4, "lr": 1e-4,
                  "label_smoothing": 0.0, "patience": 2},
        "eval": {"num_beams": 3, "max_new_tokens": 30, "batch_size": 8},
    },
}


# Allowed values and ranges, checked before any work (`validate`).
CHOICES: dict[str, tuple[str, ...]] = {
    "data.source": ("synthetic", "coco", "flickr8k"),
    "data.lang": ("vi", "en"),
    "model.family": ("blip", "blip2"),
    "train.scheduler": ("cosine", "linear", "constant"),
    "train.mixed_precision": ("auto", "no", "fp16", "bf16"),
}
# key: (lowest, highest, lowest allowed itself, highest allowed itself); None = unbounded.
RANGES: dict[str, tuple[float | None, float | None, bool, bool]] = {
    "data.val_fraction": (0, 1, False, False),
    "data.max_train_images": (0, None, True, True),
    "data.max_val_images": (0, None, True, True),
    "data.synthetic_images": (2, None, True, True),
    "model.max_length": (3, 512, True, True),
    "lora.r": (1, None, True, True),
    "lora.alpha": (0, None, False, True),
    "lora.dropout": (0, 1, True, False),
    "train.epochs": (1, None, True, True),
    "train.batch_size": (1, None, True, True),
    "train.grad_accum": (1, None, True, True),
    "train.lr": (0, None, False, True),
    "train.embedding_lr": (0, None, True, True),
    "train.weight_decay": (0, None, True, True),
    "train.warmup_ratio": (0, 1, True, True),
    "train.label_smoothing": (0, 1, True, False),
    "train.max_grad_norm": (0, None, True, True),
    "train.patience": (0, None, True, True),
    "train.num_workers": (-1, 64, True, True),
    "train.val_every": (1, None, True, True),
    "train.val_sample": (0, None, True, True),
    "train.max_steps": (0, None, True, True),
    "train.save_every_steps": (0, None, True, True),
    "eval.num_beams": (1, 64, True, True),
    "eval.max_new_tokens": (1, 512, True, True),
    "eval.batch_size": (1, None, True, True),
    "eval.repetition_penalty": (0, None, False, True),
}


def validate(cfg: Config, where: str = "config") -> Config:
    """Check every value against its allowed set or range; the first bad one is a one-line
    error naming the key, the value and what is allowed."""
    values = cfg.to_dict()
    for key, allowed in CHOICES.items():
        section, name = key.split(".")
        if values[section][name] not in allowed:
            raise VicapError(f"{where}: {key}={values[section][name]!r} is not one of "
                             f"{', '.join(allowed)}")
    for key, (low, high, low_ok, high_ok) in RANGES.items():
        section, name = key.split(".")
        value = values[section][name]
        bad = not math.isfinite(value) or (
            low is not None and (value < low or (value == low and not low_ok))) or (
            high is not None and (value > high or (value == high and not high_ok)))
        if bad:
            raise VicapError(f"{where}: {key}={value!r} is out of range "
                             f"({_describe_range(low, high, low_ok, high_ok)})")
    return cfg


def _describe_range(low, high, low_ok: bool, high_ok: bool) -> str:
    """"at least 1", "between 0 and 1 (exclusive)"… for error messages."""
    if high is None:
        return f"must be {'at least' if low_ok else 'greater than'} {low:g}"
    left = "[" if low_ok else "("
    right = "]" if high_ok else ")"
    return f"must be in {left}{low:g}, {high:g}{right}"


def _section_types(section: Any) -> dict[str, Any]:
    hints = typing.get_type_hints(type(section))
    return {f.name: hints[f.name] for f in fields(section)}


def _convert(raw: Any, target: Any, key: str) -> Any:
    """Convert a --set string (or JSON value) to the field's declared type, or fail naming key."""
    origin = typing.get_origin(target)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(target) if a is not type(None)]
        if raw in (None, "none", "None", "null"):
            return None
        return _convert(raw, args[0], key)
    try:
        if target is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if target is int:
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError(raw)
            return int(raw)
        if target is float:
            return float(raw)
        if target is str:
            if not isinstance(raw, str):
                raise ValueError(raw)
            return raw
    except (TypeError, ValueError):
        name = getattr(target, "__name__", str(target))
        raise VicapError(f"{key}: expected {name}, got {raw!r}") from None
    raise VicapError(f"{key}: unsupported type {target}")


def apply_values(cfg: Config, values: dict[str, Any], where: str) -> Config:
    """Set nested `{section: {key: value}}` values, rejecting unknown sections and keys."""
    for section_name, section_values in values.items():
        if section_name == "profile":
            cfg.profile = str(section_values)
            continue
        if section_name not in SECTIONS:
            raise VicapError(
                f"{where}: unknown section {section_name!r}; valid: {', '.join(SECTIONS)}"
            )
        if not isinstance(section_values, dict):
            raise VicapError(f"{where}: section {section_name!r} must be an object")
        section = getattr(cfg, section_name)
        types_ = _section_types(section)
        for key, raw in section_values.items():
            if key not in types_:
                raise VicapError(
                    f"{where}: unknown key {section_name}.{key}; valid keys: "
                    + ", ".join(f"{section_name}.{k}" for k in types_)
                )
            try:
                setattr(section, key, _convert(raw, types_[key], f"{section_name}.{key}"))
            except VicapError as exc:  # name the file (or --set) the value came from
                raise VicapError(f"{where}: {exc}") from None
    return cfg


def parse_overrides(items: list[str]) -> dict[str, dict[str, str]]:
    """Turn ["train.lr=1e-4", …] into {"train": {"lr": "1e-4"}}, rejecting malformed items."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise VicapError(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. train.lr=1e-4")
        if section not in SECTIONS:
            raise VicapError(
                f"--set {item!r}: unknown section {section!r}; valid: {', '.join(SECTIONS)}"
            )
        out.setdefault(section, {})[name] = value.strip()
    return out


def profile_config(name: str) -> Config:
    """The named profile's config (`auto` resolved through vicap_utils.ops.env)."""
    if name == "auto":
        from vicap_utils.ops.env import auto_profile

        name = auto_profile()
    if name not in PROFILES:
        raise VicapError(f"unknown profile {name!r}; valid: auto, {', '.join(PROFILES)}")
    return apply_values(Config(profile=name), copy.deepcopy(PROFILES[name]), f"profile {name}")


def load_config(
    profile: str | None = None, config_file: str | None = None, overrides: list[str] | None = None
) -> Config:
    """Resolve a profile or a config JSON file, then apply `--set` overrides."""
    if config_file:
        raw = read_json(config_file, "config file")
        if not isinstance(raw, dict):
            raise VicapError(f"{config_file}: a config must be a JSON object")
        cfg = profile_config(raw["profile"]) if "profile" in raw else Config()
        cfg = apply_values(cfg, raw, str(config_file))
    else:
        cfg = profile_config(profile or "auto")
    cfg = apply_values(cfg, parse_overrides(overrides or []), "--set")
    return validate(cfg, str(config_file) if config_file else "--set")


def config_from_dict(raw: dict[str, Any], where: str = "config") -> Config:
    """Rebuild a Config from its `to_dict()` form (e.g. a checkpoint's saved config)."""
    if not isinstance(raw, dict):
        raise VicapError(f"{where}: the saved config is not an object")
    return validate(apply_values(Config(), copy.deepcopy(raw), where), where)


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write the resolved config as JSON, atomically."""
    from vicap_utils.ops.io import atomic_write_text

    return atomic_write_text(path, cfg.to_json() + "\n")


def diff_keys(a: Config, b: Config, keys: list[str]) -> list[str]:
    """The dotted keys (from `keys`, or whole sections) whose values differ between a and b."""
    da, db = a.to_dict(), b.to_dict()
    changed = []
    for key in keys:
        section, _, name = key.partition(".")
        if name:
            if da[section][name] != db[section][name]:
                changed.append(key)
        else:
            changed += [f"{section}.{k}" for k in da[section] if da[section][k] != db[section][k]]
    return changed


__all__ = [
    "Config", "DataConfig", "ModelConfig", "LoraSettings", "TrainConfig", "EvalConfig",
"PROFILES", "load_config", "profile_config", "parse_overrides",
    "apply_values", "config_from_dict", "save_config", "diff_keys", "validate",
]
