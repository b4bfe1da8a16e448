"""The values of a captions file or of COCO results, checked entry by entry so that a hostile
file is refused in one line (or its entry left out as a reject), never a traceback."""
import math
import posixpath
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from vicap_utils.ops.io import VicapError, read_json

SURROGATE = re.compile("[\ud800-\udfff]")
DRIVE = re.compile(r"^[A-Za-z]:[\\/]")
Id = int | str
NOT_TEXT = {bool: "a boolean", int: "a number", float: "a number", list: "a list"}


def require_keys(path: str | Path, where: str, entry: Any, keys: Iterable[str]) -> None:
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


def one_id_type(path: str | Path, what: str, first: dict[type, tuple[str, Id]], value: Id,
                where: str) -> None:
    """Refuse a file that mixes integer and text ids (`1` and `"1"` are different ids), naming
    where the first of each was seen (`first` remembers it; `where` ends "id is")."""
    first.setdefault(int if isinstance(value, int) else str, (where, value))
    if len(first) == 2:
        (w_int, v_int), (w_str, v_str) = first[int], first[str]
        raise VicapError(f"{path}: {what} mix integers and text ({w_int} {short(v_int)}, "
                         f"{w_str} {short(v_str)}); use one type")


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
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def load_predictions(predictions: str | Path | list) -> dict[str, tuple[Any, str]]:
    """{str(image_id): (image_id, caption)} from COCO results, checking their shape."""
    label, data = _load(predictions, "predictions")
    if not isinstance(data, list):
        raise VicapError(f"{label}: expected a list of {{image_id, caption}} (COCO results)")
    out: dict[str, tuple[Any, str]] = {}
    for image_id, caption in _checked_items(label, data, "item"):
        if str(image_id) in out:
            raise VicapError(f"{label}: more than one prediction for image_id {image_id}")
        out[str(image_id)] = (image_id, caption)
    if not out:
        raise VicapError(f"{label}: no predictions")
    return out


def load_references(references: str | Path | Mapping,
                    what: str = "references") -> dict[str, tuple[Any, list[str]]]:
    """{str(image_id): (image_id, captions)} from COCO-style captions JSON; `what` names it."""
    label, data = _load(references, what)
    if not isinstance(data, Mapping) or not isinstance(data.get("annotations"), list):
        raise VicapError(f"{label}: expected COCO-style captions JSON with an 'annotations' list")
    out: dict[str, tuple[Any, list[str]]] = {}
    for image_id, caption in _checked_items(label, data["annotations"], "annotation"):
        out.setdefault(str(image_id), (image_id, []))[1].append(caption)
    if not out:
        raise VicapError(f"{label}: no reference captions")
    if not any(c.strip() for _, caps in out.values() for c in caps):
        raise VicapError(f"{label}: every caption is empty; there is nothing to score against")
    return out


def _checked_items(label: str, items: list, what: str) -> Iterator[tuple[Any, str]]:
    """(image_id, caption) of each item; refuses a bad shape (as `require_keys`), mixed id types
    (`1` and `"1"` would merge into one image) and a lone surrogate (it cannot be tokenized)."""
    first: dict[type, tuple[str, Id]] = {}
    for i, item in enumerate(items):
        require_keys(label, f"{what} {i}", item, ("image_id", "caption"))
        if not isinstance(item["caption"], str):
            raise VicapError(f"{label}: {what} {i} 'caption' must be text")
        image_id = item["image_id"]
        one_id_type(label, "image ids", first, image_id, f"{what} {i} has image_id")
        if SURROGATE.search(item["caption"]):
            raise VicapError(f"{label}: {what} {i} has a caption that is not valid Unicode "
                             "(a lone surrogate)")
        yield image_id, item["caption"]


def match_images(preds: Mapping[str, Any], refs: Mapping[str, Any], allow_missing: bool,
                 where: str = "") -> tuple[list[str], list[str]]:
    """(keys to score in reference order, notes): unknown ids fail, missing ones unless allowed;
    `where` starts the message (the two files)."""
    unknown = [preds[k][0] for k in preds if k not in refs]
    if unknown:
        raise VicapError(f"{where}{len(unknown)} predicted image ids are not in the references: "
                         f"{_first(unknown)}")
    missing = [refs[k][0] for k in refs if k not in preds]
    if missing and not allow_missing:
        raise VicapError(f"{where}{len(missing)} reference images have no prediction: "
                         f"{_first(missing)} (use --allow-missing to score only the predicted "
                         "images)")
    notes = [f"scored {len(preds)} of {len(refs)} reference images (allow_missing)"
             ] if missing else []
    return [k for k in refs if k in preds], notes


def _load(obj: Any, what: str) -> tuple[str, Any]:
    """(label for messages, data): read a path, or take already-loaded JSON as it is."""
    if isinstance(obj, (str, Path)):
        return str(obj), read_json(obj, f"{what} JSON")
    return what, obj


def _first(ids: Sequence[Any], n: int = 5) -> str:
    """The first few ids for an error message."""
    return ", ".join(repr(i) for i in ids[:n]) + (" …" if len(ids) > n else "")
