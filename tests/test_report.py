"""report.py: length and metric tables, figures and the gallery pages; and the audit, length
and tokenizer tables notebooks 01 and 02 build in their own cells, each run here alone."""
from __future__ import annotations

import ast
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jupytext
import pandas as pd
import pytest
from PIL import Image

from vicap_utils.config import profile_config
from vicap_utils.data import Annotation, CaptionSet, ImageInfo
from vicap_utils.metrics import DIVERSITY_KEYS
from vicap_utils.teach import report
from vicap_utils.vocab import extend_tokenizer, stock_blip_tokenizer

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"

CAPTIONS = ["Một người đàn ông đang chơi bóng đá.", "Hai cô gái chơi bóng chuyền trên bãi biển.",
            "Cậu bé ném quả bóng rổ."]
SUMMARY = {"images_total": 10, "images_ok": 8, "annotations_total": 50, "annotations_ok": 41,
           "normalized_captions": 3,
           "rejects": {"missing_file": 1, "unreadable_image": 1, "empty_caption": 9}}


@pytest.fixture
def caption_set(tmp_path) -> CaptionSet:
    """Four coloured images, with 1–3 captions each, on disk."""
    images, anns = {}, []
    for i in range(4):
        name = f"im{i}.png"
        Image.new("RGB", (40 + 10 * i, 30), (60 * i, 100, 200)).save(tmp_path / name)
        images[i] = ImageInfo(i, name, 40 + 10 * i, 30)
        anns += [Annotation(len(anns), i, c) for c in CAPTIONS[: 1 + i % 3]]
    return CaptionSet(images, anns)


def cell(notebook: str, tag: str, **names: Any) -> dict[str, Any]:
    """Run the cell tagged `tag` of a notebook's `.py` twin alone on `names` (after the
    notebook's imports): its namespace, with the value its last line shows as `_`."""
    cells = [c for c in jupytext.read(NOTEBOOKS / f"{notebook}.py").cells
             if c.cell_type == "code"]
    imports = [node for c in cells for node in ast.parse(c.source).body
               if isinstance(node, (ast.Import, ast.ImportFrom))]
    body = ast.parse(next(c.source for c in cells if tag in c.metadata.get("tags", []))).body
    shown = body.pop() if isinstance(body[-1], ast.Expr) else None
    exec(compile(ast.Module([*imports, *body], type_ignores=[]), tag, "exec"), names)
    if shown is not None:
        names["_"] = eval(compile(ast.Expression(shown.value), tag, "eval"), names)
    return names


def test_audit_tables_count_kept_and_rejected():
    counts = cell("01_data_audit", "audit-counts", summary=SUMMARY)["_"]
    assert counts.loc["images"].tolist() == [10, 8, 2]
    assert counts.loc["captions", "rejected"] == 9
    reasons = cell("01_data_audit", "reject-reasons", summary=SUMMARY)["_"]
    assert reasons.loc["empty_caption", "count"] == 9


def test_reject_examples_keeps_a_few_per_reason(tmp_path):
    path = tmp_path / "coco" / "rejects.csv"
    path.parent.mkdir()
    rows = [("annotation", i, "a.jpg", "empty_caption", "") for i in range(5)]
    rows.append(("image", 9, "b.jpg", "missing_file", "not found"))
    pd.DataFrame(rows, columns=["kind", "id", "file", "reason", "detail"]).to_csv(path, index=False)
    examples = cell("01_data_audit", "reject-examples", planted_dir=tmp_path, audits={"coco": {}},
                    EXAMPLES_PER_REASON=2)["_"]
    assert examples["reason"].value_counts().to_dict() == {"empty_caption": 2, "missing_file": 1}


def test_image_table_and_plot(caption_set, tmp_path):
    shown = cell("01_data_audit", "image-stats", clean=caption_set, out=tmp_path)
    table, fig = shown["images_table"], shown["fig"]
    assert table["captions"].tolist() == [1, 2, 3, 1]
    assert table["width"].tolist() == [40, 50, 60, 70]
    sizes, per_image = fig.axes
    assert len(sizes.collections[0].get_offsets()) == 4
    assert [p.get_height() for p in per_image.patches] == [2, 1, 1]  # 1, 2 and 3 captions
    assert (tmp_path / "image_stats.png").stat().st_size > 1000


def test_caption_lengths_and_max_length(tmp_path):
    lengths = report.caption_lengths(CAPTIONS, stock_blip_tokenizer())
    assert lengths["syllables"].tolist() == [8, 9, 6]
    assert (lengths["tokens"] >= lengths["syllables"]).all()
    table = cell("02_caption_lengths", "percentiles", lengths=lengths)["percentiles"]
    assert table.loc["p100", "syllables"] == 9

    def recommended_max_length(tokens: list[int], q: float) -> int:
        return cell("02_caption_lengths", "max-length", lengths=pd.DataFrame({"tokens": tokens}),
                    PERCENTILE=q)["recommended"]

    assert recommended_max_length([5, 6, 7, 8, 30], q=100) == 32
    assert recommended_max_length([10] * 99 + [40], q=99) == 13
    fig = cell("02_caption_lengths", "plot-lengths", lengths=lengths, recommended=12,
               out=tmp_path, cfg=profile_config("mini"))["fig"]
    assert [sum(p.get_height() for p in ax.patches) for ax in fig.axes] == [3, 3]
    assert fig.axes[1].get_legend().get_texts()[0].get_text() == "max_length 12 − bos/eos"
    assert (tmp_path / "caption_lengths.png").is_file()


