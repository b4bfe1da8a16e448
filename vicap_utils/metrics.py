"""Caption metrics: pycocoevalcap's BLEU-1..4, METEOR, ROUGE-L, CIDEr-D and SPICE, made safe to
run offline and honest for Vietnamese, plus METEOR-vi, ROUGE-1/2 and diversity. CIDEr-D is
computed by `CiderD`, batched in numpy and equal to pycocoevalcap's (tested), fast enough for a
reward at every training step.

Captions are NFC-normalised, then tokenized as pycocoevalcap does (Stanford PTB tokenizer,
lower-cased, punctuation dropped; a pure-Python stand-in when there is no Java), and the
scorers are called directly: `COCOEvalCap` builds SPICE first, which downloads Stanford CoreNLP
(~385 MB) and dies offline. SPICE parses with English models, so it means little for
Vietnamese; it is computed only when CoreNLP's jars are already installed and the jar runs.
"""
from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pycocoevalcap
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS

from vicap_utils.ops import meteor
from vicap_utils.ops.folders import (
    check_writable,
    refuse_aliases,
    refuse_foreign_files,
    replacing_files,
)
from vicap_utils.ops.io import (
    VicapError,
    atomic_write_json,
    atomic_write_text,
    output_file,
    read_json,
)
from vicap_utils.text import LINE_BREAKS

PKG_DIR = Path(next(iter(pycocoevalcap.__path__)))
PTB_JAR = PKG_DIR / "tokenizer" / "stanford-corenlp-3.4.1.jar"
SPICE_DIR = PKG_DIR / "spice"
SPICE_CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
TOKENIZE_TIMEOUT_S = 300.0
SPICE_TIMEOUT_S = 600.0

STANDARD_METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE")
DIVERSITY_METRICS = ("TTR", "TTR_per_caption", "repetition_rate", "distinct-1", "distinct-2",
                     "vocab_size", "mean_length")
METRIC_KEYS = (*STANDARD_METRICS, "ROUGE-1", "ROUGE-2", *DIVERSITY_METRICS)
# Tables: every reference-based score, then every diversity figure.
SCORE_KEYS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "METEOR-vi", "ROUGE-L", "CIDEr",
              "SPICE", "ROUGE-1", "ROUGE-2")
DIVERSITY_KEYS = (*DIVERSITY_METRICS, "novel_rate")

PUBLISHED_UITVIIC_BLIP = {"BLEU-1": 0.524, "BLEU-2": 0.412, "BLEU-4": 0.293, "METEOR": 0.312,
                          "ROUGE-L": 0.489, "CIDEr": 0.719, "SPICE": 0.161}
PUBLISHED_UITVIIC_BLIP_LABEL = ("BLIP on UIT-ViIC, published (other data split and setup; "
                                "not reproduced here)")

NOTES = (
    "CIDEr is CIDEr-D as pycocoevalcap's Cider computes it (vicap's batched CiderD, equal "
    "within 1e-6); its document frequencies come from this set's references, so scores depend "
    "on the evaluated set (one image alone always scores 0). Per-image CIDEr is computed "
    "against the whole set.",
    "METEOR is pycocoevalcap's (-l en -norm), whose normaliser splits Vietnamese letters outside "
    "Latin-1 into separate tokens; METEOR-vi runs the same jar with -l other (exact matches, "
    "no normaliser) on NFC, lower-cased tokens.",
    "SPICE parses captions with English CoreNLP models; for Vietnamese it means little.",
    "ROUGE-1/2: F1 over whitespace tokens of the tokenized text (diacritics count), best "
    "reference per image, mean over images. Diversity metrics use the tokenized predictions; "
    "TTR is types / tokens over all of them (the BLIP-2 report's; equal to distinct-1), "
    "TTR_per_caption the mean within each caption.",
)

_SURROGATE = re.compile("[\ud800-\udfff]")
_WORD = r"[\w\u0300-\u036f]+"
_FALLBACK_TOKEN = re.compile(rf"\.\.\.|--|'[^\W\d_]+|{_WORD}(?:[-.]{_WORD})*|\S")
_FALLBACK_MAP = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-",
                 "}": "-rcb-", '"': "''", "\u201c": "``", "\u201d": "''", "\u2018": "`",
                 "\u2019": "'"}


