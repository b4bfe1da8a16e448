"""Hostile inputs against train, predict, adapters and checkpoints: one table, one rule.

A damaged checkpoint or adapter, a bad config value, an output that is an input or a folder
vicap does not own ends in exit 2 with ONE stderr line that names the file or folder and says
what to do: no traceback, no earlier output (the run's last/, best/, final/, the user's files)
changed. One tiny run is trained per module and copied for every case. Faults that need
another process (a file-size limit for "disk full", a second writer, no permission) run the
CLI in a subprocess.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_hostile_inputs import (  # noqa: F401 (permissions_apply is a fixture)
    assert_nothing_lost,
    lock_held,
    permissions_apply,
    snapshot,
    without_permission_override,
)

from vicap_utils.__main__ import main
from vicap_utils.ops.folders import LOCK, record
from vicap_utils.toy.data import generate

TINY = ["--set", "data.synthetic_images=40", "--set", "train.epochs=1", "--set",
        "train.max_steps=2", "--set", "train.batch_size=8", "--set", "eval.num_beams=1",
        "--set", "eval.max_new_tokens=4", "--set", "eval.batch_size=8"]
RESUME = "train --config {r}/run/config.json --out {r}/run --resume"
PREDICT = ("predict --model {r}/run/best --annotations {r}/set/captions.json "
           "--images {r}/set/images --out {r}/preds.json")
SET = "train --profile mini --out {r}/new --set "
AGAIN = "--overwrite instead of --resume"
GARBAGE = b"\x8a\x00 not a checkpoint \xff" * 64
PROGRESS = re.compile(r"\d+%\||it/s\]|s/it\]|/s\]$|^\s*warnings\.warn\(|Warning: ")


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A finished tiny run (last/, best/, final/), a small image set and earlier predictions."""
    root = tmp_path_factory.mktemp("hostile-training")
    assert main(["train", "--profile", "mini", "--out", str(root / "run"), *TINY]) == 0
    generate(root / "set", n_images=3, seed=5)
    record(root, ["preds.json"])  # an earlier predict's output, recorded as predict records it
    (root / "preds.json").write_text('[{"image_id": 1, "caption": "earlier"}]\n')
    return root


@pytest.fixture
def scene(template, tmp_path) -> Path:
    """A private copy of the template to spoil (its data record pointing at itself)."""
    root = Path(shutil.copytree(template, tmp_path / "s", symlinks=True))
    sources = root / "run" / "data" / "sources.json"
    sources.write_text(sources.read_text().replace(str(template), str(root)))
    return root


def error_lines(err: str) -> list[str]:
    """stderr without progress bars and library warnings."""
    return [ln for ln in err.replace("\r", "\n").splitlines()
            if ln.strip() and not PROGRESS.search(ln)]


# ---------------------------------------------------------------- spoilers


def put(rel: str, data: bytes | Callable[[bytes], bytes]) -> Callable[[Path], None]:
    """Replace a file's bytes (a function of the old bytes, or new bytes)."""
    def setup(root: Path) -> None:
        path = root / rel
        path.write_bytes(data(path.read_bytes()) if callable(data) else data)
    return setup


