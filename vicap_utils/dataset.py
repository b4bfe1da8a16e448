"""Training examples: (image, caption) pairs as tensors in a resumable order; images decoded on
demand or cached features, captions tokenised once up front."""

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset, Sampler

from vicap_utils.data import CaptionSet, ImageId
from vicap_utils.images import load_rgb


def image_pixels(paths: Sequence[Path], image_processor, row: int) -> torch.Tensor:
    """The pixel tensor of image `row`, decoded (EXIF applied, RGB) when asked; with the first
    two bound (`functools.partial`), the picklable row → pixels source of a loader's workers."""
    return image_processor(load_rgb(paths[row]), return_tensors="pt")["pixel_values"][0]


def image_rows(cs: CaptionSet) -> tuple[list[ImageId], dict[ImageId, int]]:
    """The set's image ids in a stable order, and id → row."""
    ids = sorted(cs.images, key=str)
    return ids, {image_id: row for row, image_id in enumerate(ids)}


class CaptionPairs(Dataset):
    """(image, caption) pairs; `image_source(row)` gives pixels or cached features alike."""

    def __init__(self, image_rows: Sequence[int], input_ids: torch.Tensor,
                 attention_mask: torch.Tensor, labels: torch.Tensor,
                 image_source: Callable[[int], torch.Tensor]) -> None:
        self.image_rows = list(image_rows)
        self.input_ids, self.attention_mask, self.labels = input_ids, attention_mask, labels
        self.image_source = image_source

    def __len__(self) -> int:
        return len(self.image_rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.image_source(self.image_rows[i]), "input_ids": self.input_ids[i],
                "attention_mask": self.attention_mask[i], "labels": self.labels[i]}


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack items, trimming the padding columns no caption in the batch uses."""
    batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
    width = int(batch["attention_mask"].sum(1).max())
    text = ("input_ids", "attention_mask", "labels")
    return {k: v[:, :width] if k in text else v for k, v in batch.items()}


class EpochSampler(Sampler[int]):
    """A seeded permutation per epoch, a function of (seed, epoch) alone: a resumed run sees
    exactly the batches the interrupted one would have seen."""

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