class ScorerUnavailable(RuntimeError):
    """A metric cannot be computed here; the message says why."""


def evaluate(
    predictions: str | Path | list,
    references: str | Path | Mapping,
    train_captions: str | Path | Mapping | Sequence[str] | None = None,
    allow_missing: bool = False,
    tokenization: str = "syllable",
) -> dict[str, Any]:
    """Metrics for COCO results against COCO-style references (paths or loaded JSON)."""
    return evaluate_detailed(predictions, references, train_captions, allow_missing,
                             tokenization)[0]


def evaluate_detailed(
    predictions: str | Path | list,
    references: str | Path | Mapping,
    train_captions: str | Path | Mapping | Sequence[str] | None = None,
    allow_missing: bool = False,
    tokenization: str = "syllable",
) -> tuple[dict[str, Any], pd.DataFrame]:
    """`evaluate`'s metrics plus a per-image table: image_id, cider, prediction, first_reference.

    `tokenization` "words" segments every caption into words before every metric."""
    preds, refs = load_predictions(predictions), load_references(references)
    keys, notes = match_images(preds, refs, allow_missing)
    train = None if train_captions is None else load_train_captions(train_captions)
    hyp_raw = [preds[k][1] for k in keys]
    ref_raw = [refs[k][1] for k in keys]
    flat = hyp_raw + [c for caps in ref_raw for c in caps] + (train or [])
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
    hyps, rest = tokens[: len(keys)], tokens[len(keys):]
    ref_tok, pos = [], 0
    for caps in ref_raw:
        ref_tok.append(rest[pos: pos + len(caps)])
        pos += len(caps)
    if not any(t for caps in ref_tok for t in caps):
        raise VicapError(f"{_label(references, 'references')}: no reference caption of the "
                         "scored images has a word; there is nothing to score against")
    metrics, unavailable, cider_per_image = score_all(hyps, ref_tok)
    metrics.update(diversity(hyps, None if train is None else set(rest[pos:])))
    result = {k: metrics.get(k) for k in METRIC_KEYS}
    result.update({"unavailable": unavailable, "METEOR-vi": metrics.get("METEOR-vi"),
                   "tokenizer": tokenizer, "tokenization": tokenization, "n_images": len(keys),
                   "notes": [*NOTES, *notes]})
    if train is not None:
        result["novel_rate"] = metrics["novel_rate"]
    per_image = pd.DataFrame({"image_id": [refs[k][0] for k in keys], "cider": cider_per_image,
                              "prediction": hyp_raw, "first_reference": [c[0] for c in ref_raw]})
    return result, per_image


def load_predictions(predictions: str | Path | list) -> dict[str, tuple[Any, str]]:
    """{str(image_id): (image_id, caption)} from COCO results, checking their shape."""
    label, data = _load(predictions, "predictions")
    if not isinstance(data, list):
        raise VicapError(f"{label}: expected a list of {{image_id, caption}} (COCO results)")
    out: dict[str, tuple[Any, str]] = {}
    id_types: dict[type, str] = {}
    for i, item in enumerate(data):
        if not (isinstance(item, dict) and _is_id(item.get("image_id"))
                and isinstance(item.get("caption"), str)):
            raise VicapError(f"{label}: item {i} is not {{\"image_id\": int or str, "
                             f"\"caption\": str}}")
        _check_id_type(label, id_types, item["image_id"], f"item {i}")
        _check_unicode(label, item["caption"], f"item {i}")
        key = str(item["image_id"])
        if key in out:
            raise VicapError(f"{label}: more than one prediction for image_id {key}")
        out[key] = (item["image_id"], item["caption"])
    if not out:
        raise VicapError(f"{label}: no predictions")
    return out


