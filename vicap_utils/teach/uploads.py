"""Safe decoding of user-uploaded images: bytes in memory only, never a path from the user.

Checks run cheapest first: the size of the upload, the image type read from its content (not
its name), the pixel count read from the header (PIL's decompression-bomb guard, its warning
turned into an error), then the full decode, EXIF orientation and conversion to RGB.
"""
from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageOps

from vicap_utils.images import to_rgb
from vicap_utils.ops.io import VicapError

MAX_UPLOAD_BYTES = 15 * 2**20
# Formats PIL may try: a short list keeps rarely used decoders away from untrusted bytes.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")


class UploadError(VicapError):
    """An upload the demo refuses; the message is meant for the person who sent it."""


@dataclass
class DecodedUpload:
    """An accepted upload: the RGB image and what it was before conversion."""

    image: Image.Image
    format: str
    mode: str
    size: tuple[int, int]
    name: str


def max_pixels() -> int:
    """The pixel limit: PIL's decompression-bomb threshold (`Image.MAX_IMAGE_PIXELS`)."""
    return int(Image.MAX_IMAGE_PIXELS or 89_478_485)


def first_upload(value: Any) -> tuple[str, bytes]:
    """The (display name, bytes) of the first file in an ipywidgets 7/8 FileUpload value."""
    if isinstance(value, dict):  # ipywidgets 7: {name: {"metadata": …, "content": …}}
        value = [{"name": k, **v} for k, v in value.items()]
    if not value:
        raise UploadError("no file uploaded yet")
    item = value[0]
    return str(item.get("name", "upload")), bytes(item["content"])


def decode_upload(data: bytes, name: str = "upload",
                  max_bytes: int = MAX_UPLOAD_BYTES) -> DecodedUpload:
    """Check and decode uploaded bytes into an upright RGB image, or raise UploadError."""
    if not data:
        raise UploadError(f"{name}: the file is empty")
    if len(data) > max_bytes:
        raise UploadError(f"{name}: {len(data) / 2**20:.1f} MB is over the "
                          f"{max_bytes / 2**20:.0f} MB limit")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as im:
                fmt, mode, size = im.format or "?", im.mode, im.size
                im.load()
                upright = ImageOps.exif_transpose(im)
                rgb = to_rgb(upright)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise UploadError(_too_large(name, _pixels_in(str(exc)))) from None
        except Image.UnidentifiedImageError:
            raise UploadError(f"{name}: not an image this demo reads "
                              f"({', '.join(ALLOWED_FORMATS)})") from None
        except Exception as exc:  # PIL raises many types on corrupt data
            raise UploadError(f"{name}: the image is damaged or truncated "
                              f"({type(exc).__name__})") from None
    return DecodedUpload(image=rgb, format=fmt, mode=mode, size=size, name=name)


def _pixels_in(message: str) -> int | None:
    """The pixel count in PIL's decompression-bomb message ("Image size (N pixels) …")."""
    found = re.search(r"\((\d+) pixels\)", message)
    return int(found.group(1)) if found else None


def _too_large(name: str, pixels: int | None) -> str:
    """The refusal for an image whose header announces too many pixels."""
    count = f"{pixels / 1e6:.0f} megapixels; " if pixels else ""
    return (f"{name}: image too large ({count}the limit is {max_pixels() / 1e6:.0f} "
            "megapixels), refused before decoding as a possible decompression bomb")
