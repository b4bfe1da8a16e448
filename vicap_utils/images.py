"""Image decoding shared by the audit, training, prediction and the demo."""

from pathlib import Path
from typing import NamedTuple

from PIL import ExifTags, Image, ImageOps

from vicap_utils.ops.io import VicapError, path_problem

# EXIF orientations that rotate by 90 or 270 degrees, so width and height swap on display.
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


class ImageCheck(NamedTuple):
    """Outcome of fully decoding one image; width/height are as displayed (EXIF applied)."""

    ok: bool
    reason: str | None
    detail: str
    width: int | None
    height: int | None


def check_image(path: str | Path) -> ImageCheck:
    """Decode the whole file (a truncated JPEG passes a header check), else `missing_file` or
    `unreadable_image` (a folder, a loop, a pipe, never opened: reading could hang, …)."""
    path = Path(path)
    problem = path_problem(path)
    if problem is None and path.is_dir():
        problem = "folder", "is a folder, not an image file"
    if problem is not None:
        code, words = problem
        reason = "missing_file" if code in ("missing", "broken_link") else "unreadable_image"
        return ImageCheck(False, reason, f"{path} {words}", None, None)
    try:
        with Image.open(path) as im:
            im.load()
            width, height = im.size
            if im.getexif().get(ExifTags.Base.Orientation) in _SWAPPING_ORIENTATIONS:
                width, height = height, width
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
        return ImageCheck(False, "unreadable_image", f"{type(exc).__name__}: {exc}", None, None)
    return ImageCheck(True, None, "", width, height)


def load_rgb(path: str | Path) -> Image.Image:
    """Open, fully decode, apply EXIF orientation and convert to 8-bit RGB; a file that does
    not decode is a one-line VicapError naming it."""
    try:
        with Image.open(path) as im:
            im.load()
            oriented = ImageOps.exif_transpose(im)
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
        raise VicapError(f"{path}: cannot decode this image ({type(exc).__name__}: {exc}); "
                         "`vicap audit` lists every such file") from None
    return to_rgb(oriented)


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert a decoded image of any common mode to RGB: 16/32-bit greys scaled to 8 bits,
    transparent pixels composited on white, CMYK and palettes converted."""
    if im.mode == "RGB":
        return im
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):  # to 8 bits (16-bit range if > 255)
        import numpy as np  # numpy: its import starts threads, and the audit forks workers

        values = np.asarray(im, dtype=np.float64)
        if values.size and values.max() > 255:
            values = values / 257.0
        return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8)).convert("RGB")
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    return im.convert("RGB")
