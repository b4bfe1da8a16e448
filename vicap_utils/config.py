"""Run configuration: dataclasses per concern (the recipe), named profiles, and overrides that
pydantic converts and range-checks; `vicap train` saves it as config.json for `--config`."""

import json
import os
from dataclasses import asdict, dataclass, field, fields
from functools import cache
from operator import attrgetter
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, with_config

from vicap_utils.ops.env import auto_profile
from vicap_utils.ops.io import VicapError, atomic_write_text, read_json

CHECKED = with_config(ConfigDict(extra="forbid", allow_inf_nan=False))
Positive = Annotated[int, Field(ge=1)]
Count = Annotated[int, Field(ge=0)]  # 0 = all, never or no limit
Rate = Annotated[float, Field(ge=0)]
PositiveRate = Annotated[float, Field(gt=0)]
Share = Annotated[float, Field(ge=0, lt=1)]
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]  # what numpy's and torch's generators take


@CHECKED
@dataclass
class DataConfig:
    """Where the captions and images are, and how to split them."""

    source: Literal["synthetic", "coco", "flickr8k"] = "synthetic"
    train_annotations: str = ""  # COCO JSON, Flickr8k token/CSV file; "" = discover or synthesise
    val_annotations: str = ""  # "" = hold out val_fraction of the training images
    test_annotations: str = ""  # optional test captions, audited beside the others
    images: str = ""  # images folder ("" = beside the annotations / discovered)
    prepared: str = ""  # folder of the audited, split data ("" = the run folder's data/)
    val_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.1
    split_seed: Seed = 42
    max_train_images: Count = 0
    max_val_images: Count = 0
    synthetic_images: Annotated[int, Field(ge=2, le=100_000)] = 600  # mini: the set's size
    synthetic_seed: Seed = 0
    lang: Literal["vi", "en"] = "vi"


@CHECKED
@dataclass
class ModelConfig:
    """Which base model, how it is loaded, and how text is tokenised."""

    family: Literal["blip", "blip2"] = "blip"
    base: str = "mini"  # hub id, local folder, or "mini" (tiny BLIP built and cached here)
    load_in_8bit: bool = False  # bitsandbytes; needs CUDA compute capability >= 7.5
    extend_vocab: bool = True  # add Vietnamese syllables/letters to BLIP-1's WordPiece vocab
    max_length: Annotated[int, Field(ge=3, le=512)] = 40  # caption tokens, bos and eos included
    prompt: str = ""  # optional text prefix (masked out of the loss)
    gradient_checkpointing: bool = False
    vision_fp32: bool = True  # BLIP-2: keep the ViT in fp32 (fp16 ViT is known to give NaN)


@CHECKED
@dataclass
class LoraSettings:
    """LoRA adapter shape and placement."""

    r: Positive = 16
    alpha: Positive = 32
    dropout: Share = 0.05
    target_modules: str = "default"  # "default" (per family), a regex, or comma-separated names
    cross_attention: bool = False  # BLIP-1: also adapt the decoder's cross-attention
    train_new_embeddings: bool = True  # train the rows of the added Vietnamese tokens


@CHECKED
@dataclass
class TrainConfig:
    """Optimisation, precision, checkpoints and early stopping."""

    epochs: Positive = 30
    batch_size: Positive = 8
    grad_accum: Positive = 1
    lr: PositiveRate = 5e-5
    embedding_lr: Rate = 0.0  # 0 = same as lr; new token rows often want more
    weight_decay: Rate = 0.01
    warmup_ratio: Annotated[float, Field(ge=0, le=1)] = 0.05
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    label_smoothing: Share = 0.05
    max_grad_norm: Rate = 1.0
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"
    patience: Count = 3  # epochs without a better validation CIDEr before stopping; 0 = never
    seed: Seed = 42
    num_workers: Annotated[int, Field(ge=-1, le=64)] = -1  # image decoding; -1: min(4, CPUs)
    cache_vision_features: bool = True  # encode each image once where the ViT is frozen
    val_every: Positive = 1  # validate every N epochs
    val_sample: Count = 250  # validate epochs on a fixed sample of at most N images; 0 = all
    max_steps: Count = 0  # 0 = no limit (tests use it to stop early)
    save_every_steps: Count = 0  # also checkpoint last/ every N optimizer steps (0 = per epoch)


