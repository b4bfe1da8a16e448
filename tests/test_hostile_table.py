"""Hostile use, round 2 (issue 19): settings, environment and outputs checked before any work.

One table: every case ends in exit 2 with exactly one stderr line that says what and names
where, no traceback, and every file and folder that was there before is unchanged (checksums),
nothing added but vicap's lock file. All run in-process; `train` cases stop before the run
folder is created (the base's config and a meta-device copy answer the model's questions).
"""
from __future__ import annotations

import errno
import json
import os
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image
from test_hostile_round2 import checksums
from tiny_blip2 import build_tiny_blip2

from vicap_utils import train
from vicap_utils.__main__ import main
from vicap_utils.ops import env, io
from vicap_utils.ops.io import atomic_dir, atomic_write_json, read_json
from vicap_utils.vocab import encode_captions, stock_blip_tokenizer

REFERENCES = {"images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
              "annotations": [{"id": 1, "image_id": 1, "caption": "con chó chạy trên cỏ"},
                              {"id": 2, "image_id": 2, "caption": "hai con mèo ngủ"}]}
PREDICTIONS = [{"image_id": 1, "caption": "con chó chạy"}, {"image_id": 2, "caption": "mèo ngủ"}]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """Inputs of every command, a tiny BLIP-2 base, and earlier outputs to keep."""
    root = tmp_path_factory.mktemp("table")
    (root / "images").mkdir()
    for name, shade in (("a.png", 0), ("b.png", 90)):
        Image.new("RGB", (8, 8), (shade, 0, 0)).save(root / "images" / name)
    (root / "refs.json").write_text(json.dumps(REFERENCES))
    (root / "preds.json").write_text(json.dumps(PREDICTIONS))
    (root / "metrics.json").write_text('{"CIDEr": 1.5}\n')
    (root / "a-file").write_text("not a folder")
    build_tiny_blip2(root / "blip2")
    return root


def snapshot(root: Path) -> tuple[dict[str, str], list[str]]:
    """Every file's checksum and every folder (an empty one left behind counts)."""
    return checksums(root), sorted(str(p) for p in root.rglob("*") if p.is_dir())


@dataclass(frozen=True)
class Case:
    """argv ({r} = the root), the words the one error line holds, an optional environment
    (`None` unsets) and a setup run before the snapshot."""

    id: str
    argv: str
    says: tuple[str, ...]
    env: tuple[tuple[str, str | None], ...] = ()
    setup: Callable[[Path], None] | None = None


TRAIN = "train --profile mini --out {r}/run --set "
EVALUATE = "evaluate --predictions {r}/preds.json --references {r}/refs.json --out "
PREDICT = "predict --model mini --no-adapter --images {r}/images --out {r}/p.json --annotations "


def train_set(key: str, value: str, *says: str) -> Case:
    return Case(f"set-{key}={value[:30]}", TRAIN + shlex.quote(f"{key}={value}"), says)


def config_file(name: str, content: str, says: str) -> Case:
    """A --config file; an error the file alone causes names it, one the base bounds (the
    last few) names the key."""
    def setup(root: Path) -> None:
        (root / f"{name}.json").write_text(content)
    where = () if name in ("profile-number", "lora-regex", "lora-rank", "family") else (
        f"{{r}}/{name}.json",)
    return Case(f"config-{name}", f"train --config {{r}}/{name}.json --out {{r}}/run",
                (*where, says), setup=setup)


def captions(name: str, data: dict | str) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        (root / name).write_text(data if isinstance(data, str) else json.dumps(data))
    return setup


SEEDS = [(key, value) for key in ("train.seed", "data.split_seed", "data.synthetic_seed")
         for value in ("-1", "4294967296", "99999999999999999999", "-9223372036854775809")]
RANGES = [("train.epochs", "0"), ("train.batch_size", "-4"), ("train.grad_accum", "0"),
          ("train.lr", "0"), ("train.lr", "nan"), ("train.lr", "inf"), ("train.lr", "-inf"),
          ("train.warmup_ratio", "1.5"), ("train.label_smoothing", "1"), ("lora.dropout", "1"),
          ("lora.r", "0"), ("lora.alpha", "-1"), ("data.val_fraction", "0"),
          ("data.val_fraction", "1"), ("data.synthetic_images", "1000000000"),
          ("data.synthetic_images", "1"), ("eval.num_beams", "0"), ("eval.num_beams", "65"),
          ("eval.max_new_tokens", "0"), ("model.max_length", "2"), ("model.max_length", "513"),
          ("train.num_workers", "65"), ("train.num_workers", "-2"), ("train.val_every", "0")]
