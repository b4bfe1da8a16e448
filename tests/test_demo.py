"""The captioning app's callbacks (driven through the widget API) and upload safety."""
from __future__ import annotations

import io
import random
import re
import struct
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image

from vicap_utils.data import load_captions
from vicap_utils.teach.demo import (
    MAX_UPLOAD_BYTES,
    N_SAMPLES,
    UploadError,
    build_app,
    decode_upload,
    find_adapters,
)

VIETNAMESE = re.compile(r"[ăâđêôơưáàảãạấầẩẫậắằẳẵặéèẻẽẹếềểễệíìỉĩịóòỏõọốồổỗộớờởỡợúùủũụứừửữựýỳỷỹỵ]",
                        re.IGNORECASE)


@pytest.fixture(scope="session")
def demo_output(mini_output: Path) -> Path:
    """The output folder with the session's trained mini run (conftest.mini_output)."""
    return mini_output


@pytest.fixture(scope="module")
def app(demo_output: Path):
    """One app over the trained run; its model cache serves every test of this module."""
    return build_app(demo_output)


def png_bytes(image: Image.Image, fmt: str = "PNG", **save: object) -> bytes:
    """An image encoded in memory."""
    buf = io.BytesIO()
    image.save(buf, fmt, **save)
    return buf.getvalue()


def huge_png_header(width: int = 20000, height: int = 20000) -> bytes:
    """A PNG whose IHDR announces width × height 1-bit pixels, with no pixel data at all."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def upload(app, name: str, data: bytes) -> None:
    """Set the FileUpload's value as the browser does (JSON state with the bytes)."""
    app.upload.set_state({"value": [{"name": name, "type": "", "size": len(data),
                                     "content": memoryview(data), "last_modified": 0}]})


def pick(app, adapter: bool = True) -> None:
    """Select the newest adapter, or the base model alone."""
    app.model.value = next(i for i, c in enumerate(app.choices) if c.no_adapter != adapter)


# ---------------------------------------------------------------- the app


def test_model_menu_lists_adapters_newest_first_then_base(app, demo_output):
    labels = [c.label for c in app.choices]
    found = find_adapters(demo_output)
    assert {p.name for p in found} >= {"best", "final"}
    assert [c.source for c in app.choices if not c.no_adapter] == [str(p) for p in found]
    assert labels[-1] == "base only: mini" and sum(c.no_adapter for c in app.choices) == 1
    mtimes = [(p / "adapter_model.safetensors").stat().st_mtime for p in found]
    assert mtimes == sorted(mtimes, reverse=True)
    assert app.notice.value == ""


def test_samples_are_the_runs_validation_images(app, demo_output):
    val = load_captions(demo_output / "runs" / "mini" / "data" / "val.json")
    names = [info.file_name for info in val.images.values()][:N_SAMPLES]
    assert list(app.samples) == [f"validation: {Path(n).name}" for n in names]
    assert app.sample.value == f"validation: {Path(names[0]).name}"
    assert app.image is not None and app.image_name == app.sample.value


def test_caption_button_writes_vietnamese_with_beams(app):
    app.sample.value = app.sample.options[1][1]
    pick(app)
    app.sampling.value = False
    app.beams.value = 4
    app.button.click()
    assert app.error == ""
    (result,) = app.results
    assert len(result.captions) == 4
    assert all(isinstance(score, float) for _, score in result.captions)
    scores = [score for _, score in result.captions]
    assert scores == sorted(scores, reverse=True)
    assert VIETNAMESE.search(result.captions[0][0]), result.captions
    assert result.captions[0][0] in app.output.value and "log-prob" in app.output.value
    assert f"{result.seconds:.2f} s" in app.output.value
    assert not app.button.disabled


def test_models_load_once(app):
    pick(app)
    app.button.click()
    before = dict(app.models)
    app.max_tokens.value = 12
    app.button.click()
    assert app.models == before and app.results[0].load_seconds == 0.0


def test_sampling_draws_one_caption(app):
    pick(app)
    app.sampling.value = True
    assert not app.temperature.disabled and not app.top_p.disabled and app.beams.disabled
    app.temperature.value, app.top_p.value = 0.7, 0.9
    app.button.click()
    app.sampling.value = False
    assert app.error == "" and len(app.results[0].captions) == 1
    assert app.results[0].captions[0][1] is None and "sampling" in app.output.value


