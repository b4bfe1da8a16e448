"""Base models (hub id, local folder, Kaggle input, or the mini tiny BLIP), LoRA, 8-bit.

Families: `blip` (BlipForConditionalGeneration, BERT WordPiece tokenizer extended for
Vietnamese) and `blip2` (Blip2ForConditionalGeneration with OPT, 8-bit where it can).
An adapter folder holds the peft adapter, the tokenizer/processor and `vicap.json`, so
`load_for_inference` can rebuild the exact model from it alone.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vicap_utils.config import LoraSettings, ModelConfig
from vicap_utils.io import VicapError, atomic_write_json, read_json

META_FILE = "vicap.json"

# Decoder self-attention (the paper's placement); cross-attention only when asked.
BLIP_SELF_ATTN = r".*text_decoder\.bert\.encoder\.layer\.\d+\.attention\.self\.(query|key|value)"
BLIP_CROSS_ATTN = (
    r".*text_decoder\.bert\.encoder\.layer\.\d+\.crossattention\.self\.(query|key|value)"
)
BLIP2_DEFAULT = (r".*(qformer\.encoder\.layer\.\d+\.(attention|crossattention)\.attention\."
                 r"(query|value)|language_model\..*\.(q_proj|v_proj))")


@dataclass
class LoadedModel:
    """A model ready for training or generation, with its processor and provenance."""

    model: Any
    processor: Any
    family: str
    base: str  # what was loaded: hub id or folder
    stock_tokenizer: Any = None  # BLIP-1: the tokenizer before Vietnamese extension
    first_new_id: int = 0  # BLIP-1: id of the first added vocabulary entry (0 = none)

    @property
    def tokenizer(self):
        """The processor's tokenizer."""
        return self.processor.tokenizer


def resolve_base(base: str) -> str:
    """Turn `model.base` into something from_pretrained can load: the mini cache, a folder,
    a Kaggle input folder holding that model, or the hub id as given."""
    if base == "mini":
        from vicap_utils.mini import ensure_mini_base

        return str(ensure_mini_base())
    path = Path(base).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise VicapError(f"{path}: no config.json; expected a saved model folder")
        return str(path)
    from vicap_utils.env import find_inputs

    tail = base.rstrip("/").split("/")[-1]
    for cfg in find_inputs([f"**/{tail}/config.json", f"**/{tail}/**/config.json"]):
        return str(cfg.parent)
    cached = _hub_cache(base)
    if cached:
        return cached
    if not _hub_reachable():
        raise VicapError(
            f"model {base!r}: not a local folder, not under /kaggle/input, not in the Hugging "
            "Face cache, and the hub is unreachable; attach it as a Kaggle input or set "
            "model.base=/path/to/saved/model")
    return base


def _hub_cache(repo_id: str) -> str | None:
    """The locally cached snapshot of a hub model, if a previous run downloaded it."""
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo_id, local_files_only=True)
    except Exception:  # noqa: BLE001 - any failure just means "not cached"
        return None


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub's host resolves and accepts a connection (fails fast offline)."""
    import os
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _classes(family: str):
    from transformers import (
        Blip2ForConditionalGeneration,
        Blip2Processor,
        BlipForConditionalGeneration,
        BlipProcessor,
    )

    if family == "blip":
        return BlipForConditionalGeneration, BlipProcessor
    if family == "blip2":
        return Blip2ForConditionalGeneration, Blip2Processor
    raise VicapError(f"model.family {family!r}: expected blip or blip2")


def quantization_notice(cfg: ModelConfig) -> tuple[bool, str]:
    """Whether 8-bit loading is possible here, and the one-line notice when it is not."""
    if not cfg.load_in_8bit:
        return False, ""
    from vicap_utils.env import gpu_info

    gpu = gpu_info()
    if not gpu.count:
        return False, "8-bit needs a CUDA GPU; loading in fp32 on the CPU instead."
    if not gpu.int8:
        cap = ".".join(map(str, gpu.capability))
        return False, (f"8-bit needs compute capability >= 7.5 ({gpu.name} is {cap}); "
                       "loading in fp16 instead.")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return False, "bitsandbytes is not installed (pip install bitsandbytes); loading in fp16."
    return True, ""