TYPES = [("train.epochs", "2.5", "expected int"), ("train.epochs", "ten", "expected int"),
         ("train.lr", "fast", "expected float"), ("model.load_in_8bit", "maybe", "expected bool"),
         ("train.seed", "1e3", "expected int"), ("model.family", "blip3", "is not one of"),
         ("train.scheduler", "step", "is not one of"), ("data.source", "imagenet", "not one of"),
         ("train.mixed_precision", "fp8", "is not one of"), ("data.lang", "fr", "is not one of")]
LORA_TARGETS = [("((", "not a valid regular expression"), ("[a-", "not a valid regular expr"),
                ("a)", "not a valid regular expression"), ("*", "not a valid regular expression"),
                ("vision_model", "which LoRA cannot wrap"), ("text_decoder", "cannot wrap"),
                ("embeddings", "which LoRA cannot wrap"), (r".*layer\.0", "cannot wrap"),
                ("dropout", "which LoRA cannot wrap"), ("LayerNorm", "which LoRA cannot wrap"),
                ("nothing", "matches no module"), ("nothing,nowhere", "matches no module"),
                (r".*\.q_proj", "matches no module")]
MODEL = [("lora.r", "1000000000", "must be at most 128"), ("lora.r", "129", "at most 128"),
         ("lora.r", "2147483648", "smallest dimension"), ("model.family", "blip2", "valid: blip"),
         ("model.max_length", "65", "at most 64"), ("model.max_length", "512", "at most 64"),
         ("eval.max_new_tokens", "64", "must be at most 63"),
         ("eval.max_new_tokens", "512", "64 text positions"),
         ("model.prompt", " ".join(["một"] * 30), "model.max_length=32 leaves room for at most 29"),
         ("model.base", "{r}/images", "{r}/images: no config.json; expected a saved model")]
