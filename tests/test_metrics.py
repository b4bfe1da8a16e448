"""Caption metrics: equality with pycocoevalcap, Vietnamese handling, the known breakages
(METEOR's wrapper, SPICE's download, no Java), diversity definitions and CLI bad inputs."""
from __future__ import annotations

import json
import math
import random
import socket
import subprocess
import sys
import unicodedata
import urllib.request
from pathlib import Path

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from vicap_utils import metrics
from vicap_utils.__main__ import main
from vicap_utils.ops import jvm
from vicap_utils.text import strip_diacritics

REFS = {
    1: ["Một người đàn ông đang chơi bóng đá trên sân cỏ.", "Người đàn ông đá quả bóng trên sân.",
        "Một cầu thủ đang sút bóng trên sân cỏ xanh.", "Người đàn ông mặc áo đỏ đang đá bóng.",
        "Một người đang chơi bóng đá ngoài trời."],
    2: ["Hai cô gái đang chơi bóng chuyền trên bãi biển.", "Hai người phụ nữ chơi bóng chuyền.",
        "Những cô gái đang đánh bóng chuyền trên cát.", "Hai vận động viên bóng chuyền bãi biển.",
        "Hai cô gái nhảy lên đập bóng trên bãi cát."],
    3: ["Một cậu bé đang ném quả bóng rổ vào rổ.", "Cậu bé chơi bóng rổ trong nhà thi đấu.",
        "Một đứa trẻ đang ném bóng rổ.", "Cậu bé nhảy lên ném bóng vào rổ.",
        "Một cậu bé đang chơi bóng rổ một mình."],
    4: ["Người phụ nữ đang đánh quả bóng tennis.", "Một cô gái chơi quần vợt trên sân.",
        "Người phụ nữ cầm vợt đánh bóng tennis.", "Một vận động viên tennis đang vung vợt.",
        "Cô gái đang chơi tennis trên sân đất nện."],
    5: ["Một nhóm trẻ em đang đá bóng ở công viên.", "Những đứa trẻ chơi bóng đá trên bãi cỏ.",
        "Các em nhỏ đang chạy theo quả bóng.", "Một nhóm trẻ con chơi đá bóng ngoài trời.",
        "Trẻ em đang chơi bóng đá ở công viên."],
    6: ["Thủ môn đang bắt quả bóng trước khung thành.", "Một thủ môn nhảy lên bắt bóng.",
        "Thủ môn mặc áo vàng đang giữ bóng.", "Người thủ môn bay người cản phá quả bóng.",
        "Thủ môn bắt được quả bóng trên sân."],
    7: ["Hai đội đang thi đấu bóng rổ trong nhà.", "Các cầu thủ bóng rổ tranh bóng.",
        "Một trận đấu bóng rổ giữa hai đội.", "Những người đàn ông đang chơi bóng rổ.",
        "Cầu thủ bóng rổ dẫn bóng qua đối thủ."],
    8: ["Một ông già đang đi dạo với con chó.", "Người đàn ông lớn tuổi dắt chó đi dạo.",
        "Ông cụ đi bộ cùng con chó trong công viên.", "Một người già và con chó trên đường.",
        "Ông lão đang dắt chó đi dạo buổi sáng."],
    9: ["Một cô bé đang ôm quả bóng màu hồng.", "Cô bé cầm quả bóng nhỏ.",
        "Đứa trẻ ôm bóng và mỉm cười.", "Một bé gái đứng cầm quả bóng.",
        "Cô bé mặc váy trắng ôm quả bóng."],
    10: ["Cầu thủ đang đánh đầu quả bóng.", "Hai cầu thủ tranh chấp bóng bổng.",
         "Một cầu thủ nhảy lên đánh đầu.", "Các cầu thủ bóng đá tranh bóng trên không.",
         "Cầu thủ áo xanh đánh đầu ghi bàn."],
}
PREDS = {
    1: "Một người đàn ông đang chơi bóng đá trên sân cỏ.",
    2: "Hai cô gái đang chơi bóng chuyền trên bãi biển.",
    3: "Một cậu bé đang chơi bóng rổ.",
    4: "Một người phụ nữ đang chơi tennis.",
    5: "Những đứa trẻ đang chơi bóng đá trong công viên.",
    6: "Một con mèo đang ngủ trên ghế.",
    7: "Một người đàn ông đang chơi bóng đá.",
    8: "Một người đàn ông đang đi dạo với con chó.",
    9: "Một cô bé.",
    10: "Bầu trời xanh và mây trắng.",
}
STANDARD = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
METRIC_KEYS = (*metrics.SCORE_KEYS, *metrics.DIVERSITY_KEYS[:-1])  # novel_rate needs training caps