@CHECKED
@dataclass
class EvalConfig:
    """Decoding for validation and prediction."""

    num_beams: Annotated[int, Field(ge=1, le=64)] = 3
    max_new_tokens: Annotated[int, Field(ge=1, le=512)] = 30
    batch_size: Positive = 16
    repetition_penalty: PositiveRate = 1.0


@CHECKED
@dataclass
class ScstConfig:
    """Self-critical training from a cross-entropy adapter (`vicap train --scst-from DIR`)."""

    samples: Positive = 5  # captions sampled per image; baseline: the mean of the others
    greedy_baseline: bool = False  # baseline: the greedy caption's reward instead
    lr: PositiveRate = 5e-6  # about 1/10 of cross-entropy's
    epochs: Positive = 5
    batch_size: Positive = 8  # images per batch (times `samples` captions)
    max_new_tokens: Annotated[int, Field(ge=1, le=512)] = 30


@CHECKED
@dataclass
class Config:
    """Everything one run needs."""

    profile: str = "mini"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    scst: ScstConfig = field(default_factory=ScstConfig)


SECTIONS = ("data", "model", "lora", "train", "eval", "scst")

PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    # Departures from the dataclass defaults. `uitviic-blip`, the real recipe: LoRA on the decoder's
    # self-attention, new token rows at 10x the LoRA rate, warmup + cosine, label smoothing, early
    # stopping on validation CIDEr. `mini` scales it down: a tiny base built here, synthetic data,
    # larger steps (a tiny model from scratch wants them), batch 32 x 1, 12 epochs, short captions.
    "mini": {
        "model": {"max_length": 32},
        "train": {"epochs": 12, "batch_size": 32, "lr": 2e-3, "embedding_lr": 2e-2},
        "eval": {"batch_size": 64},
        "scst": {"lr": 2e-4, "epochs": 3, "batch_size": 16, "max_new_tokens": 20},
    },
    "uitviic-blip": {
        "data": {"source": "coco"},
        "model": {"base": "Salesforce/blip-image-captioning-base"},
        "lora": {"r": 16, "alpha": 32, "dropout": 0.05},
        "train": {"epochs": 30, "batch_size": 8, "grad_accum": 2, "lr": 5e-5,
                  "embedding_lr": 5e-4, "label_smoothing": 0.05, "patience": 3},
        "eval": {"max_new_tokens": 40, "batch_size": 32},
        "scst": {"lr": 5e-6, "epochs": 5, "max_new_tokens": 40},
    },
    "flickr8k-blip2": {
        "data": {"source": "flickr8k", "lang": "en"},
        "model": {"family": "blip2", "base": "Salesforce/blip2-opt-2.7b", "load_in_8bit": True,
                  "extend_vocab": False},
        "lora": {"r": 8, "alpha": 16, "train_new_embeddings": False},
        "train": {"epochs": 5, "batch_size": 4, "grad_accum": 4, "lr": 1e-4,
                  "label_smoothing": 0.0, "patience": 2},
        "eval": {"batch_size": 8},
        "scst": {"lr": 1e-5, "epochs": 3, "batch_size": 4},
    },
}


ADAPTER = cache(lambda: TypeAdapter(Config))  # built at first use: importing stays quick
TYPE_NAMES = {"int": "int", "float": "float", "bool": "bool", "string": "str"}
BOUNDS = {"greater_than_equal": "at least", "greater_than": "greater than",
          "less_than_equal": "at most", "less_than": "less than"}


