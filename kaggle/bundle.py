"""Bundle vicap for Kaggle: a wheel data set and push-ready kernels, one per notebook, the
metadata of your data set and model folders, and the kaggle commands that upload them in order.

    python kaggle/bundle.py --owner YOU --data-dir uit-viic=~/uitviic   # prints the commands
    python kaggle/bundle.py --owner YOU --save-base Salesforce/blip-image-captioning-base \
        --out ~/kaggle-models                  # the base model in fp16 + its Kaggle metadata

Runs on the standard library alone (notebooks are JSON); only --save-base needs transformers.

The wheel data set holds vicap and every runtime dependency Kaggle's image lacks, so kernels
run with internet off. Each kernel's notebook gets a first cell (kaggle/first_cell.py) that
installs them, checks Java and prints the hardware plan; its metadata attaches the data sets,
the base model, the wheel data set and, for notebooks 04-06, notebook 03's output, and asks
for a T4 where the notebook uses a GPU. See docs/kaggle.md.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
TEMPLATE = json.loads((HERE / "kernel-metadata.json").read_text())
FIRST_CELL = (HERE / "first_cell.py").read_text()
SETTINGS_LINE = re.compile(r"^SETTINGS = .*$", re.MULTILINE)
WHEEL_DATASET = "vicap-wheels"
BUILD_MARK = ".vicap-bundle"  # in every folder bundle.py builds: only such a folder is replaced
# The T4 machine shape, which is two T4s ("GPU T4 x2"; Kaggle offers no single T4): kaggle-cli
# PR #1198. Kaggle's torch has no sm_60 kernels, so the default P100 cannot run (PR #1156).
T4 = "NvidiaTeslaT4"
GPU_NOTEBOOKS = {"03_finetune_lora", "03b_scst", "04_evaluate", "05_gallery", "06_caption_demo"}
# CPU notebooks that still need the base model (02 counts tokens with its tokenizer).
MODEL_NOTEBOOKS = {"flickr8k-blip2": {"02_caption_lengths"}}
TRAINING_NOTEBOOK = "03_finetune_lora"
NOTEBOOK_GLOB = "[0-9][0-9]*_*.ipynb"  # 01_… to 06_…, with 03b_scst after 03
# Runtime dependencies missing from Kaggle's image (the check is in docs/kaggle.md).
ALWAYS_BUNDLED = ("pycocoevalcap",)


@dataclass(frozen=True)
class KernelProfile:
    """What a profile's kernels attach and install. `{owner}` is the bundle's --owner."""

    tag: str  # short name in kernel slugs
    datasets: tuple[str, ...]
    models: tuple[str, ...]  # Kaggle model handles owner/model/framework/variation/version
    wheels: tuple[str, ...]  # distributions beyond vicap to install from the wheel data set
    # The profile's model settings the first cell's hardware plan needs (vicap_utils.config's
    # values, which tests/test_kaggle.py checks: this file runs without vicap installed).
    plan: dict[str, object] = field(default_factory=dict)


PROFILES = {
    "uitviic-blip": KernelProfile(
        "uitviic", ("{owner}/uit-viic", "awsaf49/coco-2017-dataset"),
        ("{owner}/blip-image-captioning-base/transformers/default/1",), ALWAYS_BUNDLED,
        {"family": "blip", "load_in_8bit": False, "mixed_precision": "auto"}),
    "flickr8k-blip2": KernelProfile(
        "flickr8k", ("adityajn105/flickr8k",),
        ("{owner}/blip2-opt-2.7b/transformers/default/1",), (*ALWAYS_BUNDLED, "bitsandbytes"),
        {"family": "blip2", "load_in_8bit": True, "mixed_precision": "auto"}),
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


def first_cell(profile: str, gpu: bool) -> str:
    """kaggle/first_cell.py with this kernel's settings filled in."""
    settings = {"profile": profile, "wheels": ["vicap", *PROFILES[profile].wheels],
                "wheel_dataset": WHEEL_DATASET, "plan": PROFILES[profile].plan if gpu else None}
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
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    nb["cells"].insert(0, {"cell_type": "code", "execution_count": None, "id": "vicap-first-cell",
                           "metadata": {}, "outputs": [],
                           "source": first_cell(profile, gpu).splitlines(keepends=True)})
    nb["metadata"]["kaggle"] = {"isGpuEnabled": gpu, "isInternetEnabled": internet,
                                "language": "python", "sourceType": "notebook",
                                **({"accelerator": "nvidiaTeslaT4"} if gpu else {})}
    (folder / notebook.name).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n",
                                        encoding="utf-8")
    slug = kernel_slug(spec.tag, stem)
    meta = dict(TEMPLATE, id=f"{owner}/{slug}", title=slug.replace("-", " "),
                code_file=notebook.name, enable_gpu=gpu, enable_internet=internet,
                dataset_sources=[*datasets, f"{owner}/{WHEEL_DATASET}"],
                model_sources=models if gpu or stem in MODEL_NOTEBOOKS.get(profile, ()) else [],
                kernel_sources=([f"{owner}/{kernel_slug(spec.tag, TRAINING_NOTEBOOK)}"]
                                if gpu and stem != TRAINING_NOTEBOOK else []))
    if gpu:
        meta["machine_shape"] = T4
    (folder / "kernel-metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
    return folder


def notebook_stems() -> list[str]:
    """The numbered notebooks, in order (each becomes one kernel per profile)."""
    return [nb.stem for nb in sorted((ROOT / "notebooks").glob(NOTEBOOK_GLOB))]


def replaceable(out: Path) -> None:
    """Refuse, before writing anything, an --out folder that bundle.py did not make."""
    if out.exists() and any(out.iterdir()) and not (out / BUILD_MARK).is_file():
        raise SystemExit(f"{out}: not made by kaggle/bundle.py (no {BUILD_MARK}); give --out a "
                         "new or empty folder")


def bundle(owner: str, out: Path, profiles: list[str], datasets: list[str] | None = None,
           models: list[str] | None = None, internet: bool = False) -> list[Path]:
    """Write the wheel data set and every profile's kernel folders into `out` (replaced when
    bundle.py made it, whole or not at all); `datasets`/`models` replace the profiles'
    defaults. Returns the folders written."""
    if importlib.util.find_spec("pip") is None:
        raise SystemExit("bundle.py builds the wheels with pip: python -m ensurepip --user")
    replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        folders = _build(owner, tmp, profiles, datasets, models, internet)
        (tmp / BUILD_MARK).write_text("made by kaggle/bundle.py; replaced by its next run\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [out / f.relative_to(tmp) for f in folders]


def _build(owner: str, out: Path, profiles: list[str], datasets: list[str] | None,
           models: list[str] | None, internet: bool) -> list[Path]:
    """bundle()'s folders, written into `out`."""
    extra = sorted({w for p in profiles for w in PROFILES[p].wheels})
    folders = [wheel_dataset(owner, out, extra)]
    notebooks = sorted((ROOT / "notebooks").glob(NOTEBOOK_GLOB))
    for profile in profiles:
        spec = PROFILES[profile]
        attach = datasets if datasets is not None else [d.format(owner=owner)
                                                          for d in spec.datasets]
        weights = models if models is not None else (
            [] if internet else [m.format(owner=owner) for m in spec.models])
        folders += [kernel_folder(nb, owner, profile, out, attach, weights, internet)
                    for nb in notebooks]
    return folders


def write_new(path: Path, data: dict) -> bool:
    """Write `data` as JSON to `path` unless a file is there (never overwritten); True if
    written."""
    if path.exists():
        print(f"kept {path} (already there)")
        return False
    path.write_text(json.dumps(data, indent=2) + "\n")
    return True


def dataset_metadata(owner: str, slug: str, folder: Path) -> Path:
    """dataset-metadata.json for a data set folder of yours (`kaggle datasets init` fields)."""
    write_new(folder / "dataset-metadata.json", {
        "title": slug, "id": f"{owner}/{slug}", "licenses": [{"name": "other"}],
        "subtitle": "uploaded for vicap's kernels (private)"})
    return folder


def model_metadata(owner: str, handle: str, weights: Path) -> Path:
    """The Kaggle model metadata for a saved model folder, as `kaggle models init` and `kaggle
    models instances init` write them: model-metadata.json in a sibling `<model>-model/`
    folder, model-instance-metadata.json beside the weights. Returns the sibling folder."""
    model, framework, variation = handle.split("/")[1:4]
    card = weights.parent / f"{weights.name}-model"
    card.mkdir(parents=True, exist_ok=True)
    write_new(card / "model-metadata.json", {
        "ownerSlug": owner, "title": model, "slug": model, "subtitle": "", "isPrivate": True,
        "description": f"{model}, saved with save_pretrained for vicap's offline kernels.",
        "publishTime": "", "provenanceSources": ""})
    write_new(weights / "model-instance-metadata.json", {
        "ownerSlug": owner, "modelSlug": model, "instanceSlug": variation,
        "framework": framework, "overview": "", "usage": "", "licenseName": "Apache 2.0",
        "fineTunable": True, "trainingData": [], "modelInstanceType": "Unspecified",
        "baseModelInstanceId": 0, "externalBaseModelUrl": ""})
    return card


def save_base(source: str, out: Path) -> Path:
    """`from_pretrained(source)` then `save_pretrained(out)` in fp16 with its processor: half
    the upload (BLIP-2 opt-2.7b's hub weights are ~15 GB in fp32)."""
    if importlib.util.find_spec("transformers") is None:
        raise SystemExit("--save-base needs transformers and torch: pip install -r "
                         "requirements.txt")
    import torch
    import transformers

    arch = transformers.AutoConfig.from_pretrained(source).architectures[0]
    model = getattr(transformers, arch).from_pretrained(source, dtype=torch.float16)
    model.save_pretrained(out)
    transformers.AutoProcessor.from_pretrained(source).save_pretrained(out)
    return out


def model_handle(owner: str, source: str, profiles: list[str]) -> str:
    """The Kaggle model handle a saved base gets: the profile's default whose model name is the
    source's last part, else owner/<that name>/transformers/default/1."""
    name = source.rstrip("/").split("/")[-1]
    for handle in (m.format(owner=owner) for p in profiles for m in PROFILES[p].models):
        if handle.split("/")[1] == name:
            return handle
    return f"{owner}/{name}/transformers/default/1"


def commands(data: list[Path], models: list[tuple[Path, Path]], kernels: list[Path]) -> list[str]:
    """The kaggle commands that upload everything, in the order Kaggle needs: data sets,
    models, then kernels (03 before those that attach its output)."""
    return ([f"kaggle datasets create -p {d}" for d in data] +
            [c for card, weights in models for c in (f"kaggle models create -p {card}",
                                                     f"kaggle models instances create -p "
                                                     f"{weights}")] +
            [line for k in kernels for line in _push(k)])


def _push(kernel: Path) -> list[str]:
    """The push command of a kernel folder, after a wait for the kernels it attaches."""
    attached = json.loads((kernel / "kernel-metadata.json").read_text())["kernel_sources"]
    return [f"# when {k} has finished (kaggle kernels status {k}):" for k in attached] + \
        [f"kaggle kernels push -p {kernel}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--owner", required=True, help="your Kaggle user name")
    parser.add_argument("--out", default=str(ROOT / "kaggle" / "build"),
                        help="build folder (with --save-base: where the model is saved)")
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
    parser.add_argument("--data-dir", action="append", default=[], metavar="SLUG=FOLDER",
                        help="a data set folder of yours to upload as OWNER/SLUG: writes its "
                             "dataset-metadata.json (repeatable; e.g. uit-viic=~/uitviic)")
    parser.add_argument("--save-base", metavar="HUB_OR_FOLDER",
                        help="save this base model in fp16 with its Kaggle model metadata "
                             "under --out, print its upload commands, and stop")
    args = parser.parse_args()
    profiles = args.profile or sorted(PROFILES)
    pairs = [d.partition("=") for d in args.data_dir]
    bad = [d for d, (slug, eq, folder) in zip(args.data_dir, pairs)
           if not (eq and slug and Path(folder).expanduser().is_dir())]
    if bad:
        raise SystemExit(f"--data-dir {bad[0]}: expected SLUG=FOLDER with an existing folder")
    if args.save_base:
        handle = model_handle(args.owner, args.save_base, profiles)
        weights = Path(args.out) / handle.split("/")[1]
        replaceable(weights)
        card = model_metadata(args.owner, handle, save_base(args.save_base, weights))
        print("\n".join(commands([], [(card, weights)], [])))
        return 0
    models = None if args.model is None else [m for m in args.model if m]
    folders = bundle(args.owner, Path(args.out), profiles, args.dataset, models, args.internet)
    data = [dataset_metadata(args.owner, slug, Path(folder).expanduser())
            for slug, _eq, folder in pairs]
    print(f"wrote {len(folders)} folders under {args.out}; upload in this order:")
    print("\n".join(commands([*data, folders[0]], [], [])))
    for handle in sorted({m for p in profiles for m in PROFILES[p].models} if models is None
                         else []):
        name = handle.split("/")[1]
        print(f"# model {handle.format(owner=args.owner)}: python kaggle/bundle.py --owner "
              f"{args.owner} --save-base <hub id or folder of {name}> --out DIR, then the two "
              "commands it prints")
    print("\n".join(commands([], [], folders[1:])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