def load_base(cfg: ModelConfig, device_index: int | None = None) -> LoadedModel:
    """Load the base model and processor named by `cfg.base`, with one clear error offline.

    `device_index` pins an 8-bit model to one GPU (one device per process under DDP,
    never `device_map="auto"`).
    """
    model_cls, proc_cls = _classes(cfg.family)
    source = resolve_base(cfg.base)
    kwargs: dict[str, Any] = {}
    use_8bit, notice = quantization_notice(cfg)
    if notice:
        print(f"notice: {notice}")
    if use_8bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_8bit=True, llm_int8_skip_modules=["vision_model", "qformer", "lm_head"]
        )
        kwargs["device_map"] = {"": device_index or 0}
        kwargs["dtype"] = torch.float16
    elif cfg.family == "blip2" and torch.cuda.is_available():
        kwargs["dtype"] = torch.float16
    try:
        processor = proc_cls.from_pretrained(source)
        model = model_cls.from_pretrained(source, **kwargs)
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise VicapError(
            f"cannot load model {cfg.base!r} ({first}); without internet, attach it as a "
            "Kaggle input or set model.base=/path/to/saved/model"
        ) from None
    if cfg.family == "blip2" and cfg.vision_fp32:
        model.vision_model.float()
    if use_8bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.gradient_checkpointing
        )
    elif cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return LoadedModel(model=model, processor=processor, family=cfg.family, base=source)


def extend_vocabulary(loaded: LoadedModel, captions: list[str] | None = None,
                      entries: list[str] | None = None) -> list[str]:
    """BLIP-1: extend the tokenizer for Vietnamese and grow/initialise the embeddings.

    Give the training `captions` to find the entries, or the `entries` a checkpoint saved.
    """
    from vicap_utils import vocab

    if loaded.family != "blip":
        return []
    stock = loaded.processor.tokenizer
    if entries is None:
        entries = vocab.extension_entries(stock, captions or [])
    extended = vocab.build_extended_tokenizer(stock, entries)
    first_new = len(stock)
    vocab.init_new_rows(loaded.model, stock, extended, first_new)
    loaded.processor.tokenizer = extended
    loaded.stock_tokenizer = stock
    loaded.first_new_id = first_new if entries else 0
    return entries


def lora_targets(family: str, lora: LoraSettings) -> str | list[str]:
    """The LoRA target modules: the family default, a regex, or a comma-separated list."""
    spec = lora.target_modules.strip()
    if spec and spec != "default":
        return spec if any(c in spec for c in "\\.*()|[]") else [s.strip() for s in spec.split(",")]
    if family == "blip":
        if lora.cross_attention:
            return f"({BLIP_SELF_ATTN}|{BLIP_CROSS_ATTN})"
        return BLIP_SELF_ATTN
    return BLIP2_DEFAULT


def add_lora(loaded: LoadedModel, lora: LoraSettings) -> Any:
    """Wrap the model with a LoRA adapter (task_type unset: it breaks BLIP's forward)."""
    from peft import LoraConfig, get_peft_model

    targets = lora_targets(loaded.family, lora)
    names = [n for n, _ in loaded.model.named_modules()]
    matched = [n for n in names if (re.fullmatch(targets, n) if isinstance(targets, str)
                                    else n.split(".")[-1] in targets)]
    if not matched:
        raise VicapError(f"lora.target_modules {targets!r} matches no module of the model")
    token_ids = None
    if lora.train_new_embeddings and loaded.first_new_id:
        emb_name = _input_embedding_name(loaded.model)
        token_ids = {emb_name: list(range(loaded.first_new_id, len(loaded.tokenizer)))}
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        trainable_token_indices=token_ids,
    )
    for p in loaded.model.parameters():
        p.requires_grad_(False)
    loaded.model = get_peft_model(loaded.model, config)
    for p in loaded.model.parameters():
        if p.requires_grad and p.dtype in (torch.float16, torch.bfloat16):
            p.data = p.data.float()  # the optimizer and GradScaler need fp32 master weights
    return loaded.model