def test_compare_shows_adapter_and_base_side_by_side(app):
    pick(app, adapter=False)
    app.beams.value = 3
    app.compare_button.click()
    assert app.error == ""
    adapter, base = app.results
    assert adapter.model.startswith("adapter:") and base.model == "base only: mini"
    assert app.output.value.count("vicap-card'") == 2
    assert VIETNAMESE.search(adapter.captions[0][0])


def test_uploaded_photo_is_captioned(app):
    from vicap_utils.toy.data import draw_scene, random_scene

    rng = random.Random(7)
    photo = draw_scene(random_scene(rng), (200, 150), rng).convert("RGBA")
    upload(app, "photo.png", png_bytes(photo))
    assert app.error == "" and app.image.mode == "RGB" and app.sample.value == ""
    pick(app)
    app.button.click()
    assert VIETNAMESE.search(app.results[0].captions[0][0])


@pytest.mark.parametrize("name, data, expected", [
    ("notes.jpg", b"just some text, not a picture", "not an image"),
    ("half.jpg", png_bytes(Image.effect_noise((64, 48), 60), "JPEG")[:900], "damaged or truncated"),
    ("bomb.png", huge_png_header(), "too large (400 megapixels"),
])
def test_bad_upload_shows_a_message(app, name, data, expected):
    start = time.perf_counter()
    upload(app, name, data)
    assert time.perf_counter() - start < 2
    assert expected in app.error and name in app.error
    assert "vicap-error" in app.status.value and "Traceback" not in app.status.value
    assert app.image is None
    app.button.click()
    assert "Pick a sample image or upload one first" in app.error


def test_without_adapter_the_base_works_and_the_app_says_how_to_train(tmp_path):
    app = build_app(tmp_path)
    assert [c.label for c in app.choices] == ["base only: mini"]
    assert "vicap train --profile mini" in app.notice.value
    assert len(app.samples) == N_SAMPLES and all(k.startswith("synthetic ") for k in app.samples)
    app.button.click()
    assert app.error == "" and app.results[0].model == "base only: mini"
    assert app.results[0].captions[0][0] in app.output.value
    app.compare_button.click()
    assert "No adapter to compare with" in app.error


def test_a_failing_model_load_is_a_message(tmp_path):
    from vicap_utils.ops.io import VicapError

    def broken(source: str, no_adapter: bool = False):
        raise VicapError(f"cannot load model {source!r}")

    app = build_app(tmp_path, loader=broken)
    app.button.click()
    assert app.error == "cannot load model 'mini'" and not app.button.disabled


# ---------------------------------------------------------------- upload safety


def test_bomb_is_refused_from_its_header():
    with pytest.raises(UploadError, match="decompression bomb"):
        decode_upload(huge_png_header(), "bomb.png")


def test_size_limit_and_empty_file():
    with pytest.raises(UploadError, match="over the 15 MB limit"):
        decode_upload(b"\0" * (MAX_UPLOAD_BYTES + 1), "big.bin")
    with pytest.raises(UploadError, match="empty"):
        decode_upload(b"", "nothing.png")


def test_type_comes_from_content_not_name():
    jpeg = png_bytes(Image.new("RGB", (8, 6), (200, 10, 10)), "JPEG")
    assert decode_upload(jpeg, "looks-like.txt")[1] == "JPEG, RGB, 8×6"
    with pytest.raises(UploadError, match="not an image"):
        decode_upload(b"<svg xmlns='http://www.w3.org/2000/svg'/>", "picture.png")


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    data = png_bytes(Image.new("RGB", (40, 20)), "JPEG", exif=exif.tobytes())
    image, was = decode_upload(data, "phone.jpg")
    assert was == "JPEG, RGB, 40×20" and image.size == (20, 40)


@pytest.mark.parametrize("mode, fmt", [("RGBA", "PNG"), ("P", "GIF"), ("CMYK", "JPEG"),
                                       ("L", "PNG"), ("I;16", "PNG"), ("1", "BMP")])
def test_modes_become_rgb(mode, fmt):
    image, was = decode_upload(png_bytes(Image.new(mode, (12, 10)), fmt), f"x.{fmt.lower()}")
    assert image.mode == "RGB" and image.size == (12, 10) and was == f"{fmt}, {mode}, 12×10"
