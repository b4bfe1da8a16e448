"""Notebook 03's hand-written parts: its `LoRALinear` equals peft's layer and its greedy loop
equals `generate(num_beams=1)` (the notebook's own cells, run on the trained `mini` adapter),
and every section before the full run prints the same when run twice in a row."""
from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jupytext
import pytest
import torch
from nbclient import NotebookClient

from vicap_utils import captioner
from vicap_utils.config import load_config
from vicap_utils.data import load_captions
from vicap_utils.images import load_rgb
from vicap_utils.ops.adapters import load_model
from vicap_utils.ops.checkpoint import run_references
from vicap_utils.prepare import prepare
from vicap_utils.vocab import special_ids

KERNEL = "python3"  # the venv's own kernelspec, as in test_notebooks
NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "03_finetune_lora.py"
WIDGET = "application/vnd.jupyter.widget-view+json"  # tqdm.auto's progress bar in a kernel
QUICK = {"HAND_STEPS": 4, "VAL_CAPTIONS": 32,
         "OVERRIDES": ["data.synthetic_images=60", "train.batch_size=8", "eval.max_new_tokens=8"]}


def tagged(tag: str) -> str:
    """The source of the notebook's code cell tagged `tag`."""
    cells = jupytext.read(NOTEBOOK).cells
    (source,) = [c.source for c in cells if tag in c.metadata.get("tags", [])]
    return source


@pytest.fixture(scope="module")
def trained(mini_run: Path) -> dict[str, Any]:
    """The trained `mini` adapter (peft layers in place, `B` learnt) and one validation image's
    vision features: the names the notebook's cells use."""
    cap = load_model(str(mini_run / "best"))
    captions, images = run_references(mini_run, "val")
    first = next(iter(load_captions(captions).images.values()))
    pixels = captioner.pixel_values(cap, [load_rgb(images / first.file_name)])
    bos, eos, _ = special_ids(cap.tokenizer)
    return {"torch": torch, "captioner": captioner, "cap": cap, "model": cap.model,
            "cfg": load_config("mini"), "device": "cpu", "prefix": [], "bos": bos, "eos": eos,
            "name": "text_decoder.bert.encoder.layer.0.attention.self.query",
            "lora": cap.model.peft_config["default"],
            "val_images": captioner.image_features(cap.model, pixels),
            "examples": SimpleNamespace(cached=True, image_kind="features")}


@pytest.mark.slow
def test_lora_linear_by_hand_equals_peft_layer(trained: dict[str, Any]):
    ns = dict(trained)
    exec(tagged("lora-by-hand"), ns)
    exec(tagged("lora-vs-peft"), ns)
    hand, peft_layer, x = ns["hand"], ns["peft_layer"], ns["x"]
    assert ns["same"] is True
    assert hand.B.abs().sum() > 0  # a learnt update, not B = 0
    assert not torch.allclose(peft_layer(x), peft_layer.base_layer(x), atol=1e-3)
    assert hand.linear is peft_layer.base_layer and not hand.linear.weight.requires_grad


@pytest.mark.slow
def test_greedy_loop_equals_generate(trained: dict[str, Any]):
    ns = dict(trained)
    exec(tagged("greedy"), ns)
    ids = ns["ids"][0].tolist()
    assert ids[0] == ns["bos"] and ids[-1] == ns["eos"]  # stopped at [SEP], not at the limit
    assert 3 < len(ids) <= ns["cfg"].eval.max_new_tokens + 1
    assert ns["greedy"] == ns["generated"][0][0][0] and ns["greedy"].strip()


def sections(nb: Any) -> list[tuple[str, list[int]]]:
    """(title, code cell indices) of each section before the "Stop here" marker."""
    out: list[tuple[str, list[int]]] = [("set-up", [])]
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown" and cell.source.startswith("## "):
            if "Stop here" in cell.source:
                return out
            out.append((cell.source.splitlines()[0], []))
        elif cell.cell_type == "code":
            out[-1][1].append(i)
    raise AssertionError("no '## … Stop here' marker in notebook 03")


def printed(cell: Any) -> str:
    """What a cell printed and displayed as text, progress bars (stderr, widgets) left out."""
    return "".join(out["text"] if out["output_type"] == "stream" else
                   out["data"].get("text/plain", "") for out in cell.outputs
                   if out.get("name") == "stdout" or
                   (out["output_type"] != "stream" and WIDGET not in out.get("data", {})))


@pytest.mark.slow
def test_every_section_prints_the_same_when_run_twice(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch):
    nb = jupytext.read(NOTEBOOK)
    nb.cells[0].source += "".join(f"\n{k} = {v!r}" for k, v in QUICK.items())
    parts = sections(nb)
    full_run = [i for i, c in enumerate(nb.cells) if "train_on_every_gpu(cfg" in c.source]
    assert full_run and min(full_run) > max(parts[-1][1]), "the full run comes after the marker"
    assert any(title == "## Exercises" for title, _ in parts), "exercises before the marker"
    assert len(parts) >= 10 and all(cells for _, cells in parts)
    output = tmp_path / "outputs"
    prepare(load_config("mini", overrides=QUICK["OVERRIDES"]), output / "data" / "mini")  # 01
    client = NotebookClient(nb, kernel_name=KERNEL, resources={"metadata": {"path": str(tmp_path)}})
    for key, value in {"VICAP_PROFILE": "mini", "VICAP_OUTPUT": str(output),
                       "MPLBACKEND": "Agg"}.items():
        monkeypatch.setenv(key, value)  # the kernel inherits them
    with client.setup_kernel():
        for title, cells in parts:
            once = [printed(copy.deepcopy(client.execute_cell(nb.cells[i], i))) for i in cells]
            again = [printed(client.execute_cell(nb.cells[i], i)) for i in cells]
            assert again == once, title
