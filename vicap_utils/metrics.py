"""Caption metrics on NFC, PTB-tokenized text: pycocoevalcap's (CIDEr-D batched in numpy, fast
enough for a reward), METEOR-vi, ROUGE-1/2 and diversity; offline, and honest for Vietnamese."""

import json
import math
import re
import sys
import time
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS

from vicap_utils.ops import checks, folders, jvm
from vicap_utils.ops.io import VicapError, atomic_write_files, output_file, read_json
from vicap_utils.text import LINE_BREAKS

# Every reference-based score, then every diversity figure: metrics.json and the tables.
SCORE_KEYS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "METEOR-vi", "ROUGE-L", "CIDEr",
              "SPICE", "ROUGE-1", "ROUGE-2")
DIVERSITY_KEYS = ("TTR", "TTR_per_caption", "repetition_rate", "distinct-1", "distinct-2",
                  "vocab_size", "mean_length", "novel_rate")
COMPARED = ("BLEU-4", "METEOR-vi", "ROUGE-L", "CIDEr", "TTR", "repetition_rate", "distinct-1",
            "distinct-2", "vocab_size")

NOTES = (
    "CIDEr is CIDEr-D as pycocoevalcap's Cider computes it (equal within 1e-6); its document "
    "frequencies come from this set's references, so scores depend on the evaluated set (one "
    "image alone scores 0); per-image CIDEr is against the whole set.",
    "METEOR is pycocoevalcap's (-l en -norm), whose normaliser splits Vietnamese letters outside "
    "Latin-1 into tokens; METEOR-vi runs the jar with -l other (exact matches) on NFC tokens.",
    "SPICE parses captions with English CoreNLP models; for Vietnamese it means little.",
    "ROUGE-1/2: F1 over tokens (diacritics count), best reference per image, mean over images. "
    "TTR: types / tokens over all predictions (= distinct-1); TTR_per_caption: mean per caption.",
)

_WORD = r"[\w\u0300-\u036f]+"
_FALLBACK_TOKEN = re.compile(rf"\.\.\.|--|'[^\W\d_]+|{_WORD}(?:[-.]{_WORD})*|\S")
_FALLBACK_MAP = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-",
                 "}": "-rcb-", '"': "''", "\u201c": "``", "\u201d": "''", "\u2018": "`",
                 "\u2019": "'"}