def load_references(references: str | Path | Mapping,
                    what: str = "references") -> dict[str, tuple[Any, list[str]]]:
    """{str(image_id): (image_id, captions)} from COCO-style captions JSON; `what` names the
    input in error messages."""
    label, data = _load(references, what)
    if not isinstance(data, Mapping) or not isinstance(data.get("annotations"), list):
        raise VicapError(f"{label}: expected COCO-style captions JSON with an 'annotations' list")
    out: dict[str, tuple[Any, list[str]]] = {}
    id_types: dict[type, str] = {}
    for i, ann in enumerate(data["annotations"]):
        if not (isinstance(ann, Mapping) and _is_id(ann.get("image_id"))
                and isinstance(ann.get("caption"), str)):
            raise VicapError(f"{label}: annotation {i} lacks an image_id or a caption string")
        _check_id_type(label, id_types, ann["image_id"], f"annotation {i}")
        _check_unicode(label, ann["caption"], f"annotation {i}")
        out.setdefault(str(ann["image_id"]), (ann["image_id"], []))[1].append(ann["caption"])
    if not out:
        raise VicapError(f"{label}: no reference captions")
    if not any(c.strip() for _, caps in out.values() for c in caps):
        raise VicapError(f"{label}: every caption is empty; there is nothing to score against")
    return out


def load_train_captions(train: str | Path | Mapping | Sequence[str]) -> list[str]:
    """Training captions from COCO-style JSON (path or loaded) or a list of strings."""
    if isinstance(train, Sequence) and not isinstance(train, str):
        return [str(c) for c in train]
    return [c for _, caps in load_references(train, "training captions").values() for c in caps]


def match_images(preds: Mapping[str, Any], refs: Mapping[str, Any],
                 allow_missing: bool) -> tuple[list[str], list[str]]:
    """Image keys to score, in reference order; unknown ids always fail, missing ones unless
    `allow_missing`."""
    unknown = [preds[k][0] for k in preds if k not in refs]
    if unknown:
        raise VicapError(f"{len(unknown)} predicted image ids are not in the references: "
                         f"{_first(unknown)}")
    missing = [refs[k][0] for k in refs if k not in preds]
    if missing and not allow_missing:
        raise VicapError(f"{len(missing)} reference images have no prediction: {_first(missing)}"
                         " (use --allow-missing to score only the predicted images)")
    notes = []
    if missing:
        notes.append(f"scored {len(preds)} of {len(refs)} reference images (allow_missing)")
    return [k for k in refs if k in preds], notes


def tokenize(captions: Sequence[str]) -> tuple[list[str], str, str | None]:
    """NFC, then PTB as pycocoevalcap runs it, else the Python stand-in: (tokens, name, why)."""
    texts = [LINE_BREAKS.sub(" ", unicodedata.normalize("NFC", c)) for c in captions]
    if shutil.which("java") is None:
        why = "java not found on PATH"
    else:
        try:
            return ptb_tokenize(texts), "ptb", None
        except ScorerUnavailable as exc:
            why = str(exc)
    return [python_tokenize(t) for t in texts], "python-fallback", why


def segment_words(captions: Sequence[str]) -> tuple[list[str], str]:
    """(captions, segmenter): NFC, lower-cased captions segmented into Vietnamese words by
    underthesea's CRF segmenter ("đàn ông" -> "đàn_ông"), as word-level published scores are."""
    try:  # optional, and its import loads torch and transformers (seconds)
        from underthesea import __version__, word_tokenize
    except ImportError:
        raise VicapError("--tokenize words needs the underthesea word segmenter: "
                         "pip install 'underthesea>=9.5'") from None
    return ([word_tokenize(unicodedata.normalize("NFC", c).lower(), format="text")
             for c in captions], f"underthesea {__version__}")


def ptb_tokenize(texts: Sequence[str]) -> list[str]:
    """pycocoevalcap's PTBTokenizer in one JVM, with a timeout: lower-cased, punctuation dropped."""
    with tempfile.TemporaryDirectory(prefix="vicap-ptb-") as tmp:
        path = Path(tmp) / "captions.txt"
        path.write_text("".join(f"{t}\n" for t in texts), encoding="utf-8")
        cmd = [shutil.which("java") or "java", "-cp", str(PTB_JAR),
               "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase", str(path)]
        out = _run_java(cmd, TOKENIZE_TIMEOUT_S, "PTB tokenizer", cwd=PTB_JAR.parent)
    lines = out.decode("utf-8", "replace").split("\n")
    if len(lines) < len(texts):
        raise ScorerUnavailable(f"PTB tokenizer returned {len(lines)} lines for {len(texts)}")
    return [" ".join(w for w in line.rstrip().split(" ") if w not in PUNCTUATIONS)
            for line in lines[: len(texts)]]


