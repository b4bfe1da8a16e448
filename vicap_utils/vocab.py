"""Vietnamese vocabulary for BLIP-1's WordPiece tokenizer (BERT-base uncased).

The stock tokenizer strips diacritics, or with `strip_accents=False` turns most Vietnamese
syllables into `[UNK]`. We append the missing syllables, every Vietnamese letter and its
`##` continuation piece to the WordPiece vocabulary itself (not `add_tokens`, which cuts
added tokens out before WordPiece runs), so every syllable, seen in training or not, encodes
and decodes with its diacritics. New embedding rows start from the mean of the stock
embeddings of the accent-stripped pieces, so "người" starts near "nguoi".
"""
from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import torch

from vicap_utils.ops.io import VicapError
from vicap_utils.text import VIETNAMESE_LETTERS, strip_diacritics

_PUNCT_SPACE = re.compile(r"\s+([.,;:!?)\]])")
_WORD = re.compile(r"\w+", re.UNICODE)


def bert_vocab_path() -> Path:
    """The BERT-base uncased WordPiece vocabulary shipped with the package (see assets/)."""
    return Path(str(resources.files("vicap_utils") / "assets" / "bert-base-uncased-vocab.txt"))


def stock_blip_tokenizer(vocab: dict[str, int] | None = None, strip_accents: bool | None = None):
    """BLIP-1's captioning tokenizer: BERT uncased + `[DEC]` (bos) and `[ENC]`, as on the hub.

    With `vocab`, the same tokenizer over that (subset) vocabulary; `strip_accents=False`
    gives the variant that keeps diacritics (and writes [UNK] for most Vietnamese syllables).
    """
    from transformers import BertTokenizer

    tok = BertTokenizer(vocab=vocab or str(bert_vocab_path()), do_lower_case=True,
                        strip_accents=strip_accents)
    tok.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    tok.model_max_length = 512
    return tok


def canonical(text: str) -> str:
    """Lower-case NFC text with collapsed spaces and no space before punctuation.

    Round-trip checks compare `canonical(caption)` with `canonical(decode(encode(caption)))`,
    so tokenizer spacing conventions do not count, while letters and diacritics do.
    """
    text = unicodedata.normalize("NFC", text).lower()
    text = " ".join(text.split())
    text = _PUNCT_SPACE.sub(r"\1", text)
    return text.replace("( ", "(").replace("[ ", "[")


def syllables(captions: Iterable[str]) -> Counter[str]:
    """Lower-case NFC word counts over the captions."""
    counts: Counter[str] = Counter()
    for caption in captions:
        counts.update(_WORD.findall(unicodedata.normalize("NFC", caption).lower()))
    return counts


@dataclass
class TokenizerReport:
    """How well a tokenizer writes a caption set: the numbers notebook 02 tabulates."""

    captions: int
    roundtrip_rate: float  # share of captions whose decode(encode(c)) equals c (canonical)
    unk_rate: float  # share of tokens that are [UNK]
    tokens_per_caption: float
    example: str = ""  # first caption that does not survive, as decoded

    def as_dict(self) -> dict[str, float | int | str]:
        """Plain dict for tables and JSON."""
        return asdict(self)


def tokenizer_report(tokenizer, captions: list[str]) -> TokenizerReport:
    """Encode→decode every caption; count exact survivors, [UNK]s and tokens."""
    if not captions:
        raise VicapError("tokenizer report: no captions given")
    ids = tokenizer(captions, add_special_tokens=False)["input_ids"]
    decoded = tokenizer.batch_decode(ids, skip_special_tokens=True)
    unk = tokenizer.unk_token_id
    total = sum(len(x) for x in ids)
    n_unk = sum(x.count(unk) for x in ids)
    ok, example = 0, ""
    for original, back in zip(captions, decoded):
        if canonical(original) == canonical(back):
            ok += 1
        elif not example:
            example = back
    return TokenizerReport(
        captions=len(captions),
        roundtrip_rate=ok / len(captions),
        unk_rate=n_unk / max(total, 1),
        tokens_per_caption=total / len(captions),
        example=example,
    )


def missing_syllables(tokenizer, captions: Iterable[str], min_count: int = 1) -> list[str]:
    """Caption syllables the tokenizer cannot write back exactly, most frequent first."""
    counts = syllables(captions)
    missing = []
    for word, count in counts.most_common():
        if count < min_count:
            continue
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        if canonical(tokenizer.decode(ids)) != word:
            missing.append(word)
    return missing


def extension_entries(tokenizer, captions: Iterable[str], min_count: int = 1) -> list[str]:
    """Vocabulary entries to append: missing syllables, then each letter and its `##` piece."""
    vocab = tokenizer.get_vocab()
    entries: list[str] = []
    seen = set(vocab)
    letters = list(VIETNAMESE_LETTERS)
    for entry in missing_syllables(tokenizer, captions, min_count) + letters + [
        f"##{c}" for c in letters
    ]:
        if entry not in seen:
            seen.add(entry)
            entries.append(entry)
    return entries