def evaluate(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """`evaluate_detailed`'s metrics alone (same arguments)."""
    return evaluate_detailed(*args, **kwargs)[0]


def evaluate_detailed(predictions: str | Path | list, references: str | Path | Mapping,
                      train_captions: str | Path | Mapping | Sequence[str] | None = None,
                      allow_missing: bool = False, tokenization: str = "syllable",
                      ) -> tuple[dict[str, Any], pd.DataFrame]:
    """Metrics of COCO results against COCO-style references (paths or loaded JSON) and the
    per-image table; `tokenization` "words" segments captions into words first."""
    preds, refs = checks.load_predictions(predictions), checks.load_references(references)
    files = all(isinstance(f, (str, Path)) for f in (predictions, references))
    keys, notes = checks.match_images(preds, refs, allow_missing,
                                      f"{predictions} against {references}: " if files else "")
    train = train_captions  # captions, or COCO-style JSON holding them (a path or loaded)
    if isinstance(train, (str, Path, Mapping)):
        train = [c for _, caps in checks.load_references(train, "training captions").values()
                 for c in caps]
    hyp_raw, ref_raw = [preds[k][1] for k in keys], [refs[k][1] for k in keys]
    flat = hyp_raw + [c for caps in ref_raw for c in caps] + list(map(str, train or []))
    if tokenization == "words":
        flat, segmenter = segment_words(flat)
        notes.append(f"captions segmented into words by {segmenter} (lower-cased first; the "
                     "syllables of a word joined by '_') before every metric")
    elif tokenization != "syllable":
        raise VicapError(f"tokenization {tokenization!r}: use 'syllable' or 'words'")
    _progress(f"tokenizing {len(flat)} captions")
    tokens, tokenizer, why = tokenize(flat)
    if why:
        notes.append(f"python-fallback tokenizer used ({why}); scores may differ slightly from "
                     "PTB-tokenized ones")
    rest = iter(tokens[len(keys):])
    hyps, ref_tok = tokens[: len(keys)], [[next(rest) for _ in caps] for caps in ref_raw]
    if not any(t for caps in ref_tok for t in caps):
        label = references if isinstance(references, (str, Path)) else "references"
        raise VicapError(f"{label}: no reference caption of the scored images has a word; there "
                         "is nothing to score against")
    metrics, unavailable, cider_per_image = score_all(hyps, ref_tok)
    metrics.update(diversity(hyps, None if train is None else set(rest)))
    result = {k: metrics[k] for k in (*SCORE_KEYS, *DIVERSITY_KEYS) if k in metrics}
    result.update(unavailable=unavailable, tokenizer=tokenizer, tokenization=tokenization,
                  n_images=len(keys), notes=[*NOTES, *notes])
    per_image = pd.DataFrame({"image_id": [refs[k][0] for k in keys], "cider": cider_per_image,
                              "prediction": hyp_raw, "first_reference": [c[0] for c in ref_raw]})
    return result, per_image


def tokenize(captions: Sequence[str]) -> tuple[list[str], str, str | None]:
    """NFC, then PTB as pycocoevalcap runs it, else the Python stand-in: (tokens, name, why)."""
    texts = [LINE_BREAKS.sub(" ", unicodedata.normalize("NFC", c)) for c in captions]
    try:
        return jvm.ptb_tokenize(texts), "ptb", None
    except jvm.ScorerUnavailable as exc:
        return [python_tokenize(t) for t in texts], "python-fallback", str(exc)


def segment_words(captions: Sequence[str]) -> tuple[list[str], str]:
    """(captions, segmenter): NFC, lower-cased captions segmented into Vietnamese words by
    underthesea's CRF ("đàn ông" -> "đàn_ông"), as word-level published scores are."""
    try:  # underthesea: optional, and its import loads torch and transformers (seconds)
        from underthesea import __version__, word_tokenize
    except ImportError:
        raise VicapError("--tokenize words needs the underthesea word segmenter: "
                         "pip install 'underthesea>=9.5'") from None
    return ([word_tokenize(unicodedata.normalize("NFC", c).lower(), format="text")
             for c in captions], f"underthesea {__version__}")


def python_tokenize(text: str) -> str:
    """Stand-in for PTB without Java: lower-case, split off punctuation, drop PTB's list."""
    words = (_FALLBACK_MAP.get(w, w) for w in _FALLBACK_TOKEN.findall(text.lower()))
    return " ".join(w for w in words if w not in PUNCTUATIONS)


def score_all(hyps: list[str], refs: list[list[str]]) -> tuple[dict, dict, list[float]]:
    """Every reference-based metric on tokenized text: (values, unavailable, per-image CIDEr); a
    Java scorer that cannot run gives None and its reason."""
    gts, res = dict(enumerate(refs)), {i: [h] for i, h in enumerate(hyps)}
    _progress("BLEU, ROUGE and CIDEr …")
    bleu = Bleu(4).compute_score(gts, res, verbose=0)[0]
    cider, per_image = CiderD(refs).score(hyps, refs)
    values: dict[str, Any] = {f"BLEU-{n + 1}": float(b) for n, b in enumerate(bleu)}
    values.update({"ROUGE-L": float(Rouge().compute_score(gts, res)[0]), "CIDEr": cider,
                   "ROUGE-1": rouge_n(hyps, refs, 1), "ROUGE-2": rouge_n(hyps, refs, 2)})
    java = {"METEOR": lambda: jvm.meteor_score(hyps, refs, jvm.METEOR_EN_ARGS)[0],
            "METEOR-vi": lambda: jvm.meteor_score(hyps, refs, jvm.METEOR_VI_ARGS)[0],
            "SPICE": lambda: jvm.spice_score(hyps, refs)}
    unavailable: dict[str, str] = {}
    for name, job in java.items():
        _progress(f"{name} …")
        start = time.perf_counter()
        try:
            values[name] = job()
            _progress(f"{name} done in {time.perf_counter() - start:.1f} s")
        except jvm.ScorerUnavailable as exc:
            values[name], unavailable[name] = None, str(exc)
            _progress(f"{name} unavailable: {exc}")
    return values, unavailable, [float(s) for s in per_image]


def rouge_n(hyps: Sequence[str], refs: Sequence[Sequence[str]], n: int) -> float:
    """ROUGE-N F1 over whitespace tokens: best reference per image, mean over images."""
    def grams(text: str) -> Counter:
        words = text.split()
        return Counter(zip(*(words[i:] for i in range(n))))

    def f1(hyp: Counter, ref: Counter) -> float:  # 2PR / (P + R) = 2 overlap / (|hyp| + |ref|)
        overlap = sum((hyp & ref).values())
        return 2 * overlap / (hyp.total() + ref.total()) if overlap else 0.0

    best = [max(f1(grams(h), grams(r)) for r in rs) for h, rs in zip(hyps, refs, strict=True)]
    return float(np.mean(best)) if best else 0.0


def diversity(hyps: Sequence[str], train: set[str] | None = None) -> dict[str, float]:
    """Diversity of tokenized predictions (NFC, diacritics kept; TTR as in NOTES); repetition_rate
    is the share repeating an earlier caption word for word; novel_rate needs `train`."""
    toks = [unicodedata.normalize("NFC", h).split() for h in hyps]
    unigrams = [t for ts in toks for t in ts]
    bigrams = [b for ts in toks for b in zip(ts, ts[1:])]
    per_caption = [len(set(ts)) / len(ts) for ts in toks if ts]
    out = {
        "TTR": _ratio(len(set(unigrams)), len(unigrams)),
        "TTR_per_caption": _ratio(sum(per_caption), len(per_caption)),
        "repetition_rate": 1.0 - _ratio(len(set(hyps)), len(hyps)),
        "distinct-1": _ratio(len(set(unigrams)), len(unigrams)),
        "distinct-2": _ratio(len(set(bigrams)), len(bigrams)),
        "vocab_size": len(set(unigrams)),
        "mean_length": _ratio(len(unigrams), len(hyps)),
    }
    if train is not None:
        out["novel_rate"] = _ratio(sum(h not in train for h in hyps), len(hyps))
    return out


class _Tfidf(NamedTuple):
    """Tf-idf vectors as flat entries sorted by key = sentence * width + n-gram (sentence i owns
    starts[i]:starts[i + 1]); norms per sentence and n-gram order; lengths as CIDEr-D's."""

    starts: np.ndarray
    key: np.ndarray
    width: int
    order: np.ndarray
    weight: np.ndarray
    norms: np.ndarray
    lengths: np.ndarray


class CiderD:
    """pycocoevalcap's CIDEr-D (equal within 1e-6), all pairs at once in numpy. Document frequencies
    from `refs_corpus`: the evaluated set's as pycocoevalcap; the training set's for a reward."""

    def __init__(self, refs_corpus: Sequence[Sequence[str]], n: int = 4, sigma: float = 6.0):
        if not refs_corpus:
            raise ValueError("CIDEr-D needs the references of at least one image")
        self.n, self.sigma = n, sigma
        self.log_images = math.log(len(refs_corpus))
        self.df: Counter[tuple[str, ...]] = Counter()
        for refs, images in Counter(map(tuple, refs_corpus)).items():  # a repeated image: once
            grams = {tuple(w[i:i + k]) for w in map(str.split, refs)  # counted once per image
                     for k in range(1, n + 1) for i in range(len(w) - k + 1)}
            self.df.update(grams if images == 1 else dict.fromkeys(grams, images))

    def score(self, candidates: Sequence[str],
              refs: Sequence[Sequence[str]]) -> tuple[float, np.ndarray]:
        """(mean, one score per candidate) of tokenized candidates, each against its references."""
        if len(candidates) != len(refs) or not all(refs):
            raise ValueError("CIDEr-D needs one non-empty list of references per candidate")
        if not candidates:
            return 0.0, np.zeros(0)
        texts = list(dict.fromkeys([*candidates, *(r for rs in refs for r in rs)]))
        row = {t: i for i, t in enumerate(texts)}
        n_refs = np.array([len(rs) for rs in refs])
        hyp = np.repeat([row[c] for c in candidates], n_refs)
        ref = np.array([row[r] for rs in refs for r in rs])
        tfidf = self._vectors(texts)
        dot = _clipped_dots(tfidf, hyp, ref, self.n)
        denom = tfidf.norms[hyp] * tfidf.norms[ref]
        cosine = np.divide(dot, denom, out=np.zeros_like(dot), where=denom != 0)
        delta = tfidf.lengths[hyp] - tfidf.lengths[ref]
        pair = (cosine * np.exp(-(delta ** 2) / (2 * self.sigma ** 2))[:, None]).mean(axis=1)
        owner = np.repeat(np.arange(len(candidates)), n_refs)
        scores = np.bincount(owner, weights=pair, minlength=len(candidates)) / n_refs * 10.0
        return float(scores.mean()), scores

    def _vectors(self, texts: Sequence[str]) -> _Tfidf:
        """The tf-idf vectors of distinct tokenized sentences, n-grams counted in numpy."""
        tokens = [t.split() for t in texts]
        words, ids = [w for ws in tokens for w in ws], {}
        wid = np.array([ids.setdefault(w, len(ids)) for w in words], np.int64)
        sizes = np.array([len(ws) for ws in tokens], np.int64)
        occ_start, occ_gram, first, gram_order = _ngram_ids(wid, sizes, self.n)
        width = max(len(first), 1)
        sent_of = np.repeat(np.arange(len(texts)), sizes)[occ_start]
        key, count = np.unique(sent_of * width + occ_gram, return_counts=True)
        sent, gram = np.divmod(key, width)
        df = np.array([self.df.get(tuple(words[i: i + k + 1]), 0)
                       for i, k in zip(first.tolist(), gram_order.tolist())], float)
        weight = count * (self.log_images - np.log(np.maximum(1.0, df)))[gram]
        order = gram_order[gram]
        squares = np.bincount(sent * self.n + order, weights=weight ** 2,
                              minlength=len(texts) * self.n)
        # pycocoevalcap's length counts bigrams ("if n == 1"): len(words) - 1.
        lengths = np.maximum(sizes - 1, 0).astype(float)
        starts = np.searchsorted(sent, np.arange(len(texts) + 1))
        return _Tfidf(starts, key, width, order, weight,
                      np.sqrt(squares).reshape(len(texts), self.n), lengths)


def _ngram_ids(wid: np.ndarray, sizes: np.ndarray,
               n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The 1- to n-grams of concatenated sentences of word ids: each occurrence's start and
    n-gram id (equal n-grams, equal ids), then each id's first start and order - 1."""
    # an id of order k + 1 numbers the pairs (id of the k-gram starting there, next word)
    remaining = np.repeat(np.cumsum(sizes), sizes) - np.arange(len(wid))
    prev, offset, parts = wid.copy(), 0, []
    for k in range(n):
        at = np.flatnonzero(remaining > k)  # within the positions of order k - 1
        key = prev[at] * (len(wid) + 1) + (wid[at + k] if k else 0)
        uniq, first_k, local = np.unique(key, return_index=True, return_inverse=True)
        prev[at] = local
        parts.append((at, local + offset, at[first_k], np.full(len(uniq), k)))
        offset += len(uniq)
    return tuple(np.concatenate(a) for a in zip(*parts))


def _clipped_dots(tfidf: _Tfidf, hyp: np.ndarray, ref: np.ndarray, n: int) -> np.ndarray:
    """Per (hyp[p], ref[p]) pair and n-gram order: the sum over the reference's n-grams of
    min(hyp weight, ref weight) * ref weight (CIDEr-D's clipping; 0 where hyp lacks it)."""
    sizes = tfidf.starts[ref + 1] - tfidf.starts[ref]
    pair = np.repeat(np.arange(len(ref)), sizes)  # every entry of every pair's reference
    entry = np.arange(sizes.sum()) + np.repeat(tfidf.starts[ref] - np.cumsum(sizes) + sizes, sizes)
    wanted = tfidf.key[entry] + (hyp[pair] - ref[pair]) * tfidf.width  # that n-gram in hyp
    at = np.minimum(np.searchsorted(tfidf.key, wanted), len(tfidf.key) - 1)
    vh, vr = np.where(tfidf.key[at] == wanted, tfidf.weight[at], 0.0), tfidf.weight[entry]
    return np.bincount(pair * n + tfidf.order[entry], weights=np.minimum(vh, vr) * vr,
                       minlength=len(hyp) * n).astype(float).reshape(len(hyp), n)


def quick_cider(predictions: Mapping[Any, str], references: Mapping[Any, list[str]]) -> float:
    """CIDEr-D on the pure-Python tokenizer (no JVM), for model selection during training."""
    refs = [[python_tokenize(r) for r in references[k]] for k in predictions]
    if not refs:
        return 0.0
    return CiderD(refs).score([python_tokenize(p) for p in predictions.values()], refs)[0]


def format_table(metrics: Mapping[str, Any]) -> str:
    """Readable two-column table of the metrics, with reasons for the unavailable ones."""
    lines = [f"{'metric':<16} value", f"{'-' * 16} {'-' * 8}"]
    for key in (k for k in (*SCORE_KEYS, *DIVERSITY_KEYS) if k in metrics):
        why = f" ({metrics['unavailable'][key]})" if metrics[key] is None else ""
        lines.append(f"{key:<16} {_shown(metrics[key])}{why}")
    lines.append(f"images: {metrics['n_images']}, tokenizer: {metrics['tokenizer']}, "
                 f"tokenization: {metrics.get('tokenization', 'syllable')}")
    return "\n".join(lines)


def compare(a: Mapping[str, Any], b: Mapping[str, Any],
            labels: tuple[str, str] = ("cross-entropy", "SCST")) -> str:
    """Two models' metrics side by side, then one line saying plainly whether `b` bought CIDEr
    with diversity (lower TTR, distinct-2 or vocabulary, more repeated captions)."""
    lines = [f"{'metric':<16} {labels[0]:>14} {labels[1]:>14}"]
    for key in (k for k in COMPARED if k in a and k in b):
        lines.append(f"{key:<16} " + " ".join(f"{_shown(m[key]):>14}" for m in (a, b)))
    gain = _ratio(b["CIDEr"] - a["CIDEr"], a["CIDEr"])
    lost = [k for k in ("TTR", "distinct-2", "vocab_size") if b[k] < a[k]]
    lost += ["repetition_rate"] if b["repetition_rate"] > a["repetition_rate"] else []
    verdict = (f"{labels[1]} did not raise CIDEr ({gain:+.1%})" if gain <= 0 else
               f"{labels[1]} bought CIDEr ({gain:+.1%}) with diversity: {', '.join(lost)} worse"
               if lost else f"{labels[1]} raised CIDEr ({gain:+.1%}) without losing diversity")
    return "\n".join([*lines, verdict])


def cli_evaluate(args: Any) -> int:
    """`vicap evaluate`: score, print the table, write metrics JSON and per-image CIDEr CSV; a bad
    --out fails before minutes of scoring."""
    if args.out:
        out = output_file(args.out, "metrics JSON")
        csv_path = output_file(out.with_name(f"{out.stem}_per_image.csv"), "per-image CSV")
        folders.refuse_aliases({"--predictions": args.predictions, "--references": args.references,
                                "--train-captions": args.train_captions},
                               [("--out", out), ("--out (its per-image CSV)", csv_path)])
        folders.refuse_foreign_files(out.parent, [out.name], [csv_path.name],
                                     overwrite=args.overwrite)
    metrics, per_image = evaluate_detailed(args.predictions, args.references, args.train_captions,
                                           args.allow_missing, args.tokenize)
    if args.out:
        with folders.replacing_files(out.parent, [out.name], [csv_path.name],
                                     overwrite=args.overwrite):  # both files or neither
            atomic_write_files({out: (json.dumps(metrics, ensure_ascii=False, indent=2)
                                      + "\n").encode(),
                                csv_path: per_image.to_csv(index=False).encode()})
        _progress(f"wrote {out} and {csv_path}")
    print(format_table(metrics))
    if args.compare:
        print(compare(read_json(args.compare, "metrics JSON"), metrics,
                      (Path(args.compare).stem, Path(args.predictions).stem)))
    return 0


def _shown(value: Any) -> str:
    """A metric value as the tables show it."""
    return "n/a" if value is None else str(value) if isinstance(value, int) else f"{value:.4f}"


def _ratio(num: float, den: float) -> float:
    """num / den, 0 for an empty denominator."""
    return num / den if den else 0.0


def _progress(message: str) -> None:
    """One progress line on stderr (stdout carries the table)."""
    print(f"evaluate: {message}", file=sys.stderr, flush=True)
