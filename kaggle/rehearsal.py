"""Kaggle dress rehearsal on the CPU: the bundle's kernels of both profiles, played in order in
fake Kaggle sessions, as a user's route runs on Kaggle.

    python kaggle/rehearsal.py --out DIR        # or scripts/kaggle_rehearsal.sh --out DIR

Each kernel runs in its own session folder DIR/<tag>/<session>/ holding `input/` and `working/`
(`VICAP_KAGGLE_ROOT`): its metadata's data sets, models and kernel outputs mounted read-only
the way Kaggle mounts them, its notebook executed by papermill in the profile's fresh venv
(its first kernel's first cell installs vicap and pycocoevalcap there from the wheel data set),
under `VICAP_EMULATE_T4=1` (a T4's plan on the CPU); 04 gets 03b's output too (the SCST
comparison). Notebook 03 is killed after its first checkpoint and resumed in a second session
with the first one's output attached. The inputs are tiny (synthetic images, random base models
saved with `bundle.py --save-base`) and the two profiles play side by side, so the whole
rehearsal takes minutes.
Exit 0 only when every kernel ran, wrote what it should and left its inputs as they were;
DIR/rehearsal.json records each kernel's seconds and outputs.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import site
import subprocess
import sys
import tempfile
import threading
import time
import venv
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import papermill
import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bundle  # noqa: E402

OWNER = "rehearsal"
KERNEL = "vicap-rehearsal"
TRAINING = bundle.TRAINING_NOTEBOOK
# Small and quick: 2 epochs of 5 steps (03's first session is killed after the first), greedy
# 8-token captions, 2 hand-written steps; one best and one worst image in 05's gallery.
TRAIN_OVERRIDES = ["train.epochs=2", "train.batch_size=12", "train.grad_accum=1",
                   "train.patience=0", "train.val_sample=0", "train.num_workers=0",
                   "eval.num_beams=1", "eval.max_new_tokens=8", "eval.batch_size=8"]
SCST = "03b_scst"
PARAMETERS = {"03_finetune_lora": {"HAND_STEPS": 2, "OVERRIDES": TRAIN_OVERRIDES},
              SCST: {"MAX_STEPS": 2, "OVERRIDES": [*TRAIN_OVERRIDES, "scst.samples=2",
                                                   "scst.batch_size=4", "scst.max_new_tokens=8"]},
              "04_evaluate": {"N_BY_HAND": 1}, "05_gallery": {"N_BEST": 1, "N_WORST": 1}}
# What each kernel must leave in /kaggle/working ({profile} filled in).
OUTPUTS = {"01_data_audit": ["data/{profile}/clean.json"],
           "02_caption_lengths": ["data/{profile}/lengths.json"],
           "03_finetune_lora": ["runs/{profile}/best/adapter_model.safetensors",
                                "runs/{profile}/final/adapter_model.safetensors"],
           SCST: ["runs/{profile}-scst/best/adapter_model.safetensors"],
           "04_evaluate": ["runs/{profile}/eval/metrics.json",  # 03b's output attached too:
                           "runs/{profile}/eval/metrics_scst.json"],
           "05_gallery": ["runs/{profile}/eval/gallery.png"],
           "06_caption_demo": ["demo/handout_base_vs_adapter.png"]}
SPLITS = {"train": 12, "val": 4, "test": 4}  # images per split (Flickr8k: all in one file)
IMAGE_SIZE = (64, 48)


@dataclass
class Layout:
    """Where Kaggle mounts each kind of input in a session (both layouts exist on Kaggle)."""

    dataset: str  # "{owner}", "{slug}" filled in
    kernel: str


FLAT = Layout("{slug}", "{slug}")
BY_OWNER = Layout("datasets/{owner}/{slug}", "notebooks/{owner}/{slug}")
LAYOUTS = {"uitviic-blip": FLAT, "flickr8k-blip2": BY_OWNER}


@dataclass
class Rehearsal:
    """One rehearsal's folders and what it has recorded so far."""

    out: Path
    python: Path = Path()  # the fresh venv's
    path: str = ""  # the kernels' PATH
    store: dict[str, Path] = field(default_factory=dict)  # input handle → its files
    kernels: list[dict] = field(default_factory=list)


def base_packages(dest: Path) -> Path:
    """This environment's site-packages without vicap and pycocoevalcap, as a folder of links
    (a fresh venv reads it through a .pth file: torch and the rest are not installed again,
    while the two must come from the wheel data set)."""
    dest.mkdir(parents=True)
    skip = re.compile(r"^(vicap|__editable__|pycocoevalcap|.*\.pth$)", re.IGNORECASE)
    for source in site.getsitepackages():
        for entry in Path(source).iterdir():
            if not skip.match(entry.name) and not (dest / entry.name).exists():
                (dest / entry.name).symlink_to(entry)
    return dest


