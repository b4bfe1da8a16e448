"""Training batches: caption ids that start exactly as `generate()` starts, images as tensors.

BLIP-1's `generate()` feeds `[DEC]` (the bos token) first and stops at `[SEP]`; `forward()`
uses whatever ids it is given, so training must build `[DEC] caption [SEP]` itself.
BLIP-2 puts one image placeholder per query token before the text; those, the padding and
any prompt are -100 in the labels, or the loss would be computed on them too.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch.utils.data import Dataset, Sampler

IGNORE = -100


def special_ids(tokenizer) -> tuple[int, int, int]:
    """(bos, eos, pad) ids: `[DEC]`/`[SEP]`/`[PAD]` for BLIP-1, `</s>`/`</s>`/`<pad>` for OPT."""
    bos = tokenizer.bos_token_id
    eos = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    if bos is None or eos is None:
        raise ValueError("tokenizer needs a bos and an eos/sep token")
    return bos, eos, pad


def encode_captions(
    tokenizer,
    captions: Sequence[str],
    max_length: int,
    prompt: str = "",
    image_prefix: Sequence[int] = (),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, labels) for `prefix + bos + prompt + caption + eos`.

    Labels are -100 on the prefix, bos, prompt and padding; `max_length` counts bos and eos
    (not the image prefix). Long captions are cut before the eos, which is always kept.
    """
    bos, eos, pad = special_ids(tokenizer)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
    texts = tokenizer(list(captions), add_special_tokens=False)["input_ids"]
    prefix = list(image_prefix)
    rows, labels = [], []
    for ids in texts:
        body = (prompt_ids + ids)[: max_length - 2]
        seq = prefix + [bos] + body + [eos]
        n_masked = len(prefix) + 1 + min(len(prompt_ids), len(body))
        rows.append(seq)
        labels.append([IGNORE] * n_masked + seq[n_masked:])
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    lab = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, (r, lbl) in enumerate(zip(rows, labels)):
        input_ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
        lab[i, : len(lbl)] = torch.tensor(lbl)
    return input_ids, mask, lab


def image_prefix_ids(processor, family: str, num_query_tokens: int | None = None) -> list[int]:
    """BLIP-2's image placeholders (one per query token); nothing for BLIP-1.

    The count comes from the processor, or from the model config for processors saved
    without it.
    """
    if family != "blip2":
        return []
    tok = processor.tokenizer
    image_id = tok.convert_tokens_to_ids(processor.image_token.content)
    count = processor.num_query_tokens or num_query_tokens
    if not count:
        raise ValueError("BLIP-2 processor and model config give no num_query_tokens")
    return [image_id] * int(count)


class CaptionPairs(Dataset):
    """(image, caption) pairs; the image side comes from `image_source(image_row)`.

    `image_source` returns pixel values or cached vision features for one image, so the
    training loop is the same either way.
    """

    def __init__(
        self,
        image_rows: Sequence[int],
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        image_source: Callable[[int], torch.Tensor],
    ) -> None:
        self.image_rows = list(image_rows)
        self.input_ids, self.attention_mask, self.labels = input_ids, attention_mask, labels
        self.image_source = image_source

    def __len__(self) -> int:
        return len(self.image_rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "image": self.image_source(self.image_rows[i]),
            "input_ids": self.input_ids[i],
            "attention_mask": self.attention_mask[i],
            "labels": self.labels[i],
        }


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack items, trimming the padding columns no caption in the batch uses."""
    batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
    width = int(batch["attention_mask"].sum(1).max())
    for k in ("input_ids", "attention_mask", "labels"):
        batch[k] = batch[k][:, :width]
    return batch


class EpochSampler(Sampler[int]):
    """A seeded permutation per epoch: the data order is a function of (seed, epoch) alone,
    so a resumed run sees exactly the batches the interrupted one would have seen."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the permutation of this epoch."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n
