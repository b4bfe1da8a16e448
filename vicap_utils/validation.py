"""Validation during training: loss on the validation captions, CIDEr of beam-search captions."""

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch.utils.data import DataLoader

from vicap_utils import captioner
from vicap_utils.builders import Examples
from vicap_utils.captioner import Captioner
from vicap_utils.config import EvalConfig
from vicap_utils.dataset import collate
from vicap_utils.metrics import quick_cider

Autocast = Callable[[], AbstractContextManager]


@torch.no_grad()
def validation_loss(cap: Captioner, examples: Examples, batch_size: int,
                    device: torch.device | str, autocast: Autocast) -> float:
    """Mean next-token loss (no label smoothing) over every validation caption token."""
    total, count = 0.0, 0
    for batch in DataLoader(examples.val, batch_size=batch_size, collate_fn=collate,
                            generator=torch.Generator()):
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast():
            logits = captioner.forward(cap.model, cap.family, batch["image"], batch["input_ids"],
                                       batch["attention_mask"], examples.cached)
        n = int((batch["labels"][:, 1:] != captioner.IGNORE).sum())
        total += captioner.loss(logits, batch["labels"]).item() * n
        count += n
    return total / max(count, 1)


@torch.no_grad()
def validate(cap: Captioner, examples: Examples, ev: EvalConfig,
             references: Mapping[Any, list[str]], device: torch.device | str,
             autocast: Autocast, sample: bool = True) -> tuple[float, float, dict[Any, str]]:
    """(loss, CIDEr, captions by image id) of the per-epoch sample of validation images (all of
    them with `sample=False`)."""
    cap.model.eval()
    loss = validation_loss(cap, examples, ev.batch_size, device, autocast)
    dec, preds = captioner.Decoding.from_eval(ev), {}
    for ids, images in examples.val_images(ev.batch_size, sample):
        with autocast():
            out = captioner.caption(cap, dec=dec, **{examples.image_kind: images.to(device)})
        preds.update(zip(ids, (alts[0][0] for alts in out)))
    return loss, quick_cider(preds, references), preds