def python_tokenize(text: str) -> str:
    """Stand-in for PTB without Java: lower-case, split off punctuation, drop PTB's list."""
    words = (_FALLBACK_MAP.get(w, w) for w in _FALLBACK_TOKEN.findall(text.lower()))
    return " ".join(w for w in words if w not in PUNCTUATIONS)


def score_all(hyps: list[str], refs: list[list[str]]) -> tuple[dict, dict, list[float]]:
    """Every reference-based metric on tokenized text: (values, unavailable, per-image CIDEr).

    Both tokenizers give NFC, lower-cased text, which is what METEOR-vi needs as it is."""
    gts = {i: r for i, r in enumerate(refs)}
    res = {i: [h] for i, h in enumerate(hyps)}
    values: dict[str, Any] = {}
    unavailable: dict[str, str] = {}
    bleu, _ = _timed("BLEU", lambda: Bleu(4).compute_score(gts, res, verbose=0))
    values.update({f"BLEU-{n + 1}": float(b) for n, b in enumerate(bleu)})
    values["ROUGE-L"] = float(_timed("ROUGE-L", lambda: Rouge().compute_score(gts, res))[0])
    cider, per_image = _timed("CIDEr", lambda: CiderD(refs).score(hyps, refs))
    values["CIDEr"] = float(cider)
    jobs: dict[str, Callable[[], float]] = {
        "METEOR": lambda: meteor.meteor_score(hyps, refs, meteor.METEOR_EN_ARGS)[0],
        "METEOR-vi": lambda: meteor.meteor_score(hyps, refs, meteor.METEOR_VI_ARGS)[0],
        "SPICE": lambda: spice_score(hyps, refs),
    }
    for name, job in jobs.items():
        try:
            values[name] = float(_timed(name, job))
        except (meteor.MeteorError, ScorerUnavailable) as exc:
            values[name], unavailable[name] = None, str(exc)
            _progress(f"{name} unavailable: {exc}")
    values["ROUGE-1"] = _timed("ROUGE-1", lambda: rouge_n(hyps, refs, 1))
    values["ROUGE-2"] = _timed("ROUGE-2", lambda: rouge_n(hyps, refs, 2))
    return values, unavailable, [float(s) for s in per_image]


def spice_score(hyps: list[str], refs: list[list[str]], timeout: float = SPICE_TIMEOUT_S) -> float:
    """SPICE via its jar in a subprocess, only if CoreNLP is installed: never downloads."""
    missing = [j for j in SPICE_CORENLP_JARS if not (SPICE_DIR / "lib" / j).is_file()]
    if missing:
        raise ScorerUnavailable(f"Stanford CoreNLP jars not installed ({', '.join(missing)}); "
                                "SPICE would download ~385 MB on first use, not attempted")
    java = shutil.which("java")
    if java is None:
        raise ScorerUnavailable("java not found on PATH")
    with tempfile.TemporaryDirectory(prefix="vicap-spice-") as tmp:
        src, dst = Path(tmp) / "in.json", Path(tmp) / "out.json"
        items = [{"image_id": i, "test": h, "refs": r}
                 for i, (h, r) in enumerate(zip(hyps, refs, strict=True))]
        src.write_text(json.dumps(items), "utf-8")
        cmd = [java, "-jar", "-Xmx8G", str(SPICE_DIR / "spice-1.0.jar"), str(src),
               "-out", str(dst), "-subset", "-silent"]
        _run_java(cmd, timeout, "SPICE", cwd=SPICE_DIR)
        try:
            results = json.loads(dst.read_text("utf-8"))
            values = [_float(item["scores"]["All"]["f"]) for item in results]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ScorerUnavailable(f"SPICE output unreadable: {exc!r}") from None
    score = float(np.mean(values)) if values else math.nan
    if not math.isfinite(score):
        raise ScorerUnavailable("SPICE returned no score")
    return score


def rouge_n(hyps: Sequence[str], refs: Sequence[Sequence[str]], n: int) -> float:
    """ROUGE-N F1 over whitespace tokens: best reference per image, mean over images."""
    best = [max(_ngram_f1(_ngrams(h.split(), n), _ngrams(r.split(), n)) for r in rs)
            for h, rs in zip(hyps, refs, strict=True)]
    return float(np.mean(best)) if best else 0.0