CONFIG_FILES = [
    ("epochs-true", '{"train": {"epochs": true}}', "train.epochs: expected int, got True"),
    ("epochs-text", '{"train": {"epochs": "3"}}', "train.epochs: expected int, got '3'"),
    ("epochs-float", '{"train": {"epochs": 3.0}}', "train.epochs: expected int"),
    ("lr-text", '{"train": {"lr": "1e-4"}}', "train.lr: expected float"),
    ("lr-true", '{"train": {"lr": true}}', "train.lr: expected float"),
    ("lr-nan", '{"train": {"lr": NaN}}', "train.lr=nan is out of range"),
    ("lr-list", '{"train": {"lr": [1]}}', "train.lr: expected float"),
    ("8bit-number", '{"model": {"load_in_8bit": 1}}', "model.load_in_8bit: expected bool"),
    ("8bit-text", '{"model": {"load_in_8bit": "yes"}}', "model.load_in_8bit: expected bool"),
    ("base-number", '{"model": {"base": 5}}', "model.base: expected str"),
    ("section-number", '{"train": 5}', "section 'train' must be an object"),
    ("section-null", '{"lora": null}', "section 'lora' must be an object"),
    ("top-level-list", "[1, 2]", "a config must be a JSON object"),
    ("unknown-section", '{"trian": {}}', "unknown section 'trian'"),
    ("unknown-key", '{"train": {"epoch": 3}}', "unknown key train.epoch"),
    ("seed-negative", '{"train": {"seed": -1}}', "train.seed=-1 is out of range"),
    ("seed-huge", '{"data": {"split_seed": 4294967296}}', "data.split_seed=4294967296"),
    ("profile-number", '{"profile": 5}', "unknown profile 5"),
    ("repeated-key", '{"train": {"epochs": 3}, "train": {}}', "'train' appears twice"),
    ("repeated-inner-key", '{"train": {"epochs": 3, "epochs": 4}}', "'epochs' appears twice"),
    ("lora-regex", '{"lora": {"target_modules": "(("}}', "not a valid regular expression"),
    ("lora-rank", '{"lora": {"r": 1000000000}}', "lora.r=1000000000 is out of range"),
    ("family", '{"model": {"family": "blip2"}}', "model.family='blip2' does not match"),
]
BLIP2 = "train --profile mini --out {r}/run --set model.base={r}/blip2 --set "
ENVIRONMENT = [
    ("profile-bogus", "train --profile auto --out {r}/run", (("VICAP_PROFILE", "bogus"),),
     ("unknown VICAP_PROFILE='bogus'",)),
    ("cache-under-a-file", TRAIN + "train.epochs=1",
     (("VICAP_CACHE", "{r}/a-file/cache"),), ("VICAP_CACHE", "{r}/a-file")),
    ("cache-dev-null", TRAIN + "train.epochs=1", (("VICAP_CACHE", "/dev/null"),),
     ("VICAP_CACHE", "/dev/null")),
    ("cache-in-proc", TRAIN + "train.epochs=1", (("VICAP_CACHE", "/proc/vicap"),),
     ("VICAP_CACHE", "/proc/vicap")),
    ("cache-proc-itself", TRAIN + "train.epochs=1", (("VICAP_CACHE", "/proc"),),
     ("VICAP_CACHE", "/proc")),
    ("home-dev-null", TRAIN + "train.epochs=1", (("VICAP_CACHE", None), ("HOME", "/dev/null")),
     ("set HOME (or VICAP_CACHE)", "/dev/null/.cache")),
    ("home-under-a-file", TRAIN + "train.epochs=1",
     (("VICAP_CACHE", None), ("HOME", "{r}/a-file/home")), ("HOME", "{r}/a-file")),
    ("predict-cache-dev-null", PREDICT + "{r}/refs.json", (("VICAP_CACHE", "/dev/null"),),
     ("VICAP_CACHE",)),
]
LONG = "x" * 240
OUTPUTS = [
    ("evaluate-trailing-slash", EVALUATE + "{r}/newdir/", ("'{r}/newdir/' names a folder",)),
    ("evaluate-empty", EVALUATE + "''", ("--out is empty",)),
    ("evaluate-dot-dot", EVALUATE + "{r}/nothere/../m.json",
     ("{r}/nothere does not exist", "without '..'")),
    ("evaluate-name-too-long", EVALUATE + "{r}/" + LONG + ".json", ("file name too long",)),
    ("evaluate-csv-name-too-long", EVALUATE + "{r}/" + "y" * 230 + ".json",
     ("_per_image.csv: file name too long", "per-image CSV")),
    ("evaluate-ids-not-in-references",
     "evaluate --predictions {r}/more.json --references {r}/refs.json",
     ("{r}/more.json against {r}/refs.json: 1 predicted image ids are not in",)),
    ("evaluate-repeated-key-in-references",
     "evaluate --predictions {r}/preds.json --references {r}/dup.json",
     ("{r}/dup.json: the key 'annotations' appears twice",)),
    ("predict-trailing-slash", "predict --model mini --no-adapter --images {r}/images "
     "--annotations {r}/refs.json --out {r}/newdir/", ("names a folder",)),
    ("predict-empty-out", "predict --model mini --no-adapter --images {r}/images "
     "--annotations {r}/refs.json --out ''", ("--out is empty",)),
    ("predict-dot-dot", "predict --model mini --no-adapter --images {r}/images "
     "--annotations {r}/refs.json --out {r}/nothere/../p.json", ("{r}/nothere does not exist",)),
    ("predict-name-too-long", "predict --model mini --no-adapter --images {r}/images "
     "--annotations {r}/refs.json --out {r}/" + LONG + ".json", ("file name too long",)),
    ("predict-file-name-outside-images", PREDICT + "{r}/outside.json",
     ("{r}/outside.json: 1 listed images cannot be captioned", "leads out of the images")),
    ("predict-image-is-a-folder", PREDICT + "{r}/folder.json",
     ("1 listed images missing or not files", "sub (is a folder)")),
    ("predict-image-symlink-loop", PREDICT + "{r}/loop.json", ("loop.png (is a symlink loop)",)),
    ("predict-max-new-tokens-past-positions", PREDICT + "{r}/refs.json --max-new-tokens 64",
     ("--max-new-tokens 64 is out of range for mini (must be at most 63",)),
    ("train-empty-out", "train --profile mini --out ''", ("--out is empty",)),
    ("train-resume-and-overwrite", "train --profile mini --out {r}/run --resume --overwrite",
     ("--resume continues a run, --overwrite starts it again",)),
    ("audit-empty-out", "audit --annotations {r}/refs.json --images {r}/images --out ''",
     ("--out is empty",)),
    ("split-empty-out", "split --annotations {r}/refs.json --out ''", ("--out is empty",)),
    ("synth-empty-out", "synth --out ''", ("--out is empty",)),
    ("audit-newline-in-path", "audit --annotations '{r}/new\nline.json' --images {r}/images "
     "--out {r}/o", ("{r}/new\\nline.json: captions file not found",)),
    ("audit-undecodable-byte-in-path", "audit --annotations {r}/\udcff.json --images "
     "{r}/images --out {r}/o", ("{r}/\\xff.json: captions file not found",)),
]


