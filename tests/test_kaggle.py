"""The Kaggle bundle: push-ready kernels, and a first cell that installs everything offline."""
from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]*_*.ipynb"))
GPU = {"03_finetune_lora", "03b_scst", "04_evaluate", "05_gallery", "06_caption_demo"}
sys.path.insert(0, str(ROOT / "kaggle"))
import bundle  # noqa: E402
import rehearsal  # noqa: E402


def slugify(title: str) -> str:
    """How Kaggle turns a kernel title into its slug (python-slugify's default)."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def cell_namespace() -> dict:
    """kaggle/first_cell.py's functions, loaded the way a test can call them."""
    namespace = {"__name__": "first_cell"}
    exec(compile((ROOT / "kaggle" / "first_cell.py").read_text(), "first_cell", "exec"),
         namespace)
    return namespace


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """`bundle.py --owner someone --profile uitviic-blip`, as a user runs it (downloads the
    dependency wheels from PyPI)."""
    out = tmp_path_factory.mktemp("bundle") / "build"
    proc = subprocess.run([sys.executable, str(ROOT / "kaggle" / "bundle.py"), "--owner",
                           "someone", "--profile", "uitviic-blip", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_bundle_writes_wheels_and_push_ready_kernels(built):
    wheels = built / "vicap-wheels"
    assert sorted(p.name.split("-")[0] for p in wheels.glob("*.whl")) == \
        ["pycocoevalcap", "vicap"]
    dataset = json.loads((wheels / "dataset-metadata.json").read_text())
    assert dataset["id"] == "someone/vicap-wheels" and dataset["licenses"] == [{"name": "other"}]
    assert 6 <= len(dataset["title"]) <= 50
    assert NOTEBOOKS
    for nb_path in NOTEBOOKS:
        stem = nb_path.stem
        folder = built / f"uitviic-{stem}"
        meta = json.loads((folder / "kernel-metadata.json").read_text())
        slug = f"vicap-uitviic-{stem.replace('_', '-')}"
        assert meta["id"] == f"someone/{slug}" and slugify(meta["title"]) == slug
        assert (meta["code_file"], meta["kernel_type"], meta["language"]) == \
            (nb_path.name, "notebook", "python")
        assert meta["dataset_sources"] == ["someone/uit-viic", "awsaf49/coco-2017-dataset",
                                           "someone/vicap-wheels"]
        assert meta["enable_internet"] is False and meta["is_private"] is True
        assert meta["enable_gpu"] is (stem in GPU)
        if stem in GPU:
            assert meta["machine_shape"] == "NvidiaTeslaT4"
            assert meta["model_sources"] == [
                "someone/blip-image-captioning-base/transformers/default/1"]
        else:
            assert "machine_shape" not in meta and meta["model_sources"] == []
        expected_kernels = (["someone/vicap-uitviic-03-finetune-lora"]
                            if stem in GPU - {"03_finetune_lora"} else [])
        assert meta["kernel_sources"] == expected_kernels
        nb = nbformat.read(folder / nb_path.name, as_version=4)
        original = nbformat.read(nb_path, as_version=4)
        assert len(nb.cells) == len(original.cells) + 1
        assert [c.source for c in nb.cells[1:]] == [c.source for c in original.cells]
        first = nb.cells[0].source
        compile(first, "first cell", "exec")
        settings = re.search(r"^SETTINGS = (.*)$", first, re.MULTILINE).group(1)
        assert eval(settings) == {  # noqa: S307 - our own literal
            "profile": "uitviic-blip", "wheels": ["vicap", "pycocoevalcap"],
            "wheel_dataset": "vicap-wheels",
            "plan": ({"family": "blip", "load_in_8bit": False, "mixed_precision": "auto"}
                     if stem in GPU else None)}


def test_blip2_kernels_and_command_line_overrides(tmp_path, monkeypatch):
    fetched = []
    monkeypatch.setattr(bundle, "wheel_dataset",
                        lambda owner, out, extra: fetched.append(extra) or out / "vicap-wheels")
    monkeypatch.setattr(sys, "argv", [
        "bundle.py", "--owner", "me", "--profile", "flickr8k-blip2", "--out", str(tmp_path),
        "--dataset", "me/flickr8k-official", "--model", "", "--internet"])
    assert bundle.main() == 0
    meta = json.loads((tmp_path / "flickr8k-03_finetune_lora" / "kernel-metadata.json")
                      .read_text())
    assert meta["dataset_sources"] == ["me/flickr8k-official", "me/vicap-wheels"]
    assert meta["model_sources"] == [] and meta["enable_internet"] is True
    assert meta["machine_shape"] == "NvidiaTeslaT4"
    first = nbformat.read(tmp_path / "flickr8k-03_finetune_lora" / "03_finetune_lora.ipynb",
                          as_version=4).cells[0].source
    assert "'wheels': ['vicap', 'pycocoevalcap', 'bitsandbytes']" in first
    assert "'family': 'blip2', 'load_in_8bit': True" in first
    assert fetched == [["bitsandbytes", "pycocoevalcap"]]
    defaults = bundle.bundle("me", tmp_path / "defaults", ["flickr8k-blip2"])
    meta = json.loads((defaults[1] / "kernel-metadata.json").read_text())
    assert meta["dataset_sources"] == ["adityajn105/flickr8k", "me/vicap-wheels"]
    handles = [m for f in defaults[1:] for m in json.loads(
        (f / "kernel-metadata.json").read_text())["model_sources"]]
    assert handles and all(h == "me/blip2-opt-2.7b/transformers/default/1" for h in handles)
    lengths = json.loads((defaults[0].parent / "flickr8k-02_caption_lengths" /
                          "kernel-metadata.json").read_text())  # its max_length advice
    assert lengths["model_sources"] == ["me/blip2-opt-2.7b/transformers/default/1"]
    assert lengths["enable_gpu"] is False


def test_first_cell_finds_the_wheels_in_every_mount_layout(tmp_path):
    cell = cell_namespace()
    find = cell["find_wheel_dir"]
    layouts = {"flat": "vicap-wheels", "datasets": "datasets/someone/vicap-wheels",
               "sub-folder": "datasets/someone/vicap-wheels/wheels", "renamed": "my-wheels"}
    for name, where in layouts.items():
        root = tmp_path / name
        (root / where).mkdir(parents=True)
        (root / where / "vicap-0.1.0-py3-none-any.whl").write_bytes(b"")
        (root / "datasets" / "someone" / "uit-viic").mkdir(parents=True)
        assert find(root) == root / where, name
    root = tmp_path / "two-versions"
    for where, version in (("old-wheels", "0.1.0"), ("datasets/me/vicap-wheels", "0.10.0")):
        (root / where).mkdir(parents=True)
        (root / where / f"vicap-{version}-py3-none-any.whl").write_bytes(b"")
    assert find(root) == root / "datasets" / "me" / "vicap-wheels"
    with pytest.raises(SystemExit, match=r"no vicap wheel under .*nothing: attach the data set "
                                         r"<owner>/vicap-wheels \(Add Input → Datasets\)"):
        find(tmp_path / "nothing")
    assert cell["wheel_info"](Path("Bits_And.bytes-0.50.2-py3-none-any.whl")) == \
        ("bits-and-bytes", "0.50.2")


def test_first_cell_says_what_java_gives(tmp_path, monkeypatch):
    java_line = cell_namespace()["java_line"]
    monkeypatch.setenv("PATH", str(tmp_path))
    assert java_line().startswith("Java: not found; BLEU, ROUGE-L and CIDEr use vicap's "
                                  "pure-Python stand-in for the PTB tokenizer, and METEOR, "
                                  "METEOR-vi and SPICE are reported as unavailable")
    java = tmp_path / "java"
    java.write_text('#!/bin/sh\necho \'openjdk version "17.0.2" 2022-01-18\' >&2\n')
    java.chmod(0o755)
    assert java_line() == ('Java: openjdk version "17.0.2" 2022-01-18; METEOR, METEOR-vi and '
                           "the PTB tokenizer run as in pycocoevalcap")


def test_first_cell_installs_everything_offline_in_a_fresh_venv(built, tmp_path):
    kaggle = tmp_path / "kaggle"
    shutil.copytree(built / "vicap-wheels", kaggle / "input" / "datasets" / "someone" /
                    "vicap-wheels")
    (kaggle / "input" / "datasets" / "someone" / "uit-viic").mkdir()
    fresh = tmp_path / "venv"
    venv.create(fresh, with_pip=True)
    python = fresh / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path("
                              "'purelib'))"], capture_output=True, text=True).stdout.strip()
    Path(purelib, "_base.pth").write_text(f"{rehearsal.base_packages(tmp_path / 'base-site')}\n")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PIP_", "VICAP_")) and k != "PYTHONPATH"}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", VICAP_KAGGLE_ROOT=str(kaggle),
               PYTHONNOUSERSITE="1")
    cells = {}
    for stem in ("03_finetune_lora", "01_data_audit"):
        nb = nbformat.read(built / f"uitviic-{stem}" / f"{stem}.ipynb", as_version=4)
        cells[stem] = tmp_path / f"cell_{stem}.py"
        cells[stem].write_text(nb.cells[0].source)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([python, *args], capture_output=True, text=True, env=env,
                              cwd=tmp_path, timeout=600)

    before = run("-c", "import vicap_utils")
    assert before.returncode != 0 and "No module named 'vicap_utils'" in before.stderr

    training = run(str(cells["03_finetune_lora"]))  # a GPU kernel started on a CPU
    wheel_dir = kaggle / "input" / "datasets" / "someone" / "vicap-wheels"
    assert f"installed from {wheel_dir}: vicap-0.1.0-py3-none-any.whl, pycocoevalcap-1.2" in \
        training.stdout, training.stdout + training.stderr
    assert "profile: uitviic-blip" in training.stdout and "Java: " in training.stdout
    assert "is missing" not in training.stdout
    assert training.returncode == 1  # stops before any work, with one line
    assert training.stderr.strip().splitlines() == [
        "hardware plan: cannot train here: no CUDA GPU here, and real profiles need one (on "
        "Kaggle: choose GPU T4 x2 in the kernel settings (Settings → Accelerator)); on a CPU "
        "use --profile mini"]

    where = run("-c", "import vicap_utils, pycocoevalcap.cider.cider as c; "
                      "print(vicap_utils.__file__); print(c.__file__)")
    assert where.returncode == 0, where.stderr
    assert all(line.startswith(str(fresh)) for line in where.stdout.split()), where.stdout

    again = run(str(cells["01_data_audit"]))  # idempotent: nothing to install the second time
    assert again.returncode == 0, again.stderr
    assert f"already installed from {wheel_dir}: vicap 0.1.0, pycocoevalcap 1.2" in again.stdout
    assert "hardware plan" not in again.stdout  # the audit notebook needs no GPU


