"""A training run's parts, one builder each: data, captioner (Vietnamese vocabulary, LoRA),
examples, loader, optimiser; `Trainer()` and notebook 03 call them in this order."""

import os
import random
import shutil
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from vicap_utils import captioner, dataset
from vicap_utils.captioner import Captioner
from vicap_utils.config import Config
from vicap_utils.dataset import CaptionPairs, EpochSampler, collate, image_pixels
from vicap_utils.families import EXTENDS_VOCABULARY
from vicap_utils.ops.features import encode_images
from vicap_utils.ops.folders import output_folder, staged
from vicap_utils.ops.io import atomic_write_json
from vicap_utils.prepare import PreparedData, prepare
from vicap_utils.vocab import encode_captions, tokenizer_report


def build_data(cfg: Config, run: Path, log=print) -> PreparedData:
    """The audited, split data (in `data.prepared`, default RUN/data/), its splits recorded in
    RUN/data/ where evaluation finds its references."""
    folder = Path(cfg.data.prepared) if cfg.data.prepared else run / "data"
    data = prepare(cfg, folder, log=log)
    same = folder.resolve() == (run / "data").resolve()
    copies = [] if same else [n for n in ("train.json", "val.json", "test.json")
                              if (folder / n).is_file()]
    with output_folder(run / "data", "data", [*copies, "sources.json"]) as record, \
            staged(record) as tmp:
        for name in copies:
            shutil.copyfile(folder / name, tmp / name)
        atomic_write_json(tmp / "sources.json", {
            "prepared": str(folder), "fingerprint": data.fingerprint,
            "train_images": str(data.train_images), "val_images": str(data.val_images),
            "test_images": str(data.test_images) if data.test is not None else None,
            "n_train_images": len(data.train.images), "n_val_images": len(data.val.images)})
    return data


def build_captioner(cfg: Config, data: PreparedData, vocab_entries: list[str] | None = None,
                    load_in_8bit: bool | None = None, device_index: int | None = None, log=print
                    ) -> tuple[Captioner, list[str], dict[str, Any]]:
    """The base with LoRA and (BLIP-1) the Vietnamese vocabulary: a checkpoint's entries or the
    training captions'; returns it, the entries added and a tokenizer report."""
    cap = captioner.load_base(cfg.model, load_in_8bit, device_index, log)
    report: dict[str, Any] = {}
    entries: list[str] = []
    if cfg.model.extend_vocab and cap.family in EXTENDS_VOCABULARY:
        captions = [a.caption for a in data.train.annotations]
        before = tokenizer_report(cap.tokenizer, captions)
        entries = captioner.extend_vocabulary(cap, captions, vocab_entries)
        after = tokenizer_report(cap.tokenizer, captions)
        report = {"added_entries": len(entries), "before": before, "after": after}
        log(f"vocabulary: +{len(entries)} entries; caption round-trip "
            f"{before['roundtrip_rate']:.1%} → {after['roundtrip_rate']:.1%}, tokens/caption "
            f"{before['tokens_per_caption']:.1f} → {after['tokens_per_caption']:.1f}")
    captioner.add_lora(cap, captioner.lora_config(cap, cfg.lora))
    row = captioner.trainable_table(cap.model)[-1]
    log(f"trainable parameters: {row['trainable']:,} of {row['total']:,} ({row['share_%']:.3f} %)")
    return cap, entries, report


@dataclass
class Examples:
    """Training and validation pairs, and how validation finds each image's source."""

    train: CaptionPairs
    val: CaptionPairs
    val_ids: list  # validation image ids in row order
    val_source: Any  # row → pixels or cached features
    cached: bool  # vision features cached (the ViT frozen)
    val_sample: list[int] = field(default_factory=list)  # rows decoded each epoch ([] = all)

    @property
    def image_kind(self) -> str:
        """The `captioner.caption` keyword the image tensors go under."""
        return "features" if self.cached else "pixels"

    def val_images(self, batch_size: int, sample: bool = False):
        """(image ids, stacked pixels or features) of the validation images (or the sample)."""
        rows = self.val_sample if sample and self.val_sample else range(len(self.val_ids))
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            yield [self.val_ids[r] for r in chunk], torch.stack([self.val_source(r) for r in chunk])