def without_java(folder: Path) -> str:
    """A PATH like this one without `java`: links to every other command, in `folder`."""
    folder.mkdir(parents=True)
    for entry in os.environ["PATH"].split(os.pathsep):
        for command in Path(entry).glob("*") if Path(entry).is_dir() else []:
            if command.name != "java" and not (folder / command.name).exists():
                (folder / command.name).symlink_to(command)
    return str(folder)


def fresh_venv(folder: Path) -> Path:
    """A venv without vicap (the big packages linked in), and a Jupyter kernel running it."""
    venv.create(folder, with_pip=False)
    python = folder / "bin" / "python"
    purelib = Path(folder, "lib", f"python{sys.version_info.major}.{sys.version_info.minor}",
                   "site-packages")
    (purelib / "_base.pth").write_text(f"{base_packages(folder / 'base-site')}\n")
    spec = folder / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "vicap rehearsal", "language": "python"}))
    return python


# ---------------------------------------------------------------- inputs


def scenes(lang: str, seed: int) -> Iterator[tuple[object, list[str]]]:
    """Endless (image, five captions) pairs from the synthetic ball-sports world."""
    from vicap_utils.toy.data import captions_for, draw_scene, random_scene

    rng = random.Random(seed)
    while True:
        scene = random_scene(rng)
        yield draw_scene(scene, IMAGE_SIZE, rng), captions_for(scene, lang, rng)


def uitviic_inputs(store: Path) -> dict[str, Path]:
    """UIT-ViIC in its official three files, its COCO images in the COCO 2017 data set."""
    captions, coco = store / "uit-viic", store / "coco-2017-dataset" / "coco2017"
    captions.mkdir(parents=True)
    pairs, next_id = scenes("vi", 0), 1
    for split, n in SPLITS.items():
        folder = coco / ("val2017" if split == "test" else "train2017")
        folder.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for _ in range(n):
            image, texts = next(pairs)
            name = f"{next_id:012d}.jpg"
            image.save(folder / name)
            images.append({"id": next_id, "file_name": name, "width": image.width,
                           "height": image.height})
            annotations += [{"id": next_id * 10 + k, "image_id": next_id, "caption": text}
                            for k, text in enumerate(texts)]
            next_id += 1
        (captions / f"uitviic_captions_{split}2017.json").write_text(json.dumps(
            {"images": images, "annotations": annotations}, ensure_ascii=False))
    return {f"{OWNER}/uit-viic": captions,
            "awsaf49/coco-2017-dataset": store / "coco-2017-dataset"}


def flickr8k_inputs(store: Path) -> dict[str, Path]:
    """Flickr8k as adityajn105/flickr8k holds it: Images/ and captions.txt."""
    folder = store / "flickr8k"
    (folder / "Images").mkdir(parents=True)
    rows, pairs = ["image,caption"], scenes("en", 1)
    for i in range(sum(SPLITS.values())):
        image, texts = next(pairs)
        name = f"{1000 + i}_{i:08x}.jpg"
        image.save(folder / "Images" / name)
        rows += [f"{name},{text}" for text in texts]
    (folder / "captions.txt").write_text("\n".join(rows) + "\n")
    return {"adityajn105/flickr8k": folder}


def tiny_blip(folder: Path) -> Path:
    """An untrained BLIP-1 of the mini base's shape (one layer of width 128, 64-pixel images,
    BLIP's tokenizer over the BERT subset the synthetic captions use), with its processor."""
    from vicap_utils.toy.model import MiniSpec, build_tiny_blip

    model, processor = build_tiny_blip(MiniSpec(layers=1))
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def model_inputs(store: Path, profile: str) -> dict[str, Path]:
    """The profile's base model, built at random and saved for upload as the docs say
    (`bundle.py --save-base`, fp16), as the Kaggle model the kernels attach."""
    from tiny_blip2 import build_tiny_blip2

    handle = bundle.PROFILES[profile].models[0].format(owner=OWNER)
    built = store / "built" / profile
    (tiny_blip if profile == "uitviic-blip" else build_tiny_blip2)(built)
    upload = store / "models" / profile
    bundle.save_base(str(built), upload)
    return {handle: upload}


def make_inputs(r: Rehearsal, build: Path, profiles: list[str]) -> None:
    """Every data set, model and the wheel data set the kernels attach, once."""
    store = r.out / "store"
    r.store[f"{OWNER}/{bundle.WHEEL_DATASET}"] = build / bundle.WHEEL_DATASET
    makers = {"uitviic-blip": uitviic_inputs, "flickr8k-blip2": flickr8k_inputs}
    for profile in profiles:
        r.store.update(makers[profile](store / profile))
        r.store.update(model_inputs(store / profile, profile))


