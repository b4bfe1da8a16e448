"""The ipywidgets captioning app of notebook 06 (display `build_app().widget`): models load
once, uploads are checked and decoded in memory, every failure is a message in the app."""

import functools
import html
import io
import os
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

import ipywidgets as w
from PIL import Image, ImageOps

from vicap_utils import captioner
from vicap_utils.captioner import Decoding
from vicap_utils.config import EvalConfig, ModelConfig
from vicap_utils.data import load_captions
from vicap_utils.images import load_rgb, to_rgb
from vicap_utils.ops import env
from vicap_utils.ops.adapters import WEIGHTS_FILE, is_adapter, load_model, model_ref
from vicap_utils.ops.checkpoint import run_references
from vicap_utils.ops.io import VicapError
from vicap_utils.toy.data import sample_images

THUMB_SIZE = (360, 270)
N_SAMPLES = 8
ImageSource = Path | Image.Image
MAX_UPLOAD_BYTES = 15 * 2**20
# Formats PIL may try: a short list keeps rarely used decoders away from untrusted bytes.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")

CSS = (resources.files("vicap_utils") / "assets" / "demo.css").read_text(encoding="utf-8")


@dataclass(frozen=True)
class ModelChoice:
    """One entry of the model menu: an adapter folder, or a base loaded without adapter."""
    label: str
    source: str  # adapter folder, or what load_model takes with no_adapter
    no_adapter: bool
    base: str  # the base model (an adapter's recorded one)


@dataclass
class CaptionResult:
    """What one model said about the current image, and how long it took."""
    model: str
    captions: list[tuple[str, float | None]]
    seconds: float
    load_seconds: float = 0.0


# ---------------------------------------------------------------- models and samples
def find_adapters(*roots: str | Path) -> list[Path]:
    """Adapter folders under `roots`, newest first; hidden (temporary) folders are skipped."""
    found: set[Path] = set()
    for root in roots:
        for folder, dirs, _ in os.walk(root):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            if is_adapter(folder):
                found.add(Path(folder))
    return sorted(found, key=lambda f: (f / WEIGHTS_FILE).stat().st_mtime, reverse=True)


def model_choices(adapters: list[Path], root: Path, default_base: str) -> list[ModelChoice]:
    """Adapters (newest first), then each base alone: the adapters' bases (loaded through an
    adapter's folder, which records it) and `default_base`."""
    choices, bases = [], {}
    for folder in adapters:
        stamp = f"{datetime.fromtimestamp((folder / WEIGHTS_FILE).stat().st_mtime):%d %b %H:%M}"
        shown = folder.relative_to(root) if folder.is_relative_to(root) else folder
        try:
            base = model_ref(str(folder)).model.base
        except VicapError:  # unreadable vicap.json
            base = "unknown"
        choices.append(ModelChoice(f"adapter: {shown} · {stamp}", str(folder), False, base))
        bases.setdefault(base, str(folder))
    bases.setdefault(default_base, default_base)
    return choices + [ModelChoice(f"base only: {name}", source, True, name)
                      for name, source in bases.items()]


def partner(choice: ModelChoice, choices: list[ModelChoice]) -> ModelChoice | None:
    """What to compare with: an adapter's base alone, or the newest adapter on a base."""
    return next((c for c in choices if c.no_adapter != choice.no_adapter
                 and c.base == choice.base), None)


def run_samples(adapter: Path) -> dict[str, ImageSource]:
    """Validation images of the run an adapter belongs to (RUN/data/val.json), if present."""
    try:
        val_file, folder = run_references(adapter.parent)
        infos = list(load_captions(val_file).images.values())[:N_SAMPLES]
    except VicapError:  # not a training run folder (e.g. an attached adapter): drawn samples
        return {}
    paths = [folder / info.file_name for info in infos]
    return {f"validation: {p.name}": p for p in paths if p.is_file()}


def open_sample(source: ImageSource) -> Image.Image:
    """A sample as RGB (files here come from the run folder, never from the user)."""
    return source if isinstance(source, Image.Image) else load_rgb(source)