def outputs_setup(root: Path) -> None:
    """The inputs the OUTPUTS cases read."""
    (root / "more.json").write_text(json.dumps([*PREDICTIONS, {"image_id": 9, "caption": "x"}]))
    text = json.dumps(REFERENCES)
    (root / "dup.json").write_text(text[:-1] + ', "annotations": []}')
    for name, file_name in (("outside", "../refs.json"), ("folder", "sub"), ("loop", "loop.png")):
        data = json.loads(text)
        data["images"][1]["file_name"] = file_name
        (root / f"{name}.json").write_text(json.dumps(data))
    (root / "images" / "sub").mkdir(exist_ok=True)
    if not (root / "images" / "loop.png").is_symlink():
        (root / "images" / "loop.png").symlink_to("loop.png")


CASES = [
    *(train_set(k, v, f"--set: {k}={v} is out of range") for k, v in SEEDS),
    *(train_set(k, v, f"--set: {k}=", "out of range") for k, v in RANGES),
    *(train_set(k, v, f"--set: {k}", says) for k, v, says in TYPES),
    *(train_set("lora.target_modules", v, f"lora.target_modules={v!r}", says,
                "" if "regular" in says else "layers of this blip base include")
      for v, says in LORA_TARGETS),
    *(train_set(k, v, k if k != "model.base" else "", says) for k, v, says in MODEL),
    *(config_file(name, content, says) for name, content, says in CONFIG_FILES),
    Case("blip2-base-as-blip", BLIP2 + "train.epochs=1", ("model.family='blip' does not match",
                                                         "model_type 'blip-2'", "valid: blip2")),
    Case("blip2-max-length", BLIP2 + "model.family=blip2 --set model.max_length=125",
         ("model.max_length=125", "at most 124")),
    Case("blip2-rank", BLIP2 + "model.family=blip2 --set lora.r=33", ("lora.r=33", "at most 32")),
    Case("blip2-target", BLIP2 + "model.family=blip2 --set lora.target_modules=qformer",
         ("lora.target_modules='qformer' matches qformer, which LoRA cannot wrap",)),
    Case("set-malformed", "train --profile mini --out {r}/run --set lr=1", ("SECTION.KEY=VALUE",)),
    Case("set-unknown-key", TRAIN + "lora.rank=4", ("unknown key lora.rank",)),
    Case("set-unknown-section", TRAIN + "optim.lr=4", ("unknown section 'optim'",)),
    *(Case(f"env-{name}", argv, says, env) for name, argv, env, says in ENVIRONMENT),
    *(Case(name, argv, says, setup=outputs_setup) for name, argv, says in OUTPUTS),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_refused_in_one_line_with_every_file_kept(case: Case, root: Path, capsys,
                                                  monkeypatch) -> None:
    if case.setup:
        case.setup(root)
    for key, value in case.env:
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value.format(r=root))
    monkeypatch.setenv("PATH", "/nonexistent")  # no Java: evaluate never starts METEOR
    before = snapshot(root)
    capsys.readouterr()
    code = main(shlex.split(case.argv.format(r=root)))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, lines
    for words in case.says:
        assert words.format(r=root) in lines[0], lines[0]
    assert snapshot(root) == before


def test_the_table_has_a_hundred_new_cases() -> None:
    assert len(CASES) >= 100 and len({c.id for c in CASES}) == len(CASES)


# ---------------------------------------------------------------- beyond one refusal


@pytest.mark.parametrize("failing", [".m.json.", ".m_per_image.csv."])
def test_disk_full_while_evaluate_writes_keeps_both_earlier_files(tmp_path, capsys, monkeypatch,
                                                                  failing):
    """Before: metrics.json was replaced when the per-image CSV then hit a full disk."""
    (tmp_path / "refs.json").write_text(json.dumps(REFERENCES))
    (tmp_path / "preds.json").write_text(json.dumps(PREDICTIONS))
    argv = ["evaluate", "--predictions", str(tmp_path / "preds.json"), "--references",
            str(tmp_path / "refs.json"), "--out", str(tmp_path / "m.json")]
    monkeypatch.setenv("PATH", "/nonexistent")
    assert main(argv) == 0
    (tmp_path / "preds.json").write_text(json.dumps([PREDICTIONS[0], {"image_id": 2,
                                                                      "caption": "con mèo"}]))
    before = checksums(tmp_path)
    real = os.fsync

    def fsync(fd: int) -> None:
        if failing in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(io.os, "fsync", fsync)
    capsys.readouterr()
    assert main([*argv, "--overwrite"]) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]
    assert len(lines) == 1 and "disk full" in lines[0], lines
    assert checksums(tmp_path) == before
    assert not list(tmp_path.glob(".*.tmp"))


