"""Time `vicap_utils.metrics.evaluate` on 1,000 predictions x 5 references (budget: 60 s), and
pycocoevalcap's scorers called the usual way on the same set, in the same run.

    python benchmarks/bench_evaluate.py [--images 1000] [--refs 5] [--seed 0]
"""
from __future__ import annotations

import argparse
import random
import time

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from vicap_utils.metrics import evaluate

BUDGET_S = 60.0
SUBJECTS = ["một người đàn ông", "hai cầu thủ", "một cô gái", "những đứa trẻ", "một vận động viên",
            "người phụ nữ", "một nhóm thanh niên", "cậu bé"]
VERBS = ["đang chơi", "đang đá", "đang ném", "đang chuyền", "đang bắt", "đang giữ"]
OBJECTS = ["quả bóng đá", "quả bóng rổ", "quả bóng chuyền", "quả bóng tennis", "trái banh"]
PLACES = ["trên sân cỏ", "trong nhà thi đấu", "trên bãi biển", "ở công viên", "dưới trời mưa",
          "trước khung thành"]
EXTRAS = ["", "", "vào buổi chiều", "cùng với bạn bè", "rất vui vẻ", "với áo màu đỏ"]


def caption(rng: random.Random) -> str:
    """One Vietnamese-like caption with diacritics and final punctuation."""
    words = [rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS), rng.choice(PLACES),
             rng.choice(EXTRAS)]
    text = " ".join(w for w in words if w)
    return text[0].upper() + text[1:] + "."


def build_set(n_images: int, n_refs: int, seed: int) -> tuple[list[dict], dict]:
    """COCO results and COCO-style references: half the predictions copy a reference."""
    rng = random.Random(seed)
    images, annotations, predictions = [], [], []
    for image_id in range(n_images):
        images.append({"id": image_id, "file_name": f"{image_id:06d}.jpg"})
        refs = [caption(rng) for _ in range(n_refs)]
        annotations += [{"id": len(annotations), "image_id": image_id, "caption": c} for c in refs]
        pred = rng.choice(refs) if rng.random() < 0.5 else caption(rng)
        predictions.append({"image_id": image_id, "caption": pred})
    return predictions, {"images": images, "annotations": annotations}


def simple_way(predictions: list[dict], references: dict) -> dict[str, float]:
    """pycocoevalcap as usually called: PTBTokenizer, then each scorer (no SPICE: offline)."""
    gts: dict[int, list[dict]] = {}
    for ann in references["annotations"]:
        gts.setdefault(ann["image_id"], []).append({"caption": ann["caption"]})
    res = {p["image_id"]: [{"caption": p["caption"]}] for p in predictions}
    tokenizer = PTBTokenizer()
    gts, res = tokenizer.tokenize(gts), tokenizer.tokenize(res)
    scores = dict(zip(["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"],
                      Bleu(4).compute_score(gts, res, verbose=0)[0], strict=True))
    scorer = Meteor()
    scores["METEOR"] = scorer.compute_score(gts, res)[0]
    del scorer
    scores["ROUGE-L"] = Rouge().compute_score(gts, res)[0]
    scores["CIDEr"] = Cider().compute_score(gts, res)[0]
    return scores


def main() -> None:
    """Build the set, time both ways, print the times, their ratio and the main scores."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--refs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    predictions, references = build_set(args.images, args.refs, args.seed)

    start = time.perf_counter()
    ours = evaluate(predictions, references)
    t_ours = time.perf_counter() - start
    start = time.perf_counter()
    plain = simple_way(predictions, references)
    t_plain = time.perf_counter() - start

    print(f"\n{args.images} predictions x {args.refs} references")
    print(f"vicap evaluate (all metrics):        {t_ours:6.1f} s  "
          f"({'within' if t_ours <= BUDGET_S else 'OVER'} the {BUDGET_S:.0f} s budget)")
    print(f"pycocoevalcap directly (no SPICE):  {t_plain:6.1f} s")
    print(f"ratio evaluate / pycocoevalcap:      {t_ours / t_plain:6.2f}")
    for key, value in plain.items():
        print(f"  {key:<8} ours {ours[key]:.4f}   pycocoevalcap {value:.4f}")
    print(f"  METEOR-vi {ours['METEOR-vi']}, SPICE {ours['SPICE']}, "
          f"unavailable: {ours['unavailable']}")


if __name__ == "__main__":
    main()
