"""Tables and figures the notebooks show: data audit, caption lengths, tokenizers, metrics,
and the caption gallery (PNG grid and a self-contained HTML page)."""

import base64
import html
import io
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from vicap_utils.data import CaptionSet, ImageId
from vicap_utils.images import load_rgb
from vicap_utils.metrics import DIVERSITY_KEYS, SCORE_KEYS
from vicap_utils.ops.io import atomic_write_files, atomic_write_text
from vicap_utils.text import syllable_count
from vicap_utils.vocab import tokenizer_report

FONT = "DejaVu Sans"  # ships with matplotlib and has every Vietnamese letter


def audit_counts(summary: Mapping[str, Any]) -> pd.DataFrame:
    """Images and captions: total, kept, rejected, from an audit.json summary."""
    rows = {"images": (summary["images_total"], summary["images_ok"]),
            "captions": (summary["annotations_total"], summary["annotations_ok"])}
    return pd.DataFrame([{"what": k, "total": t, "kept": ok, "rejected": t - ok}
                         for k, (t, ok) in rows.items()]).set_index("what")


def reject_reasons(summary: Mapping[str, Any]) -> pd.DataFrame:
    """One row per reject reason code with its count (zeros included, so every check shows)."""
    return pd.DataFrame({"count": summary["rejects"]}).rename_axis("reason")


def reject_examples(rejects_csv: str | Path, per_reason: int = 2) -> pd.DataFrame:
    """The first few rows of rejects.csv for each reason."""
    frame = pd.read_csv(rejects_csv, dtype=str, keep_default_na=False)
    return frame.groupby("reason", sort=False).head(per_reason).reset_index(drop=True)


def image_table(cs: CaptionSet) -> pd.DataFrame:
    """One row per image: id, width, height and its number of captions."""
    per_image = cs.captions_by_image()
    return pd.DataFrame([{"image_id": i, "width": info.width, "height": info.height,
                          "captions": len(per_image[i])} for i, info in cs.images.items()])


def plot_image_stats(images: pd.DataFrame, out: str | Path | None = None):
    """Image sizes (scatter of width × height) and the captions-per-image histogram."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.scatter(images["width"], images["height"], s=8, alpha=0.5)
    ax1.set(xlabel="width (px)", ylabel="height (px)", title="image sizes")
    counts = images["captions"].value_counts().sort_index()
    ax2.bar(counts.index.astype(str), counts.values, color="tab:orange")
    ax2.set(xlabel="captions per image", ylabel="images", title="captions per image")
    return finish(fig, out)


def caption_lengths(captions: Sequence[str], tokenizer) -> pd.DataFrame:
    """Per caption: its length in syllables and in model tokens (no special tokens)."""
    ids = tokenizer(list(captions), add_special_tokens=False)["input_ids"]
    return pd.DataFrame({"caption": list(captions),
                         "syllables": [syllable_count(c) for c in captions],
                         "tokens": [len(x) for x in ids]})


def length_percentiles(lengths: pd.DataFrame,
                       qs: Sequence[int] = (50, 90, 95, 99, 100)) -> pd.DataFrame:
    """Percentiles of the syllable and token lengths (rows: p50 … p100, plus the mean)."""
    cols = ["syllables", "tokens"]
    table = lengths[cols].quantile([q / 100 for q in qs]).set_axis([f"p{q}" for q in qs])
    table.loc["mean"] = lengths[cols].mean()
    return table.round(1)


def recommended_max_length(token_lengths: Sequence[int], q: float = 99, specials: int = 2) -> int:
    """The q-th percentile of caption token lengths (rounded up) plus bos and eos."""
    return int(np.ceil(np.percentile(np.asarray(token_lengths), q))) + specials


def plot_lengths(lengths: pd.DataFrame, max_length: int | None = None,
                 out: str | Path | None = None):
    """Histograms of caption length in syllables and in tokens (with the chosen max_length)."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, col, color in ((ax1, "syllables", "tab:blue"), (ax2, "tokens", "tab:purple")):
        values = lengths[col]
        ax.hist(values, bins=np.arange(values.min(), values.max() + 2) - 0.5, color=color)
        ax.set(xlabel=f"caption length ({col})", ylabel="captions")
    if max_length is not None:
        ax2.axvline(max_length - 2, color="grey", ls="--", lw=1,
                    label=f"max_length {max_length} − bos/eos")
    return finish(fig, out)


def tokenizer_audit(tokenizers: Mapping[str, Any], captions: Sequence[str]) -> pd.DataFrame:
    """Per tokenizer: share of captions surviving encode→decode, [UNK] rate, tokens/caption."""
    rows = {name: tokenizer_report(tok, list(captions)).as_dict()
            for name, tok in tokenizers.items()}
    columns = ["roundtrip_rate", "unk_rate", "tokens_per_caption"]
    return pd.DataFrame.from_dict(rows, orient="index")[columns]


def decoded_examples(tokenizers: Mapping[str, Any], captions: Sequence[str]) -> pd.DataFrame:
    """Each caption as written, then as each tokenizer gives it back after encode→decode."""
    return pd.DataFrame([{"caption": caption} | {
        name: tok.decode(tok(caption, add_special_tokens=False)["input_ids"])
        for name, tok in tokenizers.items()} for caption in captions])


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


