"""Config profiles and overrides, environment rules, and base-model resolution."""
from __future__ import annotations

import json

import pytest

from vicap_utils.config import config_from_dict, diff_keys, load_config, save_config
from vicap_utils.ops import env, weights
from vicap_utils.ops.io import VicapError


def test_overrides_are_type_checked():
    cfg = load_config("mini", overrides=["train.lr=1e-4", "train.epochs=3",
                                         "lora.cross_attention=false", "model.base=/x"])
    assert (cfg.train.lr, cfg.train.epochs, cfg.lora.cross_attention, cfg.model.base) == \
        (1e-4, 3, False, "/x")
    with pytest.raises(VicapError, match="train.epochs: expected int"):
        load_config("mini", overrides=["train.epochs=2.5"])
    with pytest.raises(VicapError, match="unknown key train.nope; valid keys: train.epochs"):
        load_config("mini", overrides=["train.nope=1"])
    with pytest.raises(VicapError, match="expected SECTION.KEY=VALUE"):
        load_config("mini", overrides=["lr=1"])


def test_diff_keys_names_only_the_given_keys_that_differ():
    mini = load_config("mini")
    other = load_config("mini", overrides=["model.prompt=ảnh", "train.seed=7", "train.lr=1e-4"])
    keys = ["model.base", "model.prompt", "lora.r", "train.seed"]
    assert diff_keys(mini, other, keys) == ["model.prompt", "train.seed"]
    assert diff_keys(mini, mini, keys) == []
    assert diff_keys(mini, other, ["train.lr"]) == ["train.lr"]


def test_profiles_differ_where_they_should():
    mini, blip, blip2 = (load_config(p) for p in ("mini", "uitviic-blip", "flickr8k-blip2"))
    assert mini.model.base == "mini" and mini.data.source == "synthetic"
    assert blip.model.base == "Salesforce/blip-image-captioning-base"
    assert (blip.train.lr, blip.train.batch_size, blip.train.label_smoothing) == (5e-5, 8, 0.05)
    assert blip2.model.family == "blip2" and blip2.model.load_in_8bit
    assert not blip2.model.extend_vocab


def test_config_file_round_trip(tmp_path):
    cfg = load_config("uitviic-blip", overrides=["train.epochs=7"])
    save_config(cfg, tmp_path / "config.json")
    again = load_config(config_file=str(tmp_path / "config.json"))
    assert again == cfg
    assert config_from_dict(json.loads((tmp_path / "config.json").read_text())) == cfg
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(VicapError, match="bad.json: not valid JSON"):
        load_config(config_file=str(tmp_path / "bad.json"))


def test_auto_profile_and_output_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("VICAP_PROFILE", raising=False)
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    monkeypatch.setenv("VICAP_KAGGLE_ROOT", str(tmp_path / "no-kaggle"))
    assert not env.is_kaggle() and env.auto_profile() == "mini"
    monkeypatch.setenv("VICAP_PROFILE", "uitviic-blip")
    assert load_config("auto").profile == "uitviic-blip"
    monkeypatch.setenv("VICAP_OUTPUT", str(tmp_path / "out"))
    assert env.output_dir("runs") == tmp_path / "out" / "runs"
    monkeypatch.delenv("VICAP_OUTPUT")
    monkeypatch.chdir(tmp_path)
    assert env.output_dir().resolve() == (tmp_path / "outputs").resolve()


def test_kaggle_input_discovery_in_both_layouts(monkeypatch, tmp_path):
    flat = tmp_path / "input" / "uitviic" / "uitviic_captions_train2017.json"
    nested = tmp_path / "input" / "datasets" / "someone" / "flickr8k" / "Flickr8k.token.txt"
    for path in (flat, nested):
        path.parent.mkdir(parents=True)
        path.write_text("{}")
    monkeypatch.setenv("VICAP_KAGGLE_ROOT", str(tmp_path))
    assert env.kaggle_input() == tmp_path / "input"
    assert env.find_inputs(env.DATA_GLOBS["uitviic-blip"]) == [flat]
    assert env.find_inputs(env.DATA_GLOBS["flickr8k-blip2"]) == [nested]
    (tmp_path / "working").mkdir()
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    monkeypatch.delenv("VICAP_OUTPUT", raising=False)
    assert env.is_kaggle() and env.output_dir("runs") == tmp_path / "working" / "runs"


