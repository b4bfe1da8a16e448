"""Helpers the notebooks share: set-up, a profile's folders, tokenizers (02, 03), evaluation."""

import gc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from IPython import get_ipython

from vicap_utils.config import Config, load_config
from vicap_utils.data import CaptionSet, load_captions
from vicap_utils.families import EXTENDS_VOCABULARY
from vicap_utils.metrics import evaluate_detailed
from vicap_utils.ops.adapters import is_adapter, model_ref
from vicap_utils.ops.checkpoint import run_references
from vicap_utils.ops.env import is_kaggle, kaggle_input, output_dir, print_environment
from vicap_utils.ops.handover import bring_back, find_trained
from vicap_utils.ops.hardware import torch_threads
from vicap_utils.ops.io import VicapError, atomic_write_json, atomic_write_text, read_json
from vicap_utils.ops.weights import resolve_base
from vicap_utils.predict import predict_file
from vicap_utils.vocab import extend_tokenizer, stock_blip_tokenizer

ZERO_SHOT = "zero-shot"
FINE_TUNED = "fine-tuned"
SYSTEMS = {ZERO_SHOT: "zero_shot", FINE_TUNED: "fine_tuned"}  # label → file-name slug


def setup(profile: str = "auto", overrides: list[str] | None = None) -> tuple[Config, Path]:
    """Resolve the profile's config (data in <output dir>/data/<profile>), print the set-up and
    return (cfg, run folder); vicap errors show as one line from here."""
    shell = get_ipython()
    if shell is not None:  # a VicapError shows as its one line; the cell still fails
        shell.set_custom_exc((VicapError,), _show_one_line)
    cfg = load_config(profile, overrides=overrides)
    if not cfg.data.prepared:
        cfg.data.prepared = str(output_dir(f"data/{cfg.profile}"))
    print_environment()
    print(f"{'torch threads':>13}: {torch_threads()}")
    folder = run_dir(cfg.profile)
    print(f"{'profile':>13}: {cfg.profile}\n{'data folder':>13}: {cfg.data.prepared}\n"
          f"{'run folder':>13}: {folder}\n{'errors':>13}: vicap's own errors print as one line")
    return cfg, folder


def _show_one_line(shell: Any, etype: type, value: BaseException, tb: Any,
                   tb_offset: int | None = None) -> list[str]:
    """IPython custom-exception handler: the error's message as the only line."""
    stb = [f"{etype.__name__}: {value}"]
    shell._showtraceback(etype, value, stb)  # what showtraceback does, with our one line
    return stb


def run_dir(profile: str) -> Path:
    """The run folder of a profile: <output dir>/runs/<profile> (created)."""
    return output_dir(f"runs/{profile}")


def wrote(paths: list[str | Path]) -> None:
    """Print each output path with its size (closing cell); fail if one is missing."""
    out = [Path(p) for p in paths]
    missing = [str(p) for p in out if not p.exists()]
    if missing:
        raise VicapError(f"expected outputs missing: {', '.join(missing)}")
    for path in out:
        files = [f for f in path.rglob("*") if f.is_file()] if path.is_dir() else [path]
        print(f"{_human(sum(f.stat().st_size for f in files)):>9}  {path}")


def release(namespace: dict[str, Any], *names: str) -> list[str]:
    """Delete `names` from a notebook's namespace and free what they held (a hand-built model
    must not sit beside the next one); print the GPU memory freed."""
    before = torch.cuda.memory_allocated() if torch.cuda.is_initialized() else 0
    gone = [name for name in names if name in namespace]
    for name in gone:
        del namespace[name]
    after = free_memory()
    gpu = "no GPU memory held" if after is None else \
        f"GPU memory in use {_human(before)} → {_human(after)}"
    print(f"released {', '.join(gone) or 'nothing'}; {gpu}")
    return gone


def free_memory() -> int | None:
    """Collect garbage (a cycle can hold a model), empty the CUDA cache; GPU bytes still used."""
    gc.collect()
    if not torch.cuda.is_initialized():
        return None
    torch.cuda.empty_cache()
    return torch.cuda.memory_allocated()