def config_table(config: Mapping[str, Any]) -> pd.DataFrame:
    """A nested config dict as one row per dotted key (section.key → value)."""
    rows = []
    for section, values in config.items():
        if isinstance(values, Mapping):
            rows += [{"key": f"{section}.{k}", "value": repr(v) if isinstance(v, str) else v}
                     for k, v in values.items()]
        else:
            rows.append({"key": section, "value": values})
    return pd.DataFrame(rows).set_index("key")


def score_table(rows: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Reference-based scores, one row per system; a metric no system has is left out."""
    return _numeric_table(rows, SCORE_KEYS)


def diversity_table(rows: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Diversity of each system's captions (TTR, repetition, distinct-n, vocabulary, length)."""
    return _numeric_table(rows, DIVERSITY_KEYS)


def plot_scores(table: pd.DataFrame, metrics: Sequence[str] = ("BLEU-1", "BLEU-4", "METEOR",
                                                               "METEOR-vi", "ROUGE-L", "CIDEr"),
                out: str | Path | None = None):
    """Grouped bars: one group per metric, one bar per system (missing values left out);
    published rows are hatched, as they were not measured here."""
    cols = [m for m in metrics if m in table.columns]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(cols)), 3.8))
    width = 0.8 / max(len(table), 1)
    x = np.arange(len(cols))
    for k, (label, row) in enumerate(table[cols].iterrows()):
        ax.bar(x + k * width - 0.4 + width / 2, row.fillna(0).values, width, label=label,
               hatch="//" if "published" in str(label) else None)
    ax.set(xticks=x, xticklabels=cols, ylabel="score")
    ax.legend(fontsize=8)
    return finish(fig, out)


def plot_cider_hist(per_image: Mapping[str, pd.DataFrame], out: str | Path | None = None):
    """Histogram of per-image CIDEr for each system (each scored against the whole set)."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    top = max(float(f["cider"].max()) for f in per_image.values())
    bins = np.linspace(0, max(top, 1e-6), 30)
    for label, frame in per_image.items():
        ax.hist(frame["cider"], bins=bins, alpha=0.6, label=label)
    ax.set(xlabel="per-image CIDEr (document frequencies from the whole evaluated set)",
           ylabel="images")
    return finish(fig, out)


@dataclass
class GalleryItem:
    """One image with its references and the captions of each system."""
    image_id: ImageId
    path: Path
    references: list[str]
    captions: dict[str, str] = field(default_factory=dict)
    cider: float | None = None
    group: str = ""


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


def plot_gallery(items: Sequence[GalleryItem], out: str | Path | None = None,
                 columns: int = 3, n_refs: int = 2, wrap: int = 50):
    """A grid: each image above its references and each system's caption (DejaVu Sans)."""
    rows = max(1, -(-len(items) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 6.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, item in zip(axes.flat, items):
        ax.imshow(load_rgb(item.path))
        ax.set_title(f"{item.group} · image {item.image_id} · CIDEr {item.cider:.2f}",
                     fontsize=9, family=FONT)
        lines = [f"ref: {r}" for r in item.references[:n_refs]]
        lines += [f"{label}: {text}" for label, text in item.captions.items()]
        text = "\n".join(textwrap.fill(line, wrap, subsequent_indent="   ") for line in lines)
        ax.text(0, -0.04, text, transform=ax.transAxes, va="top", ha="left", fontsize=8,
                family=FONT)
    return finish(fig, out, h_pad=3)


def gallery_html(items: Sequence[GalleryItem], out: str | Path,
                 title: str = "Vietnamese captions: zero-shot vs fine-tuned") -> Path:
    """A self-contained HTML page (images embedded as base64 JPEG) of the gallery items."""
    page = Template((resources.files("vicap_utils") / "assets" / "gallery.html").read_text("utf-8"))
    cards = "\n".join(_html_card(item) for item in items)
    return atomic_write_text(out, page.substitute(title=html.escape(title), cards=cards))


def _html_card(item: GalleryItem, size: int = 384) -> str:
    """One figure of the HTML gallery, its image as base64 JPEG at most `size` pixels a side."""
    image = load_rgb(item.path)
    image.thumbnail((size, size))
    jpeg = io.BytesIO()
    image.save(jpeg, format="JPEG", quality=88)
    refs = "".join(f"<dd>{html.escape(r)}</dd>" for r in item.references)
    systems = "".join(f"<dt>{html.escape(label)}</dt><dd>{html.escape(text)}</dd>"
                      for label, text in item.captions.items())
    score = "" if item.cider is None else f" · CIDEr {item.cider:.2f}"
    image_id, group = html.escape(str(item.image_id)), html.escape(item.group)
    return (f"<figure class=\"card {group}\"><img alt=\"image {image_id}\" "
            f"src=\"data:image/jpeg;base64,{base64.b64encode(jpeg.getvalue()).decode('ascii')}\">"
            f"<figcaption><b>{group}</b> · image {image_id}{score}<dl><dt>references</dt>{refs}"
            f"{systems}</dl></figcaption></figure>")


def _numeric_table(rows: Mapping[str, Mapping[str, Any]], columns: Sequence[str]) -> pd.DataFrame:
    """Rows of `columns` as floats (NaN unless a number; bools too); all-NaN columns dropped."""
    table = pd.DataFrame.from_dict(rows, orient="index").reindex(columns=list(columns))
    numbers = table.map(lambda v: isinstance(v, (int, float)) and not isinstance(v, bool))
    return table.where(numbers).astype(float).dropna(axis=1, how="all")


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
