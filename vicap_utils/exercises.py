""""Check yourself" cells: a friendly line for an exercise's answer, never a traceback.

An exercise stub leaves its answer as `None`; the check then says the exercise is not done yet
and what to do. A wrong answer gets a hint, a right one a short confirmation. Checks only
print, so a notebook run headless (CI, "Run all") goes on past an open exercise. An expected
value may be given as a function, computed only once there is an answer to compare.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

DONE = "✅"
NOT_YET = "❌"


def check(exercise: str, answer: Any, ok: bool | Callable[[], bool], hint: str,
          well_done: str = "right") -> None:
    """Print one line about `answer`: not done yet (None), right (`ok`), or not quite (hint)."""
    if answer is None:
        print(f"{NOT_YET} {exercise}: not done yet: {hint}")
    elif ok() if callable(ok) else ok:
        print(f"{DONE} {exercise}: {well_done}")
    else:
        print(f"{NOT_YET} {exercise}: not quite ({answer!r}): {hint}")


def check_close(exercise: str, answer: Any, expected: float | Callable[[], float], hint: str,
                rel: float = 1e-3, abs_tol: float = 1e-6) -> None:
    """`check` for a number: right when within `rel` (relative) or `abs_tol` of `expected`."""
    if answer is None:
        return check(exercise, answer, False, hint)
    value = expected() if callable(expected) else expected
    ok = isinstance(answer, int | float) and not isinstance(answer, bool) and math.isclose(
        float(answer), float(value), rel_tol=rel, abs_tol=abs_tol)
    return check(exercise, answer, ok, hint, f"right, {value:.4g}")


def check_equal(exercise: str, answer: Any, expected: Any, hint: str) -> None:
    """`check` for an exact answer (a count, a reason code, a list); `expected` may be a
    function."""
    if answer is None:
        return check(exercise, answer, False, hint)
    value = expected() if callable(expected) else expected
    return check(exercise, answer, answer == value, hint, f"right, {value!r}")