def _human(size: int) -> str:
    """A byte count in binary units: B/KiB/MiB/GiB."""
    power = min((size.bit_length() - 1) // 10, 3)
    return f"{size} B" if power < 1 else f"{size / 1024**power:.1f} {'KMG'[power - 1]}iB"


# ---------------------------------------------------------------- notebooks 02 and 03
def tokenizer_variants(captions: list[str]) -> dict[str, Any]:
    """BLIP-1's stock tokenizer, the same keeping accents, and the one extended for `captions`."""
    stock = stock_blip_tokenizer()
    extended, entries = extend_tokenizer(stock, captions)
    print(f"extended vocabulary: {len(stock)} + {len(entries)} entries")
    return {"stock (strips accents)": stock,
            "stock, strip_accents=False": stock_blip_tokenizer(strip_accents=False),
            "extended": extended}


def base_tokenizer(cfg: Config):
    """The base model's own tokenizer, before any Vietnamese extension (processor only)."""
    from transformers import AutoProcessor  # transformers: slow to import, as in captioner

    return AutoProcessor.from_pretrained(resolve_base(cfg.model.base)).tokenizer


def model_tokenizer(cfg: Config, variants: dict[str, Any]):
    """The tokenizer the profile trains with: BLIP-1 extended (or stock), BLIP-2 its own."""
    if cfg.model.family in EXTENDS_VOCABULARY:
        return variants["extended" if cfg.model.extend_vocab else "stock (strips accents)"]
    try:
        return base_tokenizer(cfg)
    except (OSError, ValueError, VicapError) as exc:
        print(f"notice: {cfg.model.base} tokenizer unavailable ({exc}); counting stock BLIP "
              "tokens instead")
        return variants["stock (strips accents)"]


# ---------------------------------------------------------------- notebooks 04 and 05
@dataclass
class RunEval:
    """Predictions and scores of the zero-shot base and the fine-tuned adapter of one run."""

    val: CaptionSet
    images: Path
    predictions: dict[str, dict[Any, str]]
    metrics: dict[str, dict[str, Any]]
    per_image: dict[str, pd.DataFrame]
    files: list[Path] = field(default_factory=list)

    def cider(self, label: str) -> dict[Any, float]:
        """{image_id: per-image CIDEr} of one system."""
        frame = self.per_image[label]
        return dict(zip(frame["image_id"], frame["cider"]))


def eval_inputs(run: Path, split: str = "val") -> tuple[Path, Path]:
    """(captions file, images folder) of the run's `split`. A run without an adapter first copies
    in the newest attached one (not its checkpoint or cache), so evaluations are written here."""
    best = run / "best"
    if not is_adapter(best):
        found = find_trained(run.name)
        if found is None:
            slug = f"vicap-{run.name.split('-')[0]}-03-finetune-lora"
            raise VicapError(f"{best}: no fine-tuned adapter; " + (
                f"attach <owner>/{slug} as input (Add Input → Your Work: notebook 03's output, "
                f"mounted under {kaggle_input()}), or run notebook 03_finetune_lora first"
                if is_kaggle() else "run notebook 03_finetune_lora first"))
        bring_back(found, run, what="trained", skip=("cache", "last", ".last.old"))
    return run_references(run, split)


def score_scst(run: Path, split: str = "val") -> tuple[dict, list[Path]] | None:
    """Notebook 03b's adapter (`<run>-scst/best`, else the newest attached one) scored as the
    fine-tuned one is, into `*_scst.*` beside its files: (metrics, files), or None without one."""
    here = run.parent / f"{run.name}-scst"
    found = here if is_adapter(here / "best") else find_trained(run.name, scst=True)
    if found is None:
        return None
    val_file, images = run_references(run, split)
    files = _system_files(run / ("eval" if split == "val" else f"eval-{split}"), "scst")
    _score_system(found / "best", run, val_file, images, False, files)
    return read_json(files["metrics"]), list(files.values())


def evaluate_run(run: Path, reuse: bool = False, split: str = "val") -> RunEval:
    """Caption and score the run's `split` with the base alone and with the adapter, written
    under run/eval/ (run/eval-test/); with `reuse`, results newer than the adapter are read."""
    val_file, images = eval_inputs(run, split)
    out = run / ("eval" if split == "val" else f"eval-{split}")
    result = RunEval(load_captions(val_file), images, {}, {}, {})
    for label, slug in SYSTEMS.items():
        files = _system_files(out, slug)
        if not (reuse and _fresh(list(files.values()), run / "best")):
            _score_system(run / "best", run, val_file, images, label == ZERO_SHOT, files)
        result.predictions[label] = {p["image_id"]: p["caption"]
                                     for p in read_json(files["predictions"])}
        result.metrics[label] = read_json(files["metrics"])
        result.per_image[label] = pd.read_csv(files["per_image"])
        result.files += list(files.values())
    result.files += _write_combined(result, out)
    return result


def _system_files(out: Path, slug: str) -> dict[str, Path]:
    """One system's predictions, metrics and per-image CIDEr files in `out`."""
    return {kind: out / f"{kind}_{slug}.{ext}" for kind, ext in
            (("predictions", "json"), ("metrics", "json"), ("per_image", "csv"))}


def _score_system(adapter: Path, run: Path, val_file: Path, images: Path, no_adapter: bool,
                  files: dict[str, Path]) -> None:
    """Predict with one system (`adapter`, or its base alone) and evaluate against the run's
    references, with the run's training captions for the novelty rate."""
    predictions = predict_file(model_ref(str(adapter), no_adapter), val_file, images,
                               files["predictions"])
    free_memory()  # the model predict_file loaded, before the next system's is loaded
    metrics, per_image = evaluate_detailed(predictions, str(val_file),
                                           train_captions=str(run / "data" / "train.json"))
    atomic_write_json(files["metrics"], metrics)
    atomic_write_text(files["per_image"], per_image.to_csv(index=False))


def _write_combined(result: RunEval, out: Path) -> list[Path]:
    """metrics.json (every system) and predictions.csv (one row per image, all captions)."""
    refs = result.val.captions_by_image()
    cider = {label: {str(k): v for k, v in result.cider(label).items()} for label in SYSTEMS}
    rows = []
    for image_id, info in result.val.images.items():
        row = {"image_id": image_id, "file_name": info.file_name,
               "references": " | ".join(refs[image_id])}
        for label, slug in SYSTEMS.items():
            row[slug] = result.predictions[label].get(image_id, "")
            row[f"cider_{slug}"] = cider[label].get(str(image_id))
        rows.append(row)
    csv_path = atomic_write_text(out / "predictions.csv", pd.DataFrame(rows).to_csv(index=False))
    return [atomic_write_json(out / "metrics.json", result.metrics), csv_path]


def _fresh(paths: list[Path], than: Path) -> bool:
    """True when every path exists and is newer than `than` (the adapter folder) and its files."""
    if not all(p.is_file() for p in paths):
        return False
    newest_input = max(f.stat().st_mtime for f in [than, *than.rglob("*")])
    return min(p.stat().st_mtime for p in paths) >= newest_input