def diversity(hyps: Sequence[str], train: set[str] | None = None) -> dict[str, float]:
    """Diversity of the predictions; novel_rate given the training captions `train`.

    TTR is the BLIP-2 report's: distinct word types / words over all captions together, on NFC
    text with diacritics kept, low under mode collapse; it is the same quantity as distinct-1
    (Li et al. 2016). TTR_per_caption is the mean within-caption ratio (low when a caption
    repeats its own words, "người người người"); distinct-2 is the share of distinct bigrams;
    repetition_rate is the share of captions that repeat an earlier one word for word.
    """
    toks = [unicodedata.normalize("NFC", h).split() for h in hyps]
    unigrams = [t for ts in toks for t in ts]
    bigrams = [b for ts in toks for b in zip(ts, ts[1:], strict=False)]
    per_caption = [_ratio(len(set(ts)), len(ts)) for ts in toks if ts]
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


class CiderD:
    """pycocoevalcap's CIDEr-D (equal within 1e-6), batched: n-grams are counted once per
    distinct sentence and every (candidate, reference) pair is scored at once in numpy.

    Document frequencies come from `refs_corpus`, one list of tokenized references per image:
    the evaluated set's references reproduce pycocoevalcap; the training references give a
    reward that does not depend on the batch (self-critical training)."""

    def __init__(self, refs_corpus: Sequence[Sequence[str]], n: int = 4, sigma: float = 6.0):
        if not refs_corpus:
            raise ValueError("CIDEr-D needs the references of at least one image")
        self.n, self.sigma = n, sigma
        self.log_images = math.log(len(refs_corpus))
        words, wid, sizes = _word_ids([r for refs in refs_corpus for r in refs])
        occ_start, occ_gram, first, order = _ngram_ids(wid, sizes, n)
        image = np.repeat(np.arange(len(refs_corpus)), [len(refs) for refs in refs_corpus])
        width = max(len(first), 1)
        in_image = np.sort(np.repeat(image, sizes)[occ_start] * width + occ_gram)
        distinct = in_image[np.diff(in_image, prepend=-1) != 0] % width  # np.unique hashes: slow
        df = np.bincount(distinct, minlength=len(first))
        self.df = {tuple(words[i: i + k + 1]): c
                   for i, k, c in zip(first.tolist(), order.tolist(), df.tolist())}

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
        words, wid, sizes = _word_ids(texts)
        occ_start, occ_gram, first, gram_order = _ngram_ids(wid, sizes, self.n)
        n_grams = max(len(first), 1)
        sent_of = np.repeat(np.arange(len(texts)), sizes)[occ_start]
        keys, count = np.unique(sent_of * n_grams + occ_gram, return_counts=True)
        sent, gram = np.divmod(keys, n_grams)
        df = np.array([self.df.get(tuple(words[i: i + k + 1]), 0)
                       for i, k in zip(first.tolist(), gram_order.tolist())], float)
        weight = count * (self.log_images - np.log(np.maximum(1.0, df)))[gram]
        order = gram_order[gram]
        squares = np.bincount(sent * self.n + order, weights=weight ** 2,
                              minlength=len(texts) * self.n)
        # pycocoevalcap's length counts bigrams ("if n == 1"): len(words) - 1.
        lengths = np.maximum(sizes - 1, 0).astype(float)
        starts = np.searchsorted(sent, np.arange(len(texts) + 1))
        return _Tfidf(starts, gram, order, weight, np.sqrt(squares).reshape(len(texts), self.n),
                      lengths)


