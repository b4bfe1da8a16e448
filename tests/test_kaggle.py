"""The Kaggle bundle: a wheel data set and push-ready kernel folders."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent


def test_bundle_writes_wheel_and_kernels(tmp_path):
    out = tmp_path / "build"
    subprocess.run([sys.executable, str(ROOT / "kaggle" / "bundle.py"), "--owner", "someone",
                    "--out", str(out)], check=True, capture_output=True, timeout=300)
    assert list((out / "vicap-wheel").glob("vicap-*.whl"))
    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert notebooks
    for nb_path in notebooks:
        folder = out / nb_path.stem
        meta = json.loads((folder / "kernel-metadata.json").read_text())
        assert meta["id"] == f"someone/vicap-{nb_path.stem.replace('_', '-')}"
        assert meta["code_file"] == nb_path.name
        assert "someone/vicap-wheel" in meta["dataset_sources"]
        nb = nbformat.read(folder / nb_path.name, as_version=4)
        assert "pip install" in nb.cells[0].source
        assert len(nb.cells) == len(nbformat.read(nb_path, as_version=4).cells) + 1