def coco_refs(refs: dict = REFS) -> dict:
    """COCO-style references from {image_id: captions}."""
    anns = [{"id": i, "image_id": k, "caption": c}
            for i, (k, c) in enumerate((k, c) for k, cs in refs.items() for c in cs)]
    return {"images": [{"id": k, "file_name": f"{k}.jpg"} for k in refs], "annotations": anns}


def coco_preds(preds: dict = PREDS) -> list[dict]:
    """COCO results from {image_id: caption}."""
    return [{"image_id": k, "caption": c} for k, c in preds.items()]


def write_inputs(tmp_path: Path, preds: object, refs: object) -> tuple[str, str]:
    """Write predictions and references JSON; return their paths."""
    p, r = tmp_path / "preds.json", tmp_path / "refs.json"
    p.write_text(json.dumps(preds, ensure_ascii=False), "utf-8")
    r.write_text(json.dumps(refs, ensure_ascii=False), "utf-8")
    return str(p), str(r)


@pytest.fixture(scope="module")
def full_result() -> tuple[dict, object]:
    """One real evaluation of the Vietnamese set (METEOR jars and PTB included)."""
    return metrics.evaluate_detailed(coco_preds(), coco_refs())


@pytest.fixture
def fast_meteor(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip the 7-second METEOR start-up in tests that check something else."""
    monkeypatch.setattr(jvm, "meteor_score",
                        lambda hyps, refs, *args, **kwargs: (0.5, [0.5] * len(hyps)))


def test_standard_metrics_equal_pycocoevalcap(full_result: tuple) -> None:
    result, _ = full_result
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({k: [{"caption": c} for c in cs] for k, cs in REFS.items()})
    res = tokenizer.tokenize({k: [{"caption": c}] for k, c in PREDS.items()})
    expected = dict(zip(STANDARD[:4], Bleu(4).compute_score(gts, res, verbose=0)[0], strict=True))
    scorer = Meteor()
    expected["METEOR"] = scorer.compute_score(gts, res)[0]
    del scorer
    expected["ROUGE-L"] = Rouge().compute_score(gts, res)[0]
    expected["CIDEr"] = Cider().compute_score(gts, res)[0]
    assert result["tokenizer"] == "ptb"
    for key in STANDARD:
        assert result[key] == pytest.approx(expected[key], abs=1e-4), key
    assert 0.3 < result["BLEU-1"] < 1 and result["CIDEr"] > 0.5


def test_result_keys_notes_and_per_image_cider(full_result: tuple) -> None:
    result, per_image = full_result
    assert set(METRIC_KEYS) <= set(result)
    assert {"unavailable", "METEOR-vi", "tokenizer", "n_images", "notes"} <= set(result)
    assert "novel_rate" not in result and result["n_images"] == 10
    assert any("depend on the evaluated set" in n for n in result["notes"])
    assert list(per_image.columns) == ["image_id", "cider", "prediction", "first_reference"]
    assert per_image["cider"].mean() == pytest.approx(result["CIDEr"])
    assert per_image.set_index("image_id").loc[1, "cider"] > per_image.set_index(
        "image_id").loc[10, "cider"]


def test_meteor_vi_differs_from_meteor_and_equals_the_jar(full_result: tuple,
                                                          tmp_path: Path) -> None:
    result, _ = full_result
    assert result["METEOR-vi"] is not None and abs(result["METEOR-vi"] - result["METEOR"]) > 0.01
    keys = list(REFS)
    tokens, _, _ = metrics.tokenize([PREDS[k] for k in keys] + [c for k in keys for c in REFS[k]])
    (tmp_path / "hyp.txt").write_text("".join(f"{t}\n" for t in tokens[:10]), "utf-8")
    (tmp_path / "ref.txt").write_text("".join(f"{t}\n" for t in tokens[10:]), "utf-8")
    out = subprocess.run(["java", "-Dfile.encoding=UTF-8", "-jar", str(jvm.METEOR_JAR),
                          "hyp.txt", "ref.txt", "-l", "other", "-r", "5", "-q"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True)
    assert result["METEOR-vi"] == pytest.approx(float(out.stdout.strip()), abs=1e-9)


def test_ptb_keeps_vietnamese_diacritics_and_nfc() -> None:
    nfc = "Một NGƯỜI đàn ông, đang chơi bóng đá!"
    tokens, name, why = metrics.tokenize([nfc, unicodedata.normalize("NFD", nfc)])
    assert (name, why) == ("ptb", None)
    assert tokens == ["một người đàn ông đang chơi bóng đá"] * 2
    assert unicodedata.is_normalized("NFC", tokens[1])
    assert metrics.python_tokenize(nfc) == tokens[0]


def test_stripped_diacritics_score_far_below_originals(fast_meteor: None) -> None:
    refs = coco_refs()
    good = metrics.evaluate(coco_preds({k: cs[0] for k, cs in REFS.items()}), refs)
    stripped = metrics.evaluate(
        coco_preds({k: strip_diacritics(cs[0]) for k, cs in REFS.items()}), refs)
    assert good["BLEU-1"] > 0.95 and good["ROUGE-1"] > 0.95 and good["CIDEr"] > 3
    for key in ("BLEU-1", "ROUGE-1", "CIDEr"):
        assert stripped[key] < 0.6, key


def test_rouge_n_counts_diacritics() -> None:
    refs = [["người chơi bóng đá", "x"]]
    assert metrics.rouge_n(["một người chơi bóng"], refs, 1) == pytest.approx(0.75)
    assert metrics.rouge_n(["một người chơi bóng"], refs, 2) == pytest.approx(2 / 3)
    assert metrics.rouge_n(["mot nguoi choi bong"], refs, 1) == 0.0


def test_diversity_matches_definitions() -> None:
    hyps = ["a b a", "a b", "a b", "c"]
    # tokens: 8, distinct 3; per caption TTR: 2/3, 1, 1, 1; captions: 4, distinct 3;
    # bigrams: ab ba | ab | ab -> 4, distinct 2
    assert metrics.diversity(hyps, train={"a b", "z"}) == {
        "TTR": 3 / 8, "TTR_per_caption": pytest.approx((2 / 3 + 3) / 4), "repetition_rate": 0.25,
        "distinct-1": 3 / 8, "distinct-2": 0.5, "vocab_size": 3, "mean_length": 2.0,
        "novel_rate": 0.5}
    assert metrics.diversity([""])["mean_length"] == 0.0


def test_ttr_is_corpus_types_over_tokens_with_diacritics_and_nfc() -> None:
    """The BLIP-2 report's TTR: distinct words / words over all captions, by hand."""
    hyps = ["một người đang chơi bóng", "một người đang đá bóng",
            unicodedata.normalize("NFD", "người chơi") + " nguoi"]
    # 13 words; types: một người đang chơi bóng đá nguoi (NFD "người" is "người"; "nguoi" is not)
    result = metrics.diversity(hyps)
    assert result["TTR"] == result["distinct-1"] == 7 / 13 and result["vocab_size"] == 7
    assert result["TTR_per_caption"] == 1.0


def vietnamese_cider_cases() -> list[tuple[list[str], list[list[str]]]]:
    """(candidates, references) on the PTB stand-in's tokens: the test set's captions (an
    exact, a partial, a wrong and an empty candidate, a repeated reference), then random
    captions over its syllables, several images with 5 references each."""
    refs = [[metrics.python_tokenize(c) for c in REFS[k]] for k in REFS]
    refs[2][4] = refs[2][0]
    hyps = [metrics.python_tokenize(PREDS[k]) for k in PREDS]
    hyps[3] = ""
    rng = random.Random(18)
    words = sorted({w for caps in refs for c in caps for w in c.split()})
    cases = [(hyps, refs)]
    for n_images in (2, 7, 16):
        def cap() -> str:
            return " ".join(rng.choices(words, k=rng.randint(1, 14)))
        cases.append(([cap() for _ in range(n_images)],
                      [[cap() for _ in range(5)] for _ in range(n_images)]))
    return cases


def test_cider_d_equals_pycocoevalcap() -> None:
    scores = []
    for hyps, refs in vietnamese_cider_cases():
        expected, expected_per_image = Cider().compute_score(
            dict(enumerate(refs)), {i: [h] for i, h in enumerate(hyps)})
        score, per_image = metrics.CiderD(refs).score(hyps, refs)
        assert score == pytest.approx(expected, abs=1e-6)
        assert per_image == pytest.approx(expected_per_image, abs=1e-6)
        scores.append(score)
    assert scores[0] > 0.5 and min(scores) > 0


def test_cider_d_document_frequencies_from_a_fixed_corpus() -> None:
    # By hand: 2 images, idf = log 2 for "a", "b", "a b"; identical 1- and 2-grams, no 3- or
    # 4-grams, equal lengths: 10 * mean(1, 1, 0, 0) = 5. Against itself alone idf is 0.
    assert metrics.CiderD([["a b"], ["c d"]]).score(["a b"], [["a b"]])[0] == pytest.approx(5.0)
    assert metrics.CiderD([["a b"]]).score(["a b"], [["a b"]])[0] == 0.0
    # A batch scored with the whole set's frequencies gets the whole set's per-image scores,
    # also with each image's references repeated for several samples (an SCST step).
    hyps, refs = vietnamese_cider_cases()[0]
    _, expected = Cider().compute_score(dict(enumerate(refs)), {i: [h] for i, h in enumerate(hyps)})
    batch = [0, 0, 7, 1, 7]
    _, per_sample = metrics.CiderD(refs).score([hyps[i] for i in batch], [refs[i] for i in batch])
    assert per_sample == pytest.approx(expected[batch], abs=1e-6)


def test_cider_d_of_no_candidates_is_zero() -> None:
    score, per_candidate = metrics.CiderD([["a b"]]).score([], [])
    assert score == 0.0 and per_candidate.shape == (0,)


def test_cider_d_scores_empty_captions_and_no_shared_ngram_as_pycocoevalcap() -> None:
    # An untrained model's empty caption (first validation) and a caption sharing nothing.
    refs = [["một cầu thủ đá bóng"], ["hai người chơi quần vợt trên sân"]]
    for hyps in (["", "ba con mèo"], ["", ""]):
        expected, expected_per_image = Cider().compute_score(
            dict(enumerate(refs)), {i: [h] for i, h in enumerate(hyps)})
        score, per_image = metrics.CiderD(refs).score(hyps, refs)
        assert score == pytest.approx(expected, abs=1e-9) and score == 0.0
        assert per_image == pytest.approx(expected_per_image, abs=1e-9)


def test_novel_rate_uses_the_same_tokenization(fast_meteor: None) -> None:
    train = ["Một người đàn ông đang chơi bóng đá trên sân cỏ", "Một cô bé!"]
    result = metrics.evaluate(coco_preds(), coco_refs(), train_captions=train)
    assert result["novel_rate"] == pytest.approx(0.8)


def test_meteor_survives_newlines_and_separators() -> None:
    hyps = ["một người\nđang chơi bóng", "hai ||| cầu thủ", ""]
    clean = ["một người đang chơi bóng", "hai cầu thủ", ""]
    refs = [["người đàn ông\r\nchơi bóng", "một người chơi bóng"], ["hai cầu thủ"], ["x"]]
    clean_refs = [["người đàn ông chơi bóng", "một người chơi bóng"], ["hai cầu thủ"], ["x"]]
    score, per_image = jvm.meteor_score(hyps, refs, jvm.METEOR_VI_ARGS, timeout=60)
    assert len(per_image) == 3 and per_image[1] > 0.9 and per_image[2] == 0.0
    assert (score, per_image) == jvm.meteor_score(clean, clean_refs, jvm.METEOR_VI_ARGS)


def test_meteor_failure_reports_and_next_call_works(tmp_path: Path) -> None:
    hyps, refs = ["một người"], [["một người đàn ông"]]
    with pytest.raises(jvm.ScorerUnavailable, match="timed out"):
        jvm.meteor_score(hyps, refs, jvm.METEOR_EN_ARGS, timeout=0.5)
    bogus = tmp_path / "meteor.jar"
    bogus.write_bytes(b"not a jar")
    with pytest.raises(jvm.ScorerUnavailable, match="stopped early"):
        jvm.meteor_score(hyps, refs, jar=bogus, timeout=30)
    assert jvm.meteor_score(hyps, refs, jvm.METEOR_VI_ARGS, timeout=60)[0] > 0.3


def test_meteor_failure_inside_evaluate_gives_null_with_reason(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jvm, "METEOR_TIMEOUT_S", 0.3)
    result = metrics.evaluate(coco_preds(), coco_refs())
    assert result["METEOR"] is None and "timed out" in result["unavailable"]["METEOR"]
    assert result["BLEU-1"] > 0.3


def test_spice_absent_is_null_with_reason_and_no_network(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fast_meteor: None) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("network attempted")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(urllib.request, "urlretrieve", no_network)
    monkeypatch.setattr(jvm, "SPICE_DIR", tmp_path)
    result = metrics.evaluate(coco_preds(), coco_refs())
    assert result["SPICE"] is None
    assert "CoreNLP jars not installed" in result["unavailable"]["SPICE"]


def test_spice_that_fails_to_run_is_null_with_reason(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    for name in jvm.SPICE_CORENLP_JARS:
        (tmp_path / "lib" / name).write_bytes(b"not a jar")
    (tmp_path / "spice-1.0.jar").write_bytes(b"not a jar")
    monkeypatch.setattr(jvm, "SPICE_DIR", tmp_path)
    with pytest.raises(jvm.ScorerUnavailable, match=r"SPICE failed \(exit 1\)"):
        jvm.spice_score(["a b"], [["a b"]], timeout=30)


def test_cli_without_java(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                          capsys: pytest.CaptureFixture) -> None:
    preds, refs = write_inputs(tmp_path, coco_preds(), coco_refs())
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    out = tmp_path / "m.json"
    assert main(["evaluate", "--predictions", preds, "--references", refs,
                 "--out", str(out)]) == 0
    result = json.loads(out.read_text("utf-8"))
    assert result["tokenizer"] == "python-fallback"
    assert all(result[k] > 0 for k in ("BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr", "ROUGE-1"))
    assert result["METEOR"] is None and "java not found" in result["unavailable"]["METEOR"]
    assert result["SPICE"] is None and "SPICE" in result["unavailable"]
    csv = (tmp_path / "m_per_image.csv").read_text("utf-8").splitlines()
    assert csv[0] == "image_id,cider,prediction,first_reference" and len(csv) == 11
    assert "CIDEr" in capsys.readouterr().out


def run_cli(tmp_path: Path, preds: object, refs: object, *extra: str) -> tuple[int, str, Path]:
    """Run `evaluate` on these inputs: (exit code, predictions path, metrics JSON path)."""
    p, r = write_inputs(tmp_path, preds, refs)
    out = tmp_path / "metrics.json"
    return main(["evaluate", "--predictions", p, "--references", r, "--out", str(out),
                 *extra]), p, out


def one_error_line(capsys: pytest.CaptureFixture) -> str:
    """The single stderr line the CLI prints for a user error."""
    lines = [ln for ln in capsys.readouterr().err.splitlines() if not ln.startswith("evaluate:")]
    assert len(lines) == 1, lines
    return lines[0]


def test_cli_unknown_prediction_ids(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    preds = coco_preds() + [{"image_id": 99, "caption": "x"}, {"image_id": 100, "caption": "y"}]
    assert run_cli(tmp_path, preds, coco_refs())[0] == 2
    line = one_error_line(capsys)
    assert "2 predicted image ids are not in the references" in line and "99" in line


def test_cli_missing_predictions_and_allow_missing(tmp_path: Path, fast_meteor: None,
                                                   capsys: pytest.CaptureFixture) -> None:
    preds = [p for p in coco_preds() if p["image_id"] not in (9, 10)]
    assert run_cli(tmp_path, preds, coco_refs())[0] == 2
    line = one_error_line(capsys)
    assert "2 reference images have no prediction: 9, 10" in line and "--allow-missing" in line
    code, _, out = run_cli(tmp_path, preds, coco_refs(), "--allow-missing")
    assert code == 0 and json.loads(out.read_text("utf-8"))["n_images"] == 8


def test_cli_string_ids_match_int_ids(tmp_path: Path, fast_meteor: None) -> None:
    preds = [{"image_id": str(p["image_id"]), "caption": p["caption"]} for p in coco_preds()]
    code, _, out = run_cli(tmp_path, preds, coco_refs())
    assert code == 0 and json.loads(out.read_text("utf-8"))["n_images"] == 10


def test_cli_invalid_json_names_the_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _, refs = write_inputs(tmp_path, [], coco_refs())
    bad = tmp_path / "broken.json"
    bad.write_text('[{"image_id": 1, "caption": ', "utf-8")
    assert main(["evaluate", "--predictions", str(bad), "--references", refs]) == 2
    line = one_error_line(capsys)
    assert "broken.json" in line and "not valid JSON" in line


@pytest.mark.parametrize("preds", [{"image_id": 1, "caption": "x"}, [{"image_id": 1}],
                                   [{"image_id": 1, "caption": None}], [["1", "x"]]])
def test_cli_predictions_of_the_wrong_shape(tmp_path: Path, capsys: pytest.CaptureFixture,
                                            preds: object) -> None:
    code, path, _ = run_cli(tmp_path, preds, coco_refs())
    assert code == 2 and path in one_error_line(capsys)


def test_cli_empty_caption_is_scored_as_empty(tmp_path: Path, fast_meteor: None) -> None:
    preds = coco_preds({**PREDS, 3: ""})
    code, _, out = run_cli(tmp_path, preds, coco_refs())
    assert code == 0
    rows = (tmp_path / "metrics_per_image.csv").read_text("utf-8").splitlines()
    assert rows[3].startswith("3,0.0,,")
    assert json.loads(out.read_text("utf-8"))["BLEU-1"] > 0


@pytest.mark.parametrize("out", ["folder", "a_file/metrics.json"])
def test_cli_bad_out_fails_before_scoring(tmp_path: Path, capsys: pytest.CaptureFixture,
                                          monkeypatch: pytest.MonkeyPatch, out: str) -> None:
    (tmp_path / "folder").mkdir()
    (tmp_path / "a_file").write_text("x", "utf-8")
    monkeypatch.setattr(metrics, "evaluate_detailed",
                        lambda *a, **k: pytest.fail("scored despite an unusable --out"))
    p, r = write_inputs(tmp_path, coco_preds(), coco_refs())
    assert main(["evaluate", "--predictions", p, "--references", r,
                 "--out", str(tmp_path / out)]) == 2
    line = one_error_line(capsys)
    assert str(tmp_path / out) in line and "folder" in line


def test_cli_bad_train_captions_are_named_as_such(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    p, r = write_inputs(tmp_path, coco_preds(), coco_refs())
    train = tmp_path / "train.json"
    train.write_text("[]", "utf-8")
    assert main(["evaluate", "--predictions", p, "--references", r,
                 "--train-captions", str(train)]) == 2
    line = one_error_line(capsys)
    assert str(train) in line and "'annotations' list" in line
    missing = tmp_path / "nope.json"
    assert main(["evaluate", "--predictions", p, "--references", r,
                 "--train-captions", str(missing)]) == 2
    assert "training captions JSON not found" in one_error_line(capsys)


@pytest.mark.parametrize("alias", ["same", "symlink", "hard link"])
def test_cli_out_never_writes_over_the_predictions(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   alias: str) -> None:
    """Data-loss case 3: `evaluate --out` naming the predictions (or a link to them)."""
    p, r = write_inputs(tmp_path, coco_preds(), coco_refs())
    out = Path(p) if alias == "same" else tmp_path / "metrics.json"
    if alias == "symlink":
        out.symlink_to(p)
    elif alias == "hard link":
        out.hardlink_to(p)
    original = Path(p).read_bytes()
    monkeypatch.setattr(metrics, "evaluate_detailed",
                        lambda *a, **k: pytest.fail("scored despite --out = --predictions"))
    assert main(["evaluate", "--predictions", p, "--references", r, "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert f"{out}: --out would write over the input {p} (--predictions)" in line
    assert Path(p).read_bytes() == original


def test_cli_per_image_csv_never_writes_over_the_references(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    p, _ = write_inputs(tmp_path, coco_preds(), coco_refs())
    refs = tmp_path / "m_per_image.csv"
    refs.write_text(json.dumps(coco_refs()), "utf-8")
    assert main(["evaluate", "--predictions", p, "--references", str(refs),
                 "--out", str(tmp_path / "m.json")]) == 2
    assert "(its per-image CSV) would write over the input" in one_error_line(capsys)
    assert json.loads(refs.read_text("utf-8")) == coco_refs()


@pytest.mark.parametrize(("refs", "message"), [
    ({"annotations": [{"image_id": k, "caption": " "} for k in PREDS]}, "every caption is empty"),
    ({"annotations": [{"image_id": 1, "caption": "a"}, {"image_id": "1", "caption": "b"}]},
     "image ids mix integers and text (annotation 0 has image_id 1, annotation 1 has "
     "image_id '1')"),
    ({"annotations": [{"image_id": 1, "caption": "x\ud800"}]},
     "annotation 0 has a caption that is not valid Unicode"),
])
def test_cli_references_that_cannot_be_scored(tmp_path: Path, capsys: pytest.CaptureFixture,
                                              refs: dict, message: str) -> None:
    p, r = write_inputs(tmp_path, coco_preds(), {})
    Path(r).write_text(json.dumps(refs), "utf-8")  # ASCII escapes keep the lone surrogate
    assert main(["evaluate", "--predictions", p, "--references", r]) == 2
    line = one_error_line(capsys)
    assert r in line and message in line


@pytest.mark.parametrize(("items", "message"), [
    ([{"image_id": 1}], "item 0 has no 'caption'"),
    ([{"image_id": 1, "caption": "a"}, {"image_id": "", "caption": "b"}],
     "item 1 'image_id' is empty"),
    ([{"image_id": [1], "caption": "a"}], "item 0 'image_id' must be an integer or text"),
    ([{"image_id": 1, "caption": 7}], "item 0 'caption' must be text"),
    (["a caption"], "item 0 is not an object"),
])
def test_predictions_of_a_bad_shape_are_named_as_caption_files_are(items: list,
                                                                  message: str) -> None:
    with pytest.raises(metrics.VicapError) as err:
        metrics.evaluate(items, coco_refs())
    assert str(err.value) == f"predictions: {message}"


def test_cli_predictions_mixing_id_types(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    preds = coco_preds()
    preds[3]["image_id"] = "4"
    code, path, _ = run_cli(tmp_path, preds, coco_refs())
    line = one_error_line(capsys)
    assert code == 2 and path in line and "image ids mix integers and text" in line


def test_references_without_a_word_after_tokenizing(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    refs = {"annotations": [{"image_id": k, "caption": "... !"} for k in PREDS]}
    with pytest.raises(metrics.VicapError, match="no reference caption of the scored images"):
        metrics.evaluate(coco_preds(), refs)


def test_cli_tokenize_words_scores_as_the_segmenter_splits(
        tmp_path: Path, fast_meteor: None, capsys: pytest.CaptureFixture) -> None:
    preds = {1: "Một người đàn ông đang chơi bóng đá.", 2: "Hai cô gái đang chơi bóng chuyền."}
    refs = {1: ["Người đàn ông đang đá bóng trên sân cỏ."],
            2: ["Hai cô gái chơi bóng chuyền trên bãi biển."]}
    # underthesea's words, checked by hand ("chơi bóng đá" is not "đá bóng" at word level):
    hyps = ["một người đàn_ông đang chơi bóng_đá", "hai cô gái đang chơi bóng_chuyền"]
    gts = [["người đàn_ông đang đá bóng trên sân_cỏ"],
           ["hai cô gái chơi bóng_chuyền trên bãi biển"]]
    code, _, out = run_cli(tmp_path, coco_preds(preds), coco_refs(refs), "--tokenize", "words")
    result = json.loads(out.read_text("utf-8"))
    assert code == 0 and result["tokenization"] == "words"
    assert "tokenization: words" in capsys.readouterr().out
    # 12 words, 10 types; unigram matches 3 + 5 of 12, reference length 7 + 8 = 15
    assert result["TTR"] == 10 / 12 and result["vocab_size"] == 10 and result["mean_length"] == 6
    assert result["BLEU-1"] == pytest.approx(8 / 12 * math.exp(1 - 15 / 12), rel=1e-6)
    assert result["ROUGE-1"] == pytest.approx((6 / 13 + 10 / 14) / 2)
    expected = Cider().compute_score(dict(enumerate(gts)), {i: [h] for i, h in enumerate(hyps)})
    assert result["CIDEr"] == pytest.approx(expected[0], abs=1e-6) and result["CIDEr"] > 0


def test_tokenize_words_without_underthesea_is_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "underthesea", None)  # as if not installed
    code, _, out = run_cli(tmp_path, coco_preds(), coco_refs(), "--tokenize", "words")
    assert code == 2 and not out.exists()
    assert "pip install 'underthesea>=9.5'" in one_error_line(capsys)


def test_unknown_tokenization_is_refused() -> None:
    with pytest.raises(metrics.VicapError, match="tokenization 'word': use 'syllable' or 'words'"):
        metrics.evaluate(coco_preds(), coco_refs(), tokenization="word")
