"""Notebook 04's "did the run finish?" cell on run folders as training leaves them, run on its own
(the whole notebook needs a trained adapter); the closing cells' list of what was written."""
from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

import jupytext
import pytest
from IPython.display import Markdown

from vicap_utils.ops.adapters import META_FILE, WEIGHTS_FILE, is_adapter
from vicap_utils.ops.checkpoint import RunState, read_state
from vicap_utils.ops.io import VicapError
from vicap_utils.teach.notebook import wrote

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "04_evaluate.py"


def shown(run: Path) -> str:
    """What the notebook's cell tagged "finished" displays for `run`."""
    cell = next(c.source for c in jupytext.read(NOTEBOOK).cells
                if "finished" in c.metadata.get("tags", []))
    out: list[Markdown] = []
    exec(cell, {"run": run, "is_adapter": is_adapter, "read_state": read_state,
                "Markdown": Markdown, "display": out.append})
    return out[0].data


def make_run(root: Path, final: bool, state: bool | None) -> Path:
    """A run folder with best/, final/ when `final`, last/state.json saying `state` (None: none)."""
    for name in ("best", *(["final"] if final else [])):
        (root / name).mkdir(parents=True)
        (root / name / META_FILE).write_text("{}", encoding="utf-8")
        (root / name / WEIGHTS_FILE).write_bytes(b"")
    if state is not None:
        (root / "last").mkdir()
        (root / "last" / "state.json").write_text(json.dumps(asdict(RunState(finished=state))),
                                                  encoding="utf-8")
    return root


@pytest.mark.parametrize("final, state, done", [
    (False, False, False),  # cut off mid-training: best/ only
    (False, None, False),  # best/ copied from somewhere, nothing else
    (True, False, False),  # a finished run continued with more epochs, not yet done again
    (True, True, True),
    (True, None, True),  # a trained run handed over without last/
])
def test_04_warns_in_bold_when_the_run_never_finished(tmp_path, final, state, done):
    text = shown(make_run(tmp_path / "run", final, state))
    assert ("**⚠" in text and "never finished" in text) != done, text


def test_wrote_lists_each_output_with_its_size_in_binary_units(tmp_path, capsys):
    sizes = {"a": 1023, "b": 1024, "c": 5 * 2**20 + 2**19, "d": 3 * 2**30}
    for name, size in sizes.items():
        with open(tmp_path / name, "wb") as f:
            f.truncate(size)  # sparse: no disk used
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "x").write_bytes(b"x" * 2048)
    wrote([*(tmp_path / name for name in sizes), tmp_path / "folder"])
    shown = [line.rsplit("  ", 1)[0].strip() for line in capsys.readouterr().out.splitlines()]
    assert shown == ["1023 B", "1.0 KiB", "5.5 MiB", "3.0 GiB", "2.0 KiB"]
    with pytest.raises(VicapError, match="expected outputs missing: .*nothing"):
        wrote([tmp_path / "a", tmp_path / "nothing"])


TAUGHT = ["01_data_audit", "02_caption_lengths", "04_evaluate", "05_gallery", "06_caption_demo"]


def markdown(name: str) -> list[str]:
    """The markdown cells of a notebook's `.py` twin."""
    path = NOTEBOOK.parent / f"{name}.py"
    return [c.source for c in jupytext.read(path).cells if c.cell_type == "markdown"]


def numbered(cells: list[str], heading: str) -> list[str]:
    """The numbers of the list under `heading` ("1", "2", …)."""
    body = next(c for c in cells if c.startswith(heading))
    return re.findall(r"^(\d+)\. ", body, flags=re.M)


@pytest.mark.parametrize("name", TAUGHT)
def test_questionnaire_answered_and_open_exercises_discussed_in_the_solutions(name):
    cells, solved = markdown(name), markdown(f"solutions/{name}_solutions")
    questions = numbered(cells, "## Questionnaire\n")
    assert 5 <= len(questions) <= 8 and questions == [str(i + 1) for i in range(len(questions))]
    assert numbered(solved, "## Questionnaire: answers\n") == questions
    opened = [c.split(" · ")[0] for c in cells if re.match(r"\*\*\d · Open\.\*\*", c)]
    assert len(opened) == 1
    assert any(c.startswith(f"{opened[0]} · Open.**") and "Discussion notes" in c
               for c in solved)
