"""The notebooks: each `.py` twin runs headless on `mini` in order 01→06 and writes what it
promises (06 also runs as a web page in test_demo_browser); every notebook opens with goals,
prerequisites and timings and ends with exercises whose check cells say "not done yet" on the
stubs and pass on the solutions (notebooks/solutions/, run after their notebooks); committed
`.ipynb` files match their twins and carry no outputs."""
from __future__ import annotations

import contextlib
import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jupytext
import pandas as pd
import pytest

from vicap_utils.audit import REASONS

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
ALL = ["01_data_audit", "02_caption_lengths", "03_finetune_lora", "03b_scst", "04_evaluate",
       "05_gallery", "06_caption_demo"]
SOLUTIONS = {name: f"solutions/{name}_solutions" for name in ALL}
ORDER = [step for name in ALL for step in (name, SOLUTIONS[name])]  # each followed by its answers
PARAMETERS: dict[str, dict[str, Any]] = {"03_finetune_lora": {"OVERRIDES": ["train.epochs=2"]},
                                         "03b_scst": {"MAX_STEPS": 4}}
TWINS = sorted(NOTEBOOKS.rglob("*.ipynb"))
DONE, NOT_YET = "✅", "❌"
KERNEL = "python3"  # the venv's own kernelspec (share/jupyter/kernels/python3)
VIETNAMESE = set("ăâđêôơưàáảãạằắẳẵặầấẩẫậèéẻẽẹềếểễệìíỉĩịòóỏõọồốổỗộờớởỡợùúủũụừứửữựỳýỷỹỵ")


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    """Set environment variables (which the kernel inherits) for the block."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def execute(name: str, output: Path, workdir: Path, parameters: dict[str, Any]) -> dict:
    """Convert a `.py` twin to a notebook and run it with papermill on `mini`."""
    import papermill

    workdir.mkdir(parents=True, exist_ok=True)
    stem = Path(name).name
    source = workdir / f"{stem}.ipynb"
    jupytext.write(jupytext.read(NOTEBOOKS / f"{name}.py"), source)
    with environment(VICAP_PROFILE="mini", VICAP_OUTPUT=str(output)):
        return papermill.execute_notebook(
            str(source), str(workdir / f"{stem}.out.ipynb"), parameters=parameters,
            kernel_name=KERNEL, cwd=str(workdir), progress_bar=False)


class Runner:
    """Runs the notebooks once each, in order, into one shared output folder."""

    def __init__(self, root: Path) -> None:
        self.output, self.workdir = root / "outputs", root / "work"
        self.done: dict[str, dict] = {}

    def run(self, name: str) -> dict:
        """Execute every notebook up to `name` not yet run; return `name`'s executed notebook."""
        for step in ORDER[: ORDER.index(name) + 1]:
            if step not in self.done:
                self.done[step] = execute(step, self.output, self.workdir,
                                          PARAMETERS.get(step, {}))
        return self.done[name]

    @property
    def data(self) -> Path:
        return self.output / "data" / "mini"

    @property
    def run_dir(self) -> Path:
        return self.output / "runs" / "mini"


@pytest.fixture(scope="session")
def runner(tmp_path_factory) -> Runner:
    return Runner(tmp_path_factory.mktemp("notebooks"))


def outputs_text(nb: dict) -> str:
    """All text a notebook printed or displayed."""
    parts = []
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            parts.append("".join(out.get("text", "")))
            parts.append("".join(out.get("data", {}).get("text/plain", "")))
    return "\n".join(parts)


# ---------------------------------------------------------------- twins and clean notebooks


def test_every_notebook_and_its_solutions_have_their_twins():
    ipynb = {str(p.relative_to(NOTEBOOKS).with_suffix("")) for p in TWINS}
    py = {str(p.relative_to(NOTEBOOKS).with_suffix("")) for p in NOTEBOOKS.rglob("*.py")}
    assert ipynb == py == set(ALL) | set(SOLUTIONS.values())


