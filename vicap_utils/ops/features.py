"""Vision features of the frozen ViT, computed once: fp16 in RAM when they fit, else memory-mapped
under the run's `cache/`, keyed by weights, processor and images; DDP processes write a share."""

import hashlib
import itertools
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import psutil
import torch
import torch.distributed as dist

from vicap_utils.captioner import Captioner, image_features, inner_model, pixel_values
from vicap_utils.images import load_rgb
from vicap_utils.ops.folders import read_marker, record
from vicap_utils.ops.io import VicapError, atomic_write_json, read_json, write_error
from vicap_utils.ops.progress import progress

DTYPE = torch.float16
RAM_SHARE = 0.25  # keep features in RAM when they take at most this share of available memory


def cache_key(cap: Captioner, paths: Sequence[Path]) -> str:
    """A short hash of the vision config and weights, image processor and image files."""
    h = hashlib.sha256()
    vision = inner_model(cap.model).vision_model
    h.update(vision.config.to_json_string().encode())
    h.update(json.dumps(cap.processor.image_processor.to_dict(), sort_keys=True,
                        default=str).encode())
    for name, p in vision.state_dict().items():
        p = p.detach().double()
        h.update(f"{name}{tuple(p.shape)}{p.sum().item():.10e}{p.abs().sum().item():.10e}".encode())
    for path in paths:
        st = Path(path).stat()
        h.update(f"{Path(path).name}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _barrier(world: int) -> None:
    """Wait until every process gets here (nothing to wait for in a single process)."""
    if world > 1:
        dist.barrier()


def _batches(cap: Captioner, paths: Sequence[Path], rows: range, batch_size: int, desc: str,
             show: bool):
    """(start row, fp16 features) per batch of `rows`; fp16 autocast on a GPU, fp32 on a CPU."""
    device = next(inner_model(cap.model).vision_model.parameters()).device
    for start in progress(range(rows.start, rows.stop, batch_size), desc=desc, unit="batch",
                          disable=not show):
        images = [load_rgb(p) for p in paths[start:min(start + batch_size, rows.stop)]]
        with torch.autocast("cuda", dtype=DTYPE, enabled=device.type == "cuda"):
            feats = image_features(cap.model, pixel_values(cap, images))
        yield start, feats.to("cpu", DTYPE)


@torch.no_grad()
def encode_images(cap: Captioner, paths: Sequence[Path], folder: Path | None = None,
                  name: str = "train", batch_size: int = 64, show: bool = True,
                  ram_bytes: int | None = None, log=print) -> torch.Tensor:
    """fp16 vision features [images, tokens, hidden]: in RAM when they fit in `ram_bytes`
    (default: `RAM_SHARE` of the free memory), else memory-mapped (`_mapped`)."""
    cap.model.eval()
    paths = list(paths)
    if not paths:
        return torch.empty(0, dtype=DTYPE)
    rank, world = 0, 1
    if folder is not None and dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    share = -(-len(paths) // world)  # contiguous blocks, the main process's first
    rows = range(min(len(paths), rank * share), min(len(paths), (rank + 1) * share))
    batches = _batches(cap, paths, rows, batch_size, f"caching {name} image features", show)
    if world > 1:
        log(f"vision features: {world} processes encode a share each, memory-mapped under {folder}")
        return _mapped(cap, paths, folder, name, batches, log, rank, world)
    start, first = next(batches)
    batches = itertools.chain([(start, first)], batches)
    shape = (len(paths), *first.shape[1:])
    size = int(np.prod(shape)) * 2
    budget = int(RAM_SHARE * psutil.virtual_memory().available) if ram_bytes is None else ram_bytes
    if folder is None or size <= budget:
        out = torch.empty(shape, dtype=DTYPE)
        for row, feats in batches:
            out[row:row + len(feats)] = feats
        return out
    log(f"vision features: {size / 2**30:.2f} GiB do not fit in RAM ({budget / 2**30:.2f} GiB "
        f"allowed); memory-mapped under {folder}")
    return _mapped(cap, paths, folder, name, batches, log)


def _mapped(cap: Captioner, paths: list[Path], folder: Path, name: str, batches, log,
            rank: int = 0, world: int = 1) -> torch.Tensor:
    """The features mapped from `folder/<name>-<key>.f16`, written first unless complete."""
    key = cache_key(cap, paths)
    file, meta_file = folder / f"{name}-{key}.f16", folder / f"{name}-{key}.json"
    try:
        meta = read_json(meta_file) if meta_file.is_file() else {}
        complete = meta["key"] == key and file.stat().st_size == 2 * int(np.prod(meta["shape"]))
    except (VicapError, OSError, KeyError, TypeError, ValueError):
        complete = False
    if complete:
        log(f"vision features: reusing {file} ({file.stat().st_size / 2**30:.2f} GiB)")
    else:
        _write(folder, name, key, len(paths), batches, rank, world)
    shape = tuple(read_json(meta_file)["shape"])
    return torch.from_numpy(np.memmap(file, dtype=np.float16, mode="c", shape=shape))


def _write(folder: Path, name: str, key: str, n: int, batches, rank: int, world: int) -> None:
    """Write `<name>-<key>.f16` and its metadata: the main process clears stale files and
    reserves the space (a full disk fails there), each process writes its rows."""
    file, partial = folder / f"{name}-{key}.f16", folder / f".{name}-{key}.f16.partial"
    try:
        if rank == 0:
            start, first = next(batches)
            shape = (n, *first.shape[1:])
            if read_marker(folder.parent) is not None:  # a run's: its marker lists cache/ now
                record(folder.parent, [folder.name])
            folder.mkdir(parents=True, exist_ok=True)
            for stale in folder.glob(f"{name}-*"):
                stale.unlink()
            with open(partial, "wb") as f:
                os.posix_fallocate(f.fileno(), 0, int(np.prod(shape)) * 2)
            batches = itertools.chain([(start, first)], batches)
        _barrier(world)
        rows = np.memmap(partial, dtype=np.float16, mode="r+").reshape(n, -1)
        for start, feats in batches:
            rows[start:start + len(feats)] = feats.flatten(1).numpy()
        rows.flush()
        del rows
        _barrier(world)
        if rank == 0:
            os.replace(partial, file)
            atomic_write_json(folder / f"{name}-{key}.json",
                              {"key": key, "shape": list(shape), "dtype": "float16"})
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise write_error(file, exc) from None
    _barrier(world)
