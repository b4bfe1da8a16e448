"""Bundle vicap for Kaggle: a wheel data set and push-ready kernels, one per notebook.

    python kaggle/bundle.py --owner YOU                     # both profiles, into kaggle/build
    kaggle datasets create -p kaggle/build/vicap-wheels     # once; then `kaggle datasets version`
    kaggle kernels push -p kaggle/build/uitviic-03_finetune_lora

The wheel data set holds vicap and every runtime dependency Kaggle's image lacks, so kernels
run with internet off. Each kernel's notebook gets a first cell (kaggle/first_cell.py) that
installs them, checks Java and prints the hardware plan; its metadata attaches the data sets,
the base model, the wheel data set and, for notebooks 04-06, notebook 03's output, and asks
for a T4 where the notebook uses a GPU. See docs/kaggle.md.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
TEMPLATE = json.loads((HERE / "kernel-metadata.json").read_text())
FIRST_CELL = (HERE / "first_cell.py").read_text()
SETTINGS_LINE = re.compile(r"^SETTINGS = .*$", re.MULTILINE)
WHEEL_DATASET = "vicap-wheels"
# The T4 machine shape, which is two T4s ("GPU T4 x2"; Kaggle offers no single T4): kaggle-cli
# PR #1198. Kaggle's torch has no sm_60 kernels, so the default P100 cannot run (PR #1156).
T4 = "NvidiaTeslaT4"
GPU_NOTEBOOKS = {"03_finetune_lora", "04_evaluate", "05_gallery", "06_caption_demo"}
TRAINING_NOTEBOOK = "03_finetune_lora"
# Runtime dependencies missing from Kaggle's image (the check is in docs/kaggle.md).
ALWAYS_BUNDLED = ("pycocoevalcap",)


@dataclass(frozen=True)
class KernelProfile:
    """What a profile's kernels attach and install. `{owner}` is the bundle's --owner."""

    tag: str  # short name in kernel slugs
    datasets: tuple[str, ...]
    models: tuple[str, ...]  # Kaggle model handles owner/model/framework/variation/version
    wheels: tuple[str, ...]  # distributions beyond vicap to install from the wheel data set


PROFILES = {
    "uitviic-blip": KernelProfile(
        "uitviic", ("{owner}/uit-viic", "awsaf49/coco-2017-dataset"),
        ("{owner}/blip-image-captioning-base/transformers/default/1",), ALWAYS_BUNDLED),
    "flickr8k-blip2": KernelProfile(
        "flickr8k", ("adityajn105/flickr8k",),
        ("{owner}/blip2-opt-2.7b/transformers/default/1",), (*ALWAYS_BUNDLED, "bitsandbytes")),
}


def requirement(name: str) -> str:
    """The version range vicap declares for `name` (requirements.txt or an extra)."""
    sources = (ROOT / "requirements.txt").read_text() + (ROOT / "pyproject.toml").read_text()
    match = re.search(rf"(?<![\w.-]){re.escape(name)}\s*[<>=!~][^\"'\n#,\]]*", sources)
    return match.group(0).strip() if match else name


def build_wheel(out: Path) -> Path:
    """`pip wheel` vicap alone into out/ (its dependencies come from Kaggle's image)."""
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out),
                    str(ROOT)], check=True)
    return next(out.glob("vicap-*.whl"))


def download_wheels(names: list[str], out: Path) -> list[Path]:
    """Binary wheels for Kaggle's Linux x86-64 of the named distributions, no dependencies
    (Kaggle has theirs). pip's own settings apply (PIP_FIND_LINKS, PIP_NO_INDEX, ...)."""
    if not names:
        return []
    before = set(out.glob("*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                    "--only-binary=:all:", "--platform", "manylinux_2_28_x86_64",
                    "--platform", "manylinux_2_24_x86_64", "--platform", "manylinux2014_x86_64",
                    "--platform", "any", "-d", str(out), *map(requirement, names)], check=True)
    return sorted(set(out.glob("*.whl")) - before)


def wheel_dataset(owner: str, out: Path, extra: list[str]) -> Path:
    """The wheel data set folder: vicap, the extra wheels, dataset-metadata.json."""
    folder = out / WHEEL_DATASET
    build_wheel(folder)
    download_wheels(extra, folder)
    names = ", ".join(sorted(p.name for p in folder.glob("*.whl")))
    (folder / "dataset-metadata.json").write_text(json.dumps({
        "title": WHEEL_DATASET, "id": f"{owner}/{WHEEL_DATASET}",
        "subtitle": "vicap and the wheels Kaggle's image lacks, for offline kernels",
        "description": (f"Wheels: {names}. vicap is Apache-2.0; pycocoevalcap is BSD-2-Clause "
                        "and carries the METEOR, SPICE and Stanford CoreNLP jars under their "
                        "own licences; bitsandbytes is MIT. Made by kaggle/bundle.py."),
        "licenses": [{"name": "other"}]}, indent=2) + "\n")
    return folder


