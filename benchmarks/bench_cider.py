"""Time vicap's batched CIDEr-D against pycocoevalcap's Cider on a batch shaped like a
self-critical training step (32 images x 5 sampled captions, 5 references each), in the same run,
after checking that both give the same scores.

    python benchmarks/bench_cider.py [--images 32] [--samples 5] [--refs 5] [--repeats 20]
"""
from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np
from bench_evaluate import caption
from pycocoevalcap.cider.cider import Cider

from vicap_utils.metrics import CiderD, python_tokenize


def sample(rng: random.Random) -> str:
    """A sampled caption: a fresh one, sometimes cut short or with a word repeated."""
    words = python_tokenize(caption(rng)).split()
    if rng.random() < 0.3:
        words = words[: rng.randint(1, len(words))]
    if rng.random() < 0.3:
        i = rng.randrange(len(words))
        words.insert(i, words[i])
    return " ".join(words)


def refs_of(rng: random.Random, n_refs: int) -> list[str]:
    """One image's tokenized references."""
    return [python_tokenize(caption(rng)) for _ in range(n_refs)]


def median_times(jobs: Sequence[Callable[[], object]], repeats: int) -> list[float]:
    """Median CPU seconds of each job over `repeats` rounds, the jobs taking turns, so that
    other load on a shared machine weighs on all of them alike."""
    times: list[list[float]] = [[] for _ in jobs]
    for _ in range(repeats):
        for job, spent in zip(jobs, times, strict=True):
            start = time.process_time()
            job()
            spent.append(time.process_time() - start)
    return [statistics.median(t) for t in times]


def main() -> None:
    """Build the batch and a training corpus, check equality, print times and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--refs", type=int, default=5)
    parser.add_argument("--corpus", type=int, default=5000, help="training images (for df)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    image_refs = [refs_of(rng, args.refs) for _ in range(args.images)]
    cands = [sample(rng) for _ in range(args.images * args.samples)]
    refs = [image_refs[i // args.samples] for i in range(len(cands))]
    gts, res = dict(enumerate(refs)), {i: [c] for i, c in enumerate(cands)}

    ours, ours_per = CiderD(refs).score(cands, refs)
    theirs, theirs_per = Cider().compute_score(gts, res)
    gap = max(abs(ours - theirs), float(np.max(np.abs(ours_per - theirs_per))))
    corpus = [refs_of(rng, args.refs) for _ in range(args.corpus)]
    start = time.process_time()
    fixed = CiderD(corpus)
    t_corpus = time.process_time() - start
    t_theirs, t_ours, t_fixed = median_times(
        [lambda: Cider().compute_score(gts, res), lambda: CiderD(refs).score(cands, refs),
         lambda: fixed.score(cands, refs)], args.repeats)

    print(f"\n{len(cands)} candidates ({args.images} images x {args.samples} samples), "
          f"{args.refs} references each; median CPU time of {args.repeats} runs")
    print(f"CIDEr {ours:.6f} (pycocoevalcap {theirs:.6f}); largest difference, corpus or "
          f"per candidate: {gap:.1e}")
    print(f"pycocoevalcap Cider (df from the batch):  {t_theirs * 1e3:8.2f} ms")
    print(f"vicap CiderD (df from the batch):         {t_ours * 1e3:8.2f} ms")
    print(f"ratio pycocoevalcap / vicap:              {t_theirs / t_ours:8.1f}x")
    print(f"vicap CiderD, df from {args.corpus} training images: {t_fixed * 1e3:8.2f} ms per step "
          f"(corpus read once: {t_corpus:.2f} s)")


if __name__ == "__main__":
    main()