def _word_ids(texts: Sequence[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(words, word ids, words per text) of tokenized texts, concatenated."""
    tokens = [t.split() for t in texts]
    words = [w for ws in tokens for w in ws]
    vocab: dict[str, int] = {}
    return (words, np.array([vocab.setdefault(w, len(vocab)) for w in words], np.int64),
            np.array([len(ws) for ws in tokens], np.int64))


def _ngram_ids(wid: np.ndarray, sizes: np.ndarray,
               n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The 1- to n-grams of sentences of word ids (concatenated; `sizes` words each): every
    occurrence's start position and n-gram id (equal n-grams, equal ids), then every id's first
    start position and order - 1. An id of order k + 1 numbers the pairs (id of the k-gram
    starting there, next word)."""
    remaining = np.repeat(np.cumsum(sizes), sizes) - np.arange(len(wid))
    prev = wid
    occ_start, occ_gram, first, order = [], [], [], []
    offset = 0
    for k in range(n):
        at = np.flatnonzero(remaining > k)
        key = prev[at] * (len(wid) + 1) + (wid[at + k] if k else 0)
        uniq, first_k, local = np.unique(key, return_index=True, return_inverse=True)
        prev = np.zeros_like(wid)
        prev[at] = local
        occ_start.append(at)
        occ_gram.append(local + offset)
        first.append(at[first_k])
        order.append(np.full(len(uniq), k))
        offset += len(uniq)
    return tuple(np.concatenate(a) for a in (occ_start, occ_gram, first, order))


@dataclass(frozen=True)
class _Tfidf:
    """Tf-idf vectors of sentences as flat entries sorted by sentence: sentence i owns entries
    starts[i]:starts[i + 1]; norms per sentence and n-gram order; lengths as CIDEr-D's."""

    starts: np.ndarray
    gram: np.ndarray
    order: np.ndarray
    weight: np.ndarray
    norms: np.ndarray
    lengths: np.ndarray


def _clipped_dots(tfidf: _Tfidf, hyp: np.ndarray, ref: np.ndarray, n: int) -> np.ndarray:
    """Per (hyp[p], ref[p]) pair and n-gram order: the sum over shared n-grams of
    min(hyp weight, ref weight) * ref weight (CIDEr-D's clipping)."""
    h_pair, h_idx = _pair_entries(tfidf.starts, hyp)
    r_pair, r_idx = _pair_entries(tfidf.starts, ref)
    width = int(tfidf.gram.max(initial=0)) + 1
    _, hi, ri = np.intersect1d(h_pair * width + tfidf.gram[h_idx],
                               r_pair * width + tfidf.gram[r_idx],
                               assume_unique=True, return_indices=True)
    vh, vr = tfidf.weight[h_idx[hi]], tfidf.weight[r_idx[ri]]
    slots = h_pair[hi] * n + tfidf.order[h_idx[hi]]
    return np.bincount(slots, weights=np.minimum(vh, vr) * vr,  # int64 when nothing is shared
                       minlength=len(hyp) * n).astype(float).reshape(len(hyp), n)


def _pair_entries(starts: np.ndarray, sentences: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pair index, entry index) of every entry of sentences[p], for every pair p."""
    sizes = starts[sentences + 1] - starts[sentences]
    pair = np.repeat(np.arange(len(sentences)), sizes)
    offset = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    return pair, starts[sentences][pair] + offset


def quick_cider(predictions: Mapping[Any, str], references: Mapping[Any, list[str]]) -> float:
    """CIDEr-D on the pure-Python tokenizer (no JVM), for model selection during training."""
    refs = [[python_tokenize(r) for r in references[k]] for k in predictions]
    if not refs:
        return 0.0
    return CiderD(refs).score([python_tokenize(p) for p in predictions.values()], refs)[0]


def format_table(metrics: Mapping[str, Any]) -> str:
    """Readable two-column table of the metrics, with reasons for the unavailable ones."""
    keys = [*SCORE_KEYS, *DIVERSITY_KEYS]
    lines = [f"{'metric':<16} value", f"{'-' * 16} {'-' * 8}"]
    for key in (k for k in keys if k in metrics):
        value = metrics[key]
        shown = (f"n/a ({metrics['unavailable'].get(key, 'not computed')})" if value is None
                 else str(value) if isinstance(value, int) else f"{value:.4f}")
        lines.append(f"{key:<16} {shown}")
    lines.append(f"images: {metrics['n_images']}, tokenizer: {metrics['tokenizer']}, "
                 f"tokenization: {metrics.get('tokenization', 'syllable')}")
    return "\n".join(lines)


def cli_evaluate(args: Any) -> int:
    """`vicap evaluate`: score, print the table, write metrics JSON and per-image CIDEr CSV.

    The output paths are checked first (not an input, not a folder, writable), so a bad --out
    fails before minutes of scoring."""
    if args.out:
        out = output_file(args.out, "metrics JSON")
        csv_path = output_file(out.with_name(f"{out.stem}_per_image.csv"), "per-image CSV")
        refuse_aliases({"--predictions": args.predictions, "--references": args.references,
                        "--train-captions": args.train_captions},
                       [("--out", out), ("--out (its per-image CSV)", csv_path)])
        check_writable(out.parent)
        refuse_foreign_files(out.parent, [out.name], [csv_path.name], overwrite=args.overwrite)
    metrics, per_image = evaluate_detailed(args.predictions, args.references,
                                           args.train_captions, args.allow_missing, args.tokenize)
    if args.out:
        with replacing_files(out.parent, [out.name], [csv_path.name], overwrite=args.overwrite):
            atomic_write_json(out, metrics)
            atomic_write_text(csv_path, per_image.to_csv(index=False))
        _progress(f"wrote {out} and {csv_path}")
    print(format_table(metrics))
    return 0


def _run_java(cmd: list[str], timeout: float, what: str, cwd: Path) -> bytes:
    """Run a Java tool with a timeout; any failure becomes ScorerUnavailable with a reason."""
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ScorerUnavailable(f"{what} timed out after {timeout:g} s") from None
    except OSError as exc:
        raise ScorerUnavailable(f"{what} could not start: {exc}") from None
    if proc.returncode != 0:
        err = [ln.strip() for ln in proc.stderr.decode("utf-8", "replace").splitlines()]
        err = [ln for ln in err if ln and not ln.startswith("at ")]
        raise ScorerUnavailable(f"{what} failed (exit {proc.returncode}): "
                                f"{err[-1][:300] if err else 'no error output'}")
    return proc.stdout


def _load(obj: Any, what: str) -> tuple[str, Any]:
    """(label for messages, data): read a path, or take already-loaded JSON as it is."""
    if isinstance(obj, (str, Path)):
        return str(obj), read_json(obj, f"{what} JSON")
    return what, obj


def _label(obj: Any, what: str) -> str:
    """The name of an input in messages: its path, or `what` for already-loaded data."""
    return str(obj) if isinstance(obj, (str, Path)) else what


def _check_id_type(label: str, seen: dict[type, str], image_id: Any, where: str) -> None:
    """One id type per file: `1` and `"1"` would silently merge into one image."""
    kind = int if isinstance(image_id, int) else str
    seen.setdefault(kind, f"{where} has image_id {image_id!r}"[:80])
    if len(seen) == 2:
        raise VicapError(f"{label}: image ids mix integers and text ({seen[int]}, {seen[str]}); "
                         "use one type")


def _check_unicode(label: str, caption: str, where: str) -> None:
    """Captions must be valid Unicode (a lone surrogate cannot be written or tokenized)."""
    if _SURROGATE.search(caption):
        raise VicapError(f"{label}: {where} has a caption that is not valid Unicode "
                         "(a lone surrogate)")


def _is_id(value: Any) -> bool:
    """Image ids are ints or non-empty strings (not bools)."""
    return (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, str) and value != "")


def _first(ids: Sequence[Any], n: int = 5) -> str:
    """The first few ids for an error message."""
    return ", ".join(repr(i) for i in ids[:n]) + (" …" if len(ids) > n else "")


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    """Counts of the n-grams in one token list."""
    return Counter(zip(*(tokens[i:] for i in range(n)), strict=False))


def _ngram_f1(hyp: Counter, ref: Counter) -> float:
    """F1 of clipped n-gram overlap; 0 when nothing overlaps."""
    overlap = sum((hyp & ref).values())
    if not overlap:
        return 0.0
    precision, recall = overlap / sum(hyp.values()), overlap / sum(ref.values())
    return 2 * precision * recall / (precision + recall)


def _ratio(num: float, den: float) -> float:
    """num / den, 0 for an empty denominator."""
    return num / den if den else 0.0


def _float(value: Any) -> float:
    """A SPICE score as float; None and junk become NaN, as pycocoevalcap does."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _is_num(value: Any) -> bool:
    """A real number (not None, not bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _timed(name: str, job: Callable[[], Any]) -> Any:
    """Run one scorer, with progress messages before and after."""
    _progress(f"{name} …")
    start = time.perf_counter()
    value = job()
    _progress(f"{name} done in {time.perf_counter() - start:.1f} s")
    return value


def _progress(message: str) -> None:
    """One progress line on stderr (stdout carries the table)."""
    print(f"evaluate: {message}", file=sys.stderr, flush=True)
