"""Every "check yourself" cell of notebooks 01–06, played with answers: a right answer in a
second form (rounded as the question asks, a numpy scalar, other spacing) passes; the known
wrong answers and guesses (issue 17) fail; a stub (None) says "not done yet"; and no verdict
but "right" shows the solution (the expected value or the code that computes it)."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vicap_utils import captioner
from vicap_utils.audit import audit
from vicap_utils.config import profile_config
from vicap_utils.teach import exercises
from vicap_utils.teach.exercises import (
    BLEU_CASE,
    GAIN_CASE,
    check_biggest_gain,
    check_close,
    check_equal,
    check_planted,
    check_temperature,
)
from vicap_utils.teach.notebook import tokenizer_variants
from vicap_utils.toy.data import generate

RIGHT, WRONG, NOT_YET = "right", "wrong", "not yet"
TRAINING = ["một cầu thủ đang đá bóng trên sân", "hai người chơi bóng chuyền trên bãi cát"]


def play(capsys, run, answer, verdict: str, *secrets: str) -> str:
    """Run a check on `answer`, assert its verdict, and that unless it is right it shows none
    of `secrets` (the solution's value or code)."""
    run(answer)
    out = capsys.readouterr().out
    assert out.count("\n") == 1, out
    mark = {RIGHT: "✅", WRONG: "❌", NOT_YET: "❌"}[verdict]
    assert out.startswith(mark), (answer, out)
    assert ("not done yet" in out) == (verdict == NOT_YET), out
    if verdict != RIGHT:  # the answer itself is echoed; nothing else may give it away
        hint = out.replace(repr(answer), "")
        assert not [s for s in secrets if s in hint], (secrets, out)
    return out


def plays(capsys, run, right: list, wrong: list, *secrets: str) -> None:
    """The stub, every right answer and every wrong one."""
    play(capsys, run, None, NOT_YET, *secrets)
    for answer in right:
        play(capsys, run, answer, RIGHT)
    for answer in wrong:
        play(capsys, run, answer, WRONG, *secrets)


def shown(value: float) -> list[str]:
    """The ways a number could be printed."""
    return [f"{value:.2f}", f"{value:.3f}", f"{value:.4f}"]


@pytest.fixture(scope="module")
def mini():
    """The `mini` profile and its base model (built once, then cached)."""
    cfg = profile_config("mini")
    return cfg, captioner.load_base(cfg.model, log=lambda *a: None)


# ---------------------------------------------------------------- 01


def test_01_counts_accept_numpy_integers(capsys):
    def run(answer):
        check_equal("1 · captions kept", answer, 3000, "captions, not images")

    plays(capsys, run, [np.int64(3000), 3000.0], [600, 2999, "3000"], "3000",
          "annotations_ok")


def test_01_planted_defect_needs_an_audit_of_the_damaged_copy(capsys, tmp_path: Path):
    scratch = tmp_path / "scratch"
    captions = generate(scratch, n_images=3, overwrite=True)
    images, folder = scratch / "images", scratch / "audit"

    def run(answer):
        check_planted(answer, folder, captions)

    # typed without planting anything: no audit of the copy to read
    play(capsys, run, "unreadable_image", WRONG, "unreadable_image")
    victim = sorted(images.iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:300])
    audit(captions, images, folder)
    capsys.readouterr()  # the audit's own report
    plays(capsys, run, ["unreadable_image", " unreadable_image\n"],
          ["missing_file", "empty_caption"], "unreadable_image")
    # a set drawn again after the audit: the old audit no longer counts
    generate(scratch, n_images=3, overwrite=True)
    os.utime(folder / "rejects.csv", (1, 1))
    play(capsys, run, "unreadable_image", WRONG, "unreadable_image")


# ---------------------------------------------------------------- 02


def test_02_truncation_share_rounded_to_two_decimals(capsys):
    share = 0.6156

    def run(answer):
        check_close("1 · truncation", answer, lambda: share, "a fraction …", decimals=2)

    # the 0.62 for 0.6156 is right; another count, a percent, 1 - share are wrong
    plays(capsys, run, [0.62, np.float32(share), 0.6156], [0.66, 61.56, 1 - share, True],
          *shown(share), ".mean()")


def test_02_token_counts_and_an_unseen_sentence(capsys):
    tokenizers = tokenizer_variants(TRAINING)
    stock = exercises.token_count(tokenizers["stock (strips accents)"], "người")
    extended = exercises.token_count(tokenizers["extended"], "người")
    assert (stock, extended) == (3, 1)
    capsys.readouterr()  # the extension's own report

    def run_stock(answer):
        check_equal("2 · stock tokenizer", answer, stock, "the number of ids …")

    plays(capsys, run_stock, [np.int32(3)], [stock + 2, 1], "input_ids")  # +2: [CLS], [SEP]

    def run_unseen(answer):
        exercises.check("3 · an unseen sentence", answer, lambda: exercises.unseen_and_kept(
            tokenizers["extended"], answer, TRAINING), "a sentence with a syllable …")

    # the tokenizer writes "3-0" back as "3 - 0": every diacritic is there, so it is right
    plays(capsys, run_unseen, ["Đội tuyển Việt Nam thắng 3-0!", "Trọng tài thổi còi."],
          [TRAINING[0], "hai cầu thủ đá bóng"])


# ---------------------------------------------------------------- 03