@pytest.mark.parametrize("path", TWINS, ids=lambda p: p.stem)
def test_ipynb_matches_py_twin(path: Path):
    def cells(p: Path) -> list[tuple[str, str, list]]:
        nb = jupytext.read(p)
        return [(c.cell_type, c.source.strip(), c.metadata.get("tags", [])) for c in nb.cells]

    assert cells(path) == cells(path.with_suffix(".py"))


@pytest.mark.parametrize("path", TWINS, ids=lambda p: p.stem)
def test_committed_ipynb_has_no_outputs(path: Path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert not cell.get("outputs"), cell["source"]
            assert cell.get("execution_count") is None, cell["source"]


@pytest.mark.parametrize("name", ALL)
def test_notebook_opens_with_parameters_then_environment(name: str):
    cells = [c for c in jupytext.read(NOTEBOOKS / f"{name}.py").cells if c.cell_type == "code"]
    assert "parameters" in cells[0].metadata.get("tags", [])
    assert 'PROFILE = "auto"' in cells[0].source
    assert "setup(" in cells[1].source  # prints versions and hardware
    assert "wrote(" in cells[-1].source


@pytest.mark.parametrize("name", ALL)
def test_notebook_has_goals_timings_and_graded_exercises(name: str):
    nb = jupytext.read(NOTEBOOKS / f"{name}.py")
    intro = nb.cells[1].source
    assert intro.startswith("# 0") and "**You will learn to**" in intro
    assert intro.count("\n- ") >= 3 and "**Before you start:**" in intro
    assert "**Time:**" in intro and "2-core" in intro and "T4" in intro
    text = "\n".join(c.source for c in nb.cells)
    exercises = text[text.index("## Exercises"):]
    numbered = [line for line in exercises.splitlines() if line.startswith("**") and " · " in line]
    assert 3 <= len(numbered) <= 5 and "Open." in numbered[-1]
    checks = [c.source for c in nb.cells if c.cell_type == "code" and "check" in c.source
              and '("' in c.source]
    stubs = [c.source for c in nb.cells if c.cell_type == "code" and "= None  # your answer"
             in c.source]
    assert checks and stubs


def test_03_and_04_show_each_step_in_their_own_cells():
    def code(name: str) -> list[str]:
        return [c.source for c in jupytext.read(NOTEBOOKS / f"{name}.py").cells
                if c.cell_type == "code"]

    cells = code("03_finetune_lora")
    for step in ("captioner.lora_config(", "next(iter(loader))", "captioner.loss(",
                 "loss.backward()", "optimizer.step()", "optimizer.zero_grad()",
                 "captioner.caption(", "cross_entropy(", "class LoRALinear", "LoraConfig(",
                 "masked_fill(attention_mask == 0, -100)", "argmax()", "validation_loss("):
        assert any(step in c for c in cells), step
    assert any("train_on_every_gpu(" in c for c in cells)
    cells = code("04_evaluate")
    assert any("Cider().compute_score(" in c and "Bleu(4).compute_score(" in c for c in cells)
    assert any("evaluate_run(" in c for c in cells)


# ---------------------------------------------------------------- executed on mini


@pytest.mark.slow
def test_01_audits_and_splits(runner: Runner):
    runner.run("01_data_audit")
    audit = json.loads((runner.data / "audit.json").read_text(encoding="utf-8"))
    assert audit["images_total"] == audit["images_ok"] == 600
    assert audit["annotations_ok"] == 3000
    split = json.loads((runner.data / "split.json").read_text(encoding="utf-8"))
    assert (len(split["train"]), len(split["val"])) == (540, 60)
    assert not set(split["train"]) & set(split["val"])
    for name in ("clean.json", "rejects.csv", "train.json", "val.json", "image_stats.png"):
        assert (runner.data / name).stat().st_size > 0


@pytest.mark.slow
def test_01_shows_every_reject_reason_on_planted_defects(runner: Runner):
    runner.run("01_data_audit")
    planted = runner.data.parent / "planted"
    counts = [json.loads((planted / fmt / "audit.json").read_text(encoding="utf-8"))["rejects"]
              for fmt in ("coco", "flickr8k")]
    assert {reason for c in counts for reason, n in c.items() if n} == set(REASONS)
    clean = json.loads((planted / "coco" / "clean.json").read_text(encoding="utf-8"))
    assert len({(i["width"], i["height"]) for i in clean["images"]}) >= 3  # not one dot
    per_image = Counter(a["image_id"] for a in clean["annotations"])
    assert set(per_image.values()) == {1, 2, 3, 4, 5}


@pytest.mark.slow
def test_02_recommends_max_length_and_audits_tokenizers(runner: Runner):
    nb = runner.run("02_caption_lengths")
    lengths = json.loads((runner.data / "lengths.json").read_text(encoding="utf-8"))
    p99 = lengths["percentiles"]["tokens"]["p99"]
    assert lengths["recommended_max_length"] >= p99 + 2
    tok = pd.read_csv(runner.data / "tokenizer_audit.csv", index_col=0)
    assert tok.loc["extended", "roundtrip_rate"] == 1.0
    assert tok.loc["stock, strip_accents=False", "unk_rate"] > 0.3
    assert tok.loc["stock (strips accents)", "roundtrip_rate"] < 0.1
    assert "[UNK]" in outputs_text(nb)
    assert (runner.data / "caption_lengths.png").is_file()


@pytest.mark.slow
def test_03_trains_and_keeps_the_best_adapter(runner: Runner):
    nb = runner.run("03_finetune_lora")
    run = runner.run_dir
    history = pd.read_csv(run / "history.csv")
    assert history["epoch"].tolist() == [1, 2]
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    assert summary["best_epoch"] == int(history["val_CIDEr"].idxmax()) + 1
    assert (run / "best" / "adapter_model.safetensors").is_file()
    assert json.loads((run / "config.json").read_text(encoding="utf-8"))["train"]["epochs"] == 2
    text = outputs_text(nb)
    assert "text_decoder" in text and "trainable" in text  # the parameter table
    assert "best epoch" in text
    # notebook 01's files are the ones training read: same folder, same fingerprint
    sources = json.loads((run / "data" / "sources.json").read_text(encoding="utf-8"))
    prepared = json.loads((runner.data / "prepared.json").read_text(encoding="utf-8"))
    assert Path(sources["prepared"]) == runner.data
    assert sources["fingerprint"] == prepared["fingerprint"]
    assert "audited set reused" in text


@pytest.mark.slow
def test_03b_takes_one_scst_update_by_hand_then_hands_over(runner: Runner):
    text = outputs_text(runner.run("03b_scst"))
    assert re.search(r"advantage-weighted log-prob change \+[\d.]+", text), text[-2000:]
    assert re.search(r"advantage > 0 [+-][\d.]+, advantage <= 0 [+-][\d.]+", text)
    scst_run = runner.output / "runs" / "mini-scst"
    assert pd.read_csv(scst_run / "history.csv")["epoch"].tolist() == [1]
    assert json.loads((scst_run / "last" / "state.json").read_text())["global_step"] == 4


@pytest.mark.slow
def test_04_scores_zero_shot_and_fine_tuned(runner: Runner):
    text = outputs_text(runner.run("04_evaluate"))
    ev = runner.run_dir / "eval"
    ce = json.loads((ev / "metrics_fine_tuned.json").read_text(encoding="utf-8"))
    scst = json.loads((ev / "metrics_scst.json").read_text(encoding="utf-8"))  # 03b's adapter
    assert re.search(rf"CIDEr +{ce['CIDEr']:.4f} +{scst['CIDEr']:.4f}\n", text), text[-3000:]
    assert re.search(r"SCST (did not raise|bought|raised) CIDEr \([+-][\d.]+%\)", text)
    metrics = json.loads((ev / "metrics.json").read_text(encoding="utf-8"))
    assert set(metrics) == {"zero-shot", "fine-tuned"}
    assert metrics["fine-tuned"]["CIDEr"] > metrics["zero-shot"]["CIDEr"]
    predictions = json.loads((ev / "predictions_fine_tuned.json").read_text(encoding="utf-8"))
    assert len(predictions) == 60
    table = pd.read_csv(ev / "predictions.csv")
    assert {"zero_shot", "fine_tuned", "cider_fine_tuned", "references"} <= set(table.columns)
    assert len(table) == 60
    for name in ("metrics_zero_shot.json", "per_image_fine_tuned.csv", "scores.png",
                 "cider_per_image.png"):
        assert (ev / name).is_file()


@pytest.mark.slow
def test_05_gallery_png_and_self_contained_html(runner: Runner):
    nb = runner.run("05_gallery")
    ev = runner.run_dir / "eval"
    assert (ev / "gallery.png").stat().st_size > 10_000
    page = (ev / "gallery.html").read_text(encoding="utf-8")
    assert page.count("data:image/jpeg;base64,") == 6
    assert VIETNAMESE & set(page)
    assert "src=\"/" not in page and "src=\"http" not in page
    assert "evaluate: tokenizing" not in outputs_text(nb)  # 04's results were reused


@pytest.mark.slow
def test_04_without_an_adapter_says_run_03_first(tmp_path: Path):
    import papermill

    with pytest.raises(papermill.PapermillExecutionError) as err:
        execute("04_evaluate", tmp_path / "empty", tmp_path / "work", {})
    assert err.value.ename == "VicapError"
    assert "run notebook 03_finetune_lora first" in err.value.evalue
    assert err.value.traceback == [f"VicapError: {err.value.evalue}"]  # one line, no traceback


@pytest.mark.slow
def test_03_hand_written_loop_lowers_the_loss_and_teaches_vietnamese(runner: Runner):
    text = outputs_text(runner.run("03_finetune_lora"))
    found = re.search(r"loss over the first 5 steps ([\d.]+) → the last 5 ([\d.]+)", text)
    assert found and float(found.group(2)) < float(found.group(1)) * 0.8, found
    assert re.search(r"loss by hand: ([\d.]+); captioner.loss: \1", text)
    assert "-100 (ignored)" in text and "[DEC]" in text  # the label table
    for same in ("the package builds the same: True",
                 "greedy by hand = generate(num_beams=1): True",
                 "LoRALinear with peft's A and B gives peft's output: True"):
        assert same in text, same  # the -100 labels, greedy decoding and LoRA, by hand
    val = re.search(r"validation loss \(\d+ captions\) before ([\d.]+) → after ([\d.]+)", text)
    assert val and float(val.group(2)) < float(val.group(1)), val
    after = re.search(r"after: +(.*)", text).group(1)
    assert VIETNAMESE & set(after.lower()), after


@pytest.mark.slow
def test_06_runs_headless_and_writes_the_handout(runner: Runner):
    nb = runner.run("06_caption_demo")
    handout = runner.output / "demo" / "handout_base_vs_adapter.png"
    assert handout.stat().st_size > 10_000
    assert "adapter:" in outputs_text(nb) or "base only" in outputs_text(nb)


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
def test_check_cells_say_not_yet_on_stubs_and_pass_on_solutions(runner: Runner, name: str):
    stubs = outputs_text(runner.run(name))
    solved = outputs_text(runner.run(SOLUTIONS[name]))
    not_yet = [line for line in stubs.splitlines() if line.startswith(NOT_YET)]
    assert not_yet and all("not done yet:" in line for line in not_yet)
    assert DONE not in stubs and "Traceback" not in stubs
    passed = [line for line in solved.splitlines() if line.startswith(DONE)]
    assert len(passed) == len(not_yet) and NOT_YET not in solved, solved[-2000:]
