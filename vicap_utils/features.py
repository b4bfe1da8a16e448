"""Cached vision features: every image through the frozen ViT once, kept in fp16.

Training with the ViT frozen (BLIP-1 and BLIP-2 both) sees the same features for an image at
every step, so they are computed once per image (not once per caption per epoch) and stored in
fp16, half the memory of fp32 at a precision the trained part does not notice. They stay in RAM
when they fit in a share of the memory available (`RAM_SHARE`), otherwise they go to a
memory-mapped file under the run's `cache/` folder, reused by a resumed run. UIT-ViIC's 2,420
training images at 384 px are 577 x 768 values each, about 2.1 GB in fp16: in RAM on a Kaggle
box (30 GB), memory-mapped on a small laptop; Flickr8k's 6,000 for BLIP-2 (257 x 1408 each)
are about 4.3 GB. The key covers the vision weights and config, the image processor's
settings and the image files, so a change to any of them rebuilds the features.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from vicap_utils.captioner import Captioner, image_features, inner_model, pixel_values
from vicap_utils.images import load_rgb
from vicap_utils.io import VicapError, atomic_write_json, read_json, write_error
from vicap_utils.progress import progress

DTYPE = torch.float16
RAM_SHARE = 0.25  # keep features in RAM when they take at most this share of available memory


def cache_key(cap: Captioner, paths: Sequence[Path]) -> str:
    """A short hash of what the features depend on: the vision config and weights, the image
    processor's settings, and each image file's name, size and modification time."""
    h = hashlib.sha256()
    vision = inner_model(cap.model).vision_model
    h.update(vision.config.to_json_string().encode())
    h.update(json.dumps(cap.processor.image_processor.to_dict(), sort_keys=True,
                        default=str).encode())
    with torch.no_grad():
        for name, p in vision.state_dict().items():
            p = p.detach().double()
            h.update(f"{name}{tuple(p.shape)}{p.sum().item():.10e}{p.abs().sum().item():.10e}"
                     .encode())
    for path in paths:
        st = Path(path).stat()
        h.update(f"{Path(path).name}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def available_memory() -> int:
    """Bytes of memory available now (Linux: MemAvailable), or 0 when unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def _batches(cap: Captioner, paths: Sequence[Path], batch_size: int, desc: str, show: bool):
    """(start row, fp16 features) a batch of images at a time."""
    for start in progress(range(0, len(paths), batch_size), desc=desc, unit="batch",
                          disable=not show):
        images = [load_rgb(p) for p in paths[start:start + batch_size]]
        yield start, image_features(cap.model, pixel_values(cap, images)).to("cpu", DTYPE)


def _saved_meta(path: Path) -> dict | None:
    """The metadata beside a memory-mapped cache, or None when absent or unreadable."""
    try:
        return read_json(path) if path.is_file() else None
    except VicapError:
        return None


@torch.no_grad()
def encode_images(cap: Captioner, paths: Sequence[Path], folder: Path | None = None,
                  name: str = "train", batch_size: int = 64, show: bool = True,
                  ram_bytes: int | None = None, log=print) -> torch.Tensor:
    """fp16 vision features of every image, [images, tokens, hidden]: in RAM when they fit in
    `ram_bytes` (default: `RAM_SHARE` of the memory available), else memory-mapped under
    `folder` as `<name>-<key>.f16`, reused when its key matches."""
    cap.model.eval()
    paths = list(paths)
    if not paths:
        return torch.empty(0, dtype=DTYPE)
    desc = f"caching {name} image features"
    batches = _batches(cap, paths, batch_size, desc, show)
    start, first = next(batches)
    shape = (len(paths), *first.shape[1:])
    size = int(np.prod(shape)) * 2
    budget = int(RAM_SHARE * available_memory()) if ram_bytes is None else ram_bytes
    if folder is None or size <= budget:
        out = torch.empty(shape, dtype=DTYPE)
        out[:len(first)] = first
        for start, feats in batches:
            out[start:start + len(feats)] = feats
        return out
    key = cache_key(cap, paths)
    file, meta_file = folder / f"{name}-{key}.f16", folder / f"{name}-{key}.json"
    meta = {"key": key, "shape": list(shape), "dtype": "float16"}
    if file.is_file() and _saved_meta(meta_file) == meta:
        batches.close()
        log(f"vision features: reusing {file} ({size / 2**30:.2f} GiB)")
        return torch.from_numpy(np.memmap(file, dtype=np.float16, mode="c", shape=shape))
    log(f"vision features: {size / 2**30:.2f} GiB do not fit in RAM ({budget / 2**30:.2f} GiB "
        f"allowed); memory-mapped in {file}")
    partial = folder / f".{file.name}.partial"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(f"{name}-*"):
            stale.unlink()
        with open(partial, "wb") as f:  # the space reserved up front: a full disk fails here
            os.posix_fallocate(f.fileno(), 0, size)
        mm = np.memmap(partial, dtype=np.float16, mode="r+", shape=shape)
        mm[:len(first)] = first.numpy()
        for start, feats in batches:
            mm[start:start + len(feats)] = feats.numpy()
        mm.flush()
        del mm
        os.replace(partial, file)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise write_error(file, exc) from None
    atomic_write_json(meta_file, meta)
    return torch.from_numpy(np.memmap(file, dtype=np.float16, mode="c", shape=shape))
