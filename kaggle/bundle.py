"""Bundle vicap for Kaggle: a wheel as a data set, and one kernel folder per notebook.

    python kaggle/bundle.py --owner YOUR_KAGGLE_NAME [--out kaggle/build]
    kaggle datasets create -p kaggle/build/vicap-wheel        # once; `version` afterwards
    kaggle kernels push -p kaggle/build/03_finetune_lora

Each kernel's notebook gets a first cell that installs the wheel from the attached data set
(Kaggle kernels often run without internet), and metadata asking for a GPU with the data
sets the profile needs attached.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = json.loads((Path(__file__).parent / "kernel-metadata.json").read_text())
GPU_NOTEBOOKS = {"03_finetune_lora", "04_evaluate", "05_gallery", "06_caption_demo"}
INSTALL = ("# Install vicap from the attached data set (works without internet).\n"
           "!pip install -q --no-deps /kaggle/input/vicap-wheel/*.whl")


def build_wheel(out: Path) -> Path:
    """`pip wheel` the package (no dependencies: Kaggle's image has them) into out/."""
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out),
                    str(ROOT)], check=True)
    return next(out.glob("vicap-*.whl"))


def kernel_folder(notebook: Path, owner: str, out: Path) -> Path:
    """A push-ready folder: the notebook with an install cell first, and its metadata."""
    stem = notebook.stem
    folder = out / stem
    folder.mkdir(parents=True, exist_ok=True)
    nb = nbformat.read(notebook, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(INSTALL))
    nbformat.write(nb, folder / notebook.name)
    meta = dict(TEMPLATE, id=f"{owner}/vicap-{stem.replace('_', '-')}",
                title=f"vicap {stem.replace('_', ' ')}", code_file=notebook.name,
                enable_gpu=stem in GPU_NOTEBOOKS,
                dataset_sources=TEMPLATE["dataset_sources"] + [f"{owner}/vicap-wheel"])
    (folder / "kernel-metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
    return folder


def bundle(owner: str, out: Path) -> list[Path]:
    """Build the wheel data set and every kernel folder; return the folders written."""
    if out.exists():
        shutil.rmtree(out)
    wheel_dir = out / "vicap-wheel"
    build_wheel(wheel_dir)
    (wheel_dir / "dataset-metadata.json").write_text(json.dumps(
        {"title": "vicap-wheel", "id": f"{owner}/vicap-wheel",
         "licenses": [{"name": "Apache 2.0"}]}, indent=2) + "\n")
    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    return [wheel_dir] + [kernel_folder(nb, owner, out) for nb in notebooks]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--owner", required=True, help="your Kaggle user name")
    parser.add_argument("--out", default=str(ROOT / "kaggle" / "build"))
    args = parser.parse_args()
    for folder in bundle(args.owner, Path(args.out)):
        print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
