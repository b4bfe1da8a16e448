"""The synthetic caption set: reproducible files, and captions that say what the image shows."""
from __future__ import annotations

import json
import random
import unicodedata
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from vicap_utils.__main__ import main
from vicap_utils.audit import REASONS, audit
from vicap_utils.ops.io import VicapError
from vicap_utils.toy.data import captions_for, draw_scene, generate, random_scene

# What a caption must say, written out here independently of the module's own tables.
VI_SPORT = {"football": ("bóng đá", "đá bóng"), "tennis": ("quần vợt",),
            "basketball": ("bóng rổ",), "volleyball": ("bóng chuyền",)}
VI_NUMBER = {1: "một", 2: "hai", 3: "ba"}
VI_COLOUR = {"red": "đỏ", "yellow": "vàng", "white": "trắng", "black": "đen"}
EN_SPORT = {s: (s,) for s in VI_SPORT}
EN_NUMBER = {1: "one", 2: "two", 3: "three"}
EN_COLOUR = {c: c for c in VI_COLOUR}


def _words(caption: str) -> list[str]:
    """Lower-cased words of a caption, punctuation dropped."""
    return caption.lower().replace(",", " ").replace(".", " ").split()


def _says(caption: str, phrase: str) -> bool:
    """Whether `phrase` occurs in the caption as whole words."""
    return f" {phrase} " in f" {' '.join(_words(caption))} "


def _check_caption(caption: str, scene: dict, sport: dict, number: dict, colour: dict) -> None:
    """The caption names the scene's sport, count and colour, and no other sport/count/colour."""
    assert caption[0].isupper() and caption.endswith(".") and not caption.endswith(" .")
    for name, phrases in sport.items():
        assert any(_says(caption, p) for p in phrases) == (name == scene["sport"]), caption
    for n, word in number.items():
        assert _says(caption, word) == (n == scene["n_players"]), caption
    for name, word in colour.items():
        assert _says(caption, word) == (name == scene["shirt"]), caption


def _scenes(n: int, seed: int = 0) -> list[dict]:
    """`n` random scenes from one seeded generator."""
    rng = random.Random(seed)
    return [random_scene(rng) for _ in range(n)]


def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path):
    paths = [generate(tmp_path / name, n_images=6, seed=seed)
             for name, seed in (("a", 3), ("b", 3), ("c", 4))]
    files = [sorted((p.parent / "images").iterdir()) for p in paths]
    assert [f.name for f in files[0]] == [f"synth_{i:06d}.jpg" for i in range(6)]
    assert [f.read_bytes() for f in files[0]] == [f.read_bytes() for f in files[1]]
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert paths[0].read_bytes() != paths[2].read_bytes()
    assert all(a.read_bytes() != c.read_bytes() for a, c in zip(files[0], files[2], strict=True))


def test_captions_file_is_coco_style_and_matches_images(tmp_path):
    data = json.loads(generate(tmp_path, n_images=8, seed=1).read_text(encoding="utf-8"))
    assert set(data) == {"info", "images", "annotations"}
    assert [im["id"] for im in data["images"]] == list(range(1, 9))
    for im in data["images"]:
        with Image.open(tmp_path / "images" / im["file_name"]) as img:
            assert img.format == "JPEG" and img.size == (im["width"], im["height"]) == (160, 120)
    assert len({a["id"] for a in data["annotations"]}) == len(data["annotations"]) == 40
    scenes = {im["id"]: im["scene"] for im in data["images"]}
    for image_id, scene in scenes.items():
        caps = [a["caption"] for a in data["annotations"] if a["image_id"] == image_id]
        assert len(set(caps)) == 5
        for cap in caps:
            assert unicodedata.normalize("NFC", cap) == cap
            _check_caption(cap, scene, VI_SPORT, VI_NUMBER, VI_COLOUR)