def mount_point(handle: str, kind: str, layout: Layout) -> str:
    """Where Kaggle mounts an input, relative to /kaggle/input."""
    if kind == "model":  # owner/model/framework/variation/version
        return "/".join(handle.split("/")[1:])
    owner, slug = handle.split("/")
    return (layout.dataset if kind == "dataset" else layout.kernel).format(owner=owner,
                                                                          slug=slug)


def mount(src: Path, dst: Path) -> None:
    """A read-only copy (hard links: instant) of `src` at `dst`, metadata files left out."""
    shutil.copytree(src, dst, copy_function=os.link,
                    ignore=shutil.ignore_patterns("*-metadata.json"))
    for path in [dst, *dst.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)


def fingerprint(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under `root` with its size and modification time."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file()}


# ---------------------------------------------------------------- sessions


@contextlib.contextmanager
def kaggle_environment(root: Path, kernels: Path, path: str) -> Iterator[None]:
    """The environment a kernel inherits: this session's /kaggle, the T4 emulation, no index,
    no hub, `path` as PATH, and nothing of the caller's vicap (no PYTHONPATH, no VICAP_OUTPUT)."""
    saved = dict(os.environ)
    for key in list(os.environ):
        if key.startswith(("VICAP_", "PIP_")) or key in ("PYTHONPATH", "KAGGLE_KERNEL_RUN_TYPE"):
            del os.environ[key]
    os.environ.update(VICAP_KAGGLE_ROOT=str(root), VICAP_EMULATE_T4="1",
                      VICAP_CACHE=str(root / "cache"), HF_HUB_OFFLINE="1", PIP_NO_INDEX="1",
                      PIP_CONFIG_FILE=os.devnull, PYTHONNOUSERSITE="1",
                      JUPYTER_PATH=str(kernels), TOKENIZERS_PARALLELISM="false", PATH=path)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def kill_when(ready: Callable[[], bool], stop: threading.Event) -> threading.Thread:
    """Kill this process's children (the kernel) once `ready()`: a session's time running out."""
    def watch() -> None:
        while not stop.wait(0.05):
            if ready():
                for child in psutil.Process().children(recursive=True):
                    child.kill()
                return
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def first_checkpoint(run: Path) -> Callable[[], bool]:
    """True once the run's last/state.json records a trained epoch, not yet finished."""
    def ready() -> bool:
        try:
            state = json.loads((run / "last" / "state.json").read_text())
        except (OSError, ValueError):
            return False
        return state.get("epoch", 0) >= 1 and not state.get("finished")
    return ready


def play(r: Rehearsal, build: Path, profile: str, stem: str, session: str,
         outputs: dict[str, Path], parameters: dict, interrupt: bool = False,
         attach: tuple[str, ...] = ()) -> bool:
    """Run one kernel in a fresh session; record it; True when it did what it should."""
    tag = bundle.PROFILES[profile].tag
    folder = build / f"{tag}-{stem}"
    meta = json.loads((folder / "kernel-metadata.json").read_text())
    root = r.out / tag / session
    (root / "working").mkdir(parents=True)
    layout = LAYOUTS[profile]
    sources = [(h, "dataset") for h in meta["dataset_sources"]] + \
        [(h, "model") for h in meta["model_sources"]] + \
        [(h, "kernel") for h in [*meta["kernel_sources"], *attach]]
    for handle, kind in sources:
        src = outputs[handle] if kind == "kernel" else r.store[handle]
        mount(src, root / "input" / mount_point(handle, kind, layout))
    before = fingerprint(root / "input")
    run = root / "working" / "runs" / profile
    stop = threading.Event()
    if interrupt:
        kill_when(first_checkpoint(run), stop)
    start, error = time.time(), ""
    with kaggle_environment(root, r.python.parent.parent / "jupyter", r.path):
        try:
            papermill.execute_notebook(str(folder / meta["code_file"]),
                                       str(root / f"{stem}.out.ipynb"), parameters=parameters,
                                       kernel_name=KERNEL, cwd=str(root / "working"),
                                       progress_bar=False)
        except Exception as exc:  # papermill and nbclient raise their own types
            error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1:]}"
    stop.set()
    seconds = round(time.time() - start, 1)
    problems = check_session(root, profile, stem, interrupt, error)
    if not r.kernels and "installed from" not in first_cell_output(root / f"{stem}.out.ipynb"):
        problems.append("the first cell did not install vicap into the fresh venv")
    if fingerprint(root / "input") != before:
        problems.append("an input changed")
    outputs[meta["id"]] = root / "working"
    r.kernels.append({"kernel": meta["id"], "session": session, "seconds": seconds,
                      "problems": problems})
    print(f"{meta['id']} [{session}]: {seconds:.1f} s, " +
          ("; ".join(problems) if problems else "ok"), flush=True)
    return not problems