def plan_settings(profile: str) -> dict[str, object]:
    """What the first cell needs to print the hardware plan: the profile's model settings."""
    from vicap_utils.config import load_config

    cfg = load_config(profile)
    return {"family": cfg.model.family, "load_in_8bit": cfg.model.load_in_8bit,
            "mixed_precision": cfg.train.mixed_precision}


def first_cell(profile: str, gpu: bool) -> str:
    """kaggle/first_cell.py with this kernel's settings filled in."""
    settings = {"profile": profile, "wheels": ["vicap", *PROFILES[profile].wheels],
                "wheel_dataset": WHEEL_DATASET, "plan": plan_settings(profile) if gpu else None}
    source, count = SETTINGS_LINE.subn(f"SETTINGS = {settings!r}", FIRST_CELL, count=1)
    if count != 1:
        raise RuntimeError("kaggle/first_cell.py has no SETTINGS line")
    return source


def kernel_slug(tag: str, stem: str) -> str:
    """`vicap-<tag>-<nn>-<name>`: Kaggle derives a kernel's slug from its title like this."""
    return f"vicap-{tag}-{stem}".replace("_", "-").lower()


def kernel_folder(notebook: Path, owner: str, profile: str, out: Path,
                  datasets: list[str], models: list[str], internet: bool) -> Path:
    """A push-ready folder: the notebook with the first cell inserted, and its metadata."""
    spec = PROFILES[profile]
    stem = notebook.stem
    gpu = stem in GPU_NOTEBOOKS
    folder = out / f"{spec.tag}-{stem}"
    folder.mkdir(parents=True, exist_ok=True)
    nb = nbformat.read(notebook, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(first_cell(profile, gpu)))
    nb.metadata["kaggle"] = {"isGpuEnabled": gpu, "isInternetEnabled": internet,
                             "language": "python", "sourceType": "notebook",
                             **({"accelerator": "nvidiaTeslaT4"} if gpu else {})}
    nbformat.write(nb, folder / notebook.name)
    slug = kernel_slug(spec.tag, stem)
    meta = dict(TEMPLATE, id=f"{owner}/{slug}", title=slug.replace("-", " "),
                code_file=notebook.name, enable_gpu=gpu, enable_internet=internet,
                dataset_sources=[*datasets, f"{owner}/{WHEEL_DATASET}"],
                model_sources=models if gpu else [],
                kernel_sources=([f"{owner}/{kernel_slug(spec.tag, TRAINING_NOTEBOOK)}"]
                                if gpu and stem != TRAINING_NOTEBOOK else []))
    if gpu:
        meta["machine_shape"] = T4
    (folder / "kernel-metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
    return folder


def bundle(owner: str, out: Path, profiles: list[str], datasets: list[str] | None = None,
           models: list[str] | None = None, internet: bool = False) -> list[Path]:
    """Write the wheel data set and every profile's kernel folders into `out` (replaced);
    `datasets`/`models` replace the profiles' defaults. Returns the folders written."""
    if out.exists():
        shutil.rmtree(out)
    extra = sorted({w for p in profiles for w in PROFILES[p].wheels})
    folders = [wheel_dataset(owner, out, extra)]
    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    for profile in profiles:
        spec = PROFILES[profile]
        attach = datasets if datasets is not None else [d.format(owner=owner)
                                                          for d in spec.datasets]
        weights = models if models is not None else (
            [] if internet else [m.format(owner=owner) for m in spec.models])
        folders += [kernel_folder(nb, owner, profile, out, attach, weights, internet)
                    for nb in notebooks]
    return folders


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--owner", required=True, help="your Kaggle user name")
    parser.add_argument("--out", default=str(ROOT / "kaggle" / "build"))
    parser.add_argument("--profile", action="append", choices=sorted(PROFILES),
                        help="profile whose kernels to write (repeatable; default: all)")
    parser.add_argument("--dataset", action="append",
                        help="data set to attach instead of the profile's defaults "
                             "(owner/slug; repeatable)")
    parser.add_argument("--model", action="append",
                        help="Kaggle model to attach instead of the profile's default "
                             "(owner/model/framework/variation/version; repeatable; '' for none)")
    parser.add_argument("--internet", action="store_true",
                        help="turn internet on (the base model then comes from the Hugging "
                             "Face hub unless --model is given)")
    args = parser.parse_args()
    models = None if args.model is None else [m for m in args.model if m]
    for folder in bundle(args.owner, Path(args.out), args.profile or sorted(PROFILES),
                         args.dataset, models, args.internet):
        print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