def test_the_kaggle_guide_lists_every_requirement_checked():
    guide = (ROOT / "docs" / "kaggle.md").read_text()
    checked = set(re.findall(r"^\| `([\w-]+)[<>=]", guide, re.MULTILINE))
    ours = {re.split(r"[<>=~!\s]", line, maxsplit=1)[0]
            for line in (ROOT / "requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")}
    assert ours <= checked and "bitsandbytes" in checked, ours - checked


def trained_run(run: Path, profile: str) -> Path:
    """What notebook 03 leaves: best/ (an adapter), last/, cache/, data/ with the split record."""
    for part in ("best", "last", "cache", "data"):
        (run / part).mkdir(parents=True)
    (run / "best" / "vicap.json").write_text(json.dumps({"config": {"profile": profile}}))
    (run / "best" / "adapter_model.safetensors").write_bytes(b"weights")
    (run / "last" / "state.json").write_text(json.dumps(
        {"finished": True, "config": {"profile": profile}}))
    (run / "cache" / "features.bin").write_bytes(b"\0" * 64)
    (run / "data" / "val.json").write_text('{"images": [], "annotations": []}')
    (run / "data" / "sources.json").write_text(json.dumps({"val_images": "/kaggle/input/x"}))
    return run


def test_evaluation_finds_notebook_03s_output_attached_as_input(tmp_path, monkeypatch):
    from vicap_utils.ops.io import VicapError
    from vicap_utils.teach.notebook import eval_inputs, run_dir

    kaggle = tmp_path / "kaggle"
    (kaggle / "working").mkdir(parents=True)
    monkeypatch.setenv("VICAP_KAGGLE_ROOT", str(kaggle))
    monkeypatch.delenv("VICAP_OUTPUT", raising=False)
    slug = bundle.kernel_slug("uitviic", "03_finetune_lora")
    run = run_dir("uitviic-blip")
    with pytest.raises(VicapError, match=rf"no fine-tuned adapter; attach <owner>/{slug} as "
                                         r"input \(Add Input → Your Work"):
        eval_inputs(run)
    mounted = kaggle / "input" / slug
    trained_run(mounted / "runs" / "flickr8k-blip2", "flickr8k-blip2")
    with pytest.raises(VicapError, match="no fine-tuned adapter"):  # another profile's adapter
        eval_inputs(run)
    trained_run(mounted / "runs" / "uitviic-blip", "uitviic-blip")
    before = sorted(p for p in mounted.rglob("*"))
    assert eval_inputs(run) == (run / "data" / "val.json", Path("/kaggle/input/x"))
    assert (run / "best" / "adapter_model.safetensors").read_bytes() == b"weights"
    assert not (run / "last").exists() and not (run / "cache").exists()
    assert sorted(p for p in mounted.rglob("*")) == before
    assert eval_inputs(run)[0] == run / "data" / "val.json"  # the copy is used from then on