def test_vietnamese_captions_are_distinct_accented_and_state_the_scene():
    rng = random.Random(7)
    for scene in _scenes(60, seed=7):
        caps = captions_for(scene, "vi", rng)
        assert len(caps) == len(set(caps)) == 5
        assert len({_words(c)[0] for c in caps}) >= 2, caps  # word order varies, not only words
        for cap in caps:
            assert unicodedata.normalize("NFC", cap) == cap
            assert not cap.isascii(), cap
            _check_caption(cap, scene, VI_SPORT, VI_NUMBER, VI_COLOUR)


def test_english_captions_are_ascii_and_state_the_scene():
    rng = random.Random(8)
    for scene in _scenes(60, seed=8):
        caps = captions_for(scene, "en", rng)
        assert len(set(caps)) == 5
        for cap in caps:
            assert cap.isascii(), cap
            _check_caption(cap, scene, EN_SPORT, EN_NUMBER, EN_COLOUR)
            plural = scene["n_players"] > 1
            assert not _says(cap, "is" if plural else "are"), cap
            assert not _says(cap, "shirt" if plural else "shirts"), cap


def test_vocabulary_stays_small_enough_for_a_tiny_model():
    rng = random.Random(9)
    syllables = {w for scene in _scenes(400, seed=9) for cap in captions_for(scene, "vi", rng)
                 for w in _words(cap)}
    assert 40 <= len(syllables) <= 100, sorted(syllables)


def test_all_sports_shirts_and_counts_appear():
    scenes = _scenes(40, seed=11)
    assert {s["sport"] for s in scenes} == set(VI_SPORT)
    assert {s["shirt"] for s in _scenes(80)} == set(VI_COLOUR)
    assert {s["n_players"] for s in _scenes(80)} == {1, 2, 3}


@pytest.mark.parametrize("sport, court, ground", [
    ("football", "grass", "green"), ("tennis", "hard", "blue"), ("tennis", "clay", "orange"),
    ("basketball", "wood", "tan"), ("volleyball", "sand", "sand")])
def test_court_colour_tells_the_sport(sport, court, ground):
    scene = {"sport": sport, "court": court, "n_players": 1, "shirt": "black"}
    img = draw_scene(scene, (160, 120), random.Random(0))
    assert img.size == (160, 120) and img.mode == "RGB"
    r, g, b = np.median(np.asarray(img)[-12:].reshape(-1, 3).astype(int), axis=0)
    expected = {"green": g > r + 60 and g > b + 60, "blue": b > r + 80 and b > g + 40,
                "orange": r > g + 70 and g < 125, "tan": r > g + 35 and g > 125 and b < 115,
                "sand": r < g + 36 and b > 140}
    assert expected[ground], (r, g, b)


def test_shirt_colour_is_visible_in_the_image():
    rng = random.Random(5)
    for shirt, rgb in {"red": (215, 30, 35), "yellow": (250, 215, 10)}.items():
        scene = {"sport": "football", "court": "grass", "n_players": 3, "shirt": shirt}
        pixels = np.asarray(draw_scene(scene, (160, 120), rng)).astype(int)
        near = np.abs(pixels - np.array(rgb)).sum(axis=2) < 60
        assert near.sum() > 150, shirt  # three torsos, not a stray pixel


def test_unknown_language_and_bad_count_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown caption language 'fr'"):
        captions_for(_scenes(1)[0], "fr", random.Random(0))
    with pytest.raises(VicapError, match="--n-images must be at least 1"):
        generate(tmp_path, n_images=0)
    with pytest.raises(VicapError, match="unknown language 'fr'"):
        generate(tmp_path, n_images=1, lang="fr")
    assert not (tmp_path / "images").exists()


def test_cli_writes_the_set_and_rejects_zero_images(tmp_path, capsys):
    out = tmp_path / "synth"
    assert main(["synth", "--out", str(out), "--n-images", "3", "--seed", "2",
                 "--lang", "en"]) == 0
    data = json.loads((out / "captions.json").read_text(encoding="utf-8"))
    assert len(data["images"]) == 3 and len(data["annotations"]) == 15
    assert all(a["caption"].isascii() for a in data["annotations"])
    assert len(list((out / "images").glob("*.jpg"))) == 3
    assert str(out / "captions.json") in capsys.readouterr().out
    assert main(["synth", "--out", str(tmp_path / "none"), "--n-images", "0"]) == 2
    assert "--n-images" in capsys.readouterr().err
    assert not (tmp_path / "none" / "captions.json").exists()