def png_thumbnail(image: Image.Image) -> bytes:
    """PNG bytes of the image scaled (up or down) to fit `THUMB_SIZE`, for display."""
    scale = min(THUMB_SIZE[0] / image.width, THUMB_SIZE[1] / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    buf = io.BytesIO()
    image.resize(size, Image.Resampling.LANCZOS).save(buf, "PNG")
    return buf.getvalue()


# ---------------------------------------------------------------- uploads
class UploadError(VicapError):
    """An upload the demo refuses; the message is meant for the person who sent it."""


def decode_upload(data: bytes, name: str = "upload") -> tuple[Image.Image, str]:
    """Check and decode uploaded bytes into an upright RGB image and what it was before
    ("JPEG, CMYK, 40×20": format, mode, stored size), or raise UploadError."""
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
                return (to_rgb(ImageOps.exif_transpose(im)),
                        f"{im.format or '?'}, {im.mode}, {im.width}×{im.height}")
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


# ---------------------------------------------------------------- HTML
def card_html(result: CaptionResult, dec: Decoding) -> str:
    """One result card: model, caption, timing and, with beam search, every beam's score."""
    how = (f"sampling, T={dec.temperature:g}, top-p={dec.top_p:g}" if dec.do_sample
           else f"beam {dec.num_beams}")
    load = f" · model loaded in {result.load_seconds:.2f} s" if result.load_seconds else ""
    rows = ""
    if len(result.captions) > 1:
        rows = "".join(
            f"<tr><td>{i}</td><td>{html.escape(text)}</td>"
            f"<td class='score'>{'' if score is None else f'{score:.3f}'}</td></tr>"
            for i, (text, score) in enumerate(result.captions, 1))
        rows = (f"<table class='vicap-beams'><tr><th>#</th><th>beam</th>"
                f"<th class='score'>log-prob</th></tr>{rows}</table>")
    return (f"<div class='vicap-card'><div class='vicap-model'>{html.escape(result.model)}</div>"
            f"<div class='vicap-caption'>{html.escape(result.captions[0][0])}</div>"
            f"<div class='vicap-meta'>{result.seconds:.2f} s · {how} · max "
            f"{dec.max_new_tokens} tokens{load}</div>{rows}</div>")


def message_html(kind: str, text: str) -> str:
    """A status line: kind is busy, error, note or ok."""
    spin = "<span class='vicap-spin'></span>" if kind == "busy" else ""
    return f"<div class='vicap-{kind}'>{spin}{html.escape(text)}</div>"


def train_command(root: Path) -> str:
    """The command that trains the mini adapter where this app looks for adapters."""
    return f"vicap train --profile mini --out {root / 'runs' / 'mini'}"


def train_hint(root: Path) -> str:
    """What to do when no adapter was found, as HTML."""
    return (f"<div class='vicap-note'>No trained adapter found under "
            f"<code>{html.escape(str(root))}</code>, so only the base model is offered (it "
            f"writes English). To train a Vietnamese adapter (minutes on a CPU) run "
            f"<code>{html.escape(train_command(root))}</code> or notebook 03_finetune_lora, "
            "then run this app's cell again.</div>")


# ---------------------------------------------------------------- the app
def _guarded(method: Callable) -> Callable:
    """Run a widget callback; show any failure as a message instead of a traceback."""

    @functools.wraps(method)
    def run(self: "CaptionApp", *args: Any) -> None:
        try:
            method(self, *args)
        except Exception as exc:  # the app must stay usable whatever went wrong
            self.fail(str(exc) or type(exc).__name__)
        finally:
            self.set_busy(False)

    return run


class CaptionApp:
    """The captioning app; display `.widget`. Callbacks are plain methods, easy to test."""

    def __init__(self, choices: list[ModelChoice], samples: dict[str, ImageSource],
                 root: Path, loader: Callable) -> None:
        self.root, self.choices, self.samples, self.loader = root, choices, samples, loader
        self.models: dict[tuple[str, bool], Any] = {}
        self.image: Image.Image | None = None
        self.image_name = self.error = ""
        self.results: list[CaptionResult] = []
        self._build_widgets("" if any(not c.no_adapter for c in choices) else train_hint(root))
        if samples:
            self.sample.value = next(iter(samples))

    def _build_widgets(self, notice: str) -> None:
        """Create and wire the widgets: controls left, image and captions right."""
        wide, style = w.Layout(width="380px"), {"description_width": "128px"}

        def slider(kind: type, value: float, low: float, high: float, step: float,
                   label: str) -> w.Widget:
            return kind(value, min=low, max=high, step=step, description=label, layout=wide,
                        style=style)

        self.upload = w.FileUpload(accept="image/*", multiple=False, description="Upload image",
                                   layout=wide)
        self.sample = w.Dropdown(options=[("—", "")] + [(k, k) for k in self.samples],
                                 description="or a sample", layout=wide, style=style)
        self.model = w.Dropdown(options=[(c.label, i) for i, c in enumerate(self.choices)],
                                value=0, description="Model", layout=wide, style=style)
        self.beams = slider(w.IntSlider, EvalConfig.num_beams, 1, 8, 1, "Beam size")
        self.max_tokens = slider(w.IntSlider, EvalConfig.max_new_tokens, 5, 60, 1, "Max new tokens")
        self.sampling = w.Checkbox(False, description="Sampling instead of beam search",
                                   indent=False, layout=wide)
        self.temperature = slider(w.FloatSlider, 1.0, 0.1, 2.0, 0.05, "Temperature")
        self.top_p = slider(w.FloatSlider, 0.9, 0.05, 1.0, 0.05, "Top-p")
        self.repetition = slider(w.FloatSlider, 1.0, 1.0, 2.0, 0.05, "Repetition penalty")
        self.button = w.Button(description="Caption", button_style="primary", icon="pencil",
                               layout=w.Layout(width="120px"))
        self.compare_button = w.Button(description="Compare base vs adapter", icon="columns",
                                       layout=w.Layout(width="254px"))
        self.notice, self.status, self.output = w.HTML(notice), w.HTML(""), w.HTML("")
        self.preview = w.Image(format="png", layout=w.Layout(max_width=f"{THUMB_SIZE[0]}px"))
        self.upload.observe(self.on_upload, names="value")
        self.sample.observe(self.on_sample, names="value")
        w.dlink((self.sampling, "value"), (self.temperature, "disabled"), lambda on: not on)
        w.dlink((self.sampling, "value"), (self.top_p, "disabled"), lambda on: not on)
        w.dlink((self.sampling, "value"), (self.beams, "disabled"))  # sampling: one caption
        self.button.on_click(self.caption)
        self.compare_button.on_click(self.compare)
        controls = w.VBox([
            w.HTML("<b>1 · Image</b>"), self.upload, self.sample,
            w.HTML("<b>2 · Model</b>"), self.model,
            w.HTML("<b>3 · Decoding</b>"), self.beams, self.max_tokens, self.sampling,
            self.temperature, self.top_p, self.repetition,
            w.HBox([self.button, self.compare_button]),
        ], layout=w.Layout(width="390px", min_width="390px"))
        shown = w.VBox([self.status, self.preview, self.output],
                       layout=w.Layout(flex="1", padding="0 0 0 16px"))
        title = w.HTML(f"<style>{CSS}</style><div class='vicap-title'><h2>Chú thích ảnh tiếng "
                       "Việt</h2><div class='vicap-sub'>BLIP + LoRA · pick an image and a model, "
                       "then press Caption</div></div>")
        self.widget = w.VBox([title, self.notice, w.HBox([controls, shown])],
                             layout=w.Layout(padding="4px"))
        self.widget.add_class("vicap-app")

    # -- state shown to the user
    def set_busy(self, busy: bool, text: str = "") -> None:
        """Disable the buttons and show a spinner line while working."""
        self.button.disabled = self.compare_button.disabled = busy
        if busy:
            self.status.value = message_html("busy", text)

    def fail(self, text: str) -> None:
        """Show an error message (and remember it for tests)."""
        self.error = text
        self.status.value = message_html("error", text)

    def set_image(self, image: Image.Image, name: str) -> None:
        """Make `image` the one to caption and show it."""
        self.image, self.image_name = image, name
        self.preview.value = png_thumbnail(image)
        self.output.value = self.error = ""
        self.results = []
        self.status.value = message_html("ok", f"{name} · {image.width}×{image.height}")

    # -- callbacks
    @_guarded
    def on_upload(self, change: dict | None = None) -> None:
        """Decode the uploaded bytes in memory; a bad file gives a message, not a traceback."""
        if not self.upload.value:
            return
        name = self.upload.value[0]["name"]
        self.image, self.preview.value, self.output.value = None, b"", ""
        image, was = decode_upload(bytes(self.upload.value[0]["content"]), name)
        self.set_image(image, f"{name} ({was})")
        self.sample.value = ""

    @_guarded
    def on_sample(self, change: dict | None = None) -> None:
        """Show the chosen sample image."""
        if self.sample.value:
            self.set_image(open_sample(self.samples[self.sample.value]), self.sample.value)

    @property
    def choice(self) -> ModelChoice:
        """The selected model entry."""
        return self.choices[self.model.value]

    @property
    def dec(self) -> Decoding:
        """Decoding settings from the controls; beam search returns every beam to list."""
        beams = 1 if self.sampling.value else self.beams.value
        return Decoding(num_beams=beams, max_new_tokens=self.max_tokens.value,
                        do_sample=self.sampling.value, temperature=self.temperature.value,
                        top_p=self.top_p.value, repetition_penalty=self.repetition.value,
                        num_return_sequences=beams)

    def load(self, choice: ModelChoice) -> tuple[Any, float]:
        """The cached model for an entry (loaded on first use) and the seconds loading took."""
        key = (choice.source, choice.no_adapter)
        if key in self.models:
            return self.models[key], 0.0
        self.set_busy(True, f"Loading {choice.label} (first use only) …")
        start = time.perf_counter()
        self.models[key] = self.loader(choice.source, no_adapter=choice.no_adapter)
        return self.models[key], time.perf_counter() - start

    def run(self, choices: list[ModelChoice]) -> list[CaptionResult]:
        """Caption the current image with each model and show the cards side by side."""
        if self.image is None:
            raise ValueError("Pick a sample image or upload one first.")
        dec, results = self.dec, []
        for choice in choices:
            loaded, load_seconds = self.load(choice)
            self.set_busy(True, f"Captioning with {choice.label} …")
            start = time.perf_counter()
            captions = captioner.caption(loaded, images=[self.image], dec=dec)[0]
            results.append(CaptionResult(choice.label, captions, time.perf_counter() - start,
                                         load_seconds))
        self.results, self.error = results, ""
        cards = "".join(card_html(r, dec) for r in results)
        self.output.value = f"<div class='vicap-cards'>{cards}</div>"
        total = sum(r.seconds for r in results)
        self.status.value = message_html("ok", f"{self.image_name} · done in {total:.2f} s")
        return results

    @_guarded
    def caption(self, button: Any = None) -> None:
        """Caption button: the selected model."""
        self.set_busy(True, "Working …")
        self.run([self.choice])

    @_guarded
    def compare(self, button: Any = None) -> None:
        """Compare button: the adapter and its base model alone, side by side."""
        self.set_busy(True, "Working …")
        other = partner(self.choice, self.choices)
        if other is None:
            raise ValueError("No adapter to compare with; train one with "
                             f"{train_command(self.root)}")
        self.run([self.choice, other] if other.no_adapter else [other, self.choice])


def build_app(output_dir: str | Path | None = None, *, base: str = ModelConfig.base,
              loader: Callable = load_model) -> CaptionApp:
    """The app over the adapters under `output_dir` (default: the environment's) and
    /kaggle/input (an attached notebook's output); `base` is offered alone."""
    root = Path(output_dir) if output_dir else env.output_dir()
    adapters = find_adapters(root, env.kaggle_input())  # a missing folder finds none
    samples = (run_samples(adapters[0]) if adapters else {}) or sample_images(N_SAMPLES)
    return CaptionApp(model_choices(adapters, root, base), samples, root, loader)
