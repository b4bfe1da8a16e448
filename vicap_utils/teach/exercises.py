""""Check yourself" cells and the answers notebooks and solutions share: one line, never the
solution (not done yet, not quite with a hint, or right), accepting every right form."""

import math
import numbers
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider

from vicap_utils import captioner
from vicap_utils.config import Config
from vicap_utils.metrics import python_tokenize
from vicap_utils.teach.notebook import base_tokenizer
from vicap_utils.vocab import canonical, syllables

DONE = "✅"
NOT_YET = "❌"


# ---------------------------------------------------------------- checks
def check(exercise: str, answer: Any, ok: bool | Callable[[], bool], hint: str,
          well_done: str = "right") -> None:
    """Print one line about `answer`: not done yet (None), right (`ok`, maybe a function called
    only once there is an answer), or not quite (hint)."""
    if answer is None:
        print(f"{NOT_YET} {exercise}: not done yet: {hint}")
    elif ok() if callable(ok) else ok:
        print(f"{DONE} {exercise}: {well_done}")
    else:
        print(f"{NOT_YET} {exercise}: not quite ({answer!r}): {hint}")


def is_number(answer: Any) -> bool:
    """Whether `answer` is a real number (a numpy scalar too), not a bool."""
    return isinstance(answer, numbers.Real) and not isinstance(answer, bool)


def check_close(exercise: str, answer: Any, expected: float | Callable[[], float], hint: str,
                decimals: int = 2) -> None:
    """`check` for a number asked to `decimals` decimals: right when it rounds like `expected`."""
    if answer is None:
        return check(exercise, answer, False, hint)
    value = float(expected() if callable(expected) else expected)
    ok = is_number(answer) and abs(float(answer) - value) <= 0.5 * 10 ** -decimals + 1e-9
    return check(exercise, answer, ok, hint, f"right, {value:.{decimals + 2}f}")


def same(answer: Any, value: Any) -> bool:
    """Whether `answer` is `value` in any right form (any number type, sequence, spacing)."""
    if is_number(value):
        return is_number(answer) and answer == value
    if isinstance(value, str):
        return isinstance(answer, str) and answer.split() == value.split()
    if isinstance(value, list):
        return (isinstance(answer, Sequence) and not isinstance(answer, str)
                and len(answer) == len(value) and all(map(same, answer, value)))
    return answer == value


def check_equal(exercise: str, answer: Any, expected: Any, hint: str) -> None:
    """`check` for an exact answer (a count, a code, a list); `expected` may be a function."""
    if answer is None:
        return check(exercise, answer, False, hint)
    value = expected() if callable(expected) else expected
    return check(exercise, answer, same(answer, value), hint, f"right, {value!r}")


# ---------------------------------------------------------------- 01 · data audit
def check_planted(answer: Any, audit_folder: Path, copy_captions: Path) -> None:
    """Exercise 01·2: `answer` must be an image's reason in an audit newer than the set."""
    rejects = Path(audit_folder) / "rejects.csv"
    reasons = set()
    if rejects.is_file() and rejects.stat().st_mtime >= Path(copy_captions).stat().st_mtime:
        table = pd.read_csv(rejects, dtype=str, keep_default_na=False)
        reasons = set(table.loc[table["kind"] == "image", "reason"])
    hint = (f"the reason column of the image row in {rejects}" if reasons else
            f"no audit of a damaged set in {audit_folder} yet: cut an image of the scratch set "
            "short, audit the set into that folder, then read its rejects.csv")
    check("2 · planted defect", answer, isinstance(answer, str) and answer.strip() in reasons,
          hint)


# ---------------------------------------------------------------- 02 · caption lengths
def token_count(tokenizer, text: str) -> int:
    """How many tokens `tokenizer` writes `text` with (no special tokens)."""
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def unseen_and_kept(tokenizer, sentence: str, training_captions: Sequence[str]) -> bool:
    """Whether `sentence` has a syllable no training caption has and `tokenizer` keeps its every
    letter and diacritic (spacing around punctuation aside)."""
    back = tokenizer.decode(tokenizer(sentence, add_special_tokens=False)["input_ids"])
    new = set(syllables([sentence])) - set(syllables(training_captions))
    letters = ["".join(canonical(text).split()) for text in (back, sentence)]  # "3-0" → "3 - 0"
    return bool(new) and letters[0] == letters[1]


# ---------------------------------------------------------------- 03 · fine-tuning
def stock_round_trip(cfg: Config, text: str) -> str:
    """`text` encoded and decoded by the base model's own tokenizer."""
    tok = base_tokenizer(cfg)
    return tok.decode(tok(text, add_special_tokens=False)["input_ids"])


def lora_share(cfg: Config, r: int, captions: list[str]) -> float:
    """The trainable share (%) of all parameters with LoRA rank `r` (vocabulary as training)."""
    cap = captioner.load_base(cfg.model, log=lambda *a: None)
    if cfg.model.extend_vocab:
        captioner.extend_vocabulary(cap, captions)
    model = captioner.add_lora(cap, captioner.lora_config(cap, replace(cfg.lora, r=r)))
    return captioner.trainable_table(model)[-1]["share_%"]