def test_non_finite_numbers_are_written_as_null_and_repeated_keys_refused(tmp_path):
    """Before: clean.json carried -Infinity; a repeated key silently emptied the captions."""
    data = {**REFERENCES, "info": {"low": float("-inf"), "odd": [float("nan")]}}
    text = atomic_write_json(tmp_path / "clean.json", data).read_text()
    assert json.loads(text, parse_constant=lambda c: pytest.fail(c))["info"] == {
        "low": None, "odd": [None]}
    (tmp_path / "twice.json").write_text('{"images": [], "annotations": [1], "annotations": []}')
    with pytest.raises(io.VicapError, match="twice.json: the key 'annotations' appears twice"):
        read_json(tmp_path / "twice.json")


def test_a_long_csv_caption_is_kept_not_called_a_quoting_error(tmp_path, capsys):
    """Before: a caption over csv's 128 KB field limit was a `malformed_line` reject."""
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "a.png")
    long = "chó " * 40_000
    (tmp_path / "captions.txt").write_text(f'image,caption\na.png,"{long}"\na.png,mèo\n')
    assert main(["audit", "--annotations", str(tmp_path / "captions.txt"), "--images",
                 str(tmp_path / "images"), "--out", str(tmp_path / "out"), "--workers", "1"]) == 0
    rejects = (tmp_path / "out" / "rejects.csv").read_text()
    assert "malformed_line" not in rejects


def test_run_folders_get_the_mode_the_umask_allows(tmp_path):
    """Before: atomic folders (last/, best/, final/, data/) were 0700 under umask 022."""
    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "final") as tmp:
            (tmp / "x").write_text("1")
    finally:
        os.umask(old)
    assert (tmp_path / "final").stat().st_mode & 0o777 == 0o755


def test_ctrl_c_before_the_first_checkpoint_says_to_run_again(tmp_path, capsys, monkeypatch):
    """Before: it advised a `--resume` that then failed with "no checkpoint to resume from"."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "train", interrupted)
    assert main(["train", "--profile", "mini", "--out", str(tmp_path / "run")]) == 130
    err = capsys.readouterr().err
    assert "no checkpoint was written yet: run the same command again" in err
    assert "--resume" not in err
    (tmp_path / "run" / "last").mkdir(parents=True)
    assert main(["train", "--profile", "mini", "--out", str(tmp_path / "run")]) == 130
    assert "--resume" in capsys.readouterr().err


def test_a_prompt_filling_max_length_is_refused_not_trained_on_eos_alone():
    """Before: the caption was cut away whole and only `[SEP]` was learnt (the word count
    checked before work cannot see WordPiece; this is the exact check when encoding)."""
    tok = stock_blip_tokenizer()
    prompt = "one two three four five six seven eight"
    with pytest.raises(io.VicapError, match="model.prompt is 8 tokens; model.max_length=10"):
        encode_captions(tok, ["a dog"], max_length=10, prompt=prompt)
    labels = encode_captions(tok, ["a dog"], max_length=11, prompt=prompt)[2]
    assert (labels[0] != -100).sum() == 2  # "a" and [SEP]


@pytest.mark.parametrize("value", ["/proc", "/proc/vicap", "/dev/null", "{r}/a-file/out"])
def test_an_unusable_vicap_output_is_one_error_naming_it(value, root, monkeypatch):
    """Before: /proc passed the access check (root) and failed at the first write."""
    monkeypatch.setenv("VICAP_OUTPUT", value.format(r=root))
    with pytest.raises(io.VicapError, match="set VICAP_OUTPUT to a writable folder"):
        env.output_dir()


def test_predict_refuses_a_bad_out_before_building_the_mini_base(tmp_path, capsys, monkeypatch):
    """`--model mini` names a built-in base: its family is known without the minute of
    pre-training a cold cache would start (which also wrote progress lines before the error)."""
    monkeypatch.setenv("VICAP_CACHE", str(tmp_path / "cache"))
    code = main(["predict", "--model", "mini", "--no-adapter", "--images", str(tmp_path),
                 "--annotations", str(tmp_path / "refs.json"), "--out", f"{tmp_path}/newdir/"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "names a folder" in err, err
    assert not any((tmp_path / "cache" / "mini-base").iterdir())  # checked usable, not built