def _input_embedding_name(model) -> str:
    emb = model.get_input_embeddings()
    for name, module in model.named_modules():
        if module is emb:
            return name.split(".")[-1]
    raise VicapError("could not find the input embedding module")


def trainable_table(model) -> list[dict[str, Any]]:
    """Trainable vs total parameters per top-level part, plus the total, for display."""
    rows: dict[str, list[int]] = {}
    for name, param in model.named_parameters():
        parts = name.split(".")
        key = next((p for p in parts if p in (
            "vision_model", "text_decoder", "qformer", "language_model", "language_projection",
            "query_tokens")), parts[0])
        row = rows.setdefault(key, [0, 0])
        row[1] += param.numel()
        if param.requires_grad:
            row[0] += param.numel()
    table = [{"part": k, "trainable": t, "total": n, "share_%": round(100 * t / max(n, 1), 3)}
             for k, (t, n) in rows.items()]
    trainable = sum(r["trainable"] for r in table)
    total = sum(r["total"] for r in table)
    table.append({"part": "all", "trainable": trainable, "total": total,
                  "share_%": round(100 * trainable / max(total, 1), 3)})
    return table


def print_trainable(model) -> None:
    """One line: trainable parameters and their share."""
    row = trainable_table(model)[-1]
    print(f"trainable parameters: {row['trainable']:,} of {row['total']:,} "
          f"({row['share_%']:.3f} %)")


def save_adapter(loaded: LoadedModel, out_dir: str | Path, config_dict: dict, entries: list[str],
                 extra: dict | None = None) -> Path:
    """Write the adapter (safetensors), processor/tokenizer and vicap.json into `out_dir`."""
    out_dir = Path(out_dir)
    model = loaded.model
    model.save_pretrained(out_dir, safe_serialization=True)
    loaded.processor.save_pretrained(out_dir)
    meta = {
        "family": loaded.family,
        "base": config_dict["model"]["base"],
        "vocab_entries": entries,
        "config": config_dict,
        **(extra or {}),
    }
    atomic_write_json(out_dir / META_FILE, meta)
    return out_dir


def read_meta(model_dir: str | Path) -> dict:
    """The vicap.json of an adapter folder, or a clear error if this is not one."""
    path = Path(model_dir) / META_FILE
    if not path.is_file():
        raise VicapError(f"{model_dir}: not an adapter folder (no {META_FILE}); "
                         "use a run's best/ or final/, or --no-adapter with a base model")
    return read_json(path, "adapter metadata")


def load_for_inference(model_dir: str, no_adapter: bool = False,
                       device: str | None = None) -> LoadedModel:
    """Load an adapter folder (base + vocabulary + LoRA), or with `no_adapter` its base alone.

    `model_dir` may also be a base (hub id, folder, "mini") when `no_adapter` is set.
    Adapters are read from safetensors only.
    """
    from vicap_utils.config import config_from_dict

    is_adapter = (Path(model_dir) / META_FILE).is_file()
    if is_adapter or not no_adapter:
        meta = read_meta(model_dir)  # a clear error when an adapter was expected
        model_cfg = config_from_dict(meta["config"], f"{model_dir}/{META_FILE}").model
    else:
        meta = {}
        model_cfg = ModelConfig(base=model_dir, family=_guess_family(model_dir))
    loaded = load_base(model_cfg)
    if is_adapter and not no_adapter:
        if not (Path(model_dir) / "adapter_model.safetensors").is_file():
            raise VicapError(f"{model_dir}: adapter_model.safetensors missing "
                             "(only safetensors adapters are loaded)")
        from peft import PeftModel

        extend_vocabulary(loaded, entries=meta.get("vocab_entries", []))
        loaded.model = PeftModel.from_pretrained(loaded.model, model_dir)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    loaded.model.to(device)
    loaded.model.eval()
    return loaded


def _guess_family(base: str) -> str:
    if base == "mini":
        return "blip"
    path = Path(resolve_base(base)) / "config.json"
    if path.is_file():
        model_type = read_json(path, "model config").get("model_type", "")
        return "blip2" if "blip-2" in model_type else "blip"
    return "blip2" if "blip2" in base.lower() else "blip"