def first_cell_output(notebook: Path) -> str:
    """The text the executed notebook's first cell printed ("" when it did not run)."""
    try:
        cell = json.loads(notebook.read_text())["cells"][0]
    except (OSError, ValueError, IndexError):
        return ""
    return "".join("".join(o.get("text", "")) for o in cell.get("outputs", []))


def check_session(root: Path, profile: str, stem: str, interrupt: bool, error: str) -> list[str]:
    """What is wrong with a finished session: an error, a missing output, a run that the
    interruption did not leave unfinished."""
    if interrupt:
        state = root / "working" / "runs" / profile / "last" / "state.json"
        if not state.is_file() or json.loads(state.read_text()).get("finished"):
            return [f"not interrupted after its first checkpoint ({error or 'it finished'})"]
        return []
    if error:
        return [error]
    return [f"missing {p}" for p in OUTPUTS[stem]
            if not (root / "working" / p.format(profile=profile)).is_file()]


def rehearse(r: Rehearsal, build: Path, profile: str) -> bool:
    """Every kernel of one profile in order; 03 interrupted once and resumed; 04 with 03b's
    output attached as well (the optional SCST comparison); stop at the first that fails."""
    outputs: dict[str, Path] = {}
    tag = bundle.PROFILES[profile].tag
    training = f"{OWNER}/{bundle.kernel_slug(tag, TRAINING)}"
    scst = f"{OWNER}/{bundle.kernel_slug(tag, SCST)}"
    for stem in bundle.notebook_stems():
        params = PARAMETERS.get(stem, {})
        if stem == TRAINING:
            if not play(r, build, profile, stem, f"{stem}-session1", outputs,
                        {**params, "OVERWRITE": True}, interrupt=True):
                return False
            ok = play(r, build, profile, stem, f"{stem}-session2", outputs,
                      {**params, "OVERWRITE": False}, attach=(training,))
        else:
            ok = play(r, build, profile, stem, stem, outputs, params,
                      attach=(scst,) if stem == "04_evaluate" else ())
        if not ok:
            return False
    return True


def setup(out: Path, profiles: list[str], java: bool) -> Rehearsal:
    """Bundle and inputs, recorded in out/setup.json for the profiles' processes."""
    r = Rehearsal(out)
    build = out / "build"
    bundle.bundle(OWNER, build, profiles)
    r.path = os.environ["PATH"] if java else without_java(out / "bin")
    make_inputs(r, build, profiles)
    (out / "setup.json").write_text(json.dumps(
        {"path": r.path, "store": {k: str(v) for k, v in r.store.items()}}))
    return r


def play_profile(out: Path, profile: str) -> int:
    """One profile's kernels (a process of its own, beside the other profile's), in a fresh
    venv of its own: its first kernel's first cell installs vicap there."""
    saved = json.loads((out / "setup.json").read_text())
    r = Rehearsal(out, fresh_venv(out / f"venv-{bundle.PROFILES[profile].tag}"), saved["path"],
                  {k: Path(v) for k, v in saved["store"].items()})
    ok = rehearse(r, out / "build", profile)
    (out / f"{profile}.json").write_text(json.dumps(r.kernels, indent=2))
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="folder for the rehearsal (new or empty; default: a new "
                                      "temporary folder, kept)")
    parser.add_argument("--profile", action="append", choices=sorted(bundle.PROFILES),
                        help="profile to rehearse (repeatable; default: all)")
    parser.add_argument("--java", action="store_true",
                        help="let the kernels find Java (METEOR and the PTB tokenizer then "
                             "start a JVM per call: minutes more); by default they run as on "
                             "an image without Java")
    parser.add_argument("--play", choices=sorted(bundle.PROFILES), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.play:
        return play_profile(Path(args.out), args.play)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="vicap-rehearsal-"))
    if out.exists() and any(out.iterdir()):
        print(f"{out}: not empty; give --out a new or empty folder", file=sys.stderr)
        return 2
    out = out.resolve()
    profiles = args.profile or sorted(bundle.PROFILES)
    start = time.time()
    setup(out, profiles, args.java)
    print(f"bundle and inputs: {time.time() - start:.1f} s", flush=True)
    plays = [subprocess.Popen([sys.executable, __file__, "--play", p, "--out", str(out)])
             for p in profiles]  # side by side: a kernel's start is mostly one core's work
    ok = all([proc.wait() == 0 for proc in plays])
    kernels = [k for p in profiles if (out / f"{p}.json").is_file()
               for k in json.loads((out / f"{p}.json").read_text())]
    total = round(time.time() - start, 1)
    (out / "rehearsal.json").write_text(json.dumps(
        {"ok": ok, "seconds": total, "profiles": profiles, "kernels": kernels}, indent=2))
    print(f"rehearsal {'passed' if ok else 'FAILED'} in {total:.1f} s: {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