def test_tokenizer_audit_ranks_the_extended_tokenizer_first():
    stock = stock_blip_tokenizer()
    extended, _ = extend_tokenizer(stock, CAPTIONS)
    tokenizers = {"stock": stock, "extended": extended}
    table = cell("02_caption_lengths", "tokenizer-audit", tokenizers=tokenizers,
                 captions=CAPTIONS)["audit_table"]
    assert list(table.columns) == ["roundtrip_rate", "unk_rate", "tokens_per_caption"]
    assert table.loc["stock", "roundtrip_rate"] == 0.0
    assert table.loc["extended", "roundtrip_rate"] == 1.0
    examples = cell("02_caption_lengths", "decoded", tokenizers=tokenizers, captions=CAPTIONS[:1],
                    N_EXAMPLES=4)["_"]
    assert "người" in examples.loc[0, "extended"]
    assert "nguoi" in examples.loc[0, "stock"]


def test_config_table_flattens_sections():
    table = cell("03_finetune_lora", "config-table", cfg=profile_config("mini"))["_"]
    assert table.loc["train.epochs", "value"] == "12" and table.loc["train.lr", "value"] == "0.002"
    assert table.loc["model.base", "value"] == "'mini'"
    assert table.loc["profile", "value"] == "'mini'"
    assert table.loc["model.prompt", "value"] == "''"  # an empty setting is seen, not blank


def test_score_and_diversity_tables_drop_metrics_nobody_has(tmp_path):
    rows = {"a": {"CIDEr": 0.5, "BLEU-1": 0.4, "SPICE": None, "TTR": 0.3, "vocab_size": 12},
            "published": {"CIDEr": 0.7, "SPICE": 0.16}}
    scores = report.score_table(rows)
    assert list(scores.columns) == ["BLEU-1", "CIDEr", "SPICE"]
    assert math.isnan(scores.loc["a", "SPICE"]) and scores.loc["published", "SPICE"] == 0.16
    diversity = report.score_table(rows, DIVERSITY_KEYS)
    assert list(diversity.columns) == ["TTR", "vocab_size"]
    fig = cell("04_evaluate", "plot-scores", scores=scores, out=tmp_path)["fig"]
    bars = fig.axes[0].patches
    assert [b.get_height() for b in bars] == [0.4, 0.5, 0.0, 0.7]  # a, then published
    assert [b.get_hatch() for b in bars] == [None, None, "//", "//"]
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["BLEU-1", "CIDEr"]
    assert (tmp_path / "scores.png").is_file()


def test_cider_histogram(tmp_path):
    frames = {"x": pd.DataFrame({"cider": [0.0, 0.5, 1.2]}),
              "y": pd.DataFrame({"cider": [0.0, 0.0, 0.0]})}
    fig = cell("04_evaluate", "cider-hist", result=SimpleNamespace(per_image=frames),
               out=tmp_path)["fig"]
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["x", "y"]
    assert sum(p.get_height() for p in ax.patches) == 6  # three images per system
    assert (tmp_path / "cider_per_image.png").is_file()


def test_gallery_picks_best_and_worst_and_writes_png_and_html(caption_set, tmp_path):
    cider = {0: 0.1, 1: 2.0, 2: 0.9, "3": 0.0}  # ids compare as text
    preds = {"zero-shot": {i: "a ball" for i in range(4)},
             "fine-tuned": {str(i): f"quả bóng {i}" for i in range(4)}}
    items = report.gallery_items(caption_set, tmp_path, preds, cider, n_best=2, n_worst=2)
    assert [(it.image_id, it.group) for it in items] == [
        (1, "best"), (2, "best"), (3, "worst"), (0, "worst")]
    assert items[0].captions == {"zero-shot": "a ball", "fine-tuned": "quả bóng 1"}
    assert items[0].references == CAPTIONS[:2]
    (tmp_path / "eval").mkdir()
    fig = cell("05_gallery", "plot-gallery", items=items, run=tmp_path)["fig"]
    assert len(fig.axes) == 6 and [ax.get_title() for ax in fig.axes[:4]] == [
        f"{it.group} · image {it.image_id} · CIDEr {it.cider:.2f}" for it in items]
    with Image.open(tmp_path / "eval" / "gallery.png") as im:
        assert im.width > 400
    page = report.gallery_html(items, tmp_path / "gallery.html").read_text("utf-8")
    assert page.count("data:image/jpeg;base64,") == 4
    assert "quả bóng 1" in page and "Hai cô gái" in page
    assert 'src="im' not in page  # nothing refers to a file beside the page


def test_gallery_never_shows_an_image_twice(caption_set, tmp_path):
    items = report.gallery_items(caption_set, tmp_path, {"m": {}}, {0: 1.0, 1: 0.5},
                                 n_best=3, n_worst=3)
    assert sorted(it.image_id for it in items) == [0, 1]