def test_cli_unusable_out_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("in the way", encoding="utf-8")
    for out, message in ((blocker, "exists and is not a folder"),
                         (blocker / "synth", "cannot create the output folder")):
        assert main(["synth", "--out", str(out), "--n-images", "1"]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and str(out) in err and message in err


# ---------------------------------------------------------------- the output folder (issue 9)

KILLED_RESYNTH = """
import inspect, os, signal, sys
import vicap_utils.toy.data as synthetic
draw, calls = synthetic.draw_scene, []
def draw_then_die(*args):
    calls.append(1)
    if len(calls) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return draw(*args)
synthetic.draw_scene = draw_then_die
known = inspect.signature(synthetic.generate).parameters
synthetic.generate(sys.argv[1], n_images=6, seed=2, **({"overwrite": True} if "overwrite" in known
                                                        else {}))
"""


def _files(folder):
    """Every file of the set (vicap's hidden bookkeeping and staging left out)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not any(part.startswith(".vicap")
                                       for part in p.relative_to(folder).parts)}


def test_resynth_into_a_set_refuses_without_overwrite(tmp_path, capsys):
    """Data-loss case 5: a re-synth must not write over an existing set unasked."""
    out = tmp_path / "synth"
    generate(out, n_images=3, seed=1)
    before = _files(out)
    assert main(["synth", "--out", str(out), "--n-images", "3", "--seed", "2"]) == 2
    err = capsys.readouterr().err
    assert f"{out}: already holds captions.json, images; add --overwrite" in err
    assert _files(out) == before


def test_killed_resynth_leaves_the_previous_set_whole(tmp_path):
    """Data-loss case 5: killed while drawing, the folder still holds the old set, intact."""
    import subprocess
    import sys

    out = tmp_path / "synth"
    generate(out, n_images=4, seed=1)
    before = _files(out)
    proc = subprocess.run([sys.executable, "-c", KILLED_RESYNTH, str(out)], capture_output=True)
    assert proc.returncode == -9, proc.stderr
    assert _files(out) == before
    assert main(["synth", "--out", str(out), "--n-images", "2", "--overwrite"]) == 0
    assert sorted(p.name for p in (out / "images").iterdir()) == ["synth_000000.jpg",
                                                                 "synth_000001.jpg"]
    assert not list(out.glob(".vicap-staging-*"))


def test_overwrite_replaces_the_set_and_nothing_else(tmp_path):
    out = tmp_path / "synth"
    generate(out, n_images=3, seed=1)
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    path = generate(out, n_images=2, seed=2, lang="en", overwrite=True)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["info"]["seed"] == 2 and len(data["images"]) == 2
    assert sorted(p.name for p in (out / "images").iterdir()) == ["synth_000000.jpg",
                                                                 "synth_000001.jpg"]
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine"
    assert json.loads((out / ".vicap-owned.json").read_text())["entries"] == [
        "captions.json", "images"]


def test_defects_plant_every_audit_reason_and_leave_the_clean_set_alone(tmp_path):
    clean = generate(tmp_path / "clean", n_images=10, seed=3).read_bytes()
    planted = generate(tmp_path / "planted", n_images=10, seed=3, defects=True)
    counts = Counter()
    for name in ("captions.json", "captions.txt"):
        report = audit(planted.with_name(name), planted.parent / "images", tmp_path / name,
                       workers=1)
        counts.update({reason: n for reason, n in report["rejects"].items() if n})
    assert set(counts) == set(REASONS)
    assert counts["orphaned_by_image"] == 1 + 1 + 3  # missing, outside, the truncated image's
    assert generate(tmp_path / "again", n_images=10, seed=3).read_bytes() == clean
