"""Audit throughput on COCO-size JPEGs, against the simple one-process open+load loop.

    python benchmarks/bench_audit.py [--n 600] [--workers N]

Makes N 640x480 JPEGs (smooth colour fields with sensor-like noise, quality 90, so their
size and decode cost are like photos), audits them, then decodes them in a plain loop.
Only PIL draws the images: like the `vicap audit` command, this process never imports
numpy, whose threads would make the audit start its workers the slower, thread-safe way.
"""
from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageChops

from vicap_utils.audit import audit
from vicap_utils.ops.io import atomic_write_json

WIDTH, HEIGHT = 640, 480


def make_photo(rng: random.Random, noise: Image.Image) -> Image.Image:
    """A photo-like 640x480 RGB image: rotated colour gradients plus sensor-like noise cut
    from `noise` (a larger grey noise field, so each image gets different grain)."""
    bands = []
    for _ in range(3):
        gradient = Image.linear_gradient("L").rotate(rng.uniform(0, 360), expand=True)
        left, top = rng.randrange(noise.width - WIDTH), rng.randrange(noise.height - HEIGHT)
        grain = noise.crop((left, top, left + WIDTH, top + HEIGHT))
        bands.append(ImageChops.add(gradient.resize((WIDTH, HEIGHT)), grain, offset=-128))
    return Image.merge("RGB", bands)


def make_dataset(folder: Path, n_images: int, seed: int = 0) -> Path:
    """Write n JPEGs into folder/images and a COCO-style captions file; return its path."""
    rng = random.Random(seed)
    noise = Image.effect_noise((2 * WIDTH, 2 * HEIGHT), 14)
    images_dir = folder / "images"
    images_dir.mkdir(parents=True)
    images, annotations = [], []
    for i in range(n_images):
        name = f"{i:06d}.jpg"
        make_photo(rng, noise).save(images_dir / name, quality=90)
        images.append({"id": i, "file_name": name})
        annotations.append({"id": i, "image_id": i, "caption": f"Ảnh số {i} chụp một sân bóng."})
    coco = {"images": images, "annotations": annotations}
    return atomic_write_json(folder / "captions.json", coco)


def simple_loop(images_dir: Path) -> int:
    """The simple way: one process, PIL open + load on every file."""
    count = 0
    for path in sorted(images_dir.glob("*.jpg")):
        with Image.open(path) as im:
            im.load()
        count += 1
    return count


def timed(func, *args, **kwargs) -> tuple[object, float]:
    """(result, seconds) of one call."""
    start = time.perf_counter()
    result = func(*args, **kwargs)
    return result, time.perf_counter() - start


def main() -> None:
    """Build the data set, time both ways, print images/s and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=600, help="number of JPEGs")
    parser.add_argument("--workers", type=int, default=None, help="audit processes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _, build_s = timed(make_dataset, folder, args.n)
        mb = sum(p.stat().st_size for p in (folder / "images").iterdir()) / 2**20
        print(f"made {args.n} JPEGs {WIDTH}x{HEIGHT} ({mb:.1f} MiB) in {build_s:.1f} s")
        summary, audit_s = timed(
            audit, folder / "captions.json", folder / "images", folder / "out", args.workers
        )
        loop_n, loop_s = timed(simple_loop, folder / "images")
    assert summary["images_ok"] == args.n == loop_n
    audit_rate, loop_rate = args.n / audit_s, args.n / loop_s
    print(f"vicap audit : {audit_s:6.2f} s  {audit_rate:7.1f} images/s (whole command)")
    print(f"simple loop : {loop_s:6.2f} s  {loop_rate:7.1f} images/s (PIL open+load, 1 process)")
    print(f"ratio       : {audit_rate / loop_rate:.2f}x")


if __name__ == "__main__":
    main()
