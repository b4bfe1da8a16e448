"""The values of a captions file, checked entry by entry so that a hostile file is refused in
one line (or its entry left out as a reject), never a traceback or a file written wrongly."""
import math
import posixpath
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from vicap_utils.ops.io import VicapError

SURROGATE = re.compile("[\ud800-\udfff]")
DRIVE = re.compile(r"^[A-Za-z]:[\\/]")
Id = int | str
NOT_TEXT = {bool: "a boolean", int: "a number", float: "a number", list: "a list"}


def require_keys(path: Path, where: str, entry: Any, keys: Iterable[str]) -> None:
    """Refuse an entry that is not an object, lacks a key, or whose id is neither an integer
    nor non-empty text."""
    if not isinstance(entry, dict):
        raise VicapError(f"{path}: {where} is not an object")
    for key in keys:
        if key not in entry:
            raise VicapError(f"{path}: {where} has no '{key}'")
        value = entry[key]
        if key.endswith("id") and (isinstance(value, bool) or not isinstance(value, int | str)):
            raise VicapError(f"{path}: {where} '{key}' must be an integer or text")
        if key.endswith("id") and value == "":
            raise VicapError(f"{path}: {where} '{key}' is empty")


def one_id_type(path: Path, what: str, first: dict[type, tuple[str, Id]], value: Id,
                where: str) -> None:
    """Refuse a file that mixes integer and text ids (`1` and `"1"` are different ids), naming
    where the first of each was seen (`first` remembers it)."""
    first.setdefault(int if isinstance(value, int) else str, (where, value))
    if len(first) == 2:
        (w_int, v_int), (w_str, v_str) = first[int], first[str]
        raise VicapError(f"{path}: {what} mix integers and text ({w_int} is {short(v_int)}, "
                         f"{w_str} is {short(v_str)}); use one type")


def refuse_surrogates(path: Path, where: str, value: Any) -> None:
    """Refuse a lone surrogate in any key or string inside `value` (a broken `\\ud800`-style
    escape): such text cannot be written as UTF-8."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str) and SURROGATE.search(item):
            raise VicapError(f"{path}: {where} holds text that is not valid Unicode "
                             f"(a lone surrogate in {short(item)})")
        if isinstance(item, dict):
            stack.extend([*item.keys(), *item.values()])
        elif isinstance(item, list):
            stack.extend(item)


def file_name_problem(name: str) -> tuple[str, str] | None:
    """(reason, detail) when `name` cannot name a file inside the images folder."""
    if not name.strip():
        return "missing_file", "file_name is empty"
    if "\0" in name:
        return "missing_file", f"file_name {short(name)} contains a NUL character"
    if name.startswith(("/", "\\")) or DRIVE.match(name):
        return "file_outside_images", f"file_name {short(name)} is an absolute path"
    if posixpath.normpath(name.replace("\\", "/")).split("/")[0] == "..":
        return "file_outside_images", f"file_name {short(name)} leads out of the images folder"
    return None


def caption_problem(caption: Any) -> str | None:
    """Why a caption value is not text, None when it is (null counts as empty text)."""
    if isinstance(caption, str) and (bad := SURROGATE.search(caption)):
        return f"caption is not valid Unicode (a lone surrogate at character {bad.start()})"
    if caption is None or isinstance(caption, str):
        return None
    nan = isinstance(caption, float) and math.isnan(caption)
    kind = "NaN" if nan else NOT_TEXT.get(type(caption), "an object")
    return f"caption is {kind} ({short(caption)}), not text"


def short(value: Any, limit: int = 60) -> str:
    """repr(value), cut to `limit` characters (ids can have thousands of digits)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"<an integer of {len(str(abs(value)))} digits>"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
