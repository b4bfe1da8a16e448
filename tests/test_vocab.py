"""Vietnamese vocabulary extension against the real BERT-base uncased vocabulary fixture."""
from __future__ import annotations

import random

import pytest
import torch
from transformers import BertTokenizer

from vicap_utils import vocab
from vicap_utils.toy.data import captions_for, random_scene

FIXTURE = vocab.bert_vocab_path()  # the real BERT-base uncased vocabulary (see its README)

# Vietnamese sentences written for this test: none of their syllables is required to appear in
# the synthetic training captions, so they exercise the letter fallbacks.
UNSEEN = [
    "Hai người phụ nữ đang chơi tennis trên sân.",
    "Một cậu bé nhảy lên để đánh đầu quả bóng.",
    "Thủ môn bắt gọn cú sút phạt đền của tiền đạo.",
    "Các cổ động viên reo hò trên khán đài đông nghịt.",
    "Người đàn ông ngồi nghỉ bên lề sân sau trận đấu.",
    "Cô gái mặc váy trắng vung vợt đỡ quả cầu lông.",
    "Trọng tài thổi còi kết thúc hiệp một.",
    "Đội khách ăn mừng bàn thắng ở phút bù giờ.",
    "Những đứa trẻ đá bóng dưới trời mưa tầm tã.",
    "Vận động viên bóng chuyền bãi biển đập bóng qua lưới.",
    "Ông cụ đạp xe quanh hồ Hoàn Kiếm vào buổi sáng.",
    "Quả bóng rổ nảy trên sàn gỗ bóng loáng.",
]


def stock() -> BertTokenizer:
    tok = BertTokenizer(vocab=str(FIXTURE), do_lower_case=True)
    tok.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    return tok


def synthetic_captions(n: int = 200, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [c for _ in range(n) for c in captions_for(random_scene(rng), "vi", rng)]


def test_stock_tokenizer_cannot_write_vietnamese():
    report = vocab.tokenizer_report(stock(), UNSEEN)
    assert report["roundtrip_rate"] == 0.0
    keep = BertTokenizer(vocab=str(FIXTURE), do_lower_case=True, strip_accents=False)
    report_keep = vocab.tokenizer_report(keep, UNSEEN)
    assert report_keep["roundtrip_rate"] == 0.0
    assert report_keep["unk_rate"] > 0.3


def test_extended_tokenizer_roundtrips_training_and_unseen_captions():
    train = synthetic_captions()
    extended, entries = vocab.extend_tokenizer(stock(), train)
    assert "người" in entries and "##ư" in entries and "ư" in entries
    assert vocab.tokenizer_report(extended, train)["roundtrip_rate"] == 1.0
    held_out = synthetic_captions(seed=123)
    assert vocab.tokenizer_report(extended, held_out)["roundtrip_rate"] == 1.0
    unseen = vocab.tokenizer_report(extended, UNSEEN)
    assert unseen["roundtrip_rate"] == 1.0, unseen["example"]
    assert unseen["unk_rate"] == 0.0


def test_extension_keeps_special_token_ids_and_saves(tmp_path):
    base = stock()
    extended, entries = vocab.extend_tokenizer(base, synthetic_captions(50))
    for token in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "[ENC]"):
        assert extended.convert_tokens_to_ids(token) == base.convert_tokens_to_ids(token)
    assert len(extended) == len(base) + len(entries)
    extended.save_pretrained(tmp_path)
    again = BertTokenizer.from_pretrained(tmp_path)
    text = "Một cậu bé nhảy lên để đánh đầu quả bóng."
    assert again.decode(again(text)["input_ids"], skip_special_tokens=True) == text.lower()


def test_enc_stays_a_special_token_after_extension(tmp_path):
    """BLIP's unnamed special token [ENC] is not cut into "[ enc ]" by the extended tokenizer
    (transformers 5 moved it from `additional_special_tokens` to `extra_special_tokens`)."""
    base = stock()
    extended, _ = vocab.extend_tokenizer(base, synthetic_captions(20))
    extended.save_pretrained(tmp_path)
    for tok in (extended, BertTokenizer.from_pretrained(tmp_path)):
        assert "[ENC]" in tok.all_special_tokens
        ids = tok("[ENC] một người", add_special_tokens=False)["input_ids"]
        assert tok.convert_ids_to_tokens(ids) == ["[ENC]", "một", "người"]
        assert ids[0] == base.convert_tokens_to_ids("[ENC]")
        assert tok.decode(ids, skip_special_tokens=True) == "một người"
        assert tok.decode(ids) == "[ENC] một người"


def test_new_rows_start_from_accent_stripped_pieces():
    from transformers import BlipConfig, BlipForConditionalGeneration

    base = stock()
    extended, entries = vocab.extend_tokenizer(base, ["Người chơi."])
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(BlipConfig(
        text_config=dict(vocab_size=len(base), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, encoder_hidden_size=32),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, image_size=32, patch_size=16)))
    n = vocab.init_new_rows(model, base, extended, len(base))
    assert n == len(entries)
    emb = model.get_input_embeddings().weight
    row = extended.convert_tokens_to_ids("người")
    pieces = base("nguoi", add_special_tokens=False)["input_ids"]
    assert torch.allclose(emb[row], emb[pieces].mean(0))
    head = model.text_decoder.get_output_embeddings()
    assert head.weight.shape[0] == len(extended) and head.bias.shape[0] == len(extended)
    assert torch.isclose(head.bias[row], head.bias[pieces].mean())


@pytest.mark.parametrize("text,expected", [
    ("Hai  người ,  đang chơi .", "hai người, đang chơi."),
    ("NGƯỜI", "người"),
])
def test_canonical(text, expected):
    assert vocab.canonical(text) == expected
