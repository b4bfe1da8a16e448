"""Vietnamese caption text: Unicode normalisation, spacing, syllables and diacritics."""

import re
import unicodedata

# Every lower-case Vietnamese letter that carries a diacritic (vowel marks, tones, and đ).
VIETNAMESE_LETTERS = ("àáảãạăằắẳẵặâầấẩẫậđèéẻẽẹêềếểễệìíỉĩị"
                      "òóỏõọôồốổỗộơờớởỡợùúủũụưừứửữựỳýỷỹỵ")
# What str.splitlines() breaks on; the Java tools read one caption per line.
LINE_BREAKS = re.compile(r"[\r\n\v\f\x1c-\x1e\x85\u2028\u2029]")
_WHITESPACE = re.compile(r"\s+")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,;:!?])")
_WORD_CHAR = re.compile(r"\w")
_STROKED_D = str.maketrans({"đ": "d", "Đ": "D"})


def normalize_caption(s: str) -> str:
    """NFC, invisible characters dropped, whitespace collapsed, no space before . , ; : ! ? (case
    kept): one form per caption keeps duplicate detection and n-gram metrics honest."""
    s = unicodedata.normalize("NFC", drop_invisible(s))
    return _SPACE_BEFORE_PUNCT.sub(r"\1", _WHITESPACE.sub(" ", s).strip())


def drop_invisible(s: str) -> str:
    """Remove control and format characters (Unicode Cc and Cf: NUL, ESC, zero-width space, BOM,
    bidi marks) other than whitespace."""
    if s.isprintable():  # the common case: nothing to remove
        return s
    return "".join(ch for ch in s if ch.isspace() or unicodedata.category(ch) not in ("Cc", "Cf"))


def syllable_count(s: str) -> int:
    """Whitespace-separated syllables (one per token in Vietnamese); bare punctuation is not one."""
    return sum(1 for token in s.split() if _WORD_CHAR.search(token))


def strip_diacritics(s: str) -> str:
    """Remove tones and vowel marks, and map đ/Đ to d/D: "Người đàn ông" -> "Nguoi dan ong"."""
    decomposed = unicodedata.normalize("NFD", s)
    bare = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return unicodedata.normalize("NFC", bare.translate(_STROKED_D))
