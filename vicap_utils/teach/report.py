"""Tables and figures more than one caller needs: caption lengths, learning curves, the score
table, the gallery's picks and its self-contained HTML page; `finish` saves any figure."""

import base64
import html
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd

from vicap_utils.data import CaptionSet, ImageId
from vicap_utils.images import load_rgb
from vicap_utils.metrics import SCORE_KEYS
from vicap_utils.ops.io import atomic_write_files, atomic_write_text
from vicap_utils.text import syllable_count

FONT = "DejaVu Sans"  # ships with matplotlib and has every Vietnamese letter


def caption_lengths(captions: Sequence[str], tokenizer) -> pd.DataFrame:
    """Per caption: its length in syllables and in model tokens (no special tokens)."""
    ids = tokenizer(list(captions), add_special_tokens=False)["input_ids"]
    return pd.DataFrame({"caption": list(captions),
                         "syllables": [syllable_count(c) for c in captions],
                         "tokens": [len(x) for x in ids]})


def plot_history(history: list[dict[str, Any]], out: str | Path | None = None):
    """Train/val loss and val CIDEr per epoch, side by side; saved as PNG when `out` is given."""
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train loss")
    ax1.plot(epochs, [h["val_loss"] for h in history], "s-", label="val loss")
    ax1.set(xlabel="epoch", ylabel="cross-entropy")
    ax2.plot(epochs, [h["val_CIDEr"] for h in history], "o-", color="tab:green")
    best = max(history, key=lambda h: h["val_CIDEr"] if h["val_CIDEr"] == h["val_CIDEr"] else -1)
    ax2.axvline(best["epoch"], color="grey", ls="--", lw=1, label=f"best: epoch {best['epoch']}")
    ax2.set(xlabel="epoch", ylabel="val CIDEr")
    return finish(fig, out)


def score_table(rows: Mapping[str, Mapping[str, Any]],
                columns: Sequence[str] = SCORE_KEYS) -> pd.DataFrame:
    """Scores (reference-based unless `columns` says, e.g. metrics.DIVERSITY_KEYS), one row per
    system: floats, NaN unless a number (bools too); a metric no system has is left out."""
    table = pd.DataFrame.from_dict(rows, orient="index").reindex(columns=list(columns))
    numbers = table.map(lambda v: isinstance(v, (int, float)) and not isinstance(v, bool))
    return table.where(numbers).astype(float).dropna(axis=1, how="all")


@dataclass
class GalleryItem:
    """One image with its references and the captions of each system."""
    image_id: ImageId
    path: Path
    references: list[str]
    captions: dict[str, str]
    cider: float
    group: str


def gallery_items(val: CaptionSet, images_dir: str | Path,
                  predictions: Mapping[str, Mapping[Any, str]], cider: Mapping[Any, float],
                  n_best: int = 3, n_worst: int = 3) -> list[GalleryItem]:
    """The n best and n worst images by per-image CIDEr, with every system's caption;
    `predictions` maps a system label to {image_id: caption}; ids compare as strings."""
    by_key = {str(i): i for i in val.images}
    scores = {str(k): float(v) for k, v in cider.items() if str(k) in by_key}
    ranked = sorted(scores, key=lambda k: (-scores[k], k))
    worst = [k for k in ranked[::-1] if k not in ranked[:n_best]][:n_worst]
    chosen = [(k, "best") for k in ranked[:n_best]] + [(k, "worst") for k in worst]
    refs = val.captions_by_image()
    preds = {label: {str(k): v for k, v in p.items()} for label, p in predictions.items()}
    return [GalleryItem(image_id=by_key[k], path=Path(images_dir) / val.images[by_key[k]].file_name,
                        references=refs[by_key[k]],
                        captions={label: p.get(k, "") for label, p in preds.items()},
                        cider=scores[k], group=group) for k, group in chosen]


def gallery_html(items: Sequence[GalleryItem], out: str | Path) -> Path:
    """A self-contained HTML page (images embedded as base64 JPEG) of the gallery items."""
    page = Template((resources.files("vicap_utils") / "assets" / "gallery.html").read_text("utf-8"))
    cards = "\n".join(_html_card(item) for item in items)
    return atomic_write_text(out, page.substitute(cards=cards))


def _html_card(item: GalleryItem, size: int = 384) -> str:
    """One figure of the HTML gallery, its image as base64 JPEG at most `size` pixels a side."""
    image = load_rgb(item.path)
    image.thumbnail((size, size))
    jpeg = io.BytesIO()
    image.save(jpeg, format="JPEG", quality=88)
    refs = "".join(f"<dd>{html.escape(r)}</dd>" for r in item.references)
    systems = "".join(f"<dt>{html.escape(label)}</dt><dd>{html.escape(text)}</dd>"
                      for label, text in item.captions.items())
    image_id, group = html.escape(str(item.image_id)), html.escape(item.group)
    return (f"<figure class=\"card {group}\"><img alt=\"image {image_id}\" "
            f"src=\"data:image/jpeg;base64,{base64.b64encode(jpeg.getvalue()).decode('ascii')}\">"
            f"<figcaption><b>{group}</b> · image {image_id} · CIDEr {item.cider:.2f}<dl>"
            f"<dt>references</dt>{refs}{systems}</dl></figcaption></figure>")


def finish(fig, out: str | Path | None, h_pad: float | None = None):
    """Grid and legend on each plot, tight layout, then the figure saved atomically when `out` is
    given (PNG unless its suffix names another format): a full disk never leaves half an image."""
    for ax in fig.axes:
        ax.grid(alpha=0.3)
        if ax.get_legend() is None and ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout(h_pad=h_pad)
    if out is not None:
        buffer = io.BytesIO()
        fig.savefig(buffer, format=Path(out).suffix[1:] or "png", dpi=110, bbox_inches="tight")
        atomic_write_files({Path(out): buffer.getvalue()})
    return fig
