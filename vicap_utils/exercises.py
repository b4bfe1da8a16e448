""""Check yourself" cells and the reference answers they compare with.

An exercise stub leaves its answer as `None`; the check then says the exercise is not done yet
and what to do. A wrong answer gets a hint, a right one a short confirmation. Checks only
print, so a notebook run headless (CI, "Run all") goes on past an open exercise. An expected
value may be given as a function, computed only once there is an answer to compare.

The notebooks' exercises and their solutions (notebooks/solutions/) call the same reference
functions below, so an answer is checked against one definition.
"""
from __future__ import annotations

import math
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from vicap_utils.config import Config

DONE = "✅"
NOT_YET = "❌"


# ---------------------------------------------------------------- checks


def check(exercise: str, answer: Any, ok: bool | Callable[[], bool], hint: str,
          well_done: str = "right") -> None:
    """Print one line about `answer`: not done yet (None), right (`ok`), or not quite (hint)."""
    if answer is None:
        print(f"{NOT_YET} {exercise}: not done yet: {hint}")
    elif ok() if callable(ok) else ok:
        print(f"{DONE} {exercise}: {well_done}")
    else:
        print(f"{NOT_YET} {exercise}: not quite ({answer!r}): {hint}")


def check_close(exercise: str, answer: Any, expected: float | Callable[[], float], hint: str,
                rel: float = 1e-3, abs_tol: float = 1e-6) -> None:
    """`check` for a number: right when within `rel` (relative) or `abs_tol` of `expected`."""
    if answer is None:
        return check(exercise, answer, False, hint)
    value = expected() if callable(expected) else expected
    ok = isinstance(answer, int | float) and not isinstance(answer, bool) and math.isclose(
        float(answer), float(value), rel_tol=rel, abs_tol=abs_tol)
    return check(exercise, answer, ok, hint, f"right, {value:.4g}")


def check_equal(exercise: str, answer: Any, expected: Any, hint: str) -> None:
    """`check` for an exact answer (a count, a reason code, a list); `expected` may be a
    function."""
    if answer is None:
        return check(exercise, answer, False, hint)
    value = expected() if callable(expected) else expected
    return check(exercise, answer, answer == value, hint, f"right, {value!r}")


# ---------------------------------------------------------------- 01 · data audit


def copy_data_set(captions: Path, images: Path, folder: Path, n_images: int = 12
                  ) -> tuple[Path, Path]:
    """A scratch copy of the first `n_images` images of a caption set and their captions, to
    damage in an exercise: (captions.json, images folder) in `folder`, replacing a copy vicap
    made there before (never anything else)."""
    from vicap_utils.data import load_captions, write_coco
    from vicap_utils.folders import output_folder, staged

    cs = load_captions(captions, images)
    small = cs.subset(list(cs.images)[:n_images])
    small.images = {i: replace(info, file_name=Path(info.file_name).name)
                    for i, info in small.images.items()}
    with output_folder(folder, "synth", ["captions.json", "images"], overwrite=True) as out, \
            staged(out) as tmp:
        (tmp / "images").mkdir()
        for i, info in small.images.items():
            shutil.copyfile(Path(images) / cs.images[i].file_name, tmp / "images" / info.file_name)
        write_coco(small, tmp / "captions.json")
    return folder / "captions.json", folder / "images"


# ---------------------------------------------------------------- 02 · caption lengths


def token_count(tokenizer, text: str) -> int:
    """How many tokens `tokenizer` writes `text` with (no special tokens)."""
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def unseen_and_kept(tokenizer, sentence: str, training_captions: Sequence[str]) -> bool:
    """Whether `sentence` has a syllable no training caption has and still comes back from
    `tokenizer` whole (diacritics and all)."""
    from vicap_utils.vocab import canonical, syllables

    back = tokenizer.decode(tokenizer(sentence, add_special_tokens=False)["input_ids"])
    new = set(syllables([sentence])) - set(syllables(training_captions))
    return bool(new) and canonical(back) == canonical(sentence)


# ---------------------------------------------------------------- 03 · fine-tuning


def base_tokenizer(cfg: Config):
    """The base model's own tokenizer, before any Vietnamese extension (processor only)."""
    from transformers import AutoProcessor

    from vicap_utils.weights import resolve_base

    return AutoProcessor.from_pretrained(resolve_base(cfg.model.base)).tokenizer


def stock_round_trip(cfg: Config, text: str) -> str:
    """`text` encoded and decoded by the base model's own tokenizer."""
    tok = base_tokenizer(cfg)
    return tok.decode(tok(text, add_special_tokens=False)["input_ids"])


def lora_share(cfg: Config, r: int, captions: list[str]) -> float:
    """The trainable share (%) of all parameters with LoRA rank `r`, vocabulary extended for
    `captions` as training does."""
    from vicap_utils import captioner

    cap = captioner.load_base(cfg.model, log=lambda *a: None)
    if cfg.model.extend_vocab:
        captioner.extend_vocabulary(cap, captions)
    model = captioner.add_lora(cap, captioner.lora_config(cap, replace(cfg.lora, r=r)))
    return captioner.trainable_table(model)[-1]["share_%"]


def lora_target_count(cfg: Config, cross_attention: bool) -> int:
    """How many modules of the base LoRA adapts with or without the cross-attention."""
    from vicap_utils import captioner

    cap = captioner.load_base(cfg.model, log=lambda *a: None)
    targets = captioner.lora_targets(cap.family, replace(cfg.lora,
                                                         cross_attention=cross_attention))
    return sum(bool(re.fullmatch(targets, name)) for name, _ in cap.model.named_modules())


# ---------------------------------------------------------------- 04 · evaluation


def bleu1(references: Sequence[str], caption: str) -> float:
    """pycocoevalcap's BLEU-1 of one tokenized caption against its tokenized references."""
    from pycocoevalcap.bleu.bleu import Bleu

    return Bleu(1).compute_score({0: list(references)}, {0: [caption]}, verbose=0)[0][0]


def cider_alone(references: Sequence[str], caption: str) -> float:
    """pycocoevalcap's CIDEr of one tokenized caption scored as a set of one image."""
    from pycocoevalcap.cider.cider import Cider

    return float(Cider().compute_score({0: list(references)}, {0: [caption]})[0])


def wrong_but_high_bleu(references: Sequence[str], caption: str, bleu: float = 0.7) -> bool:
    """Whether `caption` (raw text) scores BLEU-1 ≥ `bleu` against the tokenized references
    while using a word none of them has."""
    from vicap_utils.metrics import python_tokenize

    words = python_tokenize(caption).split()
    seen = {w for r in references for w in r.split()}
    return bleu1(references, " ".join(words)) >= bleu and any(w not in seen for w in words)


# ---------------------------------------------------------------- 05 · gallery


def biggest_gain(fine_tuned: Mapping[Any, float], zero_shot: Mapping[Any, float]) -> Any:
    """The image id whose per-image CIDEr gained most from fine-tuning."""
    return max(fine_tuned, key=lambda i: (fine_tuned[i] - zero_shot.get(i, 0.0), str(i)))


def three_decodings(cap, image) -> list[str]:
    """One image captioned greedily, with beam 5, and with beam 5 and repetition penalty 1.5."""
    from vicap_utils.captioner import Decoding, caption

    ways = [Decoding(num_beams=1), Decoding(num_beams=5),
            Decoding(num_beams=5, repetition_penalty=1.5)]
    return [caption(cap, images=[image], dec=dec)[0][0][0] for dec in ways]