def test_base_model_found_under_kaggle_input(monkeypatch, tmp_path):
    # A Kaggle model mounts as <model>/<framework>/<variation>/<version>/.
    model_dir = tmp_path / "input" / "blip-image-captioning-base" / "transformers" / "default" / "1"
    model_dir.mkdir(parents=True)
    (model_dir / "config.json").write_text("{}")
    monkeypatch.setenv("VICAP_KAGGLE_ROOT", str(tmp_path))
    assert weights.resolve_base("Salesforce/blip-image-captioning-base") == str(model_dir)


def test_base_folder_without_config_names_the_setting_and_the_fix(tmp_path):
    with pytest.raises(VicapError) as info:
        weights.resolve_base(str(tmp_path))
    assert str(info.value) == (f"{tmp_path}: no config.json; expected a saved model folder "
                               "(model.base); set model.base to a folder save_pretrained wrote, "
                               "or to a hub id")


def test_unreachable_hub_fails_fast_with_one_line(monkeypatch, tmp_path, capsys):
    from vicap_utils.__main__ import main

    monkeypatch.setenv("VICAP_KAGGLE_ROOT", str(tmp_path / "none"))
    monkeypatch.setattr(weights, "hub_cache", lambda repo: None)
    monkeypatch.setattr(weights, "hub_reachable", lambda timeout=3.0: False)
    ann = tmp_path / "a.json"
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": "x.jpg"}], "annotations": []}))
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "x.jpg").write_bytes(b"")
    code = main(["predict", "--model", "Salesforce/blip-image-captioning-base", "--no-adapter",
                 "--annotations", str(ann), "--images", str(tmp_path / "img"),
                 "--out", str(tmp_path / "p.json")])
    err = capsys.readouterr().err
    assert code == 2 and "hub is unreachable" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "p.json").exists()


def test_predict_refuses_a_folder_that_is_not_an_adapter(tmp_path, capsys):
    from vicap_utils.__main__ import main

    ann = tmp_path / "a.json"
    ann.write_text(json.dumps({"images": [], "annotations": []}))
    code = main(["predict", "--model", str(tmp_path), "--annotations", str(ann),
                 "--images", str(tmp_path), "--out", str(tmp_path / "p.json")])
    assert code == 2 and "neither an adapter folder" in capsys.readouterr().err


def test_outputs_that_cannot_be_written_fail_before_any_work(tmp_path, capsys):
    from vicap_utils.__main__ import main

    ann = tmp_path / "a.json"
    ann.write_text(json.dumps({"images": [], "annotations": []}))
    (tmp_path / "folder").mkdir()
    code = main(["predict", "--model", "mini", "--no-adapter", "--annotations", str(ann),
                 "--images", str(tmp_path), "--out", str(tmp_path / "folder")])
    err = capsys.readouterr().err
    assert code == 2 and "is a folder" in err and "Traceback" not in err
    (tmp_path / "afile").write_text("x")
    assert main(["train", "--profile", "mini", "--out", str(tmp_path / "afile")]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    assert (tmp_path / "afile").read_text() == "x"


@pytest.mark.parametrize("command", [
    ["train", "--profile", "mini", "--out", "{tmp}/run"],
    ["predict", "--model", "mini", "--annotations", "{tmp}/none.json", "--images", "{tmp}",
     "--out", "{tmp}/p.json"],
])
def test_unusable_cache_folder_is_one_line_naming_vicap_cache(tmp_path, command, monkeypatch,
                                                               capsys):
    """Before: NotADirectoryError's traceback from the mini base's or synthetic set's folder."""
    from vicap_utils.__main__ import main

    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv("VICAP_CACHE", str(tmp_path / "a-file" / "cache"))
    assert main([part.format(tmp=tmp_path) for part in command]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "VICAP_CACHE" in err and "a-file" in err, err
    assert (tmp_path / "a-file").read_text() == "not a folder"