def val_sample(n: int, size: int, seed: int) -> list[int]:
    """A fixed, seeded sample of `size` validation rows (sorted), or [] for all of them."""
    if not size or size >= n:
        return []
    return sorted(random.Random(seed).sample(range(n), size))


def build_examples(cfg: Config, cap: Captioner, data: PreparedData, show: bool = True,
                   log=print, cache_folder: Path | None = None) -> Examples:
    """Tokenise every caption once and pair it with its image: fp16 vision features computed
    once (under `cache_folder` beyond RAM) when the ViT is frozen, else pixels on demand."""
    cached = cfg.train.cache_vision_features and not any(
        p.requires_grad for n, p in cap.model.named_parameters() if "vision_model" in n)
    log("vision features: " + ("cached once in fp16 (the vision encoder is frozen)" if cached
                               else "computed at every step"))
    prefix = captioner.image_prefix(cap)
    sets = []
    for name, cs, folder in (("train", data.train, data.train_images),
                             ("val", data.val, data.val_images)):
        ids, rows = dataset.image_rows(cs)
        paths = [folder / cs.images[i].file_name for i in ids]
        source = (encode_images(cap, paths, cache_folder, name, show=show, log=log).__getitem__
                  if cached else partial(image_pixels, paths, cap.processor.image_processor))
        anns = [a for a in cs.annotations if a.image_id in rows]
        encoded = encode_captions(cap.tokenizer, [a.caption for a in anns], cfg.model.max_length,
                                  cfg.model.prompt, prefix)
        sets.append((CaptionPairs([rows[a.image_id] for a in anns], *encoded, source), ids, source))
    (train, _, _), (val, val_ids, val_source) = sets
    sample = val_sample(len(val_ids), cfg.train.val_sample, cfg.train.seed)
    if sample:
        log(f"validation: each epoch decodes a fixed sample of {len(sample)} of the "
            f"{len(val_ids)} images (train.val_sample); the whole set is scored at the end")
    return Examples(train, val, val_ids, val_source, cached, sample)


def loader_workers(cfg: Config, cached: bool) -> int:
    """DataLoader workers: as configured, or (-1) none for cached features, else min(4, CPUs)."""
    if cfg.train.num_workers >= 0:
        return cfg.train.num_workers
    return 0 if cached else min(4, os.cpu_count() or 1)


def build_loader(cfg: Config, pairs: CaptionPairs | range, workers: int = 0, collate_fn=collate):
    """The training DataLoader over a seeded per-epoch order, and its sampler; its own generator
    leaves the global RNG (dropout) alone, so a resumed run draws the same masks."""
    t = cfg.train
    sampler = EpochSampler(len(pairs), t.seed)
    loader = DataLoader(pairs, batch_size=t.batch_size, sampler=sampler, collate_fn=collate_fn,
                        num_workers=workers, pin_memory=torch.cuda.is_available(),
                        persistent_workers=workers > 0,
                        generator=torch.Generator().manual_seed(t.seed))
    return loader, sampler


def build_optimizer(cfg: Config, model, total_steps: int, processes: int = 1):
    """AdamW (new token rows: their own learning rate, no weight decay) and the warmup
    schedule, over `processes` times the steps (Accelerate steps it once per process)."""
    from transformers import get_scheduler  # pulls in peft: ~3 s, only when a run starts

    t = cfg.train
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in params if "trainable_tokens" not in n], "lr": t.lr},
        {"params": [p for n, p in params if "trainable_tokens" in n],
         "lr": t.embedding_lr or t.lr, "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=t.lr,
                                  weight_decay=t.weight_decay)
    name = "constant_with_warmup" if t.scheduler == "constant" else t.scheduler
    scheduler = get_scheduler(name, optimizer,
                              num_warmup_steps=int(t.warmup_ratio * total_steps) * processes,
                              num_training_steps=max(total_steps, 1) * processes)
    return optimizer, scheduler
