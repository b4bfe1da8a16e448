"""BLIP-1's WordPiece vocabulary extended with Vietnamese syllables and letters (each new row
from its accent-stripped pieces), and caption encoding with label masking."""

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

import torch
import transformers
from torch.nn.utils.rnn import pad_sequence

from vicap_utils.ops.io import VicapError
from vicap_utils.text import VIETNAMESE_LETTERS, strip_diacritics

IGNORE = -100  # label value the loss skips
_PUNCT_SPACE = re.compile(r"\s+([.,;:!?)\]])")
_WORD = re.compile(r"\w+", re.UNICODE)
SPECIAL = ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token", "bos_token")


def bert_vocab_path() -> Path:
    """The BERT-base uncased WordPiece vocabulary shipped with the package (see assets/)."""
    return Path(str(resources.files("vicap_utils") / "assets" / "bert-base-uncased-vocab.txt"))


def stock_blip_tokenizer(vocab: dict[str, int] | None = None, strip_accents: bool | None = None):
    """BLIP-1's captioning tokenizer as on the hub: BERT uncased + `[DEC]` (bos) and `[ENC]`;
    `vocab` swaps in a (subset) vocabulary, `strip_accents=False` keeps diacritics."""
    tok = transformers.BertTokenizer(vocab=vocab or str(bert_vocab_path()), do_lower_case=True,
                                     strip_accents=strip_accents)
    tok.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    tok.model_max_length = 512
    return tok


def canonical(text: str) -> str:
    """Lower-case NFC text, spaces collapsed, none before punctuation: what round trips compare,
    so tokenizer spacing does not count while letters and diacritics do."""
    text = " ".join(unicodedata.normalize("NFC", text).lower().split())
    return _PUNCT_SPACE.sub(r"\1", text).replace("( ", "(").replace("[ ", "[")


def syllables(captions: Iterable[str]) -> Counter[str]:
    """Lower-case NFC word counts over the captions."""
    counts: Counter[str] = Counter()
    for caption in captions:
        counts.update(_WORD.findall(unicodedata.normalize("NFC", caption).lower()))
    return counts


def tokenizer_report(tokenizer, captions: list[str]) -> dict[str, float | int | str]:
    """Encode→decode every caption: the numbers notebook 02 tabulates (round-trip and [UNK]
    rates, tokens per caption) and the first caption that does not survive (`example`)."""
    if not captions:
        raise VicapError("tokenizer report: no captions given")
    ids = tokenizer(captions, add_special_tokens=False)["input_ids"]
    decoded = tokenizer.batch_decode(ids, skip_special_tokens=True)
    total = sum(len(x) for x in ids)
    n_unk = sum(x.count(tokenizer.unk_token_id) for x in ids)
    lost = [back for original, back in zip(captions, decoded)
            if canonical(original) != canonical(back)]
    n = len(captions)
    return {"captions": n, "roundtrip_rate": (n - len(lost)) / n,
            "unk_rate": n_unk / max(total, 1), "tokens_per_caption": total / n,
            "example": lost[0] if lost else ""}


def extension_entries(tokenizer, captions: Iterable[str]) -> list[str]:
    """Vocabulary entries to append: caption syllables the tokenizer cannot write back (most
    frequent first), then each letter and its `##` piece."""
    missing = [word for word, _ in syllables(captions).most_common()
               if canonical(tokenizer.decode(tokenizer.encode(word, add_special_tokens=False)))
               != word]  # not written back with its letters and diacritics
    letters = list(VIETNAMESE_LETTERS)
    known = tokenizer.get_vocab()
    candidates = dict.fromkeys(missing + letters + [f"##{c}" for c in letters])
    return [entry for entry in candidates if entry not in known]


def extend_tokenizer(tokenizer, captions: Iterable[str] = (), entries: list[str] | None = None):
    """(a BertTokenizer whose vocabulary is the stock one plus `entries`, default the captions'
    `extension_entries`; the entries): every stock entry, the added `[DEC]` and `[ENC]` too,
    keeps its id, and each special token its role."""
    entries = extension_entries(tokenizer, captions) if entries is None else entries
    order = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    if [i for _, i in order] != list(range(len(order))):
        raise VicapError("base tokenizer ids are not contiguous; cannot extend its vocabulary")
    merged = dict(order)
    for entry in entries:
        merged.setdefault(entry, len(merged))
    special = {name: getattr(tokenizer, name) for name in SPECIAL if getattr(tokenizer, name, None)}
    # unnamed special tokens (BLIP's [ENC]), whatever transformers' version calls them
    extra = [t for t in tokenizer.all_special_tokens if t not in special.values()]
    extended = transformers.BertTokenizer(vocab=merged, do_lower_case=True, strip_accents=False,
                                          additional_special_tokens=extra, **special)
    extended.model_max_length = tokenizer.model_max_length
    return extended, entries


def piece_ids(stock_tokenizer, entry: str) -> list[int]:
    """Stock-vocabulary ids of an entry's accent-stripped form (keeping `##` continuation)."""
    ids = stock_tokenizer(strip_diacritics(entry.removeprefix("##")),
                          add_special_tokens=False)["input_ids"]
    if entry.startswith("##") and ids:
        first = stock_tokenizer.convert_ids_to_tokens(ids[0])
        as_cont = stock_tokenizer.convert_tokens_to_ids(f"##{first}")
        if as_cont != stock_tokenizer.unk_token_id:
            ids[0] = as_cont
    return [i for i in ids if i != stock_tokenizer.unk_token_id]


@torch.no_grad()
def init_new_rows(model, stock_tokenizer, extended_tokenizer, first_new_id: int) -> int:
    """Resize BLIP-1's embeddings to the extended vocabulary; each new row (input, tied output,
    bias) is the mean of the stock rows of its accent-stripped pieces. Returns the rows set."""
    model.resize_token_embeddings(len(extended_tokenizer), mean_resizing=False)
    emb = model.get_input_embeddings().weight
    out = model.text_decoder.get_output_embeddings()  # the top model reports None
    id_to_token = {i: t for t, i in extended_tokenizer.get_vocab().items()}
    new_ids = range(first_new_id, len(extended_tokenizer))
    for new_id in new_ids:
        pieces = piece_ids(stock_tokenizer, id_to_token[new_id]) or slice(first_new_id)
        emb[new_id] = emb[pieces].mean(0)
        if out.weight is not emb:
            out.weight[new_id] = emb[new_id]
        out.bias[new_id] = out.bias[pieces].mean()
    return len(new_ids)


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
    """(input_ids, attention_mask, labels) for `prefix + bos + prompt + caption + eos`; labels
    count only the caption and eos. `max_length` counts bos and eos; longer captions are cut."""
    bos, eos, pad = special_ids(tokenizer)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
    if len(prompt_ids) > max_length - 3:  # else every caption is cut away: eos alone is learnt
        raise VicapError(f"model.prompt is {len(prompt_ids)} tokens; model.max_length="
                         f"{max_length} leaves room for at most {max_length - 3}")
    texts = tokenizer(list(captions), add_special_tokens=False)["input_ids"]
    rows = [torch.tensor([*prefix, bos, *(prompt_ids + ids)[: max_length - 2], eos])
            for ids in texts]
    input_ids = pad_sequence(rows, batch_first=True, padding_value=pad)
    mask = pad_sequence([torch.ones_like(row) for row in rows], batch_first=True)
    labels = input_ids.masked_fill(mask == 0, IGNORE)
    labels[:, : len(prefix) + 1 + len(prompt_ids)] = IGNORE  # the prompt always fits (above)
    return input_ids, mask, labels