def test_03_stock_round_trip_and_target_count(capsys, mini):
    cfg, _ = mini
    decoded = exercises.stock_round_trip(cfg, TRAINING[0])
    assert decoded == "mot cau thu đang đa bong tren san"

    def run_decoded(answer):
        check_equal("1 · without the extension", answer,
                    lambda: exercises.stock_round_trip(cfg, TRAINING[0]), "the text …")

    plays(capsys, run_decoded, [f"  {decoded.replace(' ', '  ')} "],
          [TRAINING[0], decoded.title()], decoded, "decode(")
    with_cross = exercises.lora_target_count(cfg, cross_attention=True)
    without = exercises.lora_target_count(cfg, cross_attention=False)
    assert with_cross == 2 * without > 0

    def run_count(answer):
        check_equal("2 · cross-attention", answer, with_cross, "module names …")

    plays(capsys, run_count, [np.int64(with_cross)], [without, with_cross + 1], "fullmatch")


def test_03_lora_share_to_two_decimals(capsys, mini):
    cfg, _ = mini
    r4 = exercises.lora_share(cfg, 4, TRAINING)
    default = exercises.lora_share(cfg, cfg.lora.r, TRAINING)
    assert abs(default - r4) > 0.01

    def run(answer):
        check_close("3 · rank 4", answer, r4, "a percentage …", decimals=2)

    plays(capsys, run, [round(r4, 2), np.float64(r4)], [default, r4 / 100, round(r4, 1) + 0.1],
          *shown(r4), "trainable_table(")


# ---------------------------------------------------------------- 04


def test_04_bleu_case_tells_the_usual_mistakes_apart(capsys):
    references, caption = BLEU_CASE
    right = exercises.bleu1(references, caption)
    assert right == pytest.approx(4 / 6 * math.exp(1 - 7 / 6), abs=1e-6)
    mistakes = {"no clipping": math.exp(1 - 7 / 6), "no brevity penalty": 4 / 6,
                "neither": 1.0, "shortest reference": 4 / 6,
                "longest reference": 4 / 6 * math.exp(1 - 11 / 6),
                "mean reference length": 4 / 6 * math.exp(1 - 22 / 3 / 6)}

    def run(answer):
        check_close("1 · BLEU-1 by hand", answer, lambda: exercises.bleu1(references, caption),
                    "clip each word's count …", decimals=2)

    plays(capsys, run, [0.56, np.float64(right)], list(mistakes.values()), *shown(right),
          "Bleu(", "compute_score")


def test_04_a_wrong_caption_swaps_a_word_and_a_true_one_does_not_pass(capsys):
    references, _ = BLEU_CASE

    def run(answer):
        exercises.check("2 · high BLEU, wrong caption", answer, lambda: isinstance(answer, str)
                        and exercises.wrong_but_high_bleu(references, answer), "one reference …")

    plays(capsys, run, ["Cầu thủ đang đá bóng trên biển.", "hai cầu thủ mặc áo xanh đang "
                        "tranh bóng trên sân"],
          [references[0] + " rất vui vẻ", references[1] + " rất vui vẻ", references[1],
           "cầu thủ đang đá bóng", 7])


def test_04_cider_alone(capsys):
    references, caption = BLEU_CASE
    alone = exercises.cider_alone(references, caption)
    assert alone == 0.0

    def run(answer):
        check_close("3 · CIDEr of one image", answer,
                    lambda: exercises.cider_alone(references, caption), "a set of one image …",
                    decimals=2)

    plays(capsys, run, [np.float64(0.0), 0], [1.0, 0.5], "Cider(", "compute_score")
    lesson = (Path(__file__).parent.parent / "notebooks" / "04_evaluate.py").read_text()
    assert "would always score 0" not in lesson


# ---------------------------------------------------------------- 05


def test_05_biggest_gain_is_tried_where_zero_shot_is_not_zero(capsys):
    fine_tuned = {7: 0.4, 8: 1.2, 9: 0.9}
    zero_shot = dict.fromkeys(fine_tuned, 0.0)  # as on mini: the best image is the biggest gain

    def run(answer):
        check_biggest_gain(answer, fine_tuned, zero_shot)

    def by_pandas(ft, zs):
        return (pd.Series(ft) - pd.Series(zs)).idxmax()  # a numpy integer

    def gain(ft, zs):
        return max(ft, key=lambda i: ft[i] - zs[i])

    def best_fine_tuned(ft, zs):
        return max(ft, key=ft.get)

    assert best_fine_tuned(*GAIN_CASE) != gain(*GAIN_CASE)
    plays(capsys, run, [gain, by_pandas], [best_fine_tuned, 8, lambda ft, zs: min(zs, key=zs.get)],
          "max(", "idxmax")


def test_05_three_decodings(capsys, mini):
    _, cap = mini
    image = Image.new("RGB", (64, 48), (30, 140, 60))
    captions = exercises.three_decodings(cap, image)

    def run(answer):
        check_equal("2 · three decodings", answer,
                    lambda: exercises.three_decodings(cap, image), "three captions …")

    plays(capsys, run, [tuple(captions)], [captions[:2], captions[0], [*captions, captions[0]]],
          "Decoding(")


# ---------------------------------------------------------------- 06


def test_06_diacritics(capsys):
    def run(answer):
        check_equal("1 · diacritics", answer, "adapter", "the one whose caption has ă, ơ …")

    plays(capsys, run, [" adapter "], ["base", 1], "adapter")


def test_06_temperature_counts_come_from_the_student_s_own_draws(capsys, mini):
    _, cap = mini
    image = Image.new("RGB", (64, 48), (200, 90, 40))
    truth = [exercises.distinct_samples(cap, image, t) for t in (0.3, 1.5)]
    guesses = [g for g in ([1, 1], [2, 4], [4, 5], [5, 5]) if g != truth]
    assert len(guesses) >= 3

    def run(answer):
        check_temperature(*(answer or (None, None)), cap, image)

    plays(capsys, run, [[np.int64(truth[0]), np.int64(truth[1])]], guesses, str(truth))