def lora_target_count(cfg: Config, cross_attention: bool) -> int:
    """How many modules of the base LoRA adapts with or without the cross-attention."""
    cap = captioner.load_base(cfg.model, log=lambda *a: None)
    targets = captioner.lora_targets(cap.family, replace(cfg.lora,
                                                         cross_attention=cross_attention))
    return sum(bool(re.fullmatch(targets, name)) for name, _ in cap.model.named_modules())


# ---------------------------------------------------------------- 04 · evaluation
# Exercise 04·1: leaving out the clipping, the brevity penalty (6 words; closest reference 7,
# shortest 4) or the right reference length each gives another number.
BLEU_CASE = (["cầu thủ đang đá bóng trên sân", "hai cầu thủ mặc áo đỏ đang tranh bóng trên sân",
              "trận đấu bóng đá"], "cầu thủ cầu thủ đá bóng")


def bleu1(references: Sequence[str], caption: str) -> float:
    """pycocoevalcap's BLEU-1 of one tokenized caption against its tokenized references."""
    return Bleu(1).compute_score({0: list(references)}, {0: [caption]}, verbose=0)[0][0]


def cider_alone(references: Sequence[str], caption: str) -> float:
    """pycocoevalcap's CIDEr of one tokenized caption scored as a set of one image."""
    return float(Cider().compute_score({0: list(references)}, {0: [caption]})[0])


def wrong_but_high_bleu(references: Sequence[str], caption: str, bleu: float = 0.7) -> bool:
    """Whether `caption` (raw text) is a reference with one word swapped for a word no
    reference has (words added do not count) and still scores BLEU-1 ≥ `bleu`."""
    words = python_tokenize(caption).split()
    seen = {w for r in references for w in r.split()}

    def one_swap(reference: list[str]) -> bool:
        swapped = [new for old, new in zip(reference, words) if old != new]
        return len(reference) == len(words) and len(swapped) == 1 and swapped[0] not in seen

    return (any(one_swap(r.split()) for r in references)
            and bleu1(references, " ".join(words)) >= bleu)


# ---------------------------------------------------------------- 05 · gallery
# Exercise 05·1: per-image CIDEr (fine-tuned, zero-shot) where the best fine-tuned image is not
# the one that gained most (on `mini`, zero-shot CIDEr is 0 everywhere, so they are).
GAIN_CASE = ({1: 0.9, 2: 0.6, 3: 0.2, 4: 0.5}, {1: 0.8, 2: 0.1, 3: 0.0, 4: 0.5})


def biggest_gains(fine_tuned: Mapping[Any, float], zero_shot: Mapping[Any, float]) -> set:
    """The image ids whose per-image CIDEr gained most from fine-tuning (ties all count)."""
    gains = {i: fine_tuned[i] - zero_shot.get(i, 0.0) for i in fine_tuned}
    return {i for i, gain in gains.items() if math.isclose(gain, max(gains.values()))}


def check_biggest_gain(answer: Any, fine_tuned: Mapping[Any, float],
                       zero_shot: Mapping[Any, float]) -> None:
    """Exercise 05·1: `answer(ft, zs)` must name a biggest gain on `GAIN_CASE` and the run's."""
    cases = (GAIN_CASE, (fine_tuned, zero_shot))
    check("1 · biggest gain", answer, lambda: callable(answer) and all(
        answer(ft, zs) in biggest_gains(ft, zs) for ft, zs in cases),
          "a function of the two dicts returning the image id whose fine-tuned score rose most "
          "above its zero-shot score; it is also tried on scores where zero-shot is not 0")


def three_decodings(cap, image) -> list[str]:
    """One image captioned greedily, with beam 5, and with beam 5 and repetition penalty 1.5."""
    ways = [captioner.Decoding(num_beams=1), captioner.Decoding(num_beams=5),
            captioner.Decoding(num_beams=5, repetition_penalty=1.5)]
    return [captioner.caption(cap, images=[image], dec=dec)[0][0][0] for dec in ways]


# ---------------------------------------------------------------- 06 · caption demo
def distinct_samples(cap, image, temperature: float, n: int = 5) -> int:
    """Distinct captions among `n` sampled one call at a time after `torch.manual_seed(0)`."""
    torch.manual_seed(0)
    dec = captioner.Decoding(num_beams=1, do_sample=True, temperature=temperature)
    return len({captioner.caption(cap, images=[image], dec=dec)[0][0][0] for _ in range(n)})


def check_temperature(low: Any, high: Any, cap, image) -> None:
    """Exercise 06·2: distinct-caption counts at T = 0.3 and 1.5, against the same draws."""
    answer = None if low is None or high is None else [low, high]
    check("2 · temperature", answer, lambda: same(answer, [distinct_samples(cap, image, t)
                                                           for t in (0.3, 1.5)]),
          "for each temperature: torch.manual_seed(0), then five calls of caption() with "
          "sampling; count the different captions with a set",
          "right: a higher temperature flattens the distribution, so captions vary more")