def describe_error(error: dict[str, Any]) -> str:
    """pydantic's error as one line naming the key, the value and what is allowed."""
    loc, kind, value = error["loc"], error["type"], error["input"]
    key, ctx = ".".join(map(str, loc)), error.get("ctx", {})
    if kind == "unexpected_keyword_argument" and len(loc) == 1:
        return f"unknown section {key!r}; valid: {', '.join(SECTIONS)}"
    if kind == "unexpected_keyword_argument":
        valid = (f"{loc[0]}.{f.name}" for f in fields(getattr(Config(), loc[0])))
        return f"unknown key {key}; valid keys: {', '.join(valid)}"
    if kind == "dataclass_type":
        return f"section {key!r} must be an object"
    if kind == "literal_error":
        choices = ctx["expected"].replace("'", "").replace(" or ", ", ")  # "'a', 'b' or 'c'"
        return f"{key}={value!r} is not one of {choices}"
    if kind in BOUNDS:
        bound = next(iter(ctx.values()))
        bound = f"{bound:g}" if isinstance(bound, float) else bound
        return f"{key}={value} is out of range (must be {BOUNDS[kind]} {bound})"
    if kind == "finite_number":
        return f"{key}={value} is out of range (must be a finite number)"
    if kind.split("_")[0] in TYPE_NAMES:
        return f"{key}: expected {TYPE_NAMES[kind.split('_')[0]]}, got {value!r}"
    return f"{key}: {error['msg']}"


def config_from_dict(values: Any, where: str = "config",
                     overrides: dict[str, dict[str, str]] | None = None,
                     strict: bool = False) -> Config:
    """A checked Config from `{section: {key: value}}`; an error names `where` ("--set" for the
    keys in `overrides`). `strict` (a file): JSON types as written (`true` is no 1)."""
    if not isinstance(values, dict):
        raise VicapError(f"{where}: a config must be a JSON object")
    try:
        if strict:
            return ADAPTER().validate_json(json.dumps(values), strict=True)
        return ADAPTER().validate_python(values)
    except ValidationError as exc:
        error, sets = exc.errors()[0], overrides or {}
        loc = error["loc"]
        if loc[0] in sets and (len(loc) == 1 or loc[1] in sets[loc[0]]):
            where = "--set"
        raise VicapError(f"{where}: {describe_error(error)}") from None


def merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`base` with `extra`'s values laid over it, section by section."""
    out = dict(base)  # a section laid over is a new dict: `base` is never changed
    for name, value in extra.items():
        both = isinstance(value, dict) and isinstance(out.get(name), dict)
        out[name] = {**out[name], **value} if both else value
    return out


def parse_overrides(items: list[str]) -> dict[str, dict[str, str]]:
    """Turn ["train.lr=1e-4", …] into {"train": {"lr": "1e-4"}}, rejecting malformed items."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise VicapError(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. train.lr=1e-4")
        out.setdefault(section, {})[name] = value.strip()
    return out


def profile_config(name: str) -> Config:
    """The named profile's config (`auto`: the one this machine's data and GPU call for)."""
    from_env = name == "auto" and os.environ.get("VICAP_PROFILE", "auto") != "auto"
    name = auto_profile() if name == "auto" else name
    if not isinstance(name, str) or name not in PROFILES:
        named = "VICAP_PROFILE=" if from_env else "profile "
        raise VicapError(f"unknown {named}{name!r}; valid: auto, {', '.join(PROFILES)}")
    return config_from_dict({**PROFILES[name], "profile": name}, f"profile {name}")


def load_config(
    profile: str | None = None, config_file: str | None = None, overrides: list[str] | None = None
) -> Config:
    """Resolve a profile or a config JSON file, then apply `--set` overrides."""
    if config_file:
        raw = read_json(config_file, "config file")
        if not isinstance(raw, dict):
            raise VicapError(f"{config_file}: a config must be a JSON object")
        start = profile_config(raw["profile"]) if "profile" in raw else Config()
        values, where = merged(asdict(start), raw), str(config_file)
        config_from_dict(values, where, strict=True)
    else:
        start = profile_config(profile or "auto")
        values, where = asdict(start), f"profile {start.profile}"
    sets = parse_overrides(overrides or [])
    return config_from_dict(merged(values, sets), where, sets)


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write the resolved config as JSON, atomically."""
    return atomic_write_text(path, json.dumps(asdict(cfg), ensure_ascii=False, indent=2) + "\n")


def diff_keys(a: Config, b: Config, keys: list[str]) -> list[str]:
    """The dotted keys of `keys` (e.g. "train.lr") whose values differ between `a` and `b`."""
    return [k for k in keys if attrgetter(k)(a) != attrgetter(k)(b)]