def build_extended_tokenizer(tokenizer, entries: list[str]):
    """A BertTokenizer whose WordPiece vocabulary is the stock one plus `entries` (ids kept)."""
    from transformers import BertTokenizer

    vocab = tokenizer.get_vocab()
    order = sorted(vocab.items(), key=lambda kv: kv[1])
    if [i for _, i in order] != list(range(len(order))):
        raise VicapError("base tokenizer ids are not contiguous; cannot extend its vocabulary")
    merged = dict(order)
    for entry in entries:
        merged.setdefault(entry, len(merged))
    special = {
        name: getattr(tokenizer, name)
        for name in ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token", "bos_token")
        if getattr(tokenizer, name, None)
    }
    # Unnamed special tokens (BLIP's [ENC]): transformers 4 lists them as
    # `additional_special_tokens`, 5 as `extra_special_tokens`; both are in all_special_tokens.
    extra = [t for t in tokenizer.all_special_tokens if t not in special.values()]
    extended = BertTokenizer(
        vocab=merged,
        do_lower_case=True,
        strip_accents=False,
        additional_special_tokens=extra,
        **special,
    )
    extended.model_max_length = tokenizer.model_max_length
    for token in [*special.values(), *extra]:
        if extended.convert_tokens_to_ids(token) != tokenizer.convert_tokens_to_ids(token):
            raise VicapError(f"extending the vocabulary moved special token {token}")
        if token not in extended.all_special_tokens:
            raise VicapError(f"extending the vocabulary lost special token {token}")
    return extended


def extend_tokenizer(tokenizer, captions: list[str], min_count: int = 1):
    """Return (extended tokenizer, appended entries) for the training captions."""
    entries = extension_entries(tokenizer, captions, min_count)
    return build_extended_tokenizer(tokenizer, entries), entries


def piece_ids(stock_tokenizer, entry: str) -> list[int]:
    """Stock-vocabulary ids of an entry's accent-stripped form (keeping `##` continuation)."""
    cont = entry.startswith("##")
    plain = strip_diacritics(entry[2:] if cont else entry)
    ids = stock_tokenizer(plain, add_special_tokens=False)["input_ids"]
    if cont and ids:
        first = stock_tokenizer.convert_ids_to_tokens(ids[0])
        as_cont = stock_tokenizer.convert_tokens_to_ids(f"##{first}")
        if as_cont != stock_tokenizer.unk_token_id:
            ids[0] = as_cont
    return [i for i in ids if i != stock_tokenizer.unk_token_id]


def output_layer(model):
    """The LM head (BLIP-1 keeps it in `text_decoder`; the top model reports None)."""
    for module in model.modules():
        getter = getattr(module, "get_output_embeddings", None)
        out = getter() if getter else None
        if out is not None:
            return out
    return None


@torch.no_grad()
def init_new_rows(model, stock_tokenizer, extended_tokenizer, first_new_id: int) -> int:
    """Resize the model's embeddings to the extended vocabulary and initialise the new rows.

    Each new row (input embedding, tied output row, output bias) is the mean of the stock
    rows of the entry's accent-stripped pieces; returns the number of rows initialised.
    """
    model.resize_token_embeddings(len(extended_tokenizer), mean_resizing=False)
    emb = model.get_input_embeddings().weight
    out = output_layer(model)
    bias = getattr(out, "bias", None) if out is not None else None
    fallback = emb[:first_new_id].mean(0)
    id_to_token = {i: t for t, i in extended_tokenizer.get_vocab().items()}
    count = 0
    for new_id in range(first_new_id, len(extended_tokenizer)):
        pieces = piece_ids(stock_tokenizer, id_to_token[new_id])
        emb[new_id] = emb[pieces].mean(0) if pieces else fallback
        if out is not None and out.weight is not emb:
            out.weight[new_id] = emb[new_id]
        if bias is not None:
            bias[new_id] = bias[pieces].mean() if pieces else bias[:first_new_id].mean()
        count += 1
    return count


IGNORE = -100  # label value the loss skips


def special_ids(tokenizer) -> tuple[int, int, int]:
    """(bos, eos, pad) ids: `[DEC]`/`[SEP]`/`[PAD]` for BLIP-1, `</s>`/`</s>`/`<pad>` for OPT."""
    bos = tokenizer.bos_token_id
    eos = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    if bos is None or eos is None:
        raise VicapError("the tokenizer needs a bos and an eos (or sep) token")
    return bos, eos, pad


def encode_captions(tokenizer, captions: list[str], max_length: int, prompt: str = "",
                    prefix: list[int] | tuple[int, ...] = ()
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, labels) for `prefix + bos + prompt + caption + eos`.

    Labels are -100 on the image prefix, bos, prompt and padding, so the loss counts only the
    caption and its eos. `max_length` counts bos and eos (not the prefix); a long caption is
    cut before its eos, which is always kept.
    """
    bos, eos, pad = special_ids(tokenizer)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
    texts = tokenizer(list(captions), add_special_tokens=False)["input_ids"]
    rows, labels = [], []
    for ids in texts:
        body = (prompt_ids + ids)[: max_length - 2]
        seq = list(prefix) + [bos] + body + [eos]
        n_masked = len(prefix) + 1 + min(len(prompt_ids), len(body))
        rows.append(seq)
        labels.append([IGNORE] * n_masked + seq[n_masked:])
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    lab = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, (r, lbl) in enumerate(zip(rows, labels)):
        input_ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
        lab[i, : len(lbl)] = torch.tensor(lbl)
    return input_ids, mask, lab