def test_bundle_needs_only_the_standard_library():
    tree = ast.parse((ROOT / "kaggle" / "bundle.py").read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = {a.name.split(".")[0] for n in top if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in top if isinstance(n, ast.ImportFrom)}
    assert names - {"__future__"} <= sys.stdlib_module_names, names - sys.stdlib_module_names
    inner = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
             for a in n.names} - names
    assert inner == {"torch", "transformers"}  # --save-base alone, after its one-line check


def test_the_first_cells_plan_settings_are_the_profiles(monkeypatch):
    from vicap_utils.config import load_config

    for name, spec in bundle.PROFILES.items():
        cfg = load_config(name)
        assert spec.plan == {"family": cfg.model.family, "load_in_8bit": cfg.model.load_in_8bit,
                             "mixed_precision": cfg.train.mixed_precision}, name


def test_bundle_metadata_commands_and_whole_builds(tmp_path, monkeypatch, capsys):
    def fake_wheels(owner, out, extra):
        (out / "vicap-wheels").mkdir(parents=True)
        return out / "vicap-wheels"

    monkeypatch.setattr(bundle, "wheel_dataset", fake_wheels)
    data, mine = tmp_path / "uitviic", tmp_path / "mine"
    data.mkdir()
    mine.mkdir()
    (mine / "dataset-metadata.json").write_text("{}")
    out = tmp_path / "build"
    monkeypatch.setattr(sys, "argv", ["bundle.py", "--owner", "me", "--profile", "uitviic-blip",
                                      "--out", str(out), "--data-dir", f"uit-viic={data}",
                                      "--data-dir", f"other={mine}"])
    assert bundle.main() == 0
    assert json.loads((data / "dataset-metadata.json").read_text())["id"] == "me/uit-viic"
    assert (mine / "dataset-metadata.json").read_text() == "{}"  # never overwritten
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith(
        ("kaggle ", "# "))]
    assert lines[:3] == [f"kaggle datasets create -p {data}", f"kaggle datasets create -p {mine}",
                         f"kaggle datasets create -p {out / 'vicap-wheels'}"]
    assert lines[3].startswith("# model me/blip-image-captioning-base/transformers/default/1: "
                               "python kaggle/bundle.py --owner me --save-base")
    pushes = [line.split("uitviic-")[-1] for line in lines if "kernels push" in line]
    assert pushes == bundle.notebook_stems()
    wait = lines.index(f"kaggle kernels push -p {out / 'uitviic-04_evaluate'}") - 1
    assert lines[wait] == ("# when me/vicap-uitviic-03-finetune-lora has finished (kaggle "
                           "kernels status me/vicap-uitviic-03-finetune-lora):")

    def broken(owner, out, extra):
        raise OSError("disk full")

    monkeypatch.setattr(bundle, "wheel_dataset", broken)
    with pytest.raises(OSError):
        bundle.bundle("me", tmp_path / "half", ["uitviic-blip"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build", "mine", "uitviic"]
    with pytest.raises(SystemExit, match=rf"{data}: not made by kaggle/bundle.py"):
        bundle.bundle("me", data, ["uitviic-blip"])


def test_save_base_writes_fp16_weights_and_the_kaggle_model_metadata(tmp_path, monkeypatch,
                                                                     capsys):
    from safetensors import safe_open
    from tiny_blip2 import build_tiny_blip2

    source = build_tiny_blip2(tmp_path / "blip2-opt-2.7b")
    monkeypatch.setattr(sys, "argv", ["bundle.py", "--owner", "me", "--save-base", str(source),
                                      "--out", str(tmp_path / "upload")])
    assert bundle.main() == 0
    weights = tmp_path / "upload" / "blip2-opt-2.7b"
    with safe_open(str(weights / "model.safetensors"), "pt") as f:
        dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}
    # fp16, except what transformers keeps in fp32 (Blip2's _keep_in_fp32_modules)
    assert {k.split(".")[0] for k, d in dtypes.items() if d != "F16"} == {"qformer", "query_tokens"}
    assert {d for k, d in dtypes.items() if k.startswith(("vision_model", "language_model"))} == \
        {"F16"}
    assert (weights / "tokenizer_config.json").is_file()
    instance = json.loads((weights / "model-instance-metadata.json").read_text())
    assert (instance["ownerSlug"], instance["modelSlug"], instance["framework"],
            instance["instanceSlug"]) == ("me", "blip2-opt-2.7b", "transformers", "default")
    card = tmp_path / "upload" / "blip2-opt-2.7b-model"
    model = json.loads((card / "model-metadata.json").read_text())
    assert (model["ownerSlug"], model["slug"], model["isPrivate"]) == ("me", "blip2-opt-2.7b",
                                                                      True)
    assert capsys.readouterr().out.splitlines()[-2:] == [
        f"kaggle models create -p {card}", f"kaggle models instances create -p {weights}"]