def truncate(rel: str) -> Callable[[Path], None]:
    return put(rel, lambda b: b[:len(b) // 2])


def remove(rel: str) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        path = root / rel
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return setup


def edit_json(rel: str, change: Callable[[dict], object]) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        path = root / rel
        data = json.loads(path.read_text(encoding="utf-8"))
        change(data)
        path.write_text(json.dumps(data), encoding="utf-8")
    return setup


def reshape(rel: str) -> Callable[[Path], None]:
    """Weights of the same names, each one row longer: from a model they do not fit."""
    def setup(root: Path) -> None:
        path = root / rel
        weights = load_file(str(path))
        save_file({k: torch.zeros(t.shape[0] + 1, *t.shape[1:]) for k, t in weights.items()},
                  str(path))
    return setup


def user_folder(*files: str) -> Callable[[Path], None]:
    """{r}/user: a folder the user made (no vicap marker) holding `files`."""
    def setup(root: Path) -> None:
        for rel in files:
            (root / "user" / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / "user" / rel).write_text("the user's own\n")
    return setup


def first_image(root: Path) -> Path:
    return sorted((root / "set" / "images").iterdir())[0]


def image_as_text(root: Path) -> None:
    first_image(root).write_text("this is not a JPEG")


# ---------------------------------------------------------------- the table


@dataclass(frozen=True)
class Case:
    """One hostile input: how to spoil the scene, the command, what the one line says
    (`says`, every part) and names (`names`, relative to the scene root {r})."""

    id: str
    argv: str
    setup: Callable[[Path], None] | None = None
    says: tuple[str, ...] = ()
    names: str = ""


def last(name: str) -> str:
    return "run/last/" + name


def best(name: str) -> str:
    return "run/best/" + name


DAMAGED = ("damaged checkpoint file", AGAIN)
WEIGHTS = ("damaged adapter weights", "best/ or final/")
FITS = ("cannot load the adapter onto its base 'mini'", "train again")

CASES = [
    # -- a damaged last/: refused by --resume (the path that reads it) before any work
    Case("last-optimizer-truncated", RESUME, truncate(last("optimizer.pt")), DAMAGED,
         last("optimizer.pt")),
    Case("last-optimizer-garbage", RESUME, put(last("optimizer.pt"), GARBAGE), DAMAGED,
         last("optimizer.pt")),
    Case("last-scheduler-empty", RESUME, put(last("scheduler.pt"), b""), DAMAGED,
         last("scheduler.pt")),
    Case("last-rng-truncated", RESUME, truncate(last("rng.pt")), DAMAGED, last("rng.pt")),
    Case("last-rng-missing", RESUME, remove(last("rng.pt")),
         ("incomplete checkpoint (no rng.pt)", AGAIN), "{r}/run/last"),
    Case("last-weights-truncated", RESUME, truncate(last("trainable.safetensors")), DAMAGED,
         last("trainable.safetensors")),
    Case("last-weights-garbage", RESUME, put(last("trainable.safetensors"), GARBAGE), DAMAGED,
         last("trainable.safetensors")),
    Case("last-weights-empty", RESUME, put(last("trainable.safetensors"), b""), DAMAGED,
         last("trainable.safetensors")),
    Case("last-weights-of-another-model", RESUME, reshape(last("trainable.safetensors")),
         ("checkpoint does not fit this model", "has shape", AGAIN),
         last("trainable.safetensors")),
    Case("last-optimizer-of-another-model", RESUME,
         put(last("optimizer.pt"), lambda _: _torch_bytes({"state": {}, "param_groups": []})),
         DAMAGED, last("optimizer.pt")),
    Case("last-state-not-json", RESUME, put(last("state.json"), b"{oops"),
         ("not valid JSON",), last("state.json")),
    Case("last-state-a-list", RESUME, put(last("state.json"), b"[1, 2]"),
         ("not a vicap checkpoint state", AGAIN), last("state.json")),
    Case("last-state-epoch-as-text", RESUME,
         edit_json(last("state.json"), lambda s: s.update(epoch="three")),
         ("'epoch' is 'three', not an integer", AGAIN), last("state.json")),
    Case("last-state-finished-as-number", RESUME,
         edit_json(last("state.json"), lambda s: s.update(finished=1)),
         ("'finished' is 1, not true or false",), last("state.json")),
    Case("last-state-without-global-step", RESUME,
         edit_json(last("state.json"), lambda s: s.pop("global_step")),
         ("no 'global_step'", AGAIN), last("state.json")),
    Case("last-state-vocabulary-of-numbers", RESUME,
         edit_json(last("state.json"), lambda s: s.update(vocab_entries=[1, 2])),
         ("'vocab_entries'", "not a list of text"), last("state.json")),
    Case("last-state-config-value-wrong-type", RESUME,
         edit_json(last("state.json"), lambda s: s["config"]["train"].update(batch_size="big")),
         ("train.batch_size: expected int",), last("state.json")),
    Case("last-without-state", RESUME, remove(last("state.json")),
         ("incomplete checkpoint (no state.json)", AGAIN), "{r}/run/last"),
    Case("resume-without-last", RESUME, remove("run/last"),
         ("no checkpoint to resume from", AGAIN), "{r}/run/last"),
    Case("resume-into-an-empty-folder", "train --config {r}/run/config.json --out {r}/new "
         "--resume", None, ("no checkpoint to resume from", "run without --resume to start"),
         "{r}/new/last"),
    Case("train-again-over-a-finished-run", "train --config {r}/run/config.json --out {r}/run",
         None, ("holds a finished run", "--resume", "--overwrite"), "{r}/run"),
    # -- a damaged adapter: predict names the file and what is wrong
    Case("adapter-weights-truncated", PREDICT, truncate(best("adapter_model.safetensors")),
         WEIGHTS, best("adapter_model.safetensors")),
    Case("adapter-weights-garbage", PREDICT, put(best("adapter_model.safetensors"), GARBAGE),
         WEIGHTS, best("adapter_model.safetensors")),
    Case("adapter-weights-empty", PREDICT, put(best("adapter_model.safetensors"), b""), WEIGHTS,
         best("adapter_model.safetensors")),
    Case("adapter-weights-missing", PREDICT, remove(best("adapter_model.safetensors")),
         ("adapter_model.safetensors missing",), "{r}/run/best"),
    Case("adapter-weights-of-another-shape", PREDICT, reshape(best("adapter_model.safetensors")),
         FITS, "{r}/run/best"),
    Case("adapter-without-its-vocabulary", PREDICT,
         edit_json(best("vicap.json"), lambda m: m.update(vocab_entries=[])), FITS,
         "{r}/run/best"),
    Case("adapter-for-other-modules", PREDICT,
         edit_json(best("adapter_config.json"), lambda c: c.update(target_modules=["nope"])),
         FITS, "{r}/run/best"),
    Case("adapter-of-a-base-that-is-gone", PREDICT,
         lambda r: edit_json(best("vicap.json"), lambda m: m["config"]["model"].update(
             base=str(r / "gone")))(r), ("not a local folder", "model.base="), "{r}/gone"),
    Case("adapter-config-not-json", PREDICT, put(best("adapter_config.json"), b"{oops"),
         ("cannot load the adapter",), "{r}/run/best"),
    Case("adapter-metadata-not-json", PREDICT, put(best("vicap.json"), b"{oops"),
         ("not valid JSON",), best("vicap.json")),
    Case("adapter-metadata-without-config", PREDICT, put(best("vicap.json"), b"{}"),
         ("not vicap adapter metadata",), best("vicap.json")),
    Case("adapter-metadata-value-wrong-type", PREDICT,
         edit_json(best("vicap.json"), lambda m: m["config"]["model"].update(max_length="long")),
         ("model.max_length: expected int",), best("vicap.json")),
    Case("adapter-metadata-vocabulary-not-a-list", PREDICT,
         edit_json(best("vicap.json"), lambda m: m.update(vocab_entries=5)),
         ("'vocab_entries' must be a list of text",), best("vicap.json")),
    # -- predict's output must not be one of its inputs
    Case("predict-out-is-annotations", PREDICT.replace("{r}/preds.json", "{r}/set/captions.json"),
         None, ("would write over the input",), "{r}/set/captions.json"),
    Case("predict-out-symlink-to-annotations", PREDICT,
         lambda r: (r / "preds.json").unlink() or (r / "preds.json").symlink_to(
             r / "set" / "captions.json"), ("would write over the input", "--annotations"),
         "{r}/preds.json"),
    Case("predict-out-hard-link-of-an-image", PREDICT,
         lambda r: (r / "preds.json").unlink() or os.link(first_image(r), r / "preds.json"),
         ("would write over the input", "--images"), "{r}/preds.json"),
    Case("predict-out-is-the-adapter-metadata", PREDICT.replace("{r}/preds.json",
                                                                "{r}/" + best("vicap.json")),
         None, ("would write over the input", "--model"), best("vicap.json")),
    Case("predict-out-is-the-images-folder", PREDICT.replace("{r}/preds.json", "{r}/set/images"),
         None, ("is a folder; give a file name",), "{r}/set/images"),
    # an undecodable image is refused, naming the first one, before predictions are written
    Case("predict-image-is-text", PREDICT, image_as_text, ("cannot decode this image",
                                                           "vicap audit"), ""),
    Case("predict-image-missing", PREDICT, lambda r: first_image(r).unlink(),
         ("1 listed images missing",), "{r}/set/images"),
    Case("predict-zero-beams", PREDICT + " --num-beams 0", None,
         ("--num-beams must be at least 1",)),
    # -- folders training does not own, inputs training would write over
    Case("train-overwrite-a-user-folder-with-data",
         "train --config {r}/run/config.json --out {r}/user --overwrite", user_folder("data/x"),
         ("vicap did not create this folder", "pick another --out"), "{r}/user"),
    Case("train-into-a-user-data-folder", "train --config {r}/run/config.json --out {r}/user",
         user_folder("data/x"), ("exists and vicap did not write it",), "{r}/user/data"),
    Case("train-over-a-user-config-json", "train --config {r}/run/config.json --out {r}/user",
         user_folder("config.json"), ("exists and vicap did not write it",),
         "{r}/user/config.json"),
    Case("train-input-inside-the-run-output",
         "train --config {r}/run/config.json --out {r}/run --overwrite --set data.source=coco "
         "--set data.train_annotations={r}/run/data/train.json", None,
         ("would replace the folder holding the input", "data.train_annotations"),
         "{r}/run/data"),
    Case("train-input-in-the-prepared-folder",
         "train --config {r}/run/config.json --out {r}/new --set data.source=coco "
         "--set data.prepared={r}/run/data --set data.train_annotations={r}/run/data/clean.json",
         None, ("would write over the input", "data.prepared"), "{r}/run/data/clean.json"),
    # -- config values: refused before the run folder is touched
    Case("batch-size-0", SET + "train.batch_size=0", None, ("train.batch_size=0", "at least 1")),
    Case("grad-accum-0", SET + "train.grad_accum=0", None, ("train.grad_accum=0", "at least 1")),
    Case("scheduler-bogus", SET + "train.scheduler=bogus", None,
         ("train.scheduler='bogus' is not one of cosine, linear, constant",)),
    Case("mixed-precision-fp8", SET + "train.mixed_precision=fp8", None,
         ("train.mixed_precision='fp8' is not one of",)),
    Case("num-beams-negative", SET + "eval.num_beams=-2", None, ("eval.num_beams=-2",)),
    Case("lora-r-0", SET + "lora.r=0", None, ("lora.r=0", "at least 1")),
    Case("epochs-not-a-number", SET + "train.epochs=abc", None,
         ("train.epochs: expected int, got 'abc'",)),
    Case("unknown-key", SET + "train.nope=1", None, ("unknown key train.nope", "train.lr")),
    Case("set-without-value", SET + "train.lr", None, ("expected SECTION.KEY=VALUE",)),
    Case("set-without-section", SET + "lr=1", None, ("expected SECTION.KEY=VALUE",)),
    Case("config-file-not-json", "train --config {r}/preds.json --out {r}/new",
         put("preds.json", b"{oops"), ("not valid JSON",), "{r}/preds.json"),
]


def _torch_bytes(obj) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def run_main(argv: list[str], capsys) -> tuple[int, str]:
    """`vicap ARGV` in this process: (exit code, stderr)."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    return code, captured.err


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_training_input(case: Case, scene: Path, capsys) -> None:
    if case.setup:
        case.setup(scene)
    before = snapshot(scene)
    argv = shlex.split(case.argv.format(r=scene))
    code, err = run_main(argv, capsys)
    assert code == 2, err
    lines = error_lines(err)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"vicap {argv[0]}: error: "), lines[0]
    for part in case.says:
        assert part in lines[0], lines[0]
    named = case.names if not case.names or case.names.startswith("{r}") else \
        "{r}/" + case.names
    assert named.format(r=scene) in lines[0], lines[0]
    if case.id == "predict-image-is-text":
        assert str(first_image(scene)) in lines[0]
    assert_nothing_lost(before, scene)


# ---------------------------------------------------------------- faults in another process


def cli(argv: list[str], *, fsize: int | None = None,
        preexec: Callable[[], None] | None = None) -> subprocess.CompletedProcess:
    """Run `vicap` in a subprocess, optionally under a file-size limit (SIGXFSZ ignored, so a
    write fails with EFBIG as on a full disk)."""
    import resource
    import signal

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.run([sys.executable, "-m", "vicap_utils", *argv], capture_output=True,
                          text=True, timeout=300, preexec_fn=limit if fsize else preexec,
                          env=dict(os.environ))


def assert_one_line(proc: subprocess.CompletedProcess, *words: str) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1, lines
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def unfinish(root: Path) -> None:
    """Make the run one killed after its last epoch's checkpoint, before final/: --resume
    writes final/, then last/."""
    edit_json("run/last/state.json", lambda s: s.update(finished=False))(root)
    shutil.rmtree(root / "run" / "final")


@pytest.mark.parametrize("fsize, target", [(300_000, "last"), (150_000, "final")],
                         ids=["optimizer-state", "adapter-weights"])
def test_disk_full_keeps_the_previous_checkpoint(scene: Path, fsize: int, target: str) -> None:
    """The limit lets the small files through and stops the first big one: torch's
    optimizer state (last/) or the adapter's safetensors (final/)."""
    unfinish(scene)
    kept = {name: snapshot(scene / "run" / name) for name in ("last", "best", "data")}
    proc = cli(shlex.split(RESUME.format(r=scene)), fsize=fsize)
    assert_one_line(proc, "disk full", f"{scene}/run/{target}:", "free some space")
    for name, files in kept.items():
        assert snapshot(scene / "run" / name) == files, name
    assert not [p for p in (scene / "run").iterdir() if p.name.endswith((".tmp", ".old"))]


def test_second_writer_is_refused_at_once(scene: Path, capsys) -> None:
    with lock_held(scene / "run") as pid:
        before = snapshot(scene)
        code, err = run_main(shlex.split(RESUME.format(r=scene)), capsys)
        assert code == 2
        assert error_lines(err) == [f"vicap train: error: {scene / 'run'}: is in use by process "
                                    f"{pid}; wait for it or pick another --out"]
        assert_nothing_lost(before, scene)


def test_a_dead_writers_lock_is_taken_over(scene: Path, capsys) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (scene / "run" / LOCK).write_text(f"{dead.pid}\n")
    kept = snapshot(scene / "run" / "last")
    code, err = run_main(shlex.split(RESUME.format(r=scene)), capsys)
    assert code == 0, err
    assert not (scene / "run" / LOCK).exists()
    assert snapshot(scene / "run" / "last") == kept


@pytest.mark.usefixtures("permissions_apply")
def test_predict_into_a_read_only_folder_fails_before_loading(scene: Path) -> None:
    (scene / "ro").mkdir()
    before = snapshot(scene)
    (scene / "ro").chmod(0o555)
    try:
        proc = cli(shlex.split(PREDICT.replace("{r}/preds.json", "{r}/ro/p.json")
                               .format(r=scene)), preexec=without_permission_override)
    finally:
        (scene / "ro").chmod(0o755)
    assert_one_line(proc, "cannot write in this folder", f"{scene}/ro")
    assert "captioning" not in proc.stderr  # refused before the model was loaded
    assert_nothing_lost(before, scene)


def test_a_checkpoint_state_from_an_older_vicap_takes_defaults_for_newer_fields(tmp_path):
    from dataclasses import asdict

    from vicap_utils.ops.checkpoint import RunState, read_state

    state = asdict(RunState(epoch=3, global_step=30, config={"profile": "mini"}))
    for newer in ("full_val", "pending"):
        state.pop(newer)
    path = tmp_path / "state.json"
    path.write_text(json.dumps(state))
    read = read_state(path)
    assert read.epoch == 3 and read.global_step == 30 and read.full_val == {} == read.pending
