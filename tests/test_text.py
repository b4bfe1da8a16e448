"""Vietnamese text helpers: normalisation, syllables, diacritics, optional segmentation."""
from __future__ import annotations

import unicodedata

import pytest

from vicap_utils.text import (
    LINE_BREAKS,
    VIETNAMESE_LETTERS,
    drop_invisible,
    normalize_caption,
    strip_diacritics,
    syllable_count,
)

NFC_CAPTION = "Một người đàn ông đang chơi quần vợt."


def test_nfd_becomes_nfc():
    nfd = unicodedata.normalize("NFD", NFC_CAPTION)
    assert nfd != NFC_CAPTION
    assert normalize_caption(nfd) == NFC_CAPTION


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Hai  con   chó\tđang chạy .", "Hai con chó đang chạy."),
        ("  một cậu bé đá bóng  ", "một cậu bé đá bóng"),
        ("Sân bóng , cầu thủ ; trọng tài : còi !", "Sân bóng, cầu thủ; trọng tài: còi!"),
        ("Ai đang chơi ?", "Ai đang chơi?"),
        ("Đội A thắng 2-1 .\n", "Đội A thắng 2-1."),
        ("HAI Người", "HAI Người"),
    ],
)
def test_normalize_spacing_and_case(raw, expected):
    assert normalize_caption(raw) == expected


def test_control_and_format_characters_are_removed():
    assert normalize_caption("Hai\x00 con\x07 chó\u200b\ufeff chạy\x1b.") == "Hai con chó chạy."
    assert normalize_caption("một\u2028hai\x1cba\x85bốn") == "một hai ba bốn"


def test_drop_invisible_removes_exactly_control_and_format_characters():
    points = [*range(0x20000), *range(0xE0000, 0xE1000)]  # every plane with such characters
    text = "".join(map(chr, points))
    kept = drop_invisible(text)
    removed = set(text) - set(kept)
    assert removed == {c for c in text
                       if unicodedata.category(c) in ("Cc", "Cf") and not c.isspace()}
    assert "\n" in kept and "\t" in kept and "đ" in kept and "\u2028" in kept


def test_normalize_is_idempotent():
    once = normalize_caption(" Một  người .")
    assert normalize_caption(once) == once


@pytest.mark.parametrize(
    ("caption", "count"),
    [
        ("Một người đàn ông đang chơi quần vợt.", 8),
        ("Hai con chó .", 3),
        ("  ", 0),
        ("...", 0),
        ("sân bóng, cầu thủ", 4),
    ],
)
def test_syllable_count(caption, count):
    assert syllable_count(caption) == count


def test_strip_diacritics():
    assert strip_diacritics("Người đàn ông") == "Nguoi dan ong"
    assert strip_diacritics("ĐỘI BÓNG Đá") == "DOI BONG Da"
    assert strip_diacritics(unicodedata.normalize("NFD", "phụ nữ")) == "phu nu"


def test_vietnamese_letters():
    assert len(VIETNAMESE_LETTERS) == len(set(VIETNAMESE_LETTERS)) == 67
    assert "đ" in VIETNAMESE_LETTERS and "ữ" in VIETNAMESE_LETTERS and "ỵ" in VIETNAMESE_LETTERS
    assert VIETNAMESE_LETTERS == VIETNAMESE_LETTERS.lower()
    assert unicodedata.normalize("NFC", VIETNAMESE_LETTERS) == VIETNAMESE_LETTERS
    assert all(strip_diacritics(letter) != letter for letter in VIETNAMESE_LETTERS)


def test_line_breaks_are_what_splitlines_splits_on():
    breaks = {chr(c) for c in range(0x3000) if len(f"a{chr(c)}b".splitlines()) == 2}
    assert breaks == set(LINE_BREAKS.findall("".join(map(chr, range(0x3000)))))
    assert LINE_BREAKS.sub(" ", "một\r\nhai\u2028ba") == "một  hai ba"
