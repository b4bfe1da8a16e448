"""Safe decoding of uploaded images, in memory only. Checks run cheapest first: size, type from
the content, pixel count from the header (PIL's bomb guard, its warning an error), decode."""
from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass

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
    """An accepted upload: the upright RGB image and what it was before conversion."""

    image: Image.Image
    format: str
    mode: str
    size: tuple[int, int]


def decode_upload(data: bytes, name: str = "upload") -> DecodedUpload:
    """Check and decode uploaded bytes into an upright RGB image, or raise UploadError."""
    if not data:
        raise UploadError(f"{name}: the file is empty")
    if len(data) > MAX_UPLOAD_BYTES:
        raise UploadError(f"{name}: {len(data) / 2**20:.1f} MB is over the "
                          f"{MAX_UPLOAD_BYTES / 2**20:.0f} MB limit")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as im:
                im.load()
                return DecodedUpload(to_rgb(ImageOps.exif_transpose(im)), im.format or "?",
                                     im.mode, im.size)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            found = re.search(r"\((\d+) pixels\)", str(exc))  # "Image size (N pixels) …"
            count = f"{int(found.group(1)) / 1e6:.0f} megapixels; " if found else ""
            limit = (Image.MAX_IMAGE_PIXELS or 89_478_485) / 1e6
            raise UploadError(f"{name}: image too large ({count}the limit is {limit:.0f} "
                              "megapixels), refused before decoding as a possible "
                              "decompression bomb") from None
        except Image.UnidentifiedImageError:
            raise UploadError(f"{name}: not an image this demo reads "
                              f"({', '.join(ALLOWED_FORMATS)})") from None
        except Exception as exc:  # PIL raises many types on corrupt data
            raise UploadError(f"{name}: the image is damaged or truncated "
                              f"({type(exc).__name__})") from None
