"""Adapter folders (a run's `best/` and `final/`: peft adapter, processor, `vicap.json` with the
run's config, enough to rebuild the captioner) and what `--model` names: one, or a base model."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from vicap_utils.captioner import Captioner, extend_vocabulary, family_of, load_base, place
from vicap_utils.config import EvalConfig, ModelConfig, config_from_dict
from vicap_utils.ops.io import VicapError, atomic_dir, atomic_write_json, read_json, reading_as
from vicap_utils.ops.weights import model_type

META_FILE = "vicap.json"
WEIGHTS_FILE = "adapter_model.safetensors"
USE_A_RUN = "use a run's best/ or final/ folder"


def write_adapter(cap: Captioner, folder: str | Path, config: dict[str, Any],
                  vocab_entries: list[str], extra: dict[str, Any] | None = None) -> None:
    """Write the adapter, the processor and vicap.json as `folder` in one atomic step."""
    with atomic_dir(folder) as tmp:
        cap.model.save_pretrained(tmp, safe_serialization=True)
        cap.processor.save_pretrained(tmp)
        atomic_write_json(tmp / META_FILE, {
            "family": cap.family, "base": config["model"]["base"],
            "vocab_entries": vocab_entries, "config": config, **(extra or {})})


def is_adapter(folder: str | Path) -> bool:
    """True for a folder that holds vicap.json and the adapter weights."""
    return (Path(folder) / META_FILE).is_file() and (Path(folder) / WEIGHTS_FILE).is_file()


@dataclass
class ModelRef:
    """What `--model` names, resolved once: an adapter folder, or a base model alone."""
    spec: str  # as the user gave it
    model: ModelConfig  # the base to load
    adapter: Path | None = None  # None: the base alone
    eval: EvalConfig = field(default_factory=EvalConfig)  # decoding saved with the adapter
    vocab_entries: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        """"adapter DIR" or "base NAME", for messages and menus."""
        return f"adapter {self.adapter}" if self.adapter else f"base {self.model.base}"


def model_ref(spec: str, no_adapter: bool = False) -> ModelRef:
    """Resolve `--model`: an adapter folder (its base alone with `no_adapter`), or a base."""
    path = Path(spec)
    if (path / META_FILE).is_file():
        meta = read_json(path / META_FILE, "adapter metadata")
        if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
            raise VicapError(f"{path / META_FILE}: not vicap adapter metadata (no config); "
                             f"{USE_A_RUN}")
        cfg = config_from_dict(meta["config"], str(path / META_FILE))
        if no_adapter:
            return ModelRef(spec, cfg.model, None, cfg.eval)
        if not (path / WEIGHTS_FILE).is_file():
            raise VicapError(f"{path}: {WEIGHTS_FILE} missing (only safetensors adapters are "
                             f"loaded); {USE_A_RUN}")
        entries = meta.get("vocab_entries", [])
        if not (isinstance(entries, list) and all(isinstance(e, str) for e in entries)):
            raise VicapError(f"{path / META_FILE}: 'vocab_entries' must be a list of text; "
                             f"{USE_A_RUN}")
        with reading_as(path / WEIGHTS_FILE, "damaged adapter weights",
                        f"{USE_A_RUN}, or train again") as file, safe_open(str(file), "pt") as w:
            w.keys()  # weights empty, cut short or not safetensors: refused before loading
        return ModelRef(spec, cfg.model, path, cfg.eval, entries)
    if path.is_dir() and not (path / "config.json").is_file():
        raise VicapError(f"{path}: neither an adapter folder (no {META_FILE}) nor a saved model "
                         f"(no config.json); {USE_A_RUN}")
    return ModelRef(spec, ModelConfig(base=spec, family=family_of(model_type(spec))))


def load_model(spec: str | ModelRef, no_adapter: bool = False) -> Captioner:
    """The captioner `--model spec [--no-adapter]` (or a ModelRef resolved before) names, on the
    GPU if any, in eval mode."""
    ref = spec if isinstance(spec, ModelRef) else model_ref(spec, no_adapter)
    cap = load_base(ref.model)
    if ref.adapter is not None:
        from peft import PeftModel  # slow to import; only an adapter needs it

        extend_vocabulary(cap, entries=ref.vocab_entries)
        with reading_as(ref.adapter, f"cannot load the adapter onto its base {ref.model.base!r}",
                        "use the base it was trained on, or train again"):
            cap.model = PeftModel.from_pretrained(cap.model, str(ref.adapter))
    place(cap, "cuda" if torch.cuda.is_available() else "cpu")
    cap.model.eval()
    return cap
